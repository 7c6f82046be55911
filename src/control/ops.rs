//! The operations of the control protocol: arguments validated (with the
//! same rules as `fabric.toml`, so a port or export added at run time is
//! checked exactly like one in the file), then handed to the [`Runtime`].
//! The runtime's error kinds become wire codes here ([`wire_code`]).

use super::daily;
use super::protocol::*;
use crate::runtime::snapshot::TunnelSample;
use crate::runtime::{self, vlan_summary, ErrorKind, Runtime};
use fabric_config::{ExportConfig, PortConfig, PortKind};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use vswitch::vxlan::TunnelDrop;

/// An operation refused or failed, with the code the control socket sends.
#[derive(Debug)]
pub struct OpError {
    pub code: ErrorCode,
    pub message: String,
}

impl OpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> OpError {
        OpError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The wire code of a runtime error kind.
pub fn wire_code(kind: ErrorKind) -> ErrorCode {
    match kind {
        ErrorKind::NotFound => ErrorCode::NotFound,
        ErrorKind::AlreadyExists => ErrorCode::AlreadyExists,
        ErrorKind::InvalidArgument => ErrorCode::InvalidArgument,
        ErrorKind::Conflict => ErrorCode::Conflict,
        ErrorKind::NoSpace => ErrorCode::NoSpace,
        ErrorKind::Internal => ErrorCode::Internal,
    }
}

impl From<runtime::Error> for OpError {
    fn from(e: runtime::Error) -> OpError {
        OpError::new(wire_code(e.kind()), e.message())
    }
}

pub type OpResult<T> = Result<T, OpError>;

pub(super) fn invalid(message: impl Into<String>) -> OpError {
    OpError::new(ErrorCode::InvalidArgument, message)
}

/// Typed arguments, or `invalid_argument` naming what is wrong.
pub(super) fn args<T: DeserializeOwned>(op: &str, v: &Value) -> OpResult<T> {
    let v = if v.is_null() { json!({}) } else { v.clone() };
    serde_json::from_value(v).map_err(|e| invalid(format!("{op}: {e}")))
}

fn to_value<T: serde::Serialize>(t: T) -> OpResult<Value> {
    serde_json::to_value(t).map_err(|e| OpError::new(ErrorCode::Internal, e.to_string()))
}

/// Runs one operation.
pub fn dispatch(rt: &Runtime, op: &str, a: &Value) -> OpResult<Value> {
    match op {
        "daemon.status" => to_value(Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: VERSION,
            pid: std::process::id(),
            uptime_secs: rt.started.elapsed().as_secs(),
            config: rt.config_path.as_ref().map(|p| p.display().to_string()),
        }),
        "port.list" => to_value(port_list(rt)),
        "port.add" => {
            let p: PortAdd = args(op, a)?;
            let (switch, pc) = port_config(rt, &p)?;
            if !daily::may_exist(rt.add_port(&switch, pc), p.may_exist)? {
                daily::port_elsewhere(rt, &switch, &p.name)?;
            }
            let info = port_list(rt).into_iter().find(|x| x.name == p.name);
            to_value(info)
        }
        "port.remove" => {
            let n: PortRemove = args(op, a)?;
            daily::if_exists(rt.remove_port(&n.name), n.if_exists)
        }
        "port.set" => {
            daily::port_set(rt, a)?;
            let name = a.get("name").and_then(Value::as_str).unwrap_or_default();
            to_value(port_list(rt).into_iter().find(|x| x.name == name))
        }
        "fdb.del" => daily::fdb_del(rt, a),
        "log.level" => daily::log_level(a),
        "fdb.show" => {
            let s: FdbShow = args(op, a)?;
            to_value(fdb_show(rt, &s.switch)?)
        }
        "fdb.flush" => {
            let f: FdbFlush = args(op, a)?;
            let sw = switch(rt, &f.switch)?;
            let flushed = match &f.port {
                Some(p) => {
                    let id = sw.port_id(p).ok_or_else(|| {
                        OpError::new(
                            ErrorCode::NotFound,
                            format!("no port {p:?} on {}", f.switch),
                        )
                    })?;
                    sw.fdb().flush_port(id)
                }
                None => sw.fdb().flush(),
            };
            Ok(json!({ "flushed": flushed }))
        }
        "fdb.add" => {
            let f: FdbAdd = args(op, a)?;
            let sw = switch(rt, &f.switch)?;
            let vlan = vswitch::VlanId::try_from(f.vlan).map_err(|e| invalid(e.to_string()))?;
            let mac = parse_mac(&f.mac)?;
            let id = sw.port_id(&f.port).ok_or_else(|| {
                OpError::new(
                    ErrorCode::NotFound,
                    format!("no port {:?} on {}", f.port, f.switch),
                )
            })?;
            sw.fdb()
                .add_static(vlan, mac, id)
                .map_err(|o| OpError::new(ErrorCode::Conflict, format!("not added: {o:?}")))?;
            Ok(Value::Null)
        }
        "pool.list" => to_value(pool_list(rt)),
        "pool.set" => {
            let p: PoolSet = args(op, a)?;
            let on_full = p
                .on_full
                .as_deref()
                .map(fabric_config::OnFull::parse)
                .transpose()
                .map_err(invalid)?;
            let warn_percent = p
                .warn_percent
                .map(fabric_config::warn_percent)
                .transpose()
                .map_err(invalid)?;
            rt.set_pool_policy(&p.pool, on_full, warn_percent)?;
            let info = pool_list(rt).into_iter().find(|i| i.name == p.pool);
            to_value(info)
        }
        "volume.list" => {
            let p: VolumeList = args(op, a)?;
            if let Some(name) = &p.pool {
                rt.pool_entry(name)?;
            }
            to_value(volume_list(rt, p.pool.as_deref()))
        }
        "volume.create" => {
            let v: VolumeCreate = args(op, a)?;
            check_name(&v.name)?;
            let bs = v.block_size.unwrap_or(512);
            let size = size(&v.size)?;
            if !(v.may_exist && daily::volume_exists(rt, &v.pool, &v.name)?) {
                rt.create_volume(&v.pool, &v.name, size, bs)?;
            }
            volume_info(rt, &v.pool, &v.name)
        }
        "volume.resize" => {
            let v: VolumeResize = args(op, a)?;
            rt.resize_volume(&v.pool, &v.name, size(&v.size)?, v.force)?;
            volume_info(rt, &v.pool, &v.name)
        }
        "volume.snapshot" | "volume.clone" => {
            let v: VolumeCopy = args(op, a)?;
            check_name(&v.name)?;
            if !(v.may_exist && daily::volume_exists(rt, &v.pool, &v.name)?) {
                rt.copy_volume(&v.pool, &v.source, &v.name, op == "volume.snapshot")?;
            }
            volume_info(rt, &v.pool, &v.name)
        }
        "volume.rename" => {
            let v: VolumeRename = args(op, a)?;
            check_name(&v.new_name)?;
            rt.rename_volume(&v.pool, &v.name, &v.new_name)?;
            volume_info(rt, &v.pool, &v.new_name)
        }
        "volume.delete" => {
            let v: VolumeDelete = args(op, a)?;
            rt.pool_entry(&v.pool)?;
            daily::if_exists(rt.delete_volume(&v.pool, &v.name), v.if_exists)
        }
        "export.add" => {
            let e: ExportAdd = args(op, a)?;
            let cfg = export_config(rt, &e)?;
            daily::may_exist(rt.add_export(&e.pool, &e.volume, cfg), e.may_exist)?;
            volume_info(rt, &e.pool, &e.volume)
        }
        "export.remove" => {
            let e: ExportRemove = args(op, a)?;
            rt.pool_entry(&e.pool)?;
            daily::if_exists(rt.remove_export(&e.pool, &e.volume), e.if_exists)
        }
        "export.limit" => {
            let e: ExportLimit = args(op, a)?;
            rt.set_export_limits(&e.pool, &e.volume, export_limits(&e)?)?;
            volume_info(rt, &e.pool, &e.volume)
        }
        "export.pause" | "export.resume" => {
            let e: ExportRef = args(op, a)?;
            if op == "export.pause" {
                rt.pause_export(&e.pool, &e.volume)?;
            } else {
                rt.resume_export(&e.pool, &e.volume)?;
            }
            volume_info(rt, &e.pool, &e.volume)
        }
        "volume.revert" => {
            let v: VolumeRevert = args(op, a)?;
            rt.revert_volume(&v.pool, &v.name, &v.snapshot)?;
            volume_info(rt, &v.pool, &v.name)
        }
        "port.limit" => {
            let p: PortLimit = args(op, a)?;
            let policing =
                fabric_config::port_policing(p.rate, p.burst).map_err(|e| invalid(e.message))?;
            rt.set_port_policing(&p.name, policing)?;
            let info = port_list(rt).into_iter().find(|x| x.name == p.name);
            to_value(info)
        }
        "config.save" => {
            let s: ConfigSave = args(op, a)?;
            let path = rt.save_config(s.path.as_deref().map(Path::new))?;
            Ok(json!({ "path": path.display().to_string() }))
        }
        other => Err(OpError::new(
            ErrorCode::UnknownOp,
            format!("unknown operation {other:?}"),
        )),
    }
}

