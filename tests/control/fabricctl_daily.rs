//! The daily verbs through the real `fabricctl` against a running `vswitchd`:
//! `port set` on a port whose guest stays connected (exact frame counts),
//! `fdb del`, `log level`, the `--may-exist` / `--if-exists` forms, and the
//! origin and share columns of `volume list`; each refusal with its exit code.

use super::fabricctl_e2e::Vswitchd;
use serde_json::Value;
use std::time::Duration;
use test_kit::frontend::{eth, mac, GuestNic, NicOptions};
use test_kit::TestDir;

const RECV: Duration = Duration::from_secs(5);
const MIB: u64 = 1 << 20;

/// Port `name` of a `port list --json` answer.
fn port(d: &Vswitchd, name: &str) -> Value {
    let list = d.json(&["port", "list"]);
    let found = list.as_array().unwrap().iter().find(|p| p["name"] == name);
    found
        .cloned()
        .unwrap_or_else(|| panic!("no port {name}: {list}"))
}

fn drops(d: &Vswitchd, name: &str, reason: &str) -> u64 {
    port(d, name)["drops"][reason].as_u64().unwrap()
}

fn rx_packets(d: &Vswitchd, name: &str) -> u64 {
    port(d, name)["rx_packets"].as_u64().unwrap()
}

/// `count` broadcast frames of `len` bytes from station `src` on `from`;
/// waits until the switch has taken them all in (its rx counter).
fn send(d: &Vswitchd, from: &mut GuestNic, name: &str, src: u32, len: usize, count: u64) {
    let before = rx_packets(d, name);
    for i in 0..count {
        let mut payload = vec![i as u8; len - 14];
        payload[0] = src as u8;
        assert!(from.send(&eth([0xff; 6], mac(src), 0x0800, &payload)));
    }
    test_kit::frontend::fabric::wait_for("frames taken in", || {
        rx_packets(d, name) == before + count
    });
}

/// Frames `to` receives now, until none has come for a while.
fn received(to: &mut GuestNic) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while let Some(f) = to.recv(Duration::from_millis(300)) {
        got.push(f);
    }
    got
}

/// A daemon on `config`, in a fresh directory named after `name`.
fn daemon(name: &str, config: &str) -> (TestDir, Vswitchd) {
    let dir = TestDir::on_disk(name);
    std::fs::write(dir.join("fabric.toml"), config).unwrap();
    let d = Vswitchd::start(&dir);
    (dir, d)
}

