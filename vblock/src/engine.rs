//! The asynchronous volume datapath: request -> map -> io_uring -> complete.
//!
//! One [`VolumeEngine`] per queue (its own io_uring), all sharing one pool
//! behind a mutex held only to resolve mappings and publish records, never
//! across I/O. Each request is split at cluster boundaries; each piece
//! becomes one operation:
//!
//! - read of a mapped cluster: one READ(V) into the caller's buffers; an
//!   unmapped one is zero-filled without I/O;
//! - overwrite of an exclusive cluster: one WRITE(V) in place;
//! - first write: one WRITEV of the whole new cluster (zeros around the
//!   data, from a shared zero buffer), then `Map`;
//! - copy-on-write: READ of the shared cluster into a bounce buffer, the
//!   data patched in, WRITE of the whole new cluster, then `Map`.
//!
//! Caller buffers go straight to the kernel when they are 512-aligned
//! (address and length); otherwise the piece bounces through an aligned
//! buffer. Clusters with I/O in flight are pinned in the pool so a discard
//! plus flush elsewhere cannot hand them to another volume under the I/O.
//! Completions are signalled on [`VolumeEngine::eventfd`].
//!
//! Bounded by construction, whatever the caller sends: a read or write moves
//! at most [`MAX_REQUEST_BYTES`] (larger ones fail with
//! [`PoolError::TooLarge`]); a request's pieces are planned at once (metadata
//! only, a few dozen bytes each) but run in a window of at most the ring's
//! depth of operations, and every bounce buffer comes from the engine's pool
//! of [`BOUNCE_BYTES`] (a piece waits for one rather than allocating). The
//! pool lock is never held while caller memory or a bounce buffer is touched
//! (zero-fill of unmapped ranges included).
//!
//! Flushes (and changes with an [`IoRequest::durable`] other than
//! [`Durability::Io`]) share one fsync round at a time: `IORING_OP_FSYNC`
//! (datasync) on the ring, off the pool lock, then the journal under the
//! lock, which writes (and for a flush or write-through, flushes) only the
//! journal blocks unless new `Map` records were queued during the fsync
//! ([`Pool::commit_flushed`], [`Pool::stage_flushed`]). Order: data durable,
//! then the records naming it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::dev::{AlignedBuf, BlockDev};
use crate::pool::{IoFaults, Piece, Pool, PoolError, WritePlan};
use crate::uring::{Completion, Op, PushError, UringEngine};

pub mod device;
#[cfg(any(test, feature = "sim"))]
mod sim;

pub use device::AsyncDev;
#[cfg(any(test, feature = "sim"))]
pub use sim::SimRing;

/// Alignment of caller buffers that can go to O_DIRECT I/O without a bounce.
pub const IO_ALIGN: usize = 512;

/// Most bytes one read or write may move. 4 MiB: at or above the request size
/// Linux guests build by default (`max_sectors_kb`), so their streaming I/O is
/// not split further; what the engine holds per request is bounded by
/// [`BOUNCE_BYTES`] and the ring depth, not by this.
pub const MAX_REQUEST_BYTES: u64 = 4 << 20;

/// Bounce buffer memory of one engine (one queue): misaligned pieces beyond
/// it wait for a buffer to come back.
pub const BOUNCE_BYTES: usize = 4 << 20;

/// Ring tags above every op slot: the flush round's fsync and its delay.
const FSYNC_TAG: u64 = u64::MAX;
const SYNC_DELAY_TAG: u64 = u64::MAX - 1;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
    /// Makes every completed write durable (the pool's commit).
    Flush,
    /// Releases whole clusters, zeroes partial ones.
    Discard,
    /// Same effect as `Discard`.
    WriteZeroes,
}

/// One request. `iov` describes `len` bytes of caller memory (ignored for
/// flush, discard, write-zeroes).
#[derive(Debug)]
pub struct IoRequest {
    /// Caller's tag, returned in the completion.
    pub tag: u64,
    pub volume: u32,
    pub kind: IoKind,
    pub offset: u64,
    pub len: u64,
    pub iov: Vec<libc::iovec>,
    /// What a write, discard or write-zeroes must survive before it
    /// completes (ignored for reads and flushes).
    pub durable: Durability,
}