pub(super) fn switch<'a>(
    rt: &'a Runtime,
    name: &str,
) -> OpResult<&'a std::sync::Arc<vswitch::Switch>> {
    rt.switch(name)
        .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no switch named {name:?}")))
}

fn size(s: &Size) -> OpResult<u64> {
    s.bytes().map_err(invalid)
}

/// The `fabric.toml` name rule.
fn check_name(name: &str) -> OpResult<()> {
    fabric_config::valid_name(name).map_err(invalid)
}

fn parse_mac(s: &str) -> OpResult<vswitch::MacAddr> {
    vswitch::MacAddr::parse_station(s).map_err(|e| invalid(e.to_string()))
}

/// Where relative paths of run-time additions are resolved: like the
/// config file's own (its directory).
fn base_dir(rt: &Runtime) -> PathBuf {
    rt.config_path
        .as_ref()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default()
}

/// A `port.add` checked by the config parser itself: the port is written as
/// a one-port `fabric.toml` and parsed, so every rule of the file applies.
pub(super) fn port_config(rt: &Runtime, p: &PortAdd) -> OpResult<(String, PortConfig)> {
    switch(rt, &p.switch)?;
    let run_dir = rt.with_state(|st| st.config.daemon.run_dir.clone());
    let mut port = toml::Table::new();
    port.insert("name".into(), p.name.clone().into());
    port.insert("type".into(), p.kind.clone().into());
    // The socket default is the daemon's run_dir (not the file's), so it is
    // spelled out for vhost-user ports; other types have no socket.
    if p.kind == "vhost-user" || p.socket.is_some() {
        let socket = p.socket.clone().unwrap_or_else(|| {
            run_dir
                .join(format!("{}.sock", p.name))
                .display()
                .to_string()
        });
        port.insert("socket".into(), socket.into());
    }
    if let Some(d) = &p.device {
        port.insert("device".into(), d.clone().into());
    }
    if let Some(v) = &p.vlan {
        let v = toml::Value::try_from(v).map_err(|e| invalid(format!("vlan: {e}")))?;
        port.insert("vlan".into(), v);
    }
    if let Some(q) = p.queue_size {
        port.insert("queue_size".into(), i64::from(q).into());
    }
    if let Some(m) = p.mtu {
        port.insert("mtu".into(), i64::from(m).into());
    }
    if let Some(mac) = &p.mac {
        port.insert("mac".into(), mac.clone().into());
    }
    if let Some(q) = p.queues {
        port.insert("queues".into(), i64::from(q).into());
    }
    if let Some(m) = p.multi_queue {
        port.insert("multi_queue".into(), m.into());
    }
    if let Some(o) = p.offloads {
        port.insert("offloads".into(), o.into());
    }
    if let Some(l) = &p.local {
        port.insert("local".into(), l.clone().into());
    }
    if let Some(u) = p.udp_port {
        port.insert("udp_port".into(), i64::from(u).into());
    }
    if let Some(v) = &p.vni {
        let v = toml::Value::try_from(v).map_err(|e| invalid(format!("vni: {e}")))?;
        port.insert("vni".into(), v);
    }
    let mut sw = toml::Table::new();
    sw.insert("name".into(), p.switch.clone().into());
    sw.insert("port".into(), toml::Value::Array(vec![port.into()]));
    let mut doc = toml::Table::new();
    doc.insert("switch".into(), toml::Value::Array(vec![sw.into()]));
    let text = toml::to_string(&doc).map_err(|e| invalid(e.to_string()))?;
    let cfg = fabric_config::parse(&text, &base_dir(rt).join("port.toml")).map_err(|e| {
        // "port.toml:5: switch[0].port[0].vlan.tag: ..." -> "vlan.tag: ..."
        let msg = e.to_string();
        let msg = msg
            .split_once("switch[0].port[0].")
            .map_or(msg.clone(), |(_, rest)| rest.to_owned());
        invalid(msg)
    })?;
    let pc = cfg
        .switches
        .into_iter()
        .next()
        .and_then(|s| s.ports.into_iter().next())
        .ok_or_else(|| invalid("no port"))?;
    Ok((p.switch.clone(), pc))
}

