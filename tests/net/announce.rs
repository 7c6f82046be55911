//! A migrated guest announced by its new port (vhost-user SEND_RARP, the
//! `vhost-backends` module `net::announce`), in process: the test plays the
//! VMMs with the harness frontend against the real daemon.

use test_kit::counters::field_in;
use test_kit::frontend::fabric::{Fabric, WAIT};
use test_kit::frontend::frames::{payload, rarp, ETHERTYPE_TEST};
use test_kit::frontend::{eth, mac, BROADCAST};

use std::time::Duration;

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

const ACCESS10: &str = "{ mode = \"access\", tag = 10 }";
const ACCESS20: &str = "{ mode = \"access\", tag = 20 }";

/// The guest was on `old` (its MAC learned there); after a migration its
/// NIC is on `new`, whose frontend sends SEND_RARP before the guest sends
/// anything. The RARP reaches the VLAN byte for byte, the station moves to
/// `new` (one move), and `peer`'s unicast to it goes to `new` only. MACs
/// that are no station are refused and the session goes on.
#[test]
fn send_rarp_moves_the_station_and_traffic_follows() {
    let names = ["old", "new", "peer", "other"];
    let f = Fabric::start(
        "",
        &[
            (names[0], ACCESS10),
            (names[1], ACCESS10),
            (names[2], ACCESS10),
            (names[3], ACCESS20),
        ],
    );
    let [mut old, mut new, mut peer, mut other] = names.map(|n| f.connect(n));
    let (guest, peer_mac) = (mac(7), mac(3));
    let nic = &new;
    assert!(
        nic.protocol_features()
            .contains(vhost::vhost_user::message::VhostUserProtocolFeatures::RARP),
        "the port offers VHOST_USER_PROTOCOL_F_RARP"
    );
    // The harness has no control queue, so it does not take the
    // GUEST_ANNOUNCE the port offers (§5.1.3.1): SEND_RARP is its VMM's way.
    assert_eq!(
        nic.negotiated_features() & test_kit::frontend::virtio_net::features::GUEST_ANNOUNCE,
        0
    );

    // The guest runs on `old`: learned there.
    let hello = eth(BROADCAST, guest, ETHERTYPE_TEST, &payload(1, 100));
    assert!(old.send(&hello));
    assert_eq!(peer.recv(WAIT).as_deref(), Some(&hello[..]));
    assert_eq!(new.recv(WAIT).as_deref(), Some(&hello[..]));
    assert_eq!(f.fdb_port_of(10, guest).as_deref(), Some("old"));
    assert_eq!(f.fdb_stats().moved, 0);

    // Migrated: the frontend of `new` announces it.
    assert_eq!(new.send_rarp(guest).unwrap(), 0, "SEND_RARP acked");
    let want = rarp(guest);
    assert_eq!(peer.recv(WAIT), Some(want.clone()), "byte for byte");
    assert_eq!(old.recv(WAIT), Some(want), "the whole VLAN hears it");
    assert!(other.recv_all(QUIET).is_empty(), "VLAN 20 hears nothing");
    assert!(new.recv_all(QUIET).is_empty(), "never back to its port");
    assert_eq!(f.fdb_port_of(10, guest).as_deref(), Some("new"));
    assert_eq!(f.fdb_stats().moved, 1);
    let c = f.counters("new");
    assert_eq!((c.announces, c.rx_packets, c.tx_packets), (1, 1, 1));

    // Before the guest sends anything itself, traffic to it goes to `new`.
    let to_guest = eth(guest, peer_mac, ETHERTYPE_TEST, &payload(2, 100));
    assert!(peer.send(&to_guest));
    assert_eq!(new.recv(WAIT).as_deref(), Some(&to_guest[..]));
    assert!(old.recv_all(QUIET).is_empty(), "not to the old place");

    // No station: refused (status 1), nothing sent, the session goes on.
    for bad in [BROADCAST, [0x01, 0, 0x5e, 0, 0, 1], [0; 6]] {
        assert_eq!(new.send_rarp(bad).unwrap(), 1, "{bad:02x?} refused");
    }
    assert!(peer.recv_all(QUIET).is_empty());
    assert_eq!(f.counters("new").announces, 1);
    let reply = eth(peer_mac, guest, ETHERTYPE_TEST, &payload(3, 100));
    assert!(new.send(&reply));
    assert_eq!(peer.recv(WAIT).as_deref(), Some(&reply[..]));

    // Each rendering shows the announcement and the move.
    let line = f.report_line("counters switch=br0 port=new ");
    assert_eq!(field_in(&line, "announces"), 1, "{line}");
    assert_eq!(f.port_listed("new")["announces"].as_u64(), Some(1));
    let fdb = f.report_line("fdb switch=br0 ");
    assert_eq!(field_in(&fdb, "moved"), 1, "{fdb}");
    let metrics = f.metrics();
    let key = "vswitchd_port_announces_total{switch=\"br0\",port=\"new\"}";
    assert_eq!(metrics.get(key), Some(&1.0), "{key}");
    assert_eq!(
        metrics.get("vswitchd_fdb_moved_total{switch=\"br0\"}"),
        Some(&1.0)
    );
}
