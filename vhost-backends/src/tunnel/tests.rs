use super::*;
use crate::datapath::{PollQueue, Polled};
use crate::forward::offload::{egress_header, HeaderFrom};
use crate::forward::offload_tests::{tcp4_frame, tcp4_valid, tso4_header};
use crate::forward::{
    forward, Delivery, DeliveryReport, ForwardScratch, FrameSink, FrameSource, Ingress,
};
use fabric_offload::{Accepts, Offload};
use std::time::Instant;
use vm_memory::VolatileSlice;
use vswitch::vxlan::{TunnelDrop, VxlanPacket};
use vswitch::{VlanId, VlanMode, VlanSet};

/// Only a guard against hanging: aging is due within 2 s.
const HANG: Duration = Duration::from_secs(10);

/// A tunnel has no thread of its own: a datapath thread receives, and
/// its timer ages the remote FDB of a tunnel that receives nothing more.
#[test]
fn an_idle_tunnel_is_aged_by_its_timer_on_the_datapath() {
    let switch = Arc::new(Switch::new("br0", 100, 100, 300));
    let table = Arc::new(PortTable::default());
    let datapath = Arc::new(Datapath::new(1).unwrap());
    // What the switch makes of the frame is not this test's business.
    let id = switch
        .add_port(
            "vx",
            VlanMode::Access(vswitch::VlanId::new(10).unwrap()),
            1500,
        )
        .unwrap();
    // A free port of the loopback address: the kernel picks it.
    let port = {
        let probe = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        probe.local_addr().unwrap().port()
    };
    let vni = Vni::new(5000).unwrap();
    let mut vnis = VniMap::new();
    vnis.insert(vswitch::VlanId::new(10).unwrap(), vni).unwrap();
    let config = TunnelConfig {
        local: Ipv4Addr::LOCALHOST,
        udp_port: port,
        underlay_mtu: 1500,
        learn_vteps: true,
        vnis,
        vteps: VtepSet::new(true),
        capacity: 100,
        vtep_mac_limit: 100,
        aging_secs: 1,
        local_hold_secs: 0,
        statics: Vec::new(),
    };
    let handle = spawn(config, id, switch.clone(), table, datapath.clone()).unwrap();
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .collect();
    assert!(
        !names.iter().any(|n| n.trim_end() == "vxlan"),
        "a thread per tunnel: {names:?}"
    );

    // One packet from another loopback address (not our own), VNI 5000,
    // an inner broadcast from 02:00:00:00:00:09.
    let mut packet = vec![0x08, 0, 0, 0, 0, 0x13, 0x88, 0];
    packet.extend_from_slice(&[0xff; 6]);
    packet.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x88, 0xb5]);
    packet.resize(8 + 60, 0xab);
    let sender = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).unwrap();
    sender
        .send_to(&packet, (Ipv4Addr::LOCALHOST, port))
        .unwrap();
    let t = handle.tunnel.clone();
    let until = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + HANG;
        while !cond() {
            assert!(Instant::now() < deadline, "never happened: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    until("the packet is received", &|| {
        t.counters.snapshot().rx_packets == 1
    });
    assert_eq!(t.remote_fdb.stats().learned, 1);
    // Nothing more arrives: only the timer can wake the thread to age.
    until("the entry ages out", &|| t.remote_fdb.stats().entries == 0);
    assert_eq!(t.remote_fdb.stats().aged, 1);
    handle.stop();
    datapath.shutdown();
    // Stopped, the tunnel's sockets are closed: the address is free.
    UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).expect("the tunnel's socket is closed");
}

#[test]
fn a_refused_socket_option_is_an_error_naming_it() {
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    // No interface has this address: the kernel refuses it.
    let nowhere = libc::in_addr {
        s_addr: u32::from(Ipv4Addr::new(192, 0, 2, 254)).to_be(),
    };
    let e = set_ip_option(&udp, libc::IP_MULTICAST_IF, &nowhere, "IP_MULTICAST_IF").unwrap_err();
    assert!(
        e.to_string().starts_with("VXLAN socket IP_MULTICAST_IF: "),
        "{e}"
    );
    let lo = libc::in_addr {
        s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
    };
    set_ip_option(&udp, libc::IP_MULTICAST_IF, &lo, "IP_MULTICAST_IF").unwrap();
}

