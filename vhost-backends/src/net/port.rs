//! One vhost-user-net port: what the guest sees of it and where it forwards.
//! Served by a [`SocketServer`] whose sessions are `NetBackend`s
//! (`NetPort::spawn`, in `device.rs`).

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
