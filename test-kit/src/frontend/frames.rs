//! Builders for test Ethernet frames.

/// The broadcast MAC address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IEEE "local experimental" ethertype: safe for arbitrary test payloads.
pub const ETHERTYPE_TEST: u16 = 0x88b5;

/// A locally administered unicast MAC derived from `n`: `02:00:` + `n` big endian.
pub fn mac(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x02, 0x00, b[0], b[1], b[2], b[3]]
}

/// An untagged Ethernet II frame (no FCS, no padding).
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An 802.1Q tagged frame, priority 0, VLAN id `vid` (12 bits).
pub fn tagged(dst: [u8; 6], src: [u8; 6], vid: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    assert!(vid < 4096, "VLAN id {vid} does not fit in 12 bits");
    let mut f = Vec::with_capacity(18 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Destination MAC of a frame.
pub fn dst_of(frame: &[u8]) -> [u8; 6] {
    frame[0..6].try_into().expect("frame shorter than 6 bytes")
}

/// Source MAC of a frame.
pub fn src_of(frame: &[u8]) -> [u8; 6] {
    frame[6..12]
        .try_into()
        .expect("frame shorter than 12 bytes")
}

/// VLAN id of an 802.1Q tagged frame, `None` if untagged.
pub fn vid_of(frame: &[u8]) -> Option<u16> {
    if frame.len() >= 16 && frame[12..14] == ETHERTYPE_VLAN.to_be_bytes() {
        Some(u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff)
    } else {
        None
    }
}

/// A payload of `len` bytes where every frame gets different content: byte `i` is
/// `seed + i` mixed, so reordering or corruption shows up in comparisons.
pub fn payload(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
