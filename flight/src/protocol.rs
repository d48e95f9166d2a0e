//! The wire contract: every DoAction name and JSON body, mirroring docs/PROTOCOL.md.

use serde::{Deserialize, Serialize};

use quiver_engine::Key;
use quiver_engine::graph::Task;
use quiver_engine::store::StoreStats;

/// Version of this contract. Bump it when a message changes shape or meaning;
/// a worker refuses a center of another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Header naming the client session whose holds a request adds or drops.
pub const SESSION_HEADER: &str = "x-quiver-session";
/// Header bounding how long `GetFlightInfo` waits for a key, in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-quiver-timeout-ms";

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
        "Publish a key in shared memory: {\"key\": k} -> {\"path\": p, \"bytes\": n}",
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
    (
        "watch",
        "Internal: a stream the worker never ends, so the center sees its death at once",
    ),
];

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
pub type RunInput = (Key, Vec<Holder>, u64);

/// One task in a `run` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunTask {
    /// The key to produce.
    pub key: Key,
    /// What to run.
    pub task: Task,
    /// Each input, where it lives, and its size in bytes.
    pub inputs: Vec<RunInput>,
    /// Which run of this task this is; echoed back if it fails.
    #[serde(default)]
    pub attempt: u32,
}

/// `run` body.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Run {
    /// The tasks.
    pub tasks: Vec<RunTask>,
}

/// `free` body.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Free {
    /// Keys to drop.
    pub keys: Vec<Key>,
}

/// `publish` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Publish {
    /// The key to publish.
    pub key: Key,
}

/// `publish` reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Published {
    /// The IPC file in shared memory.
    pub path: String,
    /// Its size.
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
}