/// The VNI of VLAN 10 in [`Rig`].
const VNI: u32 = 5000;
/// The remote VTEP in [`Rig`]'s flood list.
const REMOTE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// Records the frames delivered to a port that takes `1`; a port that takes
/// any offload gets each behind the virtio-net header it would write.
struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>, Accepts);

impl FrameSink for Recorder {
    fn deliver(&self, batch: &[Delivery], frames: &[FrameSource], report: &mut dyn DeliveryReport) {
        for d in batch {
            let frame = &frames[d.frame];
            assert!(self.1.contains(frame.offload().needs()));
            let mut out = Vec::new();
            if self.1 != Accepts::NONE {
                out.extend_from_slice(&egress_header(frame.offload(), d.egress.shift(), self.1, 0));
            }
            out.extend_from_slice(&d.bytes(frames));
            self.0.lock().unwrap().push(out);
            report.outcome(d, Ok(()));
        }
    }

    fn accepts(&self) -> Accepts {
        self.1
    }
}

/// A switch with a tunnel port `vx` (a trunk of VLAN 10 = VNI 5000, bound to
/// a free port of 127.0.0.1, flooding to [`REMOTE`]) and a recording access
/// port `rec` in VLAN 10. No datapath thread: the test polls.
struct Rig {
    switch: Arc<Switch>,
    table: Arc<PortTable>,
    queue: Arc<TunnelQueue>,
    rec: PortId,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    port: u16,
}

impl Rig {
    fn new() -> Rig {
        Rig::with(Accepts::NONE)
    }

    /// The rig with a recording port that takes `accepts`.
    fn with(accepts: Accepts) -> Rig {
        let switch = Arc::new(Switch::new("br0", 1000, 1000, 300));
        let table = Arc::new(PortTable::default());
        let vlan = VlanId::new(10).unwrap();
        let mut allowed = VlanSet::new();
        allowed.insert(vlan);
        let vx = switch
            .add_port(
                "vx",
                VlanMode::Trunk {
                    allowed,
                    native: None,
                },
                9000,
            )
            .unwrap();
        let rec = switch
            .add_port("rec", VlanMode::Access(vlan), 9000)
            .unwrap();
        let port = free_port();
        let vni = Vni::new(VNI).unwrap();
        let mut vnis = VniMap::new();
        vnis.insert(vlan, vni).unwrap();
        let mut vteps = VtepSet::new(true);
        vteps.add_remote(vni, REMOTE).unwrap();
        let config = TunnelConfig {
            local: Ipv4Addr::LOCALHOST,
            udp_port: port,
            underlay_mtu: 1500,
            learn_vteps: true,
            vnis,
            vteps,
            capacity: 100,
            vtep_mac_limit: 100,
            aging_secs: 300,
            local_hold_secs: 0,
            statics: Vec::new(),
        };
        let (queue, sink) = open(config, vx, switch.clone(), table.clone()).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        table.publish(vx, sink);
        table.publish(rec, Box::new(Recorder(got.clone(), accepts)));
        switch.set_link(vx, true);
        switch.set_link(rec, true);
        Rig {
            switch,
            table,
            queue,
            rec,
            got,
            port,
        }
    }

    fn tunnel(&self) -> &Tunnel {
        &self.queue.tunnel
    }

    /// Polls until `n` datagrams were taken; returns the `recvmmsg` calls
    /// that returned messages.
    fn poll_for(&self, n: usize) -> u64 {
        let deadline = Instant::now() + HANG;
        let mut taken = 0;
        while taken < n {
            assert!(Instant::now() < deadline, "took {taken} of {n} datagrams");
            match self.queue.poll() {
                Polled::Frames(k) => taken += k,
                Polled::Gone => panic!("the tunnel is gone"),
            }
        }
        assert_eq!(taken, n);
        self.receiver(|r| r.reads)
    }

    fn receiver<R>(&self, f: impl FnOnce(&Receiver) -> R) -> R {
        f(self.queue.receiver.lock().unwrap().as_ref().unwrap())
    }

    /// The first payload byte of each recorded frame (untagged: byte 14).
    fn markers(&self) -> Vec<u8> {
        self.got.lock().unwrap().iter().map(|f| f[14]).collect()
    }
}

fn free_port() -> u16 {
    let probe = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    probe.local_addr().unwrap().port()
}

