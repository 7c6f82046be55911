//! Per VNI, where flooded frames go and which remote VTEPs may send.
//!
//! Broadcast, multicast and unknown-unicast frames of a VNI (BUM traffic) go to
//! every remote VTEP configured for it (head-end replication: one unicast copy
//! each) and, if one is configured, once to the VNI's IPv4 multicast group, which
//! the underlay replicates (RFC 7348 §4.2).
//!
//! On receive, a packet is accepted only from a configured remote VTEP of its
//! VNI, unless learning VTEPs is allowed. A VNI with a multicast group also
//! takes senders from the configured `senders` subnets (its members are
//! discovered from the traffic rather than listed); with no subnet configured
//! (the default) it takes none beyond its remotes, so an arbitrary host cannot
//! inject frames just because the segment uses a group. A learned VTEP gets
//! known unicast traffic through the [`super::RemoteFdb`] but is never added to a
//! flood list.

use super::header::Vni;
use hashbrown::HashMap;
use std::fmt;
use std::net::Ipv4Addr;

/// Why an address was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtepError {
    /// A remote VTEP must be a unicast address: not 0.0.0.0, 255.255.255.255 or
    /// multicast (224.0.0.0/4).
    NotUnicast(Ipv4Addr),
    /// A flood group must be an IPv4 multicast address (224.0.0.0/4).
    NotMulticast(Ipv4Addr),
    /// A subnet's prefix length is above 32, or its address has host bits set.
    BadSubnet(Ipv4Addr, u8),
}

impl fmt::Display for VtepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VtepError::NotUnicast(ip) => write!(f, "remote VTEP {ip} is not a unicast address"),
            VtepError::NotMulticast(ip) => write!(f, "group {ip} is not a multicast address"),
            VtepError::BadSubnet(ip, len) => {
                write!(
                    f,
                    "{ip}/{len} is not a subnet (prefix 0..=32, no host bits)"
                )
            }
        }
    }
}

impl std::error::Error for VtepError {}

fn is_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast())
}

/// An IPv4 subnet, `addr/len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    addr: u32,
    mask: u32,
}

impl Subnet {
    /// `addr/len`; the address must have no bits set beyond the prefix.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Subnet, VtepError> {
        let mask = match len {
            0 => 0,
            1..=32 => u32::MAX << (32 - u32::from(len)),
            _ => return Err(VtepError::BadSubnet(addr, len)),
        };
        if u32::from(addr) & !mask != 0 {
            return Err(VtepError::BadSubnet(addr, len));
        }
        Ok(Subnet {
            addr: u32::from(addr),
            mask,
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask == self.addr
    }
}

#[derive(Clone, Debug, Default)]
struct Segment {
    /// Head-end replication list, in configuration order, no duplicates.
    remotes: Vec<Ipv4Addr>,
    group: Option<Ipv4Addr>,
}

/// The flood lists and groups of all VNIs, and the sender filter.
#[derive(Clone, Debug, Default)]
pub struct VtepSet {
    segments: HashMap<Vni, Segment>,
    /// Each configured remote and in how many VNIs' lists it appears.
    known: HashMap<Ipv4Addr, u32>,
    learn_vteps: bool,
    /// Where unlisted members of a group VNI may send from.
    senders: Vec<Subnet>,
}

impl VtepSet {
    /// An empty set; `learn_vteps` allows packets from VTEPs that are not
    /// configured for any VNI.
    pub fn new(learn_vteps: bool) -> VtepSet {
        VtepSet {
            learn_vteps,
            ..VtepSet::default()
        }
    }

    pub fn learn_vteps(&self) -> bool {
        self.learn_vteps
    }

    pub fn set_learn_vteps(&mut self, allow: bool) {
        self.learn_vteps = allow;
    }

    /// The subnets a VNI with a multicast group takes unlisted senders from.
    pub fn set_senders(&mut self, senders: Vec<Subnet>) {
        self.senders = senders;
    }

    /// Adds `vtep` to `vni`'s head-end replication list. Returns `false` if it was
    /// already there.
    pub fn add_remote(&mut self, vni: Vni, vtep: Ipv4Addr) -> Result<bool, VtepError> {
        if !is_unicast(vtep) {
            return Err(VtepError::NotUnicast(vtep));
        }
        let seg = self.segments.entry(vni).or_default();
        if seg.remotes.contains(&vtep) {
            return Ok(false);
        }
        seg.remotes.push(vtep);
        *self.known.entry(vtep).or_default() += 1;
        Ok(true)
    }

