//! Switch ports at run time. Adding or removing a port of any kind (checks,
//! the switch port, roll-back on failure, the log line, the runtime config)
//! is written once in [`Runtime::add_port`] and [`Runtime::remove_port`];
//! each kind is a [`PortDriver`] that only says what it claims, how it
//! starts and how it stops.

use super::convert::{qemu_args, tunnel_config, vlan_mode, vlan_summary};
use super::{Error, ErrorKind, PortEntry, Result, Runtime, State, SwitchEntry};
use crate::sockets;
use fabric_config::{PortConfig, PortKind, VlanConfig, VxlanConfig};
use std::io;
use std::path::Path;
use std::sync::Arc;
use vhost_backends::net::{NetPort, NetPortConfig, NetPortHandle};
use vhost_backends::tap::{TapPortHandle, TapSetup};
use vhost_backends::tunnel::{TunnelConfig, TunnelHandle};
use vswitch::PortId;

/// What `port set` changes; `None` leaves it as it is.
#[derive(Debug, Clone, Default)]
pub struct PortChange {
    pub vlan: Option<VlanConfig>,
    pub mtu: Option<u16>,
    /// Stations the port may learn (not kept by `config save`).
    pub mac_limit: Option<u32>,
    /// Administratively up or down (not kept by `config save`).
    pub admin_up: Option<bool>,
}

impl std::fmt::Display for PortChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(v) = &self.vlan {
            parts.push(format!("VLAN {}", vlan_summary(v)));
        }
        if let Some(m) = self.mtu {
            parts.push(format!("MTU {m}"));
        }
        if let Some(l) = self.mac_limit {
            parts.push(format!("MAC limit {l}"));
        }
        if let Some(up) = self.admin_up {
            parts.push(format!("admin {}", if up { "up" } else { "down" }));
        }
        if parts.is_empty() {
            return f.write_str("unchanged");
        }
        f.write_str(&parts.join(", "))
    }
}

/// What serves a running port.
pub(super) enum PortHandle {
    VhostUser(NetPortHandle),
    Tap(TapPortHandle),
    Tunnel(TunnelHandle),
}

impl PortHandle {
    pub(super) fn stop(self) {
        match self {
            PortHandle::VhostUser(h) => h.stop(),
            PortHandle::Tap(h) => h.stop(),
            PortHandle::Tunnel(h) => h.stop(),
        }
    }
}

/// Where a port being started attaches.
struct Attach<'a> {
    rt: &'a Runtime,
    entry: &'a SwitchEntry,
    pc: &'a PortConfig,
    /// Its id on the switch.
    id: PortId,
}

/// One kind of port.
trait PortDriver {
    /// Refuses what another port or export holds already; runs under the
    /// state lock, before anything is started.
    fn claim(&self, _st: &State, _pc: &PortConfig) -> Result<()> {
        Ok(())
    }

    /// Serves the switch port added for it.
    fn start(&self, at: &Attach) -> io::Result<PortHandle>;

    /// The log line once it runs.
    fn started(&self, switch: &str, pc: &PortConfig) -> String;

    /// How a libvirt domain attaches to it (a second log line), if it can.
    fn libvirt_hint(&self, _pc: &PortConfig) -> Option<String> {
        None
    }
}

// The configuration's bound on queue pairs is within what ports can count.
const _: () = assert!(fabric_config::MAX_QUEUE_PAIRS as usize <= vswitch::MAX_QUEUES);

struct VhostUser<'a> {
    socket: &'a Path,
    queue_size: u16,
    queues: u16,
    mac: Option<vswitch::MacAddr>,
    offloads: bool,
}

impl PortDriver for VhostUser<'_> {
    fn claim(&self, st: &State, pc: &PortConfig) -> Result<()> {
        if st.socket_in_use(self.socket) {
            return Err(Error::conflict(format!(
                "socket {} is already used",
                self.socket.display()
            )));
        }
        sockets::prepare(self.socket, &format!("port {}: socket", pc.name))
            .map_err(|e| Error::conflict(e.to_string()))
    }

    fn start(&self, at: &Attach) -> io::Result<PortHandle> {
        let port = Arc::new(NetPort {
            name: at.pc.name.clone(),
            id: at.id,
            switch: at.entry.switch.clone(),
            table: at.entry.table.clone(),
            datapath: at.rt.datapath.clone(),
            config: NetPortConfig {
                socket: self.socket.to_owned(),
                mac: self.mac.map(|m| m.0),
                mtu: at.pc.mtu,
                queue_size: self.queue_size,
                queue_pairs: self.queues,
                offloads: self.offloads,
            },
        });
        port.spawn(&at.rt.serve).map(PortHandle::VhostUser)
    }

    fn started(&self, switch: &str, pc: &PortConfig) -> String {
        format!(
            "switch {switch} port {} ({}) listening on {}; attach a QEMU guest with: {}",
            pc.name,
            vlan_summary(&pc.vlan),
            self.socket.display(),
            qemu_args(pc)
        )
    }

    fn libvirt_hint(&self, pc: &PortConfig) -> Option<String> {
        let interface = crate::libvirt::interface_xml(pc)?;
        Some(format!(
            "port {}: attach a libvirt domain with {} in <domain> and {interface} in <devices>",
            pc.name,
            crate::libvirt::MEMORY_BACKING
        ))
    }
}

