//! The control protocol: JSON lines over a Unix socket.
//!
//! Each request is one line: `{"v":1,"id":7,"op":"volume.create","args":{...}}`.
//! Each answer is one line with the same `id`: `{"v":1,"id":7,"ok":true,
//! "result":...}` or `{"v":1,"id":7,"ok":false,"error":{"code":"conflict",
//! "message":"..."}}`. A client may send several requests on one connection;
//! answers come in order. Lines longer than [`MAX_LINE`] bytes are refused
//! and the connection closed.
//!
//! Versioning: `v` is [`VERSION`]; a request with another version is refused
//! with `unsupported_version`. New operations and new optional arguments
//! keep the version; changing the meaning of one bumps it.
//!
//! | op | args | result |
//! |---|---|---|
//! | `daemon.status` | - | [`Status`] |
//! | `port.list` | - | [`PortInfo`] list |
//! | `port.add` | [`PortAdd`] | [`PortInfo`] |
//! | `port.remove` | [`PortRemove`] `{name, if_exists?}` | - |
//! | `port.set` | [`PortSet`] `{name, vlan?, mtu?, mac_limit?, admin?}` | [`PortInfo`] |
//! | `fdb.show` | [`FdbShow`] `{switch}` | [`FdbEntryInfo`] list |
//! | `fdb.flush` | [`FdbFlush`] `{switch, port?}` | `{flushed}` |
//! | `fdb.add` | [`FdbAdd`] `{switch, vlan, mac, port}` | - |
//! | `fdb.del` | [`FdbDel`] `{switch, vlan, mac, if_exists?}` | `{removed}` |
//! | `log.level` | [`LogLevel`] `{level}` | `{filter}` |
//! | `pool.list` | - | [`PoolInfo`] list |
//! | `pool.set` | [`PoolSet`] `{pool, on_full?, warn_percent?}` | [`PoolInfo`] |
//! | `volume.list` | [`VolumeList`] `{pool?}` | [`VolumeInfo`] list |
//! | `volume.create` | [`VolumeCreate`] `{pool, name, size, block_size?, may_exist?}` | [`VolumeInfo`] |
//! | `volume.resize` | [`VolumeResize`] `{pool, name, size, force?}` | [`VolumeInfo`] |
//! | `volume.snapshot` | [`VolumeCopy`] `{pool, source, name, may_exist?}` | [`VolumeInfo`] |
//! | `volume.clone` | [`VolumeCopy`] `{pool, source, name, may_exist?}` | [`VolumeInfo`] |
//! | `volume.rename` | [`VolumeRename`] `{pool, name, new_name}` | [`VolumeInfo`] |
//! | `volume.delete` | [`VolumeDelete`] `{pool, name, if_exists?}` | - |
//! | `export.add` | [`ExportAdd`] | [`VolumeInfo`] |
//! | `export.remove` | [`ExportRemove`] `{pool, volume, if_exists?}` | - |
//! | `config.save` | [`ConfigSave`] `{path?}` | `{path}` |
//! | `export.limit` | [`ExportLimit`] `{pool, volume, iops_read?, ...}` | [`VolumeInfo`] |
//! | `port.limit` | [`PortLimit`] `{name, rate?, burst?}` | [`PortInfo`] |
//! | `export.pause` | [`ExportRef`] `{pool, volume}` (answers once drained) | [`VolumeInfo`] |
//! | `export.resume` | [`ExportRef`] `{pool, volume}` | [`VolumeInfo`] |
//! | `volume.revert` | [`VolumeRevert`] `{pool, name, snapshot}` | [`VolumeInfo`] |
//!
//! The argument structs are what the daemon reads and what `fabricctl`
//! sends (unset optional fields are left out of the object).
//!
//! Idempotence for scripts, as `ovs-vsctl` has it: with `may_exist`, an add
//! or create of a name that exists changes nothing and succeeds (answering
//! the existing object; a port of that name on another switch is still a
//! `conflict`); with `if_exists`, a remove or delete of something absent
//! succeeds. The container (switch, pool) must exist either way.
//!
//! Sizes are bytes (integers) or strings with K/M/G/T suffixes.

use serde::{Deserialize, Serialize};

