//! The dirty log of a live migration (vhost-user VHOST_F_LOG_ALL with
//! VHOST_USER_PROTOCOL_F_LOG_SHMFD): which guest pages the backend wrote, so
//! the frontend copies them again.
//!
//! The protocol's rules, as enforced here:
//! - The log is a bitmap over guest *physical* addresses, one bit per
//!   4096-byte page ([`LOG_PAGE`]): page p is bit p % 8 of byte p / 8 (QEMU
//!   reads it as little-endian u64 chunks: the same bits). The frontend hands
//!   it over with SET_LOG_BASE (a memfd, `mmap_size`, `mmap_offset`), mapped
//!   shared here; it clears bits concurrently (atomic exchange), so bits are
//!   set with atomic OR, never written.
//! - Logging is on while the acked features include LOG_ALL and a log is set.
//!   A later SET_LOG_BASE (a bigger log after memory hotplug) replaces the
//!   mapping atomically; a writer still holding the old one keeps it mapped
//!   until it is done ([`Arc`]), so nothing is unmapped under a writer.
//! - Every byte the backend writes into guest memory is marked after it is
//!   written (a mark made before could be scanned and cleared before the data
//!   lands), and before the queue's GET_VRING_BASE is answered: the frontend
//!   stops every queue, then reads the log once more and drops it.
//! - An address past the log's end cannot be marked: counted
//!   ([`DirtyLog::pages_past_end`]) and logged once per log, never a crash.
//!
//! # Batches, and why a batch looks twice
//!
//! The datapath brackets the guest-memory writes of one batch with
//! [`DirtyLog::begin`] and [`LogBatch::finish`], called under the lock that
//! GET_VRING_BASE waits for (a TX queue's scratch, an RX vring, a disk
//! queue's state). With logging off that costs one relaxed load at the start
//! and a fence and a load at the end, and no mark is computed. With logging
//! on, each write is marked in the log loaded at the start. The look at the
//! end closes two races: logging turned on during a batch that started with
//! it off (QEMU waits for SET_FEATURES to be processed, then starts copying:
//! a write of this batch after that could land in a page already copied),
//! and the log replaced during a batch (QEMU reads the old log once more
//! after its SET_LOG_BASE is answered, then drops it: a mark into the old
//! one after that read is lost). The writes come before the fence, so if the
//! end still sees the log the batch marked in (or logging off), every write
//! is either marked in the current log or happened before logging began.
//! Otherwise the batch marks the whole current log ([`LogMap::mark_all`]):
//! rare (once per migration at most, and only if a batch straddles the
//! switch), and only costs the frontend one more copy of every page.
//!
//! # What rust-vmm provides, and what we use
//!
//! `vhost-user-backend` 0.24 (`bitmap.rs`) hangs an `AtomicBitmapMmap` on
//! every guest memory region (`BitmapMmapRegion`, replaced under an
//! `RwLock`), and marks through `vm-memory`'s accessors, taking that lock
//! on every access. Our datapath copies through raw slices translated once
//! per batch with `Bitmap = ()` (see `split_ring.rs`), so those marks would
//! never happen, and switching the bitmap type would put a lock and a
//! bitmap lookup on every access of the 64-byte path. Its mapping type
//! (`MmapLogReg`) cannot be built outside the crate, and its handler's
//! `set_log_base` is never reached anyway (the relay answers SET_LOG_BASE,
//! `crate::relay`). So the bitmap and the batch rules are ours; the shared
//! mapping is `vm-memory`'s [`MmapRegion`] (mmap with MAP_SHARED at a file
//! offset, munmap on drop), and the swap is `arc-swap`'s.

use crate::relay::LogGeometry;
use arc_swap::ArcSwapOption;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vm_memory::{FileOffset, MmapRegion};

/// VHOST_F_LOG_ALL: the virtio feature bit the frontend acks while it logs.
pub const VHOST_F_LOG_ALL: u32 = 26;

/// VHOST_LOG_PAGE: the guest memory one bit of the log stands for.
pub const LOG_PAGE: u64 = 4096;

/// Largest log accepted: one bit per page of a 2^52-byte physical address
/// space (x86-64's architectural limit) is 2^37 bytes.
const MAX_LOG_BYTES: u64 = 1 << 37;

