//! [`BlkClient`]: a vhost-user-blk client (libblkio's `virtio-blk-vhost-user`
//! driver) with per-queue synchronous helpers and a raw submit/wait API.
//!
//! How libblkio works, as this file relies on it (blkio 0.5):
//! - `Blkio::new("virtio-blk-vhost-user")`, set `path` (and `read-only`,
//!   which can only be set *before* `connect()`), `connect()` does the
//!   vhost-user handshake (it needs the backend's REPLY_ACK, CONFIG and
//!   CONFIGURE_MEM_SLOTS protocol features). Then `num-queues` and
//!   `queue-size` are set and `start()` creates the virtqueues.
//! - A device that offers VIRTIO_BLK_F_RO makes `start()` fail with EROFS
//!   unless `read-only` was set: that is how an export's read-only flag
//!   shows. [`BlkClient::connect`] then reconnects read-only.
//! - Request buffers must lie in memory regions the backend has mapped:
//!   `alloc_mem_region` (a memfd) + `map_mem_region` after `start()`. Each
//!   [`BlkQueue`] owns one region and copies user data through it.
//! - Requests are queued by `Blkioq::{read,write,flush,discard,write_zeroes}`
//!   and only sent (kick) by `do_io`, which then waits for
//!   `min_completions` (blocking on the queue's completion eventfd, with a
//!   timeout). `ret` is 0, or `-EIO` for VIRTIO_BLK_S_IOERR, `-ENOTSUP` for
//!   VIRTIO_BLK_S_UNSUPP, `-EPROTO` for any other status; requests that
//!   blkio refuses itself complete with `-EINVAL` (offset not 512-aligned),
//!   `-EBADF` ("device is read-only": a write on a read-only connection
//!   never reaches the device) or `-ENOTSUP` (feature not negotiated).
//! - The queues must be dropped before the `Blkio` (they point into its
//!   vring mapping): [`BlkClient`] keeps them in that order.

use std::ffi::CStr;
use std::fmt;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, Errno, MemoryRegion, ReqFlags};

/// libblkio's driver name for a vhost-user-blk socket.
pub const DRIVER: &str = "virtio-blk-vhost-user";

/// How to connect; [`ConnectOptions::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub num_queues: usize,
    /// Virtqueue size (power of two).
    pub queue_size: u32,
    /// `None`: follow the device (read-only iff it offers VIRTIO_BLK_F_RO).
    /// `Some(false)` on a read-only device fails with [`BlkError::ReadOnly`].
    pub read_only: Option<bool>,
    /// Bytes of request buffer per queue (the largest single chunk and the
    /// room for the requests of [`crate::blkio::run_io`]).
    pub buf_bytes: usize,
    /// How long to retry while the socket does not exist or refuses.
    pub connect_timeout: Duration,
    /// How long one wait for completions may take before the queue is
    /// declared stuck ([`BlkError::Timeout`]).
    pub io_timeout: Duration,
    /// Poll queues: `do_io` spins on the used ring instead of sleeping on
    /// the completion eventfd (a core per queue; no interrupts).
    pub poll: bool,
}

impl ConnectOptions {
    pub fn new(num_queues: usize) -> Self {
        ConnectOptions {
            num_queues,
            queue_size: 256,
            read_only: None,
            buf_bytes: 4 << 20,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
            poll: false,
        }
    }
}

/// What the device told the driver (virtio-blk config space, as blkio
/// exposes it). Lengths in bytes; 0 means "not reported / no limit".
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub socket: PathBuf,
    pub capacity: u64,
    /// Negotiated: the device offered VIRTIO_BLK_F_RO (or the caller asked).
    pub read_only: bool,
    /// Logical block size (VIRTIO_BLK_F_BLK_SIZE, else 512).
    pub request_alignment: u64,
    pub optimal_io_alignment: u64,
    pub optimal_io_size: u64,
    /// `size_max * seg_max` when the device reports both.
    pub max_transfer: u64,
    /// VIRTIO_BLK_F_SEG_MAX (1 if not reported).
    pub max_segments: u64,
    /// VIRTIO_BLK_F_SIZE_MAX.
    pub max_segment_len: u64,
    /// 0 when VIRTIO_BLK_F_DISCARD was not negotiated.
    pub max_discard_len: u64,
    pub discard_alignment: u64,
    /// 0 when VIRTIO_BLK_F_WRITE_ZEROES was not negotiated.
    pub max_write_zeroes_len: u64,
    /// Queues the device offers (VIRTIO_BLK_F_MQ num_queues, else 1).
    pub max_queues: usize,
    pub num_queues: usize,
    pub queue_size: u32,
    /// The device has a volatile write cache (flush matters).
    pub flush_needed: bool,
    pub max_mem_regions: u64,
}

