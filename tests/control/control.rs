//! The control socket end to end, against a running daemon, with the effect
//! of each operation checked on real traffic or I/O: a port added at run
//! time forwards; a snapshot taken while a client writes holds exactly the
//! writes completed before it; a deleted volume's space returns; a saved
//! configuration brings the same ports, volumes and exports back after a
//! restart; hostile requests get errors and the daemon keeps serving.

use test_kit::blkio as blk_support;
use test_kit::frontend as support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::daemon_host::DaemonHost;
use support::{eth, mac, GuestNic, NicOptions};

const MIB: u64 = 1 << 20;

/// A daemon on a config of its own in a fresh directory under
/// `$VBLOCK_TEST_DIR` or /var/tmp (pools are opened O_DIRECT).
struct Host(DaemonHost);

impl Host {
    fn start(toml: &str) -> Host {
        Host(DaemonHost::start("ctl", toml))
    }

    /// Stops the daemon and starts it on its config file as it is now.
    fn restart(&mut self) {
        self.0.restart(None);
    }

    fn ctl(&self) -> Ctl {
        Ctl::connect(&self.socket("control"))
    }
}

/// The host's daemon, sockets and pool check.
impl std::ops::Deref for Host {
    type Target = DaemonHost;
    fn deref(&self) -> &DaemonHost {
        &self.0
    }
}

/// A raw JSON-lines client of the control socket.
struct Ctl {
    w: UnixStream,
    r: BufReader<UnixStream>,
    id: u64,
}

impl Ctl {
    fn connect(path: &Path) -> Ctl {
        let w = UnixStream::connect(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        w.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        Ctl { w, r, id: 0 }
    }

    fn send_line(&mut self, line: &[u8]) -> Value {
        self.w.write_all(line).unwrap();
        self.w.write_all(b"\n").unwrap();
        let mut answer = String::new();
        self.r.read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("answer {answer:?}: {e}"))
    }

    /// The full answer object.
    fn call(&mut self, op: &str, args: Value) -> Value {
        self.id += 1;
        let req = json!({"v": 1, "id": self.id, "op": op, "args": args});
        let a = self.send_line(req.to_string().as_bytes());
        assert_eq!(a["id"], self.id, "answer to another request: {a}");
        a
    }

    /// The result of a request that must succeed.
    fn ok(&mut self, op: &str, args: Value) -> Value {
        let a = self.call(op, args.clone());
        assert_eq!(a["ok"], true, "{op} {args}: {a}");
        a["result"].clone()
    }

    /// Waits until `port.list` shows each of `ports` with its link up.
    fn wait_links_up(&mut self, ports: &[&str]) {
        support::fabric::wait_for("links up", || {
            support::fabric::links_up(&self.ok("port.list", json!({})), ports)
        });
    }

    /// The error code of a request that must fail.
    fn err(&mut self, op: &str, args: Value) -> String {
        let a = self.call(op, args.clone());
        assert_eq!(a["ok"], false, "{op} {args} should fail: {a}");
        a["error"]["code"].as_str().unwrap().to_owned()
    }
}

const SWITCH: &str = "[daemon]\nrun_dir = \"run\"\n[[switch]]\nname = \"br0\"\n\
    [[switch.port]]\nname = \"a\"\ntype = \"vhost-user\"\n";
const POOL: &str = "[[pool]]\nname = \"p0\"\npath = \"pool.img\"\nsize = \"64M\"\n";

