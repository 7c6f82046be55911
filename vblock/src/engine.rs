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
//! Operations are submitted every [`SUBMIT_EVERY`] pushes rather than once
//! per poll, so a disk that serves requests in turn starts on the first ones.
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
//! Flushes (and write-through changes, [`Durability::PowerLoss`]) share one
//! fsync round at a time: `IORING_OP_FSYNC` (datasync) on the ring, off the
//! pool lock, then the journal under the lock, which writes and flushes only
//! the journal blocks unless new `Map` records were queued during the fsync
//! ([`Pool::commit_flushed`]). Order: data durable, then the records naming
//! it. Write-back changes that queued records ([`Durability::ProcessDeath`]:
//! first writes, copy-on-write, discards) take no fsync: the records of all
//! those finishing in one poll are written in one journal write
//! ([`Pool::stage`]) before any of them completes, tagged so that only the
//! same boot of the host replays them unless a later flush covers them
//! (FORMAT.md "Records not covered by a flush").
//!
//! A write (or a discard of part of a shared cluster) that needs clusters a
//! full pool cannot give fails with [`PoolError::OutOfSpace`], unless the
//! pool's policy is [`OnFull::Pause`]: then it stays waiting, not started
//! and nothing allocated, and is planned again at every poll, oldest first;
//! a younger write that needs space waits behind it without being tried, so
//! they resume in order, while reads and writes in place go on. The caller
//! sees [`VolumeEngine::paused`] and polls now and then; stopping, it
//! drains with [`VolumeEngine::set_draining`].
//!
//! The modules follow a request's path: `request` (its types and the
//! table of those held), `plan` (pieces mapped under the lock), `window` (ops
//! built and pushed, bounce buffers), `complete` (a completion applied),
//! `flush` (the fsync round), over an [`AsyncDev`] (`device`): the io_uring
//! or, for crash tests, `SimRing` (feature `sim`).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, RawFd};
use std::sync::{Arc, Mutex};

use crate::dev::BlockDev;
use crate::pool::{IoFaults, OnFull, Pool, PoolError, PoolGauges};
use crate::uring::{Completion, UringEngine};

mod complete;
pub mod device;
mod flush;
mod iov;
mod plan;
mod request;
#[cfg(any(test, feature = "sim"))]
mod sim;
mod window;

use complete::Next;
use flush::{Flusher, FSYNC_TAG, SYNC_DELAY_TAG};
use plan::{lock, Plan};
use request::{Request, Requests};
use window::Window;

pub use device::AsyncDev;
pub use iov::IO_ALIGN;
pub use request::{Durability, EngineStats, IoCompletion, IoKind, IoRequest};
#[cfg(any(test, feature = "sim"))]
pub use sim::SimRing;
pub use window::{BOUNCE_BYTES, SUBMIT_EVERY};

/// Most bytes one read or write may move. 4 MiB: at or above the request size
/// Linux guests build by default (`max_sectors_kb`), so their streaming I/O is
/// not split further; what the engine holds per request is bounded by
/// [`BOUNCE_BYTES`] and the ring depth, not by this.
pub const MAX_REQUEST_BYTES: u64 = 4 << 20;

/// An io_uring datapath for volumes of one pool. See the module docs.
///
/// `R` is the device under it: the io_uring itself, or a simulated one for
/// crash tests ([`AsyncDev`]).
pub struct VolumeEngine<D: BlockDev, R: AsyncDev = UringEngine> {
    pool: Arc<Mutex<Pool<D>>>,
    ring: R,
    requests: Requests,
    /// Requests not started yet (waiting for an allocation in flight).
    waiting: VecDeque<usize>,
    window: Window,
    flusher: Flusher,
    /// Write-back changes whose records the next stage writes.
    staged: Vec<usize>,
    done: Vec<IoCompletion>,
    cqes: Vec<Completion>,
    /// Ops that failed before reaching the device, to complete.
    failed: Vec<(usize, i32)>,
    stats: EngineStats,
    faults: Arc<IoFaults>,
    /// The pool's full policy, and where requests waiting for space count.
    gauges: Arc<PoolGauges>,
    /// Requests in `waiting` that wait for space (see [`Self::paused`]).
    paused: u64,
    /// Stopping: a request that would wait for space fails instead.
    draining: bool,
}

