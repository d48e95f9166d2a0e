//! The wire contract: every DoAction name and JSON body, mirroring docs/PROTOCOL.md.

use std::convert::Infallible;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use quiver_engine::Key;
use quiver_engine::graph::Task;
use quiver_engine::store::StoreStats;

/// Version of this contract. Bump it when a message changes shape or meaning;
/// a worker refuses a center of another version.
pub const PROTOCOL_VERSION: u32 = 7;

/// Header naming the client session whose holds a request adds or drops.
pub const SESSION_HEADER: &str = "x-quiver-session";
/// Header bounding how long `GetFlightInfo` waits for a key, in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-quiver-timeout-ms";
/// Header (any value) asking `GetFlightInfo` for the endpoints and size
/// only, which the center knows without asking a holder for the schema.
pub const LOCATE_HEADER: &str = "x-quiver-locate";

/// Header of the center's `DoPut` to a worker: the number of commands sent
/// to that worker before it, which the worker applies first. A free of the
/// key's earlier chunk, sent before, would otherwise drop the new one.
pub const AFTER_HEADER: &str = "x-quiver-after";

/// Public actions of the center, with their descriptions (for `ListActions`).
pub const CENTER_ACTIONS: &[(&str, &str)] = &[
    (
        "submit",
        "Submit a graph: {\"graph\": {key: task}, \"keys\": [...]} -> {\"keys\": [...]}",
    ),
    (
        "release",
        "Release keys held by this client: {\"keys\": [...]}",
    ),
    (
        "cluster",
        "Cluster status: every worker and totals, as JSON",
    ),
    ("ops", "The ops the center accepts"),
    (
        "session-close",
        "Release everything the session in the x-quiver-session header holds",
    ),
    ("register", "Internal: a worker joins"),
    ("heartbeat", "Internal: a worker is alive"),
    (
        "report",
        "Internal: a worker reports finished and failed tasks",
    ),
    (
        "retire",
        "Internal: a worker leaves; its data is handed to peers first",
    ),
];

/// Actions of a worker (internal, used by the center and peers).
pub const WORKER_ACTIONS: &[(&str, &str)] = &[
    ("run", "Run tasks: {\"tasks\": [...]}"),
    ("free", "Drop keys: {\"keys\": [...]}"),
    (
        "publish",
        "Publish a key in shared memory: {\"key\": k} -> {\"shared\": regions} or {\"path\": p}, with \"bytes\": n",
    ),
    ("status", "This worker's figures"),
    (
        "retire",
        "Leave the cluster as on SIGTERM: hand data to peers, then exit",
    ),
    (
        "gather",
        "Internal: fetch keys from peers and keep them: {\"inputs\": [...]} -> {\"stored\": [...]}",
    ),
];

/// The `DoExchange` command (a CMD descriptor) on which the center sends a
/// worker its [`Commands`]; the worker never ends its side while it lives.
pub const COMMANDS: &str = "commands";

/// `app_metadata` of the first message of a `DoExchange` getting keys: the
/// sender may combine chunks of one schema into one batch (`codec::split`).
pub const COMBINE: &str = "combine";

/// `submit` reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Submitted {
    /// The keys now held for the client.
    pub keys: Vec<Key>,
}

/// `release` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Keys to release.
    pub keys: Vec<Key>,
}

/// `register` body: a worker joining.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Register {
    /// Contract version the worker speaks.
    pub protocol_version: u32,
    /// Human name.
    pub name: String,
    /// `host:port` of its Flight service.
    pub address: String,
    /// Workers with the same host id share memory.
    pub host_id: String,
    /// Task slots.
    pub nthreads: usize,
    /// Memory limit in bytes.
    pub memory_limit: u64,
    /// The names of the ops it can run. (Defaulted so that a worker of an
    /// older version, which sends none, is told of the version mismatch.)
    #[serde(default)]
    pub ops: Vec<String>,
}

/// `register` reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registered {
    /// The id the center gave the worker.
    pub worker: u32,
    /// The center's contract version.
    pub protocol_version: u32,
}

