//! Crafted headers: each drop reason from the metadata that causes it, the
//! "not really GSO" rule, tag shifting, and what a port needs.

mod common;

use common::build::{frame, Spec};
use common::SCRATCH;
use fabric_offload::hdr::{
    DATA_VALID, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4, NEEDS_CSUM,
};
use fabric_offload::headers::{IpVersion, L4Proto, Layout};
use fabric_offload::{segment, Accepts, GsoKind, Offload, OffloadError, VnetHdr};

fn hdr(flags: u8, gso_type: u8, gso_size: u16, l: &Layout) -> VnetHdr {
    VnetHdr {
        flags,
        gso_type,
        hdr_len: l.hdr_len as u16,
        gso_size,
        csum_start: l.l4 as u16,
        csum_offset: l.proto.csum_offset() as u16,
        num_buffers: 0,
    }
}

fn parse(h: &VnetHdr, f: &[u8]) -> Result<Offload, OffloadError> {
    Offload::parse(h, f, f.len())
}

const V4: IpVersion = IpVersion::V4;
const V6: IpVersion = IpVersion::V6;
const TCP: L4Proto = L4Proto::Tcp;
const UDP: L4Proto = L4Proto::Udp;

#[test]
fn each_drop_reason_from_the_metadata_that_causes_it() {
    let (f, l) = frame(&Spec::new(V4, TCP, 4000));
    let good = hdr(NEEDS_CSUM, GSO_TCPV4, 1448, &l);
    let gso = parse(&good, &f).unwrap().gso.unwrap();
    assert_eq!(
        (gso.kind, gso.size, gso.hdr_len),
        (GsoKind::Tcp4, 1448, l.hdr_len as u16)
    );

    // gso_size 0 with a gso type.
    assert_eq!(
        parse(
            &VnetHdr {
                gso_size: 0,
                ..good
            },
            &f
        ),
        Err(OffloadError::GsoSizeZero)
    );
    // hdr_len past the frame; headers cut off by the frame's end.
    let past = VnetHdr {
        hdr_len: f.len() as u16 + 1,
        ..good
    };
    assert_eq!(parse(&past, &f), Err(OffloadError::HeaderPastFrame));
    let no_csum = VnetHdr { flags: 0, ..good };
    assert_eq!(
        parse(&no_csum, &f[..l.hdr_len - 1]),
        Err(OffloadError::HeaderPastFrame)
    );
    // The caller's head copy shorter than the headers: refused the same way.
    assert_eq!(
        Offload::parse(&no_csum, &f[..l.l4 + 4], f.len()),
        Err(OffloadError::HeaderPastFrame)
    );
    // Checksum field past the end, csum_start inside the Ethernet head.
    let csum_past = VnetHdr {
        csum_start: f.len() as u16 - 17,
        csum_offset: 16,
        ..good
    };
    assert_eq!(parse(&csum_past, &f), Err(OffloadError::CsumOutsideFrame));
    let csum_max = VnetHdr {
        gso_type: GSO_NONE,
        csum_start: u16::MAX,
        csum_offset: u16::MAX,
        ..good
    };
    assert_eq!(parse(&csum_max, &f), Err(OffloadError::CsumOutsideFrame));
    let csum_in_eth = VnetHdr {
        gso_type: GSO_NONE,
        csum_start: 13,
        csum_offset: 0,
        ..good
    };
    assert_eq!(parse(&csum_in_eth, &f), Err(OffloadError::CsumOutsideFrame));
    // NEEDS_CSUM on a GSO frame naming something else than the TCP checksum.
    let csum_ip = VnetHdr {
        csum_start: l.l3 as u16,
        csum_offset: 10,
        ..good
    };
    assert_eq!(parse(&csum_ip, &f), Err(OffloadError::CsumNotL4));
    let csum_off = VnetHdr {
        csum_offset: 6,
        ..good
    };
    assert_eq!(parse(&csum_off, &f), Err(OffloadError::CsumNotL4));
    // ... which is fine without GSO: virtio only asks the field to be inside.
    let plain = VnetHdr {
        gso_type: GSO_NONE,
        ..csum_ip
    };
    assert_eq!(parse(&plain, &f).unwrap().csum, Some((l.l3 as u16, 10)));

    // More than 64 KiB of payload; more segments than allowed.
    let (big, bl) = frame(&Spec::new(V4, TCP, 65_536));
    assert_eq!(
        parse(&hdr(NEEDS_CSUM, GSO_TCPV4, 1448, &bl), &big),
        Err(OffloadError::TooManySegments)
    );
    let (max, ml) = frame(&Spec::new(V6, TCP, 65_535));
    assert!(parse(&hdr(NEEDS_CSUM, GSO_TCPV6, 1440, &ml), &max)
        .unwrap()
        .gso
        .is_some());
    // One 65535-byte segment would not fit an IPv4 total length with its headers.
    assert_eq!(
        parse(&hdr(NEEDS_CSUM, GSO_TCPV6, 65_534, &ml), &max),
        Err(OffloadError::TooManySegments)
    );
    assert_eq!(
        parse(&hdr(NEEDS_CSUM, GSO_TCPV6, 47, &ml), &max),
        Err(OffloadError::TooManySegments)
    );
    assert!(parse(&hdr(NEEDS_CSUM, GSO_TCPV6, 48, &ml), &max).is_ok());
    let (u, ul) = frame(&Spec::new(V4, UDP, 1290));
    assert_eq!(
        parse(&hdr(NEEDS_CSUM, GSO_UDP_L4, 10, &ul), &u),
        Err(OffloadError::TooManySegments)
    );
    assert_eq!(
        parse(&hdr(NEEDS_CSUM, GSO_UDP_L4, 11, &ul), &u)
            .unwrap()
            .gso
            .unwrap()
            .segments(u.len()),
        118
    );

    // The header itself cut short.
    assert_eq!(VnetHdr::read(&[0u8; 11]), Err(OffloadError::HdrTruncated));
}

