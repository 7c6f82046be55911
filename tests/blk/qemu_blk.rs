//! Real QEMU guests on a vhost-user-blk disk (test tier 4 in ARCHITECTURE.md): a TCG guest
//! with `-device vhost-user-blk-pci` runs fio with `--verify=crc32c` on /dev/vda and
//! reports PASS/FAIL on its serial console (the `fabric.blk` mode of the guest image,
//! see scripts/build-guest-image.sh).
//!
//! The qemu-storage-daemon (qsd) runs here are the harness self-test: they prove the
//! guest image, the fio workloads and the checks against the reference vhost-user-blk
//! backend. The `vswitchd` runs come with vswitchd's vhost-user-blk device: every
//! scenario is a function generic over [`BlkBackend`], so each vswitchd test is the qsd
//! test with the type parameter changed (`write_then_verify_in_next_guest::<Qsd>()` ->
//! `::<VswitchdBlk>()`, once `VswitchdBlk` implements [`BlkBackend`] next to [`Qsd`] in
//! test-kit/src/qemu/blk.rs).
//!
//! | test                                      | guests                                     |
//! |-------------------------------------------|--------------------------------------------|
//! | write_then_verify_in_next_guest           | A writes 64 MiB (2 vCPUs, 2 queues), B     |
//! |                                           | boots on the same disk and verifies only   |
//! | read_only_export_refuses_writes           | W writes 16 MiB; re-exported read-only, R  |
//! |                                           | sees ro=1, a rewrite fails, data verifies  |
//! | device_queues_beyond_backend_are_refused  | QEMU asks 2 queues of a 1-queue backend    |
//! | qsd_verify_catches_a_corrupted_block      | host fio writes, one byte flipped in the   |
//! |                                           | raw file: the guest's verify must fail     |
//! | vswitchd_thin_allocation_and_a_snapshot_  | A writes 32 MiB of a 128 MiB thin volume:  |
//! | as_of_then                                | allocation grows by 32 MiB; a snapshot is  |
//! |                                           | exported; B overwrites the volume; S on    |
//! |                                           | the snapshot finds A's pattern             |
//! | vswitchd_a_guest_sees_its_disk_grow_and_  | G waits on a 32 MiB disk; `fabricctl       |
//! | writes_past_the_old_end                   | volume resize` to 48 MiB; G sees it with   |
//! |                                           | no reboot, writes and verifies past the    |
//! |                                           | old end                                    |
//! | vswitchd_a_running_guest_reads_the_       | A writes 16 MiB; snapshot; overwritten and |
//! | snapshot_after_pause_revert_resume        | shrunk; G waits; export pause, volume      |
//! |                                           | revert (grows it back), resume: G sees the |
//! |                                           | growth and verifies A's pattern (O_DIRECT) |
//!
//! The first three run on both backends (`qsd_*` and `vswitchd_*`).
//!
//! Prerequisites (the tests panic, never skip, when they are missing):
//!
//! ```text
//! sudo scripts/install-qemu.sh                      # qemu-system-x86 + qemu-utils, fio
//! scripts/build-guest-image.sh target/guest-image   # a few seconds, cached
//! cargo test --test qemu_blk
//! ```
//!
//! Environment: `FABRIC_GUEST_IMAGE`, `FABRIC_QEMU` (see tests/net/qemu_guest.rs),
//! `FABRIC_QSD` (the qemu-storage-daemon binary), `VBLOCK_TEST_DIR` (images and sockets;
//! default /var/tmp, not tmpfs: the backend opens images with O_DIRECT). A failing test
//! keeps its directory (serial consoles, QEMU and qsd logs). TCG speed measures the
//! emulator, not the backend: nothing is timed here beyond reporting.

use test_kit::qemu as qemu_support;