/// Bytes a worker moved, per route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCounters {
    /// Bytes sent to peers and clients over Flight.
    pub flight_sent: u64,
    /// Bytes received from peers over Flight.
    pub flight_received: u64,
    /// Bytes received over Flight that had to be copied to be aligned.
    pub flight_realigned: u64,
    /// Bytes published in shared memory for peers.
    pub shm_sent: u64,
    /// Of those, bytes that had to be written to a shared-memory file first
    /// (0 when chunks are shared where they lie).
    #[serde(default)]
    pub shm_written: u64,
    /// Bytes mapped from peers' shared memory.
    pub shm_received: u64,
}

/// What a worker says about itself (heartbeat body and `status` reply).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// The worker's id.
    pub worker: u32,
    /// Its address (checked with the id: ids restart with the center).
    #[serde(default)]
    pub address: String,
    /// Its store's figures.
    pub store: StoreStats,
    /// Tasks running now.
    pub running: usize,
    /// Bytes moved per route.
    pub routes: RouteCounters,
    /// The process's resident memory.
    #[serde(default)]
    pub rss_bytes: u64,
    /// Its highest resident memory so far.
    #[serde(default)]
    pub peak_rss_bytes: u64,
    /// Paused by memory pressure (one task at a time).
    #[serde(default)]
    pub paused: bool,
    /// Inputs dropped as the run that read them last succeeded
    /// ([`RunTask::drops`]), so far.
    #[serde(default)]
    pub dropped_by_last_reader: u64,
}

/// One finished task in a `report`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Finished {
    /// The key.
    pub key: Key,
    /// Result size.
    pub nbytes: u64,
    /// How long the task ran, in microseconds (sets how many tasks the
    /// center keeps queued on the worker).
    #[serde(default)]
    pub micros: u64,
}

/// One failed task in a `report`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failed {
    /// The key.
    pub key: Key,
    /// The task's error.
    pub error: String,
    /// The `attempt` of the run that failed (from [`RunTask`]).
    #[serde(default)]
    pub attempt: u32,
    /// Workers an input could not be fetched from: the center checks them
    /// (a dead one is removed and its data recomputed) before it believes
    /// the failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

/// `report` body.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// The reporting worker.
    pub worker: u32,
    /// Its address: an id from before a center restart may now name another worker.
    #[serde(default)]
    pub address: String,
    /// Tasks done.
    #[serde(default)]
    pub finished: Vec<Finished>,
    /// Tasks failed.
    #[serde(default)]
    pub failed: Vec<Failed>,
}

/// Where a copy of an input lives.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Holder {
    /// `host:port` of the worker.
    pub address: String,
    /// Its host id.
    pub host_id: String,
}

/// One input of a task to run: its key, the workers holding it, its size in bytes.
pub type RunInput = (Key, Vec<Arc<Holder>>, u64);

/// One task to run. `H` names a worker holding an input: on the wire, its
/// position in [`Run::holders`] (a large gather names the same few workers
/// for thousands of inputs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunTask<H = u32> {
    /// The key to produce.
    pub key: Key,
    /// What to run (shared with the center's task table: sending it copies nothing).
    pub task: Arc<Task>,
    /// Each input, the workers holding it, and its size in bytes.
    pub inputs: Vec<(Key, Vec<H>, u64)>,
    /// Which run of this task this is; echoed back if it fails.
    #[serde(default)]
    pub attempt: u32,
    /// Inputs to drop from the store once this run succeeds: it is their
    /// last reader, and no other worker holds them. A later run of one of
    /// these keys here calls its drop off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drops: Vec<Key>,
}

impl<H> RunTask<H> {
    /// The same task with each holder replaced by `f` of it.
    pub fn map_holders<G, E>(
        self,
        mut f: impl FnMut(&H) -> std::result::Result<G, E>,
    ) -> std::result::Result<RunTask<G>, E> {
        let inputs = self
            .inputs
            .into_iter()
            .map(|(k, hs, n)| Ok((k, hs.iter().map(&mut f).collect::<Result<_, E>>()?, n)))
            .collect::<Result<_, E>>()?;
        Ok(RunTask {
            key: self.key,
            task: self.task,
            inputs,
            attempt: self.attempt,
            drops: self.drops,
        })
    }
}

/// `run` body.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Run {
    /// The workers the tasks' inputs live on, each listed once.
    #[serde(default)]
    pub holders: Vec<Holder>,
    /// The tasks.
    pub tasks: Vec<RunTask>,
}

