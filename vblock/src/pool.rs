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
//!
//! One file per stage: `load` reads a pool back (superblocks, checkpoint,
//! replay), `volumes` the control operations, `data` the synchronous data
//! path and the engines' planning, `commit` records into the journal and
//! flush/stage, `checkpoint` the checkpoint and the metadata reserve;
//! `info`, `gauges`, `faults` and `error` are what the pool reports; `full`
//! what a full pool does with a request that needs space. This
//! file holds the pool itself: create, open, accessors.

use std::collections::{HashMap, HashSet};

use crate::dev::{AlignedBuf, BlockDev};
use crate::format::superblock::MAX_CLUSTERS;
use crate::format::{FormatError, JournalBlock, JournalWriter, Layout, Superblock};
use crate::meta::Metadata;

mod checkpoint;
mod commit;
mod data;
mod error;
mod faults;
mod full;
mod gauges;
mod info;
mod load;
#[cfg(test)]
mod tests;
mod volumes;

pub use data::{pieces, Piece, WritePlan};
pub use error::PoolError;
pub use faults::IoFaults;
pub use full::{used_percent, OnFull, SpaceWatch, DEFAULT_WARN_PERCENT};
pub use gauges::PoolGauges;
pub use info::{PoolSpace, VolumeInfo};
pub use load::Loaded;

use error::io_err;
use info::space_of;

/// Default cluster size: 16 KiB (README "Cluster size": the smallest that
/// meets the first-write and copy-on-write goals, 4x less metadata than 4 KiB).
pub const DEFAULT_CLUSTER_SIZE: u32 = 16 * 1024;
/// Default journal length: 64 MiB, or 1/16 of a small device (at least 64 KiB).
pub const DEFAULT_JOURNAL_LEN: u64 = 64 << 20;

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
    /// Journal blocks were staged (written without a data flush) since the
    /// last `DataDurable` record: the next commit writes one even if no
    /// other record is pending, or a reboot would drop the staged ones.
    uncovered: bool,
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
            uncovered: false,
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
}

/// A random v4 UUID from the kernel's generator.
pub(crate) fn random_uuid() -> [u8; 16] {
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
