//! Scheduler overhead end to end, through real processes: a `quiver center`
//! and 4 `quiver worker`s on this host run no-op tasks submitted by a client
//! (a pool map of N tasks gathered by one task; a graph of G tasks), and the
//! center's peak memory per task is read from /proc. Then a client gets a
//! small result K times: the round trips of a get (the center describes
//! the key, the holder sends it).
//!
//! `quiver-bench overhead [--quick] [--map N] [--graph G] [--gets K] [--rounds R] [--json FILE]`
//! (defaults: N = 100,000, G = 1,000,000, K = 1,000, R = 3; `--quick`: 2,000,
//! 10,000 and 100, one round).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quiver::{Call, Client, Connect, Graph, Key, Task};

/// Options of `overhead`.
#[derive(clap::Args, Debug, Clone)]
pub struct Overhead {
    /// Small sizes, one round.
    #[arg(long)]
    quick: bool,
    /// No-op tasks in the pool map (default 100,000; quick 2,000; 0 skips it).
    #[arg(long)]
    map: Option<usize>,
    /// Tasks in the graph, about (default 1,000,000; quick 10,000; 0 skips it).
    #[arg(long)]
    graph: Option<usize>,
    /// Gets of a small result (default 1,000; quick 100; 0 skips them).
    #[arg(long)]
    gets: Option<usize>,
    /// Rounds; medians are reported (default 3; quick 1).
    #[arg(long)]
    rounds: Option<usize>,
    /// Write the figures as JSON here.
    #[arg(long, default_value = "target/overhead.json")]
    json: PathBuf,
    /// The `quiver` binary (default: next to this one).
    #[arg(long)]
    quiver: Option<PathBuf>,
}

/// A center and workers, killed on drop.
struct Cluster {
    address: String,
    bin: PathBuf,
    center: Child,
    workers: Vec<Child>,
}

impl Cluster {
    fn start(bin: &Path, workers: usize) -> Cluster {
        let mut center = Command::new(bin)
            .args(["center", "--port", "0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start quiver center");
        let mut lines = BufReader::new(center.stdout.take().expect("stdout")).lines();
        let line = lines.next().expect("center address").expect("read");
        std::thread::spawn(move || lines.for_each(drop));
        let address = line.rsplit(' ').next().expect("address").to_string();
        let workers = (0..workers)
            .map(|i| {
                Command::new(bin)
                    .args(["worker", &address, "--name", &format!("w{i}")])
                    .env("RUST_LOG", "warn")
                    .spawn()
                    .expect("start quiver worker")
            })
            .collect();
        let c = Cluster {
            address,
            bin: bin.to_path_buf(),
            center,
            workers,
        };
        let client = Client::connect(&c.address).expect("connect");
        drop(client);
        let start = Instant::now();
        while c.joined() < c.workers.len() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "workers did not join"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn joined(&self) -> usize {
        let out = Command::new(&self.bin)
            .args(["status", &self.address, "--json"])
            .output()
            .expect("quiver status");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["workers"].as_array().map_or(0, Vec::len)
    }

    /// CPU seconds the center has used so far (user + system): a steadier
    /// figure than wall time on a shared machine.
    fn center_cpu(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.center.id())).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // utime and stime are fields 14 and 15 of the line: 11 and 12 from 0 after the name.
        (ticks(11) + ticks(12)) as f64 / hz
    }

    /// The center's (current, peak) resident bytes.
    fn center_memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.center.id()))
            .unwrap_or_default();
        let kib = |field: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0)
        };
        (kib("VmRSS:") * 1024, kib("VmHWM:") * 1024)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The center first, and every kill before any wait: a center that
        // outlived its workers warned about each of them leaving.
        let _ = self.center.kill();
        for w in &mut self.workers {
            let _ = w.kill();
        }
        let _ = self.center.wait();
        for w in &mut self.workers {
            let _ = w.wait();
        }
    }
}

/// A pool map of `n` no-op tasks, gathered by one task: returns seconds.
fn map(client: &Client, n: usize) -> f64 {
    let pool = client.pool();
    let start = Instant::now();
    let handles = pool
        .map("noop", (0..n).map(|i| Call::new().arg(i)))
        .expect("map");
    let submitted = start.elapsed();
    handles.last().expect("one").wait().expect("wait");
    let last_done = start.elapsed();
    let all = pool.apply("noop", &handles).expect("gather");
    all.wait().expect("wait");
    eprintln!(
        "  map of {n}: submitted after {submitted:.3?}, last task done {last_done:.3?}, gathered {:.3?}",
        start.elapsed()
    );
    let secs = start.elapsed().as_secs_f64();
    pool.delete(handles);
    secs
}

