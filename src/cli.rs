//! The `quiver` command line (`center`, `worker`, `local`, `retire`,
//! `status`) as a library function, so that a program with ops of its own is
//! a whole cluster too: its `center` checks graphs against its ops, its
//! `worker`s run them, and its `local` starts itself as both. The `quiver`
//! binary is [`main`] with the built-in ops; `examples/custom_ops.rs` is one
//! with an op added.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use quiver_engine::OpRegistry;
use quiver_engine::store::{OwnedDir, owned};
use quiver_flight::center::{self, CenterConfig};
use quiver_flight::protocol::{ClusterStatus, WorkerStatus};
use quiver_flight::worker::{self, WorkerConfig};
use quiver_flight::{client::RemoteBackend, memory, net};

/// The allocator a binary that calls [`main`] declares: a worker's large
/// allocations go to shared memory, so peers on this host map its results
/// instead of receiving copies (`quiver_engine::shm`).
///
/// `#[global_allocator] static GLOBAL: quiver::cli::Allocator = quiver::cli::ALLOCATOR;`
pub type Allocator = quiver_engine::shm::SharedAlloc<mimalloc::MiMalloc>;

/// The value of [`Allocator`] to declare.
pub const ALLOCATOR: Allocator = quiver_engine::shm::SharedAlloc(mimalloc::MiMalloc);

#[derive(Parser)]
#[command(
    name = "quiver",
    version,
    about = "A distributed dataflow engine for Arrow data",
    next_help_heading = "Cluster-wide options"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Shared secret: servers refuse calls without it, connections carry it.
    #[arg(long, global = true, env = "QUIVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// TLS certificate (PEM) the center and workers present.
    #[arg(long, global = true, env = "QUIVER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, global = true, env = "QUIVER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA certificate (PEM) every connection verifies servers against; turns TLS on for clients.
    #[arg(long, global = true, env = "QUIVER_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Largest Flight message accepted or sent (a chunk is one message), e.g. 1GiB.
    #[arg(long, global = true, env = "QUIVER_MAX_MESSAGE", value_parser = parse_size)]
    max_message: Option<u64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the scheduler.
    Center {
        /// Interface to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port to listen on.
        #[arg(long, default_value_t = 8787)]
        port: u16,
        /// Seconds without a heartbeat before a worker is removed.
        #[arg(long, default_value_t = 10)]
        heartbeat_timeout: u64,
        /// Seconds of silence before a client session's keys are released.
        #[arg(long, default_value_t = 60)]
        session_timeout: u64,
    },
    /// Run a worker that joins the center at CENTER (host:port).
    Worker {
        /// The center's host:port.
        center: String,
        /// Interface to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port to listen on (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Task threads.
        #[arg(long, default_value_t = 1, value_parser = at_least_one)]
        nthreads: usize,
        /// Memory before spilling, e.g. 4GiB, 512MB, 1000000.
        #[arg(long, default_value = "4GiB", value_parser = parse_size)]
        memory_limit: u64,
        /// Where to spill.
        #[arg(long)]
        spill_dir: Option<PathBuf>,
        /// Human name (default: worker-PID).
        #[arg(long)]
        name: Option<String>,
        /// Host identity; workers sharing it hand chunks over in shared memory.
        #[arg(long)]
        host_id: Option<String>,
        /// Never use shared memory: peers on this host use Flight.
        #[arg(long)]
        no_shm: bool,
        /// Fraction of --memory-limit the store fills before spilling.
        #[arg(long, default_value_t = 0.7)]
        spill_fraction: f64,
        /// Fraction of --memory-limit (process RSS) at which new tasks pause.
        #[arg(long, default_value_t = 0.85)]
        pause_fraction: f64,
        /// Milliseconds between heartbeats to the center.
        #[arg(long, default_value_t = 1000)]
        heartbeat_ms: u64,
        /// Seconds the center may stay unreachable, at start-up or later,
        /// before the worker exits (a center restarted within this time is
        /// joined again).
        #[arg(long, default_value_t = 10)]
        center_timeout: u64,
        /// Threads for network work (serving peers and clients; tasks run on
        /// their own threads). Two let one worker feed several peers at once.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
        io_threads: u16,
    },
    /// Retire a worker: it hands its data to peers, then exits (as on SIGTERM).
    Retire {
        /// The worker's host:port (see `quiver status`).
        worker: String,
    },
    /// Start a center and W workers on this host, start again a worker that
    /// dies, and stop them all on Ctrl-C.
    Local {
        /// Worker processes.
        #[arg(long, default_value_t = 4, value_parser = at_least_one)]
        workers: usize,
        /// The center's port.
        #[arg(long, default_value_t = 8787)]
        port: u16,
        /// Memory limit per worker.
        #[arg(long, default_value = "4GiB", value_parser = parse_size)]
        memory_limit: u64,
        /// Threads per worker.
        #[arg(long, default_value_t = 1, value_parser = at_least_one)]
        nthreads: usize,
        /// Give workers distinct host ids so they use Flight, not shared memory.
        #[arg(long)]
        no_shm: bool,
    },
    /// Print the workers of the cluster at CENTER (host:port).
    Status {
        /// The center's host:port.
        center: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Parses a count that must be above 0 (threads, worker processes).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("give 1 or more".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

/// Parses a size like `4GiB`, `512MB`, `64k` or `1000000` into bytes. Zero
/// is refused: no size flag has a use for it (a memory limit of 0 would
/// pause a worker for good, a message limit of 0 refuse every message).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 4GiB, 512MB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(format!("unknown size unit '{other}' in '{s}'")),
    };
    match (n * mult as f64) as u64 {
        0 => Err(format!("'{s}' is no bytes at all; give a size above 0")),
        bytes => Ok(bytes),
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called (inside a runtime), not when first polled, so no signal slips by.
fn stop_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut t), Ok(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {}
                        _ = i.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Turns transparent huge pages off for this process. The allocator asks
/// for them, but the center holds no data and touches its heap sparsely:
/// each first touch of a 2 MiB page zeroed all of it, 8% of the machine's
/// CPU in a run of no-op tasks (docs/BENCHMARKS-HISTORY.md). Workers keep them:
/// without, their transfers were slower in alternated runs.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and only sets a
    // flag of this process. A kernel without it refuses; nothing else changes.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// mimalloc's `mi_option_purge_delay`, by its place in `mi_option_e`
/// (libmimalloc-sys names only the older options).
pub const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps memory freed in a worker for reuse up to 5 s (mimalloc's default:
/// 1 s) before it goes back to the kernel: chunks received in one round of a
/// shuffle are freed and the next round's land in the same pages, instead of
/// pages the kernel must fault in and zero again. (mimalloc hands an arena's
/// free memory back all at once, the delay after the first free since it
/// last did, so later frees are kept for less.) Under memory pressure the
/// worker hands it all back at once, and so does an idle one
/// (`memory::IdleTrim`).
pub fn keep_freed_memory() {
    let delay = memory::KEEP_FREED.as_millis() as std::os::raw::c_long;
    // SAFETY: called before the process starts any thread (mi_option_set is
    // not thread-safe); the option is an integer, any value is valid.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay);
    }
}

/// Makes mimalloc's collect this process's way to hand its free memory back.
pub fn trim_with_mimalloc() {
    // SAFETY: mi_collect takes no pointer and may run on any thread.
    memory::set_allocator_trim(|| unsafe { libmimalloc_sys::mi_collect(true) });
}

/// The IO runtime: network work only (kernels run on the executor's threads),
/// so a thread or two is plenty and fewer threads contend less on small machines.
/// Its threads allocate privately: only results, born on the executor's
/// threads, belong in shared memory.
fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .on_thread_start(quiver_engine::shm::private_thread)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))
}

