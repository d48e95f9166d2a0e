//! Ten thousand bad requests of every kind at a live cluster of real
//! processes: each gets a Flight error with the right code, no process
//! dies, nothing half-accepted is left behind, and the seed workload still
//! runs correctly afterwards.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use arrow_flight::{Action, FlightData, FlightDescriptor, Ticket};
use bytes::Bytes;
use common::TestCluster;
use futures::{StreamExt, TryStreamExt};
use quiver::flight::codec;
use quiver::flight::net::{self, FlightClient};
use quiver::{Client, Connect, chunk, seed};
use tonic::Code;

const REQUESTS: usize = 10_000;
const KINDS: usize = 20;

/// A tiny deterministic generator, so a failure can be replayed.
fn noise(i: usize, len: usize) -> Vec<u8> {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn path(key: &str) -> FlightDescriptor {
    FlightDescriptor::new_path(vec![key.into()])
}

async fn action(
    c: &mut FlightClient,
    name: &str,
    body: impl Into<Bytes>,
) -> Result<(), tonic::Status> {
    let s = c
        .do_action(Action {
            r#type: name.into(),
            body: body.into(),
        })
        .await?;
    s.into_inner().try_collect::<Vec<_>>().await.map(drop)
}

async fn put(c: &mut FlightClient, msgs: Vec<FlightData>) -> Result<(), tonic::Status> {
    let s = c.do_put(futures::stream::iter(msgs)).await?;
    s.into_inner().try_collect::<Vec<_>>().await.map(drop)
}

/// Sends bad request number `i`; returns its kind and the status it got.
async fn bad(i: usize, center: &mut FlightClient, worker: &mut FlightClient) -> (usize, Code) {
    let kind = i % KINDS;
    let key = format!("bad-{i}");
    let good = codec::encode(&chunk::scalar(1.0), None).unwrap();
    let r = match kind {
        0 => center.do_get(Ticket::new(noise(i, 16))).await.map(drop),
        1 => match center.do_get(Ticket::new(key.clone())).await {
            Ok(s) => s.into_inner().try_collect::<Vec<_>>().await.map(drop),
            Err(e) => Err(e),
        },
        2 => center.get_flight_info(path(&key)).await.map(drop),
        3 => center
            .get_flight_info(FlightDescriptor::new_cmd(noise(i, 8)))
            .await
            .map(drop),
        4 => action(center, "submit", noise(i, 64)).await,
        5 => {
            let g = format!(
                r#"{{"graph": {{"{key}": {{"op": "neg", "args": [{{"key": "{key}-b"}}]}}, "{key}-b": {{"op": "neg", "args": [{{"key": "{key}"}}]}}}}, "keys": ["{key}"]}}"#
            );
            action(center, "submit", g).await
        }
        6 => {
            let g = format!(
                r#"{{"graph": {{"{key}": {{"op": "nope-{i}", "args": [{{"key": "ghost"}}, "text"]}}}}, "keys": ["{key}"]}}"#
            );
            action(center, "submit", g).await
        }
        7 => {
            let g = format!(
                r#"{{"graph": {{"{key}": {{"op": "random", "args": [1000000000000000]}}}}, "keys": ["{key}"]}}"#
            );
            action(center, "submit", g).await
        }
        8 => {
            let g = format!(
                r#"{{"graph": {{"{key}": {{"op": "sum", "args": [{}1{}]}}}}, "keys": ["{key}"]}}"#,
                "[".repeat(5000),
                "]".repeat(5000)
            );
            action(center, "submit", g).await
        }
        9 => {
            // Corrupt IPC: garbage header and body after a descriptor.
            let junk = FlightData {
                flight_descriptor: Some(path(&key)),
                data_header: noise(i, 40).into(),
                data_body: noise(i + 1, 100).into(),
                ..Default::default()
            };
            put(center, vec![junk]).await
        }
        10 => {
            // Truncated IPC: a real batch whose body was cut short.
            let floats = arrow::array::Float64Array::from(vec![1.0; 1000]);
            let mut msgs =
                codec::encode(&chunk::from_array(std::sync::Arc::new(floats)), None).unwrap();
            msgs[0].flight_descriptor = Some(path(&key));
            let body = msgs[1].data_body.clone();
            msgs[1].data_body = body.slice(0..body.len() / 2);
            put(center, msgs).await
        }
        11 => {
            // A descriptor alone: no schema, no batch. (A schema alone is
            // an empty chunk, as pyarrow writes an empty table.)
            let alone = FlightData {
                flight_descriptor: Some(path(&key)),
                ..Default::default()
            };
            put(center, vec![alone]).await
        }
        12 => put(center, good.clone()).await, // no descriptor
        13 => action(center, &format!("frobnicate-{i}"), "").await,
        14 => worker.do_get(Ticket::new(noise(i, 12))).await.map(drop),
        15 => action(worker, "run", noise(i, 32)).await,
        16 => {
            let req = FlightData {
                flight_descriptor: Some(FlightDescriptor::new_cmd(noise(i, 4))),
                ..Default::default()
            };
            match worker.do_exchange(futures::stream::iter([req])).await {
                Ok(s) => s.into_inner().try_collect::<Vec<_>>().await.map(drop),
                Err(e) => Err(e),
            }
        }
        17 => {
            // The center's command stream, carrying garbage.
            let msgs = [
                FlightData {
                    flight_descriptor: Some(FlightDescriptor::new_cmd("commands")),
                    ..Default::default()
                },
                FlightData {
                    app_metadata: noise(i, 24).into(),
                    ..Default::default()
                },
            ];
            match worker.do_exchange(futures::stream::iter(msgs)).await {
                Ok(s) => s.into_inner().try_collect::<Vec<_>>().await.map(drop),
                Err(e) => Err(e),
            }
        }
        18 => {
            // Corrupt IPC put straight to a worker (read beneath tonic there).
            let junk = FlightData {
                flight_descriptor: Some(path(&key)),
                data_header: noise(i, 40).into(),
                data_body: noise(i + 1, 100_000).into(),
                ..Default::default()
            };
            put(worker, vec![junk]).await
        }
        _ => {
            // A client that vanishes mid-stream: a schema, then nothing, then gone.
            let mut first = good[0].clone();
            first.flight_descriptor = Some(path(&key));
            let stream = futures::stream::iter([first]).chain(futures::stream::pending());
            let call = center.do_put(stream);
            match tokio::time::timeout(Duration::from_millis(20), call).await {
                Ok(r) => r.map(drop),
                Err(_) => Err(tonic::Status::cancelled("client vanished")),
            }
        }
    };
    (kind, r.err().map_or(Code::Ok, |s| s.code()))
}

#[test]
fn ten_thousand_bad_requests_leave_the_cluster_serving() {
    let mut cluster = TestCluster::start(4, &[]);
    let worker = cluster.status().unwrap().workers[0].address.clone();
    let codes: BTreeMap<(usize, i32), usize> = cluster.block_on(async {
        let center = net::connect(&cluster.address).await.unwrap();
        let worker = net::connect(&worker).await.unwrap();
        let results: Vec<(usize, Code)> = futures::stream::iter(0..REQUESTS)
            .map(|i| {
                let (mut c, mut w) = (center.clone(), worker.clone());
                async move { bad(i, &mut c, &mut w).await }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let mut codes = BTreeMap::new();
        for r in results {
            *codes.entry((r.0, r.1 as i32)).or_default() += 1;
        }
        codes
    });
    eprintln!("(kind, code) → count: {codes:?}");
    assert_eq!(codes.values().sum::<usize>(), REQUESTS);
    for (&(kind, code), n) in &codes {
        let code = Code::from_i32(code);
        assert!(
            !matches!(code, Code::Ok | Code::Internal | Code::Unknown),
            "{n} requests of kind {kind} got {code:?}"
        );
        let expected = match kind {
            1 | 2 => Code::NotFound,
            19 => Code::Cancelled,
            _ => Code::InvalidArgument,
        };
        if kind != 0 && kind != 14 {
            assert_eq!(code, expected, "kind {kind}");
        }
    }
    assert!(cluster.all_alive(), "a process died");
    let status = cluster.status().unwrap();
    assert_eq!(status.workers.len(), 4);
    let client = Client::connect(&cluster.address).unwrap();
    let flights = cluster.block_on(async {
        let mut c = net::connect(&cluster.address).await.unwrap();
        c.list_flights(arrow_flight::Criteria::default())
            .await
            .unwrap()
            .into_inner()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
    });
    assert!(flights.is_empty(), "half-accepted keys remain: {flights:?}");
    for approach in ["graph", "pool", "array"] {
        assert_eq!(
            seed::run(approach, &client, 16, 10_000).unwrap(),
            seed::floor(1, 16, 10_000),
            "{approach}"
        );
    }
}

#[test]
fn an_oversized_message_is_refused_and_the_cluster_serves_on() {
    let args = ["--max-message", "1MiB"];
    let mut cluster = TestCluster::start_with(2, &args, &args);
    let big = arrow::array::Float64Array::from(vec![1.0; 1 << 20]); // 8 MiB
    let mut msgs = codec::encode(&chunk::from_array(std::sync::Arc::new(big)), None).unwrap();
    msgs[0].flight_descriptor = Some(path("big"));
    let code = cluster.block_on(async {
        let mut c = net::connect(&cluster.address).await.unwrap();
        put(&mut c, msgs).await.unwrap_err()
    });
    assert_eq!(code.code(), Code::OutOfRange, "{code}");
    let over = "a message of 8388801 bytes is over the limit of 1048576 bytes";
    assert!(code.message().contains(over), "{}", code.message());
    assert!(cluster.all_alive());
    let client = Client::connect(&cluster.address).unwrap();
    assert_eq!(
        seed::run("graph", &client, 4, 1000).unwrap(),
        seed::floor(1, 4, 1000)
    );
}
