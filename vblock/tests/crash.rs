//! Crash tests over the simulated disk (TigerBeetle style): seeded random
//! workloads of writes, flushes, discards, snapshots, clones, reverts,
//! deletes, resizes and renames on a small pool whose journal ring (16 blocks) wraps
//! and checkpoints constantly. Crash points:
//!
//! - *between* operations: the disk as it would come back after a power
//!   failure right then (unflushed writes dropped, kept or torn per sector);
//! - *inside* operations: a capture armed at a random write of the next
//!   operation (in the middle of a data write, a commit, a checkpoint, a
//!   superblock update...), while the workload goes on. Every write is
//!   logged, so the test knows which kind of write each crash interrupted
//!   and asserts that crashes inside each kind happened;
//! - *inside `Pool::open`*: after the journal replay, while opening writes
//!   its checkpoint and superblock (a crash during recovery).
//!
//! After every crash the pool must open, `check` must pass, and every volume
//! must read exactly as the model allows: each sector holds the value of its
//! last write before the last completed flush, or one written since (zeros
//! included only if the volume wrote them). Sector values carry globally
//! unique tags, so data of another volume, of a freed cluster or of a torn
//! sector is caught. Snapshots read exactly as when taken. A recovered pool
//! then takes more writes and a flush, crashes again and is checked again
//! (a stale journal block must never be replayed after recovery).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

// The same contract checked through the io_uring engine's path. (A crate
// root looks for `mod` files beside it; this one lives in `crash/`, where
// Cargo does not take it for a test binary of its own.)
#[path = "crash/engine.rs"]
mod engine;

use vblock::dev::SplitMix64 as Rng;
use vblock::dev::{BlockDev, SimDisk};
use vblock::format::checkpoint::CHECKPOINT_MAGIC;
use vblock::format::Layout;
use vblock::meta::VolumeKind;
use vblock::pool::{Pool, PoolError, PoolOptions};

const SECTOR: usize = 512;
const CLUSTER: u32 = 4096;
const POOL_LEN: u64 = 3 << 20;
const JOURNAL_LEN: u64 = 64 * 1024;

/// What one sector may read after a crash.
#[derive(Clone, Debug)]
struct Sector {
    /// Value as of the last completed flush (0: zeros).
    stable: u64,
    /// Values written since (acceptable too), in order.
    since: Vec<u64>,
}

#[derive(Clone, Debug)]
struct ModelVolume {
    kind: VolumeKind,
    sectors: Vec<Sector>,
}

#[derive(Clone, Debug, Default)]
struct Model {
    volumes: BTreeMap<String, ModelVolume>,
}

impl Model {
    /// Every completed write is durable (after a successful commit).
    fn collapse(&mut self) {
        for v in self.volumes.values_mut() {
            for s in &mut v.sectors {
                if let Some(&last) = s.since.last() {
                    s.stable = last;
                }
                s.since.clear();
            }
        }
    }

    fn write(&mut self, name: &str, first: usize, tags: impl Iterator<Item = u64>) {
        let v = self.volumes.get_mut(name).expect("model volume");
        for (s, tag) in v.sectors[first..].iter_mut().zip(tags) {
            s.since.push(tag);
        }
    }

    /// The latest value of each sector (what a live read returns).
    fn latest(&self, name: &str) -> Vec<u64> {
        self.volumes[name]
            .sectors
            .iter()
            .map(|s| *s.since.last().unwrap_or(&s.stable))
            .collect()
    }
}

fn sector_data(tag: u64) -> [u8; SECTOR] {
    let mut b = [0u8; SECTOR];
    if tag != 0 {
        for c in b.chunks_exact_mut(8) {
            c.copy_from_slice(&tag.to_le_bytes());
        }
    }
    b
}

/// The tag a sector holds, or `None` if it is not one whole tagged sector.
fn sector_tag(b: &[u8]) -> Option<u64> {
    let tag = u64::from_le_bytes(b[..8].try_into().ok()?);
    (b == sector_data(tag)).then_some(tag)
}