/// A request that failed, by what the device (or blkio) said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlkError {
    /// VIRTIO_BLK_S_IOERR (blkio: -EIO), e.g. out of range.
    IoErr { op: Op, offset: u64, len: u64 },
    /// VIRTIO_BLK_S_UNSUPP, or the feature was not negotiated (-ENOTSUP).
    Unsupported {
        op: Op,
        offset: u64,
        len: u64,
        message: String,
    },
    /// The connection is read-only: blkio refused the request itself
    /// (-EBADF), or a writable connection to a read-only device (-EROFS).
    ReadOnly { op: Op, message: String },
    /// Refused as malformed before sending (-EINVAL: offset not a multiple
    /// of 512, bad flags) or misuse of this library.
    Invalid {
        op: Op,
        offset: u64,
        len: u64,
        message: String,
    },
    /// No completion within the queue's I/O timeout: the queue is unusable.
    Timeout { op: Op, waited: Duration },
    /// Device status other than OK/IOERR/UNSUPP (-EPROTO).
    Protocol { op: Op, offset: u64, len: u64 },
    /// Could not connect or start (handshake, queues, memory regions).
    Connect {
        socket: PathBuf,
        errno: i32,
        message: String,
    },
    /// Any other errno.
    Other {
        op: Op,
        offset: u64,
        len: u64,
        errno: i32,
        message: String,
    },
}

/// The kind of request an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
    /// Waiting for completions.
    Wait,
}

impl BlkError {
    fn from_ret(op: Op, offset: u64, len: u64, ret: i32, message: Option<String>) -> BlkError {
        let errno = -ret;
        let message = message.unwrap_or_else(|| Errno::from_raw_os_error(errno).to_string());
        match errno {
            libc::EIO => BlkError::IoErr { op, offset, len },
            libc::ENOTSUP => BlkError::Unsupported {
                op,
                offset,
                len,
                message,
            },
            libc::EBADF | libc::EROFS => BlkError::ReadOnly { op, message },
            libc::EINVAL => BlkError::Invalid {
                op,
                offset,
                len,
                message,
            },
            libc::EPROTO => BlkError::Protocol { op, offset, len },
            _ => BlkError::Other {
                op,
                offset,
                len,
                errno,
                message,
            },
        }
    }

    fn connect(socket: &Path, what: &str, e: blkio::Error) -> BlkError {
        BlkError::Connect {
            socket: socket.to_path_buf(),
            errno: e.errno().raw_os_error(),
            message: format!("{what}: {e} (errno {})", e.errno().raw_os_error()),
        }
    }

    /// The errno blkio reported, where there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            BlkError::IoErr { .. } => Some(libc::EIO),
            BlkError::Unsupported { .. } => Some(libc::ENOTSUP),
            BlkError::Protocol { .. } => Some(libc::EPROTO),
            BlkError::Timeout { .. } => Some(libc::ETIME),
            BlkError::Invalid { .. } => Some(libc::EINVAL),
            BlkError::Connect { errno, .. } | BlkError::Other { errno, .. } => Some(*errno),
            BlkError::ReadOnly { .. } => None,
        }
    }

    pub fn is_ioerr(&self) -> bool {
        matches!(self, BlkError::IoErr { .. })
    }

    pub fn is_read_only(&self) -> bool {
        matches!(self, BlkError::ReadOnly { .. })
    }
}

