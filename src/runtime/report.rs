//! The SIGUSR1 report: a [`Snapshot`] as `key=value` lines, one per port,
//! FDB, tunnel, export, pool and volume. Scripts and tests parse these
//! lines: keep names and order.

use super::snapshot::{ExportSample, Snapshot};
use vswitch::vxlan::TunnelDrop;

/// `counters switch=br0 port=vm1 link=up rx_packets=.. ... drop_runt=..`,
/// `fdb switch=..`, `tunnel switch=.. port=..`, `counters export=..`,
/// `pool ..` and `volume pool=..` lines, in that order per switch and pool.
pub fn report(snap: &Snapshot) -> Vec<String> {
    let mut lines = Vec::new();
    for sw in &snap.switches {
        for p in snap.ports.iter().filter(|p| p.switch == sw.switch) {
            let mut line = format!(
                "counters switch={} port={} link={} rx_packets={} rx_bytes={} tx_packets={} tx_bytes={}",
                p.switch,
                p.port,
                if p.link_up { "up" } else { "down" },
                p.rx_packets,
                p.rx_bytes,
                p.tx_packets,
                p.tx_bytes
            );
            for (reason, n) in &p.drops {
                line.push_str(&format!(" drop_{reason}={n}"));
            }
            line.push_str(&format!(
                " broken_queues={} tx_gso_packets={} gso_segmented={} csum_completed={} announces={}",
                p.broken_queues, p.tx_gso_packets, p.gso_segmented, p.csum_completed, p.announces
            ));
            for (i, q) in p.queues.iter().enumerate() {
                line.push_str(&format!(
                    " q{i}_rx_packets={} q{i}_tx_packets={}",
                    q.rx_packets, q.tx_packets
                ));
            }
            lines.push(line);
        }
        let f = &sw.fdb;
        lines.push(format!(
            "fdb switch={} entries={} learned={} moved={} aged={} refused_full={} refused_port_limit={} refused_move={}",
            sw.switch, f.entries, f.learned, f.moved, f.aged, f.refused_full, f.refused_port_limit, f.refused_move
        ));
    }
    for t in &snap.tunnels {
        let (c, f) = (&t.counters, &t.remote_fdb);
        let mut line = format!(
            "tunnel switch={} port={} rx_packets={} rx_bytes={} tx_packets={} tx_bytes={} remote_entries={} remote_learned={} remote_moved={} remote_refused_full={} remote_refused_vtep_limit={}",
            t.switch, t.port, c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes,
            f.entries, f.learned, f.moved, f.refused_full, f.refused_vtep_limit
        );
        for r in TunnelDrop::ALL {
            line.push_str(&format!(" drop_{}={}", r.name(), c.dropped(r)));
        }
        line.push_str(&format!(" rx_coalesced={}", c.rx_coalesced));
        lines.push(line);
    }
    for e in &snap.exports {
        lines.push(format!(
            "counters export={} {}",
            e.volume,
            export_summary(e)
        ));
    }
    for p in &snap.pools {
        let clusters = |bytes: u64| bytes.checked_div(p.cluster_size).unwrap_or(0);
        lines.push(format!(
            "pool {} clusters={} used={} free={} releasing={} provisioned_bytes={} capacity_bytes={} \
             warn_percent={} over_warn={} paused={} paused_total={}",
            p.pool,
            p.clusters,
            clusters(p.used_bytes),
            clusters(p.free_bytes),
            clusters(p.releasing_bytes),
            p.provisioned_bytes,
            p.capacity_bytes,
            p.warn_percent,
            u8::from(p.over_warn),
            p.paused,
            p.paused_total
        ));
        for v in snap.volumes.iter().filter(|v| v.pool == p.pool) {
            lines.push(format!(
                "volume pool={} name={} kind={:?} size={} allocated={} exclusive={}",
                v.pool, v.volume, v.kind, v.size_bytes, v.allocated_bytes, v.exclusive_bytes
            ));
        }
    }
    lines
}