/// Protocol version.
pub const VERSION: u32 = 1;
/// Longest request line accepted, in bytes.
pub const MAX_LINE: usize = 64 * 1024;

/// One request line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    #[serde(default)]
    pub id: u64,
    pub op: String,
    #[serde(default)]
    pub args: serde_json::Value,
}

/// One answer line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    pub id: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

/// Why a request failed. `code` is stable for scripts; `message` is for humans.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorInfo {
    pub code: ErrorCode,
    pub message: String,
}

/// Error classes (stable, snake_case on the wire).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, a line too long.
    BadRequest,
    UnsupportedVersion,
    UnknownOp,
    /// An argument is missing, of the wrong type or out of range.
    InvalidArgument,
    /// No such port, switch, pool, volume or export.
    NotFound,
    /// The name exists already.
    AlreadyExists,
    /// Refused because of the current state (deleting an exported volume...).
    Conflict,
    /// The pool is out of space.
    NoSpace,
    /// The operation failed inside the daemon (I/O error...).
    Internal,
}

impl ErrorCode {
    /// Exit code `fabricctl` uses for this error (scripts rely on them).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorCode::NotFound => 3,
            ErrorCode::AlreadyExists | ErrorCode::Conflict => 4,
            ErrorCode::NoSpace => 5,
            ErrorCode::Internal => 6,
            _ => 2,
        }
    }
}

/// `daemon.status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub version: String,
    pub protocol: u32,
    pub pid: u32,
    pub uptime_secs: u64,
    pub config: Option<String>,
}

/// `port.add` arguments (the `[[switch.port]]` keys).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PortAdd {
    pub switch: String,
    pub name: String,
    #[serde(rename = "type", default = "vhost_user")]
    pub kind: String,
    #[serde(default)]
    pub socket: Option<String>,
    /// As in `fabric.toml`: `{"mode":"access","tag":10}` or `{"mode":"trunk",...}`.
    #[serde(default)]
    pub vlan: Option<serde_json::Value>,
    #[serde(default)]
    pub queue_size: Option<u16>,
    #[serde(default)]
    pub mtu: Option<u16>,
    #[serde(default)]
    pub mac: Option<String>,
    /// TAP ports: the interface name (default: the port name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// vhost-user ports: queue pairs offered (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u16>,
    /// TAP ports: one queue per datapath thread (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_queue: Option<bool>,
    /// Checksum and segmentation offloads (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offloads: Option<bool>,
    /// VXLAN ports: the underlay address to bind (required for them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    /// VXLAN ports: the UDP port (default 4789).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_port: Option<u16>,
    /// VXLAN ports: the `vni` map as in `fabric.toml`,
    /// `[{"vlan":10,"vni":5010,"remotes":["192.0.2.2"]}, {"vlan":20,"vni":5020,"group":"239.1.1.20"}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<serde_json::Value>,
    /// A port of that name on this switch already: succeed, change nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub may_exist: bool,
}

fn vhost_user() -> String {
    "vhost-user".into()
}

/// One port in `port.list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortInfo {
    pub switch: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub socket: String,
    /// `access 10`, `trunk 10,20,100-199 native 1`.
    pub vlan: String,
    pub link: bool,
    /// False after `port set --admin down`. Absent from an older daemon's
    /// answer: read as true.
    #[serde(default = "yes")]
    pub admin_up: bool,
    /// Largest L3 packet the switch forwards to and from the port.
    #[serde(default)]
    pub mtu: u16,
    /// Stations the port may have learned at once.
    #[serde(default)]
    pub mac_limit: u32,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Drops by reason (`runt`, `vlan_not_allowed`, ...).
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Queues stopped as broken by their driver (until it resets them).
    /// Absent from an older daemon's answer: read as 0.
    #[serde(default)]
    pub broken_queues: u64,
    /// Announcements sent for the port's peer (a migrated guest's RARP,
    /// vhost-user SEND_RARP). Absent from an older daemon's answer: read as 0.
    #[serde(default)]
    pub announces: u64,
    /// GSO super-frames delivered intact, segmented in software, and partial
    /// checksums completed in software for this port. Absent from an older
    /// daemon's answer: read as 0.
    #[serde(default)]
    pub tx_gso_packets: u64,
    #[serde(default)]
    pub gso_segmented: u64,
    #[serde(default)]
    pub csum_completed: u64,
    /// Per queue (pair) of a multi-queue port, by index (absent for a
    /// single-queue port and from an older daemon's answer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<QueueInfo>,
    /// A VXLAN port's underlay counters and remote FDB (absent for other
    /// port types and from an older daemon's answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelInfo>,
    /// Ingress policing: `rate` kbit/s, `burst` kbit (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

