//! One virtio-blk request (virtio 1.x §5.2.6), validated once at the
//! boundary: everything the driver controls is checked here, and what comes
//! out is either a [`Request`] the datapath can run as is, a status to
//! report at once, or a chain to drop.
//!
//! Layout of a request: a 16-byte header (`type u32, reserved u32, sector
//! u64`, device-readable), data (device-readable for writes, discards and
//! write-zeroes; device-writable for reads and GET_ID), and a last
//! device-writable byte for the status. The device must not assume any
//! particular framing (§5.2.6.4), so the header, data and status may be
//! split across or share descriptors in any way; readable buffers must all
//! come before writable ones (§2.7.4.2).

use crate::dirty_log::LogBatch;
use crate::split_ring::{ChainError, RingView};
use vm_memory::{Bytes, VolatileSlice};

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Bytes of the serial GET_ID returns (`VIRTIO_BLK_ID_BYTES`).
pub const ID_BYTES: usize = 20;
const HEADER_LEN: usize = 16;
/// `virtio_blk_discard_write_zeroes`: sector u64, num_sectors u32, flags u32.
const SEGMENT_LEN: usize = 16;
pub const SECTOR: u64 = 512;
/// Most buffers one request may have (a chain longer than the queue is a
/// loop and is refused by the ring walk anyway).
pub const MAX_BUFFERS: usize = 1024;
/// Most data bytes of one read or write (the engine's limit; why 4 MiB: see
/// [`vblock::engine::MAX_REQUEST_BYTES`]).
pub const MAX_REQUEST_BYTES: u64 = vblock::engine::MAX_REQUEST_BYTES;

/// `(seg_max, size_max)` to advertise for a queue of `queue_size`: a
/// conforming driver sends at most `seg_max` data segments of at most
/// `size_max` bytes each, so never more than [`MAX_REQUEST_BYTES`].
/// `size_max` is a power of two, at least 4 KiB (one page per segment).
pub fn segment_limits(queue_size: u16) -> (u32, u32) {
    // Header and status take a descriptor each.
    let seg_max = u32::from(queue_size).saturating_sub(2).clamp(1, 1024);
    let per_seg = (MAX_REQUEST_BYTES / u64::from(seg_max)).max(4096);
    let size_max = 1u64 << (u64::BITS - 1 - per_seg.leading_zeros());
    let seg_max = seg_max.min((MAX_REQUEST_BYTES / size_max) as u32);
    (seg_max, size_max as u32)
}

/// What a valid request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read `len` bytes at byte `offset` into `data`.
    Read {
        offset: u64,
        len: u64,
    },
    /// Write `len` bytes from `data` at byte `offset`.
    Write {
        offset: u64,
        len: u64,
    },
    Flush,
    /// Write the serial into the first `len` bytes of `data`.
    GetId {
        len: usize,
    },
    /// Discard or write-zeroes of byte range `[offset, offset + len)`.
    Zero {
        offset: u64,
        len: u64,
        discard: bool,
    },
}

/// A validated request: where its data and status live in host memory.
#[derive(Debug)]
pub struct Request {
    pub op: Op,
    /// The data buffers (guest memory, host addresses), in order.
    pub data: Vec<libc::iovec>,
    /// Where the device writes data into guest memory (reads, GET_ID), as
    /// (guest physical address, length) per buffer of `data`: what the
    /// dirty log marks. Empty for requests that only read guest memory.
    pub written: Vec<(u64, u64)>,
    /// The status byte.
    pub status: StatusByte,
    /// Used length to report: device-writable bytes written, status included.
    pub used_len: u32,
}

/// A chain's status byte: where the device writes it, in host memory, and
/// its guest physical address (for the dirty log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusByte {
    pub ptr: *mut u8,
    pub gpa: u64,
}

impl StatusByte {
    /// Writes `code` (volatile: the guest may touch it too, harming only
    /// itself) and marks it in the dirty log.
    ///
    /// # Safety
    /// The guest memory the request was parsed from must still be mapped
    /// (the caller holds its `Arc`), and the chain not yet returned.
    pub unsafe fn write(&self, code: u8, log: &LogBatch<'_>) {
        // SAFETY: the last byte of the chain's last device-writable buffer,
        // found by the parse inside guest memory the caller keeps mapped.
        unsafe { self.ptr.write_volatile(code) };
        log.mark(self.gpa, 1);
    }
}