/// An export's counters as `vhost_backends::blk::BlkCounters::summary`
/// words them (the report's format before the snapshot existed).
fn export_summary(e: &ExportSample) -> String {
    format!(
        "reads {} ({} B) writes {} ({} B) flushes {} discards {} io_errors {} out_of_space {} invalid {} bad_chains {} too_large {} broken_queues {} resubmitted {} handover_waits {} handover_refused {} throttled {}",
        e.reads,
        e.read_bytes,
        e.writes,
        e.write_bytes,
        e.flushes,
        e.discards,
        e.io_errors,
        e.out_of_space,
        e.invalid,
        e.bad_chains,
        e.too_large,
        e.broken_queues,
        e.resubmitted,
        e.handover_waits,
        e.handover_refused,
        e.throttled
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::snapshot::{
        PoolSample, PortSample, SwitchSample, TunnelSample, VolumeSample,
    };
    use vswitch::vxlan::{RemoteFdbStats, TunnelCounters};

    #[test]
    fn report_lines_are_exact() {
        let tunnel = TunnelCounters::default();
        tunnel.add_rx(41, 4100);
        tunnel.add_tx(42, 4200);
        tunnel.add_drop(TunnelDrop::UnknownVni);
        tunnel.add_coalesced(43);
        let snap = Snapshot {
            ports: vec![PortSample {
                switch: "br0".into(),
                port: "vx0".into(),
                link_up: true,
                rx_packets: 1,
                rx_bytes: 2,
                tx_packets: 3,
                tx_bytes: 4,
                drops: vec![("runt".into(), 5)],
                broken_queues: 6,
                announces: 30,
                tx_gso_packets: 14,
                gso_segmented: 15,
                csum_completed: 16,
                queues: vec![
                    vswitch::QueueSnapshot {
                        rx_packets: 26,
                        tx_packets: 27,
                    },
                    vswitch::QueueSnapshot {
                        rx_packets: 28,
                        tx_packets: 29,
                    },
                ],
            }],
            switches: vec![SwitchSample {
                switch: "br0".into(),
                fdb: vswitch::FdbStats {
                    entries: 7,
                    learned: 8,
                    moved: 9,
                    aged: 10,
                    refused_full: 11,
                    refused_port_limit: 12,
                    refused_move: 13,
                },
            }],
            tunnels: vec![TunnelSample {
                switch: "br0".into(),
                port: "vx0".into(),
                counters: tunnel.snapshot(),
                remote_fdb: RemoteFdbStats {
                    entries: 14,
                    learned: 15,
                    moved: 16,
                    aged: 17,
                    refused_full: 18,
                    refused_vtep_limit: 19,
                },
            }],
            exports: vec![ExportSample {
                pool: "p0".into(),
                volume: "v".into(),
                reads: 20,
                read_bytes: 21,
                ..Default::default()
            }],
            pools: vec![PoolSample {
                pool: "p0".into(),
                cluster_size: 65536,
                clusters: 1024,
                capacity_bytes: 1024 * 65536,
                used_bytes: 3 * 65536,
                free_bytes: 1000 * 65536,
                releasing_bytes: 2 * 65536,
                provisioned_bytes: 22,
                used_percent: 0,
                warn_percent: 80,
                over_warn: true,
                paused: 4,
                paused_total: 5,
            }],
            volumes: vec![VolumeSample {
                pool: "p0".into(),
                volume: "v".into(),
                kind: vblock::meta::VolumeKind::Snapshot,
                size_bytes: 23,
                allocated_bytes: 24,
                exclusive_bytes: 25,
            }],
        };
        assert_eq!(
            report(&snap),
            [
                "counters switch=br0 port=vx0 link=up rx_packets=1 rx_bytes=2 tx_packets=3 tx_bytes=4 drop_runt=5 broken_queues=6 tx_gso_packets=14 gso_segmented=15 csum_completed=16 announces=30 q0_rx_packets=26 q0_tx_packets=27 q1_rx_packets=28 q1_tx_packets=29",
                "fdb switch=br0 entries=7 learned=8 moved=9 aged=10 refused_full=11 refused_port_limit=12 refused_move=13",
                "tunnel switch=br0 port=vx0 rx_packets=41 rx_bytes=4100 tx_packets=42 tx_bytes=4200 remote_entries=14 remote_learned=15 remote_moved=16 remote_refused_full=18 remote_refused_vtep_limit=19 drop_bad_header=0 drop_unknown_vni=1 drop_unknown_vtep=0 drop_too_big=0 drop_inner_runt=0 drop_inner_tagged=0 drop_tx_busy=0 drop_tx_error=0 drop_held_station=0 rx_coalesced=43",
                "counters export=v reads 20 (21 B) writes 0 (0 B) flushes 0 discards 0 io_errors 0 out_of_space 0 invalid 0 bad_chains 0 too_large 0 broken_queues 0 resubmitted 0 handover_waits 0 handover_refused 0 throttled 0",
                "pool p0 clusters=1024 used=3 free=1000 releasing=2 provisioned_bytes=22 capacity_bytes=67108864 \
                 warn_percent=80 over_warn=1 paused=4 paused_total=5",
                "volume pool=p0 name=v kind=Snapshot size=23 allocated=24 exclusive=25",
            ]
        );
    }
}
