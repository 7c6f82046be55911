//! Network-namespace harness: kernel network stacks as test peers.
//!
//! Use from an integration test with `mod netns_support;`. Everything here needs root
//! (`ip netns add`, `setns(2)`, AF_PACKET sockets) and fails loudly (panics) without it
//! or without the tools (`ip` from iproute2, `ping` from iputils-ping, `ethtool` for
//! [`Netns::offloads_off`]; all installed by `scripts/install-test-deps.sh`). Nothing
//! skips.
//!
//! - [`Netns`]: a uniquely named namespace (`fab-<prefix>-<pid>-<n>`, at most 15
//!   characters, so it can double as an interface name) with `lo` up; deleted on drop
//!   (every process left in it killed first, every link in it deleted), also when the
//!   test panics. `run`/`sh` (via `ip netns exec`), `spawn` ([`ChildGuard`]), `ip`
//!   (`ip -n NAME ...`), `addr`, `up`, `mtu`, `offloads_off`, `vxlan_device`, `bridge`,
//!   `enslave`.
//! - [`veth_pair`]: a veth pair with each end in a namespace or the host ([`HOST`]),
//!   removed on drop; [`move_link`]: an existing interface (a daemon's TAP) into a
//!   namespace.
//! - [`in_netns`]: runs a closure on a thread that has `setns(CLONE_NEWNET)` into the
//!   namespace (network namespaces are per thread): sockets it creates live there, and
//!   stay there when handed back to the calling thread.
//! - [`traffic`]: [`ping`] (iputils `ping`, its summary parsed) and [`tcp_transfer`]
//!   (std sockets created through [`in_netns`], content checked).
//! - [`capture`]: [`Capture`]/[`capture()`], raw frames from an interface through an
//!   AF_PACKET socket opened inside the namespace, and frame parsers down to VXLAN.
//! - [`vnet_tap`]: [`VnetTap`], a TAP device in a namespace read and written with
//!   the 12-byte virtio-net header and chosen `TUNSETOFFLOAD` offloads.
//!
//! Leftovers of a crashed run (namespaces `fab-*-<pid>-<n>` and host links whose alias
//! is `fabns:<pid>`, for a process that is gone) are removed before the first
//! namespace or veth pair of a process is made, and by [`sweep_stale`].

pub mod capture;
pub mod traffic;
pub mod vnet_tap;

pub use capture::{capture, Capture, Frame};
pub use traffic::{ping, tcp_transfer};
pub use vnet_tap::VnetTap;
// The harness hands out and runs processes through the kit's one child guard.
pub use crate::proc::{output_timeout, ChildGuard};

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

/// Where `ip netns add` puts its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";
/// Every namespace this harness makes starts with this.
pub const NS_PREFIX: &str = "fab-";
/// Alias (`ip link set X alias ...`) of every host-side link this harness makes,
/// followed by the owning process id: how a later run finds a crashed run's links.
pub const ALIAS_TAG: &str = "fabns:";
/// Longest interface name (IFNAMSIZ less the NUL); namespace names keep to it too.
pub const IFNAME_MAX: usize = 15;
/// How long `run`, `sh` and `ip` wait for a command before killing it and panicking.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) const INSTALL_HINT: &str =
    "run `sudo scripts/install-test-deps.sh` (installs iproute2, iputils-ping and ethtool)";

/// Namespaces of this process that are alive; creation and sweeping hold the lock,
/// so a sweep never takes one of ours for a leftover (and `ip netns add`, racy when
/// it first sets up /run/netns, runs one at a time in this process).
static LIVE: Mutex<Option<HashSet<String>>> = Mutex::new(None);
static SWEEP_ONCE: Once = Once::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

fn live() -> std::sync::MutexGuard<'static, Option<HashSet<String>>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Panics unless we are root: namespaces, setns and packet sockets all need it.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the netns harness needs root (ip netns, setns(2), AF_PACKET); running as uid {euid}"
    );
}

/// The path of `tool` on PATH; panics with the install hint when it is missing.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    crate::proc::find_on_path(tool).unwrap_or_else(|| {
        panic!("`{tool}` not found on PATH (Debian package {package}): {INSTALL_HINT}")
    })
}

