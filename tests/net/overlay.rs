//! TAP ports and the VXLAN overlay with real peers: network namespaces made
//! by the test (root; CI runs as root), `vswitchd` processes in them, the
//! kernel's own `vxlan` device as an interop peer. Only the tests' own
//! namespace addresses are used; every namespace and process is removed on
//! drop, also when a test fails. Each test holds `test_kit::shared()`: they run
//! beside each other but never beside a testpmd test busy-polling the cores,
//! (a run beside them once counted one tunnel packet more than expected).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use test_kit::frontend::frames::{
    mac, payload, rarp, tcp4_check, tcp4_partial, tcp4_payload, ETHERTYPE_TEST,
};
use test_kit::frontend::virtio_net::{
    VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
};
use test_kit::frontend::{eth, GuestNic, NicOptions, BROADCAST};
use vswitch::vxlan::VxlanPacket;

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "fo{tag}{}{}",
        std::process::id() % 10000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace, deleted (with its processes) on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = unique(tag);
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        Ns(name)
    }
    /// Runs `f` on a thread that entered this namespace.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(&path).expect("netns file");
                // SAFETY: setns on this thread only (network namespaces are per thread).
                let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in namespace")
        })
    }
    /// (sent, received) of `count` pings to `dst`.
    fn ping(&self, dst: &str, count: u32) -> (u32, u32) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.0,
                "ping",
                "-c",
                &count.to_string(),
                "-W",
                "1",
                "-i",
                "0.2",
                dst,
            ])
            .output()
            .expect("ping (iputils-ping)");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("transmitted"))
            .unwrap_or("");
        let num = |word: &str| -> u32 {
            line.split(',')
                .find(|p| p.contains(word))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (num("transmitted"), num("received"))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for p in $(ip netns pids {n}); do kill -9 $p; done; ip netns del {n}",
                n = self.0
            ))
            .status();
    }
}

/// `bytes` over TCP from `client` to `server` (listening on `ip`), and back;
/// every byte checked.
fn tcp_both_ways(server: &Ns, client: &Ns, ip: &str, bytes: usize) {
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
    let listener = server.enter(|| TcpListener::bind((ip, 5555)).expect("listen"));
    let d2 = data.clone();
    let srv = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = vec![0u8; d2.len()];
        s.read_exact(&mut got).expect("server reads");
        assert!(got == d2, "bytes received by the server differ");
        s.write_all(&got).expect("server echoes");
    });
    let ip2 = ip.to_owned();
    let d3 = data.clone();
    client.enter(move || {
        let mut c = TcpStream::connect((ip2.as_str(), 5555)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(&d3).expect("client writes");
        let mut back = vec![0u8; d3.len()];
        c.read_exact(&mut back).expect("client reads the echo");
        assert!(back == d3, "bytes echoed back differ");
    });
    srv.join().expect("server");
}

