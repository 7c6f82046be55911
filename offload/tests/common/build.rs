//! Synthetic frames for the crafted-metadata and fuzz tests: Ethernet (with
//! optional 802.1Q tags), IPv4 or IPv6, TCP (with options) or UDP, a payload, and
//! the transport checksum field holding the pseudo-header sum, as a Linux sender
//! with checksum offload leaves it.

use fabric_offload::headers::{IpVersion, L4Proto, Layout};
use fabric_offload::Checksum;

pub struct Spec {
    pub ip: IpVersion,
    pub proto: L4Proto,
    pub tags: usize,
    /// TCP option bytes (multiple of 4, at most 40).
    pub tcp_opts: usize,
    /// IPv4 option bytes (multiple of 4, at most 40).
    pub ip_opts: usize,
    pub payload: usize,
    pub tcp_flags: u8,
    pub seed: u8,
}

impl Spec {
    pub fn new(ip: IpVersion, proto: L4Proto, payload: usize) -> Spec {
        Spec {
            ip,
            proto,
            tags: 0,
            tcp_opts: 12,
            ip_opts: 0,
            payload,
            tcp_flags: 0x18,
            seed: 1,
        }
    }
}

/// The frame `spec` describes and its layout.
pub fn frame(spec: &Spec) -> (Vec<u8>, Layout) {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for t in 0..spec.tags {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 7 + t as u8]);
    }
    let l3 = f.len() + 2;
    let l4_hdr = match spec.proto {
        L4Proto::Tcp => 20 + spec.tcp_opts,
        L4Proto::Udp => 8,
    };
    let l4_len = l4_hdr + spec.payload;
    match spec.ip {
        IpVersion::V4 => {
            f.extend_from_slice(&[0x08, 0x00]);
            let ihl = 20 + spec.ip_opts;
            let mut ip = vec![0u8; ihl];
            ip[0] = 0x40 | (ihl / 4) as u8;
            ip[1] = 0x02; // ECT(0)
            ip[2..4].copy_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&[0xfe, 0xf0 + spec.seed % 16]);
            ip[6] = 0x40;
            ip[8] = 64;
            ip[9] = spec.proto.number();
            ip[12..16].copy_from_slice(&[10, 9, 0, 1]);
            ip[16..20].copy_from_slice(&[10, 9, 0, 2]);
            for (i, b) in ip[20..].iter_mut().enumerate() {
                *b = if i == 0 { 0x94 } else { 1 }; // router alert-ish, then NOPs
            }
            let c = Checksum::new().add(&ip).finish();
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        IpVersion::V6 => {
            f.extend_from_slice(&[0x86, 0xdd]);
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            ip[6] = spec.proto.number();
            ip[7] = 64;
            ip[8] = 0xfd;
            ip[23] = 1;
            ip[24] = 0xfd;
            ip[39] = 2;
            f.extend_from_slice(&ip);
        }
    }
    let l4 = f.len();
    match spec.proto {
        L4Proto::Tcp => {
            let mut tcp = vec![0u8; l4_hdr];
            tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
            tcp[2..4].copy_from_slice(&5001u16.to_be_bytes());
            tcp[4..8].copy_from_slice(&0xfffff000u32.to_be_bytes()); // wraps
            tcp[8..12].copy_from_slice(&77u32.to_be_bytes());
            tcp[12] = ((l4_hdr / 4) as u8) << 4;
            tcp[13] = spec.tcp_flags;
            tcp[14..16].copy_from_slice(&502u16.to_be_bytes());
            for b in tcp[20..].iter_mut() {
                *b = 1; // NOP options
            }
            f.extend_from_slice(&tcp);
        }
        L4Proto::Udp => {
            let mut udp = [0u8; 8];
            udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
            udp[2..4].copy_from_slice(&5002u16.to_be_bytes());
            udp[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&udp);
        }
    }
    f.extend((0..spec.payload).map(|i| (i as u8).wrapping_mul(31).wrapping_add(spec.seed)));
    let layout = Layout::parse(&f).expect("built frame parses");
    assert_eq!((layout.l3, layout.l4), (l3, l4));
    set_partial(&mut f, &layout);
    (f, layout)
}

/// Stores the pseudo-header sum for a transport length running to the end of
/// the frame in the checksum field (CHECKSUM_PARTIAL).
pub fn set_partial(f: &mut [u8], layout: &Layout) {
    let field = layout.l4 + layout.proto.csum_offset();
    let len = (f.len() - layout.l4) as u32;
    let sum = Checksum::pseudo_header(layout.addresses(f).unwrap(), layout.proto, len).fold();
    f[field..field + 2].copy_from_slice(&sum.to_be_bytes());
}
