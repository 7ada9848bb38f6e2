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
async fn a_slow_header_client_gets_408_then_the_close() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(
        &sim.url(),
        "[listener]\nplaintext = true\n[limits]\nheader_read_timeout = \"1s\"\n",
    )
    .await;
    // Timed from before the connection exists: the gateway's clock starts later, and timers
    // never fire early.
    let started = Instant::now();
    let mut stream = TcpStream::connect(gw.gateway.proxy_addr()).await.unwrap();
    stream
        .write_all(b"GET /v1.0/me/messages HTTP/1.1\r\nHost: mail\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut stream, Duration::from_secs(10)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1),
        "closed too early: {elapsed:?}"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nx-trackgate-error: client_timeout\r\n"),
        "{text:?}"
    );
    assert!(text.ends_with("Request Timeout\n"), "a body: {text:?}");
    assert_eq!(sim.stats().requests, 0);
    let metrics = support::get_text(&gw.admin("/metrics")).await;
    assert!(
        metrics.contains("trackgate_proxy_errors_total{kind=\"client_timeout\"} 1"),
        "{metrics}"
    );
    gw.gateway.shutdown().await;
}

/// Blank lines before a request are allowed, but they begin a head as far as its timeout goes:
/// a client that sends only those, a line at a time within the limit, is closed with 408 once
/// `header_read_timeout` has passed since the first, not kept for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blank_lines_alone_get_408_once_the_head_timeout_passes() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(
        &sim.url(),
        "[listener]\nplaintext = true\n[limits]\nheader_read_timeout = \"2s\"\n",
    )
    .await;
    let mut stream = TcpStream::connect(gw.gateway.proxy_addr()).await.unwrap();
    // A request first, so the connection is served by then; then blank lines every 500 ms
    // (each well within the limit) until the gateway closes.
    stream
        .write_all(b"GET /_sim/bytes?n=3 HTTP/1.1\r\nHost: mail\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = support::read_response(&mut stream)
        .await
        .expect("an answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut lines = 0;
    // Timed from before the first blank line: the gateway's deadline starts later.
    let started = Instant::now();
    while stream.write_all(b"\r\n").await.is_ok() && lines < 40 {
        lines += 1;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(500), stream.peek(&mut byte)).await {
            Err(_) => {}
            Ok(_) => break, // the answer (or the end) is there
        }
    }
    let answer = read_to_close(&mut stream, Duration::from_secs(10)).await;
    let elapsed = started.elapsed();
    assert!(lines < 40, "still open after 20 s of blank lines");
    assert!(
        elapsed >= Duration::from_secs(2),
        "closed too early: {elapsed:?}"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert_eq!(sim.stats().requests, 1);
    gw.gateway.shutdown().await;
}

/// A TLS client that completes its handshake and then sends nothing is closed after
/// `header_read_timeout`, as a plaintext one is: a silent client holds no connection slot for
/// ever. (Plaintext waits for a first byte under that limit before serving; TLS goes straight
/// to serving, where only the park's limit closes it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_silent_after_its_handshake_is_closed_at_the_timeout() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "[limits]\nheader_read_timeout = \"1s\"\n").await;
    let started = Instant::now();
    let mut stream = support::tls_stream(gw.gateway.proxy_addr(), &gw.ca()).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "still open 20 s after the handshake");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1),
        "closed too early: {elapsed:?}"
    );
    assert!(out.is_empty(), "nothing begun, nothing answered: {out:?}");
    assert_eq!(sim.stats().requests, 0);
    gw.gateway.shutdown().await;
}

