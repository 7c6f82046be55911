//! `fabricctl` against a real `vswitchd` process: every subcommand, with its
//! effect checked on traffic or I/O, then `config save` and a restart that
//! brings the same system back.

use test_kit::blkio as blk_support;
use test_kit::frontend as support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{eth, mac, GuestNic, NicOptions};
use test_kit::TestDir;

const MIB: u64 = 1 << 20;

pub(crate) struct Vswitchd {
    pub(crate) child: Option<Child>,
    dir: PathBuf,
}

impl Vswitchd {
    pub(crate) fn start(dir: &Path) -> Vswitchd {
        let log = std::fs::File::create(dir.join("vswitchd.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vswitchd"))
            .arg("--config")
            .arg(dir.join("fabric.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn vswitchd");
        let v = Vswitchd {
            child: Some(child),
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !v.control().exists() {
            assert!(Instant::now() < deadline, "no control socket:\n{}", v.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        v
    }

    pub(crate) fn control(&self) -> PathBuf {
        self.dir.join("run/control.sock")
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vswitchd.log")).unwrap_or_default()
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let st = c.wait().unwrap();
            assert!(st.success(), "vswitchd exit {st}:\n{}", self.log());
        }
    }

    /// Runs fabricctl on this daemon's socket; returns (exit code, stdout, stderr).
    pub(crate) fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let socket = self.control();
        let mut all = vec!["--control-socket", socket.to_str().unwrap()];
        all.extend_from_slice(args);
        self.ctl_as_written(&all)
    }

    /// Runs fabricctl with exactly `args`, started in the daemon's directory
    /// (where the default `run/control.sock` is) with no socket in its
    /// environment; returns (exit code, stdout, stderr).
    pub(crate) fn ctl_as_written(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_fabricctl"))
            .args(args)
            .current_dir(&self.dir)
            .env_remove("FABRIC_CONTROL_SOCKET")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a subcommand that must succeed.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.ctl(args);
        assert_eq!(code, 0, "fabricctl {args:?}: {err}\n{out}");
        out
    }

    /// Runs a subcommand with --json that must succeed.
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// Waits until `port list` shows each of `ports` with its link up.
    pub(crate) fn wait_links_up(&self, ports: &[&str]) {
        support::fabric::wait_for("links up", || {
            support::fabric::links_up(&self.json(&["port", "list"]), ports)
        });
    }

    /// Runs a subcommand that must fail with `code`.
    pub(crate) fn fails(&self, code: i32, args: &[&str]) -> String {
        let (c, out, err) = self.ctl(args);
        assert_eq!(c, code, "fabricctl {args:?}: {err}\n{out}");
        assert!(err.starts_with("fabricctl: "), "{err}");
        err
    }
}

impl Drop for Vswitchd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- vswitchd log ---\n{}", self.log());
        }
    }
}

