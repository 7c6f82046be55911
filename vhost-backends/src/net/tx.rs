//! The guest's transmit queue (virtio-net transmitq, §5.1.6.2), a
//! [`PollQueue`] run to completion on a datapath thread (see `crate::datapath`).
//!
//! One batch: pop up to [`BATCH`] chains under the TX lock and validate their
//! buffers; release the lock; for each frame let the switch decide and copy it
//! into each destination (locking only that destination's RX queue); notify each
//! touched destination once; return the chains to the guest (used index
//! written once) and notify it once, if it wants that.
//! No two queue locks are ever held at once.

use super::connection::{tx_queue, Connection};
use super::Vring;
use crate::datapath::{PollQueue, Polled};
use crate::forward::offload::{HeaderFrom, MAX_GSO_FRAME};
use crate::forward::{forward, ForwardScratch, FrameSource, Ingress, BATCH, HDR_LEN, MAX_SEGMENTS};
use crate::split_ring::{prefetch_range, set_kicks, RingView};
use crate::GuestMem;
use arrayvec::ArrayVec;
use fabric_offload::Accepts;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, VolatileSlice};
use vswitch::DropReason;

/// Largest chain we accept from a guest that negotiated no segmentation
/// offload: header plus a 64 KiB frame. Anything longer is absurd for it.
const MAX_CHAIN_BYTES: usize = HDR_LEN + 65_535;

/// Largest chain from a guest that negotiated HOST_TSO4/6 or HOST_USO:
/// header plus a 64 KiB GSO super-frame with its Ethernet header and a tag.
const MAX_GSO_CHAIN_BYTES: usize = HDR_LEN + MAX_GSO_FRAME;

/// The longest chain a guest that may send `offloads` needs.
fn chain_limit(offloads: Accepts) -> usize {
    let gso = [Accepts::TSO4, Accepts::TSO6, Accepts::USO];
    if gso.iter().any(|&g| offloads.contains(g)) {
        MAX_GSO_CHAIN_BYTES
    } else {
        MAX_CHAIN_BYTES
    }
}

/// Buffers of all chains of one batch, translated once. On the stack, bounded:
/// a batch stops taking chains when fewer than [`MAX_SEGMENTS`] places are left.
const MAX_BATCH_SEGMENTS: usize = 8 * MAX_SEGMENTS;

/// Descriptor reads one batch may cost, zero-length and indirect descriptors
/// included. Ports share a datapath thread, so this bounds what one guest's
/// chains, whatever they look like, cost its neighbours per round. Real chains
/// have 1 to 3 descriptors (Linux at most 19): 64 of them need far less.
const BATCH_DESCRIPTORS: u32 = 1024;

/// The most reads one acceptable chain costs: [`MAX_SEGMENTS`] buffers and an
/// indirect descriptor. A chain starts only while this much budget is left,
/// so a good chain is never cut short by the batch budget.
const CHAIN_DESCRIPTORS: u32 = MAX_SEGMENTS as u32 + 1;

struct TxChain {
    head: u16,
    /// Where its buffers are in the batch's segment list; `None` if malformed.
    segments: Option<Range<usize>>,
}

/// A port's transmit queue, as a datapath thread serves it.
pub(crate) struct TxQueue {
    pub(crate) conn: Arc<Connection>,
    /// The queue pair whose transmitq this is.
    pub(crate) pair: usize,
    pub(crate) vring: Vring,
    /// Held for a whole batch: `stop_vring` takes it to wait for the batch in flight.
    pub(crate) scratch: Mutex<TxScratch>,
}

impl TxQueue {
    /// Not broken, and within the pairs the driver negotiated: a frontend
    /// that sets up a ring for a pair without VIRTIO_NET_F_MQ gets nothing
    /// served from it.
    fn usable(&self) -> bool {
        self.pair < self.conn.pairs_negotiated() && !self.conn.is_broken(tx_queue(self.pair))
    }
}