fn human(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Asks every worker for its figures now: the center's are as of each
/// worker's last heartbeat, so a run that just ended would still look under
/// way. A worker that does not answer within a second keeps the center's
/// figures; their names are returned.
fn live_figures(s: &mut ClusterStatus) -> Result<Vec<String>, String> {
    let asks = s.workers.iter().map(|w| async move {
        let ask = async {
            let mut c = net::connect(&w.address).await.ok()?;
            let live: WorkerStatus = net::action_json(&mut c, "status", &()).await.ok()?;
            // Ids restart with the center: the same id at another address is another worker.
            (live.worker == w.id && live.address == w.address).then_some(live)
        };
        tokio::time::timeout(Duration::from_secs(1), ask)
            .await
            .ok()
            .flatten()
    });
    let live = runtime(1)?.block_on(futures::future::join_all(asks));
    let mut silent = Vec::new();
    for (w, live) in s.workers.iter_mut().zip(live) {
        match live {
            Some(l) => w.set_figures(&l),
            None => silent.push(w.name.clone()),
        }
    }
    s.sum_totals();
    Ok(silent)
}

fn print_status(s: &ClusterStatus) {
    println!(
        "{:<4} {:<22} {:<12} {:>6} {:>11} {:>11} {:>7} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "id",
        "address",
        "name",
        "keys",
        "memory",
        "spilled",
        "running",
        "flight out",
        "flight in",
        "shm out",
        "shm written",
        "shm in"
    );
    for w in s.workers.iter().chain([&s.totals]) {
        let r = &w.routes;
        println!(
            "{:<4} {:<22} {:<12} {:>6} {:>11} {:>11} {:>7} {:>11} {:>11} {:>11} {:>11} {:>11}",
            if w.name == "total" {
                "".to_string()
            } else {
                w.id.to_string()
            },
            w.address,
            w.name,
            w.keys,
            human(w.memory_bytes),
            human(w.spilled_bytes),
            w.running,
            human(r.flight_sent),
            human(r.flight_received),
            human(r.shm_sent),
            human(r.shm_written),
            human(r.shm_received)
        );
    }
    println!(
        "{} workers, {} tasks known, {} finished, {} sent ahead of their inputs",
        s.workers.len(),
        s.tasks,
        s.tasks_finished,
        s.tasks_sent_ahead
    );
}

/// Starts `quiver local`'s children and watches them until a stop signal:
/// as a nanny does, it starts again a worker that dies, and leaves stopped
/// one that exits cleanly (retired, or sent SIGTERM).
fn local(
    workers: usize,
    port: u16,
    memory_limit: u64,
    nthreads: usize,
    no_shm: bool,
) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the quiver binary: {e}"))?;
    // Listen for the stop signal before starting any child, so that a signal
    // sent during start-up still stops every child rather than orphaning them.
    let rt = runtime(1)?;
    let mut stop = {
        let _guard = rt.enter();
        Box::pin(stop_signal())
    };
    let mut center = stopped_with_this_process(&mut Command::new(&exe))
        .args(["center", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the center: {e}"))?;
    // The center prints its address once it listens (the port may have been 0).
    let mut lines = std::io::BufReader::new(center.stdout.take().expect("piped")).lines();
    // Workers spill under a directory of this process's own, which also
    // goes when a `quiver local` killed before it could remove it is
    // followed by another.
    let temp = std::env::temp_dir();
    let name = format!("quiver-local-{}", std::process::id());
    let mut cluster = LocalCluster {
        center,
        workers: Vec::new(),
        spill: temp.join(&name),
        _spill_lock: owned::claim(&temp, "quiver-local-", &name),
    };
    let Some(Ok(line)) = lines.next() else {
        return Err(format!(
            "the center did not start on 127.0.0.1:{port} (is the port in use?)"
        ));
    };
    std::thread::spawn(move || lines.for_each(drop));
    let address = line.rsplit(' ').next().unwrap_or_default().to_string();
    let Ok(mut center) = rt.block_on(net::connect(&address)) else {
        return Err(format!("the center at {address} does not answer"));
    };
    let spill = cluster.spill.clone();
    let start = |i: usize| {
        let mut cmd = Command::new(&exe);
        stopped_with_this_process(&mut cmd)
            .args(["worker", &address, "--name", &format!("worker-{i}")])
            .args(["--nthreads", &nthreads.to_string()])
            .args(["--memory-limit", &memory_limit.to_string()])
            .arg("--spill-dir")
            .arg(spill.join(format!("worker-{i}")))
            .stdin(Stdio::null());
        if no_shm {
            cmd.arg("--no-shm");
        }
        cmd.spawn()
            .map_err(|e| format!("cannot start worker {i}: {e}"))
    };
    // One worker at a time, each started once the one before has joined, so
    // that the center numbers them as they are named.
    for i in 0..workers {
        cluster.workers.push(Some((start(i)?, None)));
        let (worker, _) = cluster.workers[i].as_mut().expect("just started");
        let up = rt.block_on(async {
            tokio::select! {
                up = joined(&mut center, i + 1, worker) => Some(up),
                () = &mut stop => None,
            }
        });
        match up {
            Some(up) => up.map_err(|why| format!("worker {i} did not join: {why}"))?,
            None => {
                eprintln!("stopped while starting");
                return Ok(());
            }
        }
    }
    announce(format_args!(
        "quiver cluster at {address} ({workers} workers); Ctrl-C stops it"
    ));
    rt.block_on(cluster.watch(&mut stop, start))?;
    eprintln!("stopping {} processes", cluster.running().len());
    Ok(())
}

/// Prints the line a long-running process announces itself with. A reader
/// gone (a closed pipe) is no reason for the process to stop, as
/// `println!` would make it by panicking.
fn announce(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(line).and_then(|()| out.write_all(b"\n"));
    let _ = out.flush();
}

/// `quiver local`'s processes, killed and reaped when dropped, and the
/// directory its workers spill to, removed then, with their shared-memory
/// directories (a killed worker leaves its files behind).
struct LocalCluster {
    center: Child,
    /// Worker `i` (named `worker-i`), and when it was last started again if
    /// it was; `None` once it is left stopped.
    workers: Vec<Option<(Child, Option<Instant>)>>,
    /// Where the workers spill, each in a directory of its own.
    spill: PathBuf,
    /// Holds `spill` for this process and removes it on drop, after the
    /// children are stopped (`None` if it could not be made: the workers
    /// then make it, and it is removed by hand).
    _spill_lock: Option<OwnedDir>,
}

/// A worker that dies this soon after being started again is left stopped:
/// it would only die again.
const RESTART_GRACE: Duration = Duration::from_secs(5);

impl LocalCluster {
    /// Until `stop`: every 200 ms, starts again each worker that died
    /// (unless it died within [`RESTART_GRACE`] of being started again) and
    /// fails if the center exited.
    async fn watch(
        &mut self,
        stop: &mut (impl std::future::Future<Output = ()> + Unpin),
        start: impl Fn(usize) -> Result<Child, String>,
    ) -> Result<(), String> {
        loop {
            tokio::select! {
                () = &mut *stop => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if let Ok(Some(exit)) = self.center.try_wait() {
                return Err(format!(
                    "the center exited ({exit}); its workers are stopped"
                ));
            }
            for (i, slot) in self.workers.iter_mut().enumerate() {
                let Some((child, restarted)) = slot else {
                    continue;
                };
                let Ok(Some(exit)) = child.try_wait() else {
                    continue;
                };
                let name = format!("worker-{i}");
                if exit.success() {
                    eprintln!("{name} exited cleanly (retired); not starting it again");
                    *slot = None;
                } else if restarted.is_some_and(|t| t.elapsed() < RESTART_GRACE) {
                    eprintln!(
                        "{name} exited ({exit}) within {}s of starting again; leaving it stopped",
                        RESTART_GRACE.as_secs()
                    );
                    *slot = None;
                } else {
                    eprintln!("{name} exited ({exit}); starting it again");
                    *slot = start(i)
                        .inspect_err(|e| eprintln!("{e}"))
                        .ok()
                        .map(|c| (c, Some(Instant::now())));
                }
            }
        }
    }

    /// The processes still running.
    fn running(&mut self) -> Vec<&mut Child> {
        self.workers
            .iter_mut()
            .flatten()
            .map(|(c, _)| c)
            .chain([&mut self.center])
            .filter_map(|c| matches!(c.try_wait(), Ok(None)).then_some(c))
            .collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let mut running = self.running();
        for c in running.iter_mut() {
            let _ = c.kill();
        }
        for c in running {
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.spill);
        // Killed, the workers could not remove their shared-memory directories.
        worker::sweep_shared_memory();
    }
}

/// Has `cmd`'s process sent SIGTERM when this one dies, however it dies:
/// `quiver local` killed with SIGKILL has no chance to stop its children,
/// which would otherwise run on, orphaned. The signal comes when the
/// spawning thread ends, so children are spawned from the main thread.
fn stopped_with_this_process(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: runs in the forked child before exec; prctl, getppid and raise
    // are async-signal-safe and touch nothing shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the request took effect.
            if libc::getppid() != parent {
                libc::raise(libc::SIGTERM);
            }
            Ok(())
        })
    }
}

