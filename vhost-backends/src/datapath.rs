//! Datapath threads: each polls the queues assigned to it (guests' transmit
//! rings, TAP devices, tunnel sockets: anything that is a [`PollQueue`]),
//! round-robin, one batch per queue per round, and runs each batch to
//! completion (switch, copy into the receivers, notify).
//!
//! Why shared threads rather than a thread per port: with one thread per
//! port, ports outnumber cores and every hand-over between busy ports is a
//! context switch (measured: a third of the CPU went to `finish_task_switch`
//! with two ports sharing a core). A datapath thread serves any number of
//! ports without switching; more threads spread ports over more cores.
//!
//! Idle costs nothing: when no queue of a thread has had work for
//! [`POLL_FOR`], it re-arms its queues (guest notifications back on) and
//! sleeps in one `epoll_wait` over the descriptors of its queues (TAP
//! devices, sockets) and its wake eventfd. A guest's kick lands on the
//! port's vhost-user worker, which only signals that eventfd
//! ([`Datapath::wake`]): the `vhost-user-backend` crate owns the kick
//! eventfds (it reads them on its own epoll and swaps them on
//! SET_VRING_KICK), so they are not ours to wait on. Stopping signals the
//! same eventfd: no timeouts anywhere.

use crate::forward::{FrameSink, PortTable};
use arc_swap::ArcSwap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vswitch::{PortId, Switch};

/// How long a thread keeps polling after its last frame before it sleeps.
pub const POLL_FOR: Duration = Duration::from_micros(50);

/// Epoll token of a thread's wake eventfd; queues get tokens from 0 up.
const WAKE: u64 = u64::MAX;
/// Readiness events taken per `epoll_wait`; more wait for the next round.
const MAX_EVENTS: usize = 64;

/// Something a datapath thread polls for frames.
pub(crate) trait PollQueue: Send + Sync {
    /// Runs at most one batch and forwards it.
    fn poll(&self) -> Polled;
    /// Descriptors whose readability means frames wait (a TAP device, tunnel
    /// sockets); such a queue is polled only when one is readable. Empty for
    /// a ring the driver kicks: that one is polled every round, and a kick
    /// wakes the thread through [`Datapath::wake`]. Read once, when the
    /// queue is added; they must stay open until it is removed.
    fn fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// The thread is about to sleep: ask the driver for kicks again. True if
    /// work came in meanwhile (sleeping now would wait for a kick that will
    /// never come).
    fn arm(&self) -> bool {
        false
    }
    /// The thread is awake and polling: kicks are not needed.
    fn disarm(&self) {}
    /// The queue was removed from its thread: wait for a batch in flight,
    /// then close the source (a TAP device the daemon created disappears, a
    /// socket's address is free again). Only for a [`DatapathPort`]'s queue.
    fn close(&self) {}
}

/// What one [`PollQueue::poll`] did.
pub(crate) enum Polled {
    /// Frames (or chains) taken; 0 if there was nothing to do.
    Frames(usize),
    /// The source is gone for good (a deleted TAP device): the queue has
    /// said so once and is dropped from its thread.
    Gone,
}

struct Entry {
    token: u64,
    queue: Arc<dyn PollQueue>,
    fds: Vec<RawFd>,
}

/// A thread's queues as one immutable snapshot.
#[derive(Default, Clone)]
struct Queues {
    entries: Vec<Arc<Entry>>,
    /// Whether any queue waits on descriptors (then a busy round asks epoll
    /// which are readable; a thread of vhost-user rings only never does).
    watched: bool,
}

struct Shared {
    queues: ArcSwap<Queues>,
    /// Serialises writers of `queues`; holds the next token.
    writer: Mutex<u64>,
    epoll: Epoll,
    wake: EventFd,
    stop: AtomicBool,
}

/// A thread's shared state and, until shutdown, its handle.
type Thread = (Arc<Shared>, Mutex<Option<JoinHandle<()>>>);

pub struct Datapath {
    threads: Vec<Thread>,
}

