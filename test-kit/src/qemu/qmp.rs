//! A small QMP client: JSON lines over QEMU's `-qmp unix:PATH,server=on,wait=off`
//! socket. [`Qmp::connect`] reads the greeting and sends `qmp_capabilities`;
//! [`Qmp::execute`] sends one command and returns its `return` value or its
//! `error`, keeping the asynchronous events that arrive meanwhile
//! ([`Qmp::events`]). [`Qmp::migrate`] and [`Qmp::wait_migration`] drive a live
//! migration and read `query-migrate`'s figures.

use serde_json::{json, Value};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

/// How long one command may take to answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a QMP exchange failed.
#[derive(Debug)]
pub enum QmpError {
    /// The socket: connect, read, write, or QEMU closed it.
    Io(String),
    /// A line that is not the JSON QMP promises.
    Protocol(String),
    /// QEMU answered with `{"error": {"class": ..., "desc": ...}}`.
    Command { class: String, desc: String },
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QmpError::Io(e) => write!(f, "QMP I/O: {e}"),
            QmpError::Protocol(e) => write!(f, "QMP protocol: {e}"),
            QmpError::Command { class, desc } => write!(f, "QMP error {class}: {desc}"),
        }
    }
}

/// One QMP connection to one QEMU process.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events received so far (`{"event": NAME, "data": ..., "timestamp": ...}`).
    pub events: Vec<Value>,
}

/// What `query-migrate` reports for a completed migration.
#[derive(Clone, Debug)]
pub struct MigrationStats {
    /// Milliseconds from `migrate` to completion (`total-time`).
    pub total_ms: u64,
    /// Milliseconds the guest was stopped (`downtime`).
    pub downtime_ms: u64,
    /// Milliseconds of setup (`setup-time`).
    pub setup_ms: u64,
    /// RAM bytes sent (`ram.transferred`).
    pub ram_transferred: u64,
    /// Times RAM was sent again after the guest dirtied it (`ram.dirty-sync-count`).
    pub dirty_sync_count: u64,
    /// The whole `query-migrate` answer.
    pub raw: Value,
}

impl Qmp {
    /// Connects (retrying for up to `timeout` while QEMU creates the socket), reads
    /// the greeting and leaves capabilities negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                // QEMU may not have created the socket yet.
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(QmpError::Io(format!("connect {}: {e}", path.display()))),
            }
        };
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| QmpError::Io(e.to_string()))?;
        let writer = stream
            .try_clone()
            .map_err(|e| QmpError::Io(e.to_string()))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("greeting expected: {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| QmpError::Io(format!("read: {e}")))?;
        if n == 0 {
            return Err(QmpError::Io("QEMU closed the QMP socket".into()));
        }
        serde_json::from_str(&line).map_err(|e| QmpError::Protocol(format!("{e}: {line:?}")))
    }

    /// Sends `command` with `arguments` (an object; `{}` for none) and returns its
    /// `return` value; events read on the way are kept in [`Qmp::events`].
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if arguments.as_object().is_some_and(|a| !a.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| QmpError::Io(format!("write {command}: {e}")))?;
        loop {
            let reply = self.read_message()?;
            if reply.get("event").is_some() {
                self.events.push(reply);
                continue;
            }
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                return Err(QmpError::Command {
                    class: e["class"].as_str().unwrap_or("?").to_string(),
                    desc: e["desc"].as_str().unwrap_or("?").to_string(),
                });
            }
            return Err(QmpError::Protocol(format!("unexpected reply: {reply}")));
        }
    }

    /// `query-status`'s `status` ("running", "inmigrate", "postmigrate", ...).
    pub fn status(&mut self) -> Result<String, QmpError> {
        let r = self.execute("query-status", json!({}))?;
        r["status"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| QmpError::Protocol(format!("query-status: {r}")))
    }

    /// Polls `query-status` every 20 ms until it is `status` (a destination goes from
    /// "inmigrate" to "running" once it has loaded the last of the stream, after the
    /// source already reports the migration completed). Err with the last status.
    pub fn wait_status(&mut self, status: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.status().map_err(|e| e.to_string())?;
            if now == status {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("status {now:?}, not {status:?}, after {timeout:?}"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a migration to `uri` (e.g. `unix:/path`, where the destination QEMU
    /// listens with `-incoming`). An error here is QEMU refusing to start it.
    pub fn migrate(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", json!({ "uri": uri })).map(|_| ())
    }

    /// Polls `query-migrate` every 50 ms until the migration completes (its figures)
    /// or fails, is cancelled, or `timeout` passes (Err with the last answer).
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<MigrationStats, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self
                .execute("query-migrate", json!({}))
                .map_err(|e| e.to_string())?;
            match r["status"].as_str().unwrap_or("") {
                "completed" => {
                    let n = |v: &Value| v.as_u64().unwrap_or(0);
                    return Ok(MigrationStats {
                        total_ms: n(&r["total-time"]),
                        downtime_ms: n(&r["downtime"]),
                        setup_ms: n(&r["setup-time"]),
                        ram_transferred: n(&r["ram"]["transferred"]),
                        dirty_sync_count: n(&r["ram"]["dirty-sync-count"]),
                        raw: r,
                    });
                }
                "failed" | "cancelled" => return Err(format!("migration {}: {r}", r["status"])),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(format!("migration not completed within {timeout:?}: {r}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}
