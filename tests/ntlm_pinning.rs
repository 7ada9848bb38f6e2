use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use trackgate::simulate::{AuthMode, FixtureSet, SimulatorOptions, ntlm};

use crate::support::{self, TestGateway};

struct Client {
    sender: SendRequest<Empty<Bytes>>,
    closed: tokio::task::JoinHandle<()>,
}

async fn connect(gw: &TestGateway) -> Client {
    let tcp = TcpStream::connect(gw.gateway.proxy_addr()).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let closed = tokio::spawn(async move {
        let _ = conn.await;
    });
    Client { sender, closed }
}

/// Sends one request; returns status, `x-sim-user` and `x-sim-conn`, and `WWW-Authenticate`.
async fn get(
    client: &mut Client,
    auth: Option<&str>,
    fault: Option<&str>,
) -> (u16, String, String, String) {
    let mut builder = Request::get("/v1.0/me/messages").header("host", "mail.contoso.example");
    if let Some(a) = auth {
        builder = builder.header("authorization", a);
    }
    if let Some(f) = fault {
        builder = builder.header("x-sim-fault", f);
    }
    client.sender.ready().await.unwrap();
    let response = client
        .sender
        .send_request(builder.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let out = (
        response.status().as_u16(),
        header("x-sim-user"),
        header("x-sim-conn"),
        header("www-authenticate"),
    );
    response.into_body().collect().await.unwrap();
    out
}

/// The request target the upstream received for a plain request on this connection.
async fn target(client: &mut Client) -> String {
    client.sender.ready().await.unwrap();
    let request = Request::get("/v1.0/me/messages")
        .header("host", "mail.contoso.example")
        .body(Empty::new())
        .unwrap();
    let response = client.sender.send_request(request).await.unwrap();
    let target = response.headers()["x-sim-target"]
        .to_str()
        .unwrap()
        .to_owned();
    response.into_body().collect().await.unwrap();
    target
}

async fn ntlm_gateway() -> (trackgate::simulate::ExchangeSimulator, TestGateway) {
    let mut options = SimulatorOptions::new("sim", FixtureSet::embedded().unwrap());
    options.auth = AuthMode::Ntlm;
    options.passwords = vec![
        ("CONTOSO\\alice".into(), "alice-pw".into()),
        ("CONTOSO\\bob".into(), "bob-pw".into()),
    ];
    let sim = support::simulator_with(options).await;
    let gw = support::gateway(&sim.url(), "[listener]\nplaintext = true\n").await;
    (sim, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ntlm_client_gets_its_own_upstream_connection() {
    let (sim, gw) = ntlm_gateway().await;
    let mut alice = connect(&gw).await;
    let mut bob = connect(&gw).await;

    // Interleaved handshakes: a shared or pooled upstream connection would mix the legs up.
    let (status, _, _, challenge_a) = get(&mut alice, Some(&ntlm::negotiate_header()), None).await;
    assert_eq!(status, 401);
    let (status, _, _, challenge_b) = get(&mut bob, Some(&ntlm::negotiate_header()), None).await;
    assert_eq!(status, 401);
    let challenge_a = ntlm::challenge_from_header(&challenge_a).expect("alice got a challenge");
    let challenge_b = ntlm::challenge_from_header(&challenge_b).expect("bob got a challenge");
    assert_ne!(challenge_a, challenge_b);

    let (status, user, conn_a, _) = get(
        &mut alice,
        Some(&ntlm::authenticate_header(
            challenge_a,
            "CONTOSO",
            "alice",
            "alice-pw",
        )),
        None,
    )
    .await;
    assert_eq!((status, user.as_str()), (200, "CONTOSO\\alice"));
    // The pinned connection sends origin form, as the pooled client does.
    assert!(
        target(&mut alice).await.starts_with("/v1.0/"),
        "absolute form on the pinned connection"
    );
    let (status, user, conn_b, _) = get(
        &mut bob,
        Some(&ntlm::authenticate_header(
            challenge_b,
            "CONTOSO",
            "bob",
            "bob-pw",
        )),
        None,
    )
    .await;
    assert_eq!((status, user.as_str()), (200, "CONTOSO\\bob"));
    assert_ne!(conn_a, conn_b);

    // Later requests ride the authenticated connection without credentials, and never swap.
    for _ in 0..5 {
        let (status, user, conn, _) = get(&mut alice, None, None).await;
        assert_eq!(
            (status, user.as_str(), conn.as_str()),
            (200, "CONTOSO\\alice", conn_a.as_str())
        );
        let (status, user, conn, _) = get(&mut bob, None, None).await;
        assert_eq!(
            (status, user.as_str(), conn.as_str()),
            (200, "CONTOSO\\bob", conn_b.as_str())
        );
    }

    // A third client without Windows auth goes through the pool and is not authenticated.
    let mut carol = connect(&gw).await;
    let (status, user, conn, _) = get(&mut carol, None, None).await;
    assert_eq!((status, user.as_str()), (401, ""));
    assert!(conn != conn_a && conn != conn_b);

    assert_eq!(sim.stats().ntlm_authenticated, 2);
    let metrics = &gw.gateway.proxy().metrics;
    assert_eq!(metrics.upstream_connects_pinned.get(), 2);
    assert_eq!(metrics.pinned_active.get(), 2);

    // Alice leaves: her pinned upstream connection closes with her.
    drop(alice.sender);
    alice.closed.await.unwrap();
    support::wait_for(
        Duration::from_secs(10),
        "pinned connection to close",
        async || (metrics.pinned_active.get() == 1).then_some(()),
    )
    .await;
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connection_closes_when_its_pinned_upstream_connection_dies() {
    let (_sim, gw) = ntlm_gateway().await;
    let mut alice = connect(&gw).await;
    let (_, _, _, challenge) = get(&mut alice, Some(&ntlm::negotiate_header()), None).await;
    let challenge = ntlm::challenge_from_header(&challenge).unwrap();
    let (status, ..) = get(
        &mut alice,
        Some(&ntlm::authenticate_header(
            challenge, "CONTOSO", "alice", "alice-pw",
        )),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // The upstream drops the connection; the gateway answers 502 and closes the client's too,
    // so no later request can go out unauthenticated on a fresh upstream connection.
    let (status, ..) = get(&mut alice, None, Some("reset")).await;
    assert_eq!(status, 502);
    tokio::time::timeout(Duration::from_secs(10), alice.closed)
        .await
        .expect("client connection closed")
        .unwrap();
    gw.gateway.shutdown().await;
}
