//! The cluster as real processes: `quiver center` and `quiver worker`s.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, Float64Array};
use arrow::datatypes::Float64Type;
use common::{Local, TestCluster, child_of, cluster_status, exit_within, quiver_bin, signal};
use quiver::{Call, Client, Connect, Graph, Key, Task, chunk, seed};

#[test]
fn seed_runs_every_way_on_four_worker_processes_and_only_partials_move() {
    let cluster = TestCluster::start(4, &[]);
    let client = Client::connect(&cluster.address).unwrap();
    let (n, m) = (40, 100_000);
    let floor = seed::floor(2, n, m);
    for name in seed::APPROACHES {
        let total = seed::run(name, &client, n, m).unwrap();
        assert!(
            (total - floor).abs() < 1e-6 * floor,
            "{name}: {total} vs {floor}"
        );
    }
    // Each sum ran where its array was: what crossed between workers is partial
    // sums, far less than a single array.
    let moved: u64 = cluster
        .worker_statuses()
        .iter()
        .map(|(_, s)| s.routes.flight_received + s.routes.shm_received)
        .sum();
    assert!(
        moved < (m * 8) as u64 / 10,
        "{moved} bytes moved between workers"
    );
    let status = cluster.status().unwrap();
    assert_eq!(status.workers.len(), 4);
    // Each `random` runs fused into its `sum` where the graph allows it.
    assert!(status.tasks_finished >= (5 * (n + 1)) as u64);
    // Intermediates and released results are gone from every worker.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster
        .worker_statuses()
        .iter()
        .any(|(_, s)| s.store.keys > 0)
    {
        assert!(
            Instant::now() < deadline,
            "keys left behind: {:?}",
            cluster.worker_statuses()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The same mistakes, made through `client`; each one's error.
fn mistakes(client: &Client) -> Vec<quiver::Error> {
    let data = chunk::from_array(Arc::new(Float64Array::from(vec![1.0, 2.0])));
    let held = client.scatter_as(Key::from("twice"), data.clone()).unwrap();
    let mut unknown_op = Graph::new();
    unknown_op.insert("u", Task::new("nope").arg(1));
    let mut failing = Graph::new();
    failing.insert("x", Task::new("arange").arg(4));
    failing.insert("s", Task::new("slice").arg(Key::from("x")).arg(3).arg(9));
    let errors = vec![
        client.get(&Graph::new(), &["nothing".into()]).unwrap_err(),
        client.get(&unknown_op, &["u".into()]).unwrap_err(),
        client.scatter_as(Key::from("twice"), data).unwrap_err(),
        client.get(&failing, &["s".into()]).unwrap_err(),
    ];
    drop(held);
    errors
}

#[test]
fn a_rust_client_gets_the_errors_an_embedded_cluster_raises() {
    let embedded = quiver::Cluster::local(2).unwrap();
    let want: Vec<String> = mistakes(&embedded.client())
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    let cluster = TestCluster::start(2, &[]);
    let client = Client::connect(&cluster.address).unwrap();
    let got: Vec<String> = mistakes(&client).iter().map(|e| format!("{e:?}")).collect();
    assert_eq!(got, want);
}

#[test]
fn scattered_data_feeds_a_graph_and_results_come_from_the_worker() {
    let cluster = TestCluster::start(2, &[]);
    let client = Client::connect(&cluster.address).unwrap();
    let data = chunk::from_array(Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0])));
    let x = client
        .scatter_as(Key::from("my-data"), data.clone())
        .unwrap();
    assert_eq!(x.get().unwrap(), data);
    let mut g = Graph::new();
    g.insert(
        "doubled",
        Task::new("mul").arg(Key::from("my-data")).arg(2.0),
    );
    g.insert("total", Task::new("sum").arg(Key::from("doubled")));
    let out = client.get(&g, &["total".into()]).unwrap();
    assert_eq!(chunk::to_f64(&out[0]).unwrap(), 20.0);
    // Literals, a list of numbers and a number, cross the wire as they are.
    let (g, keys) = common::literals();
    common::check_literals(&client.get(&g, &keys).unwrap());
    // Scattering a key twice is refused with a message.
    let e = client
        .scatter_as(Key::from("my-data"), data.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
    // Errors come back with the task's own text.
    let mut g = Graph::new();
    g.insert(
        "bad",
        Task::new("div")
            .arg(Key::from("my-data"))
            .arg(Key::from("short")),
    );
    g.insert("short", Task::new("arange").arg(2));
    let e = client.get(&g, &["bad".into()]).unwrap_err().to_string();
    assert!(e.contains("bad") && e.contains("div"), "{e}");
    let e = client
        .get(&Graph::new(), &["nothing".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("'nothing'"), "{e}");
    // A dropped handle's release is sent in the background, but always before
    // the client's next request: the key can be scattered again at once.
    drop(x);
    for round in 0..20 {
        let again = client.scatter_as(Key::from("my-data"), data.clone());
        assert!(again.is_ok(), "round {round}: {:?}", again.err());
    }
}

#[test]
fn tasks_sent_ahead_of_their_inputs_run_or_fail_with_them() {
    let cluster = TestCluster::start(2, &[]);
    let client = Client::connect(&cluster.address).unwrap();
    let data = chunk::from_array(Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0])));
    let _x = client.scatter_as(Key::from("data"), data).unwrap();
    // A chain on the worker holding `data`: `plus` and `total` go to it with
    // `doubled`, ahead of the inputs it is still computing.
    let out = client.get(&chain(), &["total".into()]).unwrap();
    assert_eq!(chunk::to_f64(&out[0]).unwrap(), 24.0);
    let ahead = cluster.status().unwrap().tasks_sent_ahead;
    assert_eq!(ahead, 2, "plus and total sent ahead");
    // An input that fails where its consumer waits for it fails that consumer
    // with its own error.
    let mut g = Graph::new();
    g.insert("short", Task::new("arange").arg(2));
    g.insert(
        "bad",
        Task::new("div")
            .arg(Key::from("data"))
            .arg(Key::from("short")),
    );
    g.insert("after", Task::new("sum").arg(Key::from("bad")));
    let e = client.get(&g, &["after".into()]).unwrap_err().to_string();
    assert!(
        e.contains("dependency 'bad' failed") && e.contains("div"),
        "{e}"
    );
    assert_eq!(cluster.status().unwrap().tasks_sent_ahead, ahead + 1);
    // Nothing is left waiting on the workers: the same chain runs again.
    let out = client.get(&chain(), &["total".into()]).unwrap();
    assert_eq!(chunk::to_f64(&out[0]).unwrap(), 24.0);
}

