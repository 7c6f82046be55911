//! vhost-user devices that connect guests to the engines.
//!
//! - [`forward`]: the forwarding plane every port kind shares: a batch of
//!   frames goes through the switch and is copied straight into each
//!   destination's receive side, found in the [`forward::PortTable`] where
//!   each port publishes it while its peer is connected (no channels, no
//!   extra threads).
//! - [`datapath`]: the threads that poll every port's transmit side (guest
//!   rings, TAP devices, tunnel sockets) and sleep in one `epoll_wait`.
//! - [`net`]: vhost-user-net ports of a [`vswitch::Switch`]. A guest's TX batch runs
//!   to completion on a [`datapath`] thread: pop, forward, return the chains.
//! - [`tap`], [`tunnel`]: TAP and VXLAN ports, polled by the same threads and
//!   feeding the same forwarding.
//! - [`blk`]: vhost-user-blk exports of a vblock volume.
//! - [`split_ring`]: the device side of a split virtqueue; every value the
//!   driver controls is validated there, once.
//! - [`session`], [`relay`], [`listen`]: one socket serving one frontend after
//!   another, the message relay in front of the `vhost` crate, and the
//!   listening sockets with their permissions.

pub mod blk;
pub mod datapath;
pub mod dirty_log;
pub mod forward;
pub mod listen;
pub mod net;
pub(crate) mod relay;
pub mod session;
pub(crate) mod split_ring;
pub mod tap;
pub mod tunnel;

/// Guest memory as mapped from the frontend's memory table (no dirty-page log:
/// live migration of the backend state is not supported).
pub type GuestMem = vm_memory::GuestMemoryMmap<()>;
/// Guest memory that the frontend may replace at run time (SET_MEM_TABLE).
pub type GuestMemAtomic = vm_memory::GuestMemoryAtomic<GuestMem>;

/// A GET_CONFIG read of `size` bytes at `offset` of a device's config
/// space: what lies beyond the space reads as zeros (the frontend decides
/// how much it asks for).
pub fn config_read(space: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let start = (offset as usize).min(space.len());
    let end = start.saturating_add(size as usize).min(space.len());
    let mut out = space[start..end].to_vec();
    out.resize(size as usize, 0);
    out
}
