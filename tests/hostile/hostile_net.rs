//! The network datapath against hostile guests, in process: the test plays a
//! guest driver that breaks the rules on purpose (ring indices, descriptor
//! chains, racing writes into its own buffers) against the real daemon, and
//! checks the daemon, the other ports and the guest itself stay whole.
//!
//! The tests of this file run one at a time (the kit's [`serial`] lock, which
//! every test of this binary holds): some measure the CPU time of the datapath
//! threads, which must all belong to the test's daemon.

use test_kit::frontend as support;
use test_kit::serial;

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use support::counters::field_in;
use support::fabric::{Fabric, WAIT};
use support::frames::{payload, ETHERTYPE_TEST};
use support::virtio_net::VNET_HDR_LEN;
use support::{eth, mac, GuestNic, RawDesc, BROADCAST};
use vhost::VhostBackend;
use vswitch::DropReason;

const ACCESS10: &str = "{ mode = \"access\", tag = 10 }";
const RX: usize = 0;
const TX: usize = 1;
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(200);
const NEXT: u16 = 1;
const INDIRECT: u16 = 4;
/// The harness's default queue size (`NicOptions`).
const QUEUE_SIZE: u16 = 256;

fn frame(dst: [u8; 6], src: [u8; 6], seq: u32) -> Vec<u8> {
    eth(dst, src, ETHERTYPE_TEST, &payload(seq, 100))
}

/// CPU time (user + system) the threads whose name `named` accepts have
/// used so far, from /proc/self/task/*/stat, in clock ticks (1/100 s).
fn cpu_ticks(named: &impl Fn(&str) -> bool) -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // "tid (comm) state ...": comm may hold spaces, so split at the last ')'.
        let (head, rest) = stat.rsplit_once(')').expect("stat format");
        let comm = head.split_once('(').expect("stat format").1;
        if !named(comm) {
            continue;
        }
        // Counted from the state (field 3 of stat(5)): utime 14, stime 15.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    ticks
}

/// CPU ticks the threads `named` accepts use over the next second.
fn ticks_over_a_second(named: impl Fn(&str) -> bool) -> u64 {
    let before = cpu_ticks(&named);
    std::thread::sleep(Duration::from_secs(1));
    cpu_ticks(&named) - before
}

fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    test_kit::wait::wait_for(what, WAIT, cond)
}

/// `from` sends `n` unicast frames to `to`; every one arrives, byte for byte.
fn unicast_crosses(from: &mut GuestNic, to: &mut GuestNic, src: u32, dst: u32, n: u32) {
    for i in 0..n {
        let fr = frame(mac(dst), mac(src), i);
        assert!(from.send(&fr));
        assert_eq!(to.recv(WAIT).as_deref(), Some(&fr[..]), "frame {i}");
    }
}

/// Each of `nics` (station `mac(i + 1)`) broadcasts once and the others take
/// the frame: every station is known, later unicast goes to one port only.
fn introduce(nics: &mut [&mut GuestNic]) {
    for i in 0..nics.len() {
        let fr = frame(BROADCAST, mac(i as u32 + 1), 0);
        assert!(nics[i].send(&fr));
        for (j, nic) in nics.iter_mut().enumerate() {
            if j != i {
                assert_eq!(nic.recv(WAIT).as_deref(), Some(&fr[..]));
            }
        }
    }
}

/// A daemon with three access-VLAN-10 ports `names`, connected, stations
/// 1, 2 and 3 introduced.
fn three_ports(names: [&str; 3]) -> (Fabric, [GuestNic; 3]) {
    let f = Fabric::start("", &names.map(|n| (n, ACCESS10)));
    let [mut a, mut b, mut c] = names.map(|n| f.connect(n));
    introduce(&mut [&mut a, &mut b, &mut c]);
    (f, [a, b, c])
}

/// A GET_VRING_BASE sent from another thread; panics unless answered within 1 s.
fn get_vring_base_within_1s(nic: &GuestNic, queue: usize) -> u32 {
    let frontend = nic.frontend();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(frontend.get_vring_base(queue));
    });
    rx.recv_timeout(Duration::from_secs(1))
        .expect("GET_VRING_BASE answered within 1 s")
        .expect("GET_VRING_BASE succeeds")
}

