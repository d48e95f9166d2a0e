//! The `four-nodes` run: chunks placed on workers, moved worker→worker by the
//! workers' own `gather` (the path a task's inputs take), timed against the
//! TCP ceiling of the same flows; then the table, the JSON and the plot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::Float64Array;
use arrow_flight::FlightDescriptor;
use quiver::engine::ops::uniform_vec;
use quiver::flight::codec;
use quiver::flight::net::{self, FlightClient};
use quiver::flight::protocol::{Free, Gather, Gathered, Holder};
use quiver::{Key, chunk};

use crate::FourNodes;
use crate::ceiling;
use crate::nodes::{NODES, Node, Testbed};
use crate::plot;

/// One measurement, as written to the JSON file.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// `pairwise`, `shuffle` or `broadcast`.
    pub scenario: &'static str,
    /// The route chunks took.
    pub route: &'static str,
    /// Bytes per chunk.
    pub chunk_bytes: usize,
    /// Quiver's throughput: bytes moved over all flows per second (median),
    /// each transfer timed by its receiving workers, from reading the request
    /// to storing the chunks (the slowest receiver's time).
    pub bytes_per_sec: f64,
    /// The same transfers timed by this process, from sending the requests
    /// to reading the last reply: it adds a control call to every transfer,
    /// which the ceiling does not make (median).
    pub end_to_end_bytes_per_sec: f64,
    /// TCP copy along the same flows (median).
    pub ceiling_bytes_per_sec: f64,
    /// `bytes_per_sec / ceiling_bytes_per_sec`.
    pub fraction_of_ceiling: f64,
    /// TCP copy along the same flows of a chunk's worth of memory, each
    /// sender sending one buffer of the chunk's size, each receiver reading
    /// into one, where the ceiling's ends stay in cache (median). Not a
    /// ceiling: a single flow reading straight into memory out of cache runs
    /// slower than a worker's receive, which reads into a small buffer first.
    /// Not measured on a shaped link, which memory outruns.
    pub tcp_chunk_bytes_per_sec: Option<f64>,
    /// `bytes_per_sec / tcp_chunk_bytes_per_sec`.
    pub fraction_of_tcp_chunk: Option<f64>,
    /// Quiver's throughput in the first warm-up round, which opens the
    /// workers' connections and first touches their memory (median over its
    /// flow sets); not among the samples.
    pub first_round_bytes_per_sec: f64,
    /// Concurrent flows (chunk copies) per measurement.
    pub flows: usize,
    /// Measurements the medians are taken over.
    pub samples: usize,
    /// `netns` or `loopback`.
    pub mode: &'static str,
    /// Link shaping, or `unshaped`.
    pub link: String,
}

/// Chunk copies `(from, to)` made at once.
type Flows = Vec<(usize, usize)>;

