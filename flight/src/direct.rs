//! `DoGet` and `DoPut` beneath tonic, both ends.
//!
//! - Sending (a `DoGet`'s answer, a `DoPut`'s stream): each message's IPC
//!   body goes to the transport as the slices it already is (the chunk's own
//!   buffers, a slice of its mapped spill file, or the frames a put arrived
//!   in), where tonic's prost encoder would first copy it into a fresh buffer.
//! - Receiving: a large body is copied once, from the transport's frames into
//!   a 64-byte-aligned buffer of its exact size, where tonic would grow a
//!   buffer of its own and the arrays, landing unaligned in it, would need a
//!   second copy. A body to send on is kept as those frames, uncopied.
//! - Passing on (the center's `DoGet`): a holder's answer goes on frame by
//!   frame as it comes.
//!
//! A request stream its client cut off is the transport's error here, where
//! tonic would read it as ended. Every other call goes through the generated
//! Flight service; both ends speak ordinary gRPC.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow_flight::{FlightData, Ticket};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use prost::Message;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use quiver_engine::Key;

use crate::auth::AddToken;
use crate::codec;

/// The routes served here.
const DO_GET: &str = "/arrow.flight.protocol.FlightService/DoGet";
const DO_PUT: &str = "/arrow.flight.protocol.FlightService/DoPut";
/// Protobuf tag of `FlightData.data_body` (field 1000, length-delimited).
const BODY_TAG: u64 = (1000 << 3) | 2;
/// A ticket is a key: anything larger is not a `DoGet` request of ours.
const MAX_REQUEST: usize = 1 << 20;
/// Bodies from this size on are read straight into an aligned buffer, or
/// kept as the frames they came in; smaller messages are decoded whole.
const DIRECT_BODY: usize = 64 << 10;

/// How a large body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bodies {
    /// Copied into a 64-byte-aligned buffer of its own, for arrays to use.
    Aligned,
    /// Kept as the transport's frames, uncopied, to be sent on.
    AsReceived,
}

/// The calls a Flight service answers beneath tonic.
pub trait Calls: Send + Sync + 'static {
    /// How a put's large bodies are read.
    const PUT_BODIES: Bodies;

    /// The answer to a `DoGet` of `key` sent with `headers`: the chunk's
    /// messages ([`answer`]), or another service's answer passed on.
    fn get(
        self: Arc<Self>,
        key: Key,
        headers: http::HeaderMap,
    ) -> impl Future<Output = Result<http::Response<Body>, Status>> + Send;

    /// Takes a put sent with `headers`: `msgs` yields its messages once all
    /// have arrived (the key in the first one's descriptor), or why they did
    /// not. The reply's `app_metadata`.
    fn put(
        self: Arc<Self>,
        headers: http::HeaderMap,
        msgs: impl Future<Output = Result<Vec<codec::Message>, Status>> + Send,
    ) -> impl Future<Output = Result<Bytes, Status>> + Send;
}

/// Wraps a Flight service, answering `DoGet` and `DoPut` itself.
pub struct Direct<S, C> {
    inner: S,
    calls: Arc<C>,
}

impl<S: Clone, C> Clone for Direct<S, C> {
    fn clone(&self) -> Self {
        Direct {
            inner: self.inner.clone(),
            calls: self.calls.clone(),
        }
    }
}

impl<S, C> Direct<S, C> {
    /// `inner` serves every call that `calls` does not answer.
    pub fn new(inner: S, calls: Arc<C>) -> Self {
        Direct { inner, calls }
    }
}

impl<S, C> NamedService for Direct<S, C> {
    const NAME: &'static str = "arrow.flight.protocol.FlightService";
}

impl<S, B, C> Service<http::Request<Body>> for Direct<S, C>
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
    C: Calls,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let calls = self.calls.clone();
        match req.uri().path() {
            DO_GET => {
                Box::pin(
                    async move { Ok(do_get(calls, req).await.unwrap_or_else(Status::into_http)) },
                )
            }
            DO_PUT => {
                Box::pin(
                    async move { Ok(do_put(calls, req).await.unwrap_or_else(Status::into_http)) },
                )
            }
            _ => {
                let call = self.inner.call(req);
                Box::pin(async move { call.await.map(|r| r.map(Body::new)) })
            }
        }
    }
}

