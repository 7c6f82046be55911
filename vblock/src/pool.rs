//! The pool: FORMAT.md's write paths on a [`BlockDev`].
//!
//! [`Pool`] owns the device and the in-memory [`Metadata`]. Control
//! operations (create, delete, resize, rename, snapshot, clone) append their
//! journal record and commit it before they return. Data writes append `Map`
//! / `Unmap` records that become durable at the next [`Pool::flush`]
//! (FORMAT.md "Write paths"):
//!
//! - a cluster is mapped only after its whole contents were written (rule 2);
//! - a commit is: flush the device (data durable), write the journal blocks,
//!   flush again; only then do released clusters become free (rules 1, 3);
//! - a shared cluster is never written: copy-on-write (rule 4);
//! - when the journal ring is full, a checkpoint replaces it (rule 5: replay
//!   is bounded by the ring).
//!
//! After any failed metadata write the pool refuses further changes
//! ([`PoolError::Failed`]): what is durable is then unknown, and the next
//! open replays the journal to find out.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;

use crate::dev::{AlignedBuf, BlockDev};
use crate::format::checkpoint::{
    self, clusters_needed, encode_link, Image, LinkHeader, Run, VolumeImage, VolumeKindCode,
};
use crate::format::journal::RECORD_SPACE;
use crate::format::superblock::MAX_CLUSTERS;
use crate::format::{FormatError, JournalBlock, JournalWriter, Layout, Record, Superblock};
use crate::meta::{MetaError, Metadata, VolumeKind};

mod data;
mod gauges;
mod load;
#[cfg(test)]
mod tests;

pub use data::{pieces, Piece, WritePlan};
pub use gauges::PoolGauges;
pub use load::Loaded;

/// Default cluster size: 16 KiB (README "Cluster size": the smallest that
/// meets the first-write and copy-on-write goals, 4x less metadata than 4 KiB).
pub const DEFAULT_CLUSTER_SIZE: u32 = 16 * 1024;
/// Default journal length: 64 MiB, or 1/16 of a small device (at least 64 KiB).
pub const DEFAULT_JOURNAL_LEN: u64 = 64 << 20;

/// Sealed journal blocks kept in memory before a commit is forced: bounds
/// memory and the metadata a guest that never flushes can lose.
const MAX_SEALED_BLOCKS: usize = 64;

/// Upper bound of records in one journal block (the smallest record is 8 bytes).
const MAX_RECORDS_PER_BLOCK: u64 = (RECORD_SPACE / 8) as u64;

/// How to create a pool.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Power of two, 4 KiB..=2 MiB.
    pub cluster_size: u32,
    /// Journal ring length; `None`: [`DEFAULT_JOURNAL_LEN`] scaled to the device.
    pub journal_len: Option<u64>,
    /// Pool UUID; `None`: random.
    pub uuid: Option<[u8; 16]>,
}

impl PoolOptions {
    /// The layout [`Pool::create`] would give a device of `device_len`
    /// bytes, or why it cannot (checked before touching the device).
    pub fn layout(&self, device_len: u64) -> Result<Layout, PoolError> {
        let journal_len = self.journal_len.unwrap_or_else(|| {
            DEFAULT_JOURNAL_LEN
                .min((device_len / 16) & !4095)
                .max(64 * 1024)
        });
        let bad = |source| PoolError::Format {
            what: "new pool".into(),
            source,
        };
        let layout = Layout::new(device_len, self.cluster_size, journal_len).map_err(bad)?;
        if layout.clusters >= MAX_CLUSTERS {
            return Err(bad(FormatError::Invalid {
                field: "clusters",
                reason: format!(
                    "{} clusters are too many; choose a larger cluster size",
                    layout.clusters
                ),
            }));
        }
        Ok(layout)
    }
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            cluster_size: DEFAULT_CLUSTER_SIZE,
            journal_len: None,
            uuid: None,
        }
    }
}

