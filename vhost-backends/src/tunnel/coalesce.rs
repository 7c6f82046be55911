//! Receive coalescing of inner TCP segments (the tunnel's own GRO): runs of
//! consecutive decapsulated frames of one TCP flow, within one received
//! batch, become one GSO super-frame for ports that accept TSO.
//!
//! A kernel vxlan peer sends MTU-sized inner TCP segments; without this each
//! costs the receiving port a write (a TAP device) or a descriptor chain (a
//! guest). The rules are Linux's `tcp4_gro_receive`/`tcp6_gro_receive` (with
//! `inet_gro_receive`/`ipv6_gro_receive`), made stricter where that keeps
//! re-segmentation byte for byte: a run is merged only when the switch's own
//! software GSO (`fabric_offload::segment`, for a port that does not take
//! TSO) gives back the segments that were received. Only segments already in
//! one batch are merged: nothing is held back for the next poll, so no timer
//! and no added latency.
//!
//! The super-frame is built without copying: its first segment whole (headers
//! rewritten in place in the receive slot), then the payload of each later
//! segment where it was received, as the pieces of one `FrameSource`. It
//! carries an [`Offload`] with GSO TCPv4/TCPv6 (`gso_size` the first
//! segment's payload) and NEEDS_CSUM on the TCP checksum, whose field holds
//! the pseudo-header sum as Linux leaves it for CHECKSUM_PARTIAL
//! (`tcp4_gro_complete`: `~tcp_v4_check(len, saddr, daddr, 0)`).
//!
//! Every length comes from the wire and is checked ([`Layout::parse`] and the
//! length fields against the frame) before anything is sliced; nothing here
//! allocates once the buffers have grown to the largest batch seen.

use crate::forward::MAX_SEGMENTS;
use fabric_offload::csum::Checksum;
use fabric_offload::hdr::{GSO_TCPV4, GSO_TCPV6, NEEDS_CSUM};
use fabric_offload::{IpVersion, L4Proto, Layout, Offload, VnetHdr};
use std::net::Ipv4Addr;
use std::ops::Range;
use vswitch::vxlan::Vni;

/// TCP flags (RFC 9293 §3.1).
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// IPv4 "don't fragment" in the flags byte (RFC 791).
const IP_DF: u8 = 0x40;
/// Fixed IPv6 header (RFC 8200 §3).
const IPV6_HLEN: usize = 40;
/// Most bytes of IP packet a super-frame may describe: the IPv4 total length
/// field (16 bits), and Linux's limit for a GRO packet of either version
/// without BIG TCP (`GRO_LEGACY_MAX_SIZE`).
pub(super) const MAX_IP_LEN: usize = 65_535;
/// Initial room for frames and pieces: one batch of single datagrams. The
/// vectors grow to the largest batch seen (`UDP_GRO` messages hold several
/// datagrams), then never again.
const INITIAL: usize = 64;

/// One decapsulated inner frame, as the coalescer takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Decapped {
    /// Where the inner frame (VLAN tag inserted) lies in the receive slots.
    pub range: Range<usize>,
    /// What decapsulation established (a partial checksum marked NEEDS_CSUM).
    pub offload: Offload,
    pub vni: Vni,
    /// The sender's address (the outer IPv4 source).
    pub vtep: Ipv4Addr,
    /// The inner TCP/UDP checksum is valid, or exactly the partial sum a
    /// kernel peer leaves (then `offload` has NEEDS_CSUM). A frame with any
    /// other checksum is never merged: forwarded alone, it is dropped by the
    /// receiving stack as it would be without coalescing.
    pub csum_ok: bool,
}

/// A frame to forward: the byte ranges of the receive slots that make it, in
/// order ([`Coalescer::pieces`]), and its offload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Coalesced {
    /// Indices into [`Coalescer::pieces`].
    pub pieces: Range<usize>,
    pub offload: Offload,
}

