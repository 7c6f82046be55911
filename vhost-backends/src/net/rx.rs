//! Delivery into a guest's RX queue (virtio-net receiveq, virtio 1.x §5.1.6.3).
//!
//! Each received packet starts with a 12-byte `virtio_net_hdr_v1`. With
//! VIRTIO_NET_F_MRG_RXBUF a packet may span several descriptor chains and the
//! header's `num_buffers` says how many; without it the packet must fit in one
//! chain and `num_buffers` is 1.
//!
//! With VIRTIO_NET_F_MQ the guest has one receive queue per queue pair
//! (§5.1.6.5.5); a frame goes to the one its flow hash picks among the pairs
//! the driver enabled (`crate::forward::flow_hash`).

use super::connection::{rx_queue, Connection, MAX_QUEUE_PAIRS};
use super::Vring;
use crate::dirty_log::LogBatch;
use crate::forward::offload::egress_header;
use crate::forward::{
    flow_hash, pick_queue, Delivery, DeliveryReport, FrameSink, FrameSource, BATCH, HDR_LEN,
};
use crate::split_ring::RingView;
use arrayvec::ArrayVec;
use fabric_offload::Accepts;
use std::sync::Arc;
use vhost_user_backend::VringT;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, VolatileSlice};
use vswitch::{DropReason, Egress};

/// Chains one packet may span (mergeable buffers). A 64 KiB packet over 1.5 KiB
/// buffers needs 44.
const MAX_CHAINS: usize = 64;
/// Writable descriptors over all chains of one packet.
const MAX_RX_SEGMENTS: usize = 256;

/// A guest's receive queues, published in the port table while the guest is
/// connected and its rings enabled.
pub(crate) struct GuestRx {
    /// receiveq of each queue pair the port offers, by pair.
    vrings: ArrayVec<Vring, MAX_QUEUE_PAIRS>,
    conn: Arc<Connection>,
}

impl GuestRx {
    /// `vrings`: the receive queue of each pair, first pair first (at most
    /// [`MAX_QUEUE_PAIRS`] are kept).
    pub fn new(vrings: impl IntoIterator<Item = Vring>, conn: Arc<Connection>) -> GuestRx {
        let vrings = vrings.into_iter().take(MAX_QUEUE_PAIRS).collect();
        GuestRx { vrings, conn }
    }

    /// The pairs whose receive queue may take frames now (bit i = pair i):
    /// negotiated, enabled by the driver (SET_VRING_ENABLE), started and not
    /// broken. Each ring is locked in turn, never two at once.
    fn enabled_pairs(&self) -> u32 {
        let pairs = self.conn.pairs_negotiated().min(self.vrings.len());
        let mut enabled = 0u32;
        for (pair, vring) in self.vrings[..pairs].iter().enumerate() {
            let state = vring.get_ref();
            if state.is_enabled()
                && state.get_queue().ready()
                && !self.conn.is_broken(rx_queue(pair))
            {
                enabled |= 1 << pair;
            }
        }
        enabled
    }
}

/// A chain taken from the avail ring for the packet being delivered.
#[derive(Clone, Copy)]
struct Taken {
    head: u16,
    capacity: u32,
}

/// Writes a byte stream across a list of guest buffers.
struct SegmentWriter<'a, 'm> {
    segs: &'a [VolatileSlice<'m>],
    idx: usize,
    off: usize,
}

impl<'m> SegmentWriter<'_, 'm> {
    /// The unwritten rest of the current buffer.
    fn current(&mut self) -> Option<VolatileSlice<'m>> {
        while self.idx < self.segs.len() && self.off == self.segs[self.idx].len() {
            self.idx += 1;
            self.off = 0;
        }
        self.segs.get(self.idx)?.offset(self.off).ok()
    }

    fn write_bytes(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            let Some(dst) = self.current() else {
                return false;
            };
            let n = dst.len().min(bytes.len());
            dst.copy_from(&bytes[..n]);
            self.off += n;
            bytes = &bytes[n..];
        }
        true
    }

    fn write_slice(&mut self, src: VolatileSlice<'_>) -> bool {
        let mut done = 0;
        while done < src.len() {
            let Some(dst) = self.current() else {
                return false;
            };
            let n = dst.len().min(src.len() - done);
            match (src.subslice(done, n), dst.subslice(0, n)) {
                (Ok(from), Ok(to)) => from.copy_to_volatile_slice(to),
                _ => return false,
            }
            self.off += n;
            done += n;
        }
        true
    }
}

