//! `fabricctl` (the binary) against a fake control server: the requests it
//! sends for every subcommand, its tables and `--json` output, its exit codes
//! for every error class, an absent daemon and malformed answers.
//!
//! [`fake_control::FakeControlServer`] is self-contained (std + serde_json):
//! a thread accepting on a Unix socket in a temp directory, recording each
//! request line and answering through a handler (canned results per op by
//! default, or any [`fake_control::Reply`] including broken ones).

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fake_control::{canned_result, FakeControlServer, Reply};
use test_kit::TestDir;

pub mod fake_control {
    //! A fake `vswitchd` control socket for client tests.

    use serde_json::{json, Value};
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::Duration;
    use test_kit::TestDir;

    /// What the fake server does with one request.
    #[derive(Debug, Clone)]
    pub enum Reply {
        /// `{"ok":true,"result":...}`.
        Result(Value),
        /// `{"ok":true}` without a result.
        Empty,
        /// `{"ok":false,"error":{"code":..,"message":..}}`.
        Error(String, String),
        /// This line as is (a newline is added).
        Line(String),
        /// These bytes as is, then the connection is closed.
        Raw(Vec<u8>),
        /// Close the connection without answering.
        Close,
        /// Answer nothing for this long, then close.
        Hang(Duration),
    }

    type Handler = dyn Fn(&Value) -> Reply + Send + Sync;

