//! vblock: a thin-provisioned block pool on a file or block device.
//!
//! Work in progress (issue: vblock pool). So far the layers below the pool:
//! - [`dev`]: the block device seam: a real file or device opened O_DIRECT, and
//!   a simulated disk with a volatile write cache for crash tests.
//! - [`format`](mod@format): the on-disk codecs of FORMAT.md: superblock (two copies),
//!   layout, journal blocks and records, replay.
//! - [`meta`]: the in-memory metadata: volumes, cluster maps (two-level
//!   radix), reference counts, allocator with the releasing set, `check`.
//! - [`uring`]: the io_uring engine of the datapath (batched submission,
//!   completions through an eventfd).

pub mod cli;
pub mod dev;
pub mod engine;
pub mod format;
pub mod meta;
pub mod pool;
pub mod uring;
