//! The io_uring volume engine on a real O_DIRECT pool file: many requests in
//! flight (aligned and misaligned buffers, pieces spanning clusters, first
//! writes, overwrites, copy-on-write after snapshots, discards, flushes),
//! checked byte for byte against a model; then the pool is reopened and
//! checked again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vblock::dev::SplitMix64 as Rng;
use vblock::dev::{AlignedBuf, FileDev};
use vblock::engine::{Durability, IoCompletion, IoKind, IoRequest, VolumeEngine};
use vblock::pool::{Pool, PoolError, PoolOptions};

struct TempFile(PathBuf);
impl TempFile {
    fn new(tag: &str) -> TempFile {
        let base = std::env::var_os("VBLOCK_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        TempFile(base.join(format!("vblock-engine-{tag}-{}", std::process::id())))
    }
}
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A new pool of `len` bytes in `file` (a 256 KiB journal) and the file
/// for an engine's io_uring.
fn new_pool(
    file: &TempFile,
    len: u64,
    cluster_size: u32,
) -> (Arc<Mutex<Pool<FileDev>>>, std::fs::File) {
    let dev = FileDev::create(&file.0, len).expect("pool file");
    let fd = dev.file().try_clone().unwrap();
    let opts = PoolOptions {
        cluster_size,
        journal_len: Some(256 * 1024),
        uuid: None,
    };
    (Arc::new(Mutex::new(Pool::create(dev, &opts).unwrap())), fd)
}

/// A request of `len` bytes of `buf`, with no durability asked.
fn io_request(
    tag: u64,
    volume: u32,
    kind: IoKind,
    offset: u64,
    buf: &AlignedBuf,
    len: usize,
) -> IoRequest {
    IoRequest {
        tag,
        volume,
        kind,
        offset,
        len: len as u64,
        iov: vec![buf.iovec(0, len)],
        durable: Durability::Io,
    }
}

/// A request in flight and the buffer it owns.
struct InFlight {
    kind: IoKind,
    offset: u64,
    buf: AlignedBuf,
    /// Misalignment applied to the buffer start (bytes).
    skew: usize,
    len: usize,
}

const CS: u32 = 16 * 1024;
const VOL: u64 = 4 << 20;

#[test]
fn engine_matches_model_under_concurrency() {
    let file = TempFile::new("model");
    let dev = FileDev::create(&file.0, 64 << 20).expect("pool file");
    let fd = dev.file().try_clone().unwrap();
    let opts = PoolOptions {
        cluster_size: CS,
        journal_len: Some(256 * 1024),
        uuid: None,
    };
    let pool = Arc::new(Mutex::new(Pool::create(dev, &opts).unwrap()));
    let vol = pool.lock().unwrap().create_volume("v", VOL, 512).unwrap();
    let mut engine = VolumeEngine::new(pool.clone(), &fd, 64).unwrap();
    let mut model = vec![0u8; VOL as usize];
    let mut rng = Rng::new(42);
    let mut inflight: HashMap<u64, InFlight> = HashMap::new();
    let mut next_tag = 0u64;
    let mut done: Vec<IoCompletion> = Vec::new();
    let mut snapshots: Vec<(String, Vec<u8>)> = Vec::new();
    let overlaps = |inflight: &HashMap<u64, InFlight>, off: u64, len: usize| {
        inflight
            .values()
            .any(|f| off < f.offset + f.len as u64 && f.offset < off + len as u64)
    };
    for step in 0..4000u32 {
        // Keep up to 32 requests in flight.
        while inflight.len() < 32 {
            let max = if rng.below(4) == 0 { 80 } else { 8 };
            let sectors = 1 + rng.below(max) as usize;
            let len = sectors * 512;
            let off = rng.below((VOL as usize / 512 - sectors) as u64) * 512;
            if overlaps(&inflight, off, len) {
                break;
            }
            let kind = match rng.below(20) {
                0..=8 => IoKind::Write,
                9..=17 => IoKind::Read,
                18 => IoKind::Discard,
                _ => IoKind::Flush,
            };
            let skew = if rng.below(4) == 0 { 8 } else { 0 };
            let mut buf = AlignedBuf::new(len + skew);
            if kind == IoKind::Write {
                for (i, b) in buf[skew..].iter_mut().enumerate() {
                    *b = (next_tag as u8).wrapping_mul(31) ^ (i as u8) ^ 1;
                }
                model[off as usize..off as usize + len].copy_from_slice(&buf[skew..]);
            }
            if kind == IoKind::Discard {
                model[off as usize..off as usize + len].fill(0);
            }
            let iov = if matches!(kind, IoKind::Read | IoKind::Write) {
                // Two iovecs when possible, to exercise splitting.
                let first = (len / 2) & !511;
                let base = buf.iovec(skew, len);
                if first > 0 && skew == 0 {
                    let p = base.iov_base as *mut u8;
                    vec![
                        libc::iovec {
                            iov_base: p.cast(),
                            iov_len: first,
                        },
                        libc::iovec {
                            // SAFETY: pointer arithmetic only: `first < len`
                            // and `base` covers `len` bytes of `buf`.
                            iov_base: unsafe { p.add(first) }.cast(),
                            iov_len: len - first,
                        },
                    ]
                } else {
                    vec![base]
                }
            } else {
                Vec::new()
            };
            let req = IoRequest {
                tag: next_tag,
                volume: vol,
                kind,
                offset: off,
                len: if kind == IoKind::Flush { 0 } else { len as u64 },
                iov,
                durable: Durability::Io,
            };
            // SAFETY: `buf` lives in `inflight` until the completion.
            unsafe { engine.submit(req) };
            inflight.insert(
                next_tag,
                InFlight {
                    kind,
                    offset: off,
                    buf,
                    skew,
                    len: if kind == IoKind::Flush { 0 } else { len },
                },
            );
            next_tag += 1;
        }
        engine.wait(&mut done).unwrap();
        for c in done.drain(..) {
            let f = inflight.remove(&c.tag).expect("known tag");
            if let Err(e) = c.result {
                panic!("step {step}: {:?} at {}: {e}", f.kind, f.offset);
            }
            if f.kind == IoKind::Read {
                let want = &model[f.offset as usize..f.offset as usize + f.len];
                assert!(
                    &f.buf[f.skew..f.skew + f.len] == want,
                    "step {step}: read at {} of {} bytes differs",
                    f.offset,
                    f.len
                );
            }
        }
        // Now and then, with nothing in flight, take a snapshot (so later
        // writes copy on write) and check an old one.
        if step % 500 == 499 {
            while !inflight.is_empty() {
                engine.wait(&mut done).unwrap();
                for c in done.drain(..) {
                    let f = inflight.remove(&c.tag).unwrap();
                    c.result.unwrap();
                    if f.kind == IoKind::Read {
                        assert!(
                            f.buf[f.skew..f.skew + f.len]
                                == model[f.offset as usize..f.offset as usize + f.len]
                        );
                    }
                }
            }
            let name = format!("s{step}");
            pool.lock().unwrap().snapshot("v", &name).unwrap();
            snapshots.push((name, model.clone()));
        }
    }
    while !inflight.is_empty() {
        engine.wait(&mut done).unwrap();
        for c in done.drain(..) {
            inflight.remove(&c.tag).unwrap();
            c.result.unwrap();
        }
    }
    let stats = engine.stats();
    assert!(stats.bounced > 0, "{stats:?}");
    drop(engine);
    let mut p = Arc::try_unwrap(pool).ok().unwrap().into_inner().unwrap();
    p.flush().unwrap();
    assert!(p.stats().copies_on_write > 0, "{:?}", p.stats());
    p.metadata().check().unwrap();
    drop(p);
    drop(fd); // shares the lock of the pool's open file
    let p = Pool::open(FileDev::open(&file.0).unwrap()).unwrap();
    p.metadata().check().unwrap();
    let mut got = vec![0u8; VOL as usize];
    p.read(p.id("v").unwrap(), 0, &mut got).unwrap();
    assert!(got == model, "volume differs after reopen");
    for (name, content) in &snapshots {
        p.read(p.id(name).unwrap(), 0, &mut got).unwrap();
        assert!(&got == content, "snapshot {name} changed");
    }
}

#[test]
fn engine_refuses_bad_requests_and_reports_out_of_space() {
    let file = TempFile::new("errors");
    let dev = FileDev::create(&file.0, 4 << 20).expect("pool file");
    let fd = dev.file().try_clone().unwrap();
    let opts = PoolOptions {
        cluster_size: 64 * 1024,
        journal_len: Some(64 * 1024),
        uuid: None,
    };
    let pool = Arc::new(Mutex::new(Pool::create(dev, &opts).unwrap()));
    let (vol, snap) = {
        let mut p = pool.lock().unwrap();
        let v = p.create_volume("v", 64 << 20, 512).unwrap();
        (v, p.snapshot("v", "s").unwrap())
    };
    let mut engine = VolumeEngine::new(pool.clone(), &fd, 8).unwrap();
    let mut buf = AlignedBuf::new(64 * 1024);
    let mut run = |kind, volume, offset, len: usize| {
        let req = io_request(1, volume, kind, offset, &buf, len);
        // SAFETY: `buf` outlives the request (waited for below).
        unsafe { engine.submit(req) };
        let mut out = Vec::new();
        while out.is_empty() {
            engine.wait(&mut out).unwrap();
        }
        out.pop().unwrap().result
    };
    assert!(matches!(
        run(IoKind::Read, vol, 1, 512),
        Err(PoolError::Unaligned { .. })
    ));
    assert!(matches!(
        run(IoKind::Read, vol, 64 << 20, 512),
        Err(PoolError::OutOfRange { .. })
    ));
    assert!(matches!(
        run(IoKind::Write, snap, 0, 512),
        Err(PoolError::ReadOnly(_))
    ));
    assert!(matches!(
        run(IoKind::Read, 77, 0, 512),
        Err(PoolError::NoSuchVolume(_))
    ));
    let mut off = 0;
    let err = loop {
        match run(IoKind::Write, vol, off, 64 * 1024) {
            Ok(()) => off += 64 * 1024,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, PoolError::OutOfSpace { .. }), "{err}");
    // Reads of what was written still work; the pool is consistent.
    run(IoKind::Read, vol, 0, 4096).unwrap();
    run(IoKind::Flush, vol, 0, 0).unwrap();
    drop(engine);
    pool.lock().unwrap().metadata().check().unwrap();
    let _ = &mut buf;
}

#[test]
fn engine_bounds_requests_and_bounce_memory() {
    use vblock::engine::{BOUNCE_BYTES, MAX_REQUEST_BYTES};
    const CLUSTER: usize = 64 * 1024;
    let file = TempFile::new("bounds");
    let (pool, fd) = new_pool(&file, 96 << 20, CLUSTER as u32);
    let vol = pool
        .lock()
        .unwrap()
        .create_volume("v", 64 << 20, 512)
        .unwrap();
    let mut engine = VolumeEngine::new(pool.clone(), &fd, 64).unwrap();
    let max = MAX_REQUEST_BYTES as usize;
    // One byte off alignment: every piece bounces.
    let mut buf = AlignedBuf::new(max + 4096);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let req = |tag: u64, kind, offset: u64, len: usize, buf: &AlignedBuf| IoRequest {
        tag,
        volume: vol,
        kind,
        offset,
        len: len as u64,
        iov: vec![buf.iovec(1, len)],
        durable: Durability::Io,
    };
    let wait_all = |engine: &mut VolumeEngine<FileDev>, n: usize| {
        let mut out = Vec::new();
        while out.len() < n {
            engine.wait(&mut out).unwrap();
        }
        out
    };
    // Over the limit: refused before anything is touched.
    // SAFETY: over the limit, refused before the engine touches `buf`, which
    // in any case outlives the request (waited for below).
    unsafe { engine.submit(req(1, IoKind::Write, 0, max + 512, &buf)) };
    // SAFETY: as for the write just above.
    unsafe { engine.submit(req(2, IoKind::Read, 0, max + 512, &buf)) };
    for c in wait_all(&mut engine, 2) {
        assert!(
            matches!(c.result, Err(PoolError::TooLarge { .. })),
            "{:?}",
            c.result
        );
    }
    // Eight maximal misaligned writes at cluster-misaligned offsets, at once.
    for k in 0..8u64 {
        let off = k * (8 << 20) + 3 * 512;
        // SAFETY: the eight writes only read `buf`, which is not written meanwhile
        // and outlives them (all waited for below).
        unsafe { engine.submit(req(10 + k, IoKind::Write, off, max, &buf)) };
    }
    for c in wait_all(&mut engine, 8) {
        c.result.unwrap();
    }
    let cap = (BOUNCE_BYTES / CLUSTER).max(2) as u64;
    let s = engine.stats();
    assert!(s.bounced >= 8 * (max / CLUSTER) as u64, "{s:?}");
    assert_eq!(s.bounce_buffers, cap, "{s:?}");
    // Read them back misaligned too: the same buffers serve.
    let mut back = AlignedBuf::new(max + 4096);
    for k in 0..8u64 {
        let off = k * (8 << 20) + 3 * 512;
        // SAFETY: `back` is written only by this read, which is waited for before the
        // test looks at `back`; it outlives the engine.
        unsafe { engine.submit(req(20, IoKind::Read, off, max, &back)) };
        wait_all(&mut engine, 1).pop().unwrap().result.unwrap();
        assert!(back[1..1 + max] == buf[1..1 + max], "write {k} reads back");
    }
    assert_eq!(engine.stats().bounce_buffers, cap);
    drop(engine);
    pool.lock().unwrap().metadata().check().unwrap();
    let _ = &mut back;
}

/// A full pool whose policy is `Pause`: a write that needs a new cluster
/// waits (counted, nothing allocated) while reads and writes in place go on;
/// a second one waits behind it; space freed by a delete lets both finish in
/// order and their data reads back. Draining fails what still waits.
#[test]
fn a_full_pausing_pool_holds_writes_that_need_space_until_space_appears() {
    use vblock::pool::OnFull;
    const CLUSTER: usize = 64 * 1024;
    let file = TempFile::new("pause");
    let (pool, fd) = new_pool(&file, 8 << 20, CLUSTER as u32);
    let (vol, filler) = {
        let mut p = pool.lock().unwrap();
        let vol = p.create_volume("v", 4 << 20, 512).unwrap();
        let filler = p.create_volume("filler", 16 << 20, 512).unwrap();
        p.write(vol, 0, &[7; CLUSTER]).unwrap();
        let mut off = 0;
        while p.write(filler, off, &[1; CLUSTER]).is_ok() {
            off += CLUSTER as u64;
        }
        p.flush().unwrap();
        (vol, filler)
    };
    let watch = |p: &Arc<Mutex<Pool<FileDev>>>| {
        let g = p.lock().unwrap().gauges().clone();
        (g.watch().paused(), g.watch().paused_total())
    };
    pool.lock()
        .unwrap()
        .gauges()
        .watch()
        .set_on_full(OnFull::Pause);
    let mut engine = VolumeEngine::new(pool.clone(), &fd, 64).unwrap();
    let mut bufs: Vec<AlignedBuf> = (0..4).map(|_| AlignedBuf::new(CLUSTER)).collect();
    bufs[0].fill(0xa1);
    bufs[1].fill(0xb2);
    bufs[2].fill(0xc3);
    let submit = |engine: &mut VolumeEngine<FileDev>, tag, kind, offset, buf: &AlignedBuf| {
        let req = io_request(tag, vol, kind, offset, buf, buf.len());
        // SAFETY: every buffer outlives the engine's requests (drained below).
        unsafe { engine.submit(req) };
    };
    let poll_until = |engine: &mut VolumeEngine<FileDev>, tags: &[u64]| {
        let mut got = Vec::new();
        while !tags
            .iter()
            .all(|t| got.iter().any(|c: &IoCompletion| c.tag == *t))
        {
            engine.wait(&mut got).unwrap();
        }
        got
    };
    // Two first writes (clusters 1 and 2), a read and an in-place write.
    submit(&mut engine, 1, IoKind::Write, CLUSTER as u64, &bufs[0]);
    submit(&mut engine, 2, IoKind::Write, 2 * CLUSTER as u64, &bufs[1]);
    submit(&mut engine, 3, IoKind::Write, 0, &bufs[2]);
    submit(&mut engine, 4, IoKind::Read, 0, &bufs[3]);
    let got = poll_until(&mut engine, &[3, 4]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|c| c.result.is_ok()), "{got:?}");
    for _ in 0..10 {
        let mut more = Vec::new();
        engine.poll(&mut more).unwrap();
        assert!(more.is_empty(), "a paused write completed: {more:?}");
    }
    assert_eq!(engine.paused(), 2);
    assert_eq!(engine.in_flight(), 2);
    assert_eq!(watch(&pool), (2, 2));
    // Space appears: both complete, in order, and read back.
    pool.lock().unwrap().delete_volume("filler").unwrap();
    let _ = filler;
    let got = poll_until(&mut engine, &[1, 2]);
    assert_eq!(
        got.iter().map(|c| c.tag).collect::<Vec<_>>(),
        vec![1, 2],
        "{got:?}"
    );
    assert!(got.iter().all(|c| c.result.is_ok()), "{got:?}");
    assert_eq!((engine.paused(), watch(&pool).0), (0, 0));
    let p = pool.lock().unwrap();
    let mut back = vec![0u8; 3 * CLUSTER];
    p.read(vol, 0, &mut back).unwrap();
    assert!(back[..CLUSTER].iter().all(|&b| b == 0xc3));
    assert!(back[CLUSTER..2 * CLUSTER].iter().all(|&b| b == 0xa1));
    assert!(back[2 * CLUSTER..].iter().all(|&b| b == 0xb2));
    drop(p);

