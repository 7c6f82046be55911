//! The value grammars of the command line: sizes and VLAN specs.

use serde_json::{json, Value};

/// A size in the grammar of `fabric.toml` and `vblock`
/// ([`fabric_config::parse_size`]).
pub fn parse_size(s: &str) -> Result<u64, String> {
    fabric_config::parse_size(s).map_err(|e| format!("bad size {s:?}: {e}"))
}

pub(super) fn parse_block_size(s: &str) -> Result<u32, String> {
    match parse_size(s) {
        Ok(512) => Ok(512),
        Ok(4096) => Ok(4096),
        _ => Err(format!("--block-size must be 512 or 4096, not {s:?}")),
    }
}

/// A VLAN id, `1..=4094`.
pub fn parse_vlan_id(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(id @ 1..=4094) => Ok(id as u16),
        Ok(id) => Err(format!("VLAN id {id} is outside 1..=4094")),
        Err(_) => Err(format!("bad VLAN id {s:?}: expected a number in 1..=4094")),
    }
}

const VLAN_SPEC_HELP: &str = "expected access[:TAG] or trunk[:LIST][:native=N], \
                              e.g. access:10 or trunk:10,20,100-199:native=1";

/// `--vlan`: `access[:TAG]` or `trunk[:LIST][:native=N]` (LIST: ids and
/// `first-last` ranges, comma-separated; no list: every VLAN) as the `vlan`
/// value of `fabric.toml`: `{"mode":"access","tag":10}`,
/// `{"mode":"trunk","allowed":[10,"100-199"],"native":1}`.
pub fn parse_vlan_spec(spec: &str) -> Result<Value, String> {
    let bad = |why: String| format!("bad --vlan {spec:?}: {why}");
    let mut parts = spec.split(':');
    let mode = parts.next().unwrap_or_default();
    match mode {
        "access" => {
            let mut vlan = json!({ "mode": "access" });
            if let Some(tag) = parts.next() {
                let tag = tag.strip_prefix("tag=").unwrap_or(tag);
                vlan["tag"] = json!(parse_vlan_id(tag).map_err(bad)?);
            }
            if parts.next().is_some() {
                return Err(bad(VLAN_SPEC_HELP.into()));
            }
            Ok(vlan)
        }
        "trunk" => {
            let mut vlan = json!({ "mode": "trunk" });
            for part in parts {
                if let Some(native) = part.strip_prefix("native=") {
                    if vlan.get("native").is_some() {
                        return Err(bad("native given twice".into()));
                    }
                    vlan["native"] = json!(parse_vlan_id(native).map_err(bad)?);
                } else {
                    if vlan.get("allowed").is_some() {
                        return Err(bad("more than one VLAN list".into()));
                    }
                    vlan["allowed"] = Value::Array(parse_vlan_list(part).map_err(bad)?);
                }
            }
            Ok(vlan)
        }
        _ => Err(bad(VLAN_SPEC_HELP.into())),
    }
}

/// `--vni`: `VLAN=VNI@PEER[+PEER...]`, comma-separated, as the `vni` map of
/// `fabric.toml`; a multicast peer is the VNI's `group`, others its
/// `remotes`: `10=5010@192.0.2.2,20=5020@239.1.1.20` ->
/// `[{"vlan":10,"vni":5010,"remotes":["192.0.2.2"]},{"vlan":20,"vni":5020,"group":"239.1.1.20"}]`.
/// Addresses and ranges are checked by the daemon (the config's rules).
pub fn parse_vni_map(spec: &str) -> Result<Value, String> {
    let bad =
        |why: &str| format!("bad --vni {spec:?}: {why}; expected VLAN=VNI@PEER[+PEER...],...");
    let mut out = Vec::new();
    for item in spec.split(',') {
        let (vlan, rest) = item.split_once('=').ok_or_else(|| bad("no '='"))?;
        let (vni, peers) = rest.split_once('@').unwrap_or((rest, ""));
        let vlan = parse_vlan_id(vlan).map_err(|e| bad(&e))?;
        let vni: u32 = vni
            .trim()
            .parse()
            .map_err(|_| bad("the VNI is not a number"))?;
        let mut entry = json!({ "vlan": vlan, "vni": vni });
        let peers: Vec<&str> = peers.split('+').filter(|p| !p.is_empty()).collect();
        let multicast = |p: &str| {
            p.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_multicast())
        };
        match peers.as_slice() {
            [group] if multicast(group) => entry["group"] = json!(group),
            peers => entry["remotes"] = json!(peers),
        }
        out.push(entry);
    }
    Ok(Value::Array(out))
}

/// `10,20,100-199` -> `[10, 20, "100-199"]`.
fn parse_vlan_list(list: &str) -> Result<Vec<Value>, String> {
    let list = list.strip_prefix("allowed=").unwrap_or(list);
    let mut out = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("empty item in the VLAN list {list:?}"));
        }
        match item.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (parse_vlan_id(first)?, parse_vlan_id(last)?);
                if first > last {
                    return Err(format!("VLAN range {item} is backwards"));
                }
                out.push(json!(format!("{first}-{last}")));
            }
            None => out.push(json!(parse_vlan_id(item)?)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vni_maps() {
        assert_eq!(
            parse_vni_map("10=5010@192.0.2.2+192.0.2.3,20=5020@239.1.1.20"),
            Ok(
                json!([{"vlan":10,"vni":5010,"remotes":["192.0.2.2","192.0.2.3"]},
                      {"vlan":20,"vni":5020,"group":"239.1.1.20"}])
            )
        );
        assert_eq!(
            parse_vni_map("30=7"),
            Ok(json!([{"vlan":30,"vni":7,"remotes":[]}]))
        );
        for bad in ["", "10", "10=x@1.2.3.4", "0=5@1.2.3.4", "10=5@1.2.3.4,"] {
            assert!(parse_vni_map(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn vlan_specs() {
        assert_eq!(
            parse_vlan_spec("access:10"),
            Ok(json!({"mode":"access","tag":10}))
        );
        assert_eq!(parse_vlan_spec("access"), Ok(json!({"mode":"access"})));
        assert_eq!(parse_vlan_spec("trunk"), Ok(json!({"mode":"trunk"})));
        assert_eq!(
            parse_vlan_spec("trunk:10,20,100-199:native=1"),
            Ok(json!({"mode":"trunk","allowed":[10,20,"100-199"],"native":1}))
        );
        assert_eq!(
            parse_vlan_spec("trunk:native=5:7"),
            Ok(json!({"mode":"trunk","allowed":[7],"native":5}))
        );
        assert_eq!(
            parse_vlan_spec("trunk:native=1"),
            Ok(json!({"mode":"trunk","native":1}))
        );
        for bad in [
            "",
            "access:",
            "access:0",
            "access:4095",
            "access:10:20",
            "access:x",
            "trunk:",
            "trunk:10,,20",
            "trunk:199-100",
            "trunk:1-5000",
            "trunk:10:20",
            "trunk:native=",
            "trunk:native=1:native=2",
            "hybrid:10",
        ] {
            assert!(parse_vlan_spec(bad).is_err(), "{bad:?}");
        }
        let e = parse_vlan_spec("access:4095").unwrap_err();
        assert!(e.contains("4095 is outside 1..=4094"), "{e}");
    }
}
