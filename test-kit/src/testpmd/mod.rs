//! Harness for running the real `vswitchd` binary against DPDK `dpdk-testpmd` peers
//! (`net_virtio_user` vdevs: DPDK as a vhost-user *frontend*, no VM, no hugepages).
//!
//! - [`TestDir`]: the kit's fresh temp dir (short: socket paths stay well under 108 bytes).
//! - [`Vswitchd`]: the daemon as a child; counters via SIGUSR1, final counters via SIGTERM.
//! - [`Testpmd`]: an interactive testpmd driven over a stdin pipe.
//! - [`vhost_peer`]: testpmd as a vhost-user *backend* peer of the in-process
//!   frontend (`GuestNic`).
//!
//! Every child is killed in `Drop` (also when the test panics), and its log is printed
//! when the test is failing. A missing `dpdk-testpmd` is a panic, never a skip.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub mod vhost_peer;

pub use crate::dir::TestDir;
pub use crate::proc::tail;
pub use crate::wait::wait_until;

pub const TESTPMD: &str = "dpdk-testpmd";

/// How long to wait for anything that should happen "promptly".
pub const PATIENCE: Duration = Duration::from_secs(15);

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// One port's counter line: `link` plus every `key=number` field.
#[derive(Debug, Clone, Default)]
pub struct PortCounters {
    pub link_up: bool,
    pub fields: HashMap<String, u64>,
}

impl PortCounters {
    pub fn get(&self, key: &str) -> u64 {
        *self
            .fields
            .get(key)
            .unwrap_or_else(|| panic!("no counter {key:?} in {:?}", self.fields))
    }
    pub fn rx_packets(&self) -> u64 {
        self.get("rx_packets")
    }
    pub fn tx_packets(&self) -> u64 {
        self.get("tx_packets")
    }
    /// Sum of every `drop_*` counter.
    pub fn drops(&self) -> u64 {
        self.fields
            .iter()
            .filter(|(k, _)| k.starts_with("drop_"))
            .map(|(_, v)| v)
            .sum()
    }
}

/// One SIGUSR1/SIGTERM report: counters by port name.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub ports: HashMap<String, PortCounters>,
    pub lines: Vec<String>,
}

impl Report {
    pub fn port(&self, name: &str) -> &PortCounters {
        self.ports
            .get(name)
            .unwrap_or_else(|| panic!("no port {name:?} in report:\n{}", self.lines.join("\n")))
    }

    fn parse(lines: &[&str]) -> Report {
        let mut r = Report::default();
        for line in lines {
            r.lines.push(line.to_string());
            let mut words = line.split_whitespace();
            if words.next() != Some("counters") {
                continue;
            }
            let mut name = None;
            let mut pc = PortCounters::default();
            for w in words {
                let Some((k, v)) = w.split_once('=') else {
                    continue;
                };
                match k {
                    "port" => name = Some(v.to_string()),
                    "link" => pc.link_up = v == "up",
                    _ => {
                        if let Ok(n) = v.parse() {
                            pc.fields.insert(k.to_string(), n);
                        }
                    }
                }
            }
            if let Some(n) = name {
                r.ports.insert(n, pc);
            }
        }
        r
    }
}

/// The vswitchd binary as a child process, killed on drop.
pub struct Vswitchd {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
    sockets: Vec<PathBuf>,
}

impl Vswitchd {
    /// Writes `config` to `dir/fabric.toml`, starts vswitchd on it and waits until every
    /// socket in `sockets` (relative to `dir`) exists.
    pub fn start(dir: &TestDir, config: &str, sockets: &[&str]) -> Vswitchd {
        Self::start_on(dir, config, sockets, None)
    }

