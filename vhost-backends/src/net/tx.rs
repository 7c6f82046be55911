//! The guest's transmit queue (virtio-net transmitq, §5.1.6.2), run to completion
//! on a datapath thread (see `crate::datapath`).
//!
//! One batch: pop up to [`BATCH`] chains under the TX lock and validate their
//! buffers; release the lock; for each frame let the switch decide and copy it
//! into each destination (locking only that destination's RX queue); notify each
//! touched destination once; return the chains to the guest (used index
//! written once) and notify it once, if it wants that.
//! No two queue locks are ever held at once.

use super::device::TX_QUEUE;
use super::frame_source::{FrameSource, MAX_SEGMENTS};
use super::HDR_LEN;
use crate::datapath::TxQueue;
use crate::port_table::{Delivery, DeliveryReport, PortTable};
use crate::split_ring::RingView;
use crate::GuestMem;
use arrayvec::ArrayVec;
use std::ops::Range;
use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, VolatileSlice};
use vswitch::{Dest, DropReason, PortCounters, PortId, Switch, Topology, HEAD_LEN};

/// Chains popped per batch: up to 64, a batch runs to completion on one thread.
pub const BATCH: usize = 64;

/// Largest chain we accept: header plus a 64 KiB frame. Anything longer is
/// absurd for a port without segmentation offload.
const MAX_CHAIN_BYTES: usize = HDR_LEN + 65_535;

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

/// Per-worker buffers, allocated once and reused: no allocation per frame.
pub struct TxScratch {
    chains: Vec<TxChain>,
    deliveries: Vec<Delivery>,
}

impl Default for TxScratch {
    fn default() -> Self {
        TxScratch {
            chains: Vec::with_capacity(BATCH),
            deliveries: Vec::with_capacity(4 * BATCH),
        }
    }
}

/// Appends the buffers of a TX chain to `segs`: all device-readable, at most
/// [`MAX_SEGMENTS`] descriptors (zero-length ones count too), at most
/// [`MAX_CHAIN_BYTES`] in all, at least a header. Every descriptor read is
/// taken from `budget`. `None` (nothing appended) if the chain breaks any rule.
fn gather<'m>(
    ring: &RingView<'m>,
    head: u16,
    budget: &mut u32,
    segs: &mut ArrayVec<VolatileSlice<'m>, MAX_BATCH_SEGMENTS>,
) -> Option<Range<usize>> {
    let start = segs.len();
    let (mut total, mut descriptors) = (0usize, 0usize);
    let walked = ring.walk_budgeted(head, budget, |buf, writable| {
        total += buf.len();
        descriptors += 1;
        if writable || descriptors > MAX_SEGMENTS || total > MAX_CHAIN_BYTES {
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
        conn.mark_broken(TX_QUEUE, "rings outside guest memory or misaligned");
        return;
    };
    let mut next = queue.next_avail();
    let Some(pending) = ring.pending(next) else {
        conn.mark_broken(TX_QUEUE, "avail index further ahead than the queue size");
        return;
    };
    let mut budget = BATCH_DESCRIPTORS;
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
        let range = gather(&ring, head, &mut budget, segments);
        scratch.chains.push(TxChain {
            head,
            segments: range,
        });
    }
    queue.set_next_avail(next);
}

/// One batch of `q`; returns how many chains it consumed (0 for a queue
/// stopped, disabled or broken).
pub(crate) fn process_batch(q: &TxQueue, scratch: &mut TxScratch) -> usize {
    let conn = &q.conn;
    if conn.is_broken(TX_QUEUE) {
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
    let mut frames = ArrayVec::<FrameSource<'_, '_>, BATCH>::new();
    let mut malformed = 0u64;
    for chain in &scratch.chains {
        match &chain.segments {
            Some(range) => frames.push(FrameSource::new(&segments[range.clone()], HDR_LEN)),
            None => malformed += 1,
        }
    }
    forward(
        &Ingress {
            id: port.id,
            switch: &port.switch,
            table: &port.table,
        },
        &frames,
        malformed,
        &mut scratch.deliveries,
    );

    // The device writes nothing into TX buffers: used length 0. A head outside
    // the table is no descriptor of the driver's: nothing to give back. The
    // ring may have been stopped by GET_VRING_BASE meanwhile (which waits for
    // us): the chains are still returned, or the guest would lose them.
    let mut state = q.vring.get_mut();
    let queue = state.get_queue_mut();
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
            queue.set_next_used(new);
            if new != old && ring.needs_interrupt(old, new) {
                let _ = state.signal_used_queue();
            }
        }
    }
    scratch.chains.len()
}

