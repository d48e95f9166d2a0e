//! `quiver-bench`: cluster benchmarks that need real processes and a network.
//!
//! `four-nodes` builds four network namespaces joined by a bridge (as root),
//! runs `quiver center` in node 1 and a `quiver worker` in each node, and
//! measures worker→worker transfer (pairwise, all-to-all shuffle, broadcast)
//! against a plain TCP copy between the same namespaces. `overhead` measures
//! the scheduler with no-op tasks.

mod ceiling;
mod nodes;
mod overhead;
mod plot;
mod scenarios;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "quiver-bench", version, about = "Quiver cluster benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Transfer throughput across four nodes (network namespaces when root, else loopback).
    FourNodes(FourNodes),
    /// Scheduler overhead: no-op tasks per second through a center and 4
    /// worker processes, and the center's memory per task.
    Overhead(overhead::Overhead),
}

/// Options of `four-nodes`.
#[derive(clap::Args, Debug, Clone)]
pub struct FourNodes {
    /// Fewer sizes and repetitions: the whole run stays under two minutes.
    #[arg(long)]
    quick: bool,
    /// One tiny size, one repetition: seconds, for the test suite.
    #[arg(long, hide = true)]
    smoke: bool,
    /// Shape each node's link with `tc tbf` to this rate (e.g. 1gbit, 10gbit); unshaped by default.
    #[arg(long)]
    link: Option<String>,
    /// Write every measurement as JSON here.
    #[arg(long, default_value = "target/four-nodes.json")]
    json: PathBuf,
    /// Write a PNG plot (throughput vs chunk size per scenario) here.
    #[arg(long, default_value = "target/four-nodes.png")]
    plot: PathBuf,
    /// Use four workers on loopback even when network namespaces are available.
    #[arg(long)]
    loopback: bool,
    /// Repetitions per measurement (the median is reported).
    #[arg(long)]
    reps: Option<usize>,
    /// Only these chunk sizes, in MiB (e.g. `--sizes 16,64`).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=4096))]
    sizes: Vec<u32>,
    /// Only these scenarios (repeatable; default: all three).
    #[arg(long = "scenario", value_parser = ["pairwise", "shuffle", "broadcast"])]
    scenarios: Vec<String>,
    /// The `quiver` binary (default: next to this one).
    #[arg(long)]
    quiver: Option<PathBuf>,
}

impl FourNodes {
    /// Chunk sizes measured, in bytes.
    fn sizes(&self) -> Vec<usize> {
        const MB: usize = 1 << 20;
        if !self.sizes.is_empty() {
            self.sizes.iter().map(|&m| m as usize * MB).collect()
        } else if self.smoke {
            vec![MB]
        } else if self.quick {
            vec![MB, 16 * MB, 64 * MB]
        } else {
            vec![MB, 4 * MB, 16 * MB, 64 * MB, 256 * MB]
        }
    }

    /// Whether `scenario` is to be measured.
    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.is_empty() || self.scenarios.iter().any(|s| s == scenario)
    }

    fn reps(&self) -> usize {
        self.reps.unwrap_or(if self.smoke { 1 } else { 5 })
    }

    /// Untimed rounds of `size`-byte chunks before the timed ones: as many
    /// bytes per flow as the ceiling's connections move first (`warm`), in
    /// whole rounds (one round for a smoke run).
    fn warmup_rounds(&self, size: usize, warm: usize) -> usize {
        if self.smoke {
            1
        } else {
            warm.div_ceil(size).max(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Cmd::FourNodes(opts) => scenarios::four_nodes(opts),
        Cmd::Overhead(opts) => overhead::overhead(opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quiver-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
