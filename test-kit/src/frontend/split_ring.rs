//! The driver side of one split virtqueue (virtio 1.2, section 2.7), written by hand so
//! the harness does not share code (or bugs) with the device side it is testing.
//!
//! Layout in guest memory, for a queue of `size` entries:
//!
//! ```text
//! descriptor table  16 * size   { addr: le64, len: le32, flags: le16, next: le16 }
//! available ring    6 + 2*size  { flags: le16, idx: le16, ring[size]: le16, used_event: le16 }
//! used ring         6 + 8*size  { flags: le16, idx: le16, ring[size]: {id: le32, len: le32},
//!                                 avail_event: le16 }
//! ```
//!
//! `idx` fields are free-running u16 counters; ring slots are `idx % size` (size is a power
//! of two, 2.7.1), so all index arithmetic below is wrapping.

use std::io;
use std::sync::atomic::{fence, Ordering};

use vhost::VringConfigData;

use super::guest_memory::GuestRam;

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: "don't interrupt me" (only meaningful without EVENT_IDX).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: "don't kick me" (only meaningful without EVENT_IDX).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// One descriptor as the driver writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// `vring_need_event` from the spec (2.7.10): true if moving an index from `old` to `new`
/// crossed `event`, i.e. the other side asked to be notified at `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The guest address ranges of a split virtqueue's areas (2.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingAreas {
    pub desc: std::ops::Range<u64>,
    pub avail: std::ops::Range<u64>,
    pub used: std::ops::Range<u64>,
}

/// Driver state of one split virtqueue.
pub struct SplitRing {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
    /// Shadow of `avail.idx`: entries pushed but maybe not yet published.
    avail_idx: u16,
    /// `avail.idx` at the last notification decision (the "old" of `vring_need_event`).
    notified_idx: u16,
    /// Next used ring entry to consume.
    last_used: u16,
}

