//! A set of 802.1Q VLAN ids as a fixed 4096-bit bitmap.
//!
//! A bitmap rather than a `BTreeSet` because the datapath asks "is this VID
//! allowed on this trunk?" for every tagged frame: one shift and mask, no
//! allocation, no pointer chasing, and a trunk allowing all 4094 VLANs costs
//! the same 512 bytes as one allowing a single VLAN.

use std::fmt;

/// Number of 64-bit words needed for the 12-bit VID space (4096 bits).
const WORDS: usize = 4096 / 64;

/// A set of VLAN ids in `0..=4095`.
///
/// Configuration only ever puts valid ids (`1..=4094`) in a set, but the
/// bitmap covers the whole 12-bit VID space so `contains` needs no range check
/// beyond "fits in 12 bits". Ids above 4095 are never members: `contains`
/// returns `false` for them and `insert`/`FromIterator` ignore them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VlanSet([u64; WORDS]);

impl VlanSet {
    /// An empty set.
    pub const fn new() -> Self {
        VlanSet([0; WORDS])
    }

    /// Every usable VLAN id, `1..=4094` (0 means "priority tag only" and 4095
    /// is reserved by 802.1Q, so neither is ever a member).
    pub fn all() -> Self {
        (1..=4094).collect()
    }

    /// Adds `vid`; ids above 4095 are ignored (they cannot be a 12-bit VID).
    pub fn insert(&mut self, vid: u16) {
        if vid < 4096 {
            self.0[usize::from(vid) / 64] |= 1 << (vid % 64);
        }
    }

    /// Whether `vid` is in the set.
    pub fn contains(&self, vid: u16) -> bool {
        vid < 4096 && self.0[usize::from(vid) / 64] & (1 << (vid % 64)) != 0
    }

    /// Number of ids in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set has no ids.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// The ids in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..4096u16).filter(move |&vid| self.contains(vid))
    }

    /// Maximal runs of consecutive ids, as inclusive `(first, last)` pairs.
    pub fn ranges(&self) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = Vec::new();
        for vid in self.iter() {
            match out.last_mut() {
                Some((_, last)) if *last + 1 == vid => *last = vid,
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

impl FromIterator<u16> for VlanSet {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        let mut set = VlanSet::new();
        for vid in iter {
            set.insert(vid);
        }
        set
    }
}

impl Extend<u16> for VlanSet {
    fn extend<I: IntoIterator<Item = u16>>(&mut self, iter: I) {
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

    #[test]
    fn shows_ranges() {
        let set: VlanSet = [1, 10].into_iter().chain(100..=199).collect();
        assert_eq!(set.to_string(), "1, 10, 100-199");
        assert_eq!(format!("{set:?}"), "VlanSet{1, 10, 100-199}");
        assert_eq!(VlanSet::all().to_string(), "1-4094");
        assert_eq!(VlanSet::new().to_string(), "");
    }

    #[test]
    fn all_covers_usable_ids_only() {
        let all = VlanSet::all();
        assert!(all.contains(1) && all.contains(4094));
        assert!(!all.contains(0) && !all.contains(4095) && !all.contains(u16::MAX));
        assert_eq!(all.len(), 4094);
        assert_eq!(format!("{all:?}"), "VlanSet{1-4094}");
    }

    #[test]
    fn debug_shows_ranges_and_iter_is_sorted() {
        let set: VlanSet = [200, 10, 100, 101, 102, 4095, 5000].into_iter().collect();
        assert_eq!(format!("{set:?}"), "VlanSet{10, 100-102, 200, 4095}");
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [10, 100, 101, 102, 200, 4095]
        );
        assert!(VlanSet::new().is_empty());
        assert_eq!(format!("{:?}", VlanSet::new()), "VlanSet{}");
    }
}
