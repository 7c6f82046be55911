//! A received frame still in the sender's guest memory, as the buffers its TX
//! descriptor chain points at, minus the virtio-net header. Receivers copy from
//! here straight into their own buffers: one copy per delivery.
//!
//! The buffers are kept as `VolatileSlice`s: each guest address is translated to
//! a host mapping once, when the chain is validated, not again per access.

use vm_memory::VolatileSlice;

/// Descriptors a TX chain may have. Linux sends at most MAX_SKB_FRAGS + 2 (19);
/// anything longer is treated as malformed rather than buffered.
pub(crate) const MAX_SEGMENTS: usize = 64;

pub(crate) struct FrameSource<'a, 'm> {
    segments: &'a [VolatileSlice<'m>],
    /// Bytes of `segments` before the frame starts (the virtio-net header).
    start: usize,
    len: usize,
}

impl<'a, 'm> FrameSource<'a, 'm> {
    /// `segments` were validated against guest memory (see `net::tx`).
    pub fn new(segments: &'a [VolatileSlice<'m>], start: usize) -> FrameSource<'a, 'm> {
        let total: usize = segments.iter().map(|s| s.len()).sum();
        FrameSource {
            segments,
            start,
            len: total.saturating_sub(start),
        }
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
        let mut n = 0;
        self.for_each_slice(0, |slice| {
            let want = (buf.len() - n).min(slice.len());
            n += slice.copy_to(&mut buf[n..n + want]);
            n < buf.len()
        });
        n
    }
}
