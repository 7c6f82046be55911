//! The UDP source port: per-flow entropy for the underlay's ECMP and RSS.
//!
//! RFC 7348 §5 recommends that the source port be "a hash of fields from the
//! inner packet", in the dynamic/private range 49152..=65535, so that the
//! underlay spreads different flows over its paths while every packet of one flow
//! takes the same path (no reordering). The hash here is a fixed function with no
//! random state: a flow maps to the same port on every run, every host, every
//! thread.

use crate::frame::ETH_HLEN;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// An inclusive range of UDP source ports to map flow hashes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SrcPortRange {
    lo: u16,
    hi: u16,
}

impl SrcPortRange {
    /// 49152..=65535, the IANA dynamic range RFC 7348 §5 recommends.
    pub const DEFAULT: SrcPortRange = SrcPortRange {
        lo: 49152,
        hi: 65535,
    };

    /// `lo..=hi`; `None` if the range is empty or includes port 0.
    pub const fn new(lo: u16, hi: u16) -> Option<SrcPortRange> {
        if lo == 0 || lo > hi {
            None
        } else {
            Some(SrcPortRange { lo, hi })
        }
    }

    pub fn lo(&self) -> u16 {
        self.lo
    }

    pub fn hi(&self) -> u16 {
        self.hi
    }

    /// Maps a 32-bit hash onto the range, uniformly (multiply-shift, no modulo).
    pub fn port(&self, hash: u32) -> u16 {
        let span = (self.hi - self.lo) as u64 + 1;
        self.lo + ((hash as u64 * span) >> 32) as u16
    }
}

impl Default for SrcPortRange {
    fn default() -> SrcPortRange {
        SrcPortRange::DEFAULT
    }
}

/// A word-at-a-time mixer; [`FlowHasher::finish`] runs the MurmurHash3 64-bit
/// finaliser so every input bit affects every output bit.
struct FlowHasher(u64);

impl FlowHasher {
    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(27);
    }

    fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 59));
        }
    }

    fn finish(self) -> u32 {
        let mut z = self.0;
        z ^= z >> 33;
        z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
        z ^= z >> 33;
        z = z.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        z ^= z >> 33;
        (z >> 32) as u32 ^ z as u32
    }
}

/// A deterministic hash of an inner frame's flow:
///
/// - always the destination MAC, source MAC and EtherType;
/// - for IPv4 (a well-formed header: version 4, IHL >= 5, all of it present):
///   protocol, source and destination addresses, and for TCP or UDP both ports,
///   unless the packet is a fragment (MF set or a non-zero offset), since only
///   the first fragment carries ports and all fragments must take one path;
/// - for IPv6: next header, both addresses, and for TCP or UDP directly after
///   the fixed header both ports (extension headers are not walked: such packets
///   hash by addresses only, which still keeps each flow on one path).
///
/// Anything truncated just contributes the fields that are there. Never panics.
pub fn flow_hash(inner: &[u8]) -> u32 {
    let mut h = FlowHasher(0x5678_616e_2d66_6c77);
    if inner.len() < ETH_HLEN {
        h.bytes(inner);
        return h.finish();
    }
    h.bytes(&inner[..ETH_HLEN]); // dst MAC, src MAC, EtherType
    let ethertype = u16::from_be_bytes([inner[12], inner[13]]);
    let l3 = &inner[ETH_HLEN..];
    match ethertype {
        ETHERTYPE_IPV4 => {
            let Some(&vihl) = l3.first() else {
                return h.finish();
            };
            let ihl = (vihl & 0x0f) as usize * 4;
            if vihl >> 4 != 4 || ihl < 20 || l3.len() < ihl {
                return h.finish();
            }
            let proto = l3[9];
            let frag = u16::from_be_bytes([l3[6], l3[7]]) & 0x3fff;
            h.word(proto as u64);
            h.bytes(&l3[12..20]);
            if frag == 0 && (proto == PROTO_TCP || proto == PROTO_UDP) {
                if let Some(ports) = l3.get(ihl..ihl + 4) {
                    h.bytes(ports);
                }
            }
        }
        ETHERTYPE_IPV6 => {
            if l3.len() < 40 || l3[0] >> 4 != 6 {
                return h.finish();
            }
            let next = l3[6];
            h.word(next as u64);
            h.bytes(&l3[8..40]);
            if next == PROTO_TCP || next == PROTO_UDP {
                if let Some(ports) = l3.get(40..44) {
                    h.bytes(ports);
                }
            }
        }
        _ => {}
    }
    h.finish()
}

