//! Self-test of the in-process frontend harness (`test-kit/src/frontend`) against a backend we did
//! not write: DPDK's vhost PMD (`net_vhost`) inside `dpdk-testpmd`.
//!
//! - one port, `--forward-mode=macswap`: every frame comes back with its MACs swapped;
//! - two ports, `--forward-mode=io`: testpmd is a wire, smoltcp endpoints ping and TCP.
//!
//! These tests fail (never skip) when dpdk-testpmd is missing.

use test_kit::frontend as support;

use std::time::Duration;

use support::frames::{self, payload, ETHERTYPE_TEST};
use support::smol::{ping, tcp_transfer, Endpoint};
use support::split_ring::{need_event, VIRTQ_DESC_F_NEXT};
use support::virtio_net::{features, VirtioNetHdr, VNET_HDR_LEN};
use support::{mac, GuestNic, NicOptions, RawDesc};
use test_kit::serial;
use test_kit::testpmd::vhost_peer::Testpmd;

// testpmd busy-polls a core: its tests take the kit's `serial` lock, one at a
// time on a 2-core machine.

const WAIT: Duration = Duration::from_secs(5);

/// What macswap sends back for `frame`.
fn swapped(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[0..6].copy_from_slice(&frame[6..12]);
    f[6..12].copy_from_slice(&frame[0..6]);
    f
}

fn test_frame(seq: u32, len: usize) -> Vec<u8> {
    frames::eth(
        mac(0xffff),
        mac(seq),
        ETHERTYPE_TEST,
        &payload(seq, len - 14),
    )
}

/// Connects to port `port` of a macswap testpmd and waits until it echoes.
///
/// net_vhost marks a port ready a little after the last vhost-user message is
/// acked, and drops what arrives before; probing until a frame comes back keeps
/// the tests from racing that (a lost first frame failed CI once).
fn connect_ready(pmd: &Testpmd, port: usize, opts: NicOptions) -> GuestNic {
    let mut nic = GuestNic::connect(pmd.socket(port), opts).expect("connect");
    let probe = test_frame(0xfffe, 60);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        assert!(nic.send(&probe), "TX ring full while probing");
        if nic.recv(Duration::from_millis(100)).is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "testpmd never echoed a probe"
        );
    }
    // Echoes of earlier probes that arrive late.
    while nic.recv(Duration::from_millis(50)).is_some() {}
    nic
}

/// Sends each frame and expects it back, swapped, in order.
fn echo_each(nic: &mut GuestNic, sizes: &[usize]) {
    for (i, &len) in sizes.iter().enumerate() {
        let f = test_frame(i as u32 + 1, len);
        assert!(nic.send(&f), "TX ring full at frame {i}");
        let got = nic
            .recv(WAIT)
            .unwrap_or_else(|| panic!("no echo for frame {i} ({len} bytes)"));
        assert_eq!(got, swapped(&f), "echo of frame {i} ({len} bytes) differs");
    }
}

#[test]
fn need_event_follows_the_spec() {
    // vring_need_event(event, new, old): notify iff event is in [old, new).
    assert!(need_event(5, 6, 3));
    assert!(!need_event(5, 5, 3));
    assert!(need_event(3, 4, 3));
    assert!(need_event(0xffff, 2, 0xfffe));
    assert!(!need_event(10, 2, 0xfffe));
}

#[test]
fn frame_builders() {
    let f = frames::tagged(frames::BROADCAST, mac(7), 100, 0x0800, &[1, 2]);
    assert_eq!(f.len(), 20);
    assert_eq!(frames::vid_of(&f), Some(100));
    assert_eq!(frames::src_of(&f), [2, 0, 0, 0, 0, 7]);
    assert_eq!(mac(7)[0] & 0x03, 0x02, "locally administered unicast");
    let hdr = VirtioNetHdr {
        flags: 1,
        gso_type: 1,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 3,
    };
    assert_eq!(VirtioNetHdr::from_bytes(&hdr.to_bytes()), hdr);
}