    /// Removes `vtep` from `vni`'s list. Returns whether it was there.
    pub fn remove_remote(&mut self, vni: Vni, vtep: Ipv4Addr) -> bool {
        let Some(seg) = self.segments.get_mut(&vni) else {
            return false;
        };
        let Some(at) = seg.remotes.iter().position(|r| *r == vtep) else {
            return false;
        };
        seg.remotes.remove(at);
        if seg.remotes.is_empty() && seg.group.is_none() {
            self.segments.remove(&vni);
        }
        self.forget(vtep);
        true
    }

    fn forget(&mut self, vtep: Ipv4Addr) {
        if let Some(n) = self.known.get_mut(&vtep) {
            *n -= 1;
            if *n == 0 {
                self.known.remove(&vtep);
            }
        }
    }

    /// Sets (or with `None` clears) `vni`'s multicast group; returns the old one.
    pub fn set_group(
        &mut self,
        vni: Vni,
        group: Option<Ipv4Addr>,
    ) -> Result<Option<Ipv4Addr>, VtepError> {
        match group {
            Some(g) if !g.is_multicast() => Err(VtepError::NotMulticast(g)),
            Some(g) => Ok(self.segments.entry(vni).or_default().group.replace(g)),
            None => {
                let Some(seg) = self.segments.get_mut(&vni) else {
                    return Ok(None);
                };
                let old = seg.group.take();
                if seg.remotes.is_empty() {
                    self.segments.remove(&vni);
                }
                Ok(old)
            }
        }
    }

    /// Forgets everything configured for `vni`. Returns whether there was any.
    pub fn remove_vni(&mut self, vni: Vni) -> bool {
        let Some(seg) = self.segments.remove(&vni) else {
            return false;
        };
        for vtep in seg.remotes {
            self.forget(vtep);
        }
        true
    }

    /// `vni`'s head-end replication list, in configuration order.
    pub fn remotes(&self, vni: Vni) -> &[Ipv4Addr] {
        self.segments.get(&vni).map_or(&[], |s| &s.remotes)
    }

    pub fn group(&self, vni: Vni) -> Option<Ipv4Addr> {
        self.segments.get(&vni)?.group
    }

    /// Where one BUM frame of `vni` is sent: the group (if any), then each remote.
    /// Empty when nothing is configured: the frame stays local.
    pub fn flood_targets(&self, vni: Vni) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let seg = self.segments.get(&vni);
        let group = seg.and_then(|s| s.group);
        let remotes = seg.map_or(&[][..], |s| &s.remotes[..]);
        group.into_iter().chain(remotes.iter().copied())
    }

    /// Whether `vtep` is configured as a remote of any VNI.
    pub fn is_configured(&self, vtep: Ipv4Addr) -> bool {
        self.known.contains_key(&vtep)
    }

    /// The sender filter, before decoding: a packet from `src` is accepted if
    /// `src` is a configured remote VTEP of any VNI, or if learning VTEPs is
    /// allowed. A source that is not a unicast address (multicast, broadcast,
    /// 0.0.0.0) is never accepted.
    pub fn accepts(&self, src: Ipv4Addr) -> bool {
        is_unicast(src) && (self.learn_vteps || self.is_configured(src))
    }

    /// The sender filter once the VNI is known, stricter than [`Self::accepts`]:
    /// a configured VTEP may only send into the VNIs it is configured for (unless
    /// learning VTEPs is allowed), so it cannot inject frames into another
    /// tenant's segment. A VNI with a group also takes senders in the
    /// `senders` subnets.
    pub fn accepts_on(&self, vni: Vni, src: Ipv4Addr) -> bool {
        let member =
            || self.group(vni).is_some() && self.senders.iter().any(|net| net.contains(src));
        is_unicast(src) && (self.learn_vteps || self.remotes(vni).contains(&src) || member())
    }

    /// The VNIs with any configuration, ascending.
    pub fn vnis(&self) -> Vec<Vni> {
        let mut v: Vec<Vni> = self.segments.keys().copied().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vni(v: u32) -> Vni {
        Vni::new(v).unwrap()
    }

    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const C: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
    const G: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);

