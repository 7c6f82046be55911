//! What the pool reports about itself: space figures and volume listings.

use crate::meta::{Metadata, VolumeKind};

/// Pool-wide space figures, in bytes unless named otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSpace {
    pub cluster_size: u32,
    /// Data clusters (cluster 0 is reserved).
    pub clusters: u64,
    pub used_clusters: u64,
    pub free_clusters: u64,
    /// Freed by records not yet durable; free after the next flush.
    pub releasing_clusters: u64,
    /// Held by the current checkpoint.
    pub metadata_clusters: u64,
    /// Sum of the volumes' virtual sizes (may exceed the capacity: over-commit).
    pub provisioned: u64,
    /// Capacity: clusters * cluster size.
    pub capacity: u64,
}

/// One volume as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub id: u32,
    pub name: String,
    pub kind: VolumeKind,
    pub size: u64,
    pub block_size: u32,
    pub read_only: bool,
    /// Bytes of mapped clusters.
    pub allocated: u64,
    /// Bytes of mapped clusters no other volume shares.
    pub exclusive: u64,
}

/// Volume `id` of `meta` with `exclusive` bytes as given: the caller knows
/// them (a walk of the maps, or the gauges' running count); the rest is O(1)
/// apart from the name.
pub(super) fn volume_info(meta: &Metadata, id: u32, exclusive: u64) -> Option<VolumeInfo> {
    let v = meta.volume(id)?;
    Some(VolumeInfo {
        id,
        name: v.name().to_owned(),
        kind: v.kind(),
        size: v.size(),
        block_size: v.block_size(),
        read_only: v.read_only(),
        allocated: v.map().len() * u64::from(meta.cluster_size()),
        exclusive,
    })
}

/// Space figures of `meta` (`metadata_clusters`: the checkpoint's).
pub(super) fn space_of(meta: &Metadata, metadata_clusters: u64) -> PoolSpace {
    let a = meta.allocator();
    let cs = meta.cluster_size();
    PoolSpace {
        cluster_size: cs,
        clusters: u64::from(a.total()),
        used_clusters: u64::from(a.used()),
        free_clusters: u64::from(a.free()),
        releasing_clusters: u64::from(a.releasing()),
        metadata_clusters,
        provisioned: meta.volumes().map(|v| v.size()).sum(),
        capacity: u64::from(a.total()) * u64::from(cs),
    }
}