#[test]
fn tx_avail_index_too_far_ahead_stops_that_queue_only() {
    let _serial = serial();
    // Stations 1 (bad), 2 (p1), 3 (p2); some honest traffic, so the
    // device's last_avail is not 0.
    let (f, [mut bad, mut p1, mut p2]) = three_ports(["bad", "p1", "p2"]);
    unicast_crosses(&mut bad, &mut p1, 1, 2, 3);
    assert!(bad.wait_tx_completed(WAIT));
    let consumed = bad.tx_avail_idx();

    bad.publish_raw_avail_idx(TX, consumed.wrapping_add(QUEUE_SIZE + 5));
    wait_until("the queue is counted as broken", || {
        f.counters("bad").broken_queues == 1
    });

    let ticks = ticks_over_a_second(|comm| comm.starts_with("datapath-"));
    assert!(
        ticks <= 20,
        "datapath threads used {ticks}/100 s of CPU in an idle second: spinning"
    );
    // The other ports forward, and the bad port still receives.
    unicast_crosses(&mut p1, &mut p2, 2, 3, 20);
    unicast_crosses(&mut p2, &mut bad, 3, 1, 5);
    let base = get_vring_base_within_1s(&bad, TX);
    assert_eq!(
        base,
        u32::from(consumed),
        "nothing past the bad index was taken"
    );
    let c = f.counters("bad");
    assert_eq!(c.broken_queues, 1, "{c:?}");
    assert_eq!(c.rx_packets, 4, "{c:?}");
    assert!(p1.recv_all(QUIET).is_empty() && p2.recv_all(QUIET).is_empty());
    // Each rendering shows it: the report, port.list and the metrics.
    let metrics = f.metrics();
    for (port, broken) in [("bad", 1), ("p1", 0)] {
        let line = f.report_line(&format!("counters switch=br0 port={port} "));
        assert_eq!(field_in(&line, "broken_queues"), broken, "{line}");
        let listed = f.port_listed(port);
        assert_eq!(listed["broken_queues"].as_u64(), Some(broken), "{listed}");
        let key = format!("vswitchd_port_broken_queues_total{{switch=\"br0\",port=\"{port}\"}}");
        assert_eq!(metrics.get(&key), Some(&(broken as f64)), "{key}");
    }
}

#[test]
fn rx_avail_index_too_far_ahead_stops_that_queue_only() {
    let _serial = serial();
    let (f, [mut bad, mut p1, mut p2]) = three_ports(["bad", "p1", "p2"]);
    // The driver claims far more RX buffers than its ring holds.
    bad.publish_raw_avail_idx(RX, QUEUE_SIZE * 3 + 5);
    let n = 20;
    for i in 0..n {
        let fr = frame(BROADCAST, mac(2), i);
        assert!(p1.send(&fr));
        assert_eq!(p2.recv(WAIT).as_deref(), Some(&fr[..]), "frame {i}");
    }
    let c = f.counters("bad");
    assert_eq!(c.broken_queues, 1, "{c:?}");
    assert_eq!(c.tx_packets, 2, "only what came before: {c:?}");
    assert_eq!(c.dropped(DropReason::NoBuffer), u64::from(n), "{c:?}");
    // Its transmit side is not affected.
    unicast_crosses(&mut bad, &mut p2, 1, 3, 5);
    get_vring_base_within_1s(&bad, RX);
}

#[test]
fn pause_and_resume_under_load_return_every_tx_descriptor() {
    let _serial = serial();
    let f = Fabric::start("", &[("p1", ACCESS10), ("p2", ACCESS10)]);
    let (mut p1, mut p2) = (f.connect("p1"), f.connect("p2"));
    unicast_crosses(&mut p2, &mut p1, 2, 1, 1);
    let frames: Vec<Vec<u8>> = (0..48).map(|i| frame(mac(2), mac(1), i)).collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    for round in 0..100 {
        if p1.send_batch(&refs) == 0 {
            // The ring is full: the device is behind, or lost chains.
            assert!(
                p1.wait_tx_completed(WAIT),
                "round {round}: {} of {} TX chains came back",
                p1.tx_completed(),
                p1.tx_posted()
            );
            assert!(p1.send_batch(&refs) > 0);
        }
        // Stop while the datapath is (likely) in the middle of the batch.
        let bases = p1.stop().unwrap_or_else(|e| panic!("round {round}: {e}"));
        p1.resume(bases)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        while p2.try_recv().is_some() {}
    }
    assert!(
        p1.wait_tx_completed(WAIT),
        "{} of {} TX chains came back",
        p1.tx_completed(),
        p1.tx_posted()
    );
    assert_eq!(p1.tx_completed(), p1.tx_posted());
}

