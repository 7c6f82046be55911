//! A token bucket: `rate` tokens per second flow in, at most `burst` are
//! kept. Ports police their ingress with one (tokens are bits), exports
//! limit their requests with them (tokens are requests or bytes).
//!
//! The clock is injected: every call takes `now` in nanoseconds of a
//! monotonic clock ([`monotonic_ns`] in the daemon, any counter in tests),
//! so the arithmetic is deterministic. No allocation, no floating point: the
//! level is kept in token-nanoseconds (a token is `NANOS` of them), so a
//! refill of `elapsed` nanoseconds adds exactly `elapsed * rate`.
//!
//! A cost larger than the burst would never fit: such a take is allowed
//! when the bucket is full and leaves it in debt (the level goes below
//! zero), so a big request waits for a full bucket, never forever, and the
//! long-run rate stays exact.

use std::num::NonZeroU64;
use std::sync::OnceLock;
use std::time::Instant;

/// Token-nanoseconds per token.
const NANOS: i128 = 1_000_000_000;

/// A bucket's setting: `per_sec` tokens a second, at most `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: NonZeroU64,
    pub burst: NonZeroU64,
}

/// A token bucket (see the module doc).
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: Rate,
    /// Tokens times `NANOS`; below zero after a take larger than the burst.
    level: i128,
    /// When `level` was last brought up to date.
    last: u64,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: Rate, now: u64) -> TokenBucket {
        TokenBucket {
            rate,
            level: i128::from(rate.burst.get()) * NANOS,
            last: now,
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Adds what flowed in since the last call (a clock going back adds nothing).
    pub fn refill(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        let full = i128::from(self.rate.burst.get()) * NANOS;
        let added = i128::from(elapsed).saturating_mul(i128::from(self.rate.per_sec.get()));
        self.level = self.level.saturating_add(added).min(full);
    }

    /// Nanoseconds until `cost` tokens may be taken (0: now), as of the last
    /// [`TokenBucket::refill`]. A cost above the burst needs a full bucket.
    pub fn wait(&self, cost: u64) -> u64 {
        let need = i128::from(cost.min(self.rate.burst.get())) * NANOS;
        if self.level >= need {
            return 0;
        }
        let missing = need - self.level;
        let per_ns = i128::from(self.rate.per_sec.get());
        // Rounded up: after this long the tokens are there.
        u64::try_from((missing + per_ns - 1) / per_ns).unwrap_or(u64::MAX)
    }

    /// Takes `cost` tokens whether or not they are there (see
    /// [`TokenBucket::wait`] to ask first).
    pub fn take(&mut self, cost: u64) {
        self.level -= i128::from(cost) * NANOS;
    }

    /// Refills, then takes `cost` tokens if they are there: `Ok`, or `Err`
    /// with the nanoseconds until they will be.
    pub fn try_take(&mut self, cost: u64, now: u64) -> Result<(), u64> {
        self.refill(now);
        match self.wait(cost) {
            0 => {
                self.take(cost);
                Ok(())
            }
            wait => Err(wait),
        }
    }
}

/// Nanoseconds of the monotonic clock since this process first asked: the
/// `now` of the daemon's buckets.
pub fn monotonic_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn rate(per_sec: u64, burst: u64) -> Rate {
        Rate {
            per_sec: NonZeroU64::new(per_sec).unwrap(),
            burst: NonZeroU64::new(burst).unwrap(),
        }
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_the_rate() {
        let mut b = TokenBucket::new(rate(1000, 10), 0);
        for _ in 0..10 {
            assert_eq!(b.try_take(1, 0), Ok(()));
        }
        // Empty: the next token is 1 ms away.
        assert_eq!(b.try_take(1, 0), Err(SEC / 1000));
        assert_eq!(b.try_take(1, SEC / 1000 - 1), Err(1));
        assert_eq!(b.try_take(1, SEC / 1000), Ok(()));
        // Over one second exactly `rate` more tokens come.
        let mut taken = 0;
        let start = SEC / 1000;
        for t in 1..=1000u64 {
            if b.try_take(1, start + t * SEC / 1000).is_ok() {
                taken += 1;
            }
        }
        assert_eq!(taken, 1000);
    }

    #[test]
    fn an_idle_bucket_keeps_at_most_its_burst() {
        let mut b = TokenBucket::new(rate(100, 5), 0);
        for _ in 0..5 {
            b.try_take(1, 0).unwrap();
        }
        // An hour idle fills it to the burst, not 360,000 tokens.
        let later = 3600 * SEC;
        for _ in 0..5 {
            assert_eq!(b.try_take(1, later), Ok(()));
        }
        assert_eq!(b.try_take(1, later), Err(SEC / 100));
    }

    #[test]
    fn a_cost_above_the_burst_waits_for_a_full_bucket_and_leaves_debt() {
        // 1 MB/s with a 64 KB burst; one 256 KB request.
        let mut b = TokenBucket::new(rate(1_000_000, 65_536), 0);
        b.try_take(1, 0).unwrap();
        // Not full: waits for the one missing token.
        assert_eq!(b.try_take(262_144, 0), Err(1000));
        assert_eq!(b.try_take(262_144, 1000), Ok(()));
        // 196,608 tokens of debt plus the next one: 196.609 ms.
        assert_eq!(b.try_take(1, 1000), Err(196_609_000));
    }

    #[test]
    fn fractions_of_a_token_are_kept_between_refills() {
        // 3 tokens a second, refilled every 100 ms: 0.3 tokens each time.
        let mut b = TokenBucket::new(rate(3, 2), 0);
        b.try_take(2, 0).unwrap();
        let mut taken = 0;
        for t in 1..=30u64 {
            if b.try_take(1, t * SEC / 10).is_ok() {
                taken += 1;
            }
        }
        assert_eq!(taken, 9, "3 s at 3/s");
    }

    #[test]
    fn a_clock_going_back_adds_nothing() {
        let mut b = TokenBucket::new(rate(10, 1), 5 * SEC);
        b.try_take(1, 5 * SEC).unwrap();
        assert!(b.try_take(1, SEC).is_err());
        assert_eq!(b.try_take(1, 5 * SEC), Err(SEC / 10));
    }

    #[test]
    fn huge_rates_and_costs_do_not_overflow() {
        let mut b = TokenBucket::new(rate(u64::MAX, u64::MAX), 0);
        assert_eq!(b.try_take(u64::MAX, u64::MAX), Ok(()));
        assert_eq!(b.try_take(u64::MAX, u64::MAX), Err(SEC));
        let slow = TokenBucket::new(rate(1, 1), 0);
        assert_eq!(slow.wait(u64::MAX), 0);
    }
}