fn ip_binary() -> PathBuf {
    static IP: Mutex<Option<PathBuf>> = Mutex::new(None);
    IP.lock()
        .unwrap()
        .get_or_insert_with(|| require_tool("ip", "iproute2"))
        .clone()
}

/// Panics with the command line, status and stderr unless `out` succeeded; returns
/// its stdout.
pub fn check(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "`{what}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim_end(),
        String::from_utf8_lossy(&out.stdout).trim_end()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip ARGS` in the host namespace; the raw output.
pub fn ip_raw(args: &[&str]) -> Output {
    let mut cmd = Command::new(ip_binary());
    cmd.args(args);
    output_timeout(cmd, CMD_TIMEOUT)
}

/// `ip ARGS` in the host namespace; panics on failure, returns stdout.
pub fn host_ip(args: &[&str]) -> String {
    check(&format!("ip {}", args.join(" ")), ip_raw(args))
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `fab-<prefix>-<pid>-<n>` -> pid.
fn owner_pid(ns_name: &str) -> Option<u32> {
    let rest = ns_name.strip_prefix(NS_PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let n = parts.next()?;
    let pid = parts.next()?;
    let prefix = parts.next()?;
    if prefix.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Names of every namespace in /run/netns.
pub fn netns_names() -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(NETNS_DIR) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Names of the links of the host namespace (as `ip -o link show` lists them).
pub fn host_links() -> Vec<String> {
    parse_link_names(&host_ip(&["-o", "link", "show"]))
}

/// Link names from `ip -o link show` output ("7: veth0@if6: <...> ...").
pub(crate) fn parse_link_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?;
            let name = name.split('@').next()?;
            Some(name.trim().to_string())
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// Host links carrying our alias tag, with the owning pid.
fn tagged_host_links() -> Vec<(String, u32)> {
    let Ok(rd) = fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let alias = fs::read_to_string(e.path().join("ifalias")).ok()?;
            let pid = alias.trim().strip_prefix(ALIAS_TAG)?.parse().ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), pid))
        })
        .collect()
}

/// Host links this process made that still exist (for "nothing left" checks).
pub fn own_host_links() -> Vec<String> {
    let me = std::process::id();
    tagged_host_links()
        .into_iter()
        .filter(|(_, pid)| *pid == me)
        .map(|(n, _)| n)
        .collect()
}

/// Namespaces of this process that still exist in /run/netns.
pub fn own_netns() -> Vec<String> {
    let me = std::process::id();
    netns_names()
        .into_iter()
        .filter(|n| owner_pid(n) == Some(me))
        .collect()
}

/// Removes leftovers of processes that are gone: namespaces named
/// `fab-<prefix>-<pid>-<n>` and host links aliased `fabns:<pid>`. Runs by itself
/// before the first namespace or veth pair of a process (then the process's own pid
/// counts as gone too: a crashed run may have had it); call it to sweep again.
pub fn sweep_stale() {
    sweep(false)
}

fn sweep_once() {
    SWEEP_ONCE.call_once(|| sweep(true));
}

fn sweep(own_is_stale: bool) {
    require_root();
    let me = std::process::id();
    let guard = live();
    let ours = |name: &str| guard.as_ref().is_some_and(|s| s.contains(name));
    for name in netns_names() {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        let stale = if pid == me {
            own_is_stale && !ours(&name)
        } else {
            !pid_alive(pid)
        };
        if stale {
            eprintln!("netns harness: removing leftover namespace {name}");
            destroy_netns(&name);
        }
    }
    for (link, pid) in tagged_host_links() {
        let stale = if pid == me {
            own_is_stale
        } else {
            !pid_alive(pid)
        };
        if stale {
            eprintln!("netns harness: removing leftover host link {link}");
            let _ = ip_raw(&["link", "del", &link]);
        }
    }
    drop(guard);
}

/// Pids of the processes in namespace `name` (`ip netns pids`), never our own.
fn netns_pids(name: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let out = ip_raw(&["netns", "pids", name]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| p != me)
        .collect()
}

/// Kills every process in the namespace, deletes every link in it (so veth peers in
/// other namespaces go at once, not when the kernel gets round to the namespace) and
/// deletes it. Never panics (it runs in Drop); reports trouble on stderr.
fn destroy_netns(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = netns_pids(name);
        if pids.is_empty() {
            break;
        }
        for p in &pids {
            // SAFETY: kill(2) on a pid that `ip netns pids` reported; not our own.
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        if Instant::now() >= deadline {
            eprintln!("netns harness: processes {pids:?} in {name} survive SIGKILL");
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let links = ip_raw(&["-n", name, "-o", "link", "show"]);
    for link in parse_link_names(&String::from_utf8_lossy(&links.stdout)) {
        if link != "lo" {
            // Some kinds (tun) refuse `ip link del`: they go with the namespace.
            let _ = ip_raw(&["-n", name, "link", "del", &link]);
        }
    }
    let out = ip_raw(&["netns", "del", name]);
    if !out.status.success() && Path::new(NETNS_DIR).join(name).exists() {
        eprintln!(
            "netns harness: `ip netns del {name}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A network namespace of this test, deleted on drop.
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// `ip netns add fab-<prefix>-<pid>-<n>` and `lo` up. `prefix` is ASCII letters
    /// and digits, cut so the whole name fits [`IFNAME_MAX`] (keep it to 3
    /// characters and it is never cut).
    pub fn new(prefix: &str) -> Netns {
        require_root();
        ip_binary();
        assert!(
            !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_alphanumeric()),
            "netns prefix {prefix:?}: use ASCII letters and digits"
        );
        sweep_once();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tail = format!("-{}-{n}", std::process::id());
        let room = IFNAME_MAX.saturating_sub(NS_PREFIX.len() + tail.len());
        assert!(
            room > 0,
            "no room for a prefix in a netns name ending {tail:?}"
        );
        let name = format!("{NS_PREFIX}{}{tail}", &prefix[..prefix.len().min(room)]);
        let path = Path::new(NETNS_DIR).join(&name);
        {
            let mut guard = live();
            if path.exists() {
                // Our pid and counter, but not ours: a crashed run with the same pid.
                eprintln!("netns harness: removing leftover namespace {name}");
                destroy_netns(&name);
            }
            check(
                &format!("ip netns add {name}"),
                ip_raw(&["netns", "add", &name]),
            );
            guard.get_or_insert_with(HashSet::new).insert(name.clone());
        }
        let ns = Netns { name, path };
        ns.up("lo");
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the handle `setns(2)` takes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`in_netns`] as a method: runs `f` on a thread inside this namespace.
    pub fn enter<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> T {
        in_netns(self, f)
    }

    /// A `Command` running `program` inside the namespace (`ip netns exec`, which
    /// execs it: the child's pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(ip_binary());
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program args` inside the namespace; its output, whatever the status.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.run_timeout(program, args, CMD_TIMEOUT)
    }

    pub fn run_timeout(&self, program: &str, args: &[&str], timeout: Duration) -> Output {
        let mut cmd = self.command(program);
        cmd.args(args);
        output_timeout(cmd, timeout)
    }

    /// Runs `program args`, panics unless it succeeds; its stdout.
    pub fn run_ok(&self, program: &str, args: &[&str]) -> String {
        check(
            &format!("{program} {} (in {})", args.join(" "), self.name),
            self.run(program, args),
        )
    }

    /// `sh -c SCRIPT` inside the namespace.
    pub fn sh(&self, script: &str) -> Output {
        self.run("sh", &["-c", script])
    }

    /// `sh -c SCRIPT`, panics unless it succeeds; its stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        check(
            &format!("sh -c {script:?} in {}", self.name),
            self.sh(script),
        )
    }

    /// Starts `program args` inside the namespace, stdout and stderr collected; the
    /// guard kills and reaps it.
    pub fn spawn(&self, program: &str, args: &[&str]) -> ChildGuard {
        let mut cmd = self.command(program);
        cmd.args(args);
        ChildGuard::spawn(cmd)
    }

    /// `ip -n NAME ARGS`; panics on failure, returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        host_ip(&full)
    }

    /// Adds an address (`"10.0.0.1/24"`, or IPv6) to `ifname`.
    pub fn addr(&self, ifname: &str, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", ifname]);
    }

    pub fn up(&self, ifname: &str) {
        self.ip(&["link", "set", ifname, "up"]);
    }

    pub fn down(&self, ifname: &str) {
        self.ip(&["link", "set", ifname, "down"]);
    }

    pub fn mtu(&self, ifname: &str, mtu: u32) {
        self.ip(&["link", "set", ifname, "mtu", &mtu.to_string()]);
    }

    /// Sets the MAC address of `ifname` (`"02:00:00:00:00:01"`).
    pub fn set_mac(&self, ifname: &str, mac: &str) {
        self.ip(&["link", "set", ifname, "address", mac]);
    }

    /// The MAC address of `ifname`.
    pub fn mac(&self, ifname: &str) -> [u8; 6] {
        let text = self.ip(&["-o", "link", "show", ifname]);
        let word = text
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no link/ether in `ip link show {ifname}`: {text}"));
        let mut mac = [0u8; 6];
        for (i, byte) in word.split(':').enumerate().take(6) {
            mac[i] = u8::from_str_radix(byte, 16).unwrap();
        }
        mac
    }

    /// Turns off checksum and segmentation offloads of `ifname` (`ethtool -K IF tx off
    /// rx off tso off gso off gro off`). A veth otherwise hands on GSO super-frames
    /// (tens of KiB) and CHECKSUM_PARTIAL packets whose L4 checksum holds only the
    /// pseudo-header sum: that is what a capture or a userspace peer would see.
    pub fn offloads_off(&self, ifname: &str) {
        let ethtool = require_tool("ethtool", "ethtool");
        let args = [
            "-K", ifname, "tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off",
        ];
        self.run_ok(&ethtool.to_string_lossy(), &args);
    }

    /// Names of the links in the namespace.
    pub fn links(&self) -> Vec<String> {
        parse_link_names(&self.ip(&["-o", "link", "show"]))
    }

    /// A kernel VXLAN device: `ip link add NAME type vxlan id VNI local LOCAL remote
    /// REMOTE dstport PORT nolearning`, left down. `remote` makes the default FDB entry
    /// (all-zero MAC): unknown unicast, broadcast and multicast go there. Without an
    /// explicit dstport iproute2 would use the kernel's legacy 8472. Anything else:
    /// [`Netns::vxlan_device_with`].
    pub fn vxlan_device(&self, name: &str, vni: u32, local: &str, remote: &str, dstport: u16) {
        self.vxlan_device_with(name, vni, local, remote, dstport, &["nolearning"]);
    }

    /// [`Netns::vxlan_device`] with other options than `nolearning` (`learning`,
    /// `srcport MIN MAX`, `noudpcsum`, `ttl N`, `dev IF`, `df set`, ...).
    pub fn vxlan_device_with(
        &self,
        name: &str,
        vni: u32,
        local: &str,
        remote: &str,
        dstport: u16,
        extra: &[&str],
    ) {
        let vni = vni.to_string();
        let port = dstport.to_string();
        let mut args = vec![
            "link", "add", name, "type", "vxlan", "id", &vni, "local", local, "remote", remote,
            "dstport", &port,
        ];
        args.extend_from_slice(extra);
        self.ip(&args);
    }

    /// Adds a head-end replication target to a VXLAN device (`bridge fdb append
    /// 00:00:00:00:00:00 dev DEV dst IP`): BUM traffic goes to every such `dst`.
    pub fn vxlan_flood_to(&self, dev: &str, dst: &str) {
        let out = self.run(
            "bridge",
            &["fdb", "append", "00:00:00:00:00:00", "dev", dev, "dst", dst],
        );
        check(&format!("bridge fdb append ... dev {dev} dst {dst}"), out);
    }

    /// A Linux bridge (STP off: ports forward at once), brought up.
    pub fn bridge(&self, name: &str) {
        self.ip(&["link", "add", name, "type", "bridge", "stp_state", "0"]);
        self.up(name);
    }

    /// Makes `ifname` a port of `bridge`.
    pub fn enslave(&self, ifname: &str, bridge: &str) {
        self.ip(&["link", "set", ifname, "master", bridge]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        {
            let mut guard = live();
            destroy_netns(&self.name);
            if let Some(s) = guard.as_mut() {
                s.remove(&self.name);
            }
        }
        if self.path.exists() {
            eprintln!("netns harness: {} still exists after delete", self.name);
        }
    }
}

