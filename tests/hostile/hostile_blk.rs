//! A hostile virtio-blk driver against the block datapath, in process (`GuestBlk`
//! plays VMM and guest over memfd memory; the daemon runs in this process):
//!
//! - `huge_misaligned_requests_stay_bounded`: full queues of maximal (4 MiB)
//!   misaligned reads and writes with odd-sized segments, and over-limit ones. The
//!   daemon's anonymous memory stays bounded, over-limit requests get IOERR and are
//!   counted exactly, valid writes read back exactly, and another export keeps
//!   answering promptly.
//! - `avail_index_too_far_ahead_stops_the_queue`: the queue is stopped as broken
//!   (counted once), no CPU burns, GET_VRING_BASE is answered, another export serves.
//! - `flushes_on_a_slow_device_do_not_stall_another_export` and
//!   `write_through_on_a_slow_device_does_not_stall_another_export`: a FLUSH, or a
//!   write-through write, waits for the device (a 1 s sync injected through
//!   `IoFaults::slow_sync`) off the pool lock.
//!
//! Memory is measured as the process's resident memory minus its shared pages
//! (`/proc/self/statm`): guest RAM is a shared memfd mapping, so the pages the
//! daemon touches in it are excluded, and what remains is heap (bounce buffers,
//! request state). The test keeps its own allocations out of the measured window.

use test_kit::blkio::pattern;
use test_kit::frontend as support;
// Every test of this binary runs alone (the kit's `serial` lock): they measure the
// process's CPU time and memory, which a test running beside them would add to.
use test_kit::serial;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use support::blk_daemon::BlkDaemon;
use support::split_ring::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_WRITE};
use support::vhost_frontend::{indirect_table, linear_chain};
use support::virtio_blk::*;
use support::RawDesc;

const MIB: u64 = 1 << 20;
/// The device's per-request limit (vblock::engine::MAX_REQUEST_BYTES).
const LIMIT: u64 = 4 * MIB;

/// Resident minus shared bytes of this process (heap, stacks, private mappings).
fn private_rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let f: Vec<u64> = statm
        .split_whitespace()
        .map(|w| w.parse().expect("statm field"))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    (f[1] - f[2]) * page
}

/// User plus system CPU time of the whole process.
fn process_cpu() -> Duration {
    // SAFETY: `libc::rusage` is plain integers; all-zero bytes are a valid value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only into `u`, a local nothing else references.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Samples [`private_rss`] every millisecond on a thread of its own until stopped;
/// returns the peak.
struct RssPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssPeak {
    fn start() -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(private_rss()));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(private_rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        RssPeak {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.peak.load(Ordering::Relaxed).max(private_rss())
    }
}

/// `len` bytes split into at most `max` segments with odd lengths (the last one
/// takes the rest): (offset in the buffer, length). A chain may have at most the
/// queue size of descriptors (virtio 1.x §2.7.5.3.1), header and status included.
fn odd_segments(len: u64, max: u64) -> Vec<(u64, u32)> {
    let base = (len / (max - 1)) | 1; // odd, and max - 1 of them leave less than one
    let mut out = Vec::new();
    let mut at = 0;
    let mut k = 0u64;
    while at < len {
        let want = if k.is_multiple_of(2) {
            base + 2
        } else {
            base - 2
        };
        let n = want.min(len - at);
        out.push((at, n as u32));
        at += n;
        k += 1;
    }
    out
}

/// Posts on `q` one read or write of `len` bytes at `sector`, its data in guest
/// memory at `buf` (any alignment) in odd-sized segments, through one indirect
/// table. Returns (head, status address).
fn post_big(
    blk: &mut GuestBlk,
    q: usize,
    write: bool,
    sector: u64,
    buf: u64,
    len: u64,
) -> (u16, u64) {
    let kind = if write { T_OUT } else { T_IN };
    let hdr = blk.guest_alloc(&header(kind, sector));
    let status = blk.guest_alloc(&[STATUS_UNWRITTEN]);
    let data_flags = if write { 0 } else { VIRTQ_DESC_F_WRITE };
    let mut parts = vec![(hdr, HEADER_LEN as u32, 0)];
    parts.extend(
        odd_segments(len, u64::from(blk.queue_size()) - 2)
            .into_iter()
            .map(|(at, n)| (buf + at, n, data_flags)),
    );
    parts.push((status, 1, VIRTQ_DESC_F_WRITE));
    let table = blk.guest_alloc(&indirect_table(&linear_chain(&parts)));
    let head = blk
        .post_raw(
            q,
            &[RawDesc {
                addr: table,
                len: 16 * parts.len() as u32,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            }],
        )
        .expect("a free descriptor");
    (head, status)
}

/// Waits for `head` on `q` and returns (used length, status byte).
fn answer(blk: &mut GuestBlk, q: usize, head: u16, status: u64) -> (u32, u8) {
    let used = blk
        .wait_used(q, head, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("queue {q}: head {head} not answered within 60 s"));
    (used, blk.read_byte(status))
}

/// Sets the flag when dropped: a failing test stops its helper threads, so the scope
/// they run in can end and the failure be reported.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Reads 4 KiB at `sector` of `blk` over and over until `stop`; returns the slowest
/// answer and how many reads were done.
fn probe_reads(blk: &mut GuestBlk, sector: u64, stop: &AtomicBool) -> (Duration, u64) {
    let mut worst = Duration::ZERO;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let d = blk.read(0, sector, 4096);
        worst = worst.max(t.elapsed());
        assert!(d.ok(), "probe read failed: {d:?}");
        n += 1;
    }
    (worst, n)
}