#[test]
fn status_and_a_port_added_at_run_time_forwards() {
    let h = Host::start(SWITCH);
    let mut c = h.ctl();
    let st = c.ok("daemon.status", json!({}));
    assert_eq!(st["protocol"], 1);
    assert_eq!(st["pid"], std::process::id());
    let ports = c.ok("port.list", json!({}));
    assert_eq!(ports.as_array().unwrap().len(), 1);

    let added = c.ok(
        "port.add",
        json!({"switch": "br0", "name": "b", "vlan": {"mode": "access", "tag": 1}, "mac": "52:54:00:00:00:0b"}),
    );
    assert_eq!(added["name"], "b");
    assert_eq!(added["vlan"], "access 1");
    assert!(h.socket("b").exists());
    // Traffic: a <-> b through the new port, one frame once both links are up.
    let mut a = GuestNic::connect(&h.socket("a"), NicOptions::default()).unwrap();
    let mut b = GuestNic::connect(&h.socket("b"), NicOptions::default()).unwrap();
    c.wait_links_up(&["a", "b"]);
    let frame = eth(mac(2), mac(1), 0x0800, b"hello from a");
    assert!(a.send(&frame));
    let got = b.recv(Duration::from_secs(5));
    assert_eq!(got.as_deref(), Some(&frame[..]), "b receives a's flood");
    let list = c.ok("port.list", json!({}));
    let b_info = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "b")
        .unwrap();
    // Counted before b could see it: exactly the one frame.
    assert_eq!(b_info["tx_packets"].as_u64(), Some(1), "{b_info}");
    assert_eq!(b_info["broken_queues"].as_u64(), Some(0), "{b_info}");
    assert_eq!(b_info["link"], true);
    // The FDB learned a's MAC; a static entry can be added and flushed.
    let fdb = c.ok("fdb.show", json!({"switch": "br0"}));
    assert!(
        fdb.as_array().unwrap().iter().any(|e| e["port"] == "a"),
        "{fdb}"
    );
    c.ok(
        "fdb.add",
        json!({"switch": "br0", "vlan": 1, "mac": "52:54:00:00:00:99", "port": "b"}),
    );
    let fdb = c.ok("fdb.show", json!({"switch": "br0"}));
    assert!(fdb
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["mac"] == "52:54:00:00:00:99" && e["static"] == true));
    // A flush forgets what was learned; static entries stay.
    let flushed = c.ok("fdb.flush", json!({"switch": "br0"}));
    assert!(flushed["flushed"].as_u64().unwrap() >= 1, "{flushed}");
    let fdb = c.ok("fdb.show", json!({"switch": "br0"}));
    assert!(
        fdb.as_array().unwrap().iter().all(|e| e["static"] == true),
        "{fdb}"
    );
    // Bad port specs are refused with the config's own words.
    let a2 = c.call(
        "port.add",
        json!({"switch": "br0", "name": "c", "vlan": {"mode": "access", "tag": 5000}}),
    );
    assert_eq!(a2["error"]["code"], "invalid_argument");
    assert!(
        a2["error"]["message"]
            .as_str()
            .unwrap()
            .contains("vlan.tag"),
        "{a2}"
    );
    assert_eq!(
        c.err("port.add", json!({"switch": "br0", "name": "b"})),
        "already_exists"
    );
    assert_eq!(
        c.err("port.add", json!({"switch": "nope", "name": "z"})),
        "not_found"
    );
    // Queue pairs and the offload switch reach the running port's config.
    c.ok(
        "port.add",
        json!({"switch": "br0", "name": "q", "queues": 3, "offloads": false}),
    );
    let saved = c.ok("config.save", json!({}));
    let text = std::fs::read_to_string(saved["path"].as_str().unwrap()).unwrap();
    let q = &text[text.find("name = \"q\"").expect("port q saved")..];
    let q = &q[..q.find("[[").unwrap_or(q.len())];
    assert!(
        q.contains("queues = 3") && q.contains("offloads = false"),
        "{q}"
    );
    c.ok("port.remove", json!({"name": "q"}));
    // Removing: the guest is disconnected, the socket gone; twice is refused.
    drop(b);
    c.ok("port.remove", json!({"name": "b"}));
    assert!(!h.socket("b").exists());
    assert_eq!(c.err("port.remove", json!({"name": "b"})), "not_found");
}

