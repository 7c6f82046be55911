//! The daily verbs of the control protocol (`port.set`, `fdb.del`,
//! `log.level`) and the idempotent forms of the add and remove operations
//! (`may_exist`, `if_exists`), kept apart from [`super::ops`]' dispatch,
//! which calls in here.

use super::ops::{args, invalid, port_config, switch, OpError, OpResult};
use super::protocol::*;
use crate::runtime::{self, ErrorKind, PortChange, Runtime};
use serde_json::{json, Value};

/// `port.set`: VLAN and MTU checked by the `fabric.toml` rules (through the
/// same one-port parse as `port.add`), then changed in place.
pub(super) fn port_set(rt: &Runtime, a: &Value) -> OpResult<()> {
    let s: PortSet = args("port.set", a)?;
    let switch_name = rt
        .with_state(|st| {
            st.ports
                .iter()
                .find(|p| p.config.name == s.name)
                .map(|p| p.switch.clone())
        })
        .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no port named {:?}", s.name)))?;
    let checked = match (&s.vlan, s.mtu) {
        (None, None) => None,
        (vlan, mtu) => {
            // A TAP port of a name no port has: only its VLAN and MTU are read.
            let probe = PortAdd {
                switch: switch_name,
                name: "port-set".into(),
                kind: "tap".into(),
                vlan: vlan.clone(),
                mtu,
                ..PortAdd::default()
            };
            Some(port_config(rt, &probe)?.1)
        }
    };
    let change = PortChange {
        vlan: checked
            .as_ref()
            .filter(|_| s.vlan.is_some())
            .map(|p| p.vlan.clone()),
        mtu: checked.as_ref().filter(|_| s.mtu.is_some()).map(|p| p.mtu),
        mac_limit: s.mac_limit,
        admin_up: s.admin.map(|a| a == Admin::Up),
    };
    rt.set_port(&s.name, change)?;
    Ok(())
}

/// `fdb.del`: `{removed}` (false only with `if_exists`).
pub(super) fn fdb_del(rt: &Runtime, a: &Value) -> OpResult<Value> {
    let f: FdbDel = args("fdb.del", a)?;
    let sw = switch(rt, &f.switch)?;
    let vlan = vswitch::VlanId::try_from(f.vlan).map_err(|e| invalid(e.to_string()))?;
    let mac = vswitch::MacAddr::parse_station(&f.mac).map_err(|e| invalid(e.to_string()))?;
    let removed = sw.fdb().remove(vlan, mac);
    if !removed && !f.if_exists {
        return Err(OpError::new(
            ErrorCode::NotFound,
            format!("no entry for {mac} in VLAN {} on {}", f.vlan, f.switch),
        ));
    }
    if removed {
        log::info!(
            "switch {}: FDB entry {mac} in VLAN {} removed",
            f.switch,
            f.vlan
        );
    }
    Ok(json!({ "removed": removed }))
}

/// `log.level`: the new filter, in effect at once.
pub(super) fn log_level(a: &Value) -> OpResult<Value> {
    let l: LogLevel = args("log.level", a)?;
    crate::logging::set_filter(&l.level).map_err(|e| match e {
        crate::logging::FilterError::Invalid(m) => invalid(m),
        crate::logging::FilterError::NotInstalled => {
            OpError::new(ErrorCode::Conflict, e.to_string())
        }
    })?;
    log::info!("log filter is now {:?}", l.level.trim());
    Ok(json!({ "filter": l.level.trim() }))
}

/// An add or create that found its name taken: a success with `may_exist`.
pub(super) fn may_exist(result: runtime::Result<()>, may_exist: bool) -> OpResult<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if may_exist && e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A remove or delete that found nothing: a success with `if_exists`.
pub(super) fn if_exists(result: runtime::Result<()>, if_exists: bool) -> OpResult<Value> {
    match result {
        Ok(()) => Ok(Value::Null),
        Err(e) if if_exists && e.kind() == ErrorKind::NotFound => Ok(Value::Null),
        Err(e) => Err(e.into()),
    }
}

/// Whether `pool` (which must exist) has a volume `name`: a create or copy
/// with `may_exist` then changes nothing, whatever else it would check.
pub(super) fn volume_exists(rt: &Runtime, pool: &str, name: &str) -> OpResult<bool> {
    let pool = rt.pool_entry(pool)?;
    Ok(crate::storage::lock_pool(&pool.pool).volume(name).is_ok())
}

/// `port.add` with `may_exist` on a name taken by a port of another switch.
pub(super) fn port_elsewhere(rt: &Runtime, switch: &str, name: &str) -> OpResult<()> {
    let other = rt.with_state(|st| {
        st.ports
            .iter()
            .find(|p| p.config.name == name && p.switch != switch)
            .map(|p| p.switch.clone())
    });
    match other {
        Some(other) => Err(OpError::new(
            ErrorCode::Conflict,
            format!("a port named {name:?} exists on switch {other}, not {switch}"),
        )),
        None => Ok(()),
    }
}
