//! Helpers for tests that boot real QEMU (TCG) guests against a real `vswitchd`:
//! locating QEMU and the guest image (and failing loudly when they are missing),
//! a temporary directory, and process guards that kill their child on drop.
//!
//! The guest image is the one `scripts/build-guest-image.sh` builds: a Debian cloud
//! kernel and a busybox initramfs whose `/init` reads `fabric.*` parameters from the
//! kernel command line and prints `FABRIC-RESULT ...` lines on the serial console.
//! [`blk`] adds block guests (fio on a vhost-user-blk disk) and qemu-storage-daemon.
//! [`migrate`] runs one guest in a sequence of QEMU processes (live migration), driven
//! through [`qmp`]; [`Vswitchd::start_in`] runs a daemon inside a network namespace.

pub mod blk;
pub mod migrate;
pub mod qmp;

pub use crate::dir::TestDir;
use crate::netns::Netns;
pub(crate) use crate::proc::{tail, wait_timeout};

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Environment variable naming the guest image directory (holding `vmlinuz` and
/// `initramfs.img`); default `<workspace>/target/guest-image`.
pub const IMAGE_ENV: &str = "FABRIC_GUEST_IMAGE";
/// Environment variable naming the QEMU binary; default `qemu-system-x86_64` on PATH.
pub const QEMU_ENV: &str = "FABRIC_QEMU";

const INSTALL_HINT: &str = "run `sudo scripts/install-qemu.sh` (installs qemu-system-x86 and \
     qemu-utils (qemu-storage-daemon) from bookworm-backports plus the image build tools)";

fn workspace() -> PathBuf {
    // The workspace root: this crate sits one level below it.
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The QEMU binary. Panics (never skips) when it is missing or does not run.
pub fn qemu_binary() -> PathBuf {
    checked_binary(
        Some(QEMU_ENV),
        "qemu-system-x86_64",
        &format!("{INSTALL_HINT}, or set {QEMU_ENV}"),
    )
}

/// `$env` or `name` on PATH; `program --version` must run. Panics (never
/// skips) with `hint` otherwise.
pub(crate) fn checked_binary(env: Option<&str>, name: &str, hint: &str) -> PathBuf {
    let path = env
        .and_then(std::env::var_os)
        .map(PathBuf::from)
        .or_else(|| crate::proc::find_on_path(name))
        .unwrap_or_else(|| panic!("{name} not found on PATH: {hint}"));
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}: {hint}", path.display()));
    assert!(
        out.status.success(),
        "{} --version failed ({}): {}\n{hint}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// The guest image. Panics (never skips) when it is missing.
pub fn guest_image() -> GuestImage {
    let dir = std::env::var_os(IMAGE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/guest-image"));
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initramfs.img");
    for f in [&kernel, &initrd] {
        assert!(
            f.is_file(),
            "guest image file {} is missing: build it with `scripts/build-guest-image.sh {}` \
             (needs the tools from `sudo scripts/install-qemu.sh`), or point {IMAGE_ENV} at a \
             directory holding vmlinuz and initramfs.img",
            f.display(),
            dir.display()
        );
    }
    GuestImage { kernel, initrd }
}

/// One port's line of vswitchd's counter report, as key -> value.
pub type PortCounters = HashMap<String, String>;

pub fn counter(c: &PortCounters, key: &str) -> u64 {
    c.get(key)
        .unwrap_or_else(|| panic!("counter {key} missing in {c:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("counter {key} not a number in {c:?}: {e}"))
}

/// The `vswitchd` binary of this package, running with a given config. Its stdout
/// (counter reports) is collected line by line; stderr (the log) goes to a file.
pub struct Vswitchd {
    child: Option<Child>,
    stdout: Arc<Mutex<Vec<String>>>,
    reader: Option<thread::JoinHandle<()>>,
    log: PathBuf,
    dir: PathBuf,
    pub sockets: Vec<PathBuf>,
}

impl Vswitchd {
    /// Writes `config` to `dir/fabric.toml`, starts the daemon and waits until every
    /// port socket (`dir/run/<port>.sock`) exists.
    pub fn start(dir: &Path, config: &str, ports: &[&str]) -> Vswitchd {
        Self::start_with(Command::new(crate::bins::vswitchd()), dir, config, ports)
    }

    /// [`Vswitchd::start`] inside a network namespace (`ip netns exec`, which execs
    /// the daemon: the child's pid is the daemon's), as one "host" of a test: its TAP
    /// and tunnel ports live there, its sockets in `dir` as usual.
    pub fn start_in(netns: &Netns, dir: &Path, config: &str, ports: &[&str]) -> Vswitchd {
        let cmd = netns.command(&crate::bins::vswitchd().to_string_lossy());
        Self::start_with(cmd, dir, config, ports)
    }

    fn start_with(mut cmd: Command, dir: &Path, config: &str, ports: &[&str]) -> Vswitchd {
        let cfg = dir.join("fabric.toml");
        fs::write(&cfg, config).unwrap();
        let log = dir.join("vswitchd.log");
        let mut child = cmd
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn vswitchd");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let lines = stdout.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let sockets: Vec<PathBuf> = ports
            .iter()
            .map(|p| dir.join("run").join(format!("{p}.sock")))
            .collect();
        let mut vs = Vswitchd {
            child: Some(child),
            stdout,
            reader: Some(reader),
            log,
            dir: dir.to_path_buf(),
            sockets,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vs.sockets.iter().all(|s| s.exists()) {
            if let Some(st) = vs.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("vswitchd exited at start-up ({st}):\n{}", vs.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "vswitchd sockets {:?} not there after 10 s:\n{}",
                vs.sockets,
                vs.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
        vs
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `fabricctl --json ARGS` on this daemon's control socket (`dir/run/control.sock`);
    /// panics unless it succeeds.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let socket = self.dir.join("run/control.sock");
        let out = Command::new(crate::bins::fabricctl())
            .arg("--control-socket")
            .arg(&socket)
            .arg("--json")
            .args(args)
            .output()
            .expect("run fabricctl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "fabricctl {args:?} failed ({}): {}{text}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("fabricctl {args:?}: {e}: {text}"))
    }

    fn pid(&self) -> libc::pid_t {
        self.child.as_ref().expect("vswitchd already stopped").id() as libc::pid_t
    }

    /// Parses the last complete counter report at or after stdout line `from`.
    fn report_after(&self, from: usize) -> Option<HashMap<String, PortCounters>> {
        let lines = self.stdout.lock().unwrap();
        let fdb = (from..lines.len())
            .rev()
            .find(|&i| lines[i].starts_with("fdb "))?;
        let mut ports = HashMap::new();
        for line in lines[from..fdb].iter().rev() {
            if !line.starts_with("counters ") {
                continue;
            }
            let kv: PortCounters = line
                .split_whitespace()
                .skip(1)
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let port = kv.get("port").cloned().unwrap_or_default();
            // Walking backwards from the fdb line: the first time a port shows up
            // is its line in this report.
            ports.entry(port).or_insert(kv);
        }
        let mut fdb_kv: PortCounters = lines[fdb]
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        fdb_kv.insert("port".into(), "<fdb>".into());
        ports.insert("<fdb>".into(), fdb_kv);
        Some(ports)
    }

    /// SIGUSR1, then the report it prints: port name -> counters ("<fdb>" for the
    /// FDB statistics line).
    pub fn counters(&self) -> HashMap<String, PortCounters> {
        let from = self.stdout.lock().unwrap().len();
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGUSR1) }, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.report_after(from) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no counter report 10 s after SIGUSR1; stdout so far: {:?}\nlog:\n{}",
                self.stdout.lock().unwrap(),
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; returns the exit status and the final counter report.
    pub fn stop(mut self) -> (ExitStatus, HashMap<String, PortCounters>) {
        let from = self.stdout.lock().unwrap().len();
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGTERM) }, 0);
        let mut child = self.child.take().unwrap();
        let status = wait_timeout(&mut child, Duration::from_secs(15)).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "vswitchd did not exit within 15 s of SIGTERM:\n{}",
                self.log_text()
            )
        });
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let report = self.report_after(from).unwrap_or_else(|| {
            panic!(
                "vswitchd printed no counters at SIGTERM; stdout: {:?}",
                self.stdout.lock().unwrap()
            )
        });
        (status, report)
    }
}

impl Drop for Vswitchd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!("--- vswitchd log ---\n{}", tail(&self.log_text(), 60));
        }
    }
}

