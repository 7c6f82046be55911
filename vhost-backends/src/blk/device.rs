//! The vhost-user-blk device of one frontend connection: features, config
//! space, and the datapath of each queue (request -> map -> io_uring ->
//! complete).
//!
//! Each queue has its own worker thread (one vhost-user-backend thread per
//! queue) and its own io_uring ([`VolumeEngine`]), whose eventfd sits on that
//! worker's epoll next to the queue's kick: a kick pops and submits every
//! available request, a completion event finishes requests and publishes
//! them, each batch with one used-index write and at most one interrupt.
//! After its last work the worker polls both for [`POLL_FOR`] before it
//! asks for kicks again and sleeps.

use super::handover::Start;
use super::inflight::{self, InflightGeometry, InflightQueue, InflightRegion};
use super::request::{
    self, parse, Limits, Op, Rejected, Request, StatusByte, ID_BYTES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
};
use super::{BlkExport, TimedOp, Vring};
use crate::dirty_log::{DirtyLog, LogBatch};
use crate::relay::{LogGeometry, RelayHooks};
use crate::session::SessionBackend;
use crate::split_ring::{set_kicks, RingView};
use crate::{GuestMem, GuestMemAtomic};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vblock::dev::FileDev;
use vblock::engine::{Durability, IoCompletion, IoKind, IoRequest, VolumeEngine};
use vblock::pool::PoolError;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringT};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::timerfd::TimerFd;

/// Features offered (virtio 1.x §5.2.3); RO is added for read-only exports.
pub const OFFERED_FEATURES: u64 = 1 << VIRTIO_F_VERSION_1
    | 1 << VIRTIO_BLK_F_SIZE_MAX
    | 1 << VIRTIO_BLK_F_SEG_MAX
    | 1 << VIRTIO_BLK_F_BLK_SIZE
    | 1 << VIRTIO_BLK_F_TOPOLOGY
    | 1 << VIRTIO_BLK_F_FLUSH
    | 1 << VIRTIO_BLK_F_CONFIG_WCE
    | 1 << VIRTIO_BLK_F_DISCARD
    | 1 << VIRTIO_BLK_F_WRITE_ZEROES
    | 1 << VIRTIO_BLK_F_MQ
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | 1 << VIRTIO_RING_F_INDIRECT_DESC;

/// Failed waits for the requests in flight `stop_vring` tolerates (1 ms
/// apart) before it answers anyway.
const STOP_WAIT_TRIES: u32 = 1000;

/// Size of `struct virtio_blk_config` up to the write-zeroes fields.
const CONFIG_LEN: usize = 60;
/// Offset of `writeback` in the config space.
const CONFIG_WRITEBACK: usize = 32;
/// Largest discard / write-zeroes, in sectors (1 GiB).
const MAX_ZERO_SECTORS: u32 = 1 << 21;

/// Longest a queue with requests waiting for the export's limits, or for
/// space in a full pool (`on_full = "pause"`), sleeps before it asks again:
/// how soon it sees limits raised or space freed at run time.
pub const PARK_RECHECK: Duration = Duration::from_millis(100);

/// How long a queue's worker keeps looking at its ring and its io_uring
/// after its last work before it asks for kicks and sleeps. A driver
/// answers completions with new requests within a few tens of microseconds:
/// taken while polling, they cost the driver no kick and the worker no
/// wakeup, and reach the disk sooner (measured with `benches/blk_io.rs`,
/// see README "Disk exports").
pub const POLL_FOR: Duration = Duration::from_micros(30);

/// A request whose I/O is in flight.
struct InFlight {
    head: u16,
    status: StatusByte,
    /// Guest memory the I/O writes (a read's data), marked in the dirty log
    /// at completion.
    written: Vec<(u64, u64)>,
    used_len: u32,
    /// The latency histogram the request counts in, if any.
    timed: Option<TimedOp>,
    started: Instant,
    /// Keeps the guest memory mapped until the kernel is done with it.
    _mem: Arc<GuestMem>,
}

// SAFETY: `status` points into the guest memory `_mem` keeps mapped.
unsafe impl Send for InFlight {}

/// A request popped and parsed, waiting for the export's limits to let it
/// start (see [`super::limit`]).
struct Parked {
    head: u16,
    req: Request,
    mem: Arc<GuestMem>,
}

// SAFETY: the request's buffers and status byte point into the guest memory
// `mem` keeps mapped.
unsafe impl Send for Parked {}

