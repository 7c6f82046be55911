//! Crash tests through the datapath: `VolumeEngine` over a `SimRing`, which
//! completes the engine's operations in a seeded random order on the
//! simulated disk, with several requests in flight. The workload: writes
//! (first writes, overwrites, copy-on-write after a snapshot; write-back,
//! staged and write-through), reads, discards (whole and partial clusters),
//! flushes, snapshots taken and deleted (so freed clusters are reused).
//! In-flight requests never share a sector but often share a cluster, so a
//! write meets another one still allocating that cluster.
//!
//! Crash points: between polls (the writes in flight lost, kept or torn
//! too), inside a poll (at a data, journal, checkpoint or superblock write
//! the engine or its fsync round makes), and process deaths (everything the
//! host kernel has, kept). After each, the pool opens (a crash inside that
//! open is checked too) and every volume reads as the README promises:
//!
//! - a write acknowledged as durable (a flush completed after it was, or a
//!   write-through completion) reads back, or something written after it;
//! - after a process death, staged writes (`Durability::ProcessDeath`) too;
//! - no sector reads data its volume never wrote there (sector tags are
//!   unique, so another volume's or a freed cluster's data is caught).
//!
//! Reads through the engine must return the latest data exactly.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use vblock::dev::AlignedBuf;
use vblock::engine::{Durability, IoCompletion, IoKind, IoRequest, SimRing, VolumeEngine};

use super::*;

/// Sectors per volume: 8 clusters, so in-flight requests often share one.
const VOL_SECTORS: usize = 64;
const CLUSTER_SECTORS: usize = CLUSTER as usize / SECTOR;
const DEPTH: u32 = 8;
const MAX_IN_FLIGHT: u64 = 6;

/// One sector's versions since the oldest a crash may still leave there.
#[derive(Clone, Debug)]
struct History {
    /// (request, tag), oldest first; `versions[0]` is what a power loss
    /// keeps at least.
    versions: Vec<(u64, u64)>,
    /// Index of what a process death keeps at least.
    staged: usize,
}

impl History {
    fn new(tag: u64) -> History {
        History {
            versions: vec![(0, tag)],
            staged: 0,
        }
    }

    fn latest(&self) -> u64 {
        self.versions.last().map_or(0, |v| v.1)
    }

    /// Request `req`'s version survives a process death (`power`: a power
    /// loss too); older ones no longer may show up.
    fn settle(&mut self, req: u64, power: bool) {
        let Some(pos) = self.versions.iter().rposition(|v| v.0 == req) else {
            return; // superseded by a newer settled version
        };
        self.staged = self.staged.max(pos);
        if power {
            self.versions.drain(..pos);
            self.staged -= pos;
        }
    }

    /// What the crash tests' model allows after a power loss or (`staged`)
    /// a process death.
    fn allowed(&self, staged: bool) -> Sector {
        let floor = if staged { self.staged } else { 0 };
        Sector {
            stable: self.versions[floor].1,
            since: self.versions[floor + 1..].iter().map(|v| v.1).collect(),
        }
    }
}

#[derive(Clone, Debug)]
struct EVolume {
    kind: VolumeKind,
    sectors: Vec<History>,
}

/// A request in flight and what the test knows about it.
struct Flight {
    kind: IoKind,
    vol: String,
    first: usize,
    n: usize,
    durable: Durability,
    buf: AlignedBuf,
    skew: usize,
    /// Reads: the tags they must return.
    expect: Vec<u64>,
    /// Flushes: the changes acknowledged before it was submitted.
    covers: Vec<Change>,
}

/// An acknowledged write or discard: (volume, first sector, sectors, request).
type Change = (String, usize, usize, u64);

type SimEngine = VolumeEngine<Arc<LoggedDisk>, SimRing<Arc<LoggedDisk>>>;

struct Run {
    seed: u64,
    rng: Rng,
    vols: BTreeMap<String, EVolume>,
    flights: HashMap<u64, Flight>,
    /// Acknowledged, not yet durable against a power loss.
    acked: Vec<Change>,
    next_req: u64,
    next_tag: u64,
    snapshots: Vec<String>,
}

