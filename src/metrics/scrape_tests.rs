//! The snapshot taken from real switches, tunnels, pools and exports
//! ([`crate::runtime::snapshot_from`]), rendered as a scrape shows it.

use crate::metrics::render;
use crate::metrics::testing::{parse, value};
use crate::runtime::snapshot::*;
use crate::storage::OpenPool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use vhost_backends::blk::{BlkExport, TimedOp};
use vswitch::Switch;

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
        let snap = snapshot_from([], [], &p[..], []);
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
            migration_socket: None,
            volume: vid,
            queues: 1,
            queue_size: 128,
            read_only: false,
            serial: "disk1".into(),
            limits: Default::default(),
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
        [],
        &pools,
        exports.iter().map(|(pool, e)| (pool.as_str(), &**e)),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(snap.ports.len(), 2);
    assert_eq!(snap.ports[0].rx_packets, 3);
    assert_eq!(snap.ports[0].broken_queues, 1);
    assert_eq!(snap.ports[1].broken_queues, 0);
    assert_eq!(snap.switches[0].fdb.refused_move, 1);
    assert_eq!(snap.switches[0].fdb.moved, 0);
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