fn yes() -> bool {
    true
}

/// One queue (pair) of a multi-queue port in `port.list`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueInfo {
    /// Frames received from the peer through this queue.
    pub rx_packets: u64,
    /// Frames delivered to the peer through this queue.
    pub tx_packets: u64,
}

/// The tunnel side of a VXLAN port in `port.list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TunnelInfo {
    /// Frames decapsulated and handed to the switch (inner bytes).
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames encapsulated and sent, one per VTEP when flooding (inner bytes).
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Received inner TCP segments merged into the segment before them
    /// (receive coalescing): the switch was handed `rx_packets` minus these.
    #[serde(default)]
    pub rx_coalesced: u64,
    /// Drops by reason (`bad_header`, `unknown_vni`, ...).
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Remote MAC addresses known behind VTEPs now.
    pub remote_entries: u64,
    pub remote_learned: u64,
    pub remote_moved: u64,
    pub remote_aged: u64,
    /// Remote MAC addresses not learned, by reason (`full`, `vtep_limit`).
    pub remote_refused: std::collections::BTreeMap<String, u64>,
}

/// One FDB entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FdbEntryInfo {
    pub vlan: u16,
    pub mac: String,
    pub port: String,
    #[serde(rename = "static")]
    pub is_static: bool,
    pub age_secs: u32,
    /// For a station behind a VXLAN port: the VTEP its remote FDB points
    /// at (absent when unknown, for other ports and from an older daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep: Option<String>,
}

/// One pool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolInfo {
    pub name: String,
    pub path: String,
    pub cluster_size: u32,
    pub capacity: u64,
    pub used: u64,
    pub free: u64,
    /// Freed, free after the next flush.
    pub releasing: u64,
    /// Sum of the volumes' sizes (may exceed the capacity: over-commit).
    pub provisioned: u64,
    /// `"error"` or `"pause"`: what a request needing space gets when full.
    pub on_full: String,
    /// The warning threshold, percent of the clusters used.
    pub warn_percent: u8,
    /// Used at or above `warn_percent`.
    pub over_warn: bool,
    /// Requests waiting for space now (`on_full = "pause"`).
    pub paused: u64,
    /// Requests that waited for space since the daemon started.
    pub paused_total: u64,
}

/// `pool.set` arguments: what is given changes, the rest stays.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSet {
    pub pool: String,
    /// `"error"` or `"pause"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_full: Option<String>,
    /// 1..=100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_percent: Option<i64>,
}

/// One volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeInfo {
    pub pool: String,
    pub name: String,
    /// `volume`, `snapshot` or `clone`.
    pub kind: String,
    pub size: u64,
    pub block_size: u32,
    pub read_only: bool,
    pub allocated: u64,
    pub exclusive: u64,
    /// Of `allocated`, the bytes other volumes (snapshots, clones) share.
    #[serde(default)]
    pub shared: u64,
    /// The pool's capacity, so `allocated` reads as a share of it.
    #[serde(default)]
    pub pool_capacity: u64,
    /// The volume a snapshot or clone was taken from, as this daemon knows
    /// it (made by it, or declared in `fabric.toml`); `None` for a plain
    /// volume and one made by the offline tool.
    #[serde(default)]
    pub origin: Option<String>,
    /// The export's socket, if exported.
    pub export: Option<String>,
    /// The export's migration socket, if it has one.
    #[serde(default)]
    pub migration_socket: Option<String>,
    /// The export's I/O limits by key (`iops_read`, `iops_read_burst`, ...),
    /// only those set; empty: unlimited or not exported.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub limits: std::collections::BTreeMap<String, u64>,
    /// Requests of the export that waited for its limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<u64>,
    /// The export is paused (`export.pause`): it takes no request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// `export.add` arguments (the `export = {...}` keys).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExportAdd {
    pub pool: String,
    pub volume: String,
    #[serde(default)]
    pub socket: Option<String>,
    /// A second socket for a live migration's destination; none by default.
    #[serde(default)]
    pub migration_socket: Option<String>,
    #[serde(default)]
    pub queues: Option<u16>,
    #[serde(default)]
    pub queue_size: Option<u16>,
    /// Default false; a snapshot's export is read-only and `false` is refused.
    #[serde(default)]
    pub read_only: Option<bool>,
    /// Exported already: succeed, change nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub may_exist: bool,
}

