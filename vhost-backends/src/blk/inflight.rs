//! Inflight I/O tracking for split virtqueues (vhost-user protocol feature
//! INFLIGHT_SHMFD), so that a restarted daemon finishes what its predecessor
//! left half done, exactly once.
//!
//! Why: when a backend dies, QEMU cannot ask it where each ring stood
//! (GET_VRING_BASE fails: "ring restore failed") and restarts the next one at
//! the guest's used index. With requests completing out of order, the chains
//! popped before the crash are not the first `used_idx` ones: starting there
//! would run some completed chains again (whose descriptors the guest may have
//! reused for new requests) and never run some that were in flight (the guest
//! waits for them forever). So the backend keeps, in memory that QEMU holds
//! across our restarts, one flag per descriptor head: popped and not yet
//! returned.
//!
//! The region is ours to lay out (QEMU only passes it back); we use the layout
//! of QEMU's libvhost-user and DPDK, per queue, each 64-byte aligned:
//!
//! ```text
//! u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx;
//! desc_num x { u8 inflight; u8 padding[5]; u16 next; u64 counter; }
//! ```
//!
//! Rules (those of libvhost-user, which QEMU's own backends follow):
//! - pop: `counter` = a sequence number, then `inflight` = 1, before the
//!   request has any effect;
//! - return one element: `last_batch_head` = head; write the used element and
//!   the used index; then `inflight` = 0 and `used_idx` = the new used index.
//!   A crash between the used index and the flag leaves `used_idx` behind the
//!   ring's: recovery clears `last_batch_head` then;
//! - recovery (new connection): every head still flagged is resubmitted in
//!   `counter` order, and the ring resumes at `used + flagged`: the chains
//!   popped so far are exactly those returned plus those flagged.
//!
//! QEMU is trusted no more than the guest: every value read back from the
//! region is checked against the queue before it is used.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};

pub use crate::relay::InflightGeometry;

/// `version` of a region we have initialised.
const VERSION: u16 = 1;
/// features u64, version u16, desc_num u16, last_batch_head u16, used_idx u16.
const HEADER_LEN: usize = 16;
/// inflight u8, padding [u8; 5], next u16, counter u64.
const DESC_LEN: usize = 16;
const ALIGN: usize = 64;
/// Largest queue a split ring may have (virtio 1.x §2.7).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Bytes of one queue's part of the region.
pub fn queue_region_len(queue_size: u16) -> usize {
    (HEADER_LEN + DESC_LEN * usize::from(queue_size)).next_multiple_of(ALIGN)
}

impl InflightGeometry {
    /// Checks what GET_INFLIGHT_FD asks against the device's queue count.
    pub fn validate(&self, max_queues: usize) -> io::Result<()> {
        let bad = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        if self.num_queues == 0 || usize::from(self.num_queues) > max_queues {
            return bad(format!(
                "inflight region for {} queues (the device has {max_queues})",
                self.num_queues
            ));
        }
        if !self.queue_size.is_power_of_two() || self.queue_size > MAX_QUEUE_SIZE {
            return bad(format!("inflight queue size {}", self.queue_size));
        }
        Ok(())
    }

    /// Bytes the region needs for these queues.
    pub fn needed(&self) -> u64 {
        queue_region_len(self.queue_size) as u64 * u64::from(self.num_queues)
    }
}