impl Run {
    fn model(&self, staged: bool) -> Model {
        let volumes = self.vols.iter().map(|(name, v)| {
            let sectors = v.sectors.iter().map(|h| h.allowed(staged)).collect();
            let mv = ModelVolume {
                kind: v.kind,
                sectors,
            };
            (name.clone(), mv)
        });
        Model {
            volumes: volumes.collect(),
        }
    }

    fn settle(&mut self, change: &Change, power: bool) {
        let (vol, first, n, req) = change;
        if let Some(v) = self.vols.get_mut(vol) {
            for h in &mut v.sectors[*first..first + n] {
                h.settle(*req, power);
            }
        }
    }

    fn overlaps(&self, vol: &str, first: usize, n: usize) -> bool {
        self.flights.values().any(|f| {
            f.kind != IoKind::Flush && f.vol == vol && first < f.first + f.n && f.first < first + n
        })
    }

    /// Submits one random request, unless it would overlap one in flight.
    fn submit(&mut self, engine: &mut SimEngine) {
        let r = self.rng.below(100);
        let writable: Vec<&String> = self
            .vols
            .iter()
            .filter(|(_, v)| v.kind != VolumeKind::Snapshot)
            .map(|(n, _)| n)
            .collect();
        let vol = writable[self.rng.below(writable.len() as u64) as usize].clone();
        let (kind, first, n) = match r {
            0..=54 => {
                let first = self.rng.below(VOL_SECTORS as u64) as usize;
                let n = (1 + self.rng.below(8) as usize).min(VOL_SECTORS - first);
                (IoKind::Write, first, n)
            }
            55..=79 => {
                let first = self.rng.below(VOL_SECTORS as u64) as usize;
                let n = (1 + self.rng.below(16) as usize).min(VOL_SECTORS - first);
                (IoKind::Read, first, n)
            }
            80..=84 => {
                // Whole clusters: unmapped, freed at the next commit.
                let c = self.rng.below((VOL_SECTORS / CLUSTER_SECTORS) as u64 - 1) as usize;
                let n = CLUSTER_SECTORS * (1 + self.rng.below(2) as usize);
                (IoKind::Discard, c * CLUSTER_SECTORS, n)
            }
            85..=88 => {
                let first = self.rng.below(VOL_SECTORS as u64) as usize;
                (
                    IoKind::WriteZeroes,
                    first,
                    (1 + first % 3).min(VOL_SECTORS - first),
                )
            }
            _ => (IoKind::Flush, 0, 0),
        };
        if kind != IoKind::Flush && self.overlaps(&vol, first, n) {
            return;
        }
        let durable = match self.rng.below(4) {
            0 => Durability::ProcessDeath,
            1 => Durability::PowerLoss,
            _ => Durability::Io,
        };
        self.next_req += 1;
        let req = self.next_req;
        // Every fourth buffer is misaligned: those pieces bounce.
        let skew = if self.rng.below(4) == 0 { 8 } else { 0 };
        let len = n * SECTOR;
        let mut buf = AlignedBuf::new(len + skew);
        let mut expect = Vec::new();
        let mut covers = Vec::new();
        let v = self.vols.get_mut(&vol).expect("volume");
        match kind {
            IoKind::Write => {
                for (i, h) in v.sectors[first..first + n].iter_mut().enumerate() {
                    self.next_tag += 1;
                    h.versions.push((req, self.next_tag));
                    let at = skew + i * SECTOR;
                    buf[at..at + SECTOR].copy_from_slice(&sector_data(self.next_tag));
                }
            }
            IoKind::Discard | IoKind::WriteZeroes => {
                for h in &mut v.sectors[first..first + n] {
                    h.versions.push((req, 0));
                }
            }
            IoKind::Read => {
                expect = v.sectors[first..first + n]
                    .iter()
                    .map(History::latest)
                    .collect()
            }
            IoKind::Flush => covers = self.acked.clone(),
        }
        let data = matches!(kind, IoKind::Read | IoKind::Write);
        let request = IoRequest {
            tag: req,
            volume: engine.pool().lock().unwrap().id(&vol).expect("id"),
            kind,
            offset: (first * SECTOR) as u64,
            len: len as u64,
            iov: if data {
                vec![buf.iovec(skew, len)]
            } else {
                Vec::new()
            },
            durable,
        };
        // SAFETY: `buf` is kept in `flights` until the completion comes back
        // (or the engine is dropped), and the test does not touch it before.
        unsafe { engine.submit(request) };
        let flight = Flight {
            kind,
            vol,
            first,
            n,
            durable,
            buf,
            skew,
            expect,
            covers,
        };
        self.flights.insert(req, flight);
    }

