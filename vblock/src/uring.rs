//! The datapath's io_uring engine: one ring per virtqueue, batched submission,
//! completions signalled through an eventfd.
//!
//! # How a vhost worker drives it
//!
//! ```text
//! for each request:      unsafe { engine.push(op, tag) }   // Err(Full) => stop, retry later
//! after the batch:       engine.submit()                   // ONE io_uring_enter
//! on the eventfd (epoll): engine.clear_event(); engine.reap(&mut done)
//! ```
//!
//! Clear the eventfd *before* reaping: a completion posted between the reap
//! and a later clear would otherwise leave a CQE in the ring with no wakeup.
//!
//! # io_uring rules this module relies on
//!
//! - **Submission stability** (`IORING_FEAT_SUBMIT_STABLE`, Linux 5.5+): once
//!   `io_uring_enter` returns, the kernel has consumed the SQE and anything it
//!   points to *for submission* (the iovec array of a readv/writev). Only the
//!   data buffers themselves must outlive the operation. The engine still
//!   keeps its own copy of every iovec array until the completion is reaped,
//!   so callers never have to reason about that rule.
//! - **CQ overflow**: the CQ has a fixed size; if more completions arrive than
//!   fit, older kernels drop them and newer ones (`IORING_FEAT_NODROP`) park
//!   them in an overflow list that is only flushed by a later `io_uring_enter`.
//!   The engine never lets more operations be in flight (queued, submitted or
//!   completed but not yet reaped) than the CQ has entries, so the CQ cannot
//!   overflow and no completion is ever lost. [`push`](UringEngine::push)
//!   returns [`PushError::Full`] at that bound: that is the backpressure signal.
//! - **Partial submission**: `io_uring_enter` may consume fewer SQEs than were
//!   queued (e.g. `EAGAIN`/`EBUSY` under memory pressure). Unconsumed SQEs stay
//!   in the SQ and go out with the next [`submit`](UringEngine::submit).
//! - **Results**: a CQE's `res` is the byte count (reads/writes), 0 (fsync) or
//!   `-errno`. Errors of an individual operation (e.g. `-EBADF`, `-EIO`,
//!   `-EINVAL` for a misaligned O_DIRECT buffer) arrive as completions, never
//!   as an error of `submit`.
//! - **Short transfers are not errors**: a read at or past end of file
//!   returns fewer bytes (0 at EOF); a write may transfer less than asked
//!   (e.g. `ENOSPC` after a partial write, or the kernel's `MAX_RW_COUNT`
//!   cap of about 2 GiB). The engine reports the actual byte count in
//!   [`Completion::result`]; the caller compares it with what it asked for and
//!   decides (resubmit the rest, zero-fill, or fail the request).
//! - **Eventfd** (`IORING_REGISTER_EVENTFD`): the kernel signals the eventfd
//!   whenever it posts a CQE. The counter is a hint; the CQ is the truth.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The kernel's limit on iovecs per readv/writev (`UIO_MAXIOV`).
pub const MAX_IOVECS: usize = 1024;

/// One operation on the engine's file.
///
/// The iovec slices are copied into the engine by [`UringEngine::push`]; the
/// memory they *point to* must stay valid until the completion is reaped (see
/// the safety contract of `push`).
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    /// Read into `iov` from the file at byte `offset`.
    Read { offset: u64, iov: &'a [libc::iovec] },
    /// Write `iov` to the file at byte `offset`.
    Write { offset: u64, iov: &'a [libc::iovec] },
    /// `fdatasync` of the whole file (`IORING_FSYNC_DATASYNC`). It is not
    /// ordered against other operations in flight: to flush a set of writes,
    /// push the fsync after their completions were reaped.
    Fsync,
    /// Completes (with `-ETIME`) after the duration: a fault drill's slow
    /// device ([`crate::pool::IoFaults::slow_sync`]).
    Timeout(std::time::Duration),
}

/// Why an operation was not queued. Nothing was queued in either case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The in-flight limit (the CQ size) or the SQ is full: submit, reap
    /// completions and push again. The caller should keep the request.
    Full,
    /// More iovecs than the kernel accepts in one operation ([`MAX_IOVECS`]).
    TooManyIovecs,
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full => write!(f, "io_uring engine full: reap completions first"),
            PushError::TooManyIovecs => write!(f, "more than {MAX_IOVECS} iovecs in one operation"),
        }
    }
}

impl std::error::Error for PushError {}

impl From<PushError> for io::Error {
    fn from(e: PushError) -> io::Error {
        match e {
            PushError::Full => io::Error::new(io::ErrorKind::WouldBlock, e),
            PushError::TooManyIovecs => io::Error::new(io::ErrorKind::InvalidInput, e),
        }
    }
}

