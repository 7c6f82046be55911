//! vhost-user-net ports: one vhost-user socket per switch port.
//!
//! Data flows TX -> switch -> RX: [`tx`] pops a batch from a guest's transmit
//! queue and asks the switch where each frame goes; [`rx`] copies a frame into
//! the destination guest's receive queue. [`device`] is the vhost-user device
//! (features, config space, events), [`port`] the accept loop that serves one
//! frontend after another on the same socket.

pub mod device;
pub mod frame_source;
pub mod port;
pub mod rx;
pub mod tx;

pub use port::{NetPort, NetPortConfig, NetPortHandle};

use crate::GuestMemAtomic;
use vhost_user_backend::VringMutex;

/// The vring type of our devices: a mutex is enough, every access is short.
pub type Vring = VringMutex<GuestMemAtomic>;

/// `virtio_net_hdr_v1`: with VIRTIO_F_VERSION_1 the header is always 12 bytes,
/// `num_buffers` included, whether or not MRG_RXBUF is negotiated (§5.1.6.1).
pub const HDR_LEN: usize = 12;
