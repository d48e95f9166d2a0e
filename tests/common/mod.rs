//! A cluster of real `quiver center` and `quiver worker` processes for tests,
//! or one `quiver local`, stopped by pid when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver::flight::net;
use quiver::flight::protocol::{ClusterStatus, WorkerStatus};

/// The repository's root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `quiver` binary under test.
pub fn quiver_bin() -> &'static str {
    env!("CARGO_BIN_EXE_quiver")
}

/// The `cluster` reply of the center at `address`, if it answers.
pub fn cluster_status(address: &str) -> Option<ClusterStatus> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let mut c = net::connect(address).await.ok()?;
        net::action_json(&mut c, "cluster", &()).await.ok()
    })
}

/// `quiver local ARGS`, stopped with SIGTERM (so it stops its children)
/// when dropped, should a test not have stopped it.
pub struct Local {
    /// The `quiver local` process.
    pub child: Child,
    /// The line it printed once the cluster was up.
    pub line: String,
    /// The center's `host:port`, from that line.
    pub address: String,
    /// What it has written to stderr so far (also passed on to the test's).
    stderr: Arc<Mutex<String>>,
}

impl Local {
    /// Starts `quiver local` with `args` and waits until it prints its address.
    pub fn start(args: &[&str]) -> Local {
        Local::start_program(Path::new(quiver_bin()), args)
    }

    /// As [`Local::start`], with `program` in place of `quiver`: a program
    /// of its own that runs `quiver::cli::main`.
    pub fn start_program(program: &Path, args: &[&str]) -> Local {
        let mut child = Command::new(program)
            .arg("local")
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} local: {e}", program.display()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (err, seen) = (child.stderr.take().expect("stderr"), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let mut seen = seen.lock().unwrap();
                seen.push_str(&line);
                seen.push('\n');
            }
        });
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = lines
            .next()
            .expect("quiver local printed nothing")
            .expect("read");
        std::thread::spawn(move || lines.for_each(drop));
        let address = line
            .split_whitespace()
            .nth(3)
            .expect("quiver cluster at ADDRESS")
            .to_string();
        Local {
            child,
            line,
            address,
            stderr,
        }
    }

    /// Waits up to `within` for its stderr to have said `text`.
    pub fn said(&self, text: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.stderr.lock().unwrap().contains(text) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Everything it has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The pid of its worker named `name`, if that process is running.
    pub fn worker_pid(&self, name: &str) -> Option<u32> {
        child_of(self.child.id(), &["--name", name])
    }
}