/// A finished operation: the caller's tag and the kernel's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The tag given to [`UringEngine::push`].
    pub tag: u64,
    /// Bytes transferred (reads/writes; may be short, see the module docs),
    /// 0 for a successful fsync, or `-errno`.
    pub result: i32,
}

impl Completion {
    /// The result as bytes transferred or an `io::Error`.
    pub fn bytes(&self) -> io::Result<usize> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as usize)
        }
    }
}

/// Book-keeping of one in-flight operation; its index is the SQE user data.
#[derive(Default)]
struct Slot {
    tag: u64,
    /// The engine's copy of a readv/writev iovec array (empty otherwise).
    iov: Vec<libc::iovec>,
    /// A timeout's duration (the kernel reads it at submission).
    ts: types::Timespec,
}

/// An io_uring on one file, with an eventfd signalled on completions.
///
/// Not thread-safe by itself (`&mut self` for everything that touches the
/// rings); it is meant to be owned by one vhost worker.
pub struct UringEngine {
    ring: IoUring,
    /// The engine's own duplicate of the caller's fd: the file cannot be
    /// closed (and its number reused) under in-flight operations.
    file: OwnedFd,
    event: EventFd,
    slots: Vec<Slot>,
    /// Indices of free slots.
    free: Vec<u32>,
}

// SAFETY: the only non-Send fields are the raw pointers inside the copied
// iovecs. The engine never dereferences them; they describe caller memory
// handed over through the `unsafe fn push` contract, which already requires
// that memory to stay valid (from any thread) until the completion is reaped.
unsafe impl Send for UringEngine {}

