//! Why a frame's offload metadata is refused: one variant per drop reason, each
//! with a stable name for counters.

use std::fmt;

/// A frame whose virtio-net header cannot be honoured. The frame is dropped and
/// counted under [`OffloadError::name`]; nothing about it reaches a wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OffloadError {
    /// Fewer than [`crate::VNET_HDR_LEN`] bytes where the header should be.
    HdrTruncated,
    /// A gso type other than NONE with `gso_size` 0 (virtio 1.2 §5.1.6.2: the
    /// driver sets gso_size to the segment payload size).
    GsoSizeZero,
    /// `hdr_len`, or the parsed L2+L3+L4 headers, reach beyond the frame.
    HeaderPastFrame,
    /// `csum_start + csum_offset + 2` past the frame, or `csum_start` inside the
    /// 14-byte Ethernet head.
    CsumOutsideFrame,
    /// A GSO frame whose NEEDS_CSUM fields do not name its TCP/UDP checksum field
    /// (Linux `virtio_net_hdr_to_skb` and `tcp_gso_segment` refuse these too).
    CsumNotL4,
    /// More than 64 KiB of payload, or more segments than the kernel allows.
    TooManySegments,
    /// A gso type we do not segment (unknown, legacy UFO, ECN on UDP) or one that
    /// does not match the packet (TCPV4 on IPv6, UDP_L4 on TCP, IPv6 extension
    /// headers, IPv4 fragments, malformed IP/TCP header lengths).
    GsoUnsupported,
    /// The caller's scratch buffer cannot hold one segment (`hdr_len + gso_size`)
    /// or the frame being checksummed: a bug of the caller, not of the guest.
    ScratchTooSmall,
}

impl OffloadError {
    /// Every variant, in declaration order (for counter tables).
    pub const ALL: [OffloadError; 8] = [
        OffloadError::HdrTruncated,
        OffloadError::GsoSizeZero,
        OffloadError::HeaderPastFrame,
        OffloadError::CsumOutsideFrame,
        OffloadError::CsumNotL4,
        OffloadError::TooManySegments,
        OffloadError::GsoUnsupported,
        OffloadError::ScratchTooSmall,
    ];

    /// Stable snake_case name: the drop reason label in counters and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            OffloadError::HdrTruncated => "vnet_hdr_truncated",
            OffloadError::GsoSizeZero => "gso_size_zero",
            OffloadError::HeaderPastFrame => "header_past_frame",
            OffloadError::CsumOutsideFrame => "csum_outside_frame",
            OffloadError::CsumNotL4 => "csum_not_l4",
            OffloadError::TooManySegments => "too_many_segments",
            OffloadError::GsoUnsupported => "gso_unsupported",
            OffloadError::ScratchTooSmall => "scratch_too_small",
        }
    }
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for OffloadError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_snake_case() {
        let mut names: Vec<&str> = OffloadError::ALL.iter().map(|e| e.name()).collect();
        assert!(names.iter().all(|n| n
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), OffloadError::ALL.len());
    }
}
