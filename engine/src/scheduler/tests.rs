//! Scheduler tests: a recording fake of the workers, an invariant check after
//! every step, and property tests over random graphs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rustc_hash::FxHashMap;

use super::*;
use crate::graph::{Arg, Graph, Submission, Task};
use crate::ops::OpRegistry;

/// A run the fake driver has been told to carry out.
type Run = (WorkerId, Key, Arc<Task>, Vec<Input>, u32);

/// What `task` computes in these tests: a literal's value, or one more than
/// the sum of its inputs (read from `stores`; `None` if one is gone) and of
/// the literal roots fused into it.
fn compute(
    task: &Task,
    worker: WorkerId,
    inputs: &[Input],
    stores: &BTreeMap<WorkerId, FxHashMap<Key, f64>>,
) -> Option<f64> {
    fn literal(a: &Arg) -> f64 {
        match a {
            Arg::Literal(v) => v.as_f64().unwrap(),
            _ => unreachable!("only literal roots in these graphs"),
        }
    }
    fn inline_values(a: &Arg) -> f64 {
        match a {
            Arg::Task(t) => literal(&t.args[0]),
            Arg::List(items) => items.iter().map(inline_values).sum(),
            _ => 0.0,
        }
    }
    if task.op == "literal" {
        return Some(literal(&task.args[0]));
    }
    let mut total = 0.0;
    for i in inputs {
        // No holders: computed where this task runs, before it (pipelined).
        let here = [worker];
        let holders = if i.holders.is_empty() {
            &here[..]
        } else {
            &i.holders
        };
        total += holders
            .iter()
            .find_map(|w| stores.get(w)?.get(&i.key).copied())?;
    }
    Some(total + task.args.iter().map(inline_values).sum::<f64>() + 1.0)
}

/// Simulated workers: each store maps key → value; tasks are `literal` or `sum`.
struct Env {
    s: Scheduler,
    now: Instant,
    stores: BTreeMap<WorkerId, FxHashMap<Key, f64>>,
    running: Vec<Run>,
    done: Vec<Key>,
    failed: Vec<(Key, String)>,
    runs: Vec<(WorkerId, Key)>,
    next_worker: WorkerId,
    /// As a worker keeps them: (worker, input) → the run that drops it.
    drops: FxHashMap<(WorkerId, Key), Key>,
    /// Keys dropped by their last reader whose `Free` has not come yet.
    dropped: Vec<(WorkerId, Key)>,
    /// Inputs runs were sent to drop, so far.
    drops_sent: usize,
}

impl Env {
    fn new(workers: usize, nthreads: usize) -> Env {
        Env::with_config(workers, nthreads, SchedulerConfig::default())
    }

    fn with_config(workers: usize, nthreads: usize, config: SchedulerConfig) -> Env {
        let ops = Arc::new(OpRegistry::builtin());
        let mut env = Env {
            s: Scheduler::new(config, ops),
            now: Instant::now(),
            stores: BTreeMap::new(),
            running: vec![],
            done: vec![],
            failed: vec![],
            runs: vec![],
            next_worker: 0,
            drops: FxHashMap::default(),
            dropped: vec![],
            drops_sent: 0,
        };
        for _ in 0..workers {
            env.add_worker(nthreads);
        }
        env
    }

    fn add_worker(&mut self, nthreads: usize) -> WorkerId {
        let worker = self.next_worker;
        self.next_worker += 1;
        self.stores.insert(worker, FxHashMap::default());
        let info = WorkerInfo {
            name: format!("w{worker}"),
            nthreads,
            ..Default::default()
        };
        self.event(Event::AddWorker { worker, info }).unwrap();
        worker
    }

    fn event(&mut self, e: Event) -> crate::Result<()> {
        let mut out = Vec::new();
        let r = self.s.handle(e, self.now, &mut out);
        self.s.sanity_check();
        for c in out {
            // Every command survives its wire encoding.
            let wire = serde_json::to_string(&c).unwrap();
            let c: Command = serde_json::from_str(&wire).unwrap();
            match c {
                Command::Run {
                    worker,
                    key,
                    task,
                    inputs,
                    attempt,
                    drops,
                } => {
                    assert!(self.stores.contains_key(&worker), "run on unknown worker");
                    // A fresh run of a key: an older run's drop of it is off.
                    self.drops.remove(&(worker, key.clone()));
                    for d in drops {
                        self.drops_sent += 1;
                        self.drops.insert((worker, d), key.clone());
                    }
                    self.runs.push((worker, key.clone()));
                    self.running.push((worker, key, task, inputs, attempt));
                }
                Command::Free { worker, key } => {
                    let store = self
                        .stores
                        .get_mut(&worker)
                        .expect("free on unknown worker");
                    let dropped = (self.dropped.iter()).position(|d| *d == (worker, key.clone()));
                    assert!(
                        store.remove(&key).is_some() || dropped.is_some(),
                        "{key} freed on {worker} twice or never stored"
                    );
                    if let Some(i) = dropped {
                        self.dropped.swap_remove(i);
                    }
                }
                Command::Done { key } => self.done.push(key),
                Command::Failed { key, error } => self.failed.push((key, error)),
            }
        }
        r
    }

