//! A full pool through the real daemon, `fabricctl` and a real client
//! (libblkio): with `on_full = "error"` the write that needs space fails
//! with VIRTIO_BLK_S_IOERR and nothing else changes; with `"pause"` it stays
//! outstanding (counted in `pool list`) while reads go on, and completes
//! once space is freed; `pool set` changes the policy at run time and
//! refuses bad values with exit 2.
//!
//! The pool (8 MiB of 64 KiB clusters) is filled through the daemon: the
//! export `filler` is written cluster by cluster until a write fails, so
//! "full" is the daemon's own judgement, metadata reserve included.

use test_kit::blkio as blk_support;

use super::fabricctl_e2e::Vswitchd;
use blk_support::client::{Done, Req};
use blk_support::BlkClient;
use serde_json::Value;
use std::time::{Duration, Instant};
use test_kit::TestDir;

const CLUSTER: usize = 64 * 1024;

fn start(tag: &str, on_full: &str) -> (TestDir, Vswitchd) {
    let dir = TestDir::on_disk(tag);
    std::fs::write(
        dir.join("fabric.toml"),
        format!(
            "[daemon]\nrun_dir = \"run\"\n\
             [[pool]]\nname = \"p0\"\npath = \"pool.img\"\nsize = \"8M\"\ncluster_size = \"64K\"\n\
             overcommit = true\non_full = \"{on_full}\"\n\
             [[pool.volume]]\nname = \"vm\"\nsize = \"4M\"\nexport = {{}}\n\
             [[pool.volume]]\nname = \"other\"\nsize = \"1M\"\nexport = {{}}\n\
             [[pool.volume]]\nname = \"filler\"\nsize = \"16M\"\nexport = {{}}\n"
        ),
    )
    .unwrap();
    let d = Vswitchd::start(&dir);
    (dir, d)
}

/// Pool `p0`'s entry in `pool list --json`.
fn pool(d: &Vswitchd) -> Value {
    d.json(&["pool", "list"])[0].clone()
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..CLUSTER).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// Writes `filler` cluster by cluster until a write fails; that failure
/// must be VIRTIO_BLK_S_IOERR. Returns the clusters written.
fn fill(d: &Vswitchd) -> u64 {
    let mut c = BlkClient::connect(&d.socket("filler"), 1).unwrap();
    let mut n = 0;
    loop {
        match c.queue(0).write(n * CLUSTER as u64, &pattern(9)) {
            Ok(()) => n += 1,
            Err(e) => {
                assert!(e.is_ioerr(), "the write that found the pool full: {e}");
                return n;
            }
        }
    }
}

trait Sockets {
    fn socket(&self, volume: &str) -> std::path::PathBuf;
}

impl Sockets for Vswitchd {
    fn socket(&self, volume: &str) -> std::path::PathBuf {
        self.control().with_file_name(format!("{volume}.sock"))
    }
}

#[test]
fn a_full_pool_with_on_full_error_fails_exactly_the_write_that_needs_space() {
    let (_dir, d) = start("full-error", "error");
    let mut vm = BlkClient::connect(&d.socket("vm"), 1).unwrap();
    vm.queue(0).write(0, &pattern(1)).unwrap();
    let filled = fill(&d);
    assert!(
        filled > 50,
        "only {filled} clusters before the pool was full"
    );
    let before = pool(&d);
    assert_eq!(before["on_full"], "error");
    assert_eq!(before["paused"], 0);
    assert_eq!(before["over_warn"], true, "{before}");
    assert!(
        d.log().contains("at or above warn_percent = 80"),
        "no warning logged:\n{}",
        d.log()
    );

    // A first write (cluster 2 of vm): VIRTIO_BLK_S_IOERR, exactly.
    let e = vm
        .queue(0)
        .write(2 * CLUSTER as u64, &pattern(2))
        .unwrap_err();
    assert!(e.is_ioerr(), "{e}");
    // Nothing else changed: the space, vm's data, the refused cluster.
    assert_eq!(pool(&d), before);
    assert_eq!(vm.queue(0).read_vec(0, CLUSTER).unwrap(), pattern(1));
    assert_eq!(
        vm.queue(0).read_vec(2 * CLUSTER as u64, CLUSTER).unwrap(),
        vec![0; CLUSTER]
    );
    // A write in place needs no space and completes.
    vm.queue(0).write(0, &pattern(3)).unwrap();
    assert_eq!(vm.queue(0).read_vec(0, CLUSTER).unwrap(), pattern(3));
    assert_eq!(pool(&d)["paused_total"], 0);
}

