//! The daemon's sockets against hostile or careless neighbours: a socket
//! path that holds a file, a squatter on the relay's old abstract names, a
//! frontend that connects and says nothing; and the configured mode, owner
//! and group.

use test_kit::blkio as blk_support;
use test_kit::frontend as support;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fabric::Daemon;
use support::{eth, mac, GuestNic, NicOptions};
use test_kit::TestDir;

/// Starts the daemon in process on `toml` written to `dir/fabric.toml`.
fn start(dir: &Path, toml: &str) -> std::io::Result<Daemon> {
    let path = dir.join("fabric.toml");
    std::fs::write(&path, toml).unwrap();
    let config = fabric_config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    Daemon::start_from(&config, Some(&path))
}

const TWO_PORTS: &str = "[[switch]]\nname = \"br0\"\n\
    [[switch.port]]\nname = \"a\"\ntype = \"vhost-user\"\n\
    [[switch.port]]\nname = \"b\"\ntype = \"vhost-user\"\n";

/// Runs `vswitchd` (with `--check` if asked) on `dir/fabric.toml`; returns
/// (success, stderr).
fn vswitchd(dir: &Path, check: bool) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vswitchd"));
    if check {
        cmd.arg("--check");
    }
    let out = cmd
        .arg("--config")
        .arg(dir.join("fabric.toml"))
        .output()
        .expect("run vswitchd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A port socket, an export socket or the control socket configured at the
/// path of an existing file (here the pool image): `--check` and start-up
/// both fail naming the key, and the file keeps every byte.
#[test]
fn a_socket_path_on_an_existing_file_is_refused_and_the_file_kept() {
    let pool = "[[pool]]\nname = \"p0\"\npath = \"pool.img\"\nsize = \"8M\"\n";
    for (toml, key) in [
        (
            format!("[[switch]]\nname = \"br0\"\n[[switch.port]]\nname = \"a\"\ntype = \"vhost-user\"\nsocket = \"pool.img\"\n{pool}"),
            "switch[0].port[0].socket",
        ),
        (
            format!("{pool}[[pool.volume]]\nname = \"v\"\nsize = \"1M\"\nexport = {{ socket = \"pool.img\" }}\n"),
            "pool[0].volume[0].export.socket",
        ),
        (
            format!("[daemon]\ncontrol_socket = \"pool.img\"\n{pool}"),
            "daemon.control_socket",
        ),
    ] {
        let dir = TestDir::on_disk("sock-file");
        // A pool image made by a first start.
        std::fs::write(dir.join("fabric.toml"), pool).unwrap();
        let image = dir.join("pool.img");
        let (ok, err) = vswitchd(&dir, true);
        assert!(ok, "{err}");
        drop(start(&dir, pool).unwrap());
        let bytes = std::fs::read(&image).unwrap();
        assert_eq!(bytes.len(), 8 << 20);
        std::fs::write(dir.join("fabric.toml"), &toml).unwrap();
        for check in [true, false] {
            let (ok, err) = vswitchd(&dir, check);
            assert!(!ok, "check={check}: {toml}");
            let want = format!("{key}: {} exists and is not a socket", image.display());
            assert!(err.contains(&want), "check={check}: {err}");
            assert!(std::fs::read(&image).unwrap() == bytes, "{key}: image changed");
        }
        }
}

/// The same when the file appears after the config was read: the daemon
/// itself refuses (naming the port, export or control socket), and removes
/// nothing; a port added at run time onto a file is refused too.
#[test]
fn a_file_that_appears_after_the_config_was_read_is_kept() {
    let dir = TestDir::on_disk("sock-late");
    let path = dir.join("fabric.toml");
    std::fs::write(
        &path,
        format!("{TWO_PORTS}[[pool]]\nname = \"p0\"\npath = \"pool.img\"\nsize = \"8M\"\n[[pool.volume]]\nname = \"v\"\nsize = \"1M\"\nexport = {{}}\n"),
    )
    .unwrap();
    let config = fabric_config::load(&path).unwrap();
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    for (file, what) in [
        ("a.sock", "port a: socket: "),
        ("v.sock", "export of v: socket: "),
        ("control.sock", "daemon.control_socket: "),
    ] {
        let victim = run.join(file);
        std::fs::write(&victim, b"precious").unwrap();
        let err = Daemon::start_from(&config, Some(&path))
            .err()
            .expect("start fails");
        let want = format!(
            "{what}{} exists and is a regular file, not a socket",
            victim.display()
        );
        assert!(err.to_string().contains(&want), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        std::fs::remove_file(&victim).unwrap();
    }
    // At run time: port.add onto a file is refused, the file kept.
    let daemon = Daemon::start_from(&config, Some(&path)).unwrap();
    let victim = run.join("c.sock");
    std::fs::write(&victim, b"precious").unwrap();
    let answer = fabric::control::server::answer(
        daemon.runtime(),
        r#"{"v":1,"id":1,"op":"port.add","args":{"switch":"br0","name":"c"}}"#,
    );
    assert!(!answer.ok);
    let message = answer.error.unwrap().message;
    let want = format!("socket: {} exists and is not a socket", victim.display());
    assert!(message.contains(&want), "{message}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    daemon.shutdown();
}

/// The socket inodes this process holds, from /proc/self/fd.
fn my_socket_inodes() -> Vec<u64> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?.to_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// /proc/net/unix lines of this process's sockets whose address is abstract
/// (`@name`). An accepted connection shows its listener's address, so the
/// relay's handler side shows where it was reached.
fn my_abstract_sockets() -> Vec<String> {
    let mine = my_socket_inodes();
    std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 8
                && f[7].starts_with('@')
                && f[6].parse::<u64>().is_ok_and(|i| mine.contains(&i))
        })
        .map(str::to_owned)
        .collect()
}

/// Another local user could bind the abstract names the relay used
/// (`fabric-<pid>-<n>-<session>`) before the daemon and make every attach
/// fail, or connect first and drive the device. Squatting them all changes
/// nothing now, and while a frontend is attached no socket of the daemon has
/// an abstract name.
#[test]
fn squatters_on_abstract_names_cannot_block_or_reach_the_relay() {
    use std::os::linux::net::SocketAddrExt;
    let dir = TestDir::on_disk("sock-squat");
    let daemon = start(&dir, TWO_PORTS).unwrap();
    let pid = std::process::id();
    let squatters: Vec<UnixListener> = (0..200u64)
        .flat_map(|n| (1..=2u64).map(move |s| format!("fabric-{pid}-{n}-{s}")))
        .map(|name| {
            let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            UnixListener::bind_addr(&addr).unwrap()
        })
        .collect();
    let mut a = GuestNic::connect(&dir.join("run/a.sock"), NicOptions::default())
        .expect("a frontend attaches despite the squatters");
    drop(squatters);
    let mut b = GuestNic::connect(&dir.join("run/b.sock"), NicOptions::default()).unwrap();
    assert_eq!(my_abstract_sockets(), Vec::<String>::new());
    wait_links(&daemon, &["a", "b"]);
    let frame = eth(mac(2), mac(1), 0x0800, b"past the squatters");
    assert!(a.send(&frame));
    assert_eq!(b.recv(Duration::from_secs(5)).as_deref(), Some(&frame[..]));
    drop((a, b));
    daemon.shutdown();
}

fn wait_links(daemon: &Daemon, ports: &[&str]) {
    for p in ports {
        support::fabric::wait_link(daemon, p, true);
    }
}

/// `socket_mode`, `socket_owner` and `socket_group` are what the port and
/// export sockets get (numeric ids; the test runs as root so it may chown),
/// whatever the umask; the control socket stays 0600 and the daemon's.
#[test]
fn sockets_get_the_configured_mode_owner_and_group() {
    let dir = TestDir::on_disk("sock-mode");
    let daemon = start(
        &dir,
        &format!("[daemon]\nsocket_mode = 0o660\nsocket_owner = 65534\nsocket_group = \"65533\"\n{TWO_PORTS}[[pool]]\nname = \"p0\"\npath = \"pool.img\"\nsize = \"8M\"\n[[pool.volume]]\nname = \"v\"\nsize = \"1M\"\nexport = {{}}\n"),
    )
    .unwrap();
    for s in ["a", "b", "v"] {
        let m = std::fs::symlink_metadata(dir.join(format!("run/{s}.sock"))).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (0o660, 65534, 65533),
            "{s}.sock"
        );
    }
    let control = std::fs::symlink_metadata(dir.join("run/control.sock")).unwrap();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    assert_eq!((control.mode() & 0o7777, control.uid()), (0o600, me));
    // Still served (root may connect whatever the mode).
    let mut client = blk_support::BlkClient::connect(&dir.join("run/v.sock"), 1).unwrap();
    client.queue(0).write_pattern(5, 0, 4096).unwrap();
    client.queue(0).verify_pattern(5, 0, 4096).unwrap();
    drop(client);
    // A user name that does not exist is refused by key.
    std::fs::write(
        dir.join("fabric.toml"),
        "[daemon]\nsocket_owner = \"no-such-user-xyz\"\n",
    )
    .unwrap();
    let (ok, err) = vswitchd(&dir, true);
    assert!(!ok);
    assert!(
        err.contains("daemon.socket_owner: no user named \"no-such-user-xyz\""),
        "{err}"
    );
    daemon.shutdown();
}