/// The scenarios and the flows each moves at once; pairwise moves one flow
/// at a time, over each pair in turn.
fn scenarios() -> Vec<(&'static str, Vec<Flows>)> {
    let pairs = (0..NODES).map(|i| vec![(i, (i + 1) % NODES)]).collect();
    let all = (0..NODES)
        .flat_map(|i| (0..NODES).filter(move |&j| j != i).map(move |j| (j, i)))
        .collect();
    let broadcast = (1..NODES).map(|j| (0, j)).collect();
    vec![
        ("pairwise", pairs),
        ("shuffle", vec![all]),
        ("broadcast", vec![broadcast]),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `quiver` binary: `--quiver`, else next to this executable.
pub fn quiver_binary(given: Option<&PathBuf>) -> Result<PathBuf, String> {
    let path = match given {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot locate this executable: {e}"))?
            .with_file_name("quiver"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no quiver binary at {} (build it with `cargo build --release --bins`, or pass --quiver)",
            path.display()
        ))
    }
}

/// Runs `four-nodes`: measures, prints the table, writes JSON and the plot.
pub fn four_nodes(opts: FourNodes) -> Result<(), String> {
    let quiver = quiver_binary(opts.quiver.as_ref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let started = Instant::now();
    let result = rt.block_on(async {
        tokio::select! {
            r = measure(&opts, &quiver) => r,
            () = interrupted() => Err("interrupted; the testbed was removed".to_string()),
        }
    });
    // An interrupted TCP copy may leave a blocking thread behind: don't wait for it.
    rt.shutdown_timeout(Duration::from_secs(1));
    let (rows, title) = result?;
    print_table(&rows);
    println!("({:.0} s)", started.elapsed().as_secs_f64());
    write_json(&opts.json, &rows)?;
    println!("wrote {}", opts.json.display());
    match plot::draw(&opts.plot, &rows, &title) {
        Ok(()) => println!("wrote {}", opts.plot.display()),
        Err(e) => eprintln!("no plot: {e}"),
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM; the testbed is dropped (and removed) then.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut i), Ok(mut t)) => {
            tokio::select! {
                _ = i.recv() => {}
                _ = t.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

async fn measure(opts: &FourNodes, quiver: &Path) -> Result<(Vec<Row>, String), String> {
    let bed = Testbed::start(quiver, opts.link.as_deref(), opts.loopback).await?;
    let link = bed.link.clone().unwrap_or_else(|| "unshaped".into());
    match &bed.fallback {
        None => println!(
            "four network namespaces on a bridge ({}), link {link}",
            bed.nodes
                .iter()
                .map(|n| n.ip.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(why) => println!("FALLBACK: four workers on loopback, not network namespaces ({why})"),
    }
    let mut clients = Vec::new();
    for node in &bed.nodes {
        clients.push(
            net::connect(&node.worker)
                .await
                .map_err(|e| format!("cannot reach {} at {}: {e}", node.name, node.worker))?,
        );
    }
    let warm = ceiling::warm_bytes(
        bed.link
            .as_deref()
            .map(crate::nodes::bytes_per_sec)
            .transpose()?,
    );
    let mut rows = Vec::new();
    for size in opts.sizes() {
        let keys: Vec<Key> = (0..NODES)
            .map(|i| Key::from(format!("bench-{size}-{i}").as_str()))
            .collect();
        for (i, client) in clients.iter_mut().enumerate() {
            put(client, &keys[i], size, i as u64).await?;
        }
        for (scenario, rounds) in scenarios().into_iter().filter(|(s, _)| opts.wants(s)) {
            // Warm-up rounds, kept out of the medians, that move as many
            // bytes per flow as each ceiling connection's warm-up: the first
            // transfers between two workers open their connection and land in
            // memory the receiver never touched before (in this VM, 2 MiB
            // pages first faulted at 0.4-1.3 GB/s; a worker takes fresh
            // memory in its first few receives). The first round's rate is
            // reported apart.
            let mut first = Vec::new();
            for round in 0..opts.warmup_rounds(size, warm) {
                for flows in &rounds {
                    let rate = transfer(&bed.nodes, &clients, &keys, flows, size).await?;
                    if round == 0 {
                        first.push(rate.workers);
                    }
                }
            }
            // A shaped link, not the machine, sets the pace: no untimed
            // leads and no copy of a chunk's memory, which would double and
            // triple a `--quick` run's time there.
            let paced = bed.link.is_some();
            let open = |buffers| {
                tokio::task::block_in_place(|| {
                    rounds
                        .iter()
                        .map(|flows| ceiling::Copies::open(&bed.nodes, flows, size, warm, buffers))
                        .collect::<Result<Vec<_>, String>>()
                })
            };
            // The ceiling, then (unshaped) the copies of a chunk's memory,
            // each with its rates.
            let mut references = vec![(open(ceiling::Buffers::Hot)?, Vec::new())];
            if !paced {
                references.push((open(ceiling::Buffers::Chunk)?, Vec::new()));
            }
            // Each repetition times Quiver and then the TCP copies of the same
            // flows, so that a slow stretch of this shared machine weighs on
            // both alike (a run's single-flow ceiling has ranged from 1.6 to
            // 3.8 GB/s). Each timed transfer or copy follows an untimed one
            // along the same flows: after its ends sat idle, a transfer in
            // this VM runs slower, raw TCP's too (a 32 MB fetch by a quarter
            // after 100 ms; docs/BENCHMARKS-HISTORY.md).
            let (mut ours, mut end_to_end) = (Vec::new(), Vec::new());
            for _ in 0..opts.reps() {
                for (i, flows) in rounds.iter().enumerate() {
                    if !paced {
                        transfer(&bed.nodes, &clients, &keys, flows, size).await?;
                    }
                    let rate = transfer(&bed.nodes, &clients, &keys, flows, size).await?;
                    ours.push(rate.workers);
                    end_to_end.push(rate.end_to_end);
                    tokio::task::block_in_place(|| {
                        for (copies, rates) in &mut references {
                            if !paced {
                                copies[i].time()?;
                            }
                            rates.push(copies[i].time()?);
                        }
                        Ok::<_, String>(())
                    })?;
                }
            }
            let mut medians = Vec::new();
            for (copies, rates) in references {
                for c in copies {
                    tokio::task::block_in_place(|| c.close())?;
                }
                medians.push(median(rates));
            }
            let samples = ours.len();
            let (bps, ceiling, tcp_chunk) = (median(ours), medians[0], medians.get(1).copied());
            rows.push(Row {
                scenario,
                route: "flight",
                chunk_bytes: size,
                bytes_per_sec: bps,
                end_to_end_bytes_per_sec: median(end_to_end),
                ceiling_bytes_per_sec: ceiling,
                fraction_of_ceiling: bps / ceiling,
                tcp_chunk_bytes_per_sec: tcp_chunk,
                fraction_of_tcp_chunk: tcp_chunk.map(|c| bps / c),
                first_round_bytes_per_sec: median(first),
                flows: rounds[0].len(),
                samples,
                mode: bed.mode,
                link: link.clone(),
            });
        }
        for (i, client) in clients.iter_mut().enumerate() {
            free(client, &keys[i..=i]).await?;
        }
    }
    let title = match &bed.fallback {
        None => format!("Quiver worker→worker, four network namespaces, link {link}"),
        Some(_) => "Quiver worker→worker, four workers on loopback".to_string(),
    };
    Ok((rows, title))
}

/// Places `size` bytes of float64s on a worker under `key` (DoPut).
async fn put(client: &mut FlightClient, key: &Key, size: usize, seed: u64) -> Result<(), String> {
    let data = chunk::from_array(Arc::new(Float64Array::from(uniform_vec(size / 8, seed))));
    let mut msgs = codec::encode(&data, None).map_err(|e| e.to_string())?;
    msgs[0].flight_descriptor = Some(FlightDescriptor::new_path(vec![key.to_string()]));
    let mut replies = client
        .do_put(futures::stream::iter(msgs))
        .await
        .map_err(|e| format!("placing {key}: {}", e.message()))?
        .into_inner();
    while replies
        .message()
        .await
        .map_err(|e| format!("placing {key}: {}", e.message()))?
        .is_some()
    {}
    Ok(())
}

async fn free(client: &mut FlightClient, keys: &[Key]) -> Result<(), String> {
    let body = serde_json::to_vec(&Free {
        keys: keys.to_vec(),
    })
    .map_err(|e| e.to_string())?;
    net::action(client, "free", body)
        .await
        .map(drop)
        .map_err(|e| format!("free: {e}"))
}

/// A transfer's bytes per second, by two clocks.
struct Rate {
    /// Timed by the receiving workers: the slowest one's `gather`.
    workers: f64,
    /// Timed here, around the `gather` calls.
    end_to_end: f64,
}

/// Moves the chunks along `flows` at once (each destination gathers its
/// inputs from their holders), checks every copy arrived whole, frees the
/// copies, and returns the bytes moved per second.
async fn transfer(
    nodes: &[Node],
    clients: &[FlightClient],
    keys: &[Key],
    flows: &[(usize, usize)],
    size: usize,
) -> Result<Rate, String> {
    let dests: Vec<usize> = {
        let mut d: Vec<usize> = flows.iter().map(|f| f.1).collect();
        d.sort_unstable();
        d.dedup();
        d
    };
    let gathers = dests.iter().map(|&to| {
        let inputs = flows
            .iter()
            .filter(|f| f.1 == to)
            .map(|&(from, _)| {
                let holder = std::sync::Arc::new(Holder {
                    address: nodes[from].worker.clone(),
                    host_id: nodes[from].name.clone(),
                });
                (keys[from].clone(), vec![holder], size as u64)
            })
            .collect();
        let mut client = clients[to].clone();
        async move {
            let body = serde_json::to_vec(&Gather { inputs }).map_err(|e| e.to_string())?;
            let reply = net::action_within(&mut client, "gather", body, Duration::from_secs(600))
                .await
                .map_err(|e| format!("gather on node{}: {e}", to + 1))?;
            let got: Gathered =
                serde_json::from_slice(&reply).map_err(|e| format!("gather reply: {e}"))?;
            Ok::<_, String>((to, got))
        }
    });
    let t = Instant::now();
    let done = futures::future::try_join_all(gathers).await?;
    let elapsed = t.elapsed().as_secs_f64();
    let mut copies = 0;
    let mut slowest = 0f64;
    for (to, got) in done {
        if got.seconds <= 0.0 {
            return Err(format!(
                "node{} did not say how long its gather took",
                to + 1
            ));
        }
        slowest = slowest.max(got.seconds);
        // A chunk's size counts its array metadata too: never less than the payload.
        if let Some((k, n)) = got.stored.iter().find(|(_, n)| (*n as usize) < size) {
            return Err(format!(
                "node{} got {n} bytes of {k}, expected {size}",
                to + 1
            ));
        }
        copies += got.stored.len();
        let keys: Vec<Key> = got.stored.into_iter().map(|(k, _)| k).collect();
        free(&mut clients[to].clone(), &keys).await?;
    }
    if copies != flows.len() {
        return Err(format!("{copies} copies arrived, expected {}", flows.len()));
    }
    let bytes = (size * flows.len()) as f64;
    Ok(Rate {
        workers: bytes / slowest,
        end_to_end: bytes / elapsed,
    })
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<10} {:>8} {:>6} {:>7} {:>9} {:>9} {:>15} {:>9} {:>11} {:>10}",
        "scenario",
        "chunk",
        "flows",
        "GB/s",
        "TCP GB/s",
        "fraction",
        "TCP chunk GB/s",
        "fraction",
        "end-to-end",
        "1st round"
    );
    let or_dash =
        |v: Option<f64>, scale: f64| v.map_or("-".into(), |v| format!("{:.2}", v / scale));
    for r in rows {
        println!(
            "{:<10} {:>6}MB {:>6} {:>7.2} {:>9.2} {:>9.2} {:>15} {:>9} {:>11.2} {:>10.2}",
            r.scenario,
            r.chunk_bytes >> 20,
            r.flows,
            r.bytes_per_sec / 1e9,
            r.ceiling_bytes_per_sec / 1e9,
            r.fraction_of_ceiling,
            or_dash(r.tcp_chunk_bytes_per_sec, 1e9),
            or_dash(r.fraction_of_tcp_chunk, 1.0),
            r.end_to_end_bytes_per_sec / 1e9,
            r.first_round_bytes_per_sec / 1e9
        );
    }
}

fn write_json(path: &Path, rows: &[Row]) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(rows).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
