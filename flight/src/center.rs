//! The center: the public Flight entry point and the scheduler process. It
//! drives the engine's scheduler state machine unchanged, holds no chunk data,
//! and sends each worker its commands in batches over Flight actions.

use std::cmp::Reverse;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{TryStreamExt, stream};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::codegen::http;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::codec;
use crate::error::{Error, Result, engine_status};
use crate::memory::{self, IdleTrim};
use crate::net::{self, FlightClient};
use crate::protocol::*;
use crate::service::{BoxStream, descriptor_key, endpoint, json_result, parse};
use quiver_engine::scheduler::{
    ClientId, Command, Event, KeyStatus, Scheduler, SchedulerConfig, WorkerId, WorkerInfo,
};
use quiver_engine::{Key, OpRegistry, Submission};

/// How a center is started.
#[derive(Clone, Debug)]
pub struct CenterConfig {
    /// Interface to listen on.
    pub host: String,
    /// Port (0 picks one).
    pub port: u16,
    /// A worker silent this long is removed.
    pub heartbeat_timeout: Duration,
    /// A client session silent this long is closed and its holds released.
    pub session_timeout: Duration,
    /// The ops graphs may use: submissions are checked against them, and a
    /// worker that lacks any of them is refused.
    pub ops: Arc<OpRegistry>,
}

impl Default for CenterConfig {
    fn default() -> Self {
        CenterConfig {
            host: "127.0.0.1".into(),
            port: 8787,
            heartbeat_timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(60),
            ops: Arc::new(OpRegistry::builtin()),
        }
    }
}

/// How long `GetFlightInfo` waits for a key when the client names no timeout.
const DEFAULT_WAIT: Duration = Duration::from_secs(3600);

enum ToWorker {
    Run(RunTask<Arc<Holder>>),
    Free(Key),
}

struct WorkerLink {
    info: WorkerInfo,
    /// Its address and host id, as `run` messages name it.
    holder: Arc<Holder>,
    /// Commands, each with its number on the link (counted from 1).
    tx: mpsc::UnboundedSender<(u64, ToWorker)>,
    /// Commands sent on `tx` so far.
    sent: u64,
    /// For the calls the center makes on a client's behalf (describe, proxy,
    /// list, put): kept apart from the `commands` exchange, so that proxied
    /// data does not hold up commands and reports, and made once, so that no
    /// such call pays for a connection.
    channel: Channel,
    /// Dropped with the link, which ends the calls made to the worker through
    /// [`CenterCore::ask_holders`]: a worker removed as silent may still hold
    /// its connections open (a stopped process), and those calls would wait forever.
    gone: watch::Sender<()>,
    status: WorkerStatus,
    /// Moving average of its tasks' run time, in microseconds.
    task_micros: f64,
    /// Tasks queued on it beyond its threads.
    extra_slots: usize,
}

impl WorkerLink {
    fn send(&mut self, command: ToWorker) {
        self.sent += 1;
        let _ = self.tx.send((self.sent, command));
    }
}

/// How much work, in time, the center keeps queued on each worker thread
/// beyond the running task: enough to hide a control round trip.
const QUEUED_WORK_MICROS: f64 = 4000.0;
/// Bounds of the tasks queued per worker beyond its threads.
const EXTRA_SLOTS: (usize, usize) = (4, 256);

/// Tasks to queue beyond `nthreads` for tasks of `micros` each.
fn extra_slots(nthreads: usize, micros: f64) -> usize {
    ((QUEUED_WORK_MICROS / micros.max(1.0)) as usize * nthreads).clamp(EXTRA_SLOTS.0, EXTRA_SLOTS.1)
}

/// Time holding the state lock beyond which workers are not blamed for
/// heartbeats the center could not take meanwhile.
const BUSY: Duration = Duration::from_millis(50);

type Waiter = oneshot::Sender<std::result::Result<(), Status>>;

struct State {
    scheduler: Scheduler,
    workers: FxHashMap<WorkerId, WorkerLink>,
    next_worker: WorkerId,
    waiters: FxHashMap<Key, Vec<Waiter>>,
    sessions: FxHashMap<String, (ClientId, Instant)>,
    next_client: ClientId,
}

/// The center's state, shared by its service and its timers.
pub struct CenterCore {
    state: Mutex<State>,
    finished: AtomicU64,
    /// Woken after each report and each worker removal: a retiring worker's
    /// hand-over waits on it for the worker's last tasks.
    reported: tokio::sync::Notify,
    config: CenterConfig,
}

impl State {
    /// The link of worker `id` at `address`: ids restart with the center, so a
    /// worker from before a restart may name another one (`NOT_FOUND` then).
    fn link(&mut self, id: WorkerId, address: &str) -> Result<&mut WorkerLink, Status> {
        self.workers
            .get_mut(&id)
            .filter(|l| address.is_empty() || l.info.address == address)
            .ok_or_else(|| {
                Status::not_found(format!("worker {id} at {address} is not in this cluster"))
            })
    }
}