    fn submit(&mut self, client: ClientId, g: Graph, keys: &[&str]) -> crate::Result<()> {
        let keys = keys.iter().map(|k| Key::from(*k)).collect();
        self.event(Event::Submit {
            client,
            submission: Submission { graph: g, keys },
        })
    }

    /// Finishes the `i`-th running task, computing its value from its inputs.
    /// A pipelined task waits, as on a worker, for the run there of an input
    /// sent without holders (that run finishes first), and fails if there is none.
    fn finish(&mut self, i: usize) {
        let (worker, key, task, inputs, attempt) = self.running.remove(i);
        if !self.stores.contains_key(&worker) {
            return;
        }
        let awaited = inputs
            .iter()
            .find(|i| i.holders.is_empty() && !self.stores[&worker].contains_key(&i.key));
        if let Some(input) = awaited {
            let run = self
                .running
                .iter()
                .position(|r| r.0 == worker && r.1 == input.key);
            if let Some(j) = run {
                self.running.insert(i, (worker, key, task, inputs, attempt));
                self.finish(if j >= i { j + 1 } else { j });
                return;
            }
            let error = format!("input '{}' failed here", input.key);
            self.event(Event::TaskFailed {
                worker,
                key,
                error,
                attempt,
            })
            .unwrap();
            return;
        }
        if task.op == "fail" {
            let error = "boom".to_string();
            self.event(Event::TaskFailed {
                worker,
                key,
                error,
                attempt,
            })
            .unwrap();
            return;
        }
        let Some(v) = compute(&task, worker, &inputs, &self.stores) else {
            // A run made stale by a worker's death may find its inputs gone; a
            // current one never does. The stale run's failure is ignored.
            assert_ne!(
                self.s.processing_on(&key),
                Some((worker, attempt)),
                "{key}: an input is not where the scheduler said"
            );
            let error = "an input is unavailable".to_string();
            self.event(Event::TaskFailed {
                worker,
                key,
                error,
                attempt,
            })
            .unwrap();
            return;
        };
        let store = self.stores.get_mut(&worker).unwrap();
        store.insert(key.clone(), v);
        let mine: Vec<(WorkerId, Key)> = (self.drops.iter())
            .filter(|((w, _), r)| *w == worker && **r == key)
            .map(|(d, _)| d.clone())
            .collect();
        for d in mine {
            self.drops.remove(&d);
            store.remove(&d.1);
            self.dropped.push(d);
        }
        self.event(Event::TaskFinished {
            worker,
            key,
            nbytes: 8,
        })
        .unwrap();
    }

    fn run_all(&mut self) {
        while !self.running.is_empty() {
            self.finish(0);
        }
    }

    fn value(&self, k: &str) -> f64 {
        let KeyStatus::Memory(ws) = self.s.status(&k.into()) else {
            panic!("{k} not in memory")
        };
        self.stores[&ws[0]][&Key::from(k)]
    }

    fn in_memory(&self) -> usize {
        self.stores.values().map(|s| s.len()).sum()
    }
}

fn sum_of(deps: &[String]) -> Task {
    Task::new("sum").arg(Arg::List(
        deps.iter().map(|d| Arg::Ref(d.as_str().into())).collect(),
    ))
}

fn seed_graph(n: usize) -> Graph {
    let mut g = Graph::new();
    let mut sums = vec![];
    for i in 0..n {
        g.insert_literal(format!("x-{i}").as_str(), i as f64);
        g.insert(format!("sum-{i}").as_str(), sum_of(&[format!("x-{i}")]));
        sums.push(format!("sum-{i}"));
    }
    g.insert("total", sum_of(&sums));
    g
}

#[test]
fn seed_graph_runs_depth_first_and_frees_every_intermediate() {
    let mut env = Env::new(1, 1);
    env.submit(1, seed_graph(50), &["total"]).unwrap();
    let mut peak = 0;
    while !env.running.is_empty() {
        env.finish(0);
        peak = peak.max(env.in_memory());
    }
    // x-0, sum-0, x-1, sum-1, … : at most an array and a few partial sums live at once.
    let order: Vec<String> = env
        .runs
        .iter()
        .take(4)
        .map(|(_, k)| k.to_string())
        .collect();
    assert_eq!(order, ["x-0", "sum-0", "x-1", "sum-1"]);
    assert!(peak <= 52, "peak {peak}");
    assert_eq!(
        env.value("total"),
        (0..50).map(|i| i as f64 + 1.0).sum::<f64>() + 1.0
    );
    assert_eq!(env.in_memory(), 1, "only the held key stays");
    assert_eq!(env.done, vec![Key::from("total")]);
    env.event(Event::Release {
        client: 1,
        keys: vec!["total".into()],
    })
    .unwrap();
    assert_eq!(env.in_memory(), 0);
    assert_eq!(
        env.s.num_tasks(),
        0,
        "lineage forgotten once nothing can need it"
    );
}

