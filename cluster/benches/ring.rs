//! Ring lookup, as the hot path does it for every batch and every re-routed event: load
//! the shared ring, look a route key up. Issue 5 target: <= 200 ns.
//!
//! `cargo bench -p satmesh-cluster --bench ring` (about 15 s).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use satmesh_cluster::{Ring, SharedRing, route_key};

/// OAP nodes as satmesh names them (`ip:port`).
fn nodes(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("10.8.{}.{}:11800", i / 7, 10 + i))
        .collect()
}

/// Route keys as `key_of` builds them: service + Java-agent-style instance names
/// (`uuid@ip`). Many distinct keys, looked up in turn, so the bench does not read one
/// cached path of the ring over and over.
fn keys(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let service = format!("mall-{}-service", ["order", "cart", "pay", "user"][i % 4]);
            let instance = format!(
                "{:08x}-4e1c-9b7a-{:012x}@10.244.{}.{}",
                i,
                i * 7919,
                i / 250,
                i % 250
            );
            route_key(&service, &instance)
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let keys = keys(4096);
    let mut group = c.benchmark_group("ring_lookup");
    group
        .sample_size(40)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .nresamples(10_000)
        .throughput(Throughput::Elements(1));
    for n in [3, 10] {
        let shared = SharedRing::new(Ring::new(&nodes(n)));
        assert_eq!(shared.load().vnodes_per_node(), 2000);
        // The hot path: load the published ring, look one key up.
        group.bench_with_input(BenchmarkId::new("shared", n), &shared, |b, shared| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % keys.len();
                let ring = shared.load();
                black_box(ring.lookup(black_box(&keys[i])).map(str::len))
            })
        });
        // The ring alone, without the ArcSwap load.
        let ring = Ring::new(&nodes(n));
        group.bench_with_input(BenchmarkId::new("ring", n), &ring, |b, ring| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(ring.lookup(black_box(&keys[i])).map(str::len))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