/// A zeroed memfd for GET_INFLIGHT_FD, sized for `geometry`.
pub fn create(geometry: &InflightGeometry) -> io::Result<(OwnedFd, u64)> {
    let size = geometry.needed();
    // SAFETY: a NUL-terminated name and valid flags; the fd is checked.
    let fd = unsafe { libc::memfd_create(c"vblk-inflight".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create just returned it; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(size).map_err(io::Error::other)?;
    // SAFETY: ftruncate on our own fd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fd, size))
}

/// The region QEMU passed with SET_INFLIGHT_FD, mapped.
pub struct InflightRegion {
    base: NonNull<u8>,
    len: usize,
    queue_size: u16,
    num_queues: u16,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for InflightRegion {}
// SAFETY: as above.
unsafe impl Sync for InflightRegion {}

impl InflightRegion {
    /// Maps `fd` as described by SET_INFLIGHT_FD, after checking that it
    /// holds `num_queues` queues of `queue_size` at `mmap_offset`.
    pub fn map(
        fd: &OwnedFd,
        g: &InflightGeometry,
        max_queues: usize,
    ) -> io::Result<InflightRegion> {
        g.validate(max_queues)?;
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        if g.mmap_size < g.needed() {
            return Err(invalid(format!(
                "inflight region of {} bytes for {} queues of {} (needs {})",
                g.mmap_size,
                g.num_queues,
                g.queue_size,
                g.needed()
            )));
        }
        let len = usize::try_from(g.needed()).map_err(io::Error::other)?;
        let offset = libc::off_t::try_from(g.mmap_offset)
            .ok()
            .filter(|o| (*o as u64).is_multiple_of(4096))
            .ok_or_else(|| invalid(format!("inflight mmap_offset {}", g.mmap_offset)))?;
        // The file must be as long as we map, or touching the tail would SIGBUS.
        // SAFETY: `libc::stat` is plain integers, for which all-zero bytes are valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is borrowed, so open for the call; fstat writes only into
        // `st`, a local we own exclusively.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if (st.st_size as u64) < g.mmap_offset.saturating_add(len as u64) {
            return Err(invalid(format!(
                "inflight file of {} bytes, {} needed at offset {}",
                st.st_size, len, g.mmap_offset
            )));
        }
        // SAFETY: a fresh shared mapping of a file at least `len` long past
        // `offset`; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(InflightRegion {
            base: NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap gave NULL"))?,
            len,
            queue_size: g.queue_size,
            num_queues: g.num_queues,
        })
    }

    /// Queue `q`'s part, if the region has one.
    pub fn queue(&self, q: usize) -> Option<InflightQueue<'_>> {
        (q < usize::from(self.num_queues)).then(|| InflightQueue {
            region: self,
            offset: q * queue_region_len(self.queue_size),
        })
    }
}

impl Drop for InflightRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// One queue's inflight state.
pub struct InflightQueue<'r> {
    region: &'r InflightRegion,
    offset: usize,
}

impl InflightQueue<'_> {
    /// Descriptor heads the region tracks.
    pub fn size(&self) -> u16 {
        self.region.queue_size
    }

    fn at<T>(&self, byte: usize) -> &T {
        debug_assert!(self.offset + byte + std::mem::size_of::<T>() <= self.region.len);
        debug_assert!((self.offset + byte).is_multiple_of(std::mem::align_of::<T>()));
        // SAFETY: in bounds of the mapping (offsets below come from the
        // layout, heads are checked against the queue size), naturally
        // aligned (64-byte queue parts, 16-byte entries), and only ever
        // accessed atomically.
        unsafe {
            &*self
                .region
                .base
                .as_ptr()
                .add(self.offset + byte)
                .cast::<T>()
        }
    }

    fn version(&self) -> &AtomicU16 {
        self.at(8)
    }
    fn desc_num(&self) -> &AtomicU16 {
        self.at(10)
    }
    fn last_batch_head(&self) -> &AtomicU16 {
        self.at(12)
    }
    fn used_idx(&self) -> &AtomicU16 {
        self.at(14)
    }
    fn flag(&self, head: u16) -> &AtomicU8 {
        self.at(HEADER_LEN + DESC_LEN * usize::from(head))
    }
    fn counter(&self, head: u16) -> &AtomicU64 {
        self.at(HEADER_LEN + DESC_LEN * usize::from(head) + 8)
    }

    /// Marks `head` popped (before the request has any effect). Heads
    /// outside the queue are not tracked (such chains are refused anyway).
    pub fn popped(&self, head: u16, counter: u64) {
        if head < self.size() {
            self.counter(head).store(counter, Ordering::Relaxed);
            self.flag(head).store(1, Ordering::Release);
        }
    }

    /// Before writing the used element of `head`.
    pub fn returning(&self, head: u16) {
        if head < self.size() {
            self.last_batch_head().store(head, Ordering::Release);
        }
    }

    /// After the used index moved to `used` for `head`.
    pub fn returned(&self, head: u16, used: u16) {
        if head < self.size() {
            self.flag(head).store(0, Ordering::Release);
        }
        self.used_idx().store(used, Ordering::Release);
    }

    /// Brings the state up to date with the ring's used index `used` and
    /// returns what a new connection resumes with: the heads to resubmit
    /// (oldest first) and the next sequence number. A region seen for the
    /// first time is initialised and holds nothing.
    pub fn recover(&self, used: u16) -> Recovery {
        let n = self.size();
        if self.version().load(Ordering::Acquire) != VERSION {
            for head in 0..n {
                self.flag(head).store(0, Ordering::Relaxed);
            }
            self.desc_num().store(n, Ordering::Relaxed);
            self.used_idx().store(used, Ordering::Relaxed);
            self.version().store(VERSION, Ordering::Release);
            return Recovery::default();
        }
        if self.used_idx().load(Ordering::Acquire) != used {
            // Died after publishing an element, before clearing its flag.
            let last = self.last_batch_head().load(Ordering::Acquire);
            if last < n {
                self.flag(last).store(0, Ordering::Release);
            }
            self.used_idx().store(used, Ordering::Release);
        }
        let mut pending: Vec<(u64, u16)> = (0..n)
            .filter(|&h| self.flag(h).load(Ordering::Acquire) == 1)
            .map(|h| (self.counter(h).load(Ordering::Relaxed), h))
            .collect();
        pending.sort_unstable();
        let next_counter = pending.last().map_or(0, |&(c, _)| c.wrapping_add(1));
        Recovery {
            resubmit: pending.into_iter().map(|(_, h)| h).collect(),
            next_counter,
        }
    }
}

