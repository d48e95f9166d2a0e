//! Worker→worker transfer throughput on this host, by route, against the raw
//! loopback TCP ceiling measured in the same run. Prints a table and writes
//! JSON (default `target/transfer.json`).
//!
//! `cargo bench --bench transfer [-- --quick] [--sizes MB,..] [--reps N] [--json FILE]
//! [--pyarrow PYTHON]`; `cargo test` runs it as a smoke test (`--quick`, no JSON).
//!
//! With `--pyarrow`, the same run also measures pyarrow's own Flight server and
//! client (`benches/compare/pyarrow_flight.py`, run by PYTHON) for reference;
//! `benches/compare/transfer.sh` sets up a venv with pyarrow and does this.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::Float64Array;
use quiver::engine::ops::uniform_vec;
use quiver::flight::center::{self, CenterConfig};
use quiver::flight::protocol::Holder;
use quiver::flight::worker::{self, WorkerConfig, WorkerCore};
use quiver::{Key, OpRegistry, chunk};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// A worker's large allocations go to shared memory, so peers on this host map
/// its results instead of receiving copies (`quiver::engine::shm`).
#[global_allocator]
static GLOBAL: quiver::engine::shm::SharedAlloc<mimalloc::MiMalloc> =
    quiver::engine::shm::SharedAlloc(mimalloc::MiMalloc);

const MB: usize = 1 << 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A TCP reference: one loopback connection between two workers' runtimes,
/// kept open so that each run sees the grown windows of a long-lived
/// connection, as iperf3's steady state does and as the workers' own
/// connections do. It first moves 64 MiB untimed; then each run moves the
/// bytes asked for and returns their rate.
struct TcpRef {
    runs: tokio::sync::mpsc::UnboundedSender<(usize, oneshot::Sender<f64>)>,
}

/// A TCP reference's runs: how many bytes each, and where to send its rate.
type Runs = tokio::sync::mpsc::UnboundedReceiver<(usize, oneshot::Sender<f64>)>;

impl TcpRef {
    /// A copy: `from` writes `block_len` bytes over and over and `to` reads
    /// into a buffer of `buf_len` (1 MiB into 4 MiB, both in cache as
    /// iperf3's are, or a chunk's size into another, as a chunk moves from
    /// memory to memory); timed at the writer until the reader has them all.
    async fn copy(
        from: &tokio::runtime::Handle,
        to: &tokio::runtime::Handle,
        block_len: usize,
        buf_len: usize,
    ) -> TcpRef {
        let (listener, addr) = listen();
        // The reader learns each run's length before the run is timed.
        let (want_tx, mut wants) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
        to.spawn(async move {
            let mut s = accept(listener).await;
            // Every page of it is written by the warm-up's reads.
            let mut buf = vec![0u8; buf_len];
            while let Some(want) = wants.recv().await {
                if read(&mut s, &mut buf, want).await.is_err() {
                    return;
                }
                let _ = done_tx.send(());
            }
        });
        TcpRef::open(from, move |mut asked: Runs| async move {
            let mut s = connect(addr).await;
            let block = vec![7u8; block_len];
            while let Some((n, reply)) = asked.recv().await {
                if want_tx.send(n).is_err() {
                    return;
                }
                let start = Instant::now();
                write(&mut s, &block, n).await;
                done.recv().await.expect("the TCP reader stopped");
                let _ = reply.send(n as f64 / start.elapsed().as_secs_f64());
            }
        })
        .await
    }

    /// A fetch over raw TCP: `to` asks for a length in 8 bytes and `from`
    /// answers with that many bytes from a buffer of `len`, read into
    /// another; timed at `to`, from the request until the last byte. What
    /// any request and answer pays, where a stream never waits for one.
    async fn fetch(
        from: &tokio::runtime::Handle,
        to: &tokio::runtime::Handle,
        len: usize,
    ) -> TcpRef {
        let (listener, addr) = listen();
        from.spawn(async move {
            let mut s = accept(listener).await;
            let block = vec![7u8; len];
            let mut ask = [0u8; 8];
            while s.read_exact(&mut ask).await.is_ok() {
                write(&mut s, &block, u64::from_le_bytes(ask) as usize).await;
            }
        });
        TcpRef::open(to, move |mut asked: Runs| async move {
            let mut s = connect(addr).await;
            let mut buf = vec![0u8; len];
            while let Some((n, reply)) = asked.recv().await {
                let start = Instant::now();
                s.write_all(&(n as u64).to_le_bytes()).await.expect("ask");
                if read(&mut s, &mut buf, n).await.is_err() {
                    return;
                }
                let _ = reply.send(n as f64 / start.elapsed().as_secs_f64());
            }
        })
        .await
    }

