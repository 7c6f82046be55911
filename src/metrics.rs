//! The opt-in Prometheus endpoint: a [`MetricsSnapshot`] of the daemon's
//! counters, [`render`]ed in the OpenMetrics text format by
//! `prometheus-client`, and served at `GET /metrics` by a small HTTP/1.1
//! server over std's `TcpListener` ([`serve`]).
//!
//! Metric families (every counter's samples carry the `_total` suffix):
//!
//! | family | type | labels |
//! | --- | --- | --- |
//! | `vswitchd_port_rx_packets`, `vswitchd_port_tx_packets` | counter | `switch`, `port` |
//! | `vswitchd_port_rx_bytes`, `vswitchd_port_tx_bytes` | counter | `switch`, `port` |
//! | `vswitchd_port_drops` | counter | `switch`, `port`, `reason` |
//! | `vswitchd_port_broken_queues` | counter | `switch`, `port` |
//! | `vswitchd_port_link_up` | gauge (0/1) | `switch`, `port` |
//! | `vswitchd_fdb_entries` | gauge | `switch` |
//! | `vswitchd_fdb_learned`, `vswitchd_fdb_moved`, `vswitchd_fdb_aged` | counter | `switch` |
//! | `vswitchd_fdb_refused` | counter | `switch`, `reason` (`full`, `port_limit`, `move`) |
//! | `vswitchd_blk_reads`, `_writes`, `_flushes`, `_discards` | counter | `pool`, `volume` |
//! | `vswitchd_blk_read_bytes`, `vswitchd_blk_write_bytes` | counter | `pool`, `volume` |
//! | `vswitchd_blk_io_errors`, `_out_of_space`, `_invalid_requests`, `_bad_chains`, `_too_large`, `_broken_queues`, `_resubmitted` | counter | `pool`, `volume` |
//! | `vswitchd_blk_request_duration_seconds` | histogram | `pool`, `volume`, `op` (`read`, `write`, `flush`) |
//! | `vswitchd_pool_{capacity,used,free,releasing,provisioned}_bytes` | gauge | `pool` |
//! | `vswitchd_volume_{size,allocated,exclusive}_bytes` | gauge | `pool`, `volume` |

use crate::storage::OpenPool;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vblock::pool::PoolGauges;
use vhost_backends::blk::{BlkExport, LatencySnapshot, TimedOp, LATENCY_BOUNDS_US};
use vswitch::{PortInfo, Switch};

/// The content type of [`render`]'s output (what `prometheus-client`
/// documents for its text encoding).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything [`render`] shows, copied out of the daemon at one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub ports: Vec<PortSample>,
    pub switches: Vec<SwitchSample>,
    pub exports: Vec<ExportSample>,
    pub pools: Vec<PoolSample>,
    pub volumes: Vec<VolumeSample>,
}

/// One switch port.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PortSample {
    pub switch: String,
    pub port: String,
    pub link_up: bool,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Drops by reason (`vswitch::DropReason::name`).
    pub drops: Vec<(String, u64)>,
    pub broken_queues: u64,
}

/// One switch's forwarding database.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SwitchSample {
    pub switch: String,
    pub fdb_entries: u64,
    pub learned: u64,
    pub moved: u64,
    pub aged: u64,
    pub refused_full: u64,
    pub refused_port_limit: u64,
    pub refused_move: u64,
}

/// One vhost-user-blk export (a volume of a pool).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportSample {
    pub pool: String,
    pub volume: String,
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub io_errors: u64,
    pub out_of_space: u64,
    pub invalid: u64,
    pub bad_chains: u64,
    pub too_large: u64,
    pub broken_queues: u64,
    pub resubmitted: u64,
    /// Request latency, one histogram per operation.
    pub latency: Vec<LatencySample>,
}

/// A latency histogram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencySample {
    /// `read`, `write` or `flush`.
    pub op: String,
    /// (upper bound in seconds, requests in that bucket alone), ascending;
    /// the last bound is `f64::INFINITY` (added by [`render`] if missing).
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
}

/// One pool's space, in bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolSample {
    pub pool: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub releasing_bytes: u64,
    /// Sum of the volumes' sizes (may exceed the capacity).
    pub provisioned_bytes: u64,
}

/// One volume of a pool, exported or not.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VolumeSample {
    pub pool: String,
    pub volume: String,
    pub size_bytes: u64,
    pub allocated_bytes: u64,
    pub exclusive_bytes: u64,
}

impl PortSample {
    pub fn new(switch: &Switch, port: &PortInfo) -> PortSample {
        let c = port.state.counters.snapshot();
        PortSample {
            switch: switch.name.clone(),
            port: port.name.clone(),
            link_up: port.state.is_up(),
            rx_packets: c.rx_packets,
            rx_bytes: c.rx_bytes,
            tx_packets: c.tx_packets,
            tx_bytes: c.tx_bytes,
            drops: vswitch::DropReason::ALL
                .iter()
                .map(|&r| (r.name().to_owned(), c.dropped(r)))
                .collect(),
            broken_queues: c.broken_queues,
        }
    }
}

