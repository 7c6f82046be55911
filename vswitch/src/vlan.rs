//! 802.1Q port rules: which VLAN a received frame belongs to, and whether and how
//! a port emits a frame of a given VLAN.
//!
//! - An *access* port belongs to exactly one VLAN. It takes and gives untagged
//!   frames only; a tagged frame arriving on it is dropped, so a guest cannot hop
//!   into another VLAN by tagging its own frames.
//! - A *trunk* port carries its allowed VLANs tagged and, optionally, one *native*
//!   VLAN untagged. Untagged (or priority-tagged, VID 0) frames belong to the native
//!   VLAN; without one they are dropped.

use crate::counters::DropReason;
use crate::frame::EthernetHead;
use std::fmt;

/// A VLAN id, 1..=4094 (0 and 4095 are reserved by 802.1Q).
pub type VlanId = u16;

/// Highest usable VLAN id.
pub const VLAN_MAX: VlanId = 4094;

/// A set of VLAN ids as a 4096-bit bitmap (boxed: 512 bytes would bloat every
/// port mode that embeds one).
#[derive(Clone, PartialEq, Eq)]
pub struct VlanSet(Box<[u64; 64]>);

impl VlanSet {
    pub fn empty() -> VlanSet {
        VlanSet(Box::new([0; 64]))
    }

    /// Every usable VLAN, 1..=4094.
    pub fn all() -> VlanSet {
        (1..=VLAN_MAX).collect()
    }

    pub fn contains(&self, vid: VlanId) -> bool {
        let vid = vid as usize;
        vid < 4096 && self.0[vid / 64] & (1 << (vid % 64)) != 0
    }

    /// Inserts `vid`; ids outside 1..=4094 are ignored (they can never be carried).
    pub fn insert(&mut self, vid: VlanId) {
        if (1..=VLAN_MAX).contains(&vid) {
            let vid = vid as usize;
            self.0[vid / 64] |= 1 << (vid % 64);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = VlanId> + '_ {
        (1..=VLAN_MAX).filter(|v| self.contains(*v))
    }
}

impl FromIterator<VlanId> for VlanSet {
    fn from_iter<I: IntoIterator<Item = VlanId>>(iter: I) -> VlanSet {
        let mut set = VlanSet::empty();
        for vid in iter {
            set.insert(vid);
        }
        set
    }
}

impl fmt::Debug for VlanSet {
    /// Prints ranges, e.g. `{1-9, 20}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for v in self.iter() {
            match ranges.last_mut() {
                Some((_, end)) if *end + 1 == v => *end = v,
                _ => ranges.push((v, v)),
            }
        }
        let parts: Vec<String> = ranges
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        write!(f, "{{{}}}", parts.join(", "))
    }
}

/// How a port maps frames to VLANs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VlanMode {
    Access(VlanId),
    Trunk {
        allowed: VlanSet,
        native: Option<VlanId>,
    },
}

/// The VLAN a received frame was classified into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classified {
    pub vlan: VlanId,
    /// The frame carries an 802.1Q tag (possibly VID 0) at offset 12.
    pub tagged: bool,
    /// Priority code point and DEI from the received tag, kept when re-tagging.
    pub pcp_dei: u16,
}

/// The tag a port puts on a frame of a VLAN it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressTag {
    Untagged,
    Tagged(VlanId),
}

impl VlanMode {
    /// Classifies a received frame by this port's rule (see the module docs).
    pub fn classify(&self, frame: &EthernetHead) -> Result<Classified, DropReason> {
        let tci = frame.tci();
        let vid = tci.map(|t| t & 0x0fff);
        let pcp_dei = tci.map_or(0, |t| t & 0xf000);
        let tagged = tci.is_some();
        let vlan = match self {
            VlanMode::Access(vlan) => {
                if tagged {
                    return Err(DropReason::TaggedOnAccess);
                }
                *vlan
            }
            VlanMode::Trunk { allowed, native } => match vid {
                None | Some(0) => native.ok_or(DropReason::UntaggedOnTrunk)?,
                Some(v) if allowed.contains(v) || Some(v) == *native => v,
                Some(_) => return Err(DropReason::VlanNotAllowed),
            },
        };
        Ok(Classified {
            vlan,
            tagged,
            pcp_dei,
        })
    }

    /// How this port emits a frame of `vlan`, or `None` if it does not carry it.
    pub fn egress_tag(&self, vlan: VlanId) -> Option<EgressTag> {
        match self {
            VlanMode::Access(v) => (*v == vlan).then_some(EgressTag::Untagged),
            VlanMode::Trunk { allowed, native } => {
                if *native == Some(vlan) {
                    Some(EgressTag::Untagged)
                } else if allowed.contains(vlan) {
                    Some(EgressTag::Tagged(vlan))
                } else {
                    None
                }
            }
        }
    }

    /// Every VLAN this port carries (access VLAN, or allowed plus native).
    pub fn vlans(&self) -> VlanSet {
        match self {
            VlanMode::Access(v) => [*v].into_iter().collect(),
            VlanMode::Trunk { allowed, native } => {
                let mut set = allowed.clone();
                if let Some(n) = native {
                    set.insert(*n);
                }
                set
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_bounds_and_debug() {
        let s: VlanSet = [0, 1, 2, 3, 10, 4094, 4095].into_iter().collect();
        assert!(!s.contains(0));
        assert!(!s.contains(4095));
        assert!(s.contains(4094));
        assert_eq!(format!("{s:?}"), "{1-3, 10, 4094}");
        assert_eq!(VlanSet::all().iter().count(), 4094);
    }
}
