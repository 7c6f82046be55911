//! The daemon's `counters export=NAME ...` lines, read by whole words. Shared by
//! both test libraries (`support` and, through `#[path]`, `blk_support`).

/// The number after the word `name` in a counters line (whole words only: `writes`
/// does not match `write_bytes`, and `writes 32` is not `writes 320`).
pub fn counter_in(line: &str, name: &str) -> u64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}
