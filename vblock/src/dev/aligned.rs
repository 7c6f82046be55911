//! A zeroed heap buffer aligned for `O_DIRECT`.

use std::alloc::{self, Layout};
use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use super::DIRECT_ALIGN;

/// Heap buffer whose start is [`DIRECT_ALIGN`]-aligned, zeroed on creation,
/// usable as `[u8]`.
///
/// The allocation is always a whole number of 4 KiB blocks (at least one), so
/// an empty buffer needs no special case; `len()` is what was asked for.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    ///
    /// Panics on capacity overflow (like `Vec::with_capacity`); use
    /// [`try_new`](Self::try_new) for a length from outside.
    pub fn new(len: usize) -> Self {
        match Self::try_new(len) {
            Ok(buf) => buf,
            Err(e) => panic!("{e}"),
        }
    }

    /// A zeroed buffer of `len` bytes, or `OutOfMemory` if `len` cannot be
    /// allocated.
    pub fn try_new(len: usize) -> io::Result<Self> {
        let too_big = || {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("aligned buffer of {len} bytes is too large"),
            )
        };
        let size = len
            .max(1)
            .checked_next_multiple_of(DIRECT_ALIGN)
            .ok_or_else(too_big)?;
        let layout = Layout::from_size_align(size, DIRECT_ALIGN).map_err(|_| too_big())?;
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Ok(AlignedBuf { ptr, len, layout })
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut buf = Self::new(data.len());
        buf.copy_from_slice(data);
        buf
    }

    /// An iovec for `len` bytes from `offset`, for I/O the kernel performs into
    /// or out of this buffer (io_uring). Built from the owning pointer, not from
    /// a reference, so the kernel writing into it does not alias a `&[u8]`; the
    /// buffer must outlive the I/O. Panics if the range is outside the buffer.
    pub fn iovec(&self, offset: usize, len: usize) -> libc::iovec {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "iovec outside the buffer"
        );
        libc::iovec {
            // SAFETY: offset is within the allocation (checked above).
            iov_base: unsafe { self.ptr.as_ptr().add(offset) }.cast(),
            iov_len: len,
        }
    }

    /// Whether `ptr` meets the [`DIRECT_ALIGN`] requirement (true for every
    /// `AlignedBuf`, sometimes for other buffers).
    pub fn is_aligned(ptr: *const u8) -> bool {
        (ptr as usize).is_multiple_of(DIRECT_ALIGN)
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() >= len initialised (zeroed) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in try_new with this exact layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_sized() {
        for len in [0, 1, 512, 4095, 4096, 4097, 65536] {
            let mut buf = AlignedBuf::new(len);
            assert_eq!(buf.len(), len);
            assert!(AlignedBuf::is_aligned(buf.as_ptr()));
            assert!(buf.iter().all(|&b| b == 0));
            buf.fill(0xab);
            let copy = buf.clone();
            assert_eq!(&copy[..], &buf[..]);
            assert!(AlignedBuf::is_aligned(copy.as_ptr()));
        }
    }

    #[test]
    fn huge_length_is_an_error_not_a_panic() {
        let err = AlignedBuf::try_new(usize::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::OutOfMemory);
    }
}
