//! Crash tests over the simulated disk (TigerBeetle style): seeded random
//! workloads of writes, flushes, discards, snapshots, clones, deletes,
//! resizes and renames on a small pool whose journal ring (16 blocks) wraps
//! and checkpoints constantly. Crash points:
//!
//! - *between* operations: the disk as it would come back after a power
//!   failure right then (unflushed writes dropped, kept or torn per sector);
//! - *inside* operations: a capture armed at a random write of the next
//!   operation (in the middle of a data write, a commit, a checkpoint, a
//!   superblock update...), while the workload goes on.
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
use std::sync::Arc;

use vblock::dev::SplitMix64 as Rng;
use vblock::dev::{BlockDev, SimDisk};
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
    Write { vol: String, first: usize, n: usize },
    Discard { vol: String, first: usize, n: usize },
    Flush,
    Create { name: String, sectors: usize },
    Delete { vol: String },
    Snapshot { src: String, name: String },
    Clone { src: String, name: String },
    Grow { vol: String, sectors: usize },
    Shrink { vol: String, sectors: usize },
    Rename { vol: String, name: String },
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
            58..=72 => Op::Flush,
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

fn open_crashed(disk: SimDisk) -> (Arc<SimDisk>, Pool<Arc<SimDisk>>) {
    let disk = Arc::new(disk);
    let pool = Pool::open(disk.clone()).unwrap_or_else(|e| panic!("open after crash: {e}"));
    (disk, pool)
}

/// The "second life": a recovered pool takes writes and a flush, crashes
/// again (unflushed state random), and must still match.
fn second_life(
    disk: Arc<SimDisk>,
    mut pool: Pool<Arc<SimDisk>>,
    mut model: Model,
    w: &mut Workload,
    seed: u64,
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
            op @ (Op::Write { .. } | Op::Discard { .. } | Op::Flush) => op,
            _ => Op::Flush,
        };
        w.run(&mut pool, &mut model, &op);
    }
    let crashed = disk.crash(seed);
    let (_d, pool) = open_crashed(crashed);
    if let Err(e) = verify(&pool, &model) {
        panic!("after a second crash (seed {seed}): {e}");
    }
}

struct Counts {
    between: u64,
    inside: u64,
}

fn run_seed(seed: u64, ops: usize, counts: &mut Counts) {
    let disk = Arc::new(SimDisk::new(POOL_LEN));
    let opts = PoolOptions {
        cluster_size: CLUSTER,
        journal_len: Some(JOURNAL_LEN),
        uuid: Some([seed as u8; 16]),
    };
    let mut pool = Pool::create(disk.clone(), &opts).expect("create");
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
        disk.capture_after_writes(at, crash_seed);
        let during = w.run(&mut pool, &mut model, &op);
        if let Some(captured) = disk.take_capture() {
            counts.inside += 1;
            let (cd, cpool) = open_crashed(captured);
            let ok = verify(&cpool, &during).or_else(|e1| {
                verify(&cpool, &before).map_err(|e2| {
                    format!("neither outcome: after-op model: {e1}; before-op model: {e2}")
                })
            });
            if let Err(e) = ok {
                panic!("seed {seed} step {step}: crash inside {op:?}: {e}");
            }
            if step % 4 == 0 {
                // Which outcome happened decides the model of the second life.
                let m = if verify(&cpool, &during).is_ok() {
                    during
                } else {
                    before
                };
                second_life(cd, cpool, m, &mut w, crash_seed ^ 1);
            }
        }
        // A crash point right after the op.
        counts.between += 1;
        let (cd, cpool) = open_crashed(disk.crash(crash_seed ^ 2));
        if let Err(e) = verify(&cpool, &model) {
            panic!("seed {seed} step {step}: crash after {op:?}: {e}");
        }
        if step % 10 == 0 {
            second_life(cd, cpool, model.clone(), &mut w, crash_seed ^ 3);
        }
        // The live pool keeps reading its latest data.
        for name in model.volumes.keys() {
            let id = pool.id(name).expect("id");
            let want = model.latest(name);
            let mut buf = vec![0u8; want.len() * SECTOR];
            pool.read(id, 0, &mut buf).expect("read");
            for (i, b) in buf.chunks_exact(SECTOR).enumerate() {
                assert_eq!(
                    sector_tag(b),
                    Some(want[i]),
                    "seed {seed} step {step}: live {name} sector {i}"
                );
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
    let mut counts = Counts {
        between: 0,
        inside: 0,
    };
    for seed in 1..=seeds {
        run_seed(seed, 150, &mut counts);
    }
    eprintln!(
        "{seeds} seeds: {} crash points between operations, {} inside",
        counts.between, counts.inside
    );
    assert!(counts.between + counts.inside >= 2000 * seeds / 24);
}
