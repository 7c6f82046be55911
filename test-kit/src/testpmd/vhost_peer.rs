//! DPDK `dpdk-testpmd` as a third-party vhost-user peer, killed when the guard drops.
//!
//! `Testpmd::vhost(name, ports, mode)` runs testpmd with `ports` `net_vhost` devices, i.e.
//! DPDK as the vhost-user *backend* with our `GuestNic` as the frontend. With
//! `--forward-mode=macswap` one port echoes every frame back with the MACs swapped; with
//! `io` and two ports, testpmd is a wire between port 0 and port 1.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{tail, TestDir, TESTPMD};

/// A running testpmd; killed (and its temp dir removed) on drop.
pub struct Testpmd {
    child: Child,
    dir: TestDir,
    prefix: String,
    sockets: Vec<PathBuf>,
}

impl Testpmd {
    /// Starts testpmd with `ports` net_vhost ports and the given forwarding mode, and waits
    /// until every socket is bound. Panics with a clear message if testpmd is missing or
    /// does not come up: a self-test must never pass by skipping.
    pub fn vhost(name: &str, ports: usize, forward_mode: &str) -> Testpmd {
        let pid = std::process::id();
        let dir = TestDir::new(&format!("fabric-testpmd-{name}"));
        let sockets: Vec<PathBuf> = (0..ports).map(|i| dir.join(format!("sock{i}"))).collect();
        let prefix = format!("fabric-{name}-{pid}");

        let mut cmd = Command::new(TESTPMD);
        // --no-huge: DPDK runs on ordinary memory; our guest RAM is a 4 KiB-page memfd.
        cmd.args(["-l", "0,1", "--no-huge", "-m", "512", "--no-pci"])
            .arg(format!("--file-prefix={prefix}"))
            .arg("--log-level=lib.vhost.config:info");
        for (i, s) in sockets.iter().enumerate() {
            cmd.arg("--vdev")
                .arg(format!("net_vhost{i},iface={},queues=1", s.display()));
        }
        // Without --stats-period a non-interactive testpmd exits at stdin EOF.
        cmd.args(["--", "--stats-period", "1", "--total-num-mbufs=8192"])
            .arg(format!("--forward-mode={forward_mode}"));
        let log = File::create(dir.join("testpmd.log")).expect("create testpmd log");
        let log2 = log.try_clone().expect("dup testpmd log");
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`{TESTPMD}` not found in PATH: this test needs DPDK's testpmd \
                 (apt-get install dpdk-dev librte-net-vhost23 librte-mempool-ring23)"
            ),
            Err(e) => panic!("cannot start {TESTPMD}: {e}"),
        };
        let mut t = Testpmd {
            child,
            dir,
            prefix,
            sockets,
        };
        t.wait_for_sockets(Duration::from_secs(30));
        t
    }

    fn wait_for_sockets(&mut self, patience: Duration) {
        let deadline = Instant::now() + patience;
        while !self.sockets.iter().all(|s| s.exists()) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{TESTPMD} exited early ({status}); log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "{TESTPMD} did not bind its sockets in {patience:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Socket path of port `i`.
    pub fn socket(&self, i: usize) -> &Path {
        &self.sockets[i]
    }

    /// Everything testpmd printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("testpmd.log")).unwrap_or_default()
    }

    /// True while testpmd is running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- testpmd log ---\n{}", tail(&self.log(), 60));
        }
        let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(&self.prefix));
    }
}
