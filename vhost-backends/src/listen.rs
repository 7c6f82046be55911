//! Listening sockets on the daemon's paths, with exact permissions, and the
//! private socket the relay needs.
//!
//! - A path is only ever taken over from a *stale socket* (a dead daemon's);
//!   a live socket is refused, anything else (a pool image, a directory) is
//!   an error and is never deleted.
//! - Permissions are race-free: the socket is bound owner-only (the mode is
//!   set on the socket before `bind`, so the umask only narrows it), then
//!   chowned, then given its configured mode. Nobody else can connect before
//!   the final mode and owner are in place.
//! - [`private_pair`] gives a listener and a stream already connected to it
//!   without any name another user can reach (no abstract names: those have
//!   no permissions at all).

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Who may connect to a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketAccess {
    /// Permission bits (connecting needs write permission).
    pub mode: u32,
    /// Owner uid; `None` keeps the daemon's.
    pub owner: Option<u32>,
    /// Group gid; `None` keeps the daemon's.
    pub group: Option<u32>,
}

impl Default for SocketAccess {
    /// Only the daemon's user.
    fn default() -> Self {
        SocketAccess {
            mode: 0o600,
            owner: None,
            group: None,
        }
    }
}

/// Why a socket could not be set up at a path.
#[derive(Debug)]
pub enum ListenError {
    /// Something other than a socket is there; it is left alone.
    NotASocket { path: PathBuf, kind: &'static str },
    /// A live process is serving the socket.
    InUse(PathBuf),
    /// A system call failed.
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenError::NotASocket { path, kind } => write!(
                f,
                "{} exists and is {kind}, not a socket; only a stale socket is replaced",
                path.display()
            ),
            ListenError::InUse(path) => write!(
                f,
                "{} is in use by another process (is vswitchd already running?)",
                path.display()
            ),
            ListenError::Io { path, what, source } => {
                write!(f, "{}: cannot {what}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ListenError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<ListenError> for io::Error {
    fn from(e: ListenError) -> io::Error {
        let kind = match &e {
            ListenError::NotASocket { .. } => io::ErrorKind::AlreadyExists,
            ListenError::InUse(_) => io::ErrorKind::AddrInUse,
            ListenError::Io { source, .. } => source.kind(),
        };
        io::Error::new(kind, e.to_string())
    }
}

fn io_error(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> ListenError {
    let path = path.to_owned();
    move |source| ListenError::Io { path, what, source }
}

/// What is at `path` if it exists and is not a socket (symlinks not followed).
fn not_a_socket(path: &Path) -> Option<&'static str> {
    let t = std::fs::symlink_metadata(path).ok()?.file_type();
    match () {
        _ if t.is_socket() => None,
        _ if t.is_file() => Some("a regular file"),
        _ if t.is_dir() => Some("a directory"),
        _ if t.is_symlink() => Some("a symbolic link"),
        _ => Some("a device or FIFO"),
    }
}

/// Makes `path` free to bind: nothing there, or a stale socket (removed).
/// A live socket or anything that is not a socket is refused.
pub fn claim(path: &Path) -> Result<(), ListenError> {
    if let Some(kind) = not_a_socket(path) {
        return Err(ListenError::NotASocket {
            path: path.to_owned(),
            kind,
        });
    }
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ListenError::InUse(path.to_owned()));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_error(path, "remove the stale socket")(e))
        }
        _ => Ok(()),
    }
}

/// Refuses a socket another live process is serving, or a path that holds
/// something other than a socket (checked before anything is started).
pub fn check_free(path: &Path) -> Result<(), ListenError> {
    if let Some(kind) = not_a_socket(path) {
        return Err(ListenError::NotASocket {
            path: path.to_owned(),
            kind,
        });
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ListenError::InUse(path.to_owned()));
    }
    Ok(())
}

/// Claims `path` (see [`claim`]) and listens there with exactly `access`.
pub fn bind(path: &Path, access: &SocketAccess) -> Result<UnixListener, ListenError> {
    claim(path)?;
    let listener = bind_owner_only(path).map_err(io_error(path, "bind"))?;
    // From here on the path is ours: remove it again if setting it up fails.
    let finish = || -> Result<(), ListenError> {
        if access.owner.is_some() || access.group.is_some() {
            std::os::unix::fs::lchown(path, access.owner, access.group)
                .map_err(io_error(path, "change the socket's owner"))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.mode))
            .map_err(io_error(path, "set the socket's mode"))
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(listener)
}

