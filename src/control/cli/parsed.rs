//! What one command's arguments parsed into, as the command table's
//! builders read them (`spec.rs`); filled by `args.rs`.

use super::values::parse_size;

/// What one command's arguments parsed into.
#[derive(Default)]
pub(super) struct Parsed {
    pub(super) pos: Vec<String>,
    pub(super) opts: Vec<(&'static str, String)>,
    pub(super) flags: Vec<&'static str>,
}

impl Parsed {
    pub(super) fn opt(&self, name: &str) -> Option<&str> {
        self.opts
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }

    /// An optional whole number option (`--mtu 9000`).
    pub(super) fn num<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        match self.opt(name) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| {
                format!(
                    "{name}: expected a whole number up to {}, not {v:?}",
                    max_of::<T>()
                )
            }),
        }
    }

    /// The required `--size`, in bytes.
    pub(super) fn size(&self) -> Result<u64, String> {
        parse_size(self.opt("--size").ok_or("--size is required")?)
    }
}

fn max_of<T>() -> u64 {
    match std::mem::size_of::<T>() {
        1 => u8::MAX.into(),
        2 => u16::MAX.into(),
        4 => u32::MAX.into(),
        _ => u64::MAX,
    }
}
