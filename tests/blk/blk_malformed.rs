//! A hostile virtio-blk driver against vswitchd's vhost-user-blk export, in process:
//! the test plays the VMM and the guest driver (`GuestBlk`) over memfd guest memory.
//!
//! - `malformed_requests_get_exact_answers`: one case per driver mistake, each checked
//!   for its exact outcome (status byte, used length, which counter moved by how much),
//!   then a good write + read on another queue and on the same queue.
//! - `get_vring_base_completes_requests_in_flight_first`: the device answers
//!   GET_VRING_BASE only after the requests it started are in the used ring.
//! - `a_frontend_dying_with_requests_in_flight_and_the_next_one`.
//! - `seeded_random_chains`: a few thousand random chains on one queue, each outcome
//!   predicted by a model of 5.2.6 / 2.7 written here (independent of the device code);
//!   a good request on another queue after every batch; the pool's metadata checks out
//!   at the end. Two seeds; `BLK_FUZZ_SEED` picks others.
//!
//! Every test serves volumes of its own names: the daemon names a session's internal
//! socket after the process, the export and the session number, so two daemons in one
//! process serving an export of the same name would collide.
//!
//! The only chains the device leaves unanswered are available-ring entries whose head
//! index is `>= queue size`: there is no such descriptor, so a used element for it would
//! name a chain that does not exist (2.7.8: `id` is the head of a used descriptor
//! chain). The harness proves they were consumed (a chain made available after them
//! comes back, and the device processes the available ring in order) and that they
//! were counted (`bad_chains`).

use test_kit::blkio::pattern;
use test_kit::frontend as support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::blk_daemon::BlkDaemon;
use support::counters::counter_in;
use support::guest_memory::GuestRam;
use support::vhost_frontend::{indirect_table as table, linear_chain as linear};
use support::virtio_blk::*;
use support::RawDesc;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;
const MIB: u64 = 1 << 20;
/// Status bytes start as this; a dropped chain must leave it.
const SENTINEL: u8 = 0xee;
const QS: u16 = 128;
/// GET_ID of a name longer than 20 bytes is cut, without a NUL.
const LONG_NAME: &str = "a-volume-name-longer-than-20";

// ---- fixture ----

/// A daemon serving one pool's volumes (pool "p0", 64 MiB).
struct Fixture(BlkDaemon);

impl std::ops::Deref for Fixture {
    type Target = BlkDaemon;
    fn deref(&self) -> &BlkDaemon {
        &self.0
    }
}

impl Fixture {
    /// `volumes`: `[[pool.volume]]` tables (TOML) of pool "p0" (64 MiB).
    fn start(volumes: &str) -> Fixture {
        Fixture(BlkDaemon::start("64M", volumes))
    }

    fn connect(&self, volume: &str, queues: u16) -> GuestBlk {
        self.connect_with(
            volume,
            BlkOptions {
                queues,
                queue_size: QS,
                ..Default::default()
            },
        )
    }

    fn counters(&self, volume: &str) -> Counters {
        Counters::parse(&self.counter_line(volume))
    }
}

/// An export's counters (`counters export=...` line of the daemon's report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    reads: u64,
    writes: u64,
    flushes: u64,
    discards: u64,
    io_errors: u64,
    out_of_space: u64,
    invalid: u64,
    bad_chains: u64,
}

impl Counters {
    fn parse(line: &str) -> Counters {
        let get = |name: &str| counter_in(line, name);
        Counters {
            reads: get("reads"),
            writes: get("writes"),
            flushes: get("flushes"),
            discards: get("discards"),
            io_errors: get("io_errors"),
            out_of_space: get("out_of_space"),
            invalid: get("invalid"),
            bad_chains: get("bad_chains"),
        }
    }

    fn minus(self, o: Counters) -> Counters {
        Counters {
            reads: self.reads - o.reads,
            writes: self.writes - o.writes,
            flushes: self.flushes - o.flushes,
            discards: self.discards - o.discards,
            io_errors: self.io_errors - o.io_errors,
            out_of_space: self.out_of_space - o.out_of_space,
            invalid: self.invalid - o.invalid,
            bad_chains: self.bad_chains - o.bad_chains,
        }
    }
}

const NONE: Counters = Counters {
    reads: 0,
    writes: 0,
    flushes: 0,
    discards: 0,
    io_errors: 0,
    out_of_space: 0,
    invalid: 0,
    bad_chains: 0,
};
const INVALID: Counters = Counters { invalid: 1, ..NONE };
const DROPPED: Counters = Counters {
    bad_chains: 1,
    ..NONE
};
const READ: Counters = Counters { reads: 1, ..NONE };
const WROTE: Counters = Counters { writes: 1, ..NONE };
const FLUSHED: Counters = Counters { flushes: 1, ..NONE };
const ZEROED: Counters = Counters {
    discards: 1,
    ..NONE
};

/// The kit's seeded PRNG picks the cases.
type Rng = test_kit::SplitMix64;

/// `one_in` odds.
fn chance(rng: &mut Rng, one_in: u64) -> bool {
    rng.below(one_in) == 0
}

// ---- the malformed cases ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// This status byte at the status address, this used length.
    Status(u8, u32),
    /// Returned with used length 0, status byte (if any) untouched.
    Dropped,
}

struct Cases {
    f: Fixture,
    blk: GuestBlk,
    volume: &'static str,
    seq: u64,
}

impl Cases {
    fn alloc(&mut self, data: &[u8]) -> u64 {
        self.blk.guest_alloc(data)
    }

    fn hdr(&mut self, kind: u32, sector: u64) -> u64 {
        self.alloc(&header(kind, sector))
    }

    fn filled(&mut self, len: usize, byte: u8) -> u64 {
        self.alloc(&vec![byte; len])
    }

    fn status(&mut self) -> u64 {
        self.alloc(&[SENTINEL])
    }

    /// Posts `chain` on queue 0 and checks the outcome and the counter deltas, then
    /// that both queues still work.
    fn case(
        &mut self,
        name: &str,
        chain: &[RawDesc],
        status: Option<u64>,
        want: Want,
        delta: Counters,
    ) {
        if let Some(gpa) = status {
            // Chains of a block may share one status byte: start each from the sentinel.
            self.blk.ram().write(gpa, &[SENTINEL]).unwrap();
        }
        let before = self.f.counters(self.volume);
        let head = self
            .blk
            .post_raw(0, chain)
            .unwrap_or_else(|| panic!("{name}: no room on queue 0"));
        let used = self
            .blk
            .wait_used(0, head, WAIT)
            .unwrap_or_else(|| panic!("{name}: the device did not return the chain"));
        let byte = status.map(|gpa| self.blk.read_byte(gpa));
        match want {
            Want::Status(code, len) => {
                assert_eq!(
                    (byte, used),
                    (Some(code), len),
                    "{name}: (status, used len)"
                );
            }
            Want::Dropped => {
                assert_eq!(used, 0, "{name}: used len of a dropped chain");
                if let Some(b) = byte {
                    assert_eq!(b, SENTINEL, "{name}: a dropped chain's status byte");
                }
            }
        }
        let got = self.f.counters(self.volume).minus(before);
        assert_eq!(got, delta, "{name}: counter deltas");
        self.alive(name);
    }

    /// A good write and read on queue 1 (if there is one), then on queue 0.
    fn alive(&mut self, after: &str) {
        let before = self.f.counters(self.volume);
        let queues: Vec<usize> = (0..self.blk.num_queues()).rev().collect();
        for &q in &queues {
            self.seq += 1;
            let sector = 4096 + (self.seq % 64) * 8;
            let data = pattern(self.seq, 0, 4096);
            let w = self.blk.write(q, sector, &data);
            assert_eq!(
                (w.status, w.used_len),
                (S_OK, 1),
                "after {after}: write q{q}"
            );
            let r = self.blk.read(q, sector, 4096);
            assert_eq!(
                (r.status, r.used_len),
                (S_OK, 4097),
                "after {after}: read q{q}"
            );
            assert!(r.data == data, "after {after}: q{q} read back other data");
        }
        let n = queues.len() as u64;
        assert_eq!(
            self.f.counters(self.volume).minus(before),
            Counters {
                reads: n,
                writes: n,
                ..NONE
            },
            "after {after}: the good requests' counters"
        );
    }
}