async fn do_get(
    calls: Arc<impl Calls>,
    req: http::Request<Body>,
) -> Result<http::Response<Body>, Status> {
    crate::auth::check_header(req.headers().get("authorization").map(|v| v.as_bytes()))?;
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_REQUEST)
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
    calls.get(key, parts.headers).await
}

/// What a wrapped service's own `DoGet` or `DoPut` answers: [`Direct`]
/// answers those calls before they reach it.
pub fn answered_beneath(call: &str) -> Status {
    Status::internal(format!(
        "{call} is answered beneath tonic, and this service runs without that wrapper"
    ))
}

/// A `DoPut` read frame by frame, then handed whole to `calls`. A stream its
/// sender cut off fails here as the transport's error, never as a shorter
/// chunk.
async fn do_put<C: Calls>(
    calls: Arc<C>,
    req: http::Request<Body>,
) -> Result<http::Response<Body>, Status> {
    crate::auth::check_header(req.headers().get("authorization").map(|v| v.as_bytes()))?;
    let (parts, body) = req.into_parts();
    let msgs = async {
        let mut reader = Reader::new(body);
        let mut msgs = Vec::new();
        while let Some(len) = reader.next_message().await? {
            msgs.push(reader.message(len, C::PUT_BODIES).await?);
        }
        Ok::<_, Status>(msgs)
    };
    // What the reader calls a malformed answer is here a malformed request.
    let msgs = async {
        msgs.await.map_err(|s| match s.code() {
            Code::Internal => Status::invalid_argument(s.message()),
            _ => s,
        })
    };
    let reply = arrow_flight::PutResult {
        app_metadata: calls.put(parts.headers, msgs).await?,
    };
    respond(vec![Frame::data(grpc_message(&reply))])
}

/// A response of `msgs` as gRPC messages, then the trailers of success.
pub fn answer(msgs: Vec<codec::Message>) -> Result<http::Response<Body>, Status> {
    let mut frames = Vec::with_capacity(2 * msgs.len() + 1);
    for m in msgs {
        frames.extend(frame(m)?);
    }
    respond(frames)
}

/// A response of `frames`, whole gRPC messages, then the trailers of success.
fn respond(mut frames: Vec<Frame<Bytes>>) -> Result<http::Response<Body>, Status> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    frames.push(Frame::trailers(trailers));
    let body = StreamBody::new(futures::stream::iter(
        frames.into_iter().map(Ok::<_, Infallible>),
    ));
    http::Response::builder()
        .header("content-type", "application/grpc")
        .body(Body::new(body))
        .map_err(|e| Status::internal(format!("a response: {e}")))
}

/// `m` as one gRPC message: its length prefix, then its encoding.
fn grpc_message(m: &impl Message) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + m.encoded_len());
    out.put_u8(0);
    out.put_u32(m.encoded_len() as u32);
    m.encode(&mut out).expect("the buffer was sized to fit");
    out.freeze()
}