impl CenterCore {
    /// A center with no workers yet.
    pub fn new(config: CenterConfig) -> Arc<Self> {
        // Fusion matters most here: every task costs a round trip to a worker.
        let sched = SchedulerConfig {
            extra_slots: 4,
            heartbeat_timeout: config.heartbeat_timeout,
            fuse: true,
            pipeline: true,
            drop_after_last_read: true,
            ..SchedulerConfig::default()
        };
        Arc::new(CenterCore {
            state: Mutex::new(State {
                scheduler: Scheduler::new(sched, config.ops.clone()),
                workers: FxHashMap::default(),
                next_worker: 0,
                waiters: FxHashMap::default(),
                sessions: FxHashMap::default(),
                next_client: 1,
            }),
            finished: AtomicU64::new(0),
            reported: tokio::sync::Notify::new(),
            config,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds one event to the scheduler and carries out its commands.
    fn handle(self: &Arc<Self>, st: &mut State, event: Event) -> quiver_engine::Result<()> {
        let mut out = Vec::new();
        let start = Instant::now();
        let r = st.scheduler.handle(event, start, &mut out);
        for c in out {
            self.carry_out(st, c);
        }
        self.settle_waiters(st);
        let busy = start.elapsed();
        if busy > BUSY {
            tracing::debug!("one event held the center for {busy:?}");
            st.scheduler.excuse(busy);
        }
        r
    }

    /// Answers those waiting for a key that is now in memory, failed, or
    /// will not come: released by every client that held it, or an
    /// intermediate freed (or never to be kept) once nothing needs it.
    fn settle_waiters(&self, st: &mut State) {
        if st.waiters.is_empty() {
            return;
        }
        // Runs after every event (`handle`, `tick`).
        let settled: Vec<(Key, Result<(), Status>)> = (st.waiters.keys())
            .filter_map(|key| {
                let outcome = st.scheduler.settled(key)?.map(drop).map_err(|e| match e {
                    quiver_engine::Error::KeyNotFound { .. } => Status::not_found(format!(
                        "key '{key}' was released while waited for: no client holds it"
                    )),
                    e => engine_status(&e),
                });
                Some((key.clone(), outcome))
            })
            .collect();
        for (key, outcome) in settled {
            for w in st.waiters.remove(&key).unwrap_or_default() {
                let _ = w.send(outcome.clone());
            }
        }
    }

    fn carry_out(self: &Arc<Self>, st: &mut State, c: Command) {
        match c {
            Command::Run {
                worker,
                key,
                task,
                inputs,
                attempt,
                drops,
            } => {
                let inputs = inputs
                    .into_iter()
                    .map(|i| {
                        let holders = i
                            .holders
                            .iter()
                            .filter_map(|w| st.workers.get(w))
                            .map(|l| l.holder.clone())
                            .collect();
                        (i.key, holders, i.nbytes)
                    })
                    .collect();
                if let Some(l) = st.workers.get_mut(&worker) {
                    l.send(ToWorker::Run(RunTask {
                        key,
                        task,
                        inputs,
                        attempt,
                        drops,
                    }));
                }
            }
            Command::Free { worker, key } => {
                if let Some(l) = st.workers.get_mut(&worker) {
                    l.send(ToWorker::Free(key));
                }
            }
            // Answered after the event, with every other waiter (`settle_waiters`).
            Command::Done { .. } | Command::Failed { .. } => {}
        }
    }

    /// The client of a request with `headers`, by its session header.
    fn client_of(&self, st: &mut State, headers: &http::HeaderMap) -> ClientId {
        let Some(session) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
            return 0; // no session: holds last until released
        };
        let next = &mut st.next_client;
        let entry = st.sessions.entry(session.to_string()).or_insert_with(|| {
            *next += 1;
            (*next, Instant::now())
        });
        entry.1 = Instant::now();
        entry.0
    }

    /// A client to the worker at `address`: on its link's channel, or a new
    /// connection for an address that is not a worker's now.
    async fn worker_client(&self, address: &str) -> Result<FlightClient, Status> {
        let channel = match self.linked_channel(address) {
            Some((channel, _)) => channel,
            None => net::channel(address).await.map_err(Status::from)?,
        };
        Ok(net::client(channel))
    }

    /// The link's channel to the current worker at `address`, with a
    /// receiver whose `changed()` fails once that worker is removed.
    fn linked_channel(&self, address: &str) -> Option<(Channel, watch::Receiver<()>)> {
        (self.lock().workers.values())
            .find(|l| l.info.address == address)
            .map(|l| (l.channel.clone(), l.gone.subscribe()))
    }

    fn register(self: &Arc<Self>, reg: Register) -> Result<Registered, Status> {
        if reg.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version mismatch: the worker speaks {}, the center speaks {PROTOCOL_VERSION}",
                reg.protocol_version
            )));
        }
        // Caught here rather than as tasks failing on this worker alone.
        let missing: Vec<&str> = (self.config.ops.names().into_iter())
            .filter(|op| !reg.ops.iter().any(|o| o == op))
            .collect();
        if !missing.is_empty() {
            return Err(Status::failed_precondition(format!(
                "worker '{}' lacks ops the center has: {}; start it from the same program as the center",
                reg.name,
                missing.join(", ")
            )));
        }
        let channel = net::lazy_channel(&reg.address).map_err(Status::from)?;
        let mut st = self.lock();
        let worker = st.next_worker;
        st.next_worker += 1;
        let info = WorkerInfo {
            name: reg.name,
            address: reg.address,
            host_id: reg.host_id,
            nthreads: reg.nthreads,
            memory_limit: reg.memory_limit,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(self.clone().sender(worker, info.address.clone(), rx));
        st.workers.insert(
            worker,
            WorkerLink {
                holder: Arc::new(Holder {
                    address: info.address.clone(),
                    host_id: info.host_id.clone(),
                }),
                info: info.clone(),
                tx,
                sent: 0,
                channel,
                gone: watch::Sender::new(()),
                status: WorkerStatus::default(),
                task_micros: QUEUED_WORK_MICROS,
                extra_slots: EXTRA_SLOTS.0,
            },
        );
        tracing::info!(worker, address = %info.address, "worker joined");
        self.handle(&mut st, Event::AddWorker { worker, info })
            .map_err(|e| engine_status(&e))?;
        Ok(Registered {
            worker,
            protocol_version: PROTOCOL_VERSION,
        })
    }

    fn remove_worker(self: &Arc<Self>, worker: WorkerId, why: &str) {
        let mut st = self.lock();
        if st.workers.remove(&worker).is_some() {
            tracing::warn!(worker, "worker removed: {why}");
            let _ = self.handle(&mut st, Event::RemoveWorker { worker });
            drop(st);
            self.reported.notify_waiters();
        }
    }

    /// Short tasks need more of them queued on a worker to keep it busy
    /// across a report/run round trip; long ones fewer (memory, balance).
    fn pace(self: &Arc<Self>, st: &mut State, worker: WorkerId, finished: &[Finished]) {
        let Some(link) = st.workers.get_mut(&worker) else {
            return;
        };
        for f in finished.iter().filter(|f| f.micros > 0) {
            link.task_micros = 0.9 * link.task_micros + 0.1 * f.micros as f64;
        }
        let extra = extra_slots(link.info.nthreads.max(1), link.task_micros);
        if extra != link.extra_slots {
            link.extra_slots = extra;
            let mut out = Vec::new();
            st.scheduler.set_extra_slots(worker, extra, &mut out);
            for c in out {
                self.carry_out(st, c);
            }
        }
    }

    fn task_failed(self: &Arc<Self>, st: &mut State, worker: WorkerId, f: Failed) {
        let _ = self.handle(
            st,
            Event::TaskFailed {
                worker,
                key: f.key,
                error: f.error,
                attempt: f.attempt,
            },
        );
    }

    /// A task could not fetch an input: a holder that does not answer is
    /// removed (its data is recomputed and the task runs again, so its
    /// failure goes stale); if every holder answers, the failure stands.
    async fn check_holders(self: Arc<Self>, worker: WorkerId, failures: Vec<Failed>) {
        let mut addresses: Vec<&String> = failures.iter().flat_map(|f| &f.unreachable).collect();
        addresses.sort();
        addresses.dedup();
        for address in addresses {
            self.remove_if_dead(
                address,
                "a peer could not fetch from it and it does not answer",
            )
            .await;
        }
        let mut st = self.lock();
        for f in failures {
            self.task_failed(&mut st, worker, f);
        }
    }

    /// Asks the worker at `address` for its status on a fresh connection
    /// (that is the test); one that does not answer within 2 s is removed.
    /// Returns whether it is gone (found dead, or removed before).
    async fn remove_if_dead(self: &Arc<Self>, address: &str, why: &str) -> bool {
        if self.linked_channel(address).is_none() {
            return true;
        }
        let alive = async {
            let mut c = net::connect(address).await.ok()?;
            net::action_within(&mut c, "status", vec![], Duration::from_secs(2))
                .await
                .ok()
        };
        if alive.await.is_some() {
            return false;
        }
        let id = (self.lock().workers.iter())
            .find(|(_, l)| l.info.address == address)
            .map(|(id, _)| *id);
        if let Some(id) = id {
            self.remove_worker(id, why);
        }
        true
    }

    /// Waits for `key`, then makes `call` to its holders in turn until one
    /// answers; returns the answer, the holders and which one answered. A
    /// holder can die after the center last heard from it: one that cannot
    /// be reached and fails a liveness check is removed, and the key is
    /// waited for again, since it may now be made or copied elsewhere.
    async fn ask_holders<T, F, Fut>(
        self: &Arc<Self>,
        key: &Key,
        timeout: Duration,
        call: F,
    ) -> Result<(T, Vec<String>, usize), Status>
    where
        F: Fn(Channel, String) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        const ROUNDS: usize = 3;
        let mut round = 0;
        loop {
            round += 1;
            let (holders, _) = self.wait_for(key, timeout).await?;
            let mut last = None;
            let mut unreachable = vec![];
            for (i, holder) in holders.iter().enumerate() {
                let removed = || Status::unavailable("it was removed from the cluster");
                let answer = match self.linked_channel(holder) {
                    Some((channel, mut gone)) => tokio::select! {
                        answer = call(channel, holder.clone()) => answer,
                        _ = gone.changed() => Err(removed()),
                    },
                    None => Err(removed()),
                };
                match answer {
                    Ok(answer) => return Ok((answer, holders, i)),
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::Unavailable | tonic::Code::Cancelled
                        ) =>
                    {
                        last = Some(Status::unavailable(format!(
                            "could not reach {holder}, a holder of '{key}': {}",
                            s.message()
                        )));
                        unreachable.push(holder.clone());
                    }
                    Err(s) => last = Some(s),
                }
            }
            let mut dead = false;
            for holder in &unreachable {
                dead |= self
                    .remove_if_dead(
                        holder,
                        "the center could not reach it and it does not answer",
                    )
                    .await;
            }
            if !dead || round == ROUNDS {
                return Err(last.unwrap_or_else(|| {
                    Status::unavailable(format!("no live worker holds '{key}'"))
                }));
            }
        }
    }

    /// Copies the data only `worker` holds to open peers (least loaded
    /// first), records the copies, then removes the worker: nothing it held
    /// is recomputed.
    async fn hand_over(self: Arc<Self>, worker: WorkerId) -> Result<Retired, Status> {
        // The worker asks once its last outcomes are sent; they come on the
        // `commands` exchange, not this call, and may still be on their way.
        let patience = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            // Registered before the check, so a report in between still wakes it.
            let reported = self.reported.notified();
            let load = self.lock().scheduler.worker_load(worker);
            if load.is_none_or(|(running, _)| running == 0)
                || tokio::time::timeout_at(patience, reported).await.is_err()
            {
                break;
            }
        }
        let (sole, from, mut targets) = {
            let st = self.lock();
            let Some(link) = st.workers.get(&worker) else {
                return Err(Status::not_found(format!(
                    "worker {worker} is not in this cluster"
                )));
            };
            let from = link.holder.clone();
            let targets: Vec<(u64, WorkerId, String)> = st
                .scheduler
                .open_workers()
                .into_iter()
                .filter(|w| *w != worker)
                .filter_map(|w| {
                    st.workers
                        .get(&w)
                        .map(|l| (l.status.store.memory_bytes, w, l.info.address.clone()))
                })
                .collect();
            (st.scheduler.sole_holdings(worker), from, targets)
        };
        if targets.is_empty() && !sole.is_empty() {
            self.remove_worker(worker, "retired with no peer to take its data");
            return Err(Status::failed_precondition(format!(
                "no other worker to hand {} keys to: they are lost",
                sole.len()
            )));
        }
        // Biggest keys first, each to the peer with the fewest bytes so far.
        let mut sole = sole;
        sole.sort_by_key(|(_, n)| Reverse(*n));
        let mut plan: FxHashMap<WorkerId, (String, Vec<RunInput>)> = FxHashMap::default();
        for (key, nbytes) in sole {
            targets.sort();
            let (load, w, address) = &mut targets[0];
            *load += nbytes;
            plan.entry(*w)
                .or_insert_with(|| (address.clone(), vec![]))
                .1
                .push((key, vec![from.clone()], nbytes));
        }
        let mut retired = Retired::default();
        for (target, (address, inputs)) in plan {
            let gathered: Result<Gathered> = async {
                let mut c = net::connect(&address).await?;
                net::action_json(&mut c, "gather", &Gather { inputs }).await
            }
            .await;
            match gathered {
                Ok(g) => {
                    let mut st = self.lock();
                    for (key, nbytes) in g.stored {
                        retired.moved += 1;
                        retired.bytes += nbytes;
                        let _ = self.handle(
                            &mut st,
                            Event::Replicated {
                                worker: target,
                                key,
                                nbytes,
                            },
                        );
                    }
                }
                Err(e) => tracing::warn!(worker, target, "hand-over to {address} failed: {e}"),
            }
        }
        tracing::info!(
            worker,
            moved = retired.moved,
            bytes = retired.bytes,
            "worker retired"
        );
        self.remove_worker(worker, "retired");
        Ok(retired)
    }

    /// Sends a worker its commands, batching whatever has queued up, as
    /// messages of one `commands` exchange: a message on an open stream costs
    /// far less than a call of its own. The worker never ends the exchange
    /// while it lives, so its end (a killed process closes its sockets) is
    /// this worker's end, seen at once.
    async fn sender(
        self: Arc<Self>,
        worker: WorkerId,
        address: String,
        mut rx: mpsc::UnboundedReceiver<(u64, ToWorker)>,
    ) {
        let mut client = match net::connect(&address).await {
            Ok(c) => c,
            Err(e) => return self.remove_worker(worker, &format!("unreachable: {e}")),
        };
        let (tx, messages) = mpsc::unbounded_channel();
        let _ = tx.send(FlightData {
            flight_descriptor: Some(FlightDescriptor::new_cmd(COMMANDS)),
            ..FlightData::default()
        });
        let outgoing = stream::unfold(
            messages,
            |mut m| async move { m.recv().await.map(|d| (d, m)) },
        );
        let mut replies = match client.do_exchange(outgoing).await {
            Ok(r) => r.into_inner(),
            Err(e) => return self.remove_worker(worker, &format!("commands refused: {e}")),
        };
        let watch = self.clone();
        tokio::spawn(async move {
            let why = loop {
                match replies.message().await {
                    Ok(Some(m)) if m.app_metadata.is_empty() => {}
                    // The worker's reports come back on the exchange.
                    Ok(Some(m)) => match serde_json::from_slice::<Report>(&m.app_metadata) {
                        // One that names another id (the worker's from before
                        // it joined again) is moot, as a `report` call's is.
                        Ok(r) if r.worker != worker => {
                            tracing::debug!(worker, "report for worker {} ignored", r.worker);
                        }
                        Ok(r) => {
                            if let Err(s) = watch.report(r) {
                                tracing::debug!(worker, "report ignored: {}", s.message());
                            }
                        }
                        Err(e) => break format!("it sent a bad report: {e}"),
                    },
                    Ok(None) => break "its connection closed".to_string(),
                    Err(s) if s.code() == tonic::Code::InvalidArgument => {
                        break format!("it refused a command: {}", s.message());
                    }
                    Err(_) => break "its connection closed".to_string(),
                }
            };
            watch.remove_worker(worker, &why);
        });
        while let Some(first) = rx.recv().await {
            let (mut tasks, mut commands) = (Vec::new(), Commands::default());
            let mut add = |(seq, m): (u64, ToWorker)| {
                commands.seq = seq;
                match m {
                    ToWorker::Run(t) => tasks.push(t),
                    ToWorker::Free(k) => commands.free.push(k),
                }
            };
            add(first);
            while let Ok(m) = rx.try_recv() {
                add(m);
            }
            if !tasks.is_empty() {
                commands.run = Some(Run::new(tasks));
            }
            let body = match serde_json::to_vec(&commands) {
                Ok(b) => b,
                Err(e) => return self.remove_worker(worker, &format!("commands not encoded: {e}")),
            };
            let message = FlightData {
                app_metadata: body.into(),
                ..FlightData::default()
            };
            if tx.send(message).is_err() {
                return; // the exchange ended: the watch above removes the worker
            }
        }
    }

    /// Takes a worker's report of finished and failed tasks.
    fn report(self: &Arc<Self>, report: Report) -> Result<(), Status> {
        let worker = report.worker;
        let n = (report.finished.len() + report.failed.len()) as u64;
        let (suspect, failed): (Vec<Failed>, Vec<Failed>) = report
            .failed
            .into_iter()
            .partition(|f| !f.unreachable.is_empty());
        let mut st = self.lock();
        st.link(worker, &report.address)?;
        self.pace(&mut st, worker, &report.finished);
        for f in report.finished {
            let _ = self.handle(
                &mut st,
                Event::TaskFinished {
                    worker,
                    key: f.key,
                    nbytes: f.nbytes,
                },
            );
        }
        for f in failed {
            self.task_failed(&mut st, worker, f);
        }
        drop(st);
        self.finished.fetch_add(n, Ordering::Relaxed);
        self.reported.notify_waiters();
        if !suspect.is_empty() {
            tokio::spawn(self.clone().check_holders(worker, suspect));
        }
        Ok(())
    }

    /// Time-driven work: dead workers, silent sessions.
    fn tick(self: &Arc<Self>) {
        let mut st = self.lock();
        let mut out = Vec::new();
        let _ = st.scheduler.handle(Event::Tick, Instant::now(), &mut out);
        let alive: Vec<WorkerId> = st.scheduler.workers().map(|(id, _)| id).collect();
        st.workers.retain(|id, _| alive.contains(id));
        for c in out {
            self.carry_out(&mut st, c);
        }
        self.settle_waiters(&mut st);
        let timeout = self.config.session_timeout;
        let stale: Vec<(String, ClientId)> = st
            .sessions
            .iter()
            .filter(|(_, (_, seen))| seen.elapsed() > timeout)
            .map(|(s, (c, _))| (s.clone(), *c))
            .collect();
        for (s, client) in stale {
            tracing::info!(session = %s, "session silent for {timeout:?}: releasing its keys");
            st.sessions.remove(&s);
            let _ = self.handle(&mut st, Event::ClientGone { client });
        }
    }

    /// The cluster's figures, each worker's as of its last heartbeat.
    pub fn cluster_status(&self) -> ClusterStatus {
        let st = self.lock();
        let mut workers: Vec<WorkerEntry> = st
            .workers
            .iter()
            .map(|(id, l)| {
                let mut w = WorkerEntry {
                    id: *id,
                    name: l.info.name.clone(),
                    address: l.info.address.clone(),
                    host_id: l.info.host_id.clone(),
                    nthreads: l.info.nthreads,
                    memory_limit: l.info.memory_limit,
                    ..Default::default()
                };
                w.set_figures(&l.status);
                w
            })
            .collect();
        workers.sort_by_key(|w| w.id);
        let mut s = ClusterStatus {
            protocol_version: PROTOCOL_VERSION,
            workers,
            totals: WorkerEntry::default(),
            tasks: st.scheduler.num_tasks(),
            tasks_finished: self.finished.load(Ordering::Relaxed),
            tasks_sent_ahead: st.scheduler.sent_ahead(),
        };
        s.sum_totals();
        s
    }

    /// Places a put chunk on the worker the scheduler picks for it and holds
    /// it for `client`; its size, as the worker stored it.
    async fn place(
        self: Arc<Self>,
        client: ClientId,
        key: Key,
        msgs: Vec<codec::Message>,
    ) -> Result<u64, Status> {
        let (worker, address, after, channel, mut gone) = {
            let mut st = self.lock();
            let nbytes = msgs.iter().map(codec::Message::body_len).sum::<usize>();
            let worker = st
                .scheduler
                .reserve(&key, nbytes as u64)
                .map_err(|e| match e {
                    quiver_engine::Error::Unavailable(why) => Status::unavailable(why),
                    e => {
                        let why = format!("key '{key}' already exists; release it first");
                        crate::error::with_engine_error(Status::already_exists(why), &e)
                    }
                })?;
            let Some(l) = st.workers.get(&worker) else {
                st.scheduler.unreserve(&key);
                return Err(Status::unavailable(format!(
                    "worker {worker} left meanwhile"
                )));
            };
            let address = l.info.address.clone();
            (
                worker,
                address,
                l.sent,
                l.channel.clone(),
                l.gone.subscribe(),
            )
        };
        let placed = async {
            // The worker may still hold the key's earlier chunk, its free on the way.
            let after = [(AFTER_HEADER, after.to_string())];
            let replies = tokio::select! {
                replies = crate::direct::put(channel, msgs, &after) => replies?,
                _ = gone.changed() => {
                    return Err(Status::unavailable("it was removed from the cluster meanwhile"));
                }
            };
            let reply = replies.into_iter().next().unwrap_or_default();
            serde_json::from_slice::<Stored>(&reply)
                .map(|s| s.nbytes)
                .map_err(|e| Status::internal(format!("its reply to the put: {e}")))
        };
        let placed = placed.await.map_err(|e| {
            let why = format!("placing '{key}' on worker {address}: {}", e.message());
            Status::new(e.code(), why)
        });
        let mut st = self.lock();
        let nbytes = match placed {
            Ok(nbytes) => nbytes,
            Err(e) => {
                st.scheduler.unreserve(&key);
                return Err(e);
            }
        };
        self.handle(
            &mut st,
            Event::Scatter {
                client,
                key: key.clone(),
                worker,
                nbytes,
            },
        )
        .map_err(|e| engine_status(&e))?;
        // Its session closed meanwhile: nothing would ever release the hold.
        if client != 0 && !st.sessions.values().any(|(c, _)| *c == client) {
            let keys = vec![key.clone()];
            let _ = self.handle(&mut st, Event::Release { client, keys });
            return Err(Status::failed_precondition(format!(
                "the session closed while '{key}' was being put: it was not kept"
            )));
        }
        Ok(nbytes)
    }

    /// Waits until `key` is in memory; returns the addresses of its live
    /// holders and the chunk's size.
    async fn wait_for(
        self: &Arc<Self>,
        key: &Key,
        timeout: Duration,
    ) -> Result<(Vec<String>, u64), Status> {
        let rx = {
            let mut st = self.lock();
            match st.scheduler.settled(key) {
                Some(outcome) => {
                    outcome.map_err(|e| engine_status(&e))?;
                    None
                }
                None => {
                    let (tx, rx) = oneshot::channel();
                    st.waiters.entry(key.clone()).or_default().push(tx);
                    Some(rx)
                }
            }
        };
        if let Some(rx) = rx {
            match tokio::time::timeout(timeout, rx).await {
                Err(_) => {
                    return Err(crate::error::engine_status(
                        &quiver_engine::Error::Timeout {
                            key: key.clone(),
                            seconds: timeout.as_secs_f64(),
                        },
                    ));
                }
                Ok(Err(_)) => return Err(Status::unavailable("the center is shutting down")),
                Ok(Ok(r)) => r?,
            }
        }
        let st = self.lock();
        match (st.scheduler.status(key), st.scheduler.nbytes(key)) {
            (KeyStatus::Memory(ws), Some(nbytes)) => Ok((
                ws.iter()
                    .filter_map(|w| st.workers.get(w))
                    .map(|l| l.info.address.clone())
                    .collect(),
                nbytes,
            )),
            _ => Err(Status::not_found(format!("key '{key}' was released"))),
        }
    }
}

