//! `[daemon]`: the process-wide keys, and who may connect to the sockets;
//! `[nbd]`, the NBD server.

use serde::Deserialize;
use toml::Spanned;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) run_dir: Option<Spanned<String>>,
    pub(super) datapath_threads: Option<Spanned<i64>>,
    pub(super) control_socket: Option<Spanned<String>>,
    pub(super) metrics_listen: Option<Spanned<String>>,
    pub(super) socket_mode: Option<Spanned<RawIntOrText>>,
    pub(super) socket_owner: Option<Spanned<RawIntOrText>>,
    pub(super) socket_group: Option<Spanned<RawIntOrText>>,
    pub(super) handshake_timeout_ms: Option<Spanned<i64>>,
    pub(super) live_migration: Option<Spanned<bool>>,
}

/// `[nbd]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNbd {
    pub(super) socket: Option<Spanned<String>>,
    pub(super) tcp: Option<Spanned<String>>,
}

/// `[nbd]` checked: the socket resolved against the config file and unique
/// among the sockets, the TCP address parsed.
pub(super) fn nbd(
    ctx: &Ctx,
    n: &RawNbd,
    run_dir: &Path,
    sockets: &mut HashMap<PathBuf, usize>,
) -> Result<NbdConfig, ConfigError> {
    let socket = match &n.socket {
        Some(s) if s.get_ref().is_empty() => {
            return Err(ctx.invalid(&s.span(), "nbd.socket", "must not be empty"));
        }
        Some(s) => {
            let path = ctx.resolve(s.get_ref());
            check_socket(ctx, &path, &s.span(), "nbd.socket", sockets)?;
            path
        }
        None => {
            let path = normalize(&run_dir.join("nbd.sock"));
            check_socket(ctx, &path, &(0..0), "nbd.socket", sockets)?;
            path
        }
    };
    let tcp = match &n.tcp {
        Some(v) => Some(v.get_ref().parse().map_err(|_| {
            ctx.invalid(
                &v.span(),
                "nbd.tcp",
                format!(
                    "{:?} is not an address:port like \"127.0.0.1:10809\"",
                    v.get_ref()
                ),
            )
        })?),
        None => None,
    };
    Ok(NbdConfig { socket, tcp })
}

/// The `[daemon]` keys that say who may connect to the vhost-user sockets.
pub(super) struct SocketAccess {
    pub(super) mode: u32,
    pub(super) owner: Option<Principal>,
    pub(super) group: Option<Principal>,
    pub(super) handshake_timeout_ms: u32,
}

impl Default for SocketAccess {
    fn default() -> Self {
        SocketAccess {
            mode: DEFAULT_SOCKET_MODE,
            owner: None,
            group: None,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
        }
    }
}

pub(super) fn socket_access(ctx: &Ctx, d: &RawDaemon) -> Result<SocketAccess, ConfigError> {
    let mut access = SocketAccess::default();
    if let Some(v) = &d.socket_mode {
        let key = "daemon.socket_mode";
        let mode = match &v.get_ref().0 {
            IntOrText::Int(m) => u32::try_from(*m).ok(),
            IntOrText::Text(t) => u32::from_str_radix(t, 8).ok(),
        };
        access.mode = mode.filter(|m| *m <= 0o777).ok_or_else(|| {
            ctx.invalid(
                &v.span(),
                key,
                "not permission bits: give an octal number up to 0o777, like 0o660 or \"0660\"",
            )
        })?;
        // The daemon must be able to remove and rebind its own sockets, and
        // nobody is helped by a socket its owner cannot connect to.
        if access.mode & 0o600 != 0o600 {
            return Err(ctx.invalid(
                &v.span(),
                key,
                format!("mode {:#o} denies the owner read and write", access.mode),
            ));
        }
    }
    access.owner = principal(ctx, d.socket_owner.as_ref(), "daemon.socket_owner")?;
    access.group = principal(ctx, d.socket_group.as_ref(), "daemon.socket_group")?;
    if let Some(v) = &d.handshake_timeout_ms {
        access.handshake_timeout_ms =
            ctx.int(v, "daemon.handshake_timeout_ms", "timeout", 100, 600_000)?;
    }
    Ok(access)
}

/// A user or group: a numeric id (an integer or a string of digits) or a name.
pub(super) fn principal(
    ctx: &Ctx,
    v: Option<&Spanned<RawIntOrText>>,
    key: &str,
) -> Result<Option<Principal>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let bad = |m: &str| ctx.invalid(&v.span(), key, m);
    let p = match &v.get_ref().0 {
        IntOrText::Int(id) => Principal::Id(
            u32::try_from(*id)
                .ok()
                .filter(|id| *id != u32::MAX)
                .ok_or_else(|| bad("an id is 0..=4294967294"))?,
        ),
        IntOrText::Text(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
            Principal::Id(
                t.parse()
                    .ok()
                    .filter(|id| *id != u32::MAX)
                    .ok_or_else(|| bad("an id is 0..=4294967294"))?,
            )
        }
        IntOrText::Text(t) => {
            let ok = !t.is_empty()
                && t.len() <= 32
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && !t.starts_with('-');
            if !ok {
                return Err(bad("not a user or group name (or numeric id)"));
            }
            Principal::Name(t.clone())
        }
    };
    Ok(Some(p))
}
