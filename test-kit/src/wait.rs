//! Waiting for something that should happen soon, with a bound that names it.

use std::time::{Duration, Instant};

/// Polls `f` every 10 ms until it returns `Some`; panics naming `what` after
/// `patience`.
pub fn wait_until<T>(what: &str, patience: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {patience:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`wait_until`] for a condition.
pub fn wait_for(what: &str, patience: Duration, mut cond: impl FnMut() -> bool) {
    wait_until(what, patience, || cond().then_some(()))
}