impl Run {
    /// A `run` body for `tasks`, listing each holder (one `Arc`) once.
    pub fn new(tasks: Vec<RunTask<Arc<Holder>>>) -> Run {
        let mut holders = Vec::new();
        let mut listed: FxHashMap<usize, u32> = FxHashMap::default();
        let tasks = tasks
            .into_iter()
            .map(|t| {
                t.map_holders(|h| {
                    Ok::<_, Infallible>(*listed.entry(Arc::as_ptr(h).addr()).or_insert_with(|| {
                        holders.push(Holder::clone(h));
                        holders.len() as u32 - 1
                    }))
                })
            })
            .collect::<Result<_, Infallible>>()
            .unwrap_or_else(|e| match e {});
        Run { holders, tasks }
    }

    /// The holders and the tasks, every holder position checked against the
    /// list: a task whose inputs are all at hand never needs them resolved.
    pub fn split(self) -> Result<(Vec<Arc<Holder>>, Vec<RunTask>), String> {
        let n = self.holders.len();
        let positions = self.tasks.iter().flat_map(|t| &t.inputs).flat_map(|i| &i.1);
        if let Some(i) = positions.copied().find(|&i| i as usize >= n) {
            return Err(format!(
                "a run input names holder {i}; the message lists {n}"
            ));
        }
        // Shared: a gather names the same few holders for thousands of inputs.
        Ok((self.holders.into_iter().map(Arc::new).collect(), self.tasks))
    }
}

/// `task` with each holder position replaced by the holder, from a list
/// [`Run::split`] checked it against.
pub fn resolve(task: RunTask, holders: &[Arc<Holder>]) -> RunTask<Arc<Holder>> {
    task.map_holders(|&i| Ok::<_, Infallible>(holders[i as usize].clone()))
        .unwrap_or_else(|e| match e {})
}

/// A worker's reply to the center's `DoPut` (its one `PutResult`'s `app_metadata`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stored {
    /// The chunk's size in memory.
    pub nbytes: u64,
}

/// `free` body.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Free {
    /// Keys to drop.
    pub keys: Vec<Key>,
}

/// One message of the `commands` exchange (its `app_metadata`): keys to
/// drop, then tasks to run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Commands {
    /// How many commands (frees and runs) the center has sent on this
    /// exchange, this message's included: a `DoPut` names the count it must
    /// come after ([`AFTER_HEADER`]).
    #[serde(default)]
    pub seq: u64,
    /// Keys to drop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub free: Vec<Key>,
    /// Tasks to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
}

/// `publish` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Publish {
    /// The key to publish.
    pub key: Key,
}

/// `publish` reply: where the chunk already lies in shared memory, or the
/// IPC file it was copied to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Published {
    /// The chunk's own buffers, in the publisher's memfds: mapped, never copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<quiver_engine::shm::Exported>,
    /// Otherwise the IPC file in shared memory the chunk was written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The bytes handed over.
    pub bytes: u64,
}

/// One worker in the `cluster` reply.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerEntry {
    /// The worker's id.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Its host id.
    pub host_id: String,
    /// Task slots.
    pub nthreads: usize,
    /// Memory limit in bytes.
    pub memory_limit: u64,
    /// Keys held.
    pub keys: usize,
    /// Bytes in memory.
    pub memory_bytes: u64,
    /// Bytes spilled.
    pub spilled_bytes: u64,
    /// Tasks running.
    pub running: usize,
    /// Bytes moved per route.
    pub routes: RouteCounters,
}

/// `cluster` reply.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Contract version.
    pub protocol_version: u32,
    /// Every worker.
    pub workers: Vec<WorkerEntry>,
    /// Sum of the workers' figures.
    pub totals: WorkerEntry,
    /// Tasks known to the scheduler (including lineage).
    pub tasks: usize,
    /// Tasks finished since the center started.
    pub tasks_finished: u64,
    /// Tasks sent to a worker ahead of inputs it was still computing
    /// (pipelined), since the center started.
    #[serde(default)]
    pub tasks_sent_ahead: u64,
}

