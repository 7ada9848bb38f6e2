use std::future::Future as _;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support;

/// Reads until the peer closes; returns what arrived.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut out))
        .await
        .expect("connection closed in time")
        .ok();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_client_is_disconnected_by_the_timeout() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(
        &sim.url(),
        "[listener]\nplaintext = true\n[limits]\nheader_read_timeout = \"1s\"\n",
    )
    .await;
    let mut stream = TcpStream::connect(gw.gateway.proxy_addr()).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /v1.0/me/messages HTTP/1.1\r\nHost: mail\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut stream, Duration::from_secs(10)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed too early: {elapsed:?}"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(sim.stats().requests, 0);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_502_quickly() {
    let closed_port = support::closed_port();
    let gw = support::gateway(&format!("http://127.0.0.1:{closed_port}"), "").await;
    let client = support::client(&gw.ca(), false);
    let started = Instant::now();
    let r = client
        .get(gw.localhost_url("/EWS/Exchange.asmx"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-trackgate-error"], "upstream_unreachable");
    let body = r.text().await.unwrap();
    assert!(
        !body.contains(&closed_port.to_string()),
        "internal detail leaked: {body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gives_504_at_the_configured_timeout() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "[upstreams]\nheader_timeout = \"600ms\"\n").await;
    let client = support::client(&gw.ca(), false);
    let started = Instant::now();
    let r = client
        .get(gw.localhost_url("/v1.0/me/messages"))
        .header("x-sim-fault", "latency=5s")
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(r.status(), 504);
    assert!(
        elapsed >= Duration::from_millis(550) && elapsed < Duration::from_secs(4),
        "504 after {elapsed:?}"
    );
    gw.gateway.shutdown().await;
}

const STREAMING_REQUEST: &str = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><GetStreamingEvents xmlns="http://schemas.microsoft.com/exchange/services/2006/messages"><SubscriptionIds><SubscriptionId xmlns="http://schemas.microsoft.com/exchange/services/2006/types">sub1</SubscriptionId></SubscriptionIds><ConnectionTimeout>30</ConnectionTimeout></GetStreamingEvents></s:Body></s:Envelope>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_ews_stream_outlives_the_normal_idle_timeout() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(
        &sim.url(),
        "[upstreams]\nidle_timeout = \"300ms\"\nstreaming_idle_timeout = \"5s\"\n",
    )
    .await;
    let client = support::client(&gw.ca(), false);
    let started = Instant::now();
    let mut r = client
        .post(gw.localhost_url("/EWS/Exchange.asmx"))
        .header("content-type", "text/xml; charset=utf-8")
        .header("x-sim-stream", "chunks=4; interval=700ms")
        .body(STREAMING_REQUEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut envelopes = 0;
    while let Some(chunk) = r.chunk().await.unwrap() {
        envelopes += String::from_utf8_lossy(&chunk)
            .matches("GetStreamingEventsResponse>")
            .count();
    }
    assert_eq!(envelopes, 4);
    assert!(started.elapsed() >= Duration::from_millis(2000));
    // The endless stream was not copied for inspection (and so held no memory for its life).
    let captures = &gw.gateway.proxy().metrics.captures;
    assert_eq!(captures.skipped_streams.get(), 1);
    assert_eq!(captures.truncated.get(), 0);

    // The same silence on an ordinary route is cut at the ordinary idle timeout.
    let mut r = client
        .get(gw.localhost_url("/_sim/stream?chunks=4&interval_ms=700"))
        .send()
        .await
        .unwrap();
    let mut outcome = Ok(());
    loop {
        match r.chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    assert!(
        outcome.is_err(),
        "an idle ordinary response was not cut off"
    );
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_mid_body_gets_408() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(
        &sim.url(),
        "[listener]\nplaintext = true\n[limits]\nbody_read_timeout = \"500ms\"\n",
    )
    .await;
    let mut stream = TcpStream::connect(gw.gateway.proxy_addr()).await.unwrap();
    stream
        .write_all(b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n\x00\x01\x02\x03\x04\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut stream, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(
        &sim.url(),
        "[listener]\nplaintext = true\n[limits]\nmax_connections = 2\n",
    )
    .await;
    let request = b"GET /v1.0/me/messages HTTP/1.1\r\nHost: mail\r\n\r\n";
    let mut first = TcpStream::connect(gw.gateway.proxy_addr()).await.unwrap();
    let mut second = TcpStream::connect(gw.gateway.proxy_addr()).await.unwrap();
    for s in [&mut first, &mut second] {
        s.write_all(request).await.unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
    }
    // The third is queued in the backlog: its request gets no answer while both stay open.
    let mut third = TcpStream::connect(gw.gateway.proxy_addr()).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buf = [0u8; 12];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read_exact(&mut buf)).await;
    assert!(early.is_err(), "a connection beyond the limit was served");
    assert_eq!(gw.gateway.proxy().metrics.connections_active.get(), 2);
    drop(first);
    tokio::time::timeout(Duration::from_secs(10), third.read_exact(&mut buf))
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    gw.gateway.shutdown().await;
}

/// A body that sends `chunks` pattern chunks `gap` apart: a slow but steady upload.
struct SlowUpload {
    left: usize,
    gap: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for SlowUpload {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(self.timer.as_mut().poll(cx));
        let next = tokio::time::Instant::now() + self.gap;
        self.timer.as_mut().reset(next);
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(
            &[0, 1, 2, 3],
        )))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_not_an_upstream_timeout() {
    let sim = support::simulator("sim").await;
    // The upload takes ~1.2 s, longer than the header timeout; the upstream answers at once after.
    let gw = support::gateway(&sim.url(), "[upstreams]\nheader_timeout = \"500ms\"\n").await;
    let client = support::client(&gw.ca(), false);
    let body = SlowUpload {
        left: 4,
        gap: Duration::from_millis(400),
        timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
    };
    let r = client
        .post(gw.localhost_url("/_sim/sink"))
        .body(reqwest::Body::wrap(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let verdict: serde_json::Value = r.json().await.unwrap();
    assert_eq!(verdict["bytes"], 16);
    gw.gateway.shutdown().await;
}
