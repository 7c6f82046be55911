//! `volume revert`, `export pause` and `export resume` through `fabricctl`
//! against a running `vswitchd`, with a libblkio client on the export: the
//! content it reads after a revert, the pool's space, the refusals with
//! their exit codes, a pause that drains what the export took, and requests
//! made while paused that run only after the resume, none lost.

use crate::fabricctl_e2e::Vswitchd;
use serde_json::Value;
use std::time::Duration;
use test_kit::blkio::client::{BlkClient, Done, Req};
use test_kit::blkio::pattern;
use test_kit::TestDir;

const MIB: u64 = 1 << 20;
const VOLUME: u64 = 8 * MIB;
const BLOCK: usize = 4096;
const SEED_A: u64 = 0xA;
const SEED_B: u64 = 0xB;
const SEED_C: u64 = 0xC;

fn daemon(name: &str, volume_extra: &str) -> (TestDir, Vswitchd) {
    let dir = TestDir::on_disk(name);
    std::fs::write(
        dir.join("fabric.toml"),
        format!(
            "[daemon]\nrun_dir = \"run\"\n\
             [[pool]]\nname = \"p0\"\npath = \"pool.img\"\nsize = \"64M\"\n\
             [[pool.volume]]\nname = \"v\"\nsize = \"8M\"\nexport = {{ {volume_extra} }}\n\
             [[pool.volume]]\nname = \"w\"\nsize = \"8M\"\n"
        ),
    )
    .unwrap();
    let d = Vswitchd::start(&dir);
    (dir, d)
}

fn volume(d: &Vswitchd, name: &str) -> Value {
    let vols = d.json(&["volume", "list", "--pool", "p0"]);
    vols.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}: {vols}"))
        .clone()
}

fn space(d: &Vswitchd) -> (u64, u64) {
    let pools = d.json(&["pool", "list"]);
    let p = &pools[0];
    (
        p["used"].as_u64().unwrap(),
        p["releasing"].as_u64().unwrap(),
    )
}

/// (allocated, exclusive) of a volume, in bytes.
fn usage(d: &Vswitchd, name: &str) -> (u64, u64) {
    let v = volume(d, name);
    (
        v["allocated"].as_u64().unwrap(),
        v["exclusive"].as_u64().unwrap(),
    )
}

/// Writes A, snapshots, writes B over the first half; with the export
/// paused the revert brings A back at once, the clusters B used are freed,
/// and the refusals come with their exit codes.
#[test]
fn revert_of_a_paused_export_reads_the_snapshot_and_frees_the_newer_clusters() {
    let (dir, mut d) = daemon("fctl-revert", "");
    let mut c = BlkClient::connect(&dir.join("run/v.sock"), 1).unwrap();
    c.queue(0)
        .write_pattern(SEED_A, 0, VOLUME as usize)
        .unwrap();
    c.queue(0).flush().unwrap();
    d.ok(&["volume", "snapshot", "p0", "v", "s"]);
    c.queue(0)
        .write_pattern(SEED_B, 0, (VOLUME / 2) as usize)
        .unwrap();
    c.queue(0).flush().unwrap();
    assert_eq!(usage(&d, "v"), (VOLUME, VOLUME / 2));
    assert_eq!(usage(&d, "s"), (VOLUME, VOLUME / 2));
    let (used, _) = space(&d);

    // Refused: exported and not paused (4), not a snapshot of v (2),
    // unknown names (3); nothing changed.
    let err = d.fails(4, &["volume", "revert", "p0", "v", "s"]);
    assert!(err.contains("its export is not paused"), "{err}");
    assert!(err.contains("export pause p0 v"), "{err}");
    let err = d.fails(2, &["volume", "revert", "p0", "v", "w"]);
    assert!(err.contains("\"w\" is not a snapshot of \"v\""), "{err}");
    d.ok(&["volume", "snapshot", "p0", "w", "ws"]);
    let err = d.fails(2, &["volume", "revert", "p0", "v", "ws"]);
    assert!(err.contains("\"ws\" is not a snapshot of \"v\""), "{err}");
    d.fails(3, &["volume", "revert", "p0", "v", "nosuch"]);
    d.fails(3, &["volume", "revert", "p0", "nosuch", "s"]);
    d.fails(3, &["volume", "revert", "nopool", "v", "s"]);
    d.fails(3, &["export", "pause", "p0", "w"]);
    d.fails(3, &["export", "pause", "p0", "nosuch"]);
    d.fails(3, &["export", "resume", "nopool", "v"]);
    d.fails(2, &["volume", "revert", "p0", "v"]);
    c.queue(0)
        .verify_pattern(SEED_B, 0, (VOLUME / 2) as usize)
        .unwrap();

    let out = d.ok(&["export", "pause", "p0", "v"]);
    assert!(out.contains("v.sock (paused)"), "{out}");
    assert_eq!(volume(&d, "v")["paused"], true);
    d.ok(&["volume", "revert", "p0", "v", "s"]);
    let out = d.ok(&["export", "resume", "p0", "v"]);
    assert!(!out.contains("(paused)"), "{out}");
    assert!(volume(&d, "v").get("paused").is_none());

    // The guest reads A across the whole volume.
    c.queue(0)
        .verify_pattern(SEED_A, 0, VOLUME as usize)
        .unwrap();
    // v and s share every cluster; the half B had is free again.
    assert_eq!(usage(&d, "v"), (VOLUME, 0));
    assert_eq!(usage(&d, "s"), (VOLUME, 0));
    assert_eq!(space(&d), (used - VOLUME / 2, 0));
    // A write after the revert copies: the snapshot keeps A.
    c.queue(0).write_pattern(SEED_B, 0, BLOCK).unwrap();
    assert_eq!(usage(&d, "s").1, 16 * 1024);
    drop(c);

    // An unexported volume reverts without a pause; the restarted daemon
    // (which exports v again, as its file says) finds the reverted content.
    d.ok(&["export", "remove", "p0", "v"]);
    d.ok(&["volume", "revert", "p0", "v", "s"]);
    d.stop();
    let _d = Vswitchd::start(&dir);
    let mut c = BlkClient::connect(&dir.join("run/v.sock"), 1).unwrap();
    c.queue(0)
        .verify_pattern(SEED_A, 0, VOLUME as usize)
        .unwrap();
}

