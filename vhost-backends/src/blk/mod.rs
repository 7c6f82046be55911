//! vhost-user-blk exports: one thin volume of a vblock pool per socket.
//!
//! [`request`] validates each virtio-blk request once at the boundary;
//! [`device`] is the vhost-user device (features, config space, one io_uring
//! per queue); [`BlkExport::spawn`] serves frontends on the socket one after
//! another through the shared [`SocketServer`], and on the export's migration
//! socket (if it has one) at the same time; [`handover`] lets one session at
//! a time run the queues; [`pause`] stops an export taking requests and
//! drains it.

pub mod device;
pub mod handover;
pub mod inflight;
pub mod limit;
pub mod pause;
pub mod request;

use crate::relay;
use crate::session::{ServeOptions, SocketServer};
use crate::GuestMemAtomic;
use device::BlkBackend;
use handover::QueueOwnership;
use limit::{ExportLimits, Limiter};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vblock::dev::FileDev;
use vblock::pool::Pool;
use vhost_user_backend::VringMutex;

/// The vring type of our devices.
pub type Vring = VringMutex<GuestMemAtomic>;

/// A pool shared by its exports (and the control plane).
pub type SharedPool = Arc<Mutex<Pool<FileDev>>>;

/// What the guest sees of an export.
#[derive(Clone, Debug)]
pub struct BlkExportConfig {
    /// Export name (the volume's name), for logs.
    pub name: String,
    pub socket: PathBuf,
    /// A second socket for a live migration's destination, served at the
    /// same time as `socket` (see [`handover`]).
    pub migration_socket: Option<PathBuf>,
    /// Volume id in the pool.
    pub volume: u32,
    pub queues: u16,
    pub queue_size: u16,
    pub read_only: bool,
    /// GET_ID serial (at most 20 bytes are sent).
    pub serial: String,
    /// The I/O limits it starts with ([`BlkExport::set_limits`] changes them).
    pub limits: ExportLimits,
}

/// Counters of one export (all connections).
#[derive(Debug, Default)]
pub struct BlkCounters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
    /// Discard and write-zeroes requests.
    pub discards: AtomicU64,
    /// Requests failed with IOERR by the backing device or pool.
    pub io_errors: AtomicU64,
    /// Writes failed with IOERR because the pool was full.
    pub out_of_space: AtomicU64,
    /// Requests answered IOERR/UNSUPP at parsing (out of range, read-only,
    /// malformed, unknown type).
    pub invalid: AtomicU64,
    /// Chains dropped without a status (no status byte, broken chain).
    pub bad_chains: AtomicU64,
    /// Reads and writes refused with IOERR for moving more than
    /// [`request::MAX_REQUEST_BYTES`] (a driver ignoring SIZE_MAX/SEG_MAX).
    pub too_large: AtomicU64,
    /// Queues stopped as broken: an available index further ahead than the
    /// queue holds, or rings outside guest memory.
    pub broken_queues: AtomicU64,
    /// Requests a previous daemon left in flight, run again after a restart
    /// (inflight region).
    pub resubmitted: AtomicU64,
    /// Rings that started while another session held the queues and waited
    /// for its release (a migration's destination; see [`handover`]).
    pub handover_waits: AtomicU64,
    /// Of those, rings refused (stopped as broken) because the other session
    /// still held the queues after [`handover::HANDOVER_PATIENCE`].
    pub handover_refused: AtomicU64,
    /// Requests that waited for the export's limits ([`limit`]) before
    /// they started.
    pub throttled: AtomicU64,
    /// Submit-to-completion latency, one histogram per [`TimedOp`].
    pub latency: [LatencyHistogram; 3],
}

