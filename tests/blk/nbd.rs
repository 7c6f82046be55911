//! The NBD server end to end: `qemu-img` imports a sparse qcow2 image into a
//! volume (only its data clusters allocated) and backs up a snapshot to
//! qcow2 (the bytes of the original), `qemu-img map` and `nbdinfo --map` show
//! the snapshot's holes, and a client of the test's own checks what the
//! tools never send: writes to a snapshot, zero writes, malformed
//! negotiation and requests (answered and counted, the daemon serving on),
//! and the one-writer rule between NBD and guests.

use fabric::nbd::wire;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use test_kit::daemon_host::{pool_toml, DaemonHost};
use test_kit::pattern::pattern;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// The pools' cluster size (the default).
const CLUSTER: u64 = 16 * KIB;
const VOLUME: u64 = 64 * MIB;

fn host(tag: &str, nbd: &str, volumes: &str) -> DaemonHost {
    let toml = pool_toml("256M", "", volumes) + nbd;
    DaemonHost::start(tag, &toml)
}

fn nbd_socket(h: &DaemonHost) -> PathBuf {
    h.dir().join("run/nbd.sock")
}

fn uri(h: &DaemonHost, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", nbd_socket(h).display())
}

/// Runs a tool; a missing tool or a failure fails the test loudly.
fn run(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (scripts/install-test-deps.sh installs it)"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn qemu_img(args: &[&str]) -> String {
    run(Command::new("qemu-img").args(args))
}

/// `qemu-img convert` of raw data (a file or an NBD export) to a new qcow2.
fn raw_to_qcow2(raw: &str, qcow2: &Path) {
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw,
        qcow2.to_str().unwrap(),
    ]);
}

/// `qemu-img convert -n` of a qcow2 image into an NBD export.
fn import(qcow2: &Path, export: &str) {
    let image = qcow2.to_str().unwrap();
    qemu_img(&["convert", "-n", "-f", "qcow2", "-O", "raw", image, export]);
}

/// `qemu-img compare` of a raw file and an NBD export: identical, or the
/// test fails.
fn assert_same(raw: &Path, export: &str) {
    qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        raw.to_str().unwrap(),
        export,
    ]);
}

fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap().to_owned()
}

fn allocated(h: &DaemonHost, volume: &str) -> u64 {
    let pool = h.daemon().pool("p0").unwrap();
    let info = pool.lock().unwrap().volume(volume).unwrap();
    info.allocated
}

/// The source image: data at [0, 1 MiB) and [8 MiB, 8 MiB + 64 KiB), zeros
/// elsewhere. Returns the raw file and its qcow2 (sparse: zeros unallocated).
fn source_image(dir: &Path) -> (PathBuf, PathBuf) {
    let mut raw = vec![0u8; VOLUME as usize];
    raw[..MIB as usize].copy_from_slice(&pattern(1, 0, MIB as usize));
    let at = 8 * MIB as usize;
    raw[at..at + 64 * KIB as usize].copy_from_slice(&pattern(2, at as u64, 64 * KIB as usize));
    let raw_path = dir.join("source.raw");
    std::fs::write(&raw_path, &raw).unwrap();
    let qcow2 = dir.join("image.qcow2");
    raw_to_qcow2(raw_path.to_str().unwrap(), &qcow2);
    (raw_path, qcow2)
}

