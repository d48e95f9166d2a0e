//! The scheduler: a pure state machine. Events and the current time go in,
//! commands come out; it owns no threads, sockets or clocks, so the embedded
//! cluster and the networked center drive the very same code.
//!
//! Each task moves through `Released → Waiting → Ready → Processing → Memory`
//! (or `Erred`). A key is *needed* while a client holds it or a dependent that
//! has not finished waits on it; when it stops being needed its copies are
//! freed, and once nothing can ask for it again its lineage is forgotten.

mod state;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::graph::{Submission, Task};
use crate::key::Key;

pub(crate) use state::check_graph;
pub use state::{KeyStatus, Scheduler};

/// A worker's id, given by the driver when the worker joins.
pub type WorkerId = u32;
/// A client's id, given by the driver when the client connects.
pub type ClientId = u64;

/// What a worker tells the scheduler about itself when it joins.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Human name.
    pub name: String,
    /// Where peers and clients reach it (empty when embedded).
    pub address: String,
    /// The host it runs on; peers sharing a host id may share memory.
    pub host_id: String,
    /// Task slots.
    pub nthreads: usize,
    /// Memory limit in bytes.
    pub memory_limit: u64,
}

/// Tunables of the scheduler.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Tasks sent to a worker beyond its thread count, to hide round trips.
    pub extra_slots: usize,
    /// A worker silent for this long is considered dead at the next tick.
    pub heartbeat_timeout: Duration,
    /// Fuse each input-less intermediate used exactly once into its consumer,
    /// so the pair runs as one task (one round trip, no stored intermediate).
    pub fuse: bool,
    /// Send a task to the worker computing its inputs before they finish
    /// (see `Scheduler::pipeline`): it starts there as soon as they are
    /// stored, with no round trip to the scheduler in between.
    pub pipeline: bool,
    /// A task sent to this many workers that died is failed, not retried.
    pub allowed_deaths: u32,
    /// Send a run with the inputs it reads last (see `Command::Run::drops`),
    /// so a worker frees them as the run ends, not a round trip later.
    pub drop_after_last_read: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            extra_slots: 0,
            heartbeat_timeout: Duration::from_secs(30),
            fuse: false,
            pipeline: false,
            allowed_deaths: 3,
            drop_after_last_read: false,
        }
    }
}

/// Something that happened, fed to [`Scheduler::handle`].
#[derive(Clone, Debug)]
pub enum Event {
    /// A worker joined.
    AddWorker {
        /// Its id.
        worker: WorkerId,
        /// Its description.
        info: WorkerInfo,
    },
    /// A worker is retiring: it gets no new tasks; its queued ones go elsewhere.
    Retire {
        /// Its id.
        worker: WorkerId,
    },
    /// A worker received a copy of a key from a retiring peer.
    Replicated {
        /// The worker that now holds a copy.
        worker: WorkerId,
        /// The key.
        key: Key,
        /// Its size.
        nbytes: u64,
    },
    /// A worker left or died; its data is gone.
    RemoveWorker {
        /// Its id.
        worker: WorkerId,
    },
    /// A worker is alive.
    Heartbeat {
        /// Its id.
        worker: WorkerId,
    },
    /// Time passed: dead workers are detected.
    Tick,
    /// A client submitted a graph (validated by [`Scheduler::handle`]).
    Submit {
        /// Who submitted.
        client: ClientId,
        /// What.
        submission: Submission,
    },
    /// A client placed data on a worker directly.
    Scatter {
        /// Who holds it.
        client: ClientId,
        /// Its key.
        key: Key,
        /// Where it was put.
        worker: WorkerId,
        /// Its size.
        nbytes: u64,
    },
    /// A client no longer needs these keys.
    Release {
        /// Who.
        client: ClientId,
        /// Which keys.
        keys: Vec<Key>,
    },
    /// A client went away: everything it held is released.
    ClientGone {
        /// Who.
        client: ClientId,
    },
    /// A task finished and its result is in the worker's store.
    TaskFinished {
        /// Where.
        worker: WorkerId,
        /// Which.
        key: Key,
        /// Result size.
        nbytes: u64,
    },
    /// A task failed.
    TaskFailed {
        /// Where.
        worker: WorkerId,
        /// Which.
        key: Key,
        /// The task's own error text.
        error: String,
        /// The `attempt` of the run that failed: a failure of an earlier, stale
        /// run (e.g. one whose input died with its worker) is ignored.
        attempt: u32,
    },
}

/// One input of a task to run: where it is and how big, so that a driver
/// need not look it up again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// The input's key.
    pub key: Key,
    /// The workers holding it; none when it is still being computed on the
    /// worker this task is sent to (a pipelined task waits for it there).
    pub holders: Vec<WorkerId>,
    /// Its size in bytes.
    pub nbytes: u64,
}

/// Something the driver must carry out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Run a task on a worker; each input comes with the workers that hold it.
    Run {
        /// Where to run.
        worker: WorkerId,
        /// The key to produce.
        key: Key,
        /// What to run.
        task: Arc<Task>,
        /// Each input: its key, holders and size.
        inputs: Vec<Input>,
        /// How many times this task was sent to run before (0 the first time).
        attempt: u32,
        /// Inputs to drop from the worker's store once this run succeeds: it
        /// is their last reader, and they live on that worker only.
        drops: Vec<Key>,
    },
    /// Drop a key from a worker's store.
    Free {
        /// Which worker.
        worker: WorkerId,
        /// Which key.
        key: Key,
    },
    /// A client-held key is now in memory.
    Done {
        /// The key.
        key: Key,
    },
    /// A client-held key cannot be produced.
    Failed {
        /// The key.
        key: Key,
        /// Why.
        error: String,
    },
}

/// Whether a worker last heard from at `last_seen` has been silent too long at `now`.
pub(crate) fn is_stale(last_seen: Instant, now: Instant, timeout: Duration) -> bool {
    now.saturating_duration_since(last_seen) > timeout
}
