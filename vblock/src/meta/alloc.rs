//! [`Refcounts`] and the [`Allocator`]: which pool clusters are used, free or
//! releasing.

use std::collections::HashSet;
use std::ops::Range;

use super::error::{AllocError, Violation};

/// Per pool cluster of the data area, a reference count: how many maps point
/// at it, plus one while something outside the maps holds it (an in-flight
/// data write, a checkpoint). Rebuilt at open from checkpoint + journal.
#[derive(Clone, Debug)]
pub struct Refcounts {
    first: u32,
    counts: Vec<u32>,
}

impl Refcounts {
    /// All-zero counts for the clusters in `data` (cluster 0 is never included).
    pub fn new(data: Range<u32>) -> Self {
        let first = data.start.max(1);
        let len = data.end.saturating_sub(first) as usize;
        Self {
            first,
            counts: vec![0; len],
        }
    }

    /// The data clusters covered.
    pub fn range(&self) -> Range<u32> {
        self.first..self.first + self.counts.len() as u32
    }

    /// True if `cluster` is a data cluster of this pool.
    pub fn contains(&self, cluster: u32) -> bool {
        self.index(cluster).is_some()
    }

    /// The count of `cluster`, `None` outside the data area.
    pub fn get(&self, cluster: u32) -> Option<u32> {
        self.index(cluster).map(|i| self.counts[i])
    }

    /// `(cluster, count)` for every data cluster, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        (self.first..).zip(self.counts.iter().copied())
    }

    fn index(&self, cluster: u32) -> Option<usize> {
        let i = cluster.checked_sub(self.first)? as usize;
        (i < self.counts.len()).then_some(i)
    }
}

/// What the allocator knows about one cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// Count 0 and its release is durable: may be allocated.
    Free,
    /// Count > 0.
    Used(u32),
    /// Count dropped to 0 in a journal record not yet durable (rule 3).
    Releasing,
}

/// Reference counts plus the free and releasing sets.
///
/// Serves rule 3 ("a freed cluster is reused only after its release is
/// durable"): a count that drops to 0 puts the cluster in the *releasing* set,
/// which [`allocate`](Self::allocate) never looks at; [`commit`](Self::commit),
/// called once the journal records holding those releases are durable, moves
/// them to the free set.
///
/// State per cluster is 4 bytes of count + 1 bit: count > 0 is used; count 0
/// with the free bit is free; count 0 without it is releasing (and listed in
/// `releasing`). Allocation is lowest-first (deterministic, and keeps data
/// packed at the start of the pool).
#[derive(Clone, Debug)]
pub struct Allocator {
    refs: Refcounts,
    /// Bit set: cluster free. Bits beyond the data area stay 0.
    free: Vec<u64>,
    free_count: u32,
    releasing: Vec<u32>,
    /// Clusters that lost a reference but kept others since the last commit.
    dropped: HashSet<u32>,
    /// No free bit below word `hint`.
    hint: usize,
}

impl Allocator {
    /// Every cluster of `data` free (cluster 0 excluded even if `data` starts at 0).
    pub fn new(data: Range<u32>) -> Self {
        let refs = Refcounts::new(data);
        let n = refs.counts.len();
        let mut free = vec![u64::MAX; n.div_ceil(64)];
        if !n.is_multiple_of(64) {
            if let Some(last) = free.last_mut() {
                *last = (1u64 << (n % 64)) - 1;
            }
        }
        Self {
            refs,
            free,
            free_count: n as u32,
            releasing: Vec::new(),
            dropped: HashSet::new(),
            hint: 0,
        }
    }

    /// The reference counts.
    pub fn refcounts(&self) -> &Refcounts {
        &self.refs
    }

    /// State of `cluster`, `None` outside the data area.
    pub fn state(&self, cluster: u32) -> Option<ClusterState> {
        let i = self.refs.index(cluster)?;
        Some(match self.refs.counts[i] {
            0 if self.bit(i) => ClusterState::Free,
            0 => ClusterState::Releasing,
            n => ClusterState::Used(n),
        })
    }

    /// Takes the lowest free cluster, with count 1 (held by the caller).
    /// Never returns a releasing cluster.
    pub fn allocate(&mut self) -> Option<u32> {
        let w = (self.hint..self.free.len()).find(|&w| self.free[w] != 0);
        let Some(w) = w else {
            self.hint = self.free.len();
            return None;
        };
        self.hint = w;
        let i = w * 64 + self.free[w].trailing_zeros() as usize;
        self.take_index(i);
        Some(self.refs.first + i as u32)
    }

    /// Takes one specific free cluster, with count 1 (journal replay, checkpoint load).
    pub fn take(&mut self, cluster: u32) -> Result<(), AllocError> {
        let i = self
            .refs
            .index(cluster)
            .ok_or(AllocError::OutOfRange(cluster))?;
        if self.refs.counts[i] != 0 || !self.bit(i) {
            return Err(AllocError::NotFree(cluster));
        }
        self.take_index(i);
        Ok(())
    }

    /// The count of a cluster that has at least one reference.
    fn referenced_count(&mut self, cluster: u32) -> Result<&mut u32, AllocError> {
        let i = self
            .refs
            .index(cluster)
            .ok_or(AllocError::OutOfRange(cluster))?;
        let count = &mut self.refs.counts[i];
        if *count == 0 {
            return Err(AllocError::NotReferenced(cluster));
        }
        Ok(count)
    }