/// What a change must survive before it completes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Nothing beyond its own I/O: the caller flushes the pool itself.
    #[default]
    Io,
    /// The death of this process: the metadata it created is written to the
    /// journal, not flushed, at the next fsync round ([`Pool::stage_flushed`];
    /// at once when nothing is pending). A write-back cache that a restarted
    /// daemon must still have.
    ProcessDeath,
    /// A power loss (write-through): it waits for the next fsync round and
    /// journal commit, like a flush.
    PowerLoss,
}

/// A finished request.
#[derive(Debug)]
pub struct IoCompletion {
    pub tag: u64,
    pub result: Result<(), PoolError>,
}

/// Counters of one engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub requests: u64,
    pub errors: u64,
    /// Pieces that went through a bounce buffer (misaligned caller memory).
    pub bounced: u64,
    /// Times a request waited for an allocating write to the same cluster.
    pub deferred: u64,
    /// Bounce buffers allocated so far: never more than
    /// `max(2, BOUNCE_BYTES / cluster size)`, reused after that.
    pub bounce_buffers: u64,
}

struct Request {
    tag: u64,
    volume: u32,
    kind: IoKind,
    offset: u64,
    len: u64,
    iov: Vec<libc::iovec>,
    durable: Durability,
    pending: usize,
    error: Option<PoolError>,
}

/// A planned piece not yet running (see the module docs: the window).
struct Planned {
    req: usize,
    piece: Piece,
    stage: Stage,
    cluster_off: u64,
}

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

/// The fsync round in flight: what it covers.
struct FlushRound {
    /// [`Pool::data_mark`] read before the fsync was pushed.
    mark: u64,
    /// Requests completed by this round.
    waiters: Vec<usize>,
    /// Some waiter needs a power loss survived (a flush, write-through), not
    /// only the death of this process.
    power_loss: bool,
    /// The fsync itself is pushed (not just its injected delay).
    synced: bool,
}

enum Stage {
    /// Read into the request's memory (or `bounce`, copied out after).
    Read { pcluster: u32 },
    /// In-place write.
    Write { pcluster: u32 },
    /// Copy-on-write, first half: reading `source` into `bounce`.
    CowRead { source: u32, pcluster: u32 },
    /// Whole-cluster write of a new cluster, then `Map`.
    Fill { source: Option<u32>, pcluster: u32 },
}

struct PieceOp {
    req: usize,
    piece: Piece,
    stage: Stage,
    /// Device offset and iovecs of the operation to push.
    dev_off: u64,
    iov: Vec<libc::iovec>,
    bounce: Option<AlignedBuf>,
}

/// An io_uring datapath for volumes of one pool. See the module docs.
///
/// `R` is the device under it: the io_uring itself, or a simulated one for
/// crash tests ([`AsyncDev`]).
pub struct VolumeEngine<D: BlockDev, R: AsyncDev = UringEngine> {
    pool: Arc<Mutex<Pool<D>>>,
    ring: R,
    requests: Vec<Option<Request>>,
    free_requests: Vec<usize>,
    ops: Vec<Option<PieceOp>>,
    free_ops: Vec<usize>,
    /// Requests not started yet (waiting for an allocation in flight).
    waiting: VecDeque<usize>,
    /// Ops built but not yet accepted by the ring.
    backlog: VecDeque<usize>,
    /// Pieces planned, waiting for room in the window or a bounce buffer.
    planned: VecDeque<Planned>,
    bounce: BouncePool,
    /// Requests waiting for the next fsync round.
    flush_waiting: Vec<(usize, Durability)>,
    flush_round: Option<FlushRound>,
    done: Vec<IoCompletion>,
    zeros: AlignedBuf,
    cqes: Vec<Completion>,
    stats: EngineStats,
    faults: Arc<IoFaults>,
}

// SAFETY: the raw pointers in the iovecs describe caller memory handed over
// through `unsafe fn submit`, whose contract keeps it valid from any thread
// until the completion is returned; the engine is used by one thread at a time.
unsafe impl<D: BlockDev, R: AsyncDev + Send> Send for VolumeEngine<D, R> {}

fn lock<D: BlockDev>(pool: &Mutex<Pool<D>>) -> MutexGuard<'_, Pool<D>> {
    // A panic elsewhere cannot leave the pool half-changed: every pool
    // operation validates before it mutates.
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

