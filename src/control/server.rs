//! The control socket: a Unix socket (mode 0600) answering [`protocol`]
//! requests, one line each, against the daemon's [`Runtime`].
//!
//! Each connection has its own thread (at most [`MAX_CLIENTS`] at once; more
//! are answered with an error and closed). A line longer than
//! [`MAX_LINE`] or a client silent for
//! [`IDLE_TIMEOUT`] ends the connection. No request can crash the daemon:
//! every argument is validated before anything changes, and operations that
//! conflict are refused by the runtime (which serializes them).

use super::ops;
use super::protocol::{self, ErrorCode, ErrorInfo, Request, Response, MAX_LINE, VERSION};
use crate::accept::{self, Acceptor, Limits};
use crate::runtime::Runtime;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vhost_backends::listen::{self, SocketAccess};

/// Connections served at once.
pub const MAX_CLIENTS: usize = 16;
/// A connection silent this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The running control socket.
pub struct ControlServer {
    path: PathBuf,
    acceptor: Acceptor,
}

impl ControlServer {
    /// Binds `path` (mode 0600, whatever the umask; a stale socket of a
    /// dead daemon is replaced, a live one or anything that is not a socket
    /// refused) and serves on a thread of its own.
    pub fn spawn(path: &Path, rt: Arc<Runtime>) -> io::Result<ControlServer> {
        const KEY: &str = "daemon.control_socket";
        crate::sockets::prepare(path, KEY)?;
        let listener = listen::bind(path, &SocketAccess::default())
            .map_err(|e| crate::sockets::named(KEY, e))?;
        let limits = Limits {
            name: "control",
            max_clients: MAX_CLIENTS,
            timeout: IDLE_TIMEOUT,
        };
        let refuse = |mut conn: UnixStream| {
            let _ = write_response(
                &mut conn,
                &error(0, ErrorCode::Conflict, "too many control connections"),
            );
        };
        let acceptor = accept::spawn(listener, limits, move |c| serve_connection(c, &rt), refuse)?;
        log::info!("control socket on {}", path.display());
        Ok(ControlServer {
            path: path.to_owned(),
            acceptor,
        })
    }

    /// Stops accepting, removes the socket.
    pub fn stop(self) {
        self.acceptor.stop();
        // Only a socket is removed (see `listen::claim`).
        let _ = listen::claim(&self.path);
    }
}

fn error(id: u64, code: ErrorCode, message: impl Into<String>) -> Response {
    Response {
        v: VERSION,
        id,
        ok: false,
        result: None,
        error: Some(ErrorInfo {
            code,
            message: message.into(),
        }),
    }
}

fn write_response(conn: &mut UnixStream, r: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(r).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    conn.write_all(&line)
}

/// Answers `conn`'s requests (its reads and writes are bounded by
/// [`IDLE_TIMEOUT`] by the accept loop).
fn serve_connection(conn: UnixStream, rt: &Runtime) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    // Read at most MAX_LINE + 1 bytes per line, so a huge line costs nothing.
    let mut reader = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if n > MAX_LINE || (line.last() != Some(&b'\n') && n == MAX_LINE + 1) {
            let _ = write_response(
                &mut out,
                &error(
                    0,
                    ErrorCode::BadRequest,
                    format!("request longer than {MAX_LINE} bytes"),
                ),
            );
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let response = answer(rt, text);
        if write_response(&mut out, &response).is_err() {
            return;
        }
    }
}

/// One request line to its answer.
pub fn answer(rt: &Runtime, line: &str) -> Response {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => {
            return error(
                0,
                ErrorCode::BadRequest,
                format!("not a request object: {e}"),
            )
        }
    };
    if req.v != VERSION {
        return error(
            req.id,
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {} is not supported (this daemon speaks {VERSION})",
                req.v
            ),
        );
    }
    // A panic in an operation must not take the daemon down: answer it as
    // an internal error (and log it; it is a bug).
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ops::dispatch(rt, &req.op, &req.args)
    }));
    match outcome {
        Ok(Ok(result)) => Response {
            v: VERSION,
            id: req.id,
            ok: true,
            result: Some(result),
            error: None,
        },
        Ok(Err(e)) => error(req.id, e.code, e.message),
        Err(_) => {
            log::error!("control request {:?} panicked", req.op);
            error(req.id, ErrorCode::Internal, "internal error (logged)")
        }
    }
}

// Keep `protocol` referenced for the doc links above.
#[allow(unused_imports)]
use protocol as _;
