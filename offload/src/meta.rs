//! [`Offload`]: what a frame's virtio-net header means for that frame, validated
//! once at the boundary; [`Accepts`]: which offloads a port takes.
//!
//! The rules (virtio 1.2 §5.1.6.2, device side, and Linux `virtio_net_hdr_to_skb`,
//! which every kernel peer applies to the same header):
//! - NEEDS_CSUM: the two-byte field at `csum_start + csum_offset` lies inside the
//!   frame and `csum_start` is at least [`MIN_CSUM_START`] (34: an Ethernet head
//!   and a minimal IPv4 header; no transport header starts earlier). Linux's TAP
//!   refuses starts before 20 (`virtio_net_hdr_to_skb`: transport offset below
//!   `sizeof(struct iphdr)`, measured from the Ethernet head), so whatever we
//!   accept a kernel port accepts too.
//! - GSO: the gso type is TCPV4, TCPV6 or UDP_L4 (USO), optionally with the ECN
//!   bit on TCP; legacy UFO and anything else is refused. `gso_size` is not 0. The
//!   headers are parsed from the frame ([`Layout`]) and must match the type.
//!   `hdr_len` is only a hint (§5.1.6.2: unless VIRTIO_NET_F_GUEST_HDRLEN was
//!   negotiated, hdr_len "is a hint to the device as to how much of the header
//!   needs to be kept to copy into each packet", and Linux drivers send
//!   `skb_headlen`, often 0 or the whole linear part): we require only that it
//!   does not point past the frame, and segment at the parsed header end. When
//!   NEEDS_CSUM is set on a GSO frame it must name the TCP/UDP checksum field (as
//!   Linux requires); a TSO frame without it is taken (checksums are computed
//!   from scratch anyway), a USO frame without it is refused, as Linux refuses it
//!   (both seen in `tests/kernel_capture.rs`).
//! - A GSO frame whose payload fits one segment is not a GSO frame (Linux: "too
//!   small packets are not really GSO ones"): it keeps only its checksum offload
//!   and goes out as one frame. (Linux measures that payload after a 20-byte TCP
//!   header whatever the options, then drops the frames whose real payload is
//!   within the option length of gso_size; no Linux sender makes such a frame,
//!   and we deliver it: a deliberate difference, pinned in `kernel_capture`.)
//! - At most 64 KiB of payload, and at most [`MAX_TCP_SEGMENTS`] /
//!   [`MAX_UDP_SEGMENTS`] segments.

use crate::hdr::{
    VnetHdr, DATA_VALID, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, NEEDS_CSUM,
};
use crate::headers::{IpVersion, L4Proto, Layout, ETH_HLEN};
use crate::OffloadError;

/// Smallest `csum_start`: past an Ethernet head and a minimal IPv4 header.
pub const MIN_CSUM_START: usize = ETH_HLEN + 20;
/// Most payload one GSO frame may carry: what an IPv4 total length can describe.
pub const MAX_GSO_PAYLOAD: usize = 65_535;
/// Most UDP segments of one USO frame: Linux's UDP_MAX_SEGMENTS.
pub const MAX_UDP_SEGMENTS: usize = 128;
/// Most TCP segments of one TSO frame: 64 KiB at Linux's smallest sender MSS
/// (TCP_MIN_SND_MSS, 48) is 1366; a lower gso_size only multiplies our work.
pub const MAX_TCP_SEGMENTS: usize = 1366;

/// The segmentation a GSO frame asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoKind {
    Tcp4,
    Tcp6,
    /// UDP_L4 (USO), over IPv4 or IPv6.
    Udp,
}

/// A validated GSO request. `hdr_len` is the parsed header length (Ethernet,
/// tags, IP, TCP/UDP with options), not the guest's hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gso {
    pub kind: GsoKind,
    /// Payload bytes per segment (the last may carry fewer).
    pub size: u16,
    pub hdr_len: u16,
    /// The TCP sender uses ECN (gso_type ECN bit): CWR may be set.
    pub ecn: bool,
    /// Start of the IP header.
    pub(crate) l3: u16,
    /// Start of the TCP/UDP header.
    pub(crate) l4: u16,
    /// The IP version parsed (USO runs over either).
    pub(crate) ip: IpVersion,
}

