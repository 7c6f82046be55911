//! TCP between two real guests at full offload: two TCG guests with two vCPUs,
//! `mq=on` with two queue pairs and QEMU's default checksum and TSO offloads, run
//! iperf3 both ways through `vswitchd` (issue 12's acceptance test).
//!
//! What must hold:
//! - each guest's driver turned the offloads on (`ethtool -k`: TX checksumming,
//!   TSO) and uses two channels (`ethtool -l`), so the features were offered by
//!   the backend and negotiated, not just asked for by QEMU;
//! - iperf3 succeeds in both directions;
//! - the switch passed large segments intact (`tx_gso_packets` of the receiving
//!   port) and had nothing to segment or complete in software (both guests take
//!   every offload the other uses), with no bad-descriptor or offload drops.
//!
//! TCG speed says nothing about the switch: nothing is timed here (see
//! `benches/overlay.sh` for throughput). Prerequisites as in `qemu_guest.rs`.

use std::time::{Duration, Instant};
use test_kit::qemu::{
    counter, guest_image, net_device_args_mq, qemu_binary, Guest, GuestSpec, TestDir, Vswitchd,
    GUEST_MEM_MB,
};

const QUEUES: u16 = 2;

const CONFIG: &str = r#"
[daemon]
run_dir = "run"
datapath_threads = 2

[[switch]]
name = "br0"

[[switch.port]]
name = "g1"
type = "vhost-user"
queues = 2
vlan = { mode = "access", tag = 10 }

[[switch.port]]
name = "g2"
type = "vhost-user"
queues = 2
vlan = { mode = "access", tag = 10 }
"#;

/// Boot and link-up under TCG with two 2-vCPU guests on two cores.
const BOOT: Duration = Duration::from_secs(120);
/// Seconds of iperf3 per direction.
const IPERF_SECS: u32 = 4;

fn boot(dir: &TestDir, vs: &Vswitchd, i: usize, name: &str, params: &str) -> Guest {
    let mac = format!("52:54:00:00:01:0{}", i + 1);
    let devices = net_device_args_mq(&vs.sockets[i], &mac, false, QUEUES);
    let params = format!("ipv6.disable=1 {params}");
    let spec = GuestSpec {
        mem_path: None,
        smp: u32::from(QUEUES),
        mem_mb: GUEST_MEM_MB,
        device_args: &devices,
        params: &params,
    };
    Guest::boot_with(&qemu_binary(), &guest_image(), dir.path(), name, &spec)
}

/// `key=value` words of a result line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Feature bits (virtio 1.2 §5.1.3) the guest's driver must have negotiated.
const NEGOTIATED: [(usize, &str); 8] = [
    (0, "CSUM"),
    (1, "GUEST_CSUM"),
    (7, "GUEST_TSO4"),
    (8, "GUEST_TSO6"),
    (11, "HOST_TSO4"),
    (12, "HOST_TSO6"),
    (15, "MRG_RXBUF"),
    (22, "MQ"),
];

/// The guest's `eth0 up` line carries the negotiated features as sysfs prints
/// them: one '0'/'1' per bit, bit 0 first.
fn check_features(guest: &str, line: &str, diag: &str) {
    let bits = field(line, "features").unwrap_or("");
    for (bit, name) in NEGOTIATED {
        assert_eq!(
            bits.as_bytes().get(bit),
            Some(&b'1'),
            "guest {guest} did not negotiate VIRTIO_NET_F_{name}: {line:?}\n{diag}"
        );
    }
}

fn check_offloads(guest: &str, line: &str, diag: &str) {
    for key in [
        "tx-checksumming",
        "rx-checksumming",
        "tcp-segmentation-offload",
    ] {
        assert_eq!(
            field(line, key),
            Some("on"),
            "guest {guest}: {key} is not on: {line:?}\n{diag}"
        );
    }
    assert_eq!(
        field(line, "combined"),
        Some(QUEUES.to_string().as_str()),
        "guest {guest} does not use {QUEUES} queue pairs: {line:?}\n{diag}"
    );
}