#[test]
fn snapshot_while_a_client_writes_holds_exactly_the_writes_before_it() {
    let h = Host::start(&format!(
        "{SWITCH}{POOL}[[pool.volume]]\nname = \"d\"\nsize = \"16M\"\nexport = {{}}\n"
    ));
    let mut c = h.ctl();
    let socket = h.socket("d");
    // The writer fills 4 KiB blocks in order, block i with pattern seed i+1,
    // and publishes how many completed.
    let completed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (completed, stop) = (completed.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut client = blk_support::BlkClient::connect(&socket, 1).unwrap();
            let q = client.queue(0);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 4096 {
                q.write_pattern(i + 1, i * 4096, 4096).unwrap();
                i += 1;
                completed.store(i, Ordering::SeqCst);
            }
        })
    };
    while completed.load(Ordering::SeqCst) < 200 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = completed.load(Ordering::SeqCst);
    c.ok(
        "volume.snapshot",
        json!({"pool": "p0", "source": "d", "name": "snap"}),
    );
    let after = completed.load(Ordering::SeqCst);
    while completed.load(Ordering::SeqCst) < after + 100 {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // As in fabric.toml, a snapshot is never exported writable.
    assert_eq!(
        c.err(
            "export.add",
            json!({"pool": "p0", "volume": "snap", "read_only": false})
        ),
        "invalid_argument"
    );
    c.ok("export.add", json!({"pool": "p0", "volume": "snap"}));
    let mut s = blk_support::BlkClient::connect(&h.socket("snap"), 1).unwrap();
    assert!(s.read_only());
    let q = s.queue(0);
    // Every write completed before the request is in the snapshot.
    for i in 0..before {
        q.verify_pattern(i + 1, i * 4096, 4096).unwrap();
    }
    // Nothing written after the answer is.
    for i in after + 1..after + 100 {
        let b = q.read_vec(i * 4096, 4096).unwrap();
        assert!(
            b.iter().all(|&x| x == 0),
            "block {i} written after the snapshot"
        );
    }
    eprintln!("snapshot: {before} writes before the request, {after} at its answer");
}

#[test]
fn volumes_exports_and_space() {
    let h = Host::start(&format!("{SWITCH}{POOL}"));
    let mut c = h.ctl();
    let free0 = c.ok("pool.list", json!({}))[0]["free"].as_u64().unwrap();
    let v = c.ok(
        "volume.create",
        json!({"pool": "p0", "name": "v1", "size": "8M"}),
    );
    assert_eq!(v["size"], 8 * MIB);
    assert_eq!(v["kind"], "volume");
    let e = c.ok(
        "export.add",
        json!({"pool": "p0", "volume": "v1", "queues": 2}),
    );
    assert!(e["export"].as_str().unwrap().ends_with("v1.sock"), "{e}");
    {
        let mut client = blk_support::BlkClient::connect(&h.socket("v1"), 2).unwrap();
        client
            .queue(0)
            .write_pattern(3, 0, 4 * MIB as usize)
            .unwrap();
        client.queue(0).flush().unwrap();
    }
    let used = c.ok("volume.list", json!({"pool": "p0"}));
    assert_eq!(used[0]["allocated"], 4 * MIB);
    // Conflicts: an exported volume cannot be deleted, renamed or shrunk (even
    // with force); it can grow.
    assert_eq!(
        c.err("volume.delete", json!({"pool": "p0", "name": "v1"})),
        "conflict"
    );
    assert_eq!(
        c.err(
            "volume.rename",
            json!({"pool": "p0", "name": "v1", "new_name": "x"})
        ),
        "conflict"
    );
    for force in [false, true] {
        assert_eq!(
            c.err(
                "volume.resize",
                json!({"pool": "p0", "name": "v1", "size": "4M", "force": force})
            ),
            "conflict"
        );
    }
    let grown = c.ok(
        "volume.resize",
        json!({"pool": "p0", "name": "v1", "size": "12M"}),
    );
    assert_eq!(grown["size"], 12 * MIB);
    assert_eq!(
        c.err("export.add", json!({"pool": "p0", "volume": "v1"})),
        "already_exists"
    );
    c.ok(
        "volume.clone",
        json!({"pool": "p0", "source": "v1", "name": "v2"}),
    );
    c.ok(
        "volume.rename",
        json!({"pool": "p0", "name": "v2", "new_name": "v3"}),
    );
    c.ok(
        "volume.resize",
        json!({"pool": "p0", "name": "v3", "size": "16M"}),
    );
    assert_eq!(
        c.err(
            "volume.resize",
            json!({"pool": "p0", "name": "v3", "size": "4M"})
        ),
        "invalid_argument"
    );
    c.ok(
        "volume.resize",
        json!({"pool": "p0", "name": "v3", "size": "4M", "force": true}),
    );
    c.ok("export.remove", json!({"pool": "p0", "volume": "v1"}));
    assert!(!h.socket("v1").exists());
    assert_eq!(
        c.err("export.remove", json!({"pool": "p0", "volume": "v1"})),
        "not_found"
    );
    // Deleting both returns the space.
    c.ok("volume.delete", json!({"pool": "p0", "name": "v1"}));
    c.ok("volume.delete", json!({"pool": "p0", "name": "v3"}));
    let free1 = c.ok("pool.list", json!({}))[0]["free"].as_u64().unwrap();
    assert_eq!(free1, free0, "space returns");
    assert_eq!(
        c.err("volume.delete", json!({"pool": "p0", "name": "v1"})),
        "not_found"
    );
    // Without `overcommit = true` the pool refuses more than it holds.
    assert_eq!(
        c.err(
            "volume.create",
            json!({"pool": "p0", "name": "big", "size": "1T"})
        ),
        "no_space"
    );
    // Nor may growing a volume take it there; the volume keeps its size.
    c.ok(
        "volume.create",
        json!({"pool": "p0", "name": "small", "size": "4M"}),
    );
    assert_eq!(
        c.err(
            "volume.resize",
            json!({"pool": "p0", "name": "small", "size": "1T"})
        ),
        "no_space"
    );
    let vols = c.ok("volume.list", json!({"pool": "p0"}));
    let small = vols
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "small");
    assert_eq!(small.unwrap()["size"].as_u64(), Some(4 * MIB));
}

