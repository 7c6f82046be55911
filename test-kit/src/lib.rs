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
//! - [`qemu`]: real QEMU (TCG) guests on the test image, net and block; live
//!   migration between QEMU processes (`qemu::migrate`, a QMP client in `qemu::qmp`).
//! - [`libvirt`]: a private `libvirtd` (its own mount namespace and directories)
//!   running QEMU as the unprivileged `libvirt-qemu`, driven with `virsh`.
//! - [`testpmd`]: DPDK `dpdk-testpmd` against the `vswitchd` binary, or as a
//!   vhost-user backend peer of `GuestNic`.
//! - [`pattern`]: seeded data whose every byte is a function of its offset.
//! - [`daemon_host`], [`counters`]: the daemon in process in a fresh directory, and
//!   its counters and metrics read by whole words.
//! - [`dir`] ([`TestDir`]), [`proc`] ([`ChildGuard`], bounded waits on children),
//!   [`wait`] (bounded polling), [`bins`] (the built `vswitchd`/`fabricctl`),
//!   [`SplitMix64`] (the one seeded PRNG, vblock's) and [`serial`]/[`shared`]
//!   (the lock for tests that must not overlap).
//!
//! Everything fails loudly: a missing tool, image or privilege is a panic naming
//! the fix, never a skip.

pub mod bins;
pub mod blkio;
pub mod counters;
pub mod daemon_host;
pub mod dir;
pub mod frontend;
pub mod libvirt;
pub mod netns;
pub mod pattern;
pub mod proc;
pub mod qemu;
pub mod stats;
pub mod testpmd;
pub mod wait;

pub use dir::TestDir;
pub use proc::ChildGuard;
/// The seeded PRNG of every test and bench: vblock's, behind its `sim` feature.
pub use vblock::dev::SplitMix64;

/// One lock per test process: [`serial`] takes it alone, [`shared`] beside
/// other sharers. A panicking holder does not poison it for the rest.
static LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held by a test that must run alone among the tests holding [`serial`] or
/// [`shared`] (tests of one binary share a process: its CPU time, memory,
/// threads, and the machine's cores, which testpmd busy-polls).
pub fn serial() -> std::sync::RwLockWriteGuard<'static, ()> {
    LOCK.write().unwrap_or_else(|e| e.into_inner())
}

/// Held by a test that may run beside other sharers but not beside a
/// [`serial`] one: kernel peers (ping, ARP) whose exact packet counts a
/// starved CPU would change.
pub fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    LOCK.read().unwrap_or_else(|e| e.into_inner())
}
