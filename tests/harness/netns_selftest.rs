//! Self-test of the network-namespace harness (`test-kit/src/netns`): two namespaces
//! on a veth pair (ping, content-checked TCP both ways, an AF_PACKET capture of the
//! ICMP), a kernel VXLAN overlay across that underlay (ping and TCP through it; the
//! underlay shows UDP/4789 with RFC 7348 headers carrying the VNI, and with offloads
//! off, wire-sized frames with complete UDP checksums), and cleanup: on
//! drop, on panic, and of a crashed run's leftovers.
//!
//! Needs root, iproute2 and iputils-ping (`scripts/install-test-deps.sh`); fails,
//! never skips, without them.

use test_kit::netns as netns_support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use netns_support::capture::{icmp_echo, vxlan, ETHERTYPE_IPV4, VXLAN_PORT};
use netns_support::traffic::parse_ping_summary;
use netns_support::{
    host_ip, host_links, in_netns, move_link, netns_names, own_host_links, ping, sweep_stale,
    tcp_transfer, veth_pair, Capture, Netns, HOST,
};

const WAIT: Duration = Duration::from_secs(2);
const MIB: usize = 1 << 20;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `ip netns list` and the host's `ip link` name none of `netns` / `links`.
fn assert_gone(netns: &[String], links: &[String]) {
    let listed = host_ip(&["netns", "list"]);
    let listed: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for n in netns {
        assert!(
            !listed.contains(&n.as_str()),
            "namespace {n} still listed: {listed:?}"
        );
    }
    let host = host_links();
    for l in links {
        assert!(!host.contains(l), "host link {l} still there: {host:?}");
    }
}

/// Two namespaces on a veth pair: ping and TCP both ways, and a capture of the ICMP.
#[test]
fn veth_ping_tcp_and_capture() {
    let a = Netns::new("a");
    let b = Netns::new("b");
    let names = vec![a.name().to_string(), b.name().to_string()];
    {
        let _veth = veth_pair((&a, "va"), (&b, "vb"));
        a.addr("va", "10.201.0.1/24");
        b.addr("vb", "10.201.0.2/24");
        a.up("va");
        b.up("vb");

        assert_eq!(ping(&a, "10.201.0.2", 5, WAIT), (5, 5), "ping a -> b");
        assert_eq!(ping(&b, "10.201.0.1", 5, WAIT), (5, 5), "ping b -> a");

        tcp_transfer(&b, &a, "10.201.0.2", MIB).expect("TCP a -> b");
        tcp_transfer(&a, &b, "10.201.0.1", MIB).expect("TCP b -> a");

        // A namespace without the route sees nothing: the transfer fails, with a reason.
        let err = tcp_transfer(&b, &a, "10.201.9.9", 1000).unwrap_err();
        assert!(err.contains("10.201.9.9"), "{err}");

        // No one at .9: ARP goes unanswered, the summary says so (no hang, no panic).
        let (sent, received) = ping(&a, "10.201.0.9", 2, Duration::from_millis(300));
        assert_eq!((sent, received), (2, 0));

        let cap = Capture::open(&b, "vb");
        assert_eq!(ping(&a, "10.201.0.2", 3, WAIT), (3, 3));
        let frames = cap.collect_frames(|f| icmp_echo(&f.data).is_some(), 6, WAIT);
        assert_eq!(frames.len(), 6, "3 requests and 3 replies on vb");
        let mut seqs = (Vec::new(), Vec::new());
        for f in &frames {
            let e = icmp_echo(&f.data).unwrap();
            assert!(f.data.len() >= 14 + 20 + 8 + 56, "{} bytes", f.data.len());
            if e.reply {
                assert!(f.outgoing, "replies leave b");
                assert_eq!((e.src, e.dst), (ip("10.201.0.2"), ip("10.201.0.1")));
                seqs.1.push(e.seq);
            } else {
                assert!(!f.outgoing, "requests come into b");
                assert_eq!((e.src, e.dst), (ip("10.201.0.1"), ip("10.201.0.2")));
                seqs.0.push(e.seq);
            }
            // Source MAC: the sender's end of the veth.
            let src_mac = if f.outgoing { b.mac("vb") } else { a.mac("va") };
            assert_eq!(f.data[6..12], src_mac);
        }
        assert_eq!(seqs.0, [1, 2, 3]);
        assert_eq!(seqs.1, [1, 2, 3]);
        // Nothing more of the ping (other traffic, IPv6 ND or ARP, may come and go).
        let more = cap.collect(|f| icmp_echo(f).is_some(), 1, Duration::from_millis(50));
        assert!(more.is_empty(), "an extra echo: {more:02x?}");
    }
    drop(a);
    drop(b);
    assert_gone(&names, &[]);
}

