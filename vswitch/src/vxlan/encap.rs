//! Encapsulation over an IPv4 underlay, and the MTU rule that comes with it.
//!
//! On the wire a VXLAN packet is
//!
//! ```text
//! outer Ethernet (14) | IPv4 (20) | UDP (8) | VXLAN (8) | inner frame (L)
//! ```
//!
//! so VXLAN costs [`OVERHEAD`] = 14 + 20 + 8 + 8 = 50 bytes per frame on the
//! underlay link, of which [`OVERHEAD_IP`] = 20 + 8 + 8 = 36 count against the
//! underlay's IP MTU.

pub use super::header::EncapError;
use super::header::{check_inner, header, Vni, VXLAN_HLEN, VXLAN_PORT};
use crate::frame::{MacAddr, ETH_HLEN};
use std::net::Ipv4Addr;

/// IPv4 header without options.
pub const IPV4_HLEN: usize = 20;

/// UDP header.
pub const UDP_HLEN: usize = 8;

/// Bytes VXLAN adds to a frame on the underlay wire: outer Ethernet (14, no VLAN
/// tag) + IPv4 (20) + UDP (8) + VXLAN (8) = 50. Also the length of the headers
/// [`Ipv4Encap::write_headers`] writes.
pub const OVERHEAD: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN + VXLAN_HLEN;

/// The part of [`OVERHEAD`] inside the underlay IP packet, which is what the
/// underlay MTU limits: IPv4 (20) + UDP (8) + VXLAN (8) = 36.
pub const OVERHEAD_IP: usize = IPV4_HLEN + UDP_HLEN + VXLAN_HLEN;

/// Largest IPv4 total length.
const IPV4_MAX_LEN: usize = u16::MAX as usize;

/// Whether an inner frame of `inner_len` bytes, once encapsulated, fits an
/// underlay link of MTU `underlay_mtu` (the IP packet size the link carries).
///
/// `inner_len` is the inner Ethernet frame as the guest sent it: header included,
/// without FCS, and without an 802.1Q tag (the VLAN is mapped to the VNI, so the
/// tag is never carried). The encapsulated IP packet is
///
/// ```text
/// IPv4 20 + UDP 8 + VXLAN 8 + L = L + 36 bytes,   so it fits iff   L + 36 <= underlay MTU.
/// ```
///
/// The guest's MTU M counts the frame without its 14-byte Ethernet header
/// (L = M + 14), hence M + 50 <= underlay MTU: a 1500-byte underlay carries guests
/// with MTU 1450 (frames of 1464 bytes, IP packets of exactly 1500), see
/// [`guest_mtu`]. VXLAN packets are sent with DF set and RFC 7348 §4.3 forbids
/// fragmenting them, so a frame that does not fit is dropped, never fragmented.
pub fn fits_underlay(inner_len: usize, underlay_mtu: u16) -> bool {
    inner_len <= (underlay_mtu as usize).saturating_sub(OVERHEAD_IP)
}

/// The largest guest (inner) MTU a tunnel over an `underlay_mtu` link carries:
/// `underlay_mtu - 50` ([`OVERHEAD`]), e.g. 1450 on a 1500 underlay, 8950 on
/// 9000. Equivalent to [`fits_underlay`] for untagged frames: a frame of
/// `M + 14` bytes fits exactly when `M <= guest_mtu(underlay_mtu)`. (Below a
/// 50-byte underlay, where not even an empty frame fits, this saturates at 0;
/// real IPv4 links have an MTU of at least 68.)
pub fn guest_mtu(underlay_mtu: u16) -> u16 {
    underlay_mtu.saturating_sub(OVERHEAD as u16)
}

/// Everything needed to write the outer headers of one VXLAN packet over IPv4.
///
/// Cheap to copy: build one per packet (the destination VTEP comes from the
/// remote FDB or the flood list, the source port from [`super::flow_src_port`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Encap {
    pub vni: Vni,
    /// Outer Ethernet source: the local underlay interface.
    pub src_mac: MacAddr,
    /// Outer Ethernet destination: the underlay next hop (gateway or remote VTEP).
    pub dst_mac: MacAddr,
    /// Local VTEP address.
    pub src_ip: Ipv4Addr,
    /// Remote VTEP (or multicast group) address.
    pub dst_ip: Ipv4Addr,
    /// Per-flow entropy for underlay ECMP, see [`super::flow_src_port`].
    pub src_port: u16,
    /// [`VXLAN_PORT`] (4789) unless configured otherwise.
    pub dst_port: u16,
    /// 64 by default.
    pub ttl: u8,
    /// The IPv4 DSCP/ECN byte, 0 by default.
    pub tos: u8,
}