    /// Like [`Vswitchd::start`], with every vswitchd thread pinned to `cpu` if given
    /// (`taskset -c CPU`), e.g. to keep it off a testpmd forwarding lcore.
    pub fn start_on(dir: &TestDir, config: &str, sockets: &[&str], cpu: Option<u32>) -> Vswitchd {
        let cfg = dir.join("fabric.toml");
        std::fs::write(&cfg, config).expect("write fabric.toml");
        let out = dir.join("vswitchd.out");
        let err = dir.join("vswitchd.err");
        let vswitchd = crate::bins::vswitchd();
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&vswitchd);
                c
            }
            None => Command::new(&vswitchd),
        };
        let child = cmd
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("create vswitchd.out"))
            .stderr(File::create(&err).expect("create vswitchd.err"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", vswitchd.display()));
        let mut v = Vswitchd {
            child: Some(child),
            out,
            err,
            sockets: sockets.iter().map(|s| dir.join(s)).collect(),
        };
        let socks = v.sockets.clone();
        wait_until("vswitchd sockets", PATIENCE, || {
            v.assert_alive();
            socks.iter().all(|s| s.exists()).then_some(())
        });
        v
    }

    pub fn socket(&self, i: usize) -> &Path {
        &self.sockets[i]
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("vswitchd already stopped").id() as i32
    }

    fn assert_alive(&mut self) {
        let status = self.child.as_mut().map(|c| c.try_wait());
        if let Some(Ok(Some(status))) = status {
            panic!(
                "vswitchd exited unexpectedly ({status}); stderr:\n{}",
                self.logs()
            );
        }
    }

    pub fn stdout(&self) -> String {
        read_lossy(&self.out)
    }

    pub fn logs(&self) -> String {
        format!(
            "--- vswitchd stdout ---\n{}\n--- vswitchd stderr ---\n{}",
            tail(&self.stdout(), 40),
            tail(&read_lossy(&self.err), 40)
        )
    }

    /// CPU time (user + system) the daemon has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/PID/stat");
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    fn report_count(out: &str) -> usize {
        out.lines().filter(|l| l.starts_with("fdb ")).count()
    }

    /// The report that ends with the `n`-th (1-based) `fdb` line of stdout.
    fn nth_report(out: &str, n: usize) -> Report {
        let lines: Vec<&str> = out.lines().collect();
        let fdb_idx: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("fdb "))
            .map(|(i, _)| i)
            .collect();
        let end = fdb_idx[n - 1];
        let start = if n >= 2 { fdb_idx[n - 2] + 1 } else { 0 };
        Report::parse(&lines[start..=end])
    }

    /// Sends SIGUSR1 and returns the counters it printed.
    pub fn counters(&mut self) -> Report {
        self.assert_alive();
        let before = Self::report_count(&self.stdout());
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGUSR1) };
        assert_eq!(rc, 0, "kill(SIGUSR1) failed");
        let n = wait_until("vswitchd counters after SIGUSR1", PATIENCE, || {
            self.assert_alive();
            let n = Self::report_count(&self.stdout());
            (n > before).then_some(n)
        });
        Self::nth_report(&self.stdout(), n)
    }

    /// Polls the counters until port `name` reports `link=up` (or down).
    pub fn wait_link(&mut self, name: &str, up: bool) -> Report {
        let what = format!(
            "vswitchd port {name} link={}",
            if up { "up" } else { "down" }
        );
        wait_until(&what, PATIENCE, || {
            let r = self.counters();
            (r.port(name).link_up == up).then_some(r)
        })
    }

    /// Polls the counters until `pred` holds; returns that report.
    pub fn wait_counters(&mut self, what: &str, pred: impl Fn(&Report) -> bool) -> Report {
        wait_until(what, PATIENCE, || {
            let r = self.counters();
            pred(&r).then_some(r)
        })
    }

    /// SIGTERM: waits for exit 0, checks the sockets are gone, returns the final counters.
    pub fn stop(&mut self) -> Report {
        let before = Self::report_count(&self.stdout());
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
        let mut child = self.child.take().unwrap();
        let status: ExitStatus = wait_until("vswitchd to exit after SIGTERM", PATIENCE, || {
            child.try_wait().expect("wait vswitchd")
        });
        assert!(
            status.success(),
            "vswitchd exited with {status}\n{}",
            self.logs()
        );
        for s in &self.sockets {
            assert!(!s.exists(), "vswitchd left {} behind", s.display());
        }
        let out = self.stdout();
        let n = Self::report_count(&out);
        assert!(
            n > before,
            "vswitchd printed no counters at SIGTERM\n{}",
            self.logs()
        );
        Self::nth_report(&out, n)
    }
}

impl Drop for Vswitchd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// NIC statistics of one testpmd port (`show port stats N`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_missed: u64,
    pub rx_bytes: u64,
    pub rx_nombuf: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_bytes: u64,
}

/// Value after `key` (e.g. "RX-packets:") in `text`.
fn field(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    text[at..].split_whitespace().next()?.parse().ok()
}

