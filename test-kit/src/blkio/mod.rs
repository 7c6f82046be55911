//! Third-party vhost-user-blk client for tests and benches, on libblkio (the
//! `blkio` crate, driver `virtio-blk-vhost-user`): a real virtio-blk driver
//! speaking vhost-user to a backend socket, no VM needed.
//!
//! Use from an integration test or bench as `test_kit::blkio`.
//!
//! - [`client`]: [`BlkClient`] (connect with retry, device facts) and
//!   [`BlkQueue`] (synchronous read/write/flush/discard/write-zeroes and a
//!   raw submit/wait API), with typed errors ([`BlkError`]).
//! - [`driver`]: the QD-N random I/O driver for benches ([`run_random`],
//!   [`run_io`]), on any [`IoQueue`]: a [`BlkQueue`] here, or the
//!   in-process frontend's `GuestBlk` (`crate::frontend::blk_io`).
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

pub mod client;
pub use crate::{counters, daemon_host, pattern};
pub mod driver;
pub mod qsd;

pub use client::{BlkClient, BlkError, BlkQueue, ConnectOptions, DeviceInfo};
pub use driver::{run_io, run_random, IoJob, IoKind, IoQueue, IoStats, Offsets};
pub use pattern::{fill_pattern, pattern, verify, verify_zero, Mismatch};
pub use qsd::{BackendProcess, Image, Qsd, QsdOptions, TestDir};
