//! The switch end to end, in process: the test plays the VMM with the `vhost`
//! crate's frontend over memfd guest memory (`test-kit/src/frontend`) against the real
//! daemon code (`fabric::Daemon`), one `GuestNic` per port.

use test_kit::frontend as support;

use std::time::Duration;
use support::fabric::{Fabric, WAIT};
use support::frames::{payload, vid_of, ETHERTYPE_TEST};
use support::smol::{ping, tcp_transfer, Endpoint};
use support::virtio_net::VNET_HDR_LEN;
use support::{eth, mac, tagged, GuestNic, NicOptions, RawDesc, BROADCAST};
use vswitch::DropReason;

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

fn frame(dst: [u8; 6], src: [u8; 6], seq: u32) -> Vec<u8> {
    eth(dst, src, ETHERTYPE_TEST, &payload(seq, 100))
}

/// Everything `nic` receives within QUIET.
fn drain(nic: &mut GuestNic) -> Vec<Vec<u8>> {
    nic.recv_all(QUIET)
}

const ACCESS10: &str = "{ mode = \"access\", tag = 10 }";
const ACCESS20: &str = "{ mode = \"access\", tag = 20 }";
const TRUNK: &str = "{ mode = \"trunk\", allowed = [10, 20], native = 30 }";

/// p1, p2 on access VLAN 10, p3 on access VLAN 20, t a trunk of 10 and 20
/// (native 30), all connected.
fn two_vlans_and_a_trunk() -> (Fabric, [GuestNic; 4]) {
    let names = ["p1", "p2", "p3", "t"];
    let f = Fabric::start(
        "",
        &[
            (names[0], ACCESS10),
            (names[1], ACCESS10),
            (names[2], ACCESS20),
            (names[3], TRUNK),
        ],
    );
    let nics = names.map(|n| f.connect(n));
    (f, nics)
}

#[test]
fn unicast_is_learned_and_floods_stay_in_the_vlan() {
    let (f, [mut p1, mut p2, mut p3, mut t]) = two_vlans_and_a_trunk();
    let (m1, m2) = (mac(1), mac(2));

    // Broadcast from p1: p2 untagged, the trunk tagged 10, p3 (VLAN 20) nothing.
    let bc = frame(BROADCAST, m1, 1);
    assert!(p1.send(&bc));
    assert_eq!(p2.recv(WAIT).as_deref(), Some(&bc[..]));
    let on_trunk = t.recv(WAIT).expect("trunk gets the flood");
    assert_eq!(vid_of(&on_trunk), Some(10));
    assert_eq!(&on_trunk[16..], &bc[12..], "payload intact after tagging");
    assert!(
        drain(&mut p3).is_empty(),
        "VLAN 20 must not see VLAN 10's broadcast"
    );
    assert_eq!(f.fdb_port_of(10, m1).as_deref(), Some("p1"));

    // p2 answers p1: learned, so only p1 gets it.
    let reply = frame(m1, m2, 2);
    assert!(p2.send(&reply));
    assert_eq!(p1.recv(WAIT).as_deref(), Some(&reply[..]));
    assert!(
        drain(&mut t).is_empty(),
        "known unicast goes to one port only"
    );
    assert!(drain(&mut p3).is_empty());

    // And p1 -> p2 is now unicast too.
    let uni = frame(m2, m1, 3);
    assert!(p1.send(&uni));
    assert_eq!(p2.recv(WAIT).as_deref(), Some(&uni[..]));
    assert!(drain(&mut t).is_empty());

    // Unknown unicast floods within the VLAN only, never back to the sender.
    let unknown = frame(mac(99), m1, 4);
    assert!(p1.send(&unknown));
    assert_eq!(p2.recv(WAIT).as_deref(), Some(&unknown[..]));
    assert_eq!(vid_of(&t.recv(WAIT).unwrap()), Some(10));
    assert!(drain(&mut p3).is_empty());
    assert!(
        drain(&mut p1).is_empty(),
        "never back out of the ingress port"
    );

    let c1 = f.counters("p1");
    assert_eq!((c1.rx_packets, c1.tx_packets, c1.total_drops()), (3, 1, 0));
    assert_eq!(c1.rx_bytes, 3 * bc.len() as u64);
    let c2 = f.counters("p2");
    assert_eq!((c2.rx_packets, c2.tx_packets), (1, 3));
    assert_eq!(f.counters("p3").tx_packets, 0);
    assert_eq!(f.counters("t").tx_bytes, 2 * (bc.len() as u64 + 4));
}

