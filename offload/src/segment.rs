//! Software GSO: one GSO frame into wire frames, as Linux segments it
//! (`skb_gso_segment` -> `inet_gso_segment`/`ipv6_gso_segment` ->
//! `tcp_gso_segment`/`__udp_gso_segment`), proved byte for byte against the
//! kernel by `tests/kernel_fixtures.rs`. Per segment `i` of `n`:
//! - Ethernet head and tags: copied unchanged.
//! - IPv4: total length of the segment, id = id + i (virtio has no FIXEDID: Linux
//!   increments unless SKB_GSO_TCP_FIXEDID, which `virtio_net_hdr_to_skb` never
//!   sets), header checksum recomputed; options copied. IPv6: payload length.
//! - TCP: sequence + i * gso_size; CWR only on the first segment; FIN and PSH
//!   only on the last; checksum computed in full.
//! - UDP (USO): length and checksum of each datagram (0 sent as 0xffff).
//!
//! A frame without GSO only gets its NEEDS_CSUM completed (virtio 1.2 §5.1.6.2).

use crate::csum::{complete_csum, Checksum};
use crate::headers::{IpVersion, L4Proto};
use crate::meta::{Gso, Offload};
use crate::OffloadError;

const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_PSH: u8 = 0x08;
const TCP_FLAG_CWR: u8 = 0x80;

/// Resolves `off` for `frame` (the whole frame) into wire frames, handing each
/// to `emit` as one contiguous slice built in `scratch`; `emit` returns false to
/// stop early (no room downstream). Returns how many were emitted.
///
/// `scratch` must hold one segment (`hdr_len + gso_size`) for a GSO frame, the
/// frame for a NEEDS_CSUM one ([`OffloadError::ScratchTooSmall`] otherwise); a
/// frame with nothing to do is emitted straight from `frame`. `off` must come
/// from [`Offload::parse`] on this frame (or be [`Offload::shifted`] along with
/// it); offsets that do not fit the frame are refused, never sliced past.
pub fn segment(
    frame: &[u8],
    off: &Offload,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]) -> bool,
) -> Result<usize, OffloadError> {
    let Some(gso) = &off.gso else {
        let Some((start, offset)) = off.csum else {
            emit(frame);
            return Ok(1);
        };
        let out = scratch
            .get_mut(..frame.len())
            .ok_or(OffloadError::ScratchTooSmall)?;
        out.copy_from_slice(frame);
        complete_csum(out, usize::from(start), usize::from(offset))?;
        emit(out);
        return Ok(1);
    };
    let hdr_len = usize::from(gso.hdr_len);
    let size = usize::from(gso.size);
    let head = frame.get(..hdr_len).ok_or(OffloadError::HeaderPastFrame)?;
    if scratch.len() < hdr_len + size {
        return Err(OffloadError::ScratchTooSmall);
    }
    check_offsets(gso, head)?;
    let payload = &frame[hdr_len..];
    let count = payload.len().div_ceil(size);
    let mut emitted = 0;
    for (i, chunk) in payload.chunks(size).enumerate() {
        let seg_len = hdr_len + chunk.len();
        let seg = &mut scratch[..seg_len];
        seg[..hdr_len].copy_from_slice(head);
        seg[hdr_len..].copy_from_slice(chunk);
        fix_ip(seg, gso, i);
        match gso.proto() {
            L4Proto::Tcp => fix_tcp(seg, gso, i, i + 1 == count),
            L4Proto::Udp => fix_udp(seg, gso),
        }
        emitted += 1;
        if !emit(seg) {
            break;
        }
    }
    Ok(emitted)
}

/// The offsets `gso` carries must fit its header block: the IP header and the
/// TCP/UDP header inside `hdr_len`, in that order (true for a fresh
/// [`Offload::parse`]; re-checked so a stale or mis-shifted one cannot slice
/// out of bounds below).
fn check_offsets(gso: &Gso, head: &[u8]) -> Result<(), OffloadError> {
    let (l3, l4) = (gso.l3(), gso.l4());
    let ip_min = match gso.ip() {
        IpVersion::V4 => 20,
        IpVersion::V6 => 40,
    };
    let l4_min = match gso.proto() {
        L4Proto::Tcp => 20,
        L4Proto::Udp => 8,
    };
    if l3 + ip_min > l4 || l4 + l4_min > head.len() {
        return Err(OffloadError::HeaderPastFrame);
    }
    Ok(())
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// IPv4: total length, id + i, header checksum; IPv6: payload length.
fn fix_ip(seg: &mut [u8], gso: &Gso, i: usize) {
    let l3 = gso.l3();
    let l4 = gso.l4();
    match gso.ip() {
        IpVersion::V4 => {
            // Segments are at most hdr_len + 64 KiB - 1 ... bounded by parse to
            // fit an IPv4 total length.
            put16(seg, l3 + 2, (seg.len() - l3) as u16);
            let id = get16(seg, l3 + 4).wrapping_add(i as u16);
            put16(seg, l3 + 4, id);
            put16(seg, l3 + 10, 0);
            let c = Checksum::new().add(&seg[l3..l4]).finish();
            put16(seg, l3 + 10, c);
        }
        IpVersion::V6 => put16(seg, l3 + 4, (seg.len() - l3 - 40) as u16),
    }
}

/// The full TCP/UDP checksum of the segment: pseudo-header, header, payload.
fn l4_checksum(seg: &[u8], gso: &Gso) -> u16 {
    let l3 = gso.l3();
    let l4 = gso.l4();
    let addresses = match gso.ip() {
        IpVersion::V4 => &seg[l3 + 12..l3 + 20],
        IpVersion::V6 => &seg[l3 + 8..l3 + 40],
    };
    let mut c = Checksum::pseudo_header(addresses, gso.proto(), (seg.len() - l4) as u32);
    c.add(&seg[l4..]);
    c.finish()
}

/// Sequence number, CWR/FIN/PSH, checksum (Linux `tcp_gso_segment`).
fn fix_tcp(seg: &mut [u8], gso: &Gso, i: usize, last: bool) {
    let l4 = gso.l4();
    let seq = u32::from_be_bytes([seg[l4 + 4], seg[l4 + 5], seg[l4 + 6], seg[l4 + 7]]);
    let seq = seq.wrapping_add((i as u32).wrapping_mul(u32::from(gso.size)));
    seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
    if i > 0 {
        seg[l4 + 13] &= !TCP_FLAG_CWR;
    }
    if !last {
        seg[l4 + 13] &= !(TCP_FLAG_FIN | TCP_FLAG_PSH);
    }
    put16(seg, l4 + 16, 0);
    let c = l4_checksum(seg, gso);
    put16(seg, l4 + 16, c);
}

/// Length and checksum of each datagram (Linux `__udp_gso_segment`).
fn fix_udp(seg: &mut [u8], gso: &Gso) {
    let l4 = gso.l4();
    put16(seg, l4 + 4, (seg.len() - l4) as u16);
    put16(seg, l4 + 6, 0);
    let c = l4_checksum(seg, gso);
    put16(seg, l4 + 6, if c == 0 { 0xffff } else { c });
}
