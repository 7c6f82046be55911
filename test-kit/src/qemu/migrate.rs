//! Live migration of TCG guests: one guest machine that runs in a sequence of QEMU
//! processes ([`MigQemu`], each an incarnation: the first boots it, each later one
//! starts with `-incoming` and receives it with QMP `migrate`).
//!
//! Every incarnation has the same machine (memory, devices, two serial ports), so the
//! migration stream fits; only where the devices attach differs (which daemon's port
//! socket, which socket of the disk's export). Each has a QMP socket ([`Qmp`]) and a
//! command port: the guest's second serial port (ttyS1) is a socket the test writes
//! lines to, which the image's `mig-guest` and `mig-peer` roles read as commands
//! (`scripts/build-guest-image.sh`). The console (ttyS0) goes to
//! `DIR/NAME.serial.log` per incarnation, so each log holds what the guest printed
//! while it ran there.
//!
//! Guest memory is a shared file under /dev/shm per incarnation, so a test can
//! hold the migrated memory against the source's: a destination started paused
//! ([`Incoming::Paused`]) stays stopped after the stream, and both memories
//! are still then (the source's devices stopped at GET_VRING_BASE, the
//! destination's not started). Any page that differs is one a device wrote
//! during the migration without marking it in the dirty log.

use super::blk::blk_device_args;
use super::qmp::{MigrationStats, Qmp};
use super::{net_device_args, Guest, GuestImage, GuestSpec};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The machine every incarnation of a guest has.
#[derive(Clone, Debug)]
pub struct Machine {
    pub mem_mb: u32,
    pub mac: String,
    /// A vhost-user-blk disk (its socket given per incarnation).
    pub disk: bool,
    /// Kernel command line after `console=ttyS0 quiet panic=-1` (`fabric.*`).
    pub params: String,
}

/// Where one incarnation's devices attach.
#[derive(Clone, Debug)]
pub struct Attach {
    /// The vhost-user-net port socket.
    pub net: PathBuf,
    /// The disk export's socket (the main one or its migration socket).
    pub disk: Option<PathBuf>,
}

/// One QEMU process of a guest, with its QMP connection and command port. Killed on
/// drop.
pub struct MigQemu {
    pub guest: Guest,
    pub qmp: Qmp,
    cmd: UnixStream,
    /// The socket this incarnation listens on for the migration stream, if it was
    /// started to receive one.
    pub incoming: Option<PathBuf>,
    /// Started with `-S`: stays paused after an incoming migration.
    paused: bool,
    /// The file holding the guest memory (removed on drop).
    ram: PathBuf,
}

impl Drop for MigQemu {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ram);
    }
}

/// Whether a [`MigQemu`] boots or receives a migration.
#[derive(Clone, Copy, Debug)]
pub enum Incoming<'a> {
    /// Boots the guest.
    No,
    /// Receives a migration on this Unix socket and runs the guest after it.
    Run(&'a Path),
    /// Receives a migration on this Unix socket and stays paused after it
    /// (`-S`), so [`MigQemu::migrate_to`] can compare the memories before it
    /// lets the guest run.
    Paused(&'a Path),
}

/// Tells apart the memory files of the incarnations of one test process.
static RAM_FILES: AtomicU64 = AtomicU64::new(0);

/// The 4 KiB pages (by offset: the guest physical address below 3 GiB) in which
/// two memory files differ, or Err if they cannot be read whole.
pub fn differing_pages(a: &Path, b: &Path) -> std::io::Result<Vec<u64>> {
    const PAGE: usize = 4096;
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Err(std::io::Error::other("memory files of different sizes"));
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let (mut differ, mut offset) = (Vec::new(), 0u64);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(differ);
        }
        fb.read_exact(&mut bb[..n])?;
        for (i, (pa, pb)) in ba[..n].chunks(PAGE).zip(bb[..n].chunks(PAGE)).enumerate() {
            if pa != pb {
                differ.push(offset + (i * PAGE) as u64);
            }
        }
        offset += n as u64;
    }
}

/// How long QEMU may take to create its sockets.
const SOCKET_WAIT: Duration = Duration::from_secs(20);

