//! Test support: a strict OpenMetrics text parser (so the tests check the
//! exposition's grammar, not substrings) and a snapshot with every family.

use crate::runtime::snapshot::{
    ExportSample, LatencySample, PoolSample, PortSample, Snapshot, SwitchSample, TunnelSample,
    VolumeSample,
};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use vhost_backends::blk::{LatencySnapshot, TimedOp};

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Sample {
    pub(super) name: String,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) value: f64,
}

#[derive(Debug, Default)]
pub(super) struct MetricFamily {
    pub(super) kind: String,
    pub(super) help: Option<String>,
    pub(super) unit: Option<String>,
    pub(super) samples: Vec<Sample>,
}

#[derive(Debug, Default)]
pub(super) struct Exposition {
    pub(super) families: HashMap<String, MetricFamily>,
    pub(super) order: Vec<String>,
}

fn valid_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn valid_label(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

pub(super) fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s.starts_with('+') || s.is_empty() => Err(format!("bad value {s:?}")),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    if let Some(r) = rest.strip_prefix('}') {
        return Ok((labels, r));
    }
    loop {
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !valid_label(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("unquoted label value")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    'n' => value.push('\n'),
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, '\n') => return Err("newline in label value".into()),
                (_, c) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("duplicate label {name}"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        rest = rest.strip_prefix(',').ok_or("expected , or }")?;
    }
}

/// Parses `text`, strictly: every sample belongs to the family declared
/// just before it, with a suffix its type allows; ends with `# EOF`.
pub(super) fn parse(text: &str) -> Result<Exposition, String> {
    let body = text.strip_suffix("# EOF\n").ok_or("no # EOF at the end")?;
    let mut exp = Exposition::default();
    let mut current: Option<String> = None;
    for (n, line) in body.lines().enumerate() {
        let ctx = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if let Some(meta) = line.strip_prefix("# ") {
            let mut it = meta.splitn(3, ' ');
            let (Some(kw), Some(name), Some(arg)) = (it.next(), it.next(), it.next()) else {
                return Err(ctx("short metadata line".into()));
            };
            if !valid_name(name) {
                return Err(ctx("bad family name".into()));
            }
            if current.as_deref() != Some(name) {
                if exp.families.contains_key(name) {
                    return Err(ctx("family declared twice".into()));
                }
                exp.families
                    .insert(name.to_owned(), MetricFamily::default());
                exp.order.push(name.to_owned());
                current = Some(name.to_owned());
            }
            let fam = exp.families.get_mut(name).unwrap();
            match kw {
                "HELP" => fam.help = Some(arg.to_owned()),
                "TYPE" => {
                    if !["counter", "gauge", "histogram"].contains(&arg) {
                        return Err(ctx("unexpected type".into()));
                    }
                    fam.kind = arg.to_owned();
                }
                "UNIT" => {
                    if !name.ends_with(&format!("_{arg}")) {
                        return Err(ctx("family name lacks its unit".into()));
                    }
                    fam.unit = Some(arg.to_owned());
                }
                _ => return Err(ctx("unknown metadata".into())),
            }
            continue;
        }
        let fam_name = current
            .clone()
            .ok_or_else(|| ctx("sample before TYPE".into()))?;
        let fam = exp.families.get_mut(&fam_name).unwrap();
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| ctx("no value".into()))?;
        let name = &line[..name_end];
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end + 1..]).map_err(ctx)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| ctx("no space".into()))?;
        if value.contains(' ') {
            return Err(ctx("trailing fields".into()));
        }
        let value = parse_value(value).map_err(ctx)?;
        let suffix = name
            .strip_prefix(fam_name.as_str())
            .ok_or_else(|| ctx("sample of another family".into()))?;
        let allowed: &[&str] = match fam.kind.as_str() {
            "counter" => &["_total"],
            "gauge" => &[""],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => return Err(ctx("sample before TYPE".into())),
        };
        if !allowed.contains(&suffix) {
            return Err(ctx(format!("suffix {suffix:?} not allowed")));
        }
        if (suffix == "_bucket") != labels.contains_key("le") {
            return Err(ctx("le only on buckets".into()));
        }
        if fam.kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(ctx("negative counter".into()));
        }
        fam.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    for (name, fam) in &exp.families {
        if fam.kind.is_empty() || fam.help.is_none() {
            return Err(format!("{name}: no TYPE or HELP"));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &fam.samples {
            if !seen.insert((s.name.clone(), s.labels.clone())) {
                return Err(format!("{name}: duplicate sample {s:?}"));
            }
        }
        if fam.kind == "histogram" {
            check_histograms(name, fam)?;
        }
    }
    Ok(exp)
}

/// Buckets ascending in `le`, counts monotone, `+Inf` equal to `_count`.
fn check_histograms(name: &str, fam: &MetricFamily) -> Result<(), String> {
    type Labels = Vec<(String, String)>;
    let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for s in &fam.samples {
        let mut key = s.labels.clone();
        let le = key.remove("le");
        let key: Vec<_> = key.into_iter().collect();
        match s.name.strip_prefix(name).unwrap() {
            "_bucket" => groups
                .entry(key)
                .or_default()
                .push((parse_value(&le.unwrap())?, s.value)),
            "_count" => {
                counts.insert(key, s.value);
            }
            _ => {}
        }
    }
    if groups.len() != counts.len() {
        return Err(format!("{name}: buckets and counts differ"));
    }
    for (key, buckets) in groups {
        for w in buckets.windows(2) {
            if w[0].0 >= w[1].0 || w[0].1 > w[1].1 {
                return Err(format!("{name}{key:?}: buckets not monotone: {w:?}"));
            }
        }
        let last = buckets.last().unwrap();
        if last.0 != f64::INFINITY || Some(&last.1) != counts.get(&key) {
            return Err(format!("{name}{key:?}: +Inf bucket is not the count"));
        }
    }
    Ok(())
}

