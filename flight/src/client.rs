//! The network client: a [`Backend`] that speaks Flight to a center, so the
//! same `Client`, `Pool`, graphs, delayed values and arrays work on a real
//! cluster. Results are fetched straight from the worker that holds them.
//!
//! The API is blocking, like the seed's; it runs its own small runtime and
//! must not be called from inside another async runtime.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_flight::FlightDescriptor;
use futures::TryStreamExt;
use rustc_hash::FxHashMap;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::codec;
use crate::error::Error;
use crate::net::{self, FlightClient};
use crate::protocol::*;
use quiver_engine::scheduler::ClientId;
use quiver_engine::{Backend, Chunk, Client, Key, Submission};

/// How often a client tells the center its session is alive.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Times a fetch asks the center where a key is before it gives up; the
/// pause between asks doubles from 100 ms (3.1 s in all), as a center under
/// load may take a while to act on a worker's closed connection.
const FETCH_ROUNDS: u32 = 6;

/// A [`Backend`] on a remote center.
pub struct RemoteBackend {
    rt: tokio::runtime::Runtime,
    session: Session,
    workers: Mutex<FxHashMap<String, Channel>>,
    releases: Releases,
}

/// The center, as this client's session: every request carries the session header.
#[derive(Clone)]
struct Session {
    center: FlightClient,
    /// The channel `center` calls on, for calls made beneath tonic.
    channel: Channel,
    /// Its id, sent as the session header.
    id: String,
}

impl Session {
    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Ok(v) = self.id.parse() {
            r.metadata_mut().insert(SESSION_HEADER, v);
        }
        r
    }

    /// Runs action `name` on the center; returns the body of its first result.
    async fn action(&self, name: &str, body: Vec<u8>) -> Result<bytes::Bytes, Error> {
        let mut c = self.center.clone();
        let req = self.request(arrow_flight::Action::new(name, body));
        let mut s = c
            .do_action(req)
            .await
            .map_err(|s| Error::remote(format!("action {name}"), s))?
            .into_inner();
        let first = s
            .try_next()
            .await
            .map_err(|s| Error::remote(format!("action {name}"), s))?;
        Ok(first.map(|r| r.body).unwrap_or_default())
    }
}

/// Releases waiting to be sent. Dropping handles one by one would cost a round
/// trip each (a second for a thousand), so keys are queued and sent in batches:
/// by a background task, and before any request that could observe them.
#[derive(Clone)]
struct Releases {
    session: Session,
    pending: Arc<Mutex<Vec<Key>>>,
    /// Held while a batch is on the wire, so requests that flush first see it applied.
    sending: Arc<tokio::sync::Mutex<()>>,
}

impl Releases {
    /// Queues `keys`; returns whether the queue was empty (no sender is on its way).
    fn push(&self, keys: Vec<Key>) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let first = pending.is_empty();
        pending.extend(keys);
        first
    }

    /// Sends every queued release, after any batch already on the wire.
    async fn flush(&self) {
        let _sending = self.sending.lock().await;
        let keys = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if keys.is_empty() {
            return;
        }
        let result = match serde_json::to_vec(&Release { keys }) {
            Ok(body) => self.session.action("release", body).await.map(drop),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            tracing::warn!("release failed: {e}");
        }
    }
}

/// Maps a Flight status from the center back to the engine error a caller can act on.
fn to_engine(e: Error, key: Option<&Key>) -> quiver_engine::Error {
    use quiver_engine::Error as E;
    match e {
        Error::Engine(e) => e,
        Error::Remote { status, context } => {
            if let Some(e) = crate::error::engine_error(&status) {
                return e;
            }
            let msg = status.message().to_string();
            match (status.code(), key) {
                (tonic::Code::NotFound, Some(k)) => E::KeyNotFound { key: k.clone() },
                (tonic::Code::FailedPrecondition, Some(k)) => E::TaskFailed {
                    key: k.clone(),
                    error: msg,
                },
                (tonic::Code::DeadlineExceeded, Some(k)) => E::Timeout {
                    key: k.clone(),
                    seconds: 0.0,
                },
                (tonic::Code::InvalidArgument, _) => E::MalformedGraph(msg),
                (tonic::Code::DataLoss, Some(k)) => E::Lost {
                    key: k.clone(),
                    reason: msg,
                },
                _ => E::Unavailable(format!("{context}: {msg}")),
            }
        }
        other => E::Unavailable(other.to_string()),
    }
}

