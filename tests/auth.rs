//! Shared-secret auth against real processes: with `--token` set on the
//! center and workers, every Flight method of both refuses a caller without
//! the token (UNAUTHENTICATED, with a message), and a client with it runs the
//! seed workload (which also needs worker→worker and worker→center calls).

mod common;

use std::process::Command;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{
    Action, Criteria, Empty, FlightData, FlightDescriptor, HandshakeRequest, Ticket,
};
use base64::Engine;
use common::{TestCluster, quiver_bin};
use quiver::flight::auth;
use quiver::{Client, Connect, seed};
use tonic::Code;
use tonic::transport::Channel;

const TOKEN: &str = "s3cret-for-tests";

fn cluster() -> TestCluster {
    // This test process's own connections (fixture, clients) carry the token.
    auth::set_token(Some(TOKEN.into()));
    assert_eq!(auth::token(), Some(TOKEN));
    TestCluster::start_with(2, &["--token", TOKEN], &["--token", TOKEN])
}

/// A Flight client that sends `authorization` as given (or nothing).
async fn raw(address: &str) -> FlightServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightServiceClient::new(channel)
}

fn with<T>(msg: T, authorization: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(a) = authorization {
        r.metadata_mut().insert("authorization", a.parse().unwrap());
    }
    r
}

/// Calls every Flight method with `authorization` and returns each status code.
async fn every_method(
    address: &str,
    authorization: Option<&str>,
) -> Vec<(&'static str, Code, String)> {
    let mut c = raw(address).await;
    let path = || FlightDescriptor::new_path(vec!["k".into()]);
    let put = || {
        futures::stream::iter([FlightData {
            flight_descriptor: Some(path()),
            ..Default::default()
        }])
    };
    let mut out = Vec::new();
    let mut note = |name, r: Result<(), tonic::Status>| {
        let s = r.err().unwrap_or_else(|| tonic::Status::ok(""));
        out.push((name, s.code(), s.message().to_string()));
    };
    let hs = futures::stream::iter([HandshakeRequest::default()]);
    note(
        "handshake",
        c.handshake(with(hs, authorization)).await.map(drop),
    );
    note(
        "list_flights",
        c.list_flights(with(Criteria::default(), authorization))
            .await
            .map(drop),
    );
    note(
        "get_flight_info",
        c.get_flight_info(with(path(), authorization))
            .await
            .map(drop),
    );
    note(
        "poll_flight_info",
        c.poll_flight_info(with(path(), authorization))
            .await
            .map(drop),
    );
    note(
        "get_schema",
        c.get_schema(with(path(), authorization)).await.map(drop),
    );
    note(
        "do_get",
        c.do_get(with(Ticket::new("k"), authorization))
            .await
            .map(drop),
    );
    note(
        "do_put",
        c.do_put(with(put(), authorization)).await.map(drop),
    );
    note(
        "do_exchange",
        c.do_exchange(with(put(), authorization)).await.map(drop),
    );
    note(
        "do_action",
        c.do_action(with(Action::new("cluster", ""), authorization))
            .await
            .map(drop),
    );
    note(
        "list_actions",
        c.list_actions(with(Empty {}, authorization))
            .await
            .map(drop),
    );
    out
}

#[test]
fn without_the_token_every_method_of_center_and_worker_is_refused() {
    let cluster = cluster();
    let worker = cluster.status().expect("status with the token").workers[0]
        .address
        .clone();
    for address in [cluster.address.as_str(), worker.as_str()] {
        for (authorization, expect) in [
            (None, "needs a token"),
            (Some("Bearer wrong"), "wrong token"),
            (Some("Basic bm9wZQ=="), "wrong token"),
        ] {
            let results = cluster.block_on(every_method(address, authorization));
            assert_eq!(results.len(), 10);
            for (method, code, message) in results {
                assert_eq!(
                    code,
                    Code::Unauthenticated,
                    "{address} {method} with {authorization:?}: {message}"
                );
                assert!(message.contains(expect), "{method}: {message}");
            }
        }
        // With the token, no call is refused for want of it.
        let bearer = format!("Bearer {TOKEN}");
        for (method, code, message) in cluster.block_on(every_method(address, Some(&bearer))) {
            assert_ne!(code, Code::Unauthenticated, "{address} {method}: {message}");
        }
    }
}

#[test]
fn the_handshake_trades_basic_credentials_for_the_bearer_header() {
    let cluster = cluster();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("anyone:{TOKEN}"));
    let reply = cluster.block_on(async {
        let mut c = raw(&cluster.address).await;
        let hs = futures::stream::iter([HandshakeRequest::default()]);
        c.handshake(with(hs, Some(&format!("Basic {basic}"))))
            .await
            .expect("handshake with the token as password")
    });
    assert_eq!(
        reply.metadata().get("authorization").unwrap(),
        &format!("Bearer {TOKEN}")
    );
}

#[test]
fn with_the_token_the_seed_runs_across_workers() {
    let cluster = cluster();
    let client = Client::connect(&cluster.address).unwrap();
    assert_eq!(
        seed::run("graph", &client, 8, 10_000).unwrap(),
        seed::floor(1, 8, 10_000)
    );
    assert_eq!(
        seed::run("pool", &client, 8, 10_000).unwrap(),
        seed::floor(1, 8, 10_000)
    );
}

#[test]
fn a_worker_without_the_token_exits_with_a_message() {
    let cluster = cluster();
    let out = Command::new(quiver_bin())
        .args(["worker", &cluster.address])
        .env_remove("QUIVER_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused this process's token"), "{err}");
    let out = Command::new(quiver_bin())
        .args(["status", &cluster.address, "--token", "wrong"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong token"));
}
