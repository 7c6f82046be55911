//! A live migration's disk handover, in process: two frontends on the two sockets
//! of one export (its own and its `migration_socket`). The destination connects and
//! negotiates while the source runs; its rings may start only after the source
//! stopped its own (GET_VRING_BASE: every request in flight completed and
//! published) or left, and then it reads exactly what the source completed. A
//! destination whose source never stops is refused after the bound, counted.

use test_kit::frontend as support;

use std::time::Duration;

use support::blk_daemon::BlkDaemon;
use support::virtio_blk::{BlkOptions, GuestBlk, Req, WAIT};
use test_kit::pattern::{pattern, verify};
use test_kit::wait::wait_for;

/// Requests per batch and bytes per request: request `i` covers its own 16 KiB.
const N: u64 = 16;
const LEN: usize = 16 << 10;
const SECTORS: u64 = LEN as u64 / 512;

/// How long a test waits for a counter; the refusal comes after the daemon's
/// 5 s bound.
const PATIENCE: Duration = Duration::from_secs(20);

/// A daemon exporting `volume` on `run/VOLUME.sock` and `run/VOLUME.migrate.sock`.
fn daemon(volume: &str) -> BlkDaemon {
    BlkDaemon::start(
        "64M",
        &format!(
            "[[pool.volume]]\nname = \"{volume}\"\nsize = \"8M\"\nexport = {{ queue_size = 128, \
             migration_socket = \"run/{volume}.migrate.sock\" }}\n"
        ),
    )
}

/// The destination: negotiated at once, rings not started (QEMU `-incoming`).
fn destination(f: &BlkDaemon, volume: &str) -> GuestBlk {
    let opts = BlkOptions {
        start_rings: false,
        ..BlkOptions::default()
    };
    f.connect_with(&format!("{volume}.migrate"), opts)
}

/// Writes of `seed`'s pattern to each request's 16 KiB, posted in one batch.
fn post_writes(blk: &mut GuestBlk, seed: u64) -> Vec<u16> {
    let data: Vec<Vec<u8>> = (0..N).map(|i| pattern(seed, i * LEN as u64, LEN)).collect();
    let reqs: Vec<Req> = (0..N)
        .map(|i| Req::Write {
            sector: i * SECTORS,
            data: &data[i as usize],
        })
        .collect();
    blk.submit_batch(0, &reqs).unwrap()
}

/// Reads of each request's 16 KiB, posted in one batch.
fn post_reads(blk: &mut GuestBlk) -> Vec<u16> {
    let reqs: Vec<Req> = (0..N)
        .map(|i| Req::Read {
            sector: i * SECTORS,
            len: LEN,
        })
        .collect();
    blk.submit_batch(0, &reqs).unwrap()
}

/// Waits for each of `heads` (posted by `post_writes` or `post_reads`) and checks
/// it completed OK; reads must hold `seed`'s pattern.
fn expect_done(blk: &mut GuestBlk, heads: &[u16], seed: Option<u64>, who: &str) {
    for (i, &head) in heads.iter().enumerate() {
        let done = blk
            .wait(0, head, WAIT)
            .unwrap_or_else(|e| panic!("{who}: request {i}: {e}"));
        assert!(done.ok(), "{who}: request {i}: status {}", done.status);
        if let Some(seed) = seed {
            if let Err(m) = verify(seed, i as u64 * LEN as u64, &done.data) {
                panic!("{who}: read {i} does not hold the source's last write: {m}");
            }
        }
    }
}

