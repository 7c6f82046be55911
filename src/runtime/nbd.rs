//! Volumes opened over NBD (`crate::nbd`): export names resolved to a pool
//! and a volume, and the one-writer rule between NBD clients and guests.
//!
//! A writable volume has one user at a time: a vhost-user-blk export (a
//! guest) or one NBD connection. A snapshot (read-only) may be read by any
//! number of both. A volume open over NBD is "in use" like an exported one:
//! delete and rename wait for the connection to end.

use super::{Error, Result, Runtime, State};
use crate::storage::lock_pool;
use vhost_backends::blk::SharedPool;

/// One NBD connection's hold on a volume.
#[derive(Debug)]
pub struct NbdUse {
    token: u64,
    pool: String,
    volume: String,
    writable: bool,
}

/// A volume opened for an NBD connection; [`Runtime::nbd_close`] it.
pub struct NbdVolume {
    pub pool: SharedPool,
    /// `POOL/VOLUME`, for the log.
    pub label: String,
    pub id: u32,
    pub size: u64,
    pub read_only: bool,
    pub cluster_size: u32,
    token: u64,
}

impl Runtime {
    /// Every volume of every pool by its export name: the bare name when no
    /// other pool has a volume of that name, else `POOL/VOLUME`.
    pub fn nbd_names(&self) -> Vec<String> {
        let all: Vec<(String, String)> = self
            .pools()
            .iter()
            .flat_map(|p| {
                let names: Vec<String> = lock_pool(&p.pool)
                    .volumes()
                    .into_iter()
                    .map(|v| v.name)
                    .collect();
                names.into_iter().map(|v| (p.name.clone(), v))
            })
            .collect();
        all.iter()
            .map(|(pool, v)| {
                if all.iter().filter(|(_, w)| w == v).count() == 1 {
                    v.clone()
                } else {
                    format!("{pool}/{v}")
                }
            })
            .collect()
    }

    /// The pool and volume an export name means: `POOL/VOLUME`, or a bare
    /// volume name only one pool has.
    pub fn nbd_resolve(&self, export: &str) -> Result<(String, String)> {
        if let Some((pool, volume)) = export.split_once('/') {
            if let Ok(p) = self.pool_entry(pool) {
                if lock_pool(&p.pool).volume(volume).is_ok() {
                    return Ok((pool.to_owned(), volume.to_owned()));
                }
            }
        }
        let holders: Vec<&str> = self
            .pools()
            .iter()
            .filter(|p| lock_pool(&p.pool).volume(export).is_ok())
            .map(|p| p.name.as_str())
            .collect();
        match holders[..] {
            [pool] => Ok((pool.to_owned(), export.to_owned())),
            [] => Err(Error::not_found(format!("no volume named {export:?}"))),
            _ => Err(Error::not_found(format!(
                "{export:?} is in pools {holders:?}; name it POOL/{export}"
            ))),
        }
    }

    /// Opens the volume `export` names for an NBD connection, or says why
    /// not: unknown, or a writable volume already in use by a guest or
    /// another NBD connection.
    pub fn nbd_open(&self, export: &str) -> Result<NbdVolume> {
        let (pool_name, volume) = self.nbd_resolve(export)?;
        let pool = self.pool_entry(&pool_name)?.pool.clone();
        let mut st = self.lock();
        let (info, cluster_size) = {
            let p = lock_pool(&pool);
            (p.volume(&volume)?, p.metadata().cluster_size())
        };
        if !info.read_only {
            Self::nbd_single_writer(&st, &pool_name, &volume)?;
        }
        st.next_nbd_token += 1;
        let token = st.next_nbd_token;
        st.nbd.push(NbdUse {
            token,
            pool: pool_name.clone(),
            volume: volume.clone(),
            writable: !info.read_only,
        });
        Ok(NbdVolume {
            pool,
            label: format!("{pool_name}/{volume}"),
            id: info.id,
            size: info.size,
            read_only: info.read_only,
            cluster_size,
            token,
        })
    }

    /// Ends an NBD connection's hold.
    pub fn nbd_close(&self, v: &NbdVolume) {
        self.lock().nbd.retain(|u| u.token != v.token);
    }

    /// Refuses a second user of a writable volume.
    fn nbd_single_writer(st: &State, pool: &str, volume: &str) -> Result<()> {
        if let Some(e) = st
            .exports
            .iter()
            .find(|e| e.pool == pool && e.volume == volume)
        {
            return Err(Error::conflict(format!(
                "volume {volume:?} is exported to a guest on {}",
                e.config.socket.display()
            )));
        }
        if st.nbd.iter().any(|u| u.pool == pool && u.volume == volume) {
            return Err(Error::conflict(format!(
                "volume {volume:?} is open by another NBD client"
            )));
        }
        Ok(())
    }

    /// Refuses a change (or a guest export) of a volume an NBD client
    /// holds: any hold for a delete or rename, a writable one for an export.
    pub(super) fn not_in_nbd_use(st: &State, pool: &str, volume: &str, what: &str) -> Result<()> {
        let export = what == "export";
        if st
            .nbd
            .iter()
            .any(|u| u.pool == pool && u.volume == volume && (u.writable || !export))
        {
            return Err(Error::conflict(format!(
                "volume {volume:?} is open by an NBD client; it must disconnect before you {what} it"
            )));
        }
        Ok(())
    }
}
