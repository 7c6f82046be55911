//! The kernel as the reference for our wire layer, live: needs root, network
//! namespaces, /dev/net/tun and ethtool, and fails loudly without them.
//!
//! 1. Input: a kernel TCP/UDP sender in namespace A whose only link is a TAP
//!    (`tsa`) with every offload on (TUNSETOFFLOAD CSUM|TSO4|TSO6|TSO_ECN|USO4|USO6),
//!    read by this test with the 12-byte virtio-net header the kernel writes. A
//!    relay thread hands each frame, header and all, to a TAP in namespace B
//!    (`tsb`, the receiver) and B's answers back, so TCP runs end to end and
//!    grows its 64 KiB TSO frames; for the CWR case the relay marks one data
//!    packet CE, B echoes ECE, and A's next frame carries CWR.
//! 2. Reference: the same input written with its header into a TAP (`tgc`) of
//!    namespace C, bridged to a veth (`vc`) with tx checksum, TSO, GSO and tx VLAN
//!    offload off: the kernel segments in software (`validate_xmit_skb` ->
//!    `skb_gso_segment`, or `skb_checksum_help`) and an AF_PACKET socket takes
//!    the frames as `vc` sends them (PACKET_OUTGOING: on the receiving side the
//!    kernel would strip the VLAN tag into metadata). A marker frame written after
//!    each input ends its segments.
//! 3. Every captured input is run through `segment` and compared byte for byte.
//!    With `OFFLOAD_WRITE_FIXTURES=1` the chosen cases are written to
//!    `tests/fixtures/` for `kernel_fixtures.rs`.

mod common;

use common::{assert_same, ours, write_fixture, Fixture, CASES};
use fabric_offload::headers::{IpVersion, L4Proto, Layout};
use fabric_offload::{csum, Offload, VnetHdr, VNET_HDR_LEN};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use test_kit::netns::vnet_tap::{ALL_OFFLOADS, VNET_TAP_MTU_READ};
use test_kit::netns::{veth_pair, Capture, Netns, Veth, VnetTap};

/// Ethertype of the marker frame (IEEE 802 local experimental).
const MARKER_ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// Relays frames between the sender's TAP and the receiver's, recording what
/// the sender wrote.
struct Relay {
    stop: Arc<AtomicBool>,
    mark_ce: Arc<AtomicBool>,
    /// While set, B's frames (the ACKs) wait in the relay, in order.
    hold_acks: Arc<AtomicBool>,
    recorded: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<()>>,
}

/// Sets CE on an ECT IPv4 or IPv6 packet carrying TCP data; true if it did.
fn mark_ce(frame: &mut [u8]) -> bool {
    let Ok(l) = Layout::parse(frame) else {
        return false;
    };
    if l.proto != L4Proto::Tcp || frame.len() <= l.hdr_len {
        return false;
    }
    match l.ip {
        IpVersion::V4 => {
            if frame[l.l3 + 1] & 3 == 0 {
                return false;
            }
            frame[l.l3 + 1] |= 3;
            frame[l.l3 + 10..l.l3 + 12].fill(0);
            let c = csum::checksum(&frame[l.l3..l.l4]);
            frame[l.l3 + 10..l.l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        IpVersion::V6 => {
            if (frame[l.l3 + 1] >> 4) & 3 == 0 {
                return false;
            }
            frame[l.l3 + 1] |= 3 << 4;
        }
    }
    true
}

impl Relay {
    fn start(a: Arc<VnetTap>, b: Arc<VnetTap>) -> Relay {
        let stop = Arc::new(AtomicBool::new(false));
        let mark = Arc::new(AtomicBool::new(false));
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let hold = Arc::new(AtomicBool::new(false));
        let (s, m, r, h) = (stop.clone(), mark.clone(), recorded.clone(), hold.clone());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; VNET_TAP_MTU_READ];
            let mut held: Vec<Vec<u8>> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let mut idle = true;
                if let Some(n) = a.read_frame(&mut buf, Duration::ZERO) {
                    idle = false;
                    r.lock().unwrap().push(buf[..n].to_vec());
                    if m.load(Ordering::Relaxed) && mark_ce(&mut buf[VNET_HDR_LEN..n]) {
                        m.store(false, Ordering::Relaxed);
                    }
                    // B may refuse nothing the kernel wrote; a full queue drops, as a wire would.
                    let _ = b.write_frame(&buf[..n]);
                }
                if let Some(n) = b.read_frame(&mut buf, Duration::ZERO) {
                    idle = false;
                    held.push(buf[..n].to_vec());
                }
                if !h.load(Ordering::Relaxed) {
                    for f in held.drain(..) {
                        let _ = a.write_frame(&f);
                    }
                }
                if idle {
                    thread::sleep(Duration::from_micros(200));
                }
            }
        });
        Relay {
            stop,
            mark_ce: mark,
            hold_acks: hold,
            recorded,
            thread: Some(thread),
        }
    }

    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.recorded.lock().unwrap())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Namespaces A (sender) and B (receiver) joined by the relay.