/// QEMU arguments attaching a virtio-net NIC with `mac` to the vhost-user socket
/// `socket`; `reconnect`: when the backend goes away, reconnect (`reconnect-ms`), as a
/// deployment that restarts its vhost-user daemon configures QEMU.
pub fn net_device_args(socket: &Path, mac: &str, reconnect: bool) -> Vec<String> {
    net_device_args_mq(socket, mac, reconnect, 1)
}

/// As [`net_device_args`] with `queues` queue pairs: `queues > 1` asks for
/// VIRTIO_NET_F_MQ (`mq=on`, an MSI-X vector per queue plus config and control).
/// QEMU's virtio-net defaults leave checksum and TSO offloads on: what the backend
/// offers is what the guest gets.
pub fn net_device_args_mq(socket: &Path, mac: &str, reconnect: bool, queues: u16) -> Vec<String> {
    let reconnect = if reconnect { ",reconnect-ms=200" } else { "" };
    let (netdev_queues, mq) = match queues {
        0 | 1 => (String::new(), String::new()),
        n => (
            format!(",queues={n}"),
            format!(",mq=on,vectors={}", 2 * u32::from(n) + 2),
        ),
    };
    vec![
        "-chardev".to_string(),
        format!("socket,id=c0,path={}{reconnect}", socket.display()),
        "-netdev".to_string(),
        format!("vhost-user,id=n0,chardev=c0{netdev_queues}"),
        "-device".to_string(),
        format!("virtio-net-pci,netdev=n0,mac={mac}{mq}"),
    ]
}