    /// Spawns the timing end on `rt`, serving runs, and warms the connection.
    async fn open<F: Future<Output = ()> + Send + 'static>(
        rt: &tokio::runtime::Handle,
        timer: impl FnOnce(Runs) -> F,
    ) -> TcpRef {
        let (runs, asked) = tokio::sync::mpsc::unbounded_channel();
        rt.spawn(timer(asked));
        let tcp = TcpRef { runs };
        tcp.rate(64 * MB).await;
        tcp
    }

    /// Moves `bytes` and returns the rate.
    async fn rate(&self, bytes: usize) -> f64 {
        let (reply, rate) = oneshot::channel();
        self.runs
            .send((bytes, reply))
            .expect("the TCP reference stopped");
        rate.await.expect("the TCP reference stopped")
    }
}

fn listen() -> (std::net::TcpListener, std::net::SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

async fn accept(listener: std::net::TcpListener) -> tokio::net::TcpStream {
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    let (s, _) = listener.accept().await.expect("accept");
    s.set_nodelay(true).expect("nodelay");
    s
}

async fn connect(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Writes `n` bytes, `block` over and over.
async fn write(s: &mut tokio::net::TcpStream, block: &[u8], n: usize) {
    let mut left = n;
    while left > 0 {
        let k = left.min(block.len());
        s.write_all(&block[..k]).await.expect("write");
        left -= k;
    }
}

/// Reads `n` bytes into `buf`, over and over.
async fn read(s: &mut tokio::net::TcpStream, buf: &mut [u8], n: usize) -> std::io::Result<()> {
    let (mut got, len) = (0, buf.len());
    while got < n {
        match s.read(&mut buf[..(n - got).min(len)]).await? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            k => got += k,
        }
    }
    Ok(())
}

/// Starts a worker on `rt`, a runtime of its own as its process would have.
async fn start_worker(
    rt: &tokio::runtime::Handle,
    center: &str,
    host_id: &str,
    dir: &std::path::Path,
) -> (Arc<WorkerCore>, oneshot::Sender<()>) {
    let (tx, rx) = oneshot::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = WorkerConfig {
        center: center.to_string(),
        host: "127.0.0.1".into(),
        port: 0,
        nthreads: 1,
        memory_limit: u64::MAX,
        spill_dir: dir.to_path_buf(),
        name: host_id.into(),
        host_id: Some(host_id.into()),
        no_shm: false,
        spill_fraction: 1.0,
        pause_fraction: 1.0,
        heartbeat_interval: std::time::Duration::from_secs(1),
        center_patience: std::time::Duration::from_secs(10),
        ops: Arc::new(OpRegistry::builtin()),
    };
    rt.spawn(worker::run(
        config,
        async move { drop(stopped.await) },
        move |c| {
            let _ = tx.send(c);
        },
    ));
    (
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("join")
            .expect("core"),
        stop,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; `cargo test` runs this as a smoke test.
    let smoke = !args.iter().any(|a| a == "--bench");
    let quick = smoke || args.iter().any(|a| a == "--quick");
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let json_path = option("--json")
        .map(|s| s.as_str())
        .or((!smoke).then_some("target/transfer.json"));
    let sizes: Vec<usize> = match option("--sizes") {
        Some(list) => list
            .split(',')
            .map(|s| s.trim().parse::<usize>().expect("--sizes: MB,MB,...") * MB)
            .collect(),
        None if quick => vec![8 * MB],
        None => vec![8 * MB, 32 * MB, 100 * MB, 256 * MB],
    };
    let reps = match option("--reps") {
        Some(n) => n.parse().expect("--reps: a count"),
        None if quick => 2,
        None => 5,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    // One runtime per worker, as each would be its own process (`quiver
    // worker`: two IO threads, allocating privately): a worker's connection
    // tasks then never wait behind another worker's.
    let node_rts: Vec<tokio::runtime::Runtime> = (0..3)
        .map(|_| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .on_thread_start(quiver::engine::shm::private_thread)
                .enable_all()
                .build()
                .expect("rt")
        })
        .collect();
    let [ra, rb, rc] = [0, 1, 2].map(|i| node_rts[i].handle().clone());
    let (rows, latency) = rt.block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let (tx, rx) = oneshot::channel();
        tokio::spawn(center::run(
            CenterConfig {
                port: 0,
                ..Default::default()
            },
            std::future::pending(),
            move |h| {
                let _ = tx.send(h.address.to_string());
            },
        ));
        let center = rx.await.expect("center");
        let (a, _sa) = start_worker(&ra, &center, "host-a", dir.path()).await;
        let (b, _sb) = start_worker(&rb, &center, "host-b", dir.path()).await;
        let (c, _sc) = start_worker(&rc, &center, "host-a", dir.path()).await;
        // The fixed cost of a fetch: a chunk of 16 floats, many times.
        let tiny = Key::from("tiny");
        a.store().put(
            tiny.clone(),
            chunk::from_array(Arc::new(Float64Array::from(vec![1.0; 16]))),
        );
        let from_a = vec![Arc::new(Holder {
            address: a.address().into(),
            host_id: "host-a".into(),
        })];
        let mut tiny_secs = Vec::new();
        for _ in 0..if quick { 20 } else { 300 } {
            tiny_secs.push(fetch_on(&rb, &b, &tiny, &from_a, 128).await.0);
        }
        let latency = median(tiny_secs);
        let mut rows = Vec::new();
        for &size in &sizes {
            let rate = |secs: f64| size as f64 / secs;
            let data = |seed: u64| {
                chunk::from_array(Arc::new(Float64Array::from(uniform_vec(size / 8, seed))))
            };
            // The ceiling: the stream, timed per 64 MiB (or the chunk's size,
            // if larger). Beside it, the same connection's kind moving one
            // chunk's size per run, start-up included (what a plain copy of
            // this chunk does, where the ceiling is a stream), and the same
            // from a buffer of the chunk's size into another (as a fetch moves
            // a chunk, where the others stay in cache).
            let stream = TcpRef::copy(&ra, &rb, MB, 4 * MB).await;
            let copy = TcpRef::copy(&ra, &rb, MB, 4 * MB).await;
            let memory = TcpRef::copy(&ra, &rb, size, size).await;
            let asked = TcpRef::fetch(&ra, &rb, size).await;
            // Flight: one chunk fetched again and again (the fetcher keeps no
            // copy), after one untimed fetch, as the TCP connections are
            // warmed. Each run fetches it, then times each TCP reference once,
            // so that all of them see the machine in the same state: its speed
            // drifts by a quarter within minutes.
            let key = Key::from(format!("c-{size}").as_str());
            a.store().put(key.clone(), data(0));
            fetch_on(&rb, &b, &key, &from_a, size).await;
            let (mut flight, mut flight_read) = (Vec::new(), Vec::new());
            let (mut ceiling, mut tcp_chunk, mut tcp_memory, mut tcp_fetch) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..reps {
                let (fetched, read) = fetch_on(&rb, &b, &key, &from_a, size).await;
                flight.push(rate(fetched));
                flight_read.push(rate(read));
                ceiling.push(stream.rate(size.max(64 * MB)).await);
                tcp_chunk.push(copy.rate(size).await);
                tcp_memory.push(memory.rate(size).await);
                tcp_fetch.push(asked.rate(size).await);
            }
            let ceiling = median(ceiling);
            rows.push(("tcp-chunk", size, median(tcp_chunk), ceiling));
            rows.push(("tcp-memory", size, median(tcp_memory), ceiling));
            rows.push(("tcp-fetch", size, median(tcp_fetch), ceiling));
            a.free(std::slice::from_ref(&key));
            // Shared memory: each run a new chunk, so that each first fetch
            // publishes it.
            let (mut shm_first, mut shm_read, mut shm_mapped) =
                (Vec::new(), Vec::new(), Vec::new());
            for r in 0..reps {
                let key = Key::from(format!("c-{size}-{r}").as_str());
                a.store().put(key.clone(), data(r as u64));
                let (fetched, read) = fetch_on(&rc, &c, &key, &from_a, size).await;
                shm_first.push(rate(fetched));
                shm_read.push(rate(read));
                shm_mapped.push(rate(fetch_on(&rc, &c, &key, &from_a, size).await.0));
                a.free(std::slice::from_ref(&key));
            }
            for (route, v) in [
                ("flight", flight),
                ("flight+read", flight_read),
                ("shm-first", shm_first),
                ("shm-first+read", shm_read),
                ("shm-published", shm_mapped),
            ] {
                rows.push((route, size, median(v), ceiling));
            }
        }
        (rows, latency)
    });
    drop(node_rts);
    let mut rows = rows;
    if let Some(python) = option("--pyarrow") {
        rows.extend(pyarrow_rows(python, quick, reps, &rows));
    }
    println!(
        "{:<15} {:>10} {:>12} {:>16} {:>10}",
        "route", "chunk", "GB/s", "tcp ceiling GB/s", "fraction"
    );
    println!(
        "flight fetch of a 128-byte chunk: {:.0} µs (median)",
        latency * 1e6
    );
    let mut json = Vec::new();
    for (route, size, bps, ceiling) in &rows {
        println!(
            "{route:<15} {:>8}MB {:>12.2} {:>16.2} {:>10.2}",
            size / MB,
            bps / 1e9,
            ceiling / 1e9,
            bps / ceiling
        );
        json.push(serde_json::json!({"scenario": "pairwise", "route": route, "chunk_bytes": size,
            "bytes_per_sec": bps, "ceiling_bytes_per_sec": ceiling, "fraction_of_ceiling": bps / ceiling}));
    }
    for (_, size, bps, _) in rows.iter().filter(|r| r.0 == "flight") {
        for (against, what) in [
            ("tcp-chunk", "a TCP copy of"),
            ("tcp-memory", "a TCP copy between buffers of"),
            ("tcp-fetch", "a TCP request and answer of"),
        ] {
            if let Some((.., tcp, _)) = rows.iter().find(|r| r.0 == against && r.1 == *size) {
                println!("flight against {what} {}MB: {:.2}", size / MB, bps / tcp);
            }
        }
    }
    if let Some(path) = json_path
        && let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&json).expect("json"))
    {
        eprintln!("cannot write {path}: {e}");
    }
}

