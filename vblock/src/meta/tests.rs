//! Unit tests and seeded random workloads checked against a HashMap model.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::time::Instant;

use super::*;

const C: u32 = 4096;

fn nz(c: u32) -> NonZeroU32 {
    NonZeroU32::new(c).unwrap()
}

/// Seeded workloads: the crate's SplitMix64 plus `pick`.
struct Rng(crate::dev::SplitMix64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> Option<T> {
        (!v.is_empty()).then(|| v[self.below(v.len() as u64) as usize])
    }
}

fn checked(m: &Metadata) {
    if let Err(v) = m.check() {
        panic!("check failed: {v:#?}");
    }
}

// ---- ClusterMap ----

#[test]
fn map_set_get_remove_iter() {
    let mut m = ClusterMap::new();
    assert!(m.is_empty());
    assert_eq!(m.heap_bytes(), 0);
    for (v, p) in [(5000u64, 7u32), (3, 9), (1023, 1), (1024, 2), (70_000, 4)] {
        assert_eq!(m.set(v, nz(p)), Ok(None));
    }
    assert_eq!(m.set(3, nz(10)), Ok(Some(nz(9))));
    assert_eq!(m.len(), 5);
    assert_eq!(m.get(3), Some(nz(10)));
    assert_eq!(m.get(4), None);
    assert_eq!(m.get(u64::MAX), None);
    let all: Vec<_> = m.iter().map(|(v, p)| (v, p.get())).collect();
    assert_eq!(all, [(3, 10), (1023, 1), (1024, 2), (5000, 7), (70_000, 4)]);
    let tail: Vec<_> = m.iter_from(1024).map(|(v, _)| v).collect();
    assert_eq!(tail, [1024, 5000, 70_000]);
    assert_eq!(m.remove(70_000), Some(nz(4)));
    assert_eq!(m.remove(70_000), None);
    let before = m.heap_bytes();
    let gone: Vec<_> = m.remove_from(1000).into_iter().map(|(v, _)| v).collect();
    assert_eq!(gone, [1023, 1024, 5000]);
    assert!(m.heap_bytes() < before);
    assert_eq!(m.len(), 1);
    m.remove(3);
    assert!(m.is_empty());
    assert_eq!(m.iter().count(), 0);
    assert_eq!(
        m.set(ClusterMap::MAX_CLUSTERS, nz(1)),
        Err(VclusterTooLarge(ClusterMap::MAX_CLUSTERS))
    );
}

#[test]
fn map_memory_follows_mapping() {
    let mut m = ClusterMap::new();
    for v in 0..(64 * PAGE_ENTRIES as u64) {
        m.set(v, nz(1 + v as u32)).unwrap();
    }
    let dense = m.heap_bytes() as f64 / m.len() as f64;
    assert!(dense < 4.1, "{dense} bytes per mapped cluster");
    // One entry per page: a page each.
    let mut sparse = ClusterMap::new();
    sparse.set(0, nz(1)).unwrap();
    sparse.set(1 << 20, nz(1)).unwrap();
    assert!(
        sparse.heap_bytes() < 2 * 4096 + 16 * 1025 + 64,
        "{}",
        sparse.heap_bytes()
    );
    let copy = m.clone();
    assert!(copy.iter().eq(m.iter()));
}

// ---- Allocator ----

