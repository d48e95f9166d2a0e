//! The seed workload of the 2015 `distributed` blog post: N random arrays of M
//! float64, sum each where it lives, sum the sums — four ways (pool, graph,
//! delayed, array) plus `mix` (pool results fed into a graph).
//!
//! `cargo run --release --example seed -- [--arrays N] [--size M] [--workers W] [--approach NAME]... [--json]`

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use quiver::{Client, Cluster, Connect, seed};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Run the seed workload: N random arrays of M floats, summed")]
struct Args {
    /// Number of arrays (N).
    #[arg(long, default_value_t = 1000)]
    arrays: usize,
    /// Floats per array (M).
    #[arg(long, default_value_t = 1_000_000)]
    size: usize,
    /// Workers in the embedded cluster.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Approaches to run (default: all five). `floor` runs the same kernels in a
    /// plain loop on W threads without the engine, for comparison.
    #[arg(long = "approach", value_parser = ["pool", "graph", "delayed", "array", "mix", "floor"])]
    approaches: Vec<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Run against the center at HOST:PORT instead of an embedded cluster.
    #[arg(long)]
    scheduler: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        // Said as a sentence, not as the error's debug form.
        Err(e) => {
            eprintln!("seed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the chosen approaches; whether every total came out right.
fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let (n, m, w) = (args.arrays, args.size, args.workers);
    let approaches = if args.approaches.is_empty() {
        seed::APPROACHES.map(String::from).to_vec()
    } else {
        args.approaches.clone()
    };
    // The embedded cluster lives as long as its client; a remote one is already up.
    let (_cluster, client) = match &args.scheduler {
        Some(address) => (None, Client::connect(address)?),
        None => {
            let cluster = Cluster::local(w)?;
            let client = cluster.client();
            (Some(cluster), client)
        }
    };
    let expected = n as f64 * m as f64 / 2.0;
    let tolerance = seed::tolerance(n, m);
    let mut ok = true;
    for name in &approaches {
        let start = Instant::now();
        let total = match name.as_str() {
            "floor" => seed::floor(w, n, m),
            _ => seed::run(name, &client, n, m)?,
        };
        let seconds = start.elapsed().as_secs_f64();
        if args.json {
            println!(
                "{}",
                serde_json::json!({"approach": name, "arrays": n, "size": m, "workers": w,
                                   "total": total, "seconds": seconds})
            );
        } else {
            println!("{name:<8} total={total:<22.3} seconds={seconds:.3}");
        }
        if (total - expected).abs() > tolerance {
            eprintln!("{name}: total {total} is not within {tolerance:.1} of N·M/2 = {expected}");
            ok = false;
        }
    }
    Ok(ok)
}
