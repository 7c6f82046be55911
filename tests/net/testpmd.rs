//! The real `vswitchd` binary against real third-party vhost-user frontends: DPDK
//! `dpdk-testpmd` with `net_virtio_user` ports (no VM, no hugepages).
//!
//! Each test writes its own fabric.toml into a fresh temp dir, starts vswitchd, attaches
//! two testpmd processes (A sends, B counts) and checks exact frame counts on both sides
//! of the switch: testpmd's port statistics and vswitchd's SIGUSR1/SIGTERM counters.
//!
//! These tests fail (never skip) when dpdk-testpmd is missing: run
//! scripts/install-test-deps.sh.

use test_kit::testpmd as testpmd_support;

use std::time::Duration;

use test_kit::serial;
use testpmd_support::{Lcores, Report, TestDir, Testpmd, Vswitchd};

// Each testpmd busy-polls a CPU: the tests take the kit's `serial` lock, one at
// a time on a 2-core machine.

const MAC_A: &str = "02:00:00:00:00:0a";
const MAC_B: &str = "02:00:00:00:00:0b";
/// Frames A sends per `start tx_first` (one burst).
const BURST: u64 = 32;
/// Bytes of one txonly frame as testpmd and vswitchd count it (no virtio-net header).
const FRAME_LEN: u64 = 64;
/// How long to keep watching for frames that should not arrive.
const QUIET: Duration = Duration::from_millis(500);

/// Two access ports `a` and `b` (sockets a.sock, b.sock next to the config).
fn config(vlan_a: u16, vlan_b: u16) -> String {
    format!(
        r#"[daemon]
run_dir = "."

[[switch]]
name = "br0"

[[switch.port]]
name = "a"
type = "vhost-user"
socket = "a.sock"
vlan = {{ mode = "access", tag = {vlan_a} }}

[[switch.port]]
name = "b"
type = "vhost-user"
socket = "b.sock"
vlan = {{ mode = "access", tag = {vlan_b} }}
"#
    )
}

/// testpmd A: io forwarding towards B's MAC; `start tx_first` sends exactly one burst of
/// BURST frames, then it only forwards what it receives (nothing: B never sends).
/// Its forwarding lcore runs on CPU 0.
fn sender(dir: &TestDir, vs: &Vswitchd, name: &str) -> Testpmd {
    Testpmd::virtio_user(
        dir,
        name,
        Lcores { fwd_cpu: 0 },
        &[(vs.socket(0), MAC_A)],
        &[
            "--forward-mode=io",
            &format!("--burst={BURST}"),
            &format!("--eth-peer=0,{MAC_B}"),
        ],
    )
}

/// testpmd B: rxonly on CPU 1, started (polling) when this returns.
fn receiver(dir: &TestDir, vs: &Vswitchd, name: &str) -> Testpmd {
    let mut b = Testpmd::virtio_user(
        dir,
        name,
        Lcores { fwd_cpu: 1 },
        &[(vs.socket(1), MAC_B)],
        &["--forward-mode=rxonly"],
    );
    b.start();
    b
}

fn assert_no_drops(r: &Report) {
    for p in ["a", "b"] {
        assert_eq!(
            r.port(p).drops(),
            0,
            "port {p} dropped frames:\n{}",
            r.lines.join("\n")
        );
    }
}

