//! VLAN <-> VNI: which VXLAN segment carries each VLAN of the switch.
//!
//! The mapping is one-to-one: a VLAN is carried in at most one segment and a
//! segment carries at most one VLAN, otherwise a frame decapsulated from one VNI
//! could land in a VLAN that is sent out under another, bridging two segments.

use super::header::Vni;
use crate::vlan::VlanId;
use hashbrown::HashMap;
use std::fmt;

/// Why a mapping was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VniMapError {
    /// VNI 0 cannot be configured (see [`Vni`]).
    BadVni(Vni),
    /// The VLAN is already mapped to another VNI.
    VlanTaken { vlan: VlanId, vni: Vni },
    /// The VNI is already mapped to another VLAN.
    VniTaken { vni: Vni, vlan: VlanId },
}

impl fmt::Display for VniMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VniMapError::BadVni(v) => write!(f, "VNI {v} is outside 1..={}", Vni::MAX),
            VniMapError::VlanTaken { vlan, vni } => {
                write!(f, "VLAN {vlan} is already mapped to VNI {vni}")
            }
            VniMapError::VniTaken { vni, vlan } => {
                write!(f, "VNI {vni} is already mapped to VLAN {vlan}")
            }
        }
    }
}

impl std::error::Error for VniMapError {}

/// A one-to-one map between VLAN ids and VNIs, looked up in both directions
/// without allocation: by VLAN through a 4096-entry array, by VNI through a hash
/// table.
#[derive(Clone)]
pub struct VniMap {
    /// `by_vlan[vlan]`: the VNI's value, 0 for none (0 is never configured).
    by_vlan: Box<[u32; 4096]>,
    by_vni: HashMap<Vni, VlanId>,
}

impl VniMap {
    pub fn new() -> VniMap {
        VniMap {
            by_vlan: Box::new([0; 4096]),
            by_vni: HashMap::new(),
        }
    }

    /// Builds a map from pairs, refusing the first bad or conflicting one.
    pub fn from_pairs(
        pairs: impl IntoIterator<Item = (VlanId, Vni)>,
    ) -> Result<VniMap, VniMapError> {
        let mut map = VniMap::new();
        for (vlan, vni) in pairs {
            map.insert(vlan, vni)?;
        }
        Ok(map)
    }

    /// Maps `vlan` to `vni`. Re-inserting an existing pair is a no-op; a VLAN or
    /// VNI already mapped elsewhere is refused (remove it first).
    pub fn insert(&mut self, vlan: VlanId, vni: Vni) -> Result<(), VniMapError> {
        if vni.get() == 0 {
            return Err(VniMapError::BadVni(vni));
        }
        match (self.vni(vlan), self.vlan(vni)) {
            (Some(have), _) if have == vni => Ok(()),
            (Some(have), _) => Err(VniMapError::VlanTaken { vlan, vni: have }),
            (None, Some(have)) => Err(VniMapError::VniTaken { vni, vlan: have }),
            (None, None) => {
                self.by_vlan[vlan.index()] = vni.get();
                self.by_vni.insert(vni, vlan);
                Ok(())
            }
        }
    }

    /// Unmaps a VLAN; returns the VNI it had.
    pub fn remove_vlan(&mut self, vlan: VlanId) -> Option<Vni> {
        let vni = self.vni(vlan)?;
        self.by_vlan[vlan.index()] = 0;
        self.by_vni.remove(&vni);
        Some(vni)
    }

    /// Unmaps a VNI; returns the VLAN it had.
    pub fn remove_vni(&mut self, vni: Vni) -> Option<VlanId> {
        let vlan = self.by_vni.remove(&vni)?;
        self.by_vlan[vlan.index()] = 0;
        Some(vlan)
    }

    /// The VNI carrying `vlan` (transmit direction).
    pub fn vni(&self, vlan: VlanId) -> Option<Vni> {
        match self.by_vlan[vlan.index()] {
            0 => None,
            v => Vni::new(v).ok(),
        }
    }

