//! A received frame still in the sender's guest memory, as the buffers its TX
//! descriptor chain points at, minus the virtio-net header. Receivers copy from
//! here straight into their own buffers: one copy per delivery.
//!
//! The buffers are kept as `VolatileSlice`s: each guest address is translated to
//! a host mapping once, when the chain is validated, not again per access.
//!
//! The virtio-net header in front of the frame is parsed and validated once,
//! here ([`FrameSource::with_header`]); the frame carries the resulting
//! [`Offload`] through the switch.

use super::offload::{parse_header, HeaderFrom};
use super::HDR_LEN;
use fabric_offload::{Accepts, Offload, MAX_HEAD_LEN};
use vm_memory::VolatileSlice;
use vswitch::DropReason;

/// Descriptors a TX chain may have. Linux sends at most MAX_SKB_FRAGS + 2 (19);
/// anything longer is treated as malformed rather than buffered.
pub(crate) const MAX_SEGMENTS: usize = 64;

pub(crate) struct FrameSource<'a, 'm> {
    segments: &'a [VolatileSlice<'m>],
    /// Bytes of `segments` before the frame starts (the virtio-net header).
    start: usize,
    len: usize,
    /// What the virtio-net header asked for, validated against the frame.
    offload: Offload,
}

impl<'a, 'm> FrameSource<'a, 'm> {
    /// `segments` were validated against guest memory (see `net::tx`).
    pub fn new(segments: &'a [VolatileSlice<'m>], start: usize) -> FrameSource<'a, 'm> {
        let total: usize = segments.iter().map(|s| s.len()).sum();
        FrameSource {
            segments,
            start,
            len: total.saturating_sub(start),
            offload: Offload::NONE,
        }
    }

    /// A frame with no header in front whose offload its port driver
    /// established (a tunnel's partial inner checksum).
    pub fn with_offload(
        segments: &'a [VolatileSlice<'m>],
        offload: Offload,
    ) -> FrameSource<'a, 'm> {
        FrameSource {
            offload,
            ..FrameSource::new(segments, 0)
        }
    }

    /// A frame behind a 12-byte virtio-net header (a guest's TX chain, a TAP
    /// read): the header is parsed and checked against the frame once, here.
    /// A header asking for an offload outside `allowed` (what the port
    /// negotiated) or with bad metadata drops the frame, with its reason.
    pub fn with_header(
        segments: &'a [VolatileSlice<'m>],
        allowed: Accepts,
        from: HeaderFrom,
    ) -> Result<FrameSource<'a, 'm>, DropReason> {
        let mut frame = FrameSource::new(segments, HDR_LEN);
        // The header and the frame's first bytes in one copy: a driver
        // places them on neighbouring cache lines (DPDK: the header ends
        // where the mbuf's data starts), which a later look at the frame's
        // head (switching) reads anyway. One copy waits for both lines at
        // once instead of one after the other.
        let mut first = [0u8; HDR_LEN + 64];
        if frame.copy_out(0, &mut first) < HDR_LEN {
            return Err(DropReason::BadDescriptor);
        }
        let mut hdr = [0u8; HDR_LEN];
        hdr.copy_from_slice(&first[..HDR_LEN]);
        // A header asking for nothing (all but num_buffers zero: the common
        // case) is a complete frame: nothing to parse, no head to copy.
        if hdr[..10] == [0; 10] {
            return Ok(frame);
        }
        let mut head = [0u8; MAX_HEAD_LEN];
        let n = frame.read_head(&mut head);
        frame.offload = parse_header(&hdr, &head[..n], frame.len, allowed, from)?;
        Ok(frame)
    }

    /// The offload the frame carries ([`Offload::NONE`] for a complete frame).
    pub fn offload(&self) -> &Offload {
        &self.offload
    }

    /// Frame length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Calls `f` with each piece of the frame from byte `offset` on, in order.
    /// Stops early (returning false) if `f` does.
    pub fn for_each_slice(
        &self,
        offset: usize,
        mut f: impl FnMut(VolatileSlice<'m>) -> bool,
    ) -> bool {
        let mut skip = self.start + offset;
        for seg in self.segments {
            if skip >= seg.len() {
                skip -= seg.len();
                continue;
            }
            let Ok(rest) = seg.offset(skip) else {
                return false;
            };
            skip = 0;
            if !f(rest) {
                return false;
            }
        }
        true
    }

    /// Copies the first bytes of the frame into `buf`; returns how many.
    pub fn read_head(&self, buf: &mut [u8]) -> usize {
        self.copy_out(self.start, buf)
    }

    /// Copies the buffers' bytes from `from` on (the header included: the
    /// frame starts at `self.start`) into `buf`; returns how many.
    fn copy_out(&self, from: usize, buf: &mut [u8]) -> usize {
        let mut n = 0;
        let mut skip = from;
        for seg in self.segments {
            if n == buf.len() {
                break;
            }
            if skip >= seg.len() {
                skip -= seg.len();
                continue;
            }
            let Ok(rest) = seg.offset(skip) else {
                break;
            };
            skip = 0;
            let want = (buf.len() - n).min(rest.len());
            n += rest.copy_to(&mut buf[n..n + want]);
        }
        n
    }

    /// Copies the whole frame from byte `offset` on into `buf`; returns how
    /// many bytes (fewer if `buf` is shorter).
    pub fn copy_from(&self, offset: usize, buf: &mut [u8]) -> usize {
        self.copy_out(self.start + offset, buf)
    }
}