#[test]
fn a_released_input_goes_as_its_last_reader_ends() {
    let cluster = TestCluster::start(2, &[]);
    let client = Client::connect(&cluster.address).unwrap();
    let y = seed::floor(1, 1, 20_000_000);
    let dropped = || -> u64 {
        (cluster.worker_statuses().iter())
            .map(|(_, s)| s.dropped_by_last_reader)
            .sum()
    };
    // A client stalled for the whole of `y` would release `x` too late: a
    // later round would not be.
    for round in 0..3 {
        let (x, r) = (format!("x-{round}"), format!("r-{round}"));
        let (z, yk) = (format!("z-{round}"), format!("y-{round}"));
        let mut g = Graph::new();
        g.insert(x.as_str(), Task::new("random").arg(1000).kwarg("seed", 1));
        let held = client.submit(g, &[x.as_str().into()]).unwrap().remove(0);
        let x_sum: f64 = (held.get().unwrap().column(0))
            .as_primitive::<Float64Type>()
            .values()
            .iter()
            .sum();
        // `r` reads `x` last, once `y` is made from 20M floats: long after
        // the release of `x`, sent before the client's next request.
        let mut g = Graph::new();
        g.insert(
            z.as_str(),
            Task::new("random").arg(20_000_000).kwarg("seed", 0),
        );
        g.insert(yk.as_str(), Task::new("sum").arg(Key::from(z.as_str())));
        let inputs = vec![Key::from(x.as_str()), Key::from(yk.as_str())];
        g.insert(r.as_str(), Task::new("sum").arg(inputs));
        let result = client.submit(g, &[r.as_str().into()]).unwrap().remove(0);
        drop(held);
        let got = result.get_f64().unwrap();
        assert!(
            (got - (x_sum + y)).abs() < 1e-6 * got.abs(),
            "{got} vs {}",
            x_sum + y
        );
        if dropped() > 0 {
            assert_eq!(dropped(), 1);
            return;
        }
    }
    panic!("no input was dropped by its last reader");
}