/// A thread flipping guest bytes (see [`flip_until`]); stopped and joined on
/// drop, also when the test fails, so it never writes into unmapped RAM.
/// Declare it after the NIC whose memory it writes.
struct Flipper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flipper {
    fn start(addrs: Vec<usize>, calm: u32) -> Flipper {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || flip_until(&s, &addrs, calm));
        Flipper {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Flipper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TAP device name of this test process (the tests run one at a time).
fn tap_device_name() -> String {
    format!("hn{}", std::process::id() % 100_000)
}

/// A `[[switch.port]]` of type "tap" on `device`, for `Fabric::start`'s
/// switch section.
fn tap_port(name: &str, device: &str, vlan: &str) -> String {
    format!("[[switch.port]]\nname = \"{name}\"\ntype = \"tap\"\ndevice = \"{device}\"\nvlan = {vlan}\n")
}

/// An AF_PACKET socket on one interface: the frames it receives, i.e. what
/// the daemon writes into its TAP device (not what the kernel sends out).
struct PacketSocket(OwnedFd);

fn check_os(r: libc::c_int, what: &str) {
    assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
}

impl PacketSocket {
    fn open(ifname: &str) -> PacketSocket {
        let name = CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index != 0, "no interface {ifname}");
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the descriptor is owned right below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(all),
            )
        };
        check_os(raw, "socket(AF_PACKET)");
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let rcvbuf: libc::c_int = 8 << 20;
        // SAFETY: an int option on our socket (FORCE: we run as root).
        check_os(
            unsafe {
                libc::setsockopt(
                    raw,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&rcvbuf as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            },
            "SO_RCVBUFFORCE",
        );
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = index as i32;
        // SAFETY: bind with a sockaddr_ll we own and its size.
        check_os(
            unsafe {
                libc::bind(
                    raw,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            },
            "bind(AF_PACKET)",
        );
        PacketSocket(fd)
    }

    /// Frames received until `quiet` passes without one.
    fn received(&self, quiet: Duration) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, quiet.as_millis() as libc::c_int) } <= 0 {
                return frames;
            }
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: our buffer and address, with their sizes.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            check_os(n as libc::c_int, "recvfrom(AF_PACKET)");
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                frames.push(buf[..n as usize].to_vec());
            }
        }
    }
}

/// Flips bytes 12..16 of each frame at `addrs` (host addresses) between the
/// frame's own (`calm`) and an 802.1Q tag for VLAN 20, until `stop`: a second
/// vCPU rewriting a frame it already handed to the device.
fn flip_until(stop: &AtomicBool, addrs: &[usize], calm: u32) {
    let hop = u32::from_ne_bytes([0x81, 0x00, 0x00, 0x14]);
    while !stop.load(Ordering::Relaxed) {
        for value in [hop, calm] {
            for &a in addrs {
                // SAFETY: 4-aligned addresses inside the guest RAM mapping,
                // which outlives this thread (joined before the NIC drops).
                let word = unsafe { &*(a as *const AtomicU32) };
                word.store(value, Ordering::Relaxed);
            }
        }
    }
}

