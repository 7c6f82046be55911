//! Rendering for humans: sizes, UUIDs, kinds, space figures.

use std::io::{self, Write};

use crate::meta::VolumeKind;
use crate::pool::PoolSpace;

/// Bytes for humans: "512 B", "64 KiB", "1.5 GiB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >> (10 * (unit + 1)) > 0 {
        unit += 1;
    }
    let scale = 1u64 << (10 * unit);
    if bytes.is_multiple_of(scale) {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

pub(super) fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Space figures, one per line, each line starting with `indent`.
pub(super) fn write_space(out: &mut dyn Write, s: &PoolSpace, indent: &str) -> io::Result<()> {
    let cs = u64::from(s.cluster_size);
    let line = |out: &mut dyn Write, what: &str, clusters: u64| {
        let bytes = clusters.saturating_mul(cs);
        writeln!(
            out,
            "{indent}{what:<16} {clusters} cluster{} = {bytes} bytes ({})",
            plural(clusters),
            human(bytes)
        )
    };
    line(out, "capacity:", s.clusters)?;
    line(out, "used:", s.used_clusters)?;
    line(out, "  metadata:", s.metadata_clusters)?;
    line(out, "free:", s.free_clusters)?;
    line(out, "releasing:", s.releasing_clusters)?;
    let ratio = if s.capacity == 0 {
        0.0
    } else {
        s.provisioned as f64 / s.capacity as f64
    };
    writeln!(
        out,
        "{indent}{:<16} {} bytes ({}), over-commit {ratio:.2}x",
        "provisioned:",
        s.provisioned,
        human(s.provisioned)
    )
}

pub(super) fn uuid(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

pub(super) fn kind(k: VolumeKind) -> &'static str {
    match k {
        VolumeKind::Volume => "volume",
        VolumeKind::Snapshot => "snapshot",
        VolumeKind::Clone => "clone",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(64 << 10), "64 KiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(u64::MAX), "16.0 EiB");
    }
}
