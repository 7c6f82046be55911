//! vhost-user devices that connect guests to the engines.
//!
//! - [`net`]: vhost-user-net ports of a [`vswitch::Switch`]. A guest's TX kick runs
//!   to completion on the port's worker thread: pop a batch, let the switch decide,
//!   copy each frame straight into the destination port's RX buffers.
//! - [`port_table`]: where each switch port's receive side is published while its
//!   peer is connected, so senders reach it without channels or extra threads.

pub mod blk;
pub mod datapath;
pub mod net;
pub mod port_table;
pub mod relay;
pub mod session;
pub mod split_ring;

/// Guest memory as mapped from the frontend's memory table (no dirty-page log:
/// live migration of the backend state is not supported).
pub type GuestMem = vm_memory::GuestMemoryMmap<()>;
/// Guest memory that the frontend may replace at run time (SET_MEM_TABLE).
pub type GuestMemAtomic = vm_memory::GuestMemoryAtomic<GuestMem>;
