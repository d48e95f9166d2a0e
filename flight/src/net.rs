//! gRPC plumbing shared by every Quiver process: servers and channels tuned
//! for multi-megabyte chunks (no 4 MB message limit, wide HTTP/2 windows,
//! large frames), address parsing, and small helpers for Flight calls.

use std::net::SocketAddr;
use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{Action, FlightData, Ticket};
use futures::TryStreamExt;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};

use crate::auth::{AddToken, RequireToken};
use crate::error::{Error, Result};
use quiver_engine::Key;
use tonic::service::interceptor::InterceptedService;

/// Largest message either side accepts by default: a chunk travels as one
/// message, and the largest chunk (2^34 float64s) is 128 GiB.
pub const MAX_MESSAGE: usize = 128 << 30;

static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Sets this process's message limit (`--max-message`) before its first
/// server or connection; a bigger message is refused with `OUT_OF_RANGE`.
pub fn set_max_message(bytes: usize) -> bool {
    MAX.set(bytes).is_ok()
}

/// This process's message limit.
pub fn max_message() -> usize {
    *MAX.get_or_init(|| MAX_MESSAGE)
}
/// HTTP/2 stream window: large enough that a chunk streams without stalls.
const STREAM_WINDOW: u32 = 64 << 20;
/// HTTP/2 connection window.
const CONNECTION_WINDOW: u32 = 256 << 20;
/// Largest HTTP/2 frame a peer may send us. A body is copied out of each
/// frame as it arrives, so the transport's read buffer is reused frame after
/// frame and stays in cache, where 16 MB frames each needed fresh memory
/// (`quiver-bench four-nodes`, 16-64 MB pairwise: 0.43-0.59 of the ceiling
/// with 16 MB frames, 0.61-0.77 with 256 KiB ones). 1 MiB frames, a quarter
/// as many as 256 KiB ones, were ahead in most scenarios of alternated runs
/// (docs/BENCHMARKS-HISTORY.md).
const FRAME: u32 = 1 << 20;

/// A Flight client on a tuned channel, carrying the process's token.
pub type FlightClient = FlightServiceClient<InterceptedService<Channel, AddToken>>;

/// A server builder with Quiver's transport settings (and TLS, if this
/// process has a certificate).
pub fn server() -> Result<Server> {
    let builder = Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(FRAME)
        .tcp_nodelay(true);
    match crate::tls::server_config() {
        Some(tls) => builder
            .tls_config(tls)
            .map_err(|e| Error::Protocol(format!("TLS certificate or key refused: {e}"))),
        None => Ok(builder),
    }
}

/// Wraps a Flight service with message limits lifted and the process's
/// token required.
pub fn service<S: FlightService>(
    svc: S,
) -> InterceptedService<FlightServiceServer<S>, RequireToken> {
    let server = FlightServiceServer::new(svc)
        .max_decoding_message_size(max_message())
        .max_encoding_message_size(max_message());
    InterceptedService::new(server, RequireToken::from_process())
}

/// Binds `host:port` (port 0 picks a free one), with a message naming the address on failure.
pub async fn bind(host: &str, port: u16) -> Result<(TcpIncoming, SocketAddr)> {
    let addr = format!("{host}:{port}");
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| Error::Io {
            context: if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("cannot listen on {addr}: the port is in use")
            } else {
                format!("cannot listen on {addr}")
            },
            source: e,
        })?;
    let local = listener.local_addr().map_err(|e| Error::Io {
        context: "local address".into(),
        source: e,
    })?;
    Ok((TcpIncoming::from(listener).with_nodelay(Some(true)), local))
}

/// Strips a `grpc://`, `grpc+tcp://` or `grpc+tls://` scheme; keeps `host:port`.
pub fn host_port(address: &str) -> &str {
    ["grpc+tcp://", "grpc+tls://", "grpc://"]
        .iter()
        .find_map(|p| address.strip_prefix(p))
        .unwrap_or(address)
}