    /// The VLAN a received `vni` belongs to (receive direction).
    pub fn vlan(&self, vni: Vni) -> Option<VlanId> {
        self.by_vni.get(&vni).copied()
    }

    pub fn len(&self) -> usize {
        self.by_vni.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_vni.is_empty()
    }

    /// The pairs, ascending by VLAN.
    pub fn iter(&self) -> impl Iterator<Item = (VlanId, Vni)> + '_ {
        VlanId::all().filter_map(|vlan| Some((vlan, self.vni(vlan)?)))
    }
}

impl Default for VniMap {
    fn default() -> VniMap {
        VniMap::new()
    }
}

impl fmt::Debug for VniMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(vlan, vni)| (vlan, vni.get())))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vlan::vid;
    use crate::vxlan::header::{VxlanPacket, FLAG_I};

    fn vni(v: u32) -> Vni {
        Vni::new(v).unwrap()
    }

    #[test]
    fn both_directions() {
        let mut m = VniMap::new();
        assert!(m.is_empty());
        m.insert(vid(10), vni(5010)).unwrap();
        m.insert(vid(4094), vni(Vni::MAX)).unwrap();
        m.insert(vid(1), vni(1)).unwrap();
        assert_eq!(m.vni(vid(10)), Some(vni(5010)));
        assert_eq!(m.vlan(vni(5010)), Some(vid(10)));
        assert_eq!(m.vlan(vni(Vni::MAX)), Some(vid(4094)));
        assert_eq!(m.vni(vid(11)), None);
        assert_eq!(m.vlan(vni(5011)), None);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m.iter()
                .map(|(l, n)| (l.get(), n.get()))
                .collect::<Vec<_>>(),
            [(1, 1), (10, 5010), (4094, 16_777_215)]
        );
        assert_eq!(format!("{m:?}"), "{1: 1, 10: 5010, 4094: 16777215}");
    }

    #[test]
    fn refuses_duplicates_and_bad_ids() {
        let mut m = VniMap::new();
        m.insert(vid(10), vni(100)).unwrap();
        assert_eq!(
            m.insert(vid(10), vni(100)),
            Ok(()),
            "same pair again is fine"
        );
        assert_eq!(
            m.insert(vid(10), vni(200)),
            Err(VniMapError::VlanTaken {
                vlan: vid(10),
                vni: vni(100)
            })
        );
        assert_eq!(
            m.insert(vid(20), vni(100)),
            Err(VniMapError::VniTaken {
                vni: vni(100),
                vlan: vid(10)
            })
        );
        // VNI 0 only exists as a received value; it can never be mapped
        let mut zero = vec![FLAG_I, 0, 0, 0, 0, 0, 0, 0];
        zero.extend_from_slice(&[0; 14]);
        let wire_zero = VxlanPacket::parse(&zero).unwrap().vni();
        assert!(matches!(
            m.insert(vid(30), wire_zero),
            Err(VniMapError::BadVni(_))
        ));
        assert_eq!(m.vlan(wire_zero), None);
        assert_eq!(m.len(), 1);
        assert_eq!(
            VniMapError::VniTaken {
                vni: vni(100),
                vlan: vid(10)
            }
            .to_string(),
            "VNI 100 is already mapped to VLAN 10"
        );
    }

    #[test]
    fn remove_frees_both_sides() {
        let mut m = VniMap::from_pairs([(vid(10), vni(100)), (vid(20), vni(200))]).unwrap();
        assert_eq!(m.remove_vlan(vid(10)), Some(vni(100)));
        assert_eq!(m.remove_vlan(vid(10)), None);
        assert_eq!(m.vlan(vni(100)), None);
        m.insert(vid(11), vni(100)).unwrap();
        assert_eq!(m.remove_vni(vni(200)), Some(vid(20)));
        assert_eq!(m.vni(vid(20)), None);
        m.insert(vid(20), vni(201)).unwrap();
        assert_eq!(m.len(), 2);
        assert!(VniMap::from_pairs([(vid(1), vni(1)), (vid(2), vni(1))]).is_err());
    }
}
