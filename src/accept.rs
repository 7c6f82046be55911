//! The accept loop of the daemon's own servers (the control socket and the
//! metrics endpoint): a thread that sleeps in `poll` until a client or a stop
//! comes, at most [`Limits::max_clients`] clients served at once (each on a
//! thread of its own, more refused at once), and each client's reads and
//! writes bounded by [`Limits::timeout`], so a silent client costs a slot
//! for that long at most.
//!
//! vhost-user sockets keep their own loop (`vhost_backends::session`): a
//! socket serves one frontend at a time on its accept thread and leaves a
//! second one waiting in the backlog (not refused), and its handshake peeks
//! at the first message without consuming it, as the relay must read it with
//! its file descriptors. Neither fits a thread per client with a cap.

use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A listening socket [`spawn`] can serve.
pub trait Listener: AsRawFd + Send + 'static {
    type Stream: Send + 'static;
    fn set_nonblocking(&self) -> io::Result<()>;
    fn accept_stream(&self) -> io::Result<Self::Stream>;
    /// Bounds each read and each write on `stream` by `timeout`.
    fn set_timeouts(stream: &Self::Stream, timeout: Duration) -> io::Result<()>;
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    fn set_nonblocking(&self) -> io::Result<()> {
        TcpListener::set_nonblocking(self, true)
    }
    fn accept_stream(&self) -> io::Result<TcpStream> {
        self.accept().map(|(s, _)| s)
    }
    fn set_timeouts(s: &TcpStream, timeout: Duration) -> io::Result<()> {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    fn set_nonblocking(&self) -> io::Result<()> {
        UnixListener::set_nonblocking(self, true)
    }
    fn accept_stream(&self) -> io::Result<UnixStream> {
        self.accept().map(|(s, _)| s)
    }
    fn set_timeouts(s: &UnixStream, timeout: Duration) -> io::Result<()> {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))
    }
}

/// How a server takes its clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// For thread names and the log.
    pub name: &'static str,
    /// Clients served at once.
    pub max_clients: usize,
    /// Each read and write of a client.
    pub timeout: Duration,
}

/// A running accept loop; [`Acceptor::stop`] (or dropping it) ends it.
pub struct Acceptor {
    wake: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// Stops accepting and joins the accept thread. Clients being served
    /// finish on their own threads (within their timeout).
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(mut wake) = self.wake.take() {
            let _ = wake.write_all(&[1]);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Accepts on `listener` from a thread of its own: each client is `serve`d
/// on a thread of its own, or given to `refuse` (on the accept thread) when
/// `limits.max_clients` are being served already.
pub fn spawn<L: Listener>(
    listener: L,
    limits: Limits,
    serve: impl Fn(L::Stream) + Send + Sync + 'static,
    refuse: impl Fn(L::Stream) + Send + 'static,
) -> io::Result<Acceptor> {
    let (wake, woken) = UnixStream::pair()?;
    // Non-blocking: a client gone between poll and accept must not block the
    // loop (and the stop with it).
    listener.set_nonblocking()?;
    let thread = std::thread::Builder::new()
        .name(limits.name.into())
        .spawn(move || accept_loop(listener, woken, limits, Arc::new(serve), refuse))?;
    Ok(Acceptor {
        wake: Some(wake),
        thread: Some(thread),
    })
}

/// Counts a client being served; the count drops with it.
struct ClientSlot(Arc<AtomicUsize>);

impl ClientSlot {
    fn take(active: &Arc<AtomicUsize>, max: usize) -> Option<ClientSlot> {
        active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ClientSlot(active.clone()))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits for the listener or the stop; true when stopped.
fn wait(listener: &impl AsRawFd, woken: &UnixStream, name: &str) -> bool {
    let mut fds = [listener.as_raw_fd(), woken.as_raw_fd()].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: two pollfds we own, for descriptors that outlive the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            log::warn!("{name}: poll: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
        return false;
    }
    fds[1].revents != 0
}

fn accept_loop<L: Listener>(
    listener: L,
    woken: UnixStream,
    limits: Limits,
    serve: Arc<dyn Fn(L::Stream) + Send + Sync>,
    refuse: impl Fn(L::Stream),
) {
    let name = limits.name;
    let active = Arc::new(AtomicUsize::new(0));
    while !wait(&listener, &woken, name) {
        let stream = match listener.accept_stream() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // Out of descriptors and the like: do not spin on it.
                log::warn!("{name}: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if let Err(e) = L::set_timeouts(&stream, limits.timeout) {
            log::debug!("{name}: client dropped: {e}");
            continue;
        }
        let Some(slot) = ClientSlot::take(&active, limits.max_clients) else {
            log::debug!("{name}: too many clients, one refused");
            refuse(stream);
            continue;
        };
        let serve = serve.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-client"))
            .spawn(move || {
                let _slot = slot;
                serve(stream);
            });
        if let Err(e) = spawned {
            log::warn!("{name}: cannot start a client thread: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::mpsc;

    /// One client at a time: a second is refused while the first is served;
    /// the first, silent, is closed after the timeout and frees its slot.
    #[test]
    fn cap_refuses_and_timeout_frees_the_slot() {
        let dir = std::env::temp_dir().join(format!("fabric-accept-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let limits = Limits {
            name: "test",
            max_clients: 1,
            timeout: Duration::from_millis(300),
        };
        let (served_tx, served) = mpsc::channel();
        let served_tx = std::sync::Mutex::new(served_tx);
        let serve = move |mut s: UnixStream| {
            served_tx.lock().unwrap().send(()).unwrap();
            // Reads until the client closes or stays silent past the timeout.
            let _ = s.read_to_end(&mut Vec::new());
        };
        let refuse = |mut s: UnixStream| {
            let _ = s.write_all(b"busy");
        };
        let acceptor = spawn(listener, limits, serve, refuse).unwrap();
        let wait = Duration::from_secs(10);

        let mut first = UnixStream::connect(&path).unwrap();
        served
            .recv_timeout(wait)
            .expect("the first client is served");
        let mut second = UnixStream::connect(&path).unwrap();
        second.set_read_timeout(Some(wait)).unwrap();
        let mut answer = String::new();
        second.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "busy");
        assert!(served.try_recv().is_err(), "the second client was served");

        // The silent first client is closed by the server (EOF, no bytes).
        first.set_read_timeout(Some(wait)).unwrap();
        let mut rest = Vec::new();
        assert_eq!(first.read_to_end(&mut rest).unwrap(), 0);
        // Its slot is free again once its thread has finished.
        let third = std::iter::repeat_with(|| {
            let mut s = UnixStream::connect(&path).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut buf = [0u8; 4];
            // Refused ones are answered at once; a served one is silent.
            match s.read(&mut buf) {
                Ok(4) => None,
                _ => Some(s),
            }
        })
        .take(200)
        .flatten()
        .next();
        assert!(third.is_some(), "the slot never came free");
        served
            .recv_timeout(wait)
            .expect("the third client is served");
        drop(third);
        acceptor.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