#[test]
fn two_multiqueue_guests_run_iperf_both_ways_with_offloads_on() {
    let t0 = Instant::now();
    let dir = TestDir::new("vswitchd-iperf").keep_on_panic();
    let vs = Vswitchd::start(dir.path(), CONFIG, &["g1", "g2"]);
    let mut b = boot(
        &dir,
        &vs,
        1,
        "B",
        "fabric.ip=10.0.1.2/24 fabric.role=iperf-serve",
    );
    let mut a = boot(
        &dir,
        &vs,
        0,
        "A",
        &format!(
            "fabric.ip=10.0.1.1/24 fabric.role=iperf fabric.peer=10.0.1.2 \
             fabric.time={IPERF_SECS} fabric.wait=60 fabric.hold=forever"
        ),
    );
    let fail = |what: String, a: &Guest, b: &Guest| -> ! {
        panic!("{what}\n{}\n{}", a.diagnostics(), b.diagnostics())
    };

    for g in [&mut a, &mut b] {
        let up = g
            .wait_for("FABRIC-INFO eth0 up", BOOT)
            .unwrap_or_else(|e| panic!("{e}"));
        check_features(&g.name.clone(), &up, &g.diagnostics());
    }
    let b_offloads = b
        .wait_for("FABRIC-RESULT offloads", BOOT)
        .unwrap_or_else(|e| fail(e, &a, &b));
    check_offloads("B", &b_offloads, &b.diagnostics());
    let a_offloads = a
        .wait_for("FABRIC-RESULT offloads", BOOT)
        .unwrap_or_else(|e| fail(e, &a, &b));
    check_offloads("A", &a_offloads, &a.diagnostics());
    eprintln!("[{:>5.1?}] A: {a_offloads}", t0.elapsed());

    let mut mbits = Vec::new();
    for dir in ["send", "recv"] {
        let line = a
            .wait_for(
                &format!("FABRIC-RESULT iperf {dir}"),
                Duration::from_secs(90),
            )
            .unwrap_or_else(|e| fail(e, &a, &b));
        eprintln!("[{:>5.1?}] A: {line}", t0.elapsed());
        if !line.contains(" ok ") {
            fail(format!("iperf3 {dir} failed: {line:?}"), &a, &b);
        }
        let rate: f64 = field(&line, "mbits")
            .and_then(|m| m.parse().ok())
            .unwrap_or(0.0);
        assert!(rate > 0.0, "iperf3 {dir} moved nothing: {line:?}");
        mbits.push(rate);
    }

    let report = vs.counters();
    for name in ["g1", "g2"] {
        let c = report
            .get(name)
            .unwrap_or_else(|| panic!("no counters for {name}: {report:?}"));
        let mut kv: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
        kv.sort();
        eprintln!("counters {name}: {}", kv.join(" "));
        // Both directions carried bulk TCP: each port received large segments
        // from its guest and passed them intact to the other guest.
        assert!(
            counter(c, "tx_gso_packets") > 0,
            "no large segment reached {name} intact: {c:?}"
        );
        for software in ["gso_segmented", "csum_completed"] {
            assert_eq!(
                counter(c, software),
                0,
                "{name}: the switch did {software} in software although both guests \
                 take every offload: {c:?}"
            );
        }
        // Two queue pairs are counted, and every packet once on one of them.
        for (dir, total) in [("rx", "rx_packets"), ("tx", "tx_packets")] {
            let per_queue: Vec<u64> = (0..QUEUES)
                .map(|q| {
                    let key = format!("q{q}_{dir}_packets");
                    assert!(c.contains_key(&key), "{name}: no {key}: {c:?}");
                    counter(c, &key)
                })
                .collect();
            assert_eq!(
                per_queue.iter().sum::<u64>(),
                counter(c, total),
                "{name}: per-queue {dir} packets {per_queue:?} do not add up to {total}: {c:?}"
            );
        }
        for (k, v) in c.iter() {
            if k.starts_with("drop_") && k != "drop_no_buffer" {
                assert_eq!(counter(c, k), 0, "{name}: {k}={v}: {c:?}");
            }
        }
    }
    eprintln!(
        "iperf3 A->B {:.0} Mbit/s, B->A {:.0} Mbit/s (TCG)",
        mbits[0], mbits[1]
    );

    a.kill();
    b.kill();
    let (status, _) = vs.stop();
    assert!(status.success(), "vswitchd exited with {status}");
    eprintln!("[{:>5.1?}] done", t0.elapsed());
}
