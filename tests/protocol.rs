//! The wire contract of docs/PROTOCOL.md, driven with a plain Flight client
//! against real processes: what any language's Flight client would do.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use common::TestCluster;
use futures::{StreamExt, TryStreamExt};
use quiver::flight::net::FlightClient;
use quiver::flight::protocol::{
    Commands, Finished, LOCATE_HEADER, PROTOCOL_VERSION, Report, SESSION_HEADER, Stored,
};
use quiver::flight::{codec, net};
use tonic::{Code, Request, Response, Streaming};

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

/// Puts `value` under `key` through `center` (a scatter).
async fn put_scalar(
    center: &FlightClient,
    key: &str,
    value: f64,
) -> Result<Vec<arrow_flight::PutResult>, tonic::Status> {
    let mut msgs = codec::encode(&quiver::chunk::scalar(value), None).unwrap();
    msgs[0].flight_descriptor = Some(FlightDescriptor::new_path(vec![key.into()]));
    let replies = center.clone().do_put(futures::stream::iter(msgs)).await?;
    replies.into_inner().try_collect().await
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
        assert_eq!(flights[0].total_records, 1, "the holder describes it");
        assert_eq!(flights[0].clone().try_decode_schema().unwrap().fields().len(), 1);
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
        assert!(e.message().contains("'a'") && e.message().contains("unknown op 'nope'; the ops here are: abs, add,"), "{}", e.message());
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
        assert!(e.message().contains("after 0.001s waiting for 'slow'"), "{}", e.message());
        let timed = |ms: &str| {
            let mut req = tonic::Request::new(FlightDescriptor::new_path(vec!["total".into()]));
            req.metadata_mut().insert("x-quiver-timeout-ms", ms.parse().unwrap());
            req
        };
        // A wait past what milliseconds in 64 bits can say is a wait without end.
        center.get_flight_info(timed(&"9".repeat(40))).await.unwrap();
        let e = center.get_flight_info(timed("soon")).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("got 'soon'"), "{}", e.message());

        // Released keys are gone.
        act(&mut center, "release", r#"{"keys": ["total", "bad", "slow"]}"#).await.unwrap();
        let e = center.get_flight_info(FlightDescriptor::new_path(vec!["total".into()])).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    });
}

