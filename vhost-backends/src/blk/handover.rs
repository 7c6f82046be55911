//! Which frontend session runs an export's queues.
//!
//! An export may have two sockets (its own and a migration socket), so two
//! frontends may be connected and negotiated at once: in a live migration
//! the destination QEMU (started with `-incoming`) connects at start-up and
//! starts its rings only after the source stopped its own with
//! GET_VRING_BASE. Both would run requests against the same volume, so the
//! export hands its queues to one session at a time: a session takes them
//! when its first ring starts and releases them when every ring it started
//! has stopped (each stop waits for that ring's requests in flight and
//! publishes them, `BlkBackend::stop_vring`), or when it disconnects (after
//! its requests in flight completed). A ring that starts while another
//! session holds the queues waits for the release, at most
//! [`HANDOVER_PATIENCE`]; then it is refused.
//!
//! So every write the source completed (published, or completed before a
//! disconnect) is in the pool before the destination parses its first
//! request: the destination's reads see it, and write-back caching holds
//! as it is the same pool of the same daemon.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a starting ring waits for another session to release the
/// queues. A migration's source stops its rings before the destination
/// starts them, so a longer wait means a source that never stops.
pub const HANDOVER_PATIENCE: Duration = Duration::from_secs(5);

/// The session that runs the queues, and how many of its rings run.
#[derive(Debug, Default)]
struct Owner {
    session: Option<u64>,
    running: usize,
}

/// An export's queues, owned by at most one session at a time.
#[derive(Debug)]
pub struct QueueOwnership {
    owner: Mutex<Owner>,
    released: Condvar,
    patience: Duration,
}

/// How a ring's start went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The session owned the queues already, or they were free.
    Owned,
    /// Another session held them and released them within the patience.
    AfterWaiting,
    /// Another session (`holder`) still held them after the patience.
    Refused { holder: u64 },
}

impl Default for QueueOwnership {
    fn default() -> Self {
        QueueOwnership::new(HANDOVER_PATIENCE)
    }
}

impl QueueOwnership {
    pub fn new(patience: Duration) -> QueueOwnership {
        QueueOwnership {
            owner: Mutex::new(Owner::default()),
            released: Condvar::new(),
            patience,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Owner> {
        self.owner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long a start waits for a release.
    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// A ring of `session` starts: takes the queues, waiting for another
    /// session to release them at most the patience (`on_wait` is called
    /// with the holder when the wait begins). On `Owned` and `AfterWaiting`
    /// the ring counts as running until [`Self::stopped`].
    pub fn start(&self, session: u64, on_wait: impl FnOnce(u64)) -> Start {
        let deadline = Instant::now() + self.patience;
        let mut owner = self.lock();
        let mut on_wait = Some(on_wait);
        loop {
            match owner.session {
                Some(s) if s != session => {
                    if let Some(f) = on_wait.take() {
                        f(s);
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Start::Refused { holder: s };
                    }
                    owner = self
                        .released
                        .wait_timeout(owner, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                _ => break,
            }
        }
        owner.session = Some(session);
        owner.running += 1;
        if on_wait.is_none() {
            Start::AfterWaiting
        } else {
            Start::Owned
        }
    }

    /// A ring of `session` that [`Self::start`] let run stopped, its
    /// requests completed and published; the last one releases the queues.
    pub fn stopped(&self, session: u64) {
        let mut owner = self.lock();
        if owner.session != Some(session) {
            return;
        }
        owner.running = owner.running.saturating_sub(1);
        if owner.running == 0 {
            owner.session = None;
            self.released.notify_all();
        }
    }

    /// `session` ended (its requests in flight completed): releases the
    /// queues if it held them.
    pub fn ended(&self, session: u64) {
        let mut owner = self.lock();
        if owner.session == Some(session) {
            *owner = Owner::default();
            self.released.notify_all();
        }
    }

    /// The session holding the queues, if any.
    pub fn holder(&self) -> Option<u64> {
        self.lock().session
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_queues_pass_when_every_ring_of_the_holder_stopped() {
        let o = QueueOwnership::new(Duration::from_secs(5));
        assert_eq!(o.start(1, |_| {}), Start::Owned);
        assert_eq!(
            o.start(1, |_| {}),
            Start::Owned,
            "a second ring of the holder"
        );
        let o = Arc::new(o);
        let (waiting, waits) = std::sync::mpsc::channel();
        let waiter = {
            let o = o.clone();
            std::thread::spawn(move || o.start(2, |holder| waiting.send(holder).unwrap()))
        };
        assert_eq!(waits.recv().unwrap(), 1, "session 2 waits for session 1");
        o.stopped(1);
        assert_eq!(o.holder(), Some(1), "one ring of session 1 still runs");
        o.stopped(2); // not the holder: ignored
        o.stopped(1);
        assert_eq!(waiter.join().unwrap(), Start::AfterWaiting);
        assert_eq!(o.holder(), Some(2));
    }

    #[test]
    fn a_start_is_refused_after_the_patience_and_an_ending_session_releases() {
        let o = QueueOwnership::new(Duration::from_millis(50));
        assert_eq!(o.start(1, |_| {}), Start::Owned);
        assert_eq!(o.start(2, |_| {}), Start::Refused { holder: 1 });
        assert_eq!(o.holder(), Some(1));
        o.ended(2); // not the holder: ignored
        assert_eq!(o.holder(), Some(1));
        o.ended(1);
        assert_eq!(o.holder(), None);
        assert_eq!(o.start(2, |_| {}), Start::Owned);
    }
}
