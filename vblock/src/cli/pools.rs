//! `vblock pool create` and `vblock pool info`.

use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;

use crate::dev::{BlockDev, FileDev};
use crate::pool::{Pool, PoolOptions, DEFAULT_CLUSTER_SIZE};

use super::args::Args;
use super::error::{failed, usage, CliError};
use super::open::{open_dev, open_read_only};
use super::spec::{POOL_CREATE, POOL_INFO};
use super::table::{human, uuid, write_space};

pub(super) fn pool_create(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let a = Args::parse(
        args,
        &["--size", "--cluster-size", "--journal"],
        &["--force"],
    )?;
    let [path] = a.positionals(POOL_CREATE)?;
    let size = a.size("--size")?;
    let cluster_size = match a.size("--cluster-size")? {
        None => DEFAULT_CLUSTER_SIZE,
        Some(c) => {
            u32::try_from(c).map_err(|_| usage(format!("--cluster-size {c}: at most 2 MiB")))?
        }
    };
    let opts = PoolOptions {
        cluster_size,
        journal_len: a.size("--journal")?,
        uuid: None,
    };
    let force = a.has("--force");
    let block_device = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());

    let (dev, created_file) = if block_device {
        let dev = open_dev(path)?;
        if size.is_some_and(|s| s != dev.len()) {
            return Err(failed(format!(
                "{path} is a block device of {} bytes and is used whole; omit --size",
                dev.len()
            )));
        }
        precheck(dev.len(), &opts)?;
        if !force && Pool::open_read_only(&dev).is_ok() {
            return Err(failed(format!(
                "{path} already holds a vblock pool; use --force to format it anyway"
            )));
        }
        (dev, false)
    } else {
        let size = a.required_size("--size", POOL_CREATE)?;
        if size == 0 || !size.is_multiple_of(4096) {
            return Err(failed(format!(
                "--size {size} is not a non-zero multiple of 4096"
            )));
        }
        precheck(size, &opts)?;
        let existed = std::path::Path::new(path).exists();
        let dev = if force {
            FileDev::create_replacing(path, size)
        } else {
            FileDev::create(path, size)
        }
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                failed(format!("{e}; use --force to replace it"))
            } else {
                failed(e.to_string())
            }
        })?;
        (dev, !existed)
    };
    let pool = match Pool::create(dev, &opts) {
        Ok(p) => p,
        Err(e) => {
            if created_file {
                let _ = std::fs::remove_file(path);
            }
            return Err(failed(format!("{path}: cannot create the pool: {e}")));
        }
    };
    let l = pool.layout();
    writeln!(
        out,
        "created pool {path}: uuid {}, {} data clusters of {} ({}), journal {}",
        uuid(&pool.superblock().uuid),
        pool.space().clusters,
        human(u64::from(l.cluster_size)),
        human(pool.space().capacity),
        human(l.journal_len)
    )?;
    Ok(())
}

/// Refuses options that cannot make a pool on `len` bytes before the device
/// is touched (`--force` truncates the file first). `Pool::create` checks
/// again with the journal length it really picks.
fn precheck(len: u64, opts: &PoolOptions) -> Result<(), CliError> {
    opts.layout(len)
        .map(drop)
        .map_err(|e| failed(format!("cannot create a pool of {len} bytes: {e}")))
}

pub(super) fn pool_info(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let a = Args::parse(args, &[], &[])?;
    let [path] = a.positionals(POOL_INFO)?;
    let (pool, _) = open_read_only(path)?;
    let sb = pool.superblock();
    let l = pool.layout();
    writeln!(out, "pool:            {path}")?;
    writeln!(out, "uuid:            {}", uuid(&sb.uuid))?;
    writeln!(out, "format version:  {}", sb.version)?;
    writeln!(
        out,
        "cluster size:    {} ({})",
        l.cluster_size,
        human(u64::from(l.cluster_size))
    )?;
    writeln!(
        out,
        "journal:         {} bytes ({}, {} blocks)",
        l.journal_len,
        human(l.journal_len),
        l.journal_blocks()
    )?;
    write_space(out, &pool.space(), "")?;
    writeln!(out, "volumes:         {}", pool.volumes().len())?;
    Ok(())
}