impl fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringEngine")
            .field("fd", &self.file.as_raw_fd())
            .field("capacity", &self.capacity())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl UringEngine {
    /// Creates a ring with `depth` SQ entries (rounded up to a power of two by
    /// the kernel; the CQ gets twice as many) on a duplicate of `file`'s fd,
    /// and registers a fresh non-blocking eventfd with it.
    ///
    /// At most `depth` operations are in flight at once ([`capacity`](Self::capacity)).
    /// Errors: `depth` of 0 or above the kernel's limit (`InvalidInput`), an
    /// invalid fd (`EBADF` from the dup), or the kernel refusing the ring.
    pub fn new(file: impl AsFd, depth: u32) -> io::Result<UringEngine> {
        if depth == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "io_uring depth must be at least 1",
            ));
        }
        let file = file.as_fd().try_clone_to_owned()?;
        let ring = IoUring::new(depth).map_err(|e| {
            io::Error::new(e.kind(), format!("io_uring_setup({depth} entries): {e}"))
        })?;
        let event = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        ring.submitter().register_eventfd(event.as_raw_fd())?;
        // The bound that makes CQ overflow impossible (see the module docs).
        // We also stop at the SQ size so a push never finds the SQ full.
        let params = ring.params();
        let capacity = depth.min(params.sq_entries()).min(params.cq_entries()) as usize;
        let slots = (0..capacity).map(|_| Slot::default()).collect();
        let free = (0..capacity as u32).rev().collect();
        Ok(UringEngine {
            ring,
            file,
            event,
            slots,
            free,
        })
    }

    /// Queues `op` with the caller's `tag` (returned in its [`Completion`]).
    /// Nothing reaches the kernel before [`submit`](Self::submit).
    ///
    /// A single-iovec op is sent as a plain READ/WRITE, several as
    /// READV/WRITEV; the iovec slice is copied, so it may be dropped on return.
    ///
    /// Errors (nothing queued): [`PushError::Full`] when
    /// [`capacity`](Self::capacity) operations are in flight,
    /// [`PushError::TooManyIovecs`] above [`MAX_IOVECS`].
    ///
    /// # Safety
    ///
    /// Every buffer described by `op` (`iov_base`, `iov_len`) must be valid
    /// host memory, writable for reads, and must stay valid (not freed,
    /// unmapped or reused; for reads, not otherwise accessed) until this
    /// operation's completion is returned by [`reap`](Self::reap) or the
    /// engine is dropped (drop waits for every in-flight operation). For
    /// O_DIRECT files the buffers, offsets and lengths must also meet the
    /// device's alignment, or the completion carries `-EINVAL`.
    pub unsafe fn push(&mut self, op: Op<'_>, tag: u64) -> Result<(), PushError> {
        let iov_len = match op {
            Op::Read { iov, .. } | Op::Write { iov, .. } => iov.len(),
            Op::Fsync | Op::Timeout(_) => 0,
        };
        if iov_len > MAX_IOVECS {
            return Err(PushError::TooManyIovecs);
        }
        let Some(index) = self.free.pop() else {
            return Err(PushError::Full);
        };
        let fd = types::Fd(self.file.as_raw_fd());
        let slot = &mut self.slots[index as usize];
        slot.tag = tag;
        slot.iov.clear();
        let entry = match op {
            Op::Read { offset, iov } => match single(iov) {
                Some((buf, len)) => opcode::Read::new(fd, buf, len).offset(offset).build(),
                None => {
                    slot.iov.extend_from_slice(iov);
                    opcode::Readv::new(fd, slot.iov.as_ptr(), iov_len as u32)
                        .offset(offset)
                        .build()
                }
            },
            Op::Write { offset, iov } => match single(iov) {
                Some((buf, len)) => opcode::Write::new(fd, buf, len).offset(offset).build(),
                None => {
                    slot.iov.extend_from_slice(iov);
                    opcode::Writev::new(fd, slot.iov.as_ptr(), iov_len as u32)
                        .offset(offset)
                        .build()
                }
            },
            Op::Fsync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Op::Timeout(d) => {
                slot.ts = types::Timespec::from(d);
                opcode::Timeout::new(&slot.ts).build()
            }
        };
        let entry: squeue::Entry = entry.user_data(u64::from(index));
        // SAFETY: the data buffers are the caller's contract; the iovec array
        // lives in `self.slots[index]`, untouched until this op is reaped.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            // Cannot happen while capacity <= SQ size, but never panic.
            self.free.push(index);
            return Err(PushError::Full);
        }
        Ok(())
    }

    /// Submits everything queued with one `io_uring_enter` and returns how
    /// many SQEs the kernel consumed (possibly fewer than queued: the rest
    /// stays queued for the next call). Does not wait for completions.
    ///
    /// `EINTR`, `EAGAIN` and `EBUSY` are returned as errors with the SQEs
    /// still queued; the caller may reap and call again.
    pub fn submit(&mut self) -> io::Result<usize> {
        if self.queued() == 0 && !self.ring.submission().cq_overflow() {
            return Ok(0);
        }
        self.ring.submit()
    }

    /// Like [`submit`](Self::submit), then blocks in the same
    /// `io_uring_enter` until at least `want` completions are in the CQ
    /// (`want` is capped at what is in flight, so this cannot hang on an idle
    /// ring). For tests, benches and shutdown; a vhost worker waits on the
    /// [`eventfd`](Self::eventfd) instead.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        let want = want.min(self.in_flight());
        self.ring.submit_and_wait(want)
    }

    /// Moves every available completion into `out` (appending) and returns how
    /// many were added. Never blocks; each pushed tag is returned exactly once.
    pub fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        let before = out.len();
        let mut cq = self.ring.completion();
        for cqe in &mut cq {
            let index = cqe.user_data();
            let Some(slot) = usize::try_from(index)
                .ok()
                .and_then(|i| self.slots.get_mut(i))
            else {
                // Only our own user data is ever submitted; ignore anything else.
                continue;
            };
            slot.iov.clear();
            out.push(Completion {
                tag: slot.tag,
                result: cqe.result(),
            });
            self.free.push(index as u32);
        }
        out.len() - before
    }

    /// Whether completions wait in the CQ (a look at its indices, no
    /// syscall): for a worker polling before it sleeps on the eventfd.
    pub fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// The eventfd registered with the ring: readable when completions have
    /// been posted. Non-blocking; put it on the worker's epoll (EPOLLIN).
    pub fn eventfd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// Consumes the eventfd's counter (no-op if it is zero). Call it before
    /// [`reap`](Self::reap), never after, so no completion goes unsignalled.
    pub fn clear_event(&self) {
        // EAGAIN (counter already 0) is the only expected error and harmless.
        let _ = self.event.read();
    }

    /// Operations pushed and not yet reaped (queued, in the kernel, or
    /// completed in the CQ).
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Operations pushed and not yet consumed by the kernel.
    pub fn queued(&mut self) -> usize {
        self.ring.submission().len()
    }

    /// The in-flight limit: `min(depth, SQ entries, CQ entries)`.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

/// A single iovec that fits a plain READ/WRITE (length fits in u32).
fn single(iov: &[libc::iovec]) -> Option<(*mut u8, u32)> {
    match iov {
        [one] => u32::try_from(one.iov_len)
            .ok()
            .map(|len| (one.iov_base.cast::<u8>(), len)),
        _ => None,
    }
}

