//! Pieces every Quiver Flight service shares: keys from descriptors and
//! tickets, flight infos, JSON action bodies and replies, and the whole
//! body of a `DoPut` told from one its client cut off.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use arrow_flight::{FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use bytes::Bytes;
use futures::{Stream, TryStreamExt, stream};
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};

use quiver_engine::{Chunk, Key, chunk};

/// The descriptor's single path element as a key.
pub fn descriptor_key(d: &FlightDescriptor) -> Result<Key, Status> {
    if d.r#type != arrow_flight::flight_descriptor::DescriptorType::Path as i32 || d.path.len() != 1
    {
        return Err(Status::invalid_argument(
            "a key is named by a PATH descriptor with exactly one element",
        ));
    }
    Key::new(&d.path[0])
        .ok_or_else(|| Status::invalid_argument("the key in the descriptor is empty"))
}

/// A ticket's bytes as a key.
pub fn ticket_key(t: &Ticket) -> Result<Key, Status> {
    let s = std::str::from_utf8(&t.ticket)
        .map_err(|_| Status::invalid_argument("a ticket must be a UTF-8 key"))?;
    Key::new(s).ok_or_else(|| Status::invalid_argument("the ticket is empty"))
}

/// Flight info for a chunk held at `locations`.
pub fn flight_info(key: &Key, c: &Chunk, locations: &[String]) -> Result<FlightInfo, Status> {
    let mut info = FlightInfo::new()
        .try_with_schema(c.schema_ref())
        .map_err(|e| Status::internal(e.to_string()))?
        .with_descriptor(FlightDescriptor::new_path(vec![key.to_string()]))
        .with_total_records(c.num_rows() as i64)
        .with_total_bytes(chunk::nbytes(c) as i64);
    for l in locations {
        info = info.with_endpoint(endpoint(key.as_str(), l));
    }
    Ok(info)
}

/// Where to get `key`: from the Flight service at `address` (`host:port`).
pub fn endpoint(key: &str, address: &str) -> FlightEndpoint {
    FlightEndpoint::new()
        .with_ticket(Ticket::new(key.to_string()))
        .with_location(format!("{}://{address}", crate::tls::location_scheme()))
}

/// A boxed stream of Flight replies.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A one-message action reply holding `v` as JSON.
pub fn json_result<T: serde::Serialize>(
    v: &T,
) -> Result<Response<BoxStream<arrow_flight::Result>>, Status> {
    let body = serde_json::to_vec(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(Box::pin(stream::iter([Ok(
        arrow_flight::Result { body: body.into() },
    )]))))
}

/// Decodes an action's JSON body, naming the action on failure.
pub fn parse<T: serde::de::DeserializeOwned>(action: &str, body: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(body)
        .map_err(|e| Status::invalid_argument(format!("bad JSON body for '{action}': {e}")))
}

/// The Flight handshake: the token check already passed (it runs before every
/// method); the reply carries `authorization: Bearer <token>` for clients
/// that authenticated with Basic credentials and use the bearer afterwards.
pub fn handshake<T: Send + 'static>() -> Response<BoxStream<T>> {
    let mut r = Response::new(Box::pin(stream::empty()) as BoxStream<T>);
    if let Some(v) = crate::auth::bearer_header() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// The route whose bodies `WholeBody` watches.
const DO_PUT: &str = "/arrow.flight.protocol.FlightService/DoPut";

/// Set once a `DoPut` body has reached its end: tonic reads a body its client
/// cancelled as ended too, so a cut-off put would look whole without it.
#[derive(Clone, Default)]
struct BodyEnded(Arc<AtomicBool>);

/// Wraps a Flight service so its `DoPut` handlers can tell (`read_put`)
/// a body that ended from one whose client cancelled it.
#[derive(Clone)]
pub struct WholeBody<S>(pub S);

impl<S: NamedService> NamedService for WholeBody<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: Service<http::Request<Body>>> Service<http::Request<Body>> for WholeBody<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> S::Future {
        if req.uri().path() != DO_PUT {
            return self.0.call(req);
        }
        let ended = BodyEnded::default();
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ended.clone());
        let body = Body::new(Watched { body, ended });
        self.0.call(http::Request::from_parts(parts, body))
    }
}

/// A request body that marks its end.
struct Watched {
    body: Body,
    ended: BodyEnded,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended.0.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.body.is_end_stream();
        if end {
            self.ended.0.store(true, Ordering::Release);
        }
        end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Reads a whole `DoPut`: its key (the first message's PATH descriptor), that
/// descriptor, and its messages. A body its client cut off is refused with
/// `CANCELLED`, not taken for a shorter chunk.
pub async fn read_put(
    req: Request<Streaming<FlightData>>,
) -> Result<(Key, FlightDescriptor, Vec<FlightData>), Status> {
    let ended = req.extensions().get::<BodyEnded>().cloned();
    let mut msgs: Vec<FlightData> = req.into_inner().try_collect().await?;
    if ended.is_some_and(|e| !e.0.load(Ordering::Acquire)) {
        return Err(Status::cancelled(
            "the put's stream was cut off before its end: nothing was kept",
        ));
    }
    let (key, descriptor) = put_key(&mut msgs)?;
    Ok((key, descriptor, msgs))
}

/// A put's key and descriptor, taken from its first message.
pub fn put_key(msgs: &mut [FlightData]) -> Result<(Key, FlightDescriptor), Status> {
    let descriptor = msgs.first_mut().and_then(|m| m.flight_descriptor.take());
    let descriptor = descriptor.ok_or_else(|| {
        Status::invalid_argument("the first message of a DoPut must carry a PATH descriptor [key]")
    })?;
    Ok((descriptor_key(&descriptor)?, descriptor))
}
