//! Volumes and their exports at run time. Each operation checks, changes the
//! pool, and updates the runtime config, holding the state lock where a
//! concurrent operation could otherwise slip in between (see the lock order
//! on [`Runtime`]).

use super::{Error, ExportEntry, Result, Runtime, State};
use crate::storage::{self, lock_pool};
use fabric_config::{ExportConfig, PoolConfig, VolumeConfig, VolumeSource};
use std::path::PathBuf;

impl Runtime {
    /// Makes a configured volume exist and serves its export (start-up).
    pub(super) fn declare_volume(&self, pool_name: &str, v: &VolumeConfig) -> Result<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        storage::ensure_volume(&pool, pool_name, v).map_err(|e| Error::internal(e.to_string()))?;
        let mut declared = v.clone();
        declared.export = None;
        self.remember_volume(pool_name, declared);
        if let Some(e) = &v.export {
            self.start_export(&mut self.lock(), pool_name, &v.name, e.clone())?;
        }
        Ok(())
    }

    fn remember_volume(&self, pool: &str, v: VolumeConfig) {
        Self::remember(&mut self.lock(), pool, v);
    }

    fn remember(st: &mut State, pool: &str, v: VolumeConfig) {
        if let Some(p) = Self::pool_config(st, pool) {
            p.volumes.retain(|x| x.name != v.name);
            p.volumes.push(v);
        }
    }

    fn pool_config<'a>(st: &'a mut State, pool: &str) -> Option<&'a mut PoolConfig> {
        st.config.pools.iter_mut().find(|p| p.name == pool)
    }

    /// Volume `name` of `pool` as the running configuration declares it.
    pub(super) fn declared_mut<'a>(
        st: &'a mut State,
        pool: &str,
        name: &str,
    ) -> Option<&'a mut VolumeConfig> {
        Self::pool_config(st, pool)?
            .volumes
            .iter_mut()
            .find(|v| v.name == name)
    }

    /// The export of `volume`, if any.
    pub fn export_of(&self, pool: &str, volume: &str) -> Option<ExportConfig> {
        self.lock()
            .exports
            .iter()
            .find(|e| e.pool == pool && e.volume == volume)
            .map(|e| e.config.clone())
    }

    fn export_in(st: &State, pool: &str, volume: &str) -> Option<PathBuf> {
        st.exports
            .iter()
            .find(|e| e.pool == pool && e.volume == volume)
            .map(|e| e.config.socket.clone())
    }

    /// Serves `volume`'s export. `st` is the caller's, held from its checks
    /// to the new entry, so a volume operation cannot come in between.
    fn start_export(
        &self,
        st: &mut State,
        pool_name: &str,
        volume: &str,
        e: ExportConfig,
    ) -> Result<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        Self::not_in_nbd_use(st, pool_name, volume, "export")?;
        if st
            .exports
            .iter()
            .any(|x| x.pool == pool_name && x.volume == volume)
        {
            return Err(Error::new(
                super::ErrorKind::AlreadyExists,
                format!("volume {volume:?} is already exported"),
            ));
        }
        for socket in std::iter::once(&e.socket).chain(&e.migration_socket) {
            if st.socket_in_use(socket) {
                return Err(Error::conflict(format!(
                    "socket {} is already used",
                    socket.display()
                )));
            }
        }
        if e.migration_socket.as_ref() == Some(&e.socket) {
            return Err(Error::conflict(format!(
                "the migration socket is the export's socket {}",
                e.socket.display()
            )));
        }
        let served = storage::serve_export(&pool, pool_name, volume, &e, &self.serve)
            .map_err(|x| Error::conflict(x.to_string()))?;
        if let Some(p) = Self::pool_config(st, pool_name) {
            if let Some(v) = p.volumes.iter_mut().find(|v| v.name == volume) {
                v.export = Some(e.clone());
            }
        }
        st.exports.push(ExportEntry {
            pool: pool_name.to_owned(),
            volume: volume.to_owned(),
            config: e,
            served,
        });
        Ok(())
    }

    /// Exports a volume at run time.
    pub fn add_export(&self, pool_name: &str, volume: &str, e: ExportConfig) -> Result<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        // One state lock from the lookup to the served export: a delete,
        // rename or resize (which check "not exported" under it) waits.
        let mut st = self.lock();
        let info = lock_pool(&pool).volume(volume)?;
        let exists_in_config = st
            .config
            .pools
            .iter()
            .any(|pc| pc.name == pool_name && pc.volumes.iter().any(|v| v.name == volume));
        if !exists_in_config {
            // A volume made outside this daemon (vblock tool): declare it by size.
            let size = info.size;
            Self::remember(
                &mut st,
                pool_name,
                VolumeConfig {
                    name: volume.to_owned(),
                    key: String::new(),
                    source: VolumeSource::New {
                        size,
                        block_size: 512,
                    },
                    export: None,
                },
            );
        }
        self.start_export(&mut st, pool_name, volume, e)
    }

    /// Stops serving a volume's export (its client is disconnected).
    pub fn remove_export(&self, pool_name: &str, volume: &str) -> Result<()> {
        let mut st = self.lock();
        let i = st
            .exports
            .iter()
            .position(|e| e.pool == pool_name && e.volume == volume)
            .ok_or_else(|| Error::not_found(format!("volume {volume:?} is not exported")))?;
        let entry = st.exports.remove(i);
        if let Some(p) = Self::pool_config(&mut st, pool_name) {
            if let Some(v) = p.volumes.iter_mut().find(|v| v.name == volume) {
                v.export = None;
            }
        }
        #[cfg(test)]
        super::tests::between();
        // Stopped with the state held: until its frontend is gone the volume
        // is in use, so a delete, rename or resize waits (the session takes
        // only the pool's lock, so this cannot deadlock).
        entry.served.handle.stop();
        drop(st);
        log::info!("pool {pool_name}: volume {volume} no longer exported");
        Ok(())
    }

    /// Refuses a change to a volume that is exported. The caller keeps `st`
    /// until the change is made, so an `export.add` cannot slip in between.
    fn not_exported(st: &State, pool: &str, volume: &str, what: &str) -> Result<()> {
        Self::not_in_nbd_use(st, pool, volume, what)?;
        if let Some(socket) = Self::export_in(st, pool, volume) {
            return Err(Error::conflict(format!(
                "volume {volume:?} is exported on {}; unexport it before you {what} it",
                socket.display()
            )));
        }
        Ok(())
    }

    pub fn create_volume(
        &self,
        pool_name: &str,
        name: &str,
        size: u64,
        block_size: u32,
    ) -> Result<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        let overcommit = self.overcommit(pool_name);
        let mut p = lock_pool(&pool);
        Self::check_provisioning(&p, pool_name, overcommit, size)?;
        p.create_volume(name, size, block_size)?;
        drop(p);
        self.remember_volume(
            pool_name,
            VolumeConfig {
                name: name.to_owned(),
                key: String::new(),
                source: VolumeSource::New { size, block_size },
                export: None,
            },
        );
        Ok(())
    }

    fn overcommit(&self, pool_name: &str) -> bool {
        Self::overcommit_in(&self.lock(), pool_name)
    }

    pub(super) fn overcommit_in(st: &State, pool_name: &str) -> bool {
        let pools = &st.config.pools;
        pools.iter().any(|p| p.name == pool_name && p.overcommit)
    }

    /// Without `overcommit = true`, creating or growing a volume may not take
    /// the pool's provisioned total (every volume's size, as `pool list`
    /// shows it) past its capacity.
    pub(super) fn check_provisioning<D: vblock::dev::BlockDev>(
        p: &vblock::pool::Pool<D>,
        pool_name: &str,
        overcommit: bool,
        more: u64,
    ) -> Result<()> {
        let space = p.space();
        if overcommit || space.provisioned.saturating_add(more) <= space.capacity {
            return Ok(());
        }
        Err(Error::new(
            super::ErrorKind::NoSpace,
            format!(
                "pool {pool_name} holds {} bytes and {} are provisioned; {more} more needs `overcommit = true`",
                space.capacity, space.provisioned
            ),
        ))
    }

    /// Snapshot or clone: a consistent copy of what was written before (the
    /// pool flushes completed writes before it records the copy).
    pub fn copy_volume(
        &self,
        pool_name: &str,
        source: &str,
        name: &str,
        snapshot: bool,
    ) -> Result<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        {
            let mut p = lock_pool(&pool);
            if snapshot {
                p.snapshot(source, name)?;
            } else {
                p.clone_volume(source, name)?;
            }
        }
        let src = source.to_owned();
        self.remember_volume(
            pool_name,
            VolumeConfig {
                name: name.to_owned(),
                key: String::new(),
                source: if snapshot {
                    VolumeSource::SnapshotOf(src)
                } else {
                    VolumeSource::CloneOf(src)
                },
                export: None,
            },
        );
        Ok(())
    }

    pub fn resize_volume(&self, pool_name: &str, name: &str, size: u64, force: bool) -> Result<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        let mut st = self.lock();
        let exported = st
            .exports
            .iter()
            .find(|e| e.pool == pool_name && e.volume == name)
            .map(|e| (e.config.socket.clone(), e.served.export.clone()));
        #[cfg(test)]
        super::tests::between();
        let overcommit = Self::overcommit_in(&st, pool_name);
        let mut p = lock_pool(&pool);
        let old = p.volume(name)?.size;
        // An exported volume may grow (its frontends are told, see
        // `BlkExport::grow`); shrinking it would take away blocks its guest
        // may use and requests in flight may reach.
        if let Some((socket, _)) = exported.as_ref().filter(|_| size < old) {
            return Err(Error::conflict(format!(
                "volume {name:?} is exported on {}: it can grow but not shrink; \
                 unexport it before you shrink it",
                socket.display()
            )));
        }
        Self::check_provisioning(&p, pool_name, overcommit, size.saturating_sub(old))?;
        p.resize(name, size, force)?;
        drop(p);
        // The pool knows the new size before any request is checked against it.
        if let Some((_, export)) = exported {
            export.grow(size);
        }
        if let Some(p) = Self::pool_config(&mut st, pool_name) {
            if let Some(v) = p.volumes.iter_mut().find(|v| v.name == name) {
                if let VolumeSource::New { size: s, .. } = &mut v.source {
                    *s = size;
                }
            }
        }
        Ok(())
    }

    pub fn rename_volume(&self, pool_name: &str, name: &str, new_name: &str) -> Result<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        let mut st = self.lock();
        Self::not_exported(&st, pool_name, name, "rename")?;
        #[cfg(test)]
        super::tests::between();
        lock_pool(&pool).rename(name, new_name)?;
        if let Some(p) = Self::pool_config(&mut st, pool_name) {
            for v in &mut p.volumes {
                if v.name == name {
                    v.name = new_name.to_owned();
                }
                match &mut v.source {
                    VolumeSource::CloneOf(s) | VolumeSource::SnapshotOf(s) if s == name => {
                        *s = new_name.to_owned();
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    pub fn delete_volume(&self, pool_name: &str, name: &str) -> Result<()> {
        let pool = self.pool_entry(pool_name)?.pool.clone();
        let mut st = self.lock();
        Self::not_exported(&st, pool_name, name, "delete")?;
        #[cfg(test)]
        super::tests::between();
        lock_pool(&pool).delete_volume(name)?;
        if let Some(p) = Self::pool_config(&mut st, pool_name) {
            p.volumes.retain(|v| v.name != name);
        }
        Ok(())
    }
}