/// Used elements waiting to be published: (descriptor head, bytes written).
type Pending = ArrayVec<(u16, u32), 256>;

impl FrameSink for GuestRx {
    /// With one queue pair everything goes to it. With more, each frame goes
    /// to the receive queue its flow hash picks among the enabled pairs
    /// ([`pick_queue`]), so one flow keeps its order; each chosen queue is
    /// then locked once and notified at most once for its share.
    fn deliver(&self, batch: &[Delivery], frames: &[FrameSource], report: &mut dyn DeliveryReport) {
        if self.conn.pairs_negotiated() <= 1 || self.vrings.len() <= 1 {
            self.deliver_on(0, batch.iter(), frames, report);
            return;
        }
        // A port gets at most one delivery per frame of a batch; chunk anyway.
        for chunk in batch.chunks(BATCH) {
            let enabled = self.enabled_pairs();
            let picked: ArrayVec<Option<usize>, BATCH> = chunk
                .iter()
                .map(|d| pick_queue(flow_hash(&frames[d.frame]), enabled))
                .collect();
            for d in chunk.iter().zip(&picked).filter(|(_, q)| q.is_none()) {
                // No pair enabled: the link is down for delivery.
                report.outcome(d.0, Err(DropReason::NoBuffer));
            }
            for pair in (0..self.vrings.len()).filter(|p| enabled & (1 << p) != 0) {
                let share = chunk
                    .iter()
                    .zip(&picked)
                    .filter(|(_, q)| **q == Some(pair))
                    .map(|(d, _)| d);
                self.deliver_on(pair, share, frames, report);
            }
        }
    }

    fn accepts(&self) -> Accepts {
        self.conn.guest_offloads()
    }
}

impl GuestRx {
    /// Delivers `items` into the receive queue of `pair`, under its lock,
    /// publishing the used elements in bulk and notifying at most once.
    fn deliver_on<'d>(
        &self,
        pair: usize,
        items: impl Iterator<Item = &'d Delivery>,
        frames: &[FrameSource],
        report: &mut dyn DeliveryReport,
    ) {
        let queue_index = rx_queue(pair);
        let Some(vring) = self.vrings.get(pair) else {
            items.for_each(|d| report.outcome(d, Err(DropReason::NoBuffer)));
            return;
        };
        let mem = self.conn.mem.memory();
        let mrg_rxbuf = self.conn.has_feature(VIRTIO_NET_F_MRG_RXBUF);
        let accepts = FrameSink::accepts(self);
        let mut vring = vring.get_mut();
        let enabled = vring.is_enabled();
        let queue = vring.get_queue_mut();
        let ring = match RingView::new(queue, &mem) {
            _ if self.conn.is_broken(queue_index) => None,
            Some(ring) if enabled => match ring.pending(queue.next_avail()) {
                Some(pending) => Some((ring, pending)),
                None => {
                    let why = "avail index further ahead than the queue size";
                    self.conn.mark_broken(queue_index, why);
                    None
                }
            },
            None if queue.ready() => {
                let why = "rings outside guest memory or misaligned";
                self.conn.mark_broken(queue_index, why);
                None
            }
            _ => None,
        };
        let Some((ring, pending)) = ring else {
            for d in items {
                report.outcome(d, Err(DropReason::NoBuffer));
            }
            return;
        };
        ring.prefetch_chains(queue.next_avail(), pending.min(BATCH as u16));
        // Marked under this ring's lock, which GET_VRING_BASE waits for.
        let log = self.conn.log.begin();
        let first_used = queue.next_used();
        let mut next_used = first_used;
        let mut used = Pending::new();
        let mut delivered = 0u64;
        for d in items {
            if used.remaining_capacity() <= MAX_CHAINS {
                report.delivered_on_queue(pair, std::mem::take(&mut delivered));
                report.publishing();
                next_used = ring.publish_used(next_used, &used).unwrap_or(next_used);
                used.clear();
            }
            let result = deliver_one(
                queue,
                &ring,
                &log,
                mrg_rxbuf,
                accepts,
                &d.egress,
                &frames[d.frame],
                &mut used,
            );
            delivered += u64::from(result.is_ok());
            report.outcome(d, result);
        }
        report.delivered_on_queue(pair, delivered);
        report.publishing();
        next_used = ring.publish_used(next_used, &used).unwrap_or(next_used);
        ring.log_used(&log, first_used, next_used);
        queue.set_next_used(next_used);
        if next_used != first_used && ring.needs_interrupt(first_used, next_used) {
            let _ = vring.signal_used_queue();
        }
        log.finish();
    }
}

