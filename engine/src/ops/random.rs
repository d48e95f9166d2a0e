//! Fast random fills for the `random` and `normal` ops.
//!
//! The seed workload is dominated by generating numbers, so the generator is
//! xoshiro256+ run as eight independent lanes: the lanes share no state, so the
//! loop body has no dependency chain across lanes and the compiler vectorizes
//! it. Each chunk's stream is fully determined by its seed.

use std::mem::MaybeUninit;

const LANES: usize = 8;

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Eight xoshiro256+ generators, state laid out lane-minor so the update vectorizes.
struct Lanes {
    s: [[u64; LANES]; 4],
}

impl Lanes {
    fn new(seed: u64) -> Self {
        let mut sm = seed;
        let mut s = [[0u64; LANES]; 4];
        for lane in 0..LANES {
            for word in s.iter_mut() {
                word[lane] = splitmix64(&mut sm);
            }
        }
        Lanes { s }
    }

    #[inline(always)]
    fn next(&mut self, out: &mut [f64; LANES]) {
        let [s0, s1, s2, s3] = &mut self.s;
        for l in 0..LANES {
            let result = s0[l].wrapping_add(s3[l]);
            let t = s1[l] << 17;
            s2[l] ^= s0[l];
            s3[l] ^= s1[l];
            s1[l] ^= s2[l];
            s0[l] ^= s3[l];
            s2[l] ^= t;
            s3[l] = s3[l].rotate_left(45);
            // The top 52 bits as the mantissa of a number in [1, 2), minus one: [0, 1).
            out[l] = f64::from_bits(0x3FF0_0000_0000_0000 | (result >> 12)) - 1.0;
        }
    }
}

/// Fills `out` with uniform numbers in [0, 1) from the stream of `seed`.
///
/// Takes uninitialised memory so fresh chunks are written once, never zeroed first.
pub fn fill_uniform(out: &mut [MaybeUninit<f64>], seed: u64) {
    let mut g = Lanes::new(seed);
    let mut block = [0.0; LANES];
    let mut chunks = out.chunks_exact_mut(LANES);
    for c in &mut chunks {
        g.next(&mut block);
        for (o, v) in c.iter_mut().zip(block) {
            o.write(v);
        }
    }
    let rest = chunks.into_remainder();
    g.next(&mut block);
    for (o, v) in rest.iter_mut().zip(block) {
        o.write(v);
    }
}

/// A vector of `n` uniform numbers in [0, 1) from the stream of `seed`.
pub fn uniform_vec(n: usize, seed: u64) -> Vec<f64> {
    let mut v = Vec::with_capacity(n);
    fill_uniform(&mut v.spare_capacity_mut()[..n], seed);
    // SAFETY: fill_uniform wrote every one of the first n elements.
    unsafe { v.set_len(n) };
    v
}

/// A vector of `n` normal numbers (mean `loc`, deviation `scale`), by Box–Muller.
pub fn normal_vec(n: usize, seed: u64, loc: f64, scale: f64) -> Vec<f64> {
    let mut out = uniform_vec(n, seed);
    let mut pairs = out.chunks_exact_mut(2);
    for p in &mut pairs {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let r = (-2.0 * (1.0 - p[0]).ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * p[1]).sin_cos();
        p[0] = loc + scale * r * c;
        p[1] = loc + scale * r * s;
    }
    if let [last] = pairs.into_remainder() {
        *last = normal_vec(2, seed ^ 0xA5A5_A5A5, loc, scale)[0];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_in_range_deterministic_and_centred() {
        let a = uniform_vec(100_003, 7);
        let mut b = uniform_vec(100_003, 7);
        assert_eq!(a, b);
        assert!(a.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
        b = uniform_vec(100_003, 8);
        assert_ne!(a, b);
    }

    #[test]
    fn normal_has_its_moments() {
        let a = normal_vec(200_001, 1, 3.0, 2.0);
        let n = a.len() as f64;
        let mean = a.iter().sum::<f64>() / n;
        let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        assert!((mean - 3.0).abs() < 0.02, "{mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.02, "{var}");
    }
}
