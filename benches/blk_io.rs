//! vhost-user-blk speed: 4 KiB random read and write at queue depth 32,
//! driven by the libblkio client of `test-kit/src/blkio`, against host fio
//! on the same fully written file and against qemu-storage-daemon (qsd).
//!
//! `cargo bench --bench blk_io` (it does nothing without `--bench`, so
//! `cargo test --all-targets` only builds it). Environment:
//! `BLK_BENCH_SIZE` (bytes or "1G", default 1 GiB: every file and volume),
//! `BLK_BENCH_SECS` (per phase, default 8), `BLK_BENCH_ROUNDS` (default 3),
//! `BLK_BENCH_DIR` (default /var/tmp; not tmpfs: O_DIRECT),
//! `BLK_BENCH_VSWITCHD` (a vswitchd binary: also measure our export; `--ours`
//! does the same with the workspace's vswitchd), `BLK_BENCH_CLUSTER` (pool
//! cluster size, also the qcow2's; default the pool default),
//! `BLK_BENCH_ONLY` (comma list of `fio,raw,qcow2,null,ram`: only those
//! rows; our file-backed export runs whenever a vswitchd is given),
//! `BLK_BENCH_POLL=1` (blkio poll queues: the client spins instead of
//! sleeping on the completion fd).
//!
//! Fairness, so that a skeptic can accept the ratios:
//! - Pinning, the same for every row: this process (the blkio client, and
//!   both threads of the two-queue row) runs on CPU 1; every server runs on
//!   CPU 0 with all its threads (`taskset -c 0`): qsd with its iothread,
//!   vswitchd, and fio, which is client and server in one and so gets CPU 0
//!   alone.
//! - qsd is configured as deployed: an iothread (`--object iothread,id=io0`,
//!   `iothread=io0` on the export), `aio=io_uring`, `cache.direct=on`.
//! - No phase reads or overwrites a hole: the raw file (fio's and qsd raw's)
//!   and the RAM loop device are written out completely (1 MiB sequential
//!   O_DIRECT writes, then fsync) before the first round; the thin volume
//!   and the qcow2 are filled (sequential 256 KiB writes) before their
//!   overwrite and read phases.
//! - First writes: each 4 KiB block of a fresh image once, random order, on
//!   a fresh qcow2 (`preallocation=falloc`, the pool's cluster size) and a
//!   fresh pool (its file fallocated, as vblock creates it), both new in
//!   every round.
//! - Copy-on-write after a snapshot (our export only; a qsd export has no
//!   snapshot inside it): the volume fully written, a snapshot taken through
//!   the running daemon's control socket (`volume.snapshot`), then one 4 KiB
//!   write to each cluster, random order; its peer is host fio's random
//!   overwrite.
//! - Rounds are interleaved: each round runs every row once in the same
//!   order (fio, qsd raw, qsd qcow2, qsd null-co, vswitchd volume, qsd on
//!   RAM, vswitchd on RAM). The table gives per row the median and range
//!   (min-max) over the rounds and the ratios of the medians to host fio's
//!   and to qsd raw's.
//! - Multi-queue: our volume's export offers two queues; the single-queue
//!   rows use one of them, the two-queue row drives both at QD32 each from
//!   two client threads (both on CPU 1; the daemon's two queue threads share
//!   CPU 0, so this shows what a second queue gives at equal CPU).
//!
//! Rows on a RAM loop device (a tmpfs file) take storage out of the way:
//! qsd raw on it and a pool on it, next to qsd null-co (no storage at all:
//! what the vhost-user path alone allows).

use test_kit::blkio as blk_support;

#[path = "fio.rs"]
mod fio;

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vblock::dev::FileDev;
use vblock::pool::{Pool, PoolOptions, DEFAULT_CLUSTER_SIZE};

use blk_support::qsd::{create_qcow2, pinned_command};
use blk_support::*;
use test_kit::stats::{median, min_max};

const QD: usize = 32;
const BS: usize = 4096;
/// The blkio client (this process and its threads).
const CLIENT_CPU: usize = 1;
/// Every server: qsd, vswitchd, fio.
const SERVER_CPU: usize = 0;

struct Opts {
    size: u64,
    secs: u64,
    rounds: usize,
    dir: PathBuf,
    ours: Option<PathBuf>,
    cluster: u64,
    poll: bool,
    only: Option<String>,
}