impl Ipv4Encap {
    /// Destination port 4789, TTL 64, TOS 0.
    pub fn new(
        vni: Vni,
        src_mac: MacAddr,
        dst_mac: MacAddr,
        src_ip: Ipv4Addr,
        dst_ip: Ipv4Addr,
        src_port: u16,
    ) -> Ipv4Encap {
        Ipv4Encap {
            vni,
            src_mac,
            dst_mac,
            src_ip,
            dst_ip,
            src_port,
            dst_port: VXLAN_PORT,
            ttl: 64,
            tos: 0,
        }
    }

    /// Writes the [`OVERHEAD`] bytes that precede `inner` on the wire, for a
    /// driver that sends `[headers, inner]` as a gather list (raw socket, TAP)
    /// without copying the frame:
    ///
    /// - Ethernet: `dst_mac`, `src_mac`, EtherType 0x0800, no VLAN tag;
    /// - IPv4: version 4, IHL 5 (no options), `tos`, total length
    ///   `36 + inner.len()`, identification 0 with DF set and no fragment offset
    ///   (an atomic datagram: RFC 6864 §4.1 lets its ID be any value, and RFC 7348
    ///   §4.3 forbids fragmenting VXLAN), `ttl`, protocol 17, header checksum;
    /// - UDP: `src_port`, `dst_port`, length `16 + inner.len()`, checksum 0
    ///   (RFC 7348 §5: the UDP checksum SHOULD be transmitted as zero over IPv4, and
    ///   a zero checksum MUST be accepted on receive);
    /// - VXLAN: [`super::header`]`(vni)`.
    ///
    /// `inner` is only checked (see [`super::vxlan_payload`]) and measured, not
    /// copied. The underlay MTU is the caller's check ([`fits_underlay`]).
    pub fn write_headers(&self, inner: &[u8], out: &mut [u8; OVERHEAD]) -> Result<(), EncapError> {
        check_inner(inner)?;
        let ip_len = OVERHEAD_IP + inner.len();
        if ip_len > IPV4_MAX_LEN {
            return Err(EncapError::TooLong);
        }
        let (eth, rest) = out.split_at_mut(ETH_HLEN);
        let (ip, rest) = rest.split_at_mut(IPV4_HLEN);
        let (udp, vxlan) = rest.split_at_mut(UDP_HLEN);

        eth[0..6].copy_from_slice(&self.dst_mac.0);
        eth[6..12].copy_from_slice(&self.src_mac.0);
        eth[12..14].copy_from_slice(&0x0800u16.to_be_bytes());

        ip[0] = 0x45;
        ip[1] = self.tos;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&[0, 0]); // identification
        ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF, offset 0
        ip[8] = self.ttl;
        ip[9] = 17; // UDP
        ip[10..12].copy_from_slice(&[0, 0]);
        ip[12..16].copy_from_slice(&self.src_ip.octets());
        ip[16..20].copy_from_slice(&self.dst_ip.octets());
        let sum = ipv4_checksum(ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());

        udp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        udp[4..6].copy_from_slice(&((ip_len - IPV4_HLEN) as u16).to_be_bytes());
        udp[6..8].copy_from_slice(&[0, 0]); // no checksum

        vxlan.copy_from_slice(&header(self.vni));
        Ok(())
    }

    /// Writes the whole packet, outer headers then `inner`, to the start of `out`
    /// and returns its length (`50 + inner.len()`).
    pub fn encapsulate(&self, inner: &[u8], out: &mut [u8]) -> Result<usize, EncapError> {
        let mut headers = [0u8; OVERHEAD];
        self.write_headers(inner, &mut headers)?;
        let need = OVERHEAD + inner.len();
        let out = out
            .get_mut(..need)
            .ok_or(EncapError::BufferTooSmall { need })?;
        out[..OVERHEAD].copy_from_slice(&headers);
        out[OVERHEAD..].copy_from_slice(inner);
        Ok(need)
    }

    /// Replaces the contents of `out` with the whole packet. Allocates only when
    /// `out`'s capacity is below `50 + inner.len()`, so a reused buffer sized for
    /// the underlay MTU never reallocates.
    pub fn encapsulate_vec(&self, inner: &[u8], out: &mut Vec<u8>) -> Result<(), EncapError> {
        let mut headers = [0u8; OVERHEAD];
        self.write_headers(inner, &mut headers)?;
        out.clear();
        out.reserve(OVERHEAD + inner.len());
        out.extend_from_slice(&headers);
        out.extend_from_slice(inner);
        Ok(())
    }
}

