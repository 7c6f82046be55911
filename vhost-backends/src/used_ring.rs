//! Publishing used buffers in batches (virtio 1.x §2.7.8) and deciding whether
//! the driver wants an interrupt for them (§2.7.7, §2.7.10).
//!
//! `virtio_queue::Queue::add_used` stores the used index after every element,
//! so a busy guest's core and ours trade the index's cache line once per
//! packet; and its `needs_notification` ignores VRING_AVAIL_F_NO_INTERRUPT, so
//! a polling driver (DPDK) still got an eventfd write per batch. Here the
//! elements of a batch are written first and the index once.

use crate::GuestMem;
use arrayvec::ArrayVec;
use std::sync::atomic::Ordering;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// struct virtq_used: flags (u16), idx (u16), then elements of id (u32), len (u32).
const USED_IDX: u64 = 2;
const USED_RING: u64 = 4;
const USED_ELEM: u64 = 8;
/// struct virtq_avail: flags (u16), idx (u16), ring[size] (u16), used_event (u16).
const AVAIL_RING: u64 = 4;
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Used elements waiting to be published: (descriptor head, bytes written).
pub type Pending = ArrayVec<(u16, u32), 256>;

/// Writes `items` into the used ring, then the new used index (release order, so
/// the driver never sees an index before its elements). Returns the index
/// before and after, for [`needs_interrupt`].
pub fn publish(queue: &mut Queue, mem: &GuestMem, items: &[(u16, u32)]) -> Option<(u16, u16)> {
    let used = GuestAddress(queue.used_ring());
    let size = queue.size();
    let old = queue.next_used();
    let mut next = old;
    for &(head, len) in items {
        if head >= size {
            continue; // never a head we popped; the queue validated those
        }
        let slot = used.0 + USED_RING + u64::from(next % size) * USED_ELEM;
        let mut elem = [0u8; 8];
        elem[0..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..8].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, GuestAddress(slot)).ok()?;
        next = next.wrapping_add(1);
    }
    if next == old {
        return None;
    }
    mem.store(
        next.to_le(),
        GuestAddress(used.0 + USED_IDX),
        Ordering::Release,
    )
    .ok()?;
    queue.set_next_used(next);
    Some((old, next))
}

/// Whether the driver asked to be interrupted for the used index moving from
/// `old` to `new`: with EVENT_IDX, when `used_event` lies in (old, new]
/// (Linux's `vring_need_event`); without it, unless VRING_AVAIL_F_NO_INTERRUPT.
pub fn needs_interrupt(queue: &Queue, mem: &GuestMem, (old, new): (u16, u16)) -> bool {
    // The used index store must be visible before we read the driver's wishes,
    // or we could miss an interrupt it asked for meanwhile.
    std::sync::atomic::fence(Ordering::SeqCst);
    let avail = queue.avail_ring();
    if queue.event_idx_enabled() {
        let addr = avail + AVAIL_RING + 2 * u64::from(queue.size());
        let Ok(used_event) = mem.load::<u16>(GuestAddress(addr), Ordering::Acquire) else {
            return true;
        };
        let used_event = u16::from_le(used_event);
        new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old)
    } else {
        match mem.load::<u16>(GuestAddress(avail), Ordering::Acquire) {
            Ok(flags) => u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0,
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn need_event_matches_the_spec_inequality() {
        // vring_need_event(event, new, old): interrupt iff event in [old, new).
        let need = |event: u16, new: u16, old: u16| {
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        };
        assert!(need(5, 6, 5));
        assert!(!need(6, 6, 5));
        assert!(need(3, 10, 0));
        assert!(!need(20, 10, 0));
        assert!(need(65535, 2, 65534), "wraps");
    }
}
