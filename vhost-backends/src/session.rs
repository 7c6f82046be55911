//! One vhost-user socket serving one frontend (a QEMU guest, a DPDK
//! virtio-user, a libblkio client...) at a time, and the next one after it
//! leaves, without restarting anything else. Shared by every device type.
//!
//! Each connection gets a fresh backend (nothing negotiated by a previous
//! frontend leaks into the next) and a fresh `VhostUserDaemon`, reached
//! through the [`relay`]. A frontend must send its first
//! message within [`ServeOptions::handshake_timeout`]; a silent one is
//! dropped so it cannot hold the socket.

use crate::listen::{self, SocketAccess};
use crate::relay::{self, NoHooks, RelayHooks};
use crate::{GuestMem, GuestMemAtomic};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
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

    /// The session is over: its vring workers and relay have stopped, so
    /// nothing of it runs any more.
    fn ended(&self) {}

    /// What answers the messages the relay handles itself (inflight
    /// tracking, the dirty log, SEND_RARP, the backend request channel).
    fn relay_hooks(&self) -> Arc<dyn RelayHooks> {
        Arc::new(NoHooks)
    }
}

/// How a socket is served.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Who may connect.
    pub access: SocketAccess,
    /// A frontend that sends no complete message header within this time is
    /// dropped, so a silent client cannot hold the socket.
    pub handshake_timeout: Duration,
    /// Offer the dirty log of a live migration (VHOST_F_LOG_ALL and
    /// VHOST_USER_PROTOCOL_F_LOG_SHMFD, `crate::dirty_log`) on every port
    /// and export; without it QEMU refuses to migrate the guest.
    pub live_migration: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            access: SocketAccess::default(),
            handshake_timeout: Duration::from_secs(5),
            live_migration: true,
        }
    }
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
    /// Binds `socket` now (so a bad path fails at start-up; only a stale
    /// socket is replaced, see [`listen::claim`]) and serves frontends on a
    /// thread named after `name`; `make` builds the backend of each
    /// connection over its guest memory.
    pub fn spawn_with<B, F>(
        name: &str,
        socket: &Path,
        options: &ServeOptions,
        make: F,
    ) -> io::Result<SocketServer>
    where
        B: SessionBackend,
        F: Fn(GuestMemAtomic) -> io::Result<B> + Send + 'static,
    {
        let listener = listen::bind(socket, &options.access)?;
        let timeout = options.handshake_timeout;
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let sessions = Arc::new(AtomicU64::new(0));
        let (stop2, current2, sessions2) = (stop.clone(), current.clone(), sessions.clone());
        let owned_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("vu-{name}"))
            .spawn(move || {
                let server = Server {
                    name: &owned_name,
                    stop: &stop2,
                    current: &current2,
                    handshake_timeout: timeout,
                };
                server.serve(listener, &make, &sessions2)
            })?;
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
        // Only our socket: whatever else may have been put there stays.
        if listen::claim(&self.socket).is_err() {
            log::warn!(
                "{} is no longer our socket; left alone",
                self.socket.display()
            );
        }
    }
}

/// What the accept loop of one socket shares with [`SocketServer`].
struct Server<'a> {
    name: &'a str,
    stop: &'a AtomicBool,
    current: &'a Mutex<Option<ShutdownHandle>>,
    handshake_timeout: Duration,
}

impl Server<'_> {
    fn serve<B, F>(&self, listener: UnixListener, make: &F, sessions: &AtomicU64)
    where
        B: SessionBackend,
        F: Fn(GuestMemAtomic) -> io::Result<B>,
    {
        let name = self.name;
        while !self.stop.load(Ordering::Acquire) {
            let frontend = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) => {
                    log::warn!("{name}: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if self.stop.load(Ordering::Acquire) {
                break; // woken by SocketServer::stop
            }
            let peer = peer_of(&frontend);
            match self.await_hello(&frontend) {
                Hello::Sent => {}
                Hello::Stopped => break,
                Hello::Silent => {
                    log::warn!(
                        "{name}: frontend {peer} sent nothing for {:?}; dropped",
                        self.handshake_timeout
                    );
                    continue;
                }
                Hello::Gone => {
                    log::info!("{name}: frontend {peer} left before its first message");
                    continue;
                }
            }
            let session = sessions.fetch_add(1, Ordering::Relaxed) + 1;
            log::info!("{name}: frontend {peer} connected (session {session})");
            if let Err(e) = serve_session(name, make, frontend, self.current) {
                log::warn!("{name}: session failed: {e}");
            }
            log::info!("{name}: frontend disconnected");
        }
    }

    /// Waits until `frontend` has sent a whole message header (12 bytes),
    /// at most the handshake timeout, looking in every 100 ms for a stop.
    fn await_hello(&self, frontend: &UnixStream) -> Hello {
        const HEADER_LEN: usize = 12;
        let deadline = Instant::now() + self.handshake_timeout;
        loop {
            let mut buf = [0u8; HEADER_LEN];
            // SAFETY: recv into our own buffer; MSG_PEEK leaves the bytes
            // (and any fds) for the relay.
            let n = unsafe {
                libc::recv(
                    frontend.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    HEADER_LEN,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            let err = (n < 0).then(io::Error::last_os_error);
            match (n, err) {
                (_, Some(e)) if e.kind() != io::ErrorKind::WouldBlock => return Hello::Gone,
                (0, None) => return Hello::Gone,
                (n, None) if n as usize >= HEADER_LEN => return Hello::Sent,
                _ => {}
            }
            if self.stop.load(Ordering::Acquire) {
                return Hello::Stopped;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Hello::Silent;
            }
            // Part of a header is readable at once; sleep then, instead of
            // spinning on poll.
            let slice = left.min(Duration::from_millis(100));
            if n > 0 {
                std::thread::sleep(slice.min(Duration::from_millis(10)));
            } else {
                let mut pfd = libc::pollfd {
                    fd: frontend.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, slice.as_millis().max(1) as i32) };
            }
        }
    }
}

/// How a new connection's first message went.
enum Hello {
    Sent,
    Silent,
    Gone,
    Stopped,
}

/// `pid P uid U` of a connected peer, for the log.
fn peer_of(stream: &UnixStream) -> String {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if r == 0 {
        format!("(pid {} uid {})", cred.pid, cred.uid)
    } else {
        "(peer unknown)".to_owned()
    }
}

/// Serves one frontend until it leaves.
fn serve_session<B, F>(
    name: &str,
    make: &F,
    frontend: UnixStream,
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
    // The handler side of the relay: `VhostUserDaemon::start` only accepts
    // from a listener, so one is made that nobody else can reach (see
    // `listen::private_pair`); it is already connected to when it accepts.
    let (inner, handler_side) = listen::private_pair()?;
    let mut inner = Listener::from(inner);
    daemon
        .start(&mut inner)
        .map_err(|e| io::Error::other(e.to_string()))?;
    drop(inner);
    let relay = relay::spawn(frontend, handler_side, backend.relay_hooks())?;
    *current.lock().unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
    let ended = daemon.wait();
    current.lock().unwrap_or_else(|e| e.into_inner()).take();
    backend.detach();
    // Dropping the daemon stops and joins its vring workers.
    drop(daemon);
    for t in relay {
        let _ = t.join();
    }
    backend.ended();
    if let Err(e) = ended {
        // A guest powering off or QEMU exiting ends the session this way too.
        log::debug!("{name}: session ended: {e}");
    }
    Ok(())
}
