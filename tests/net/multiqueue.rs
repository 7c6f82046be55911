//! Multi-queue vhost-user-net ports in process: the harness (`GuestNic` with
//! `queue_pairs = 2`) plays QEMU's part, which keeps the control queue and
//! tells the backend the pairs in use with SET_VRING_ENABLE. Which receive
//! queue a frame lands on, per flow, and what a disabled pair gets.

use test_kit::frontend as support;

use std::collections::BTreeMap;
use std::time::Duration;
use support::fabric::{wait_for, Fabric, WAIT};
use support::frames::ETHERTYPE_IPV4;
use support::{eth, mac, GuestNic, NicOptions};
use vswitch::DropReason;

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);
const ACCESS10: &str = "{ mode = \"access\", tag = 10 }";
/// Flows sent per round, and frames per flow.
const FLOWS: u16 = 32;
const PER_FLOW: u32 = 4;

/// `src` (one pair) and `mq` (two pairs) on VLAN 10, two datapath threads.
fn start() -> (Fabric, GuestNic, GuestNic) {
    let f = Fabric::start_with(
        "datapath_threads = 2",
        "",
        &[("src", ACCESS10, ""), ("mq", ACCESS10, "queues = 2")],
    );
    let src = f.connect("src");
    let mq = f.connect_with(
        "mq",
        NicOptions {
            queue_pairs: 2,
            ..Default::default()
        },
    );
    (f, src, mq)
}

/// A UDP/IPv4 frame of flow `flow` (its source port) to `mq`, carrying `seq`.
fn udp(flow: u16, seq: u32) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    ip.extend_from_slice(&(40000 + flow).to_be_bytes());
    ip.extend_from_slice(&5001u16.to_be_bytes());
    ip.extend_from_slice(&[0, 12, 0, 0]);
    ip.extend_from_slice(&seq.to_be_bytes());
    eth(mac(2), mac(1), ETHERTYPE_IPV4, &ip)
}

/// (flow, seq) of a frame `udp` built.
fn flow_seq(frame: &[u8]) -> (u16, u32) {
    let flow = u16::from_be_bytes([frame[34], frame[35]]) - 40000;
    let seq = u32::from_be_bytes(frame[42..46].try_into().unwrap());
    (flow, seq)
}

/// Sends PER_FLOW frames of each of FLOWS flows, interleaved, `round` in the seq.
fn send_round(src: &mut GuestNic, round: u32) -> u64 {
    for n in 0..PER_FLOW {
        for flow in 0..FLOWS {
            assert!(src.send(&udp(flow, round * 1000 + n)));
        }
    }
    assert!(src.wait_tx_completed(WAIT));
    u64::from(FLOWS) * u64::from(PER_FLOW)
}

/// Frames received on each pair until QUIET passes with nothing, as (flow, seq).
fn received(mq: &mut GuestNic) -> Vec<Vec<(u16, u32)>> {
    (0..mq.queue_pairs())
        .map(|pair| {
            std::iter::from_fn(|| mq.recv_on(pair, QUIET))
                .map(|f| flow_seq(&f))
                .collect()
        })
        .collect()
}

/// Per-queue tx packets of `mq` in its counters.
fn queue_tx(f: &Fabric) -> Vec<u64> {
    f.counters("mq")
        .queues
        .iter()
        .map(|q| q.tx_packets)
        .collect()
}