impl fmt::Display for BlkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlkError::IoErr { op, offset, len } => {
                write!(
                    f,
                    "{op:?} at {offset} len {len}: device returned VIRTIO_BLK_S_IOERR"
                )
            }
            BlkError::Unsupported {
                op,
                offset,
                len,
                message,
            } => {
                write!(f, "{op:?} at {offset} len {len}: unsupported ({message})")
            }
            BlkError::ReadOnly { op, message } => write!(f, "{op:?}: read-only ({message})"),
            BlkError::Invalid {
                op,
                offset,
                len,
                message,
            } => {
                write!(f, "{op:?} at {offset} len {len}: invalid ({message})")
            }
            BlkError::Timeout { op, waited } => {
                write!(
                    f,
                    "{op:?}: no completion within {waited:?} (backend stuck or gone)"
                )
            }
            BlkError::Protocol { op, offset, len } => {
                write!(
                    f,
                    "{op:?} at {offset} len {len}: device returned an unknown status"
                )
            }
            BlkError::Connect {
                socket, message, ..
            } => write!(
                f,
                "vhost-user-blk client (libblkio {DRIVER}) on {}: {message}",
                socket.display()
            ),
            BlkError::Other {
                op,
                offset,
                len,
                errno,
                message,
            } => {
                write!(f, "{op:?} at {offset} len {len}: errno {errno} ({message})")
            }
        }
    }
}

impl std::error::Error for BlkError {}

/// One raw request on a queue's buffer ([`BlkQueue::submit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Req {
    /// Device `[offset, offset + len)` into buffer `[buf_off, buf_off + len)`.
    Read {
        offset: u64,
        buf_off: usize,
        len: usize,
    },
    /// Buffer `[buf_off, buf_off + len)` to device `offset`; `fua`: durable
    /// on completion (blkio adds a flush when the device has no native FUA).
    Write {
        offset: u64,
        buf_off: usize,
        len: usize,
        fua: bool,
    },
    Flush,
    Discard {
        offset: u64,
        len: u64,
    },
    /// `unmap`: the device may deallocate (VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP).
    WriteZeroes {
        offset: u64,
        len: u64,
        unmap: bool,
    },
}

impl Req {
    fn op(&self) -> Op {
        match self {
            Req::Read { .. } => Op::Read,
            Req::Write { .. } => Op::Write,
            Req::Flush => Op::Flush,
            Req::Discard { .. } => Op::Discard,
            Req::WriteZeroes { .. } => Op::WriteZeroes,
        }
    }

    fn extent(&self) -> (u64, u64) {
        match *self {
            Req::Read { offset, len, .. } | Req::Write { offset, len, .. } => (offset, len as u64),
            Req::Flush => (0, 0),
            Req::Discard { offset, len } | Req::WriteZeroes { offset, len, .. } => (offset, len),
        }
    }
}

/// One completed raw request.
#[derive(Debug)]
pub struct Done {
    pub tag: usize,
    pub req: Req,
    pub result: Result<(), BlkError>,
}

/// One virtqueue with its own request buffer. Not shared between threads;
/// distinct queues may be used from distinct threads at once
/// ([`BlkClient::queues_mut`]).
pub struct BlkQueue {
    q: Blkioq,
    index: usize,
    buf: *mut u8,
    buf_len: usize,
    info: DeviceInfo,
    io_timeout: Duration,
    /// In-flight requests by blkio user_data (slab index): (tag, request).
    slots: Vec<Option<(usize, Req)>>,
    free_slots: Vec<usize>,
    completions: Vec<MaybeUninit<Completion>>,
    broken: Option<String>,
}

// SAFETY: `buf` points into a memory region owned by the client's `Blkio`,
// which outlives the queue (see `BlkClient`'s field order); only this queue
// touches its region, and `Blkioq` itself is `Send`.
unsafe impl Send for BlkQueue {}

impl BlkQueue {
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Bytes of the queue's request buffer.
    pub fn buffer_len(&self) -> usize {
        self.buf_len
    }

    /// The queue's request buffer (what [`Req::Read`]/[`Req::Write`] use).
    /// Do not touch a range a request in flight is using.
    pub fn buffer(&self) -> &[u8] {
        // SAFETY: the region is `buf_len` bytes, mapped for the queue's life.
        unsafe { std::slice::from_raw_parts(self.buf, self.buf_len) }
    }

