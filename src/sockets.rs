//! The daemon's listening sockets: who may connect (`[daemon] socket_mode`,
//! `socket_owner`, `socket_group`), how long a frontend may stay silent
//! (`handshake_timeout_ms`), and the checks made before one is bound.

use fabric_config::{DaemonConfig, Principal};
use std::ffi::CString;
use std::io;
use std::path::Path;
use std::time::Duration;
use vhost_backends::listen::{self, SocketAccess};
use vhost_backends::session::ServeOptions;

/// How the vhost-user sockets (ports and exports) are served, with user and
/// group names looked up; errors name the key.
pub fn serve_options(d: &DaemonConfig) -> io::Result<ServeOptions> {
    Ok(ServeOptions {
        access: SocketAccess {
            mode: d.socket_mode,
            owner: resolve(d.socket_owner.as_ref(), "daemon.socket_owner", Kind::User)?,
            group: resolve(d.socket_group.as_ref(), "daemon.socket_group", Kind::Group)?,
        },
        handshake_timeout: Duration::from_millis(u64::from(d.handshake_timeout_ms)),
        live_migration: d.live_migration,
    })
}

#[derive(Clone, Copy)]
enum Kind {
    User,
    Group,
}

fn resolve(p: Option<&Principal>, key: &str, kind: Kind) -> io::Result<Option<u32>> {
    let name = match p {
        None => return Ok(None),
        Some(Principal::Id(id)) => return Ok(Some(*id)),
        Some(Principal::Name(n)) => n,
    };
    let what = match kind {
        Kind::User => "user",
        Kind::Group => "group",
    };
    lookup(name, kind)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{key}: cannot look up {what} {name:?}: {e}"),
            )
        })?
        .map(Some)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{key}: no {what} named {name:?}"),
            )
        })
}

/// getpwnam_r / getgrnam_r: the id, `None` when there is no such name.
fn lookup(name: &str, kind: Kind) -> io::Result<Option<u32>> {
    let c_name = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: the *_r functions write only into `entry` and `buf` (of
        // the length given) and set `found` to `&entry` or null.
        let (rc, id) = unsafe {
            match kind {
                Kind::User => {
                    let mut entry: libc::passwd = std::mem::zeroed();
                    let mut found = std::ptr::null_mut();
                    let rc = libc::getpwnam_r(
                        c_name.as_ptr(),
                        &mut entry,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        &mut found,
                    );
                    (rc, (!found.is_null()).then_some(entry.pw_uid))
                }
                Kind::Group => {
                    let mut entry: libc::group = std::mem::zeroed();
                    let mut found = std::ptr::null_mut();
                    let rc = libc::getgrnam_r(
                        c_name.as_ptr(),
                        &mut entry,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        &mut found,
                    );
                    (rc, (!found.is_null()).then_some(entry.gr_gid))
                }
            }
        };
        match rc {
            0 => return Ok(id),
            // Big groups need a bigger buffer; stop at 1 MiB.
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// `e` prefixed with `what` (a key, or the port or export).
pub fn named(what: &str, e: impl Into<io::Error>) -> io::Error {
    let e = e.into();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Makes `path`'s directory and checks that nothing but a stale socket is
/// there; the error names `what`.
pub fn prepare(path: &Path, what: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            named(
                what,
                io::Error::new(e.kind(), format!("{}: {e}", dir.display())),
            )
        })?;
    }
    listen::check_free(path).map_err(|e| named(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_resolve() {
        assert_eq!(lookup("root", Kind::User).unwrap(), Some(0));
        assert_eq!(lookup("root", Kind::Group).unwrap(), Some(0));
        assert_eq!(lookup("no-such-user-xyz", Kind::User).unwrap(), None);
        let e = resolve(
            Some(&Principal::Name("no-such-user-xyz".into())),
            "daemon.socket_owner",
            Kind::User,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "daemon.socket_owner: no user named \"no-such-user-xyz\""
        );
        assert_eq!(
            resolve(Some(&Principal::Id(65534)), "k", Kind::Group).unwrap(),
            Some(65534)
        );
    }
}