#[test]
fn port_set_changes_a_connected_port_in_place() {
    let (dir, mut d) = daemon(
        "fctl-port-set",
        "[daemon]\nrun_dir = \"run\"\n[[switch]]\nname = \"br0\"\n\
         [[switch.port]]\nname = \"a\"\ntype = \"vhost-user\"\nvlan = { mode = \"access\", tag = 10 }\n\
         [[switch.port]]\nname = \"b\"\ntype = \"vhost-user\"\nvlan = { mode = \"access\", tag = 10 }\n",
    );
    let mut a = GuestNic::connect(&dir.join("run/a.sock"), NicOptions::default()).unwrap();
    let mut b = GuestNic::connect(&dir.join("run/b.sock"), NicOptions::default()).unwrap();
    d.wait_links_up(&["a", "b"]);
    let p = port(&d, "a");
    assert_eq!(
        (p["mtu"].as_u64(), p["admin_up"].as_bool()),
        (Some(1500), Some(true))
    );
    assert_eq!(p["mac_limit"], 1024, "the switch's default");

    // 1600-byte frames are over MTU 1500: dropped at a's ingress.
    send(&d, &mut a, "a", 1, 1600, 2);
    assert_eq!(drops(&d, "a", "oversize"), 2);
    assert_eq!(received(&mut b).len(), 0);

    // MTU 9000 and a MAC limit of 2, the guests still connected.
    d.ok(&["port", "set", "a", "--mtu", "9000", "--mac-limit", "2"]);
    d.ok(&["port", "set", "b", "--mtu", "9000"]);
    let p = port(&d, "a");
    assert_eq!(
        (p["mtu"].as_u64(), p["mac_limit"].as_u64()),
        (Some(9000), Some(2))
    );
    assert_eq!(p["link"], true);
    send(&d, &mut a, "a", 1, 1600, 3);
    assert_eq!(received(&mut b).len(), 3, "forwarded after the MTU change");
    assert_eq!(drops(&d, "a", "oversize"), 2, "no new drop");
    // Stations 2 and 3: the second is over the limit (still forwarded).
    send(&d, &mut a, "a", 2, 64, 1);
    send(&d, &mut a, "a", 3, 64, 1);
    assert_eq!(received(&mut b).len(), 2);
    let fdb = d.json(&["fdb", "show", "br0"]);
    let on_a = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["port"] == "a")
        .count();
    assert_eq!(on_a, 2, "{fdb}");
    // b answers a: delivered.
    let to_a = eth(mac(1), mac(9), 0x0800, b"to a");
    assert!(b.send(&to_a));
    assert_eq!(a.recv(RECV), Some(to_a));

    // Admin down: a's frames dropped and counted, nothing delivered to a.
    d.ok(&["port", "set", "a", "--admin", "down"]);
    let p = port(&d, "a");
    assert_eq!(
        (p["admin_up"].as_bool(), p["link"].as_bool()),
        (Some(false), Some(true))
    );
    assert!(d.ok(&["port", "list"]).contains("admin down"));
    send(&d, &mut a, "a", 1, 64, 4);
    assert_eq!(drops(&d, "a", "admin_down"), 4);
    assert_eq!(received(&mut b).len(), 0);
    send(&d, &mut b, "b", 9, 64, 2);
    assert_eq!(received(&mut a).len(), 0);
    // Admin up: forwarding resumes both ways, on the same connection.
    d.ok(&["port", "set", "a", "--admin", "up"]);
    send(&d, &mut a, "a", 1, 64, 5);
    assert_eq!(received(&mut b).len(), 5);
    send(&d, &mut b, "b", 9, 64, 1);
    assert_eq!(received(&mut a).len(), 1);
    assert_eq!(drops(&d, "a", "admin_down"), 4);

    // A new VLAN: a is alone in VLAN 20.
    d.ok(&["port", "set", "a", "--vlan", "access:20"]);
    assert_eq!(port(&d, "a")["vlan"], "access 20");
    send(&d, &mut a, "a", 1, 64, 2);
    assert_eq!(received(&mut b).len(), 0);

    // Refusals: no such port (3), bad values (2), nothing given (2).
    d.fails(3, &["port", "set", "nope", "--mtu", "1500"]);
    let err = d.fails(2, &["port", "set", "a", "--mtu", "10"]);
    assert!(err.contains("MTU 10 is outside"), "{err}");
    let err = d.fails(2, &["port", "set", "a", "--mac-limit", "0"]);
    assert!(err.contains("MAC limit 0 is outside"), "{err}");
    d.fails(2, &["port", "set", "a"]);
    d.fails(2, &["port", "set", "a", "--admin", "sideways"]);

    // config save keeps the VLAN and MTU.
    d.ok(&["config", "save"]);
    let saved = std::fs::read_to_string(dir.join("fabric.toml")).unwrap();
    assert!(
        saved.contains("tag = 20") && saved.contains("mtu = 9000"),
        "{saved}"
    );
    drop((a, b));
    d.stop();
}

