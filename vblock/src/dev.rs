//! Block devices: the seam between the pool and the storage under it.
//!
//! The pool's metadata code (superblocks, journal, checkpoints) talks to a
//! [`BlockDev`]: synchronous, positional, sector-granular I/O plus a durability
//! barrier. Two implementations:
//!
//! - [`FileDev`]: a regular file or block device opened `O_DIRECT`, so the
//!   page cache never hides what is (not) on the device; only
//!   [`BlockDev::write_cached`] (journal stages) goes through it.
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

    /// Like [`write_at`](Self::write_at), for data that only has to survive
    /// the death of this process until the next [`flush`](Self::flush):
    /// where the device has a host page cache, the write lands there and
    /// returns without waiting for the device (a journal stage, written
    /// under the pool lock while the datapath waits). A crash of the host
    /// may lose or tear it like any unflushed write.
    fn write_cached(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_at(buf, offset)
    }

    /// Durability barrier: every write that completed before the call is
    /// durable when it returns `Ok`. After an error nothing is promised about
    /// those writes (they may or may not be durable).
    fn flush(&self) -> io::Result<()>;

    /// The boot of the host this device is attached to: writes that
    /// completed survive a process death within one boot, and only flushed
    /// ones survive a reboot (a power loss may come with it). The pool tags
    /// its journal with it (FORMAT.md "Records not covered by a flush").
    /// Real devices: [`host_boot_id`]; a simulated disk models reboots.
    fn boot_id(&self) -> [u8; 16] {
        host_boot_id()
    }
}

/// This host's boot id (`/proc/sys/kernel/random/boot_id`, new at every
/// boot), read once. If it cannot be read, an id random to this process:
/// every restart then counts as a reboot, which only costs the writes a
/// guest never flushed, never isolation.
pub fn host_boot_id() -> [u8; 16] {
    static ID: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .and_then(|s| parse_uuid(s.trim()))
            .unwrap_or_else(crate::pool::random_uuid)
    })
}

/// The 16 bytes of a UUID in its text form (hex digits, dashes ignored).
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (byte, pair) in id.iter_mut().zip(hex.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(id)
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
            fn write_cached(&self, buf: &[u8], offset: u64) -> io::Result<()> {
                (**self).write_cached(buf, offset)
            }
            fn flush(&self) -> io::Result<()> {
                (**self).flush()
            }
            fn boot_id(&self) -> [u8; 16] {
                (**self).boot_id()
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
    fn boot_id_is_read_from_the_host() {
        assert_eq!(
            parse_uuid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"),
            Some([
                0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78, 0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2,
                0xe1, 0xf0
            ])
        );
        assert_eq!(parse_uuid("0f1e"), None);
        assert_eq!(parse_uuid("zz1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"), None);
        let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        assert_eq!(Some(host_boot_id()), parse_uuid(text.trim()));
    }

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
