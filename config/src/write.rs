//! [`to_toml`]: a [`FabricConfig`] back as `fabric.toml` text (what
//! `fabricctl config save` writes). Paths are written absolute (they are
//! resolved at load); everything else as the keys of the reference.

use std::fmt::Write;
use std::path::Path;

use crate::*;

fn q(s: &str) -> String {
    // TOML basic strings: escape backslash and quote; names and paths have
    // no control characters (checked at load).
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn path(p: &Path) -> String {
    q(&p.to_string_lossy())
}

fn vlan(v: &VlanConfig) -> String {
    match v {
        VlanConfig::Access { tag } => format!("{{ mode = \"access\", tag = {tag} }}"),
        VlanConfig::Trunk { allowed, native } => {
            let items: Vec<String> = allowed
                .ranges()
                .into_iter()
                .map(|(first, last)| {
                    if first == last {
                        first.to_string()
                    } else {
                        format!("\"{first}-{last}\"")
                    }
                })
                .collect();
            let native = native
                .map(|n| format!(", native = {n}"))
                .unwrap_or_default();
            format!(
                "{{ mode = \"trunk\", allowed = [{}]{native} }}",
                items.join(", ")
            )
        }
    }
}

/// The configuration as TOML that [`parse`] reads back to an equal value.
pub fn to_toml(cfg: &FabricConfig) -> String {
    let mut out = String::new();
    let d = &cfg.daemon;
    let _ = writeln!(out, "# Written by vswitchd (fabricctl config save).\n");
    let _ = writeln!(out, "[daemon]");
    let _ = writeln!(out, "run_dir = {}", path(&d.run_dir));
    let _ = writeln!(out, "datapath_threads = {}", d.datapath_threads);
    let _ = writeln!(out, "control_socket = {}", path(&d.control_socket));
    if let Some(m) = d.metrics_listen {
        let _ = writeln!(out, "metrics_listen = {}", q(&m.to_string()));
    }
    let _ = writeln!(out, "socket_mode = {:#o}", d.socket_mode);
    for (key, p) in [
        ("socket_owner", &d.socket_owner),
        ("socket_group", &d.socket_group),
    ] {
        match p {
            Some(Principal::Id(id)) => {
                let _ = writeln!(out, "{key} = {id}");
            }
            Some(Principal::Name(n)) => {
                let _ = writeln!(out, "{key} = {}", q(n));
            }
            None => {}
        }
    }
    let _ = writeln!(out, "handshake_timeout_ms = {}", d.handshake_timeout_ms);
    let _ = writeln!(out, "live_migration = {}", d.live_migration);
    for sw in &cfg.switches {
        let _ = writeln!(out, "\n[[switch]]");
        let _ = writeln!(out, "name = {}", q(&sw.name));
        let _ = writeln!(out, "mac_aging_secs = {}", sw.mac_aging_secs);
        let _ = writeln!(out, "fdb_capacity = {}", sw.fdb_capacity);
        let _ = writeln!(out, "port_mac_limit = {}", sw.port_mac_limit);
        for p in &sw.ports {
            let _ = writeln!(out, "\n[[switch.port]]");
            let _ = writeln!(out, "name = {}", q(&p.name));
            if let Some(RateLimit { rate, burst }) = p.policing {
                let _ = writeln!(out, "rate = {rate}\nburst = {burst}");
            }
            match &p.kind {
                PortKind::VhostUser {
                    socket,
                    queue_size,
                    queues,
                    mac,
                    offloads,
                } => {
                    let _ = writeln!(out, "type = \"vhost-user\"");
                    let _ = writeln!(out, "socket = {}", path(socket));
                    let _ = writeln!(out, "queue_size = {queue_size}");
                    let _ = writeln!(out, "queues = {queues}");
                    let _ = writeln!(out, "offloads = {offloads}");
                    if let Some(m) = mac {
                        let _ = writeln!(out, "mac = \"{m}\"");
                    }
                }
                PortKind::Tap {
                    device,
                    multi_queue,
                    offloads,
                } => {
                    let _ = writeln!(out, "type = \"tap\"");
                    let _ = writeln!(out, "device = {}", q(device));
                    let _ = writeln!(out, "multi_queue = {multi_queue}");
                    let _ = writeln!(out, "offloads = {offloads}");
                }
                PortKind::Vxlan(v) => {
                    let _ = writeln!(out, "type = \"vxlan\"");
                    let _ = writeln!(out, "local = {}", q(&v.local.to_string()));
                    let _ = writeln!(out, "udp_port = {}", v.udp_port);
                    let _ = writeln!(out, "underlay_mtu = {}", v.underlay_mtu);
                    let _ = writeln!(out, "learn_vteps = {}", v.learn_vteps);
                    let senders: Vec<String> = v
                        .senders
                        .iter()
                        .map(|(a, len)| q(&format!("{a}/{len}")))
                        .collect();
                    let _ = writeln!(out, "senders = [{}]", senders.join(", "));
                    let _ = writeln!(out, "local_hold_secs = {}", v.local_hold_secs);
                    let _ = writeln!(out, "vtep_mac_limit = {}", v.vtep_mac_limit);
                    let _ = writeln!(out, "remote_fdb_capacity = {}", v.remote_fdb_capacity);
                    let _ = writeln!(out, "remote_mac_aging_secs = {}", v.remote_mac_aging_secs);
                    let _ = writeln!(out, "mtu = {}", p.mtu);
                    let items: Vec<String> = v
                        .vnis
                        .iter()
                        .map(|m| {
                            let remotes: Vec<String> =
                                m.remotes.iter().map(|r| q(&r.to_string())).collect();
                            let group = m
                                .group
                                .map(|g| format!(", group = {}", q(&g.to_string())))
                                .unwrap_or_default();
                            let statics: Vec<String> = m
                                .statics
                                .iter()
                                .map(|(mac, vtep)| {
                                    format!(
                                        "{{ mac = \"{mac}\", vtep = {} }}",
                                        q(&vtep.to_string())
                                    )
                                })
                                .collect();
                            format!(
                                "{{ vlan = {}, vni = {}, remotes = [{}]{group}, static = [{}] }}",
                                m.vlan,
                                m.vni,
                                remotes.join(", "),
                                statics.join(", ")
                            )
                        })
                        .collect();
                    let _ = writeln!(out, "vni = [{}]", items.join(", "));
                    // The VLANs are those of `vni`; no `vlan` key.
                    continue;
                }
            }
            let _ = writeln!(out, "vlan = {}", vlan(&p.vlan));
            let _ = writeln!(out, "mtu = {}", p.mtu);
        }
    }
    for pool in &cfg.pools {
        let _ = writeln!(out, "\n[[pool]]");
        let _ = writeln!(out, "name = {}", q(&pool.name));
        let _ = writeln!(out, "path = {}", path(&pool.path));
        if let Some(size) = pool.size {
            let _ = writeln!(out, "size = {size}");
        }
        let _ = writeln!(out, "cluster_size = {}", pool.cluster_size);
        let _ = writeln!(out, "overcommit = {}", pool.overcommit);
        let _ = writeln!(out, "on_full = {}", q(pool.on_full.as_str()));
        let _ = writeln!(out, "warn_percent = {}", pool.warn_percent);
        for v in &pool.volumes {
            let _ = writeln!(out, "\n[[pool.volume]]");
            let _ = writeln!(out, "name = {}", q(&v.name));
            match &v.source {
                VolumeSource::New { size, block_size } => {
                    let _ = writeln!(out, "size = {size}");
                    let _ = writeln!(out, "block_size = {block_size}");
                }
                VolumeSource::CloneOf(s) => {
                    let _ = writeln!(out, "clone_of = {}", q(s));
                }
                VolumeSource::SnapshotOf(s) => {
                    let _ = writeln!(out, "snapshot_of = {}", q(s));
                }
            }
            if let Some(e) = &v.export {
                let migration = e.migration_socket.as_ref().map_or(String::new(), |m| {
                    format!(" migration_socket = {},", path(m))
                });
                let mut limits = String::new();
                for ((rate_key, burst_key), limit) in e.limits.by_key() {
                    if let Some(RateLimit { rate, burst }) = limit {
                        let _ = write!(limits, ", {rate_key} = {rate}, {burst_key} = {burst}");
                    }
                }
                let _ = writeln!(
                    out,
                    "export = {{ socket = {},{migration} queues = {}, queue_size = {}, read_only = {}{limits} }}",
                    path(&e.socket),
                    e.queues,
                    e.queue_size,
                    e.read_only
                );
            }
        }
    }
    if let Some(n) = &cfg.nbd {
        let _ = writeln!(out, "\n[nbd]");
        let _ = writeln!(out, "socket = {}", path(&n.socket));
        if let Some(t) = n.tcp {
            let _ = writeln!(out, "tcp = {}", q(&t.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_round_trips() {
        let dir = Path::new("/etc/fabric");
        let a = parse_in(EXAMPLE, dir);
        let text = to_toml(&a);
        let b = parse_in(&text, dir);
        assert_eq!(a, b, "{text}");
    }

    fn parse_in(text: &str, dir: &Path) -> FabricConfig {
        raw::parse(text, "fabric.toml", dir).unwrap_or_else(|e| panic!("{e}"))
    }
}
