//! A hostile guest: thousands of seeded random TX descriptor chains (random
//! addresses, lengths, flags, links, indirect tables of random bytes) and random
//! frames from one port, against the real daemon in process.
//!
//! Invariants, checked after every round:
//! - every chain the guest posted comes back (the ring never stalls);
//! - every chain is accounted for: received as a frame, or dropped as a bad
//!   descriptor or for bad offload metadata in its virtio-net header
//!   (`rx_packets + those drops == chains posted`);
//! - everything delivered to another port is byte for byte a frame the fuzzer
//!   posted (as a model of the walk reads its chain from guest memory), at
//!   most as often as it was posted, and no shorter than an Ethernet header or
//!   longer than the MTU allows;
//! - the daemon keeps forwarding between the other ports, and for the fuzzer.
//!
//! Seeds are fixed so a failure reproduces; `FABRIC_FUZZ_SEED` picks another.

use test_kit::frontend as support;

use std::collections::HashMap;
use std::time::Duration;
use support::fabric::{Fabric, WAIT};
use support::frames::{payload, ETHERTYPE_TEST};
use support::virtio_net::VNET_HDR_LEN;
use support::{eth, mac, GuestNic, RawDesc, BROADCAST};
use vswitch::DropReason;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

/// The kit's seeded PRNG picks the cases.
type Rng = test_kit::SplitMix64;

/// `len` random bytes.
fn bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut b = vec![0; len];
    rng.fill(&mut b);
    b
}

/// A random chain of 1..=6 descriptors; some valid, most not.
fn random_chain(rng: &mut Rng, nic: &mut GuestNic, mem_size: u64) -> Vec<RawDesc> {
    let n = 1 + rng.below(6) as usize;
    (0..n)
        .map(|i| {
            let buffer_len = rng.below(1600) as usize;
            let addr = match rng.below(6) {
                0 => rng.next_u64(),
                1 => mem_size.wrapping_sub(rng.below(64)),
                2 => 0,
                _ => {
                    // A real buffer holding a header and a random frame (random MACs,
                    // maybe a tag, maybe a runt).
                    let mut b = vec![0u8; VNET_HDR_LEN];
                    b.extend(bytes(rng, buffer_len.max(1)));
                    nic.guest_alloc(&b)
                }
            };
            let len = match rng.below(6) {
                0 => 0,
                1 => rng.next_u64() as u32,
                2 => u32::MAX,
                _ => (VNET_HDR_LEN + buffer_len) as u32,
            };
            let mut flags = 0;
            if i + 1 < n || rng.below(8) == 0 {
                flags |= NEXT;
            }
            if rng.below(10) == 0 {
                flags |= WRITE;
            }
            let (addr, len) = if rng.below(12) == 0 {
                // An indirect table of random descriptors.
                flags |= INDIRECT;
                let entries = 1 + rng.below(8) as usize;
                let table = bytes(rng, entries * 16);
                (
                    nic.guest_alloc(&table),
                    (entries * 16) as u32 + rng.below(2) as u32 * 8,
                )
            } else {
                (addr, len)
            };
            let next = if rng.below(4) == 0 {
                rng.next_u64() as u16
            } else {
                (i + 1) as u16
            };
            RawDesc {
                addr,
                len,
                flags,
                next,
            }
        })
        .collect()
}

/// One descriptor as the driver left it in guest memory.
struct MemDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc(nic: &GuestNic, table: u64, index: u16) -> Option<MemDesc> {
    let mut raw = [0u8; 16];
    nic.ram()
        .read(table + 16 * u64::from(index), &mut raw)
        .ok()?;
    Some(MemDesc {
        addr: u64::from_le_bytes(raw[0..8].try_into().unwrap()),
        len: u32::from_le_bytes(raw[8..12].try_into().unwrap()),
        flags: u16::from_le_bytes(raw[12..14].try_into().unwrap()),
        next: u16::from_le_bytes(raw[14..16].try_into().unwrap()),
    })
}

/// The frame the chain posted last would carry, read from guest memory: its
/// buffers in order, minus the virtio-net header. A lenient model of the
/// device's walk (no rule on flags, counts or sizes beyond a loop bound):
/// the device's extra rules only drop frames, never change one. `None` if the
/// chain cannot be followed at all.
fn model_frame(nic: &GuestNic) -> Option<Vec<u8>> {
    let (desc_table, size) = nic.tx_desc_table();
    let (mut table, mut table_len, mut indirect) = (desc_table, size, false);
    let mut d = read_desc(nic, table, nic.tx_last_head())?;
    let mut bytes = Vec::new();
    for _ in 0..2 * usize::from(size) + 2 {
        if d.flags & INDIRECT != 0 {
            if indirect || d.len == 0 || d.len % 16 != 0 || d.len / 16 > 65_535 {
                return None;
            }
            (table, table_len, indirect) = (d.addr, (d.len / 16) as u16, true);
            d = read_desc(nic, table, 0)?;
            continue;
        }
        if d.len > 1 << 17 {
            return None; // longer than any frame the device takes
        }
        let mut buf = vec![0u8; d.len as usize];
        nic.ram().read(d.addr, &mut buf).ok()?;
        bytes.extend_from_slice(&buf);
        if d.flags & NEXT == 0 {
            return (bytes.len() >= VNET_HDR_LEN).then(|| bytes.split_off(VNET_HDR_LEN));
        }
        if d.next >= table_len {
            return None;
        }
        d = read_desc(nic, table, d.next)?;
    }
    None
}

