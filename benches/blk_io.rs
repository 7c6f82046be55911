//! vhost-user-blk speed: 4 KiB random read and write at queue depth 32 on one
//! queue, driven by the libblkio client of `tests/blk_support`, against host
//! fio on the same kind of file.
//!
//! `cargo bench --bench blk_io` (it does nothing without `--bench`, so
//! `cargo test --all-targets` only builds it). Environment:
//! `BLK_BENCH_SIZE` (bytes or "1G", default 1 GiB: every file and volume),
//! `BLK_BENCH_SECS` (per phase, default 8), `BLK_BENCH_DIR` (default
//! /var/tmp; not tmpfs: O_DIRECT), `BLK_BENCH_VSWITCHD` (a vswitchd binary:
//! also measure our export; `--ours` does the same with the workspace's
//! vswitchd), `BLK_BENCH_CLUSTER` (pool cluster size for our export),
//! `BLK_BENCH_ONLY` (comma list of `fio,raw,qcow2,null,ram`: only those phases;
//! our export runs whenever asked for), `BLK_BENCH_POLL=1` (blkio poll
//! queues: the client spins instead of sleeping on the completion fd).
//!
//! Rows: host fio (io_uring, O_DIRECT) on a raw file; qemu-storage-daemon
//! exporting that file (file, aio=io_uring, cache.direct=on); qsd exporting
//! a qcow2 of the same virtual size, first writes (each 4 KiB block of a
//! fresh image once, random order) then, after the whole image was
//! written, overwrite and read; qsd null-co (the per-request cost of the
//! vhost-user path alone); and vswitchd's export of a fresh thin volume,
//! measured like the qcow2. Each figure is printed with its ratio to fio's
//! and to qsd raw's.

use test_kit::blkio as blk_support;

#[path = "fio.rs"]
mod fio;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vblock::dev::FileDev;
use vblock::pool::{Pool, PoolOptions};

use blk_support::qsd::create_qcow2;
use blk_support::*;

const QD: usize = 32;
const BS: usize = 4096;