#[test]
fn malformed_requests_get_exact_answers() {
    let f = Fixture::start(&format!(
        "[[pool.volume]]\nname = \"d\"\nsize = \"32M\"\nexport = {{ queues = 2 }}\n\
         [[pool.volume]]\nname = \"ro\"\nsize = \"1M\"\nexport = {{ read_only = true }}\n\
         [[pool.volume]]\nname = \"{LONG_NAME}\"\nsize = \"1M\"\nexport = {{}}\n"
    ));
    let blk = f.connect("d", 2);
    let config = blk.config();
    assert_eq!(config.capacity, 32 * MIB / SECTOR);
    assert_eq!(config.num_queues, 2);
    assert!(!blk.read_only());
    let mut t = Cases {
        f,
        blk,
        volume: "d",
        seq: 0,
    };
    t.alive("connecting");
    let cap = t.blk.capacity();
    let mem = t.blk.mem_size();

    // -- headers --
    for short in [0usize, 1, 8, 15] {
        let h = header(T_IN, 0);
        let data = t.filled(512, 0x11);
        let st = t.status();
        let mut parts = Vec::new();
        if short > 0 {
            parts.push((t.alloc(&h[..short]), short as u32, 0));
        }
        parts.extend([(data, 512, WRITE), (st, 1, WRITE)]);
        t.case(
            &format!("read with a {short}-byte header"),
            &linear(&parts),
            Some(st),
            Want::Status(S_IOERR, 1),
            INVALID,
        );
        assert!(t.blk.read_mem(data, 512).iter().all(|&b| b == 0x11));
    }
    {
        // Header over three descriptors, data over two: a write that works.
        let h = header(T_OUT, 100);
        let data = pattern(1, 0, 512);
        let (h0, h1, h2) = (t.alloc(&h[..1]), t.alloc(&h[1..7]), t.alloc(&h[7..]));
        let (d0, d1) = (t.alloc(&data[..100]), t.alloc(&data[100..]));
        let st = t.status();
        let chain = linear(&[
            (h0, 1, 0),
            (h1, 6, 0),
            (h2, 9, 0),
            (d0, 100, 0),
            (d1, 412, 0),
            (st, 1, WRITE),
        ]);
        t.case(
            "write, header over three descriptors",
            &chain,
            Some(st),
            Want::Status(S_OK, 1),
            WROTE,
        );
        // Read it back with the header in 16 one-byte descriptors, data over two.
        let h = header(T_IN, 100);
        let mut parts: Vec<(u64, u32, u16)> = h.iter().map(|b| (t.alloc(&[*b]), 1, 0)).collect();
        let (r0, r1) = (t.filled(1, 0), t.filled(511, 0));
        let st = t.status();
        parts.extend([(r0, 1, WRITE), (r1, 511, WRITE), (st, 1, WRITE)]);
        t.case(
            "read, header over sixteen descriptors",
            &linear(&parts),
            Some(st),
            Want::Status(S_OK, 513),
            READ,
        );
        let mut back = t.blk.read_mem(r0, 1);
        back.extend(t.blk.read_mem(r1, 511));
        assert!(
            back == data,
            "split read returns what the split write wrote"
        );
        // Header and the first 200 data bytes in one descriptor.
        let data = pattern(2, 0, 1024);
        let mut hd = header(T_OUT, 200).to_vec();
        hd.extend_from_slice(&data[..200]);
        let (a, b, st) = (t.alloc(&hd), t.alloc(&data[200..]), t.status());
        t.case(
            "write, header sharing a descriptor with data",
            &linear(&[(a, 216, 0), (b, 824, 0), (st, 1, WRITE)]),
            Some(st),
            Want::Status(S_OK, 1),
            WROTE,
        );
        let r = t.blk.read(1, 200, 1024);
        assert!(r.ok() && r.data == data);
    }

    // -- data sizes and ranges --
    for (name, kind, sector, len) in [
        ("write of 100 bytes", T_OUT, 0, 100u32),
        ("write of 513 bytes", T_OUT, 0, 513),
        ("read of 1000 bytes", T_IN, 0, 1000),
        ("read of 511 bytes", T_IN, 0, 511),
        ("read at the capacity", T_IN, cap, 512),
        ("read far beyond the capacity", T_IN, cap + 1000, 512),
        ("write across the end", T_OUT, cap - 1, 1024),
        ("read across the end", T_IN, cap - 1, 1024),
        ("read, sector * 512 overflows", T_IN, u64::MAX / 256, 512),
        ("read at sector u64::MAX", T_IN, u64::MAX, 512),
        ("write, sector * 512 = 2^64", T_OUT, 1 << 55, 512),
        ("read, offset + len overflows", T_IN, u64::MAX / 512, 1024),
    ] {
        let h = t.hdr(kind, sector);
        let data = t.filled(len as usize, 0x22);
        let st = t.status();
        let flags = if kind == T_IN { WRITE } else { 0 };
        t.case(
            name,
            &linear(&[(h, 16, 0), (data, len, flags), (st, 1, WRITE)]),
            Some(st),
            Want::Status(S_IOERR, 1),
            INVALID,
        );
        assert!(
            t.blk
                .read_mem(data, len as usize)
                .iter()
                .all(|&b| b == 0x22),
            "{name}: data buffer untouched"
        );
    }
    {
        // The last sector is fine.
        let h = t.hdr(T_IN, cap - 1);
        let (data, st) = (t.filled(512, 0x22), t.status());
        t.case(
            "read of the last sector",
            &linear(&[(h, 16, 0), (data, 512, WRITE), (st, 1, WRITE)]),
            Some(st),
            Want::Status(S_OK, 513),
            READ,
        );
    }

    // -- one descriptor for everything --
    {
        let mut all = header(T_OUT, 8).to_vec();
        all.extend(pattern(3, 0, 512));
        all.push(SENTINEL);
        let a = t.alloc(&all);
        t.case(
            "header, data and status in one writable descriptor",
            &linear(&[(a, 529, WRITE)]),
            Some(a + 528),
            Want::Status(S_IOERR, 1),
            INVALID,
        );
        assert_eq!(
            t.blk.read_mem(a, 528),
            all[..528],
            "only the status written"
        );
        let a = t.alloc(&all);
        t.case(
            "header, data and status in one readable descriptor",
            &linear(&[(a, 529, 0)]),
            Some(a + 528),
            Want::Dropped,
            DROPPED,
        );
        // The legal merges: header + data readable, data + status writable.
        let st = t.status();
        t.case(
            "write, header and data in one descriptor",
            &linear(&[(a, 528, 0), (st, 1, WRITE)]),
            Some(st),
            Want::Status(S_OK, 1),
            WROTE,
        );
        let h = t.hdr(T_IN, 8);
        let ds = t.filled(513, SENTINEL);
        t.case(
            "read, data and status in one descriptor",
            &linear(&[(h, 16, 0), (ds, 513, WRITE)]),
            Some(ds + 512),
            Want::Status(S_OK, 513),
            READ,
        );
        assert_eq!(t.blk.read_mem(ds, 512), all[16..528]);
    }

    // -- the status byte --
    for (name, kind, data_flags) in [
        ("write, status readable", T_OUT, 0),
        ("read, status readable", T_IN, WRITE),
    ] {
        let h = t.hdr(kind, 0);
        let (data, st) = (t.filled(512, 0x33), t.status());
        t.case(
            name,
            &linear(&[(h, 16, 0), (data, 512, data_flags), (st, 1, 0)]),
            Some(st),
            Want::Dropped,
            DROPPED,
        );
        assert!(t.blk.read_mem(data, 512).iter().all(|&b| b == 0x33));
    }
    {
        let h = t.hdr(T_FLUSH, 0);
        let st = t.status();
        t.case(
            "status descriptor of length 0",
            &linear(&[(h, 16, 0), (st, 0, WRITE)]),
            Some(st),
            Want::Dropped,
            DROPPED,
        );
        // Readable after writable (2.7.4.2), the status still last and writable.
        let h = t.hdr(T_IN, 0);
        let (data, extra, st) = (t.filled(512, 0x44), t.filled(4, 0), t.status());
        t.case(
            "read, a readable descriptor after a writable one",
            &linear(&[
                (h, 16, 0),
                (data, 512, WRITE),
                (extra, 4, 0),
                (st, 1, WRITE),
            ]),
            Some(st),
            Want::Status(S_IOERR, 1),
            INVALID,
        );
        assert!(t.blk.read_mem(data, 512).iter().all(|&b| b == 0x44));
    }

    // -- request types --
    for kind in [
        2u32,
        3,
        5,
        6,
        T_GET_LIFETIME,
        T_SECURE_ERASE,
        15,
        99,
        1 << 31,
        u32::MAX,
    ] {
        let h = t.hdr(kind, 0);
        let st = t.status();
        t.case(
            &format!("request type {kind}"),
            &linear(&[(h, 16, 0), (st, 1, WRITE)]),
            Some(st),
            Want::Status(S_UNSUPP, 1),
            INVALID,
        );
    }
    {
        // The reserved field is not the device's business.
        let mut h = header(T_IN, 0);
        h[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        let h = t.alloc(&h);
        let (data, st) = (t.filled(512, 0), t.status());
        t.case(
            "read with the reserved field set",
            &linear(&[(h, 16, 0), (data, 512, WRITE), (st, 1, WRITE)]),
            Some(st),
            Want::Status(S_OK, 513),
            READ,
        );
    }

    // -- data in the wrong direction --
    {
        let h = t.hdr(T_OUT, 0);
        let data = t.alloc(&pattern(4, 0, 512));
        let w = t.filled(513, 0x55);
        t.case(
            "write with 512 writable bytes before the status",
            &linear(&[(h, 16, 0), (data, 512, 0), (w, 513, WRITE)]),
            Some(w + 512),
            Want::Status(S_IOERR, 1),
            INVALID,
        );
        assert!(t.blk.read_mem(w, 512).iter().all(|&b| b == 0x55));
        let (w, st) = (t.filled(8, 0x55), t.status());
        t.case(
            "write with an 8-byte writable descriptor before the status",
            &linear(&[(h, 16, 0), (data, 512, 0), (w, 8, WRITE), (st, 1, WRITE)]),
            Some(st),
            Want::Status(S_IOERR, 1),
            INVALID,
        );
        let h = t.hdr(T_IN, 0);
        let (w, st) = (t.filled(512, 0x55), t.status());
        t.case(
            "read with readable data after the header",
            &linear(&[(h, 16, 0), (data, 512, 0), (w, 512, WRITE), (st, 1, WRITE)]),
            Some(st),
            Want::Status(S_IOERR, 1),
            INVALID,
        );
        // FLUSH ignores its sector and any data (the device's choice: 5.2.6 does not
        // give flush data a meaning).
        let h = t.hdr(T_FLUSH, 12345);
        let st = t.status();
        t.case(
            "flush with a sector and 512 bytes of data",
            &linear(&[(h, 16, 0), (data, 512, 0), (st, 1, WRITE)]),
            Some(st),
            Want::Status(S_OK, 1),
            FLUSHED,
        );
    }

    // -- discard and write zeroes --
    let seg_case = |t: &mut Cases, name: &str, kind: u32, segs: &[u8], want: Want, delta| {
        let h = t.hdr(kind, 0);
        let s = t.alloc(segs);
        let st = t.status();
        t.case(
            name,
            &linear(&[(h, 16, 0), (s, segs.len() as u32, 0), (st, 1, WRITE)]),
            Some(st),
            want,
            delta,
        );
    };
    let unsupp = Want::Status(S_UNSUPP, 1);
    let ioerr = Want::Status(S_IOERR, 1);
    let ok = Want::Status(S_OK, 1);
    for (name, kind, seg, want, delta) in [
        (
            "discard, flags 1",
            T_DISCARD,
            segment(0, 8, 1),
            unsupp,
            INVALID,
        ),
        (
            "discard, flags bit 31",
            T_DISCARD,
            segment(0, 8, 1 << 31),
            unsupp,
            INVALID,
        ),
        (
            "write zeroes, flags 2",
            T_WRITE_ZEROES,
            segment(0, 8, 2),
            unsupp,
            INVALID,
        ),
        (
            "write zeroes, UNMAP",
            T_WRITE_ZEROES,
            segment(64, 8, WRITE_ZEROES_FLAG_UNMAP),
            ok,
            ZEROED,
        ),
        (
            "write zeroes",
            T_WRITE_ZEROES,
            segment(72, 8, 0),
            ok,
            ZEROED,
        ),
        ("discard", T_DISCARD, segment(cap - 8, 8, 0), ok, ZEROED),
        (
            "discard across the end",
            T_DISCARD,
            segment(cap - 1, 2, 0),
            ioerr,
            INVALID,
        ),
        (
            "discard at the capacity",
            T_DISCARD,
            segment(cap, 1, 0),
            ioerr,
            INVALID,
        ),
        (
            "write zeroes, sector overflows",
            T_WRITE_ZEROES,
            segment(u64::MAX, 1, 0),
            ioerr,
            INVALID,
        ),
        (
            "discard of 0 sectors",
            T_DISCARD,
            segment(0, 0, 0),
            ioerr,
            INVALID,
        ),
        (
            "discard of u32::MAX sectors",
            T_DISCARD,
            segment(0, u32::MAX, 0),
            ioerr,
            INVALID,
        ),
    ] {
        seg_case(&mut t, name, kind, &seg, want, delta);
    }
    let mut two = segment(0, 8, 0).to_vec();
    two.extend(segment(16, 8, 0));
    seg_case(
        &mut t,
        "discard with 2 segments",
        T_DISCARD,
        &two,
        ioerr,
        INVALID,
    );
    seg_case(
        &mut t,
        "discard with a 15-byte segment",
        T_DISCARD,
        &segment(0, 8, 0)[..15],
        ioerr,
        INVALID,
    );
    {
        let mut hs = header(T_DISCARD, 0).to_vec();
        hs.extend(segment(0, 8, 0));
        let (a, st) = (t.alloc(&hs), t.status());
        t.case(
            "discard, header and segment in one descriptor",
            &linear(&[(a, 32, 0), (st, 1, WRITE)]),
            Some(st),
            ok,
            ZEROED,
        );
        let (h, s) = (t.hdr(T_DISCARD, 0), t.alloc(&segment(0, 8, 0)));
        let (w, st) = (t.filled(512, 0x66), t.status());
        t.case(
            "discard with writable data",
            &linear(&[(h, 16, 0), (s, 16, 0), (w, 512, WRITE), (st, 1, WRITE)]),
            Some(st),
            ioerr,
            INVALID,
        );
    }
    // What discard and write zeroes cleared reads as zeros.
    let r = t.blk.read(0, cap - 8, 4096);
    assert!(r.ok() && r.data.iter().all(|&b| b == 0));

    // -- GET_ID --
    {
        let id = t.blk.get_id(0);
        let mut want = [0u8; ID_BYTES];
        want[0] = b'd';
        assert_eq!((id.status, id.used_len), (S_OK, 21));
        assert_eq!(id.data, want, "the volume name, NUL padded");
        let h = t.hdr(T_GET_ID, 0);
        let w = t.filled(65, SENTINEL);
        t.case(
            "GET_ID into 64 bytes",
            &linear(&[(h, 16, 0), (w, 65, WRITE)]),
            Some(w + 64),
            Want::Status(S_OK, 21),
            NONE,
        );
        let got = t.blk.read_mem(w, 64);
        assert_eq!(got[..20], want, "GET_ID into 64 bytes");
        assert!(got[20..].iter().all(|&b| b == SENTINEL), "only 20 bytes");
        let (w, st) = (t.filled(8, SENTINEL), t.status());
        t.case(
            "GET_ID into 8 bytes",
            &linear(&[(h, 16, 0), (w, 8, WRITE), (st, 1, WRITE)]),
            Some(st),
            Want::Status(S_OK, 9),
            NONE,
        );
        assert_eq!(t.blk.read_mem(w, 8), want[..8]);
    }

    // -- addresses outside guest memory --
    for (name, hdr_at, data_at, st_at) in [
        ("header outside memory", Some(mem + 4096), None, None),
        ("header across the end of memory", Some(mem - 8), None, None),
        ("header at u64::MAX - 7", Some(u64::MAX - 7), None, None),
        ("data across the end of memory", None, Some(mem - 256), None),
        ("data far outside memory", None, Some(1 << 62), None),
        ("status at the end of memory", None, None, Some(mem)),
    ] {
        let h = hdr_at.unwrap_or_else(|| t.hdr(T_IN, 0));
        let data = data_at.unwrap_or_else(|| t.filled(512, 0x77));
        let st = st_at.unwrap_or_else(|| t.status());
        t.case(
            name,
            &linear(&[(h, 16, 0), (data, 512, WRITE), (st, 1, WRITE)]),
            st_at.is_none().then_some(st),
            Want::Dropped,
            DROPPED,
        );
        if data_at.is_none() {
            assert!(t.blk.read_mem(data, 512).iter().all(|&b| b == 0x77));
        }
    }
    {
        let h = t.hdr(T_OUT, 0);
        let st = t.status();
        t.case(
            "zero-length data descriptor outside memory",
            &linear(&[(h, 16, 0), (mem + 4096, 0, 0), (st, 1, WRITE)]),
            Some(st),
            Want::Dropped,
            DROPPED,
        );
    }

    // -- huge lengths --
    for (name, hl, dl, sl) in [
        ("header of u32::MAX bytes", u32::MAX, 512, 1),
        ("data of u32::MAX bytes", 16, u32::MAX, 1),
        ("data of 2 GiB", 16, 1 << 31, 1),
        ("status of u32::MAX bytes", 16, 512, u32::MAX),
    ] {
        let h = t.hdr(T_IN, 0);
        let (data, st) = (t.filled(512, 0x88), t.status());
        t.case(
            name,
            &linear(&[(h, hl, 0), (data, dl, WRITE), (st, sl, WRITE)]),
            Some(st),
            Want::Dropped,
            DROPPED,
        );
    }

    // -- loops --
    {
        let h = t.hdr(T_IN, 0);
        let (data, st) = (t.filled(512, 0), t.status());
        let mut chain = linear(&[(h, 16, 0), (data, 512, WRITE), (st, 1, WRITE)]);
        chain[2].flags |= NEXT;
        chain[2].next = 0;
        t.case(
            "a chain looping to its head",
            &chain,
            Some(st),
            Want::Dropped,
            DROPPED,
        );
        chain[2].next = 2;
        t.case(
            "a descriptor pointing at itself",
            &chain,
            Some(st),
            Want::Dropped,
            DROPPED,
        );
        let mut chain = linear(&[(h, 16, 0), (st, 1, WRITE)]);
        chain[1].flags |= NEXT;
        chain[1].next = QS;
        t.case(
            "next = queue size",
            &chain,
            Some(st),
            Want::Dropped,
            DROPPED,
        );
        chain[1].next = u16::MAX;
        t.case("next = 0xffff", &chain, Some(st), Want::Dropped, DROPPED);
    }

    // -- indirect tables --
    {
        let h = t.hdr(T_IN, 0);
        let (data, st) = (t.filled(512, 0), t.status());
        let entries = linear(&[(h, 16, 0), (data, 512, WRITE), (st, 1, WRITE)]);
        let tbl = t.alloc(&table(&entries));
        let ind = |len: u32, flags: u16| RawDesc {
            addr: tbl,
            len,
            flags: INDIRECT | flags,
            next: 0,
        };
        t.case(
            "indirect, WRITE flag on the table descriptor (ignored, 2.7.5.3.2)",
            &[ind(48, WRITE)],
            Some(st),
            Want::Status(S_OK, 513),
            READ,
        );
        for (name, d) in [
            ("indirect table of 24 bytes", ind(24, 0)),
            ("indirect table of 0 bytes", ind(0, 0)),
            ("indirect table of u32::MAX bytes", ind(u32::MAX, 0)),
            ("indirect table of 65536 entries", ind(16 << 16, 0)),
            (
                "indirect table outside memory",
                RawDesc {
                    addr: mem + 4096,
                    ..ind(48, 0)
                },
            ),
            (
                "indirect table across the end of memory",
                RawDesc {
                    addr: mem - 32,
                    ..ind(48, 0)
                },
            ),
        ] {
            t.case(name, &[d], Some(st), Want::Dropped, DROPPED);
        }
        let mut with_next = vec![ind(48, NEXT), RawDesc::default()];
        with_next[0].next = 1;
        with_next[1] = RawDesc {
            addr: st,
            len: 1,
            flags: WRITE,
            next: 0,
        };
        t.case(
            "indirect and NEXT together",
            &with_next,
            Some(st),
            Want::Dropped,
            DROPPED,
        );
        let mut bad = entries.clone();
        bad[1] = RawDesc {
            addr: tbl,
            len: 48,
            flags: INDIRECT | NEXT,
            next: 2,
        };
        let nested = t.alloc(&table(&bad));
        t.case(
            "nested indirect table",
            &[RawDesc {
                addr: nested,
                ..ind(48, 0)
            }],
            Some(st),
            Want::Dropped,
            DROPPED,
        );
        for (name, patch) in [
            ("indirect entry with next past the table", (1usize, 3u16)),
            ("indirect entries in a loop", (2, 0)),
        ] {
            let mut e = entries.clone();
            e[patch.0].flags |= NEXT;
            e[patch.0].next = patch.1;
            let tb = t.alloc(&table(&e));
            t.case(
                name,
                &[RawDesc {
                    addr: tb,
                    ..ind(48, 0)
                }],
                Some(st),
                Want::Dropped,
                DROPPED,
            );
        }
        let mut e = entries.clone();
        e[1].len = u32::MAX;
        let tb = t.alloc(&table(&e));
        t.case(
            "indirect entry of u32::MAX bytes",
            &[RawDesc {
                addr: tb,
                ..ind(48, 0)
            }],
            Some(st),
            Want::Dropped,
            DROPPED,
        );
        // An indirect descriptor ending a direct chain (2.7.5.3.1 forbids only
        // INDIRECT with NEXT and nesting): accepted.
        let tail = t.alloc(&table(&linear(&[(data, 512, WRITE), (st, 1, WRITE)])));
        t.case(
            "indirect table at the end of a direct chain",
            &[
                RawDesc {
                    addr: h,
                    len: 16,
                    flags: NEXT,
                    next: 1,
                },
                RawDesc {
                    addr: tail,
                    len: 32,
                    flags: INDIRECT,
                    next: 0,
                },
            ],
            Some(st),
            Want::Status(S_OK, 513),
            READ,
        );
    }

    // -- heads outside the descriptor table --
    for head in [QS, QS + 1, u16::MAX] {
        let before = t.f.counters("d");
        t.blk.post_raw_head(0, head);
        // The device serves the available ring in order: once a request made available
        // after this head is back, the head was consumed.
        let r = t.blk.read(0, 0, 512);
        assert!(r.ok(), "head {head}: the queue goes on");
        assert_eq!(
            t.blk.in_flight(0),
            1,
            "head {head}: no used element (there is no such chain)"
        );
        t.blk.forget_raw_head(0, head);
        assert_eq!(
            t.f.counters("d").minus(before),
            Counters {
                reads: 1,
                ..DROPPED
            },
            "head {head}: counted as a bad chain"
        );
        t.alive(&format!("head {head}"));
    }

    // -- a read-only export --
    let mut ro = t.f.connect("ro", 1);
    assert!(ro.read_only(), "RO offered and acked");
    assert_eq!(
        ro.negotiated_features() & (features::DISCARD | features::WRITE_ZEROES),
        0,
        "no discard or write zeroes on a read-only export"
    );
    let before = t.f.counters("ro");
    let w = ro.write(0, 0, &[1u8; 512]);
    assert_eq!((w.status, w.used_len), (S_IOERR, 1), "write to read-only");
    let d = ro.discard(0, 0, 8, 0);
    assert_eq!((d.status, d.used_len), (S_IOERR, 1), "discard on read-only");
    let z = ro.write_zeroes(0, 0, 8, 0);
    assert_eq!(
        (z.status, z.used_len),
        (S_IOERR, 1),
        "write zeroes on read-only"
    );
    let r = ro.read(0, 0, 4096);
    assert_eq!((r.status, r.used_len), (S_OK, 4097));
    assert!(r.data.iter().all(|&b| b == 0));
    assert!(ro.flush(0).ok(), "flush on read-only");
    assert_eq!(
        t.f.counters("ro").minus(before),
        Counters {
            invalid: 3,
            reads: 1,
            flushes: 1,
            ..NONE
        }
    );
    let id = ro.get_id(0);
    assert_eq!(&id.data[..3], b"ro\0");
    ro.disconnect();

    let mut long = t.f.connect(LONG_NAME, 1);
    let id = long.get_id(0);
    assert_eq!((id.status, id.used_len), (S_OK, 21));
    assert_eq!(
        id.data,
        LONG_NAME.as_bytes()[..ID_BYTES],
        "cut to 20, no NUL"
    );
    long.disconnect();

    t.alive("the other exports");
    assert_eq!(t.blk.missed_notifications(), 0);
    assert_eq!(t.f.counters("d").io_errors, 0);
    t.f.check_pool();
}

// ---- stopping and leaving with requests in flight ----

/// Writes of 256 KiB on both queues, then GET_VRING_BASE as soon as the device has
/// started them all: every one must be in the used ring when the answer comes.
#[test]
fn get_vring_base_completes_requests_in_flight_first() {
    let f = Fixture::start(
        "[[pool.volume]]\nname = \"stopped\"\nsize = \"32M\"\nexport = { queues = 2 }\n",
    );
    let opts = BlkOptions {
        queues: 2,
        queue_size: QS,
        max_data: 256 * 1024,
        ..Default::default()
    };
    let mut blk = f.connect_with("stopped", opts.clone());
    // Write-through: each completion waits for the pool to be flushed, which keeps
    // requests in flight longer.
    blk.set_writeback(false).expect("writeback off");
    assert_eq!(blk.config().writeback, 0);
    const PER_QUEUE: u64 = 32;
    let len = 256 * 1024;
    let before = f.counters("stopped");
    // All of a queue's writes made available at once: the device starts them together.
    let mut heads = Vec::new();
    for q in 0..2 {
        let ns: Vec<u64> = (0..PER_QUEUE).map(|i| q as u64 * PER_QUEUE + i).collect();
        let data: Vec<Vec<u8>> = ns.iter().map(|&n| pattern(100 + n, 0, len)).collect();
        let reqs: Vec<Req<'_>> = ns
            .iter()
            .zip(&data)
            .map(|(&n, d)| Req::Write {
                sector: n * (len as u64 / SECTOR),
                data: d,
            })
            .collect();
        let hs = blk.submit_batch(q, &reqs).unwrap();
        heads.extend(hs.into_iter().zip(ns).map(|(h, n)| (q, h, n)));
    }
    // Started: the device counts a write when it submits it.
    let deadline = Instant::now() + WAIT;
    while f.counters("stopped").writes - before.writes < 2 * PER_QUEUE {
        assert!(
            Instant::now() < deadline,
            "the device did not start the writes"
        );
        std::thread::yield_now();
    }
    let used_before: u64 = (0..2).map(|q| u64::from(blk.used_idx(q))).sum();
    let bases = blk.stop().expect("GET_VRING_BASE");
    assert_eq!(
        bases,
        vec![PER_QUEUE as u32; 2],
        "every request was consumed"
    );
    for (q, &base) in bases.iter().enumerate() {
        assert_eq!(
            u32::from(blk.used_idx(q)),
            base,
            "queue {q}: GET_VRING_BASE answered with requests it consumed not in the used ring"
        );
    }
    for &(q, head, n) in &heads {
        let done = blk
            .wait(q, head, Duration::ZERO)
            .unwrap_or_else(|e| panic!("write {n} not in the used ring after GET_VRING_BASE: {e}"));
        assert_eq!((done.status, done.used_len), (S_OK, 1), "write {n}");
    }
    eprintln!(
        "{} of {} writes were still in flight when GET_VRING_BASE came",
        2 * PER_QUEUE - used_before,
        2 * PER_QUEUE
    );
    blk.disconnect();
    // The next frontend reads everything back.
    let mut blk = f.connect_with("stopped", opts);
    for n in 0..2 * PER_QUEUE {
        let r = blk.read((n % 2) as usize, n * (len as u64 / SECTOR), len);
        assert!(
            r.ok() && r.data == pattern(100 + n, 0, len),
            "write {n} read back"
        );
    }
    assert_eq!(
        f.counters("stopped").invalid + f.counters("stopped").bad_chains,
        0
    );
    f.check_pool();
}

#[test]
fn a_frontend_dying_with_requests_in_flight_and_the_next_one() {
    let f = Fixture::start(
        "[[pool.volume]]\nname = \"orphan\"\nsize = \"32M\"\nexport = { queues = 2 }\n",
    );
    let opts = BlkOptions {
        queues: 2,
        queue_size: 64,
        max_data: 256 * 1024,
        ..Default::default()
    };
    let kept = pattern(7, 0, 65536);
    {
        let mut blk = f.connect_with("orphan", opts.clone());
        assert!(blk.write(0, 0, &kept).ok());
        assert!(blk.flush(0).ok());
        // 20 requests per queue made available at once, then gone without waiting.
        let data: Vec<Vec<u8>> = (0..40).map(|i| pattern(1000 + i, 0, 256 * 1024)).collect();
        for q in 0..2 {
            let reqs: Vec<Req<'_>> = (0..40u64)
                .filter(|i| i % 2 == q as u64)
                .map(|i| {
                    let sector = 16384 + i * 512;
                    if i % 5 == 4 {
                        Req::Read { sector, len: 65536 }
                    } else {
                        Req::Write {
                            sector,
                            data: &data[i as usize],
                        }
                    }
                })
                .collect();
            blk.submit_batch(q, &reqs).unwrap();
        }
        blk.disconnect();
    }
    for round in 0..2 {
        let mut blk = f.connect_with("orphan", opts.clone());
        let r = blk.read(1, 0, 65536);
        assert!(r.ok() && r.data == kept, "round {round}: flushed data kept");
        for q in 0..2 {
            let data = pattern(round * 2 + q as u64, 0, 8192);
            let sector = 1024 + q as u64 * 16;
            assert!(blk.write(q, sector, &data).ok(), "round {round} q{q} write");
            let r = blk.read(q, sector, 8192);
            assert!(r.ok() && r.data == data, "round {round} q{q} read back");
        }
        // The region the dead frontend was writing reads (old data, new data or a mix:
        // those writes never completed).
        assert!(blk.read(0, 16384, 65536).ok());
        assert_eq!(blk.get_id(0).data[..7], *b"orphan\0");
        blk.disconnect();
    }
    let c = f.counters("orphan");
    assert_eq!((c.invalid, c.bad_chains, c.io_errors), (0, 0, 0), "{c:?}");
    f.check_pool();
}

// ---- seeded random chains ----

/// Guest memory each head owns in the fuzz: everything its chain points at (inside
/// memory) is in its region, so the device writing one chain's buffers never changes
/// what another chain's outcome depends on.
const REGION: u64 = 64 * 1024;

/// What the device must do with a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Dropped,
    Status {
        at: u64,
        code: u8,
        used: u32,
        counted: Counters,
    },
}