impl Opts {
    fn wants(&self, phase: &str) -> bool {
        match &self.only {
            None => true,
            Some(o) => o.split(',').any(|p| p.trim() == phase),
        }
    }
}

/// One row's samples, one per round.
#[derive(Default)]
struct Samples {
    read: Vec<f64>,
    write: Vec<f64>,
}

/// Rows in the order they were first measured.
#[derive(Default)]
struct Table {
    rows: Vec<(String, Samples)>,
}

const FIO: &str = "host fio (io_uring, O_DIRECT), raw file";
const QSD_RAW: &str = "qsd raw file";
const OURS_1Q: &str = "vswitchd volume: overwrite / read";
const OURS_2Q: &str = "vswitchd volume, 2 queues: overwrite / read";

impl Table {
    fn add(&mut self, name: &str, read: Option<f64>, write: Option<f64>) {
        eprintln!(
            "blk_io:   {name}: read {} write {}",
            kiops(read),
            kiops(write)
        );
        let i = match self.rows.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.rows.push((name.to_string(), Samples::default()));
                self.rows.len() - 1
            }
        };
        let s = &mut self.rows[i].1;
        s.read.extend(read);
        s.write.extend(write);
    }

    fn row(&self, name: &str) -> Option<&Samples> {
        self.rows.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }
}

fn range(v: &[f64]) -> String {
    match min_max(v) {
        Some((a, b)) => format!("{}-{}", kiops(Some(a)), kiops(Some(b))),
        None => "-".into(),
    }
}

/// `BLK_BENCH_SIZE` etc. in the grammar of `fabric.toml`, `fabricctl` and `vblock`.
fn parse_size(s: &str) -> Option<u64> {
    fabric_config::parse_size(s).ok()
}

fn env_or<T>(name: &str, default: T, parse: impl Fn(&str) -> Option<T>) -> T {
    match std::env::var(name) {
        Ok(v) => parse(&v).unwrap_or_else(|| panic!("{name}={v:?} is not valid")),
        Err(_) => default,
    }
}

/// Pins the calling thread, before it starts any other: threads it spawns
/// later inherit the CPU.
fn pin_this_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside
    // it; sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "pinning the bench to CPU {cpu}: {} (it needs 2 CPUs)",
        std::io::Error::last_os_error()
    );
}

/// fio at this bench's queue depth, on the server CPU.
fn fio(path: &Path, size: u64, rw: &str, secs: u64) -> f64 {
    fio::fio_iops(path, size, rw, QD, secs, Some(SERVER_CPU))
}

/// Writes every byte of `path` (a file, created at `len`, or a block
/// device) with 1 MiB sequential O_DIRECT writes of non-zero data, then
/// fsyncs: reads of holes or of unwritten extents would cost nothing.
fn write_out(path: &Path, len: u64, create: bool) -> Result<(), String> {
    const CHUNK: usize = 1 << 20;
    let err = |e: std::io::Error| format!("writing out {}: {e}", path.display());
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(create)
        .truncate(create)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(err)?;
    let mut raw = vec![0u8; CHUNK + 4096];
    let at = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[at..at + CHUNK];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    let mut done = 0u64;
    while done < len {
        let n = CHUNK.min((len - done) as usize);
        f.write_all(&buf[..n]).map_err(err)?;
        done += n as u64;
    }
    f.sync_all().map_err(err)
}

fn connect(socket: &Path, what: &str, o: &Opts, queues: usize) -> Result<BlkClient, String> {
    let opts = ConnectOptions {
        poll: o.poll,
        ..ConnectOptions::new(queues)
    };
    BlkClient::connect_with(socket, &opts).map_err(|e| format!("{what}: blkio client: {e}"))
}

fn job(kind: IoKind, offsets: Offsets, opts: &Opts, seed: u64) -> IoJob {
    IoJob {
        kind,
        block_size: BS,
        qd: QD,
        duration: Duration::from_secs(opts.secs),
        region: 0..opts.size,
        offsets,
        seed,
    }
}

fn iops(q: &mut BlkQueue, j: &IoJob, what: &str) -> Result<f64, String> {
    run_io(q, j)
        .map(|s| s.iops())
        .map_err(|e| format!("{what}: {e}"))
}

