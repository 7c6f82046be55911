//! A pool's space warning through the daemon: writes from a real client
//! (libblkio) fill a pool cluster by cluster, and
//! `vswitchd_pool_over_warn_threshold` turns 1 with the write that brings
//! the used clusters to `warn_percent`, not one write earlier or later;
//! `vswitchd_pool_used_percent` follows.

use test_kit::blkio as blk_support;

use blk_support::daemon_host::{pool_toml, DaemonHost};
use blk_support::BlkClient;

const CLUSTER: u64 = 64 * 1024;

#[test]
fn the_warning_gauge_turns_on_with_the_write_that_reaches_the_threshold() {
    let host = DaemonHost::start(
        "blkwarn",
        &pool_toml(
            "8M",
            "cluster_size = \"64K\"\nwarn_percent = 50\n",
            "[[pool.volume]]\nname = \"v\"\nsize = \"8M\"\nexport = {}\n",
        ),
    );
    let sample = |name: &str| host.metrics()[&format!("{name}{{pool=\"p0\"}}")] as u64;
    let clusters = sample("vswitchd_pool_capacity_bytes") / CLUSTER;
    assert_eq!(sample("vswitchd_pool_warn_percent"), 50);
    let mut c = BlkClient::connect(&host.socket("v"), 1).unwrap();
    let mut crossed_at = None;
    for i in 0..clusters {
        let used_before = sample("vswitchd_pool_used_bytes") / CLUSTER;
        let over_before = sample("vswitchd_pool_over_warn_threshold");
        c.queue(0)
            .write(i * CLUSTER, &[0x5a; CLUSTER as usize])
            .unwrap();
        let used = sample("vswitchd_pool_used_bytes") / CLUSTER;
        let over = sample("vswitchd_pool_over_warn_threshold");
        // Each first write takes exactly one cluster (the journal's
        // records go to its own area, not to clusters).
        assert_eq!(used, used_before + 1, "write {i}");
        assert_eq!(sample("vswitchd_pool_used_percent"), used * 100 / clusters);
        if over_before == 0 && over == 1 {
            crossed_at = Some(used);
            break;
        }
        assert_eq!(over, 0, "write {i}: {used} of {clusters} clusters used");
    }
    // The first used count at or above half of the clusters.
    let want = (clusters * 50).div_ceil(100);
    assert_eq!(crossed_at, Some(want), "{clusters} clusters");
}