fn export_config(rt: &Runtime, e: &ExportAdd) -> OpResult<ExportConfig> {
    let pool = rt.pool_entry(&e.pool)?;
    // As in fabric.toml: a snapshot's export is read-only, so `config save`
    // writes what the config accepts back.
    let snapshot = crate::storage::lock_pool(&pool.pool)
        .volume(&e.volume)
        .is_ok_and(|v| v.kind == vblock::meta::VolumeKind::Snapshot);
    let read_only = match e.read_only {
        Some(false) if snapshot => {
            return Err(invalid("snapshots are always exported read-only"));
        }
        r => r.unwrap_or(false) || snapshot,
    };
    let run_dir = rt.with_state(|st| st.config.daemon.run_dir.clone());
    let socket = match &e.socket {
        Some(s) if s.is_empty() => return Err(invalid("socket must not be empty")),
        Some(s) => base_dir(rt).join(s),
        None => run_dir.join(format!("{}.sock", e.volume)),
    };
    let migration_socket = match &e.migration_socket {
        Some(s) if s.is_empty() => return Err(invalid("migration socket must not be empty")),
        Some(s) => Some(base_dir(rt).join(s)),
        None => None,
    };
    for s in std::iter::once(&socket).chain(&migration_socket) {
        if s.as_os_str().len() > 107 {
            return Err(invalid(format!(
                "socket path {} is longer than 107 bytes",
                s.display()
            )));
        }
    }
    let queues = e.queues.unwrap_or(fabric_config::DEFAULT_EXPORT_QUEUES);
    if !(1..=16).contains(&queues) {
        return Err(invalid(format!("queue count {queues} is outside 1..=16")));
    }
    let queue_size = e
        .queue_size
        .unwrap_or(fabric_config::DEFAULT_EXPORT_QUEUE_SIZE);
    if !(8..=1024).contains(&queue_size) || !queue_size.is_power_of_two() {
        return Err(invalid(format!(
            "queue size {queue_size} is not a power of two in 8..=1024"
        )));
    }
    Ok(ExportConfig {
        socket,
        migration_socket,
        queues,
        queue_size,
        read_only,
        limits: fabric_config::ExportLimits::default(),
    })
}

