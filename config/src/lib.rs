//! `fabric.toml`: schema, defaults and validation.
//!
//! [`load`] (or [`parse`]) turns the file into a [`FabricConfig`] that is
//! fully checked and has every default applied and every path resolved, so
//! the daemon never re-validates. Errors name the file, the line and the key
//! path, e.g.
//!
//! ```text
//! fabric.toml:14: switch[0].port[2].vlan.tag: VLAN id 4095 is outside 1..=4094
//! ```
//!
//! The doc comments on the types below are the key reference; [`EXAMPLE`] is
//! a complete annotated file (the repository's `fabric.toml`).

use std::path::{Path, PathBuf};

mod error;
mod full;
mod limits;
mod raw;

pub use error::ConfigError;
pub use full::{warn_percent, OnFull, DEFAULT_WARN_PERCENT};
pub use limits::{
    default_export_burst, port_policing, ExportLimits, LimitError, RateLimit,
    DEFAULT_POLICING_BURST_KBIT, EXPORT_LIMIT_KEYS,
};
// The L2 values the file names, typed by their protocol rules.
pub use fabric_l2::{MacAddr, VlanId, VlanSet, Vni};

/// The example `fabric.toml` from the repository root, with comments.
pub const EXAMPLE: &str = include_str!("../../fabric.toml");

/// Default `[daemon] run_dir`.
pub const DEFAULT_RUN_DIR: &str = "run";
/// Default `[daemon] datapath_threads`: one core polls, as OVS-DPDK's default
/// of one PMD thread; raise it to spread busy ports over more cores.
pub const DEFAULT_DATAPATH_THREADS: u32 = 1;
/// Default `[daemon] socket_mode`: only the daemon's user may connect.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;
/// Default `[daemon] handshake_timeout_ms`.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u32 = 5000;
/// Default `[[switch]] mac_aging_secs`.
pub const DEFAULT_MAC_AGING_SECS: u32 = 300;
/// Default `[[switch]] fdb_capacity`.
pub const DEFAULT_FDB_CAPACITY: u32 = 65536;
/// Default `[[switch]] port_mac_limit` (lowered to `fdb_capacity` if that is smaller).
pub const DEFAULT_PORT_MAC_LIMIT: u32 = 1024;
/// Default `local_hold_secs` of a vxlan port: how long a station seen on a
/// local port cannot be taken over through the tunnel.
pub const DEFAULT_LOCAL_HOLD_SECS: u32 = 10;
/// Default `vtep_mac_limit` of a vxlan port (lowered to `remote_fdb_capacity`).
pub const DEFAULT_VTEP_MAC_LIMIT: u32 = 1024;
/// Default `remote_fdb_capacity` of a vxlan port.
pub const DEFAULT_REMOTE_FDB_CAPACITY: u32 = 65536;
/// Default `remote_mac_aging_secs` of a vxlan port.
pub const DEFAULT_REMOTE_MAC_AGING_SECS: u32 = 300;
/// Default `[[switch.port]] queue_size`.
pub const DEFAULT_QUEUE_SIZE: u16 = 1024;
/// Most queue pairs a vhost-user port offers (`queues`), and most queues a
/// multi-queue TAP port opens. The virtio spec allows up to 0x8000 pairs
/// (§5.1.4, `max_virtqueue_pairs`); a port's pairs are spread over the
/// datapath threads, of which a host has few, so more buys nothing.
pub const MAX_QUEUE_PAIRS: u16 = 8;
/// Default `[[switch.port]] mtu`.
pub const DEFAULT_MTU: u16 = 1500;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FabricConfig {
    /// The `[daemon]` table (optional in the file; all keys have defaults).
    pub daemon: DaemonConfig,
    /// The `[[switch]]` tables, in file order. May be empty.
    pub switches: Vec<SwitchConfig>,
    /// The `[[pool]]` tables, in file order. May be empty.
    pub pools: Vec<PoolConfig>,
    /// The `[nbd]` table: the NBD server, off without it.
    pub nbd: Option<NbdConfig>,
}