struct Tap<'a> {
    device: &'a str,
    setup: TapSetup,
}

impl PortDriver for Tap<'_> {
    fn claim(&self, st: &State, _pc: &PortConfig) -> Result<()> {
        let in_use = st
            .ports
            .iter()
            .any(|p| matches!(&p.config.kind, PortKind::Tap { device: d, .. } if d == self.device));
        if in_use {
            return Err(Error::conflict(format!(
                "TAP device {} is already a port",
                self.device
            )));
        }
        Ok(())
    }

    fn start(&self, at: &Attach) -> io::Result<PortHandle> {
        let (sw, table) = (at.entry.switch.clone(), at.entry.table.clone());
        let datapath = at.rt.datapath.clone();
        let setup = TapSetup {
            mtu: at.pc.mtu,
            ..self.setup
        };
        vhost_backends::tap::spawn(self.device, setup, at.id, sw, table, datapath)
            .map(PortHandle::Tap)
    }

    fn started(&self, switch: &str, pc: &PortConfig) -> String {
        format!(
            "switch {switch} port {} ({}) on TAP device {}",
            pc.name,
            vlan_summary(&pc.vlan),
            self.device
        )
    }
}

struct Vxlan<'a> {
    keys: &'a VxlanConfig,
    /// The engine's state, built (and checked) before anything starts.
    config: TunnelConfig,
}

impl PortDriver for Vxlan<'_> {
    fn start(&self, at: &Attach) -> io::Result<PortHandle> {
        let (sw, table) = (at.entry.switch.clone(), at.entry.table.clone());
        let datapath = at.rt.datapath.clone();
        vhost_backends::tunnel::spawn(self.config.clone(), at.id, sw, table, datapath)
            .map(PortHandle::Tunnel)
    }

    fn started(&self, switch: &str, pc: &PortConfig) -> String {
        format!(
            "switch {switch} port {} is a VXLAN tunnel on {}:{} ({})",
            pc.name,
            self.keys.local,
            self.keys.udp_port,
            vlan_summary(&pc.vlan)
        )
    }
}

/// The driver of `pc`'s kind.
fn driver(pc: &PortConfig) -> Result<Box<dyn PortDriver + '_>> {
    Ok(match &pc.kind {
        PortKind::VhostUser {
            socket,
            queue_size,
            queues,
            mac,
            offloads,
        } => Box::new(VhostUser {
            socket,
            queue_size: *queue_size,
            queues: *queues,
            mac: *mac,
            offloads: *offloads,
        }),
        PortKind::Tap {
            device,
            multi_queue,
            offloads,
        } => Box::new(Tap {
            device,
            setup: TapSetup {
                mtu: pc.mtu,
                multi_queue: *multi_queue,
                offloads: *offloads,
            },
        }),
        PortKind::Vxlan(keys) => Box::new(Vxlan {
            keys,
            config: tunnel_config(keys).map_err(|e| Error::new(ErrorKind::InvalidArgument, e))?,
        }),
    })
}