#[test]
fn allocator_lowest_first_and_releasing() {
    let mut a = Allocator::new(0..10);
    assert_eq!(a.total(), 9, "cluster 0 is never a data cluster");
    let got: Vec<_> = std::iter::from_fn(|| a.allocate()).collect();
    assert_eq!(got, (1..10).collect::<Vec<_>>());
    assert_eq!((a.free(), a.used(), a.releasing()), (0, 9, 0));
    assert_eq!(a.add_ref(4), Ok(2));
    assert_eq!(a.release(4), Ok(1));
    assert_eq!(a.release(4), Ok(0));
    assert_eq!(a.release(6), Ok(0));
    assert_eq!(a.state(4), Some(ClusterState::Releasing));
    assert_eq!(a.release(4), Err(AllocError::NotReferenced(4)));
    assert_eq!(a.add_ref(4), Err(AllocError::NotReferenced(4)));
    assert_eq!(a.take(4), Err(AllocError::NotFree(4)));
    assert_eq!((a.free(), a.used(), a.releasing()), (0, 7, 2));
    assert_eq!(a.allocate(), None, "releasing clusters are not allocated");
    assert_eq!(a.commit(), 2);
    assert_eq!((a.free(), a.used(), a.releasing()), (2, 7, 0));
    assert_eq!(a.allocate(), Some(4));
    assert_eq!(a.unallocate(4), Ok(()));
    assert_eq!(a.take(4), Ok(()));
    assert_eq!(a.allocate(), Some(6));
    assert_eq!(a.state(0), None);
    assert_eq!(a.add_ref(10), Err(AllocError::OutOfRange(10)));
    let mut v = Vec::new();
    a.violations(&mut v);
    assert!(v.is_empty(), "{v:?}");
}

// ---- Metadata: targeted ----

fn pool(clusters: u32) -> Metadata {
    Metadata::new(C, 1..1 + clusters).unwrap()
}

fn write(m: &mut Metadata, vol: u32, vc: u64) -> Result<u32, MetaError> {
    let pc = m.allocate()?;
    m.map(vol, vc, pc)?;
    Ok(pc)
}

#[test]
fn errors_change_nothing() {
    let mut m = pool(4);
    assert_eq!(
        Metadata::new(1000, 1..4).unwrap_err(),
        MetaError::InvalidClusterSize(1000)
    );
    m.create_volume(1, "a", 4 * C as u64, 512).unwrap();
    assert_eq!(
        m.create_volume(1, "b", C as u64, 512),
        Err(MetaError::DuplicateId(1))
    );
    assert_eq!(
        m.create_volume(2, "a", C as u64, 512),
        Err(MetaError::DuplicateName("a".into()))
    );
    assert_eq!(
        m.create_volume(2, "", C as u64, 512),
        Err(MetaError::InvalidName)
    );
    assert_eq!(
        m.create_volume(2, "b", C as u64, 1024),
        Err(MetaError::InvalidBlockSize(1024))
    );
    assert_eq!(
        m.create_volume(2, "b", 1000, 512),
        Err(MetaError::InvalidSize(1000))
    );
    assert_eq!(
        m.create_volume(2, "b", 512, 4096),
        Err(MetaError::InvalidSize(512))
    );
    assert_eq!(
        m.create_volume(2, "b", 0, 512),
        Err(MetaError::InvalidSize(0))
    );
    let huge = (ClusterMap::MAX_CLUSTERS + 1) * C as u64;
    assert_eq!(
        m.create_volume(2, "b", huge, 512),
        Err(MetaError::InvalidSize(huge))
    );
    assert_eq!(m.lookup(9, 0), Err(MetaError::UnknownVolume(9)));
    assert_eq!(m.map(9, 0, 1), Err(MetaError::UnknownVolume(9)));
    assert_eq!(
        m.map(1, 4, 1),
        Err(MetaError::BeyondEnd {
            volume: 1,
            vcluster: 4,
            clusters: 4
        })
    );
    assert_eq!(
        m.lookup(1, 4),
        Err(MetaError::BeyondEnd {
            volume: 1,
            vcluster: 4,
            clusters: 4
        })
    );
    assert_eq!(m.map(1, 0, 0), Err(MetaError::ClusterOutOfRange(0)));
    assert_eq!(m.map(1, 0, 5), Err(MetaError::ClusterOutOfRange(5)));
    let pc = write(&mut m, 1, 0).unwrap();
    assert_eq!(m.map(1, 1, pc), Err(MetaError::ClusterNotFree(pc)));
    m.snapshot(1, 2, "s").unwrap();
    assert_eq!(m.map(2, 0, 2), Err(MetaError::ReadOnly(2)));
    assert_eq!(m.unmap(2, 0), Err(MetaError::ReadOnly(2)));
    assert_eq!(m.resize(2, C as u64), Err(MetaError::ReadOnly(2)));
    assert_eq!(m.rename(2, "a"), Err(MetaError::DuplicateName("a".into())));
    assert_eq!(m.rename(2, "s"), Ok(()));
    assert_eq!(m.abandon(3), Err(MetaError::NotHeld(3)));
    assert_eq!(m.release_held(3), Err(MetaError::NotHeld(3)));
    assert_eq!(m.snapshot(7, 3, "x"), Err(MetaError::UnknownVolume(7)));
    assert_eq!(m.delete_volume(7), Err(MetaError::UnknownVolume(7)));
    checked(&m);
    assert_eq!(
        m.lookup(1, 0),
        Ok(Some(Mapping {
            pcluster: pc,
            shared: true
        }))
    );
    assert_eq!(m.allocator().used(), 1);
    assert!(MetaError::OutOfSpace.to_string().contains("out of space"));
}

