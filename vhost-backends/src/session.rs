//! One vhost-user socket serving one frontend (a QEMU guest, a DPDK
//! virtio-user, a libblkio client...) at a time, and the next one after it
//! leaves, without restarting anything else. Shared by every device type.
//!
//! Each connection gets a fresh backend (nothing negotiated by a previous
//! frontend leaks into the next) and a fresh `VhostUserDaemon`, reached
//! through the [`relay`](crate::relay).

use crate::relay::{self, InflightHandler};
use crate::{GuestMem, GuestMemAtomic};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VhostUserDaemon, VringMutex};

/// A device backend served per connection.
pub trait SessionBackend:
    VhostUserBackend<Bitmap = (), Vring = VringMutex<GuestMemAtomic>> + Clone + Send + Sync + 'static
{
    /// Called with the session's daemon before it serves (e.g. to put extra
    /// fds on its workers' epolls).
    fn attach(&self, _daemon: &VhostUserDaemon<Self>) -> io::Result<()> {
        Ok(())
    }

    /// The frontend left (or the server stops): undo what the session set up.
    fn detach(&self);

    /// Where the relay sends GET/SET_INFLIGHT_FD, for a device that tracks
    /// inflight I/O (and offers VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD).
    fn inflight_handler(&self) -> Option<Arc<dyn InflightHandler>> {
        None
    }
}

/// Refuses to take over a socket another live process is serving (a second
/// daemon on the same config would silently steal its guests).
pub fn check_socket_free(path: &Path) -> io::Result<()> {
    if UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is in use by another process (is vswitchd already running?)",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// The running accept loop of one socket; [`SocketServer::stop`] ends it.
pub struct SocketServer {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<ShutdownHandle>>>,
    sessions: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl SocketServer {
    /// Binds `socket` now (so a bad path fails at start-up) and serves
    /// frontends on a thread named after `name`; `make` builds the backend
    /// of each connection over its guest memory.
    pub fn spawn<B, F>(name: &str, socket: &Path, make: F) -> io::Result<SocketServer>
    where
        B: SessionBackend,
        F: Fn(GuestMemAtomic) -> io::Result<B> + Send + 'static,
    {
        // A stale socket file from a crashed daemon would make bind fail; the
        // caller has checked no live process is listening on it.
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", socket.display()),
            )
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let sessions = Arc::new(AtomicU64::new(0));
        let (stop2, current2, sessions2) = (stop.clone(), current.clone(), sessions.clone());
        let owned_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("vu-{name}"))
            .spawn(move || serve(&owned_name, listener, &make, &stop2, &current2, &sessions2))?;
        Ok(SocketServer {
            socket: socket.to_owned(),
            stop,
            current,
            sessions,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Frontends served so far (the current one included).
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

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

fn serve<B, F>(
    name: &str,
    listener: UnixListener,
    make: &F,
    stop: &AtomicBool,
    current: &Mutex<Option<ShutdownHandle>>,
    sessions: &AtomicU64,
) where
    B: SessionBackend,
    F: Fn(GuestMemAtomic) -> io::Result<B>,
{
    while !stop.load(Ordering::Acquire) {
        let frontend = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("{name}: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if stop.load(Ordering::Acquire) {
            break; // woken by SocketServer::stop
        }
        let session = sessions.fetch_add(1, Ordering::Relaxed) + 1;
        log::info!("{name}: frontend connected");
        if let Err(e) = serve_session(name, make, frontend, session, current) {
            log::warn!("{name}: session failed: {e}");
        }
        log::info!("{name}: frontend disconnected");
    }
}

/// Serves one frontend until it leaves.
fn serve_session<B, F>(
    name: &str,
    make: &F,
    frontend: UnixStream,
    session: u64,
    current: &Mutex<Option<ShutdownHandle>>,
) -> io::Result<()>
where
    B: SessionBackend,
    F: Fn(GuestMemAtomic) -> io::Result<B>,
{
    let mem = GuestMemAtomic::new(GuestMem::new());
    let backend = make(mem.clone())?;
    let mut daemon = VhostUserDaemon::new(name.to_owned(), backend.clone(), mem)
        .map_err(|e| io::Error::other(e.to_string()))?;
    backend.attach(&daemon)?;
    // The handler side of the relay: a private abstract socket, no file,
    // named uniquely in the process (two servers may share a name, e.g. two
    // daemons in one test process, or exports of two pools).
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let unique = NEXT.fetch_add(1, Ordering::Relaxed);
    let addr_name = format!("fabric-{}-{unique}-{session}", std::process::id());
    let addr = SocketAddr::from_abstract_name(addr_name.as_bytes())?;
    let mut inner = Listener::from(UnixListener::bind_addr(&addr)?);
    let handler_side = UnixStream::connect_addr(&addr)?;
    daemon
        .start(&mut inner)
        .map_err(|e| io::Error::other(e.to_string()))?;
    drop(inner);
    let relay = relay::spawn(frontend, handler_side, backend.inflight_handler())?;
    *current.lock().unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
    let ended = daemon.wait();
    current.lock().unwrap_or_else(|e| e.into_inner()).take();
    backend.detach();
    // Dropping the daemon stops and joins its vring workers.
    drop(daemon);
    for t in relay {
        let _ = t.join();
    }
    if let Err(e) = ended {
        // A guest powering off or QEMU exiting ends the session this way too.
        log::debug!("{name}: session ended: {e}");
    }
    Ok(())
}
