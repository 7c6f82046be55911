//! Deterministic data patterns: every byte is a function of `(seed, absolute
//! device offset)`, so a buffer written at one offset and read back through
//! any other split (other chunk sizes, another queue, another client) can be
//! verified on its own, and two seeds never agree on a whole sector.

use std::fmt;

/// splitmix64 finaliser.
pub fn mix64(z: u64) -> u64 {
    // SplitMix64's first output for state `z` is exactly this finaliser.
    crate::SplitMix64::new(z).next_u64()
}

/// The 8-byte word of the pattern that covers device bytes `[8 * word, 8 * word + 8)`.
fn word(seed: u64, word: u64) -> [u8; 8] {
    mix64(seed.wrapping_mul(0xD605_BBB5_8C8A_BBB3) ^ word).to_le_bytes()
}

/// Fills `buf` with the pattern of `seed` for device bytes `[offset, offset + buf.len())`.
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let w = word(seed, pos / 8);
        let in_word = (pos % 8) as usize;
        let n = (8 - in_word).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&w[in_word..in_word + n]);
        i += n;
        pos += n as u64;
    }
}

/// The pattern of `seed` for device bytes `[offset, offset + len)`.
pub fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(seed, offset, &mut v);
    v
}

/// The first wrong byte found by [`verify`] or [`verify_zero`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Device offset of the first wrong byte.
    pub offset: u64,
    pub expected: u8,
    pub got: u8,
    /// How many bytes of the buffer are wrong in all.
    pub wrong_bytes: usize,
    /// What was expected (`seed N` or `zeros`).
    pub what: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "data mismatch at device offset {} (sector {}): expected {:#04x} ({}), got {:#04x}; {} wrong bytes in the buffer",
            self.offset,
            self.offset / 512,
            self.expected,
            self.what,
            self.got,
            self.wrong_bytes
        )
    }
}

impl std::error::Error for Mismatch {}

fn compare(expected: &[u8], got: &[u8], offset: u64, what: String) -> Result<(), Mismatch> {
    assert_eq!(expected.len(), got.len());
    let mut first = None;
    let mut wrong = 0;
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        if e != g {
            wrong += 1;
            first.get_or_insert((i, *e, *g));
        }
    }
    match first {
        None => Ok(()),
        Some((i, e, g)) => Err(Mismatch {
            offset: offset + i as u64,
            expected: e,
            got: g,
            wrong_bytes: wrong,
            what,
        }),
    }
}

/// Checks that `buf`, read from device offset `offset`, holds the pattern of `seed`.
pub fn verify(seed: u64, offset: u64, buf: &[u8]) -> Result<(), Mismatch> {
    let expected = pattern(seed, offset, buf.len());
    compare(&expected, buf, offset, format!("seed {seed}"))
}

/// Checks that `buf`, read from device offset `offset`, is all zeros.
pub fn verify_zero(offset: u64, buf: &[u8]) -> Result<(), Mismatch> {
    let expected = vec![0u8; buf.len()];
    compare(&expected, buf, offset, "zeros".to_string())
}

/// What one 512-byte sector holds, by [`classify_sectors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectorIs {
    /// The pattern of the n-th seed passed in.
    Seed(usize),
    Zeros,
    /// None of the candidates.
    Other,
}

/// Classifies every 512-byte sector of `buf` (read at `offset`, sector-aligned)
/// as one of `seeds`' patterns, zeros, or something else.
pub fn classify_sectors(seeds: &[u64], offset: u64, buf: &[u8]) -> Vec<SectorIs> {
    assert!(offset.is_multiple_of(512) && buf.len().is_multiple_of(512));
    buf.chunks(512)
        .enumerate()
        .map(|(i, s)| {
            let at = offset + 512 * i as u64;
            if let Some(k) = seeds.iter().position(|&seed| verify(seed, at, s).is_ok()) {
                SectorIs::Seed(k)
            } else if s.iter().all(|&b| b == 0) {
                SectorIs::Zeros
            } else {
                SectorIs::Other
            }
        })
        .collect()
}
