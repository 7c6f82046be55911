//! One vhost-user-net port: a [`SocketServer`] whose sessions are
//! [`NetBackend`]s of one switch port.

use super::device::NetBackend;
use crate::datapath::Datapath;
use crate::forward::PortTable;
use crate::session::{ServeOptions, SessionBackend, SocketServer};
use std::io;
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

impl NetPort {
    /// Binds the socket now (so a bad path fails at start-up) and serves
    /// frontends on a thread of its own, as `options` say.
    pub fn spawn(self: Arc<Self>, options: &ServeOptions) -> io::Result<NetPortHandle> {
        let socket = self.config.socket.clone();
        let name = format!("port {}", self.name);
        SocketServer::spawn_with(&name, &socket, options, move |mem| {
            Ok(NetBackend::new(self.clone(), mem))
        })
    }
}

impl SessionBackend for NetBackend {
    fn detach(&self) {
        // Link down: withdraw the RX queue and forget the port's stations.
        self.0.withdraw();
    }
}
