//! Backend processes: [`Qsd`] runs `qemu-storage-daemon` (qemu-utils) as
//! the reference vhost-user-blk export; [`BackendProcess`] runs any export
//! daemon, waits for its socket and kills + reaps it on drop; [`TestDir`]
//! gives each test its own directory on a filesystem with O_DIRECT.

pub use crate::dir::TestDir;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Program name of the reference backend.
pub const QSD: &str = "qemu-storage-daemon";
const QEMU_IMG: &str = "qemu-img";

/// Numbers the qsd sockets and logs of one process.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A sparse raw image of `size` bytes.
pub fn create_raw(path: &Path, size: u64) {
    let f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.set_len(size)
        .unwrap_or_else(|e| panic!("size {} to {size}: {e}", path.display()));
}

/// A qcow2 image of virtual size `size` (`qemu-img create -f qcow2`),
/// optionally with a given cluster size and `preallocation` mode (`off`,
/// `metadata`, `falloc`, `full`).
pub fn create_qcow2(
    path: &Path,
    size: u64,
    cluster_size: Option<u64>,
    preallocation: Option<&str>,
) {
    let mut cmd = Command::new(QEMU_IMG);
    cmd.args(["create", "-q", "-f", "qcow2"]);
    if let Some(c) = cluster_size {
        cmd.args(["-o", &format!("cluster_size={c}")]);
    }
    if let Some(p) = preallocation {
        cmd.args(["-o", &format!("preallocation={p}")]);
    }
    cmd.arg(path).arg(size.to_string());
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {QEMU_IMG} (Debian package qemu-utils) to create a qcow2 image: {e}")
    });
    assert!(
        out.status.success(),
        "{QEMU_IMG} create -f qcow2 {} {size} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a [`Qsd`] exports.
#[derive(Debug, Clone)]
pub enum Image {
    /// A raw file (`driver=file,aio=io_uring,cache.direct=on`) or block
    /// device (`driver=host_device`, same options).
    Raw(PathBuf),
    /// A qcow2 file on such a file node.
    Qcow2(PathBuf),
    /// `driver=null-co` of `size` bytes: no storage, per-request overhead
    /// only (reads return whatever the buffer held: `read-zeroes=off`).
    Null { size: u64 },
}

#[derive(Debug, Clone)]
pub struct QsdOptions {
    pub image: Image,
    pub num_queues: usize,
    pub writable: bool,
    /// `discard=unmap` on the file node (default `ignore`: discard requests
    /// succeed and change nothing).
    pub discard_unmap: bool,
    /// `logical-block-size` of the export (default 512).
    pub logical_block_size: Option<u64>,
    /// Run the export in an iothread (`--object iothread,id=io0` and
    /// `iothread=io0` on the export), as deployments do; default off (the
    /// main loop serves it).
    pub iothread: bool,
    /// Pin the whole daemon (`taskset -c CPU`); default unpinned.
    pub cpu: Option<usize>,
}

impl QsdOptions {
    pub fn new(image: Image) -> Self {
        QsdOptions {
            image,
            num_queues: 1,
            writable: true,
            discard_unmap: false,
            logical_block_size: None,
            iothread: false,
            cpu: None,
        }
    }

    pub fn iothread(mut self) -> Self {
        self.iothread = true;
        self
    }

    pub fn pinned(mut self, cpu: usize) -> Self {
        self.cpu = Some(cpu);
        self
    }

    pub fn queues(mut self, n: usize) -> Self {
        self.num_queues = n;
        self
    }

    pub fn read_only(mut self) -> Self {
        self.writable = false;
        self
    }

    pub fn discard_unmap(mut self) -> Self {
        self.discard_unmap = true;
        self
    }

    /// The qemu-storage-daemon arguments for this export on `socket`.
    pub fn args(&self, socket: &Path) -> Vec<String> {
        let file_node = |path: &Path, node: &str| {
            let p = path.to_str().expect("image path is UTF-8");
            assert!(!p.contains(','), "image path {p} contains a comma");
            let discard = if self.discard_unmap {
                ",discard=unmap"
            } else {
                ""
            };
            // A block device (e.g. a RAM loop device) needs qsd's host_device driver.
            let driver = match std::fs::metadata(path) {
                Ok(m) if std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()) => {
                    "host_device"
                }
                _ => "file",
            };
            format!(
                "driver={driver},filename={p},node-name={node},aio=io_uring,cache.direct=on{discard}"
            )
        };
        let mut args = Vec::new();
        match &self.image {
            Image::Raw(p) => args.extend(["--blockdev".into(), file_node(p, "d0")]),
            Image::Qcow2(p) => {
                let discard = if self.discard_unmap {
                    ",discard=unmap"
                } else {
                    ""
                };
                args.extend([
                    "--blockdev".into(),
                    file_node(p, "f0"),
                    "--blockdev".into(),
                    format!("driver=qcow2,file=f0,node-name=d0{discard}"),
                ]);
            }
            Image::Null { size } => args.extend([
                "--blockdev".into(),
                format!("driver=null-co,node-name=d0,size={size},read-zeroes=off"),
            ]),
        }
        let sock = socket.to_str().expect("socket path is UTF-8");
        let mut export = format!(
            "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={sock},writable={},num-queues={}",
            if self.writable { "on" } else { "off" },
            self.num_queues
        );
        if let Some(lbs) = self.logical_block_size {
            export.push_str(&format!(",logical-block-size={lbs}"));
        }
        if self.iothread {
            args.extend(["--object".into(), "iothread,id=io0".into()]);
            export.push_str(",iothread=io0");
        }
        args.extend(["--export".into(), export]);
        args
    }
}

