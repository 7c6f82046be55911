//! Validates the vhost-user-blk test client (`test-kit/src/blkio`, libblkio)
//! against the reference backend, qemu-storage-daemon, so that the same
//! client can later be pointed at vswitchd's export and trusted.
//!
//! Nothing here is skipped: without qemu-storage-daemon (Debian's
//! qemu-utils) or a working libblkio client these tests fail and say which.

use test_kit::blkio as blk_support;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use blk_support::client::{Done, Req};
use blk_support::driver::Permutation;
use blk_support::pattern::{classify_sectors, SectorIs};
use blk_support::qsd::create_raw;
use blk_support::*;
use test_kit::frontend::blk_io::GuestBlkQueue;
use test_kit::frontend::virtio_blk::{BlkOptions, GuestBlk};

const MIB: u64 = 1 << 20;

/// A raw image of `size` bytes in a fresh directory, exported by qsd.
struct Export {
    qsd: Qsd,
    image: PathBuf,
    _dir: TestDir,
}

fn raw_export(tag: &str, size: u64, opts: impl FnOnce(QsdOptions) -> QsdOptions) -> Export {
    let dir = TestDir::on_disk(&format!("blk-{tag}"));
    let image = dir.join("disk.raw");
    create_raw(&image, size);
    let qsd = Qsd::start(&dir, opts(QsdOptions::new(Image::Raw(image.clone()))));
    Export {
        qsd,
        image,
        _dir: dir,
    }
}

fn connect(qsd: &Qsd, queues: usize) -> BlkClient {
    BlkClient::connect(qsd.socket(), queues).unwrap_or_else(|e| {
        panic!(
            "the blkio vhost-user-blk client could not connect to qemu-storage-daemon (pid {}): {e}",
            qsd.pid()
        )
    })
}

fn rng(state: &mut u64) -> u64 {
    *state = pattern::mix64(*state);
    *state
}