impl Runtime {
    /// Starts serving a port on `switch`.
    pub fn add_port(&self, switch: &str, pc: PortConfig) -> Result<()> {
        let entry = self.switch_entry(switch)?;
        let mut st = self.lock();
        if st.ports.iter().any(|p| p.config.name == pc.name) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("a port named {:?} exists", pc.name),
            ));
        }
        let driver = driver(&pc)?;
        driver.claim(&st, &pc)?;
        let sw = &entry.switch;
        let id = sw
            .add_port(&pc.name, vlan_mode(&pc.vlan), pc.mtu)
            .map_err(|e| Error::conflict(e.to_string()))?;
        super::limits::apply_policing(sw, id, pc.policing);
        let at = Attach {
            rt: self,
            entry,
            pc: &pc,
            id,
        };
        let handle = match driver.start(&at) {
            Ok(h) => h,
            Err(e) => {
                let _ = sw.remove_port(&pc.name);
                return Err(Error::internal(e.to_string()));
            }
        };
        log::info!("{}", driver.started(switch, &pc));
        if let Some(hint) = driver.libvirt_hint(&pc) {
            log::info!("{hint}");
        }
        drop(driver);
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

    /// Changes a running port in place ([`PortChange`]): its driver and its
    /// peer's connection are not touched, its counters go on.
    pub fn set_port(&self, name: &str, change: PortChange) -> Result<()> {
        let mut st = self.lock();
        let entry = st
            .ports
            .iter()
            .find(|p| p.config.name == name)
            .ok_or_else(|| Error::not_found(format!("no port named {name:?}")))?;
        let switch = entry.switch.clone();
        if change.vlan.is_some() && matches!(entry.config.kind, PortKind::Vxlan(_)) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a VXLAN port carries the VLANs of its vni map: remove and add it to change them",
            ));
        }
        let capacity = st
            .config
            .switches
            .iter()
            .find(|s| s.name == switch)
            .map_or(0, |s| s.fdb_capacity);
        if let Some(limit) = change.mac_limit.filter(|l| !(1..=capacity).contains(l)) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("MAC limit {limit} is outside 1..={capacity} (the switch's fdb_capacity)"),
            ));
        }
        let sw = &self.switch_entry(&switch)?.switch;
        let id = sw
            .set_port(name, change.vlan.as_ref().map(vlan_mode), change.mtu)
            .map_err(|e| Error::not_found(e.to_string()))?;
        if let Some(limit) = change.mac_limit {
            sw.fdb().set_port_limit(id, Some(limit));
        }
        if let Some(up) = change.admin_up {
            sw.set_admin(id, up);
        }
        let st = &mut *st;
        let configs = st.config.switches.iter_mut().flat_map(|s| &mut s.ports);
        let running = st.ports.iter_mut().map(|p| &mut p.config);
        for pc in configs.chain(running).filter(|p| p.name == name) {
            if let Some(v) = &change.vlan {
                pc.vlan = v.clone();
            }
            if let Some(m) = change.mtu {
                pc.mtu = m;
            }
        }
        log::info!("switch {switch} port {name}: {change}");
        Ok(())
    }

    /// Stops serving a port: its guest is disconnected, its stations forgotten.
    pub fn remove_port(&self, name: &str) -> Result<()> {
        let mut st = self.lock();
        let i = st
            .ports
            .iter()
            .position(|p| p.config.name == name)
            .ok_or_else(|| Error::not_found(format!("no port named {name:?}")))?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric_config::VlanConfig;

    /// A port whose kind fails to start leaves nothing behind: not on the
    /// switch, not in the state or the runtime config; its name is free.
    #[test]
    fn a_port_that_fails_to_start_is_rolled_back() {
        let dir = std::env::temp_dir().join(format!("fabric-ports-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = fabric_config::parse(
            "[daemon]\nrun_dir = \"run\"\n[[switch]]\nname = \"br0\"\n",
            &dir.join("fabric.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let rt = Runtime::start(&config, None).expect("runtime starts");
        let port = |kind| PortConfig {
            name: "p".into(),
            kind,
            vlan: VlanConfig::Access {
                tag: vswitch::VlanId::DEFAULT,
            },
            mtu: 1500,
            policing: None,
        };
        // No such TAP device can exist: the kernel refuses the name.
        let bad = port(PortKind::Tap {
            device: "no/such".into(),
            multi_queue: false,
            offloads: true,
        });
        let err = rt.add_port("br0", bad).expect_err("the TAP port fails");
        assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
        assert_eq!(rt.switch("br0").unwrap().port_id("p"), None);
        assert_eq!(rt.with_state(|st| st.ports.len()), 0);
        assert_eq!(rt.switch_configs()[0].ports.len(), 0);

        let socket = dir.join("run").join("p.sock");
        let good = port(PortKind::VhostUser {
            socket: socket.clone(),
            queue_size: 256,
            queues: 1,
            mac: None,
            offloads: true,
        });
        rt.add_port("br0", good).expect("the name is free again");
        assert!(rt.switch("br0").unwrap().port_id("p").is_some());
        assert_eq!(rt.switch_configs()[0].ports.len(), 1);
        rt.remove_port("p").unwrap();
        assert_eq!(rt.switch("br0").unwrap().port_id("p"), None);
        assert!(!socket.exists());
        rt.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