    /// A Unix socket server speaking the control protocol's framing, with
    /// answers from a handler. Requests are recorded (as parsed JSON, or a
    /// JSON string holding a line that was not JSON) before the answer is sent.
    pub struct FakeControlServer {
        dir: TestDir,
        path: PathBuf,
        requests: Arc<Mutex<Vec<Value>>>,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl FakeControlServer {
        /// Listens on `<temp dir>/run/control.sock` (so a client started in
        /// [`dir`](Self::dir) finds it at the default `./run/control.sock`).
        pub fn start(handler: impl Fn(&Value) -> Reply + Send + Sync + 'static) -> Self {
            let dir = TestDir::new("fabricctl");
            std::fs::create_dir(dir.join("run")).unwrap();
            let path = dir.join("run/control.sock");
            let listener = UnixListener::bind(&path).unwrap();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let handler: Arc<Handler> = Arc::new(handler);
            let thread = {
                let (requests, stop) = (requests.clone(), stop.clone());
                std::thread::spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let (requests, handler) = (requests.clone(), handler.clone());
                        std::thread::spawn(move || serve(conn, &requests, &*handler));
                    }
                })
            };
            FakeControlServer {
                dir,
                path,
                requests,
                stop,
                thread: Some(thread),
            }
        }

        /// Answers every op with [`canned_result`] (`unknown_op` for others).
        pub fn canned() -> Self {
            Self::start(
                |req| match canned_result(req["op"].as_str().unwrap_or_default()) {
                    Some(Value::Null) => Reply::Empty,
                    Some(result) => Reply::Result(result),
                    None => Reply::Error("unknown_op".into(), "no such operation".into()),
                },
            )
        }

        /// Answers every request with `reply`.
        pub fn always(reply: Reply) -> Self {
            Self::start(move |_| reply.clone())
        }

        /// The socket.
        pub fn path(&self) -> &Path {
            &self.path
        }

        /// The temp directory holding `run/control.sock`.
        pub fn dir(&self) -> &Path {
            self.dir.path()
        }

        /// The requests received so far, in order.
        pub fn requests(&self) -> Vec<Value> {
            self.requests.lock().unwrap().clone()
        }
    }

    impl Drop for FakeControlServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let _ = UnixStream::connect(&self.path);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn serve(conn: UnixStream, requests: &Mutex<Vec<Value>>, handler: &Handler) {
        let mut writer = match conn.try_clone() {
            Ok(w) => w,
            Err(_) => return,
        };
        let mut reader = BufReader::new(conn);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = line.trim_end_matches('\n');
            let request: Value =
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()));
            requests.lock().unwrap().push(request.clone());
            let id = request["id"].as_u64().unwrap_or(0);
            let answer = match handler(&request) {
                Reply::Result(result) => json!({"v":1,"id":id,"ok":true,"result":result}),
                Reply::Empty => json!({"v":1,"id":id,"ok":true}),
                Reply::Error(code, message) => json!({"v":1,"id":id,"ok":false,
                    "error":{"code":code,"message":message}}),
                Reply::Line(text) => {
                    let _ = writer.write_all(format!("{text}\n").as_bytes());
                    continue;
                }
                Reply::Raw(bytes) => {
                    let _ = writer.write_all(&bytes);
                    return;
                }
                Reply::Close => return,
                Reply::Hang(d) => {
                    std::thread::sleep(d);
                    return;
                }
            };
            if writer.write_all(format!("{answer}\n").as_bytes()).is_err() {
                return;
            }
        }
    }

    /// A plausible result for each op (`Null`: the op has none; `None`: not
    /// an op).
    pub fn canned_result(op: &str) -> Option<Value> {
        // vm1 as an older daemon lists it, without `broken_queues`,
        // `announces` or the offload counters (shown as 0).
        let vm1 = json!({"switch":"br0","name":"vm1","type":"vhost-user",
            "socket":"/srv/fabric/run/vm1.sock","vlan":"access 10","link":true,
            "rx_packets":1234,"rx_bytes":1572864,"tx_packets":99,"tx_bytes":2048,"drops":{}});
        let trunk = json!({"switch":"br0","name":"trunk1","type":"vhost-user",
            "socket":"/srv/fabric/run/trunk1.sock","vlan":"trunk 10,20,100-199 native 1",
            "link":false,"rx_packets":0,"rx_bytes":0,"tx_packets":7,"tx_bytes":900,
            "drops":{"runt":2,"vlan_not_allowed":5,"other":0},"broken_queues":1,"announces":3,
            "tx_gso_packets":5,"gso_segmented":6,"csum_completed":7,
            "queues":[{"rx_packets":0,"tx_packets":3},{"rx_packets":0,"tx_packets":4}]});
        let disk = json!({"pool":"pool0","name":"disk1","kind":"volume","size":10u64 << 30,
            "block_size":512,"read_only":false,"allocated":3u64 << 29,"exclusive":1u64 << 20,
            "export":"/srv/fabric/run/disk1.sock",
            "migration_socket":"/srv/fabric/run/disk1.migrate.sock"});
        let snap = json!({"pool":"pool0","name":"disk1-snap","kind":"snapshot",
            "size":10u64 << 30,"block_size":512,"read_only":true,"allocated":3u64 << 29,
            "exclusive":0,"export":null,"shared":3u64 << 29,"pool_capacity":6u64 << 30,
            "origin":"disk1"});
        let pool = json!({"name":"pool0","path":"/srv/fabric/pool0.img",
            "cluster_size":16384,"capacity":64u64 << 30,"used":16u64 << 30,
            "free":48u64 << 30,"releasing":0,"provisioned":80u64 << 30,
            "on_full":"pause","warn_percent":20,"over_warn":true,"paused":2,
            "paused_total":7});
        Some(match op {
            "daemon.status" => json!({"version":"0.1.0","protocol":1,"pid":4242,
                "uptime_secs":3725,"config":"/srv/fabric/fabric.toml"}),
            "port.list" => json!([vm1, trunk]),
            "port.add" => vm1,
            "fdb.show" => json!([
                {"vlan":20,"mac":"52:54:00:00:00:03","port":"vm3","static":false,"age_secs":75},
                {"vlan":10,"mac":"52:54:00:00:00:02","port":"vm2","static":true,"age_secs":0},
                {"vlan":10,"mac":"52:54:00:00:00:01","port":"vm1","static":false,"age_secs":5}
            ]),
            "fdb.flush" => json!({"flushed":3}),
            "pool.list" => json!([pool]),
            "pool.set" => pool,
            "volume.list" => json!([disk, snap]),
            "volume.create" | "volume.resize" | "volume.snapshot" | "volume.clone"
            | "volume.rename" | "export.add" => disk,
            "config.save" => json!({"path":"/srv/fabric/fabric.toml"}),
            "port.remove" | "fdb.add" | "volume.delete" | "export.remove" => Value::Null,
            _ => return None,
        })
    }
}

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fabricctl"));
    c.env_remove("FABRIC_CONTROL_SOCKET");
    c
}