#[test]
fn a_racing_guest_cannot_tag_its_frames_after_the_decision() {
    let _serial = serial();
    const TRUNK_NATIVE10: &str = "{ mode = \"trunk\", allowed = [10, 20], native = 10 }";
    // A guest trunk and a TAP trunk, both native 10.
    let device = tap_device_name();
    let f = Fabric::start(
        &tap_port("tap", &device, TRUNK_NATIVE10),
        &[("a", ACCESS10), ("t", TRUNK_NATIVE10), ("p", ACCESS10)],
    );
    let (mut a, mut t, mut p) = (f.connect("a"), f.connect("t"), f.connect("p"));
    f.wait_link("tap", true);
    let capture = PacketSocket::open(&device);
    // Untagged IPv4-typed broadcasts; bytes 14..16 are payload the racer also flips.
    let fr = eth(BROADCAST, mac(1), 0x0800, &payload(7, 100));
    let mut buffer = vec![0u8; VNET_HDR_LEN];
    buffer.extend_from_slice(&fr);
    let gpas: Vec<u64> = (0..16).map(|_| a.guest_alloc(&buffer)).collect();
    let addrs: Vec<usize> = gpas
        .iter()
        .map(|&g| a.ram().host_addr(g + VNET_HDR_LEN as u64 + 12).unwrap() as usize)
        .collect();
    assert!(addrs.iter().all(|h| h % 4 == 0));
    let calm = u32::from_ne_bytes(fr[12..16].try_into().unwrap());

    let flipper = Flipper::start(addrs, calm);
    // Checks a frame from the racer (false for others).
    let check = |who: &str, got: &[u8]| {
        if got.get(6..12) != Some(&mac(1)[..]) {
            return false;
        }
        assert_eq!(got.len(), fr.len(), "{who}: length");
        assert_eq!(&got[..14], &fr[..14], "{who}: untagged, EtherType 0x0800");
        let b1415 = [got[14], got[15]];
        assert!(
            b1415 == [fr[14], fr[15]] || b1415 == [0x00, 0x14],
            "{who}: bytes 14..16 are either value the guest wrote"
        );
        assert_eq!(&got[16..], &fr[16..], "{who}: the rest");
        true
    };
    let (rounds, per_round) = (40, 50);
    let (mut delivered, mut on_access, mut on_tap) = (0u64, 0u64, 0u64);
    for round in 0..rounds {
        for i in 0..per_round {
            let chain = [RawDesc {
                addr: gpas[i % gpas.len()],
                len: buffer.len() as u32,
                flags: 0,
                next: 0,
            }];
            assert!(a.send_raw_chain(&chain), "round {round}: TX ring full");
        }
        assert!(a.wait_tx_completed(WAIT), "round {round}");
        // Deliveries happen before the chains are returned: all there now.
        // (The TAP device's kernel sends traffic of its own: other sources.)
        while let Some(got) = t.try_recv() {
            delivered += u64::from(check("trunk", &got));
        }
        while let Some(got) = p.try_recv() {
            on_access += u64::from(check("access", &got));
        }
        for got in capture.received(Duration::from_millis(20)) {
            on_tap += u64::from(check("tap", &got));
        }
    }
    drop(flipper);
    for got in capture.received(QUIET) {
        on_tap += u64::from(check("tap", &got));
    }
    let posted = (rounds * per_round) as u64;
    let c = f.counters("a");
    let tagged = c.dropped(DropReason::TaggedOnAccess);
    assert_eq!(delivered + tagged, posted, "{c:?}");
    assert_eq!(on_access, delivered);
    assert_eq!(on_tap, delivered, "every frame the TAP took was checked");
    assert!(delivered > 0 && tagged > 0, "the race ran both ways: {c:?}");
}

/// `from` (station 2) sends `n` frames to `to` (station 3), at most 64 in
/// flight; each arrives in order, byte for byte. Returns the time taken;
/// panics if that exceeds `limit`.
fn exchange(from: &mut GuestNic, to: &mut GuestNic, n: u32, limit: Duration) -> Duration {
    let start = Instant::now();
    let (mut sent, mut got) = (0u32, 0u32);
    while got < n {
        while sent < n && sent - got < 64 && from.send(&frame(mac(3), mac(2), sent)) {
            sent += 1;
        }
        let left = limit.saturating_sub(start.elapsed());
        let fr = to
            .recv(left)
            .unwrap_or_else(|| panic!("the neighbours moved {got} of {n} frames in {limit:?}"));
        assert_eq!(fr, frame(mac(3), mac(2), got), "frame {got}");
        got += 1;
    }
    assert!(from.wait_tx_completed(WAIT));
    start.elapsed()
}

/// A driver's indirect table of `entries` zero-length descriptors, each
/// chained to the next: no frame at all, as much walking as the table allows.
fn zero_length_table(nic: &mut GuestNic, entries: usize) -> RawDesc {
    let scratch = nic.guest_alloc(&[0u8; 16]);
    let mut table = Vec::with_capacity(16 * entries);
    for i in 0..entries {
        let last = i + 1 == entries;
        table.extend_from_slice(&scratch.to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes());
        table.extend_from_slice(&(if last { 0 } else { NEXT }).to_le_bytes());
        table.extend_from_slice(&(if last { 0 } else { i as u16 + 1 }).to_le_bytes());
    }
    RawDesc {
        addr: nic.guest_alloc(&table),
        len: (16 * entries) as u32,
        flags: INDIRECT,
        next: 0,
    }
}

