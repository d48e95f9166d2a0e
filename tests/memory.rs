//! Memory pressure on real worker processes: more data than the memory
//! limit spills and stays correct, RSS stays near the limit, and a spill
//! directory that cannot be written is an error in the log, not a crash.

mod common;

use std::time::Duration;

use common::TestCluster;
use quiver::{Call, Client, Connect, seed};

const MIB: u64 = 1 << 20;

/// Holds `n` arrays of 8 MB at once (more than a worker of 16 MiB may keep
/// in memory), then sums them. The seed's own pool run no longer holds them:
/// each sum now starts on its array's worker as soon as the array is made.
fn held_arrays_total(client: &Client, n: usize) -> f64 {
    let pool = client.pool();
    let arrays = pool
        .map(
            "random",
            (0..n).map(|i| Call::new().arg(1_000_000).kw("seed", i)),
        )
        .unwrap();
    for a in &arrays {
        a.wait().unwrap();
    }
    let sums = pool.map("sum", &arrays).unwrap();
    let total = pool.apply("sum", &sums).unwrap().get_f64().unwrap();
    drop((arrays, sums));
    total
}

#[test]
fn three_times_the_memory_limit_spills_and_stays_correct() {
    let cluster = TestCluster::start(2, &["--memory-limit", "64MiB"]);
    let client = Client::connect(&cluster.address).unwrap();
    let pool = client.pool();
    // 24 arrays of 8 MB held at once: 192 MB on workers of 64 MiB each.
    let arrays = pool
        .map(
            "random",
            (0..24).map(|i| Call::new().arg(1_000_000).kw("seed", i)),
        )
        .unwrap();
    let sums = pool.map("sum", &arrays).unwrap();
    let total = pool.apply("sum", &sums).unwrap().get_f64().unwrap();
    assert_eq!(total, seed::floor(1, 24, 1_000_000));
    let statuses = cluster.worker_statuses();
    let spilled: u64 = statuses.iter().map(|(_, s)| s.store.spilled_bytes).sum();
    assert!(spilled > 64 * MIB, "only {spilled} bytes spilled");
    for (address, s) in &statuses {
        eprintln!(
            "{address}: peak RSS {} MiB, store {} MiB in memory, {} MiB spilled",
            s.peak_rss_bytes / MIB,
            s.store.memory_bytes / MIB,
            s.store.spilled_bytes / MIB
        );
        assert!(
            s.store.memory_bytes <= 64 * MIB,
            "the store holds {} bytes in memory",
            s.store.memory_bytes
        );
        // The limit plus the process's own footprint (code, runtime, one
        // task's temporaries): far below the 96 MB each worker holds.
        assert!(
            s.peak_rss_bytes < 64 * MIB * 3 / 2 + 40 * MIB,
            "peak RSS {} MiB",
            s.peak_rss_bytes / MIB
        );
    }
    drop((arrays, sums));
}

#[test]
fn an_unwritable_spill_dir_keeps_data_in_memory_with_an_error_logged() {
    let not_a_dir = tempfile::NamedTempFile::new().unwrap();
    let spill = not_a_dir.path().join("spill");
    let mut cluster = TestCluster::start(0, &[]);
    let i = cluster.start_worker_logged(&[
        "--memory-limit",
        "16MiB",
        "--spill-dir",
        spill.to_str().unwrap(),
    ]);
    assert!(cluster.wait_workers(1, Duration::from_secs(30)));
    let client = Client::connect(&cluster.address).unwrap();
    assert_eq!(held_arrays_total(&client, 8), seed::floor(1, 8, 1_000_000));
    assert!(cluster.all_alive(), "the worker survived");
    assert!(!spill.exists(), "no partial spill files");
    let log = cluster.stop_worker_and_read_log(i);
    assert!(log.contains("spill failed, chunk kept in memory"), "{log}");
    assert!(
        log.contains(spill.to_str().unwrap()),
        "the error names the path: {log}"
    );
}

#[test]
fn a_full_spill_disk_keeps_data_in_memory_and_leaves_no_partial_file() {
    // The worker gets a 4 MiB tmpfs as spill dir in a mount namespace of its
    // own (gone with the process); each 8 MB spill fails with ENOSPC.
    let spill = tempfile::tempdir().unwrap();
    let probe = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size=1m quiver-probe {}",
            spill.path().display()
        ))
        .stderr(std::process::Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("cannot mount a tmpfs in a new mount namespace here (not root?): skipping");
        return;
    }
    let dir = spill.path().to_str().unwrap().to_string();
    let mut cluster = TestCluster::start(0, &[]);
    let log = spill.path().with_extension("log");
    let script = format!(
        "mount -t tmpfs -o size=4m quiver-test-full {dir} && exec {} worker {} --name w0 \
         --memory-limit 16MiB --spill-dir {dir}",
        common::quiver_bin(),
        cluster.address
    );
    let child = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let i = cluster.adopt_worker(child);
    assert!(cluster.wait_workers(1, Duration::from_secs(30)));
    let client = Client::connect(&cluster.address).unwrap();
    assert_eq!(held_arrays_total(&client, 6), seed::floor(1, 6, 1_000_000));
    assert!(cluster.all_alive(), "the worker survived a full disk");
    // Look inside the worker's mount namespace: nothing half-written remains.
    let inside = std::path::PathBuf::from(format!("/proc/{pid}/root{dir}"));
    assert!(inside.is_dir(), "the worker's spill dir is readable");
    let left = common::files_under(&inside);
    cluster.kill_worker(i);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("spill failed, chunk kept in memory"), "{log}");
    assert!(log.contains("No space left on device"), "{log}");
    let failures = log.matches("spill failed").count();
    assert!(
        failures <= 4,
        "{failures} spill attempts on a full disk: spilling should rest"
    );
    assert!(left.is_empty(), "partial spill files remain: {left:?}");
}