impl crate::direct::Calls for CenterCore {
    /// A put is sent on to a worker as the frames it came in.
    const PUT_BODIES: crate::direct::Bodies = crate::direct::Bodies::AsReceived;

    /// The answer of the first holder that answers, passed on frame by
    /// frame as it comes: the center neither decodes nor copies it.
    async fn get(
        self: Arc<Self>,
        key: Key,
        headers: http::HeaderMap,
    ) -> Result<http::Response<tonic::body::Body>, Status> {
        let timeout = timeout_of(&headers)?;
        let (answer, _, _) = self
            .ask_holders(&key, timeout, |channel, holder| {
                crate::direct::forward_get(channel, key.as_str().as_bytes(), holder)
            })
            .await?;
        Ok(answer)
    }

    async fn put(
        self: Arc<Self>,
        headers: http::HeaderMap,
        msgs: impl Future<Output = Result<Vec<codec::Message>, Status>> + Send,
    ) -> Result<bytes::Bytes, Status> {
        // The session is opened (or kept alive) as the put starts.
        let client = {
            let mut st = self.lock();
            self.client_of(&mut st, &headers)
        };
        let mut msgs = msgs.await?;
        let (key, descriptor) = crate::service::put_key(&mut msgs)?;
        // Sent on as it came: the worker checks it, and a corrupt stream's
        // error comes back from there.
        msgs[0].head.flight_descriptor = Some(descriptor);
        // Its own task: a client that hangs up mid-placement must not leave
        // the key reserved, or a placed chunk unrecorded.
        let placing = tokio::spawn(self.place(client, key.clone(), msgs));
        let nbytes = placing
            .await
            .map_err(|e| Status::internal(format!("the put of '{key}' failed: {e}")))??;
        let body = serde_json::json!({ "key": key, "nbytes": nbytes });
        Ok(serde_json::to_vec(&body).unwrap_or_default().into())
    }
}