impl RemoteBackend {
    /// Connects to the center at `address` (`host:port`).
    pub fn connect(address: &str) -> Result<Arc<Self>, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("quiver-client")
            .enable_all()
            .build()
            .map_err(|e| Error::Io {
                context: "client runtime".into(),
                source: e,
            })?;
        let channel = rt.block_on(net::channel(address))?;
        let mut center = net::client(channel.clone());
        // Check it is a Quiver center of our protocol before going on.
        let status = rt.block_on(net::probe_center(&mut center, address))?;
        if status.protocol_version != PROTOCOL_VERSION {
            return Err(Error::Protocol(format!(
                "the center at {address} speaks protocol version {}, this client speaks {PROTOCOL_VERSION}",
                status.protocol_version
            )));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let session = Session {
            center,
            channel,
            id,
        };
        let releases = Releases {
            session: session.clone(),
            pending: Arc::default(),
            sending: Arc::default(),
        };
        // The keepalive and the release sender hold no reference to the backend:
        // the runtime (and the tasks with it) must be dropped outside its own threads.
        let keepalive = session.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(KEEPALIVE).await;
                let _ = keepalive.action("cluster", vec![]).await;
            }
        });
        Ok(Arc::new(RemoteBackend {
            rt,
            session,
            workers: Mutex::default(),
            releases,
        }))
    }

    /// Runs action `name` on the center, after the releases queued before it.
    async fn act(&self, name: &str, body: Vec<u8>) -> Result<bytes::Bytes, Error> {
        self.releases.flush().await;
        self.session.action(name, body).await
    }

    async fn worker(&self, address: &str) -> Result<Channel, Error> {
        if let Some(c) = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(address)
        {
            return Ok(c.clone());
        }
        let c = net::channel(address).await?;
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(address.to_string(), c.clone());
        Ok(c)
    }

    /// The cluster's figures.
    pub fn cluster(&self) -> Result<ClusterStatus, Error> {
        let body = self.rt.block_on(self.act("cluster", vec![]))?;
        Ok(serde_json::from_slice(&body)?)
    }

    async fn info(
        &self,
        key: &Key,
        timeout: Option<Duration>,
    ) -> Result<arrow_flight::FlightInfo, Error> {
        self.releases.flush().await;
        let mut c = self.session.center.clone();
        let mut req = self
            .session
            .request(FlightDescriptor::new_path(vec![key.to_string()]));
        if let Some(v) = timeout.and_then(|t| t.as_millis().to_string().parse().ok()) {
            req.metadata_mut().insert(TIMEOUT_HEADER, v);
        }
        // Only the endpoints are read: the center need not ask a holder for the schema.
        (req.metadata_mut()).insert(LOCATE_HEADER, MetadataValue::from_static("1"));
        Ok(c.get_flight_info(req)
            .await
            .map_err(|s| Error::remote(format!("get '{key}'"), s))?
            .into_inner())
    }
}

impl Backend for RemoteBackend {
    fn submit(&self, _client: ClientId, submission: Submission) -> quiver_engine::Result<()> {
        let body = serde_json::to_vec(&submission)?;
        self.rt
            .block_on(self.act("submit", body))
            .map(drop)
            .map_err(|e| to_engine(e, None))
    }

    fn wait(&self, key: &Key, timeout: Option<Duration>) -> quiver_engine::Result<()> {
        self.rt
            .block_on(self.info(key, timeout))
            .map(drop)
            .map_err(|e| match to_engine(e, Some(key)) {
                quiver_engine::Error::Timeout { key, .. } => quiver_engine::Error::Timeout {
                    key,
                    seconds: timeout.unwrap_or_default().as_secs_f64(),
                },
                other => other,
            })
    }