/// Reads from `s` until EOF or `limit`; true at EOF.
fn closed_within(s: &mut UnixStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0))
}

/// A client that connects and sends nothing is dropped after
/// `handshake_timeout_ms` (not before), and the next frontend on the same
/// socket attaches and forwards; an export serves I/O after a silent client.
#[test]
fn a_silent_client_is_dropped_and_the_next_frontend_is_served() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    let dir = TestDir::on_disk("sock-silent");
    let daemon = start(
        &dir,
        &format!("[daemon]\nhandshake_timeout_ms = 300\n{TWO_PORTS}[[pool]]\nname = \"p0\"\npath = \"pool.img\"\nsize = \"8M\"\n[[pool.volume]]\nname = \"v\"\nsize = \"1M\"\nexport = {{}}\n"),
    )
    .unwrap();
    let connected = Instant::now();
    let mut silent = UnixStream::connect(dir.join("run/a.sock")).unwrap();
    let mut silent_blk = UnixStream::connect(dir.join("run/v.sock")).unwrap();
    // "Dropped" within a generous 5 s, and not before the timeout.
    assert!(closed_within(&mut silent, Duration::from_secs(5)));
    assert!(connected.elapsed() >= TIMEOUT);
    assert!(closed_within(&mut silent_blk, Duration::from_secs(5)));

    let mut a = GuestNic::connect(&dir.join("run/a.sock"), NicOptions::default()).unwrap();
    let mut b = GuestNic::connect(&dir.join("run/b.sock"), NicOptions::default()).unwrap();
    wait_links(&daemon, &["a", "b"]);
    let frame = eth(mac(2), mac(1), 0x0800, b"after a silent client");
    assert!(a.send(&frame));
    assert_eq!(b.recv(Duration::from_secs(5)).as_deref(), Some(&frame[..]));

    let mut client = blk_support::BlkClient::connect(&dir.join("run/v.sock"), 1).unwrap();
    client.queue(0).write_pattern(9, 0, 65536).unwrap();
    client.queue(0).verify_pattern(9, 0, 65536).unwrap();
    drop((a, b, client));
    daemon.shutdown();
}