/// `THP_enabled` of process `pid` ("self" for this one), if the kernel says.
#[cfg(target_os = "linux")]
fn huge_pages(pid: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_string())
}

#[test]
#[cfg(target_os = "linux")]
fn the_center_turns_huge_pages_off_for_itself_and_workers_keep_them() {
    let mut cluster = TestCluster::start(1, &[]);
    // Kernels before 5.0 do not report the flag.
    let Some(center) = huge_pages(&cluster.center_pid().to_string()) else {
        return;
    };
    assert_eq!(center, "0", "the center still allows huge pages");
    // The flag is inherited: workers can only have it if this process does.
    if huge_pages("self").as_deref() == Some("1") {
        let worker = cluster.worker(0).id().to_string();
        assert_eq!(huge_pages(&worker).as_deref(), Some("1"));
    }
}

/// `total = sum(data * 2 + 1)`, one task per step.
fn chain() -> Graph {
    let mut g = Graph::new();
    g.insert("doubled", Task::new("mul").arg(Key::from("data")).arg(2.0));
    g.insert("plus", Task::new("add").arg(Key::from("doubled")).arg(1.0));
    g.insert("total", Task::new("sum").arg(Key::from("plus")));
    g
}

/// Moves one array of `floats` between two workers with the given worker flags
/// and checks the content; returns bytes received by Flight, by shared memory,
/// realigned after Flight, and written to shared memory to be handed over.
fn move_array(worker_args: &[&str], floats: u64) -> (u64, u64, u64, u64) {
    let cluster = TestCluster::start(2, worker_args);
    let client = Client::connect(&cluster.address).unwrap();
    // Two identical arrays land on the two workers (roots spread), so `sub`
    // must bring one across; it is all zeros exactly when the bytes are intact.
    let mut g = Graph::new();
    g.insert("a", Task::new("random").arg(floats).kwarg("seed", 7));
    g.insert("b", Task::new("random").arg(floats).kwarg("seed", 7));
    g.insert(
        "d",
        Task::new("sub").arg(Key::from("a")).arg(Key::from("b")),
    );
    g.insert("absd", Task::new("abs").arg(Key::from("d")));
    g.insert("zero", Task::new("max").arg(Key::from("absd")));
    // Each array is read twice, so neither is fused into `d` and one must travel.
    g.insert("sa", Task::new("sum").arg(Key::from("a")));
    g.insert("sb", Task::new("sum").arg(Key::from("b")));
    let out = client
        .get(&g, &["zero".into(), "sa".into(), "sb".into()])
        .unwrap();
    assert_eq!(
        chunk::to_f64(&out[0]).unwrap(),
        0.0,
        "the moved array differs"
    );
    let sa = chunk::to_f64(&out[1]).unwrap();
    assert!((sa / floats as f64 - 0.5).abs() < 0.01);
    let s = cluster.worker_statuses();
    let sum = |f: fn(&quiver::flight::protocol::RouteCounters) -> u64| {
        s.iter().map(|(_, w)| f(&w.routes)).sum::<u64>()
    };
    (
        sum(|r| r.flight_received),
        sum(|r| r.shm_received),
        sum(|r| r.flight_realigned),
        sum(|r| r.shm_written),
    )
}