fn aligned(iov: &[libc::iovec]) -> bool {
    iov.iter().all(|v| {
        (v.iov_base as usize).is_multiple_of(IO_ALIGN) && v.iov_len.is_multiple_of(IO_ALIGN)
    })
}

/// The part `[at, at + len)` of the memory `iov` describes.
fn slice_iov(iov: &[libc::iovec], mut at: usize, mut len: usize) -> Vec<libc::iovec> {
    let mut out = Vec::new();
    for v in iov {
        if len == 0 {
            break;
        }
        if at >= v.iov_len {
            at -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - at).min(len);
        out.push(libc::iovec {
            // SAFETY: pointer arithmetic only, nothing is read: `at < iov_len`,
            // so the result stays inside the region this iovec describes.
            iov_base: unsafe { (v.iov_base as *mut u8).add(at) }.cast(),
            iov_len: n,
        });
        len -= n;
        at = 0;
    }
    out
}

/// Copies between caller memory described by `iov` and `buf`.
///
/// # Safety
/// `iov` must describe valid memory (the `submit` contract).
unsafe fn copy_iov(iov: &[libc::iovec], buf: &mut [u8], to_iov: bool) {
    let mut pos = 0;
    for v in iov {
        let n = v.iov_len.min(buf.len() - pos);
        let p = v.iov_base as *mut u8;
        // SAFETY: `n` is at most `iov_len`, and the caller guarantees the
        // iovec's memory is valid (writable when `to_iov`) and touched by no one
        // else while the request is in flight; `n <= buf.len() - pos` keeps the
        // other side inside `buf`. `buf` is the engine's own bounce buffer, a
        // separate allocation from caller memory, so the two never overlap.
        unsafe {
            if to_iov {
                std::ptr::copy_nonoverlapping(buf[pos..].as_ptr(), p, n);
            } else {
                std::ptr::copy_nonoverlapping(p, buf[pos..].as_mut_ptr(), n);
            }
        }
        pos += n;
    }
}

/// Zero-fills caller memory.
///
/// # Safety
/// As [`copy_iov`].
unsafe fn zero_iov(iov: &[libc::iovec]) {
    for v in iov {
        // SAFETY: the caller guarantees each iovec describes `iov_len` bytes of
        // writable memory that nothing else accesses until the request completes.
        unsafe { std::ptr::write_bytes(v.iov_base as *mut u8, 0, v.iov_len) };
    }
}

impl<D: BlockDev> VolumeEngine<D> {
    /// An engine with an io_uring of `depth` on `file` (the pool's device,
    /// opened O_DIRECT).
    pub fn new(pool: Arc<Mutex<Pool<D>>>, file: impl AsFd, depth: u32) -> io::Result<Self> {
        Ok(Self::with_device(pool, UringEngine::new(file, depth)?))
    }
}

impl<D: BlockDev, R: AsyncDev> VolumeEngine<D, R> {
    /// An engine on `ring`, a device over the pool's (see [`AsyncDev`]).
    pub fn with_device(pool: Arc<Mutex<Pool<D>>>, ring: R) -> Self {
        let (cs, faults) = {
            let p = lock(&pool);
            (p.metadata().cluster_size() as usize, p.io_faults().clone())
        };
        Self {
            ring,
            pool,
            requests: Vec::new(),
            free_requests: Vec::new(),
            ops: Vec::new(),
            free_ops: Vec::new(),
            waiting: VecDeque::new(),
            backlog: VecDeque::new(),
            planned: VecDeque::new(),
            bounce: BouncePool::new(cs),
            flush_waiting: Vec::new(),
            flush_round: None,
            done: Vec::new(),
            zeros: AlignedBuf::new(cs),
            cqes: Vec::new(),
            stats: EngineStats::default(),
            faults,
        }
    }

    /// The device under the engine (a test crashes a simulated one).
    pub fn device(&self) -> &R {
        &self.ring
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<Mutex<Pool<D>>> {
        &self.pool
    }

    /// Readable when completions are ready (put it on the worker's epoll).
    pub fn eventfd(&self) -> RawFd {
        self.ring.eventfd()
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            bounce_buffers: self.bounce.live as u64,
            ..self.stats
        }
    }

    /// Requests accepted and not yet returned by [`poll`](Self::poll).
    pub fn in_flight(&self) -> usize {
        self.requests.len() - self.free_requests.len()
    }

