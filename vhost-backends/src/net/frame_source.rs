//! A received frame still in the sender's guest memory, as the list of buffers
//! its TX descriptor chain points at, minus the virtio-net header. Receivers copy
//! from here straight into their own buffers: one copy per delivery.

use crate::GuestMem;
use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};

/// Descriptors a TX chain may have. Linux sends at most MAX_SKB_FRAGS + 2 (19);
/// anything longer is treated as malformed rather than buffered.
pub const MAX_SEGMENTS: usize = 64;

/// A guest buffer: address and length, validated against the memory map.
#[derive(Clone, Copy, Debug, Default)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
}

pub struct FrameSource<'a> {
    mem: &'a GuestMem,
    segments: &'a [Segment],
    /// Bytes of `segments` before the frame starts (the virtio-net header).
    start: usize,
    len: usize,
}

impl<'a> FrameSource<'a> {
    /// `segments` must already be validated (see `tx::gather`).
    pub fn new(mem: &'a GuestMem, segments: &'a [Segment], start: usize) -> FrameSource<'a> {
        let total: usize = segments.iter().map(|s| s.len as usize).sum();
        FrameSource {
            mem,
            segments,
            start,
            len: total.saturating_sub(start),
        }
    }

    /// Frame length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f` with each piece of the frame from byte `offset` on, in order.
    /// Stops early (returning false) if `f` does or memory is not accessible.
    pub fn for_each_slice(
        &self,
        offset: usize,
        mut f: impl FnMut(VolatileSlice<'_>) -> bool,
    ) -> bool {
        let mut skip = self.start + offset;
        for seg in self.segments {
            let len = seg.len as usize;
            if skip >= len {
                skip -= len;
                continue;
            }
            let Ok(slice) = self
                .mem
                .get_slice(GuestAddress(seg.addr + skip as u64), len - skip)
            else {
                return false;
            };
            skip = 0;
            if !f(slice) {
                return false;
            }
        }
        true
    }

    /// Copies the first bytes of the frame into `buf`; returns how many.
    pub fn read_head(&self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        self.for_each_slice(0, |slice| {
            let want = (buf.len() - n).min(slice.len());
            n += slice.copy_to(&mut buf[n..n + want]);
            n < buf.len()
        });
        n
    }

    /// Copies the frame from `offset` into a plain buffer (TAP, VXLAN, tests).
    pub fn copy_into(&self, offset: usize, out: &mut Vec<u8>) {
        self.for_each_slice(offset, |slice| {
            let at = out.len();
            out.resize(at + slice.len(), 0);
            slice.copy_to(&mut out[at..]);
            true
        });
    }
}