/// Waits for `n` completions of raw requests on queue 0; all must succeed.
fn completions(c: &mut BlkClient, n: usize) -> Vec<Done> {
    let mut out = Vec::new();
    while out.len() < n {
        c.queue(0).wait(n - out.len(), &mut out).unwrap();
    }
    for done in &out {
        assert!(done.result.is_ok(), "{done:?}");
    }
    out
}

/// Completions there are now, without waiting.
fn completed_now(c: &mut BlkClient) -> usize {
    let mut out = Vec::new();
    c.queue(0).wait(0, &mut out).unwrap();
    out.len()
}

/// The pause returns only once every request the export took has
/// completed (parked ones under a limit included); requests made while
/// paused stay in the ring, run only after the resume (so after a revert
/// made meanwhile: they land on the reverted content), and none is lost.
#[test]
fn a_pause_drains_and_requests_made_meanwhile_run_after_the_resume() {
    let (dir, d) = daemon("fctl-pause", "iops_write = 10, iops_write_burst = 1");
    let mut c = BlkClient::connect(&dir.join("run/v.sock"), 1).unwrap();
    assert!(c.queue(0).buffer_len() >= 32 * BLOCK);
    // Up to the limit: A everywhere would take minutes at 10 writes/s, so
    // A goes in with the limit lifted.
    d.ok(&["export", "limit", "p0", "v"]);
    c.queue(0)
        .write_pattern(SEED_A, 0, VOLUME as usize)
        .unwrap();
    d.ok(&["volume", "snapshot", "p0", "v", "s"]);
    d.ok(&[
        "export",
        "limit",
        "p0",
        "v",
        "--iops-write",
        "10",
        "--iops-write-burst",
        "1",
    ]);

    // Drain: 20 writes of B, the first starts, 19 wait for the limit (taken
    // from the ring, counted `throttled`). The pause answers only after
    // every one of them completed.
    for i in 0..20 {
        let off = i * BLOCK;
        pattern::fill_pattern(SEED_B, (i * 64 * 1024) as u64, {
            &mut c.queue(0).buffer_mut()[off..off + BLOCK]
        });
        let req = Req::Write {
            offset: (i * 64 * 1024) as u64,
            buf_off: off,
            len: BLOCK,
            fua: false,
        };
        c.queue(0).submit(req, i);
    }
    assert_eq!(completed_now(&mut c), 0);
    test_kit::wait::wait_for("19 writes parked", Duration::from_secs(10), || {
        volume(&d, "v")["throttled"].as_u64() == Some(19)
    });
    d.ok(&["export", "pause", "p0", "v"]);
    assert_eq!(
        completed_now(&mut c),
        20,
        "the pause returned before the drain"
    );
    d.ok(&["export", "limit", "p0", "v"]);

    // Held: 32 writes of C made while paused; a revert meanwhile.
    let offsets: Vec<u64> = (0..32).map(|i| (i * 256 * 1024 + 8192) as u64).collect();
    for (i, &offset) in offsets.iter().enumerate() {
        let off = i * BLOCK;
        pattern::fill_pattern(
            SEED_C,
            offset,
            &mut c.queue(0).buffer_mut()[off..off + BLOCK],
        );
        let req = Req::Write {
            offset,
            buf_off: off,
            len: BLOCK,
            fua: false,
        };
        c.queue(0).submit(req, i);
    }
    assert_eq!(completed_now(&mut c), 0);
    d.ok(&["volume", "revert", "p0", "v", "s"]);
    assert_eq!(completed_now(&mut c), 0, "a write ran while paused");
    d.ok(&["export", "resume", "p0", "v"]);
    let done = completions(&mut c, offsets.len());
    let mut tags: Vec<usize> = done.iter().map(|d| d.tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..offsets.len()).collect::<Vec<_>>());

    // C where written (after the revert), A everywhere else: B is gone
    // with the revert, and no C write ran before it.
    let all = c.queue(0).read_vec(0, VOLUME as usize).unwrap();
    for (i, block) in all.chunks(BLOCK).enumerate() {
        let offset = (i * BLOCK) as u64;
        let seed = if offsets.contains(&offset) {
            SEED_C
        } else {
            SEED_A
        };
        if let Err(m) = pattern::verify(seed, offset, block) {
            panic!("block at {offset}: {m}");
        }
    }
}
