//! What a live migration's dirty log costs the datapath while it is on:
//! forwarding rate and disk IOPS with logging on against the same with it
//! off, in one run, in interleaved rounds (off, on, off, on, ...).
//!
//! `cargo bench --bench dirty_log` (it does nothing without `--bench`, so
//! `cargo test --all-targets` only builds it). The daemon runs in process,
//! built with the bench profile (release), as the harness tests run it;
//! the frontend is the test kit's (`test_kit::frontend`), which plays QEMU
//! migrating: SET_LOG_BASE with a memfd log, SET_FEATURES with LOG_ALL
//! (`FrontendLog::start`), and while logging a second thread clears the
//! logs every 100 ms ([`SYNC`]) as QEMU's migration thread syncs them, so
//! marks keep landing on clean bits. Off is QEMU's cancelled migration:
//! SET_FEATURES without LOG_ALL. Neither testpmd's virtio_user nor libblkio
//! (the peers of `benches/net_forward.sh` and `--bench blk_io`) can hand
//! over a log, and the daemon has no knob that logs without one.
//!
//! - net: two access ports of one switch (mtu 9000), one `GuestNic` each
//!   with 256-entry rings, both driven by one frontend thread that keeps
//!   both TX rings full (frames to the other port) and polls both RX rings
//!   without notifications (DPDK's virtio PMD), as testpmd's io loop does
//!   in `net_forward.sh`; the rate is the frames received by both, per
//!   second. Whether the frontend keeps up: `tx fill` is how full it found
//!   the TX rings at each turn, on average (descriptors in flight; near
//!   100%, the switch always had a full ring waiting), and `drops` the
//!   frames the switch dropped for want of receive buffers, per frame
//!   received. Before that, the frontend alone: the same loop against
//!   DPDK's vhost PMD (testpmd's `net_vhost`, io forward, on CPU 1), far
//!   faster than the switch, one round per frame size: how close the
//!   switch's figures are to the frontend's own limit.
//! - blk: 4 KiB random reads, then writes, at QD32 on one queue
//!   (`test_kit::blkio::run_io` on a `GuestBlk` queue) against an export of
//!   a volume written in full first (64 KiB sequential writes), its pool a
//!   file in `$VBLOCK_TEST_DIR` or /var/tmp (O_DIRECT).
//!
//! Each row prints the median and range over the rounds, the pages marked
//! per 100 ms sync while on, and the ratio of the medians on/off (with the
//! range of the per-round ratios, each on round against the off round just
//! before it). Environment: `DIRTY_BENCH_SECS` (per round, default 5),
//! `DIRTY_BENCH_ROUNDS` (of each, default 3), `DIRTY_BENCH_SIZES` (frame
//! bytes without FCS, default "64 1518"), `DIRTY_BENCH_VOLUME` (default
//! 256M), `DIRTY_BENCH_ONLY` (`net` or `blk`), `DIRTY_BENCH_PIN=1` (after
//! the frontend-alone rounds: the frontend on CPU 1, every other thread of
//! the process, the daemon's, on CPU 0). Needs `dpdk-testpmd` for `net`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use test_kit::blkio::{run_io, IoJob, IoKind, Offsets};
use test_kit::frontend::blk_daemon::BlkDaemon;
use test_kit::frontend::blk_io::GuestBlkQueue;
use test_kit::frontend::dirty_log::FrontendLog;
use test_kit::frontend::fabric::Fabric;
use test_kit::frontend::frames::{payload, ETHERTYPE_TEST};
use test_kit::frontend::virtio_blk::{BlkOptions, GuestBlk, WAIT};
use test_kit::frontend::{eth, mac, GuestNic, NicOptions};
use test_kit::stats;
use test_kit::testpmd::vhost_peer::Testpmd;
use vhost::vhost_user::Frontend;

/// How often the frontend clears the logs while logging (QEMU's sync).
const SYNC: Duration = Duration::from_millis(100);
/// Frames a TX ring is topped up with per loop turn (its size).
const BURST: usize = 256;
const QD: usize = 32;
const BS: usize = 4096;

struct Opts {
    secs: u64,
    rounds: usize,
    sizes: Vec<usize>,
    volume: u64,
    only: Option<String>,
    pin: bool,
}

/// A device's dirty log, switched on and off as QEMU does.
struct Logged {
    log: FrontendLog,
    frontend: Frontend,
    features: u64,
}

impl Logged {
    fn new(frontend: Frontend, features: u64, mem_size: u64) -> Logged {
        let log = FrontendLog::new(mem_size).expect("a dirty log");
        Logged {
            log,
            frontend,
            features,
        }
    }