/// `[nbd]`: serves every volume and snapshot of every pool over NBD (the
/// README's "Images in and out"). The table turns it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdConfig {
    /// `socket`: the Unix socket (mode 0600). Default `<run_dir>/nbd.sock`.
    pub socket: PathBuf,
    /// `tcp`: also serve on this address, e.g. `"127.0.0.1:10809"`. No
    /// authentication and no TLS: for a trusted network only. Default: off.
    pub tcp: Option<std::net::SocketAddr>,
}

/// Default `[[pool]] cluster_size`: 16 KiB (see the README's "Cluster size").
pub const DEFAULT_CLUSTER_SIZE: u32 = 16 * 1024;
/// Default `export.queues`.
pub const DEFAULT_EXPORT_QUEUES: u16 = 1;
/// Default `export.queue_size`.
pub const DEFAULT_EXPORT_QUEUE_SIZE: u16 = 256;

// One rule for names and sizes wherever they are typed (fabricctl, vblock).
#[doc(hidden)]
pub use fabric_syntax::SIZE_TABLE;
pub use fabric_syntax::{parse_size, valid_name, SizeError};

mod write;
pub use write::to_toml;

/// `[[pool]]`: a thin pool on a file or block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// `name`: required, unique among pools.
    pub name: String,
    /// `path`: the pool file or block device (relative to the config file).
    pub path: PathBuf,
    /// `size`: a missing file is created (and formatted) at this size
    /// (bytes or e.g. `"16G"`; at least 1 MiB, a multiple of 4096). An
    /// existing pool keeps its size. Without it the path must exist.
    pub size: Option<u64>,
    /// `cluster_size`: for a new pool; power of two 4 KiB..=2 MiB, default 16 KiB.
    pub cluster_size: u32,
    /// `overcommit`: allow the volumes declared here to total more than the
    /// pool's size (thin over-commit). Default false.
    pub overcommit: bool,
    /// `on_full`: `"error"` (default) or `"pause"`, see [`OnFull`].
    pub on_full: OnFull,
    /// `warn_percent`: used space (percent of the pool's clusters) at which
    /// a warning is logged and `vswitchd_pool_over_warn_threshold` is 1;
    /// 1..=100, default 80.
    pub warn_percent: u8,
    /// `[[pool.volume]]` tables, in file order.
    pub volumes: Vec<VolumeConfig>,
}

/// `[[pool.volume]]`: a volume the daemon makes sure exists (created on
/// first start; an existing one is kept, and grown if `size` is larger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeConfig {
    /// `name`: required, unique in its pool.
    pub name: String,
    /// The key path (`pool[0].volume[1]`), for errors found at start-up
    /// (e.g. a source volume that exists neither here nor in the pool).
    pub key: String,
    pub source: VolumeSource,
    /// `export`: served over vhost-user-blk when present.
    pub export: Option<ExportConfig>,
}

/// Where a volume comes from: exactly one of `size`, `clone_of`, `snapshot_of`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// `size` (bytes, multiple of the block size) and `block_size` (512 or 4096, default 512).
    New { size: u64, block_size: u32 },
    /// `clone_of`: a writable clone of that volume of the same pool.
    CloneOf(String),
    /// `snapshot_of`: a read-only snapshot of that volume of the same pool.
    SnapshotOf(String),
}

/// `export = { ... }`: a vhost-user-blk socket for the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    /// `socket`: default `<run_dir>/<volume>.sock`; unique across all sockets.
    pub socket: PathBuf,
    /// `migration_socket`: a second socket of the export, served at the same
    /// time, for a live migration's destination VMM; none unless given.
    /// Unique across all sockets.
    pub migration_socket: Option<PathBuf>,
    /// `queues`: 1..=16, default 1 (each queue has its own thread and io_uring).
    pub queues: u16,
    /// `queue_size`: power of two 8..=1024, default 256.
    pub queue_size: u16,
    /// `read_only`: default false; snapshots are always read-only.
    pub read_only: bool,
    /// `iops_read`, `iops_write` (requests a second), `bytes_per_sec_read`,
    /// `bytes_per_sec_write` (bytes a second, or e.g. `"100M"`), each with
    /// its `_burst` (default a tenth of the rate, at least 1): none unless
    /// given. A request over a limit waits, it never fails.
    pub limits: ExportLimits,
}