    /// One more reference to a used cluster (snapshot, clone). Returns the new count.
    pub fn add_ref(&mut self, cluster: u32) -> Result<u32, AllocError> {
        let count = self.referenced_count(cluster)?;
        *count = count.checked_add(1).ok_or(AllocError::Overflow(cluster))?;
        Ok(*count)
    }

    /// One reference fewer. At 0 the cluster becomes *releasing* (not free:
    /// the record dropping the reference is not durable yet). Returns the new count.
    pub fn release(&mut self, cluster: u32) -> Result<u32, AllocError> {
        let count = self.referenced_count(cluster)?;
        *count -= 1;
        let left = *count;
        if left == 0 {
            self.releasing.push(cluster);
        } else {
            self.dropped.insert(cluster);
        }
        Ok(left)
    }

    /// Undoes an [`allocate`](Self::allocate)/[`take`](Self::take) whose
    /// cluster no journal record ever referenced (a data write that failed
    /// before its `Map`): straight back to free. Safe for rule 3 because the
    /// cluster was free durably before and no durable state names it.
    pub fn unallocate(&mut self, cluster: u32) -> Result<(), AllocError> {
        let i = self
            .refs
            .index(cluster)
            .ok_or(AllocError::OutOfRange(cluster))?;
        match self.refs.counts[i] {
            0 => return Err(AllocError::NotReferenced(cluster)),
            1 => {}
            _ => return Err(AllocError::Shared(cluster)),
        }
        self.refs.counts[i] = 0;
        self.set_free(i);
        Ok(())
    }

    /// The journal records up to now are durable: every releasing cluster
    /// becomes free. Returns how many.
    pub fn commit(&mut self) -> usize {
        self.commit_except(|_| false)
    }

    /// [`commit`](Self::commit), except that clusters for which `keep`
    /// says true stay releasing (I/O still in flight on them: reusing one
    /// now would let that I/O touch another volume's data).
    pub fn commit_except(&mut self, keep: impl Fn(u32) -> bool) -> usize {
        self.dropped.clear();
        let released = std::mem::take(&mut self.releasing);
        let mut freed = 0;
        for c in released {
            if keep(c) {
                self.releasing.push(c);
                continue;
            }
            if let Some(i) = self.refs.index(c) {
                if self.refs.counts[i] == 0 && !self.bit(i) {
                    self.set_free(i);
                    freed += 1;
                }
            }
        }
        freed
    }

    /// True if `cluster` lost a reference since the last commit and is still
    /// referenced: its exclusive owner must not write it in place yet. The
    /// record that dropped the other reference is not durable; after a crash
    /// that reference is back, and an in-place write would show through it
    /// (rule 2). Such a write copies instead, like a write to a shared cluster.
    pub fn dropped_since_commit(&self, cluster: u32) -> bool {
        self.dropped.contains(&cluster)
    }

    /// Number of data clusters.
    pub fn total(&self) -> u32 {
        self.refs.counts.len() as u32
    }

    /// Free clusters (allocatable now).
    pub fn free(&self) -> u32 {
        self.free_count
    }

    /// Releasing clusters (free after the next commit).
    pub fn releasing(&self) -> u32 {
        self.releasing.len() as u32
    }

    /// Used clusters (count > 0).
    pub fn used(&self) -> u32 {
        self.total() - self.free() - self.releasing()
    }

    /// The releasing clusters, in release order.
    pub fn releasing_clusters(&self) -> &[u32] {
        &self.releasing
    }

    /// Heap memory held (counts, bitmap, releasing list).
    pub fn heap_bytes(&self) -> usize {
        self.refs.counts.capacity() * 4 + self.free.capacity() * 8 + self.releasing.capacity() * 4
    }

    /// The allocator's own invariants (the free/releasing/count encoding);
    /// [`Metadata::check`](super::Metadata::check) adds the ones about maps.
    pub(super) fn violations(&self, out: &mut Vec<Violation>) {
        let counted: u32 = self.free.iter().map(|w| w.count_ones()).sum();
        if counted != self.free_count {
            out.push(Violation::FreeCountMismatch {
                counted,
                recorded: self.free_count,
            });
        }
        let n = self.refs.counts.len();
        if self.free.len() * 64 > n && (0..self.free.len() * 64).skip(n).any(|i| self.bit(i)) {
            out.push(Violation::FreeBitOutsideData);
        }
        let mut listed = vec![false; n];
        for &c in &self.releasing {
            let Some(i) = self.refs.index(c) else {
                out.push(Violation::ReleasingOutsideData { cluster: c });
                continue;
            };
            if std::mem::replace(&mut listed[i], true) {
                out.push(Violation::ReleasingTwice { cluster: c });
            }
            if self.refs.counts[i] != 0 {
                out.push(Violation::ReleasingWithCount {
                    cluster: c,
                    count: self.refs.counts[i],
                });
            }
            if self.bit(i) {
                out.push(Violation::ReleasingAlsoFree { cluster: c });
            }
        }
        for (i, (c, count)) in self.refs.iter().enumerate() {
            if count > 0 && self.bit(i) {
                out.push(Violation::FreeWithCount { cluster: c, count });
            }
            if count == 0 && !self.bit(i) && !listed[i] {
                out.push(Violation::LostCluster { cluster: c });
            }
        }
    }

    fn bit(&self, i: usize) -> bool {
        self.free
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn take_index(&mut self, i: usize) {
        self.free[i / 64] &= !(1 << (i % 64));
        self.free_count -= 1;
        self.refs.counts[i] = 1;
    }

    fn set_free(&mut self, i: usize) {
        self.free[i / 64] |= 1 << (i % 64);
        self.free_count += 1;
        self.hint = self.hint.min(i / 64);
    }
}
