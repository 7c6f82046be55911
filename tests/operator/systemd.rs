//! `vswitchd` under a service manager: `contrib/systemd/vswitchd.service`
//! passes `systemd-analyze verify`; the real binary, run with
//! `NOTIFY_SOCKET` on a listener of the test's own, says `READY=1` only once
//! every socket is bound and every pool open, `STOPPING=1` on SIGTERM; and
//! `--pidfile` is written, removed and refuses a second daemon.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;
use test_kit::proc::output_timeout;
use test_kit::{ChildGuard, TestDir};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/systemd/vswitchd.service"
);
const INSTALL_HINT: &str = "run `sudo scripts/install-test-deps.sh` (installs systemd)";

/// A notification socket as systemd binds it: one datagram per sd_notify.
struct NotifyListener {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifyListener {
    fn bind(dir: &Path) -> NotifyListener {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        NotifyListener { sock, path }
    }

    /// The next message's assignments, one `KEY=VALUE` per element.
    fn next(&self, daemon: &ChildGuard) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no sd_notify message within 60 s ({e}); vswitchd stderr:\n{}",
                daemon.stderr_text()
            )
        });
        String::from_utf8(buf[..n].to_vec())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A loopback port nobody listens on now (for `metrics_listen`).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two vhost-user ports, an exported volume of a pool, the control socket
/// and the metrics endpoint.
fn config(dir: &Path, metrics_port: u16) -> PathBuf {
    let path = dir.join("fabric.toml");
    std::fs::write(
        &path,
        format!(
            "[daemon]\nrun_dir = \"run\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\
             [[switch]]\nname = \"br0\"\n\
             [[switch.port]]\nname = \"vm1\"\ntype = \"vhost-user\"\n\
             [[switch.port]]\nname = \"vm2\"\ntype = \"vhost-user\"\nsocket = \"other/vm2.sock\"\n\
             [[pool]]\nname = \"p0\"\npath = \"pool.img\"\nsize = \"256M\"\n\
             [[pool.volume]]\nname = \"disk1\"\nsize = \"64M\"\nexport = {{ queues = 2 }}\n"
        ),
    )
    .unwrap();
    path
}

fn sockets(dir: &Path) -> [PathBuf; 4] {
    [
        dir.join("run/vm1.sock"),
        dir.join("other/vm2.sock"),
        dir.join("run/disk1.sock"),
        dir.join("run/control.sock"),
    ]
}

/// `vswitchd --config CONFIG --pidfile PIDFILE` under `notify`.
fn command(config: &Path, pidfile: &Path, notify: &NotifyListener) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vswitchd"));
    cmd.arg("--config")
        .arg(config)
        .arg("--pidfile")
        .arg(pidfile)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("RUST_LOG", "info");
    cmd
}

fn spawn(config: &Path, pidfile: &Path, notify: &NotifyListener) -> ChildGuard {
    ChildGuard::spawn(command(config, pidfile, notify))
}

