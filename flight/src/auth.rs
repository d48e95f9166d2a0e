//! The shared-secret token: when a cluster has one, every Flight call to a
//! center or worker must carry it, as `authorization: Bearer <token>` or
//! through the Flight handshake (`authorization: Basic base64(user:<token>)`,
//! answered with the bearer header, as pyarrow's `authenticate_basic_token`
//! does). One token per process: a process talks to one cluster, and every
//! connection it makes (client, worker→worker, worker↔center) carries it.

use std::sync::OnceLock;

use base64::Engine;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

static TOKEN: OnceLock<Option<String>> = OnceLock::new();

/// Sets this process's token before its first connection or server (an empty
/// string means none). Returns false if a token was already fixed.
pub fn set_token(token: Option<String>) -> bool {
    TOKEN.set(token.filter(|t| !t.is_empty())).is_ok()
}

/// This process's token: what [`set_token`] set, else `QUIVER_TOKEN`, else none.
pub fn token() -> Option<&'static str> {
    TOKEN
        .get_or_init(|| std::env::var("QUIVER_TOKEN").ok().filter(|t| !t.is_empty()))
        .as_deref()
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether an `authorization` header value carries `token`.
fn carries(value: &str, token: &str) -> bool {
    if let Some(bearer) = value.strip_prefix("Bearer ") {
        return same(bearer.trim().as_bytes(), token.as_bytes());
    }
    if let Some(basic) = value.strip_prefix("Basic ") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
            return false;
        };
        // user:password; the user is free, the password is the token.
        return decoded
            .iter()
            .position(|&b| b == b':')
            .is_some_and(|i| same(&decoded[i + 1..], token.as_bytes()));
    }
    false
}

/// Server side: refuses every call without the token (`UNAUTHENTICATED`).
#[derive(Clone, Debug)]
pub struct RequireToken(Option<&'static str>);

impl RequireToken {
    /// Checks for this process's token, if it has one.
    pub fn from_process() -> Self {
        RequireToken(token())
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let value = req.metadata().get("authorization").map(|v| v.as_bytes());
        check(self.0, value).map(|()| req)
    }
}

/// Server side, for calls served beneath tonic: the `authorization` header
/// value must carry this process's token, if it has one.
pub fn check_header(value: Option<&[u8]>) -> Result<(), Status> {
    check(token(), value)
}

fn check(token: Option<&str>, value: Option<&[u8]>) -> Result<(), Status> {
    let Some(token) = token else {
        return Ok(());
    };
    match value.map(std::str::from_utf8) {
        Some(Ok(v)) if carries(v, token) => Ok(()),
        Some(_) => Err(Status::unauthenticated(
            "wrong token: this cluster's token is set with --token or QUIVER_TOKEN",
        )),
        None => Err(Status::unauthenticated(
            "this cluster needs a token: send 'authorization: Bearer <token>' \
             (QUIVER_TOKEN for Quiver's own clients)",
        )),
    }
}

/// The header a handshake answers with, so Flight clients can use it afterwards.
pub fn bearer_header() -> Option<MetadataValue<Ascii>> {
    token().and_then(|t| format!("Bearer {t}").parse().ok())
}

/// Client side: adds this process's token to every call.
#[derive(Clone, Debug)]
pub struct AddToken(Option<MetadataValue<Ascii>>);

impl AddToken {
    /// Adds this process's token, if it has one.
    pub fn from_process() -> Self {
        AddToken(bearer_header())
    }
}

impl Interceptor for AddToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_carry_the_token() {
        assert!(carries("Bearer s3cret", "s3cret"));
        assert!(!carries("Bearer s3cre", "s3cret"));
        assert!(!carries("Bearer s3cretX", "s3cret"));
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:s3cret");
        assert!(carries(&format!("Basic {basic}"), "s3cret"));
        let wrong = base64::engine::general_purpose::STANDARD.encode("s3cret:nope");
        assert!(!carries(&format!("Basic {wrong}"), "s3cret"));
        assert!(!carries("Basic !!!", "s3cret"));
        assert!(!carries("s3cret", "s3cret"));
    }

    #[test]
    fn a_call_without_the_token_is_refused_with_a_message() {
        let mut check = RequireToken(Some("s3cret"));
        let e = check.call(Request::new(())).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("needs a token"), "{}", e.message());
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("authorization", "Bearer nope".parse().unwrap());
        assert!(
            check
                .call(req)
                .unwrap_err()
                .message()
                .contains("wrong token")
        );
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(check.call(req).is_ok());
        assert!(RequireToken(None).call(Request::new(())).is_ok());
    }
}
