//! The wire contract of docs/PROTOCOL.md, driven with a plain Flight client
//! against real processes: what any language's Flight client would do.

mod common;

use arrow_flight::{Action, Criteria, Empty, FlightDescriptor, Ticket};
use common::TestCluster;
use futures::TryStreamExt;
use quiver::flight::net::FlightClient;
use quiver::flight::{codec, net};
use tonic::Code;

async fn client(address: &str) -> FlightClient {
    net::connect(address).await.expect("connect")
}

async fn act(c: &mut FlightClient, name: &str, body: &str) -> Result<String, tonic::Status> {
    let mut s = c
        .do_action(Action::new(name, body.to_string()))
        .await?
        .into_inner();
    let r = s
        .try_next()
        .await?
        .map(|r| String::from_utf8_lossy(&r.body).to_string());
    Ok(r.unwrap_or_default())
}

fn scalar(msgs: Vec<arrow_flight::FlightData>) -> f64 {
    let (c, _) = codec::decode_one(msgs, "test").expect("decode");
    quiver::chunk::to_f64(&c).expect("scalar")
}

#[test]
fn a_plain_flight_client_runs_the_seed_graph_and_gets_clear_errors() {
    let cluster = TestCluster::start(2, &[]);
    cluster.block_on(async {
        let mut center = client(&cluster.address).await;
        let graph = r#"{"graph": {
            "x-0": {"op": "arange", "args": [10]},
            "sum-0": {"op": "sum", "args": [{"key": "x-0"}]},
            "total": {"op": "sum", "args": [[{"key": "sum-0"}]]}
        }, "keys": ["total"]}"#;
        let reply = act(&mut center, "submit", graph).await.unwrap();
        assert_eq!(reply, r#"{"keys":["total"]}"#);

        // Locate the key, then fetch it from the worker the endpoint names.
        let info = center.get_flight_info(FlightDescriptor::new_path(vec!["total".into()])).await.unwrap().into_inner();
        assert_eq!(info.total_records, 1);
        let location = &info.endpoint[0].location[0].uri;
        assert!(location.starts_with("grpc://127.0.0.1:"), "{location}");
        let mut worker = client(location).await;
        let msgs = net::do_get(&mut worker, b"total").await.unwrap();
        assert_eq!(scalar(msgs), 45.0);
        // Peers batch small inputs: DoExchange naming several keys streams each in turn.
        let keys = [quiver::Key::from("total"), quiver::Key::from("total")];
        let msgs = net::get_many(&mut worker, &keys, false).await.unwrap();
        assert_eq!(msgs.len(), 3, "one schema (it does not change), a batch per key");
        let mut d = codec::Decoder::default();
        let chunks: Vec<_> = msgs.into_iter().filter_map(|m| d.push(m).unwrap()).collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(quiver::chunk::to_f64(&chunks[1]).unwrap(), 45.0);
        // Asked to combine, the worker sends both as one batch, split by its row counts.
        let msgs = net::get_many(&mut worker, &keys, true).await.unwrap();
        assert_eq!(msgs.len(), 2, "one schema, one batch for both keys");
        assert_eq!(&msgs[1].app_metadata[..], b"[1,1]");
        let meta = msgs[1].app_metadata.clone();
        let mut d = codec::Decoder::default();
        let batch = msgs.into_iter().find_map(|m| d.push(m).unwrap()).unwrap();
        let chunks = codec::split(batch, &meta).unwrap();
        assert_eq!(chunks.len(), 2);
        assert!(chunks.iter().all(|c| quiver::chunk::to_f64(c).unwrap() == 45.0));
        let e = net::get_many(&mut worker, &["total".into(), "ghost".into()], true).await.unwrap_err();
        assert!(e.to_string().contains("key 'ghost' not held here"), "{e}");
        let e = worker.do_exchange(futures::stream::iter([arrow_flight::FlightData::default()])).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("PATH descriptor"), "{}", e.message());
        // The center proxies DoGet for simple clients.
        assert_eq!(scalar(net::do_get(&mut center, b"total").await.unwrap()), 45.0);

        let flights: Vec<_> = center.list_flights(Criteria::default()).await.unwrap().into_inner().try_collect().await.unwrap();
        let names: Vec<String> =
            flights.iter().flat_map(|f| f.flight_descriptor.clone()).flat_map(|d| d.path).collect();
        assert_eq!(names, ["total"], "only the held key stays; intermediates are freed");
        let actions: Vec<_> = center.list_actions(Empty {}).await.unwrap().into_inner().try_collect().await.unwrap();
        assert!(actions.iter().any(|a| a.r#type == "submit"));

        // Errors name what was wrong.
        let e = act(&mut center, "frobnicate", "").await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("unknown action 'frobnicate'"), "{}", e.message());
        let e = act(&mut center, "submit", "{not json").await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("malformed graph"), "{}", e.message());
        let e = act(&mut center, "submit", r#"{"graph": {"a": {"op": "nope"}}, "keys": ["a"]}"#).await.unwrap_err();
        assert!(e.message().contains("'a'") && e.message().contains("unknown op 'nope'"), "{}", e.message());
        let e = center.get_flight_info(FlightDescriptor::new_path(vec!["ghost".into()])).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = center.get_flight_info(FlightDescriptor::new_cmd("total")).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = center.do_get(Ticket::new(vec![0xff, 0xfe])).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = act(&mut center, "release", "[1, 2]").await.unwrap_err();
        assert!(e.message().contains("release"), "{}", e.message());

        // A failed task reports its own error.
        act(&mut center, "submit", r#"{"graph": {"bad": {"op": "slice", "args": [{"key": "total"}, 5, 5]}}, "keys": ["bad"]}"#)
            .await
            .unwrap();
        let e = center.get_flight_info(FlightDescriptor::new_path(vec!["bad".into()])).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("out of a chunk of 1"), "{}", e.message());

        // Waiting is bounded by the client's timeout header.
        act(&mut center, "submit", r#"{"graph": {"slow": {"op": "random", "args": [300000000]}}, "keys": ["slow"]}"#)
            .await
            .unwrap();
        let mut req = tonic::Request::new(FlightDescriptor::new_path(vec!["slow".into()]));
        req.metadata_mut().insert("x-quiver-timeout-ms", "1".parse().unwrap());
        let e = center.get_flight_info(req).await.unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{}", e.message());

        // Released keys are gone.
        act(&mut center, "release", r#"{"keys": ["total", "bad", "slow"]}"#).await.unwrap();
        let e = center.get_flight_info(FlightDescriptor::new_path(vec!["total".into()])).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    });
}

#[test]
fn a_worker_of_another_protocol_version_is_refused_naming_both() {
    let cluster = TestCluster::start(0, &[]);
    cluster.block_on(async {
        let mut center = client(&cluster.address).await;
        let register = r#"{"protocol_version": 99, "name": "future", "address": "127.0.0.1:1",
                           "host_id": "h", "nthreads": 1, "memory_limit": 1}"#;
        let e = act(&mut center, "register", register).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(
            e.message().contains("speaks 99") && e.message().contains("speaks 3"),
            "{}",
            e.message()
        );
    });
}
