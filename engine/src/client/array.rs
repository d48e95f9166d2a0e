//! A chunked float64 array whose chunks stay on the workers; reductions run as
//! trees, so only partial results travel.

use std::ops;

use super::{Call, Client, Delayed, RemoteData, delayed};
use crate::chunk::Chunk;
use crate::error::{Error, Result};

/// How many partials one node of a reduction tree combines.
pub const SPLIT_EVERY: usize = 32;

/// A lazy chunked array: one delayed value per chunk.
#[derive(Clone, Debug)]
pub struct Array {
    chunks: Vec<Delayed>,
    len: usize,
}

/// Reduces `parts` pairwise in groups of [`SPLIT_EVERY`] with `op` until one
/// remains. No parts at all is `op` over an empty list: the op says what
/// that is (a sum is 0, a minimum an error).
pub fn tree_reduce(op: &str, mut parts: Vec<Delayed>) -> Delayed {
    if parts.is_empty() {
        return delayed(op, parts);
    }
    loop {
        if parts.len() == 1 {
            return parts.pop().expect("one part");
        }
        parts = parts
            .chunks(SPLIT_EVERY)
            .map(|g| delayed(op, g.to_vec()))
            .collect();
    }
}

fn chunk_lens(len: usize, chunk_len: usize) -> impl Iterator<Item = (usize, usize)> {
    let chunk_len = chunk_len.max(1);
    (0..len.div_ceil(chunk_len)).map(move |i| (i, chunk_len.min(len - i * chunk_len)))
}

impl Array {
    /// `len` uniform numbers in [0, 1) in chunks of `chunk_len`; chunk `i` uses its own stream of `seed`.
    pub fn random(len: usize, chunk_len: usize, seed: u64) -> Array {
        let chunks = chunk_lens(len, chunk_len)
            .map(|(i, n)| {
                let s = seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(i as u64);
                delayed("random", Call::new().arg(n).kw("seed", s))
            })
            .collect();
        Array { chunks, len }
    }

    /// 0, 1, … `len - 1` in chunks of `chunk_len`.
    pub fn arange(len: usize, chunk_len: usize) -> Array {
        let chunks = chunk_lens(len, chunk_len)
            .map(|(i, n)| {
                let start = (i * chunk_len.max(1)) as f64;
                delayed("arange", Call::new().arg(start).arg(start + n as f64))
            })
            .collect();
        Array { chunks, len }
    }

    /// An array of chunks placed on the cluster now (each a one-column chunk).
    pub fn from_chunks(client: &Client, chunks: Vec<Chunk>) -> Result<Array> {
        let len = chunks.iter().map(Chunk::num_rows).sum();
        let chunks = chunks
            .into_iter()
            .map(|c| Ok(Delayed::from_remote(client.scatter(c)?)))
            .collect::<Result<_>>()?;
        Ok(Array { chunks, len })
    }

    /// An array of data already on the cluster.
    pub fn from_remote(handles: Vec<RemoteData>, len: usize) -> Array {
        Array {
            chunks: handles.into_iter().map(Delayed::from_remote).collect(),
            len,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunks, one delayed value each.
    pub fn chunks(&self) -> &[Delayed] {
        &self.chunks
    }

    /// Applies a one-input op to every chunk.
    pub fn map(&self, op: &str) -> Array {
        let chunks = self.chunks.iter().map(|c| delayed(op, c)).collect();
        Array {
            chunks,
            len: self.len,
        }
    }

    /// Applies a two-input op chunk by chunk; the arrays must be chunked alike.
    pub fn zip(&self, op: &str, other: &Array) -> Result<Array> {
        if self.chunks.len() != other.chunks.len() || self.len != other.len {
            return Err(Error::op(
                op,
                format!(
                    "arrays differ: {} elements in {} chunks vs {} in {}",
                    self.len,
                    self.chunks.len(),
                    other.len,
                    other.chunks.len()
                ),
            ));
        }
        let chunks = self
            .chunks
            .iter()
            .zip(&other.chunks)
            .map(|(a, b)| delayed(op, Call::new().arg(a).arg(b)))
            .collect();
        Ok(Array {
            chunks,
            len: self.len,
        })
    }

    /// Applies a chunk ⊕ scalar op to every chunk.
    pub fn with_scalar(&self, op: &str, v: f64) -> Array {
        let chunks = self
            .chunks
            .iter()
            .map(|c| delayed(op, Call::new().arg(c).arg(v)))
            .collect();
        Array {
            chunks,
            len: self.len,
        }
    }

    fn tree(&self, leaf: &str, combine: &str) -> Delayed {
        tree_reduce(
            combine,
            self.chunks.iter().map(|c| delayed(leaf, c)).collect(),
        )
    }

    /// The sum, as a tree of partial sums computed where the chunks are.
    pub fn sum(&self) -> Delayed {
        self.tree("sum", "sum")
    }

    /// The smallest element.
    pub fn min(&self) -> Delayed {
        self.tree("min", "min")
    }

    /// The largest element.
    pub fn max(&self) -> Delayed {
        self.tree("max", "max")
    }

    /// The number of non-null elements.
    pub fn count(&self) -> Delayed {
        self.tree("count", "sum")
    }

    /// The mean.
    pub fn mean(&self) -> Delayed {
        delayed("mean", self.tree("moments", "moments"))
    }

    /// The population variance.
    pub fn var(&self) -> Delayed {
        delayed("var", self.tree("moments", "moments"))
    }

    /// The population standard deviation.
    pub fn std(&self) -> Delayed {
        delayed("std", self.tree("moments", "moments"))
    }

    /// Computes every chunk and returns them concatenated as one chunk.
    pub fn compute(&self, client: &Client) -> Result<Chunk> {
        delayed("concat", self.chunks.clone()).compute(client)
    }
}

macro_rules! arith {
    ($trait:ident, $method:ident, $op:literal) => {
        impl ops::$trait<f64> for &Array {
            type Output = Array;
            fn $method(self, v: f64) -> Array {
                self.with_scalar($op, v)
            }
        }
        impl ops::$trait<&Array> for &Array {
            type Output = Array;
            /// Panics if the arrays are chunked differently; use [`Array::zip`] to get an error.
            fn $method(self, other: &Array) -> Array {
                self.zip($op, other).expect("arrays must be chunked alike")
            }
        }
    };
}
arith!(Add, add, "add");
arith!(Sub, sub, "sub");
arith!(Mul, mul, "mul");
arith!(Div, div, "div");

impl ops::Neg for &Array {
    type Output = Array;
    fn neg(self) -> Array {
        self.map("neg")
    }
}