/// Why a pool operation failed.
#[derive(Debug)]
pub enum PoolError {
    /// The device failed.
    Io { what: String, source: io::Error },
    /// An on-disk structure does not follow FORMAT.md.
    Format { what: String, source: FormatError },
    /// Structures parse but contradict each other (e.g. a journal record
    /// that names an unknown volume).
    Corrupt { what: String, reason: String },
    /// The metadata refused the operation; nothing changed.
    Refused(MetaError),
    /// No volume with this name.
    NoSuchVolume(String),
    /// Not enough free clusters for this request; nothing changed.
    OutOfSpace { needed: u64, free: u64 },
    /// Offset or length not a multiple of 512.
    Unaligned { offset: u64, len: u64 },
    /// The range ends beyond the volume.
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// A data request larger than the engine takes in one go.
    TooLarge { len: u64, max: u64 },
    /// Writes to a snapshot.
    ReadOnly(String),
    /// Shrinking loses data: needs `force`.
    ShrinkNeedsForce {
        name: String,
        size: u64,
        new_size: u64,
    },
    /// Opened read-only (inspection).
    NotWritable,
    /// An earlier metadata write failed; the pool takes no more changes.
    Failed,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { what, source } => write!(f, "I/O error {what}: {source}"),
            Self::Format { what, source } => write!(f, "{what}: {source}"),
            Self::Corrupt { what, reason } => write!(f, "corrupt {what}: {reason}"),
            Self::Refused(e) => write!(f, "{e}"),
            Self::NoSuchVolume(n) => write!(f, "no volume named {n:?}"),
            Self::OutOfSpace { needed, free } => write!(
                f,
                "out of space: the request needs {needed} free clusters, the pool has {free} (net of the metadata reserve)"
            ),
            Self::Unaligned { offset, len } => write!(
                f,
                "request of {len} bytes at {offset}: offset and length must be multiples of 512"
            ),
            Self::OutOfRange { offset, len, size } => write!(
                f,
                "request of {len} bytes at {offset} ends beyond the volume ({size} bytes)"
            ),
            Self::TooLarge { len, max } => write!(
                f,
                "request of {len} bytes is larger than the {max} bytes one request may move"
            ),
            Self::ReadOnly(n) => write!(f, "volume {n:?} is a read-only snapshot"),
            Self::ShrinkNeedsForce {
                name,
                size,
                new_size,
            } => write!(
                f,
                "shrinking {name:?} from {size} to {new_size} bytes discards data; ask with force (--force)"
            ),
            Self::NotWritable => write!(f, "the pool is open read-only"),
            Self::Failed => write!(
                f,
                "an earlier metadata write failed; reopen the pool to recover"
            ),
        }
    }
}

impl std::error::Error for PoolError {}

impl From<MetaError> for PoolError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::OutOfSpace => Self::OutOfSpace { needed: 1, free: 0 },
            e => Self::Refused(e),
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> PoolError {
    let what = what.into();
    move |source| PoolError::Io { what, source }
}

/// Pool-wide space figures, in bytes unless named otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSpace {
    pub cluster_size: u32,
    /// Data clusters (cluster 0 is reserved).
    pub clusters: u64,
    pub used_clusters: u64,
    pub free_clusters: u64,
    /// Freed by records not yet durable; free after the next flush.
    pub releasing_clusters: u64,
    /// Held by the current checkpoint.
    pub metadata_clusters: u64,
    /// Sum of the volumes' virtual sizes (may exceed the capacity: over-commit).
    pub provisioned: u64,
    /// Capacity: clusters * cluster size.
    pub capacity: u64,
}

/// One volume as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub id: u32,
    pub name: String,
    pub kind: VolumeKind,
    pub size: u64,
    pub block_size: u32,
    pub read_only: bool,
    /// Bytes of mapped clusters.
    pub allocated: u64,
    /// Bytes of mapped clusters no other volume shares.
    pub exclusive: u64,
}

/// Volume `id` of `meta` with `exclusive` bytes as given: the caller knows
/// them (a walk of the maps, or the gauges' running count); the rest is O(1)
/// apart from the name.
fn volume_info(meta: &Metadata, id: u32, exclusive: u64) -> Option<VolumeInfo> {
    let v = meta.volume(id)?;
    Some(VolumeInfo {
        id,
        name: v.name().to_owned(),
        kind: v.kind(),
        size: v.size(),
        block_size: v.block_size(),
        read_only: v.read_only(),
        allocated: v.map().len() * u64::from(meta.cluster_size()),
        exclusive,
    })
}

