//! The seed workload through each engine approach against its floor: the same
//! kernels in a plain loop on as many threads as the cluster has workers.
//!
//! `cargo bench --bench seed_floor` (N=200, M=1,000,000, W=4).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quiver::{Cluster, seed};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const N: usize = 200;
const M: usize = 1_000_000;
const W: usize = 4;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("seed");
    g.sample_size(10)
        .throughput(Throughput::Bytes((N * M * 8) as u64));
    g.bench_function(BenchmarkId::new("floor", W), |b| {
        b.iter(|| seed::floor(W, N, M))
    });
    let cluster = Cluster::local(W).expect("cluster");
    let client = cluster.client();
    for name in seed::APPROACHES {
        g.bench_function(BenchmarkId::new(name, W), |b| {
            b.iter(|| seed::run(name, &client, N, M).expect("seed run"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