impl Drop for UringEngine {
    /// Waits for every in-flight operation: the kernel may still be writing
    /// into caller buffers, which the `push` contract only guarantees until
    /// the completion is reaped or the engine is dropped.
    fn drop(&mut self) {
        let mut done = Vec::new();
        while self.in_flight() > 0 {
            match self.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                // Nothing sensible left to do; closing the ring makes the
                // kernel cancel and finish the rest.
                Err(_) => break,
            }
            done.clear();
            self.reap(&mut done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::fs::{File, OpenOptions};
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::PathBuf;

    pub(super) const ALIGN: usize = 4096;

    /// The tests' O_DIRECT buffers are the device layer's aligned buffers.
    pub(super) type Buf = crate::dev::AlignedBuf;

    /// A file on a real filesystem (O_DIRECT does not work on tmpfs):
    /// `$VBLOCK_TEST_DIR` or /var/tmp. Removed on drop.
    pub(super) struct TempFile {
        pub(super) path: PathBuf,
    }

    impl TempFile {
        pub(super) fn new(name: &str) -> TempFile {
            let dir = std::env::var_os("VBLOCK_TEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/tmp"));
            let path = dir.join(format!("vblock-uring-{}-{name}", std::process::id()));
            TempFile { path }
        }
        pub(super) fn open(&self, write: bool) -> File {
            OpenOptions::new()
                .read(true)
                .write(write)
                .create(write)
                .custom_flags(libc::O_DIRECT)
                .open(&self.path)
                .expect("open O_DIRECT (is the test dir on tmpfs?)")
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Submits and reaps until nothing is in flight.
    pub(super) fn drain(e: &mut UringEngine, out: &mut Vec<Completion>) {
        while e.in_flight() > 0 {
            e.submit_and_wait(1).expect("submit_and_wait");
            e.reap(out);
        }
    }

    fn pattern(block: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (block.wrapping_mul(31) as u8) ^ (i as u8).wrapping_mul(7) ^ (block >> 8) as u8;
        }
    }

    /// Queues a one-block write (or read) of `buf` at `offset` under `tag`.
    /// The caller reaps it before `buf` goes away.
    pub(super) fn push_one(e: &mut UringEngine, write: bool, buf: &Buf, offset: u64, tag: u64) {
        let iov = [buf.iovec(0, ALIGN)];
        let op = if write {
            Op::Write { offset, iov: &iov }
        } else {
            Op::Read { offset, iov: &iov }
        };
        // SAFETY: `buf` outlives the operation (see above); push copies `iov`.
        unsafe { e.push(op, tag) }.unwrap();
    }

    pub(super) fn poll_readable(fd: RawFd, timeout_ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        n == 1 && p.revents & libc::POLLIN != 0
    }

    #[test]
    fn batched_write_fsync_read_verify() {
        let tf = TempFile::new("batch");
        let f = tf.open(true);
        let mut e = UringEngine::new(&f, 128).unwrap();
        assert_eq!(e.capacity(), 128);
        const N: usize = 100;
        let mut src = Buf::new(N * ALIGN);
        for (b, chunk) in src[..].chunks_mut(ALIGN).enumerate() {
            pattern(b as u64, chunk);
        }
        // Mix single-buffer writes and 2-iovec writev.
        for b in 0..N {
            let iov = [
                src.iovec(b * ALIGN, 2048),
                src.iovec(b * ALIGN + 2048, 2048),
            ];
            let iov = if b & 1 == 0 {
                &iov[..]
            } else {
                &[src.iovec(b * ALIGN, ALIGN)][..]
            };
            let op = Op::Write {
                offset: (b * ALIGN) as u64,
                iov,
            };
            // SAFETY: the kernel reads `src`, which is left untouched and outlives the
            // drain below; push copies `iov`.
            unsafe { e.push(op, b as u64) }.unwrap();
        }
        assert_eq!(e.queued(), N);
        assert_eq!(e.submit().unwrap(), N, "one enter submits the whole batch");
        let mut done = Vec::new();
        drain(&mut e, &mut done);
        assert_eq!(done.len(), N);
        assert!(done.iter().all(|c| c.result == ALIGN as i32), "{done:?}");

        // SAFETY: an fsync names no memory.
        unsafe { e.push(Op::Fsync, 999) }.unwrap();
        done.clear();
        drain(&mut e, &mut done);
        assert_eq!(
            done,
            vec![Completion {
                tag: 999,
                result: 0
            }]
        );

        let dst = Buf::new(N * ALIGN);
        for b in 0..N {
            let iov = [dst.iovec(b * ALIGN, ALIGN)];
            // SAFETY: the kernel writes `dst`, which the test reads only after the drain
            // below; push copies `iov`.
            unsafe {
                e.push(
                    Op::Read {
                        offset: (b * ALIGN) as u64,
                        iov: &iov,
                    },
                    b as u64,
                )
            }
            .unwrap();
        }
        e.submit().unwrap();
        done.clear();
        drain(&mut e, &mut done);
        assert!(done.iter().all(|c| c.bytes().unwrap() == ALIGN));
        assert!(src[..] == dst[..], "read back differs");
    }

    #[test]
    fn eventfd_signals_completions() {
        let tf = TempFile::new("eventfd");
        let f = tf.open(true);
        let mut e = UringEngine::new(&f, 8).unwrap();
        let buf = Buf::new(ALIGN);
        assert!(!poll_readable(e.eventfd(), 0), "quiet before any I/O");
        push_one(&mut e, true, &buf, 0, 7);
        assert!(!poll_readable(e.eventfd(), 0), "push alone does not submit");
        e.submit().unwrap();
        assert!(
            poll_readable(e.eventfd(), 5000),
            "eventfd readable after completion"
        );
        e.clear_event();
        assert!(!poll_readable(e.eventfd(), 0), "clear_event consumes it");
        let mut done = Vec::new();
        assert_eq!(e.reap(&mut done), 1);
        assert_eq!(
            done,
            vec![Completion {
                tag: 7,
                result: ALIGN as i32
            }]
        );
        e.clear_event(); // clearing an already-clear eventfd is fine
        assert_eq!(e.reap(&mut done), 0, "reap never blocks");
    }

    #[test]
    fn every_tag_reaped_exactly_once() {
        let tf = TempFile::new("tags");
        let f = tf.open(true);
        f.set_len(64 * ALIGN as u64).unwrap();
        let mut e = UringEngine::new(&f, 32).unwrap();
        let buf = Buf::new(32 * ALIGN);
        let mut seen = HashSet::new();
        let mut done = Vec::new();
        let mut next = 0u64;
        let total = 1000u64;
        while (seen.len() as u64) < total {
            while next < total {
                let slot = (next % 32) as usize;
                let op = Op::Read {
                    offset: (next % 64) * ALIGN as u64,
                    iov: &[buf.iovec(slot * ALIGN, ALIGN)],
                };
                // Tags are arbitrary u64s, not small indices.
                // SAFETY: the kernel writes into `buf`, which outlives every op (the loop
                // reaps them all) and whose contents the test never reads.
                match unsafe { e.push(op, next.wrapping_mul(0x9E37_79B9_7F4A_7C15)) } {
                    Ok(()) => next += 1,
                    Err(PushError::Full) => break,
                    Err(err) => panic!("{err}"),
                }
            }
            e.submit_and_wait(1).unwrap();
            done.clear();
            e.reap(&mut done);
            for c in &done {
                assert_eq!(c.result, ALIGN as i32);
                assert!(seen.insert(c.tag), "tag {} twice", c.tag);
            }
        }
        assert_eq!(e.in_flight(), 0);
        done.clear();
        assert_eq!(e.reap(&mut done), 0);
    }

    #[test]
    fn reads_past_eof_are_short() {
        let tf = TempFile::new("eof");
        let f = tf.open(true);
        f.set_len(3 * ALIGN as u64).unwrap();
        let mut e = UringEngine::new(&f, 8).unwrap();
        let buf = Buf::new(4 * ALIGN);
        // 4 blocks from block 1: only 2 exist. 2 iovecs from block 2: 1 exists. At EOF: 0.
        let cases: [(u64, Vec<libc::iovec>, i32); 4] = [
            (
                ALIGN as u64,
                vec![buf.iovec(0, 4 * ALIGN)],
                2 * ALIGN as i32,
            ),
            (
                2 * ALIGN as u64,
                vec![buf.iovec(0, ALIGN), buf.iovec(ALIGN, ALIGN)],
                ALIGN as i32,
            ),
            (3 * ALIGN as u64, vec![buf.iovec(0, ALIGN)], 0),
            (1 << 40, vec![buf.iovec(0, ALIGN)], 0),
        ];
        let mut done = Vec::new();
        for (i, (offset, iov, _)) in cases.iter().enumerate() {
            // SAFETY: the kernel writes `buf`, which outlives the drain right after and
            // is not read meanwhile; push copies `iov`.
            unsafe {
                e.push(
                    Op::Read {
                        offset: *offset,
                        iov,
                    },
                    i as u64,
                )
            }
            .unwrap();
            e.submit().unwrap();
            drain(&mut e, &mut done); // one at a time: the shared buffer
        }
        done.sort_by_key(|c| c.tag);
        let got: Vec<i32> = done.iter().map(|c| c.result).collect();
        let want: Vec<i32> = cases.iter().map(|c| c.2).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn backpressure_at_capacity() {
        let tf = TempFile::new("full");
        let f = tf.open(true);
        f.set_len(ALIGN as u64).unwrap();
        let mut e = UringEngine::new(&f, 4).unwrap();
        assert_eq!(e.capacity(), 4);
        let buf = Buf::new(ALIGN);
        let op = Op::Read {
            offset: 0,
            iov: &[buf.iovec(0, ALIGN)],
        };
        // Reads into the same buffer: fine for this test, contents unused.
        for t in 0..4 {
            // SAFETY: reads into `buf`, which the test never reads and which outlives the
            // drains below.
            unsafe { e.push(op, t) }.unwrap();
        }
        // SAFETY: as above; this push is refused and queues nothing.
        assert_eq!(unsafe { e.push(op, 4) }, Err(PushError::Full));
        let err: io::Error = PushError::Full.into();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // Still full after submit, even once all have completed, until reaped:
        // completed-but-unreaped ops hold CQ entries.
        e.submit().unwrap();
        while !poll_readable(e.eventfd(), 5000) {}
        std::thread::sleep(std::time::Duration::from_millis(20));
        // SAFETY: as above; this push is refused and queues nothing.
        assert_eq!(unsafe { e.push(op, 4) }, Err(PushError::Full));
        let mut done = Vec::new();
        drain(&mut e, &mut done);
        assert_eq!(done.len(), 4);
        // SAFETY: as above: `buf` outlives the drain below.
        unsafe { e.push(op, 4) }.unwrap();
        drain(&mut e, &mut done);
        assert_eq!(done.len(), 5);

        let many = vec![buf.iovec(0, 0); MAX_IOVECS + 1];
        let op = Op::Read {
            offset: 0,
            iov: &many,
        };
        // SAFETY: refused before anything is queued; no memory is touched.
        assert_eq!(unsafe { e.push(op, 0) }, Err(PushError::TooManyIovecs));
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn bad_fds_and_depths() {
        // An fd opened read-only: writes and fdatasync-free reads behave as the kernel says.
        let tf = TempFile::new("badf");
        tf.open(true).set_len(ALIGN as u64).unwrap();
        let ro = tf.open(false);
        let mut e = UringEngine::new(&ro, 8).unwrap();
        let buf = Buf::new(ALIGN);
        push_one(&mut e, true, &buf, 0, 1);
        let two = [buf.iovec(0, 2048), buf.iovec(2048, 2048)];
        // SAFETY: the kernel only reads `buf`, which outlives the drain below.
        unsafe {
            e.push(
                Op::Write {
                    offset: 0,
                    iov: &two,
                },
                2,
            )
        }
        .unwrap();
        push_one(&mut e, false, &buf, 0, 3);
        e.submit().unwrap();
        let mut done = Vec::new();
        drain(&mut e, &mut done);
        done.sort_by_key(|c| c.tag);
        assert_eq!(
            done[0],
            Completion {
                tag: 1,
                result: -libc::EBADF
            }
        );
        assert_eq!(
            done[1],
            Completion {
                tag: 2,
                result: -libc::EBADF
            }
        );
        assert_eq!(
            done[2],
            Completion {
                tag: 3,
                result: ALIGN as i32
            }
        );
        assert_eq!(
            done[0].bytes().unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );

        // A misaligned O_DIRECT read is just a completion: -EINVAL on most
        // filesystems, a (short) byte count where the kernel falls back
        // (ext4 on Linux 6.18 here returns 4095 from the 4096-byte file).
        let rw = tf.open(true);
        let mut e = UringEngine::new(&rw, 8).unwrap();
        push_one(&mut e, false, &buf, 1, 5);
        done.clear();
        drain(&mut e, &mut done);
        assert_eq!(done.len(), 1);
        assert!(done[0].result == -libc::EINVAL || done[0].result == ALIGN as i32 - 1);

        // A closed fd: clear error at construction. The number is the
        // process's open-file limit, which no descriptor can have (fds are
        // below it), so no test running in parallel can own it.
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only into `limit`, a local we own.
        let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(got, 0);
        let closed = RawFd::try_from(limit.rlim_cur).unwrap_or(RawFd::MAX);
        // SAFETY: `borrow_raw` wants an open fd and this number is never one,
        // on purpose; `new` only dups it (EBADF expected) and no memory is
        // involved.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(closed) };
        let err = UringEngine::new(borrowed, 8).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));

        let err = UringEngine::new(&rw, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(UringEngine::new(&rw, 1 << 30).is_err());
    }

    #[test]
    fn drop_waits_for_in_flight() {
        let tf = TempFile::new("drop");
        let f = tf.open(true);
        let buf = Buf::new(16 * ALIGN);
        {
            let mut e = UringEngine::new(&f, 16).unwrap();
            for b in 0..16 {
                let iov = [buf.iovec(b * ALIGN, ALIGN)];
                // SAFETY: the kernel reads `buf`, which outlives the engine; dropping the
                // engine waits for these writes.
                unsafe {
                    e.push(
                        Op::Write {
                            offset: (b * ALIGN) as u64,
                            iov: &iov,
                        },
                        0,
                    )
                }
                .unwrap();
            }
            e.submit().unwrap();
        } // dropped with 16 in flight, and one more never submitted below
        {
            let mut e = UringEngine::new(&f, 16).unwrap();
            // SAFETY: an fsync names no memory.
            unsafe { e.push(Op::Fsync, 0) }.unwrap();
        }
        assert_eq!(f.metadata().unwrap().len(), 16 * ALIGN as u64);
    }

    /// 10k random 4 KiB reads and writes at QD32 against an in-memory model.
    #[test]
    fn random_qd32_verified() {
        const BLOCKS: u64 = 256;
        const QD: usize = 32;
        let tf = TempFile::new("random");
        let f = tf.open(true);
        f.set_len(BLOCKS * ALIGN as u64).unwrap();
        let mut e = UringEngine::new(&f, QD as u32).unwrap();
        let mut model = vec![0u64; BLOCKS as usize]; // generation written to each block (0 = zeros)
        let mut busy = vec![false; BLOCKS as usize]; // one op per block at a time
        let mut bufs: Vec<Buf> = (0..QD).map(|_| Buf::new(ALIGN)).collect();
        let mut free_bufs: Vec<usize> = (0..QD).collect();
        // tag -> (block, buffer, is_write, generation)
        let mut ops: Vec<Option<(u64, usize, bool, u64)>> = vec![None; QD];
        let mut rng = 0x1234_5678_9abc_def1u64;
        let mut rand = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut issued, mut verified) = (0u32, 0u32);
        let mut done = Vec::new();
        while issued < 10_000 || e.in_flight() > 0 {
            while issued < 10_000 && !free_bufs.is_empty() {
                let block = rand() % BLOCKS;
                if busy[block as usize] {
                    continue;
                }
                let b = free_bufs.pop().unwrap();
                let is_write = rand() & 1 == 0;
                let gen = u64::from(issued) + 1;
                let offset = block * ALIGN as u64;
                if is_write {
                    // The buffer is idle (not in flight), so a plain &mut is fine.
                    pattern(gen, &mut bufs[b][..ALIGN]);
                }
                let iov = [bufs[b].iovec(0, ALIGN)];
                let op = if is_write {
                    Op::Write { offset, iov: &iov }
                } else {
                    Op::Read { offset, iov: &iov }
                };
                // SAFETY: `bufs[b]` came off `free_bufs`, so no other op uses it and the test
                // does not touch it until this tag is reaped; `bufs` is never resized and
                // outlives the loop, which runs until nothing is in flight.
                unsafe { e.push(op, b as u64) }.unwrap();
                busy[block as usize] = true;
                ops[b] = Some((block, b, is_write, gen));
                issued += 1;
            }
            e.submit_and_wait(1).unwrap();
            done.clear();
            e.reap(&mut done);
            for c in &done {
                let (block, b, is_write, gen) = ops[c.tag as usize].take().unwrap();
                assert_eq!(c.result, ALIGN as i32);
                if is_write {
                    model[block as usize] = gen;
                } else {
                    let mut want = [0u8; ALIGN];
                    if model[block as usize] != 0 {
                        pattern(model[block as usize], &mut want);
                    }
                    assert!(bufs[b][..] == want[..], "block {block} mismatch");
                    verified += 1;
                }
                busy[block as usize] = false;
                free_bufs.push(b);
            }
        }
        assert!(verified > 4000, "{verified}");
    }
}

/// Quick throughput figure against fio on the same file (ignored by default):
/// `cargo test --release -p vblock uring::bench -- --ignored --nocapture`.
#[cfg(test)]
mod bench {
    use super::tests::{poll_readable, Buf, TempFile, ALIGN};
    use super::*;
    use std::time::{Duration, Instant};

    const FILE_SIZE: u64 = 1 << 30;
    const QD: usize = 32;
    const RUN: Duration = Duration::from_secs(5);

    /// Random 4 KiB ops at QD32 for `RUN`, driven the way a vhost worker does:
    /// wait on the eventfd, clear it, reap, refill, submit once.
    fn run(e: &mut UringEngine, write: bool) -> f64 {
        let blocks = FILE_SIZE / ALIGN as u64;
        let bufs: Vec<Buf> = (0..QD).map(|_| Buf::new(ALIGN)).collect();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next_offset = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % blocks) * ALIGN as u64
        };
        let push = |e: &mut UringEngine, b: usize, offset: u64| {
            let iov = [bufs[b].iovec(0, ALIGN)];
            let op = if write {
                Op::Write { offset, iov: &iov }
            } else {
                Op::Read { offset, iov: &iov }
            };
            // SAFETY: `bufs[b]` serves only tag `b`, which is pushed again only after its
            // completion was reaped; `bufs` outlives the drain at the end of `run`.
            unsafe { e.push(op, b as u64) }.expect("push");
        };
        for b in 0..QD {
            push(e, b, next_offset());
        }
        e.submit().expect("submit");
        let mut done = Vec::with_capacity(QD);
        let mut ops = 0u64;
        let start = Instant::now();
        while start.elapsed() < RUN {
            poll_readable(e.eventfd(), 1000);
            e.clear_event();
            done.clear();
            e.reap(&mut done);
            for c in &done {
                assert_eq!(c.result, ALIGN as i32);
                ops += 1;
                push(e, c.tag as usize, next_offset());
            }
            e.submit().expect("submit");
        }
        let secs = start.elapsed().as_secs_f64();
        let mut rest = Vec::new();
        super::tests::drain(e, &mut rest);
        ops as f64 / secs
    }