/// The Internet checksum (RFC 1071) of an IPv4 header whose checksum field is
/// zero: the ones' complement of the ones' complement sum of its 16-bit words.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::EncapError as E;
    use super::*;
    use crate::vxlan::header::VxlanPacket;
    use crate::vxlan::testutil::{frame, SplitMix64};
    use etherparse::{EtherType, Ethernet2HeaderSlice, IpNumber, Ipv4HeaderSlice, UdpHeaderSlice};

    fn encap(vni: u32, src_port: u16) -> Ipv4Encap {
        Ipv4Encap::new(
            Vni::new(vni).unwrap(),
            MacAddr([0x52, 0x54, 0, 0, 0, 1]),
            MacAddr([0x52, 0x54, 0, 0, 0, 2]),
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(198, 51, 100, 7),
            src_port,
        )
    }

    /// Parses `pkt` with etherparse, checks every outer field `e` promises, and
    /// returns the UDP payload.
    fn check_outer<'a>(e: &Ipv4Encap, pkt: &'a [u8], inner_len: usize) -> &'a [u8] {
        let eth = Ethernet2HeaderSlice::from_slice(pkt).unwrap();
        assert_eq!(eth.destination(), e.dst_mac.0);
        assert_eq!(eth.source(), e.src_mac.0);
        assert_eq!(eth.ether_type(), EtherType::IPV4);

        let ip = Ipv4HeaderSlice::from_slice(&pkt[ETH_HLEN..]).unwrap();
        assert_eq!(ip.ihl(), 5);
        assert_eq!(ip.total_len() as usize, OVERHEAD_IP + inner_len);
        assert_eq!(ip.total_len() as usize, pkt.len() - ETH_HLEN);
        assert!(ip.dont_fragment() && !ip.more_fragments());
        assert_eq!(ip.fragments_offset().value(), 0);
        assert_eq!(ip.ttl(), e.ttl);
        assert_eq!(ip.protocol(), IpNumber::UDP);
        assert_eq!(ip.source_addr(), e.src_ip);
        assert_eq!(ip.destination_addr(), e.dst_ip);
        assert_eq!(
            ip.header_checksum(),
            ip.to_header().calc_header_checksum(),
            "IPv4 header checksum"
        );

        let udp = UdpHeaderSlice::from_slice(&pkt[ETH_HLEN + IPV4_HLEN..]).unwrap();
        assert_eq!(udp.source_port(), e.src_port);
        assert_eq!(udp.destination_port(), e.dst_port);
        assert_eq!(udp.length() as usize, UDP_HLEN + VXLAN_HLEN + inner_len);
        assert_eq!(udp.checksum(), 0);
        &pkt[ETH_HLEN + IPV4_HLEN + UDP_HLEN..]
    }

    #[test]
    fn overhead_arithmetic() {
        assert_eq!(OVERHEAD, 50);
        assert_eq!(OVERHEAD_IP, 36);
        assert_eq!(guest_mtu(1500), 1450);
        assert_eq!(guest_mtu(9000), 8950);
        assert_eq!(guest_mtu(40), 0);
        // a 1450-MTU guest's largest frame is 1464 bytes: a 1500-byte IP packet
        assert!(fits_underlay(1450 + 14, 1500));
        assert!(!fits_underlay(1450 + 14 + 1, 1500));
        assert!(fits_underlay(1464, 1500) && !fits_underlay(1465, 1500));
        assert!(!fits_underlay(14, 30) && !fits_underlay(14, 49));
        assert!(fits_underlay(14, 50) && !fits_underlay(15, 50));
        assert!(!fits_underlay(usize::MAX, u16::MAX));
        for u in [50u16, 51, 68, 576, 1280, 1500, 9000, u16::MAX] {
            for m in 0..=u32::from(u) + 2 {
                let m = m as usize;
                assert_eq!(
                    fits_underlay(m + ETH_HLEN, u),
                    m <= guest_mtu(u) as usize,
                    "underlay {u} guest {m}"
                );
            }
        }
    }

    #[test]
    fn round_trip_through_etherparse() {
        let e = encap(0x12_3456, 50_000);
        for len in [14, 60, 64, 1464, 9014] {
            let inner = frame(0x0800, len);
            let mut pkt = Vec::new();
            e.encapsulate_vec(&inner, &mut pkt).unwrap();
            assert_eq!(pkt.len(), OVERHEAD + len);
            let payload = check_outer(&e, &pkt, len);
            let v = VxlanPacket::parse(payload).unwrap();
            assert_eq!(v.vni(), e.vni);
            assert_eq!(v.inner(), &inner[..]);
        }
    }

    #[test]
    fn known_checksum() {
        // Worked by hand: 4500 0050 0000 4000 4011 ---- c000 0201 c633 6407
        let e = encap(1, 1);
        let mut h = [0u8; OVERHEAD];
        e.write_headers(&frame(0x0800, 44), &mut h).unwrap();
        assert_eq!(&h[14..16], &[0x45, 0x00]);
        assert_eq!(&h[16..18], &80u16.to_be_bytes());
        // 0x4500+0x0050+0x4000+0x4011+0xc000+0x0201+0xc633+0x6407 = 0x2_b19c
        // folded: 0xb19e, complement: 0x4e61
        assert_eq!(&h[24..26], &[0x4e, 0x61]);
    }

    #[test]
    fn slice_and_vec_outputs_agree() {
        let e = Ipv4Encap {
            ttl: 9,
            tos: 0xb8,
            dst_port: 8472,
            ..encap(77, 61_234)
        };
        let inner = frame(0x86dd, 200);
        let mut buf = [0u8; 512];
        let n = e.encapsulate(&inner, &mut buf).unwrap();
        let mut v = Vec::new();
        e.encapsulate_vec(&inner, &mut v).unwrap();
        assert_eq!(&buf[..n], &v[..]);
        let ip = Ipv4HeaderSlice::from_slice(&v[ETH_HLEN..]).unwrap();
        assert_eq!(ip.ttl(), 9);
        assert_eq!(ip.dcp().value(), 0xb8 >> 2);
        check_outer(&e, &v, 200);
        let mut h = [0u8; OVERHEAD];
        e.write_headers(&inner, &mut h).unwrap();
        assert_eq!(&h[..], &v[..OVERHEAD]);
    }

    #[test]
    fn errors() {
        let e = encap(5, 5);
        let mut buf = [0u8; 100];
        assert_eq!(
            e.encapsulate(&frame(0x0800, 51), &mut buf),
            Err(E::BufferTooSmall { need: 101 })
        );
        assert_eq!(e.encapsulate(&frame(0x0800, 50), &mut buf), Ok(100));
        assert_eq!(e.encapsulate(&[0u8; 13], &mut buf), Err(E::InnerRunt));
        assert_eq!(
            e.encapsulate(&frame(0x8100, 60), &mut buf),
            Err(E::InnerTagged)
        );
        let mut v = Vec::new();
        let max = frame(0x0800, IPV4_MAX_LEN - OVERHEAD_IP);
        e.encapsulate_vec(&max, &mut v).unwrap();
        check_outer(&e, &v, max.len());
        let over = frame(0x0800, IPV4_MAX_LEN - OVERHEAD_IP + 1);
        assert_eq!(e.encapsulate_vec(&over, &mut v), Err(E::TooLong));
        assert_eq!(
            E::BufferTooSmall { need: 3 }.to_string(),
            "output buffer too small, 3 bytes needed"
        );
    }

    #[test]
    fn reused_vec_does_not_reallocate() {
        let e = encap(5, 5);
        let mut v = Vec::with_capacity(OVERHEAD + 1500);
        let ptr = v.as_ptr();
        for len in [1500, 60, 1464, 14] {
            e.encapsulate_vec(&frame(0x0800, len), &mut v).unwrap();
            assert_eq!(v.len(), OVERHEAD + len);
            assert_eq!(v.as_ptr(), ptr);
        }
    }

    /// Random fields and inner lengths always produce packets etherparse accepts
    /// with a correct checksum.
    #[test]
    fn random_encapsulations_are_valid() {
        let mut rng = SplitMix64::new(0x5eed_0e4c_a951_0001);
        let mut v = Vec::new();
        let mut inner = vec![0u8; 2000];
        for _ in 0..2000 {
            let mut mac = [0u8; 12];
            rng.fill(&mut mac);
            let r = rng.next_u64();
            let e = Ipv4Encap {
                vni: Vni::new(1 + (r as u32 % Vni::MAX)).unwrap(),
                src_mac: MacAddr(mac[..6].try_into().unwrap()),
                dst_mac: MacAddr(mac[6..].try_into().unwrap()),
                src_ip: Ipv4Addr::from(rng.next_u64() as u32),
                dst_ip: Ipv4Addr::from(rng.next_u64() as u32),
                src_port: (r >> 24) as u16,
                dst_port: (r >> 40) as u16,
                ttl: (r >> 56) as u8,
                tos: (r >> 8) as u8,
            };
            let len = 14 + rng.below(1986) as usize;
            rng.fill(&mut inner[..len]);
            inner[12] = 0x08; // keep it untagged
            e.encapsulate_vec(&inner[..len], &mut v).unwrap();
            let payload = check_outer(&e, &v, len);
            let p = VxlanPacket::parse(payload).unwrap();
            assert_eq!((p.vni(), p.inner()), (e.vni, &inner[..len]));
        }
    }
}
