//! Peer transfer in one process, so buffers can be checked against the maps
//! they must point into: a center and workers on 127.0.0.1:0.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Float64Array};
use arrow::datatypes::Float64Type;
use quiver_engine::{Chunk, Key, OpRegistry, chunk};
use quiver_flight::center::{self, CenterConfig};
use quiver_flight::protocol::Holder;
use quiver_flight::worker::{self, WorkerConfig, WorkerCore};
use tokio::sync::oneshot;

/// As in a `quiver worker`: large allocations land in shared memory.
#[global_allocator]
static GLOBAL: quiver_engine::shm::SharedAlloc<std::alloc::System> =
    quiver_engine::shm::SharedAlloc(std::alloc::System);

struct Fixture {
    center: String,
    stops: Vec<oneshot::Sender<()>>,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        let (tx, rx) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let config = CenterConfig {
            port: 0,
            ..Default::default()
        };
        tokio::spawn(center::run(
            config,
            async move { drop(stopped.await) },
            move |h| {
                let _ = tx.send(h.address.to_string());
            },
        ));
        let center = rx.await.expect("center started");
        Fixture {
            center,
            stops: vec![stop],
            dir: tempfile::tempdir().expect("dir"),
        }
    }

    async fn worker(&mut self, host_id: &str, no_shm: bool, memory_limit: u64) -> Arc<WorkerCore> {
        let (tx, rx) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let config = WorkerConfig {
            center: self.center.clone(),
            host: "127.0.0.1".into(),
            port: 0,
            nthreads: 1,
            memory_limit,
            spill_dir: self.dir.path().to_path_buf(),
            name: format!("w-{host_id}"),
            host_id: Some(host_id.into()),
            no_shm,
            spill_fraction: 1.0,
            pause_fraction: 1.0,
            heartbeat_interval: std::time::Duration::from_secs(1),
            center_patience: std::time::Duration::from_secs(10),
            ops: Arc::new(OpRegistry::builtin()),
        };
        tokio::spawn(worker::run(
            config,
            async move { drop(stopped.await) },
            move |c| {
                let _ = tx.send(c);
            },
        ));
        self.stops.push(stop);
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("worker joined")
            .expect("core")
    }
}

fn floats(n: usize) -> Chunk {
    chunk::from_array(Arc::new(Float64Array::from(
        (0..n).map(|i| i as f64).collect::<Vec<_>>(),
    )))
}

fn ptr(c: &Chunk) -> usize {
    c.column(0).as_primitive::<Float64Type>().values().as_ptr() as usize
}

/// The file backing the mapping that contains `addr`, from /proc/self/maps.
fn mapping_of(addr: usize) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        let (lo, hi) = parts.next()?.split_once('-')?;
        let (lo, hi) = (
            usize::from_str_radix(lo, 16).ok()?,
            usize::from_str_radix(hi, 16).ok()?,
        );
        (lo..hi)
            .contains(&addr)
            .then(|| parts.nth(4).unwrap_or("").to_string())
    })
}