/// Every volume reads its latest data, sector for sector.
fn verify_latest<D: BlockDev>(pool: &Pool<D>, model: &Model) -> Result<(), String> {
    for name in model.volumes.keys() {
        let id = pool.id(name).map_err(|e| e.to_string())?;
        let want = model.latest(name);
        let mut buf = vec![0u8; want.len() * SECTOR];
        pool.read(id, 0, &mut buf).map_err(|e| e.to_string())?;
        for (i, b) in buf.chunks_exact(SECTOR).enumerate() {
            if sector_tag(b) != Some(want[i]) {
                return Err(format!(
                    "{name} sector {i}: read {:?}, latest {}",
                    sector_tag(b),
                    want[i]
                ));
            }
        }
    }
    Ok(())
}

/// Checks a pool against the model: same volumes, check passes, every
/// sector acceptable.
fn verify<D: BlockDev>(pool: &Pool<D>, model: &Model) -> Result<(), String> {
    if let Err(v) = pool.metadata().check() {
        return Err(format!("check failed: {v:?}"));
    }
    let names: Vec<String> = pool.volumes().into_iter().map(|v| v.name).collect();
    let want: Vec<String> = model.volumes.keys().cloned().collect();
    let mut names_sorted = names.clone();
    names_sorted.sort();
    if names_sorted != want {
        return Err(format!("volumes {names_sorted:?}, model has {want:?}"));
    }
    for (name, mv) in &model.volumes {
        let info = pool.volume(name).map_err(|e| e.to_string())?;
        if info.kind != mv.kind || info.size != (mv.sectors.len() * SECTOR) as u64 {
            return Err(format!(
                "{name}: {:?} of {} bytes, model {:?} of {}",
                info.kind,
                info.size,
                mv.kind,
                mv.sectors.len() * SECTOR
            ));
        }
        let mut buf = vec![0u8; mv.sectors.len() * SECTOR];
        pool.read(info.id, 0, &mut buf).map_err(|e| e.to_string())?;
        for (i, (b, s)) in buf.chunks_exact(SECTOR).zip(&mv.sectors).enumerate() {
            match sector_tag(b) {
                Some(t) if t == s.stable || s.since.contains(&t) => {}
                got => {
                    return Err(format!(
                        "{name} sector {i}: read {got:?}, allowed {} or {:?}",
                        s.stable, s.since
                    ))
                }
            }
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        vol: String,
        first: usize,
        n: usize,
    },
    Discard {
        vol: String,
        first: usize,
        n: usize,
    },
    Flush,
    /// `Pool::stage`: what a write-back export does before completing writes.
    Stage,
    Create {
        name: String,
        sectors: usize,
    },
    Delete {
        vol: String,
    },
    Snapshot {
        src: String,
        name: String,
    },
    Clone {
        src: String,
        name: String,
    },
    Grow {
        vol: String,
        sectors: usize,
    },
    Shrink {
        vol: String,
        sectors: usize,
    },
    Rename {
        vol: String,
        name: String,
    },
    /// The volume takes a snapshot's content (`Pool::revert`).
    Revert {
        vol: String,
        snapshot: String,
    },
}

struct Workload {
    rng: Rng,
    next_tag: u64,
    next_name: u32,
}

impl Workload {
    fn pick_op(&mut self, model: &Model) -> Op {
        let writable: Vec<&String> = model
            .volumes
            .iter()
            .filter(|(_, v)| v.kind != VolumeKind::Snapshot)
            .map(|(n, _)| n)
            .collect();
        let all: Vec<&String> = model.volumes.keys().collect();
        let r = self.rng.below(100);
        let name = |w: &mut Self| {
            w.next_name += 1;
            format!("v{}", w.next_name)
        };
        if writable.is_empty() || (model.volumes.len() < 2 && r < 50) {
            let sectors = 8 * (16 + self.rng.below(48) as usize);
            return Op::Create {
                name: name(self),
                sectors,
            };
        }
        let vol = writable[self.rng.below(writable.len() as u64) as usize].clone();
        let len = model.volumes[&vol].sectors.len();
        let first = self.rng.below(len as u64) as usize;
        let n = (1 + self.rng.below(24) as usize).min(len - first);
        match r {
            0..=49 => Op::Write { vol, first, n },
            50..=57 => Op::Discard {
                vol,
                first,
                n: (n * 4).min(len - first),
            },
            58..=66 => Op::Flush,
            67..=72 => Op::Stage,
            73..=76 if model.volumes.len() < 8 => Op::Snapshot {
                src: all[self.rng.below(all.len() as u64) as usize].clone(),
                name: name(self),
            },
            77..=80 if model.volumes.len() < 8 => Op::Clone {
                src: all[self.rng.below(all.len() as u64) as usize].clone(),
                name: name(self),
            },
            81..=85 if model.volumes.len() > 2 => Op::Delete {
                vol: all[self.rng.below(all.len() as u64) as usize].clone(),
            },
            86..=89 => Op::Grow {
                vol,
                sectors: len + 8 * (1 + self.rng.below(16) as usize),
            },
            90..=93 if len > 16 => Op::Shrink {
                vol,
                sectors: 8 + 8 * self.rng.below((len / 8 - 1) as u64) as usize,
            },
            94..=96 => Op::Rename {
                vol,
                name: name(self),
            },
            97..=98 => {
                let snapshots: Vec<&String> = model
                    .volumes
                    .iter()
                    .filter(|(_, v)| v.kind == VolumeKind::Snapshot)
                    .map(|(n, _)| n)
                    .collect();
                match snapshots.len() as u64 {
                    0 => Op::Flush,
                    n => Op::Revert {
                        vol,
                        snapshot: snapshots[self.rng.below(n) as usize].clone(),
                    },
                }
            }
            _ => Op::Create {
                name: name(self),
                sectors: 8 * (16 + self.rng.below(48) as usize),
            },
        }
    }

    /// Runs `op` on the pool and the model. Returns the model to accept if a
    /// crash interrupts the op before it returns (besides `before`).
    fn run<D: BlockDev>(&mut self, pool: &mut Pool<D>, model: &mut Model, op: &Op) -> Model {
        let bytes = |s: usize| (s * SECTOR) as u64;
        let committed: Result<bool, PoolError> = match op {
            Op::Write { vol, first, n } => {
                let tags: Vec<u64> = (0..*n)
                    .map(|_| {
                        self.next_tag += 1;
                        self.next_tag
                    })
                    .collect();
                let data: Vec<u8> = tags.iter().flat_map(|&t| sector_data(t)).collect();
                let id = pool.id(vol).expect("id");
                match pool.write(id, bytes(*first), &data) {
                    Ok(()) => {
                        model.write(vol, *first, tags.into_iter());
                        Ok(false)
                    }
                    Err(PoolError::OutOfSpace { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Op::Discard { vol, first, n } => {
                let id = pool.id(vol).expect("id");
                match pool.discard(id, bytes(*first), bytes(*n)) {
                    Ok(()) => {
                        model.write(vol, *first, std::iter::repeat_n(0, *n));
                        Ok(false)
                    }
                    Err(PoolError::OutOfSpace { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Op::Flush => pool.flush().map(|()| true),
            // Not a flush: a power loss may still drop what it wrote.
            Op::Stage => pool.stage().map(|()| false),
            Op::Create { name, sectors } => match pool.create_volume(name, bytes(*sectors), 512) {
                Ok(_) => {
                    model.volumes.insert(
                        name.clone(),
                        ModelVolume {
                            kind: VolumeKind::Volume,
                            sectors: vec![
                                Sector {
                                    stable: 0,
                                    since: vec![]
                                };
                                *sectors
                            ],
                        },
                    );
                    Ok(true)
                }
                Err(PoolError::OutOfSpace { .. }) => Ok(false),
                Err(e) => Err(e),
            },
            Op::Delete { vol } => pool.delete_volume(vol).map(|()| {
                model.volumes.remove(vol);
                true
            }),
            Op::Snapshot { src, name } | Op::Clone { src, name } => {
                let snap = matches!(op, Op::Snapshot { .. });
                let r = if snap {
                    pool.snapshot(src, name)
                } else {
                    pool.clone_volume(src, name)
                };
                match r {
                    Ok(_) => {
                        let mut v = model.volumes[src].clone();
                        v.kind = if snap {
                            VolumeKind::Snapshot
                        } else {
                            VolumeKind::Clone
                        };
                        model.volumes.insert(name.clone(), v);
                        Ok(true)
                    }
                    Err(PoolError::OutOfSpace { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Op::Grow { vol, sectors } => pool.resize(vol, bytes(*sectors), false).map(|()| {
                let v = model.volumes.get_mut(vol).expect("vol");
                v.sectors.resize(
                    *sectors,
                    Sector {
                        stable: 0,
                        since: vec![],
                    },
                );
                true
            }),
            Op::Shrink { vol, sectors } => {
                // The pool zeroes the rest of the last cluster before the
                // resize commits: model it as a pending write of zeros.
                let len = model.volumes[vol].sectors.len();
                let cluster_sectors = CLUSTER as usize / SECTOR;
                let tail_end = sectors.next_multiple_of(cluster_sectors).min(len);
                model.write(vol, *sectors, std::iter::repeat_n(0, tail_end - sectors));
                match pool.resize(vol, bytes(*sectors), true) {
                    Ok(()) => {
                        model
                            .volumes
                            .get_mut(vol)
                            .expect("vol")
                            .sectors
                            .truncate(*sectors);
                        Ok(true)
                    }
                    Err(PoolError::OutOfSpace { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Op::Rename { vol, name } => pool.rename(vol, name).map(|()| {
                let v = model.volumes.remove(vol).expect("vol");
                model.volumes.insert(name.clone(), v);
                true
            }),
            Op::Revert { vol, snapshot } => match pool.revert(vol, snapshot) {
                Ok(()) => {
                    // The snapshot's sectors, then zeros up to the volume's
                    // size if it is larger (written by nobody: stable zeros).
                    let mut sectors = model.volumes[snapshot].sectors.clone();
                    let len = model.volumes[vol].sectors.len();
                    if sectors.len() < len {
                        sectors.resize(
                            len,
                            Sector {
                                stable: 0,
                                since: vec![],
                            },
                        );
                    }
                    model.volumes.get_mut(vol).expect("vol").sectors = sectors;
                    Ok(true)
                }
                Err(PoolError::OutOfSpace { .. }) => Ok(false),
                Err(e) => Err(e),
            },
        };
        let uncollapsed = model.clone();
        match committed {
            Ok(true) => model.collapse(),
            Ok(false) => {}
            Err(e) => panic!("{op:?} failed: {e}"),
        }
        uncollapsed
    }
}

/// What a write was, from where it went and what it starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteKind {
    Data,
    Journal,
    Checkpoint,
    Superblock,
}

impl WriteKind {
    const ALL: [WriteKind; 4] = [
        WriteKind::Data,
        WriteKind::Journal,
        WriteKind::Checkpoint,
        WriteKind::Superblock,
    ];

    fn of(layout: &Layout, offset: u64, head: u32) -> WriteKind {
        if offset < layout.journal_off {
            WriteKind::Superblock
        } else if offset < layout.journal_off + layout.journal_len {
            WriteKind::Journal
        } else if head == CHECKPOINT_MAGIC {
            // Data sectors carry tags whose low half counts up from 1: never
            // the magic.
            WriteKind::Checkpoint
        } else {
            WriteKind::Data
        }
    }
}

/// A SimDisk whose completed writes are logged (offset, first 4 bytes).
struct LoggedDisk {
    disk: Arc<SimDisk>,
    log: Mutex<Vec<(u64, u32)>>,
}

impl LoggedDisk {
    fn writes(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// The `n`-th write (0-based) since the start.
    fn write(&self, n: usize) -> (u64, u32) {
        self.log.lock().unwrap()[n]
    }
}

impl BlockDev for LoggedDisk {
    fn len(&self) -> u64 {
        self.disk.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.disk.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.disk.write_at(buf, offset)?;
        let head = u32::from_le_bytes(buf[..4].try_into().unwrap_or_default());
        self.log.lock().unwrap().push((offset, head));
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        self.disk.flush()
    }
    fn boot_id(&self) -> [u8; 16] {
        self.disk.boot_id()
    }
}

type LoggedPool = Pool<Arc<LoggedDisk>>;

/// Where the crash points fell.
#[derive(Default)]
struct Counts {
    between: u64,
    /// Process deaths right after a stage (all writes kept, none flushed).
    process_deaths: u64,
    /// Crashes inside an operation, by the kind of write they interrupted.
    inside: [u64; 4],
    /// Crashes inside `Pool::open` (after replay), by kind.
    in_open: [u64; 4],
    /// Crashes inside a revert (its journal block, its commit's flushes, a
    /// checkpoint it forced).
    inside_revert: u64,
}

/// Opens a crashed disk. On the way, a crash inside this very open (at one
/// of its first writes, `seed` decides which) is captured: that disk must
/// open too and pass `accept`, as the one that finished.
fn open_crashed(
    disk: SimDisk,
    seed: u64,
    counts: &mut Counts,
    accept: &dyn Fn(&LoggedPool) -> Result<(), String>,
) -> (Arc<SimDisk>, LoggedPool) {
    let disk = Arc::new(disk);
    let logged = Arc::new(LoggedDisk {
        disk: disk.clone(),
        log: Mutex::default(),
    });
    // Not `seed` itself: the crash's fates are drawn from it, and the first
    // draw would then decide both where it crashes and what survives.
    let at = 1 + Rng::new(!seed).below(3);
    disk.capture_after_writes(at, seed);
    let pool = Pool::open(logged.clone()).unwrap_or_else(|e| panic!("open after crash: {e}"));
    if let Some(captured) = disk.take_capture() {
        let (offset, head) = logged.write(at as usize - 1);
        counts.in_open[WriteKind::of(pool.layout(), offset, head) as usize] += 1;
        let again = Arc::new(LoggedDisk {
            disk: Arc::new(captured),
            log: Mutex::default(),
        });
        let p = Pool::open(again).unwrap_or_else(|e| panic!("open after a crash inside open: {e}"));
        if let Err(e) = accept(&p) {
            panic!("crash inside open (seed {seed}, write {at}): {e}");
        }
    }
    (disk, pool)
}

/// The "second life": a recovered pool takes writes and a flush, crashes
/// again (unflushed state random), and must still match.
fn second_life(
    disk: Arc<SimDisk>,
    mut pool: LoggedPool,
    mut model: Model,
    w: &mut Workload,
    seed: u64,
    counts: &mut Counts,
) {
    // Whatever the first crash left is now the durable truth: re-anchor the
    // model on what the pool reads.
    for (name, mv) in model.volumes.iter_mut() {
        let id = pool.id(name).expect("id");
        let mut buf = vec![0u8; mv.sectors.len() * SECTOR];
        pool.read(id, 0, &mut buf).expect("read");
        for (s, b) in mv.sectors.iter_mut().zip(buf.chunks_exact(SECTOR)) {
            s.stable = sector_tag(b).expect("verified sector");
            s.since.clear();
        }
    }
    for _ in 0..6 {
        let op = match w.pick_op(&model) {
            op @ (Op::Write { .. } | Op::Discard { .. } | Op::Flush | Op::Stage) => op,
            _ => Op::Flush,
        };
        w.run(&mut pool, &mut model, &op);
    }
    let crashed = disk.crash(seed);
    let (_d, pool) = open_crashed(crashed, seed ^ 4, counts, &|p| verify(p, &model));
    if let Err(e) = verify(&pool, &model) {
        panic!("after a second crash (seed {seed}): {e}");
    }
}

fn run_seed(seed: u64, ops: usize, counts: &mut Counts) {
    let disk = Arc::new(SimDisk::new(POOL_LEN));
    let logged = Arc::new(LoggedDisk {
        disk: disk.clone(),
        log: Mutex::default(),
    });
    let opts = PoolOptions {
        cluster_size: CLUSTER,
        journal_len: Some(JOURNAL_LEN),
        uuid: Some([seed as u8; 16]),
    };
    let mut pool = Pool::create(logged.clone(), &opts).expect("create");
    let mut model = Model::default();
    let mut w = Workload {
        rng: Rng::new(seed),
        next_tag: seed << 32,
        next_name: 0,
    };
    for step in 0..ops {
        let op = w.pick_op(&model);
        let before = model.clone();
        // A crash point inside the op: mostly at its first writes (a data
        // write, the first journal block), sometimes deep in a commit or
        // checkpoint. Ops that write less than that get none.
        let crash_seed = w.rng.next_u64();
        let at = if w.rng.below(3) == 0 {
            1 + w.rng.below(12)
        } else {
            1 + w.rng.below(2)
        };
        let mark = logged.writes();
        disk.capture_after_writes(at, crash_seed);
        let during = w.run(&mut pool, &mut model, &op);
        if let Some(captured) = disk.take_capture() {
            let (offset, head) = logged.write(mark + at as usize - 1);
            counts.inside[WriteKind::of(pool.layout(), offset, head) as usize] += 1;
            if matches!(op, Op::Revert { .. }) {
                counts.inside_revert += 1;
            }
            let either = |p: &LoggedPool| {
                verify(p, &during).or_else(|e1| {
                    verify(p, &before).map_err(|e2| {
                        format!("neither outcome: after-op model: {e1}; before-op model: {e2}")
                    })
                })
            };
            let (cd, cpool) = open_crashed(captured, crash_seed ^ 5, counts, &either);
            if let Err(e) = either(&cpool) {
                panic!("seed {seed} step {step}: crash inside {op:?}: {e}");
            }
            if step % 4 == 0 {
                // Which outcome happened decides the model of the second life.
                let m = if verify(&cpool, &during).is_ok() {
                    during
                } else {
                    before
                };
                second_life(cd, cpool, m, &mut w, crash_seed ^ 1, counts);
            }
        }
        // A crash point right after the op.
        counts.between += 1;
        let (cd, cpool) = open_crashed(disk.crash(crash_seed ^ 2), crash_seed ^ 6, counts, &|p| {
            verify(p, &model)
        });
        if let Err(e) = verify(&cpool, &model) {
            panic!("seed {seed} step {step}: crash after {op:?}: {e}");
        }
        if step % 10 == 0 {
            second_life(cd, cpool, model.clone(), &mut w, crash_seed ^ 3, counts);
        }
        // The live pool keeps reading its latest data.
        if let Err(e) = verify_latest(&pool, &model) {
            panic!("seed {seed} step {step}: live pool: {e}");
        }
        // After a stage, the death of the process (everything written kept,
        // nothing flushed) loses nothing: the pool opens with the latest data.
        if matches!(op, Op::Stage) {
            counts.process_deaths += 1;
            let image = SimDisk::from_image(disk.snapshot_current()).expect("image");
            let p = Pool::open(Arc::new(image))
                .unwrap_or_else(|e| panic!("seed {seed} step {step}: open after a stage: {e}"));
            if let Err(e) = verify(&p, &model).and_then(|()| verify_latest(&p, &model)) {
                panic!("seed {seed} step {step}: the process died after a stage: {e}");
            }
        }
    }
    let stats = pool.stats();
    assert!(
        stats.checkpoints > 1,
        "seed {seed}: the workload must wrap the journal: {stats:?}"
    );
}

#[test]
fn crash_anywhere_keeps_the_durability_contract() {
    let seeds: u64 = std::env::var("VBLOCK_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let mut counts = Counts::default();
    for seed in 1..=seeds {
        run_seed(seed, 150, &mut counts);
    }
    eprintln!(
        "{seeds} seeds: {} crash points between operations, {} process deaths after a \
         stage; inside an operation, by the write interrupted: {:?} {:?}; inside \
         Pool::open: {:?}; inside a revert: {}",
        counts.between,
        counts.process_deaths,
        WriteKind::ALL,
        counts.inside,
        counts.in_open,
        counts.inside_revert
    );
    assert!(counts.process_deaths > 0, "no stage in the workload");
    assert!(counts.inside_revert > 0, "no crash inside a revert");
    // The workload must really have crashed inside each kind of write, and
    // inside recovery (its checkpoint and its superblock update).
    for kind in WriteKind::ALL {
        assert!(
            counts.inside[kind as usize] > 0,
            "no crash inside a {kind:?} write: {:?}",
            counts.inside
        );
    }
    for kind in [WriteKind::Checkpoint, WriteKind::Superblock] {
        assert!(
            counts.in_open[kind as usize] > 0,
            "no crash inside Pool::open's {kind:?} write: {:?}",
            counts.in_open
        );
    }
}