    /// fio's IOPS from its terse output (v3: field 8 read IOPS, field 49 write).
    fn fio(path: &std::path::Path, rw: &str) -> Option<f64> {
        let out = std::process::Command::new("fio")
            .args([
                "--name=r",
                &format!("--filename={}", path.display()),
                "--direct=1",
                "--ioengine=io_uring",
                &format!("--rw={rw}"),
                "--bs=4k",
                "--iodepth=32",
                "--size=1G",
                "--runtime=5",
                "--time_based",
                "--output-format=terse",
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<&str> = text.trim().split(';').collect();
        let idx = if rw == "randread" { 7 } else { 48 };
        fields.get(idx)?.parse().ok()
    }

    #[test]
    #[ignore]
    fn qd32_4k_random_vs_fio() {
        let tf = TempFile::new("bench");
        let f = tf.open(true);
        // Lay the file out fully (sparse reads would be unrealistically fast).
        let mut e = UringEngine::new(&f, QD as u32).unwrap();
        let mut chunk = Buf::new(1 << 20);
        chunk.fill(0xa5);
        let mut done = Vec::new();
        for i in 0..(FILE_SIZE >> 20) {
            let iov = [chunk.iovec(0, 1 << 20)];
            // SAFETY: the kernel reads `chunk`, untouched from here and outliving the
            // drain below; push copies `iov`.
            while unsafe {
                e.push(
                    Op::Write {
                        offset: i << 20,
                        iov: &iov,
                    },
                    i,
                )
            }
            .is_err()
            {
                e.submit_and_wait(1).unwrap();
                e.reap(&mut done);
            }
        }
        super::tests::drain(&mut e, &mut done);
        // SAFETY: an fsync names no memory.
        unsafe { e.push(Op::Fsync, 0) }.unwrap();
        super::tests::drain(&mut e, &mut done);
        assert!(done.iter().all(|c| c.result >= 0));

        // Each pair runs back to back, twice, alternating who goes first: the
        // virtual disk here drifts by tens of percent between runs.
        println!(
            "file {} (1 GiB), 4 KiB random, QD{QD}, 5 s each",
            tf.path.display()
        );
        for round in 0..2 {
            for (name, write) in [("randread", false), ("randwrite", true)] {
                let (ours, theirs) = if round == 0 {
                    let ours = run(&mut e, write);
                    (ours, fio(&tf.path, name))
                } else {
                    let theirs = fio(&tf.path, name);
                    (run(&mut e, write), theirs)
                };
                match theirs {
                    Some(t) => println!(
                        "{name:9}: UringEngine {ours:>9.0} IOPS | fio io_uring {t:>9.0} IOPS | ratio {:.2}",
                        ours / t
                    ),
                    None => println!("{name:9}: UringEngine {ours:>9.0} IOPS | fio unavailable"),
                }
            }
        }
    }
}
