//! Random headers over random frames (SplitMix64, fixed seeds): parsing and
//! segmenting never panic, and whatever `segment` emits is sound: every GSO
//! segment has valid IPv4 and TCP/UDP checksums, fits `largest_frame`, and the
//! segments' payloads put together are the original payload; a completed
//! checksum satisfies virtio §5.1.6.2's rule.

mod common;

use common::build::{frame, Spec};
use common::SCRATCH;
use fabric_offload::csum::{ip_csum_valid, l4_csum_valid};
use fabric_offload::headers::{IpVersion, L4Proto, Layout};
use fabric_offload::{segment, Checksum, Offload, VnetHdr};
use test_kit::SplitMix64;

const ITERATIONS: u64 = 20_000;

fn pick<T: Copy>(rng: &mut SplitMix64, from: &[T]) -> T {
    from[rng.below(from.len() as u64) as usize]
}

/// A frame: mostly well-formed, sometimes with a few random bytes in its head
/// or cut short.
fn random_frame(rng: &mut SplitMix64) -> (Vec<u8>, Option<Layout>) {
    let ip = pick(rng, &[IpVersion::V4, IpVersion::V6]);
    let proto = pick(rng, &[L4Proto::Tcp, L4Proto::Udp]);
    let payload = match rng.below(4) {
        0 => rng.below(64) as usize,
        1 => rng.below(3000) as usize,
        2 => rng.below(20_000) as usize,
        _ => 60_000 + rng.below(6000) as usize,
    };
    let spec = Spec {
        ip,
        proto,
        tags: rng.below(3) as usize,
        tcp_opts: 4 * rng.below(11) as usize,
        ip_opts: if rng.below(4) == 0 {
            4 * rng.below(11) as usize
        } else {
            0
        },
        payload,
        tcp_flags: rng.next_u64() as u8,
        seed: rng.next_u64() as u8,
    };
    let (mut f, l) = frame(&spec);
    match rng.below(8) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(l.hdr_len as u64) as usize;
                f[at] = rng.next_u64() as u8;
            }
            (f, None)
        }
        1 => {
            f.truncate(rng.below(f.len() as u64 + 1) as usize);
            (f, None)
        }
        _ => (f, Some(l)),
    }
}

fn random_hdr(rng: &mut SplitMix64, len: usize, l: Option<&Layout>) -> VnetHdr {
    // Half the time, what a sane driver sends for a well-formed frame.
    if let (0, Some(l)) = (rng.below(2), l) {
        let gso_type = match (l.proto, l.ip) {
            (L4Proto::Udp, _) => 5,
            (L4Proto::Tcp, IpVersion::V4) => 1 | pick(rng, &[0, 0x80]),
            (L4Proto::Tcp, IpVersion::V6) => 4 | pick(rng, &[0, 0x80]),
        };
        let random_size = rng.below(9000) as u16;
        return VnetHdr {
            flags: pick(rng, &[0, 1]),
            gso_type,
            hdr_len: pick(rng, &[0, l.hdr_len as u16, len as u16]),
            gso_size: pick(rng, &[536, 1000, 1448, 1 + random_size]),
            csum_start: l.l4 as u16,
            csum_offset: l.proto.csum_offset() as u16,
            num_buffers: 0,
        };
    }
    let any16 = |rng: &mut SplitMix64| match rng.below(3) {
        0 => rng.next_u64() as u16,
        1 => rng.below(len as u64 + 3) as u16,
        _ => rng.below(200) as u16,
    };
    let right = l.is_some() && rng.below(3) != 0;
    let (csum_start, csum_offset) = match (right, l) {
        (true, Some(l)) => (l.l4 as u16, l.proto.csum_offset() as u16),
        _ => (any16(rng), rng.below(40) as u16),
    };
    let (r8a, r8b, r16) = (
        rng.next_u64() as u8,
        rng.next_u64() as u8,
        rng.next_u64() as u16,
    );
    VnetHdr {
        flags: pick(rng, &[0, 1, 1, 1, 2, 3, r8a]),
        gso_type: pick(rng, &[0, 1, 4, 5, 0x81, 0x84, 3, 0x80, r8b]),
        hdr_len: any16(rng),
        gso_size: pick(rng, &[0, 1, 7, 536, 1000, 1448, 9000, r16]),
        csum_start,
        csum_offset,
        num_buffers: rng.next_u64() as u16,
    }
}

#[test]
fn random_metadata_never_panics_and_what_is_emitted_is_sound() {
    let mut rng = SplitMix64::new(0x0ff1_0ad5);
    let mut scratch = vec![0u8; SCRATCH];
    let (mut accepted, mut segmented, mut completed) = (0, 0, 0);
    for i in 0..ITERATIONS {
        let (f, layout) = random_frame(&mut rng);
        let h = random_hdr(&mut rng, f.len(), layout.as_ref());
        // A head copy shorter than the frame sometimes, as the datapath may pass.
        let head_len = if rng.below(2) == 0 {
            f.len()
        } else {
            f.len().min(rng.below(200) as usize)
        };
        let Ok(off) = Offload::parse(&h, &f[..head_len], f.len()) else {
            continue;
        };
        accepted += 1;
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let n = segment(&f, &off, &mut scratch, |s| {
            segs.push(s.to_vec());
            true
        });
        let Ok(n) = n else {
            // Only a head copy too short for the headers may fail later.
            assert!(head_len < f.len(), "iteration {i}: {h:?}: {n:?}");
            continue;
        };
        assert_eq!(n, segs.len());
        match (&off.gso, off.csum) {
            (Some(g), _) => {
                segmented += 1;
                let hl = usize::from(g.hdr_len);
                assert_eq!(n, g.segments(f.len()), "iteration {i}");
                assert!(n >= 2);
                let mut payload = Vec::new();
                for s in &segs {
                    assert!(s.len() <= off.largest_frame(f.len()), "iteration {i}");
                    assert!(l4_csum_valid(s), "iteration {i}: {h:?} L4 checksum");
                    assert!(ip_csum_valid(s), "iteration {i}: {h:?} IPv4 checksum");
                    payload.extend_from_slice(&s[hl..]);
                }
                assert_eq!(&payload[..], &f[hl..], "iteration {i}: payload");
            }
            (None, Some((start, offset))) => {
                completed += 1;
                assert_eq!(n, 1);
                let (start, offset) = (usize::from(start), usize::from(offset));
                let out = &segs[0];
                assert_eq!(out.len(), f.len());
                // Only the field changed; with the partial sum it held, the
                // covered bytes verify (for a field at a word boundary).
                assert_eq!(&out[..start + offset], &f[..start + offset]);
                assert_eq!(&out[start + offset + 2..], &f[start + offset + 2..]);
                if offset.is_multiple_of(2) {
                    let old = u16::from_be_bytes([f[start + offset], f[start + offset + 1]]);
                    let mut c = Checksum::new();
                    c.add(&out[start..]).add_u16(old);
                    assert_eq!(c.fold(), 0xffff, "iteration {i}");
                }
                if layout.is_some_and(|l| l.l4 == start && l.proto.csum_offset() == offset) {
                    assert!(l4_csum_valid(out), "iteration {i}: completed checksum");
                }
            }
            (None, None) => {
                assert_eq!(segs, vec![f.clone()]);
            }
        }
    }
    eprintln!("fuzz: {ITERATIONS} frames, {accepted} accepted, {segmented} segmented, {completed} checksums completed");
    // The generator reaches every path, in numbers.
    assert!(segmented > ITERATIONS / 20, "{segmented} segmented");
    assert!(completed > ITERATIONS / 20, "{completed} completed");
}
