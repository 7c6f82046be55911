//! Shared by the kernel comparison tests: run our wire layer on one captured
//! input, compare segment lists byte for byte, and read/write fixture files.
//!
//! Fixture format (`fixtures/*.hex`): `#` comment lines, then one `in HEX` line
//! (12-byte virtio-net header + frame, as the kernel wrote it on a TAP) and one
//! `out HEX` line per frame the kernel emitted for it, in order.

#![allow(dead_code)]

pub mod build;

use fabric_offload::{segment, Offload, OffloadError, VnetHdr, VNET_HDR_LEN};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Large enough for one segment of any valid GSO frame, or any whole frame.
pub const SCRATCH: usize = 70_000;

/// What our wire layer makes of `input` (vnet header + frame).
pub fn ours(input: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
    let hdr = VnetHdr::read(input)?;
    let frame = &input[VNET_HDR_LEN..];
    let off = Offload::parse(&hdr, frame, frame.len())?;
    let mut scratch = vec![0u8; SCRATCH];
    let mut out = Vec::new();
    let n = segment(frame, &off, &mut scratch, |seg| {
        out.push(seg.to_vec());
        true
    })?;
    assert_eq!(n, out.len(), "segment's count and the frames it emitted");
    Ok(out)
}

/// Panics, naming the case, the segment and the first differing byte, unless
/// `ours` and `kernel` are the same frames in the same order.
pub fn assert_same(case: &str, input: &[u8], ours: &[Vec<u8>], kernel: &[Vec<u8>]) {
    let hdr = VnetHdr::read(input).unwrap();
    assert_eq!(
        ours.len(),
        kernel.len(),
        "{case}: {} segments from us, {} from the kernel (hdr {hdr:?}, frame {} bytes)",
        ours.len(),
        kernel.len(),
        input.len() - VNET_HDR_LEN
    );
    for (i, (o, k)) in ours.iter().zip(kernel).enumerate() {
        if o != k {
            let at = o.iter().zip(k).position(|(a, b)| a != b);
            panic!(
                "{case}: segment {i} of {} differs (hdr {hdr:?}): ours {} bytes, kernel {} bytes, \
                 first difference at byte {at:?}\nours:   {}\nkernel: {}",
                ours.len(),
                o.len(),
                k.len(),
                hex(&o[..o.len().min(96)]),
                hex(&k[..k.len().min(96)])
            );
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        write!(s, "{x:02x}").unwrap();
    }
    s
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length {}", s.len());
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One captured case: the input and the kernel's frames for it.
pub struct Fixture {
    pub input: Vec<u8>,
    pub kernel: Vec<Vec<u8>>,
}

pub fn write_fixture(name: &str, comment: &str, f: &Fixture) {
    let mut text = String::new();
    for line in comment.lines() {
        writeln!(text, "# {line}").unwrap();
    }
    writeln!(text, "in {}", hex(&f.input)).unwrap();
    for k in &f.kernel {
        writeln!(text, "out {}", hex(k)).unwrap();
    }
    let path = fixture_dir().join(format!("{name}.hex"));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

pub fn read_fixture(name: &str) -> Fixture {
    let path = fixture_dir().join(format!("{name}.hex"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    let mut input = None;
    let mut kernel = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        match line.split_once(' ') {
            Some(("in", h)) => {
                assert!(input.is_none(), "{name}: two `in` lines");
                input = Some(unhex(h));
            }
            Some(("out", h)) => kernel.push(unhex(h)),
            _ => panic!("{name}: bad line {:?}", &line[..line.len().min(40)]),
        }
    }
    Fixture {
        input: input.unwrap_or_else(|| panic!("{name}: no `in` line")),
        kernel,
    }
}

/// The fixtures `kernel_capture` writes and `kernel_fixtures` replays, with
/// what each holds.
pub const CASES: [(&str, &str); 10] = [
    (
        "ipv4_tcp_tso",
        "IPv4 TCP TSO frame (timestamps; SACK negotiated), 3 to 6 segments",
    ),
    (
        "ipv4_tcp_tso_vlan",
        "the IPv4 TCP TSO frame behind an 802.1Q tag (VLAN 7), tagged as the TAP driver does",
    ),
    ("ipv6_tcp_tso", "IPv6 TCP TSO frame, 3 to 6 segments"),
    (
        "ipv4_tcp_tso_fin",
        "IPv4 TCP TSO frame ending the stream: FIN (on the last segment only)",
    ),
    (
        "ipv4_tcp_tso_psh",
        "IPv4 TCP TSO frame with PSH (on the last segment only)",
    ),
    (
        "ipv4_tcp_tso_cwr_ecn",
        "IPv4 TCP TSO frame with CWR and the gso ECN bit (CWR on the first segment only)",
    ),
    (
        "ipv4_udp_uso",
        "IPv4 UDP with UDP_SEGMENT (USO), 4500 bytes in 1000-byte datagrams",
    ),
    (
        "ipv6_udp_uso",
        "IPv6 UDP with UDP_SEGMENT (USO), 4500 bytes in 1000-byte datagrams",
    ),
    (
        "ipv4_tcp_csum_only",
        "IPv4 TCP 100-byte segment, NEEDS_CSUM and no GSO",
    ),
    (
        "ipv6_tcp_csum_only",
        "IPv6 TCP 100-byte segment, NEEDS_CSUM and no GSO",
    ),
];