/// Applies one journal record to the metadata (replay and the live path).
pub(crate) fn apply(meta: &mut Metadata, record: &Record) -> Result<(), MetaError> {
    match record {
        Record::Map {
            volume,
            vcluster,
            pcluster,
        } => meta.map(*volume, *vcluster, *pcluster).map(drop),
        Record::Unmap { volume, vcluster } => meta.unmap(*volume, *vcluster).map(drop),
        Record::CreateVolume {
            id,
            name,
            size,
            block_size,
        } => meta.create_volume(*id, name, *size, *block_size),
        Record::DeleteVolume { id } => meta.delete_volume(*id),
        Record::Resize { id, size } => meta.resize(*id, *size),
        Record::Rename { id, name } => meta.rename(*id, name),
        Record::Snapshot { source, id, name } => meta.snapshot(*source, *id, name),
        Record::Clone { source, id, name } => meta.clone_volume(*source, *id, name),
    }
}

/// A thin pool on a block device. See the module documentation.
pub struct Pool<D: BlockDev> {
    dev: D,
    layout: Layout,
    sb: Superblock,
    meta: Metadata,
    /// Clusters of the current checkpoint (held in `meta`).
    checkpoint: Vec<u32>,
    journal: JournalWriter,
    /// Full blocks waiting for the next commit (written only after a data
    /// flush: a `Map` must never be durable before its data).
    sealed: Vec<JournalBlock>,
    /// Ring index the next journal block goes to.
    next_block: u64,
    /// Blocks written since the head (the ring is full at `journal_blocks`).
    used_blocks: u64,
    next_id: u32,
    writable: bool,
    failed: bool,
    stats: PoolStats,
    /// Clusters with I/O in flight from an engine, and how many: a pinned
    /// cluster that is released stays releasing until unpinned.
    pins: HashMap<u32, u32>,
    /// (volume, virtual cluster) with an allocating write in flight: other
    /// writes to it wait, or the later `Map` would drop the earlier data.
    allocating: HashSet<(u32, u64)>,
    faults: std::sync::Arc<IoFaults>,
    /// `Map` records queued so far: an engine's flush reads it before its
    /// fsync ([`data_mark`](Self::data_mark)) to know whether that fsync
    /// covers the data of every `Map` it is about to commit.
    maps_recorded: u64,
    /// Space figures for readers that do not take this pool's lock.
    gauges: std::sync::Arc<PoolGauges>,
}

/// Injected I/O errors for the asynchronous engine (tests and fault drills):
/// an operation touching a listed byte range of the device completes with
/// EIO instead of reaching the kernel, as a failing disk sector would.
/// Costs one relaxed load per operation while nothing is armed.
#[derive(Debug, Default)]
pub struct IoFaults {
    armed: std::sync::atomic::AtomicBool,
    ranges: std::sync::Mutex<Vec<std::ops::Range<u64>>>,
    /// Extra time every device flush takes, in microseconds (a slow disk).
    sync_delay_us: std::sync::atomic::AtomicU64,
}

impl IoFaults {
    /// Operations touching `range` (device bytes) fail with EIO from now on.
    pub fn fail(&self, range: std::ops::Range<u64>) {
        self.ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(range);
        self.armed.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Removes every injected error.
    pub fn clear(&self) {
        self.ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.armed
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Every device flush (the engine's fsync and the pool's own) takes
    /// `delay` longer from now on, as on a disk slow to empty its cache.
    pub fn slow_sync(&self, delay: std::time::Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.sync_delay_us
            .store(us, std::sync::atomic::Ordering::Relaxed);
    }

    /// The injected flush delay, if any.
    pub fn sync_delay(&self) -> Option<std::time::Duration> {
        match self
            .sync_delay_us
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            us => Some(std::time::Duration::from_micros(us)),
        }
    }

    /// True if `[offset, offset + len)` touches a failing range.
    pub fn hits(&self, offset: u64, len: u64) -> bool {
        if !self.armed.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let end = offset.saturating_add(len);
        self.ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|r| r.start < end && offset < r.end)
    }
}