/// A VXLAN payload (VNI [`VNI`]) carrying an inner broadcast of `inner_len`
/// bytes from 02:00:00:00:00:09 whose payload bytes are all `marker`.
fn datagram(marker: u8, inner_len: usize) -> Vec<u8> {
    let mut d = vswitch::vxlan::header(Vni::new(VNI).unwrap()).to_vec();
    d.extend_from_slice(&[0xff; 6]);
    d.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x88, 0xb5]);
    d.resize(8 + inner_len, marker);
    d
}

/// 100 datagrams waiting on the socket are read with two `recvmmsg` calls
/// (64 + 36), not 100 `recvfrom`s, and every one of them is forwarded.
#[test]
fn a_burst_of_datagrams_is_read_in_few_calls_and_every_one_forwarded() {
    let rig = Rig::new();
    let sender = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).unwrap();
    for i in 0..100u8 {
        sender
            .send_to(&datagram(i, 60), (Ipv4Addr::LOCALHOST, rig.port))
            .unwrap();
    }
    assert_eq!(rig.poll_for(100), 2);
    assert_eq!(rig.markers(), (0..100).collect::<Vec<u8>>());
    let c = rig.tunnel().counters.snapshot();
    assert_eq!(c.rx_packets, 100);
    assert_eq!(c.rx_bytes, 100 * 60);
    // The frame the local port got is the inner frame, byte for byte.
    assert_eq!(rig.got.lock().unwrap()[7], datagram(7, 60)[8..]);
}

/// One UDP_GSO send of five datagrams reaches the UDP_GRO socket as one
/// coalesced message (loopback keeps the GSO packet whole); it is split at
/// the segment size: the good datagrams are forwarded, the one with the I
/// flag clear in the middle and the truncated last one are dropped and
/// counted.
#[test]
fn a_coalesced_read_is_split_and_only_its_bad_datagrams_are_dropped() {
    let rig = Rig::new();
    let sender = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).unwrap();
    const SEGMENT: usize = 8 + 100;
    let size: libc::c_int = SEGMENT as libc::c_int;
    set_option(
        &sender,
        libc::SOL_UDP,
        libc::UDP_SEGMENT,
        &size,
        "UDP_SEGMENT",
    )
    .unwrap();
    let mut bad = datagram(2, 100);
    bad[0] = 0; // I flag clear
    let mut send = datagram(0, 100);
    send.extend_from_slice(&datagram(1, 100));
    send.extend_from_slice(&bad);
    send.extend_from_slice(&datagram(3, 100));
    // The last segment may be shorter: this one holds no Ethernet header.
    send.extend_from_slice(&datagram(4, 100)[..8 + 10]);
    sender
        .send_to(&send, (Ipv4Addr::LOCALHOST, rig.port))
        .unwrap();
    assert_eq!(rig.poll_for(5), 1);
    let read = rig.receiver(|r| r.batch.received(0));
    assert_eq!((read.len, read.segment), (send.len(), SEGMENT));
    assert_eq!(rig.markers(), vec![0, 1, 3]);
    let c = rig.tunnel().counters.snapshot();
    assert_eq!(c.rx_packets, 3);
    assert_eq!(c.dropped(TunnelDrop::BadHeader), 1);
    assert_eq!(c.dropped(TunnelDrop::InnerRunt), 1);
    assert_eq!(c.total_drops(), 2);
}

/// 100 frames flooded to the tunnel in one batch leave in two `sendmmsg`
/// calls (64 + 36), each a VXLAN packet of VNI 5000 to the remote VTEP
/// carrying the untagged frame.
#[test]
fn a_delivered_batch_leaves_in_few_calls_every_copy_counted() {
    let rig = Rig::new();
    let remote = UdpSocket::bind((REMOTE, rig.port)).unwrap();
    remote
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut bufs: Vec<Vec<u8>> = (0..100u8).map(|i| datagram(i, 60)[8..].to_vec()).collect();
    let slices: Vec<[VolatileSlice; 1]> = bufs
        .iter_mut()
        .map(|b| [VolatileSlice::from(&mut b[..])])
        .collect();
    let frames: Vec<FrameSource> = slices.iter().map(|s| FrameSource::new(s, 0)).collect();
    let ingress = Ingress {
        id: rig.rec,
        switch: &rig.switch,
        table: &rig.table,
        queue: 0,
    };
    forward(&ingress, &frames, &[], &mut ForwardScratch::default());
    let calls = rig.tunnel().scratch.lock().unwrap().batch.calls;
    assert_eq!(calls, 2);
    let mut buf = [0u8; 2048];
    for i in 0..100u8 {
        let (n, from) = remote.recv_from(&mut buf).expect("a packet per frame");
        assert_eq!(from.ip(), Ipv4Addr::LOCALHOST);
        let p = VxlanPacket::parse(&buf[..n]).unwrap();
        assert_eq!(p.vni(), Vni::new(VNI).unwrap());
        assert_eq!(p.inner(), &datagram(i, 60)[8..]);
    }
    assert!(remote.recv_from(&mut buf).is_err(), "one copy per frame");
    let c = rig.tunnel().counters.snapshot();
    assert_eq!((c.tx_packets, c.tx_bytes), (100, 100 * 60));
    assert_eq!(c.total_drops(), 0);
}

