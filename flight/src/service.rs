//! Pieces every Quiver Flight service shares: keys from descriptors,
//! tickets and puts, flight infos, JSON action bodies and replies.

use std::pin::Pin;

use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use futures::{Stream, stream};
use tonic::{Response, Status};

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

/// A put's key and descriptor, taken from its first message.
pub fn put_key(msgs: &mut [crate::codec::Message]) -> Result<(Key, FlightDescriptor), Status> {
    let descriptor = msgs
        .first_mut()
        .and_then(|m| m.head.flight_descriptor.take());
    let descriptor = descriptor.ok_or_else(|| {
        Status::invalid_argument("the first message of a DoPut must carry a PATH descriptor [key]")
    })?;
    Ok((descriptor_key(&descriptor)?, descriptor))
}