    #[test]
    fn flood_lists_and_groups() {
        let mut s = VtepSet::new(false);
        assert_eq!(s.add_remote(vni(10), B), Ok(true));
        assert_eq!(s.add_remote(vni(10), A), Ok(true));
        assert_eq!(s.add_remote(vni(10), B), Ok(false));
        assert_eq!(s.add_remote(vni(20), C), Ok(true));
        assert_eq!(s.remotes(vni(10)), &[B, A]);
        assert_eq!(s.remotes(vni(30)), &[] as &[Ipv4Addr]);
        assert_eq!(s.set_group(vni(10), Some(G)), Ok(None));
        assert_eq!(s.group(vni(10)), Some(G));
        assert_eq!(s.flood_targets(vni(10)).collect::<Vec<_>>(), [G, B, A]);
        assert_eq!(s.flood_targets(vni(20)).collect::<Vec<_>>(), [C]);
        assert_eq!(s.flood_targets(vni(30)).count(), 0);
        // a group-only VNI
        s.set_group(vni(40), Some(G)).unwrap();
        assert_eq!(s.flood_targets(vni(40)).collect::<Vec<_>>(), [G]);
        assert_eq!(s.vnis(), [vni(10), vni(20), vni(40)]);
        assert_eq!(s.set_group(vni(40), None), Ok(Some(G)));
        assert_eq!(s.vnis(), [vni(10), vni(20)]);
        assert_eq!(s.set_group(vni(99), None), Ok(None));
    }

    #[test]
    fn refuses_bad_addresses() {
        let mut s = VtepSet::new(false);
        for bad in [Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, G] {
            assert_eq!(s.add_remote(vni(1), bad), Err(VtepError::NotUnicast(bad)));
        }
        assert_eq!(
            s.set_group(vni(1), Some(A)),
            Err(VtepError::NotMulticast(A))
        );
        assert!(s.vnis().is_empty());
        assert_eq!(
            VtepError::NotMulticast(A).to_string(),
            "group 192.0.2.1 is not a multicast address"
        );
    }

    #[test]
    fn only_configured_vteps_unless_learning() {
        let mut s = VtepSet::new(false);
        s.add_remote(vni(10), A).unwrap();
        s.add_remote(vni(20), B).unwrap();
        assert!(s.accepts(A) && s.accepts(B));
        assert!(!s.accepts(C));
        // per VNI: A may not inject into VNI 20
        assert!(s.accepts_on(vni(10), A));
        assert!(!s.accepts_on(vni(20), A));
        assert!(!s.accepts_on(vni(30), A));
        s.set_learn_vteps(true);
        assert!(s.learn_vteps());
        assert!(s.accepts(C) && s.accepts_on(vni(20), A) && s.accepts_on(vni(30), C));
        // a non-unicast source is never a VTEP
        for bad in [Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, G] {
            assert!(!s.accepts(bad));
            assert!(!s.accepts_on(vni(10), bad));
        }
    }

    #[test]
    fn group_vnis_take_unlisted_senders_only_from_the_subnets() {
        let mut s = VtepSet::new(false);
        s.set_group(vni(10), Some(G)).unwrap();
        s.add_remote(vni(10), C).unwrap();
        s.add_remote(vni(20), C).unwrap();
        // default: no subnet, so only the listed remote
        assert!(!s.accepts_on(vni(10), A));
        assert!(s.accepts_on(vni(10), C));
        s.set_senders(vec![Subnet::new(Ipv4Addr::new(192, 0, 2, 0), 31).unwrap()]);
        // 192.0.2.0/31 holds .0 and .1 (A), not .2 (B)
        assert!(s.accepts_on(vni(10), A));
        assert!(!s.accepts_on(vni(10), B));
        // only a VNI with a group takes members from the subnet
        assert!(!s.accepts_on(vni(20), A));
        // a non-unicast source never, even inside a subnet
        s.set_senders(vec![Subnet::new(Ipv4Addr::UNSPECIFIED, 0).unwrap()]);
        assert!(s.accepts_on(vni(10), B));
        for bad in [Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, G] {
            assert!(!s.accepts_on(vni(10), bad));
        }
        assert_eq!(
            Subnet::new(Ipv4Addr::new(192, 0, 2, 1), 24),
            Err(VtepError::BadSubnet(Ipv4Addr::new(192, 0, 2, 1), 24))
        );
        assert_eq!(Subnet::new(A, 33), Err(VtepError::BadSubnet(A, 33)));
        assert!(Subnet::new(A, 32).unwrap().contains(A));
        assert!(!Subnet::new(A, 32).unwrap().contains(B));
    }

    #[test]
    fn removal_keeps_the_filter_exact() {
        let mut s = VtepSet::new(false);
        s.add_remote(vni(10), A).unwrap();
        s.add_remote(vni(20), A).unwrap();
        s.add_remote(vni(20), B).unwrap();
        assert!(s.remove_remote(vni(10), A));
        assert!(!s.remove_remote(vni(10), A));
        assert!(s.accepts(A), "still configured in VNI 20");
        assert_eq!(s.vnis(), [vni(20)]);
        assert!(s.remove_vni(vni(20)));
        assert!(!s.remove_vni(vni(20)));
        assert!(!s.accepts(A) && !s.accepts(B));
        assert!(!s.is_configured(A));
    }
}