#[test]
fn a_gigabyte_moves_between_workers_by_flight_and_by_shared_memory() {
    let floats = (1u64 << 30) / 8;
    let bytes = floats * 8;
    let (flight, shm, realigned, _) = move_array(&["--no-shm"], floats);
    assert!(
        flight >= bytes && flight < bytes + (1 << 20),
        "flight route moved {flight}"
    );
    assert_eq!(realigned, 0, "a received body is used where it landed");
    assert_eq!(shm, 0);
    let (flight, shm, _, written) = move_array(&["--host-id", "same-host"], floats);
    assert!(
        shm >= bytes && shm < bytes + (1 << 20),
        "shm route moved {shm}"
    );
    // The array was computed in shared memory: the peer mapped it, nothing was copied.
    assert_eq!(written, 0, "bytes copied into shared memory");
    assert!(
        flight < 1 << 20,
        "only small partials over Flight, got {flight}"
    );
}

/// Retires worker `i` with `quiver retire` and waits for it to exit.
fn retire(cluster: &mut TestCluster, i: usize) {
    let name = format!("w{i}");
    let status = cluster.status().unwrap();
    let address = &status
        .workers
        .iter()
        .find(|w| w.name == name)
        .unwrap()
        .address;
    let ok = Command::new(quiver_bin())
        .args(["retire", address])
        .status()
        .unwrap()
        .success();
    assert!(ok, "quiver retire {address}");
    let exit = cluster.worker(i).wait().unwrap();
    assert!(exit.success(), "{name} exits cleanly: {exit:?}");
}

#[test]
fn data_handed_on_twice_by_shared_memory_stays_in_the_pages_it_was_computed_in() {
    let same = ["--host-id", "same-host"];
    let mut cluster = TestCluster::start(1, &same);
    let first_pid = cluster.worker(0).id();
    let client = Client::connect(&cluster.address).unwrap();
    let pool = client.pool();
    let floats = 4u64 << 20;
    let a = pool
        .apply("random", Call::new().arg(floats).kw("seed", 3))
        .unwrap();
    let expected = pool.apply("sum", &a).unwrap().get_f64().unwrap();
    // w0 hands `a` to w1, which maps it; w1 hands it on to w2. Neither
    // hand-over may copy it, though w0 is gone by the second.
    for (from, to) in [(0, 1), (1, 2)] {
        assert_eq!(cluster.start_worker(&same), to);
        assert!(cluster.wait_workers(2, Duration::from_secs(30)));
        retire(&mut cluster, from);
    }
    let last_pid = cluster.worker(2).id();
    let maps = std::fs::read_to_string(format!("/proc/{last_pid}/maps")).unwrap();
    let first_memfd = format!("/memfd:quiver-{first_pid}-");
    let mapped: u64 = maps
        .lines()
        .filter(|l| l.contains(&first_memfd))
        .map(|l| {
            let (lo, hi) = l.split(' ').next().unwrap().split_once('-').unwrap();
            u64::from_str_radix(hi, 16).unwrap() - u64::from_str_radix(lo, 16).unwrap()
        })
        .sum();
    assert!(
        mapped >= floats * 8,
        "w2 maps {mapped} bytes of w0's memory:\n{maps}"
    );
    let status = cluster.worker_statuses();
    assert_eq!(status.len(), 1);
    let routes = &status[0].1.routes;
    assert!(routes.shm_received >= floats * 8, "{routes:?}");
    assert!(routes.flight_received < 1 << 20, "{routes:?}");
    assert_eq!(pool.apply("sum", &a).unwrap().get_f64().unwrap(), expected);
}