/// `[daemon]`: process-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// `run_dir`: directory for runtime files; ports without an explicit
    /// `socket` get `<run_dir>/<port name>.sock`. Default `"run"`. A relative
    /// path is resolved against the directory holding the config file (not
    /// the daemon's working directory), so the file means the same thing
    /// wherever the daemon is started from. Absolute after [`load`].
    pub run_dir: PathBuf,
    /// `datapath_threads`: threads that poll the ports' transmit queues and
    /// forward (each port is served by one of them; a thread polls while its
    /// ports are busy and sleeps 50 us after the last frame). Default 1,
    /// 1..=256.
    pub datapath_threads: u32,
    /// `control_socket`: the control socket `fabricctl` talks to (mode 0600).
    /// Default `<run_dir>/control.sock`.
    pub control_socket: PathBuf,
    /// `metrics_listen`: `"127.0.0.1:9100"` serves Prometheus metrics over
    /// HTTP at `/metrics`. Default: off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `socket_mode`: permission bits of every vhost-user socket (ports and
    /// exports), e.g. `0o660` or `"0660"`; the owner keeps read and write.
    /// Applied exactly, whatever the daemon's umask. Default `0o600`.
    pub socket_mode: u32,
    /// `socket_owner`: user that owns the vhost-user sockets, by name or
    /// numeric id (changing it needs root or CAP_CHOWN). Default: the
    /// daemon's user.
    pub socket_owner: Option<Principal>,
    /// `socket_group`: group of the vhost-user sockets, by name or numeric
    /// id, e.g. `"kvm"` with `socket_mode = 0o660` for a QEMU running as
    /// another user of that group. Default: the daemon's group.
    pub socket_group: Option<Principal>,
    /// `handshake_timeout_ms`: a frontend that connects and sends no
    /// vhost-user message within this time is dropped, and the socket
    /// serves the next one. Default 5000, range `100..=600000`.
    pub handshake_timeout_ms: u32,
    /// `live_migration`: offer the dirty log of a live migration
    /// (VHOST_F_LOG_ALL, VHOST_USER_PROTOCOL_F_LOG_SHMFD) on every port and
    /// export. Off, QEMU refuses to migrate guests attached to them
    /// ("Migration disabled: vhost-user backend lacks
    /// VHOST_USER_PROTOCOL_F_LOG_SHMFD feature"). Default true.
    pub live_migration: bool,
}

/// A user or group as `fabric.toml` names it; a name is looked up when the
/// daemon starts (and by `vswitchd --check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Id(u32),
    Name(String),
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Id(id) => write!(f, "{id}"),
            Principal::Name(n) => f.write_str(n),
        }
    }
}

/// `[[switch]]`: one learning L2 switch (a bridge) and its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchConfig {
    /// `name`: required, `[A-Za-z0-9_.-]{1,32}`, unique among switches.
    pub name: String,
    /// `mac_aging_secs`: a learned MAC address not seen as a source for this
    /// long is forgotten (and its frames flooded again). Default 300, range
    /// `10..=1_000_000`; there is no "never age" value.
    pub mac_aging_secs: u32,
    /// `fdb_capacity`: most (VLAN, MAC) entries the forwarding database
    /// holds; when it is full, new addresses are not learned and frames to
    /// them are flooded. Default 65536, range `1..=16_777_216`.
    pub fdb_capacity: u32,
    /// `port_mac_limit`: most addresses learned behind one port, so one guest
    /// cannot fill the whole FDB. Default 1024 (or `fdb_capacity` if that is
    /// smaller), range `1..=fdb_capacity`.
    pub port_mac_limit: u32,
    /// `[[switch.port]]` tables, in file order.
    pub ports: Vec<PortConfig>,
}

