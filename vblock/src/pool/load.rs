//! Reading a pool back: superblock copies, checkpoint chain, journal replay.
//! Shared by [`Pool::open`](super::Pool::open) and the read-only inspection
//! of `vblock check` / `dump`. Nothing here writes.

use super::error::io_err;
use super::PoolError;
use crate::dev::{AlignedBuf, BlockDev};
use crate::format::checkpoint::{decode_link, Image, VolumeKindCode};
use crate::format::superblock::SLOT_B;
use crate::format::{replay, FormatError, Layout, Record, ReplayStop, Superblock, BLOCK_SIZE};
use crate::meta::{MetaError, Metadata, VolumeKind};

/// What loading found, besides the metadata.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub sb: Superblock,
    pub layout: Layout,
    pub meta: Metadata,
    /// Clusters of the checkpoint chain, in chain order (held in `meta`).
    pub checkpoint: Vec<u32>,
    /// Journal blocks replayed after the checkpoint.
    pub replayed_blocks: u64,
    /// Records replayed.
    pub replayed_records: u64,
    /// Records dropped: written on an earlier boot of the host after its
    /// last `DataDurable` (FORMAT.md "Records not covered by a flush").
    pub dropped_records: u64,
    /// Sequence number the next record would have had.
    pub next_seq: u64,
    /// Where the journal ends: blocks after the head, and the sequence
    /// number the next block would have had (beyond the replayed ones when
    /// records were dropped).
    pub journal_end: (u64, u64),
    /// Why replay stopped (a torn or stale block is the normal end).
    pub replay_stop: ReplayStop,
    /// Problems with the copy of the superblock that lost (a torn write
    /// leaves one; reported by `check`, not an error).
    pub other_superblock: Option<FormatError>,
}

fn format_err(what: impl Into<String>) -> impl FnOnce(FormatError) -> PoolError {
    let what = what.into();
    move |source| PoolError::Format { what, source }
}

/// Reads both superblock copies and picks the valid one with the higher
/// generation; checks it against the device.
pub fn superblock(
    dev: &dyn BlockDev,
) -> Result<(Superblock, Layout, Option<FormatError>), PoolError> {
    let len = dev.len();
    let mut buf = AlignedBuf::new(2 * BLOCK_SIZE);
    let have = (len.min(2 * BLOCK_SIZE as u64) as usize) & !511;
    dev.read_at(&mut buf[..have], 0)
        .map_err(io_err("reading the superblocks"))?;
    let a = Superblock::decode(&buf[..have.min(BLOCK_SIZE)]);
    let b = Superblock::decode(buf.get(SLOT_B as usize..have).unwrap_or_default());
    let sb = crate::format::pick(a.clone(), b.clone()).map_err(format_err("superblock"))?;
    let other = if sb.slot() == 0 { b } else { a };
    let other = match other {
        Ok(o) if o.generation < sb.generation => None,
        Ok(_) => None,
        Err(e) => Some(e),
    };
    let layout = sb.check_device(len).map_err(format_err("superblock"))?;
    Ok((sb, layout, other))
}

