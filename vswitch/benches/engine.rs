//! Engine throughput: classify + learn + lookup of 64-byte frames with 1 thousand
//! and 1 million stations in the FDB, and the FDB's memory per entry.
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

fn receive(c: &mut Criterion) {
    let mut group = c.benchmark_group("classify_learn_lookup");
    for stations in [1_000u32, 1_000_000] {
        let sw = populated(stations);
        // Known source on port a to a known destination on port b; spread over the
        // table so the 1M case misses the caches as a real host would.
        let frames: Vec<[u8; 64]> = (0..4096u32)
            .map(|i| {
                let k = i.wrapping_mul(2_654_435_761) % stations;
                frame(stations + k, k)
            })
            .collect();
        let bytes = sw.fdb().heap_bytes();
        eprintln!(
            "fdb with {} entries: {} heap bytes, {:.1} bytes/entry",
            sw.fdb().len(),
            bytes,
            bytes as f64 / sw.fdb().len() as f64
        );
        group.throughput(Throughput::Elements(frames.len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(stations),
            &frames,
            |b, frames| {
                let topo = sw.topology();
                b.iter(|| {
                    for f in frames {
                        let ingress = sw.receive(&topo, 0, &f[..18], 64, 1);
                        black_box(ingress.ok());
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, receive);
criterion_main!(benches);
