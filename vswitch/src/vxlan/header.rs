//! The 8-byte VXLAN header (RFC 7348 §5) and the receive rules for it.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The header is the whole UDP payload's prefix; the inner Ethernet frame (no
//! FCS) follows it directly.

use crate::frame::{EthernetHead, ETH_HLEN, TPID_8021Q};
pub use fabric_l2::{Vni, VniError};
use std::fmt;

/// Why a frame could not be encapsulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncapError {
    /// The inner frame is shorter than an Ethernet header.
    InnerRunt,
    /// The inner frame carries an 802.1Q/802.1ad tag (RFC 7348 §6: SHOULD NOT be
    /// sent; strip it, the VNI stands for the VLAN).
    InnerTagged,
    /// The IPv4 packet would exceed 65535 bytes.
    TooLong,
    /// The output buffer is shorter than the `need`ed bytes.
    BufferTooSmall { need: usize },
}

impl fmt::Display for EncapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncapError::InnerRunt => f.write_str("inner frame shorter than an Ethernet header"),
            EncapError::InnerTagged => f.write_str("inner frame carries a VLAN tag"),
            EncapError::TooLong => f.write_str("encapsulated packet exceeds 65535 bytes"),
            EncapError::BufferTooSmall { need } => {
                write!(f, "output buffer too small, {need} bytes needed")
            }
        }
    }
}

impl std::error::Error for EncapError {}

/// Length of the VXLAN header.
pub const VXLAN_HLEN: usize = 8;

/// The IANA-assigned UDP destination port for VXLAN (RFC 7348 §5).
pub const VXLAN_PORT: u16 = 4789;

/// The I flag: "the VNI is valid". The only flag RFC 7348 defines; the other seven
/// bits of the flags byte are reserved.
pub const FLAG_I: u8 = 0x08;

/// TPID of an IEEE 802.1ad service tag; like 802.1Q tags, never carried inside VXLAN.
const TPID_8021AD: u16 = 0x88a8;

/// Why a received UDP payload is not a VXLAN packet we deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// Shorter than the 8-byte VXLAN header.
    Truncated,
    /// The I flag is clear: RFC 7348 §5 says it MUST be set for a valid VNI.
    NoVniFlag,
    /// The payload after the header is shorter than an Ethernet header (14 bytes).
    InnerRunt,
    /// The inner frame carries an 802.1Q or 802.1ad tag: RFC 7348 §6 says such
    /// frames SHOULD be discarded on decapsulation (the VNI is the VLAN here).
    InnerTagged,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeError::Truncated => "shorter than a VXLAN header",
            DecodeError::NoVniFlag => "VXLAN I flag not set",
            DecodeError::InnerRunt => "inner frame shorter than an Ethernet header",
            DecodeError::InnerTagged => "inner frame carries a VLAN tag",
        })
    }
}

impl std::error::Error for DecodeError {}

/// A checked view of a received VXLAN UDP payload: header plus inner frame.
#[derive(Clone, Copy, Debug)]
pub struct VxlanPacket<'a> {
    buf: &'a [u8],
}

impl<'a> VxlanPacket<'a> {
    /// Checks `udp_payload` by the receive rules of RFC 7348 §5 and §6:
    ///
    /// - at least [`VXLAN_HLEN`] bytes ([`DecodeError::Truncated`]);
    /// - the I flag (0x08) set ([`DecodeError::NoVniFlag`]);
    /// - the reserved bits (the other seven flag bits, the 24 bits after the flags
    ///   and the last byte) are **ignored**: the RFC says they MUST be zero on
    ///   transmit and ignored on receive, so a header with them set is accepted and
    ///   their value never influences the result (extensions such as VXLAN-GBP
    ///   that reuse them are thus decoded as plain VXLAN);
    /// - an inner Ethernet header (14 bytes) after the VXLAN header
    ///   ([`DecodeError::InnerRunt`]);
    /// - no 802.1Q/802.1ad tag on the inner frame ([`DecodeError::InnerTagged`]).
    ///
    /// The UDP checksum is the socket's business: RFC 7348 requires accepting a
    /// zero checksum, which Linux does for IPv4.
    pub fn parse(udp_payload: &'a [u8]) -> Result<VxlanPacket<'a>, DecodeError> {
        if udp_payload.len() < VXLAN_HLEN {
            return Err(DecodeError::Truncated);
        }
        if udp_payload[0] & FLAG_I == 0 {
            return Err(DecodeError::NoVniFlag);
        }
        let inner = &udp_payload[VXLAN_HLEN..];
        if inner.len() < ETH_HLEN {
            return Err(DecodeError::InnerRunt);
        }
        if is_tag(u16::from_be_bytes([inner[12], inner[13]])) {
            return Err(DecodeError::InnerTagged);
        }
        Ok(VxlanPacket { buf: udp_payload })
    }

    /// The flags byte as received, reserved bits included.
    pub fn flags(&self) -> u8 {
        self.buf[0]
    }

    /// The segment the inner frame belongs to (may be 0, see [`Vni`]).
    pub fn vni(&self) -> Vni {
        Vni::from_wire([self.buf[4], self.buf[5], self.buf[6]])
    }

    /// The inner Ethernet frame (at least 14 bytes, untagged).
    pub fn inner(&self) -> &'a [u8] {
        &self.buf[VXLAN_HLEN..]
    }