/// Writes one packet into the RX queue (the caller holds its lock), marks
/// what it wrote in `log`, and appends the chains it used to `used`.
#[allow(clippy::too_many_arguments)]
fn deliver_one<'m>(
    queue: &mut Queue,
    ring: &RingView<'m>,
    log: &LogBatch<'_>,
    mrg_rxbuf: bool,
    accepts: Accepts,
    egress: &Egress,
    frame: &FrameSource,
    used: &mut Pending,
) -> Result<(), DropReason> {
    let need = (HDR_LEN + egress.len()) as u32;
    let start = queue.next_avail();
    let available = ring.pending(start).ok_or(DropReason::BadDescriptor)?;

    // 1. Take chains until they can hold the packet, without writing yet: a
    //    shortfall is undone simply by not moving next_avail.
    // ArrayVec: bounded, on the stack, and not zeroed per packet.
    let mut taken = ArrayVec::<Taken, MAX_CHAINS>::new();
    let mut segs = ArrayVec::<VolatileSlice<'m>, MAX_RX_SEGMENTS>::new();
    // Their guest addresses, for the dirty log.
    let mut gpas = ArrayVec::<u64, MAX_RX_SEGMENTS>::new();
    let mut capacity: u32 = 0;
    let mut pos = start;
    while capacity < need
        && (taken.len() as u16) < available
        && !taken.is_full()
        && (taken.is_empty() || mrg_rxbuf)
    {
        let head = ring.avail_head(pos).ok_or(DropReason::BadDescriptor)?;
        pos = pos.wrapping_add(1);
        let mark = segs.len();
        let mut chain_capacity: u32 = 0;
        let walked = ring.walk(head, |buf, writable, gpa| {
            chain_capacity = chain_capacity.saturating_add(buf.len() as u32);
            writable && segs.try_push(buf).is_ok() && gpas.try_push(gpa).is_ok()
        });
        if walked.is_err() || chain_capacity == 0 {
            segs.truncate(mark);
            gpas.truncate(mark);
            if taken.is_empty() {
                // Give the unusable buffer back, empty, so the ring does not stall.
                if head < queue.size() {
                    used.push((head, 0));
                }
                queue.set_next_avail(pos);
            }
            return Err(DropReason::BadDescriptor);
        }
        taken.push(Taken {
            head,
            capacity: chain_capacity,
        });
        capacity = capacity.saturating_add(chain_capacity);
    }
    if capacity < need {
        // Not enough room: leave the chains for a smaller packet or a later one.
        return Err(DropReason::NoBuffer);
    }

    // 2. Write header, rewritten head and the rest of the frame. The
    //    header's offsets move with a tag pushed or popped by the rewrite.
    let hdr = egress_header(frame.offload(), egress.shift(), accepts, taken.len() as u16);
    let mut w = SegmentWriter {
        segs: &segs,
        idx: 0,
        off: 0,
    };
    let ok = w.write_bytes(&hdr)
        && w.write_bytes(egress.head())
        && frame.for_each_slice(egress.skip(), |s| w.write_slice(s));
    if log.is_on() {
        // The first `need` bytes; all the buffers if the write stopped short.
        let mut left = if ok { u64::from(need) } else { u64::MAX };
        for (seg, &gpa) in segs.iter().zip(&gpas) {
            let n = (seg.len() as u64).min(left);
            log.mark(gpa, n);
            left -= n;
        }
    }
    if !ok {
        return Err(DropReason::NoBuffer);
    }

    // 3. Each chain's used length is what landed in it; published by the caller.
    queue.set_next_avail(pos);
    let mut remaining = need;
    for t in &taken {
        let len = remaining.min(t.capacity);
        remaining -= len;
        used.push((t.head, len));
    }
    Ok(())
}
