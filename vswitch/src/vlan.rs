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
pub use fabric_l2::{VlanId, VlanSet};

/// How a port maps frames to VLANs.
// The trunk's inline 512-byte set makes the variants unequal; a mode is held
// once per port, and inline keeps the per-frame membership test one load.
#[allow(clippy::large_enum_variant)]
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
                // 4095 is no VlanId, so never allowed.
                Some(v) => match VlanId::new(v) {
                    Ok(v) if allowed.contains(v) || Some(v) == *native => v,
                    _ => return Err(DropReason::VlanNotAllowed),
                },
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

/// `VlanId` from a literal, in tests.
#[cfg(test)]
pub(crate) fn vid(n: u16) -> VlanId {
    VlanId::new(n).unwrap()
}
