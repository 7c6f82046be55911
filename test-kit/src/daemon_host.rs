//! `DaemonHost`: the real daemon in process on a config of the test's own, in a
//! fresh directory under `$VBLOCK_TEST_DIR` or /var/tmp (pools are opened
//! O_DIRECT, which tmpfs refuses). The one start-up every in-process fixture
//! builds on; shared by `frontend` and `blkio`.

use crate::counters::{counter_in, metric_samples};
use crate::dir::TestDir;
use fabric::Daemon;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct DaemonHost {
    daemon: Option<Daemon>,
    dir: TestDir,
}

/// A `[daemon]` with sockets under `run/` and pool "p0" of `size` in
/// `pool.img`; `extra` goes into the pool's table, then `volumes` (its
/// `[[pool.volume]]` tables).
pub fn pool_toml(size: &str, extra: &str, volumes: &str) -> String {
    format!(
        "[daemon]\nrun_dir = \"run\"\n[[pool]]\nname = \"p0\"\npath = \"pool.img\"\n\
         size = \"{size}\"\n{extra}\n{volumes}\n"
    )
}

impl DaemonHost {
    /// Writes `toml` to `fabric.toml` in a fresh directory `TAG-PID-N` and
    /// starts the daemon on it (relative paths are taken from that file).
    pub fn start(tag: &str, toml: &str) -> DaemonHost {
        let _ = env_logger::builder().is_test(true).try_init();
        let mut h = DaemonHost {
            daemon: None,
            dir: TestDir::on_disk(tag),
        };
        h.launch(Some(toml));
        h
    }

    /// Starts the daemon on `fabric.toml`, written first if `toml` is given.
    fn launch(&mut self, toml: Option<&str>) {
        let path = self.dir.join("fabric.toml");
        if let Some(toml) = toml {
            std::fs::write(&path, toml).unwrap();
        }
        let config = fabric_config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let daemon = Daemon::start_from(&config, Some(&path));
        self.daemon = Some(daemon.unwrap_or_else(|e| panic!("daemon: {e}")));
    }

    /// Stops the daemon and starts it again in the same directory (pool files
    /// and sockets stay): on `toml` if given, else on `fabric.toml` as it is
    /// now (a `config.save` may have rewritten it).
    pub fn restart(&mut self, toml: Option<&str>) {
        if let Some(d) = self.daemon.take() {
            d.shutdown();
        }
        self.launch(toml);
    }

    /// The running daemon, handed over (a test that watches it stop).
    pub fn take(&mut self) -> Daemon {
        self.daemon.take().expect("the daemon runs")
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the daemon runs")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The fault injector of pool `pool`'s device (slow syncs, I/O errors).
    pub fn io_faults(&self, pool: &str) -> std::sync::Arc<vblock::pool::IoFaults> {
        let pool = self
            .daemon()
            .pool(pool)
            .unwrap_or_else(|| panic!("no pool {pool}"));
        let faults = pool.lock().unwrap().io_faults().clone();
        faults
    }

    /// The socket `run/NAME.sock` (a port's, an export's, or "control").
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.join("run").join(format!("{name}.sock"))
    }

    /// The `counters export=VOLUME ...` line of the daemon's report.
    pub fn counter_line(&self, volume: &str) -> String {
        self.report_line(&format!("counters export={volume} "))
    }

    /// One counter of export `volume`: the number after the word `name`.
    pub fn counter(&self, volume: &str, name: &str) -> u64 {
        counter_in(&self.counter_line(volume), name)
    }

    /// The report's line that starts with `prefix` (e.g. `"counters switch=br0
    /// port=vm1 "`, `"fdb switch=br0 "`).
    pub fn report_line(&self, prefix: &str) -> String {
        let report = self.daemon().counters_report();
        report
            .iter()
            .find(|l| l.starts_with(prefix))
            .cloned()
            .unwrap_or_else(|| panic!("no {prefix:?} line in {report:#?}"))
    }

    /// Port `name`'s entry in the control socket's `port.list` answer.
    pub fn port_listed(&self, name: &str) -> serde_json::Value {
        let rt = self.daemon().runtime();
        let list = fabric::control::ops::dispatch(rt, "port.list", &serde_json::json!({}))
            .unwrap_or_else(|e| panic!("port.list: {e:?}"));
        let found = list
            .as_array()
            .and_then(|l| l.iter().find(|p| p["name"] == name));
        found
            .cloned()
            .unwrap_or_else(|| panic!("no port {name} in {list}"))
    }

    /// The daemon's metrics as `/metrics` renders them, by sample.
    pub fn metrics(&self) -> HashMap<String, f64> {
        let snapshot = self.daemon().runtime().snapshot();
        metric_samples(&fabric::metrics::render(&snapshot))
    }

    /// Panics unless the metadata of pool "p0" passes its own check.
    pub fn check_pool(&self) {
        let pool = self.daemon().pool("p0").expect("pool p0");
        let p = pool.lock().unwrap();
        if let Err(v) = p.metadata().check() {
            panic!("pool metadata: {v:?}");
        }
    }
}

impl Drop for DaemonHost {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown();
        }
    }
}
