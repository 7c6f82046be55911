//! The keys of a `type = "vxlan"` port: underlay, limits and VNI mappings.

use std::collections::HashMap;

use serde::Deserialize;
use toml::Spanned;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVni {
    pub(super) vlan: Spanned<i64>,
    pub(super) vni: Spanned<i64>,
    #[serde(default)]
    pub(super) remotes: Vec<Spanned<String>>,
    pub(super) group: Option<Spanned<String>>,
    #[serde(default, rename = "static")]
    pub(super) statics: Vec<RawStatic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStatic {
    pub(super) mac: Spanned<String>,
    pub(super) vtep: Spanned<String>,
}

/// `"a.b.c.d/len"`: an IPv4 subnet with no host bits set.
pub(super) fn parse_subnet(text: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let bad = || format!("{text:?} is not an IPv4 subnet like \"192.0.2.0/24\"");
    let (addr, len) = text.split_once('/').ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
    if u32::from(addr) & host != 0 {
        return Err(format!(
            "{text:?} has host bits set beyond the /{len} prefix"
        ));
    }
    Ok((addr, len))
}

/// The keys of a `vxlan` port, and the trunk it is.
pub(super) fn vxlan_kind(
    ctx: &Ctx,
    port: &RawPort,
    key: &str,
) -> Result<(VxlanConfig, VlanConfig), ConfigError> {
    let ip = |v: &Spanned<String>, k: &str| {
        v.get_ref().parse::<std::net::Ipv4Addr>().map_err(|_| {
            ctx.invalid(
                &v.span(),
                k,
                format!("{:?} is not an IPv4 address", v.get_ref()),
            )
        })
    };
    let local = match &port.local {
        Some(v) => ip(v, &format!("{key}.local"))?,
        None => {
            return Err(ctx.invalid(
                &port.name.span(),
                &format!("{key}.local"),
                "a vxlan port needs `local` (this host's underlay address)",
            ))
        }
    };
    let udp_port = match &port.udp_port {
        Some(v) => ctx.int(v, &format!("{key}.udp_port"), "UDP port", 1, 65535)?,
        None => 4789,
    };
    let underlay_mtu = match &port.underlay_mtu {
        Some(v) => ctx.int(
            v,
            &format!("{key}.underlay_mtu"),
            "underlay MTU",
            576,
            65535,
        )?,
        None => 1500,
    };
    let senders = match &port.senders {
        Some(list) => list
            .get_ref()
            .iter()
            .enumerate()
            .map(|(i, v)| {
                parse_subnet(v.get_ref())
                    .map_err(|m| ctx.invalid(&v.span(), &format!("{key}.senders[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let num =
        |v: &Option<Spanned<i64>>, k: &str, what: &str, min: i64, max: i64, default: u32| match v {
            Some(v) => ctx.int(v, &format!("{key}.{k}"), what, min, max),
            None => Ok(default),
        };
    let local_hold_secs = num(
        &port.local_hold_secs,
        "local_hold_secs",
        "hold time",
        0,
        3600,
        DEFAULT_LOCAL_HOLD_SECS,
    )?;
    let remote_fdb_capacity = num(
        &port.remote_fdb_capacity,
        "remote_fdb_capacity",
        "remote FDB capacity",
        1,
        16_777_216,
        DEFAULT_REMOTE_FDB_CAPACITY,
    )?;
    let vtep_mac_limit = num(
        &port.vtep_mac_limit,
        "vtep_mac_limit",
        "VTEP MAC limit",
        1,
        i64::from(remote_fdb_capacity),
        DEFAULT_VTEP_MAC_LIMIT.min(remote_fdb_capacity),
    )?;
    let remote_mac_aging_secs = num(
        &port.remote_mac_aging_secs,
        "remote_mac_aging_secs",
        "aging time",
        10,
        1_000_000,
        DEFAULT_REMOTE_MAC_AGING_SECS,
    )?;
    let mut allowed = VlanSet::new();
    let mut vnis = Vec::new();
    let mut seen_vni = HashMap::new();
    let list = port.vni.as_ref().ok_or_else(|| {
        ctx.invalid(
            &port.name.span(),
            &format!("{key}.vni"),
            "a vxlan port needs `vni` (VLAN to VNI mappings)",
        )
    })?;
    for (i, v) in list.get_ref().iter().enumerate() {
        let k = format!("{key}.vni[{i}]");
        let vlan: VlanId = ctx.l2(&v.vlan, &format!("{k}.vlan"))?;
        if allowed.contains(vlan) {
            return Err(ctx.invalid(
                &v.vlan.span(),
                &format!("{k}.vlan"),
                format!("VLAN {vlan} is mapped twice"),
            ));
        }
        let vni: Vni = ctx.l2(&v.vni, &format!("{k}.vni"))?;
        if seen_vni.insert(vni, vlan).is_some() {
            return Err(ctx.invalid(
                &v.vni.span(),
                &format!("{k}.vni"),
                format!("VNI {vni} is mapped twice"),
            ));
        }
        allowed.insert(vlan);
        let mut remotes = Vec::new();
        for (j, r) in v.remotes.iter().enumerate() {
            let a = ip(r, &format!("{k}.remotes[{j}]"))?;
            if a.is_multicast() || a.is_unspecified() || a.is_broadcast() {
                return Err(ctx.invalid(
                    &r.span(),
                    &format!("{k}.remotes[{j}]"),
                    "remote VTEPs are unicast addresses",
                ));
            }
            remotes.push(a);
        }
        let group = match &v.group {
            Some(g) => {
                let a = ip(g, &format!("{k}.group"))?;
                if !a.is_multicast() {
                    return Err(ctx.invalid(
                        &g.span(),
                        &format!("{k}.group"),
                        "`group` must be a multicast address",
                    ));
                }
                Some(a)
            }
            None => None,
        };
        let mut statics = Vec::new();
        for (j, st) in v.statics.iter().enumerate() {
            let mac = ctx.mac(&st.mac, &format!("{k}.static[{j}].mac"))?;
            let vtep = ip(&st.vtep, &format!("{k}.static[{j}].vtep"))?;
            if vtep.is_multicast() || vtep.is_unspecified() || vtep.is_broadcast() {
                return Err(ctx.invalid(
                    &st.vtep.span(),
                    &format!("{k}.static[{j}].vtep"),
                    "a VTEP is a unicast address",
                ));
            }
            statics.push((mac, vtep));
        }
        vnis.push(VniConfig {
            vlan,
            vni,
            remotes,
            group,
            statics,
        });
    }
    if vnis.is_empty() {
        return Err(ctx.invalid(&list.span(), &format!("{key}.vni"), "map at least one VLAN"));
    }
    Ok((
        VxlanConfig {
            local,
            udp_port,
            underlay_mtu,
            learn_vteps: port.learn_vteps.as_ref().is_some_and(|v| *v.get_ref()),
            senders,
            local_hold_secs,
            vtep_mac_limit,
            remote_fdb_capacity,
            remote_mac_aging_secs,
            vnis,
        },
        VlanConfig::Trunk {
            allowed,
            native: None,
        },
    ))
}
