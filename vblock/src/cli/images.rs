//! `vblock volume import` and `vblock volume export`: a volume from and to a
//! raw image file, offline. Both go cluster by cluster so holes stay holes:
//! an import writes only the clusters of the file that are not all zeros
//! (the others are zeroed in the volume without allocating), an export
//! writes only the volume's mapped clusters into a sparse file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;

use crate::dev::{AlignedBuf, SECTOR};

use super::args::{new_name, Args};
use super::error::{failed, CliError};
use super::open::{op_failed, open_read_only, open_read_write};
use super::spec::{VOLUME_EXPORT, VOLUME_IMPORT};
use super::table::human;

fn io_failed<'a>(what: &'a str, path: &'a str) -> impl FnOnce(std::io::Error) -> CliError + 'a {
    move |e| failed(format!("{what} {path}: {e}"))
}

/// Reads up to `buf.len()` bytes at `offset`, zeros past the end of the file.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    buf[got..].fill(0);
    Ok(())
}

/// `vblock volume import <pool> <name> <file>`: the volume's contents become
/// the file's. A volume that does not exist is created at the file's size
/// (rounded up to 512 bytes); an existing one must be at least that large.
pub(super) fn volume_import(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let a = Args::parse(args, &[], &[])?;
    let [path, name, image] = a.positionals(VOLUME_IMPORT)?;
    let file = File::open(image).map_err(io_failed("cannot open", image))?;
    let len = file
        .metadata()
        .map_err(io_failed("cannot stat", image))?
        .len();
    let size = len.div_ceil(SECTOR) * SECTOR;
    let mut pool = open_read_write(path)?;
    let id = match pool.volume(name) {
        Ok(v) if v.size < size => {
            return Err(failed(format!(
                "{image} is {}, more than volume {name:?} ({})",
                human(len),
                human(v.size)
            )))
        }
        Ok(v) => v.id,
        Err(_) => pool
            .create_volume(new_name(name)?, size, 512)
            .map_err(op_failed)?,
    };
    let cs = u64::from(pool.metadata().cluster_size());
    let mut buf = AlignedBuf::new(cs as usize);
    let (mut written, mut skipped) = (0u64, 0u64);
    let mut at = 0;
    while at < size {
        let n = (cs - at % cs).min(size - at);
        let chunk = &mut buf[..n as usize];
        read_full(&file, chunk, at).map_err(io_failed("cannot read", image))?;
        if chunk.iter().all(|b| *b == 0) {
            pool.write_zeroes(id, at, n).map_err(op_failed)?;
            skipped += 1;
        } else {
            pool.write(id, at, chunk).map_err(op_failed)?;
            written += 1;
        }
        at += n;
    }
    pool.flush().map_err(op_failed)?;
    writeln!(
        out,
        "imported {image} ({}) into {name:?}: {written} clusters written, {skipped} zero clusters left unallocated",
        human(len)
    )?;
    Ok(())
}

/// `vblock volume export <pool> <name> <file>`: the volume into a new raw
/// file of its size, sparse where the volume has holes.
pub(super) fn volume_export(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let a = Args::parse(args, &[], &["--force"])?;
    let [path, name, image] = a.positionals(VOLUME_EXPORT)?;
    let (pool, _) = open_read_only(path)?;
    let v = pool.volume(name).map_err(op_failed)?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .create_new(!a.has("--force"))
        .truncate(true)
        .open(image)
        .map_err(io_failed("cannot create (--force replaces a file)", image))?;
    file.set_len(v.size)
        .map_err(io_failed("cannot size", image))?;
    let cs = u64::from(pool.metadata().cluster_size());
    let mut buf = AlignedBuf::new(cs as usize);
    let mut written = 0u64;
    for vcluster in 0..v.size.div_ceil(cs) {
        let mapped = pool
            .metadata()
            .lookup(v.id, vcluster)
            .map_err(|e| failed(e.to_string()))?
            .is_some();
        if !mapped {
            continue;
        }
        let at = vcluster * cs;
        let chunk = &mut buf[..(v.size - at).min(cs) as usize];
        pool.read(v.id, at, chunk).map_err(op_failed)?;
        file.write_all_at(chunk, at)
            .map_err(io_failed("cannot write", image))?;
        written += 1;
    }
    file.sync_all().map_err(io_failed("cannot sync", image))?;
    writeln!(
        out,
        "exported {name:?} ({}) to {image}: {written} clusters written, the rest left as holes",
        human(v.size)
    )?;
    Ok(())
}
