//! Decapsulation of one received VXLAN datagram, in place.

use super::coalesce::Decapped;
use super::{Tunnel, TAG_LEN, TPID_8021Q};
use fabric_offload::hdr::{GSO_ECN, GSO_TCPV4, GSO_TCPV6, NEEDS_CSUM};
use fabric_offload::{
    is_partial_csum, l4_csum_valid, IpVersion, L4Proto, Layout, Offload, VnetHdr,
};
use std::net::Ipv4Addr;
use vswitch::vxlan::{guest_mtu, TunnelDrop, VxlanPacket, VXLAN_HLEN};
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
    let (mut offload, mut csum_ok) = inner_checksum(inner);
    if let Some(gso) = whole_gso_packet(inner, &offload, guest_mtu(t.config.underlay_mtu)) {
        // Forwarded alone: it is a super-frame already.
        (offload, csum_ok) = (gso, false);
    }
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

/// The GSO offload of an inner TCP frame longer than the overlay's MTU whose
/// checksum is exactly partial: a kernel peer's whole TSO packet. Linux
/// hands a UDP tunnel GSO packet (SKB_GSO_UDP_TUNNEL) across a device that
/// takes it, such as a veth underlay, and a plain UDP socket receives it as
/// one datagram, with no `UDP_GRO` segment size (that is only given for
/// SKB_GSO_UDP_L4). Its segments are what the peer's stack would have sent
/// on a device without the offload: TCP payload cut to fit `inner_mtu`
/// bytes of IP packet, the last shorter; any cut no larger than the MSS is
/// valid TCP (RFC 9293 §3.7.1). The switch then passes it whole to ports
/// that take TSO and segments it for the others. `None` for anything else:
/// an oversize frame with a complete checksum is no GSO packet and stays
/// oversize.
pub(super) fn whole_gso_packet(inner: &[u8], csum: &Offload, inner_mtu: u16) -> Option<Offload> {
    let layout = Layout::parse(inner).ok()?;
    let ip_len = inner.len() - layout.l3;
    if csum.csum.is_none() || layout.proto != L4Proto::Tcp || ip_len <= usize::from(inner_mtu) {
        return None;
    }
    let mss = usize::from(inner_mtu).checked_sub(layout.hdr_len - layout.l3)?;
    // CWR in the super-frame's header: the sender uses ECN (RFC 3168 §6.1.2),
    // so only the first segment keeps it.
    let ecn = inner.get(layout.l4 + 13).is_some_and(|f| f & 0x80 != 0);
    let base = match layout.ip {
        IpVersion::V4 => GSO_TCPV4,
        IpVersion::V6 => GSO_TCPV6,
    };
    // Offsets are below MAX_HEAD_LEN and the MSS below the MTU: u16.
    let hdr = VnetHdr {
        flags: NEEDS_CSUM,
        gso_type: base | if ecn { GSO_ECN } else { 0 },
        hdr_len: layout.hdr_len as u16,
        gso_size: u16::try_from(mss).ok().filter(|&m| m > 0)?,
        csum_start: layout.l4 as u16,
        csum_offset: L4Proto::Tcp.csum_offset() as u16,
        num_buffers: 0,
    };
    Offload::parse_trusted(&hdr, inner, inner.len())
        .ok()
        .filter(|o| o.gso.is_some())
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
