//! The network's own ceiling: plain TCP copies along the same flows, between
//! the same namespaces, that a scenario moves chunks along. Each end is a
//! thread that enters its node's namespace, so one process times them all.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier, mpsc};
use std::time::Instant;

use crate::nodes::Node;

const BLOCK: usize = 1 << 20;

/// Moves this thread into `node`'s network namespace (no-op on loopback).
fn enter(node: &Node) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let Some(ns) = &node.netns else {
        return Ok(());
    };
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(|e| format!("cannot open {path}: {e}"))?;
    // SAFETY: `file` is an open namespace descriptor for the whole call, and
    // setns with CLONE_NEWNET changes only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!(
            "setns into {ns}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Bytes moved on each connection before the timed copies, so that they run
/// with the grown windows of a long-lived connection, as iperf3's steady
/// state and the workers' own connections do. 32 MiB left a single flow
/// between namespaces below its stride: 1.85-2.5 GB/s, 2.4-2.95 GB/s after
/// 128 MiB (`--quick --sizes 16,64,256 --scenario pairwise`).
const WARM: usize = 128 << 20;

/// The warm-up per connection on links of `rate` bytes per second (unshaped
/// if `None`): [`WARM`], or a quarter second's worth of a slower link, whose
/// windows a shaped link fills soon anyway (and whose `--quick` run must
/// stay under two minutes).
pub fn warm_bytes(rate: Option<u64>) -> usize {
    rate.map_or(WARM, |r| WARM.min((r / 4) as usize))
}

/// Writes `n` bytes of `block` repeated.
fn write_n(s: &mut TcpStream, block: &[u8], mut n: usize) -> Result<(), String> {
    while n > 0 {
        let k = n.min(block.len());
        s.write_all(&block[..k])
            .map_err(|e| format!("write: {e}"))?;
        n -= k;
    }
    Ok(())
}

/// What a ceiling's copies read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffers {
    /// One 1 MiB block written over and over, read into a 4 MiB buffer, as
    /// iperf3 does: both ends stay in cache.
    Hot,
    /// A chunk's worth of memory, as Quiver moves a chunk: each source node
    /// sends one buffer of `bytes`, each receiver reads into one of its own.
    Chunk,
}

/// Reads one copy of `n` bytes into `buf`, a piece at a time; `None` if the
/// sender hung up before it.
fn read_copy(s: &mut TcpStream, buf: &mut [u8], n: usize) -> Option<Result<(), String>> {
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len());
        match s.read(&mut buf[..k]) {
            Ok(0) if left == n => return None,
            Ok(0) => return Some(Err("the sender closed early".into())),
            Ok(k) => left -= k,
            Err(e) => return Some(Err(format!("read: {e}"))),
        }
    }
    Some(Ok(()))
}

