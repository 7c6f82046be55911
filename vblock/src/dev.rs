//! Block devices: the seam between the pool and the storage under it.
//!
//! The pool's metadata code (superblocks, journal, checkpoints) talks to a
//! [`BlockDev`]: synchronous, positional, sector-granular I/O plus a durability
//! barrier. Two implementations:
//!
//! - [`FileDev`]: a regular file or block device opened `O_DIRECT`, so the
//!   page cache never hides what is (not) on the device.
//! - `SimDisk` (feature `sim`, and this crate's unit tests): an in-memory disk
//!   with a *volatile write cache*, for crash tests: `SimDisk::crash` turns
//!   unflushed writes into any outcome a real disk may produce (dropped, kept,
//!   torn at sector granularity, reordered), deterministically from a seed. It
//!   also injects I/O errors. The seeded PRNG `SplitMix64` comes with it.
//!
//! [`AlignedBuf`] is the 4096-aligned heap buffer `O_DIRECT` needs; the io_uring
//! engine and the pool reuse it.

use std::io;
use std::sync::Arc;

mod aligned;
mod file;
// Test, fuzz and bench code only: the daemon is built without it.
#[cfg(any(test, feature = "sim"))]
mod sim;

pub use aligned::AlignedBuf;
pub use file::FileDev;
#[cfg(any(test, feature = "sim"))]
pub use sim::{SimDisk, SimStats, SplitMix64};

/// Logical sector size of every device: 512 bytes. All offsets/lengths the pool uses are multiples of it.
pub const SECTOR: u64 = 512;

/// Alignment O_DIRECT needs for buffers, offsets and lengths here: 4096.
///
/// 4096 rather than the device's logical block size so that one rule fits
/// every device, including 4Kn disks and filesystems with 4 KiB blocks.
pub const DIRECT_ALIGN: usize = 4096;

/// The block device seam the pool's metadata code and tests use (synchronous, positional).
///
/// Every offset and length must be a multiple of [`SECTOR`] (else
/// `InvalidInput`), and `offset + length` must not exceed [`len`](Self::len)
/// (else `UnexpectedEof`, for writes too: a device never grows). A zero-length
/// request at or before the end succeeds and does nothing. No argument makes an
/// implementation panic.
pub trait BlockDev: Send + Sync {
    /// Size in bytes (a multiple of [`SECTOR`]).
    fn len(&self) -> u64;

    /// True when the device has no sectors at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills all of `buf` from `offset`: exact length or an error (EIO, or
    /// `UnexpectedEof` past the end). Returns the newest data, whether or not
    /// it is durable yet.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes all of `buf` at `offset`. Completion means the device has the
    /// data, not that it survives power loss: it may sit in a volatile cache
    /// until [`flush`](Self::flush). Sectors are atomic; a multi-sector write
    /// interrupted by a crash may be torn into any subset of its sectors.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Durability barrier: every write that completed before the call is
    /// durable when it returns `Ok`. After an error nothing is promised about
    /// those writes (they may or may not be durable).
    fn flush(&self) -> io::Result<()>;
}

/// References and smart pointers to a device are devices: the pool can own an
/// `Arc<SimDisk>` while a test keeps a handle to crash it.
macro_rules! forward_block_dev {
    ($($pointer:ty),*) => {$(
        impl<T: BlockDev + ?Sized> BlockDev for $pointer {
            fn len(&self) -> u64 {
                (**self).len()
            }
            fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
                (**self).read_at(buf, offset)
            }
            fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
                (**self).write_at(buf, offset)
            }
            fn flush(&self) -> io::Result<()> {
                (**self).flush()
            }
        }
    )*};
}

forward_block_dev!(&T, Box<T>, Arc<T>);

/// Checks a request against the [`BlockDev`] rules and returns its end offset.
///
/// Shared by the implementations so they reject exactly the same requests with
/// the same errors.
pub(crate) fn check_request(dev_len: u64, offset: u64, len: usize, what: &str) -> io::Result<u64> {
    let len = len as u64;
    if !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{what} of {len} bytes at offset {offset}: offset and length must be multiples of {SECTOR}"
            ),
        ));
    }
    match offset.checked_add(len) {
        Some(end) if end <= dev_len => Ok(end),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{what} of {len} bytes at offset {offset} goes past the end of the device ({dev_len} bytes)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_request_rules() {
        assert_eq!(check_request(4096, 0, 4096, "read").unwrap(), 4096);
        assert_eq!(check_request(4096, 4096, 0, "read").unwrap(), 4096);
        assert_eq!(check_request(4096, 512, 512, "read").unwrap(), 1024);
        let kind = |r: io::Result<u64>| r.unwrap_err().kind();
        assert_eq!(
            kind(check_request(4096, 1, 512, "read")),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(check_request(4096, 0, 100, "read")),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(check_request(4096, 4096, 512, "read")),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(
            kind(check_request(4096, 4608, 0, "read")),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(
            kind(check_request(u64::MAX, u64::MAX - 511, 1024, "write")),
            io::ErrorKind::UnexpectedEof
        );
    }
}