#[test]
fn qemu_img_imports_a_sparse_image_and_backs_up_a_snapshot_with_its_holes() {
    let h = host(
        "nbd-img",
        "[nbd]\ntcp = \"127.0.0.1:0\"\n",
        "[[pool.volume]]\nname = \"vm1-disk\"\nsize = \"64M\"\n",
    );
    let (raw, qcow2) = source_image(h.dir());
    let disk = uri(&h, "vm1-disk");

    // Import: the 68 data clusters are allocated, the zeros are not.
    import(&qcow2, &disk);
    assert_eq!(allocated(&h, "vm1-disk"), MIB + 64 * KIB);
    assert_eq!(allocated(&h, "vm1-disk") / CLUSTER, 68);
    assert_same(&raw, &disk);

    // Snapshot, then change the volume: the backup is the snapshot's.
    h.daemon()
        .runtime()
        .copy_volume("p0", "vm1-disk", "vm1-disk@monday", true)
        .unwrap();
    run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0xab 0 64k", &disk]));
    let backup = h.dir().join("backup.qcow2");
    let snapshot = uri(&h, "vm1-disk@monday");
    raw_to_qcow2(&snapshot, &backup);
    let restored = h.dir().join("backup.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        backup.to_str().unwrap(),
        restored.to_str().unwrap(),
    ]);
    assert_eq!(sha256(&restored), sha256(&raw));

    // The snapshot's map: its two data runs, holes (reading as zeros) between.
    let map = qemu_img(&["map", "--output=json", "-f", "raw", &snapshot]);
    let map: Vec<serde_json::Value> = serde_json::from_str(&map).unwrap();
    let runs: Vec<(u64, u64, bool, bool)> = map
        .iter()
        .map(|e| {
            let n = |k: &str| e[k].as_u64().unwrap();
            let b = |k: &str| e[k].as_bool().unwrap();
            (n("start"), n("length"), b("data"), b("zero"))
        })
        .collect();
    let tail = 8 * MIB + 64 * KIB;
    assert_eq!(
        runs,
        [
            (0, MIB, true, false),
            (MIB, 7 * MIB, false, true),
            (8 * MIB, 64 * KIB, true, false),
            (tail, VOLUME - tail, false, true),
        ]
    );
    let map = run(Command::new("nbdinfo").args(["--map", &snapshot]));
    let rows: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["0", "1048576", "0", "data"],
            vec!["1048576", "7340032", "3", "hole,zero"],
            vec!["8388608", "65536", "0", "data"],
            vec!["8454144", "58654720", "3", "hole,zero"],
        ]
    );

    // The same snapshot over TCP.
    let tcp = h.daemon().nbd().unwrap().tcp_addr().unwrap();
    let over_tcp = format!("nbd://{tcp}/vm1-disk@monday");
    assert_same(&raw, &over_tcp);
    h.check_pool();
}

/// A client of the test's own: fixed newstyle, simple replies.
struct Client(UnixStream);

impl Client {
    fn connect(h: &DaemonHost) -> Client {
        let mut s = UnixStream::connect(nbd_socket(h)).unwrap();
        let mut greeting = [0; 18];
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(greeting, wire::greeting());
        s.write_all(&3u32.to_be_bytes()).unwrap();
        Client(s)
    }

    fn send_option(&mut self, magic: u64, option: u32, data: &[u8]) {
        let mut b = magic.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.0.write_all(&b).unwrap();
    }

    /// One option reply: type and data.
    fn reply(&mut self) -> (u32, Vec<u8>) {
        let mut h = [0; 20];
        self.0.read_exact(&mut h).unwrap();
        assert_eq!(h[..8], wire::OPTION_REPLY_MAGIC.to_be_bytes());
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0; len as usize];
        self.0.read_exact(&mut data).unwrap();
        (kind, data)
    }

    /// Sends an option; its replies up to the final one (ACK or an error).
    fn option(&mut self, option: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
        self.send_option(wire::IHAVEOPT, option, data);
        let mut replies = Vec::new();
        loop {
            let r = self.reply();
            let last = r.0 == wire::REP_ACK || r.0 & (1 << 31) != 0;
            replies.push(r);
            if last {
                return replies;
            }
        }
    }

    fn go_data(name: &str) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        d
    }

    /// NBD_OPT_GO: the export's transmission flags, or the error reply type.
    fn go(&mut self, name: &str) -> Result<u16, u32> {
        let replies = self.option(wire::OPT_GO, &Self::go_data(name));
        let (last, _) = replies.last().unwrap();
        if *last != wire::REP_ACK {
            return Err(*last);
        }
        let export = replies
            .iter()
            .find(|(k, d)| *k == wire::REP_INFO && d[..2] == [0, 0])
            .expect("NBD_INFO_EXPORT");
        Ok(u16::from_be_bytes(export.1[10..12].try_into().unwrap()))
    }

    /// A request with a simple reply: its error and (for a successful READ)
    /// `read` bytes of data.
    fn request(
        &mut self,
        kind: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
        read: usize,
    ) -> (u32, Vec<u8>) {
        self.request_flags(kind, 0, offset, len, payload, read)
    }

    fn request_flags(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
        read: usize,
    ) -> (u32, Vec<u8>) {
        let mut b = wire::REQUEST_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&77u64.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.0.write_all(&b).unwrap();
        let mut h = [0; 16];
        self.0.read_exact(&mut h).unwrap();
        assert_eq!(h[..4], wire::SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(h[8..], 77u64.to_be_bytes());
        let errno = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let mut data = vec![0; if errno == 0 { read } else { 0 }];
        self.0.read_exact(&mut data).unwrap();
        (errno, data)
    }

    /// NBD_CMD_DISC (no reply); returns once the server closed the
    /// connection, after it let go of the volume.
    fn disconnect(mut self) {
        let mut disc = wire::REQUEST_MAGIC.to_be_bytes().to_vec();
        disc.extend_from_slice(&0u16.to_be_bytes());
        disc.extend_from_slice(&wire::CMD_DISC.to_be_bytes());
        disc.extend_from_slice(&[0; 20]);
        self.0.write_all(&disc).unwrap();
        assert!(self.closed());
    }

    /// Whether the server closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0; 1];
        matches!(self.0.read(&mut b), Ok(0) | Err(_))
    }
}

