//! The offline `vblock` command line: create and inspect pools, manage
//! volumes, check and dump the metadata. Nothing here runs while a backend
//! has the pool open: every command opens the pool file or device itself.
//!
//! [`run`] is the whole program minus the process glue (`src/bin/vblock.rs`),
//! so tests can call it in-process. Arguments are parsed by hand (no
//! dependency); no input makes it panic.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;

use fabric_syntax::parse_size;

use crate::dev::{BlockDev, FileDev};
use crate::format::ReplayStop;
use crate::meta::{Metadata, VolumeKind};
use crate::pool::{Loaded, Pool, PoolError, PoolOptions, PoolSpace, DEFAULT_CLUSTER_SIZE};

const POOL_CREATE: &str =
    "vblock pool create <pool> --size <S> [--cluster-size <S>] [--journal <S>] [--force]";
const POOL_INFO: &str = "vblock pool info <pool>";
const VOLUME_CREATE: &str = "vblock volume create <pool> <name> --size <S> [--block-size 512|4096]";
const VOLUME_DELETE: &str = "vblock volume delete <pool> <name>";
const VOLUME_RESIZE: &str = "vblock volume resize <pool> <name> --size <S> [--force]";
const VOLUME_RENAME: &str = "vblock volume rename <pool> <name> <new-name>";
const VOLUME_LIST: &str = "vblock volume list <pool>";
const SNAPSHOT: &str = "vblock snapshot <pool> <source> <name>";
const CLONE: &str = "vblock clone <pool> <source> <name>";
const CHECK: &str = "vblock check <pool>";
const DUMP: &str = "vblock dump <pool>";

/// The `--help` text.
pub const USAGE: &str = "\
vblock: offline tool for vblock thin pools (a file or a block device)

usage:
  vblock pool create <pool> --size <S> [--cluster-size <S>] [--journal <S>] [--force]
      format a new pool; a file is created (an existing non-empty file, or a
      block device that already holds a pool, needs --force); on a block
      device the whole device is used and --size may be omitted
  vblock pool info <pool>
      capacity, space use, over-commit, journal size, volume count
  vblock volume create <pool> <name> --size <S> [--block-size 512|4096]
  vblock volume delete <pool> <name>
  vblock volume resize <pool> <name> --size <S> [--force]
      shrinking discards data beyond the new end and needs --force
  vblock volume rename <pool> <name> <new-name>
  vblock volume list <pool>
  vblock snapshot <pool> <source> <name>
      read-only snapshot of a volume, clone or snapshot (copies no data)
  vblock clone <pool> <source> <name>
      writable clone (copies no data)
  vblock check <pool>
      load the pool read-only and verify its metadata; never repairs;
      exit status 1 if anything is wrong
  vblock dump <pool>
      superblock, checkpoint chain, every volume's cluster map, space

Sizes are a whole number of bytes with an optional unit: B, or K, M, G, T
(powers of 1024), alone or as KiB, MiB...; any case; no KB or GB. New names
are 1 to 32 of A-Z a-z 0-9 _ . - @ (as in fabric.toml and fabricctl). Use --
before a volume name that starts with '-'. Exit status: 0 ok, 1 failure, 2
bad command line.
";

/// Why a command failed. [`exit_code`](CliError::exit_code) is the process
/// exit status; `Display` is the message for stderr.
#[derive(Debug)]
pub enum CliError {
    /// Bad command line (unknown command or option, missing or malformed
    /// argument): exit status 2.
    Usage(String),
    /// The command failed: exit status 1.
    Failed(String),
    /// `check` found problems, already listed on the output: exit status 1.
    CheckFailed { problems: usize },
}

impl CliError {
    /// 2 for a usage error, 1 for anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed(_) | CliError::CheckFailed { .. } => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Failed(m) => f.write_str(m),
            CliError::CheckFailed { problems } => write!(
                f,
                "check failed: {problems} problem{} found (nothing was repaired)",
                plural(*problems as u64)
            ),
        }
    }
}

impl std::error::Error for CliError {}