/// Where `dpdk-testpmd` is; panics with install instructions when it is not in PATH.
pub fn testpmd_path() -> PathBuf {
    crate::proc::find_on_path(TESTPMD).unwrap_or_else(|| {
        panic!(
            "`{TESTPMD}` not found in PATH: these tests need DPDK's testpmd; run \
                 scripts/install-test-deps.sh as root (Debian packages dpdk-dev \
                 librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23)"
        )
    })
}

/// Lcore layout of a testpmd process: `-l 0,1` with the forwarding lcore on `fwd_cpu`
/// (the main lcore, which only reads stdin in interactive mode, takes the other CPU).
#[derive(Debug, Clone, Copy)]
pub struct Lcores {
    pub fwd_cpu: u32,
}

impl Lcores {
    fn args(self) -> Vec<String> {
        let main = if self.fwd_cpu == 0 { 1 } else { 0 };
        vec![
            "-l".into(),
            "0,1".into(),
            "--main-lcore".into(),
            main.to_string(),
        ]
    }
}

/// An interactive `dpdk-testpmd` (`-i`) fed through a stdin pipe; killed on drop.
pub struct Testpmd {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    prefix: String,
    name: String,
}

impl Testpmd {
    /// Starts testpmd with one `net_virtio_user` port per `(socket, mac)` and the given
    /// extra application arguments (after `--`). Panics with a clear message when
    /// `dpdk-testpmd` is not installed.
    pub fn virtio_user(
        dir: &TestDir,
        name: &str,
        lcores: Lcores,
        ports: &[(&Path, &str)],
        app_args: &[&str],
    ) -> Testpmd {
        Self::virtio_user_queues(dir, name, lcores, ports, 1, app_args)
    }