impl Gso {
    pub fn l3(&self) -> usize {
        usize::from(self.l3)
    }

    pub fn l4(&self) -> usize {
        usize::from(self.l4)
    }

    pub fn ip(&self) -> IpVersion {
        self.ip
    }

    pub fn proto(&self) -> L4Proto {
        match self.kind {
            GsoKind::Tcp4 | GsoKind::Tcp6 => L4Proto::Tcp,
            GsoKind::Udp => L4Proto::Udp,
        }
    }

    /// Segments a frame of `frame_len` bytes becomes.
    pub fn segments(&self, frame_len: usize) -> usize {
        frame_len
            .saturating_sub(usize::from(self.hdr_len))
            .div_ceil(usize::from(self.size))
    }
}

/// The validated meaning of a frame's virtio-net header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offload {
    /// NEEDS_CSUM: (csum_start, csum_offset), proven inside the frame.
    pub csum: Option<(u16, u16)>,
    pub gso: Option<Gso>,
    /// DATA_VALID: the host kernel vouches for the checksums (a receive-side
    /// hint a guest may pass on). Only [`Offload::parse_trusted`] keeps it.
    pub data_valid: bool,
}

impl Offload {
    /// A frame with nothing left to do: complete checksums, one wire frame.
    pub const NONE: Offload = Offload {
        csum: None,
        gso: None,
        data_valid: false,
    };

    /// Validates `hdr` for a frame of `frame_len` bytes whose first bytes are
    /// `frame` (at least the headers: [`crate::MAX_HEAD_LEN`] bytes, or the whole
    /// frame if shorter). See the module doc for the rules.
    ///
    /// DATA_VALID is ignored: on transmit "the driver MUST NOT set" it (virtio
    /// 1.2 §5.1.6.2), and a guest that did must not make another guest skip its
    /// checksum checks. For headers the host kernel wrote (a TAP read), see
    /// [`Offload::parse_trusted`].
    pub fn parse(hdr: &VnetHdr, frame: &[u8], frame_len: usize) -> Result<Offload, OffloadError> {
        Ok(Offload {
            data_valid: false,
            ..Self::parse_trusted(hdr, frame, frame_len)?
        })
    }

    /// [`Offload::parse`] for a header the host kernel wrote (read from a TAP
    /// with IFF_VNET_HDR): DATA_VALID, set by the kernel on frames whose
    /// checksums it verified, is kept.
    pub fn parse_trusted(
        hdr: &VnetHdr,
        frame: &[u8],
        frame_len: usize,
    ) -> Result<Offload, OffloadError> {
        let head = &frame[..frame.len().min(frame_len)];
        let csum = if hdr.flags & NEEDS_CSUM != 0 {
            let start = usize::from(hdr.csum_start);
            let field_end = start + usize::from(hdr.csum_offset) + 2;
            if start < MIN_CSUM_START || field_end > frame_len {
                return Err(OffloadError::CsumOutsideFrame);
            }
            Some((hdr.csum_start, hdr.csum_offset))
        } else {
            None
        };
        let data_valid = hdr.flags & DATA_VALID != 0;
        let gso = if hdr.gso_type == GSO_NONE {
            None
        } else {
            Self::parse_gso(hdr, csum, head, frame_len)?
        };
        Ok(Offload {
            csum,
            gso,
            data_valid,
        })
    }

