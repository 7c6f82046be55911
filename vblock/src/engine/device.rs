//! The seam between [`VolumeEngine`](super::VolumeEngine) and the device it
//! drives: submit tagged operations, reap completions, an fd to wait on.
//!
//! Two implementations: [`UringEngine`] (the datapath: one io_uring per
//! queue) and, for crash tests, `SimRing` (feature `sim`), which completes
//! operations on a [`BlockDev`](crate::dev::BlockDev) in a seeded random
//! order. The engine is generic over it, so the io_uring path is
//! monomorphised: no dynamic dispatch per operation.

use std::io;
use std::os::fd::RawFd;

use crate::uring::{Completion, Op, PushError, UringEngine};

/// An asynchronous device: the contract of [`UringEngine`], whose docs say
/// what each method does. Completions come back in any order; each pushed
/// tag is returned exactly once; at most [`capacity`](Self::capacity)
/// operations are in flight (pushed and not yet reaped).
pub trait AsyncDev {
    /// Queues `op` with `tag`; nothing starts before [`submit`](Self::submit).
    ///
    /// # Safety
    /// As [`UringEngine::push`]: the memory `op` describes stays valid (and,
    /// for reads, unaccessed) until its completion is reaped or the device
    /// is dropped.
    unsafe fn push(&mut self, op: Op<'_>, tag: u64) -> Result<(), PushError>;

    /// Starts what was queued; never waits for completions.
    fn submit(&mut self) -> io::Result<usize>;

    /// Submits, then waits until at least `want` completions are ready
    /// (capped at what is in flight).
    fn submit_and_wait(&mut self, want: usize) -> io::Result<usize>;

    /// Appends the ready completions to `out`; returns how many. Never blocks.
    fn reap(&mut self, out: &mut Vec<Completion>) -> usize;

    /// Whether completions may be ready to reap (a false "yes" only costs a
    /// reap that finds nothing). Never blocks, no syscall.
    fn has_completions(&mut self) -> bool;

    /// Readable when completions may be ready.
    fn eventfd(&self) -> RawFd;

    /// Consumes the eventfd's counter; call it before [`reap`](Self::reap).
    fn clear_event(&self);

    /// Operations pushed and not yet reaped.
    fn in_flight(&self) -> usize;

    /// The in-flight limit.
    fn capacity(&self) -> usize;
}

impl AsyncDev for UringEngine {
    #[inline]
    unsafe fn push(&mut self, op: Op<'_>, tag: u64) -> Result<(), PushError> {
        // SAFETY: the caller keeps `push`'s contract, which is this one.
        unsafe { UringEngine::push(self, op, tag) }
    }

    #[inline]
    fn submit(&mut self) -> io::Result<usize> {
        UringEngine::submit(self)
    }

    #[inline]
    fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        UringEngine::submit_and_wait(self, want)
    }

    #[inline]
    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        UringEngine::reap(self, out)
    }

    #[inline]
    fn has_completions(&mut self) -> bool {
        UringEngine::has_completions(self)
    }

    #[inline]
    fn eventfd(&self) -> RawFd {
        UringEngine::eventfd(self)
    }

    #[inline]
    fn clear_event(&self) {
        UringEngine::clear_event(self)
    }

    #[inline]
    fn in_flight(&self) -> usize {
        UringEngine::in_flight(self)
    }

    #[inline]
    fn capacity(&self) -> usize {
        UringEngine::capacity(self)
    }
}