/// What [`InflightQueue::recover`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Heads popped and not returned, oldest first.
    pub resubmit: Vec<u16>,
    pub next_counter: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(queues: u16, size: u16) -> InflightRegion {
        let g = InflightGeometry {
            mmap_size: 0,
            mmap_offset: 0,
            num_queues: queues,
            queue_size: size,
        };
        let (fd, len) = create(&g).unwrap();
        let g = InflightGeometry {
            mmap_size: len,
            ..g
        };
        InflightRegion::map(&fd, &g, usize::from(queues)).unwrap()
    }

    #[test]
    fn geometry_is_checked() {
        let g = InflightGeometry {
            mmap_size: 1 << 20,
            mmap_offset: 0,
            num_queues: 2,
            queue_size: 256,
        };
        assert!(g.validate(2).is_ok());
        assert!(g.validate(1).is_err(), "more queues than the device");
        let odd = InflightGeometry {
            queue_size: 100,
            ..g
        };
        assert!(odd.validate(2).is_err());
        let (fd, len) = create(&g).unwrap();
        assert_eq!(len, 2 * queue_region_len(256) as u64);
        let short = InflightGeometry {
            mmap_size: len - 1,
            ..g
        };
        assert!(InflightRegion::map(&fd, &short, 2).is_err(), "too small");
        let beyond = InflightGeometry {
            mmap_size: len,
            mmap_offset: 4096,
            ..g
        };
        assert!(
            InflightRegion::map(&fd, &beyond, 2).is_err(),
            "file shorter than offset + size"
        );
    }

    /// A request's life: popped, its used element written, its flag cleared. A
    /// crash at every step must resubmit it exactly when it was not returned, and
    /// resume the ring at used + resubmitted.
    #[test]
    fn recovery_after_a_crash_at_every_point_of_a_request() {
        // (crash after step k of request 5; requests 1..=4 earlier: 1, 3 returned, 2, 4 in flight)
        for crash_after in 0..=4 {
            let r = region(1, 8);
            let q = r.queue(0).unwrap();
            assert_eq!(q.recover(0), Recovery::default(), "fresh region");
            let mut used = 0u16;
            let mut counter = 0;
            for head in [1u16, 2, 3, 4] {
                q.popped(head, counter);
                counter += 1;
            }
            for head in [3u16, 1] {
                q.returning(head);
                used += 1; // the used element and index
                q.returned(head, used);
            }
            // Request at head 5, step by step.
            let steps = crash_after;
            if steps >= 1 {
                q.popped(5, counter);
            }
            if steps >= 2 {
                q.returning(5);
            }
            if steps >= 3 {
                used += 1; // used element and index written
            }
            if steps >= 4 {
                q.returned(5, used);
            }
            let got = q.recover(used);
            let expect: Vec<u16> = if (1..=2).contains(&steps) {
                vec![2, 4, 5]
            } else {
                vec![2, 4]
            };
            assert_eq!(got.resubmit, expect, "crash after step {steps}");
            // Past the newest request still in flight.
            let newest = if (1..=2).contains(&steps) { 4 } else { 3 };
            assert_eq!(got.next_counter, newest + 1);
            // The ring resumes at the chains popped so far.
            let popped = 4 + u16::from(steps >= 1);
            assert_eq!(used + got.resubmit.len() as u16, popped);
            // Recovering again changes nothing.
            assert_eq!(q.recover(used), got);
        }
    }

    #[test]
    fn queues_are_separate_and_heads_outside_are_ignored() {
        let r = region(2, 4);
        let (a, b) = (r.queue(0).unwrap(), r.queue(1).unwrap());
        assert!(r.queue(2).is_none());
        a.recover(0);
        b.recover(0);
        a.popped(3, 7);
        a.popped(4, 8); // outside a 4-entry queue
        b.returned(9, 0);
        assert_eq!(a.recover(0).resubmit, vec![3]);
        assert_eq!(b.recover(0).resubmit, Vec::<u16>::new());
    }
}