    /// Migration started (SET_LOG_BASE, LOG_ALL) or cancelled; the log
    /// starts clean either way.
    fn set(&self, on: bool) {
        let r = match on {
            true => self.log.start(&self.frontend, self.features),
            false => self.log.stop(&self.frontend, self.features),
        };
        r.unwrap_or_else(|e| panic!("switching the dirty log: {e}"));
        self.log.clear();
    }
}

/// Runs `work` with logging `on` for `logs`; while on, a second thread
/// clears the logs every [`SYNC`]. Returns the work's result and the pages
/// marked per sync (0 when off).
fn logging<T>(logs: &[&Logged], on: bool, work: impl FnOnce() -> T) -> (T, f64) {
    for l in logs {
        l.set(on);
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let syncer = s.spawn(|| {
            let (mut marked, mut syncs) = (0u64, 0u64);
            let mut next = Instant::now() + SYNC;
            while on && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                if Instant::now() >= next {
                    marked += logs.iter().map(|l| l.log.clear()).sum::<u64>();
                    syncs += 1;
                    next += SYNC;
                }
            }
            marked as f64 / syncs.max(1) as f64
        });
        let out = work();
        stop.store(true, Ordering::Relaxed);
        (out, syncer.join().expect("the sync thread"))
    })
}

/// One measured round.
struct Round {
    rate: f64,
    /// TX ring fill and drops per frame received (net only).
    tx_fill: f64,
    drops: f64,
    pages_per_sync: f64,
}

/// Keeps both TX rings full and both RX rings drained for `dur`; returns
/// frames received, seconds and the TX rings' mean fill.
fn forward(nics: &mut [GuestNic; 2], frames: &[Vec<u8>; 2], dur: Duration) -> (u64, f64, f64) {
    let bursts: [Vec<&[u8]>; 2] = [0, 1].map(|i| vec![&frames[i][..]; BURST]);
    let (mut received, mut free, mut looks) = (0, 0, 0);
    let start = Instant::now();
    while start.elapsed() < dur {
        for i in 0..2 {
            free += nics[i].tx_free_descriptors();
            looks += 1;
            nics[i].send_batch(&bursts[i]);
            received += nics[1 - i].poll_rx_frames() as u64;
        }
    }
    let fill = 1.0 - free as f64 / (looks * BURST) as f64;
    (received, start.elapsed().as_secs_f64(), fill)
}

fn net(o: &Opts) -> Vec<(String, Vec<Round>, Vec<Round>)> {
    const ACCESS10: &str = "{ mode = \"access\", tag = 10 }";
    let jumbo = "mtu = 9000";
    let f = Fabric::start_with("", "", &[("p1", ACCESS10, jumbo), ("p2", ACCESS10, jumbo)]);
    let opts = NicOptions {
        dirty_log: true,
        ..Default::default()
    };
    let mut nics = [
        f.connect_with("p1", opts.clone()),
        f.connect_with("p2", opts),
    ];
    let logs = nics
        .each_ref()
        .map(|n| Logged::new(n.frontend(), n.negotiated_features(), n.mem_size()));
    let logs = [&logs[0], &logs[1]];
    pin_frontend(o);
    let mut rows = Vec::new();
    for &len in &o.sizes {
        let frames = net_frames(len);
        // Warm up (and both stations learned): not measured.
        forward(&mut nics, &frames, Duration::from_secs(1));
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for round in 0..o.rounds {
            for logged in [false, true] {
                eprintln!(
                    "dirty_log: net {len} B, round {}, logging {}",
                    round + 1,
                    onoff(logged)
                );
                let dur = Duration::from_secs(o.secs);
                let drops = || -> u64 {
                    ["p1", "p2"]
                        .map(|p| f.counters(p).total_drops())
                        .iter()
                        .sum()
                };
                let dropped = drops();
                let ((received, secs, tx_fill), pages) =
                    logging(&logs, logged, || forward(&mut nics, &frames, dur));
                let r = Round {
                    rate: received as f64 / secs,
                    tx_fill,
                    drops: (drops() - dropped) as f64 / received.max(1) as f64,
                    pages_per_sync: pages,
                };
                if logged {
                    on.push(r)
                } else {
                    off.push(r)
                }
            }
        }
        rows.push((net_row(len), off, on));
    }
    rows
}

