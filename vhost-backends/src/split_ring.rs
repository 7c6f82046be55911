//! The device side of a split virtqueue (virtio 1.x §2.7), with the three ring
//! areas translated to host memory once per batch.
//!
//! `virtio_queue` translates a guest address on every access (avail index,
//! each ring entry, each descriptor, each used element); at 64-byte frames that
//! was the largest item of the profile after the copies. This view looks the
//! areas up once, then reads and writes them directly. The queue state
//! (`next_avail`, `next_used`, notification settings) stays in
//! `virtio_queue::Queue`; this is only the access path.
//!
//! Every value the driver controls is validated here, once: ring addresses and
//! sizes against guest memory, head and `next` indices against the table,
//! chain length (no loops), indirect tables (length a multiple of 16, not
//! nested, not combined with NEXT), and each buffer against guest memory.

use crate::dirty_log::{DirtyLog, LogBatch};
use crate::{GuestMem, GuestMemAtomic};
use std::sync::atomic::Ordering;
use vhost_user_backend::{VringMutex, VringT};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;
const DESC_SIZE: usize = 16;

/// struct virtq_avail: flags, idx, ring[size], used_event.
const AVAIL_IDX: usize = 2;
const AVAIL_RING: usize = 4;
/// struct virtq_used: flags, idx, ring[size] of (id u32, len u32), avail_event.
const USED_IDX: usize = 2;
const USED_RING: usize = 4;
const USED_ELEM: usize = 8;
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// A descriptor chain the driver got wrong; the chain is returned unused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// A descriptor index outside its table.
    BadIndex,
    /// More descriptors than the chain may have (the queue size, indirect
    /// tables included, or the caller's budget): a loop or a costly chain.
    TooLong,
    /// Indirect table misaligned in length, nested, combined with NEXT, or empty.
    BadIndirect,
    /// A buffer outside guest memory.
    BadBuffer,
    /// The chain's buffers have the wrong direction or the consumer refused it.
    Rejected,
}

#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc(table: &VolatileSlice<'_>, index: u16) -> Option<Desc> {
    let mut raw = [0u8; DESC_SIZE];
    table
        .read_slice(&mut raw, index as usize * DESC_SIZE)
        .ok()?;
    Some(Desc {
        addr: u64::from_le_bytes(raw[0..8].try_into().ok()?),
        len: u32::from_le_bytes(raw[8..12].try_into().ok()?),
        flags: u16::from_le_bytes(raw[12..14].try_into().ok()?),
        next: u16::from_le_bytes(raw[14..16].try_into().ok()?),
    })
}

/// The cache line size prefetches step by.
pub(crate) const CACHE_LINE: usize = 64;

/// Starts loading the cache line at `p`: a hint, never a fault.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`prefetch`]es every line of the `len` bytes at `p`.
#[inline]
pub(crate) fn prefetch_range(p: *const u8, len: usize) {
    let first = p as usize % CACHE_LINE;
    for off in (0..first + len).step_by(CACHE_LINE) {
        prefetch(p.wrapping_sub(first).wrapping_add(off));
    }
}

/// Bytes of a receive buffer fetched ahead: the header and a small frame.
const PREFETCH_RX_BYTES: usize = 128;

/// The rings of one queue, in host memory. Valid while `mem` is.
pub struct RingView<'m> {
    mem: &'m GuestMem,
    desc: VolatileSlice<'m>,
    avail: VolatileSlice<'m>,
    used: VolatileSlice<'m>,
    /// The used ring's guest physical address, for the dirty log.
    used_gpa: u64,
    size: u16,
    event_idx: bool,
}