#[test]
fn client_reports_the_export() {
    let ex = raw_export("info", 24 * MIB, |o| o.queues(2));
    let client = connect(&ex.qsd, 2);
    let info = client.info();
    eprintln!("qsd export as the client sees it: {info:#?}");
    assert_eq!(client.capacity(), 24 * MIB);
    assert!(!client.read_only());
    assert_eq!(client.request_alignment(), 512);
    assert_eq!(info.max_queues, 2, "qsd num-queues=2");
    assert_eq!(client.num_queues(), 2);
    assert!(
        info.max_write_zeroes_len > 0,
        "qsd offers WRITE_ZEROES on a writable export"
    );
    assert!(
        info.max_discard_len > 0,
        "qsd offers DISCARD on a writable export"
    );
    // qsd serves one frontend at a time: the next connects after this one left.
    drop(client);
    // Asking for more queues than the device has is a clear connect error.
    let err = BlkClient::connect(ex.qsd.socket(), 3).unwrap_err();
    assert!(matches!(err, BlkError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("offers 2 queue"), "{err}");
}

#[test]
fn patterns_round_trip_at_many_offsets() {
    let size = 32 * MIB;
    let ex = raw_export("patterns", size, |o| o);
    let mut client = connect(&ex.qsd, 1);
    let q = client.queue(0);
    let mut shadow = vec![0u8; size as usize];
    let mut cases: Vec<(u64, u64)> = vec![
        (0, 512),
        (512, 3584),
        (4096 - 512, 1024),
        (MIB - 512, 8192 + 512),
        (size - 512, 512),
        (size - 4 * MIB, 4 * MIB),
        // Larger than the queue buffer, odd tail: several chunks in flight.
        (8 * MIB + 512, 5 * MIB + 1536),
    ];
    let mut s = 42;
    for _ in 0..200 {
        let len = 512 * (1 + rng(&mut s) % 512);
        let off = 512 * (rng(&mut s) % ((size - len) / 512 + 1));
        cases.push((off, len));
    }
    for (i, &(off, len)) in cases.iter().enumerate() {
        let data = pattern(1000 + i as u64, off, len as usize);
        q.write(off, &data)
            .unwrap_or_else(|e| panic!("write #{i} at {off} len {len}: {e}"));
        shadow[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
    q.flush().expect("flush");
    // The whole device, in reads of another split than the writes.
    let mut got = vec![0u8; size as usize];
    for (k, chunk) in got.chunks_mut(3 * MIB as usize + 512).enumerate() {
        let off = k as u64 * (3 * MIB + 512);
        q.read(off, chunk)
            .unwrap_or_else(|e| panic!("read at {off}: {e}"));
    }
    if let Some(i) = (0..size as usize).find(|&i| got[i] != shadow[i]) {
        panic!(
            "device byte {i} (sector {}) is {:#04x}, expected {:#04x}",
            i / 512,
            got[i],
            shadow[i]
        );
    }
    // The last writes, each on its own, with the pattern checker.
    for (i, &(off, len)) in cases.iter().enumerate().rev().take(5) {
        let fresh = (i + 1..cases.len()).all(|j| {
            let (o, l) = cases[j];
            o + l <= off || off + len <= o
        });
        if fresh {
            q.verify_pattern(1000 + i as u64, off, len as usize)
                .expect("read");
        }
    }
}

#[test]
fn flush_and_fua_writes_land_in_the_image_file() {
    let ex = raw_export("flush", 8 * MIB, |o| o);
    let mut client = connect(&ex.qsd, 1);
    let q = client.queue(0);
    q.write_fua(MIB, &pattern(7, MIB, 64 * 1024))
        .expect("FUA write");
    q.write(3 * MIB + 4096, &pattern(8, 3 * MIB + 4096, 12288))
        .expect("write");
    q.flush().expect("flush");
    q.flush().expect("flush with nothing to flush");
    // qsd writes with O_DIRECT: the file itself holds the data now.
    let f = fs::File::open(&ex.image).expect("open image");
    let mut buf = vec![0u8; 64 * 1024];
    f.read_exact_at(&mut buf, MIB).expect("read image");
    verify(7, MIB, &buf).expect("FUA write in the image file");
    let mut buf = vec![0u8; 12288];
    f.read_exact_at(&mut buf, 3 * MIB + 4096)
        .expect("read image");
    verify(8, 3 * MIB + 4096, &buf).expect("flushed write in the image file");
}

#[test]
fn write_zeroes_reads_back_zeros() {
    let ex = raw_export("zeroes", 4 * MIB, |o| o);
    let mut client = connect(&ex.qsd, 1);
    let q = client.queue(0);
    q.write_pattern(11, 0, 2 * MIB as usize).expect("write");
    let zeroed = [
        (256 * 1024, 512 * 1024, false),
        (MIB + 4096, 512 * 1024, true),
        (4608, 512, false),
    ];
    for &(off, len, unmap) in &zeroed {
        q.write_zeroes(off, len, unmap)
            .unwrap_or_else(|e| panic!("write_zeroes {off}+{len} unmap={unmap}: {e}"));
    }
    let got = q.read_vec(0, 2 * MIB as usize).expect("read");
    for (i, sector) in got.chunks(512).enumerate() {
        let at = 512 * i as u64;
        let in_zeroed = zeroed.iter().any(|&(o, l, _)| at >= o && at < o + l);
        if in_zeroed {
            verify_zero(at, sector).expect("written zeroes read back as zeros");
        } else {
            verify(11, at, sector).expect("data next to write_zeroes untouched");
        }
    }
}

/// virtio-blk promises nothing about what a discarded range reads back as:
/// assert that discard succeeds, leaves everything else alone, and that the
/// range holds the old data or zeros; print which.
#[test]
fn discard_succeeds_and_touches_only_its_range() {
    for unmap in [false, true] {
        let ex = raw_export("discard", 4 * MIB, |o| {
            if unmap {
                o.discard_unmap()
            } else {
                o
            }
        });
        let mut client = connect(&ex.qsd, 1);
        let q = client.queue(0);
        assert!(q.info().max_discard_len > 0, "qsd negotiated no DISCARD");
        q.write_pattern(21, MIB, MIB as usize).expect("write");
        let (d_off, d_len) = (MIB + 256 * 1024, 512 * 1024);
        q.discard(d_off, d_len).expect("discard");
        q.flush().expect("flush");
        let got = q.read_vec(0, 3 * MIB as usize).expect("read");
        let classes = classify_sectors(&[21], 0, &got);
        let (mut old, mut zeros) = (0, 0);
        for (i, c) in classes.iter().enumerate() {
            let at = 512 * i as u64;
            let written = (MIB..2 * MIB).contains(&at);
            let discarded = (d_off..d_off + d_len).contains(&at);
            match (discarded, written, c) {
                (true, _, SectorIs::Seed(0)) => old += 1,
                (true, _, SectorIs::Zeros) => zeros += 1,
                (false, true, SectorIs::Seed(0)) | (false, false, SectorIs::Zeros) => {}
                _ => panic!(
                    "sector {} at {at}: {c:?} after discard (discarded={discarded})",
                    i
                ),
            }
        }
        eprintln!(
            "qsd raw file, discard={}: discarded range reads back {old} sectors of old data, {zeros} of zeros",
            if unmap { "unmap" } else { "ignore (default)" }
        );
    }
}

#[test]
fn out_of_range_and_malformed_requests_fail() {
    let cap = 8 * MIB;
    let ex = raw_export("range", cap, |o| o);
    let mut client = connect(&ex.qsd, 1);
    let q = client.queue(0);
    let mut buf = vec![0u8; 4096];
    let ioerr = |r: Result<(), BlkError>, what: &str| match r {
        Err(e) if e.is_ioerr() => {}
        other => panic!("{what}: expected VIRTIO_BLK_S_IOERR, got {other:?}"),
    };
    ioerr(q.read(cap, &mut buf[..512]), "read at capacity");
    ioerr(q.read(cap - 512, &mut buf), "read across the end");
    ioerr(q.read(1 << 40, &mut buf), "read far beyond the end");
    ioerr(q.write(cap, &buf[..512]), "write at capacity");
    ioerr(q.write(cap - 512, &buf), "write across the end");
    ioerr(
        q.write_zeroes(cap, 4096, false),
        "write_zeroes beyond the end",
    );
    ioerr(q.discard(cap - 512, 4096), "discard across the end");
    // The last sector is in range.
    q.write(cap - 512, &pattern(31, cap - 512, 512))
        .expect("write last sector");
    q.verify_pattern(31, cap - 512, 512)
        .expect("read last sector");
    // Offsets that are not sector multiples never leave the client.
    match q.read(4096 + 100, &mut buf) {
        Err(BlkError::Invalid { .. }) => {}
        other => panic!("unaligned offset: expected Invalid, got {other:?}"),
    }
    // A length that is not a sector multiple: the device refuses it.
    let r = q.read(0, &mut buf[..100]);
    assert!(r.is_err(), "read of 100 bytes must fail, got {r:?}");
    eprintln!("100-byte read: {}", r.unwrap_err());
    // The queue still works after all those errors.
    q.write_pattern(32, 0, 8192).expect("write after errors");
    q.verify_pattern(32, 0, 8192).expect("read after errors");
    ex.qsd_alive();
}

impl Export {
    fn qsd_alive(mut self) {
        self.qsd.process.assert_alive();
    }
}

#[test]
fn read_only_export_refuses_writes() {
    let size = 4 * MIB;
    let dir = TestDir::on_disk("blk-ro");
    let image = dir.join("ro.raw");
    fs::write(&image, pattern(41, 0, size as usize)).expect("image");
    let qsd = Qsd::start(&dir, QsdOptions::new(Image::Raw(image.clone())).read_only());
    // A writable connection is refused: the device offers VIRTIO_BLK_F_RO.
    let opts = ConnectOptions {
        read_only: Some(false),
        ..ConnectOptions::new(1)
    };
    match BlkClient::connect_with(qsd.socket(), &opts) {
        Err(BlkError::ReadOnly { message, .. }) => eprintln!("writable connect: {message}"),
        other => {
            panic!("writable connection to a read-only export: expected ReadOnly, got {other:?}")
        }
    }
    let mut client = connect(&qsd, 1);
    assert!(
        client.read_only(),
        "read-only export not negotiated as read-only"
    );
    let info = client.info().clone();
    let q = client.queue(0);
    q.verify_pattern(41, 0, size as usize).expect("reads work");
    match q.write(0, &[0u8; 4096]) {
        Err(e) if e.is_read_only() => eprintln!("write: {e}"),
        other => panic!("write on a read-only export: expected ReadOnly, got {other:?}"),
    }
    for (what, r) in [
        ("write_zeroes", q.write_zeroes(0, 4096, false)),
        ("discard", q.discard(0, 4096)),
        ("FUA write", q.write_fua(4096, &[1u8; 512])),
    ] {
        let e = r.expect_err(what);
        assert!(
            matches!(e, BlkError::ReadOnly { .. } | BlkError::Unsupported { .. }),
            "{what}: {e}"
        );
        eprintln!("{what}: {e}");
    }
    eprintln!(
        "read-only export: discard negotiated={}, write_zeroes negotiated={}",
        info.max_discard_len > 0,
        info.max_write_zeroes_len > 0
    );
    q.flush().expect("flush on a read-only export");
    q.verify_pattern(41, 0, size as usize)
        .expect("data unchanged");
    drop(client);
    assert_eq!(
        fs::read(&image).expect("image"),
        pattern(41, 0, size as usize),
        "image file changed"
    );
}

#[test]
fn two_queues_at_once_each_verifies_its_half() {
    let size = 16 * MIB;
    let ex = raw_export("mq", size, |o| o.queues(2));
    let mut client = connect(&ex.qsd, 2);
    let half = size / 2;
    thread::scope(|s| {
        for q in client.queues_mut() {
            s.spawn(move || {
                let i = q.index() as u64;
                let base = i * half;
                for round in 0..4u64 {
                    let seed = 100 * (i + 1) + round;
                    // Big chunked writes, then 4 KiB writes at QD32 over a part.
                    q.write_pattern(seed, base, half as usize).expect("write");
                    q.verify_pattern(seed, base, half as usize).expect("verify");
                    let job = IoJob {
                        kind: IoKind::Write,
                        block_size: 4096,
                        qd: 32,
                        duration: Duration::from_millis(100),
                        region: base..base + MIB,
                        offsets: Offsets::Uniform,
                        seed,
                    };
                    let st = run_io(q, &job).expect("QD32 writes");
                    assert!(st.ops > 0);
                    q.write_pattern(seed + 50, base, MIB as usize)
                        .expect("rewrite");
                    q.verify_pattern(seed + 50, base, MIB as usize)
                        .expect("verify");
                }
            });
        }
    });
    // Each queue sees what the other wrote.
    let (q0, q1) = client.queues_mut().split_at_mut(1);
    q0[0]
        .verify_pattern(100 + 3, MIB, (half - MIB) as usize)
        .expect("q0 own");
    q0[0]
        .verify_pattern(200 + 3, half + MIB, (half - MIB) as usize)
        .expect("q0 reads q1's half");
    q1[0]
        .verify_pattern(100 + 3 + 50, 0, MIB as usize)
        .expect("q1 reads q0's half");
}

/// Submits `n` writes of `len` bytes with `seed` at `offset(i)` and returns
/// without waiting for them (they were kicked).
fn writes_in_flight(
    q: &mut BlkQueue,
    n: usize,
    len: usize,
    seed: u64,
    offset: impl Fn(usize) -> u64,
) {
    for i in 0..n {
        let off = offset(i);
        fill_pattern(seed, off, &mut q.buffer_mut()[i * len..(i + 1) * len]);
        q.submit(
            Req::Write {
                offset: off,
                buf_off: i * len,
                len,
                fua: false,
            },
            i,
        );
    }
    let mut out: Vec<Done> = Vec::new();
    q.wait(0, &mut out).expect("kick");
    for d in out {
        d.result.expect("write");
    }
}

#[test]
fn client_dropped_mid_io_then_a_new_client_verifies() {
    let size = 16 * MIB;
    let region = 8 * MIB;
    let ex = raw_export("drop", size, |o| o);
    {
        let mut c = connect(&ex.qsd, 1);
        c.queue(0)
            .write_pattern(51, 0, region as usize)
            .expect("baseline");
        c.queue(0).flush().expect("flush");
    }
    let (n, len) = (64usize, 64 * 1024usize);
    let target = |i: usize| 128 * 1024 * i as u64; // every other 64 KiB of the region
    for round in 0..3u64 {
        let seed = 60 + round;
        let mut c = connect(&ex.qsd, 1);
        writes_in_flight(c.queue(0), n, len, seed, target);
        let in_flight = c.queue(0).in_flight();
        drop(c); // disconnect with requests in flight
        eprintln!("round {round}: dropped the client with {in_flight} of {n} writes in flight");
        // A new client connects (the export accepts the next frontend) and
        // finds every sector either as before or as written, nothing else.
        let mut c = connect(&ex.qsd, 1);
        let got = c
            .queue(0)
            .read_vec(0, region as usize)
            .expect("read after reconnect");
        let old: Vec<u64> = (51..seed).filter(|&s| s == 51 || s >= 60).collect();
        let mut seeds = old.clone();
        seeds.push(seed);
        let classes = classify_sectors(&seeds, 0, &got);
        let mut new = 0;
        for (k, c) in classes.iter().enumerate() {
            let at = 512 * k as u64;
            let targeted = (0..n).any(|i| (target(i)..target(i) + len as u64).contains(&at));
            match c {
                SectorIs::Seed(j) if seeds[*j] == seed && targeted => new += 1,
                SectorIs::Seed(j) if seeds[*j] == 51 || targeted => {}
                _ => panic!("round {round}: sector at {at} is {c:?} (targeted={targeted})"),
            }
        }
        eprintln!("round {round}: {new} sectors of the dropped client's writes landed");
        // The new client has a fully working export.
        let q = c.queue(0);
        q.write_pattern(70 + round, region, MIB as usize)
            .expect("write after reconnect");
        q.verify_pattern(70 + round, region, MIB as usize)
            .expect("verify after reconnect");
    }
    ex.qsd_alive();
}

#[test]
fn random_driver_writes_the_blocks_it_says() {
    let ex = raw_export("driver", 4 * MIB, |o| o);
    let mut client = connect(&ex.qsd, 1);
    let q = client.queue(0);
    let (bs, qd) = (4096usize, 32usize);
    // Each block of 1 MiB once: every block then holds one slot's data.
    let job = IoJob {
        kind: IoKind::Write,
        block_size: bs,
        qd,
        duration: Duration::from_secs(20),
        region: MIB..2 * MIB,
        offsets: Offsets::EachBlockOnce,
        seed: 77,
    };
    let st = run_io(q, &job).expect("each block once");
    assert!(st.exhausted && st.ops == 256, "{st:?}");
    let slots: Vec<Vec<u8>> = (0..qd).map(|s| pattern(77, (s * bs) as u64, bs)).collect();
    let got = q.read_vec(MIB, MIB as usize).expect("read");
    for (b, block) in got.chunks(bs).enumerate() {
        assert!(
            slots.iter().any(|s| s == block),
            "block {b} holds no slot's data"
        );
    }
    verify_zero(0, &q.read_vec(0, MIB as usize).unwrap()).expect("before the region untouched");
    verify_zero(2 * MIB, &q.read_vec(2 * MIB, MIB as usize).unwrap())
        .expect("after the region untouched");
    let iops = run_random(
        q,
        IoKind::Read,
        bs,
        qd,
        Duration::from_millis(200),
        0..4 * MIB,
    )
    .expect("reads");
    assert!(iops > 0.0);
    let st = run_io(
        q,
        &IoJob {
            offsets: Offsets::Sequential,
            kind: IoKind::Read,
            ..job
        },
    )
    .expect("seq");
    assert_eq!(st.ops, 256);
}

/// The same driver on a queue of the in-process frontend's `GuestBlk` (what
/// `benches/dirty_log.rs` runs): each block of the region written once with
/// one slot's data, as the image file shows, nothing outside it; then every
/// block read once.
#[test]
fn random_driver_on_a_guest_blk_queue_writes_the_blocks_it_says() {
    let ex = raw_export("gdriver", 4 * MIB, |o| o);
    let mut blk = GuestBlk::connect(ex.qsd.socket(), BlkOptions::default())
        .expect("GuestBlk connects to qemu-storage-daemon");
    let (bs, qd) = (4096usize, 32usize);
    let job = IoJob {
        kind: IoKind::Write,
        block_size: bs,
        qd,
        duration: Duration::from_secs(20),
        region: MIB..2 * MIB,
        offsets: Offsets::EachBlockOnce,
        seed: 78,
    };
    let mut q = GuestBlkQueue::new(&mut blk, 0, qd * bs);
    let st = run_io(&mut q, &job).expect("each block once");
    assert!(st.exhausted && st.ops == 256, "{st:?}");
    let st = run_io(
        &mut q,
        &IoJob {
            offsets: Offsets::Sequential,
            kind: IoKind::Read,
            ..job.clone()
        },
    )
    .expect("reads");
    assert!(st.exhausted && st.ops == 256, "{st:?}");
    assert!(blk.wait_chains_returned(0, Duration::ZERO));
    let image = fs::read(&ex.image).expect("the image");
    let slots: Vec<Vec<u8>> = (0..qd).map(|s| pattern(78, (s * bs) as u64, bs)).collect();
    let region = &image[MIB as usize..2 * MIB as usize];
    for (b, block) in region.chunks(bs).enumerate() {
        assert!(
            slots.iter().any(|s| s == block),
            "block {b} holds no slot's data"
        );
    }
    verify_zero(0, &image[..MIB as usize]).expect("before the region untouched");
    verify_zero(2 * MIB, &image[2 * MIB as usize..]).expect("after the region untouched");
    ex.qsd_alive();
}

#[test]
fn permutation_covers_each_block_once() {
    for n in [1u64, 2, 3, 17, 1000, 4096, 65537] {
        let mut seen = vec![false; n as usize];
        let mut count = 0;
        for x in Permutation::new(n, n * 7) {
            assert!(!seen[x as usize], "n={n}: {x} twice");
            seen[x as usize] = true;
            count += 1;
        }
        assert_eq!(count, n, "n={n}");
    }
}

#[test]
fn pattern_helpers_catch_wrong_data() {
    let mut a = pattern(1, 4096, 8192);
    verify(1, 4096, &a).unwrap();
    assert_eq!(
        a[100..200],
        pattern(1, 4196, 100)[..],
        "pattern depends on the offset only"
    );
    assert!(verify(2, 4096, &a).is_err(), "another seed");
    assert!(verify(1, 4608, &a).is_err(), "another offset");
    a[5000] ^= 1;
    let m = verify(1, 4096, &a).unwrap_err();
    assert_eq!((m.offset, m.wrong_bytes), (4096 + 5000, 1));
    assert!(verify_zero(0, &[0, 0, 1]).is_err());
}