/// `worker` fetches `key` from `holders` in a task on its own runtime, as
/// its tasks do, then reads every value once: the seconds until the chunk was
/// there, and until it was read.
async fn fetch_on(
    rt: &tokio::runtime::Handle,
    worker: &Arc<WorkerCore>,
    key: &Key,
    holders: &[Arc<Holder>],
    size: usize,
) -> (f64, f64) {
    let (worker, key, holders) = (worker.clone(), key.clone(), holders.to_vec());
    rt.spawn(async move {
        let t = Instant::now();
        let got = worker
            .fetch(&key, &holders, size as u64)
            .await
            .expect("fetch");
        let fetched = t.elapsed().as_secs_f64();
        read_once(&got);
        (fetched, t.elapsed().as_secs_f64())
    })
    .await
    .expect("fetch task")
}

/// Reads every value of a fetched float64 chunk once, as a consumer would
/// (a mapped chunk's pages are faulted in here, not by the fetch).
fn read_once(c: &quiver::Chunk) {
    let values = c
        .column(0)
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("f64");
    std::hint::black_box(arrow::compute::sum(values));
}

/// pyarrow's Flight do_get throughput per chunk size, with the TCP ceiling of
/// the same size from this run.
fn pyarrow_rows(
    python: &str,
    quick: bool,
    reps: usize,
    rows: &[(&'static str, usize, f64, f64)],
) -> Vec<(&'static str, usize, f64, f64)> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/compare/pyarrow_flight.py"
    );
    let mut cmd = std::process::Command::new(python);
    cmd.arg(script);
    if quick {
        cmd.arg("--quick");
    }
    cmd.args(["--reps", &reps.to_string()]);
    let out = match cmd.output() {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => {
            eprintln!(
                "pyarrow comparison failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return vec![];
        }
        Err(e) => {
            eprintln!("cannot run {python}: {e}");
            return vec![];
        }
    };
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let size = v["chunk_bytes"].as_u64()? as usize;
            let ceiling = rows.iter().find(|r| r.1 == size)?.3;
            Some((
                "pyarrow-flight",
                size,
                v["bytes_per_sec"].as_f64()?,
                ceiling,
            ))
        })
        .collect()
}
