//! The Internet checksum (RFC 1071): the ones'-complement sum of 16-bit
//! big-endian words, complemented. Summed 8 bytes at a time into a u64 (the two
//! 32-bit halves of each word added, carries folded at the end), across split
//! buffers of any length (an odd buffer leaves the next one starting on the low
//! byte of a word).

use crate::headers::{IpVersion, L4Proto, Layout};
use crate::OffloadError;

/// A running ones'-complement sum.
#[derive(Clone, Copy, Debug, Default)]
pub struct Checksum {
    sum: u64,
    /// An odd number of bytes has been added: the next byte is a word's low byte.
    odd: bool,
}

impl Checksum {
    pub const fn new() -> Checksum {
        Checksum { sum: 0, odd: false }
    }

    /// Adds `data` as if it followed everything added before.
    pub fn add(&mut self, mut data: &[u8]) -> &mut Checksum {
        if self.odd {
            if let Some((&low, rest)) = data.split_first() {
                self.sum += u64::from(low);
                self.odd = false;
                data = rest;
            }
        }
        let mut words = data.chunks_exact(8);
        // Each step adds at most 2^33: no overflow before 2^31 steps (16 GiB).
        for w in &mut words {
            let v = u64::from_be_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            self.sum += (v >> 32) + (v & 0xffff_ffff);
        }
        let mut pairs = words.remainder().chunks_exact(2);
        for p in &mut pairs {
            self.sum += u64::from(u16::from_be_bytes([p[0], p[1]]));
        }
        if let [high] = pairs.remainder() {
            self.sum += u64::from(*high) << 8;
            self.odd = true;
        }
        self
    }

    /// Adds one big-endian 16-bit word as if it stood at an even offset,
    /// whatever was added before (a field value taken out of its place).
    pub fn add_u16(&mut self, word: u16) -> &mut Checksum {
        self.sum += u64::from(word);
        self
    }