fn stat(
    h: &DaemonHost,
    f: impl Fn(&fabric::nbd::NbdStats) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    f(h.daemon().nbd().unwrap().stats()).load(Ordering::Relaxed)
}

#[test]
fn a_snapshot_refuses_writes_and_zero_writes_leave_holes() {
    let h = host(
        "nbd-ro",
        "[nbd]\n",
        "[[pool.volume]]\nname = \"v\"\nsize = \"4M\"\n",
    );
    let data = pattern(5, 0, CLUSTER as usize);
    let mut c = Client::connect(&h);
    assert_eq!(c.go("v").unwrap() & wire::TFLAG_READ_ONLY, 0);
    assert_eq!(c.request(wire::CMD_WRITE, 0, CLUSTER as u32, &data, 0).0, 0);
    assert_eq!(allocated(&h, "v"), CLUSTER);

    // A zero WRITE and a WRITE_ZEROES over holes allocate nothing; over the
    // mapped cluster a zero WRITE unmaps it.
    let zeros = vec![0u8; 2 * CLUSTER as usize];
    assert_eq!(
        c.request(wire::CMD_WRITE, MIB, 2 * CLUSTER as u32, &zeros, 0)
            .0,
        0
    );
    assert_eq!(
        c.request(wire::CMD_WRITE, MIB + 512, 1024, &zeros[..1024], 0)
            .0,
        0
    );
    assert_eq!(
        c.request(wire::CMD_WRITE_ZEROES, 2 * MIB, MIB as u32, &[], 0)
            .0,
        0
    );
    assert_eq!(allocated(&h, "v"), CLUSTER);
    // NO_HOLE asks for the space: one cluster allocated.
    let (e, _) = c.request_flags(
        wire::CMD_WRITE_ZEROES,
        wire::CMD_FLAG_NO_HOLE,
        3 * MIB,
        CLUSTER as u32,
        &[],
        0,
    );
    assert_eq!(e, 0);
    assert_eq!(allocated(&h, "v"), 2 * CLUSTER);
    assert_eq!(
        c.request(
            wire::CMD_WRITE,
            3 * MIB,
            CLUSTER as u32,
            &zeros[..CLUSTER as usize],
            0
        )
        .0,
        0
    );
    assert_eq!(allocated(&h, "v"), CLUSTER);
    drop(c);

    h.daemon()
        .runtime()
        .copy_volume("p0", "v", "v@1", true)
        .unwrap();
    let mut c = Client::connect(&h);
    assert_ne!(c.go("v@1").unwrap() & wire::TFLAG_READ_ONLY, 0);
    let other = pattern(6, 0, CLUSTER as usize);
    for (kind, payload) in [
        (wire::CMD_WRITE, &other[..]),
        (wire::CMD_TRIM, &[][..]),
        (wire::CMD_WRITE_ZEROES, &[][..]),
    ] {
        let (errno, _) = c.request(kind, 0, CLUSTER as u32, payload, 0);
        assert_eq!(errno, wire::EPERM, "command {kind}");
    }
    // The connection is still in step, and the snapshot unchanged.
    let (errno, read) = c.request(wire::CMD_READ, 0, CLUSTER as u32, &[], CLUSTER as usize);
    assert_eq!(errno, 0);
    assert!(read == data, "the snapshot's data changed");
    assert_eq!(stat(&h, |s| &s.requests_refused), 3);
    assert_eq!(allocated(&h, "v@1"), CLUSTER);
}

