//! The scheduler's task and worker tables and every transition between states.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};

use super::{ClientId, Command, Event, Input, SchedulerConfig, WorkerId, WorkerInfo, is_stale};
use crate::error::{Error, Result};
use crate::graph::{Submission, Task};
use crate::key::Key;
use crate::ops::OpRegistry;
use table::Tasks;

mod check;
mod plan;
mod query;
mod retire;
mod table;

pub(crate) use plan::check as check_graph;

type TaskId = u64;
/// (has no inputs, submission generation, depth-first position): lower runs first.
/// Tasks that consume data go before tasks that only make it, across submissions
/// too, so memory is freed before more is allocated.
type Priority = (bool, u64, u64);
type Queue = BinaryHeap<Reverse<(Priority, TaskId)>>;

/// A task is sent ahead of at most this many inputs.
const AHEAD_MAX_MISSING: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not computed, not being computed; the task is kept as lineage.
    Released,
    /// Some inputs are not in memory yet.
    Waiting,
    /// All inputs in memory; queued on a worker (`Some`) or for any worker (`None`).
    Ready(Option<WorkerId>),
    /// Sent to a worker: running there, or queued there behind the inputs
    /// it computes (pipelined).
    Processing(WorkerId),
    /// In the store of one or more workers.
    Memory,
    /// Failed, or a dependency failed.
    Erred,
}

struct TaskState {
    key: Key,
    /// `None` for scattered data, which has no lineage.
    task: Option<Arc<Task>>,
    deps: Vec<TaskId>,
    /// May name forgotten tasks: ids are never reused, so stale ids are just skipped.
    dependents: Vec<TaskId>,
    live_dependents: u32,
    state: State,
    /// Inputs not yet in memory, while `Waiting` or sent ahead of them.
    missing: u32,
    /// Dependents that still need this key: those `Waiting`, `Ready` or `Processing`.
    waiters: u32,
    /// Client holds.
    holds: u32,
    who_has: Vec<WorkerId>,
    nbytes: u64,
    priority: Priority,
    error: Option<Arc<str>>,
    /// Runs sent so far; the current run is `attempts - 1`.
    attempts: u32,
    /// Workers that died while this task was sent to them.
    deaths: u32,
    /// Sent to its worker before an input was computed there (pipelined).
    ahead: bool,
    /// Its current run was sent with inputs to drop ([`Scheduler::drops`]).
    dropping: bool,
    /// The run this key was sent with as a drop (see [`Scheduler::drops`]):
    /// the one worker holding or computing it drops it once that run
    /// succeeds, so to any other task it is as good as gone.
    doomed_by: Option<TaskId>,
}

impl TaskState {
    /// A task not yet computed, kept as lineage until something needs it.
    fn new(key: Key, task: Option<Arc<Task>>, deps: Vec<TaskId>, priority: Priority) -> Self {
        TaskState {
            key,
            task,
            deps,
            dependents: Vec::new(),
            live_dependents: 0,
            state: State::Released,
            missing: 0,
            waiters: 0,
            holds: 0,
            who_has: Vec::new(),
            nbytes: 0,
            priority,
            error: None,
            attempts: 0,
            deaths: 0,
            ahead: false,
            dropping: false,
            doomed_by: None,
        }
    }

    fn needed(&self) -> bool {
        self.holds > 0 || self.waiters > 0
    }

    /// In memory for any task to read: not on its way out with its last reader.
    fn available(&self) -> bool {
        self.state == State::Memory && self.doomed_by.is_none()
    }

    fn pending(&self) -> bool {
        matches!(
            self.state,
            State::Waiting | State::Ready(_) | State::Processing(_)
        )
    }
}

struct WorkerState {
    info: WorkerInfo,
    processing: FxHashSet<TaskId>,
    /// Of `processing`, the tasks sent ahead of their inputs: they take no
    /// slot until those are computed.
    ahead: usize,
    has: FxHashSet<TaskId>,
    nbytes: u64,
    /// Bytes of puts placed on it and not yet recorded.
    putting: u64,
    queue: Queue,
    last_seen: Instant,
    /// Retiring: takes no new tasks.
    closing: bool,
    /// Tasks queued beyond its threads (default: the config's `extra_slots`).
    extra_slots: Option<usize>,
}

/// What a client can learn about a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyStatus {
    /// Not known (never submitted, or released and forgotten).
    Unknown,
    /// Being computed.
    Pending,
    /// In memory on these workers.
    Memory(Vec<WorkerId>),
    /// Failed with this error.
    Erred(String),
}