/// What a journal commit must survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// Written to the device, not flushed: survives the process, not the host.
    ProcessDeath,
    /// Flushed: survives a power loss.
    PowerLoss,
}

/// Counters of the pool's own work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub commits: u64,
    /// Journal writes without the final flush ([`Pool::stage`]).
    pub stages: u64,
    pub journal_blocks_written: u64,
    pub checkpoints: u64,
    /// Clusters written whole because a write reached an unmapped cluster.
    pub allocations: u64,
    /// Of those, copies of a shared cluster.
    pub copies_on_write: u64,
}

impl<D: BlockDev> Pool<D> {
    /// Formats `dev` as an empty pool. Everything the pool needs is written
    /// and flushed before this returns.
    pub fn create(dev: D, opts: &PoolOptions) -> Result<Pool<D>, PoolError> {
        let layout = opts.layout(dev.len())?;
        let uuid = opts.uuid.unwrap_or_else(random_uuid);
        let mut sb = Superblock::new(&layout, uuid);
        // Sequence numbers start at a random point below 2^48, so blocks an
        // earlier pool left on the device cannot continue this pool's journal.
        sb.ckpt_seq = u64::from_le_bytes(random_uuid()[..8].try_into().unwrap_or_default()) >> 16;
        // Wipe the first journal block and the other superblock copy so that
        // nothing of an earlier pool on the device is ever replayed.
        let zero = AlignedBuf::new(crate::format::BLOCK_SIZE);
        dev.write_at(&zero, layout.journal_off)
            .map_err(io_err("wiping the journal"))?;
        sb.generation = 1;
        dev.write_at(&zero, 0)
            .map_err(io_err("wiping superblock A"))?;
        dev.write_at(&AlignedBuf::from_slice(&sb.encode()), sb.slot())
            .map_err(io_err("writing the superblock"))?;
        dev.flush().map_err(io_err("flushing the new pool"))?;
        let loaded = load::load(&dev)?;
        let mut pool = Self::from_loaded(dev, loaded, true);
        // A first checkpoint also moves the sequence numbers past anything an
        // earlier pool left in the ring.
        pool.checkpoint_with_jump(true)?;
        Ok(pool)
    }

    /// Opens a pool for reading and writing: loads the checkpoint, replays
    /// the journal, then writes a new checkpoint whose sequence numbers jump
    /// past anything a crashed session may have left beyond the replayed end
    /// (so no stale block can ever be replayed later).
    pub fn open(dev: D) -> Result<Pool<D>, PoolError> {
        let loaded = load::load(&dev)?;
        let mut pool = Self::from_loaded(dev, loaded, true);
        pool.checkpoint_with_jump(true)?;
        Ok(pool)
    }

    /// Opens a pool without writing anything (inspection, `check`, `dump`):
    /// every change is refused with [`PoolError::NotWritable`].
    pub fn open_read_only(dev: D) -> Result<(Pool<D>, Loaded), PoolError> {
        let loaded = load::load(&dev)?;
        let pool = Self::from_loaded(dev, loaded.clone(), false);
        Ok((pool, loaded))
    }

    fn from_loaded(dev: D, l: Loaded, writable: bool) -> Pool<D> {
        let blocks = l.layout.journal_blocks();
        let next_id = l.meta.volumes().map(|v| v.id()).max().unwrap_or(0) + 1;
        let gauges = std::sync::Arc::new(PoolGauges::new(space_of(&l.meta, 0), &l.meta));
        let pool = Pool {
            dev,
            next_block: (l.sb.journal_head + l.replayed_blocks) % blocks,
            used_blocks: l.replayed_blocks,
            layout: l.layout,
            sb: l.sb,
            meta: l.meta,
            checkpoint: l.checkpoint,
            journal: JournalWriter::new(l.next_seq),
            sealed: Vec::new(),
            next_id,
            writable,
            failed: false,
            stats: PoolStats::default(),
            pins: HashMap::new(),
            allocating: HashSet::new(),
            faults: std::sync::Arc::default(),
            maps_recorded: 0,
            gauges,
        };
        pool.publish_space();
        pool
    }

