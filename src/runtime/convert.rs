//! Configuration values turned into the engines' values (and back into
//! short text for logs and `port.list`).

use fabric_config::{PortConfig, PortKind, VlanConfig};
use vswitch::VlanMode;

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
    let PortKind::VhostUser {
        socket,
        mac,
        queues,
        ..
    } = &port.kind
    else {
        return String::new();
    };
    // QEMU's virtio-net takes MAC and MTU from its own -device options, not from
    // the backend's config space, so the port's settings are repeated there.
    let mac = mac.map(|m| format!(",mac={m}")).unwrap_or_default();
    let mtu = match port.mtu {
        1500 => String::new(),
        mtu => format!(",host_mtu={mtu}"),
    };
    // Multi-queue: QEMU asks for that many pairs (its own MQ/control queue
    // model) and needs a vector per queue plus config and control.
    let (netdev_queues, device_mq) = match queues {
        1 => (String::new(), String::new()),
        q => (
            format!(",queues={q}"),
            format!(",mq=on,vectors={}", 2 * q + 2),
        ),
    };
    format!(
        "-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
         -chardev socket,id=chr-{n},path={s} -netdev vhost-user,id=net-{n},chardev=chr-{n}{netdev_queues} \
         -device virtio-net-pci,netdev=net-{n}{mac}{mtu}{device_mq},mrg_rxbuf=on,event_idx=on",
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

/// The engine's tunnel state from a `type = "vxlan"` port's keys.
pub(super) fn tunnel_config(
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