/// The scheduler state machine. See the module docs.
pub struct Scheduler {
    config: SchedulerConfig,
    ops: Arc<OpRegistry>,
    /// Boxed, so a slot is one word and a free one costs no more.
    tasks: Tasks,
    index: FxHashMap<Key, TaskId>,
    next_id: TaskId,
    generation: u64,
    workers: BTreeMap<WorkerId, WorkerState>,
    root_queue: Queue,
    clients: FxHashMap<ClientId, FxHashMap<TaskId, u32>>,
    /// Keys a driver is putting on a worker ([`Scheduler::reserve`]).
    reserved: FxHashMap<Key, (WorkerId, u64)>,
    transitions: u64,
    sent_ahead: u64,
    /// Keys whose one copy went with their last reader during this event:
    /// recomputed if something asked for them meanwhile, else forgotten.
    regrow: Vec<TaskId>,
}

impl Scheduler {
    /// A scheduler that validates graphs against `ops`.
    pub fn new(config: SchedulerConfig, ops: Arc<OpRegistry>) -> Self {
        Scheduler {
            config,
            ops,
            tasks: Tasks::default(),
            index: FxHashMap::default(),
            next_id: 0,
            generation: 0,
            workers: BTreeMap::new(),
            root_queue: Queue::new(),
            clients: FxHashMap::default(),
            reserved: FxHashMap::default(),
            transitions: 0,
            sent_ahead: 0,
            regrow: Vec::new(),
        }
    }

    /// Applies one event at time `now`, appending the resulting commands to `out`.
    /// Only a refused submission or scatter returns an error; nothing changes then.
    pub fn handle(&mut self, event: Event, now: Instant, out: &mut Vec<Command>) -> Result<()> {
        let r = self.apply(event, now, out);
        while let Some(id) = self.regrow.pop() {
            match self.tasks.get(&id) {
                Some(t) if t.state == State::Released && t.needed() => self.need(id, out),
                Some(_) => self.maybe_forget(id),
                None => {}
            }
        }
        r
    }