/// Submits a write of `data` at `offset` on `c`'s queue 0 (buffer at
/// `buf_off`), tagged `tag`.
fn submit_write(c: &mut BlkClient, tag: usize, offset: u64, buf_off: usize, data: &[u8]) {
    let q = c.queue(0);
    q.buffer_mut()[buf_off..buf_off + data.len()].copy_from_slice(data);
    q.submit(
        Req::Write {
            offset,
            buf_off,
            len: data.len(),
            fua: false,
        },
        tag,
    );
}

/// What completes on `c`'s queue 0 within `within` (reaped without
/// waiting for any: a bounded look, not a timing claim).
fn completed_within(c: &mut BlkClient, within: Duration) -> Vec<Done> {
    let mut out = Vec::new();
    let end = Instant::now() + within;
    while Instant::now() < end {
        c.queue(0).wait(0, &mut out).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    out
}

/// Waits for `n` completions on `c`'s queue 0 (the client's I/O timeout
/// bounds it).
fn wait_for(c: &mut BlkClient, n: usize) -> Vec<Done> {
    let mut out = Vec::new();
    while out.len() < n {
        c.queue(0).wait(n - out.len(), &mut out).unwrap();
    }
    out
}

#[test]
fn a_full_pool_with_on_full_pause_holds_writes_until_space_is_freed() {
    let (_dir, d) = start("full-pause", "error");
    let mut vm = BlkClient::connect(&d.socket("vm"), 1).unwrap();
    let mut other = BlkClient::connect(&d.socket("other"), 1).unwrap();
    vm.queue(0).write(0, &pattern(1)).unwrap();
    other.queue(0).write(0, &pattern(5)).unwrap();
    d.ok(&["volume", "snapshot", "p0", "vm", "vm@snap"]);
    fill(&d);
    let out = d.ok(&["pool", "set", "p0", "--on-full", "pause"]);
    assert!(out.contains("pause"), "{out}");
    let full = pool(&d);
    assert_eq!(
        (full["on_full"].as_str(), full["paused"].as_u64()),
        (Some("pause"), Some(0))
    );

    // W1: copy-on-write of cluster 0 (shared with the snapshot); W2: a
    // first write of cluster 2. Both need a cluster the pool does not have.
    submit_write(&mut vm, 1, 0, 0, &pattern(11));
    submit_write(&mut vm, 2, 2 * CLUSTER as u64, CLUSTER, &pattern(12));
    let early = completed_within(&mut vm, Duration::from_secs(1));
    assert!(
        early.is_empty(),
        "completed while the pool is full: {early:?}"
    );
    assert_eq!(vm.queue(0).in_flight(), 2);
    let paused = pool(&d);
    assert_eq!(
        (paused["paused"].as_u64(), paused["paused_total"].as_u64()),
        (Some(2), Some(2)),
        "{paused}"
    );
    // Reads go on meanwhile: this queue's (the snapshot's data under W1)
    // and another export's.
    vm.queue(0).submit(
        Req::Read {
            offset: 0,
            buf_off: 2 * CLUSTER,
            len: CLUSTER,
        },
        3,
    );
    let read = wait_for(&mut vm, 1);
    assert_eq!(read[0].tag, 3, "{read:?}");
    read[0].result.as_ref().unwrap();
    assert_eq!(&vm.queue(0).buffer()[2 * CLUSTER..3 * CLUSTER], pattern(1));
    assert_eq!(other.queue(0).read_vec(0, CLUSTER).unwrap(), pattern(5));
    assert_eq!(pool(&d)["paused"], 2);

    // The snapshot deleted: cluster 0 is vm's alone, W1 overwrites it in
    // place; W2 still needs a cluster and waits.
    d.ok(&["volume", "delete", "p0", "vm@snap"]);
    let w1 = wait_for(&mut vm, 1);
    assert_eq!(w1[0].tag, 1, "{w1:?}");
    w1[0].result.as_ref().unwrap();
    assert!(completed_within(&mut vm, Duration::from_millis(500)).is_empty());
    assert_eq!(pool(&d)["paused"], 1);

    // The filler deleted: W2 completes.
    d.ok(&["export", "remove", "p0", "filler"]);
    d.ok(&["volume", "delete", "p0", "filler"]);
    let w2 = wait_for(&mut vm, 1);
    assert_eq!(w2[0].tag, 2, "{w2:?}");
    w2[0].result.as_ref().unwrap();
    let after = pool(&d);
    assert_eq!(
        (after["paused"].as_u64(), after["paused_total"].as_u64()),
        (Some(0), Some(2)),
        "{after}"
    );
    assert_eq!(vm.queue(0).read_vec(0, CLUSTER).unwrap(), pattern(11));
    assert_eq!(
        vm.queue(0).read_vec(2 * CLUSTER as u64, CLUSTER).unwrap(),
        pattern(12)
    );
    assert!(d
        .log()
        .contains("pool p0: out of space: requests that need a new cluster wait"));
    assert!(d
        .log()
        .contains("pool p0: no request waits for space any more"));
}

#[test]
fn setting_on_full_to_error_fails_the_waiting_writes_and_bad_values_are_refused() {
    let (dir, d) = start("full-set", "pause");
    let mut vm = BlkClient::connect(&d.socket("vm"), 1).unwrap();
    fill_paused(&d);
    submit_write(&mut vm, 1, 0, 0, &pattern(1));
    assert!(completed_within(&mut vm, Duration::from_millis(500)).is_empty());
    assert_eq!(pool(&d)["paused"], 1);
    // The operator gives up on space: the waiting write fails as "error" would.
    d.ok(&["pool", "set", "p0", "--on-full", "error"]);
    let done = wait_for(&mut vm, 1);
    let e = done[0].result.as_ref().unwrap_err();
    assert!(e.is_ioerr(), "{e}");
    assert_eq!(pool(&d)["paused"], 0);

    // Refused values name the key: exit 2; no such pool: exit 3.
    let err = d.fails(2, &["pool", "set", "p0", "--on-full", "queue"]);
    assert!(
        err.contains("`on_full` must be \"error\" or \"pause\", not \"queue\""),
        "{err}"
    );
    for bad in ["0", "101"] {
        let err = d.fails(2, &["pool", "set", "p0", "--warn-percent", bad]);
        assert!(
            err.contains(&format!("`warn_percent` must be in 1..=100, not {bad}")),
            "{err}"
        );
    }
    d.fails(2, &["pool", "set", "p0"]);
    d.fails(3, &["pool", "set", "nope", "--on-full", "pause"]);
    assert_eq!(pool(&d)["on_full"], "error");

    // The threshold: the full pool is over 80 %, not over 100 % (the
    // metadata reserve is never handed out), over 50 % again.
    assert_eq!(pool(&d)["over_warn"], true);
    let p = d.json(&["pool", "set", "p0", "--warn-percent", "100"]);
    assert_eq!(
        (p["warn_percent"].as_u64(), p["over_warn"].as_bool()),
        (Some(100), Some(false))
    );
    let p = d.json(&[
        "pool",
        "set",
        "p0",
        "--warn-percent",
        "50",
        "--on-full",
        "pause",
    ]);
    assert_eq!(
        (
            p["warn_percent"].as_u64(),
            p["over_warn"].as_bool(),
            p["on_full"].as_str()
        ),
        (Some(50), Some(true), Some("pause"))
    );
    let table = d.ok(&["pool", "list"]);
    assert!(table.contains("50!") && table.contains("pause"), "{table}");
    // config save keeps both.
    d.ok(&["config", "save"]);
    let saved = std::fs::read_to_string(dir.join("fabric.toml")).unwrap();
    assert!(
        saved.contains("on_full = \"pause\"") && saved.contains("warn_percent = 50"),
        "{saved}"
    );
}

/// [`fill`] for a pool that pauses: the last filling write waits instead
/// of failing, so the filler is written with `on_full` switched to "error"
/// for the time, then back.
fn fill_paused(d: &Vswitchd) {
    d.ok(&["pool", "set", "p0", "--on-full", "error"]);
    fill(d);
    d.ok(&["pool", "set", "p0", "--on-full", "pause"]);
}