#[test]
fn a_spilled_chunk_is_handed_over_by_mapping_its_spill_file() {
    let same = ["--host-id", "same-host"];
    // Three 32 MiB arrays on a 128 MiB worker: its store (70% of the limit)
    // spills one of them, and it stays under its pause threshold (85%).
    let mut cluster = TestCluster::start(1, &[&same[..], &["--memory-limit", "128MiB"]].concat());
    let first_pid = cluster.worker(0).id();
    let client = Client::connect(&cluster.address).unwrap();
    let pool = client.pool();
    let floats = 4u64 << 20;
    let random = |seed: u64| Call::new().arg(floats).kw("seed", seed);
    let arrays: Vec<_> = (0..3)
        .map(|seed| pool.apply("random", random(seed)).unwrap())
        .collect();
    for a in &arrays {
        a.wait().unwrap();
    }
    let spilled = cluster.worker_statuses()[0].1.store.spilled_bytes;
    assert!(spilled >= floats * 8, "w0 spilled {spilled} bytes");
    assert_eq!(cluster.start_worker(&same), 1);
    assert!(cluster.wait_workers(2, Duration::from_secs(30)));
    retire(&mut cluster, 0);
    // w1 maps w0's spill file itself (deleted by now, as w0 has exited).
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", cluster.worker(1).id())).unwrap();
    let spill_dir = format!("/worker-0-{first_pid}-");
    let mapped: u64 = maps
        .lines()
        .filter(|l| l.contains(&spill_dir))
        .map(|l| {
            let (lo, hi) = l.split(' ').next().unwrap().split_once('-').unwrap();
            u64::from_str_radix(hi, 16).unwrap() - u64::from_str_radix(lo, 16).unwrap()
        })
        .sum();
    assert!(
        mapped >= floats * 8,
        "w1 maps {mapped} bytes of w0's spill files:\n{maps}"
    );
    let routes = cluster.worker_statuses()[0].1.routes.clone();
    assert!(routes.shm_received >= 3 * floats * 8, "{routes:?}");
    assert!(routes.flight_received < 1 << 20, "{routes:?}");
    for (seed, a) in arrays.iter().enumerate() {
        let fresh = pool.apply("random", random(seed as u64)).unwrap();
        let (got, want) = (pool.apply("sum", a).unwrap(), pool.apply("sum", &fresh));
        assert_eq!(
            got.get_f64().unwrap(),
            want.unwrap().get_f64().unwrap(),
            "array {seed} changed on the way"
        );
    }
}

