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

mod storage;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    daemon: Option<RawDaemon>,
    #[serde(default, rename = "switch")]
    switches: Vec<RawSwitch>,
    #[serde(default, rename = "pool")]
    pools: Vec<storage::RawPool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    run_dir: Option<Spanned<String>>,
    datapath_threads: Option<Spanned<i64>>,
    control_socket: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    socket_mode: Option<Spanned<RawIntOrText>>,
    socket_owner: Option<Spanned<RawIntOrText>>,
    socket_group: Option<Spanned<RawIntOrText>>,
    handshake_timeout_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSwitch {
    name: Spanned<String>,
    mac_aging_secs: Option<Spanned<i64>>,
    fdb_capacity: Option<Spanned<i64>>,
    port_mac_limit: Option<Spanned<i64>>,
    #[serde(default, rename = "port")]
    ports: Vec<RawPort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    name: Spanned<String>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    socket: Option<Spanned<String>>,
    vlan: Option<Spanned<RawVlan>>,
    queue_size: Option<Spanned<i64>>,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVni {
    vlan: Spanned<i64>,
    vni: Spanned<i64>,
    #[serde(default)]
    remotes: Vec<Spanned<String>>,
    group: Option<Spanned<String>>,
    #[serde(default, rename = "static")]
    statics: Vec<RawStatic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatic {
    mac: Spanned<String>,
    vtep: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVlan {
    mode: Spanned<String>,
    tag: Option<Spanned<i64>>,
    allowed: Option<Spanned<Vec<Spanned<RawVlanItem>>>>,
    native: Option<Spanned<i64>>,
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

/// One entry of `allowed`: `10` or `"100-199"`.
struct RawVlanItem(IntOrText);

impl<'de> Deserialize<'de> for RawVlanItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_or_text(d, "a VLAN id or a range string like \"100-199\"").map(RawVlanItem)
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

    fn vlan_id(&self, value: &Spanned<i64>, key: &str) -> Result<u16, ConfigError> {
        self.int(value, key, "VLAN id", 1, 4094)
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
        },
        switches,
        pools,
    })
}

fn convert_port(
    ctx: &Ctx,
    port: &RawPort,
    key: &str,
    run_dir: &Path,
    port_names: &mut HashMap<String, usize>,
    sockets: &mut HashMap<PathBuf, usize>,
) -> Result<PortConfig, ConfigError> {
    let name = check_name(ctx, &port.name, &format!("{key}.name"))?;
    if let Some(first) = port_names.insert(name.clone(), ctx.line(&port.name.span())) {
        return Err(ctx.invalid(
            &port.name.span(),
            &format!("{key}.name"),
            format!("duplicate port name {name:?} (first defined at line {first})"),
        ));
    }

    let mtu = match &port.mtu {
        Some(v) => ctx.int(v, &format!("{key}.mtu"), "MTU", 68, 65535)?,
        None => DEFAULT_MTU,
    };
    let vlan = match &port.vlan {
        Some(v) => convert_vlan(ctx, v, &format!("{key}.vlan"))?,
        None => VlanConfig::default(),
    };
    // Keys of the other port types are errors, not ignored.
    let reject = |span: Range<usize>, k: &str, ty: &str| {
        Err(ctx.invalid(
            &span,
            &format!("{key}.{k}"),
            format!("`{k}` is not valid for a port of type \"{ty}\""),
        ))
    };
    // VXLAN keys on other port types, and the keys a tunnel does not take.
    let vxlan_keys = [
        port.local.as_ref().map(|v| (v.span(), "local")),
        port.udp_port.as_ref().map(|v| (v.span(), "udp_port")),
        port.underlay_mtu
            .as_ref()
            .map(|v| (v.span(), "underlay_mtu")),
        port.learn_vteps.as_ref().map(|v| (v.span(), "learn_vteps")),
        port.senders.as_ref().map(|v| (v.span(), "senders")),
        port.local_hold_secs
            .as_ref()
            .map(|v| (v.span(), "local_hold_secs")),
        port.vtep_mac_limit
            .as_ref()
            .map(|v| (v.span(), "vtep_mac_limit")),
        port.remote_fdb_capacity
            .as_ref()
            .map(|v| (v.span(), "remote_fdb_capacity")),
        port.remote_mac_aging_secs
            .as_ref()
            .map(|v| (v.span(), "remote_mac_aging_secs")),
        port.vni.as_ref().map(|v| (v.span(), "vni")),
    ];
    if port.kind.get_ref() != "vxlan" {
        if let Some((span, k)) = vxlan_keys.into_iter().flatten().next() {
            return reject(span, k, port.kind.get_ref());
        }
    }
    let kind = match port.kind.get_ref().as_str() {
        "vxlan" => {
            for (v, k) in [
                (&port.socket, "socket"),
                (&port.mac, "mac"),
                (&port.device, "device"),
            ] {
                if let Some(v) = v {
                    return reject(v.span(), k, "vxlan");
                }
            }
            if let Some(v) = &port.vlan {
                return Err(ctx.invalid(
                    &v.span(),
                    &format!("{key}.vlan"),
                    "a vxlan port is a trunk of the VLANs in `vni`; it takes no `vlan`",
                ));
            }
            let (cfg, vlan) = vxlan_kind(ctx, port, key)?;
            // Default: the largest frame that fits the underlay (1450 on 1500).
            let mtu = if port.mtu.is_some() {
                mtu
            } else {
                cfg.underlay_mtu - 50
            };
            return Ok(PortConfig {
                name,
                kind: PortKind::Vxlan(cfg),
                vlan,
                mtu,
            });
        }
        "vhost-user" => {
            if let Some(d) = &port.device {
                return reject(d.span(), "device", "vhost-user");
            }
            vhost_user_kind(ctx, port, key, &name, run_dir, sockets)?
        }
        "tap" => {
            if let Some(s) = &port.socket {
                return reject(s.span(), "socket", "tap");
            }
            if let Some(q) = &port.queue_size {
                return reject(q.span(), "queue_size", "tap");
            }
            if let Some(m) = &port.mac {
                return reject(m.span(), "mac", "tap");
            }
            let device = match &port.device {
                Some(d) => {
                    let dev = check_name(ctx, d, &format!("{key}.device"))?;
                    if dev.len() > 15 {
                        return Err(ctx.invalid(
                            &d.span(),
                            &format!("{key}.device"),
                            format!("interface name {dev:?} is longer than 15 bytes"),
                        ));
                    }
                    dev
                }
                None if name.len() > 15 => {
                    return Err(ctx.invalid(
                        &port.name.span(),
                        &format!("{key}.name"),
                        format!("the TAP device defaults to the port name, and {name:?} is longer than 15 bytes: give `device`"),
                    ));
                }
                None => name.clone(),
            };
            PortKind::Tap { device }
        }
        other => {
            return Err(ctx.invalid(
                &port.kind.span(),
                &format!("{key}.type"),
                format!("unsupported port type {other:?}: \"vhost-user\", \"tap\" or \"vxlan\""),
            ))
        }
    };
    Ok(PortConfig {
        name,
        kind,
        vlan,
        mtu,
    })
}

/// `"a.b.c.d/len"`: an IPv4 subnet with no host bits set.
fn parse_subnet(text: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let bad = || format!("{text:?} is not an IPv4 subnet like \"192.0.2.0/24\"");
    let (addr, len) = text.split_once('/').ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
    if u32::from(addr) & host != 0 {
        return Err(format!(
            "{text:?} has host bits set beyond the /{len} prefix"
        ));
    }
    Ok((addr, len))
}

/// The keys of a `vxlan` port, and the trunk it is.
fn vxlan_kind(
    ctx: &Ctx,
    port: &RawPort,
    key: &str,
) -> Result<(VxlanConfig, VlanConfig), ConfigError> {
    let ip = |v: &Spanned<String>, k: &str| {
        v.get_ref().parse::<std::net::Ipv4Addr>().map_err(|_| {
            ctx.invalid(
                &v.span(),
                k,
                format!("{:?} is not an IPv4 address", v.get_ref()),
            )
        })
    };
    let local = match &port.local {
        Some(v) => ip(v, &format!("{key}.local"))?,
        None => {
            return Err(ctx.invalid(
                &port.name.span(),
                &format!("{key}.local"),
                "a vxlan port needs `local` (this host's underlay address)",
            ))
        }
    };
    let udp_port = match &port.udp_port {
        Some(v) => ctx.int(v, &format!("{key}.udp_port"), "UDP port", 1, 65535)?,
        None => 4789,
    };
    let underlay_mtu = match &port.underlay_mtu {
        Some(v) => ctx.int(
            v,
            &format!("{key}.underlay_mtu"),
            "underlay MTU",
            576,
            65535,
        )?,
        None => 1500,
    };
    let senders = match &port.senders {
        Some(list) => list
            .get_ref()
            .iter()
            .enumerate()
            .map(|(i, v)| {
                parse_subnet(v.get_ref())
                    .map_err(|m| ctx.invalid(&v.span(), &format!("{key}.senders[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let num =
        |v: &Option<Spanned<i64>>, k: &str, what: &str, min: i64, max: i64, default: u32| match v {
            Some(v) => ctx.int(v, &format!("{key}.{k}"), what, min, max),
            None => Ok(default),
        };
    let local_hold_secs = num(
        &port.local_hold_secs,
        "local_hold_secs",
        "hold time",
        0,
        3600,
        DEFAULT_LOCAL_HOLD_SECS,
    )?;
    let remote_fdb_capacity = num(
        &port.remote_fdb_capacity,
        "remote_fdb_capacity",
        "remote FDB capacity",
        1,
        16_777_216,
        DEFAULT_REMOTE_FDB_CAPACITY,
    )?;
    let vtep_mac_limit = num(
        &port.vtep_mac_limit,
        "vtep_mac_limit",
        "VTEP MAC limit",
        1,
        i64::from(remote_fdb_capacity),
        DEFAULT_VTEP_MAC_LIMIT.min(remote_fdb_capacity),
    )?;
    let remote_mac_aging_secs = num(
        &port.remote_mac_aging_secs,
        "remote_mac_aging_secs",
        "aging time",
        10,
        1_000_000,
        DEFAULT_REMOTE_MAC_AGING_SECS,
    )?;
    let mut allowed = VlanSet::new();
    let mut vnis = Vec::new();
    let mut seen_vni = HashMap::new();
    let list = port.vni.as_ref().ok_or_else(|| {
        ctx.invalid(
            &port.name.span(),
            &format!("{key}.vni"),
            "a vxlan port needs `vni` (VLAN to VNI mappings)",
        )
    })?;
    for (i, v) in list.get_ref().iter().enumerate() {
        let k = format!("{key}.vni[{i}]");
        let vlan = ctx.vlan_id(&v.vlan, &format!("{k}.vlan"))?;
        if allowed.contains(vlan) {
            return Err(ctx.invalid(
                &v.vlan.span(),
                &format!("{k}.vlan"),
                format!("VLAN {vlan} is mapped twice"),
            ));
        }
        let vni: u32 = ctx.int(&v.vni, &format!("{k}.vni"), "VNI", 1, 16_777_215)?;
        if seen_vni.insert(vni, vlan).is_some() {
            return Err(ctx.invalid(
                &v.vni.span(),
                &format!("{k}.vni"),
                format!("VNI {vni} is mapped twice"),
            ));
        }
        allowed.extend([vlan]);
        let mut remotes = Vec::new();
        for (j, r) in v.remotes.iter().enumerate() {
            let a = ip(r, &format!("{k}.remotes[{j}]"))?;
            if a.is_multicast() || a.is_unspecified() || a.is_broadcast() {
                return Err(ctx.invalid(
                    &r.span(),
                    &format!("{k}.remotes[{j}]"),
                    "remote VTEPs are unicast addresses",
                ));
            }
            remotes.push(a);
        }
        let group = match &v.group {
            Some(g) => {
                let a = ip(g, &format!("{k}.group"))?;
                if !a.is_multicast() {
                    return Err(ctx.invalid(
                        &g.span(),
                        &format!("{k}.group"),
                        "`group` must be a multicast address",
                    ));
                }
                Some(a)
            }
            None => None,
        };
        let mut statics = Vec::new();
        for (j, st) in v.statics.iter().enumerate() {
            let mac = parse_mac(st.mac.get_ref())
                .map_err(|m| ctx.invalid(&st.mac.span(), &format!("{k}.static[{j}].mac"), m))?;
            let vtep = ip(&st.vtep, &format!("{k}.static[{j}].vtep"))?;
            if vtep.is_multicast() || vtep.is_unspecified() || vtep.is_broadcast() {
                return Err(ctx.invalid(
                    &st.vtep.span(),
                    &format!("{k}.static[{j}].vtep"),
                    "a VTEP is a unicast address",
                ));
            }
            statics.push((mac, vtep));
        }
        vnis.push(VniConfig {
            vlan,
            vni,
            remotes,
            group,
            statics,
        });
    }
    if vnis.is_empty() {
        return Err(ctx.invalid(&list.span(), &format!("{key}.vni"), "map at least one VLAN"));
    }
    Ok((
        VxlanConfig {
            local,
            udp_port,
            underlay_mtu,
            learn_vteps: port.learn_vteps.as_ref().is_some_and(|v| *v.get_ref()),
            senders,
            local_hold_secs,
            vtep_mac_limit,
            remote_fdb_capacity,
            remote_mac_aging_secs,
            vnis,
        },
        VlanConfig::Trunk {
            allowed,
            native: None,
        },
    ))
}

/// The `vhost-user` keys of a port.
fn vhost_user_kind(
    ctx: &Ctx,
    port: &RawPort,
    key: &str,
    name: &str,
    run_dir: &Path,
    sockets: &mut HashMap<PathBuf, usize>,
) -> Result<PortKind, ConfigError> {
    // An explicit socket is relative to the config file; the default one
    // lives in run_dir. Errors about a defaulted socket point at the name.
    let (socket, socket_span, socket_key) = match &port.socket {
        Some(s) if s.get_ref().is_empty() => {
            return Err(ctx.invalid(&s.span(), &format!("{key}.socket"), "must not be empty"));
        }
        Some(s) => (ctx.resolve(s.get_ref()), s.span(), format!("{key}.socket")),
        None => (
            normalize(&run_dir.join(format!("{name}.sock"))),
            port.name.span(),
            format!("{key}.name"),
        ),
    };
    check_socket(ctx, &socket, &socket_span, &socket_key, sockets)?;

    let queue_size = match &port.queue_size {
        Some(v) => ctx.queue_size(v, &format!("{key}.queue_size"), 64, 32768)?,
        None => DEFAULT_QUEUE_SIZE,
    };

    let mac = match &port.mac {
        Some(v) => Some(
            parse_mac(v.get_ref())
                .map_err(|message| ctx.invalid(&v.span(), &format!("{key}.mac"), message))?,
        ),
        None => None,
    };
    Ok(PortKind::VhostUser {
        socket,
        queue_size,
        mac,
    })
}

fn convert_vlan(ctx: &Ctx, vlan: &Spanned<RawVlan>, key: &str) -> Result<VlanConfig, ConfigError> {
    let raw = vlan.get_ref();
    // Keys of the other mode are an error rather than ignored: a trunk
    // `tag` or an access `allowed` list means the author expected something
    // this port will not do.
    let reject = |span: Range<usize>, k: &str, mode: &str| {
        Err(ctx.invalid(
            &span,
            &format!("{key}.{k}"),
            format!("`{k}` is not valid with mode = \"{mode}\""),
        ))
    };
    match raw.mode.get_ref().as_str() {
        "access" => {
            if let Some(a) = &raw.allowed {
                return reject(a.span(), "allowed", "access");
            }
            if let Some(n) = &raw.native {
                return reject(n.span(), "native", "access");
            }
            let tag = match &raw.tag {
                Some(t) => ctx.vlan_id(t, &format!("{key}.tag"))?,
                None => 1,
            };
            Ok(VlanConfig::Access { tag })
        }
        "trunk" => {
            if let Some(t) = &raw.tag {
                return reject(t.span(), "tag", "trunk");
            }
            let native = match &raw.native {
                Some(n) => Some(ctx.vlan_id(n, &format!("{key}.native"))?),
                None => None,
            };
            let mut allowed = match &raw.allowed {
                Some(list) => {
                    let mut set = VlanSet::new();
                    for (i, item) in list.get_ref().iter().enumerate() {
                        let k = format!("{key}.allowed[{i}]");
                        let (first, last) = vlan_item(ctx, item, &k)?;
                        set.extend(first..=last);
                    }
                    if set.is_empty() && native.is_none() {
                        return Err(ctx.invalid(
                            &list.span(),
                            &format!("{key}.allowed"),
                            "trunk carries no VLAN: list at least one or set `native`",
                        ));
                    }
                    set
                }
                None => VlanSet::all(),
            };
            // The native VLAN is implicitly allowed (documented on VlanConfig).
            allowed.extend(native);
            Ok(VlanConfig::Trunk { allowed, native })
        }
        other => Err(ctx.invalid(
            &raw.mode.span(),
            &format!("{key}.mode"),
            format!("unknown VLAN mode {other:?} (expected \"access\" or \"trunk\")"),
        )),
    }
}

/// One `allowed` entry as an inclusive range.
fn vlan_item(ctx: &Ctx, item: &Spanned<RawVlanItem>, key: &str) -> Result<(u16, u16), ConfigError> {
    let span = item.span();
    let id = |v: i64| ctx.vlan_id(&Spanned::new(span.clone(), v), key);
    match item.get_ref() {
        RawVlanItem(IntOrText::Int(v)) => id(*v).map(|v| (v, v)),
        RawVlanItem(IntOrText::Text(s)) => {
            let bad = || {
                ctx.invalid(
                    &span,
                    key,
                    format!("invalid VLAN range {s:?} (expected \"first-last\", e.g. \"100-199\")"),
                )
            };
            let (a, b) = s.split_once('-').ok_or_else(bad)?;
            let a: i64 = a.trim().parse().map_err(|_| bad())?;
            let b: i64 = b.trim().parse().map_err(|_| bad())?;
            let (a, b) = (id(a)?, id(b)?);
            if a > b {
                return Err(ctx.invalid(
                    &span,
                    key,
                    format!("VLAN range {s:?} is reversed ({a} > {b})"),
                ));
            }
            Ok((a, b))
        }
    }
}

/// The `[daemon]` keys that say who may connect to the vhost-user sockets.
struct SocketAccess {
    mode: u32,
    owner: Option<Principal>,
    group: Option<Principal>,
    handshake_timeout_ms: u32,
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

fn socket_access(ctx: &Ctx, d: &RawDaemon) -> Result<SocketAccess, ConfigError> {
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
fn principal(
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

/// `"52:54:00:12:34:56"` -> bytes; the guest must get a usable unicast address.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad =
        || format!("invalid MAC address {s:?} (expected six hex bytes like \"52:54:00:12:34:56\")");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "MAC address {s} is multicast; a NIC needs a unicast address"
        ));
    }
    if mac == [0; 6] {
        return Err("MAC address must not be all-zero".to_owned());
    }
    Ok(mac)
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