/// One dirty log, mapped shared from the frontend's memfd.
pub struct LogMap {
    region: MmapRegion,
    /// Whether a page past the end was already reported in the daemon's log.
    reported: AtomicBool,
}

impl LogMap {
    /// Maps `geometry.mmap_size` bytes of `fd` at `geometry.mmap_offset`.
    /// Refused: an empty or absurdly large log, and one the file does not
    /// hold whole (touching a mapping past the file's end is SIGBUS).
    pub fn map(geometry: &LogGeometry, fd: OwnedFd) -> io::Result<LogMap> {
        let LogGeometry {
            mmap_size,
            mmap_offset,
        } = *geometry;
        let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
        if mmap_size == 0 || mmap_size > MAX_LOG_BYTES {
            return Err(invalid(format!("dirty log of {mmap_size} bytes")));
        }
        let file = File::from(fd);
        let file_len = file.metadata()?.len();
        if mmap_offset
            .checked_add(mmap_size)
            .is_none_or(|end| end > file_len)
        {
            return Err(invalid(format!(
                "dirty log of {mmap_size} bytes at offset {mmap_offset} in a file of {file_len}"
            )));
        }
        let region = MmapRegion::from_file(FileOffset::new(file, mmap_offset), mmap_size as usize)
            .map_err(|e| io::Error::other(format!("mapping the dirty log: {e}")))?;
        Ok(LogMap {
            region,
            reported: AtomicBool::new(false),
        })
    }

    fn len(&self) -> u64 {
        self.region.size() as u64
    }

    fn byte(&self, i: u64) -> &AtomicU8 {
        debug_assert!(i < self.len());
        // SAFETY: `i` is inside the mapping, which lives as long as `self`;
        // the frontend only touches it atomically too.
        unsafe { AtomicU8::from_ptr(self.region.as_ptr().add(i as usize)) }
    }

    /// Sets the bits of the pages `[gpa, gpa + len)` touches. Returns how
    /// many of them lie past the log's end (not marked).
    pub fn mark(&self, gpa: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        let pages_in_log = self.len() * 8;
        for byte in first / 8..=(last / 8).min(self.len().saturating_sub(1)) {
            if byte >= self.len() {
                break;
            }
            let lo = (byte * 8).max(first) - byte * 8;
            let hi = ((byte * 8 + 7).min(last)) - byte * 8;
            let mask = (0xffu16 << lo) as u8 & (0xffu16 >> (7 - hi)) as u8;
            self.byte(byte).fetch_or(mask, Ordering::Relaxed);
        }
        let past = last
            .saturating_add(1)
            .saturating_sub(pages_in_log.max(first));
        if past > 0 && !self.reported.swap(true, Ordering::Relaxed) {
            log::warn!(
                "dirty log of {} pages: write at {gpa:#x} (+{len}) is past its end, not marked",
                pages_in_log
            );
        }
        past
    }

    /// Sets every bit: the frontend copies all of guest memory again.
    pub fn mark_all(&self) {
        for i in 0..self.len() {
            self.byte(i).fetch_or(0xff, Ordering::Relaxed);
        }
    }
}

/// The dirty log of one frontend session, shared by its datapath.
pub struct DirtyLog {
    /// The device offers the log (`[daemon] live_migration`).
    offered: bool,
    /// VHOST_F_LOG_ALL is in the acked features.
    log_all: AtomicBool,
    /// The last SET_LOG_BASE's log.
    map: ArcSwapOption<LogMap>,
    /// Pages written past the end of the log (not marked).
    past_end: AtomicU64,
    /// Batches that found logging switched on or the log replaced while
    /// they ran, and marked the whole log.
    whole_log_marks: AtomicU64,
}

impl DirtyLog {
    /// The log of a new session; `offered`: the device offers it
    /// (`[daemon] live_migration`), without which QEMU refuses to migrate
    /// the guest.
    pub fn new(offered: bool) -> DirtyLog {
        DirtyLog {
            offered,
            log_all: AtomicBool::new(false),
            map: ArcSwapOption::empty(),
            past_end: AtomicU64::new(0),
            whole_log_marks: AtomicU64::new(0),
        }
    }

    /// The device feature the log adds to a device's own: VHOST_F_LOG_ALL
    /// if offered.
    pub fn features(&self) -> u64 {
        u64::from(self.offered) << VHOST_F_LOG_ALL
    }