#[test]
fn saved_configuration_comes_back_after_a_restart() {
    let mut h = Host::start(&format!("{SWITCH}{POOL}"));
    {
        let mut c = h.ctl();
        c.ok("port.add", json!({"switch": "br0", "name": "b", "vlan": {"mode": "trunk", "allowed": [10, 20], "native": 1}}));
        c.ok(
            "volume.create",
            json!({"pool": "p0", "name": "d", "size": "8M"}),
        );
        c.ok(
            "volume.snapshot",
            json!({"pool": "p0", "source": "d", "name": "s"}),
        );
        c.ok("export.add", json!({"pool": "p0", "volume": "d"}));
        let mut client = blk_support::BlkClient::connect(&h.socket("d"), 1).unwrap();
        client.queue(0).write_pattern(8, 0, MIB as usize).unwrap();
        client.queue(0).flush().unwrap();
        drop(client);
        let saved = c.ok("config.save", json!({}));
        assert!(saved["path"].as_str().unwrap().ends_with("fabric.toml"));
    }
    h.restart();
    let mut c = h.ctl();
    let ports = c.ok("port.list", json!({}));
    let b = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "b")
        .expect("port b back");
    assert_eq!(b["vlan"], "trunk 1, 10, 20 native 1");
    let vols = c.ok("volume.list", json!({}));
    let names: Vec<&str> = vols
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["d", "s"]);
    let mut client = blk_support::BlkClient::connect(&h.socket("d"), 1).unwrap();
    client.queue(0).verify_pattern(8, 0, MIB as usize).unwrap();
}

