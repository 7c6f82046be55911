//! The synchronous data path: read, write, discard, write-zeroes, split into
//! per-cluster pieces and mapped through the volume (FORMAT.md "Write paths").
//! The io_uring engine follows the same rules with many requests in flight.

use super::{Pool, PoolError};
use crate::dev::{AlignedBuf, BlockDev, SECTOR};
use crate::format::Record;
use crate::meta::Mapping;

/// One cluster's part of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Virtual cluster.
    pub vcluster: u64,
    /// Byte offset inside the cluster.
    pub within: usize,
    /// Bytes.
    pub len: usize,
    /// Byte offset of the piece inside the request.
    pub at: usize,
}

/// Splits `[offset, offset + len)` at cluster boundaries.
pub fn pieces(cluster_size: u32, offset: u64, len: u64) -> impl Iterator<Item = Piece> {
    let cs = u64::from(cluster_size);
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let within = pos % cs;
        let n = (cs - within).min(end - pos);
        let p = Piece {
            vcluster: pos / cs,
            within: within as usize,
            len: n as usize,
            at: (pos - offset) as usize,
        };
        pos += n;
        Some(p)
    })
}

impl<D: BlockDev> Pool<D> {
    /// Checks a guest request once at the boundary: the volume exists,
    /// offset and length are multiples of 512, the range is inside the
    /// volume, and (for changes) the volume is writable.
    pub fn check_request(
        &self,
        id: u32,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<(), PoolError> {
        let v = self
            .meta
            .volume(id)
            .ok_or_else(|| PoolError::NoSuchVolume(format!("#{id}")))?;
        if !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) {
            return Err(PoolError::Unaligned { offset, len });
        }
        if offset.checked_add(len).is_none_or(|end| end > v.size()) {
            return Err(PoolError::OutOfRange {
                offset,
                len,
                size: v.size(),
            });
        }
        if write && v.read_only() {
            return Err(PoolError::ReadOnly(v.name().to_owned()));
        }
        Ok(())
    }

    fn lookup(&self, id: u32, vcluster: u64) -> Result<Option<Mapping>, PoolError> {
        Ok(self.meta.lookup(id, vcluster)?)
    }

    fn cluster_off(&self, pcluster: u32) -> u64 {
        // Map entries are inside the data area (checked by the metadata).
        self.layout.cluster_offset(u64::from(pcluster)).unwrap_or(0)
    }

