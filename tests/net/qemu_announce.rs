//! A real QEMU guest announced after QMP `announce-self` (what QEMU also does
//! after a migration), test tier 4: the daemon runs in process ([`Fabric`]), a
//! harness frontend plays the guest's old place on port `a`, the TCG guest sits
//! on port `b`.
//!
//! - With the control queue (QEMU's default), the guest negotiates
//!   VIRTIO_NET_F_GUEST_ANNOUNCE, which the port offers: QEMU raises
//!   VIRTIO_NET_S_ANNOUNCE and the guest sends its own gratuitous ARP, one per
//!   round, through its transmit queue. QEMU sends no SEND_RARP.
//! - Without it (`ctrl_vq=off`), the guest cannot negotiate it (§5.1.3.1) and
//!   QEMU sends SEND_RARP instead: the port forwards a RARP per round.
//!
//! Either way the guest's MAC, learned on `a` first, moves to `b` once. Needs
//! QEMU and the guest image as `qemu_guest` says (panics, never skips).

use serde_json::json;
use std::time::Duration;
use test_kit::frontend::fabric::Fabric;
use test_kit::frontend::frames::{payload, rarp, ETHERTYPE_ARP, ETHERTYPE_TEST};
use test_kit::frontend::{eth, BROADCAST};
use test_kit::qemu::qmp::Qmp;
use test_kit::qemu::{guest_image, net_device_args, qemu_binary, Guest, GuestSpec, GUEST_MEM_MB};

const ACCESS10: &str = "{ mode = \"access\", tag = 10 }";
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x02];
const GUEST_IP: [u8; 4] = [10, 0, 0, 2];
/// Boot, module loading and link-up under TCG.
const BOOT: Duration = Duration::from_secs(90);
/// How long one announcement may take to arrive (a TCG guest's config
/// interrupt, workqueue and transmit).
const ARRIVE: Duration = Duration::from_secs(30);
/// How long "nothing more arrives" is watched for: longer than the rounds.
const QUIET: Duration = Duration::from_secs(5);
/// Announce rounds, 1 s apart: the guest handles (and acks) each before the
/// next, so none coalesce.
const ROUNDS: u64 = 3;

/// Bits of the virtio feature string in sysfs (one '0'/'1' per bit).
const F_CTRL_VQ: usize = 17;
const F_GUEST_ANNOUNCE: usize = 21;

/// The gratuitous ARP Linux sends for `GUEST_IP` (`inetdev_send_gratuitous_arp`):
/// a broadcast request whose sender and target address are its own.
fn gratuitous_arp() -> Vec<u8> {
    let mut body = vec![0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01];
    body.extend_from_slice(&GUEST_MAC);
    body.extend_from_slice(&GUEST_IP);
    body.extend_from_slice(&[0; 6]);
    body.extend_from_slice(&GUEST_IP);
    eth(BROADCAST, GUEST_MAC, ETHERTYPE_ARP, &body)
}

/// Boots the guest on `b` (with or without the control queue), moves its MAC
/// to `a`, runs `announce-self` and checks that `a` gets exactly `want`, once
/// per round, that the MAC moved back to `b` once, and how many of the rounds
/// were SEND_RARP (`announces`).
fn announce_self(ctrl_vq: bool, want: Vec<u8>, announces: u64) {
    let qemu = qemu_binary();
    let image = guest_image();
    let f = Fabric::start("", &[("a", ACCESS10), ("b", ACCESS10)]);
    let mut a = f.connect("a");

    let qmp_path = f.dir().join("guest.qmp");
    let mut devices = net_device_args(&f.socket("b"), "52:54:00:00:00:02", false);
    if !ctrl_vq {
        // The features that need the control queue go with it, or Linux
        // refuses the device.
        devices.last_mut().expect("the -device argument").push_str(
            ",ctrl_vq=off,ctrl_rx=off,ctrl_vlan=off,ctrl_rx_extra=off,ctrl_mac_addr=off,\
             ctrl_guest_offloads=off",
        );
    }
    devices.extend([
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", qmp_path.display()),
    ]);
    // IPv4 only: one gratuitous ARP per round, no IPv6 advertisements.
    let spec = GuestSpec {
        mem_path: None,
        smp: 1,
        mem_mb: GUEST_MEM_MB,
        device_args: &devices,
        params: "ipv6.disable=1 fabric.ip=10.0.0.2/24 fabric.role=serve",
    };
    let mut guest = Guest::boot_with(&qemu, &image, f.dir(), "guest", &spec);
    let fail = |e: String| -> ! { panic!("{e}") };
    let up = guest
        .wait_for("FABRIC-INFO eth0 up", BOOT)
        .unwrap_or_else(|e| fail(e));
    guest
        .wait_for("FABRIC-RESULT serve ready", BOOT)
        .unwrap_or_else(|e| fail(e));
    let features = up
        .split_whitespace()
        .find_map(|w| w.strip_prefix("features="))
        .unwrap_or_else(|| panic!("no features in {up:?}"));
    let bit = |n: usize| features.as_bytes().get(n) == Some(&b'1');
    assert_eq!(bit(F_CTRL_VQ), ctrl_vq, "CTRL_VQ: {up}");
    assert_eq!(bit(F_GUEST_ANNOUNCE), ctrl_vq, "GUEST_ANNOUNCE: {up}");
    let mut qmp = Qmp::connect(&qmp_path, BOOT).unwrap_or_else(|e| fail(e.to_string()));

    // The guest ran on `a` before: its MAC is learned there.
    a.recv_all(Duration::from_millis(300));
    let hello = eth(BROADCAST, GUEST_MAC, ETHERTYPE_TEST, &payload(1, 100));
    assert!(a.send(&hello));
    test_kit::frontend::fabric::wait_for("the guest's MAC learned on a", || {
        f.fdb_port_of(10, GUEST_MAC).as_deref() == Some("a")
    });
    let moved = f.fdb_stats().moved;
    let rx = f.counters("b").rx_packets;

    qmp.execute(
        "announce-self",
        json!({ "initial": 1000, "max": 1000, "rounds": ROUNDS, "step": 1000 }),
    )
    .unwrap_or_else(|e| fail(e.to_string()));
    for round in 1..=ROUNDS {
        let got = a.recv(ARRIVE);
        assert_eq!(
            got.as_deref(),
            Some(&want[..]),
            "round {round}\n{}",
            guest.diagnostics()
        );
    }
    assert!(a.recv_all(QUIET).is_empty(), "one frame per round");
    assert_eq!(f.fdb_port_of(10, GUEST_MAC).as_deref(), Some("b"));
    assert_eq!(f.fdb_stats().moved, moved + 1, "moved back once");
    let c = f.counters("b");
    assert_eq!(c.rx_packets - rx, ROUNDS, "one frame per round from b");
    assert_eq!(c.announces, announces, "SEND_RARP rounds");
    guest.kill();
}

/// The guest with a control queue negotiates GUEST_ANNOUNCE and announces
/// itself: its gratuitous ARP, no SEND_RARP.
#[test]
fn qemu_guest_with_guest_announce_sends_its_own_gratuitous_arp() {
    announce_self(true, gratuitous_arp(), 0);
}

/// Without a control queue there is no GUEST_ANNOUNCE: QEMU's SEND_RARP
/// becomes the port's RARP, one per round.
#[test]
fn qemu_guest_without_control_queue_is_announced_by_send_rarp() {
    announce_self(false, rarp(GUEST_MAC), ROUNDS);
}
