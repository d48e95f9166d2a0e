//! The network layer's errors, their mapping onto Flight status codes, and
//! the engine errors those statuses carry back to Rust clients.

use quiver_engine::{Error as EngineError, Key};
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

/// Binary metadata that carries an engine error whole, so that a Rust client
/// gets back the very variant the cluster raised, as from an embedded
/// cluster (other clients read the status code and message).
const ENGINE_ERROR: &str = "quiver-error-bin";

/// Past this size the metadata is left out: headers are bounded (16 KiB by
/// default), and the message already carries the text once.
const ENGINE_ERROR_MAX: usize = 4096;

/// The engine errors that cross the wire as themselves.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WireError {
    InvalidGraph { key: Key, reason: String },
    MalformedGraph { message: String },
    UnknownOp { op: String },
    Op { op: String, reason: String },
    KeyNotFound { key: Key },
    TaskFailed { key: Key, error: String },
    Lost { key: Key, reason: String },
    Timeout { key: Key, seconds: f64 },
    Unavailable { message: String },
}

impl WireError {
    fn of(e: &EngineError) -> Option<WireError> {
        use EngineError as E;
        Some(match e {
            E::InvalidGraph { key, reason } => WireError::InvalidGraph {
                key: key.clone(),
                reason: reason.clone(),
            },
            E::MalformedGraph(message) => WireError::MalformedGraph {
                message: message.clone(),
            },
            E::UnknownOp { op } => WireError::UnknownOp { op: op.clone() },
            E::Op { op, reason } => WireError::Op {
                op: op.clone(),
                reason: reason.clone(),
            },
            E::KeyNotFound { key } => WireError::KeyNotFound { key: key.clone() },
            E::TaskFailed { key, error } => WireError::TaskFailed {
                key: key.clone(),
                error: error.clone(),
            },
            E::Lost { key, reason } => WireError::Lost {
                key: key.clone(),
                reason: reason.clone(),
            },
            E::Timeout { key, seconds } => WireError::Timeout {
                key: key.clone(),
                seconds: *seconds,
            },
            E::Unavailable(message) => WireError::Unavailable {
                message: message.clone(),
            },
            E::Spill { .. } | E::Arrow(_) | E::Json(_) => return None,
        })
    }

    fn into_engine(self) -> EngineError {
        use EngineError as E;
        match self {
            WireError::InvalidGraph { key, reason } => E::InvalidGraph { key, reason },
            WireError::MalformedGraph { message } => E::MalformedGraph(message),
            WireError::UnknownOp { op } => E::UnknownOp { op },
            WireError::Op { op, reason } => E::Op { op, reason },
            WireError::KeyNotFound { key } => E::KeyNotFound { key },
            WireError::TaskFailed { key, error } => E::TaskFailed { key, error },
            WireError::Lost { key, reason } => E::Lost { key, reason },
            WireError::Timeout { key, seconds } => E::Timeout { key, seconds },
            WireError::Unavailable { message } => E::Unavailable(message),
        }
    }
}

/// The engine error a status from a Quiver process carries, if any.
pub fn engine_error(status: &Status) -> Option<EngineError> {
    let bytes = status.metadata().get_bin(ENGINE_ERROR)?.to_bytes().ok()?;
    serde_json::from_slice::<WireError>(&bytes)
        .ok()
        .map(WireError::into_engine)
}

/// Maps an engine error to the Flight status a client can act on.
pub fn engine_status(e: &EngineError) -> Status {
    with_engine_error(code_status(e), e)
}

/// `status` carrying `e` for Rust clients (see [`engine_error`]).
pub fn with_engine_error(mut status: Status, e: &EngineError) -> Status {
    let wire = WireError::of(e).and_then(|w| serde_json::to_vec(&w).ok());
    if let Some(json) = wire.filter(|j| j.len() <= ENGINE_ERROR_MAX) {
        status.metadata_mut().insert_bin(
            ENGINE_ERROR,
            tonic::metadata::MetadataValue::from_bytes(&json),
        );
    }
    status
}

fn code_status(e: &EngineError) -> Status {
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
                let message = format!("{context}: {}", status.message());
                let mut passed_on = Status::new(status.code(), message);
                // An engine error it carries reaches the Rust client as itself.
                if let Some(e) = status.metadata().get_bin(ENGINE_ERROR) {
                    passed_on.metadata_mut().insert_bin(ENGINE_ERROR, e.clone());
                }
                passed_on
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
    fn an_engine_error_crosses_the_wire_as_itself() {
        let key = Key::from("k'ey");
        let errors = [
            EngineError::invalid(&key, "cycle: 'k'ey' depends on itself"),
            EngineError::MalformedGraph("not JSON".into()),
            EngineError::UnknownOp { op: "nope".into() },
            EngineError::op("slice", "rows 3..12 out of a chunk of 4"),
            EngineError::KeyNotFound { key: key.clone() },
            EngineError::TaskFailed {
                key: key.clone(),
                error: "op 'log' failed: é".into(),
            },
            EngineError::Lost {
                key: key.clone(),
                reason: "its worker died".into(),
            },
            EngineError::Timeout {
                key: key.clone(),
                seconds: 1.5,
            },
            EngineError::Unavailable("the driver stopped".into()),
        ];
        for e in errors {
            let status = engine_status(&e);
            assert_eq!(status.message(), e.to_string());
            // Through HTTP headers and back, as a client receives it.
            let http = status.clone().into_http::<tonic::body::Body>();
            let back = Status::from_header_map(http.headers()).unwrap();
            let got = engine_error(&back).expect("the error rides along");
            assert_eq!(format!("{got:?}"), format!("{e:?}"));
        }
        // Too long for a header: the code and message alone.
        let long = EngineError::op("x", "y".repeat(ENGINE_ERROR_MAX));
        assert!(engine_error(&engine_status(&long)).is_none());
        assert_eq!(engine_status(&long).code(), tonic::Code::InvalidArgument);
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
        let lost = EngineError::Lost {
            key: "x".into(),
            reason: "its worker died".into(),
        };
        let passed_on = Status::from(Error::remote("get 'x'", engine_status(&lost)));
        assert_eq!(passed_on.message(), format!("get 'x': {lost}"));
        assert!(matches!(
            engine_error(&passed_on),
            Some(EngineError::Lost { .. })
        ));
        let e = Error::remote("get 'x'", Status::unavailable(""));
        assert_eq!(
            e.to_string(),
            "get 'x': The service is currently unavailable"
        );
    }
}
