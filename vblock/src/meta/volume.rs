//! A volume as the metadata holds it, and what lookups report about one.

use super::map::ClusterMap;

/// Longest volume name, in bytes: what a journal record can carry.
pub const NAME_MAX: usize = crate::format::journal::MAX_NAME_LEN;

/// What a volume is; snapshots are read-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeKind {
    /// Created empty by `CreateVolume`.
    Volume,
    /// Read-only copy of a volume's map (`Snapshot`).
    Snapshot,
    /// Writable copy of a volume's map (`Clone`).
    Clone,
}

/// One volume, snapshot or clone.
#[derive(Clone, Debug)]
pub struct Volume {
    pub(super) id: u32,
    pub(super) name: String,
    pub(super) size: u64,
    pub(super) block_size: u32,
    pub(super) kind: VolumeKind,
    pub(super) read_only: bool,
    pub(super) map: ClusterMap,
}

impl Volume {
    /// Volume id (as in the journal records).
    pub fn id(&self) -> u32 {
        self.id
    }
    /// Unique name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Virtual size in bytes (a multiple of the block size).
    pub fn size(&self) -> u64 {
        self.size
    }
    /// 512 or 4096.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }
    /// Volume, snapshot or clone.
    pub fn kind(&self) -> VolumeKind {
        self.kind
    }
    /// True for snapshots: no map change, no resize (rule 4).
    pub fn read_only(&self) -> bool {
        self.read_only
    }
    /// The cluster map.
    pub fn map(&self) -> &ClusterMap {
        &self.map
    }
}

/// Where a virtual cluster lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Pool cluster.
    pub pcluster: u32,
    /// A write must copy, not overwrite in place: reference count > 1
    /// (rule 4), or another reference was dropped by a record not durable
    /// yet ([`Allocator::dropped_since_commit`](super::Allocator::dropped_since_commit), rule 2).
    pub shared: bool,
}

/// Space used by one volume, in clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeUsage {
    /// Mapped clusters.
    pub allocated: u64,
    /// Mapped clusters no other map references (freed if the volume is deleted).
    pub exclusive: u64,
}
