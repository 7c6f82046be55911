//! Offloads through `forward`: pass-through to sinks that take them (header
//! checked byte for byte, offsets moved by a tag pushed or popped), software
//! segmentation and checksum completion for sinks that do not, and every bad
//! header dropped under its own reason. Checksums are verified here with an
//! RFC 1071 sum of the test's own, not with the crate that computed them.

use super::offload::{egress_header, HeaderFrom};
use super::{forward, Delivery, DeliveryReport, ForwardScratch, FrameSink, FrameSource, Ingress};
use super::{PortTable, HDR_LEN};
use fabric_offload::Accepts;
use std::sync::{Arc, Mutex};
use vm_memory::VolatileSlice;
use vswitch::{DropReason, PortCountersSnapshot, PortId, Switch, VlanId, VlanMode, VlanSet};

const NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
const GSO_UDP: u8 = 3;
/// Ethernet + IPv4 + TCP, untagged.
const L4: usize = 14 + 20;
const HDR_LEN_TCP4: usize = L4 + 20;
const MSS: usize = 1448;
const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// Never learned: every frame floods the VLAN.
const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x99];

/// RFC 1071: the folded ones'-complement sum (not complemented).
fn sum16(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for data in chunks {
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn pseudo_v4(ip: &[u8], l4_len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..8].copy_from_slice(&ip[12..20]);
    p[9] = 6;
    p[10..12].copy_from_slice(&(l4_len as u16).to_be_bytes());
    p
}

/// A TCP/IPv4 frame from [`SRC_MAC`] to [`DST_MAC`] (tagged with `vlan` if
/// given) with `payload` bytes, its TCP checksum left partial as Linux
/// leaves it for NEEDS_CSUM: the folded pseudo-header sum in the field.
pub(crate) fn tcp4_frame(vlan: Option<u16>, payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    if let Some(v) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x00]);
    let ip = f.len();
    let total = (20 + 20 + payload).min(0xffff) as u16;
    f.extend_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
    f[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    let ip_csum = !sum16(&[&f[ip..ip + 20]]);
    f[ip + 10..ip + 12].copy_from_slice(&ip_csum.to_be_bytes());
    let tcp = f.len();
    // Ports 1000 -> 2000, seq 1, ack 0, data offset 5, ACK|PSH, window.
    f.extend_from_slice(&[0x03, 0xe8, 0x07, 0xd0, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18]);
    f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    f.extend((0..payload).map(|i| (i % 251) as u8));
    let pseudo = sum16(&[&pseudo_v4(&f[ip..], f.len() - tcp)]);
    f[tcp + 16..tcp + 18].copy_from_slice(&pseudo.to_be_bytes());
    f
}

/// The virtio-net header of a TSO4 frame from [`tcp4_frame`].
pub(crate) fn tso4_header(vlan: bool, mss: usize) -> [u8; HDR_LEN] {
    let tag = if vlan { 4 } else { 0 };
    header(NEEDS_CSUM, GSO_TCPV4, HDR_LEN_TCP4 + tag, mss, L4 + tag, 16)
}

fn header(
    flags: u8,
    gso_type: u8,
    hdr_len: usize,
    gso_size: usize,
    csum_start: usize,
    csum_offset: usize,
) -> [u8; HDR_LEN] {
    let mut h = [0u8; HDR_LEN];
    h[0] = flags;
    h[1] = gso_type;
    for (at, v) in [
        (2, hdr_len),
        (4, gso_size),
        (6, csum_start),
        (8, csum_offset),
    ] {
        h[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes());
    }
    h
}

/// Whether `frame` (IPv4 at `ip`, TCP after it) has valid IP and TCP
/// checksums and an IP total length matching its size.
pub(crate) fn tcp4_valid(frame: &[u8], ip: usize) -> bool {
    let tcp = ip + 20;
    let total = u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]) as usize;
    total == frame.len() - ip
        && sum16(&[&frame[ip..tcp]]) == 0xffff
        && sum16(&[&pseudo_v4(&frame[ip..], frame.len() - tcp), &frame[tcp..]]) == 0xffff
}

type Got = Arc<Mutex<Vec<([u8; HDR_LEN], Vec<u8>)>>>;

/// Takes `accepts`; records each frame with the header it would write.
struct Recorder {
    accepts: Accepts,
    got: Got,
}