/// A kernel peer's inner TCP checksum left partial (pseudo-header sum only)
/// is marked NEEDS_CSUM; a valid one is never touched, nor one that is
/// neither valid nor exactly partial.
#[test]
fn only_an_exactly_partial_inner_checksum_is_marked_for_completion() {
    let mut partial = tcp4_frame(None, 100);
    let off = decap::inner_offload(&partial);
    assert_eq!(off.csum, Some((14 + 20, 16)));
    assert_eq!((off.gso, off.data_valid), (None, false));
    fabric_offload::complete_csum(&mut partial, 34, 16).unwrap();
    assert!(tcp4_valid(&partial, 14));
    assert_eq!(decap::inner_offload(&partial), Offload::NONE);
    partial[60] ^= 0xff; // now neither valid nor partial
    assert_eq!(decap::inner_offload(&partial), Offload::NONE);
}

/// A received frame with a partial inner checksum reaches a port that does
/// not take CSUM completed; the tunnel's counters see one frame.
#[test]
fn a_partial_inner_checksum_from_the_tunnel_is_completed_for_a_plain_port() {
    let rig = Rig::new();
    let sender = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).unwrap();
    let mut d = vswitch::vxlan::header(Vni::new(VNI).unwrap()).to_vec();
    let inner = tcp4_frame(None, 300);
    d.extend_from_slice(&inner);
    sender.send_to(&d, (Ipv4Addr::LOCALHOST, rig.port)).unwrap();
    rig.poll_for(1);
    let got = rig.got.lock().unwrap();
    assert_eq!(got.len(), 1);
    assert!(tcp4_valid(&got[0], 14), "completed for the plain port");
    // Only the checksum field differs from what was sent.
    assert_eq!(got[0][..50], inner[..50]);
    assert_eq!(got[0][52..], inner[52..]);
}

/// A 20000-byte TSO frame (MSS 1448) handed to the tunnel leaves as
/// ceil(20000 / 1410) = 15 VXLAN packets: 1410 is what fits a 1500-byte
/// underlay (1500 - 36 - 54), each IP packet within 1500 bytes, each inner
/// frame with valid IP and TCP checksums, the payload whole and in order.
#[test]
fn a_gso_frame_is_segmented_to_the_underlay_before_encapsulation() {
    let rig = Rig::new();
    let remote = UdpSocket::bind((REMOTE, rig.port)).unwrap();
    remote
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let frame = tcp4_frame(None, 20_000);
    let mut buf = tso4_header(false, 1448).to_vec();
    buf.extend_from_slice(&frame);
    let slices = [VolatileSlice::from(&mut buf[..])];
    let frames = [FrameSource::with_header(&slices, Accepts::ALL, HeaderFrom::Guest).unwrap()];
    assert!(frames[0].offload().gso.is_some());
    let ingress = Ingress {
        id: rig.rec,
        switch: &rig.switch,
        table: &rig.table,
        queue: 0,
    };
    forward(&ingress, &frames, &[], &mut ForwardScratch::default());
    let mut payload = Vec::new();
    let mut pkt = [0u8; 2048];
    for i in 0..15 {
        let (n, _) = remote.recv_from(&mut pkt).expect("a packet per segment");
        assert!(n + 28 <= 1500, "packet {i}: {n} bytes of UDP payload");
        let p = VxlanPacket::parse(&pkt[..n]).unwrap();
        let inner = p.inner();
        assert!(tcp4_valid(inner, 14), "segment {i} checksums");
        let seq = u32::from_be_bytes(inner[38..42].try_into().unwrap());
        assert_eq!(seq as usize, 1 + payload.len(), "segment {i} in order");
        payload.extend_from_slice(&inner[54..]);
        assert_eq!(inner.len(), 54 + 1410.min(20_000 - 1410 * i));
    }
    assert!(remote.recv_from(&mut pkt).is_err(), "exactly 15 packets");
    assert_eq!(payload, frame[54..]);
    let c = rig.tunnel().counters.snapshot();
    assert_eq!((c.tx_packets, c.total_drops()), (15, 0));
}