    fn parse_gso(
        hdr: &VnetHdr,
        csum: Option<(u16, u16)>,
        head: &[u8],
        frame_len: usize,
    ) -> Result<Option<Gso>, OffloadError> {
        let ecn = hdr.gso_type & GSO_ECN != 0;
        let kind = match hdr.gso_type & !GSO_ECN {
            GSO_TCPV4 => GsoKind::Tcp4,
            GSO_TCPV6 => GsoKind::Tcp6,
            GSO_UDP_L4 if !ecn => GsoKind::Udp,
            _ => return Err(OffloadError::GsoUnsupported),
        };
        if hdr.gso_size == 0 {
            return Err(OffloadError::GsoSizeZero);
        }
        if usize::from(hdr.hdr_len) > frame_len {
            return Err(OffloadError::HeaderPastFrame);
        }
        let layout = Layout::parse(head)?;
        let matches = match kind {
            GsoKind::Tcp4 => layout.ip == IpVersion::V4 && layout.proto == L4Proto::Tcp,
            GsoKind::Tcp6 => layout.ip == IpVersion::V6 && layout.proto == L4Proto::Tcp,
            GsoKind::Udp => layout.proto == L4Proto::Udp,
        };
        if !matches {
            return Err(OffloadError::GsoUnsupported);
        }
        if kind == GsoKind::Udp && csum.is_none() {
            return Err(OffloadError::CsumNotL4);
        }
        if let Some((start, offset)) = csum {
            if usize::from(start) != layout.l4 || usize::from(offset) != layout.proto.csum_offset()
            {
                return Err(OffloadError::CsumNotL4);
            }
        }
        let payload = frame_len - layout.hdr_len;
        let size = usize::from(hdr.gso_size);
        if payload <= size {
            return Ok(None);
        }
        let limit = match layout.proto {
            L4Proto::Tcp => MAX_TCP_SEGMENTS,
            L4Proto::Udp => MAX_UDP_SEGMENTS,
        };
        // Each segment's IPv4 total length / IPv6 payload length / UDP length
        // must fit 16 bits too.
        let largest_l3 = layout.hdr_len - layout.l3 + size;
        if payload > MAX_GSO_PAYLOAD
            || largest_l3 > usize::from(u16::MAX)
            || payload.div_ceil(size) > limit
        {
            return Err(OffloadError::TooManySegments);
        }
        // All offsets are below MAX_HEAD_LEN, so they fit u16.
        Ok(Some(Gso {
            kind,
            size: hdr.gso_size,
            hdr_len: layout.hdr_len as u16,
            ecn,
            l3: layout.l3 as u16,
            l4: layout.l4 as u16,
            ip: layout.ip,
        }))
    }

    /// The header to send with the frame to a port that accepts these offloads
    /// (`hdr_len` is the exact header length, as VIRTIO_NET_F_GUEST_HDRLEN promises).
    pub fn to_hdr(&self, num_buffers: u16) -> VnetHdr {
        let (csum_start, csum_offset) = self.csum.unwrap_or((0, 0));
        let mut flags = 0;
        if self.csum.is_some() {
            flags |= NEEDS_CSUM;
        }
        if self.data_valid {
            flags |= DATA_VALID;
        }
        let (gso_type, gso_size, hdr_len) = match &self.gso {
            None => (GSO_NONE, 0, 0),
            Some(g) => {
                let base = match g.kind {
                    GsoKind::Tcp4 => GSO_TCPV4,
                    GsoKind::Tcp6 => GSO_TCPV6,
                    GsoKind::Udp => GSO_UDP_L4,
                };
                (base | if g.ecn { GSO_ECN } else { 0 }, g.size, g.hdr_len)
            }
        };
        VnetHdr {
            flags,
            gso_type,
            hdr_len,
            gso_size,
            csum_start,
            csum_offset,
            num_buffers,
        }
    }

    /// The same offload after `delta` bytes were inserted (positive) or removed
    /// (negative) in front of the IP header: an 802.1Q tag pushed (+4) or popped
    /// (-4). Every offset into the frame moves by `delta`. Only meaningful for
    /// such an edit: [`Offload::parse`] proved `csum_start` and the header
    /// offsets lie past the Ethernet head and any tags, so a pop of a tag the
    /// frame carries stays in range (offsets saturate rather than wrap).
    pub fn shifted(&self, delta: isize) -> Offload {
        let mv = |v: u16| -> u16 {
            let moved = (v as isize).saturating_add(delta);
            moved.clamp(0, u16::MAX as isize) as u16
        };
        Offload {
            csum: self.csum.map(|(start, offset)| (mv(start), offset)),
            gso: self.gso.map(|g| Gso {
                hdr_len: mv(g.hdr_len),
                l3: mv(g.l3),
                l4: mv(g.l4),
                ..g
            }),
            data_valid: self.data_valid,
        }
    }

    /// The longest frame that will be on a wire once this offload is resolved:
    /// one segment (`hdr_len + gso_size`) for a GSO frame, else the frame. What an
    /// MTU check compares.
    pub fn largest_frame(&self, frame_len: usize) -> usize {
        match &self.gso {
            Some(g) => frame_len.min(usize::from(g.hdr_len) + usize::from(g.size)),
            None => frame_len,
        }
    }