/// Memory for every guest: vhost-user needs it shared with the backend.
pub const GUEST_MEM_MB: u32 = 256;

/// One QEMU (TCG) guest on one vhost-user-net socket, serial console in a file.
pub struct Guest {
    pub name: String,
    child: Option<Child>,
    serial: PathBuf,
    stderr: PathBuf,
}

/// What [`Guest::boot_with`] boots: vCPUs, memory and the device arguments.
pub struct GuestSpec<'a> {
    /// vCPUs (`-smp`); more than one runs multi-threaded TCG.
    pub smp: u32,
    /// Guest memory, all of it shared (vhost-user needs the backend to map it).
    pub mem_mb: u32,
    /// A file to hold the guest memory (so a test can read it); `None`: a memfd.
    pub mem_path: Option<&'a Path>,
    /// QEMU arguments adding the devices (`-chardev ... -device ...`).
    pub device_args: &'a [String],
    /// Kernel command line after `console=ttyS0 quiet panic=-1` (`fabric.*` parameters).
    pub params: &'a str,
}

impl Guest {
    /// Boots the test image; `params` go on the kernel command line (`fabric.*`).
    pub fn boot(
        qemu: &Path,
        image: &GuestImage,
        dir: &Path,
        name: &str,
        socket: &Path,
        mac: &str,
        params: &str,
    ) -> Guest {
        let devices = net_device_args(socket, mac, false);
        let params = format!("ipv6.disable=1 {params}");
        let spec = GuestSpec {
            smp: 1,
            mem_mb: GUEST_MEM_MB,
            mem_path: None,
            device_args: &devices,
            params: &params,
        };
        Guest::boot_with(qemu, image, dir, name, &spec)
    }

