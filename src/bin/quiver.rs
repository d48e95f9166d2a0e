//! The `quiver` command: [`quiver::cli::main`] with the built-in ops.

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: quiver::cli::Allocator = quiver::cli::ALLOCATOR;

fn main() -> ExitCode {
    quiver::cli::main(quiver::OpRegistry::builtin())
}

#[cfg(test)]
mod tests {
    // Here, not in `quiver::cli`: it needs mimalloc as this binary's allocator.
    #[test]
    fn freed_memory_is_kept_for_reuse_and_handed_back_on_a_trim() {
        use quiver::flight::memory::{anon_rss, trim_allocator};
        // Option 15 is mimalloc's purge delay exactly if it starts at that
        // option's documented default (1000 ms) and takes the new value.
        // SAFETY: reads an integer option; any option number is accepted.
        let get = || unsafe { libmimalloc_sys::mi_option_get(quiver::cli::MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(), 1000);
        }
        quiver::cli::keep_freed_memory();
        quiver::cli::trim_with_mimalloc();
        assert_eq!(get(), 5000);
        const BIG: usize = 256 << 20;
        let before = anon_rss();
        let v = vec![1u8; BIG];
        std::hint::black_box(&v);
        drop(v);
        let kept = anon_rss();
        assert!(
            kept > before + BIG as u64 / 2,
            "freed memory kept: {before} then {kept}"
        );
        trim_allocator();
        let trimmed = anon_rss();
        assert!(
            trimmed < kept - BIG as u64 / 2,
            "handed back: {kept} then {trimmed}"
        );
    }
}
