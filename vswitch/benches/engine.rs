//! Engine throughput: classify + learn + lookup of 64-byte frames with 2 thousand
//! and 2 million entries in the FDB (half the stations on each of two ports), and the
//! FDB's memory per entry. The frames visit every station of the table in a scrambled
//! order, so the 2-million case misses the caches as a busy host would.
//!
//! `cargo bench -p vswitch --bench engine`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use vswitch::{MacAddr, Switch, VlanId, VlanMode};

fn mac(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x02, 0x00, b[0], b[1], b[2], b[3]]
}

/// A 64-byte untagged frame from `src` to `dst`.
fn frame(dst: u32, src: u32) -> [u8; 64] {
    let mut f = [0u8; 64];
    f[0..6].copy_from_slice(&mac(dst));
    f[6..12].copy_from_slice(&mac(src));
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}

/// A switch with two access ports and `stations` MACs learned on each.
fn populated(stations: u32) -> Switch {
    let sw = Switch::new("bench", 4 * stations, 2 * stations, 300);
    for name in ["a", "b"] {
        let id = sw
            .add_port(name, VlanMode::Access(VlanId::DEFAULT), 1500)
            .unwrap();
        sw.set_link(id, true);
    }
    for i in 0..stations {
        sw.fdb().learn(VlanId::DEFAULT, MacAddr(mac(i)), 0, 0);
        sw.fdb()
            .learn(VlanId::DEFAULT, MacAddr(mac(stations + i)), 1, 0);
    }
    sw
}

/// Frames per measured batch.
const BATCH: u64 = 4096;
/// Odd and not a multiple of 5, so coprime with the station counts (powers of 10) below:
/// `step * SCRAMBLE % stations` visits every station once per `stations` steps.
const SCRAMBLE: u64 = 2_654_435_761;

fn receive(c: &mut Criterion) {
    let mut group = c.benchmark_group("classify_learn_lookup");
    for stations in [1_000u32, 1_000_000] {
        let sw = populated(stations);
        let bytes = sw.fdb().heap_bytes();
        eprintln!(
            "fdb with {} entries: {} heap bytes, {:.1} bytes/entry",
            sw.fdb().len(),
            bytes,
            bytes as f64 / sw.fdb().len() as f64
        );
        group.throughput(Throughput::Elements(BATCH));
        group.bench_function(BenchmarkId::from_parameter(2 * stations), |b| {
            let topo = sw.topology();
            // Carried across batches: the run walks the whole table, not one batch of it.
            let mut step = 0u64;
            b.iter(|| {
                for _ in 0..BATCH {
                    // Known source on port a to a known destination on port b.
                    let k = (step * SCRAMBLE % u64::from(stations)) as u32;
                    step = (step + 1) % u64::from(stations);
                    let f = frame(stations + k, k);
                    let ingress = sw.receive(&topo, 0, &f[..18], 64, 1);
                    black_box(ingress.ok());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, receive);
criterion_main!(benches);
