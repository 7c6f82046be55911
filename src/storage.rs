//! The daemon's storage side: pools opened (or created), the volumes the
//! config declares made to exist, and their vhost-user-blk exports served.

use fabric_config::{ExportConfig, PoolConfig, VolumeConfig, VolumeSource};
use std::io;
use std::sync::{Arc, Mutex};
use vblock::dev::FileDev;
use vblock::pool::{Pool, PoolGauges, PoolOptions};
use vhost_backends::blk::{BlkExport, BlkExportConfig, BlkExportHandle, SharedPool};
use vhost_backends::session::check_socket_free;

/// One open pool.
pub struct OpenPool {
    pub name: String,
    pub path: std::path::PathBuf,
    pub pool: SharedPool,
    /// The pool's space figures, readable without its lock (metrics).
    pub gauges: Arc<PoolGauges>,
}

impl OpenPool {
    pub fn new(name: &str, path: &std::path::Path, pool: Pool<FileDev>) -> OpenPool {
        OpenPool {
            name: name.to_owned(),
            path: path.to_owned(),
            gauges: pool.gauges().clone(),
            pool: Arc::new(Mutex::new(pool)),
        }
    }
}

/// One served export.
pub struct ServedExport {
    pub export: Arc<BlkExport>,
    pub handle: BlkExportHandle,
}

fn err(key: &str, message: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{key}: {message}"))
}

/// Opens the pool at `cfg.path`, creating and formatting the file at
/// `cfg.size` if it does not exist.
pub fn open_pool(cfg: &PoolConfig, key: &str) -> io::Result<OpenPool> {
    let pool = if cfg.path.exists() {
        let dev = FileDev::open(&cfg.path).map_err(|e| err(&format!("{key}.path"), e))?;
        let pool = Pool::open(dev).map_err(|e| {
            err(
                &format!("{key}.path"),
                format!("{}: cannot open the pool: {e}", cfg.path.display()),
            )
        })?;
        log::info!(
            "pool {}: opened {} ({} volumes, {} of {} clusters used)",
            cfg.name,
            cfg.path.display(),
            pool.volumes().len(),
            pool.space().used_clusters,
            pool.space().clusters
        );
        pool
    } else {
        let size = cfg.size.ok_or_else(|| {
            err(
                &format!("{key}.path"),
                format!(
                    "{} does not exist; give `size` to create it",
                    cfg.path.display()
                ),
            )
        })?;
        if let Some(dir) = cfg.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let opts = PoolOptions {
            cluster_size: cfg.cluster_size,
            ..PoolOptions::default()
        };
        opts.layout(size)
            .map_err(|e| err(&format!("{key}.size"), e))?;
        let dev = FileDev::create(&cfg.path, size).map_err(|e| err(&format!("{key}.path"), e))?;
        let pool = Pool::create(dev, &opts).map_err(|e| err(&format!("{key}.path"), e))?;
        log::info!(
            "pool {}: created {} ({} bytes, cluster {} bytes)",
            cfg.name,
            cfg.path.display(),
            size,
            cfg.cluster_size
        );
        pool
    };
    Ok(OpenPool::new(&cfg.name, &cfg.path, pool))
}

/// Makes the volume exist: created from its source on first start; an
/// existing one is kept (grown if the config asks for more).
pub fn ensure_volume(pool: &SharedPool, pool_name: &str, v: &VolumeConfig) -> io::Result<u32> {
    let mut p = pool.lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(info) = p.volume(&v.name) {
        if let VolumeSource::New { size, .. } = v.source {
            if size > info.size {
                p.resize(&v.name, size, false)
                    .map_err(|e| err(&format!("{}.size", v.key), e))?;
                log::info!("pool {pool_name}: volume {} grown to {size} bytes", v.name);
            } else if size < info.size {
                log::warn!(
                    "pool {pool_name}: volume {} is {} bytes, more than the configured {size}; \
                     not shrinking it (use `vblock volume resize --force`)",
                    v.name,
                    info.size
                );
            }
        }
        return Ok(info.id);
    }
    let id = match &v.source {
        VolumeSource::New { size, block_size } => p
            .create_volume(&v.name, *size, *block_size)
            .map_err(|e| err(&v.key, e))?,
        VolumeSource::CloneOf(src) | VolumeSource::SnapshotOf(src) => {
            let snapshot = matches!(v.source, VolumeSource::SnapshotOf(_));
            let k = if snapshot { "snapshot_of" } else { "clone_of" };
            if p.volume(src).is_err() {
                return Err(err(
                    &format!("{}.{k}", v.key),
                    format!("no volume named {src:?} in pool {pool_name}"),
                ));
            }
            if snapshot {
                p.snapshot(src, &v.name)
            } else {
                p.clone_volume(src, &v.name)
            }
            .map_err(|e| err(&v.key, e))?
        }
    };
    log::info!("pool {pool_name}: volume {} created", v.name);
    Ok(id)
}

/// The QEMU arguments that attach a guest disk to an export.
pub fn qemu_blk_args(volume: &str, e: &ExportConfig) -> String {
    format!(
        "-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
         -chardev socket,id=chr-{volume},path={} -device vhost-user-blk-pci,chardev=chr-{volume},num-queues={}",
        e.socket.display(),
        e.queues
    )
}

/// Starts serving `v`'s export.
pub fn serve_export(
    pool: &SharedPool,
    pool_name: &str,
    volume: &str,
    e: &ExportConfig,
    id: u32,
) -> io::Result<ServedExport> {
    if let Some(dir) = e.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    check_socket_free(&e.socket).map_err(|x| err(&format!("export of {volume}"), x))?;
    let read_only = {
        let p = pool.lock().unwrap_or_else(|x| x.into_inner());
        let vol = p
            .volume(volume)
            .map_err(|x| err(&format!("export of {volume}"), x))?;
        e.read_only || vol.read_only
    };
    let export = BlkExport::new(
        BlkExportConfig {
            name: volume.to_owned(),
            socket: e.socket.clone(),
            volume: id,
            queues: e.queues,
            queue_size: e.queue_size,
            read_only,
            serial: volume.to_owned(),
        },
        pool.clone(),
    );
    let handle = export.spawn()?;
    log::info!(
        "pool {pool_name}: volume {volume} exported{} on {}; attach a QEMU guest with: {}",
        if read_only { " read-only" } else { "" },
        e.socket.display(),
        qemu_blk_args(volume, e)
    );
    Ok(ServedExport { export, handle })
}
