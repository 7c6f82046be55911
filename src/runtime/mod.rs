//! The running system: switches and their ports, pools and their exports,
//! and the configuration as it is now.
//!
//! Everything that changes at run time (ports, volumes, exports) lives in a
//! [`Runtime`] shared with the control server; each operation validates,
//! changes the running system, and updates the runtime copy of the
//! configuration that `config save` writes back. Operations fail with one
//! [`Error`] whose [`ErrorKind`] the control plane maps to its wire codes;
//! this module knows nothing of the control protocol.

mod convert;
mod error;
mod limits;
pub mod nbd;
mod ports;
mod report;
mod revert;
pub mod snapshot;
mod volumes;

pub use convert::{qemu_args, vlan_mode, vlan_summary};
pub use error::{Error, ErrorKind, Result};
pub(crate) use limits::blk_limits;
pub use ports::PortChange;
pub use report::report;
pub use snapshot::{snapshot_from, Snapshot};

use crate::sockets;
use crate::storage::{self, lock_pool, OpenPool, ServedExport};
use fabric_config::{ExportConfig, FabricConfig, PortConfig, PortKind, SwitchConfig};
use ports::PortHandle;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use vhost_backends::blk::{BlkExport, SharedPool};
use vhost_backends::datapath::Datapath;
use vhost_backends::forward::PortTable;
use vhost_backends::session::ServeOptions;
use vhost_backends::tunnel::Tunnel;
use vswitch::Switch;

/// One switch and where its ports publish their receive side.
pub struct SwitchEntry {
    pub switch: Arc<Switch>,
    table: Arc<PortTable>,
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
    /// Volumes open over NBD (`nbd.rs`).
    pub nbd: Vec<nbd::NbdUse>,
    /// The last token handed to an NBD hold.
    pub next_nbd_token: u64,
    /// The configuration as it is now (what `config save` writes).
    pub config: FabricConfig,
}

impl State {
    /// Whether a port, an export or the control socket uses `socket`.
    fn socket_in_use(&self, socket: &Path) -> bool {
        self.ports
            .iter()
            .any(|p| matches!(&p.config.kind, PortKind::VhostUser { socket: s, .. } if s == socket))
            || self.exports.iter().any(|e| {
                e.config.socket == socket || e.config.migration_socket.as_deref() == Some(socket)
            })
            || self.config.daemon.control_socket == socket
    }
}

/// Everything the daemon runs, shared with the control server.
///
/// Lock order: `state` before a pool's lock, never the other way round
/// (see [`storage`]); `Runtime::lock` enforces it.
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

impl Runtime {
    /// Creates every switch, port, pool and export of `config` and starts
    /// serving them; `path` is the file the config came from (`config save`
    /// writes there by default). On error, whatever was started is stopped
    /// again.
    pub fn start(config: &FabricConfig, path: Option<&Path>) -> io::Result<Runtime> {
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
        let opened: io::Result<()> = (|| {
            for (i, pc) in config.pools.iter().enumerate() {
                pools.push(storage::open_pool(pc, &format!("pool[{i}]"))?);
            }
            Ok(())
        })();
        let rt = Runtime {
            started: Instant::now(),
            config_path: path.map(Path::to_path_buf),
            datapath,
            switches,
            pools,
            serve,
            state: Mutex::new(State {
                ports: Vec::new(),
                exports: Vec::new(),
                nbd: Vec::new(),
                next_nbd_token: 0,
                config: empty,
            }),
        };
        let started = opened
            .and_then(|()| rt.start_ports(config))
            .and_then(|()| rt.start_volumes(config));
        if let Err(e) = started {
            rt.stop();
            return Err(e);
        }
        Ok(rt)
    }

    fn start_ports(&self, config: &FabricConfig) -> io::Result<()> {
        for sc in &config.switches {
            for pc in &sc.ports {
                self.add_port(&sc.name, pc.clone())?;
            }
        }
        Ok(())
    }

    fn start_volumes(&self, config: &FabricConfig) -> io::Result<()> {
        for pc in &config.pools {
            for v in &pc.volumes {
                self.declare_volume(&pc.name, v)?;
            }
        }
        Ok(())
    }

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

    fn switch_entry(&self, name: &str) -> Result<&SwitchEntry> {
        self.switches
            .iter()
            .find(|e| e.switch.name == name)
            .ok_or_else(|| Error::not_found(format!("no switch named {name:?}")))
    }