    /// The device.
    pub fn dev(&self) -> &D {
        &self.dev
    }

    /// Where everything lives.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The superblock last written (or read).
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The metadata (read-only view).
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// Injected I/O errors seen by the asynchronous engines of this pool.
    pub fn io_faults(&self) -> &std::sync::Arc<IoFaults> {
        &self.faults
    }

    /// Journal blocks written since the last checkpoint (the ring holds
    /// [`Layout::journal_blocks`]; replay after a crash reads these).
    pub fn journal_used_blocks(&self) -> u64 {
        self.used_blocks
    }

    /// Counters.
    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Pool-wide space figures.
    pub fn space(&self) -> PoolSpace {
        space_of(&self.meta, self.checkpoint.len() as u64)
    }

    /// The space figures kept for readers that must not take this pool's
    /// lock (metrics); they follow every change.
    pub fn gauges(&self) -> &std::sync::Arc<PoolGauges> {
        &self.gauges
    }

    fn publish_space(&self) {
        self.gauges.set_space(self.space());
    }

    /// Every volume, by id.
    pub fn volumes(&self) -> Vec<VolumeInfo> {
        self.meta
            .volumes()
            .filter_map(|v| self.info(v.id()))
            .collect()
    }

    /// One volume by name.
    pub fn volume(&self, name: &str) -> Result<VolumeInfo, PoolError> {
        let id = self.id(name)?;
        self.info(id)
            .ok_or_else(|| PoolError::NoSuchVolume(name.into()))
    }

    fn info(&self, id: u32) -> Option<VolumeInfo> {
        let u = self.meta.usage(id).ok()?;
        volume_info(
            &self.meta,
            id,
            u.exclusive * u64::from(self.meta.cluster_size()),
        )
    }

    /// Id of the volume named `name`.
    pub fn id(&self, name: &str) -> Result<u32, PoolError> {
        self.meta
            .volume_by_name(name)
            .map(|v| v.id())
            .ok_or_else(|| PoolError::NoSuchVolume(name.into()))
    }

    // ---- control operations: record, apply, commit before returning ----

    /// Creates an empty volume (reads as zeros). Over-commit is allowed:
    /// [`PoolSpace::provisioned`] reports it.
    pub fn create_volume(
        &mut self,
        name: &str,
        size: u64,
        block_size: u32,
    ) -> Result<u32, PoolError> {
        let id = self.next_id;
        self.reserve_for(
            0,
            crate::format::checkpoint::Image::volume_len(name.len(), 0),
        )?;
        self.record(Record::CreateVolume {
            id,
            name: name.into(),
            size,
            block_size,
        })?;
        self.next_id += 1;
        self.commit()?;
        Ok(id)
    }

    /// Deletes a volume; clusters no other volume shares return to the pool
    /// (no data is copied, also when clones share them).
    pub fn delete_volume(&mut self, name: &str) -> Result<(), PoolError> {
        let id = self.id(name)?;
        self.record(Record::DeleteVolume { id })?;
        self.commit()
    }

    /// Grows or shrinks a volume. Shrinking needs `force`: the clusters
    /// beyond the new end are released and the tail of the last one zeroed,
    /// so growing again reads zeros there.
    pub fn resize(&mut self, name: &str, size: u64, force: bool) -> Result<(), PoolError> {
        let id = self.id(name)?;
        let v = self
            .meta
            .volume(id)
            .ok_or_else(|| PoolError::NoSuchVolume(name.into()))?;
        let old = v.size();
        if v.read_only() {
            return Err(PoolError::ReadOnly(name.into()));
        }
        if size < old {
            if !force {
                return Err(PoolError::ShrinkNeedsForce {
                    name: name.into(),
                    size: old,
                    new_size: size,
                });
            }
            // Validate the new size before zeroing anything.
            if size == 0 || !size.is_multiple_of(u64::from(v.block_size())) {
                return Err(PoolError::Refused(MetaError::InvalidSize(size)));
            }
            let cs = u64::from(self.meta.cluster_size());
            let tail_end = size.next_multiple_of(cs).min(old);
            if tail_end > size {
                self.zero_range(id, size, tail_end - size, false)?;
            }
        }
        self.record(Record::Resize { id, size })?;
        self.commit()
    }

