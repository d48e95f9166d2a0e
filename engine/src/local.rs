//! The embedded cluster: in-process workers, each with its own chunk store and
//! thread pool, driven by the same scheduler state machine as the networked center.
//!
//! There is no driver thread: whoever has news (a worker thread that finished a
//! task, a client that submits) locks the scheduler, feeds it the event and
//! carries out the commands. A task made ready by its input's completion is
//! queued on that worker before its thread looks for more work, so chains run
//! depth first with their data still in cache. A worker reads inputs held by
//! another in-process worker straight from that worker's store: an `Arc`
//! clone, never a copy.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use serde_json::{Map, Value as Json};

use crate::chunk::{self, Chunk};
use crate::client::{Backend, Client};
use crate::error::{Error, Result};
use crate::executor::{Executor, evaluate};
use crate::graph::Submission;
use crate::key::Key;
use crate::ops::{OpRegistry, Signature, Value};
use crate::scheduler::{
    ClientId, Command, Event, Scheduler, SchedulerConfig, WorkerId, WorkerInfo,
};
use crate::store::{ChunkStore, OwnedDir, StoreConfig, StoreStats, owned};

/// The name of an embedded cluster's spill directory starts with this.
const SPILL_PREFIX: &str = "quiver-embedded-";

/// One in-process worker.
struct LocalWorker {
    store: Arc<ChunkStore>,
    executor: Executor,
}

type Reply<T> = Sender<Result<T>>;

/// Builds an embedded cluster.
pub struct ClusterBuilder {
    workers: usize,
    threads: usize,
    memory_limit: usize,
    spill_dir: Option<PathBuf>,
    ops: OpRegistry,
}

impl ClusterBuilder {
    /// Number of workers (default 4).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Threads per worker (default 1).
    pub fn threads_per_worker(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// Memory limit per worker in bytes, beyond which chunks spill (default: none).
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Where workers spill: a directory of the cluster's own is made inside
    /// `dir` (default: the system temp dir) and removed with the cluster;
    /// nothing else in `dir` is touched.
    pub fn spill_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spill_dir = Some(dir.into());
        self
    }

    /// Registers a user op: a closure from resolved arguments and keywords to a chunk.
    pub fn op<F>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(&[Value], &Map<String, Json>) -> Result<Chunk> + Send + Sync + 'static,
    {
        self.ops.register(name, Signature::any(), f);
        self
    }

    /// Registers a user op with a signature checked at submission.
    pub fn op_with_signature<F>(mut self, name: &str, signature: Signature, f: F) -> Self
    where
        F: Fn(&[Value], &Map<String, Json>) -> Result<Chunk> + Send + Sync + 'static,
    {
        self.ops.register(name, signature, f);
        self
    }

    /// Starts the workers and the driver.
    pub fn build(self) -> Result<Cluster> {
        let ops = Arc::new(self.ops);
        // Its own directory inside the given one: what else lies there is
        // not the cluster's to remove.
        let parent = self.spill_dir.unwrap_or_else(std::env::temp_dir);
        let name = format!(
            "{SPILL_PREFIX}{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let spill_root = owned::claim(&parent, SPILL_PREFIX, &name);
        let base = parent.join(&name);
        let workers: Vec<Arc<LocalWorker>> = (0..self.workers)
            .map(|i| {
                let store = ChunkStore::new(StoreConfig {
                    memory_limit: self.memory_limit,
                    spill_dir: base.join(format!("worker-{i}")),
                });
                Ok(Arc::new(LocalWorker {
                    store: Arc::new(store),
                    executor: Executor::new(&format!("worker-{i}"), self.threads, ops.clone())?,
                }))
            })
            .collect::<Result<_>>()?;
        let config = SchedulerConfig {
            heartbeat_timeout: Duration::MAX,
            ..Default::default()
        };
        let mut scheduler = Scheduler::new(config, ops);
        let mut out = Vec::new();
        for (i, _) in workers.iter().enumerate() {
            let info = WorkerInfo {
                name: format!("worker-{i}"),
                nthreads: self.threads,
                memory_limit: self.memory_limit as u64,
                host_id: "local".into(),
                address: String::new(),
            };
            scheduler.handle(
                Event::AddWorker {
                    worker: i as WorkerId,
                    info,
                },
                Instant::now(),
                &mut out,
            )?;
        }
        let inner = Arc::new(Embedded {
            state: Mutex::new(DriverState {
                scheduler,
                waiters: FxHashMap::default(),
            }),
            workers,
            finished: AtomicU64::new(0),
            next_client: AtomicU64::new(1),
            _spill_root: spill_root,
        });
        Ok(Cluster { inner })
    }
}

/// An embedded cluster: the default when no center address is given.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Embedded>,
}