impl From<io::Error> for CliError {
    /// Only for writing the output (the pool's own errors carry their context).
    fn from(e: io::Error) -> Self {
        CliError::Failed(format!("writing the output: {e}"))
    }
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

fn failed(msg: impl Into<String>) -> CliError {
    CliError::Failed(msg.into())
}

/// Runs one command. `args` are the arguments after the program name; normal
/// output goes to `out`. Errors are returned, not printed.
pub fn run(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let is_help = |a: &String| a == "--help" || a == "-h";
    let before_dashes = args.iter().take_while(|a| *a != "--");
    if args.is_empty() || args[0] == "help" || before_dashes.clone().any(is_help) {
        out.write_all(USAGE.as_bytes())?;
        return Ok(());
    }
    let (cmd, rest) = (args[0].as_str(), &args[1..]);
    match cmd {
        "pool" | "volume" => {
            let Some(sub) = rest.first() else {
                return Err(usage(format!("{cmd}: missing subcommand")));
            };
            let rest = &rest[1..];
            match (cmd, sub.as_str()) {
                ("pool", "create") => pool_create(rest, out),
                ("pool", "info") => pool_info(rest, out),
                ("volume", "create") => volume_create(rest, out),
                ("volume", "delete") => volume_delete(rest, out),
                ("volume", "resize") => volume_resize(rest, out),
                ("volume", "rename") => volume_rename(rest, out),
                ("volume", "list") => volume_list(rest, out),
                _ => Err(usage(format!("unknown command: {cmd} {sub}"))),
            }
        }
        "snapshot" => copy(rest, out, true),
        "clone" => copy(rest, out, false),
        "check" => check(rest, out),
        "dump" => dump(rest, out),
        _ => Err(usage(format!("unknown command: {cmd}"))),
    }
}

// ---- argument parsing ----

/// A command's arguments: positionals and options, as declared.
struct Args {
    positional: Vec<String>,
    values: Vec<(&'static str, String)>,
    switches: Vec<&'static str>,
}

impl Args {
    /// Splits `args` into positionals, options taking a value (`--size 8G` or
    /// `--size=8G`) and switches. Anything after `--` is positional.
    fn parse(
        args: &[String],
        valued: &[&'static str],
        switches: &[&'static str],
    ) -> Result<Args, CliError> {
        let mut parsed = Args {
            positional: Vec::new(),
            values: Vec::new(),
            switches: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if arg == "--" {
                parsed.positional.extend(it.by_ref().cloned());
                break;
            }
            if !arg.starts_with('-') || arg == "-" {
                parsed.positional.push(arg.clone());
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (arg.as_str(), None),
            };
            if let Some(&flag) = valued.iter().find(|f| **f == name) {
                if parsed.value(flag).is_some() {
                    return Err(usage(format!("{flag} given twice")));
                }
                let value = match inline {
                    Some(v) => v.to_owned(),
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| usage(format!("{flag} needs a value")))?,
                };
                parsed.values.push((flag, value));
            } else if let Some(&flag) = switches.iter().find(|f| **f == name) {
                if inline.is_some() {
                    return Err(usage(format!("{flag} takes no value")));
                }
                parsed.switches.push(flag);
            } else {
                return Err(usage(format!("unknown option {arg:?}")));
            }
        }
        Ok(parsed)
    }

    /// Exactly `N` positionals, else a usage error quoting `synopsis`.
    fn positionals<const N: usize>(&self, synopsis: &str) -> Result<[&str; N], CliError> {
        let got: Vec<&str> = self.positional.iter().map(String::as_str).collect();
        let n = got.len();
        got.try_into().map_err(|_| {
            let what = if n < N {
                "missing arguments"
            } else {
                "too many arguments"
            };
            usage(format!("{what}; usage: {synopsis}"))
        })
    }

    fn value(&self, flag: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(f, _)| *f == flag)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, flag: &str) -> bool {
        self.switches.contains(&flag)
    }

    /// The size given with `flag`, if any.
    fn size(&self, flag: &str) -> Result<Option<u64>, CliError> {
        self.value(flag)
            .map(|v| parse_size(v).map_err(|e| usage(format!("{flag} {v:?}: {e}"))))
            .transpose()
    }

