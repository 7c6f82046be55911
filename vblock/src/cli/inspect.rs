//! `vblock check` and `vblock dump`: what loading found, read-only.

use std::collections::BTreeSet;
use std::io::{self, Write};

use crate::format::ReplayStop;
use crate::meta::Metadata;
use crate::pool::Loaded;

use super::args::Args;
use super::error::CliError;
use super::open::open_read_only;
use super::spec::{CHECK, DUMP};
use super::table::{human, kind, plural, uuid, write_space};

pub(super) fn check(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let a = Args::parse(args, &[], &[])?;
    let [path] = a.positionals(CHECK)?;
    let (pool, loaded) = open_read_only(path)?;
    writeln!(out, "pool {path}")?;
    write_loaded(out, &loaded)?;
    let meta = pool.metadata();
    writeln!(
        out,
        "metadata: {} volume{}, {} mapped cluster{}",
        pool.volumes().len(),
        plural(pool.volumes().len() as u64),
        meta.mapped_entries(),
        plural(meta.mapped_entries())
    )?;

    let mut problems: Vec<String> = Vec::new();
    if let Err(violations) = meta.check() {
        problems.extend(violations.iter().map(ToString::to_string));
    }
    problems.extend(checkpoint_problems(&loaded, meta));
    if let ReplayStop::Malformed(e) = &loaded.replay_stop {
        // `load` refuses this already; kept so a laxer load cannot hide it.
        problems.push(format!("journal block {}: {e}", stop_block(&loaded)));
    }
    for p in &problems {
        writeln!(out, "violation: {p}")?;
    }
    if problems.is_empty() {
        writeln!(out, "ok: no problems found")?;
        Ok(())
    } else {
        Err(CliError::CheckFailed {
            problems: problems.len(),
        })
    }
}

/// FORMAT.md "What check verifies": checkpoint clusters are referenced by
/// nothing else. The metadata holds each checkpoint cluster; a map entry
/// pointing at one, or a held cluster outside the chain, is corruption that
/// [`Metadata::check`] cannot see (its counts still add up).
fn checkpoint_problems(loaded: &Loaded, meta: &Metadata) -> Vec<String> {
    let mut problems = Vec::new();
    let chain: BTreeSet<u32> = loaded.checkpoint.iter().copied().collect();
    let held: BTreeSet<u32> = meta.held().collect();
    let mut mapped = BTreeSet::new();
    for v in meta.volumes() {
        for (vcluster, pc) in v.map().iter() {
            if chain.contains(&pc.get()) {
                mapped.insert(pc.get());
                problems.push(format!(
                    "checkpoint cluster {} is also mapped by volume {:?} (id {}) at cluster {vcluster}",
                    pc.get(),
                    v.name(),
                    v.id()
                ));
            }
        }
    }
    for c in chain.difference(&held).filter(|c| !mapped.contains(*c)) {
        problems.push(format!("checkpoint cluster {c} is not held as metadata"));
    }
    for c in held.difference(&chain) {
        problems.push(format!(
            "cluster {c} is held but is not part of the checkpoint"
        ));
    }
    problems
}

/// Ring index of the journal block where the journal ends.
fn stop_block(l: &Loaded) -> u64 {
    let blocks = l.layout.journal_blocks().max(1);
    (l.sb.journal_head + l.journal_end.0) % blocks
}

/// What loading found: superblock, checkpoint, journal replay, the other
/// superblock copy. Shared by `check` and `dump`.
fn write_loaded(out: &mut dyn Write, l: &Loaded) -> io::Result<()> {
    let copy = if l.sb.slot() == 0 { "A" } else { "B" };
    writeln!(
        out,
        "superblock: copy {copy}, generation {}, format version {}",
        l.sb.generation, l.sb.version
    )?;
    if l.checkpoint.is_empty() {
        writeln!(out, "checkpoint: none")?;
    } else {
        writeln!(
            out,
            "checkpoint: {} cluster{} [{}], covers journal records before sequence {}",
            l.checkpoint.len(),
            plural(l.checkpoint.len() as u64),
            join(&l.checkpoint),
            l.sb.ckpt_seq
        )?;
    }
    writeln!(
        out,
        "journal: replayed {} block{} ({} record{}) from head block {} of {}",
        l.replayed_blocks,
        plural(l.replayed_blocks),
        l.replayed_records,
        plural(l.replayed_records),
        l.sb.journal_head,
        l.layout.journal_blocks()
    )?;
    if l.dropped_records > 0 {
        writeln!(
            out,
            "journal: dropped {} record{} an earlier boot wrote after its last flush (their data may not have reached the disk)",
            l.dropped_records,
            plural(l.dropped_records)
        )?;
    }
    writeln!(
        out,
        "journal end: block {}: {}",
        stop_block(l),
        describe_stop(&l.replay_stop, l.journal_end.1)
    )?;
    if let Some(e) = &l.other_superblock {
        let other = if copy == "A" { "B" } else { "A" };
        writeln!(
            out,
            "note: superblock copy {other} is not usable ({e}); copy {copy} is, so nothing is lost (a torn superblock write leaves this)"
        )?;
    }
    Ok(())
}

