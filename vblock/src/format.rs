//! On-disk codecs of the pool format (`vblock/FORMAT.md`): the superblock
//! (two copies) and the metadata journal.
//!
//! Pure byte-level code: no I/O, no allocation of device space. Every decoder
//! takes arbitrary bytes and returns a [`FormatError`] for anything that does
//! not follow FORMAT.md; no input makes a decoder panic.
//!
//! - [`superblock`]: [`Superblock`], [`pick`] between the two copies,
//!   [`slot_for`], and the device [`Layout`].
//! - [`journal`]: journal [`Record`]s, [`JournalBlock`] (one 4 KiB block),
//!   [`JournalWriter`] (packs records into blocks) and [`replay`].

use std::fmt;

pub mod checkpoint;
pub mod journal;
pub mod superblock;

pub use journal::{replay, JournalBlock, JournalWriter, Record, ReplayEnd, ReplayStop};
pub use superblock::{pick, slot_for, Layout, Superblock};

/// Size of a superblock copy and of a journal block: 4 KiB.
pub const BLOCK_SIZE: usize = 4096;

/// An on-disk structure that does not follow FORMAT.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// The magic number is not the one FORMAT.md defines for this structure
    /// (not a pool, a wiped copy, or a never-written journal block).
    BadMagic,
    /// Written by a newer format version than this code supports.
    FutureVersion {
        /// Version stored in the structure.
        found: u32,
        /// Highest version this code reads.
        supported: u32,
    },
    /// The stored crc32c does not match the contents (torn write or corruption).
    BadChecksum {
        /// Checksum stored in the structure.
        stored: u32,
        /// Checksum computed over the bytes read.
        computed: u32,
    },
    /// Fewer bytes than the structure needs.
    Truncated {
        /// Number of bytes given.
        len: usize,
    },
    /// A field holds a value FORMAT.md does not allow.
    Invalid {
        /// Name of the offending field.
        field: &'static str,
        /// Which rule it breaks.
        reason: String,
    },
}

impl FormatError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        FormatError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::BadMagic => write!(f, "bad magic number: not a vblock structure"),
            FormatError::FutureVersion { found, supported } => write!(
                f,
                "format version {found} is newer than the supported version {supported}"
            ),
            FormatError::BadChecksum { stored, computed } => write!(
                f,
                "bad checksum: stored crc32c {stored:#010x}, computed {computed:#010x}"
            ),
            FormatError::Truncated { len } => {
                write!(f, "truncated: {len} bytes, need {BLOCK_SIZE}")
            }
            FormatError::Invalid { field, reason } => write!(f, "invalid {field}: {reason}"),
        }
    }
}

impl std::error::Error for FormatError {}

/// Little-endian reads from a slice already checked to be long enough
/// (`get` keeps them panic-free even if a caller got the offset wrong).
pub(crate) fn le_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

pub(crate) fn le_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

pub(crate) fn le_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Deterministic PRNG for the property tests.
#[cfg(test)]
pub(crate) type TestRng = crate::dev::SplitMix64;