/// Waits until `n` workers have joined the center, or says why not: the
/// newest, `worker`, exited, or 10 s went by.
async fn joined(
    center: &mut net::FlightClient,
    n: usize,
    worker: &mut Child,
) -> Result<(), String> {
    for _ in 0..2000 {
        let status = net::action_json::<ClusterStatus>(center, "cluster", &()).await;
        if status.is_ok_and(|s| s.workers.len() >= n) {
            return Ok(());
        }
        if let Ok(Some(exit)) = worker.try_wait() {
            return Err(format!("it exited ({exit})"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err("not registered after 10 s".into())
}

/// Loads the TLS files once; `quiver local`'s children get them through the environment.
fn setup_tls(cli: &Cli) -> Result<(), String> {
    let tls = quiver_flight::tls::Tls::load(
        cli.tls_cert.as_deref(),
        cli.tls_key.as_deref(),
        cli.tls_ca.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    for (name, path) in [
        ("QUIVER_TLS_CERT", &cli.tls_cert),
        ("QUIVER_TLS_KEY", &cli.tls_key),
        ("QUIVER_TLS_CA", &cli.tls_ca),
    ] {
        if let Some(p) = path {
            let p = std::path::absolute(p).unwrap_or_else(|_| p.clone());
            // SAFETY: set before any other thread of this process starts.
            unsafe { std::env::set_var(name, p) };
        }
    }
    quiver_flight::tls::set(tls);
    Ok(())
}

/// Runs the command line of this process's arguments with `ops` as the
/// cluster's ops (`OpRegistry::builtin()` and any of the program's own).
pub fn main(ops: OpRegistry) -> ExitCode {
    let ops = Arc::new(ops);
    // A program that set up its own logging keeps it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    let cli = Cli::parse();
    if let Some(t) = &cli.token {
        // `quiver local`'s children inherit it through the environment.
        // SAFETY: set before any other thread of this process starts.
        unsafe { std::env::set_var("QUIVER_TOKEN", t) };
    }
    quiver_flight::auth::set_token(cli.token.clone());
    if let Some(m) = cli.max_message {
        // SAFETY: set before any other thread of this process starts.
        unsafe { std::env::set_var("QUIVER_MAX_MESSAGE", m.to_string()) };
        net::set_max_message(usize::try_from(m).unwrap_or(usize::MAX));
    }
    if let Err(e) = setup_tls(&cli) {
        eprintln!("quiver: {e}");
        return ExitCode::FAILURE;
    }
    trim_with_mimalloc();
    let result: Result<(), String> = match cli.command {
        Cmd::Center {
            host,
            port,
            heartbeat_timeout,
            session_timeout,
        } => runtime(2).and_then(|rt| {
            no_huge_pages();
            let config = CenterConfig {
                host,
                port,
                heartbeat_timeout: Duration::from_secs(heartbeat_timeout),
                session_timeout: Duration::from_secs(session_timeout),
                ops,
            };
            let stop = {
                let _guard = rt.enter();
                stop_signal()
            };
            rt.block_on(center::run(config, stop, |h| {
                announce(format_args!("quiver center listening on {}", h.address))
            }))
            .map_err(|e| e.to_string())
        }),
        Cmd::Worker {
            center,
            host,
            port,
            nthreads,
            memory_limit,
            spill_dir,
            name,
            host_id,
            no_shm,
            spill_fraction,
            pause_fraction,
            heartbeat_ms,
            center_timeout,
            io_threads,
        } => {
            keep_freed_memory();
            runtime(usize::from(io_threads)).and_then(|rt| {
                let config = WorkerConfig {
                    center,
                    host,
                    port,
                    nthreads,
                    memory_limit,
                    spill_dir: spill_dir
                        .unwrap_or_else(|| std::env::temp_dir().join("quiver-spill")),
                    name: name.unwrap_or_else(|| format!("worker-{}", std::process::id())),
                    host_id,
                    no_shm,
                    spill_fraction,
                    pause_fraction,
                    heartbeat_interval: Duration::from_millis(heartbeat_ms.max(10)),
                    center_patience: Duration::from_secs(center_timeout),
                    ops,
                };
                let stop = {
                    let _guard = rt.enter();
                    stop_signal()
                };
                // This thread drives the worker's own loop: it moves bytes too.
                quiver_engine::shm::private_thread();
                rt.block_on(worker::run(config, stop, drop))
                    .map_err(|e| e.to_string())
            })
        }
        Cmd::Local {
            workers,
            port,
            memory_limit,
            nthreads,
            no_shm,
        } => local(workers, port, memory_limit, nthreads, no_shm),
        Cmd::Retire { worker } => runtime(1).and_then(|rt| {
            rt.block_on(async {
                let mut c = net::connect(&worker).await.map_err(|e| e.to_string())?;
                net::action(&mut c, "retire", vec![])
                    .await
                    .map_err(|e| e.to_string())?;
                println!("worker {worker} is retiring: its data goes to peers, then it exits");
                Ok(())
            })
        }),
        Cmd::Status { center, json } => (|| {
            let backend = RemoteBackend::connect(&center).map_err(|e| e.to_string())?;
            let mut s = backend.cluster().map_err(|e| e.to_string())?;
            let silent = live_figures(&mut s)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?
                );
            } else {
                print_status(&s);
                if !silent.is_empty() {
                    println!(
                        "as of their last heartbeat (no answer now): {}",
                        silent.join(", ")
                    );
                }
            }
            Ok(())
        })(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quiver: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{at_least_one, parse_size};

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("512MB"), Ok(512_000_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("1.5 kib"), Ok(1536));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("4XB").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("0.0001 B").is_err());
    }

    #[test]
    fn counts_parse_from_one() {
        assert_eq!(at_least_one("3"), Ok(3));
        assert!(at_least_one("0").unwrap_err().contains("1 or more"));
        assert!(at_least_one("-1").is_err());
    }
}