#[test]
fn huge_misaligned_requests_stay_bounded() {
    let _serial = serial();
    const QS: u16 = 32;
    let f = BlkDaemon::start(
        "256M",
        "[[pool.volume]]\nname = \"hb-big\"\nsize = \"192M\"\nexport = {}\n\
         [[pool.volume]]\nname = \"hb-other\"\nsize = \"16M\"\nexport = {}\n",
    );
    let mut blk = f.connect_with(
        "hb-big",
        BlkOptions {
            queue_size: QS,
            sandbox: 10 * MIB,
            ..Default::default()
        },
    );
    let mut other = f.connect_with("hb-other", BlkOptions::default());
    assert!(other.write(0, 0, &pattern(7, 0, 4096)).ok());
    // What a conforming driver is told: never more than the limit.
    let cfg = blk.config();
    assert!(
        u64::from(cfg.seg_max) * u64::from(cfg.size_max) <= LIMIT,
        "{cfg:?}"
    );
    assert!(cfg.seg_max >= 1 && cfg.size_max >= 4096, "{cfg:?}");

    // Write sources at an odd address in [0, 5 MiB) of the sandbox, read targets in
    // [5 MiB, 10 MiB): reads never land on data a write is still sending.
    let (sandbox, _) = blk.sandbox();
    let src_len = LIMIT as usize + 64 * 1024;
    let src = pattern(1, 0, src_len);
    blk.ram().write(sandbox, &src).unwrap();
    let read_buf = sandbox + 5 * MIB + 3;
    // Write k goes to sector 8 MiB * k + 7 (not cluster aligned) from source offset
    // 1 + 4099 * k.
    let writes = (QS / 2) as u64;
    let wsector = |k: u64| k * 8 * MIB / SECTOR + 7;
    let wsrc = |k: u64| 1 + 4099 * k;
    let before_too_large = f.counter("hb-big", "too_large");

    let stop = AtomicBool::new(false);
    let (peak, base, probe) = std::thread::scope(|s| {
        let prober = s.spawn(|| probe_reads(&mut other, 0, &stop));
        let _stop = StopOnDrop(&stop);
        let base = private_rss();
        let rss = RssPeak::start();
        for round in 0..3 {
            // A full queue: the writes and as many reads, half of them of ranges
            // never written (zero-filled), half of written ones.
            let mut posted = Vec::new();
            for k in 0..writes {
                posted.push(post_big(
                    &mut blk,
                    0,
                    true,
                    wsector(k),
                    sandbox + wsrc(k),
                    LIMIT,
                ));
            }
            for k in 0..u64::from(QS) - writes {
                let sector = if k.is_multiple_of(2) {
                    wsector(k) + 2
                } else {
                    (127 * MIB + k * LIMIT) / SECTOR + 1
                };
                posted.push(post_big(&mut blk, 0, false, sector, read_buf, LIMIT));
            }
            for (i, (head, status)) in posted.into_iter().enumerate() {
                let (used, st) = answer(&mut blk, 0, head, status);
                let want = if (i as u64) < writes {
                    1
                } else {
                    LIMIT as u32 + 1
                };
                assert_eq!((used, st), (want, S_OK), "round {round} request {i}");
            }
        }
        let peak = rss.finish();
        stop.store(true, Ordering::Relaxed);
        (peak, base, prober.join().unwrap())
    });
    let growth = peak.saturating_sub(base);
    eprintln!(
        "private RSS {} MiB -> peak {} MiB; other export: {} reads, slowest {:?}",
        base >> 20,
        peak >> 20,
        probe.1,
        probe.0
    );
    // 96 requests of 4 MiB went through: unbounded bounce buffers would be 64+ MiB
    // at once. The engine's pool is 4 MiB per queue; allow for allocator slack.
    assert!(
        growth < 24 * MIB,
        "the daemon's private memory grew by {} MiB",
        growth >> 20
    );
    assert!(probe.1 > 0, "the other export answered no read");
    assert!(
        probe.0 < Duration::from_secs(1),
        "the other export took {:?} to answer a 4 KiB read",
        probe.0
    );

    // Over the limit: IOERR, used length 1, counted one by one.
    const OVER: u64 = 5;
    for (i, write) in [true, false, true, false, true].into_iter().enumerate() {
        let buf = if write { sandbox + 1 } else { read_buf };
        let (head, status) = post_big(&mut blk, 0, write, 0, buf, LIMIT + SECTOR);
        assert_eq!(
            answer(&mut blk, 0, head, status),
            (1, S_IOERR),
            "over-limit {i}"
        );
    }
    let too_large = f.counter("hb-big", "too_large");
    assert_eq!(
        too_large - before_too_large,
        OVER,
        "{}",
        f.counter_line("hb-big")
    );
    let key = "vswitchd_blk_too_large_total{pool=\"p0\",volume=\"hb-big\"}";
    assert_eq!(f.metrics().get(key), Some(&(too_large as f64)), "{key}");

    // Every write landed exactly, read back through well-formed 64 KiB reads.
    for k in 0..writes {
        let expect = &src[wsrc(k) as usize..(wsrc(k) + LIMIT) as usize];
        let chunk = 64 * 1024;
        for (c, want) in expect.chunks(chunk).enumerate() {
            let d = blk.read(0, wsector(k) + (c * chunk) as u64 / SECTOR, chunk);
            assert!(d.ok(), "read back of write {k}: {d:?}");
            assert!(d.data == want, "write {k}: chunk {c} differs");
        }
    }
    f.check_pool();
}