/// Writes the whole device once (256 KiB sequential writes at QD8).
fn fill(q: &mut BlkQueue, size: u64, what: &str) -> Result<(), String> {
    let j = IoJob {
        kind: IoKind::Write,
        block_size: 256 * 1024,
        qd: 8,
        duration: Duration::from_secs(3600),
        region: 0..size,
        offsets: Offsets::Sequential,
        seed: 3,
    };
    let st = run_io(q, &j).map_err(|e| format!("{what} fill: {e}"))?;
    if !st.exhausted {
        return Err(format!("{what} fill did not finish"));
    }
    Ok(())
}

/// Read and write on a device already holding data.
fn read_write(q: &mut BlkQueue, o: &Opts, what: &str) -> Result<(f64, f64), String> {
    let r = iops(q, &job(IoKind::Read, Offsets::Uniform, o, 1), what)?;
    let w = iops(q, &job(IoKind::Write, Offsets::Uniform, o, 2), what)?;
    Ok((r, w))
}

/// Read, then write, on both queues of `c` at once, one client thread per
/// queue; IOPS summed over the queues.
fn read_write_two_queues(c: &mut BlkClient, o: &Opts, what: &str) -> Result<(f64, f64), String> {
    let [q0, q1] = c.queues_mut() else {
        return Err(format!("{what}: two queues expected"));
    };
    let mut both = |kind: IoKind, seed: u64| -> Result<f64, String> {
        let j0 = job(kind, Offsets::Uniform, o, seed);
        let j1 = IoJob {
            seed: seed + 100,
            ..j0.clone()
        };
        let (r0, r1) = std::thread::scope(|s| {
            let t = s.spawn(|| run_io(&mut *q1, &j1));
            let r0 = run_io(&mut *q0, &j0);
            (r0, t.join().expect("queue 1 thread"))
        });
        let err = |e: BlkError| format!("{what}: {e}");
        Ok(r0.map_err(err)?.iops() + r1.map_err(err)?.iops())
    };
    let r = both(IoKind::Read, 1)?;
    let w = both(IoKind::Write, 2)?;
    Ok((r, w))
}

/// A fresh thin device: first writes, fill, then read and overwrite.
fn thin(t: &mut Table, q: &mut BlkQueue, o: &Opts, name: &str) -> Result<(), String> {
    let first = iops(q, &job(IoKind::Write, Offsets::EachBlockOnce, o, 4), name)?;
    t.add(&format!("{name}: first write"), None, Some(first));
    fill(q, o.size, name)?;
    let (r, w) = read_write(q, o, name)?;
    t.add(&format!("{name}: overwrite / read"), Some(r), Some(w));
    Ok(())
}

/// qsd as deployed: iothread, on the server CPU.
fn qsd(dir: &TestDir, image: Image) -> Qsd {
    Qsd::start(dir, QsdOptions::new(image).iothread().pinned(SERVER_CPU))
}

/// qsd on a raw file or device already written out: read and overwrite.
fn qsd_raw(t: &mut Table, dir: &TestDir, o: &Opts, image: &Path, name: &str) {
    let d = qsd(dir, Image::Raw(image.to_path_buf()));
    let mut c = connect(d.socket(), name, o, 1).unwrap_or_else(|e| panic!("{e}"));
    let (r, w) = read_write(c.queue(0), o, name).unwrap_or_else(|e| panic!("{e}"));
    t.add(name, Some(r), Some(w));
}

/// A running vswitchd serving one volume `disk` of pool `bench`.
struct Vswitchd {
    proc: BackendProcess,
    socket: PathBuf,
    control: PathBuf,
    cfg: String,
}