#[test]
fn hostile_requests_get_errors_and_the_daemon_keeps_serving() {
    let h = Host::start(&format!(
        "{SWITCH}{POOL}[[pool.volume]]\nname = \"d\"\nsize = \"8M\"\n"
    ));
    let mut c = h.ctl();
    for (line, code) in [
        (&b"garbage"[..], "bad_request"),
        (b"[1,2,3]", "bad_request"),
        (b"{}", "bad_request"),
        (b"{\"v\":2,\"op\":\"daemon.status\"}", "unsupported_version"),
        (b"{\"v\":1,\"op\":\"rm -rf\"}", "unknown_op"),
        (b"{\"v\":1,\"op\":\"volume.create\",\"args\":{\"pool\":1}}", "invalid_argument"),
        (b"{\"v\":1,\"op\":\"volume.create\",\"args\":{\"pool\":\"p0\",\"name\":\"../x\",\"size\":1}}", "invalid_argument"),
        (b"{\"v\":1,\"op\":\"volume.create\",\"args\":{\"pool\":\"p0\",\"name\":\"x\",\"size\":\"-1\"}}", "invalid_argument"),
        (b"{\"v\":1,\"op\":\"port.add\",\"args\":{\"switch\":\"br0\",\"name\":\"q\",\"evil\":1}}", "invalid_argument"),
        (b"{\"v\":1,\"op\":\"fdb.add\",\"args\":{\"switch\":\"br0\",\"vlan\":99999,\"mac\":\"x\",\"port\":\"a\"}}", "invalid_argument"),
        (b"{\"v\":1,\"op\":\"export.add\",\"args\":{\"pool\":\"p0\",\"volume\":\"d\",\"queue_size\":3}}", "invalid_argument"),
        (b"\xff\xfe\x00", "bad_request"),
    ] {
        let a = c.send_line(line);
        assert_eq!(a["ok"], false, "{}: {a}", String::from_utf8_lossy(line));
        assert_eq!(a["error"]["code"], code, "{}: {a}", String::from_utf8_lossy(line));
    }
    // A huge line is refused and that connection closed; others carry on.
    // The server answers once it has read one byte past the limit and closes,
    // so the rest of this write may meet a closed socket (EPIPE): that is the
    // behaviour under test, not a failure. The answer is still there to read.
    let mut huge = Ctl::connect(&h.socket("control"));
    let _ = huge.w.write_all(&vec![b'x'; 100_000]);
    let mut answer = String::new();
    huge.r.read_line(&mut answer).unwrap();
    let a: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer:?}: {e}"));
    assert_eq!(a["error"]["code"], "bad_request");
    // Concurrent conflicting operations: one delete wins, the others are refused.
    let results: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut c = h.ctl();
                    let a = c.call("volume.delete", json!({"pool": "p0", "name": "d"}));
                    if a["ok"] == true {
                        "ok".to_owned()
                    } else {
                        a["error"]["code"].as_str().unwrap().to_owned()
                    }
                })
            })
            .collect();
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(
        results.iter().filter(|r| *r == "ok").count(),
        1,
        "{results:?}"
    );
    assert!(
        results.iter().all(|r| r == "ok" || r == "not_found"),
        "{results:?}"
    );
    // Many clients at once, some idle: the daemon still answers.
    let idle: Vec<UnixStream> = (0..10)
        .map(|_| UnixStream::connect(h.socket("control")).unwrap())
        .collect();
    assert_eq!(h.ctl().ok("daemon.status", json!({}))["protocol"], 1);
    drop(idle);
    let pool = h.daemon().pool("p0").unwrap().lock().unwrap();
    pool.metadata().check().unwrap();
}

/// Scrapes the opt-in metrics endpoint after traffic and I/O, and parses
/// every sample line of the OpenMetrics text.
#[test]
fn metrics_are_scraped_and_parse() {
    let h = Host::start(&format!(
        "{}metrics_listen = \"127.0.0.1:0\"\n{}{POOL}[[pool.volume]]\nname = \"d\"\nsize = \"8M\"\nexport = {{}}\n",
        &SWITCH[..SWITCH.find("[[switch]]").unwrap()],
        &SWITCH[SWITCH.find("[[switch]]").unwrap()..]
    ));
    // Each 64 KiB pattern goes out in requests of the device's largest chunk.
    let per_pattern;
    {
        let mut client = blk_support::BlkClient::connect(&h.socket("d"), 1).unwrap();
        let q = client.queue(0);
        per_pattern = 65536u64.div_ceil(q.max_chunk() as u64) as f64;
        for i in 0..5u64 {
            q.write_pattern(i, i * 65536, 65536).unwrap();
        }
        q.flush().unwrap();
        q.verify_pattern(0, 0, 65536).unwrap();
    }
    let addr = h.daemon().metrics_addr().expect("metrics on");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut conn, &mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_lowercase().contains("openmetrics-text"), "{head}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    // name{labels} value: every sample line parses.
    let samples = support::counters::metric_samples(body);
    let get = |k: &str| {
        *samples
            .get(k)
            .unwrap_or_else(|| panic!("no {k} in\n{body}"))
    };
    assert_eq!(
        get("vswitchd_blk_writes_total{pool=\"p0\",volume=\"d\"}"),
        5.0 * per_pattern
    );
    assert_eq!(
        get("vswitchd_blk_reads_total{pool=\"p0\",volume=\"d\"}"),
        per_pattern
    );
    assert_eq!(
        get("vswitchd_blk_request_duration_seconds_count{pool=\"p0\",volume=\"d\",op=\"write\"}"),
        5.0 * per_pattern
    );
    assert_eq!(
        get("vswitchd_volume_allocated_bytes{pool=\"p0\",volume=\"d\"}"),
        5.0 * 65536.0
    );
    assert!(get("vswitchd_pool_capacity_bytes{pool=\"p0\"}") > 0.0);
    assert_eq!(get("vswitchd_port_link_up{switch=\"br0\",port=\"a\"}"), 0.0);
    assert!(samples.contains_key("vswitchd_fdb_entries{switch=\"br0\"}"));
    // Nothing broke, moved against a hold or ran again here.
    assert_eq!(
        get("vswitchd_port_broken_queues_total{switch=\"br0\",port=\"a\"}"),
        0.0
    );
    assert_eq!(
        get("vswitchd_fdb_refused_total{switch=\"br0\",reason=\"move\"}"),
        0.0
    );
    for name in ["too_large", "broken_queues", "resubmitted"] {
        assert_eq!(
            get(&format!(
                "vswitchd_blk_{name}_total{{pool=\"p0\",volume=\"d\"}}"
            )),
            0.0
        );
    }
}