    fn apply(&mut self, event: Event, now: Instant, out: &mut Vec<Command>) -> Result<()> {
        match event {
            Event::AddWorker { worker, info } => {
                let w = WorkerState {
                    info,
                    processing: FxHashSet::default(),
                    ahead: 0,
                    has: FxHashSet::default(),
                    nbytes: 0,
                    putting: 0,
                    queue: Queue::new(),
                    last_seen: now,
                    closing: false,
                    extra_slots: None,
                };
                self.workers.insert(worker, w);
                self.fill(worker, out);
            }
            Event::RemoveWorker { worker } => self.remove_worker(worker, out),
            Event::Retire { worker } => self.retire(worker, out),
            Event::Replicated {
                worker,
                key,
                nbytes,
            } => self.replicated(worker, &key, nbytes, out),
            Event::Heartbeat { worker } => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.last_seen = now;
                }
            }
            Event::Tick => {
                let timeout = self.config.heartbeat_timeout;
                let dead: Vec<WorkerId> = self
                    .workers
                    .iter()
                    .filter(|(_, w)| is_stale(w.last_seen, now, timeout))
                    .map(|(id, _)| *id)
                    .collect();
                for w in dead {
                    tracing::warn!(worker = w, "no heartbeat for {timeout:?}: removing worker");
                    self.remove_worker(w, out);
                }
            }
            Event::Submit { client, submission } => self.submit(client, submission, out)?,
            Event::Scatter {
                client,
                key,
                worker,
                nbytes,
            } => self.scatter(client, key, worker, nbytes, out)?,
            Event::Release { client, keys } => {
                for k in keys {
                    self.release(client, &k, out);
                }
            }
            Event::ClientGone { client } => {
                for (id, n) in self.clients.remove(&client).unwrap_or_default() {
                    if let Some(t) = self.tasks.get_mut(&id) {
                        t.holds -= n;
                        self.maybe_release(id, out);
                    }
                }
            }
            Event::TaskFinished {
                worker,
                key,
                nbytes,
            } => self.finished(worker, key, nbytes, out),
            Event::TaskFailed {
                worker,
                key,
                error,
                attempt,
            } => {
                let Some(&id) = self.index.get(&key) else {
                    return Ok(());
                };
                let t = &self.tasks[&id];
                // A task sent ahead fails on its worker only because an input's
                // run there failed: that input's own failure, or its rerun, decides.
                let current = t.state == State::Processing(worker) && t.attempts == attempt + 1;
                if current && !t.ahead {
                    self.unassign(id, worker, out);
                    self.err(id, Arc::from(error), out);
                    self.fill(worker, out);
                }
            }
        }
        Ok(())
    }

    fn set(&mut self, id: TaskId, s: State) {
        self.transitions += 1;
        let t = self.tasks.get_mut(&id).expect("live task");
        t.state = s;
        if !matches!(s, State::Memory | State::Processing(_)) {
            t.doomed_by = None;
        }
    }

    /// Reserves `key` for a put of `nbytes` and picks the worker to place it
    /// on: the open worker holding the least for its memory limit, counting
    /// what is being put to it. Until [`Event::Scatter`] records the put, or
    /// [`Scheduler::unreserve`] gives it up, another put of the key and a
    /// graph defining it are refused. Else the put would land on a key taken
    /// meanwhile, its chunk kept by no one.
    pub fn reserve(&mut self, key: &Key, nbytes: u64) -> Result<WorkerId> {
        if self.index.contains_key(key) || self.reserved.contains_key(key) {
            return Err(Error::invalid(key, "key already exists; release it first"));
        }
        let fill =
            |w: &WorkerState| (w.nbytes + w.putting) as f64 / w.info.memory_limit.max(1) as f64;
        let (&worker, w) = (self.workers.iter_mut())
            .filter(|(_, w)| !w.closing)
            .min_by(|(a, x), (b, y)| fill(x).total_cmp(&fill(y)).then(a.cmp(b)))
            .ok_or_else(|| {
                Error::Unavailable(
                    "no worker can take data: none has joined, or all are retiring".into(),
                )
            })?;
        w.putting += nbytes;
        self.reserved.insert(key.clone(), (worker, nbytes));
        Ok(worker)
    }

    /// Gives up the reservation of a put that failed.
    pub fn unreserve(&mut self, key: &Key) {
        if let Some((worker, nbytes)) = self.reserved.remove(key)
            && let Some(w) = self.workers.get_mut(&worker)
        {
            w.putting -= nbytes;
        }
    }

    fn submit(&mut self, client: ClientId, sub: Submission, out: &mut Vec<Command>) -> Result<()> {
        let Submission { graph, keys } = sub;
        if let Some(k) = (self.reserved.keys()).find(|k| graph.nodes.contains_key(*k)) {
            return Err(Error::invalid(
                k,
                format!("key '{k}' is being put; submit once the put is done"),
            ));
        }
        let planned = plan::plan(graph, &keys, &self.ops, &self.index, self.config.fuse)?;
        self.generation += 1;
        let generation = self.generation;
        self.index.reserve(planned.len());
        let first = self.next_id;
        for (pos, p) in planned.into_iter().enumerate() {
            let id = self.next_id;
            self.next_id += 1;
            let (key, task) = (p.key, p.task);
            let deps: Vec<TaskId> = p
                .deps
                .iter()
                .map(|d| match *d {
                    plan::Dep::New(at) => first + at as TaskId,
                    plan::Dep::Known(id) => id,
                })
                .collect();
            let root = deps.is_empty();
            for d in &deps {
                let dt = self.tasks.get_mut(d).expect("dependency is live");
                dt.dependents.push(id);
                dt.live_dependents += 1;
            }
            self.index.insert(key.clone(), id);
            self.tasks.insert(
                id,
                Box::new(TaskState::new(
                    key,
                    Some(task),
                    deps,
                    (root, generation, pos as u64),
                )),
            );
        }
        for k in &keys {
            let id = self.index[k];
            self.hold(client, id);
            self.need(id, out);
            let t = &self.tasks[&id];
            match t.state {
                State::Memory if t.doomed_by.is_none() => {
                    out.push(Command::Done { key: k.clone() })
                }
                State::Erred => out.push(Command::Failed {
                    key: k.clone(),
                    error: t.error.as_deref().unwrap_or("failed").to_string(),
                }),
                _ => {}
            }
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for w in ids {
            self.fill(w, out);
        }
        Ok(())
    }

    fn scatter(
        &mut self,
        client: ClientId,
        key: Key,
        worker: WorkerId,
        nbytes: u64,
        out: &mut Vec<Command>,
    ) -> Result<()> {
        self.unreserve(&key);
        if self.index.contains_key(&key) {
            return Err(Error::invalid(&key, "key already exists; release it first"));
        }
        let Some(w) = self.workers.get_mut(&worker) else {
            return Err(Error::Unavailable(format!(
                "worker {worker} is not in the cluster"
            )));
        };
        let id = self.next_id;
        self.next_id += 1;
        w.has.insert(id);
        w.nbytes += nbytes;
        self.generation += 1;
        self.index.insert(key.clone(), id);
        let mut t = TaskState::new(key.clone(), None, vec![], (true, self.generation, 0));
        t.state = State::Memory;
        t.who_has = vec![worker];
        t.nbytes = nbytes;
        self.tasks.insert(id, Box::new(t));
        self.transitions += 1;
        self.hold(client, id);
        out.push(Command::Done { key });
        Ok(())
    }

    fn hold(&mut self, client: ClientId, id: TaskId) {
        *self
            .clients
            .entry(client)
            .or_default()
            .entry(id)
            .or_default() += 1;
        self.tasks.get_mut(&id).expect("live task").holds += 1;
    }

    fn release(&mut self, client: ClientId, key: &Key, out: &mut Vec<Command>) {
        let Some(&id) = self.index.get(key) else {
            return;
        };
        let Some(held) = self.clients.get_mut(&client) else {
            return;
        };
        let Some(n) = held.get_mut(&id) else { return };
        *n -= 1;
        if *n == 0 {
            held.remove(&id);
        }
        self.tasks.get_mut(&id).expect("held task").holds -= 1;
        self.maybe_release(id, out);
    }

    /// `id` gained a consumer: if it is only lineage, start computing it (and,
    /// transitively, whatever lineage it needs).
    fn need(&mut self, id: TaskId, out: &mut Vec<Command>) {
        self.need_as(id, None, out);
    }

    /// As [`Scheduler::need`]; with `generation`, the tasks it brings back
    /// are ranked as if submitted in that generation.
    fn need_as(&mut self, id: TaskId, generation: Option<u64>, out: &mut Vec<Command>) {
        let mut work = vec![id];
        let (mut to_ready, mut to_pipeline) = (Vec::new(), Vec::new());
        while let Some(id) = work.pop() {
            let t = &self.tasks[&id];
            if t.state != State::Released {
                continue;
            }
            if t.task.is_none() {
                let key = t.key.clone();
                self.err(
                    id,
                    Arc::from(format!("scattered data '{key}' was lost")),
                    out,
                );
                continue;
            }
            let mut missing = 0;
            let mut failed = None;
            for i in 0..t.deps.len() {
                let d = self.tasks[&id].deps[i];
                let dt = self.tasks.get_mut(&d).expect("dependency is live");
                dt.waiters += 1;
                match dt.state {
                    State::Memory if dt.doomed_by.is_none() => {}
                    State::Erred => failed = Some(dt.key.clone()),
                    State::Released => {
                        missing += 1;
                        work.push(d);
                    }
                    _ => missing += 1,
                }
            }
            self.set(id, State::Waiting);
            let t = self.tasks.get_mut(&id).expect("live");
            t.missing = missing;
            if let Some(g) = generation {
                t.priority.1 = g;
            }
            if let Some(d) = failed {
                let e = self.tasks[&self.index[&d]]
                    .error
                    .clone()
                    .unwrap_or_else(|| "failed".into());
                self.err(id, Arc::from(format!("dependency '{d}' failed: {e}")), out);
            } else if missing == 0 {
                to_ready.push(id);
            } else {
                to_pipeline.push(id);
            }
        }
        to_ready.sort_unstable_by_key(|id| self.tasks[id].priority);
        for id in to_ready {
            if self
                .tasks
                .get(&id)
                .is_some_and(|t| t.state == State::Waiting && t.missing == 0)
            {
                self.make_ready(id, out);
            }
        }
        // Dependencies first: they were found after their dependents.
        for id in to_pipeline.into_iter().rev() {
            self.pipeline(id, out);
        }
    }

    /// Sends waiting task `id` ahead to the worker computing its missing
    /// inputs, when one worker computes all of them and already holds every
    /// other input: the worker starts it as soon as they are stored, with no
    /// round trip to the scheduler in between. A worker takes as many tasks
    /// ahead as it has slots.
    fn pipeline(&mut self, id: TaskId, out: &mut Vec<Command>) {
        if !self.config.pipeline {
            return;
        }
        let Some(t) = self.tasks.get(&id) else { return };
        // Each input's run looks once more: a gather of 100,000 keys is not
        // scanned 100,000 times.
        if t.state != State::Waiting || t.missing > AHEAD_MAX_MISSING {
            return;
        }
        let mut on = None;
        for d in &t.deps {
            let dt = &self.tasks[d];
            match dt.state {
                _ if dt.doomed_by.is_some() => return,
                State::Processing(w) if on.is_none_or(|x| x == w) => on = Some(w),
                State::Memory => {}
                _ => return,
            }
        }
        let Some(w) = on else { return };
        let all_there = t.deps.iter().all(|d| {
            let dt = &self.tasks[d];
            dt.state != State::Memory || dt.who_has.contains(&w)
        });
        let ws = &self.workers[&w];
        if all_there && !ws.closing && ws.ahead < self.capacity(ws) {
            self.workers.get_mut(&w).expect("checked").ahead += 1;
            self.tasks.get_mut(&id).expect("checked").ahead = true;
            self.sent_ahead += 1;
            self.run(id, w, out);
        }
    }

    /// Queues a task whose inputs are all in memory: on the worker holding the
    /// most bytes of them (ties to the least loaded), or for any worker if it has none.
    fn make_ready(&mut self, id: TaskId, out: &mut Vec<Command>) {
        let mut best: Option<(u64, usize, WorkerId)> = None;
        let t = &self.tasks[&id];
        if !t.deps.is_empty() {
            let mut bytes: Vec<(WorkerId, u64)> = Vec::new();
            for d in &t.deps {
                let dt = &self.tasks[d];
                for w in &dt.who_has {
                    match bytes.iter_mut().find(|(x, _)| x == w) {
                        Some((_, b)) => *b += dt.nbytes,
                        None => bytes.push((*w, dt.nbytes)),
                    }
                }
            }
            for (w, b) in bytes {
                let ws = &self.workers[&w];
                if ws.closing {
                    continue;
                }
                let load = ws.processing.len() + ws.queue.len();
                if best.is_none_or(|(bb, bl, _)| b > bb || (b == bb && load < bl)) {
                    best = Some((b, load, w));
                }
            }
        }
        let prio = t.priority;
        match best {
            Some((_, _, w)) => {
                self.set(id, State::Ready(Some(w)));
                self.workers
                    .get_mut(&w)
                    .expect("holder is live")
                    .queue
                    .push(Reverse((prio, id)));
                self.fill(w, out);
            }
            None => {
                self.set(id, State::Ready(None));
                self.root_queue.push(Reverse((prio, id)));
                if let Some(w) = self.least_loaded_with_room() {
                    self.fill(w, out);
                }
            }
        }
    }

    /// Slots taken on `w`: tasks sent to it, but those sent ahead of their inputs.
    fn busy(&self, w: &WorkerState) -> usize {
        w.processing.len() - w.ahead
    }

    fn capacity(&self, w: &WorkerState) -> usize {
        w.info.nthreads.max(1) + w.extra_slots.unwrap_or(self.config.extra_slots)
    }

    /// Adds `busy` to every worker's silence allowance: while the driver was
    /// busy with one event (a huge submission) it could not hear heartbeats,
    /// so that time must not count as the workers' silence.
    pub fn excuse(&mut self, busy: Duration) {
        for w in self.workers.values_mut() {
            w.last_seen += busy;
        }
    }

    /// Sets how many tasks `worker` gets queued beyond its threads (the
    /// driver paces it by task length) and fills it up to the new depth.
    pub fn set_extra_slots(&mut self, worker: WorkerId, extra: usize, out: &mut Vec<Command>) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.extra_slots = Some(extra);
            self.fill(worker, out);
        }
    }

    fn least_loaded_with_room(&self) -> Option<WorkerId> {
        self.workers
            .iter()
            .filter(|(_, w)| !w.closing && self.busy(w) < self.capacity(w))
            .min_by_key(|(_, w)| w.processing.len() + w.queue.len())
            .map(|(id, _)| *id)
    }

    /// Starts tasks on `worker` while it has free slots, best priority first
    /// between its own queue and the shared queue of tasks without inputs.
    fn fill(&mut self, worker: WorkerId, out: &mut Vec<Command>) {
        loop {
            let Some(w) = self.workers.get(&worker) else {
                return;
            };
            if w.closing || self.busy(w) >= self.capacity(w) {
                return;
            }
            let valid = |tasks: &Tasks, id: &TaskId, on: Option<WorkerId>| {
                tasks.get(id).is_some_and(|t| t.state == State::Ready(on))
            };
            let w = self.workers.get_mut(&worker).expect("checked");
            while let Some(Reverse((_, id))) = w.queue.peek() {
                if valid(&self.tasks, id, Some(worker)) {
                    break;
                }
                w.queue.pop();
            }
            while let Some(Reverse((_, id))) = self.root_queue.peek() {
                if valid(&self.tasks, id, None) {
                    break;
                }
                self.root_queue.pop();
            }
            let own = w.queue.peek().map(|r| r.0);
            let shared = self.root_queue.peek().map(|r| r.0);
            let id = match (own, shared) {
                (Some(a), Some(b)) if b < a => self.root_queue.pop(),
                (Some(_), _) => w.queue.pop(),
                (None, Some(_)) => self.root_queue.pop(),
                (None, None) => return,
            }
            .expect("peeked")
            .0
            .1;
            self.run(id, worker, out);
        }
    }

    fn run(&mut self, id: TaskId, worker: WorkerId, out: &mut Vec<Command>) {
        self.set(id, State::Processing(worker));
        self.workers
            .get_mut(&worker)
            .expect("live worker")
            .processing
            .insert(id);
        let t = self.tasks.get_mut(&id).expect("live task");
        t.attempts += 1;
        let drops = self.drops(id, worker);
        let t = self.tasks.get_mut(&id).expect("live task");
        t.dropping = !drops.is_empty();
        let t = &self.tasks[&id];
        let inputs = t
            .deps
            .iter()
            .map(|d| {
                let dt = &self.tasks[d];
                Input {
                    key: dt.key.clone(),
                    holders: dt.who_has.clone(),
                    nbytes: dt.nbytes,
                }
            })
            .collect();
        out.push(Command::Run {
            worker,
            key: t.key.clone(),
            task: t.task.clone().expect("only tasks with lineage run"),
            inputs,
            attempt: t.attempts - 1,
            drops,
        });
        if self.config.pipeline {
            for i in 0..self.tasks[&id].dependents.len() {
                let u = self.tasks[&id].dependents[i];
                self.pipeline(u, out);
            }
        }
    }

    /// The inputs of `id`, about to run on `worker`, that it may drop once it
    /// has succeeded (each marked `doomed_by` it): those with lineage that
    /// only this run still needs and that live or are computed on `worker`
    /// alone. Else a freed input would wait for the round trip of this run's
    /// report, and the worker would make its next result in fresh memory.
    fn drops(&mut self, id: TaskId, worker: WorkerId) -> Vec<Key> {
        if !self.config.drop_after_last_read {
            return vec![];
        }
        let mut drops = Vec::new();
        for i in 0..self.tasks[&id].deps.len() {
            let d = self.tasks[&id].deps[i];
            let dt = self.tasks.get_mut(&d).expect("dependency is live");
            let here = match dt.state {
                State::Memory => dt.who_has == [worker],
                State::Processing(w) => w == worker,
                _ => false,
            };
            let last = dt.waiters == 1 && dt.holds == 0 && dt.doomed_by.is_none();
            if here && last && dt.task.is_some() {
                dt.doomed_by = Some(id);
                drops.push(dt.key.clone());
            }
        }
        drops
    }

    /// `id` no longer runs on `worker` as far as the scheduler knows (it
    /// ended, failed, was cancelled or placed again): an input it was sent
    /// to drop is gone from there, or is made to go.
    fn unassign(&mut self, id: TaskId, worker: WorkerId, out: &mut Vec<Command>) {
        let t = self.tasks.get_mut(&id).expect("live task");
        let ahead = std::mem::take(&mut t.ahead);
        let dropping = std::mem::take(&mut t.dropping);
        if let Some(w) = self.workers.get_mut(&worker) {
            w.processing.remove(&id);
            w.ahead -= usize::from(ahead);
        }
        if !dropping {
            return;
        }
        for i in 0..self.tasks[&id].deps.len() {
            let d = self.tasks[&id].deps[i];
            let dt = &self.tasks[&d];
            // One still being computed goes once computed (see `finished`).
            if dt.doomed_by == Some(id) && dt.state == State::Memory {
                self.drop_copy(d, worker, out);
            }
        }
    }

    /// The copy of doomed `id` on `worker` is gone: the run it was sent to
    /// drop with dropped it, or this `Free` does. With no copy left it is
    /// released, and made again at the end of the event if someone asked for
    /// it meanwhile (they count it as missing).
    fn drop_copy(&mut self, id: TaskId, worker: WorkerId, out: &mut Vec<Command>) {
        let t = self.tasks.get_mut(&id).expect("live task");
        t.doomed_by = None;
        if let Some(i) = t.who_has.iter().position(|w| *w == worker) {
            t.who_has.swap_remove(i);
            if let Some(ws) = self.workers.get_mut(&worker) {
                ws.has.remove(&id);
                ws.nbytes -= t.nbytes;
            }
            out.push(Command::Free {
                worker,
                key: t.key.clone(),
            });
        }
        if t.state == State::Memory && t.who_has.is_empty() {
            self.set(id, State::Released);
            self.regrow.push(id);
        }
    }

    fn finished(&mut self, worker: WorkerId, key: Key, nbytes: u64, out: &mut Vec<Command>) {
        let Some(&id) = self.index.get(&key) else {
            out.push(Command::Free { worker, key });
            return;
        };
        if !self.workers.contains_key(&worker) {
            return; // a worker already removed: its data is gone with it
        }
        let state = self.tasks[&id].state;
        match state {
            State::Memory => {
                let t = self.tasks.get_mut(&id).expect("live");
                if t.doomed_by.is_some() {
                    // Its one copy is on its way out: another would not be.
                    out.push(Command::Free { worker, key });
                } else if !t.who_has.contains(&worker) {
                    t.who_has.push(worker);
                    let w = self.workers.get_mut(&worker).expect("checked");
                    w.has.insert(id);
                    w.nbytes += nbytes;
                }
                return;
            }
            State::Released | State::Erred => {
                // Cancelled or failed meanwhile: the result is not wanted.
                out.push(Command::Free { worker, key });
                return;
            }
            State::Processing(w) => self.unassign(id, w, out),
            State::Waiting | State::Ready(_) => {} // recomputation raced an old run: take it
        }
        self.set(id, State::Memory);
        let w = self.workers.get_mut(&worker).expect("checked");
        w.has.insert(id);
        w.nbytes += nbytes;
        let t = self.tasks.get_mut(&id).expect("live");
        t.who_has = vec![worker];
        t.nbytes = nbytes;
        t.missing = 0;
        let doomed = t.doomed_by;
        if t.holds > 0 && doomed.is_none() {
            out.push(Command::Done { key });
        }
        // By index rather than over a copy: neither list changes meanwhile.
        for i in 0..self.tasks[&id].deps.len() {
            let d = self.tasks[&id].deps[i];
            self.tasks.get_mut(&d).expect("dependency is live").waiters -= 1;
            self.maybe_release(d, out);
        }
        for i in 0..self.tasks[&id].dependents.len() {
            let u = self.tasks[&id].dependents[i];
            let Some(ut) = self.tasks.get_mut(&u) else {
                continue;
            };
            if ut.state == State::Waiting {
                // Those waiting on a doomed key wait for it to be made again.
                if doomed.is_none() {
                    ut.missing -= 1;
                    if ut.missing == 0 {
                        self.make_ready(u, out);
                    }
                }
            } else if let (true, State::Processing(w)) = (ut.ahead, ut.state) {
                // Sent ahead: one input fewer to wait for; with none left, it takes a slot.
                ut.missing -= 1;
                if ut.missing == 0 {
                    ut.ahead = false;
                    self.workers.get_mut(&w).expect("live").ahead -= 1;
                }
            }
        }
        // Doomed by a run that no longer runs there: nothing will read it.
        if let Some(r) = doomed
            && self
                .tasks
                .get(&r)
                .is_none_or(|rt| rt.state != State::Processing(worker))
        {
            self.drop_copy(id, worker, out);
        }
        self.maybe_release(id, out);
        self.fill(worker, out);
    }

    /// Marks `id` and every pending task downstream of it as failed.
    fn err(&mut self, id: TaskId, error: Arc<str>, out: &mut Vec<Command>) {
        let mut work = vec![(id, error)];
        while let Some((id, error)) = work.pop() {
            let t = &self.tasks[&id];
            if t.state == State::Erred || t.state == State::Memory {
                continue;
            }
            let holding_deps = t.pending();
            if let State::Processing(w) = t.state {
                self.unassign(id, w, out);
            }
            self.set(id, State::Erred);
            let t = self.tasks.get_mut(&id).expect("live");
            t.error = Some(error.clone());
            let key = t.key.clone();
            if t.holds > 0 {
                out.push(Command::Failed {
                    key: key.clone(),
                    error: error.to_string(),
                });
            }
            let (deps, dependents) = (t.deps.clone(), t.dependents.clone());
            if holding_deps {
                for d in deps {
                    self.tasks.get_mut(&d).expect("dependency is live").waiters -= 1;
                    self.maybe_release(d, out);
                }
            }
            let downstream: Arc<str> = Arc::from(format!("dependency '{key}' failed: {error}"));
            for u in dependents {
                if self.tasks.get(&u).is_some_and(|t| t.pending()) {
                    work.push((u, downstream.clone()));
                }
            }
            self.maybe_release(id, out);
        }
    }

    /// Frees `id` if nothing needs it any more, cancelling it if it was pending.
    fn maybe_release(&mut self, id: TaskId, out: &mut Vec<Command>) {
        // Most calls release nothing or one task: `work` allocates only past that.
        let (mut next, mut work) = (Some(id), Vec::new());
        while let Some(id) = next.take().or_else(|| work.pop()) {
            let Some(t) = self.tasks.get_mut(&id) else {
                continue;
            };
            if t.needed() {
                continue;
            }
            match t.state {
                State::Memory => {
                    let holders = std::mem::take(&mut t.who_has);
                    let (key, nbytes) = (t.key.clone(), t.nbytes);
                    for w in holders {
                        if let Some(ws) = self.workers.get_mut(&w) {
                            ws.has.remove(&id);
                            ws.nbytes -= nbytes;
                        }
                        out.push(Command::Free {
                            worker: w,
                            key: key.clone(),
                        });
                    }
                    self.set(id, State::Released);
                }
                state @ (State::Waiting | State::Ready(_) | State::Processing(_)) => {
                    if let State::Processing(w) = state {
                        self.unassign(id, w, out);
                    }
                    self.set(id, State::Released);
                    for i in 0..self.tasks[&id].deps.len() {
                        let d = self.tasks[&id].deps[i];
                        self.tasks.get_mut(&d).expect("dependency is live").waiters -= 1;
                        work.push(d);
                    }
                }
                State::Released | State::Erred => {}
            }
            self.maybe_forget(id);
        }
    }

    /// Drops the lineage of `id` once it is released and nothing could need it again.
    fn maybe_forget(&mut self, id: TaskId) {
        let (mut next, mut work) = (Some(id), Vec::new());
        while let Some(id) = next.take().or_else(|| work.pop()) {
            let Some(t) = self.tasks.get(&id) else {
                continue;
            };
            let done = matches!(t.state, State::Released | State::Erred);
            if !done || t.needed() || t.live_dependents > 0 {
                continue;
            }
            let t = self.tasks.remove(&id).expect("checked");
            self.index.remove(&t.key);
            for d in t.deps {
                if let Some(dt) = self.tasks.get_mut(&d) {
                    dt.live_dependents -= 1;
                    work.push(d);
                }
            }
        }
    }

    fn remove_worker(&mut self, worker: WorkerId, out: &mut Vec<Command>) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        // Data that lived only there is gone.
        let mut lost = Vec::new();
        for id in w.has {
            let t = self.tasks.get_mut(&id).expect("live");
            t.who_has.retain(|x| *x != worker);
            if t.who_has.is_empty() {
                self.set(id, State::Released);
                lost.push(id);
            }
        }
        // A task that was there when several workers died may be what kills
        // them: it fails rather than take down the cluster one worker at a time.
        let mut killers = Vec::new();
        for id in &w.processing {
            let t = self.tasks.get_mut(id).expect("live");
            t.deaths += 1;
            if t.deaths >= self.config.allowed_deaths {
                killers.push(*id);
            }
        }
        for id in killers {
            let t = &self.tasks[&id];
            let msg = format!(
                "task '{}' was running on {} workers when they died (the last: '{}'); \
                 not retried, as it may be what kills them",
                t.key, t.deaths, w.info.name
            );
            self.err(id, Arc::from(msg), out);
        }
        // Tasks that ran or queued there, or read lost data, wait again.
        let mut redo: Vec<TaskId> = w.processing.into_iter().collect();
        redo.extend(w.queue.into_iter().map(|Reverse((_, id))| id));
        for id in &lost {
            redo.extend(self.tasks[id].dependents.iter().copied());
        }
        // So do tasks sent ahead to a live worker to wait there for one of
        // these (pipelined): that worker will not compute it now.
        let mut seen: FxHashSet<TaskId> = redo.iter().copied().collect();
        let mut i = 0;
        while i < redo.len() {
            let Some(t) = self.tasks.get(&redo[i]) else {
                i += 1;
                continue;
            };
            if t.state != State::Memory {
                for &u in &t.dependents {
                    let sent = self
                        .tasks
                        .get(&u)
                        .is_some_and(|ut| matches!(ut.state, State::Processing(_)));
                    if sent && seen.insert(u) {
                        redo.push(u);
                    }
                }
            }
            i += 1;
        }
        redo.sort_unstable();
        redo.dedup();
        redo.retain(|id| {
            self.tasks.get(id).is_some_and(|t| match t.state {
                State::Ready(on) => on.is_some(),
                State::Processing(_) | State::Waiting => true,
                _ => false,
            })
        });
        for &id in &redo {
            if let State::Processing(other) = self.tasks[&id].state {
                self.unassign(id, other, out);
            }
            let missing = self.tasks[&id]
                .deps
                .iter()
                .filter(|d| !self.tasks[d].available())
                .count();
            self.tasks.get_mut(&id).expect("live").missing = missing as u32;
            self.set(id, State::Waiting);
        }
        // What is still needed is recomputed from lineage.
        for id in lost {
            let t = &self.tasks[&id];
            if t.needed() && t.task.is_none() {
                let msg = format!(
                    "scattered data '{}' was lost with worker '{}' ({}); it has no lineage to recompute it from",
                    t.key, w.info.name, w.info.address
                );
                self.err(id, Arc::from(msg), out);
            } else if t.needed() {
                // A result only a client holds (it has had it already) is
                // made again after the work queued now, not ahead of it by
                // its old submission: a worker that dies again and again
                // would otherwise hold newer graphs back for good.
                let generation = (t.waiters == 0).then(|| {
                    self.generation += 1;
                    self.generation
                });
                self.need_as(id, generation, out);
            } else {
                self.maybe_forget(id);
            }
        }
        for id in redo {
            if self
                .tasks
                .get(&id)
                .is_some_and(|t| t.state == State::Waiting && t.missing == 0)
            {
                self.make_ready(id, out);
            }
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for w in ids {
            self.fill(w, out);
        }
    }
}
