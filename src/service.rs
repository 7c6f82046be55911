//! What a service manager sees of `vswitchd`: the sd_notify messages of a
//! `Type=notify` unit (`READY=1` once everything is served, `STOPPING=1` at
//! shutdown) and the `--pidfile`.
//!
//! sd_notify is one datagram of `KEY=VALUE` lines to the Unix socket named by
//! `$NOTIFY_SOCKET`; the `sd-notify` crate sends it (a path socket, as systemd
//! gives its services; it does not speak to abstract `@name` sockets).

use sd_notify::NotifyState;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The environment variable a service manager sets to the notification socket.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// What `vswitchd` tells its service manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceState {
    /// Every socket is bound and every pool open.
    Ready,
    /// A signal asked it to stop; it is shutting down.
    Stopping,
}

/// Sends `state` (with a human-readable `STATUS=`) to `$NOTIFY_SOCKET`.
/// Without the variable (not started by a service manager) it does nothing
/// and returns `Ok(false)`.
pub fn notify(state: ServiceState) -> io::Result<bool> {
    if std::env::var_os(NOTIFY_SOCKET_ENV).is_none() {
        return Ok(false);
    }
    let message = match state {
        ServiceState::Ready => [NotifyState::Ready, NotifyState::Status("serving")],
        ServiceState::Stopping => [NotifyState::Stopping, NotifyState::Status("shutting down")],
    };
    sd_notify::notify(&message)?;
    Ok(true)
}

/// Why a pidfile could not be taken.
#[derive(Debug)]
pub enum PidfileError {
    /// The pidfile names a `vswitchd` that is still running.
    Running {
        path: PathBuf,
        pid: i32,
    },
    Io {
        path: PathBuf,
        err: io::Error,
    },
}

impl fmt::Display for PidfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PidfileError::Running { path, pid } => write!(
                f,
                "pidfile {}: vswitchd pid {pid} is running; stop it first",
                path.display()
            ),
            PidfileError::Io { path, err } => write!(f, "pidfile {}: {err}", path.display()),
        }
    }
}

impl std::error::Error for PidfileError {}

/// This process's pid in a file, removed again on drop (a clean exit).
pub struct Pidfile {
    path: PathBuf,
}

impl Pidfile {
    /// Refuses when `path` names a live `vswitchd` other than this process.
    /// A pidfile left by one that died (or naming another program that got
    /// its pid since) does not count: [`write`](Self::write) replaces it.
    pub fn check_free(path: &Path) -> Result<(), PidfileError> {
        match fs::read_to_string(path) {
            Ok(text) => match live_vswitchd(&text) {
                Some(pid) => Err(PidfileError::Running {
                    path: path.to_owned(),
                    pid,
                }),
                None => Ok(()),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(PidfileError::Io {
                path: path.to_owned(),
                err,
            }),
        }
    }

    /// Writes this process's pid to `path` whole (a temporary file renamed
    /// over it), so a reader never sees half a pid.
    pub fn write(path: &Path) -> Result<Pidfile, PidfileError> {
        let io_err = |err| PidfileError::Io {
            path: path.to_owned(),
            err,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        fs::write(&tmp, format!("{}\n", std::process::id())).map_err(io_err)?;
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err(e)
        })?;
        Ok(Pidfile {
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        // Only our own pid is removed: a file another daemon wrote since stays.
        let ours = fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            == Some(std::process::id());
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The pid in a pidfile's `text` when it is a running `vswitchd` that is not
/// this process.
fn live_vswitchd(text: &str) -> Option<i32> {
    let pid: i32 = text.trim().parse().ok().filter(|p| *p > 0)?;
    if pid as u32 == std::process::id() {
        return None;
    }
    // /proc/PID/comm is the executable's name (cut at 15 bytes): a pid reused
    // by another program does not count.
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim_end() == "vswitchd").then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_text_names_a_live_vswitchd_only() {
        // Our own pid (the test binary is not vswitchd), garbage and pid 0.
        assert_eq!(live_vswitchd(&format!("{}\n", std::process::id())), None);
        assert_eq!(live_vswitchd("not a pid"), None);
        assert_eq!(live_vswitchd("0"), None);
        // pid 1 runs, but it is not vswitchd.
        assert_eq!(live_vswitchd("1\n"), None);
    }

    #[test]
    fn pidfile_is_written_and_removed_on_drop() {
        let dir = std::env::temp_dir().join(format!("pidfile-test-{}", std::process::id()));
        let path = dir.join("sub/vswitchd.pid");
        Pidfile::check_free(&path).unwrap();
        let pf = Pidfile::write(&path).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(pf);
        assert!(!path.exists());
        // A stale file (a pid that is not a vswitchd) is replaced.
        fs::write(&path, "1\n").unwrap();
        Pidfile::check_free(&path).unwrap();
        let pf = Pidfile::write(&path).unwrap();
        assert_eq!(
            fs::read_to_string(pf.path()).unwrap().trim(),
            std::process::id().to_string()
        );
        drop(pf);
        fs::remove_dir_all(&dir).unwrap();
    }
}
