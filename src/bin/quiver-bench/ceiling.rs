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

/// Bytes moved on each connection before the timed copy, so that it runs
/// with the grown windows of a long-lived connection, as iperf3's steady
/// state and the workers' own connections do.
const WARM: usize = 32 << 20;

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

/// Bytes per second moved by `bytes`-long TCP streams along every flow
/// `(from, to)` at once, on connections that first moved [`WARM`] bytes
/// each, timed from the moment all are warm until the last receiver has read
/// everything.
pub fn tcp_copy(nodes: &[Node], flows: &[(usize, usize)], bytes: usize) -> Result<f64, String> {
    let start = Arc::new(Barrier::new(flows.len() + 1));
    // Each sink reports once it has read its warm-up; a source reports only
    // a failure to connect or write it.
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut sinks = Vec::new();
    let mut sources = Vec::new();
    for &(from, to) in flows {
        let (src, dst) = (nodes[from].clone(), nodes[to].clone());
        let (port_tx, port_rx) = mpsc::channel();
        let sink_node = dst.clone();
        let warm = ready_tx.clone();
        sinks.push(std::thread::spawn(move || -> Result<usize, String> {
            let dst = sink_node;
            enter(&dst)?;
            let listener = TcpListener::bind((dst.ip.as_str(), 0))
                .map_err(|e| format!("bind {}: {e}", dst.ip))?;
            let _ = port_tx.send(listener.local_addr().map_err(|e| e.to_string())?.port());
            let (mut s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
            let mut buf = vec![0u8; 4 * BLOCK];
            let mut warmed = 0;
            while warmed < WARM {
                match s.read(&mut buf[..(WARM - warmed).min(4 * BLOCK)]) {
                    Ok(0) => break,
                    Ok(n) => warmed += n,
                    Err(e) => {
                        let _ = warm.send(Err(format!("read: {e}")));
                        return Err(format!("read: {e}"));
                    }
                }
            }
            let _ = warm.send(Ok(()));
            let mut got = 0;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return Ok(got),
                    Ok(n) => got += n,
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
        }));
        let port = port_rx
            .recv()
            .map_err(|_| "a TCP receiver failed to start".to_string())?;
        let (start, ready) = (start.clone(), ready_tx.clone());
        sources.push(std::thread::spawn(move || -> Result<(), String> {
            let block = vec![7u8; BLOCK];
            let connected = enter(&src).and_then(|()| {
                let mut s = TcpStream::connect((dst.ip.as_str(), port))
                    .map_err(|e| format!("connect {}:{port}: {e}", dst.ip))?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                write_n(&mut s, &block, WARM)?;
                Ok(s)
            });
            if let Err(e) = &connected {
                let _ = ready.send(Err(e.clone()));
            }
            start.wait();
            let mut s = connected?;
            write_n(&mut s, &block, bytes)
        }));
    }
    // On a failed connect, give up at once: the run ends with this error.
    for _ in flows {
        ready_rx
            .recv()
            .map_err(|_| "a TCP flow failed to start".to_string())??;
    }
    start.wait();
    let t = Instant::now();
    let mut moved = 0;
    for sink in sinks {
        moved += sink.join().map_err(|_| "a TCP receiver panicked")??;
    }
    let elapsed = t.elapsed().as_secs_f64();
    for source in sources {
        source.join().map_err(|_| "a TCP sender panicked")??;
    }
    if moved != bytes * flows.len() {
        return Err(format!(
            "TCP copy moved {moved} of {} bytes",
            bytes * flows.len()
        ));
    }
    Ok(moved as f64 / elapsed)
}