    pub fn buffer_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `buffer`; `&mut self` makes it exclusive on our side.
        unsafe { std::slice::from_raw_parts_mut(self.buf, self.buf_len) }
    }

    /// Requests submitted and not yet returned by [`BlkQueue::wait`].
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// Queues one request (sent to the device at the next [`BlkQueue::wait`]).
    /// Panics if a buffer range lies outside the queue's buffer.
    pub fn submit(&mut self, req: Req, tag: usize) {
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.slots[s] = Some((tag, req));
                s
            }
            None => {
                self.slots.push(Some((tag, req)));
                self.slots.len() - 1
            }
        };
        match req {
            Req::Read {
                offset,
                buf_off,
                len,
            } => {
                assert!(
                    buf_off + len <= self.buf_len,
                    "read buffer out of the queue buffer"
                );
                // SAFETY: in bounds (checked); the region stays mapped and
                // unused by anything else until the completion is reaped.
                let p = unsafe { self.buf.add(buf_off) };
                self.q.read(offset, p, len, slot, ReqFlags::empty());
            }
            Req::Write {
                offset,
                buf_off,
                len,
                fua,
            } => {
                assert!(
                    buf_off + len <= self.buf_len,
                    "write buffer out of the queue buffer"
                );
                // SAFETY: as above.
                let p = unsafe { self.buf.add(buf_off) };
                let flags = if fua {
                    ReqFlags::FUA
                } else {
                    ReqFlags::empty()
                };
                self.q.write(offset, p, len, slot, flags);
            }
            Req::Flush => self.q.flush(slot, ReqFlags::empty()),
            Req::Discard { offset, len } => self.q.discard(offset, len, slot, ReqFlags::empty()),
            Req::WriteZeroes { offset, len, unmap } => {
                let flags = if unmap {
                    ReqFlags::empty()
                } else {
                    ReqFlags::NO_UNMAP
                };
                self.q.write_zeroes(offset, len, slot, flags)
            }
        }
    }

    /// Sends what was submitted and waits until at least `min` requests
    /// completed (0: just reap what is there); appends them to `out` and
    /// returns how many. A wait longer than the I/O timeout is an error and
    /// leaves the queue unusable.
    pub fn wait(&mut self, min: usize, out: &mut Vec<Done>) -> Result<usize, BlkError> {
        if let Some(why) = &self.broken {
            return Err(BlkError::Invalid {
                op: Op::Wait,
                offset: 0,
                len: 0,
                message: format!("queue {} is unusable: {why}", self.index),
            });
        }
        let min = min.min(self.in_flight());
        let mut timeout = self.io_timeout;
        let n = match self
            .q
            .do_io(&mut self.completions, min, Some(&mut timeout), None)
        {
            Ok(n) => n,
            Err(e) => {
                let err = if e.errno() == Errno::TIME {
                    BlkError::Timeout {
                        op: Op::Wait,
                        waited: self.io_timeout,
                    }
                } else {
                    BlkError::Other {
                        op: Op::Wait,
                        offset: 0,
                        len: 0,
                        errno: e.errno().raw_os_error(),
                        message: e.to_string(),
                    }
                };
                self.broken = Some(err.to_string());
                return Err(err);
            }
        };
        for c in &self.completions[..n] {
            // SAFETY: do_io initialised the first `n` entries.
            let c = unsafe { c.assume_init_ref() };
            let (tag, req) = self.slots[c.user_data]
                .take()
                .expect("completion for a free slot");
            self.free_slots.push(c.user_data);
            let result = if c.ret == 0 {
                Ok(())
            } else {
                let msg = (!c.error_msg.is_null()).then(|| {
                    // SAFETY: non-null (checked above), and blkio 0.5 only ever
                    // stores a `&'static CStr` there (`Completion::for_failed_req`),
                    // so the string is NUL-terminated and lives forever.
                    unsafe { CStr::from_ptr(c.error_msg) }
                        .to_string_lossy()
                        .into_owned()
                });
                let (offset, len) = req.extent();
                Err(BlkError::from_ret(req.op(), offset, len, c.ret, msg))
            };
            out.push(Done { tag, req, result });
        }
        Ok(n)
    }

    /// Waits for everything in flight; returns the first error.
    pub fn drain(&mut self) -> Result<(), BlkError> {
        let mut out = Vec::new();
        while self.in_flight() > 0 {
            self.wait(1, &mut out)?;
        }
        out.into_iter()
            .find_map(|d| d.result.err())
            .map_or(Ok(()), Err)
    }

    fn check_idle(&self, op: Op) -> Result<(), BlkError> {
        if self.in_flight() == 0 {
            Ok(())
        } else {
            Err(BlkError::Invalid {
                op,
                offset: 0,
                len: 0,
                message: "raw requests still in flight on this queue".into(),
            })
        }
    }

    /// Largest data chunk of one request (what the synchronous helpers split
    /// their requests into).
    pub fn max_chunk(&self) -> usize {
        let mut c = self.buf_len as u64;
        if self.info.max_transfer > 0 {
            c = c.min(self.info.max_transfer);
        }
        // One buffer is one descriptor: one segment.
        if self.info.max_segment_len > 0 {
            c = c.min(self.info.max_segment_len);
        }
        ((c / 512) * 512).max(512) as usize
    }

    /// Runs data requests for `[offset, offset + len)` in chunks, as many in
    /// flight as the buffer holds. `before` fills a chunk's buffer before a
    /// write; `after` takes a read chunk's data. Returns the first error
    /// after every request in flight has completed.
    fn data_io(
        &mut self,
        write: bool,
        fua: bool,
        offset: u64,
        len: usize,
        mut before: impl FnMut(usize, &mut [u8]),
        mut after: impl FnMut(usize, &[u8]),
    ) -> Result<(), BlkError> {
        self.check_idle(if write { Op::Write } else { Op::Read })?;
        let chunk = self.max_chunk();
        let mut done_bytes = 0usize; // submitted so far (relative position)
        let mut out = Vec::new();
        let mut first_err = None;
        let mut buf_free: Vec<usize> = (0..self.buf_len / chunk).map(|i| i * chunk).collect();
        loop {
            while done_bytes < len && first_err.is_none() {
                let Some(buf_off) = buf_free.pop() else { break };
                let n = chunk.min(len - done_bytes);
                if write {
                    before(done_bytes, &mut self.buffer_mut()[buf_off..buf_off + n]);
                    let req = Req::Write {
                        offset: offset + done_bytes as u64,
                        buf_off,
                        len: n,
                        fua,
                    };
                    self.submit(req, done_bytes);
                } else {
                    let req = Req::Read {
                        offset: offset + done_bytes as u64,
                        buf_off,
                        len: n,
                    };
                    self.submit(req, done_bytes);
                }
                done_bytes += n;
            }
            if self.in_flight() == 0 {
                break;
            }
            out.clear();
            self.wait(1, &mut out)?;
            for d in out.drain(..) {
                let (buf_off, n) = match d.req {
                    Req::Read { buf_off, len, .. } | Req::Write { buf_off, len, .. } => {
                        (buf_off, len)
                    }
                    _ => unreachable!(),
                };
                match d.result {
                    Ok(()) if !write => after(d.tag, &self.buffer()[buf_off..buf_off + n]),
                    Ok(()) => {}
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
                buf_free.push(buf_off);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Reads device bytes `[offset, offset + buf.len())` into `buf`.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        let len = buf.len();
        self.data_io(
            false,
            false,
            offset,
            len,
            |_, _| {},
            |at, data| buf[at..at + data.len()].copy_from_slice(data),
        )
    }

    /// Reads `len` bytes at `offset` into a new vector.
    pub fn read_vec(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, BlkError> {
        let mut v = vec![0u8; len];
        self.read(offset, &mut v)?;
        Ok(v)
    }

    /// Writes `data` at device `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BlkError> {
        self.data_io(
            true,
            false,
            offset,
            data.len(),
            |at, b| b.copy_from_slice(&data[at..at + b.len()]),
            |_, _| {},
        )
    }

    /// Writes `data` at `offset` with FUA (durable when it completes).
    pub fn write_fua(&mut self, offset: u64, data: &[u8]) -> Result<(), BlkError> {
        self.data_io(
            true,
            true,
            offset,
            data.len(),
            |at, b| b.copy_from_slice(&data[at..at + b.len()]),
            |_, _| {},
        )
    }

    /// Writes the pattern of `seed` over `[offset, offset + len)` without a
    /// staging copy of the whole range.
    pub fn write_pattern(&mut self, seed: u64, offset: u64, len: usize) -> Result<(), BlkError> {
        self.data_io(
            true,
            false,
            offset,
            len,
            |at, b| super::pattern::fill_pattern(seed, offset + at as u64, b),
            |_, _| {},
        )
    }

    /// Reads `[offset, offset + len)` and checks it holds the pattern of
    /// `seed`; a mismatch is a panic naming the first wrong byte.
    pub fn verify_pattern(&mut self, seed: u64, offset: u64, len: usize) -> Result<(), BlkError> {
        let mut bad = None;
        self.data_io(
            false,
            false,
            offset,
            len,
            |_, _| {},
            |at, data| {
                if bad.is_none() {
                    bad = super::pattern::verify(seed, offset + at as u64, data).err();
                }
            },
        )?;
        if let Some(m) = bad {
            panic!("queue {}: {m}", self.index);
        }
        Ok(())
    }

    fn one(&mut self, req: Req) -> Result<(), BlkError> {
        self.check_idle(req.op())?;
        self.submit(req, 0);
        self.drain()
    }

    pub fn flush(&mut self) -> Result<(), BlkError> {
        self.one(Req::Flush)
    }

    /// Discards `[offset, offset + len)`, split at the device's max discard
    /// length. What a later read returns is up to the device.
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlkError> {
        let max = self.info.max_discard_len;
        self.split(offset, len, max, |offset, len| Req::Discard { offset, len })
    }

    /// Writes zeros over `[offset, offset + len)`; `unmap` lets the device
    /// deallocate. Reads of the range return zeros afterwards.
    pub fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), BlkError> {
        let max = self.info.max_write_zeroes_len;
        self.split(offset, len, max, |offset, len| Req::WriteZeroes {
            offset,
            len,
            unmap,
        })
    }

    fn split(
        &mut self,
        offset: u64,
        len: u64,
        max: u64,
        make: impl Fn(u64, u64) -> Req,
    ) -> Result<(), BlkError> {
        let op = make(0, 0).op();
        self.check_idle(op)?;
        let step = if max == 0 { len.max(1) } else { max };
        let mut at = 0;
        loop {
            let n = step.min(len - at);
            self.submit(make(offset + at, n), 0);
            at += n;
            if at >= len {
                break;
            }
        }
        self.drain()
    }
}

/// A connected vhost-user-blk client with its started queues.
pub struct BlkClient {
    // Field order matters: the queues point into the Blkio's vring memory
    // and must be dropped first. The instance and the mapped regions are only
    // held, never read, so that they outlive the queues.
    queues: Vec<BlkQueue>,
    _blkio: Blkio,
    info: DeviceInfo,
    _regions: Vec<MemoryRegion>,
}

fn retryable(errno: Errno) -> bool {
    [
        Errno::NOENT,
        Errno::CONNREFUSED,
        Errno::CONNRESET,
        Errno::AGAIN,
        Errno::PIPE,
    ]
    .contains(&errno)
}

fn open(socket: &Path, read_only: bool, deadline: Instant) -> Result<Blkio, BlkError> {
    let path = socket.to_str().expect("socket path is UTF-8");
    loop {
        let mut b = Blkio::new(DRIVER).map_err(|e| {
            BlkError::connect(
                socket,
                "blkio has no virtio-blk-vhost-user driver (crate feature missing?)",
                e,
            )
        })?;
        b.set_str("path", path)
            .map_err(|e| BlkError::connect(socket, "set path", e))?;
        b.set_bool("read-only", read_only)
            .map_err(|e| BlkError::connect(socket, "set read-only", e))?;
        match b.connect() {
            Ok(()) => return Ok(b),
            Err(e) if retryable(e.errno()) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(BlkError::connect(socket, "vhost-user connect", e)),
        }
    }
}

impl BlkClient {
    /// Connects with `num_queues` queues and the default options, retrying
    /// for up to 5 s while the socket is absent or refuses.
    pub fn connect(socket: &Path, num_queues: usize) -> Result<BlkClient, BlkError> {
        Self::connect_with(socket, &ConnectOptions::new(num_queues))
    }

    pub fn connect_with(socket: &Path, opts: &ConnectOptions) -> Result<BlkClient, BlkError> {
        let deadline = Instant::now() + opts.connect_timeout;
        let mut read_only = opts.read_only.unwrap_or(false);
        let (mut blkio, outcome) = loop {
            let mut b = open(socket, read_only, deadline)?;
            let max_queues = b.get_i32("max-queues").unwrap_or(1);
            let (irq, poll) = if opts.poll {
                (0, opts.num_queues)
            } else {
                (opts.num_queues, 0)
            };
            b.set_i32("num-queues", irq as i32)
                .map_err(|e| BlkError::connect(socket, "set num-queues", e))?;
            b.set_i32("num-poll-queues", poll as i32)
                .map_err(|e| BlkError::connect(socket, "set num-poll-queues", e))?;
            b.set_i32("queue-size", opts.queue_size as i32)
                .map_err(|e| BlkError::connect(socket, "set queue-size", e))?;
            match b.start() {
                Ok(o) => break (b, o),
                Err(e) if e.errno() == Errno::ROFS => {
                    if opts.read_only.is_none() && !read_only {
                        // The device offers VIRTIO_BLK_F_RO: reconnect read-only.
                        drop(b);
                        read_only = true;
                        continue;
                    }
                    return Err(BlkError::ReadOnly {
                        op: Op::Write,
                        message: format!(
                            "{}: the device is read-only (VIRTIO_BLK_F_RO) and a writable connection was asked for: {e}",
                            socket.display()
                        ),
                    });
                }
                Err(e) => {
                    let what = format!(
                        "start with {} queue(s) of size {} (device offers {max_queues} queue(s))",
                        opts.num_queues, opts.queue_size
                    );
                    return Err(BlkError::connect(socket, &what, e));
                }
            }
        };
        let get_u64 = |name: &str| blkio.get_u64(name).unwrap_or(0);
        let get_i32 = |name: &str| blkio.get_i32(name).map(|v| v.max(0) as u64).unwrap_or(0);
        let info = DeviceInfo {
            socket: socket.to_path_buf(),
            capacity: get_u64("capacity"),
            read_only,
            request_alignment: get_i32("request-alignment"),
            optimal_io_alignment: get_i32("optimal-io-alignment"),
            optimal_io_size: get_i32("optimal-io-size"),
            max_transfer: get_i32("max-transfer"),
            max_segments: get_i32("max-segments"),
            max_segment_len: get_i32("max-segment-len"),
            max_discard_len: get_u64("max-discard-len"),
            discard_alignment: get_i32("discard-alignment"),
            max_write_zeroes_len: get_u64("max-write-zeroes-len"),
            max_queues: get_i32("max-queues") as usize,
            num_queues: opts.num_queues,
            queue_size: opts.queue_size,
            flush_needed: blkio.get_bool("flush-needed").unwrap_or(true),
            max_mem_regions: get_u64("max-mem-regions"),
        };
        let align = blkio.get_u64("mem-region-alignment").unwrap_or(1).max(4096) as usize;
        let buf_len = opts.buf_bytes.max(4096).div_ceil(align) * align;
        let mut regions = Vec::new();
        let mut queues = Vec::new();
        let started = if opts.poll {
            outcome.poll_queues
        } else {
            outcome.queues
        };
        for (index, q) in started.into_iter().enumerate() {
            let region = blkio
                .alloc_mem_region(buf_len)
                .map_err(|e| BlkError::connect(socket, "alloc_mem_region", e))?;
            blkio.map_mem_region(&region).map_err(|e| {
                BlkError::connect(socket, "map_mem_region (backend refused memory)", e)
            })?;
            regions.push(region);
            queues.push(BlkQueue {
                q,
                index,
                buf: region.addr as *mut u8,
                buf_len,
                info: info.clone(),
                io_timeout: opts.io_timeout,
                slots: Vec::new(),
                free_slots: Vec::new(),
                completions: (0..opts.queue_size.max(64) as usize * 2)
                    .map(|_| MaybeUninit::uninit())
                    .collect(),
                broken: None,
            });
        }
        Ok(BlkClient {
            queues,
            _blkio: blkio,
            info,
            _regions: regions,
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn capacity(&self) -> u64 {
        self.info.capacity
    }

    pub fn read_only(&self) -> bool {
        self.info.read_only
    }

    pub fn request_alignment(&self) -> u64 {
        self.info.request_alignment
    }

    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    pub fn queue(&mut self, i: usize) -> &mut BlkQueue {
        &mut self.queues[i]
    }

    /// All queues, to hand one to each thread (`std::thread::scope`).
    pub fn queues_mut(&mut self) -> &mut [BlkQueue] {
        &mut self.queues
    }
}

impl fmt::Debug for BlkClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlkClient")
            .field("info", &self.info)
            .finish()
    }
}
