//! Rate limits: an export's I/O limits and a port's ingress policing, each
//! a rate and a burst. One set of rules for `fabric.toml` and the control
//! socket ([`ExportLimits::from_keys`], [`RateLimit::from_keys`]), with
//! errors that name the key.

/// A token bucket's setting: `rate` a second, at most `burst` at once; both
/// at least 1. The unit is the key's (requests, bytes, kbit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub rate: u64,
    pub burst: u64,
}

/// A key's value refused, and why (the message names the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitError {
    pub key: &'static str,
    pub message: String,
}

impl RateLimit {
    /// The limit of the keys `rate_key` and `burst_key`: none without a
    /// rate; the burst defaults to `default_burst(rate)`. Zero is refused
    /// (leave the key out for no limit), and so is a burst without a rate.
    pub fn from_keys(
        (rate_key, rate): (&'static str, Option<u64>),
        (burst_key, burst): (&'static str, Option<u64>),
        default_burst: fn(u64) -> u64,
    ) -> Result<Option<RateLimit>, LimitError> {
        let positive = |key: &'static str, v: Option<u64>| match v {
            Some(0) => Err(LimitError {
                key,
                message: format!("`{key}` must be at least 1 (leave it out for no limit)"),
            }),
            v => Ok(v),
        };
        let rate = positive(rate_key, rate)?;
        let burst = positive(burst_key, burst)?;
        match (rate, burst) {
            (Some(rate), burst) => Ok(Some(RateLimit {
                rate,
                burst: burst.unwrap_or_else(|| default_burst(rate)),
            })),
            (None, Some(_)) => Err(LimitError {
                key: burst_key,
                message: format!("`{burst_key}` is given without `{rate_key}`"),
            }),
            (None, None) => Ok(None),
        }
    }
}

/// An export's I/O limits (`None`: unlimited). Reads and writes are limited
/// apart; a discard or write-zeroes counts as one write request and no
/// bytes; flushes are not limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportLimits {
    /// `iops_read`, `iops_read_burst`: read requests a second.
    pub iops_read: Option<RateLimit>,
    /// `iops_write`, `iops_write_burst`: write requests a second.
    pub iops_write: Option<RateLimit>,
    /// `bytes_per_sec_read`, `bytes_per_sec_read_burst`: bytes read a second.
    pub bytes_per_sec_read: Option<RateLimit>,
    /// `bytes_per_sec_write`, `bytes_per_sec_write_burst`: bytes written a second.
    pub bytes_per_sec_write: Option<RateLimit>,
}

/// The keys of [`ExportLimits`], rate then burst, in field order.
pub const EXPORT_LIMIT_KEYS: [(&str, &str); 4] = [
    ("iops_read", "iops_read_burst"),
    ("iops_write", "iops_write_burst"),
    ("bytes_per_sec_read", "bytes_per_sec_read_burst"),
    ("bytes_per_sec_write", "bytes_per_sec_write_burst"),
];

/// An export's default burst: a tenth of a second at the rate (at least
/// 1), as QEMU's throttling does.
pub fn default_export_burst(rate: u64) -> u64 {
    (rate / 10).max(1)
}

/// A port's default burst in kbit, as Open vSwitch's
/// `ingress_policing_burst`.
pub const DEFAULT_POLICING_BURST_KBIT: u64 = 8000;

impl ExportLimits {
    /// The limits from the value of each key of [`EXPORT_LIMIT_KEYS`]
    /// (`value(key)`), checked as `fabric.toml` checks them.
    pub fn from_keys(value: impl Fn(&str) -> Option<u64>) -> Result<ExportLimits, LimitError> {
        let [iops_read, iops_write, bytes_per_sec_read, bytes_per_sec_write] = EXPORT_LIMIT_KEYS
            .map(|(rate, burst)| {
                RateLimit::from_keys(
                    (rate, value(rate)),
                    (burst, value(burst)),
                    default_export_burst,
                )
            });
        Ok(ExportLimits {
            iops_read: iops_read?,
            iops_write: iops_write?,
            bytes_per_sec_read: bytes_per_sec_read?,
            bytes_per_sec_write: bytes_per_sec_write?,
        })
    }

    /// Each limit with its keys, in [`EXPORT_LIMIT_KEYS`] order.
    pub fn by_key(&self) -> [((&'static str, &'static str), Option<RateLimit>); 4] {
        let [a, b, c, d] = EXPORT_LIMIT_KEYS;
        [
            (a, self.iops_read),
            (b, self.iops_write),
            (c, self.bytes_per_sec_read),
            (d, self.bytes_per_sec_write),
        ]
    }

    pub fn is_unlimited(&self) -> bool {
        *self == ExportLimits::default()
    }
}

/// A port's ingress policing from `rate` (kbit/s) and `burst` (kbit).
pub fn port_policing(
    rate: Option<u64>,
    burst: Option<u64>,
) -> Result<Option<RateLimit>, LimitError> {
    RateLimit::from_keys(("rate", rate), ("burst", burst), |_| {
        DEFAULT_POLICING_BURST_KBIT
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_limits_take_defaults_and_name_the_key_they_refuse() {
        let keys = |pairs: &'static [(&'static str, u64)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|&(_, v)| v)
        };
        let l = ExportLimits::from_keys(keys(&[("iops_read", 2000), ("bytes_per_sec_write", 5)]))
            .unwrap();
        assert_eq!(
            l.iops_read,
            Some(RateLimit {
                rate: 2000,
                burst: 200
            })
        );
        assert_eq!(l.bytes_per_sec_write, Some(RateLimit { rate: 5, burst: 1 }));
        assert_eq!(l.iops_write, None);
        let e = ExportLimits::from_keys(keys(&[("iops_write_burst", 10)])).unwrap_err();
        assert_eq!(e.key, "iops_write_burst");
        assert_eq!(
            e.message,
            "`iops_write_burst` is given without `iops_write`"
        );
        let e = ExportLimits::from_keys(keys(&[("bytes_per_sec_read", 0)])).unwrap_err();
        assert_eq!(e.key, "bytes_per_sec_read");
        assert!(ExportLimits::from_keys(keys(&[])).unwrap().is_unlimited());
    }

    #[test]
    fn port_policing_defaults_to_the_ovs_burst() {
        assert_eq!(
            port_policing(Some(10_000), None).unwrap(),
            Some(RateLimit {
                rate: 10_000,
                burst: 8000
            })
        );
        assert_eq!(port_policing(None, None).unwrap(), None);
        assert_eq!(port_policing(None, Some(5)).unwrap_err().key, "burst");
        assert_eq!(port_policing(Some(1), Some(0)).unwrap_err().key, "burst");
    }
}