// SAFETY: the pointers describe guest memory that the caller keeps mapped
// (it holds the memory map's Arc) while the request lives.
unsafe impl Send for Request {}

/// How a chain that is not a valid request ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The chain has a status byte: report this status there, used length 1.
    Status { status: StatusByte, code: u8 },
    /// No usable status byte (or the chain itself is broken): return the
    /// chain with used length 0 and count it.
    Drop(ChainError),
    /// A read or write of more than [`Limits::max_request`] bytes: IOERR,
    /// counted apart (a driver ignoring SIZE_MAX/SEG_MAX).
    TooLarge { status: StatusByte },
}

/// Limits of the device the request is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Capacity in bytes (a multiple of 512).
    pub capacity: u64,
    pub read_only: bool,
    /// Largest discard / write-zeroes, in sectors.
    pub max_zero_sectors: u32,
    /// Largest read or write, in bytes.
    pub max_request: u64,
}

struct Buffer<'m> {
    slice: VolatileSlice<'m>,
    writable: bool,
    gpa: u64,
}

fn iovec(s: &VolatileSlice<'_>) -> libc::iovec {
    libc::iovec {
        iov_base: s.ptr_guard_mut().as_ptr().cast(),
        iov_len: s.len(),
    }
}

/// Splits `buffers` into the byte range `[from, to)` of their
/// concatenation: each piece and its guest address.
fn range<'m>(
    buffers: &[Buffer<'m>],
    mut from: usize,
    mut to: usize,
) -> Vec<(VolatileSlice<'m>, u64)> {
    let mut out = Vec::new();
    for b in buffers {
        let len = b.slice.len();
        if to == 0 {
            break;
        }
        if from < len {
            let end = to.min(len);
            if let Ok(s) = b.slice.subslice(from, end - from) {
                if !s.is_empty() {
                    out.push((s, b.gpa + from as u64));
                }
            }
        }
        from = from.saturating_sub(len);
        to = to.saturating_sub(len);
    }
    out
}