#[test]
fn data_put_again_under_a_released_key_is_kept() {
    // The free of the first chunk and the put of the second reach the worker
    // on two connections; the put waits for the free.
    let cluster = TestCluster::start(1, &[]);
    cluster.block_on(async {
        let mut center = client(&cluster.address).await;
        for i in 0..300 {
            put_scalar(&center, "k", 1.0).await.expect("put");
            act(&mut center, "release", r#"{"keys": ["k"]}"#)
                .await
                .expect("release");
            put_scalar(&center, "k", 2.0).await.expect("put again");
            let got = net::do_get(&mut center, b"k").await;
            let got = got.unwrap_or_else(|e| panic!("round {i}: the second chunk was lost: {e}"));
            assert_eq!(scalar(got), 2.0, "round {i}");
            act(&mut center, "release", r#"{"keys": ["k"]}"#)
                .await
                .expect("release");
        }
    });
}

#[test]
fn of_two_puts_of_one_key_at_once_one_is_kept_and_the_other_refused() {
    let cluster = TestCluster::start(2, &[]);
    let workers: Vec<String> = (cluster.status().unwrap().workers.into_iter())
        .map(|w| w.address)
        .collect();
    cluster.block_on(async {
        let center = client(&cluster.address).await;
        const ROUNDS: usize = 40;
        for i in 0..ROUNDS {
            let key = format!("d{i}");
            let (one, two) = tokio::join!(
                put_scalar(&center, &key, 1.0),
                put_scalar(&center, &key, 2.0)
            );
            let (kept, refused) = match (one, two) {
                (Ok(_), Err(e)) => (1.0, e),
                (Err(e), Ok(_)) => (2.0, e),
                other => panic!("round {i}: one put is kept, not {other:?}"),
            };
            assert_eq!(refused.code(), Code::AlreadyExists, "round {i}: {refused}");
            let got = net::do_get(&mut center.clone(), key.as_bytes())
                .await
                .unwrap();
            assert_eq!(scalar(got), kept, "round {i}: the kept put's value");
        }
        // Neither put left a chunk the center does not know of.
        let mut held = 0;
        for w in &workers {
            let mut w = client(w).await;
            let listed = w
                .list_flights(Criteria::default())
                .await
                .unwrap()
                .into_inner();
            held += listed.try_collect::<Vec<_>>().await.unwrap().len();
        }
        assert_eq!(held, ROUNDS);
    });
}

#[test]
fn a_wait_for_a_key_released_meanwhile_ends_saying_so() {
    let cluster = TestCluster::start(1, &[]);
    cluster.block_on(async {
        let mut center = client(&cluster.address).await;
        let graph = r#"{"graph": {"big": {"op": "random", "args": [100000000]},
                                  "s": {"op": "sum", "args": [{"key": "big"}]}}, "keys": ["s"]}"#;
        act(&mut center, "submit", graph).await.expect("submit");
        let waiting = tokio::spawn({
            let mut center = center.clone();
            async move {
                center
                    .get_flight_info(FlightDescriptor::new_path(vec!["s".into()]))
                    .await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        act(&mut center, "release", r#"{"keys": ["s"]}"#)
            .await
            .expect("release");
        let waited = tokio::time::timeout(std::time::Duration::from_secs(60), waiting).await;
        let e = waited.expect("the wait still waits").unwrap().unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e}");
        assert!(
            e.message().contains("'s' was released while waited for"),
            "{e}"
        );
    });
}

#[test]
fn a_put_whose_session_closes_meanwhile_is_not_kept() {
    let cluster = TestCluster::start(1, &[]);
    cluster.block_on(async {
        let center = client(&cluster.address).await;
        fn in_session<T>(body: T) -> Request<T> {
            let mut req = Request::new(body);
            (req.metadata_mut()).insert(SESSION_HEADER, "closing".parse().unwrap());
            req
        }
        let data = quiver::chunk::from_array(std::sync::Arc::new(
            arrow::array::Float64Array::from(vec![1.0; 1000]),
        ));
        let mut msgs = codec::encode(&data, None).unwrap();
        msgs[0].flight_descriptor = Some(FlightDescriptor::new_path(vec!["big".into()]));
        // The first message opens the put (and the session); the body follows later.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(msgs.remove(0)).unwrap();
        let body =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let put = tokio::spawn({
            let mut center = center.clone();
            async move {
                let replies = center.do_put(in_session(body)).await?;
                replies.into_inner().try_collect::<Vec<_>>().await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut c = center.clone();
        c.do_action(in_session(Action::new("session-close", "")))
            .await
            .expect("close");
        for m in msgs {
            tx.send(m).unwrap();
        }
        drop(tx);
        let e = put.await.unwrap().unwrap_err();
        assert!(
            e.message()
                .contains("the session closed while 'big' was being put"),
            "{e}"
        );
        // Nothing is held, on the center or on the worker.
        let mut c = center.clone();
        let listed = c
            .list_flights(Criteria::default())
            .await
            .unwrap()
            .into_inner();
        assert!(listed.try_collect::<Vec<_>>().await.unwrap().is_empty());
    });
}

#[test]
fn a_put_cut_off_before_its_end_is_not_kept() {
    let cluster = TestCluster::start(1, &[]);
    cluster.block_on(async {
        let center = client(&cluster.address).await;
        // Every message of the chunk is sent, but the stream never ends:
        // the client cancels instead.
        let mut msgs = codec::encode(&quiver::chunk::scalar(1.0), None).unwrap();
        msgs[0].flight_descriptor = Some(FlightDescriptor::new_path(vec!["c".into()]));
        let body = futures::stream::iter(msgs).chain(futures::stream::pending());
        let gave_up = std::time::Duration::from_millis(300);
        let put = tokio::time::timeout(gave_up, center.clone().do_put(body)).await;
        assert!(put.is_err(), "a put without its end was answered: {put:?}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // The key is free: the cut-off put kept nothing.
        put_scalar(&center, "c", 2.0).await.expect("put");
        let mut c = center.clone();
        let got = c.do_get(Ticket::new("c")).await.unwrap().into_inner();
        assert_eq!(scalar(got.try_collect().await.unwrap()), 2.0);
    });
}

#[test]
fn a_put_whose_client_hangs_up_mid_placement_is_kept_and_releasable() {
    let cluster = TestCluster::start(0, &[]);
    cluster.block_on(async {
        let mut center = client(&cluster.address).await;
        let fake = FakeWorker {
            delay: std::time::Duration::from_millis(500),
            ..FakeWorker::default()
        };
        join(&mut center, &fake).await;
        // The client gives up while the center is placing the chunk.
        let gave_up = std::time::Duration::from_millis(100);
        let put = tokio::time::timeout(gave_up, put_scalar(&center, "p", 1.0)).await;
        assert!(put.is_err(), "the put outlasts its client: {put:?}");
        // The placement still lands and is recorded: nothing accepted is lost.
        let start = std::time::Instant::now();
        loop {
            let listed = center.list_flights(Criteria::default()).await.unwrap();
            let listed = listed.into_inner().try_collect::<Vec<_>>().await.unwrap();
            if !listed.is_empty() {
                break;
            }
            assert!(start.elapsed().as_secs() < 10, "'p' was never recorded");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let e = put_scalar(&center, "p", 2.0).await.unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{e}");
        // And the key is free again once released.
        act(&mut center, "release", r#"{"keys": ["p"]}"#)
            .await
            .expect("release");
        put_scalar(&center, "p", 3.0).await.expect("put again");
    });
}

#[test]
fn a_graph_defining_a_key_being_put_is_refused() {
    let cluster = TestCluster::start(0, &[]);
    cluster.block_on(async {
        let mut center = client(&cluster.address).await;
        let fake = FakeWorker {
            delay: std::time::Duration::from_millis(500),
            ..FakeWorker::default()
        };
        join(&mut center, &fake).await;
        let put = tokio::spawn({
            let center = center.clone();
            async move { put_scalar(&center, "k", 1.0).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let graph = r#"{"graph": {"k": {"op": "arange", "args": [3]}}, "keys": ["k"]}"#;
        let e = act(&mut center, "submit", graph).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains("'k' is being put"), "{e}");
        put.await.unwrap().expect("the put is kept");
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
        let ours = format!("speaks {}", quiver::flight::protocol::PROTOCOL_VERSION);
        assert!(
            e.message().contains("speaks 99") && e.message().contains(&ours),
            "{}",
            e.message()
        );
    });
}

/// A stand-in worker for what the center must do with a worker's replies on
/// the `commands` exchange: it answers each message that runs tasks with a
/// report of them all finished (`delay` later), or, given `garbage`, with that.
#[derive(Clone, Default)]
struct FakeWorker {
    id: Arc<AtomicU32>,
    address: Arc<std::sync::OnceLock<String>>,
    garbage: Option<bytes::Bytes>,
    delay: std::time::Duration,
    /// Notified each time tasks arrive, before they are reported.
    running: Arc<tokio::sync::Notify>,
}

type Reply<T> = futures::stream::BoxStream<'static, Result<T, tonic::Status>>;

#[tonic::async_trait]
impl FlightService for FakeWorker {
    type HandshakeStream = Reply<HandshakeResponse>;
    type ListFlightsStream = Reply<FlightInfo>;
    type DoGetStream = Reply<FlightData>;
    type DoPutStream = Reply<PutResult>;
    type DoExchangeStream = Reply<FlightData>;
    type DoActionStream = Reply<arrow_flight::Result>;
    type ListActionsStream = Reply<ActionType>;

    async fn do_exchange(
        &self,
        req: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, tonic::Status> {
        let mut incoming = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        if let Some(g) = &self.garbage {
            let _ = tx.send(Ok(FlightData {
                app_metadata: g.clone(),
                ..Default::default()
            }));
        }
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = incoming.message().await {
                let Ok(c) = serde_json::from_slice::<Commands>(&m.app_metadata) else {
                    continue;
                };
                let Some(run) = c.run else { continue };
                me.running.notify_one();
                tokio::time::sleep(me.delay).await;
                let report = Report {
                    worker: me.id.load(Ordering::Relaxed),
                    address: me.address.get().cloned().unwrap_or_default(),
                    finished: run
                        .tasks
                        .iter()
                        .map(|t| Finished {
                            key: t.key.clone(),
                            nbytes: 8,
                            micros: 1,
                        })
                        .collect(),
                    failed: vec![],
                };
                let body = serde_json::to_vec(&report).expect("report");
                if tx
                    .send(Ok(FlightData {
                        app_metadata: body.into(),
                        ..Default::default()
                    }))
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
        ))))
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn do_get(
        &self,
        _: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn do_put(
        &self,
        req: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, tonic::Status> {
        // Takes the chunk, `delay` later, without keeping it.
        req.into_inner().try_collect::<Vec<_>>().await?;
        tokio::time::sleep(self.delay).await;
        let stored = serde_json::to_vec(&Stored { nbytes: 8 }).expect("reply");
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(
            PutResult {
                app_metadata: stored.into(),
            },
        )]))))
    }
    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
}

/// Serves `fake` on loopback and registers it with the center.
async fn join(center: &mut FlightClient, fake: &FakeWorker) {
    let (incoming, addr) = net::bind("127.0.0.1", 0).await.expect("bind");
    fake.address.set(addr.to_string()).expect("one address");
    let server = tonic::transport::Server::builder()
        .add_service(FlightServiceServer::new(fake.clone()))
        .serve_with_incoming(incoming);
    tokio::spawn(server);
    let register = serde_json::json!({
        "protocol_version": PROTOCOL_VERSION, "name": "fake", "address": addr.to_string(),
        "host_id": "fake", "nthreads": 1, "memory_limit": 1u64 << 30,
        "ops": quiver::OpRegistry::builtin().names(),
    });
    let reply = act(center, "register", &register.to_string())
        .await
        .expect("register");
    let registered: serde_json::Value = serde_json::from_str(&reply).expect("json");
    fake.id.store(
        registered["worker"].as_u64().expect("id") as u32,
        Ordering::Relaxed,
    );
}

/// Polls the center's `cluster` reply until `done` holds of it (10 s at most).
async fn until(
    center: &mut FlightClient,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let reply = act(center, "cluster", "").await.expect("cluster");
        let status: serde_json::Value = serde_json::from_str(&reply).expect("json");
        if done(&status) || start.elapsed() > std::time::Duration::from_secs(10) {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[test]
fn a_worker_reports_its_tasks_on_the_commands_exchange() {
    let cluster = TestCluster::start(0, &[]);
    cluster.block_on(async {
        let mut center = client(&cluster.address).await;
        let fake = FakeWorker::default();
        join(&mut center, &fake).await;
        let graph = r#"{"graph": {"x": {"op": "arange", "args": [3]}}, "keys": ["x"]}"#;
        act(&mut center, "submit", graph).await.expect("submit");
        // The fake never calls `report`: the center learns of `x` from the exchange alone.
        let status = until(&mut center, |s| s["tasks_finished"] == 1).await;
        assert_eq!(status["tasks_finished"], 1, "{status}");
        assert_eq!(
            status["workers"].as_array().map(Vec::len),
            Some(1),
            "{status}"
        );
    });
}

#[test]
fn the_center_locates_a_key_without_asking_its_holder() {
    let cluster = TestCluster::start(0, &[]);
    cluster.block_on(async {
        let mut center = client(&cluster.address).await;
        let fake = FakeWorker::default();
        join(&mut center, &fake).await;
        let graph = r#"{"graph": {"x": {"op": "arange", "args": [3]}}, "keys": ["x"]}"#;
        act(&mut center, "submit", graph).await.expect("submit");
        let x = || FlightDescriptor::new_path(vec!["x".into()]);
        let mut locate = Request::new(x());
        (locate.metadata_mut()).insert(LOCATE_HEADER, "1".parse().unwrap());
        // The fake answers no describing call: the center answers alone.
        let info = center
            .get_flight_info(locate)
            .await
            .expect("located")
            .into_inner();
        let location = &info.endpoint[0].location[0].uri;
        assert_eq!(location, &format!("grpc://{}", fake.address.get().unwrap()));
        assert_eq!(
            info.endpoint[0].ticket.as_ref().unwrap().ticket.as_ref(),
            b"x"
        );
        assert_eq!((info.total_bytes, info.total_records), (8, -1));
        assert!(info.schema.is_empty());
        // Without the header the center asks the holder for the schema.
        let e = center.get_flight_info(x()).await.unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented, "{e}");
    });
}

#[test]
fn a_worker_whose_reply_is_not_a_report_is_removed() {
    let cluster = TestCluster::start(0, &[]);
    cluster.block_on(async {
        let mut center = client(&cluster.address).await;
        let fake = FakeWorker {
            garbage: Some(bytes::Bytes::from_static(b"{\"not\": \"a report\"")),
            ..FakeWorker::default()
        };
        join(&mut center, &fake).await;
        let status = until(&mut center, |s| {
            s["workers"].as_array().is_some_and(|w| w.is_empty())
        })
        .await;
        assert_eq!(
            status["workers"].as_array().map(Vec::len),
            Some(0),
            "{status}"
        );
        // The center itself carries on.
        act(&mut center, "cluster", "").await.expect("cluster");
    });
}

#[test]
fn a_hand_over_waits_for_the_retiring_workers_last_report() {
    let cluster = TestCluster::start(0, &[]);
    cluster.block_on(async {
        let mut center = client(&cluster.address).await;
        let fake = FakeWorker {
            delay: std::time::Duration::from_millis(300),
            ..FakeWorker::default()
        };
        join(&mut center, &fake).await;
        let graph = r#"{"graph": {"x": {"op": "arange", "args": [3]}}, "keys": ["x"]}"#;
        act(&mut center, "submit", graph).await.expect("submit");
        fake.running.notified().await;
        // `x` is still running: the hand-over must wait for its report, and
        // then find it held by this worker alone, with no peer to take it.
        let start = std::time::Instant::now();
        let retire = serde_json::json!({
            "worker": fake.id.load(Ordering::Relaxed), "phase": "hand-over",
        });
        let e = act(&mut center, "retire", &retire.to_string())
            .await
            .expect_err("no peer to hand x to");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
        assert!(e.message().contains("hand 1 keys"), "{e}");
        // Woken by the report itself, well before the 10 s the center allows.
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    });
}