#[test]
fn every_subcommand_against_a_running_daemon() {
    let dir = TestDir::on_disk("fctl-all");
    std::fs::write(
        dir.join("fabric.toml"),
        "[daemon]\nrun_dir = \"run\"\n[[switch]]\nname = \"br0\"\n\
         [[switch.port]]\nname = \"a\"\ntype = \"vhost-user\"\nvlan = { mode = \"access\", tag = 10 }\n\
         [[pool]]\nname = \"p0\"\npath = \"pool.img\"\nsize = \"64M\"\n\
         [[pool.volume]]\nname = \"base\"\nsize = \"8M\"\n",
    )
    .unwrap();
    let mut d = Vswitchd::start(&dir);

    // status
    let st = d.json(&["status"]);
    assert_eq!(st["pid"], d.child.as_ref().unwrap().id());
    assert!(
        d.ok(&["status"]).contains("uptime"),
        "{}",
        d.ok(&["status"])
    );

    // port add / list: the new port forwards in VLAN 10.
    d.ok(&[
        "port",
        "add",
        "br0",
        "b",
        "--vlan",
        "access:10",
        "--mac",
        "52:54:00:00:00:0b",
    ]);
    let ports = d.json(&["port", "list"]);
    assert_eq!(ports.as_array().unwrap().len(), 2);
    let mut a = GuestNic::connect(&dir.join("run/a.sock"), NicOptions::default()).unwrap();
    let mut b = GuestNic::connect(&dir.join("run/b.sock"), NicOptions::default()).unwrap();
    d.wait_links_up(&["a", "b"]);
    let frame = eth(mac(2), mac(1), 0x0800, b"through a port added by fabricctl");
    assert!(a.send(&frame));
    assert_eq!(b.recv(Duration::from_secs(5)).as_deref(), Some(&frame[..]));
    assert!(d.ok(&["port", "list"]).contains("b"));

    // fdb show / add / flush
    let fdb = d.json(&["fdb", "show", "br0"]);
    assert!(
        fdb.as_array()
            .unwrap()
            .iter()
            .any(|e| e["port"] == "a" && e["vlan"] == 10),
        "{fdb}"
    );
    d.ok(&["fdb", "add", "br0", "10", "52:54:00:00:00:99", "b"]);
    assert!(d.ok(&["fdb", "show", "br0"]).contains("52:54:00:00:00:99"));
    d.ok(&["fdb", "flush", "br0", "--port", "a"]);
    let fdb = d.json(&["fdb", "show", "br0"]);
    assert!(
        fdb.as_array().unwrap().iter().all(|e| e["port"] != "a"),
        "{fdb}"
    );

    // port remove (twice: not found)
    drop(b);
    d.ok(&["port", "remove", "b"]);
    d.fails(3, &["port", "remove", "b"]);

    // pool list, volume create / export add: I/O through the new export.
    let pools = d.json(&["pool", "list"]);
    let free0 = pools[0]["free"].as_u64().unwrap();
    assert!(d.ok(&["pool", "list"]).contains("p0"));
    d.ok(&["volume", "create", "p0", "v", "--size", "8M"]);
    d.ok(&["export", "add", "p0", "v", "--queues", "2"]);
    {
        let mut c = blk_support::BlkClient::connect(&dir.join("run/v.sock"), 2).unwrap();
        c.queue(0).write_pattern(1, 0, 2 * MIB as usize).unwrap();
        c.queue(0).flush().unwrap();
    }
    // An exported volume grows (the next frontend writes past the old end);
    // it never shrinks, --force or not: exit 4, conflict.
    d.ok(&["volume", "resize", "p0", "v", "--size", "12M"]);
    for force in [&[][..], &["--force"][..]] {
        let args = [&["volume", "resize", "p0", "v", "--size", "4M"][..], force].concat();
        let err = d.fails(4, &args);
        assert!(err.contains("can grow but not shrink"), "{err}");
    }
    {
        let mut c = blk_support::BlkClient::connect(&dir.join("run/v.sock"), 2).unwrap();
        assert_eq!(c.capacity(), 12 * MIB);
        c.queue(0).write_pattern(3, 8 * MIB, MIB as usize).unwrap();
        c.queue(0).verify_pattern(3, 8 * MIB, MIB as usize).unwrap();
    }
    // snapshot, then new data on the volume; the snapshot keeps the old.
    d.ok(&["volume", "snapshot", "p0", "v", "s"]);
    {
        let mut c = blk_support::BlkClient::connect(&dir.join("run/v.sock"), 2).unwrap();
        c.queue(0).write_pattern(2, 0, MIB as usize).unwrap();
        c.queue(0).flush().unwrap();
    }
    d.ok(&["export", "add", "p0", "s"]);
    {
        let mut c = blk_support::BlkClient::connect(&dir.join("run/s.sock"), 1).unwrap();
        assert!(c.read_only());
        c.queue(0).verify_pattern(1, 0, 2 * MIB as usize).unwrap();
    }
    d.ok(&["export", "remove", "p0", "s"]);
    // clone, rename, resize, list
    d.ok(&["volume", "clone", "p0", "s", "c"]);
    d.ok(&["volume", "rename", "p0", "c", "c2"]);
    d.fails(2, &["volume", "resize", "p0", "c2", "--size", "4M"]);
    d.ok(&["volume", "resize", "p0", "c2", "--size", "16M"]);
    let vols = d.json(&["volume", "list", "--pool", "p0"]);
    let find = |n: &str| {
        vols.as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == n)
            .cloned()
    };
    assert_eq!(find("c2").unwrap()["size"], 16 * MIB);
    assert_eq!(find("s").unwrap()["kind"], "snapshot");
    assert_eq!(find("v").unwrap()["allocated"], 3 * MIB);
    assert_eq!(find("v").unwrap()["size"], 12 * MIB);
    assert!(find("v").unwrap()["export"].is_string());
    // delete: refused while exported, then allowed; space comes back.
    d.fails(4, &["volume", "delete", "p0", "v"]);
    d.ok(&["export", "remove", "p0", "v"]);
    for v in ["v", "s", "c2"] {
        d.ok(&["volume", "delete", "p0", v]);
    }
    let free1 = d.json(&["pool", "list"])[0]["free"].as_u64().unwrap();
    assert_eq!(free1, free0);

    // config save and restart: what runs now comes back.
    d.ok(&["port", "add", "br0", "t", "--vlan", "trunk:10,20:native=1"]);
    d.ok(&["volume", "create", "p0", "kept", "--size", "4M"]);
    let migrate = dir.join("run/kept.migrate.sock");
    let migrate = migrate.to_str().unwrap();
    d.ok(&["export", "add", "p0", "kept", "--migration-socket", migrate]);
    d.ok(&["config", "save"]);
    d.stop();
    let mut d = Vswitchd::start(&dir);
    let ports = d.json(&["port", "list"]);
    let names: Vec<&str> = ports
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "t"]);
    let vols = d.json(&["volume", "list"]);
    let kept = vols
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "kept")
        .unwrap();
    assert!(kept["export"].as_str().unwrap().ends_with("kept.sock"));
    assert_eq!(kept["migration_socket"], migrate);
    assert!(dir.join("run/kept.sock").exists());
    assert!(dir.join("run/kept.migrate.sock").exists());
    d.stop();
    // The daemon gone: exit 7 with a hint.
    let err = d.fails(7, &["status"]);
    assert!(err.contains("is vswitchd running?"), "{err}");
}

