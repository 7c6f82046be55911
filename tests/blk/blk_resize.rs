//! Online resize of an exported volume, in process: growing it changes the capacity
//! in the config space, each connected session that gave a backend request channel
//! is sent exactly one CONFIG_CHANGE_MSG per resize, and requests parsed after the
//! resize may reach the new end (and none parsed before could pass the old one).
//! Shrinking an exported volume is refused.

use test_kit::frontend as support;

use support::blk_daemon::BlkDaemon;
use support::virtio_blk::{BlkOptions, GuestBlk, S_IOERR};
use test_kit::pattern::{pattern, verify};

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
const LEN: usize = 64 << 10;

/// A frontend with a backend request channel, rings started or not.
fn frontend(f: &BlkDaemon, socket: &str, start_rings: bool) -> GuestBlk {
    let opts = BlkOptions {
        backend_req: true,
        start_rings,
        ..BlkOptions::default()
    };
    f.connect_with(socket, opts)
}

/// Writes `seed`'s pattern at byte `at`; the status byte.
fn write_at(blk: &mut GuestBlk, seed: u64, at: u64) -> u8 {
    blk.write(0, at / SECTOR, &pattern(seed, at, LEN)).status
}

#[test]
fn a_grown_export_tells_each_session_once_and_takes_writes_past_the_old_end() {
    let f = BlkDaemon::start(
        "64M",
        "[[pool.volume]]\nname = \"grow1\"\nsize = \"8M\"\nexport = { queue_size = 128, \
         migration_socket = \"run/grow1.migrate.sock\" }\n",
    );
    // Two sessions: a running guest, and a migration's destination (negotiated only).
    let mut a = frontend(&f, "grow1", true);
    let mut b = frontend(&f, "grow1.migrate", false);
    for blk in [&a, &b] {
        assert_eq!(blk.capacity(), 8 * MIB / SECTOR);
    }
    let rt = f.daemon().runtime();

    // Before: the last 64 KiB fit, the next do not.
    assert_eq!(write_at(&mut a, 1, 8 * MIB - LEN as u64), 0);
    assert_eq!(write_at(&mut a, 2, 8 * MIB), S_IOERR);
    assert_eq!(f.counter("grow1", "invalid"), 1);

    rt.resize_volume("p0", "grow1", 12 * MIB, false).unwrap();
    for (blk, who) in [(&mut a, "running"), (&mut b, "destination")] {
        assert_eq!(blk.config_changes(), 1, "{who}: one CONFIG_CHANGE_MSG");
        assert_eq!(blk.read_config().unwrap().capacity, 12 * MIB / SECTOR);
    }
    // After: past the old end, up to the new one.
    for at in [8 * MIB, 12 * MIB - LEN as u64] {
        assert_eq!(write_at(&mut a, 3, at), 0, "write at {at}");
        let done = a.read(0, at / SECTOR, LEN);
        assert!(done.ok());
        verify(3, at, &done.data).unwrap_or_else(|m| panic!("read at {at}: {m}"));
    }
    assert_eq!(write_at(&mut a, 4, 12 * MIB), S_IOERR);
    assert_eq!(f.counter("grow1", "invalid"), 2);

    // A second resize: one more message each. Shrinking is refused, and nobody
    // is told anything.
    rt.resize_volume("p0", "grow1", 16 * MIB, false).unwrap();
    for blk in [&mut a, &mut b] {
        assert_eq!(blk.config_changes(), 2);
    }
    for force in [false, true] {
        let e = rt.resize_volume("p0", "grow1", 4 * MIB, force).unwrap_err();
        assert_eq!(e.kind(), fabric::runtime::ErrorKind::Conflict, "{e}");
    }
    for blk in [&mut a, &mut b] {
        assert_eq!(blk.config_changes(), 2);
        assert_eq!(blk.read_config().unwrap().capacity, 16 * MIB / SECTOR);
    }
    assert_eq!(write_at(&mut a, 5, 16 * MIB - LEN as u64), 0);
    f.check_pool();
}
