//! What a pool does when it runs out of space, and its space warning: the
//! policy the engines read without the pool lock, the requests waiting for
//! space, and the warning threshold, logged when crossed.
//!
//! `OnFull::Error` fails a request that needs a new cluster the pool cannot
//! give (the guest sees an I/O error); `OnFull::Pause` keeps it in its
//! engine, not started, until space appears (a volume or snapshot deleted,
//! a discard) or the policy is set back to `Error`, as LVM's thin pool does
//! in its queue mode. Requests that need no new cluster are not held.
//! Neither setting is stored in the pool: the daemon's configuration owns
//! them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use super::info::PoolSpace;

/// What a request needing space gets when the pool has none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFull {
    /// It fails (out of space).
    #[default]
    Error,
    /// It waits until space appears.
    Pause,
}

/// Default warning threshold, in percent of the pool's clusters used.
pub const DEFAULT_WARN_PERCENT: u8 = 80;

/// A pool's full policy, warning threshold and waiting requests (see the
/// module docs). Shared by the pool, its engines and the daemon's readers.
#[derive(Debug)]
pub struct SpaceWatch {
    /// The pool's name in log lines (set once by the daemon).
    name: OnceLock<String>,
    pause: AtomicBool,
    warn_percent: AtomicU8,
    /// Used at or above the threshold, as of the last change.
    over: AtomicBool,
    /// Requests waiting for space now, over every engine of the pool.
    paused: AtomicU64,
    /// Requests that ever waited for space (each once per wait).
    paused_total: AtomicU64,
}

impl Default for SpaceWatch {
    fn default() -> SpaceWatch {
        SpaceWatch {
            name: OnceLock::new(),
            pause: AtomicBool::new(false),
            warn_percent: AtomicU8::new(DEFAULT_WARN_PERCENT),
            over: AtomicBool::new(false),
            paused: AtomicU64::new(0),
            paused_total: AtomicU64::new(0),
        }
    }
}

/// Percent of `space`'s clusters used, rounded down.
pub fn used_percent(space: &PoolSpace) -> u64 {
    space.used_clusters * 100 / space.clusters.max(1)
}

/// Whether `space` is at or above `percent` used (exact: integer math).
fn is_over(space: &PoolSpace, percent: u8) -> bool {
    space.used_clusters * 100 >= u64::from(percent) * space.clusters
}

impl SpaceWatch {
    /// Names the pool in log lines (the first name given stays).
    pub fn set_name(&self, name: &str) {
        let _ = self.name.set(name.to_owned());
    }

    fn name(&self) -> &str {
        self.name.get().map_or("?", String::as_str)
    }

    pub fn on_full(&self) -> OnFull {
        if self.pause.load(Ordering::Relaxed) {
            OnFull::Pause
        } else {
            OnFull::Error
        }
    }

    /// Takes effect at the engines' next attempt: with `Error`, requests
    /// waiting for space fail then.
    pub fn set_on_full(&self, on_full: OnFull) {
        self.pause
            .store(on_full == OnFull::Pause, Ordering::Relaxed);
    }

    pub fn warn_percent(&self) -> u8 {
        self.warn_percent.load(Ordering::Relaxed)
    }

    /// A new threshold (1..=100, checked by the caller), judged at once
    /// against `space` (logged if that crosses it).
    pub fn set_warn_percent(&self, percent: u8, space: &PoolSpace) {
        self.warn_percent.store(percent, Ordering::Relaxed);
        self.observe(space);
    }

    /// Used at or above the warning threshold, as of the last change.
    pub fn over_threshold(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// Requests waiting for space now.
    pub fn paused(&self) -> u64 {
        self.paused.load(Ordering::Relaxed)
    }

    /// Requests that waited for space since the pool opened.
    pub fn paused_total(&self) -> u64 {
        self.paused_total.load(Ordering::Relaxed)
    }

    /// The pool's space changed (called under its lock, after every change):
    /// logs a crossing of the threshold, either way.
    pub(super) fn observe(&self, space: &PoolSpace) {
        let percent = self.warn_percent();
        let over = is_over(space, percent);
        if self.over.swap(over, Ordering::Relaxed) == over {
            return;
        }
        let used = used_percent(space);
        if over {
            log::warn!(
                "pool {}: {used}% used ({} of {} clusters), at or above warn_percent = {percent}",
                self.name(),
                space.used_clusters,
                space.clusters
            );
        } else {
            log::info!(
                "pool {}: {used}% used, below warn_percent = {percent} again",
                self.name()
            );
        }
    }

    /// One more request waits for space; the first of an episode is logged.
    pub(crate) fn pause_one(&self) {
        self.paused_total.fetch_add(1, Ordering::Relaxed);
        if self.paused.fetch_add(1, Ordering::Relaxed) == 0 {
            log::warn!(
                "pool {}: out of space: requests that need a new cluster wait \
                 (on_full = \"pause\") until space is freed (delete a snapshot or \
                 volume) or on_full is set to \"error\"",
                self.name()
            );
        }
    }

    /// `n` requests stopped waiting (started, or failed); the end of an
    /// episode is logged.
    pub(crate) fn resume(&self, n: u64) {
        if n > 0 && self.paused.fetch_sub(n, Ordering::Relaxed) == n {
            log::info!("pool {}: no request waits for space any more", self.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(used: u64, clusters: u64) -> PoolSpace {
        PoolSpace {
            cluster_size: 4096,
            clusters,
            used_clusters: used,
            free_clusters: clusters - used,
            releasing_clusters: 0,
            metadata_clusters: 0,
            provisioned: 0,
            capacity: clusters * 4096,
        }
    }

    #[test]
    fn the_threshold_flips_exactly_at_the_crossing_both_ways() {
        let w = SpaceWatch::default();
        // 80 % of 250 clusters is 200: 199 is under, 200 is over.
        for used in 0..200 {
            w.observe(&space(used, 250));
            assert!(!w.over_threshold(), "{used}");
        }
        w.observe(&space(200, 250));
        assert!(w.over_threshold());
        w.observe(&space(199, 250));
        assert!(!w.over_threshold());
        // Lowered at run time: judged at once.
        w.set_warn_percent(50, &space(125, 250));
        assert!(w.over_threshold());
        w.set_warn_percent(51, &space(125, 250));
        assert!(!w.over_threshold());
        // 100: only a pool with every cluster used.
        w.set_warn_percent(100, &space(249, 250));
        assert!(!w.over_threshold());
        w.observe(&space(250, 250));
        assert!(w.over_threshold());
    }

    #[test]
    fn paused_requests_are_counted_now_and_in_total() {
        let w = SpaceWatch::default();
        assert_eq!(w.on_full(), OnFull::Error);
        w.set_on_full(OnFull::Pause);
        assert_eq!(w.on_full(), OnFull::Pause);
        w.pause_one();
        w.pause_one();
        assert_eq!((w.paused(), w.paused_total()), (2, 2));
        w.resume(2);
        w.pause_one();
        assert_eq!((w.paused(), w.paused_total()), (1, 3));
        w.resume(1);
        assert_eq!(w.paused(), 0);
    }
}
