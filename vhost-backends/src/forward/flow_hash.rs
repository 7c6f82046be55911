//! Which receive queue of a multi-queue port a frame goes to.
//!
//! Frames of one flow must land on one queue, or the receiver sees them out
//! of order (TCP takes reordering for loss). The queue is chosen by a
//! Toeplitz hash (Microsoft RSS; the hash virtio-net's RSS uses, virtio 1.2
//! §5.1.6.4.3.1) with the well-known default key over, in RSS order:
//! - IPv4 / IPv6 source and destination address, then TCP or UDP source and
//!   destination port when the packet carries them (not for a fragment, whose
//!   later pieces have no ports: the whole flow then hashes on addresses);
//! - for any other frame, the destination and source MAC addresses.
//!
//! 802.1Q / 802.1ad tags before the EtherType are skipped, so a flow hashes
//! the same whether or not it is tagged. Guests control every byte hashed:
//! a guest can only pick which of its peer's enabled queues its own frames
//! land on, never a queue outside that set ([`pick_queue`]).

use super::FrameSource;

/// The RSS key of Microsoft's verification suite, also Linux's and DPDK's
/// default: 40 bytes hash up to 36 bytes of input (IPv6 + ports).
const KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// Bytes of the frame read to hash it: Ethernet, two tags, an IPv4 header
/// with options (60) or IPv6's (40), and the ports.
const HASH_HEAD: usize = 14 + 8 + 60 + 4;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// The Toeplitz hash of `input` (at most 36 bytes) under [`KEY`].
pub(crate) fn toeplitz(input: &[u8]) -> u32 {
    let mut window = u32::from_be_bytes([KEY[0], KEY[1], KEY[2], KEY[3]]);
    let mut hash = 0u32;
    for (i, &byte) in input.iter().take(KEY.len() - 4).enumerate() {
        let next = KEY[i + 4];
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                hash ^= window;
            }
            window = (window << 1) | u32::from(next & (0x80 >> bit) != 0);
        }
    }
    hash
}

/// The RSS input of a frame's head (see the module doc) into `out`;
/// returns its length.
fn hash_input(head: &[u8], out: &mut [u8; 36]) -> usize {
    let l2 = |out: &mut [u8; 36]| match head.get(..12) {
        Some(macs) => {
            out[..12].copy_from_slice(macs);
            12
        }
        None => 0,
    };
    let mut at = 12;
    let mut ethertype = 0;
    for _ in 0..3 {
        let Some(t) = head.get(at..at + 2) else {
            return l2(out);
        };
        ethertype = u16::from_be_bytes([t[0], t[1]]);
        if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
            break;
        }
        at += 4;
    }
    let l3 = at + 2;
    let Some(ip) = head.get(l3..) else {
        return l2(out);
    };
    let (addrs, proto, l4) = match ethertype {
        ETHERTYPE_IPV4 if ip.len() >= 20 && ip[0] >> 4 == 4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            // More fragments, or an offset: a fragment carries no ports we may use.
            let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
            let proto = if fragment || ihl < 20 { 0 } else { ip[9] };
            (&ip[12..20], proto, ihl)
        }
        ETHERTYPE_IPV6 if ip.len() >= 40 && ip[0] >> 4 == 6 => (&ip[8..40], ip[6], 40),
        _ => return l2(out),
    };
    out[..addrs.len()].copy_from_slice(addrs);
    let mut len = addrs.len();
    if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        if let Some(ports) = ip.get(l4..l4 + 4) {
            out[len..len + 4].copy_from_slice(ports);
            len += 4;
        }
    }
    len
}

/// The flow hash of a frame (head bytes as the sender wrote them).
pub(crate) fn hash_head(head: &[u8]) -> u32 {
    let mut input = [0u8; 36];
    let n = hash_input(head, &mut input);
    toeplitz(&input[..n])
}

/// The flow hash of `frame`.
pub(crate) fn flow_hash(frame: &FrameSource) -> u32 {
    let mut head = [0u8; HASH_HEAD];
    let n = frame.read_head(&mut head);
    hash_head(&head[..n])
}