#[test]
fn malformed_negotiation_and_requests_are_answered_counted_and_survived() {
    let h = host(
        "nbd-bad",
        "[nbd]\n",
        "[[pool.volume]]\nname = \"v\"\nsize = \"1M\"\n",
    );

    // Options: unknown, truncated GO data, unknown export, LIST with data,
    // meta context before structured replies. Each an error, the
    // negotiation goes on; then a bad option magic closes it.
    let mut c = Client::connect(&h);
    assert_eq!(c.option(99, &[])[0].0, wire::REP_ERR_UNSUP);
    assert_eq!(
        c.option(wire::OPT_GO, &[0, 0, 0, 9, b'v'])[0].0,
        wire::REP_ERR_INVALID
    );
    assert_eq!(c.go("nope"), Err(wire::REP_ERR_UNKNOWN));
    assert_eq!(c.option(wire::OPT_LIST, b"x")[0].0, wire::REP_ERR_INVALID);
    assert_eq!(
        c.option(wire::OPT_SET_META_CONTEXT, &[])[0].0,
        wire::REP_ERR_INVALID
    );
    let listed = c.option(wire::OPT_LIST, &[]);
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], (wire::REP_SERVER, wire::prefixed(1, "v")));
    c.send_option(0x1234, wire::OPT_GO, &[]);
    assert!(c.closed());
    assert_eq!(stat(&h, |s| &s.options_refused), 5);
    assert_eq!(stat(&h, |s| &s.closed_bad_input), 1);

    // Client flags without fixed newstyle; an oversize option.
    let mut s = UnixStream::connect(nbd_socket(&h)).unwrap();
    s.read_exact(&mut [0; 18]).unwrap();
    s.write_all(&0u32.to_be_bytes()).unwrap();
    assert!(Client(s).closed());
    let mut c = Client::connect(&h);
    c.send_option(wire::IHAVEOPT, wire::OPT_GO, &[]);
    let mut big = wire::IHAVEOPT.to_be_bytes().to_vec();
    big.extend_from_slice(&wire::OPT_GO.to_be_bytes());
    big.extend_from_slice(&(wire::MAX_OPTION_DATA + 1).to_be_bytes());
    let mut c2 = Client::connect(&h);
    c2.0.write_all(&big).unwrap();
    assert!(c2.closed());
    assert_eq!(c.reply().0, wire::REP_ERR_INVALID); // the empty GO
    assert_eq!(stat(&h, |s| &s.closed_bad_input), 3);

    // Requests: out of range, oversize, misaligned, unknown command and
    // flag, a write past the end (its payload skipped): errors, in step.
    let mut c = Client::connect(&h);
    c.go("v").unwrap();
    let cases: [(u16, u16, u64, u32, usize, u32); 6] = [
        (wire::CMD_READ, 0, MIB, 512, 0, wire::EINVAL),
        (
            wire::CMD_READ,
            0,
            0,
            wire::MAX_PAYLOAD + 512,
            0,
            wire::EOVERFLOW,
        ),
        (wire::CMD_READ, 0, 100, 512, 0, wire::EINVAL),
        (42, 0, 0, 512, 0, wire::EINVAL),
        (wire::CMD_READ, 1 << 12, 0, 512, 0, wire::EINVAL),
        (wire::CMD_WRITE, 0, MIB, 4096, 4096, wire::ENOSPC),
    ];
    for (kind, flags, offset, len, payload, errno) in cases {
        let payload = vec![1u8; payload];
        let (e, _) = c.request_flags(kind, flags, offset, len, &payload, 0);
        assert_eq!(
            e, errno,
            "command {kind} flags {flags} at {offset} len {len}"
        );
    }
    assert_eq!(stat(&h, |s| &s.requests_refused), 6);
    assert_eq!(
        c.request(wire::CMD_READ, MIB - 512, 512, &[], 512),
        (0, vec![0; 512])
    );
    // A bad request magic closes.
    c.0.write_all(&[0; 28]).unwrap();
    assert!(c.closed());
    assert_eq!(stat(&h, |s| &s.closed_bad_input), 4);

    assert_eq!(
        h.report_line("counters nbd "),
        "counters nbd connections=5 closed_bad_input=4 options_refused=6 requests=1 requests_refused=6"
    );
    // The daemon serves on.
    let info = qemu_img(&["info", "--output=json", &uri(&h, "v")]);
    assert!(info.contains("\"virtual-size\": 1048576"), "{info}");
    assert_eq!(allocated(&h, "v"), 0);
}

