//! A chunked float64 array whose chunks stay on the workers; reductions run as
//! trees, so only partial results travel.

use std::ops;

use super::{Call, Client, Delayed, RemoteData, delayed};
use crate::chunk::Chunk;
use crate::error::{Error, Result};

/// How many partials one node of a reduction tree combines.
pub const SPLIT_EVERY: usize = 32;

/// A lazy chunked array: one delayed value per chunk, and each chunk's length.
#[derive(Clone, Debug)]
pub struct Array {
    chunks: Vec<Delayed>,
    lens: Vec<usize>,
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

/// The lengths of `len` elements in chunks of `chunk_len` (the last may be shorter).
fn chunk_lens(len: usize, chunk_len: usize) -> Vec<usize> {
    let chunk_len = chunk_len.max(1);
    (0..len.div_ceil(chunk_len))
        .map(|i| chunk_len.min(len - i * chunk_len))
        .collect()
}

/// Where each chunk starts, then the end.
fn starts(lens: &[usize]) -> Vec<usize> {
    let mut at = 0;
    std::iter::once(0)
        .chain(lens.iter().map(|n| {
            at += n;
            at
        }))
        .collect()
}

/// The chunk boundaries of both, each once, in order.
fn merged(a: &[usize], b: &[usize]) -> Vec<usize> {
    let mut cuts: Vec<usize> = a.iter().chain(b).copied().collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

impl Array {
    /// `len` uniform numbers in [0, 1) in chunks of `chunk_len`; chunk `i` uses its own stream of `seed`.
    pub fn random(len: usize, chunk_len: usize, seed: u64) -> Array {
        let lens = chunk_lens(len, chunk_len);
        let chunks = (lens.iter().enumerate())
            .map(|(i, &n)| {
                let s = seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(i as u64);
                delayed("random", Call::new().arg(n).kw("seed", s))
            })
            .collect();
        Array { chunks, lens }
    }

    /// 0, 1, … `len - 1` in chunks of `chunk_len`.
    pub fn arange(len: usize, chunk_len: usize) -> Array {
        let lens = chunk_lens(len, chunk_len);
        let starts = starts(&lens);
        let chunks = (starts.windows(2))
            .map(|w| delayed("arange", Call::new().arg(w[0] as f64).arg(w[1] as f64)))
            .collect();
        Array { chunks, lens }
    }

    /// An array of chunks placed on the cluster now (each a one-column chunk).
    pub fn from_chunks(client: &Client, chunks: Vec<Chunk>) -> Result<Array> {
        let lens = chunks.iter().map(Chunk::num_rows).collect();
        let chunks = chunks
            .into_iter()
            .map(|c| Ok(Delayed::from_remote(client.scatter(c)?)))
            .collect::<Result<_>>()?;
        Ok(Array { chunks, lens })
    }

    /// An array of data already on the cluster: each chunk and its length.
    pub fn from_remote(parts: impl IntoIterator<Item = (RemoteData, usize)>) -> Array {
        let (handles, lens): (Vec<_>, _) = parts.into_iter().unzip();
        Array {
            chunks: handles.into_iter().map(Delayed::from_remote).collect(),
            lens,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.lens.iter().sum()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The chunks, one delayed value each.
    pub fn chunks(&self) -> &[Delayed] {
        &self.chunks
    }

    /// The length of each chunk.
    pub fn chunk_lens(&self) -> &[usize] {
        &self.lens
    }

    /// Applies a one-input op that keeps a chunk's length to every chunk.
    pub fn map(&self, op: &str) -> Array {
        let chunks = self.chunks.iter().map(|c| delayed(op, c)).collect();
        Array {
            chunks,
            lens: self.lens.clone(),
        }
    }

    /// Applies a two-input op chunk by chunk. Arrays of one length chunked
    /// differently are first cut at the boundaries of both, as dask does: a
    /// piece is a whole chunk where it can be, else a slice of one, so no
    /// chunk is copied to line them up.
    pub fn zip(&self, op: &str, other: &Array) -> Result<Array> {
        if self.len() != other.len() {
            return Err(Error::op(
                op,
                format!(
                    "arrays differ in length: {} elements vs {}",
                    self.len(),
                    other.len()
                ),
            ));
        }
        // Alike arrays cut at their own boundaries stay as they are.
        let cuts = merged(&starts(&self.lens), &starts(&other.lens));
        let (a, b) = (self.cut(&cuts), other.cut(&cuts));
        let chunks = a
            .chunks
            .iter()
            .zip(&b.chunks)
            .map(|(a, b)| delayed(op, Call::new().arg(a).arg(b)))
            .collect();
        Ok(Array {
            chunks,
            lens: a.lens,
        })
    }

    /// The same elements in chunks of `chunk_len` (the last may be shorter).
    /// A new chunk that lies inside an old one is a slice of it; one that
    /// spans several is the concatenation of their slices.
    pub fn rechunk(&self, chunk_len: usize) -> Array {
        let target = chunk_lens(self.len(), chunk_len);
        let pieces = self.cut(&merged(&starts(&self.lens), &starts(&target)));
        let mut pieces = pieces.chunks.into_iter().zip(pieces.lens);
        let chunks = target
            .iter()
            .map(|&want| {
                let mut parts = Vec::new();
                let mut got = 0;
                while got < want {
                    let (part, n) = pieces.next().expect("the cuts include the target's");
                    parts.push(part);
                    got += n;
                }
                match parts.len() {
                    1 => parts.pop().expect("one part"),
                    _ => delayed("concat", parts),
                }
            })
            .collect();
        Array {
            chunks,
            lens: target,
        }
    }

    /// The array cut at `cuts`, which hold every boundary of its own chunks.
    fn cut(&self, cuts: &[usize]) -> Array {
        let starts = starts(&self.lens);
        let mut i = 0;
        let (chunks, lens) = cuts
            .windows(2)
            .map(|w| {
                let (from, to) = (w[0], w[1]);
                while starts[i + 1] <= from {
                    i += 1;
                }
                let piece = if (from, to) == (starts[i], starts[i + 1]) {
                    self.chunks[i].clone()
                } else {
                    let call = Call::new().arg(&self.chunks[i]);
                    delayed("slice", call.arg(from - starts[i]).arg(to - from))
                };
                (piece, to - from)
            })
            .unzip();
        Array { chunks, lens }
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
            lens: self.lens.clone(),
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
            /// Panics if the arrays differ in length; use [`Array::zip`] to get an error.
            fn $method(self, other: &Array) -> Array {
                self.zip($op, other).expect("arrays of one length")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(a: &Array) -> Vec<String> {
        a.chunks.iter().map(|c| c.key().to_string()).collect()
    }

    #[test]
    fn chunks_that_line_up_are_used_whole_and_only_the_rest_sliced() {
        let a = Array::arange(10, 5);
        let b = Array::arange(10, 2);
        let sum = a.zip("add", &b).unwrap();
        assert_eq!(sum.lens, [2, 2, 1, 1, 2, 2]);
        let same = a.zip("add", &a).unwrap();
        assert_eq!(same.lens, [5, 5]);
        let cut = a.cut(&[0, 2, 5, 10]);
        assert_eq!(cut.lens, [2, 3, 5]);
        let keys = ops(&cut);
        assert!(keys[0].starts_with("slice-") && keys[1].starts_with("slice-"));
        assert_eq!(keys[2], a.chunks[1].key().to_string());
    }

    #[test]
    fn rechunking_slices_within_a_chunk_and_joins_across_chunks() {
        let a = Array::arange(10, 4);
        assert_eq!(ops(&a.rechunk(4)), ops(&a));
        let r = a.rechunk(6);
        assert_eq!(r.lens, [6, 4]);
        assert!(ops(&r)[0].starts_with("concat-") && ops(&r)[1].starts_with("concat-"));
        let r = a.rechunk(2);
        assert_eq!(r.lens, [2, 2, 2, 2, 2]);
        assert_eq!(ops(&r)[4], a.chunks[2].key().to_string());
        assert!(Array::arange(0, 3).rechunk(2).chunks.is_empty());
    }
}