struct Peers {
    // Field order is drop order: the relay stops before its TAPs' namespaces go.
    relay: Relay,
    a: Netns,
    b: Netns,
}

fn peers() -> Peers {
    let a = Netns::new("gsa");
    let b = Netns::new("gsb");
    let ta = Arc::new(VnetTap::open(&a, "tsa", ALL_OFFLOADS));
    let tb = Arc::new(VnetTap::open(&b, "tsb", ALL_OFFLOADS));
    for (ns, tap, host) in [(&a, "tsa", "1"), (&b, "tsb", "2")] {
        ns.sh_ok("sysctl -qw net.ipv4.tcp_ecn=1");
        ns.addr(tap, &format!("10.9.0.{host}/24"));
        ns.ip(&[
            "addr",
            "add",
            &format!("fd00:9::{host}/64"),
            "dev",
            tap,
            "nodad",
        ]);
    }
    let relay = Relay::start(ta, tb);
    Peers { relay, a, b }
}

/// The kernel's software GSO and checksum help, behind a TAP.
struct KernelGso {
    // Field order is drop order: the TAP and capture before the links and namespaces.
    tap: VnetTap,
    capture: Capture,
    _veth: Veth,
    _c: Netns,
    _d: Netns,
    marker: u32,
}

impl KernelGso {
    fn new() -> KernelGso {
        let c = Netns::new("gsc");
        let d = Netns::new("gsd");
        for ns in [&c, &d] {
            ns.sh_ok(
                "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
            );
        }
        let veth = veth_pair((&c, "vc"), (&d, "vd"));
        c.offloads_off("vc");
        c.run_ok("ethtool", &["-K", "vc", "txvlan", "off"]);
        d.offloads_off("vd");
        c.bridge("br0");
        let tap = VnetTap::open(&c, "tgc", 0);
        c.enslave("tgc", "br0");
        c.enslave("vc", "br0");
        c.up("vc");
        d.up("vd");
        let capture = Capture::open(&c, "vc");
        let mut k = KernelGso {
            tap,
            capture,
            _veth: veth,
            _c: c,
            _d: d,
            marker: 0,
        };
        // The bridge forwards once its ports are up: wait for a marker to pass.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if k.try_marker(&[0; 6], Duration::from_millis(200)).is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no frame crosses the bridge to vc"
            );
        }
        k
    }

    fn marker_frame(n: u32) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
        f.extend_from_slice(&MARKER_ETHERTYPE);
        f.extend_from_slice(&n.to_be_bytes());
        f.resize(VNET_HDR_LEN + 60, 0);
        f
    }

    fn is_marker(frame: &[u8], n: u32) -> bool {
        frame.len() >= 18 && frame[12..14] == MARKER_ETHERTYPE && frame[14..18] == n.to_be_bytes()
    }

    /// Writes a marker and returns the frames from source MAC `src` that `vc`
    /// sent before it (others are the namespace's own chatter: IGMP of the bridge).
    fn try_marker(&mut self, src: &[u8], patience: Duration) -> Option<Vec<Vec<u8>>> {
        self.marker += 1;
        let n = self.marker;
        self.tap
            .write_frame(&Self::marker_frame(n))
            .expect("write marker");
        let deadline = Instant::now() + patience;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self.capture.next_frame(left)?;
            if !f.outgoing {
                continue;
            }
            if Self::is_marker(&f.data, n) {
                return Some(out);
            }
            assert!(
                !f.truncated,
                "capture truncated a {} byte frame",
                f.data.len()
            );
            if f.data.get(6..12) == Some(src) {
                out.push(f.data);
            }
        }
    }

    /// What the kernel puts on the wire for `input` (vnet header + frame).
    fn segment(&mut self, input: &[u8]) -> Vec<Vec<u8>> {
        let n = self
            .tap
            .write_frame(input)
            .expect("the kernel refused a frame it wrote");
        assert_eq!(n, input.len());
        let src = &input[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12];
        self.try_marker(src, Duration::from_secs(5))
            .expect("the marker frame never came out of vc")
    }
}