impl Cluster {
    /// A cluster of `workers` in-process workers with one thread each.
    pub fn local(workers: usize) -> Result<Cluster> {
        Cluster::builder().workers(workers).build()
    }

    /// A builder for other settings (threads, memory limit, spill dir, user ops).
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            workers: 4,
            threads: 1,
            memory_limit: usize::MAX,
            spill_dir: None,
            ops: OpRegistry::builtin(),
        }
    }

    /// A new client of this cluster.
    pub fn client(&self) -> Client {
        let id = self.inner.next_client.fetch_add(1, Ordering::Relaxed);
        Client::new(Arc::new(EmbeddedBackend(self.inner.clone())), id)
    }

    /// Store figures of each worker.
    pub fn worker_stats(&self) -> Vec<StoreStats> {
        self.inner.workers.iter().map(|w| w.store.stats()).collect()
    }

    /// The store of worker `i` (for inspection and tests).
    pub fn store(&self, i: usize) -> Option<Arc<ChunkStore>> {
        self.inner.workers.get(i).map(|w| w.store.clone())
    }
}

/// The scheduler and who waits on which key, behind one lock.
struct DriverState {
    scheduler: Scheduler,
    waiters: FxHashMap<Key, Vec<Reply<WorkerId>>>,
}

impl DriverState {
    /// Answers those waiting for a key now in memory, failed, or that will
    /// not come: released by every client that held it, or an intermediate
    /// freed once nothing needs it. Runs after every event, so the common
    /// case (the key still in the making) allocates nothing.
    fn settle_waiters(&mut self) {
        let settled: Vec<Key> = (self.waiters.keys())
            .filter(|key| self.scheduler.settled(key).is_some())
            .cloned()
            .collect();
        for key in settled {
            for r in self.waiters.remove(&key).unwrap_or_default() {
                let outcome = self.scheduler.settled(&key).expect("settled above");
                let _ = r.send(outcome.map(|ws| ws[0]));
            }
        }
    }
}

/// The shared half of an embedded cluster: what clients and workers talk to.
struct Embedded {
    state: Mutex<DriverState>,
    workers: Vec<Arc<LocalWorker>>,
    finished: AtomicU64,
    next_client: AtomicU64,
    /// Removed when the cluster goes, after its chunks (`None` if it could
    /// not be made: spills then fail and say so).
    _spill_root: Option<OwnedDir>,
}

impl Embedded {
    fn lock(&self) -> MutexGuard<'_, DriverState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds `event` to the scheduler and carries out what it commands.
    fn handle(self: &Arc<Self>, event: Event) -> Result<()> {
        let mut st = self.lock();
        let mut out = Vec::new();
        let r = st.scheduler.handle(event, Instant::now(), &mut out);
        for c in out {
            self.carry_out(c);
        }
        st.settle_waiters();
        r
    }

