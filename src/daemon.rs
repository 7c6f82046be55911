//! The running daemon: switches, their ports, and the FDB aging timer.

use fabric_config::{FabricConfig, PortConfig, PortKind, VlanConfig};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vhost_backends::datapath::Datapath;
use vhost_backends::net::{NetPort, NetPortConfig, NetPortHandle};
use vhost_backends::port_table::PortTable;
use vhost_backends::session::check_socket_free;

use crate::storage::{self, OpenPool, ServedExport};
use vswitch::{Switch, VlanMode};

pub struct Daemon {
    switches: Vec<Arc<Switch>>,
    ports: Vec<NetPortHandle>,
    pools: Vec<OpenPool>,
    exports: Vec<ServedExport>,
    datapath: Arc<Datapath>,
    stop: Arc<AtomicBool>,
    ager: Option<JoinHandle<()>>,
}

/// The engine's VLAN rule for a configured port.
pub fn vlan_mode(vlan: &VlanConfig) -> VlanMode {
    match vlan {
        VlanConfig::Access { tag } => VlanMode::Access(*tag),
        VlanConfig::Trunk { allowed, native } => VlanMode::Trunk {
            allowed: allowed.iter().collect(),
            native: *native,
        },
    }
}

/// The QEMU arguments that attach a guest NIC to a port.
pub fn qemu_args(port: &PortConfig) -> String {
    let PortKind::VhostUser { socket, mac, .. } = &port.kind;
    // QEMU's virtio-net takes MAC and MTU from its own -device options, not from
    // the backend's config space, so the port's settings are repeated there.
    let mac = mac
        .map(|m| format!(",mac={}", vswitch::MacAddr(m)))
        .unwrap_or_default();
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

impl Daemon {
    /// Creates every switch and port and starts serving. On error, whatever was
    /// started is stopped again.
    pub fn start(config: &FabricConfig) -> io::Result<Daemon> {
        std::fs::create_dir_all(&config.daemon.run_dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create {}: {e}", config.daemon.run_dir.display()),
            )
        })?;
        let mut daemon = Daemon {
            switches: Vec::new(),
            ports: Vec::new(),
            pools: Vec::new(),
            exports: Vec::new(),
            datapath: Arc::new(Datapath::new(config.daemon.datapath_threads as usize)?),
            stop: Arc::new(AtomicBool::new(false)),
            ager: None,
        };
        let started = daemon
            .start_switches(config)
            .and_then(|()| daemon.start_storage(config));
        if let Err(e) = started {
            daemon.shutdown();
            return Err(e);
        }
        daemon.start_ager();
        Ok(daemon)
    }

    fn start_switches(&mut self, config: &FabricConfig) -> io::Result<()> {
        for sc in &config.switches {
            let switch = Arc::new(Switch::new(
                &sc.name,
                sc.fdb_capacity,
                sc.port_mac_limit,
                sc.mac_aging_secs,
            ));
            let table = Arc::new(PortTable::default());
            self.switches.push(switch.clone());
            for pc in &sc.ports {
                let PortKind::VhostUser {
                    socket,
                    queue_size,
                    mac,
                } = &pc.kind;
                if let Some(dir) = socket.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                check_socket_free(socket)?;
                let id = switch
                    .add_port(&pc.name, vlan_mode(&pc.vlan), pc.mtu)
                    .map_err(io::Error::other)?;
                let port = Arc::new(NetPort {
                    name: pc.name.clone(),
                    id,
                    switch: switch.clone(),
                    table: table.clone(),
                    datapath: self.datapath.clone(),
                    config: NetPortConfig {
                        socket: socket.clone(),
                        mac: *mac,
                        mtu: pc.mtu,
                        queue_size: *queue_size,
                    },
                });
                self.ports.push(port.spawn()?);
                log::info!(
                    "switch {} port {} ({}) listening on {}; attach a QEMU guest with: {}",
                    sc.name,
                    pc.name,
                    pc.vlan_summary(),
                    socket.display(),
                    qemu_args(pc)
                );
            }
        }
        Ok(())
    }

    fn start_storage(&mut self, config: &FabricConfig) -> io::Result<()> {
        for (i, pc) in config.pools.iter().enumerate() {
            let open = storage::open_pool(pc, &format!("pool[{i}]"))?;
            let pool = open.pool.clone();
            self.pools.push(open);
            for v in &pc.volumes {
                let id = storage::ensure_volume(&pool, &pc.name, v)?;
                if let Some(e) = &v.export {
                    self.exports
                        .push(storage::serve_export(&pool, &pc.name, v, e, id)?);
                }
            }
        }
        Ok(())
    }

    /// The open pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&vhost_backends::blk::SharedPool> {
        self.pools.iter().find(|p| p.name == name).map(|p| &p.pool)
    }

    /// Ages every switch's FDB once a second.
    fn start_ager(&mut self) {
        let switches = self.switches.clone();
        let stop = self.stop.clone();
        self.ager = std::thread::Builder::new()
            .name("fdb-ager".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(Duration::from_secs(1));
                    for sw in &switches {
                        let aged = sw.fdb().age(sw.now());
                        if aged > 0 {
                            log::debug!("switch {}: aged out {aged} FDB entries", sw.name);
                        }
                    }
                }
            })
            .ok();
    }

    pub fn switch(&self, name: &str) -> Option<&Arc<Switch>> {
        self.switches.iter().find(|s| s.name == name)
    }

    pub fn switches(&self) -> &[Arc<Switch>] {
        &self.switches
    }

    /// One line per port with its counters, for logs until the control socket
    /// exists: `counters switch=br0 port=vm1 link=up rx_packets=.. ... drop_runt=..`.
    pub fn counters_report(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for sw in &self.switches {
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
                lines.push(line);
            }
            let f = sw.fdb().stats();
            lines.push(format!(
                "fdb switch={} entries={} learned={} moved={} aged={} refused_full={} refused_port_limit={}",
                sw.name, f.entries, f.learned, f.moved, f.aged, f.refused_full, f.refused_port_limit
            ));
        }
        for e in &self.exports {
            lines.push(format!(
                "counters export={} {}",
                e.export.config.name,
                e.export.counters.summary()
            ));
        }
        for p in &self.pools {
            let pool = p.pool.lock().unwrap_or_else(|e| e.into_inner());
            let s = pool.space();
            lines.push(format!(
                "pool {} clusters={} used={} free={} releasing={} provisioned_bytes={} capacity_bytes={}",
                p.name, s.clusters, s.used_clusters, s.free_clusters, s.releasing_clusters, s.provisioned, s.capacity
            ));
            for v in pool.volumes() {
                lines.push(format!(
                    "volume pool={} name={} kind={:?} size={} allocated={} exclusive={}",
                    p.name, v.name, v.kind, v.size, v.allocated, v.exclusive
                ));
            }
        }
        lines
    }

    /// Disconnects every guest, removes the sockets and stops all threads.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.stop.store(true, Ordering::Release);
        for port in self.ports.drain(..) {
            port.stop();
        }
        for e in self.exports.drain(..) {
            e.handle.stop();
        }
        // Everything acknowledged is made durable, and the journal folded
        // into a checkpoint so the next start replays nothing.
        for p in self.pools.drain(..) {
            let mut pool = p.pool.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = pool.flush().and_then(|()| pool.checkpoint()) {
                log::warn!("pool {}: closing: {e}", p.name);
            }
        }
        self.datapath.shutdown();
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

/// A short description of a port's VLAN rule for logs.
trait VlanSummary {
    fn vlan_summary(&self) -> String;
}

impl VlanSummary for PortConfig {
    fn vlan_summary(&self) -> String {
        match &self.vlan {
            VlanConfig::Access { tag } => format!("access VLAN {tag}"),
            VlanConfig::Trunk { allowed, native } => match native {
                Some(n) => format!("trunk {allowed:?} native {n}"),
                None => format!("trunk {allowed:?}"),
            },
        }
    }
}