impl Datapath {
    /// Starts `n` datapath threads (at least one).
    pub fn new(n: usize) -> io::Result<Datapath> {
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let shared = Arc::new(Shared {
                queues: ArcSwap::from_pointee(Queues::default()),
                writer: Mutex::new(0),
                epoll: Epoll::new()?,
                wake: EventFd::new(EFD_NONBLOCK)?,
                stop: AtomicBool::new(false),
            });
            let wake = EpollEvent::new(EventSet::IN, WAKE);
            let fd = shared.wake.as_raw_fd();
            shared.epoll.ctl(ControlOperation::Add, fd, wake)?;
            let s = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("datapath-{i}"))
                .spawn(move || run(&s))?;
            threads.push((shared, Mutex::new(Some(handle))));
        }
        Ok(Datapath { threads })
    }

    /// How many datapath threads there are.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    fn thread_for(&self, key: usize) -> &Shared {
        &self.threads[key % self.threads.len()].0
    }

    /// Serves `queue` on the thread chosen by `key` (the port id). Fails
    /// only if its descriptors cannot be watched.
    pub(crate) fn add(&self, key: usize, queue: Arc<dyn PollQueue>) -> io::Result<()> {
        let t = self.thread_for(key);
        let mut next = t.writer.lock().unwrap_or_else(|e| e.into_inner());
        let entry = Entry {
            token: *next,
            fds: queue.fds(),
            queue,
        };
        for (i, &fd) in entry.fds.iter().enumerate() {
            let event = EpollEvent::new(EventSet::IN, entry.token);
            if let Err(e) = t.epoll.ctl(ControlOperation::Add, fd, event) {
                unwatch(t, &entry.fds[..i]);
                return Err(e);
            }
        }
        *next += 1;
        let mut list = (**t.queues.load()).clone();
        list.watched |= !entry.fds.is_empty();
        list.entries.push(Arc::new(entry));
        t.queues.store(Arc::new(list));
        drop(next);
        t.signal();
        Ok(())
    }

    /// Stops serving `queue` (not an error if it is not served). A batch of
    /// it in flight may still finish: the queue waits for it where it must
    /// (`stop_vring`, [`PollQueue::close`]).
    pub(crate) fn remove(&self, key: usize, queue: &Arc<dyn PollQueue>) {
        self.thread_for(key).remove(queue);
    }

    /// A guest kicked a queue served by the thread for `key`.
    pub(crate) fn wake(&self, key: usize) {
        self.thread_for(key).signal();
    }

    /// Stops and joins the threads. Queues still registered are dropped with
    /// them; call after the ports are stopped.
    pub fn shutdown(&self) {
        for (shared, handle) in &self.threads {
            shared.stop.store(true, Ordering::Release);
            shared.signal();
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

/// Stops watching `fds`. One already closed is out of the set already.
fn unwatch(t: &Shared, fds: &[RawFd]) {
    for &fd in fds {
        let _ = t
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

impl Shared {
    fn signal(&self) {
        // Fails only if the counter would overflow: then it is readable anyway.
        let _ = self.wake.write(1);
    }

    fn remove(&self, queue: &Arc<dyn PollQueue>) {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.queues.load();
        let (gone, kept): (Vec<_>, Vec<_>) = current
            .entries
            .iter()
            .cloned()
            .partition(|e| Arc::ptr_eq(&e.queue, queue));
        for e in &gone {
            unwatch(self, &e.fds);
        }
        let watched = kept.iter().any(|e| !e.fds.is_empty());
        self.queues.store(Arc::new(Queues {
            entries: kept,
            watched,
        }));
    }

    /// Waits up to `timeout` ms (-1: until something happens) for readable
    /// descriptors; puts their tokens in `ready`. The wake eventfd is reset,
    /// not reported: waking is all it is for.
    fn wait(&self, timeout: i32, events: &mut [EpollEvent], ready: &mut Vec<u64>) {
        // EINTR and the like: as if nothing were ready; the loop comes back.
        let n = self.epoll.wait(timeout, events).unwrap_or(0);
        for event in &events[..n] {
            match event.data() {
                WAKE => {
                    let _ = self.wake.read();
                }
                token => ready.push(token),
            }
        }
    }
}

/// One round over the thread's queues; returns the frames processed.
fn round(t: &Shared, queues: &Queues, ready: &[u64]) -> usize {
    let mut work = 0;
    for e in &queues.entries {
        if !e.fds.is_empty() && !ready.contains(&e.token) {
            continue;
        }
        match e.queue.poll() {
            Polled::Frames(n) => work += n,
            Polled::Gone => t.remove(&e.queue),
        }
    }
    work
}

fn run(t: &Shared) {
    let mut events = vec![EpollEvent::default(); MAX_EVENTS];
    let mut ready = Vec::with_capacity(MAX_EVENTS);
    let mut dry_since: Option<Instant> = None;
    while !t.stop.load(Ordering::Acquire) {
        let queues = t.queues.load_full();
        // Descriptors are level-triggered: one still holding frames after a
        // batch is readable again here, so it gets its next batch next round.
        if queues.watched && ready.is_empty() {
            t.wait(0, &mut events, &mut ready);
        }
        let work = round(t, &queues, &ready);
        ready.clear();
        if work > 0 {
            dry_since = None;
            continue;
        }
        if dry_since.get_or_insert_with(Instant::now).elapsed() < POLL_FOR {
            std::hint::spin_loop();
            continue;
        }
        // Going to sleep: ask for kicks again, then look once more so a frame
        // queued just before re-arming is not left waiting for a kick that
        // will never come.
        let mut pending = false;
        for e in &queues.entries {
            pending |= e.queue.arm();
        }
        if !pending {
            t.wait(-1, &mut events, &mut ready);
        }
        for e in &t.queues.load().entries {
            e.queue.disarm();
        }
        dry_since = None;
    }
}

/// A switch port whose frames datapath threads read from descriptors (a
/// TAP device's queues, a tunnel's sockets) and whose receive side is
/// published in the switch's [`PortTable`]. Queue i is served by the thread
/// of key `id + i`, so the queues of one port spread over the threads.
pub(crate) struct DatapathPort {
    datapath: Arc<Datapath>,
    queues: Vec<Arc<dyn PollQueue>>,
    table: Arc<PortTable>,
    switch: Arc<Switch>,
    id: PortId,
}

impl DatapathPort {
    /// Publishes `sink`, brings the link up and has datapath threads poll
    /// `queues`; undone if a thread cannot watch its queue.
    pub(crate) fn start(
        datapath: Arc<Datapath>,
        queues: Vec<Arc<dyn PollQueue>>,
        sink: Box<dyn FrameSink>,
        table: Arc<PortTable>,
        switch: Arc<Switch>,
        id: PortId,
    ) -> io::Result<DatapathPort> {
        table.publish(id, sink);
        switch.set_link(id, true);
        for (i, queue) in queues.iter().enumerate() {
            if let Err(e) = datapath.add(id as usize + i, queue.clone()) {
                for (j, added) in queues[..i].iter().enumerate() {
                    datapath.remove(id as usize + j, added);
                }
                table.withdraw(id);
                switch.set_link(id, false);
                return Err(e);
            }
        }
        Ok(DatapathPort {
            datapath,
            queues,
            table,
            switch,
            id,
        })
    }

    /// Withdraws the sink, takes the link down, stops polling the queues and
    /// closes their sources.
    pub(crate) fn stop(self) {
        self.table.withdraw(self.id);
        self.switch.set_link(self.id, false);
        for (i, queue) in self.queues.iter().enumerate() {
            self.datapath.remove(self.id as usize + i, queue);
            queue.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;

    /// Only a guard against hanging: every wait below is answered at once.
    const HANG: Duration = Duration::from_secs(10);

    /// A queue whose descriptor is an eventfd the test writes to.
    struct FdQueue {
        fd: EventFd,
        polls: AtomicUsize,
        /// Reports `Gone` (and leaves its descriptor readable).
        gone: bool,
        polled: Mutex<mpsc::Sender<&'static str>>,
        name: &'static str,
    }

    impl FdQueue {
        fn new(name: &'static str, gone: bool, polled: mpsc::Sender<&'static str>) -> Arc<Self> {
            Arc::new(FdQueue {
                fd: EventFd::new(EFD_NONBLOCK).unwrap(),
                polls: AtomicUsize::new(0),
                gone,
                polled: Mutex::new(polled),
                name,
            })
        }
    }

    impl PollQueue for FdQueue {
        fn poll(&self) -> Polled {
            self.polls.fetch_add(1, Ordering::SeqCst);
            // Read before telling the test, or its next write could be
            // taken by this read.
            let n = match self.gone {
                true => 0,
                false => self.fd.read().unwrap_or(0) as usize,
            };
            let _ = self.polled.lock().unwrap().send(self.name);
            match self.gone {
                true => Polled::Gone,
                false => Polled::Frames(n),
            }
        }

        fn fds(&self) -> Vec<RawFd> {
            vec![self.fd.as_raw_fd()]
        }
    }

    /// A queue is polled when its descriptor is readable, and never again
    /// once it said it is gone, though its descriptor stays readable.
    #[test]
    fn readable_descriptors_are_polled_and_a_gone_queue_never_again() {
        let dp = Datapath::new(1).unwrap();
        let (tx, rx) = mpsc::channel();
        let gone = FdQueue::new("gone", true, tx.clone());
        let probe = FdQueue::new("probe", false, tx);
        dp.add(0, gone.clone()).unwrap();
        dp.add(0, probe.clone()).unwrap();
        gone.fd.write(1).unwrap();
        assert_eq!(rx.recv_timeout(HANG), Ok("gone"));
        // Two more sleeps and wake-ups through epoll: a thread still
        // watching the gone queue would poll it again on each.
        for _ in 0..2 {
            probe.fd.write(1).unwrap();
            assert_eq!(rx.recv_timeout(HANG), Ok("probe"));
        }
        dp.shutdown();
        assert_eq!(gone.polls.load(Ordering::SeqCst), 1);
        assert_eq!(probe.polls.load(Ordering::SeqCst), 2);
    }

    /// A ring the driver kicks: polled every round, and a kick while the
    /// thread sleeps ([`Datapath::wake`]) gets its frames taken.
    struct Ring {
        waiting: AtomicUsize,
        taken: Mutex<mpsc::Sender<usize>>,
        armed: AtomicUsize,
    }

    impl PollQueue for Ring {
        fn poll(&self) -> Polled {
            let n = self.waiting.swap(0, Ordering::SeqCst);
            if n > 0 {
                let _ = self.taken.lock().unwrap().send(n);
            }
            Polled::Frames(n)
        }

        fn arm(&self) -> bool {
            self.armed.fetch_add(1, Ordering::SeqCst);
            false
        }
    }

    #[test]
    fn a_kick_wakes_a_sleeping_thread_and_stop_needs_no_timeout() {
        let dp = Datapath::new(1).unwrap();
        let (tx, rx) = mpsc::channel();
        let ring = Arc::new(Ring {
            waiting: AtomicUsize::new(0),
            taken: Mutex::new(tx),
            armed: AtomicUsize::new(0),
        });
        dp.add(0, ring.clone()).unwrap();
        for round in 1..=3 {
            // Armed means asleep (or about to be): the frames need the kick.
            let deadline = Instant::now() + HANG;
            while ring.armed.load(Ordering::SeqCst) < round {
                assert!(Instant::now() < deadline, "the thread never went to sleep");
                std::thread::sleep(Duration::from_millis(1));
            }
            ring.waiting.store(round, Ordering::SeqCst);
            dp.wake(0);
            assert_eq!(rx.recv_timeout(HANG), Ok(round));
        }
        // Stopping wakes the sleeping thread through the same eventfd: a
        // stop that needed a timeout would hang here.
        dp.shutdown();
        assert!(rx.try_recv().is_err(), "no frame taken twice");
    }
}