impl FrameSink for Recorder {
    fn deliver(&self, batch: &[Delivery], frames: &[FrameSource], report: &mut dyn DeliveryReport) {
        for d in batch {
            let frame = &frames[d.frame];
            assert!(
                self.accepts.contains(frame.offload().needs()),
                "a sink got an offload it does not take"
            );
            let hdr = egress_header(frame.offload(), d.egress.shift(), self.accepts, 1);
            self.got.lock().unwrap().push((hdr, d.bytes(frames)));
            report.outcome(d, Ok(()));
        }
    }

    fn accepts(&self) -> Accepts {
        self.accepts
    }
}

fn vid(v: u16) -> VlanId {
    VlanId::new(v).unwrap()
}

fn trunk(v: u16) -> VlanMode {
    VlanMode::Trunk {
        allowed: [vid(v)].into_iter().collect::<VlanSet>(),
        native: None,
    }
}

/// A switch whose ports each record what they get.
struct Bench {
    switch: Switch,
    table: PortTable,
}

impl Bench {
    fn new() -> Bench {
        Bench {
            switch: Switch::new("br0", 100, 100, 300),
            table: PortTable::default(),
        }
    }

    fn port(&self, name: &str, mode: VlanMode, accepts: Accepts) -> (PortId, Got) {
        let id = self.switch.add_port(name, mode, 1500).unwrap();
        self.switch.set_link(id, true);
        let got = Got::default();
        let sink = Recorder {
            accepts,
            got: got.clone(),
        };
        self.table.publish(id, Box::new(sink));
        (id, got)
    }

    /// Sends `frame` behind `hdr` in on `from`, a guest that negotiated `allowed`.
    fn send(&self, from: PortId, allowed: Accepts, hdr: &[u8; HDR_LEN], frame: &[u8]) {
        self.send_from(from, allowed, HeaderFrom::Guest, hdr, frame)
    }

    fn send_from(
        &self,
        from: PortId,
        allowed: Accepts,
        writer: HeaderFrom,
        hdr: &[u8; HDR_LEN],
        frame: &[u8],
    ) {
        let mut buf = hdr.to_vec();
        buf.extend_from_slice(frame);
        let segments = [VolatileSlice::from(&mut buf[..])];
        let mut frames = Vec::new();
        let mut dropped = Vec::new();
        match FrameSource::with_header(&segments, allowed, writer) {
            Ok(f) => frames.push(f),
            Err(reason) => dropped.push(reason),
        }
        let ingress = Ingress {
            id: from,
            switch: &self.switch,
            table: &self.table,
            queue: 0,
        };
        forward(&ingress, &frames, &dropped, &mut ForwardScratch::default());
    }

    fn counters(&self, id: PortId) -> PortCountersSnapshot {
        self.switch
            .topology()
            .port(id)
            .unwrap()
            .state
            .counters
            .snapshot()
    }
}

fn tso() -> Accepts {
    Accepts::CSUM | Accepts::TSO4 | Accepts::TSO6
}

/// Between ports that take TSO a 64 KiB-class frame passes as it is, with its
/// header; a tag pushed on the way out moves csum_start and hdr_len by +4, a
/// tag popped by -4.
#[test]
fn gso_frames_pass_intact_with_their_header_shifted_by_the_tag() {
    let b = Bench::new();
    let (access_in, _) = b.port("access-in", VlanMode::Access(vid(10)), tso());
    let (trunk_out, trunk_got) = b.port("trunk-out", trunk(10), tso());
    let frame = tcp4_frame(None, 60_000);
    b.send(access_in, tso(), &tso4_header(false, MSS), &frame);

    let got = trunk_got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "one frame, not segments");
    let (hdr, bytes) = &got[0];
    // Tag pushed: csum_start 34 -> 38, hdr_len 54 -> 58; gso_size kept.
    assert_eq!(
        hdr,
        &header(NEEDS_CSUM, GSO_TCPV4, 58, MSS, 38, 16).map_num_buffers(1)
    );
    assert_eq!(bytes.len(), frame.len() + 4);
    assert_eq!(&bytes[12..16], &[0x81, 0x00, 0x00, 10]);
    assert_eq!(&bytes[16..], &frame[12..], "the frame itself untouched");
    let c = b.counters(trunk_out);
    assert_eq!((c.tx_packets, c.tx_gso_packets, c.gso_segmented), (1, 1, 0));

    // The way back: tagged in on the trunk, popped towards the access port.
    let b = Bench::new();
    let (trunk_in, _) = b.port("trunk-in", trunk(10), tso());
    let (access_out, access_got) = b.port("access-out", VlanMode::Access(vid(10)), tso());
    let frame = tcp4_frame(Some(10), 60_000);
    b.send(trunk_in, tso(), &tso4_header(true, MSS), &frame);
    let got = access_got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let (hdr, bytes) = &got[0];
    assert_eq!(
        hdr,
        &header(NEEDS_CSUM, GSO_TCPV4, 54, MSS, 34, 16).map_num_buffers(1)
    );
    assert_eq!(&bytes[12..], &frame[16..]);
    assert_eq!(b.counters(access_out).tx_gso_packets, 1);
}

