//! [`SimRing`]: an [`AsyncDev`] over a [`BlockDev`] (a [`SimDisk`] in the
//! crash tests) that completes operations in a seeded random order and can
//! crash with operations in flight. Test, fuzz and bench code only (feature
//! `sim`).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::AsyncDev;
use crate::dev::{BlockDev, SimDisk, SplitMix64};
use crate::uring::{Completion, Op, PushError, MAX_IOVECS};

/// What a pushed operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Fsync,
    Timeout,
}

struct SimOp {
    tag: u64,
    kind: Kind,
    offset: u64,
    /// A copy of the caller's iovecs (the memory stays the caller's).
    iov: Vec<libc::iovec>,
    /// An fsync: the disk's [`SimDisk::write_mark`] when it was submitted.
    mark: u64,
}

/// A simulated asynchronous device on `D`.
///
/// An operation does its I/O on `D` only when it *completes*, so a write
/// reaches the disk's volatile cache then. An fsync makes durable only the
/// writes that completed before it was *submitted*: io_uring does not order
/// an fsync against operations in flight, and one that completes while the
/// fsync runs may not be covered. Each [`reap`](AsyncDev::reap) completes a
/// random number of the submitted operations, in random order, drawn from
/// the seed: operations stay in flight across several polls, and later
/// ones overtake earlier ones. [`submit_and_wait`](AsyncDev::submit_and_wait)
/// completes as many as asked. Same seed, same pushes: same order.
///
/// [`crash`](Self::crash) is the disk after a power loss now: the writes
/// in flight are lost, kept or torn like the unflushed ones.
pub struct SimRing<D: BlockDev> {
    dev: D,
    /// The simulated disk under `dev`: its fsyncs and crashes.
    disk: Arc<SimDisk>,
    rng: SplitMix64,
    capacity: usize,
    /// Pushed, not submitted.
    queued: Vec<SimOp>,
    /// Submitted, not completed.
    running: Vec<SimOp>,
    /// Completed, not reaped.
    ready: VecDeque<Completion>,
    event: EventFd,
}