use qemu_support::blk::{
    blk_test_dir, flip_byte, BlkBackend, BlkGuest, BlkGuestNic, BlkGuestOpts, BlkJob, BlkReport,
    BlkStep, ExportSpec, Qsd, VerifyKind, VswitchdBlk, MIB,
};
use qemu_support::{
    guest_image, net_device_args, qemu_binary, Guest, GuestImage, GuestSpec, GUEST_MEM_MB,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// Boot plus fio on tens of MiB under TCG, with other guests sharing two cores.
const GUEST_TIMEOUT: Duration = Duration::from_secs(150);

struct Env {
    qemu: PathBuf,
    image: GuestImage,
    t0: Instant,
}

impl Env {
    fn new() -> Env {
        Env {
            qemu: qemu_binary(),
            image: guest_image(),
            t0: Instant::now(),
        }
    }

    /// Boots a block guest on `backend`'s socket, waits for its report, and panics
    /// (with the guest's console and the backend's log) if it did not finish.
    fn run<B: BlkBackend>(
        &self,
        dir: &Path,
        name: &str,
        backend: &B,
        opts: &BlkGuestOpts,
        job: &BlkJob,
    ) -> BlkReport {
        let mut g = BlkGuest::boot(
            &self.qemu,
            &self.image,
            dir,
            name,
            backend.socket(),
            opts,
            job,
        );
        let r = g
            .report(GUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}\n--- {} log ---\n{}", B::NAME, backend.log_text()));
        eprintln!(
            "[{:>5.1?}] guest {name} ({:.1?}, smp={} num-queues={}) on {}: {}",
            self.t0.elapsed(),
            r.elapsed,
            opts.smp,
            opts.num_queues,
            B::NAME,
            r.summary().replace('\n', "\n        ")
        );
        r
    }
}

fn context<B: BlkBackend>(backend: &B) -> String {
    format!("--- {} log ---\n{}", B::NAME, backend.log_text())
}

/// A writable disk of `size` bytes with `num_queues` request queues.
fn writable(size: u64, num_queues: u16) -> ExportSpec {
    ExportSpec {
        size,
        writable: true,
        num_queues,
    }
}

/// fio writes `size` bytes in a pattern that a later guest can verify on its own.
fn pattern_job(steps: &[BlkStep], size: u64, seed: u64) -> BlkJob {
    BlkJob::new(steps, size)
        .seed(seed)
        .verify(VerifyKind::Pattern)
}

/// A one-queue vswitchd disk `d0` of `size` in `dir` on which guest A (one
/// vCPU) wrote and verified `job`: where the vswitchd-only scenarios start.
fn vswitchd_written_by_a(
    env: &Env,
    dir: &Path,
    size: u64,
    job: &BlkJob,
) -> (VswitchdBlk, BlkReport) {
    let backend = VswitchdBlk::create(dir, "d0", &writable(size, 1));
    let a = env.run(dir, "A", &backend, &BlkGuestOpts::default(), job);
    a.assert_pass(&context(&backend));
    (backend, a)
}

/// (1) Guest A writes 64 MiB with fio `--verify=crc32c --do_verify=1` from 2 vCPUs over
/// 2 virtqueues and passes; (2) guest B then boots on the same, unchanged disk (same
/// backend, a new frontend connection) and verifies A's data with `--verify_only`.
fn write_then_verify_in_next_guest<B: BlkBackend>() {
    let env = Env::new();
    let dir = blk_test_dir("qemu-blk-wv");
    let backend = B::create(dir.path(), "d0", &writable(128 * MIB, 2));
    let opts = BlkGuestOpts {
        smp: 2,
        num_queues: 2,
        ..BlkGuestOpts::default()
    };
    let job = BlkJob::new(&[BlkStep::Write], 64 * MIB)
        .jobs(2)
        .seed(0x5eed);

    let a = env.run(dir.path(), "A", &backend, &opts, &job);
    a.assert_pass(&context(&backend));
    assert_eq!(
        a.disk_field("size"),
        (128 * MIB).to_string(),
        "{:?}",
        a.disk
    );
    assert_eq!(a.disk_field("ro"), "0", "writable export seen read-only");
    assert_eq!(
        a.disk_field("queues"),
        "2",
        "guest A should drive 2 virtqueues (2 vCPUs, num-queues=2): {:?}",
        a.disk
    );
    let w = a.step(BlkStep::Write);
    assert_eq!(w.num("write"), 64 * MIB, "{}", w.line);
    assert_eq!(w.num("read"), 64 * MIB, "{}", w.line);
    let irqs = a.vq_irqs();
    assert!(
        irqs.len() == 2 && irqs.iter().all(|&n| n > 0),
        "both request virtqueues should have completed requests, got vq_irqs={irqs:?}"
    );

    let b = env.run(
        dir.path(),
        "B",
        &backend,
        &opts,
        &job.with_steps(&[BlkStep::Verify]),
    );
    b.assert_pass(&format!(
        "guest B could not verify what guest A wrote on the same disk\n{}",
        context(&backend)
    ));
    assert_eq!(b.step(BlkStep::Verify).num("read"), 64 * MIB);
}

/// (3) A read-only export: guest W writes 16 MiB on the writable disk; the disk is then
/// exported again read-only and guest R sees `/sys/block/vda/ro` = 1, has an O_DIRECT
/// rewrite of 4 KiB refused (EPERM) with the data unchanged, and verifies W's data.
fn read_only_export_refuses_writes<B: BlkBackend>() {
    let env = Env::new();
    let dir = blk_test_dir("qemu-blk-ro");
    let mut spec = writable(64 * MIB, 1);
    let backend = B::create(dir.path(), "d0", &spec);
    let opts = BlkGuestOpts::default();
    let job = BlkJob::new(&[BlkStep::Write], 16 * MIB)
        .offset(8 * MIB)
        .seed(77);
    env.run(dir.path(), "W", &backend, &opts, &job)
        .assert_pass(&context(&backend));

    spec.writable = false;
    let backend = backend.reexport(&spec);
    let r = env.run(
        dir.path(),
        "R",
        &backend,
        &opts,
        &job.with_steps(&[BlkStep::ReadOnly, BlkStep::Verify]),
    );
    let ro = r.step(BlkStep::ReadOnly);
    eprintln!("read-only export: {}", ro.line);
    assert_eq!(r.disk_field("ro"), "1", "{:?}", r.disk);
    assert!(
        ro.pass,
        "the guest should see a read-only disk that refuses writes: {}\n{}\n{}",
        ro.line,
        r.serial,
        context(&backend)
    );
    assert_eq!(ro.field("write"), "refused");
    assert_eq!(ro.field("data"), "unchanged");
    r.assert_pass(&context(&backend));
}

/// QEMU asks the backend how many queues it has (`VHOST_USER_GET_QUEUE_NUM`) and refuses
/// a `num-queues` above it at device realize, before the guest boots.
fn device_queues_beyond_backend_are_refused<B: BlkBackend>() {
    let env = Env::new();
    let dir = blk_test_dir("qemu-blk-nq");
    let backend = B::create(dir.path(), "d0", &writable(16 * MIB, 1));
    let opts = BlkGuestOpts {
        num_queues: 2,
        ..BlkGuestOpts::default()
    };
    let mut g = BlkGuest::boot(
        &env.qemu,
        &env.image,
        dir.path(),
        "Q",
        backend.socket(),
        &opts,
        &BlkJob::new(&[BlkStep::Read], MIB),
    );
    let (st, log) = g
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", context(&backend)));
    eprintln!("QEMU with num-queues=2 on a 1-queue backend: {st}: {log}");
    assert!(
        !st.success(),
        "QEMU accepted num-queues=2 on a 1-queue backend"
    );
    assert!(
        log.contains("maximum number of queues supported by the backend is 1"),
        "unexpected QEMU message: {log}"
    );
}

#[test]
fn qsd_write_then_verify_in_next_guest() {
    write_then_verify_in_next_guest::<Qsd>();
}

#[test]
fn qsd_read_only_export_refuses_writes() {
    read_only_export_refuses_writes::<Qsd>();
}

#[test]
fn qsd_device_queues_beyond_backend_are_refused() {
    device_queues_beyond_backend_are_refused::<Qsd>();
}

/// Harness self-test of the checking itself (qsd only: it edits the raw file). The host's
/// fio writes a job's data into the image, one byte of one block is flipped, and the
/// guest's verify of that job must fail at exactly that block: fio in the guest accepts
/// every block verified before it (host and guest fio agree) and catches the corruption.
#[test]
fn qsd_verify_catches_a_corrupted_block() {
    let env = Env::new();
    let dir = blk_test_dir("qemu-blk-bad");
    let image = dir.path().join("d0.raw");
    qemu_support::blk::create_raw_image(&image, 32 * MIB);
    let job = BlkJob::new(&[BlkStep::Verify], 16 * MIB).seed(9);
    job.host_write(&image);
    let bad_block = 5 * MIB;
    flip_byte(&image, bad_block + 1000);
    let backend = Qsd::start(
        dir.path(),
        "d0",
        &image,
        &ExportSpec {
            size: 32 * MIB,
            writable: false,
            num_queues: 1,
        },
    );
    let r = env.run(dir.path(), "V", &backend, &BlkGuestOpts::default(), &job);
    let v = r.step(BlkStep::Verify);
    let out = r.fio_output(BlkStep::Verify);
    assert!(
        !v.pass && !r.done.pass,
        "the guest's verify passed on a corrupted disk: {}\n{out}",
        v.line
    );
    assert_eq!(
        v.field("err"),
        "84",
        "fio should fail with EILSEQ: {}",
        v.line
    );
    let want = format!("verify failed at file /dev/vda offset {bad_block},");
    assert!(
        out.contains(&want),
        "fio should name the corrupted block ({want:?}):\n{out}"
    );
}

// ---- vswitchd: the same scenarios on a thin volume, plus what only a pool has ----

#[test]
fn vswitchd_write_then_verify_in_next_guest() {
    write_then_verify_in_next_guest::<VswitchdBlk>();
}

#[test]
fn vswitchd_read_only_export_refuses_writes() {
    read_only_export_refuses_writes::<VswitchdBlk>();
}

#[test]
fn vswitchd_device_queues_beyond_backend_are_refused() {
    device_queues_beyond_backend_are_refused::<VswitchdBlk>();
}

/// A guest writes 32 MiB (fio, pattern verify) of a 128 MiB thin volume: the volume's
/// allocation grows by what was written, not by its size. The volume is then
/// snapshotted (at a daemon restart) and the snapshot exported read-only; a second
/// guest overwrites the volume with another pattern, and a third guest on the
/// snapshot finds the first pattern, block for block.
#[test]
fn vswitchd_thin_allocation_and_a_snapshot_as_of_then() {
    let env = Env::new();
    let dir = blk_test_dir("qemu-blk-snap");
    let opts = BlkGuestOpts::default();
    let first = pattern_job(&[BlkStep::Write], 32 * MIB, 1).offset(16 * MIB);
    let (backend, _) = vswitchd_written_by_a(&env, dir.path(), 128 * MIB, &first);

    let backend = backend.with_snapshot("snap");
    let allocated = backend.allocated("d0").expect("allocation in the counters");
    // fio writes whole 4 KiB blocks in 16 KiB clusters: at least the region, at most
    // the region plus a cluster of rounding at each end.
    assert!(
        (32 * MIB..=32 * MIB + 32 * 1024).contains(&allocated),
        "volume allocation after 32 MiB of writes: {allocated}\n{}",
        context(&backend)
    );

    let second = first.clone().seed(2);
    env.run(dir.path(), "B", &backend, &opts, &second)
        .assert_pass(&context(&backend));

    let snap = SnapshotView {
        socket: backend.socket_of("snap"),
        inner: &backend,
    };
    let r = env.run(
        dir.path(),
        "S",
        &snap,
        &opts,
        &first.with_steps(&[BlkStep::ReadOnly, BlkStep::Verify]),
    );
    assert_eq!(r.disk_field("ro"), "1", "{:?}", r.disk);
    r.assert_pass(&format!(
        "the snapshot should read as the volume was when it was taken\n{}",
        context(&backend)
    ));
}

/// Online growth: guest G waits for its 32 MiB disk to grow; `fabricctl volume resize`
/// grows the exported volume to 48 MiB while G runs; vswitchd sends QEMU a
/// CONFIG_CHANGE_MSG, QEMU reads the new capacity and tells the guest, which sees it
/// without a reboot and writes (and reads back) a pattern over the 16 MiB past the old
/// end.
#[test]
fn vswitchd_a_guest_sees_its_disk_grow_and_writes_past_the_old_end() {
    let env = Env::new();
    let dir = blk_test_dir("qemu-blk-grow");
    let backend = VswitchdBlk::create(dir.path(), "d0", &writable(32 * MIB, 1));
    let job = pattern_job(&[BlkStep::Grow, BlkStep::Write], 16 * MIB, 7).offset(32 * MIB);
    let mut g = boot_waiting_to_grow(&env, dir.path(), &backend, &job, 32 * MIB);
    fabricctl(&backend, &["volume", "resize", "p0", "d0", "--size", "48M"]);
    let r = g
        .report(GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", context(&backend)));
    eprintln!("guest G: {}", r.summary().replace('\n', "\n        "));
    r.assert_pass(&context(&backend));
    let grow = r.step(BlkStep::Grow);
    assert_eq!((grow.num("from"), grow.num("to")), (32 * MIB, 48 * MIB));
    assert_eq!(r.step(BlkStep::Write).num("write"), 16 * MIB);
}

/// Another export of the same daemon, for `Env::run`.
struct SnapshotView<'a> {
    socket: PathBuf,
    inner: &'a VswitchdBlk,
}

impl BlkBackend for SnapshotView<'_> {
    const NAME: &'static str = "vswitchd (snapshot export)";
    fn create(_: &Path, _: &str, _: &ExportSpec) -> Self {
        unreachable!("a view of a running daemon")
    }
    fn reexport(self, _: &ExportSpec) -> Self {
        unreachable!("a view of a running daemon")
    }
    fn socket(&self) -> &Path {
        &self.socket
    }
    fn log_text(&self) -> String {
        self.inner.log_text()
    }
}

