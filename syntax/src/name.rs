//! Names of switches, ports, pools and volumes.

/// The longest name, in bytes (all of them ASCII).
pub const NAME_MAX: usize = 32;

/// The name rule of switches, ports, pools and volumes: 1 to [`NAME_MAX`] of
/// `A-Z a-z 0-9 _ . - @`, and neither `.` nor `..`. `@` is there for snapshot
/// names like `vm1-disk@monday`. Every allowed byte is safe in a file name
/// (a volume's default socket is `<run_dir>/<volume>.sock`), a log line and a
/// shell argument. `Err` says what is wrong.
pub fn valid_name(s: &str) -> Result<(), String> {
    let ok = (1..=NAME_MAX).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'@'));
    // "." and ".." pass the character rule but would make a default socket
    // path like "run/...sock"; harmless, but also certainly a typo.
    if !ok || s == "." || s == ".." {
        return Err(format!(
            "invalid name {s:?} (expected 1 to {NAME_MAX} of A-Z a-z 0-9 _ . - @)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let longest = "x".repeat(NAME_MAX);
        for good in [
            "a",
            "vm1-disk@monday",
            "br0",
            "a.b_c-d",
            "@",
            longest.as_str(),
        ] {
            assert_eq!(valid_name(good), Ok(()), "{good:?}");
        }
        let long = "x".repeat(NAME_MAX + 1);
        for bad in [
            "",
            ".",
            "..",
            "a b",
            "vm/1",
            "a\0",
            "é",
            "a:b",
            long.as_str(),
        ] {
            assert!(valid_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            valid_name("a b"),
            Err("invalid name \"a b\" (expected 1 to 32 of A-Z a-z 0-9 _ . - @)".to_owned())
        );
    }
}
