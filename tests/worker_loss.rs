//! Worker loss with real processes: a worker killed with SIGKILL in the
//! middle of a computation costs time, never a result. Keys it held are
//! recomputed from lineage on the survivors; scattered data, which has no
//! lineage, fails with an error naming the key and the worker. A holder
//! that hangs (SIGSTOP) holds up a get only until it is removed.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::TestCluster;
use quiver::{Client, Connect, seed};

const N: usize = 200;
const M: usize = 500_000;

/// Runs `approach` while worker `victim` is killed after `delay`; returns the total.
fn run_with_a_kill(
    cluster: &mut TestCluster,
    approach: &str,
    victim: usize,
    delay: Duration,
) -> f64 {
    let client = Client::connect(&cluster.address).unwrap();
    let approach = approach.to_string();
    let run = std::thread::spawn(move || seed::run(&approach, &client, N, M));
    std::thread::sleep(delay);
    cluster.kill_worker(victim);
    run.join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the run failed: {e}"))
}

#[test]
fn a_worker_killed_mid_run_costs_time_not_results() {
    let mut cluster = TestCluster::start_with(4, &["--heartbeat-timeout", "3"], &[]);
    let expected = seed::floor(1, N, M);
    // An undisturbed run sets the time scale for the kills.
    let client = Client::connect(&cluster.address).unwrap();
    let start = Instant::now();
    assert_eq!(seed::run("graph", &client, N, M).unwrap(), expected);
    let scale = start.elapsed();
    eprintln!("undisturbed graph run: {scale:?}");
    let mut victim = 0;
    let rounds = [
        ("graph", 0.1),
        ("array", 0.3),
        ("graph", 0.5),
        ("array", 0.7),
        ("delayed", 0.4),
        ("pool", 0.6),
        ("graph", 0.9),
        ("array", 0.05),
        ("graph", 0.25),
        ("array", 0.5),
        ("mix", 0.35),
        ("graph", 0.75),
        ("array", 0.95),
        ("pool", 0.2),
    ];
    for (approach, fraction) in rounds {
        let start = Instant::now();
        let delay = scale.mul_f64(fraction);
        let total = run_with_a_kill(&mut cluster, approach, victim, delay);
        assert_eq!(total, expected, "{approach} with a kill after {delay:?}");
        eprintln!(
            "{approach}: kill after {delay:?}, correct total in {:?}",
            start.elapsed()
        );
        // Replace the dead worker so every round starts with four.
        victim = cluster.start_worker(&[]);
        assert!(cluster.wait_workers(4, Duration::from_secs(30)));
    }
}

#[test]
fn lost_scattered_data_fails_naming_the_key_and_the_worker() {
    let mut cluster = TestCluster::start(2, &[]);
    let client = Client::connect(&cluster.address).unwrap();
    let data = client.scatter(quiver::chunk::scalar(7.0)).unwrap();
    let doubled = client
        .pool()
        .apply("mul", quiver::Call::new().arg(&data).arg(2.0))
        .unwrap();
    assert_eq!(doubled.get_f64().unwrap(), 14.0);
    let index = holder_index(&cluster);
    let name = format!("w{index}");
    cluster.kill_worker(index);
    let start = Instant::now();
    let err = data.get().unwrap_err().to_string();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the loss was noticed late"
    );
    assert!(err.contains(data.key().as_str()), "{err}");
    assert!(err.contains(&format!("worker '{name}'")), "{err}");
    assert!(err.contains("no lineage"), "{err}");
    // The survivor still works.
    assert_eq!(
        seed::run("graph", &client, 4, 1000).unwrap(),
        seed::floor(1, 4, 1000)
    );
}