/// The queue, among those set in `enabled` (bit i = queue i), that `hash`
/// maps to; `None` if none is enabled. The hash is scaled onto the enabled
/// queues (multiply and shift, no division), so every one of them gets its
/// share and a disabled one nothing.
pub(crate) fn pick_queue(hash: u32, enabled: u32) -> Option<usize> {
    let count = enabled.count_ones();
    if count == 0 {
        return None;
    }
    let nth = ((u64::from(hash) * u64::from(count)) >> 32) as u32;
    let mut mask = enabled;
    for _ in 0..nth {
        mask &= mask - 1; // clear the lowest set bit
    }
    Some(mask.trailing_zeros() as usize)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Ethernet frame carrying IPv4 `proto` from `src`:`sport` to
    /// `dst`:`dport` (ports written whatever the protocol), tagged with `vlan`
    /// if given.
    pub(crate) fn ipv4_frame(
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        sport: u16,
        dport: u16,
        vlan: Option<u16>,
    ) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        if let Some(v) = vlan {
            f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.resize(f.len().max(60), 0);
        f
    }

    /// Microsoft's RSS verification suite ("Verifying the RSS Hash
    /// Calculation"), IPv4 with and without TCP ports.
    #[test]
    fn toeplitz_matches_the_rss_verification_suite() {
        let cases = [
            // (source, destination, sport, dport, IPv4 hash, with TCP)
            (
                [66, 9, 149, 187],
                [161, 142, 100, 80],
                2794,
                1766,
                0x323e_8fc2,
                0x51cc_c178,
            ),
            (
                [199, 92, 111, 2],
                [65, 69, 140, 83],
                14230,
                4739,
                0xd718_262a,
                0xc626_b0ea,
            ),
        ];
        for (src, dst, sport, dport, ip_only, with_tcp) in cases {
            let tcp = ipv4_frame(src, dst, IPPROTO_TCP, sport, dport, None);
            assert_eq!(hash_head(&tcp), with_tcp, "{src:?} -> {dst:?} tcp");
            // A fragment hashes on addresses only.
            let mut frag = tcp.clone();
            frag[14 + 6] = 0x20; // more fragments
            assert_eq!(hash_head(&frag), ip_only, "{src:?} -> {dst:?} fragment");
            // Another protocol: addresses only.
            let icmp = ipv4_frame(src, dst, 1, sport, dport, None);
            assert_eq!(hash_head(&icmp), ip_only);
            // A tag changes nothing.
            let tagged = ipv4_frame(src, dst, IPPROTO_TCP, sport, dport, Some(10));
            assert_eq!(hash_head(&tagged), with_tcp);
        }
    }

    /// Frames that are not IP hash on their MAC addresses; truncated heads
    /// hash on what there is, never panic.
    #[test]
    fn other_frames_hash_on_mac_addresses_and_short_heads_are_safe() {
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        arp.resize(60, 0);
        assert_eq!(hash_head(&arp), toeplitz(&arp[..12]));
        let tcp = ipv4_frame([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_TCP, 1, 2, None);
        for n in 0..tcp.len() {
            hash_head(&tcp[..n]);
        }
        // An IPv4 header length below 20 uses no ports.
        let mut bad = tcp.clone();
        bad[14] = 0x41;
        assert_eq!(hash_head(&bad), toeplitz(&tcp[26..34]));
    }

    /// One flow always maps to one queue; many flows spread over every
    /// enabled queue, and a disabled queue gets nothing.
    #[test]
    fn one_flow_one_queue_and_many_flows_spread_over_enabled_queues() {
        for enabled in [0b1u32, 0b11, 0b1011, 0xff] {
            let mut seen = [0u32; 32];
            for port in 0..4096u16 {
                let f = ipv4_frame([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_UDP, port, 80, None);
                let q = pick_queue(hash_head(&f), enabled).unwrap();
                for _ in 0..3 {
                    assert_eq!(pick_queue(hash_head(&f), enabled), Some(q));
                }
                seen[q] += 1;
            }
            for (q, &n) in seen.iter().enumerate() {
                if enabled & (1 << q) == 0 {
                    assert_eq!(n, 0, "queue {q} is disabled in {enabled:#b}");
                } else {
                    // An even share is 4096 / count; allow it to be off by half.
                    let share = 4096 / enabled.count_ones();
                    assert!(n > share / 2, "queue {q} of {enabled:#b} got {n} of 4096");
                }
            }
        }
        assert_eq!(pick_queue(0xffff_ffff, 0), None);
        assert_eq!(pick_queue(0xffff_ffff, 0b1010), Some(3));
        assert_eq!(pick_queue(0, 0b1010), Some(1));
    }
}
