//! vhost-user-net ports: one vhost-user socket per switch port.
//!
//! Data flows TX -> switch -> RX: [`tx`] pops a batch from a guest's transmit
//! queue and hands it to [`crate::forward`]; [`rx`] is the guest's receive
//! queue as a `FrameSink`. [`device`] is the vhost-user device (features,
//! config space, events), [`port`] the accept loop that serves one frontend
//! after another on the same socket.

pub(crate) mod connection;
pub(crate) mod device;
pub(crate) mod port;
pub(crate) mod rx;
pub(crate) mod tx;

pub use port::{NetPort, NetPortConfig, NetPortHandle};

use crate::GuestMemAtomic;
use vhost_user_backend::VringMutex;

/// The vring type of our devices: a mutex is enough, every access is short.
pub(crate) type Vring = VringMutex<GuestMemAtomic>;