impl<D: BlockDev> SimRing<D> {
    /// A device on `dev` (`disk`, or a wrapper of it) taking at most
    /// `depth` operations in flight (at least 1), completing them in an
    /// order drawn from `seed`.
    pub fn new(dev: D, disk: Arc<SimDisk>, depth: u32, seed: u64) -> io::Result<Self> {
        Ok(SimRing {
            dev,
            disk,
            rng: SplitMix64::new(seed),
            capacity: depth.max(1) as usize,
            queued: Vec::new(),
            running: Vec::new(),
            ready: VecDeque::new(),
            event: EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    /// The device the operations go to.
    pub fn dev(&self) -> &D {
        &self.dev
    }

    /// The disk as it comes back after a power loss now:
    /// [`SimDisk::crash_with_unfinished`] with the writes submitted and not
    /// completed.
    pub fn crash(&self, seed: u64) -> SimDisk {
        let unfinished: Vec<(u64, Vec<u8>)> = self
            .running
            .iter()
            .filter(|op| op.kind == Kind::Write)
            // SAFETY: the op is in flight, so `push`'s contract keeps its
            // memory valid; it is only read.
            .map(|op| (op.offset, unsafe { gather(&op.iov) }))
            .collect();
        self.disk.crash_with_unfinished(seed, &unfinished)
    }

    /// Completes the running operation at `index`: its I/O happens now.
    fn complete(&mut self, index: usize) {
        let op = self.running.swap_remove(index);
        let len: usize = op.iov.iter().map(|v| v.iov_len).sum();
        let r = match op.kind {
            Kind::Read => {
                let mut buf = vec![0; len];
                self.dev.read_at(&mut buf, op.offset).map(|()| {
                    // SAFETY: the op is in flight: `push`'s contract keeps
                    // its memory valid, writable and unaccessed by others.
                    unsafe { scatter(&op.iov, &buf) }
                })
            }
            // SAFETY: as above; a write only reads the op's memory.
            Kind::Write => self.dev.write_at(&unsafe { gather(&op.iov) }, op.offset),
            Kind::Fsync => self.disk.flush_before(op.mark),
            Kind::Timeout => Err(io::Error::from_raw_os_error(libc::ETIME)),
        };
        let result = match r {
            Ok(()) if matches!(op.kind, Kind::Read | Kind::Write) => {
                i32::try_from(len).unwrap_or(i32::MAX)
            }
            Ok(()) => 0,
            Err(e) => -e.raw_os_error().unwrap_or(match e.kind() {
                io::ErrorKind::InvalidInput => libc::EINVAL,
                _ => libc::EIO,
            }),
        };
        self.ready.push_back(Completion {
            tag: op.tag,
            result,
        });
    }

    /// Completes one running operation, chosen at random.
    fn complete_one(&mut self) {
        let n = self.running.len() as u64;
        if n > 0 {
            let i = self.rng.below(n) as usize;
            self.complete(i);
        }
    }

    fn signal(&self) {
        if !self.running.is_empty() || !self.ready.is_empty() {
            // Only EAGAIN at a full counter, which is signalled anyway.
            let _ = self.event.write(1);
        }
    }
}

/// The bytes `iov` describes, in order.
///
/// # Safety
/// `iov` must describe valid memory.
unsafe fn gather(iov: &[libc::iovec]) -> Vec<u8> {
    let mut out = Vec::with_capacity(iov.iter().map(|v| v.iov_len).sum());
    for v in iov {
        // SAFETY: the caller guarantees `iov_len` readable bytes at `iov_base`.
        out.extend_from_slice(unsafe {
            std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
        });
    }
    out
}

/// Copies `data` into the memory `iov` describes (as far as both go).
///
/// # Safety
/// `iov` must describe valid, writable memory no one else accesses.
unsafe fn scatter(iov: &[libc::iovec], data: &[u8]) {
    let mut pos = 0;
    for v in iov {
        let n = v.iov_len.min(data.len() - pos);
        // SAFETY: `n` bytes fit both sides; the caller guarantees the
        // iovec's memory; `data` is our own buffer, a separate allocation.
        unsafe { std::ptr::copy_nonoverlapping(data[pos..].as_ptr(), v.iov_base as *mut u8, n) };
        pos += n;
    }
}

impl<D: BlockDev> AsyncDev for SimRing<D> {
    unsafe fn push(&mut self, op: Op<'_>, tag: u64) -> Result<(), PushError> {
        let (kind, offset, iov) = match op {
            Op::Read { offset, iov } => (Kind::Read, offset, iov),
            Op::Write { offset, iov } => (Kind::Write, offset, iov),
            Op::Fsync => (Kind::Fsync, 0, &[][..]),
            Op::Timeout(_) => (Kind::Timeout, 0, &[][..]),
        };
        if iov.len() > MAX_IOVECS {
            return Err(PushError::TooManyIovecs);
        }
        if self.in_flight() >= self.capacity {
            return Err(PushError::Full);
        }
        self.queued.push(SimOp {
            tag,
            kind,
            offset,
            iov: iov.to_vec(),
            mark: 0,
        });
        Ok(())
    }

    fn submit(&mut self) -> io::Result<usize> {
        let n = self.queued.len();
        let mark = self.disk.write_mark();
        for op in &mut self.queued {
            op.mark = mark;
        }
        self.running.append(&mut self.queued);
        self.signal();
        Ok(n)
    }

    fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        let n = self.submit()?;
        let want = want.min(self.in_flight());
        while self.ready.len() < want && !self.running.is_empty() {
            self.complete_one();
        }
        Ok(n)
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        let k = self.rng.below(self.running.len() as u64 + 1);
        for _ in 0..k {
            self.complete_one();
        }
        let n = self.ready.len();
        out.extend(self.ready.drain(..));
        self.signal();
        n
    }

    fn has_completions(&mut self) -> bool {
        // A reap may complete any submitted operation.
        !self.ready.is_empty() || !self.running.is_empty()
    }

    fn eventfd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    fn clear_event(&self) {
        let _ = self.event.read();
    }

    fn in_flight(&self) -> usize {
        self.queued.len() + self.running.len() + self.ready.len()
    }

    fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queues a write of `data` at `offset` with `tag`.
    ///
    /// # Safety
    /// `data` must stay valid until the write is reaped or the ring dropped.
    unsafe fn push_write(ring: &mut SimRing<Arc<SimDisk>>, data: &[u8], offset: u64, tag: u64) {
        let iov = [libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        }];
        // SAFETY: the caller's contract is `push`'s.
        unsafe { ring.push(Op::Write { offset, iov: &iov }, tag) }.unwrap();
    }

    /// Pushes 16 one-sector writes (sector `i` filled with `i + 1`), submits
    /// them, and reaps until all are back; returns the tags per reap call.
    fn run(seed: u64) -> Vec<Vec<u64>> {
        let disk = Arc::new(SimDisk::new(16 * 512));
        let mut ring = SimRing::new(disk.clone(), disk.clone(), 16, seed).unwrap();
        let bufs: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i + 1; 512]).collect();
        for (i, b) in bufs.iter().enumerate() {
            // SAFETY: `bufs` outlives the ring's operations (all reaped below).
            unsafe { push_write(&mut ring, b, i as u64 * 512, i as u64) };
        }
        let extra = [libc::iovec {
            iov_base: bufs[0].as_ptr() as *mut _,
            iov_len: 512,
        }];
        let op = Op::Write {
            offset: 0,
            iov: &extra,
        };
        // SAFETY: refused: nothing is queued.
        assert_eq!(unsafe { ring.push(op, 99) }, Err(PushError::Full));
        ring.submit().unwrap();
        let mut polls = Vec::new();
        while ring.in_flight() > 0 {
            let mut out = Vec::new();
            ring.reap(&mut out);
            assert!(out.iter().all(|c| c.result == 512));
            polls.push(out.iter().map(|c| c.tag).collect());
        }
        assert_eq!(disk.stats().writes, 16);
        polls
    }

    #[test]
    fn completes_in_a_seeded_random_order_across_polls() {
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same order");
        let mut all: Vec<u64> = a.concat();
        assert_ne!(all, (0..16).collect::<Vec<_>>(), "not in push order");
        all.sort();
        assert_eq!(all, (0..16).collect::<Vec<_>>(), "each tag exactly once");
        assert!(a.len() > 2, "ops stay in flight across polls: {a:?}");
        assert_ne!(a, run(8));
    }

    #[test]
    fn a_crash_loses_keeps_or_tears_writes_in_flight() {
        let disk = Arc::new(SimDisk::new(8 * 512));
        let mut ring = SimRing::new(disk.clone(), disk.clone(), 4, 1).unwrap();
        let data = vec![9u8; 8 * 512];
        // SAFETY: `data` outlives the ring.
        unsafe { push_write(&mut ring, &data, 0, 1) };
        // Queued only: it cannot have reached the disk.
        assert!((0..20).all(|s| ring.crash(s).snapshot_durable() == vec![0; 8 * 512]));
        ring.submit().unwrap();
        let mut kept = [false; 3];
        for seed in 0..60 {
            let img = ring.crash(seed).snapshot_durable();
            let nines = img.chunks(512).filter(|s| s[0] == 9).count();
            kept[match nines {
                0 => 0,
                8 => 2,
                _ => 1,
            }] = true;
        }
        assert_eq!(kept, [true; 3], "dropped, torn and kept all happen");
        assert_eq!(disk.stats().writes, 0, "a crash changes nothing");
        ring.submit_and_wait(1).unwrap();
        let mut out = Vec::new();
        ring.reap(&mut out);
        assert_eq!(
            out,
            [Completion {
                tag: 1,
                result: 4096
            }]
        );
    }

    #[test]
    fn an_fsync_covers_only_writes_completed_before_it_was_submitted() {
        let disk = Arc::new(SimDisk::new(8 * 512));
        let mut ring = SimRing::new(disk.clone(), disk.clone(), 4, 3).unwrap();
        let data = vec![5u8; 512];
        let mut out = Vec::new();
        // SAFETY: `data` outlives the ring.
        unsafe { push_write(&mut ring, &data, 0, 1) };
        ring.submit_and_wait(1).unwrap();
        ring.reap(&mut out);
        // The fsync and a second write go in together: whatever the order
        // they complete in, the fsync does not cover the second write.
        // SAFETY: as above; an fsync names no memory.
        unsafe {
            push_write(&mut ring, &data, 512, 2);
            ring.push(Op::Fsync, 3).unwrap();
        }
        ring.submit_and_wait(2).unwrap();
        ring.reap(&mut out);
        out.sort_by_key(|c| c.tag);
        let results: Vec<i32> = out.iter().map(|c| c.result).collect();
        assert_eq!(results, [512, 512, 0]);
        assert_eq!(disk.stats().pending_writes, 1);
        assert_eq!(
            disk.snapshot_durable()[..1024],
            [[5u8; 512], [0; 512]].concat()
        );
    }
}
