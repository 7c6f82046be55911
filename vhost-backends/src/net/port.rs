//! One vhost-user-net port: what the guest sees of it and where it forwards.
//! Served by a [`SocketServer`] whose sessions are `NetBackend`s
//! (`NetPort::spawn`, in `device.rs`).

use super::connection::MAX_QUEUE_PAIRS;
use crate::datapath::Datapath;
use crate::forward::PortTable;
use crate::session::SocketServer;
use std::path::PathBuf;
use std::sync::Arc;
use vswitch::{PortId, Switch};

/// What the guest sees of the port.
#[derive(Clone, Debug)]
pub struct NetPortConfig {
    pub socket: PathBuf,
    /// MAC offered in config space (VIRTIO_NET_F_MAC); `None` lets the guest pick.
    pub mac: Option<[u8; 6]>,
    pub mtu: u16,
    /// Largest virtqueue the frontend may set up.
    pub queue_size: u16,
    /// Queue pairs offered (VIRTIO_NET_F_MQ when above 1).
    pub queue_pairs: u16,
    /// Offer the checksum and segmentation offloads (`OFFLOAD_FEATURES`).
    pub offloads: bool,
}

impl NetPortConfig {
    /// The queue pairs the device has: `queue_pairs` within
    /// `1..=MAX_QUEUE_PAIRS` (the configuration checked it already).
    pub fn pairs(&self) -> usize {
        usize::from(self.queue_pairs).clamp(1, MAX_QUEUE_PAIRS)
    }
}

/// A switch port served over vhost-user-net.
pub struct NetPort {
    pub name: String,
    pub id: PortId,
    pub switch: Arc<Switch>,
    pub table: Arc<PortTable>,
    pub datapath: Arc<Datapath>,
    pub config: NetPortConfig,
}

/// The running socket of a port; `stop` disconnects its frontend.
pub type NetPortHandle = SocketServer;