#[test]
fn macswap_echo_default_options() {
    let _g = serial();
    let pmd = Testpmd::vhost("echo", 1, "macswap");
    let mut nic = connect_ready(&pmd, 0, NicOptions::default());
    let f = nic.negotiated_features();
    for (bit, name) in [
        (features::VERSION_1, "VERSION_1"),
        (features::MRG_RXBUF, "MRG_RXBUF"),
        (features::EVENT_IDX, "EVENT_IDX"),
        (features::PROTOCOL_FEATURES, "PROTOCOL_FEATURES"),
    ] {
        assert!(f & bit != 0, "{name} not negotiated with net_vhost: {f:#x}");
    }
    assert_eq!(f & features::INDIRECT_DESC, 0, "indirect not requested");

    // Sizes around the interesting edges; send() alternates combined/split layouts.
    echo_each(&mut nic, &[60, 61, 64, 65, 128, 500, 1000, 1513, 1514]);

    // A batch: all posted with one kick at most, all come back in order.
    let batch: Vec<Vec<u8>> = (0..64)
        .map(|i| test_frame(1000 + i, 64 + i as usize))
        .collect();
    let refs: Vec<&[u8]> = batch.iter().map(|f| f.as_slice()).collect();
    let kicks = nic.kicks();
    assert_eq!(nic.send_batch(&refs), 64);
    assert!(nic.kicks() - kicks <= 1, "send_batch kicked more than once");
    let got = nic.recv_all(Duration::from_millis(500));
    assert_eq!(got.len(), 64, "batch echoes");
    for (i, (g, f)) in got.iter().zip(&batch).enumerate() {
        assert_eq!(g, &swapped(f), "batch frame {i}");
    }
    assert!(nic.wait_tx_completed(WAIT), "TX chains not all used");
    assert_eq!(nic.tx_completed(), nic.tx_posted());
    assert_eq!(nic.missed_notifications(), 0);
    // net_vhost does not offer VHOST_USER_PROTOCOL_F_CONFIG: config reads give None.
    if nic.config().is_none() {
        assert_eq!(nic.config_mac(), [0; 6]);
    }
}

#[test]
fn macswap_echo_without_mrg_or_event_idx_with_indirect() {
    let _g = serial();
    let pmd = Testpmd::vhost("plain", 1, "macswap");
    let opts = NicOptions {
        event_idx: false,
        indirect: true,
        ..NicOptions::without_mrg()
    };
    let mut nic = connect_ready(&pmd, 0, opts);
    let f = nic.negotiated_features();
    assert_eq!(f & (features::MRG_RXBUF | features::EVENT_IDX), 0);
    assert!(
        f & features::INDIRECT_DESC != 0,
        "net_vhost offers INDIRECT_DESC"
    );
    // Three layouts now rotate: combined, split, indirect.
    echo_each(&mut nic, &[60, 64, 100, 200, 1000, 1514, 61, 62, 63]);
    assert!(nic.wait_tx_completed(WAIT));
    assert_eq!(nic.missed_notifications(), 0);
}

#[test]
fn mergeable_rx_buffers_are_reassembled() {
    let _g = serial();
    let pmd = Testpmd::vhost("mrg", 1, "macswap");
    let opts = NicOptions {
        rx_buffer_len: 256,
        ..NicOptions::default()
    };
    let mut nic = connect_ready(&pmd, 0, opts);
    for (i, len) in [1514usize, 300, 244 + 12, 1000].into_iter().enumerate() {
        let f = test_frame(i as u32 + 77, len);
        assert!(nic.send(&f));
        let (hdr, got) = nic.recv_with_header(WAIT).expect("echo");
        assert_eq!(got, swapped(&f), "frame of {len} bytes");
        let expect_bufs = (len + VNET_HDR_LEN).div_ceil(256) as u16;
        assert_eq!(hdr.num_buffers, expect_bufs, "num_buffers for {len} bytes");
    }
}

