//! The embedded cluster end to end: the seed workload every way, memory that
//! stays small, spilling past the limit, handles, user ops and errors.

mod common;

use std::sync::Arc;

use arrow::array::{Array as _, AsArray, Float64Array};
use arrow::datatypes::Float64Type;
use quiver::{Array, Call, Cluster, Error, Graph, Key, Task, chunk, delayed, seed};

fn empty_stores(c: &Cluster, workers: usize) -> bool {
    (0..workers).all(|i| c.store(i).unwrap().stats().keys == 0)
}

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

#[test]
fn seed_workload_every_way_agrees_and_frees_intermediates() {
    let (n, m, w) = (40, 50_000, 3);
    let chunk_bytes = (m * 8) as u64;
    let floor = seed::floor(2, n, m);
    for name in seed::APPROACHES {
        let cluster = Cluster::local(w).unwrap();
        let client = cluster.client();
        let total = seed::run(name, &client, n, m).unwrap();
        assert!(
            (total - floor).abs() < 1e-6 * floor,
            "{name}: {total} vs {floor}"
        );
        assert!(
            (total - (n * m) as f64 / 2.0).abs() < seed::tolerance(n, m),
            "{name}"
        );
        assert!(
            wait_until(|| empty_stores(&cluster, w)),
            "{name}: intermediates left behind"
        );
        if name != "pool" && name != "mix" {
            // Depth-first order: a few arrays per worker at a time, never all N.
            for i in 0..w {
                let peak = cluster.store(i).unwrap().stats().peak_memory_bytes;
                assert!(
                    peak <= 4 * chunk_bytes,
                    "{name}: worker {i} peaked at {peak} bytes"
                );
            }
        }
    }
}

#[test]
fn ten_times_the_memory_limit_completes_by_spilling() {
    let dir = tempfile::tempdir().unwrap();
    let (n, m) = (40, 25_000); // 40 chunks of 200 kB = 8 MB against 2 × 400 kB
    let cluster = Cluster::builder()
        .workers(2)
        .memory_limit(400_000)
        .spill_dir(dir.path())
        .build()
        .unwrap();
    let client = cluster.client();
    let pool = client.pool();
    let arrays = pool
        .map("random", (0..n).map(|i| Call::new().arg(m).kw("seed", i)))
        .unwrap();
    let maxes = pool.map("max", &arrays).unwrap();
    let total = pool.apply("sum", &maxes).unwrap().get_f64().unwrap();
    assert!(total > 0.99 * n as f64 && total < n as f64);
    let stats = cluster.worker_stats();
    let spilled: u64 = stats.iter().map(|s| s.spill_count).sum();
    assert!(spilled >= 30, "{stats:?}");
    for s in &stats {
        assert!(s.memory_bytes <= 400_000, "{s:?}");
    }
    // A spilled array comes back from its mapped file without a copy.
    let (i, key) = (0..2)
        .flat_map(|i| arrays.iter().map(move |a| (i, a.key().clone())))
        .find(|(i, k)| cluster.store(*i).unwrap().spill_file(k).is_some())
        .expect("some array spilled");
    let store = cluster.store(i).unwrap();
    let (file, range) = store.spill_file(&key).unwrap();
    let got = arrays
        .iter()
        .find(|a| *a.key() == key)
        .unwrap()
        .get()
        .unwrap();
    let ptr = got
        .column(0)
        .as_primitive::<Float64Type>()
        .values()
        .as_ptr() as usize;
    assert!(range.contains(&ptr), "{ptr:#x} not in {range:x?}");
    let path = file.path().to_path_buf();
    drop((file, got));
    // Freeing the chunks deletes their spill files.
    drop((arrays, maxes));
    assert!(wait_until(|| !path.exists()));
    assert!(wait_until(|| common::files_under(dir.path()).is_empty()));
}

#[test]
fn handles_release_on_drop_and_feed_later_graphs() {
    let cluster = Cluster::local(2).unwrap();
    let client = cluster.client();
    let pool = client.pool();
    let a = pool.apply("arange", 10).unwrap();
    let b = pool.apply("mul", Call::new().arg(&a).arg(2.0)).unwrap();
    let mut g = Graph::new();
    g.insert("s", Task::new("sum").arg(b.key()));
    let out = client.get(&g, &["s".into()]).unwrap();
    assert_eq!(chunk::to_f64(&out[0]).unwrap(), 90.0);
    assert_eq!(b.get().unwrap().num_rows(), 10);
    pool.delete(vec![a]);
    drop(b);
    assert!(wait_until(|| empty_stores(&cluster, 2)));
}

#[test]
fn a_wait_by_key_for_a_key_released_meanwhile_ends_saying_so() {
    // As the C ABI waits: by key, while another thread may release it.
    let cluster = Cluster::local(1).unwrap();
    let client = cluster.client();
    let mut g = Graph::new();
    g.insert("big", Task::new("random").arg(100_000_000));
    g.insert("s", Task::new("sum").arg(Key::from("big")));
    let held = client.submit(g, &["s".into()]).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let backend = client.backend().clone();
    std::thread::spawn(move || tx.send(backend.wait(&"s".into(), None)));
    std::thread::sleep(std::time::Duration::from_millis(100));
    drop(held);
    let waited = rx.recv_timeout(std::time::Duration::from_secs(60));
    let e = waited.expect("the wait still waits").unwrap_err();
    assert!(matches!(e, Error::KeyNotFound { .. }), "{e}");
}