    /// Accepts a request; its completion comes from [`poll`](Self::poll).
    /// Invalid requests (unknown volume, misaligned, out of range, write to
    /// a snapshot) complete with an error and touch nothing.
    ///
    /// # Safety
    /// The memory `req.iov` describes must be valid for `req.len` bytes
    /// (writable for reads) and stay valid and otherwise unaccessed until
    /// the request's completion has been returned by `poll` (or the engine
    /// is dropped, which waits for in-flight I/O).
    pub unsafe fn submit(&mut self, req: IoRequest) {
        self.stats.requests += 1;
        let covered: usize = req.iov.iter().map(|v| v.iov_len).sum();
        let data = matches!(req.kind, IoKind::Read | IoKind::Write);
        let checked = {
            let pool = lock(&self.pool);
            match req.kind {
                IoKind::Flush => Ok(()),
                _ if data && req.len > MAX_REQUEST_BYTES => Err(PoolError::TooLarge {
                    len: req.len,
                    max: MAX_REQUEST_BYTES,
                }),
                _ if data && (covered as u64) < req.len => Err(PoolError::Unaligned {
                    offset: req.offset,
                    len: req.len,
                }),
                kind => pool.check_request(req.volume, req.offset, req.len, kind != IoKind::Read),
            }
        };
        let r = Request {
            tag: req.tag,
            volume: req.volume,
            kind: req.kind,
            offset: req.offset,
            len: req.len,
            iov: req.iov,
            durable: req.durable,
            pending: 0,
            error: None,
        };
        if let Err(e) = checked {
            self.finish(r, Some(e));
            return;
        }
        let index = match self.free_requests.pop() {
            Some(i) => {
                self.requests[i] = Some(r);
                i
            }
            None => {
                self.requests.push(Some(r));
                self.requests.len() - 1
            }
        };
        self.waiting.push_back(index);
    }

    fn finish(&mut self, r: Request, error: Option<PoolError>) {
        if error.is_some() {
            self.stats.errors += 1;
        }
        self.done.push(IoCompletion {
            tag: r.tag,
            result: error.map_or(Ok(()), Err),
        });
    }