/// A graph of `g` no-op tasks: leaves, a layer reading two leaves each (so no
/// leaf is fused away), then a 100-way tree to one key. Returns (tasks, seconds).
fn graph(client: &Client, g: usize) -> (usize, f64) {
    let half = (g / 2).max(1);
    let mut graph = Graph::new();
    let leaf = |i: usize| Key::from(format!("l{i}").as_str());
    for i in 0..half {
        graph.insert(leaf(i), Task::new("noop").arg(i));
    }
    let mut level: Vec<Key> = (0..half)
        .map(|i| {
            let k = Key::from(format!("m{i}").as_str());
            graph.insert(
                k.clone(),
                Task::new("noop").arg(leaf(i)).arg(leaf((i + 1) % half)),
            );
            k
        })
        .collect();
    let mut depth = 0;
    while level.len() > 1 {
        depth += 1;
        level = level
            .chunks(100)
            .enumerate()
            .map(|(j, c)| {
                let k = Key::from(format!("t{depth}-{j}").as_str());
                graph.insert(k.clone(), Task::new("noop").arg(c.to_vec()));
                k
            })
            .collect();
    }
    let tasks = graph.len();
    let start = Instant::now();
    client.get(&graph, &level).expect("graph");
    (tasks, start.elapsed().as_secs_f64())
}

/// Gets a 10-value result `k` times: returns the median microseconds of one.
fn gets(client: &Client, k: usize) -> f64 {
    let mut g = Graph::new();
    g.insert("small", Task::new("arange").arg(10));
    let handle = client.submit(g, &["small".into()]).expect("submit");
    let handle = &handle[0];
    handle.wait().expect("wait");
    let micros = (0..k)
        .map(|_| {
            let start = Instant::now();
            handle.get().expect("get");
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    median(micros)
}

/// The median; NaN for no runs (a skipped part).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs `overhead`: prints the figures and writes them as JSON.
pub fn overhead(opts: Overhead) -> Result<(), String> {
    let bin = crate::scenarios::quiver_binary(opts.quiver.as_ref())?;
    let (n, g, k) = if opts.quick {
        (2_000, 10_000, 100)
    } else {
        (100_000, 1_000_000, 1_000)
    };
    let n = opts.map.unwrap_or(n);
    let g = opts.graph.unwrap_or(g);
    let k = opts.gets.unwrap_or(k);
    let rounds = opts.rounds.unwrap_or(if opts.quick { 1 } else { 3 }).max(1);
    let json = opts.json.display().to_string();

    let cluster = Cluster::start(&bin, 4);
    let client = Client::connect(&cluster.address).expect("connect");
    let (base_rss, _) = cluster.center_memory();
    let mut tasks = 0;
    let mut graph_cpu = Vec::new();
    let graphs: Vec<f64> = (0..if g == 0 { 0 } else { rounds })
        .map(|_| {
            let cpu = cluster.center_cpu();
            let (t, s) = graph(&client, g);
            graph_cpu.push((cluster.center_cpu() - cpu) / t as f64 * 1e6);
            tasks = t;
            s
        })
        .collect();
    let graph_secs = median(graphs.clone());
    // The graph runs first, so the center's peak memory is the graph's.
    let (_, peak) = cluster.center_memory();
    let per_task = peak.saturating_sub(base_rss) as f64 / tasks.max(1) as f64;
    let mut map_cpu = Vec::new();
    let maps: Vec<f64> = (0..if n == 0 { 0 } else { rounds })
        .map(|_| {
            let cpu = cluster.center_cpu();
            let s = map(&client, n);
            map_cpu.push((cluster.center_cpu() - cpu) / (n + 1) as f64 * 1e6);
            s
        })
        .collect();
    let (map_cpu, graph_cpu) = (median(map_cpu), median(graph_cpu));
    let map_secs = median(maps.clone());
    let get_micros: Vec<f64> = (0..if k == 0 { 0 } else { rounds })
        .map(|_| gets(&client, k))
        .collect();
    let get_median = median(get_micros.clone());

    println!("scheduler overhead: center + 4 worker processes on this host, no-op tasks");
    println!(
        "pool map of {n} tasks + gather : median {map_secs:.3} s  → {:.0} tasks/s  (runs {maps:.3?}); center CPU {map_cpu:.1} µs/task",
        (n + 1) as f64 / map_secs
    );
    println!(
        "graph of {tasks} tasks         : median {graph_secs:.3} s  → {:.0} tasks/s  (runs {graphs:.3?}); center CPU {graph_cpu:.1} µs/task",
        tasks as f64 / graph_secs
    );
    println!(
        "center memory: {:.1} MiB at start, peak {:.1} MiB → {per_task:.0} bytes per task of the graph",
        base_rss as f64 / 1048576.0,
        peak as f64 / 1048576.0
    );
    println!(
        "get of a 10-value result        : median {get_median:.0} µs over {k} gets  (rounds {get_micros:.0?})"
    );
    let out = serde_json::json!([
        {"scenario": "map", "tasks": n + 1, "seconds": map_secs, "tasks_per_sec": (n + 1) as f64 / map_secs, "runs": maps,
         "center_cpu_us_per_task": map_cpu},
        {"scenario": "graph", "tasks": tasks, "seconds": graph_secs, "tasks_per_sec": tasks as f64 / graph_secs, "runs": graphs,
         "center_cpu_us_per_task": graph_cpu,
         "center_base_rss": base_rss, "center_peak_rss": peak, "center_bytes_per_task": per_task},
        {"scenario": "get", "gets": k, "median_micros": get_median, "runs": get_micros},
    ]);
    std::fs::write(&json, serde_json::to_vec_pretty(&out).expect("json"))
        .map_err(|e| format!("cannot write {json}: {e}"))?;
    Ok(())
}