impl SwitchSample {
    pub fn new(switch: &Switch) -> SwitchSample {
        let f = switch.fdb().stats();
        SwitchSample {
            switch: switch.name.clone(),
            fdb_entries: u64::from(f.entries),
            learned: f.learned,
            moved: f.moved,
            aged: f.aged,
            refused_full: f.refused_full,
            refused_port_limit: f.refused_port_limit,
            refused_move: f.refused_move,
        }
    }
}

impl LatencySample {
    pub fn new(op: TimedOp, h: &LatencySnapshot) -> LatencySample {
        let bounds = LATENCY_BOUNDS_US
            .iter()
            .map(|&us| us as f64 / 1e6)
            .chain([f64::INFINITY]);
        LatencySample {
            op: op.name().to_owned(),
            buckets: bounds.zip(h.buckets).collect(),
            sum_seconds: h.sum_us as f64 / 1e6,
        }
    }
}

impl ExportSample {
    /// `export`'s counters; `pool` names the pool it serves from.
    pub fn new(pool: &str, export: &BlkExport) -> ExportSample {
        let c = &export.counters;
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        ExportSample {
            pool: pool.to_owned(),
            volume: export.config.name.clone(),
            reads: g(&c.reads),
            writes: g(&c.writes),
            read_bytes: g(&c.read_bytes),
            write_bytes: g(&c.write_bytes),
            flushes: g(&c.flushes),
            discards: g(&c.discards),
            io_errors: g(&c.io_errors),
            out_of_space: g(&c.out_of_space),
            invalid: g(&c.invalid),
            bad_chains: g(&c.bad_chains),
            too_large: g(&c.too_large),
            broken_queues: g(&c.broken_queues),
            resubmitted: g(&c.resubmitted),
            latency: TimedOp::ALL
                .iter()
                .map(|&op| LatencySample::new(op, &c.latency(op).snapshot()))
                .collect(),
        }
    }
}

/// The space of pool `name` and its volumes, from the figures the pool
/// maintains as it changes (no pool lock, no walk of its maps).
pub fn pool_samples(name: &str, gauges: &PoolGauges) -> (PoolSample, Vec<VolumeSample>) {
    let s = gauges.space();
    let cs = u64::from(s.cluster_size);
    let space = PoolSample {
        pool: name.to_owned(),
        capacity_bytes: s.capacity,
        used_bytes: s.used_clusters * cs,
        free_bytes: s.free_clusters * cs,
        releasing_bytes: s.releasing_clusters * cs,
        provisioned_bytes: s.provisioned,
    };
    let volumes = gauges
        .volumes()
        .into_iter()
        .map(|v| VolumeSample {
            pool: name.to_owned(),
            volume: v.name,
            size_bytes: v.size,
            allocated_bytes: v.allocated,
            exclusive_bytes: v.exclusive,
        })
        .collect();
    (space, volumes)
}

/// The daemon's snapshot: what `counters_report` reads, as samples.
/// `exports` are (pool name, export) pairs. No pool lock is taken: a scrape
/// never waits for (or delays) a pool's I/O or commits.
pub fn snapshot_from<'a>(
    switches: impl IntoIterator<Item = &'a Switch>,
    pools: &[OpenPool],
    exports: impl IntoIterator<Item = (&'a str, &'a BlkExport)>,
) -> MetricsSnapshot {
    let mut snap = MetricsSnapshot::default();
    for sw in switches {
        for port in sw.topology().ports() {
            snap.ports.push(PortSample::new(sw, port));
        }
        snap.switches.push(SwitchSample::new(sw));
    }
    for (pool, export) in exports {
        snap.exports.push(ExportSample::new(pool, export));
    }
    for p in pools {
        let (space, volumes) = pool_samples(&p.name, &p.gauges);
        snap.pools.push(space);
        snap.volumes.extend(volumes);
    }
    snap
}

/// The OpenMetrics text exposition of `snapshot` (ends with `# EOF`).
pub fn render(snapshot: &MetricsSnapshot) -> String {
    render_owned(snapshot.clone())
}