#[test]
fn the_destination_runs_the_queues_only_after_the_source_stopped_them() {
    let f = daemon("hand1");
    // Write-through (no FLUSH): a write completes after the device flushed it, which
    // a slowed flush holds back below.
    let write_through = BlkOptions {
        flush: false,
        ..BlkOptions::default()
    };
    let mut src = f.connect_with("hand1", write_through);
    let first = post_writes(&mut src, 1);
    expect_done(&mut src, &first, None, "source");

    // The destination connects and negotiates while the source runs.
    let mut dst = destination(&f, "hand1");
    assert_eq!(dst.capacity(), src.capacity());

    // The destination's ring starts while the source runs: it must wait.
    dst.start_rings().unwrap();
    let reads = post_reads(&mut dst);
    wait_for(
        "the destination's ring to wait for the source",
        PATIENCE,
        || f.counter("hand1", "handover_waits") == 1,
    );
    // The source goes on: a batch it completes, then one still in flight when its VM
    // stops (each write waits for a device flush slowed by 2 s).
    let second = post_writes(&mut src, 2);
    expect_done(&mut src, &second, None, "source");
    let faults = f.io_faults("p0");
    faults.slow_sync(Duration::from_secs(2));
    let third = post_writes(&mut src, 3);
    // Started by the device (counted as each starts), not just posted: a
    // request the source never took off its ring is the destination's to run.
    wait_for("the source to start its last writes", PATIENCE, || {
        f.counter("hand1", "writes") == 3 * N
    });
    assert_eq!(
        src.in_flight(0),
        N as usize,
        "the source's last writes are in flight"
    );
    assert_eq!(
        dst.used_idx(0),
        0,
        "the destination completed a request while the source ran the queues"
    );

    // The VM stops on the source: GET_VRING_BASE finishes and publishes its writes;
    // the destination's reads, posted before either batch, see the last one.
    src.stop().unwrap();
    faults.slow_sync(Duration::ZERO);
    expect_done(&mut src, &third, None, "source");
    expect_done(&mut dst, &reads, Some(3), "destination");

    // The destination runs the queues now: its writes land and read back.
    let fourth = post_writes(&mut dst, 4);
    expect_done(&mut dst, &fourth, None, "destination");
    let reads = post_reads(&mut dst);
    expect_done(&mut dst, &reads, Some(4), "destination");
    assert_eq!(f.counter("hand1", "handover_refused"), 0);
    assert_eq!(f.counter("hand1", "broken_queues"), 0);
    f.check_pool();
}

#[test]
fn a_source_that_disconnects_hands_the_queues_over() {
    let f = daemon("hand2");
    let mut src = f.connect_with("hand2", BlkOptions::default());
    let writes = post_writes(&mut src, 4);
    expect_done(&mut src, &writes, None, "source");
    let mut dst = destination(&f, "hand2");
    dst.start_rings().unwrap();
    let reads = post_reads(&mut dst);
    wait_for(
        "the destination's ring to wait for the source",
        PATIENCE,
        || f.counter("hand2", "handover_waits") == 1,
    );
    let later = post_writes(&mut src, 6);
    expect_done(&mut src, &later, None, "source");
    assert_eq!(dst.used_idx(0), 0);
    // The source's QEMU dies without stopping its rings.
    src.disconnect();
    expect_done(&mut dst, &reads, Some(6), "destination");
    assert_eq!(f.counter("hand2", "handover_refused"), 0);
}

#[test]
fn a_destination_whose_source_never_stops_is_refused_after_the_bound() {
    let f = daemon("hand3");
    let mut src = f.connect_with("hand3", BlkOptions::default());
    let writes = post_writes(&mut src, 5);
    expect_done(&mut src, &writes, None, "source");
    let mut dst = destination(&f, "hand3");
    dst.start_rings().unwrap();
    let reads = post_reads(&mut dst);
    wait_for("the destination's ring to be refused", PATIENCE, || {
        f.counter("hand3", "handover_refused") == 1
    });
    assert_eq!(dst.used_idx(0), 0, "a refused ring completed a request");
    assert_eq!(f.counter("hand3", "handover_waits"), 1);
    assert_eq!(f.counter("hand3", "broken_queues"), 1);
    // The source keeps the queues and goes on.
    let reads_src = post_reads(&mut src);
    expect_done(&mut src, &reads_src, Some(5), "source");
    assert_eq!(reads.len() as u64, N);
}