#[test]
fn copy_on_write_and_lookup_shared() {
    let mut m = pool(16);
    m.create_volume(1, "v", 8 * C as u64, 4096).unwrap();
    let a = write(&mut m, 1, 0).unwrap();
    assert_eq!(
        m.lookup(1, 0).unwrap(),
        Some(Mapping {
            pcluster: a,
            shared: false
        })
    );
    assert_eq!(m.lookup(1, 1).unwrap(), None);
    m.snapshot(1, 2, "snap").unwrap();
    assert!(m.lookup(1, 0).unwrap().unwrap().shared);
    assert!(m.volume(2).unwrap().read_only());
    // First write to the shared cluster: copy, remap; the snapshot keeps `a`.
    let b = m.allocate().unwrap();
    assert_eq!(m.map(1, 0, b), Ok(Some(a)));
    assert_eq!(
        m.lookup(1, 0).unwrap(),
        Some(Mapping {
            pcluster: b,
            shared: false
        })
    );
    // `a` lost a reference in a record not committed yet: still copied.
    assert_eq!(
        m.lookup(2, 0).unwrap(),
        Some(Mapping {
            pcluster: a,
            shared: true
        })
    );
    m.commit();
    assert_eq!(
        m.lookup(2, 0).unwrap(),
        Some(Mapping {
            pcluster: a,
            shared: false
        })
    );
    assert_eq!(
        m.usage(1).unwrap(),
        VolumeUsage {
            allocated: 1,
            exclusive: 1
        }
    );
    checked(&m);
}

#[test]
fn releasing_never_allocated_before_commit() {
    let mut m = pool(3);
    m.create_volume(1, "v", 4 * C as u64, 512).unwrap();
    let pcs: Vec<_> = (0..3).map(|vc| write(&mut m, 1, vc).unwrap()).collect();
    assert_eq!(m.allocate(), Err(MetaError::OutOfSpace));
    assert_eq!(m.unmap(1, 1), Ok(Some(pcs[1])));
    assert_eq!(m.allocator().releasing(), 1);
    assert_eq!(
        m.allocate(),
        Err(MetaError::OutOfSpace),
        "release not durable yet"
    );
    assert_eq!(m.map(1, 3, pcs[1]), Err(MetaError::ClusterNotFree(pcs[1])));
    assert_eq!(m.hold(pcs[1]), Err(MetaError::ClusterNotFree(pcs[1])));
    checked(&m);
    assert_eq!(m.commit(), 1);
    assert_eq!(m.allocate(), Ok(pcs[1]));
    checked(&m);
}