/// Same VLAN: every frame A sends reaches B, and all four counts agree exactly.
#[test]
fn same_vlan_exact_counts() {
    let _serial = serial();
    let dir = TestDir::new("same");
    let mut vs = Vswitchd::start(&dir, &config(10, 10), &["a.sock", "b.sock"]);
    let mut b = receiver(&dir, &vs, "b");
    let mut a = sender(&dir, &vs, "a");
    vs.wait_link("a", true);
    vs.wait_link("b", true);

    a.start_tx_first(1);
    b.wait_stats(0, "B to receive A's burst", |s| s.rx_packets >= BURST);
    a.stop();
    std::thread::sleep(QUIET);

    let sa = a.port_stats(0);
    let sb = b.port_stats(0);
    let r = vs.counters();
    let (ca, cb) = (r.port("a"), r.port("b"));
    assert_eq!(sa.tx_packets, BURST, "A sent one burst: {sa:?}");
    assert_eq!(
        sb.rx_packets, sa.tx_packets,
        "B received != A sent: A {sa:?} B {sb:?}"
    );
    assert_eq!(
        ca.rx_packets(),
        sa.tx_packets,
        "vswitchd rx on a != A sent\n{}",
        r.lines.join("\n")
    );
    assert_eq!(
        cb.tx_packets(),
        sb.rx_packets,
        "vswitchd tx on b != B received\n{}",
        r.lines.join("\n")
    );
    assert_eq!(ca.get("rx_bytes"), BURST * FRAME_LEN);
    assert_eq!(cb.get("tx_bytes"), BURST * FRAME_LEN);
    assert_eq!(sb.rx_bytes, BURST * FRAME_LEN);
    // Nothing went the other way.
    assert_eq!(sa.rx_packets, 0, "A received frames: {sa:?}");
    assert_eq!(cb.rx_packets(), 0);
    assert_eq!(ca.tx_packets(), 0);
    assert_eq!(sb.rx_missed + sb.rx_nombuf, 0, "B lost frames: {sb:?}");
    assert_no_drops(&r);

    b.stop();
    a.quit();
    b.quit();
    // The final report at SIGTERM carries the same numbers.
    let fin = vs.stop();
    assert_eq!(fin.port("a").rx_packets(), BURST);
    assert_eq!(fin.port("b").tx_packets(), BURST);
    assert!(
        !fin.port("a").link_up && !fin.port("b").link_up,
        "links still up after both peers quit"
    );
}

/// Different VLANs: A's frames enter the switch and go nowhere.
#[test]
fn different_vlans_isolated() {
    let _serial = serial();
    let dir = TestDir::new("iso");
    let mut vs = Vswitchd::start(&dir, &config(10, 20), &["a.sock", "b.sock"]);
    let mut b = receiver(&dir, &vs, "b");
    let mut a = sender(&dir, &vs, "a");
    vs.wait_link("a", true);
    vs.wait_link("b", true);

    a.start_tx_first(1);
    vs.wait_counters("vswitchd to receive A's burst", |r| {
        r.port("a").rx_packets() >= BURST
    });
    a.stop();
    std::thread::sleep(QUIET);

    let sa = a.port_stats(0);
    let sb = b.port_stats(0);
    let r = vs.counters();
    assert_eq!(sa.tx_packets, BURST, "A sent one burst: {sa:?}");
    assert_eq!(r.port("a").rx_packets(), BURST, "{}", r.lines.join("\n"));
    assert_eq!(
        sb.rx_packets, 0,
        "B (VLAN 20) received VLAN 10 frames: {sb:?}"
    );
    assert_eq!(r.port("b").tx_packets(), 0, "{}", r.lines.join("\n"));
    assert_eq!(r.port("a").tx_packets(), 0);
    assert_eq!(sa.rx_packets, 0);

    b.stop();
    a.quit();
    b.quit();
    let fin = vs.stop();
    assert_eq!(fin.port("a").rx_packets(), BURST);
    assert_eq!(fin.port("b").tx_packets(), 0);
}

/// B crashes (SIGKILL) and a new testpmd attaches to the same socket of the running
/// daemon: forwarding resumes, and frames sent while B was away are not delivered late.
#[test]
fn receiver_restart_resumes_forwarding() {
    let _serial = serial();
    let dir = TestDir::new("restart");
    let mut vs = Vswitchd::start(&dir, &config(10, 10), &["a.sock", "b.sock"]);
    let mut b1 = receiver(&dir, &vs, "b1");
    let mut a = sender(&dir, &vs, "a");
    vs.wait_link("a", true);
    vs.wait_link("b", true);

    // 1. Before the restart.
    a.start_tx_first(1);
    b1.wait_stats(0, "B1 to receive A's first burst", |s| {
        s.rx_packets >= BURST
    });
    a.stop();
    std::thread::sleep(QUIET);
    assert_eq!(b1.port_stats(0).rx_packets, BURST);

    // 2. B dies without a goodbye; the daemon notices and keeps serving.
    b1.kill();
    vs.wait_link("b", false);

    // 3. A sends while B is away: the switch takes the frames and drops them.
    a.start_tx_first(1);
    vs.wait_counters("vswitchd to receive A's second burst", |r| {
        r.port("a").rx_packets() >= 2 * BURST
    });
    a.stop();
    let r = vs.counters();
    assert_eq!(
        r.port("b").tx_packets(),
        BURST,
        "delivered to a port with no peer:\n{}",
        r.lines.join("\n")
    );

    // 4. A new B on the same socket.
    let mut b2 = receiver(&dir, &vs, "b2");
    vs.wait_link("b", true);
    std::thread::sleep(QUIET);
    assert_eq!(b2.port_stats(0).rx_packets, 0, "B2 received stale frames");

    a.start_tx_first(1);
    b2.wait_stats(0, "B2 to receive A's third burst", |s| {
        s.rx_packets >= BURST
    });
    a.stop();
    std::thread::sleep(QUIET);

    let sa = a.port_stats(0);
    let sb2 = b2.port_stats(0);
    let r = vs.counters();
    assert_eq!(sa.tx_packets, 3 * BURST, "{sa:?}");
    assert_eq!(sb2.rx_packets, BURST, "B2 after restart: {sb2:?}");
    assert_eq!(
        r.port("a").rx_packets(),
        3 * BURST,
        "{}",
        r.lines.join("\n")
    );
    assert_eq!(
        r.port("b").tx_packets(),
        2 * BURST,
        "{}",
        r.lines.join("\n")
    );

    b2.stop();
    a.quit();
    b2.quit();
    let fin = vs.stop();
    assert_eq!(fin.port("a").rx_packets(), 3 * BURST);
    assert_eq!(fin.port("b").tx_packets(), 2 * BURST);
}

