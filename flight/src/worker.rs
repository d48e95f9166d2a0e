//! A worker process: a chunk store, an executor, and a Flight service for the
//! center (run, free), peers (get, publish) and clients (get, info, list).
//!
//! Inputs held elsewhere are fetched before a task runs: through shared memory
//! when the holder is on the same host (it publishes the chunk as an IPC file
//! on a tmpfs, this worker maps it), otherwise by Flight `DoGet`. Fetched
//! inputs are used and dropped, never kept, so the center's view of who holds
//! what stays exact.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::stream;
use rustc_hash::FxHashMap;
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::codec;
use crate::error::{Error, Result};
use crate::memory::{self, IdleTrim, anon_rss, trim_allocator};
use crate::net::{self, FlightClient};
use crate::protocol::*;
use crate::service::{BoxStream, descriptor_key, flight_info, json_result, parse};
use quiver_engine::executor::{Executor, evaluate};
use quiver_engine::store::{ChunkStore, StoreConfig, TempIpcFile, ipcfile, owned};
use quiver_engine::{Chunk, Key, OpRegistry, chunk, shm};

/// How a worker is started.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// `host:port` of the center.
    pub center: String,
    /// Interface to listen on.
    pub host: String,
    /// Port (0 picks one).
    pub port: u16,
    /// Task threads.
    pub nthreads: usize,
    /// Memory limit in bytes before spilling.
    pub memory_limit: u64,
    /// Spill directory.
    pub spill_dir: PathBuf,
    /// Human name.
    pub name: String,
    /// Host identity; workers sharing it use shared memory. Default: this machine's.
    pub host_id: Option<String>,
    /// Never use shared memory (to test or measure the Flight route on one host).
    pub no_shm: bool,
    /// Fraction of the memory limit the store may fill before it spills.
    pub spill_fraction: f64,
    /// Fraction of the memory limit, as process RSS, at which new tasks pause
    /// (one at a time) and the store spills down to its target.
    pub pause_fraction: f64,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// How long the center may stay unreachable, at start-up or later,
    /// before the worker exits.
    pub center_patience: Duration,
    /// The ops it runs; the center refuses a worker that lacks any of its own.
    pub ops: Arc<OpRegistry>,
}

/// The count a put names in [`AFTER_HEADER`], if it names one.
fn after_of(value: Option<&[u8]>) -> Result<Option<u64>, Status> {
    value
        .map(|v| {
            (std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| Status::invalid_argument(format!("{AFTER_HEADER} must be a count")))
        })
        .transpose()
}