fn holder(c: &WorkerCore) -> Vec<Arc<Holder>> {
    vec![Arc::new(Holder {
        address: c.address().to_string(),
        host_id: c.host_id().to_string(),
    })]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_peers_map_the_very_pages_a_result_was_computed_in() {
    let mut f = Fixture::new().await;
    let a = f.worker("host-1", false, u64::MAX).await;
    let b = f.worker("host-1", false, u64::MAX).await;
    let data = floats(1 << 20); // allocated after a worker enabled shared memory
    let key = Key::from("big");
    a.store().put(key.clone(), data.clone());
    let region = mapping_of(ptr(&data)).unwrap_or_default();
    assert!(
        region.starts_with("/memfd:quiver-"),
        "the result lies in '{region}', not in a shared region"
    );
    let got = b.fetch(&key, &holder(&a), 8 << 20).await.unwrap();
    assert_eq!(got, data);
    // Another mapping (the receiver's own) of the same memfd: no byte was copied.
    assert_ne!(ptr(&got), ptr(&data));
    assert_eq!(mapping_of(ptr(&got)), Some(region));
    let (sa, sb) = (a.status().routes, b.status().routes);
    assert_eq!(sa.shm_sent, 8 << 20, "{sa:?}");
    assert_eq!(sa.shm_written, 0, "{sa:?}");
    assert_eq!(sb.shm_received, 8 << 20, "{sb:?}");
    assert_eq!(sb.flight_received, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_outside_shared_memory_is_written_once_and_mapped() {
    let mut f = Fixture::new().await;
    let a = f.worker("host-1", false, u64::MAX).await;
    let b = f.worker("host-1", false, u64::MAX).await;
    // 400 KB of offsets: below the shared-allocation size, too big to go inline.
    let strings: Vec<String> = (0..100_000).map(|i| format!("item-{i}")).collect();
    let data = chunk::from_array(Arc::new(arrow::array::StringArray::from(strings)));
    let key = Key::from("strings");
    a.store().put(key.clone(), data.clone());
    let got = b.fetch(&key, &holder(&a), 1 << 20).await.unwrap();
    assert_eq!(got, data);
    let offsets = got.column(0).as_string::<i32>().offsets().as_ptr() as usize;
    let file = mapping_of(offsets).unwrap_or_default();
    assert!(
        file.contains("quiver-") && file.ends_with(".arrow"),
        "offsets at {offsets:#x} are in '{file}', not a shared file"
    );
    let sa = a.status().routes;
    assert!(
        sa.shm_written > 0 && sa.shm_written == sa.shm_sent,
        "{sa:?}"
    );
    // Published once: a second fetch maps the same file, nothing is written again.
    let again = b.fetch(&key, &holder(&a), 1 << 20).await.unwrap();
    let offsets = again.column(0).as_string::<i32>().offsets().as_ptr() as usize;
    assert_eq!(mapping_of(offsets), Some(file));
    assert_eq!(a.status().routes.shm_written, sa.shm_written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_hosts_use_flight_and_every_copy_is_counted() {
    let mut f = Fixture::new().await;
    let a = f.worker("host-1", false, u64::MAX).await;
    let b = f.worker("host-2", false, u64::MAX).await;
    let c = f.worker("host-1", true, u64::MAX).await; // same host, but --no-shm
    let data = floats(1 << 20);
    let key = Key::from("big");
    a.store().put(key.clone(), data.clone());
    for receiver in [&b, &c] {
        let got = receiver.fetch(&key, &holder(&a), 8 << 20).await.unwrap();
        assert_eq!(got, data);
        assert_ne!(ptr(&got), ptr(&data));
        let r = receiver.status().routes;
        assert_eq!(r.shm_received, 0);
        assert_eq!(r.flight_received, 8 << 20);
        // The body lands in an aligned buffer of its own: the arrays use it in place.
        assert_eq!(r.flight_realigned, 0, "{r:?}");
        assert!(ptr(&got).is_multiple_of(64));
    }
    assert_eq!(a.status().routes.flight_sent, 2 * (8 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spilled_chunk_is_served_from_its_file() {
    let mut f = Fixture::new().await;
    let a = f.worker("host-1", false, 1 << 20).await;
    let b = f.worker("host-2", false, u64::MAX).await;
    let key = Key::from("spilled");
    let data = floats(1 << 18); // 2 MiB over a 1 MiB limit
    a.store().put(key.clone(), data.clone());
    assert!(a.store().spill_file(&key).is_some());
    let got = b.fetch(&key, &holder(&a), 2 << 20).await.unwrap();
    assert_eq!(got, data);
    assert_eq!(b.status().routes.flight_received, 2 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_or_a_dead_peer_is_an_error_naming_it() {
    let mut f = Fixture::new().await;
    let a = f.worker("host-1", false, u64::MAX).await;
    let b = f.worker("host-2", false, u64::MAX).await;
    let e = b
        .fetch(&Key::from("nope"), &holder(&a), 8)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
    let dead = vec![Arc::new(Holder {
        address: "127.0.0.1:1".into(),
        host_id: "x".into(),
    })];
    let e = b
        .fetch(&Key::from("k"), &dead, 8)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("127.0.0.1:1"), "{e}");
}
