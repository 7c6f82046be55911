//! An export's pause: while paused its queues take nothing new from the
//! guest's rings (a ring does not even start), and [`Pause::pause`] returns
//! once every request taken before has been answered (drained). The guest
//! only sees slow I/O: its requests wait in the ring, and run after
//! [`Pause::resume`]. What it is for: changing the volume under a drained
//! export (a revert), with no request of the guest in flight.
//!
//! `active` counts the requests the export's queues took and did not
//! answer yet (parked for the limits or in flight), plus one per queue
//! worker inside [`Pause::enter`]'s gate, the section that may take more.
//! A worker enters (count first, then the flag) and the pause sets the flag
//! then reads the count, both sequentially consistent: either the worker
//! sees the pause and takes nothing, or the pause sees the worker and waits
//! for it. A paused queue looks again within [`super::device::PARK_RECHECK`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long [`Pause::pause`] waits for the requests in flight by default.
pub const DRAIN_PATIENCE: Duration = Duration::from_secs(30);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Pause {
    paused: AtomicBool,
    active: AtomicU64,
    /// Signalled when `active` reaches 0 while paused.
    drained: Condvar,
    lock: Mutex<()>,
}

/// A queue worker may take requests while it holds this.
#[derive(Debug)]
pub struct Gate<'a>(&'a Pause);

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        self.0.settle(1, 0);
    }
}

/// Requests still taken and unanswered when the patience ran out; the
/// export stays paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Undrained(pub u64);

impl Pause {
    /// The gate of a queue worker about to take requests, or `None` while
    /// paused.
    pub fn enter(&self) -> Option<Gate<'_>> {
        self.active.fetch_add(1, Ordering::SeqCst);
        if self.paused.load(Ordering::SeqCst) {
            self.settle(1, 0);
            return None;
        }
        Some(Gate(self))
    }

    /// A queue's count of taken, unanswered requests went from `before` to
    /// `now`.
    pub fn settle(&self, before: u64, now: u64) {
        if now >= before {
            self.active.fetch_add(now - before, Ordering::SeqCst);
            return;
        }
        let gone = before - now;
        let left = self.active.fetch_sub(gone, Ordering::SeqCst) - gone;
        if left == 0 && self.paused.load(Ordering::SeqCst) {
            let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.drained.notify_all();
        }
    }

    /// Paused (no new request taken).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Takes no new request from now on and waits (at most `patience`) until
    /// every request taken before is answered. Pausing a paused export waits
    /// the same way.
    pub fn pause(&self, patience: Duration) -> Result<(), Undrained> {
        self.paused.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + patience;
        let mut held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let active = self.active.load(Ordering::SeqCst);
            if active == 0 {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Undrained(active));
            }
            held = self
                .drained
                .wait_timeout(held, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Takes requests again (each queue within
    /// [`super::device::PARK_RECHECK`]).
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_paused_export_lets_no_worker_in_and_resume_does() {
        let p = Pause::default();
        assert!(p.enter().is_some());
        assert_eq!(p.pause(Duration::ZERO), Ok(()));
        assert!(p.enter().is_none());
        assert_eq!(p.active.load(Ordering::SeqCst), 0);
        p.resume();
        assert!(p.enter().is_some());
    }

    #[test]
    fn pause_returns_only_once_every_taken_request_is_answered() {
        let p = Arc::new(Pause::default());
        let gate = p.enter().expect("not paused");
        // The worker takes three requests, then leaves the gate.
        p.settle(0, 3);
        drop(gate);
        assert_eq!(p.pause(Duration::ZERO), Err(Undrained(3)));
        let worker = {
            let p = p.clone();
            std::thread::spawn(move || {
                p.settle(3, 1);
                p.settle(1, 0);
            })
        };
        assert_eq!(p.pause(Duration::from_secs(60)), Ok(()));
        worker.join().unwrap();
        assert_eq!(p.active.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_worker_inside_the_gate_holds_the_pause() {
        let p = Pause::default();
        let gate = p.enter().expect("not paused");
        assert_eq!(p.pause(Duration::ZERO), Err(Undrained(1)));
        drop(gate);
        assert_eq!(p.pause(Duration::ZERO), Ok(()));
    }
}
