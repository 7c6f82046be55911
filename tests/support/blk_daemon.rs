//! `BlkDaemon`: the real daemon in process serving the volumes of one pool, for
//! tests that play the VMM against its vhost-user-blk exports (`GuestBlk`).
//!
//! Everything lives in a fresh directory under `$VBLOCK_TEST_DIR` or /var/tmp (the
//! pool is opened O_DIRECT, which tmpfs refuses). Every test should serve volumes of
//! its own names: the daemon names a session's internal socket after the process, the
//! export and the session number, so two daemons in one process serving an export of
//! the same name would collide.

pub use super::counters::counter_in;
use super::virtio_blk::{BlkOptions, GuestBlk};
use fabric::Daemon;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct BlkDaemon {
    daemon: Option<Daemon>,
    dir: PathBuf,
}

impl BlkDaemon {
    /// Pool "p0" of `pool_size` (e.g. "64M") with `volumes`: `[[pool.volume]]` tables
    /// (TOML).
    pub fn start(pool_size: &str, volumes: &str) -> BlkDaemon {
        static N: AtomicU32 = AtomicU32::new(0);
        let _ = env_logger::builder().is_test(true).try_init();
        let base = std::env::var_os("VBLOCK_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        let dir = base.join(format!(
            "blkd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let toml = format!(
            "[daemon]\nrun_dir = \"run\"\n[[pool]]\nname = \"p0\"\npath = \"pool.img\"\n\
             size = \"{pool_size}\"\n{volumes}"
        );
        let path = dir.join("fabric.toml");
        std::fs::write(&path, toml).unwrap();
        let config = fabric_config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let daemon = Daemon::start(&config).unwrap_or_else(|e| panic!("daemon: {e}"));
        BlkDaemon {
            daemon: Some(daemon),
            dir,
        }
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }

    pub fn connect_with(&self, volume: &str, opts: BlkOptions) -> GuestBlk {
        let socket = self.dir.join("run").join(format!("{volume}.sock"));
        GuestBlk::connect(&socket, opts).unwrap_or_else(|e| panic!("connecting to {volume}: {e}"))
    }

    /// The `counters export=VOLUME ...` line of the daemon's report.
    pub fn counter_line(&self, volume: &str) -> String {
        let prefix = format!("counters export={volume} ");
        self.daemon()
            .counters_report()
            .into_iter()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no counters for export {volume}"))
    }

    /// One counter of export `volume`: the number after the word `name`.
    pub fn counter(&self, volume: &str, name: &str) -> u64 {
        counter_in(&self.counter_line(volume), name)
    }

    /// Panics unless the pool's metadata passes its own check.
    pub fn check_pool(&self) {
        let pool = self.daemon().pool("p0").unwrap();
        let p = pool.lock().unwrap();
        if let Err(v) = p.metadata().check() {
            panic!("pool metadata: {v:?}");
        }
    }
}

impl Drop for BlkDaemon {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
