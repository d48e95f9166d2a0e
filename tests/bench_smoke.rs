//! Smoke runs of the benchmarks (tiny sizes, seconds): the four-nodes
//! harness keeps working, writes its JSON and plot, and removes every
//! namespace and process it made, also when interrupted; the overhead bench,
//! the seed on `quiver local` against embedded, and the comparison with
//! dask.distributed run. No figure is judged.

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{exit_within, quiver_bin, root};

const BENCH: &str = env!("CARGO_BIN_EXE_quiver-bench");

/// Where `cargo test` built `quiver`, `quiver-bench` and `examples/seed`.
fn bin_dir() -> &'static Path {
    Path::new(BENCH).parent().unwrap()
}

/// Runs a script of `benches/compare` with `args` and `env`; its stdout.
fn script(name: &str, args: &[&OsStr], env: &[(&str, &str)]) -> String {
    let out = Command::new("bash")
        .arg(root().join("benches/compare").join(name))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The namespaces a `quiver-bench` with this pid made that still exist.
fn namespaces_of(pid: u32) -> Vec<String> {
    let tag = format!("qb{}n", pid % 100_000);
    let out = Command::new("ip").args(["netns", "list"]).output();
    let list = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    list.unwrap_or_default()
        .split_whitespace()
        .filter(|w| w.starts_with(&tag))
        .map(str::to_string)
        .collect()
}

/// Runs a smoke pass, checks its JSON rows (one per scenario of `expect`,
/// of `chunk` bytes) and PNG and that it left no namespace behind.
fn smoke(extra: &[&str], expect: &[&str], chunk: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (json, png) = (dir.path().join("m.json"), dir.path().join("m.png"));
    let out = Command::new(BENCH)
        .args(["four-nodes", "--smoke", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&png)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = out.id();
    let out = out.wait_with_output().unwrap();
    assert_eq!(
        namespaces_of(pid),
        Vec::<String>::new(),
        "namespaces left behind"
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quiver-bench failed:\n{stdout}\n{stderr}"
    );
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let scenarios: Vec<&str> = rows
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(scenarios, expect);
    for r in &rows {
        assert_eq!(r["chunk_bytes"], chunk, "{r}");
        for field in [
            "chunk_bytes",
            "bytes_per_sec",
            "ceiling_bytes_per_sec",
            "fraction_of_ceiling",
            "first_round_bytes_per_sec",
            "end_to_end_bytes_per_sec",
            "tcp_chunk_bytes_per_sec",
            "fraction_of_tcp_chunk",
        ] {
            assert!(r[field].as_f64().unwrap() > 0.0, "{field} in {r}");
        }
        // A worker's gather lies within the call that asked for it, so
        // timed by the workers a transfer is never slower.
        assert!(
            r["end_to_end_bytes_per_sec"].as_f64() <= r["bytes_per_sec"].as_f64(),
            "{r}"
        );
        assert_eq!(r["route"], "flight");
    }
    if stderr.contains("no plot") {
        eprintln!("no plot on this machine: {stderr}");
    } else {
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    }
    stdout
}

#[test]
fn four_nodes_on_loopback() {
    // Narrowed to two scenarios and another size, as when comparing builds.
    let out = smoke(
        &[
            "--loopback",
            "--sizes",
            "2",
            "--scenario",
            "broadcast",
            "--scenario",
            "pairwise",
        ],
        &["pairwise", "broadcast"],
        2 << 20,
    );
    assert!(out.contains("FALLBACK: four workers on loopback"), "{out}");
}

#[test]
fn four_nodes_in_namespaces_or_says_why_not() {
    let out = smoke(&[], &["pairwise", "shuffle", "broadcast"], 1 << 20);
    if out.contains("FALLBACK") {
        eprintln!("network namespaces unavailable here: {out}");
    } else {
        assert!(out.contains("four network namespaces"), "{out}");
    }
}

#[test]
fn interrupted_run_removes_its_testbed() {
    let mut child = Command::new(BENCH)
        .args([
            "four-nodes",
            "--quick",
            "--json",
            "/dev/null",
            "--plot",
            "/dev/null",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let first = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    if first.contains("four network namespaces") {
        assert_eq!(namespaces_of(pid).len(), 4, "no namespaces while running");
    }
    // SAFETY: kill on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    // Fails, if quiver-bench ignores Ctrl-C, naming it.
    let status = exit_within(&mut child, Duration::from_secs(20));
    assert!(
        !status.success(),
        "an interrupted run must not report success"
    );
    assert_eq!(
        namespaces_of(pid),
        Vec::<String>::new(),
        "namespaces left after Ctrl-C"
    );
    let workers = Command::new("pgrep")
        .args(["-f", &format!("quiver-bench-{pid}")])
        .output()
        .unwrap();
    assert!(workers.stdout.is_empty(), "workers left after Ctrl-C");
}

#[test]
fn overhead_smoke() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("o.json");
    let out = Command::new(BENCH)
        .args([
            "overhead", "--map", "200", "--graph", "1000", "--gets", "10", "--rounds", "1",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows[0]["scenario"], "map");
    assert_eq!(rows[0]["tasks"], 201);
    assert!(rows[1]["tasks"].as_u64().unwrap() >= 1000);
    assert!(rows[1]["tasks_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(rows[2]["scenario"], "get");
    assert!(rows[2]["median_micros"].as_f64().unwrap() > 0.0);
}

#[test]
fn seed_local_smoke() {
    let seed = bin_dir().join("examples/seed");
    let quiver = quiver_bin();
    let table = script(
        "seed_local.sh",
        &[OsStr::new("1"), OsStr::new(quiver), seed.as_os_str()],
        &[("SEED_ARGS", "--arrays 8 --size 100000")],
    );
    for approach in ["graph", "delayed", "array", "pool", "mix"] {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(approach))
            .unwrap_or_else(|| panic!("no row for {approach}:\n{table}"));
        assert_eq!(row.split_whitespace().count(), 5, "{row}");
    }
}

#[test]
fn compare_smoke() {
    let stdout = script(
        "compare.sh",
        &[OsStr::new("--smoke"), bin_dir().as_os_str()],
        &[],
    );
    assert!(stdout.contains("Quiver's best is"), "{stdout}");
    assert!(stdout.contains("x dask's tasks/s"), "{stdout}");
    assert!(
        stdout.contains(r#"{"route": "pyarrow-flight", "chunk_bytes": 8388608"#),
        "{stdout}"
    );
    let json = root().join("target/compare-smoke.json");
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let has = |system: &str, workload: &str| {
        rows.iter()
            .filter(|r| r["system"] == system && r["workload"] == workload)
            .count()
    };
    assert_eq!(has("quiver", "seed"), 5, "{rows:?}");
    assert_eq!(has("dask", "seed"), 2, "{rows:?}");
    assert_eq!(has("quiver", "tiny"), 1, "{rows:?}");
    assert_eq!(has("dask", "tiny"), 1, "{rows:?}");
    assert_eq!(has("ray", "seed"), 0, "a smoke run leaves Ray out");
}
