//! What a process holds in memory (from /proc), and handing its allocator's
//! free memory back to the kernel: under pressure, and once the process has
//! been idle a while, so that memory kept for reuse is kept only while it may
//! be reused.

use std::time::{Duration, Instant};

/// Sets how this process hands its allocator's free memory back to the
/// kernel at once. The binary that picks the allocator sets it; without it,
/// resident memory is taken as it is.
pub fn set_allocator_trim(trim: fn()) {
    let _ = TRIM.set(trim);
}

static TRIM: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Runs the trim set by [`set_allocator_trim`], if any.
pub fn trim_allocator() {
    if let Some(trim) = TRIM.get() {
        trim();
    }
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident bytes now (0 where /proc is unavailable).
pub fn rss() -> u64 {
    status_kib("VmRSS:") * 1024
}

/// Resident anonymous bytes: the pressure that matters. Mapped spill files
/// count in RSS too, but the kernel can drop those pages at will.
pub fn anon_rss() -> u64 {
    status_kib("RssAnon:") * 1024
}

/// The most resident bytes so far.
pub fn peak_rss() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// How long a worker keeps freed memory for reuse before it hands it back
/// (the `quiver` binary sets its allocator's purge delay to this).
pub const KEEP_FREED: Duration = Duration::from_secs(5);

/// Resident memory that moves less than this is standing still.
const STEADY: u64 = 1 << 20;

/// Trims the allocator once per quiet spell: when neither the process's
/// work (a count its owner gives) nor its resident memory has moved for
/// `after`. An allocator hands freed memory back only as it allocates or
/// frees again, so an idle process kept what its last big chunk had used:
/// an idle center 1.5 GB after three 800 MB puts, a worker 1.7 GB after
/// they were released.
pub struct IdleTrim {
    after: Duration,
    work: u64,
    rss: u64,
    since: Instant,
    trimmed: bool,
}

impl IdleTrim {
    /// Trims after `after` of quiet.
    pub fn new(after: Duration) -> Self {
        IdleTrim {
            after,
            work: 0,
            rss: anon_rss(),
            since: Instant::now(),
            trimmed: false,
        }
    }

    /// Looks again, given the work done so far and the resident anonymous
    /// bytes now ([`anon_rss`], which its caller reads anyway); call it now
    /// and then.
    pub fn tick(&mut self, work: u64, rss: u64) {
        if work != self.work || rss.abs_diff(self.rss) > STEADY {
            (self.work, self.rss, self.since, self.trimmed) = (work, rss, Instant::now(), false);
        } else if !self.trimmed && self.since.elapsed() >= self.after {
            trim_allocator();
            (self.rss, self.trimmed) = (anon_rss(), true);
        }
    }
}