/// virtio 1.2 2.7.5 (chains, indirect tables) and 5.2.6 (requests) as this device
/// applies them, written from the spec: what comes back for a chain.
struct Model {
    mem: u64,
    queue_size: u16,
    capacity: u64,
    max_discard: u32,
    max_write_zeroes: u32,
}

impl Model {
    fn valid(&self, addr: u64, len: u32) -> bool {
        addr < self.mem
            && addr
                .checked_add(u64::from(len))
                .is_some_and(|e| e <= self.mem)
    }

    /// The buffers of the chain, or None if the chain itself is broken.
    fn walk(&self, ram: &GuestRam, descs: &[RawDesc]) -> Option<Vec<(u64, u32, bool)>> {
        let mut table: Vec<RawDesc> = descs.to_vec();
        let mut table_len = usize::from(self.queue_size);
        let mut indirect = false;
        let mut budget = usize::from(self.queue_size);
        let mut i = 0usize;
        let mut out = Vec::new();
        loop {
            if budget == 0 {
                return None; // longer than the table: a loop
            }
            budget -= 1;
            let d = table[i];
            if d.flags & INDIRECT != 0 {
                if indirect || d.flags & NEXT != 0 || d.len == 0 || !d.len.is_multiple_of(16) {
                    return None;
                }
                let n = d.len as usize / 16;
                if n > usize::from(u16::MAX) || !self.valid(d.addr, d.len) {
                    return None;
                }
                let mut raw = vec![0u8; d.len as usize];
                ram.read(d.addr, &mut raw).unwrap();
                table = raw
                    .chunks(16)
                    .map(|c| RawDesc {
                        addr: u64::from_le_bytes(c[0..8].try_into().unwrap()),
                        len: u32::from_le_bytes(c[8..12].try_into().unwrap()),
                        flags: u16::from_le_bytes(c[12..14].try_into().unwrap()),
                        next: u16::from_le_bytes(c[14..16].try_into().unwrap()),
                    })
                    .collect();
                table_len = n;
                budget = n;
                indirect = true;
                i = 0;
                continue;
            }
            if !self.valid(d.addr, d.len) {
                return None;
            }
            out.push((d.addr, d.len, d.flags & WRITE != 0));
            if d.flags & NEXT == 0 {
                return Some(out);
            }
            if indirect {
                if usize::from(d.next) >= table_len {
                    return None;
                }
                i = usize::from(d.next);
            } else if usize::from(d.next) < descs.len() {
                i = usize::from(d.next); // within the chain (relative)
            } else {
                // The generator only links out of the chain past the table.
                assert!(d.next >= self.queue_size, "fuzz generator bug");
                return None;
            }
        }
    }

