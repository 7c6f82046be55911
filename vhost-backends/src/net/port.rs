//! One vhost-user-net port: a listening socket that serves one frontend (a QEMU
//! guest, a DPDK virtio-user, ...) at a time, and the next one after it leaves,
//! without restarting anything else.

use super::device::NetBackend;
use crate::port_table::PortTable;
use crate::{GuestMem, GuestMemAtomic};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
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
    pub config: NetPortConfig,
}

/// The running accept loop of a port; [`NetPortHandle::stop`] ends it.
pub struct NetPortHandle {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<ShutdownHandle>>>,
    thread: Option<JoinHandle<()>>,
}

impl NetPort {
    /// Binds the socket now (so a bad path fails at start-up) and serves
    /// frontends on a thread of its own.
    pub fn spawn(self: Arc<Self>) -> io::Result<NetPortHandle> {
        let listener = Listener::new(&self.config.socket, true).map_err(|e| {
            io::Error::other(format!(
                "cannot listen on {}: {e}",
                self.config.socket.display()
            ))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let (stop2, current2) = (stop.clone(), current.clone());
        let socket = self.config.socket.clone();
        let thread = std::thread::Builder::new()
            .name(format!("port-{}", self.name))
            .spawn(move || serve(self, listener, &stop2, &current2))?;
        Ok(NetPortHandle {
            socket,
            stop,
            current,
            thread: Some(thread),
        })
    }
}

fn serve(
    port: Arc<NetPort>,
    mut listener: Listener,
    stop: &AtomicBool,
    current: &Mutex<Option<ShutdownHandle>>,
) {
    while !stop.load(Ordering::Acquire) {
        let mem = GuestMemAtomic::new(GuestMem::new());
        let backend = NetBackend::new(port.clone(), mem.clone());
        let mut daemon = match VhostUserDaemon::new(port.name.clone(), backend.clone(), mem) {
            Ok(d) => d,
            Err(e) => {
                log::error!("port {}: cannot create vhost-user daemon: {e}", port.name);
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if let Err(e) = daemon.start(&mut listener) {
            log::warn!("port {}: accept failed: {e}", port.name);
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        *current.lock().unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
        if stop.load(Ordering::Acquire) {
            // Woken by NetPortHandle::stop (or raced with it).
            daemon.request_shutdown();
            break;
        }
        log::info!("port {}: frontend connected", port.name);
        if let Err(e) = daemon.wait() {
            log::warn!("port {}: frontend session ended with error: {e}", port.name);
        }
        current.lock().unwrap_or_else(|e| e.into_inner()).take();
        backend.0.withdraw();
        log::info!("port {}: frontend disconnected, link down", port.name);
        // Dropping the daemon stops and joins its vring worker.
        drop(daemon);
    }
}

impl NetPortHandle {
    /// Disconnects the frontend, stops accepting and removes the socket.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(conn) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            conn.shutdown();
        }
        // Wake a blocking accept(); the loop sees `stop` and leaves.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
