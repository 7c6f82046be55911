//! A hostile guest: thousands of seeded random TX descriptor chains (random
//! addresses, lengths, flags, links, indirect tables of random bytes) and random
//! frames from one port, against the real daemon in process.
//!
//! Invariants, checked after every round:
//! - every chain the guest posted comes back (the ring never stalls);
//! - every chain is accounted for: received as a frame, or dropped as a bad
//!   descriptor (`rx_packets + drop_bad_descriptor == chains posted`);
//! - nothing delivered to another port is shorter than an Ethernet header or
//!   longer than the MTU allows;
//! - the daemon keeps forwarding between the other ports, and for the fuzzer.
//!
//! Seeds are fixed so a failure reproduces; `FABRIC_FUZZ_SEED` picks another.

mod support;

use std::time::Duration;
use support::fabric::{Fabric, WAIT};
use support::frames::{payload, ETHERTYPE_TEST};
use support::virtio_net::VNET_HDR_LEN;
use support::{eth, mac, GuestNic, RawDesc, BROADCAST};
use vswitch::DropReason;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

/// xorshift64*: small, seeded, good enough to pick cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A random chain of 1..=6 descriptors; some valid, most not.
fn random_chain(rng: &mut Rng, nic: &mut GuestNic, mem_size: u64) -> Vec<RawDesc> {
    let n = 1 + rng.below(6) as usize;
    (0..n)
        .map(|i| {
            let buffer_len = rng.below(1600) as usize;
            let addr = match rng.below(6) {
                0 => rng.next(),
                1 => mem_size.wrapping_sub(rng.below(64)),
                2 => 0,
                _ => {
                    // A real buffer holding a header and a random frame (random MACs,
                    // maybe a tag, maybe a runt).
                    let mut b = vec![0u8; VNET_HDR_LEN];
                    b.extend(rng.bytes(buffer_len.max(1)));
                    nic.guest_alloc(&b)
                }
            };
            let len = match rng.below(6) {
                0 => 0,
                1 => rng.next() as u32,
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
                let table = rng.bytes(entries * 16);
                (
                    nic.guest_alloc(&table),
                    (entries * 16) as u32 + rng.below(2) as u32 * 8,
                )
            } else {
                (addr, len)
            };
            let next = if rng.below(4) == 0 {
                rng.next() as u16
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

fn fuzz(seed: u64) {
    let access = "{ mode = \"access\", tag = 10 }";
    let f = Fabric::start("", &[("fuzz", access), ("p2", access), ("p3", access)]);
    let (mut fuzz, mut p2, mut p3) = (f.connect("fuzz"), f.connect("p2"), f.connect("p3"));
    let mem_size = fuzz.mem_size();
    let mut rng = Rng(seed | 1);
    let mut posted = 0u64;
    for round in 0..20 {
        for _ in 0..100 {
            if rng.below(4) == 0 {
                // A random but well-formed chain: random frame bytes.
                let len = rng.below(1600) as usize;
                let frame = rng.bytes(len);
                while !fuzz.send(&frame) {
                    assert!(
                        fuzz.wait_tx_completed(WAIT),
                        "seed {seed} round {round}: TX ring stalled"
                    );
                }
            } else {
                let chain = random_chain(&mut rng, &mut fuzz, mem_size);
                while !fuzz.send_raw_chain(&chain) {
                    assert!(
                        fuzz.wait_tx_completed(WAIT),
                        "seed {seed} round {round}: TX ring stalled"
                    );
                }
            }
            posted += 1;
        }
        assert!(
            fuzz.wait_tx_completed(WAIT),
            "seed {seed} round {round}: not every chain came back"
        );
        let c = f.counters("fuzz");
        assert_eq!(
            c.rx_packets + c.dropped(DropReason::BadDescriptor),
            posted,
            "seed {seed} round {round}: every chain is a frame or a counted bad descriptor: {c:?}"
        );
        for nic in [&mut p2, &mut p3] {
            for frame in nic.recv_all(Duration::from_millis(20)) {
                assert!(
                    (14..=1518).contains(&frame.len()),
                    "seed {seed}: delivered a {}-byte frame",
                    frame.len()
                );
            }
        }
    }
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