/// The center's Flight service.
#[derive(Clone)]
pub struct CenterService(pub Arc<CenterCore>);

fn timeout_of(headers: &http::HeaderMap) -> Result<Duration, Status> {
    match headers.get(TIMEOUT_HEADER) {
        None => Ok(DEFAULT_WAIT),
        Some(v) => {
            let text = String::from_utf8_lossy(v.as_bytes());
            let text = text.trim();
            // A wait longer than u64 milliseconds (585 million years) is a wait without end.
            if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                Ok(Duration::from_millis(text.parse().unwrap_or(u64::MAX)))
            } else {
                Err(Status::invalid_argument(format!(
                    "{TIMEOUT_HEADER} must be a whole number of milliseconds, got '{text}'"
                )))
            }
        }
    }
}

#[tonic::async_trait]
impl FlightService for CenterService {
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
        let (mut infos, holders) = {
            let st = self.0.lock();
            let mut holders = Vec::new();
            let infos: Vec<FlightInfo> = st
                .scheduler
                .keys_in_memory()
                .into_iter()
                .map(|(k, nbytes, ws)| {
                    let mut info = FlightInfo::new()
                        .with_descriptor(FlightDescriptor::new_path(vec![k.to_string()]))
                        .with_total_bytes(nbytes as i64);
                    for w in ws.iter().filter_map(|w| st.workers.get(w)) {
                        holders.push(w.info.address.clone());
                        info = info.with_endpoint(endpoint(k.as_str(), &w.info.address));
                    }
                    info
                })
                .collect();
            holders.sort_unstable();
            holders.dedup();
            (infos, holders)
        };
        // The schema and rows come from the holders, asked all at once; one
        // that does not answer in time leaves its chunks described by size
        // and place alone (no schema, rows -1, as Flight has it for unknown).
        let asks = holders.iter().map(|address| {
            tokio::time::timeout(Duration::from_secs(2), async move {
                let mut client = self.0.worker_client(address).await?;
                let listed = client.list_flights(Criteria::default()).await?;
                listed.into_inner().try_collect::<Vec<_>>().await
            })
        });
        let key_of = |info: &FlightInfo| {
            let d = info.flight_descriptor.as_ref()?;
            d.path.first().cloned()
        };
        let mut described: FxHashMap<String, FlightInfo> = FxHashMap::default();
        for answer in futures::future::join_all(asks).await {
            let Ok(Ok(listed)) = answer else { continue };
            for info in listed {
                if let Some(key) = key_of(&info) {
                    described.insert(key, info);
                }
            }
        }
        for info in &mut infos {
            if let Some(d) = key_of(info).and_then(|k| described.get(&k)) {
                info.schema = d.schema.clone();
                info.total_records = d.total_records;
            }
        }
        Ok(Response::new(Box::pin(stream::iter(
            infos.into_iter().map(Ok),
        ))))
    }

    async fn get_flight_info(
        &self,
        req: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let timeout = timeout_of(req.metadata().as_ref())?;
        let key = descriptor_key(req.get_ref())?;
        let descriptor = FlightDescriptor::new_path(vec![key.to_string()]);
        if req.metadata().contains_key(LOCATE_HEADER) {
            let (holders, nbytes) = self.0.wait_for(&key, timeout).await?;
            if holders.is_empty() {
                return Err(Status::unavailable(format!("no live worker holds '{key}'")));
            }
            let info = (holders.iter()).fold(
                FlightInfo::new()
                    .with_descriptor(descriptor)
                    .with_total_bytes(nbytes as i64),
                |info, h| info.with_endpoint(endpoint(key.as_str(), h)),
            );
            return Ok(Response::new(info));
        }
        let (mut info, holders, answered) = (self.0)
            .ask_holders(&key, timeout, |channel, _| {
                let descriptor = descriptor.clone();
                async move {
                    let mut client = net::client(channel);
                    Ok(client.get_flight_info(descriptor).await?.into_inner())
                }
            })
            .await?;
        for (_, other) in holders.iter().enumerate().filter(|(i, _)| *i != answered) {
            info = info.with_endpoint(endpoint(key.as_str(), other));
        }
        Ok(Response::new(info))
    }

    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "poll_flight_info: use get_flight_info with the x-quiver-timeout-ms header",
        ))
    }

    async fn get_schema(
        &self,
        req: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let key = descriptor_key(req.get_ref())?;
        let descriptor = FlightDescriptor::new_path(vec![key.to_string()]);
        let (schema, _, _) = (self.0)
            .ask_holders(&key, DEFAULT_WAIT, |channel, _| {
                let descriptor = descriptor.clone();
                async move { net::client(channel).get_schema(descriptor).await }
            })
            .await?;
        Ok(schema)
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

    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented(
            "do_exchange is not part of the Quiver protocol",
        ))
    }

    async fn do_action(
        &self,
        req: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let core = &self.0;
        let client = {
            let mut st = core.lock();
            core.client_of(&mut st, req.metadata().as_ref())
        };
        let Action { r#type, body } = req.into_inner();
        match r#type.as_str() {
            "submit" => {
                let submission = Submission::from_json(&body).map_err(|e| engine_status(&e))?;
                // The text of a million-task graph is tens of MB: not held through scheduling.
                drop(body);
                let keys = submission.keys.clone();
                let mut st = core.lock();
                core.handle(&mut st, Event::Submit { client, submission })
                    .map_err(|e| engine_status(&e))?;
                json_result(&Submitted { keys })
            }
            "release" => {
                let r: Release = parse(&r#type, &body)?;
                let mut st = core.lock();
                core.handle(
                    &mut st,
                    Event::Release {
                        client,
                        keys: r.keys,
                    },
                )
                .map_err(|e| engine_status(&e))?;
                json_result(&serde_json::json!({}))
            }
            "session-close" => {
                let mut st = core.lock();
                st.sessions.retain(|_, (c, _)| *c != client);
                if client != 0 {
                    core.handle(&mut st, Event::ClientGone { client })
                        .map_err(|e| engine_status(&e))?;
                }
                json_result(&serde_json::json!({}))
            }
            "cluster" => json_result(&core.cluster_status()),
            "ops" => json_result(&core.lock().scheduler.ops().names()),
            "register" => json_result(&core.register(parse(&r#type, &body)?)?),
            "heartbeat" => {
                let status: WorkerStatus = parse(&r#type, &body)?;
                let mut st = core.lock();
                st.link(status.worker, &status.address)?.status = status.clone();
                core.handle(
                    &mut st,
                    Event::Heartbeat {
                        worker: status.worker,
                    },
                )
                .map_err(|e| engine_status(&e))?;
                json_result(&serde_json::json!({}))
            }
            "retire" => {
                // What `quiver retire` sends a worker, sent to the center.
                if body.is_empty() {
                    return Err(Status::invalid_argument(
                        "this is the center; a worker is retired at its own address \
                         (`quiver retire WORKER_HOST:PORT`; `quiver status` lists them)",
                    ));
                }
                let retire: Retire = parse(&r#type, &body)?;
                match retire.phase.as_str() {
                    "drain" => {
                        let mut st = core.lock();
                        if !st.workers.contains_key(&retire.worker) {
                            return Err(Status::not_found(format!(
                                "worker {} is not in this cluster",
                                retire.worker
                            )));
                        }
                        let _ = core.handle(
                            &mut st,
                            Event::Retire {
                                worker: retire.worker,
                            },
                        );
                        json_result(&serde_json::json!({}))
                    }
                    "hand-over" => json_result(&core.clone().hand_over(retire.worker).await?),
                    other => Err(Status::invalid_argument(format!(
                        "retire phase must be 'drain' or 'hand-over', not '{other}'"
                    ))),
                }
            }
            "report" => {
                core.report(parse(&r#type, &body)?)?;
                json_result(&serde_json::json!({}))
            }
            other => Err(Status::invalid_argument(format!(
                "unknown action '{other}'; the center's actions are: {}",
                CENTER_ACTIONS
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
        let actions = CENTER_ACTIONS.iter().map(|(n, d)| {
            Ok(ActionType {
                r#type: n.to_string(),
                description: d.to_string(),
            })
        });
        Ok(Response::new(Box::pin(stream::iter(actions))))
    }
}

/// A running center: its address and a handle to stop it.
pub struct CenterHandle {
    /// Where it listens.
    pub address: std::net::SocketAddr,
    /// Its state (figures, tests).
    pub core: Arc<CenterCore>,
}

/// Binds the center's port, then serves until `shutdown` resolves.
pub async fn run(
    config: CenterConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(&CenterHandle),
) -> Result<()> {
    let (incoming, address) = net::bind(&config.host, config.port).await?;
    let core = CenterCore::new(config);
    ready(&CenterHandle {
        address,
        core: core.clone(),
    });
    let ticker = {
        let core = core.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            let mut idle = IdleTrim::new(memory::KEEP_FREED);
            loop {
                every.tick().await;
                core.tick();
                // A put or a proxied get leaves its chunk's memory with the allocator.
                idle.tick(core.lock().scheduler.transitions(), memory::anon_rss());
            }
        })
    };
    let r = net::server()?
        .add_service(crate::direct::Direct::new(
            net::service(CenterService(core.clone())),
            core,
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Io {
            context: "center server".into(),
            source: std::io::Error::other(e),
        });
    ticker.abort();
    r
}
