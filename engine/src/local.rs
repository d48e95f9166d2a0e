//! The embedded cluster: in-process workers, each with its own chunk store and
//! thread pool, driven by the same scheduler state machine as the networked center.
//!
//! One driver thread owns the [`Scheduler`]; workers and clients talk to it over
//! a channel. A worker reads inputs held by another in-process worker straight
//! from that worker's store: an `Arc` clone, never a copy.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
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
    ClientId, Command, Event, KeyStatus, Scheduler, SchedulerConfig, WorkerId, WorkerInfo,
};
use crate::store::{ChunkStore, StoreConfig, StoreStats};

/// One in-process worker.
struct LocalWorker {
    store: Arc<ChunkStore>,
    executor: Executor,
}

type Reply<T> = Sender<Result<T>>;

enum Msg {
    Event(Event),
    Submit(ClientId, Submission, Reply<()>),
    Scatter(ClientId, Key, Chunk, Reply<()>),
    Wait(Key, Reply<WorkerId>),
    Stop,
}

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

    /// Where workers spill (default: a directory under the system temp dir).
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
        let base = self.spill_dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "quiver-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4()
            ))
        });
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
        let (tx, rx) = channel();
        let finished = Arc::new(AtomicU64::new(0));
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
        let driver = Driver {
            scheduler,
            workers: workers.clone(),
            tx: tx.clone(),
            waiters: FxHashMap::default(),
            finished: finished.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("quiver-driver".into())
            .spawn(move || driver.run(rx))
            .map_err(|e| Error::Unavailable(format!("cannot start the driver thread: {e}")))?;
        let inner = Arc::new(Embedded {
            tx: Mutex::new(tx),
            workers,
            finished,
            next_client: AtomicU64::new(1),
            thread: Mutex::new(Some(thread)),
            spill_base: base,
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
        Client::new(self.inner.clone(), id)
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

/// The shared half of an embedded cluster: what clients talk to.
struct Embedded {
    tx: Mutex<Sender<Msg>>,
    workers: Vec<Arc<LocalWorker>>,
    finished: Arc<AtomicU64>,
    next_client: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
    spill_base: PathBuf,
}

impl Embedded {
    fn send(&self, m: Msg) -> Result<()> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(m)
            .map_err(|_| Error::Unavailable("the embedded cluster has stopped".into()))
    }

    fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Msg) -> Result<T> {
        let (tx, rx) = channel();
        self.send(make(tx))?;
        rx.recv()
            .map_err(|_| Error::Unavailable("the embedded cluster has stopped".into()))?
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = self.send(Msg::Stop);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        for w in &self.workers {
            for k in w.store.keys() {
                w.store.remove(&k);
            }
        }
        let _ = std::fs::remove_dir_all(&self.spill_base);
    }
}

impl Backend for Embedded {
    fn submit(&self, client: ClientId, submission: Submission) -> Result<()> {
        self.ask(|r| Msg::Submit(client, submission, r))
    }

    fn wait(&self, key: &Key, timeout: Option<Duration>) -> Result<()> {
        let (tx, rx) = channel();
        self.send(Msg::Wait(key.clone(), tx))?;
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
        let worker = self.ask(|r| Msg::Wait(key.clone(), r))?;
        self.workers[worker as usize]
            .store
            .get(key)
            .ok_or_else(|| Error::KeyNotFound { key: key.clone() })
    }

    fn scatter(&self, client: ClientId, key: Key, chunk: Chunk) -> Result<()> {
        self.ask(|r| Msg::Scatter(client, key, chunk, r))
    }

    fn release(&self, client: ClientId, keys: Vec<Key>) {
        let _ = self.send(Msg::Event(Event::Release { client, keys }));
    }

    fn client_gone(&self, client: ClientId) {
        let _ = self.send(Msg::Event(Event::ClientGone { client }));
    }

    fn tasks_finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }
}

/// The driver thread: owns the scheduler and carries out its commands.
struct Driver {
    scheduler: Scheduler,
    workers: Vec<Arc<LocalWorker>>,
    tx: Sender<Msg>,
    waiters: FxHashMap<Key, Vec<Reply<WorkerId>>>,
    finished: Arc<AtomicU64>,
}

