//! The VMM's side of a live migration's dirty log (vhost-user
//! VHOST_USER_PROTOCOL_F_LOG_SHMFD), as QEMU does it: a memfd bitmap with one
//! bit per 4 KiB page of guest memory handed over with SET_LOG_BASE, logging
//! switched on with SET_FEATURES carrying VHOST_F_LOG_ALL (and a request
//! answered after it, so the backend has processed it), and the bits read and
//! cleared with atomic exchanges of 64-bit chunks (QEMU's log sync).

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vhost::vhost_user::Frontend;
use vhost::{VhostBackend, VhostUserDirtyLogRegion};
use vm_memory::{FileOffset, MmapRegion};

use super::vhost_frontend::vu;

/// VHOST_F_LOG_ALL as a feature mask.
pub const LOG_ALL: u64 = 1 << 26;
/// VHOST_LOG_PAGE: guest bytes per bit.
pub const LOG_PAGE: u64 = 4096;

/// A dirty log for guest memory of a given size, mapped here to read it back.
pub struct FrontendLog {
    file: File,
    map: MmapRegion,
}

impl FrontendLog {
    /// A zeroed log covering `mem_size` bytes of guest memory (whole u64
    /// chunks, as QEMU sizes it).
    pub fn new(mem_size: u64) -> io::Result<FrontendLog> {
        let bytes = mem_size.div_ceil(LOG_PAGE * 64) * 8;
        // SAFETY: a valid C string; the result is checked.
        let fd = unsafe { libc::memfd_create(c"fabric-dirty-log".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create just returned it; nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(bytes)?;
        let map = MmapRegion::from_file(FileOffset::new(file.try_clone()?, 0), bytes as usize)
            .map_err(|e| io::Error::other(format!("mapping the dirty log: {e}")))?;
        Ok(FrontendLog { file, map })
    }

    /// SET_LOG_BASE with this log (the backend answers it).
    pub fn set_base(&self, frontend: &Frontend) -> io::Result<()> {
        let region = VhostUserDirtyLogRegion {
            mmap_size: self.map.size() as u64,
            mmap_offset: 0,
            mmap_handle: self.file.as_raw_fd(),
        };
        vu("SET_LOG_BASE", frontend.set_log_base(0, Some(region)))
    }

    /// What QEMU does when migration starts: SET_LOG_BASE, then SET_FEATURES
    /// with `features | LOG_ALL`, then a GET_FEATURES so that the backend
    /// has processed it when this returns.
    pub fn start(&self, frontend: &Frontend, features: u64) -> io::Result<()> {
        self.set_base(frontend)?;
        set_features_synced(frontend, features | LOG_ALL)
    }

    /// What QEMU does when migration is cancelled: SET_FEATURES without
    /// LOG_ALL (synced the same way).
    pub fn stop(&self, frontend: &Frontend, features: u64) -> io::Result<()> {
        set_features_synced(frontend, features & !LOG_ALL)
    }

    /// The marked pages, cleared as they are read (QEMU's log sync).
    pub fn take(&self) -> BTreeSet<u64> {
        let mut pages = BTreeSet::new();
        self.sync(|chunk, bits| {
            for bit in (0..64).filter(|b| bits & (1 << b) != 0) {
                pages.insert(chunk * 64 + bit);
            }
        });
        pages
    }

    /// Clears the log as [`FrontendLog::take`] does, counting the marked
    /// pages instead of listing them (a bench's periodic sync).
    pub fn clear(&self) -> u64 {
        let mut marked = 0;
        self.sync(|_, bits| marked += u64::from(bits.count_ones()));
        marked
    }

    /// Swaps every 64-bit chunk with 0, handing `f` the chunk's index and
    /// its bits (bit b of chunk c is page c * 64 + b).
    fn sync(&self, mut f: impl FnMut(u64, u64)) {
        for chunk in 0..self.map.size() / 8 {
            // SAFETY: an aligned u64 inside our mapping (page-aligned start),
            // which the backend only touches atomically.
            let word = unsafe { AtomicU64::from_ptr(self.map.as_ptr().add(chunk * 8).cast()) };
            let bits = u64::from_le(word.swap(0, Ordering::SeqCst));
            if bits != 0 {
                f(chunk as u64, bits);
            }
        }
    }

    /// [`FrontendLog::take`] until what was taken includes `expected` or
    /// `patience` ends, then everything taken. A device marks a used ring
    /// after publishing into it (and its avail_event after the re-arm that
    /// follows), so the driver can see a completion before its marks; QEMU
    /// reads the log only after stopping the rings. The caller compares the
    /// result exactly: waiting never hides a page marked too many or missing.
    pub fn take_including(&self, expected: &BTreeSet<u64>, patience: Duration) -> BTreeSet<u64> {
        let until = Instant::now() + patience;
        let mut taken = self.take();
        while !taken.is_superset(expected) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
            taken.extend(self.take());
        }
        taken
    }
}

fn set_features_synced(frontend: &Frontend, features: u64) -> io::Result<()> {
    vu("SET_FEATURES", frontend.set_features(features))?;
    vu("GET_FEATURES", frontend.get_features())?;
    Ok(())
}

/// The pages `[gpa, gpa + len)` touches.
pub fn pages(gpa: u64, len: u64) -> BTreeSet<u64> {
    if len == 0 {
        return BTreeSet::new();
    }
    (gpa / LOG_PAGE..=(gpa + len - 1) / LOG_PAGE).collect()
}

/// The pages of every range of `ranges`.
pub fn pages_of<'a>(ranges: impl IntoIterator<Item = &'a Range<u64>>) -> BTreeSet<u64> {
    ranges
        .into_iter()
        .flat_map(|r| pages(r.start, r.end - r.start))
        .collect()
}
