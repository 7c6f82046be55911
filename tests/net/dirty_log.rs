//! The dirty log of a live migration on net ports, in process: the test
//! plays QEMU (`test_kit::frontend::dirty_log`) and checks that exactly the
//! guest pages the switch wrote are marked: the receiver's RX buffers and
//! used ring, the sender's TX used ring; never what the device only reads.

use std::collections::BTreeSet;
use std::ops::Range;
use test_kit::frontend as support;

use support::dirty_log::{pages, pages_of, FrontendLog, LOG_PAGE};
use support::fabric::{wait_for, Fabric, WAIT};
use support::frames::{payload, ETHERTYPE_TEST};
use support::{eth, mac, GuestNic, NicOptions};
use vswitch::DropReason;

const ACCESS10: &str = "{ mode = \"access\", tag = 10 }";

/// A guest with 1024-entry rings (see below) that hands over a dirty log.
fn logging_nic() -> NicOptions {
    NicOptions {
        dirty_log: true,
        queue_size: 1024,
        ..Default::default()
    }
}

/// Sends `frames` p1 -> p2, waits for all of them and for their TX chains.
fn send_all(p1: &mut GuestNic, p2: &mut GuestNic, frames: &[Vec<u8>]) {
    for f in frames {
        assert!(p1.send(f));
    }
    for (i, f) in frames.iter().enumerate() {
        let got = p2.recv(WAIT);
        assert!(
            got.as_deref() == Some(&f[..]),
            "frame {i} did not arrive intact"
        );
    }
    assert!(p1.wait_tx_completed(WAIT));
}

#[test]
fn exactly_the_pages_the_switch_writes_are_marked_while_logging() {
    // Jumbo frames, so that one spans two receive buffers.
    let jumbo = "mtu = 9000";
    let f = Fabric::start_with("", "", &[("p1", ACCESS10, jumbo), ("p2", ACCESS10, jumbo)]);
    let mut p1 = f.connect_with("p1", logging_nic());
    let mut p2 = f.connect_with("p2", logging_nic());
    let (m1, m2) = (mac(1), mac(2));
    // Both stations learned, so p1 -> p2 goes to p2 only.
    assert!(p2.send(&eth(m1, m2, ETHERTYPE_TEST, &payload(0, 60))));
    assert!(p1.recv(WAIT).is_some());
    assert!(p2.wait_tx_completed(WAIT));
    p2.take_rx_landed();

    let (log1, log2) = (
        FrontendLog::new(p1.mem_size()).unwrap(),
        FrontendLog::new(p2.mem_size()).unwrap(),
    );
    log1.start(&p1.frontend(), p1.negotiated_features())
        .unwrap();
    log2.start(&p2.frontend(), p2.negotiated_features())
        .unwrap();
    // Whatever enabling caught (notification settings) is not this test's.
    log1.take();
    log2.take();

    // A small frame, a full one, and one that spans two 2 KiB buffers
    // (mergeable), each with its 12-byte header.
    let frames: Vec<Vec<u8>> = [60usize, 1500, 3000]
        .iter()
        .enumerate()
        .map(|(i, &len)| eth(m2, m1, ETHERTYPE_TEST, &payload(i as u32 + 1, len)))
        .collect();
    send_all(&mut p1, &mut p2, &frames);
    let landed = p2.take_rx_landed();
    assert_eq!(landed.len(), 4, "one buffer each, two for the last frame");
    let (p1_rx, p1_tx) = p1.ring_areas();
    let (p2_rx, p2_tx) = p2.ring_areas();
    // Once idle, the datapath thread asks p1 for kicks again: avail_event
    // (the TX used ring's last two bytes) becomes p1's avail index.
    let avail_event = |nic: &GuestNic, used: &Range<u64>| {
        let mut b = [0u8; 2];
        nic.ram().read(used.end - 2, &mut b).unwrap();
        u16::from_le_bytes(b)
    };
    wait_for("p1's TX queue re-armed", || {
        avail_event(&p1, &p1_tx.used) == p1.tx_avail_idx()
    });
    let (m1_pages, m2_pages) = (log1.take(), log2.take());
    // With 1024 entries a used ring spans three pages: the first holds the
    // index and the elements published here, the last `avail_event`, which
    // the device writes when it asks for kicks (EVENT_IDX), as a datapath
    // thread does for its queues before it sleeps.
    let first = |r: &Range<u64>| r.start / LOG_PAGE;
    let last = |r: &Range<u64>| (r.end - 1) / LOG_PAGE;
    assert_eq!(last(&p1_tx.used) - first(&p1_tx.used), 2);
    let written: BTreeSet<u64> = landed
        .iter()
        .flat_map(|&(gpa, len)| pages(gpa, u64::from(len)))
        .collect();
    // The receiver: its RX buffers as written and its RX used ring; its TX
    // used ring's avail_event if the thread re-armed its queue already.
    let mut must = written.clone();
    must.insert(first(&p2_rx.used));
    let may: BTreeSet<u64> = &must | &[last(&p2_tx.used)].into();
    assert!(
        m2_pages.is_superset(&must) && m2_pages.is_subset(&may),
        "receiver: marked {m2_pages:?}, must {must:?}, may {may:?}"
    );
    // The sender: its TX used ring's index and elements, and avail_event.
    let sender = BTreeSet::from([first(&p1_tx.used), last(&p1_tx.used)]);
    assert_eq!(m1_pages, sender, "sender");
    // Spelled out: what the device only reads is never marked.
    let p2_rx_rest = pages_of([&p2.rx_buffer_area()]);
    let never2 = pages_of([&p2_rx.desc, &p2_rx.avail, &p2_tx.desc, &p2_tx.avail]);
    assert!(m2_pages.is_disjoint(&never2));
    assert!(m2_pages.is_disjoint(&(&p2_rx_rest - &written)));
    let never1 = pages_of([
        &p1_tx.desc,
        &p1_tx.avail,
        &p1.tx_buffer_area(),
        &p1_rx.desc,
        &p1_rx.avail,
    ]);
    assert!(m1_pages.is_disjoint(&never1));

    // Logging off (migration cancelled): the same traffic marks nothing.
    log1.stop(&p1.frontend(), p1.negotiated_features()).unwrap();
    log2.stop(&p2.frontend(), p2.negotiated_features()).unwrap();
    log1.take();
    log2.take();
    send_all(&mut p1, &mut p2, &frames);
    assert_eq!(log1.take(), BTreeSet::new(), "sender, logging off");
    assert_eq!(log2.take(), BTreeSet::new(), "receiver, logging off");
    assert_eq!(f.counters("p1").total_drops(), 0);
}

