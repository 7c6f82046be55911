//! `BlkDaemon`: the real daemon in process serving the volumes of one pool, for
//! tests that play the VMM against its vhost-user-blk exports (`GuestBlk`).
//!
//! A [`DaemonHost`] underneath: everything lives in a fresh directory under
//! `$VBLOCK_TEST_DIR` or /var/tmp. Every test should serve volumes of its own
//! names: the daemon names a session's internal socket after the process, the
//! export and the session number, so two daemons in one process serving an
//! export of the same name would collide.

use super::daemon_host::{pool_toml, DaemonHost};
use super::virtio_blk::{BlkOptions, GuestBlk};
use std::ops::Deref;

pub struct BlkDaemon(DaemonHost);

impl BlkDaemon {
    /// Pool "p0" of `pool_size` (e.g. "64M") with `volumes`: `[[pool.volume]]` tables
    /// (TOML).
    pub fn start(pool_size: &str, volumes: &str) -> BlkDaemon {
        BlkDaemon(DaemonHost::start(
            "blkd",
            &pool_toml(pool_size, "", volumes),
        ))
    }

    pub fn connect_with(&self, volume: &str, opts: BlkOptions) -> GuestBlk {
        GuestBlk::connect(&self.socket(volume), opts)
            .unwrap_or_else(|e| panic!("connecting to {volume}: {e}"))
    }
}

/// The host's daemon, sockets, counters and pool check.
impl Deref for BlkDaemon {
    type Target = DaemonHost;
    fn deref(&self) -> &DaemonHost {
        &self.0
    }
}
