//! The daemon's storage side: pools opened (or created), the volumes the
//! config declares made to exist, and their vhost-user-blk exports served.
//!
//! Lock order: the runtime state ([`crate::runtime::Runtime`]) before a pool,
//! never a pool before the state. The blk datapath takes a pool's lock and
//! never the state; a control operation that holds a pool and then waits for
//! the state would deadlock against one that holds the state and waits for
//! that pool (an export being started). The daemon takes pool locks only
//! through [`lock_pool`], which counts them per thread, and the state lock
//! refuses to be taken while this thread holds a pool.

use crate::sockets;
use fabric_config::{ExportConfig, OnFull, PoolConfig, VolumeConfig, VolumeSource};
use std::cell::Cell;
use std::io;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};
use vblock::dev::FileDev;
use vblock::pool::{Pool, PoolGauges, PoolOptions};
use vhost_backends::blk::{BlkExport, BlkExportConfig, BlkExportHandle, SharedPool};
use vhost_backends::session::ServeOptions;

thread_local! {
    /// Pool locks this thread holds (through [`lock_pool`]).
    static POOLS_HELD: Cell<u32> = const { Cell::new(0) };
}

/// A pool's lock, held; see the lock order in the module docs.
pub struct PoolGuard<'a>(MutexGuard<'a, Pool<FileDev>>);

/// Locks `pool` (a poisoned lock is taken over: the pool's own state is
/// consistent between calls).
pub fn lock_pool(pool: &SharedPool) -> PoolGuard<'_> {
    let guard = pool.lock().unwrap_or_else(|e| e.into_inner());
    POOLS_HELD.with(|n| n.set(n.get() + 1));
    PoolGuard(guard)
}

/// Whether this thread holds a pool lock (then it must not take the state).
pub fn holds_pool() -> bool {
    POOLS_HELD.with(|n| n.get() > 0)
}

impl Drop for PoolGuard<'_> {
    fn drop(&mut self) {
        POOLS_HELD.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

impl Deref for PoolGuard<'_> {
    type Target = Pool<FileDev>;
    fn deref(&self) -> &Pool<FileDev> {
        &self.0
    }
}

impl DerefMut for PoolGuard<'_> {
    fn deref_mut(&mut self) -> &mut Pool<FileDev> {
        &mut self.0
    }
}

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
        pool.gauges().watch().set_name(name);
        OpenPool {
            name: name.to_owned(),
            path: path.to_owned(),
            gauges: pool.gauges().clone(),
            pool: Arc::new(Mutex::new(pool)),
        }
    }
}

impl OpenPool {
    /// What a request that needs space gets when the pool is full, and the
    /// warning threshold (judged at once against the space used now).
    pub fn set_space_policy(&self, on_full: OnFull, warn_percent: u8) {
        let watch = self.gauges.watch();
        watch.set_on_full(match on_full {
            OnFull::Error => vblock::pool::OnFull::Error,
            OnFull::Pause => vblock::pool::OnFull::Pause,
        });
        watch.set_warn_percent(warn_percent, &self.gauges.space());
    }

    /// The full policy in force.
    pub fn on_full(&self) -> OnFull {
        match self.gauges.watch().on_full() {
            vblock::pool::OnFull::Error => OnFull::Error,
            vblock::pool::OnFull::Pause => OnFull::Pause,
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
    let open = OpenPool::new(&cfg.name, &cfg.path, pool);
    open.set_space_policy(cfg.on_full, cfg.warn_percent);
    Ok(open)
}

/// Makes the volume exist: created from its source on first start; an
/// existing one is kept (grown if the config asks for more).
pub fn ensure_volume(pool: &SharedPool, pool_name: &str, v: &VolumeConfig) -> io::Result<u32> {
    let mut p = lock_pool(pool);
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
    serve: &ServeOptions,
) -> io::Result<ServedExport> {
    let what = format!("export of {volume}: socket");
    sockets::prepare(&e.socket, &what)?;
    let migration_what = format!("export of {volume}: migration socket");
    if let Some(m) = &e.migration_socket {
        sockets::prepare(m, &migration_what)?;
    }
    // The id is looked up here, under the caller's state lock, so it is the
    // volume of that name now (not one deleted or renamed since).
    let (id, read_only) = {
        let p = lock_pool(pool);
        let vol = p
            .volume(volume)
            .map_err(|x| err(&format!("export of {volume}"), x))?;
        (vol.id, e.read_only || vol.read_only)
    };
    let export = BlkExport::new(
        BlkExportConfig {
            name: volume.to_owned(),
            socket: e.socket.clone(),
            migration_socket: e.migration_socket.clone(),
            volume: id,
            queues: e.queues,
            queue_size: e.queue_size,
            read_only,
            serial: volume.to_owned(),
            limits: crate::runtime::blk_limits(&e.limits),
        },
        pool.clone(),
    );
    let handle = export.spawn(serve).map_err(|x| sockets::named(&what, x))?;
    log::info!(
        "pool {pool_name}: volume {volume} exported{} on {}; attach a QEMU guest with: {}",
        if read_only { " read-only" } else { "" },
        e.socket.display(),
        qemu_blk_args(volume, e)
    );
    log::info!(
        "pool {pool_name}: volume {volume}: attach a libvirt domain with {} in <domain> and {} in <devices>",
        crate::libvirt::MEMORY_BACKING,
        crate::libvirt::disk_xml(e, "vda")
    );
    if let Some(m) = &e.migration_socket {
        log::info!(
            "pool {pool_name}: volume {volume}: a live migration's destination attaches on {}",
            m.display()
        );
    }
    Ok(ServedExport { export, handle })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count behind the lock-order check follows the guards.
    #[test]
    fn pool_guards_are_counted_per_thread() {
        let dir = std::env::var_os("VBLOCK_TEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/var/tmp".into())
            .join(format!("storage-guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dev = FileDev::create(dir.join("p.img"), 8 << 20).unwrap();
        let pool: SharedPool = Arc::new(Mutex::new(
            Pool::create(dev, &PoolOptions::default()).unwrap(),
        ));
        assert!(!holds_pool());
        {
            let _a = lock_pool(&pool);
            assert!(holds_pool());
            let other = std::thread::spawn(holds_pool).join().unwrap();
            assert!(!other, "another thread holds nothing");
        }
        assert!(!holds_pool());
        drop(pool);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