/// Where a batch of frames comes from: the ingress port, its switch, and the
/// table where the switch's ports publish their receive side.
pub struct Ingress<'a> {
    pub id: PortId,
    pub switch: &'a Switch,
    pub table: &'a PortTable,
}

/// Forwards a batch of frames received on `from` (a guest's TX chains, frames
/// read from a TAP device or a tunnel): decide every frame, then deliver
/// grouped by destination, so each receiver's queue is locked, and its peer
/// notified, once per batch. `malformed` frames that never made it into
/// `frames` are counted as bad descriptors. `deliveries` is scratch space.
pub fn forward(
    from: &Ingress,
    frames: &[FrameSource],
    malformed: u64,
    deliveries: &mut Vec<Delivery>,
) {
    let topo = from.switch.topology();
    let now = from.switch.now();
    deliveries.clear();
    let mut rx_bytes = 0u64;
    for i in 0..frames.len() {
        rx_bytes += frames[i].len() as u64;
        decide(from, &topo, &frames[..=i], now, deliveries);
    }
    if let Some(p) = topo.port(from.id) {
        p.state.counters.add_rx(frames.len() as u64, rx_bytes);
        for _ in 0..malformed {
            p.state.counters.add_drop(DropReason::BadDescriptor);
        }
    }
    // Unstable sort needs no buffer; the frame index keeps each port's frames in order.
    deliveries.sort_unstable_by_key(|d| (d.port, d.frame));
    for group in deliveries.chunk_by(|a, b| a.port == b.port) {
        deliver(from, &topo, group, frames);
    }
}

/// Classifies, learns and looks up the last frame of `frames`; appends one
/// delivery per egress port.
fn decide(
    from: &Ingress,
    topo: &Topology,
    frames: &[FrameSource],
    now: u32,
    out: &mut Vec<Delivery>,
) {
    let index = frames.len() - 1;
    let frame = &frames[index];
    let mut head = [0u8; HEAD_LEN];
    let n = frame.read_head(&mut head);
    let Ok(ingress) = from
        .switch
        .receive(topo, from.id, &head[..n], frame.len(), now)
    else {
        return; // counted by the switch
    };
    let mut push = |to: PortId| {
        if let Some(egress) = topo.egress(to, &ingress) {
            out.push(Delivery {
                port: to,
                frame: index,
                egress,
            });
        }
    };
    match ingress.dest {
        Dest::Port(to) => push(to),
        Dest::Flood => topo.flood_targets(&ingress).for_each(push),
    }
}

/// Hands one destination's share of the batch to its sink and counts the outcomes.
fn deliver(from: &Ingress, topo: &Topology, group: &[Delivery], frames: &[FrameSource]) {
    let Some(out) = topo.port(group[0].port) else {
        return;
    };
    let counters = &out.state.counters;
    let mut count = TxCount {
        counters,
        packets: 0,
        bytes: 0,
    };
    let published = from.table.with(out.id, |sink| {
        // The sink must be the port decided on. A port added under a reused
        // id publishes only once it is in the topology, and the sink was
        // loaded before this check, so a successor's sink cannot pass it.
        from.switch
            .is_current(out)
            .then(|| sink.deliver(group, frames, &mut count))
    });
    if published.flatten().is_none() {
        for _ in group {
            counters.add_drop(DropReason::NoBuffer);
        }
    }
    count.publishing();
}

/// A destination's delivered frames, summed: one atomic add per destination
/// per batch (or per publication), not per frame.
struct TxCount<'c> {
    counters: &'c PortCounters,
    packets: u64,
    bytes: u64,
}