    /// Renames a volume.
    pub fn rename(&mut self, name: &str, new_name: &str) -> Result<(), PoolError> {
        let id = self.id(name)?;
        self.record(Record::Rename {
            id,
            name: new_name.into(),
        })?;
        self.commit()
    }

    /// Read-only snapshot of `source` as it is now (everything written before
    /// is flushed first). Copies no data.
    pub fn snapshot(&mut self, source: &str, name: &str) -> Result<u32, PoolError> {
        self.copy(source, name, true)
    }

    /// Writable clone of `source` (a volume, snapshot or clone). Copies no data.
    pub fn clone_volume(&mut self, source: &str, name: &str) -> Result<u32, PoolError> {
        self.copy(source, name, false)
    }

    fn copy(&mut self, source: &str, name: &str, snapshot: bool) -> Result<u32, PoolError> {
        let src = self.id(source)?;
        let entries = self.meta.volume(src).map_or(0, |v| v.map().len());
        let runs = usize::try_from(entries).unwrap_or(usize::MAX);
        self.reserve_for(0, Image::volume_len(name.len(), runs))?;
        let id = self.next_id;
        let name = name.to_owned();
        self.record(if snapshot {
            Record::Snapshot {
                source: src,
                id,
                name,
            }
        } else {
            Record::Clone {
                source: src,
                id,
                name,
            }
        })?;
        self.next_id += 1;
        self.commit()?;
        Ok(id)
    }

    // ---- journal and checkpoints ----

    fn usable(&self) -> Result<(), PoolError> {
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
    fn record(&mut self, record: Record) -> Result<(), PoolError> {
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
            Record::CreateVolume { .. } | Record::Rename { .. } => Vec::new(),
        }
    }

