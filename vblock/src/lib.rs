//! vblock: a thin-provisioned block pool on a file or block device.
//!
//! The layers, bottom up:
//! - [`dev`]: the block device seam: a real file or device opened O_DIRECT, and
//!   a simulated disk with a volatile write cache for crash tests (feature
//!   `sim`, off by default: test, fuzz and bench code only).
//! - [`format`](mod@format): the on-disk codecs of FORMAT.md: superblock (two copies),
//!   layout, journal blocks and records, checkpoints, replay.
//! - [`meta`]: the in-memory metadata: volumes, cluster maps (two-level
//!   radix), reference counts, allocator with the releasing set, `check`.
//! - [`pool`]: the pool on a device: control operations, the synchronous data
//!   path, flush / stage / checkpoint, recovery on open.
//! - [`uring`]: the io_uring ring under the engine, one per queue (batched
//!   submission, completions through an eventfd).
//! - [`engine`]: the asynchronous volume datapath of one queue on that ring:
//!   requests split per cluster, bounded windows, shared fsync rounds.
//! - [`cli`]: the offline `vblock` tool.

pub mod cli;
pub mod dev;
pub mod engine;
pub mod format;
pub mod meta;
pub mod pool;
pub mod uring;
