//! Ethernet and 802.1Q header views over byte buffers.
//!
//! Only the first [`HEAD_LEN`] bytes of a frame matter to the switch: two MAC
//! addresses, then either the EtherType or an 802.1Q tag (TPID 0x8100 + TCI)
//! followed by the inner EtherType.

pub use fabric_l2::MacAddr;

/// Bytes of a frame the switch needs to see: dst (6) + src (6) + TPID (2) + TCI (2)
/// + inner EtherType (2).
pub const HEAD_LEN: usize = 18;

/// Ethernet header without tag.
pub const ETH_HLEN: usize = 14;

/// 802.1Q tag length.
pub const VLAN_TAG_LEN: usize = 4;

/// EtherType of an IEEE 802.1Q (C-)tag.
pub const TPID_8021Q: u16 = 0x8100;

/// A typed view of the start of an Ethernet frame.
///
/// `head` holds the first bytes of the frame (up to [`HEAD_LEN`]); `len` is the
/// whole frame's length, which may be larger than `head`.
#[derive(Clone, Copy, Debug)]
pub struct EthernetHead<'a> {
    head: &'a [u8],
    len: usize,
}

impl<'a> EthernetHead<'a> {
    /// Returns `None` for a runt: a frame shorter than an Ethernet header, or a
    /// tagged frame shorter than header plus tag.
    pub fn parse(head: &'a [u8], len: usize) -> Option<EthernetHead<'a>> {
        if head.len() < ETH_HLEN || len < head.len() {
            return None;
        }
        let view = EthernetHead { head, len };
        if view.raw_ethertype() == TPID_8021Q && (head.len() < HEAD_LEN || len < HEAD_LEN) {
            return None;
        }
        Some(view)
    }

    pub fn dst(&self) -> MacAddr {
        MacAddr(self.head[0..6].try_into().expect("checked length"))
    }

    pub fn src(&self) -> MacAddr {
        MacAddr(self.head[6..12].try_into().expect("checked length"))
    }

    /// The EtherType at offset 12: the TPID for tagged frames.
    pub fn raw_ethertype(&self) -> u16 {
        u16::from_be_bytes([self.head[12], self.head[13]])
    }

    /// The 802.1Q tag control information (PCP, DEI, VID) when the frame is tagged.
    pub fn tci(&self) -> Option<u16> {
        (self.raw_ethertype() == TPID_8021Q)
            .then(|| u16::from_be_bytes([self.head[14], self.head[15]]))
    }

    /// The VLAN id of the tag (0 means priority-tagged, no VLAN).
    pub fn vid(&self) -> Option<u16> {
        self.tci().map(|tci| tci & 0x0fff)
    }

    /// Whole frame length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Frame length without any 802.1Q tag (what counts against an MTU).
    pub fn untagged_len(&self) -> usize {
        if self.tci().is_some() {
            self.len - VLAN_TAG_LEN
        } else {
            self.len
        }
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runts_are_rejected() {
        assert!(EthernetHead::parse(&[0u8; 13], 13).is_none());
        let mut tagged = [0u8; 18];
        tagged[12] = 0x81;
        assert!(EthernetHead::parse(&tagged[..16], 16).is_none());
        assert!(EthernetHead::parse(&tagged, 18).is_some());
        // head longer than the frame is a caller bug, not a frame
        assert!(EthernetHead::parse(&tagged, 10).is_none());
    }

    #[test]
    fn fields() {
        let mut f = [0u8; 18];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        f[14..16].copy_from_slice(&(0xa000u16 | 42).to_be_bytes());
        let h = EthernetHead::parse(&f, 100).unwrap();
        assert!(h.dst().is_multicast());
        assert!(!h.src().is_multicast());
        assert_eq!(h.vid(), Some(42));
        assert_eq!(h.untagged_len(), 96);
        assert_eq!(MacAddr::from_u64(h.src().to_u64()), h.src());
        assert_eq!(h.src().to_string(), "02:00:00:00:00:01");
    }
}
