//! The head of an Ethernet frame as far as segmentation needs it: up to two
//! 802.1Q/802.1ad tags, an IPv4 or IPv6 header, a TCP or UDP header. Parsed once
//! from bytes into offsets ([`Layout`]); every length read from the frame is
//! checked against it, so later slicing by these offsets stays in bounds.

use crate::OffloadError;

/// Ethernet destination + source + ethertype (IEEE 802.3 §3.1.1).
pub const ETH_HLEN: usize = 14;
/// One 802.1Q (or 802.1ad) tag: TPID + TCI.
pub const VLAN_HLEN: usize = 4;
/// Tags we walk: a customer tag, optionally inside a service tag (QinQ).
pub const MAX_TAGS: usize = 2;
/// Longest head [`Layout::parse`] can need: Ethernet, two tags, IPv4 with 40
/// bytes of options, TCP with 40 bytes of options. Callers that parse a copy of
/// the head copy at least this much (or the whole frame if shorter).
pub const MAX_HEAD_LEN: usize = ETH_HLEN + MAX_TAGS * VLAN_HLEN + 60 + 60;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;

/// IP protocol numbers (IANA).
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// IPv6 fixed header (RFC 8200 §3).
pub const IPV6_HLEN: usize = 40;
/// UDP header (RFC 768).
pub const UDP_HLEN: usize = 8;
/// Offset of the checksum field in a TCP header (RFC 9293 §3.1).
pub const TCP_CSUM_OFFSET: usize = 16;
/// Offset of the checksum field in a UDP header (RFC 768).
pub const UDP_CSUM_OFFSET: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    pub const fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => IPPROTO_TCP,
            L4Proto::Udp => IPPROTO_UDP,
        }
    }

    /// Where the checksum field sits in this transport header.
    pub const fn csum_offset(self) -> usize {
        match self {
            L4Proto::Tcp => TCP_CSUM_OFFSET,
            L4Proto::Udp => UDP_CSUM_OFFSET,
        }
    }
}

/// Offsets of a frame's headers, each proven to lie inside the bytes parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Start of the IP header (14, 18 or 22).
    pub l3: usize,
    pub ip: IpVersion,
    /// Start of the TCP/UDP header.
    pub l4: usize,
    pub proto: L4Proto,
    /// End of the TCP/UDP header: where the payload starts.
    pub hdr_len: usize,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

impl Layout {
    /// Parses the head of `frame`. Truncation is [`OffloadError::HeaderPastFrame`];
    /// anything that is not plain IPv4/IPv6 + TCP/UDP is
    /// [`OffloadError::GsoUnsupported`]: non-IP ethertypes, more than
    /// [`MAX_TAGS`] tags, IPv4 fragments (MF or an offset: segmenting a fragment
    /// would corrupt it) or IHL < 5, IPv6 extension headers (the next header must
    /// be TCP or UDP), other transports, TCP data offset < 5.
    pub fn parse(frame: &[u8]) -> Result<Layout, OffloadError> {
        let past = OffloadError::HeaderPastFrame;
        let unsupported = OffloadError::GsoUnsupported;
        let mut l3 = ETH_HLEN;
        let mut ethertype = be16(frame, 12).ok_or(past)?;
        let mut tags = 0;
        while ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
            if tags == MAX_TAGS {
                return Err(unsupported);
            }
            tags += 1;
            ethertype = be16(frame, l3 + 2).ok_or(past)?;
            l3 += VLAN_HLEN;
        }
        let (ip, l4, proto_number) = match ethertype {
            ETHERTYPE_IPV4 => {
                let vihl = *frame.get(l3).ok_or(past)?;
                let ihl = usize::from(vihl & 0x0f) * 4;
                if vihl >> 4 != 4 || ihl < 20 {
                    return Err(unsupported);
                }
                if frame.len() < l3 + ihl {
                    return Err(past);
                }
                let frag = be16(frame, l3 + 6).ok_or(past)?;
                // MF set or a fragment offset: not a whole datagram.
                if frag & 0x3fff != 0 {
                    return Err(unsupported);
                }
                (IpVersion::V4, l3 + ihl, frame[l3 + 9])
            }
            ETHERTYPE_IPV6 => {
                if frame.len() < l3 + IPV6_HLEN {
                    return Err(past);
                }
                if frame[l3] >> 4 != 6 {
                    return Err(unsupported);
                }
                (IpVersion::V6, l3 + IPV6_HLEN, frame[l3 + 6])
            }
            _ => return Err(unsupported),
        };
        let (proto, l4_len) = match proto_number {
            IPPROTO_TCP => {
                let doff = usize::from(*frame.get(l4 + 12).ok_or(past)? >> 4) * 4;
                if doff < 20 {
                    return Err(unsupported);
                }
                (L4Proto::Tcp, doff)
            }
            IPPROTO_UDP => (L4Proto::Udp, UDP_HLEN),
            _ => return Err(unsupported),
        };
        let hdr_len = l4 + l4_len;
        if frame.len() < hdr_len {
            return Err(past);
        }
        Ok(Layout {
            l3,
            ip,
            l4,
            proto,
            hdr_len,
        })
    }

    /// The IP source and destination as they feed the pseudo-header: 4+4 bytes
    /// for IPv4, 16+16 for IPv6 (RFC 9293 §3.1, RFC 8200 §8.1).
    pub fn addresses<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        match self.ip {
            IpVersion::V4 => frame.get(self.l3 + 12..self.l3 + 20),
            IpVersion::V6 => frame.get(self.l3 + 8..self.l3 + 40),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn ipv4_tcp(tags: &[u16]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        for _ in tags {
            f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            f.extend_from_slice(&[0, 100]);
        }
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[6] = 0x40; // DF
        ip[9] = IPPROTO_TCP;
        f.extend_from_slice(&ip);
        let mut tcp = [0u8; 32];
        tcp[12] = 8 << 4;
        f.extend_from_slice(&tcp);
        f
    }

    #[test]
    fn tagged_ipv4_tcp() {
        let f = ipv4_tcp(&[100]);
        let l = Layout::parse(&f).unwrap();
        assert_eq!((l.l3, l.l4, l.hdr_len), (18, 38, 70));
        assert_eq!((l.ip, l.proto), (IpVersion::V4, L4Proto::Tcp));
        assert_eq!(
            Layout::parse(&ipv4_tcp(&[1, 2, 3])),
            Err(OffloadError::GsoUnsupported)
        );
        assert_eq!(Layout::parse(&f[..69]), Err(OffloadError::HeaderPastFrame));
    }

    #[test]
    fn fragments_and_foreign_protocols_are_unsupported() {
        let mut f = ipv4_tcp(&[]);
        f[14 + 6] = 0x20; // MF
        assert_eq!(Layout::parse(&f), Err(OffloadError::GsoUnsupported));
        let mut f = ipv4_tcp(&[]);
        f[14 + 9] = 47; // GRE
        assert_eq!(Layout::parse(&f), Err(OffloadError::GsoUnsupported));
        assert_eq!(
            Layout::parse(&eth(0x0806)),
            Err(OffloadError::GsoUnsupported)
        );
        let mut v6 = eth(ETHERTYPE_IPV6);
        v6.extend_from_slice(&[0x60; 40]);
        v6[14 + 6] = 0; // hop-by-hop options
        v6.extend_from_slice(&[0; 8]);
        assert_eq!(Layout::parse(&v6), Err(OffloadError::GsoUnsupported));
        v6[14 + 6] = IPPROTO_UDP;
        assert_eq!(Layout::parse(&v6).unwrap().hdr_len, 14 + 40 + 8);
    }
}