/// A kernel VXLAN overlay over the veth underlay: a bridge in `a` (VXLAN device as its
/// port), the address straight on the VXLAN device in `b`.
#[test]
fn kernel_vxlan_over_veth() {
    const VNI: u32 = 0x12_34_56;
    let a = Netns::new("a");
    let b = Netns::new("b");
    let names = vec![a.name().to_string(), b.name().to_string()];
    {
        let _veth = veth_pair((&a, "ua"), (&b, "ub"));
        for (ns, dev, addr) in [(&a, "ua", "10.202.0.1/24"), (&b, "ub", "10.202.0.2/24")] {
            ns.addr(dev, addr);
            // Room for the 50 bytes of encapsulation around 1500-byte overlay frames.
            ns.mtu(dev, 1600);
            ns.up(dev);
        }
        a.vxlan_device("vx0", VNI, "10.202.0.1", "10.202.0.2", VXLAN_PORT);
        b.vxlan_device("vx0", VNI, "10.202.0.2", "10.202.0.1", VXLAN_PORT);
        a.bridge("br0");
        a.enslave("vx0", "br0");
        a.addr("br0", "10.203.0.1/24");
        a.up("vx0");
        b.addr("vx0", "10.203.0.2/24");
        b.up("vx0");
        let details = a.ip(&["-d", "link", "show", "vx0"]);
        assert!(
            details.contains(&format!("vxlan id {VNI}")) && details.contains("dstport 4789"),
            "{details}"
        );

        let cap = Capture::open(&b, "ub");
        assert_eq!(
            ping(&a, "10.203.0.2", 5, WAIT),
            (5, 5),
            "overlay ping a -> b"
        );
        let frames = cap.collect_frames(
            |f| {
                vxlan(&f.data, VXLAN_PORT)
                    .and_then(|v| icmp_echo(v.inner))
                    .is_some()
            },
            10,
            WAIT,
        );
        assert_eq!(frames.len(), 10, "5 encapsulated requests and 5 replies");
        let (mut requests, mut replies) = (0, 0);
        for f in &frames {
            let v = vxlan(&f.data, VXLAN_PORT).unwrap();
            assert_eq!(v.flags, 0x08, "header {:02x?}", v.header);
            assert!(v.header_valid(), "header {:02x?}", v.header);
            assert_eq!(v.vni, VNI);
            let e = icmp_echo(v.inner).unwrap();
            let (outer_src, outer_dst) = (v.outer.ip.src, v.outer.ip.dst);
            if f.outgoing {
                assert!(e.reply);
                assert_eq!((outer_src, outer_dst), (ip("10.202.0.2"), ip("10.202.0.1")));
                assert_eq!((e.src, e.dst), (ip("10.203.0.2"), ip("10.203.0.1")));
                replies += 1;
            } else {
                assert!(!e.reply);
                assert_eq!((outer_src, outer_dst), (ip("10.202.0.1"), ip("10.202.0.2")));
                assert_eq!((e.src, e.dst), (ip("10.203.0.1"), ip("10.203.0.2")));
                requests += 1;
            }
            // The inner frame is Ethernet: b's VXLAN device MAC on one side.
            let inner_b = if f.outgoing {
                &v.inner[6..12]
            } else {
                &v.inner[0..6]
            };
            assert_eq!(inner_b, b.mac("vx0"));
            assert_eq!(
                u16::from_be_bytes([v.inner[12], v.inner[13]]),
                ETHERTYPE_IPV4
            );
            // Source port: the kernel's flow hash, in the ephemeral range.
            assert!(v.outer.src_port >= 1024, "src port {}", v.outer.src_port);
        }
        assert_eq!((requests, replies), (5, 5));
        drop(cap);

        assert_eq!(
            ping(&b, "10.203.0.1", 5, WAIT),
            (5, 5),
            "overlay ping b -> a"
        );
        tcp_transfer(&a, &b, "10.203.0.1", MIB).expect("TCP over VXLAN b -> a");
        tcp_transfer(&b, &a, "10.203.0.2", MIB).expect("TCP over VXLAN a -> b");

        // With the underlay's offloads off, what crosses it is wire-shaped: frames no
        // bigger than its MTU, every UDP checksum complete.
        a.offloads_off("ua");
        b.offloads_off("ub");
        let cap = Capture::open(&b, "ub");
        tcp_transfer(&b, &a, "10.203.0.2", MIB / 4).expect("TCP over VXLAN, no offloads");
        let frames = cap.collect_frames(
            |f| vxlan(&f.data, VXLAN_PORT).is_some(),
            usize::MAX,
            Duration::from_millis(300),
        );
        assert!(
            frames.len() > 150,
            "{} VXLAN frames for 256 KiB",
            frames.len()
        );
        assert!(frames.iter().any(|f| f.outgoing) && frames.iter().any(|f| !f.outgoing));
        for f in &frames {
            let v = vxlan(&f.data, VXLAN_PORT).unwrap();
            assert!(v.header_valid() && v.vni == VNI, "header {:02x?}", v.header);
            assert!(f.data.len() <= 14 + 1600, "{}-byte frame", f.data.len());
            assert!(
                v.outer.checksum_ok(),
                "UDP checksum of a {}-byte frame",
                f.data.len()
            );
        }
    }
    drop(a);
    drop(b);
    assert_gone(&names, &[]);
}

