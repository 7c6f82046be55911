//! The running daemon: switches and their ports, pools and their exports,
//! the FDB aging timer and the control socket.
//!
//! Everything that changes at run time (ports, volumes, exports) lives in a
//! [`Runtime`] shared with the control server; each operation validates,
//! changes the running system, and updates the runtime copy of the
//! configuration that `config save` writes back.

use fabric_config::{
    ExportConfig, FabricConfig, PoolConfig, PortConfig, PortKind, SwitchConfig, VlanConfig,
    VolumeConfig, VolumeSource,
};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vhost_backends::blk::SharedPool;
use vhost_backends::datapath::Datapath;
use vhost_backends::forward::PortTable;
use vhost_backends::net::{NetPort, NetPortConfig, NetPortHandle};
use vhost_backends::session::ServeOptions;
use vswitch::{Switch, VlanMode};

use crate::control::protocol::ErrorCode;
use crate::control::server::ControlServer;
use crate::sockets;
use crate::storage::{self, lock_pool, OpenPool, ServedExport};

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

impl From<vblock::pool::PoolError> for OpError {
    fn from(e: vblock::pool::PoolError) -> OpError {
        use vblock::meta::MetaError;
        use vblock::pool::PoolError as P;
        let code = match &e {
            P::NoSuchVolume(_) => ErrorCode::NotFound,
            P::OutOfSpace { .. } => ErrorCode::NoSpace,
            P::Refused(MetaError::DuplicateName(_)) => ErrorCode::AlreadyExists,
            P::Refused(_) | P::ShrinkNeedsForce { .. } | P::ReadOnly(_) => {
                ErrorCode::InvalidArgument
            }
            _ => ErrorCode::Internal,
        };
        OpError::new(code, e.to_string())
    }
}

pub type OpResult<T> = Result<T, OpError>;

/// The engine's VLAN rule for a configured port.
pub fn vlan_mode(vlan: &VlanConfig) -> VlanMode {
    match vlan {
        VlanConfig::Access { tag } => VlanMode::Access(*tag),
        VlanConfig::Trunk { allowed, native } => VlanMode::Trunk {
            allowed: allowed.clone(),
            native: *native,
        },
    }
}

/// The QEMU arguments that attach a guest NIC to a port.
pub fn qemu_args(port: &PortConfig) -> String {
    let PortKind::VhostUser { socket, mac, .. } = &port.kind else {
        return String::new();
    };
    // QEMU's virtio-net takes MAC and MTU from its own -device options, not from
    // the backend's config space, so the port's settings are repeated there.
    let mac = mac.map(|m| format!(",mac={m}")).unwrap_or_default();
    let mtu = match port.mtu {
        1500 => String::new(),
        mtu => format!(",host_mtu={mtu}"),
    };
    format!(
        "-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
         -chardev socket,id=chr-{n},path={s} -netdev vhost-user,id=net-{n},chardev=chr-{n} \
         -device virtio-net-pci,netdev=net-{n}{mac}{mtu},mrg_rxbuf=on,event_idx=on",
        n = port.name,
        s = socket.display(),
    )
}

/// A short description of a port's VLAN rule.
pub fn vlan_summary(vlan: &VlanConfig) -> String {
    match vlan {
        VlanConfig::Access { tag } => format!("access {tag}"),
        VlanConfig::Trunk { allowed, native } => match native {
            Some(n) => format!("trunk {allowed} native {n}"),
            None => format!("trunk {allowed}"),
        },
    }
}

/// One switch and where its ports publish their receive side.
pub struct SwitchEntry {
    pub switch: Arc<Switch>,
    table: Arc<PortTable>,
}

/// What serves a port.
enum PortHandle {
    VhostUser(NetPortHandle),
    Tap(vhost_backends::tap::TapPortHandle),
    Tunnel(vhost_backends::tunnel::TunnelHandle),
}

impl PortHandle {
    fn stop(self) {
        match self {
            PortHandle::VhostUser(h) => h.stop(),
            PortHandle::Tap(h) => h.stop(),
            PortHandle::Tunnel(h) => h.stop(),
        }
    }
}