/// The slow-head timeout counts from each head's first piece: a connection whose heads all
/// come in pieces, each finished within the timeout, is served every time, for as long as it
/// lives (a timer left running from an earlier head would cut a later one short).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_in_pieces_each_within_the_timeout_are_all_served() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(
        &sim.url(),
        "[listener]\nplaintext = true\n[limits]\nheader_read_timeout = \"1s\"\n",
    )
    .await;
    let mut stream = TcpStream::connect(gw.gateway.proxy_addr()).await.unwrap();
    for _ in 0..3 {
        stream
            .write_all(b"GET /v1.0/me/messages HTTP/1.1\r\nHost: mail\r\n")
            .await
            .unwrap();
        // What is tested: a slow client, the rest of its head 600 ms later. Three such heads
        // on one connection span the timeout almost twice.
        tokio::time::sleep(Duration::from_millis(600)).await;
        stream.write_all(b"\r\n").await.unwrap();
        read_answer(&mut stream).await;
    }
    assert_eq!(sim.stats().requests, 3);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_502_without_waiting_for_a_timeout() {
    let closed_port = support::closed_port();
    // Timeouts far beyond the hang guard: a 502 within it can only be the refused connection.
    let gw = support::gateway(
        &format!("http://127.0.0.1:{closed_port}"),
        "[upstreams]\nconnect_timeout = \"120s\"\nheader_timeout = \"120s\"\n",
    )
    .await;
    let client = support::client(&gw.ca(), false);
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        client.get(gw.localhost_url("/EWS/Exchange.asmx")).send(),
    )
    .await
    .expect("answered before any timeout could fire (hang guard)")
    .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-trackgate-error"], "upstream_unreachable");
    let body = r.text().await.unwrap();
    assert!(
        !body.contains(&closed_port.to_string()),
        "internal detail leaked: {body}"
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
    // The upstream answers 200 after 5 s: a 504 means the gateway gave up first, and timers
    // never fire early, so not before the configured 600 ms.
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["x-trackgate-error"], "upstream_timeout");
    assert!(
        elapsed >= Duration::from_millis(600),
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
async fn a_body_trickled_below_the_minimum_rate_gets_408() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(
        &sim.url(),
        "[listener]\nplaintext = true\n[limits]\nbody_read_timeout = \"1s\"\nbody_min_rate = \"1KiB\"\n",
    )
    .await;
    let mut stream = TcpStream::connect(gw.gateway.proxy_addr()).await.unwrap();
    stream
        .write_all(b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    // A byte every 100 ms: never silent for the 1 s idle timeout, far below 1 KiB/s. The
    // writer stops when the gateway answers (or after the whole body, which would be a bug).
    let (mut read, mut write) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100_000 {
            if write.write_all(b"x").await.is_err() {
                return;
            }
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.tick().await;
            tick.tick().await;
        }
    });
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut answer))
        .await
        .expect("answered before the whole body")
        .ok();
    trickle.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(
        text.to_ascii_lowercase()
            .contains("x-trackgate-error: client_timeout"),
        "{text:?}"
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
        read_answer(s).await;
    }
    // The third is queued in the backlog: its request gets no answer while both stay open.
    let metrics = &gw.gateway.proxy().metrics;
    let accepted = metrics.connections_accepted.get();
    let mut third = TcpStream::connect(gw.gateway.proxy_addr()).await.unwrap();
    third.write_all(request).await.unwrap();
    // The gateway keeps serving the two it holds, and never takes the third meanwhile.
    for _ in 0..3 {
        second.write_all(request).await.unwrap();
        read_answer(&mut second).await;
    }
    assert_eq!(metrics.connections_accepted.get(), accepted, "not accepted");
    assert_eq!(metrics.connections_active.get(), 2);
    let mut buf = [0u8; 12];
    assert!(
        matches!(third.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a connection beyond the limit was served"
    );
    drop(first);
    tokio::time::timeout(Duration::from_secs(10), third.read_exact(&mut buf))
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    gw.gateway.shutdown().await;
}

/// Reads one whole answer of the simulator's `/v1.0/me/messages` (a `Content-Length` body).
async fn read_answer(stream: &mut TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
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

/// A client connection for the send-timeout tests: a receive buffer kept small, so the
/// gateway's writes wait for room as soon as the client stops reading, not after megabytes.
async fn small_window_client(gw: &support::TestGateway) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(gw.gateway.proxy_addr()).await.unwrap()
}

const BIG_ANSWER: usize = 64 << 20;