/// Frames a receiver may still get, with how many times each.
type Expected = HashMap<Vec<u8>, u32>;

/// Takes `frame` off `expected`, or fails: it was never posted (or more often).
fn consume(expected: &mut Expected, frame: &[u8], what: &str) {
    match expected.get_mut(frame) {
        Some(n) if *n > 0 => *n -= 1,
        _ => panic!(
            "{what}: delivered a {}-byte frame the fuzzer never posted: {frame:02x?}",
            frame.len()
        ),
    }
}

fn fuzz(seed: u64) {
    let access = "{ mode = \"access\", tag = 10 }";
    let f = Fabric::start("", &[("fuzz", access), ("p2", access), ("p3", access)]);
    let (mut fuzz, mut p2, mut p3) = (f.connect("fuzz"), f.connect("p2"), f.connect("p3"));
    let mem_size = fuzz.mem_size();
    let mut rng = Rng::new(seed);
    let mut posted = 0u64;
    // One multiset per receiver: both see every flooded frame.
    let mut expected = [Expected::new(), Expected::new()];
    for round in 0..20 {
        for i in 0..100 {
            let model = if rng.below(4) == 0 {
                // A random but well-formed chain: random frame bytes.
                let len = rng.below(1600) as usize;
                let frame = bytes(&mut rng, len);
                while !fuzz.send(&frame) {
                    assert!(
                        fuzz.wait_tx_completed(WAIT),
                        "seed {seed} round {round}: TX ring stalled"
                    );
                }
                Some(frame)
            } else {
                let chain = random_chain(&mut rng, &mut fuzz, mem_size);
                while !fuzz.send_raw_chain(&chain) {
                    assert!(
                        fuzz.wait_tx_completed(WAIT),
                        "seed {seed} round {round}: TX ring stalled"
                    );
                }
                let model = model_frame(&fuzz);
                // A `next` outside the chain reads a table slot the next chain
                // may take; scratch buffers are reused after 1 MiB. Letting the
                // device finish keeps what it reads what the model read.
                let outside = chain
                    .iter()
                    .any(|d| d.flags & NEXT != 0 && usize::from(d.next) >= chain.len());
                if outside || i % 16 == 15 {
                    assert!(
                        fuzz.wait_tx_completed(WAIT),
                        "seed {seed} round {round}: TX ring stalled"
                    );
                }
                model
            };
            if let Some(frame) = model {
                for e in &mut expected {
                    *e.entry(frame.clone()).or_default() += 1;
                }
            }
            posted += 1;
        }
        assert!(
            fuzz.wait_tx_completed(WAIT),
            "seed {seed} round {round}: not every chain came back"
        );
        let c = f.counters("fuzz");
        // A random chain's header is whatever its first bytes hold; one pointing at
        // memory the device writes (the used ring) reads bytes that change between
        // runs, so any of the offload metadata drops can appear.
        let refused: u64 = DropReason::ALL
            .iter()
            .filter(|r| r.before_receive())
            .map(|&r| c.dropped(r))
            .sum();
        assert_eq!(
            c.rx_packets + refused,
            posted,
            "seed {seed} round {round}: every chain is a frame, a counted bad descriptor or \
             counted bad offload metadata: {c:?}"
        );
        for (nic, expected) in [&mut p2, &mut p3].into_iter().zip(&mut expected) {
            for frame in nic.recv_all(Duration::from_millis(20)) {
                assert!(
                    (14..=1518).contains(&frame.len()),
                    "seed {seed}: delivered a {}-byte frame",
                    frame.len()
                );
                consume(expected, &frame, &format!("seed {seed} round {round}"));
            }
        }
    }
    // Not vacuous: about half the well-formed frames (those with a unicast
    // source) get through, some raw chains too.
    let delivered = f.counters("p2").tx_packets;
    assert!(
        delivered >= 100,
        "seed {seed}: only {delivered} frames delivered"
    );
    // The others still talk, and so does the fuzzer.
    let hello = eth(mac(3), mac(2), ETHERTYPE_TEST, &payload(1, 100));
    assert!(p2.send(&hello));
    let got = p3.recv_all(Duration::from_millis(300));
    assert!(got.contains(&hello), "seed {seed}: p2 -> p3 still forwards");
    let hello = eth(BROADCAST, mac(1), ETHERTYPE_TEST, &payload(2, 100));
    assert!(fuzz.send(&hello));
    let got = p2.recv_all(Duration::from_millis(300));
    assert!(
        got.contains(&hello),
        "seed {seed}: the fuzzing port itself still forwards"
    );
}

#[test]
fn random_descriptor_chains_never_hurt_the_daemon() {
    let base: u64 = std::env::var("FABRIC_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    for seed in base..base + 3 {
        fuzz(seed);
    }
}