    /// Takes the completions in: reads checked, durability settled.
    fn complete(&mut self, done: &mut Vec<IoCompletion>) {
        for c in done.drain(..) {
            let seed = self.seed;
            let f = self.flights.remove(&c.tag).expect("a tag in flight");
            if let Err(e) = c.result {
                panic!(
                    "seed {seed}: {:?} of {} at sector {}: {e}",
                    f.kind, f.vol, f.first
                );
            }
            let change = (f.vol.clone(), f.first, f.n, c.tag);
            match f.kind {
                IoKind::Read => {
                    let got: Vec<Option<u64>> = f.buf[f.skew..]
                        .chunks_exact(SECTOR)
                        .map(sector_tag)
                        .collect();
                    let want: Vec<Option<u64>> = f.expect.iter().map(|&t| Some(t)).collect();
                    assert_eq!(
                        got, want,
                        "seed {seed}: read of {} at sector {}",
                        f.vol, f.first
                    );
                }
                IoKind::Flush => {
                    for ch in &f.covers {
                        self.settle(ch, true);
                    }
                    self.acked.retain(|a| !f.covers.iter().any(|c| c.3 == a.3));
                }
                _ => {
                    match f.durable {
                        Durability::PowerLoss => self.settle(&change, true),
                        Durability::ProcessDeath => self.settle(&change, false),
                        Durability::Io => {}
                    }
                    self.acked.push(change);
                }
            }
        }
    }

    /// Waits until nothing is in flight.
    fn drain(&mut self, engine: &mut SimEngine) {
        let mut done = Vec::new();
        while !self.flights.is_empty() {
            engine.wait(&mut done).expect("wait");
            self.complete(&mut done);
        }
    }

    /// With nothing in flight: a snapshot of a volume (later writes to it
    /// copy on write), or the oldest snapshot deleted (its clusters reused).
    fn snapshot_or_delete(&mut self, engine: &mut SimEngine) {
        self.drain(engine);
        let pool = Arc::clone(engine.pool());
        let mut pool = pool.lock().unwrap();
        if self.snapshots.len() >= 2 && self.rng.below(2) == 0 {
            let name = self.snapshots.remove(0);
            pool.delete_volume(&name).expect("delete");
            self.vols.remove(&name);
        } else {
            let src = if self.rng.below(2) == 0 { "a" } else { "b" };
            let name = format!("s{}", self.next_req);
            pool.snapshot(src, &name).expect("snapshot");
            let mut v = self.vols[src].clone();
            v.kind = VolumeKind::Snapshot;
            self.vols.insert(name.clone(), v);
            self.snapshots.push(name);
        }
        // Both commit: everything completed is durable.
        for v in self.vols.values_mut() {
            for h in &mut v.sectors {
                *h = History::new(h.latest());
            }
        }
        self.acked.clear();
    }
}

/// Where the crash points fell, across seeds.
#[derive(Default)]
struct EngineCounts {
    crash: Counts,
    deferred: u64,
    copies_on_write: u64,
    checkpoints: u64,
}

