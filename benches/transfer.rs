//! Worker→worker transfer throughput on this host, by route, against the raw
//! loopback TCP ceiling measured in the same run. Prints a table and writes
//! JSON (default `target/transfer.json`).
//!
//! `cargo bench --bench transfer [-- --quick] [--json FILE] [--pyarrow PYTHON]`
//!
//! With `--pyarrow`, the same run also measures pyarrow's own Flight server and
//! client (`benches/compare/pyarrow_flight.py`, run by PYTHON) for reference;
//! `benches/compare/transfer.sh` sets up a venv with pyarrow and does this.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::Float64Array;
use quiver::engine::ops::uniform_vec;
use quiver::flight::center::{self, CenterConfig};
use quiver::flight::protocol::Holder;
use quiver::flight::worker::{self, WorkerConfig, WorkerCore};
use quiver::{Key, chunk};
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

/// Loopback TCP: one stream, 1 MiB writes, the receiver reading into one buffer.
async fn tcp_ceiling(bytes: usize) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 4 * MB];
        let mut got = 0;
        while got < bytes {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got += n;
        }
    });
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let block = vec![7u8; MB];
    let start = Instant::now();
    for _ in 0..bytes / MB {
        s.write_all(&block).await.expect("write");
    }
    reader.await.expect("reader");
    bytes as f64 / start.elapsed().as_secs_f64()
}

async fn start_worker(
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
    };
    tokio::spawn(worker::run(
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
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "target/transfer.json".into());
    let sizes: Vec<usize> = if quick {
        vec![8 * MB]
    } else {
        vec![8 * MB, 32 * MB, 100 * MB, 256 * MB]
    };
    let reps = if quick { 2 } else { 5 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let rows = rt.block_on(async {
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
        let (a, _sa) = start_worker(&center, "host-a", dir.path()).await;
        let (b, _sb) = start_worker(&center, "host-b", dir.path()).await;
        let (c, _sc) = start_worker(&center, "host-a", dir.path()).await;
        let mut rows = Vec::new();
        for &size in &sizes {
            let ceiling = median(repeat(reps, || tcp_ceiling(size.max(64 * MB))).await);
            let mut flight = Vec::new();
            let mut shm_first = Vec::new();
            let mut shm_mapped = Vec::new();
            let (mut flight_read, mut shm_read) = (Vec::new(), Vec::new());
            for r in 0..reps {
                let key = Key::from(format!("c-{size}-{r}").as_str());
                let data = chunk::from_array(Arc::new(Float64Array::from(uniform_vec(
                    size / 8,
                    r as u64,
                ))));
                a.store().put(key.clone(), data);
                let from_a = vec![Arc::new(Holder {
                    address: a.address().into(),
                    host_id: "host-a".into(),
                })];
                let t = Instant::now();
                let got = b
                    .fetch(&key, &from_a, size as u64)
                    .await
                    .expect("flight fetch");
                flight.push(size as f64 / t.elapsed().as_secs_f64());
                read_once(&got);
                flight_read.push(size as f64 / t.elapsed().as_secs_f64());
                drop(got);
                let t = Instant::now();
                let got = c
                    .fetch(&key, &from_a, size as u64)
                    .await
                    .expect("shm fetch");
                shm_first.push(size as f64 / t.elapsed().as_secs_f64());
                read_once(&got);
                shm_read.push(size as f64 / t.elapsed().as_secs_f64());
                drop(got);
                let t = Instant::now();
                drop(
                    c.fetch(&key, &from_a, size as u64)
                        .await
                        .expect("shm fetch"),
                );
                shm_mapped.push(size as f64 / t.elapsed().as_secs_f64());
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
        rows
    });
    let mut rows = rows;
    if let Some(python) = args
        .iter()
        .position(|a| a == "--pyarrow")
        .and_then(|i| args.get(i + 1))
    {
        rows.extend(pyarrow_rows(python, quick, &rows));
    }
    println!(
        "{:<15} {:>10} {:>12} {:>16} {:>10}",
        "route", "chunk", "GB/s", "tcp ceiling GB/s", "fraction"
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
    if let Err(e) = std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&json).expect("json"),
    ) {
        eprintln!("cannot write {json_path}: {e}");
    }
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

/// Runs `f` `n` times in sequence and collects the results.
async fn repeat<F, Fut>(n: usize, f: F) -> Vec<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(f().await);
    }
    v
}

/// pyarrow's Flight do_get throughput per chunk size, with the TCP ceiling of
/// the same size from this run.
fn pyarrow_rows(
    python: &str,
    quick: bool,
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
