//! Submit: planned pieces become operations in a window of at most the
//! device's capacity, each with the memory it needs (caller memory in
//! place, a bounce buffer from a bounded pool, the shared zero buffer),
//! pushed to the device in order.

use std::collections::VecDeque;

use super::device::AsyncDev;
use super::iov::{aligned, copy_iov, slice_iov};
use super::plan::{Planned, Stage};
use super::request::{EngineStats, Requests};
use crate::dev::AlignedBuf;
use crate::pool::{IoFaults, Piece};
use crate::uring::{Op, PushError};

/// Ops pushed between two submissions within one [`Window::push`]. One
/// `io_uring_enter` for a whole batch holds every op in the block layer's
/// plug until its end; a disk that serves requests one after another (a VM's
/// virtio disk, as on the machine of the README's figures) then idles while
/// the batch is built. Smaller batches start it on the first ops while the
/// others are submitted (4 measured best of 1, 2, 4, 8 and unbatched with
/// `benches/blk_io.rs`; README "Disk exports").
pub const SUBMIT_EVERY: usize = 4;

/// Bounce buffer memory of one engine (one queue): misaligned pieces beyond
/// it wait for a buffer to come back.
pub const BOUNCE_BYTES: usize = 4 << 20;

/// The engine's bounce buffers (one cluster each), at most `max` of them.
struct BouncePool {
    free: Vec<AlignedBuf>,
    live: usize,
    max: usize,
    size: usize,
}

impl BouncePool {
    fn new(cluster_size: usize) -> Self {
        BouncePool {
            free: Vec::new(),
            live: 0,
            max: (BOUNCE_BYTES / cluster_size).max(2),
            size: cluster_size,
        }
    }

    fn take(&mut self) -> Option<AlignedBuf> {
        if let Some(b) = self.free.pop() {
            return Some(b);
        }
        if self.live == self.max {
            return None;
        }
        self.live += 1;
        Some(AlignedBuf::new(self.size))
    }

    fn give(&mut self, b: AlignedBuf) {
        // Never keep more than the pool's share (a buffer made outside it
        // is simply dropped).
        if self.free.len() < self.max {
            self.free.push(b);
        }
    }
}

/// One operation of a piece, from its build until its completion.
pub(super) struct PieceOp {
    pub(super) req: usize,
    pub(super) piece: Piece,
    pub(super) stage: Stage,
    /// Device offset and iovecs of the operation to push.
    pub(super) dev_off: u64,
    pub(super) iov: Vec<libc::iovec>,
    pub(super) bounce: Option<AlignedBuf>,
}

/// The pieces planned and the operations running, by slot (the device tag).
pub(super) struct Window {
    ops: Vec<Option<PieceOp>>,
    free_ops: Vec<usize>,
    /// Ops built but not yet accepted by the device.
    backlog: VecDeque<usize>,
    /// Pieces planned, waiting for room in the window or a bounce buffer.
    planned: VecDeque<Planned>,
    bounce: BouncePool,
    /// One cluster of zeros: the part of a new cluster around the data.
    zeros: AlignedBuf,
}

impl Window {
    pub(super) fn new(cluster_size: usize) -> Self {
        Window {
            ops: Vec::new(),
            free_ops: Vec::new(),
            backlog: VecDeque::new(),
            planned: VecDeque::new(),
            bounce: BouncePool::new(cluster_size),
            zeros: AlignedBuf::new(cluster_size),
        }
    }

    /// Bounce buffers allocated so far.
    pub(super) fn bounce_buffers(&self) -> usize {
        self.bounce.live
    }

    /// Queues a request's planned pieces behind those already waiting.
    pub(super) fn plan(&mut self, planned: Vec<Planned>) {
        self.planned.extend(planned);
    }

    /// Moves planned pieces into running ops while the window (`capacity`)
    /// has room and each finds the bounce buffer it needs (in order: a piece
    /// waiting for a buffer holds back the ones behind it, so none starves).
    pub(super) fn fill(&mut self, capacity: usize, requests: &Requests, stats: &mut EngineStats) {
        while let Some(p) = self.planned.front() {
            if self.ops.len() - self.free_ops.len() >= capacity {
                break;
            }
            let user = slice_iov(&requests.get(p.req).iov, p.piece.at, p.piece.len);
            let needs_bounce = match p.stage {
                Stage::CowRead { .. } => true,
                _ => !aligned(&user),
            };
            let bounce = if needs_bounce {
                match self.bounce.take() {
                    Some(b) => Some(b),
                    None => break,
                }
            } else {
                None
            };
            let Some(p) = self.planned.pop_front() else {
                break;
            };
            let op = self.build(p, user, bounce, stats);
            let slot = match self.free_ops.pop() {
                Some(i) => {
                    self.ops[i] = Some(op);
                    i
                }
                None => {
                    self.ops.push(Some(op));
                    self.ops.len() - 1
                }
            };
            self.backlog.push_back(slot);
        }
    }

