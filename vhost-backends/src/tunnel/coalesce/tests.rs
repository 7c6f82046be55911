//! The coalescing rules, one by one: a run that merges (header bytes checked
//! exactly), each rule that stops a merge (exact frame counts), IPv6, and the
//! round trip through the switch's software GSO. Checksums are computed and
//! verified with an RFC 1071 sum of the test's own.

use super::*;
use crate::tunnel::decap::inner_checksum;
use fabric_offload::{segment, GsoKind};

const VNI_A: u32 = 5000;
const VTEP_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Ethernet (dst, src) + 802.1Q tag of VLAN 10, as decapsulation leaves it.
const L3: usize = 18;
/// IPv4 + TCP with a 12-byte timestamp option.
const TCP_HLEN: usize = 32;
const MSS: usize = 1000;

/// RFC 1071: the folded ones'-complement sum (not complemented).
fn sum16(chunks: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for data in chunks {
        for pair in data.chunks(2) {
            sum += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The pseudo-header of a TCP segment of `l4_len` bytes, summed.
fn pseudo(frame: &[u8], v6: bool, l4_len: usize) -> u16 {
    let addrs = if v6 {
        &frame[L3 + 8..L3 + 40]
    } else {
        &frame[L3 + 12..L3 + 20]
    };
    let mut tail = [0u8; 8];
    tail[3] = 6;
    tail[4..8].copy_from_slice(&(l4_len as u32).to_be_bytes());
    sum16(&[addrs, &tail])
}

fn get16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// One TCP segment as a kernel peer sends it, tagged with VLAN 10.
#[derive(Clone, Debug)]
struct Spec {
    v6: bool,
    dst_mac: u8,
    sport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: usize,
    id: u16,
    df: bool,
    mf: bool,
    tos: u8,
    ttl: u8,
    flow: u32,
    window: u16,
    tsval: u32,
    /// Four bytes of IPv4 options (IHL 6).
    ip_options: bool,
    /// Checksum left partial (a kernel peer with offloads) instead of full.
    partial: bool,
    /// Checksum wrong (neither valid nor partial).
    bad_csum: bool,
    vni: u32,
    vtep: Ipv4Addr,
}

impl Spec {
    fn new() -> Spec {
        Spec {
            v6: false,
            dst_mac: 0x99,
            sport: 1000,
            seq: 0x1000_0000,
            ack: 77,
            flags: TCP_ACK,
            payload: MSS,
            id: 0x1234,
            df: true,
            mf: false,
            tos: 0,
            ttl: 64,
            flow: 0x12345,
            window: 500,
            tsval: 9,
            ip_options: false,
            partial: false,
            bad_csum: false,
            vni: VNI_A,
            vtep: VTEP_A,
        }
    }

    fn l4(&self) -> usize {
        match (self.v6, self.ip_options) {
            (true, _) => L3 + 40,
            (false, false) => L3 + 20,
            (false, true) => L3 + 24,
        }
    }

    fn bytes(&self, marker: u8) -> Vec<u8> {
        let mut f = vec![self.dst_mac, 0, 0, 0, 0, 0x99, 2, 0, 0, 0, 0, 1];
        f.extend_from_slice(&[0x81, 0x00, 0, 10]);
        let l4 = self.l4();
        let total = l4 + TCP_HLEN + self.payload;
        if self.v6 {
            f.extend_from_slice(&[0x86, 0xdd]);
            let word = 6 << 28 | u32::from(self.tos) << 20 | self.flow;
            f.extend_from_slice(&word.to_be_bytes());
            f.extend_from_slice(&((total - l4) as u16).to_be_bytes());
            f.extend_from_slice(&[6, self.ttl]);
            f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        } else {
            f.extend_from_slice(&[0x08, 0x00]);
            let ihl = (l4 - L3) / 4;
            let frag = u16::from(self.df) << 14 | u16::from(self.mf) << 13;
            f.extend_from_slice(&[0x40 | ihl as u8, self.tos]);
            f.extend_from_slice(&((total - L3) as u16).to_be_bytes());
            f.extend_from_slice(&self.id.to_be_bytes());
            f.extend_from_slice(&frag.to_be_bytes());
            f.extend_from_slice(&[self.ttl, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
            if self.ip_options {
                f.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
            }
            let c = !sum16(&[&f[L3..l4]]);
            f[L3 + 10..L3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        assert_eq!(f.len(), l4);
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&2000u16.to_be_bytes());
        f.extend_from_slice(&self.seq.to_be_bytes());
        f.extend_from_slice(&self.ack.to_be_bytes());
        f.extend_from_slice(&[((TCP_HLEN / 4) as u8) << 4, self.flags]);
        f.extend_from_slice(&self.window.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        f.extend_from_slice(&[1, 1, 8, 10]); // NOP NOP timestamps
        f.extend_from_slice(&self.tsval.to_be_bytes());
        f.extend_from_slice(&7u32.to_be_bytes());
        f.extend((0..self.payload).map(|i| marker ^ (i % 251) as u8));
        let p = pseudo(&f, self.v6, total - l4);
        let c = if self.partial {
            p
        } else {
            !sum16(&[&p.to_be_bytes(), &f[l4..]])
        };
        let c = if self.bad_csum { c ^ 0x0101 } else { c };
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        assert_eq!(f.len(), total);
        f
    }
}

/// `n` contiguous segments of one flow: ACK, [`MSS`] bytes each, IP ids
/// counting up; `edit(i, spec)` changes segment `i` before it is built (a
/// payload or seq changed there carries on to the next segments' seq).
fn run(n: usize, mut edit: impl FnMut(usize, &mut Spec)) -> Vec<(Spec, Vec<u8>)> {
    let mut out = Vec::new();
    let mut seq = Spec::new().seq;
    for i in 0..n {
        let mut s = Spec::new();
        s.seq = seq;
        s.id = s.id.wrapping_add(i as u16);
        edit(i, &mut s);
        seq = s.seq.wrapping_add(s.payload as u32);
        out.push((s.clone(), s.bytes(i as u8)));
    }
    out
}

/// The frames laid out one after the other in a buffer, as `decapsulate`
/// describes them.
struct Batch {
    buf: Vec<u8>,
    frames: Vec<Decapped>,
}

fn batch(segs: &[(Spec, Vec<u8>)]) -> Batch {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    for (s, bytes) in segs {
        buf.extend_from_slice(&[0xee; 8]); // what precedes a frame in its slot
        let start = buf.len();
        buf.extend_from_slice(bytes);
        let (offload, csum_ok) = inner_checksum(bytes);
        frames.push(Decapped {
            range: start..buf.len(),
            offload,
            vni: Vni::new(s.vni).unwrap(),
            vtep: s.vtep,
            csum_ok,
        });
    }
    Batch { buf, frames }
}

/// Coalesces `segs`; returns the frames to forward (pieces joined) with
/// their offloads, and the count of segments merged away.
fn coalesced(segs: &[(Spec, Vec<u8>)]) -> (Vec<(Vec<u8>, Offload)>, u64) {
    let mut b = batch(segs);
    let mut c = Coalescer::default();
    let merged = coalesce(&mut b.buf, &b.frames, &mut c);
    let out = c
        .out
        .iter()
        .map(|f| {
            let mut bytes = Vec::new();
            for r in &c.pieces[f.pieces.clone()] {
                bytes.extend_from_slice(&b.buf[r.clone()]);
            }
            (bytes, f.offload)
        })
        .collect::<Vec<_>>();
    assert_eq!(
        out.len() as u64 + merged,
        segs.len() as u64,
        "every frame accounted for"
    );
    (out, merged)
}

/// Frames forwarded for `segs`.
fn count(segs: &[(Spec, Vec<u8>)]) -> usize {
    coalesced(segs).0.len()
}

/// Four segments from a kernel peer (checksums partial), the last one
/// shorter with PSH: one super-frame, every header byte as the kernel's GRO
/// would leave it.
#[test]
fn a_contiguous_run_becomes_one_gso_frame_with_exact_headers() {
    let segs = run(4, |i, s| {
        s.partial = true;
        if i == 3 {
            s.payload = 400;
            s.flags = TCP_ACK | TCP_PSH;
        }
    });
    let (out, merged) = coalesced(&segs);
    assert_eq!((out.len(), merged), (1, 3));
    let (f, off) = &out[0];
    let hdr_len = L3 + 20 + TCP_HLEN;
    assert_eq!(f.len(), hdr_len + 3 * MSS + 400);
    // Everything but the lengths, checksums and flags is the first segment's.
    let first = &segs[0].1;
    assert_eq!(f[..L3 + 2], first[..L3 + 2]);
    assert_eq!(f[L3 + 4..L3 + 10], first[L3 + 4..L3 + 10]);
    assert_eq!(f[L3 + 12..L3 + 20 + 13], first[L3 + 12..L3 + 20 + 13]);
    assert_eq!(
        f[L3 + 20 + 14..L3 + 20 + 16],
        first[L3 + 20 + 14..L3 + 20 + 16]
    );
    assert_eq!(f[L3 + 20 + 18..hdr_len], first[L3 + 20 + 18..hdr_len]);
    // IPv4 total length and a valid header checksum.
    assert_eq!(get16(f, L3 + 2) as usize, 20 + TCP_HLEN + 3 * MSS + 400);
    assert_eq!(sum16(&[&f[L3..L3 + 20]]), 0xffff);
    // Flags ACK|PSH (PSH from the last); the checksum field the pseudo-header
    // sum of the whole TCP length, not complemented (CHECKSUM_PARTIAL).
    assert_eq!(f[L3 + 20 + 13], TCP_ACK | TCP_PSH);
    let l4_len = TCP_HLEN + 3 * MSS + 400;
    assert_eq!(get16(f, L3 + 20 + 16), pseudo(f, false, l4_len));
    // Completing it gives a valid checksum over the whole.
    let mut done = f.clone();
    fabric_offload::complete_csum(&mut done, L3 + 20, 16).unwrap();
    assert_eq!(
        sum16(&[
            &pseudo(&done, false, l4_len).to_be_bytes(),
            &done[L3 + 20..]
        ]),
        0xffff
    );
    // The payloads, in order.
    let mut payload = Vec::new();
    for (_, s) in &segs {
        payload.extend_from_slice(&s[hdr_len..]);
    }
    assert_eq!(f[hdr_len..], payload[..]);
    // The offload: NEEDS_CSUM at the TCP checksum, GSO TCPv4 of the MSS.
    assert_eq!(off.csum, Some(((L3 + 20) as u16, 16)));
    let gso = off.gso.expect("a GSO frame");
    assert_eq!(gso.kind, GsoKind::Tcp4);
    assert_eq!(
        (gso.size, gso.hdr_len, gso.ecn),
        (MSS as u16, hdr_len as u16, false)
    );
    assert_eq!((gso.l3(), gso.l4()), (L3, L3 + 20));
    assert!(!off.data_valid);
    let hdr = off.to_hdr(0);
    assert_eq!((hdr.flags, hdr.gso_type), (1, 1));
    assert_eq!((hdr.csum_start, hdr.csum_offset), ((L3 + 20) as u16, 16));
}

/// Segments with full, valid checksums (a peer without offloads) merge just
/// the same; a frame alone is forwarded untouched with its own offload.
#[test]
fn valid_checksums_merge_and_a_lone_segment_is_untouched() {
    let segs = run(3, |_, _| {});
    let (out, merged) = coalesced(&segs);
    assert_eq!((out.len(), merged), (1, 2));
    assert_eq!(get16(&out[0].0, L3 + 2) as usize, 20 + TCP_HLEN + 3 * MSS);
    let one = run(1, |_, s| s.partial = true);
    let (out, merged) = coalesced(&one);
    assert_eq!((out.len(), merged), (1, 0));
    assert_eq!(out[0].0, one[0].1, "not rewritten");
    assert_eq!(out[0].1.csum, Some(((L3 + 20) as u16, 16)));
    assert_eq!(out[0].1.gso, None);
}

/// Each rule that stops a merge, with the exact number of frames forwarded
/// out of six segments. A change from segment 2 on starts another flow (or
/// another run of it): 2 frames. A change of segment 2 alone that makes it
/// unmergeable leaves it alone, and segment 3 cannot continue it: its run
/// is segments 3..6, so 3 frames.
#[test]
fn every_rule_that_stops_a_merge() {
    type Edit = fn(usize, &mut Spec);
    let cases: [(&str, Edit, usize); 28] = [
        ("contiguous", |_, _| {}, 1),
        (
            "seq gap",
            |i, s| {
                if i == 2 {
                    s.seq += 1
                }
            },
            2,
        ),
        (
            "seq overlap",
            |i, s| {
                if i == 2 {
                    s.seq -= 1
                }
            },
            2,
        ),
        (
            "other source port",
            |i, s| {
                if i >= 2 {
                    s.sport = 1001
                }
            },
            2,
        ),
        (
            "other ACK number",
            |i, s| {
                if i >= 2 {
                    s.ack += 1
                }
            },
            2,
        ),
        (
            "other window",
            |i, s| {
                if i >= 2 {
                    s.window += 1
                }
            },
            2,
        ),
        (
            "other timestamp option",
            |i, s| {
                if i >= 2 {
                    s.tsval += 1
                }
            },
            2,
        ),
        (
            "other destination MAC",
            |i, s| {
                if i >= 2 {
                    s.dst_mac = 0x98
                }
            },
            2,
        ),
        (
            "other TOS",
            |i, s| {
                if i >= 2 {
                    s.tos = 4
                }
            },
            2,
        ),
        (
            "other TTL",
            |i, s| {
                if i >= 2 {
                    s.ttl = 63
                }
            },
            2,
        ),
        (
            "other DF",
            |i, s| {
                if i >= 2 {
                    s.df = false
                }
            },
            2,
        ),
        (
            "IP id not consecutive",
            |i, s| {
                if i >= 2 {
                    s.id += 5
                }
            },
            2,
        ),
        (
            "other VNI",
            |i, s| {
                if i >= 2 {
                    s.vni = 5001
                }
            },
            2,
        ),
        (
            "other VTEP",
            |i, s| {
                if i >= 2 {
                    s.vtep = Ipv4Addr::new(192, 0, 2, 2)
                }
            },
            2,
        ),
        (
            "PSH in the middle",
            |i, s| {
                if i == 1 {
                    s.flags |= TCP_PSH
                }
            },
            2,
        ),
        (
            "PSH on the first",
            |i, s| {
                if i == 0 {
                    s.flags |= TCP_PSH
                }
            },
            2,
        ),
        (
            "shorter in the middle",
            |i, s| {
                if i == 1 {
                    s.payload = 999
                }
            },
            2,
        ),
        (
            "longer from the middle on",
            |i, s| {
                if i >= 2 {
                    s.payload = 1001
                }
            },
            2,
        ),
        (
            "FIN",
            |i, s| {
                if i == 2 {
                    s.flags |= 0x01
                }
            },
            3,
        ),
        (
            "URG",
            |i, s| {
                if i == 2 {
                    s.flags |= 0x20
                }
            },
            3,
        ),
        (
            "ECE",
            |i, s| {
                if i == 2 {
                    s.flags |= 0x40
                }
            },
            3,
        ),
        (
            "CWR",
            |i, s| {
                if i == 2 {
                    s.flags |= 0x80
                }
            },
            3,
        ),
        (
            "no payload",
            |i, s| {
                if i == 2 {
                    s.payload = 0
                }
            },
            3,
        ),
        (
            "bad checksum",
            |i, s| {
                if i == 2 {
                    s.bad_csum = true
                }
            },
            3,
        ),
        (
            "IPv4 options",
            |i, s| {
                if i == 2 {
                    s.ip_options = true
                }
            },
            3,
        ),
        (
            "IPv4 fragment",
            |i, s| {
                if i == 2 {
                    s.mf = true
                }
            },
            3,
        ),
        (
            "bad checksum on the first",
            |i, s| {
                if i == 0 {
                    s.bad_csum = true
                }
            },
            2,
        ),
        ("IPv4 options on all", |_, s| s.ip_options = true, 6),
    ];
    for (name, edit, want) in cases {
        let segs = run(6, edit);
        let (out, merged) = coalesced(&segs);
        assert_eq!(out.len(), want, "{name}");
        assert_eq!(merged as usize, 6 - want, "{name}");
    }
}

/// A PSH segment in the middle ends the run there, and the frame that ends
/// with it carries PSH; the next run starts right after it.
#[test]
fn psh_ends_the_run_it_closes() {
    let segs = run(5, |i, s| {
        if i == 1 {
            s.flags |= TCP_PSH;
        }
    });
    let (out, _) = coalesced(&segs);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].0[L3 + 20 + 13], TCP_ACK | TCP_PSH);
    assert_eq!(out[0].0.len(), L3 + 20 + TCP_HLEN + 2 * MSS);
    assert_eq!(out[1].0[L3 + 20 + 13], TCP_ACK);
    assert_eq!(out[1].0.len(), L3 + 20 + TCP_HLEN + 3 * MSS);
    assert_eq!(
        u32::from_be_bytes(out[1].0[L3 + 24..L3 + 28].try_into().unwrap()),
        segs[2].0.seq
    );
}

/// IP ids repeated in every segment merge only with DF (Linux's fixed-ID
/// rule); a mix of counting up and repeating does not.
#[test]
fn fixed_ip_ids_merge_only_with_df() {
    assert_eq!(count(&run(4, |_, s| s.id = 7)), 1);
    assert_eq!(
        count(&run(4, |_, s| {
            s.id = 7;
            s.df = false;
        })),
        4
    );
    assert_eq!(
        count(&run(4, |_, s| s.df = false)),
        1,
        "counting up needs no DF"
    );
    // 7, 8, 8, 8: the second segment says "counting up", the third breaks it.
    assert_eq!(count(&run(4, |i, s| s.id = 7 + i.min(1) as u16)), 2);
}

/// The IP packet stays within 64 KiB: 8 segments of 8000 bytes fill 64052
/// bytes of it, the 9th would pass 65535 and starts the next frame.
#[test]
fn a_super_frame_stays_within_64_kib_and_max_segments() {
    let segs = run(10, |_, s| s.payload = 8000);
    let (out, merged) = coalesced(&segs);
    assert_eq!((out.len(), merged), (2, 8));
    assert_eq!(get16(&out[0].0, L3 + 2), 20 + 32 + 8 * 8000);
    assert_eq!(out[1].1.gso.map(|g| g.size), Some(8000));
    // 70 segments of 100 bytes: the first 64 (MAX_SEGMENTS pieces), then 6.
    let segs = run(70, |_, s| s.payload = 100);
    let (out, merged) = coalesced(&segs);
    assert_eq!((out.len(), merged), (2, 68));
    assert_eq!(out[0].0.len(), L3 + 20 + TCP_HLEN + MAX_SEGMENTS * 100);
    assert_eq!(out[1].0.len(), L3 + 20 + TCP_HLEN + 6 * 100);
}

/// IPv6: payload length rewritten, GSO TCPv6, partial sum over the IPv6
/// pseudo-header; another flow label, hop limit or traffic class stops it.
#[test]
fn ipv6_runs_merge_and_their_header_fields_must_match() {
    let l4 = L3 + 40;
    let segs = run(3, |i, s| {
        s.v6 = true;
        s.partial = i != 1; // a mix: merged all the same
        if i == 2 {
            s.payload = 10;
        }
    });
    let (out, merged) = coalesced(&segs);
    assert_eq!((out.len(), merged), (1, 2));
    let (f, off) = &out[0];
    let l4_len = TCP_HLEN + 2 * MSS + 10;
    assert_eq!(get16(f, L3 + 4) as usize, l4_len);
    assert_eq!(get16(f, l4 + 16), pseudo(f, true, l4_len));
    let gso = off.gso.unwrap();
    assert_eq!(
        (gso.kind, gso.size, gso.hdr_len),
        (GsoKind::Tcp6, MSS as u16, (l4 + TCP_HLEN) as u16)
    );
    assert_eq!(off.csum, Some((l4 as u16, 16)));
    type Edit = fn(usize, &mut Spec);
    let v6: [(&str, Edit); 3] = [
        ("flow label", |_, s| s.flow = 1),
        ("hop limit", |_, s| s.ttl = 1),
        ("traffic class", |_, s| s.tos = 8),
    ];
    for (name, edit) in v6 {
        let segs = run(4, |i, s| {
            s.v6 = true;
            if i >= 2 {
                edit(i, s);
            }
        });
        assert_eq!(count(&segs), 2, "{name}");
    }
}

/// The inner frames are VLAN-tagged (decapsulation inserts the VNI's tag):
/// offsets past the tag, and a different tag is a different head.
#[test]
fn the_inserted_tag_is_part_of_the_head() {
    let mut segs = run(4, |_, _| {});
    for (_, f) in &mut segs[2..] {
        f[15] = 11; // VLAN 11
    }
    let (out, _) = coalesced(&segs);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].1.gso.unwrap().l3(), 18);
}

/// The kernel's rule for a TSO frame it segments (and so the switch's, for a
/// port that does not take TSO): the N merged segments come back byte for
/// byte, IP ids counting up from the first's, PSH on the last only.
#[test]
fn re_segmenting_a_merged_run_gives_back_the_segments() {
    for v6 in [false, true] {
        let segs = run(5, |i, s| {
            s.v6 = v6;
            if i == 4 {
                s.payload = 123;
                s.flags |= TCP_PSH;
            }
        });
        let (out, merged) = coalesced(&segs);
        assert_eq!((out.len(), merged), (1, 4), "v6 {v6}");
        let (f, off) = &out[0];
        let mut scratch = vec![0u8; 65_536];
        let mut got = Vec::new();
        let n = segment(f, off, &mut scratch, |s| {
            got.push(s.to_vec());
            true
        })
        .unwrap();
        assert_eq!(n, 5);
        for (i, (g, (_, want))) in got.iter().zip(&segs).enumerate() {
            assert_eq!(g, want, "v6 {v6}: segment {i} differs");
        }
    }
}

/// Garbage, truncations and every single-byte change of a run never panic,
/// and every frame is accounted for (forwarded, or merged into another).
#[test]
fn nothing_a_peer_sends_makes_it_panic() {
    let base = run(4, |i, s| s.partial = i % 2 == 0);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..3000 {
        let mut segs = base.clone();
        for _ in 0..1 + next() % 3 {
            let k = (next() % 4) as usize;
            let f = &mut segs[k].1;
            // Anywhere, or within the headers (where most checks look).
            let within = match next() % 3 {
                0 => f.len(),
                1 => f.len().min(90),
                _ => {
                    f.truncate((next() as usize) % (f.len() + 1));
                    0
                }
            };
            if within > 0 {
                let at = (next() as usize) % within;
                f[at] = next() as u8;
            }
        }
        let (out, _) = coalesced(&segs);
        for (f, off) in &out {
            if let Some(g) = off.gso.filter(|g| g.kind == GsoKind::Tcp4) {
                // What is merged is consistent: the headers describe the frame.
                assert_eq!(get16(f, g.l3() + 2) as usize, f.len() - g.l3());
            }
        }
    }
}
