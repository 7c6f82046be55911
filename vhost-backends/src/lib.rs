//! vhost-user devices that connect guests to the engines.
//!
//! - [`net`]: vhost-user-net ports of a [`vswitch::Switch`]. A guest's TX kick runs
//!   to completion on the port's worker thread: pop a batch, let the switch decide,
//!   copy each frame straight into the destination port's RX buffers.
//! - [`port_table`]: where each switch port's receive side is published while its
//!   peer is connected, so senders reach it without channels or extra threads.

pub mod blk;
pub mod datapath;
pub mod listen;
pub mod net;
pub mod port_table;
pub mod relay;
pub mod session;
pub mod split_ring;
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