// SAFETY: the raw pointers in the iovecs describe caller memory handed over
// through `unsafe fn submit`, whose contract keeps it valid from any thread
// until the completion is returned; the engine is used by one thread at a time.
unsafe impl<D: BlockDev, R: AsyncDev + Send> Send for VolumeEngine<D, R> {}

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
        let (cs, faults, gauges) = {
            let p = lock(&pool);
            (
                p.metadata().cluster_size() as usize,
                p.io_faults().clone(),
                p.gauges().clone(),
            )
        };
        Self {
            ring,
            pool,
            requests: Requests::default(),
            waiting: VecDeque::new(),
            window: Window::new(cs),
            flusher: Flusher::default(),
            staged: Vec::new(),
            done: Vec::new(),
            cqes: Vec::new(),
            failed: Vec::new(),
            stats: EngineStats::default(),
            faults,
            gauges,
            paused: 0,
            draining: false,
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

    /// Whether a [`poll`](Self::poll) may have completions to take: for a
    /// worker that polls before it sleeps on the [`eventfd`](Self::eventfd).
    pub fn has_completions(&mut self) -> bool {
        self.ring.has_completions()
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            bounce_buffers: self.window.bounce_buffers() as u64,
            ..self.stats
        }
    }

    /// Requests accepted and not yet returned by [`poll`](Self::poll).
    pub fn in_flight(&self) -> usize {
        self.requests.live()
    }

    /// Requests waiting for space in a full pool whose policy is
    /// [`OnFull::Pause`]: not started, tried again at every
    /// [`poll`](Self::poll), oldest first. Nothing wakes the caller when
    /// space appears: while this is not 0 it must poll now and then.
    pub fn paused(&self) -> u64 {
        self.paused
    }

    /// While `draining` (the caller must answer every request soon: its
    /// queue stops), a request that would wait for space fails as with
    /// [`OnFull::Error`], those waiting included at the next poll.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
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
            paused: false,
        };
        if let Err(e) = checked {
            self.finish(r, Some(e));
            return;
        }
        let index = self.requests.insert(r);
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
        self.window
            .fill(self.ring.capacity(), &self.requests, &mut self.stats);
        self.push_ops();
        self.flusher.start(&mut self.ring, &self.pool, &self.faults);
        self.stage();
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
        let mut full = false;
        while let Some(index) = self.waiting.pop_front() {
            if !self.start(index, &mut full) {
                still.push_back(index);
            }
        }
        self.waiting = still;
    }

    /// Whether a request the pool has no space for waits (rather than fails).
    fn pauses(&self) -> bool {
        !self.draining && self.gauges.watch().on_full() == OnFull::Pause
    }

    /// Starts request `index`; false if it must wait. `full`: an older
    /// request waits for space, so a write that needs space waits behind
    /// it without trying (they resume in order); others go on.
    fn start(&mut self, index: usize, full: &mut bool) -> bool {
        let Some(r) = self.requests.slot(index) else {
            return true;
        };
        if r.kind == IoKind::Flush {
            self.flusher.wait_for(index);
            return true;
        }
        let plan = {
            let mut pool = lock(&self.pool);
            let behind = *full
                && r.kind == IoKind::Write
                && pool
                    .clusters_needed(r.volume, r.offset, r.len)
                    .is_ok_and(|n| n > 0);
            if behind && self.pauses() {
                drop(pool);
                self.pause(index);
                return false;
            }
            plan::plan(&mut pool, index, r, &mut self.stats)
        };
        let (planned, zero) = match plan {
            Plan::Failed(PoolError::OutOfSpace { .. }) if self.pauses() => {
                *full = true;
                self.pause(index);
                return false;
            }
            Plan::Wait => {
                self.unpause(index);
                return false;
            }
            Plan::Failed(e) => {
                self.unpause(index);
                self.request_done(index, Some(e));
                return true;
            }
            Plan::Pieces { planned, zero } => {
                self.unpause(index);
                (planned, zero)
            }
        };
        for p in zero {
            let iov = iov::slice_iov(&self.requests.get(index).iov, p.at, p.len);
            // SAFETY: `iov` is part of this request's iovecs, which the caller
            // of `submit` keeps valid, writable and untouched until the
            // request's completion is returned, and it has not been yet.
            unsafe { iov::zero_iov(&iov) };
        }
        if planned.is_empty() {
            self.request_done(index, None);
            return true;
        }
        self.requests.get_mut(index).pending = planned.len();
        self.window.plan(planned);
        true
    }

    /// Request `index` waits for space (counted once per wait).
    fn pause(&mut self, index: usize) {
        if let Some(r) = self.requests.slot_mut(index) {
            if !std::mem::replace(&mut r.paused, true) {
                self.paused += 1;
                self.gauges.watch().pause_one();
            }
        }
    }

    /// Request `index` no longer waits for space, if it did.
    fn unpause(&mut self, index: usize) {
        if let Some(r) = self.requests.slot_mut(index) {
            if std::mem::take(&mut r.paused) {
                self.paused -= 1;
                self.gauges.watch().resume(1);
            }
        }
    }

    /// Request `index` has no I/O left: it completes now, at the end of this
    /// poll (a write-back change whose records must be staged first), or at
    /// the end of the next fsync round (a write-through change).
    fn request_done(&mut self, index: usize, error: Option<PoolError>) {
        let Some(r) = self.requests.slot_mut(index) else {
            return;
        };
        let changed = matches!(
            r.kind,
            IoKind::Write | IoKind::Discard | IoKind::WriteZeroes
        );
        if error.is_none() && changed {
            // Once: the stage or the round completes it.
            match std::mem::take(&mut r.durable) {
                Durability::Io => {}
                Durability::PowerLoss => return self.flusher.wait_for(index),
                // Nothing to stage: its data already sits in the host kernel.
                Durability::ProcessDeath if !lock(&self.pool).has_pending_records() => {}
                Durability::ProcessDeath => return self.staged.push(index),
            }
        }
        if let Some(r) = self.requests.take(index) {
            self.finish(r, error);
        }
    }

    /// Writes the journal blocks the write-back changes finished in this
    /// poll wait for, once for all of them, then completes them.
    fn stage(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let r = lock(&self.pool).stage();
        let staged = std::mem::take(&mut self.staged);
        self.finish_all(staged, &r, "writing the journal");
    }

    /// Completes the requests `indices` that waited for one shared step
    /// (a stage, an fsync round) with that step's result `r`.
    fn finish_all(&mut self, indices: Vec<usize>, r: &Result<(), PoolError>, what: &str) {
        for index in indices {
            let e = r.as_ref().err().map(|e| PoolError::Io {
                what: what.into(),
                source: io::Error::other(e.to_string()),
            });
            if let Some(req) = self.requests.take(index) {
                self.finish(req, e);
            }
        }
    }

    /// Pushes the window's ops; those refused before the device fail now.
    fn push_ops(&mut self) {
        let mut failed = std::mem::take(&mut self.failed);
        self.window.push(&mut self.ring, &self.faults, &mut failed);
        for (slot, errno) in failed.drain(..) {
            self.complete_op(slot, errno);
        }
        self.failed = failed;
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

    /// The fsync round's delay or fsync completed with `result`.
    fn flush_step(&mut self, result: i32) {
        let Some((waiters, r)) = self.flusher.step(result, &mut self.ring, &self.pool) else {
            return;
        };
        self.finish_all(waiters, &r, "flushing");
    }

    /// One operation finished with `result` (bytes or -errno).
    fn complete_op(&mut self, slot: usize, result: i32) {
        let Some(mut op) = self.window.take(slot) else {
            return;
        };
        let r = self.requests.get(op.req);
        let error = match complete::complete(&mut op, result, &self.pool, r) {
            Next::Again => return self.window.again(slot, op),
            Next::Done(error) => error,
        };
        let index = op.req;
        self.window.release(slot, op);
        let r = self.requests.get_mut(index);
        r.pending -= 1;
        if r.error.is_none() {
            r.error = error;
        }
        if r.pending == 0 {
            let e = r.error.take();
            self.request_done(index, e);
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
        // Requests still waiting for space are dropped with the engine.
        self.gauges.watch().resume(self.paused);
    }
}