    fn predict(&self, ram: &GuestRam, descs: &[RawDesc]) -> Outcome {
        let Some(bufs) = self.walk(ram, descs) else {
            return Outcome::Dropped;
        };
        let &(last, last_len, last_w) = bufs.last().unwrap();
        if !last_w || last_len == 0 {
            return Outcome::Dropped; // no status byte
        }
        let at = last + u64::from(last_len) - 1;
        let status = |code: u8, used: u32, counted: Counters| Outcome::Status {
            at,
            code,
            used,
            counted,
        };
        let fail = |code| status(code, 1, INVALID);
        let readable: u64 = bufs.iter().filter(|b| !b.2).map(|b| u64::from(b.1)).sum();
        let writable: u64 = bufs.iter().filter(|b| b.2).map(|b| u64::from(b.1)).sum();
        let first_w = bufs.iter().position(|b| b.2).unwrap();
        if bufs[first_w..].iter().any(|b| !b.2) || readable < 16 {
            return fail(S_IOERR);
        }
        // Header and segment: the first 32 readable bytes.
        let mut front = Vec::new();
        for &(addr, len, _) in &bufs[..first_w] {
            let n = (32 - front.len()).min(len as usize);
            let mut b = vec![0u8; n];
            ram.read(addr, &mut b).unwrap();
            front.extend(b);
        }
        let kind = u32::from_le_bytes(front[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(front[8..16].try_into().unwrap());
        let data_in = readable - 16;
        let data_out = writable - 1;
        let in_range =
            |offset: u64, len: u64| offset.checked_add(len).is_some_and(|e| e <= self.capacity);
        match kind {
            T_IN | T_OUT => {
                let write = kind == T_OUT;
                let (len, extra) = if write {
                    (data_in, data_out)
                } else {
                    (data_out, data_in)
                };
                match sector.checked_mul(SECTOR) {
                    Some(off) if extra == 0 && len.is_multiple_of(SECTOR) && in_range(off, len) => {
                        if write {
                            status(S_OK, 1, WROTE)
                        } else {
                            status(S_OK, data_out as u32 + 1, READ)
                        }
                    }
                    _ => fail(S_IOERR),
                }
            }
            T_FLUSH => status(S_OK, 1, FLUSHED),
            T_GET_ID => status(S_OK, data_out.min(ID_BYTES as u64) as u32 + 1, NONE),
            T_DISCARD | T_WRITE_ZEROES => {
                if data_in != SEGMENT_LEN as u64 || data_out != 0 {
                    return fail(S_IOERR);
                }
                let s = &front[16..32];
                let start = u64::from_le_bytes(s[0..8].try_into().unwrap());
                let sectors = u32::from_le_bytes(s[8..12].try_into().unwrap());
                let flags = u32::from_le_bytes(s[12..16].try_into().unwrap());
                let discard = kind == T_DISCARD;
                let (allowed, max) = if discard {
                    (0, self.max_discard)
                } else {
                    (WRITE_ZEROES_FLAG_UNMAP, self.max_write_zeroes)
                };
                let Some(off) = start.checked_mul(SECTOR) else {
                    return fail(S_IOERR);
                };
                if flags & !allowed != 0 {
                    return fail(S_UNSUPP);
                }
                if sectors == 0 || sectors > max || !in_range(off, u64::from(sectors) * SECTOR) {
                    return fail(S_IOERR);
                }
                status(S_OK, 1, ZEROED)
            }
            _ => fail(S_UNSUPP),
        }
    }
}

/// Random chains for the head whose region starts at `base`: a third are random
/// descriptors, the rest requests in random framings, some of them damaged.
struct Gen<'a> {
    rng: &'a mut Rng,
    base: u64,
    /// Next free byte of the region (structured requests lay out their buffers).
    cursor: u64,
    mem: u64,
    queue_size: u16,
    capacity: u64,
}

impl Gen<'_> {
    /// `len` bytes inside the region (clamped to fit).
    fn place(&mut self, len: u64) -> u64 {
        let len = len.min(REGION - 1024);
        let align = if chance(self.rng, 2) { 512 } else { 1 };
        let mut at = self.cursor.next_multiple_of(align);
        if at + len > REGION {
            at = 1024; // wrap: the first KiB holds tables
        }
        self.cursor = at + len;
        self.base + at
    }

