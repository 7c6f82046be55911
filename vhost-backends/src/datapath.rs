//! Datapath threads: each polls the transmit queues of the ports assigned to it,
//! round-robin, one batch per queue per round, and runs each batch to
//! completion (switch, copy into the receivers, notify).
//!
//! Why shared threads rather than each port's own vhost-user worker: with one
//! thread per port, ports outnumber cores and every hand-over between busy
//! ports is a context switch (measured: a third of the CPU went to
//! `finish_task_switch` with two ports sharing a core). A datapath thread
//! serves any number of ports without switching; more threads spread ports
//! over more cores.
//!
//! Idle costs nothing: when no queue of a thread has had work for
//! [`POLL_FOR`], it re-enables guest notifications (kicks) on its queues and
//! sleeps. A kick lands on the port's vhost-user worker, which only wakes the
//! datapath thread ([`Datapath::wake`]).

use crate::net::device::{Connection, TX_QUEUE};
use crate::net::tx::{self, TxScratch};
use crate::net::Vring;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vhost_user_backend::VringT;
use virtio_queue::QueueT;

/// How long a thread keeps polling after its last frame before it sleeps.
pub const POLL_FOR: Duration = Duration::from_micros(50);

/// A port's transmit queue, as a datapath thread serves it.
pub struct TxQueue {
    pub(crate) conn: Arc<Connection>,
    pub(crate) vring: Vring,
    /// Held for a whole batch: `stop_vring` takes it to wait for the batch in flight.
    pub(crate) scratch: Mutex<TxScratch>,
}

impl TxQueue {
    /// Whether a batch could run now. Only then may the queue's waiting
    /// chains keep the thread awake: a stopped (GET_VRING_BASE, a paused VM)
    /// or disabled queue waits for the kick that starts it again, and a
    /// broken one always looks pending (that is how it broke). Counting them
    /// would keep the thread from ever sleeping.
    fn serviceable(&self) -> bool {
        if self.conn.is_broken(TX_QUEUE) {
            return false;
        }
        let state = self.vring.get_ref();
        state.is_enabled() && state.get_queue().ready()
    }
}

struct Shared {
    queues: ArcSwap<Vec<Arc<TxQueue>>>,
    /// Serialises writers of `queues`.
    writer: Mutex<()>,
    woken: Mutex<bool>,
    wake: Condvar,
    stop: AtomicBool,
}

/// A thread's shared state and, until shutdown, its handle.
type Thread = (Arc<Shared>, Mutex<Option<JoinHandle<()>>>);

pub struct Datapath {
    threads: Vec<Thread>,
}

impl Datapath {
    /// Starts `n` datapath threads (at least one).
    pub fn new(n: usize) -> std::io::Result<Datapath> {
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let shared = Arc::new(Shared {
                queues: ArcSwap::from_pointee(Vec::new()),
                writer: Mutex::new(()),
                woken: Mutex::new(false),
                wake: Condvar::new(),
                stop: AtomicBool::new(false),
            });
            let s = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("datapath-{i}"))
                .spawn(move || run(&s))?;
            threads.push((shared, Mutex::new(Some(handle))));
        }
        Ok(Datapath { threads })
    }

    fn thread_for(&self, key: usize) -> &Shared {
        &self.threads[key % self.threads.len()].0
    }

    /// Serves `queue` on the thread chosen by `key` (the port id).
    pub fn add(&self, key: usize, queue: Arc<TxQueue>) {
        let t = self.thread_for(key);
        let _w = t.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut list = (**t.queues.load()).clone();
        list.push(queue);
        t.queues.store(Arc::new(list));
        wake(t);
    }

    /// Stops serving `queue`. A batch of it in flight finishes first (the
    /// caller's `stop_vring` waits for that through the scratch lock).
    pub fn remove(&self, key: usize, queue: &Arc<TxQueue>) {
        let t = self.thread_for(key);
        let _w = t.writer.lock().unwrap_or_else(|e| e.into_inner());
        let list: Vec<_> = t
            .queues
            .load()
            .iter()
            .filter(|q| !Arc::ptr_eq(q, queue))
            .cloned()
            .collect();
        t.queues.store(Arc::new(list));
    }

    /// A guest kicked a queue served by the thread for `key`.
    pub fn wake(&self, key: usize) {
        wake(self.thread_for(key));
    }
}

fn wake(t: &Shared) {
    *t.woken.lock().unwrap_or_else(|e| e.into_inner()) = true;
    t.wake.notify_one();
}

/// One round over the thread's queues; returns the frames processed.
fn round(queues: &[Arc<TxQueue>]) -> usize {
    let mut work = 0;
    for q in queues {
        // Busy means stop_vring holds it: the queue is being stopped, skip it.
        if let Ok(mut scratch) = q.scratch.try_lock() {
            work += tx::process_batch(q, &mut scratch);
        }
    }
    work
}

fn run(t: &Shared) {
    let mut dry_since: Option<Instant> = None;
    while !t.stop.load(Ordering::Acquire) {
        let queues = t.queues.load_full();
        if round(&queues) > 0 {
            dry_since = None;
            continue;
        }
        if dry_since.get_or_insert_with(Instant::now).elapsed() < POLL_FOR {
            std::hint::spin_loop();
            continue;
        }
        // Going to sleep: ask for kicks again, then look once more so a frame
        // queued just before re-enabling is not left waiting for a kick that
        // will never come.
        let mut pending = false;
        for q in queues.iter() {
            if q.serviceable() {
                pending |= q.vring.enable_notification().unwrap_or(false);
            }
        }
        if !pending {
            let mut woken = t.woken.lock().unwrap_or_else(|e| e.into_inner());
            while !*woken && !t.stop.load(Ordering::Acquire) {
                woken = t.wake.wait(woken).unwrap_or_else(|e| e.into_inner());
            }
            *woken = false;
        }
        // A stopped ring is not ours to write (its notification settings
        // live in guest memory).
        for q in t.queues.load().iter().filter(|q| q.serviceable()) {
            let _ = q.vring.disable_notification();
        }
        dry_since = None;
    }
}

impl Datapath {
    /// Stops and joins the threads. Queues still registered are dropped with
    /// them; call after the ports are stopped.
    pub fn shutdown(&self) {
        for (shared, handle) in &self.threads {
            shared.stop.store(true, Ordering::Release);
            wake(shared);
            let handle = handle.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(h) = handle {
                // A thread dropping the last reference to us must not join itself.
                if h.thread().id() != std::thread::current().id() {
                    let _ = h.join();
                }
            }
        }
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.shutdown();
    }
}
