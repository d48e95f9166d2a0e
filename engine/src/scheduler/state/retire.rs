//! Graceful retirement: a closing worker gets no new tasks, the tasks queued
//! for it are placed again, and the data only it holds is copied to peers
//! (recorded as replicas) before it leaves, so nothing is recomputed.

use std::cmp::Reverse;

use super::{Scheduler, State};
use crate::key::Key;
use crate::scheduler::{Command, WorkerId};

impl Scheduler {
    /// Stops giving `worker` tasks and places the ones queued for it elsewhere.
    pub(super) fn retire(&mut self, worker: WorkerId, out: &mut Vec<Command>) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        w.closing = true;
        let queued: Vec<_> = std::mem::take(&mut w.queue)
            .into_iter()
            .map(|Reverse((_, id))| id)
            .filter(|id| {
                self.tasks
                    .get(id)
                    .is_some_and(|t| t.state == State::Ready(Some(worker)))
            })
            .collect();
        for id in queued {
            self.make_ready(id, out);
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for w in ids {
            self.fill(w, out);
        }
    }

    /// `worker` now holds a copy of `key` too (a retiring peer handed it over).
    pub(super) fn replicated(
        &mut self,
        worker: WorkerId,
        key: &Key,
        nbytes: u64,
        out: &mut Vec<Command>,
    ) {
        let Some(&id) = self.index.get(key) else {
            return;
        };
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        let t = self.tasks.get_mut(&id).expect("indexed task is live");
        if t.doomed_by.is_some() {
            // Its one copy goes with its last reader; a second would linger.
            out.push(Command::Free {
                worker,
                key: key.clone(),
            });
        } else if t.state == State::Memory && !t.who_has.contains(&worker) {
            t.who_has.push(worker);
            w.has.insert(id);
            w.nbytes += nbytes;
        }
    }

    /// Keys still needed whose only copy is on `worker`, with their sizes:
    /// what must move before it can leave without loss.
    pub fn sole_holdings(&self, worker: WorkerId) -> Vec<(Key, u64)> {
        let Some(w) = self.workers.get(&worker) else {
            return vec![];
        };
        w.has
            .iter()
            .map(|id| &self.tasks[id])
            .filter(|t| t.who_has.len() == 1 && t.needed() && t.doomed_by.is_none())
            .map(|t| (t.key.clone(), t.nbytes))
            .collect()
    }

    /// Workers that take new tasks and data (not closing).
    pub fn open_workers(&self) -> Vec<WorkerId> {
        self.workers
            .iter()
            .filter(|(_, w)| !w.closing)
            .map(|(id, _)| *id)
            .collect()
    }
}
