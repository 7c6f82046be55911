//! The file as serde sees it, and its one-time conversion to the public types.
//!
//! The raw structs keep every value `Spanned` so that checks done after
//! deserialization (ranges, uniqueness, mode consistency) can still report
//! the line. Integers are read as `i64` so that out-of-range values get our
//! message ("VLAN id 70000 is outside 1..=4094") instead of serde's generic
//! "invalid value" for a `u16`.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::*;

mod daemon;
mod port;
mod storage;
mod vlan;
mod vxlan;

use daemon::{socket_access, RawDaemon, RawNbd};
use port::{convert_port, RawSwitch};
use vlan::RawVlan;
use vxlan::RawVni;

/// One `[[switch.port]]` table as written: every key of every port kind,
/// checked against the kind in `port.rs` (VXLAN keys in `vxlan.rs`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    name: Spanned<String>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    socket: Option<Spanned<String>>,
    vlan: Option<Spanned<RawVlan>>,
    queue_size: Option<Spanned<i64>>,
    queues: Option<Spanned<i64>>,
    multi_queue: Option<Spanned<bool>>,
    offloads: Option<Spanned<bool>>,
    mtu: Option<Spanned<i64>>,
    mac: Option<Spanned<String>>,
    device: Option<Spanned<String>>,
    local: Option<Spanned<String>>,
    udp_port: Option<Spanned<i64>>,
    underlay_mtu: Option<Spanned<i64>>,
    learn_vteps: Option<Spanned<bool>>,
    senders: Option<Spanned<Vec<Spanned<String>>>>,
    local_hold_secs: Option<Spanned<i64>>,
    vtep_mac_limit: Option<Spanned<i64>>,
    remote_fdb_capacity: Option<Spanned<i64>>,
    remote_mac_aging_secs: Option<Spanned<i64>>,
    vni: Option<Spanned<Vec<RawVni>>>,
    rate: Option<Spanned<i64>>,
    burst: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    daemon: Option<RawDaemon>,
    #[serde(default, rename = "switch")]
    switches: Vec<RawSwitch>,
    #[serde(default, rename = "pool")]
    pools: Vec<storage::RawPool>,
    nbd: Option<RawNbd>,
}

/// A value the file may give as an integer or as a string: a VLAN id or a
/// range `"100-199"`, a size in bytes or `"16G"`.
enum IntOrText {
    Int(i64),
    Text(String),
}