/// socket + fchmod(0600) + bind + listen: the file appears with at most
/// owner read/write (Linux takes a socket file's mode from the socket's own
/// inode, masked by the umask), so no other user can connect in between.
fn bind_owner_only(path: &Path) -> io::Result<UnixListener> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: zeroed sockaddr_un is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long or contains NUL",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `fd` is a socket; `addr` is a valid sockaddr_un of `len` bytes.
    let ok = unsafe {
        libc::fchmod(fd.as_raw_fd(), 0o600) == 0
            && libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                len as libc::socklen_t,
            ) == 0
            && libc::listen(fd.as_raw_fd(), 128) == 0
    };
    if !ok {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixListener::from(fd))
}

/// A listener and a stream connected to it, reached through a socket in a
/// fresh directory of mode 0700 (so only this user could connect) that is
/// removed before returning: nothing is left that anyone can reach.
pub fn private_pair() -> io::Result<(UnixListener, UnixStream)> {
    let template = std::env::temp_dir().join("fabric-XXXXXX");
    let mut template = CString::new(template.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
        .into_bytes_with_nul();
    // SAFETY: `template` is a writable NUL-terminated buffer ending in XXXXXX.
    if unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) }.is_null() {
        return Err(io::Error::last_os_error());
    }
    template.pop();
    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(&template));
    let socket = dir.join("s");
    let pair = UnixListener::bind(&socket).and_then(|l| Ok((UnixStream::connect(&socket)?, l)));
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_dir(&dir);
    let (stream, listener) = pair?;
    Ok((listener, stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("listen-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn mode_is_exact_whatever_the_umask() {
        let d = dir("mode");
        for mode in [0o600, 0o660, 0o666] {
            let p = d.join(format!("{mode:o}.sock"));
            let l = bind(
                &p,
                &SocketAccess {
                    mode,
                    ..Default::default()
                },
            )
            .unwrap();
            let m = std::fs::symlink_metadata(&p).unwrap();
            assert!(m.file_type().is_socket());
            assert_eq!(m.mode() & 0o7777, mode);
            drop(l);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Before its final mode, the file admits nobody but the owner (a plain
    /// bind under the usual umask 022 would give 0755).
    #[test]
    fn bound_owner_only_before_the_final_mode() {
        let d = dir("owner");
        let p = d.join("s.sock");
        let _l = bind_owner_only(&p).unwrap();
        let mode = std::fs::symlink_metadata(&p).unwrap().mode() & 0o777;
        assert_eq!(mode & !0o600, 0, "mode {mode:o}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn only_a_stale_socket_is_replaced() {
        let d = dir("claim");
        let file = d.join("pool.img");
        std::fs::write(&file, b"data").unwrap();
        let e = bind(&file, &SocketAccess::default()).unwrap_err();
        assert!(
            matches!(
                &e,
                ListenError::NotASocket {
                    kind: "a regular file",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
        let live = d.join("live.sock");
        let _l = bind(&live, &SocketAccess::default()).unwrap();
        assert!(matches!(
            bind(&live, &SocketAccess::default()),
            Err(ListenError::InUse(_))
        ));
        let stale = d.join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        let l = bind(&stale, &SocketAccess::default()).unwrap();
        UnixStream::connect(&stale).unwrap();
        drop(l);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn private_pair_is_connected_and_leaves_nothing() {
        let (l, mut s) = private_pair().unwrap();
        let (mut a, _) = l.accept().unwrap();
        io::Write::write_all(&mut s, b"x").unwrap();
        let mut b = [0u8];
        io::Read::read_exact(&mut a, &mut b).unwrap();
        assert_eq!(&b, b"x");
        let addr = l.local_addr().unwrap();
        let path = addr.as_pathname().expect("a path, not an abstract name");
        assert!(!path.exists());
        assert!(!path.parent().unwrap().exists());
    }
}
