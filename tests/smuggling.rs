use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support;

/// Sends raw bytes, reads until the gateway closes the connection.
async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("gateway closed the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

async fn assert_rejected(raw: &[u8]) {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "[listener]\nplaintext = true\n").await;
    let answer = exchange(gw.gateway.proxy_addr(), raw).await;
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "expected 400, got {answer:?}"
    );
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "more than one response: {answer:?}"
    );
    assert_eq!(
        sim.stats().requests,
        0,
        "a smuggling attempt reached the upstream"
    );
    // Answered like every response the gateway makes itself.
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nx-trackgate-error: bad_request\r\n")
            && lower.contains("\r\nconnection: close\r\n"),
        "{answer:?}"
    );
    assert!(
        answer.ends_with("\r\n\r\nBad Request\n"),
        "a body: {answer:?}"
    );
    let metrics = support::get_text(&gw.admin("/metrics")).await;
    assert!(
        metrics.contains("trackgate_proxy_errors_total{kind=\"bad_request\"} 1"),
        "counted once: {metrics}"
    );
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_rejected() {
    assert_rejected(
        b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /_sim/whoami HTTP/1.1\r\nHost: mail\r\n\r\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_before_content_length_is_rejected() {
    assert_rejected(
        b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /_sim/whoami HTTP/1.1\r\nHost: mail\r\n\r\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codings_other_than_chunked_are_rejected() {
    assert_rejected(b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n").await;
    assert_rejected(b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nTransfer-Encoding: gzip\r\n\r\n")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_are_rejected() {
    assert_rejected(b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_before_the_colon_is_rejected() {
    assert_rejected(
        b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lengths_and_codings_a_back_end_could_read_otherwise_are_rejected() {
    for raw in [
        &b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nContent-Length: 5x\r\n\r\nhello"[..],
        b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nContent-Length: -5\r\n\r\nhello",
        b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nContent-Length: 5, 6\r\n\r\nhello!",
        b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
        b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    ] {
        assert_rejected(raw).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_length_twice_is_one_length() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "[listener]\nplaintext = true\n").await;
    let answer = exchange(
        gw.gateway.proxy_addr(),
        b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nContent-Length: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_a_good_request_leaves_the_good_answer_whole() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "[listener]\nplaintext = true\n").await;
    let answer = exchange(
        gw.gateway.proxy_addr(),
        b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nContent-Length: 2\r\n\r\nabPOST /_sim/sink HTTP/1.1\r\nHost: mail\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer:?}");
    assert!(
        answer.contains("HTTP/1.1 400 Bad Request\r\n"),
        "{answer:?}"
    );
    assert!(answer.ends_with("Bad Request\n"), "{answer:?}");
    assert_eq!(
        sim.stats().requests,
        1,
        "only the good request went upstream"
    );
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_well_framed_requests_still_work() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "[listener]\nplaintext = true\n").await;
    let answer = exchange(
        gw.gateway.proxy_addr(),
        b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n\x00\x01\x02\r\n0\r\n\r\nPOST /_sim/sink HTTP/1.1\r\nHost: mail\r\nContent-Length: 2\r\nConnection: close\r\n\r\n\x00\x01",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_headers_get_431_like_every_gateway_error() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(
        &sim.url(),
        "[listener]\nplaintext = true\n[limits]\nmax_header_count = 20\n",
    )
    .await;
    let mut raw = b"GET /v1.0/me/messages HTTP/1.1\r\nHost: mail\r\n".to_vec();
    for i in 0..40 {
        raw.extend_from_slice(format!("X-Filler-{i}: {i}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let answer = exchange(gw.gateway.proxy_addr(), &raw).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert!(
        answer.contains("x-trackgate-error: header_too_large\r\n")
            && answer.ends_with("Request Header Fields Too Large\n"),
        "{answer:?}"
    );
    assert_eq!(sim.stats().requests, 0);
    let metrics = support::get_text(&gw.admin("/metrics")).await;
    assert!(
        metrics.contains("trackgate_proxy_errors_total{kind=\"header_too_large\"} 1"),
        "{metrics}"
    );
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_the_size_limit_gets_431_like_every_gateway_error() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(
        &sim.url(),
        "[listener]\nplaintext = true\n[limits]\nmax_header_bytes = \"8KiB\"\n",
    )
    .await;
    let mut raw = b"GET /v1.0/me/messages HTTP/1.1\r\nHost: mail\r\nX-Big: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 12 * 1024));
    raw.extend_from_slice(b"\r\n\r\n");
    let answer = exchange(gw.gateway.proxy_addr(), &raw).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert!(
        answer.contains("x-trackgate-error: header_too_large\r\n"),
        "{answer:?}"
    );
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer:?}");
    assert_eq!(sim.stats().requests, 0);
    gw.gateway.shutdown().await;
}
