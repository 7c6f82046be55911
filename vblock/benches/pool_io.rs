//! vblock speed, against the limit measured in the same run.
//!
//! `cargo bench -p vblock --bench pool_io` (env: `VBLOCK_BENCH_DIR`
//! (default /var/tmp), `VBLOCK_BENCH_SIZE` (bytes of the raw file and the
//! volume, default 1 GiB), `VBLOCK_BENCH_SECS` (per phase, default 8),
//! `VBLOCK_BENCH_CLUSTER` (default: the pool default), `VBLOCK_BENCH_ONLY=io|meta`).
//!
//! 1. 4 KiB random I/O at queue depth 32 through the io_uring engine on one
//!    pool file: read, overwrite of allocated clusters, first write to
//!    unallocated clusters, first write after a snapshot (copy-on-write);
//!    and fio (io_uring, direct, same depth and block size) on a raw file of
//!    the same size. Each figure is printed with its ratio to fio's.
//! 2. Metadata: time to snapshot a volume with one million mapped clusters,
//!    pool open time after a crash with a full journal, and metadata bytes
//!    per allocated cluster in memory and on disk. These run on a device
//!    that stores only non-zero sectors (the data written is zeros), so a
//!    million clusters fit in memory; what is timed is the metadata work.

#[path = "../../benches/fio.rs"]
mod fio;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vblock::dev::SplitMix64 as Rng;
use vblock::dev::{AlignedBuf, BlockDev, FileDev};
use vblock::engine::{Durability, IoKind, IoRequest, VolumeEngine};
use vblock::pool::{Pool, PoolOptions};

const QD: usize = 32;
const BS: usize = 4096;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// fio at this bench's queue depth.
fn fio(path: &Path, size: u64, rw: &str, secs: u64) -> f64 {
    fio::fio_iops(path, size, rw, QD, secs, None)
}

/// Where one phase sends its I/O.
enum Target {
    /// Uniformly random 4 KiB blocks of the first `bytes`.
    Random { bytes: u64 },
    /// One 4 KiB block at a random offset in each cluster of `order`, each
    /// cluster once (first writes).
    EachCluster { order: Vec<u64>, cluster: u64 },
}

