//! Quiver: a distributed dataflow engine for chunked Arrow arrays.
//!
//! Task graphs (key → task) run on a cluster of workers; chunks are Arrow
//! record batches that stay on the worker that made them, and each task runs
//! where its inputs already are. The embedded cluster ([`Cluster::local`]) is
//! the default; the networked center and workers speak Arrow Flight.
//!
//! ```
//! use quiver::{Array, Call, Cluster};
//!
//! let cluster = Cluster::local(2).unwrap();
//! let client = cluster.client();
//! // The seed workload, small: four arrays, summed where they live.
//! let pool = client.pool();
//! let arrays = pool.map("random", (0..4).map(|i| Call::new().arg(1000).kw("seed", i))).unwrap();
//! let sums = pool.map("sum", &arrays).unwrap();
//! let total = pool.apply("sum", &sums).unwrap().get_f64().unwrap();
//! assert!((total - 2000.0).abs() < 100.0);
//! // The same through the array collection.
//! let mean = Array::random(4000, 1000, 0).mean().compute_f64(&client).unwrap();
//! assert!((mean - 0.5).abs() < 0.05);
//! ```
//!
//! Layers: [`engine`] computes (no sockets); [`flight`] puts it on the network.

pub mod cli;
pub mod seed;

pub use quiver_engine as engine;
pub use quiver_flight as flight;

pub use quiver_engine::client::array::tree_reduce;
pub use quiver_engine::{
    Arg, Array, Call, Chunk, Client, Cluster, ClusterBuilder, Delayed, Error, Graph, Input, Key,
    OpRegistry, Pool, RemoteData, Result, Submission, Task, chunk, delayed,
};

/// Connects a [`Client`] to a running center: `Client::connect("host:8787")`.
pub trait Connect: Sized {
    /// A client of the center at `address` (`host:port`).
    fn connect(address: &str) -> std::result::Result<Self, quiver_flight::Error>;
}

impl Connect for Client {
    fn connect(address: &str) -> std::result::Result<Self, quiver_flight::Error> {
        quiver_flight::client::connect(address)
    }
}