/// Lock order: export add/remove, snapshots and volume create/delete from 8
/// threads on one pool for 10 s, while a client writes to another export of
/// that pool. Every call answers within 10 s (a deadlock would leave them
/// unanswered), the daemon stops within 30 s, and the pool checks clean.
#[test]
fn concurrent_operations_on_one_pool_never_deadlock() {
    const THREADS: usize = 8;
    const RUN: Duration = Duration::from_secs(10);
    const ANSWER: Duration = Duration::from_secs(10);
    const BLOCKS: u64 = 1024; // 4 MiB volume of 4 KiB blocks
    let mut h = Host::start(&format!(
        "{SWITCH}{POOL}[[pool.volume]]\nname = \"io\"\nsize = \"4M\"\nexport = {{}}\n"
    ));
    let stop = Arc::new(AtomicBool::new(false));
    // The writer sweeps the volume, block b of pass p with seed p*BLOCKS+b+1,
    // and returns where it stopped.
    let writer = {
        let (socket, stop) = (h.socket("io"), stop.clone());
        std::thread::spawn(move || {
            let mut client = blk_support::BlkClient::connect(&socket, 1).unwrap();
            let q = client.queue(0);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                q.write_pattern(n + 1, (n % BLOCKS) * 4096, 4096).unwrap();
                n += 1;
            }
            n
        })
    };
    let started = std::time::Instant::now();
    let results: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let h = &h;
                s.spawn(move || -> Result<u64, String> {
                    let mut c = h.ctl();
                    c.w.set_read_timeout(Some(ANSWER)).unwrap();
                    let mut rounds = 0u64;
                    while started.elapsed() < RUN {
                        let (v, snap) = (format!("v{t}-{rounds}"), format!("s{t}-{rounds}"));
                        let steps = [
                            (
                                "volume.create",
                                json!({"pool": "p0", "name": v, "size": "1M"}),
                            ),
                            ("export.add", json!({"pool": "p0", "volume": v})),
                            (
                                "volume.snapshot",
                                json!({"pool": "p0", "source": v, "name": snap}),
                            ),
                            ("export.remove", json!({"pool": "p0", "volume": v})),
                            ("volume.delete", json!({"pool": "p0", "name": snap})),
                            ("volume.delete", json!({"pool": "p0", "name": v})),
                        ];
                        for (op, args) in steps {
                            c.id += 1;
                            let req = json!({"v": 1, "id": c.id, "op": op, "args": args});
                            c.w.write_all(format!("{req}\n").as_bytes())
                                .map_err(|e| format!("{op}: {e}"))?;
                            let mut answer = String::new();
                            c.r.read_line(&mut answer).map_err(|e| {
                                format!("{op} {args}: no answer within {ANSWER:?}: {e}")
                            })?;
                            let a: Value = serde_json::from_str(&answer)
                                .map_err(|e| format!("{op}: {answer:?}: {e}"))?;
                            if a["ok"] != true {
                                return Err(format!("{op} {args}: {a}"));
                            }
                        }
                        rounds += 1;
                    }
                    Ok(rounds)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    if let Some(e) = results.iter().find_map(|r| r.as_ref().err()) {
        // A wedged daemon cannot be stopped: leave it to the process exit.
        std::mem::forget(h);
        panic!("{e}");
    }
    let rounds: Vec<u64> = results.into_iter().map(Result::unwrap).collect();
    assert!(
        rounds.iter().all(|&r| r > 0),
        "every thread ran: {rounds:?}"
    );
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 0);
    eprintln!("{rounds:?} rounds per thread, {writes} writes");

    // The data written is all there: the last pass up to where it stopped,
    // the pass before it beyond.
    {
        let mut client = blk_support::BlkClient::connect(&h.socket("io"), 1).unwrap();
        let q = client.queue(0);
        let (pass, next) = (writes / BLOCKS, writes % BLOCKS);
        for b in 0..BLOCKS {
            let p = if b < next {
                Some(pass)
            } else {
                pass.checked_sub(1)
            };
            match p {
                Some(p) => q
                    .verify_pattern(p * BLOCKS + b + 1, b * 4096, 4096)
                    .unwrap(),
                None => assert!(q.read_vec(b * 4096, 4096).unwrap().iter().all(|&x| x == 0)),
            }
        }
    }
    let mut c = h.ctl();
    let names: Vec<Value> = c
        .ok("volume.list", json!({}))
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].clone())
        .collect();
    assert_eq!(names, [json!("io")]);

    drop(c);
    // The pool checks clean; stop completes.
    h.check_pool();
    let daemon = h.0.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        daemon.shutdown();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the daemon stops");
}