    fn sector(&mut self) -> u64 {
        match self.rng.below(10) {
            0 => self.capacity - self.rng.below(16),
            1 => self.capacity + self.rng.below(4),
            2 => u64::MAX / SECTOR - self.rng.below(4),
            3 => self.rng.next_u64(),
            _ => self.rng.below(self.capacity),
        }
    }

    fn outside(&mut self) -> (u64, u32) {
        match self.rng.below(3) {
            0 => (
                self.mem + self.rng.below(1 << 20),
                1 + self.rng.below(4096) as u32,
            ),
            1 => {
                let k = 1 + self.rng.below(64);
                (self.mem - k, (k + 1 + self.rng.below(512)) as u32)
            }
            _ => (u64::MAX - self.rng.below(4096), 16),
        }
    }

    fn write(&self, ram: &GuestRam, at: u64, data: &[u8]) {
        ram.write(at, data).unwrap();
    }

    fn chain(&mut self, ram: &GuestRam) -> Vec<RawDesc> {
        self.cursor = 1024;
        if chance(self.rng, 3) {
            self.random(ram)
        } else {
            self.request(ram)
        }
    }

    fn random_desc(&mut self, i: usize, n: usize, in_table: bool) -> RawDesc {
        let (addr, len) = if chance(self.rng, 5) {
            self.outside()
        } else {
            let len = match self.rng.below(6) {
                0 => 0,
                1 => 1,
                2 => 16,
                3 => u32::MAX,
                _ => self.rng.below(4096) as u32,
            };
            let fit = if len == u32::MAX { 16 } else { u64::from(len) };
            let off = self.rng.below(REGION - fit.min(REGION - 1));
            (self.base + off, len)
        };
        let mut flags = 0;
        if i + 1 < n || chance(self.rng, 8) {
            flags |= NEXT;
        }
        if chance(self.rng, 2) {
            flags |= WRITE;
        }
        let mut next = match self.rng.below(8) {
            0 => self.rng.below(n as u64) as u16,
            1 => (n + self.rng.below(4) as usize) as u16,
            _ => (i + 1) as u16,
        };
        if !in_table && usize::from(next) >= n {
            // Out of the chain means past the descriptor table: slots between belong to
            // other chains, whose contents change under the device's feet.
            next = self.queue_size + self.rng.below(1000) as u16;
        }
        RawDesc {
            addr,
            len,
            flags,
            next,
        }
    }