    /// Reads `buf.len()` bytes at `offset` of volume `id`. Never-written
    /// ranges read as zeros.
    pub fn read(&self, id: u32, offset: u64, buf: &mut [u8]) -> Result<(), PoolError> {
        self.check_request(id, offset, buf.len() as u64, false)?;
        for p in pieces(self.meta.cluster_size(), offset, buf.len() as u64) {
            let out = &mut buf[p.at..p.at + p.len];
            match self.lookup(id, p.vcluster)? {
                None => out.fill(0),
                Some(m) => {
                    let off = self.cluster_off(m.pcluster) + p.within as u64;
                    self.dev.read_at(out, off).map_err(|source| PoolError::Io {
                        what: format!("reading pool cluster {}", m.pcluster),
                        source,
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset` of volume `id`. Durable after the next
    /// [`flush`](Pool::flush). Out of space fails the request before any of
    /// it is written.
    pub fn write(&mut self, id: u32, offset: u64, data: &[u8]) -> Result<(), PoolError> {
        self.usable()?;
        self.check_request(id, offset, data.len() as u64, true)?;
        let cs = self.meta.cluster_size();
        let needed = self.clusters_needed(id, offset, data.len() as u64)?;
        self.reserve_for(needed, 0)?;
        let mut scratch = None;
        for p in pieces(cs, offset, data.len() as u64) {
            self.write_piece(id, p, Some(&data[p.at..p.at + p.len]), &mut scratch)?;
        }
        Ok(())
    }

    /// Discards `[offset, offset + len)`: whole clusters are unmapped and
    /// return to the pool after the next flush; partial clusters are zeroed.
    /// The range reads as zeros afterwards.
    pub fn discard(&mut self, id: u32, offset: u64, len: u64) -> Result<(), PoolError> {
        self.usable()?;
        self.check_request(id, offset, len, true)?;
        self.zero_range(id, offset, len, true)
    }

    /// Write-zeroes: same effect as [`discard`](Self::discard) (whole clusters
    /// released, partial ones zeroed).
    pub fn write_zeroes(&mut self, id: u32, offset: u64, len: u64) -> Result<(), PoolError> {
        self.discard(id, offset, len)
    }

    /// Zeroes a range already checked. `unmap_whole`: whole clusters are
    /// unmapped instead of written.
    pub(super) fn zero_range(
        &mut self,
        id: u32,
        offset: u64,
        len: u64,
        unmap_whole: bool,
    ) -> Result<(), PoolError> {
        let cs = self.meta.cluster_size();
        let mut needed = 0;
        for p in pieces(cs, offset, len) {
            let whole = unmap_whole && p.len == cs as usize;
            if !whole && matches!(self.lookup(id, p.vcluster)?, Some(m) if m.shared) {
                needed += 1;
            }
        }
        self.reserve_for(needed, 0)?;
        let mut scratch = None;
        for p in pieces(cs, offset, len) {
            let Some(_) = self.lookup(id, p.vcluster)? else {
                continue; // unmapped reads as zeros already
            };
            if unmap_whole && p.len == cs as usize {
                self.record(Record::Unmap {
                    volume: id,
                    vcluster: p.vcluster,
                })?;
            } else {
                self.write_piece(id, p, None, &mut scratch)?;
            }
        }
        Ok(())
    }

    /// Writes one piece (`None`: zeros). An exclusive cluster is written in
    /// place; otherwise a new cluster is written whole (the shared source's
    /// data or zeros around the piece) and mapped only after that write
    /// completed (rule 2); the shared source is never written (rule 4).
    fn write_piece(
        &mut self,
        id: u32,
        p: super::data::Piece,
        data: Option<&[u8]>,
        scratch: &mut Option<AlignedBuf>,
    ) -> Result<(), PoolError> {
        let io = |what: String| move |source| PoolError::Io { what, source };
        let mapping = self.lookup(id, p.vcluster)?;
        if let Some(m) = mapping.filter(|m| !m.shared) {
            let off = self.cluster_off(m.pcluster) + p.within as u64;
            return match data {
                Some(d) => self.dev.write_at(d, off),
                None => self.dev.write_at(&AlignedBuf::new(p.len), off),
            }
            .map_err(io(format!("writing pool cluster {}", m.pcluster)));
        }
        let cs = self.meta.cluster_size() as usize;
        let buf = scratch.get_or_insert_with(|| AlignedBuf::new(cs));
        match mapping {
            Some(m) => {
                let off = self.cluster_off(m.pcluster);
                self.dev
                    .read_at(buf, off)
                    .map_err(io(format!("reading shared cluster {}", m.pcluster)))?;
                self.stats.copies_on_write += 1;
            }
            None => buf.fill(0),
        }
        let dst = &mut buf[p.within..p.within + p.len];
        match data {
            Some(d) => dst.copy_from_slice(d),
            None => dst.fill(0),
        }
        let pc = self.meta.allocate()?;
        let off = self.cluster_off(pc);
        if let Err(source) = self.dev.write_at(buf, off) {
            self.meta.abandon(pc)?;
            return Err(PoolError::Io {
                what: format!("writing new cluster {pc}"),
                source,
            });
        }
        self.stats.allocations += 1;
        self.record(Record::Map {
            volume: id,
            vcluster: p.vcluster,
            pcluster: pc,
        })
    }
}

/// How an engine carries out one piece of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WritePlan {
    /// Overwrite in place at `pcluster` (pinned until [`Pool::unpin`]).
    InPlace { pcluster: u32 },
    /// Write the whole new cluster `pcluster`: zeros around the piece, or
    /// (copy-on-write) the contents of `source` (pinned) with the piece
    /// patched in. Then [`Pool::finish_allocation`].
    Allocate { pcluster: u32, source: Option<u32> },
}

/// Hooks for an asynchronous engine (many requests in flight): the engine
/// does the data I/O itself and calls back here, under the same lock, to
/// resolve mappings, allocate, and publish `Map` records after its writes.
impl<D: BlockDev> Pool<D> {
    /// Byte offset of pool cluster `pcluster` on the device.
    pub fn cluster_offset(&self, pcluster: u32) -> u64 {
        self.cluster_off(pcluster)
    }

    /// Where to read virtual cluster `vcluster` of `id`: `None` reads as
    /// zeros; `Some(pcluster)` is pinned until [`unpin`](Self::unpin), so it
    /// is not reused under the read.
    pub fn plan_read(&mut self, id: u32, vcluster: u64) -> Result<Option<u32>, PoolError> {
        let m = self.lookup(id, vcluster)?;
        Ok(m.map(|m| {
            self.pin(m.pcluster);
            m.pcluster
        }))
    }

    /// Plans every piece of a write already checked with
    /// [`check_request`](Self::check_request). `Ok(None)`: a cluster it
    /// touches has an allocating write in flight; retry after that one
    /// finished. Out of space fails the whole request before anything is
    /// allocated.
    pub fn plan_write(
        &mut self,
        id: u32,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<(Piece, WritePlan)>>, PoolError> {
        self.usable()?;
        let cs = self.meta.cluster_size();
        if self.is_allocating(id, offset, len) {
            return Ok(None);
        }
        let needed = self.clusters_needed(id, offset, len)?;
        if needed > 0 {
            self.reserve_for(needed, 0)?;
        }
        let mut plans = Vec::new();
        for p in pieces(cs, offset, len) {
            let plan = match self.lookup(id, p.vcluster)? {
                Some(m) if !m.shared => {
                    self.pin(m.pcluster);
                    WritePlan::InPlace {
                        pcluster: m.pcluster,
                    }
                }
                m => {
                    let pcluster = self.meta.allocate()?;
                    self.allocating.insert((id, p.vcluster));
                    let source = m.map(|m| {
                        self.pin(m.pcluster);
                        m.pcluster
                    });
                    if source.is_some() {
                        self.stats.copies_on_write += 1;
                    }
                    WritePlan::Allocate { pcluster, source }
                }
            };
            plans.push((p, plan));
        }
        if needed > 0 {
            self.publish_space();
        }
        Ok(Some(plans))
    }

    /// New clusters a write of `[offset, offset + len)` of `id` takes: one
    /// per piece that is unmapped or shared (copy-on-write).
    pub fn clusters_needed(&self, id: u32, offset: u64, len: u64) -> Result<u64, PoolError> {
        let mut needed = 0;
        for p in pieces(self.meta.cluster_size(), offset, len) {
            if !matches!(self.lookup(id, p.vcluster)?, Some(m) if !m.shared) {
                needed += 1;
            }
        }
        Ok(needed)
    }

    /// True if a write touching `[offset, offset + len)` of `id` must wait
    /// for an allocating write in flight (discard and write-zeroes too).
    pub fn is_allocating(&self, id: u32, offset: u64, len: u64) -> bool {
        pieces(self.meta.cluster_size(), offset, len)
            .any(|p| self.allocating.contains(&(id, p.vcluster)))
    }

    /// The whole-cluster write of a [`WritePlan::Allocate`] completed
    /// (`written`) or failed: map it (the `Map` is durable at the next
    /// flush) or give the cluster back.
    pub fn finish_allocation(
        &mut self,
        id: u32,
        vcluster: u64,
        pcluster: u32,
        written: bool,
    ) -> Result<(), PoolError> {
        self.allocating.remove(&(id, vcluster));
        if !written {
            self.meta.abandon(pcluster)?;
            self.publish_space();
            return Ok(());
        }
        self.stats.allocations += 1;
        let r = self.record(Record::Map {
            volume: id,
            vcluster,
            pcluster,
        });
        if r.is_err() && self.meta.held().any(|c| c == pcluster) {
            self.meta.abandon(pcluster)?;
        }
        r
    }

    /// Keeps `pcluster` from being reused while engine I/O is in flight on it.
    pub fn pin(&mut self, pcluster: u32) {
        *self.pins.entry(pcluster).or_insert(0) += 1;
    }

    /// Ends one [`pin`](Self::pin).
    pub fn unpin(&mut self, pcluster: u32) {
        if let Some(n) = self.pins.get_mut(&pcluster) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(&pcluster);
            }
        }
    }
}