    /// Starts what can start, reaps completions, advances each request, and
    /// appends finished requests to `out`. Never blocks.
    pub fn poll(&mut self, out: &mut Vec<IoCompletion>) -> io::Result<()> {
        self.ring.clear_event();
        self.reap();
        self.start_waiting();
        self.fill_window();
        self.push_backlog();
        self.start_flush_round();
        loop {
            match self.ring.submit() {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) => break,
                Err(e) => return Err(e),
            }
        }
        out.append(&mut self.done);
        Ok(())
    }

    /// Blocks until at least one operation completes (if any is in
    /// flight), then [`poll`](Self::poll)s. For benches and tests; a vhost
    /// worker waits on the eventfd.
    pub fn wait(&mut self, out: &mut Vec<IoCompletion>) -> io::Result<()> {
        self.poll(out)?;
        if out.is_empty() && self.ring.in_flight() > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
            self.poll(out)?;
        }
        Ok(())
    }

    fn start_waiting(&mut self) {
        let mut still = VecDeque::new();
        while let Some(index) = self.waiting.pop_front() {
            if !self.start(index) {
                still.push_back(index);
            }
        }
        self.waiting = still;
    }

    /// Starts request `index`; false if it must wait.
    fn start(&mut self, index: usize) -> bool {
        let Some(r) = self.requests[index].as_ref() else {
            return true;
        };
        let (volume, kind, offset, len) = (r.volume, r.kind, r.offset, r.len);
        if kind == IoKind::Flush {
            self.flush_waiting.push((index, Durability::PowerLoss));
            return true;
        }
        // Unmapped read pieces, zero-filled once the lock is dropped.
        let mut zero = Vec::new();
        let pool = Arc::clone(&self.pool);
        let mut pool = lock(&pool);
        let cs = pool.metadata().cluster_size();
        let result = match kind {
            IoKind::Flush => Ok(Vec::new()), // taken above: no lock needed
            IoKind::Discard | IoKind::WriteZeroes => {
                if pool.is_allocating(volume, offset, len) {
                    self.stats.deferred += 1;
                    return false;
                }
                pool.discard(volume, offset, len).map(|()| Vec::new())
            }
            IoKind::Read => {
                let mut ops = Vec::new();
                let mut err = None;
                for p in crate::pool::pieces(cs, offset, len) {
                    match pool.plan_read(volume, p.vcluster) {
                        Ok(Some(pc)) => ops.push((p, Stage::Read { pcluster: pc })),
                        Ok(None) => zero.push(p),
                        Err(e) => {
                            err = Some(e);
                            break;
                        }
                    }
                }
                match err {
                    Some(e) => {
                        for (_, s) in &ops {
                            if let Stage::Read { pcluster } = s {
                                pool.unpin(*pcluster);
                            }
                        }
                        Err(e)
                    }
                    None => Ok(ops),
                }
            }
            IoKind::Write => match pool.plan_write(volume, offset, len) {
                Ok(None) => {
                    self.stats.deferred += 1;
                    return false;
                }
                Ok(Some(plans)) => Ok(plans
                    .into_iter()
                    .map(|(p, plan)| {
                        let stage = match plan {
                            WritePlan::InPlace { pcluster } => Stage::Write { pcluster },
                            // A piece covering the whole cluster replaces it:
                            // nothing to copy first.
                            WritePlan::Allocate {
                                pcluster,
                                source: Some(source),
                            } if p.len == cs as usize => Stage::Fill {
                                source: Some(source),
                                pcluster,
                            },
                            WritePlan::Allocate {
                                pcluster,
                                source: Some(source),
                            } => Stage::CowRead { source, pcluster },
                            WritePlan::Allocate {
                                pcluster,
                                source: None,
                            } => Stage::Fill {
                                source: None,
                                pcluster,
                            },
                        };
                        (p, stage)
                    })
                    .collect()),
                Err(e) => Err(e),
            },
        };
        let planned: Vec<Planned> = match result {
            Ok(ops) => ops
                .into_iter()
                .map(|(piece, stage)| {
                    let pc = match &stage {
                        Stage::Read { pcluster } | Stage::Write { pcluster } => *pcluster,
                        Stage::CowRead { source, .. } => *source,
                        Stage::Fill { pcluster, .. } => *pcluster,
                    };
                    Planned {
                        req: index,
                        piece,
                        stage,
                        cluster_off: pool.cluster_offset(pc),
                    }
                })
                .collect(),
            Err(e) => {
                drop(pool);
                self.request_done(index, Some(e));
                return true;
            }
        };
        drop(pool);
        for p in zero {
            let iov = slice_iov(&self.req(index).iov, p.at, p.len);
            // SAFETY: `iov` is part of this request's iovecs, which the caller
            // of `submit` keeps valid, writable and untouched until the
            // request's completion is returned, and it has not been yet.
            unsafe { zero_iov(&iov) };
        }
        if planned.is_empty() {
            self.request_done(index, None);
            return true;
        }
        self.req_mut(index).pending = planned.len();
        self.planned.extend(planned);
        true
    }

    /// Request `index` has no I/O left: it completes now, or (a flush or a
    /// durable change that succeeded) at the end of the next fsync round.
    fn request_done(&mut self, index: usize, error: Option<PoolError>) {
        let Some(r) = self.requests[index].as_mut() else {
            return;
        };
        let changed = matches!(
            r.kind,
            IoKind::Write | IoKind::Discard | IoKind::WriteZeroes
        );
        if error.is_none() && changed && r.durable != Durability::Io {
            // Once: the round completes it.
            let wait = std::mem::take(&mut r.durable);
            // Nothing to stage: its data already sits in the host kernel.
            let nothing_to_stage =
                wait == Durability::ProcessDeath && !lock(&self.pool).has_pending_records();
            if !nothing_to_stage {
                self.flush_waiting.push((index, wait));
                return;
            }
        }
        if let Some(r) = self.requests[index].take() {
            self.free_requests.push(index);
            self.finish(r, error);
        }
    }

    /// Moves planned pieces into running ops while the window has room and
    /// each finds the bounce buffer it needs (in order: a piece waiting for a
    /// buffer holds back the ones behind it, so none starves).
    fn fill_window(&mut self) {
        let window = self.ring.capacity();
        while let Some(p) = self.planned.front() {
            if self.ops.len() - self.free_ops.len() >= window {
                break;
            }
            let user_aligned = aligned(&slice_iov(&self.req(p.req).iov, p.piece.at, p.piece.len));
            let needs_bounce = match p.stage {
                Stage::CowRead { .. } => true,
                _ => !user_aligned,
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
            let op = self.build(p, bounce);
            let slot = self.alloc_op(op);
            self.backlog.push_back(slot);
        }
    }

    /// Starts an fsync round for the requests waiting for one, unless one is
    /// running (they wait for the next: the running fsync may have begun
    /// before their writes completed).
    fn start_flush_round(&mut self) {
        if self.flush_round.is_some() || self.flush_waiting.is_empty() {
            return;
        }
        let mark = lock(&self.pool).data_mark();
        let delay = self.faults.sync_delay();
        let (op, tag) = match delay {
            Some(d) => (Op::Timeout(d), SYNC_DELAY_TAG),
            None => (Op::Fsync, FSYNC_TAG),
        };
        // SAFETY: neither operation names memory.
        if unsafe { self.ring.push(op, tag) }.is_err() {
            return; // ring full: the next poll tries again
        }
        let waiting = std::mem::take(&mut self.flush_waiting);
        self.flush_round = Some(FlushRound {
            mark,
            power_loss: waiting.iter().any(|&(_, d)| d == Durability::PowerLoss),
            waiters: waiting.into_iter().map(|(index, _)| index).collect(),
            synced: delay.is_none(),
        });
    }

    /// The round's injected delay or its fsync completed with `result`.
    fn flush_step(&mut self, result: i32) {
        let Some(round) = self.flush_round.as_mut() else {
            return;
        };
        if !round.synced {
            // SAFETY: an fsync names no memory.
            if unsafe { self.ring.push(Op::Fsync, FSYNC_TAG) }.is_ok() {
                round.synced = true;
                return;
            }
            // Cannot happen (the delay's slot just came back); fall back
            // to the pool's own flush below.
        }
        let Some(round) = self.flush_round.take() else {
            return;
        };
        let r = if result < 0 && round.synced {
            Err(PoolError::Io {
                what: "flushing the pool device".into(),
                source: io::Error::from_raw_os_error(-result),
            })
        } else if round.synced {
            // Short hold: journal blocks only, the data is already durable.
            let mut pool = lock(&self.pool);
            if round.power_loss {
                pool.commit_flushed(round.mark)
            } else {
                pool.stage_flushed(round.mark)
            }
        } else if round.power_loss {
            lock(&self.pool).flush()
        } else {
            lock(&self.pool).stage()
        };
        for index in round.waiters {
            let e = r.as_ref().err().map(|e| PoolError::Io {
                what: "flushing".into(),
                source: io::Error::other(e.to_string()),
            });
            if let Some(req) = self.requests[index].take() {
                self.free_requests.push(index);
                self.finish(req, e);
            }
        }
    }

    fn req(&self, index: usize) -> &Request {
        self.requests[index].as_ref().expect("live request")
    }

    fn req_mut(&mut self, index: usize) -> &mut Request {
        self.requests[index].as_mut().expect("live request")
    }

    fn alloc_op(&mut self, op: PieceOp) -> usize {
        match self.free_ops.pop() {
            Some(i) => {
                self.ops[i] = Some(op);
                i
            }
            None => {
                self.ops.push(Some(op));
                self.ops.len() - 1
            }
        }
    }

    /// The I/O of one planned piece; `bounce` is the buffer it needs
    /// (misaligned caller memory, copy-on-write), from the engine's pool.
    fn build(&mut self, p: Planned, bounce: Option<AlignedBuf>) -> PieceOp {
        let cs = self.zeros.len();
        let piece = p.piece;
        let user = slice_iov(&self.req(p.req).iov, piece.at, piece.len);
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
                self.stats.bounced += 1;
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
                self.stats.bounced += 1;
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

    fn push_backlog(&mut self) {
        while let Some(&slot) = self.backlog.front() {
            let Some(op) = self.ops[slot].as_ref() else {
                self.backlog.pop_front();
                continue;
            };
            let len: usize = op.iov.iter().map(|v| v.iov_len).sum();
            if self.faults.hits(op.dev_off, len as u64) {
                self.backlog.pop_front();
                self.complete_op(slot, -libc::EIO);
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
            match unsafe { self.ring.push(ring_op, slot as u64) } {
                Ok(()) => {
                    self.backlog.pop_front();
                }
                Err(PushError::Full) => break,
                Err(PushError::TooManyIovecs) => {
                    self.backlog.pop_front();
                    self.complete_op(slot, -libc::EINVAL);
                }
            }
        }
    }

    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        self.ring.reap(&mut cqes);
        for c in cqes.drain(..) {
            match c.tag {
                FSYNC_TAG | SYNC_DELAY_TAG => self.flush_step(c.result),
                tag => self.complete_op(tag as usize, c.result),
            }
        }
        self.cqes = cqes;
    }

    /// One operation finished with `result` (bytes or -errno).
    fn complete_op(&mut self, slot: usize, result: i32) {
        let Some(mut op) = self.ops.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let want: usize = op.iov.iter().map(|v| v.iov_len).sum();
        let err = if result < 0 {
            Some(io::Error::from_raw_os_error(-result))
        } else if result as usize != want {
            Some(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short transfer: {result} of {want} bytes"),
            ))
        } else {
            None
        };
        let volume = self.req(op.req).volume;
        let pool = Arc::clone(&self.pool);
        let mut error = err.map(|source| PoolError::Io {
            what: format!("volume {volume} offset {}", self.req(op.req).offset),
            source,
        });
        match op.stage {
            Stage::Read { pcluster } => {
                lock(&pool).unpin(pcluster);
                if let (None, Some(b)) = (&error, &mut op.bounce) {
                    let user = slice_iov(&self.req(op.req).iov, op.piece.at, op.piece.len);
                    // SAFETY: the request is still live (its completion comes
                    // after all its pieces), so `user` is valid, writable and
                    // untouched by the caller (`submit` contract); the kernel is
                    // done with `b`, whose read has just completed.
                    unsafe { copy_iov(&user, b, true) };
                }
            }
            Stage::Write { pcluster } => lock(&pool).unpin(pcluster),
            Stage::CowRead { source, pcluster } if error.is_none() => {
                // Patch the new data into the copy, then write it whole.
                let user = slice_iov(&self.req(op.req).iov, op.piece.at, op.piece.len);
                if let Some(b) = op.bounce.as_mut() {
                    let p = op.piece;
                    // SAFETY: `user` is the live request's memory (`submit`
                    // contract), only read; the kernel is done with `b`, whose
                    // copy-on-write read has just completed.
                    unsafe { copy_iov(&user, &mut b[p.within..p.within + p.len], false) };
                }
                op.stage = Stage::Fill {
                    source: Some(source),
                    pcluster,
                };
                op.dev_off = lock(&pool).cluster_offset(pcluster);
                self.ops[slot] = Some(op);
                self.backlog.push_back(slot);
                return;
            }
            Stage::CowRead { source, pcluster } => {
                let mut p = lock(&pool);
                p.unpin(source);
                let id = volume;
                if let Err(e) = p.finish_allocation(id, op.piece.vcluster, pcluster, false) {
                    error.get_or_insert(e);
                }
            }
            Stage::Fill { source, pcluster } => {
                let mut p = lock(&pool);
                if let Some(s) = source {
                    p.unpin(s);
                }
                if let Err(e) =
                    p.finish_allocation(volume, op.piece.vcluster, pcluster, error.is_none())
                {
                    error.get_or_insert(e);
                }
            }
        }
        self.free_ops.push(slot);
        if let Some(b) = op.bounce.take() {
            self.bounce.give(b);
        }
        let r = self.req_mut(op.req);
        r.pending -= 1;
        if r.error.is_none() {
            r.error = error;
        }
        if r.pending == 0 {
            let e = r.error.take();
            self.request_done(op.req, e);
        }
    }
}

impl<D: BlockDev, R: AsyncDev> Drop for VolumeEngine<D, R> {
    fn drop(&mut self) {
        // Wait for in-flight I/O so no kernel write lands in freed memory
        // (the ring's own drop waits too; this also unpins and releases).
        let mut sink = Vec::new();
        for _ in 0..10_000 {
            if self.ring.in_flight() == 0 {
                break;
            }
            if self.wait(&mut sink).is_err() {
                break;
            }
        }
    }
}