    /// The ones'-complement sum folded to 16 bits (not complemented). Never 0 for
    /// a sum that had any non-zero word.
    pub fn fold(&self) -> u16 {
        let mut s = self.sum;
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// The checksum field value: the complement of [`Checksum::fold`].
    pub fn finish(&self) -> u16 {
        !self.fold()
    }

    /// The TCP/UDP pseudo-header (RFC 9293 §3.1 for IPv4, RFC 8200 §8.1 for IPv6):
    /// source and destination address (`addresses`, as [`Layout::addresses`]
    /// gives them), protocol and transport length. The sum is the same for both
    /// layouts since the zero bytes add nothing.
    pub fn pseudo_header(addresses: &[u8], proto: L4Proto, l4_len: u32) -> Checksum {
        let mut c = Checksum::new();
        c.add(addresses);
        c.sum += u64::from(proto.number()) + u64::from(l4_len >> 16) + u64::from(l4_len & 0xffff);
        c
    }
}

/// The RFC 1071 checksum of `data`, ready to store.
pub fn checksum(data: &[u8]) -> u16 {
    Checksum::new().add(data).finish()
}

/// A checksum field value as a sender must store it: for UDP a computed 0 is
/// sent as 0xffff (RFC 768: 0 means "no checksum"); Linux does the same for
/// every protocol (`skb_checksum_help`, `__udp_gso_segment`: CSUM_MANGLED_0).
fn mangle_zero(c: u16) -> u16 {
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// Completes a partial checksum (virtio 1.2 §5.1.6.2, NEEDS_CSUM): the
/// ones'-complement sum from `start` to the end of `frame`, the field itself
/// included (the driver left the pseudo-header sum there), complemented and
/// stored at `start + offset`. A result of 0 is stored as 0xffff, as Linux's
/// `skb_checksum_help` does. [`OffloadError::CsumOutsideFrame`] when the
/// two-byte field does not lie inside `frame`.
pub fn complete_csum(frame: &mut [u8], start: usize, offset: usize) -> Result<(), OffloadError> {
    let field = start
        .checked_add(offset)
        .filter(|f| f.checked_add(2).is_some_and(|end| end <= frame.len()))
        .ok_or(OffloadError::CsumOutsideFrame)?;
    let value = mangle_zero(checksum(&frame[start..]));
    frame[field..field + 2].copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// The sum a TCP/UDP checksum of `frame` covers except its own field: the
/// pseudo-header for a transport length running to the end of the frame, and
/// the transport header and payload with the field counted as 0. `None` when
/// the frame's head does not parse.
fn l4_sum_without_field(frame: &[u8], layout: &Layout) -> Option<(Checksum, u16)> {
    let l4_len = u32::try_from(frame.len() - layout.l4).ok()?;
    let mut c = Checksum::pseudo_header(layout.addresses(frame)?, layout.proto, l4_len);
    let field = layout.l4 + layout.proto.csum_offset();
    c.add(&frame[layout.l4..field]);
    c.add(&[0, 0]);
    c.add(&frame[field + 2..]);
    let stored = u16::from_be_bytes([frame[field], frame[field + 1]]);
    Some((c, stored))
}

/// Whether the TCP/UDP checksum of `frame` is complete and right (RFC 1071 §1:
/// the sum over pseudo-header and segment, field included, folds to 0xffff).
/// The transport length is taken to run to the end of the frame. A UDP checksum
/// of 0 (IPv4: "none sent") is not a valid one here: this crate never emits it.
/// False for frames whose head does not parse as IP + TCP/UDP.
pub fn l4_csum_valid(frame: &[u8]) -> bool {
    let Ok(layout) = Layout::parse(frame) else {
        return false;
    };
    let Some((mut c, stored)) = l4_sum_without_field(frame, &layout) else {
        return false;
    };
    if layout.proto == L4Proto::Udp && stored == 0 {
        return false;
    }
    c.add_u16(stored);
    c.fold() == 0xffff
}

/// Whether the transport checksum of `frame` at `l4` (protocol `proto`, TCP 6
/// or UDP 17) holds exactly the partial state a kernel peer with checksum
/// offload leaves (CHECKSUM_PARTIAL, Linux `tcp_v4_send_check`,
/// `udp6_set_csum`): the folded pseudo-header sum for a transport length
/// running to the end of the frame, not complemented, so that completing it per
/// virtio §5.1.6.2 yields the right checksum. False when the head does not
/// parse, `l4`/`proto` are not what it says, or the field holds anything else.
pub fn is_partial_csum(frame: &[u8], l4: usize, proto: u8) -> bool {
    let Ok(layout) = Layout::parse(frame) else {
        return false;
    };
    if layout.l4 != l4 || layout.proto.number() != proto {
        return false;
    }
    let Ok(l4_len) = u32::try_from(frame.len() - l4) else {
        return false;
    };
    let Some(addresses) = layout.addresses(frame) else {
        return false;
    };
    let field = l4 + layout.proto.csum_offset();
    let stored = u16::from_be_bytes([frame[field], frame[field + 1]]);
    stored == Checksum::pseudo_header(addresses, layout.proto, l4_len).fold()
}

/// Whether the IPv4 header checksum of `frame` is right (true for IPv6, which
/// has none); false when the head does not parse.
pub fn ip_csum_valid(frame: &[u8]) -> bool {
    match Layout::parse(frame) {
        Ok(l) if l.ip == IpVersion::V4 => Checksum::new().add(&frame[l.l3..l.l4]).fold() == 0xffff,
        Ok(_) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 §3's example: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(Checksum::new().add(&data).fold(), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    fn naive(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in data.chunks(2) {
            let w = u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
            s += w;
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn any_split_of_any_length_sums_the_same() {
        let mut rng = test_kit::SplitMix64::new(7);
        for len in 0..200usize {
            let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let whole = Checksum::new().add(&data).fold();
            assert_eq!(whole, naive(&data), "len {len}");
            for cut1 in 0..=len.min(11) {
                for cut2 in cut1..=len.min(cut1 + 9) {
                    let mut c = Checksum::new();
                    c.add(&data[..cut1])
                        .add(&data[cut1..cut2])
                        .add(&data[cut2..]);
                    assert_eq!(c.fold(), whole, "len {len} cuts {cut1} {cut2}");
                }
            }
        }
    }

    #[test]
    fn completion_stores_the_complement_and_refuses_fields_outside() {
        let mut frame = vec![0u8; 40];
        frame[20..]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8 * 7);
        // The field's partial content is part of the sum.
        let want = checksum(&frame[20..]);
        let partial = u16::from_be_bytes([frame[24], frame[25]]);
        complete_csum(&mut frame, 20, 4).unwrap();
        assert_eq!(u16::from_be_bytes([frame[24], frame[25]]), want);
        // With the partial sum (the pseudo-header's stand-in) the whole verifies.
        let mut verify = Checksum::new();
        verify.add(&frame[20..]).add_u16(partial);
        assert_eq!(verify.fold(), 0xffff);
        assert_eq!(
            complete_csum(&mut frame, 20, 19),
            Err(OffloadError::CsumOutsideFrame)
        );
        assert_eq!(
            complete_csum(&mut frame, 38, 1),
            Err(OffloadError::CsumOutsideFrame)
        );
        assert_eq!(
            complete_csum(&mut frame, usize::MAX, 1),
            Err(OffloadError::CsumOutsideFrame)
        );
        complete_csum(&mut frame, 38, 0).unwrap();
        // A sum of 0xffff complements to 0, which is sent as 0xffff.
        let mut ones = [0xffu8, 0xff, 0, 0];
        complete_csum(&mut ones, 0, 2).unwrap();
        assert_eq!(ones, [0xff, 0xff, 0xff, 0xff]);
    }
}