/// One queue's datapath state (locked by its worker; GET_VRING_BASE locks it
/// too, to drain).
struct QueueState {
    index: usize,
    engine: VolumeEngine<FileDev>,
    inflight: HashMap<u64, InFlight>,
    next_tag: u64,
    vring: Option<Vring>,
    /// Used elements to publish: (head, length).
    done: Vec<(u16, u32)>,
    completions: Vec<IoCompletion>,
    /// Stopped as broken (see `pop`) until GET_VRING_BASE resets it.
    broken: bool,
    /// The ring was started (first event after it was enabled) and resumed
    /// from the inflight region; cleared when GET_VRING_BASE stops it.
    started: bool,
    /// The ring counts in the export's [`super::handover::QueueOwnership`]
    /// for this session: it started while this session held the queues.
    owns: bool,
    /// The inflight region this ring tracks its requests in, if the frontend
    /// gave one, and the sequence number of the next popped request.
    tracking: Option<Arc<InflightRegion>>,
    counter: u64,
    /// Requests waiting for the export's limits, oldest first (at most a
    /// ring's worth: allocated once). While any waits nothing more is
    /// popped: the rest stays in the ring.
    parked: VecDeque<Parked>,
    /// Wakes the queue's worker when the first parked request may start.
    timer: TimerFd,
    timer_armed: bool,
    /// Requests of this queue counted in the export's pause (parked and
    /// in flight), as of the last [`BlkBackend::settle`].
    taken: u64,
}

impl QueueState {
    fn tracking(&self) -> Option<InflightQueue<'_>> {
        self.tracking.as_ref()?.queue(self.index)
    }
}

/// State of one frontend connection.
pub struct BlkConnection {
    export: Arc<BlkExport>,
    /// This session's number in the export's queue ownership.
    session: u64,
    mem: GuestMemAtomic,
    acked_features: AtomicU64,
    queues: Vec<Mutex<QueueState>>,
    /// The region of the last SET_INFLIGHT_FD; each ring picks it up when it starts.
    inflight: Mutex<Option<Arc<InflightRegion>>>,
    limits: Limits,
    block_size: u32,
    cluster_size: u32,
    /// The dirty log every write into this guest's memory is marked in.
    log: DirtyLog,
}

impl Drop for BlkConnection {
    /// Requests a connection never answered (a wait that failed) no longer
    /// hold the export's pause.
    fn drop(&mut self) {
        for state in &self.queues {
            let mut st = lock(state);
            self.export.pause.settle(std::mem::take(&mut st.taken), 0);
        }
    }
}