fn run_engine_seed(seed: u64, steps: usize, counts: &mut EngineCounts) {
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
    let mut vols = BTreeMap::new();
    for name in ["a", "b"] {
        pool.create_volume(name, (VOL_SECTORS * SECTOR) as u64, 512)
            .expect("volume");
        let sectors = vec![History::new(0); VOL_SECTORS];
        let v = EVolume {
            kind: VolumeKind::Volume,
            sectors,
        };
        vols.insert(name.to_string(), v);
    }
    let pool = Arc::new(Mutex::new(pool));
    let ring = SimRing::new(logged.clone(), disk.clone(), DEPTH, seed).expect("ring");
    let mut engine = VolumeEngine::with_device(pool.clone(), ring);
    let mut run = Run {
        seed,
        rng: Rng::new(seed),
        vols,
        flights: HashMap::new(),
        acked: Vec::new(),
        next_req: 0,
        next_tag: seed << 32,
        snapshots: Vec::new(),
    };
    let c = &mut counts.crash;
    let mut done = Vec::new();
    for step in 0..steps {
        let target = 1 + run.rng.below(MAX_IN_FLIGHT) as usize;
        while run.flights.len() < target {
            run.submit(&mut engine);
            if run.rng.below(3) == 0 {
                break;
            }
        }
        // A crash point inside this poll, at one of its next writes.
        let inside = run.rng.below(3) == 0;
        let crash_seed = run.rng.next_u64();
        let at = 1 + run.rng.below(4);
        let (mark, before) = (logged.writes(), inside.then(|| run.model(false)));
        if inside {
            disk.capture_after_writes(at, crash_seed);
        }
        if run.rng.below(2) == 0 {
            engine.wait(&mut done).expect("wait");
        } else {
            engine.poll(&mut done).expect("poll");
        }
        if let (Some(captured), Some(model)) = (disk.take_capture(), before) {
            let (offset, head) = logged.write(mark + at as usize - 1);
            let kind = WriteKind::of(pool.lock().unwrap().layout(), offset, head);
            c.inside[kind as usize] += 1;
            let accept = |p: &LoggedPool| verify(p, &model);
            let (_, p) = open_crashed(captured, crash_seed ^ 1, c, &accept);
            if let Err(e) = accept(&p) {
                panic!("seed {seed} step {step}: crash inside a poll: {e}");
            }
        }
        run.complete(&mut done);
        match run.rng.below(16) {
            0 | 1 => {
                c.between += 1;
                let model = run.model(false);
                let crashed = engine.device().crash(crash_seed ^ 2);
                let accept = |p: &LoggedPool| verify(p, &model);
                let (_, p) = open_crashed(crashed, crash_seed ^ 3, c, &accept);
                if let Err(e) = accept(&p) {
                    panic!("seed {seed} step {step}: crash between polls: {e}");
                }
            }
            2 => {
                c.process_deaths += 1;
                let image = SimDisk::from_image(disk.snapshot_current()).expect("image");
                let p = Pool::open(Arc::new(image))
                    .unwrap_or_else(|e| panic!("seed {seed} step {step}: open: {e}"));
                if let Err(e) = verify(&p, &run.model(true)) {
                    panic!("seed {seed} step {step}: the process died: {e}");
                }
            }
            3 if step % 8 == 0 => run.snapshot_or_delete(&mut engine),
            _ => {}
        }
    }
    run.drain(&mut engine);
    counts.deferred += engine.stats().deferred;
    drop(engine);
    let stats = pool.lock().unwrap().stats();
    counts.copies_on_write += stats.copies_on_write;
    counts.checkpoints += stats.checkpoints;
}

/// Prints the seed of a failing run, whatever panicked.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("engine crash test failed with seed {}", self.0);
        }
    }
}

#[test]
fn engine_crash_anywhere_keeps_the_durability_contract() {
    let seeds: u64 = std::env::var("VBLOCK_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let mut counts = EngineCounts::default();
    for seed in 1..=seeds {
        let _guard = SeedGuard(seed);
        run_engine_seed(seed, 300, &mut counts);
    }
    let c = &counts.crash;
    eprintln!(
        "{seeds} seeds through the engine: {} crashes between polls, {} process deaths; \
         inside a poll, by the write interrupted: {:?} {:?}; inside Pool::open: {:?}; \
         {} waits for an allocation in flight, {} copies on write, {} checkpoints",
        c.between,
        c.process_deaths,
        WriteKind::ALL,
        c.inside,
        c.in_open,
        counts.deferred,
        counts.copies_on_write,
        counts.checkpoints
    );
    // The workload must have met what it is here to test.
    assert!(c.between > 0 && c.process_deaths > 0, "no crash points");
    for kind in [WriteKind::Data, WriteKind::Journal] {
        assert!(
            c.inside[kind as usize] > 0,
            "no crash inside a {kind:?} write"
        );
    }
    assert!(counts.deferred > 0, "no write met an allocation in flight");
    assert!(counts.copies_on_write > 0, "no copy on write");
}