/// A bigger log (memory hotplug) replaces the first: marks go to it only.
#[test]
fn a_new_log_takes_over_from_the_old() {
    let f = Fabric::start("", &[("q1", ACCESS10), ("q2", ACCESS10)]);
    let mut q1 = f.connect_with("q1", logging_nic());
    let mut q2 = f.connect_with("q2", logging_nic());
    let old = FrontendLog::new(q2.mem_size()).unwrap();
    old.start(&q2.frontend(), q2.negotiated_features()).unwrap();
    let new = FrontendLog::new(2 * q2.mem_size()).unwrap();
    new.set_base(&q2.frontend()).unwrap();
    old.take();
    new.take();
    let frame = eth(support::BROADCAST, mac(1), ETHERTYPE_TEST, &payload(1, 500));
    send_all(&mut q1, &mut q2, &[frame]);
    let landed = q2.take_rx_landed();
    assert_eq!(
        old.take(),
        BTreeSet::new(),
        "the old log is no longer marked"
    );
    let marked = new.take();
    for &(gpa, len) in &landed {
        assert!(marked.is_superset(&pages(gpa, u64::from(len))));
    }
    // The RX used ring's index and first elements.
    assert!(marked.contains(&(q2.ring_areas().0.used.start / LOG_PAGE)));
}

/// Once GET_VRING_BASE stopped a guest's rings, nothing writes them any
/// more: not a delivery into its receive queue, not the datapath thread
/// asking for kicks (`avail_event`, the used flags) when it goes to sleep.
/// Nothing is marked in its log and sentinels in its used rings stay.
#[test]
fn a_stopped_ring_is_never_written() {
    let f = Fabric::start("", &[("s1", ACCESS10), ("s2", ACCESS10)]);
    let mut s1 = f.connect_with("s1", logging_nic());
    let mut s2 = f.connect_with("s2", logging_nic());
    let frame = |seq| {
        eth(
            support::BROADCAST,
            mac(2),
            ETHERTYPE_TEST,
            &payload(seq, 100),
        )
    };
    send_all(&mut s2, &mut s1, &[frame(1)]);
    let (log1, log2) = (
        FrontendLog::new(s1.mem_size()).unwrap(),
        FrontendLog::new(s2.mem_size()).unwrap(),
    );
    log1.start(&s1.frontend(), s1.negotiated_features())
        .unwrap();
    log2.start(&s2.frontend(), s2.negotiated_features())
        .unwrap();
    s1.stop().unwrap();
    log1.take();
    log2.take();
    let (rx, tx) = s1.ring_areas();
    const SENTINEL: [u8; 2] = [0xef, 0xbe];
    let spots = [
        rx.used.start,
        rx.used.end - 2,
        tx.used.start,
        tx.used.end - 2,
    ];
    for &at in &spots {
        s1.ram().write(at, &SENTINEL).unwrap();
    }

    // Frames for s1 (a flood: it gets a copy), which wake the datapath
    // thread that serves both ports; once idle again it asks every queue
    // of its own for kicks, s2's TX queue (avail_event, marked) as well as
    // s1's stopped ones.
    for seq in 2..5 {
        assert!(s2.send(&frame(seq)));
    }
    assert!(s2.wait_tx_completed(WAIT));
    let s2_avail_event = (s2.ring_areas().1.used.end - 1) / LOG_PAGE;
    let mut s2_marked = BTreeSet::new();
    wait_for("the datapath thread asking for kicks again", || {
        s2_marked.extend(log2.take());
        s2_marked.contains(&s2_avail_event)
    });
    assert_eq!(log1.take(), BTreeSet::new(), "s1's memory was written");
    for &at in &spots {
        let mut b = [0u8; 2];
        s1.ram().read(at, &mut b).unwrap();
        assert_eq!(b, SENTINEL, "s1's used ring at {at:#x} was written");
    }
    assert_eq!(f.counters("s1").dropped(DropReason::NoBuffer), 3);
}