/// The `VhostUserBackend` of one connection.
#[derive(Clone)]
pub struct BlkBackend(pub(crate) Arc<BlkConnection>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BlkBackend {
    /// A connection to `export` over guest memory `mem`: one io_uring per
    /// queue. `live_migration`: offer the dirty log (VHOST_F_LOG_ALL,
    /// VHOST_USER_PROTOCOL_F_LOG_SHMFD).
    pub fn new(
        export: Arc<BlkExport>,
        mem: GuestMemAtomic,
        live_migration: bool,
    ) -> io::Result<BlkBackend> {
        let (block_size, cluster_size, fd) = {
            let pool = lock(&export.pool);
            let vol = pool
                .metadata()
                .volume(export.config.volume)
                .ok_or_else(|| {
                    io::Error::other(format!("volume {} is gone", export.config.name))
                })?;
            let fd = pool.dev().file().try_clone()?;
            (vol.block_size(), pool.metadata().cluster_size(), fd)
        };
        let depth = u32::from(export.config.queue_size).max(32);
        let queues = (0..export.config.queues)
            .map(|index| {
                Ok(Mutex::new(QueueState {
                    index: usize::from(index),
                    engine: VolumeEngine::new(export.pool.clone(), &fd, depth)?,
                    inflight: HashMap::new(),
                    next_tag: 0,
                    vring: None,
                    done: Vec::new(),
                    completions: Vec::new(),
                    broken: false,
                    started: false,
                    owns: false,
                    tracking: None,
                    counter: 0,
                    parked: VecDeque::with_capacity(usize::from(export.config.queue_size)),
                    timer: TimerFd::new()?,
                    timer_armed: false,
                    taken: 0,
                }))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(BlkBackend(Arc::new(BlkConnection {
            limits: Limits {
                // Read from the export for each request: see `limits`.
                capacity: 0,
                read_only: export.config.read_only,
                max_zero_sectors: MAX_ZERO_SECTORS,
                max_request: request::MAX_REQUEST_BYTES,
            },
            session: export.new_session(),
            export,
            mem,
            acked_features: AtomicU64::new(0),
            queues,
            inflight: Mutex::new(None),
            block_size,
            cluster_size,
            log: DirtyLog::new(live_migration),
        })))
    }

    /// The limits a request parsed now is checked against: the capacity is
    /// the export's at this moment, so a request parsed after a resize may
    /// reach the new end and none parsed before it can.
    fn limits(&self) -> Limits {
        Limits {
            capacity: self.0.export.capacity(),
            ..self.0.limits
        }
    }

    fn has_feature(&self, bit: u32) -> bool {
        self.0.acked_features.load(Ordering::Relaxed) & (1 << bit) != 0
    }

    /// The `writeback` byte of the config space (§5.2.4). Before the driver
    /// negotiates, the mode a FLUSH-capable driver will get; without FLUSH
    /// negotiated, 0: the device is then write-through whatever was shown.
    fn shown_writeback(&self) -> bool {
        let negotiated = self.0.acked_features.load(Ordering::Relaxed) != 0;
        let cache = self.0.export.write_cache.load(Ordering::Relaxed);
        cache && (!negotiated || self.has_feature(VIRTIO_BLK_F_FLUSH))
    }

    /// The cache mode the device runs: write-back only with FLUSH negotiated
    /// and the cache shown on, so that it is always the mode the guest was
    /// shown (§5.2.5; Linux runs write-back iff CONFIG_WCE ? writeback :
    /// FLUSH). Write-back: a completed write survives the daemon's death
    /// (the pool is staged before completion) and a power loss once a later
    /// FLUSH completed. Write-through: a write is durable when it completes.
    fn write_back(&self) -> bool {
        self.has_feature(VIRTIO_BLK_F_FLUSH) && self.0.export.write_cache.load(Ordering::Relaxed)
    }

    /// `struct virtio_blk_config` (§5.2.4), little-endian.
    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let c = &self.0;
        let mut s = [0u8; CONFIG_LEN];
        let put =
            |s: &mut [u8; CONFIG_LEN], at: usize, v: &[u8]| s[at..at + v.len()].copy_from_slice(v);
        put(
            &mut s,
            0,
            &(c.export.capacity() / request::SECTOR).to_le_bytes(),
        ); // capacity
        let (seg_max, size_max) = request::segment_limits(c.export.config.queue_size);
        put(&mut s, 8, &size_max.to_le_bytes()); // size_max: see segment_limits
        put(&mut s, 12, &seg_max.to_le_bytes()); // seg_max
        put(&mut s, 20, &c.block_size.to_le_bytes()); // blk_size
                                                      // topology: physical_block_exp 0, alignment 0, min_io_size 1 block,
                                                      // opt_io_size one cluster (a whole-cluster write never copies).
        put(&mut s, 26, &1u16.to_le_bytes());
        put(&mut s, 28, &(c.cluster_size / c.block_size).to_le_bytes());
        s[CONFIG_WRITEBACK] = u8::from(self.shown_writeback());
        put(&mut s, 34, &c.export.config.queues.to_le_bytes()); // num_queues
                                                                // discard: max sectors, max segments 1, alignment one cluster (whole
                                                                // clusters go back to the pool).
        let cluster_sectors = c.cluster_size / request::SECTOR as u32;
        put(&mut s, 36, &MAX_ZERO_SECTORS.to_le_bytes());
        put(&mut s, 40, &1u32.to_le_bytes());
        put(&mut s, 44, &cluster_sectors.to_le_bytes());
        // write zeroes: max sectors, max segments 1, may unmap.
        put(&mut s, 48, &MAX_ZERO_SECTORS.to_le_bytes());
        put(&mut s, 52, &1u32.to_le_bytes());
        s[56] = 1;
        s
    }

    /// Pops, submits, completes and publishes until the queue is idle.
    fn run_queue(&self, q: usize, vring: &Vring) {
        let Some(state) = self.0.queues.get(q) else {
            return;
        };
        let mut st = lock(state);
        // Marked under the queue's state, which GET_VRING_BASE waits for.
        let mut log = self.0.log.begin();
        if st.vring.is_none() {
            st.vring = Some(vring.clone());
        }
        // A paused export takes nothing new from the ring (a ring does not
        // even start) and looks again soon; what it took before completes.
        let gate = self.0.export.pause.enter();
        if !st.started {
            // Only a kick starts a ring; an io_uring event after
            // GET_VRING_BASE stopped it (nothing is in flight then) does not.
            let running = {
                let state = vring.get_ref();
                state.get_queue().ready() && state.is_enabled()
            };
            if !running {
                return;
            }
            if gate.is_none() {
                self.arm(&mut st, PARK_RECHECK);
                return;
            }
            st.started = true;
            if !self.take_queues(&mut st) {
                return;
            }
            self.resume(&mut st, vring, &log);
        }
        let mut last_work = Instant::now();
        loop {
            // A batch per round, not per call: a busy queue stays in this
            // loop, and logging switched off must stop its marking.
            std::mem::replace(&mut log, self.0.log.begin()).finish();
            // A pause that came meanwhile stops the taking at once.
            let taking = gate.is_some() && !self.0.export.pause.is_paused();
            let unparked = self.unpark(&mut st, &log);
            let popped =
                taking && !st.broken && st.parked.is_empty() && self.pop(&mut st, vring, &log);
            self.reap(&mut st, &log);
            let published = self.publish(&mut st, vring, false, &log);
            if unparked || popped || published {
                last_work = Instant::now();
                continue;
            }
            if st.broken || !st.parked.is_empty() {
                // Broken: its avail index says "more" forever, asking again
                // would spin. Parked: the timer brings the worker back.
                break;
            }
            if !taking {
                // Paused: the timer brings the worker back to see a resume.
                self.arm(&mut st, PARK_RECHECK);
                break;
            }
            if self.poll_for_work(&mut st, vring, last_work + POLL_FOR) {
                continue;
            }
            // Tell the driver where we are (EVENT_IDX: avail_event) and look
            // once more: a request made available meanwhile has no kick
            // coming. Not on a ring GET_VRING_BASE stopped meanwhile: its
            // memory is the frontend's again.
            match set_kicks(vring, &self.0.log, true) {
                Some(true) => continue,
                _ => break,
            }
        }
        // Requests waiting for space: the engine tries them again when
        // polled, and nothing else would wake this worker when space appears.
        if st.engine.paused() > 0 && !st.timer_armed {
            self.arm(&mut st, PARK_RECHECK);
        }
        // Counted before the gate opens: the pause never sees this queue's
        // requests at zero while it still holds some.
        self.settle(&mut st);
        drop(gate);
        log.finish();
    }

    /// Looks at the ring and the io_uring until either has work or `until`
    /// passes; true if work came. Kicks stay as they were meanwhile (with
    /// EVENT_IDX the driver, past the last `avail_event`, sends none).
    fn poll_for_work(&self, st: &mut QueueState, vring: &Vring, until: Instant) -> bool {
        let mem = self.0.mem.memory();
        loop {
            if st.engine.has_completions() {
                return true;
            }
            {
                let state = vring.get_ref();
                let queue = state.get_queue();
                let waiting = RingView::new(queue, &mem)
                    .and_then(|r| r.pending(queue.next_avail()))
                    .is_some_and(|n| n > 0);
                if waiting {
                    return true;
                }
            }
            if Instant::now() >= until {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Tells the export's pause how many requests this queue holds now.
    fn settle(&self, st: &mut QueueState) {
        let now = (st.inflight.len() + st.parked.len()) as u64;
        self.0.export.pause.settle(st.taken, now);
        st.taken = now;
    }

    /// A ring starts: takes the export's queues for this session, waiting
    /// (bounded) for another session holding them to release them, see
    /// [`super::handover`]. False if refused: the ring is then stopped as
    /// broken until the frontend stops it. Waits on the queue's worker
    /// with its `QueueState` held: a GET_VRING_BASE of this ring meanwhile
    /// waits too (at most the patience), and nothing else needs it.
    fn take_queues(&self, st: &mut QueueState) -> bool {
        let export = &self.0.export;
        let name = &export.config.name;
        let index = st.index;
        let on_wait = |holder: u64| {
            export
                .counters
                .handover_waits
                .fetch_add(1, Ordering::Relaxed);
            log::info!(
                "export {name}: queue {index} of session {} waits for session {holder} to stop its queues",
                self.0.session
            );
        };
        match export.ownership.start(self.0.session, on_wait) {
            Start::Owned => {}
            Start::AfterWaiting => log::info!(
                "export {name}: session {} runs the queues after a handover",
                self.0.session
            ),
            Start::Refused { holder } => {
                export
                    .counters
                    .handover_refused
                    .fetch_add(1, Ordering::Relaxed);
                self.mark_broken(
                    st,
                    &format!(
                        "session {holder} still runs the queues after {:?}",
                        export.ownership.patience()
                    ),
                );
                return false;
            }
        }
        st.owns = true;
        true
    }

    /// Waits for every request of the queue in flight and completes it
    /// (status written, queued for publishing).
    fn finish_in_flight(&self, st: &mut QueueState, log: &LogBatch<'_>) {
        // Requests waiting for the limits start now, over them: the
        // frontend may take their buffers back once we answer.
        while let Some(p) = st.parked.pop_front() {
            self.start(st, p.head, p.req, &p.mem, log);
        }
        self.disarm(st);
        // Requests waiting for space in a full pool fail (out of space), as
        // with on_full = "error", for the same reason.
        st.engine.set_draining(true);
        let mut completions = Vec::new();
        // A read still in flight after GET_VRING_BASE is answered would write
        // guest memory the frontend already took back (and that a migration
        // no longer tracks): a failing wait is retried for a while, not given
        // up at once.
        let mut failures = 0;
        while !st.inflight.is_empty() {
            if let Err(e) = st.engine.wait(&mut completions) {
                failures += 1;
                if failures == STOP_WAIT_TRIES {
                    log::error!(
                        "export {}: queue {}: {} requests still in flight not waited for \
                         ({e}); they may complete later",
                        self.0.export.config.name,
                        st.index,
                        st.inflight.len()
                    );
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            self.complete(st, &mut completions, log);
        }
        st.engine.set_draining(false);
    }

    /// Pops every available request and starts it. True if any.
    fn pop(&self, st: &mut QueueState, vring: &Vring, log: &LogBatch<'_>) -> bool {
        let mem = self.0.mem.memory().into_inner();
        let mut requests = Vec::new();
        {
            let mut state = vring.get_mut();
            let queue = state.get_queue_mut();
            if !queue.ready() {
                return false; // being stopped (GET_VRING_BASE)
            }
            let mut next = queue.next_avail();
            // Rings outside guest memory, or an index further ahead than the
            // ring holds: a broken driver. Stop serving the queue rather than
            // read garbage, or spin on an index that always says "more".
            let ring = RingView::new(queue, &mem);
            let Some((ring, pending)) = ring.and_then(|r| r.pending(next).map(|n| (r, n))) else {
                drop(state);
                self.mark_broken(
                    st,
                    "rings outside guest memory or avail index too far ahead",
                );
                return false;
            };
            for _ in 0..pending {
                let Some(head) = ring.avail_head(next) else {
                    break;
                };
                next = next.wrapping_add(1);
                // Tracked before it has any effect, in pop order.
                if let Some(q) = st.tracking() {
                    q.popped(head, st.counter);
                }
                st.counter = st.counter.wrapping_add(1);
                requests.push((head, parse(&ring, head, &self.limits())));
            }
            queue.set_next_avail(next);
        }
        let any = !requests.is_empty();
        self.dispatch(st, requests, &mem, log);
        any
    }

    /// Picks up the inflight region when the ring starts, and resumes where
    /// the previous backend left it: the requests it popped and did not
    /// return run again, oldest first, and popping goes on after the last
    /// chain it popped (see [`super::inflight`]).
    fn resume(&self, st: &mut QueueState, vring: &Vring, log: &LogBatch<'_>) {
        st.tracking = lock(&self.0.inflight).clone();
        let Some(region) = st.tracking.clone() else {
            return;
        };
        let Some(q) = region.queue(st.index) else {
            st.tracking = None;
            return;
        };
        let mem = self.0.mem.memory().into_inner();
        let mut requests = Vec::new();
        {
            let mut state = vring.get_mut();
            let queue = state.get_queue_mut();
            if q.size() != queue.size() {
                log::warn!(
                    "export {}: inflight region for {} entries, ring of {}: not tracking queue {}",
                    self.0.export.config.name,
                    q.size(),
                    queue.size(),
                    st.index
                );
                st.tracking = None;
                return;
            }
            let Some(ring) = RingView::new(queue, &mem) else {
                return;
            };
            let Some(used) = ring.used_idx() else {
                return;
            };
            let recovery = q.recover(used);
            st.counter = recovery.next_counter;
            let resumed = recovery.resubmit.len() as u16;
            queue.set_next_used(used);
            queue.set_next_avail(used.wrapping_add(resumed));
            for head in recovery.resubmit {
                requests.push((head, parse(&ring, head, &self.limits())));
            }
        }
        if !requests.is_empty() {
            log::info!(
                "export {}: queue {}: resubmitting {} requests left in flight",
                self.0.export.config.name,
                st.index,
                requests.len()
            );
            let c = &self.0.export.counters;
            c.resubmitted
                .fetch_add(requests.len() as u64, Ordering::Relaxed);
        }
        self.dispatch(st, requests, &mem, log);
    }

    /// Starts the valid requests; answers or drops the others.
    fn dispatch(
        &self,
        st: &mut QueueState,
        requests: Vec<(u16, Result<Request, Rejected>)>,
        mem: &Arc<GuestMem>,
        log: &LogBatch<'_>,
    ) {
        let counters = &self.0.export.counters;
        for (head, parsed) in requests {
            match parsed {
                Ok(req) => self.start_or_park(st, head, req, mem, log),
                Err(Rejected::Status { status, code }) => {
                    counters.invalid.fetch_add(1, Ordering::Relaxed);
                    // SAFETY: the parse found it inside the guest memory map
                    // that `mem` holds mapped for this call; not yet returned.
                    unsafe { status.write(code, log) };
                    st.done.push((head, 1));
                }
                Err(Rejected::TooLarge { status }) => {
                    counters.too_large.fetch_add(1, Ordering::Relaxed);
                    // SAFETY: as for `Rejected::Status` just above.
                    unsafe { status.write(VIRTIO_BLK_S_IOERR, log) };
                    st.done.push((head, 1));
                }
                Err(Rejected::Drop(_)) => {
                    counters.bad_chains.fetch_add(1, Ordering::Relaxed);
                    st.done.push((head, 0));
                }
            }
        }
    }

    /// Starts `req` if the export's limits let it and no older request
    /// waits; otherwise parks it (counted `throttled`).
    fn start_or_park(
        &self,
        st: &mut QueueState,
        head: u16,
        req: Request,
        mem: &Arc<GuestMem>,
        log: &LogBatch<'_>,
    ) {
        if st.parked.is_empty() && self.0.export.admit(&req.op).is_ok() {
            self.start(st, head, req, mem, log);
            return;
        }
        self.0
            .export
            .counters
            .throttled
            .fetch_add(1, Ordering::Relaxed);
        st.parked.push_back(Parked {
            head,
            req,
            mem: mem.clone(),
        });
    }

    /// Starts the parked requests the limits let start now, oldest first;
    /// for the first that must wait, arms the timer (at most
    /// [`PARK_RECHECK`]). True if any started.
    fn unpark(&self, st: &mut QueueState, log: &LogBatch<'_>) -> bool {
        let mut started = false;
        while let Some(first) = st.parked.front() {
            if let Err(wait) = self.0.export.admit(&first.req.op) {
                self.arm(st, Duration::from_nanos(wait).min(PARK_RECHECK));
                return started;
            }
            if let Some(p) = st.parked.pop_front() {
                self.start(st, p.head, p.req, &p.mem, log);
                started = true;
            }
        }
        self.disarm(st);
        started
    }

    /// Arms the timer to bring the worker back in `wait`.
    fn arm(&self, st: &mut QueueState, wait: Duration) {
        if let Err(e) = st.timer.reset(wait, None) {
            // Without a timer the next kick or completion retries.
            log::warn!("export {}: timerfd: {e}", self.0.export.config.name);
        }
        st.timer_armed = true;
    }

    /// Disarms the timer (which also clears a pending expiry).
    fn disarm(&self, st: &mut QueueState) {
        if std::mem::take(&mut st.timer_armed) {
            let _ = st.timer.clear();
        }
    }

    /// Stops serving a queue the driver broke: counted and logged once per
    /// stop. vhost-user gives the backend no way to set DEVICE_NEEDS_RESET;
    /// the frontend's GET_VRING_BASE (a VM stop or reset) clears it.
    fn mark_broken(&self, st: &mut QueueState, why: &str) {
        if st.broken {
            return;
        }
        st.broken = true;
        self.0
            .export
            .counters
            .broken_queues
            .fetch_add(1, Ordering::Relaxed);
        log::warn!("export {}: queue stopped: {why}", self.0.export.config.name);
    }

    fn start(
        &self,
        st: &mut QueueState,
        head: u16,
        req: Request,
        mem: &Arc<GuestMem>,
        log: &LogBatch<'_>,
    ) {
        let c = &self.0.export.counters;
        let volume = self.0.export.config.volume;
        let (kind, offset, len) = match req.op {
            Op::Read { offset, len } => {
                c.reads.fetch_add(1, Ordering::Relaxed);
                c.read_bytes.fetch_add(len, Ordering::Relaxed);
                (IoKind::Read, offset, len)
            }
            Op::Write { offset, len } => {
                c.writes.fetch_add(1, Ordering::Relaxed);
                c.write_bytes.fetch_add(len, Ordering::Relaxed);
                (IoKind::Write, offset, len)
            }
            Op::Flush => {
                c.flushes.fetch_add(1, Ordering::Relaxed);
                (IoKind::Flush, 0, 0)
            }
            Op::Zero { offset, len, .. } => {
                c.discards.fetch_add(1, Ordering::Relaxed);
                (IoKind::Discard, offset, len)
            }
            Op::GetId { len } => {
                let serial = self.0.export.config.serial.as_bytes();
                let mut id = [0u8; ID_BYTES];
                let n = serial.len().min(ID_BYTES);
                id[..n].copy_from_slice(&serial[..n]);
                let mut pos = 0;
                for v in &req.data {
                    let n = v.iov_len.min(len - pos);
                    let to: *mut u8 = v.iov_base.cast();
                    for (i, &b) in id[pos..pos + n].iter().enumerate() {
                        // Volatile: guest memory another vCPU may touch meanwhile.
                        // SAFETY: `i < n <= iov_len`, so the byte lies in a
                        // device-writable buffer the parse found inside guest
                        // memory, which `mem` keeps mapped for this call.
                        unsafe { to.add(i).write_volatile(b) };
                    }
                    pos += n;
                }
                // `written` covers exactly the first `len` bytes.
                for &(gpa, n) in &req.written {
                    log.mark(gpa, n);
                }
                // SAFETY: the chain's status byte, found by the parse inside
                // guest memory that `mem` keeps mapped for this call.
                unsafe { req.status.write(VIRTIO_BLK_S_OK, log) };
                st.done.push((head, req.used_len));
                return;
            }
        };
        let timed = match kind {
            IoKind::Read => Some(TimedOp::Read),
            IoKind::Write => Some(TimedOp::Write),
            IoKind::Flush => Some(TimedOp::Flush),
            IoKind::Discard | IoKind::WriteZeroes => None,
        };
        let tag = st.next_tag;
        st.next_tag = st.next_tag.wrapping_add(1);
        st.inflight.insert(
            tag,
            InFlight {
                head,
                status: req.status,
                written: req.written,
                used_len: req.used_len,
                timed,
                started: Instant::now(),
                _mem: mem.clone(),
            },
        );
        let io = IoRequest {
            tag,
            volume,
            kind,
            offset,
            len,
            iov: req.data,
            // What a change survives before it completes: a power loss
            // (write-through: one fsync round off the pool lock, then the
            // journal), or the death of this daemon (write-back: a restarted
            // daemon must still have every write the guest saw complete, as a
            // guest outlives us and never re-sends one).
            durable: if self.write_back() {
                Durability::ProcessDeath
            } else {
                Durability::PowerLoss
            },
        };
        // SAFETY: the buffers are guest memory validated by the walk and kept
        // mapped by the `Arc<GuestMem>` in `inflight` until the completion;
        // the driver does not touch them before we mark the chain used.
        unsafe { st.engine.submit(io) };
    }

    /// Takes the engine's completions and finishes them.
    fn reap(&self, st: &mut QueueState, log: &LogBatch<'_>) {
        let mut completions = std::mem::take(&mut st.completions);
        if let Err(e) = st.engine.poll(&mut completions) {
            log::warn!("export {}: io_uring: {e}", self.0.export.config.name);
        }
        self.complete(st, &mut completions, log);
        st.completions = completions;
    }

    /// Marks what each completed request's I/O wrote into guest memory,
    /// writes its status and queues it for publishing.
    fn complete(
        &self,
        st: &mut QueueState,
        completions: &mut Vec<IoCompletion>,
        log: &LogBatch<'_>,
    ) {
        if completions.is_empty() {
            return;
        }
        let c = &self.0.export.counters;
        // One clock read per batch: every status below is written now.
        let now = Instant::now();
        for done in completions.drain(..) {
            let Some(f) = st.inflight.remove(&done.tag) else {
                continue;
            };
            let ok = done.result.is_ok();
            if let Err(e) = &done.result {
                match e {
                    PoolError::OutOfSpace { .. } => c.out_of_space.fetch_add(1, Ordering::Relaxed),
                    _ => c.io_errors.fetch_add(1, Ordering::Relaxed),
                };
                log::debug!("export {}: request failed: {e}", self.0.export.config.name);
            }
            let (code, len) = if ok {
                (VIRTIO_BLK_S_OK, f.used_len)
            } else {
                (VIRTIO_BLK_S_IOERR, 1)
            };
            // The kernel is done writing the data (a failed read may have
            // written part of it: marked all the same).
            for &(gpa, len) in &f.written {
                log.mark(gpa, len);
            }
            // SAFETY: the chain's status byte, found by the parse inside the
            // guest memory map that `f._mem` has kept mapped since `start`; the
            // chain is not yet used, so the driver has not reclaimed it.
            unsafe { f.status.write(code, log) };
            if let Some(op) = f.timed {
                c.latency(op)
                    .record(now.saturating_duration_since(f.started));
            }
            st.done.push((f.head, len));
        }
    }

    /// Publishes finished requests: one used-index write (one per element
    /// while an inflight region is tracked), at most one interrupt.
    /// `stopping`: the queue was just stopped (GET_VRING_BASE).
    fn publish(
        &self,
        st: &mut QueueState,
        vring: &Vring,
        stopping: bool,
        log: &LogBatch<'_>,
    ) -> bool {
        if st.done.is_empty() {
            return false;
        }
        let mem = self.0.mem.memory();
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        let ring = if stopping {
            RingView::stopping(queue, &mem)
        } else {
            RingView::new(queue, &mem)
        };
        // Not ready: GET_VRING_BASE is stopping the queue (it marks it not
        // ready before calling `stop_vring`). Keep what is done for
        // `stop_vring` to publish; dropping it would lose those requests.
        let Some(ring) = ring else {
            return false;
        };
        let size = queue.size();
        st.done.retain(|&(head, _)| head < size);
        let old = queue.next_used();
        let published = match st.tracking() {
            // One element at a time, each between the inflight region's
            // before and after marks, so a crash anywhere is recoverable.
            Some(q) => st.done.iter().try_fold(old, |next, &(head, len)| {
                q.returning(head);
                let new = ring.publish_used(next, &[(head, len)])?;
                q.returned(head, new);
                Some(new)
            }),
            None => ring.publish_used(old, &st.done),
        };
        if let Some(new) = published {
            ring.log_used(log, old, new);
            queue.set_next_used(new);
            if new != old && ring.needs_interrupt(old, new) {
                let _ = state.signal_used_queue();
            }
        }
        st.done.clear();
        true
    }

    /// Event id of queue `q`'s io_uring eventfd on its worker's epoll.
    fn engine_event(&self, q: usize) -> u64 {
        (self.0.queues.len() + 1 + q) as u64
    }

    /// Event id of queue `q`'s parking timer on its worker's epoll.
    fn timer_event(&self, q: usize) -> u64 {
        (2 * self.0.queues.len() + 1 + q) as u64
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.0.queues.len()
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.0.export.config.queue_size)
    }

    fn features(&self) -> u64 {
        let mut f = OFFERED_FEATURES | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.0.limits.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
            f &= !(1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f | self.0.log.features()
    }

    fn acked_features(&self, features: u64) {
        // The cache mode follows from these and the mode shown (see
        // `write_back`); negotiation never switches it by itself.
        self.0.acked_features.store(features, Ordering::Relaxed);
        self.0.log.set_features(features);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // CONFIG: the guest reads capacity etc.; REPLY_ACK and
        // CONFIGURE_MEM_SLOTS: libblkio requires them (and QEMU uses them).
        // INFLIGHT_SHMFD: requests in flight when the daemon dies are
        // resubmitted by the next one (the relay answers its messages).
        // BACKEND_REQ: the channel a resize's CONFIG_CHANGE_MSG goes on.
        // LOG_SHMFD: the dirty log of a live migration, if offered.
        let f = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD;
        f | self.0.log.protocol_features()
    }

    fn set_event_idx(&self, _enabled: bool) {
        // Set on each vring by the handler; RingView reads it from the queue.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        crate::config_read(&self.config_space(), offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only `writeback` is writable, and only with CONFIG_WCE (§5.2.5).
        if offset as usize == CONFIG_WRITEBACK
            && buf.len() == 1
            && self.has_feature(VIRTIO_BLK_F_CONFIG_WCE)
        {
            self.0
                .export
                .write_cache
                .store(buf[0] != 0, Ordering::Relaxed);
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "only the writeback byte of the config space is writable",
        ))
    }

    fn update_memory(&self, _mem: GuestMemAtomic) -> io::Result<()> {
        // The same atomic we hold; in-flight requests keep the old map alive.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One worker thread (and one io_uring) per queue.
        (0..self.0.queues.len()).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: the driver may reuse every buffer once we answer,
        // so finish what is in flight and publish it first.
        let q = queue_index as usize;
        let Some(state) = self.0.queues.get(q) else {
            return Ok(());
        };
        let mut st = lock(state);
        // The frontend restarts the queue from scratch after this.
        st.broken = false;
        let Some(vring) = st.vring.clone() else {
            return Ok(());
        };
        let log = self.0.log.begin();
        self.finish_in_flight(&mut st, &log);
        self.settle(&mut st);
        self.publish(&mut st, &vring, true, &log);
        // Everything written is marked before the frontend reads the log.
        log.finish();
        // The next start (same connection) resumes from the inflight region
        // again, which is then empty for this ring.
        st.started = false;
        // Everything this ring completed is published: another session may
        // run the queues once every ring of this one stopped.
        if std::mem::take(&mut st.owns) {
            self.0.export.ownership.stopped(self.0.session);
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // One queue per worker thread (`queues_per_thread`): the thread is
        // the queue. `vrings` holds just its vring, and kicks arrive with the
        // thread-local index 0; our io_uring eventfd with the id set in
        // `attach` (already consumed by the engine's poll).
        let n = self.0.queues.len();
        let q = thread_id;
        let timer = u64::from(device_event) == self.timer_event(q);
        let ours = usize::from(device_event) < vrings.len()
            || u64::from(device_event) == self.engine_event(q)
            || timer;
        if q >= n || !ours {
            return Ok(());
        }
        if timer {
            // Re-armed below if something still waits; a timer left expired
            // would wake the worker again and again.
            if let Some(state) = self.0.queues.get(q) {
                let mut st = lock(state);
                st.timer_armed = true;
                self.disarm(&mut st);
            }
        }
        let Some(vring) = vrings.first() else {
            return Ok(());
        };
        self.run_queue(q, vring);
        Ok(())
    }
}

impl SessionBackend for BlkBackend {
    fn attach(&self, daemon: &VhostUserDaemon<Self>) -> io::Result<()> {
        let handlers = daemon.get_epoll_handlers();
        for (q, state) in self.0.queues.iter().enumerate() {
            let (fd, timer) = {
                let st = lock(state);
                (st.engine.eventfd(), st.timer.as_raw_fd())
            };
            let handler = handlers
                .get(q)
                .ok_or_else(|| io::Error::other("fewer vring workers than queues"))?;
            handler.register_listener(fd, EventSet::IN, self.engine_event(q))?;
            handler.register_listener(timer, EventSet::IN, self.timer_event(q))?;
        }
        Ok(())
    }

    fn detach(&self) {
        self.0.export.sessions_ended.fetch_add(1, Ordering::Relaxed);
    }

    fn ended(&self) {
        // A frontend that left without stopping its rings: its requests in
        // flight complete (into its inflight region, for a reconnect to
        // find) before another session may run the queues.
        for state in &self.0.queues {
            let mut st = lock(state);
            let log = self.0.log.begin();
            self.finish_in_flight(&mut st, &log);
            self.settle(&mut st);
            log.finish();
            st.owns = false;
        }
        self.0.export.ownership.ended(self.0.session);
        self.0.export.drop_backend_channel(self.0.session);
    }

    fn relay_hooks(&self) -> Arc<dyn RelayHooks> {
        Arc::new(self.clone())
    }
}

impl RelayHooks for BlkBackend {
    fn tracks_inflight(&self) -> bool {
        true
    }

    fn get_inflight_fd(&self, asked: &InflightGeometry) -> io::Result<(OwnedFd, InflightGeometry)> {
        asked.validate(self.0.queues.len())?;
        let (fd, mmap_size) = inflight::create(asked)?;
        Ok((
            fd,
            InflightGeometry {
                mmap_size,
                mmap_offset: 0,
                ..*asked
            },
        ))
    }

    fn set_backend_req_channel(&self, channel: UnixStream) -> io::Result<()> {
        self.0.export.set_backend_channel(self.0.session, channel)
    }

    fn set_inflight_fd(&self, region: &InflightGeometry, fd: OwnedFd) -> io::Result<()> {
        let mapped = InflightRegion::map(&fd, region, self.0.queues.len())?;
        *lock(&self.0.inflight) = Some(Arc::new(mapped));
        Ok(())
    }

    fn set_log_base(&self, log: &LogGeometry, fd: OwnedFd) -> io::Result<()> {
        self.0.log.set_base(log, fd)
    }
}
