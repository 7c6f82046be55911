//! Block guests: the test image in block mode (fio on a `vhost-user-blk-pci` disk,
//! driven by `fabric.blk=...` on the kernel command line; the protocol is described at
//! the top of `scripts/build-guest-image.sh`) and the vhost-user-blk backends they attach
//! to, behind [`BlkBackend`]: [`Qsd`] (qemu-storage-daemon, the reference backend) now,
//! `vswitchd`'s device when it lands.
//!
//! Everything fails loudly: a missing qemu-storage-daemon, fio or guest image is a panic
//! naming the fix, never a skip.

use super::{
    checked_binary, net_device_args, tail, wait_timeout, Guest, GuestImage, GuestSpec, TestDir,
    INSTALL_HINT,
};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::dir::{DISK_DIR_ENV, MAX_SOCKET_PATH};
/// The qemu-storage-daemon binary (default `qemu-storage-daemon` on PATH).
pub const QSD_ENV: &str = "FABRIC_QSD";
/// Guest memory of block guests: the initramfs (fio and its libraries, ~85 MB unpacked)
/// lives in it.
pub const BLK_GUEST_MEM_MB: u32 = 256;
pub const MIB: u64 = 1 << 20;

/// qemu-storage-daemon (package qemu-utils, same backports build as qemu-system-x86).
pub fn qsd_binary() -> PathBuf {
    checked_binary(
        Some(QSD_ENV),
        "qemu-storage-daemon",
        &format!("{INSTALL_HINT}; or set {QSD_ENV}"),
    )
}

/// The host's fio (the guest image carries the same binary).
pub fn host_fio() -> PathBuf {
    checked_binary(
        None,
        "fio",
        "install fio (`sudo scripts/install-qemu.sh` or `sudo scripts/install-test-deps.sh`)",
    )
}

/// A fresh directory for one block test under `$VBLOCK_TEST_DIR` (default `/var/tmp`),
/// kept when the test fails (serial consoles, QEMU and backend logs are inside).
pub fn blk_test_dir(prefix: &str) -> TestDir {
    TestDir::on_disk(prefix).keep_on_panic()
}

/// A sparse raw image of `size` bytes (reads as zeroes).
pub fn create_raw_image(path: &Path, size: u64) {
    let f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.set_len(size)
        .unwrap_or_else(|e| panic!("set {} to {size} bytes: {e}", path.display()));
}

/// XORs the byte at `offset` of `path` with 0xff (a one-byte corruption).
pub fn flip_byte(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0xff;
    f.write_all_at(&b, offset).unwrap();
    f.sync_all().unwrap();
}

/// How a backend serves its disk.
#[derive(Clone, Debug)]
pub struct ExportSpec {
    /// Disk size in bytes.
    pub size: u64,
    /// `false`: a read-only disk (virtio-blk `VIRTIO_BLK_F_RO`; guest writes fail).
    pub writable: bool,
    /// Request virtqueues the backend offers (`VHOST_USER_GET_QUEUE_NUM`).
    pub num_queues: u16,
}

/// A vhost-user-blk backend serving one disk on a Unix socket. The scenarios in
/// tests/blk/qemu_blk.rs are generic over it, so they run against qemu-storage-daemon now
/// and against `vswitchd` by changing the type parameter.
pub trait BlkBackend: Sized {
    /// What serves the disk, for messages.
    const NAME: &'static str;
    /// Starts serving a fresh, zeroed disk of `spec.size` bytes called `name` (files and
    /// the socket go under `dir`).
    fn create(dir: &Path, name: &str, spec: &ExportSpec) -> Self;
    /// Stops serving and serves the same disk (same data) again as `spec` says, e.g.
    /// read-only. `spec.size` must be unchanged.
    fn reexport(self, spec: &ExportSpec) -> Self;
    /// The socket a guest's `-chardev socket,path=...` connects to.
    fn socket(&self) -> &Path;
    /// The backend's own log, for failure messages.
    fn log_text(&self) -> String;
}

/// qemu-storage-daemon exporting a raw file over vhost-user-blk:
/// `--blockdev driver=file,aio=io_uring,cache.direct=on --export type=vhost-user-blk`.
/// Killed (and reaped) on drop; its log is printed when the test is failing.
pub struct Qsd {
    child: Option<Child>,
    pub image: PathBuf,
    pub socket: PathBuf,
    pub spec: ExportSpec,
    log: PathBuf,
    dir: PathBuf,
    name: String,
    run: u32,
}

