//! Quiver's engine: everything that computes, nothing that talks to a network.
//!
//! - [`key`], [`chunk`]: the names and the data (Arrow record batches).
//! - [`graph`]: tasks and graphs, and their JSON form.
//! - [`ops`]: the op registry and the built-in kernels.
//! - [`store`]: a worker's chunks, spilled to mapped IPC files past a memory limit.
//! - [`scheduler`]: the pure state machine that places, orders and frees tasks.
//! - [`executor`]: runs ops on a worker's CPU pool.
//! - [`local`]: the embedded cluster, driving the scheduler with in-process workers.
//! - [`client`]: the API users write against: graphs, `Pool`, delayed, `Array`.

pub mod chunk;
pub mod client;
pub mod error;
pub mod executor;
pub mod graph;
pub mod key;
pub mod local;
pub mod ops;
pub mod scheduler;
pub mod shm;
pub mod store;

pub use chunk::Chunk;
pub use client::{Array, Backend, Call, Client, Delayed, Input, Pool, RemoteData, delayed};
pub use error::{Error, Result};
pub use graph::{Arg, Graph, Node, Submission, Task};
pub use key::Key;
pub use local::{Cluster, ClusterBuilder};
pub use ops::OpRegistry;