#[test]
fn a_map_larger_than_one_submission_returns_every_handle_or_releases_them_all() {
    let cluster = Cluster::local(2).unwrap();
    let client = cluster.client();
    let pool = client.pool();
    let n = 25_000;
    let handles = pool
        .map("full", (0..n).map(|i| Call::new().arg(1).arg(i as f64)))
        .unwrap();
    assert_eq!(handles.len(), n);
    for i in [0, 9_999, 10_000, n - 1] {
        assert_eq!(chunk::to_f64(&handles[i].get().unwrap()).unwrap(), i as f64);
    }
    drop(handles);
    assert!(wait_until(|| empty_stores(&cluster, 2)));
    // A call the center refuses in a later submission fails the whole map, and
    // the calls already submitted are released.
    let calls = (0..n).map(|i| match i {
        15_000 => Call::new().arg(-1).arg(0.0),
        _ => Call::new().arg(1).arg(0.0),
    });
    let e = pool.map("full", calls).unwrap_err().to_string();
    assert!(e.contains("-15000'") && e.contains("non-negative"), "{e}");
    assert!(wait_until(|| empty_stores(&cluster, 2)));
}

#[test]
fn scatter_and_array_ops_match_local_arithmetic() {
    let cluster = Cluster::local(3).unwrap();
    let client = cluster.client();
    let x = Array::arange(1000, 128);
    let y = &(&x * 2.0) + &x; // 3x
    assert_eq!(y.sum().compute_f64(&client).unwrap(), 3.0 * 499_500.0);
    assert_eq!(y.max().compute_f64(&client).unwrap(), 2997.0);
    assert_eq!(y.min().compute_f64(&client).unwrap(), 0.0);
    assert_eq!(x.count().compute_f64(&client).unwrap(), 1000.0);
    assert!((x.mean().compute_f64(&client).unwrap() - 499.5).abs() < 1e-9);
    let std = x.std().compute_f64(&client).unwrap();
    assert!(
        (std - ((1000f64 * 1000.0 - 1.0) / 12.0).sqrt()).abs() < 1e-9,
        "{std}"
    );
    let all = (-&y).compute(&client).unwrap();
    assert_eq!(all.num_rows(), 1000);
    assert_eq!(
        all.column(0).as_primitive::<Float64Type>().value(999),
        -2997.0
    );
    let chunks: Vec<_> = (0..4)
        .map(|i| chunk::from_array(Arc::new(Float64Array::from(vec![i as f64; 5]))))
        .collect();
    let s = Array::from_chunks(&client, chunks).unwrap();
    assert_eq!(s.sum().compute_f64(&client).unwrap(), 30.0);
    assert!(x.zip("add", &s).is_err());
}

#[test]
fn arrays_chunked_differently_line_up_and_rechunk() {
    let cluster = Cluster::local(2).unwrap();
    let client = cluster.client();
    let values = |a: &Array| {
        let c = a.compute(&client).unwrap();
        c.column(0).as_primitive::<Float64Type>().values().to_vec()
    };
    let want: Vec<f64> = (0..1000).map(|i| 3.0 * i as f64).collect();
    let x = Array::arange(1000, 128);
    let y = Array::arange(1000, 300);
    let sum = &(&x * 2.0) + &y;
    assert_eq!(sum.chunk_lens().iter().sum::<usize>(), 1000);
    assert_eq!(values(&sum), want);
    assert_eq!(sum.sum().compute_f64(&client).unwrap(), 3.0 * 499_500.0);
    for len in [1, 7, 128, 999, 1000, 5000] {
        let r = sum.rechunk(len);
        assert!(
            r.chunk_lens()[..r.chunks().len() - 1]
                .iter()
                .all(|&n| n == len)
        );
        assert_eq!(values(&r), want, "chunks of {len}");
    }
    let parts: Vec<_> = [3.0, 0.0, 5.0]
        .iter()
        .map(|&n| {
            let c = chunk::from_array(Arc::new(Float64Array::from(vec![n; n as usize])));
            (client.scatter(c).unwrap(), n as usize)
        })
        .collect();
    let held = Array::from_remote(parts);
    let diff = &held - &Array::arange(8, 3);
    let got = values(&diff);
    assert_eq!(got, [3.0, 2.0, 1.0, 2.0, 1.0, 0.0, -1.0, -2.0]);
    let e = held.zip("add", &x).unwrap_err().to_string();
    assert!(e.contains("8 elements vs 1000"), "{e}");
}

#[test]
fn user_ops_run_on_the_workers() {
    let cluster = Cluster::builder()
        .workers(2)
        .op("square_sum", |args, _| {
            let c = args[0].chunk()?;
            let v = c.column(0).as_primitive::<Float64Type>();
            Ok(chunk::scalar(v.values().iter().map(|x| x * x).sum()))
        })
        .build()
        .unwrap();
    let client = cluster.client();
    let d = delayed("square_sum", delayed("arange", 4));
    assert_eq!(d.compute_f64(&client).unwrap(), 14.0);
}