impl Qsd {
    /// Exports `image` (an existing raw file) on `dir/NAME.sock` and waits until the
    /// socket is there.
    pub fn start(dir: &Path, name: &str, image: &Path, spec: &ExportSpec) -> Qsd {
        Self::start_run(dir, name, image, spec, 0)
    }

    fn start_run(dir: &Path, name: &str, image: &Path, spec: &ExportSpec, run: u32) -> Qsd {
        let qsd = qsd_binary();
        let socket = dir.join(format!("{name}.sock"));
        assert!(
            socket.as_os_str().len() <= MAX_SOCKET_PATH,
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes: use a shorter {DISK_DIR_ENV}",
            socket.display()
        );
        let _ = fs::remove_file(&socket);
        let log = dir.join(format!("{name}.qsd{run}.log"));
        let ro = if spec.writable { "" } else { ",read-only=on" };
        // stdout and stderr share one file (one open file description).
        let out = File::create(&log).unwrap();
        let child = Command::new(&qsd)
            .arg("--blockdev")
            .arg(format!(
                "driver=file,filename={},node-name=d0,aio=io_uring,cache.direct=on{ro}",
                image.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={},\
                 writable={},num-queues={}",
                socket.display(),
                if spec.writable { "on" } else { "off" },
                spec.num_queues
            ))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}: {INSTALL_HINT}", qsd.display()));
        let mut q = Qsd {
            child: Some(child),
            image: image.to_path_buf(),
            socket,
            spec: spec.clone(),
            log,
            dir: dir.to_path_buf(),
            name: name.to_string(),
            run,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !q.socket.exists() {
            if let Some(st) = q.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "qemu-storage-daemon exited at start-up ({st}):\n{}",
                    q.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "qemu-storage-daemon socket {} not there after 10 s:\n{}",
                q.socket.display(),
                q.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
        q
    }

    /// SIGTERM (qsd closes the export and the image), then SIGKILL after 10 s.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let st = wait_timeout(&mut child, Duration::from_secs(10)).or_else(|| {
            let _ = child.kill();
            child.wait().ok()
        });
        Some(st.expect("reap qemu-storage-daemon"))
    }
}

impl BlkBackend for Qsd {
    const NAME: &'static str = "qemu-storage-daemon";

    fn create(dir: &Path, name: &str, spec: &ExportSpec) -> Qsd {
        let image = dir.join(format!("{name}.raw"));
        create_raw_image(&image, spec.size);
        Qsd::start(dir, name, &image, spec)
    }

    fn reexport(mut self, spec: &ExportSpec) -> Qsd {
        assert_eq!(spec.size, self.spec.size, "reexport cannot resize the disk");
        self.stop();
        Qsd::start_run(&self.dir, &self.name, &self.image, spec, self.run + 1)
    }

    fn socket(&self) -> &Path {
        &self.socket
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- qemu-storage-daemon {} log ---\n{}",
                self.name,
                tail(&self.log_text(), 40)
            );
        }
    }
}

/// One step of the guest's block workload (`fabric.blk=STEP,...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkStep {
    /// fio randwrite with verify: write the region, read it back and check it.
    Write,
    /// fio `--verify_only` replay: check what an earlier `Write` of the same job left.
    Verify,
    /// fio randread, nothing checked.
    Read,
    /// Expect a read-only disk: `ro` flag set, a rewrite refused, the data unchanged.
    ReadOnly,
    /// First step only: print `FABRIC-INFO blk grow waiting size=BYTES` and wait for
    /// the disk to grow without a reboot; the region may then lie past the old end.
    Grow,
}

impl BlkStep {
    pub fn as_str(self) -> &'static str {
        match self {
            BlkStep::Write => "write",
            BlkStep::Verify => "verify",
            BlkStep::Read => "read",
            BlkStep::ReadOnly => "ro",
            BlkStep::Grow => "grow",
        }
    }
}

/// What fio writes and checks (`fabric.verify=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyKind {
    /// Random data, crc32c and offset in a header per block (fio `--verify=crc32c`).
    Crc32c,
    /// The seed and the block offset repeated (fio `--verify=pattern`): also tells one
    /// seed's data from another's, which crc32c blocks do not.
    Pattern,
}

