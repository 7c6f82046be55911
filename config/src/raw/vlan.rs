//! A port's `vlan` table: access or trunk, and the `allowed` list.

use std::ops::Range;

use serde::de::Deserializer;
use serde::Deserialize;
use toml::Spanned;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVlan {
    pub(super) mode: Spanned<String>,
    pub(super) tag: Option<Spanned<i64>>,
    pub(super) allowed: Option<Spanned<Vec<Spanned<RawVlanItem>>>>,
    pub(super) native: Option<Spanned<i64>>,
}

/// One entry of `allowed`: `10` or `"100-199"`.
pub(super) struct RawVlanItem(IntOrText);

impl<'de> Deserialize<'de> for RawVlanItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_or_text(d, "a VLAN id or a range string like \"100-199\"").map(RawVlanItem)
    }
}

pub(super) fn convert_vlan(
    ctx: &Ctx,
    vlan: &Spanned<RawVlan>,
    key: &str,
) -> Result<VlanConfig, ConfigError> {
    let raw = vlan.get_ref();
    // Keys of the other mode are an error rather than ignored: a trunk
    // `tag` or an access `allowed` list means the author expected something
    // this port will not do.
    let reject = |span: Range<usize>, k: &str, mode: &str| {
        Err(ctx.invalid(
            &span,
            &format!("{key}.{k}"),
            format!("`{k}` is not valid with mode = \"{mode}\""),
        ))
    };
    match raw.mode.get_ref().as_str() {
        "access" => {
            if let Some(a) = &raw.allowed {
                return reject(a.span(), "allowed", "access");
            }
            if let Some(n) = &raw.native {
                return reject(n.span(), "native", "access");
            }
            let tag = match &raw.tag {
                Some(t) => ctx.l2(t, &format!("{key}.tag"))?,
                None => VlanId::DEFAULT,
            };
            Ok(VlanConfig::Access { tag })
        }
        "trunk" => {
            if let Some(t) = &raw.tag {
                return reject(t.span(), "tag", "trunk");
            }
            let native = match &raw.native {
                Some(n) => Some(ctx.l2(n, &format!("{key}.native"))?),
                None => None,
            };
            let mut allowed = match &raw.allowed {
                Some(list) => {
                    let mut set = VlanSet::new();
                    for (i, item) in list.get_ref().iter().enumerate() {
                        let k = format!("{key}.allowed[{i}]");
                        let (first, last) = vlan_item(ctx, item, &k)?;
                        set.insert_range(first, last);
                    }
                    if set.is_empty() && native.is_none() {
                        return Err(ctx.invalid(
                            &list.span(),
                            &format!("{key}.allowed"),
                            "trunk carries no VLAN: list at least one or set `native`",
                        ));
                    }
                    set
                }
                None => VlanSet::all(),
            };
            // The native VLAN is implicitly allowed (documented on VlanConfig).
            allowed.extend(native);
            Ok(VlanConfig::Trunk { allowed, native })
        }
        other => Err(ctx.invalid(
            &raw.mode.span(),
            &format!("{key}.mode"),
            format!("unknown VLAN mode {other:?} (expected \"access\" or \"trunk\")"),
        )),
    }
}

/// One `allowed` entry as an inclusive range.
pub(super) fn vlan_item(
    ctx: &Ctx,
    item: &Spanned<RawVlanItem>,
    key: &str,
) -> Result<(VlanId, VlanId), ConfigError> {
    let span = item.span();
    let id = |v: i64| ctx.l2::<VlanId>(&Spanned::new(span.clone(), v), key);
    match item.get_ref() {
        RawVlanItem(IntOrText::Int(v)) => id(*v).map(|v| (v, v)),
        RawVlanItem(IntOrText::Text(s)) => {
            let bad = || {
                ctx.invalid(
                    &span,
                    key,
                    format!("invalid VLAN range {s:?} (expected \"first-last\", e.g. \"100-199\")"),
                )
            };
            let (a, b) = s.split_once('-').ok_or_else(bad)?;
            let a: i64 = a.trim().parse().map_err(|_| bad())?;
            let b: i64 = b.trim().parse().map_err(|_| bad())?;
            let (a, b) = (id(a)?, id(b)?);
            if a > b {
                return Err(ctx.invalid(
                    &span,
                    key,
                    format!("VLAN range {s:?} is reversed ({a} > {b})"),
                ));
            }
            Ok((a, b))
        }
    }
}