/// Asks for a large answer (the gateway's `send_timeout` being 1 s), reads none of it, and
/// checks that the gateway counts a send timeout no sooner than the limit and closes the
/// connection before the whole answer came: what the buffers held arrives, then the end (or a
/// reset).
async fn ask_and_stop_reading(
    gw: &support::TestGateway,
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
) {
    stream
        .write_all(
            format!("GET /_sim/bytes?n={BIG_ANSWER} HTTP/1.1\r\nHost: mail\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    // No write can wait before the request has arrived.
    let asked = Instant::now();
    let counted = "trackgate_proxy_errors_total{kind=\"client_send_timeout\"} 1";
    support::wait_for(Duration::from_secs(20), "the send timeout", async || {
        let metrics = support::get_text(&gw.admin("/metrics")).await;
        metrics.contains(counted).then_some(())
    })
    .await;
    assert!(
        asked.elapsed() >= Duration::from_secs(1),
        "closed before a write could have waited 1 s: {:?}",
        asked.elapsed()
    );
    let mut received = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("the connection ends once the buffers are read")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    assert!(
        received < BIG_ANSWER,
        "the whole answer arrived: {received}"
    );
}

/// A client that asks for a large answer and then stops reading it is closed once a write has
/// waited `send_timeout` for room (nginx's `send_timeout`), and the upstream connection it
/// leaves half read is not handed to the next client, who is served whole. (One proxy thread,
/// so the next client meets the same pool.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_at_the_send_timeout() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(
        &sim.url(),
        "[listener]\nplaintext = true\n[limits]\nsend_timeout = \"1s\"\n[runtime]\nworker_threads = 1\n",
    )
    .await;
    let mut stream = small_window_client(&gw).await;
    ask_and_stop_reading(&gw, &mut stream).await;
    let mut next = TcpStream::connect(gw.gateway.proxy_addr()).await.unwrap();
    next.write_all(b"GET /_sim/bytes?n=16 HTTP/1.1\r\nHost: mail\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = support::read_response(&mut next).await.expect("an answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body.len(), 16);
    gw.gateway.shutdown().await;
}

/// The same over TLS, where rustls takes writes into a buffer of its own while the socket is
/// full: what counts is what the socket took, so the client is closed all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_stops_reading_is_closed_at_the_send_timeout() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "[limits]\nsend_timeout = \"1s\"\n").await;
    let mut stream = support::tls_stream(gw.gateway.proxy_addr(), &gw.ca()).await;
    ask_and_stop_reading(&gw, &mut stream).await;
    gw.gateway.shutdown().await;
}

/// A client that reads its answer slowly, pausing for less than `send_timeout` each time the
/// gateway's writes have filled every buffer, gets all of it: the timeout bounds one wait for
/// room, not the answer. (With pauses longer than the limit the same client is cut off.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_that_keeps_reading_gets_its_whole_answer() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(
        &sim.url(),
        "[listener]\nplaintext = true\n[limits]\nsend_timeout = \"3s\"\n",
    )
    .await;
    const ANSWER: usize = 24 << 20;
    const PAUSE: Duration = Duration::from_secs(1);
    let mut stream = small_window_client(&gw).await;
    stream
        .write_all(format!("GET /_sim/bytes?n={ANSWER} HTTP/1.1\r\nHost: mail\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let head = support::read_head(&mut stream)
        .await
        .expect("an answer head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut received = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    let mut since_pause = 0usize;
    while received < ANSWER {
        // Each pause outlasts the time the gateway needs to fill the buffers again, so its
        // writes wait for room during most of it: five pauses, longer than the limit in all.
        if since_pause >= 4 << 20 {
            since_pause = 0;
            tokio::time::sleep(PAUSE).await;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("bytes within 10 s")
            .expect("the connection stays open");
        assert!(n > 0, "closed after {received} bytes");
        received += n;
        since_pause += n;
    }
    assert_eq!(received, ANSWER);
    assert!(started.elapsed() >= PAUSE * 5);
    let metrics = support::get_text(&gw.admin("/metrics")).await;
    assert!(!metrics.contains("client_send_timeout"), "{metrics}");
    gw.gateway.shutdown().await;
}
