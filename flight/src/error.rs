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
    #[error("{context}: {}", status_text(.status))]
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

/// What a status says, for people: its message (its code's description when
/// it has none), then the innermost cause the transport gave. tonic's own
/// `Display` lists code, message and the source's debug form.
fn status_text(status: &Status) -> String {
    let text = match status.message() {
        "" => status.code().description(),
        message => message,
    };
    let mut cause = std::error::Error::source(status);
    while let Some(deeper) = cause.and_then(|c| c.source()) {
        cause = Some(deeper);
    }
    match cause.map(|c| c.to_string()) {
        Some(cause) if !text.contains(&cause) => format!("{text} ({cause})"),
        _ => text.to_string(),
    }
}

/// An error and its sources, each once: the transport's layers often repeat
/// their source's text ("tcp connect error: tcp connect error: …").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        src = s.source();
    }
    parts.join(": ")
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport error with a cause beneath it, as hyper's are.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn a_remote_error_reads_as_a_sentence() {
        let mut status = Status::internal("h2 protocol error: http2 error");
        let cause = Layer("frame with invalid size", None);
        status.set_source(std::sync::Arc::new(Layer(
            "http2 error",
            Some(Box::new(cause)),
        )));
        let e = Error::remote("action cluster", status);
        assert_eq!(
            e.to_string(),
            "action cluster: h2 protocol error: http2 error (frame with invalid size)"
        );
        let e = Error::remote("get 'x'", Status::not_found("no key 'x'"));
        assert_eq!(e.to_string(), "get 'x': no key 'x'");
        let e = Error::remote("get 'x'", Status::unavailable(""));
        assert_eq!(
            e.to_string(),
            "get 'x': The service is currently unavailable"
        );
    }
}