/// `export.limit`'s limits, checked as `fabric.toml`'s export keys are.
fn export_limits(e: &ExportLimit) -> OpResult<fabric_config::ExportLimits> {
    let bytes = |s: &Option<Size>| s.as_ref().map(size).transpose();
    let values = [
        ("iops_read", e.iops_read),
        ("iops_read_burst", e.iops_read_burst),
        ("iops_write", e.iops_write),
        ("iops_write_burst", e.iops_write_burst),
        ("bytes_per_sec_read", bytes(&e.bytes_per_sec_read)?),
        (
            "bytes_per_sec_read_burst",
            bytes(&e.bytes_per_sec_read_burst)?,
        ),
        ("bytes_per_sec_write", bytes(&e.bytes_per_sec_write)?),
        (
            "bytes_per_sec_write_burst",
            bytes(&e.bytes_per_sec_write_burst)?,
        ),
    ];
    let value = |k: &str| values.iter().find(|(n, _)| *n == k).and_then(|v| v.1);
    fabric_config::ExportLimits::from_keys(value).map_err(|e| invalid(e.message))
}

/// `port.list`: each running port's config with its counters from one
/// [`Snapshot`](crate::runtime::Snapshot).
fn port_list(rt: &Runtime) -> Vec<PortInfo> {
    let snap = rt.snapshot();
    rt.with_state(|st| {
        st.ports
            .iter()
            .map(|p| {
                let (sw, name) = (&p.switch, &p.config.name);
                // The switch's own view of the port (admin state, MAC limit).
                let (admin_up, mac_limit) = rt
                    .switch(sw)
                    .and_then(|s| {
                        let topo = s.topology();
                        let info = topo.ports().find(|x| &x.name == name)?;
                        Some((info.state.is_admin_up(), s.fdb().port_limit(info.id)))
                    })
                    .unwrap_or((true, 0));
                let c = snap
                    .ports
                    .iter()
                    .find(|s| &s.switch == sw && &s.port == name);
                let (kind, socket) = match &p.config.kind {
                    PortKind::VhostUser { socket, .. } => {
                        ("vhost-user", socket.display().to_string())
                    }
                    PortKind::Tap { device, .. } => ("tap", device.clone()),
                    PortKind::Vxlan(v) => ("vxlan", format!("{}:{}", v.local, v.udp_port)),
                };
                PortInfo {
                    switch: sw.clone(),
                    name: name.clone(),
                    kind: kind.into(),
                    socket,
                    vlan: vlan_summary(&p.config.vlan),
                    link: c.is_some_and(|c| c.link_up),
                    admin_up,
                    mtu: p.config.mtu,
                    mac_limit,
                    rx_packets: c.map_or(0, |c| c.rx_packets),
                    rx_bytes: c.map_or(0, |c| c.rx_bytes),
                    tx_packets: c.map_or(0, |c| c.tx_packets),
                    tx_bytes: c.map_or(0, |c| c.tx_bytes),
                    drops: vswitch::DropReason::ALL
                        .iter()
                        .map(|r| {
                            let n = c.and_then(|c| c.drops.iter().find(|(d, _)| d == r.name()));
                            (r.name().to_owned(), n.map_or(0, |(_, n)| *n))
                        })
                        .collect(),
                    broken_queues: c.map_or(0, |c| c.broken_queues),
                    announces: c.map_or(0, |c| c.announces),
                    tx_gso_packets: c.map_or(0, |c| c.tx_gso_packets),
                    gso_segmented: c.map_or(0, |c| c.gso_segmented),
                    csum_completed: c.map_or(0, |c| c.csum_completed),
                    queues: c.map_or_else(Vec::new, |c| {
                        c.queues
                            .iter()
                            .map(|q| QueueInfo {
                                rx_packets: q.rx_packets,
                                tx_packets: q.tx_packets,
                            })
                            .collect()
                    }),
                    tunnel: snap
                        .tunnels
                        .iter()
                        .find(|t| &t.switch == sw && &t.port == name)
                        .map(tunnel_info),
                    rate: p.config.policing.map(|r| r.rate),
                    burst: p.config.policing.map(|r| r.burst),
                }
            })
            .collect()
    })
}