/// The UDP source port for an inner frame: [`flow_hash`] mapped into `range`.
pub fn flow_src_port(inner: &[u8], range: SrcPortRange) -> u16 {
    range.port(flow_hash(inner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vxlan::testutil::SplitMix64;
    use etherparse::PacketBuilder;
    use std::collections::{HashMap, HashSet};

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn udp4(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(sport, dport)
            .write(&mut v, payload)
            .unwrap();
        v
    }

    fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, seq: u32) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4(src, dst, 64)
            .tcp(sport, dport, seq, 1000)
            .write(&mut v, &[1, 2, 3])
            .unwrap();
        v
    }

    fn tcp6(sport: u16, dport: u16, seq: u32) -> Vec<u8> {
        let mut v = Vec::new();
        let mut src = [0u8; 16];
        src[0] = 0xfd;
        src[15] = 1;
        let mut dst = src;
        dst[15] = 2;
        PacketBuilder::ethernet2(A, B)
            .ipv6(src, dst, 64)
            .tcp(sport, dport, seq, 1000)
            .write(&mut v, &[9; 20])
            .unwrap();
        v
    }

    #[test]
    fn range_mapping() {
        assert_eq!(SrcPortRange::new(0, 10), None);
        assert_eq!(SrcPortRange::new(10, 9), None);
        let r = SrcPortRange::default();
        assert_eq!((r.lo(), r.hi()), (49152, 65535));
        assert_eq!(r.port(0), 49152);
        assert_eq!(r.port(u32::MAX), 65535);
        let one = SrcPortRange::new(4000, 4000).unwrap();
        assert!([0, 1, u32::MAX].iter().all(|h| one.port(*h) == 4000));
        let full = SrcPortRange::new(1, 65535).unwrap();
        assert_eq!((full.port(0), full.port(u32::MAX)), (1, 65535));
    }

    #[test]
    fn same_flow_same_port() {
        // different payload, length, TCP sequence: still one flow
        assert_eq!(
            flow_hash(&udp4(1000, 53, b"a")),
            flow_hash(&udp4(1000, 53, b"bbbb"))
        );
        assert_eq!(
            flow_hash(&tcp4([10, 0, 0, 1], [10, 0, 0, 2], 40000, 443, 1)),
            flow_hash(&tcp4([10, 0, 0, 1], [10, 0, 0, 2], 40000, 443, 99999))
        );
        assert_eq!(flow_hash(&tcp6(1, 2, 3)), flow_hash(&tcp6(1, 2, 4)));
        // pinned value: the function must not change between builds or versions
        let f = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 40000, 443, 1);
        assert_eq!(
            flow_src_port(&f, SrcPortRange::DEFAULT),
            flow_src_port(&f, SrcPortRange::DEFAULT)
        );
        assert_eq!(flow_hash(&f), PINNED);
    }

    /// `flow_hash(tcp4(10.0.0.1 -> 10.0.0.2, 40000 -> 443))`, recorded once.
    const PINNED: u32 = 1_328_668_025;

    #[test]
    fn each_field_matters() {
        let base = flow_hash(&tcp4([10, 0, 0, 1], [10, 0, 0, 2], 40000, 443, 1));
        for other in [
            tcp4([10, 0, 0, 3], [10, 0, 0, 2], 40000, 443, 1),
            tcp4([10, 0, 0, 1], [10, 0, 0, 3], 40000, 443, 1),
            tcp4([10, 0, 0, 1], [10, 0, 0, 2], 40001, 443, 1),
            tcp4([10, 0, 0, 1], [10, 0, 0, 2], 40000, 444, 1),
        ] {
            assert_ne!(flow_hash(&other), base);
        }
        let mut f = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 40000, 443, 1);
        f[0] ^= 1;
        assert_ne!(flow_hash(&f), base, "dst MAC");
        f[0] ^= 1;
        f[11] ^= 1;
        assert_ne!(flow_hash(&f), base, "src MAC");
        f[11] ^= 1;
        f[23] = PROTO_UDP; // protocol (offset 14 + 9)
        assert_ne!(flow_hash(&f), base, "protocol");
        assert_ne!(flow_hash(&tcp6(1, 2, 0)), flow_hash(&tcp6(1, 3, 0)));
        assert_ne!(flow_hash(&tcp6(1, 2, 0)), flow_hash(&tcp6(5, 2, 0)));
        // non-IP: MACs and EtherType only
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let h = flow_hash(&arp);
        arp[20] = 7;
        assert_eq!(flow_hash(&arp), h);
        arp[13] = 0x35;
        assert_ne!(flow_hash(&arp), h);
    }

    #[test]
    fn fragments_hash_without_ports() {
        let first = udp4(1000, 2000, &[0; 8]);
        let mut frag = first.clone();
        // MF set: a first fragment; and a later one (offset 185 * 8), ports absent
        frag[20] = 0x20;
        let mut later = frag.clone();
        later[20] = 0x00;
        later[21] = 185;
        later[34..38].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(flow_hash(&frag), flow_hash(&later));
        assert_ne!(flow_hash(&frag), flow_hash(&first));
        let mut other_ports = frag.clone();
        other_ports[34..38].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(flow_hash(&other_ports), flow_hash(&frag));
    }

    #[test]
    fn flows_spread_over_the_range() {
        let r = SrcPortRange::DEFAULT;
        let mut ports = HashSet::new();
        let mut buckets: HashMap<u16, u32> = HashMap::new();
        let n = 16_384u32;
        for i in 0..n {
            let f = tcp4(
                [10, 0, (i >> 8) as u8, i as u8],
                [10, 1, 0, 1],
                33000 + (i % 7) as u16,
                443,
                0,
            );
            let p = flow_src_port(&f, r);
            assert!((49152..=65535).contains(&p));
            ports.insert(p);
            *buckets.entry((p - 49152) / 1024).or_default() += 1;
        }
        // 16 buckets of 1024 ports, 1024 flows expected in each
        assert_eq!(buckets.len(), 16);
        for (b, c) in &buckets {
            assert!((850..1200).contains(c), "bucket {b}: {c}");
        }
        // 16384 flows into 16384 ports: ~63% distinct if uniform
        assert!(ports.len() > 9_500, "{} distinct ports", ports.len());
        // flows differing only in the source port spread too
        let by_sport: HashSet<u16> = (0..1000u16)
            .map(|s| flow_src_port(&tcp4([10, 0, 0, 1], [10, 0, 0, 2], 30000 + s, 443, 0), r))
            .collect();
        assert!(by_sport.len() > 950, "{}", by_sport.len());
    }

    #[test]
    fn random_frames_never_panic() {
        let mut rng = SplitMix64::new(0x4a54_0001);
        let mut buf = [0u8; 128];
        let mut templates = vec![udp4(1, 2, &[0; 30]), tcp6(3, 4, 5)];
        templates.push(tcp4([1, 2, 3, 4], [5, 6, 7, 8], 9, 10, 11));
        for i in 0..100_000u64 {
            let len = rng.below(buf.len() as u64 + 1) as usize;
            let t = &templates[(i % 3) as usize];
            if i.is_multiple_of(2) {
                rng.fill(&mut buf[..len]);
            } else {
                let n = len.min(t.len());
                buf[..n].copy_from_slice(&t[..n]);
                buf[n..len].fill(0);
                let at = rng.below(len.max(1) as u64) as usize;
                if len > 0 {
                    buf[at] = rng.next_u64() as u8;
                }
            }
            let h = flow_hash(&buf[..len]);
            assert_eq!(h, flow_hash(&buf[..len]));
        }
    }
}
