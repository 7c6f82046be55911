//! [`ClusterMap`]: one volume's sparse map, virtual cluster -> pool cluster.

use std::fmt;
use std::num::NonZeroU32;

/// Entries per radix page: 1024 (one page is 4 KiB of `Option<NonZeroU32>`).
pub const PAGE_ENTRIES: usize = 1 << PAGE_SHIFT;
const PAGE_SHIFT: u32 = 10;

type Page = [Option<NonZeroU32>; PAGE_ENTRIES];

/// A top-level slot: the page (allocated on the first mapping in its range,
/// dropped again when its last entry is removed) and how many entries it holds.
#[derive(Clone, Default)]
struct Slot {
    page: Option<Box<Page>>,
    used: u16,
}

/// A virtual cluster at or beyond [`ClusterMap::MAX_CLUSTERS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VclusterTooLarge(pub u64);

impl fmt::Display for VclusterTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "virtual cluster {} is beyond the largest supported ({})",
            self.0,
            ClusterMap::MAX_CLUSTERS - 1
        )
    }
}

/// A volume's sparse map from virtual cluster (`u64`) to pool cluster
/// (`NonZeroU32`: cluster 0 holds the superblock and is never a data cluster,
/// so "unmapped" costs no extra bit).
///
/// Two-level radix: a `Vec` of optional 4 KiB pages of 1024 entries, allocated
/// on demand. Memory follows what is mapped: 4 bytes per entry of a touched
/// page plus 16 bytes of top level per 1024 virtual clusters up to the highest
/// mapped page (at 64 KiB clusters: 256 KiB of top level per TiB of address
/// span). Lookups are two indexed loads, independent of snapshot/clone depth
/// (issue: "no read cost growing with depth").
///
/// `Clone` is a full copy: one 4 KiB allocation + memcpy per mapped page. It is
/// what a snapshot or clone costs in memory and time (rule 4: the copy is
/// frozen, later writes to the source never reach it).
#[derive(Clone, Default)]
pub struct ClusterMap {
    slots: Vec<Slot>,
    len: u64,
}

fn split(vcluster: u64) -> (usize, usize) {
    // vcluster < MAX_CLUSTERS (2^34) is checked by callers that insert; for
    // lookups a huge index simply finds no slot.
    let page = usize::try_from(vcluster >> PAGE_SHIFT).unwrap_or(usize::MAX);
    (page, (vcluster as usize) & (PAGE_ENTRIES - 1))
}

impl ClusterMap {
    /// Largest number of virtual clusters a map (hence a volume) may have:
    /// 2^34 (64 TiB at 4 KiB clusters, 1 PiB at 64 KiB). Bounds the top level
    /// to 2^24 slots.
    pub const MAX_CLUSTERS: u64 = 1 << 34;

    /// An empty map (no heap memory).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of mapped virtual clusters.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pool cluster `vcluster` maps to, if any.
    pub fn get(&self, vcluster: u64) -> Option<NonZeroU32> {
        let (p, i) = split(vcluster);
        self.slots.get(p)?.page.as_ref()?[i]
    }

    /// Maps `vcluster` to `pcluster`; returns the pool cluster it mapped to before.
    pub fn set(
        &mut self,
        vcluster: u64,
        pcluster: NonZeroU32,
    ) -> Result<Option<NonZeroU32>, VclusterTooLarge> {
        if vcluster >= Self::MAX_CLUSTERS {
            return Err(VclusterTooLarge(vcluster));
        }
        let (p, i) = split(vcluster);
        if self.slots.len() <= p {
            self.slots.resize_with(p + 1, Slot::default);
        }
        let slot = &mut self.slots[p];
        let page = slot
            .page
            .get_or_insert_with(|| Box::new([None; PAGE_ENTRIES]));
        let old = page[i].replace(pcluster);
        if old.is_none() {
            slot.used += 1;
            self.len += 1;
        }
        Ok(old)
    }

    /// Unmaps `vcluster`; returns the pool cluster it mapped to. A page whose
    /// last entry goes is freed.
    pub fn remove(&mut self, vcluster: u64) -> Option<NonZeroU32> {
        let (p, i) = split(vcluster);
        let slot = self.slots.get_mut(p)?;
        let old = slot.page.as_mut()?[i].take()?;
        slot.used -= 1;
        self.len -= 1;
        if slot.used == 0 {
            slot.page = None;
            self.trim();
        }
        Some(old)
    }

    /// Removes every entry at or above `start` (a shrink); returns them ascending.
    pub fn remove_from(&mut self, start: u64) -> Vec<(u64, NonZeroU32)> {
        let gone: Vec<_> = self.iter_from(start).collect();
        for &(vcluster, _) in &gone {
            self.remove(vcluster);
        }
        gone
    }

    /// Mapped entries in ascending virtual-cluster order.
    pub fn iter(&self) -> Iter<'_> {
        self.iter_from(0)
    }

    /// Mapped entries at or above `start`, ascending. Skips absent pages;
    /// scans the 1024 entries of each present one.
    pub fn iter_from(&self, start: u64) -> Iter<'_> {
        let (page, index) = split(start);
        Iter {
            slots: &self.slots,
            page,
            index,
        }
    }

    /// Heap memory held: top level (by capacity) plus pages.
    pub fn heap_bytes(&self) -> usize {
        let pages = self.slots.iter().filter(|s| s.page.is_some()).count();
        self.slots.capacity() * std::mem::size_of::<Slot>() + pages * std::mem::size_of::<Page>()
    }

    /// Drops trailing empty slots so the top level follows the highest mapping.
    fn trim(&mut self) {
        while self.slots.last().is_some_and(|s| s.page.is_none()) {
            self.slots.pop();
        }
        if self.slots.capacity() > 2 * self.slots.len() + 16 {
            self.slots.shrink_to_fit();
        }
    }
}

impl fmt::Debug for ClusterMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Ascending iterator over a [`ClusterMap`]'s entries: `(vcluster, pcluster)`.
pub struct Iter<'a> {
    slots: &'a [Slot],
    page: usize,
    index: usize,
}

impl Iterator for Iter<'_> {
    type Item = (u64, NonZeroU32);

    fn next(&mut self) -> Option<Self::Item> {
        while let Some(slot) = self.slots.get(self.page) {
            if let Some(page) = &slot.page {
                while self.index < PAGE_ENTRIES {
                    let i = self.index;
                    self.index += 1;
                    if let Some(pc) = page[i] {
                        return Some((((self.page as u64) << PAGE_SHIFT) | i as u64, pc));
                    }
                }
            }
            self.page += 1;
            self.index = 0;
        }
        None
    }
}