#[test]
fn out_of_space_then_recovery_after_delete() {
    let mut m = pool(32);
    m.create_volume(1, "a", 64 * C as u64, 512).unwrap();
    m.create_volume(2, "b", 64 * C as u64, 512).unwrap();
    let mut vc = 0;
    while write(&mut m, 1 + (vc % 2) as u32, vc / 2).is_ok() {
        vc += 1;
    }
    assert_eq!(vc, 32);
    assert_eq!(write(&mut m, 1, 40), Err(MetaError::OutOfSpace));
    checked(&m);
    let before: Vec<_> = m.volume(2).unwrap().map().iter().collect();
    m.delete_volume(1).unwrap();
    assert_eq!(
        write(&mut m, 2, 40),
        Err(MetaError::OutOfSpace),
        "before commit"
    );
    m.commit();
    assert_eq!(m.allocator().free(), 16);
    for i in 0..16 {
        write(&mut m, 2, 40 + i).unwrap();
    }
    assert_eq!(write(&mut m, 2, 60), Err(MetaError::OutOfSpace));
    let after: Vec<_> = m
        .volume(2)
        .unwrap()
        .map()
        .iter()
        .take(before.len())
        .collect();
    assert_eq!(before, after, "nothing already written is lost");
    checked(&m);
}

#[test]
fn deleting_snapshot_with_clones_copies_nothing() {
    let mut m = pool(64);
    m.create_volume(1, "v", 16 * C as u64, 512).unwrap();
    for vc in 0..10 {
        write(&mut m, 1, vc).unwrap();
    }
    m.snapshot(1, 2, "s").unwrap();
    m.clone_volume(2, 3, "c").unwrap();
    m.clone_volume(3, 4, "cc").unwrap();
    // v and both clones overwrite cluster 0; v alone overwrites 1.
    let old0 = m.lookup(1, 0).unwrap().unwrap().pcluster;
    for vol in [1, 3, 4] {
        write(&mut m, vol, 0).unwrap();
    }
    write(&mut m, 1, 1).unwrap();
    m.commit();
    let clone_maps: Vec<Vec<_>> = [3, 4]
        .iter()
        .map(|&v| m.volume(v).unwrap().map().iter().collect())
        .collect();
    let used = m.allocator().used();
    let free = m.allocator().free();
    assert_eq!(
        m.usage(2).unwrap(),
        VolumeUsage {
            allocated: 10,
            exclusive: 1
        }
    );
    m.delete_volume(2).unwrap();
    checked(&m);
    // Only old0 (referenced by the snapshot alone) is freed; nothing allocated.
    assert_eq!(m.allocator().releasing_clusters(), [old0]);
    assert_eq!(m.allocator().used(), used - 1);
    assert_eq!(m.allocator().free(), free);
    for (i, &v) in [3, 4].iter().enumerate() {
        let now: Vec<_> = m.volume(v).unwrap().map().iter().collect();
        assert_eq!(now, clone_maps[i]);
    }
}

#[test]
fn space_returns_after_deleting_everything() {
    let mut m = pool(200);
    let mut rng = Rng(crate::dev::SplitMix64::new(7));
    m.create_volume(1, "base", 64 * C as u64, 512).unwrap();
    for vc in 0..40 {
        write(&mut m, 1, vc).unwrap();
    }
    let mut ids = vec![1];
    for id in 2..20 {
        let src = rng.pick(&ids).unwrap();
        if id % 3 == 0 {
            m.snapshot(src, id, &format!("s{id}")).unwrap();
        } else {
            m.clone_volume(src, id, &format!("c{id}")).unwrap();
            for _ in 0..5 {
                let _ = write(&mut m, id, rng.below(64));
            }
        }
        ids.push(id);
    }
    checked(&m);
    while !ids.is_empty() {
        let id = ids.swap_remove(rng.below(ids.len() as u64) as usize);
        m.delete_volume(id).unwrap();
        checked(&m);
    }
    assert_eq!(m.allocator().used(), 0);
    m.commit();
    assert_eq!(m.allocator().free(), m.allocator().total());
    assert_eq!(m.heap_bytes(), m.allocator().heap_bytes());
    checked(&m);
}

#[test]
fn held_clusters_abandon_and_checkpoint_release() {
    let mut m = pool(4);
    let a = m.allocate().unwrap();
    checked(&m);
    m.abandon(a).unwrap();
    assert_eq!(m.allocator().free(), 4, "never journaled: free at once");
    m.hold(3).unwrap(); // a checkpoint cluster loaded at open
    checked(&m);
    m.release_held(3).unwrap();
    assert_eq!(m.allocator().releasing(), 1);
    checked(&m);
    m.commit();
    assert_eq!(m.allocator().free(), 4);
}