impl Driver {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut out = Vec::new();
        while let Ok(msg) = rx.recv() {
            let now = Instant::now();
            match msg {
                Msg::Stop => break,
                Msg::Event(e) => {
                    if matches!(e, Event::TaskFinished { .. } | Event::TaskFailed { .. }) {
                        self.finished.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Err(e) = self.scheduler.handle(e, now, &mut out) {
                        tracing::error!("scheduler refused an internal event: {e}");
                    }
                }
                Msg::Submit(client, sub, reply) => {
                    let _ = reply.send(self.scheduler.handle(
                        Event::Submit {
                            client,
                            submission: sub,
                        },
                        now,
                        &mut out,
                    ));
                }
                Msg::Scatter(client, key, chunk, reply) => {
                    let worker = self.least_loaded();
                    let nbytes = chunk::nbytes(&chunk) as u64;
                    self.workers[worker as usize].store.put(key.clone(), chunk);
                    let ev = Event::Scatter {
                        client,
                        key: key.clone(),
                        worker,
                        nbytes,
                    };
                    let r = self.scheduler.handle(ev, now, &mut out);
                    if r.is_err() {
                        self.workers[worker as usize].store.remove(&key);
                    }
                    let _ = reply.send(r);
                }
                Msg::Wait(key, reply) => match self.scheduler.status(&key) {
                    KeyStatus::Memory(ws) => {
                        let _ = reply.send(Ok(ws[0]));
                    }
                    KeyStatus::Erred(error) => {
                        let _ = reply.send(Err(Error::TaskFailed { key, error }));
                    }
                    KeyStatus::Unknown => {
                        let _ = reply.send(Err(Error::KeyNotFound { key }));
                    }
                    KeyStatus::Pending => self.waiters.entry(key).or_default().push(reply),
                },
            }
            for c in out.drain(..) {
                self.carry_out(c);
            }
        }
    }

    fn least_loaded(&self) -> WorkerId {
        (0..self.workers.len())
            .min_by_key(|i| self.workers[*i].store.stats().memory_bytes)
            .unwrap_or(0) as WorkerId
    }

    fn carry_out(&mut self, c: Command) {
        match c {
            Command::Run {
                worker,
                key,
                task,
                inputs,
            } => {
                let stores: Vec<(Key, Arc<ChunkStore>)> = inputs
                    .into_iter()
                    .filter_map(|(k, holders)| {
                        let w = holders
                            .iter()
                            .find(|w| self.workers[**w as usize].store.contains(&k))?;
                        Some((k, self.workers[*w as usize].store.clone()))
                    })
                    .collect();
                let store = self.workers[worker as usize].store.clone();
                let tx = self.tx.clone();
                self.workers[worker as usize].executor.spawn(move |ops| {
                    let input = |k: &Key| {
                        stores
                            .iter()
                            .find(|(x, _)| x == k)
                            .and_then(|(_, s)| s.get(k))
                    };
                    let event = match evaluate(ops, &task, &input) {
                        Ok(chunk) => {
                            let nbytes = chunk::nbytes(&chunk) as u64;
                            store.put(key.clone(), chunk);
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
                        },
                    };
                    let _ = tx.send(Msg::Event(event));
                });
            }
            Command::Free { worker, keys } => {
                for k in keys {
                    self.workers[worker as usize].store.remove(&k);
                }
            }
            Command::Done { key } => {
                let ws = match self.scheduler.status(&key) {
                    KeyStatus::Memory(ws) => ws,
                    _ => return,
                };
                for r in self.waiters.remove(&key).unwrap_or_default() {
                    let _ = r.send(Ok(ws[0]));
                }
            }
            Command::Failed { key, error } => {
                for r in self.waiters.remove(&key).unwrap_or_default() {
                    let _ = r.send(Err(Error::TaskFailed {
                        key: key.clone(),
                        error: error.clone(),
                    }));
                }
            }
        }
    }
}
