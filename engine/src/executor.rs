//! The executor: runs ops on a CPU pool sized by the worker's thread count,
//! never on an async runtime, and turns a panicking op into a task error.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::chunk::Chunk;
use crate::error::{Error, Result};
use crate::graph::{Arg, Task};
use crate::key::Key;
use crate::ops::{OpRegistry, Value};

/// A pool of `nthreads` threads running tasks for one worker.
pub struct Executor {
    pool: rayon::ThreadPool,
    ops: Arc<OpRegistry>,
}

impl Executor {
    /// A pool of `nthreads` threads named after `name`.
    pub fn new(name: &str, nthreads: usize, ops: Arc<OpRegistry>) -> Result<Self> {
        let name = name.to_string();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(nthreads.max(1))
            .thread_name(move |i| format!("{name}-cpu-{i}"))
            .build()
            .map_err(|e| Error::Unavailable(format!("cannot start executor threads: {e}")))?;
        Ok(Executor { pool, ops })
    }

    /// The ops this executor runs.
    pub fn ops(&self) -> &Arc<OpRegistry> {
        &self.ops
    }

    /// Runs `job` on the pool.
    pub fn spawn(&self, job: impl FnOnce(&OpRegistry) + Send + 'static) {
        let ops = self.ops.clone();
        self.pool.spawn(move || job(&ops));
    }
}

/// Evaluates `task`, reading each input with `input`. A panic in the op becomes an error.
pub fn evaluate(
    ops: &OpRegistry,
    task: &Task,
    input: &dyn Fn(&Key) -> Option<Chunk>,
) -> Result<Chunk> {
    fn resolve(a: &Arg, input: &dyn Fn(&Key) -> Option<Chunk>) -> Result<Value> {
        Ok(match a {
            Arg::Ref(k) => {
                Value::Chunk(input(k).ok_or_else(|| Error::KeyNotFound { key: k.clone() })?)
            }
            Arg::Literal(v) => Value::Literal(v.clone()),
            Arg::List(items) => Value::List(
                items
                    .iter()
                    .map(|i| resolve(i, input))
                    .collect::<Result<_>>()?,
            ),
        })
    }
    let args = task
        .args
        .iter()
        .map(|a| resolve(a, input))
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
