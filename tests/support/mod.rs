//! In-process test frontend: the test plays the VMM (and the guest driver) against a
//! vhost-user backend, over memfd guest memory.
//!
//! Use from an integration test with `mod support;`.
//!
//! - [`guest_memory`]: memfd guest RAM + bump allocator.
//! - [`split_ring`]: driver side of a split virtqueue.
//! - [`vhost_frontend`]: the vhost-user frontend steps every driver shares (connect,
//!   feature negotiation, queue setup), raw descriptors, eventfd waits.
//! - [`virtio_net`]: `GuestNic`, a virtio-net device driver over vhost-user.
//! - [`virtio_blk`]: `GuestBlk`, a virtio-blk device driver over vhost-user (N queues,
//!   well-formed requests and raw chains for hostile input).
//! - [`smol`]: `SmolNic` (smoltcp `Device` on a `GuestNic`), ping and TCP helpers.
//! - [`daemon_host`]: `DaemonHost`, the real daemon in process on a config of the
//!   test's own, in a fresh directory (what the fixtures below build on).
//! - [`blk_daemon`]: the real daemon in process serving a pool's volumes (`BlkDaemon`).
//! - [`fabric`]: the real daemon in process, on a config of the test's own.
//! - [`frames`]: Ethernet frame builders.
//! - [`testpmd`]: runs DPDK `dpdk-testpmd` as a third-party peer.

// Each integration test uses a different part of the harness.
#![allow(dead_code)]

pub mod blk_daemon;
pub mod counters;
pub mod daemon_host;
pub mod fabric;
pub mod frames;
pub mod guest_memory;
pub mod smol;
pub mod split_ring;
pub mod testpmd;
pub mod vhost_frontend;
pub mod virtio_blk;
pub mod virtio_net;

// Short paths for the common items; not every test uses all of them.
#[allow(unused_imports)]
pub use frames::{eth, mac, tagged, BROADCAST};
#[allow(unused_imports)]
pub use vhost_frontend::RawDesc;
#[allow(unused_imports)]
pub use virtio_net::{GuestNic, NicOptions};