    /// Like [`Testpmd::virtio_user`] with `queues` queue pairs per port
    /// (`queues=N,cq=1`: virtio_user needs its emulated control queue for
    /// more than one pair, and `--rxq=N --txq=N` so testpmd uses them all).
    pub fn virtio_user_queues(
        dir: &TestDir,
        name: &str,
        lcores: Lcores,
        ports: &[(&Path, &str)],
        queues: u16,
        app_args: &[&str],
    ) -> Testpmd {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("vsw-{}-{name}-{seq}", std::process::id());
        let testpmd = testpmd_path();
        // testpmd printf()s into a fully buffered stdout when it is not a terminal: make
        // it line buffered so the log shows each command's answer as it happens.
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "-eL"])
            .arg(&testpmd)
            .args(lcores.args())
            .args(["--no-huge", "-m", "512", "--no-pci", "--log-level=*:notice"])
            .arg(format!("--file-prefix={prefix}"));
        let cq = if queues > 1 { ",cq=1" } else { "" };
        for (i, (sock, mac)) in ports.iter().enumerate() {
            cmd.arg(format!(
                "--vdev=net_virtio_user{i},path={},queues={queues}{cq},mac={mac}",
                sock.display()
            ));
        }
        cmd.args(["--", "-i", "--total-num-mbufs=8192"]);
        if queues > 1 {
            cmd.arg(format!("--rxq={queues}"))
                .arg(format!("--txq={queues}"));
        }
        cmd.args(app_args);
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("create testpmd log");
        let err = out.try_clone().expect("dup testpmd log");
        cmd.stdin(Stdio::piped()).stdout(out).stderr(err);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start stdbuf {}: {e}", testpmd.display()));
        let stdin = child.stdin.take();
        let mut t = Testpmd {
            child: Some(child),
            stdin,
            log,
            prefix,
            name: name.to_string(),
        };
        // Ports are configured and started before the first prompt.
        t.wait_log("testpmd to start its ports", "testpmd> ", 1);
        t
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    fn assert_alive(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!(
                    "testpmd {} exited unexpectedly ({status}); log:\n{}",
                    self.name,
                    tail(&self.log(), 60)
                );
            }
        }
    }

    /// Waits until `needle` occurs at least `count` times in the log.
    pub fn wait_log(&mut self, what: &str, needle: &str, count: usize) {
        let what = format!("{what} (testpmd {}: {count} x {needle:?})", self.name);
        wait_until(&what, PATIENCE, || {
            self.assert_alive();
            (self.log().matches(needle).count() >= count).then_some(())
        });
    }

    /// Sends one command line.
    pub fn cmd(&mut self, line: &str) {
        self.assert_alive();
        let stdin = self.stdin.as_mut().expect("testpmd stdin closed");
        writeln!(stdin, "{line}").expect("write testpmd command");
        stdin.flush().expect("flush testpmd stdin");
    }

    /// `start`, waiting until forwarding runs.
    pub fn start(&mut self) {
        self.start_with("start");
    }

    /// `start tx_first [n]`: sends n bursts first, then io-forwards.
    pub fn start_tx_first(&mut self, bursts: u32) {
        self.start_with(&format!("start tx_first {bursts}"));
    }

    fn start_with(&mut self, command: &str) {
        let n = self.log().matches("packet forwarding - ports=").count();
        self.cmd(command);
        self.wait_log("forwarding to start", "packet forwarding - ports=", n + 1);
    }

    /// `stop`, waiting until the forwarding lcores have stopped.
    pub fn stop(&mut self) {
        let n = self.log().matches("Accumulated forward statistics").count();
        self.cmd("stop");
        self.wait_log(
            "forwarding to stop",
            "Accumulated forward statistics",
            n + 1,
        );
    }

    /// `show port stats N`, parsed (cumulative NIC counters of the port).
    pub fn port_stats(&mut self, port: u16) -> PortStats {
        // The block ends with "Tx-pps:" in the throughput section.
        let block = self.answer(
            &format!("show port stats {port}"),
            &format!("NIC statistics for port {port} "),
            "Tx-pps:",
        );
        let get = |key| field(&block, key).unwrap_or_else(|| panic!("no {key} in {block}"));
        PortStats {
            rx_packets: get("RX-packets:"),
            rx_missed: get("RX-missed:"),
            rx_bytes: get("RX-bytes:"),
            rx_nombuf: get("RX-nombuf:"),
            tx_packets: get("TX-packets:"),
            tx_errors: get("TX-errors:"),
            tx_bytes: get("TX-bytes:"),
        }
    }

    /// `show port xstats N` of a virtio_user port with `queues` queue pairs,
    /// parsed: `rx_q0_good_packets`, `tx_q1_good_packets`, ... by name.
    pub fn xstats(&mut self, port: u16, queues: u16) -> HashMap<String, u64> {
        // The virtio PMD lists the TX queues last, each ending with this one.
        let last = format!("tx_q{}_size_1519_max_packets: ", queues.max(1) - 1);
        let block = self.answer(
            &format!("show port xstats {port}"),
            &format!("NIC extended statistics for port {port} "),
            &last,
        );
        block
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.trim().to_owned(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// Sends `cmd` and returns its answer: the new block from `header` to
    /// the end of the line holding `last`, once testpmd has printed all of it.
    fn answer(&mut self, cmd: &str, header: &str, last: &str) -> String {
        let n = self.log().matches(header).count();
        self.cmd(cmd);
        wait_until(cmd, PATIENCE, || {
            self.assert_alive();
            let log = self.log();
            if log.matches(header).count() <= n {
                return None;
            }
            let block = &log[log.rfind(header)?..];
            let end = block.find(last)? + last.len();
            let end = end + block[end..].find('\n')?;
            Some(block[..end].to_owned())
        })
    }

    /// Polls `show port stats` until `pred` holds (e.g. all expected frames arrived).
    pub fn wait_stats(
        &mut self,
        port: u16,
        what: &str,
        pred: impl Fn(&PortStats) -> bool,
    ) -> PortStats {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let s = self.port_stats(port);
            if pred(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what} (testpmd {}); last stats {s:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Hard kill (a crashed guest): the backend sees the socket close without warning.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stdin = None;
        self.cleanup_runtime();
    }

    /// `quit` and wait for a clean exit.
    pub fn quit(&mut self) {
        self.cmd("quit");
        self.stdin = None;
        let mut child = self.child.take().unwrap();
        let status = wait_until("testpmd to quit", PATIENCE, || {
            child.try_wait().expect("wait testpmd")
        });
        assert!(
            status.success(),
            "testpmd {} exited with {status}",
            self.name
        );
        self.cleanup_runtime();
    }

    fn cleanup_runtime(&self) {
        let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(&self.prefix));
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- testpmd {} log ---\n{}",
                self.name,
                tail(&self.log(), 60)
            );
        }
        self.kill();
    }
}
