//! The commit path: records are applied to the metadata, queued into journal
//! blocks and written at a stage (journal written, nothing flushed) or a
//! commit (data flushed, journal written ending in `DataDurable`, journal
//! flushed: FORMAT.md "Write paths" rules 1 to 3).

use super::error::io_err;
use super::gauges;
use super::load::apply;
use super::{Pool, PoolError};
use crate::dev::{AlignedBuf, BlockDev};
use crate::format::Record;
use crate::meta::Metadata;

/// Sealed journal blocks kept in memory before a commit is forced: bounds
/// memory and the metadata a guest that never flushes can lose.
const MAX_SEALED_BLOCKS: usize = 64;

/// What a journal commit must survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// Written to the device, not flushed: survives the process, not the host.
    ProcessDeath,
    /// Flushed: survives a power loss.
    PowerLoss,
}

impl<D: BlockDev> Pool<D> {
    /// Refuses changes to a read-only pool or after a failed metadata write.
    pub(super) fn usable(&self) -> Result<(), PoolError> {
        if !self.writable {
            return Err(PoolError::NotWritable);
        }
        if self.failed {
            return Err(PoolError::Failed);
        }
        Ok(())
    }

    /// Applies `record` to the metadata, then queues it for the journal.
    /// Refused records change nothing.
    pub(super) fn record(&mut self, record: Record) -> Result<(), PoolError> {
        self.usable()?;
        record.validate().map_err(|e| PoolError::Format {
            what: "record".into(),
            source: e,
        })?;
        let touched = self.touched(&record);
        let hint = match record {
            Record::Map { volume, .. } | Record::Unmap { volume, .. } => Some(volume),
            _ => None,
        };
        let cs = self.meta.cluster_size();
        let owners = |meta: &Metadata| {
            touched
                .iter()
                .filter_map(|&(c, vc)| gauges::exclusive_owner(meta, c, vc, hint))
                .collect::<Vec<u32>>()
        };
        let before = owners(&self.meta);
        apply(&mut self.meta, &record)?;
        for v in before {
            self.gauges.add_exclusive(v, -1, cs);
        }
        for v in owners(&self.meta) {
            self.gauges.add_exclusive(v, 1, cs);
        }
        match (hint, hint.and_then(|id| self.meta.volume(id))) {
            // The data path: one count moves, no copy of the volume's entry.
            (Some(id), Some(v)) => self.gauges.set_allocated(id, v.map().len() * u64::from(cs)),
            _ => {
                for id in record_volumes(&record) {
                    self.gauges.refresh(&self.meta, id);
                }
            }
        }
        self.publish_space();
        if matches!(record, Record::Map { .. }) {
            self.maps_recorded += 1;
        }
        self.queue(record)
    }

    /// (cluster, virtual cluster) pairs whose exclusivity `record` may change.
    fn touched(&self, record: &Record) -> Vec<(u32, u64)> {
        let mapped = |id: u32, vc: u64| {
            self.meta
                .lookup(id, vc)
                .ok()
                .flatten()
                .map(|m| (m.pcluster, vc))
        };
        let from = |id: u32, start: u64| -> Vec<(u32, u64)> {
            self.meta.volume(id).map_or_else(Vec::new, |v| {
                v.map()
                    .iter_from(start)
                    .map(|(vc, pc)| (pc.get(), vc))
                    .collect()
            })
        };
        match *record {
            Record::Map {
                volume,
                vcluster,
                pcluster,
            } => std::iter::once((pcluster, vcluster))
                .chain(mapped(volume, vcluster))
                .collect(),
            Record::Unmap { volume, vcluster } => mapped(volume, vcluster).into_iter().collect(),
            Record::DeleteVolume { id }
            | Record::Snapshot { source: id, .. }
            | Record::Clone { source: id, .. } => from(id, 0),
            Record::Resize { id, size } => from(id, self.meta.clusters_for(size)),
            Record::Revert { id, snapshot } => {
                let mut both = from(id, 0);
                both.extend(from(snapshot, 0));
                both
            }
            Record::CreateVolume { .. } | Record::Rename { .. } | Record::DataDurable => Vec::new(),
        }
    }

    /// Queues a record already applied to the metadata.
    fn queue(&mut self, record: Record) -> Result<(), PoolError> {
        self.push_record(record)?;
        if self.sealed.len() >= MAX_SEALED_BLOCKS {
            self.commit()?;
        }
        Ok(())
    }

    /// Puts `record` in the open journal block, sealing the block when full.
    fn push_record(&mut self, record: Record) -> Result<(), PoolError> {
        match self.journal.push(record) {
            Ok(Some(full)) => self.sealed.push(full),
            Ok(None) => {}
            Err(e) => {
                // Applied but not journaled: the in-memory state is ahead of
                // anything that can become durable. Stop taking changes.
                self.failed = true;
                return Err(PoolError::Format {
                    what: "journal record".into(),
                    source: e,
                });
            }
        }
        Ok(())
    }

    /// Makes every completed write and every record so far durable (the
    /// FLUSH of the durability contract): flush the device, write the
    /// journal blocks, flush again; then released clusters become free.
    pub fn flush(&mut self) -> Result<(), PoolError> {
        self.commit()
    }

    /// Where the data of queued `Map` records stands, for
    /// [`commit_flushed`](Self::commit_flushed): read it, then flush the
    /// device without the lock (an engine's fsync), then commit.
    pub fn data_mark(&self) -> u64 {
        self.maps_recorded
    }

