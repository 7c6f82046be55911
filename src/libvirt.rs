//! The libvirt domain XML that attaches a guest to a port or an export, as
//! `vswitchd` logs it at start-up (README.md, "Attaching a libvirt guest").
//!
//! libvirt's QEMU is the vhost-user frontend and connects to our listening
//! sockets: `mode='client'` on the interface (a disk's source is always a
//! client), with `<reconnect>` so that QEMU connects again when `vswitchd`
//! restarts. Each snippet is one line, so a log line holds it whole.

use fabric_config::{ExportConfig, PortConfig, PortKind};
use std::path::Path;

/// The `<domain>` element vhost-user needs: guest RAM shared with the daemon.
pub const MEMORY_BACKING: &str =
    "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>";

/// How long QEMU waits between attempts to reconnect to a socket that went
/// away (a restarting `vswitchd`), in seconds.
const RECONNECT_SECS: u32 = 10;

/// The `<interface>` element (in `<devices>`) of a guest NIC on a vhost-user
/// port; `None` for other kinds of port.
pub fn interface_xml(port: &PortConfig) -> Option<String> {
    let PortKind::VhostUser {
        socket,
        mac,
        queues,
        ..
    } = &port.kind
    else {
        return None;
    };
    // Like QEMU's -device options, libvirt's XML states the MAC and MTU
    // itself: QEMU's virtio-net does not take them from the backend.
    let mac = mac
        .map(|m| format!("<mac address='{m}'/>"))
        .unwrap_or_default();
    let mtu = match port.mtu {
        1500 => String::new(),
        mtu => format!("<mtu size='{mtu}'/>"),
    };
    Some(format!(
        "<interface type='vhostuser'>{mac}{}<model type='virtio'/><driver queues='{queues}'/>{mtu}</interface>",
        source(socket, " mode='client'")
    ))
}

/// The `<disk>` element (in `<devices>`) of a guest disk on an export. A
/// read-only export refuses writes itself (VIRTIO_BLK_F_RO), so the element
/// is the same; `dev` is the guest's name for it, which the operator picks.
pub fn disk_xml(export: &ExportConfig, dev: &str) -> String {
    format!(
        "<disk type='vhostuser' device='disk'><driver name='qemu' type='raw' queues='{}'/>{}<target dev='{}' bus='virtio'/></disk>",
        export.queues,
        source(&export.socket, ""),
        attr(dev)
    )
}

fn source(socket: &Path, mode: &str) -> String {
    format!(
        "<source type='unix' path='{}'{mode}><reconnect enabled='yes' timeout='{RECONNECT_SECS}'/></source>",
        attr(&socket.to_string_lossy())
    )
}

/// `s` escaped for an attribute in single quotes.
fn attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(toml_port: &str) -> PortConfig {
        let text = format!(
            "[daemon]\nrun_dir = \"/run/fabric\"\n[[switch]]\nname = \"br0\"\n[[switch.port]]\n{toml_port}"
        );
        let cfg = fabric_config::parse(&text, Path::new("/etc/fabric/fabric.toml")).unwrap();
        cfg.switches[0].ports[0].clone()
    }

    #[test]
    fn interface_of_a_port() {
        let p = port(
            "name = \"vm1\"\ntype = \"vhost-user\"\nmac = \"52:54:00:00:00:01\"\nqueues = 2\nmtu = 9000\n",
        );
        assert_eq!(
            interface_xml(&p).unwrap(),
            "<interface type='vhostuser'><mac address='52:54:00:00:00:01'/>\
             <source type='unix' path='/run/fabric/vm1.sock' mode='client'>\
             <reconnect enabled='yes' timeout='10'/></source><model type='virtio'/>\
             <driver queues='2'/><mtu size='9000'/></interface>"
        );
        let p = port("name = \"vm2\"\ntype = \"vhost-user\"\nsocket = \"/run/a'b&c.sock\"\n");
        assert_eq!(
            interface_xml(&p).unwrap(),
            "<interface type='vhostuser'>\
             <source type='unix' path='/run/a&apos;b&amp;c.sock' mode='client'>\
             <reconnect enabled='yes' timeout='10'/></source><model type='virtio'/>\
             <driver queues='1'/></interface>"
        );
        let tap = port("name = \"t0\"\ntype = \"tap\"\ndevice = \"tap0\"\n");
        assert_eq!(interface_xml(&tap), None);
    }

    #[test]
    fn disk_of_an_export() {
        let e = ExportConfig {
            socket: "/run/fabric/vm1-disk.sock".into(),
            migration_socket: None,
            queues: 2,
            queue_size: 256,
            read_only: false,
            limits: Default::default(),
        };
        assert_eq!(
            disk_xml(&e, "vda"),
            "<disk type='vhostuser' device='disk'><driver name='qemu' type='raw' queues='2'/>\
             <source type='unix' path='/run/fabric/vm1-disk.sock'>\
             <reconnect enabled='yes' timeout='10'/></source>\
             <target dev='vda' bus='virtio'/></disk>"
        );
    }
}