fn connect_retry(path: &Path, timeout: Duration) -> UnixStream {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot connect to {} within {timeout:?}: {e}",
                    path.display()
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl MigQemu {
    /// Starts QEMU `name` (files `dir/NAME.*`) for `machine` with its devices on
    /// `attach`, booting it or waiting for a migration stream (`incoming`).
    pub fn start(
        qemu: &Path,
        image: &GuestImage,
        dir: &Path,
        name: &str,
        machine: &Machine,
        attach: &Attach,
        incoming: Incoming<'_>,
    ) -> MigQemu {
        let ram = PathBuf::from(format!(
            "/dev/shm/fabric-mig-{}-{}-{name}.ram",
            std::process::id(),
            RAM_FILES.fetch_add(1, Ordering::Relaxed)
        ));
        let qmp_path = dir.join(format!("{name}.qmp"));
        let cmd_path = dir.join(format!("{name}.cmd"));
        let mut args = net_device_args(&attach.net, &machine.mac, false);
        match (&attach.disk, machine.disk) {
            (Some(disk), true) => args.extend(blk_device_args(disk, 1, false)),
            (None, false) => {}
            _ => panic!("{name}: the machine's disk and the attachment's disk socket disagree"),
        }
        args.extend([
            "-chardev".to_string(),
            format!(
                "socket,id=cmd,path={},server=on,wait=off",
                cmd_path.display()
            ),
            // ttyS1: after the console, which `-serial` makes ttyS0.
            "-device".to_string(),
            "isa-serial,chardev=cmd,index=1".to_string(),
            "-qmp".to_string(),
            format!("unix:{},server=on,wait=off", qmp_path.display()),
        ]);
        let (incoming, paused) = match incoming {
            Incoming::No => (None, false),
            Incoming::Run(sock) => (Some(sock), false),
            Incoming::Paused(sock) => (Some(sock), true),
        };
        if let Some(sock) = incoming {
            args.extend(["-incoming".to_string(), format!("unix:{}", sock.display())]);
        }
        if paused {
            args.push("-S".to_string());
        }
        let spec = GuestSpec {
            smp: 1,
            mem_mb: machine.mem_mb,
            mem_path: Some(&ram),
            device_args: &args,
            params: &machine.params,
        };
        let mut guest = Guest::boot_with(qemu, image, dir, name, &spec);
        let qmp = Qmp::connect(&qmp_path, SOCKET_WAIT).unwrap_or_else(|e| {
            let diag = guest.diagnostics();
            guest.kill();
            panic!("{name}: QMP: {e}\n{diag}")
        });
        let cmd = connect_retry(&cmd_path, SOCKET_WAIT);
        MigQemu {
            guest,
            qmp,
            cmd,
            incoming: incoming.map(Path::to_path_buf),
            paused,
            ram,
        }
    }

    /// Sends one command line to the guest (its ttyS1).
    pub fn command(&mut self, word: &str) {
        self.cmd
            .write_all(format!("{word}\n").as_bytes())
            .unwrap_or_else(|e| panic!("{}: command {word}: {e}", self.guest.name));
    }

    /// Migrates this (running) guest into `dest`, which was started with `-incoming`,
    /// and waits for QEMU's figures. A `dest` started paused must hold exactly the
    /// source's memory (Err naming the pages that differ), and is then let run.
    pub fn migrate_to(
        &mut self,
        dest: &mut MigQemu,
        timeout: Duration,
    ) -> Result<MigrationStats, String> {
        let sock = dest
            .incoming
            .as_ref()
            .unwrap_or_else(|| panic!("{} was not started with -incoming", dest.guest.name));
        self.qmp
            .migrate(&format!("unix:{}", sock.display()))
            .map_err(|e| e.to_string())?;
        let stats = self.qmp.wait_migration(timeout)?;
        if dest.paused {
            dest.qmp.wait_status("paused", timeout)?;
            let differ = differing_pages(&self.ram, &dest.ram)
                .map_err(|e| format!("comparing the guest memories: {e}"))?;
            if !differ.is_empty() {
                let first: Vec<String> =
                    differ.iter().take(16).map(|p| format!("{p:#x}")).collect();
                return Err(format!(
                    "{} of the destination's memory pages differ from the source's \
                     (a device wrote them unlogged), first: {}",
                    differ.len(),
                    first.join(" ")
                ));
            }
            dest.qmp
                .execute("cont", serde_json::json!({}))
                .map_err(|e| format!("cont: {e}"))?;
        }
        Ok(stats)
    }

    /// QMP `quit`, then waits for the process to exit (killing it after 10 s).
    pub fn quit(&mut self) {
        let _ = self.qmp.execute("quit", serde_json::json!({}));
        if self.guest.wait_exit(Duration::from_secs(10)).is_err() {
            self.guest.kill();
        }
    }
}
