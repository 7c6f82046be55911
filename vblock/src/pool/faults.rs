//! Injected I/O faults for the asynchronous engines (tests and fault drills).

/// Injected I/O errors for the asynchronous engine (tests and fault drills):
/// an operation touching a listed byte range of the device completes with
/// EIO instead of reaching the kernel, as a failing disk sector would.
/// Costs one relaxed load per operation while nothing is armed.
#[derive(Debug, Default)]
pub struct IoFaults {
    armed: std::sync::atomic::AtomicBool,
    ranges: std::sync::Mutex<Vec<std::ops::Range<u64>>>,
    /// Extra time every device flush takes, in microseconds (a slow disk).
    sync_delay_us: std::sync::atomic::AtomicU64,
}

impl IoFaults {
    /// Operations touching `range` (device bytes) fail with EIO from now on.
    pub fn fail(&self, range: std::ops::Range<u64>) {
        self.ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(range);
        self.armed.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Removes every injected error.
    pub fn clear(&self) {
        self.ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.armed
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Every device flush (the engine's fsync and the pool's own) takes
    /// `delay` longer from now on, as on a disk slow to empty its cache.
    pub fn slow_sync(&self, delay: std::time::Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.sync_delay_us
            .store(us, std::sync::atomic::Ordering::Relaxed);
    }

    /// The injected flush delay, if any.
    pub fn sync_delay(&self) -> Option<std::time::Duration> {
        match self
            .sync_delay_us
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            us => Some(std::time::Duration::from_micros(us)),
        }
    }

    /// True if `[offset, offset + len)` touches a failing range.
    pub fn hits(&self, offset: u64, len: u64) -> bool {
        if !self.armed.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let end = offset.saturating_add(len);
        self.ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|r| r.start < end && offset < r.end)
    }
}