fn tunnel_info(t: &TunnelSample) -> TunnelInfo {
    let (c, f) = (&t.counters, &t.remote_fdb);
    TunnelInfo {
        rx_packets: c.rx_packets,
        rx_bytes: c.rx_bytes,
        tx_packets: c.tx_packets,
        tx_bytes: c.tx_bytes,
        rx_coalesced: c.rx_coalesced,
        drops: TunnelDrop::ALL
            .iter()
            .map(|&r| (r.name().to_owned(), c.dropped(r)))
            .collect(),
        remote_entries: u64::from(f.entries),
        remote_learned: f.learned,
        remote_moved: f.moved,
        remote_aged: f.aged,
        remote_refused: [
            ("full".to_owned(), f.refused_full),
            ("vtep_limit".to_owned(), f.refused_vtep_limit),
        ]
        .into(),
    }
}

fn fdb_show(rt: &Runtime, name: &str) -> OpResult<Vec<FdbEntryInfo>> {
    let sw = switch(rt, name)?;
    let topo = sw.topology();
    let tunnels = rt.tunnels();
    let now = sw.now();
    Ok(sw
        .fdb()
        .entries(now)
        .into_iter()
        .map(|e| {
            let port = topo
                .port(e.port)
                .map_or_else(|| format!("#{}", e.port), |p| p.name.clone());
            // Behind a tunnel: the VTEP its remote FDB has for the station.
            let vtep = tunnels
                .iter()
                .find(|(s, p, _)| s == name && *p == port)
                .and_then(|(_, _, t)| {
                    let vni = t.config.vnis.vni(e.vlan)?;
                    t.remote_fdb.lookup(vni, e.mac, now)
                })
                .map(|ip| ip.to_string());
            FdbEntryInfo {
                vlan: e.vlan.get(),
                mac: e.mac.to_string(),
                port,
                is_static: e.is_static,
                age_secs: e.age,
                vtep,
            }
        })
        .collect())
}