/// `input` (vnet header + untagged frame) as `tun_put_user` hands a frame whose
/// skb carries VLAN 7 in its metadata: the 802.1Q tag written after the MAC
/// addresses and `csum_start` moved by 4 (`virtio_net_hdr_from_skb(.., vlan_hlen)`),
/// `hdr_len` left as it was. (This kernel has no CONFIG_VLAN_8021Q, so no VLAN
/// device can make such a frame; the tagging is the TAP driver's rule.)
fn tagged(input: &[u8]) -> Vec<u8> {
    let mut hdr = VnetHdr::read(input).unwrap();
    if hdr.flags & 1 != 0 {
        hdr.csum_start += 4;
    }
    let frame = &input[VNET_HDR_LEN..];
    let mut out = hdr.to_bytes().to_vec();
    out.extend_from_slice(&frame[..12]);
    out.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    out.extend_from_slice(&frame[12..]);
    out
}

/// Parsed view of a recorded input for choosing cases.
struct Seen {
    input: Vec<u8>,
    hdr: VnetHdr,
    off: Offload,
    layout: Layout,
}

impl Seen {
    fn frame(&self) -> &[u8] {
        &self.input[VNET_HDR_LEN..]
    }
    /// The TCP flags byte; 0 for UDP.
    fn tcp_flags(&self) -> u8 {
        match self.layout.proto {
            L4Proto::Tcp => self.frame()[self.layout.l4 + 13],
            L4Proto::Udp => 0,
        }
    }
    fn segments(&self) -> usize {
        self.off.gso.map_or(1, |g| g.segments(self.frame().len()))
    }
    fn tagged(&self) -> bool {
        self.layout.l3 != 14
    }
}

fn seen(input: Vec<u8>) -> Option<Seen> {
    let hdr = VnetHdr::read(&input).ok()?;
    let frame = &input[VNET_HDR_LEN..];
    let layout = Layout::parse(frame).ok()?;
    let off = Offload::parse(&hdr, frame, frame.len()).ok()?;
    Some(Seen {
        input,
        hdr,
        off,
        layout,
    })
}

/// A TCP stream from A to `to` on B: a 100-byte write (a NEEDS_CSUM-only
/// frame), 2 x 256 KiB (TSO frames up to 64 KiB; with `ce` one packet of the
/// second half is marked CE, so a CWR frame follows), then 3000 bytes and the
/// FIN while the relay holds B's ACKs (a TSO frame ending in FIN).
fn tcp_stream(p: &Peers, to: SocketAddr, ce: bool) {
    let listener = p.b.enter(|| TcpListener::bind(to).expect("listen in B"));
    let reader = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            match s.read(&mut buf).expect("read in B") {
                0 => return total,
                n => total += n,
            }
        }
    });
    let mut s = p.a.enter(|| {
        TcpStream::connect_timeout(&to, Duration::from_secs(10)).expect("connect from A")
    });
    s.write_all(&[1u8; 100]).unwrap();
    thread::sleep(Duration::from_millis(50));
    let bulk = vec![7u8; 256 << 10];
    s.write_all(&bulk).unwrap();
    if ce {
        p.relay.mark_ce.store(true, Ordering::Relaxed);
    }
    // With B's ACKs held, A's window fills and the rest queues: the FIN then
    // rides on the queue's unsent tail skb, which leaves, after the release, as
    // a TSO frame ending in FIN. The send buffer takes it all without blocking.
    set_int_opt(&s, libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20);
    p.relay.hold_acks.store(true, Ordering::Relaxed);
    s.write_all(&bulk).unwrap();
    s.write_all(&[9u8; 3000]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    thread::sleep(Duration::from_millis(20));
    p.relay.hold_acks.store(false, Ordering::Relaxed);
    let total = reader.join().expect("reader");
    assert_eq!(total, 100 + 2 * (256 << 10) + 3000, "bytes received in B");
    assert!(
        !p.relay.mark_ce.load(Ordering::Relaxed),
        "no packet was marked CE"
    );
}