trait NumBuffers {
    fn map_num_buffers(self, n: u16) -> Self;
}

impl NumBuffers for [u8; HDR_LEN] {
    fn map_num_buffers(mut self, n: u16) -> Self {
        self[10..12].copy_from_slice(&n.to_le_bytes());
        self
    }
}

/// Towards a port without TSO the super-frame arrives as ceil(payload / mss)
/// complete frames, each within the MTU, with valid checksums, the payload
/// in order; towards one that takes it, intact. Both from one flood.
#[test]
fn gso_frames_are_segmented_for_a_port_without_tso() {
    let b = Bench::new();
    let (src, _) = b.port("src", VlanMode::Access(vid(10)), tso());
    let (plain, plain_got) = b.port("plain", trunk(10), Accepts::NONE);
    let (csum_only, csum_got) = b.port("csum", VlanMode::Access(vid(10)), Accepts::CSUM);
    let (tso_port, tso_got) = b.port("tso", VlanMode::Access(vid(10)), tso());
    let payload = 60_000;
    let frame = tcp4_frame(None, payload);
    b.send(src, tso(), &tso4_header(false, MSS), &frame);

    let want = payload.div_ceil(MSS);
    for (got, tagged) in [(&plain_got, true), (&csum_got, false)] {
        let got = got.lock().unwrap().clone();
        assert_eq!(got.len(), want);
        let ip = if tagged { 18 } else { 14 };
        let mut data = Vec::new();
        for (i, (hdr, seg)) in got.iter().enumerate() {
            assert_eq!(hdr[..10], [0u8; 10], "segments carry no offload");
            assert!(seg.len() - ip <= 1500, "segment {i}: {} bytes", seg.len());
            assert!(tcp4_valid(seg, ip), "segment {i}: bad checksum or length");
            let seq = u32::from_be_bytes(seg[ip + 24..ip + 28].try_into().unwrap());
            assert_eq!(seq as usize, 1 + i * MSS);
            data.extend_from_slice(&seg[ip + 40..]);
        }
        assert_eq!(data, frame[HDR_LEN_TCP4..], "payload in order, complete");
    }
    assert_eq!(tso_got.lock().unwrap().len(), 1);
    for (port, segmented) in [(plain, want), (csum_only, want)] {
        let c = b.counters(port);
        assert_eq!(
            (c.tx_packets, c.gso_segmented, c.tx_gso_packets),
            (segmented as u64, 1, 0)
        );
    }
    assert_eq!(b.counters(tso_port).tx_gso_packets, 1);
}

/// A partial checksum is completed for a port without CSUM and passed with
/// NEEDS_CSUM to one that takes it.
#[test]
fn partial_checksums_are_completed_for_a_port_without_csum() {
    let b = Bench::new();
    let (src, _) = b.port("src", VlanMode::Access(vid(10)), Accepts::CSUM);
    let (plain, plain_got) = b.port("plain", trunk(10), Accepts::NONE);
    let (takes, takes_got) = b.port("takes", trunk(10), Accepts::CSUM);
    let frame = tcp4_frame(None, 1000);
    let hdr = header(NEEDS_CSUM, 0, 0, 0, L4, 16);
    b.send(src, Accepts::CSUM, &hdr, &frame);

    let got = plain_got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0[..10], [0u8; 10]);
    assert!(tcp4_valid(&got[0].1, 18));
    assert_eq!(b.counters(plain).csum_completed, 1);
    let got = takes_got.lock().unwrap().clone();
    assert_eq!(
        got[0].0,
        header(NEEDS_CSUM, 0, 0, 0, L4 + 4, 16).map_num_buffers(1)
    );
    assert!(!tcp4_valid(&got[0].1, 18), "left partial for the peer");
    assert_eq!(b.counters(takes).csum_completed, 0);
}

