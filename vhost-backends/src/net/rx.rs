//! Delivery into a guest's RX queue (virtio-net receiveq, virtio 1.x §5.1.6.3).
//!
//! Each received packet starts with a 12-byte `virtio_net_hdr_v1`. With
//! VIRTIO_NET_F_MRG_RXBUF a packet may span several descriptor chains and the
//! header's `num_buffers` says how many; without it the packet must fit in one
//! chain and `num_buffers` is 1.

use super::device::Connection;
use super::frame_source::FrameSource;
use super::{Vring, HDR_LEN};
use crate::port_table::{Delivery, FrameSink};
use crate::{used_ring, GuestMem};
use arrayvec::ArrayVec;
use std::sync::Arc;
use vhost_user_backend::VringT;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryBackend, VolatileSlice};
use vswitch::{DropReason, Egress};

/// Chains one packet may span (mergeable buffers). A 64 KiB packet over 1.5 KiB
/// buffers needs 44.
const MAX_CHAINS: usize = 64;
/// Writable descriptors over all chains of one packet.
const MAX_RX_SEGMENTS: usize = 256;

/// A guest's receive queue, published in the port table while the guest is
/// connected and its RX ring enabled.
pub struct GuestRx {
    vring: Vring,
    conn: Arc<Connection>,
}

impl GuestRx {
    pub fn new(vring: Vring, conn: Arc<Connection>) -> GuestRx {
        GuestRx { vring, conn }
    }
}

/// A chain taken from the avail ring for the packet being delivered.
#[derive(Clone, Copy)]
struct Taken {
    head: u16,
    capacity: u32,
}

/// Appends the writable buffers of `chain` to `segs` and returns their total
/// length, or `None` if the chain is unusable: a readable descriptor, a buffer
/// outside guest memory, too many descriptors, or a chain cut short (the chain
/// iterator stops silently on a bad descriptor or a loop, leaving a last
/// descriptor that still points onward).
fn writable_segments<'m, M>(
    mem: &'m crate::GuestMem,
    chain: virtio_queue::DescriptorChain<M>,
    segs: &mut ArrayVec<VolatileSlice<'m>, MAX_RX_SEGMENTS>,
) -> Option<u32>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut capacity: u32 = 0;
    let mut last_has_next = false;
    for desc in chain {
        last_has_next = desc.has_next();
        if !desc.is_write_only() {
            return None;
        }
        segs.try_push(mem.get_slice(desc.addr(), desc.len() as usize).ok()?)
            .ok()?;
        capacity = capacity.checked_add(desc.len())?;
    }
    (!last_has_next && capacity > 0).then_some(capacity)
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

impl FrameSink for GuestRx {
    fn deliver(
        &self,
        batch: &[Delivery],
        frames: &[FrameSource],
        done: &mut dyn FnMut(&Delivery, Result<(), DropReason>),
    ) {
        let mem = self.conn.mem.memory();
        let mrg_rxbuf = self.conn.has_feature(VIRTIO_NET_F_MRG_RXBUF);
        let mut vring = self.vring.get_mut();
        if !vring.is_enabled() || !vring.get_queue().ready() {
            for d in batch {
                done(d, Err(DropReason::NoBuffer));
            }
            return;
        }
        let queue = vring.get_queue_mut();
        let mut used = used_ring::Pending::new();
        let mut moved: Option<(u16, u16)> = None;
        for d in batch {
            if used.remaining_capacity() < MAX_CHAINS + 1 {
                moved = merge(moved, used_ring::publish(queue, &mem, &used));
                used.clear();
            }
            let result = deliver_one(
                queue,
                &mem,
                mrg_rxbuf,
                &d.egress,
                &frames[d.frame],
                &mut used,
            );
            done(d, result);
        }
        moved = merge(moved, used_ring::publish(queue, &mem, &used));
        if let Some(moved) = moved {
            if used_ring::needs_interrupt(vring.get_queue(), &mem, moved) {
                let _ = vring.signal_used_queue();
            }
        }
    }
}

/// The used-index span of two consecutive publications.
fn merge(a: Option<(u16, u16)>, b: Option<(u16, u16)>) -> Option<(u16, u16)> {
    match (a, b) {
        (Some((old, _)), Some((_, new))) => Some((old, new)),
        (a, b) => a.or(b),
    }
}

/// Writes one packet into the RX queue (the lock is held by the caller) and
/// appends the chains it used to `used`.
fn deliver_one(
    queue: &mut Queue,
    mem: &GuestMem,
    mrg_rxbuf: bool,
    egress: &Egress,
    frame: &FrameSource,
    used: &mut used_ring::Pending,
) -> Result<(), DropReason> {
    let need = (HDR_LEN + egress.len()) as u32;
    let start = queue.next_avail();

    // 1. Take chains until they can hold the packet, without writing yet so a
    //    shortfall can be undone by rewinding next_avail.
    // ArrayVec: bounded, on the stack, and not zeroed per packet.
    let mut taken = ArrayVec::<Taken, MAX_CHAINS>::new();
    let mut segs = ArrayVec::<VolatileSlice<'_>, MAX_RX_SEGMENTS>::new();
    let mut capacity: u32 = 0;
    let mut bad_chain = None;
    {
        let Ok(mut avail) = queue.iter(mem) else {
            return Err(DropReason::NoBuffer);
        };
        while capacity < need && !taken.is_full() && (taken.is_empty() || mrg_rxbuf) {
            let Some(chain) = avail.next() else { break };
            let head = chain.head_index();
            let seg_mark = segs.len();
            match writable_segments(mem, chain, &mut segs) {
                Some(cap) => {
                    taken.push(Taken {
                        head,
                        capacity: cap,
                    });
                    capacity = capacity.saturating_add(cap);
                }
                None => {
                    segs.truncate(seg_mark);
                    bad_chain = Some(head);
                    break;
                }
            }
        }
    }
    if let Some(head) = bad_chain {
        if taken.is_empty() {
            // Give the unusable buffer back, empty, so the ring does not stall.
            used.push((head, 0));
            return Err(DropReason::BadDescriptor);
        }
    }
    if capacity < need {
        // Not enough room: leave the chains for a smaller packet or a later one.
        queue.set_next_avail(start);
        return Err(if bad_chain.is_some() {
            DropReason::BadDescriptor
        } else {
            DropReason::NoBuffer
        });
    }

    // 2. Write header, rewritten head and the rest of the frame.
    let mut hdr = [0u8; HDR_LEN];
    hdr[10..12].copy_from_slice(&(taken.len() as u16).to_le_bytes());
    let mut w = SegmentWriter {
        segs: &segs,
        idx: 0,
        off: 0,
    };
    let ok = w.write_bytes(&hdr)
        && w.write_bytes(egress.head())
        && frame.for_each_slice(egress.skip(), |s| w.write_slice(s));
    if !ok {
        // Memory vanished under us (frontend remapped): hand the buffers back.
        queue.set_next_avail(start);
        return Err(DropReason::NoBuffer);
    }

    // 3. Each chain's used length is what landed in it; published by the caller.
    let mut remaining = need;
    for t in &taken {
        let len = remaining.min(t.capacity);
        remaining -= len;
        used.push((t.head, len));
    }
    Ok(())
}