    /// Queues a record already applied to the metadata.
    fn queue(&mut self, record: Record) -> Result<(), PoolError> {
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
        if self.sealed.len() >= MAX_SEALED_BLOCKS {
            self.commit()?;
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
    /// death of this process, though not yet a power loss: flush the device,
    /// write the pending journal blocks, but do not flush them. A restarted
    /// daemon replays them; a power loss may drop them, which a write-back
    /// cache allows until the next [`flush`](Self::flush), and never exposes
    /// data that was not durable first (the data flush comes before the
    /// journal write, and journal blocks become durable in ring order at the
    /// next flush). Released clusters stay reserved until a durable commit.
    /// Does nothing, not even the data flush, when no record is pending:
    /// writes into mapped clusters already sit in the host kernel.
    pub fn stage(&mut self) -> Result<(), PoolError> {
        self.stage_flushed(u64::MAX)
    }

    /// [`stage`](Self::stage) after the caller flushed the device itself, as
    /// for [`commit_flushed`](Self::commit_flushed).
    pub fn stage_flushed(&mut self, mark: u64) -> Result<(), PoolError> {
        if !self.has_pending_records() {
            return Ok(());
        }
        self.commit_with(Durability::ProcessDeath, self.maps_recorded == mark)
    }

    /// Whether records wait for a [`stage`](Self::stage) or a
    /// [`flush`](Self::flush).
    pub fn has_pending_records(&self) -> bool {
        !self.sealed.is_empty() || self.journal.pending() > 0
    }

    fn commit(&mut self) -> Result<(), PoolError> {
        self.commit_with(Durability::PowerLoss, false)
    }

    /// `data_flushed`: every write whose `Map` is queued is already durable.
    fn commit_with(&mut self, durability: Durability, data_flushed: bool) -> Result<(), PoolError> {
        self.usable()?;
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
    fn sync(&self, what: &str) -> Result<(), PoolError> {
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
        if !data_flushed {
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
                self.dev
                    .write_at(&buf, off)
                    .map_err(io_err(format!("writing journal block {}", self.next_block)))?;
                self.next_block = (self.next_block + 1) % blocks;
                self.used_blocks += 1;
                self.stats.journal_blocks_written += 1;
            }
            if durability == Durability::ProcessDeath {
                self.stats.stages += 1;
                return Ok(());
            }
            self.sync("flushing the journal")?;
        }
        self.stats.commits += 1;
        self.release_committed();
        Ok(())
    }

    /// Released clusters become free, except pinned ones (rule 3 plus
    /// in-flight engine I/O).
    fn release_committed(&mut self) {
        let pins = &self.pins;
        self.meta.commit_except(|c| pins.contains_key(&c));
        self.publish_space();
    }

    /// Writes a checkpoint of the whole metadata and empties the journal.
    pub fn checkpoint(&mut self) -> Result<(), PoolError> {
        self.usable()?;
        self.checkpoint_with_jump(false)
    }

    fn checkpoint_with_jump(&mut self, jump: bool) -> Result<(), PoolError> {
        let r = self.write_checkpoint(jump);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    /// FORMAT.md "Checkpoint": written to free clusters, flushed, then
    /// published by a superblock write (flushed); only then is the old
    /// checkpoint released. Pending journal records are folded in, not written.
    fn write_checkpoint(&mut self, jump: bool) -> Result<(), PoolError> {
        // Refused before anything is written: a generation past the highest
        // would be rejected by the next open (FORMAT.md "Superblock").
        let generation = self
            .sb
            .generation
            .checked_add(1)
            .filter(|&g| g <= crate::format::superblock::MAX_GENERATION)
            .ok_or_else(|| PoolError::Corrupt {
                what: "superblock".into(),
                reason: format!(
                    "generation {} cannot be incremented: no superblock can be written",
                    self.sb.generation
                ),
            })?;
        self.sync("flushing data before a checkpoint")?;
        let payload = self.image().encode();
        let cs = self.meta.cluster_size();
        let n = clusters_needed(payload.len(), cs);
        let mut chain = Vec::with_capacity(n);
        for _ in 0..n {
            match self.meta.allocate() {
                Ok(c) => chain.push(c),
                Err(e) => {
                    for &c in &chain {
                        let _ = self.meta.abandon(c);
                    }
                    return Err(e.into());
                }
            }
        }
        let mut seq = self.journal.next_seq();
        if jump {
            seq = seq.saturating_add(self.layout.journal_blocks() * MAX_RECORDS_PER_BLOCK + 1);
        }
        let mut buf = AlignedBuf::new(cs as usize);
        let per = checkpoint::payload_per_cluster(cs);
        for (i, &c) in chain.iter().enumerate() {
            let part = payload
                .get(i * per..((i + 1) * per).min(payload.len()))
                .unwrap_or_default();
            let header = LinkHeader {
                index: i as u32,
                seq,
                next: chain.get(i + 1).copied().unwrap_or(0),
                used: part.len() as u32,
            };
            encode_link(&mut buf, header, part);
            let off = self.layout.cluster_offset(u64::from(c)).unwrap_or(0);
            if let Err(e) = self.dev.write_at(&buf, off) {
                for &c in &chain {
                    let _ = self.meta.abandon(c);
                }
                return Err(PoolError::Io {
                    what: format!("writing checkpoint cluster {c}"),
                    source: e,
                });
            }
        }
        self.sync("flushing the checkpoint")?;
        let mut sb = self.sb;
        sb.generation = generation;
        sb.checkpoint = u64::from(chain[0]);
        sb.ckpt_seq = seq;
        sb.journal_head = self.next_block;
        self.dev
            .write_at(&AlignedBuf::from_slice(&sb.encode()), sb.slot())
            .map_err(io_err("writing the superblock"))?;
        self.sync("flushing the superblock")?;
        // Published: everything up to `seq` is durable in the checkpoint.
        self.sb = sb;
        self.journal = JournalWriter::new(seq);
        self.sealed.clear();
        self.used_blocks = 0;
        self.release_committed();
        for c in std::mem::replace(&mut self.checkpoint, chain) {
            self.meta.release_held(c)?;
        }
        self.stats.checkpoints += 1;
        self.stats.commits += 1;
        self.publish_space();
        Ok(())
    }

    /// The metadata as a checkpoint image.
    fn image(&self) -> Image {
        let volumes = self
            .meta
            .volumes()
            .map(|v| {
                let mut runs: Vec<Run> = Vec::new();
                for (vc, pc) in v.map().iter() {
                    let pc = pc.get();
                    match runs.last_mut() {
                        Some(r)
                            if r.vstart + u64::from(r.len) == vc
                                && r.pstart.checked_add(r.len) == Some(pc)
                                && r.len < u32::MAX =>
                        {
                            r.len += 1
                        }
                        _ => runs.push(Run {
                            vstart: vc,
                            pstart: pc,
                            len: 1,
                        }),
                    }
                }
                VolumeImage {
                    id: v.id(),
                    kind: match v.kind() {
                        VolumeKind::Volume => VolumeKindCode::Volume,
                        VolumeKind::Snapshot => VolumeKindCode::Snapshot,
                        VolumeKind::Clone => VolumeKindCode::Clone,
                    },
                    name: v.name().to_owned(),
                    size: v.size(),
                    block_size: v.block_size(),
                    runs,
                }
            })
            .collect();
        Image { volumes }
    }

    /// Clusters a checkpoint of the current metadata plus `extra_entries`
    /// more map entries and `extra_bytes` needs at most (every entry as its
    /// own run).
    fn checkpoint_bound(&self, extra_entries: u64, extra_bytes: usize) -> u64 {
        let entries = self.meta.mapped_entries() + extra_entries;
        let fixed: usize = 4 + self
            .meta
            .volumes()
            .map(|v| Image::volume_len(v.name().len(), 0))
            .sum::<usize>();
        let bytes = (fixed + extra_bytes) as u64 + entries * checkpoint::RUN_LEN as u64;
        let per = checkpoint::payload_per_cluster(self.meta.cluster_size()) as u64;
        bytes.div_ceil(per).max(1)
    }

    /// Refuses with [`PoolError::OutOfSpace`] unless `clusters` can be
    /// allocated and a checkpoint of the result still fits (the metadata
    /// reserve: without it a full pool could not checkpoint, so a full
    /// journal would stop even deletes). Commits first if released clusters
    /// would make the difference.
    fn reserve_for(&mut self, clusters: u64, extra_bytes: usize) -> Result<(), PoolError> {
        let need = clusters + self.checkpoint_bound(clusters, extra_bytes);
        let free = u64::from(self.meta.allocator().free());
        if free >= need {
            return Ok(());
        }
        if free + u64::from(self.meta.allocator().releasing()) >= need {
            self.commit()?;
            if u64::from(self.meta.allocator().free()) >= need {
                return Ok(());
            }
        }
        let free = u64::from(self.meta.allocator().free());
        Err(PoolError::OutOfSpace {
            needed: clusters,
            free: free.saturating_sub(need - clusters),
        })
    }
}

/// Space figures of `meta` (`metadata_clusters`: the checkpoint's).
fn space_of(meta: &Metadata, metadata_clusters: u64) -> PoolSpace {
    let a = meta.allocator();
    let cs = meta.cluster_size();
    PoolSpace {
        cluster_size: cs,
        clusters: u64::from(a.total()),
        used_clusters: u64::from(a.used()),
        free_clusters: u64::from(a.free()),
        releasing_clusters: u64::from(a.releasing()),
        metadata_clusters,
        provisioned: meta.volumes().map(|v| v.size()).sum(),
        capacity: u64::from(a.total()) * u64::from(cs),
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
        | Record::Clone { id, .. } => vec![id],
    }
}

/// A random v4 UUID from the kernel's generator.
fn random_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    // SAFETY: getrandom writes at most `u.len()` bytes into `u`.
    let n = unsafe { libc::getrandom(u.as_mut_ptr().cast(), u.len(), 0) };
    if n != u.len() as isize {
        // No entropy source: fall back to time and pid, still unique enough
        // to tell pools apart.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        u.copy_from_slice(&(t ^ (u128::from(std::process::id()) << 64)).to_le_bytes());
    }
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}