#[test]
fn fusion_runs_each_root_inside_its_single_consumer() {
    let config = SchedulerConfig {
        fuse: true,
        ..Default::default()
    };
    let mut env = Env::with_config(2, 1, config);
    env.submit(1, seed_graph(10), &["total"]).unwrap();
    env.run_all();
    assert_eq!(env.runs.len(), 11, "x-i runs inside sum-i: {:?}", env.runs);
    assert_eq!(
        env.value("total"),
        (0..10).map(|i| i as f64 + 1.0).sum::<f64>() + 1.0
    );
    // A root read twice, or wanted by the client, is not fused.
    let mut env = Env::with_config(
        1,
        1,
        SchedulerConfig {
            fuse: true,
            ..Default::default()
        },
    );
    let mut g = Graph::new();
    g.insert_literal("r", 1.0);
    g.insert("a", sum_of(&["r".into()]));
    g.insert("b", sum_of(&["r".into()]));
    env.submit(1, g, &["a", "b"]).unwrap();
    env.run_all();
    assert_eq!(env.runs.len(), 3);
    assert_eq!(env.value("a"), 2.0);
}

#[test]
fn a_refused_submission_names_the_key_and_changes_nothing() {
    let mut env = Env::new(1, 1);
    let cycle = |g: &mut Graph, a: &str, b: &str| {
        g.insert(a, sum_of(&[b.into()]));
        g.insert(b, sum_of(&[a.into()]));
    };
    let mut g = seed_graph(3);
    cycle(&mut g, "p", "q");
    g.insert("total", sum_of(&["sum-0".into(), "p".into()]));
    let e = env.submit(1, g, &["total"]).unwrap_err().to_string();
    assert!(
        e.contains("cycle") && (e.contains("'p'") || e.contains("'q'")),
        "{e}"
    );
    // A cycle nobody asked for is refused too.
    let mut g = seed_graph(3);
    cycle(&mut g, "p", "q");
    let e = env.submit(1, g, &["total"]).unwrap_err().to_string();
    assert!(e.contains("cycle"), "{e}");
    let mut g = seed_graph(3);
    g.insert("total", sum_of(&["sum-0".into(), "nowhere".into()]));
    let e = env.submit(1, g, &["total"]).unwrap_err().to_string();
    assert!(
        e.contains("total") && e.contains("missing dependency 'nowhere'"),
        "{e}"
    );
    let e = env
        .submit(1, seed_graph(3), &["absent"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("absent") && e.contains("not in the graph"),
        "{e}"
    );
    assert_eq!(env.s.status(&"total".into()), KeyStatus::Unknown);
    assert!(env.running.is_empty());
    // And the same graph, fixed, runs.
    env.submit(1, seed_graph(3), &["total"]).unwrap();
    env.run_all();
    assert_eq!(env.value("total"), 1.0 + 2.0 + 3.0 + 1.0);
}

#[test]
fn tasks_go_where_their_input_bytes_are() {
    let mut env = Env::new(3, 1);
    env.stores.get_mut(&2).unwrap().insert("big".into(), 5.0);
    env.event(Event::Scatter {
        client: 1,
        key: "big".into(),
        worker: 2,
        nbytes: 1 << 20,
    })
    .unwrap();
    env.stores.get_mut(&0).unwrap().insert("small".into(), 1.0);
    env.event(Event::Scatter {
        client: 1,
        key: "small".into(),
        worker: 0,
        nbytes: 10,
    })
    .unwrap();
    let mut g = Graph::new();
    g.insert(
        "s",
        Task::new("add")
            .arg(Key::from("big"))
            .arg(Key::from("small")),
    );
    env.submit(1, g, &["s"]).unwrap();
    assert_eq!(
        env.running[0].0, 2,
        "runs on the worker with the most input bytes"
    );
    env.run_all();
    assert_eq!(env.value("s"), 7.0);
}

#[test]
fn ties_go_to_the_least_loaded_and_roots_spread() {
    let mut env = Env::new(4, 1);
    let mut g = Graph::new();
    for i in 0..4 {
        g.insert_literal(format!("r{i}").as_str(), 1.0);
    }
    env.submit(1, g, &["r0", "r1", "r2", "r3"]).unwrap();
    let mut ws: Vec<WorkerId> = env.running.iter().map(|r| r.0).collect();
    ws.sort();
    assert_eq!(ws, [0, 1, 2, 3], "one root task per worker");
}

#[test]
fn failures_reach_every_held_dependent_with_the_task_error() {
    let mut env = Env::new(2, 2);
    let mut g = Graph::new();
    g.insert("a", Task::new("noop").arg("x"));
    g.insert("bad", Task::new("noop").arg(Key::from("a")));
    let bad = Arc::make_mut(match g.nodes.get_mut(&Key::from("bad")).unwrap() {
        crate::graph::Node::Task(t) => t,
        _ => unreachable!(),
    });
    bad.op = "fail".into();
    let mut ops = OpRegistry::builtin();
    ops.register("fail", crate::ops::Signature::any(), |_, _| unreachable!());
    env.s = Scheduler::new(SchedulerConfig::default(), Arc::new(ops));
    env.event(Event::AddWorker {
        worker: 0,
        info: WorkerInfo {
            nthreads: 2,
            ..Default::default()
        },
    })
    .unwrap();
    g.insert("after", sum_of(&["bad".into()]));
    env.submit(7, g, &["after", "a"]).unwrap();
    env.run_all();
    assert_eq!(env.failed.len(), 1);
    assert_eq!(env.failed[0].0, Key::from("after"));
    assert!(
        env.failed[0].1.contains("dependency 'bad' failed: boom"),
        "{:?}",
        env.failed
    );
    assert!(matches!(env.s.status(&"after".into()), KeyStatus::Erred(_)));
    env.event(Event::ClientGone { client: 7 }).unwrap();
    assert_eq!(env.s.num_tasks(), 0);
    assert_eq!(env.in_memory(), 0);
}

#[test]
fn lost_workers_are_recomputed_from_lineage() {
    let mut env = Env::new(2, 1);
    env.submit(1, seed_graph(6), &["total"]).unwrap();
    for _ in 0..5 {
        env.finish(0);
    }
    env.event(Event::RemoveWorker { worker: 0 }).unwrap();
    env.stores.remove(&0);
    env.add_worker(1);
    env.run_all();
    assert_eq!(
        env.value("total"),
        (0..6).map(|i| i as f64 + 1.0).sum::<f64>() + 1.0
    );
}

/// [`seed_graph`] with every key prefixed by `p`.
fn seed_graph_named(p: &str, n: usize) -> Graph {
    let mut g = Graph::new();
    let mut sums = vec![];
    for i in 0..n {
        g.insert_literal(format!("{p}x-{i}").as_str(), i as f64);
        g.insert(
            format!("{p}sum-{i}").as_str(),
            sum_of(&[format!("{p}x-{i}")]),
        );
        sums.push(format!("{p}sum-{i}"));
    }
    g.insert(format!("{p}total").as_str(), sum_of(&sums));
    g
}

#[test]
fn a_held_result_lost_with_its_worker_is_made_again_after_the_work_queued() {
    // One thread in all: tasks run one at a time, best priority first.
    let mut env = Env::new(1, 1);
    env.submit(1, seed_graph_named("a-", 4), &["a-total"])
        .unwrap();
    env.run_all();
    env.submit(1, seed_graph_named("b-", 4), &["b-total"])
        .unwrap();
    let before = env.runs.len();
    env.event(Event::RemoveWorker { worker: 0 }).unwrap();
    env.stores.remove(&0);
    env.add_worker(1);
    env.run_all();
    let order: Vec<&str> = env.runs[before..]
        .iter()
        .filter(|(w, _)| *w == 1)
        .map(|(_, k)| k.as_str())
        .collect();
    let last_b = order.iter().rposition(|k| k.starts_with("b-")).unwrap();
    let first_a = order.iter().position(|k| k.starts_with("a-")).unwrap();
    assert!(
        last_b < first_a,
        "a's lost result came before b's work: {order:?}"
    );
    let total = (0..4).map(|i| i as f64 + 1.0).sum::<f64>() + 1.0;
    assert_eq!(env.value("a-total"), total);
    assert_eq!(env.value("b-total"), total);
}

#[test]
fn silent_workers_are_removed_at_the_next_tick() {
    let mut env = Env::new(2, 1);
    env.now += Duration::from_secs(20);
    env.event(Event::Heartbeat { worker: 1 }).unwrap();
    env.now += Duration::from_secs(20);
    env.event(Event::Tick).unwrap();
    let ids: Vec<WorkerId> = env.s.workers().map(|(id, _)| id).collect();
    assert_eq!(ids, [1]);
}

#[test]
fn time_the_driver_was_busy_does_not_count_as_silence() {
    let mut env = Env::new(2, 1);
    env.now += Duration::from_secs(25);
    env.s.excuse(Duration::from_secs(20));
    env.event(Event::Tick).unwrap();
    assert_eq!(env.s.workers().count(), 2);
    env.now += Duration::from_secs(30);
    env.event(Event::Tick).unwrap();
    assert_eq!(env.s.workers().count(), 0);
}

#[test]
fn scattered_data_lost_with_its_worker_is_an_error_for_its_holder() {
    let mut env = Env::new(2, 1);
    env.stores.get_mut(&0).unwrap().insert("s".into(), 1.0);
    env.event(Event::Scatter {
        client: 1,
        key: "s".into(),
        worker: 0,
        nbytes: 8,
    })
    .unwrap();
    env.event(Event::RemoveWorker { worker: 0 }).unwrap();
    assert!(matches!(env.s.status(&"s".into()), KeyStatus::Erred(e) if e.contains("lost")));
    assert_eq!(env.failed[0].0, Key::from("s"));
}

#[test]
fn a_key_reserved_for_a_put_is_refused_to_other_puts_and_graphs_until_it_lands() {
    let mut env = Env::new(1, 1);
    let k = Key::from("k");
    assert_eq!(env.s.reserve(&k, 8).unwrap(), 0);
    let e = env.s.reserve(&k, 8).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    let mut g = Graph::new();
    g.insert("k", Task::new("arange").arg(3));
    let e = env.submit(1, g.clone(), &["k"]).unwrap_err().to_string();
    assert!(e.contains("'k' is being put"), "{e}");
    // A graph that only reads another key goes through.
    env.submit(1, seed_graph(2), &["total"]).unwrap();
    // Given up, the key is free again; landed, it is the put's.
    env.s.unreserve(&k);
    assert_eq!(env.s.reserve(&k, 8).unwrap(), 0);
    env.stores.get_mut(&0).unwrap().insert("k".into(), 7.0);
    env.event(Event::Scatter {
        client: 1,
        key: k.clone(),
        worker: 0,
        nbytes: 8,
    })
    .unwrap();
    assert_eq!(env.value("k"), 7.0);
    let e = env.s.reserve(&k, 8).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    env.event(Event::Release {
        client: 1,
        keys: vec![k.clone()],
    })
    .unwrap();
    assert_eq!(env.s.reserve(&k, 8).unwrap(), 0);
}

/// Records the put of `key` (value 1.0) on `worker`.
fn land(env: &mut Env, key: &str, worker: WorkerId, nbytes: u64) {
    env.stores.get_mut(&worker).unwrap().insert(key.into(), 1.0);
    let key = Key::from(key);
    let event = Event::Scatter {
        client: 1,
        key,
        worker,
        nbytes,
    };
    env.event(event).unwrap();
}

#[test]
fn a_put_goes_to_the_open_worker_holding_the_least_counting_puts_under_way() {
    let mut env = Env::new(3, 1);
    // Three puts under way at once spread over the three workers.
    let mut spread: Vec<WorkerId> = ["a", "b", "c"]
        .iter()
        .map(|k| env.s.reserve(&Key::from(*k), 100).unwrap())
        .collect();
    let c = spread[2];
    land(&mut env, "a", spread[0], 100);
    land(&mut env, "b", spread[1], 100);
    spread.sort_unstable();
    assert_eq!(spread, vec![0, 1, 2]);
    // Given up, a put no longer counts: its worker holds the least now.
    env.s.unreserve(&Key::from("c"));
    assert_eq!(env.s.reserve(&Key::from("d"), 10).unwrap(), c);
    // A retiring worker takes none.
    env.s.unreserve(&Key::from("d"));
    env.event(Event::Retire { worker: c }).unwrap();
    let e = env.s.reserve(&Key::from("e"), 10).unwrap();
    assert!(e != c, "a retiring worker took a put");
}

#[test]
fn resubmitting_a_held_key_reuses_it() {
    let mut env = Env::new(1, 1);
    env.submit(1, seed_graph(2), &["total"]).unwrap();
    env.run_all();
    let runs = env.runs.len();
    env.submit(2, seed_graph(2), &["total"]).unwrap();
    assert_eq!(env.runs.len(), runs, "nothing recomputed");
    assert_eq!(env.done.len(), 2);
    env.event(Event::ClientGone { client: 1 }).unwrap();
    assert_eq!(env.in_memory(), 1);
    env.event(Event::ClientGone { client: 2 }).unwrap();
    assert_eq!(env.in_memory(), 0);
}

/// A random DAG: node i depends on up to three earlier nodes.
fn dag() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<usize>)> {
    (1usize..40).prop_flat_map(|n| {
        let deps = (0..n)
            .map(|i| {
                if i == 0 {
                    Just(vec![]).boxed()
                } else {
                    prop::collection::vec(0..i, 0..4).boxed()
                }
            })
            .collect::<Vec<_>>();
        (deps, prop::collection::vec(0..n, 1..4))
    })
}