impl PollQueue for TxQueue {
    fn poll(&self) -> Polled {
        // Busy means stop_vring holds it: the queue is being stopped, skip it.
        match self.scratch.try_lock() {
            Ok(mut scratch) => Polled::Frames(process_batch(self, &mut scratch)),
            Err(_) => Polled::Frames(0),
        }
    }

    /// Only a queue a batch could run on now may keep the thread awake: a
    /// stopped (GET_VRING_BASE, a paused VM) or disabled queue waits for the
    /// kick that starts it again, and a broken one always looks pending
    /// (that is how it broke). Counting them would keep the thread from
    /// ever sleeping.
    fn arm(&self) -> bool {
        self.usable() && set_kicks(&self.vring, &self.conn.log, true).unwrap_or(false)
    }

    fn disarm(&self) {
        // A stopped ring is not ours to write (`set_kicks` checks under the
        // ring's lock: its notification settings live in guest memory).
        if self.usable() {
            let _ = set_kicks(&self.vring, &self.conn.log, false);
        }
    }
}

/// Per-queue buffers, allocated once and reused: no allocation per frame.
pub(crate) struct TxScratch {
    chains: Vec<TxChain>,
    forward: ForwardScratch,
}

impl Default for TxScratch {
    fn default() -> Self {
        TxScratch {
            chains: Vec::with_capacity(BATCH),
            forward: ForwardScratch::default(),
        }
    }
}

/// Appends the buffers of a TX chain to `segs`: all device-readable, at most
/// [`MAX_SEGMENTS`] descriptors (zero-length ones count too), at most
/// `max_bytes` in all (see [`chain_limit`]), at least a header. Every
/// descriptor read is taken from `budget`. `None` (nothing appended) if the
/// chain breaks any rule.
fn gather<'m>(
    ring: &RingView<'m>,
    head: u16,
    max_bytes: usize,
    budget: &mut u32,
    segs: &mut ArrayVec<VolatileSlice<'m>, MAX_BATCH_SEGMENTS>,
) -> Option<Range<usize>> {
    let start = segs.len();
    let (mut total, mut descriptors) = (0usize, 0usize);
    let walked = ring.walk_budgeted(head, budget, |buf, writable, _| {
        total += buf.len();
        descriptors += 1;
        if writable || descriptors > MAX_SEGMENTS || total > max_bytes {
            return false;
        }
        if !buf.is_empty() {
            segs.push(buf);
        }
        true
    });
    if walked.is_err() || total < HDR_LEN {
        segs.truncate(start);
        return None;
    }
    Some(start..segs.len())
}

/// Pops up to a batch of chains into `scratch.chains`, their buffers into
/// `segments`. A ring the driver broke (avail index further ahead than the
/// ring holds, rings outside guest memory) stops the queue: polling it again
/// would only spin on the same garbage.
fn pop_batch<'m>(
    q: &TxQueue,
    mem: &'m GuestMem,
    scratch: &mut TxScratch,
    segments: &mut ArrayVec<VolatileSlice<'m>, MAX_BATCH_SEGMENTS>,
) {
    let conn = &q.conn;
    let mut state = q.vring.get_mut();
    let enabled = state.is_enabled();
    let queue = state.get_queue_mut();
    // Not ready: stopped by GET_VRING_BASE, or not set up yet.
    if !enabled || !queue.ready() {
        return;
    }
    let Some(ring) = RingView::new(queue, mem) else {
        conn.mark_broken(tx_queue(q.pair), "rings outside guest memory or misaligned");
        return;
    };
    let mut next = queue.next_avail();
    let Some(pending) = ring.pending(next) else {
        let why = "avail index further ahead than the queue size";
        conn.mark_broken(tx_queue(q.pair), why);
        return;
    };
    let mut budget = BATCH_DESCRIPTORS;
    let max_bytes = chain_limit(conn.host_offloads());
    for _ in 0..pending {
        if scratch.chains.len() == BATCH
            || segments.remaining_capacity() < MAX_SEGMENTS
            || budget < CHAIN_DESCRIPTORS
        {
            break;
        }
        let Some(head) = ring.avail_head(next) else {
            break;
        };
        next = next.wrapping_add(1);
        let range = gather(&ring, head, max_bytes, &mut budget, segments);
        if let Some(r) = &range {
            prefetch_frame(&segments[r.clone()]);
        }
        scratch.chains.push(TxChain {
            head,
            segments: range,
        });
    }
    queue.set_next_avail(next);
}

