//! An NBD server for the volumes and snapshots of the daemon's pools (the
//! README's "Images in and out"): `qemu-img`, `nbdcopy` or `nbdinfo` read
//! and write volumes through the pool's own data path while the daemon runs.
//!
//! - `wire`: the protocol's formats and the validation of client values;
//! - `session`: one connection, negotiation then transmission;
//! - `disk`: a connection's volume over the pool's io_uring engine;
//! - `server`: the listening sockets and the sessions being served.
//!
//! Export names, and who may write a volume: `crate::runtime::nbd`.

mod disk;
mod server;
mod session;
pub mod wire;

pub use server::NbdServer;

use std::sync::atomic::{AtomicU64, Ordering};

/// What the NBD server has seen, for tests and the counters report.
#[derive(Debug, Default)]
pub struct NbdStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections closed for input that broke the protocol (bad magic,
    /// unknown client flags, oversize option or write).
    pub closed_bad_input: AtomicU64,
    /// Options answered with an error (unknown, malformed, unknown export,
    /// a writable volume already in use).
    pub options_refused: AtomicU64,
    /// Requests carried out (successfully or not).
    pub requests: AtomicU64,
    /// Requests answered with an error without reaching the pool (unknown
    /// command or flag, misaligned, out of range, too long, a change to a
    /// read-only export).
    pub requests_refused: AtomicU64,
}

impl NbdStats {
    /// `counters nbd connections=N ...`, the daemon's report line.
    pub fn report_line(&self) -> String {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "counters nbd connections={} closed_bad_input={} options_refused={} requests={} requests_refused={}",
            n(&self.connections),
            n(&self.closed_bad_input),
            n(&self.options_refused),
            n(&self.requests),
            n(&self.requests_refused)
        )
    }
}
