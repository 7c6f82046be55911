//! Offloads through the switch between harness guests (the real daemon in
//! process, `GuestNic`s negotiating or refusing the offload features): a
//! 64 KiB TSO frame reaches a guest that took GUEST_TSO4 as it was sent, with
//! its header, and a guest that did not as MTU-sized segments with valid
//! checksums; bad headers are dropped and counted.

use test_kit::frontend as support;

use std::time::Duration;
use support::fabric::{Fabric, WAIT};
use support::frames::{payload, tcp4_check, tcp4_partial, tcp4_payload};
use support::virtio_net::{
    features, VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
};
use support::{mac, GuestNic, NicOptions};
use vswitch::DropReason;

const QUIET: Duration = Duration::from_millis(300);
const ACCESS10: &str = "{ mode = \"access\", tag = 10 }";
/// TCP payload per segment for a 1500-byte MTU (no options).
const MSS: u16 = 1460;
/// Ethernet + IPv4 + TCP.
const HEADERS: u16 = 54;
const CSUM_START: u16 = 34;
const TCP_CSUM_OFFSET: u16 = 16;

/// The header a Linux guest sends a TSO4 frame with.
fn tso4_header() -> VirtioNetHdr {
    VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: HEADERS,
        gso_size: MSS,
        csum_start: CSUM_START,
        csum_offset: TCP_CSUM_OFFSET,
        num_buffers: 0,
    }
}

/// A sender with the host offloads, and three receivers on VLAN 10: one with
/// GUEST_TSO4 and mergeable buffers, one without any offload, one with
/// GUEST_TSO4 but neither mergeable nor big buffers.
fn sender_and_receivers() -> (Fabric, GuestNic, GuestNic, GuestNic, GuestNic) {
    let f = Fabric::start(
        "",
        &[
            ("tx", ACCESS10),
            ("tso", ACCESS10),
            ("plain", ACCESS10),
            ("small", ACCESS10),
        ],
    );
    let tx = f.connect_with(
        "tx",
        NicOptions::with_features(features::HOST_OFFLOADS | features::GUEST_OFFLOADS),
    );
    let tso = f.connect_with("tso", NicOptions::with_features(features::GUEST_OFFLOADS));
    let plain = f.connect_with("plain", NicOptions::default());
    let small = f.connect_with(
        "small",
        NicOptions {
            mrg_rxbuf: false,
            rx_buffer_len: 2048,
            extra_features: features::GUEST_OFFLOADS,
            ..Default::default()
        },
    );
    for (nic, wanted) in [
        (&tx, features::HOST_TSO4),
        (&tso, features::GUEST_TSO4 | features::MRG_RXBUF),
        (&small, features::GUEST_TSO4),
    ] {
        assert_eq!(
            nic.negotiated_features() & wanted,
            wanted,
            "offered and taken"
        );
    }
    assert_eq!(plain.negotiated_features() & features::GUEST_TSO4, 0);
    assert_eq!(small.negotiated_features() & features::MRG_RXBUF, 0);
    (f, tx, tso, plain, small)
}

#[test]
fn a_tso_frame_passes_intact_to_a_tso_guest_and_is_segmented_for_the_others() {
    let (f, mut tx, mut tso, mut plain, mut small) = sender_and_receivers();
    let data = payload(7, 65_000);
    // Unknown destination: flooded to all three receivers.
    let frame = tcp4_partial(mac(99), mac(1), 1000, &data);
    assert!(tx.send_with_header(&tso4_header(), &frame));

    // A guest that takes TSO gets the super-frame and the header as sent.
    let (hdr, got) = tso.recv_with_header(WAIT).expect("the TSO guest gets it");
    assert_eq!(got, frame, "one frame, byte for byte");
    let sent = tso4_header();
    assert_eq!(
        (hdr.flags, hdr.gso_type, hdr.hdr_len, hdr.gso_size),
        (sent.flags, sent.gso_type, sent.hdr_len, sent.gso_size)
    );
    assert_eq!(
        (hdr.csum_start, hdr.csum_offset),
        (CSUM_START, TCP_CSUM_OFFSET)
    );
    assert!(hdr.num_buffers > 1, "64 KiB over 2 KiB mergeable buffers");
    assert!(tso.recv(QUIET).is_none(), "nothing else");

    // The others get ceil(payload / mss) complete frames within the MTU.
    let segments = data.len().div_ceil(usize::from(MSS));
    for (name, nic) in [("plain", &mut plain), ("small", &mut small)] {
        let mut got = Vec::new();
        while let Some((hdr, seg)) = nic.recv_with_header(WAIT) {
            assert_eq!((hdr.flags, hdr.gso_type), (0, 0), "{name}: no offload left");
            got.push(seg);
            if got.len() == segments {
                break;
            }
        }
        assert_eq!(got.len(), segments, "{name}");
        assert!(
            nic.recv(QUIET).is_none(),
            "{name}: exactly {segments} frames"
        );
        let mut joined = Vec::new();
        for (i, seg) in got.iter().enumerate() {
            assert!(seg.len() <= 1514, "{name} segment {i}: {} bytes", seg.len());
            tcp4_check(seg).unwrap_or_else(|e| panic!("{name} segment {i}: {e}"));
            let (seq, bytes) = tcp4_payload(seg);
            assert_eq!(seq as usize, 1000 + joined.len(), "{name} segment {i}");
            joined.extend_from_slice(bytes);
        }
        assert!(joined == data, "{name}: the payload, in order, complete");
    }

    let c = f.counters("tso");
    assert_eq!((c.tx_packets, c.tx_gso_packets, c.gso_segmented), (1, 1, 0));
    for name in ["plain", "small"] {
        let c = f.counters(name);
        assert_eq!(
            (
                c.tx_packets,
                c.tx_gso_packets,
                c.gso_segmented,
                c.total_drops()
            ),
            (segments as u64, 0, 1, 0),
            "{name}"
        );
    }
    assert_eq!(f.counters("tx").rx_packets, 1);
}

/// A guest that did not negotiate HOST_TSO4 sending TSO, and one that did
/// sending a header with gso_size 0: dropped at ingress, each under its
/// reason, nothing delivered; the TX chains are returned all the same.
#[test]
fn bad_and_unnegotiated_offloads_from_a_guest_are_dropped_and_counted() {
    let f = Fabric::start("", &[("tx", ACCESS10), ("old", ACCESS10), ("rx", ACCESS10)]);
    let mut tx = f.connect_with("tx", NicOptions::with_features(features::HOST_OFFLOADS));
    let mut old = f.connect_with("old", NicOptions::default());
    let mut rx = f.connect_with("rx", NicOptions::with_features(features::GUEST_OFFLOADS));
    assert_eq!(old.negotiated_features() & features::HOST_TSO4, 0);

    let frame = tcp4_partial(mac(99), mac(2), 1, &payload(3, 20_000));
    assert!(old.send_with_header(&tso4_header(), &frame));
    let zero = VirtioNetHdr {
        gso_size: 0,
        ..tso4_header()
    };
    assert!(tx.send_with_header(&zero, &frame));
    assert!(old.wait_tx_completed(WAIT) && tx.wait_tx_completed(WAIT));
    assert!(rx.recv(QUIET).is_none());
    let c = f.counters("old");
    assert_eq!(c.dropped(DropReason::OffloadNotNegotiated), 1);
    assert_eq!((c.total_drops(), c.rx_packets), (1, 0));
    let c = f.counters("tx");
    assert_eq!(c.dropped(DropReason::GsoSizeZero), 1);
    assert_eq!((c.total_drops(), c.rx_packets), (1, 0));
}
