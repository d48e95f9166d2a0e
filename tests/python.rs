//! Python's own Flight client (pyarrow) against a real `quiver local`
//! cluster: examples/python/seed.py (raw Flight), examples/python/pool.py (the
//! optional helper), tests/python/tables.py (tables of every shape go in and
//! come back), tests/python/errors.py (every client-caused error has a
//! message saying what was wrong), tests/python/keepalive.py and
//! tests/python/secured.py (the helper's session, token and TLS) and
//! tests/python/failover.py (its get past a holder that is gone), and
//! benches/compare/put.py in a smoke size. A venv
//! with pyarrow is made under target/ when pyarrow is missing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::{Local, TestCluster, certificates, root};

/// A Python with pyarrow: `target/pyenv`, created from the package registry if needed.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = root().join("target/pyenv");
        let python = venv.join("bin/python");
        let has_pyarrow = |p: &Path| {
            Command::new(p)
                .args(["-c", "import pyarrow.flight"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !has_pyarrow(&python) {
            eprintln!("creating {} with pyarrow", venv.display());
            let ok = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .expect("python3 is needed to create the test venv");
            assert!(ok.success(), "python3 -m venv failed");
            let ok = Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "-r"])
                .arg(root().join("examples/python/requirements.txt"))
                .status()
                .expect("run pip");
            assert!(ok.success(), "pip install pyarrow failed");
            assert!(has_pyarrow(&python), "pyarrow.flight still not importable");
        }
        python
    })
}

fn run_script(script: &str, args: &[&str]) -> String {
    run_script_with(script, args, &[])
}

/// As [`run_script`], with `env` added to the script's environment.
fn run_script_with(script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(python())
        .arg(root().join(script))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}

#[test]
fn the_put_benchmark_runs_in_a_smoke_size() {
    let cluster = TestCluster::start(1, &[]);
    let text = run_script(
        "benches/compare/put.py",
        &[&cluster.address, "--mb", "8", "--reps", "1"],
    );
    assert!(text.contains("median of 1: put"), "{text}");
    assert!(
        text.contains("pyarrow's own server, the same table: get"),
        "{text}"
    );
}

#[test]
fn pyarrow_runs_the_seed_and_moves_tables_in_and_out() {
    let local = Local::start(&["--workers", "4", "--port", "0"]);
    let a = local.address.as_str();
    let text = run_script(
        "examples/python/seed.py",
        &["--scheduler", a, "--arrays", "40", "--size", "100000"],
    );
    assert!(text.contains("sum of 2 * py-data = 999000.0"), "{text}");
    assert!(text.contains("released; ok"), "{text}");
    let text = run_script(
        "examples/python/pool.py",
        &["--scheduler", a, "--arrays", "40", "--size", "100000"],
    );
    assert!(text.contains("mean of the scattered array = 2.5"), "{text}");
    assert!(text.ends_with("ok\n"), "{text}");
}

#[test]
fn pyarrow_tables_of_every_shape_go_in_and_come_back() {
    let local = Local::start(&["--workers", "2", "--port", "0"]);
    let text = run_script("tests/python/tables.py", &[&local.address]);
    assert!(text.contains("empty: 0 rows back"), "{text}");
    assert!(text.ends_with("ok\n"), "{text}");
}

#[test]
fn pyarrow_clients_get_errors_that_say_what_was_wrong() {
    let local = Local::start(&["--workers", "2", "--port", "0"]);
    let text = run_script("tests/python/errors.py", &[&local.address]);
    for needle in [
        "bad JSON: ArrowInvalid",
        "unknown op 'frobnicate'",
        "unknown key: ArrowKeyError",
        "unknown action 'frobnicate'",
        "PATH descriptor",
        "needs a numeric column, got a column of Utf8",
        "key 'names' already exists",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    // The cluster still serves after all that.
    let text = run_script(
        "examples/python/seed.py",
        &[
            "--scheduler",
            &local.address,
            "--arrays",
            "4",
            "--size",
            "1000",
        ],
    );
    assert!(text.contains("released; ok"), "{text}");
}

#[test]
fn the_python_helper_keeps_its_handles_through_a_pause() {
    // Sessions silent for 2 s are closed: the script pauses 5 s.
    let cluster = TestCluster::start_with(1, &["--session-timeout", "2"], &[]);
    let text = run_script("tests/python/keepalive.py", &[&cluster.address, "2"]);
    assert!(text.contains("sum after a pause: 45.0"), "{text}");
    assert!(text.ends_with("ok\n"), "{text}");
}

#[test]
fn the_python_helper_reaches_a_cluster_with_a_token_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = certificates(dir.path());
    let (cert, key, ca) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        ca.to_str().unwrap(),
    );
    // `quiver local` hands the token and the TLS files on to its children;
    // this process stays out of it (both settings are process-wide).
    let local = Local::start(&[
        "--workers",
        "2",
        "--port",
        "0",
        "--token",
        "s3cret",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--tls-ca",
        ca,
    ]);
    let text = run_script_with(
        "tests/python/secured.py",
        &[&local.address],
        &[("QUIVER_TOKEN", "s3cret"), ("QUIVER_TLS_CA", ca)],
    );
    assert!(text.contains("total: 1450.0"), "{text}");
    assert!(text.contains("rows fetched from a worker: 40"), "{text}");
    assert!(text.contains("mean of scattered: 3.0"), "{text}");
    assert!(
        text.contains("wrong token: Flight returned unauthenticated error"),
        "{text}"
    );
    assert!(text.ends_with("ok\n"), "{text}");
}

#[test]
fn the_python_helper_gets_past_a_holder_that_is_gone() {
    let mut cluster = TestCluster::start(2, &[]);
    let mut script = Command::new(python())
        .arg(root().join("tests/python/failover.py"))
        .arg(&cluster.address)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python");
    let mut stdin = script.stdin.take().expect("stdin");
    let mut lines = BufReader::new(script.stdout.take().expect("stdout")).lines();
    let mut text = String::new();
    for line in lines.by_ref() {
        let line = line.expect("read the script's output");
        text += &line;
        text += "\n";
        if let Some(name) = line.strip_prefix("holder w") {
            cluster.kill_worker(name.parse().expect("a worker's index"));
            writeln!(stdin, "killed").expect("answer the script");
        }
    }
    assert!(script.wait().expect("wait").success(), "{text}");
    assert!(text.contains("sum past a dead holder: 499500.0"), "{text}");
    assert!(text.contains("rows after the holder died: 1000"), "{text}");
    assert!(
        text.contains("sum after the holder died: 499500.0"),
        "{text}"
    );
    assert!(text.ends_with("ok\n"), "{text}");
}
