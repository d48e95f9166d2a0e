//! The seed workload of the 2015 `distributed` blog post — N random arrays of
//! M float64, sum each where it lives, sum the sums — written each way the API
//! allows, plus the engine-free floor it is measured against.

use quiver_engine::ops::uniform_vec;

use crate::{Array, Call, Client, Graph, Key, Result, Task, delayed};

/// Every approach, by name.
pub const APPROACHES: [&str; 5] = ["pool", "graph", "delayed", "array", "mix"];

/// Runs approach `name` with `n` arrays of `m` floats; returns the total.
pub fn run(name: &str, client: &Client, n: usize, m: usize) -> Result<f64> {
    match name {
        "pool" => pool(client, n, m),
        "graph" => graph(client, n, m),
        "delayed" => delayed_way(client, n, m),
        "array" => array(client, n, m),
        "mix" => mix(client, n, m),
        other => Err(crate::Error::op(
            "seed",
            format!("unknown approach '{other}'"),
        )),
    }
}

/// How far a total may be from N·M/2: six standard deviations of a sum of N·M uniforms.
pub fn tolerance(n: usize, m: usize) -> f64 {
    6.0 * (n as f64 * m as f64 / 12.0).sqrt() + 1e-9
}

/// The same work as a plain loop on `threads` threads with the same kernels, no engine.
pub fn floor(threads: usize, n: usize, m: usize) -> f64 {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..n)
                        .step_by(threads)
                        .map(|i| {
                            let a = arrow::array::Float64Array::from(uniform_vec(m, i as u64));
                            arrow::compute::sum(&a).unwrap_or(0.0)
                        })
                        .sum::<f64>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("floor thread"))
            .sum()
    })
}

/// Pool: map `random`, map `sum`, apply `sum` to the handles.
pub fn pool(client: &Client, n: usize, m: usize) -> Result<f64> {
    let pool = client.pool();
    let arrays = pool.map("random", (0..n).map(|i| Call::new().arg(m).kw("seed", i)))?;
    let sums = pool.map("sum", &arrays)?;
    // The sums hold the arrays until they have run; no need to keep them here.
    pool.delete(arrays);
    pool.apply("sum", &sums)?.get_f64()
}

/// A raw graph: `x-i`, `sum-i`, `total`.
pub fn graph(client: &Client, n: usize, m: usize) -> Result<f64> {
    let mut g = Graph::new();
    let mut sums = Vec::with_capacity(n);
    for i in 0..n {
        let (x, s) = (
            Key::from(format!("x-{i}").as_str()),
            Key::from(format!("sum-{i}").as_str()),
        );
        g.insert(x.clone(), Task::new("random").arg(m).kwarg("seed", i));
        g.insert(s.clone(), Task::new("sum").arg(x));
        sums.push(s);
    }
    g.insert("total", Task::new("sum").arg(sums));
    crate::chunk::to_f64(&client.get(&g, &["total".into()])?[0])
}

/// Delayed: `sum(random)` per array, then `sum` of the sums.
pub fn delayed_way(client: &Client, n: usize, m: usize) -> Result<f64> {
    let sums: Vec<_> = (0..n)
        .map(|i| delayed("sum", delayed("random", Call::new().arg(m).kw("seed", i))))
        .collect();
    delayed("sum", sums).compute_f64(client)
}

/// The array collection: one chunked array, a tree reduction.
pub fn array(client: &Client, n: usize, m: usize) -> Result<f64> {
    Array::random(n * m, m, 0).sum().compute_f64(client)
}

/// Pool results fed into a raw graph.
pub fn mix(client: &Client, n: usize, m: usize) -> Result<f64> {
    let arrays = client
        .pool()
        .map("random", (0..n).map(|i| Call::new().arg(m).kw("seed", i)))?;
    let mut g = Graph::new();
    let sums: Vec<Key> = arrays
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let k = Key::from(format!("mix-sum-{i}").as_str());
            g.insert(k.clone(), Task::new("sum").arg(a.key()));
            k
        })
        .collect();
    g.insert("mix-total", Task::new("sum").arg(sums));
    let handles = client.submit(g, &["mix-total".into()])?;
    client.pool().delete(arrays);
    handles[0].get_f64()
}
