//! `[[switch.port]]`: a port's name, type and the keys of each type.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::vlan::convert_vlan;
use super::vxlan::vxlan_kind;
use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSwitch {
    pub(super) name: Spanned<String>,
    pub(super) mac_aging_secs: Option<Spanned<i64>>,
    pub(super) fdb_capacity: Option<Spanned<i64>>,
    pub(super) port_mac_limit: Option<Spanned<i64>>,
    #[serde(default, rename = "port")]
    pub(super) ports: Vec<RawPort>,
}

pub(super) fn convert_port(
    ctx: &Ctx,
    port: &RawPort,
    key: &str,
    run_dir: &Path,
    port_names: &mut HashMap<String, usize>,
    sockets: &mut HashMap<PathBuf, usize>,
) -> Result<PortConfig, ConfigError> {
    let name = check_name(ctx, &port.name, &format!("{key}.name"))?;
    if let Some(first) = port_names.insert(name.clone(), ctx.line(&port.name.span())) {
        return Err(ctx.invalid(
            &port.name.span(),
            &format!("{key}.name"),
            format!("duplicate port name {name:?} (first defined at line {first})"),
        ));
    }

    let mtu = match &port.mtu {
        Some(v) => ctx.int(v, &format!("{key}.mtu"), "MTU", 68, 65535)?,
        None => DEFAULT_MTU,
    };
    let vlan = match &port.vlan {
        Some(v) => convert_vlan(ctx, v, &format!("{key}.vlan"))?,
        None => VlanConfig::default(),
    };
    let policing = policing(ctx, port, key)?;
    // Keys of the other port types are errors, not ignored.
    let reject = |span: Range<usize>, k: &str, ty: &str| {
        Err(ctx.invalid(
            &span,
            &format!("{key}.{k}"),
            format!("`{k}` is not valid for a port of type \"{ty}\""),
        ))
    };
    // VXLAN keys on other port types, and the keys a tunnel does not take.
    let vxlan_keys = [
        port.local.as_ref().map(|v| (v.span(), "local")),
        port.udp_port.as_ref().map(|v| (v.span(), "udp_port")),
        port.underlay_mtu
            .as_ref()
            .map(|v| (v.span(), "underlay_mtu")),
        port.learn_vteps.as_ref().map(|v| (v.span(), "learn_vteps")),
        port.senders.as_ref().map(|v| (v.span(), "senders")),
        port.local_hold_secs
            .as_ref()
            .map(|v| (v.span(), "local_hold_secs")),
        port.vtep_mac_limit
            .as_ref()
            .map(|v| (v.span(), "vtep_mac_limit")),
        port.remote_fdb_capacity
            .as_ref()
            .map(|v| (v.span(), "remote_fdb_capacity")),
        port.remote_mac_aging_secs
            .as_ref()
            .map(|v| (v.span(), "remote_mac_aging_secs")),
        port.vni.as_ref().map(|v| (v.span(), "vni")),
    ];
    if port.kind.get_ref() != "vxlan" {
        if let Some((span, k)) = vxlan_keys.into_iter().flatten().next() {
            return reject(span, k, port.kind.get_ref());
        }
    }
    let kind = match port.kind.get_ref().as_str() {
        "vxlan" => {
            for (v, k) in [
                (&port.socket, "socket"),
                (&port.mac, "mac"),
                (&port.device, "device"),
            ] {
                if let Some(v) = v {
                    return reject(v.span(), k, "vxlan");
                }
            }
            if let Some(v) = &port.queues {
                return reject(v.span(), "queues", "vxlan");
            }
            if let Some(v) = &port.multi_queue {
                return reject(v.span(), "multi_queue", "vxlan");
            }
            if let Some(v) = &port.offloads {
                return reject(v.span(), "offloads", "vxlan");
            }
            if let Some(v) = &port.vlan {
                return Err(ctx.invalid(
                    &v.span(),
                    &format!("{key}.vlan"),
                    "a vxlan port is a trunk of the VLANs in `vni`; it takes no `vlan`",
                ));
            }
            let (cfg, vlan) = vxlan_kind(ctx, port, key)?;
            // Default: the largest frame that fits the underlay (1450 on 1500).
            let mtu = if port.mtu.is_some() {
                mtu
            } else {
                cfg.underlay_mtu - 50
            };
            return Ok(PortConfig {
                name,
                kind: PortKind::Vxlan(cfg),
                vlan,
                mtu,
                policing,
            });
        }
        "vhost-user" => {
            if let Some(d) = &port.device {
                return reject(d.span(), "device", "vhost-user");
            }
            if let Some(m) = &port.multi_queue {
                return reject(m.span(), "multi_queue", "vhost-user");
            }
            vhost_user_kind(ctx, port, key, &name, run_dir, sockets)?
        }
        "tap" => {
            if let Some(s) = &port.socket {
                return reject(s.span(), "socket", "tap");
            }
            if let Some(q) = &port.queue_size {
                return reject(q.span(), "queue_size", "tap");
            }
            if let Some(m) = &port.mac {
                return reject(m.span(), "mac", "tap");
            }
            if let Some(q) = &port.queues {
                return reject(q.span(), "queues", "tap");
            }
            let multi_queue = port.multi_queue.as_ref().is_some_and(|m| *m.get_ref());
            let device = match &port.device {
                Some(d) => {
                    let dev = check_name(ctx, d, &format!("{key}.device"))?;
                    if dev.len() > 15 {
                        return Err(ctx.invalid(
                            &d.span(),
                            &format!("{key}.device"),
                            format!("interface name {dev:?} is longer than 15 bytes"),
                        ));
                    }
                    dev
                }
                None if name.len() > 15 => {
                    return Err(ctx.invalid(
                        &port.name.span(),
                        &format!("{key}.name"),
                        format!("the TAP device defaults to the port name, and {name:?} is longer than 15 bytes: give `device`"),
                    ));
                }
                None => name.clone(),
            };
            PortKind::Tap {
                device,
                multi_queue,
                offloads: offloads(port),
            }
        }
        other => {
            return Err(ctx.invalid(
                &port.kind.span(),
                &format!("{key}.type"),
                format!("unsupported port type {other:?}: \"vhost-user\", \"tap\" or \"vxlan\""),
            ))
        }
    };
    Ok(PortConfig {
        name,
        kind,
        vlan,
        mtu,
        policing,
    })
}

