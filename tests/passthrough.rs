use std::collections::BTreeMap;

use trackgate::simulate::{PatternBody, PatternChecker};

use crate::support;

const EIGHT_MIB: u64 = 8 << 20;

async fn round_trip(h2: bool) {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "").await;
    let client = support::client(&gw.ca(), h2);
    let expected = if h2 {
        reqwest::Version::HTTP_2
    } else {
        reqwest::Version::HTTP_11
    };

    // Upload: the sink checks every byte of the pattern.
    let response = client
        .post(gw.localhost_url("/_sim/sink"))
        .body(reqwest::Body::wrap(PatternBody::new(EIGHT_MIB)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), expected);
    let verdict: serde_json::Value = response.json().await.unwrap();
    assert_eq!(verdict["bytes"], EIGHT_MIB);
    assert_eq!(verdict["pattern_ok"], true);

    // Download: check every byte as it streams.
    let mut response = client
        .get(gw.localhost_url(&format!("/_sim/bytes?n={EIGHT_MIB}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), expected);
    let mut checker = PatternChecker::default();
    while let Some(chunk) = response.chunk().await.unwrap() {
        checker.feed(&chunk);
    }
    assert_eq!(checker.seen, EIGHT_MIB);
    assert!(
        checker.ok,
        "downloaded bytes differ from what the upstream sent"
    );

    // Both ways at once: the echo streams the request back.
    let response = client
        .post(gw.localhost_url("/_sim/echo"))
        .body(reqwest::Body::wrap(PatternBody::new(1 << 20)))
        .send()
        .await
        .unwrap();
    let body = response.bytes().await.unwrap();
    let mut checker = PatternChecker::default();
    checker.feed(&body);
    assert_eq!((checker.seen, checker.ok), (1 << 20, true));

    // A recorded EWS response arrives byte for byte.
    let fixture = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/exchange/ews-getitem-message/response.xml"),
    )
    .unwrap();
    let request = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/exchange/ews-getitem-message/request.xml"),
    )
    .unwrap();
    let response = client
        .post(gw.localhost_url("/EWS/Exchange.asmx"))
        .header("content-type", "text/xml; charset=utf-8")
        .body(request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), fixture);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_passes_bodies_byte_identical_both_ways() {
    round_trip(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_passes_bodies_byte_identical_both_ways() {
    round_trip(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_and_affinity_passes_untouched() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "").await;
    let client = support::client(&gw.ca(), false);
    let response = client
        .get(gw.localhost_url("/_sim/headers"))
        .header("connection", "x-private-hop")
        .header("x-private-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("x-anchormailbox", "alex.seller@contoso.example")
        .header("x-preferserveraffinity", "true")
        .header("cookie", "X-BackEndOverrideCookie=mbx1~1942")
        .header("x-forwarded-for", "203.0.113.66")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: BTreeMap<String, Vec<String>> = response.json().await.unwrap();
    for gone in ["x-private-hop", "keep-alive", "proxy-authorization"] {
        assert!(!seen.contains_key(gone), "{gone} reached the upstream");
    }
    assert_eq!(seen["x-anchormailbox"], ["alex.seller@contoso.example"]);
    assert_eq!(seen["x-preferserveraffinity"], ["true"]);
    assert_eq!(seen["cookie"], ["X-BackEndOverrideCookie=mbx1~1942"]);
    // An untrusted client cannot forge its origin.
    assert_eq!(seen["x-forwarded-for"], ["127.0.0.1"]);
    assert_eq!(seen["x-forwarded-proto"], ["https"]);
    assert!(seen["x-forwarded-host"][0].starts_with("localhost:"));
    // Host is the upstream's own authority.
    assert_eq!(seen["host"], [sim.addr().to_string()]);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_and_autodiscover_routes_reach_their_upstreams() {
    let ews = support::simulator("ews").await;
    let graph = support::simulator("graph").await;
    let extra = format!("[upstreams]\ngraph = \"{}\"\n", graph.url());
    let gw = support::gateway(&ews.url(), &extra).await;
    let client = support::client(&gw.ca(), true);
    let who = |r: &reqwest::Response| r.headers()["x-sim-id"].to_str().unwrap().to_owned();
    let r = client
        .get(gw.localhost_url("/v1.0/me/mailFolders/inbox/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), who(&r)), (200, "graph".into()));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["value"][0]["subject"], "Quote for 40 seats");
    let r = client
        .post(gw.localhost_url("/Autodiscover/Autodiscover.xml"))
        .body("<Autodiscover/>")
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), who(&r)), (200, "ews".into()));
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "").await;
    let client = support::client(&gw.ca(), false);
    for _ in 0..2000 {
        let r = client
            .get(gw.localhost_url("/v1.0/me/messages"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let metrics = &gw.gateway.proxy().metrics;
    metrics.refresh_reuse_ratio();
    assert!(
        metrics.reuse_ratio() >= 0.999,
        "reuse {} over {} requests, {} connects",
        metrics.reuse_ratio(),
        metrics.upstream_requests.get(),
        metrics.upstream_connects_pooled.get()
    );
    assert_eq!(sim.stats().connections, 1);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_declared_body_gets_413_before_reaching_upstream() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "[limits]\nmax_request_body = \"1MiB\"\n").await;
    let client = support::client(&gw.ca(), false);
    // Only the head is sent: the answer must come without the body.
    let tcp = tokio::net::TcpStream::connect(gw.gateway.proxy_addr())
        .await
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in trackgate::tls::read_certs(&gw.ca()).unwrap() {
        roots.add(cert).unwrap();
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(
            b"POST /_sim/sink HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2097152\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = vec![0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    assert_eq!(sim.stats().requests, 0);
    // A chunked body that grows past the limit is cut off too.
    let r = client
        .post(gw.localhost_url("/_sim/sink"))
        .body(reqwest::Body::wrap(support::Unsized(PatternBody::new(
            3 << 20,
        ))))
        .send()
        .await;
    assert_eq!(r.unwrap().status(), 413);
    // The upstream saw the request start and its body break off, never more than the limit
    // and never a whole body.
    let stats = support::wait_for(
        std::time::Duration::from_secs(10),
        "the upstream to see the body break off",
        async || {
            let s = sim.stats();
            (s.broken_bodies == 1).then_some(s)
        },
    )
    .await;
    assert!(stats.broken_body_bytes <= 1 << 20, "{stats:?}");
    assert_eq!(stats.body_bytes_received, 0, "{stats:?}");
    gw.gateway.shutdown().await;
}
