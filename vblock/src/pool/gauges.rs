//! Space figures the pool keeps up to date as it changes, for readers that must
//! not wait for the pool lock (a metrics scrape): maintained per change, never
//! a walk of every map per read.
//!
//! The pool updates them under its own lock, record by record (a `Map` moves a
//! volume's counts by one); a reader takes only the gauges' small lock, held
//! for a copy. Exclusive clusters are tracked through reference counts: a
//! cluster is exclusive to its one holder while its count is 1, and since a
//! shared cluster sits at the same virtual cluster in every volume that
//! shares it (snapshots and clones copy maps), its holders are found by
//! looking that virtual cluster up in each volume.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::full::SpaceWatch;
use super::info::{volume_info, PoolSpace, VolumeInfo};
use crate::meta::Metadata;

/// The published figures (see the module docs).
#[derive(Debug)]
pub struct PoolGauges {
    inner: Mutex<Published>,
    /// The full policy, warning threshold and requests waiting for space.
    watch: SpaceWatch,
}

#[derive(Clone, Debug)]
struct Published {
    space: PoolSpace,
    /// By id; `exclusive` and `allocated` in bytes, as [`VolumeInfo`].
    volumes: BTreeMap<u32, VolumeInfo>,
}

impl PoolGauges {
    /// Gauges of `meta` as it is now (one walk, when the pool opens).
    pub(super) fn new(space: PoolSpace, meta: &Metadata) -> PoolGauges {
        let cs = u64::from(meta.cluster_size());
        let volumes = meta
            .volumes()
            .filter_map(|v| {
                let u = meta.usage(v.id()).ok()?;
                Some((v.id(), volume_info(meta, v.id(), u.exclusive * cs)?))
            })
            .collect();
        PoolGauges {
            inner: Mutex::new(Published { space, volumes }),
            watch: SpaceWatch::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Published> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pool-wide space, as of the last change.
    pub fn space(&self) -> PoolSpace {
        self.lock().space
    }

    /// Every volume by ascending id, as of the last change.
    pub fn volumes(&self) -> Vec<VolumeInfo> {
        self.lock().volumes.values().cloned().collect()
    }

    /// The pool's full policy, warning threshold and waiting requests.
    pub fn watch(&self) -> &SpaceWatch {
        &self.watch
    }

    pub(super) fn set_space(&self, space: PoolSpace) {
        self.lock().space = space;
        self.watch.observe(&space);
    }

    /// Volume `id`'s entry from `meta` (name, size, allocated), keeping its
    /// exclusive count; removed if the volume is gone.
    pub(super) fn refresh(&self, meta: &Metadata, id: u32) {
        let mut g = self.lock();
        let exclusive = g.volumes.get(&id).map_or(0, |v| v.exclusive);
        match volume_info(meta, id, exclusive) {
            Some(info) => g.volumes.insert(id, info),
            None => g.volumes.remove(&id),
        };
    }

    /// Volume `id`'s allocated bytes (after a `Map` or `Unmap`).
    pub(super) fn set_allocated(&self, id: u32, bytes: u64) {
        if let Some(v) = self.lock().volumes.get_mut(&id) {
            v.allocated = bytes;
        }
    }

    /// Moves volume `id`'s exclusive count by `clusters` (of `cluster_size`).
    pub(super) fn add_exclusive(&self, id: u32, clusters: i64, cluster_size: u32) {
        let mut g = self.lock();
        if let Some(v) = g.volumes.get_mut(&id) {
            let delta = clusters.unsigned_abs() * u64::from(cluster_size);
            v.exclusive = if clusters < 0 {
                v.exclusive.saturating_sub(delta)
            } else {
                v.exclusive + delta
            };
        }
    }
}

/// The volume `cluster` is exclusive to, if any: mapped at `vcluster` by one
/// volume and referenced once. `hint` is looked at first (the record's own
/// volume: the common case costs one lookup, not one per volume).
pub(super) fn exclusive_owner(
    meta: &Metadata,
    cluster: u32,
    vcluster: u64,
    hint: Option<u32>,
) -> Option<u32> {
    if meta.allocator().refcounts().get(cluster) != Some(1) {
        return None;
    }
    let maps = |v: &crate::meta::Volume| v.map().get(vcluster).map(|p| p.get()) == Some(cluster);
    if let Some(v) = hint.and_then(|id| meta.volume(id)).filter(|v| maps(v)) {
        return Some(v.id());
    }
    meta.volumes().find(|v| maps(v)).map(|v| v.id())
}