/// A running qemu-storage-daemon with one vhost-user-blk export; killed and
/// reaped on drop.
pub struct Qsd {
    pub process: BackendProcess,
    pub options: QsdOptions,
}

impl Qsd {
    /// Starts qsd for `opts` with its socket and log in `dir`; waits (up to
    /// 10 s) for the socket. Panics with the reason (missing program, its
    /// log) when it cannot.
    pub fn start(dir: &TestDir, opts: QsdOptions) -> Qsd {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let socket = dir.socket(&format!("qsd{n}.sock"));
        let log = dir.join(format!("qsd{n}.log"));
        let mut cmd = match opts.cpu {
            Some(cpu) => pinned_command(QSD, cpu),
            None => Command::new(QSD),
        };
        cmd.args(opts.args(&socket));
        match BackendProcess::spawn(QSD, cmd, &socket, &log, Duration::from_secs(10)) {
            Ok(process) => Qsd {
                process,
                options: opts,
            },
            Err(e) => panic!(
                "the reference vhost-user-blk backend could not start: {e}\n\
                 (qemu-storage-daemon comes with Debian's qemu-utils; these tests need it)"
            ),
        }
    }

    pub fn socket(&self) -> &Path {
        self.process.socket()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// `program` pinned to `cpu` with all its threads (`taskset -c CPU program`;
/// taskset execs it, so the pid is the program's).
pub fn pinned_command(program: impl AsRef<std::ffi::OsStr>, cpu: usize) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(cpu.to_string()).arg(program);
    cmd
}

/// A backend daemon serving a vhost-user socket.
pub struct BackendProcess {
    name: String,
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    pid: u32,
}

fn is_socket(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

impl BackendProcess {
    /// Spawns `cmd` (stdout and stderr to `log`) and waits until `socket`
    /// exists. Errors name what went wrong and carry the log's tail.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        socket: &Path,
        log: &Path,
        timeout: Duration,
    ) -> Result<BackendProcess, String> {
        let _ = fs::remove_file(socket);
        let out = File::create(log).map_err(|e| format!("create log {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {name} ({:?}): {e}", cmd.get_program()))?;
        let pid = child.id();
        let mut p = BackendProcess {
            name: name.to_string(),
            child: Some(child),
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
            pid,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if is_socket(socket) {
                return Ok(p);
            }
            if let Some(status) = p.try_wait() {
                return Err(format!(
                    "{name} exited ({status}) before creating {}; its output:\n{}",
                    socket.display(),
                    p.log_tail()
                ));
            }
            if Instant::now() >= deadline {
                p.stop();
                return Err(format!(
                    "{name} did not create {} within {timeout:?}; its output:\n{}",
                    socket.display(),
                    p.log_tail()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!(
                "{} exited ({status}); its output:\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    /// The last 4 KiB of the process's output.
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let cut = s.len().saturating_sub(4096);
        let cut = (cut..s.len())
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(s.len());
        s[cut..].to_string()
    }

    /// SIGTERM, up to 3 s to exit, then SIGKILL; reaps the process.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: signalling our own child, not yet reaped (so the pid is ours).
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_file(&self.socket);
    }
}