struct Opts {
    size: u64,
    secs: u64,
    dir: PathBuf,
    ours: Option<PathBuf>,
    cluster: Option<String>,
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

struct Row {
    name: String,
    read: Option<f64>,
    write: Option<f64>,
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

/// fio at this bench's queue depth.
fn fio(path: &Path, size: u64, rw: &str, secs: u64) -> f64 {
    fio::fio_iops(path, size, rw, QD, secs)
}

fn connect(socket: &Path, what: &str, o: &Opts) -> Result<BlkClient, String> {
    let opts = ConnectOptions {
        poll: o.poll,
        ..ConnectOptions::new(1)
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

/// A fresh thin device: first writes, fill, then overwrite and read.
fn thin(rows: &mut Vec<Row>, q: &mut BlkQueue, o: &Opts, name: &str) -> Result<(), String> {
    let first = iops(q, &job(IoKind::Write, Offsets::EachBlockOnce, o, 4), name)?;
    rows.push(Row {
        name: format!("{name}: first write"),
        read: None,
        write: Some(first),
    });
    fill(q, o.size, name)?;
    let (r, w) = read_write(q, o, name)?;
    rows.push(Row {
        name: format!("{name}: overwrite/read"),
        read: Some(r),
        write: Some(w),
    });
    Ok(())
}

fn qsd(dir: &TestDir, opts: QsdOptions) -> Qsd {
    Qsd::start(dir, opts)
}

/// Our daemon's export of a fresh volume, with the config format of
/// `[[pool]]`/`[[pool.volume]]`.
fn ours(
    rows: &mut Vec<Row>,
    bin: &Path,
    dir: &TestDir,
    o: &Opts,
    device: Option<&Path>,
    label: &str,
) -> Result<(), String> {
    let run_dir = dir.join("ours");
    fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
    let socket = dir.socket("ours/disk.sock");
    let pool = device.map_or_else(|| run_dir.join("pool.img"), Path::to_path_buf);
    // Thin volume written in full, plus metadata and copies: twice its size.
    let pool_size = 2 * o.size + (256 << 20);
    let mut cfg = String::new();
    writeln!(cfg, "[daemon]\nrun_dir = \"{}\"\n", run_dir.display()).unwrap();
    writeln!(
        cfg,
        "[[pool]]\nname = \"bench\"\npath = \"{}\"\nsize = \"{pool_size}\"",
        pool.display()
    )
    .unwrap();
    if let Some(c) = &o.cluster {
        writeln!(cfg, "cluster_size = \"{c}\"").unwrap();
    }
    writeln!(
        cfg,
        "\n[[pool.volume]]\nname = \"disk\"\nsize = \"{}\"\nexport = {{ socket = \"{}\", queues = 1, queue_size = 256 }}",
        o.size,
        socket.display()
    )
    .unwrap();
    let cfg_path = run_dir.join("bench.toml");
    fs::write(&cfg_path, &cfg).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(&cfg_path);
    let what = format!("vswitchd ({})", bin.display());
    let mut proc = BackendProcess::spawn(
        &what,
        cmd,
        &socket,
        &run_dir.join("vswitchd.log"),
        Duration::from_secs(30),
    )
    .map_err(|e| format!("{e}\nconfig {}:\n{cfg}", cfg_path.display()))?;
    let mut client = connect(&socket, "vswitchd export", o)?;
    let info = client.info().clone();
    if info.capacity != o.size {
        return Err(format!(
            "vswitchd export: capacity {} instead of {}",
            info.capacity, o.size
        ));
    }
    let r = thin(rows, client.queue(0), o, label);
    drop(client);
    if let Some(status) = proc.try_wait() {
        return Err(format!(
            "vswitchd exited ({status}) during the run; its output:\n{}",
            proc.log_tail()
        ));
    }
    r.map_err(|e| format!("{e}\nvswitchd output:\n{}", proc.log_tail()))
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

fn print_table(rows: &[Row], o: &Opts) {
    let fio = rows.iter().find(|r| r.name.starts_with("host fio"));
    let raw = rows.iter().find(|r| r.name.starts_with("qsd raw"));
    println!();
    println!(
        "## vhost-user-blk: 4 KiB random I/O, QD{QD}, one queue, {} MiB, {} s per phase",
        o.size >> 20,
        o.secs
    );
    println!(
        "{:<34} {:>9} {:>6} {:>8}   {:>9} {:>6} {:>8}",
        "target", "randread", "/fio", "/qsd raw", "randwrite", "/fio", "/qsd raw"
    );
    for r in rows {
        println!(
            "{:<34} {:>9} {:>6} {:>8}   {:>9} {:>6} {:>8}",
            r.name,
            kiops(r.read),
            ratio(r.read, fio.and_then(|x| x.read)),
            ratio(r.read, raw.and_then(|x| x.read)),
            kiops(r.write),
            ratio(r.write, fio.and_then(|x| x.write)),
            ratio(r.write, raw.and_then(|x| x.write)),
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let ours_flag = args.iter().any(|a| a == "--ours");
    let ours_bin = std::env::var_os("BLK_BENCH_VSWITCHD")
        .map(PathBuf::from)
        .or_else(|| ours_flag.then(|| PathBuf::from(env!("CARGO_BIN_EXE_vswitchd"))));
    let o = Opts {
        size: env_or("BLK_BENCH_SIZE", 1 << 30, parse_size),
        secs: env_or("BLK_BENCH_SECS", 8, |s| s.parse().ok()),
        dir: env_or("BLK_BENCH_DIR", PathBuf::from("/var/tmp"), |s| {
            Some(PathBuf::from(s))
        }),
        ours: ours_bin,
        cluster: std::env::var("BLK_BENCH_CLUSTER").ok(),
        poll: env_or("BLK_BENCH_POLL", false, |s| Some(s == "1")),
        only: std::env::var("BLK_BENCH_ONLY").ok(),
    };
    assert!(
        o.size >= (1 << 20) && o.size.is_multiple_of(1 << 20),
        "BLK_BENCH_SIZE must be a multiple of 1 MiB"
    );
    let dir = TestDir::on_disk_in(&o.dir, "blk-bench");
    let mut rows = Vec::new();
    let mut failures = Vec::new();

    // The raw file fio lays out (fully allocated) is the one qsd exports.
    let raw = dir.join("raw.img");
    if o.wants("fio") {
        eprintln!("blk_io: host fio on a raw file...");
        let fw = fio(&raw, o.size, "randwrite", o.secs);
        let fr = fio(&raw, o.size, "randread", o.secs);
        rows.push(Row {
            name: "host fio (io_uring, O_DIRECT)".into(),
            read: Some(fr),
            write: Some(fw),
        });
    }

    if o.wants("raw") {
        eprintln!("blk_io: qemu-storage-daemon on the same raw file...");
        if !raw.exists() {
            fio(&raw, o.size, "randwrite", 1); // lay the file out
        }
        let d = qsd(&dir, QsdOptions::new(Image::Raw(raw.clone())));
        let mut c = connect(d.socket(), "qsd raw", &o).unwrap_or_else(|e| panic!("{e}"));
        let (r, w) = read_write(c.queue(0), &o, "qsd raw").unwrap_or_else(|e| panic!("{e}"));
        rows.push(Row {
            name: "qsd raw file".into(),
            read: Some(r),
            write: Some(w),
        });
    }
    let _ = fs::remove_file(&raw);

    if o.wants("qcow2") {
        eprintln!("blk_io: qemu-storage-daemon on a fresh qcow2...");
        let img = dir.join("disk.qcow2");
        create_qcow2(&img, o.size, None);
        let d = qsd(&dir, QsdOptions::new(Image::Qcow2(img.clone())));
        let mut c = connect(d.socket(), "qsd qcow2", &o).unwrap_or_else(|e| panic!("{e}"));
        thin(&mut rows, c.queue(0), &o, "qsd qcow2").unwrap_or_else(|e| panic!("{e}"));
        drop(c);
        drop(d);
        let _ = fs::remove_file(&img);
    }

    if o.wants("null") {
        eprintln!("blk_io: qemu-storage-daemon null-co...");
        let d = qsd(&dir, QsdOptions::new(Image::Null { size: o.size }));
        let mut c = connect(d.socket(), "qsd null-co", &o).unwrap_or_else(|e| panic!("{e}"));
        let (r, w) = read_write(c.queue(0), &o, "qsd null-co").unwrap_or_else(|e| panic!("{e}"));
        rows.push(Row {
            name: "qsd null-co (no storage)".into(),
            read: Some(r),
            write: Some(w),
        });
    }

    if let Some(bin) = &o.ours {
        eprintln!("blk_io: vswitchd export ({})...", bin.display());
        if let Err(e) = ours(&mut rows, bin, &dir, &o, None, "vswitchd volume") {
            failures.push(format!("vswitchd export: FAILED: {e}"));
        }
    }

    // Per-request overhead with storage out of the way: a loop device over a
    // tmpfs file (RAM; O_DIRECT works on the loop device), served raw by qsd
    // and as a pool by vswitchd, next to qsd null-co above.
    if o.wants("ram") {
        match RamDisk::new(2 * o.size + (256 << 20)) {
            Ok(ram) => {
                eprintln!(
                    "blk_io: qemu-storage-daemon on a RAM loop device ({})...",
                    ram.dev.display()
                );
                let d = qsd(&dir, QsdOptions::new(Image::Raw(ram.dev.clone())));
                let mut c = connect(d.socket(), "qsd ram", &o).unwrap_or_else(|e| panic!("{e}"));
                let (r, w) =
                    read_write(c.queue(0), &o, "qsd ram").unwrap_or_else(|e| panic!("{e}"));
                rows.push(Row {
                    name: "qsd raw on RAM loop device".into(),
                    read: Some(r),
                    write: Some(w),
                });
                drop(c);
                drop(d);
                if let Some(bin) = &o.ours {
                    eprintln!("blk_io: vswitchd pool on the RAM loop device...");
                    let formatted =
                        FileDev::open(&ram.dev)
                            .map_err(|e| e.to_string())
                            .and_then(|dev| {
                                let opts = PoolOptions::default();
                                Pool::create(dev, &opts)
                                    .map(drop)
                                    .map_err(|e| e.to_string())
                            });
                    match formatted.and_then(|()| {
                        ours(
                            &mut rows,
                            bin,
                            &dir,
                            &o,
                            Some(&ram.dev),
                            "vswitchd pool on RAM",
                        )
                    }) {
                        Ok(()) => {}
                        Err(e) => failures.push(format!("vswitchd on RAM: FAILED: {e}")),
                    }
                }
            }
            Err(e) => failures.push(format!("RAM loop device: {e} (needs root and losetup)")),
        }
    }

    print_table(&rows, &o);
    if o.ours.is_none() {
        println!(
            "(vswitchd not measured: set BLK_BENCH_VSWITCHD=<vswitchd binary> or pass --ours)"
        );
    }
    for f in &failures {
        println!("{f}");
    }
    // exit() skips destructors: remove the files first.
    drop(dir);
    if !failures.is_empty() {
        std::process::exit(1);
    }
}

/// A loop device over a file in /dev/shm (RAM), detached and removed on drop.
struct RamDisk {
    file: PathBuf,
    dev: PathBuf,
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
        Ok(RamDisk { file, dev })
    }
}

impl Drop for RamDisk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = fs::remove_file(&self.file);
    }
}