    /// The protocol feature the log adds: VHOST_USER_PROTOCOL_F_LOG_SHMFD
    /// if offered.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        match self.offered {
            true => VhostUserProtocolFeatures::LOG_SHMFD,
            false => VhostUserProtocolFeatures::empty(),
        }
    }

    /// SET_FEATURES: logging follows VHOST_F_LOG_ALL in `features`.
    pub fn set_features(&self, features: u64) {
        self.log_all
            .store(features & (1 << VHOST_F_LOG_ALL) != 0, Ordering::SeqCst);
    }

    /// SET_LOG_BASE: marks go to `fd`'s log from now on. The old log (if any)
    /// stays mapped until the last batch marking in it is done.
    pub fn set_base(&self, geometry: &LogGeometry, fd: OwnedFd) -> io::Result<()> {
        if !self.offered {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "SET_LOG_BASE: live migration is off ([daemon] live_migration)",
            ));
        }
        let map = LogMap::map(geometry, fd)?;
        log::info!(
            "dirty log set: {} bytes ({} pages of guest memory)",
            geometry.mmap_size,
            geometry.mmap_size * 8
        );
        self.map.store(Some(Arc::new(map)));
        Ok(())
    }

    /// Whether writes are being logged now.
    pub fn is_on(&self) -> bool {
        self.log_all.load(Ordering::Relaxed) && self.map.load().is_some()
    }

    /// Starts a batch of writes: one relaxed load while logging is off.
    #[inline]
    pub fn begin(&self) -> LogBatch<'_> {
        let map = match self.log_all.load(Ordering::Relaxed) {
            true => self.map.load_full(),
            false => None,
        };
        LogBatch { log: self, map }
    }

    /// Pages written past the end of the log, so not marked.
    pub fn pages_past_end(&self) -> u64 {
        self.past_end.load(Ordering::Relaxed)
    }

    /// Batches that marked the whole log (see the module docs).
    pub fn whole_log_marks(&self) -> u64 {
        self.whole_log_marks.load(Ordering::Relaxed)
    }
}

/// The writes of one batch into guest memory; see the module docs.
#[must_use = "a batch must be finished after its writes"]
pub struct LogBatch<'a> {
    log: &'a DirtyLog,
    /// The log marked in, if logging was on when the batch began.
    map: Option<Arc<LogMap>>,
}

impl LogBatch<'_> {
    /// Whether this batch marks its writes.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.map.is_some()
    }

    /// Marks `[gpa, gpa + len)` written. Call after the write.
    #[inline]
    pub fn mark(&self, gpa: u64, len: u64) {
        if let Some(map) = &self.map {
            let past = map.mark(gpa, len);
            if past > 0 {
                self.log.past_end.fetch_add(past, Ordering::Relaxed);
            }
        }
    }

    /// Ends the batch after its last write: if logging was switched on or
    /// the log replaced meanwhile, the whole current log is marked.
    #[inline]
    pub fn finish(self) {
        // Our writes before the look at the switch (see the module docs).
        fence(Ordering::SeqCst);
        if !self.log.log_all.load(Ordering::Relaxed) {
            return;
        }
        self.finish_logging();
    }

    #[cold]
    fn finish_logging(self) {
        let current = self.log.map.load();
        let Some(current) = current.as_ref() else {
            return;
        };
        if self.map.as_ref().is_some_and(|m| Arc::ptr_eq(m, current)) {
            return;
        }
        current.mark_all();
        self.log.whole_log_marks.fetch_add(1, Ordering::Relaxed);
    }
}