fn set_int_opt(s: &impl AsRawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: setsockopt with an int option value on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &value as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
}

/// One UDP_SEGMENT send from A: 4500 bytes as 1000-byte datagrams.
fn udp_gso_send(p: &Peers, from: SocketAddr, to: SocketAddr) {
    let sock = p.a.enter(|| UdpSocket::bind(from).expect("bind in A"));
    set_int_opt(&sock, libc::SOL_UDP, libc::UDP_SEGMENT, 1000);
    let payload: Vec<u8> = (0..4500u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(sock.send_to(&payload, to).expect("send"), 4500);
    thread::sleep(Duration::from_millis(100));
}

#[test]
fn segmentation_and_checksums_match_the_kernel_live() {
    test_kit::netns::require_tool("ethtool", "ethtool");
    let p = peers();
    let mut kernel = KernelGso::new();
    // Let ND and ARP settle so the streams start clean.
    thread::sleep(Duration::from_millis(200));
    tcp_stream(&p, "10.9.0.2:5001".parse().unwrap(), false);
    tcp_stream(&p, "[fd00:9::2]:5003".parse().unwrap(), false);
    // The CWR stream with TSO frames of at most 8000 bytes, so its fixtures stay
    // small (a socket takes the device's gso_max_size when it connects).
    p.a.ip(&["link", "set", "tsa", "gso_max_size", "8000"]);
    tcp_stream(&p, "10.9.0.2:5005".parse().unwrap(), true);
    udp_gso_send(
        &p,
        "10.9.0.1:0".parse().unwrap(),
        "10.9.0.2:5002".parse().unwrap(),
    );
    udp_gso_send(
        &p,
        "[fd00:9::1]:0".parse().unwrap(),
        "[fd00:9::2]:5002".parse().unwrap(),
    );
    // A stream's last frame is a TSO one with FIN nearly always (see
    // tcp_stream); when timing made it a lone segment in both IPv4 streams,
    // more streams until one does.
    let gso_fin_v4 = |r: &[Vec<u8>]| {
        r.iter().filter_map(|f| seen(f.clone())).any(|s| {
            s.off.gso.is_some() && s.layout.ip == IpVersion::V4 && s.tcp_flags() & 0x01 != 0
        })
    };
    for port in 5006..5009 {
        if gso_fin_v4(&p.relay.recorded.lock().unwrap()) {
            break;
        }
        tcp_stream(&p, SocketAddr::from(([10, 9, 0, 2], port)), false);
    }
    let recorded = p.relay.take();
    drop(p);

    let mut inputs: Vec<Seen> = recorded
        .into_iter()
        .filter_map(seen)
        .filter(|s| s.off.csum.is_some() || s.off.gso.is_some())
        .collect();
    // Every IPv4 TCP frame once more behind an 802.1Q tag.
    let tagged_inputs: Vec<Seen> = inputs
        .iter()
        .filter(|s| s.layout.ip == IpVersion::V4 && s.layout.proto == L4Proto::Tcp)
        .filter_map(|s| seen(tagged(&s.input)))
        .collect();
    assert!(!tagged_inputs.is_empty());
    inputs.extend(tagged_inputs);
    let mut compared = 0;
    let mut gso_frames = 0;
    let mut largest = 0;
    for s in &inputs {
        let k = kernel.segment(&s.input);
        let o = ours(&s.input).unwrap_or_else(|e| panic!("we refused {:?}: {e}", s.hdr));
        if o.len() != k.len() {
            for f in &k {
                eprintln!("kernel frame: {}", common::hex(&f[..f.len().min(80)]));
            }
        }
        assert_same("live", &s.input, &o, &k);
        compared += 1;
        if s.off.gso.is_some() {
            gso_frames += 1;
            largest = largest.max(s.frame().len());
        }
    }
    eprintln!(
        "kernel_capture: {compared} frames compared, {gso_frames} GSO, largest {largest} bytes"
    );
    assert!(
        largest > 60_000,
        "no 64 KiB TSO frame seen (largest {largest})"
    );
    assert!(gso_frames >= 100, "only {gso_frames} GSO frames compared");

    let pick = |name: &str, pred: &dyn Fn(&Seen) -> bool| -> &Seen {
        // The smallest match: fixtures stay small.
        inputs
            .iter()
            .filter(|s| pred(s))
            .min_by_key(|s| s.input.len())
            .unwrap_or_else(|| panic!("no captured frame for case {name}"))
    };
    let tso = |s: &Seen, v: IpVersion| {
        s.layout.proto == L4Proto::Tcp
            && s.layout.ip == v
            && s.off.gso.is_some()
            && (3..=6).contains(&s.segments())
            && s.tcp_flags() & 0x81 == 0
    };
    let udp = |s: &Seen, v: IpVersion| {
        s.layout.proto == L4Proto::Udp && s.layout.ip == v && s.off.gso.is_some()
    };
    let csum_only = |s: &Seen, v: IpVersion| {
        s.layout.proto == L4Proto::Tcp
            && s.layout.ip == v
            && s.off.gso.is_none()
            && s.hdr.gso_type == 0
            && s.frame().len() - s.layout.hdr_len == 100
    };
    let chosen: Vec<(&str, &Seen)> = vec![
        (
            "ipv4_tcp_tso",
            pick("ipv4_tcp_tso", &|s| tso(s, IpVersion::V4) && !s.tagged()),
        ),
        (
            "ipv4_tcp_tso_vlan",
            pick("ipv4_tcp_tso_vlan", &|s| {
                tso(s, IpVersion::V4) && s.tagged()
            }),
        ),
        (
            "ipv6_tcp_tso",
            pick("ipv6_tcp_tso", &|s| tso(s, IpVersion::V6)),
        ),
        (
            "ipv4_tcp_tso_fin",
            pick("ipv4_tcp_tso_fin", &|s| {
                s.off.gso.is_some()
                    && s.layout.ip == IpVersion::V4
                    && !s.tagged()
                    && s.tcp_flags() & 0x01 != 0
            }),
        ),
        (
            "ipv4_tcp_tso_psh",
            pick("ipv4_tcp_tso_psh", &|s| {
                s.off.gso.is_some()
                    && s.layout.ip == IpVersion::V4
                    && !s.tagged()
                    && s.tcp_flags() & 0x89 == 0x08
            }),
        ),
        (
            "ipv4_tcp_tso_cwr_ecn",
            pick("ipv4_tcp_tso_cwr_ecn", &|s| {
                s.off.gso.is_some_and(|g| g.ecn) && s.tcp_flags() & 0x80 != 0
            }),
        ),
        (
            "ipv4_udp_uso",
            pick("ipv4_udp_uso", &|s| udp(s, IpVersion::V4)),
        ),
        (
            "ipv6_udp_uso",
            pick("ipv6_udp_uso", &|s| udp(s, IpVersion::V6)),
        ),
        (
            "ipv4_tcp_csum_only",
            pick("ipv4_tcp_csum_only", &|s| {
                csum_only(s, IpVersion::V4) && !s.tagged()
            }),
        ),
        (
            "ipv6_tcp_csum_only",
            pick("ipv6_tcp_csum_only", &|s| csum_only(s, IpVersion::V6)),
        ),
    ];
    assert_eq!(chosen.len(), CASES.len());
    let write = std::env::var_os("OFFLOAD_WRITE_FIXTURES").is_some();
    for ((name, s), (case, what)) in chosen.iter().zip(CASES) {
        assert_eq!(*name, case);
        let k = kernel.segment(&s.input);
        assert_same(name, &s.input, &ours(&s.input).unwrap(), &k);
        if write {
            let comment = format!(
                "{what}\nmade by offload/tests/kernel_capture.rs (OFFLOAD_WRITE_FIXTURES=1), kernel {}\nvnet hdr {:?}",
                kernel_release(),
                s.hdr
            );
            write_fixture(
                name,
                &comment,
                &Fixture {
                    input: s.input.clone(),
                    kernel: k,
                },
            );
        }
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