#[test]
fn check_reports_violations() {
    let mut m = pool(8);
    m.create_volume(1, "v", 8 * C as u64, 512).unwrap();
    write(&mut m, 1, 0).unwrap();
    let mut bad = m.clone();
    bad.volumes.get_mut(&1).unwrap().map.set(1, nz(5)).unwrap();
    bad.volumes.get_mut(&1).unwrap().map.set(2, nz(99)).unwrap();
    bad.volumes.get_mut(&1).unwrap().size = C as u64;
    let v = bad.check().unwrap_err();
    assert!(v.contains(&Violation::RefcountMismatch {
        cluster: 5,
        count: 0,
        references: 1
    }));
    assert!(v.contains(&Violation::FreeButReferenced {
        cluster: 5,
        references: 1
    }));
    assert!(v.contains(&Violation::MapOutsideData {
        volume: 1,
        vcluster: 2,
        pcluster: 99
    }));
    assert!(v.contains(&Violation::MappedBeyondEnd {
        volume: 1,
        vcluster: 1,
        clusters: 1
    }));
    let mut bad = m.clone();
    m.snapshot(1, 2, "s").unwrap();
    let mut bad2 = m.clone();
    bad2.volumes.get_mut(&2).unwrap().read_only = false;
    bad2.volumes.get_mut(&2).unwrap().name = "v".into();
    let v = bad2.check().unwrap_err();
    assert!(v.contains(&Violation::SnapshotWritable { volume: 2 }));
    assert!(v.contains(&Violation::DuplicateName { name: "v".into() }));
    bad.alloc.release(1).unwrap();
    let v = bad.check().unwrap_err();
    assert!(v.contains(&Violation::RefcountMismatch {
        cluster: 1,
        count: 0,
        references: 1
    }));
    for v in v {
        assert!(!v.to_string().is_empty());
    }
}

// ---- Metadata: random workloads against a model ----

#[derive(Clone)]
struct MVol {
    name: String,
    size: u64,
    block: u32,
    read_only: bool,
    map: HashMap<u64, u32>,
}

struct Model {
    vols: HashMap<u32, MVol>,
    free: BTreeSet<u32>,
    releasing: BTreeSet<u32>,
}

impl Model {
    fn refs(&self) -> HashMap<u32, u32> {
        let mut r = HashMap::new();
        for v in self.vols.values() {
            for &pc in v.map.values() {
                *r.entry(pc).or_insert(0) += 1;
            }
        }
        r
    }
    fn clusters(v: &MVol) -> u64 {
        v.size.div_ceil(C as u64)
    }
    /// Drops one reference of each of `pcs`; those reaching 0 are releasing.
    fn settle(&mut self, pcs: impl IntoIterator<Item = u32>) {
        let refs = self.refs();
        for pc in pcs {
            if !refs.contains_key(&pc) {
                self.releasing.insert(pc);
            }
        }
    }
    fn writable(&self, id: u32, vc: u64) -> Result<(), MetaError> {
        let v = self.vols.get(&id).ok_or(MetaError::UnknownVolume(id))?;
        if v.read_only {
            return Err(MetaError::ReadOnly(id));
        }
        let clusters = Self::clusters(v);
        if vc >= clusters {
            return Err(MetaError::BeyondEnd {
                volume: id,
                vcluster: vc,
                clusters,
            });
        }
        Ok(())
    }
    fn name_free(&self, name: &str) -> bool {
        self.vols.values().all(|v| v.name != name)
    }
}

