//! A small blocking client for the control socket ([`super::protocol`]).
//!
//! ```no_run
//! use fabric::control::client::Client;
//! use fabric::control::protocol::VolumeInfo;
//!
//! let mut client = Client::connect("run/control.sock")?;
//! let volumes: Vec<VolumeInfo> = client.call_as("volume.list", serde_json::json!({}))?;
//! # Ok::<(), fabric::control::client::ClientError>(())
//! ```
//!
//! One [`Client`] is one connection; requests on it are sent one at a time
//! (each call sends one line and reads the answer line). Every call has a
//! deadline (default [`DEFAULT_TIMEOUT`]) covering both the send and the
//! answer. Failures are typed ([`ClientError`]) and map onto `fabricctl`'s
//! exit codes ([`ClientError::exit_code`]).

use super::protocol::{ErrorCode, Request, MAX_LINE, VERSION};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a call waits for the daemon by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest answer line accepted (a big FDB dump is a few MiB); a longer one
/// is treated as a malformed answer instead of growing without bound.
pub const MAX_ANSWER: usize = 64 << 20;

/// Exit code when the daemon cannot be reached or stops answering.
pub const EXIT_UNREACHABLE: i32 = 7;
/// Exit code for an answer that breaks the protocol (as for an internal error).
pub const EXIT_MALFORMED: i32 = 6;
/// Exit code for a usage error or a request refused as bad.
pub const EXIT_USAGE: i32 = 2;

/// Why a call failed.
#[derive(Debug)]
pub enum ClientError {
    /// Connecting to the socket failed (no daemon, no socket file, no permission).
    Connect { path: PathBuf, source: io::Error },
    /// Sending the request or reading the answer failed.
    Io { path: PathBuf, source: io::Error },
    /// No complete answer within the deadline.
    Timeout { path: PathBuf, after: Duration },
    /// The daemon closed the connection before a complete answer.
    Closed { path: PathBuf },
    /// The answer does not follow the protocol (not JSON, wrong id, ...).
    Malformed { path: PathBuf, detail: String },
    /// The request cannot be sent (longer than [`MAX_LINE`]).
    BadRequest(String),
    /// The daemon refused the request. `code` is `None` for an error class
    /// this client does not know (`name` still holds it).
    Daemon {
        code: Option<ErrorCode>,
        name: String,
        message: String,
    },
}

impl ClientError {
    /// `fabricctl`'s exit code for this failure: the daemon's error class
    /// ([`ErrorCode::exit_code`]), 2 for a request that cannot be sent, 6 for
    /// a malformed answer or an unknown error class, 7 when the daemon is
    /// unreachable (connect, I/O, timeout, connection closed).
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Connect { .. }
            | ClientError::Io { .. }
            | ClientError::Timeout { .. }
            | ClientError::Closed { .. } => EXIT_UNREACHABLE,
            ClientError::Malformed { .. } => EXIT_MALFORMED,
            ClientError::BadRequest(_) => EXIT_USAGE,
            ClientError::Daemon { code: Some(c), .. } => c.exit_code(),
            ClientError::Daemon { code: None, .. } => EXIT_MALFORMED,
        }
    }

    /// The daemon's error class, if the daemon refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Daemon { code, .. } => *code,
            _ => None,
        }
    }
}