/// Runs 4 KiB `kind` requests at QD32 for `secs` (or until `EachCluster`
/// runs out); returns IOPS.
fn engine_phase(
    engine: &mut VolumeEngine<FileDev>,
    vol: u32,
    kind: IoKind,
    mut target: Target,
    secs: u64,
    seed: u64,
) -> f64 {
    let mut rng = Rng::new(seed);
    let mut bufs: Vec<AlignedBuf> = (0..QD).map(|_| AlignedBuf::new(BS)).collect();
    for b in &mut bufs {
        b.fill(0x5A);
    }
    let mut free: Vec<usize> = (0..QD).collect();
    let mut out = Vec::new();
    let mut done = 0u64;
    let mut issued = 0u64;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut exhausted = false;
    loop {
        while !exhausted && Instant::now() < deadline {
            let Some(slot) = free.pop() else { break };
            let offset = match &mut target {
                Target::Random { bytes } => rng.below(*bytes / BS as u64) * BS as u64,
                Target::EachCluster { order, cluster } => match order.pop() {
                    Some(c) => c * *cluster + rng.below(*cluster / BS as u64) * BS as u64,
                    None => {
                        exhausted = true;
                        free.push(slot);
                        break;
                    }
                },
            };
            let req = IoRequest {
                tag: slot as u64,
                volume: vol,
                kind,
                offset,
                len: BS as u64,
                iov: vec![bufs[slot].iovec(0, BS)],
                durable: Durability::Io,
            };
            // SAFETY: bufs[slot] is not reused before its completion.
            unsafe { engine.submit(req) };
            issued += 1;
        }
        if done == issued && (exhausted || Instant::now() >= deadline) {
            break;
        }
        engine.wait(&mut out).expect("engine");
        for c in out.drain(..) {
            c.result.expect("request");
            free.push(c.tag as usize);
            done += 1;
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn shuffled(n: u64, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

fn io_bench(dir: &Path, size: u64, secs: u64, cluster: u32) {
    let raw = dir.join(format!("vblock-bench-raw-{}", std::process::id()));
    let pool_path = dir.join(format!("vblock-bench-pool-{}", std::process::id()));
    let _cleanup = Cleanup(vec![raw.clone(), pool_path.clone()]);
    println!(
        "## 4 KiB random I/O, queue depth {QD}, {secs} s per phase, {} MiB, cluster {} KiB",
        size >> 20,
        cluster / 1024
    );
    // fio runs before and after the pool phases; the reference is the mean
    // (this machine's disk is noisy; both runs are printed).
    let raw_write_1 = fio(&raw, size, "randwrite", secs);
    let raw_read_1 = fio(&raw, size, "randread", secs);
    // The pool: room for the volume twice (its clusters + copies after the snapshot).
    let dev = FileDev::create_replacing(&pool_path, 2 * size + (256 << 20)).expect("pool file");
    let fd = dev.file().try_clone().expect("fd");
    let opts = PoolOptions {
        cluster_size: cluster,
        journal_len: None,
        uuid: None,
    };
    let pool = Arc::new(Mutex::new(Pool::create(dev, &opts).expect("pool")));
    let vol = pool
        .lock()
        .unwrap()
        .create_volume("bench", size, 512)
        .unwrap();
    let mut engine = VolumeEngine::new(pool.clone(), &fd, 2 * QD as u32).expect("engine");
    let clusters = size / u64::from(cluster);

    // First write: every cluster once, in random order (fills the volume).
    let first = engine_phase(
        &mut engine,
        vol,
        IoKind::Write,
        Target::EachCluster {
            order: shuffled(clusters, 1),
            cluster: u64::from(cluster),
        },
        secs,
        2,
    );
    // Make sure the whole volume is allocated before overwrite/read.
    fill_rest(&mut engine, vol, size, cluster);
    let over = engine_phase(
        &mut engine,
        vol,
        IoKind::Write,
        Target::Random { bytes: size },
        secs,
        3,
    );
    let read = engine_phase(
        &mut engine,
        vol,
        IoKind::Read,
        Target::Random { bytes: size },
        secs,
        4,
    );
    pool.lock()
        .unwrap()
        .snapshot("bench", "bench-snap")
        .unwrap();
    let cow = engine_phase(
        &mut engine,
        vol,
        IoKind::Write,
        Target::EachCluster {
            order: shuffled(clusters, 5),
            cluster: u64::from(cluster),
        },
        secs,
        6,
    );
    let st = pool.lock().unwrap().stats();
    let raw_write_2 = fio(&raw, size, "randwrite", secs);
    let raw_read_2 = fio(&raw, size, "randread", secs);
    println!(
        "fio raw file: randread {raw_read_1:.0} / {raw_read_2:.0} IOPS, randwrite {raw_write_1:.0} / {raw_write_2:.0} IOPS (before / after)"
    );
    let raw_read = (raw_read_1 + raw_read_2) / 2.0;
    let raw_write = (raw_write_1 + raw_write_2) / 2.0;
    println!("| phase | vblock IOPS | fio raw IOPS (mean) | ratio |");
    println!("|---|---|---|---|");
    for (name, iops, raw) in [
        ("read (allocated)", read, raw_read),
        ("overwrite (allocated)", over, raw_write),
        ("first write (unallocated)", first, raw_write),
        ("copy-on-write (after snapshot)", cow, raw_write),
    ] {
        println!("| {name} | {iops:.0} | {raw:.0} | {:.2} |", iops / raw);
    }
    println!("pool: {st:?}, engine: {:?}", engine.stats());
}

/// Writes every still-unmapped cluster (whole-cluster requests).
fn fill_rest(engine: &mut VolumeEngine<FileDev>, vol: u32, size: u64, cluster: u32) {
    let pool = engine.pool().clone();
    let missing: Vec<u64> = {
        let p = pool.lock().unwrap();
        let v = p.metadata().volume(vol).unwrap();
        (0..size / u64::from(cluster))
            .filter(|&c| v.map().get(c).is_none())
            .collect()
    };
    let buf = AlignedBuf::new(cluster as usize);
    let mut out = Vec::new();
    for chunk in missing.chunks(QD) {
        for &c in chunk {
            let req = IoRequest {
                tag: c,
                volume: vol,
                kind: IoKind::Write,
                offset: c * u64::from(cluster),
                len: u64::from(cluster),
                iov: vec![buf.iovec(0, cluster as usize)],
                durable: Durability::Io,
            };
            // SAFETY: `buf` is only read by these writes and outlives them.
            unsafe { engine.submit(req) };
        }
        let mut got = 0;
        while got < chunk.len() {
            engine.wait(&mut out).unwrap();
            for c in out.drain(..) {
                c.result.unwrap();
                got += 1;
            }
        }
    }
}

struct Cleanup(Vec<PathBuf>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A device that keeps only sectors that are not all zeros: metadata
/// (superblocks, journal, checkpoints) is stored, zero data costs nothing.
struct MetaOnlyDev {
    len: u64,
    sectors: Mutex<BTreeMap<u64, Box<[u8; 512]>>>,
}

impl BlockDev for MetaOnlyDev {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.sectors.lock().unwrap();
        for (i, chunk) in buf.chunks_mut(512).enumerate() {
            match s.get(&(offset / 512 + i as u64)) {
                Some(d) => chunk.copy_from_slice(&d[..chunk.len()]),
                None => chunk.fill(0),
            }
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.sectors.lock().unwrap();
        let first = offset / 512;
        if buf.iter().all(|&b| b == 0) {
            // Zero data (the common case here): drop what the range held.
            let end = first + (buf.len() as u64).div_ceil(512);
            let gone: Vec<u64> = s.range(first..end).map(|(&k, _)| k).collect();
            for k in gone {
                s.remove(&k);
            }
            return Ok(());
        }
        for (i, chunk) in buf.chunks(512).enumerate() {
            let key = offset / 512 + i as u64;
            if chunk.iter().all(|&b| b == 0) {
                s.remove(&key);
            } else {
                let mut d = Box::new([0u8; 512]);
                d[..chunk.len()].copy_from_slice(chunk);
                s.insert(key, d);
            }
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

fn meta_bench() {
    const MILLION: u64 = 1 << 20;
    let cluster = vblock::pool::DEFAULT_CLUSTER_SIZE;
    println!(
        "## metadata (cluster {} KiB, default 64 MiB journal)",
        cluster / 1024
    );
    let dev = Arc::new(MetaOnlyDev {
        len: (MILLION + 4096) * u64::from(cluster) + (128 << 20),
        sectors: Mutex::new(BTreeMap::new()),
    });
    let opts = PoolOptions {
        cluster_size: cluster,
        journal_len: None,
        uuid: None,
    };
    let mut pool = Pool::create(dev.clone(), &opts).unwrap();
    let v = pool
        .create_volume("big", MILLION * u64::from(cluster), 512)
        .unwrap();
    let zeros = vec![0u8; 4096];
    let t = Instant::now();
    // Random order: the worst case for the checkpoint's run encoding.
    for c in shuffled(MILLION, 9) {
        pool.write(v, c * u64::from(cluster), &zeros).unwrap();
    }
    pool.flush().unwrap();
    println!(
        "mapped {MILLION} clusters in {:.2} s (first writes, metadata only)",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    pool.snapshot("big", "snap").unwrap();
    println!("snapshot of a volume with {MILLION} mapped clusters: {:.1} ms (including its journal commit)", t.elapsed().as_secs_f64() * 1e3);
    let mem = pool.metadata().heap_bytes() as f64 / (2 * MILLION) as f64;
    println!("memory: {mem:.1} bytes per mapped cluster (maps + reference counts, 2 volumes sharing {MILLION} clusters)");
    pool.checkpoint().unwrap();
    let ckpt = pool.space().metadata_clusters * u64::from(cluster);
    println!(
        "on disk: checkpoint {:.1} MiB = {:.1} bytes per mapped entry (random order, worst case); journal: 20 bytes per Map record until the next checkpoint",
        ckpt as f64 / (1 << 20) as f64,
        ckpt as f64 / (2 * MILLION) as f64
    );
    pool.delete_volume("snap").unwrap();
    pool.checkpoint().unwrap();

    // Fill the journal almost to the end (no checkpoint), then "crash":
    // drop the pool without anything further, and time the open.
    let blocks = pool.layout().journal_blocks();
    let mut i = 0u64;
    // Each round adds an Unmap and a Map; auto-commits write the blocks.
    while pool.journal_used_blocks() + 80 < blocks {
        let c = i % MILLION;
        pool.discard(v, c * u64::from(cluster), u64::from(cluster))
            .unwrap();
        pool.write(v, c * u64::from(cluster), &zeros).unwrap();
        i += 1;
    }
    pool.flush().unwrap();
    let used = pool.journal_used_blocks();
    drop(pool);
    let t = Instant::now();
    let (_, loaded) = Pool::open_read_only(dev.clone()).unwrap();
    let replay = t.elapsed();
    let t = Instant::now();
    let pool = Pool::open(dev.clone()).unwrap();
    let open = t.elapsed();
    println!(
        "open after a crash with a full journal ({used} of {blocks} blocks, {} records, 1 M mapped clusters): replay {:.0} ms; open including the new checkpoint {:.0} ms",
        loaded.replayed_records,
        replay.as_secs_f64() * 1e3,
        open.as_secs_f64() * 1e3
    );
    drop(pool);
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // binary without it, and a bench is not a test: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("pool_io: a benchmark; run it with `cargo bench -p vblock --bench pool_io`");
        return;
    }
    let only = std::env::var("VBLOCK_BENCH_ONLY").unwrap_or_default();
    if only != "meta" {
        let dir =
            PathBuf::from(std::env::var("VBLOCK_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()));
        let size = env_u64("VBLOCK_BENCH_SIZE", 1 << 30);
        let secs = env_u64("VBLOCK_BENCH_SECS", 8);
        let cluster = env_u64(
            "VBLOCK_BENCH_CLUSTER",
            u64::from(vblock::pool::DEFAULT_CLUSTER_SIZE),
        ) as u32;
        io_bench(&dir, size, secs, cluster);
    }
    if only != "io" {
        meta_bench();
    }
}
