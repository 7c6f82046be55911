//! The guest's transmit queue (virtio-net transmitq, §5.1.6.2), run to completion
//! on the port's worker thread.
//!
//! One batch: pop up to [`BATCH`] chains under the TX lock and validate their
//! buffers; release the lock; for each frame let the switch decide and copy it
//! into each destination (locking only that destination's RX queue); notify each
//! touched destination once; return the chains to the guest and notify it once.
//! No two queue locks are ever held at once.

use super::device::Connection;
use super::frame_source::{FrameSource, Segment, MAX_SEGMENTS};
use super::{notify, Vring, HDR_LEN};
use std::ops::Range;
use vhost_user_backend::VringT;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemory, GuestMemoryBackend};
use vswitch::{Dest, DropReason, Ingress, PortId, Topology, HEAD_LEN};

/// Chains popped per batch (DESIGN.md: up to 64).
pub const BATCH: usize = 64;

/// Largest chain we accept: header plus a 64 KiB frame. Anything longer is
/// absurd for a port without segmentation offload.
const MAX_CHAIN_BYTES: usize = HDR_LEN + 65_535;

struct TxChain {
    head: u16,
    /// Where its buffers are in `TxScratch::segments`; `None` if malformed.
    segments: Option<Range<usize>>,
}

/// Per-worker buffers, allocated once and reused: no allocation per frame.
pub struct TxScratch {
    chains: Vec<TxChain>,
    segments: Vec<Segment>,
    touched: Vec<PortId>,
}

impl Default for TxScratch {
    fn default() -> Self {
        TxScratch {
            chains: Vec::with_capacity(BATCH),
            segments: Vec::with_capacity(BATCH * 8),
            touched: Vec::with_capacity(64),
        }
    }
}

/// Appends the readable buffers of a TX chain to `segs`, validating each once:
/// readable, inside guest memory, not too many, not too long, not cut short
/// (the chain iterator ends silently on a bad descriptor or a loop).
fn gather<M>(
    mem: &crate::GuestMem,
    chain: DescriptorChain<M>,
    segs: &mut Vec<Segment>,
) -> Option<Range<usize>>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let start = segs.len();
    let mut total = 0usize;
    let mut last_has_next = false;
    for desc in chain {
        last_has_next = desc.has_next();
        total += desc.len() as usize;
        let ok = !desc.is_write_only()
            && segs.len() - start < MAX_SEGMENTS
            && total <= MAX_CHAIN_BYTES
            && mem.get_slice(desc.addr(), desc.len() as usize).is_ok();
        if !ok {
            segs.truncate(start);
            return None;
        }
        if desc.len() > 0 {
            segs.push(Segment {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
    }
    if last_has_next || total < HDR_LEN {
        segs.truncate(start);
        return None;
    }
    Some(start..segs.len())
}

/// Processes the TX queue until the guest has nothing more to send.
pub fn drain(conn: &Connection, vring: &Vring, scratch: &mut TxScratch) {
    loop {
        // With EVENT_IDX, suppress kicks while we are draining anyway.
        let _ = vring.disable_notification();
        loop {
            match process_batch(conn, vring, scratch) {
                // The frontend stopped the ring (GET_VRING_BASE, disable, gone):
                // whatever is still in it is no longer ours to take.
                None => return,
                Some(BATCH) => continue,
                Some(_) => break,
            }
        }
        // enable_notification re-checks the ring: true if the guest added more
        // between our last pop and re-enabling, which we must not miss.
        if !vring.enable_notification().unwrap_or(false) {
            break;
        }
    }
}

/// One batch; returns how many chains it consumed, or `None` if the ring is
/// stopped.
fn process_batch(conn: &Connection, vring: &Vring, scratch: &mut TxScratch) -> Option<usize> {
    let mem = conn.mem.memory();
    scratch.chains.clear();
    scratch.segments.clear();
    {
        let mut state = vring.get_mut();
        if !state.is_enabled() {
            return None;
        }
        // Fails when the queue is not ready (stopped by GET_VRING_BASE).
        let avail = state.get_queue_mut().iter(&*mem).ok()?;
        for chain in avail.take(BATCH) {
            let head = chain.head_index();
            let segments = gather(&mem, chain, &mut scratch.segments);
            scratch.chains.push(TxChain { head, segments });
        }
    }
    if scratch.chains.is_empty() {
        return Some(0);
    }

    let port = &conn.port;
    let topo = port.switch.topology();
    let now = port.switch.now();
    scratch.touched.clear();
    for chain in &scratch.chains {
        match &chain.segments {
            Some(range) => {
                let frame = FrameSource::new(&mem, &scratch.segments[range.clone()], HDR_LEN);
                forward(conn, &topo, &frame, now, &mut scratch.touched);
            }
            None => {
                if let Some(p) = topo.port(port.id) {
                    p.state.counters.add_drop(DropReason::BadDescriptor);
                }
            }
        }
    }
    for &out in &scratch.touched {
        port.table.with(out, |sink| sink.flush());
    }

    // The device writes nothing into TX buffers: used length 0.
    {
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        for chain in &scratch.chains {
            let _ = queue.add_used(&*mem, chain.head, 0);
        }
    }
    notify(vring);
    Some(scratch.chains.len())
}

/// Classify, learn, look up, deliver one frame.
fn forward(
    conn: &Connection,
    topo: &Topology,
    frame: &FrameSource,
    now: u32,
    touched: &mut Vec<PortId>,
) {
    let port = &conn.port;
    let mut head = [0u8; HEAD_LEN];
    let n = frame.read_head(&mut head);
    let Ok(ingress) = port
        .switch
        .receive(topo, port.id, &head[..n], frame.len(), now)
    else {
        return; // counted by the switch
    };
    match ingress.dest {
        Dest::Port(out) => deliver(conn, topo, &ingress, out, frame, touched),
        Dest::Flood => {
            for out in topo.flood_targets(&ingress) {
                deliver(conn, topo, &ingress, out, frame, touched);
            }
        }
    }
}

fn deliver(
    conn: &Connection,
    topo: &Topology,
    ingress: &Ingress,
    out: PortId,
    frame: &FrameSource,
    touched: &mut Vec<PortId>,
) {
    let Some(egress) = topo.egress(out, ingress) else {
        return;
    };
    let Some(out_port) = topo.port(out) else {
        return;
    };
    let result = conn
        .port
        .table
        .with(out, |sink| sink.deliver(&egress, frame));
    match result {
        Some(Ok(())) => {
            out_port.state.counters.add_tx(1, egress.len() as u64);
            if !touched.contains(&out) {
                touched.push(out);
            }
        }
        Some(Err(reason)) => out_port.state.counters.add_drop(reason),
        None => out_port.state.counters.add_drop(DropReason::NoBuffer),
    }
}
