//! `[[pool]]` tables: pools, their volumes, and volume exports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::de::Deserializer;
use serde::Deserialize;
use toml::Spanned;

use super::{check_name, check_socket, int_or_text, normalize, Ctx, IntOrText};
use crate::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    name: Spanned<String>,
    path: Spanned<String>,
    size: Option<Spanned<RawSize>>,
    cluster_size: Option<Spanned<RawSize>>,
    overcommit: Option<Spanned<bool>>,
    on_full: Option<Spanned<String>>,
    warn_percent: Option<Spanned<i64>>,
    #[serde(default, rename = "volume")]
    volumes: Vec<RawVolume>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    name: Spanned<String>,
    size: Option<Spanned<RawSize>>,
    block_size: Option<Spanned<i64>>,
    clone_of: Option<Spanned<String>>,
    snapshot_of: Option<Spanned<String>>,
    export: Option<Spanned<RawExport>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExport {
    socket: Option<Spanned<String>>,
    migration_socket: Option<Spanned<String>>,
    queues: Option<Spanned<i64>>,
    queue_size: Option<Spanned<i64>>,
    read_only: Option<Spanned<bool>>,
    iops_read: Option<Spanned<i64>>,
    iops_read_burst: Option<Spanned<i64>>,
    iops_write: Option<Spanned<i64>>,
    iops_write_burst: Option<Spanned<i64>>,
    bytes_per_sec_read: Option<Spanned<RawSize>>,
    bytes_per_sec_read_burst: Option<Spanned<RawSize>>,
    bytes_per_sec_write: Option<Spanned<RawSize>>,
    bytes_per_sec_write_burst: Option<Spanned<RawSize>>,
}

/// A size: an integer number of bytes or a string like `"16G"`.
struct RawSize(IntOrText);

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_or_text(d, "a size: bytes, or a string like \"16G\"").map(RawSize)
    }
}

impl Ctx<'_> {
    /// A size in bytes in `lo..=hi` that is a multiple of `multiple`.
    fn size(
        &self,
        value: &Spanned<RawSize>,
        key: &str,
        lo: u64,
        hi: u64,
        multiple: u64,
    ) -> Result<u64, ConfigError> {
        let span = value.span();
        let bytes = match value.get_ref() {
            RawSize(IntOrText::Int(b)) => u64::try_from(*b).ok(),
            RawSize(IntOrText::Text(t)) => parse_size(t).ok(),
        }
        .ok_or_else(|| {
            self.invalid(
                &span,
                key,
                "invalid size (expected bytes, or e.g. \"512K\", \"16G\")",
            )
        })?;
        if !(lo..=hi).contains(&bytes) {
            return Err(self.invalid(&span, key, format!("size {bytes} is outside {lo}..={hi}")));
        }
        if !bytes.is_multiple_of(multiple) {
            return Err(self.invalid(
                &span,
                key,
                format!("size {bytes} is not a multiple of {multiple}"),
            ));
        }
        Ok(bytes)
    }
}

