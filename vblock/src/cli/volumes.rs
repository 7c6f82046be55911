//! `vblock volume ...`, `vblock snapshot` and `vblock clone`.

use std::io::Write;

use super::args::{new_name, Args};
use super::error::CliError;
use super::open::{op_failed, open_read_only, open_read_write};
use super::spec::{
    CLONE, SNAPSHOT, VOLUME_CREATE, VOLUME_DELETE, VOLUME_LIST, VOLUME_RENAME, VOLUME_RESIZE,
};
use super::table::{human, kind};

pub(super) fn volume_create(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let a = Args::parse(args, &["--size", "--block-size"], &[])?;
    let [path, name] = a.positionals(VOLUME_CREATE)?;
    let name = new_name(name)?;
    let size = a.required_size("--size", VOLUME_CREATE)?;
    let block_size = a.block_size()?;
    let mut pool = open_read_write(path)?;
    let id = pool
        .create_volume(name, size, block_size)
        .map_err(op_failed)?;
    writeln!(
        out,
        "created volume {name:?} (id {id}): {}, block size {block_size}",
        human(size)
    )?;
    Ok(())
}

pub(super) fn volume_delete(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let a = Args::parse(args, &[], &[])?;
    let [path, name] = a.positionals(VOLUME_DELETE)?;
    let mut pool = open_read_write(path)?;
    pool.delete_volume(name).map_err(op_failed)?;
    writeln!(out, "deleted volume {name:?}")?;
    Ok(())
}

pub(super) fn volume_resize(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let a = Args::parse(args, &["--size"], &["--force"])?;
    let [path, name] = a.positionals(VOLUME_RESIZE)?;
    let size = a.required_size("--size", VOLUME_RESIZE)?;
    let mut pool = open_read_write(path)?;
    let old = pool.volume(name).map_err(op_failed)?.size;
    pool.resize(name, size, a.has("--force"))
        .map_err(op_failed)?;
    writeln!(
        out,
        "resized {name:?} from {} to {}",
        human(old),
        human(size)
    )?;
    Ok(())
}

pub(super) fn volume_rename(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let a = Args::parse(args, &[], &[])?;
    let [path, name, new] = a.positionals(VOLUME_RENAME)?;
    let new_name = new_name(new)?;
    let mut pool = open_read_write(path)?;
    pool.rename(name, new_name).map_err(op_failed)?;
    writeln!(out, "renamed {name:?} to {new_name:?}")?;
    Ok(())
}

pub(super) fn volume_list(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let a = Args::parse(args, &[], &[])?;
    let [path] = a.positionals(VOLUME_LIST)?;
    // Listing changes nothing, so it does not need the read-write open (which
    // writes a checkpoint).
    let (pool, _) = open_read_only(path)?;
    let mut rows = vec![[
        "NAME".to_owned(),
        "KIND".to_owned(),
        "SIZE".to_owned(),
        "ALLOCATED".to_owned(),
        "EXCLUSIVE".to_owned(),
        "BLOCK".to_owned(),
        "RO".to_owned(),
    ]];
    for v in pool.volumes() {
        rows.push([
            v.name,
            kind(v.kind).to_owned(),
            human(v.size),
            human(v.allocated),
            human(v.exclusive),
            v.block_size.to_string(),
            if v.read_only { "yes" } else { "no" }.to_owned(),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

pub(super) fn copy(args: &[String], out: &mut dyn Write, snapshot: bool) -> Result<(), CliError> {
    let a = Args::parse(args, &[], &[])?;
    let synopsis = if snapshot { SNAPSHOT } else { CLONE };
    let [path, source, name] = a.positionals(synopsis)?;
    let name = new_name(name)?;
    let mut pool = open_read_write(path)?;
    let id = if snapshot {
        pool.snapshot(source, name)
    } else {
        pool.clone_volume(source, name)
    }
    .map_err(op_failed)?;
    let what = if snapshot { "snapshot" } else { "clone" };
    writeln!(out, "created {what} {name:?} (id {id}) of {source:?}")?;
    Ok(())
}