    fn carry_out(self: &Arc<Self>, c: Command) {
        match c {
            Command::Run {
                worker,
                key,
                task,
                inputs,
                attempt,
                ..
            } => {
                // Looked up by key: a gather over thousands of inputs stays linear.
                let stores: FxHashMap<Key, Arc<ChunkStore>> = inputs
                    .into_iter()
                    .filter_map(|i| {
                        let w = i
                            .holders
                            .iter()
                            .find(|w| self.workers[**w as usize].store.contains(&i.key))?;
                        Some((i.key, self.workers[*w as usize].store.clone()))
                    })
                    .collect();
                let this = self.clone();
                let consumer = !stores.is_empty();
                self.workers[worker as usize]
                    .executor
                    .spawn_kind(consumer, move |ops| {
                        let input = |k: &Key| stores.get(k).and_then(|s| s.get(k));
                        let event = match evaluate(ops, &task, &input) {
                            Ok(chunk) => {
                                let nbytes = chunk::nbytes(&chunk) as u64;
                                this.workers[worker as usize].store.put(key.clone(), chunk);
                                Event::TaskFinished {
                                    worker,
                                    key,
                                    nbytes,
                                }
                            }
                            Err(e) => Event::TaskFailed {
                                worker,
                                key,
                                error: e.to_string(),
                                attempt,
                            },
                        };
                        drop(stores);
                        this.finished.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = this.handle(event) {
                            tracing::error!("scheduler refused a worker event: {e}");
                        }
                    });
            }
            Command::Free { worker, key } => {
                self.workers[worker as usize].store.remove(&key);
            }
            // Answered after the event, with every other waiter (`settle_waiters`).
            Command::Done { .. } | Command::Failed { .. } => {}
        }
    }

    /// A channel that yields the worker holding `key` once it is in memory.
    fn watch(&self, key: &Key) -> std::sync::mpsc::Receiver<Result<WorkerId>> {
        let (tx, rx) = channel();
        let mut st = self.lock();
        let _ = match st.scheduler.settled(key) {
            Some(outcome) => tx.send(outcome.map(|ws| ws[0])),
            None => {
                st.waiters.entry(key.clone()).or_default().push(tx);
                Ok(())
            }
        };
        rx
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        for w in &self.workers {
            for k in w.store.keys() {
                w.store.remove(&k);
            }
        }
    }
}

/// The embedded cluster's [`Backend`]; an `Arc` so worker threads can feed it events.
struct EmbeddedBackend(Arc<Embedded>);

impl Backend for EmbeddedBackend {
    fn submit(&self, client: ClientId, submission: Submission) -> Result<()> {
        self.0.handle(Event::Submit { client, submission })
    }

    fn wait(&self, key: &Key, timeout: Option<Duration>) -> Result<()> {
        let rx = self.0.watch(key);
        let gone = || Error::Unavailable("the embedded cluster has stopped".into());
        match timeout {
            None => rx.recv().map_err(|_| gone())?.map(drop),
            Some(t) => match rx.recv_timeout(t) {
                Ok(r) => r.map(drop),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(Error::Timeout {
                    key: key.clone(),
                    seconds: t.as_secs_f64(),
                }),
                Err(_) => Err(gone()),
            },
        }
    }

    fn fetch(&self, key: &Key) -> Result<Chunk> {
        let worker = self
            .0
            .watch(key)
            .recv()
            .map_err(|_| Error::Unavailable("the embedded cluster has stopped".into()))??;
        self.0.workers[worker as usize]
            .store
            .get(key)
            .ok_or_else(|| Error::KeyNotFound { key: key.clone() })
    }

    fn scatter(&self, client: ClientId, key: Key, chunk: Chunk) -> Result<()> {
        let nbytes = chunk::nbytes(&chunk) as u64;
        let worker = self.0.lock().scheduler.reserve(&key, nbytes)?;
        let store = &self.0.workers[worker as usize].store;
        if store.contains(&key) {
            self.0.lock().scheduler.unreserve(&key);
            return Err(Error::invalid(&key, "key already exists; release it first"));
        }
        store.put(key.clone(), chunk);
        let r = self.0.handle(Event::Scatter {
            client,
            key: key.clone(),
            worker,
            nbytes,
        });
        if r.is_err() {
            store.remove(&key);
        }
        r
    }

    fn release(&self, client: ClientId, keys: Vec<Key>) {
        let _ = self.0.handle(Event::Release { client, keys });
    }

    fn client_gone(&self, client: ClientId) {
        let _ = self.0.handle(Event::ClientGone { client });
    }

    fn tasks_finished(&self) -> u64 {
        self.0.finished.load(Ordering::Relaxed)
    }
}
