//! The executor: runs ops on a CPU pool sized by the worker's thread count,
//! never on an async runtime, and turns a panicking op into a task error.
//!
//! The pool is plain threads blocking on a channel: idle threads sleep rather
//! than spin, which matters when several workers share a small machine.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};

use crate::chunk::Chunk;
use crate::error::{Error, Result};
use crate::graph::{Arg, Task};
use crate::key::Key;
use crate::ops::{OpRegistry, Value};

type Job = Box<dyn FnOnce(&OpRegistry) + Send>;

/// A pool of `nthreads` threads running tasks for one worker. Dropping it lets
/// queued jobs finish, then the threads exit.
pub struct Executor {
    jobs: Mutex<Sender<Job>>,
    ops: Arc<OpRegistry>,
}

impl Executor {
    /// A pool of `nthreads` threads named after `name`.
    pub fn new(name: &str, nthreads: usize, ops: Arc<OpRegistry>) -> Result<Self> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..nthreads.max(1) {
            let (rx, ops) = (rx.clone(), ops.clone());
            std::thread::Builder::new()
                .name(format!("{name}-cpu-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(&ops),
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|e| Error::Unavailable(format!("cannot start executor threads: {e}")))?;
        }
        Ok(Executor {
            jobs: Mutex::new(tx),
            ops,
        })
    }

    /// The ops this executor runs.
    pub fn ops(&self) -> &Arc<OpRegistry> {
        &self.ops
    }

    /// Runs `job` on the pool.
    pub fn spawn(&self, job: impl FnOnce(&OpRegistry) + Send + 'static) {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        // The threads only stop once this sender is dropped, so the send cannot fail.
        let _ = jobs.send(Box::new(job));
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