/// Copies the first `out.len()` bytes of `slices` into `out`.
fn read_bytes(slices: &[(VolatileSlice<'_>, u64)], out: &mut [u8]) -> bool {
    let mut pos = 0;
    for (s, _) in slices {
        if pos == out.len() {
            break;
        }
        let n = (out.len() - pos).min(s.len());
        if s.read_slice(&mut out[pos..pos + n], 0).is_err() {
            return false;
        }
        pos += n;
    }
    pos == out.len()
}

/// Parses the chain at `head`.
pub fn parse(ring: &RingView<'_>, head: u16, limits: &Limits) -> Result<Request, Rejected> {
    let mut buffers: Vec<Buffer<'_>> = Vec::new();
    let mut order_ok = true;
    let walked = ring.walk(head, |slice, writable, gpa| {
        if buffers.len() == MAX_BUFFERS {
            return false;
        }
        if !writable && buffers.last().is_some_and(|b| b.writable) {
            order_ok = false; // readable after writable (§2.7.4.2)
        }
        buffers.push(Buffer {
            slice,
            writable,
            gpa,
        });
        true
    });
    if let Err(e) = walked {
        return Err(Rejected::Drop(e));
    }
    let readable: usize = buffers
        .iter()
        .filter(|b| !b.writable)
        .map(|b| b.slice.len())
        .sum();
    let writable: usize = buffers
        .iter()
        .filter(|b| b.writable)
        .map(|b| b.slice.len())
        .sum();
    // The status is the last byte of the last buffer, which must be writable.
    let status = match buffers.last() {
        Some(b) if b.writable && !b.slice.is_empty() => {
            let last = b.slice.len() - 1;
            StatusByte {
                ptr: b
                    .slice
                    .subslice(last, 1)
                    .map(|s| s.ptr_guard_mut().as_ptr())
                    .map_err(|_| Rejected::Drop(ChainError::BadBuffer))?,
                gpa: b.gpa + last as u64,
            }
        }
        _ => return Err(Rejected::Drop(ChainError::Rejected)),
    };
    let fail = |code| Err(Rejected::Status { status, code });
    if !order_ok || readable < HEADER_LEN {
        return fail(VIRTIO_BLK_S_IOERR);
    }
    let (read_part, write_part) =
        buffers.split_at(buffers.iter().take_while(|b| !b.writable).count());
    let mut header = [0u8; HEADER_LEN];
    if !read_bytes(&range(read_part, 0, HEADER_LEN), &mut header) {
        return fail(VIRTIO_BLK_S_IOERR);
    }
    let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let data_in = readable - HEADER_LEN; // driver -> device bytes after the header
    let data_out = writable - 1; // device -> driver bytes before the status
    let in_range = |offset: u64, len: u64| {
        offset
            .checked_add(len)
            .is_some_and(|e| e <= limits.capacity)
    };
    // `device_writes`: the data buffers are the device's to write.
    let request = |op, data: Vec<(VolatileSlice<'_>, u64)>, device_writes: bool, used: usize| {
        let written = match device_writes {
            true => data.iter().map(|(s, gpa)| (*gpa, s.len() as u64)).collect(),
            false => Vec::new(),
        };
        Ok(Request {
            op,
            data: data.iter().map(|(s, _)| iovec(s)).collect(),
            written,
            status,
            used_len: used as u32 + 1,
        })
    };
    match kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let write = kind == VIRTIO_BLK_T_OUT;
            let (len, extra) = if write {
                (data_in, data_out)
            } else {
                (data_out, data_in)
            };
            let len = len as u64;
            let Some(offset) = sector.checked_mul(SECTOR) else {
                return fail(VIRTIO_BLK_S_IOERR);
            };
            // Data in sectors; nothing in the other direction; inside the disk.
            if extra != 0 || !len.is_multiple_of(SECTOR) || !in_range(offset, len) {
                return fail(VIRTIO_BLK_S_IOERR);
            }
            if write && limits.read_only {
                return fail(VIRTIO_BLK_S_IOERR);
            }
            if len > limits.max_request {
                return Err(Rejected::TooLarge { status });
            }
            if write {
                let data = range(read_part, HEADER_LEN, readable);
                request(Op::Write { offset, len }, data, false, 0)
            } else {
                let data = range(write_part, 0, data_out);
                request(Op::Read { offset, len }, data, true, data_out)
            }
        }
        VIRTIO_BLK_T_FLUSH => request(Op::Flush, Vec::new(), false, 0),
        VIRTIO_BLK_T_GET_ID => {
            let n = data_out.min(ID_BYTES);
            let data = range(write_part, 0, n);
            request(Op::GetId { len: n }, data, true, n)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if limits.read_only {
                return fail(VIRTIO_BLK_S_IOERR);
            }
            // One segment (max_discard_seg = max_write_zeroes_seg = 1).
            if data_in != SEGMENT_LEN || data_out != 0 {
                return fail(VIRTIO_BLK_S_IOERR);
            }
            let mut seg = [0u8; SEGMENT_LEN];
            if !read_bytes(&range(read_part, HEADER_LEN, readable), &mut seg) {
                return fail(VIRTIO_BLK_S_IOERR);
            }
            let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
            let sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
            let discard = kind == VIRTIO_BLK_T_DISCARD;
            // §5.2.6.2: discard has no flags; write-zeroes only UNMAP (bit 0).
            let allowed = if discard { 0 } else { 1 };
            let Some(offset) = sector.checked_mul(SECTOR) else {
                return fail(VIRTIO_BLK_S_IOERR);
            };
            let len = u64::from(sectors) * SECTOR;
            if flags & !allowed != 0 {
                return fail(VIRTIO_BLK_S_UNSUPP);
            }
            if sectors == 0 || sectors > limits.max_zero_sectors || !in_range(offset, len) {
                return fail(VIRTIO_BLK_S_IOERR);
            }
            request(
                Op::Zero {
                    offset,
                    len,
                    discard,
                },
                Vec::new(),
                false,
                0,
            )
        }
        _ => fail(VIRTIO_BLK_S_UNSUPP),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split_ring::testing::{Chain, TestRing};

    const LIMITS: Limits = Limits {
        capacity: 1 << 20,
        read_only: false,
        max_zero_sectors: 1 << 16,
        max_request: 64 * 1024,
    };

    fn header(kind: u32, sector: u64) -> Vec<u8> {
        let mut h = vec![0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        h
    }

    fn status_of(r: Result<Request, Rejected>) -> u8 {
        match r {
            Ok(_) => VIRTIO_BLK_S_OK,
            Err(Rejected::Status { code, .. }) => code,
            Err(Rejected::Drop(_)) => 0xff,
            Err(Rejected::TooLarge { .. }) => 0xfe,
        }
    }

    #[test]
    fn read_write_and_framing() {
        let t = TestRing::new();
        // Header and data in one readable buffer, status alone.
        let mut hdr_and_data = header(VIRTIO_BLK_T_OUT, 2);
        hdr_and_data.extend_from_slice(&[7u8; 1024]);
        let head = t.chain(&[Chain::read(&hdr_and_data), Chain::write(1)]);
        let r = parse(&t.view(), head, &LIMITS).unwrap();
        assert_eq!(
            r.op,
            Op::Write {
                offset: 1024,
                len: 1024
            }
        );
        assert_eq!(r.data.iter().map(|v| v.iov_len).sum::<usize>(), 1024);
        assert_eq!(r.used_len, 1);
        // Read: header split over two buffers, data and status in one buffer.
        let h = header(VIRTIO_BLK_T_IN, 0);
        let head = t.chain(&[
            Chain::read(&h[..5]),
            Chain::read(&h[5..]),
            Chain::write(4097),
        ]);
        let r = parse(&t.view(), head, &LIMITS).unwrap();
        assert_eq!(
            r.op,
            Op::Read {
                offset: 0,
                len: 4096
            }
        );
        assert_eq!(r.used_len, 4097);
    }

    #[test]
    fn every_driver_mistake_is_refused() {
        let t = TestRing::new();
        let v = |chain: &[Chain]| status_of(parse(&t.view(), t.chain(chain), &LIMITS));
        let out = |sector: u64, len: usize| {
            let mut b = header(VIRTIO_BLK_T_OUT, sector);
            b.extend(std::iter::repeat_n(1u8, len));
            b
        };
        // No status byte: dropped.
        assert_eq!(v(&[Chain::read(&out(0, 512))]), 0xff);
        // Short header.
        assert_eq!(
            v(&[Chain::read(&[0u8; 8]), Chain::write(1)]),
            VIRTIO_BLK_S_IOERR
        );
        // Not whole sectors; beyond the end; overflowing sector.
        assert_eq!(
            v(&[Chain::read(&out(0, 100)), Chain::write(1)]),
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            v(&[Chain::read(&out(2047, 1024)), Chain::write(1)]),
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            v(&[Chain::read(&out(u64::MAX / 256, 512)), Chain::write(1)]),
            VIRTIO_BLK_S_IOERR
        );
        // Writable data on a write; readable after writable.
        assert_eq!(
            v(&[Chain::read(&out(0, 512)), Chain::write(513)]),
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            v(&[
                Chain::read(&header(VIRTIO_BLK_T_IN, 0)),
                Chain::write(512),
                Chain::read(&[0; 4]),
                Chain::write(1)
            ]),
            VIRTIO_BLK_S_IOERR
        );
        // Unknown type.
        assert_eq!(
            v(&[Chain::read(&header(99, 0)), Chain::write(1)]),
            VIRTIO_BLK_S_UNSUPP
        );
        // Read-only device: writes and discards fail.
        let ro = Limits {
            read_only: true,
            ..LIMITS
        };
        let head = t.chain(&[Chain::read(&out(0, 512)), Chain::write(1)]);
        assert_eq!(status_of(parse(&t.view(), head, &ro)), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn requests_above_the_limit_are_too_large() {
        let t = TestRing::new();
        let at_limit = LIMITS.max_request as usize;
        let mut out = header(VIRTIO_BLK_T_OUT, 0);
        out.extend(std::iter::repeat_n(3u8, at_limit));
        let head = t.chain(&[Chain::read(&out), Chain::write(1)]);
        assert!(parse(&t.view(), head, &LIMITS).is_ok());
        out.extend_from_slice(&[3u8; 512]);
        let head = t.chain(&[Chain::read(&out), Chain::write(1)]);
        assert!(matches!(
            parse(&t.view(), head, &LIMITS),
            Err(Rejected::TooLarge { .. })
        ));
        let head = t.chain(&[
            Chain::read(&header(VIRTIO_BLK_T_IN, 0)),
            Chain::write(at_limit + 512 + 1),
        ]);
        assert!(matches!(
            parse(&t.view(), head, &LIMITS),
            Err(Rejected::TooLarge { .. })
        ));
    }

    #[test]
    fn advertised_segments_never_exceed_the_limit() {
        for qs in [1u16, 2, 3, 4, 64, 128, 130, 256, 1024, 32768] {
            let (seg_max, size_max) = segment_limits(qs);
            assert!(seg_max >= 1 && size_max >= 4096, "queue {qs}");
            assert!(size_max.is_power_of_two(), "queue {qs}");
            assert!(
                u64::from(seg_max) * u64::from(size_max) <= MAX_REQUEST_BYTES,
                "queue {qs}: {seg_max} x {size_max}"
            );
            assert!(seg_max <= u32::from(qs.max(3)) - 2, "queue {qs}");
        }
        // A queue of 256 allows 254 segments of 16 KiB (3.97 MiB).
        assert_eq!(segment_limits(256), (254, 16384));
    }

    #[test]
    fn discard_and_write_zeroes_segments() {
        let t = TestRing::new();
        let seg = |kind, sector: u64, n: u32, flags: u32| {
            let mut b = header(kind, 0);
            b.extend_from_slice(&sector.to_le_bytes());
            b.extend_from_slice(&n.to_le_bytes());
            b.extend_from_slice(&flags.to_le_bytes());
            b
        };
        let p = |b: Vec<u8>| {
            parse(
                &t.view(),
                t.chain(&[Chain::read(&b), Chain::write(1)]),
                &LIMITS,
            )
        };
        assert_eq!(
            p(seg(VIRTIO_BLK_T_DISCARD, 8, 16, 0)).unwrap().op,
            Op::Zero {
                offset: 4096,
                len: 8192,
                discard: true
            }
        );
        assert_eq!(
            p(seg(VIRTIO_BLK_T_WRITE_ZEROES, 0, 1, 1)).unwrap().op,
            Op::Zero {
                offset: 0,
                len: 512,
                discard: false
            }
        );
        assert_eq!(
            status_of(p(seg(VIRTIO_BLK_T_DISCARD, 0, 1, 1))),
            VIRTIO_BLK_S_UNSUPP
        );
        assert_eq!(
            status_of(p(seg(VIRTIO_BLK_T_DISCARD, 0, 0, 0))),
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            status_of(p(seg(VIRTIO_BLK_T_DISCARD, 2047, 2, 0))),
            VIRTIO_BLK_S_IOERR
        );
        let mut two = seg(VIRTIO_BLK_T_DISCARD, 0, 1, 0);
        two.extend_from_within(16..32);
        assert_eq!(status_of(p(two)), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn get_id_and_flush() {
        let t = TestRing::new();
        let head = t.chain(&[
            Chain::read(&header(VIRTIO_BLK_T_GET_ID, 0)),
            Chain::write(21),
        ]);
        let r = parse(&t.view(), head, &LIMITS).unwrap();
        assert_eq!(r.op, Op::GetId { len: 20 });
        assert_eq!(r.used_len, 21);
        let head = t.chain(&[Chain::read(&header(VIRTIO_BLK_T_FLUSH, 0)), Chain::write(1)]);
        assert_eq!(parse(&t.view(), head, &LIMITS).unwrap().op, Op::Flush);
    }
}