pub(super) fn convert_pools(
    ctx: &Ctx,
    pools: &[RawPool],
    run_dir: &Path,
    sockets: &mut HashMap<PathBuf, usize>,
) -> Result<Vec<PoolConfig>, ConfigError> {
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut paths: HashMap<PathBuf, usize> = HashMap::new();
    let mut out = Vec::with_capacity(pools.len());
    for (i, pool) in pools.iter().enumerate() {
        let key = format!("pool[{i}]");
        let name = check_name(ctx, &pool.name, &format!("{key}.name"))?;
        if let Some(first) = names.insert(name.clone(), ctx.line(&pool.name.span())) {
            return Err(ctx.invalid(
                &pool.name.span(),
                &format!("{key}.name"),
                format!("duplicate pool name {name:?} (first defined at line {first})"),
            ));
        }
        if pool.path.get_ref().is_empty() {
            return Err(ctx.invalid(
                &pool.path.span(),
                &format!("{key}.path"),
                "must not be empty",
            ));
        }
        let path = ctx.resolve(pool.path.get_ref());
        if let Some(first) = paths.insert(path.clone(), ctx.line(&pool.path.span())) {
            return Err(ctx.invalid(
                &pool.path.span(),
                &format!("{key}.path"),
                format!(
                    "pool file {} is already used at line {first}",
                    path.display()
                ),
            ));
        }
        let size = match &pool.size {
            Some(s) => Some(ctx.size(s, &format!("{key}.size"), 1 << 20, 1 << 60, 4096)?),
            None => None,
        };
        let cluster_size = match &pool.cluster_size {
            Some(s) => {
                let k = format!("{key}.cluster_size");
                let c = ctx.size(s, &k, 4096, 2 << 20, 4096)?;
                if !c.is_power_of_two() {
                    return Err(ctx.invalid(
                        &s.span(),
                        &k,
                        format!("cluster size {c} is not a power of two"),
                    ));
                }
                c as u32
            }
            None => DEFAULT_CLUSTER_SIZE,
        };
        let overcommit = pool.overcommit.as_ref().is_some_and(|o| *o.get_ref());
        let on_full = match &pool.on_full {
            Some(o) => OnFull::parse(o.get_ref())
                .map_err(|m| ctx.invalid(&o.span(), &format!("{key}.on_full"), m))?,
            None => OnFull::default(),
        };
        let warn_percent = match &pool.warn_percent {
            Some(w) => crate::warn_percent(*w.get_ref())
                .map_err(|m| ctx.invalid(&w.span(), &format!("{key}.warn_percent"), m))?,
            None => DEFAULT_WARN_PERCENT,
        };
        let volumes = convert_volumes(ctx, pool, &key, run_dir, sockets)?;
        // Without over-commit the volumes declared here must fit in the pool.
        if let (false, Some(size)) = (overcommit, size) {
            let mut total = 0u64;
            for (j, v) in volumes.iter().enumerate() {
                let VolumeSource::New { size: vsize, .. } = v.source else {
                    continue;
                };
                total = total.saturating_add(vsize);
                if total > size {
                    let raw = &pool.volumes[j];
                    let span = raw.size.as_ref().map_or(raw.name.span(), |s| s.span());
                    return Err(ctx.invalid(
                        &span,
                        &format!("{key}.volume[{j}].size"),
                        format!(
                            "volumes total {total} bytes, more than the pool's {size}; \
                             set `overcommit = true` on the pool to allow thin over-commit"
                        ),
                    ));
                }
            }
        }
        out.push(PoolConfig {
            name,
            path,
            size,
            cluster_size,
            overcommit,
            on_full,
            warn_percent,
            volumes,
        });
    }
    Ok(out)
}

fn convert_volumes(
    ctx: &Ctx,
    pool: &RawPool,
    pool_key: &str,
    run_dir: &Path,
    sockets: &mut HashMap<PathBuf, usize>,
) -> Result<Vec<VolumeConfig>, ConfigError> {
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<VolumeConfig> = Vec::with_capacity(pool.volumes.len());
    for (j, v) in pool.volumes.iter().enumerate() {
        let key = format!("{pool_key}.volume[{j}]");
        let name = check_name(ctx, &v.name, &format!("{key}.name"))?;
        if let Some(first) = names.insert(name.clone(), ctx.line(&v.name.span())) {
            return Err(ctx.invalid(
                &v.name.span(),
                &format!("{key}.name"),
                format!(
                    "duplicate volume name {name:?} in this pool (first defined at line {first})"
                ),
            ));
        }
        let given = [
            v.size.is_some(),
            v.clone_of.is_some(),
            v.snapshot_of.is_some(),
        ];
        if given.iter().filter(|&&g| g).count() != 1 {
            return Err(ctx.invalid(
                &v.name.span(),
                &key,
                "give exactly one of `size` (a new volume), `clone_of` or `snapshot_of`",
            ));
        }
        let source = if let Some(size) = &v.size {
            let block_size = match &v.block_size {
                Some(b) if matches!(*b.get_ref(), 512 | 4096) => *b.get_ref() as u32,
                Some(b) => {
                    return Err(ctx.invalid(
                        &b.span(),
                        &format!("{key}.block_size"),
                        "block size must be 512 or 4096",
                    ));
                }
                None => 512,
            };
            let size = ctx.size(
                size,
                &format!("{key}.size"),
                4096,
                1 << 60,
                u64::from(block_size),
            )?;
            VolumeSource::New { size, block_size }
        } else {
            if let Some(b) = &v.block_size {
                return Err(ctx.invalid(
                    &b.span(),
                    &format!("{key}.block_size"),
                    "a clone or snapshot keeps its source's block size",
                ));
            }
            let (src, snapshot, k) = match (&v.clone_of, &v.snapshot_of) {
                (Some(s), _) => (s, false, "clone_of"),
                (_, Some(s)) => (s, true, "snapshot_of"),
                _ => unreachable!("exactly one source checked above"),
            };
            let source = check_name(ctx, src, &format!("{key}.{k}"))?;
            if source == name {
                return Err(ctx.invalid(
                    &src.span(),
                    &format!("{key}.{k}"),
                    "a volume cannot be its own source",
                ));
            }
            if snapshot {
                VolumeSource::SnapshotOf(source)
            } else {
                VolumeSource::CloneOf(source)
            }
        };
        let export = match &v.export {
            Some(e) => Some(convert_export(
                ctx, e, &key, &name, &source, run_dir, sockets,
            )?),
            None => None,
        };
        out.push(VolumeConfig {
            name,
            key,
            source,
            export,
        });
    }
    Ok(out)
}