/// The engine's tunnel state from a `type = "vxlan"` port's keys.
fn tunnel_config(
    v: &fabric_config::VxlanConfig,
) -> Result<vhost_backends::tunnel::TunnelConfig, String> {
    use vswitch::vxlan::{Subnet, VniMap, VtepSet};
    let mut vnis = VniMap::new();
    let mut statics = Vec::new();
    let mut vteps = VtepSet::new(v.learn_vteps);
    let senders = v.senders.iter().map(|(a, len)| Subnet::new(*a, *len));
    vteps.set_senders(
        senders
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?,
    );
    for m in &v.vnis {
        // Config checked the ids and that each VLAN and VNI is mapped once.
        let vni = m.vni;
        vnis.insert(m.vlan, vni).map_err(|e| e.to_string())?;
        for r in &m.remotes {
            vteps.add_remote(vni, *r).map_err(|e| format!("{e}"))?;
        }
        vteps.set_group(vni, m.group).map_err(|e| format!("{e}"))?;
        for (mac, vtep) in &m.statics {
            statics.push((vni, *mac, *vtep));
        }
    }
    Ok(vhost_backends::tunnel::TunnelConfig {
        local: v.local,
        udp_port: v.udp_port,
        underlay_mtu: v.underlay_mtu,
        learn_vteps: v.learn_vteps,
        vnis,
        vteps,
        capacity: v.remote_fdb_capacity,
        vtep_mac_limit: v.vtep_mac_limit,
        aging_secs: v.remote_mac_aging_secs,
        local_hold_secs: v.local_hold_secs,
        statics,
    })
}

/// One served port.
pub struct PortEntry {
    pub switch: String,
    pub config: PortConfig,
    handle: Option<PortHandle>,
}

/// One served export.
pub struct ExportEntry {
    pub pool: String,
    pub volume: String,
    pub config: ExportConfig,
    pub served: ServedExport,
}

/// What changes at run time.
pub struct State {
    pub ports: Vec<PortEntry>,
    pub exports: Vec<ExportEntry>,
    /// The configuration as it is now (what `config save` writes).
    pub config: FabricConfig,
}

/// Everything the daemon runs, shared with the control server.
///
/// Lock order: `state` before a pool's lock, never the other way round
/// (see [`storage`]); [`Runtime::lock`] enforces it.
pub struct Runtime {
    pub started: Instant,
    pub config_path: Option<PathBuf>,
    datapath: Arc<Datapath>,
    switches: Vec<SwitchEntry>,
    pools: Vec<OpenPool>,
    /// How the vhost-user sockets are served (`[daemon] socket_*`).
    serve: ServeOptions,
    state: Mutex<State>,
}

pub struct Daemon {
    rt: Arc<Runtime>,
    stop: Arc<AtomicBool>,
    ager: Option<JoinHandle<()>>,
    control: Option<ControlServer>,
    metrics: Option<crate::metrics::MetricsServer>,
    stopped: bool,
}

fn io_err(e: OpError) -> io::Error {
    io::Error::other(e.message)
}

impl Daemon {
    /// Creates every switch, port, pool and export and starts serving, with
    /// the control socket. On error, whatever was started is stopped again.
    pub fn start(config: &FabricConfig) -> io::Result<Daemon> {
        Self::start_from(config, None)
    }