#[test]
fn avail_index_too_far_ahead_stops_the_queue() {
    let _serial = serial();
    let f = std::mem::ManuallyDrop::new(BlkDaemon::start(
        "64M",
        "[[pool.volume]]\nname = \"ha-bad\"\nsize = \"16M\"\nexport = { queues = 2 }\n\
         [[pool.volume]]\nname = \"ha-other\"\nsize = \"16M\"\nexport = {}\n",
    ));
    // A daemon whose worker spins cannot be shut down: on failure the fixture is
    // leaked (ManuallyDrop) so the test reports instead of hanging.
    let mut blk = f.connect_with(
        "ha-bad",
        BlkOptions {
            queues: 2,
            queue_size: 64,
            ..Default::default()
        },
    );
    let mut other = f.connect_with("ha-other", BlkOptions::default());
    assert!(blk.write(0, 0, &pattern(3, 0, 4096)).ok());
    // 100 entries made "available" on a queue of 64.
    blk.post_avail_ahead(0, 100);
    std::thread::sleep(Duration::from_millis(200));
    let cpu = process_cpu();
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..10 {
        blk.kick(0);
    }
    std::thread::sleep(Duration::from_millis(100));
    let used = process_cpu() - cpu;
    assert!(
        used < Duration::from_millis(300),
        "{used:?} of CPU in 1.1 s with a broken queue"
    );
    assert_eq!(
        f.counter("ha-bad", "broken_queues"),
        1,
        "{}",
        f.counter_line("ha-bad")
    );
    // The other queue of the export, and another export, keep serving.
    assert!(blk.write(1, 8, &pattern(4, 0, 4096)).ok());
    let d = blk.read(1, 0, 4096);
    assert!(d.ok() && d.data == pattern(3, 0, 4096));
    assert!(other.write(0, 0, &pattern(5, 0, 4096)).ok());
    assert_eq!(other.read(0, 0, 4096).data, pattern(5, 0, 4096));

    // GET_VRING_BASE is answered within 1 s.
    let (tx, rx) = mpsc::channel();
    let t = Instant::now();
    std::thread::spawn(move || {
        let r = blk.stop();
        let _ = tx.send(r.map(|bases| (bases, blk)));
    });
    let (bases, _blk) = rx
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_else(|_| panic!("GET_VRING_BASE not answered within 1 s"))
        .expect("GET_VRING_BASE");
    eprintln!("GET_VRING_BASE answered in {:?}: {bases:?}", t.elapsed());
    assert_eq!(f.counter("ha-bad", "broken_queues"), 1);
    let key = "vswitchd_blk_broken_queues_total{pool=\"p0\",volume=\"ha-bad\"}";
    assert_eq!(f.metrics().get(key), Some(&1.0), "{key}");
    drop(other);
    drop(_blk);
    drop(std::mem::ManuallyDrop::into_inner(f));
}

