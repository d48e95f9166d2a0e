//! Quiver's engine: everything that computes, nothing that talks to a network.
//!
//! - [`key`], [`chunk`]: the names and the data (Arrow record batches).
//! - [`graph`]: tasks and graphs, and their JSON form.
//! - [`ops`]: the op registry and the built-in kernels.
//! - [`store`]: a worker's chunks, spilled to mapped IPC files past a memory limit.
//! - [`scheduler`]: the pure state machine that places, orders and frees tasks.

pub mod chunk;
pub mod error;
pub mod graph;
pub mod key;
pub mod ops;
pub mod scheduler;
pub mod store;

pub use chunk::Chunk;
pub use error::{Error, Result};
pub use graph::{Arg, Graph, Node, Submission, Task};
pub use key::Key;
pub use ops::OpRegistry;