/// Every write a guest saw complete survives the daemon's death. Guest A writes 32 MiB
/// (fio, pattern verify) and powers off; `vswitchd` is then killed with SIGKILL (no
/// checkpoint, no clean shutdown) and started again on the same config; guest B verifies
/// every block. Before the fix the device showed QEMU a write-through disk (so the guest
/// never sent FLUSH) and ran write-back, and B found zeros.
#[test]
fn vswitchd_completed_writes_survive_sigkill() {
    let env = Env::new();
    let dir = blk_test_dir("qemu-blk-kill");
    let job = pattern_job(&[BlkStep::Write], 32 * MIB, 0x6b11).offset(8 * MIB);
    let (backend, a) = vswitchd_written_by_a(&env, dir.path(), 64 * MIB, &job);

    let backend = backend.kill_and_restart();
    let b = env.run(
        dir.path(),
        "B",
        &backend,
        &BlkGuestOpts::default(),
        &job.with_steps(&[BlkStep::Verify]),
    );
    b.assert_pass(&format!(
        "writes guest A saw complete were lost when vswitchd was killed\n{}",
        context(&backend)
    ));
    assert_eq!(b.step(BlkStep::Verify).num("read"), 32 * MIB);
    // Linux shows the mode it runs: write back, from the writeback byte QEMU read
    // before negotiation, so the guest sends FLUSH.
    assert_eq!(a.disk_field("cache"), "write_back", "{:?}", a.disk);
}