#[test]
fn a_writable_volume_has_one_writer_and_snapshots_any_number_of_readers() {
    let h = host(
        "nbd-one",
        "[nbd]\n",
        "[[pool.volume]]\nname = \"guest\"\nsize = \"1M\"\nexport = {}\n\
         [[pool.volume]]\nname = \"free\"\nsize = \"1M\"\n",
    );
    let rt = h.daemon().runtime();
    rt.copy_volume("p0", "guest", "guest@1", true).unwrap();

    // Exported to a guest: refused over NBD; its snapshot is readable twice.
    let mut c = Client::connect(&h);
    assert_eq!(c.go("guest"), Err(wire::REP_ERR_POLICY));
    assert!(c.go("guest@1").is_ok());
    assert!(Client::connect(&h).go("p0/guest@1").is_ok());

    // Open over NBD: a second NBD writer, a guest export and a delete are refused.
    let mut w = Client::connect(&h);
    assert!(w.go("free").is_ok());
    assert_eq!(Client::connect(&h).go("free"), Err(wire::REP_ERR_POLICY));
    let add = serde_json::json!({"pool": "p0", "volume": "free"});
    assert!(fabric::control::ops::dispatch(rt, "export.add", &add).is_err());
    assert!(rt.delete_volume("p0", "free").is_err());

    // Once the client has disconnected, they may.
    w.disconnect();
    let mut again = Client::connect(&h);
    assert!(again.go("free").is_ok());
    again.disconnect();
    fabric::control::ops::dispatch(rt, "export.add", &add).unwrap();
    assert_eq!(Client::connect(&h).go("free"), Err(wire::REP_ERR_POLICY));
}

/// The command lines of the README's NBD example ("Images in and out").
fn readme_nbd_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let section = readme
        .split("### Images in and out")
        .nth(1)
        .expect("the README's Images in and out section");
    let block = section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains("nbd+unix"))
        .expect("a sh block with the NBD commands");
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Every command of the README's NBD example, as written (fabricctl is this
/// build's, the TCP port the one the daemon got), in a directory holding
/// `fabric.toml` with `run_dir = "run"`, pool0 with vm1-disk (holding the
/// image) and vm2-disk: each succeeds, the backup is the image and the
/// import allocated only the image's data clusters.
#[test]
fn the_readme_nbd_commands_run_as_written() {
    let h = DaemonHost::start(
        "nbd-readme",
        "[daemon]\nrun_dir = \"run\"\n[[pool]]\nname = \"pool0\"\npath = \"pool.img\"\n\
         size = \"256M\"\n[[pool.volume]]\nname = \"vm1-disk\"\nsize = \"64M\"\n\
         [[pool.volume]]\nname = \"vm2-disk\"\nsize = \"64M\"\n\
         [nbd]\nsocket = \"run/nbd.sock\"\ntcp = \"127.0.0.1:0\"\n",
    );
    let (raw, qcow2) = source_image(h.dir());
    std::fs::rename(&raw, h.dir().join("image.raw")).unwrap();
    let disk = uri(&h, "vm1-disk");
    import(&qcow2, &disk);
    let tcp = h.daemon().nbd().unwrap().tcp_addr().unwrap().to_string();
    let commands = readme_nbd_commands();
    assert!(commands.len() >= 6, "{commands:?}");
    for line in commands {
        let line = line
            .replacen("fabricctl", env!("CARGO_BIN_EXE_fabricctl"), 1)
            .replace("127.0.0.1:10809", &tcp);
        run(Command::new("sh")
            .args(["-c", &line])
            .current_dir(h.dir())
            .env_remove("FABRIC_CONTROL_SOCKET"));
    }
    let backup = h.dir().join("backup.qcow2");
    let image = h.dir().join("image.raw");
    qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        backup.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    let pool = h.daemon().pool("pool0").unwrap();
    let vm2 = pool.lock().unwrap().volume("vm2-disk").unwrap();
    assert_eq!(vm2.allocated, 68 * CLUSTER);
}