/// `[[switch.port]]`: one port of a switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// `name`: required, `[A-Za-z0-9_.-]{1,32}`, unique across all switches
    /// (it names the port in counters and `fabricctl`).
    pub name: String,
    /// `type` and the keys specific to it.
    pub kind: PortKind,
    /// `vlan`: the port's 802.1Q rule. Default access VLAN 1.
    pub vlan: VlanConfig,
    /// `mtu`: largest L3 packet (frame without Ethernet header) the port
    /// carries; advertised to the guest in virtio-net config space. Default
    /// 1500, range `68..=65535`.
    pub mtu: u16,
    /// `rate` (kbit/s) and `burst` (kbit, default 8000), as Open vSwitch's
    /// `ingress_policing_rate` and `ingress_policing_burst`: frames the port
    /// receives beyond them are dropped (`policed`). None unless `rate` is
    /// given.
    pub policing: Option<RateLimit>,
}

/// `type`: what is behind the port: `"vhost-user"` (a guest NIC), `"tap"`
/// (a kernel TAP device) or `"vxlan"` (a VXLAN tunnel to other hosts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortKind {
    /// `type = "vhost-user"`: a guest NIC; the daemon listens on a
    /// vhost-user-net socket that QEMU/cloud-hypervisor connects to.
    VhostUser {
        /// `socket`: path of the listening socket. Default
        /// `<run_dir>/<name>.sock`; a relative path is resolved against the
        /// config file's directory. Unique across all ports (compared after
        /// resolving) and at most 107 bytes (the `sun_path` limit).
        socket: PathBuf,
        /// `queue_size`: virtqueue size offered to the guest. Default 1024;
        /// a power of two in `64..=32768`.
        queue_size: u16,
        /// `queues`: queue pairs offered to the guest (VIRTIO_NET_F_MQ and
        /// `max_virtqueue_pairs` when above 1). Default 1, `1..=8`.
        queues: u16,
        /// `mac`: guest MAC address advertised in virtio-net config space,
        /// `"52:54:00:12:34:56"` form. Optional (the guest then picks its
        /// own); must be unicast and not all-zero.
        mac: Option<MacAddr>,
        /// `offloads`: offer the guest checksum and segmentation offloads
        /// (CSUM, GUEST_CSUM, HOST/GUEST_TSO4/6, ECN, USO). Default true;
        /// false: the guest sends and receives complete frames only.
        offloads: bool,
    },
    /// `type = "tap"`: a kernel TAP device (virtio-net header on), so the
    /// host or a network namespace joins the port's VLAN. The daemon creates
    /// it (or attaches to an existing persistent one), sets `mtu` and brings
    /// it up; it disappears when the port is removed (unless persistent).
    Tap {
        /// `device`: interface name, 1 to 15 of `[A-Za-z0-9_.-]`. Default:
        /// the port name.
        device: String,
        /// `multi_queue`: open the device with `IFF_MULTI_QUEUE`, one queue
        /// (descriptor) per datapath thread (at most 8), each read by its
        /// thread. Default false: one queue.
        multi_queue: bool,
        /// `offloads`: ask the kernel for checksum and segmentation offloads
        /// on the device (`TUNSETOFFLOAD`). Default true; false: the kernel
        /// segments and checksums every frame before the device sees it.
        offloads: bool,
    },
    /// `type = "vxlan"`: a VXLAN tunnel (RFC 7348) over an IPv4 underlay.
    /// The port is a trunk of the VLANs listed in `vni` (no `vlan` key).
    Vxlan(VxlanConfig),
}