fn pool_list(rt: &Runtime) -> Vec<PoolInfo> {
    rt.pools()
        .iter()
        .map(|p| {
            let pool = crate::storage::lock_pool(&p.pool);
            let s = pool.space();
            let cs = u64::from(s.cluster_size);
            let watch = p.gauges.watch();
            PoolInfo {
                name: p.name.clone(),
                path: p.path.display().to_string(),
                cluster_size: s.cluster_size,
                capacity: s.capacity,
                used: s.used_clusters * cs,
                free: s.free_clusters * cs,
                releasing: s.releasing_clusters * cs,
                provisioned: s.provisioned,
                on_full: p.on_full().as_str().to_owned(),
                warn_percent: watch.warn_percent(),
                over_warn: watch.over_threshold(),
                paused: watch.paused(),
                paused_total: watch.paused_total(),
            }
        })
        .collect()
}

fn volume_list(rt: &Runtime, only: Option<&str>) -> Vec<VolumeInfo> {
    let mut out = Vec::new();
    for p in rt.pools() {
        if only.is_some_and(|o| o != p.name) {
            continue;
        }
        let (vols, capacity) = {
            let pool = crate::storage::lock_pool(&p.pool);
            (pool.volumes(), pool.space().capacity)
        };
        let origins = origins(rt, &p.name);
        for v in vols {
            let export = rt.export_of(&p.name, &v.name);
            let origin = origins.iter().find(|(n, _)| *n == v.name);
            let limits = export.as_ref().map_or_else(Default::default, |e| {
                e.limits
                    .by_key()
                    .into_iter()
                    .filter_map(|((rate_key, burst_key), l)| {
                        l.map(|l| {
                            [
                                (rate_key.to_owned(), l.rate),
                                (burst_key.to_owned(), l.burst),
                            ]
                        })
                    })
                    .flatten()
                    .collect()
            });
            let throttled = rt.export_throttled(&p.name, &v.name);
            let paused = rt.export_paused(&p.name, &v.name).unwrap_or(false);
            out.push(VolumeInfo {
                pool: p.name.clone(),
                kind: format!("{:?}", v.kind).to_lowercase(),
                size: v.size,
                block_size: v.block_size,
                read_only: v.read_only,
                allocated: v.allocated,
                exclusive: v.exclusive,
                shared: v.allocated.saturating_sub(v.exclusive),
                pool_capacity: capacity,
                origin: origin.map(|(_, o)| o.clone()),
                export: export.as_ref().map(|e| e.socket.display().to_string()),
                migration_socket: export
                    .and_then(|e| e.migration_socket)
                    .map(|s| s.display().to_string()),
                limits,
                throttled,
                paused,
                name: v.name,
            });
        }
    }
    out
}

/// (volume, the volume it was snapshotted or cloned from) in `pool`, as the
/// running configuration has them.
fn origins(rt: &Runtime, pool: &str) -> Vec<(String, String)> {
    use fabric_config::VolumeSource;
    rt.with_state(|st| {
        st.config
            .pools
            .iter()
            .filter(|p| p.name == pool)
            .flat_map(|p| &p.volumes)
            .filter_map(|v| match &v.source {
                VolumeSource::SnapshotOf(o) | VolumeSource::CloneOf(o) => {
                    Some((v.name.clone(), o.clone()))
                }
                _ => None,
            })
            .collect()
    })
}

fn volume_info(rt: &Runtime, pool: &str, name: &str) -> OpResult<Value> {
    let v = volume_list(rt, Some(pool))
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no volume named {name:?}")))?;
    to_value(v)
}