/// The guest's block workload: steps over one region of the disk.
#[derive(Clone, Debug)]
pub struct BlkJob {
    pub steps: Vec<BlkStep>,
    pub offset: u64,
    pub size: u64,
    /// fio block size in bytes.
    pub bs: u32,
    /// fio iodepth.
    pub qd: u32,
    /// fio jobs, each on `size / jobs` bytes of the region.
    pub jobs: u32,
    pub seed: u64,
    pub verify: VerifyKind,
}

impl BlkJob {
    pub fn new(steps: &[BlkStep], size: u64) -> BlkJob {
        BlkJob {
            steps: steps.to_vec(),
            offset: 0,
            size,
            bs: 4096,
            qd: 8,
            jobs: 1,
            seed: 1,
            verify: VerifyKind::Crc32c,
        }
    }

    /// The same region and data, other steps.
    pub fn with_steps(&self, steps: &[BlkStep]) -> BlkJob {
        BlkJob {
            steps: steps.to_vec(),
            ..self.clone()
        }
    }

    pub fn jobs(mut self, jobs: u32) -> BlkJob {
        self.jobs = jobs;
        self
    }

    pub fn seed(mut self, seed: u64) -> BlkJob {
        self.seed = seed;
        self
    }

    pub fn offset(mut self, offset: u64) -> BlkJob {
        self.offset = offset;
        self
    }

    pub fn verify(mut self, verify: VerifyKind) -> BlkJob {
        self.verify = verify;
        self
    }

    /// The kernel command-line parameters of this job.
    pub fn cmdline(&self) -> String {
        let steps: Vec<&str> = self.steps.iter().map(|s| s.as_str()).collect();
        format!(
            "fabric.blk={} fabric.offset={} fabric.size={} fabric.bs={} fabric.qd={} \
             fabric.jobs={} fabric.seed={} fabric.verify={}",
            steps.join(","),
            self.offset,
            self.size,
            self.bs,
            self.qd,
            self.jobs,
            self.seed,
            match self.verify {
                VerifyKind::Crc32c => "crc32c",
                VerifyKind::Pattern => "pattern",
            }
        )
    }