/// Reads an [`IntOrText`]; `what` is the expected form for serde's error.
// Hand-written rather than `#[serde(untagged)]`, whose error is the
// unhelpful "data did not match any variant".
fn int_or_text<'de, D: Deserializer<'de>>(d: D, what: &'static str) -> Result<IntOrText, D::Error> {
    struct V(&'static str);
    impl Visitor<'_> for V {
        type Value = IntOrText;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrText, E> {
            Ok(IntOrText::Int(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrText, E> {
            Ok(IntOrText::Int(i64::try_from(v).unwrap_or(i64::MAX)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrText, E> {
            Ok(IntOrText::Text(v.to_owned()))
        }
    }
    d.deserialize_any(V(what))
}

/// `socket_mode` (`0o660` or `"0660"`) and `socket_owner`/`socket_group`
/// (a numeric id or a name).
struct RawIntOrText(IntOrText);

impl<'de> Deserialize<'de> for RawIntOrText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_or_text(d, "an integer or a string").map(RawIntOrText)
    }
}

/// What every check needs to build an error: the file name and text (to turn
/// a byte span into a line) and the base directory for relative paths.
struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    base: &'a Path,
}

impl Ctx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        line_of(self.text, span.start)
    }

    fn invalid(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line: self.line(span),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// An integer in `lo..=hi`, or an error naming the key.
    fn int<T: TryFrom<i64>>(
        &self,
        value: &Spanned<i64>,
        key: &str,
        what: &str,
        lo: i64,
        hi: i64,
    ) -> Result<T, ConfigError> {
        let v = *value.get_ref();
        if !(lo..=hi).contains(&v) {
            return Err(self.invalid(
                &value.span(),
                key,
                format!("{what} {v} is outside {lo}..={hi}"),
            ));
        }
        // Cannot fail: callers pass bounds that fit T.
        T::try_from(v).map_err(|_| self.invalid(&value.span(), key, "value does not fit"))
    }

    /// A virtqueue size: a power of two in `lo..=hi`.
    fn queue_size(
        &self,
        value: &Spanned<i64>,
        key: &str,
        lo: i64,
        hi: i64,
    ) -> Result<u16, ConfigError> {
        let size: u16 = self.int(value, key, "queue size", lo, hi)?;
        if !size.is_power_of_two() {
            return Err(self.invalid(
                &value.span(),
                key,
                format!("queue size {size} is not a power of two"),
            ));
        }
        Ok(size)
    }

    /// A value of an L2 type (VLAN id, VNI), under that type's own rule.
    fn l2<T>(&self, value: &Spanned<i64>, key: &str) -> Result<T, ConfigError>
    where
        T: TryFrom<i64>,
        T::Error: fmt::Display,
    {
        T::try_from(*value.get_ref()).map_err(|e| self.invalid(&value.span(), key, e.to_string()))
    }

    /// A station's MAC address (unicast, not all-zero).
    fn mac(&self, value: &Spanned<String>, key: &str) -> Result<MacAddr, ConfigError> {
        MacAddr::parse_station(value.get_ref())
            .map_err(|e| self.invalid(&value.span(), key, e.to_string()))
    }

    /// `base/path`, with `.` and `..` folded lexically so that two spellings
    /// of one socket compare equal.
    fn resolve(&self, path: &str) -> PathBuf {
        normalize(&self.base.join(path))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

pub(crate) fn parse(text: &str, file: &str, base: &Path) -> Result<FabricConfig, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| syntax_error(text, file, &e))?;
    let ctx = Ctx { file, text, base };

    let datapath_threads = match raw
        .daemon
        .as_ref()
        .and_then(|d| d.datapath_threads.as_ref())
    {
        Some(v) => ctx.int(v, "daemon.datapath_threads", "thread count", 1, 256)?,
        None => DEFAULT_DATAPATH_THREADS,
    };
    // Default on: a migratable guest is what QEMU users expect.
    let live_migration = raw
        .daemon
        .as_ref()
        .and_then(|d| d.live_migration.as_ref())
        .is_none_or(|v| *v.get_ref());
    let control_socket = raw.daemon.as_ref().and_then(|d| d.control_socket.clone());
    let metrics_listen = match raw.daemon.as_ref().and_then(|d| d.metrics_listen.as_ref()) {
        Some(v) => Some(v.get_ref().parse::<std::net::SocketAddr>().map_err(|_| {
            ctx.invalid(
                &v.span(),
                "daemon.metrics_listen",
                format!(
                    "{:?} is not an address:port like \"127.0.0.1:9100\"",
                    v.get_ref()
                ),
            )
        })?),
        None => None,
    };
    let sockets_access = raw
        .daemon
        .as_ref()
        .map(|d| socket_access(&ctx, d))
        .transpose()?
        .unwrap_or_default();
    let run_dir = match &raw.daemon.and_then(|d| d.run_dir) {
        Some(dir) if dir.get_ref().is_empty() => {
            return Err(ctx.invalid(&dir.span(), "daemon.run_dir", "must not be empty"));
        }
        Some(dir) => ctx.resolve(dir.get_ref()),
        None => ctx.resolve(DEFAULT_RUN_DIR),
    };

    // Uniqueness maps: value -> line of first definition.
    let mut switch_names: HashMap<String, usize> = HashMap::new();
    let mut port_names: HashMap<String, usize> = HashMap::new();
    let mut sockets: HashMap<PathBuf, usize> = HashMap::new();

    let mut switches = Vec::with_capacity(raw.switches.len());
    for (i, sw) in raw.switches.iter().enumerate() {
        let key = format!("switch[{i}]");
        let name = check_name(&ctx, &sw.name, &format!("{key}.name"))?;
        if let Some(first) = switch_names.insert(name.clone(), ctx.line(&sw.name.span())) {
            return Err(ctx.invalid(
                &sw.name.span(),
                &format!("{key}.name"),
                format!("duplicate switch name {name:?} (first defined at line {first})"),
            ));
        }

        let mac_aging_secs = match &sw.mac_aging_secs {
            Some(v) => ctx.int(
                v,
                &format!("{key}.mac_aging_secs"),
                "aging time",
                10,
                1_000_000,
            )?,
            None => DEFAULT_MAC_AGING_SECS,
        };
        let fdb_capacity = match &sw.fdb_capacity {
            Some(v) => ctx.int(
                v,
                &format!("{key}.fdb_capacity"),
                "FDB capacity",
                1,
                16_777_216,
            )?,
            None => DEFAULT_FDB_CAPACITY,
        };
        let port_mac_limit = match &sw.port_mac_limit {
            Some(v) => ctx.int(
                v,
                &format!("{key}.port_mac_limit"),
                "port MAC limit",
                1,
                i64::from(fdb_capacity),
            )?,
            // A small fdb_capacity alone should not make the default invalid.
            None => DEFAULT_PORT_MAC_LIMIT.min(fdb_capacity),
        };

        let mut ports = Vec::with_capacity(sw.ports.len());
        for (j, port) in sw.ports.iter().enumerate() {
            let key = format!("{key}.port[{j}]");
            let port = convert_port(&ctx, port, &key, &run_dir, &mut port_names, &mut sockets)?;
            ports.push(port);
        }

        switches.push(SwitchConfig {
            name,
            mac_aging_secs,
            fdb_capacity,
            port_mac_limit,
            ports,
        });
    }

    let pools = storage::convert_pools(&ctx, &raw.pools, &run_dir, &mut sockets)?;
    let control_socket = match &control_socket {
        Some(s) if s.get_ref().is_empty() => {
            return Err(ctx.invalid(&s.span(), "daemon.control_socket", "must not be empty"));
        }
        Some(s) => {
            let path = ctx.resolve(s.get_ref());
            check_socket(
                &ctx,
                &path,
                &s.span(),
                "daemon.control_socket",
                &mut sockets,
            )?;
            path
        }
        None => {
            // The default can clash too (a port named "control").
            let path = normalize(&run_dir.join("control.sock"));
            check_socket(&ctx, &path, &(0..0), "daemon.control_socket", &mut sockets)?;
            path
        }
    };

    let nbd = raw
        .nbd
        .as_ref()
        .map(|n| daemon::nbd(&ctx, n, &run_dir, &mut sockets))
        .transpose()?;

    Ok(FabricConfig {
        daemon: DaemonConfig {
            run_dir,
            datapath_threads,
            control_socket,
            metrics_listen,
            socket_mode: sockets_access.mode,
            socket_owner: sockets_access.owner,
            socket_group: sockets_access.group,
            handshake_timeout_ms: sockets_access.handshake_timeout_ms,
            live_migration,
        },
        switches,
        pools,
        nbd,
    })
}

/// A socket path fits in `sun_path` and no other port or export uses it.
fn check_socket(
    ctx: &Ctx,
    socket: &Path,
    span: &Range<usize>,
    key: &str,
    sockets: &mut HashMap<PathBuf, usize>,
) -> Result<(), ConfigError> {
    // sun_path is 108 bytes including the terminating NUL; a longer path
    // would only fail later, at bind time, with a less helpful error.
    let socket_len = socket.as_os_str().len();
    if socket_len > 107 {
        return Err(ctx.invalid(
            span,
            key,
            format!(
                "socket path {} is {socket_len} bytes; Unix sockets allow at most 107",
                socket.display()
            ),
        ));
    }
    if let Some(first) = sockets.insert(socket.to_owned(), ctx.line(span)) {
        return Err(ctx.invalid(
            span,
            key,
            format!(
                "duplicate socket path {} (first used at line {first})",
                socket.display()
            ),
        ));
    }
    // The daemon replaces a stale socket at start-up; anything else there
    // (a pool image, say) must never be deleted to make room.
    let exists_as = std::fs::symlink_metadata(socket).map(|m| m.file_type());
    if exists_as.is_ok_and(|t| !std::os::unix::fs::FileTypeExt::is_socket(&t)) {
        return Err(ctx.invalid(
            span,
            key,
            format!(
                "{} exists and is not a socket; the daemon only replaces a stale socket",
                socket.display()
            ),
        ));
    }
    Ok(())
}

/// A name under [`valid_name`]'s rule, shared with `fabricctl` and `vblock`.
fn check_name(ctx: &Ctx, name: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let s = name.get_ref();
    valid_name(s).map_err(|m| ctx.invalid(&name.span(), key, m))?;
    Ok(s.clone())
}

/// Turns a toml/serde error into ours, adding the key path when the error's
/// position falls on a key or value of the document.
fn syntax_error(text: &str, file: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    ConfigError::Syntax {
        file: file.to_owned(),
        line: span.as_ref().map(|s| line_of(text, s.start)),
        key: span.and_then(|s| key_path_at(text, s.start)),
        // Integers are read as i64 internally; say what the user should write.
        message: e.message().replace("expected i64", "expected an integer"),
    }
}

/// The dotted path (`switch[0].port[1].mtu`) of the deepest key or value
/// covering byte `at`. toml's own error keeps its key list private and
/// without array indices, so re-parse into the spanned document tree and
/// search it. `None` for syntax errors (the document does not parse).
fn key_path_at(text: &str, at: usize) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    let mut path = String::new();
    find_in_table(doc.get_ref(), at, &mut path).then_some(path)
}

fn find_in_table(table: &DeTable<'_>, at: usize, path: &mut String) -> bool {
    for (key, value) in table {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key.get_ref());
        if key.span().contains(&at) || find_in_value(value, at, path) {
            return true;
        }
        path.truncate(len);
    }
    false
}

fn find_in_value(value: &Spanned<DeValue<'_>>, at: usize, path: &mut String) -> bool {
    match value.get_ref() {
        DeValue::Table(table) if find_in_table(table, at, path) => return true,
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if find_in_value(item, at, path) {
                    return true;
                }
                path.truncate(len);
            }
        }
        _ => {}
    }
    value.span().contains(&at)
}