    pub fn pool(&self, name: &str) -> Option<&SharedPool> {
        self.pools.iter().find(|p| p.name == name).map(|p| &p.pool)
    }

    pub fn pool_entry(&self, name: &str) -> Result<&OpenPool> {
        self.pools
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::not_found(format!("no pool named {name:?}")))
    }

    pub fn pools(&self) -> &[OpenPool] {
        &self.pools
    }

    /// Changes pool `name`'s full policy and warning threshold (each left
    /// as it is if `None`), at once and in the runtime config.
    pub fn set_pool_policy(
        &self,
        name: &str,
        on_full: Option<fabric_config::OnFull>,
        warn_percent: Option<u8>,
    ) -> Result<()> {
        let pool = self.pool_entry(name)?;
        let mut st = self.lock();
        let cfg = st
            .config
            .pools
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::not_found(format!("no pool named {name:?}")))?;
        cfg.on_full = on_full.unwrap_or(cfg.on_full);
        cfg.warn_percent = warn_percent.unwrap_or(cfg.warn_percent);
        pool.set_space_policy(cfg.on_full, cfg.warn_percent);
        log::info!(
            "pool {name}: on_full = {:?}, warn_percent = {}",
            cfg.on_full.as_str(),
            cfg.warn_percent
        );
        Ok(())
    }

    pub fn switches(&self) -> &[SwitchEntry] {
        &self.switches
    }

    /// Runs `f` with the runtime state locked.
    pub fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.lock())
    }

    /// Ages every switch's FDB (the daemon's ager calls this once a second).
    pub fn age_fdbs(&self) {
        for e in &self.switches {
            let sw = &e.switch;
            let aged = sw.fdb().age(sw.now());
            if aged > 0 {
                log::debug!("switch {}: aged out {aged} FDB entries", sw.name);
            }
        }
    }

    /// Writes the running configuration to `path` (default: the file the
    /// daemon was started from), atomically (temp file + rename).
    pub fn save_config(&self, path: Option<&Path>) -> Result<PathBuf> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| self.config_path.clone())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    "the daemon was not started from a file: give a path",
                )
            })?;
        let text = fabric_config::to_toml(&self.lock().config);
        let tmp = path.with_extension("toml.tmp");
        let internal = |e: io::Error| Error::internal(format!("{}: {e}", path.display()));
        std::fs::write(&tmp, text).map_err(internal)?;
        std::fs::rename(&tmp, &path).map_err(internal)?;
        log::info!("configuration saved to {}", path.display());
        Ok(path)
    }

    /// The VXLAN ports running now: (switch, port, tunnel).
    pub fn tunnels(&self) -> Vec<(String, String, Arc<Tunnel>)> {
        self.with_state(tunnels_of)
    }

    /// The counters of everything running now, for the SIGUSR1 report,
    /// `/metrics` and `port.list`.
    pub fn snapshot(&self) -> Snapshot {
        // Tunnels and exports are collected under the state lock and sampled
        // after it: the pool figures are read without the state held.
        let (tunnels, exports) = self.with_state(|st| {
            let tunnels = tunnels_of(st);
            let exports: Vec<(String, Arc<BlkExport>)> = st
                .exports
                .iter()
                .map(|e| (e.pool.clone(), e.served.export.clone()))
                .collect();
            (tunnels, exports)
        });
        snapshot_from(
            self.switches.iter().map(|e| &*e.switch),
            tunnels
                .iter()
                .map(|(s, p, t)| (s.as_str(), p.as_str(), &**t)),
            &self.pools,
            exports.iter().map(|(p, e)| (p.as_str(), &**e)),
        )
    }

    /// The switches' configs as running now.
    pub fn switch_configs(&self) -> Vec<SwitchConfig> {
        self.lock().config.switches.clone()
    }

    /// The SIGUSR1 report ([`report`]) of a [`snapshot`](Self::snapshot).
    pub fn counters_report(&self) -> Vec<String> {
        report(&self.snapshot())
    }

    /// Stops every port and export, then makes the pools durable.
    pub fn stop(&self) {
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

/// The VXLAN ports of `st`: (switch, port, tunnel).
fn tunnels_of(st: &State) -> Vec<(String, String, Arc<Tunnel>)> {
    st.ports
        .iter()
        .filter_map(|p| match &p.handle {
            Some(PortHandle::Tunnel(t)) => {
                Some((p.switch.clone(), p.config.name.clone(), t.tunnel.clone()))
            }
            _ => None,
        })
        .collect()
}