    /// What a port must accept to take this frame unchanged.
    pub fn needs(&self) -> Accepts {
        let mut a = Accepts::NONE;
        if self.csum.is_some() {
            a = a | Accepts::CSUM;
        }
        if let Some(g) = &self.gso {
            a = a | match g.kind {
                GsoKind::Tcp4 => Accepts::TSO4,
                GsoKind::Tcp6 => Accepts::TSO6,
                GsoKind::Udp => Accepts::USO,
            };
            if g.ecn {
                a = a | Accepts::TSO_ECN;
            }
        }
        a
    }
}

/// The offloads a port takes: a small bit set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Accepts(u8);

impl Accepts {
    pub const NONE: Accepts = Accepts(0);
    /// Partial checksums (NEEDS_CSUM).
    pub const CSUM: Accepts = Accepts(1);
    pub const TSO4: Accepts = Accepts(2);
    pub const TSO6: Accepts = Accepts(4);
    /// TSO frames with the ECN bit (CWR on the first segment).
    pub const TSO_ECN: Accepts = Accepts(8);
    /// UDP segmentation, IPv4 and IPv6.
    pub const USO: Accepts = Accepts(16);
    pub const ALL: Accepts = Accepts(31);

    /// Every offload of `other` is in `self`.
    /// These offloads less `other`'s.
    pub const fn without(self, other: Accepts) -> Accepts {
        Accepts(self.0 & !other.0)
    }

    pub const fn contains(self, other: Accepts) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    /// What a guest's RX side takes, from its negotiated virtio-net features
    /// (virtio 1.2 §5.1.3: GUEST_CSUM 1, GUEST_TSO4 7, GUEST_TSO6 8, GUEST_ECN 9,
    /// GUEST_USO4 54, GUEST_USO6 55). Segmentation offloads need GUEST_CSUM
    /// (§5.1.3.1), so without it none is taken; USO needs both USO4 and USO6.
    pub const fn from_guest_features(features: u64) -> Accepts {
        const fn bit(f: u64, n: u32) -> bool {
            f & (1 << n) != 0
        }
        if !bit(features, 1) {
            return Accepts::NONE;
        }
        let mut a = Accepts::CSUM.0;
        if bit(features, 7) {
            a |= Accepts::TSO4.0;
        }
        if bit(features, 8) {
            a |= Accepts::TSO6.0;
        }
        if bit(features, 9) && (bit(features, 7) || bit(features, 8)) {
            a |= Accepts::TSO_ECN.0;
        }
        if bit(features, 54) && bit(features, 55) {
            a |= Accepts::USO.0;
        }
        Accepts(a)
    }
}

/// `TUNSETOFFLOAD` flags (linux/if_tun.h).
const TUN_F_CSUM: u32 = 0x01;
const TUN_F_TSO4: u32 = 0x02;
const TUN_F_TSO6: u32 = 0x04;
const TUN_F_TSO_ECN: u32 = 0x08;
const TUN_F_USO4: u32 = 0x20;
const TUN_F_USO6: u32 = 0x40;

impl Accepts {
    /// The `TUNSETOFFLOAD` flags that let a TAP device hand us frames with these
    /// offloads (the kernel then writes partial checksums and GSO frames with
    /// their virtio-net header). Without CSUM nothing else can be asked:
    /// Linux refuses TSO/USO flags without TUN_F_CSUM.
    pub const fn tun_offload_flags(self) -> u32 {
        if !self.contains(Accepts::CSUM) {
            return 0;
        }
        let mut f = TUN_F_CSUM;
        if self.contains(Accepts::TSO4) {
            f |= TUN_F_TSO4;
        }
        if self.contains(Accepts::TSO6) {
            f |= TUN_F_TSO6;
        }
        if self.contains(Accepts::TSO_ECN) {
            f |= TUN_F_TSO_ECN;
        }
        if self.contains(Accepts::USO) {
            f |= TUN_F_USO4 | TUN_F_USO6;
        }
        f
    }
}

impl std::ops::BitOr for Accepts {
    type Output = Accepts;
    fn bitor(self, rhs: Accepts) -> Accepts {
        Accepts(self.0 | rhs.0)
    }
}