    /// The [`flush`](Self::flush) after the caller flushed the device itself
    /// (off this pool's lock), having read `mark` from
    /// [`data_mark`](Self::data_mark) before: the journal is written and
    /// flushed without a second data flush, unless `Map` records were queued
    /// since `mark` (their data may have completed after the caller's flush
    /// began, so the device is flushed again first, under the lock).
    pub fn commit_flushed(&mut self, mark: u64) -> Result<(), PoolError> {
        self.commit_with(Durability::PowerLoss, self.maps_recorded == mark)
    }

    /// Makes every completed write and every record so far survive the
    /// death of this process, though not yet a power loss: the pending
    /// journal blocks are written, nothing is flushed, not even the data
    /// first. A daemon restarted on the same boot replays them (the data of
    /// every `Map` completed before its record was queued, so the host has
    /// it). After a reboot, replay drops every record after the last
    /// `DataDurable` (FORMAT.md "Records not covered by a flush"): a power
    /// loss loses these writes, which a write-back cache allows until the
    /// next [`flush`](Self::flush), and never maps a cluster whose data was
    /// not durable. Released clusters stay reserved until a durable commit.
    /// Does nothing when no record is pending: writes into mapped clusters
    /// already sit in the host kernel.
    pub fn stage(&mut self) -> Result<(), PoolError> {
        if !self.has_pending_records() {
            return Ok(());
        }
        self.commit_with(Durability::ProcessDeath, false)
    }

    /// Whether records wait for a [`stage`](Self::stage) or a
    /// [`flush`](Self::flush).
    pub fn has_pending_records(&self) -> bool {
        !self.sealed.is_empty() || self.journal.pending() > 0
    }

    pub(super) fn commit(&mut self) -> Result<(), PoolError> {
        self.commit_with(Durability::PowerLoss, false)
    }

    /// `data_flushed`: every write whose `Map` is queued is already durable
    /// (a power-loss commit only: a stage flushes nothing).
    fn commit_with(&mut self, durability: Durability, data_flushed: bool) -> Result<(), PoolError> {
        self.usable()?;
        if durability == Durability::PowerLoss && (self.uncovered || self.has_pending_records()) {
            // Written after the data flush below: covers every record
            // before it, staged ones included. Not through `queue` (whose
            // forced commit would come back here).
            self.push_record(Record::DataDurable)?;
        }
        if let Some(b) = self.journal.flush_block() {
            self.sealed.push(b);
        }
        let blocks = self.layout.journal_blocks();
        if self.used_blocks + self.sealed.len() as u64 > blocks {
            return self.checkpoint_with_jump(false);
        }
        let r = self.write_journal(durability, data_flushed);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    /// The device's durability barrier (slowed by [`IoFaults::slow_sync`]).
    pub(super) fn sync(&self, what: &str) -> Result<(), PoolError> {
        if let Some(d) = self.faults.sync_delay() {
            std::thread::sleep(d);
        }
        self.dev.flush().map_err(io_err(what))
    }

    fn write_journal(
        &mut self,
        durability: Durability,
        data_flushed: bool,
    ) -> Result<(), PoolError> {
        if durability == Durability::PowerLoss && !data_flushed {
            self.sync("flushing data before a commit")?;
        }
        if !self.sealed.is_empty() {
            let blocks = self.layout.journal_blocks();
            let mut buf = AlignedBuf::new(crate::format::BLOCK_SIZE);
            for b in std::mem::take(&mut self.sealed) {
                let image = b.encode().map_err(|source| PoolError::Format {
                    what: "journal block".into(),
                    source,
                })?;
                buf.copy_from_slice(&image);
                let off = self
                    .layout
                    .journal_block_offset(self.next_block)
                    .unwrap_or(0);
                // A stage need only survive this process: through the
                // page cache, without waiting for the device under the lock.
                let written = match durability {
                    Durability::ProcessDeath => self.dev.write_cached(&buf, off),
                    Durability::PowerLoss => self.dev.write_at(&buf, off),
                };
                written.map_err(io_err(format!("writing journal block {}", self.next_block)))?;
                self.next_block = (self.next_block + 1) % blocks;
                self.used_blocks += 1;
                self.stats.journal_blocks_written += 1;
            }
            if durability == Durability::ProcessDeath {
                self.stats.stages += 1;
                self.uncovered = true;
                return Ok(());
            }
            self.sync("flushing the journal")?;
            self.uncovered = false;
        }
        self.stats.commits += 1;
        self.release_committed();
        Ok(())
    }

    /// Released clusters become free, except pinned ones (rule 3 plus
    /// in-flight engine I/O).
    pub(super) fn release_committed(&mut self) {
        let pins = &self.pins;
        self.meta.commit_except(|c| pins.contains_key(&c));
        self.publish_space();
    }
}

/// Volumes whose listed figures `record` changes.
fn record_volumes(record: &Record) -> Vec<u32> {
    match *record {
        Record::Map { volume, .. } | Record::Unmap { volume, .. } => vec![volume],
        Record::CreateVolume { id, .. }
        | Record::DeleteVolume { id }
        | Record::Resize { id, .. }
        | Record::Rename { id, .. }
        | Record::Snapshot { id, .. }
        | Record::Clone { id, .. }
        | Record::Revert { id, .. } => vec![id],
        Record::DataDurable => Vec::new(),
    }
}