/// A frontend that leaves while frames are in flight (testpmd io loop through both ports,
/// then `quit`) must leave the daemon idle, and SIGTERM must still stop it promptly.
///
/// vswitchd is pinned to CPU 0 (the peer forwards on CPU 1), which makes the race likely.
/// Regression test: the TX worker used to spin forever in `tx::drain` once the frontend
/// stopped the queue with avail entries still pending, so the port never accepted a new
/// frontend and shutdown joined that worker forever.
#[test]
fn peer_leaves_under_load_daemon_stays_responsive() {
    let _serial = serial();
    let dir = TestDir::new("leave");
    for round in 0..3 {
        let mut vs = Vswitchd::start_on(&dir, &config(10, 10), &["a.sock", "b.sock"], Some(0));
        let mut peer = Testpmd::virtio_user(
            &dir,
            &format!("loop{round}"),
            Lcores { fwd_cpu: 1 },
            &[(vs.socket(0), MAC_A), (vs.socket(1), MAC_B)],
            &[
                "--forward-mode=io",
                &format!("--eth-peer=0,{MAC_B}"),
                &format!("--eth-peer=1,{MAC_A}"),
            ],
        );
        vs.wait_link("a", true);
        vs.wait_link("b", true);
        peer.start_tx_first(1);
        vs.wait_counters("frames looping through the switch", |r| {
            r.port("b").tx_packets() > 100_000
        });
        peer.quit();
        vs.wait_link("a", false);
        vs.wait_link("b", false);

        std::thread::sleep(Duration::from_millis(500));
        let t0 = vs.cpu_time();
        std::thread::sleep(Duration::from_secs(1));
        let busy = vs.cpu_time() - t0;
        assert!(
            busy < Duration::from_millis(300),
            "round {round}: vswitchd used {busy:?} of CPU in 1 s with no frontend attached"
        );
        vs.stop();
    }
}

/// Queue pairs of each port in the multi-queue test.
const PAIRS: u16 = 2;

/// Two access ports in VLAN 10 with `PAIRS` queue pairs each, on two
/// datapath threads (so the pairs of one port run on both).
fn mq_config() -> String {
    format!(
        r#"[daemon]
run_dir = "."
datapath_threads = 2

[[switch]]
name = "br0"

[[switch.port]]
name = "a"
type = "vhost-user"
socket = "a.sock"
queues = {PAIRS}
vlan = {{ mode = "access", tag = 10 }}

[[switch.port]]
name = "b"
type = "vhost-user"
socket = "b.sock"
queues = {PAIRS}
vlan = {{ mode = "access", tag = 10 }}
"#
    )
}