fn compare(m: &Metadata, model: &Model, rng: &mut Rng) {
    checked(m);
    assert_eq!(m.volumes().count(), model.vols.len());
    let refs = model.refs();
    for (&id, mv) in &model.vols {
        let v = m.volume(id).expect("volume");
        assert_eq!(
            (v.name(), v.size(), v.block_size()),
            (mv.name.as_str(), mv.size, mv.block)
        );
        assert_eq!(v.read_only(), mv.read_only);
        assert_eq!(m.volume_by_name(&mv.name).map(Volume::id), Some(id));
        let got: HashMap<u64, u32> = v.map().iter().map(|(vc, pc)| (vc, pc.get())).collect();
        assert_eq!(got, mv.map, "volume {id}");
        let clusters = Model::clusters(mv);
        for _ in 0..4 {
            let vc = rng.below(clusters);
            let got = m.lookup(id, vc).expect("lookup");
            assert_eq!(got.map(|g| g.pcluster), mv.map.get(&vc).copied());
            if let Some(g) = got {
                let dropped = m.allocator().dropped_since_commit(g.pcluster);
                assert_eq!(g.shared, refs[&g.pcluster] > 1 || dropped);
            }
        }
    }
    let a = m.allocator();
    assert_eq!(a.free() as usize, model.free.len());
    assert_eq!(a.releasing() as usize, model.releasing.len());
    assert_eq!(a.used() as usize, refs.len());
    let listed: BTreeSet<u32> = a.releasing_clusters().iter().copied().collect();
    assert_eq!(listed, model.releasing);
}