/// The README's `fabricctl volume snapshot` and `volume clone` lines, as
/// written there, against a daemon with the volume they name; then the
/// snapshot's `@` name is exported and survives `config save` and a restart.
#[test]
fn readme_snapshot_example() {
    let readme = include_str!("../../README.md");
    let line = |prefix: &str| -> Vec<&str> {
        let l = readme
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("README has no line starting {prefix:?}"));
        l.split_whitespace().skip(1).collect()
    };
    let snapshot = line("fabricctl volume snapshot ");
    let clone = line("fabricctl volume clone ");
    assert_eq!(
        snapshot,
        ["volume", "snapshot", "pool0", "vm1-disk", "vm1-disk@monday"]
    );

    let dir = TestDir::on_disk("fctl-readme");
    std::fs::write(
        dir.join("fabric.toml"),
        "[daemon]\nrun_dir = \"run\"\n\
         [[pool]]\nname = \"pool0\"\npath = \"pool.img\"\nsize = \"64M\"\n\
         [[pool.volume]]\nname = \"vm1-disk\"\nsize = \"8M\"\n",
    )
    .unwrap();
    let mut d = Vswitchd::start(&dir);
    d.ok(&snapshot);
    d.ok(&clone);
    d.ok(&["export", "add", "pool0", "vm1-disk@monday"]);
    assert!(dir.join("run/vm1-disk@monday.sock").exists());
    d.ok(&["config", "save"]);
    d.stop();

    let mut d = Vswitchd::start(&dir);
    let vols = d.json(&["volume", "list", "--pool", "pool0"]);
    let mut names: Vec<(&str, &str)> = vols
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["kind"].as_str().unwrap()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("vm1-disk", "volume"),
            ("vm1-disk@monday", "snapshot"),
            ("vm3-disk", "clone")
        ],
        "{vols}"
    );
    assert!(dir.join("run/vm1-disk@monday.sock").exists());
    d.stop();
}

