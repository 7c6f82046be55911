//! A `fabric::Daemon` on a config of its own, with sockets in a fresh
//! directory, for tests that play the VMM against the real daemon code.

use super::daemon_host::DaemonHost;
use super::{GuestNic, NicOptions};
use fabric::Daemon;
use std::time::Duration;
use vswitch::{MacAddr, PortCountersSnapshot};

/// How long anything that should happen may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// A daemon on a config of its own, sockets in a fresh directory.
pub struct Fabric(DaemonHost);

impl Fabric {
    /// `ports`: (name, vlan inline table) on switch br0.
    pub fn start(switch_extra: &str, ports: &[(&str, &str)]) -> Fabric {
        let ports: Vec<_> = ports.iter().map(|&(n, v)| (n, v, "")).collect();
        Self::start_with("", switch_extra, &ports)
    }

    /// `daemon_extra`: more `[daemon]` keys; `ports`: (name, vlan inline
    /// table, more port keys such as `queues = 2`) on switch br0.
    pub fn start_with(
        daemon_extra: &str,
        switch_extra: &str,
        ports: &[(&str, &str, &str)],
    ) -> Fabric {
        let mut toml = format!(
            "[daemon]\nrun_dir = \"run\"\n{daemon_extra}\n[[switch]]\nname = \"br0\"\n{switch_extra}\n"
        );
        for (name, vlan, extra) in ports {
            toml += &format!(
                "[[switch.port]]\nname = \"{name}\"\ntype = \"vhost-user\"\nvlan = {vlan}\n{extra}\n"
            );
        }
        Fabric(DaemonHost::start("fh", &toml))
    }

    pub fn connect(&self, port: &str) -> GuestNic {
        self.connect_with(port, NicOptions::default())
    }

    pub fn connect_with(&self, port: &str, opts: NicOptions) -> GuestNic {
        let nic = GuestNic::connect(&self.socket(port), opts).expect("frontend connects");
        self.wait_link(port, true);
        nic
    }

    pub fn wait_link(&self, port: &str, up: bool) {
        wait_link(self.daemon(), port, up);
    }

    pub fn counters(&self, port: &str) -> PortCountersSnapshot {
        let sw = self.daemon().switch("br0").unwrap();
        let id = sw.port_id(port).unwrap();
        sw.topology().port(id).unwrap().state.counters.snapshot()
    }

    /// br0's FDB counters (learned, moved, refused moves, ...).
    pub fn fdb_stats(&self) -> vswitch::FdbStats {
        self.daemon().switch("br0").unwrap().fdb().stats()
    }

    pub fn fdb_port_of(&self, vlan: u16, m: [u8; 6]) -> Option<String> {
        let sw = self.daemon().switch("br0").unwrap();
        let vlan = vswitch::VlanId::new(vlan).expect("a usable VLAN id");
        let id = sw.fdb().lookup(vlan, MacAddr(m), sw.now())?;
        Some(sw.topology().port(id)?.name.clone())
    }
}

/// The host's daemon, sockets, report, port list and metrics.
impl std::ops::Deref for Fabric {
    type Target = DaemonHost;
    fn deref(&self) -> &DaemonHost {
        &self.0
    }
}

/// Waits until `port` of br0 is up (or down).
pub fn wait_link(daemon: &Daemon, port: &str, up: bool) {
    let sw = daemon.switch("br0").unwrap();
    let id = sw.port_id(port).unwrap();
    let what = format!("port {port} going {}", if up { "up" } else { "down" });
    wait_for(&what, || {
        sw.topology().port(id).unwrap().state.is_up() == up
    });
}

/// Waits (up to [`WAIT`]) until `cond` holds, failing the test with `what`.
pub fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    crate::wait::wait_for(what, WAIT, cond)
}

/// Whether a `port.list` answer (control protocol JSON, or `fabricctl
/// --json port list`) shows each of `ports` with its link up: its frontend's
/// receive queue is then published.
pub fn links_up(list: &serde_json::Value, ports: &[&str]) -> bool {
    let up = |n: &str| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|p| p["name"] == n && p["link"] == true))
    };
    ports.iter().all(|n| up(n))
}