#[test]
fn gso_types_that_do_not_match_the_packet_are_unsupported() {
    let (v4, l4) = frame(&Spec::new(V4, TCP, 3000));
    let (v6, l6) = frame(&Spec::new(V6, TCP, 3000));
    let (u4, lu) = frame(&Spec::new(V4, UDP, 3000));
    let unsupported = Err(OffloadError::GsoUnsupported);
    assert_eq!(
        parse(&hdr(NEEDS_CSUM, GSO_TCPV6, 1000, &l4), &v4),
        unsupported
    );
    assert_eq!(
        parse(&hdr(NEEDS_CSUM, GSO_TCPV4, 1000, &l6), &v6),
        unsupported
    );
    assert_eq!(
        parse(&hdr(NEEDS_CSUM, GSO_UDP_L4, 1000, &l4), &v4),
        unsupported
    );
    assert_eq!(
        parse(&hdr(NEEDS_CSUM, GSO_TCPV4, 1000, &lu), &u4),
        unsupported
    );
    assert_eq!(
        parse(&hdr(NEEDS_CSUM, GSO_UDP, 1000, &lu), &u4),
        unsupported,
        "legacy UFO"
    );
    assert_eq!(
        parse(&hdr(NEEDS_CSUM, GSO_UDP_L4 | GSO_ECN, 1000, &lu), &u4),
        unsupported
    );
    assert_eq!(
        parse(&hdr(NEEDS_CSUM, GSO_ECN, 1000, &l4), &v4),
        unsupported
    );
    assert_eq!(parse(&hdr(NEEDS_CSUM, 2, 1000, &l4), &v4), unsupported);
    assert_eq!(parse(&hdr(NEEDS_CSUM, 6, 1000, &l4), &v4), unsupported);
    // An IPv4 fragment, an IPv6 extension header.
    let mut frag = v4.clone();
    frag[l4.l3 + 6] |= 0x20;
    assert_eq!(
        parse(&hdr(NEEDS_CSUM, GSO_TCPV4, 1000, &l4), &frag),
        unsupported
    );
    let mut ext = v6.clone();
    ext[l6.l3 + 6] = 60; // destination options
    assert_eq!(
        parse(&hdr(NEEDS_CSUM, GSO_TCPV6, 1000, &l6), &ext),
        unsupported
    );
    // UDP_L4 runs over IPv6 too; TCP with the ECN bit is fine.
    let (u6, lu6) = frame(&Spec::new(V6, UDP, 3000));
    assert_eq!(
        parse(&hdr(NEEDS_CSUM, GSO_UDP_L4, 1000, &lu6), &u6)
            .unwrap()
            .gso
            .unwrap()
            .ip(),
        V6
    );
    assert!(
        parse(&hdr(NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 1000, &l4), &v4)
            .unwrap()
            .gso
            .unwrap()
            .ecn
    );
}

/// Linux: "too small packets are not really GSO ones"; and the guest's hdr_len
/// is a hint: 0 or too short is fine, the parsed length rules.
#[test]
fn one_segment_frames_keep_only_their_checksum_and_hdr_len_is_a_hint() {
    let (f, l) = frame(&Spec::new(V4, TCP, 1448));
    let off = parse(&hdr(NEEDS_CSUM, GSO_TCPV4, 1448, &l), &f).unwrap();
    assert_eq!(off.gso, None);
    assert_eq!(off.csum, Some((l.l4 as u16, 16)));
    assert_eq!(off.needs(), Accepts::CSUM);
    let (f, l) = frame(&Spec::new(V4, TCP, 1449));
    for hint in [0, 14, 54, l.hdr_len as u16 + 100] {
        let h = VnetHdr {
            hdr_len: hint,
            ..hdr(NEEDS_CSUM, GSO_TCPV4, 1448, &l)
        };
        let gso = parse(&h, &f).unwrap().gso.unwrap();
        assert_eq!(usize::from(gso.hdr_len), l.hdr_len, "hint {hint}");
        assert_eq!(gso.segments(f.len()), 2);
    }
}

