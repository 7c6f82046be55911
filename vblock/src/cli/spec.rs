//! The command table: each command's synopsis and the `--help` text.

pub(super) const POOL_CREATE: &str =
    "vblock pool create <pool> --size <S> [--cluster-size <S>] [--journal <S>] [--force]";
pub(super) const POOL_INFO: &str = "vblock pool info <pool>";
pub(super) const VOLUME_CREATE: &str =
    "vblock volume create <pool> <name> --size <S> [--block-size 512|4096]";
pub(super) const VOLUME_DELETE: &str = "vblock volume delete <pool> <name>";
pub(super) const VOLUME_RESIZE: &str = "vblock volume resize <pool> <name> --size <S> [--force]";
pub(super) const VOLUME_RENAME: &str = "vblock volume rename <pool> <name> <new-name>";
pub(super) const VOLUME_LIST: &str = "vblock volume list <pool>";
pub(super) const VOLUME_IMPORT: &str = "vblock volume import <pool> <name> <file>";
pub(super) const VOLUME_EXPORT: &str = "vblock volume export <pool> <name> <file> [--force]";
pub(super) const SNAPSHOT: &str = "vblock snapshot <pool> <source> <name>";
pub(super) const CLONE: &str = "vblock clone <pool> <source> <name>";
pub(super) const CHECK: &str = "vblock check <pool>";
pub(super) const DUMP: &str = "vblock dump <pool>";

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
  vblock volume import <pool> <name> <file>
      a raw image into the volume (created at the file's size if it does
      not exist); all-zero clusters of the file are not allocated
  vblock volume export <pool> <name> <file> [--force]
      the volume into a new raw file (--force replaces one), sparse where
      the volume has holes
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
