//! Third-party vhost-user-blk client for tests and benches, on libblkio (the
//! `blkio` crate, driver `virtio-blk-vhost-user`): a real virtio-blk driver
//! speaking vhost-user to a backend socket, no VM needed.
//!
//! Use from an integration test with `mod blk_support;` (a bench uses
//! `#[path = "../tests/blk_support/mod.rs"] mod blk_support;`).
//!
//! - [`client`]: [`BlkClient`] (connect with retry, device facts) and
//!   [`BlkQueue`] (synchronous read/write/flush/discard/write-zeroes and a
//!   raw submit/wait API), with typed errors ([`BlkError`]).
//! - [`driver`]: the QD-N random I/O driver for benches ([`run_random`],
//!   [`run_io`]).
//! - [`qsd`]: [`Qsd`], `qemu-storage-daemon` as the reference backend, plus
//!   [`TestDir`] and image creation; [`BackendProcess`] runs any export
//!   daemon (ours too) and reaps it on drop.
//! - [`pattern`]: deterministic data patterns and their verification.
//! - [`counters`]: the daemon's counter lines, read by whole words.
//! - [`daemon_host`]: `DaemonHost`, the daemon in process on a config of the
//!   test's own, in a fresh directory.
//!
//! Everything here fails loudly: a missing `qemu-storage-daemon`, a refused
//! connection or a wrong byte is a panic or an `Err` naming what is wrong,
//! never a silent skip.

// Each test or bench uses a different part of the library.
#![allow(dead_code)]

pub mod client;
// The same file as `support::counters`: a test using both libraries loads it twice.
#[allow(clippy::duplicate_mod)]
#[path = "../support/counters.rs"]
pub mod counters;
// The same file as `support::daemon_host`, for the same reason.
#[allow(clippy::duplicate_mod)]
#[path = "../support/daemon_host.rs"]
pub mod daemon_host;
pub mod driver;
pub mod pattern;
pub mod qsd;

#[allow(unused_imports)]
pub use client::{BlkClient, BlkError, BlkQueue, ConnectOptions, DeviceInfo};
#[allow(unused_imports)]
pub use driver::{run_io, run_random, IoJob, IoKind, IoStats, Offsets};
#[allow(unused_imports)]
pub use pattern::{fill_pattern, pattern, verify, verify_zero, Mismatch};
#[allow(unused_imports)]
pub use qsd::{BackendProcess, Image, Qsd, QsdOptions, TestDir};