impl Vswitchd {
    /// Starts `bin` on the server CPU with a fresh pool (a new file in
    /// `dir`, or `device`, formatted by the caller) and the volume exported
    /// with `queues` queues, in the config format of `[[pool]]`/`[[pool.volume]]`.
    fn start(
        bin: &Path,
        dir: &TestDir,
        o: &Opts,
        device: Option<&Path>,
        queues: usize,
    ) -> Result<Vswitchd, String> {
        let run_dir = dir.join("ours");
        let _ = fs::remove_dir_all(&run_dir);
        fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        let socket = dir.socket("ours/disk.sock");
        let pool = device.map_or_else(|| run_dir.join("pool.img"), Path::to_path_buf);
        // Thin volume written in full, plus its copies after a snapshot and
        // metadata: twice its size.
        let pool_size = 2 * o.size + (256 << 20);
        let mut cfg = String::new();
        writeln!(cfg, "[daemon]\nrun_dir = \"{}\"\n", run_dir.display()).unwrap();
        writeln!(
            cfg,
            "[[pool]]\nname = \"bench\"\npath = \"{}\"\nsize = \"{pool_size}\"\ncluster_size = \"{}\"",
            pool.display(),
            o.cluster
        )
        .unwrap();
        writeln!(
            cfg,
            "\n[[pool.volume]]\nname = \"disk\"\nsize = \"{}\"\nexport = {{ socket = \"{}\", queues = {queues}, queue_size = 256 }}",
            o.size,
            socket.display()
        )
        .unwrap();
        let cfg_path = run_dir.join("bench.toml");
        fs::write(&cfg_path, &cfg).map_err(|e| e.to_string())?;
        let mut cmd = pinned_command(bin, SERVER_CPU);
        cmd.arg("--config").arg(&cfg_path);
        let what = format!("vswitchd ({})", bin.display());
        let proc = BackendProcess::spawn(
            &what,
            cmd,
            &socket,
            &run_dir.join("vswitchd.log"),
            Duration::from_secs(30),
        )
        .map_err(|e| format!("{e}\nconfig {}:\n{cfg}", cfg_path.display()))?;
        Ok(Vswitchd {
            proc,
            socket,
            control: run_dir.join("control.sock"),
            cfg,
        })
    }

    fn connect(&self, o: &Opts, queues: usize) -> Result<BlkClient, String> {
        let c = connect(&self.socket, "vswitchd export", o, queues)?;
        if c.capacity() != o.size {
            return Err(format!(
                "vswitchd export: capacity {} instead of {}",
                c.capacity(),
                o.size
            ));
        }
        Ok(c)
    }

    /// A snapshot `disk@snap` of the volume, through the control socket.
    fn snapshot(&self) -> Result<(), String> {
        let err = |e: std::io::Error| format!("control socket {}: {e}", self.control.display());
        let mut s = UnixStream::connect(&self.control).map_err(err)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(err)?;
        let req = serde_json::json!({
            "v": 1, "id": 1, "op": "volume.snapshot",
            "args": {"pool": "bench", "source": "disk", "name": "disk@snap"},
        });
        writeln!(s, "{req}").map_err(err)?;
        let mut answer = String::new();
        BufReader::new(&s).read_line(&mut answer).map_err(err)?;
        let a: serde_json::Value =
            serde_json::from_str(&answer).map_err(|e| format!("answer {answer:?}: {e}"))?;
        if a["ok"] != true {
            return Err(format!("volume.snapshot refused: {answer}"));
        }
        Ok(())
    }

    /// `r`, with the daemon's log when it failed or the daemon died.
    fn outcome(mut self, r: Result<(), String>) -> Result<(), String> {
        if let Some(status) = self.proc.try_wait() {
            return Err(format!(
                "vswitchd exited ({status}) during the run; its output:\n{}\nconfig:\n{}",
                self.proc.log_tail(),
                self.cfg
            ));
        }
        r.map_err(|e| format!("{e}\nvswitchd output:\n{}", self.proc.log_tail()))
    }
}

/// Our export of a fresh volume in a fresh pool file: first writes, fill,
/// read and overwrite on one queue, then on two, then copy-on-write after a
/// snapshot.
fn ours_volume(t: &mut Table, bin: &Path, dir: &TestDir, o: &Opts) -> Result<(), String> {
    let d = Vswitchd::start(bin, dir, o, None, 2)?;
    let name = "vswitchd volume";
    let r = (|| {
        let mut c = d.connect(o, 1)?;
        thin(t, c.queue(0), o, name)?;
        drop(c);
        let mut c = d.connect(o, 2)?;
        let (r, w) = read_write_two_queues(&mut c, o, name)?;
        t.add(OURS_2Q, Some(r), Some(w));
        drop(c);
        d.snapshot()?;
        let mut c = d.connect(o, 1)?;
        let cow = job(
            IoKind::Write,
            Offsets::OncePerChunk { chunk: o.cluster },
            o,
            5,
        );
        let w = iops(c.queue(0), &cow, name)?;
        t.add(
            "vswitchd volume: copy-on-write after a snapshot",
            None,
            Some(w),
        );
        Ok(())
    })();
    d.outcome(r)
}