/// Where this host's workers make their shared-memory directories.
fn shared_memory_dir() -> PathBuf {
    ["/dev/shm"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// The start of a worker's shared-memory directory's name.
const SHARED_PREFIX: &str = "quiver-worker-";

/// Removes the shared-memory directories of workers of this host that died
/// without removing them (a worker removes its own on exit; a killed one
/// cannot); those of live workers are left alone.
pub fn sweep_shared_memory() -> Vec<PathBuf> {
    owned::sweep(&shared_memory_dir(), SHARED_PREFIX)
}

/// Chunks smaller than this go over Flight even on one host: a file per tiny
/// chunk costs more than the copy it saves.
const SHM_MIN_BYTES: u64 = 64 << 10;

/// Bytes in flight from one peer at most; bigger chunks go one at a time.
const PEER_BUDGET_MB: u32 = 512;

/// This machine's identity: its boot id (distinct per host, shared by its processes).
pub fn default_host_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .or_else(|_| std::fs::read_to_string("/etc/machine-id"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

#[derive(Default)]
struct Routes {
    flight_sent: AtomicU64,
    flight_received: AtomicU64,
    flight_realigned: AtomicU64,
    shm_sent: AtomicU64,
    shm_written: AtomicU64,
    shm_received: AtomicU64,
}

impl Routes {
    /// Counts what a Flight decode received and had to realign.
    fn count_flight_in(&self, d: &codec::Decoder) {
        self.flight_received
            .fetch_add(d.received, Ordering::Relaxed);
        self.flight_realigned
            .fetch_add(d.realigned, Ordering::Relaxed);
    }
}

enum Outcome {
    /// Key, bytes, microseconds it ran, and the id this worker had when it
    /// stored the result.
    Finished(Key, u64, u64, u32),
    /// Key, error, attempt, and the holders an input could not be fetched from.
    Failed(Key, String, u32, Vec<String>),
}

/// A worker's state shared by its service and its tasks.
pub struct WorkerCore {
    id: AtomicU32,
    address: String,
    host_id: String,
    no_shm: bool,
    store: Arc<ChunkStore>,
    executor: Executor,
    outcomes: mpsc::UnboundedSender<Outcome>,
    routes: Routes,
    running: AtomicUsize,
    /// Inputs dropped by their last reader ([`RunTask::drops`]), so far.
    dropped_by_last_reader: AtomicU64,
    peers: Mutex<FxHashMap<String, (Channel, Arc<Semaphore>)>>,
    published: Mutex<FxHashMap<Key, Arc<TempIpcFile>>>,
    shm_dir: PathBuf,
    /// Becomes true when the worker stops (ends the `commands` exchange).
    stop: tokio::sync::watch::Receiver<bool>,
    /// Outcomes not yet reported to the center (a retiring worker waits for 0).
    unreported: AtomicUsize,
    /// Where reports go: the reply side of the `commands` exchange (by its
    /// number) that last sent commands, while it is open.
    reports: Mutex<Option<(u64, mpsc::UnboundedSender<FlightData>)>>,
    /// The `seq` of the last commands message applied (see [`AFTER_HEADER`]).
    applied: tokio::sync::watch::Sender<u64>,
    /// Someone asked this worker to retire (`quiver retire`).
    retire_requested: tokio::sync::Notify,
    /// Runs in progress here, and tasks waiting for them.
    local: Mutex<Local>,
    /// Where tasks woken on an executor thread start their fetches.
    runtime: tokio::runtime::Handle,
}

/// This worker's runs in progress (accepted, not yet ended) by key, and the
/// tasks sent ahead of one of them (pipelined: an input without holders is
/// being computed here) parked until it ends.
#[derive(Default)]
struct Local {
    computing: FxHashMap<Key, u32>,
    parked: FxHashMap<Key, Vec<RunTask<Arc<Holder>>>>,
    /// Inputs a run here drops once it succeeds ([`RunTask::drops`]): input → that run.
    dropped_by: FxHashMap<Key, Key>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WorkerCore {
    /// Figures for heartbeats and `status`.
    pub fn status(&self) -> WorkerStatus {
        let r = &self.routes;
        WorkerStatus {
            worker: self.id.load(Ordering::Relaxed),
            address: self.address.clone(),
            store: self.store.stats(),
            running: self.running.load(Ordering::Relaxed),
            rss_bytes: memory::rss(),
            peak_rss_bytes: memory::peak_rss(),
            paused: self.executor.is_paused(),
            dropped_by_last_reader: self.dropped_by_last_reader.load(Ordering::Relaxed),
            routes: RouteCounters {
                flight_sent: r.flight_sent.load(Ordering::Relaxed),
                flight_received: r.flight_received.load(Ordering::Relaxed),
                flight_realigned: r.flight_realigned.load(Ordering::Relaxed),
                shm_sent: r.shm_sent.load(Ordering::Relaxed),
                shm_written: r.shm_written.load(Ordering::Relaxed),
                shm_received: r.shm_received.load(Ordering::Relaxed),
            },
        }
    }

    /// A count that moves whenever this worker does anything: runs a task,
    /// sends or receives a chunk, stores, frees or spills one, takes commands.
    fn work(&self) -> u64 {
        let (s, r) = (self.store.stats(), &self.routes);
        [
            s.keys as u64,
            s.memory_bytes,
            s.spilled_bytes,
            self.running.load(Ordering::Relaxed) as u64,
            r.flight_sent.load(Ordering::Relaxed),
            r.flight_received.load(Ordering::Relaxed),
            r.shm_sent.load(Ordering::Relaxed),
            r.shm_received.load(Ordering::Relaxed),
            *self.applied.borrow(),
        ]
        .into_iter()
        .fold(0, u64::wrapping_add)
    }

    /// Stores a put's chunk under `key`. Given `after`, once the center's
    /// commands up to that count are applied: it may have just freed an
    /// earlier chunk of the key, and that free must not drop this one.
    pub(crate) async fn store_put(
        &self,
        key: Key,
        msgs: Vec<FlightData>,
        after: Option<u64>,
    ) -> Result<Stored, Status> {
        let (c, decoded) = codec::decode_one(msgs, key.as_str()).map_err(Status::from)?;
        self.routes.count_flight_in(&decoded);
        let n = chunk::nbytes(&c);
        if let Some(after) = after {
            let mut applied = self.applied.subscribe();
            let caught_up = applied.wait_for(|seq| *seq >= after);
            if tokio::time::timeout(net::ACTION_TIMEOUT, caught_up)
                .await
                .is_err()
            {
                return Err(Status::unavailable(format!(
                    "put '{key}': the center's commands before it did not arrive"
                )));
            }
            // Its earlier chunk's free applied, a chunk held is another's.
            if self.store.contains(&key) {
                return Err(Status::already_exists(format!(
                    "key '{key}' is held here already"
                )));
            }
        }
        self.store.put(key, c);
        Ok(Stored { nbytes: n as u64 })
    }

    /// Where this worker listens.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Its host id.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The store (for tests and status).
    pub fn store(&self) -> &Arc<ChunkStore> {
        &self.store
    }

    async fn peer(&self, address: &str) -> Result<(Channel, Arc<Semaphore>)> {
        if let Some(p) = lock(&self.peers).get(address) {
            return Ok(p.clone());
        }
        let channel = net::channel(address).await?;
        let sem = Arc::new(Semaphore::new(PEER_BUDGET_MB as usize));
        lock(&self.peers).insert(address.to_string(), (channel.clone(), sem.clone()));
        Ok((channel, sem))
    }

    /// Gets a chunk held by a peer: shared memory on the same host, Flight otherwise.
    pub async fn fetch(&self, key: &Key, holders: &[Arc<Holder>], nbytes: u64) -> Result<Chunk> {
        let mut last = None;
        let mut order: Vec<&Holder> = holders.iter().map(|h| &**h).collect();
        order.sort_by_key(|h| h.host_id != self.host_id);
        for h in order {
            let (channel, sem) = match self.peer(&h.address).await {
                Ok(p) => p,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let mb = (nbytes >> 20).clamp(1, PEER_BUDGET_MB as u64) as u32;
            let _permit = sem
                .acquire_many(mb)
                .await
                .map_err(|_| Error::Protocol("peer closed".into()))?;
            if h.host_id == self.host_id && !self.no_shm && nbytes >= SHM_MIN_BYTES {
                match self.fetch_shared(channel.clone(), key, &h.address).await {
                    Ok(chunk) => return Ok(chunk),
                    Err(e) => tracing::debug!(%key, "shared memory failed, using Flight: {e}"),
                }
            }
            match net::get(channel, key.as_str().as_bytes()).await {
                Ok(msgs) => {
                    let (chunk, d) = codec::decode_one(msgs, key.as_str())?;
                    self.routes.count_flight_in(&d);
                    return Ok(chunk);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Protocol(format!("no holder given for '{key}'"))))
    }

    /// Asks a same-host peer to publish `key` and maps it where it lies.
    async fn fetch_shared(&self, channel: Channel, key: &Key, address: &str) -> Result<Chunk> {
        let p: Published = net::action_json(
            &mut net::client(channel),
            "publish",
            &Publish { key: key.clone() },
        )
        .await?;
        let chunk = match (&p.shared, &p.path) {
            (Some(e), _) => shm::import(e)?,
            (None, Some(path)) => ipcfile::map(std::path::Path::new(path))?.chunk,
            (None, None) => {
                return Err(Error::Protocol(format!(
                    "{address} published '{key}' nowhere"
                )));
            }
        };
        self.routes
            .shm_received
            .fetch_add(p.bytes, Ordering::Relaxed);
        Ok(chunk)
    }

    async fn run(self: Arc<Self>, t: RunTask<Arc<Holder>>) {
        self.running.fetch_add(1, Ordering::Relaxed);
        let fetched = match self.fetch_inputs(&t.inputs, true).await {
            Ok(f) => f,
            Err((msg, unreachable)) => {
                self.fail(t.key, msg, t.attempt, unreachable);
                self.running.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        };
        // Looked up by key: a gather over thousands of inputs stays linear.
        self.execute(t, fetched.into_iter().collect());
    }

    /// Hands a task whose inputs are here or in `fetched` to the executor.
    fn execute<H: Send + 'static>(self: Arc<Self>, t: RunTask<H>, fetched: FxHashMap<Key, Chunk>) {
        let this = self.clone();
        self.executor.spawn_kind(!t.inputs.is_empty(), move |ops| {
            let input = |k: &Key| fetched.get(k).cloned().or_else(|| this.store.get(k));
            let start = std::time::Instant::now();
            match evaluate(ops, &t.task, &input) {
                Ok(c) => {
                    let n = chunk::nbytes(&c) as u64;
                    // Read before storing: if the worker joins the center again in
                    // between, its data (this chunk included) is dropped, and so is
                    // this outcome, which names the old id.
                    let stored_as = this.id.load(Ordering::Relaxed);
                    this.store.put(t.key.clone(), c);
                    this.drop_read_last(&t.key, &t.drops);
                    let micros = start.elapsed().as_micros() as u64;
                    this.unreported.fetch_add(1, Ordering::Relaxed);
                    let _ =
                        this.outcomes
                            .send(Outcome::Finished(t.key.clone(), n, micros, stored_as));
                    this.ended(&t.key, true);
                }
                Err(e) => this.fail(t.key, e.to_string(), t.attempt, vec![]),
            }
            // Only now: a retiring worker waits for nothing running and
            // nothing unreported, and the tasks this run woke are running.
            this.running.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Drops the inputs run `key` read last (its [`RunTask::drops`]) now
    /// that it succeeded, before it is reported; not those a later run of
    /// their own key here has called off.
    fn drop_read_last(&self, key: &Key, drops: &[Key]) {
        if drops.is_empty() {
            return;
        }
        let mine: Vec<Key> = {
            let mut local = lock(&self.local);
            let dropped_by = &mut local.dropped_by;
            let mine = drops.iter().filter(|d| dropped_by.get(*d) == Some(key));
            let mine: Vec<Key> = mine.cloned().collect();
            for d in &mine {
                dropped_by.remove(d);
            }
            mine
        };
        self.free(&mine);
        self.dropped_by_last_reader
            .fetch_add(mine.len() as u64, Ordering::Relaxed);
    }

    /// Reports a run that failed, then ends it.
    fn fail(self: &Arc<Self>, key: Key, error: String, attempt: u32, unreachable: Vec<String>) {
        self.unreported.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .outcomes
            .send(Outcome::Failed(key.clone(), error, attempt, unreachable));
        self.ended(&key, false);
    }

    /// Starts the tasks of `run`; none if any names a holder it does not list.
    fn accept(self: &Arc<Self>, run: Run) -> std::result::Result<(), Status> {
        let (holders, tasks) = run.split().map_err(Status::invalid_argument)?;
        {
            let mut local = lock(&self.local);
            for t in &tasks {
                *local.computing.entry(t.key.clone()).or_default() += 1;
                // A fresh run of a key: an older run's drop of it is off.
                local.dropped_by.remove(&t.key);
                for d in &t.drops {
                    local.dropped_by.insert(d.clone(), t.key.clone());
                }
            }
        }
        for t in tasks {
            // Most tasks find every input here: they need no async task to
            // fetch nothing, nor their inputs' holders.
            if let Some(t) = self.run_if_here(t) {
                self.start(crate::protocol::resolve(t, &holders));
            }
        }
        Ok(())
    }

    /// Runs `t` now if every input is here; hands it back otherwise.
    fn run_if_here<H: Send + 'static>(self: &Arc<Self>, t: RunTask<H>) -> Option<RunTask<H>> {
        if !t.inputs.iter().all(|(k, _, _)| self.store.contains(k)) {
            return Some(t);
        }
        self.running.fetch_add(1, Ordering::Relaxed);
        self.clone().execute(t, FxHashMap::default());
        None
    }

    /// Starts a task with inputs not here: parked while one it was sent
    /// ahead of is still being computed here, else run once fetched.
    fn start(self: &Arc<Self>, t: RunTask<Arc<Holder>>) {
        let ahead = |(k, hs, _): &RunInput| hs.is_empty() && !self.store.contains(k);
        if let Some(awaited) = t.inputs.iter().find(|i| ahead(i)).map(|i| i.0.clone()) {
            let mut local = lock(&self.local);
            // Checked again under the lock, which a finishing run takes after storing.
            if !self.store.contains(&awaited) {
                if local.computing.contains_key(&awaited) {
                    local.parked.entry(awaited).or_default().push(t);
                } else {
                    drop(local);
                    let error = format!("input '{awaited}' was not computed here");
                    self.fail(t.key, error, t.attempt, vec![]);
                }
                return;
            }
        }
        if let Some(t) = self.run_if_here(t) {
            self.runtime.spawn(self.clone().run(t));
        }
    }

    /// Ends one run of `key` here: starts the tasks parked on it if it
    /// succeeded, fails them if it failed and was the last run of it here.
    fn ended(self: &Arc<Self>, key: &Key, ok: bool) {
        let parked = {
            let mut local = lock(&self.local);
            let last = match local.computing.get_mut(key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => local.computing.remove(key).is_some(),
            };
            if !ok {
                // A failed run drops nothing: the center frees what it read.
                local.dropped_by.retain(|_, r| r != key);
            }
            if ok || last {
                local.parked.remove(key)
            } else {
                None
            }
        };
        for t in parked.into_iter().flatten() {
            if ok {
                self.start(t);
            } else {
                let error = format!("dependency '{key}' failed");
                self.fail(t.key, error, t.attempt, vec![]);
            }
        }
    }

    /// Gets every input held elsewhere, all at once: small ones in one
    /// exchange per peer, large ones each by the best route. Inputs a task
    /// reads once may be slices of a combined batch (`codec::split`); data to
    /// keep is not, so that each chunk's memory is its own.
    async fn fetch_inputs(
        &self,
        inputs: &[RunInput],
        combine: bool,
    ) -> Result<Vec<(Key, Chunk)>, (String, Vec<String>)> {
        let missing: Vec<&RunInput> = inputs
            .iter()
            .filter(|(k, _, _)| !self.store.contains(k))
            .collect();
        if missing.is_empty() {
            return Ok(vec![]);
        }
        let mut batches: FxHashMap<&str, Vec<&RunInput>> = FxHashMap::default();
        let mut singles = Vec::new();
        for input in missing {
            match input.1.first() {
                Some(h) if input.2 < SHM_MIN_BYTES => {
                    batches.entry(&h.address).or_default().push(input)
                }
                _ => singles.push(input),
            }
        }
        let batched = batches.into_iter().map(|(address, group)| async move {
            let keys: Vec<Key> = group.iter().map(|(k, _, _)| k.clone()).collect();
            match self.fetch_many(address, &keys, combine).await {
                Ok(chunks) => Ok(chunks),
                Err(e) => {
                    // Any holder may do: fall back to one fetch per key over all holders.
                    tracing::debug!(%address, "batched fetch failed, fetching one by one: {e}");
                    let each = group.iter().map(|input| self.fetch_input(input));
                    futures::future::try_join_all(each).await
                }
            }
        });
        let singles = singles
            .into_iter()
            .map(|input| async move { self.fetch_input(input).await.map(|c| vec![c]) });
        let (a, b) = futures::future::join(
            futures::future::try_join_all(batched),
            futures::future::try_join_all(singles),
        )
        .await;
        Ok(a?.into_iter().chain(b?).flatten().collect())
    }

    async fn fetch_input(
        &self,
        (key, holders, nbytes): &RunInput,
    ) -> Result<(Key, Chunk), (String, Vec<String>)> {
        self.fetch(key, holders, *nbytes)
            .await
            .map(|c| (key.clone(), c))
            .map_err(|e| {
                let holders = holders.iter().map(|h| h.address.clone()).collect();
                (format!("could not fetch input '{key}': {e}"), holders)
            })
    }

    /// Gets several small chunks from one peer in one `DoExchange`.
    async fn fetch_many(
        &self,
        address: &str,
        keys: &[Key],
        combine: bool,
    ) -> Result<Vec<(Key, Chunk)>> {
        let (channel, _) = self.peer(address).await?;
        let msgs = net::get_many(&mut net::client(channel), keys, combine).await?;
        let mut d = codec::Decoder::default();
        let mut out = Vec::with_capacity(keys.len());
        for m in msgs {
            let rows = m.app_metadata.clone();
            let Some(batch) = d.push(m)? else { continue };
            for c in codec::split(batch, &rows)? {
                let key = keys.get(out.len()).ok_or_else(|| {
                    Error::Protocol(format!("{address} sent more chunks than asked for"))
                })?;
                out.push((key.clone(), c));
            }
        }
        if out.len() != keys.len() {
            return Err(Error::Protocol(format!(
                "{address} sent {} of {} chunks",
                out.len(),
                keys.len()
            )));
        }
        self.routes.count_flight_in(&d);
        Ok(out)
    }

    fn publish(&self, key: &Key) -> Result<Published> {
        if self.no_shm {
            return Err(Error::Protocol(
                "this worker does not use shared memory (--no-shm)".into(),
            ));
        }
        if let Some(f) = lock(&self.published).get(key) {
            return Ok(Published {
                shared: None,
                path: Some(f.path().display().to_string()),
                bytes: f.len(),
            });
        }
        let c = self
            .store
            .get(key)
            .ok_or_else(|| quiver_engine::Error::KeyNotFound { key: key.clone() })?;
        if let Some(e) = shm::export(&c) {
            let bytes = e.bytes;
            self.routes.shm_sent.fetch_add(bytes, Ordering::Relaxed);
            return Ok(Published {
                shared: Some(e),
                path: None,
                bytes,
            });
        }
        // A spilled chunk already lies in an IPC file the peer can map as it
        // is; anything else is written out once to be mapped.
        let f = match self.store.spill_file(key) {
            Some((f, _)) => f,
            None => {
                let path = self
                    .shm_dir
                    .join(format!("quiver-{}.arrow", uuid::Uuid::new_v4().simple()));
                let f = Arc::new(TempIpcFile::create(path, &c)?);
                self.routes
                    .shm_written
                    .fetch_add(f.len(), Ordering::Relaxed);
                f
            }
        };
        self.routes.shm_sent.fetch_add(f.len(), Ordering::Relaxed);
        let p = Published {
            shared: None,
            path: Some(f.path().display().to_string()),
            bytes: f.len(),
        };
        lock(&self.published).insert(key.clone(), f);
        Ok(p)
    }

    /// Drops `keys` from the store and withdraws their shared-memory publications.
    pub fn free(&self, keys: &[Key]) {
        let mut published = lock(&self.published);
        for k in keys {
            self.store.remove(k);
            published.remove(k);
        }
    }
}

impl crate::direct::Calls for WorkerCore {
    const PUT_BODIES: crate::direct::Bodies = crate::direct::Bodies::Aligned;

    /// Bodies uncopied: a chunk in memory sends its own buffers, a spilled
    /// one slices of its mapped file; sent bytes are counted.
    async fn get(
        self: Arc<Self>,
        key: Key,
        _: tonic::codegen::http::HeaderMap,
    ) -> std::result::Result<tonic::codegen::http::Response<tonic::body::Body>, Status> {
        let (c, file) = self
            .store
            .get_with_file(&key)
            .ok_or_else(|| Status::not_found(format!("key '{key}' not held here")))?;
        let msgs = codec::encode_messages(&c, file.as_ref()).map_err(Status::from)?;
        let sent: usize = msgs.iter().map(codec::Message::body_len).sum();
        self.routes
            .flight_sent
            .fetch_add(sent as u64, Ordering::Relaxed);
        crate::direct::answer(msgs)
    }

    async fn put(
        self: Arc<Self>,
        headers: tonic::codegen::http::HeaderMap,
        msgs: impl Future<Output = std::result::Result<Vec<codec::Message>, Status>> + Send,
    ) -> std::result::Result<bytes::Bytes, Status> {
        let after = after_of(headers.get(AFTER_HEADER).map(|v| v.as_bytes()))?;
        let mut msgs = msgs.await?;
        let (key, _) = crate::service::put_key(&mut msgs)?;
        let msgs = msgs.into_iter().map(codec::Message::into_flight_data);
        let stored = self.store_put(key, msgs.collect(), after).await?;
        Ok(serde_json::to_vec(&stored).unwrap_or_default().into())
    }
}

/// A worker's Flight service.
#[derive(Clone)]
pub struct WorkerService(pub Arc<WorkerCore>);

#[tonic::async_trait]
impl FlightService for WorkerService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Ok(crate::service::handshake())
    }

    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let core = &self.0;
        let infos: Vec<Result<FlightInfo, Status>> = core
            .store
            .keys()
            .into_iter()
            .filter_map(|k| {
                core.store
                    .get(&k)
                    .map(|c| flight_info(&k, &c, std::slice::from_ref(&core.address)))
            })
            .collect();
        Ok(Response::new(Box::pin(stream::iter(infos))))
    }

    async fn get_flight_info(
        &self,
        req: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let key = descriptor_key(req.get_ref())?;
        let c = self
            .0
            .store
            .get(&key)
            .ok_or_else(|| Status::not_found(format!("key '{key}' not held here")))?;
        Ok(Response::new(flight_info(
            &key,
            &c,
            std::slice::from_ref(&self.0.address),
        )?))
    }

    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "poll_flight_info: use get_flight_info",
        ))
    }

    async fn get_schema(
        &self,
        req: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let key = descriptor_key(req.get_ref())?;
        let c = self
            .0
            .store
            .get(&key)
            .ok_or_else(|| Status::not_found(format!("key '{key}' not held here")))?;
        let opts = arrow::ipc::writer::IpcWriteOptions::default();
        let r = SchemaResult::try_from(arrow_flight::SchemaAsIpc::new(c.schema_ref(), &opts))
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(r))
    }

    async fn do_get(&self, _: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        Err(crate::direct::answered_beneath("DoGet"))
    }

    async fn do_put(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(crate::direct::answered_beneath("DoPut"))
    }

    /// Several chunks in one stream (peers batch small inputs): the first
    /// message's PATH descriptor names the keys; each chunk follows in order,
    /// its schema message only when the schema differs from the previous one.
    async fn do_exchange(
        &self,
        req: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let mut incoming = req.into_inner();
        let first = incoming
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty DoExchange"))?;
        let combine = first.app_metadata == COMBINE.as_bytes();
        let keys = match first.flight_descriptor {
            Some(d) if !d.path.is_empty() => d.path,
            Some(d) if d.cmd == COMMANDS.as_bytes() => {
                let first = first.app_metadata;
                return Ok(Response::new(commands(self.0.clone(), first, incoming)));
            }
            _ => {
                return Err(Status::invalid_argument(format!(
                    "DoExchange needs a PATH descriptor listing the keys to get, \
                     or the CMD descriptor '{COMMANDS}'"
                )));
            }
        };
        let chunks = keys
            .into_iter()
            .map(|k| {
                let key = Key::new(&k).ok_or_else(|| Status::invalid_argument("an empty key"))?;
                self.0
                    .store
                    .get_with_file(&key)
                    .ok_or_else(|| Status::not_found(format!("key '{key}' not held here")))
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let msgs = codec::encode_chunks(&chunks, combine).map_err(Status::from)?;
        let sent: usize = msgs.iter().map(codec::Message::body_len).sum();
        self.0
            .routes
            .flight_sent
            .fetch_add(sent as u64, Ordering::Relaxed);
        let out = msgs.into_iter().map(|m| Ok(m.into_flight_data()));
        Ok(Response::new(Box::pin(stream::iter(out))))
    }

    async fn do_action(
        &self,
        req: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let Action { r#type, body } = req.into_inner();
        let core = &self.0;
        match r#type.as_str() {
            "run" => {
                core.accept(parse(&r#type, &body)?)?;
                json_result(&serde_json::json!({}))
            }
            "free" => {
                let free: Free = parse(&r#type, &body)?;
                core.free(&free.keys);
                json_result(&serde_json::json!({}))
            }
            "publish" => {
                let p: Publish = parse(&r#type, &body)?;
                // Writing a large chunk to tmpfs is blocking work: keep it off the IO threads.
                let c = core.clone();
                let published = tokio::task::spawn_blocking(move || c.publish(&p.key))
                    .await
                    .map_err(|e| Status::internal(format!("publish task: {e}")))?;
                let published = published.map_err(|e| match e {
                    Error::Engine(quiver_engine::Error::KeyNotFound { .. }) => {
                        Status::not_found(e.to_string())
                    }
                    Error::Protocol(_) => Status::failed_precondition(e.to_string()),
                    other => Status::from(other),
                })?;
                json_result(&published)
            }
            "status" => json_result(&core.status()),
            "retire" => {
                core.retire_requested.notify_one();
                json_result(&serde_json::json!({}))
            }
            "gather" => {
                let start = std::time::Instant::now();
                let g: Gather = parse(&r#type, &body)?;
                let fetched = core
                    .fetch_inputs(&g.inputs, false)
                    .await
                    .map_err(|(msg, _)| Status::unavailable(msg))?;
                let stored = fetched
                    .into_iter()
                    .map(|(k, c)| {
                        let n = chunk::nbytes(&c) as u64;
                        core.store.put(k.clone(), c);
                        (k, n)
                    })
                    .collect();
                json_result(&Gathered {
                    stored,
                    seconds: start.elapsed().as_secs_f64(),
                })
            }
            other => Err(Status::invalid_argument(format!(
                "unknown action '{other}'; the worker's actions are: {}",
                WORKER_ACTIONS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = WORKER_ACTIONS.iter().map(|(n, d)| {
            Ok(ActionType {
                r#type: n.to_string(),
                description: d.to_string(),
            })
        });
        Ok(Response::new(Box::pin(stream::iter(actions))))
    }
}

/// Carries out the center's `commands` exchange, in order. The reply stream
/// never yields: it ends when this worker stops (so the center sees a worker
/// end the moment its connection closes), or with the error of a command
/// this worker could not take.
fn commands(
    core: Arc<WorkerCore>,
    first: bytes::Bytes,
    mut incoming: Streaming<FlightData>,
) -> BoxStream<FlightData> {
    static EXCHANGES: AtomicU64 = AtomicU64::new(0);
    let exchange = EXCHANGES.fetch_add(1, Ordering::Relaxed);
    let (refused, refusal) = tokio::sync::oneshot::channel::<Status>();
    let (mut stop, mut stopped) = (core.stop.clone(), core.stop.clone());
    let (reports, outgoing) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut next = Some(first);
        loop {
            let body = match next.take() {
                Some(b) => b,
                // A stopped worker lets go of its core even if the center keeps sending.
                None => tokio::select! {
                    m = incoming.message() => match m {
                        Ok(Some(m)) => m.app_metadata,
                        _ => break,
                    },
                    _ = stopped.wait_for(|s| *s) => break,
                },
            };
            if body.is_empty() {
                continue;
            }
            let taken = serde_json::from_slice::<Commands>(&body)
                .map_err(|e| Status::invalid_argument(format!("bad commands message: {e}")))
                .and_then(|c| {
                    // The exchange that sends commands gets the reports, from
                    // before the first task starts; garbage claims nothing.
                    let mut slot = lock(&core.reports);
                    if slot.as_ref().is_none_or(|(id, _)| *id != exchange) {
                        *slot = Some((exchange, reports.clone()));
                    }
                    drop(slot);
                    core.free(&c.free);
                    let accepted = c.run.map_or(Ok(()), |run| core.accept(run));
                    core.applied.send_replace(c.seq);
                    accepted
                });
            if let Err(status) = taken {
                tracing::warn!("refused a commands message: {}", status.message());
                let _ = refused.send(status);
                break;
            }
        }
        let mut slot = lock(&core.reports);
        if slot.as_ref().is_some_and(|(id, _)| *id == exchange) {
            *slot = None;
        }
    });
    // The exchange ends when the worker stops, when it refuses a message (with
    // that error), or when the center ends its side.
    let end: futures::future::BoxFuture<'static, Option<Status>> = Box::pin(async move {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => None,
            r = refusal => r.ok(),
        }
    });
    // Reports go back on this exchange until it ends.
    Box::pin(stream::unfold(
        (outgoing, Some(end)),
        |(mut outgoing, end)| async move {
            let mut end = end?;
            let status = tokio::select! {
                biased;
                r = &mut end => r,
                m = outgoing.recv() => match m {
                    Some(m) => return Some((Ok(m), (outgoing, Some(end)))),
                    // Every sender gone: the loop above is over, and so is `end`.
                    None => end.await,
                },
            };
            status.map(|s| (Err(s), (outgoing, None)))
        },
    ))
}

/// How long a report may wait for more outcomes while the worker has queued work.
const REPORT_COALESCE: Duration = Duration::from_millis(3);
/// Outcomes after which a report goes out without waiting.
const REPORT_BATCH: usize = 4;

/// Sends finished and failed tasks to the center in batches.
async fn report_loop(
    core: Arc<WorkerCore>,
    center: FlightClient,
    nthreads: usize,
    mut rx: mpsc::UnboundedReceiver<Outcome>,
) {
    let mut center = center;
    while let Some(first) = rx.recv().await {
        let mut report = Report {
            worker: core.id.load(Ordering::Relaxed),
            address: core.address.clone(),
            ..Default::default()
        };
        let mut add = |o: Outcome| match o {
            // Stored before the worker joined again: the chunk was dropped then.
            Outcome::Finished(_, _, _, stored_as) if stored_as != report.worker => {}
            Outcome::Finished(key, nbytes, micros, _) => report.finished.push(Finished {
                key,
                nbytes,
                micros,
            }),
            Outcome::Failed(key, error, attempt, unreachable) => report.failed.push(Failed {
                key,
                error,
                attempt,
                unreachable,
            }),
        };
        add(first);
        let mut n = 1;
        while let Ok(o) = rx.try_recv() {
            add(o);
            n += 1;
        }
        // A worker with tasks queued beyond its threads stays busy while the
        // report waits a moment for more outcomes: fewer round trips, no idling.
        let deadline = tokio::time::Instant::now() + REPORT_COALESCE;
        while n < REPORT_BATCH && core.running.load(Ordering::Relaxed) > nthreads {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(o)) => {
                    add(o);
                    n += 1;
                }
                _ => break,
            }
        }
        deliver(&core, &mut center, &report).await;
        core.unreported.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Sends one report: on the open `commands` exchange when there is one (a
/// message costs far less than a call), else as a `report` call, retried.
async fn deliver(core: &WorkerCore, center: &mut FlightClient, report: &Report) {
    let body = match serde_json::to_vec(report) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("cannot encode a report: {e}");
            return;
        }
    };
    // The exchange's center removes this worker if the exchange breaks, so a
    // report lost with it is moot.
    let message = FlightData {
        app_metadata: body.into(),
        ..FlightData::default()
    };
    let unsent = match lock(&core.reports).as_ref() {
        Some((_, tx)) => tx.send(message).err().map(|e| e.0),
        None => Some(message),
    };
    let Some(unsent) = unsent else {
        return;
    };
    let body = unsent.app_metadata.to_vec();
    // No exchange (tasks sent by `run` calls): a lost report would leave the
    // center waiting forever.
    for attempt in 0.. {
        match net::action(center, "report", body.clone()).await {
            Ok(_) => return,
            // A restarted center: the outcomes are moot, the heartbeat joins it again.
            Err(Error::Remote { status, .. }) if status.code() == tonic::Code::NotFound => {
                return;
            }
            Err(e) if attempt < 20 => {
                tracing::warn!("report to the center failed (retrying): {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                tracing::error!("dropping a report after 20 failures: {e}");
                return;
            }
        }
    }
}

/// `fraction` of `limit` bytes.
fn fraction_of(limit: u64, fraction: f64) -> usize {
    usize::try_from((limit as f64 * fraction.clamp(0.0, 1.0)) as u64).unwrap_or(usize::MAX)
}

/// Watches the process's anonymous RSS: above `pause_at` new tasks wait (one runs at a
/// time) and the store spills down to `spill_to`; below, they run again. RSS
/// counts what the store does not see (task temporaries, allocator slack).
async fn memory_monitor(core: Arc<WorkerCore>, pause_at: usize, spill_to: usize) {
    let mut paused = false;
    let mut idle = IdleTrim::new(memory::KEEP_FREED);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut rss = anon_rss() as usize;
        idle.tick(core.work(), rss as u64);
        if rss > pause_at {
            // Memory freed and kept for reuse is no pressure.
            trim_allocator();
            rss = anon_rss() as usize;
        }
        let over = rss > pause_at;
        if over {
            let store = core.store.clone();
            let excess = rss - spill_to.min(rss);
            let target = (store.stats().memory_bytes as usize).saturating_sub(excess);
            let _ = tokio::task::spawn_blocking(move || store.spill_down_to(target)).await;
        }
        if over != paused {
            paused = over;
            core.executor.set_paused(paused);
            tracing::info!(
                rss,
                limit = pause_at,
                "{}",
                if paused {
                    "memory pressure: pausing new tasks"
                } else {
                    "memory back under the limit: resuming"
                }
            );
        }
    }
}

/// Leaves the cluster without losing data: no new tasks, the running ones
/// finish and are reported, then the center copies whatever only this worker
/// holds to peers (which fetch it from here) before it is removed.
async fn retire(core: &Arc<WorkerCore>, center: &mut FlightClient) {
    let worker = core.id.load(Ordering::Relaxed);
    let phase = |phase: &str| Retire {
        worker,
        phase: phase.to_string(),
    };
    if let Err(e) = net::action_json::<serde_json::Value>(center, "retire", &phase("drain")).await {
        tracing::warn!("cannot retire through the center ({e}); leaving");
        return;
    }
    let start = tokio::time::Instant::now();
    while (core.running.load(Ordering::Relaxed) > 0 || core.unreported.load(Ordering::Relaxed) > 0)
        && start.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match net::action_json::<Retired>(center, "retire", &phase("hand-over")).await {
        Ok(r) => tracing::info!(
            moved = r.moved,
            bytes = r.bytes,
            "retired: data handed to peers"
        ),
        Err(e) => tracing::warn!("hand-over failed: {e}"),
    }
}

/// Registers with the center; returns this worker's id.
async fn register(center: &mut FlightClient, reg: &Register) -> Result<u32> {
    let registered: Registered = net::action_json(center, "register", reg).await?;
    if registered.protocol_version != PROTOCOL_VERSION {
        return Err(Error::Protocol(format!(
            "the center speaks protocol version {}, this worker speaks {PROTOCOL_VERSION}",
            registered.protocol_version
        )));
    }
    Ok(registered.worker)
}

/// Connects to the center, retrying for up to `patience`; an address that is
/// not `host:port` fails at once, as no retry can mend it.
async fn connect_center(center: &str, patience: Duration) -> Result<FlightClient> {
    net::check_address(center)?;
    let start = tokio::time::Instant::now();
    loop {
        match net::connect(center).await {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() >= patience => {
                let why = match e {
                    Error::Connect { reason, .. } => reason,
                    other => other.to_string(),
                };
                return Err(Error::Connect {
                    address: center.to_string(),
                    reason: format!("no center answered for {patience:?} ({why})"),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Runs a worker until `shutdown` resolves or the center goes away for good.
/// `ready` gets the worker's core once it has registered (tests and benches use it).
pub async fn run(
    config: WorkerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
    ready: impl FnOnce(Arc<WorkerCore>),
) -> Result<()> {
    let (incoming, local) = net::bind(&config.host, config.port).await?;
    let address = local.to_string();
    let mut center = connect_center(&config.center, config.center_patience).await?;
    let probed = net::probe_center(&mut center, &config.center).await?;
    if probed.protocol_version != PROTOCOL_VERSION {
        return Err(Error::Protocol(format!(
            "the center at {} speaks protocol version {}, this worker speaks {PROTOCOL_VERSION}",
            config.center, probed.protocol_version
        )));
    }
    let host_id = config.host_id.clone().unwrap_or_else(default_host_id);
    if !config.no_shm {
        // Takes effect where the binary installed `shm::SharedAlloc`.
        shm::enable();
    }
    let reg = Register {
        protocol_version: PROTOCOL_VERSION,
        name: config.name.clone(),
        address: address.clone(),
        host_id: host_id.clone(),
        nthreads: config.nthreads.max(1),
        memory_limit: config.memory_limit,
        ops: config.ops.names().into_iter().map(String::from).collect(),
    };
    let worker = register(&mut center, &reg).await?;
    tracing::info!(worker, %address, center = %config.center, "worker registered");
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let shm_base = shared_memory_dir();
    // Absolute, as a same-host peer maps spill files by their path.
    let spill_base =
        std::path::absolute(&config.spill_dir).unwrap_or_else(|_| config.spill_dir.clone());
    // Named for people (worker id, pid) and unique (workers of one process,
    // as in tests, may share an id and a base directory).
    let name = format!(
        "worker-{worker}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let spill = owned::claim(&spill_base, "worker-", &name);
    let shared = owned::claim(&shm_base, SHARED_PREFIX, &format!("quiver-{name}"));
    // Without a directory of its own, a worker still spills (each spill says
    // why it failed) and shares (straight in the shared-memory directory).
    let spill_dir = spill
        .as_ref()
        .map_or_else(|| spill_base.join(&name), |d| d.path().to_path_buf());
    let shm_dir = shared.as_ref().map_or(shm_base, |d| d.path().to_path_buf());
    let core = Arc::new(WorkerCore {
        id: AtomicU32::new(worker),
        address: address.clone(),
        host_id,
        no_shm: config.no_shm,
        store: Arc::new(ChunkStore::new(StoreConfig {
            memory_limit: fraction_of(config.memory_limit, config.spill_fraction),
            spill_dir,
        })),
        executor: Executor::new(&config.name, config.nthreads, config.ops.clone())?,
        outcomes: tx,
        routes: Routes::default(),
        running: AtomicUsize::new(0),
        dropped_by_last_reader: AtomicU64::new(0),
        peers: Mutex::default(),
        published: Mutex::default(),
        shm_dir,
        stop: stop_rx.clone(),
        unreported: AtomicUsize::new(0),
        reports: Mutex::new(None),
        applied: tokio::sync::watch::Sender::new(0),
        retire_requested: tokio::sync::Notify::new(),
        local: Mutex::default(),
        runtime: tokio::runtime::Handle::current(),
    });
    tokio::spawn(report_loop(
        core.clone(),
        center.clone(),
        config.nthreads,
        rx,
    ));
    ready(core.clone());
    tokio::spawn(memory_monitor(
        core.clone(),
        fraction_of(config.memory_limit, config.pause_fraction),
        fraction_of(config.memory_limit, config.spill_fraction),
    ));
    let heartbeat = {
        let (core, mut center, center_addr) = (core.clone(), center.clone(), config.center.clone());
        let (interval, patience) = (config.heartbeat_interval, config.center_patience);
        async move {
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(interval).await;
                let beat = net::action(
                    &mut center,
                    "heartbeat",
                    serde_json::to_vec(&core.status()).unwrap_or_default(),
                )
                .await;
                match beat {
                    Ok(_) => last_ok = tokio::time::Instant::now(),
                    Err(Error::Remote { status, .. }) if status.code() == tonic::Code::NotFound => {
                        // A restarted center knows nothing of this worker or its
                        // data: drop the data and join again.
                        let keys = core.store.keys();
                        tracing::warn!(
                            "the center at {center_addr} does not know this worker (restarted?): \
                             registering again, dropping {} keys",
                            keys.len()
                        );
                        core.free(&keys);
                        match register(&mut center, &reg).await {
                            Ok(id) => {
                                core.id.store(id, Ordering::Relaxed);
                                last_ok = tokio::time::Instant::now();
                                tracing::info!(worker = id, center = %center_addr, "worker registered again");
                            }
                            Err(e) => {
                                // A center restarted from another program or version
                                // refuses for good: retrying would not mend it.
                                let refused =
                                    |s: &Status| s.code() == tonic::Code::FailedPrecondition;
                                if matches!(&e, Error::Remote { status, .. } if refused(status)) {
                                    return Err(e);
                                }
                                tracing::warn!("registering again failed: {e}");
                            }
                        }
                    }
                    Err(e) => {
                        let silent = last_ok.elapsed();
                        tracing::warn!(
                            "heartbeat to {center_addr} failed ({silent:.1?} without an answer): {e}"
                        );
                        if silent >= patience {
                            return Err(Error::Connect {
                                address: center_addr,
                                reason: format!(
                                    "the center stopped answering for {patience:?}; the worker exits"
                                ),
                            });
                        }
                    }
                }
            }
        }
    };
    let server = net::server()?
        .add_service(crate::direct::Direct::new(
            net::service(WorkerService(core.clone())),
            core.clone(),
        ))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_rx.changed().await;
        });
    // The server runs on its own so it keeps serving peers during a retirement.
    let mut server = tokio::spawn(server);
    let result = tokio::select! {
        r = &mut server => match r {
            Ok(r) => r.map_err(|e| Error::Io { context: "worker server".into(), source: std::io::Error::other(e) }),
            Err(e) => Err(Error::Io { context: "worker server".into(), source: std::io::Error::other(e) }),
        },
        r = heartbeat => r,
        () = async {
            tokio::select! {
                () = shutdown => {}
                () = core.retire_requested.notified() => {}
            }
        } => {
            retire(&core, &mut center).await;
            Ok(())
        }
    };
    let _ = stop_tx.send(true);
    let keys = core.store.keys();
    core.free(&keys);
    let _ = std::fs::remove_dir_all(core.store.config().spill_dir.clone());
    drop((spill, shared));
    result
}