/// One `fabricctl` line of a README code block.
struct ReadmeCommand {
    /// 1-based line in README.md, for messages.
    line: usize,
    /// The words after `fabricctl`, the trailing `# comment` cut off.
    args: Vec<String>,
    /// The exit code its comment documents as `(exits N)`; 0 without one.
    exits: i32,
}

/// Every line starting `fabricctl ` inside a fenced code block of `readme`, in
/// order. Quotes and line continuations are refused: the test runs each line as
/// plain words, so a line it cannot split that way must fail loudly.
fn readme_commands(readme: &str) -> Vec<ReadmeCommand> {
    let mut in_block = false;
    let mut commands = Vec::new();
    for (i, text) in readme.lines().enumerate() {
        if text.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        let Some(rest) = text.strip_prefix("fabricctl ").filter(|_| in_block) else {
            continue;
        };
        let (words, comment) = rest.split_once('#').unwrap_or((rest, ""));
        assert!(
            !words.contains(['"', '\'', '\\']),
            "README.md:{}: quoting or a continuation in {text:?}: run as plain words",
            i + 1
        );
        let exits = match comment.split_once("(exits ") {
            Some((_, n)) => n
                .split(')')
                .next()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("README.md:{}: bad `(exits N)` in {text:?}", i + 1)),
            None => 0,
        };
        commands.push(ReadmeCommand {
            line: i + 1,
            args: words.split_whitespace().map(str::to_owned).collect(),
            exits,
        });
    }
    assert!(!in_block, "README.md ends inside a code block");
    commands
}

/// Every `fabricctl` command of the README, exactly as written and in README
/// order, against a daemon on the repository's example `fabric.toml` (copied
/// into a fresh directory): each exits as documented (0 unless its comment says
/// `(exits N)`). A README edit that breaks a command fails here.
#[test]
fn readme_commands_run_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let commands = readme_commands(&readme);
    assert!(!commands.is_empty(), "README.md has no fabricctl lines");
    let dir = TestDir::on_disk("fctl-readme-all");
    std::fs::copy(root.join("fabric.toml"), dir.join("fabric.toml")).expect("fabric.toml");
    let mut d = Vswitchd::start(&dir);
    for c in &commands {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let (code, out, err) = d.ctl_as_written(&args);
        assert_eq!(
            code,
            c.exits,
            "README.md:{}: fabricctl {}\n{err}{out}",
            c.line,
            args.join(" ")
        );
    }
    d.stop();
}