fn run(mut c: Command) -> Run {
    let out = c.output().expect("run fabricctl");
    let run = Run {
        code: out.status.code().expect("fabricctl killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "{run:?}");
    run
}

/// Runs `fabricctl ARGS` against `server` (socket given by the environment).
fn fabricctl(server: &FakeControlServer, args: &[&str]) -> Run {
    let mut c = command();
    c.env("FABRIC_CONTROL_SOCKET", server.path()).args(args);
    run(c)
}

fn ok(server: &FakeControlServer, args: &[&str]) -> String {
    let r = fabricctl(server, args);
    assert_eq!(r.code, 0, "{args:?}: {r:?}");
    assert_eq!(r.stderr, "", "{args:?}");
    r.stdout
}

#[test]
fn every_subcommand_sends_its_op_and_args() {
    let server = FakeControlServer::canned();
    let cases: &[(&[&str], &str, Value)] = &[
        (&["status"], "daemon.status", json!({})),
        (&["port", "list"], "port.list", json!({})),
        (
            &["port", "add", "br0", "vm9"],
            "port.add",
            json!({"switch":"br0","name":"vm9","type":"vhost-user"}),
        ),
        (
            &[
                "port",
                "add",
                "br0",
                "vm9",
                "--socket",
                "/srv/vm9.sock",
                "--vlan",
                "access:10",
                "--mtu",
                "9000",
                "--mac",
                "52:54:00:00:00:09",
                "--queue-size",
                "256",
            ],
            "port.add",
            json!({"switch":"br0","name":"vm9","type":"vhost-user","socket":"/srv/vm9.sock",
                   "vlan":{"mode":"access","tag":10},"mtu":9000,"mac":"52:54:00:00:00:09",
                   "queue_size":256}),
        ),
        (
            &[
                "port",
                "add",
                "br0",
                "r1",
                "--vlan=trunk:10,20,100-199:native=1",
            ],
            "port.add",
            json!({"switch":"br0","name":"r1","type":"vhost-user",
                   "vlan":{"mode":"trunk","allowed":[10,20,"100-199"],"native":1}}),
        ),
        (
            &["port", "remove", "vm9"],
            "port.remove",
            json!({"name":"vm9"}),
        ),
        (&["fdb", "show", "br0"], "fdb.show", json!({"switch":"br0"})),
        (
            &["fdb", "flush", "br0"],
            "fdb.flush",
            json!({"switch":"br0"}),
        ),
        (
            &["fdb", "flush", "br0", "--port", "vm1"],
            "fdb.flush",
            json!({"switch":"br0","port":"vm1"}),
        ),
        (
            &["fdb", "add", "br0", "10", "52:54:00:00:00:01", "vm1"],
            "fdb.add",
            json!({"switch":"br0","vlan":10,"mac":"52:54:00:00:00:01","port":"vm1"}),
        ),
        (&["pool", "list"], "pool.list", json!({})),
        (
            &[
                "pool",
                "set",
                "pool0",
                "--on-full",
                "pause",
                "--warn-percent",
                "90",
            ],
            "pool.set",
            json!({"pool":"pool0","on_full":"pause","warn_percent":90}),
        ),
        (&["volume", "list"], "volume.list", json!({})),
        (
            &["volume", "list", "--pool", "pool0"],
            "volume.list",
            json!({"pool":"pool0"}),
        ),
        (
            &["volume", "create", "pool0", "d2", "--size", "10G"],
            "volume.create",
            json!({"pool":"pool0","name":"d2","size":10u64 << 30}),
        ),
        (
            &[
                "volume",
                "create",
                "pool0",
                "d2",
                "--size",
                "1048576",
                "--block-size",
                "4096",
            ],
            "volume.create",
            json!({"pool":"pool0","name":"d2","size":1048576,"block_size":4096}),
        ),
        (
            &["volume", "resize", "pool0", "d2", "--size", "20G"],
            "volume.resize",
            json!({"pool":"pool0","name":"d2","size":20u64 << 30}),
        ),
        (
            &["volume", "resize", "pool0", "d2", "--size", "1G", "--force"],
            "volume.resize",
            json!({"pool":"pool0","name":"d2","size":1u64 << 30,"force":true}),
        ),
        (
            &["volume", "snapshot", "pool0", "d2", "d2-snap"],
            "volume.snapshot",
            json!({"pool":"pool0","source":"d2","name":"d2-snap"}),
        ),
        (
            &["volume", "clone", "pool0", "d2-snap", "d3"],
            "volume.clone",
            json!({"pool":"pool0","source":"d2-snap","name":"d3"}),
        ),
        (
            &["volume", "rename", "pool0", "d3", "d4"],
            "volume.rename",
            json!({"pool":"pool0","name":"d3","new_name":"d4"}),
        ),
        (
            &["volume", "delete", "pool0", "d4"],
            "volume.delete",
            json!({"pool":"pool0","name":"d4"}),
        ),
        (
            &["export", "add", "pool0", "d2"],
            "export.add",
            json!({"pool":"pool0","volume":"d2"}),
        ),
        (
            &[
                "export",
                "add",
                "pool0",
                "d2",
                "--socket",
                "/srv/d2.sock",
                "--migration-socket",
                "/srv/d2.migrate.sock",
                "--queues",
                "4",
                "--queue-size",
                "128",
                "--read-only",
            ],
            "export.add",
            json!({"pool":"pool0","volume":"d2","socket":"/srv/d2.sock",
                   "migration_socket":"/srv/d2.migrate.sock","queues":4,
                   "queue_size":128,"read_only":true}),
        ),
        (
            &["export", "remove", "pool0", "d2"],
            "export.remove",
            json!({"pool":"pool0","volume":"d2"}),
        ),
        (&["config", "save"], "config.save", json!({})),
        (
            &["config", "save", "--path", "/srv/saved.toml"],
            "config.save",
            json!({"path":"/srv/saved.toml"}),
        ),
    ];
    let mut ops_seen = std::collections::BTreeSet::new();
    for (i, (args, op, want)) in cases.iter().enumerate() {
        ok(&server, args);
        let requests = server.requests();
        assert_eq!(requests.len(), i + 1, "{args:?}: one request per run");
        let req = &requests[i];
        assert_eq!(req["v"], 1, "{args:?}");
        assert!(req["id"].is_u64(), "{args:?}: {req}");
        assert_eq!(req["op"], *op, "{args:?}");
        assert_eq!(req["args"], *want, "{args:?}");
        ops_seen.insert(*op);
    }
    // Every op of the protocol table is covered.
    assert_eq!(ops_seen.len(), 19);
}

#[test]
fn relative_paths_are_sent_absolute() {
    let server = FakeControlServer::canned();
    let mut c = command();
    c.current_dir(server.dir())
        .env("FABRIC_CONTROL_SOCKET", server.path())
        .args(["port", "add", "br0", "vm9", "--socket", "run/vm9.sock"]);
    assert_eq!(run(c).code, 0);
    let mut c = command();
    c.current_dir(server.dir())
        .env("FABRIC_CONTROL_SOCKET", server.path())
        .args(["config", "save", "--path=saved.toml"]);
    assert_eq!(run(c).code, 0);
    let requests = server.requests();
    let dir = server.dir().canonicalize().unwrap();
    assert_eq!(
        Path::new(requests[0]["args"]["socket"].as_str().unwrap()),
        dir.join("run/vm9.sock")
    );
    assert_eq!(
        Path::new(requests[1]["args"]["path"].as_str().unwrap()),
        dir.join("saved.toml")
    );
}

#[test]
fn tables() {
    let server = FakeControlServer::canned();
    assert_eq!(
        ok(&server, &["port", "list"]),
        "\
SWITCH  PORT    VLAN                          LINK  RX PKTS  RX BYTES  TX PKTS  TX BYTES  BROKEN Q  ANNOUNCES  GSO/SEG/CSUM  QUEUES RX/TX   SOCKET                       POLICING  DROPS
br0     vm1     access 10                     up       1234   1.5 MiB       99   2.0 KiB         0          0         0/0/0  -              /srv/fabric/run/vm1.sock     -         0
br0     trunk1  trunk 10,20,100-199 native 1  down        0       0 B        7     900 B         1          3         5/6/7  q0 0/3 q1 0/4  /srv/fabric/run/trunk1.sock  -         7 (runt 2, vlan_not_allowed 5)
"
    );
    assert_eq!(
        ok(&server, &["volume", "list"]),
        "\
POOL   VOLUME      KIND          SIZE  BLOCK  ALLOCATED  EXCLUSIVE   SHARED  POOL%  ORIGIN  MODE  EXPORT                      MIGRATION                           LIMITS RATE/BURST
pool0  disk1       volume    10.0 GiB    512    1.5 GiB    1.0 MiB  1.5 GiB      -  -       rw    /srv/fabric/run/disk1.sock  /srv/fabric/run/disk1.migrate.sock  -
pool0  disk1-snap  snapshot  10.0 GiB    512    1.5 GiB        0 B  1.5 GiB  25.0%  disk1   ro    -                           -                                   -
"
    );
    assert_eq!(
        ok(&server, &["pool", "list"]),
        "\
POOL       SIZE      USED      FREE  RELEASING  PROVISIONED   USE%  WARN%  ON_FULL  PAUSED   CLUSTER  PATH
pool0  64.0 GiB  16.0 GiB  48.0 GiB        0 B     80.0 GiB  25.0%    20!  pause         2  16.0 KiB  /srv/fabric/pool0.img
"
    );
    // Sorted by VLAN then MAC; static entries have no age.
    assert_eq!(
        ok(&server, &["fdb", "show", "br0"]),
        "\
VLAN  MAC                PORT  TYPE        AGE
  10  52:54:00:00:00:01  vm1   learned      5s
  10  52:54:00:00:00:02  vm2   static        -
  20  52:54:00:00:00:03  vm3   learned  1m 15s
"
    );
    assert_eq!(
        ok(&server, &["status"]),
        "\
version   0.1.0
protocol  1
pid       4242
uptime    1h 02m 05s
config    /srv/fabric/fabric.toml
"
    );
    // One-object results print as a one-row table.
    let out = ok(
        &server,
        &["volume", "create", "pool0", "disk1", "--size", "10G"],
    );
    assert_eq!(out.lines().count(), 2);
    assert!(out.starts_with("POOL   VOLUME"), "{out}");
    let out = ok(&server, &["port", "add", "br0", "vm1"]);
    assert!(
        out.lines().nth(1).unwrap().starts_with("br0     vm1"),
        "{out}"
    );
    // Ops without a result print what was done.
    assert_eq!(
        ok(&server, &["port", "remove", "vm1"]),
        "removed port vm1\n"
    );
    assert_eq!(
        ok(&server, &["fdb", "flush", "br0"]),
        "flushed 3 entries from br0\n"
    );
    assert_eq!(
        ok(
            &server,
            &["fdb", "add", "br0", "10", "52:54:00:00:00:01", "vm1"]
        ),
        "added static entry: 52:54:00:00:00:01 in VLAN 10 behind port vm1 on br0\n"
    );
    assert_eq!(
        ok(&server, &["volume", "delete", "pool0", "d4"]),
        "deleted volume pool0/d4\n"
    );
    assert_eq!(
        ok(&server, &["export", "remove", "pool0", "d2"]),
        "removed the export of pool0/d2\n"
    );
    assert_eq!(
        ok(&server, &["config", "save"]),
        "saved the configuration to /srv/fabric/fabric.toml\n"
    );
}

#[test]
fn json_output_is_the_raw_result() {
    let server = FakeControlServer::canned();
    for (args, op) in [
        (&["--json", "port", "list"][..], "port.list"),
        (&["volume", "list", "--json"][..], "volume.list"),
        (&["pool", "list", "--json"][..], "pool.list"),
        (&["fdb", "show", "br0", "--json"][..], "fdb.show"),
        (&["status", "--json"][..], "daemon.status"),
        (&["--json", "fdb", "flush", "br0"][..], "fdb.flush"),
    ] {
        let out = ok(&server, args);
        let value: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value, canned_result(op).unwrap(), "{args:?}");
        assert!(out.contains("\n  "), "pretty-printed: {out}");
    }
    assert_eq!(ok(&server, &["--json", "port", "remove", "vm1"]), "null\n");
}

#[test]
fn daemon_errors_map_to_exit_codes() {
    for (code, exit) in [
        ("bad_request", 2),
        ("unsupported_version", 2),
        ("unknown_op", 2),
        ("invalid_argument", 2),
        ("not_found", 3),
        ("already_exists", 4),
        ("conflict", 4),
        ("no_space", 5),
        ("internal", 6),
    ] {
        let message = format!("the daemon says {code}");
        let server = FakeControlServer::always(Reply::Error(code.into(), message.clone()));
        for args in [
            &["volume", "delete", "pool0", "d1"][..],
            &["--json", "port", "list"],
        ] {
            let r = fabricctl(&server, args);
            assert_eq!(r.code, exit, "{code}: {r:?}");
            assert_eq!(r.stderr, format!("fabricctl: {message}\n"));
            assert_eq!(r.stdout, "");
        }
    }
    // An error class this fabricctl does not know: reported, exit 6.
    let server = FakeControlServer::always(Reply::Error("busy".into(), "try later".into()));
    let r = fabricctl(&server, &["status"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert_eq!(r.stderr, "fabricctl: try later (busy)\n");
}

#[test]
fn daemon_not_running() {
    let dir = TestDir::new("fabricctl-none");
    let path = dir.join("control.sock");
    let mut c = command();
    c.args(["--socket", path.to_str().unwrap(), "status"]);
    let r = run(c);
    assert_eq!(r.code, 7);
    assert_eq!(
        r.stderr,
        format!(
            "fabricctl: cannot connect to {}: No such file or directory — is vswitchd running? \
             (set --socket or FABRIC_CONTROL_SOCKET)\n",
            path.display()
        )
    );
    assert_eq!(r.stdout, "");

    // A stale socket file (the daemon died without removing it).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let mut c = command();
    c.env("FABRIC_CONTROL_SOCKET", &path).args(["pool", "list"]);
    let r = run(c);
    assert_eq!(r.code, 7);
    assert!(
        r.stderr
            .contains("Connection refused — is vswitchd running?"),
        "{r:?}"
    );

    // The default socket is ./run/control.sock.
    let mut c = command();
    c.current_dir(&dir).args(["port", "list"]);
    let r = run(c);
    assert_eq!(r.code, 7);
    assert!(
        r.stderr
            .starts_with("fabricctl: cannot connect to ./run/control.sock: No such file"),
        "{r:?}"
    );
}

#[test]
fn socket_selection() {
    let server = FakeControlServer::canned();
    let missing = server.dir().join("missing.sock");
    // --socket wins over the environment, before or after the command.
    for args in [
        vec!["--socket", server.path().to_str().unwrap(), "status"],
        vec!["status", "--socket", server.path().to_str().unwrap()],
        vec![
            "--control-socket",
            server.path().to_str().unwrap(),
            "status",
        ],
    ] {
        let mut c = command();
        c.env("FABRIC_CONTROL_SOCKET", &missing).args(&args);
        assert_eq!(run(c).code, 0, "{args:?}");
    }
    // After "port add", --socket is the port's; --control-socket the daemon's.
    let mut c = command();
    c.env("FABRIC_CONTROL_SOCKET", &missing).args([
        "port",
        "add",
        "br0",
        "vm9",
        "--socket",
        "/srv/vm9.sock",
        "--control-socket",
        server.path().to_str().unwrap(),
    ]);
    assert_eq!(run(c).code, 0);
    assert_eq!(server.requests()[3]["args"]["socket"], "/srv/vm9.sock");
    let mut c = command();
    c.env("FABRIC_CONTROL_SOCKET", &missing).args([
        "port",
        "add",
        "br0",
        "vm9",
        "--socket",
        server.path().to_str().unwrap(),
    ]);
    assert_eq!(run(c).code, 7, "the control socket is the environment's");
    // Default: ./run/control.sock.
    let mut c = command();
    c.current_dir(server.dir()).args(["status"]);
    assert_eq!(run(c).code, 0);
    assert_eq!(server.requests().len(), 5);
}

#[test]
fn malformed_answers_are_errors() {
    let big = vec![b'x'; 1 << 20];
    let cases: Vec<(Reply, &[&str], i32, &str)> = vec![
        (Reply::Line("not json".into()), &["status"], 6, "not JSON"),
        (
            Reply::Line("[1,2]".into()),
            &["status"],
            6,
            "not a JSON object",
        ),
        (
            Reply::Line("{}".into()),
            &["status"],
            6,
            "no boolean \"ok\"",
        ),
        (
            Reply::Line(r#"{"v":1,"id":999,"ok":true,"result":{}}"#.into()),
            &["status"],
            6,
            "answer to request 999, expected 1",
        ),
        (
            Reply::Line(r#"{"v":9,"id":1,"ok":true,"result":{}}"#.into()),
            &["status"],
            6,
            "protocol version 9",
        ),
        (
            Reply::Line(r#"{"v":1,"id":1,"ok":false}"#.into()),
            &["status"],
            6,
            "refusal without an \"error\" object",
        ),
        (
            Reply::Line(r#"{"v":1,"id":1,"ok":false,"error":{"code":7}}"#.into()),
            &["status"],
            6,
            "error without a string \"code\"",
        ),
        // Well-formed, but not the documented result.
        (
            Reply::Result(json!({"a":1})),
            &["port", "list"],
            6,
            "result of port.list",
        ),
        (
            Reply::Result(json!([{"name":"x"}])),
            &["volume", "list"],
            6,
            "result of volume.list",
        ),
        (
            Reply::Result(json!("yes")),
            &["status"],
            6,
            "result of daemon.status",
        ),
        (
            Reply::Empty,
            &["fdb", "flush", "br0"],
            6,
            "result of fdb.flush",
        ),
        (
            Reply::Result(json!({"path":5})),
            &["config", "save"],
            6,
            "result of config.save",
        ),
        (
            Reply::Raw(b"\xff\xfe\n".to_vec()),
            &["status"],
            6,
            "not UTF-8",
        ),
        (
            Reply::Raw(br#"{"v":1,"id":1,"#.to_vec()),
            &["status"],
            6,
            "answer cut short",
        ),
        (Reply::Raw(big), &["status"], 6, "answer cut short"),
        (
            Reply::Close,
            &["status"],
            7,
            "closed the connection without answering",
        ),
    ];
    for (reply, args, exit, want) in cases {
        let server = FakeControlServer::always(reply.clone());
        let r = fabricctl(&server, args);
        assert_eq!(r.code, exit, "{reply:?}: {r:?}");
        assert!(r.stderr.starts_with("fabricctl: "), "{r:?}");
        assert!(r.stderr.contains(want), "{reply:?}: {}", r.stderr);
        assert_eq!(r.stdout, "");
    }
    // With --json the result is not checked against the documented shape.
    let server = FakeControlServer::always(Reply::Result(json!({"a":1})));
    assert_eq!(
        ok(&server, &["--json", "port", "list"]),
        "{\n  \"a\": 1\n}\n"
    );
}

#[test]
fn timeout() {
    let server = FakeControlServer::always(Reply::Hang(Duration::from_secs(5)));
    let start = Instant::now();
    let r = fabricctl(&server, &["--timeout", "0.3", "status"]);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.code, 7, "{r:?}");
    assert!(
        r.stderr.contains("no answer from the daemon") && r.stderr.contains("within 0.3s"),
        "{r:?}"
    );
}

#[test]
fn usage_errors_send_nothing() {
    let server = FakeControlServer::canned();
    for args in [
        &[][..],
        &["frobnicate"],
        &["port"],
        &["port", "add", "br0"],
        &["port", "add", "br0", "vm1", "--vlan", "access:4095"],
        &["port", "add", "br0", "vm1", "--vlan", "trunk:20-10"],
        &["port", "add", "br0", "vm1", "--mtu", "big"],
        &["fdb", "add", "br0", "5000", "52:54:00:00:00:01", "vm1"],
        &["volume", "create", "pool0", "d1"],
        &["volume", "create", "pool0", "d1", "--size", "ten"],
        &[
            "volume",
            "create",
            "pool0",
            "d1",
            "--size",
            "1G",
            "--block-size",
            "2048",
        ],
        &["volume", "delete", "pool0"],
        &["volume", "delete", "pool0", "d1", "extra"],
        &["export", "add", "pool0", "d1", "--queues", "-1"],
        &["status", "--timeout", "soon"],
        &["status", "--bogus"],
    ] {
        let r = fabricctl(&server, args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.starts_with("fabricctl: "), "{args:?}: {r:?}");
        assert_eq!(r.stdout, "");
    }
    let r = fabricctl(&server, &["volume", "create", "pool0"]);
    assert_eq!(
        r.stderr,
        "fabricctl: volume create: missing NAME\n\
         usage: fabricctl volume create POOL NAME --size S [--block-size 512|4096] [--may-exist]\n"
    );
    for args in [
        &["--help"][..],
        &["help"],
        &["-h"],
        &["volume", "--help"],
        &["help", "export"],
    ] {
        let r = fabricctl(&server, args);
        assert_eq!(r.code, 0, "{args:?}");
        assert!(r.stdout.starts_with("fabricctl: "), "{args:?}");
        assert!(r.stdout.contains("usage: fabricctl"), "{args:?}");
        assert_eq!(r.stderr, "");
    }
    assert!(server.requests().is_empty());
}

#[test]
fn the_client_speaks_the_protocol() {
    // The library client the binary is built on, against the same fake.
    use fabric::control::client::{Client, ClientError};
    use fabric::control::protocol::{ErrorCode, VolumeInfo};
    let server = FakeControlServer::start(|req| match req["op"].as_str() {
        Some("volume.list") => Reply::Result(canned_result("volume.list").unwrap()),
        _ => Reply::Error("not_found".into(), "nothing here".into()),
    });
    let mut client = Client::connect(server.path()).unwrap();
    let volumes: Vec<VolumeInfo> = client.call_as("volume.list", json!({})).unwrap();
    assert_eq!(volumes.len(), 2);
    let e = client.call("port.remove", json!({"name":"x"})).unwrap_err();
    assert!(matches!(
        e,
        ClientError::Daemon {
            code: Some(ErrorCode::NotFound),
            ..
        }
    ));
    // Several requests on one connection, ids counting up.
    let ids: Vec<u64> = server
        .requests()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2]);
}
