//! One vhost-user-net port: a listening socket that serves one frontend (a QEMU
//! guest, a DPDK virtio-user, ...) at a time, and the next one after it leaves,
//! without restarting anything else.

use super::device::NetBackend;
use crate::datapath::Datapath;
use crate::port_table::PortTable;
use crate::relay;
use crate::{GuestMem, GuestMemAtomic};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
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
    pub datapath: Arc<Datapath>,
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
        // A stale socket file from a crashed daemon would make bind fail; the
        // daemon has already checked no live process is listening on it.
        let _ = std::fs::remove_file(&self.config.socket);
        let listener = UnixListener::bind(&self.config.socket).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", self.config.socket.display()),
            )
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
    listener: UnixListener,
    stop: &AtomicBool,
    current: &Mutex<Option<ShutdownHandle>>,
) {
    let mut sessions = 0u64;
    while !stop.load(Ordering::Acquire) {
        let frontend = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("port {}: accept failed: {e}", port.name);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if stop.load(Ordering::Acquire) {
            break; // woken by NetPortHandle::stop
        }
        sessions += 1;
        log::info!("port {}: frontend connected", port.name);
        if let Err(e) = serve_session(&port, frontend, sessions, current) {
            log::warn!("port {}: session failed: {e}", port.name);
        }
        log::info!("port {}: frontend disconnected, link down", port.name);
    }
}

/// Serves one frontend until it leaves: a fresh device and vhost-user daemon,
/// reached through the [`relay`].
fn serve_session(
    port: &Arc<NetPort>,
    frontend: UnixStream,
    session: u64,
    current: &Mutex<Option<ShutdownHandle>>,
) -> io::Result<()> {
    let mem = GuestMemAtomic::new(GuestMem::new());
    let backend = NetBackend::new(port.clone(), mem.clone());
    let mut daemon = VhostUserDaemon::new(port.name.clone(), backend.clone(), mem)
        .map_err(|e| io::Error::other(e.to_string()))?;
    // The handler side of the relay: a private abstract socket, no file.
    let name = format!("fabric-{}-{}-{session}", std::process::id(), port.name);
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    let mut inner = Listener::from(UnixListener::bind_addr(&addr)?);
    let handler_side = UnixStream::connect_addr(&addr)?;
    daemon
        .start(&mut inner)
        .map_err(|e| io::Error::other(e.to_string()))?;
    drop(inner);
    let relay = relay::spawn(frontend, handler_side)?;
    *current.lock().unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
    let ended = daemon.wait();
    current.lock().unwrap_or_else(|e| e.into_inner()).take();
    backend.0.withdraw();
    // Dropping the daemon stops and joins its vring worker.
    drop(daemon);
    for t in relay {
        let _ = t.join();
    }
    if let Err(e) = ended {
        // A guest powering off or QEMU exiting ends the session this way too.
        log::debug!("port {}: session ended: {e}", port.name);
    }
    Ok(())
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
