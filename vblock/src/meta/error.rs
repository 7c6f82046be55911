//! Why the metadata or its allocator refused an operation, and what `check`
//! reports.

use std::fmt;

use super::volume::NAME_MAX;

/// Why an allocator operation was refused (nothing changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// Not a data cluster of this pool.
    OutOfRange(u32),
    /// `take` of a cluster that is used or releasing.
    NotFree(u32),
    /// `add_ref`/`release` of a cluster with count 0.
    NotReferenced(u32),
    /// `unallocate` of a cluster whose count is not exactly 1.
    Shared(u32),
    /// `add_ref` at `u32::MAX`.
    Overflow(u32),
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange(c) => write!(f, "cluster {c} is outside the data area"),
            Self::NotFree(c) => write!(f, "cluster {c} is not free"),
            Self::NotReferenced(c) => write!(f, "cluster {c} has no reference"),
            Self::Shared(c) => write!(f, "cluster {c} has more than one reference"),
            Self::Overflow(c) => write!(f, "reference count of cluster {c} would overflow"),
        }
    }
}

impl std::error::Error for AllocError {}

/// Why an operation was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaError {
    /// Cluster size not a power of two in 4 KiB..=2 MiB.
    InvalidClusterSize(u32),
    /// No volume with this id.
    UnknownVolume(u32),
    /// A volume with this id exists.
    DuplicateId(u32),
    /// A volume with this name exists.
    DuplicateName(String),
    /// Empty or longer than [`NAME_MAX`] bytes.
    InvalidName,
    /// Block size not 512 or 4096.
    InvalidBlockSize(u32),
    /// Size zero, not a multiple of the block size, or more than
    /// [`ClusterMap::MAX_CLUSTERS`](super::ClusterMap::MAX_CLUSTERS) clusters.
    InvalidSize(u64),
    /// The volume is a snapshot (rule 4).
    ReadOnly(u32),
    /// Virtual cluster at or beyond the volume's end.
    BeyondEnd {
        volume: u32,
        vcluster: u64,
        clusters: u64,
    },
    /// No free cluster (releasing ones become free at the next commit).
    OutOfSpace,
    /// Pool cluster outside the data area (includes 0).
    ClusterOutOfRange(u32),
    /// `map` of a cluster that is neither held by the caller nor free.
    ClusterNotFree(u32),
    /// `abandon`/`release_held` of a cluster not held.
    NotHeld(u32),
    /// A reference count would pass `u32::MAX`.
    RefcountOverflow(u32),
    /// A checkpoint maps the same virtual cluster twice.
    DuplicateVcluster { volume: u32, vcluster: u64 },
    /// A revert's source is not a snapshot.
    NotASnapshot(u32),
    /// A revert's snapshot has another block size than the volume.
    BlockSizeDiffers { volume: u32, snapshot: u32 },
    /// Allocator refused (only if the metadata was already inconsistent).
    Alloc(AllocError),
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidClusterSize(s) => {
                write!(
                    f,
                    "cluster size {s} is not a power of two from 4 KiB to 2 MiB"
                )
            }
            Self::UnknownVolume(id) => write!(f, "no volume with id {id}"),
            Self::DuplicateId(id) => write!(f, "a volume with id {id} already exists"),
            Self::DuplicateName(n) => write!(f, "a volume named {n:?} already exists"),
            Self::InvalidName => write!(f, "volume names are 1 to {NAME_MAX} bytes"),
            Self::InvalidBlockSize(b) => write!(f, "block size {b} is not 512 or 4096"),
            Self::InvalidSize(s) => write!(
                f,
                "size {s} is zero, not a multiple of the block size, or too large"
            ),
            Self::ReadOnly(id) => write!(f, "volume {id} is a read-only snapshot"),
            Self::BeyondEnd {
                volume,
                vcluster,
                clusters,
            } => write!(
                f,
                "cluster {vcluster} is beyond the end of volume {volume} ({clusters} clusters)"
            ),
            Self::OutOfSpace => write!(f, "out of space: no free cluster in the pool"),
            Self::ClusterOutOfRange(c) => write!(f, "pool cluster {c} is outside the data area"),
            Self::ClusterNotFree(c) => write!(f, "pool cluster {c} is neither held nor free"),
            Self::NotHeld(c) => write!(f, "pool cluster {c} is not held"),
            Self::RefcountOverflow(c) => write!(f, "reference count of cluster {c} would overflow"),
            Self::DuplicateVcluster { volume, vcluster } => {
                write!(f, "volume {volume} maps cluster {vcluster} twice")
            }
            Self::NotASnapshot(id) => write!(f, "volume {id} is not a snapshot"),
            Self::BlockSizeDiffers { volume, snapshot } => write!(
                f,
                "snapshot {snapshot} has another block size than volume {volume}"
            ),
            Self::Alloc(e) => write!(f, "allocator: {e}"),
        }
    }
}

