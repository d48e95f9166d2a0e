//! The four nodes: network namespaces on a bridge (as root) or four loopback
//! workers, and the `quiver` processes in them. Everything it creates it
//! records, and dropping the testbed removes exactly that, in reverse.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quiver::flight::net;
use quiver::flight::protocol::ClusterStatus;

/// Nodes in the testbed.
pub const NODES: usize = 4;

/// One node: where its worker listens and which namespace it lives in.
#[derive(Clone, Debug)]
pub struct Node {
    /// `node1`…`node4`; also the worker's name and host id.
    pub name: String,
    /// The node's address.
    pub ip: String,
    /// Its network namespace (`None` on loopback).
    pub netns: Option<String>,
    /// The worker's `host:port`.
    pub worker: String,
}

/// A running four-node cluster.
pub struct Testbed {
    /// The nodes, in order.
    pub nodes: Vec<Node>,
    /// `netns` or `loopback`.
    pub mode: &'static str,
    /// The link shaping applied, if any.
    pub link: Option<String>,
    /// Why the run fell back to loopback, if it did.
    pub fallback: Option<String>,
    children: Vec<Child>,
    namespaces: Vec<String>,
    links: Vec<String>,
    workdir: PathBuf,
}

/// Runs `ip` (or `tc`) and names the command in the error.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A /24 in 10.0.0.0/8 that no address or route on this host uses yet.
fn free_subnet() -> Result<String, String> {
    let used = run("ip", &["-4", "-o", "addr"])? + &run("ip", &["-4", "route"])?;
    let pid = std::process::id();
    (0..64)
        .map(|k| {
            format!(
                "10.{}.{}",
                200 + (pid as usize + k) % 50,
                (pid as usize / 50 + k) % 250
            )
        })
        .find(|p| !used.contains(&format!("{p}.")))
        .ok_or_else(|| "no free 10.x.y.0/24 subnet for the testbed".to_string())
}

/// `tbf` burst for a rate like `1gbit`: 4 ms worth of bytes, at least 256 KiB
/// (segmentation offload hands tbf packets far larger than the MTU).
fn burst(rate: &str) -> Result<String, String> {
    Ok(format!("{}", (bytes_per_sec(rate)? / 250).max(256 << 10)))
}

/// Bytes per second of a rate like `1gbit`.
pub fn bytes_per_sec(rate: &str) -> Result<u64, String> {
    let r = rate.trim().to_ascii_lowercase();
    let split = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
    let (num, unit) = r.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{rate}' is not a rate (e.g. 1gbit, 500mbit)"))?;
    let bits = n * match unit {
        "gbit" => 1_000_000_000,
        "mbit" => 1_000_000,
        "kbit" => 1_000,
        _ => {
            return Err(format!(
                "unknown rate unit in '{rate}': use kbit, mbit or gbit"
            ));
        }
    };
    Ok(bits / 8)
}

impl Testbed {
    /// Starts the testbed: namespaces when root and `ip netns` work (unless
    /// `loopback`), else loopback, saying why.
    pub async fn start(
        quiver: &Path,
        link: Option<&str>,
        loopback: bool,
    ) -> Result<Testbed, String> {
        let workdir = std::env::temp_dir().join(format!("quiver-bench-{}", std::process::id()));
        std::fs::create_dir_all(&workdir)
            .map_err(|e| format!("cannot create {}: {e}", workdir.display()))?;
        let mut bed = Testbed {
            nodes: Vec::new(),
            mode: "loopback",
            link: None,
            fallback: None,
            children: Vec::new(),
            namespaces: Vec::new(),
            links: Vec::new(),
            workdir,
        };
        if let Some(rate) = link {
            burst(rate)?;
        }
        let reason = if loopback {
            Some("--loopback given".to_string())
        } else if euid() != 0 {
            Some("not root".to_string())
        } else {
            match bed.build_namespaces(link) {
                Ok(()) => None,
                Err(e) => {
                    bed.remove_network();
                    Some(e)
                }
            }
        };
        match reason {
            None => bed.mode = "netns",
            Some(why) => {
                if link.is_some() {
                    return Err(format!(
                        "--link needs network namespaces, which are unavailable: {why}"
                    ));
                }
                bed.nodes = (1..=NODES)
                    .map(|i| Node {
                        name: format!("node{i}"),
                        ip: "127.0.0.1".into(),
                        netns: None,
                        worker: String::new(),
                    })
                    .collect();
                bed.fallback = Some(why);
            }
        }
        bed.start_processes(quiver).await?;
        Ok(bed)
    }