/// Runs `f` on a thread that has entered the namespace with `setns(CLONE_NEWNET)`
/// (a network namespace is a property of the thread), and returns what it returns;
/// a panic in `f` is the caller's. Sockets made in `f` belong to the namespace for
/// their whole life, whichever thread uses them later.
pub fn in_netns<T: Send, F: FnOnce() -> T + Send>(ns: &Netns, f: F) -> T {
    let file = File::open(ns.path())
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", ns.path().display()));
    let name = ns.name.clone();
    thread::scope(|s| {
        let h = thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn_scoped(s, move || {
                // SAFETY: setns(2) on an open namespace fd, for this thread only.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns({name}): {}", std::io::Error::last_os_error());
                drop(file);
                f()
            })
            .expect("spawn thread");
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Where one end of a veth pair lives.
#[derive(Clone, Copy)]
pub enum At<'a> {
    Host,
    Ns(&'a Netns),
}

/// The host (initial) namespace, for [`veth_pair`].
pub const HOST: At<'static> = At::Host;

impl<'a> From<&'a Netns> for At<'a> {
    fn from(ns: &'a Netns) -> At<'a> {
        At::Ns(ns)
    }
}

impl At<'_> {
    fn ns_name(&self) -> Option<String> {
        match self {
            At::Host => None,
            At::Ns(ns) => Some(ns.name.clone()),
        }
    }
}

/// One end of a link: namespace name (None: host) and interface name.
#[derive(Clone, Debug)]
pub struct LinkEnd {
    pub netns: Option<String>,
    pub name: String,
}

fn ip_in(netns: &Option<String>, args: &[&str]) -> Output {
    let mut full: Vec<&str> = Vec::new();
    if let Some(n) = netns {
        full.extend_from_slice(&["-n", n]);
    }
    full.extend_from_slice(args);
    ip_raw(&full)
}

/// A veth pair; deleted on drop (deleting one end deletes both).
pub struct Veth {
    pub a: LinkEnd,
    pub b: LinkEnd,
}

/// Creates a veth pair, end `a` named `a.1` in `a.0`, end `b` in `b.0` (each a
/// `&Netns` or [`HOST`]), both left down. Host ends carry the alias `fabns:<pid>`.
pub fn veth_pair<'a, 'b>(a: (impl Into<At<'a>>, &str), b: (impl Into<At<'b>>, &str)) -> Veth {
    require_root();
    sweep_once();
    let (a_at, a_name) = (a.0.into(), a.1);
    let (b_at, b_name) = (b.0.into(), b.1);
    for n in [a_name, b_name] {
        assert!(
            !n.is_empty() && n.len() <= IFNAME_MAX,
            "interface name {n:?}: 1 to {IFNAME_MAX} characters"
        );
    }
    let a_ns = a_at.ns_name();
    let b_ns = b_at.ns_name();
    let mut args = vec!["link", "add", a_name];
    if let Some(n) = &a_ns {
        args.extend_from_slice(&["netns", n]);
    }
    args.extend_from_slice(&["type", "veth", "peer", "name", b_name]);
    if let Some(n) = &b_ns {
        args.extend_from_slice(&["netns", n]);
    }
    check(&format!("ip {}", args.join(" ")), ip_raw(&args));
    let veth = Veth {
        a: LinkEnd {
            netns: a_ns,
            name: a_name.to_string(),
        },
        b: LinkEnd {
            netns: b_ns,
            name: b_name.to_string(),
        },
    };
    let tag = format!("{ALIAS_TAG}{}", std::process::id());
    for end in [&veth.a, &veth.b] {
        if end.netns.is_none() {
            host_ip(&["link", "set", &end.name, "alias", &tag]);
        }
    }
    veth
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Either end takes the pair with it; one of them may be gone with its namespace.
        for end in [&self.a, &self.b] {
            if let Some(n) = &end.netns {
                if !Path::new(NETNS_DIR).join(n).exists() {
                    continue;
                }
            }
            if ip_in(&end.netns, &["link", "del", &end.name])
                .status
                .success()
            {
                return;
            }
        }
    }
}

/// Moves an existing host interface (a TAP a daemon made, say) into `ns`. It goes
/// with the namespace when that is deleted (a TAP is destroyed, not handed back).
pub fn move_link(ifname: &str, ns: &Netns) {
    host_ip(&["link", "set", ifname, "netns", ns.name()]);
}

/// [`move_link`], renaming it to `new_name` inside the namespace.
pub fn move_link_as(ifname: &str, ns: &Netns, new_name: &str) {
    move_link(ifname, ns);
    ns.ip(&["link", "set", ifname, "name", new_name]);
}