/// Bytes of process `pid` under `field` ("VmRSS:", "VmHWM:") in /proc.
fn proc_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}

fn rss_of(pid: u32) -> u64 {
    proc_bytes(pid, "VmRSS:")
}

#[test]
fn a_put_passes_the_center_as_it_came_and_lands_aligned_and_the_idle_cluster_hands_back_its_memory()
{
    let cluster = TestCluster::start(1, &[]);
    let client = Client::connect(&cluster.address).unwrap();
    let center = cluster.center_pid();
    let before = proc_bytes(center, "VmHWM:");
    // 256 MiB through the center, which passes it on as it came, to the worker.
    const CHUNK: u64 = 256 * MIB;
    let values = arrow::array::Float64Array::from(vec![1.5; CHUNK as usize / 8]);
    let data = client
        .scatter(quiver::chunk::from_array(std::sync::Arc::new(values)))
        .unwrap();
    // The center held the frames the put came in, and sent them on uncopied
    // (257 MiB here; 1.5 times the chunk is one whole copy more, and then some).
    let peak = proc_bytes(center, "VmHWM:") - before;
    assert!(
        peak < CHUNK * 3 / 2,
        "the center's peak grew {} MiB",
        peak / MIB
    );
    // The worker read the body into an aligned buffer: no copy to realign it.
    let (_, status) = cluster.worker_statuses().remove(0);
    assert!(
        status.routes.flight_received >= CHUNK,
        "{:?}",
        status.routes
    );
    assert_eq!(status.routes.flight_realigned, 0, "{:?}", status.routes);
    let worker = || cluster.worker_statuses()[0].1.rss_bytes;
    assert!(rss_of(center) > 200 * MIB && worker() > 200 * MIB);
    // A get through the center streams the worker's answer on, frame by
    // frame, and adds nothing to the put's peak: decoded and encoded again,
    // it took 579 MiB.
    let rows = cluster.block_on(async {
        use futures::TryStreamExt;
        let mut center = quiver::flight::net::connect(&cluster.address)
            .await
            .unwrap();
        let ticket = arrow_flight::Ticket::new(data.key().to_string());
        let stream = center.do_get(ticket).await.unwrap().into_inner();
        let stream = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            stream.map_err(arrow_flight::error::FlightError::from),
        );
        let batches: Vec<_> = stream.try_collect().await.unwrap();
        batches.iter().map(|b| b.num_rows() as u64).sum::<u64>()
    });
    assert_eq!(rows, CHUNK / 8);
    let peak = proc_bytes(center, "VmHWM:") - before;
    assert!(
        peak < CHUNK * 3 / 2,
        "with a get, the center's peak grew {} MiB",
        peak / MIB
    );
    drop(data);
    // Memory kept for reuse is handed back once nothing has happened for 5 s.
    let start = std::time::Instant::now();
    let (mut c, mut w) = (rss_of(center), worker());
    while (c > 100 * MIB || w > 100 * MIB) && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(250));
        (c, w) = (rss_of(center), worker());
    }
    assert!(c <= 100 * MIB, "the center still holds {} MiB", c / MIB);
    assert!(w <= 100 * MIB, "the worker still holds {} MiB", w / MIB);
}

#[test]
fn puts_spread_over_the_workers_by_what_each_holds_spilled_or_not() {
    // Each 8 MB put spills at once on a 4 MiB worker, leaving it 0 bytes in
    // memory: placing by memory alone sent every put to the same worker.
    let cluster = TestCluster::start(2, &["--memory-limit", "4MiB"]);
    let client = Client::connect(&cluster.address).unwrap();
    let held: Vec<_> = (0..6)
        .map(|i| {
            let values = arrow::array::Float64Array::from(vec![i as f64; 1 << 20]);
            let data = client.scatter(quiver::chunk::from_array(std::sync::Arc::new(values)));
            data.unwrap()
        })
        .collect();
    let keys: Vec<usize> = (cluster.worker_statuses().iter())
        .map(|(_, s)| s.store.keys)
        .collect();
    assert_eq!(keys, vec![3, 3], "keys per worker");
    for (i, data) in held.iter().enumerate() {
        let got = data.get().unwrap();
        assert_eq!(got.num_rows(), 1 << 20);
        let col = got.column(0).as_any();
        let col = col.downcast_ref::<arrow::array::Float64Array>().unwrap();
        assert_eq!(col.value(0), i as f64);
    }
}
