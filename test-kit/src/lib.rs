//! Shared harnesses of fabric's integration tests and benches, each helper once.
//! Never published, never linked into the daemon: a dev-dependency of the root
//! package only.
//!
//! - [`frontend`]: the in-process vhost-user frontend (the test plays the VMM over
//!   memfd guest memory): `GuestNic`, `GuestBlk`, smoltcp guests, and the real
//!   daemon in process on a config of the test's own (`Fabric`, `BlkDaemon`).
//! - [`blkio`]: libblkio as a third-party vhost-user-blk client, the random I/O
//!   driver of the benches, qemu-storage-daemon as the reference backend.
//! - [`netns`]: Linux network namespaces, veth pairs and packet capture as peers.
//! - [`qemu`]: real QEMU (TCG) guests on the test image, net and block.
//! - [`testpmd`]: DPDK `dpdk-testpmd` against the `vswitchd` binary, or as a
//!   vhost-user backend peer of `GuestNic`.
//! - [`pattern`]: seeded data whose every byte is a function of its offset.
//! - [`daemon_host`], [`counters`]: the daemon in process in a fresh directory, and
//!   its counters and metrics read by whole words.
//! - [`dir`] ([`TestDir`]), [`proc`] ([`ChildGuard`], bounded waits on children),
//!   [`wait`] (bounded polling), [`bins`] (the built `vswitchd`/`fabricctl`),
//!   [`SplitMix64`] (the one seeded PRNG, vblock's) and [`serial`] (a lock for the
//!   few tests that must not overlap).
//!
//! Everything fails loudly: a missing tool, image or privilege is a panic naming
//! the fix, never a skip.

pub mod bins;
pub mod blkio;
pub mod counters;
pub mod daemon_host;
pub mod dir;
pub mod frontend;
pub mod netns;
pub mod pattern;
pub mod proc;
pub mod qemu;
pub mod testpmd;
pub mod wait;

pub use dir::TestDir;
pub use proc::ChildGuard;
/// The seeded PRNG of every test and bench: vblock's, behind its `sim` feature.
pub use vblock::dev::SplitMix64;

/// Held by a test that must not run while another holding it runs (tests of one
/// binary share a process: its environment, signal dispositions, fixed ports).
/// A panicking holder does not poison it for the rest.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
