//! The NBD listening sockets: a Unix socket (mode 0600, like the control
//! socket) and optionally a TCP address, each with the daemon's accept loop
//! (`crate::accept`): a thread per client, at most [`MAX_CLIENTS`] at once.
//! The negotiation must finish within [`NEGOTIATION_TIMEOUT`]; after it a
//! client may stay idle. At stop every connection is shut down and waited
//! for, so no session keeps a pool open after the daemon.

use super::session::{self, Stream};
use super::NbdStats;
use crate::accept::{self, Acceptor, Limits};
use crate::runtime::Runtime;
use fabric_config::NbdConfig;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vhost_backends::listen::{self, SocketAccess};

/// Connections served at once (over both sockets).
pub const MAX_CLIENTS: usize = 16;
/// Each read and write during the negotiation; each write after it.
pub const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`NbdServer::stop`] waits for the sessions it shut down.
const STOP_PATIENCE: Duration = Duration::from_secs(5);

/// The connections being served, each with a way to end it.
#[derive(Default)]
struct Sessions {
    next: u64,
    closers: HashMap<u64, Box<dyn Fn() + Send>>,
}

pub struct NbdServer {
    socket: PathBuf,
    tcp: Option<SocketAddr>,
    acceptors: Vec<Acceptor>,
    sessions: Arc<Mutex<Sessions>>,
    stats: Arc<NbdStats>,
}

impl NbdServer {
    /// Binds `cfg.socket` (a stale socket is replaced) and `cfg.tcp` if
    /// given, and serves them; errors name the key.
    pub fn spawn(cfg: &NbdConfig, rt: Arc<Runtime>) -> io::Result<NbdServer> {
        const SOCKET_KEY: &str = "nbd.socket";
        crate::sockets::prepare(&cfg.socket, SOCKET_KEY)?;
        let unix = listen::bind(&cfg.socket, &SocketAccess::default())
            .map_err(|e| crate::sockets::named(SOCKET_KEY, e))?;
        let mut server = NbdServer {
            socket: cfg.socket.clone(),
            tcp: None,
            acceptors: Vec::new(),
            sessions: Arc::default(),
            stats: Arc::default(),
        };
        server.acceptors.push(server.accept(unix, "nbd-unix", &rt)?);
        log::info!("nbd: serving on {}", cfg.socket.display());
        if let Some(addr) = cfg.tcp {
            let tcp = TcpListener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("nbd.tcp {addr}: {e}")))?;
            server.tcp = Some(tcp.local_addr()?);
            server.acceptors.push(server.accept(tcp, "nbd-tcp", &rt)?);
            log::info!("nbd: serving on tcp {}", server.tcp.unwrap_or(addr));
        }
        Ok(server)
    }

    fn accept<L>(&self, listener: L, name: &'static str, rt: &Arc<Runtime>) -> io::Result<Acceptor>
    where
        L: accept::Listener,
        L::Stream: Stream,
    {
        let limits = Limits {
            name,
            max_clients: MAX_CLIENTS,
            timeout: NEGOTIATION_TIMEOUT,
        };
        let (rt, sessions, stats) = (rt.clone(), self.sessions.clone(), self.stats.clone());
        let serve = move |stream: L::Stream| {
            let Ok(closer) = stream.closer() else { return };
            let id = {
                let mut s = lock(&sessions);
                s.next += 1;
                let id = s.next;
                s.closers.insert(id, closer);
                id
            };
            session::serve(stream, &rt, &stats);
            lock(&sessions).closers.remove(&id);
        };
        // Dropped: the client sees the connection close before the greeting.
        let refuse = |_stream: L::Stream| log::warn!("nbd: too many clients, one refused");
        accept::spawn(listener, limits, serve, refuse)
    }

    /// The TCP address served (its port, when `tcp` asked for port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    pub fn stats(&self) -> &NbdStats {
        &self.stats
    }

    /// Stops accepting, ends every connection and waits for them (at most
    /// `STOP_PATIENCE`), removes the socket.
    pub fn stop(self) {
        for a in self.acceptors {
            a.stop();
        }
        for close in lock(&self.sessions).closers.values() {
            close();
        }
        let began = Instant::now();
        while !lock(&self.sessions).closers.is_empty() && began.elapsed() < STOP_PATIENCE {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = listen::claim(&self.socket);
    }
}

fn lock(s: &Mutex<Sessions>) -> std::sync::MutexGuard<'_, Sessions> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}