#[test]
fn vlan_isolation_and_no_hopping() {
    let (f, [mut p1, mut p2, mut p3, mut t]) = two_vlans_and_a_trunk();

    // A guest on an access port tags its frame for VLAN 20: dropped, counted.
    assert!(p1.send(&tagged(
        BROADCAST,
        mac(1),
        20,
        ETHERTYPE_TEST,
        &payload(1, 100)
    )));
    assert!(p1.send(&tagged(
        BROADCAST,
        mac(1),
        10,
        ETHERTYPE_TEST,
        &payload(2, 100)
    )));
    assert!(drain(&mut p3).is_empty());
    assert!(drain(&mut p2).is_empty());
    assert!(drain(&mut t).is_empty());
    assert_eq!(f.counters("p1").dropped(DropReason::TaggedOnAccess), 2);

    // The trunk reaches VLAN 20 tagged: p3 gets it untagged, VLAN 10 nothing.
    let payload20 = payload(3, 100);
    assert!(t.send(&tagged(BROADCAST, mac(7), 20, ETHERTYPE_TEST, &payload20)));
    assert_eq!(
        p3.recv(WAIT),
        Some(eth(BROADCAST, mac(7), ETHERTYPE_TEST, &payload20))
    );
    assert!(drain(&mut p1).is_empty());
    assert!(drain(&mut p2).is_empty());

    // VLAN not on the trunk: dropped. Untagged goes to the native VLAN 30 (no one else).
    assert!(t.send(&tagged(
        BROADCAST,
        mac(7),
        99,
        ETHERTYPE_TEST,
        &payload(4, 100)
    )));
    assert!(t.send(&frame(BROADCAST, mac(7), 5)));
    for nic in [&mut p1, &mut p2, &mut p3] {
        assert!(drain(nic).is_empty());
    }
    let ct = f.counters("t");
    assert_eq!(ct.dropped(DropReason::VlanNotAllowed), 1);
    assert_eq!(ct.rx_packets, 3);

    // The same MAC in two VLANs is two stations.
    assert!(p1.send(&frame(BROADCAST, mac(42), 6)));
    assert!(p3.send(&frame(BROADCAST, mac(42), 7)));
    assert!(p1.wait_tx_completed(WAIT) && p3.wait_tx_completed(WAIT));
    assert_eq!(f.fdb_port_of(10, mac(42)).as_deref(), Some("p1"));
    assert_eq!(f.fdb_port_of(20, mac(42)).as_deref(), Some("p3"));
}

#[test]
fn stations_age_out() {
    let f = Fabric::start(
        "mac_aging_secs = 10",
        &[("p1", ACCESS10), ("p2", ACCESS10), ("p3", ACCESS10)],
    );
    let (mut p1, mut p2, mut p3) = (f.connect("p1"), f.connect("p2"), f.connect("p3"));
    assert!(p2.send(&frame(BROADCAST, mac(2), 1)));
    p1.recv(WAIT).unwrap();
    p3.recv(WAIT).unwrap();
    assert!(p1.send(&frame(mac(2), mac(1), 2)));
    assert!(p2.recv(WAIT).is_some());
    assert!(drain(&mut p3).is_empty(), "learned: unicast");
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(
        f.fdb_port_of(10, mac(2)),
        None,
        "aged out after 10 s of silence"
    );
    assert!(f.daemon().switch("br0").unwrap().fdb().stats().aged >= 1);
    assert!(p1.send(&frame(mac(2), mac(1), 3)));
    assert!(p2.recv(WAIT).is_some());
    assert!(p3.recv(WAIT).is_some(), "unknown again: flooded");
}