/// `"No such file or directory (os error 2)"` -> `"No such file or directory"`.
fn io_text(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_owned(),
        _ => text,
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { path, source } => {
                write!(
                    f,
                    "cannot connect to {}: {}",
                    path.display(),
                    io_text(source)
                )?;
                match source.kind() {
                    io::ErrorKind::PermissionDenied => write!(
                        f,
                        " — the control socket is mode 0600: run as the daemon's user"
                    ),
                    _ => write!(
                        f,
                        " — is vswitchd running? (set --socket or FABRIC_CONTROL_SOCKET)"
                    ),
                }
            }
            ClientError::Io { path, source } => {
                write!(f, "talking to {}: {}", path.display(), io_text(source))
            }
            ClientError::Timeout { path, after } => write!(
                f,
                "no answer from the daemon at {} within {:.1}s (see --timeout)",
                path.display(),
                after.as_secs_f64()
            ),
            ClientError::Closed { path } => write!(
                f,
                "the daemon at {} closed the connection without answering",
                path.display()
            ),
            ClientError::Malformed { path, detail } => write!(
                f,
                "malformed answer from the daemon at {}: {detail}",
                path.display()
            ),
            ClientError::BadRequest(m) => f.write_str(m),
            ClientError::Daemon {
                code,
                name,
                message,
            } => {
                if message.is_empty() {
                    write!(f, "the daemon refused the request ({name})")
                } else if code.is_none() {
                    write!(f, "{message} ({name})")
                } else {
                    f.write_str(message)
                }
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect { source, .. } | ClientError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// One connection to the control socket.
pub struct Client {
    path: PathBuf,
    stream: UnixStream,
    /// Bytes read but not yet consumed (the start of the next answer).
    buf: Vec<u8>,
    next_id: u64,
    timeout: Option<Duration>,
}

impl Client {
    /// Connects with the [`DEFAULT_TIMEOUT`] for calls.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        Client::connect_with_timeout(path, Some(DEFAULT_TIMEOUT))
    }

    /// Connects; each call then waits at most `timeout` (`None`: forever).
    pub fn connect_with_timeout(
        path: impl AsRef<Path>,
        timeout: Option<Duration>,
    ) -> Result<Client, ClientError> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|source| ClientError::Connect {
            path: path.clone(),
            source,
        })?;
        Ok(Client {
            path,
            stream,
            buf: Vec::new(),
            next_id: 1,
            timeout: timeout.filter(|t| !t.is_zero()),
        })
    }

    /// Changes the per-call deadline (`None` or zero: wait forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout.filter(|t| !t.is_zero());
    }

    /// The socket this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `op` with `args` and returns the answer's `result` (`Null` when
    /// the operation has none), or the daemon's refusal as
    /// [`ClientError::Daemon`].
    pub fn call(&mut self, op: &str, args: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = Request {
            v: VERSION,
            id,
            op: op.to_owned(),
            args,
        };
        let mut line = serde_json::to_string(&request)
            .map_err(|e| ClientError::BadRequest(format!("cannot encode the request: {e}")))?;
        if line.len() > MAX_LINE {
            return Err(ClientError::BadRequest(format!(
                "request too long ({} bytes, the daemon accepts {MAX_LINE})",
                line.len()
            )));
        }
        line.push('\n');
        let deadline = self.timeout.map(|t| Instant::now() + t);
        self.write_all(line.as_bytes(), deadline)?;
        let answer = self.read_line(deadline)?;
        parse_answer(&self.path, &answer, id)
    }

    /// [`Client::call`], with the result decoded as `T` (a malformed answer
    /// if it does not fit).
    pub fn call_as<T: DeserializeOwned>(
        &mut self,
        op: &str,
        args: Value,
    ) -> Result<T, ClientError> {
        let result = self.call(op, args)?;
        serde_json::from_value(result).map_err(|e| ClientError::Malformed {
            path: self.path.clone(),
            detail: format!("result of {op}: {e}"),
        })
    }

    /// Sends `line` as is (a newline is added) and returns the next answer
    /// line, unparsed: for testing the daemon with requests this client
    /// would never build.
    pub fn exchange_raw(&mut self, line: &[u8]) -> Result<Vec<u8>, ClientError> {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut data = line.to_vec();
        data.push(b'\n');
        self.write_all(&data, deadline)?;
        self.read_line(deadline)
    }

    fn remaining(&self, deadline: Option<Instant>) -> Result<Option<Duration>, ClientError> {
        match deadline {
            None => Ok(None),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    Err(self.timed_out())
                } else {
                    Ok(Some(left))
                }
            }
        }
    }

    fn timed_out(&self) -> ClientError {
        ClientError::Timeout {
            path: self.path.clone(),
            after: self.timeout.unwrap_or_default(),
        }
    }

    fn io_error(&self, source: io::Error) -> ClientError {
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.timed_out(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ClientError::Closed {
                path: self.path.clone(),
            },
            _ => ClientError::Io {
                path: self.path.clone(),
                source,
            },
        }
    }

    fn write_all(&mut self, mut data: &[u8], deadline: Option<Instant>) -> Result<(), ClientError> {
        while !data.is_empty() {
            let left = self.remaining(deadline)?;
            self.stream
                .set_write_timeout(left)
                .map_err(|e| self.io_error(e))?;
            match self.stream.write(data) {
                Ok(0) => {
                    return Err(ClientError::Closed {
                        path: self.path.clone(),
                    })
                }
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
        Ok(())
    }

    /// The next line (without its newline), waiting until `deadline`.
    fn read_line(&mut self, deadline: Option<Instant>) -> Result<Vec<u8>, ClientError> {
        let mut scanned = 0;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + pos;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                return Ok(line);
            }
            scanned = self.buf.len();
            if self.buf.len() > MAX_ANSWER {
                return Err(ClientError::Malformed {
                    path: self.path.clone(),
                    detail: format!("answer longer than {MAX_ANSWER} bytes"),
                });
            }
            let left = self.remaining(deadline)?;
            self.stream
                .set_read_timeout(left)
                .map_err(|e| self.io_error(e))?;
            match self.stream.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => {
                    return Err(ClientError::Closed {
                        path: self.path.clone(),
                    })
                }
                Ok(0) => {
                    return Err(ClientError::Malformed {
                        path: self.path.clone(),
                        detail: "answer cut short (no newline before the connection closed)".into(),
                    })
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }
}

/// Checks one answer line against the request `id`: the `result` of a
/// success, [`ClientError::Daemon`] for a refusal, [`ClientError::Malformed`]
/// for anything else.
pub fn parse_answer(path: &Path, line: &[u8], id: u64) -> Result<Value, ClientError> {
    let malformed = |detail: String| ClientError::Malformed {
        path: path.to_path_buf(),
        detail,
    };
    let text = std::str::from_utf8(line).map_err(|_| malformed("not UTF-8".into()))?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let value: Value =
        serde_json::from_str(text).map_err(|e| malformed(format!("not JSON ({e})")))?;
    let Value::Object(mut answer) = value else {
        return Err(malformed("not a JSON object".into()));
    };
    let ok = answer
        .get("ok")
        .and_then(Value::as_bool)
        .ok_or_else(|| malformed("no boolean \"ok\"".into()))?;
    let answer_id = answer.get("id").and_then(Value::as_u64);
    // A daemon that could not read the request's id answers with id 0.
    if answer_id != Some(id) && (ok || answer_id != Some(0)) {
        return Err(malformed(match answer_id {
            Some(other) => format!("answer to request {other}, expected {id}"),
            None => "no numeric \"id\"".into(),
        }));
    }
    if ok {
        // A refusal is reported whatever its version; a success must be ours.
        match answer.get("v").and_then(Value::as_u64) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => {
                return Err(malformed(format!(
                    "protocol version {v}, this fabricctl speaks {VERSION}"
                )))
            }
            None => return Err(malformed("no protocol version \"v\"".into())),
        }
        return Ok(answer.remove("result").unwrap_or(Value::Null));
    }
    let Some(Value::Object(error)) = answer.remove("error") else {
        return Err(malformed("refusal without an \"error\" object".into()));
    };
    let name = error
        .get("code")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("error without a string \"code\"".into()))?
        .to_owned();
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let code = serde_json::from_value(Value::String(name.clone())).ok();
    Err(ClientError::Daemon {
        code,
        name,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Value, ClientError> {
        parse_answer(Path::new("/s"), line.as_bytes(), 7)
    }

    #[test]
    fn answers() {
        assert_eq!(
            parse(r#"{"v":1,"id":7,"ok":true,"result":{"a":1}}"#).unwrap(),
            serde_json::json!({"a":1})
        );
        assert_eq!(parse(r#"{"v":1,"id":7,"ok":true}"#).unwrap(), Value::Null);
        let e = parse(
            r#"{"v":1,"id":7,"ok":false,"error":{"code":"not_found","message":"no such volume"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NotFound));
        assert_eq!(e.exit_code(), 3);
        assert_eq!(e.to_string(), "no such volume");
        // Id 0: the daemon could not read the request.
        let e = parse(r#"{"v":1,"id":0,"ok":false,"error":{"code":"bad_request","message":"x"}}"#)
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = parse(r#"{"v":1,"id":7,"ok":false,"error":{"code":"busy","message":"later"}}"#)
            .unwrap_err();
        assert!(matches!(e, ClientError::Daemon { code: None, .. }));
        assert_eq!(e.exit_code(), 6);
        assert_eq!(e.to_string(), "later (busy)");
    }

    #[test]
    fn malformed_answers() {
        for line in [
            "",
            "nonsense",
            "[1,2]",
            r#"{"v":1,"id":7}"#,
            r#"{"v":1,"id":8,"ok":true}"#,
            r#"{"v":1,"id":0,"ok":true}"#,
            r#"{"v":2,"id":7,"ok":true}"#,
            r#"{"id":7,"ok":true}"#,
            r#"{"v":1,"ok":true}"#,
            r#"{"v":1,"id":7,"ok":false}"#,
            r#"{"v":1,"id":7,"ok":false,"error":"x"}"#,
            r#"{"v":1,"id":7,"ok":false,"error":{"code":5}}"#,
        ] {
            let e = parse(line).unwrap_err();
            assert!(matches!(e, ClientError::Malformed { .. }), "{line}: {e:?}");
            assert_eq!(e.exit_code(), 6);
        }
        let e = parse_answer(Path::new("/s"), b"\xff\xfe", 7).unwrap_err();
        assert!(matches!(e, ClientError::Malformed { .. }));
    }

    #[test]
    fn connect_error_message() {
        let e = Client::connect("/nonexistent/dir/control.sock")
            .err()
            .unwrap();
        assert_eq!(e.exit_code(), 7);
        assert_eq!(
            e.to_string(),
            "cannot connect to /nonexistent/dir/control.sock: No such file or directory \
             — is vswitchd running? (set --socket or FABRIC_CONTROL_SOCKET)"
        );
    }
}
