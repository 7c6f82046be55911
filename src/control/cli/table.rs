//! Output: aligned human tables, human sizes and durations, and the raw
//! `--json` text.

use super::Call;
use crate::control::protocol::{FdbEntryInfo, PoolInfo, PortInfo, QueueInfo, Status, VolumeInfo};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt::Write as _;

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// An aligned text table: a header line, then one line per row, columns
/// separated by two spaces, no trailing spaces.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra ones dropped.
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        for cells in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (c, cell) in cells.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[c] - width(cell));
                match self.columns[c].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Bytes for humans: `512 B`, `1.0 KiB`, `1.5 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // 1023.96 would print as "1024.0": go up a unit instead.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Seconds for humans: `42s`, `5m 06s`, `2h 03m 04s`, `3d 4h 05m`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h {m:02}m")
    } else if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Text from the daemon, with control characters (which would break the
/// table or the terminal) replaced by `?`.
pub(super) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn port_table(ports: &[PortInfo]) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("SWITCH", Left),
        ("PORT", Left),
        ("VLAN", Left),
        ("LINK", Left),
        ("RX PKTS", Right),
        ("RX BYTES", Right),
        ("TX PKTS", Right),
        ("TX BYTES", Right),
        ("BROKEN Q", Right),
        ("ANNOUNCES", Right),
        ("GSO/SEG/CSUM", Right),
        ("QUEUES RX/TX", Left),
        ("SOCKET", Left),
        ("POLICING", Left),
        ("DROPS", Left),
    ]);
    for p in ports {
        let total: u64 = p.drops.values().fold(0, |a, b| a.saturating_add(*b));
        let reasons: Vec<String> = p
            .drops
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(why, n)| format!("{} {n}", clean(why)))
            .collect();
        let drops = if reasons.is_empty() {
            total.to_string()
        } else {
            format!("{total} ({})", reasons.join(", "))
        };
        t.row(vec![
            clean(&p.switch),
            clean(&p.name),
            clean(&p.vlan),
            match (p.admin_up, p.link) {
                (false, _) => "admin down",
                (true, true) => "up",
                (true, false) => "down",
            }
            .into(),
            p.rx_packets.to_string(),
            human_size(p.rx_bytes),
            p.tx_packets.to_string(),
            human_size(p.tx_bytes),
            p.broken_queues.to_string(),
            p.announces.to_string(),
            format!(
                "{}/{}/{}",
                p.tx_gso_packets, p.gso_segmented, p.csum_completed
            ),
            queue_cell(&p.queues),
            clean(&p.socket),
            match (p.rate, p.burst) {
                (Some(rate), Some(burst)) => format!("{rate}/{burst} kbit"),
                _ => "-".into(),
            },
            drops,
        ]);
    }
    t.render()
}

/// A multi-queue port's packets per queue, `q0 RX/TX q1 RX/TX ...`; `-`
/// for a single-queue port (its totals are the row's).
fn queue_cell(queues: &[QueueInfo]) -> String {
    if queues.is_empty() {
        return "-".into();
    }
    let cells: Vec<String> = queues
        .iter()
        .enumerate()
        .map(|(i, q)| format!("q{i} {}/{}", q.rx_packets, q.tx_packets))
        .collect();
    cells.join(" ")
}

fn fdb_table(entries: &mut [FdbEntryInfo]) -> String {
    use Align::*;
    entries.sort_by(|a, b| (a.vlan, &a.mac).cmp(&(b.vlan, &b.mac)));
    let mut t = Table::new(&[
        ("VLAN", Right),
        ("MAC", Left),
        ("PORT", Left),
        ("TYPE", Left),
        ("AGE", Right),
    ]);
    for e in entries.iter() {
        t.row(vec![
            e.vlan.to_string(),
            clean(&e.mac),
            match &e.vtep {
                Some(vtep) => format!("{} via {}", clean(&e.port), clean(vtep)),
                None => clean(&e.port),
            },
            if e.is_static { "static" } else { "learned" }.into(),
            if e.is_static {
                "-".into()
            } else {
                human_duration(e.age_secs.into())
            },
        ]);
    }
    t.render()
}

fn pool_table(pools: &[PoolInfo]) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("POOL", Left),
        ("SIZE", Right),
        ("USED", Right),
        ("FREE", Right),
        ("RELEASING", Right),
        ("PROVISIONED", Right),
        ("USE%", Right),
        ("WARN%", Right),
        ("ON_FULL", Left),
        ("PAUSED", Right),
        ("CLUSTER", Right),
        ("PATH", Left),
    ]);
    for p in pools {
        let use_pct = if p.capacity == 0 {
            "-".into()
        } else {
            format!("{:.1}%", p.used as f64 * 100.0 / p.capacity as f64)
        };
        t.row(vec![
            clean(&p.name),
            human_size(p.capacity),
            human_size(p.used),
            human_size(p.free),
            human_size(p.releasing),
            human_size(p.provisioned),
            use_pct,
            // `!` once used reaches the threshold.
            format!("{}{}", p.warn_percent, if p.over_warn { "!" } else { "" }),
            clean(&p.on_full),
            p.paused.to_string(),
            human_size(p.cluster_size.into()),
            clean(&p.path),
        ]);
    }
    t.render()
}

fn volume_table(volumes: &[VolumeInfo]) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("POOL", Left),
        ("VOLUME", Left),
        ("KIND", Left),
        ("SIZE", Right),
        ("BLOCK", Right),
        ("ALLOCATED", Right),
        ("EXCLUSIVE", Right),
        ("SHARED", Right),
        ("POOL%", Right),
        ("ORIGIN", Left),
        ("MODE", Left),
        ("EXPORT", Left),
        ("MIGRATION", Left),
        ("LIMITS RATE/BURST", Left),
    ]);
    for v in volumes {
        t.row(vec![
            clean(&v.pool),
            clean(&v.name),
            clean(&v.kind),
            human_size(v.size),
            v.block_size.to_string(),
            human_size(v.allocated),
            human_size(v.exclusive),
            // From the two figures every daemon sends (an older one has no `shared`).
            human_size(v.allocated.saturating_sub(v.exclusive)),
            match v.pool_capacity {
                0 => "-".into(),
                c => format!("{:.1}%", v.allocated as f64 * 100.0 / c as f64),
            },
            v.origin.as_deref().map_or("-".into(), clean),
            if v.read_only { "ro" } else { "rw" }.into(),
            match (v.export.as_deref(), v.paused) {
                (None, _) => "-".into(),
                (Some(e), false) => clean(e),
                (Some(e), true) => format!("{} (paused)", clean(e)),
            },
            v.migration_socket.as_deref().map_or("-".into(), clean),
            limits_cell(v),
        ]);
    }
    t.render()
}

/// An export's limits, `iops_read 2000/200 bytes_per_sec_write 1048576/104857`;
/// `-` for none.
fn limits_cell(v: &VolumeInfo) -> String {
    let cells: Vec<String> = fabric_config::EXPORT_LIMIT_KEYS
        .iter()
        .filter_map(|(rate, burst)| {
            let r = v.limits.get(*rate)?;
            let b = v
                .limits
                .get(*burst)
                .map_or(String::new(), |b| format!("/{b}"));
            Some(format!("{rate} {r}{b}"))
        })
        .collect();
    if cells.is_empty() {
        "-".into()
    } else {
        cells.join(" ")
    }
}

fn status_text(s: &Status) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "version   {}", clean(&s.version));
    let _ = writeln!(t, "protocol  {}", s.protocol);
    let _ = writeln!(t, "pid       {}", s.pid);
    let _ = writeln!(t, "uptime    {}", human_duration(s.uptime_secs));
    let _ = writeln!(
        t,
        "config    {}",
        s.config.as_deref().map_or("-".into(), clean)
    );
    t
}

#[derive(serde::Deserialize)]
struct Flushed {
    flushed: u64,
}

#[derive(serde::Deserialize)]
struct Removed {
    removed: bool,
}

#[derive(serde::Deserialize)]
struct Filter {
    filter: String,
}

#[derive(serde::Deserialize)]
struct Saved {
    path: String,
}

/// An `args` string field, for messages.
fn arg(args: &Value, key: &str) -> String {
    match args.get(key) {
        Some(Value::String(s)) => clean(s),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

/// The human output for `call`'s `result`; an error if the result does not
/// have the documented shape.
pub fn render(call: &Call, result: Value) -> Result<String, String> {
    fn typed<T: DeserializeOwned>(op: &str, v: Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| format!("result of {op}: {e}"))
    }
    let a = &call.args;
    Ok(match call.op {
        "daemon.status" => status_text(&typed(call.op, result)?),
        "port.list" => port_table(&typed::<Vec<PortInfo>>(call.op, result)?),
        "port.add" | "port.limit" => port_table(&[typed(call.op, result)?]),
        "port.remove" => format!("removed port {}\n", arg(a, "name")),
        "port.set" => port_table(&[typed(call.op, result)?]),
        "fdb.del" => {
            let removed = typed::<Removed>(call.op, result)?.removed;
            let what = if removed { "removed" } else { "no" };
            format!(
                "{what} entry {} in VLAN {} on {}\n",
                arg(a, "mac"),
                arg(a, "vlan"),
                arg(a, "switch")
            )
        }
        "log.level" => format!(
            "log filter is now {}\n",
            clean(&typed::<Filter>(call.op, result)?.filter)
        ),
        "fdb.show" => fdb_table(&mut typed::<Vec<FdbEntryInfo>>(call.op, result)?),
        "fdb.flush" => {
            let n = typed::<Flushed>(call.op, result)?.flushed;
            let port = match a.get("port") {
                Some(_) => format!(" behind port {}", arg(a, "port")),
                None => String::new(),
            };
            let s = if n == 1 { "entry" } else { "entries" };
            format!("flushed {n} {s}{port} from {}\n", arg(a, "switch"))
        }
        "fdb.add" => format!(
            "added static entry: {} in VLAN {} behind port {} on {}\n",
            arg(a, "mac"),
            arg(a, "vlan"),
            arg(a, "port"),
            arg(a, "switch")
        ),
        "pool.list" => pool_table(&typed::<Vec<PoolInfo>>(call.op, result)?),
        "pool.set" => pool_table(&[typed(call.op, result)?]),
        "volume.list" => volume_table(&typed::<Vec<VolumeInfo>>(call.op, result)?),
        "volume.create" | "volume.resize" | "volume.snapshot" | "volume.clone"
        | "volume.rename" | "volume.revert" | "export.add" | "export.limit" | "export.pause"
        | "export.resume" => volume_table(&[typed(call.op, result)?]),
        "volume.delete" => format!("deleted volume {}/{}\n", arg(a, "pool"), arg(a, "name")),
        "export.remove" => format!(
            "removed the export of {}/{}\n",
            arg(a, "pool"),
            arg(a, "volume")
        ),
        "config.save" => format!(
            "saved the configuration to {}\n",
            clean(&typed::<Saved>(call.op, result)?.path)
        ),
        // Every op in the table above is handled; print anything else raw.
        _ => json_text(&result),
    })
}

pub(super) fn json_text(value: &Value) -> String {
    let mut s = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    s.push('\n');
    s
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::cli::spec::call;
    use serde_json::json;

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1 << 30), "1.0 GiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size((1 << 20) - 1), "1.0 MiB");
        assert_eq!(human_size(10 << 40), "10.0 TiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(306), "5m 06s");
        assert_eq!(human_duration(7384), "2h 03m 04s");
        assert_eq!(human_duration(3 * 86400 + 4 * 3600 + 5 * 60), "3d 4h 05m");
    }

    #[test]
    fn table_alignment() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("SIZE", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["a".into(), "1.0 GiB".into(), "x".into()]);
        t.row(vec!["longer-name".into(), "5 B".into(), String::new()]);
        assert_eq!(
            t.render(),
            "NAME            SIZE  NOTE\n\
             a            1.0 GiB  x\n\
             longer-name      5 B\n"
        );
        let t = Table::new(&[("A", Align::Left)]);
        assert_eq!(t.render(), "A\n");
    }

    #[test]
    fn rendering() {
        let vol = json!([{"pool":"p1","name":"disk\n1","kind":"volume","size":1u64<<30,"block_size":512,
                          "read_only":false,"allocated":3u64<<29,"exclusive":0,"export":null}]);
        let text = render(&call("volume.list", json!({})), vol).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("POOL  VOLUME  KIND"), "{text}");
        assert!(
            lines[1].contains("disk?1")
                && lines[1].contains("1.0 GiB")
                && lines[1].contains("1.5 GiB")
        );
        let last: Vec<&str> = lines[1].split_whitespace().rev().take(4).collect();
        assert_eq!(last, ["-", "-", "-", "rw"], "{text}");
        let exported = json!([{"pool":"p1","name":"d","kind":"volume","size":1u64<<30,"block_size":512,
                               "read_only":false,"allocated":0,"exclusive":0,"export":"/r/d.sock",
                               "migration_socket":"/r/d.migrate.sock"}]);
        let text = render(&call("volume.list", json!({})), exported).unwrap();
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .ends_with("/r/d.sock  /r/d.migrate.sock  -"),
            "{text}"
        );
        // The wrong shape is an error, not a panic.
        assert!(render(&call("volume.list", json!({})), json!({"x":1})).is_err());
        assert!(render(&call("fdb.flush", json!({"switch":"br0"})), Value::Null).is_err());
        assert_eq!(
            render(
                &call("fdb.flush", json!({"switch":"br0","port":"vm1"})),
                json!({"flushed":1})
            )
            .unwrap(),
            "flushed 1 entry behind port vm1 from br0\n"
        );
        let status =
            json!({"version":"0.1.0","protocol":1,"pid":42,"uptime_secs":3661,"config":null});
        let text = render(&call("daemon.status", json!({})), status).unwrap();
        assert!(
            text.contains("uptime    1h 01m 01s\n") && text.contains("config    -\n"),
            "{text}"
        );
    }
}