impl WorkerEntry {
    /// Takes the figures a worker reports about itself.
    pub fn set_figures(&mut self, s: &WorkerStatus) {
        self.keys = s.store.keys;
        self.memory_bytes = s.store.memory_bytes;
        self.spilled_bytes = s.store.spilled_bytes;
        self.running = s.running;
        self.routes = s.routes.clone();
    }
}

impl ClusterStatus {
    /// Sums the workers' figures into `totals`.
    pub fn sum_totals(&mut self) {
        let mut t = WorkerEntry {
            name: "total".into(),
            ..Default::default()
        };
        for w in &self.workers {
            t.nthreads = t.nthreads.saturating_add(w.nthreads);
            t.memory_limit = t.memory_limit.saturating_add(w.memory_limit);
            t.keys = t.keys.saturating_add(w.keys);
            t.memory_bytes = t.memory_bytes.saturating_add(w.memory_bytes);
            t.spilled_bytes = t.spilled_bytes.saturating_add(w.spilled_bytes);
            t.running = t.running.saturating_add(w.running);
            let (r, x) = (&mut t.routes, &w.routes);
            r.flight_sent = r.flight_sent.saturating_add(x.flight_sent);
            r.flight_received = r.flight_received.saturating_add(x.flight_received);
            r.flight_realigned = r.flight_realigned.saturating_add(x.flight_realigned);
            r.shm_sent = r.shm_sent.saturating_add(x.shm_sent);
            r.shm_written = r.shm_written.saturating_add(x.shm_written);
            r.shm_received = r.shm_received.saturating_add(x.shm_received);
        }
        self.totals = t;
    }
}

/// `retire` body (worker → center): `drain` stops new tasks for the worker;
/// `hand-over` copies the data only it holds to peers and removes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retire {
    /// The retiring worker.
    pub worker: u32,
    /// `drain` or `hand-over`.
    pub phase: String,
}

/// `retire` reply to `hand-over`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Retired {
    /// Keys copied to peers.
    pub moved: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// `gather` body (center → worker): fetch these keys from their holders and keep them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gather {
    /// What to fetch, from where.
    pub inputs: Vec<RunInput>,
}

/// `gather` reply: the keys now stored, with their sizes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Gathered {
    /// (key, bytes) for each stored key.
    pub stored: Vec<(Key, u64)>,
    /// Seconds the worker took, from reading the request to storing the last
    /// key (0 from a worker that does not say).
    #[serde(default)]
    pub seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_lists_each_holder_once_and_refuses_an_unlisted_one() {
        let holder = |a: &str| {
            Arc::new(Holder {
                address: a.into(),
                host_id: "h".into(),
            })
        };
        let (a, b) = (holder("a:1"), holder("b:1"));
        let task = |inputs: Vec<(Key, Vec<Arc<Holder>>, u64)>| RunTask {
            key: Key::from("t"),
            task: Arc::new(Task::new("sum")),
            inputs,
            attempt: 0,
            drops: vec![],
        };
        let run = Run::new(vec![
            task(vec![(Key::from("x"), vec![a.clone(), b.clone()], 8)]),
            task(vec![(Key::from("y"), vec![b.clone()], 8)]),
        ]);
        assert_eq!(run.holders.len(), 2);
        let json = serde_json::to_string(&run).unwrap();
        assert_eq!(json.matches("a:1").count(), 1, "{json}");
        let back: Run = serde_json::from_str(&json).unwrap();
        let (holders, tasks) = back.clone().split().unwrap();
        let tasks: Vec<_> = tasks.into_iter().map(|t| resolve(t, &holders)).collect();
        assert_eq!(tasks[0].inputs[0].1[1].address, "b:1");
        assert_eq!(tasks[1].inputs[0].1[0].address, "b:1");
        let mut bad = back;
        bad.holders.pop();
        let e = bad.split().unwrap_err();
        assert!(e.contains("holder 1") && e.contains("lists 1"), "{e}");
    }

    #[test]
    fn a_gather_reply_without_its_time_still_reads() {
        let old: Gathered = serde_json::from_str(r#"{"stored": [["k", 8]]}"#).unwrap();
        assert_eq!((old.stored.len(), old.seconds), (1, 0.0));
        let new: Gathered = serde_json::from_str(r#"{"stored": [], "seconds": 0.5}"#).unwrap();
        assert_eq!(new.seconds, 0.5);
    }
}