/// The keys of a `type = "vxlan"` port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    /// `local`: this host's underlay IPv4 address (required).
    pub local: std::net::Ipv4Addr,
    /// `udp_port`: default 4789.
    pub udp_port: u16,
    /// `underlay_mtu`: default 1500. A frame is sent only if it fits after
    /// the 50-byte overhead (guest MTU 1450 on a 1500 underlay).
    pub underlay_mtu: u16,
    /// `learn_vteps`: accept packets from VTEPs not listed. Default false.
    pub learn_vteps: bool,
    /// `senders`: `["192.0.2.0/24"]`, the subnets a VNI with a `group` takes
    /// unlisted senders from (address, prefix length). Default none: only
    /// the VNI's `remotes`.
    pub senders: Vec<(std::net::Ipv4Addr, u8)>,
    /// `local_hold_secs`: a station seen on a local port within this many
    /// seconds does not move to the tunnel (a packet claiming it is dropped
    /// and counted), unless that port's guest is stopped (migrated away:
    /// `vswitch::Fdb::set_peer_stopped`). 0..=3600, default 10.
    pub local_hold_secs: u32,
    /// `vtep_mac_limit`: MACs learned behind one remote VTEP. Default
    /// min(1024, remote_fdb_capacity).
    pub vtep_mac_limit: u32,
    /// `remote_fdb_capacity`: remote (VNI, MAC) entries in all. Default 65536.
    pub remote_fdb_capacity: u32,
    /// `remote_mac_aging_secs`: forget a remote MAC silent this long.
    /// 10..=1000000, default 300.
    pub remote_mac_aging_secs: u32,
    /// `vni`: `[{ vlan = 10, vni = 5010, remotes = ["192.0.2.2"], group = "239.1.1.1" }]`.
    pub vnis: Vec<VniConfig>,
}

/// One VLAN bridged over the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VniConfig {
    pub vlan: VlanId,
    /// 1..=16777215.
    pub vni: Vni,
    /// Remote VTEPs (head-end replication of broadcast and unknown unicast).
    pub remotes: Vec<std::net::Ipv4Addr>,
    /// Optional multicast group (broadcast and unknown unicast also go
    /// there; the tunnel joins it to receive).
    pub group: Option<std::net::Ipv4Addr>,
    /// `static`: `[{ mac = "02:..", vtep = "192.0.2.2" }]`, remote MACs that
    /// never age or move.
    pub statics: Vec<(MacAddr, std::net::Ipv4Addr)>,
}

/// `vlan`: how a port maps frames to VLANs. Written as an inline table:
/// `vlan = { mode = "access", tag = 10 }` or
/// `vlan = { mode = "trunk", allowed = [10, 20, "100-199"], native = 1 }`.
/// `mode` is required inside the table; the keys of the other mode are
/// rejected. VLAN ids are `1..=4094` everywhere.
// The trunk's 512-byte bitmap makes the variants very unequal in size; that
// is fine for a value held once per port, and keeping it inline (no Box)
// keeps `allowed.contains(vid)` a single indexed load on the datapath.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VlanConfig {
    /// `mode = "access"`: the guest sends and receives untagged frames, all
    /// in VLAN `tag` (default 1). Tagged frames from the guest are dropped.
    Access { tag: VlanId },
    /// `mode = "trunk"`: the guest sends and receives 802.1Q-tagged frames.
    Trunk {
        /// `allowed`: VLANs carried tagged; a list of ids and `"first-last"`
        /// ranges, e.g. `[10, 20, "100-199"]`. Default: all of `1..=4094`.
        /// The `native` VLAN, if any, is always added to this set (so
        /// `allowed.contains(native)` holds): it need not be listed.
        allowed: VlanSet,
        /// `native`: VLAN for untagged frames on the trunk (sent untagged to
        /// the guest). Optional; without it untagged frames are dropped.
        native: Option<VlanId>,
    },
}

impl Default for VlanConfig {
    fn default() -> Self {
        VlanConfig::Access {
            tag: VlanId::DEFAULT,
        }
    }
}

/// Parses and validates `text`.
///
/// `origin` is the file the text came from: it is used as the file name in
/// error messages, and its parent directory is the base for relative paths
/// (`run_dir`, `socket`). With a bare file name (`"fabric.toml"`) paths stay
/// relative; [`load`] makes them absolute.
pub fn parse(text: &str, origin: &Path) -> Result<FabricConfig, ConfigError> {
    let base = origin.parent().unwrap_or(Path::new(""));
    raw::parse(text, &origin.display().to_string(), base)
}

/// Reads, parses and validates the file at `path`. Relative paths in the
/// file are resolved against the file's (absolute) directory; messages name
/// `path` as given.
pub fn load(path: &Path) -> Result<FabricConfig, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let absolute = std::path::absolute(path).map_err(read_error)?;
    let base = absolute.parent().unwrap_or(Path::new("/"));
    raw::parse(&text, &path.display().to_string(), base)
}

#[cfg(test)]
mod tests;