fn workload(seed: u64, ops: usize, pool_clusters: u32) -> (usize, usize) {
    let mut rng = Rng(crate::dev::SplitMix64::new(seed));
    let mut m = pool(pool_clusters);
    let mut model = Model {
        vols: HashMap::new(),
        free: (1..1 + pool_clusters).collect(),
        releasing: BTreeSet::new(),
    };
    let mut next_id = 1u32;
    let (mut out_of_space, mut max_chain) = (0, 0);
    let mut depth: HashMap<u32, usize> = HashMap::new();
    for _ in 0..ops {
        let ids: Vec<u32> = {
            let mut v: Vec<u32> = model.vols.keys().copied().collect();
            v.sort();
            v
        };
        // Sometimes a missing id, to exercise UnknownVolume.
        let id = if rng.below(20) == 0 {
            999
        } else {
            rng.pick(&ids).unwrap_or(999)
        };
        let name = format!("n{}", rng.below(24));
        let mut op = rng.below(100);
        if model.vols.len() >= 24 && (op < 8 || (65..75).contains(&op)) {
            op = 75; // keep the volume table small: delete instead
        }
        match op {
            0..=7 => {
                let block = if rng.below(2) == 0 { 512 } else { 4096 };
                let size = (1 + rng.below(24 * C as u64 / block as u64)) * block as u64;
                let new = if rng.below(10) == 0 && !ids.is_empty() {
                    ids[0]
                } else {
                    next_id
                };
                let want = if model.vols.contains_key(&new) {
                    Err(MetaError::DuplicateId(new))
                } else if !model.name_free(&name) {
                    Err(MetaError::DuplicateName(name.clone()))
                } else {
                    Ok(())
                };
                assert_eq!(m.create_volume(new, &name, size, block), want);
                if want.is_ok() {
                    let v = MVol {
                        name,
                        size,
                        block,
                        read_only: false,
                        map: HashMap::new(),
                    };
                    model.vols.insert(new, v);
                    depth.insert(new, 0);
                    next_id += 1;
                }
            }
            8..=49 => {
                // A guest write of one cluster: in place, or allocate + map.
                let clusters = model.vols.get(&id).map_or(1, Model::clusters);
                let vc = rng.below(clusters + 1);
                let want = model.writable(id, vc);
                let refs = model.refs();
                let cur = model.vols.get(&id).and_then(|v| v.map.get(&vc).copied());
                if want.is_ok()
                    && cur
                        .is_some_and(|pc| refs[&pc] == 1 && !m.allocator().dropped_since_commit(pc))
                {
                    assert!(!m.lookup(id, vc).unwrap().unwrap().shared);
                    continue; // overwrite in place: no metadata change
                }
                let pc = match m.allocate() {
                    Ok(pc) => pc,
                    Err(e) => {
                        assert_eq!(e, MetaError::OutOfSpace);
                        assert!(model.free.is_empty());
                        out_of_space += 1;
                        compare(&m, &model, &mut rng);
                        continue;
                    }
                };
                assert_eq!(Some(pc), model.free.pop_first(), "lowest free first");
                assert!(!model.releasing.contains(&pc));
                if rng.below(10) == 0 {
                    m.abandon(pc).unwrap(); // the data write failed
                    model.free.insert(pc);
                } else {
                    let got = m.map(id, vc, pc);
                    if let Err(e) = want {
                        assert_eq!(got, Err(e));
                        m.abandon(pc).unwrap();
                        model.free.insert(pc);
                    } else {
                        assert_eq!(got, Ok(cur));
                        model.vols.get_mut(&id).unwrap().map.insert(vc, pc);
                        model.settle(cur);
                    }
                }
            }
            50..=54 => {
                // Replay-style Map of a specific cluster (free, or not).
                let pc = 1 + rng.below(pool_clusters as u64 + 1) as u32;
                let clusters = model.vols.get(&id).map_or(1, Model::clusters);
                let vc = rng.below(clusters);
                let want = model.writable(id, vc).and_then(|()| {
                    if pc > pool_clusters {
                        Err(MetaError::ClusterOutOfRange(pc))
                    } else if !model.free.contains(&pc) {
                        Err(MetaError::ClusterNotFree(pc))
                    } else {
                        Ok(model.vols[&id].map.get(&vc).copied())
                    }
                });
                assert_eq!(m.map(id, vc, pc), want);
                if let Ok(old) = want {
                    model.free.remove(&pc);
                    model.vols.get_mut(&id).unwrap().map.insert(vc, pc);
                    model.settle(old);
                }
            }
            55..=64 => {
                let clusters = model.vols.get(&id).map_or(1, Model::clusters);
                let vc = rng.below(clusters + 1);
                let want = model
                    .writable(id, vc)
                    .map(|()| model.vols[&id].map.get(&vc).copied());
                assert_eq!(m.unmap(id, vc), want);
                if let Ok(old) = want {
                    model.vols.get_mut(&id).unwrap().map.remove(&vc);
                    model.settle(old);
                }
            }
            65..=74 => {
                let snap = rng.below(2) == 0;
                let new = next_id;
                let want = if !model.vols.contains_key(&id) {
                    Err(MetaError::UnknownVolume(id))
                } else if !model.name_free(&name) {
                    Err(MetaError::DuplicateName(name.clone()))
                } else {
                    Ok(())
                };
                let got = if snap {
                    m.snapshot(id, new, &name)
                } else {
                    m.clone_volume(id, new, &name)
                };
                assert_eq!(got, want);
                if want.is_ok() {
                    let mut v = model.vols[&id].clone();
                    v.name = name;
                    v.read_only = snap;
                    model.vols.insert(new, v);
                    let d = depth[&id] + 1;
                    max_chain = max_chain.max(d);
                    depth.insert(new, d);
                    next_id += 1;
                }
            }
            75..=81 => {
                let want = if model.vols.contains_key(&id) {
                    Ok(())
                } else {
                    Err(MetaError::UnknownVolume(id))
                };
                assert_eq!(m.delete_volume(id), want);
                if let Some(v) = model.vols.remove(&id) {
                    model.settle(v.map.into_values());
                }
            }
            82..=87 => {
                let (block, ro) = model
                    .vols
                    .get(&id)
                    .map_or((512, false), |v| (v.block, v.read_only));
                let size = (1 + rng.below(24 * C as u64 / block as u64)) * block as u64;
                let want = if !model.vols.contains_key(&id) {
                    Err(MetaError::UnknownVolume(id))
                } else if ro {
                    Err(MetaError::ReadOnly(id))
                } else {
                    Ok(())
                };
                assert_eq!(m.resize(id, size), want);
                if want.is_ok() {
                    let v = model.vols.get_mut(&id).unwrap();
                    v.size = size;
                    let end = size.div_ceil(C as u64);
                    let gone: Vec<u32> = v
                        .map
                        .iter()
                        .filter(|(&vc, _)| vc >= end)
                        .map(|(_, &pc)| pc)
                        .collect();
                    v.map.retain(|&vc, _| vc < end);
                    model.settle(gone);
                }
            }
            88..=91 => {
                let want = match model.vols.get(&id) {
                    None => Err(MetaError::UnknownVolume(id)),
                    Some(v) if v.name == name => Ok(()),
                    Some(_) if !model.name_free(&name) => {
                        Err(MetaError::DuplicateName(name.clone()))
                    }
                    Some(_) => Ok(()),
                };
                assert_eq!(m.rename(id, &name), want);
                if want.is_ok() {
                    model.vols.get_mut(&id).unwrap().name = name;
                }
            }
            _ => {
                // The journal became durable.
                assert_eq!(m.commit(), model.releasing.len());
                model.free.append(&mut model.releasing);
            }
        }
        compare(&m, &model, &mut rng);
    }
    // Delete everything in random order: all space comes back after commit.
    let mut ids: Vec<u32> = model.vols.keys().copied().collect();
    ids.sort();
    while !ids.is_empty() {
        let id = ids.swap_remove(rng.below(ids.len() as u64) as usize);
        m.delete_volume(id).unwrap();
        let v = model.vols.remove(&id).unwrap();
        model.settle(v.map.into_values());
        compare(&m, &model, &mut rng);
    }
    m.commit();
    assert_eq!(m.allocator().free(), pool_clusters);
    checked(&m);
    (out_of_space, max_chain)
}