impl<'m> RingView<'m> {
    /// `None` if the queue is not ready or its rings are not in guest memory.
    pub fn new(queue: &Queue, mem: &'m GuestMem) -> Option<RingView<'m>> {
        if !queue.ready() {
            return None;
        }
        Self::stopping(queue, mem)
    }

    /// Like [`new`](Self::new) but also for a queue just stopped by
    /// GET_VRING_BASE: a device that completes the requests it had in
    /// flight before answering still writes the used ring.
    pub fn stopping(queue: &Queue, mem: &'m GuestMem) -> Option<RingView<'m>> {
        let size = queue.size();
        let n = size as usize;
        // §2.7: descriptor table 16-byte, avail ring 2-byte, used ring 4-byte aligned.
        let aligned = queue.desc_table().is_multiple_of(16)
            && queue.avail_ring().is_multiple_of(2)
            && queue.used_ring().is_multiple_of(4);
        if !aligned {
            return None;
        }
        let area = |addr: u64, len: usize| mem.get_slice(GuestAddress(addr), len).ok();
        Some(RingView {
            mem,
            desc: area(queue.desc_table(), n * DESC_SIZE)?,
            avail: area(queue.avail_ring(), AVAIL_RING + 2 * n + 2)?,
            used: area(queue.used_ring(), USED_RING + USED_ELEM * n + 2)?,
            used_gpa: queue.used_ring(),
            size,
            event_idx: queue.event_idx_enabled(),
        })
    }

    /// The driver's avail index (acquire: ring entries written before it are visible).
    pub fn avail_idx(&self) -> Option<u16> {
        self.avail
            .load::<u16>(AVAIL_IDX, Ordering::Acquire)
            .ok()
            .map(u16::from_le)
    }

    /// The device's used index as the driver sees it.
    pub fn used_idx(&self) -> Option<u16> {
        self.used
            .load::<u16>(USED_IDX, Ordering::Acquire)
            .ok()
            .map(u16::from_le)
    }

    /// The head of the chain at free-running avail position `pos`.
    pub fn avail_head(&self, pos: u16) -> Option<u16> {
        let at = AVAIL_RING + 2 * (pos % self.size) as usize;
        self.avail
            .load::<u16>(at, Ordering::Relaxed)
            .ok()
            .map(u16::from_le)
    }

    /// Starts loading what taking the `n` chains from free-running avail
    /// position `pos` will read: their first descriptors, then the first
    /// [`PREFETCH_RX_BYTES`] of each one's first buffer. The driver wrote them all on
    /// another core; asked for together, the misses overlap instead of
    /// stalling the batch one chain at a time. Reads nothing it does not
    /// validate first; an odd chain is only not fetched ahead.
    pub fn prefetch_chains(&self, pos: u16, n: u16) {
        let heads = || {
            (0..n)
                .filter_map(move |i| self.avail_head(pos.wrapping_add(i)))
                .filter(|&head| head < self.size)
        };
        let table = self.desc.ptr_guard().as_ptr();
        for head in heads() {
            prefetch(table.wrapping_add(head as usize * DESC_SIZE));
        }
        for head in heads() {
            let Some(d) = read_desc(&self.desc, head) else {
                continue;
            };
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 || d.len == 0 {
                continue;
            }
            let len = (d.len as usize).min(PREFETCH_RX_BYTES);
            if let Ok(buf) = self.mem.get_slice(GuestAddress(d.addr), len) {
                prefetch_range(buf.ptr_guard().as_ptr(), len);
            }
        }
    }

    /// Chains the driver has made available since `next_avail`, or `None` if
    /// its index is further ahead than the ring holds (a broken driver).
    pub fn pending(&self, next_avail: u16) -> Option<u16> {
        let n = self.avail_idx()?.wrapping_sub(next_avail);
        (n <= self.size).then_some(n)
    }

    /// Walks the chain starting at `head`, calling `f(buffer, device_writable,
    /// guest_address)` for each buffer in order; `f` returns false to reject the chain. The
    /// chain may have at most queue-size buffers, indirect tables included.
    pub fn walk(
        &self,
        head: u16,
        f: impl FnMut(VolatileSlice<'m>, bool, u64) -> bool,
    ) -> Result<(), ChainError> {
        // Enough for any chain the queue-size limit allows, plus its
        // indirect descriptor.
        let mut budget = u32::from(self.size) + 1;
        self.walk_budgeted(head, &mut budget, f)
    }

    /// Like [`walk`](Self::walk), but every descriptor read, zero-length and
    /// indirect ones included, also takes one from `budget` (left with what
    /// remains, also on error): the caller bounds the work a guest can cause,
    /// whatever its chains look like. Running out rejects the chain as
    /// [`ChainError::TooLong`]; so do more buffers than the queue size
    /// (§2.7.5.3.1: a chain never exceeds it, indirect tables included).
    pub fn walk_budgeted(
        &self,
        head: u16,
        budget: &mut u32,
        mut f: impl FnMut(VolatileSlice<'m>, bool, u64) -> bool,
    ) -> Result<(), ChainError> {
        if head >= self.size {
            return Err(ChainError::BadIndex);
        }
        let mut table = self.desc;
        let mut table_len = self.size;
        let mut index = head;
        let mut indirect = false;
        // Buffers the chain may still have; the indirect descriptor itself is
        // no buffer, so a full-size indirect table is legal.
        let mut buffers_left = u32::from(self.size);
        loop {
            if *budget == 0 || buffers_left == 0 {
                return Err(ChainError::TooLong);
            }
            *budget -= 1;
            let d = read_desc(&table, index).ok_or(ChainError::BadIndex)?;
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                // §2.7.5.3: one level, whole descriptors, not chained onward.
                if indirect
                    || d.flags & VIRTQ_DESC_F_NEXT != 0
                    || d.len == 0
                    || !(d.len as usize).is_multiple_of(DESC_SIZE)
                {
                    return Err(ChainError::BadIndirect);
                }
                // A table longer than the chain may be is refused unread.
                let entries = d.len as usize / DESC_SIZE;
                if entries > buffers_left as usize {
                    return Err(ChainError::TooLong);
                }
                table = self
                    .mem
                    .get_slice(GuestAddress(d.addr), d.len as usize)
                    .map_err(|_| ChainError::BadIndirect)?;
                table_len = entries as u16;
                index = 0;
                indirect = true;
                continue;
            }
            buffers_left -= 1;
            let buffer = self
                .mem
                .get_slice(GuestAddress(d.addr), d.len as usize)
                .map_err(|_| ChainError::BadBuffer)?;
            if !f(buffer, d.flags & VIRTQ_DESC_F_WRITE != 0, d.addr) {
                return Err(ChainError::Rejected);
            }
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(());
            }
            if d.next >= table_len {
                return Err(ChainError::BadIndex);
            }
            index = d.next;
        }
    }

    /// Writes used elements at free-running positions from `next_used` on, then
    /// the used index once (release: the driver never sees an index before its
    /// elements, §2.7.8). Returns the new index.
    pub fn publish_used(&self, next_used: u16, items: &[(u16, u32)]) -> Option<u16> {
        let mut next = next_used;
        for &(head, len) in items {
            let at = USED_RING + USED_ELEM * (next % self.size) as usize;
            self.used
                .store(u32::from(head).to_le(), at, Ordering::Relaxed)
                .ok()?;
            self.used
                .store(len.to_le(), at + 4, Ordering::Relaxed)
                .ok()?;
            next = next.wrapping_add(1);
        }
        self.used
            .store(next.to_le(), USED_IDX, Ordering::Release)
            .ok()?;
        Some(next)
    }

    /// Marks in `log` what [`publish_used`](Self::publish_used) from `old` to
    /// `new` wrote: those used elements and the used index.
    pub fn log_used(&self, log: &LogBatch<'_>, old: u16, new: u16) {
        if !log.is_on() || new == old {
            return;
        }
        let size = u64::from(self.size);
        let count = u64::from(new.wrapping_sub(old)).min(size);
        let first = u64::from(old % self.size);
        let elem = |slot: u64| self.used_gpa + (USED_RING + USED_ELEM * slot as usize) as u64;
        let elem_len = USED_ELEM as u64;
        let before_wrap = count.min(size - first);
        log.mark(elem(first), before_wrap * elem_len);
        log.mark(elem(0), (count - before_wrap) * elem_len);
        log.mark(self.used_gpa + USED_IDX as u64, 2);
    }

    /// Whether the driver wants an interrupt for the used index moving from
    /// `old` to `new`: with EVENT_IDX when `used_event` lies in [old, new)
    /// (Linux's `vring_need_event`), without it unless NO_INTERRUPT is set.
    pub fn needs_interrupt(&self, old: u16, new: u16) -> bool {
        // Our used index store must be visible before we read the driver's
        // wishes, or we could miss an interrupt it asked for meanwhile.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.event_idx {
            let at = AVAIL_RING + 2 * self.size as usize;
            match self.avail.load::<u16>(at, Ordering::Acquire) {
                Ok(used_event) => {
                    let used_event = u16::from_le(used_event);
                    new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old)
                }
                Err(_) => true,
            }
        } else {
            match self.avail.load::<u16>(0, Ordering::Acquire) {
                Ok(flags) => u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0,
                Err(_) => true,
            }
        }
    }
}