    fn random(&mut self, ram: &GuestRam) -> Vec<RawDesc> {
        let n = 1 + self.rng.below(6) as usize;
        let mut descs: Vec<RawDesc> = (0..n).map(|i| self.random_desc(i, n, false)).collect();
        if chance(self.rng, 4) {
            // One of them is an indirect table of random descriptors.
            let k = self.rng.below(n as u64) as usize;
            let entries = 1 + self.rng.below(8) as usize;
            let mut t: Vec<RawDesc> = (0..entries)
                .map(|i| self.random_desc(i, entries, true))
                .collect();
            if chance(self.rng, 6) {
                t[0].flags |= INDIRECT;
            }
            let at = self.base + 512;
            self.write(ram, at, &table(&t));
            descs[k].addr = at;
            descs[k].len = 16 * entries as u32 + if chance(self.rng, 6) { 8 } else { 0 };
            descs[k].flags |= INDIRECT;
        }
        // Sometimes a header at the first descriptor.
        if chance(self.rng, 2) && descs[0].flags & INDIRECT == 0 && self.valid(descs[0]) {
            let h = header(self.rng.below(16) as u32, self.sector());
            let n = (descs[0].len as usize).min(16);
            self.write(ram, descs[0].addr, &h[..n]);
        }
        descs
    }