fn sequential(deps: &[Vec<usize>], i: usize, memo: &mut FxHashMap<usize, f64>) -> f64 {
    if let Some(v) = memo.get(&i) {
        return *v;
    }
    let mut d = deps[i].clone();
    d.sort();
    d.dedup();
    let v = if d.is_empty() {
        i as f64
    } else {
        d.iter().map(|j| sequential(deps, *j, memo)).sum::<f64>() + 1.0
    };
    memo.insert(i, v);
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn random_graphs_match_sequential_evaluation_and_free_everything(
        (deps, wanted) in dag(),
        workers in 1usize..4,
        picks in prop::collection::vec(0usize..1000, 0..200),
        kill_at in prop::option::of(0usize..30),
        fuse in any::<bool>(),
        pipeline in any::<bool>(),
        drop_after_last_read in any::<bool>(),
    ) {
        let config = SchedulerConfig { fuse, pipeline, drop_after_last_read, ..Default::default() };
        let mut env = Env::with_config(workers, 2, config);
        let mut g = Graph::new();
        for (i, d) in deps.iter().enumerate() {
            if d.is_empty() {
                g.insert_literal(format!("k{i}").as_str(), i as f64);
            } else {
                let names: Vec<String> = d.iter().map(|j| format!("k{j}")).collect();
                g.insert(format!("k{i}").as_str(), sum_of(&names));
            }
        }
        let keys: Vec<String> = wanted.iter().map(|w| format!("k{w}")).collect();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        env.submit(1, g, &key_refs).unwrap();
        let mut step = 0;
        let mut picks = picks.into_iter();
        while !env.running.is_empty() {
            if Some(step) == kill_at && env.stores.len() > 1 {
                let victim = *env.stores.keys().next().unwrap();
                env.stores.remove(&victim);
                env.event(Event::RemoveWorker { worker: victim }).unwrap();
                env.add_worker(2);
            }
            let i = picks.next().unwrap_or(0) % env.running.len().max(1);
            if !env.running.is_empty() {
                env.finish(i);
            }
            step += 1;
        }
        let mut memo = FxHashMap::default();
        for w in &wanted {
            prop_assert_eq!(env.value(&format!("k{w}")), sequential(&deps, *w, &mut memo));
        }
        let mut distinct = wanted.clone();
        distinct.sort();
        distinct.dedup();
        prop_assert_eq!(env.in_memory(), distinct.len());
        env.event(Event::Release { client: 1, keys: keys.iter().map(|k| k.as_str().into()).collect() }).unwrap();
        prop_assert_eq!(env.in_memory(), 0);
        prop_assert_eq!(env.s.num_tasks(), 0);
    }
}