#[test]
fn a_client_that_vanishes_mid_run_leaves_the_cluster_healthy() {
    let cluster = TestCluster::start_with(2, &["--session-timeout", "2"], &[]);
    let seed_bin = std::path::Path::new(quiver_bin())
        .parent()
        .unwrap()
        .join("examples/seed");
    let mut child = Command::new(&seed_bin)
        .args([
            "--scheduler",
            &cluster.address,
            "--arrays",
            "2000",
            "--size",
            "200000",
            "--approach",
            "pool",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", seed_bin.display()));
    // Kill it once work is under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.status().unwrap().tasks_finished < 10 {
        assert!(Instant::now() < deadline, "the client never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Its session expires and everything it held is released.
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.status().unwrap().tasks > 0 {
        assert!(
            Instant::now() < deadline,
            "the vanished client's keys were never released"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // And the cluster still works, with every worker up.
    let client = Client::connect(&cluster.address).unwrap();
    let total = seed::run("graph", &client, 8, 1000).unwrap();
    assert!((total - seed::floor(1, 8, 1000)).abs() < 1e-6);
    assert_eq!(cluster.status().unwrap().workers.len(), 2);
}

#[test]
fn bad_addresses_and_busy_ports_get_clear_errors() {
    let out = Command::new(quiver_bin())
        .args(["status", "127.0.0.1:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot reach 127.0.0.1:1"), "{err}");
    let out = Command::new(quiver_bin())
        .args(["status", "not an address"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let out = Command::new(quiver_bin())
        .args(["center", "--port", &port])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("port is in use"), "{err}");
    assert!(Client::connect(&format!("127.0.0.1:{port}")).is_err());
}

#[test]
fn a_worker_whose_center_goes_away_exits_with_a_message() {
    let mut cluster = TestCluster::start(1, &[]);
    cluster.kill_center();
    let status = exit_within(cluster.worker(0), Duration::from_secs(40));
    assert!(!status.success());

    // `--center-timeout` bounds the wait at start-up too.
    let out = Command::new(quiver_bin())
        .args(["worker", "127.0.0.1:1", "--center-timeout", "1"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot reach 127.0.0.1:1"), "{err}");
    assert!(err.contains("no center answered for 1s"), "{err}");
    // An address without a port is a mistake, refused without waiting.
    let out = Command::new(quiver_bin())
        .args(["worker", "node1"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("not a host:port address"), "{err}");
}

#[test]
fn the_pool_map_works_against_a_remote_center() {
    let cluster = TestCluster::start(3, &[]);
    let client = Client::connect(&cluster.address).unwrap();
    let pool = client.pool();
    let xs = pool
        .map("arange", (1..=6).map(|n| Call::new().arg(n)))
        .unwrap();
    let sums = pool.map("sum", &xs).unwrap();
    let totals: Vec<f64> = sums.iter().map(|s| s.get_f64().unwrap()).collect();
    assert_eq!(totals, [0.0, 1.0, 3.0, 6.0, 10.0, 15.0]);
    pool.delete(xs);
}

#[test]
fn quiver_local_starts_a_cluster_and_stops_it_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut local = Local::start(&["--workers", "3", "--port", &port.to_string()]);
    let address = format!("127.0.0.1:{port}");
    assert!(
        local.line.starts_with("quiver cluster at") && local.address == address,
        "{}",
        local.line
    );
    // Numbered by the center as they are named.
    let status = cluster_status(&address).expect("the center answers");
    let named: Vec<(u32, &str)> = status
        .workers
        .iter()
        .map(|w| (w.id, w.name.as_str()))
        .collect();
    assert_eq!(
        named,
        [(0, "worker-0"), (1, "worker-1"), (2, "worker-2")],
        "{named:?}"
    );
    let client = Client::connect(&address).unwrap();
    assert_eq!(
        seed::run("delayed", &client, 4, 100).unwrap(),
        seed::floor(1, 4, 100)
    );
    drop(client);
    // Its workers spill under a directory of its own, which it removes on
    // stopping, with whatever a killed worker left there.
    let spill = std::env::temp_dir().join(format!("quiver-local-{}", local.child.id()));
    let left = spill.join("worker-0").join("worker-0-1");
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join("c-0.arrow"), b"spilled").unwrap();
    // Each worker shares memory from a directory named for its pid.
    let shared = |pid: u32| {
        let dirs = std::fs::read_dir("/dev/shm")
            .into_iter()
            .flatten()
            .flatten();
        let of_pid = format!("-{pid}-");
        (dirs.map(|d| d.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.starts_with("quiver-worker-") && n.contains(&of_pid))
            .collect::<Vec<_>>()
    };
    let workers: Vec<u32> = (0..3)
        .map(|i| child_of(local.child.id(), &["--name", &format!("worker-{i}")]).unwrap())
        .collect();
    assert!(workers.iter().all(|&w| shared(w).len() == 1));
    assert!(signal(local.child.id(), "TERM"));
    assert!(local.child.wait().unwrap().success());
    assert!(!spill.exists(), "{} is left", spill.display());
    for w in workers {
        assert!(shared(w).is_empty(), "{:?} are left", shared(w));
    }
    // The center (and with it the cluster) is gone.
    let out = Command::new(quiver_bin())
        .args(["status", &address])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn quiver_local_starts_again_a_worker_that_dies_not_one_that_retires() {
    let mut local = Local::start(&["--workers", "2", "--port", "0"]);
    let kill = |pid: u32| assert!(signal(pid, "KILL"), "kill {pid}");
    let wait_pid = |name: &str, not: u32| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match local.worker_pid(name) {
                Some(pid) if pid != not => return pid,
                _ if Instant::now() > deadline => panic!("no new {name}: {}", local.stderr()),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    };
    let first = wait_pid("worker-0", 0);
    kill(first);
    let again = wait_pid("worker-0", first);
    assert!(local.said(
        "worker-0 exited (signal: 9 (SIGKILL)); starting it again",
        Duration::from_secs(5)
    ));
    // Dead again at once: it would only die again, so it is left stopped.
    kill(again);
    assert!(
        local.said("leaving it stopped", Duration::from_secs(10)),
        "{}",
        local.stderr()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(local.worker_pid("worker-0"), None);
    // A retired worker exits cleanly, and stays stopped.
    let status = cluster_status(&local.address).unwrap();
    let one = status
        .workers
        .iter()
        .find(|w| w.name == "worker-1")
        .unwrap();
    let out = Command::new(quiver_bin())
        .args(["retire", &one.address])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        local.said(
            "worker-1 exited cleanly (retired); not starting it again",
            Duration::from_secs(30)
        ),
        "{}",
        local.stderr()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(local.worker_pid("worker-1"), None);
    assert!(cluster_status(&local.address).unwrap().workers.is_empty());
    assert!(signal(local.child.id(), "TERM"));
    assert!(local.child.wait().unwrap().success());
}

#[test]
fn quiver_local_stopped_while_starting_leaves_no_process_behind() {
    let local = Command::new(quiver_bin())
        .args(["local", "--workers", "4", "--port", "0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stopped as soon as its center runs, before its workers have joined.
    let deadline = Instant::now() + Duration::from_secs(10);
    let center = loop {
        if let Some(pid) = child_of(local.id(), &["center"]) {
            break pid;
        }
        assert!(Instant::now() < deadline, "no center started");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(signal(local.id(), "TERM"));
    let out = local.wait_with_output().unwrap();
    let alive = std::path::Path::new(&format!("/proc/{center}")).exists();
    if alive {
        // Its workers exit by themselves once their center is gone.
        signal(center, "KILL");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!alive, "the center ({center}) outlived quiver local: {err}");
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(err.contains("stopped while starting"), "{err}");
}

/// Whether process `pid` runs (exists, and is not a zombie awaiting its reaper).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

#[test]
fn quiver_local_killed_takes_its_processes_with_it() {
    let mut local = Local::start(&["--workers", "2", "--port", "0"]);
    let pid = local.child.id();
    let children: Vec<u32> = [
        &["center"][..],
        &["--name", "worker-0"],
        &["--name", "worker-1"],
    ]
    .iter()
    .map(|args| child_of(pid, args).expect("quiver local's child runs"))
    .collect();
    let spill = std::env::temp_dir().join(format!("quiver-local-{pid}"));
    assert!(spill.is_dir());
    // SIGKILL: no chance to stop anything itself.
    assert!(signal(pid, "KILL"));
    local.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while children.iter().any(|&c| running(c)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let orphans: Vec<u32> = children.iter().copied().filter(|&c| running(c)).collect();
    for &c in &orphans {
        signal(c, "KILL");
    }
    assert!(orphans.is_empty(), "{orphans:?} outlived quiver local");
    // What it could not remove goes when the next one starts.
    let next = Local::start(&["--workers", "1", "--port", "0"]);
    assert!(!spill.exists(), "{} is left", spill.display());
    drop(next);
}

#[test]
fn quiver_retire_given_the_center_says_to_give_a_worker() {
    let cluster = TestCluster::start(1, &[]);
    let out = Command::new(quiver_bin())
        .args(["retire", &cluster.address])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("this is the center; a worker is retired at its own address"),
        "{err}"
    );
    assert_eq!(cluster.status().unwrap().workers.len(), 1);
}

#[test]
fn status_shows_each_worker_as_it_is_now_not_as_of_its_last_heartbeat() {
    // Heartbeats a minute apart: the center's own figures stay those the
    // workers registered with, before any data.
    let mut cluster = TestCluster::start(2, &["--heartbeat-ms", "60000"]);
    let client = Client::connect(&cluster.address).unwrap();
    let held = client
        .pool()
        .apply("random", Call::new().arg(100_000).kw("seed", 1))
        .unwrap();
    held.get().unwrap();
    let stopped = cluster.worker(0).id();
    let status = |json: bool| {
        let mut args = vec!["status", cluster.address.as_str()];
        if json {
            args.push("--json");
        }
        let out = Command::new(quiver_bin()).args(&args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let s: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(s["totals"]["keys"], 1, "{s}");
    assert!(
        s["totals"]["memory_bytes"].as_u64().unwrap() >= 800_000,
        "{s}"
    );
    // A worker that cannot answer keeps the center's figures, and is named.
    assert!(signal(stopped, "STOP"));
    let text = status(false);
    assert!(signal(stopped, "CONT"));
    let names: Vec<String> =
        serde_json::from_str::<serde_json::Value>(&status(true)).unwrap()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_string())
            .collect();
    let silent = text
        .lines()
        .find_map(|l| l.strip_prefix("as of their last heartbeat (no answer now): "))
        .unwrap_or_else(|| panic!("no worker named as silent:\n{text}"));
    assert_eq!(silent.split(", ").count(), 1, "{text}");
    assert!(
        names.iter().any(|n| n == silent),
        "{silent} not in {names:?}"
    );
    drop(held);
}

/// examples/custom_ops.rs: `quiver::cli::main` with `clip` added.
fn custom_ops_program() -> PathBuf {
    Path::new(quiver_bin())
        .parent()
        .unwrap()
        .join("examples/custom_ops")
}

#[test]
fn a_program_with_an_op_of_its_own_runs_it_on_its_own_processes() {
    let local = Local::start_program(&custom_ops_program(), &["--workers", "2", "--port", "0"]);
    let client = Client::connect(&local.address).unwrap();
    let mut g = Graph::new();
    g.insert("x", Task::new("arange").arg(10));
    g.insert(
        "clipped",
        Task::new("clip").arg(Key::from("x")).arg(2.0).arg(6.5),
    );
    g.insert("total", Task::new("sum").arg(Key::from("clipped")));
    let out = client.get(&g, &["clipped".into(), "total".into()]).unwrap();
    let clipped = out[0].column(0).as_primitive::<Float64Type>();
    let want = [2.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0, 6.5, 6.5, 6.5];
    assert_eq!(clipped.values().to_vec(), want);
    assert_eq!(chunk::to_f64(&out[1]).unwrap(), 43.5);

    // Its center checks the op's signature at submission, and its workers
    // report the op's own errors.
    let mut g = Graph::new();
    g.insert("bad", Task::new("clip").arg(Key::from("x")).arg(1.0));
    g.insert("x", Task::new("arange").arg(10));
    let e = client.get(&g, &["bad".into()]).unwrap_err();
    assert!(matches!(e, quiver::Error::InvalidGraph { .. }), "{e}");
    let mut g = Graph::new();
    g.insert(
        "upside-down",
        Task::new("clip").arg(Key::from("x")).arg(3.0).arg(1.0),
    );
    g.insert("x", Task::new("arange").arg(10));
    let e = client
        .get(&g, &["upside-down".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs lo ≤ hi, got 3 and 1"), "{e}");

    // A worker of the stock binary cannot run `clip`: refused when it joins.
    let mut stock = Command::new(quiver_bin())
        .args(["worker", &local.address])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = exit_within(&mut stock, Duration::from_secs(20));
    let mut said = String::new();
    std::io::Read::read_to_string(&mut stock.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!status.success(), "{said}");
    assert!(said.contains("lacks ops the center has: clip"), "{said}");
    assert_eq!(cluster_status(&local.address).unwrap().workers.len(), 2);
}

#[test]
fn a_worker_leaves_a_center_restarted_from_a_program_with_ops_it_lacks() {
    let mut cluster = TestCluster::start(0, &[]);
    let w = cluster.start_worker_logged(&[]);
    assert!(cluster.wait_workers(1, Duration::from_secs(10)));
    cluster.restart_center_as(&custom_ops_program());
    // The new center does not know the worker, which registers again, is
    // refused for good, and says why as it exits.
    let status = exit_within(cluster.worker(w), Duration::from_secs(20));
    assert!(!status.success());
    let log = cluster.stop_worker_and_read_log(w);
    assert!(log.contains("lacks ops the center has: clip"), "{log}");
}
