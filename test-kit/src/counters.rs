//! The daemon's counters as its renderings show them: the report's lines, read
//! by whole words, and the metrics' samples. Shared by `frontend` and `blkio`.

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

/// The number after `name=` in a line of the report's `key=value` form
/// (`counters switch=.. port=..`, `fdb switch=..`), whole words only.
pub fn field_in(line: &str, name: &str) -> u64 {
    let key = format!("{name}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// The samples of an OpenMetrics text by `name{labels}` as rendered; panics
/// on a sample line that does not parse.
pub fn metric_samples(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (key, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            (key.to_owned(), v)
        })
        .collect()
}
