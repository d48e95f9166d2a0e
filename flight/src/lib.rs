//! Quiver over Arrow Flight.
//!
//! - [`auth`]: the shared-secret token on every call.
//! - [`tls`]: rustls on every connection.
//! - [`protocol`]: every action and JSON body of docs/PROTOCOL.md.
//! - [`codec`]: chunks as Flight messages, without per-value encoding.
//! - [`memory`]: resident memory, and the allocator's free memory handed back.
//! - [`uncached`]: a received body copied into its chunk around the cache.
//! - [`net`]: tuned gRPC servers and channels (large messages, wide windows).
//! - [`service`]: what the center's and workers' Flight services share.
//! - [`center`]: the scheduler process, driving the engine's state machine.
//! - [`worker`]: a worker process: store, executor, Flight service, peer transfer.
//! - [`client`]: the network [`quiver_engine::Backend`] behind `Client::connect`.

pub mod auth;
pub mod center;
pub mod client;
pub mod codec;
pub mod direct;
pub mod error;
pub mod memory;
pub mod net;
pub mod protocol;
pub mod service;
pub mod tls;
pub mod uncached;
pub mod worker;

pub use error::{Error, Result};
