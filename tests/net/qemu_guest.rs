//! Real QEMU guests through vswitchd (test tier 4 in ARCHITECTURE.md).
//!
//! Three TCG guests (a Debian cloud kernel + busybox initramfs) attach to one switch:
//!
//! | guest | port | VLAN | address  | does                                            |
//! |-------|------|------|----------|-------------------------------------------------|
//! | B     | g2   | 10   | 10.0.0.2 | answers pings, serves a 1 MiB blob over HTTP    |
//! | A     | g1   | 10   | 10.0.0.1 | pings B 5 times, fetches the blob, checks md5   |
//! | C     | g3   | 20   | 10.0.0.3 | pings A 5 times: must get no reply (isolation)  |
//!
//! C is booted once A's NIC is up, and A stays up until the end, so A is there to
//! answer while C tries. The daemon's counters must show traffic both ways on g1 and
//! g2, frames received from C on g3, and nothing delivered to g3.
//!
//! Prerequisites (the test panics, never skips, when they are missing):
//!
//! ```text
//! sudo scripts/install-qemu.sh                      # qemu-system-x86 (bookworm-backports)
//! scripts/build-guest-image.sh target/guest-image   # a few seconds, cached
//! cargo test --test qemu_guest
//! ```
//!
//! Environment:
//! - `FABRIC_GUEST_IMAGE`: directory holding `vmlinuz` and `initramfs.img`
//!   (default `<workspace>/target/guest-image`, what the command above builds).
//! - `FABRIC_QEMU`: the QEMU binary (default `qemu-system-x86_64` on PATH).
//!
//! On failure the temporary directory (config, vswitchd log, each guest's serial
//! console and QEMU messages) is kept and its path printed. Takes about 30-60 s on a
//! 2-core machine; TCG speed says nothing about the switch, so nothing is timed here.

use test_kit::qemu as qemu_support;

use qemu_support::{counter, guest_image, qemu_binary, Guest, TestDir, Vswitchd};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[daemon]
run_dir = "run"

[[switch]]
name = "br0"

[[switch.port]]
name = "g1"
type = "vhost-user"
vlan = { mode = "access", tag = 10 }

[[switch.port]]
name = "g2"
type = "vhost-user"
vlan = { mode = "access", tag = 10 }

[[switch.port]]
name = "g3"
type = "vhost-user"
vlan = { mode = "access", tag = 20 }
"#;

/// Boot, module loading and link-up under TCG with three guests on two cores.
const BOOT: Duration = Duration::from_secs(60);
const PINGS: u32 = 5;

/// Fails fast when a guest never gets a working NIC or reports a bad result. The
/// guards then print vswitchd's log, kill every child and keep the temp dir.
fn fail(msg: String) -> ! {
    panic!("{msg}\n(vswitchd's log follows on stderr)")
}