/// Bytes of each chain's buffers fetched ahead: a small frame whole, a
/// large one's headers (what the switch reads to classify it).
const PREFETCH_BYTES: usize = 256;

/// Starts loading the first [`PREFETCH_BYTES`] of a chain's buffers into
/// the cache. The guest wrote them on another core, so each line is a miss;
/// asked for while the rest of the batch is popped, the misses of a whole
/// batch overlap instead of stalling the classify and the copy one by one.
fn prefetch_frame(segs: &[VolatileSlice<'_>]) {
    let mut left = PREFETCH_BYTES;
    for seg in segs {
        let len = seg.len().min(left);
        prefetch_range(seg.ptr_guard().as_ptr(), len);
        left -= len;
        if left == 0 {
            break;
        }
    }
}

/// One batch of `q`; returns how many chains it consumed (0 for a queue
/// stopped, disabled or broken).
fn process_batch(q: &TxQueue, scratch: &mut TxScratch) -> usize {
    let conn = &q.conn;
    if !q.usable() {
        return 0;
    }
    let mem = conn.mem.memory();
    let mut segments = ArrayVec::<VolatileSlice<'_>, MAX_BATCH_SEGMENTS>::new();
    scratch.chains.clear();
    pop_batch(q, &mem, scratch, &mut segments);
    if scratch.chains.is_empty() {
        return 0;
    }

    let port = &conn.port;
    // The guest sends: it runs, so its stations are held again (stop_vring
    // set this while no batch was in flight: it waits for ours).
    port.switch.fdb().set_peer_stopped(port.id, false);
    let mut frames = ArrayVec::<FrameSource<'_, '_>, BATCH>::new();
    let mut dropped = ArrayVec::<DropReason, BATCH>::new();
    let allowed = conn.host_offloads();
    for chain in &scratch.chains {
        let Some(range) = &chain.segments else {
            dropped.push(DropReason::BadDescriptor);
            continue;
        };
        match FrameSource::with_header(&segments[range.clone()], allowed, HeaderFrom::Guest) {
            Ok(frame) => frames.push(frame),
            Err(reason) => dropped.push(reason),
        }
    }
    forward(
        &Ingress {
            id: port.id,
            switch: &port.switch,
            table: &port.table,
            queue: q.pair,
        },
        &frames,
        &dropped,
        &mut scratch.forward,
    );

    // The device writes nothing into TX buffers: used length 0. A head outside
    // the table is no descriptor of the driver's: nothing to give back. The
    // ring may have been stopped by GET_VRING_BASE meanwhile (which waits for
    // us): the chains are still returned, or the guest would lose them, and
    // marked in the dirty log before GET_VRING_BASE is answered.
    let mut state = q.vring.get_mut();
    let queue = state.get_queue_mut();
    let log = conn.log.begin();
    if let Some(ring) = RingView::stopping(queue, &mem) {
        let size = queue.size();
        let used: ArrayVec<(u16, u32), BATCH> = scratch
            .chains
            .iter()
            .filter(|c| c.head < size)
            .map(|c| (c.head, 0))
            .collect();
        let old = queue.next_used();
        if let Some(new) = ring.publish_used(old, &used) {
            ring.log_used(&log, old, new);
            queue.set_next_used(new);
            if new != old && ring.needs_interrupt(old, new) {
                let _ = state.signal_used_queue();
            }
        }
    }
    log.finish();
    scratch.chains.len()
}