#[test]
fn random_workloads_match_model() {
    let mut total_oos = 0;
    let mut deepest = 0;
    for seed in 0..12 {
        // Small pools run out of space often; larger ones build long chains.
        let clusters = if seed % 2 == 0 { 48 } else { 400 };
        let (oos, chain) = workload(seed, 3000, clusters);
        total_oos += oos;
        deepest = deepest.max(chain);
    }
    assert!(total_oos > 0, "workloads never ran out of space");
    assert!(deepest >= 5, "clone/snapshot chains only {deepest} deep");
}

// ---- Timing (run: cargo test -p vblock --release meta:: -- --ignored --nocapture) ----

#[test]
#[ignore = "timing; run in release mode"]
fn snapshot_copy_timing_1m_clusters() {
    const N: u32 = 1 << 20;
    let mut map = ClusterMap::new();
    for v in 0..N {
        map.set(u64::from(v), nz(1 + v)).unwrap();
    }
    let t = Instant::now();
    let copy = map.clone();
    let clone_time = t.elapsed();
    assert_eq!(copy.len(), u64::from(N));
    let bytes = map.heap_bytes();
    println!(
        "ClusterMap: {N} mapped: clone {clone_time:?}, heap {bytes} bytes = {:.3} B/mapped cluster",
        bytes as f64 / f64::from(N)
    );

    let mut m = Metadata::new(65536, 1..1 + N + 16).unwrap();
    m.create_volume(1, "v", u64::from(N) * 65536, 4096).unwrap();
    for v in 0..N {
        let pc = m.allocate().unwrap();
        m.map(1, u64::from(v), pc).unwrap();
    }
    let t = Instant::now();
    m.snapshot(1, 2, "s").unwrap();
    let snap_time = t.elapsed();
    let t = Instant::now();
    m.check().unwrap();
    let check_time = t.elapsed();
    let t = Instant::now();
    m.delete_volume(2).unwrap();
    let delete_time = t.elapsed();
    println!(
        "Metadata: snapshot of {N} mapped clusters {snap_time:?} (map copy + refcounts), \
         delete of it {delete_time:?}, check {check_time:?}; heap {} bytes = {:.3} B/mapped cluster \
         (one volume, pool of {} clusters)",
        m.heap_bytes(),
        m.heap_bytes() as f64 / f64::from(N),
        m.allocator().total()
    );
}
