//! One counters snapshot of the running system, copied out of its
//! switches, tunnels, exports and pools without taking a pool lock. The
//! SIGUSR1 report ([`super::report`]), `/metrics` and `port.list` all render
//! a [`Snapshot`].

use crate::storage::OpenPool;
use std::sync::atomic::Ordering;
use vblock::meta::VolumeKind;
use vblock::pool::PoolGauges;
use vhost_backends::blk::{BlkExport, LatencySnapshot, TimedOp, LATENCY_BOUNDS_US};
use vhost_backends::tunnel::Tunnel;
use vswitch::vxlan::{RemoteFdbStats, TunnelCountersSnapshot};
use vswitch::{FdbStats, PortInfo, Switch};

/// The counters of the running system at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub ports: Vec<PortSample>,
    pub switches: Vec<SwitchSample>,
    /// VXLAN tunnel ports (also in `ports` with their switch-side counters).
    pub tunnels: Vec<TunnelSample>,
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
    /// Announcements sent for the port's peer (a migrated guest's RARP).
    pub announces: u64,
    /// GSO super-frames delivered intact (the peer takes the offload).
    pub tx_gso_packets: u64,
    /// GSO super-frames segmented in software for this port.
    pub gso_segmented: u64,
    /// Partial checksums completed in software for this port.
    pub csum_completed: u64,
    /// Per queue (pair) of a multi-queue port, by index; empty for one queue.
    pub queues: Vec<vswitch::QueueSnapshot>,
}

/// One switch's forwarding database.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SwitchSample {
    pub switch: String,
    pub fdb: FdbStats,
}

/// One VXLAN tunnel port: its underlay side and its remote FDB.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TunnelSample {
    pub switch: String,
    pub port: String,
    pub counters: TunnelCountersSnapshot,
    pub remote_fdb: RemoteFdbStats,
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
    pub handover_waits: u64,
    pub handover_refused: u64,
    /// Requests that waited for the export's limits.
    pub throttled: u64,
    /// Request latency, one histogram per operation.
    pub latency: Vec<LatencySample>,
}

/// A latency histogram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencySample {
    /// `read`, `write` or `flush`.
    pub op: String,
    /// (upper bound in seconds, requests in that bucket alone), ascending;
    /// the last bound is `f64::INFINITY` (added by
    /// `metrics::render` if missing).
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
}

/// One pool's space, in bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolSample {
    pub pool: String,
    pub cluster_size: u64,
    /// Clusters of the pool, metadata included.
    pub clusters: u64,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub releasing_bytes: u64,
    /// Sum of the volumes' sizes (may exceed the capacity).
    pub provisioned_bytes: u64,
    /// Percent of the clusters used, rounded down.
    pub used_percent: u64,
    /// `warn_percent`, and whether the pool is at or above it.
    pub warn_percent: u64,
    pub over_warn: bool,
    /// Requests waiting for space now, and all that ever waited.
    pub paused: u64,
    pub paused_total: u64,
}

/// One volume of a pool, exported or not.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeSample {
    pub pool: String,
    pub volume: String,
    pub kind: VolumeKind,
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
            announces: c.announces,
            tx_gso_packets: c.tx_gso_packets,
            gso_segmented: c.gso_segmented,
            csum_completed: c.csum_completed,
            queues: c.queues,
        }
    }
}

impl SwitchSample {
    pub fn new(switch: &Switch) -> SwitchSample {
        SwitchSample {
            switch: switch.name.clone(),
            fdb: switch.fdb().stats(),
        }
    }
}

impl TunnelSample {
    pub fn new(switch: &str, port: &str, tunnel: &Tunnel) -> TunnelSample {
        TunnelSample {
            switch: switch.to_owned(),
            port: port.to_owned(),
            counters: tunnel.counters.snapshot(),
            remote_fdb: tunnel.remote_fdb.stats(),
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
            handover_waits: g(&c.handover_waits),
            handover_refused: g(&c.handover_refused),
            throttled: g(&c.throttled),
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
        cluster_size: cs,
        clusters: s.clusters,
        capacity_bytes: s.capacity,
        used_bytes: s.used_clusters * cs,
        free_bytes: s.free_clusters * cs,
        releasing_bytes: s.releasing_clusters * cs,
        provisioned_bytes: s.provisioned,
        used_percent: vblock::pool::used_percent(&s),
        warn_percent: gauges.watch().warn_percent().into(),
        over_warn: gauges.watch().over_threshold(),
        paused: gauges.watch().paused(),
        paused_total: gauges.watch().paused_total(),
    };
    let volumes = gauges
        .volumes()
        .into_iter()
        .map(|v| VolumeSample {
            pool: name.to_owned(),
            volume: v.name,
            kind: v.kind,
            size_bytes: v.size,
            allocated_bytes: v.allocated,
            exclusive_bytes: v.exclusive,
        })
        .collect();
    (space, volumes)
}

/// A snapshot of `switches`, `tunnels` ((switch, port, tunnel)), `pools`
/// and `exports` ((pool name, export)). No pool lock is taken: a snapshot
/// never waits for (or delays) a pool's I/O or commits.
pub fn snapshot_from<'a>(
    switches: impl IntoIterator<Item = &'a Switch>,
    tunnels: impl IntoIterator<Item = (&'a str, &'a str, &'a Tunnel)>,
    pools: &[OpenPool],
    exports: impl IntoIterator<Item = (&'a str, &'a BlkExport)>,
) -> Snapshot {
    let mut snap = Snapshot::default();
    for sw in switches {
        for port in sw.topology().ports() {
            snap.ports.push(PortSample::new(sw, port));
        }
        snap.switches.push(SwitchSample::new(sw));
    }
    for (switch, port, tunnel) in tunnels {
        snap.tunnels.push(TunnelSample::new(switch, port, tunnel));
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