/// The frontend's own limit: the same loop against DPDK's vhost PMD
/// (`net_vhost`, io forward: a wire between its two ports, far faster than
/// the switch), one round per frame size; (size, frames per second).
fn frontend_limit(o: &Opts) -> Vec<(usize, f64)> {
    let pmd = Testpmd::vhost("dirtylog", 2, "io");
    let mut nics = [0, 1].map(|i| {
        GuestNic::connect(pmd.socket(i), NicOptions::default()).expect("connect to testpmd")
    });
    let mut limits = Vec::new();
    for &len in &o.sizes {
        eprintln!("dirty_log: frontend alone against net_vhost, {len} B");
        let frames = net_frames(len);
        // net_vhost drops what comes before it marks a port ready.
        forward(&mut nics, &frames, Duration::from_secs(1));
        let (received, secs, _) = forward(&mut nics, &frames, Duration::from_secs(o.secs));
        limits.push((len, received as f64 / secs));
    }
    limits
}

/// A frame of `len` bytes (no FCS) each way between mac(1) and mac(2).
fn net_frames(len: usize) -> [Vec<u8>; 2] {
    let (m1, m2) = (mac(1), mac(2));
    [
        eth(m2, m1, ETHERTYPE_TEST, &payload(1, len - 14)),
        eth(m1, m2, ETHERTYPE_TEST, &payload(2, len - 14)),
    ]
}

fn blk(o: &Opts) -> Vec<(String, Vec<Round>, Vec<Round>)> {
    let volume = format!(
        "[[pool.volume]]\nname = \"logcost\"\nsize = \"{}\"\nexport = {{ queue_size = 256 }}\n",
        o.volume
    );
    let d = BlkDaemon::start(&format!("{}", 2 * o.volume + (256 << 20)), &volume);
    let mut blk = d.connect_with(
        "logcost",
        BlkOptions {
            dirty_log: true,
            queue_size: 256,
            ..Default::default()
        },
    );
    assert_eq!(blk.config().bytes(), o.volume, "volume capacity");
    let logged = Logged::new(blk.frontend(), blk.negotiated_features(), blk.mem_size());
    pin_frontend(o);
    eprintln!("dirty_log: blk: writing the volume in full...");
    let fill = IoJob {
        kind: IoKind::Write,
        block_size: 64 * 1024,
        qd: 8,
        duration: Duration::from_secs(3600),
        region: 0..o.volume,
        offsets: Offsets::Sequential,
        seed: 3,
    };
    let st = run_io(&mut GuestBlkQueue::new(&mut blk, 0, 8 * 64 * 1024), &fill).expect("fill");
    assert!(st.exhausted, "the fill did not finish");
    let mut rows = Vec::new();
    for (kind, name) in [(IoKind::Read, "randread"), (IoKind::Write, "randwrite")] {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for round in 0..o.rounds {
            for log_on in [false, true] {
                eprintln!(
                    "dirty_log: blk {name}, round {}, logging {}",
                    round + 1,
                    onoff(log_on)
                );
                let job = IoJob {
                    kind,
                    block_size: BS,
                    qd: QD,
                    duration: Duration::from_secs(o.secs),
                    region: 0..o.volume,
                    offsets: Offsets::Uniform,
                    seed: round as u64 * 2 + u64::from(log_on),
                };
                let (st, pages) = logging(&[&logged], log_on, || {
                    run_io(&mut GuestBlkQueue::new(&mut blk, 0, QD * BS), &job)
                });
                let st = st.unwrap_or_else(|e| panic!("blk {name}: {e}"));
                let r = Round {
                    rate: st.iops(),
                    tx_fill: f64::NAN,
                    drops: f64::NAN,
                    pages_per_sync: pages,
                };
                if log_on {
                    on.push(r)
                } else {
                    off.push(r)
                }
            }
        }
        rows.push((format!("blk 4 KiB {name} QD{QD}"), off, on));
    }
    assert!(blk.wait_chains_returned(0, WAIT));
    drop::<GuestBlk>(blk);
    d.check_pool();
    rows
}