impl SplitRing {
    /// Allocates (zeroed) descriptor table and rings for a queue of `size` entries.
    pub fn new(ram: &mut GuestRam, size: u16, event_idx: bool) -> io::Result<Self> {
        if !size.is_power_of_two() {
            // 2.7.1: queue size is a power of 2 for split rings (max 32768).
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("queue size {size} is not a power of two"),
            ));
        }
        let n = u64::from(size);
        // Alignment rules (2.7): descriptor table 16, available ring 2, used ring 4.
        // Page-aligning each part is allowed and makes dumps easier to read.
        let desc = ram.alloc(16 * n, 4096)?;
        let avail = ram.alloc(6 + 2 * n, 4096)?;
        let used = ram.alloc(6 + 8 * n, 4096)?;
        Ok(SplitRing {
            size,
            desc,
            avail,
            used,
            event_idx,
            avail_idx: 0,
            notified_idx: 0,
            last_used: 0,
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Addresses for `VHOST_USER_SET_VRING_ADDR` (frontend virtual addresses).
    pub fn config(&self, ram: &GuestRam) -> io::Result<VringConfigData> {
        Ok(VringConfigData {
            queue_max_size: self.size,
            queue_size: self.size,
            flags: 0,
            desc_table_addr: ram.host_addr(self.desc)?,
            used_ring_addr: ram.host_addr(self.used)?,
            avail_ring_addr: ram.host_addr(self.avail)?,
            log_addr: None,
        })
    }

    /// Writes descriptor `index` of the table.
    pub fn write_desc(&self, ram: &GuestRam, index: u16, d: Desc) {
        assert!(index < self.size, "descriptor index {index} out of range");
        ram.set_ring_bytes(self.desc + 16 * u64::from(index), &d.to_bytes());
    }

    /// Puts `head` in the next available ring slot, without publishing it yet.
    pub fn push_avail(&mut self, ram: &GuestRam, head: u16) {
        let slot = self.avail_idx % self.size;
        ram.set_ring_u16(
            self.avail + 4 + 2 * u64::from(slot),
            head,
            Ordering::Relaxed,
        );
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Guest address of the descriptor table.
    pub fn desc_table(&self) -> u64 {
        self.desc
    }

    /// Where the ring's three areas are in guest memory.
    pub fn areas(&self) -> RingAreas {
        let n = u64::from(self.size);
        RingAreas {
            desc: self.desc..self.desc + 16 * n,
            avail: self.avail..self.avail + 6 + 2 * n,
            used: self.used..self.used + 6 + 8 * n,
        }
    }

    /// The head most recently pushed to the available ring.
    pub fn last_pushed_head(&self, ram: &GuestRam) -> u16 {
        let slot = self.avail_idx.wrapping_sub(1) % self.size;
        ram.ring_u16(self.avail + 4 + 2 * u64::from(slot), Ordering::Relaxed)
    }

    /// Writes `idx` as the available index as-is (a broken or hostile driver: it
    /// may claim more entries than the ring holds). Later pushes continue from it.
    pub fn force_avail_idx(&mut self, ram: &GuestRam, idx: u16) {
        self.avail_idx = idx;
        self.notified_idx = idx;
        ram.set_ring_u16(self.avail + 2, idx, Ordering::Release);
    }

    /// The driver's available index (pushed entries included).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Entries pushed since the last [`SplitRing::publish`].
    pub fn unpublished(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.notified_idx)
    }

    /// Makes pushed entries visible to the device; returns whether the device wants a kick.
    pub fn publish(&mut self, ram: &GuestRam) -> bool {
        // 2.7.13.2: the descriptors and ring entries must be visible before the idx
        // update ("memory barrier before updating idx"): a release store.
        ram.set_ring_u16(self.avail + 2, self.avail_idx, Ordering::Release);
        // 2.7.13.4: a full barrier between writing idx and reading the device's
        // suppression state (avail_event / used.flags), or we may miss a wanted kick.
        fence(Ordering::SeqCst);
        let old = self.notified_idx;
        let new = self.avail_idx;
        self.notified_idx = new;
        if old == new {
            return false;
        }
        if self.event_idx {
            // 2.7.10: with VIRTIO_F_EVENT_IDX, kick if idx moved past avail_event.
            let avail_event = ram.ring_u16(self.avail_event_addr(), Ordering::Acquire);
            need_event(avail_event, new, old)
        } else {
            // 2.7.7.2: without EVENT_IDX, kick unless the device set NO_NOTIFY.
            ram.ring_u16(self.used, Ordering::Acquire) & VIRTQ_USED_F_NO_NOTIFY == 0
        }
    }

    fn avail_event_addr(&self) -> u64 {
        self.used + 4 + 8 * u64::from(self.size)
    }

    fn used_event_addr(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.size)
    }

    /// Writes `done` (head, length) as the used ring a previous device left, the used
    /// index after them, and counts them consumed: the state a frontend holds when its
    /// backend died after completing these (for reconnect tests).
    pub fn preset_used(&mut self, ram: &GuestRam, done: &[(u16, u32)]) {
        for (i, &(head, len)) in done.iter().enumerate() {
            let at = self.used + 4 + 8 * (i as u64 % u64::from(self.size));
            let mut e = [0u8; 8];
            e[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            e[4..].copy_from_slice(&len.to_le_bytes());
            ram.set_ring_bytes(at, &e);
        }
        let n = done.len() as u16;
        ram.set_ring_u16(self.used + 2, n, Ordering::Release);
        self.last_used = n;
    }

    /// The device's `used.idx`.
    pub fn used_idx(&self, ram: &GuestRam) -> u16 {
        // Acquire: used ring entries written before idx are visible after this load
        // (2.7.14: read used.idx, then the entries).
        ram.ring_u16(self.used + 2, Ordering::Acquire)
    }

    /// Used entries the device published that we have not consumed.
    pub fn used_pending(&self, ram: &GuestRam) -> u16 {
        self.used_idx(ram).wrapping_sub(self.last_used)
    }

    /// Consumes one used entry: `(id, len)`.
    pub fn pop_used(&mut self, ram: &GuestRam) -> Option<(u32, u32)> {
        let pending = self.used_pending(ram);
        if pending == 0 {
            return None;
        }
        // A device that moves used.idx more than `size` ahead of us is broken: it would
        // be overwriting entries we have not read yet.
        assert!(
            pending <= self.size,
            "device bug: used.idx is {pending} entries ahead of the driver, queue size {}",
            self.size
        );
        let slot = self.last_used % self.size;
        let entry = self.used + 4 + 8 * u64::from(slot);
        let id = ram.ring_u32(entry);
        let len = ram.ring_u32(entry + 4);
        self.last_used = self.last_used.wrapping_add(1);
        Some((id, len))
    }

    /// Asks the device for an interrupt when the next used entry is published.
    /// With EVENT_IDX: used_event = last_used (2.7.10); otherwise clear NO_INTERRUPT.
    /// Follows with a full barrier so a subsequent [`SplitRing::used_pending`] check
    /// closes the race with a device that published just before it read used_event.
    pub fn enable_interrupt(&self, ram: &GuestRam) {
        if self.event_idx {
            ram.set_ring_u16(self.used_event_addr(), self.last_used, Ordering::Release);
        } else {
            ram.set_ring_u16(self.avail, 0, Ordering::Release);
        }
        fence(Ordering::SeqCst);
    }

    /// Asks the device not to interrupt (a hint: devices may still do so, 2.7.7.1).
    pub fn disable_interrupt(&self, ram: &GuestRam) {
        if self.event_idx {
            // Park used_event half a ring behind: the device only interrupts once the
            // used index crosses it, i.e. practically never before we re-arm.
            let parked = self.last_used.wrapping_sub(self.size / 2 + 1);
            ram.set_ring_u16(self.used_event_addr(), parked, Ordering::Release);
        } else {
            ram.set_ring_u16(self.avail, VIRTQ_AVAIL_F_NO_INTERRUPT, Ordering::Release);
        }
    }
}