#[test]
fn a_retiring_worker_hands_over_its_data_and_nothing_is_recomputed() {
    let mut env = Env::new(2, 1);
    env.submit(1, seed_graph(6), &["total"]).unwrap();
    for _ in 0..4 {
        env.finish(0);
    }
    env.event(Event::Retire { worker: 0 }).unwrap();
    // Finish what was already sent to it; nothing new goes there.
    while let Some(i) = env.running.iter().position(|r| r.0 == 0) {
        env.finish(i);
    }
    let runs_before = env.runs.len();
    for (key, nbytes) in env.s.sole_holdings(0) {
        let v = env.stores[&0][&key];
        env.stores.get_mut(&1).unwrap().insert(key.clone(), v);
        env.event(Event::Replicated {
            worker: 1,
            key,
            nbytes,
        })
        .unwrap();
    }
    assert!(env.s.sole_holdings(0).is_empty());
    assert_eq!(env.s.open_workers(), [1]);
    // Its copies were freed with it.
    env.event(Event::RemoveWorker { worker: 0 }).unwrap();
    env.stores.remove(&0);
    env.run_all();
    let reruns: Vec<_> = env.runs[runs_before..]
        .iter()
        .filter(|(w, _)| *w == 0)
        .collect();
    assert!(reruns.is_empty(), "{reruns:?}");
    let recomputed = env.runs[..runs_before]
        .iter()
        .filter(|(_, k)| env.runs[runs_before..].iter().any(|(_, k2)| k2 == k))
        .count();
    assert_eq!(recomputed, 0, "nothing already computed runs again");
    assert_eq!(
        env.value("total"),
        (0..6).map(|i| i as f64 + 1.0).sum::<f64>() + 1.0
    );
}

