//! A QEMU-like frontend reconnecting to a restarted vhost-user-blk backend, in process,
//! with a crash state laid out by hand so the outcome is exact.
//!
//! When a backend dies, QEMU cannot ask it where the ring stood (GET_VRING_BASE fails)
//! and gives the next backend the guest's used index as the ring base. With requests
//! completed out of order that base is wrong both ways: chains past it may have
//! completed already (and their descriptors been reused by the guest) and chains
//! before it may still be in flight. The device must resubmit exactly the requests
//! its predecessor took and did not return (the inflight region, vhost-user
//! INFLIGHT_SHMFD) and resume after the last chain taken.
//!
//! The state here: the guest made requests r0..r3 available (heads 0, 3, 6, 9); the
//! previous daemon took all four and completed r1 and r3 (used index 2), r0 and r2
//! were in flight when it died. The guest has since reused r3's descriptors for a
//! request it has not made available yet (a write of 0xEE to sector 24).

use test_kit::frontend as support;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use support::blk_daemon::BlkDaemon;
use support::guest_memory::GuestRam;
use support::split_ring::{Desc, SplitRing};
use support::vhost_frontend::{
    connect_frontend, enable_queue, negotiate, set_mem_table, setup_queue, vu, F_VERSION_1,
};
use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost::vhost_user::VhostUserFrontend;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QS: u16 = 16;
const SECTOR: u64 = 512;
const VIRTIO_BLK_T_OUT: u32 = 1;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// One write request: header, 4 KiB of `fill`, status; descriptors 3i..3i+2.
struct Req {
    head: u16,
    sector: u64,
    fill: u8,
    status: u64,
}

fn lay_out(ring: &SplitRing, ram: &mut GuestRam, i: u16, sector: u64, fill: u8) -> Req {
    let header = ram.alloc(16, 16).unwrap();
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    ram.write(header, &h).unwrap();
    let data = ram.alloc(4096, 4096).unwrap();
    ram.fill(data, 4096, fill).unwrap();
    let status = ram.alloc(1, 1).unwrap();
    ram.fill(status, 1, 0xff).unwrap();
    let head = 3 * i;
    let d = |addr, len, flags, next| Desc {
        addr,
        len,
        flags,
        next,
    };
    ring.write_desc(ram, head, d(header, 16, F_NEXT, head + 1));
    ring.write_desc(ram, head + 1, d(data, 4096, F_NEXT, head + 2));
    ring.write_desc(ram, head + 2, d(status, 1, F_WRITE, 0));
    Req {
        head,
        sector,
        fill,
        status,
    }
}

/// The inflight region QEMU keeps, as the dead backend left it (libvhost-user layout:
/// a 16-byte header, then 16 bytes per descriptor head).
fn lay_out_inflight(region: &mut [u8], in_flight: &[(u16, u64)], last_batch_head: u16, used: u16) {
    region[8..10].copy_from_slice(&1u16.to_le_bytes()); // version
    region[10..12].copy_from_slice(&QS.to_le_bytes());
    region[12..14].copy_from_slice(&last_batch_head.to_le_bytes());
    region[14..16].copy_from_slice(&used.to_le_bytes());
    for &(head, counter) in in_flight {
        let at = 16 + 16 * usize::from(head);
        region[at] = 1;
        region[at + 8..at + 16].copy_from_slice(&counter.to_le_bytes());
    }
}