#[test]
fn qemu_guests_ping_and_transfer_through_switch_and_vlans_isolate() {
    let qemu = qemu_binary();
    let image = guest_image();
    let t0 = Instant::now();
    let dir = TestDir::new("vswitchd-qemu").keep_on_panic();
    let vs = Vswitchd::start(dir.path(), CONFIG, &["g1", "g2", "g3"]);
    let sock = |i: usize| vs.sockets[i].clone();

    let mut b = Guest::boot(
        &qemu,
        &image,
        dir.path(),
        "B",
        &sock(1),
        "52:54:00:00:00:02",
        "fabric.ip=10.0.0.2/24 fabric.role=serve",
    );
    let mut a = Guest::boot(
        &qemu,
        &image,
        dir.path(),
        "A",
        &sock(0),
        "52:54:00:00:00:01",
        &format!(
            "fabric.ip=10.0.0.1/24 fabric.role=ping fabric.peer=10.0.0.2 fabric.count={PINGS} \
             fabric.wait=60 fabric.wget=1 fabric.hold=forever"
        ),
    );
    let b_ready = b
        .wait_for("FABRIC-RESULT serve", BOOT)
        .unwrap_or_else(|e| fail(e));
    eprintln!("[{:>5.1?}] B: {b_ready}", t0.elapsed());
    let a_up = a
        .wait_for("FABRIC-INFO eth0 up", BOOT)
        .unwrap_or_else(|e| fail(e));
    eprintln!("[{:>5.1?}] A: {a_up}", t0.elapsed());

    // A is up and stays up: now C, in the other VLAN, tries to reach it.
    let mut c = Guest::boot(
        &qemu,
        &image,
        dir.path(),
        "C",
        &sock(2),
        "52:54:00:00:00:03",
        &format!(
            "fabric.ip=10.0.0.3/24 fabric.role=ping fabric.peer=10.0.0.1 fabric.count={PINGS} \
             fabric.wait=3"
        ),
    );

    let a_ping = a
        .wait_for("FABRIC-RESULT ping", Duration::from_secs(90))
        .unwrap_or_else(|e| fail(e));
    eprintln!("[{:>5.1?}] A: {a_ping}", t0.elapsed());
    if !a_ping.contains(&format!("FABRIC-RESULT ping ok {PINGS}/{PINGS}")) {
        fail(format!(
            "guest A (g1, VLAN 10) did not get all {PINGS} replies from B (g2, VLAN 10): \
                 {a_ping:?}\n{}\n{}",
            a.diagnostics(),
            b.diagnostics()
        ));
    }
    let a_wget = a
        .wait_for("FABRIC-RESULT wget", Duration::from_secs(90))
        .unwrap_or_else(|e| fail(e));
    eprintln!("[{:>5.1?}] A: {a_wget}", t0.elapsed());
    if !a_wget.contains("FABRIC-RESULT wget ok 1048576") {
        fail(format!(
            "guest A could not fetch B's 1 MiB blob intact over TCP: {a_wget:?}\n{}\n{}",
            a.diagnostics(),
            b.diagnostics()
        ));
    }

    let c_up = c
        .wait_for("FABRIC-INFO eth0 up", BOOT)
        .unwrap_or_else(|e| fail(e));
    eprintln!("[{:>5.1?}] C: {c_up}", t0.elapsed());
    let c_ping = c
        .wait_for("FABRIC-RESULT ping", Duration::from_secs(60))
        .unwrap_or_else(|e| fail(e));
    eprintln!("[{:>5.1?}] C: {c_ping}", t0.elapsed());
    if !c_ping.contains(&format!("FABRIC-RESULT ping fail 0/{PINGS}")) {
        fail(format!(
            "VLAN isolation broken: guest C (g3, VLAN 20) reached A (g1, VLAN 10): \
                 {c_ping:?}\n{}",
            c.diagnostics()
        ));
    }
    // A held on (answering) for the whole of C's attempt.
    assert!(
        a.is_running() && !a.serial_text().contains("poweroff"),
        "guest A went down before C finished, so C's failure proves nothing\n{}",
        a.diagnostics()
    );
    // C powers itself off after its test.
    let c_exit = c
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|e| fail(e));
    assert!(
        c_exit.success(),
        "guest C's QEMU exited with {c_exit}\n{}",
        c.diagnostics()
    );

    // Counters while A and B are still attached.
    let report = vs.counters();
    for name in ["g1", "g2", "g3", "<fdb>"] {
        let mut kv: Vec<String> = report
            .get(name)
            .map(|c| c.iter().map(|(k, v)| format!("{k}={v}")).collect())
            .unwrap_or_default();
        kv.sort();
        eprintln!("counters {name}: {}", kv.join(" "));
    }
    let port = |name: &str| {
        report
            .get(name)
            .unwrap_or_else(|| panic!("no counters for port {name} in {report:?}"))
    };
    let (g1, g2, g3) = (port("g1"), port("g2"), port("g3"));
    for (name, c) in [("g1", g1), ("g2", g2)] {
        assert_eq!(c["link"], "up", "port {name} link: {c:?}");
        // At least the echo requests/replies, plus ARP and the TCP transfer.
        assert!(
            counter(c, "rx_packets") > PINGS as u64,
            "port {name} received too few frames from its guest: {c:?}"
        );
        assert!(
            counter(c, "tx_packets") > PINGS as u64,
            "port {name} delivered too few frames to its guest: {c:?}"
        );
    }
    // 1 MiB went from B to A: both ports carried at least that many bytes.
    assert!(counter(g2, "rx_bytes") >= 1 << 20, "g2 rx_bytes: {g2:?}");
    assert!(counter(g1, "tx_bytes") >= 1 << 20, "g1 tx_bytes: {g1:?}");
    // C spoke (ARP requests for 10.0.0.1), but nothing of VLAN 10 reached it.
    assert!(
        counter(g3, "rx_packets") >= 1,
        "port g3 received nothing from guest C, so its isolation proves nothing: {g3:?}"
    );
    assert_eq!(
        counter(g3, "tx_packets"),
        0,
        "frames were delivered to g3 (VLAN 20) although only VLAN 10 guests talk: {g3:?}"
    );
    assert_eq!(counter(g1, "drop_bad_descriptor"), 0, "{g1:?}");
    assert_eq!(counter(g2, "drop_bad_descriptor"), 0, "{g2:?}");
    assert_eq!(counter(g3, "drop_bad_descriptor"), 0, "{g3:?}");

    // Guests off, then the daemon: it must exit 0 and remove its sockets.
    a.kill();
    b.kill();
    drop(c);
    let sockets = vs.sockets.clone();
    let (status, _final) = vs.stop();
    assert!(status.success(), "vswitchd exited with {status}");
    for s in &sockets {
        assert!(!s.exists(), "socket {} left behind", s.display());
    }
    eprintln!("[{:>5.1?}] done", t0.elapsed());
}
