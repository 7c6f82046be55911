//! A pool's full policy and space warning: one set of rules for
//! `fabric.toml` and the control socket (`pool.set`), with errors that say
//! what is allowed.

/// `on_full`: what a request that needs a new cluster gets when the pool
/// has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnFull {
    /// `"error"`: it fails; the guest sees an I/O error (VIRTIO_BLK_S_IOERR).
    #[default]
    Error,
    /// `"pause"`: it waits until space appears (LVM's thin pool queue mode).
    Pause,
}

/// Default `warn_percent`.
pub const DEFAULT_WARN_PERCENT: u8 = 80;

impl OnFull {
    /// The value as `fabric.toml` and `fabricctl` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFull::Error => "error",
            OnFull::Pause => "pause",
        }
    }

    /// `"error"` or `"pause"`; otherwise why not.
    pub fn parse(s: &str) -> Result<OnFull, String> {
        match s {
            "error" => Ok(OnFull::Error),
            "pause" => Ok(OnFull::Pause),
            _ => Err(format!(
                "`on_full` must be \"error\" or \"pause\", not {s:?}"
            )),
        }
    }
}

/// A `warn_percent` of 1..=100; otherwise why not.
pub fn warn_percent(v: i64) -> Result<u8, String> {
    u8::try_from(v)
        .ok()
        .filter(|p| (1..=100).contains(p))
        .ok_or_else(|| format!("`warn_percent` must be in 1..=100, not {v}"))
}