/// Segment `i` of a kernel peer's TCP stream (untagged, 10.0.0.1:1000 ->
/// 10.0.0.2:2000): `payload` bytes of `i`, sequence numbers contiguous
/// after [`SEGMENT`]-byte segments, IP ids counting up, ACK (and PSH if
/// `last`), the checksum left partial as a Linux vxlan peer leaves it.
fn peer_segment(i: usize, payload: usize, last: bool) -> Vec<u8> {
    let mut f = tcp4_frame(None, payload);
    f[54..].fill(i as u8);
    f[38..42].copy_from_slice(&(1 + (i * SEGMENT) as u32).to_be_bytes());
    f[18..20].copy_from_slice(&(0x1234 + i as u16).to_be_bytes());
    f[47] = if last { 0x18 } else { 0x10 };
    f[24..26].fill(0);
    let c = fabric_offload::csum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// Payload of each full segment in [`peer_segment`].
const SEGMENT: usize = 1400;

/// Sends the inner frames `inner` from 127.0.0.2 to the rig's tunnel, one
/// VXLAN datagram each (VNI [`VNI`]), and polls them in.
fn receive_segments(rig: &Rig, inner: &[Vec<u8>]) {
    let sender = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).unwrap();
    for f in inner {
        let mut d = vswitch::vxlan::header(Vni::new(VNI).unwrap()).to_vec();
        d.extend_from_slice(f);
        sender.send_to(&d, (Ipv4Addr::LOCALHOST, rig.port)).unwrap();
    }
    // Loopback queues every datagram before send_to returns: one read.
    assert_eq!(rig.poll_for(inner.len()), 1);
}

/// Six segments of one flow from a kernel peer reach the tunnel as six
/// datagrams of one read: they are forwarded as one GSO frame
/// (`rx_coalesced` 5), and a port that does not take TSO gets the six
/// segments back byte for byte as the peer sent them, checksums completed
/// (the kernel's rule: IP ids counting up from the first's, PSH only on the
/// last), from one software segmentation.
#[test]
fn a_run_from_a_peer_is_coalesced_and_re_segmented_byte_for_byte() {
    let rig = Rig::new();
    let sent: Vec<Vec<u8>> = (0..6)
        .map(|i| peer_segment(i, if i == 5 { 300 } else { SEGMENT }, i == 5))
        .collect();
    receive_segments(&rig, &sent);
    let c = rig.tunnel().counters.snapshot();
    assert_eq!((c.rx_packets, c.rx_coalesced, c.total_drops()), (6, 5, 0));
    let got = rig.got.lock().unwrap().clone();
    assert_eq!(got.len(), 6);
    for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
        let mut want = s.clone();
        fabric_offload::complete_csum(&mut want, 34, 16).unwrap();
        assert!(tcp4_valid(&want, 14));
        assert_eq!(g, &want, "segment {i}");
    }
    let port = rig
        .switch
        .topology()
        .port(rig.rec)
        .unwrap()
        .state
        .counters
        .snapshot();
    assert_eq!(
        (port.gso_segmented, port.tx_gso_packets, port.tx_packets),
        (1, 0, 6)
    );
    let vx = rig
        .switch
        .topology()
        .port(rig.queue.id)
        .unwrap()
        .state
        .counters
        .snapshot();
    assert_eq!(vx.rx_packets, 1, "the switch was handed one frame");
}