/// Flows spread over both receive queues, each flow on one queue in order;
/// a pair the driver disables gets nothing; with both disabled every frame
/// is a `no_buffer` drop; re-enabled, a pair takes frames again. The
/// per-queue counters match what each queue received exactly.
#[test]
fn rx_queue_follows_the_flow_and_only_enabled_pairs() {
    let (f, mut src, mut mq) = start();
    let cfg = mq.config().expect("config space");
    assert_eq!(cfg.max_virtqueue_pairs, 2);
    assert_ne!(
        mq.negotiated_features() & support::virtio_net::features::MQ,
        0
    );

    // 1. Both pairs enabled.
    let sent = send_round(&mut src, 1);
    let got = received(&mut mq);
    let mut queue_of = BTreeMap::new();
    for (pair, frames) in got.iter().enumerate() {
        assert!(!frames.is_empty(), "no flow landed on pair {pair}");
        for &(flow, _) in frames {
            let first = *queue_of.entry(flow).or_insert(pair);
            assert_eq!(first, pair, "flow {flow} on pairs {first} and {pair}");
        }
        for flow in 0..FLOWS {
            let seqs: Vec<u32> = frames.iter().filter(|f| f.0 == flow).map(|f| f.1).collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "flow {flow} reordered: {seqs:?}"
            );
        }
    }
    assert_eq!(queue_of.len(), usize::from(FLOWS), "every flow arrived");
    let counts: Vec<u64> = got.iter().map(|q| q.len() as u64).collect();
    assert_eq!(counts.iter().sum::<u64>(), sent);
    assert_eq!(queue_tx(&f), counts, "per-queue counters");

    // 2. Pair 1 disabled (its RX and TX rings, as QEMU does for
    //    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET 1): everything on pair 0.
    mq.set_vring_enable(2, false).unwrap();
    mq.set_vring_enable(3, false).unwrap();
    let sent2 = send_round(&mut src, 2);
    let got = received(&mut mq);
    assert_eq!(got[0].len() as u64, sent2, "pair 0 takes every flow");
    assert!(
        got[1].is_empty(),
        "disabled pair 1 got {} frames",
        got[1].len()
    );
    assert_eq!(queue_tx(&f), vec![counts[0] + sent2, counts[1]]);

    // 3. Both disabled: the port takes nothing, every frame is no_buffer.
    mq.set_vring_enable(0, false).unwrap();
    let drops = f.counters("mq").dropped(DropReason::NoBuffer);
    let sent3 = send_round(&mut src, 3);
    wait_for("the frames to be dropped as no_buffer", || {
        f.counters("mq").dropped(DropReason::NoBuffer) == drops + sent3
    });
    assert!(received(&mut mq).iter().all(Vec::is_empty));

    // 4. Pair 1 alone enabled again: it takes every flow.
    mq.set_vring_enable(2, true).unwrap();
    mq.set_vring_enable(3, true).unwrap();
    let sent4 = send_round(&mut src, 4);
    let got = received(&mut mq);
    assert!(
        got[0].is_empty(),
        "disabled pair 0 got {} frames",
        got[0].len()
    );
    assert_eq!(got[1].len() as u64, sent4);
    assert_eq!(queue_tx(&f), vec![counts[0] + sent2, counts[1] + sent4]);
    let c = f.counters("mq");
    assert_eq!(c.tx_packets, sent + sent2 + sent4);
    assert_eq!(c.dropped(DropReason::NoBuffer), drops + sent3);
    assert_eq!(c.total_drops(), sent3, "{c:?}");

    // The same per-queue numbers in every rendering of the counters.
    let want = [counts[0] + sent2, counts[1] + sent4];
    let line = f.report_line("counters switch=br0 port=mq ");
    let listed = f.port_listed("mq");
    let metrics = f.metrics();
    for (q, &tx) in want.iter().enumerate() {
        assert!(line.contains(&format!(" q{q}_tx_packets={tx}")), "{line}");
        assert!(line.contains(&format!(" q{q}_rx_packets=0")), "{line}");
        assert_eq!(
            listed["queues"][q]["tx_packets"].as_u64(),
            Some(tx),
            "{listed}"
        );
        let key = format!(
            "vswitchd_port_queue_tx_packets_total{{switch=\"br0\",port=\"mq\",queue=\"{q}\"}}"
        );
        assert_eq!(metrics.get(&key), Some(&(tx as f64)), "{key}");
    }
    // A single-queue port lists no queues.
    assert!(f.port_listed("src").get("queues").is_none());
    let src_line = f.report_line("counters switch=br0 port=src ");
    assert!(!src_line.contains("q0_"), "{src_line}");
}

/// A vring message for a queue the port does not have (pair 2 of a
/// two-pair port) is refused: the daemon ends that session (the
/// `vhost-user-backend` handler answers InvalidParam), stays up, and the
/// socket serves the next frontend, whose both pairs work.
#[test]
fn a_vring_beyond_the_queue_pairs_is_refused_and_the_port_recovers() {
    let (f, mut src, mut mq) = start();
    assert!(
        mq.set_vring_enable(4, true).is_err(),
        "queue 4 of 2 pairs accepted"
    );
    f.wait_link("mq", false);
    drop(mq);
    let mut mq = f.connect_with(
        "mq",
        NicOptions {
            queue_pairs: 2,
            ..Default::default()
        },
    );
    let sent = send_round(&mut src, 1);
    let got = received(&mut mq);
    assert!(got.iter().all(|q| !q.is_empty()), "both pairs take flows");
    assert_eq!(got.iter().map(|q| q.len() as u64).sum::<u64>(), sent);
}