/// The output of [`coalesce`], kept per receiver so its buffers are reused.
pub(super) struct Coalescer {
    /// Byte ranges of the receive slots; each [`Coalesced`] names its own.
    pub pieces: Vec<Range<usize>>,
    pub out: Vec<Coalesced>,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer {
            pieces: Vec::with_capacity(INITIAL),
            out: Vec::with_capacity(INITIAL),
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// A TCP segment that may take part in a merge, its offsets proven inside
/// the frame it was parsed from.
#[derive(Clone, Copy, Debug)]
struct Seg {
    layout: Layout,
    /// TCP payload bytes (after the header and its options).
    payload: usize,
    seq: u32,
    flags: u8,
    /// IPv4 identification (0 for IPv6, which has none outside a fragment
    /// header).
    id: u16,
}

impl Seg {
    /// The segment in `f`, if it is one that may be merged at all:
    /// - [`Layout::parse`]: Ethernet with at most two tags, IPv4 not a
    ///   fragment (MF clear, offset 0) or IPv6 with TCP as next header (no
    ///   extension headers), TCP data offset at least 5, every header inside
    ///   the frame;
    /// - IPv4 without options (IHL 5, as `inet_gro_receive` requires), its
    ///   total length exactly the frame's IP part (no link padding: Linux
    ///   flushes when the length disagrees with what it received), its header
    ///   checksum valid (`ip_fast_csum` in `inet_gro_receive`: we rewrite
    ///   the checksum of the merged header, a bad one must not be hidden);
    /// - IPv6 payload length exactly the frame's IP part past the header;
    /// - a payload (a pure ACK is never merged: `tcp_gro_receive` flushes
    ///   segments without data);
    /// - flags exactly ACK, or ACK|PSH (which ends a run): SYN, FIN, RST,
    ///   URG, ECE and CWR each carry meaning per segment.
    fn parse(f: &[u8]) -> Option<Seg> {
        let layout = Layout::parse(f).ok()?;
        if layout.proto != L4Proto::Tcp {
            return None;
        }
        let (l3, l4) = (layout.l3, layout.l4);
        let ip_len = f.len() - l3;
        match layout.ip {
            IpVersion::V4 => {
                if l4 - l3 != 20
                    || usize::from(be16(f, l3 + 2)) != ip_len
                    || Checksum::new().add(&f[l3..l4]).fold() != 0xffff
                {
                    return None;
                }
            }
            IpVersion::V6 => {
                if usize::from(be16(f, l3 + 4)) + IPV6_HLEN != ip_len {
                    return None;
                }
            }
        }
        let payload = f.len() - layout.hdr_len;
        let flags = f[l4 + 13];
        if payload == 0 || (flags != TCP_ACK && flags != TCP_ACK | TCP_PSH) {
            return None;
        }
        let id = match layout.ip {
            IpVersion::V4 => be16(f, l3 + 4),
            IpVersion::V6 => 0,
        };
        Some(Seg {
            layout,
            payload,
            seq: be32(f, l4 + 4),
            flags,
            id,
        })
    }
}

/// A run being built: its first segment and what has been merged so far.
struct Run<'a> {
    first: &'a [u8],
    s0: Seg,
    /// Segments in the run, the first included.
    count: usize,
    /// Payload bytes of the run.
    bytes: usize,
    /// IPv4 identification: `Some(true)` when every segment repeats the
    /// first's, `Some(false)` when they count up from it, `None` until the
    /// second segment has said which.
    fixed_id: Option<bool>,
}

impl Run<'_> {
    /// Whether `s` (parsed from `f`) continues this run, and with which IPv4
    /// identification rule. The checks, each a flush condition of Linux's
    /// GRO unless said otherwise:
    /// - same Ethernet head: destination, source, the tag decapsulation
    ///   inserted (the VNI's VLAN) and ethertype (`eth_gro_receive` compares
    ///   the MAC header; the tag stands for the VNI, also compared apart);
    /// - same header layout: IP version, IP and TCP header lengths (the TCP
    ///   data offset), so the same options length (`tcp_gro_receive`);
    /// - IPv4: same TOS, TTL, flags (DF), addresses (`inet_gro_receive`);
    ///   the identification one more per segment than the first's, or (DF
    ///   set only) the same in all (`inet_gro_flush`: a fixed ID is allowed
    ///   with DF; re-segmentation then numbers them up from the first's,
    ///   which DF makes meaningless, RFC 6864 §4.1);
    /// - IPv6: same version, traffic class and flow label, next header, hop
    ///   limit and addresses (`ipv6_gro_receive` compares the first word and
    ///   the rest but the payload length);
    /// - TCP: same ports, ACK number (`tcp_gro_receive`), window and urgent
    ///   pointer (Linux takes the first's window; we require it equal, so a
    ///   window update is never merged away), identical option bytes
    ///   (timestamps included; Linux compares every option word), the
    ///   reserved bits and data offset equal, and the sequence number exactly
    ///   where the run's payload ends (contiguous: no gap, no overlap);
    /// - a payload at most the first's (the GSO size): all merged segments
    ///   but the last carry exactly that many bytes (`tcp_gro_receive`
    ///   flushes a larger one and ends the run after a smaller one).
    fn continues(&self, f: &[u8], s: &Seg) -> Option<bool> {
        let (first, s0) = (self.first, &self.s0);
        let l = s0.layout;
        let (l3, l4) = (l.l3, l.l4);
        if s.layout != l || f[..l3] != first[..l3] || s.payload > s0.payload {
            return None;
        }
        let fixed_id = match l.ip {
            IpVersion::V4 => {
                let same = f[l3 + 1] == first[l3 + 1] // TOS
                    && f[l3 + 6..l3 + 9] == first[l3 + 6..l3 + 9] // flags, fragment offset, TTL
                    && f[l3 + 12..l3 + 20] == first[l3 + 12..l3 + 20]; // addresses
                if !same {
                    return None;
                }
                let step = s0.id.wrapping_add(self.count as u16);
                let df = first[l3 + 6] & IP_DF != 0;
                let fixed = match (s.id == step, s.id == s0.id && df) {
                    (true, _) => false,
                    (false, true) => true,
                    (false, false) => return None,
                };
                if self.fixed_id.is_some_and(|was| was != fixed) {
                    return None;
                }
                Some(fixed)
            }
            IpVersion::V6 => {
                let same = f[l3..l3 + 4] == first[l3..l3 + 4] // version, class, flow label
                    && f[l3 + 6..l3 + IPV6_HLEN] == first[l3 + 6..l3 + IPV6_HLEN]; // next header, hop limit, addresses
                if !same {
                    return None;
                }
                None
            }
        };
        let tcp_same = f[l4..l4 + 4] == first[l4..l4 + 4] // ports
            && f[l4 + 8..l4 + 13] == first[l4 + 8..l4 + 13] // ACK number, data offset, reserved
            && f[l4 + 14..l4 + 16] == first[l4 + 14..l4 + 16] // window
            && f[l4 + 18..l.hdr_len] == first[l4 + 18..l.hdr_len]; // urgent pointer, options
        if !tcp_same || s.seq != s0.seq.wrapping_add(self.bytes as u32) {
            return None;
        }
        Some(fixed_id.unwrap_or(false))
    }
}