/// A switch for the restart test: the writing guest's NIC and its neighbour's.
const RESTART_SWITCH: &str = r#"
[[switch]]
name = "br0"
[[switch.port]]
name = "w"
type = "vhost-user"
[[switch.port]]
name = "n"
type = "vhost-user"
"#;

/// `vswitchd` is killed with SIGKILL and restarted three times under a guest that is
/// writing to its disk and pinging a neighbour guest: QEMU reconnects both devices
/// (`reconnect-ms`), the new daemon resubmits what the old one left in flight
/// (inflight region) and resumes the ring after the last chain popped, the same config
/// brings the ports and the export back on the same sockets, and the guest sees
/// nothing: fio's write-and-verify passes, a second verify of the whole region passes,
/// its kernel logs no I/O error, and its pings are answered again at the end.
#[test]
fn vswitchd_restarts_under_a_writing_guest_without_errors() {
    let env = Env::new();
    let dir = blk_test_dir("qemu-blk-restart");
    let mut backend =
        VswitchdBlk::create_with(dir.path(), "d0", &writable(256 * MIB, 2), RESTART_SWITCH);
    let neighbour_devices = net_device_args(&dir.path().join("n.sock"), "52:54:00:00:00:0b", true);
    let neighbour_params = "ipv6.disable=1 fabric.ip=10.0.0.2/24 fabric.role=serve";
    let mut neighbour = Guest::boot_with(
        &env.qemu,
        &env.image,
        dir.path(),
        "N",
        &GuestSpec {
            mem_path: None,
            smp: 1,
            mem_mb: GUEST_MEM_MB,
            device_args: &neighbour_devices,
            params: neighbour_params,
        },
    );
    neighbour
        .wait_for("FABRIC-RESULT serve", GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", context(&backend)));
    let opts = BlkGuestOpts {
        smp: 2,
        num_queues: 2,
        reconnect: true,
        nic: Some(BlkGuestNic {
            socket: dir.path().join("w.sock"),
            mac: "52:54:00:00:00:0a".into(),
            ip: "10.0.0.1/24".into(),
            peer: "10.0.0.2".into(),
        }),
        ..BlkGuestOpts::default()
    };
    let mut job = pattern_job(&[BlkStep::Write, BlkStep::Verify], 192 * MIB, 0x7e57).jobs(2);
    job.qd = 16;
    let mut g = BlkGuest::boot(
        &env.qemu,
        &env.image,
        dir.path(),
        "W",
        backend.socket(),
        &opts,
        &job,
    );
    g.guest
        .wait_for("FABRIC-INFO fio[write] fio", GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", context(&backend)));
    for round in 1..=3 {
        thread::sleep(Duration::from_millis(1500));
        eprintln!(
            "[{:>5.1?}] SIGKILL vswitchd, round {round}",
            env.t0.elapsed()
        );
        backend = backend.kill_and_restart();
    }
    let r = g
        .report(GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", context(&backend)));
    eprintln!("guest W on vswitchd: {}", r.summary());
    let log = backend.log_text();
    r.assert_pass(&format!(
        "the guest's I/O failed across daemon restarts\n{}",
        context(&backend)
    ));
    for bad in ["I/O error", "blk_update_request", "Buffer I/O"] {
        assert!(
            !r.serial.contains(bad),
            "guest kernel complained ({bad}):\n{}",
            r.serial
        );
    }
    assert_eq!(r.step(BlkStep::Write).num("write"), 192 * MIB);
    assert_eq!(r.step(BlkStep::Verify).num("read"), 192 * MIB);
    let ping = r
        .serial
        .lines()
        .find_map(|l| l.find("FABRIC-RESULT blk ping ").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no ping result from the guest:\n{}", r.serial));
    eprintln!("guest W pinging its neighbour across the restarts: {ping}");
    assert!(
        ping.ends_with("tail=8/8"),
        "the neighbour did not answer the guest's last 8 pings after the restarts: {ping}\n{}",
        neighbour.diagnostics()
    );
    neighbour.kill();
    let resubmitted: u64 = log
        .lines()
        .filter_map(|l| l.split("resubmitting ").nth(1))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    eprintln!("requests resubmitted after the restarts: {resubmitted}");
    assert!(
        resubmitted > 0,
        "three kills under I/O at queue depth 16 left nothing in flight?\n{log}"
    );
}

/// Guest G booted on `backend` with `job` (whose first step is `grow`),
/// waiting for its disk of `size` bytes to grow.
fn boot_waiting_to_grow(
    env: &Env,
    dir: &Path,
    backend: &VswitchdBlk,
    job: &BlkJob,
    size: u64,
) -> BlkGuest {
    let mut g = BlkGuest::boot(
        &env.qemu,
        &env.image,
        dir,
        "G",
        backend.socket(),
        &BlkGuestOpts::default(),
        job,
    );
    let waiting = g
        .guest
        .wait_for("FABRIC-INFO blk grow waiting", GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", context(backend)));
    assert!(waiting.ends_with(&format!("size={size}")), "{waiting}");
    g
}

/// Runs fabricctl on `backend`'s control socket; panics unless it succeeds.
fn fabricctl(backend: &VswitchdBlk, args: &[&str]) -> String {
    let out = Command::new(test_kit::bins::fabricctl())
        .arg("--socket")
        .arg(backend.control_socket())
        .args(args)
        .output()
        .expect("run fabricctl");
    assert!(
        out.status.success(),
        "fabricctl {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        context(backend)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Requests waiting for space in pool p0 (`pool list`).
fn paused(backend: &VswitchdBlk) -> u64 {
    let list: serde_json::Value =
        serde_json::from_str(&fabricctl(backend, &["--json", "pool", "list"])).unwrap();
    list[0]["paused"].as_u64().expect("paused")
}

/// A full pool with `on_full = "pause"` under a Linux guest: its fio write
/// stalls (the first write that needs a cluster waits in vswitchd, counted
/// `paused`) for longer than the block layer's 30 s request timeout, without
/// an error; deleting a snapshot frees space, the write completes, fio's
/// verify passes and the guest's kernel logs no I/O error.
#[test]
fn vswitchd_a_guest_write_waits_in_a_full_pool_and_resumes_when_space_is_freed() {
    use test_kit::blkio::BlkClient;
    let env = Env::new();
    let dir = blk_test_dir("qemu-blk-full");
    // The pool holds 3 x 32 MiB + 64 MiB; `filler` (128 MiB) written whole,
    // snapshotted and written again until a write fails fills it.
    let backend = VswitchdBlk::create_with(
        dir.path(),
        "d0",
        &writable(32 * MIB, 1),
        "[[pool.volume]]\nname = \"filler\"\nsize = \"128M\"\nexport = { socket = \"filler.sock\" }\n",
    );
    let mut c = BlkClient::connect(&backend.socket_of("filler"), 1).unwrap();
    let chunk = vec![0x3c; MIB as usize];
    for i in 0..128 {
        c.queue(0).write(i * MIB, &chunk).unwrap();
    }
    fabricctl(
        &backend,
        &["volume", "snapshot", "p0", "filler", "filler@s"],
    );
    let mut rewritten = 0;
    while c.queue(0).write(rewritten * MIB, &chunk).is_ok() {
        rewritten += 1;
        assert!(rewritten < 128, "the pool never filled");
    }
    drop(c);
    fabricctl(&backend, &["pool", "set", "p0", "--on-full", "pause"]);

    let job = pattern_job(&[BlkStep::Write, BlkStep::Verify], 16 * MIB, 0xf011);
    let mut g = BlkGuest::boot(
        &env.qemu,
        &env.image,
        dir.path(),
        "F",
        backend.socket(),
        &BlkGuestOpts::default(),
        &job,
    );
    g.guest
        .wait_for("FABRIC-INFO fio[write] fio", GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", context(&backend)));
    let deadline = Instant::now() + Duration::from_secs(60);
    while paused(&backend) == 0 {
        assert!(
            Instant::now() < deadline,
            "no guest write waits for space\n{}",
            context(&backend)
        );
        thread::sleep(Duration::from_millis(200));
    }
    // Past the block layer's 30 s request timeout: still waiting, no error.
    thread::sleep(Duration::from_secs(35));
    assert!(paused(&backend) > 0);
    let serial = g.guest.serial_text();
    assert!(
        !serial.contains("FABRIC-RESULT blk done") && !serial.contains("I/O error"),
        "{serial}"
    );
    eprintln!(
        "[{:>5.1?}] guest F's write waited 35 s; deleting filler@s",
        env.t0.elapsed()
    );
    fabricctl(&backend, &["volume", "delete", "p0", "filler@s"]);
    let r = g
        .report(GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", context(&backend)));
    eprintln!("guest F: {}", r.summary().replace('\n', "\n        "));
    r.assert_pass(&context(&backend));
    for bad in ["I/O error", "blk_update_request", "Buffer I/O"] {
        assert!(
            !r.serial.contains(bad),
            "guest kernel complained ({bad}):\n{}",
            r.serial
        );
    }
    assert_eq!(r.step(BlkStep::Write).num("write"), 16 * MIB);
    assert_eq!(r.step(BlkStep::Verify).num("read"), 16 * MIB);
    assert_eq!(paused(&backend), 0);
    assert!(backend
        .log_text()
        .contains("pool p0: out of space: requests that need a new cluster wait"));
}

/// Revert under a running guest: A writes a pattern over the first 16 MiB
/// of a 48 MiB disk, the disk is snapshotted, then overwritten from the host
/// (libblkio) and shrunk to 32 MiB. Guest G boots on it and waits for its
/// disk to grow; meanwhile `export pause`, `volume revert` to the 48 MiB
/// snapshot (which grows the disk: the guest is told as for a resize) and
/// `export resume`. G sees the new size with no reboot and then reads A's
/// pattern with O_DIRECT: what the device promises after a resume. (What
/// the guest had cached before is not promised: see the README.)
#[test]
fn vswitchd_a_running_guest_reads_the_snapshot_after_pause_revert_resume() {
    let env = Env::new();
    let dir = blk_test_dir("qemu-blk-revert");
    let first = pattern_job(&[BlkStep::Write], 16 * MIB, 11);
    let (backend, _) = vswitchd_written_by_a(&env, dir.path(), 48 * MIB, &first);
    fabricctl(&backend, &["volume", "snapshot", "p0", "d0", "snap"]);
    {
        let mut c = test_kit::blkio::client::BlkClient::connect(backend.socket(), 1)
            .unwrap_or_else(|e| panic!("libblkio: {e}\n{}", context(&backend)));
        c.queue(0)
            .write_pattern(99, 0, (16 * MIB) as usize)
            .expect("overwrite");
        c.queue(0).flush().expect("flush");
    }
    let socket = backend.socket().display().to_string();
    fabricctl(&backend, &["export", "remove", "p0", "d0"]);
    fabricctl(
        &backend,
        &["volume", "resize", "p0", "d0", "--size", "32M", "--force"],
    );
    fabricctl(
        &backend,
        &["export", "add", "p0", "d0", "--socket", &socket],
    );

    let job = first.with_steps(&[BlkStep::Grow, BlkStep::Verify]);
    let mut g = boot_waiting_to_grow(&env, dir.path(), &backend, &job, 32 * MIB);
    fabricctl(&backend, &["export", "pause", "p0", "d0"]);
    fabricctl(&backend, &["volume", "revert", "p0", "d0", "snap"]);
    fabricctl(&backend, &["export", "resume", "p0", "d0"]);
    let r = g
        .report(GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", context(&backend)));
    eprintln!("guest G: {}", r.summary().replace('\n', "\n        "));
    r.assert_pass(&format!(
        "the running guest should read the snapshot after the revert\n{}",
        context(&backend)
    ));
    let grow = r.step(BlkStep::Grow);
    assert_eq!((grow.num("from"), grow.num("to")), (32 * MIB, 48 * MIB));
}