/// The polling receive of the benches counts whole frames, each once,
/// however many buffers it spans, and leaves `recv` working after it.
#[test]
fn polled_receive_counts_whole_frames() {
    let _g = serial();
    let pmd = Testpmd::vhost("poll", 1, "macswap");
    let opts = NicOptions {
        rx_buffer_len: 256,
        ..NicOptions::default()
    };
    let mut nic = connect_ready(&pmd, 0, opts);
    // 1, 6, 2 and 4 buffers of 256 bytes with the 12-byte header: 130 of
    // the 256 buffers for all 40 (testpmd drops what finds none).
    let sizes = [60usize, 1514, 300, 1000];
    let frames: Vec<Vec<u8>> = (0..40)
        .map(|i| test_frame(i + 1, sizes[i as usize % sizes.len()]))
        .collect();
    let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
    assert_eq!(nic.send_batch(&refs), frames.len(), "TX ring full");
    let deadline = std::time::Instant::now() + WAIT;
    let mut polled = 0;
    while polled < frames.len() && std::time::Instant::now() < deadline {
        polled += nic.poll_rx_frames();
    }
    assert_eq!(
        polled,
        frames.len(),
        "frames counted by the polling receive"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(nic.poll_rx_frames(), 0, "nothing more came back");
    echo_each(&mut nic, &sizes);
}

#[test]
fn indices_wrap_around_with_a_small_ring() {
    let _g = serial();
    let pmd = Testpmd::vhost("wrap", 1, "macswap");
    let opts = NicOptions {
        queue_size: 64,
        rx_buffers: 64,
        ..NicOptions::default()
    };
    let mut nic = connect_ready(&pmd, 0, opts);
    // 70000 frames > 65536: avail/used idx of both rings wrap at least once.
    let total = 70_000u32;
    let probes = nic.tx_completed();
    let mut next = 0u32;
    let mut received = 0u32;
    while received < total {
        let batch: Vec<Vec<u8>> = (next..total.min(next + 16))
            .map(|i| test_frame(i, 60))
            .collect();
        let refs: Vec<&[u8]> = batch.iter().map(|f| f.as_slice()).collect();
        let sent = nic.send_batch(&refs);
        for f in &batch[..sent] {
            let got = nic
                .recv(WAIT)
                .unwrap_or_else(|| panic!("lost frame after {received} echoes"));
            assert_eq!(got, swapped(f), "frame {received}");
            received += 1;
        }
        next += sent as u32;
    }
    assert!(nic.wait_tx_completed(WAIT));
    assert_eq!(nic.tx_completed(), probes + u64::from(total));
    assert_eq!(nic.missed_notifications(), 0);
}

#[test]
fn raw_chain_with_three_descriptors_is_echoed() {
    let _g = serial();
    let pmd = Testpmd::vhost("raw", 1, "macswap");
    let mut nic = connect_ready(&pmd, 0, NicOptions::default());
    let f = test_frame(5, 200);
    let hdr = nic.guest_alloc(&VirtioNetHdr::default().to_bytes());
    let part1 = nic.guest_alloc(&f[..50]);
    let part2 = nic.guest_alloc(&f[50..]);
    // Chain order in the table is deliberately not the slice order: 0 -> 2 -> 1.
    let descs = [
        RawDesc {
            addr: hdr,
            len: VNET_HDR_LEN as u32,
            flags: VIRTQ_DESC_F_NEXT,
            next: 2,
        },
        RawDesc {
            addr: part2,
            len: (f.len() - 50) as u32,
            flags: 0,
            next: 0,
        },
        RawDesc {
            addr: part1,
            len: 50,
            flags: VIRTQ_DESC_F_NEXT,
            next: 1,
        },
    ];
    assert!(nic.send_raw_chain(&descs));
    assert_eq!(nic.recv(WAIT), Some(swapped(&f)));
    assert!(nic.wait_tx_completed(WAIT));
    // The descriptors came back: a normal frame still works.
    echo_each(&mut nic, &[64]);
}

#[test]
fn reconnect_after_disconnect() {
    let _g = serial();
    let pmd = Testpmd::vhost("reconnect", 1, "macswap");
    for round in 0..3 {
        let mut nic = connect_ready(&pmd, 0, NicOptions::default());
        echo_each(&mut nic, &[60, 1514]);
        assert!(nic.wait_tx_completed(WAIT), "round {round}");
        nic.disconnect();
    }
}

#[test]
fn smoltcp_ping_and_tcp_over_a_testpmd_wire() {
    let _g = serial();
    let pmd = Testpmd::vhost("wire", 2, "io");
    let a = GuestNic::connect(pmd.socket(0), NicOptions::default()).expect("connect a");
    let b = GuestNic::connect(pmd.socket(1), NicOptions::default()).expect("connect b");
    let mut a = Endpoint::new(a, mac(1), [10, 0, 0, 1]);
    let mut b = Endpoint::new(b, mac(2), [10, 0, 0, 2]);

    // net_vhost marks a port ready asynchronously, a little after the last vhost-user
    // message is acked; frames sent before that are dropped. An ARP request lost that way
    // costs a full second (smoltcp re-ARPs at most once per second).
    std::thread::sleep(Duration::from_millis(300));
    let rtt = ping(&mut a, &mut b, Duration::from_secs(10)).expect("ping a -> b");
    eprintln!("ping rtt {rtt:?}");
    let rtt2 = ping(&mut b, &mut a, Duration::from_secs(10)).expect("ping b -> a");
    let rtt3 = ping(&mut a, &mut b, Duration::from_secs(10)).expect("ping a -> b again");
    eprintln!("ping rtt b->a {rtt2:?}, a->b again {rtt3:?}");

    let mib = 4;
    let took = tcp_transfer(&mut a, &mut b, mib << 20, 0x5eed, Duration::from_secs(60))
        .expect("tcp a -> b");
    eprintln!(
        "tcp {mib} MiB in {took:?} ({:.1} MiB/s)",
        mib as f64 / took.as_secs_f64()
    );
    tcp_transfer(&mut b, &mut a, 1 << 20, 7, Duration::from_secs(60)).expect("tcp b -> a");
    assert_eq!(a.nic().missed_notifications(), 0);
    assert_eq!(b.nic().missed_notifications(), 0);
}
