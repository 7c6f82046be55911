//! The OpenMetrics text encoding of a [`Snapshot`], through
//! `prometheus-client`'s custom-collector interface.

use crate::runtime::snapshot::{
    ExportSample, LatencySample, PoolSample, PortSample, Snapshot, SwitchSample, TunnelSample,
    VolumeSample,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::fmt;
use vswitch::vxlan::TunnelDrop;

/// The content type of [`render`]'s output (what `prometheus-client`
/// documents for its text encoding).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The OpenMetrics text exposition of `snapshot` (ends with `# EOF`).
pub fn render(snapshot: &Snapshot) -> String {
    render_owned(snapshot.clone())
}

pub(super) fn render_owned(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    let mut out = String::new();
    // Writing to a String fails only if a collector fails, and ours does not.
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
        out.push_str("# EOF\n");
    }
    out
}

/// Encodes a snapshot at scrape time (prometheus-client's custom-collector
/// way of exporting values it does not own).
#[derive(Debug)]
struct SnapshotCollector(Snapshot);

/// The two kinds of single-value families (histograms are encoded apart).
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family: a descriptor and one sample per item.
struct Family<'e, 'w> {
    enc: &'e mut DescriptorEncoder<'w>,
}

impl Family<'_, '_> {
    fn metric<T, L: EncodeLabelSet>(
        &mut self,
        kind: Kind,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        items: &[T],
        sample: impl Fn(&T) -> (L, u64),
    ) -> fmt::Result {
        if items.is_empty() {
            return Ok(());
        }
        let metric_type = match kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
        };
        let mut m = self
            .enc
            .encode_descriptor(name, help, unit.as_ref(), metric_type)?;
        for item in items {
            let (labels, value) = sample(item);
            let mut e = m.encode_family(&labels)?;
            match kind {
                Kind::Counter => e.encode_counter::<NoLabelSet, u64, u64>(&value, None)?,
                Kind::Gauge => e.encode_gauge(&value)?,
            }
        }
        Ok(())
    }
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let mut f = Family { enc: &mut enc };
        let bytes = || Some(Unit::Bytes);

        // Ports.
        let port = |p: &PortSample| [("switch", p.switch.clone()), ("port", p.port.clone())];
        f.metric(
            Kind::Counter,
            "vswitchd_port_rx_packets",
            "Frames received from the port's peer.",
            None,
            &s.ports,
            |p| (port(p), p.rx_packets),
        )?;
        f.metric(
            Kind::Counter,
            "vswitchd_port_rx",
            "Bytes received from the port's peer.",
            bytes(),
            &s.ports,
            |p| (port(p), p.rx_bytes),
        )?;
        f.metric(
            Kind::Counter,
            "vswitchd_port_tx_packets",
            "Frames delivered to the port's peer.",
            None,
            &s.ports,
            |p| (port(p), p.tx_packets),
        )?;
        f.metric(
            Kind::Counter,
            "vswitchd_port_tx",
            "Bytes delivered to the port's peer.",
            bytes(),
            &s.ports,
            |p| (port(p), p.tx_bytes),
        )?;
        let drops: Vec<(&PortSample, &str, u64)> = s
            .ports
            .iter()
            .flat_map(|p| p.drops.iter().map(move |(r, n)| (p, r.as_str(), *n)))
            .collect();
        f.metric(
            Kind::Counter,
            "vswitchd_port_drops",
            "Frames dropped, by reason.",
            None,
            &drops,
            |&(p, reason, n)| {
                let [sw, port] = port(p);
                ([sw, port, ("reason", reason.to_owned())], n)
            },
        )?;
        f.metric(
            Kind::Counter,
            "vswitchd_port_broken_queues",
            "Queues stopped because the driver broke them (avail index, ring addresses).",
            None,
            &s.ports,
            |p| (port(p), p.broken_queues),
        )?;
        f.metric(
            Kind::Counter,
            "vswitchd_port_announces",
            "Announcements sent for the port's peer (a migrated guest's RARP, vhost-user SEND_RARP).",
            None,
            &s.ports,
            |p| (port(p), p.announces),
        )?;
        let queues: Vec<(&PortSample, usize, &vswitch::QueueSnapshot)> = s
            .ports
            .iter()
            .flat_map(|p| p.queues.iter().enumerate().map(move |(i, q)| (p, i, q)))
            .collect();
        let queue = |p: &PortSample, i: usize| {
            let [sw, port] = port(p);
            [sw, port, ("queue", i.to_string())]
        };
        f.metric(
            Kind::Counter,
            "vswitchd_port_queue_rx_packets",
            "Frames received from the peer through one queue (pair) of a multi-queue port.",
            None,
            &queues,
            |&(p, i, q)| (queue(p, i), q.rx_packets),
        )?;
        f.metric(
            Kind::Counter,
            "vswitchd_port_queue_tx_packets",
            "Frames delivered to the peer through one queue (pair) of a multi-queue port.",
            None,
            &queues,
            |&(p, i, q)| (queue(p, i), q.tx_packets),
        )?;
        f.metric(
            Kind::Counter,
            "vswitchd_port_tx_gso_packets",
            "GSO super-frames delivered intact, with their virtio-net header.",
            None,
            &s.ports,
            |p| (port(p), p.tx_gso_packets),
        )?;
        f.metric(
            Kind::Counter,
            "vswitchd_port_gso_segmented",
            "GSO super-frames segmented in software (the peer does not take them).",
            None,
            &s.ports,
            |p| (port(p), p.gso_segmented),
        )?;
        f.metric(
            Kind::Counter,
            "vswitchd_port_csum_completed",
            "Partial checksums completed in software (the peer does not take them).",
            None,
            &s.ports,
            |p| (port(p), p.csum_completed),
        )?;
        f.metric(
            Kind::Gauge,
            "vswitchd_port_link_up",
            "1 if the port's link is up (a guest is attached and running).",
            None,
            &s.ports,
            |p| (port(p), u64::from(p.link_up)),
        )?;

        // Switches.
        let switch = |w: &SwitchSample| [("switch", w.switch.clone())];
        f.metric(
            Kind::Gauge,
            "vswitchd_fdb_entries",
            "MAC addresses in the forwarding database.",
            None,
            &s.switches,
            |w| (switch(w), u64::from(w.fdb.entries)),
        )?;
        f.metric(
            Kind::Counter,
            "vswitchd_fdb_learned",
            "MAC addresses learned.",
            None,
            &s.switches,
            |w| (switch(w), w.fdb.learned),
        )?;
        f.metric(
            Kind::Counter,
            "vswitchd_fdb_moved",
            "Learned MAC addresses that moved to another port.",
            None,
            &s.switches,
            |w| (switch(w), w.fdb.moved),
        )?;
        f.metric(
            Kind::Counter,
            "vswitchd_fdb_aged",
            "MAC addresses aged out.",
            None,
            &s.switches,
            |w| (switch(w), w.fdb.aged),
        )?;
        let refused: Vec<(&SwitchSample, &str, u64)> = s
            .switches
            .iter()
            .flat_map(|w| {
                [
                    (w, "full", w.fdb.refused_full),
                    (w, "port_limit", w.fdb.refused_port_limit),
                    (w, "move", w.fdb.refused_move),
                ]
            })
            .collect();
        f.metric(
            Kind::Counter,
            "vswitchd_fdb_refused",
            "MAC addresses not learned or not moved, by reason (table full, port limit, the destination port's move hold).",
            None,
            &refused,
            |&(w, reason, n)| {
                let [sw] = switch(w);
                ([sw, ("reason", reason.to_owned())], n)
            },
        )?;

        // Tunnels.
        let tunnel = |t: &TunnelSample| [("switch", t.switch.clone()), ("port", t.port.clone())];
        type TunnelCount = fn(&TunnelSample) -> u64;
        let tunnel_counters: [(Kind, &str, &str, Option<Unit>, TunnelCount); 9] = [
            (
                Kind::Counter,
                "vswitchd_tunnel_rx_packets",
                "Frames decapsulated and handed to the switch.",
                None,
                |t| t.counters.rx_packets,
            ),
            (
                Kind::Counter,
                "vswitchd_tunnel_rx",
                "Inner frame bytes decapsulated.",
                bytes(),
                |t| t.counters.rx_bytes,
            ),
            (
                Kind::Counter,
                "vswitchd_tunnel_rx_coalesced",
                "Received inner TCP segments merged into the segment before them (one GSO frame per run within a receive batch); the switch was handed rx_packets minus these.",
                None,
                |t| t.counters.rx_coalesced,
            ),
            (
                Kind::Counter,
                "vswitchd_tunnel_tx_packets",
                "Frames encapsulated and sent (one per VTEP when flooding).",
                None,
                |t| t.counters.tx_packets,
            ),
            (
                Kind::Counter,
                "vswitchd_tunnel_tx",
                "Inner frame bytes encapsulated and sent.",
                bytes(),
                |t| t.counters.tx_bytes,
            ),
            (
                Kind::Gauge,
                "vswitchd_tunnel_remote_entries",
                "Remote MAC addresses known behind VTEPs.",
                None,
                |t| u64::from(t.remote_fdb.entries),
            ),
            (
                Kind::Counter,
                "vswitchd_tunnel_remote_learned",
                "Remote MAC addresses learned.",
                None,
                |t| t.remote_fdb.learned,
            ),
            (
                Kind::Counter,
                "vswitchd_tunnel_remote_moved",
                "Remote MAC addresses that moved to another VTEP.",
                None,
                |t| t.remote_fdb.moved,
            ),
            (
                Kind::Counter,
                "vswitchd_tunnel_remote_aged",
                "Remote MAC addresses aged out.",
                None,
                |t| t.remote_fdb.aged,
            ),
        ];
        for (kind, name, help, unit, value) in tunnel_counters {
            f.metric(kind, name, help, unit, &s.tunnels, |t| {
                (tunnel(t), value(t))
            })?;
        }
        let reasons = |t: &TunnelSample| {
            let drops = TunnelDrop::ALL.map(|r| (r.name(), t.counters.dropped(r)));
            let refused = [
                ("full", t.remote_fdb.refused_full),
                ("vtep_limit", t.remote_fdb.refused_vtep_limit),
            ];
            (drops, refused)
        };
        let tunnel_drops: Vec<(&TunnelSample, &str, u64)> = s
            .tunnels
            .iter()
            .flat_map(|t| reasons(t).0.map(|(r, n)| (t, r, n)))
            .collect();
        let tunnel_refused: Vec<(&TunnelSample, &str, u64)> = s
            .tunnels
            .iter()
            .flat_map(|t| reasons(t).1.map(|(r, n)| (t, r, n)))
            .collect();
        let by_reason = |&(t, reason, n): &(&TunnelSample, &str, u64)| {
            let [sw, port] = tunnel(t);
            ([sw, port, ("reason", reason.to_owned())], n)
        };
        f.metric(
            Kind::Counter,
            "vswitchd_tunnel_drops",
            "Tunnel packets dropped, by reason.",
            None,
            &tunnel_drops,
            by_reason,
        )?;
        f.metric(
            Kind::Counter,
            "vswitchd_tunnel_remote_refused",
            "Remote MAC addresses not learned, by reason (table full, VTEP limit).",
            None,
            &tunnel_refused,
            by_reason,
        )?;

        // Exports.
        let volume = |e: &ExportSample| [("pool", e.pool.clone()), ("volume", e.volume.clone())];
        type Count = fn(&ExportSample) -> u64;
        let export_counters: [(&str, &str, Option<Unit>, Count); 16] = [
            ("vswitchd_blk_reads", "Read requests.", None, |e| e.reads),
            ("vswitchd_blk_writes", "Write requests.", None, |e| e.writes),
            ("vswitchd_blk_read", "Bytes read.", bytes(), |e| {
                e.read_bytes
            }),
            ("vswitchd_blk_write", "Bytes written.", bytes(), |e| {
                e.write_bytes
            }),
            ("vswitchd_blk_flushes", "Flush requests.", None, |e| {
                e.flushes
            }),
            (
                "vswitchd_blk_discards",
                "Discard and write-zeroes requests.",
                None,
                |e| e.discards,
            ),
            (
                "vswitchd_blk_io_errors",
                "Requests failed by the backing device or pool.",
                None,
                |e| e.io_errors,
            ),
            (
                "vswitchd_blk_out_of_space",
                "Writes failed because the pool was full.",
                None,
                |e| e.out_of_space,
            ),
            (
                "vswitchd_blk_invalid_requests",
                "Requests refused at parsing (out of range, read-only, malformed, unknown).",
                None,
                |e| e.invalid,
            ),
            (
                "vswitchd_blk_bad_chains",
                "Descriptor chains dropped without a status.",
                None,
                |e| e.bad_chains,
            ),
            (
                "vswitchd_blk_too_large",
                "Reads and writes refused for moving more than the per-request limit.",
                None,
                |e| e.too_large,
            ),
            (
                "vswitchd_blk_broken_queues",
                "Queues stopped because the driver broke them (avail index, ring addresses).",
                None,
                |e| e.broken_queues,
            ),
            (
                "vswitchd_blk_resubmitted",
                "Requests a previous daemon left in flight, run again after a reconnect.",
                None,
                |e| e.resubmitted,
            ),
            (
                "vswitchd_blk_handover_waits",
                "Rings that waited for another session (a migration's source) to stop the queues.",
                None,
                |e| e.handover_waits,
            ),
            (
                "vswitchd_blk_handover_refused",
                "Rings refused because another session still ran the queues after the wait.",
                None,
                |e| e.handover_refused,
            ),
            (
                "vswitchd_blk_throttled",
                "Requests that waited for the export's I/O limits before they started.",
                None,
                |e| e.throttled,
            ),
        ];
        for (name, help, unit, value) in export_counters {
            f.metric(Kind::Counter, name, help, unit, &s.exports, |e| {
                (volume(e), value(e))
            })?;
        }
        let histograms: Vec<(&ExportSample, &LatencySample)> = s
            .exports
            .iter()
            .flat_map(|e| e.latency.iter().map(move |l| (e, l)))
            .collect();
        if !histograms.is_empty() {
            let unit = Unit::Seconds;
            let mut m = f.enc.encode_descriptor(
                "vswitchd_blk_request_duration",
                "Request latency from submission to completion, by operation.",
                Some(&unit),
                MetricType::Histogram,
            )?;
            for (e, l) in histograms {
                let [pool, vol] = volume(e);
                let labels = [pool, vol, ("op", l.op.clone())];
                let mut buckets = l.buckets.clone();
                if buckets.last().is_none_or(|&(le, _)| le != f64::INFINITY) {
                    buckets.push((f64::INFINITY, 0));
                }
                let count = buckets.iter().map(|&(_, n)| n).sum();
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    l.sum_seconds,
                    count,
                    &buckets,
                    None,
                )?;
            }
        }

        // Pools and volumes.
        let pool = |p: &PoolSample| [("pool", p.pool.clone())];
        type Space = fn(&PoolSample) -> u64;
        let pool_gauges: [(&str, &str, Space); 5] = [
            (
                "vswitchd_pool_capacity",
                "Data capacity of the pool.",
                |p| p.capacity_bytes,
            ),
            ("vswitchd_pool_used", "Bytes of used clusters.", |p| {
                p.used_bytes
            }),
            ("vswitchd_pool_free", "Bytes of free clusters.", |p| {
                p.free_bytes
            }),
            (
                "vswitchd_pool_releasing",
                "Bytes freed, free after the next flush.",
                |p| p.releasing_bytes,
            ),
            (
                "vswitchd_pool_provisioned",
                "Sum of the volumes' sizes (may exceed the capacity).",
                |p| p.provisioned_bytes,
            ),
        ];
        for (name, help, value) in pool_gauges {
            f.metric(Kind::Gauge, name, help, bytes(), &s.pools, |p| {
                (pool(p), value(p))
            })?;
        }
        let pool_state: [(Kind, &str, &str, Space); 5] = [
            (
                Kind::Gauge,
                "vswitchd_pool_used_percent",
                "Percent of the pool's clusters used, rounded down.",
                |p| p.used_percent,
            ),
            (
                Kind::Gauge,
                "vswitchd_pool_warn_percent",
                "The pool's warn_percent.",
                |p| p.warn_percent,
            ),
            (
                Kind::Gauge,
                "vswitchd_pool_over_warn_threshold",
                "1 while the pool's used percent is at or above warn_percent.",
                |p| u64::from(p.over_warn),
            ),
            (
                Kind::Gauge,
                "vswitchd_pool_paused_requests",
                "Requests waiting for space in the full pool (on_full = pause).",
                |p| p.paused,
            ),
            (
                Kind::Counter,
                "vswitchd_pool_requests_paused",
                "Requests that waited for space in the full pool.",
                |p| p.paused_total,
            ),
        ];
        for (kind, name, help, value) in pool_state {
            f.metric(kind, name, help, None, &s.pools, |p| (pool(p), value(p)))?;
        }
        let vol = |v: &VolumeSample| [("pool", v.pool.clone()), ("volume", v.volume.clone())];
        type Usage = fn(&VolumeSample) -> u64;
        let volume_gauges: [(&str, &str, Usage); 3] = [
            ("vswitchd_volume_size", "Virtual size of the volume.", |v| {
                v.size_bytes
            }),
            (
                "vswitchd_volume_allocated",
                "Bytes of clusters mapped by the volume.",
                |v| v.allocated_bytes,
            ),
            (
                "vswitchd_volume_exclusive",
                "Bytes of clusters mapped by this volume alone.",
                |v| v.exclusive_bytes,
            ),
        ];
        for (name, help, value) in volume_gauges {
            f.metric(Kind::Gauge, name, help, bytes(), &s.volumes, |v| {
                (vol(v), value(v))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::testing::{parse, parse_value, sample_snapshot, value, Sample};
    use vhost_backends::blk::LATENCY_BOUNDS_US;

    #[test]
    fn render_parses_with_names_labels_and_values() {
        let text = render(&sample_snapshot());
        let exp = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let port = [("switch", "br0"), ("port", "vm1")];
        assert_eq!(value(&exp, "vswitchd_port_rx_packets_total", &port), 10.0);
        assert_eq!(value(&exp, "vswitchd_port_rx_bytes_total", &port), 1000.0);
        assert_eq!(value(&exp, "vswitchd_port_tx_packets_total", &port), 20.0);
        assert_eq!(value(&exp, "vswitchd_port_tx_bytes_total", &port), 2000.0);
        assert_eq!(value(&exp, "vswitchd_port_link_up", &port), 1.0);
        assert_eq!(
            value(&exp, "vswitchd_port_tx_gso_packets_total", &port),
            7.0
        );
        assert_eq!(value(&exp, "vswitchd_port_gso_segmented_total", &port), 8.0);
        assert_eq!(
            value(&exp, "vswitchd_port_csum_completed_total", &port),
            9.0
        );
        assert_eq!(
            value(
                &exp,
                "vswitchd_port_link_up",
                &[("switch", "br0"), ("port", "vm2")]
            ),
            0.0
        );
        let drops = [("switch", "br0"), ("port", "vm1"), ("reason", "no_buffer")];
        assert_eq!(value(&exp, "vswitchd_port_drops_total", &drops), 4.0);
        assert_eq!(value(&exp, "vswitchd_port_broken_queues_total", &port), 6.0);
        assert_eq!(value(&exp, "vswitchd_port_announces_total", &port), 2.0);
        for (q, rx, tx) in [("0", 4.0, 15.0), ("1", 6.0, 5.0)] {
            let queue = [("switch", "br0"), ("port", "vm1"), ("queue", q)];
            assert_eq!(
                value(&exp, "vswitchd_port_queue_rx_packets_total", &queue),
                rx
            );
            assert_eq!(
                value(&exp, "vswitchd_port_queue_tx_packets_total", &queue),
                tx
            );
        }
        // A single-queue port has no per-queue samples.
        assert!(
            !text.contains("queue_rx_packets_total{switch=\"br0\",port=\"vm2\""),
            "{text}"
        );
        assert_eq!(
            value(
                &exp,
                "vswitchd_port_broken_queues_total",
                &[("switch", "br0"), ("port", "vm2")]
            ),
            0.0
        );
        assert_eq!(
            exp.families["vswitchd_port_rx_bytes"].unit.as_deref(),
            Some("bytes")
        );
        assert_eq!(exp.families["vswitchd_port_drops"].kind, "counter");
        assert_eq!(exp.families["vswitchd_port_link_up"].kind, "gauge");

        let sw = [("switch", "br0")];
        assert_eq!(value(&exp, "vswitchd_fdb_entries", &sw), 2.0);
        assert_eq!(value(&exp, "vswitchd_fdb_learned_total", &sw), 5.0);
        assert_eq!(value(&exp, "vswitchd_fdb_moved_total", &sw), 1.0);
        assert_eq!(value(&exp, "vswitchd_fdb_aged_total", &sw), 3.0);
        let full = [("switch", "br0"), ("reason", "full")];
        let limit = [("switch", "br0"), ("reason", "port_limit")];
        assert_eq!(value(&exp, "vswitchd_fdb_refused_total", &full), 7.0);
        assert_eq!(value(&exp, "vswitchd_fdb_refused_total", &limit), 8.0);
        let moves = [("switch", "br0"), ("reason", "move")];
        assert_eq!(value(&exp, "vswitchd_fdb_refused_total", &moves), 9.0);

        // Tunnels (see `testing::tunnel_counters`).
        let vx0 = [("switch", "br0"), ("port", "vx0")];
        for (name, v) in [
            ("vswitchd_tunnel_rx_packets_total", 41.0),
            ("vswitchd_tunnel_rx_bytes_total", 4100.0),
            ("vswitchd_tunnel_rx_coalesced_total", 43.0),
            ("vswitchd_tunnel_tx_packets_total", 42.0),
            ("vswitchd_tunnel_tx_bytes_total", 4200.0),
            ("vswitchd_tunnel_remote_entries", 4.0),
            ("vswitchd_tunnel_remote_learned_total", 31.0),
            ("vswitchd_tunnel_remote_moved_total", 32.0),
            ("vswitchd_tunnel_remote_aged_total", 33.0),
        ] {
            assert_eq!(value(&exp, name, &vx0), v, "{name}");
        }
        let reason = |r| [("switch", "br0"), ("port", "vx0"), ("reason", r)];
        let drops = "vswitchd_tunnel_drops_total";
        assert_eq!(value(&exp, drops, &reason("bad_header")), 1.0);
        assert_eq!(value(&exp, drops, &reason("unknown_vni")), 0.0);
        let refused = "vswitchd_tunnel_remote_refused_total";
        assert_eq!(value(&exp, refused, &reason("full")), 34.0);
        assert_eq!(value(&exp, refused, &reason("vtep_limit")), 35.0);
        assert_eq!(exp.families["vswitchd_tunnel_remote_entries"].kind, "gauge");

        // The odd volume name survives escaping.
        let vol = [("pool", "fast"), ("volume", "we\"ird\\vol\nname")];
        for (name, v) in [
            ("vswitchd_blk_reads_total", 11.0),
            ("vswitchd_blk_writes_total", 12.0),
            ("vswitchd_blk_read_bytes_total", 4096.0 * 11.0),
            ("vswitchd_blk_write_bytes_total", 4096.0 * 12.0),
            ("vswitchd_blk_flushes_total", 13.0),
            ("vswitchd_blk_discards_total", 14.0),
            ("vswitchd_blk_io_errors_total", 15.0),
            ("vswitchd_blk_out_of_space_total", 16.0),
            ("vswitchd_blk_invalid_requests_total", 17.0),
            ("vswitchd_blk_bad_chains_total", 18.0),
            ("vswitchd_blk_too_large_total", 19.0),
            ("vswitchd_blk_broken_queues_total", 20.0),
            ("vswitchd_blk_resubmitted_total", 21.0),
            ("vswitchd_blk_handover_waits_total", 22.0),
            ("vswitchd_blk_handover_refused_total", 23.0),
            ("vswitchd_blk_throttled_total", 24.0),
            ("vswitchd_volume_size_bytes", 2.0 * (1u64 << 30) as f64),
            ("vswitchd_volume_allocated_bytes", (1u64 << 20) as f64),
            ("vswitchd_volume_exclusive_bytes", 65536.0),
        ] {
            assert_eq!(value(&exp, name, &vol), v, "{name}");
        }
        let pool = [("pool", "fast")];
        assert_eq!(
            value(&exp, "vswitchd_pool_capacity_bytes", &pool),
            (1u64 << 30) as f64
        );
        assert_eq!(
            value(&exp, "vswitchd_pool_used_bytes", &pool),
            (1u64 << 20) as f64
        );
        assert_eq!(value(&exp, "vswitchd_pool_releasing_bytes", &pool), 16384.0);
        assert_eq!(
            value(&exp, "vswitchd_pool_provisioned_bytes", &pool),
            2.0 * (1u64 << 30) as f64
        );
        assert_eq!(
            value(&exp, "vswitchd_pool_free_bytes", &pool),
            ((1u64 << 30) - (1 << 20)) as f64
        );
        for (name, v) in [
            ("vswitchd_pool_used_percent", 0.0),
            ("vswitchd_pool_warn_percent", 80.0),
            ("vswitchd_pool_over_warn_threshold", 0.0),
            ("vswitchd_pool_paused_requests", 3.0),
            ("vswitchd_pool_requests_paused_total", 41.0),
        ] {
            assert_eq!(value(&exp, name, &pool), v, "{name}");
        }

        // Histograms: checked monotone with +Inf = count by the parser.
        let h = &exp.families["vswitchd_blk_request_duration_seconds"];
        assert_eq!(h.kind, "histogram");
        assert_eq!(h.unit.as_deref(), Some("seconds"));
        let read = [vol[0], vol[1], ("op", "read")];
        assert_eq!(
            value(&exp, "vswitchd_blk_request_duration_seconds_count", &read),
            6.0
        );
        let sum = value(&exp, "vswitchd_blk_request_duration_seconds_sum", &read);
        assert!((sum - 2.00535).abs() < 1e-9, "{sum}");
        let read_buckets: Vec<&Sample> = h
            .samples
            .iter()
            .filter(|s| s.name.ends_with("_bucket") && s.labels["op"] == "read")
            .collect();
        assert_eq!(read_buckets.len(), LATENCY_BOUNDS_US.len() + 1);
        let le = |s: &Sample| parse_value(&s.labels["le"]).unwrap();
        assert_eq!(le(read_buckets[0]), 16e-6);
        assert_eq!(read_buckets[0].value, 1.0); // 10 us
        assert_eq!(read_buckets[1].value, 3.0); // + 2 x 20 us
        assert_eq!(read_buckets[LATENCY_BOUNDS_US.len() - 1].value, 5.0); // <= 1.05 s
        assert_eq!(read_buckets.last().unwrap().value, 6.0);
        let write = [vol[0], vol[1], ("op", "write")];
        assert_eq!(
            value(&exp, "vswitchd_blk_request_duration_seconds_count", &write),
            0.0
        );
        let flush = [vol[0], vol[1], ("op", "flush")];
        assert_eq!(
            value(&exp, "vswitchd_blk_request_duration_seconds_count", &flush),
            3.0
        );
        let inf = [vol[0], vol[1], ("le", "+Inf"), ("op", "flush")];
        assert_eq!(
            value(&exp, "vswitchd_blk_request_duration_seconds_bucket", &inf),
            3.0
        );
    }

    #[test]
    fn empty_snapshot_renders_just_eof() {
        let text = render(&Snapshot::default());
        assert_eq!(text, "# EOF\n");
        assert!(parse(&text).unwrap().families.is_empty());
    }
}