/// Loads the metadata: checkpoint, then the journal up to its end.
pub fn load(dev: &dyn BlockDev) -> Result<Loaded, PoolError> {
    let (sb, layout, other_superblock) = superblock(dev)?;
    let clusters = u32::try_from(layout.clusters).map_err(|_| PoolError::Corrupt {
        what: "superblock".into(),
        reason: format!("{} clusters do not fit the format", layout.clusters),
    })?;
    let mut meta =
        Metadata::new(layout.cluster_size, 1..clusters).map_err(|e| PoolError::Corrupt {
            what: "superblock".into(),
            reason: e.to_string(),
        })?;
    let checkpoint = if sb.checkpoint != 0 {
        load_checkpoint(dev, &sb, &layout, &mut meta)?
    } else {
        Vec::new()
    };

    let in_checkpoint: std::collections::HashSet<u32> = checkpoint.iter().copied().collect();
    // Records an earlier boot wrote without flushing their data first are
    // dropped: their clusters may hold anything (FORMAT.md "Records not
    // covered by a flush"). The same boot replays everything: the data of
    // every journaled `Map` reached the device before its record did.
    let boot = dev.boot_id();
    let same_boot = sb.version < 2 || sb.boot_id == boot;
    let covered = if same_boot {
        None
    } else {
        let mut seen = 0u64;
        let mut covered = 0u64;
        let end = walk_journal(dev, &sb, &layout, |_, records| {
            for r in records {
                seen += 1;
                if *r == Record::DataDurable {
                    covered = seen;
                }
            }
            Ok(true)
        })?;
        Some((covered, seen - covered, end))
    };
    // Apply, one block at a time from the head, so a commit is applied at
    // each block boundary as the live path did (FORMAT.md "Journal").
    let limit = covered.as_ref().map_or(u64::MAX, |c| c.0);
    let mut replayed_records = 0u64;
    let mut apply_block = |index: u64, records: &[Record]| {
        let left = usize::try_from(limit - replayed_records).unwrap_or(usize::MAX);
        let take = records.len().min(left);
        for (i, record) in records[..take].iter().enumerate() {
            let seq = sb.ckpt_seq + replayed_records + i as u64;
            // A replayed Map takes a free cluster: never one the checkpoint
            // holds (the live path maps only clusters it allocated).
            if let Record::Map { pcluster, .. } = record {
                if in_checkpoint.contains(pcluster) {
                    return Err(PoolError::Corrupt {
                        what: format!("journal record {seq} (block {index})"),
                        reason: format!("{record:?}: cluster {pcluster} belongs to the checkpoint"),
                    });
                }
            }
            apply(&mut meta, record).map_err(|e| PoolError::Corrupt {
                what: format!("journal record {seq} (block {index})"),
                reason: format!("{record:?}: {e}"),
            })?;
        }
        meta.commit();
        replayed_records += take as u64;
        Ok(replayed_records < limit)
    };
    let applied = if limit == 0 {
        WalkEnd {
            blocks: 0,
            next_seq: sb.ckpt_seq,
            stop: ReplayStop::Exhausted,
        }
    } else {
        walk_journal(dev, &sb, &layout, &mut apply_block)?
    };
    let replayed_blocks = applied.blocks;
    // Why the journal ends, and where: from the walk that saw all of it.
    let (dropped_records, end) = match covered {
        Some((_, dropped, end)) => (dropped, end),
        None => (0, applied),
    };
    let expected = sb.ckpt_seq + replayed_records;
    if let Err(v) = meta.check() {
        let list: Vec<String> = v.iter().map(ToString::to_string).collect();
        return Err(PoolError::Corrupt {
            what: "metadata".into(),
            reason: list.join("; "),
        });
    }
    if let ReplayStop::Malformed(e) = &end.stop {
        let index = (sb.journal_head + end.blocks) % layout.journal_blocks();
        return Err(PoolError::Format {
            what: format!("journal block {index}"),
            source: e.clone(),
        });
    }
    Ok(Loaded {
        sb,
        layout,
        meta,
        checkpoint,
        replayed_blocks,
        replayed_records,
        dropped_records,
        next_seq: expected,
        journal_end: (end.blocks, end.next_seq),
        replay_stop: end.stop,
        other_superblock,
    })
}

/// Where a walk through the journal ended.
struct WalkEnd {
    /// Blocks handed to the visitor and accepted.
    blocks: u64,
    /// Sequence number of the record after the last visited block.
    next_seq: u64,
    /// Why the journal ends there (the visitor's stop counts as `Exhausted`).
    stop: ReplayStop,
}

