//! In-memory pool metadata: volumes and their cluster maps, reference counts,
//! the allocator. Pure logic, no I/O.
//!
//! The operations of [`Metadata`] mirror the journal records of `FORMAT.md`
//! (`CreateVolume`, `DeleteVolume`, `Resize`, `Rename`, `Snapshot`, `Clone`,
//! `Revert`, `Map`, `Unmap`): the live path calls them when it appends a record, replay
//! calls them for each record read back. Each one validates everything first
//! and then mutates, so an `Err` leaves the metadata unchanged (a refused
//! request changes nothing, issue item 5).
//!
//! Durability rules served here (numbers from `FORMAT.md`):
//! - rule 2 (never read data not written): [`Metadata::allocate`] hands out a
//!   cluster *held* by the caller, who writes it whole and only then calls
//!   [`Metadata::map`]; maps only ever point at written clusters.
//! - rule 3 (reuse only after the release is durable): the
//!   [releasing set](Allocator), emptied by [`Metadata::commit`].
//! - rule 4 (snapshots never change): snapshots are read-only, and
//!   [`Metadata::lookup`] reports `shared` so a write to a shared cluster is
//!   copied instead of done in place.
//!
//! Files: `volume` (a volume and what lookups report), `map` (one volume's
//! cluster map), `alloc` (reference counts, free and releasing sets),
//! `error` (refusals and check violations), `check` (the invariants); this
//! file holds [`Metadata`] and its operations.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::ops::Range;

mod alloc;
mod check;
mod error;
mod map;
#[cfg(test)]
mod tests;
mod volume;

pub use alloc::{Allocator, ClusterState, Refcounts};
pub use error::{AllocError, MetaError, Violation};
pub use map::{ClusterMap, Iter, VclusterTooLarge, PAGE_ENTRIES};
pub use volume::{Mapping, Volume, VolumeKind, VolumeUsage, NAME_MAX};

/// The pool's metadata in memory: volume table, maps, reference counts,
/// allocator, and the clusters *held* outside any map (allocated for a data
/// write whose `Map` is not appended yet, or used by a checkpoint; each holds
/// one reference).
#[derive(Clone, Debug)]
pub struct Metadata {
    cluster_size: u32,
    volumes: BTreeMap<u32, Volume>,
    names: HashMap<String, u32>,
    alloc: Allocator,
    held: BTreeSet<u32>,
}

impl Metadata {
    /// Empty metadata for a pool whose data clusters are `data` (absolute
    /// cluster indexes; 0 is never a data cluster and is dropped from `data`).
    pub fn new(cluster_size: u32, data: Range<u32>) -> Result<Self, MetaError> {
        if !cluster_size.is_power_of_two() || !(4096..=2 << 20).contains(&cluster_size) {
            return Err(MetaError::InvalidClusterSize(cluster_size));
        }
        Ok(Self {
            cluster_size,
            volumes: BTreeMap::new(),
            names: HashMap::new(),
            alloc: Allocator::new(data),
            held: BTreeSet::new(),
        })
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u32 {
        self.cluster_size
    }

    /// Reference counts, free/used/releasing totals.
    pub fn allocator(&self) -> &Allocator {
        &self.alloc
    }

    /// Clusters held outside any map.
    pub fn held(&self) -> impl Iterator<Item = u32> + '_ {
        self.held.iter().copied()
    }

    /// The volume with this id.
    pub fn volume(&self, id: u32) -> Option<&Volume> {
        self.volumes.get(&id)
    }

    /// The volume with this name.
    pub fn volume_by_name(&self, name: &str) -> Option<&Volume> {
        self.names.get(name).and_then(|id| self.volumes.get(id))
    }