/// How many frames from `frames[i]` on make one run (1: `frames[i]` goes
/// alone). A run starts with a segment whose flags are exactly ACK, and
/// takes each following frame while:
/// - it comes from the same VNI and the same VTEP (the inner headers could
///   match across two tunnels; two senders are two paths);
/// - its checksum is valid or exactly partial ([`Decapped::csum_ok`]), and
///   decapsulation gave it no segmentation of its own;
/// - it continues the run ([`Run::continues`]);
/// - the IP packet stays within [`MAX_IP_LEN`], and the frame within
///   [`MAX_SEGMENTS`] pieces (what a `FrameSource` may have).
///
/// A segment shorter than the first, or with PSH (`tcp_gro_receive`: PSH
/// flushes), is merged as the last of its run.
fn run_length(buf: &[u8], frames: &[Decapped], i: usize) -> usize {
    let f0 = &frames[i];
    if !f0.csum_ok || f0.offload.gso.is_some() {
        return 1;
    }
    let first = &buf[f0.range.clone()];
    let Some(s0) = Seg::parse(first) else {
        return 1;
    };
    if s0.flags != TCP_ACK {
        return 1;
    }
    let mut run = Run {
        first,
        s0,
        count: 1,
        bytes: s0.payload,
        fixed_id: None,
    };
    let headers = s0.layout.hdr_len - s0.layout.l3;
    for f in &frames[i + 1..] {
        if run.count == MAX_SEGMENTS
            || f.vni != f0.vni
            || f.vtep != f0.vtep
            || !f.csum_ok
            || f.offload.gso.is_some()
        {
            break;
        }
        let next = &buf[f.range.clone()];
        let Some(s) = Seg::parse(next) else {
            break;
        };
        if headers + run.bytes + s.payload > MAX_IP_LEN {
            break;
        }
        let Some(fixed) = run.continues(next, &s) else {
            break;
        };
        run.fixed_id = Some(fixed);
        run.count += 1;
        run.bytes += s.payload;
        if s.payload < s0.payload || s.flags & TCP_PSH != 0 {
            break;
        }
    }
    run.count
}

