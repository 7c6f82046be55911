//! The forwarding plane every port kind shares (vhost-user guests, TAP
//! devices, VXLAN tunnels): a batch of received frames ([`FrameSource`]s) goes
//! through [`forward`], which lets the switch decide each frame and hands each
//! destination its share ([`Delivery`]s) through the [`FrameSink`] published
//! for it in the [`PortTable`].
//!
//! Knows nothing of where frames come from or of the threads that poll for
//! them (`crate::datapath`); port drivers depend on it, never the reverse.

mod batch;
mod flow_hash;
mod frame_source;
pub(crate) mod offload;
#[cfg(test)]
pub(crate) mod offload_tests;
mod port_table;
mod sink;

pub(crate) use batch::{forward, ForwardScratch, Ingress};
pub(crate) use flow_hash::{flow_hash, pick_queue};
pub(crate) use frame_source::{FrameSource, MAX_SEGMENTS};
pub use port_table::PortTable;
pub(crate) use sink::{Delivery, DeliveryReport, FrameSink};

/// Frames read per batch, from a guest's TX queue or a TAP device: a batch
/// runs to completion on one datapath thread.
pub(crate) const BATCH: usize = 64;

/// `virtio_net_hdr_v1`: with VIRTIO_F_VERSION_1 the header is always 12 bytes,
/// `num_buffers` included, whether or not MRG_RXBUF is negotiated (§5.1.6.1).
/// Guests' buffers and TAP devices (`TUNSETVNETHDRSZ`) both carry it.
pub(crate) const HDR_LEN: usize = 12;