    /// The inner frame's header as the switch reads it.
    pub fn inner_head(&self) -> EthernetHead<'a> {
        let inner = self.inner();
        EthernetHead::parse(&inner[..inner.len().min(crate::HEAD_LEN)], inner.len())
            .expect("parse checked an untagged Ethernet header")
    }
}

pub(super) fn is_tag(ethertype: u16) -> bool {
    ethertype == TPID_8021Q || ethertype == TPID_8021AD
}

/// The VXLAN header for `vni`: I flag set, every reserved bit zero (RFC 7348 §5:
/// reserved fields MUST be set to zero on transmission).
pub const fn header(vni: Vni) -> [u8; VXLAN_HLEN] {
    let v = vni.to_wire();
    [FLAG_I, 0, 0, 0, v[0], v[1], v[2], 0]
}

/// The bytes to prepend to `inner` when a UDP socket writes the outer headers:
/// send `[header, inner]` as one datagram (e.g. `sendmsg` with a two-element
/// iovec) to the remote VTEP's port [`VXLAN_PORT`]; the frame is never copied.
///
/// Refuses what RFC 7348 says not to send: an inner frame shorter than an
/// Ethernet header, or one with an 802.1Q/802.1ad tag (§6: SHOULD NOT include an
/// inner VLAN tag; the VNI expresses the VLAN). The MTU is the caller's check,
/// see [`super::fits_underlay`].
pub fn vxlan_payload(vni: Vni, inner: &[u8]) -> Result<[u8; VXLAN_HLEN], EncapError> {
    check_inner(inner)?;
    Ok(header(vni))
}