    /// The I/O of one planned piece on `user` (its part of the caller's
    /// memory); `bounce` is the buffer it needs (misaligned caller memory,
    /// copy-on-write), from the engine's pool.
    fn build(
        &mut self,
        p: Planned,
        user: Vec<libc::iovec>,
        bounce: Option<AlignedBuf>,
        stats: &mut EngineStats,
    ) -> PieceOp {
        let cs = self.zeros.len();
        let piece = p.piece;
        let mut op = PieceOp {
            req: p.req,
            piece,
            dev_off: p.cluster_off + piece.within as u64,
            iov: Vec::new(),
            bounce: None,
            stage: p.stage,
        };
        match (&op.stage, bounce) {
            (Stage::Read { .. } | Stage::Write { .. }, None) => op.iov = user,
            (Stage::Read { .. } | Stage::Write { .. }, Some(mut b)) => {
                stats.bounced += 1;
                if matches!(op.stage, Stage::Write { .. }) {
                    // SAFETY: `user` is part of the live request's iovecs (valid
                    // and untouched by the caller until its completion, per
                    // `submit`); the copy only reads it, into `b`, the op's own
                    // bounce buffer that no I/O uses yet.
                    unsafe { copy_iov(&user, &mut b[..piece.len], false) };
                }
                op.iov = vec![b.iovec(0, piece.len)];
                op.bounce = Some(b);
            }
            (Stage::CowRead { .. }, b) => {
                let b = b.unwrap_or_else(|| AlignedBuf::new(cs));
                op.dev_off = p.cluster_off;
                op.iov = vec![b.iovec(0, cs)];
                op.bounce = Some(b);
            }
            (Stage::Fill { .. }, None) => {
                op.dev_off = p.cluster_off;
                let tail = cs - piece.within - piece.len;
                let mut iov = Vec::with_capacity(user.len() + 2);
                if piece.within > 0 {
                    iov.push(self.zeros.iovec(0, piece.within));
                }
                iov.extend(user);
                if tail > 0 {
                    iov.push(self.zeros.iovec(0, tail));
                }
                op.iov = iov;
            }
            (Stage::Fill { .. }, Some(mut b)) => {
                op.dev_off = p.cluster_off;
                stats.bounced += 1;
                // A reused buffer holds another piece's data: zeros around.
                let end = piece.within + piece.len;
                b[..piece.within].fill(0);
                b[end..].fill(0);
                // SAFETY: as for the bounced write above: `user` is the live
                // request's memory, only read; `b` is not yet given to the kernel.
                unsafe { copy_iov(&user, &mut b[piece.within..end], false) };
                op.iov = vec![b.iovec(0, cs)];
                op.bounce = Some(b);
            }
        }
        op
    }

    /// Pushes the backlog to `ring` in order until it is full, submitting
    /// every [`SUBMIT_EVERY`] ops (the caller submits the rest). Ops that
    /// fail before reaching it (an injected fault, too many iovecs) are
    /// appended to `failed` as (slot, -errno) for the caller to complete.
    pub(super) fn push<R: AsyncDev>(
        &mut self,
        ring: &mut R,
        faults: &IoFaults,
        failed: &mut Vec<(usize, i32)>,
    ) {
        let mut pushed = 0usize;
        while let Some(&slot) = self.backlog.front() {
            let Some(op) = self.ops[slot].as_ref() else {
                self.backlog.pop_front();
                continue;
            };
            let len: usize = op.iov.iter().map(|v| v.iov_len).sum();
            if faults.hits(op.dev_off, len as u64) {
                self.backlog.pop_front();
                failed.push((slot, -libc::EIO));
                continue;
            }
            let ring_op = match op.stage {
                Stage::Read { .. } | Stage::CowRead { .. } => Op::Read {
                    offset: op.dev_off,
                    iov: &op.iov,
                },
                Stage::Write { .. } | Stage::Fill { .. } => Op::Write {
                    offset: op.dev_off,
                    iov: &op.iov,
                },
            };
            // SAFETY: the iovecs point at caller memory (submit contract),
            // the op's own bounce buffer or the engine's zero buffer, all
            // alive until this op's completion is reaped.
            match unsafe { ring.push(ring_op, slot as u64) } {
                Ok(()) => {
                    self.backlog.pop_front();
                    pushed += 1;
                    if pushed.is_multiple_of(SUBMIT_EVERY) {
                        // Errors and what stays queued: the caller's
                        // submit after the push sees them.
                        let _ = ring.submit();
                    }
                }
                Err(PushError::Full) => break,
                Err(PushError::TooManyIovecs) => {
                    self.backlog.pop_front();
                    failed.push((slot, -libc::EINVAL));
                }
            }
        }
    }

    /// Takes the op in `slot` out for its completion.
    pub(super) fn take(&mut self, slot: usize) -> Option<PieceOp> {
        self.ops.get_mut(slot).and_then(Option::take)
    }

    /// Puts an op back for its next operation (copy-on-write's write).
    pub(super) fn again(&mut self, slot: usize, op: PieceOp) {
        self.ops[slot] = Some(op);
        self.backlog.push_back(slot);
    }

    /// The op from `slot` is finished: the slot and its buffer are free.
    pub(super) fn release(&mut self, slot: usize, op: PieceOp) {
        self.free_ops.push(slot);
        if let Some(b) = op.bounce {
            self.bounce.give(b);
        }
    }
}