#[test]
fn station_moves_follow_the_first_frame() {
    let f = Fabric::start("", &[("p1", ACCESS10), ("p2", ACCESS10), ("p3", ACCESS10)]);
    let (mut p1, mut p2, mut p3) = (f.connect("p1"), f.connect("p2"), f.connect("p3"));
    assert!(p2.send(&frame(BROADCAST, mac(5), 1)));
    drain(&mut p1);
    drain(&mut p3);
    // The VM with mac 5 "migrates" to p3 and announces itself.
    assert!(p3.send(&frame(BROADCAST, mac(5), 2)));
    drain(&mut p1);
    drain(&mut p2);
    assert_eq!(f.fdb_port_of(10, mac(5)).as_deref(), Some("p3"));
    assert!(p1.send(&frame(mac(5), mac(1), 3)));
    assert!(p3.recv(WAIT).is_some());
    assert!(drain(&mut p2).is_empty());
    assert_eq!(f.daemon().switch("br0").unwrap().fdb().stats().moved, 1);
}

#[test]
fn mac_flood_is_capped_per_port() {
    let f = Fabric::start("port_mac_limit = 16", &[("p1", ACCESS10), ("p2", ACCESS10)]);
    let (mut p1, mut p2) = (f.connect("p1"), f.connect("p2"));
    assert!(p2.send(&frame(BROADCAST, mac(2), 0)));
    p1.recv(WAIT).unwrap();
    for i in 0..200u32 {
        while !p1.send(&frame(BROADCAST, mac(1000 + i), i)) {
            p1.wait_tx_completed(WAIT);
        }
    }
    assert!(p1.wait_tx_completed(WAIT));
    let sw = f.daemon().switch("br0").unwrap();
    let p1_id = sw.port_id("p1").unwrap();
    assert_eq!(
        sw.fdb().port_len(p1_id),
        16,
        "only the port's share is learned"
    );
    assert_eq!(
        f.fdb_port_of(10, mac(2)).as_deref(),
        Some("p2"),
        "others' stations survive"
    );
    // Unlearned sources are still forwarded.
    let got = p2.recv_all(QUIET);
    assert_eq!(got.len(), 200);
}

#[test]
fn a_port_reconnects_while_others_keep_forwarding() {
    let f = Fabric::start("", &[("p1", ACCESS10), ("p2", ACCESS10), ("p3", ACCESS10)]);
    let (mut p1, mut p2, p3) = (f.connect("p1"), f.connect("p2"), f.connect("p3"));
    assert!(p3.config().is_some());
    let mut p3 = p3;
    assert!(p3.send(&frame(BROADCAST, mac(3), 0)));
    drain(&mut p1);
    drain(&mut p2);
    assert_eq!(f.fdb_port_of(10, mac(3)).as_deref(), Some("p3"));

    p3.disconnect();
    f.wait_link("p3", false);
    assert_eq!(
        f.fdb_port_of(10, mac(3)),
        None,
        "a port going down forgets its stations"
    );

    // The others are not disturbed.
    for i in 0..50 {
        let fr = frame(mac(2), mac(1), i);
        assert!(p1.send(&fr));
        assert_eq!(p2.recv(WAIT).as_deref(), Some(&fr[..]));
    }

    // A new frontend on the same socket, no daemon restart.
    let mut p3 = f.connect("p3");
    let fr = frame(BROADCAST, mac(1), 99);
    assert!(p1.send(&fr));
    assert_eq!(p3.recv(WAIT).as_deref(), Some(&fr[..]));
    assert!(p3.send(&frame(mac(1), mac(3), 100)));
    assert!(p1.recv(WAIT).is_some());
}