#[test]
fn fdb_del_log_level_and_idempotent_forms() {
    let (dir, mut d) = daemon(
        "fctl-daily",
        "[daemon]\nrun_dir = \"run\"\n[[switch]]\nname = \"br0\"\n\
         [[switch.port]]\nname = \"a\"\ntype = \"vhost-user\"\n\
         [[switch]]\nname = \"br1\"\n\
         [[pool]]\nname = \"p0\"\npath = \"pool.img\"\nsize = \"64M\"\n\
         [[pool.volume]]\nname = \"base\"\nsize = \"8M\"\n",
    );

    // fdb del: a static entry, then nothing there (3), --if-exists (0).
    d.ok(&["fdb", "add", "br0", "1", "52:54:00:00:00:99", "a"]);
    let out = d.ok(&["fdb", "del", "br0", "1", "52:54:00:00:00:99"]);
    assert_eq!(out, "removed entry 52:54:00:00:00:99 in VLAN 1 on br0\n");
    assert!(!d.ok(&["fdb", "show", "br0"]).contains("52:54:00:00:00:99"));
    d.fails(3, &["fdb", "del", "br0", "1", "52:54:00:00:00:99"]);
    let r = d.json(&["fdb", "del", "br0", "1", "52:54:00:00:00:99", "--if-exists"]);
    assert_eq!(r["removed"], false);
    d.fails(
        3,
        &[
            "fdb",
            "del",
            "nobr",
            "1",
            "52:54:00:00:00:99",
            "--if-exists",
        ],
    );
    d.fails(2, &["fdb", "del", "br0", "1", "ff:ff:ff:ff:ff:ff"]);

    // log level: a port set logs at info; under warn it does not.
    d.ok(&["log", "level", "warn"]);
    d.ok(&["port", "set", "a", "--mtu", "1400"]);
    assert!(!d.log().contains("MTU 1400"), "{}", d.log());
    assert_eq!(d.ok(&["log", "level", "info"]), "log filter is now info\n");
    d.ok(&["port", "set", "a", "--mtu", "1450"]);
    assert!(
        d.log().contains("switch br0 port a: MTU 1450"),
        "{}",
        d.log()
    );
    let err = d.fails(2, &["log", "level", "loud"]);
    assert!(err.contains("not one of"), "{err}");
    d.ok(&["log", "level", "info,vblock=debug"]);

    // Ports: add twice (4), --may-exist (0, nothing added); the same name on
    // another switch is a conflict even so; remove twice (3), --if-exists (0).
    d.fails(4, &["port", "add", "br0", "a"]);
    d.ok(&["port", "add", "br0", "a", "--may-exist"]);
    assert_eq!(d.json(&["port", "list"]).as_array().unwrap().len(), 1);
    let err = d.fails(4, &["port", "add", "br1", "a", "--may-exist"]);
    assert!(err.contains("exists on switch br0"), "{err}");
    d.ok(&["port", "remove", "a"]);
    d.fails(3, &["port", "remove", "a"]);
    d.ok(&["port", "remove", "a", "--if-exists"]);

    // Volumes, snapshots, clones, exports; 2 MiB written to base first.
    d.fails(4, &["volume", "create", "p0", "base", "--size", "8M"]);
    d.ok(&[
        "volume",
        "create",
        "p0",
        "base",
        "--size",
        "16M",
        "--may-exist",
    ]);
    d.ok(&["export", "add", "p0", "base"]);
    {
        let mut c = test_kit::blkio::BlkClient::connect(&dir.join("run/base.sock"), 1).unwrap();
        c.queue(0).write_pattern(1, 0, 2 * MIB as usize).unwrap();
        c.queue(0).flush().unwrap();
    }
    d.ok(&["export", "remove", "p0", "base"]);
    d.ok(&["volume", "snapshot", "p0", "base", "s1"]);
    d.fails(4, &["volume", "snapshot", "p0", "base", "s1"]);
    d.ok(&["volume", "snapshot", "p0", "base", "s1", "--may-exist"]);
    d.ok(&["volume", "clone", "p0", "s1", "c1", "--may-exist"]);
    d.ok(&["volume", "clone", "p0", "s1", "c1", "--may-exist"]);
    d.fails(4, &["volume", "clone", "p0", "s1", "c1"]);
    d.ok(&["export", "add", "p0", "base"]);
    d.fails(4, &["export", "add", "p0", "base"]);
    d.ok(&["export", "add", "p0", "base", "--may-exist"]);
    d.ok(&["export", "remove", "p0", "base"]);
    d.fails(3, &["export", "remove", "p0", "base"]);
    d.ok(&["export", "remove", "p0", "base", "--if-exists"]);
    d.fails(3, &["export", "remove", "nopool", "base", "--if-exists"]);
    d.ok(&["volume", "delete", "p0", "c1"]);
    d.fails(3, &["volume", "delete", "p0", "c1"]);
    d.ok(&["volume", "delete", "p0", "c1", "--if-exists"]);
    d.fails(3, &["volume", "delete", "nopool", "c1", "--if-exists"]);

    // volume list: origin, shared and the pool's capacity. base, s1 and c2
    // share base's 2 MiB; base writes 1 MiB of it anew (copy on write).
    d.ok(&["volume", "clone", "p0", "s1", "c2"]);
    d.ok(&["export", "add", "p0", "base"]);
    {
        let mut c = test_kit::blkio::BlkClient::connect(&dir.join("run/base.sock"), 1).unwrap();
        c.queue(0).write_pattern(2, 0, MIB as usize).unwrap();
        c.queue(0).flush().unwrap();
    }
    let capacity = d.json(&["pool", "list"])[0]["capacity"].as_u64().unwrap();
    let vols = d.json(&["volume", "list", "--pool", "p0"]);
    let vol = |n: &str| {
        let v = vols.as_array().unwrap().iter().find(|v| v["name"] == n);
        v.cloned().unwrap_or_else(|| panic!("no {n}: {vols}"))
    };
    assert_eq!(
        vol("base")["size"],
        8 * MIB,
        "--may-exist left it as it was"
    );
    assert_eq!(vol("base")["origin"], Value::Null);
    assert_eq!(vol("s1")["origin"], "base");
    assert_eq!(vol("c2")["origin"], "s1");
    assert_eq!(vol("c2")["pool_capacity"], capacity);
    let space = |n: &str| {
        let v = vol(n);
        let get = |k: &str| v[k].as_u64().unwrap() / MIB;
        (get("allocated"), get("exclusive"), get("shared"))
    };
    assert_eq!(space("base"), (2, 1, 1));
    assert_eq!(space("s1"), (2, 0, 2));
    assert_eq!(space("c2"), (2, 0, 2));
    let text = d.ok(&["volume", "list"]);
    let header = text.lines().next().unwrap();
    assert!(header.contains("SHARED  POOL%  ORIGIN"), "{text}");
    d.stop();
}

