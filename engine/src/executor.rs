//! The executor: runs ops on a CPU pool sized by the worker's thread count,
//! never on an async runtime, and turns a panicking op into a task error.
//!
//! The pool is plain threads waiting on a condition variable: idle threads
//! sleep rather than spin, which matters when several workers share a small machine.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex};

use crate::chunk::Chunk;
use crate::error::{Error, Result};
use crate::graph::{Arg, Task};
use crate::key::Key;
use crate::ops::{OpRegistry, Value};

type Job = Box<dyn FnOnce(&OpRegistry) + Send>;

/// Queued jobs: those that consume inputs go first, so data made by one task
/// is used while it is still in cache and freed before more is made.
#[derive(Default)]
struct Queues {
    consumers: VecDeque<Job>,
    producers: VecDeque<Job>,
    closed: bool,
    /// Under memory pressure: at most one job at a time, so the worker
    /// still makes progress (and frees memory) without adding to it.
    paused: bool,
    active: usize,
}

struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
}

/// A pool of `nthreads` threads running tasks for one worker. Dropping it lets
/// queued jobs finish and joins the threads (an embedder that frees a cluster
/// gets every thread back).
pub struct Executor {
    shared: Arc<Shared>,
    ops: Arc<OpRegistry>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Executor {
    /// A pool of `nthreads` threads named after `name`.
    pub fn new(name: &str, nthreads: usize, ops: Arc<OpRegistry>) -> Result<Self> {
        let shared = Arc::new(Shared {
            queues: Mutex::default(),
            ready: Condvar::new(),
        });
        let mut threads = Vec::new();
        for i in 0..nthreads.max(1) {
            let (shared, ops) = (shared.clone(), ops.clone());
            let thread = std::thread::Builder::new()
                .name(format!("{name}-cpu-{i}"))
                .spawn(move || {
                    while let Some(job) = shared.next() {
                        job(&ops);
                        shared.done();
                    }
                })
                .map_err(|e| Error::Unavailable(format!("cannot start executor threads: {e}")))?;
            threads.push(thread);
        }
        Ok(Executor {
            shared,
            ops,
            threads,
        })
    }

    /// The ops this executor runs.
    pub fn ops(&self) -> &Arc<OpRegistry> {
        &self.ops
    }

    /// Pauses (one job at a time) or resumes the pool.
    pub fn set_paused(&self, paused: bool) {
        let mut q = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        if q.paused != paused {
            q.paused = paused;
            drop(q);
            self.shared.ready.notify_all();
        }
    }

    /// Whether the pool is paused.
    pub fn is_paused(&self) -> bool {
        self.shared
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .paused
    }

    /// Runs `job` on the pool, after queued jobs of its kind.
    pub fn spawn(&self, job: impl FnOnce(&OpRegistry) + Send + 'static) {
        self.spawn_kind(true, job);
    }

    /// Runs `job` on the pool; a `consumer` (a task with inputs) jumps ahead of
    /// queued producers.
    pub fn spawn_kind(&self, consumer: bool, job: impl FnOnce(&OpRegistry) + Send + 'static) {
        let mut q = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        if consumer {
            q.consumers.push_back(Box::new(job));
        } else {
            q.producers.push_back(Box::new(job));
        }
        drop(q);
        self.shared.ready.notify_one();
    }
}

impl Shared {
    fn next(&self) -> Option<Job> {
        let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if !(q.paused && q.active > 0)
                && let Some(j) = q.consumers.pop_front().or_else(|| q.producers.pop_front())
            {
                q.active += 1;
                return Some(j);
            }
            if q.closed && q.consumers.is_empty() && q.producers.is_empty() {
                return None;
            }
            q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn done(&self) {
        let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        q.active -= 1;
        let wake = q.paused;
        drop(q);
        if wake {
            self.ready.notify_one();
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.shared
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed = true;
        self.shared.ready.notify_all();
        // The last owner may be one of the pool's own threads (it finished a
        // task and dropped the cluster); that one exits on its own.
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

/// A literal argument as an op receives it. A JSON list is a list of
/// arguments, as it is once a task has crossed the wire
/// (`Arg::Literal([…])` reads back as `Arg::List`): so an op sees the same
/// value in an embedded cluster as on a worker process.
fn literal(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Array(items) => Value::List(items.iter().map(literal).collect()),
        v => Value::Literal(v.clone()),
    }
}

/// Evaluates `task`, reading each input with `input`. A panic in the op becomes an error.
pub fn evaluate(
    ops: &OpRegistry,
    task: &Task,
    input: &dyn Fn(&Key) -> Option<Chunk>,
) -> Result<Chunk> {
    fn resolve(a: &Arg, ops: &OpRegistry, input: &dyn Fn(&Key) -> Option<Chunk>) -> Result<Value> {
        Ok(match a {
            Arg::Ref(k) => {
                Value::Chunk(input(k).ok_or_else(|| Error::KeyNotFound { key: k.clone() })?)
            }
            Arg::Literal(v) => literal(v),
            // A fused task's result is read here and dropped, never shared:
            // private memory spares it shared pages, which get no huge pages
            // (seed on `quiver local`, graph 1.19 -> 1.10x embedded). An op
            // that passes its buffers on, as `slice` does, leaves its result
            // private too: a co-located peer then maps a copy in a file.
            Arg::Task(t) => Value::Chunk(crate::shm::private(|| evaluate(ops, t, input))?),
            Arg::List(items) => Value::List(
                items
                    .iter()
                    .map(|i| resolve(i, ops, input))
                    .collect::<Result<_>>()?,
            ),
        })
    }
    let args = task
        .args
        .iter()
        .map(|a| resolve(a, ops, input))
        .collect::<Result<Vec<_>>>()?;
    catch_unwind(AssertUnwindSafe(|| ops.call(&task.op, &args, &task.kwargs))).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::op(&task.op, format!("panicked: {msg}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Signature;

    #[test]
    fn a_fused_task_makes_its_result_in_private_memory() {
        crate::shm::enable();
        let mut ops = OpRegistry::builtin();
        // 1 where the op's large allocations would land in shared memory.
        ops.register("probe", Signature::any(), |_, _| {
            let shared = crate::shm::tests::shared_here();
            Ok(crate::chunk::scalar(if shared { 1.0 } else { 0.0 }))
        });
        let none = |_: &Key| None;
        let stored = Task::new("probe");
        let fused = Task::new("sum").arg(Arg::Task(Box::new(Task::new("probe"))));
        // Run on threads of their own: the flag is per thread.
        let run = |t: Task| {
            let ops = &ops;
            std::thread::scope(|s| s.spawn(move || evaluate(ops, &t, &none).unwrap()).join())
                .map(|c| crate::chunk::to_f64(&c).unwrap())
                .unwrap()
        };
        assert_eq!(run(stored), 1.0, "a result to store is born shared");
        assert_eq!(run(fused), 0.0, "a fused result, read once, is private");
    }
}
