//! Sizes in bytes.

use std::fmt;

/// Why [`parse_size`] refused a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeError {
    /// Not digits followed by an optional unit.
    Malformed,
    /// At least 2^64 bytes.
    TooLarge,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::Malformed => f.write_str(
                "not a size: expected a whole number of bytes with an optional unit \
                 B, K, M, G or T (powers of 1024; KiB, MiB... too), e.g. 16G",
            ),
            SizeError::TooLarge => f.write_str("too large (2^64 bytes or more)"),
        }
    }
}

impl std::error::Error for SizeError {}

/// Parses a size: decimal digits, then optionally one unit: `B`, or `K`, `M`,
/// `G`, `T` (powers of 1024) alone or followed by `iB`; units in any case.
/// Nothing else: no spaces, signs, fractions, and no `KB`/`GB`, which some
/// tools read as powers of 1000.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    if number.is_empty() {
        return Err(SizeError::Malformed);
    }
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(SizeError::Malformed),
    };
    // Only digits are left, so a parse error is an overflow.
    let n: u64 = number.parse().map_err(|_| SizeError::TooLarge)?;
    n.checked_mul(1u64 << shift).ok_or(SizeError::TooLarge)
}

/// Every caller's tests run this table through their own entry point.
#[doc(hidden)]
pub const SIZE_TABLE: &[(&str, Result<u64, SizeError>)] = &[
    ("0", Ok(0)),
    ("4096", Ok(4096)),
    ("512B", Ok(512)),
    ("512b", Ok(512)),
    ("64K", Ok(64 << 10)),
    ("64k", Ok(64 << 10)),
    ("64KiB", Ok(64 << 10)),
    ("64kib", Ok(64 << 10)),
    ("8M", Ok(8 << 20)),
    ("8MiB", Ok(8 << 20)),
    ("16G", Ok(16 << 30)),
    ("2GiB", Ok(2 << 30)),
    ("3T", Ok(3 << 40)),
    ("16777215T", Ok(16777215 << 40)),
    ("", Err(SizeError::Malformed)),
    ("K", Err(SizeError::Malformed)),
    ("iB", Err(SizeError::Malformed)),
    ("16iB", Err(SizeError::Malformed)),
    ("16GB", Err(SizeError::Malformed)),
    ("1KB", Err(SizeError::Malformed)),
    ("16 G", Err(SizeError::Malformed)),
    (" 1", Err(SizeError::Malformed)),
    ("1 ", Err(SizeError::Malformed)),
    ("-1", Err(SizeError::Malformed)),
    ("+5", Err(SizeError::Malformed)),
    ("1.5G", Err(SizeError::Malformed)),
    ("1e3", Err(SizeError::Malformed)),
    ("12X", Err(SizeError::Malformed)),
    ("16777216T", Err(SizeError::TooLarge)),
    ("18446744073709551616", Err(SizeError::TooLarge)),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_table() {
        for (input, want) in SIZE_TABLE {
            assert_eq!(parse_size(input), *want, "{input:?}");
        }
    }
}