/// Our export of a fresh pool formatted on the RAM device.
fn ours_ram(t: &mut Table, bin: &Path, dir: &TestDir, o: &Opts, dev: &Path) -> Result<(), String> {
    let dev_handle = FileDev::open(dev).map_err(|e| e.to_string())?;
    let opts = PoolOptions {
        cluster_size: o.cluster as u32,
        ..PoolOptions::default()
    };
    Pool::create(dev_handle, &opts)
        .map(drop)
        .map_err(|e| e.to_string())?;
    let d = Vswitchd::start(bin, dir, o, Some(dev), 1)?;
    let r = d
        .connect(o, 1)
        .and_then(|mut c| thin(t, c.queue(0), o, "vswitchd pool on RAM"));
    d.outcome(r)
}

fn ratio(x: Option<f64>, base: Option<f64>) -> String {
    match (x, base) {
        (Some(x), Some(b)) if b > 0.0 => format!("{:.2}", x / b),
        _ => "-".into(),
    }
}

fn kiops(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{:.1}k", v / 1000.0))
}

fn print_table(t: &Table, o: &Opts) {
    let fio = t.row(FIO);
    let raw = t.row(QSD_RAW);
    let med = |s: Option<&Samples>, read: bool| {
        s.and_then(|s| median(if read { &s.read } else { &s.write }))
    };
    println!();
    println!(
        "## vhost-user-blk: 4 KiB random I/O, QD{QD} per queue, {} MiB, {} s per phase, {} rounds",
        o.size >> 20,
        o.secs,
        o.rounds
    );
    println!(
        "pinning: blkio client (this process, all its threads) on CPU {CLIENT_CPU}; \
         fio, qsd (with its iothread) and vswitchd on CPU {SERVER_CPU} (taskset -c {SERVER_CPU})"
    );
    println!(
        "qsd: --object iothread,id=io0, export iothread=io0, aio=io_uring, cache.direct=on; \
         qcow2 preallocation=falloc, cluster {} KiB (= pool cluster)",
        o.cluster >> 10
    );
    println!("median (range over rounds) IOPS; ratios are of medians");
    println!();
    println!(
        "| target | randread | range | /fio | /qsd raw | randwrite | range | /fio | /qsd raw |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, s) in &t.rows {
        let (r, w) = (median(&s.read), median(&s.write));
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            kiops(r),
            range(&s.read),
            ratio(r, med(fio, true)),
            ratio(r, med(raw, true)),
            kiops(w),
            range(&s.write),
            ratio(w, med(fio, false)),
            ratio(w, med(raw, false)),
        );
    }
    let (one, two) = (t.row(OURS_1Q), t.row(OURS_2Q));
    if two.is_some() {
        println!(
            "\n2 queues / 1 queue (vswitchd volume): randread {}, randwrite {}",
            ratio(med(two, true), med(one, true)),
            ratio(med(two, false), med(one, false))
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    pin_this_thread(CLIENT_CPU);
    let ours_flag = args.iter().any(|a| a == "--ours");
    let ours_bin = std::env::var_os("BLK_BENCH_VSWITCHD")
        .map(PathBuf::from)
        .or_else(|| ours_flag.then(|| PathBuf::from(env!("CARGO_BIN_EXE_vswitchd"))));
    let o = Opts {
        size: env_or("BLK_BENCH_SIZE", 1 << 30, parse_size),
        secs: env_or("BLK_BENCH_SECS", 8, |s| s.parse().ok()),
        rounds: env_or("BLK_BENCH_ROUNDS", 3, |s| s.parse().ok().filter(|&n| n > 0)),
        dir: env_or("BLK_BENCH_DIR", PathBuf::from("/var/tmp"), |s| {
            Some(PathBuf::from(s))
        }),
        ours: ours_bin,
        cluster: env_or(
            "BLK_BENCH_CLUSTER",
            u64::from(DEFAULT_CLUSTER_SIZE),
            parse_size,
        ),
        poll: env_or("BLK_BENCH_POLL", false, |s| Some(s == "1")),
        only: std::env::var("BLK_BENCH_ONLY").ok(),
    };
    assert!(
        o.size >= (1 << 20) && o.size.is_multiple_of(1 << 20),
        "BLK_BENCH_SIZE must be a multiple of 1 MiB"
    );
    assert!(
        o.cluster.is_power_of_two() && (4096..=2 << 20).contains(&o.cluster),
        "BLK_BENCH_CLUSTER must be a power of two from 4K to 2M"
    );
    let dir = TestDir::on_disk_in(&o.dir, "blk-bench");
    let mut t = Table::default();
    let mut failures = Vec::new();

    // fio's file, also qsd raw's, written out once: fio keeps a file that
    // already has the size it is given.
    let raw = dir.join("raw.img");
    if o.wants("fio") || o.wants("raw") {
        eprintln!("blk_io: writing out {}...", raw.display());
        write_out(&raw, o.size, true).unwrap_or_else(|e| panic!("{e}"));
    }
    let ram = if o.wants("ram") {
        match RamDisk::new(2 * o.size + (256 << 20)) {
            Ok(ram) => {
                eprintln!(
                    "blk_io: writing out the RAM loop device {}...",
                    ram.dev.display()
                );
                write_out(&ram.dev, ram.size, false).unwrap_or_else(|e| panic!("{e}"));
                Some(ram)
            }
            Err(e) => {
                failures.push(format!("RAM loop device: {e} (needs root and losetup)"));
                None
            }
        }
    } else {
        None
    };

    for round in 1..=o.rounds {
        eprintln!("blk_io: round {round} of {}", o.rounds);
        if o.wants("fio") {
            let r = fio(&raw, o.size, "randread", o.secs);
            let w = fio(&raw, o.size, "randwrite", o.secs);
            t.add(FIO, Some(r), Some(w));
        }
        if o.wants("raw") {
            qsd_raw(&mut t, &dir, &o, &raw, QSD_RAW);
        }
        if o.wants("qcow2") {
            let img = dir.join("disk.qcow2");
            let _ = fs::remove_file(&img);
            create_qcow2(&img, o.size, Some(o.cluster), Some("falloc"));
            let d = qsd(&dir, Image::Qcow2(img.clone()));
            let mut c = connect(d.socket(), "qsd qcow2", &o, 1).unwrap_or_else(|e| panic!("{e}"));
            thin(&mut t, c.queue(0), &o, "qsd qcow2 (falloc)").unwrap_or_else(|e| panic!("{e}"));
            drop(c);
            drop(d);
            let _ = fs::remove_file(&img);
        }
        if o.wants("null") {
            let d = qsd(&dir, Image::Null { size: o.size });
            let name = "qsd null-co (no storage)";
            let mut c = connect(d.socket(), name, &o, 1).unwrap_or_else(|e| panic!("{e}"));
            let (r, w) = read_write(c.queue(0), &o, name).unwrap_or_else(|e| panic!("{e}"));
            t.add(name, Some(r), Some(w));
        }
        if let Some(bin) = &o.ours {
            if let Err(e) = ours_volume(&mut t, bin, &dir, &o) {
                failures.push(format!("round {round}: vswitchd volume: FAILED: {e}"));
            }
        }
        if let Some(ram) = &ram {
            qsd_raw(&mut t, &dir, &o, &ram.dev, "qsd raw on RAM loop device");
            if let Some(bin) = &o.ours {
                if let Err(e) = ours_ram(&mut t, bin, &dir, &o, &ram.dev) {
                    failures.push(format!("round {round}: vswitchd on RAM: FAILED: {e}"));
                }
            }
        }
    }

    print_table(&t, &o);
    if o.ours.is_none() {
        println!(
            "(vswitchd not measured: set BLK_BENCH_VSWITCHD=<vswitchd binary> or pass --ours)"
        );
    }
    for f in &failures {
        println!("{f}");
    }
    // exit() skips destructors: remove the files and the loop device first.
    drop(ram);
    drop(dir);
    if !failures.is_empty() {
        std::process::exit(1);
    }
}

/// A loop device over a file in /dev/shm (RAM), detached and removed on drop.
struct RamDisk {
    file: PathBuf,
    dev: PathBuf,
    size: u64,
}

impl RamDisk {
    fn new(size: u64) -> Result<RamDisk, String> {
        let file = PathBuf::from(format!("/dev/shm/blk-bench-{}.img", std::process::id()));
        let f = fs::File::create(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        f.set_len(size).map_err(|e| e.to_string())?;
        drop(f);
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&file)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            let _ = fs::remove_file(&file);
            return Err(format!("losetup: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(RamDisk { file, dev, size })
    }
}

impl Drop for RamDisk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = fs::remove_file(&self.file);
    }
}