/// Every kind of bad header is dropped at ingress and counted once under
/// its own reason; nothing reaches any port.
#[test]
fn bad_metadata_is_dropped_under_its_own_reason() {
    let b = Bench::new();
    let (src, _) = b.port("src", VlanMode::Access(vid(10)), tso());
    let (_, out_got) = b.port("out", VlanMode::Access(vid(10)), Accepts::NONE);
    let frame = tcp4_frame(None, 20_000);
    let huge = tcp4_frame(None, 66_000);
    let cases: [(DropReason, [u8; HDR_LEN], &[u8]); 6] = [
        (
            DropReason::GsoSizeZero,
            header(NEEDS_CSUM, GSO_TCPV4, HDR_LEN_TCP4, 0, L4, 16),
            &frame,
        ),
        (
            DropReason::HeaderPastFrame,
            header(NEEDS_CSUM, GSO_TCPV4, frame.len() + 1, MSS, L4, 16),
            &frame,
        ),
        (
            DropReason::CsumOutsideFrame,
            header(NEEDS_CSUM, 0, 0, 0, frame.len() - 17, 16),
            &frame,
        ),
        (
            DropReason::CsumNotL4,
            header(NEEDS_CSUM, GSO_TCPV4, HDR_LEN_TCP4, MSS, L4, 10),
            &frame,
        ),
        (DropReason::TooManySegments, tso4_header(false, MSS), &huge),
        (
            DropReason::GsoUnsupported,
            header(NEEDS_CSUM, GSO_UDP, HDR_LEN_TCP4, MSS, L4, 16),
            &frame,
        ),
    ];
    for (i, (reason, hdr, frame)) in cases.iter().enumerate() {
        b.send(src, tso(), hdr, frame);
        let c = b.counters(src);
        assert_eq!(c.dropped(*reason), 1, "{reason:?}");
        assert_eq!(c.total_drops(), i as u64 + 1, "{reason:?} counted once");
        assert_eq!(c.rx_packets, 0);
    }
    assert!(out_got.lock().unwrap().is_empty());
}

/// An offload the port did not negotiate is dropped: GSO from a guest without
/// HOST_TSO4, a partial checksum from one without CSUM.
#[test]
fn an_offload_the_port_did_not_negotiate_is_dropped() {
    let b = Bench::new();
    let (src, _) = b.port("src", VlanMode::Access(vid(10)), tso());
    let (_, out_got) = b.port("out", VlanMode::Access(vid(10)), tso());
    let frame = tcp4_frame(None, 20_000);
    b.send(src, Accepts::CSUM, &tso4_header(false, MSS), &frame);
    b.send(
        src,
        Accepts::NONE,
        &header(NEEDS_CSUM, 0, 0, 0, L4, 16),
        &frame,
    );
    let c = b.counters(src);
    assert_eq!(c.dropped(DropReason::OffloadNotNegotiated), 2);
    assert_eq!(c.total_drops(), 2);
    assert!(out_got.lock().unwrap().is_empty());
    // Negotiated, the same frame passes.
    b.send(src, tso(), &tso4_header(false, MSS), &frame);
    assert_eq!(out_got.lock().unwrap().len(), 1);
}

/// DATA_VALID from the kernel (a TAP read) reaches a port that takes checksum
/// offload; from a guest, which must not set it, it reaches nobody: a guest
/// cannot make another skip checking its checksums.
#[test]
fn data_valid_is_passed_from_the_kernel_only() {
    const DATA_VALID: u8 = 2;
    let b = Bench::new();
    let (src, _) = b.port("src", VlanMode::Access(vid(10)), tso());
    let (_, got) = b.port("out", VlanMode::Access(vid(10)), Accepts::CSUM);
    let (_, plain_got) = b.port("plain", VlanMode::Access(vid(10)), Accepts::NONE);
    let frame = tcp4_frame(None, 100);
    let hdr = header(DATA_VALID, 0, 0, 0, 0, 0);
    b.send_from(src, tso(), HeaderFrom::Kernel, &hdr, &frame);
    b.send_from(src, tso(), HeaderFrom::Guest, &hdr, &frame);
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, hdr.map_num_buffers(1), "the kernel's flag kept");
    assert_eq!(
        got[1].0,
        [0u8; HDR_LEN].map_num_buffers(1),
        "the guest's dropped"
    );
    for (h, _) in plain_got.lock().unwrap().iter() {
        assert_eq!(h[0], 0, "no DATA_VALID without GUEST_CSUM");
    }
}