    // Full again. W5 needs two clusters, W6 one: with one cluster freed,
    // W6 still waits behind W5 (in order), untried.
    let free_when_full = {
        let mut p = pool.lock().unwrap();
        let filler = p.create_volume("filler", 16 << 20, 512).unwrap();
        let mut off = 0;
        while p.write(filler, off, &[1; CLUSTER]).is_ok() {
            off += CLUSTER as u64;
        }
        p.flush().unwrap();
        p.space().free_clusters
    };
    let two = AlignedBuf::new(2 * CLUSTER);
    submit(&mut engine, 5, IoKind::Write, 3 * CLUSTER as u64, &two);
    submit(&mut engine, 6, IoKind::Write, 6 * CLUSTER as u64, &bufs[1]);
    let mut none = Vec::new();
    engine.poll(&mut none).unwrap();
    assert!(none.is_empty());
    assert_eq!(watch(&pool), (2, 4));
    {
        let mut p = pool.lock().unwrap();
        let filler = p.volume("filler").unwrap().id;
        p.discard(filler, 0, CLUSTER as u64).unwrap();
        p.flush().unwrap();
        assert_eq!(p.space().free_clusters, free_when_full + 1);
    }
    for _ in 0..10 {
        engine.poll(&mut none).unwrap();
        assert!(none.is_empty(), "W6 went ahead of W5: {none:?}");
    }
    assert_eq!(engine.paused(), 2);
    // Draining: W5 fails out of space; W6, tried then, fits.
    engine.set_draining(true);
    let got = poll_until(&mut engine, &[5, 6]);
    assert!(
        matches!(
            got[..],
            [
                IoCompletion {
                    tag: 5,
                    result: Err(PoolError::OutOfSpace { .. })
                },
                IoCompletion {
                    tag: 6,
                    result: Ok(())
                }
            ]
        ),
        "{got:?}"
    );
    assert_eq!(watch(&pool).0, 0);
    drop(engine);
    pool.lock().unwrap().metadata().check().unwrap();
}