/// A frontend's side of the log, for tests here and in other modules.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A memfd of `bytes` bytes as the frontend would hand it over, and a
    /// mapping of it of our own to read the bits back.
    pub(crate) struct Frontend {
        pub(crate) fd: OwnedFd,
        pub(crate) view: MmapRegion,
    }

    impl Frontend {
        pub(crate) fn new(bytes: u64) -> Frontend {
            let fd = memfd(bytes);
            let file = File::from(fd.try_clone().unwrap());
            let view = MmapRegion::from_file(FileOffset::new(file, 0), bytes as usize).unwrap();
            Frontend { fd, view }
        }

        pub(crate) fn geometry(&self) -> LogGeometry {
            LogGeometry {
                mmap_size: self.view.size() as u64,
                mmap_offset: 0,
            }
        }

        pub(crate) fn give(&self, log: &DirtyLog) {
            log.set_base(&self.geometry(), self.fd.try_clone().unwrap())
                .unwrap();
        }

        /// The marked pages, in order.
        pub(crate) fn pages(&self) -> Vec<u64> {
            let mut pages = Vec::new();
            for i in 0..self.view.size() {
                // SAFETY: inside our own mapping.
                let b = unsafe { self.view.as_ptr().add(i).read_volatile() };
                for bit in 0..8 {
                    if b & (1 << bit) != 0 {
                        pages.push(i as u64 * 8 + bit);
                    }
                }
            }
            pages
        }

        /// What the frontend does when it syncs: take the bits, clear them.
        pub(crate) fn take(&self) -> Vec<u64> {
            let pages = self.pages();
            // SAFETY: inside our own mapping.
            unsafe { std::ptr::write_bytes(self.view.as_ptr(), 0, self.view.size()) };
            pages
        }
    }

    pub(crate) fn memfd(bytes: u64) -> OwnedFd {
        // SAFETY: a valid C string; the result is checked.
        let fd = unsafe { libc::memfd_create(c"dirty-log-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: a new descriptor nothing else owns.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(bytes).unwrap();
        file.into()
    }

    /// A log of `bytes` bytes, set and switched on.
    pub(crate) fn logging(bytes: u64) -> (DirtyLog, Frontend) {
        let log = DirtyLog::new(true);
        let f = Frontend::new(bytes);
        f.give(&log);
        log.set_features(1 << VHOST_F_LOG_ALL);
        (log, f)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{logging, memfd, Frontend};
    use super::*;
    use crate::GuestMem;
    use std::os::fd::AsFd;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    fn write(log: &DirtyLog, gpa: u64, len: u64) {
        let batch = log.begin();
        batch.mark(gpa, len);
        batch.finish();
    }

    #[test]
    fn a_write_marks_exactly_the_pages_it_touches() {
        let (log, f) = logging(8);
        write(&log, 0, 1);
        assert_eq!(f.take(), [0]);
        // The last byte of a page, the first of the next.
        write(&log, LOG_PAGE - 1, 1);
        assert_eq!(f.take(), [0]);
        write(&log, LOG_PAGE, 1);
        assert_eq!(f.take(), [1]);
        // A whole page exactly: that page only.
        write(&log, 3 * LOG_PAGE, LOG_PAGE);
        assert_eq!(f.take(), [3]);
        // Spanning a page boundary by one byte each side.
        write(&log, 5 * LOG_PAGE - 1, 2);
        assert_eq!(f.take(), [4, 5]);
        // Spanning bytes of the log: pages 6..=17.
        write(&log, 6 * LOG_PAGE + 100, 11 * LOG_PAGE + 5);
        assert_eq!(f.take(), (6..=17).collect::<Vec<_>>());
        // Nothing written, nothing marked.
        write(&log, 9 * LOG_PAGE, 0);
        assert_eq!(f.take(), Vec::<u64>::new());
    }

    /// Marking ORs: bits the frontend set (or a concurrent batch) stay.
    #[test]
    fn marks_add_to_what_is_there() {
        let (log, f) = logging(8);
        write(&log, 0, 1);
        write(&log, 2 * LOG_PAGE, 1);
        write(&log, 7 * LOG_PAGE, 1);
        assert_eq!(f.pages(), [0, 2, 7]);
    }

    /// A write into guest memory of two regions, adjacent in guest physical
    /// addresses but apart in host memory, marks by guest address: the
    /// pages on both sides of the boundary.
    #[test]
    fn writes_spanning_two_memory_regions_mark_by_guest_address() {
        let (log, f) = logging(8);
        let boundary = 16 * LOG_PAGE;
        let mem = GuestMem::from_ranges(&[
            (GuestAddress(0), boundary as usize),
            (GuestAddress(boundary), boundary as usize),
        ])
        .unwrap();
        let batch = log.begin();
        // A buffer of 300 bytes from 100 bytes before the boundary: two
        // slices, as a descriptor chain the walk split at the regions.
        let start = boundary - 100;
        for (gpa, len) in [(start, 100u64), (boundary, 200)] {
            let slice = mem.get_slice(GuestAddress(gpa), len as usize).unwrap();
            slice.write_slice(&vec![0xab; len as usize], 0).unwrap();
            batch.mark(gpa, len);
        }
        batch.finish();
        assert_eq!(f.take(), [15, 16]);
        assert_ne!(
            mem.get_host_address(GuestAddress(boundary - 1)).unwrap() as usize + 1,
            mem.get_host_address(GuestAddress(boundary)).unwrap() as usize,
            "the regions are apart in host memory"
        );
    }

    /// Off: nothing marked, whatever is set. A batch that began with logging
    /// off and ends with it on marks the whole log; one that began on and
    /// ends off marks what it wrote (too much is harmless).
    #[test]
    fn logging_switched_on_and_off_mid_batch() {
        let log = DirtyLog::new(true);
        let f = Frontend::new(2);
        write(&log, 0, 1);
        f.give(&log);
        write(&log, 0, 1);
        assert_eq!(f.take(), Vec::<u64>::new(), "LOG_ALL not acked");
        log.set_features(1 << VHOST_F_LOG_ALL);
        assert!(log.is_on());
        write(&log, LOG_PAGE, 1);
        assert_eq!(f.take(), [1]);

        log.set_features(0);
        let batch = log.begin();
        assert!(!batch.is_on());
        batch.mark(0, 1);
        log.set_features(1 << VHOST_F_LOG_ALL);
        batch.finish();
        assert_eq!(
            f.take(),
            (0..16).collect::<Vec<_>>(),
            "switched on mid-batch"
        );
        assert_eq!(log.whole_log_marks(), 1);

        let batch = log.begin();
        batch.mark(3 * LOG_PAGE, 1);
        log.set_features(0);
        batch.mark(4 * LOG_PAGE, 1);
        batch.finish();
        assert_eq!(f.take(), [3, 4], "switched off mid-batch");
        write(&log, 5 * LOG_PAGE, 1);
        assert_eq!(f.take(), Vec::<u64>::new(), "off");
        assert_eq!(log.whole_log_marks(), 1);
    }

    /// A bigger log replaces the old one: later batches mark in the new one
    /// only; a batch that was marking in the old one when it was replaced
    /// keeps it mapped and marks the whole new one at its end.
    #[test]
    fn a_bigger_log_replaces_the_old_one() {
        let (log, old) = logging(1);
        let batch = log.begin();
        batch.mark(LOG_PAGE, 1);
        let new = Frontend::new(4);
        new.give(&log);
        drop(old.fd);
        batch.mark(2 * LOG_PAGE, 1); // the old log is still mapped
        batch.finish();
        assert_eq!(old.view.size(), 1);
        assert_eq!(new.take(), (0..32).collect::<Vec<_>>());
        write(&log, 20 * LOG_PAGE, 1);
        assert_eq!(new.take(), [20]);
        assert_eq!(log.pages_past_end(), 0);
    }

    /// Pages past the log's end are counted, never marked elsewhere, and a
    /// write at the top of the address space is no overflow.
    #[test]
    fn pages_past_the_end_are_counted() {
        let (log, f) = logging(1);
        write(&log, 7 * LOG_PAGE, 2 * LOG_PAGE);
        assert_eq!(f.take(), [7]);
        assert_eq!(log.pages_past_end(), 1);
        write(&log, 100 * LOG_PAGE, 3 * LOG_PAGE);
        assert_eq!(log.pages_past_end(), 4);
        write(&log, u64::MAX - 10, 100);
        assert_eq!(f.take(), Vec::<u64>::new());
        assert_eq!(log.pages_past_end(), 5);
    }

    /// A log the file does not hold whole, or an empty one, is refused.
    #[test]
    fn a_log_past_its_file_is_refused() {
        let log = DirtyLog::new(true);
        let fd = memfd(4096);
        let mut g = LogGeometry {
            mmap_size: 4096,
            mmap_offset: 4096,
        };
        assert!(log.set_base(&g, fd.try_clone().unwrap()).is_err());
        g.mmap_offset = 0;
        g.mmap_size = 0;
        assert!(log.set_base(&g, fd.try_clone().unwrap()).is_err());
        g.mmap_size = u64::MAX;
        assert!(log.set_base(&g, fd.try_clone().unwrap()).is_err());
        g.mmap_size = 4096;
        log.set_base(&g, fd.as_fd().try_clone_to_owned().unwrap())
            .unwrap();
    }
}