/// Hands the journal's blocks after the checkpoint, in ring order from the
/// head, to `visit(ring index, records)` until the journal ends (a torn,
/// stale or unwritten block, or the whole ring) or `visit` returns false
/// after taking its block.
fn walk_journal(
    dev: &dyn BlockDev,
    sb: &Superblock,
    layout: &Layout,
    mut visit: impl FnMut(u64, &[Record]) -> Result<bool, PoolError>,
) -> Result<WalkEnd, PoolError> {
    let blocks = layout.journal_blocks();
    let mut buf = AlignedBuf::new(BLOCK_SIZE);
    let mut expected = sb.ckpt_seq;
    let mut walked = 0;
    while walked < blocks {
        let index = (sb.journal_head + walked) % blocks;
        let off = layout.journal_block_offset(index).unwrap_or(0);
        dev.read_at(&mut buf, off)
            .map_err(io_err(format!("reading journal block {index}")))?;
        let (records, end) = replay(std::iter::once(&buf[..]), expected);
        if end.block == 0 {
            return Ok(WalkEnd {
                blocks: walked,
                next_seq: expected,
                stop: end.stop,
            });
        }
        walked += 1;
        expected = end.next_seq;
        if !visit(index, &records)? {
            break;
        }
    }
    Ok(WalkEnd {
        blocks: walked,
        next_seq: expected,
        stop: ReplayStop::Exhausted,
    })
}

/// Reads the checkpoint chain from `sb.checkpoint` and restores its image.
///
/// A crafted chain is bounded: each link is a distinct cluster of the pool
/// (a loop is found in constant time per link, so a chain through every
/// cluster is read once, in time linear in its length), and the payload
/// can never exceed what those clusters hold; its memory is reserved
/// fallibly, so a claim the host cannot hold is an error, not an abort.
fn load_checkpoint(
    dev: &dyn BlockDev,
    sb: &Superblock,
    layout: &Layout,
    meta: &mut Metadata,
) -> Result<Vec<u32>, PoolError> {
    let cs = layout.cluster_size as usize;
    let mut buf = AlignedBuf::new(cs);
    let mut payload: Vec<u8> = Vec::new();
    let mut chain: Vec<u32> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut cluster = sb.checkpoint;
    loop {
        let corrupt = |reason: String| PoolError::Corrupt {
            what: format!("checkpoint link {} (cluster {cluster})", chain.len()),
            reason,
        };
        let pc = u32::try_from(cluster)
            .ok()
            .filter(|&c| c != 0 && u64::from(c) < layout.clusters)
            .ok_or_else(|| corrupt("outside the data area".into()))?;
        if !seen.insert(pc) {
            return Err(corrupt("the chain loops".into()));
        }
        let off = layout.cluster_offset(cluster).unwrap_or(0);
        dev.read_at(&mut buf, off)
            .map_err(io_err(format!("reading checkpoint cluster {cluster}")))?;
        let (header, bytes) =
            decode_link(&buf, chain.len() as u32, sb.ckpt_seq).map_err(format_err(format!(
                "checkpoint link {} (cluster {cluster})",
                chain.len()
            )))?;
        payload.try_reserve(bytes.len()).map_err(|_| {
            corrupt(format!(
                "a payload of {} bytes does not fit in memory",
                payload.len() + bytes.len()
            ))
        })?;
        payload.extend_from_slice(bytes);
        chain.push(pc);
        if header.next == 0 {
            break;
        }
        cluster = u64::from(header.next);
    }
    let image = Image::decode(&payload).map_err(format_err("checkpoint"))?;
    for v in image.volumes {
        let kind = match v.kind {
            VolumeKindCode::Volume => VolumeKind::Volume,
            VolumeKindCode::Snapshot => VolumeKind::Snapshot,
            VolumeKindCode::Clone => VolumeKind::Clone,
        };
        let entries = v
            .runs
            .iter()
            .flat_map(|r| (0..r.len).map(move |i| (r.vstart + u64::from(i), r.pstart + i)));
        meta.restore_volume(v.id, &v.name, v.size, v.block_size, kind, entries)
            .map_err(|e| PoolError::Corrupt {
                what: format!("checkpoint volume {} ({:?})", v.id, v.name),
                reason: e.to_string(),
            })?;
    }
    for &c in &chain {
        meta.hold(c).map_err(|e| PoolError::Corrupt {
            what: format!("checkpoint cluster {c}"),
            reason: format!("also used by a volume: {e}"),
        })?;
    }
    Ok(chain)
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
        Record::Revert { id, snapshot } => meta.revert(*id, *snapshot),
        Record::DataDurable => Ok(()),
    }
}