#[test]
fn errors_name_the_key_and_reach_the_caller() {
    let cluster = Cluster::local(2).unwrap();
    let client = cluster.client();
    let mut g = Graph::new();
    g.insert("a", Task::new("sum").arg(Key::from("nowhere")));
    let e = client.get(&g, &["a".into()]).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidGraph { key, .. } if key.as_str() == "a"),
        "{e}"
    );
    assert!(e.to_string().contains("missing dependency 'nowhere'"));

    let cluster = Cluster::builder()
        .workers(1)
        .op("explode", |_, _| panic!("kaboom"))
        .build()
        .unwrap();
    let client = cluster.client();
    let mut g = Graph::new();
    g.insert("boom", Task::new("explode"));
    g.insert("after", Task::new("sum").arg(Key::from("boom")));
    let e = client.get(&g, &["after".into()]).unwrap_err().to_string();
    assert!(
        e.contains("after") && e.contains("dependency 'boom' failed") && e.contains("kaboom"),
        "{e}"
    );
    // A failure does not take the cluster down.
    assert_eq!(
        delayed("sum", delayed("full", Call::new().arg(3).arg(2.0)))
            .compute_f64(&client)
            .unwrap(),
        6.0
    );
    let mut g = Graph::new();
    g.insert(
        "bad",
        Task::new("div").arg(Key::from("x")).arg(Key::from("y")),
    );
    g.insert("x", Task::new("arange").arg(3));
    g.insert("y", Task::new("arange").arg(4));
    let e = client.get(&g, &["bad".into()]).unwrap_err().to_string();
    assert!(e.contains("'bad'") && e.contains("div"), "{e}");
}

#[test]
fn delayed_values_share_common_inputs() {
    let cluster = Cluster::local(2).unwrap();
    let client = cluster.client();
    let x = delayed("arange", 5);
    let both = delayed("add", Call::new().arg(&x).arg(&x));
    let total = delayed("sum", vec![delayed("sum", &both), delayed("sum", &x)]);
    assert_eq!(total.compute_f64(&client).unwrap(), 30.0);
    let got = client.compute(&[&x, &both]).unwrap();
    assert_eq!(got[1].column(0).len(), 5);
}

#[test]
fn a_given_spill_dir_keeps_what_was_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("notes.txt");
    std::fs::write(&mine, b"the user's own file").unwrap();
    let cluster = Cluster::builder()
        .workers(2)
        .memory_limit(100_000)
        .spill_dir(dir.path())
        .build()
        .unwrap();
    let pool = cluster.client().pool();
    let arrays = pool
        .map(
            "random",
            (0..8).map(|i| Call::new().arg(25_000).kw("seed", i)),
        )
        .unwrap();
    for a in &arrays {
        a.wait().unwrap();
    }
    let spilled: u64 = cluster.worker_stats().iter().map(|s| s.spill_count).sum();
    assert!(spilled > 0, "nothing spilled");
    drop((arrays, pool, cluster));
    // The cluster goes with its last owner, which may be a worker thread.
    let only_mine = || {
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        left.len() == 1
    };
    assert!(
        wait_until(only_mine),
        "the cluster's own directory outlived it"
    );
    assert!(
        mine.exists(),
        "the cluster removed its spill dir's other files"
    );
}

#[test]
fn an_empty_array_reduces_to_what_its_op_says_of_no_values() {
    let cluster = Cluster::local(2).unwrap();
    let client = cluster.client();
    let empty = Array::random(0, 1000, 7);
    assert!(empty.is_empty() && empty.chunks().is_empty());
    assert_eq!(empty.sum().compute_f64(&client).unwrap(), 0.0);
    assert_eq!(empty.count().compute_f64(&client).unwrap(), 0.0);
    let e = empty.min().compute_f64(&client).unwrap_err().to_string();
    assert!(e.contains("reduction of no values"), "{e}");
    let e = empty.mean().compute_f64(&client).unwrap_err().to_string();
    assert!(e.contains("mean of no values"), "{e}");
    // As over one chunk with nothing in it.
    let no_rows = chunk::from_array(Arc::new(Float64Array::from(Vec::<f64>::new())));
    let one_empty = Array::from_chunks(&client, vec![no_rows]).unwrap();
    assert_eq!((&one_empty * 2.0).sum().compute_f64(&client).unwrap(), 0.0);
    let e = one_empty
        .max()
        .compute_f64(&client)
        .unwrap_err()
        .to_string();
    assert!(e.contains("reduction of no values"), "{e}");
}

#[test]
fn literals_are_read_as_on_a_cluster_of_processes() {
    // The same graph as in tests/cluster.rs, where it crosses the wire.
    let cluster = Cluster::local(2).unwrap();
    let client = cluster.client();
    let (g, keys) = common::literals();
    common::check_literals(&client.get(&g, &keys).unwrap());
}