impl BlkCounters {
    /// One line for logs and SIGUSR1.
    pub fn summary(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "reads {} ({} B) writes {} ({} B) flushes {} discards {} io_errors {} out_of_space {} invalid {} bad_chains {} too_large {} broken_queues {} resubmitted {} handover_waits {} handover_refused {} throttled {}",
            g(&self.reads),
            g(&self.read_bytes),
            g(&self.writes),
            g(&self.write_bytes),
            g(&self.flushes),
            g(&self.discards),
            g(&self.io_errors),
            g(&self.out_of_space),
            g(&self.invalid),
            g(&self.bad_chains),
            g(&self.too_large),
            g(&self.broken_queues),
            g(&self.resubmitted),
            g(&self.handover_waits),
            g(&self.handover_refused),
            g(&self.throttled)
        )
    }

    /// The latency histogram of `op`.
    pub fn latency(&self, op: TimedOp) -> &LatencyHistogram {
        &self.latency[op as usize]
    }
}

/// Upper bounds of the latency buckets in microseconds: 16 us, 32 us, ...,
/// 2^20 us (about 1 s). One more bucket takes anything slower (+Inf).
pub const LATENCY_BOUNDS_US: [u64; 17] = {
    let mut bounds = [0; 17];
    let mut i = 0;
    while i < bounds.len() {
        bounds[i] = 16 << i;
        i += 1;
    }
    bounds
};

/// Buckets of a [`LatencyHistogram`]: one per bound, and +Inf.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// The requests whose latency is measured, each in a histogram of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimedOp {
    Read,
    Write,
    Flush,
}

impl TimedOp {
    pub const ALL: [TimedOp; 3] = [TimedOp::Read, TimedOp::Write, TimedOp::Flush];

    /// Stable lower-case name, used by metrics.
    pub fn name(self) -> &'static str {
        match self {
            TimedOp::Read => "read",
            TimedOp::Write => "write",
            TimedOp::Flush => "flush",
        }
    }
}

/// Request latencies in fixed log2 buckets: relaxed atomics, no lock, no
/// allocation.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Requests per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS],
    /// Sum of every recorded latency, in microseconds.
    sum_us: AtomicU64,
}

/// A point-in-time copy of a [`LatencyHistogram`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Requests per bucket (not cumulative), bounds [`LATENCY_BOUNDS_US`]
    /// then +Inf.
    pub buckets: [u64; LATENCY_BUCKETS],
    pub sum_us: u64,
}