#[test]
fn a_restarted_device_resubmits_what_was_in_flight_and_never_reruns_a_completed_chain() {
    let f = BlkDaemon::start(
        "64M",
        "[[pool.volume]]\nname = \"v\"\nsize = \"8M\"\nexport = { queue_size = 16 }\n",
    );

    // The guest's memory and ring, as the crash left them.
    let mut ram = GuestRam::new(16 << 20).unwrap();
    let mut ring = SplitRing::new(&mut ram, QS, false).unwrap();
    let r0 = lay_out(&ring, &mut ram, 0, 0, 0xa0);
    let r1 = lay_out(&ring, &mut ram, 1, 8, 0xb1);
    let r2 = lay_out(&ring, &mut ram, 2, 16, 0xc2);
    let reused = lay_out(&ring, &mut ram, 3, 24, 0xee); // r3's descriptors, reused
    for r in [&r0, &r1, &r2, &reused] {
        ring.push_avail(&ram, r.head);
    }
    ring.publish(&ram);
    ring.preset_used(&ram, &[(r1.head, 1), (reused.head, 1)]);
    let used_before = 2u16;

    // QEMU's reconnect: features, the inflight region, memory, the ring at the used
    // index (its fallback when GET_VRING_BASE failed), kick.
    let mut fe = connect_frontend(&f.socket("v"), 1).unwrap();
    let n = negotiate(
        &mut fe,
        F_VERSION_1,
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD,
    )
    .unwrap();
    let tracked = n
        .protocol
        .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD);
    let mut _region_file = None;
    if tracked {
        let asked = VhostUserInflight::new(0, 0, 1, QS);
        let (got, file) = vu("GET_INFLIGHT_FD", fe.get_inflight_fd(&asked)).unwrap();
        let len = got.mmap_size as usize;
        assert!(len >= 16 + 16 * usize::from(QS), "region of {len} bytes");
        // The file is shared memory: what is written to it here, the backend
        // sees through its mapping.
        let mut region = vec![0u8; len];
        file.read_exact_at(&mut region, got.mmap_offset).unwrap();
        lay_out_inflight(
            &mut region,
            &[(r0.head, 10), (r2.head, 12)],
            reused.head,
            used_before,
        );
        file.write_all_at(&region, got.mmap_offset).unwrap();
        vu(
            "SET_INFLIGHT_FD",
            fe.set_inflight_fd(&got, file.as_raw_fd()),
        )
        .unwrap();
        _region_file = Some(file);
    }
    set_mem_table(&mut fe, &ram).unwrap();
    let (kick, call) = (
        EventFd::new(EFD_NONBLOCK).unwrap(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    );
    setup_queue(&mut fe, 0, &ring, &ram, used_before, &kick, &call).unwrap();
    enable_queue(&mut fe, 0, n.features).unwrap();
    kick.write(1).unwrap();

    let deadline = Instant::now() + Duration::from_secs(5);
    while ring.used_idx(&ram) != used_before + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Nothing more may complete: only two requests were outstanding.
    std::thread::sleep(Duration::from_millis(200));
    let mut completed = Vec::new();
    while let Some((head, _len)) = ring.pop_used(&ram) {
        completed.push(head as u16);
    }
    completed.sort_unstable();

    let pool = f.daemon().pool("p0").unwrap();
    // The 4 KiB at `sector`, as the byte it is filled with (None if not uniform).
    let read = |sector: u64| {
        let p = pool.lock().unwrap();
        let mut b = vec![0x55u8; 4096];
        p.read(p.id("v").unwrap(), sector * SECTOR, &mut b).unwrap();
        b.iter().all(|&x| x == b[0]).then_some(b[0])
    };
    assert_eq!(
        read(reused.sector),
        Some(0),
        "a chain the previous daemon completed ran again: the guest's reused \
         descriptors wrote sector {}",
        reused.sector
    );
    assert_eq!(
        completed,
        vec![r0.head, r2.head],
        "exactly the two requests left in flight complete (a request before the \
         frontend's base was skipped, or one ran twice)"
    );
    for r in [&r0, &r2] {
        let mut status = [0xffu8];
        ram.read(r.status, &mut status).unwrap();
        assert_eq!(status[0], 0, "status of the request at head {}", r.head);
        assert_eq!(read(r.sector), Some(r.fill), "sector {}", r.sector);
    }
    assert!(tracked, "the device must offer INFLIGHT_SHMFD");
    assert_eq!(f.counter("v", "resubmitted"), 2, "{}", f.counter_line("v"));
    let key = "vswitchd_blk_resubmitted_total{pool=\"p0\",volume=\"v\"}";
    assert_eq!(f.metrics().get(key), Some(&2.0), "{key}");
    drop(fe);
}
