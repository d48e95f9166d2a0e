//! The engine's error type: one enum whose variants a caller can act on.

use crate::key::Key;

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong inside the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A graph was refused at submission; `key` names the offending task.
    #[error("invalid graph at key '{key}': {reason}")]
    InvalidGraph {
        /// The key whose task is wrong.
        key: Key,
        /// What is wrong with it.
        reason: String,
    },
    /// A graph as a whole could not be decoded.
    #[error("malformed graph: {0}")]
    MalformedGraph(String),
    /// No op of that name is registered.
    #[error("unknown op '{op}'")]
    UnknownOp {
        /// The op that was asked for.
        op: String,
    },
    /// An op refused its arguments or failed while running.
    #[error("op '{op}' failed: {reason}")]
    Op {
        /// The op that failed.
        op: String,
        /// Why.
        reason: String,
    },
    /// The key is not known to the cluster (never submitted, or released).
    #[error("key '{key}' not found")]
    KeyNotFound {
        /// The missing key.
        key: Key,
    },
    /// The task that computes a key failed (or a task it depends on did).
    #[error("task '{key}' failed: {error}")]
    TaskFailed {
        /// The key whose value cannot be produced.
        key: Key,
        /// The failure, as reported by the task or its failed dependency.
        error: String,
    },
    /// Data was lost and cannot be recomputed (e.g. scattered data on a dead worker).
    #[error("key '{key}' lost: {reason}")]
    Lost {
        /// The lost key.
        key: Key,
        /// How it was lost.
        reason: String,
    },
    /// Waiting for a key took longer than allowed.
    #[error("timed out after {seconds:.3}s waiting for '{key}'")]
    Timeout {
        /// The key waited for.
        key: Key,
        /// How long the wait lasted.
        seconds: f64,
    },
    /// The cluster (or its driver) is gone.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// Spilling to or reading from disk failed.
    #[error("spill I/O at {path}: {source}")]
    Spill {
        /// The spill file or directory.
        path: std::path::PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An Arrow kernel or IPC error.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// A JSON encoding error.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Shorthand for an [`Error::Op`].
    pub fn op(op: &str, reason: impl Into<String>) -> Self {
        Error::Op {
            op: op.to_string(),
            reason: reason.into(),
        }
    }

    /// Shorthand for an [`Error::InvalidGraph`].
    pub fn invalid(key: &Key, reason: impl Into<String>) -> Self {
        Error::InvalidGraph {
            key: key.clone(),
            reason: reason.into(),
        }
    }
}