/// One message as a gRPC message: a small head (length prefix, the other
/// fields, the body's tag and length) and the body's slices, uncopied.
fn frame(m: codec::Message) -> Result<Vec<Frame<Bytes>>, Status> {
    let body_len = m.body_len();
    let head_len = m.head.encoded_len();
    let body_field = if body_len == 0 {
        0
    } else {
        prost::length_delimiter_len(BODY_TAG as usize)
            + prost::length_delimiter_len(body_len)
            + body_len
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
    m.head
        .encode(&mut head)
        .map_err(|e| Status::internal(format!("encoding a message head: {e}")))?;
    if body_len > 0 {
        prost::encoding::encode_varint(BODY_TAG, &mut head);
        prost::encoding::encode_varint(body_len as u64, &mut head);
    }
    let mut frames = Vec::with_capacity(1 + m.body.len());
    frames.push(Frame::data(head.freeze()));
    let mut done = 0;
    let mut left = body_len;
    for mut slice in m.body {
        while !slice.is_empty() {
            let n = piece(done, left).min(slice.len());
            frames.push(Frame::data(slice.split_to(n)));
            done += n;
            left -= n;
        }
    }
    Ok(frames)
}

/// The smallest and largest pieces a body is cut into.
const PIECE_MIN: usize = 64 << 10;
const PIECE_MAX: usize = 1 << 20;

/// The next piece of a body with `done` bytes sent and `left` to go: small at
/// both ends, doubling up from the start and halving down to the end. The
/// receiver can copy a piece only once it has all of it, so small first
/// pieces start its copy sooner and small last ones leave less to copy after
/// the last byte; in between, pieces of a whole frame.
fn piece(done: usize, left: usize) -> usize {
    done.min(left / 2).clamp(PIECE_MIN, PIECE_MAX)
}

/// `DoGet` of `ticket` from the Flight service on `channel`, every message
/// collected; a large body lands in a 64-byte-aligned buffer of its own.
pub async fn get(channel: Channel, ticket: &[u8]) -> Result<Vec<FlightData>, Status> {
    let mut reader = call(channel, DO_GET, &[], get_request(ticket)).await?;
    let mut messages = Vec::new();
    while let Some(len) = reader.next_message().await? {
        messages.push(
            reader
                .message(len, Bodies::Aligned)
                .await?
                .into_flight_data(),
        );
    }
    reader.outcome()?;
    Ok(messages)
}

/// The body of a `DoGet` of `ticket`: one gRPC message.
fn get_request(ticket: &[u8]) -> Body {
    let ticket = Ticket {
        ticket: Bytes::copy_from_slice(ticket),
    };
    Body::new(Full::new(grpc_message(&ticket)))
}

/// `DoPut` of `msgs` to the Flight service on `channel`, with `headers`,
/// each body sent as its slices; the replies' `app_metadata`.
pub async fn put(
    channel: Channel,
    msgs: Vec<codec::Message>,
    headers: &[(&'static str, String)],
) -> Result<Vec<Bytes>, Status> {
    let mut frames = Vec::with_capacity(2 * msgs.len());
    for m in msgs {
        frames.extend(frame(m)?);
    }
    let request = Body::new(StreamBody::new(futures::stream::iter(
        frames.into_iter().map(Ok::<_, Infallible>),
    )));
    let mut reader = call(channel, DO_PUT, headers, request).await?;
    let mut replies = Vec::new();
    while let Some(len) = reader.next_message().await? {
        let reply = arrow_flight::PutResult::decode(reader.take(len).await?)
            .map_err(|e| Status::internal(format!("not a Flight PutResult: {e}")))?;
        replies.push(reply.app_metadata);
    }
    reader.outcome()?;
    Ok(replies)
}

/// `DoGet` of `ticket` from the Flight service of `holder` on `channel`: its
/// answer as it comes, to pass on whole, once its headers say it is not an
/// error. Should the answer break off, it ends with a status naming `holder`.
pub async fn forward_get(
    channel: Channel,
    ticket: &[u8],
    holder: String,
) -> Result<http::Response<Body>, Status> {
    let answer = send(channel, DO_GET, &[], get_request(ticket)).await?;
    Ok(answer.map(|body| {
        Body::new(Forwarded {
            body,
            holder,
            ended: false,
        })
    }))
}

/// An answer passed on, whose break (its sender gone mid-answer) becomes
/// trailers of `UNAVAILABLE` naming the sender, not a reset stream.
struct Forwarded {
    body: Body,
    holder: String,
    ended: bool,
}

impl http_body::Body for Forwarded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                self.ended = true;
                let why = format!("its holder {} stopped mid-answer: {e}", self.holder);
                let mut trailers = http::HeaderMap::new();
                Status::unavailable(why).add_header(&mut trailers)?;
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }
}

/// Calls `path` on `channel` with `body` and `headers` (and the process's
/// token); a reader of the answer's messages.
async fn call(
    channel: Channel,
    path: &'static str,
    headers: &[(&'static str, String)],
    body: Body,
) -> Result<Reader, Status> {
    let (parts, body) = send(channel, path, headers, body).await?.into_parts();
    let mut reader = Reader::new(body);
    reader.headers = parts.headers;
    Ok(reader)
}

/// Calls `path` on `channel` with `body` and `headers` (and the process's
/// token); its answer, unless its headers already say it failed.
async fn send(
    channel: Channel,
    path: &'static str,
    headers: &[(&'static str, String)],
    body: Body,
) -> Result<http::Response<Body>, Status> {
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(body)
        .map_err(|e| Status::internal(format!("a request of {path}: {e}")))?;
    let mut svc = InterceptedService::new(channel, AddToken::from_process());
    futures::future::poll_fn(|cx| svc.poll_ready(cx))
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let response = svc
        .call(request)
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    // A call refused at once answers with its status in the headers.
    if let Some(status) = Status::from_header_map(response.headers())
        && status.code() != Code::Ok
    {
        return Err(status);
    }
    if response.status() != http::StatusCode::OK {
        return Err(Status::unknown(format!(
            "{path} answered with HTTP status {}",
            response.status()
        )));
    }
    Ok(response.map(Body::new))
}

/// Reads a gRPC body frame by frame.
struct Reader {
    body: Body,
    /// The unread rest of the current data frame.
    current: Bytes,
    /// A response's headers, where a status may come instead of trailers.
    headers: http::HeaderMap,
    trailers: Option<http::HeaderMap>,
}

impl Reader {
    fn new(body: Body) -> Self {
        Reader {
            body,
            current: Bytes::new(),
            headers: http::HeaderMap::new(),
            trailers: None,
        }
    }

    /// The length of the next message, read from its prefix; `None` at the end.
    async fn next_message(&mut self) -> Result<Option<usize>, Status> {
        if !self.more().await? {
            return Ok(None);
        }
        let prefix = self.take(5).await?;
        if prefix[0] != 0 {
            return Err(Status::unimplemented(
                "a compressed message: none was asked for; send identity encoding",
            ));
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        let limit = crate::net::max_message();
        if len > limit {
            return Err(Status::out_of_range(format!(
                "a message of {len} bytes is over the limit of {limit} bytes"
            )));
        }
        Ok(Some(len))
    }

    /// The answer's status, once its messages are read.
    fn outcome(self) -> Result<(), Status> {
        let trailers = self.trailers.unwrap_or_default();
        match Status::from_header_map(&trailers).or_else(|| Status::from_header_map(&self.headers))
        {
            Some(status) if status.code() == Code::Ok => Ok(()),
            Some(status) => Err(status),
            None => Err(Status::internal("the answer ended without a status")),
        }
    }

    /// Whether data follows (false at the trailers or the end).
    async fn more(&mut self) -> Result<bool, Status> {
        while self.current.is_empty() {
            match self.body.frame().await.transpose()? {
                Some(frame) => match frame.into_data() {
                    Ok(data) => self.current = data,
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            self.trailers.get_or_insert_default().extend(t);
                        }
                    }
                },
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    async fn more_or_fail(&mut self) -> Result<(), Status> {
        if self.more().await? {
            Ok(())
        } else {
            Err(Status::internal("the stream ended inside a message"))
        }
    }

    /// The next `n` bytes, copied only when they span frames.
    async fn take(&mut self, n: usize) -> Result<Bytes, Status> {
        self.more_or_fail().await?;
        if self.current.len() >= n {
            return Ok(self.current.split_to(n));
        }
        let mut out = BytesMut::with_capacity(n);
        self.append(n, |piece| out.put_slice(piece)).await?;
        Ok(out.freeze())
    }

    /// Hands the next `n` bytes to `put`, frame by frame.
    async fn append(&mut self, mut n: usize, mut put: impl FnMut(&[u8])) -> Result<(), Status> {
        while n > 0 {
            self.more_or_fail().await?;
            let k = n.min(self.current.len());
            put(&self.current[..k]);
            self.current.advance(k);
            n -= k;
        }
        Ok(())
    }

    /// A protobuf varint and the bytes it took.
    async fn varint(&mut self) -> Result<(u64, usize), Status> {
        let mut value = 0u64;
        for i in 0..10 {
            self.more_or_fail().await?;
            let b = self.current.get_u8();
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((value, i + 1));
            }
        }
        Err(Status::internal("a malformed varint in a Flight message"))
    }

    /// The next `n` bytes in a 64-byte-aligned buffer of exactly that size:
    /// one copy from the frames, and none later to align the arrays. A size
    /// the process cannot allocate is an error, not an abort.
    async fn take_aligned(&mut self, n: usize) -> Result<Bytes, Status> {
        const ALIGN: usize = 64;
        let mut v: Vec<u8> = Vec::new();
        quiver_engine::shm::private(|| v.try_reserve_exact(n.saturating_add(ALIGN - 1)))
            .map_err(|_| Status::resource_exhausted(format!("no memory for a {n}-byte body")))?;
        let pad = v.as_ptr().align_offset(ALIGN);
        v.resize(pad, 0);
        self.append(n, |piece| crate::uncached::extend(&mut v, piece))
            .await?;
        Ok(Bytes::from_owner(
            arrow::buffer::Buffer::from_vec(v).slice(pad),
        ))
    }

    /// The next `n` bytes as the frames' own slices, uncopied; runs of small
    /// pieces are joined, so that tiny frames cannot cost more to hold than
    /// the bytes they carry.
    async fn take_as_received(&mut self, mut n: usize) -> Result<Vec<Bytes>, Status> {
        const SMALL: usize = 4 << 10;
        let mut slices = Vec::new();
        let mut small = BytesMut::new();
        while n > 0 {
            self.more_or_fail().await?;
            let piece = self.current.split_to(n.min(self.current.len()));
            n -= piece.len();
            if piece.len() >= SMALL {
                if !small.is_empty() {
                    slices.push(small.split().freeze());
                }
                slices.push(piece);
            } else {
                small.extend_from_slice(&piece);
                if small.len() >= SMALL {
                    slices.push(small.split().freeze());
                }
            }
        }
        if !small.is_empty() {
            slices.push(small.freeze());
        }
        Ok(slices)
    }

    /// One `FlightData` of `len` bytes, its large body read as `bodies` says;
    /// every other field goes through prost.
    async fn message(&mut self, len: usize, bodies: Bodies) -> Result<codec::Message, Status> {
        let not_flight = |e| Status::internal(format!("not a FlightData message: {e}"));
        if len < DIRECT_BODY {
            let bytes = self.take(len).await?;
            return FlightData::decode(bytes)
                .map(codec::Message::from)
                .map_err(not_flight);
        }
        let bad = || Status::internal("a Flight message's fields overrun its length");
        let mut rest = BytesMut::new();
        let mut body = Vec::new();
        let mut left = len;
        while left > 0 {
            let (tag, n) = self.varint().await?;
            left = left.checked_sub(n).ok_or_else(bad)?;
            let fixed = |wire| if wire == 1 { 8 } else { 4 };
            match tag & 7 {
                0 => {
                    let (v, n) = self.varint().await?;
                    left = left.checked_sub(n).ok_or_else(bad)?;
                    prost::encoding::encode_varint(tag, &mut rest);
                    prost::encoding::encode_varint(v, &mut rest);
                }
                wire @ (1 | 5) => {
                    let l = fixed(wire);
                    left = left.checked_sub(l).ok_or_else(bad)?;
                    prost::encoding::encode_varint(tag, &mut rest);
                    rest.extend_from_slice(&self.take(l).await?);
                }
                2 => {
                    let (l, n) = self.varint().await?;
                    let l = usize::try_from(l).map_err(|_| bad())?;
                    left = left
                        .checked_sub(n)
                        .and_then(|x| x.checked_sub(l))
                        .ok_or_else(bad)?;
                    if tag == BODY_TAG && l >= DIRECT_BODY {
                        body = match bodies {
                            Bodies::Aligned => vec![self.take_aligned(l).await?],
                            Bodies::AsReceived => self.take_as_received(l).await?,
                        };
                    } else {
                        prost::encoding::encode_varint(tag, &mut rest);
                        prost::encoding::encode_varint(l as u64, &mut rest);
                        rest.extend_from_slice(&self.take(l).await?);
                    }
                }
                _ => return Err(Status::internal("an unknown wire type in a Flight message")),
            }
        }
        let head = FlightData::decode(rest.freeze()).map_err(not_flight)?;
        let mut m = codec::Message::from(head);
        if !body.is_empty() {
            m.body = body;
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> FlightData {
        FlightData {
            data_header: Bytes::from_static(b"header"),
            app_metadata: Bytes::from_static(b"meta"),
            data_body: Bytes::from(vec![7u8; 100_000]),
            ..Default::default()
        }
    }

    fn split(m: FlightData) -> codec::Message {
        let mut head = m;
        let body = std::mem::take(&mut head.data_body);
        let body = if body.is_empty() {
            vec![]
        } else {
            vec![body.slice(..1000), body.slice(1000..)]
        };
        codec::Message { head, body }
    }

    #[test]
    fn a_framed_message_decodes_as_the_original() {
        let m = message();
        let frames = frame(split(m.clone())).unwrap();
        // The head, the first slice, then the rest in two pieces (64 KiB first).
        assert_eq!(frames.len(), 4);
        assert_eq!(
            frames[1].data_ref().unwrap().as_ptr(),
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
        let frames = frame(split(empty.clone())).unwrap();
        assert_eq!(frames.len(), 1);
        let wire = frames[0].data_ref().unwrap();
        assert_eq!(FlightData::decode(&wire[5..]).unwrap(), empty);
    }

    #[test]
    fn a_large_body_goes_out_in_pieces_of_itself_small_at_both_ends() {
        let body = Bytes::from((0..3 << 20).map(|i| i as u8).collect::<Vec<u8>>());
        let m = FlightData {
            data_header: Bytes::from_static(b"header"),
            data_body: body.clone(),
            ..Default::default()
        };
        let one_slice = codec::Message {
            head: FlightData {
                data_body: Bytes::new(),
                ..m.clone()
            },
            body: vec![body.clone()],
        };
        let frames = frame(one_slice).unwrap();
        let pieces: Vec<&Bytes> = frames[1..].iter().map(|f| f.data_ref().unwrap()).collect();
        let sizes: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), body.len());
        assert!(sizes[0] <= PIECE_MIN, "first piece {}", sizes[0]);
        assert_eq!(*sizes.last().unwrap(), PIECE_MIN, "last piece");
        assert!(sizes.iter().all(|&n| n <= PIECE_MAX));
        assert!(
            sizes.contains(&PIECE_MAX),
            "whole frames in between: {sizes:?}"
        );
        let mut at = body.as_ptr();
        for p in &pieces {
            assert_eq!(p.as_ptr(), at, "each piece is a slice of the body");
            at = at.wrapping_add(p.len());
        }
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend_from_slice(f.data_ref().unwrap());
        }
        assert_eq!(FlightData::decode(&wire[5..]).unwrap(), m);
    }

    /// `wire` cut into frames of `size` bytes.
    fn frames(wire: &[u8], size: usize) -> Vec<Bytes> {
        wire.chunks(size).map(Bytes::copy_from_slice).collect()
    }

    /// A reader over `frames`.
    fn reader_of(frames: &[Bytes]) -> Reader {
        let frames: Vec<_> = (frames.iter())
            .map(|f| Ok::<_, Status>(Frame::data(f.clone())))
            .collect();
        Reader::new(Body::new(StreamBody::new(futures::stream::iter(frames))))
    }

    /// A reader over `wire` cut into frames of `size` bytes.
    fn reader(wire: &[u8], size: usize) -> Reader {
        reader_of(&frames(wire, size))
    }

    /// `message()` on the wire with its body first, as another writer may
    /// order the fields.
    fn body_first(m: &FlightData) -> Vec<u8> {
        let mut wire = Vec::new();
        prost::encoding::encode_varint(BODY_TAG, &mut wire);
        prost::encoding::encode_varint(m.data_body.len() as u64, &mut wire);
        wire.extend_from_slice(&m.data_body);
        let head = FlightData {
            data_body: Bytes::new(),
            ..m.clone()
        };
        head.encode(&mut wire).unwrap();
        wire
    }

    #[tokio::test]
    async fn a_large_body_is_read_into_an_aligned_buffer_whatever_the_framing() {
        let m = message();
        let wire = body_first(&m);
        for size in [1, 7, 4096, wire.len()] {
            let mut r = reader(&wire, size);
            let got = r.message(wire.len(), Bodies::Aligned).await;
            let got = got.unwrap().into_flight_data();
            assert_eq!(got, m, "frames of {size} bytes");
            assert!(got.data_body.as_ptr().addr().is_multiple_of(64));
        }
        let mut huge = Vec::new();
        prost::encoding::encode_varint(BODY_TAG, &mut huge);
        prost::encoding::encode_varint(1 << 62, &mut huge);
        let mut r = reader(&huge, 4096);
        let e = r.message(usize::MAX, Bodies::Aligned).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        for bodies in [Bodies::Aligned, Bodies::AsReceived] {
            for cut in [1, 3, wire.len() / 2, wire.len() - 1] {
                let short = &wire[..cut];
                let got = reader(short, 4096).message(wire.len(), bodies).await;
                assert!(got.is_err(), "cut at {cut}, {bodies:?}");
            }
            let got = reader(&wire, 4096).message(wire.len() - 10, bodies).await;
            assert!(got.is_err(), "{bodies:?}");
        }
    }

    #[tokio::test]
    async fn a_large_body_to_send_on_is_kept_as_its_frames_and_tiny_frames_are_joined() {
        let m = message();
        let wire = body_first(&m);
        for size in [1, 7, 4096, 10_000, wire.len()] {
            let frames = frames(&wire, size);
            let mut r = reader_of(&frames);
            let got = r.message(wire.len(), Bodies::AsReceived).await.unwrap();
            let body_len = m.data_body.len();
            assert!(
                got.body.len() <= body_len / 4096 + 2,
                "frames of {size} bytes: {} slices",
                got.body.len()
            );
            let within = |slice: &Bytes| {
                let p = slice.as_ptr().addr();
                (frames.iter())
                    .any(|f| (f.as_ptr().addr()..f.as_ptr().addr() + f.len()).contains(&p))
            };
            let copied: usize = (got.body.iter().filter(|s| !within(s)))
                .map(Bytes::len)
                .sum();
            if size >= 4096 {
                // Only a small piece at either end, where a frame is shared.
                assert!(copied < 2 * 4096, "frames of {size} bytes: {copied} copied");
            }
            assert_eq!(got.into_flight_data(), m, "frames of {size} bytes");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever a peer sends, reading it is an answer or an error, never a panic.
        #[test]
        fn any_bytes_read_as_a_message_or_an_error(
            wire in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            size in 1usize..64,
            len in 0usize..400,
            big in proptest::prelude::any::<bool>(),
        ) {
            let len = if big { len + DIRECT_BODY } else { len };
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            for bodies in [Bodies::Aligned, Bodies::AsReceived] {
                let _ = rt.block_on(reader(&wire, size).message(len, bodies));
            }
        }

        /// A real large message with a few bytes changed: the same.
        #[test]
        fn a_mutated_large_message_reads_as_a_message_or_an_error(
            edits in proptest::collection::vec((0usize..80, proptest::prelude::any::<u8>()), 1..4),
            size in 1usize..5000,
            shorter in 0usize..3,
        ) {
            let m = FlightData {
                data_body: Bytes::from(vec![7u8; DIRECT_BODY]),
                ..message()
            };
            let mut wire = Vec::new();
            m.encode(&mut wire).unwrap();
            let n = wire.len();
            // Edits land in the fields, the body's tag and length, and the body's end.
            for (at, byte) in edits {
                let at = if at < 40 { at } else { n - (at - 39) };
                wire[at] = byte;
            }
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            for bodies in [Bodies::Aligned, Bodies::AsReceived] {
                let _ = rt.block_on(reader(&wire, size).message(n - shorter, bodies));
            }
        }
    }
}
