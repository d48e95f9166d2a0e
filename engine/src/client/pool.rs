//! The Pool of the 2015 prototype: `map` and `apply` return handles to data
//! that stays on the workers, usable as inputs to later calls and graphs.

use std::fmt::Write as _;

use super::{Call, Client, RemoteData};
use crate::error::Result;
use crate::graph::Graph;
use crate::key::Key;

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
    pub fn map<I>(&self, op: &str, items: I) -> Result<Vec<RemoteData>>
    where
        I: IntoIterator,
        I::Item: Into<Call>,
    {
        let mut name = format!("{op}-{}-", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let prefix = name.len();
        let items = items.into_iter();
        let mut graph = Graph::new();
        graph.nodes.reserve(items.size_hint().0);
        let mut keys = Vec::with_capacity(items.size_hint().0);
        for (i, item) in items.enumerate() {
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
        self.client.submit(graph, &keys)
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
