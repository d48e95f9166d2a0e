//! The scheduler state machine alone: no-op tasks submitted, run and freed by
//! a fake driver that finishes every task at once. Reports state transitions/s.
//!
//! `cargo bench --bench scheduler`

use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quiver::engine::scheduler::{Command, Event, Scheduler, SchedulerConfig, WorkerInfo};
use quiver::{Arg, Graph, Key, OpRegistry, Submission, Task};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `n` roots, one consumer each, and a tree of partials over the consumers.
fn graph(n: usize) -> (Graph, Key) {
    let mut g = Graph::new();
    let mut level: Vec<Key> = (0..n)
        .map(|i| {
            let (r, c) = (
                Key::from(format!("r-{i}").as_str()),
                Key::from(format!("c-{i}").as_str()),
            );
            g.insert(r.clone(), Task::new("noop"));
            g.insert(c.clone(), Task::new("noop").arg(r));
            c
        })
        .collect();
    let mut depth = 0;
    while level.len() > 1 {
        depth += 1;
        level = level
            .chunks(32)
            .enumerate()
            .map(|(i, part)| {
                let k = Key::from(format!("t-{depth}-{i}").as_str());
                g.insert(
                    k.clone(),
                    Task::new("noop").arg(Arg::List(part.iter().map(Arg::from).collect())),
                );
                k
            })
            .collect();
    }
    (g, level.pop().expect("root"))
}

/// Runs the whole graph; returns the transitions made.
fn run(graph: Graph, root: Key) -> u64 {
    let mut s = Scheduler::new(SchedulerConfig::default(), Arc::new(OpRegistry::builtin()));
    let now = Instant::now();
    let mut out = Vec::new();
    for worker in 0..4 {
        let info = WorkerInfo {
            nthreads: 2,
            ..Default::default()
        };
        s.handle(Event::AddWorker { worker, info }, now, &mut out)
            .expect("add");
    }
    let sub = Submission {
        graph,
        keys: vec![root.clone()],
    };
    s.handle(
        Event::Submit {
            client: 1,
            submission: sub,
        },
        now,
        &mut out,
    )
    .expect("submit");
    let mut next = Vec::new();
    while !out.is_empty() {
        for c in out.drain(..) {
            if let Command::Run { worker, key, .. } = c {
                s.handle(
                    Event::TaskFinished {
                        worker,
                        key,
                        nbytes: 8,
                    },
                    now,
                    &mut next,
                )
                .expect("finish");
            }
        }
        std::mem::swap(&mut out, &mut next);
    }
    s.handle(
        Event::Release {
            client: 1,
            keys: vec![root],
        },
        now,
        &mut out,
    )
    .expect("release");
    assert_eq!(s.num_tasks(), 0);
    s.transitions()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler");
    g.sample_size(10);
    for n in [10_000usize, 100_000] {
        let (graph_, root) = graph(n);
        let transitions = run(graph_.clone(), root.clone());
        g.throughput(Throughput::Elements(transitions));
        g.bench_with_input(
            BenchmarkId::new("noop_transitions", graph_.len()),
            &n,
            |b, _| {
                b.iter_batched(
                    || graph_.clone(),
                    |gr| run(gr, root.clone()),
                    criterion::BatchSize::LargeInput,
                )
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
