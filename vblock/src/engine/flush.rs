//! The fsync round: flushes and write-through changes share one at a time.
//! The device's fsync runs off the pool lock; then the journal, under it
//! ([`Pool::commit_flushed`]). Order: data durable, then the records naming
//! it, then the journal flushed.

use std::io;
use std::sync::Mutex;

use super::device::AsyncDev;
use super::plan::lock;
use crate::dev::BlockDev;
use crate::pool::{IoFaults, Pool, PoolError};
use crate::uring::Op;

/// Device tags above every op slot: the round's fsync and its delay.
pub(super) const FSYNC_TAG: u64 = u64::MAX;
pub(super) const SYNC_DELAY_TAG: u64 = u64::MAX - 1;

/// The fsync round in flight: what it covers.
struct FlushRound {
    /// [`Pool::data_mark`] read before the fsync was pushed.
    mark: u64,
    /// Requests completed by this round.
    waiters: Vec<usize>,
    /// The fsync itself is pushed (not just its injected delay).
    synced: bool,
}

/// The requests waiting for a round, and the round running.
#[derive(Default)]
pub(super) struct Flusher {
    waiting: Vec<usize>,
    round: Option<FlushRound>,
}

impl Flusher {
    /// Request `index` completes at the end of the next round, which makes
    /// it, and everything completed before, survive a power loss.
    pub(super) fn wait_for(&mut self, index: usize) {
        self.waiting.push(index);
    }

    /// Starts a round for the requests waiting for one, unless one is
    /// running (they wait for the next: the running fsync may have begun
    /// before their writes completed).
    pub(super) fn start<D: BlockDev, R: AsyncDev>(
        &mut self,
        ring: &mut R,
        pool: &Mutex<Pool<D>>,
        faults: &IoFaults,
    ) {
        if self.round.is_some() || self.waiting.is_empty() {
            return;
        }
        let mark = lock(pool).data_mark();
        let delay = faults.sync_delay();
        let (op, tag) = match delay {
            Some(d) => (Op::Timeout(d), SYNC_DELAY_TAG),
            None => (Op::Fsync, FSYNC_TAG),
        };
        // SAFETY: neither operation names memory.
        if unsafe { ring.push(op, tag) }.is_err() {
            return; // device full: the next poll tries again
        }
        self.round = Some(FlushRound {
            mark,
            waiters: std::mem::take(&mut self.waiting),
            synced: delay.is_none(),
        });
    }

    /// The round's injected delay or its fsync completed with `result`.
    /// Returns the round's waiters and its outcome once it is over.
    pub(super) fn step<D: BlockDev, R: AsyncDev>(
        &mut self,
        result: i32,
        ring: &mut R,
        pool: &Mutex<Pool<D>>,
    ) -> Option<(Vec<usize>, Result<(), PoolError>)> {
        let round = self.round.as_mut()?;
        if !round.synced {
            // SAFETY: an fsync names no memory.
            if unsafe { ring.push(Op::Fsync, FSYNC_TAG) }.is_ok() {
                round.synced = true;
                return None;
            }
            // Cannot happen (the delay's slot just came back); fall back
            // to the pool's own flush below.
        }
        let round = self.round.take()?;
        let r = if result < 0 && round.synced {
            Err(PoolError::Io {
                what: "flushing the pool device".into(),
                source: io::Error::from_raw_os_error(-result),
            })
        } else if round.synced {
            // Short hold: journal blocks only, the data is already durable.
            lock(pool).commit_flushed(round.mark)
        } else {
            lock(pool).flush()
        };
        Some((round.waiters, r))
    }
}