impl std::error::Error for MetaError {}

impl From<AllocError> for MetaError {
    fn from(e: AllocError) -> Self {
        Self::Alloc(e)
    }
}

/// One broken invariant, as [`Metadata::check`](super::Metadata::check) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Count differs from the map references (+1 if held).
    RefcountMismatch {
        cluster: u32,
        count: u32,
        references: u32,
    },
    /// Free, yet a map references it (or it is held).
    FreeButReferenced { cluster: u32, references: u32 },
    /// Free bit set with a non-zero count.
    FreeWithCount { cluster: u32, count: u32 },
    /// Releasing with a non-zero count.
    ReleasingWithCount { cluster: u32, count: u32 },
    /// Both releasing and free.
    ReleasingAlsoFree { cluster: u32 },
    /// Listed twice in the releasing set.
    ReleasingTwice { cluster: u32 },
    /// Releasing entry outside the data area.
    ReleasingOutsideData { cluster: u32 },
    /// Count 0 but neither free nor releasing: leaked.
    LostCluster { cluster: u32 },
    /// Free counter differs from the free bitmap.
    FreeCountMismatch { counted: u32, recorded: u32 },
    /// A free bit beyond the data area.
    FreeBitOutsideData,
    /// A map entry points outside the data area.
    MapOutsideData {
        volume: u32,
        vcluster: u64,
        pcluster: u32,
    },
    /// A map entry at or beyond the volume's end.
    MappedBeyondEnd {
        volume: u32,
        vcluster: u64,
        clusters: u64,
    },
    /// Two volumes share a name.
    DuplicateName { name: String },
    /// The name index disagrees with the volume table.
    NameIndexMismatch { name: String },
    /// A snapshot that is writable.
    SnapshotWritable { volume: u32 },
    /// A held cluster outside the data area.
    HeldOutsideData { cluster: u32 },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RefcountMismatch {
                cluster,
                count,
                references,
            } => write!(
                f,
                "cluster {cluster}: reference count {count}, but {references} references"
            ),
            Self::FreeButReferenced {
                cluster,
                references,
            } => {
                write!(
                    f,
                    "cluster {cluster} is free but has {references} references"
                )
            }
            Self::FreeWithCount { cluster, count } => {
                write!(f, "cluster {cluster} is free with reference count {count}")
            }
            Self::ReleasingWithCount { cluster, count } => {
                write!(
                    f,
                    "cluster {cluster} is releasing with reference count {count}"
                )
            }
            Self::ReleasingAlsoFree { cluster } => {
                write!(f, "cluster {cluster} is both releasing and free")
            }
            Self::ReleasingTwice { cluster } => write!(f, "cluster {cluster} is releasing twice"),
            Self::ReleasingOutsideData { cluster } => {
                write!(f, "releasing cluster {cluster} is outside the data area")
            }
            Self::LostCluster { cluster } => {
                write!(
                    f,
                    "cluster {cluster} has count 0 but is neither free nor releasing"
                )
            }
            Self::FreeCountMismatch { counted, recorded } => {
                write!(
                    f,
                    "{counted} free clusters, but the counter says {recorded}"
                )
            }
            Self::FreeBitOutsideData => write!(f, "free bit set beyond the data area"),
            Self::MapOutsideData {
                volume,
                vcluster,
                pcluster,
            } => write!(
                f,
                "volume {volume} cluster {vcluster} maps to {pcluster}, outside the data area"
            ),
            Self::MappedBeyondEnd {
                volume,
                vcluster,
                clusters,
            } => write!(
                f,
                "volume {volume} maps cluster {vcluster}, beyond its end ({clusters} clusters)"
            ),
            Self::DuplicateName { name } => write!(f, "two volumes are named {name:?}"),
            Self::NameIndexMismatch { name } => {
                write!(f, "name index disagrees with the volume table for {name:?}")
            }
            Self::SnapshotWritable { volume } => write!(f, "snapshot {volume} is writable"),
            Self::HeldOutsideData { cluster } => {
                write!(f, "held cluster {cluster} is outside the data area")
            }
        }
    }
}