#[test]
fn flushes_on_a_slow_device_do_not_stall_another_export() {
    durable_writes_on_a_slow_device("hf", false);
}

#[test]
fn write_through_on_a_slow_device_does_not_stall_another_export() {
    durable_writes_on_a_slow_device("hw", true);
}

/// One export makes 4 KiB in-place writes durable for 3 s, on a device whose every
/// sync takes 1 s: by FLUSH after each write, or (`write_through`: a driver without
/// FLUSH) by the write itself. Each takes at least the sync; another export of the
/// pool reads meanwhile and is never held up by it.
fn durable_writes_on_a_slow_device(tag: &str, write_through: bool) {
    let _serial = serial();
    const SYNC: Duration = Duration::from_secs(1);
    let (writer_vol, reader_vol) = (format!("{tag}-writer"), format!("{tag}-reader"));
    let f = BlkDaemon::start(
        "64M",
        &format!(
            "[[pool.volume]]\nname = \"{writer_vol}\"\nsize = \"16M\"\nexport = {{}}\n\
             [[pool.volume]]\nname = \"{reader_vol}\"\nsize = \"16M\"\nexport = {{}}\n"
        ),
    );
    let opts = BlkOptions {
        flush: !write_through,
        ..Default::default()
    };
    let mut writer = f.connect_with(&writer_vol, opts);
    assert_eq!(writer.config().writeback, u8::from(!write_through));
    let mut reader = f.connect_with(&reader_vol, BlkOptions::default());
    // Both map their cluster first: the writer's writes are then in place (no
    // journal records), so making them durable waits for the device alone.
    assert!(writer.write(0, 0, &pattern(8, 0, 4096)).ok());
    assert!(reader.write(0, 0, &pattern(9, 0, 4096)).ok());
    if !write_through {
        assert!(writer.flush(0).ok());
    }
    assert!(reader.flush(0).ok());
    let faults = f.io_faults("p0");
    faults.slow_sync(SYNC);
    let before = (
        f.counter(&writer_vol, "writes"),
        f.counter(&writer_vol, "flushes"),
    );

    let stop = AtomicBool::new(false);
    let (durable, (worst, reads)) = std::thread::scope(|s| {
        let writing = s.spawn(|| {
            let mut n = 0u64;
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(3) {
                let start = Instant::now();
                assert!(writer.write(0, 0, &pattern(10 + n, 0, 4096)).ok());
                if !write_through {
                    let d = writer.flush(0);
                    assert!(d.ok(), "flush {n}: {d:?}");
                }
                // The delay is real: skipping the device would be quick.
                let took = start.elapsed();
                assert!(took >= SYNC, "durable write {n} took {took:?}");
                n += 1;
            }
            n
        });
        let reading = s.spawn(|| probe_reads(&mut reader, 0, &stop));
        let _stop = StopOnDrop(&stop);
        let n = writing.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        (n, reading.join().unwrap())
    });
    faults.slow_sync(Duration::ZERO);
    eprintln!("{tag}: {durable} durable writes; reader: {reads} reads, slowest {worst:?}");
    let flushes = if write_through { 0 } else { durable };
    assert_eq!(
        (
            f.counter(&writer_vol, "writes"),
            f.counter(&writer_vol, "flushes")
        ),
        (before.0 + durable, before.1 + flushes)
    );
    assert!(durable >= 3, "only {durable} durable writes in 3 s");
    assert!(reads > 0);
    assert!(
        worst < SYNC * 2 / 5,
        "a read of another export took {worst:?} while writes waited {SYNC:?} for the device"
    );
}