pub(super) fn check_inner(inner: &[u8]) -> Result<(), EncapError> {
    if inner.len() < ETH_HLEN {
        return Err(EncapError::InnerRunt);
    }
    if is_tag(u16::from_be_bytes([inner[12], inner[13]])) {
        return Err(EncapError::InnerTagged);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vxlan::testutil::{frame, SplitMix64};

    fn vni(v: u32) -> Vni {
        Vni::new(v).unwrap()
    }

    #[test]
    fn vni_range() {
        assert_eq!(Vni::new(0), Err(VniError(0)));
        assert_eq!(Vni::new(1).map(Vni::get), Ok(1));
        assert_eq!(Vni::new(0xff_ffff).map(Vni::get), Ok(16_777_215));
        assert_eq!(Vni::try_from(0x100_0000u32), Err(VniError(16_777_216)));
        assert_eq!(VniError(0).to_string(), "VNI 0 is outside 1..=16777215");
        assert_eq!(format!("{} {:?}", vni(42), vni(42)), "42 Vni(42)");
    }

    #[test]
    fn header_layout() {
        assert_eq!(header(vni(0x12_3456)), [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(header(vni(1)), [0x08, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(header(vni(Vni::MAX)), [0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0]);
    }

    #[test]
    fn round_trip() {
        let inner = frame(0x0800, 60);
        let mut pkt = header(vni(5000)).to_vec();
        pkt.extend_from_slice(&inner);
        let p = VxlanPacket::parse(&pkt).unwrap();
        assert_eq!(p.vni(), vni(5000));
        assert_eq!(p.flags(), FLAG_I);
        assert_eq!(p.inner(), &inner[..]);
        let head = p.inner_head();
        assert_eq!(head.len(), 60);
        assert_eq!(head.dst().0, inner[0..6]);
        assert_eq!(head.src().0, inner[6..12]);
        assert_eq!(head.tci(), None);
    }

    #[test]
    fn rejects_each_malformed_case() {
        let inner = frame(0x0800, 60);
        let mut good = header(vni(7)).to_vec();
        good.extend_from_slice(&inner);

        for n in 0..VXLAN_HLEN {
            assert_eq!(
                VxlanPacket::parse(&good[..n]).unwrap_err(),
                DecodeError::Truncated
            );
        }
        let mut no_i = good.clone();
        no_i[0] = 0;
        assert_eq!(
            VxlanPacket::parse(&no_i).unwrap_err(),
            DecodeError::NoVniFlag
        );
        no_i[0] = !FLAG_I; // every other flag bit set does not stand in for I
        assert_eq!(
            VxlanPacket::parse(&no_i).unwrap_err(),
            DecodeError::NoVniFlag
        );
        for n in VXLAN_HLEN..VXLAN_HLEN + ETH_HLEN {
            assert_eq!(
                VxlanPacket::parse(&good[..n]).unwrap_err(),
                DecodeError::InnerRunt
            );
        }
        // exactly a header's worth of inner frame is accepted
        assert!(VxlanPacket::parse(&good[..VXLAN_HLEN + ETH_HLEN]).is_ok());
        for tpid in [0x8100u16, 0x88a8] {
            let mut tagged = good.clone();
            tagged[VXLAN_HLEN + 12..VXLAN_HLEN + 14].copy_from_slice(&tpid.to_be_bytes());
            assert_eq!(
                VxlanPacket::parse(&tagged).unwrap_err(),
                DecodeError::InnerTagged
            );
        }
    }

    #[test]
    fn reserved_bits_are_ignored_on_receive() {
        let inner = frame(0x86dd, 80);
        let mut pkt = header(vni(0xab_cdef)).to_vec();
        pkt.extend_from_slice(&inner);
        pkt[0] = 0xff;
        pkt[1..4].copy_from_slice(&[0xff; 3]);
        pkt[7] = 0xff;
        let p = VxlanPacket::parse(&pkt).unwrap();
        assert_eq!(p.vni(), vni(0xab_cdef));
        assert_eq!(p.flags(), 0xff);
        assert_eq!(p.inner(), &inner[..]);
    }

    #[test]
    fn vni_zero_decodes() {
        let mut pkt = vec![FLAG_I, 0, 0, 0, 0, 0, 0, 0];
        pkt.extend_from_slice(&frame(0x0800, 64));
        assert_eq!(VxlanPacket::parse(&pkt).unwrap().vni().get(), 0);
    }

    #[test]
    fn payload_for_the_kernel_socket() {
        let inner = frame(0x0800, 100);
        assert_eq!(vxlan_payload(vni(9), &inner), Ok(header(vni(9))));
        assert_eq!(
            vxlan_payload(vni(9), &inner[..13]),
            Err(EncapError::InnerRunt)
        );
        assert_eq!(
            vxlan_payload(vni(9), &frame(0x8100, 100)),
            Err(EncapError::InnerTagged)
        );
    }

    /// Random bytes, and random corruptions of a valid packet, never panic the
    /// decoder, and whatever it accepts satisfies the documented invariants.
    #[test]
    fn random_input_never_panics() {
        let mut rng = SplitMix64::new(0x7657_8c61_6e00_0001);
        let mut valid = header(vni(77)).to_vec();
        valid.extend_from_slice(&frame(0x0800, 90));
        let mut buf = vec![0u8; 256];
        let mut accepted = 0;
        for i in 0..100_000u32 {
            let len = rng.below(buf.len() as u64 + 1) as usize;
            let pkt = &mut buf[..len];
            if i.is_multiple_of(2) {
                rng.fill(pkt);
            } else {
                let n = len.min(valid.len());
                pkt[..n].copy_from_slice(&valid[..n]);
                for _ in 0..rng.below(4) {
                    if len > 0 {
                        pkt[rng.below(len as u64) as usize] = rng.next_u64() as u8;
                    }
                }
            }
            if let Ok(p) = VxlanPacket::parse(pkt) {
                accepted += 1;
                assert!(p.flags() & FLAG_I != 0);
                assert!(p.vni().get() <= Vni::MAX);
                assert_eq!(p.inner().len(), len - VXLAN_HLEN);
                let head = p.inner_head();
                assert!(head.len() >= ETH_HLEN && head.tci().is_none());
            }
        }
        assert!(accepted > 1000, "the corrupted half mostly stays valid");
    }
}
