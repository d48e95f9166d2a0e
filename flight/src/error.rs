//! The network layer's errors and their mapping onto Flight status codes.

use quiver_engine::Error as EngineError;
use tonic::Status;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong on the network side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A peer, the center or a client answered with an error.
    #[error("{context}: {status}")]
    Remote {
        /// What we were doing.
        context: String,
        /// What came back.
        #[source]
        status: Box<Status>,
    },
    /// Could not connect to an address.
    #[error("cannot reach {address}: {reason}")]
    Connect {
        /// The address.
        address: String,
        /// Why.
        reason: String,
    },
    /// A request or reply did not follow docs/PROTOCOL.md.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Local I/O.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A [`Error::Remote`] with context.
    pub fn remote(context: impl Into<String>, status: Status) -> Self {
        Error::Remote {
            context: context.into(),
            status: Box::new(status),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Protocol(format!("bad JSON: {e}"))
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::Engine(e.into())
    }
}

/// Maps an engine error to the Flight status a client can act on.
pub fn engine_status(e: &EngineError) -> Status {
    let msg = e.to_string();
    match e {
        EngineError::InvalidGraph { .. }
        | EngineError::MalformedGraph(_)
        | EngineError::UnknownOp { .. }
        | EngineError::Op { .. }
        | EngineError::Arrow(_)
        | EngineError::Json(_) => Status::invalid_argument(msg),
        EngineError::KeyNotFound { .. } => Status::not_found(msg),
        EngineError::TaskFailed { .. } => Status::failed_precondition(msg),
        EngineError::Lost { .. } => Status::data_loss(msg),
        EngineError::Timeout { .. } => Status::deadline_exceeded(msg),
        EngineError::Unavailable(_) => Status::unavailable(msg),
        EngineError::Spill { .. } => Status::resource_exhausted(msg),
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::Engine(e) => engine_status(&e),
            Error::Remote { context, status } => {
                Status::new(status.code(), format!("{context}: {}", status.message()))
            }
            Error::Connect { .. } => Status::unavailable(e.to_string()),
            Error::Protocol(_) => Status::invalid_argument(e.to_string()),
            Error::Io { .. } => Status::internal(e.to_string()),
        }
    }
}
