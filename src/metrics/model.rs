//! The snapshot model: what a scrape shows, copied out of the daemon's
//! switches, exports and pools without taking a pool lock.

use crate::storage::OpenPool;
use std::sync::atomic::Ordering;
use vblock::pool::PoolGauges;
use vhost_backends::blk::{BlkExport, LatencySnapshot, TimedOp, LATENCY_BOUNDS_US};
use vswitch::{PortInfo, Switch};

/// Everything [`render`](fn@super::render) shows, copied out of the daemon
/// at one scrape.
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
    /// the last bound is `f64::INFINITY` (added by
    /// [`render`](fn@super::render) if missing).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::render;
    use crate::metrics::testing::{parse, value};
    use std::sync::Arc;
    use std::time::Duration;

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
            .add_port(
                "vm1",
                vswitch::VlanMode::Access(vswitch::VlanId::DEFAULT),
                1500,
            )
            .unwrap();
        sw.add_port(
            "vm2",
            vswitch::VlanMode::Access(vswitch::VlanId::DEFAULT),
            1500,
        )
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
        sw.fdb()
            .learn(vswitch::VlanId::DEFAULT, station, vm2, sw.now());
        sw.fdb()
            .learn(vswitch::VlanId::DEFAULT, station, id, sw.now());

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
}