/// Asks the driver for kicks again (`enable`: true; with EVENT_IDX, by
/// writing `avail_event`) or not (false; without EVENT_IDX, by setting the
/// used ring's NO_NOTIFY flag), on a ring that is started and enabled only,
/// both checked under the same lock as the write: once GET_VRING_BASE has
/// stopped a ring, its memory is the frontend's again. The write is marked
/// in the dirty log. Returns `Some(more)` (`more`: enabling found work
/// already waiting), `None` if the ring is stopped or the write failed.
pub(crate) fn set_kicks(
    vring: &VringMutex<GuestMemAtomic>,
    log: &DirtyLog,
    enable: bool,
) -> Option<bool> {
    let mut state = vring.get_mut();
    if !state.is_enabled() || !state.get_queue().ready() {
        return None;
    }
    let batch = log.begin();
    let more = match enable {
        true => state.enable_notification().ok(),
        false => state.disable_notification().ok().map(|()| false),
    };
    // What virtio-queue wrote: avail_event (the used ring's last two bytes)
    // to enable with EVENT_IDX, nothing to disable with it; the flags (its
    // first two) without it.
    let queue = state.get_queue();
    let used = queue.used_ring();
    match (queue.event_idx_enabled(), enable) {
        (true, true) => {
            let avail_event = USED_RING + USED_ELEM * usize::from(queue.size());
            batch.mark(used + avail_event as u64, 2);
        }
        (true, false) => {}
        (false, _) => batch.mark(used, 2),
    }
    batch.finish();
    more
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u16 = 8;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const INDIRECT_TABLE: u64 = 0x4000;
    const BUF: u64 = 0x8000;
    const MEM: usize = 0x10000;

    fn setup() -> (GuestMem, Queue) {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let mut q = Queue::new(SIZE).unwrap();
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        (mem, q)
    }

    fn put_desc(mem: &GuestMem, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }

    fn walk(mem: &GuestMem, q: &Queue, head: u16) -> Result<Vec<(usize, bool)>, ChainError> {
        let ring = RingView::new(q, mem).unwrap();
        let mut bufs = Vec::new();
        ring.walk(head, |b, w, _| {
            bufs.push((b.len(), w));
            true
        })
        .map(|_| bufs)
    }

    #[test]
    fn direct_chain() {
        let (mem, q) = setup();
        put_desc(&mem, DESC, 0, BUF, 12, VIRTQ_DESC_F_NEXT, 3);
        put_desc(&mem, DESC, 3, BUF + 64, 100, VIRTQ_DESC_F_WRITE, 0);
        assert_eq!(walk(&mem, &q, 0), Ok(vec![(12, false), (100, true)]));
    }

    /// `log_used` marks the elements a publish wrote, wrapping at the ring's
    /// end, and the index: a 1024-entry used ring placed so its elements
    /// fill pages 16 and 17 exactly, the index is on page 15 and
    /// avail_event on page 18.
    #[test]
    fn log_used_marks_the_elements_written_wrapping_and_the_index() {
        use crate::dirty_log::{testing::logging, LOG_PAGE};
        let size = 1024u16;
        let used = 16 * LOG_PAGE - USED_RING as u64;
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap();
        let mut q = Queue::new(size).unwrap();
        q.set_desc_table_address(Some(0x1000), Some(0));
        q.set_avail_ring_address(Some(0x8000), Some(0));
        q.set_used_ring_address(Some(used as u32), Some(0));
        q.set_ready(true);
        let ring = RingView::new(&q, &mem).unwrap();
        let (log, f) = logging(8);
        let check = |old: u16, new: u16, pages: &[u64]| {
            let batch = log.begin();
            ring.log_used(&batch, old, new);
            batch.finish();
            assert_eq!(f.take(), pages, "{old}..{new}");
        };
        check(0, 3, &[15, 16]);
        check(600, 601, &[15, 17]);
        // Slots 1020..=1023 and then 0..=5: never past the ring's end.
        check(1020, 1030, &[15, 16, 17]);
        // Free-running indices wrap at u16::MAX too.
        check(u16::MAX, 1, &[15, 16, 17]);
        check(5, 5, &[]);
    }

    #[test]
    fn bad_chains() {
        let (mem, q) = setup();
        assert_eq!(walk(&mem, &q, SIZE), Err(ChainError::BadIndex));
        put_desc(&mem, DESC, 0, BUF, 12, VIRTQ_DESC_F_NEXT, 1);
        put_desc(&mem, DESC, 1, BUF, 12, VIRTQ_DESC_F_NEXT, 0);
        assert_eq!(walk(&mem, &q, 0), Err(ChainError::TooLong));
        put_desc(&mem, DESC, 1, BUF, 12, VIRTQ_DESC_F_NEXT, SIZE);
        assert_eq!(walk(&mem, &q, 0), Err(ChainError::BadIndex));
        put_desc(&mem, DESC, 1, MEM as u64 - 4, 12, 0, 0);
        assert_eq!(walk(&mem, &q, 0), Err(ChainError::BadBuffer));
        put_desc(&mem, DESC, 2, BUF, u32::MAX, 0, 0);
        assert_eq!(walk(&mem, &q, 2), Err(ChainError::BadBuffer));
    }

    #[test]
    fn indirect_tables() {
        let (mem, q) = setup();
        put_desc(&mem, INDIRECT_TABLE, 0, BUF, 12, VIRTQ_DESC_F_NEXT, 1);
        put_desc(&mem, INDIRECT_TABLE, 1, BUF + 12, 60, 0, 0);
        put_desc(&mem, DESC, 0, INDIRECT_TABLE, 32, VIRTQ_DESC_F_INDIRECT, 0);
        assert_eq!(walk(&mem, &q, 0), Ok(vec![(12, false), (60, false)]));
        // Length not a multiple of 16, combined with NEXT, nested, empty.
        put_desc(&mem, DESC, 0, INDIRECT_TABLE, 24, VIRTQ_DESC_F_INDIRECT, 0);
        assert_eq!(walk(&mem, &q, 0), Err(ChainError::BadIndirect));
        put_desc(
            &mem,
            DESC,
            0,
            INDIRECT_TABLE,
            32,
            VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT,
            1,
        );
        assert_eq!(walk(&mem, &q, 0), Err(ChainError::BadIndirect));
        put_desc(
            &mem,
            INDIRECT_TABLE,
            1,
            INDIRECT_TABLE,
            32,
            VIRTQ_DESC_F_INDIRECT,
            0,
        );
        put_desc(&mem, DESC, 0, INDIRECT_TABLE, 32, VIRTQ_DESC_F_INDIRECT, 0);
        assert_eq!(walk(&mem, &q, 0), Err(ChainError::BadIndirect));
        put_desc(&mem, DESC, 0, INDIRECT_TABLE, 0, VIRTQ_DESC_F_INDIRECT, 0);
        assert_eq!(walk(&mem, &q, 0), Err(ChainError::BadIndirect));
        // A loop inside an indirect table is bounded by the table's length.
        put_desc(&mem, INDIRECT_TABLE, 0, BUF, 12, VIRTQ_DESC_F_NEXT, 1);
        put_desc(&mem, INDIRECT_TABLE, 1, BUF, 12, VIRTQ_DESC_F_NEXT, 0);
        put_desc(&mem, DESC, 0, INDIRECT_TABLE, 32, VIRTQ_DESC_F_INDIRECT, 0);
        assert_eq!(walk(&mem, &q, 0), Err(ChainError::TooLong));
    }

    #[test]
    fn every_descriptor_costs_budget() {
        let (mem, q) = setup();
        let ring = RingView::new(&q, &mem).unwrap();
        // A full-size indirect table of zero-length descriptors: legal, and
        // each of them is paid for, plus the indirect descriptor.
        for i in 0..SIZE {
            let last = i + 1 == SIZE;
            let flags = if last { 0 } else { VIRTQ_DESC_F_NEXT };
            put_desc(&mem, INDIRECT_TABLE, i, BUF, 0, flags, i + 1);
        }
        let indirect = |entries: u32| {
            let len = 16 * entries;
            put_desc(&mem, DESC, 0, INDIRECT_TABLE, len, VIRTQ_DESC_F_INDIRECT, 0);
        };
        indirect(u32::from(SIZE));
        let mut budget = 100;
        let mut seen = 0;
        let walked = ring.walk_budgeted(0, &mut budget, |_, _, _| {
            seen += 1;
            true
        });
        assert_eq!(walked, Ok(()));
        assert_eq!((seen, budget), (SIZE, 100 - 1 - u32::from(SIZE)));
        // Out of budget in the middle: rejected, the budget is spent, not more.
        let mut budget = 5;
        assert_eq!(
            ring.walk_budgeted(0, &mut budget, |_, _, _| true),
            Err(ChainError::TooLong)
        );
        assert_eq!(budget, 0);
        // A table longer than the queue size is refused before it is read.
        indirect(u32::from(SIZE) + 1);
        let mut budget = 100;
        assert_eq!(
            ring.walk_budgeted(0, &mut budget, |_, _, _| true),
            Err(ChainError::TooLong)
        );
        assert_eq!(budget, 99, "only the indirect descriptor was read");
    }

    #[test]
    fn avail_and_used() {
        let (mem, q) = setup();
        let ring = RingView::new(&q, &mem).unwrap();
        mem.write_obj(3u16.to_le(), GuestAddress(AVAIL + 2))
            .unwrap();
        mem.write_obj(5u16.to_le(), GuestAddress(AVAIL + 4 + 2))
            .unwrap();
        assert_eq!(ring.pending(0), Some(3));
        assert_eq!(ring.pending(65535), Some(4), "free-running indices wrap");
        assert_eq!(
            ring.pending(10),
            None,
            "an index further ahead than the ring is broken"
        );
        assert_eq!(ring.avail_head(1 + SIZE), Some(5));
        assert_eq!(
            ring.publish_used(SIZE - 1, &[(4, 100), (6, 0)]),
            Some(SIZE + 1)
        );
        let elem: [u32; 2] = [
            mem.read_obj(GuestAddress(USED + 4 + 8 * (SIZE as u64 - 1)))
                .unwrap(),
            mem.read_obj(GuestAddress(USED + 4 + 8 * (SIZE as u64 - 1) + 4))
                .unwrap(),
        ];
        assert_eq!(elem, [4, 100]);
        let wrapped: u32 = mem.read_obj(GuestAddress(USED + 4)).unwrap();
        assert_eq!(wrapped, 6, "the second element wrapped to slot 0");
        let idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(idx, SIZE + 1);
    }

    /// Fetching ahead reads only what it validated: heads outside the
    /// table, buffers outside guest memory, indirect and empty descriptors
    /// are passed over, at any avail position, without a panic.
    #[test]
    fn prefetch_chains_passes_over_garbage() {
        let (mem, q) = setup();
        let ring = RingView::new(&q, &mem).unwrap();
        put_desc(&mem, DESC, 0, BUF, 64, VIRTQ_DESC_F_WRITE, 0);
        put_desc(&mem, DESC, 1, MEM as u64 - 8, 128, VIRTQ_DESC_F_WRITE, 0);
        put_desc(&mem, DESC, 2, u64::MAX - 4, 64, VIRTQ_DESC_F_WRITE, 0);
        put_desc(&mem, DESC, 3, INDIRECT_TABLE, 32, VIRTQ_DESC_F_INDIRECT, 0);
        put_desc(&mem, DESC, 4, BUF, 0, VIRTQ_DESC_F_WRITE, 0);
        for (slot, head) in [0u16, 1, 2, 3, 4, SIZE, u16::MAX, 0].iter().enumerate() {
            mem.write_obj(head.to_le(), GuestAddress(AVAIL + 4 + 2 * slot as u64))
                .unwrap();
        }
        for pos in [0, 5, SIZE - 1, u16::MAX] {
            ring.prefetch_chains(pos, SIZE);
        }
        ring.prefetch_chains(0, u16::MAX);
    }

    #[test]
    fn interrupt_rules() {
        let (mem, mut q) = setup();
        // Without EVENT_IDX: unless NO_INTERRUPT.
        assert!(RingView::new(&q, &mem).unwrap().needs_interrupt(0, 1));
        mem.write_obj(VRING_AVAIL_F_NO_INTERRUPT.to_le(), GuestAddress(AVAIL))
            .unwrap();
        assert!(!RingView::new(&q, &mem).unwrap().needs_interrupt(0, 1));
        // With EVENT_IDX: iff used_event in [old, new) (vring_need_event).
        q.set_event_idx(true);
        let ring = RingView::new(&q, &mem).unwrap();
        let used_event = GuestAddress(AVAIL + 4 + 2 * SIZE as u64);
        for (event, old, new, want) in [
            (5, 5, 6, true),
            (6, 5, 6, false),
            (3, 0, 10, true),
            (20, 0, 10, false),
            (65535, 65534, 2, true),
        ] {
            mem.write_obj(u16::to_le(event), used_event).unwrap();
            assert_eq!(
                ring.needs_interrupt(old, new),
                want,
                "event {event} old {old} new {new}"
            );
        }
    }

    #[test]
    fn rings_outside_memory_or_not_ready() {
        let (mem, mut q) = setup();
        q.set_used_ring_address(Some(MEM as u32 - 8), Some(0));
        assert!(RingView::new(&q, &mem).is_none());
        let (mem, mut q) = setup();
        q.set_ready(false);
        assert!(RingView::new(&q, &mem).is_none());
    }
}