/// `address` as `host:port`, or an error saying it is not one: a missing
/// port is a mistake to report at once, not a connection to retry.
pub fn check_address(address: &str) -> Result<&str> {
    let hp = host_port(address);
    match hp.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(hp),
        _ => Err(Error::Connect {
            address: hp.to_string(),
            reason: "not a host:port address (a port number is needed, e.g. 127.0.0.1:8787)".into(),
        }),
    }
}

/// Connects to the Flight service at `address` (`host:port` or `grpc://host:port`).
pub async fn connect(address: &str) -> Result<FlightClient> {
    Ok(client(channel(address).await?))
}

/// A Flight client on `channel`, carrying the process's token.
pub fn client(channel: Channel) -> FlightClient {
    FlightServiceClient::with_interceptor(channel, AddToken::from_process())
        .max_decoding_message_size(max_message())
        .max_encoding_message_size(max_message())
}

/// A tuned channel to the Flight service at `address` (`host:port` or `grpc://host:port`).
pub async fn channel(address: &str) -> Result<Channel> {
    let (endpoint, hp) = endpoint(address)?;
    endpoint.connect().await.map_err(|e| Error::Connect {
        address: hp,
        reason: crate::error::chain(&e),
    })
}

/// A Flight client on a tuned channel to `address` that connects on its
/// first call, and again after a failure.
pub fn lazy_client(address: &str) -> Result<FlightClient> {
    Ok(client(lazy_channel(address)?))
}

/// A tuned channel to `address` that connects on its first call, and again
/// after a failure.
pub fn lazy_channel(address: &str) -> Result<Channel> {
    Ok(endpoint(address)?.0.connect_lazy())
}

/// The tuned endpoint for `address`, and its `host:port`.
fn endpoint(address: &str) -> Result<(Endpoint, String)> {
    let hp = check_address(address)?;
    let fail = |reason: String| Error::Connect {
        address: hp.to_string(),
        reason,
    };
    let scheme = if crate::tls::client_enabled() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{hp}"))
        .map_err(|e| fail(format!("not a host:port address ({e})")))?;
    if let Some(tls) = crate::tls::client_config() {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| fail(format!("TLS settings refused: {e}")))?;
    }
    let endpoint = endpoint
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(FRAME)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        // A peer that hangs with its connections open (a stopped process)
        // would hold a call for ever: a ping it leaves unanswered closes the
        // connection, and the call fails as unreachable.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    Ok((endpoint, hp.to_string()))
}

/// How often a connection with calls under way pings its peer.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may go unanswered before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a control action may take before the peer is deemed unresponsive
/// (a port that accepts connections but does not speak Flight never answers).
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Calls action `name` with a JSON body and returns the first result's body (empty if none).
pub async fn action(client: &mut FlightClient, name: &str, body: Vec<u8>) -> Result<bytes::Bytes> {
    action_within(client, name, body, ACTION_TIMEOUT).await
}

