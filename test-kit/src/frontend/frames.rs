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

/// The RARP QEMU's `qemu_announce_self` sends for a migrated guest `mac`
/// (RFC 903, `announce_self_create` in QEMU's `net/announce.c`): broadcast,
/// ethertype 0x8035, Ethernet/IPv4 addresses of 6 and 4 bytes, opcode 3
/// (request reverse), sender and target hardware address `mac`, protocol
/// addresses 0, zero-padded to 60 bytes.
pub fn rarp(mac: [u8; 6]) -> Vec<u8> {
    let mut body = vec![0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x03];
    body.extend_from_slice(&mac);
    body.extend_from_slice(&[0; 4]);
    body.extend_from_slice(&mac);
    body.extend_from_slice(&[0; 4]);
    let mut f = eth(BROADCAST, mac, 0x8035, &body);
    f.resize(60, 0);
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

/// A TCP/IPv4 segment from 10.0.0.1:1000 to 10.0.0.2:2000 carrying `data`,
/// sequence `seq`, in an untagged Ethernet frame, with its TCP checksum left
/// partial as a sender offloading it leaves it (virtio 1.2 §5.1.6.2,
/// NEEDS_CSUM): the folded pseudo-header sum in the field. The IP header
/// checksum is complete. TCP starts at byte 34, its checksum field at 50.
pub fn tcp4_partial(dst: [u8; 6], src: [u8; 6], seq: u32, data: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0];
    let total = u16::try_from(40 + data.len()).unwrap_or(u16::MAX);
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    let ip_csum = !inet_sum(&[&ip]);
    ip[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    let mut tcp = vec![0x03, 0xe8, 0x07, 0xd0];
    tcp.extend_from_slice(&seq.to_be_bytes());
    // ack 0, data offset 5, ACK|PSH, window 65535, checksum, urgent 0.
    tcp.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    let l4_len = (20 + data.len()) as u32;
    let pseudo = inet_sum(&[&ip[12..20], &[0, 6], &(l4_len as u16).to_be_bytes()]);
    tcp[16..18].copy_from_slice(&pseudo.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ip.extend_from_slice(data);
    eth(dst, src, ETHERTYPE_IPV4, &ip)
}

/// RFC 1071: the folded ones'-complement sum of `chunks` (not complemented).
pub fn inet_sum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut odd: Option<u8> = None;
    for byte in chunks.iter().flat_map(|c| c.iter()) {
        match odd.take() {
            Some(hi) => sum += u64::from(u16::from_be_bytes([hi, *byte])),
            None => odd = Some(*byte),
        }
    }
    if let Some(hi) = odd {
        sum += u64::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Checks an untagged TCP/IPv4 frame as a receiver would, with smoltcp: the
/// IP header checksum, the total length against the frame, and the TCP
/// checksum over the pseudo-header. `Err` says what is wrong.
pub fn tcp4_check(frame: &[u8]) -> Result<(), String> {
    use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpAddress, Ipv4Packet, TcpPacket};
    let eth = EthernetFrame::new_checked(frame).map_err(|e| format!("ethernet: {e}"))?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return Err(format!("not IPv4: {}", eth.ethertype()));
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|e| format!("ipv4: {e}"))?;
    if usize::from(ip.total_len()) != frame.len() - 14 {
        return Err(format!(
            "ip total length {} in a {}-byte frame",
            ip.total_len(),
            frame.len()
        ));
    }
    if !ip.verify_checksum() {
        return Err("ip header checksum".into());
    }
    let tcp = TcpPacket::new_checked(ip.payload()).map_err(|e| format!("tcp: {e}"))?;
    let (src, dst) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    if !tcp.verify_checksum(&src, &dst) {
        return Err("tcp checksum".into());
    }
    Ok(())
}

/// The sequence number and payload of an untagged TCP/IPv4 frame (no options).
pub fn tcp4_payload(frame: &[u8]) -> (u32, &[u8]) {
    let seq = u32::from_be_bytes(frame[38..42].try_into().expect("a TCP header"));
    let data_offset = usize::from(frame[46] >> 4) * 4;
    (seq, &frame[34 + data_offset..])
}
