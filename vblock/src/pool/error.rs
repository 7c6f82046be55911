//! Why a pool operation failed.

use std::fmt;
use std::io;

use crate::format::FormatError;
use crate::meta::MetaError;

/// Why a pool operation failed.
#[derive(Debug)]
pub enum PoolError {
    /// The device failed.
    Io { what: String, source: io::Error },
    /// An on-disk structure does not follow FORMAT.md.
    Format { what: String, source: FormatError },
    /// Structures parse but contradict each other (e.g. a journal record
    /// that names an unknown volume).
    Corrupt { what: String, reason: String },
    /// The metadata refused the operation; nothing changed.
    Refused(MetaError),
    /// No volume with this name.
    NoSuchVolume(String),
    /// Not enough free clusters for this request; nothing changed.
    OutOfSpace { needed: u64, free: u64 },
    /// Offset or length not a multiple of 512.
    Unaligned { offset: u64, len: u64 },
    /// The range ends beyond the volume.
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// A data request larger than the engine takes in one go.
    TooLarge { len: u64, max: u64 },
    /// Writes to a snapshot.
    ReadOnly(String),
    /// Shrinking loses data: needs `force`.
    ShrinkNeedsForce {
        name: String,
        size: u64,
        new_size: u64,
    },
    /// The volume has writes in flight that a control operation must not
    /// race (a revert): stop its I/O first.
    Busy(String),
    /// Opened read-only (inspection).
    NotWritable,
    /// An earlier metadata write failed; the pool takes no more changes.
    Failed,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { what, source } => write!(f, "I/O error {what}: {source}"),
            Self::Format { what, source } => write!(f, "{what}: {source}"),
            Self::Corrupt { what, reason } => write!(f, "corrupt {what}: {reason}"),
            Self::Refused(e) => write!(f, "{e}"),
            Self::NoSuchVolume(n) => write!(f, "no volume named {n:?}"),
            Self::OutOfSpace { needed, free } => write!(
                f,
                "out of space: the request needs {needed} free clusters, the pool has {free} (net of the metadata reserve)"
            ),
            Self::Unaligned { offset, len } => write!(
                f,
                "request of {len} bytes at {offset}: offset and length must be multiples of 512"
            ),
            Self::OutOfRange { offset, len, size } => write!(
                f,
                "request of {len} bytes at {offset} ends beyond the volume ({size} bytes)"
            ),
            Self::TooLarge { len, max } => write!(
                f,
                "request of {len} bytes is larger than the {max} bytes one request may move"
            ),
            Self::ReadOnly(n) => write!(f, "volume {n:?} is a read-only snapshot"),
            Self::ShrinkNeedsForce {
                name,
                size,
                new_size,
            } => write!(
                f,
                "shrinking {name:?} from {size} to {new_size} bytes discards data; ask with force (--force)"
            ),
            Self::Busy(n) => write!(f, "volume {n:?} has writes in flight"),
            Self::NotWritable => write!(f, "the pool is open read-only"),
            Self::Failed => write!(
                f,
                "an earlier metadata write failed; reopen the pool to recover"
            ),
        }
    }
}

impl std::error::Error for PoolError {}

impl From<MetaError> for PoolError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::OutOfSpace => Self::OutOfSpace { needed: 1, free: 0 },
            e => Self::Refused(e),
        }
    }
}

/// Maps a device error to [`PoolError::Io`] saying what was being done.
pub(super) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> PoolError {
    let what = what.into();
    move |source| PoolError::Io { what, source }
}