/// A multi-queue sender on `a.sock`: io forwarding towards B with `PAIRS`
/// pairs; `start tx_first` sends one burst on each TX queue. `flows`: each
/// frame of a burst from another source address (`--txonly-multi-flow`), or
/// all of them one flow.
fn mq_sender(dir: &TestDir, vs: &Vswitchd, name: &str, flows: bool) -> Testpmd {
    let mut args = vec![
        "--forward-mode=io".to_owned(),
        format!("--burst={BURST}"),
        format!("--eth-peer=0,{MAC_B}"),
    ];
    if flows {
        args.push("--txonly-multi-flow".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Testpmd::virtio_user_queues(
        dir,
        name,
        Lcores { fwd_cpu: 0 },
        &[(vs.socket(0), MAC_A)],
        PAIRS,
        &args,
    )
}

/// Per-queue packets of port `p` in a report: (`qN_rx_packets`, `qN_tx_packets`) by N.
fn queue_counts(r: &Report, p: &str) -> Vec<(u64, u64)> {
    (0..PAIRS)
        .map(|q| {
            let c = r.port(p);
            (
                c.get(&format!("q{q}_rx_packets")),
                c.get(&format!("q{q}_tx_packets")),
            )
        })
        .collect()
}

/// `net_virtio_user` with two queue pairs on both ports: both pairs forward.
/// A sends one burst on each of its TX queues; vswitchd counts each burst on
/// its queue of port a, spreads the flows over both RX queues of b by flow
/// hash, and testpmd B's per-queue counters equal vswitchd's exactly. Then a
/// single-flow sender: every frame of the flow lands on one RX queue of B.
#[test]
fn two_queue_pairs_forward_on_both_pairs() {
    let _serial = serial();
    let dir = TestDir::new("mq");
    let mut vs = Vswitchd::start(&dir, &mq_config(), &["a.sock", "b.sock"]);
    let mut b = Testpmd::virtio_user_queues(
        &dir,
        "b",
        Lcores { fwd_cpu: 1 },
        &[(vs.socket(1), MAC_B)],
        PAIRS,
        &["--forward-mode=rxonly"],
    );
    b.start();
    let mut a = mq_sender(&dir, &vs, "a", true);
    vs.wait_link("a", true);
    vs.wait_link("b", true);

    // 1. Many flows: one burst per TX queue of A.
    let sent = u64::from(PAIRS) * BURST;
    a.start_tx_first(1);
    b.wait_stats(0, "B to receive A's bursts", |s| s.rx_packets >= sent);
    a.stop();
    std::thread::sleep(QUIET);

    let xa = a.xstats(0, PAIRS);
    let xb = b.xstats(0, PAIRS);
    let r = vs.counters();
    let log = r.lines.join("\n");
    for q in 0..PAIRS {
        assert_eq!(
            xa[&format!("tx_q{q}_good_packets")],
            BURST,
            "A's TX queue {q}: {xa:?}"
        );
    }
    assert_eq!(r.port("a").rx_packets(), sent, "{log}");
    assert_eq!(r.port("b").tx_packets(), sent, "{log}");
    let (qa, qb) = (queue_counts(&r, "a"), queue_counts(&r, "b"));
    assert_eq!(
        qa,
        vec![(BURST, 0); PAIRS as usize],
        "port a per queue:\n{log}"
    );
    for (q, &(rx, tx)) in qb.iter().enumerate() {
        assert_eq!(rx, 0, "b received on queue {q}:\n{log}");
        assert!(tx > 0, "no flow hashed to b's queue {q}:\n{log}");
        assert_eq!(
            xb[&format!("rx_q{q}_good_packets")],
            tx,
            "B's RX queue {q} != vswitchd's queue {q} of b: {xb:?}\n{log}"
        );
    }
    assert_eq!(qb.iter().map(|q| q.1).sum::<u64>(), sent, "{log}");
    assert_no_drops(&r);

    // 2. One flow (no --txonly-multi-flow), from a new sender on the same
    //    socket: every frame of it lands on one RX queue of b.
    a.quit();
    vs.wait_link("a", false);
    let mut a1 = mq_sender(&dir, &vs, "a1", false);
    vs.wait_link("a", true);
    a1.start_tx_first(1);
    b.wait_stats(0, "B to receive the one-flow bursts", |s| {
        s.rx_packets >= 2 * sent
    });
    a1.stop();
    std::thread::sleep(QUIET);
    let r = vs.counters();
    let log = r.lines.join("\n");
    let after = queue_counts(&r, "b");
    let grew: Vec<u64> = after.iter().zip(&qb).map(|(n, o)| n.1 - o.1).collect();
    assert!(
        grew.contains(&sent) && grew.iter().sum::<u64>() == sent,
        "one flow spread over b's queues: {grew:?}\n{log}"
    );
    let xb = b.xstats(0, PAIRS);
    for (q, &(_, tx)) in after.iter().enumerate() {
        assert_eq!(xb[&format!("rx_q{q}_good_packets")], tx, "{xb:?}\n{log}");
    }
    assert_no_drops(&r);

    b.stop();
    a1.quit();
    b.quit();
    let fin = vs.stop();
    assert_eq!(fin.port("b").tx_packets(), 2 * sent);
}