impl LatencySnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl LatencyHistogram {
    /// Counts one request that took `latency` (rounded up to a microsecond).
    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX);
        self.buckets[latency_bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// The bucket of a latency of `us` microseconds: the first bound >= `us`.
/// Bounds are `16 << i`, so that is `ceil(log2(us)) - 4`.
fn latency_bucket(us: u64) -> usize {
    if us <= LATENCY_BOUNDS_US[0] {
        return 0;
    }
    let log2_ceil = (u64::BITS - (us - 1).leading_zeros()) as usize;
    (log2_ceil - 4).min(LATENCY_BUCKETS - 1)
}

/// One volume exported over vhost-user-blk.
pub struct BlkExport {
    pub config: BlkExportConfig,
    pub pool: SharedPool,
    pub counters: BlkCounters,
    pub sessions_ended: AtomicU64,
    /// The `writeback` byte of the config space: the cache mode the guest
    /// was shown. QEMU reads the config space once, before any feature is
    /// negotiated, and shows its copy to the guest, so this cannot depend on
    /// negotiation; it starts on and only a driver's SET_CONFIG (CONFIG_WCE)
    /// changes it. Kept across connections of this export, so a reconnecting
    /// frontend finds the mode its guest set.
    pub write_cache: AtomicBool,
    /// The session running the queues (at most one; see [`handover`]).
    pub ownership: QueueOwnership,
    /// Numbers the sessions of both sockets, for [`QueueOwnership`].
    next_session: AtomicU64,
    /// The capacity in bytes shown in the config space and checked by every
    /// request parsed from now on; it only grows while exported
    /// ([`BlkExport::grow`]).
    capacity: AtomicU64,
    /// The backend request channel of each session that gave one
    /// (SET_BACKEND_REQ_FD), by session number.
    backend_channels: Mutex<Vec<(u64, UnixStream)>>,
    /// The buckets of the export's limits, shared by its queues; `limited`
    /// says whether there are any, so an unlimited export takes no lock.
    limiter: Mutex<Limiter>,
    limited: AtomicBool,
    /// Paused by the operator: no new request taken ([`pause`]).
    pub pause: pause::Pause,
}

/// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG: the config space changed; the
/// frontend reads it again (GET_CONFIG) and tells the driver.
const BACKEND_CONFIG_CHANGE_MSG: u32 = 2;
/// How long a config-change notice may wait for room in a channel's
/// socket buffer (a frontend that never reads it loses the notice).
const NOTICE_TIMEOUT: Duration = Duration::from_secs(1);

/// The running sockets of an export; `stop` disconnects their frontends.
pub struct BlkExportHandle {
    main: SocketServer,
    migration: Option<SocketServer>,
}

impl BlkExportHandle {
    /// The export's socket.
    pub fn socket(&self) -> &Path {
        self.main.socket()
    }

    /// The migration socket, if the export has one.
    pub fn migration_socket(&self) -> Option<&Path> {
        self.migration.as_ref().map(SocketServer::socket)
    }

    /// Frontends served so far on both sockets (the current ones included).
    pub fn sessions(&self) -> u64 {
        self.main.sessions() + self.migration.as_ref().map_or(0, SocketServer::sessions)
    }

    /// Disconnects the frontends, stops accepting and removes the sockets.
    pub fn stop(self) {
        if let Some(m) = self.migration {
            m.stop();
        }
        self.main.stop();
    }
}

impl BlkExport {
    pub fn new(config: BlkExportConfig, pool: SharedPool) -> Arc<BlkExport> {
        let capacity = {
            let p = pool.lock().unwrap_or_else(|e| e.into_inner());
            p.metadata().volume(config.volume).map_or(0, |v| v.size())
        };
        Arc::new(BlkExport {
            pool,
            counters: BlkCounters::default(),
            sessions_ended: AtomicU64::new(0),
            write_cache: AtomicBool::new(true),
            ownership: QueueOwnership::default(),
            next_session: AtomicU64::new(1),
            capacity: AtomicU64::new(capacity),
            backend_channels: Mutex::new(Vec::new()),
            limiter: Mutex::new(Limiter::new(config.limits, vswitch::monotonic_ns())),
            limited: AtomicBool::new(!config.limits.is_unlimited()),
            pause: pause::Pause::default(),
            config,
        })
    }

    /// The export's limits now.
    pub fn limits(&self) -> ExportLimits {
        self.limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .limits()
    }

    /// New limits, with full buckets, for every request started from now
    /// on. A queue with requests waiting tries them again within
    /// [`device::PARK_RECHECK`].
    pub fn set_limits(&self, limits: ExportLimits) {
        let mut limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        *limiter = Limiter::new(limits, vswitch::monotonic_ns());
        self.limited
            .store(!limits.is_unlimited(), Ordering::Release);
    }

    /// Takes `op`'s tokens (`Ok`), or says in how many nanoseconds they
    /// will be there (see [`limit`]).
    pub(crate) fn admit(&self, op: &request::Op) -> Result<(), u64> {
        if !self.limited.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        limiter.admit(op, vswitch::monotonic_ns())
    }

    /// The capacity in bytes requests are checked against now.
    pub fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Acquire)
    }

    /// The volume grew to `bytes` (already in the pool): requests parsed from
    /// now on may reach it, and every session with a backend request channel
    /// is sent one CONFIG_CHANGE_MSG, after which its frontend reads the new
    /// capacity (GET_CONFIG) and tells the guest. Returns how many were sent.
    /// A smaller size is ignored: requests in flight were checked against the
    /// old one.
    pub fn grow(&self, bytes: u64) -> usize {
        if self.capacity.fetch_max(bytes, Ordering::AcqRel) >= bytes {
            return 0;
        }
        let mut channels = self
            .backend_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let before = channels.len();
        channels.retain(|(session, channel)| {
            let sent = relay::send_request(channel, BACKEND_CONFIG_CHANGE_MSG, &[]);
            if let Err(e) = &sent {
                log::warn!(
                    "export {}: session {session}: config change not sent, channel dropped: {e}",
                    self.config.name
                );
            }
            sent.is_ok()
        });
        log::info!(
            "export {}: capacity {bytes} bytes; config change sent to {} of {before} sessions",
            self.config.name,
            channels.len()
        );
        channels.len()
    }

    /// SET_BACKEND_REQ_FD of `session`: its channel replaces any earlier one.
    pub(crate) fn set_backend_channel(&self, session: u64, channel: UnixStream) -> io::Result<()> {
        // Never block a resize on a frontend that stopped reading.
        channel.set_write_timeout(Some(NOTICE_TIMEOUT))?;
        let mut channels = self
            .backend_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        channels.retain(|(s, _)| *s != session);
        channels.push((session, channel));
        Ok(())
    }

    /// `session` ended: its channel goes.
    pub(crate) fn drop_backend_channel(&self, session: u64) {
        self.backend_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(s, _)| *s != session);
    }

    /// A number for a new session of either socket.
    pub(crate) fn new_session(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Binds the socket (and the migration socket) now and serves frontends
    /// on a thread of its own per socket, as `options` say.
    pub fn spawn(self: &Arc<Self>, options: &ServeOptions) -> io::Result<BlkExportHandle> {
        let name = format!("export {}", self.config.name);
        let main = self.serve(&name, &self.config.socket, options)?;
        let migration = match &self.config.migration_socket {
            Some(socket) => match self.serve(&format!("{name} (migration)"), socket, options) {
                Ok(m) => Some(m),
                Err(e) => {
                    main.stop();
                    return Err(e);
                }
            },
            None => None,
        };
        Ok(BlkExportHandle { main, migration })
    }

    fn serve(
        self: &Arc<Self>,
        name: &str,
        socket: &Path,
        options: &ServeOptions,
    ) -> io::Result<SocketServer> {
        let export = self.clone();
        let live_migration = options.live_migration;
        SocketServer::spawn_with(name, socket, options, move |mem| {
            BlkBackend::new(export.clone(), mem, live_migration)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_first_bound_at_or_above() {
        for us in [
            0,
            1,
            15,
            16,
            17,
            31,
            32,
            33,
            1000,
            1 << 20,
            (1 << 20) + 1,
            u64::MAX,
        ] {
            let b = latency_bucket(us);
            match LATENCY_BOUNDS_US.get(b) {
                Some(&bound) => {
                    assert!(us <= bound, "{us} us in bucket <= {bound}");
                    if b > 0 {
                        assert!(
                            us > LATENCY_BOUNDS_US[b - 1],
                            "{us} us: a lower bucket fits"
                        );
                    }
                }
                None => assert!(us > *LATENCY_BOUNDS_US.last().unwrap(), "{us} us in +Inf"),
            }
        }
        assert_eq!(LATENCY_BOUNDS_US[0], 16);
        assert_eq!(LATENCY_BOUNDS_US[16], 1 << 20);
    }

    #[test]
    fn histogram_records_count_and_sum() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_nanos(15_500)); // 16 us
        h.record(Duration::from_micros(100)); // <= 128 us
        h.record(Duration::from_secs(5)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count(), 3);
        assert_eq!(s.sum_us, 16 + 100 + 5_000_000);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[3], 1);
        assert_eq!(s.buckets[LATENCY_BUCKETS - 1], 1);
        let c = BlkCounters::default();
        c.latency(TimedOp::Write).record(Duration::from_micros(20));
        assert_eq!(c.latency(TimedOp::Write).snapshot().count(), 1);
        assert_eq!(c.latency(TimedOp::Read).snapshot().count(), 0);
        assert!(c.summary().starts_with("reads 0 (0 B) writes 0"));
    }
}