/// The overhead bench's graph in small: leaves, a layer reading two leaves
/// each, a 4-way tree to one key (returned).
fn two_layer_tree(g: &mut Graph, n: usize) -> String {
    for i in 0..n {
        g.insert_literal(format!("l{i}").as_str(), i as f64);
    }
    let mut level: Vec<String> = (0..n)
        .map(|i| {
            let k = format!("m{i}");
            g.insert(
                k.as_str(),
                sum_of(&[format!("l{i}"), format!("l{}", (i + 1) % n)]),
            );
            k
        })
        .collect();
    let mut depth = 0;
    while level.len() > 1 {
        depth += 1;
        level = level
            .chunks(4)
            .enumerate()
            .map(|(j, c)| {
                let k = format!("t{depth}-{j}");
                g.insert(k.as_str(), sum_of(c));
                k
            })
            .collect();
    }
    level.remove(0)
}

#[test]
fn live_workers_removed_and_rejoining_under_new_ids_finish_the_graph() {
    let mut reference = Env::new(1, 1);
    let mut g = Graph::new();
    let top = two_layer_tree(&mut g, 12);
    reference.submit(1, g, &[top.as_str()]).unwrap();
    reference.run_all();
    let want = reference.value(&top);
    for cut in 0..40 {
        for (fuse, pipeline) in [(false, false), (true, false), (false, true), (true, true)] {
            let config = SchedulerConfig {
                fuse,
                pipeline,
                ..Default::default()
            };
            let mut env = Env::with_config(2, 2, config);
            let mut g = Graph::new();
            two_layer_tree(&mut g, 12);
            env.submit(1, g, &[top.as_str()]).unwrap();
            for _ in 0..cut {
                if env.running.is_empty() {
                    break;
                }
                env.finish(0);
            }
            // The center stops hearing both; the processes live on, drop their
            // data, join again under new ids, and report their old runs.
            env.event(Event::RemoveWorker { worker: 0 }).unwrap();
            env.event(Event::RemoveWorker { worker: 1 }).unwrap();
            let old = std::mem::take(&mut env.running);
            let old_stores = std::mem::take(&mut env.stores);
            let renamed = [env.add_worker(2), env.add_worker(2)];
            for (was, key, task, inputs, attempt) in old {
                let w = renamed[was as usize];
                let v = compute(&task, was, &inputs, &old_stores);
                let event = match v {
                    Some(v) => {
                        env.stores.get_mut(&w).unwrap().insert(key.clone(), v);
                        Event::TaskFinished {
                            worker: w,
                            key,
                            nbytes: 8,
                        }
                    }
                    None => Event::TaskFailed {
                        worker: w,
                        key,
                        error: "input gone".into(),
                        attempt,
                    },
                };
                env.event(event).unwrap();
            }
            env.run_all();
            assert!(
                matches!(env.s.status(&top.as_str().into()), KeyStatus::Memory(_)),
                "cut {cut}, fuse {fuse}, pipeline {pipeline}: {:?}",
                env.s.status(&top.as_str().into())
            );
            assert_eq!(
                env.value(&top),
                want,
                "cut {cut}, fuse {fuse}, pipeline {pipeline}"
            );
        }
    }
}