#[test]
fn to_hdr_needs_largest_frame_and_tag_shifts() {
    let mut spec = Spec::new(V4, TCP, 10_000);
    let (f, l) = frame(&spec);
    let h = VnetHdr {
        hdr_len: 0,
        ..hdr(NEEDS_CSUM | DATA_VALID, GSO_TCPV4 | GSO_ECN, 1448, &l)
    };
    // A guest's DATA_VALID is ignored; the kernel's (a TAP read) is kept.
    let off = Offload::parse_trusted(&h, &f, f.len()).unwrap();
    assert!(off.data_valid);
    assert_eq!(
        parse(&h, &f),
        Ok(Offload {
            data_valid: false,
            ..off
        })
    );
    let back = off.to_hdr(3);
    assert_eq!(
        back,
        VnetHdr {
            hdr_len: l.hdr_len as u16,
            num_buffers: 3,
            ..h
        }
    );
    assert_eq!(Offload::parse_trusted(&back, &f, f.len()), Ok(off));
    assert_eq!(
        off.needs(),
        Accepts::CSUM | Accepts::TSO4 | Accepts::TSO_ECN
    );
    assert!(Accepts::ALL.contains(off.needs()));
    assert!(!(Accepts::CSUM | Accepts::TSO4).contains(off.needs()));
    assert_eq!(off.largest_frame(f.len()), l.hdr_len + 1448);
    assert_eq!(Offload::NONE.largest_frame(f.len()), f.len());
    assert_eq!(
        Offload::NONE.to_hdr(1),
        VnetHdr {
            num_buffers: 1,
            ..VnetHdr::default()
        }
    );

    // The same frame with a tag: shifting the untagged meaning by +4 gives the
    // tagged one, and back.
    spec.tags = 1;
    let (t, tl) = frame(&spec);
    let tagged = Offload::parse_trusted(
        &VnetHdr {
            hdr_len: 0,
            ..hdr(NEEDS_CSUM | DATA_VALID, GSO_TCPV4 | GSO_ECN, 1448, &tl)
        },
        &t,
        t.len(),
    )
    .unwrap();
    assert_eq!(off.shifted(4), tagged);
    assert_eq!(tagged.shifted(-4), off);
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut scratch = vec![0u8; SCRATCH];
    segment(&f, &off, &mut scratch, |s| {
        a.push(s.to_vec());
        true
    })
    .unwrap();
    segment(&t, &off.shifted(4), &mut scratch, |s| {
        b.push(s.to_vec());
        true
    })
    .unwrap();
    assert_eq!(a.len(), 7);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(&x[..12], &y[..12]);
        assert_eq!(&x[12..], &y[16..]);
    }

    assert_eq!(
        Accepts::from_guest_features(1 << 7),
        Accepts::NONE,
        "TSO needs GUEST_CSUM"
    );
    assert_eq!(
        Accepts::from_guest_features((1 << 1) | (1 << 7) | (1 << 9) | (1 << 54)),
        Accepts::CSUM | Accepts::TSO4 | Accepts::TSO_ECN
    );
    assert_eq!(
        Accepts::from_guest_features((1 << 1) | (3 << 54)),
        Accepts::CSUM | Accepts::USO
    );
    // TAP offloads: the kernel's own numbers (linux/if_tun.h), cross-checked with libc.
    assert_eq!(
        Accepts::ALL.tun_offload_flags(),
        test_kit::netns::vnet_tap::ALL_OFFLOADS
    );
    assert_eq!(
        (Accepts::CSUM | Accepts::TSO4).tun_offload_flags(),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4
    );
    assert_eq!((Accepts::TSO4 | Accepts::USO).tun_offload_flags(), 0);
}

#[test]
fn segment_refuses_small_scratch_and_stops_when_told() {
    let (f, l) = frame(&Spec::new(V6, UDP, 5000));
    let off = parse(&hdr(NEEDS_CSUM, GSO_UDP_L4, 1000, &l), &f).unwrap();
    let mut small = vec![0u8; l.hdr_len + 999];
    assert_eq!(
        segment(&f, &off, &mut small, |_| true),
        Err(OffloadError::ScratchTooSmall)
    );
    let mut scratch = vec![0u8; l.hdr_len + 1000];
    let mut seen = 0;
    assert_eq!(
        segment(&f, &off, &mut scratch, |_| {
            seen += 1;
            seen < 3
        }),
        Ok(3)
    );
    assert_eq!(segment(&f, &off, &mut scratch, |_| true), Ok(5));
    // A checksum-only frame needs the whole frame's room; a plain one none.
    let (p, pl) = frame(&Spec::new(V4, TCP, 100));
    let csum = parse(&hdr(NEEDS_CSUM, GSO_NONE, 0, &pl), &p).unwrap();
    assert_eq!(
        segment(&p, &csum, &mut [0u8; 10], |_| true),
        Err(OffloadError::ScratchTooSmall)
    );
    assert_eq!(
        segment(&p, &Offload::NONE, &mut [], |s| {
            assert_eq!(s, &p[..]);
            true
        }),
        Ok(1)
    );
    // An offload that does not belong to the frame is refused, never sliced past.
    let (short, _) = frame(&Spec::new(V4, TCP, 0));
    assert_eq!(
        segment(&short[..30], &off, &mut scratch, |_| true),
        Err(OffloadError::HeaderPastFrame)
    );
}
