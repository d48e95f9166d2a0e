//! Read-only questions drivers and clients ask the scheduler.

use super::{KeyStatus, Scheduler, State};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::ops::OpRegistry;
use crate::scheduler::{WorkerId, WorkerInfo};
use std::sync::Arc;

impl Scheduler {
    /// Where `key` stands.
    pub fn status(&self, key: &Key) -> KeyStatus {
        let Some(t) = self.index.get(key).map(|id| &self.tasks[id]) else {
            return KeyStatus::Unknown;
        };
        match t.state {
            State::Memory if t.doomed_by.is_none() => KeyStatus::Memory(t.who_has.clone()),
            State::Erred => KeyStatus::Erred(t.error.as_deref().unwrap_or("failed").to_string()),
            State::Released if !t.needed() => KeyStatus::Unknown,
            _ => KeyStatus::Pending,
        }
    }

    /// What a wait for `key` comes to, once it comes to something: its
    /// holders, its task's failure, or `KeyNotFound` when no one wants it
    /// (unknown, released by every client that held it, or an intermediate
    /// that nothing needs, freed once computed). `None` while it is still to
    /// be computed for someone; allocates nothing then, as drivers ask after
    /// every event.
    pub fn settled(&self, key: &Key) -> Option<Result<Vec<WorkerId>>> {
        let in_the_making = (self.index.get(key)).is_some_and(|id| {
            let t = &self.tasks[id];
            !(t.available() || t.state == State::Erred) && t.needed()
        });
        if in_the_making {
            return None;
        }
        Some(match self.status(key) {
            KeyStatus::Memory(ws) => Ok(ws),
            KeyStatus::Erred(error) => Err(Error::TaskFailed {
                key: key.clone(),
                error,
            }),
            KeyStatus::Pending | KeyStatus::Unknown => Err(Error::KeyNotFound { key: key.clone() }),
        })
    }

    /// The size of `key`'s chunk, if it is in memory.
    pub fn nbytes(&self, key: &Key) -> Option<u64> {
        let t = &self.tasks[self.index.get(key)?];
        (t.state == State::Memory).then_some(t.nbytes)
    }

    /// Tasks sent ahead of inputs their worker was still computing, so far.
    pub fn sent_ahead(&self) -> u64 {
        self.sent_ahead
    }

    /// The worker `key` is running on and the attempt number of that run, if it is running.
    pub fn processing_on(&self, key: &Key) -> Option<(WorkerId, u32)> {
        let t = &self.tasks[self.index.get(key)?];
        match t.state {
            State::Processing(w) => Some((w, t.attempts - 1)),
            _ => None,
        }
    }

    /// Every key in memory with its size and holders.
    pub fn keys_in_memory(&self) -> Vec<(Key, u64, Vec<WorkerId>)> {
        let mut v: Vec<_> = self
            .tasks
            .values()
            .filter(|t| t.state == State::Memory)
            .map(|t| (t.key.clone(), t.nbytes, t.who_has.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Tasks known (including lineage kept for recompute).
    pub fn num_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// State transitions made so far (for throughput figures).
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// The workers and their descriptions.
    pub fn workers(&self) -> impl Iterator<Item = (WorkerId, &WorkerInfo)> {
        self.workers.iter().map(|(id, w)| (*id, &w.info))
    }

    /// Tasks running or queued on each worker.
    pub fn worker_load(&self, worker: WorkerId) -> Option<(usize, usize)> {
        self.workers
            .get(&worker)
            .map(|w| (w.processing.len(), w.queue.len()))
    }

    /// The op registry graphs are checked against.
    pub fn ops(&self) -> &Arc<OpRegistry> {
        &self.ops
    }
}