/// Rings that leave guest memory: the descriptor table starts inside it (so
/// SET_VRING_ADDR translates) but runs past its end. The device stops that queue as
/// broken, counted once, never reads past guest memory, and answers GET_VRING_BASE
/// at once; another export keeps serving.
#[test]
fn rings_running_past_guest_memory_stop_the_queue() {
    use support::guest_memory::GuestRam;
    use support::split_ring::SplitRing;
    use support::vhost_frontend::{
        connect_frontend, enable_queue, negotiate, set_mem_table, vu, F_VERSION_1,
    };
    use vhost::vhost_user::message::VhostUserProtocolFeatures;
    use vhost::VhostBackend;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    let _serial = serial();
    const QS: u16 = 256;
    let f = BlkDaemon::start(
        "64M",
        "[[pool.volume]]\nname = \"hr-bad\"\nsize = \"8M\"\nexport = {}\n\
         [[pool.volume]]\nname = \"hr-other\"\nsize = \"8M\"\nexport = {}\n",
    );
    let mut other = f.connect_with("hr-other", BlkOptions::default());

    let mut ram = GuestRam::new(16 << 20).unwrap();
    let mut ring = SplitRing::new(&mut ram, QS, false).unwrap();
    let mut rings = ring.config(&ram).unwrap();
    // 16 bytes of guest memory left where the table needs 16 * QS.
    rings.desc_table_addr = ram.host_addr(ram.size() - 16).unwrap();
    let mut fe = connect_frontend(&f.socket("hr-bad"), 1).unwrap();
    let n = negotiate(
        &mut fe,
        F_VERSION_1,
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK,
    )
    .unwrap();
    set_mem_table(&mut fe, &ram).unwrap();
    let (kick, call) = (
        EventFd::new(EFD_NONBLOCK).unwrap(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    );
    vu("SET_VRING_NUM", fe.set_vring_num(0, QS)).unwrap();
    vu("SET_VRING_ADDR", fe.set_vring_addr(0, &rings)).unwrap();
    vu("SET_VRING_BASE", fe.set_vring_base(0, 0)).unwrap();
    vu("SET_VRING_CALL", fe.set_vring_call(0, &call)).unwrap();
    vu("SET_VRING_KICK", fe.set_vring_kick(0, &kick)).unwrap();
    enable_queue(&mut fe, 0, n.features).unwrap();
    ring.push_avail(&ram, 0);
    ring.publish(&ram);
    kick.write(1).unwrap();

    let deadline = Instant::now() + Duration::from_secs(5);
    while f.counter("hr-bad", "broken_queues") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(f.counter("hr-bad", "broken_queues"), 1);
    kick.write(1).unwrap(); // looked at again: still counted once
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(f.counter("hr-bad", "broken_queues"), 1);
    assert!(
        other.write(0, 0, &pattern(3, 0, 4096)).ok(),
        "another export serves"
    );

    let t = Instant::now();
    let base = vu("GET_VRING_BASE", fe.get_vring_base(0)).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "GET_VRING_BASE took {:?}",
        t.elapsed()
    );
    assert_eq!(base, 0, "nothing was taken from the broken ring");
}