fn pipelining_config() -> SchedulerConfig {
    SchedulerConfig {
        pipeline: true,
        extra_slots: 3,
        ..Default::default()
    }
}

fn pipelining(workers: usize, nthreads: usize) -> Env {
    Env::with_config(workers, nthreads, pipelining_config())
}

#[test]
fn a_task_is_sent_with_the_input_its_worker_is_computing() {
    // As the pool runs the seed: arrays held by the client, their sums
    // submitted while the arrays are being computed.
    let mut env = pipelining(2, 1);
    let mut arrays = Graph::new();
    for i in 0..4 {
        arrays.insert_literal(format!("x-{i}").as_str(), i as f64);
    }
    env.submit(1, arrays, &["x-0", "x-1", "x-2", "x-3"])
        .unwrap();
    let mut sums = Graph::new();
    for i in 0..4 {
        sums.insert(format!("s-{i}").as_str(), sum_of(&[format!("x-{i}")]));
    }
    env.submit(1, sums, &["s-0", "s-1", "s-2", "s-3"]).unwrap();
    // Every array is out (four slots a worker), and each sum went with its
    // array: tasks sent ahead take no slot.
    assert_eq!(env.running.len(), 8, "{:?}", env.runs);
    for (w, key, _, inputs, _) in &env.running {
        if let Some(i) = key.to_string().strip_prefix("s-") {
            let input = format!("x-{i}");
            assert_eq!(inputs[0].key, Key::from(input.as_str()));
            assert!(inputs[0].holders.is_empty(), "{key}: sent with holders");
            let array = env.running.iter().find(|r| r.1 == inputs[0].key).unwrap();
            assert_eq!(array.0, *w, "{key} went where its input is computed");
        }
    }
    env.run_all();
    for i in 0..4 {
        assert_eq!(env.value(&format!("s-{i}")), i as f64 + 1.0);
    }
}

#[test]
fn a_pipelined_task_fails_with_its_input_and_waits_again_when_that_input_is_redone() {
    let mut ops = OpRegistry::builtin();
    ops.register("fail", crate::ops::Signature::any(), |_, _| unreachable!());
    let mut env = pipelining(0, 1);
    env.s = Scheduler::new(pipelining_config(), Arc::new(ops));
    env.add_worker(1);
    let mut g = Graph::new();
    g.insert("bad", Task::new("fail").arg(1.0));
    g.insert("after", sum_of(&["bad".into()]));
    env.submit(1, g, &["after"]).unwrap();
    assert_eq!(env.running.len(), 2, "sent together: {:?}", env.runs);
    env.finish(0);
    // The worker fails `after` too when `bad` fails there; the center has
    // already failed it with `bad`'s error.
    env.run_all();
    assert_eq!(env.failed.len(), 1);
    assert!(
        env.failed[0].1.contains("dependency 'bad' failed"),
        "{:?}",
        env.failed
    );

    // An input lost while a task reading it runs on another worker: that
    // task and the one sent ahead to wait for it there both wait again.
    let mut env = pipelining(2, 2);
    let mut g = Graph::new();
    g.insert_literal("a1", 1.0);
    g.insert_literal("a2", 2.0);
    env.submit(1, g, &["a1", "a2"]).unwrap();
    env.run_all();
    let mut g = Graph::new();
    g.insert("b", sum_of(&["a1".into(), "a2".into()]));
    g.insert("c", sum_of(&["b".into()]));
    env.submit(1, g, &["c"]).unwrap();
    assert_eq!(
        env.running.len(),
        2,
        "b and c sent together: {:?}",
        env.runs
    );
    let w = env.running[0].0;
    assert_eq!(env.running[1].0, w);
    // The worker fails c when b's run there fails for want of a2, and that
    // report comes first (b's goes by the center's check of a2's holder):
    // c's fate is b's, not this report's.
    let (_, c, _, _, attempt) = env.running.remove(1);
    let error = "dependency 'b' failed".to_string();
    env.event(Event::TaskFailed {
        worker: w,
        key: c,
        error,
        attempt,
    })
    .unwrap();
    assert_eq!(env.s.processing_on(&"c".into()), Some((w, 0)));
    env.stores.remove(&(1 - w));
    env.event(Event::RemoveWorker { worker: 1 - w }).unwrap();
    // Sent again (ahead of b again, once a2 is recomputed), not left waiting
    // for the run of b that cannot finish.
    assert_ne!(env.s.processing_on(&"c".into()), Some((w, 0)));
    env.add_worker(2);
    env.run_all();
    assert_eq!(env.value("c"), 5.0);
}