pub(super) fn value(exp: &Exposition, sample: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<f64> = exp
        .families
        .values()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == sample && s.labels == want)
        .map(|s| s.value)
        .collect();
    assert_eq!(found.len(), 1, "{sample}{labels:?}: {found:?}");
    found[0]
}

/// Tunnel counters with rx 41/4100, tx 42/4200, one `bad_header` drop and
/// 43 segments coalesced.
pub(super) fn tunnel_counters() -> vswitch::vxlan::TunnelCountersSnapshot {
    let c = vswitch::vxlan::TunnelCounters::default();
    c.add_rx(41, 4100);
    c.add_tx(42, 4200);
    c.add_drop(vswitch::vxlan::TunnelDrop::BadHeader);
    c.add_coalesced(43);
    c.snapshot()
}

pub(super) fn sample_snapshot() -> Snapshot {
    let hist = vhost_backends::blk::LatencyHistogram::default();
    for us in [10, 20, 20, 300, 5000, 2_000_000] {
        hist.record(Duration::from_micros(us));
    }
    Snapshot {
        ports: vec![
            PortSample {
                switch: "br0".into(),
                port: "vm1".into(),
                link_up: true,
                rx_packets: 10,
                rx_bytes: 1000,
                tx_packets: 20,
                tx_bytes: 2000,
                drops: vec![("runt".into(), 3), ("no_buffer".into(), 4)],
                broken_queues: 6,
                announces: 2,
                tx_gso_packets: 7,
                gso_segmented: 8,
                csum_completed: 9,
                queues: vec![
                    vswitch::QueueSnapshot {
                        rx_packets: 4,
                        tx_packets: 15,
                    },
                    vswitch::QueueSnapshot {
                        rx_packets: 6,
                        tx_packets: 5,
                    },
                ],
            },
            PortSample {
                switch: "br0".into(),
                port: "vm2".into(),
                ..Default::default()
            },
        ],
        switches: vec![SwitchSample {
            switch: "br0".into(),
            fdb: vswitch::FdbStats {
                entries: 2,
                learned: 5,
                moved: 1,
                aged: 3,
                refused_full: 7,
                refused_port_limit: 8,
                refused_move: 9,
            },
        }],
        tunnels: vec![TunnelSample {
            switch: "br0".into(),
            port: "vx0".into(),
            counters: tunnel_counters(),
            remote_fdb: vswitch::vxlan::RemoteFdbStats {
                entries: 4,
                learned: 31,
                moved: 32,
                aged: 33,
                refused_full: 34,
                refused_vtep_limit: 35,
            },
        }],
        exports: vec![ExportSample {
            pool: "fast".into(),
            volume: "we\"ird\\vol\nname".into(),
            reads: 11,
            writes: 12,
            read_bytes: 4096 * 11,
            write_bytes: 4096 * 12,
            flushes: 13,
            discards: 14,
            io_errors: 15,
            out_of_space: 16,
            invalid: 17,
            bad_chains: 18,
            too_large: 19,
            broken_queues: 20,
            resubmitted: 21,
            handover_waits: 22,
            handover_refused: 23,
            throttled: 24,
            latency: vec![
                LatencySample::new(TimedOp::Read, &hist.snapshot()),
                LatencySample::new(TimedOp::Write, &LatencySnapshot::default()),
                // A histogram without its +Inf bucket gets one.
                LatencySample {
                    op: "flush".into(),
                    buckets: vec![(0.001, 2), (0.01, 1)],
                    sum_seconds: 0.012,
                },
            ],
        }],
        pools: vec![PoolSample {
            pool: "fast".into(),
            cluster_size: 65536,
            clusters: 16384,
            capacity_bytes: 1 << 30,
            used_bytes: 1 << 20,
            free_bytes: (1 << 30) - (1 << 20),
            releasing_bytes: 16384,
            provisioned_bytes: 2 << 30,
            used_percent: 0,
            warn_percent: 80,
            over_warn: false,
            paused: 3,
            paused_total: 41,
        }],
        volumes: vec![VolumeSample {
            pool: "fast".into(),
            volume: "we\"ird\\vol\nname".into(),
            kind: vblock::meta::VolumeKind::Volume,
            size_bytes: 2 << 30,
            allocated_bytes: 1 << 20,
            exclusive_bytes: 65536,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_is_strict() {
        for bad in [
            "x_total 1\n# EOF\n",
            "# HELP x h\n# TYPE x counter\nx 1\n# EOF\n",
            "# HELP x h\n# TYPE x counter\nx_total{a=\"1\",a=\"2\"} 1\n# EOF\n",
            "# HELP x h\n# TYPE x gauge\nx 1\n",
            "# HELP x h\n# TYPE x gauge\nx{a=\"\\q\"} 1\n# EOF\n",
            "# HELP x h\n# TYPE x histogram\nx_bucket{le=\"1\"} 2\nx_bucket{le=\"+Inf\"} 1\nx_count 1\nx_sum 0\n# EOF\n",
            "# HELP x h\n# TYPE x histogram\nx_bucket{le=\"+Inf\"} 2\nx_count 1\nx_sum 0\n# EOF\n",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