/// A size argument: bytes, or a string like "16G".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    /// The size in bytes, or why the text is not one.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(t) => {
                fabric_config::parse_size(t).map_err(|e| format!("invalid size {t:?}: {e}"))
            }
        }
    }
}

/// `port.remove` arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRemove {
    pub name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub if_exists: bool,
}

/// A port's administrative state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
    Up,
    Down,
}

/// `port.set` arguments: what is given changes, the rest stays; the port's
/// peer stays connected. `vlan` and `mtu` follow the `fabric.toml` rules
/// and are kept by `config save`; `mac_limit` and `admin` last until the
/// daemon stops.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSet {
    pub name: String,
    /// As in `fabric.toml`: `{"mode":"access","tag":10}` or `{"mode":"trunk",...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Stations the port may learn, `1..=` the switch's `fdb_capacity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
}

/// `fdb.del` arguments: one entry, static or learned.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdbDel {
    pub switch: String,
    pub vlan: u16,
    pub mac: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub if_exists: bool,
}

/// `log.level` arguments: `error`..`trace`, or `RUST_LOG` directives
/// (`info,vblock=debug`), each a level or `TARGET=LEVEL`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLevel {
    pub level: String,
}

/// `fdb.show` arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdbShow {
    pub switch: String,
}

/// `fdb.flush` arguments: every learned entry, or those behind `port`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdbFlush {
    pub switch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
}

/// `fdb.add` arguments: a static entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdbAdd {
    pub switch: String,
    pub vlan: u16,
    pub mac: String,
    pub port: String,
}

/// `volume.list` arguments: every pool's volumes, or `pool`'s.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeList {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// `volume.create` arguments (block size default 512).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreate {
    pub pool: String,
    pub name: String,
    pub size: Size,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub may_exist: bool,
}

/// `volume.resize` arguments; shrinking needs `force`, and an exported
/// volume only grows (shrinking it is a `conflict`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeResize {
    pub pool: String,
    pub name: String,
    pub size: Size,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// `volume.snapshot` and `volume.clone` arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCopy {
    pub pool: String,
    pub source: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub may_exist: bool,
}

/// `volume.rename` arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRename {
    pub pool: String,
    pub name: String,
    pub new_name: String,
}

/// `volume.delete` arguments (`volume` is accepted for `name`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDelete {
    pub pool: String,
    #[serde(alias = "volume")]
    pub name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub if_exists: bool,
}

/// `export.remove` arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRemove {
    pub pool: String,
    pub volume: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub if_exists: bool,
}

/// `export.pause` and `export.resume` arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRef {
    pub pool: String,
    pub volume: String,
}

/// `volume.revert` arguments: volume `name` becomes the content of
/// `snapshot`, one of its snapshots (`volume` is accepted for `name`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRevert {
    pub pool: String,
    #[serde(alias = "volume")]
    pub name: String,
    pub snapshot: String,
}

/// `export.limit` arguments: the export's limits from now on, the keys of
/// `fabric.toml` (a limit left out is removed; none at all: unlimited).
/// Byte rates and bursts are sizes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportLimit {
    pub pool: String,
    pub volume: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops_read: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops_read_burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops_write: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops_write_burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec_read: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec_read_burst: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec_write: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec_write_burst: Option<Size>,
}

/// `port.limit` arguments: the port's ingress policing from now on, `rate`
/// kbit/s and `burst` kbit as in `fabric.toml` (no `rate`: none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortLimit {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// `config.save` arguments: where to write (default: the daemon's file).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSave {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}
