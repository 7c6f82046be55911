//! Replays the frames captured from the kernel (`fixtures/`, made by
//! `kernel_capture.rs`): our segmentation and checksum completion of each input
//! must equal, byte for byte, what Linux's own software GSO / checksum help put
//! on a veth for the same input. No root needed.

mod common;

use common::{assert_same, ours, read_fixture, CASES};
use fabric_offload::{csum, Offload, VnetHdr, VNET_HDR_LEN};

#[test]
fn every_captured_case_matches_the_kernel_byte_for_byte() {
    for (name, _) in CASES {
        let f = read_fixture(name);
        assert!(!f.kernel.is_empty(), "{name}: no kernel output recorded");
        let got = ours(&f.input).unwrap_or_else(|e| panic!("{name}: refused: {e}"));
        assert_same(name, &f.input, &got, &f.kernel);
        for (i, seg) in got.iter().enumerate() {
            assert!(csum::l4_csum_valid(seg), "{name}: segment {i} L4 checksum");
            assert!(
                csum::ip_csum_valid(seg),
                "{name}: segment {i} IPv4 checksum"
            );
        }
    }
}

/// The cases hold what their names promise (so a re-capture that caught the
/// wrong frames fails here, not silently).
#[test]
fn the_fixtures_cover_what_they_claim() {
    let meaning = |name: &str| {
        let f = read_fixture(name);
        let hdr = VnetHdr::read(&f.input).unwrap();
        let frame = &f.input[VNET_HDR_LEN..];
        let off = Offload::parse(&hdr, frame, frame.len()).unwrap();
        (hdr, off, f)
    };
    for name in ["ipv4_tcp_tso", "ipv6_tcp_tso", "ipv4_tcp_tso_vlan"] {
        let (_, off, f) = meaning(name);
        assert!(off.gso.is_some(), "{name}");
        assert!(
            (3..=6).contains(&f.kernel.len()),
            "{name}: {} segments",
            f.kernel.len()
        );
    }
    let (_, off, f) = meaning("ipv4_tcp_tso_vlan");
    assert_eq!(
        &f.input[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14],
        &[0x81, 0x00]
    );
    assert_eq!(off.gso.unwrap().l3(), 18);
    let flags = |seg: &[u8]| seg[14 + 20 + 13];
    for (name, flag) in [("ipv4_tcp_tso_fin", 0x01), ("ipv4_tcp_tso_psh", 0x08)] {
        let (_, _, f) = meaning(name);
        let last = f.kernel.len() - 1;
        assert!(last >= 1, "{name}");
        assert_eq!(flags(&f.kernel[last]) & flag, flag, "{name}: on the last");
        assert!(
            f.kernel[..last].iter().all(|s| flags(s) & flag == 0),
            "{name}"
        );
    }
    let (hdr, off, f) = meaning("ipv4_tcp_tso_cwr_ecn");
    assert!(off.gso.unwrap().ecn && hdr.gso_type & 0x80 != 0);
    assert_eq!(flags(&f.kernel[0]) & 0x80, 0x80, "CWR on the first");
    assert!(f.kernel[1..].iter().all(|s| flags(s) & 0x80 == 0));
    for name in ["ipv4_udp_uso", "ipv6_udp_uso"] {
        let (_, off, f) = meaning(name);
        assert!(off.gso.is_some(), "{name}");
        assert_eq!(f.kernel.len(), 5, "{name}");
    }
    for name in ["ipv4_tcp_csum_only", "ipv6_tcp_csum_only"] {
        let (_, off, f) = meaning(name);
        assert!(off.gso.is_none() && off.csum.is_some(), "{name}");
        assert_eq!(f.kernel.len(), 1);
        let (start, _) = off.csum.unwrap();
        let frame = &f.input[VNET_HDR_LEN..];
        assert!(
            csum::is_partial_csum(frame, start.into(), 6),
            "{name}: input is partial"
        );
        assert!(!csum::l4_csum_valid(frame), "{name}: input is not complete");
    }
}