impl DeliveryReport for TxCount<'_> {
    fn outcome(&mut self, item: &Delivery, result: Result<(), DropReason>) {
        match result {
            Ok(()) => {
                self.packets += 1;
                self.bytes += item.egress.len() as u64;
            }
            Err(reason) => self.counters.add_drop(reason),
        }
    }

    fn publishing(&mut self) {
        if self.packets > 0 {
            self.counters.add_tx(self.packets, self.bytes);
            (self.packets, self.bytes) = (0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port_table::FrameSink;
    use std::sync::{Arc, Mutex};
    use vswitch::VlanMode;

    /// Records what it is given; may run `hook` first (a race played out).
    struct Recorder {
        got: Arc<Mutex<Vec<Vec<u8>>>>,
        hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl Recorder {
        fn new(hook: Option<Box<dyn FnOnce() + Send>>) -> (Recorder, Arc<Mutex<Vec<Vec<u8>>>>) {
            let got = Arc::new(Mutex::new(Vec::new()));
            let sink = Recorder {
                got: got.clone(),
                hook: Mutex::new(hook),
            };
            (sink, got)
        }
    }

    impl FrameSink for Recorder {
        fn deliver(
            &self,
            batch: &[Delivery],
            frames: &[FrameSource],
            report: &mut dyn DeliveryReport,
        ) {
            if let Some(hook) = self.hook.lock().unwrap().take() {
                hook();
            }
            for d in batch {
                let mut out = d.egress.head().to_vec();
                frames[d.frame].for_each_slice(d.egress.skip(), |s| {
                    let mut b = vec![0u8; s.len()];
                    s.copy_to(&mut b[..]);
                    out.extend_from_slice(&b);
                    true
                });
                self.got.lock().unwrap().push(out);
                report.outcome(d, Ok(()));
            }
        }
    }

    /// A port removed and its id reused by a port of another VLAN while a
    /// batch is being delivered: the batch's frames for the old port do not
    /// reach the new one.
    #[test]
    fn a_reused_port_id_gets_nothing_decided_for_its_predecessor() {
        let switch = Arc::new(Switch::new("br0", 100, 100, 300));
        let table = Arc::new(PortTable::default());
        let add = |name: &str, vlan: u16| {
            let id = switch
                .add_port(
                    name,
                    VlanMode::Access(vswitch::VlanId::new(vlan).unwrap()),
                    1500,
                )
                .unwrap();
            switch.set_link(id, true);
            id
        };
        let (src, first, doomed) = (add("src", 10), add("first", 10), add("doomed", 10));
        let (successor, successor_got) = Recorder::new(None);
        let successor = Mutex::new(Some(successor));
        let race = {
            let (switch, table) = (switch.clone(), table.clone());
            Box::new(move || {
                table.withdraw(doomed);
                switch.remove_port("doomed").unwrap();
                let id = switch
                    .add_port(
                        "vlan20",
                        VlanMode::Access(vswitch::VlanId::new(20).unwrap()),
                        1500,
                    )
                    .unwrap();
                assert_eq!(id, doomed);
                switch.set_link(id, true);
                let sink = successor.lock().unwrap().take().unwrap();
                table.publish(id, Box::new(sink));
            }) as Box<dyn FnOnce() + Send>
        };
        // `first` sorts before `doomed`: its delivery plays the race.
        let (first_sink, first_got) = Recorder::new(Some(race));
        table.publish(first, Box::new(first_sink));
        let (doomed_sink, _) = Recorder::new(None);
        table.publish(doomed, Box::new(doomed_sink));

        let mut frame = vec![0u8; HDR_LEN];
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        frame.resize(HDR_LEN + 60, 0xab);
        let segments = [VolatileSlice::from(&mut frame[..])];
        let frames = [FrameSource::new(&segments, HDR_LEN)];
        let ingress = Ingress {
            id: src,
            switch: &switch,
            table: &table,
        };
        forward(&ingress, &frames, 0, &mut Vec::new());
        assert_eq!(first_got.lock().unwrap().len(), 1);
        assert!(
            successor_got.lock().unwrap().is_empty(),
            "a VLAN 10 frame reached the VLAN 20 port that took the id"
        );
        let counters = switch
            .topology()
            .port(doomed)
            .unwrap()
            .state
            .counters
            .snapshot();
        assert_eq!(counters.tx_packets, 0);
    }
}