fn signal(child: &ChildGuard, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid, which it still is (not reaped).
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn fabricctl_status(control: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fabricctl"))
        .arg("--socket")
        .arg(control)
        .arg("status")
        .output()
        .unwrap()
}

/// The status line of `GET /metrics`.
fn metrics_status(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines().next().unwrap_or_default().to_owned()
}

fn stop(mut daemon: ChildGuard, notify: &NotifyListener) -> (Vec<String>, ExitStatus) {
    signal(&daemon, libc::SIGTERM);
    let msg = notify.next(&daemon);
    let st = daemon
        .wait_timeout(Duration::from_secs(60))
        .expect("vswitchd did not exit within 60 s of SIGTERM");
    (msg, st)
}

/// READY=1 is the daemon's first message, and when it arrives every socket
/// is already bound: the daemon is frozen (SIGSTOP) the moment READY comes
/// in, so nothing it does after sending can make the checks pass. Then the
/// control socket and the metrics endpoint answer, the pidfile holds its
/// pid; SIGTERM gives STOPPING=1, exit 0, and no pidfile or socket left.
#[test]
fn ready_only_once_every_socket_is_bound_and_stopping_on_sigterm() {
    let dir = TestDir::on_disk("sd-ready").keep_on_panic();
    let notify = NotifyListener::bind(dir.path());
    let port = free_port();
    let cfg = config(dir.path(), port);
    let pidfile = dir.join("pid/vswitchd.pid");
    let daemon = spawn(&cfg, &pidfile, &notify);

    let msg = notify.next(&daemon);
    signal(&daemon, libc::SIGSTOP);
    assert!(
        msg.iter().any(|l| l == "READY=1"),
        "first message is not READY=1: {msg:?}"
    );
    let missing: Vec<_> = sockets(dir.path())
        .into_iter()
        .filter(|s| !is_socket(s))
        .collect();
    let metrics_bound = TcpListener::bind(("127.0.0.1", port)).is_err();
    let pid_text = std::fs::read_to_string(&pidfile).unwrap_or_default();
    signal(&daemon, libc::SIGCONT);
    assert_eq!(missing, Vec::<PathBuf>::new(), "sockets missing at READY=1");
    assert!(metrics_bound, "metrics port {port} not bound at READY=1");
    assert_eq!(pid_text, format!("{}\n", daemon.id()));

    let out = fabricctl_status(&dir.join("run/control.sock"));
    assert!(
        out.status.success(),
        "fabricctl status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&daemon.id().to_string()),
        "status does not name pid {}: {}",
        daemon.id(),
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(metrics_status(port), "HTTP/1.1 200 OK");

    let stderr_at_stop = daemon.stderr_text();
    let (msg, st) = stop(daemon, &notify);
    assert!(
        msg.iter().any(|l| l == "STOPPING=1"),
        "message after SIGTERM is not STOPPING=1: {msg:?}"
    );
    assert!(st.success(), "vswitchd exit: {st}\n{stderr_at_stop}");
    assert!(!pidfile.exists(), "pidfile left behind");
    for s in sockets(dir.path()) {
        assert!(!s.exists(), "{} left behind", s.display());
    }
}

/// A pidfile naming a running vswitchd stops a second one before it binds
/// anything (exit 1, the first one's pid named, the file unchanged); one
/// naming a process that is not vswitchd (stale) is replaced.
#[test]
fn pidfile_of_a_live_vswitchd_refuses_a_second_one_and_a_stale_one_is_replaced() {
    let dir = TestDir::on_disk("sd-pid").keep_on_panic();
    let first_dir = dir.join("first");
    let second_dir = dir.join("second");
    std::fs::create_dir_all(&first_dir).unwrap();
    std::fs::create_dir_all(&second_dir).unwrap();
    let first_notify = NotifyListener::bind(&first_dir);
    let second_notify = NotifyListener::bind(&second_dir);
    let pidfile = dir.join("vswitchd.pid");

    let first = spawn(&config(&first_dir, free_port()), &pidfile, &first_notify);
    let msg = first_notify.next(&first);
    assert!(msg.iter().any(|l| l == "READY=1"), "{msg:?}");

    let second_cfg = config(&second_dir, free_port());
    let refused = output_timeout(
        command(&second_cfg, &pidfile, &second_notify),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "vswitchd: pidfile {}: vswitchd pid {} is running; stop it first\n",
            pidfile.display(),
            first.id()
        )
    );
    for s in sockets(&second_dir) {
        assert!(!s.exists(), "refused daemon bound {}", s.display());
    }
    assert!(!second_dir.join("pool.img").exists());
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", first.id())
    );

    let (_, st) = stop(first, &first_notify);
    assert!(st.success());
    assert!(!pidfile.exists());

    // Stale: the pid of a live process that is not vswitchd (this test).
    std::fs::write(&pidfile, format!("{}\n", std::process::id())).unwrap();
    let second = spawn(&second_cfg, &pidfile, &second_notify);
    let msg = second_notify.next(&second);
    assert!(msg.iter().any(|l| l == "READY=1"), "{msg:?}");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", second.id())
    );
    let (_, st) = stop(second, &second_notify);
    assert!(st.success());
    assert!(!pidfile.exists());
}

fn unit_text() -> String {
    std::fs::read_to_string(UNIT).unwrap()
}

/// The unit's settings the README promises.
#[test]
fn unit_is_notify_restarts_on_failure_and_starts_before_libvirt() {
    let unit = unit_text();
    let lines: Vec<&str> = unit.lines().filter(|l| !l.starts_with('#')).collect();
    for want in [
        "Type=notify",
        "Restart=on-failure",
        "Before=libvirtd.service virtqemud.service",
        "ExecStart=/usr/local/bin/vswitchd --config /etc/fabric/fabric.toml --pidfile /run/fabric/vswitchd.pid",
        "PIDFile=/run/fabric/vswitchd.pid",
    ] {
        assert!(lines.contains(&want), "{UNIT} lacks {want:?}");
    }
}

/// `systemd-analyze verify` accepts the unit without a single warning, its
/// commands pointed at this build's binary (verify checks they exist).
#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let tool = test_kit::proc::find_on_path("systemd-analyze")
        .unwrap_or_else(|| panic!("systemd-analyze not found: {INSTALL_HINT}"));
    let dir = TestDir::new("sd-verify");
    let unit = unit_text().replace("/usr/local/bin/vswitchd", env!("CARGO_BIN_EXE_vswitchd"));
    assert_ne!(
        unit,
        unit_text(),
        "the unit no longer runs /usr/local/bin/vswitchd"
    );
    let path = dir.join("vswitchd.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(&tool)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    assert_eq!(stderr, "", "systemd-analyze verify warned");
}