#[test]
fn malformed_chains_are_dropped_and_counted() {
    let f = Fabric::start("", &[("p1", ACCESS10), ("p2", ACCESS10)]);
    let (mut p1, mut p2) = (f.connect("p1"), f.connect("p2"));
    let mem = p1.mem_size();
    let hdr = [0u8; VNET_HDR_LEN];
    let good = {
        let mut b = hdr.to_vec();
        b.extend(frame(BROADCAST, mac(1), 0));
        p1.guest_alloc(&b)
    };
    let good_len = (VNET_HDR_LEN + 114) as u32;
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    let cases: Vec<(&str, Vec<RawDesc>)> = vec![
        (
            "address outside guest memory",
            vec![RawDesc {
                addr: mem + 4096,
                len: 64,
                flags: 0,
                next: 0,
            }],
        ),
        (
            "buffer running off the end of memory",
            vec![RawDesc {
                addr: mem - 8,
                len: 64,
                flags: 0,
                next: 0,
            }],
        ),
        (
            "absurd length",
            vec![RawDesc {
                addr: good,
                len: u32::MAX,
                flags: 0,
                next: 0,
            }],
        ),
        (
            "shorter than the virtio-net header",
            vec![RawDesc {
                addr: good,
                len: 8,
                flags: 0,
                next: 0,
            }],
        ),
        (
            "header only, runt frame",
            vec![RawDesc {
                addr: good,
                len: VNET_HDR_LEN as u32 + 6,
                flags: 0,
                next: 0,
            }],
        ),
        (
            "descriptor loop",
            vec![
                RawDesc {
                    addr: good,
                    len: 12,
                    flags: NEXT,
                    next: 1,
                },
                RawDesc {
                    addr: good + 12,
                    len: 60,
                    flags: NEXT,
                    next: 0,
                },
            ],
        ),
        (
            "next index outside the table",
            vec![RawDesc {
                addr: good,
                len: good_len,
                flags: NEXT,
                next: 0x7fff,
            }],
        ),
        (
            "device-writable buffer on TX",
            vec![RawDesc {
                addr: good,
                len: good_len,
                flags: WRITE,
                next: 0,
            }],
        ),
    ];
    let n_cases = cases.len() as u64;
    for (what, chain) in cases {
        assert!(p1.send_raw_chain(&chain), "{what}: could not post");
        // The port keeps working after each: a good frame still crosses.
        let fr = frame(BROADCAST, mac(1), 7);
        assert!(p1.send(&fr), "{what}");
        assert_eq!(p2.recv(WAIT).as_deref(), Some(&fr[..]), "after {what}");
        assert!(
            drain(&mut p2).is_empty(),
            "{what}: nothing of the bad chain was forwarded"
        );
    }
    // An avail entry naming a descriptor index past the table.
    p1.send_raw_head(60_000);
    let fr = frame(BROADCAST, mac(1), 8);
    assert!(p1.send(&fr));
    let _ = p2.recv(WAIT);
    let c = f.counters("p1");
    let bad = c.dropped(DropReason::BadDescriptor) + c.dropped(DropReason::Runt);
    assert!(bad >= n_cases, "every bad chain counted: {c:?}");
    assert_eq!(c.dropped(DropReason::Runt), 1);
    // The other direction is untouched.
    let back = frame(mac(1), mac(2), 9);
    assert!(p2.send(&back));
    assert!(p1.recv(WAIT).is_some());
}

#[test]
fn receive_without_mergeable_buffers() {
    let f = Fabric::start("", &[("p1", ACCESS10), ("p2", ACCESS10)]);
    let mut p1 = f.connect("p1");
    let mut p2 = f.connect_with(
        "p2",
        NicOptions {
            rx_buffer_len: 1526,
            ..NicOptions::without_mrg()
        },
    );
    for len in [60usize, 1000, 1514] {
        let fr = eth(
            BROADCAST,
            mac(1),
            ETHERTYPE_TEST,
            &payload(len as u32, len - 14),
        );
        assert!(p1.send(&fr));
        assert_eq!(p2.recv(WAIT).as_deref(), Some(&fr[..]), "{len}-byte frame");
    }
}

#[test]
fn guests_ping_and_move_a_mebibyte_over_tcp() {
    let f = Fabric::start("", &[("a", ACCESS10), ("b", ACCESS10), ("c", ACCESS20)]);
    let mut a = Endpoint::new(f.connect("a"), mac(0xa), [10, 0, 0, 1]);
    let mut b = Endpoint::new(f.connect("b"), mac(0xb), [10, 0, 0, 2]);
    let _c = f.connect("c");
    ping(&mut a, &mut b, Duration::from_secs(10)).expect("ping a -> b");
    ping(&mut b, &mut a, Duration::from_secs(10)).expect("ping b -> a");
    tcp_transfer(&mut a, &mut b, 1 << 20, 42, Duration::from_secs(60))
        .expect("1 MiB a -> b, every byte checked");
    tcp_transfer(&mut b, &mut a, 1 << 20, 43, Duration::from_secs(60)).expect("1 MiB b -> a");
    assert_eq!(f.counters("c").tx_packets, 0, "VLAN 20 saw none of it");
}