    fn build_namespaces(&mut self, link: Option<&str>) -> Result<(), String> {
        let tag = format!("qb{}", std::process::id() % 100_000);
        let subnet = free_subnet()?;
        let bridge = format!("{tag}br");
        let existing = run("ip", &["netns", "list"])?;
        for i in 1..=NODES {
            let ns = format!("{tag}n{i}");
            if existing.split_whitespace().any(|w| w == ns) {
                return Err(format!(
                    "namespace {ns} exists and is not ours; not touching it"
                ));
            }
        }
        for name in std::iter::once(bridge.clone())
            .chain((1..=NODES).flat_map(|i| [format!("{tag}v{i}"), format!("{tag}p{i}")]))
        {
            if run("ip", &["link", "show", "dev", &name]).is_ok() {
                return Err(format!(
                    "interface {name} exists and is not ours; not touching it"
                ));
            }
        }
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        self.links.push(bridge.clone());
        run(
            "ip",
            &["addr", "add", &format!("{subnet}.254/24"), "dev", &bridge],
        )?;
        run("ip", &["link", "set", &bridge, "up"])?;
        for i in 1..=NODES {
            let ns = format!("{tag}n{i}");
            let (outer, inner) = (format!("{tag}v{i}"), format!("{tag}p{i}"));
            let ip = format!("{subnet}.{i}");
            run("ip", &["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            run(
                "ip",
                &[
                    "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                ],
            )?;
            self.links.push(outer.clone());
            run("ip", &["link", "set", &inner, "netns", &ns])?;
            run("ip", &["link", "set", &outer, "master", &bridge, "up"])?;
            run(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", &inner],
            )?;
            run("ip", &["-n", &ns, "link", "set", &inner, "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            if let Some(rate) = link {
                // Each node's egress: what it sends is capped at the link rate.
                let b = burst(rate)?;
                let args = [
                    "netns", "exec", &ns, "tc", "qdisc", "add", "dev", &inner, "root", "tbf",
                    "rate", rate, "burst", &b, "latency", "50ms",
                ];
                run("ip", &args)?;
            }
            self.nodes.push(Node {
                name: format!("node{i}"),
                ip,
                netns: Some(ns),
                worker: String::new(),
            });
        }
        self.link = link.map(str::to_string);
        Ok(())
    }

    /// A command for `program` run inside `node`'s namespace.
    fn command(&self, node: &Node, program: &Path) -> Command {
        match &node.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn log(&self, name: &str) -> Result<std::fs::File, String> {
        let path = self.workdir.join(format!("{name}.log"));
        std::fs::File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))
    }

    async fn start_processes(&mut self, quiver: &Path) -> Result<(), String> {
        let first = self.nodes[0].clone();
        let mut center = self.command(&first, quiver);
        center
            .args(["center", "--host", &first.ip, "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(self.log("center")?);
        let mut child = center
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", quiver.display()))?;
        let stdout = child.stdout.take().expect("piped");
        self.children.push(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            lines.for_each(drop);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| self.failure("the center did not print its address"))?;
        let address = line
            .rsplit(' ')
            .next()
            .filter(|a| a.contains(':'))
            .ok_or_else(|| format!("unexpected center output: {line}"))?
            .to_string();
        let spill = self.workdir.join("spill");
        for node in self.nodes.clone() {
            let mut w = self.command(&node, quiver);
            w.arg("worker")
                .arg(&address)
                .args(["--host", &node.ip, "--port", "0"])
                .args(["--name", &node.name, "--host-id", &node.name])
                .args(["--nthreads", "1", "--memory-limit", "64GiB"])
                .arg("--spill-dir")
                .arg(&spill)
                .stdout(Stdio::null())
                .stderr(self.log(&node.name)?);
            let child = w
                .spawn()
                .map_err(|e| format!("cannot start a worker: {e}"))?;
            self.children.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(status) = cluster(&address).await
                && status.workers.len() == NODES
            {
                for node in &mut self.nodes {
                    node.worker = status
                        .workers
                        .iter()
                        .find(|w| w.name == node.name)
                        .map(|w| w.address.clone())
                        .ok_or_else(|| format!("{} did not register", node.name))?;
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.failure("the workers did not all register within 20 s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `what`, with the processes' logs for a diagnosis.
    fn failure(&self, what: &str) -> String {
        let mut msg = what.to_string();
        for name in
            std::iter::once("center".to_string()).chain(self.nodes.iter().map(|n| n.name.clone()))
        {
            if let Ok(text) = std::fs::read_to_string(self.workdir.join(format!("{name}.log"))) {
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                if !tail.is_empty() {
                    msg += &format!("\n--- {name} log (last lines) ---\n");
                    msg += &tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                }
            }
        }
        msg
    }

    fn remove_network(&mut self) {
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = run("ip", &["netns", "del", &ns]) {
                eprintln!("cleanup: {e}");
            }
        }
        // Deleting a namespace takes its veth end, and so the pair, with it;
        // what is left is the bridge and any pair that never moved.
        for link in self.links.drain(..).rev() {
            if run("ip", &["link", "show", "dev", &link]).is_ok()
                && let Err(e) = run("ip", &["link", "del", "dev", &link])
            {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.remove_network();
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

/// The center's `cluster` status.
async fn cluster(address: &str) -> Result<ClusterStatus, String> {
    let mut client = net::connect(address).await.map_err(|e| e.to_string())?;
    net::action_json(&mut client, "cluster", &())
        .await
        .map_err(|e| e.to_string())
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
