//! An export's I/O limits: requests and bytes per second, reads and writes
//! apart, each a [`TokenBucket`] with its burst. Every queue of the export
//! (of every session) takes from the same buckets; another export has its
//! own, so a limited export never slows an unlimited one.
//!
//! What counts: a read is one read request and its bytes; a write one write
//! request and its bytes; a discard or write-zeroes one write request and
//! no bytes (it moves none; counting its range would stall a 1 GiB trim for
//! minutes); FLUSH and GET_ID are never limited.

use super::request::Op;
use vswitch::{Rate, TokenBucket};

/// The limits of an export; `None`: unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportLimits {
    /// Read requests per second.
    pub iops_read: Option<Rate>,
    /// Write (and discard, write-zeroes) requests per second.
    pub iops_write: Option<Rate>,
    /// Bytes read per second.
    pub bytes_per_sec_read: Option<Rate>,
    /// Bytes written per second.
    pub bytes_per_sec_write: Option<Rate>,
}

impl ExportLimits {
    pub fn is_unlimited(&self) -> bool {
        *self == ExportLimits::default()
    }
}

/// The buckets of an [`ExportLimits`].
#[derive(Debug)]
pub(crate) struct Limiter {
    limits: ExportLimits,
    iops_read: Option<TokenBucket>,
    iops_write: Option<TokenBucket>,
    bytes_read: Option<TokenBucket>,
    bytes_write: Option<TokenBucket>,
}

impl Limiter {
    /// Full buckets at `now` (nanoseconds, see [`vswitch::monotonic_ns`]).
    pub(crate) fn new(limits: ExportLimits, now: u64) -> Limiter {
        let bucket = |r: Option<Rate>| r.map(|r| TokenBucket::new(r, now));
        Limiter {
            limits,
            iops_read: bucket(limits.iops_read),
            iops_write: bucket(limits.iops_write),
            bytes_read: bucket(limits.bytes_per_sec_read),
            bytes_write: bucket(limits.bytes_per_sec_write),
        }
    }

    pub(crate) fn limits(&self) -> ExportLimits {
        self.limits
    }

    /// Takes `op`'s tokens if every bucket it counts in has them: `Ok`, or
    /// `Err` with the nanoseconds until they all will (nothing taken then).
    pub(crate) fn admit(&mut self, op: &Op, now: u64) -> Result<(), u64> {
        let mut no_bucket = None;
        let (ops, bytes, len) = match *op {
            Op::Read { len, .. } => (&mut self.iops_read, &mut self.bytes_read, len),
            Op::Write { len, .. } => (&mut self.iops_write, &mut self.bytes_write, len),
            Op::Zero { .. } => (&mut self.iops_write, &mut no_bucket, 0),
            Op::Flush | Op::GetId { .. } => return Ok(()),
        };
        let mut wait = 0;
        for (bucket, cost) in [(&mut *ops, 1), (&mut *bytes, len)] {
            if let Some(b) = bucket {
                b.refill(now);
                wait = wait.max(b.wait(cost));
            }
        }
        if wait > 0 {
            return Err(wait);
        }
        for (bucket, cost) in [(ops, 1), (bytes, len)] {
            if let Some(b) = bucket {
                b.take(cost);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU64;

    const MS: u64 = 1_000_000;

    fn rate(per_sec: u64, burst: u64) -> Option<Rate> {
        Some(Rate {
            per_sec: NonZeroU64::new(per_sec).unwrap(),
            burst: NonZeroU64::new(burst).unwrap(),
        })
    }

    fn read(len: u64) -> Op {
        Op::Read { offset: 0, len }
    }

    fn write(len: u64) -> Op {
        Op::Write { offset: 0, len }
    }

    #[test]
    fn reads_and_writes_count_in_their_own_buckets() {
        let mut l = Limiter::new(
            ExportLimits {
                iops_read: rate(1000, 2),
                ..ExportLimits::default()
            },
            0,
        );
        assert_eq!(l.admit(&read(4096), 0), Ok(()));
        assert_eq!(l.admit(&read(4096), 0), Ok(()));
        assert_eq!(l.admit(&read(4096), 0), Err(MS));
        // Writes, flushes and GET_ID are not limited by a read limit.
        for _ in 0..100 {
            assert_eq!(l.admit(&write(4096), 0), Ok(()));
            assert_eq!(l.admit(&Op::Flush, 0), Ok(()));
            assert_eq!(l.admit(&Op::GetId { len: 20 }, 0), Ok(()));
        }
        assert_eq!(l.admit(&read(4096), MS), Ok(()));
    }

    #[test]
    fn a_request_waits_for_the_slower_bucket_and_takes_from_none_meanwhile() {
        // 100 writes/s (burst 10), 1 MB/s (burst 64 KiB).
        let mut l = Limiter::new(
            ExportLimits {
                iops_write: rate(100, 10),
                bytes_per_sec_write: rate(1_000_000, 65_536),
                ..ExportLimits::default()
            },
            0,
        );
        assert_eq!(l.admit(&write(65_536), 0), Ok(()));
        // Requests left, bytes not: 4 KiB of bytes missing.
        assert_eq!(l.admit(&write(4096), 0), Err(4_096_000));
        // The refused request took no request token: 9 more fit at once.
        for _ in 0..9 {
            assert_eq!(l.admit(&write(0), 0), Ok(()));
        }
        assert_eq!(l.admit(&write(0), 0), Err(10 * MS));
    }

    #[test]
    fn discards_count_as_write_requests_without_bytes() {
        let mut l = Limiter::new(
            ExportLimits {
                iops_write: rate(10, 1),
                bytes_per_sec_write: rate(1, 1),
                ..ExportLimits::default()
            },
            0,
        );
        let trim = Op::Zero {
            offset: 0,
            len: 1 << 30,
            discard: true,
        };
        assert_eq!(l.admit(&trim, 0), Ok(()));
        assert_eq!(l.admit(&trim, 0), Err(100 * MS));
        assert_eq!(l.admit(&trim, 100 * MS), Ok(()));
    }

    #[test]
    fn no_limits_admit_everything() {
        let mut l = Limiter::new(ExportLimits::default(), 0);
        assert!(l.limits().is_unlimited());
        for _ in 0..10_000 {
            assert_eq!(l.admit(&read(1 << 22), 0), Ok(()));
            assert_eq!(l.admit(&write(1 << 22), 0), Ok(()));
        }
    }
}
