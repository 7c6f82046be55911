//! The dirty log of a live migration on a disk export, in process: the test
//! plays QEMU (`test_kit::frontend::dirty_log`) and checks that a request
//! marks exactly the guest pages the device wrote: a read's data, the status
//! byte and the used ring (elements and index, avail_event); for a write only
//! the status byte and the used ring.

use std::collections::BTreeSet;
use test_kit::frontend as support;

use support::blk_daemon::BlkDaemon;
use support::dirty_log::{pages, pages_of, FrontendLog, LOG_PAGE};
use support::virtio_blk::{BlkOptions, GuestBlk, Req, WAIT};

/// Submits `req` on queue 0, waits for it, and returns the pages it
/// should have marked besides the used ring: its status byte's and, with
/// `data_written` bytes, its data's.
fn run(blk: &mut GuestBlk, req: &Req<'_>, data_written: u64) -> BTreeSet<u64> {
    let head = blk.submit(0, req).unwrap();
    let done = blk.wait(0, head, WAIT).unwrap();
    assert!(done.ok(), "{req:?}: status {}", done.status);
    let (status, data) = blk.request_layout(0, head);
    &pages(status, 1) | &pages(data, data_written)
}

#[test]
fn requests_mark_exactly_what_the_device_wrote() {
    let f = BlkDaemon::start(
        "64M",
        "[[pool.volume]]\nname = \"dirtylog\"\nsize = \"8M\"\nexport = { queue_size = 1024 }\n",
    );
    let mut blk = f.connect_with(
        "dirtylog",
        BlkOptions {
            dirty_log: true,
            // The used ring then spans three pages: the index and the
            // first elements in the first, avail_event in the last.
            queue_size: 1024,
            ..Default::default()
        },
    );
    let data = vec![0x5au8; 16384];
    assert!(blk.write(0, 8, &data).ok());

    let log = FrontendLog::new(blk.mem_size()).unwrap();
    log.start(&blk.frontend(), blk.negotiated_features())
        .unwrap();
    // The batch that completed the write may still be ending when logging
    // starts, and then marks the whole log (conservative: `LogBatch::finish`).
    // A request run after the start waits for it (one queue thread runs
    // batches in turn); what was marked until then is drained.
    run(&mut blk, &Req::GetId, 20);
    log.take();
    // Each batch publishes into the used ring's first page and ends asking
    // for kicks again (EVENT_IDX: avail_event, in its last page).
    let used_area = blk.ring_areas(0).used;
    assert_eq!(pages_of([&used_area]).len(), 3);
    let used = BTreeSet::from([used_area.start / LOG_PAGE, (used_area.end - 1) / LOG_PAGE]);
    let never = pages_of([&blk.ring_areas(0).desc, &blk.ring_areas(0).avail]);
    // Between requests the device writes nothing but avail_event: the
    // queue thread, woken again by the io_uring completion it already
    // handled, asks for kicks once more (the same value, a write all the
    // same, so marked).
    let quiet = |what: &str| {
        let marked = log.take();
        assert!(
            marked.is_subset(&used),
            "{what}: {marked:?} marked, used ring {used:?}"
        );
    };
    quiet("nothing written yet");

    // A read: io_uring wrote its 16 KiB of data (four pages).
    let read = Req::Read {
        sector: 8,
        len: data.len(),
    };
    let expected = &run(&mut blk, &read, data.len() as u64) | &used;
    assert_eq!(log.take_including(&expected, WAIT), expected, "read");
    assert!(expected.is_disjoint(&never));

    // A write: the device only read the data.
    let write = Req::Write {
        sector: 64,
        data: &data,
    };
    quiet("after the read");
    let expected = &run(&mut blk, &write, 0) | &used;
    assert_eq!(log.take_including(&expected, WAIT), expected, "write");

    // GET_ID: written by the device itself, 20 bytes.
    let expected = &run(&mut blk, &Req::GetId, 20) | &used;
    assert_eq!(log.take_including(&expected, WAIT), expected, "get id");

    // Logging off: nothing more is marked. The batch before may still be
    // ending when logging stops (the queue thread polls its ring for a
    // while, then asks for kicks again, writing avail_event while logging
    // was on); a request run after the stop waits for it, then what was
    // marked until then is drained.
    log.stop(&blk.frontend(), blk.negotiated_features())
        .unwrap();
    run(&mut blk, &Req::GetId, 0);
    log.take();
    run(&mut blk, &read, 0);
    run(&mut blk, &write, 0);
    assert_eq!(log.take(), BTreeSet::new(), "logging off");
}