/// The same run to a port that takes TSO: one frame, passed intact with its
/// virtio-net header (GSO TCPv4, gso_size 1400, hdr_len 54, NEEDS_CSUM at
/// 34 + 16), its IPv4 total length and flags those of the whole.
#[test]
fn a_coalesced_run_reaches_a_tso_port_as_one_gso_frame() {
    let rig = Rig::with(Accepts::ALL);
    let sent: Vec<Vec<u8>> = (0..4).map(|i| peer_segment(i, SEGMENT, i == 3)).collect();
    receive_segments(&rig, &sent);
    assert_eq!(rig.tunnel().counters.snapshot().rx_coalesced, 3);
    let got = rig.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let (hdr, f) = got[0].split_at(12);
    let le = |at: usize| u16::from_le_bytes([hdr[at], hdr[at + 1]]);
    assert_eq!((hdr[0], hdr[1]), (1, 1), "NEEDS_CSUM, GSO TCPv4");
    assert_eq!((le(2), le(4), le(6), le(8)), (54, SEGMENT as u16, 34, 16));
    assert_eq!(f.len(), 54 + 4 * SEGMENT);
    assert_eq!(
        u16::from_be_bytes([f[16], f[17]]) as usize,
        40 + 4 * SEGMENT
    );
    assert_eq!(f[47], 0x18);
    let mut payload = Vec::new();
    for s in &sent {
        payload.extend_from_slice(&s[54..]);
    }
    assert!(f[54..] == payload[..]);
    let port = rig
        .switch
        .topology()
        .port(rig.rec)
        .unwrap()
        .state
        .counters
        .snapshot();
    assert_eq!(
        (port.tx_gso_packets, port.gso_segmented, port.tx_packets),
        (1, 0, 1)
    );
}

/// Which received frames are a kernel peer's whole TSO packet: TCP, longer
/// than the overlay MTU (1450 bytes of IP packet on a 1500 underlay), with
/// an exactly partial checksum; cut at MSS 1450 - 40 = 1410.
#[test]
fn only_an_oversize_partial_tcp_frame_is_taken_as_a_whole_gso_packet() {
    let whole = |f: &[u8]| decap::whole_gso_packet(f, &decap::inner_offload(f), 1450);
    let big = tcp4_frame(None, 20_000);
    let gso = whole(&big).expect("a whole TSO packet").gso.unwrap();
    assert_eq!((gso.size, gso.hdr_len), (1410, 54));
    assert_eq!(whole(&tcp4_frame(None, 1410)), None, "fits the MTU");
    assert!(whole(&tcp4_frame(None, 1411)).is_some(), "one byte more");
    let mut valid = big.clone();
    fabric_offload::complete_csum(&mut valid, 34, 16).unwrap();
    assert_eq!(whole(&valid), None, "a complete checksum: no GSO packet");
    let mut udp = big.clone();
    udp[23] = 17; // protocol UDP: the checksum is no longer partial either
    assert_eq!(whole(&udp), None);
}

/// A kernel peer's whole TSO packet in one datagram (a veth underlay hands
/// the UDP tunnel GSO packet on whole) reaches a port without TSO as
/// ceil(20000 / 1410) = 15 segments, each valid and within the overlay MTU,
/// the payload whole and in order; nothing dropped as oversize. Before, the
/// frame was dropped and the peer's TCP retransmitted until it gave up TSO.
#[test]
fn a_whole_tso_packet_from_a_kernel_peer_is_segmented_to_the_overlay_mtu() {
    let rig = Rig::new();
    let mut inner = tcp4_frame(None, 20_000);
    for (i, b) in inner[54..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    receive_segments(&rig, std::slice::from_ref(&inner));
    let c = rig.tunnel().counters.snapshot();
    assert_eq!((c.rx_packets, c.rx_coalesced, c.total_drops()), (1, 0, 0));
    let got = rig.got.lock().unwrap().clone();
    assert_eq!(got.len(), 20_000usize.div_ceil(1410));
    let mut payload = Vec::new();
    for (i, g) in got.iter().enumerate() {
        assert!(g.len() <= 14 + 1450, "segment {i}: {} bytes", g.len());
        assert!(tcp4_valid(g, 14), "segment {i}");
        payload.extend_from_slice(&g[54..]);
    }
    assert!(
        payload[..] == inner[54..],
        "the payload, in order, complete"
    );
    let vx = rig
        .switch
        .topology()
        .port(rig.queue.id)
        .unwrap()
        .state
        .counters
        .snapshot();
    assert_eq!((vx.rx_packets, vx.total_drops()), (1, 0));
}