/// As [`action`], giving up after `timeout`.
pub async fn action_within(
    client: &mut FlightClient,
    name: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<bytes::Bytes> {
    let req = Action {
        r#type: name.to_string(),
        body: body.into(),
    };
    let call = async {
        let mut stream = client
            .do_action(req)
            .await
            .map_err(|s| Error::remote(format!("action {name}"), s))?
            .into_inner();
        let first = stream
            .try_next()
            .await
            .map_err(|s| Error::remote(format!("action {name}"), s))?;
        Ok(first.map(|r| r.body).unwrap_or_default())
    };
    tokio::time::timeout(timeout, call).await.map_err(|_| {
        Error::Protocol(format!(
            "no answer to action '{name}' within {:.0}s",
            timeout.as_secs_f64()
        ))
    })?
}

/// Checks that a Quiver center answers at `address` within a few seconds.
pub async fn probe_center(
    client: &mut FlightClient,
    address: &str,
) -> Result<crate::protocol::ClusterStatus> {
    let fail = |reason: String| Error::Connect {
        address: address.to_string(),
        reason,
    };
    let body = action_within(client, "cluster", b"null".to_vec(), Duration::from_secs(10))
        .await
        .map_err(|e| match &e {
            Error::Remote { status, .. } if status.code() == tonic::Code::Unauthenticated => {
                fail(format!(
                    "the center refused this process's token: {}",
                    status.message()
                ))
            }
            _ => fail(format!("not a Quiver center: {e}")),
        })?;
    serde_json::from_slice(&body).map_err(|e| fail(format!("not a Quiver center: {e}")))
}

/// Calls action `name` with a JSON-encoded body and decodes a JSON reply.
pub async fn action_json<T: serde::de::DeserializeOwned>(
    client: &mut FlightClient,
    name: &str,
    body: &impl serde::Serialize,
) -> Result<T> {
    let reply = action(client, name, serde_json::to_vec(body)?).await?;
    serde_json::from_slice(&reply).map_err(|e| Error::Protocol(format!("reply to {name}: {e}")))
}

/// `DoGet` of `ticket` on `channel`, collected, each large body in an
/// aligned buffer of its own ([`crate::direct::get`]).
pub async fn get(channel: Channel, ticket: &[u8]) -> Result<Vec<FlightData>> {
    crate::direct::get(channel, ticket)
        .await
        .map_err(|s| Error::remote(format!("get '{}'", String::from_utf8_lossy(ticket)), s))
}

/// `DoGet` of `ticket` through tonic, collected.
pub async fn do_get(client: &mut FlightClient, ticket: &[u8]) -> Result<Vec<FlightData>> {
    let what = || format!("get '{}'", String::from_utf8_lossy(ticket));
    let stream = client
        .do_get(Ticket {
            ticket: bytes::Bytes::copy_from_slice(ticket),
        })
        .await
        .map_err(|s| Error::remote(what(), s))?
        .into_inner();
    stream
        .try_collect()
        .await
        .map_err(|s| Error::remote(what(), s))
}

/// `DoExchange` naming several keys (a PATH descriptor): their chunks'
/// messages, in order; with `combine`, runs of them may come as one batch
/// (`codec::split`).
pub async fn get_many(
    client: &mut FlightClient,
    keys: &[Key],
    combine: bool,
) -> Result<Vec<FlightData>> {
    let what = || format!("get {} keys", keys.len());
    let request = FlightData {
        flight_descriptor: Some(arrow_flight::FlightDescriptor::new_path(
            keys.iter().map(|k| k.as_str().to_string()).collect(),
        )),
        app_metadata: if combine {
            crate::protocol::COMBINE.into()
        } else {
            Default::default()
        },
        ..Default::default()
    };
    let stream = client
        .do_exchange(futures::stream::iter([request]))
        .await
        .map_err(|s| Error::remote(what(), s))?
        .into_inner();
    stream
        .try_collect()
        .await
        .map_err(|s| Error::remote(what(), s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_says_each_cause_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let e = channel(&format!("127.0.0.1:{port}")).await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("refused"), "{msg}");
        let parts: Vec<&str> = msg.split(": ").collect();
        assert!(
            parts.windows(2).all(|w| w[0] != w[1]),
            "a cause repeated: {msg}"
        );
    }

    #[tokio::test]
    async fn an_address_without_a_port_is_refused_before_connecting() {
        for bad in [
            "localhost",
            "grpc://10.0.0.1",
            ":8787",
            "host:http",
            "host:70000",
        ] {
            let msg = channel(bad).await.unwrap_err().to_string();
            assert!(msg.contains("not a host:port address"), "{bad}: {msg}");
        }
        assert_eq!(check_address("grpc://node1:8787").unwrap(), "node1:8787");
        assert_eq!(check_address("[::1]:8787").unwrap(), "[::1]:8787");
    }
}