/// `GET /metrics` from the daemon's metrics listener at `addr`.
fn metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// A VXLAN port added through `fabricctl port add --type vxlan` runs at once
/// (its socket counts a bad datagram in `port list` and `/metrics`), is kept
/// by `config save`, and `port remove` releases its UDP port.
#[test]
fn a_vxlan_port_added_and_removed_at_run_time() {
    let free_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = free_udp.local_addr().unwrap().port().to_string();
    drop(free_udp);
    let free_tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = free_tcp.local_addr().unwrap().to_string();
    drop(free_tcp);
    let (dir, mut d) = daemon(
        "fctl-vxlan",
        &format!(
            "[daemon]\nrun_dir = \"run\"\nmetrics_listen = \"{metrics_addr}\"\n\
             [[switch]]\nname = \"br0\"\n"
        ),
    );
    let add = [
        "port",
        "add",
        "br0",
        "vx",
        "--type",
        "vxlan",
        "--local",
        "127.0.0.1",
        "--udp-port",
        &udp_port,
        "--vni",
        "10=5010@127.0.0.2",
    ];
    d.ok(&add);
    assert_eq!(port(&d, "vx")["type"], "vxlan");
    d.fails(4, &add);
    d.ok(&[&add[..], &["--may-exist"]].concat());
    let err = d.fails(
        2,
        &[
            "port",
            "add",
            "br0",
            "vy",
            "--type",
            "vxlan",
            "--vni",
            "20=7@127.0.0.2",
        ],
    );
    assert!(err.contains("local"), "{err}");

    // One datagram from the listed VTEP whose VXLAN header lacks the I flag.
    let vtep = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    vtep.send_to(&[0u8; 16], format!("127.0.0.1:{udp_port}"))
        .unwrap();
    test_kit::frontend::fabric::wait_for("the bad header counted", || {
        port(&d, "vx")["tunnel"]["drops"]["bad_header"] == 1
    });
    let text = metrics(&metrics_addr);
    let line = "vswitchd_tunnel_drops_total{switch=\"br0\",port=\"vx\",reason=\"bad_header\"} 1";
    assert!(text.lines().any(|l| l == line), "{text}");

    d.ok(&["config", "save"]);
    let saved = std::fs::read_to_string(dir.join("fabric.toml")).unwrap();
    assert!(
        saved.contains("type = \"vxlan\"") && saved.contains("5010"),
        "{saved}"
    );
    d.ok(&["port", "remove", "vx"]);
    std::net::UdpSocket::bind(format!("127.0.0.1:{udp_port}")).expect("the UDP port is free again");
    assert!(!metrics(&metrics_addr).contains("port=\"vx\""));
    d.stop();
}