    /// [`start`](Self::start), remembering the file the config came from
    /// (`config save` writes there by default).
    pub fn start_from(config: &FabricConfig, path: Option<&Path>) -> io::Result<Daemon> {
        let serve = sockets::serve_options(&config.daemon)?;
        std::fs::create_dir_all(&config.daemon.run_dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create {}: {e}", config.daemon.run_dir.display()),
            )
        })?;
        let datapath = Arc::new(Datapath::new(config.daemon.datapath_threads as usize)?);
        let switches = config
            .switches
            .iter()
            .map(|sc| SwitchEntry {
                switch: Arc::new(Switch::new(
                    &sc.name,
                    sc.fdb_capacity,
                    sc.port_mac_limit,
                    sc.mac_aging_secs,
                )),
                table: Arc::new(PortTable::default()),
            })
            .collect();
        // The runtime config starts without ports, volumes or exports: each
        // is added back as it starts, so it always says what runs.
        let mut empty = config.clone();
        for sw in &mut empty.switches {
            sw.ports.clear();
        }
        for p in &mut empty.pools {
            p.volumes.clear();
        }
        let mut pools = Vec::new();
        let mut rt = Runtime {
            started: Instant::now(),
            config_path: path.map(Path::to_path_buf),
            datapath,
            switches,
            pools: Vec::new(),
            serve,
            state: Mutex::new(State {
                ports: Vec::new(),
                exports: Vec::new(),
                config: empty,
            }),
        };
        let opened: io::Result<()> = (|| {
            for (i, pc) in config.pools.iter().enumerate() {
                pools.push(storage::open_pool(pc, &format!("pool[{i}]"))?);
            }
            Ok(())
        })();
        rt.pools = pools;
        let mut daemon = Daemon {
            rt: Arc::new(rt),
            stop: Arc::new(AtomicBool::new(false)),
            ager: None,
            control: None,
            metrics: None,
            stopped: false,
        };
        let started = opened
            .and_then(|()| daemon.start_ports(config))
            .and_then(|()| daemon.start_volumes(config))
            .and_then(|()| {
                daemon.control = Some(ControlServer::spawn(
                    &config.daemon.control_socket,
                    daemon.rt.clone(),
                )?);
                if let Some(addr) = config.daemon.metrics_listen {
                    let rt = daemon.rt.clone();
                    let srv = crate::metrics::serve(addr, move || rt.metrics_snapshot()).map_err(
                        |e| io::Error::new(e.kind(), format!("daemon.metrics_listen {addr}: {e}")),
                    )?;
                    log::info!("metrics on http://{}/metrics", srv.local_addr());
                    daemon.metrics = Some(srv);
                }
                Ok(())
            });
        if let Err(e) = started {
            daemon.stop_all();
            return Err(e);
        }
        daemon.start_ager();
        Ok(daemon)
    }

    fn start_ports(&mut self, config: &FabricConfig) -> io::Result<()> {
        for sc in &config.switches {
            for pc in &sc.ports {
                self.rt.add_port(&sc.name, pc.clone()).map_err(io_err)?;
            }
        }
        Ok(())
    }

    fn start_volumes(&mut self, config: &FabricConfig) -> io::Result<()> {
        for pc in &config.pools {
            for v in &pc.volumes {
                self.rt.declare_volume(&pc.name, v).map_err(io_err)?;
            }
        }
        Ok(())
    }

    /// Ages every switch's FDB once a second.
    fn start_ager(&mut self) {
        let rt = self.rt.clone();
        let stop = self.stop.clone();
        self.ager = std::thread::Builder::new()
            .name("fdb-ager".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(Duration::from_secs(1));
                    for e in &rt.switches {
                        let sw = &e.switch;
                        let aged = sw.fdb().age(sw.now());
                        if aged > 0 {
                            log::debug!("switch {}: aged out {aged} FDB entries", sw.name);
                        }
                    }
                }
            })
            .ok();
    }

    /// Where the metrics endpoint listens, if it is on.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr())
    }

    /// The shared runtime (what the control socket changes).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.rt
    }

    pub fn switch(&self, name: &str) -> Option<&Arc<Switch>> {
        self.rt.switch(name)
    }

    pub fn switches(&self) -> Vec<Arc<Switch>> {
        self.rt.switches.iter().map(|e| e.switch.clone()).collect()
    }

    /// The open pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&SharedPool> {
        self.rt.pool(name)
    }

    /// One line per port, FDB, export, pool and volume with its counters:
    /// `counters switch=br0 port=vm1 link=up rx_packets=.. ... drop_runt=..`.
    pub fn counters_report(&self) -> Vec<String> {
        self.rt.counters_report()
    }

    /// Disconnects every guest, removes the sockets and stops all threads.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.stop.store(true, Ordering::Release);
        if let Some(c) = self.control.take() {
            c.stop();
        }
        if let Some(m) = self.metrics.take() {
            m.stop();
        }
        self.rt.stop_all();
        if let Some(ager) = self.ager.take() {
            ager.thread().unpark();
            let _ = ager.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl Runtime {
    /// The state lock; see the lock order on [`Runtime`].
    fn lock(&self) -> MutexGuard<'_, State> {
        // Test builds only: lets a race test see this thread wait here.
        #[cfg(test)]
        if matches!(
            self.state.try_lock(),
            Err(std::sync::TryLockError::WouldBlock)
        ) {
            tests::state_busy();
        }
        if storage::holds_pool() {
            // A bug in the daemon, not something a client can cause: make it
            // loud in tests, and visible in the log of a release build.
            log::error!("lock order broken: state lock taken while holding a pool lock");
            debug_assert!(false, "state lock taken while holding a pool lock");
        }
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn switch(&self, name: &str) -> Option<&Arc<Switch>> {
        self.switches
            .iter()
            .find(|e| e.switch.name == name)
            .map(|e| &e.switch)
    }

    fn switch_entry(&self, name: &str) -> OpResult<&SwitchEntry> {
        self.switches
            .iter()
            .find(|e| e.switch.name == name)
            .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no switch named {name:?}")))
    }

    pub fn pool(&self, name: &str) -> Option<&SharedPool> {
        self.pools.iter().find(|p| p.name == name).map(|p| &p.pool)
    }

    pub fn pool_entry(&self, name: &str) -> OpResult<&OpenPool> {
        self.pools
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no pool named {name:?}")))
    }

    pub fn pools(&self) -> &[OpenPool] {
        &self.pools
    }

    pub fn switches(&self) -> &[SwitchEntry] {
        &self.switches
    }

    /// Runs `f` with the runtime state locked.
    pub fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.lock())
    }

    fn socket_in_use(state: &State, socket: &Path) -> bool {
        state
            .ports
            .iter()
            .any(|p| matches!(&p.config.kind, PortKind::VhostUser { socket: s, .. } if s == socket))
            || state.exports.iter().any(|e| e.config.socket == socket)
            || state.config.daemon.control_socket == socket
    }

    /// Starts serving a port on `switch`.
    pub fn add_port(&self, switch: &str, pc: PortConfig) -> OpResult<()> {
        let entry = self.switch_entry(switch)?;
        let mut st = self.lock();
        if st.ports.iter().any(|p| p.config.name == pc.name) {
            return Err(OpError::new(
                ErrorCode::AlreadyExists,
                format!("a port named {:?} exists", pc.name),
            ));
        }
        let internal = |e: io::Error| OpError::new(ErrorCode::Internal, e.to_string());
        let sw = &entry.switch;
        let handle = match &pc.kind {
            PortKind::VhostUser { socket, .. } => {
                if Self::socket_in_use(&st, socket) {
                    return Err(OpError::new(
                        ErrorCode::Conflict,
                        format!("socket {} is already used", socket.display()),
                    ));
                }
                sockets::prepare(socket, &format!("port {}: socket", pc.name))
                    .map_err(|e| OpError::new(ErrorCode::Conflict, e.to_string()))?;
                PortHandle::VhostUser(self.start_vhost_user_port(entry, &pc)?)
            }
            PortKind::Vxlan(v) => {
                let config =
                    tunnel_config(v).map_err(|e| OpError::new(ErrorCode::InvalidArgument, e))?;
                let id = sw
                    .add_port(&pc.name, vlan_mode(&pc.vlan), pc.mtu)
                    .map_err(|e| OpError::new(ErrorCode::Conflict, e.to_string()))?;
                match vhost_backends::tunnel::spawn(
                    config,
                    id,
                    sw.clone(),
                    entry.table.clone(),
                    self.datapath.clone(),
                ) {
                    Ok(h) => {
                        log::info!(
                            "switch {switch} port {} is a VXLAN tunnel on {}:{} ({})",
                            pc.name,
                            v.local,
                            v.udp_port,
                            vlan_summary(&pc.vlan)
                        );
                        PortHandle::Tunnel(h)
                    }
                    Err(e) => {
                        let _ = sw.remove_port(&pc.name);
                        return Err(internal(e));
                    }
                }
            }
            PortKind::Tap { device } => {
                let in_use = st
                    .ports
                    .iter()
                    .any(|p| matches!(&p.config.kind, PortKind::Tap { device: d } if d == device));
                if in_use {
                    return Err(OpError::new(
                        ErrorCode::Conflict,
                        format!("TAP device {device} is already a port"),
                    ));
                }
                let id = sw
                    .add_port(&pc.name, vlan_mode(&pc.vlan), pc.mtu)
                    .map_err(|e| OpError::new(ErrorCode::Conflict, e.to_string()))?;
                match vhost_backends::tap::spawn(
                    device,
                    pc.mtu,
                    id,
                    sw.clone(),
                    entry.table.clone(),
                    self.datapath.clone(),
                ) {
                    Ok(h) => {
                        log::info!(
                            "switch {switch} port {} ({}) on TAP device {device}",
                            pc.name,
                            vlan_summary(&pc.vlan)
                        );
                        PortHandle::Tap(h)
                    }
                    Err(e) => {
                        let _ = sw.remove_port(&pc.name);
                        return Err(internal(e));
                    }
                }
            }
        };
        if let Some(sc) = st.config.switches.iter_mut().find(|s| s.name == switch) {
            sc.ports.push(pc.clone());
        }
        st.ports.push(PortEntry {
            switch: switch.to_owned(),
            config: pc,
            handle: Some(handle),
        });
        Ok(())
    }

    fn start_vhost_user_port(
        &self,
        entry: &SwitchEntry,
        pc: &PortConfig,
    ) -> OpResult<NetPortHandle> {
        let internal = |e: io::Error| OpError::new(ErrorCode::Internal, e.to_string());
        let PortKind::VhostUser {
            socket,
            queue_size,
            mac,
        } = &pc.kind
        else {
            return Err(OpError::new(ErrorCode::Internal, "not a vhost-user port"));
        };
        let sw = &entry.switch;
        let id = sw
            .add_port(&pc.name, vlan_mode(&pc.vlan), pc.mtu)
            .map_err(|e| OpError::new(ErrorCode::Conflict, e.to_string()))?;
        let port = Arc::new(NetPort {
            name: pc.name.clone(),
            id,
            switch: sw.clone(),
            table: entry.table.clone(),
            datapath: self.datapath.clone(),
            config: NetPortConfig {
                socket: socket.clone(),
                mac: mac.map(|m| m.0),
                mtu: pc.mtu,
                queue_size: *queue_size,
            },
        });
        let handle = match port.spawn(&self.serve) {
            Ok(h) => h,
            Err(e) => {
                let _ = sw.remove_port(&pc.name);
                return Err(internal(e));
            }
        };
        log::info!(
            "switch {} port {} ({}) listening on {}; attach a QEMU guest with: {}",
            sw.name,
            pc.name,
            vlan_summary(&pc.vlan),
            socket.display(),
            qemu_args(pc)
        );
        Ok(handle)
    }

    /// Stops serving a port: its guest is disconnected, its stations forgotten.
    pub fn remove_port(&self, name: &str) -> OpResult<()> {
        let mut st = self.lock();
        let i = st
            .ports
            .iter()
            .position(|p| p.config.name == name)
            .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no port named {name:?}")))?;
        let mut entry = st.ports.remove(i);
        if let Some(h) = entry.handle.take() {
            h.stop();
        }
        if let Ok(e) = self.switch_entry(&entry.switch) {
            let _ = e.switch.remove_port(name);
        }
        for sc in &mut st.config.switches {
            sc.ports.retain(|p| p.name != name);
        }
        log::info!("port {name} removed");
        Ok(())
    }

    /// Makes a configured volume exist and serves its export (start-up).
    fn declare_volume(&self, pool_name: &str, v: &VolumeConfig) -> OpResult<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        storage::ensure_volume(&pool, pool_name, v)
            .map_err(|e| OpError::new(ErrorCode::Internal, e.to_string()))?;
        let mut declared = v.clone();
        declared.export = None;
        self.remember_volume(pool_name, declared);
        if let Some(e) = &v.export {
            self.start_export(&mut self.lock(), pool_name, &v.name, e.clone())?;
        }
        Ok(())
    }

    fn remember_volume(&self, pool: &str, v: VolumeConfig) {
        Self::remember(&mut self.lock(), pool, v);
    }

    fn remember(st: &mut State, pool: &str, v: VolumeConfig) {
        if let Some(p) = Self::pool_config(st, pool) {
            p.volumes.retain(|x| x.name != v.name);
            p.volumes.push(v);
        }
    }

    fn pool_config<'a>(st: &'a mut State, pool: &str) -> Option<&'a mut PoolConfig> {
        st.config.pools.iter_mut().find(|p| p.name == pool)
    }

    /// The export of `volume`, if any.
    pub fn export_of(&self, pool: &str, volume: &str) -> Option<PathBuf> {
        Self::export_in(&self.lock(), pool, volume)
    }

    fn export_in(st: &State, pool: &str, volume: &str) -> Option<PathBuf> {
        st.exports
            .iter()
            .find(|e| e.pool == pool && e.volume == volume)
            .map(|e| e.config.socket.clone())
    }

    /// Serves `volume`'s export. `st` is the caller's, held from its checks
    /// to the new entry, so a volume operation cannot come in between.
    fn start_export(
        &self,
        st: &mut State,
        pool_name: &str,
        volume: &str,
        e: ExportConfig,
    ) -> OpResult<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        if st
            .exports
            .iter()
            .any(|x| x.pool == pool_name && x.volume == volume)
        {
            return Err(OpError::new(
                ErrorCode::AlreadyExists,
                format!("volume {volume:?} is already exported"),
            ));
        }
        if Self::socket_in_use(st, &e.socket) {
            return Err(OpError::new(
                ErrorCode::Conflict,
                format!("socket {} is already used", e.socket.display()),
            ));
        }
        let served = storage::serve_export(&pool, pool_name, volume, &e, &self.serve)
            .map_err(|x| OpError::new(ErrorCode::Conflict, x.to_string()))?;
        if let Some(p) = Self::pool_config(st, pool_name) {
            if let Some(v) = p.volumes.iter_mut().find(|v| v.name == volume) {
                v.export = Some(e.clone());
            }
        }
        st.exports.push(ExportEntry {
            pool: pool_name.to_owned(),
            volume: volume.to_owned(),
            config: e,
            served,
        });
        Ok(())
    }

    /// Exports a volume at run time.
    pub fn add_export(&self, pool_name: &str, volume: &str, e: ExportConfig) -> OpResult<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        // One state lock from the lookup to the served export: a delete,
        // rename or resize (which check "not exported" under it) waits.
        let mut st = self.lock();
        let info = lock_pool(&pool).volume(volume)?;
        let exists_in_config = st
            .config
            .pools
            .iter()
            .any(|pc| pc.name == pool_name && pc.volumes.iter().any(|v| v.name == volume));
        if !exists_in_config {
            // A volume made outside this daemon (vblock tool): declare it by size.
            let size = info.size;
            Self::remember(
                &mut st,
                pool_name,
                VolumeConfig {
                    name: volume.to_owned(),
                    key: String::new(),
                    source: VolumeSource::New {
                        size,
                        block_size: 512,
                    },
                    export: None,
                },
            );
        }
        self.start_export(&mut st, pool_name, volume, e)
    }

    /// Stops serving a volume's export (its client is disconnected).
    pub fn remove_export(&self, pool_name: &str, volume: &str) -> OpResult<()> {
        let mut st = self.lock();
        let i = st
            .exports
            .iter()
            .position(|e| e.pool == pool_name && e.volume == volume)
            .ok_or_else(|| {
                OpError::new(
                    ErrorCode::NotFound,
                    format!("volume {volume:?} is not exported"),
                )
            })?;
        let entry = st.exports.remove(i);
        if let Some(p) = Self::pool_config(&mut st, pool_name) {
            if let Some(v) = p.volumes.iter_mut().find(|v| v.name == volume) {
                v.export = None;
            }
        }
        #[cfg(test)]
        tests::between();
        // Stopped with the state held: until its frontend is gone the volume
        // is in use, so a delete, rename or resize waits (the session takes
        // only the pool's lock, so this cannot deadlock).
        entry.served.handle.stop();
        drop(st);
        log::info!("pool {pool_name}: volume {volume} no longer exported");
        Ok(())
    }

    /// Refuses a change to a volume that is exported. The caller keeps `st`
    /// until the change is made, so an `export.add` cannot slip in between.
    fn not_exported(st: &State, pool: &str, volume: &str, what: &str) -> OpResult<()> {
        if let Some(socket) = Self::export_in(st, pool, volume) {
            return Err(OpError::new(
                ErrorCode::Conflict,
                format!(
                    "volume {volume:?} is exported on {}; unexport it before you {what} it",
                    socket.display()
                ),
            ));
        }
        Ok(())
    }

    pub fn create_volume(
        &self,
        pool_name: &str,
        name: &str,
        size: u64,
        block_size: u32,
    ) -> OpResult<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        let overcommit = self
            .lock()
            .config
            .pools
            .iter()
            .any(|p| p.name == pool_name && p.overcommit);
        let mut p = lock_pool(&pool);
        let space = p.space();
        if !overcommit && space.provisioned.saturating_add(size) > space.capacity {
            return Err(OpError::new(
                ErrorCode::NoSpace,
                format!(
                    "pool {pool_name} holds {} bytes and {} are provisioned; {size} more needs `overcommit = true`",
                    space.capacity, space.provisioned
                ),
            ));
        }
        p.create_volume(name, size, block_size)?;
        drop(p);
        self.remember_volume(
            pool_name,
            VolumeConfig {
                name: name.to_owned(),
                key: String::new(),
                source: VolumeSource::New { size, block_size },
                export: None,
            },
        );
        Ok(())
    }

    /// Snapshot or clone: a consistent copy of what was written before (the
    /// pool flushes completed writes before it records the copy).
    pub fn copy_volume(
        &self,
        pool_name: &str,
        source: &str,
        name: &str,
        snapshot: bool,
    ) -> OpResult<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        {
            let mut p = lock_pool(&pool);
            if snapshot {
                p.snapshot(source, name)?;
            } else {
                p.clone_volume(source, name)?;
            }
        }
        let src = source.to_owned();
        self.remember_volume(
            pool_name,
            VolumeConfig {
                name: name.to_owned(),
                key: String::new(),
                source: if snapshot {
                    VolumeSource::SnapshotOf(src)
                } else {
                    VolumeSource::CloneOf(src)
                },
                export: None,
            },
        );
        Ok(())
    }

    pub fn resize_volume(
        &self,
        pool_name: &str,
        name: &str,
        size: u64,
        force: bool,
    ) -> OpResult<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        let mut st = self.lock();
        // The guest would not learn the new size (no config-change event yet).
        Self::not_exported(&st, pool_name, name, "resize")?;
        #[cfg(test)]
        tests::between();
        lock_pool(&pool).resize(name, size, force)?;
        if let Some(p) = Self::pool_config(&mut st, pool_name) {
            if let Some(v) = p.volumes.iter_mut().find(|v| v.name == name) {
                if let VolumeSource::New { size: s, .. } = &mut v.source {
                    *s = size;
                }
            }
        }
        Ok(())
    }

    pub fn rename_volume(&self, pool_name: &str, name: &str, new_name: &str) -> OpResult<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        let mut st = self.lock();
        Self::not_exported(&st, pool_name, name, "rename")?;
        #[cfg(test)]
        tests::between();
        lock_pool(&pool).rename(name, new_name)?;
        if let Some(p) = Self::pool_config(&mut st, pool_name) {
            for v in &mut p.volumes {
                if v.name == name {
                    v.name = new_name.to_owned();
                }
                match &mut v.source {
                    VolumeSource::CloneOf(s) | VolumeSource::SnapshotOf(s) if s == name => {
                        *s = new_name.to_owned();
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    pub fn delete_volume(&self, pool_name: &str, name: &str) -> OpResult<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        let mut st = self.lock();
        Self::not_exported(&st, pool_name, name, "delete")?;
        #[cfg(test)]
        tests::between();
        lock_pool(&pool).delete_volume(name)?;
        if let Some(p) = Self::pool_config(&mut st, pool_name) {
            p.volumes.retain(|v| v.name != name);
        }
        Ok(())
    }

    /// Writes the running configuration to `path` (default: the file the
    /// daemon was started from), atomically (temp file + rename).
    pub fn save_config(&self, path: Option<&Path>) -> OpResult<PathBuf> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| self.config_path.clone())
            .ok_or_else(|| {
                OpError::new(
                    ErrorCode::InvalidArgument,
                    "the daemon was not started from a file: give a path",
                )
            })?;
        let text = fabric_config::to_toml(&self.lock().config);
        let tmp = path.with_extension("toml.tmp");
        let internal =
            |e: io::Error| OpError::new(ErrorCode::Internal, format!("{}: {e}", path.display()));
        std::fs::write(&tmp, text).map_err(internal)?;
        std::fs::rename(&tmp, &path).map_err(internal)?;
        log::info!("configuration saved to {}", path.display());
        Ok(path)
    }

    /// What the metrics endpoint shows.
    pub fn metrics_snapshot(&self) -> crate::metrics::MetricsSnapshot {
        // Exports first: the snapshot takes each pool's lock, never with the
        // state lock held.
        let exports: Vec<(String, Arc<vhost_backends::blk::BlkExport>)> = self.with_state(|st| {
            st.exports
                .iter()
                .map(|e| (e.pool.clone(), e.served.export.clone()))
                .collect()
        });
        crate::metrics::snapshot_from(
            self.switches.iter().map(|e| &*e.switch),
            &self.pools,
            exports.iter().map(|(p, e)| (p.as_str(), &**e)),
        )
    }

    /// The switches' configs as running now.
    pub fn switch_configs(&self) -> Vec<SwitchConfig> {
        self.lock().config.switches.clone()
    }

    /// See [`Daemon::counters_report`].
    pub fn counters_report(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for e in &self.switches {
            let sw = &e.switch;
            for port in sw.topology().ports() {
                let c = port.state.counters.snapshot();
                let mut line = format!(
                    "counters switch={} port={} link={} rx_packets={} rx_bytes={} tx_packets={} tx_bytes={}",
                    sw.name,
                    port.name,
                    if port.state.is_up() { "up" } else { "down" },
                    c.rx_packets,
                    c.rx_bytes,
                    c.tx_packets,
                    c.tx_bytes
                );
                for reason in vswitch::DropReason::ALL {
                    line.push_str(&format!(" drop_{}={}", reason.name(), c.dropped(reason)));
                }
                line.push_str(&format!(" broken_queues={}", c.broken_queues));
                lines.push(line);
            }
            let f = sw.fdb().stats();
            lines.push(format!(
                "fdb switch={} entries={} learned={} moved={} aged={} refused_full={} refused_port_limit={} refused_move={}",
                sw.name, f.entries, f.learned, f.moved, f.aged, f.refused_full, f.refused_port_limit, f.refused_move
            ));
        }
        let st = self.lock();
        for p in &st.ports {
            if let Some(PortHandle::Tunnel(t)) = &p.handle {
                let c = t.tunnel.counters.snapshot();
                let f = t.tunnel.remote_fdb.stats();
                let mut line = format!(
                    "tunnel switch={} port={} rx_packets={} rx_bytes={} tx_packets={} tx_bytes={} remote_entries={} remote_learned={} remote_moved={} remote_refused_full={} remote_refused_vtep_limit={}",
                    p.switch, p.config.name, c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes,
                    f.entries, f.learned, f.moved, f.refused_full, f.refused_vtep_limit
                );
                for r in vswitch::vxlan::TunnelDrop::ALL {
                    line.push_str(&format!(" drop_{}={}", r.name(), c.dropped(r)));
                }
                lines.push(line);
            }
        }
        for e in &st.exports {
            lines.push(format!(
                "counters export={} {}",
                e.volume,
                e.served.export.counters.summary()
            ));
        }
        drop(st);
        // The pools' maintained figures: a report never waits for a pool lock.
        for p in &self.pools {
            let s = p.gauges.space();
            lines.push(format!(
                "pool {} clusters={} used={} free={} releasing={} provisioned_bytes={} capacity_bytes={}",
                p.name, s.clusters, s.used_clusters, s.free_clusters, s.releasing_clusters, s.provisioned, s.capacity
            ));
            for v in p.gauges.volumes() {
                lines.push(format!(
                    "volume pool={} name={} kind={:?} size={} allocated={} exclusive={}",
                    p.name, v.name, v.kind, v.size, v.allocated, v.exclusive
                ));
            }
        }
        lines
    }

    fn stop_all(&self) {
        let (ports, exports) = {
            let mut st = self.lock();
            (
                std::mem::take(&mut st.ports),
                std::mem::take(&mut st.exports),
            )
        };
        for mut p in ports {
            if let Some(h) = p.handle.take() {
                h.stop();
            }
        }
        for e in exports {
            e.served.handle.stop();
        }
        self.datapath.shutdown();
        // Everything acknowledged is made durable, and the journal folded
        // into a checkpoint so the next start replays nothing.
        for p in &self.pools {
            let mut pool = lock_pool(&p.pool);
            if let Err(e) = pool.flush().and_then(|()| pool.checkpoint()) {
                log::warn!("pool {}: closing: {e}", p.name);
            }
        }
    }
}

#[cfg(test)]
mod tests;