#[test]
fn zero_length_indirect_chains_cost_their_neighbours_little() {
    let _serial = serial();
    let (f, [mut evil, mut p1, mut p2]) = three_ports(["evil", "p1", "p2"]);
    let n = 2000;
    let calm = exchange(&mut p1, &mut p2, n, Duration::from_secs(60));
    let limit = 10 * calm + Duration::from_secs(2);
    // The longest table a descriptor's length can describe (what the old walk
    // accepted), then one of the queue size (the most a chain may have).
    let mut posted = 0;
    for entries in [65_535, usize::from(QUEUE_SIZE)] {
        let chain = [zero_length_table(&mut evil, entries)];
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut posted = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if evil.send_raw_chain(&chain) {
                        posted += 1;
                    } else {
                        evil.wait_tx_completed(Duration::from_millis(10));
                    }
                }
                assert!(
                    evil.wait_tx_completed(WAIT),
                    "every attacker chain returned"
                );
                assert_eq!(evil.tx_completed(), evil.tx_posted());
                (evil, posted)
            })
        };
        let attacked = exchange(&mut p1, &mut p2, n, limit);
        stop.store(true, Ordering::Relaxed);
        let (nic, count) = attacker.join().unwrap();
        evil = nic;
        posted += count;
        eprintln!("{entries} entries: {n} frames in {attacked:?}, {calm:?} calm; {count} chains");
        assert!(count > 0);
    }
    let c = f.counters("evil");
    assert_eq!(c.dropped(DropReason::BadDescriptor), posted, "{c:?}");
    assert_eq!((c.rx_packets, c.total_drops()), (1, posted), "{c:?}");
}

#[test]
fn a_tap_device_deleted_under_the_daemon_goes_link_down_quietly() {
    let _serial = serial();
    let device = tap_device_name();
    let f = Fabric::start(
        &tap_port("tap", &device, ACCESS10),
        &[("p1", ACCESS10), ("p2", ACCESS10)],
    );
    let (mut p1, mut p2) = (f.connect("p1"), f.connect("p2"));
    f.wait_link("tap", true);
    let status = std::process::Command::new("ip")
        .args(["link", "del", &device])
        .status()
        .expect("ip(8) runs");
    assert!(status.success(), "ip link del {device}: {status}");
    f.wait_link("tap", false);

    // The device was read by a datapath thread: a dead descriptor left in
    // its epoll set would keep it spinning.
    let ticks = ticks_over_a_second(|comm| comm.starts_with("datapath-"));
    assert!(
        ticks <= 20,
        "datapath threads used {ticks}/100 s of CPU in a second: spinning on the dead TAP"
    );
    // What the kernel sent while the device was up (IPv6 neighbour
    // discovery, MLD) is not ours to check.
    p1.recv_all(QUIET);
    p2.recv_all(QUIET);
    introduce(&mut [&mut p1, &mut p2]);
    unicast_crosses(&mut p1, &mut p2, 1, 2, 20);
}

#[test]
fn a_stopped_queue_with_chains_waiting_costs_no_cpu() {
    let _serial = serial();
    let (_f, [mut p1, mut p2, mut p3]) = three_ports(["p1", "p2", "p3"]);
    // A paused VM: its rings stopped (GET_VRING_BASE) while its driver had
    // posted chains the device has not taken yet.
    let bases = p1.stop().expect("GET_VRING_BASE");
    for i in 0..8 {
        assert!(p1.send(&frame(mac(2), mac(1), i)));
    }
    // Another port's traffic wakes the shared datapath thread.
    unicast_crosses(&mut p2, &mut p3, 2, 3, 3);
    let ticks = ticks_over_a_second(|comm| comm.starts_with("datapath-"));
    assert!(
        ticks <= 20,
        "datapath threads used {ticks}/100 s of CPU in an idle second: spinning"
    );
    // Resumed, the chains go out.
    p1.resume(bases).expect("resume");
    for i in 0..8 {
        assert_eq!(p2.recv(WAIT), Some(frame(mac(2), mac(1), i)), "frame {i}");
    }
    assert!(p1.wait_tx_completed(WAIT));
}
