//! Delayed values: lazy calls that feed other calls, built into one graph on compute.

use std::sync::Arc;

use rustc_hash::FxHashSet;

use super::{Call, Client, RemoteData};
use crate::chunk::Chunk;
use crate::error::Result;
use crate::graph::{Graph, Task};
use crate::key::Key;

#[derive(Debug)]
struct Inner {
    key: Key,
    task: Option<Task>,
    deps: Vec<Delayed>,
    /// Set when the value is data already on the cluster; keeps it held.
    _handle: Option<Arc<RemoteData>>,
}

/// A lazy value: an op applied to inputs that may themselves be lazy.
#[derive(Clone, Debug)]
pub struct Delayed(Arc<Inner>);

/// A lazy call of `op`. Nothing runs until it is computed.
pub fn delayed(op: &str, call: impl Into<Call>) -> Delayed {
    let (task, deps) = call.into().into_task(op);
    let key = Key::from(format!("{op}-{}", uuid::Uuid::new_v4().simple()).as_str());
    Delayed(Arc::new(Inner {
        key,
        task: Some(task),
        deps,
        _handle: None,
    }))
}

impl Delayed {
    /// A delayed value standing for data already on the cluster.
    pub fn from_remote(handle: RemoteData) -> Delayed {
        Delayed(Arc::new(Inner {
            key: handle.key().clone(),
            task: None,
            deps: vec![],
            _handle: Some(Arc::new(handle)),
        }))
    }

    /// The key its result will have.
    pub fn key(&self) -> &Key {
        &self.0.key
    }

    /// Builds the graph, runs it and fetches the result.
    pub fn compute(&self, client: &Client) -> Result<Chunk> {
        Ok(client.compute(&[self])?.pop().expect("one value"))
    }

    /// Computes a scalar result as a float.
    pub fn compute_f64(&self, client: &Client) -> Result<f64> {
        crate::chunk::to_f64(&self.compute(client)?)
    }
}

/// Adds every task reachable from `roots` to `graph` (without recursion: chains may be long).
pub(super) fn add_to(graph: &mut Graph, roots: &[Delayed]) {
    let mut seen: FxHashSet<Key> = graph.nodes.keys().cloned().collect();
    let mut stack: Vec<&Delayed> = roots.iter().collect();
    while let Some(d) = stack.pop() {
        if !seen.insert(d.0.key.clone()) {
            continue;
        }
        if let Some(t) = &d.0.task {
            graph.insert(d.0.key.clone(), t.clone());
        }
        stack.extend(d.0.deps.iter());
    }
}

/// The graph of `values` and their keys.
pub(super) fn collect(values: &[&Delayed]) -> (Graph, Vec<Key>) {
    let mut graph = Graph::new();
    let roots: Vec<Delayed> = values.iter().map(|d| (*d).clone()).collect();
    add_to(&mut graph, &roots);
    (graph, roots.iter().map(|d| d.key().clone()).collect())
}