/// A vswitchd process in a namespace, killed on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    fn start(ns: &Ns, dir: &Path, config: &str) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("fabric.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                env!("CARGO_BIN_EXE_vswitchd"),
                "--config",
            ])
            .arg(dir.join("fabric.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("vswitchd");
        let d = Daemon {
            child,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.log().contains("vswitchd running") {
            assert!(
                Instant::now() < deadline,
                "vswitchd did not start:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
    /// The lines starting with each of `prefixes` from one SIGUSR1 report
    /// (one snapshot: counters of different lines agree with each other).
    fn report<const N: usize>(&self, prefixes: [&str; N]) -> [String; N] {
        let before = self.log().len();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            let found = prefixes.map(|p| {
                log[before.min(log.len())..]
                    .lines()
                    .find(|l| l.starts_with(p))
                    .map(str::to_owned)
            });
            if found.iter().all(Option::is_some) {
                return found.map(Option::unwrap_or_default);
            }
            assert!(Instant::now() < deadline, "no {prefixes:?} lines:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's latest counter line starting with `prefix`.
    fn counters(&self, prefix: &str) -> String {
        let before = self.log().len();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if let Some(l) = log[before.min(log.len())..]
                .lines()
                .find(|l| l.starts_with(prefix))
            {
                return l.to_owned();
            }
            assert!(Instant::now() < deadline, "no {prefix:?} line:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn counter(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The counters as they stood, for the failure's report.
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) };
            std::thread::sleep(Duration::from_millis(300));
            eprintln!("--- vswitchd {} ---\n{}", self.dir.display(), self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn test_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(unique(tag))
}

/// A TAP port's device, created by `daemon_ns`'s vswitchd, moved into `guest`
/// with an address.
fn attach(daemon_ns: &Ns, device: &str, guest: &Ns, addr: &str, mtu: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ok = Command::new("ip")
            .args(["-n", &daemon_ns.0, "link", "set", device, "netns", &guest.0])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "TAP device {device} never appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sh(&format!(
        "ip -n {g} addr add {addr} dev {device} && ip -n {g} link set {device} mtu {mtu} up",
        g = guest.0
    ));
}

const TAP: &str = "[daemon]\nrun_dir = \"run\"\n[[switch]]\nname = \"br0\"\n";

fn tap_port(name: &str, device: &str, vlan: u16, mtu: u16) -> String {
    format!(
        "[[switch.port]]\nname = \"{name}\"\ntype = \"tap\"\ndevice = \"{device}\"\nvlan = {{ mode = \"access\", tag = {vlan} }}\nmtu = {mtu}\n"
    )
}

#[test]
fn tap_ports_join_a_vlan_and_other_vlans_stay_apart() {
    let _cpus = test_kit::shared();
    let host = Ns::new("h");
    let (a, b, c) = (Ns::new("a"), Ns::new("b"), Ns::new("c"));
    let (da, db, dc) = (unique("ta"), unique("tb"), unique("tc"));
    let dir = test_dir("tap");
    let d = Daemon::start(
        &host,
        &dir,
        &format!(
            "{TAP}{}{}{}",
            tap_port("a", &da, 10, 1500),
            tap_port("b", &db, 10, 1500),
            tap_port("c", &dc, 20, 1500)
        ),
    );
    attach(&host, &da, &a, "10.77.0.1/24", 1500);
    attach(&host, &db, &b, "10.77.0.2/24", 1500);
    attach(&host, &dc, &c, "10.77.0.3/24", 1500);
    assert_eq!(a.ping("10.77.0.2", 5), (5, 5));
    assert_eq!(b.ping("10.77.0.1", 5), (5, 5));
    tcp_both_ways(&b, &a, "10.77.0.2", 1 << 20);
    tcp_both_ways(&a, &b, "10.77.0.1", 1 << 20);
    // VLAN 20 sees nothing of VLAN 10.
    assert_eq!(a.ping("10.77.0.3", 3).1, 0);
    let c_line = d.counters("counters switch=br0 port=c ");
    assert_eq!(counter(&c_line, "tx_packets"), 0, "{c_line}");
}

/// Sends `frame` behind the virtio-net header `hdr` out of `ifname` from the
/// calling thread's namespace, through a packet socket with PACKET_VNET_HDR:
/// the kernel builds the GSO skb the header describes (checked by
/// `virtio_net_hdr_to_skb`) and hands it to the device as it is, or segments
/// it first if the device lacks the offload.
fn send_gso(ifname: &str, hdr: &VirtioNetHdr, frame: &[u8]) {
    const PACKET_VNET_HDR: libc::c_int = 15;
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: a NUL-terminated name we own.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "{ifname}: {}", std::io::Error::last_os_error());
    // SAFETY: plain socket(2); closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
    let on: libc::c_int = 1;
    // SAFETY: an int option we own, of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            PACKET_VNET_HDR,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "PACKET_VNET_HDR: {}", std::io::Error::last_os_error());
    // The packet socket takes the 10-byte legacy header (no num_buffers).
    let mut packet = hdr.to_bytes()[..10].to_vec();
    packet.extend_from_slice(frame);
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = index as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: our buffer and a valid sockaddr_ll of the size given.
    let n = unsafe {
        libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    let sent = std::io::Error::last_os_error();
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(fd) };
    assert_eq!(n, packet.len() as isize, "sendto {ifname}: {sent}");
}

/// Kernel TCP between two namespaces through two TAP ports, offloads on as
/// the kernel sets them by default: the TCP stacks hand the TAP devices 64
/// KiB-class TSO frames, which cross the switch intact (`tx_gso_packets`),
/// never segmented. A GSO frame the kernel sends out of a TAP device
/// reaches a harness guest without TSO as MTU-sized frames with valid
/// checksums, exactly ceil(payload / gso_size) of them.
#[test]
fn kernel_tcp_through_tap_ports_keeps_tso_frames_whole() {
    let _cpus = test_kit::shared();
    let host = Ns::new("h");
    let (a, b) = (Ns::new("a"), Ns::new("b"));
    let (da, db) = (unique("ta"), unique("tb"));
    let dir = test_dir("tso");
    let harness = "[[switch.port]]\nname = \"h\"\ntype = \"vhost-user\"\nvlan = { mode = \"access\", tag = 10 }\n";
    let d = Daemon::start(
        &host,
        &dir,
        &format!(
            "{TAP}{}{}{harness}",
            tap_port("a", &da, 10, 1500),
            tap_port("b", &db, 10, 1500),
        ),
    );
    attach(&host, &da, &a, "10.79.0.1/24", 1500);
    attach(&host, &db, &b, "10.79.0.2/24", 1500);
    for (ns, dev) in [(&a, &da), (&b, &db)] {
        let shown = ethtool_k(ns, dev);
        assert!(
            shown.contains("tcp-segmentation-offload: on"),
            "{dev} without TSO (TUNSETOFFLOAD):\n{shown}"
        );
    }
    tcp_both_ways(&b, &a, "10.79.0.2", 16 << 20);
    for port in ["a", "b"] {
        let line = d.counters(&format!("counters switch=br0 port={port} "));
        assert!(counter(&line, "tx_gso_packets") > 0, "{line}");
        assert_eq!(counter(&line, "gso_segmented"), 0, "{line}");
        assert_eq!(counter(&line, "csum_completed"), 0, "{line}");
        // TSO frames of 64 KiB class: far fewer frames than 16 MiB / 1448.
        assert!(counter(&line, "tx_packets") < 8_000, "{line}");
    }

    let mut nic = GuestNic::connect(&dir.join("run/h.sock"), NicOptions::default())
        .expect("harness guest connects");
    let data = payload(11, 40_000);
    let frame = tcp4_partial(mac(99), mac(5), 7, &data);
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    // The link comes up once the guest's rings are running.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d
        .counters("counters switch=br0 port=h ")
        .contains("link=up")
    {
        assert!(Instant::now() < deadline, "harness port never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    a.enter(|| send_gso(&da, &hdr, &frame));
    let want = data.len().div_ceil(1448);
    // Everything the harness port got since it came up. The namespaces' own
    // floods (IPv6 neighbour discovery) reach it too: only frames from the
    // sender are segments.
    let mut all = Vec::new();
    while let Some(f) = nic.recv(Duration::from_secs(if all.is_empty() { 5 } else { 1 })) {
        all.push(f);
    }
    let ours: Vec<&Vec<u8>> = all
        .iter()
        .filter(|f| f.get(6..12) == Some(&mac(5)[..]))
        .collect();
    assert_eq!(ours.len(), want, "exactly ceil(40000 / 1448) segments");
    let mut joined = Vec::new();
    for (i, seg) in ours.iter().enumerate() {
        assert!(seg.len() <= 1514, "segment {i}: {} bytes", seg.len());
        tcp4_check(seg).unwrap_or_else(|e| panic!("segment {i}: {e}"));
        let (seq, bytes) = tcp4_payload(seg);
        assert_eq!(seq as usize, 7 + joined.len(), "segment {i}");
        joined.extend_from_slice(bytes);
    }
    assert!(joined == data, "the payload, in order, complete");
    let line = d.counters("counters switch=br0 port=h ");
    assert_eq!(counter(&line, "gso_segmented"), 1, "{line}");
    assert_eq!(counter(&line, "tx_packets"), all.len() as u64, "{line}");
    let line = d.counters("counters switch=br0 port=a ");
    assert_eq!(counter(&line, "drop_offload_not_negotiated"), 0, "{line}");
}

/// Kernel UDP segmentation offload (USO, `UDP_SEGMENT`) through TAP ports:
/// one 10-segment UDP GSO datagram from namespace `a` crosses the switch as
/// one frame to TAP port `b` (USO on: `tx_gso_packets` exactly 1, nothing
/// segmented) and `b`'s socket gets the 10 datagrams; the same send to TAP
/// port `c` with `offloads = false` is segmented by the switch
/// (`gso_segmented` exactly 1) into 10 datagrams with valid checksums,
/// which `c`'s kernel delivers (it drops a bad UDP checksum).
#[test]
fn kernel_udp_gso_through_tap_ports_whole_or_segmented_by_the_switch() {
    const SEGMENT: usize = 1000;
    const SEGMENTS: usize = 10;
    let _cpus = test_kit::shared();
    let host = Ns::new("h");
    let (a, b, c) = (Ns::new("a"), Ns::new("b"), Ns::new("c"));
    let (da, db, dc) = (unique("ta"), unique("tb"), unique("tc"));
    let dir = test_dir("uso");
    let d = Daemon::start(
        &host,
        &dir,
        &format!(
            "{TAP}{}{}{}offloads = false\n",
            tap_port("a", &da, 10, 1500),
            tap_port("b", &db, 10, 1500),
            tap_port("c", &dc, 10, 1500),
        ),
    );
    attach(&host, &da, &a, "10.77.0.1/24", 1500);
    attach(&host, &db, &b, "10.77.0.2/24", 1500);
    attach(&host, &dc, &c, "10.77.0.3/24", 1500);
    let shown = ethtool_k(&a, &da);
    assert!(
        shown.contains("tx-udp-segmentation: on"),
        "{da} without USO (TUNSETOFFLOAD TUN_F_USO4):\n{shown}"
    );
    let data = payload(13, SEGMENT * SEGMENTS);
    for (ns, ip, port) in [(&b, "10.77.0.2", "b"), (&c, "10.77.0.3", "c")] {
        let rx = ns.enter(|| std::net::UdpSocket::bind((ip, 6000)).expect("bind"));
        rx.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        a.enter(|| {
            let tx = std::net::UdpSocket::bind(("10.77.0.1", 0)).expect("bind");
            let size = SEGMENT as libc::c_int;
            // SAFETY: an int option we own, of the size given.
            let r = unsafe {
                libc::setsockopt(
                    tx.as_raw_fd(),
                    libc::SOL_UDP,
                    libc::UDP_SEGMENT,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
            // ARP first, so the GSO datagram is not held in the neighbour queue.
            Command::new("ping")
                .args(["-c1", "-W2", ip])
                .status()
                .expect("ping");
            assert_eq!(tx.send_to(&data, (ip, 6000)).expect("send"), data.len());
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        for i in 0..SEGMENTS {
            let n = rx
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("{port}: datagram {i} of {SEGMENTS}: {e}"));
            assert_eq!(n, SEGMENT, "{port}: datagram {i}");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == data, "{port}: the payload, in order, complete");
    }
    let line = d.counters("counters switch=br0 port=b ");
    assert_eq!(counter(&line, "tx_gso_packets"), 1, "{line}");
    assert_eq!(counter(&line, "gso_segmented"), 0, "{line}");
    let line = d.counters("counters switch=br0 port=c ");
    assert_eq!(counter(&line, "tx_gso_packets"), 0, "{line}");
    assert_eq!(counter(&line, "gso_segmented"), 1, "{line}");
}

/// `ethtool -k dev` in `ns`: the offloads the kernel uses on the device.
fn ethtool_k(ns: &Ns, dev: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "ethtool", "-k", dev])
        .output()
        .expect("ethtool");
    assert!(out.status.success(), "ethtool -k {dev}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `offloads = false` on TAP ports: the kernel sees devices without checksum
/// or segmentation offload, segments and checksums every frame itself, and
/// the switch carries complete frames only: no GSO frame at all, nothing done
/// in software, every frame within the MTU.
#[test]
fn tap_ports_with_offloads_off_carry_complete_frames_only() {
    let _cpus = test_kit::shared();
    let host = Ns::new("h");
    let (a, b) = (Ns::new("a"), Ns::new("b"));
    let (da, db) = (unique("ta"), unique("tb"));
    let dir = test_dir("nooffload");
    let d = Daemon::start(
        &host,
        &dir,
        &format!(
            "{TAP}{}offloads = false\n{}offloads = false\n",
            tap_port("a", &da, 10, 1500),
            tap_port("b", &db, 10, 1500),
        ),
    );
    attach(&host, &da, &a, "10.78.0.1/24", 1500);
    attach(&host, &db, &b, "10.78.0.2/24", 1500);
    for (ns, dev) in [(&a, &da), (&b, &db)] {
        let shown = ethtool_k(ns, dev);
        for off in ["tx-checksumming: off", "tcp-segmentation-offload: off"] {
            assert!(shown.contains(off), "{dev}: not {off}:\n{shown}");
        }
    }
    let bytes = 4 << 20;
    tcp_both_ways(&b, &a, "10.78.0.2", bytes);
    for port in ["a", "b"] {
        let line = d.counters(&format!("counters switch=br0 port={port} "));
        for none in ["tx_gso_packets", "gso_segmented", "csum_completed"] {
            assert_eq!(counter(&line, none), 0, "{none}: {line}");
        }
        // The port's data direction alone is at least bytes / MSS frames.
        assert!(
            counter(&line, "tx_packets") >= (bytes / 1448) as u64,
            "{line}"
        );
        assert!(
            counter(&line, "tx_bytes") <= counter(&line, "tx_packets") * 1514,
            "a frame above the MTU: {line}"
        );
        assert_eq!(counter(&line, "drop_offload_not_negotiated"), 0, "{line}");
    }
}

/// Two hosts (namespaces joined by a veth underlay), each a vswitchd with a
/// TAP port into a guest namespace and a VXLAN port to the other.
struct TwoHosts {
    u: [Ns; 2],
    g: [Ns; 2],
    d: Vec<Daemon>,
    /// The guests' TAP devices (inside `g`).
    dev: Vec<String>,
}

/// VLAN 10 <-> VNI 5010 and VLAN 20 <-> VNI 5020 to the other host.
fn vxlan_port(local: &str, remote: &str) -> String {
    format!(
        "[[switch.port]]\nname = \"vx\"\ntype = \"vxlan\"\nlocal = \"{local}\"\n\
         vni = [ {{ vlan = 10, vni = 5010, remotes = [\"{remote}\"] }}, {{ vlan = 20, vni = 5020, remotes = [\"{remote}\"] }} ]\n"
    )
}

fn underlay(u: &[Ns; 2]) -> (String, String) {
    let (va, vb) = (unique("va"), unique("vb"));
    sh(&format!(
        "ip link add {va} netns {} type veth peer name {vb} netns {} && \
         ip -n {} addr add 192.168.230.1/24 dev {va} && ip -n {} addr add 192.168.230.2/24 dev {vb} && \
         ip -n {} link set {va} up && ip -n {} link set {vb} up",
        u[0].0, u[1].0, u[0].0, u[1].0, u[0].0, u[1].0
    ));
    (va, vb)
}

fn two_hosts(tag: &str) -> (TwoHosts, String) {
    let u = [Ns::new("u"), Ns::new("u")];
    let g = [Ns::new("g"), Ns::new("g")];
    let (va, _vb) = underlay(&u);
    let mut d = Vec::new();
    let mut devs = Vec::new();
    for i in 0..2 {
        let dev = unique("t");
        let local = format!("192.168.230.{}", i + 1);
        let remote = format!("192.168.230.{}", 2 - i);
        d.push(Daemon::start(
            &u[i],
            &test_dir(tag),
            &format!(
                "{TAP}{}{}",
                tap_port("t", &dev, 10, 1450),
                vxlan_port(&local, &remote)
            ),
        ));
        attach(&u[i], &dev, &g[i], &format!("10.78.0.{}/24", i + 1), 1450);
        devs.push(dev);
    }
    (TwoHosts { u, g, d, dev: devs }, va)
}

#[test]
fn two_hosts_share_a_segment_over_vxlan() {
    let _cpus = test_kit::shared();
    let (h, va) = two_hosts("vx");
    // A capture on host 0's underlay while the guests talk.
    let cap = {
        let u0 = &h.u[0];
        let path = format!("/run/netns/{}", u0.0);
        let dev = va.clone();
        std::thread::spawn(move || capture_vxlan(&path, &dev, Duration::from_secs(8)))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(h.g[0].ping("10.78.0.2", 5), (5, 5));
    assert_eq!(h.g[1].ping("10.78.0.1", 5), (5, 5));
    tcp_both_ways(&h.g[1], &h.g[0], "10.78.0.2", 1 << 20);
    tcp_both_ways(&h.g[0], &h.g[1], "10.78.0.1", 1 << 20);
    let packets = cap.join().unwrap();
    assert!(
        packets > 10,
        "the underlay carried {packets} valid VXLAN packets of VNI 5010"
    );
    let t = h.d[0].counters("tunnel switch=br0 port=vx ");
    assert!(
        counter(&t, "rx_packets") > 0 && counter(&t, "tx_packets") > 0,
        "{t}"
    );
    assert!(counter(&t, "remote_learned") >= 1, "{t}");
}

/// Counts UDP/4789 packets on `dev` whose payload is a valid VXLAN packet of
/// VNI 5010 (AF_PACKET socket opened inside the namespace).
fn capture_vxlan(netns: &str, dev: &str, for_: Duration) -> usize {
    let fd = std::fs::File::open(netns).unwrap();
    assert_eq!(
        // SAFETY: setns takes an fd (open: `fd` lives to the end of this
        // function) and no memory. It moves only the calling thread, a
        // thread spawned just for this capture, so no other test code ends
        // up in the namespace.
        unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) },
        0
    );
    // SAFETY: a raw packet socket for all protocols.
    let s = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        )
    };
    assert!(s >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
    let name = std::ffi::CString::new(dev).unwrap();
    // SAFETY: a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    // SAFETY: zeroed sockaddr_ll is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: binding our socket to a valid sockaddr_ll.
    unsafe {
        libc::bind(
            s,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: setting a receive timeout on our socket.
    unsafe {
        libc::setsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let mut buf = vec![0u8; 65536];
    let mut valid = 0;
    let end = Instant::now() + for_;
    while Instant::now() < end {
        // SAFETY: reading into our buffer.
        let n = unsafe { libc::recv(s, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 42 {
            continue;
        }
        let f = &buf[..n as usize];
        // Ethernet / IPv4 / UDP to 4789
        if f[12..14] != [0x08, 0x00] || f[23] != 17 {
            continue;
        }
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let udp = 14 + ihl;
        if u16::from_be_bytes([f[udp + 2], f[udp + 3]]) != 4789 {
            continue;
        }
        if let Ok(p) = VxlanPacket::parse(&f[udp + 8..]) {
            if p.vni().get() == 5010 {
                valid += 1;
            }
        }
    }
    // SAFETY: closing our socket.
    unsafe { libc::close(s) };
    valid
}

/// Host 0: a vswitchd with TAP port `t` (into `g[0]`, 10.79.0.1, MTU 1450)
/// and a VXLAN port; host 1: the kernel's vxlan device in a bridge with a
/// veth into `g[1]` (10.79.0.2), default offloads.
struct KernelPeer {
    d: Daemon,
    /// Host 1's underlay device.
    vb: String,
    /// The TAP device (in `g[0]`).
    dev: String,
    g: [Ns; 2],
    u: [Ns; 2],
}

fn kernel_peer(tag: &str) -> KernelPeer {
    let u = [Ns::new("u"), Ns::new("u")];
    let g = [Ns::new("g"), Ns::new("g")];
    let (_va, vb) = underlay(&u);
    // Host 0: vswitchd. Host 1: the kernel's vxlan device in a bridge.
    let dev = unique("t");
    let d = Daemon::start(
        &u[0],
        &test_dir(tag),
        &format!(
            "{TAP}{}{}",
            tap_port("t", &dev, 10, 1450),
            vxlan_port("192.168.230.1", "192.168.230.2")
        ),
    );
    attach(&u[0], &dev, &g[0], "10.79.0.1/24", 1450);
    let (vx, br, pa, pb) = (unique("kx"), unique("kb"), unique("pa"), unique("pb"));
    sh(&format!(
        "ip -n {u1} link add {vx} type vxlan id 5010 local 192.168.230.2 remote 192.168.230.1 dstport 4789 dev {vb} && \
         ip -n {u1} link add {br} type bridge && ip -n {u1} link set {vx} master {br} && \
         ip link add {pa} netns {u1} type veth peer name {pb} netns {g1} && ip -n {u1} link set {pa} master {br} && \
         ip -n {u1} link set {vx} up && ip -n {u1} link set {br} up && ip -n {u1} link set {pa} up && \
         ip -n {g1} addr add 10.79.0.2/24 dev {pb} && ip -n {g1} link set {pb} mtu 1450 up",
        u1 = u[1].0,
        g1 = g[1].0
    ));
    KernelPeer { d, vb, dev, g, u }
}

#[test]
fn interop_with_the_kernel_vxlan_device() {
    let _cpus = test_kit::shared();
    let KernelPeer { d, vb, g, u, .. } = kernel_peer("ik");
    // The kernel side keeps its default offloads: veth hands TCP segments on
    // with the checksum left partial, and the tunnel port completes it.
    let cap = {
        let path = format!("/run/netns/{}", u[1].0);
        let dev = vb.clone();
        std::thread::spawn(move || capture_vxlan(&path, &dev, Duration::from_secs(4)))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(g[0].ping("10.79.0.2", 5), (5, 5));
    assert_eq!(g[1].ping("10.79.0.1", 5), (5, 5));
    // Both sides' packets on the kernel host's underlay decode as VXLAN.
    assert!(
        cap.join().unwrap() >= 10,
        "valid VXLAN packets on the underlay"
    );
    tcp_both_ways(&g[1], &g[0], "10.79.0.2", 1 << 20);
    tcp_both_ways(&g[0], &g[1], "10.79.0.1", 1 << 20);
    let [t, vx, tap] = d.report([
        "tunnel switch=br0 port=vx ",
        "counters switch=br0 port=vx ",
        "counters switch=br0 port=t ",
    ]);
    assert_eq!(counter(&t, "drop_bad_header"), 0, "{t}");
    // Over veth the peer's whole TSO packets arrive as one datagram each:
    // taken as GSO frames and passed whole to the TSO-capable TAP port,
    // none dropped for their size (before, TCP retransmitted for a minute).
    assert_eq!(counter(&vx, "drop_oversize"), 0, "{vx}");
    assert!(counter(&tap, "tx_gso_packets") > 0, "{tap}");
}

/// Kernel TCP from a Linux vxlan peer into a TAP port that takes TSO: the
/// peer's MTU-sized inner segments that arrive in one receive batch are
/// coalesced (`rx_coalesced`) and written to the TAP device as GSO frames
/// (`tx_gso_packets`), never segmented again; 16 MiB cross intact (and
/// come back through the tunnel's transmit side).
///
/// The peer's underlay veth has UDP tunnel segmentation turned off, so its
/// packets arrive MTU-sized as from a physical NIC. With it on (the
/// default, `interop_with_the_kernel_vxlan_device`), veth hands the whole
/// UDP tunnel GSO packet to our socket: one datagram carrying an inner TSO
/// frame, taken whole as a GSO frame (`tunnel/decap.rs`), nothing to coalesce.
#[test]
fn kernel_tcp_from_a_vxlan_peer_reaches_a_tso_tap_port_coalesced() {
    let _cpus = test_kit::shared();
    // Every namespace bound: the underlay's too, or it would be deleted here.
    let KernelPeer { d, dev, g, u, vb } = kernel_peer("gro");
    let out = Command::new("ip")
        .args(["netns", "exec", &g[0].0, "ethtool", "-k", &dev])
        .output()
        .expect("ethtool");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("tcp-segmentation-offload: on"),
        "{dev} without TSO (TUNSETOFFLOAD):\n{text}"
    );
    // As from a physical NIC: the peer's underlay cuts its UDP tunnel GSO
    // packets into MTU-sized datagrams (a veth would otherwise hand whole
    // GSO packets across, see the test's doc).
    sh(&format!(
        "ip netns exec {} ethtool -K {vb} tx-udp_tnl-segmentation off tx-udp_tnl-csum-segmentation off",
        u[1].0
    ));
    assert_eq!(g[1].ping("10.79.0.1", 2), (2, 2));
    // The client in g[1] writes: kernel peer -> tunnel -> TAP port.
    tcp_both_ways(&g[0], &g[1], "10.79.0.1", 16 << 20);
    // The connection's last segments (its close) through before the report.
    std::thread::sleep(Duration::from_millis(300));
    let [t, vx, tap] = d.report([
        "tunnel switch=br0 port=vx ",
        "counters switch=br0 port=vx ",
        "counters switch=br0 port=t ",
    ]);
    assert!(counter(&t, "rx_coalesced") > 0, "{t}");
    assert_eq!(counter(&t, "drop_bad_header"), 0, "{t}");
    // One report: the switch was handed what was decapsulated less what was
    // merged, and dropped none of it for its size.
    assert_eq!(
        counter(&vx, "rx_packets"),
        counter(&t, "rx_packets") - counter(&t, "rx_coalesced"),
        "{t}\n{vx}"
    );
    assert_eq!(counter(&vx, "drop_oversize"), 0, "{vx}");
    assert!(counter(&tap, "tx_gso_packets") > 0, "{tap}");
    assert_eq!(counter(&tap, "gso_segmented"), 0, "{tap}");
    assert_eq!(counter(&tap, "drop_no_buffer"), 0, "{tap}");
}

#[test]
fn forged_vni_and_unknown_vteps_are_dropped() {
    let _cpus = test_kit::shared();
    let (h, _va) = two_hosts("fg");
    assert_eq!(h.g[0].ping("10.78.0.2", 2).1, 2);
    // From host 1's underlay: a packet with a VNI nobody maps, and a valid
    // one from an address that is not a configured VTEP.
    let mut inner = vec![0u8; 60];
    inner[..6].copy_from_slice(&[0xff; 6]);
    inner[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x42]);
    inner[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let packet = |vni: u32| {
        let mut p = vswitch::vxlan::header(vswitch::vxlan::Vni::new(vni).unwrap()).to_vec();
        p.extend_from_slice(&inner);
        p
    };
    let (forged, valid) = (packet(9999), packet(5010));
    h.u[1].enter(move || {
        let s = std::net::UdpSocket::bind((Ipv4Addr::new(192, 168, 230, 2), 0)).unwrap();
        s.send_to(&forged, (Ipv4Addr::new(192, 168, 230, 1), 4789))
            .unwrap();
    });
    let t = h.d[0].counters("tunnel switch=br0 port=vx ");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut t = t;
    while counter(&t, "drop_unknown_vni") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        t = h.d[0].counters("tunnel switch=br0 port=vx ");
    }
    assert_eq!(counter(&t, "drop_unknown_vni"), 1, "{t}");
    // An unknown sender: host 1 sends from a second address on its underlay link.
    sh(&format!(
        "ip -n {u1} addr add 192.168.230.9/24 dev $(ip -n {u1} -o link show type veth | awk -F': ' '{{print $2}}' | cut -d@ -f1 | head -1)",
        u1 = h.u[1].0
    ));
    h.u[1].enter(move || {
        let s = std::net::UdpSocket::bind((Ipv4Addr::new(192, 168, 230, 9), 0)).unwrap();
        s.send_to(&valid, (Ipv4Addr::new(192, 168, 230, 1), 4789))
            .unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let t = h.d[0].counters("tunnel switch=br0 port=vx ");
        if counter(&t, "drop_unknown_vtep") == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{t}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A guest namespace on a TAP port added at run time (fabricctl) to host
/// `host` of `h`, VLAN `vlan`, MTU 1450, address `addr`. Returns it and the
/// device name.
fn tap_guest(h: &TwoHosts, host: usize, port: &str, vlan: u16, addr: &str) -> (Ns, String) {
    let ns = Ns::new("m");
    let dev = unique("m");
    let vlan = format!("access:{vlan}");
    fabricctl(
        &h.d[host],
        &[
            "port", "add", "br0", port, "--type", "tap", "--device", &dev, "--vlan", &vlan,
            "--mtu", "1450",
        ],
    );
    attach(&h.u[host], &dev, &ns, addr, 1450);
    (ns, dev)
}

/// Runs fabricctl against a daemon of these tests; its output.
fn fabricctl(d: &Daemon, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fabricctl"))
        .arg("--control-socket")
        .arg(d.dir.join("run/control.sock"))
        .args(args)
        .output()
        .expect("fabricctl");
    assert!(
        out.status.success(),
        "fabricctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A guest (MAC 02:00:00:00:00:50, 10.78.0.50) first lives on host 0, then
/// "migrates" to host 1 (its TAP port removed on host 0, a new one added on
/// host 1 at run time). At its first frame on host 1, both hosts find it
/// there: host 1 locally (its FDB entry moves from the tunnel to the local
/// port, counted), host 0 through the tunnel.
/// A guest on VLAN 20 on host 1 never sees VLAN 10 traffic across the overlay.
#[test]
fn a_station_that_moves_between_hosts_is_found_at_its_first_frame() {
    let _cpus = test_kit::shared();
    let (h, _va) = two_hosts("mv");
    let mac = "02:00:00:00:00:50";
    // On host 0 first.
    let (m0, dev0) = tap_guest(&h, 0, "mover", 10, "10.78.0.50/24");
    sh(&format!("ip -n {} link set {dev0} address {mac}", m0.0));
    assert_eq!(
        h.g[1].ping("10.78.0.50", 3),
        (3, 3),
        "reached on host 0 through the tunnel"
    );
    // Migrate: gone from host 0, back on host 1 with the same MAC and address.
    fabricctl(&h.d[0], &["port", "remove", "mover"]);
    drop(m0);
    let (m1, dev1) = tap_guest(&h, 1, "mover", 10, "10.78.0.50/24");
    sh(&format!("ip -n {} link set {dev1} address {mac}", m1.0));
    // Its first frames (ARP and ping) announce it on host 1.
    assert_eq!(
        m1.ping("10.78.0.1", 3).1,
        3,
        "the moved guest reaches host 0's guest"
    );
    assert_eq!(
        h.g[0].ping("10.78.0.50", 3),
        (3, 3),
        "host 0 finds it on host 1"
    );
    assert_eq!(
        h.g[1].ping("10.78.0.50", 3),
        (3, 3),
        "host 1 finds it locally"
    );
    // On host 1 the MAC was behind the tunnel and is now on a local port: a
    // move of its FDB entry, at the first frame.
    let fdb1 = h.d[1].counters("fdb switch=br0 ");
    assert!(
        counter(&fdb1, "moved") >= 1,
        "host 1 counted the move: {fdb1}"
    );
    // VLAN 20 (VNI 5020) on host 1 is another segment: nothing of VLAN 10
    // (VNI 5010) reaches it across the overlay.
    let (_g20, _) = tap_guest(&h, 1, "v20", 20, "10.78.0.20/24");
    assert_eq!(
        h.g[0].ping("10.78.0.20", 3).1,
        0,
        "VLAN 10 reaches VLAN 20 across the overlay"
    );
    let line = h.d[1].counters("counters switch=br0 port=v20 ");
    assert_eq!(counter(&line, "tx_packets"), 0, "{line}");
}

/// The same segment with a multicast group per VNI instead of a remote list:
/// floods go to the group, unicast to the learned VTEP. A static remote
/// entry on host 0 sends a MAC's frames to host 1 before any learning.
#[test]
fn a_multicast_group_carries_the_floods() {
    let _cpus = test_kit::shared();
    let u = [Ns::new("u"), Ns::new("u")];
    let g = [Ns::new("g"), Ns::new("g")];
    let (va, vb) = underlay(&u);
    for (ns, dev) in [(&u[0], &va), (&u[1], &vb)] {
        sh(&format!("ip -n {} route add 224.0.0.0/4 dev {dev}", ns.0));
    }
    let mut d = Vec::new();
    for i in 0..2 {
        let dev = unique("t");
        let local = format!("192.168.230.{}", i + 1);
        let statics = if i == 0 {
            ", static = [ { mac = \"02:00:00:00:00:77\", vtep = \"192.168.230.2\" } ]"
        } else {
            ""
        };
        let port = format!(
            "[[switch.port]]\nname = \"vx\"\ntype = \"vxlan\"\nlocal = \"{local}\"\nsenders = [\"192.168.230.0/24\"]\n\
             vni = [ {{ vlan = 10, vni = 5010, group = \"239.1.1.10\"{statics} }} ]\n"
        );
        d.push(Daemon::start(
            &u[i],
            &test_dir("mc"),
            &format!("{TAP}{}{port}", tap_port("t", &dev, 10, 1450)),
        ));
        attach(&u[i], &dev, &g[i], &format!("10.81.0.{}/24", i + 1), 1450);
    }
    assert_eq!(g[0].ping("10.81.0.2", 5), (5, 5));
    assert_eq!(g[1].ping("10.81.0.1", 5), (5, 5));
    let t = d[0].counters("tunnel switch=br0 port=vx ");
    assert!(counter(&t, "remote_entries") >= 2, "learned + static: {t}");
}

/// A VXLAN packet of `vni` carrying a broadcast frame from `src`.
fn vxlan_from(vni: u32, src: [u8; 6]) -> Vec<u8> {
    let mut p = vswitch::vxlan::header(vswitch::vxlan::Vni::new(vni).unwrap()).to_vec();
    let mut inner = vec![0u8; 60];
    inner[..6].copy_from_slice(&[0xff; 6]);
    inner[6..12].copy_from_slice(&src);
    inner[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    p.extend_from_slice(&inner);
    p
}

/// Sends `packets` from `from` (an address of `ns`) to `to`:4789.
fn send_udp(ns: &Ns, from: Ipv4Addr, to: Ipv4Addr, packets: Vec<Vec<u8>>) {
    ns.enter(move || {
        let s = std::net::UdpSocket::bind((from, 0)).unwrap();
        for p in &packets {
            assert_eq!(s.send_to(p, (to, 4789)).unwrap(), p.len());
        }
    });
}

/// Packets the tunnel has taken in: decapsulated, or dropped on receive.
fn taken_in(line: &str) -> u64 {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| {
            *k == "rx_packets"
                || (k.starts_with("drop_")
                    && !["drop_too_big", "drop_tx_busy", "drop_tx_error"].contains(k))
        })
        .map(|(_, v)| v.parse::<u64>().unwrap())
        .sum()
}

/// `d`'s tunnel line once it has taken in `n` packets in all (a packet sent
/// over a veth arrives; the deadline only bounds a broken run).
fn tunnel_after(d: &Daemon, n: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = d.counters("tunnel switch=br0 port=vx ");
        if taken_in(&t) >= n {
            assert_eq!(taken_in(&t), n, "{t}");
            return t;
        }
        assert!(Instant::now() < deadline, "{t}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A VNI with a multicast group takes unlisted unicast senders only from the
/// `senders` subnets; the sockets are bound to `local` and the group, never
/// the wildcard; a VTEP learns at most `vtep_mac_limit` MACs.
#[test]
fn group_vnis_take_senders_only_from_the_subnet_and_vteps_are_limited() {
    let _cpus = test_kit::shared();
    let u = [Ns::new("u"), Ns::new("u")];
    let (_va, vb) = underlay(&u);
    let d = Daemon::start(
        &u[0],
        &test_dir("sn"),
        &format!(
            "{TAP}[[switch.port]]\nname = \"vx\"\ntype = \"vxlan\"\nlocal = \"192.168.230.1\"\n\
             senders = [\"192.168.230.0/30\"]\nvtep_mac_limit = 3\n\
             vni = [ {{ vlan = 10, vni = 5010, group = \"239.1.1.10\" }} ]\n"
        ),
    );
    // Bound to the local address and the group's, nothing else.
    let ss = Command::new("ip")
        .args(["netns", "exec", &u[0].0, "ss", "-Hnul"])
        .output()
        .expect("ss (iproute2)");
    assert!(ss.status.success());
    let text = String::from_utf8_lossy(&ss.stdout);
    let mut bound: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter(|a| a.ends_with(":4789"))
        .collect();
    bound.sort();
    assert_eq!(bound, ["192.168.230.1:4789", "239.1.1.10:4789"], "{text}");
    // A sender outside 192.168.230.0/30 (.9): dropped and counted.
    sh(&format!(
        "ip -n {} addr add 192.168.230.9/24 dev {vb}",
        u[1].0
    ));
    let local = Ipv4Addr::new(192, 168, 230, 1);
    send_udp(
        &u[1],
        Ipv4Addr::new(192, 168, 230, 9),
        local,
        vec![vxlan_from(5010, [2, 0, 0, 0, 0, 0x09])],
    );
    let t = tunnel_after(&d, 1);
    assert_eq!(
        (counter(&t, "drop_unknown_vtep"), counter(&t, "rx_packets")),
        (1, 0),
        "{t}"
    );
    assert_eq!(counter(&t, "remote_entries"), 0, "{t}");
    // A sender inside it (.2) with five source MACs: taken, three learned.
    let five = (1..=5)
        .map(|i| vxlan_from(5010, [2, 0, 0, 0, 0x0a, i]))
        .collect();
    send_udp(&u[1], Ipv4Addr::new(192, 168, 230, 2), local, five);
    let t = tunnel_after(&d, 6);
    assert_eq!(counter(&t, "rx_packets"), 5, "{t}");
    assert_eq!(counter(&t, "remote_entries"), 3, "{t}");
    assert_eq!(counter(&t, "remote_refused_vtep_limit"), 2, "{t}");
    assert_eq!(counter(&t, "drop_unknown_vtep"), 1, "{t}");
}

/// A remote VTEP sends a frame whose inner source is host 0's guest's MAC:
/// the guest, seen locally within the hold time, stays on its port (the
/// packet is dropped, the refused move counted once) and still receives
/// its traffic from across the overlay.
#[test]
fn a_spoofed_local_mac_from_the_tunnel_does_not_move_the_guest() {
    let _cpus = test_kit::shared();
    let (h, _va) = two_hosts("sp");
    let mac = [0x02, 0, 0, 0, 0x01, 0x01];
    sh(&format!(
        "ip -n {} link set {} address 02:00:00:00:01:01",
        h.g[0].0, h.dev[0]
    ));
    assert_eq!(h.g[1].ping("10.78.0.1", 2), (2, 2));
    let before = h.d[0].counters("tunnel switch=br0 port=vx ");
    // From host 1's VTEP address: a configured remote, so only the hold stops it.
    send_udp(
        &h.u[1],
        Ipv4Addr::new(192, 168, 230, 2),
        Ipv4Addr::new(192, 168, 230, 1),
        vec![vxlan_from(5010, mac)],
    );
    tunnel_after(&h.d[0], taken_in(&before) + 1);
    assert_eq!(
        h.g[1].ping("10.78.0.1", 3),
        (3, 3),
        "host 0's guest still receives its traffic"
    );
    let t = h.d[0].counters("tunnel switch=br0 port=vx ");
    assert_eq!(counter(&t, "drop_held_station"), 1, "{t}");
    let fdb = h.d[0].counters("fdb switch=br0 ");
    assert_eq!(counter(&fdb, "refused_move"), 1, "{fdb}");
    assert_eq!(counter(&fdb, "moved"), 0, "{fdb}");
}

/// `key` of `d`'s report line starting with `prefix`, once it reached `n`;
/// it must then be exactly `n` (the deadline only bounds a broken run).
fn counter_after(d: &Daemon, prefix: &str, key: &str, n: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let line = d.counters(prefix);
        if counter(&line, key) >= n {
            assert_eq!(counter(&line, key), n, "{line}");
            return line;
        }
        assert!(Instant::now() < deadline, "{line}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A harness guest on a vhost-user port `name` (VLAN 10) added to `d` at
/// run time, once its link is up.
fn harness_guest(d: &Daemon, name: &str) -> GuestNic {
    fabricctl(d, &["port", "add", "br0", name, "--vlan", "access:10"]);
    let nic = GuestNic::connect(
        &d.dir.join(format!("run/{name}.sock")),
        NicOptions::default(),
    )
    .expect("harness guest connects");
    let prefix = format!("counters switch=br0 port={name} ");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d.counters(&prefix).contains(" link=up ") {
        assert!(Instant::now() < deadline, "{name} never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    nic
}

/// The next frame `nic` receives from `src` within 5 s, skipping the TAP
/// guests' own traffic (IPv6 neighbour discovery and MLD of their kernels).
fn recv_from(nic: &mut GuestNic, src: [u8; 6]) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Some(f) = nic.recv(deadline.saturating_duration_since(Instant::now())) {
        if f[6..12] == src {
            return Some(f);
        }
    }
    None
}

/// A guest live-migrated from host 0 to host 1, the harness frontend
/// playing both QEMUs. While it runs on host 0, host 1's SEND_RARP for its
/// MAC does not move it there (the tunnel's move hold: a running local
/// guest keeps its address). Once host 0's frontend has stopped its rings
/// (GET_VRING_BASE: the VM paused for the last copy; the connection stays
/// open, as QEMU keeps it until it quits) the next SEND_RARP moves it on
/// host 0 at once, although the guest spoke within `local_hold_secs`:
/// exactly one move, host 0's FDB shows it behind the tunnel via host 1's
/// VTEP, and host 0's other guest reaches it on host 1 before it sends
/// anything itself. On host 1 the MAC moved from the tunnel to the local
/// port at the first announcement: one move.
#[test]
fn a_migrated_guest_announced_on_the_other_host_moves_at_once() {
    let _cpus = test_kit::shared();
    let (h, _va) = two_hosts("an");
    let mut src = harness_guest(&h.d[0], "vm");
    let mut peer = harness_guest(&h.d[0], "peer");
    let mut dst = harness_guest(&h.d[1], "vm");
    let (guest, peer_mac) = ([0x02, 0, 0, 0, 0x77, 0x01], [0x02, 0, 0, 0, 0x77, 0x02]);
    let mac_text = "02:00:00:00:77:01";

    // Running on host 0: learned there, and behind the tunnel on host 1.
    let hello = eth(BROADCAST, guest, ETHERTYPE_TEST, &payload(1, 100));
    assert!(src.send(&hello));
    assert_eq!(recv_from(&mut dst, guest), Some(hello.clone()));
    assert_eq!(recv_from(&mut peer, guest), Some(hello));

    // Announced on host 1 while it still runs on host 0: held.
    assert_eq!(dst.send_rarp(guest).unwrap(), 0);
    counter_after(&h.d[0], "fdb switch=br0 ", "refused_move", 1);
    let t = h.d[0].counters("tunnel switch=br0 port=vx ");
    assert_eq!(counter(&t, "drop_held_station"), 1, "{t}");
    let fdb0 = fabricctl(&h.d[0], &["fdb", "show", "br0"]);
    let line = fdb0.lines().find(|l| l.contains(mac_text));
    assert!(line.is_some_and(|l| l.contains(" vm ")), "{fdb0}");
    assert_eq!(counter(&h.d[0].counters("fdb switch=br0 "), "moved"), 0);

    // Migrated: the source VM stopped, the destination announces it.
    src.stop().expect("GET_VRING_BASE");
    assert_eq!(dst.send_rarp(guest).unwrap(), 0);
    let fdb = counter_after(&h.d[0], "fdb switch=br0 ", "moved", 1);
    assert_eq!(counter(&fdb, "refused_move"), 1, "{fdb}");
    assert_eq!(recv_from(&mut peer, guest), Some(rarp(guest)));
    let fdb0 = fabricctl(&h.d[0], &["fdb", "show", "br0"]);
    let line = fdb0.lines().find(|l| l.contains(mac_text));
    assert!(
        line.is_some_and(|l| l.contains(" vx via 192.168.230.2 ")),
        "{fdb0}"
    );
    let fdb1 = h.d[1].counters("fdb switch=br0 ");
    assert_eq!(counter(&fdb1, "moved"), 1, "{fdb1}");
    let vm1 = h.d[1].counters("counters switch=br0 port=vm ");
    assert_eq!(counter(&vm1, "announces"), 2, "{vm1}");

    // Host 0's other guest reaches it on host 1 before it sends anything.
    let to_guest = eth(guest, peer_mac, ETHERTYPE_TEST, &payload(2, 100));
    assert!(peer.send(&to_guest));
    assert_eq!(recv_from(&mut dst, peer_mac), Some(to_guest));
}

/// The underlay drains far slower than the guest sends (a token bucket of
/// 8 kbit/s on host 0's underlay link): the tunnel's socket buffer fills and
/// the copies it cannot take are dropped and counted at once, never waited
/// for on the datapath thread. Every frame the switch hands the tunnel is
/// either sent or counted as dropped.
#[test]
fn a_full_underlay_drops_and_counts_instead_of_blocking() {
    let _cpus = test_kit::shared();
    let (h, va) = two_hosts("tb");
    assert_eq!(h.g[0].ping("10.78.0.2", 2), (2, 2));
    sh(&format!(
        "tc -n {} qdisc add dev {va} root tbf rate 8kbit burst 1600 limit 10000000",
        h.u[0].0
    ));
    // 300 echo requests of 1428-byte frames in about 0.6 s.
    let started = Instant::now();
    let out = Command::new("ip")
        .args([
            "netns", "exec", &h.g[0].0, "ping", "-q", "-c", "300", "-i", "0.002",
        ])
        .args(["-s", "1400", "-w", "3", "10.78.0.2"])
        .output()
        .expect("ping (iputils-ping)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("packets transmitted"), "{text}");
    // The daemon answers while the underlay is still congested.
    let t = h.d[0].counters("tunnel switch=br0 port=vx ");
    let port = h.d[0].counters("counters switch=br0 port=vx ");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let busy = counter(&t, "drop_tx_busy");
    assert!(busy > 0, "the socket buffer never filled: {t}\n{text}");
    assert_eq!(counter(&t, "drop_tx_error"), 0, "{t}");
    assert_eq!(
        counter(&t, "tx_packets") + busy,
        counter(&port, "tx_packets"),
        "sent + dropped == handed to the tunnel: {t} / {port}"
    );
}

/// A multi-queue TAP port (`multi_queue = true`: one queue per datapath thread).
fn mq_tap_port(name: &str, device: &str) -> String {
    tap_port(name, device, 10, 1500) + "multi_queue = true\n"
}

/// `q{i}_rx_packets` and `q{i}_tx_packets` of a counter line, for queues 0 and 1.
fn queue_counters(line: &str) -> [(u64, u64); 2] {
    [0, 1].map(|q| {
        (
            counter(line, &format!("q{q}_rx_packets")),
            counter(line, &format!("q{q}_tx_packets")),
        )
    })
}

/// Two multi-queue TAP ports on two datapath threads: each device has two
/// queues (`ip -d link`: numtxqueues 2, multi_queue). 16 UDP flows from a to
/// b: every datagram arrives; a's frames were read on both of its queues (the
/// kernel's `tun_select_queue` spreads the flows), b's written on both of its
/// queues (our sink's flow hash); the per-queue counters add up to each
/// port's totals exactly. The kernel's own frames (ARP, IPv6 neighbour
/// discovery) ride along, so only the sums are exact.
#[test]
fn multi_queue_tap_ports_use_every_queue() {
    let _cpus = test_kit::shared();
    let host = Ns::new("h");
    let (a, b) = (Ns::new("a"), Ns::new("b"));
    let (da, db) = (unique("qa"), unique("qb"));
    let dir = test_dir("mqtap");
    let d = Daemon::start(
        &host,
        &dir,
        &format!(
            "[daemon]\nrun_dir = \"run\"\ndatapath_threads = 2\n[[switch]]\nname = \"br0\"\n{}{}",
            mq_tap_port("a", &da),
            mq_tap_port("b", &db)
        ),
    );
    attach(&host, &da, &a, "10.79.0.1/24", 1500);
    attach(&host, &db, &b, "10.79.0.2/24", 1500);
    let queues = |ns: &Ns, dev: &str| {
        let out = Command::new("ip")
            .args(["-n", &ns.0, "-d", "link", "show", dev])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = queues(&a, &da);
    assert!(shown.contains("numtxqueues 2"), "{shown}");
    assert!(shown.contains("multi_queue"), "{shown}");
    assert_eq!(a.ping("10.79.0.2", 3), (3, 3));

    const FLOWS: u16 = 16;
    const PER_FLOW: usize = 50;
    let receiver = b.enter(|| std::net::UdpSocket::bind("10.79.0.2:6000").expect("bind"));
    receiver
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // Read while sending: 800 datagrams would overflow the socket's buffer.
    let counting = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        std::iter::from_fn(|| receiver.recv(&mut buf).ok()).count()
    });
    a.enter(|| {
        for flow in 0..FLOWS {
            let s = std::net::UdpSocket::bind(("10.79.0.1", 7000 + flow)).expect("bind");
            for n in 0..PER_FLOW {
                s.send_to(&[flow as u8, n as u8], "10.79.0.2:6000")
                    .expect("send");
                // Paced: the test counts datagrams, not the TAP queue's depth.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    });
    let got = counting.join().expect("receiver");
    assert_eq!(
        got,
        usize::from(FLOWS) * PER_FLOW,
        "datagrams received\n{}\n{}",
        d.counters("counters switch=br0 port=a "),
        d.counters("counters switch=br0 port=b ")
    );

    for port in ["a", "b"] {
        let line = d.counters(&format!("counters switch=br0 port={port} "));
        let q = queue_counters(&line);
        assert_eq!(
            q[0].0 + q[1].0,
            counter(&line, "rx_packets"),
            "rx per queue adds up: {line}"
        );
        assert_eq!(
            q[0].1 + q[1].1,
            counter(&line, "tx_packets"),
            "tx per queue adds up: {line}"
        );
        match port {
            // The kernel spread a's flows over both of its queues.
            "a" => assert!(q[0].0 > 0 && q[1].0 > 0, "a read on one queue only: {line}"),
            // The sink spread them over both queues of b.
            _ => assert!(
                q[0].1 > 0 && q[1].1 > 0,
                "b written on one queue only: {line}"
            ),
        }
    }
}
