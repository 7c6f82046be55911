//! In-process test frontend: the test plays the VMM (and the guest driver) against a
//! vhost-user backend, over memfd guest memory.
//!
//! Use from an integration test as `test_kit::frontend`.
//!
//! - [`guest_memory`]: memfd guest RAM + bump allocator.
//! - [`split_ring`]: driver side of a split virtqueue.
//! - [`vhost_frontend`]: the vhost-user frontend steps every driver shares (connect,
//!   feature negotiation, queue setup), raw descriptors, eventfd waits.
//! - [`virtio_net`]: `GuestNic`, a virtio-net device driver over vhost-user.
//! - [`virtio_blk`]: `GuestBlk`, a virtio-blk device driver over vhost-user (N queues,
//!   well-formed requests and raw chains for hostile input).
//! - [`blk_io`]: the benches' QD-N random I/O driver on a `GuestBlk` queue.
//! - [`dirty_log`]: the VMM's side of a live migration's dirty log (SET_LOG_BASE,
//!   LOG_ALL, reading the bits back).
//! - [`smol`]: `SmolNic` (smoltcp `Device` on a `GuestNic`), ping and TCP helpers.
//! - [`daemon_host`]: `DaemonHost`, the real daemon in process on a config of the
//!   test's own, in a fresh directory (what the fixtures below build on).
//! - [`blk_daemon`]: the real daemon in process serving a pool's volumes (`BlkDaemon`).
//! - [`fabric`]: the real daemon in process, on a config of the test's own.
//! - [`frames`]: Ethernet frame builders.
//! - [`counters`], [`daemon_host`]: the kit's, shared with [`crate::blkio`].

pub use crate::{counters, daemon_host};

pub mod blk_daemon;
pub mod blk_io;
pub mod dirty_log;
pub mod fabric;
pub mod frames;
pub mod guest_memory;
pub mod smol;
pub mod split_ring;
pub mod vhost_frontend;
pub mod virtio_blk;
pub mod virtio_net;

// Short paths for the common items.
pub use frames::{eth, mac, tagged, BROADCAST};
pub use vhost_frontend::RawDesc;
pub use virtio_net::{GuestNic, NicOptions};
