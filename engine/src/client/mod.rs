//! The client API, one for the embedded cluster and a remote center alike:
//! raw graphs ([`Client::get`]), the [`Pool`] of remote handles, [`delayed`]
//! values and the chunked [`Array`]. A [`Backend`] is what a client talks to.

pub mod array;
mod call;
mod delayed;
mod pool;
mod progress;

use std::sync::Arc;
use std::time::Duration;

use crate::chunk::Chunk;
use crate::error::Result;
use crate::graph::{Graph, Submission};
use crate::key::Key;
use crate::scheduler::ClientId;

pub use array::Array;
pub use call::{Call, Input};
pub use delayed::{Delayed, delayed};
pub use pool::Pool;

/// What a client needs from a cluster; the embedded cluster and the network
/// client both implement it.
pub trait Backend: Send + Sync {
    /// Validates and schedules a graph; its `keys` are held for `client`.
    fn submit(&self, client: ClientId, submission: Submission) -> Result<()>;
    /// Waits until `key` is in memory (or failed, or the timeout passed).
    fn wait(&self, key: &Key, timeout: Option<Duration>) -> Result<()>;
    /// Waits for `key` and returns its chunk, read from the worker that holds it.
    fn fetch(&self, key: &Key) -> Result<Chunk>;
    /// Places `chunk` on a worker under `key`, held for `client`.
    fn scatter(&self, client: ClientId, key: Key, chunk: Chunk) -> Result<()>;
    /// Drops `client`'s hold on `keys`.
    fn release(&self, client: ClientId, keys: Vec<Key>);
    /// Drops every hold of `client`.
    fn client_gone(&self, client: ClientId);
    /// Tasks finished since the cluster started (for progress bars).
    fn tasks_finished(&self) -> u64;
}

struct ClientInner {
    backend: Arc<dyn Backend>,
    id: ClientId,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.backend.client_gone(self.id);
    }
}

/// A connection to a cluster. Cheap to clone; the last clone dropped releases
/// everything this client still holds.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl Client {
    /// A client with id `id` on `backend`.
    pub fn new(backend: Arc<dyn Backend>, id: ClientId) -> Client {
        Client {
            inner: Arc::new(ClientInner { backend, id }),
        }
    }

    /// The backend this client talks to.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// A pool for `map`/`apply` calls that return handles to data left on the workers.
    pub fn pool(&self) -> Pool {
        Pool::new(self.clone())
    }

    /// Submits `graph` and returns a handle to each of `keys` (computing in the background).
    pub fn submit(&self, graph: Graph, keys: &[Key]) -> Result<Vec<RemoteData>> {
        self.inner.backend.submit(
            self.inner.id,
            Submission {
                graph,
                keys: keys.to_vec(),
            },
        )?;
        Ok(keys
            .iter()
            .map(|k| RemoteData::new(self.clone(), k.clone()))
            .collect())
    }

    /// Computes `keys` of `graph` and returns their chunks; intermediates are freed
    /// as they are consumed and the results are released once fetched.
    pub fn get(&self, graph: &Graph, keys: &[Key]) -> Result<Vec<Chunk>> {
        let handles = self.submit(graph.clone(), keys)?;
        progress::wait_all(self, graph.len(), &handles)?;
        handles.iter().map(RemoteData::get).collect()
    }

    /// Places `chunk` on a worker and returns a handle to it.
    pub fn scatter(&self, chunk: Chunk) -> Result<RemoteData> {
        let key = Key::from(format!("scatter-{}", uuid::Uuid::new_v4().simple()).as_str());
        self.scatter_as(key, chunk)
    }

    /// Places `chunk` on a worker under `key` and returns a handle to it.
    pub fn scatter_as(&self, key: Key, chunk: Chunk) -> Result<RemoteData> {
        self.inner
            .backend
            .scatter(self.inner.id, key.clone(), chunk)?;
        Ok(RemoteData::new(self.clone(), key))
    }

    /// Computes delayed values together and returns their chunks.
    pub fn compute(&self, values: &[&Delayed]) -> Result<Vec<Chunk>> {
        let (graph, keys) = delayed::collect(values);
        self.get(&graph, &keys)
    }

    /// Starts computing a delayed value and returns a handle to its result.
    pub fn persist(&self, value: &Delayed) -> Result<RemoteData> {
        let (graph, keys) = delayed::collect(&[value]);
        Ok(self.submit(graph, &keys)?.pop().expect("one key"))
    }

    fn release(&self, key: Key) {
        self.inner.backend.release(self.inner.id, vec![key]);
    }
}

/// A handle to a chunk that stays on a worker. Dropping it releases the key.
pub struct RemoteData {
    client: Client,
    key: Key,
    /// False once the key was released in a batch by [`Pool::delete`].
    armed: bool,
}

impl RemoteData {
    fn new(client: Client, key: Key) -> Self {
        RemoteData {
            client,
            key,
            armed: true,
        }
    }

    /// Releases many handles in one request.
    pub fn release_all(handles: impl IntoIterator<Item = RemoteData>) {
        let mut by_client: Vec<(Client, Vec<Key>)> = Vec::new();
        for mut h in handles {
            h.armed = false;
            match by_client
                .iter_mut()
                .find(|(c, _)| Arc::ptr_eq(&c.inner, &h.client.inner))
            {
                Some((_, keys)) => keys.push(h.key.clone()),
                None => by_client.push((h.client.clone(), vec![h.key.clone()])),
            }
        }
        for (c, keys) in by_client {
            c.inner.backend.release(c.inner.id, keys);
        }
    }

    /// The key this handle holds.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Waits until the value is computed (or failed).
    pub fn wait(&self) -> Result<()> {
        self.client.inner.backend.wait(&self.key, None)
    }

    /// Waits for the value and fetches it from the worker that holds it.
    pub fn get(&self) -> Result<Chunk> {
        self.client.inner.backend.fetch(&self.key)
    }

    /// The value as a float (for scalar results).
    pub fn get_f64(&self) -> Result<f64> {
        crate::chunk::to_f64(&self.get()?)
    }
}

impl std::fmt::Debug for RemoteData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteData({})", self.key)
    }
}

impl Drop for RemoteData {
    fn drop(&mut self) {
        if self.armed {
            self.client.release(self.key.clone());
        }
    }
}