/// Plain TCP copies of `bytes` along every flow `(from, to)` at once, on
/// connections kept open from one copy to the next, which first moved `warm`
/// bytes each. A sender thread per flow waits for a go, then for the others
/// at a barrier; a receiver thread per flow reports each copy read.
pub struct Copies {
    bytes: usize,
    start: Arc<Barrier>,
    go: Vec<mpsc::Sender<()>>,
    done: mpsc::Receiver<Result<(), String>>,
    sinks: Vec<std::thread::JoinHandle<()>>,
    senders: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

impl Copies {
    /// Connects every flow and moves its warm-up.
    pub fn open(
        nodes: &[Node],
        flows: &[(usize, usize)],
        bytes: usize,
        warm: usize,
        buffers: Buffers,
    ) -> Result<Copies, String> {
        let (block_len, buf_len) = match buffers {
            Buffers::Hot => (BLOCK, 4 * BLOCK),
            Buffers::Chunk => (bytes, bytes),
        };
        // A node sends the same bytes to each of its flows, as a worker sends
        // its one chunk; written here, so that its pages exist before the clock.
        let mut sources = std::collections::HashMap::new();
        for &(from, _) in flows {
            sources
                .entry(from)
                .or_insert_with(|| Arc::new(vec![7u8; block_len]));
        }
        let start = Arc::new(Barrier::new(flows.len() + 1));
        // A sink reports once it has read its warm-up and then each copy; a
        // sender reports only a failure to connect or to write its warm-up.
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (done_tx, done) = mpsc::channel::<Result<(), String>>();
        let (mut sinks, mut senders, mut go) = (Vec::new(), Vec::new(), Vec::new());
        for &(from, to) in flows {
            let block = sources[&from].clone();
            let (src, dst) = (nodes[from].clone(), nodes[to].clone());
            let (port_tx, port_rx) = mpsc::channel();
            let sink_node = dst.clone();
            let (warmed_tx, done) = (ready_tx.clone(), done_tx.clone());
            sinks.push(std::thread::spawn(move || {
                let dst = sink_node;
                let accepted = enter(&dst).and_then(|()| {
                    let listener = TcpListener::bind((dst.ip.as_str(), 0))
                        .map_err(|e| format!("bind {}: {e}", dst.ip))?;
                    let _ = port_tx.send(listener.local_addr().map_err(|e| e.to_string())?.port());
                    let (s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
                    Ok(s)
                });
                // Every page of it is written by the warm-up's reads.
                let mut buf = vec![0u8; buf_len];
                let warmed = accepted.and_then(|mut s| {
                    read_copy(&mut s, &mut buf, warm)
                        .unwrap_or_else(|| Err("the sender closed early".into()))
                        .map(|()| s)
                });
                let _ = warmed_tx.send(warmed.as_ref().map(drop).map_err(Clone::clone));
                if let Ok(mut s) = warmed {
                    // Until the sender hangs up: one report per copy.
                    while let Some(copied) = read_copy(&mut s, &mut buf, bytes) {
                        let stop = copied.is_err();
                        let _ = done.send(copied);
                        if stop {
                            return;
                        }
                    }
                }
            }));
            let port = port_rx
                .recv()
                .map_err(|_| "a TCP receiver failed to start".to_string())?;
            let (start, ready) = (start.clone(), ready_tx.clone());
            let (go_tx, go_rx) = mpsc::channel::<()>();
            go.push(go_tx);
            senders.push(std::thread::spawn(move || -> Result<(), String> {
                let connected = enter(&src).and_then(|()| {
                    let mut s = TcpStream::connect((dst.ip.as_str(), port))
                        .map_err(|e| format!("connect {}:{port}: {e}", dst.ip))?;
                    s.set_nodelay(true).map_err(|e| e.to_string())?;
                    write_n(&mut s, &block, warm)?;
                    Ok(s)
                });
                if let Err(e) = &connected {
                    let _ = ready.send(Err(e.clone()));
                }
                let mut s = connected?;
                while go_rx.recv().is_ok() {
                    start.wait();
                    write_n(&mut s, &block, bytes)?;
                }
                Ok(())
            }));
        }
        drop((ready_tx, done_tx));
        let copies = Copies {
            bytes,
            start,
            go,
            done,
            sinks,
            senders,
        };
        // On a failed connect or warm-up, give up at once: the run ends with
        // this error (the threads still waiting end with the process).
        for _ in flows {
            ready_rx
                .recv()
                .map_err(|_| "a TCP flow failed to start".to_string())??;
        }
        Ok(copies)
    }

    /// Bytes per second of one copy along every flow at once, timed from
    /// just before every sender may start until the last receiver has read
    /// its bytes.
    pub fn time(&mut self) -> Result<f64, String> {
        for go in &self.go {
            go.send(())
                .map_err(|_| "a TCP sender stopped".to_string())?;
        }
        // Timed from before the start: taken after it, a copy could be over
        // before the clock was read (one 1 MiB broadcast at 4,993 GB/s).
        let t = Instant::now();
        self.start.wait();
        let flows = self.go.len();
        for _ in 0..flows {
            self.done
                .recv()
                .map_err(|_| "a TCP receiver stopped".to_string())??;
        }
        Ok((self.bytes * flows) as f64 / t.elapsed().as_secs_f64())
    }

    /// Hangs up every flow and waits for its threads.
    pub fn close(self) -> Result<(), String> {
        drop(self.go);
        for sender in self.senders {
            sender.join().map_err(|_| "a TCP sender panicked")??;
        }
        for sink in self.sinks {
            sink.join().map_err(|_| "a TCP receiver panicked")?;
        }
        Ok(())
    }
}
