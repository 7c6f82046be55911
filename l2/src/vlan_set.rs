//! A set of VLAN ids as a fixed 4096-bit bitmap.
//!
//! A bitmap rather than a `BTreeSet` because the datapath asks "does this
//! trunk carry this VLAN?" for every tagged frame: one shift and mask, no
//! allocation, no pointer chasing, and a trunk allowing all 4094 VLANs costs
//! the same 512 bytes as one allowing a single VLAN. Held inline, not boxed:
//! a set lives once per port (its configuration and the switch's port table,
//! which is cloned only when ports change), and inline keeps the per-frame
//! membership test a load from the port itself.

use crate::VlanId;
use std::fmt;

/// 64-bit words covering the 12-bit VID space (4096 bits).
const WORDS: usize = 4096 / 64;

/// A set of usable VLAN ids. Members are [`VlanId`]s, so 0 and 4095 are never
/// in a set and no operation needs a range check.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VlanSet([u64; WORDS]);

impl VlanSet {
    /// An empty set.
    #[inline]
    pub const fn new() -> Self {
        VlanSet([0; WORDS])
    }

    /// Every usable VLAN id, `1..=4094`.
    pub fn all() -> Self {
        VlanId::all().collect()
    }

    #[inline]
    pub fn insert(&mut self, vid: VlanId) {
        self.0[vid.index() / 64] |= 1 << (vid.index() % 64);
    }

    /// Adds `first..=last` (nothing if `first > last`).
    pub fn insert_range(&mut self, first: VlanId, last: VlanId) {
        self.extend(VlanId::all().filter(|v| (first..=last).contains(v)));
    }

    #[inline]
    pub fn contains(&self, vid: VlanId) -> bool {
        self.0[vid.index() / 64] & (1 << (vid.index() % 64)) != 0
    }

    /// Number of ids in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// The ids in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = VlanId> + '_ {
        VlanId::all().filter(move |&vid| self.contains(vid))
    }

    /// Maximal runs of consecutive ids, as inclusive `(first, last)` pairs.
    pub fn ranges(&self) -> Vec<(VlanId, VlanId)> {
        let mut out: Vec<(VlanId, VlanId)> = Vec::new();
        for vid in self.iter() {
            match out.last_mut() {
                Some((_, last)) if last.get() + 1 == vid.get() => *last = vid,
                _ => out.push((vid, vid)),
            }
        }
        out
    }
}

impl Default for VlanSet {
    fn default() -> Self {
        Self::new()
    }
}

impl FromIterator<VlanId> for VlanSet {
    fn from_iter<I: IntoIterator<Item = VlanId>>(iter: I) -> Self {
        let mut set = VlanSet::new();
        set.extend(iter);
        set
    }
}

impl Extend<VlanId> for VlanSet {
    fn extend<I: IntoIterator<Item = VlanId>>(&mut self, iter: I) {
        for vid in iter {
            self.insert(vid);
        }
    }
}

/// The ids as ranges, e.g. `1, 10, 100-199`: printing 4094 separate ids for
/// an "all VLANs" trunk is useless in logs, reports and test output.
impl fmt::Display for VlanSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (first, last)) in self.ranges().into_iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if first == last {
                write!(f, "{first}")?;
            } else {
                write!(f, "{first}-{last}")?;
            }
        }
        Ok(())
    }
}

/// `VlanSet{1, 10, 100-199}`: the ranges of [`Display`](fmt::Display).
impl fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VlanSet{{{self}}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u16]) -> Vec<VlanId> {
        v.iter().map(|&v| VlanId::new(v).unwrap()).collect()
    }

    #[test]
    fn shows_ranges() {
        let mut set: VlanSet = ids(&[1, 10]).into_iter().collect();
        set.insert_range(VlanId::new(100).unwrap(), VlanId::new(199).unwrap());
        assert_eq!(set.to_string(), "1, 10, 100-199");
        assert_eq!(format!("{set:?}"), "VlanSet{1, 10, 100-199}");
        assert_eq!(set.len(), 102);
        assert_eq!(VlanSet::all().to_string(), "1-4094");
        assert_eq!(VlanSet::new().to_string(), "");
        assert_eq!(format!("{:?}", VlanSet::new()), "VlanSet{}");
    }

    #[test]
    fn all_covers_the_usable_ids() {
        let all = VlanSet::all();
        assert!(all.contains(VlanId::MIN) && all.contains(VlanId::MAX));
        assert_eq!(all.len(), 4094);
        assert_eq!(
            all.iter().collect::<Vec<_>>(),
            VlanId::all().collect::<Vec<_>>()
        );
        assert_eq!(all.ranges(), [(VlanId::MIN, VlanId::MAX)]);
    }

    #[test]
    fn iter_is_sorted_and_ranges_merge() {
        let mut set: VlanSet = ids(&[200, 10, 102, 100, 101, 4094, 10])
            .into_iter()
            .collect();
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            ids(&[10, 100, 101, 102, 200, 4094])
        );
        assert_eq!(format!("{set:?}"), "VlanSet{10, 100-102, 200, 4094}");
        assert!(!set.contains(VlanId::new(11).unwrap()));
        // a reversed range adds nothing
        set.insert_range(VlanId::new(50).unwrap(), VlanId::new(40).unwrap());
        assert_eq!(set.len(), 6);
        assert!(VlanSet::new().is_empty() && !set.is_empty());
    }
}
