//! Ingress policing of a port (`rate`, `burst`): frames over the rate are
//! dropped and counted `policed` (port counters, `port.list`, `/metrics`);
//! every frame sent is either delivered or policed, exactly.

use test_kit::frontend as support;

use std::time::Duration;
use support::fabric::{Fabric, WAIT};
use support::frames::{payload, ETHERTYPE_TEST};
use support::{eth, mac, GuestNic, BROADCAST};
use vswitch::DropReason;

const ACCESS10: &str = "{ mode = \"access\", tag = 10 }";
/// Frames sent each time: more than the policer's burst lets through.
const FRAMES: u64 = 2000;

/// Sends `FRAMES` broadcast frames from `from` as fast as the ring takes
/// them, receiving what reaches `to` after each batch (so `to` never runs
/// out of buffers); returns how many `to` received.
fn blast(from: &mut GuestNic, to: &mut GuestNic, seq: u32) -> u64 {
    let frames: Vec<Vec<u8>> = (0..64)
        .map(|i| eth(BROADCAST, mac(1), ETHERTYPE_TEST, &payload(seq + i, 100)))
        .collect();
    let mut sent = 0u64;
    let mut received = 0u64;
    while sent < FRAMES {
        let n = (FRAMES - sent).min(64) as usize;
        let batch: Vec<&[u8]> = frames[..n].iter().map(Vec::as_slice).collect();
        let posted = from.send_batch(&batch);
        sent += posted as u64;
        // Every frame of a batch is forwarded before its chain is returned.
        assert!(
            from.wait_tx_completed(WAIT),
            "the switch returns the chains"
        );
        while to.try_recv().is_some() {
            received += 1;
        }
    }
    // Nothing else is on its way.
    while to.recv(Duration::from_millis(100)).is_some() {
        received += 1;
    }
    received
}

#[test]
fn a_policed_port_delivers_or_counts_every_frame() {
    // 1 Mbit/s with a 16 kbit burst: about 17 frames of 114 bytes at once,
    // then one every 0.9 ms.
    let f = Fabric::start_with(
        "",
        "",
        &[
            ("p1", ACCESS10, "rate = 1000\nburst = 16"),
            ("p2", ACCESS10, ""),
        ],
    );
    let (mut p1, mut p2) = (f.connect("p1"), f.connect("p2"));
    assert_eq!(f.port_listed("p1")["rate"], 1000);
    assert_eq!(f.port_listed("p1")["burst"], 16);

    let delivered = blast(&mut p1, &mut p2, 0);
    let c = f.counters("p1");
    let policed = c.dropped(DropReason::Policed);
    eprintln!("{delivered} delivered, {policed} policed of {FRAMES}");
    assert_eq!(delivered + policed, FRAMES);
    assert!(policed > 0, "nothing policed at 1 Mbit/s");
    assert_eq!(c.rx_packets, FRAMES, "policed frames were received");
    assert_eq!(c.total_drops(), policed, "no other drop");
    assert_eq!(f.port_listed("p1")["drops"]["policed"], policed);
    let key = "vswitchd_port_drops_total{switch=\"br0\",port=\"p1\",reason=\"policed\"}";
    assert_eq!(f.metrics().get(key), Some(&(policed as f64)), "{key}");
    // The receiver was not policed: it only receives.
    assert_eq!(f.counters("p2").dropped(DropReason::Policed), 0);

    // A rate and burst this blast never exceeds (a 1 Gbit burst holds a
    // million of these frames): nothing more is policed.
    let rt = f.daemon().runtime();
    let args = serde_json::json!({"name": "p1", "rate": 10_000_000, "burst": 1_000_000});
    let info = fabric::control::ops::dispatch(rt, "port.limit", &args).expect("port.limit");
    assert_eq!(info["rate"], 10_000_000);
    let delivered = blast(&mut p1, &mut p2, 10_000);
    assert_eq!(delivered, FRAMES);
    assert_eq!(f.counters("p1").dropped(DropReason::Policed), policed);

    // No policing at all.
    let args = serde_json::json!({"name": "p1"});
    let info = fabric::control::ops::dispatch(rt, "port.limit", &args).expect("port.limit");
    assert!(info.get("rate").is_none(), "{info}");
    assert_eq!(blast(&mut p1, &mut p2, 20_000), FRAMES);
    assert_eq!(f.counters("p1").dropped(DropReason::Policed), policed);
}
