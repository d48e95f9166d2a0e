//! TLS with real processes: a CA and a server certificate made in the test
//! with `openssl`; center and workers present the certificate, every
//! connection (client, worker→worker, worker→center) verifies it, and a
//! plaintext client is turned away.

mod common;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, FlightDescriptor};
use common::{TestCluster, certificates};
use quiver::flight::{net, tls};
use quiver::{Client, Connect, seed};
use tonic::transport::Channel;

#[test]
fn a_cluster_over_tls_serves_verified_clients_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = certificates(dir.path());
    // This process's connections verify servers against the test CA.
    tls::set(tls::Tls::load(None, None, Some(&ca)).unwrap());
    let (cert, key, ca) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        ca.to_str().unwrap(),
    );
    let args = ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca];
    let cluster = TestCluster::start_with(2, &args, &args);

    let client = Client::connect(&cluster.address).unwrap();
    for approach in ["graph", "pool", "array"] {
        assert_eq!(
            seed::run(approach, &client, 8, 10_000).unwrap(),
            seed::floor(1, 8, 10_000),
            "{approach}"
        );
    }
    // Endpoints tell Flight clients to use TLS.
    let total = client
        .pool()
        .apply("arange", quiver::Call::new().arg(10))
        .unwrap();
    total.wait().unwrap();
    let info = cluster.block_on(async {
        let mut c = net::connect(&cluster.address).await.unwrap();
        c.get_flight_info(FlightDescriptor::new_path(vec![total.key().to_string()]))
            .await
            .unwrap()
            .into_inner()
    });
    let location = &info.endpoint[0].location[0].uri;
    assert!(location.starts_with("grpc+tls://127.0.0.1:"), "{location}");

    // A plaintext client gets nowhere.
    let refused = cluster.block_on(async {
        let channel = Channel::from_shared(format!("http://{}", cluster.address))
            .unwrap()
            .connect()
            .await;
        match channel {
            Err(e) => Err(e.to_string()),
            Ok(ch) => FlightServiceClient::new(ch)
                .do_action(Action::new("cluster", ""))
                .await
                .map(drop)
                .map_err(|s| s.to_string()),
        }
    });
    assert!(refused.is_err(), "a plaintext call succeeded");
}