/// Drop removes the namespace, kills what runs in it, deletes links in it (and the
/// host ends of their veth pairs, and moved-in TAPs); a panicking test cleans up too.
#[test]
fn cleanup_on_drop_and_on_panic() {
    let pid = std::process::id();
    let host_end = format!("fh{pid}");
    let tap = format!("ft{pid}");
    let ns = Netns::new("c");
    let name = ns.name().to_string();
    assert!(name.len() <= 15 && name.starts_with("fab-c-"), "{name}");
    let lo = ns.ip(&["-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "lo is up: {lo}");

    let veth = veth_pair((HOST, host_end.as_str()), (&ns, "eth0"));
    assert!(host_links().contains(&host_end));
    assert_eq!(own_host_links(), std::slice::from_ref(&host_end));
    // A TAP made in the host, as the daemon makes them; tagged so a sweep would find
    // it should this test die before moving it.
    host_ip(&["tuntap", "add", "mode", "tap", "name", &tap]);
    host_ip(&["link", "set", &tap, "alias", &format!("fabns:{pid}")]);
    move_link(&tap, &ns);
    assert!(!host_links().contains(&tap));
    ns.vxlan_device("vx9", 9, "10.204.0.1", "10.204.0.2", VXLAN_PORT);
    ns.bridge("br9");
    ns.enslave("vx9", "br9");
    let mut links = ns.links();
    links.sort();
    assert_eq!(links, ["br9", "eth0", &tap, "lo", "vx9"]);

    // A process the test forgot (no guard), and one it kept.
    let mut stray = ns.command("sleep").arg("60").spawn().unwrap();
    let mut kept = ns.spawn("sleep", &["60"]);
    let start = Instant::now();
    while host_ip(&["netns", "pids", &name])
        .split_whitespace()
        .count()
        < 2
    {
        assert!(start.elapsed() < WAIT, "sleeps never showed in {name}");
    }
    // A socket inside, as a test would hold one.
    let sock = in_netns(&ns, || std::net::UdpSocket::bind("127.0.0.1:0")).unwrap();

    drop(ns);
    assert!(kept.try_wait().is_some() || kept.wait_timeout(WAIT).is_some());
    let st = stray.wait().unwrap();
    assert!(!st.success(), "stray sleep was killed: {st}");
    drop(sock);
    // The veth guard outlives the namespace: nothing left for it to do.
    drop(veth);
    assert_gone(
        std::slice::from_ref(&name),
        &[host_end.clone(), tap.clone()],
    );
    assert!(own_host_links().is_empty());

    // A test that panics with a namespace and a host veth end in scope.
    let leaked = std::sync::Mutex::new(String::new());
    let r = std::panic::catch_unwind(|| {
        let ns = Netns::new("p");
        *leaked.lock().unwrap() = ns.name().to_string();
        let _veth = veth_pair((HOST, host_end.as_str()), (&ns, "eth0"));
        let _sleep = ns.spawn("sleep", &["60"]);
        panic!("test failure inside the namespace");
    });
    assert!(r.is_err());
    let leaked = leaked.into_inner().unwrap();
    assert!(leaked.starts_with("fab-p-"));
    assert_gone(&[leaked], &[host_end]);
    assert!(own_host_links().is_empty());
}

/// A crashed run's namespace (with a process still in it) and tagged host veth are
/// removed by the sweep every process does before its first namespace.
#[test]
fn leftovers_of_a_crashed_run_are_swept() {
    // A pid that is gone: a child that has exited and been reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    let dead = child.id();
    let stale = format!("fab-old-{dead}-0");
    let (h1, h2) = (format!("fo{dead}a"), format!("fo{dead}b"));
    // Start from a clean slate should a previous run of this test have died.
    let _ = netns_support::ip_raw(&["netns", "del", &stale]);
    let _ = netns_support::ip_raw(&["link", "del", &h1]);
    host_ip(&["netns", "add", &stale]);
    host_ip(&[
        "link", "add", &h1, "type", "veth", "peer", "name", &h2, "netns", &stale,
    ]);
    host_ip(&["link", "set", &h1, "alias", &format!("fabns:{dead}")]);
    let mut inside = std::process::Command::new("ip")
        .args(["netns", "exec", &stale, "sleep", "60"])
        .spawn()
        .unwrap();
    let start = Instant::now();
    while host_ip(&["netns", "pids", &stale]).trim().is_empty() {
        assert!(start.elapsed() < WAIT, "sleep never showed in {stale}");
    }
    assert!(netns_names().contains(&stale));
    assert!(host_links().contains(&h1));

    sweep_stale();

    assert!(!netns_names().contains(&stale), "{stale} swept");
    assert!(!inside.wait().unwrap().success(), "its process killed");
    assert_gone(&[stale], &[h1]);

    // A live process's namespace (ours) is left alone.
    let mine = Netns::new("live");
    sweep_stale();
    assert!(netns_names().contains(&mine.name().to_string()));
    assert!(
        mine.name().len() <= 15 && mine.name().starts_with("fab-l"),
        "prefix cut to fit: {}",
        mine.name()
    );
}

#[test]
fn ping_summary_parser() {
    let text =
        "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\n--- 10.0.0.2 ping statistics ---\n\
                5 packets transmitted, 4 received, 20% packet loss, time 803ms\n";
    assert_eq!(parse_ping_summary(text), Some((5, 4)));
    let text = "3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2040ms";
    assert_eq!(parse_ping_summary(text), Some((3, 0)));
    assert_eq!(
        parse_ping_summary("ping: connect: Network is unreachable"),
        None
    );
}
