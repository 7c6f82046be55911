//! A private `libvirtd` for one test: Debian's libvirt (9.0 in Debian 12, the
//! monolithic daemon: no `virtqemud` there) started in its own mount
//! namespace, where its configuration, state, runtime and log directories
//! are directories of the test, so the host's libvirt (if any) is neither
//! seen nor touched. QEMU runs as libvirt's unprivileged `libvirt-qemu` user,
//! as on any Debian host. Stopped by pid on drop, with every QEMU it started.

use crate::proc::{find_on_path, output_timeout, tail, wait_timeout};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "run `sudo scripts/install-test-deps.sh` (installs Debian's \
     libvirt-daemon-system, libvirt-daemon-driver-qemu and libvirt-clients)";

/// The longest one virsh command may take (starting a guest is the slowest).
const VIRSH_TIMEOUT: Duration = Duration::from_secs(120);

/// The user libvirt runs QEMU as on Debian.
pub const QEMU_USER: &str = "libvirt-qemu";

/// The host directories libvirtd uses, each replaced by a test directory.
const PRIVATE_DIRS: [(&str, &str); 5] = [
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
];

/// The QEMU driver's settings: QEMU as `libvirt-qemu`; its console and log
/// written by libvirtd itself (no virtlogd); no cgroups, no private /dev and
/// no MAC labels (none of which this test is about, and which need a
/// systemd host).
const QEMU_CONF: &str = "user = \"libvirt-qemu\"\n\
    group = \"libvirt-qemu\"\n\
    stdio_handler = \"file\"\n\
    namespaces = [ ]\n\
    cgroup_controllers = [ ]\n\
    security_driver = \"none\"\n\
    remember_owner = 0\n";

/// A running private libvirtd; killed (with its guests) on drop.
pub struct Libvirtd {
    child: Option<Child>,
    dir: PathBuf,
    virsh: PathBuf,
}

fn tool(name: &str) -> PathBuf {
    find_on_path(name)
        .or_else(|| {
            // libvirtd lives in /usr/sbin, which a user's PATH may lack.
            let sbin = Path::new("/usr/sbin").join(name);
            sbin.is_file().then_some(sbin)
        })
        .unwrap_or_else(|| panic!("{name} not found: {INSTALL_HINT}"))
}

impl Libvirtd {
    /// Starts libvirtd on directories under `dir` (which QEMU's user must be
    /// able to traverse) and waits until `virsh` reaches it.
    pub fn start(dir: &Path) -> Libvirtd {
        let libvirtd = tool("libvirtd");
        let virsh = tool("virsh");
        let unshare = tool("unshare");
        let mut mounts = String::from("mount -t tmpfs tmpfs /run && mkdir /run/libvirt");
        for (sub, host) in PRIVATE_DIRS {
            let own = dir.join(sub);
            fs::create_dir_all(&own).unwrap();
            mounts.push_str(&format!(" && mount --bind '{}' {host}", own.display()));
        }
        fs::write(dir.join("etc/qemu.conf"), QEMU_CONF).unwrap();
        fs::write(
            dir.join("etc/libvirtd.conf"),
            "unix_sock_rw_perms = \"0700\"\nlog_outputs = \"3:stderr\"\n",
        )
        .unwrap();
        let log = File::create(dir.join("libvirtd.log")).unwrap();
        // unshare and sh exec: the child's pid is libvirtd's.
        let child = Command::new(unshare)
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!("{mounts} && exec '{}'", libvirtd.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn unshare libvirtd");
        let mut d = Libvirtd {
            child: Some(child),
            dir: dir.to_path_buf(),
            virsh,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("libvirtd exited at start-up ({st}):\n{}", d.log_text());
            }
            if d.socket().exists() && d.virsh(&["version"]).status.success() {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "libvirtd not answering after 60 s:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("run/libvirt-sock")
    }

    /// `virsh ARGS` on this libvirtd. A virsh that hangs (a libvirtd stuck
    /// on a QEMU monitor) fails the test after two minutes instead of
    /// holding CI until its deadline.
    pub fn virsh(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.virsh);
        cmd.arg("-c")
            .arg(format!("qemu:///system?socket={}", self.socket().display()))
            .args(args);
        output_timeout(cmd, VIRSH_TIMEOUT)
    }

    /// `virsh ARGS`, which must succeed; its stdout. A failure names the
    /// domain logs.
    pub fn virsh_ok(&self, args: &[&str]) -> String {
        let out = self.virsh(args);
        assert!(
            out.status.success(),
            "virsh {args:?} failed ({}): {}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.diagnostics()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pid of the QEMU running `domain`, from libvirt's pidfile.
    pub fn qemu_pid(&self, domain: &str) -> Option<u32> {
        let text = fs::read_to_string(self.dir.join(format!("run/qemu/{domain}.pid"))).ok()?;
        text.trim().parse().ok()
    }

    /// The QEMU command line and messages libvirt logged for `domain`.
    pub fn qemu_log(&self, domain: &str) -> String {
        fs::read_to_string(self.dir.join(format!("log/qemu/{domain}.log"))).unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.join("libvirtd.log")).unwrap_or_default()
    }

    /// libvirtd's log and every domain's QEMU log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = format!("--- libvirtd ---\n{}\n", tail(&self.log_text(), 30));
        if let Ok(entries) = fs::read_dir(self.dir.join("log/qemu")) {
            for e in entries.flatten() {
                let text = fs::read_to_string(e.path()).unwrap_or_default();
                out.push_str(&format!(
                    "--- {} ---\n{}\n",
                    e.path().display(),
                    tail(&text, 30)
                ));
            }
        }
        out
    }

    /// Kills every QEMU libvirt still runs (by the pids in its pidfiles),
    /// then stops libvirtd (SIGTERM, SIGKILL after 20 s) and reaps it.
    pub fn stop(&mut self) {
        if let Ok(entries) = fs::read_dir(self.dir.join("run/qemu")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(domain) = name.strip_suffix(".pid") {
                    if let Some(pid) = self.qemu_pid(domain) {
                        // SAFETY: kill(2) on the pid of a QEMU this libvirtd started.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    }
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid (libvirtd, not reaped yet).
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            if wait_timeout(&mut child, Duration::from_secs(20)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        self.stop();
    }
}

/// The uid of `user`, from /etc/passwd; panics naming the install hint when
/// there is no such user (libvirt-daemon-system creates `libvirt-qemu`).
pub fn uid_of(user: &str) -> u32 {
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[0] == user)
        .and_then(|f| f[2].parse().ok())
        .unwrap_or_else(|| panic!("no user {user}: {INSTALL_HINT}"))
}

/// The real uid of process `pid` (`Uid:` of /proc/PID/status).
pub fn uid_of_process(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