fn dropping() -> Env {
    let config = SchedulerConfig {
        pipeline: true,
        drop_after_last_read: true,
        ..Default::default()
    };
    Env::with_config(1, 1, config)
}

/// The pool's seed on one single-slot worker: arrays `x-i` held by the
/// client, their sums `s-i`, then the arrays released.
fn pool_seed(env: &mut Env, n: usize) {
    let mut arrays = Graph::new();
    let mut sums = Graph::new();
    let (mut xs, mut ss) = (vec![], vec![]);
    for i in 0..n {
        let (x, s) = (format!("x-{i}"), format!("s-{i}"));
        arrays.insert_literal(x.as_str(), i as f64);
        sums.insert(s.as_str(), sum_of(std::slice::from_ref(&x)));
        xs.push(x);
        ss.push(s);
    }
    let xs: Vec<&str> = xs.iter().map(String::as_str).collect();
    let ss: Vec<&str> = ss.iter().map(String::as_str).collect();
    env.submit(1, arrays, &xs).unwrap();
    env.submit(1, sums, &ss).unwrap();
    let keys = xs.iter().map(|x| Key::from(*x)).collect();
    env.event(Event::Release { client: 1, keys }).unwrap();
}

#[test]
fn a_run_drops_the_inputs_it_reads_last_when_it_succeeds() {
    let mut env = dropping();
    pool_seed(&mut env, 4);
    // x-0 and s-0 went out while x-0 was held: s-0 drops nothing. Each later
    // sum goes out ahead of its array with that array to drop.
    assert_eq!(env.drops_sent, 0);
    env.finish(0);
    env.finish(0);
    let sent: Vec<_> = env.drops.iter().collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let ((_, x), s) = sent[0];
    assert_eq!(x.to_string().replace('x', "s"), s.to_string());
    env.run_all();
    assert_eq!(env.drops_sent, 3);
    assert!(env.dropped.is_empty(), "each drop was followed by a free");
    for i in 0..4 {
        assert_eq!(env.value(&format!("s-{i}")), i as f64 + 1.0);
    }
    assert_eq!(env.in_memory(), 4, "only the sums stay");

    // Off by default (the embedded cluster frees at once anyway).
    let mut env = Env::new(1, 1);
    pool_seed(&mut env, 4);
    env.run_all();
    assert_eq!(env.drops_sent, 0);
}

#[test]
fn a_key_asked_for_while_its_last_reader_drops_it_is_made_again() {
    for (computed, cancelled) in [(false, false), (true, false), (false, true), (true, true)] {
        let case = format!("computed {computed}, cancelled {cancelled}");
        let mut env = dropping();
        pool_seed(&mut env, 2);
        env.finish(0);
        env.finish(0);
        // s-1 is out with x-1 to drop; x-1 is being computed.
        assert_eq!(env.drops.len(), 1, "{case}");
        if computed {
            let i = env
                .running
                .iter()
                .position(|r| r.1 == "x-1".into())
                .unwrap();
            env.finish(i);
        }
        // A client that still knows the released name asks for it again.
        let mut g = Graph::new();
        g.insert("late", sum_of(&["x-1".into()]));
        env.submit(2, g, &["late", "x-1"]).unwrap();
        if cancelled {
            // The reader is cancelled, but its worker runs it all the same.
            env.event(Event::Release {
                client: 1,
                keys: vec!["s-1".into()],
            })
            .unwrap();
        }
        assert!(
            env.done.iter().all(|k| *k != "x-1".into()),
            "{case}: done too early"
        );
        env.run_all();
        let x1_runs = env.runs.iter().filter(|r| r.1 == "x-1".into()).count();
        assert_eq!(x1_runs, 2, "{case}: made again");
        assert_eq!(env.value("late"), 2.0, "{case}");
        assert_eq!(env.value("x-1"), 1.0, "{case}");
        let done = env.done.iter().filter(|k| **k == "x-1".into()).count();
        assert_eq!(done, 1, "{case}");
    }
}
