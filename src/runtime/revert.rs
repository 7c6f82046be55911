//! Reverting a volume to one of its snapshots at run time, and the export
//! pause that makes it possible under a connected guest: a paused export
//! takes no new request from its guest and has answered every earlier one,
//! so the volume can change under it (`vhost_backends::blk::pause`).

use super::{Error, ErrorKind, Result, Runtime, State};
use crate::storage::lock_pool;
use fabric_config::VolumeSource;
use std::sync::Arc;
use std::time::Duration;
use vhost_backends::blk::pause::{Undrained, DRAIN_PATIENCE};
use vhost_backends::blk::BlkExport;

/// How long a revert waits for a paused export to be drained (it was,
/// unless its pause gave up waiting).
const REVERT_DRAIN_PATIENCE: Duration = Duration::from_secs(1);

impl Runtime {
    /// The export of `volume` in `pool`, or why there is none.
    fn served_export(&self, pool: &str, volume: &str) -> Result<Arc<BlkExport>> {
        self.pool_entry(pool)?;
        Self::export_entry(&self.lock(), pool, volume)
            .ok_or_else(|| Error::not_found(format!("volume {volume:?} is not exported")))
    }

    fn export_entry(st: &State, pool: &str, volume: &str) -> Option<Arc<BlkExport>> {
        st.exports
            .iter()
            .find(|e| e.pool == pool && e.volume == volume)
            .map(|e| e.served.export.clone())
    }

    /// Pauses the export of `volume`: it takes no new request from its guest
    /// (which sees slow I/O, no error) and this returns once every request
    /// taken before is answered. Without the state lock while it waits.
    pub fn pause_export(&self, pool: &str, volume: &str) -> Result<()> {
        let export = self.served_export(pool, volume)?;
        export.pause.pause(DRAIN_PATIENCE).map_err(|Undrained(n)| {
            Error::internal(format!(
                "export of {volume:?} is paused, but {n} requests are still in flight after \
                 {DRAIN_PATIENCE:?}; pause again to wait longer, or resume"
            ))
        })?;
        log::info!("pool {pool}: export of {volume} paused and drained");
        Ok(())
    }

    /// Lets the export of `volume` take requests again.
    pub fn resume_export(&self, pool: &str, volume: &str) -> Result<()> {
        self.served_export(pool, volume)?.pause.resume();
        log::info!("pool {pool}: export of {volume} resumed");
        Ok(())
    }

    /// Whether the export of `volume` is paused (`None`: not exported).
    pub fn export_paused(&self, pool: &str, volume: &str) -> Option<bool> {
        Self::export_entry(&self.lock(), pool, volume).map(|e| e.pause.is_paused())
    }

    /// Makes `volume` the content of `snapshot`, one of its own snapshots, at
    /// once (no data copied). An exported volume must have its export
    /// paused: its guest then has no request in flight, and reads the
    /// snapshot's content from its next request on. A snapshot larger than
    /// the volume (taken before a shrink) grows it; a smaller one leaves the
    /// size as it is.
    pub fn revert_volume(&self, pool_name: &str, volume: &str, snapshot: &str) -> Result<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        // Held to the end: an export.add, delete or rename waits.
        let mut st = self.lock();
        let export = st
            .exports
            .iter()
            .find(|e| e.pool == pool_name && e.volume == volume)
            .map(|e| (e.config.socket.clone(), e.served.export.clone()));
        let of_volume = st
            .config
            .pools
            .iter()
            .filter(|p| p.name == pool_name)
            .flat_map(|p| &p.volumes)
            .any(|v| {
                v.name == snapshot
                    && matches!(&v.source, VolumeSource::SnapshotOf(o) if o == volume)
            });
        let overcommit = Self::overcommit_in(&st, pool_name);
        let (old, size) = {
            let p = lock_pool(&pool);
            let old = p.volume(volume)?.size;
            (old, p.volume(snapshot)?.size.max(old))
        };
        if !of_volume {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{snapshot:?} is not a snapshot of {volume:?}"),
            ));
        }
        if let Some((socket, export)) = &export {
            if !export.pause.is_paused() {
                return Err(Error::conflict(format!(
                    "volume {volume:?} is exported on {} and its export is not paused; \
                     pause it first (export pause {pool_name} {volume}) or unexport it",
                    socket.display()
                )));
            }
            // Paused: drained unless the pause gave up waiting. Waited for
            // without the pool's lock, which the queues need to finish; the
            // state lock held keeps the export paused (a resume waits).
            if let Err(Undrained(n)) = export.pause.pause(REVERT_DRAIN_PATIENCE) {
                return Err(Error::conflict(format!(
                    "the export of {volume:?} is paused but still has {n} requests in flight"
                )));
            }
        }
        let mut p = lock_pool(&pool);
        if size > old {
            // Only growing provisions more; a pool over-provisioned already
            // (by another operation under overcommit) still reverts.
            Self::check_provisioning(&p, pool_name, overcommit, size - old)?;
        }
        p.revert(volume, snapshot)?;
        drop(p);
        // The pool knows the new size before any request is checked against it.
        if size > old {
            if let Some((_, export)) = export {
                export.grow(size);
            }
            let declared = Self::declared_mut(&mut st, pool_name, volume);
            if let Some(VolumeSource::New { size: s, .. }) = declared.map(|v| &mut v.source) {
                *s = size;
            }
        }
        drop(st);
        log::info!("pool {pool_name}: volume {volume} reverted to snapshot {snapshot}");
        Ok(())
    }
}