/// A VXLAN port's tunnel counters show in all three renderings of the
/// runtime's snapshot: `port.list`, `/metrics` and the SIGUSR1 report.
#[test]
fn tunnel_counters_show_in_port_list_metrics_and_report() {
    let udp_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = Host::start(&format!(
        "[daemon]\nrun_dir = \"run\"\nmetrics_listen = \"127.0.0.1:0\"\n[[switch]]\nname = \"br0\"\n\
         [[switch.port]]\nname = \"vx\"\ntype = \"vxlan\"\nlocal = \"127.0.0.1\"\nudp_port = {udp_port}\n\
         vni = [ {{ vlan = 10, vni = 5010, remotes = [\"127.0.0.2\"] }} ]\n"
    ));
    // One datagram from the listed VTEP whose VXLAN header lacks the I flag.
    let vtep = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    vtep.send_to(&[0u8; 16], ("127.0.0.1", udp_port)).unwrap();
    let mut c = h.ctl();
    let tunnel = || {
        let ports = c.ok("port.list", json!({}));
        let vx = ports
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "vx")
            .cloned()
            .expect("port vx listed");
        vx["tunnel"].clone()
    };
    let mut tunnel = tunnel;
    support::fabric::wait_for("the bad header counted", || {
        tunnel()["drops"]["bad_header"] != 0
    });
    let t = tunnel();
    assert_eq!(t["drops"]["bad_header"], 1, "{t}");
    assert_eq!(t["drops"]["unknown_vni"], 0, "{t}");
    assert_eq!(
        (&t["rx_packets"], &t["tx_packets"]),
        (&json!(0), &json!(0)),
        "{t}"
    );
    assert_eq!(t["remote_refused"]["vtep_limit"], 0, "{t}");
    assert_eq!(t["rx_coalesced"], 0, "{t}");

    let samples = h.metrics();
    let key = "vswitchd_tunnel_drops_total{switch=\"br0\",port=\"vx\",reason=\"bad_header\"}";
    assert_eq!(samples.get(key), Some(&1.0), "{samples:?}");
    let key = "vswitchd_tunnel_rx_packets_total{switch=\"br0\",port=\"vx\"}";
    assert_eq!(samples.get(key), Some(&0.0), "{samples:?}");
    let key = "vswitchd_tunnel_rx_coalesced_total{switch=\"br0\",port=\"vx\"}";
    assert_eq!(samples.get(key), Some(&0.0), "{samples:?}");

    let report = h.daemon().counters_report();
    let line = report
        .iter()
        .find(|l| l.starts_with("tunnel switch=br0 port=vx "))
        .unwrap_or_else(|| panic!("no tunnel line in {report:#?}"));
    let count = |key: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            .to_owned()
    };
    assert_eq!(count("drop_bad_header"), "1", "{line}");
    assert_eq!(count("rx_packets"), "0", "{line}");
    assert_eq!(count("rx_coalesced"), "0", "{line}");
}
