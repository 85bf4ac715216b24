//! Pick + release per algorithm at 10 / 100 / 1000 backends, and the Maglev table build.
//!
//! Run pinned to one core: `taskset -c 1 cargo bench -p flowgate-lb -- --measurement-time 3`

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use flowgate_lb::algorithm::maglev_table;
use flowgate_lb::{Algorithm, Backend, Balancer, BalancerConfig};

fn backends(n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| {
            let addr = format!("10.{}.{}.{}:80", i / 65536, (i / 256) % 256, i % 256);
            Backend::new(addr.parse().unwrap_or_else(|_| unreachable_addr()))
        })
        .collect()
}

fn unreachable_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([0, 0, 0, 0], 0))
}

fn pick_release(c: &mut Criterion) {
    let algos = [
        ("round_robin", Algorithm::RoundRobin),
        ("least_request_p2c", Algorithm::LeastRequest),
        ("maglev", Algorithm::maglev()),
        ("ring_hash_ketama", Algorithm::ketama()),
    ];
    let mut group = c.benchmark_group("pick_release");
    for (name, algo) in algos {
        for n in [10usize, 100, 1000] {
            let Ok(lb) = Balancer::new(BalancerConfig::new(algo.clone())) else {
                continue;
            };
            lb.set_backends(backends(n));
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let lease = lb.pick(black_box(key));
                    black_box(lease.is_some());
                })
            });
        }
    }
    group.finish();
}

fn maglev_build(c: &mut Criterion) {
    let names: Vec<String> = backends(1000).iter().map(|b| b.addr.to_string()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let weights = vec![1u32; refs.len()];
    c.bench_function("maglev_build_1000x65537", |b| {
        b.iter(|| black_box(maglev_table(black_box(&refs), &weights, 65_537)))
    });
}

criterion_group!(benches, pick_release, maglev_build);
criterion_main!(benches);