    /// All volumes, by ascending id.
    pub fn volumes(&self) -> impl Iterator<Item = &Volume> + '_ {
        self.volumes.values()
    }

    /// Clusters a volume of `size` bytes spans (the last one may be partial).
    pub fn clusters_for(&self, size: u64) -> u64 {
        size.div_ceil(u64::from(self.cluster_size))
    }

    /// `CreateVolume`: an empty volume (reads as zeros).
    pub fn create_volume(
        &mut self,
        id: u32,
        name: &str,
        size: u64,
        block_size: u32,
    ) -> Result<(), MetaError> {
        if block_size != 512 && block_size != 4096 {
            return Err(MetaError::InvalidBlockSize(block_size));
        }
        self.check_size(size, block_size)?;
        self.check_new(id, name)?;
        self.insert(Volume {
            id,
            name: name.to_owned(),
            size,
            block_size,
            kind: VolumeKind::Volume,
            read_only: false,
            map: ClusterMap::new(),
        });
        Ok(())
    }

    /// `DeleteVolume`: drops the volume and one reference to each of its
    /// clusters; those reaching 0 become releasing (rule 3). Copies nothing,
    /// also when other volumes share its clusters.
    pub fn delete_volume(&mut self, id: u32) -> Result<(), MetaError> {
        let vol = self
            .volumes
            .remove(&id)
            .ok_or(MetaError::UnknownVolume(id))?;
        self.names.remove(&vol.name);
        for (_, pc) in vol.map.iter() {
            self.alloc.release(pc.get())?;
        }
        Ok(())
    }

    /// `Resize`: grow, or shrink unmapping every cluster wholly or partly
    /// beyond the new end. Snapshots cannot be resized (rule 4).
    pub fn resize(&mut self, id: u32, size: u64) -> Result<(), MetaError> {
        let clusters = self.clusters_for(size);
        let vol = self.volumes.get(&id).ok_or(MetaError::UnknownVolume(id))?;
        if vol.read_only {
            return Err(MetaError::ReadOnly(id));
        }
        self.check_size(size, vol.block_size)?;
        let vol = self
            .volumes
            .get_mut(&id)
            .ok_or(MetaError::UnknownVolume(id))?;
        vol.size = size;
        for (_, pc) in vol.map.remove_from(clusters) {
            self.alloc.release(pc.get())?;
        }
        Ok(())
    }

    /// `Rename`. Renaming to the current name is a no-op.
    pub fn rename(&mut self, id: u32, name: &str) -> Result<(), MetaError> {
        let vol = self.volumes.get(&id).ok_or(MetaError::UnknownVolume(id))?;
        if vol.name == name {
            return Ok(());
        }
        check_name(name)?;
        if self.names.contains_key(name) {
            return Err(MetaError::DuplicateName(name.to_owned()));
        }
        let vol = self
            .volumes
            .get_mut(&id)
            .ok_or(MetaError::UnknownVolume(id))?;
        let old = std::mem::replace(&mut vol.name, name.to_owned());
        self.names.remove(&old);
        self.names.insert(name.to_owned(), id);
        Ok(())
    }

    /// `Snapshot`: a read-only copy of `source`'s map; every cluster gains a
    /// reference. Cost: one [`ClusterMap`] clone plus one count update per
    /// mapped cluster; no data is copied.
    pub fn snapshot(&mut self, source: u32, id: u32, name: &str) -> Result<(), MetaError> {
        self.copy_volume(source, id, name, VolumeKind::Snapshot)
    }

    /// `Clone`: a writable copy of `source`'s map (source may be a volume, a
    /// snapshot or a clone, to any depth: reads never walk a chain).
    pub fn clone_volume(&mut self, source: u32, id: u32, name: &str) -> Result<(), MetaError> {
        self.copy_volume(source, id, name, VolumeKind::Clone)
    }

    /// `Revert`: volume `id` takes `snapshot`'s map, as a clone of the
    /// snapshot would, keeping its id, name and kind: every cluster of the
    /// snapshot gains a reference, every cluster of the old map loses one (so
    /// those only this volume held become releasing, rule 3). The size
    /// becomes the snapshot's, or stays if larger (a guest never sees its
    /// disk shrink; past the snapshot's end reads zeros). No data is copied.
    pub fn revert(&mut self, id: u32, snapshot: u32) -> Result<(), MetaError> {
        let snap = self
            .volumes
            .get(&snapshot)
            .ok_or(MetaError::UnknownVolume(snapshot))?;
        let vol = self.volumes.get(&id).ok_or(MetaError::UnknownVolume(id))?;
        if vol.read_only {
            return Err(MetaError::ReadOnly(id));
        }
        if snap.kind != VolumeKind::Snapshot {
            return Err(MetaError::NotASnapshot(snapshot));
        }
        if snap.block_size != vol.block_size {
            return Err(MetaError::BlockSizeDiffers {
                volume: id,
                snapshot,
            });
        }
        self.check_refs(&snap.map)?;
        let map = snap.map.clone();
        let size = snap.size.max(vol.size);
        // References first: a cluster both maps hold never passes through 0.
        for (_, pc) in map.iter() {
            self.alloc.add_ref(pc.get())?;
        }
        let vol = self
            .volumes
            .get_mut(&id)
            .ok_or(MetaError::UnknownVolume(id))?;
        vol.size = size;
        let old = std::mem::replace(&mut vol.map, map);
        for (_, pc) in old.iter() {
            self.alloc.release(pc.get())?;
        }
        Ok(())
    }

    /// Loads one volume of a checkpoint: validated like `create_volume`, every
    /// entry inside the data area and below the volume's end, no virtual
    /// cluster twice; each entry takes one reference. On `Err` the metadata
    /// may be partly changed: only for loading, where any error aborts the open.
    pub fn restore_volume(
        &mut self,
        id: u32,
        name: &str,
        size: u64,
        block_size: u32,
        kind: VolumeKind,
        entries: impl IntoIterator<Item = (u64, u32)>,
    ) -> Result<(), MetaError> {
        if block_size != 512 && block_size != 4096 {
            return Err(MetaError::InvalidBlockSize(block_size));
        }
        self.check_size(size, block_size)?;
        self.check_new(id, name)?;
        let clusters = self.clusters_for(size);
        let mut map = ClusterMap::new();
        for (vcluster, pcluster) in entries {
            if vcluster >= clusters {
                return Err(MetaError::BeyondEnd {
                    volume: id,
                    vcluster,
                    clusters,
                });
            }
            let pc = NonZeroU32::new(pcluster)
                .filter(|_| self.alloc.refcounts().contains(pcluster))
                .ok_or(MetaError::ClusterOutOfRange(pcluster))?;
            let dup = map.set(vcluster, pc).map_err(|e| MetaError::BeyondEnd {
                volume: id,
                vcluster: e.0,
                clusters,
            })?;
            if dup.is_some() {
                return Err(MetaError::DuplicateVcluster {
                    volume: id,
                    vcluster,
                });
            }
            match self.alloc.state(pcluster) {
                Some(ClusterState::Free) => self.alloc.take(pcluster)?,
                _ => {
                    self.alloc.add_ref(pcluster)?;
                }
            }
        }
        self.insert(Volume {
            id,
            name: name.to_owned(),
            size,
            block_size,
            kind,
            read_only: kind == VolumeKind::Snapshot,
            map,
        });
        Ok(())
    }

    /// Mapped entries over all volumes (what a checkpoint must describe).
    pub fn mapped_entries(&self) -> u64 {
        self.volumes.values().map(|v| v.map.len()).sum()
    }

    /// Takes the lowest free cluster, held by the caller (count 1). The caller
    /// writes it whole, then [`map`](Self::map)s it (rule 2), or
    /// [`abandon`](Self::abandon)s it if the write failed.
    pub fn allocate(&mut self) -> Result<u32, MetaError> {
        let c = self.alloc.allocate().ok_or(MetaError::OutOfSpace)?;
        self.held.insert(c);
        Ok(c)
    }

    /// Holds one specific free cluster (loading a checkpoint's chain at open).
    pub fn hold(&mut self, cluster: u32) -> Result<(), MetaError> {
        match self.alloc.state(cluster) {
            None => Err(MetaError::ClusterOutOfRange(cluster)),
            Some(ClusterState::Free) => {
                self.alloc.take(cluster)?;
                self.held.insert(cluster);
                Ok(())
            }
            Some(_) => Err(MetaError::ClusterNotFree(cluster)),
        }
    }

    /// Gives back a held cluster no journal record names (a data write failed
    /// before its `Map`): free at once, see [`Allocator::unallocate`].
    pub fn abandon(&mut self, cluster: u32) -> Result<(), MetaError> {
        if !self.held.contains(&cluster) {
            return Err(MetaError::NotHeld(cluster));
        }
        self.alloc.unallocate(cluster)?;
        self.held.remove(&cluster);
        Ok(())
    }

    /// Drops a held cluster that durable state did name (an old checkpoint,
    /// once the new one is published): releasing until the next commit (rule 3).
    pub fn release_held(&mut self, cluster: u32) -> Result<(), MetaError> {
        if !self.held.contains(&cluster) {
            return Err(MetaError::NotHeld(cluster));
        }
        self.alloc.release(cluster)?;
        self.held.remove(&cluster);
        Ok(())
    }

    /// `Map`: `vcluster` of `volume` now lives in `pcluster`, which must be
    /// held (live path, after its data write completed) or free (replay: the
    /// allocation was not journaled). A previous mapping (copy-on-write,
    /// rewrite) loses a reference and may become releasing. Returns it.
    ///
    /// Replay must call [`commit`](Self::commit) at each journal block
    /// boundary it crosses, as the live path did before reusing a cluster.
    pub fn map(
        &mut self,
        volume: u32,
        vcluster: u64,
        pcluster: u32,
    ) -> Result<Option<u32>, MetaError> {
        self.writable(volume, vcluster)?;
        let held = self.held.contains(&pcluster);
        if !held {
            match self.alloc.state(pcluster) {
                None => return Err(MetaError::ClusterOutOfRange(pcluster)),
                Some(ClusterState::Free) => {}
                Some(_) => return Err(MetaError::ClusterNotFree(pcluster)),
            }
        }
        let pc = NonZeroU32::new(pcluster).ok_or(MetaError::ClusterOutOfRange(pcluster))?;
        let vol = self
            .volumes
            .get_mut(&volume)
            .ok_or(MetaError::UnknownVolume(volume))?;
        let old = vol
            .map
            .set(vcluster, pc)
            .map_err(|e| MetaError::BeyondEnd {
                volume,
                vcluster: e.0,
                clusters: ClusterMap::MAX_CLUSTERS,
            })?;
        if held {
            self.held.remove(&pcluster);
        } else {
            self.alloc.take(pcluster)?;
        }
        if let Some(old) = old {
            self.alloc.release(old.get())?;
        }
        Ok(old.map(NonZeroU32::get))
    }

    /// `Unmap` (discard, write-zeroes of a whole cluster): the cluster loses a
    /// reference and may become releasing (rule 3). Returns it, `None` if the
    /// virtual cluster was not mapped.
    pub fn unmap(&mut self, volume: u32, vcluster: u64) -> Result<Option<u32>, MetaError> {
        self.writable(volume, vcluster)?;
        let vol = self
            .volumes
            .get_mut(&volume)
            .ok_or(MetaError::UnknownVolume(volume))?;
        let Some(old) = vol.map.remove(vcluster) else {
            return Ok(None);
        };
        self.alloc.release(old.get())?;
        Ok(Some(old.get()))
    }

    /// Where `vcluster` of `volume` lives; `None` reads as zeros. Any volume,
    /// read-only or not; beyond the end is an error.
    pub fn lookup(&self, volume: u32, vcluster: u64) -> Result<Option<Mapping>, MetaError> {
        let vol = self
            .volumes
            .get(&volume)
            .ok_or(MetaError::UnknownVolume(volume))?;
        let clusters = self.clusters_for(vol.size);
        if vcluster >= clusters {
            return Err(MetaError::BeyondEnd {
                volume,
                vcluster,
                clusters,
            });
        }
        Ok(vol.map.get(vcluster).map(|pc| Mapping {
            pcluster: pc.get(),
            shared: self.alloc.refcounts().get(pc.get()).unwrap_or(0) > 1
                || self.alloc.dropped_since_commit(pc.get()),
        }))
    }

    /// The journal records appended so far are durable: releasing clusters
    /// become free (rule 3). Returns how many.
    pub fn commit(&mut self) -> usize {
        self.alloc.commit()
    }

    /// [`commit`](Self::commit), keeping the clusters `keep` names releasing
    /// ([`Allocator::commit_except`]).
    pub fn commit_except(&mut self, keep: impl Fn(u32) -> bool) -> usize {
        self.alloc.commit_except(keep)
    }

    /// Allocated and exclusive clusters of one volume.
    pub fn usage(&self, volume: u32) -> Result<VolumeUsage, MetaError> {
        let vol = self
            .volumes
            .get(&volume)
            .ok_or(MetaError::UnknownVolume(volume))?;
        let refs = self.alloc.refcounts();
        let exclusive = vol
            .map
            .iter()
            .filter(|(_, pc)| refs.get(pc.get()) == Some(1))
            .count();
        Ok(VolumeUsage {
            allocated: vol.map.len(),
            exclusive: exclusive as u64,
        })
    }

    /// Heap bytes of the maps and the allocator (not the volume table).
    pub fn heap_bytes(&self) -> usize {
        self.volumes
            .values()
            .map(|v| v.map.heap_bytes())
            .sum::<usize>()
            + self.alloc.heap_bytes()
    }

    fn copy_volume(
        &mut self,
        source: u32,
        id: u32,
        name: &str,
        kind: VolumeKind,
    ) -> Result<(), MetaError> {
        let src = self
            .volumes
            .get(&source)
            .ok_or(MetaError::UnknownVolume(source))?;
        self.check_new(id, name)?;
        self.check_refs(&src.map)?;
        let vol = Volume {
            id,
            name: name.to_owned(),
            size: src.size,
            block_size: src.block_size,
            kind,
            read_only: kind == VolumeKind::Snapshot,
            map: src.map.clone(),
        };
        for (_, pc) in vol.map.iter() {
            self.alloc.add_ref(pc.get())?;
        }
        self.insert(vol);
        Ok(())
    }

    /// Every cluster of `map` can take one more reference.
    fn check_refs(&self, map: &ClusterMap) -> Result<(), MetaError> {
        let refs = self.alloc.refcounts();
        // A map never names a cluster twice, so one pass bounds every increment.
        match map
            .iter()
            .find(|(_, pc)| refs.get(pc.get()) == Some(u32::MAX))
        {
            Some((_, pc)) => Err(MetaError::RefcountOverflow(pc.get())),
            None => Ok(()),
        }
    }

    fn insert(&mut self, vol: Volume) {
        self.names.insert(vol.name.clone(), vol.id);
        self.volumes.insert(vol.id, vol);
    }

    fn check_new(&self, id: u32, name: &str) -> Result<(), MetaError> {
        if self.volumes.contains_key(&id) {
            return Err(MetaError::DuplicateId(id));
        }
        check_name(name)?;
        if self.names.contains_key(name) {
            return Err(MetaError::DuplicateName(name.to_owned()));
        }
        Ok(())
    }

    fn check_size(&self, size: u64, block_size: u32) -> Result<(), MetaError> {
        if size == 0
            || !size.is_multiple_of(u64::from(block_size))
            || self.clusters_for(size) > ClusterMap::MAX_CLUSTERS
        {
            return Err(MetaError::InvalidSize(size));
        }
        Ok(())
    }

    /// The volume exists, is writable, and `vcluster` is inside it.
    fn writable(&self, volume: u32, vcluster: u64) -> Result<(), MetaError> {
        let vol = self
            .volumes
            .get(&volume)
            .ok_or(MetaError::UnknownVolume(volume))?;
        if vol.read_only {
            return Err(MetaError::ReadOnly(volume));
        }
        if vcluster >= self.clusters_for(vol.size) {
            let clusters = self.clusters_for(vol.size);
            return Err(MetaError::BeyondEnd {
                volume,
                vcluster,
                clusters,
            });
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), MetaError> {
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(MetaError::InvalidName);
    }
    Ok(())
}