    /// Fetches from each holder the center names, asking it again (up to
    /// [`FETCH_ROUNDS`] times) when none answers, or when the center itself
    /// could not reach one.
    fn fetch(&self, key: &Key) -> quiver_engine::Result<Chunk> {
        self.rt
            .block_on(async {
                // A holder can die after the center named it: the center learns of
                // it at once (its commands stream closes), so asking again gets another
                // holder, or the error that says the data was lost.
                let mut last = None;
                for round in 0..FETCH_ROUNDS {
                    let pause = Duration::from_millis(100 << round);
                    let info = match self.info(key, None).await {
                        Ok(info) => info,
                        // The center could not reach a holder it still believes in.
                        Err(e)
                            if matches!(&e, Error::Remote { status, .. }
                                if status.code() == tonic::Code::Unavailable)
                                && round + 1 < FETCH_ROUNDS =>
                        {
                            last = Some(e);
                            tokio::time::sleep(pause).await;
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    let locations: Vec<String> = info
                        .endpoint
                        .iter()
                        .flat_map(|e| e.location.iter())
                        .map(|l| l.uri.clone())
                        .collect();
                    if locations.is_empty() {
                        return Err(Error::Protocol(format!("no endpoint for '{key}'")));
                    }
                    for location in locations {
                        let got = async {
                            let w = self.worker(net::host_port(&location)).await?;
                            let msgs = net::get(w, key.as_str().as_bytes()).await?;
                            Ok::<_, Error>(codec::decode_one(msgs, key.as_str())?.0)
                        };
                        match got.await {
                            Ok(chunk) => return Ok(chunk),
                            Err(e) => last = Some(e),
                        }
                    }
                    if round + 1 < FETCH_ROUNDS {
                        tokio::time::sleep(pause).await;
                    }
                }
                Err(last.expect("at least one holder was tried"))
            })
            .map_err(|e| to_engine(e, Some(key)))
    }

    fn scatter(&self, _client: ClientId, key: Key, chunk: Chunk) -> quiver_engine::Result<()> {
        self.rt
            .block_on(async {
                self.releases.flush().await;
                // Sent as the chunk's own buffers, uncopied.
                let mut msgs = codec::encode_messages(&chunk, None)?;
                let descriptor = FlightDescriptor::new_path(vec![key.to_string()]);
                msgs[0].head.flight_descriptor = Some(descriptor);
                let session = [(SESSION_HEADER, self.session.id.clone())];
                crate::direct::put(self.session.channel.clone(), msgs, &session)
                    .await
                    .map_err(|s| Error::remote(format!("put '{key}'"), s))?;
                Ok(())
            })
            .map_err(|e| to_engine(e, Some(&key)))
    }

    /// Queues the release; it reaches the center before this client's next request.
    fn release(&self, _client: ClientId, keys: Vec<Key>) {
        if self.releases.push(keys) {
            let releases = self.releases.clone();
            self.rt.spawn(async move { releases.flush().await });
        }
    }

    fn client_gone(&self, _client: ClientId) {
        // Closing the session releases everything, queued releases included.
        self.releases
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let _ = self.rt.block_on(self.act("session-close", vec![]));
    }

    fn tasks_finished(&self) -> u64 {
        self.cluster().map(|c| c.tasks_finished).unwrap_or(0)
    }
}

/// A [`Client`] of the center at `address`.
pub fn connect(address: &str) -> Result<Client, Error> {
    Ok(Client::new(RemoteBackend::connect(address)?, 1))
}

/// Gets a key from the worker that holds it, skipping the center (used by benches).
pub async fn fetch_from(worker: &str, key: &Key) -> Result<(Chunk, codec::Decoder), Error> {
    let c = net::channel(worker).await?;
    let msgs = net::get(c, key.as_str().as_bytes()).await?;
    codec::decode_one(msgs, key.as_str())
}