/// `export limit` and `port limit`: limits from the file shown, changed at
/// run time with their effect on I/O and traffic, refusals with their exit
/// codes, and `config save` writing the limits back.
#[test]
fn limit_verbs_against_a_running_daemon() {
    let dir = TestDir::on_disk("fctl-limits");
    std::fs::write(
        dir.join("fabric.toml"),
        "[daemon]\nrun_dir = \"run\"\n[[switch]]\nname = \"br0\"\n\
         [[switch.port]]\nname = \"a\"\ntype = \"vhost-user\"\nvlan = { mode = \"access\", tag = 10 }\nrate = 5000\n\
         [[switch.port]]\nname = \"b\"\ntype = \"vhost-user\"\nvlan = { mode = \"access\", tag = 10 }\n\
         [[pool]]\nname = \"p0\"\npath = \"pool.img\"\nsize = \"64M\"\n\
         [[pool.volume]]\nname = \"v\"\nsize = \"8M\"\nexport = { iops_write = 100 }\n",
    )
    .unwrap();
    let mut d = Vswitchd::start(&dir);

    // From the file: the defaults filled in.
    let vols = d.json(&["volume", "list"]);
    assert_eq!(vols[0]["limits"]["iops_write"], 100, "{vols}");
    assert_eq!(vols[0]["limits"]["iops_write_burst"], 10, "{vols}");
    let ports = d.json(&["port", "list"]);
    assert_eq!(
        (ports[0]["rate"].as_u64(), ports[0]["burst"].as_u64()),
        (Some(5000), Some(8000))
    );

    // export limit: the given limits replace the old ones.
    let out = d.ok(&[
        "export",
        "limit",
        "p0",
        "v",
        "--iops-read",
        "100",
        "--iops-read-burst",
        "1",
        "--bytes-per-sec-write",
        "10M",
    ]);
    assert!(
        out.contains("iops_read 100/1 bytes_per_sec_write 10485760/1048576"),
        "{out}"
    );
    let vols = d.json(&["volume", "list"]);
    assert!(vols[0]["limits"].get("iops_write").is_none(), "{vols}");
    // Reads now wait for each other: at 100/s with a burst of 1, the second
    // of two reads in a row waits about 10 ms.
    let mut c = blk_support::BlkClient::connect(&dir.join("run/v.sock"), 1).unwrap();
    for i in 0..4 {
        c.queue(0).read_vec(i * 4096, 4096).unwrap();
    }
    let vols = d.json(&["volume", "list"]);
    assert!(vols[0]["throttled"].as_u64() >= Some(1), "{vols}");
    drop(c);

    // Refused: exit 2 for a bad value (the key named), 3 for what is not there.
    let err = d.fails(
        2,
        &["export", "limit", "p0", "v", "--iops-write-burst", "5"],
    );
    assert!(
        err.contains("`iops_write_burst` is given without `iops_write`"),
        "{err}"
    );
    let err = d.fails(2, &["export", "limit", "p0", "v", "--iops-read", "0"]);
    assert!(err.contains("`iops_read` must be at least 1"), "{err}");
    d.fails(
        2,
        &["export", "limit", "p0", "v", "--bytes-per-sec-read", "lots"],
    );
    d.fails(3, &["export", "limit", "p0", "nosuch", "--iops-read", "5"]);
    d.fails(3, &["export", "limit", "nopool", "v", "--iops-read", "5"]);

    // port limit: a small burst polices a blast from a; b gets the rest.
    let out = d.ok(&["port", "limit", "a", "--rate", "1000", "--burst", "16"]);
    assert!(out.contains("1000/16 kbit"), "{out}");
    let mut a = GuestNic::connect(&dir.join("run/a.sock"), NicOptions::default()).unwrap();
    let mut b = GuestNic::connect(&dir.join("run/b.sock"), NicOptions::default()).unwrap();
    d.wait_links_up(&["a", "b"]);
    let frame = eth([0xff; 6], mac(1), 0x0800, &[0u8; 100]);
    let mut received = 0u64;
    for _ in 0..4 {
        assert_eq!(a.send_batch(&[&frame[..]; 50]), 50);
        assert!(a.wait_tx_completed(Duration::from_secs(5)));
        while b.try_recv().is_some() {
            received += 1;
        }
    }
    while b.recv(Duration::from_millis(100)).is_some() {
        received += 1;
    }
    let ports = d.json(&["port", "list"]);
    let policed = ports[0]["drops"]["policed"].as_u64().unwrap();
    assert!(policed > 0, "{ports}");
    assert_eq!(received + policed, 200);
    let err = d.fails(2, &["port", "limit", "a", "--burst", "5"]);
    assert!(err.contains("`burst` is given without `rate`"), "{err}");
    d.fails(2, &["port", "limit", "a", "--rate", "0"]);
    d.fails(3, &["port", "limit", "nosuch", "--rate", "5"]);

    // config save writes the limits as they are now; the file parses.
    d.ok(&["config", "save"]);
    let saved = std::fs::read_to_string(dir.join("fabric.toml")).unwrap();
    assert!(saved.contains("rate = 1000\nburst = 16"), "{saved}");
    assert!(
        saved.contains("iops_read = 100, iops_read_burst = 1"),
        "{saved}"
    );
    let config = fabric_config::load(&dir.join("fabric.toml")).unwrap_or_else(|e| panic!("{e}"));
    let v = &config.pools[0].volumes[0];
    assert_eq!(v.export.as_ref().unwrap().limits.iops_write, None);

    // No flags: no limits.
    d.ok(&["export", "limit", "p0", "v"]);
    d.ok(&["port", "limit", "a"]);
    let vols = d.json(&["volume", "list"]);
    assert!(vols[0].get("limits").is_none(), "{vols}");
    let ports = d.json(&["port", "list"]);
    assert!(ports[0].get("rate").is_none(), "{ports}");
    drop((a, b));
    d.stop();
}
