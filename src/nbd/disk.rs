//! One NBD connection's volume: the pool's io_uring engine (the same data
//! path as a vhost-user-blk queue), one request at a time, and the
//! allocation map for BLOCK_STATUS.
//!
//! Holes stay holes: a WRITE whose data is all zeros and a WRITE_ZEROES
//! without NBD_CMD_FLAG_NO_HOLE go to the pool as write-zeroes, which unmaps
//! whole clusters and never allocates one that is not mapped (a partial
//! cluster is zeroed only where it is mapped). TRIM is a discard.

use super::wire::{Extent, MAX_PAYLOAD, STATE_HOLE, STATE_ZERO};
use crate::runtime::nbd::NbdVolume;
use crate::storage::lock_pool;
use std::io;
use vblock::dev::{AlignedBuf, FileDev};
use vblock::engine::{Durability, IoCompletion, IoKind, IoRequest, VolumeEngine};
use vblock::pool::PoolError;

/// Ring depth: one request at a time, split into at most a few dozen
/// per-cluster operations.
const DEPTH: u32 = 32;
/// Most clusters one BLOCK_STATUS walks (under the pool lock); the client
/// asks again for the rest.
const MAX_STATUS_CLUSTERS: u64 = 64 * 1024;

/// How much a change must survive before it is answered.
fn durability(fua: bool) -> Durability {
    if fua {
        Durability::PowerLoss
    } else {
        // What a write-back disk cache promises: a FLUSH makes it durable.
        Durability::ProcessDeath
    }
}

pub struct Disk {
    // Declared before `buf`: dropping the engine waits for its I/O, which
    // may still point into `buf`.
    engine: VolumeEngine<FileDev>,
    buf: AlignedBuf,
    done: Vec<IoCompletion>,
    volume: u32,
    cluster_size: u64,
    next_tag: u64,
    /// The ring failed with a request in flight: `buf` may still be under
    /// I/O, so the connection must end.
    broken: bool,
}

impl Disk {
    pub fn open(v: &NbdVolume) -> io::Result<Disk> {
        let fd = lock_pool(&v.pool).dev().file().try_clone()?;
        Ok(Disk {
            engine: VolumeEngine::new(v.pool.clone(), &fd, DEPTH)?,
            buf: AlignedBuf::new(MAX_PAYLOAD as usize),
            done: Vec::new(),
            volume: v.id,
            cluster_size: u64::from(v.cluster_size),
            next_tag: 0,
            broken: false,
        })
    }

    /// Whether the connection must end (see `broken`).
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// The buffer a WRITE's payload is read into (`len` bytes).
    pub fn payload(&mut self, len: u32) -> &mut [u8] {
        &mut self.buf[..len as usize]
    }

    /// Reads `len` bytes at `offset`; the data is `payload(len)`.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<(), PoolError> {
        self.run(IoKind::Read, offset, u64::from(len), Durability::Io)
    }

    /// Writes the `len` bytes of `payload(len)` at `offset`: as write-zeroes
    /// when they are all zeros, so no cluster is allocated for them.
    pub fn write(&mut self, offset: u64, len: u32, fua: bool) -> Result<(), PoolError> {
        let zeros = self.buf[..len as usize].iter().all(|b| *b == 0);
        let kind = if zeros {
            IoKind::WriteZeroes
        } else {
            IoKind::Write
        };
        self.run(kind, offset, u64::from(len), durability(fua))
    }

    /// WRITE_ZEROES: unmapped like a trim, unless `no_hole` asks for the
    /// space to stay allocated (then zeros are written).
    pub fn write_zeroes(
        &mut self,
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    ) -> Result<(), PoolError> {
        if !no_hole {
            return self.run(IoKind::WriteZeroes, offset, u64::from(len), durability(fua));
        }
        let (mut at, end) = (offset, offset + u64::from(len));
        self.buf.fill(0);
        while at < end {
            let n = (end - at).min(u64::from(MAX_PAYLOAD));
            self.run(IoKind::Write, at, n, durability(fua))?;
            at += n;
        }
        Ok(())
    }

    pub fn trim(&mut self, offset: u64, len: u32, fua: bool) -> Result<(), PoolError> {
        self.run(IoKind::Discard, offset, u64::from(len), durability(fua))
    }

    pub fn flush(&mut self) -> Result<(), PoolError> {
        self.run(IoKind::Flush, 0, 0, Durability::Io)
    }

    /// The `base:allocation` extents from `offset` on, at most `len` bytes
    /// (fewer when the walk is capped, or `one` run only): a mapped cluster
    /// is data (flags 0), an unmapped one a hole that reads as zeros.
    pub fn extents(&self, offset: u64, len: u32, one: bool) -> Result<Vec<Extent>, PoolError> {
        let cs = self.cluster_size;
        let end = offset + u64::from(len);
        let pool = lock_pool(self.engine.pool());
        let meta = pool.metadata();
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        let mut walked = 0;
        while at < end && walked < MAX_STATUS_CLUSTERS {
            let mapped = meta
                .lookup(self.volume, at / cs)
                .map_err(PoolError::Refused)?
                .is_some();
            let flags = if mapped { 0 } else { STATE_HOLE | STATE_ZERO };
            let n = ((at / cs + 1) * cs).min(end) - at;
            match out.last_mut() {
                Some(last) if last.flags == flags => last.len += n as u32,
                Some(_) if one => break,
                _ => out.push(Extent {
                    len: n as u32,
                    flags,
                }),
            }
            at += n;
            walked += 1;
        }
        Ok(out)
    }

    /// Submits one request over `buf` and waits for its completion.
    fn run(
        &mut self,
        kind: IoKind,
        offset: u64,
        len: u64,
        durable: Durability,
    ) -> Result<(), PoolError> {
        self.next_tag += 1;
        let tag = self.next_tag;
        let data = matches!(kind, IoKind::Read | IoKind::Write);
        let iov = if data {
            vec![libc::iovec {
                iov_base: self.buf.as_mut_ptr().cast(),
                iov_len: len as usize,
            }]
        } else {
            Vec::new()
        };
        let req = IoRequest {
            tag,
            volume: self.volume,
            kind,
            offset,
            len,
            iov,
            durable,
        };
        // SAFETY: the iovec is `buf`, which the engine is declared (and so
        // dropped) before, and which nothing touches until this request's
        // completion is returned below; `len` <= MAX_PAYLOAD, the buffer's
        // length (checked by `Command::parse` and the callers).
        unsafe { self.engine.submit(req) };
        loop {
            if let Some(i) = self.done.iter().position(|c| c.tag == tag) {
                return self.done.swap_remove(i).result;
            }
            if let Err(source) = self.engine.wait(&mut self.done) {
                self.broken = true;
                return Err(PoolError::Io {
                    what: "the NBD engine's ring".into(),
                    source,
                });
            }
        }
    }
}