fn convert_export(
    ctx: &Ctx,
    export: &Spanned<RawExport>,
    volume_key: &str,
    volume: &str,
    source: &VolumeSource,
    run_dir: &Path,
    sockets: &mut HashMap<PathBuf, usize>,
) -> Result<ExportConfig, ConfigError> {
    let key = format!("{volume_key}.export");
    let e = export.get_ref();
    let (socket, span, socket_key) = match &e.socket {
        Some(s) if s.get_ref().is_empty() => {
            return Err(ctx.invalid(&s.span(), &format!("{key}.socket"), "must not be empty"));
        }
        Some(s) => (ctx.resolve(s.get_ref()), s.span(), format!("{key}.socket")),
        None => (
            normalize(&run_dir.join(format!("{volume}.sock"))),
            export.span(),
            key.clone(),
        ),
    };
    check_socket(ctx, &socket, &span, &socket_key, sockets)?;
    let migration_socket = match &e.migration_socket {
        Some(s) if s.get_ref().is_empty() => {
            return Err(ctx.invalid(
                &s.span(),
                &format!("{key}.migration_socket"),
                "must not be empty",
            ));
        }
        Some(s) => {
            let path = ctx.resolve(s.get_ref());
            let k = format!("{key}.migration_socket");
            check_socket(ctx, &path, &s.span(), &k, sockets)?;
            Some(path)
        }
        None => None,
    };
    let queues = match &e.queues {
        Some(q) => ctx.int(q, &format!("{key}.queues"), "queue count", 1, 16)?,
        None => DEFAULT_EXPORT_QUEUES,
    };
    let queue_size = match &e.queue_size {
        Some(v) => ctx.queue_size(v, &format!("{key}.queue_size"), 8, 1024)?,
        None => DEFAULT_EXPORT_QUEUE_SIZE,
    };
    let snapshot = matches!(source, VolumeSource::SnapshotOf(_));
    let read_only = match &e.read_only {
        Some(r) if snapshot && !*r.get_ref() => {
            return Err(ctx.invalid(
                &r.span(),
                &format!("{key}.read_only"),
                "snapshots are always exported read-only",
            ));
        }
        Some(r) => *r.get_ref(),
        None => snapshot,
    };
    Ok(ExportConfig {
        socket,
        migration_socket,
        queues,
        queue_size,
        read_only,
        limits: export_limits(ctx, e, &key)?,
    })
}

/// The limit keys of an export, checked by [`ExportLimits::from_keys`].
fn export_limits(ctx: &Ctx, e: &RawExport, key: &str) -> Result<ExportLimits, ConfigError> {
    let mut values: Vec<(&str, std::ops::Range<usize>, u64)> = Vec::new();
    let counts = [
        ("iops_read", &e.iops_read),
        ("iops_read_burst", &e.iops_read_burst),
        ("iops_write", &e.iops_write),
        ("iops_write_burst", &e.iops_write_burst),
    ];
    for (k, v) in counts {
        if let Some(v) = v {
            let n = ctx.int(v, &format!("{key}.{k}"), "rate", 0, i64::MAX)?;
            values.push((k, v.span(), n));
        }
    }
    let sizes = [
        ("bytes_per_sec_read", &e.bytes_per_sec_read),
        ("bytes_per_sec_read_burst", &e.bytes_per_sec_read_burst),
        ("bytes_per_sec_write", &e.bytes_per_sec_write),
        ("bytes_per_sec_write_burst", &e.bytes_per_sec_write_burst),
    ];
    for (k, v) in sizes {
        if let Some(v) = v {
            let n = ctx.size(v, &format!("{key}.{k}"), 0, u64::MAX, 1)?;
            values.push((k, v.span(), n));
        }
    }
    let value = |k: &str| values.iter().find(|(n, ..)| *n == k).map(|v| v.2);
    ExportLimits::from_keys(value).map_err(|err| {
        let span = values
            .iter()
            .find(|(n, ..)| *n == err.key)
            .map(|v| v.1.clone())
            .unwrap_or_default();
        ctx.invalid(&span, &format!("{key}.{}", err.key), err.message)
    })
}