    /// Boots the test image with any devices; serial console in `dir/NAME.serial.log`,
    /// QEMU's own messages in `dir/NAME.qemu.log`.
    pub fn boot_with(
        qemu: &Path,
        image: &GuestImage,
        dir: &Path,
        name: &str,
        spec: &GuestSpec,
    ) -> Guest {
        let serial = dir.join(format!("{name}.serial.log"));
        let stderr = dir.join(format!("{name}.qemu.log"));
        let append = format!("console=ttyS0 quiet panic=-1 {}", spec.params);
        let mem = spec.mem_mb;
        // QEMU's stdout and stderr share one file (one open file description).
        let qemu_out = File::create(&stderr).unwrap();
        let mut cmd = Command::new(qemu);
        cmd.args(["-accel", "tcg", "-nodefaults", "-no-user-config"])
            .args(["-smp", &spec.smp.to_string()])
            .args(["-m", &mem.to_string()])
            .args([
                "-object",
                &match spec.mem_path {
                    Some(path) => format!(
                        "memory-backend-file,id=mem,size={mem}M,mem-path={},share=on",
                        path.display()
                    ),
                    None => format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
                },
            ])
            .args(["-numa", "node,memdev=mem"])
            .args(spec.device_args)
            // No display, no monitor: the serial console is the only output.
            .args(["-display", "none", "-monitor", "none"])
            .args(["-serial", &format!("file:{}", serial.display())])
            .arg("-no-reboot")
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .args(["-append", &append])
            .stdin(Stdio::null())
            .stdout(qemu_out.try_clone().unwrap())
            .stderr(qemu_out);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}: {INSTALL_HINT}", qemu.display()));
        Guest {
            name: name.to_string(),
            child: Some(child),
            serial,
            stderr,
        }
    }

    pub fn serial_text(&self) -> String {
        fs::read_to_string(&self.serial).unwrap_or_default()
    }

    pub fn qemu_log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Serial console tail and QEMU's own messages, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- guest {} serial (tail) ---\n{}\n--- guest {} qemu stderr ---\n{}",
            self.name,
            tail(&self.serial_text(), 40),
            self.name,
            tail(&self.qemu_log(), 20)
        )
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits for a console line containing `needle` and returns it. Errors early
    /// (with diagnostics) on a `FABRIC-ERROR` line or when QEMU exits first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        self.wait_for_nth(needle, 1, timeout)
    }

    /// As [`Guest::wait_for`], for the `n`th line (from 1) containing `needle`: a
    /// guest that reports the same kind of line again and again.
    pub fn wait_for_nth(
        &mut self,
        needle: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let nth = |text: &str| {
            text.lines()
                .filter(|l| l.contains(needle))
                .nth(n.saturating_sub(1))
                .map(|l| l.trim_end().to_string())
        };
        loop {
            let text = self.serial_text();
            // Only whole lines: the guest may be half-way through writing one.
            let text = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            if let Some(line) = nth(text) {
                return Ok(line);
            }
            if let Some(line) = text.lines().find(|l| l.contains("FABRIC-ERROR")) {
                return Err(format!(
                    "guest {} reported {line:?} while waiting for {needle:?}\n{}",
                    self.name,
                    self.diagnostics()
                ));
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                // One last look: the line may have been written just before exit.
                if let Some(line) = nth(&self.serial_text()) {
                    return Ok(line);
                }
                return Err(format!(
                    "guest {} (QEMU) exited ({st}) before printing {needle:?}\n{}",
                    self.name,
                    self.diagnostics()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "guest {} printed no {needle:?} within {timeout:?}\n{}",
                    self.name,
                    self.diagnostics()
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for QEMU to exit by itself (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let child = self.child.as_mut().expect("guest already reaped");
        wait_timeout(child, timeout).ok_or_else(|| {
            format!(
                "guest {} did not power off within {timeout:?}\n{}",
                self.name,
                self.diagnostics()
            )
        })
    }

    /// Kills QEMU (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}
