//! `struct virtio_net_hdr_v1` (virtio 1.2 §5.1.6): 12 bytes, little-endian, in
//! front of every frame of a port that negotiated VIRTIO_F_VERSION_1 (or
//! MRG_RXBUF). Parsing never fails on content: meaning is [`crate::Offload`]'s job.

use crate::OffloadError;

/// Bytes of `struct virtio_net_hdr_v1` (with `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;

/// `flags`: the checksum from `csum_start` to the end is left to the device
/// (§5.1.6.2).
pub const NEEDS_CSUM: u8 = 1;
/// `flags`: the receiver may trust the frame's checksums (§5.1.6.3.1).
pub const DATA_VALID: u8 = 2;

/// `gso_type`: not a GSO frame.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 (TSO).
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: legacy UDP fragmentation offload (UFO), IP fragments: refused.
pub const GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation (USO), one UDP datagram per segment.
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP sender uses ECN; CWR may be set (on the first segment).
pub const GSO_ECN: u8 = 0x80;

/// The header fields, host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

fn le16(b: &[u8; VNET_HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl VnetHdr {
    /// The header from its 12 wire bytes.
    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> VnetHdr {
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le16(b, 2),
            gso_size: le16(b, 4),
            csum_start: le16(b, 6),
            csum_offset: le16(b, 8),
            num_buffers: le16(b, 10),
        }
    }

    /// The header at the start of `buf`; [`OffloadError::HdrTruncated`] if it is
    /// shorter than [`VNET_HDR_LEN`].
    pub fn read(buf: &[u8]) -> Result<VnetHdr, OffloadError> {
        let head: &[u8; VNET_HDR_LEN] = buf
            .get(..VNET_HDR_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(OffloadError::HdrTruncated)?;
        Ok(VnetHdr::from_bytes(head))
    }

    /// The 12 wire bytes.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Writes the header into the first 12 bytes of `buf`;
    /// [`OffloadError::HdrTruncated`] if `buf` is shorter.
    pub fn write(&self, buf: &mut [u8]) -> Result<(), OffloadError> {
        let out = buf
            .get_mut(..VNET_HDR_LEN)
            .ok_or(OffloadError::HdrTruncated)?;
        out.copy_from_slice(&self.to_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_little_endian() {
        let bytes = [1, 0x81, 0x36, 0, 0xa8, 0x05, 0x22, 0, 0x10, 0, 2, 0];
        let h = VnetHdr::from_bytes(&bytes);
        assert_eq!(
            h,
            VnetHdr {
                flags: NEEDS_CSUM,
                gso_type: GSO_TCPV4 | GSO_ECN,
                hdr_len: 54,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
                num_buffers: 2,
            }
        );
        assert_eq!(h.to_bytes(), bytes);
        let mut buf = [0xffu8; 13];
        h.write(&mut buf).unwrap();
        assert_eq!(&buf[..12], &bytes);
        assert_eq!(buf[12], 0xff);
        assert_eq!(VnetHdr::read(&buf), Ok(h));
        assert_eq!(VnetHdr::read(&buf[..11]), Err(OffloadError::HdrTruncated));
        assert_eq!(h.write(&mut [0u8; 11]), Err(OffloadError::HdrTruncated));
    }
}
