//! VXLAN (RFC 7348): the overlay that carries a VLAN's frames between hosts inside
//! UDP over an IPv4 underlay.
//!
//! Pure logic like the rest of the crate; the tunnel port driver owns the socket.
//! The pieces, in the order a frame meets them:
//!
//! - [`VniMap`]: a VLAN of the switch is one VXLAN segment (VNI), and back.
//! - Transmit: [`RemoteFdb`] says which remote VTEP a (VNI, MAC) sits behind;
//!   unknown and group destinations go to the VNI's [`VtepSet`] flood list (head-end
//!   replication) and/or multicast group. [`fits_underlay`] enforces the MTU rule,
//!   [`flow_src_port`] picks the UDP source port, and either [`header`] gives the
//!   8 bytes to prepend when the kernel's UDP socket writes the outer headers, or
//!   [`Ipv4Encap`] writes outer Ethernet + IPv4 + UDP + VXLAN itself.
//! - Receive: [`VxlanPacket::parse`] checks a UDP payload by the RFC's receive
//!   rules, [`VtepSet::accepts`] filters the sender, [`VniMap::vlan`] maps the
//!   segment to a VLAN, and [`RemoteFdb::learn`] records the inner source behind the
//!   sending VTEP.
//! - [`TunnelCounters`]: per tunnel traffic and drops by [`TunnelDrop`] reason.
//!
//! Only untagged inner frames are carried: the VLAN is expressed by the VNI, so
//! the tunnel port strips the 802.1Q tag before encapsulation and adds it back
//! after decapsulation (RFC 7348 §6).

mod counters;
mod encap;
mod hash;
mod header;
mod remote_fdb;
mod vni_map;
mod vtep_set;

#[cfg(test)]
mod testutil;

pub use counters::{TunnelCounters, TunnelCountersSnapshot, TunnelDrop};
pub use encap::{
    fits_underlay, guest_mtu, EncapError, Ipv4Encap, IPV4_HLEN, OVERHEAD, OVERHEAD_IP, UDP_HLEN,
};
pub use hash::{flow_hash, flow_src_port, SrcPortRange};
pub use header::{
    header, vxlan_payload, DecodeError, Vni, VniError, VxlanPacket, FLAG_I, VXLAN_HLEN, VXLAN_PORT,
};
pub use remote_fdb::{RemoteFdb, RemoteFdbEntry, RemoteFdbStats, RemoteLearn};
pub use vni_map::{VniMap, VniMapError};
pub use vtep_set::{Subnet, VtepError, VtepSet};
