//! The Pool of the 2015 prototype: `map` and `apply` return handles to data
//! that stays on the workers, usable as inputs to later calls and graphs.

use std::fmt::Write as _;

use super::{Call, Client, RemoteData};
use crate::error::Result;
use crate::graph::Graph;
use crate::key::Key;

/// Calls per submission of [`Pool::map`].
const MAP_BATCH: usize = 10_000;

/// Runs ops on the cluster and hands back [`RemoteData`] handles.
#[derive(Clone)]
pub struct Pool {
    client: Client,
}

impl Pool {
    pub(super) fn new(client: Client) -> Self {
        Pool { client }
    }

    /// Calls `op` once per item; each item is one argument or a [`Call`].
    /// Returns at once with one handle per call; results compute in the background.
    ///
    /// The calls go in submissions of 10,000, so the cluster starts on
    /// the first while the rest are built and planned. If one is refused, the
    /// error is returned and the calls already submitted are released.
    pub fn map<I>(&self, op: &str, items: I) -> Result<Vec<RemoteData>>
    where
        I: IntoIterator,
        I::Item: Into<Call>,
    {
        let mut name = format!("{op}-{}-", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let prefix = name.len();
        let mut items = items.into_iter().enumerate().peekable();
        let mut handles = Vec::with_capacity(items.size_hint().0);
        while items.peek().is_some() {
            let size = MAP_BATCH.min(items.size_hint().0);
            let mut graph = Graph::new();
            graph.nodes.reserve(size);
            let mut keys = Vec::with_capacity(size);
            for (i, item) in items.by_ref().take(MAP_BATCH) {
                name.truncate(prefix);
                let _ = write!(name, "{i}");
                let key = Key::from(name.as_str());
                let (task, deps) = item.into().into_task(op);
                if !deps.is_empty() {
                    super::delayed::add_to(&mut graph, &deps);
                }
                graph.insert(key.clone(), task);
                keys.push(key);
            }
            handles.extend(self.client.submit(graph, &keys)?);
        }
        Ok(handles)
    }

    /// Calls `op` once and returns a handle to the result.
    pub fn apply(&self, op: &str, call: impl Into<Call>) -> Result<RemoteData> {
        Ok(self
            .map(op, [call.into()])?
            .pop()
            .expect("one call, one handle"))
    }

    /// Releases the handles now, in one request (dropping them one by one does the same).
    pub fn delete(&self, handles: impl IntoIterator<Item = RemoteData>) {
        RemoteData::release_all(handles);
    }
}
