//! Decapsulation of one received VXLAN datagram, in place.

use super::coalesce::Decapped;
use super::{Tunnel, TAG_LEN, TPID_8021Q};
use fabric_offload::{is_partial_csum, l4_csum_valid, Layout, Offload};
use std::net::Ipv4Addr;
use vswitch::vxlan::{TunnelDrop, VxlanPacket, VXLAN_HLEN};
use vswitch::{MacAddr, PortId, Switch};

/// Checks one received UDP payload from `vtep` and rewrites it in place into
/// its VLAN-tagged inner frame; returns where that frame lies in `datagram`,
/// the offload it carries and whether its checksum may be merged
/// ([`inner_checksum`]), or counts the drop.
///
/// The checks, in order (RFC 7348 §5, §6): VXLAN header (I flag, an untagged
/// inner frame), VNI mapped to a VLAN, sender an accepted VTEP of that VNI
/// (never our own address), inner source not a station held on a local port.
/// The tag goes where the VXLAN header was: the two MAC addresses move 4
/// bytes forward into it, so no byte of the payload is copied.
pub(super) fn decapsulate(
    t: &Tunnel,
    datagram: &mut [u8],
    vtep: Ipv4Addr,
    id: PortId,
    switch: &Switch,
) -> Option<Decapped> {
    let now = switch.now();
    let drop = |reason| {
        t.counters.add_drop(reason);
        None
    };
    let packet = match VxlanPacket::parse(datagram) {
        Ok(p) => p,
        Err(e) => return drop(TunnelDrop::from(e)),
    };
    let vni = packet.vni();
    let Some(vlan) = t.config.vnis.vlan(vni) else {
        return drop(TunnelDrop::UnknownVni);
    };
    // Our own packets (multicast loopback) never count as a remote.
    if vtep == t.config.local || !t.config.vteps.accepts_on(vni, vtep) {
        return drop(TunnelDrop::UnknownVtep);
    }
    let inner = packet.inner();
    let mut src = [0u8; 6];
    src.copy_from_slice(&inner[6..12]);
    // A station active on a local port is not taken over from the underlay.
    if switch.fdb().refuse_held_move(vlan, MacAddr(src), id, now) {
        return drop(TunnelDrop::HeldStation);
    }
    t.remote_fdb.learn(vni, MacAddr(src), vtep, now);
    t.counters.add_rx(1, inner.len() as u64);
    let (offload, csum_ok) = inner_checksum(inner);
    let offload = offload.shifted(TAG_LEN as isize);
    // Insert the VLAN tag: the port is a trunk of the mapped VLANs.
    let start = VXLAN_HLEN - TAG_LEN;
    datagram.copy_within(VXLAN_HLEN..VXLAN_HLEN + 12, start);
    datagram[start + 12..start + 14].copy_from_slice(&TPID_8021Q.to_be_bytes());
    datagram[start + 14..start + 16].copy_from_slice(&vlan.get().to_be_bytes());
    Some(Decapped {
        range: start..datagram.len(),
        offload,
        vni,
        vtep,
        csum_ok,
    })
}

/// The offload part of [`inner_checksum`].
#[cfg(test)]
pub(super) fn inner_offload(inner: &[u8]) -> Offload {
    inner_checksum(inner).0
}

/// The offload of a received untagged inner frame. A kernel peer whose
/// stack offloads checksums (a Linux vxlan device over veth: the
/// CHECKSUM_PARTIAL skb crosses into the tunnel as is) sends TCP/UDP
/// segments whose checksum field holds only the pseudo-header sum. Such a
/// frame, invalid but exactly partial ([`is_partial_csum`]), is marked
/// NEEDS_CSUM (virtio 1.2 §5.1.6.2): the switch completes it for sinks that
/// do not accept CSUM and passes it as such to those that do. A valid
/// checksum is never touched, and anything else is left as received for the
/// receiving stack to drop.
///
/// Also says whether the frame's TCP/UDP checksum is valid or exactly
/// partial: what receive coalescing requires of every segment it merges
/// (`coalesce::Decapped::csum_ok`); false for a frame that is not IP +
/// TCP/UDP. One checksum pass serves both.
pub(super) fn inner_checksum(inner: &[u8]) -> (Offload, bool) {
    let Ok(layout) = Layout::parse(inner) else {
        return (Offload::NONE, false);
    };
    if l4_csum_valid(inner) {
        return (Offload::NONE, true);
    }
    if !is_partial_csum(inner, layout.l4, layout.proto.number()) {
        return (Offload::NONE, false);
    }
    let offload = Offload {
        csum: Some((layout.l4 as u16, layout.proto.csum_offset() as u16)),
        gso: None,
        data_valid: false,
    };
    (offload, true)
}