#[test]
fn a_stopped_holder_holds_up_a_get_only_until_it_is_removed() {
    // A stopped process keeps its connections open: a call to it waits for
    // an answer that never comes, unless the center ends it on removal.
    let mut cluster = TestCluster::start_with(2, &["--heartbeat-timeout", "2"], &[]);
    let client = Client::connect(&cluster.address).unwrap();
    let data = client.pool().apply("arange", 1000).unwrap();
    data.wait().unwrap();
    let holder = holder_index(&cluster);
    let pid = cluster.worker(holder).id();
    assert!(common::signal(pid, "STOP"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(data.get().map(|c| c.num_rows())));
    let got = rx.recv_timeout(Duration::from_secs(60));
    common::signal(pid, "CONT");
    let rows = got
        .expect("the get still waits on the stopped holder")
        .unwrap_or_else(|e| panic!("the get failed: {e}"));
    assert_eq!(rows, 1000);
}

/// The index of the one worker that holds data.
fn holder_index(cluster: &TestCluster) -> usize {
    let holder = cluster
        .worker_statuses()
        .into_iter()
        .find(|(_, s)| s.store.keys > 0)
        .map(|(address, _)| address)
        .expect("a worker holds data");
    let status = cluster.status().unwrap();
    let name = &status
        .workers
        .iter()
        .find(|w| w.address == holder)
        .unwrap()
        .name;
    name.trim_start_matches('w').parse().unwrap()
}

#[test]
fn a_task_that_kills_every_worker_it_runs_on_is_stopped() {
    // The test plays the killer's part: whichever worker runs the task dies.
    let mut cluster = TestCluster::start(4, &[]);
    let client = Client::connect(&cluster.address).unwrap();
    let mut g = quiver::Graph::new();
    g.insert("killer", quiver::Task::new("random").arg(200_000_000));
    let handle = client.submit(g, &["killer".into()]).unwrap().pop().unwrap();
    let waiter = std::thread::spawn(move || handle.wait().map_err(|e| e.to_string()));
    let mut kills = 0;
    let start = Instant::now();
    while !waiter.is_finished() && start.elapsed() < Duration::from_secs(60) {
        // Asked of the workers themselves: heartbeats would be a second late.
        let running = cluster
            .worker_statuses()
            .into_iter()
            .find(|(_, s)| s.running > 0)
            .map(|(address, _)| address);
        if let Some(address) = running {
            let status = cluster.status().unwrap();
            let w = status
                .workers
                .iter()
                .find(|w| w.address == address)
                .unwrap();
            let index: usize = w.name.trim_start_matches('w').parse().unwrap();
            cluster.kill_worker(index);
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = waiter.join().unwrap().unwrap_err();
    assert!(
        err.contains("'killer'") && err.contains("not retried"),
        "{err}"
    );
    assert!(err.contains("on 3 workers"), "{err}");
    assert_eq!(kills, 3);
    assert_eq!(cluster.status().unwrap().workers.len(), 1);
    assert_eq!(
        seed::run("graph", &client, 4, 1000).unwrap(),
        seed::floor(1, 4, 1000)
    );
}

#[test]
fn workers_join_a_restarted_center_by_themselves() {
    let mut cluster = TestCluster::start(3, &[]);
    let client = Client::connect(&cluster.address).unwrap();
    assert_eq!(
        seed::run("graph", &client, 8, 1000).unwrap(),
        seed::floor(1, 8, 1000)
    );
    drop(client);
    cluster.restart_center();
    assert!(
        cluster.wait_workers(3, Duration::from_secs(20)),
        "the workers did not join the new center"
    );
    assert!(cluster.all_alive());
    let client = Client::connect(&cluster.address).unwrap();
    for approach in ["graph", "pool", "array"] {
        assert_eq!(
            seed::run(approach, &client, 8, 1000).unwrap(),
            seed::floor(1, 8, 1000),
            "{approach}"
        );
    }
}

#[test]
fn sigterm_retires_a_worker_without_losing_or_recomputing_data() {
    retire_the_busiest_worker(|_, pid| common::signal(pid, "TERM"));
}

#[test]
fn quiver_retire_retires_a_worker_without_losing_or_recomputing_data() {
    retire_the_busiest_worker(|address, _| {
        Command::new(common::quiver_bin())
            .args(["retire", address])
            .status()
            .unwrap()
            .success()
    });
}

/// Fills three workers, retires the one holding most with `retire(address, pid)`,
/// and checks that nothing was lost or recomputed.
fn retire_the_busiest_worker(retire: impl Fn(&str, u32) -> bool) {
    let mut cluster = TestCluster::start(3, &[]);
    let client = Client::connect(&cluster.address).unwrap();
    let pool = client.pool();
    let arrays = pool
        .map(
            "random",
            (0..12).map(|i| quiver::Call::new().arg(100_000).kw("seed", i)),
        )
        .unwrap();
    for a in &arrays {
        a.wait().unwrap();
    }
    let finished = cluster.status().unwrap().tasks_finished;
    let (holder, held) = cluster
        .worker_statuses()
        .into_iter()
        .map(|(address, s)| (address, s.store.keys))
        .max_by_key(|(_, keys)| *keys)
        .unwrap();
    assert!(held > 0);
    let status = cluster.status().unwrap();
    let name = &status
        .workers
        .iter()
        .find(|w| w.address == holder)
        .unwrap()
        .name;
    let index: usize = name.trim_start_matches('w').parse().unwrap();
    let pid = cluster.worker(index).id();
    assert!(retire(&holder, pid));
    let exit = cluster.worker(index).wait().unwrap();
    assert!(exit.success(), "a retiring worker exits cleanly: {exit:?}");
    assert_eq!(cluster.status().unwrap().workers.len(), 2);
    // Every array is still there, and reading them ran no task.
    let sums = pool.map("sum", &arrays).unwrap();
    let total = pool.apply("sum", &sums).unwrap().get_f64().unwrap();
    assert_eq!(total, seed::floor(1, 12, 100_000));
    let after = cluster.status().unwrap().tasks_finished;
    assert_eq!(
        after - finished,
        12 + 1,
        "only the new sums ran: nothing was recomputed"
    );
}

/// The directories worker `pid` owns: under `spill` and in shared memory.
fn dirs_of(spill: &std::path::Path, pid: u32) -> Vec<std::path::PathBuf> {
    let shm = std::path::Path::new("/dev/shm");
    let shm = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let mine = |n: &str| n.split('-').nth(2) == Some(pid.to_string().as_str());
    [(spill.to_path_buf(), "worker-"), (shm, "quiver-worker-")]
        .into_iter()
        .flat_map(|(base, prefix)| {
            std::fs::read_dir(base)
                .unwrap()
                .flatten()
                .filter(move |e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(prefix) && mine(n.trim_start_matches("quiver-"))
                })
                .map(|e| e.path())
        })
        .collect()
}

/// Waits until worker `pid` has made its two directories; returns them.
fn made_dirs(spill: &std::path::Path, pid: u32) -> Vec<std::path::PathBuf> {
    let t = Instant::now();
    loop {
        let dirs = dirs_of(spill, pid);
        if dirs.len() == 2 || t.elapsed() > Duration::from_secs(30) {
            return dirs;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_workers_files_are_removed_by_the_next_worker_on_its_host() {
    let mut cluster = TestCluster::start(1, &[]);
    let spill = cluster.spill_dir().to_path_buf();
    let first = cluster.worker(0).id();
    let left = made_dirs(&spill, first);
    assert_eq!(
        left.len(),
        2,
        "a spill and a shared-memory directory: {left:?}"
    );
    for d in &left {
        std::fs::write(d.join("chunk.arrow"), [0u8; 4096]).unwrap();
    }
    cluster.kill_worker(0);
    assert!(left.iter().all(|d| d.exists()), "SIGKILL leaves them");

    cluster.start_worker(&[]);
    let second = cluster.worker(1).id();
    let ours = made_dirs(&spill, second);
    assert_eq!(ours.len(), 2, "{ours:?}");
    for d in &left {
        assert!(!d.exists(), "{} outlived its worker", d.display());
    }

    // A live worker's directories survive the next one's sweep, and go
    // when it stops.
    cluster.start_worker(&[]);
    let third = cluster.worker(2).id();
    assert_eq!(made_dirs(&spill, third).len(), 2);
    assert!(
        ours.iter().all(|d| d.exists()),
        "a live worker's files were removed"
    );
    assert!(common::signal(second, "TERM"));
    cluster.worker(1).wait().unwrap();
    for d in &ours {
        assert!(!d.exists(), "{} outlived its worker", d.display());
    }
}

#[test]
fn a_put_to_a_stopped_worker_fails_naming_it_once_it_is_removed() {
    let mut cluster = TestCluster::start_with(1, &["--heartbeat-timeout", "2"], &[]);
    let client = Client::connect(&cluster.address).unwrap();
    let chunk = || {
        let values = arrow::array::Float64Array::from(vec![1.5; 100_000]);
        quiver::chunk::from_array(std::sync::Arc::new(values))
    };
    let key = quiver::Key::new("stopped").unwrap();
    let pid = cluster.worker(0).id();
    assert!(common::signal(pid, "STOP"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn({
        let (client, key, chunk) = (client.clone(), key.clone(), chunk());
        move || tx.send(client.scatter_as(key, chunk).map(|_| ()))
    });
    let got = rx.recv_timeout(Duration::from_secs(60));
    common::signal(pid, "CONT");
    let e = got
        .expect("the put still waits on the stopped worker")
        .unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains("placing 'stopped' on worker 127.0.0.1:")
            && e.contains("it was removed from the cluster meanwhile"),
        "{e}"
    );
    // The key was handed back: once the worker is back, it can be put again.
    let start = Instant::now();
    loop {
        match client.scatter_as(key.clone(), chunk()) {
            Ok(data) => {
                assert_eq!(data.get().unwrap().num_rows(), 100_000);
                break;
            }
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                assert!(!e.to_string().contains("already exists"), "{e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the worker did not come back: {e}"),
        }
    }
}

#[test]
fn a_holder_that_dies_mid_answer_ends_a_get_through_the_center_with_a_clear_error() {
    let mut cluster = TestCluster::start(1, &[]);
    let client = Client::connect(&cluster.address).unwrap();
    // Larger than the HTTP/2 windows between them, so the worker is still
    // sending when it dies.
    let values = arrow::array::Float64Array::from(vec![1.5; 32 << 20]);
    let data = client
        .scatter(quiver::chunk::from_array(std::sync::Arc::new(values)))
        .unwrap();
    let key = data.key().to_string();
    let pid = cluster.worker(0).id();
    let e = cluster.block_on(async {
        let mut center = quiver::flight::net::connect(&cluster.address)
            .await
            .unwrap();
        let ticket = arrow_flight::Ticket::new(key);
        let mut stream = center.do_get(ticket).await.unwrap().into_inner();
        let schema = stream.message().await.unwrap();
        assert!(schema.is_some(), "the schema comes first");
        assert!(common::signal(pid, "KILL"));
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the answer ended as if whole"),
                Err(e) => break e,
            }
        }
    });
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    assert!(
        e.message().contains("its holder") && e.message().contains("127.0.0.1:"),
        "{e}"
    );
}