    /// The size given with `flag`; a usage error quoting `synopsis` if absent.
    fn required_size(&self, flag: &str, synopsis: &str) -> Result<u64, CliError> {
        self.size(flag)?
            .ok_or_else(|| usage(format!("{flag} is required; usage: {synopsis}")))
    }
}

/// A name for a new volume: the shared rule of `fabric.toml` and `fabricctl`
/// ([`fabric_syntax::valid_name`]), so whatever is made here can be named
/// there. Existing names are looked up as given.
fn new_name(name: &str) -> Result<&str, CliError> {
    // The pool format holds longer names (old pools keep theirs); every name
    // the rule allows must fit it.
    const _: () = assert!(fabric_syntax::NAME_MAX <= crate::meta::NAME_MAX);
    fabric_syntax::valid_name(name).map_err(usage)?;
    Ok(name)
}

/// Bytes for humans: "512 B", "64 KiB", "1.5 GiB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >> (10 * (unit + 1)) > 0 {
        unit += 1;
    }
    let scale = 1u64 << (10 * unit);
    if bytes.is_multiple_of(scale) {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

// ---- opening pools ----

fn open_dev(path: &str) -> Result<FileDev, CliError> {
    // FileDev's errors name the path.
    FileDev::open(path).map_err(|e| failed(e.to_string()))
}

/// Loads without writing anything (info, list, check, dump).
fn open_read_only(path: &str) -> Result<(Pool<FileDev>, Loaded), CliError> {
    let dev = FileDev::open_read_only(path).map_err(|e| failed(e.to_string()))?;
    Pool::open_read_only(dev).map_err(|e| failed(format!("{path}: cannot load the pool: {e}")))
}

/// Opens for changes: replays the journal and writes a fresh checkpoint.
fn open_read_write(path: &str) -> Result<Pool<FileDev>, CliError> {
    Pool::open(open_dev(path)?).map_err(|e| failed(format!("{path}: cannot open the pool: {e}")))
}

/// The message of a failed operation, with the CLI's spelling of options.
fn op_failed(e: PoolError) -> CliError {
    match e {
        PoolError::ShrinkNeedsForce {
            name,
            size,
            new_size,
        } => failed(format!(
            "shrinking {name:?} from {} to {} discards the data beyond the new end; use --force",
            human(size),
            human(new_size)
        )),
        e => failed(e.to_string()),
    }
}

// ---- pool ----

fn pool_create(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
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

fn pool_info(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
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

/// Space figures, one per line, each line starting with `indent`.
fn write_space(out: &mut dyn Write, s: &PoolSpace, indent: &str) -> io::Result<()> {
    let cs = u64::from(s.cluster_size);
    let line = |out: &mut dyn Write, what: &str, clusters: u64| {
        let bytes = clusters.saturating_mul(cs);
        writeln!(
            out,
            "{indent}{what:<16} {clusters} cluster{} = {bytes} bytes ({})",
            plural(clusters),
            human(bytes)
        )
    };
    line(out, "capacity:", s.clusters)?;
    line(out, "used:", s.used_clusters)?;
    line(out, "  metadata:", s.metadata_clusters)?;
    line(out, "free:", s.free_clusters)?;
    line(out, "releasing:", s.releasing_clusters)?;
    let ratio = if s.capacity == 0 {
        0.0
    } else {
        s.provisioned as f64 / s.capacity as f64
    };
    writeln!(
        out,
        "{indent}{:<16} {} bytes ({}), over-commit {ratio:.2}x",
        "provisioned:",
        s.provisioned,
        human(s.provisioned)
    )
}

fn uuid(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn kind(k: VolumeKind) -> &'static str {
    match k {
        VolumeKind::Volume => "volume",
        VolumeKind::Snapshot => "snapshot",
        VolumeKind::Clone => "clone",
    }
}

// ---- volumes ----

fn volume_create(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let a = Args::parse(args, &["--size", "--block-size"], &[])?;
    let [path, name] = a.positionals(VOLUME_CREATE)?;
    let name = new_name(name)?;
    let size = a.required_size("--size", VOLUME_CREATE)?;
    let block_size = match a.value("--block-size") {
        None | Some("512") => 512,
        Some("4096") | Some("4K") | Some("4k") => 4096,
        Some(v) => return Err(usage(format!("--block-size {v:?}: must be 512 or 4096"))),
    };
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

fn volume_delete(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let a = Args::parse(args, &[], &[])?;
    let [path, name] = a.positionals(VOLUME_DELETE)?;
    let mut pool = open_read_write(path)?;
    pool.delete_volume(name).map_err(op_failed)?;
    writeln!(out, "deleted volume {name:?}")?;
    Ok(())
}

fn volume_resize(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
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

fn volume_rename(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let a = Args::parse(args, &[], &[])?;
    let [path, name, new] = a.positionals(VOLUME_RENAME)?;
    let new_name = new_name(new)?;
    let mut pool = open_read_write(path)?;
    pool.rename(name, new_name).map_err(op_failed)?;
    writeln!(out, "renamed {name:?} to {new_name:?}")?;
    Ok(())
}

fn volume_list(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
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

fn copy(args: &[String], out: &mut dyn Write, snapshot: bool) -> Result<(), CliError> {
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

// ---- check and dump ----

fn check(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
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

/// Ring index of the journal block where replay stopped.
fn stop_block(l: &Loaded) -> u64 {
    let blocks = l.layout.journal_blocks().max(1);
    (l.sb.journal_head + l.replayed_blocks) % blocks
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
    writeln!(
        out,
        "journal end: block {}: {}",
        stop_block(l),
        describe_stop(&l.replay_stop, l.next_seq)
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

fn dump(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
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
    fn sizes() {
        // The shared grammar's table, through `--size` as the commands read it.
        for (input, want) in fabric_syntax::SIZE_TABLE {
            let args = ["--size".to_owned(), (*input).to_owned()];
            let got = Args::parse(&args, &["--size"], &[]).unwrap().size("--size");
            match (want, got) {
                (Ok(bytes), Ok(Some(got))) => assert_eq!(got, *bytes, "{input:?}"),
                (Err(e), Err(CliError::Usage(m))) => {
                    assert_eq!(m, format!("--size {input:?}: {e}"))
                }
                (want, got) => panic!("{input:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(64 << 10), "64 KiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn collapses_runs() {
        let entries = [(0, 5), (1, 6), (2, 7), (3, 9), (10, 10), (11, 11), (12, 3)];
        assert_eq!(
            runs(entries.into_iter()),
            vec![(0, 5, 3), (3, 9, 1), (10, 10, 2), (12, 3, 1)]
        );
        assert_eq!(runs(std::iter::empty()), vec![]);
    }

    fn run_args(args: &[&str]) -> (Result<(), CliError>, String) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut out = Vec::new();
        let r = run(&args, &mut out);
        (r, String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn command_line_errors() {
        let (r, out) = run_args(&[]);
        assert!(r.is_ok() && out.contains("usage:"));
        let (r, out) = run_args(&["volume", "list", "--help"]);
        assert!(r.is_ok() && out.contains("usage:"));
        for args in [
            &["frobnicate"][..],
            &["pool"],
            &["pool", "frob", "p"],
            &["pool", "create", "p"],
            &["pool", "create", "p", "--size"],
            &["pool", "create", "p", "--size", "12X"],
            &["pool", "create", "p", "--size", "1M", "--size", "2M"],
            &["pool", "create", "p", "--size", "1M", "--bogus"],
            &["pool", "create", "p", "--size", "1M", "--force=yes"],
            &[
                "pool",
                "create",
                "p",
                "--size",
                "1M",
                "--cluster-size",
                "8G",
            ],
            &["pool", "info"],
            &["pool", "info", "a", "b"],
            &["volume", "create", "p", "v"],
            &[
                "volume",
                "create",
                "p",
                "v",
                "--size",
                "1M",
                "--block-size",
                "1000",
            ],
            &["volume", "rename", "p", "v"],
            &["snapshot", "p", "v"],
            // New names follow the shared rule (checked before the pool is opened).
            &["volume", "create", "p", "a b", "--size", "1M"],
            &["volume", "rename", "p", "v", "v/1"],
            &["snapshot", "p", "v", ".."],
            &["clone", "p", "v", "é"],
            &["check"],
        ] {
            let (r, _) = run_args(args);
            match r {
                Err(e @ CliError::Usage(_)) => assert_eq!(e.exit_code(), 2, "{args:?}"),
                other => panic!("{args:?}: expected a usage error, got {other:?}"),
            }
        }
    }

    #[test]
    fn positionals_after_dashes() {
        let args: Vec<String> = ["--size", "1M", "--", "--odd", "-x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = Args::parse(&args, &["--size"], &[]).unwrap();
        assert_eq!(a.positionals::<2>("x").unwrap(), ["--odd", "-x"]);
        assert_eq!(a.size("--size").unwrap(), Some(1 << 20));
    }
}
