//! The copy of a received body into its chunk, written around the cache.
//!
//! A fetched or put chunk is copied once, out of the transport's frames
//! (where its arrays would lie unaligned) into a 64-byte-aligned buffer of
//! its own (`direct`). That buffer is fresh memory the size of the chunk, too
//! large to stay in cache, so ordinary stores first read every line they
//! write. Non-temporal stores skip that read: on an x86-64 machine they
//! copied into fresh pages at twice the rate (docs/BENCHMARKS-HISTORY.md,
//! twenty-third session).

/// Appends `src` to `dst`, as `extend_from_slice` does, with non-temporal
/// stores on x86-64.
pub fn extend(dst: &mut Vec<u8>, src: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        dst.reserve(src.len());
        let start = dst.len();
        // SAFETY: `reserve` made room for `src.len()` bytes after `start`,
        // `src` cannot overlap `dst`'s spare capacity (`dst` is borrowed
        // mutably), and every one of those bytes is written before the length
        // covers them.
        unsafe {
            copy_non_temporal(dst.as_mut_ptr().add(start), src.as_ptr(), src.len());
            dst.set_len(start + src.len());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.extend_from_slice(src);
}

/// Copies `n` bytes from `src` to `dst`: the 16-byte-aligned middle with
/// streaming stores, the ends as usual, then a fence, so that the bytes are
/// visible to any thread this one hands them to afterwards (streaming stores
/// are not ordered by the atomics of that hand-off).
///
/// # Safety
/// `src` must be valid for reading and `dst` for writing `n` bytes, and the
/// two ranges must not overlap.
#[cfg(target_arch = "x86_64")]
unsafe fn copy_non_temporal(dst: *mut u8, src: *const u8, n: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    const BLOCK: usize = 64;
    let head = dst.align_offset(16).min(n);
    // SAFETY: the caller's contract covers every offset below `n`; the stores
    // in the loop are to `dst + i` with `i` past `head`, so 16-byte aligned.
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, head);
        let mut i = head;
        while i + BLOCK <= n {
            for lane in (0..BLOCK).step_by(16) {
                let v = _mm_loadu_si128(src.add(i + lane).cast::<__m128i>());
                _mm_stream_si128(dst.add(i + lane).cast::<__m128i>(), v);
            }
            i += BLOCK;
        }
        std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), n - i);
        _mm_sfence();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_exactly_what_extend_from_slice_does_at_any_offset_and_length() {
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for start in [0, 1, 7, 15, 16, 17, 63, 64, 100] {
            for (from, len) in [
                (0, 0),
                (0, 1),
                (3, 15),
                (1, 16),
                (5, 63),
                (0, 64),
                (9, 65),
                (2, 4000),
            ] {
                let mut expected = vec![0xAB; start];
                expected.extend_from_slice(&src[from..from + len]);
                let mut got = vec![0xAB; start];
                extend(&mut got, &src[from..from + len]);
                assert_eq!(got, expected, "start {start}, from {from}, len {len}");
            }
        }
    }
}
