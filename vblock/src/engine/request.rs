//! What a caller asks of the engine and gets back, and the table of the
//! requests it holds.

use crate::pool::PoolError;

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
    /// The death of this process (a write-back cache that a daemon restarted
    /// on the same boot must still have): the records it queued are written
    /// to the journal, nothing flushed, in one [`Pool::stage`](crate::pool::Pool::stage)
    /// for every change finishing in the same poll (at once when nothing is
    /// pending). No fsync: after a reboot, replay drops the records no
    /// later flush covered.
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

/// An accepted request, until its completion is returned.
pub(super) struct Request {
    pub(super) tag: u64,
    pub(super) volume: u32,
    pub(super) kind: IoKind,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) iov: Vec<libc::iovec>,
    pub(super) durable: Durability,
    /// Pieces still running.
    pub(super) pending: usize,
    /// The first error of a piece.
    pub(super) error: Option<PoolError>,
    /// Waiting for space (a full pool that pauses), counted in the pool's
    /// [`SpaceWatch`](crate::pool::SpaceWatch).
    pub(super) paused: bool,
}

/// The requests accepted and not yet returned, by index (indices are
/// reused, so the table stays as large as the most ever in flight).
#[derive(Default)]
pub(super) struct Requests {
    slots: Vec<Option<Request>>,
    free: Vec<usize>,
}

impl Requests {
    pub(super) fn insert(&mut self, r: Request) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(r);
                i
            }
            None => {
                self.slots.push(Some(r));
                self.slots.len() - 1
            }
        }
    }

    /// Request `index`, if it is still held.
    pub(super) fn slot(&self, index: usize) -> Option<&Request> {
        self.slots.get(index).and_then(Option::as_ref)
    }

    pub(super) fn slot_mut(&mut self, index: usize) -> Option<&mut Request> {
        self.slots.get_mut(index).and_then(Option::as_mut)
    }

    /// A request known to be held: the engine only names live ones.
    pub(super) fn get(&self, index: usize) -> &Request {
        self.slot(index).expect("live request")
    }

    pub(super) fn get_mut(&mut self, index: usize) -> &mut Request {
        self.slot_mut(index).expect("live request")
    }

    /// Removes request `index` (its index becomes free).
    pub(super) fn take(&mut self, index: usize) -> Option<Request> {
        let r = self.slots.get_mut(index).and_then(Option::take);
        if r.is_some() {
            self.free.push(index);
        }
        r
    }

    /// How many are held.
    pub(super) fn live(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}