    /// Does this job's `write` (without the read-back) on a host file with the host's
    /// fio: the same fio binary and job as in the guest, so a guest `verify` accepts it.
    pub fn host_write(&self, file: &Path) {
        let fio = host_fio();
        let slice = self.size / u64::from(self.jobs);
        let mut cmd = Command::new(&fio);
        cmd.arg("--name=fabric")
            .arg(format!("--filename={}", file.display()))
            .args(["--direct=1", "--ioengine=libaio", "--thread"])
            .arg(format!("--iodepth={}", self.qd))
            .arg(format!("--bs={}", self.bs))
            .arg(format!("--offset={}", self.offset))
            .arg(format!("--size={slice}"))
            .arg(format!("--randseed={}", self.seed))
            .args(["--rw=randwrite", "--do_verify=0", "--verify_state_save=0"]);
        if self.jobs > 1 {
            cmd.arg(format!("--numjobs={}", self.jobs))
                .arg(format!("--offset_increment={slice}"));
        }
        match self.verify {
            VerifyKind::Crc32c => cmd.arg("--verify=crc32c"),
            VerifyKind::Pattern => cmd.args([
                "--verify=pattern".to_string(),
                format!("--verify_pattern=0x{:08x}%o", self.seed),
            ]),
        };
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", fio.display()));
        assert!(
            out.status.success(),
            "host fio write on {} failed ({}):\n{}{}",
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The guest's machine: vCPUs, request queues of its disk, memory.
#[derive(Clone, Debug)]
pub struct BlkGuestOpts {
    /// vCPUs. Linux uses min(vCPUs, num_queues) virtqueues.
    pub smp: u32,
    /// `vhost-user-blk-pci,num-queues=`: at most what the backend offers, or QEMU
    /// refuses to start.
    pub num_queues: u16,
    pub mem_mb: u32,
    /// Reconnect to the backend's sockets when they go away (`reconnect-ms`), as a
    /// deployment that restarts its vhost-user daemon configures QEMU.
    pub reconnect: bool,
    /// A NIC too: the guest pings a neighbour in the background while its steps run
    /// (`FABRIC-RESULT blk ping`).
    pub nic: Option<BlkGuestNic>,
}

/// The NIC of a block guest and whom it pings.
#[derive(Clone, Debug)]
pub struct BlkGuestNic {
    pub socket: PathBuf,
    pub mac: String,
    /// `fabric.ip`, e.g. 10.0.0.1/24.
    pub ip: String,
    /// The neighbour pinged.
    pub peer: String,
}

impl Default for BlkGuestOpts {
    fn default() -> Self {
        BlkGuestOpts {
            smp: 1,
            num_queues: 1,
            mem_mb: BLK_GUEST_MEM_MB,
            reconnect: false,
            nic: None,
        }
    }
}

/// QEMU arguments attaching a vhost-user-blk disk on `socket` with `num_queues`.
pub fn blk_device_args(socket: &Path, num_queues: u16, reconnect: bool) -> Vec<String> {
    let reconnect = if reconnect { ",reconnect-ms=200" } else { "" };
    vec![
        "-chardev".into(),
        format!("socket,id=c1,path={}{reconnect}", socket.display()),
        "-device".into(),
        format!("vhost-user-blk-pci,chardev=c1,num-queues={num_queues}"),
    ]
}

/// One `FABRIC-RESULT blk STEP PASS|FAIL key=value...` line.
#[derive(Clone, Debug)]
pub struct StepResult {
    pub step: String,
    pub pass: bool,
    pub fields: HashMap<String, String>,
    pub line: String,
}

impl StepResult {
    fn parse(line: &str) -> Option<StepResult> {
        let rest = &line[line.find("FABRIC-RESULT blk ")? + "FABRIC-RESULT blk ".len()..];
        let mut words = rest.split_whitespace();
        let step = words.next()?.to_string();
        let pass = match words.next()? {
            "PASS" => true,
            "FAIL" => false,
            _ => return None,
        };
        Some(StepResult {
            step,
            pass,
            fields: kv(words),
            line: line.trim_end().to_string(),
        })
    }

    pub fn field(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.line))
    }

    pub fn num(&self, key: &str) -> u64 {
        self.field(key)
            .parse()
            .unwrap_or_else(|e| panic!("{key}= not a number in {:?}: {e}", self.line))
    }
}

fn kv<'a>(words: impl Iterator<Item = &'a str>) -> HashMap<String, String> {
    words
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What a block guest reported, from boot to poweroff.
#[derive(Clone, Debug)]
pub struct BlkReport {
    pub guest: String,
    /// The disk as the guest saw it (`FABRIC-INFO blk vda size=... ro=... queues=...`).
    pub disk: HashMap<String, String>,
    pub steps: Vec<StepResult>,
    /// `FABRIC-RESULT blk done ...`: pass only if every step passed; `vq_irqs=`.
    pub done: StepResult,
    pub serial: String,
    /// QEMU start to exit.
    pub elapsed: Duration,
}

impl BlkReport {
    pub fn step(&self, step: BlkStep) -> &StepResult {
        self.steps
            .iter()
            .find(|s| s.step == step.as_str())
            .unwrap_or_else(|| {
                panic!(
                    "guest {} reported no {} step:\n{}",
                    self.guest,
                    step.as_str(),
                    self.serial
                )
            })
    }

    pub fn disk_field(&self, key: &str) -> &str {
        self.disk
            .get(key)
            .unwrap_or_else(|| panic!("no {key}= in guest {}'s disk line", self.guest))
    }

    /// fio's output (summary and errors) of one step, as the guest printed it.
    pub fn fio_output(&self, step: BlkStep) -> String {
        let prefix = format!("FABRIC-INFO fio[{}] ", step.as_str());
        self.serial
            .lines()
            .filter_map(|l| l.find(&prefix).map(|i| &l[i + prefix.len()..]))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Completion interrupts per request virtqueue.
    pub fn vq_irqs(&self) -> Vec<u64> {
        self.done
            .field("vq_irqs")
            .split(',')
            .filter_map(|n| n.parse().ok())
            .collect()
    }

    /// The step lines, for the test log.
    pub fn summary(&self) -> String {
        let mut s: Vec<&str> = self.steps.iter().map(|r| r.line.as_str()).collect();
        s.push(&self.done.line);
        s.join("\n")
    }

    /// Panics with fio's output and `context` unless every step passed.
    pub fn assert_pass(&self, context: &str) {
        for r in &self.steps {
            if !r.pass {
                let out = match r.step.as_str() {
                    "write" => self.fio_output(BlkStep::Write),
                    "verify" => self.fio_output(BlkStep::Verify),
                    "read" => self.fio_output(BlkStep::Read),
                    _ => tail(&self.serial, 20),
                };
                panic!(
                    "guest {}: step {} failed: {}\n--- guest output of the step ---\n{out}\n{context}",
                    self.guest, r.step, r.line
                );
            }
        }
        assert!(
            self.done.pass,
            "guest {}: {}\n{context}",
            self.guest, self.done.line
        );
    }
}

/// A TCG guest with one vhost-user-blk disk, running a [`BlkJob`]. Killed on drop.
pub struct BlkGuest {
    pub guest: Guest,
    started: Instant,
}

impl BlkGuest {
    pub fn boot(
        qemu: &Path,
        image: &GuestImage,
        dir: &Path,
        name: &str,
        socket: &Path,
        opts: &BlkGuestOpts,
        job: &BlkJob,
    ) -> BlkGuest {
        let mut devices = blk_device_args(socket, opts.num_queues, opts.reconnect);
        let mut params = job.cmdline();
        if let Some(nic) = &opts.nic {
            devices.extend(net_device_args(&nic.socket, &nic.mac, opts.reconnect));
            params = format!(
                "{params} ipv6.disable=1 fabric.ip={} fabric.peer={}",
                nic.ip, nic.peer
            );
        }
        let spec = GuestSpec {
            mem_path: None,
            smp: opts.smp,
            mem_mb: opts.mem_mb,
            device_args: &devices,
            params: &params,
        };
        BlkGuest {
            guest: Guest::boot_with(qemu, image, dir, name, &spec),
            started: Instant::now(),
        }
    }

    /// Waits for the guest's last line (`FABRIC-RESULT blk done`) and for it to power
    /// off, then parses what it printed. Err (with the console tail and QEMU's messages)
    /// on a `FABRIC-ERROR`, an early QEMU exit or a timeout.
    pub fn report(&mut self, timeout: Duration) -> Result<BlkReport, String> {
        self.guest.wait_for("FABRIC-RESULT blk done", timeout)?;
        let st = self.guest.wait_exit(Duration::from_secs(30))?;
        let elapsed = self.started.elapsed();
        let serial = self.guest.serial_text();
        if !st.success() {
            return Err(format!(
                "guest {} QEMU exited with {st} after powering off\n{}",
                self.guest.name,
                self.guest.diagnostics()
            ));
        }
        let disk = serial
            .lines()
            .find_map(|l| l.find("FABRIC-INFO blk ").map(|i| &l[i..]))
            .map(|l| kv(l.split_whitespace()))
            .unwrap_or_default();
        let mut steps: Vec<StepResult> = serial.lines().filter_map(StepResult::parse).collect();
        let done = steps
            .iter()
            .position(|s| s.step == "done")
            .map(|i| steps.remove(i))
            .ok_or_else(|| format!("guest {}: no done line in\n{serial}", self.guest.name))?;
        Ok(BlkReport {
            guest: self.guest.name.clone(),
            disk,
            steps,
            done,
            serial,
            elapsed,
        })
    }

    /// Waits for QEMU to exit by itself (e.g. refusing the device at start-up) and
    /// returns its status and messages.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(ExitStatus, String), String> {
        let st = self.guest.wait_exit(timeout)?;
        Ok((st, self.guest.qemu_log()))
    }
}

/// `vswitchd` serving the disk as a thin volume of a pool (tests/blk/qemu_blk.rs runs the
/// same scenarios as on qemu-storage-daemon). The daemon runs as a process, as in
/// production; stopping it (SIGTERM) makes it print its counters, volume allocation
/// included.
pub struct VswitchdBlk {
    child: Option<Child>,
    dir: PathBuf,
    name: String,
    pub socket: PathBuf,
    pub spec: ExportSpec,
    /// Extra `[[pool.volume]]` tables (snapshots and their exports).
    extra: String,
    run: u32,
}

impl VswitchdBlk {
    fn start(dir: &Path, name: &str, spec: &ExportSpec, extra: &str, run: u32) -> VswitchdBlk {
        let socket = dir.join(format!("{name}.sock"));
        let config = dir.join(format!("fabric{run}.toml"));
        // Room for the volume and its copies after snapshots.
        let pool_size = 3 * spec.size + 64 * MIB;
        fs::write(
            &config,
            format!(
                "[daemon]\nrun_dir = \".\"\n[[pool]]\nname = \"p0\"\npath = \"pool.img\"\nsize = {pool_size}\n\
                 [[pool.volume]]\nname = \"{name}\"\nsize = {}\n\
                 export = {{ socket = \"{name}.sock\", queues = {}, read_only = {} }}\n{extra}",
                spec.size,
                spec.num_queues,
                !spec.writable
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.vswitchd{run}.log"));
        let out = File::create(&log).unwrap();
        let _ = fs::remove_file(&socket);
        let child = Command::new(crate::bins::vswitchd())
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn vswitchd");
        let mut v = VswitchdBlk {
            child: Some(child),
            dir: dir.to_path_buf(),
            name: name.to_string(),
            socket,
            spec: spec.clone(),
            extra: extra.to_string(),
            run,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !v.socket.exists() {
            if let Some(st) = v.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("vswitchd exited at start-up ({st}):\n{}", v.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "vswitchd socket {} not there after 10 s:\n{}",
                v.socket.display(),
                v.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
        v
    }

    /// SIGTERM: the daemon checkpoints its pool, prints its counters and exits 0.
    pub fn stop(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let st = wait_timeout(&mut child, Duration::from_secs(20)).or_else(|| {
                let _ = child.kill();
                child.wait().ok()
            });
            let st = st.expect("reap vswitchd");
            assert!(st.success(), "vswitchd exit: {st}\n{}", self.log_text());
        }
        self.log_text()
    }

    /// Like [`BlkBackend::create`], with more of `fabric.toml` after the pool (e.g. a
    /// `[[switch]]` for guests that have a NIC too).
    pub fn create_with(dir: &Path, name: &str, spec: &ExportSpec, extra: &str) -> VswitchdBlk {
        VswitchdBlk::start(dir, name, spec, extra, 0)
    }

    /// SIGKILL, as a crash or an OOM kill would: no checkpoint, no counters. Then the
    /// daemon starts again on the same config and sockets.
    pub fn kill_and_restart(mut self) -> VswitchdBlk {
        self.kill();
        VswitchdBlk::start(&self.dir, &self.name, &self.spec, &self.extra, self.run + 1)
    }

    /// SIGKILL now, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL vswitchd");
            child.wait().expect("reap vswitchd");
        }
    }

    /// Stops the daemon and starts it again with a read-only snapshot `snap` of the
    /// volume, exported on `<dir>/<snap>.sock` (taken at this start: it holds what was
    /// written before).
    pub fn with_snapshot(mut self, snap: &str) -> VswitchdBlk {
        self.stop();
        let extra = format!(
            "{}[[pool.volume]]\nname = \"{snap}\"\nsnapshot_of = \"{}\"\nexport = {{ socket = \"{snap}.sock\" }}\n",
            self.extra, self.name
        );
        VswitchdBlk::start(&self.dir, &self.name, &self.spec, &extra, self.run + 1)
    }

    /// The daemon's control socket, for `fabricctl --socket`.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// The socket of another export of this daemon.
    pub fn socket_of(&self, volume: &str) -> PathBuf {
        self.dir.join(format!("{volume}.sock"))
    }

    /// `allocated` bytes of `volume` from the daemon's last counters report in the log.
    pub fn allocated(&self, volume: &str) -> Option<u64> {
        let needle = format!(" name={volume} ");
        self.log_text()
            .lines()
            .rfind(|l| l.starts_with("volume pool=") && l.contains(&needle))
            .and_then(|l| kv(l.split_whitespace()).get("allocated")?.parse().ok())
    }
}

impl BlkBackend for VswitchdBlk {
    const NAME: &'static str = "vswitchd";

    fn create(dir: &Path, name: &str, spec: &ExportSpec) -> VswitchdBlk {
        VswitchdBlk::start(dir, name, spec, "", 0)
    }

    fn reexport(mut self, spec: &ExportSpec) -> VswitchdBlk {
        assert_eq!(spec.size, self.spec.size, "reexport cannot resize the disk");
        self.stop();
        VswitchdBlk::start(&self.dir, &self.name, spec, &self.extra, self.run + 1)
    }

    fn socket(&self) -> &Path {
        &self.socket
    }

    fn log_text(&self) -> String {
        // Every run of the daemon appends to its own log; show them all.
        (0..=self.run)
            .map(|r| {
                fs::read_to_string(self.dir.join(format!("{}.vswitchd{r}.log", self.name)))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for VswitchdBlk {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- vswitchd {} log ---\n{}",
                self.name,
                tail(&self.log_text(), 60)
            );
        }
    }
}