/// `rate` and `burst`: ingress policing, checked by [`port_policing`].
fn policing(ctx: &Ctx, port: &RawPort, key: &str) -> Result<Option<RateLimit>, ConfigError> {
    let value = |v: &Option<Spanned<i64>>, k: &str| match v {
        Some(v) => ctx
            .int(v, &format!("{key}.{k}"), "kbit", 0, i64::MAX)
            .map(Some),
        None => Ok(None),
    };
    let rate = value(&port.rate, "rate")?;
    let burst = value(&port.burst, "burst")?;
    port_policing(rate, burst).map_err(|err| {
        let span = match err.key {
            "rate" => port.rate.as_ref(),
            _ => port.burst.as_ref(),
        }
        .map(Spanned::span)
        .unwrap_or_default();
        ctx.invalid(&span, &format!("{key}.{}", err.key), err.message)
    })
}

/// The `vhost-user` keys of a port.
pub(super) fn vhost_user_kind(
    ctx: &Ctx,
    port: &RawPort,
    key: &str,
    name: &str,
    run_dir: &Path,
    sockets: &mut HashMap<PathBuf, usize>,
) -> Result<PortKind, ConfigError> {
    // An explicit socket is relative to the config file; the default one
    // lives in run_dir. Errors about a defaulted socket point at the name.
    let (socket, socket_span, socket_key) = match &port.socket {
        Some(s) if s.get_ref().is_empty() => {
            return Err(ctx.invalid(&s.span(), &format!("{key}.socket"), "must not be empty"));
        }
        Some(s) => (ctx.resolve(s.get_ref()), s.span(), format!("{key}.socket")),
        None => (
            normalize(&run_dir.join(format!("{name}.sock"))),
            port.name.span(),
            format!("{key}.name"),
        ),
    };
    check_socket(ctx, &socket, &socket_span, &socket_key, sockets)?;

    let queue_size = match &port.queue_size {
        Some(v) => ctx.queue_size(v, &format!("{key}.queue_size"), 64, 32768)?,
        None => DEFAULT_QUEUE_SIZE,
    };

    let queues = match &port.queues {
        Some(v) => ctx.int(
            v,
            &format!("{key}.queues"),
            "queue pairs",
            1,
            i64::from(MAX_QUEUE_PAIRS),
        )?,
        None => 1,
    };
    let mac = match &port.mac {
        Some(v) => Some(ctx.mac(v, &format!("{key}.mac"))?),
        None => None,
    };
    Ok(PortKind::VhostUser {
        socket,
        queue_size,
        queues,
        mac,
        offloads: offloads(port),
    })
}

/// `offloads` of a vhost-user or TAP port: default on.
fn offloads(port: &RawPort) -> bool {
    port.offloads.as_ref().is_none_or(|o| *o.get_ref())
}