impl Coalescer {
    fn single(&mut self, f: &Decapped) {
        let at = self.pieces.len();
        self.pieces.push(f.range.clone());
        self.out.push(Coalesced {
            pieces: at..at + 1,
            offload: f.offload,
        });
    }

    /// Makes `run` (at least two frames [`run_length`] accepted) one
    /// super-frame: rewrites the first's headers in `buf` to describe the
    /// whole (IPv4 total length and header checksum, or IPv6 payload length;
    /// TCP flags the OR of the run's, so PSH from the last; the TCP checksum
    /// field the pseudo-header sum for the whole TCP length, as for
    /// CHECKSUM_PARTIAL) and records its pieces and its offload. False (and
    /// nothing changed) if the offload does not validate, which the checks
    /// of [`run_length`] rule out.
    fn merge(&mut self, buf: &mut [u8], run: &[Decapped]) -> bool {
        let (f0, last) = (&run[0], &run[run.len() - 1]);
        let (Some(s0), Some(sl)) = (
            Seg::parse(&buf[f0.range.clone()]),
            Seg::parse(&buf[last.range.clone()]),
        ) else {
            return false;
        };
        let l = s0.layout;
        let payload: usize = run.iter().map(|f| f.range.len() - l.hdr_len).sum();
        let total = l.hdr_len + payload;
        let gso_type = match l.ip {
            IpVersion::V4 => GSO_TCPV4,
            IpVersion::V6 => GSO_TCPV6,
        };
        // Offsets are below MAX_HEAD_LEN and the payload below 64 KiB: u16.
        let hdr = VnetHdr {
            flags: NEEDS_CSUM,
            gso_type,
            hdr_len: l.hdr_len as u16,
            gso_size: s0.payload as u16,
            csum_start: l.l4 as u16,
            csum_offset: L4Proto::Tcp.csum_offset() as u16,
            num_buffers: 0,
        };
        let offload = match Offload::parse_trusted(&hdr, &buf[f0.range.clone()], total) {
            Ok(o) if o.gso.is_some() => o,
            _ => return false,
        };
        let f = &mut buf[f0.range.clone()];
        let (l3, l4) = (l.l3, l.l4);
        match l.ip {
            IpVersion::V4 => {
                put16(f, l3 + 2, (total - l3) as u16);
                put16(f, l3 + 10, 0);
                let c = Checksum::new().add(&f[l3..l4]).finish();
                put16(f, l3 + 10, c);
            }
            IpVersion::V6 => put16(f, l3 + 4, (total - l3 - IPV6_HLEN) as u16),
        }
        f[l4 + 13] = s0.flags | sl.flags;
        let partial = match l.addresses(f) {
            Some(a) => Checksum::pseudo_header(a, L4Proto::Tcp, (total - l4) as u32).fold(),
            None => return false, // Layout::parse proved the addresses inside
        };
        put16(f, l4 + L4Proto::Tcp.csum_offset(), partial);
        let at = self.pieces.len();
        self.pieces.push(f0.range.clone());
        for f in &run[1..] {
            self.pieces.push(f.range.start + l.hdr_len..f.range.end);
        }
        self.out.push(Coalesced {
            pieces: at..self.pieces.len(),
            offload,
        });
        true
    }
}

/// Coalesces `frames` (in received order, each a range of `buf`) into
/// `c.out`: each run of segments [`run_length`] finds becomes one GSO
/// super-frame, every other frame goes alone and unchanged; order is kept.
/// Returns the segments merged into the one before them (a run of N counts
/// N - 1), so `c.out` holds `frames.len()` minus that many frames.
pub(super) fn coalesce(buf: &mut [u8], frames: &[Decapped], c: &mut Coalescer) -> u64 {
    c.pieces.clear();
    c.out.clear();
    let mut merged = 0;
    let mut i = 0;
    while i < frames.len() {
        let n = run_length(buf, frames, i);
        if n > 1 && c.merge(buf, &frames[i..i + n]) {
            merged += (n - 1) as u64;
            i += n;
        } else {
            c.single(&frames[i]);
            i += 1;
        }
    }
    merged
}

#[cfg(test)]
mod tests;