/// A queue in a small guest memory, for tests of request parsers: build
/// chains from readable and writable buffers, then walk them.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::cell::Cell;

    const SIZE: u16 = 64;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const BUFS: u64 = 0x10000;
    const MEM: usize = 0x100000;

    /// One buffer of a chain.
    pub(crate) enum Chain<'a> {
        Read(&'a [u8]),
        Write(usize),
    }

    impl<'a> Chain<'a> {
        pub(crate) fn read(data: &'a [u8]) -> Self {
            Chain::Read(data)
        }
        pub(crate) fn write(len: usize) -> Self {
            Chain::Write(len)
        }
    }

    pub(crate) struct TestRing {
        pub(crate) mem: GuestMem,
        queue: Queue,
        next_desc: Cell<u16>,
        next_buf: Cell<u64>,
    }

    impl TestRing {
        pub(crate) fn new() -> TestRing {
            let mem = GuestMem::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
            let mut queue = Queue::new(SIZE).unwrap();
            queue.set_desc_table_address(Some(DESC as u32), Some(0));
            queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
            queue.set_used_ring_address(Some(USED as u32), Some(0));
            queue.set_ready(true);
            TestRing {
                mem,
                queue,
                next_desc: Cell::new(0),
                next_buf: Cell::new(BUFS),
            }
        }

        /// Writes a chain of `bufs` (descriptors and buffer contents) and
        /// returns its head. Buffers are 512-aligned.
        pub(crate) fn chain(&self, bufs: &[Chain<'_>]) -> u16 {
            let head = self.next_desc.get();
            for (i, b) in bufs.iter().enumerate() {
                let index = (head + i as u16) % SIZE;
                let (len, flags) = match b {
                    Chain::Read(d) => (d.len(), 0),
                    Chain::Write(n) => (*n, VIRTQ_DESC_F_WRITE),
                };
                let mut addr = self.next_buf.get();
                if addr + len as u64 > MEM as u64 {
                    addr = BUFS;
                }
                self.next_buf.set((addr + len as u64).next_multiple_of(512));
                if let Chain::Read(d) = b {
                    self.mem.write_slice(d, GuestAddress(addr)).unwrap();
                }
                let last = i + 1 == bufs.len();
                let flags = flags | if last { 0 } else { VIRTQ_DESC_F_NEXT };
                let next = (index + 1) % SIZE;
                let mut raw = [0u8; 16];
                raw[0..8].copy_from_slice(&addr.to_le_bytes());
                raw[8..12].copy_from_slice(&(len as u32).to_le_bytes());
                raw[12..14].copy_from_slice(&flags.to_le_bytes());
                raw[14..16].copy_from_slice(&next.to_le_bytes());
                self.mem
                    .write_slice(&raw, GuestAddress(DESC + 16 * index as u64))
                    .unwrap();
            }
            self.next_desc.set((head + bufs.len() as u16) % SIZE);
            head
        }

        pub(crate) fn view(&self) -> RingView<'_> {
            RingView::new(&self.queue, &self.mem).unwrap()
        }
    }
}
