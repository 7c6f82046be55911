//! Checkpoints: the whole metadata written to free clusters and published
//! by a superblock write (FORMAT.md "Checkpoint"), and the metadata reserve
//! that keeps one always possible.

use super::error::io_err;
use super::{Pool, PoolError};
use crate::dev::{AlignedBuf, BlockDev};
use crate::format::checkpoint::{
    self, clusters_needed, encode_link, Image, LinkHeader, Run, VolumeImage, VolumeKindCode,
};
use crate::format::journal::{RECORD_HEADER_LEN, RECORD_SPACE};
use crate::format::JournalWriter;
use crate::meta::VolumeKind;

/// Upper bound of records in one journal block (the smallest record,
/// `DataDurable`, is its 4-byte header).
const MAX_RECORDS_PER_BLOCK: u64 = (RECORD_SPACE / RECORD_HEADER_LEN) as u64;

impl<D: BlockDev> Pool<D> {
    /// Writes a checkpoint of the whole metadata and empties the journal.
    pub fn checkpoint(&mut self) -> Result<(), PoolError> {
        self.usable()?;
        self.checkpoint_with_jump(false)
    }

    pub(super) fn checkpoint_with_jump(&mut self, jump: bool) -> Result<(), PoolError> {
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
        // This session's journal blocks follow (FORMAT.md "Records not
        // covered by a flush"); an older pool is written as the current
        // version from here on.
        sb.version = crate::format::superblock::FORMAT_VERSION;
        sb.boot_id = self.dev.boot_id();
        self.dev
            .write_at(&AlignedBuf::from_slice(&sb.encode()), sb.slot())
            .map_err(io_err("writing the superblock"))?;
        self.sync("flushing the superblock")?;
        // Published: everything up to `seq` is durable in the checkpoint.
        self.sb = sb;
        self.journal = JournalWriter::new(seq);
        self.sealed.clear();
        self.uncovered = false;
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
    pub(super) fn reserve_for(
        &mut self,
        clusters: u64,
        extra_bytes: usize,
    ) -> Result<(), PoolError> {
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