    fn valid(&self, d: RawDesc) -> bool {
        d.addr < self.mem
            && d.addr
                .checked_add(u64::from(d.len))
                .is_some_and(|e| e <= self.mem)
    }

    /// Splits `len` bytes at `at` into 1..=3 pieces.
    fn split(&mut self, at: u64, len: u64, flags: u16, out: &mut Vec<(u64, u32, u16)>) {
        let pieces = if len < 2 { 1 } else { 1 + self.rng.below(3) };
        let mut cuts: Vec<u64> = (1..pieces).map(|_| 1 + self.rng.below(len - 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut from = 0;
        for c in cuts.into_iter().chain([len]) {
            out.push((at + from, (c - from) as u32, flags));
            from = c;
        }
    }

    fn request(&mut self, ram: &GuestRam) -> Vec<RawDesc> {
        let kind = match self.rng.below(16) {
            0..=4 => T_IN,
            5..=9 => T_OUT,
            10 => T_FLUSH,
            11 => T_GET_ID,
            12 => T_DISCARD,
            13 => T_WRITE_ZEROES,
            14 => self.rng.below(20) as u32,
            _ => self.rng.next_u64() as u32,
        };
        let sector = self.sector();
        let mut front = header(kind, sector).to_vec();
        let mut data_len = 0u64;
        let mut data_writable = false;
        match kind {
            T_IN | T_OUT => {
                data_len = match self.rng.below(8) {
                    0 => self.rng.below(4096),
                    1 => 0,
                    _ => SECTOR * (1 + self.rng.below(32)),
                };
                data_writable = kind == T_IN;
            }
            T_GET_ID => {
                data_len = if chance(self.rng, 3) {
                    self.rng.below(64)
                } else {
                    ID_BYTES as u64
                };
                data_writable = true;
            }
            T_DISCARD | T_WRITE_ZEROES => {
                let start = if chance(self.rng, 3) {
                    self.sector()
                } else {
                    self.rng.below(self.capacity)
                };
                let sectors = match self.rng.below(6) {
                    0 => self.rng.next_u64() as u32,
                    1 => 0,
                    _ => 1 + self.rng.below(256) as u32,
                };
                let flags = match self.rng.below(6) {
                    0 => self.rng.next_u64() as u32,
                    1 => 1,
                    _ => 0,
                };
                front.extend(segment(start, sectors, flags));
                if chance(self.rng, 8) {
                    front.extend(segment(start, sectors, flags)); // two segments
                }
            }
            _ => {}
        }
        // Header (and segment) readable, data readable or writable, status writable.
        let mut parts: Vec<(u64, u32, u16)> = Vec::new();
        let merge_front = !data_writable && data_len > 0 && chance(self.rng, 3);
        let front_len = front.len() as u64 + if merge_front { data_len } else { 0 };
        let at = self.place(front_len);
        self.write(ram, at, &front);
        self.split(at, front_len, 0, &mut parts);
        if data_len > 0 && !merge_front {
            let at = self.place(data_len);
            let flags = if data_writable { WRITE } else { 0 };
            self.split(at, data_len, flags, &mut parts);
        }
        if data_writable && data_len > 0 && chance(self.rng, 3) {
            // The status shares the last data descriptor.
            let last = parts.last_mut().unwrap();
            last.1 += 1;
            self.write(ram, last.0 + u64::from(last.1) - 1, &[SENTINEL]);
        } else {
            let at = self.place(1);
            self.write(ram, at, &[SENTINEL]);
            parts.push((at, 1, WRITE));
        }
        let mut descs = linear(&parts);
        if chance(self.rng, 4) {
            self.damage(&mut descs);
        }
        if descs.len() <= 8 && chance(self.rng, 4) {
            // All of it in an indirect table.
            let at = self.base + 512;
            let mut t = descs.clone();
            for d in t.iter_mut().filter(|d| d.flags & NEXT == 0) {
                d.next = 0;
            }
            self.write(ram, at, &table(&t));
            let mut flags = INDIRECT;
            if chance(self.rng, 8) {
                flags |= WRITE;
            }
            let mut len = 16 * t.len() as u32;
            if chance(self.rng, 10) {
                len += 8;
            }
            return vec![RawDesc {
                addr: at,
                len,
                flags,
                next: 0,
            }];
        }
        descs
    }

    /// One mistake in a request's chain.
    fn damage(&mut self, descs: &mut [RawDesc]) {
        let n = descs.len();
        let k = self.rng.below(n as u64) as usize;
        match self.rng.below(7) {
            0 => descs[k].flags ^= WRITE,
            1 => (descs[k].addr, descs[k].len) = self.outside(),
            2 => {
                descs[k].len =
                    [0, u32::MAX, descs[k].len.wrapping_add(1)][self.rng.below(3) as usize]
            }
            3 => {
                descs[n - 1].flags |= NEXT;
                descs[n - 1].next = self.rng.below(n as u64) as u16; // a loop
            }
            4 => {
                descs[k].flags |= NEXT;
                descs[k].next = self.queue_size + self.rng.below(100) as u16;
            }
            5 => descs[k].flags &= !NEXT, // cut short
            _ => descs.swap(k, self.rng.below(n as u64) as usize),
        }
    }
}

#[test]
fn seeded_random_chains() {
    let base: u64 = std::env::var("BLK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xb10c);
    for seed in base..base + 2 {
        fuzz(seed);
    }
}

/// 12 batches of 250 chains on queue 0, from `seed`.
fn fuzz(seed: u64) {
    const BATCHES: usize = 12;
    const PER_BATCH: usize = 250;
    let f = Fixture::start(
        "[[pool.volume]]\nname = \"fuzzed\"\nsize = \"32M\"\nexport = { queues = 2 }\n",
    );
    let mut blk = f.connect_with(
        "fuzzed",
        BlkOptions {
            queues: 2,
            queue_size: QS,
            sandbox: u64::from(QS) * REGION + 4096,
            ..Default::default()
        },
    );
    let config = blk.config();
    let (sandbox, _) = blk.sandbox();
    let model = Model {
        mem: blk.mem_size(),
        queue_size: QS,
        capacity: config.bytes(),
        max_discard: config.max_discard_sectors,
        max_write_zeroes: config.max_write_zeroes_sectors,
    };
    let mut rng = Rng::new(seed);
    let mut pending: HashMap<u16, (Outcome, Vec<RawDesc>)> = HashMap::new();
    let mut outcomes: HashMap<&str, u64> = HashMap::new();
    let mut posted = 0u64;
    for batch in 0..BATCHES {
        let before = f.counters("fuzzed");
        let mut expected = NONE;
        let mut raw_heads: Vec<u16> = Vec::new();
        let mut check = |blk: &mut GuestBlk,
                         pending: &mut HashMap<u16, (Outcome, Vec<RawDesc>)>,
                         expected: &mut Counters| {
            for (id, used) in blk.take_used(0) {
                let (want, chain) = pending
                    .remove(&(id as u16))
                    .unwrap_or_else(|| panic!("seed {seed}: used id {id} was not posted"));
                match want {
                    Outcome::Dropped => {
                        assert_eq!(used, 0, "seed {seed}: dropped chain {chain:x?}");
                        expected.bad_chains += 1;
                        *outcomes.entry("dropped").or_default() += 1;
                    }
                    Outcome::Status {
                        at,
                        code,
                        used: want_used,
                        counted,
                    } => {
                        let got = blk.read_byte(at);
                        assert_eq!(
                            (got, used),
                            (code, want_used),
                            "seed {seed}: (status, used len) of {chain:x?}"
                        );
                        expected.reads += counted.reads;
                        expected.writes += counted.writes;
                        expected.flushes += counted.flushes;
                        expected.discards += counted.discards;
                        expected.invalid += counted.invalid;
                        let name = match code {
                            S_OK => "ok",
                            S_IOERR => "ioerr",
                            _ => "unsupp",
                        };
                        *outcomes.entry(name).or_default() += 1;
                    }
                }
            }
        };
        for i in 0..PER_BATCH {
            // Now and then a head past the table (never the last of a batch: a chain
            // after it proves it was consumed).
            if i + 1 < PER_BATCH && chance(&mut rng, 100) {
                let head = QS + rng.below(u64::from(u16::MAX - QS)) as u16;
                blk.post_raw_head(0, head);
                raw_heads.push(head);
                expected.bad_chains += 1;
                continue;
            }
            let head = loop {
                if blk.free_descriptors(0) >= 8 {
                    break blk.next_head(0).unwrap();
                }
                assert!(
                    blk.wait_any(0, WAIT),
                    "seed {seed} batch {batch}: the queue stalled with {} chains out",
                    pending.len()
                );
                check(&mut blk, &mut pending, &mut expected);
            };
            let mut gen = Gen {
                rng: &mut rng,
                base: sandbox + u64::from(head) * REGION,
                cursor: 1024,
                mem: blk.mem_size(),
                queue_size: QS,
                capacity: model.capacity / SECTOR,
            };
            let chain = gen.chain(blk.ram());
            let want = model.predict(blk.ram(), &chain);
            assert_eq!(blk.post_raw(0, &chain), Some(head));
            pending.insert(head, (want, chain));
            posted += 1;
        }
        assert!(
            blk.wait_chains_returned(0, WAIT),
            "seed {seed} batch {batch}: {} chains not returned",
            blk.in_flight(0)
        );
        check(&mut blk, &mut pending, &mut expected);
        assert!(pending.is_empty());
        // Heads past the table: consumed, counted, never returned.
        assert_eq!(
            blk.in_flight(0),
            raw_heads.len(),
            "seed {seed} batch {batch}: heads past the table are not returned"
        );
        for h in raw_heads {
            blk.forget_raw_head(0, h);
        }
        assert_eq!(
            f.counters("fuzzed").minus(before),
            expected,
            "seed {seed} batch {batch}: counters"
        );
        // Another queue is not disturbed.
        let data = pattern(seed + batch as u64, 0, 4096);
        let sector = (batch as u64 * 8) % (model.capacity / SECTOR - 8);
        let w = blk.write(1, sector, &data);
        assert_eq!((w.status, w.used_len), (S_OK, 1), "seed {seed}: q1 write");
        let r = blk.read(1, sector, 4096);
        assert!(r.ok() && r.data == data, "seed {seed}: q1 read back");
    }
    // The fuzzed queue itself still works.
    let data = pattern(seed, 0, 8192);
    assert!(blk.write(0, 100, &data).ok());
    let r = blk.read(0, 100, 8192);
    assert!(r.ok() && r.data == data, "seed {seed}: q0 after the fuzz");
    assert_eq!(blk.missed_notifications(), 0);
    let c = f.counters("fuzzed");
    assert_eq!((c.io_errors, c.out_of_space), (0, 0), "{c:?}");
    eprintln!("seed {seed}: {posted} chains: {outcomes:?}");
    f.check_pool();
}

/// The write cache follows the durability contract: with FLUSH negotiated the
/// device starts write-back (a first write's metadata waits for a FLUSH);
/// switched off through CONFIG_WCE, or without FLUSH negotiated, each write is
/// durable (the pool committed) before it completes.
#[test]
fn write_cache_modes_follow_the_negotiated_features() {
    let f = Fixture::start("[[pool.volume]]\nname = \"wc\"\nsize = \"8M\"\nexport = {}\n");
    let commits = || {
        f.daemon()
            .pool("p0")
            .unwrap()
            .lock()
            .unwrap()
            .stats()
            .commits
    };
    let data = vec![0x5au8; 4096];

    let mut g = f.connect("wc", 1);
    assert_eq!(g.config().writeback, 1, "FLUSH negotiated: write-back");
    let before = commits();
    assert_eq!(g.write(0, 0, &data).status, 0);
    assert_eq!(commits(), before, "write-back: no commit per write");
    assert_eq!(g.flush(0).status, 0);
    assert_eq!(commits(), before + 1, "FLUSH commits once");

    g.set_writeback(false).unwrap();
    assert_eq!(g.config().writeback, 0);
    let before = commits();
    assert_eq!(g.write(0, 64, &data).status, 0);
    assert_eq!(
        commits(),
        before + 1,
        "write-through after CONFIG_WCE: committed once, before completion"
    );
    drop(g);

    let mut g = f.connect_with(
        "wc",
        BlkOptions {
            flush: false,
            queue_size: QS,
            ..Default::default()
        },
    );
    assert_eq!(g.config().writeback, 0, "no FLUSH: write-through");
    let before = commits();
    assert_eq!(g.write(0, 128, &data).status, 0);
    assert_eq!(
        commits(),
        before + 1,
        "write-through without FLUSH: committed once, before completion"
    );
}

/// The cache mode the device runs is the one the guest was shown. QEMU reads the config
/// space when it creates the device, before any feature is negotiated, and a Linux guest
/// that copy shows a write-through disk never sends FLUSH. A device that switched itself
/// to write-back at negotiation completed writes the guest took as durable and lost them
/// when the daemon died (reproduced with a QEMU guest: tests/blk/qemu_blk.rs).
#[test]
fn the_cache_mode_run_is_the_one_shown_before_negotiation() {
    let f = Fixture::start("[[pool.volume]]\nname = \"wc\"\nsize = \"8M\"\nexport = {}\n");
    let stats = || f.daemon().pool("p0").unwrap().lock().unwrap().stats();
    let data = vec![0x6bu8; 4096];
    for (i, flush) in [true, false].into_iter().enumerate() {
        let mut g = f.connect_with(
            "wc",
            BlkOptions {
                flush,
                queue_size: QS,
                ..Default::default()
            },
        );
        let shown = g
            .config_before_features()
            .expect("GET_CONFIG before SET_FEATURES");
        assert_eq!(
            g.guest_sees_write_back(),
            flush,
            "a guest that can FLUSH is shown a write cache, one that cannot is not \
             (writeback byte before negotiation: {})",
            shown.writeback
        );
        // A first write to a new cluster: its allocation is metadata.
        let before = stats();
        assert_eq!(g.write(0, 2048 * i as u64, &data).status, 0);
        let after = stats();
        if flush {
            assert_eq!(
                after.commits, before.commits,
                "write-back: no commit per write"
            );
            assert_eq!(
                after.stages,
                before.stages + 1,
                "write-back: the allocation is staged (survives the daemon) before completion"
            );
        } else {
            assert!(
                after.commits > before.commits,
                "write-through: committed before completion"
            );
        }
    }
}
