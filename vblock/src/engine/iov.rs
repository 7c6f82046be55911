//! Caller memory as iovecs: alignment, slicing, copies and zero-fill.

/// Alignment of caller buffers that can go to O_DIRECT I/O without a bounce.
pub const IO_ALIGN: usize = 512;

/// Whether the kernel can take every iovec as is (no bounce).
pub(super) fn aligned(iov: &[libc::iovec]) -> bool {
    iov.iter().all(|v| {
        (v.iov_base as usize).is_multiple_of(IO_ALIGN) && v.iov_len.is_multiple_of(IO_ALIGN)
    })
}

/// The part `[at, at + len)` of the memory `iov` describes.
pub(super) fn slice_iov(iov: &[libc::iovec], mut at: usize, mut len: usize) -> Vec<libc::iovec> {
    let mut out = Vec::new();
    for v in iov {
        if len == 0 {
            break;
        }
        if at >= v.iov_len {
            at -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - at).min(len);
        out.push(libc::iovec {
            // SAFETY: pointer arithmetic only, nothing is read: `at < iov_len`,
            // so the result stays inside the region this iovec describes.
            iov_base: unsafe { (v.iov_base as *mut u8).add(at) }.cast(),
            iov_len: n,
        });
        len -= n;
        at = 0;
    }
    out
}

/// Copies between caller memory described by `iov` and `buf`.
///
/// # Safety
/// `iov` must describe valid memory (the `submit` contract).
pub(super) unsafe fn copy_iov(iov: &[libc::iovec], buf: &mut [u8], to_iov: bool) {
    let mut pos = 0;
    for v in iov {
        let n = v.iov_len.min(buf.len() - pos);
        let p = v.iov_base as *mut u8;
        // SAFETY: `n` is at most `iov_len`, and the caller guarantees the
        // iovec's memory is valid (writable when `to_iov`) and touched by no one
        // else while the request is in flight; `n <= buf.len() - pos` keeps the
        // other side inside `buf`. `buf` is the engine's own bounce buffer, a
        // separate allocation from caller memory, so the two never overlap.
        unsafe {
            if to_iov {
                std::ptr::copy_nonoverlapping(buf[pos..].as_ptr(), p, n);
            } else {
                std::ptr::copy_nonoverlapping(p, buf[pos..].as_mut_ptr(), n);
            }
        }
        pos += n;
    }
}

/// Zero-fills caller memory.
///
/// # Safety
/// As [`copy_iov`].
pub(super) unsafe fn zero_iov(iov: &[libc::iovec]) {
    for v in iov {
        // SAFETY: the caller guarantees each iovec describes `iov_len` bytes of
        // writable memory that nothing else accesses until the request completes.
        unsafe { std::ptr::write_bytes(v.iov_base as *mut u8, 0, v.iov_len) };
    }
}
