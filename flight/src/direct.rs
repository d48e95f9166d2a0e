//! The worker's `DoGet`, served beneath tonic: each message's IPC body goes to
//! the transport as the `Bytes` it already is (the encoded chunk, or a slice of
//! its mapped spill file), where tonic's prost encoder would first copy it into
//! a fresh buffer of its own. Every other call reaches the generated Flight
//! service unchanged; clients see ordinary gRPC either way.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow_flight::{FlightData, Ticket};
use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use crate::worker::WorkerCore;

/// The route served here.
const DO_GET: &str = "/arrow.flight.protocol.FlightService/DoGet";
/// Protobuf tag of `FlightData.data_body` (field 1000, length-delimited).
const BODY_TAG: u64 = (1000 << 3) | 2;
/// A ticket is a key: anything larger is not a `DoGet` request of ours.
const MAX_REQUEST: usize = 1 << 20;

/// Wraps the worker's Flight service, answering `DoGet` itself.
#[derive(Clone)]
pub struct DirectGet<S> {
    inner: S,
    core: Arc<WorkerCore>,
}

impl<S> DirectGet<S> {
    /// `inner` serves everything but `DoGet`, which `core` answers.
    pub fn new(inner: S, core: Arc<WorkerCore>) -> Self {
        DirectGet { inner, core }
    }
}

impl<S> NamedService for DirectGet<S> {
    const NAME: &'static str = "arrow.flight.protocol.FlightService";
}

impl<S, B> Service<http::Request<Body>> for DirectGet<S>
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != DO_GET {
            let call = self.inner.call(req);
            return Box::pin(async move { call.await.map(|r| r.map(Body::new)) });
        }
        let core = self.core.clone();
        Box::pin(async move { Ok(do_get(core, req).await.unwrap_or_else(Status::into_http)) })
    }
}

async fn do_get(
    core: Arc<WorkerCore>,
    req: http::Request<Body>,
) -> Result<http::Response<Body>, Status> {
    crate::auth::check_header(req.headers().get("authorization").map(|v| v.as_bytes()))?;
    let body = Limited::new(req.into_body(), MAX_REQUEST)
        .collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("reading the DoGet request: {e}")))?
        .to_bytes();
    let ticket = match body.first() {
        Some(0) if body.len() >= 5 => {
            let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
            if body.len() != 5 + len {
                return Err(Status::invalid_argument(
                    "a DoGet request must be exactly one gRPC message",
                ));
            }
            Ticket::decode(body.slice(5..))
                .map_err(|e| Status::invalid_argument(format!("not a Flight Ticket: {e}")))?
        }
        Some(_) => {
            return Err(Status::unimplemented(
                "compressed requests are not supported; send identity encoding",
            ));
        }
        None => return Err(Status::invalid_argument("an empty DoGet request")),
    };
    let key = crate::service::ticket_key(&ticket)?;
    let msgs = core.get_messages(key).await?;
    let mut frames = Vec::with_capacity(2 * msgs.len() + 1);
    for m in msgs {
        frames.extend(frame(m)?);
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    frames.push(Frame::trailers(trailers));
    let body = StreamBody::new(futures::stream::iter(
        frames.into_iter().map(Ok::<_, Infallible>),
    ));
    http::Response::builder()
        .header("content-type", "application/grpc")
        .body(Body::new(body))
        .map_err(|e| Status::internal(format!("DoGet response: {e}")))
}

/// One `FlightData` as a gRPC message: a small head (length prefix, the
/// other fields, the body's tag and length) and the body itself, uncopied.
fn frame(mut m: FlightData) -> Result<Vec<Frame<Bytes>>, Status> {
    let body = std::mem::take(&mut m.data_body);
    let head_len = m.encoded_len();
    let body_field = if body.is_empty() {
        0
    } else {
        prost::length_delimiter_len(BODY_TAG as usize)
            + prost::length_delimiter_len(body.len())
            + body.len()
    };
    let total = head_len + body_field;
    let limit = crate::net::max_message().min(u32::MAX as usize);
    if total > limit {
        return Err(Status::out_of_range(format!(
            "a message of {total} bytes is over the limit of {limit} bytes"
        )));
    }
    let mut head = BytesMut::with_capacity(5 + head_len + 20);
    head.put_u8(0);
    head.put_u32(total as u32);
    m.encode(&mut head)
        .map_err(|e| Status::internal(format!("encoding a message head: {e}")))?;
    if body.is_empty() {
        return Ok(vec![Frame::data(head.freeze())]);
    }
    prost::encoding::encode_varint(BODY_TAG, &mut head);
    prost::encoding::encode_varint(body.len() as u64, &mut head);
    Ok(vec![Frame::data(head.freeze()), Frame::data(body)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_message_decodes_as_the_original() {
        let m = FlightData {
            data_header: Bytes::from_static(b"header"),
            app_metadata: Bytes::from_static(b"meta"),
            data_body: Bytes::from(vec![7u8; 100_000]),
            ..Default::default()
        };
        let frames = frame(m.clone()).unwrap();
        assert_eq!(frames.len(), 2);
        let body_ptr = frames[1].data_ref().unwrap().as_ptr();
        assert_eq!(
            body_ptr,
            m.data_body.as_ptr(),
            "the body must not be copied"
        );
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend_from_slice(f.data_ref().unwrap());
        }
        assert_eq!(wire[0], 0);
        let len = u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, wire.len() - 5);
        assert_eq!(FlightData::decode(&wire[5..]).unwrap(), m);
        let empty = FlightData {
            data_header: Bytes::from_static(b"schema"),
            ..Default::default()
        };
        let frames = frame(empty.clone()).unwrap();
        assert_eq!(frames.len(), 1);
        let wire = frames[0].data_ref().unwrap();
        assert_eq!(FlightData::decode(&wire[5..]).unwrap(), empty);
    }
}