fn onoff(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// The median of `v`; NaN (printed as such) for no rounds.
fn median(v: &[f64]) -> f64 {
    stats::median(v).unwrap_or(f64::NAN)
}

fn range(v: &[f64]) -> (f64, f64) {
    stats::min_max(v).unwrap_or((f64::NAN, f64::NAN))
}

fn print(rows: &[(String, Vec<Round>, Vec<Round>)], o: &Opts) {
    println!();
    println!(
        "## dirty log on vs off: {} interleaved rounds of each, {} s per round, log cleared every {} ms while on",
        o.rounds,
        o.secs,
        SYNC.as_millis()
    );
    println!(
        "{:<26} {:<4} {:>9} {:>19} {:>8} {:>8} {:>10}   on/off (per round)",
        "workload", "log", "median/s", "range", "tx fill", "drops", "pages/sync"
    );
    let pct = |x: f64| match x.is_nan() {
        true => "-".to_string(),
        false => format!("{:.1}%", x * 100.0),
    };
    for (name, off, on) in rows {
        let ratios: Vec<f64> = on.iter().zip(off).map(|(a, b)| a.rate / b.rate).collect();
        let med =
            |rs: &[Round], f: fn(&Round) -> f64| median(&rs.iter().map(f).collect::<Vec<_>>());
        for (label, rs) in [("off", off), ("on", on)] {
            let (lo, hi) = range(&rs.iter().map(|r| r.rate).collect::<Vec<_>>());
            let ratio = match label {
                "on" => {
                    let (rlo, rhi) = range(&ratios);
                    let m = med(on, |r| r.rate) / med(off, |r| r.rate);
                    format!("{m:.3} ({rlo:.3}-{rhi:.3})")
                }
                _ => String::new(),
            };
            println!(
                "{:<26} {:<4} {:>9} {:>19} {:>8} {:>8} {:>10.0}   {ratio}",
                name,
                label,
                human(med(rs, |r| r.rate)),
                format!("{} - {}", human(lo), human(hi)),
                pct(med(rs, |r| r.tx_fill)),
                pct(med(rs, |r| r.drops)),
                med(rs, |r| r.pages_per_sync),
            );
        }
    }
}

fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.3}M", x / 1e6)
    } else {
        format!("{:.1}k", x / 1e3)
    }
}

/// With `DIRTY_BENCH_PIN=1`: this thread (the frontend) on CPU 1, every
/// other thread of the process (the daemon's) on CPU 0, as
/// `benches/net_forward.sh` puts its peer and the switch.
fn pin_frontend(o: &Opts) {
    if !o.pin {
        return;
    }
    let me = gettid();
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    for t in tasks.flatten() {
        let Ok(tid) = t.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        set_affinity(tid, if tid == me { 1 } else { 0 });
    }
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

fn set_affinity(tid: i32, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // inside it; sched_setaffinity reads `size_of::<cpu_set_t>()` bytes.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    // A thread that exited meanwhile is fine.
    if rc != 0 {
        eprintln!(
            "dirty_log: pinning thread {tid} to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn env_or<T>(name: &str, default: T, parse: impl Fn(&str) -> Option<T>) -> T {
    match std::env::var(name) {
        Ok(v) => parse(&v).unwrap_or_else(|| panic!("{name}={v:?} is not valid")),
        Err(_) => default,
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let o = Opts {
        secs: env_or("DIRTY_BENCH_SECS", 5, |s| s.parse().ok()),
        rounds: env_or("DIRTY_BENCH_ROUNDS", 3, |s| s.parse().ok()),
        sizes: env_or("DIRTY_BENCH_SIZES", vec![64, 1518], |s| {
            s.split_whitespace()
                .map(|x| x.parse().ok().filter(|&n: &usize| (60..=9014).contains(&n)))
                .collect()
        }),
        volume: env_or("DIRTY_BENCH_VOLUME", 256 << 20, |s| {
            fabric_config::parse_size(s).ok()
        }),
        only: std::env::var("DIRTY_BENCH_ONLY").ok(),
        pin: env_or("DIRTY_BENCH_PIN", false, |s| Some(s == "1")),
    };
    let wants = |what: &str| o.only.as_deref().is_none_or(|w| w == what);
    // First: `DIRTY_BENCH_PIN` pins this thread for the rest of the run.
    let limits = if wants("net") {
        frontend_limit(&o)
    } else {
        Vec::new()
    };
    let mut rows = Vec::new();
    if wants("net") {
        rows.extend(net(&o));
    }
    if wants("blk") {
        rows.extend(blk(&o));
    }
    print(&rows, &o);
    for (len, limit) in limits {
        let off = rows
            .iter()
            .find(|r| r.0 == net_row(len))
            .map_or(f64::NAN, |r| {
                median(&r.1.iter().map(|r| r.rate).collect::<Vec<_>>())
            });
        println!(
            "frontend alone, {len} B (against net_vhost): {} frames/s; the switch's off median is {:.0}% of it",
            human(limit),
            100.0 * off / limit
        );
    }
}

fn net_row(len: usize) -> String {
    format!("net {len} B frames")
}
