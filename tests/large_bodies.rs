use std::time::Duration;

use trackgate::simulate::{PatternBody, PatternChecker};

use crate::support::{self, GatewayProcess};

const GIB: u64 = 1 << 30;
/// Flat memory: the gateway process may not grow anywhere near the size of the body.
const RSS_LIMIT: u64 = 96 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gib_streams_each_way_with_flat_memory() {
    let sim = support::simulator("sim").await;
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(
        dir.path(),
        &format!(
            "[upstreams]\news = \"{}\"\n[limits]\nmax_request_body = \"2GiB\"\n",
            sim.url()
        ),
    );
    let gw = GatewayProcess::start(&config);
    let client = support::client(&dir.path().join("data/certs/dev-ca.pem"), false);
    let base = gw.proxy.replace("127.0.0.1", "localhost");
    let baseline = gw.rss();

    let response = client
        .post(format!("{base}/_sim/sink"))
        .body(reqwest::Body::wrap(support::Unsized(PatternBody::new(GIB))))
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .unwrap();
    let verdict: serde_json::Value = response.json().await.unwrap();
    assert_eq!(verdict["bytes"], GIB);
    assert_eq!(verdict["pattern_ok"], true);

    let mut response = client
        .get(format!("{base}/_sim/bytes?n={GIB}"))
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .unwrap();
    let mut checker = PatternChecker::default();
    while let Some(chunk) = response.chunk().await.unwrap() {
        checker.feed(&chunk);
    }
    assert_eq!((checker.seen, checker.ok), (GIB, true));

    let peak = gw.peak_rss();
    eprintln!(
        "gateway RSS: baseline {} KiB, peak {} KiB",
        baseline >> 10,
        peak >> 10
    );
    assert!(
        peak < RSS_LIMIT,
        "gateway peaked at {} MiB while streaming 1 GiB",
        peak >> 20
    );
}