fn render_owned(snapshot: MetricsSnapshot) -> String {
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
struct SnapshotCollector(MetricsSnapshot);

/// One metric family: a descriptor and one sample per item.
struct Family<'e, 'w> {
    enc: &'e mut DescriptorEncoder<'w>,
}

impl Family<'_, '_> {
    fn counter<T, L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        items: &[T],
        sample: impl Fn(&T) -> (L, u64),
    ) -> fmt::Result {
        if items.is_empty() {
            return Ok(());
        }
        let mut m = self
            .enc
            .encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
        for item in items {
            let (labels, value) = sample(item);
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
        }
        Ok(())
    }

    fn gauge<T, L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        items: &[T],
        sample: impl Fn(&T) -> (L, u64),
    ) -> fmt::Result {
        if items.is_empty() {
            return Ok(());
        }
        let mut m = self
            .enc
            .encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
        for item in items {
            let (labels, value) = sample(item);
            m.encode_family(&labels)?.encode_gauge(&value)?;
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
        f.counter(
            "vswitchd_port_rx_packets",
            "Frames received from the port's peer.",
            None,
            &s.ports,
            |p| (port(p), p.rx_packets),
        )?;
        f.counter(
            "vswitchd_port_rx",
            "Bytes received from the port's peer.",
            bytes(),
            &s.ports,
            |p| (port(p), p.rx_bytes),
        )?;
        f.counter(
            "vswitchd_port_tx_packets",
            "Frames delivered to the port's peer.",
            None,
            &s.ports,
            |p| (port(p), p.tx_packets),
        )?;
        f.counter(
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
        f.counter(
            "vswitchd_port_drops",
            "Frames dropped, by reason.",
            None,
            &drops,
            |&(p, reason, n)| {
                let [sw, port] = port(p);
                ([sw, port, ("reason", reason.to_owned())], n)
            },
        )?;
        f.counter(
            "vswitchd_port_broken_queues",
            "Queues stopped because the driver broke them (avail index, ring addresses).",
            None,
            &s.ports,
            |p| (port(p), p.broken_queues),
        )?;
        f.gauge(
            "vswitchd_port_link_up",
            "1 if the port's link is up (a guest is attached and running).",
            None,
            &s.ports,
            |p| (port(p), u64::from(p.link_up)),
        )?;

        // Switches.
        let switch = |w: &SwitchSample| [("switch", w.switch.clone())];
        f.gauge(
            "vswitchd_fdb_entries",
            "MAC addresses in the forwarding database.",
            None,
            &s.switches,
            |w| (switch(w), w.fdb_entries),
        )?;
        f.counter(
            "vswitchd_fdb_learned",
            "MAC addresses learned.",
            None,
            &s.switches,
            |w| (switch(w), w.learned),
        )?;
        f.counter(
            "vswitchd_fdb_moved",
            "Learned MAC addresses that moved to another port.",
            None,
            &s.switches,
            |w| (switch(w), w.moved),
        )?;
        f.counter(
            "vswitchd_fdb_aged",
            "MAC addresses aged out.",
            None,
            &s.switches,
            |w| (switch(w), w.aged),
        )?;
        let refused: Vec<(&SwitchSample, &str, u64)> = s
            .switches
            .iter()
            .flat_map(|w| {
                [
                    (w, "full", w.refused_full),
                    (w, "port_limit", w.refused_port_limit),
                    (w, "move", w.refused_move),
                ]
            })
            .collect();
        f.counter(
            "vswitchd_fdb_refused",
            "MAC addresses not learned or not moved, by reason (table full, port limit, the destination port's move hold).",
            None,
            &refused,
            |&(w, reason, n)| {
                let [sw] = switch(w);
                ([sw, ("reason", reason.to_owned())], n)
            },
        )?;

        // Exports.
        let volume = |e: &ExportSample| [("pool", e.pool.clone()), ("volume", e.volume.clone())];
        type Count = fn(&ExportSample) -> u64;
        let export_counters: [(&str, &str, Option<Unit>, Count); 13] = [
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
        ];
        for (name, help, unit, value) in export_counters {
            f.counter(name, help, unit, &s.exports, |e| (volume(e), value(e)))?;
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
            f.gauge(name, help, bytes(), &s.pools, |p| (pool(p), value(p)))?;
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
            f.gauge(name, help, bytes(), &s.volumes, |v| (vol(v), value(v)))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// HTTP

/// Longest request head (request line and headers) read.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a client has to send its request (and to take the answer).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once; more are closed at once.
const MAX_CLIENTS: usize = 16;

type Source = dyn Fn() -> MetricsSnapshot + Send + Sync;

/// The running endpoint; [`MetricsServer::stop`] (or dropping it) stops it.
pub struct MetricsServer {
    addr: SocketAddr,
    wake: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and joins the accept thread. Clients being served
    /// finish on their own threads (within [`CLIENT_TIMEOUT`]).
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(mut wake) = self.wake.take() {
            let _ = wake.write_all(&[1]);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Serves `GET /metrics` on `addr` from a thread of its own, calling `source`
/// at each scrape. Each client gets a thread of its own, bounded in number
/// and in time, so a slow or silent client never holds up the next scrape.
pub fn serve(
    addr: SocketAddr,
    source: impl Fn() -> MetricsSnapshot + Send + Sync + 'static,
) -> io::Result<MetricsServer> {
    serve_with_timeout(addr, Arc::new(source), CLIENT_TIMEOUT)
}

fn serve_with_timeout(
    addr: SocketAddr,
    source: Arc<Source>,
    timeout: Duration,
) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (wake, woken) = UnixStream::pair()?;
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || accept_loop(listener, woken, source, timeout))?;
    log::info!("metrics: serving http://{addr}/metrics");
    Ok(MetricsServer {
        addr,
        wake: Some(wake),
        thread: Some(thread),
    })
}

/// Counts a client being served; the count drops with it.
struct ClientSlot(Arc<AtomicUsize>);

impl ClientSlot {
    fn take(active: &Arc<AtomicUsize>) -> Option<ClientSlot> {
        active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CLIENTS).then_some(n + 1)
            })
            .ok()
            .map(|_| ClientSlot(active.clone()))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept_loop(listener: TcpListener, woken: UnixStream, source: Arc<Source>, timeout: Duration) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: woken.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two pollfds we own, for descriptors that outlive the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                log::warn!("metrics: poll: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        if fds[1].revents != 0 {
            return;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                let Some(slot) = ClientSlot::take(&active) else {
                    log::debug!("metrics: {peer}: too many clients, closed");
                    continue;
                };
                let source = source.clone();
                let spawned = std::thread::Builder::new()
                    .name("metrics-client".into())
                    .spawn(move || {
                        let _slot = slot;
                        if let Err(e) = serve_client(stream, &*source, timeout) {
                            log::debug!("metrics: {peer}: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    log::warn!("metrics: cannot start a client thread: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                // Out of descriptors and the like: do not spin on it.
                log::warn!("metrics: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Get { path: String, head: bool },
    OtherMethod,
}

/// Why a request head is refused.
#[derive(Debug, PartialEq, Eq)]
enum BadRequest {
    Malformed,
    TooLarge,
}

/// Reads the request head: through the empty line, at most
/// [`MAX_REQUEST_HEAD`] bytes, all within `timeout`. `Ok(None)`: the client
/// closed or timed out first.
fn read_head(
    stream: &mut TcpStream,
    timeout: Duration,
) -> io::Result<Option<Result<Vec<u8>, BadRequest>>> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_REQUEST_HEAD];
    let mut len = 0;
    loop {
        if let Some(end) = head_end(&buf[..len]) {
            buf.truncate(end);
            return Ok(Some(Ok(buf)));
        }
        if len == buf.len() {
            return Ok(Some(Err(BadRequest::TooLarge)));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(None),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
    }
}

/// Length of the head through its blank line (CRLF CRLF, or bare LF LF).
fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        let rest = &buf[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else if rest.starts_with(b"\n\r\n") {
            Some(i + 3)
        } else {
            None
        }
    })
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a request head (request line, then header lines).
fn parse_head(head: &[u8]) -> Result<Request, BadRequest> {
    let text = std::str::from_utf8(head).map_err(|_| BadRequest::Malformed)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().ok_or(BadRequest::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    if !is_token(method)
        || !target.starts_with('/')
        || target.bytes().any(|b| b.is_ascii_control())
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
    {
        return Err(BadRequest::Malformed);
    }
    for header in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = header.split_once(':').ok_or(BadRequest::Malformed)?;
        if !is_token(name) || value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(BadRequest::Malformed);
        }
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok(match method {
        "GET" | "HEAD" => Request::Get {
            path: path.to_owned(),
            head: method == "HEAD",
        },
        _ => Request::OtherMethod,
    })
}

fn serve_client(mut stream: TcpStream, source: &Source, timeout: Duration) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(timeout))?;
    let response = match read_head(&mut stream, timeout)? {
        None => return Ok(()),
        Some(Err(BadRequest::TooLarge)) => text(431, "Request Header Fields Too Large", ""),
        Some(Err(BadRequest::Malformed)) => text(400, "Bad Request", ""),
        Some(Ok(head)) => match parse_head(&head) {
            Err(_) => text(400, "Bad Request", ""),
            Ok(Request::OtherMethod) => text(405, "Method Not Allowed", "Allow: GET, HEAD\r\n"),
            Ok(Request::Get { path, head }) => {
                let mut r = if path == "/metrics" {
                    scrape(source)
                } else {
                    text(404, "Not Found", "")
                };
                r.head_only = head;
                r
            }
        },
    };
    response.write_to(&mut stream)?;
    // Close gently: a client still sending would otherwise get a reset that
    // may destroy the answer before it reads it.
    stream.shutdown(Shutdown::Write)?;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < 64 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra_headers: &'static str,
    body: Vec<u8>,
    head_only: bool,
}

fn text(status: u16, reason: &'static str, extra_headers: &'static str) -> Response {
    Response {
        status,
        reason,
        content_type: "text/plain; charset=utf-8",
        extra_headers,
        body: format!("{status} {reason}\n").into_bytes(),
        head_only: false,
    }
}

/// Renders a snapshot from `source`; a panicking source is a 500, not a
/// dead server.
fn scrape(source: &Source) -> Response {
    let rendered =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| render_owned(source())));
    match rendered {
        Ok(body) => Response {
            status: 200,
            reason: "OK",
            content_type: CONTENT_TYPE,
            extra_headers: "",
            body: body.into_bytes(),
            head_only: false,
        },
        Err(_) => {
            log::warn!("metrics: the snapshot source panicked");
            text(500, "Internal Server Error", "")
        }
    }
}

impl Response {
    fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            self.extra_headers
        );
        let mut out = head.into_bytes();
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        w.write_all(&out)?;
        w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    // -- a strict OpenMetrics text parser ---------------------------------

    #[derive(Debug, Clone, PartialEq)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    #[derive(Debug, Default)]
    struct MetricFamily {
        kind: String,
        help: Option<String>,
        unit: Option<String>,
        samples: Vec<Sample>,
    }

    #[derive(Debug, Default)]
    struct Exposition {
        families: HashMap<String, MetricFamily>,
        order: Vec<String>,
    }

    fn valid_name(s: &str) -> bool {
        let mut b = s.bytes();
        matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
    }

    fn valid_label(s: &str) -> bool {
        let mut b = s.bytes();
        matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
    }

    fn parse_value(s: &str) -> Result<f64, String> {
        match s {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ if s.starts_with('+') || s.is_empty() => Err(format!("bad value {s:?}")),
            _ => s.parse().map_err(|_| format!("bad value {s:?}")),
        }
    }

    fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
        let mut labels = BTreeMap::new();
        let mut rest = s;
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        loop {
            let eq = rest.find('=').ok_or("label without =")?;
            let name = &rest[..eq];
            if !valid_label(name) {
                return Err(format!("bad label name {name:?}"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("unquoted label value")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (_, '\n') => return Err("newline in label value".into()),
                    (_, c) => value.push(c),
                }
            };
            if labels.insert(name.to_owned(), value).is_some() {
                return Err(format!("duplicate label {name}"));
            }
            rest = &rest[end + 1..];
            if let Some(r) = rest.strip_prefix('}') {
                return Ok((labels, r));
            }
            rest = rest.strip_prefix(',').ok_or("expected , or }")?;
        }
    }

    /// Parses `text`, strictly: every sample belongs to the family declared
    /// just before it, with a suffix its type allows; ends with `# EOF`.
    fn parse(text: &str) -> Result<Exposition, String> {
        let body = text.strip_suffix("# EOF\n").ok_or("no # EOF at the end")?;
        let mut exp = Exposition::default();
        let mut current: Option<String> = None;
        for (n, line) in body.lines().enumerate() {
            let ctx = |e: String| format!("line {}: {e}: {line:?}", n + 1);
            if let Some(meta) = line.strip_prefix("# ") {
                let mut it = meta.splitn(3, ' ');
                let (Some(kw), Some(name), Some(arg)) = (it.next(), it.next(), it.next()) else {
                    return Err(ctx("short metadata line".into()));
                };
                if !valid_name(name) {
                    return Err(ctx("bad family name".into()));
                }
                if current.as_deref() != Some(name) {
                    if exp.families.contains_key(name) {
                        return Err(ctx("family declared twice".into()));
                    }
                    exp.families
                        .insert(name.to_owned(), MetricFamily::default());
                    exp.order.push(name.to_owned());
                    current = Some(name.to_owned());
                }
                let fam = exp.families.get_mut(name).unwrap();
                match kw {
                    "HELP" => fam.help = Some(arg.to_owned()),
                    "TYPE" => {
                        if !["counter", "gauge", "histogram"].contains(&arg) {
                            return Err(ctx("unexpected type".into()));
                        }
                        fam.kind = arg.to_owned();
                    }
                    "UNIT" => {
                        if !name.ends_with(&format!("_{arg}")) {
                            return Err(ctx("family name lacks its unit".into()));
                        }
                        fam.unit = Some(arg.to_owned());
                    }
                    _ => return Err(ctx("unknown metadata".into())),
                }
                continue;
            }
            let fam_name = current
                .clone()
                .ok_or_else(|| ctx("sample before TYPE".into()))?;
            let fam = exp.families.get_mut(&fam_name).unwrap();
            let name_end = line
                .find(['{', ' '])
                .ok_or_else(|| ctx("no value".into()))?;
            let name = &line[..name_end];
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end + 1..]).map_err(ctx)?
            } else {
                (BTreeMap::new(), &line[name_end..])
            };
            let value = rest
                .strip_prefix(' ')
                .ok_or_else(|| ctx("no space".into()))?;
            if value.contains(' ') {
                return Err(ctx("trailing fields".into()));
            }
            let value = parse_value(value).map_err(ctx)?;
            let suffix = name
                .strip_prefix(fam_name.as_str())
                .ok_or_else(|| ctx("sample of another family".into()))?;
            let allowed: &[&str] = match fam.kind.as_str() {
                "counter" => &["_total"],
                "gauge" => &[""],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => return Err(ctx("sample before TYPE".into())),
            };
            if !allowed.contains(&suffix) {
                return Err(ctx(format!("suffix {suffix:?} not allowed")));
            }
            if (suffix == "_bucket") != labels.contains_key("le") {
                return Err(ctx("le only on buckets".into()));
            }
            if fam.kind == "counter" && (value.is_nan() || value < 0.0) {
                return Err(ctx("negative counter".into()));
            }
            fam.samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        for (name, fam) in &exp.families {
            if fam.kind.is_empty() || fam.help.is_none() {
                return Err(format!("{name}: no TYPE or HELP"));
            }
            let mut seen = std::collections::HashSet::new();
            for s in &fam.samples {
                if !seen.insert((s.name.clone(), s.labels.clone())) {
                    return Err(format!("{name}: duplicate sample {s:?}"));
                }
            }
            if fam.kind == "histogram" {
                check_histograms(name, fam)?;
            }
        }
        Ok(exp)
    }

    /// Buckets ascending in `le`, counts monotone, `+Inf` equal to `_count`.
    fn check_histograms(name: &str, fam: &MetricFamily) -> Result<(), String> {
        type Labels = Vec<(String, String)>;
        let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts = BTreeMap::new();
        for s in &fam.samples {
            let mut key = s.labels.clone();
            let le = key.remove("le");
            let key: Vec<_> = key.into_iter().collect();
            match s.name.strip_prefix(name).unwrap() {
                "_bucket" => groups
                    .entry(key)
                    .or_default()
                    .push((parse_value(&le.unwrap())?, s.value)),
                "_count" => {
                    counts.insert(key, s.value);
                }
                _ => {}
            }
        }
        if groups.len() != counts.len() {
            return Err(format!("{name}: buckets and counts differ"));
        }
        for (key, buckets) in groups {
            for w in buckets.windows(2) {
                if w[0].0 >= w[1].0 || w[0].1 > w[1].1 {
                    return Err(format!("{name}{key:?}: buckets not monotone: {w:?}"));
                }
            }
            let last = buckets.last().unwrap();
            if last.0 != f64::INFINITY || Some(&last.1) != counts.get(&key) {
                return Err(format!("{name}{key:?}: +Inf bucket is not the count"));
            }
        }
        Ok(())
    }

    fn value(exp: &Exposition, sample: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<f64> = exp
            .families
            .values()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == sample && s.labels == want)
            .map(|s| s.value)
            .collect();
        assert_eq!(found.len(), 1, "{sample}{labels:?}: {found:?}");
        found[0]
    }

    // -- rendering ---------------------------------------------------------

    fn sample_snapshot() -> MetricsSnapshot {
        let hist = vhost_backends::blk::LatencyHistogram::default();
        for us in [10, 20, 20, 300, 5000, 2_000_000] {
            hist.record(Duration::from_micros(us));
        }
        MetricsSnapshot {
            ports: vec![
                PortSample {
                    switch: "br0".into(),
                    port: "vm1".into(),
                    link_up: true,
                    rx_packets: 10,
                    rx_bytes: 1000,
                    tx_packets: 20,
                    tx_bytes: 2000,
                    drops: vec![("runt".into(), 3), ("no_buffer".into(), 4)],
                    broken_queues: 6,
                },
                PortSample {
                    switch: "br0".into(),
                    port: "vm2".into(),
                    ..Default::default()
                },
            ],
            switches: vec![SwitchSample {
                switch: "br0".into(),
                fdb_entries: 2,
                learned: 5,
                moved: 1,
                aged: 3,
                refused_full: 7,
                refused_port_limit: 8,
                refused_move: 9,
            }],
            exports: vec![ExportSample {
                pool: "fast".into(),
                volume: "we\"ird\\vol\nname".into(),
                reads: 11,
                writes: 12,
                read_bytes: 4096 * 11,
                write_bytes: 4096 * 12,
                flushes: 13,
                discards: 14,
                io_errors: 15,
                out_of_space: 16,
                invalid: 17,
                bad_chains: 18,
                too_large: 19,
                broken_queues: 20,
                resubmitted: 21,
                latency: vec![
                    LatencySample::new(TimedOp::Read, &hist.snapshot()),
                    LatencySample::new(TimedOp::Write, &LatencySnapshot::default()),
                    // A histogram without its +Inf bucket gets one.
                    LatencySample {
                        op: "flush".into(),
                        buckets: vec![(0.001, 2), (0.01, 1)],
                        sum_seconds: 0.012,
                    },
                ],
            }],
            pools: vec![PoolSample {
                pool: "fast".into(),
                capacity_bytes: 1 << 30,
                used_bytes: 1 << 20,
                free_bytes: (1 << 30) - (1 << 20),
                releasing_bytes: 16384,
                provisioned_bytes: 2 << 30,
            }],
            volumes: vec![VolumeSample {
                pool: "fast".into(),
                volume: "we\"ird\\vol\nname".into(),
                size_bytes: 2 << 30,
                allocated_bytes: 1 << 20,
                exclusive_bytes: 65536,
            }],
        }
    }

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
        let text = render(&MetricsSnapshot::default());
        assert_eq!(text, "# EOF\n");
        assert!(parse(&text).unwrap().families.is_empty());
    }

    #[test]
    fn parser_is_strict() {
        for bad in [
            "x_total 1\n# EOF\n",
            "# HELP x h\n# TYPE x counter\nx 1\n# EOF\n",
            "# HELP x h\n# TYPE x counter\nx_total{a=\"1\",a=\"2\"} 1\n# EOF\n",
            "# HELP x h\n# TYPE x gauge\nx 1\n",
            "# HELP x h\n# TYPE x gauge\nx{a=\"\\q\"} 1\n# EOF\n",
            "# HELP x h\n# TYPE x histogram\nx_bucket{le=\"1\"} 2\nx_bucket{le=\"+Inf\"} 1\nx_count 1\nx_sum 0\n# EOF\n",
            "# HELP x h\n# TYPE x histogram\nx_bucket{le=\"+Inf\"} 2\nx_count 1\nx_sum 0\n# EOF\n",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn a_scrape_does_not_wait_for_the_pool_lock() {
        use vblock::dev::FileDev;
        use vblock::pool::{Pool, PoolOptions};

        let dir = std::env::temp_dir().join(format!("fabric-metrics-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pool.img");
        let _ = std::fs::remove_file(&path);
        let dev = FileDev::create(&path, 64 << 20).unwrap();
        let mut pool = Pool::create(dev, &PoolOptions::default()).unwrap();
        let vid = pool.create_volume("full", 48 << 20, 512).unwrap();
        // Many mapped clusters: 32 MiB of 64 KiB clusters.
        pool.write(vid, 0, &vec![7u8; 32 << 20]).unwrap();
        let pools = Arc::new([OpenPool::new("p", &path, pool)]);
        let held = pools[0].pool.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = pools.clone();
        std::thread::spawn(move || {
            let snap = snapshot_from([], &p[..], []);
            let _ = tx.send((snap.volumes[0].allocated_bytes, render(&snap).len()));
        });
        let got = rx.recv_timeout(Duration::from_secs(1));
        drop(held);
        let _ = std::fs::remove_dir_all(&dir);
        let (allocated, text) = got.expect("a scrape waited for the pool lock");
        assert_eq!(allocated, 32 << 20);
        assert!(text > 0);
    }

    #[test]
    fn snapshot_from_reads_switches_pools_and_exports() {
        use vblock::dev::FileDev;
        use vblock::pool::{Pool, PoolOptions};
        use vhost_backends::blk::BlkExportConfig;

        let sw = Arc::new(Switch::new("br0", 1024, 64, 300));
        let id = sw
            .add_port("vm1", vswitch::VlanMode::Access(1), 1500)
            .unwrap();
        sw.add_port("vm2", vswitch::VlanMode::Access(1), 1500)
            .unwrap();
        let topo = sw.topology();
        let p = topo.port(id).unwrap();
        p.state.counters.add_rx(3, 300);
        p.state.counters.add_drop(vswitch::DropReason::Runt);
        p.state.counters.add_broken_queue();
        // A station on vm2 that may not move to vm1 yet: one refused move.
        let station = vswitch::MacAddr([2, 0, 0, 0, 0, 1]);
        let vm2 = sw.port_id("vm2").unwrap();
        sw.fdb().set_move_hold(id, 60);
        sw.fdb().learn(1, station, vm2, sw.now());
        sw.fdb().learn(1, station, id, sw.now());

        let dir = std::env::temp_dir().join(format!("fabric-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pool.img");
        let _ = std::fs::remove_file(&path);
        let dev = FileDev::create(&path, 64 << 20).unwrap();
        let mut pool = Pool::create(dev, &PoolOptions::default()).unwrap();
        let vid = pool.create_volume("disk1", 16 << 20, 512).unwrap();
        pool.create_volume("disk2", 8 << 20, 512).unwrap();
        let pools = [OpenPool::new("fast", &path, pool)];
        let shared = pools[0].pool.clone();
        let export = BlkExport::new(
            BlkExportConfig {
                name: "disk1".into(),
                socket: dir.join("disk1.sock"),
                volume: vid,
                queues: 1,
                queue_size: 128,
                read_only: false,
                serial: "disk1".into(),
            },
            shared,
        );
        export.counters.reads.fetch_add(2, Ordering::Relaxed);
        export.counters.too_large.fetch_add(3, Ordering::Relaxed);
        export
            .counters
            .broken_queues
            .fetch_add(1, Ordering::Relaxed);
        export.counters.resubmitted.fetch_add(4, Ordering::Relaxed);
        export
            .counters
            .latency(TimedOp::Read)
            .record(Duration::from_micros(40));

        // The shape of the daemon's call: exports collected (under its
        // state lock), then sampled.
        let switches = [sw.clone()];
        let exports: Vec<(String, Arc<BlkExport>)> = vec![("fast".into(), export.clone())];
        let snap = snapshot_from(
            switches.iter().map(|s| &**s),
            &pools,
            exports.iter().map(|(pool, e)| (pool.as_str(), &**e)),
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(snap.ports.len(), 2);
        assert_eq!(snap.ports[0].rx_packets, 3);
        assert_eq!(snap.ports[0].broken_queues, 1);
        assert_eq!(snap.ports[1].broken_queues, 0);
        assert_eq!(snap.switches[0].refused_move, 1);
        assert_eq!(snap.switches[0].moved, 0);
        assert_eq!(snap.ports[0].drops.len(), vswitch::DropReason::ALL.len());
        assert!(snap.ports[0].drops.contains(&("runt".to_owned(), 1)));
        assert_eq!(snap.switches[0].switch, "br0");
        assert_eq!(snap.exports[0].pool, "fast");
        assert_eq!(snap.exports[0].reads, 2);
        assert_eq!(
            (
                snap.exports[0].too_large,
                snap.exports[0].broken_queues,
                snap.exports[0].resubmitted
            ),
            (3, 1, 4)
        );
        assert_eq!(snap.exports[0].latency.len(), 3);
        assert_eq!(snap.pools[0].provisioned_bytes, 24 << 20);
        assert!(snap.pools[0].capacity_bytes > 0);
        let names: Vec<&str> = snap.volumes.iter().map(|v| v.volume.as_str()).collect();
        assert_eq!(names, ["disk1", "disk2"]);

        let exp = parse(&render(&snap)).unwrap();
        let read = [("op", "read"), ("pool", "fast"), ("volume", "disk1")];
        assert_eq!(
            value(&exp, "vswitchd_blk_request_duration_seconds_count", &read),
            1.0
        );
        let runt = [("port", "vm1"), ("reason", "runt"), ("switch", "br0")];
        assert_eq!(value(&exp, "vswitchd_port_drops_total", &runt), 1.0);
        let vm1 = [("port", "vm1"), ("switch", "br0")];
        assert_eq!(value(&exp, "vswitchd_port_broken_queues_total", &vm1), 1.0);
        let moves = [("reason", "move"), ("switch", "br0")];
        assert_eq!(value(&exp, "vswitchd_fdb_refused_total", &moves), 1.0);
        let disk1 = [("pool", "fast"), ("volume", "disk1")];
        assert_eq!(value(&exp, "vswitchd_blk_resubmitted_total", &disk1), 4.0);
        assert_eq!(value(&exp, "vswitchd_blk_too_large_total", &disk1), 3.0);
        assert_eq!(value(&exp, "vswitchd_blk_broken_queues_total", &disk1), 1.0);
    }

    // -- HTTP -------------------------------------------------------------

    /// Sends `request`, reads until the server closes; (status, headers, body).
    fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, HashMap<String, String>, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"));
        let status = parts.next().unwrap().parse().unwrap();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect::<HashMap<_, _>>();
        if let (Some(len), false) = (headers.get("content-length"), request.starts_with(b"HEAD")) {
            assert_eq!(len.parse::<usize>().unwrap(), body.len(), "content-length");
        }
        (status, headers, body.to_owned())
    }

    fn local() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[test]
    fn http_serves_metrics_and_refuses_the_rest() {
        let server = serve(local(), sample_snapshot).unwrap();
        let addr = server.local_addr();

        let (status, headers, body) = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], CONTENT_TYPE);
        let exp = parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        assert!(exp.families.contains_key("vswitchd_port_rx_packets"));

        // A query string is fine; HTTP/1.0 and bare LFs too.
        let (status, _, body) = exchange(addr, b"GET /metrics?x=1 HTTP/1.0\n\n");
        assert_eq!(status, 200);
        parse(&body).unwrap();
        // HEAD: the headers alone.
        let (status, headers, body) = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200);
        assert!(body.is_empty());
        assert!(headers["content-length"].parse::<usize>().unwrap() > 0);

        for (request, want) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], 404),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", 404),
            (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
            (b"\x00\x01\x02garbage\r\n\r\n", 400),
            (b"GET /metrics\r\n\r\n", 400),
            (b"GET /metrics HTTP/2.0\r\n\r\n", 400),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
            (b"GET metrics HTTP/1.1\r\n\r\n", 400),
            (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
            (b"GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
            (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
        ] {
            let (status, _, _) = exchange(addr, request);
            assert_eq!(status, want, "{:?}", String::from_utf8_lossy(request));
        }

        // Headers past 8 KiB.
        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while big.len() <= MAX_REQUEST_HEAD {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        big.extend_from_slice(b"\r\n");
        let (status, _, _) = exchange(addr, &big);
        assert_eq!(status, 431);

        // Still serving after all that.
        let (status, _, _) = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200);
        server.stop();
        assert!(
            TcpStream::connect(addr).is_err(),
            "still listening after stop"
        );
    }

    #[test]
    fn silent_client_neither_blocks_others_nor_stays() {
        let timeout = Duration::from_millis(500);
        let server = serve_with_timeout(local(), Arc::new(sample_snapshot), timeout).unwrap();
        let addr = server.local_addr();
        let mut silent = TcpStream::connect(addr).unwrap();
        let mut half = TcpStream::connect(addr).unwrap();
        half.write_all(b"GET /metrics HTTP/1.1\r\nHost:").unwrap();

        let t = Instant::now();
        let (status, _, _) = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200);
        assert!(t.elapsed() < timeout, "waited for the silent clients");

        // Both are closed once their time is up, without an answer.
        for s in [&mut silent, &mut half] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = Vec::new();
            let n = s.read_to_end(&mut buf).unwrap_or(0);
            assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf));
        }
        assert!(t.elapsed() >= timeout);
        server.stop();
    }

    #[test]
    fn panicking_source_is_a_500_and_the_server_lives() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let server = serve(local(), move || {
            if c.fetch_add(1, Ordering::Relaxed) == 0 {
                panic!("snapshot failed");
            }
            MetricsSnapshot::default()
        })
        .unwrap();
        let addr = server.local_addr();
        let (status, _, _) = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, 500);
        let (status, _, body) = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200);
        assert_eq!(body, "# EOF\n");
        drop(server); // Drop stops it too.
        assert!(TcpStream::connect(addr).is_err());
    }

    #[test]
    fn head_parsing() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Request::Get {
                path: "/metrics".into(),
                head: false
            })
        );
        assert_eq!(
            parse_head(b"DELETE /metrics HTTP/1.1\r\n\r\n"),
            Ok(Request::OtherMethod)
        );
        assert_eq!(parse_head(b"\r\n\r\n"), Err(BadRequest::Malformed));
    }
}