fn describe_stop(stop: &ReplayStop, expected: u64) -> String {
    match stop {
        ReplayStop::Exhausted => "the whole ring was replayed".into(),
        ReplayStop::Truncated { len } => format!("short block ({len} bytes)"),
        ReplayStop::BadMagic => "no journal magic (never written): clean end".into(),
        ReplayStop::BadChecksum { stored, computed } => format!(
            "bad checksum (stored {stored:#010x}, computed {computed:#010x}): torn write, a normal end after a crash"
        ),
        ReplayStop::SeqMismatch { found } if *found < expected => format!(
            "stale block of an earlier lap (sequence {found}, expected {expected}): clean end"
        ),
        ReplayStop::SeqMismatch { found } => format!(
            "sequence gap (found {found}, expected {expected}): clean end"
        ),
        ReplayStop::Malformed(e) => format!("malformed block: {e}"),
    }
}

fn join(clusters: &[u32]) -> String {
    clusters
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn dump(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let a = Args::parse(args, &[], &[])?;
    let [path] = a.positionals(DUMP)?;
    let (pool, loaded) = open_read_only(path)?;
    let sb = &loaded.sb;
    let l = &loaded.layout;
    writeln!(out, "pool {path}")?;
    let copy = if sb.slot() == 0 { "A" } else { "B" };
    writeln!(out, "superblock copy {copy} (offset {}):", sb.slot())?;
    writeln!(out, "  version       {}", sb.version)?;
    writeln!(out, "  flags         {:#x}", sb.flags)?;
    writeln!(out, "  uuid          {}", uuid(&sb.uuid))?;
    writeln!(out, "  cluster_size  {}", sb.cluster_size)?;
    writeln!(out, "  clusters      {}", sb.clusters)?;
    writeln!(out, "  journal_off   {}", sb.journal_off)?;
    writeln!(out, "  journal_len   {}", sb.journal_len)?;
    writeln!(out, "  generation    {}", sb.generation)?;
    writeln!(out, "  checkpoint    {}", sb.checkpoint)?;
    writeln!(out, "  ckpt_seq      {}", sb.ckpt_seq)?;
    writeln!(out, "  journal_head  {}", sb.journal_head)?;
    writeln!(
        out,
        "layout: journal {} blocks at {}, clusters from {} to {}",
        l.journal_blocks(),
        l.journal_off,
        l.data_off,
        l.end()
    )?;
    write_loaded(out, &loaded)?;

    let meta = pool.metadata();
    let infos = pool.volumes();
    writeln!(out, "volumes: {}", infos.len())?;
    for info in &infos {
        writeln!(
            out,
            "  volume {} {:?}: {}, {} bytes ({}), block size {}, {}, {} allocated, {} exclusive",
            info.id,
            info.name,
            kind(info.kind),
            info.size,
            human(info.size),
            info.block_size,
            if info.read_only {
                "read-only"
            } else {
                "writable"
            },
            human(info.allocated),
            human(info.exclusive)
        )?;
        let Some(v) = meta.volume(info.id) else {
            continue;
        };
        if v.map().is_empty() {
            writeln!(out, "    map: empty")?;
            continue;
        }
        writeln!(
            out,
            "    map: virtual clusters -> pool clusters (ends exclusive)"
        )?;
        for (vstart, pstart, len) in runs(v.map().iter().map(|(vc, pc)| (vc, pc.get()))) {
            if len == 1 {
                writeln!(out, "      {vstart} -> {pstart}")?;
            } else {
                writeln!(
                    out,
                    "      {vstart}..{} -> {pstart}..{}",
                    vstart + len,
                    u64::from(pstart) + len
                )?;
            }
        }
    }
    writeln!(out, "space:")?;
    write_space(out, &pool.space(), "  ")?;
    Ok(())
}

/// Collapses map entries in virtual order into runs `(vstart, pstart, len)`
/// of consecutive virtual clusters in consecutive pool clusters.
fn runs(entries: impl Iterator<Item = (u64, u32)>) -> Vec<(u64, u32, u64)> {
    let mut runs: Vec<(u64, u32, u64)> = Vec::new();
    for (vc, pc) in entries {
        match runs.last_mut() {
            Some((vs, ps, len))
                if vs.checked_add(*len) == Some(vc)
                    && u64::from(*ps).checked_add(*len) == Some(u64::from(pc)) =>
            {
                *len += 1
            }
            _ => runs.push((vc, pc, 1)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_runs() {
        let entries = [(0, 5), (1, 6), (2, 7), (3, 9), (10, 10), (11, 11), (12, 3)];
        assert_eq!(
            runs(entries.into_iter()),
            vec![(0, 5, 3), (3, 9, 1), (10, 10, 2), (12, 3, 1)]
        );
        assert_eq!(runs(std::iter::empty()), vec![]);
    }
}