/// A running child of `parent` whose command line holds `args` in a row.
pub fn child_of(parent: u32, args: &[&str]) -> Option<u32> {
    let parent = parent.to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`: comm may hold spaces, so read after it.
            let mut after = stat.rsplit_once(')')?.1.split_whitespace();
            let (state, ppid) = (after.next()?, after.next()?);
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let have: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let want: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            let holds = have.windows(want.len()).any(|w| w == want.as_slice());
            (ppid == parent && state != "Z" && holds).then_some(pid)
        })
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), "TERM");
            let _ = self.child.wait();
        }
    }
}

/// Sends `sig` (`TERM`, `KILL`, `STOP`…) to `pid`; whether it was sent.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// A center and its workers, each a child process.
pub struct TestCluster {
    /// The center's `host:port`.
    pub address: String,
    center: Option<Child>,
    workers: Vec<Option<Child>>,
    rt: tokio::runtime::Runtime,
    spill: tempfile::TempDir,
    center_args: Vec<String>,
}

fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.env("RUST_LOG", "warn").stdin(Stdio::null())
}

impl TestCluster {
    /// Starts a center with `center_args` and `n` workers with `worker_args`, and waits for them.
    pub fn start(n: usize, worker_args: &[&str]) -> TestCluster {
        Self::start_with(n, &[], worker_args)
    }

    /// As [`TestCluster::start`], with extra center arguments.
    pub fn start_with(n: usize, center_args: &[&str], worker_args: &[&str]) -> TestCluster {
        let mut center = quiet(
            Command::new(quiver_bin())
                .args(["center", "--port", "0"])
                .args(center_args),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("start quiver center");
        let mut lines = BufReader::new(center.stdout.take().expect("stdout")).lines();
        let line = lines
            .next()
            .expect("center printed nothing")
            .expect("read center stdout");
        let address = line.rsplit(' ').next().expect("address").to_string();
        std::thread::spawn(move || lines.for_each(drop));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut c = TestCluster {
            address,
            center: Some(center),
            workers: vec![],
            rt,
            spill: tempfile::tempdir().expect("spill dir"),
            center_args: center_args.iter().map(|a| a.to_string()).collect(),
        };
        for _ in 0..n {
            c.start_worker(worker_args);
        }
        assert!(
            c.wait_workers(n, Duration::from_secs(30)),
            "{n} workers did not join"
        );
        c
    }

    /// Starts one more worker; returns its index.
    pub fn start_worker(&mut self, args: &[&str]) -> usize {
        let i = self.workers.len();
        let spill = self.spill.path().display().to_string();
        let child = quiet(Command::new(quiver_bin()).args([
            "worker",
            &self.address,
            "--name",
            &format!("w{i}"),
        ]))
        .args(["--spill-dir", &spill])
        .args(args)
        .spawn()
        .expect("start quiver worker");
        self.workers.push(Some(child));
        i
    }

    /// Starts one more worker whose stderr is kept; returns its index.
    pub fn start_worker_logged(&mut self, args: &[&str]) -> usize {
        let i = self.workers.len();
        let log = self.spill.path().join(format!("w{i}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(quiver_bin())
            .args(["worker", &self.address, "--name", &format!("w{i}")])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start quiver worker");
        self.workers.push(Some(child));
        i
    }

    /// Kills worker `i` and returns what it logged (see [`TestCluster::start_worker_logged`]).
    pub fn stop_worker_and_read_log(&mut self, i: usize) -> String {
        self.kill_worker(i);
        std::fs::read_to_string(self.spill.path().join(format!("w{i}.log"))).unwrap_or_default()
    }

    /// Takes a worker started some other way (to be killed with the rest); returns its index.
    pub fn adopt_worker(&mut self, child: Child) -> usize {
        self.workers.push(Some(child));
        self.workers.len() - 1
    }

    /// The directory every worker of [`TestCluster::start_worker`] spills under.
    pub fn spill_dir(&self) -> &Path {
        self.spill.path()
    }

    /// The worker process `i`.
    pub fn worker(&mut self, i: usize) -> &mut Child {
        self.workers[i].as_mut().expect("worker killed")
    }

    /// Kills worker `i` by pid.
    pub fn kill_worker(&mut self, i: usize) {
        if let Some(mut w) = self.workers[i].take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    /// The center's process id.
    pub fn center_pid(&self) -> u32 {
        self.center.as_ref().expect("center killed").id()
    }

    /// Kills the center by pid.
    pub fn kill_center(&mut self) {
        if let Some(mut c) = self.center.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the center and starts a new one on the same port.
    pub fn restart_center(&mut self) {
        self.restart_center_as(Path::new(quiver_bin()));
    }

    /// As [`TestCluster::restart_center`], with the center of `program` (a
    /// program of its own that runs `quiver::cli::main`).
    pub fn restart_center_as(&mut self, program: &Path) {
        self.kill_center();
        let port = self.address.rsplit(':').next().expect("port").to_string();
        let center = quiet(
            Command::new(program)
                .args(["center", "--port", &port])
                .args(&self.center_args),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("restart quiver center");
        self.center = Some(center);
    }

    /// Waits until `n` workers have joined.
    pub fn wait_workers(&self, n: usize, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.status().map(|s| s.workers.len() >= n).unwrap_or(false) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The center's `cluster` reply.
    pub fn status(&self) -> Option<ClusterStatus> {
        cluster_status(&self.address)
    }

    /// Live figures of every worker, asked of the workers themselves.
    /// (A worker that died but is still listed is left out.)
    pub fn worker_statuses(&self) -> Vec<(String, WorkerStatus)> {
        let addresses: Vec<String> = self
            .status()
            .expect("status")
            .workers
            .into_iter()
            .map(|w| w.address)
            .collect();
        self.rt.block_on(async {
            let mut out = vec![];
            for a in addresses {
                let Ok(mut c) = net::connect(&a).await else {
                    continue;
                };
                if let Ok(s) = net::action_json(&mut c, "status", &()).await {
                    out.push((a, s));
                }
            }
            out
        })
    }

    /// Runs a future on the fixture's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.workers.len() {
            self.kill_worker(i);
        }
        self.kill_center();
    }
}

impl TestCluster {
    /// Whether the center and every worker not killed on purpose still run.
    pub fn all_alive(&mut self) -> bool {
        let center = self
            .center
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none());
        center
            && self
                .workers
                .iter_mut()
                .flatten()
                .all(|w| w.try_wait().ok().flatten().is_none())
    }
}

/// Every file (not directory) under `dir`, at any depth.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            files.extend(files_under(&e.path()));
        } else {
            files.push(e.path());
        }
    }
    files
}

/// Waits up to `limit` for `child` to exit; kills it and fails if it does not.
pub fn exit_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} still runs after {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A graph of literals (a list of numbers, an empty list, a number) and a
/// task over one, with the keys to ask for; [`check_literals`] checks what
/// comes back. Run embedded and on processes, it must read the same.
pub fn literals() -> (quiver::Graph, Vec<quiver::Key>) {
    use quiver::{Graph, Key, Task};
    let mut g = Graph::new();
    g.insert_literal("list", vec![1.0, 2.5]);
    g.insert_literal("none", Vec::<f64>::new());
    g.insert_literal("one", 4);
    g.insert("doubled", Task::new("mul").arg(Key::from("list")).arg(2.0));
    (g, vec!["doubled".into(), "none".into(), "one".into()])
}

/// Checks the chunks computed for [`literals`].
pub fn check_literals(out: &[quiver::Chunk]) {
    use arrow::array::AsArray;
    let doubled = out[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Float64Type>();
    assert_eq!(doubled.values().to_vec(), [2.0, 5.0]);
    assert_eq!(out[1].num_rows(), 0);
    assert_eq!(quiver::chunk::to_f64(&out[2]).unwrap(), 4.0);
}

/// A CA and a certificate for 127.0.0.1 and localhost signed by it.
pub fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is needed to make test certificates");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=quiver test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    )
}
