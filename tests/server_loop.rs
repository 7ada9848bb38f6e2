//! The gateway's own HTTP/1.1 serving loop (`proxy::h1_server`) and its hand-off to hyper, as a
//! client on a raw socket sees them: answers framed and headed as hyper framed them, requests
//! it does not serve itself answered in order among those it does, and a client that hangs up
//! cancelling its exchange upstream.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::passthrough::answering_upstream;
use crate::support;

async fn gateway_before(upstream: &str) -> (support::TestGateway, TcpStream) {
    let gw = support::gateway(upstream, "[listener]\nplaintext = true\n").await;
    let stream = TcpStream::connect(gw.gateway.proxy_addr()).await.unwrap();
    (gw, stream)
}

/// Requests the gateway's own loop handed to hyper so far.
async fn handoffs(gw: &support::TestGateway) -> u64 {
    support::gauge(gw, "trackgate_http1_handoffs_total").await
}

/// Reads a chunked body to its last chunk (no trailers) and returns what it carried.
async fn read_chunked(stream: &mut TcpStream) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            line.extend(read_exactly(stream, 1).await);
        }
        let size = std::str::from_utf8(&line[..line.len() - 2]).unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        let chunk = read_exactly(stream, size + 2).await;
        assert!(chunk.ends_with(b"\r\n"), "a chunk ends with a line end");
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// Reads exactly `len` bytes, or panics after 10 s.
async fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut bytes))
        .await
        .expect("the bytes within 10 s")
        .expect("the bytes before the end");
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_keep_their_reason_phrase_and_length_and_gain_a_date() {
    let (upstream, _) =
        answering_upstream(b"HTTP/1.1 440 Login Timeout\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok")
            .await;
    let (gw, mut stream) = gateway_before(&format!("http://{upstream}")).await;
    for round in 0..2 {
        stream
            .write_all(b"GET /owa/ HTTP/1.1\r\nHost: mail\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = support::read_response(&mut stream)
            .await
            .expect("an answer");
        assert!(
            head.starts_with("HTTP/1.1 440 Login Timeout\r\n"),
            "{round}: {head}"
        );
        assert!(head.contains("\r\ncontent-length: 2\r\n"), "{head}");
        assert!(head.contains("\r\nx-a: 1\r\n"), "{head}");
        assert!(
            head.contains("\r\ndate: ") && head.contains(" GMT\r\n"),
            "{head}"
        );
        assert_eq!(body, b"ok");
    }
    assert_eq!(handoffs(&gw).await, 0, "the loop served both");
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_unknown_length_is_chunked_as_it_came() {
    let (upstream, _) = answering_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nDate: Mon, 07 Dec 2026 00:00:00 GMT\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let (gw, mut stream) = gateway_before(&format!("http://{upstream}")).await;
    for _ in 0..2 {
        stream
            .write_all(b"GET /EWS/Exchange.asmx HTTP/1.1\r\nHost: mail\r\n\r\n")
            .await
            .unwrap();
        let head = support::read_head(&mut stream).await.expect("a head");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{head}"
        );
        assert_eq!(
            head.matches("date: ").count(),
            1,
            "the upstream's date only: {head}"
        );
        assert_eq!(read_chunked(&mut stream).await, b"hello world");
    }
    assert_eq!(handoffs(&gw).await, 0);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answer_keeps_its_length_and_sends_no_body() {
    let (upstream, _) = answering_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n").await;
    let (gw, mut stream) = gateway_before(&format!("http://{upstream}")).await;
    stream
        .write_all(b"HEAD /EWS/Exchange.asmx HTTP/1.1\r\nHost: mail\r\n\r\n")
        .await
        .unwrap();
    let head = support::read_head(&mut stream).await.expect("a head");
    assert!(head.contains("\r\ncontent-length: 42\r\n"), "{head}");
    // Nothing follows the head: the next answer on the connection starts right after it.
    stream
        .write_all(b"HEAD /EWS/Exchange.asmx HTTP/1.1\r\nHost: mail\r\n\r\n")
        .await
        .unwrap();
    let next = support::read_head(&mut stream)
        .await
        .expect("a second head");
    assert!(next.starts_with("HTTP/1.1 200 OK\r\n"), "{next}");
    assert_eq!(handoffs(&gw).await, 0);
    gw.gateway.shutdown().await;
}

/// A 304 has no body, and no length of 0 is made up for it (a cache would merge that into the
/// stored answer); the upstream's length of the full answer goes too, as hyper drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_modified_answer_carries_no_length() {
    let (upstream, _) = answering_upstream(
        b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\n\r\n",
    )
    .await;
    let (gw, mut stream) = gateway_before(&format!("http://{upstream}")).await;
    for _ in 0..2 {
        stream
            .write_all(b"GET /owa/logo.png HTTP/1.1\r\nHost: mail\r\nIf-None-Match: \"v1\"\r\n\r\n")
            .await
            .unwrap();
        let head = support::read_head(&mut stream).await.expect("a head");
        assert!(head.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{head}");
        assert!(head.contains("\r\netag: \"v1\"\r\n"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
    }
    assert_eq!(handoffs(&gw).await, 0, "the loop served both");
    gw.gateway.shutdown().await;
}

/// Requests sent in one write and then the client's end of sending (`nc -N`): every request
/// still waiting behind another is answered. The client's end is read as a hang-up only
/// once no request of its is buffered (hyper and nginx alike take it for one then, and cancel
/// the last request's exchange), so only the last may go unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_before_a_half_close_are_answered() {
    let sim = support::simulator("sim").await;
    let (gw, mut stream) = gateway_before(&sim.url()).await;
    let get = |n: usize| format!("GET /_sim/bytes?n={n} HTTP/1.1\r\nHost: mail\r\n\r\n");
    stream
        .write_all([get(12), get(34), get(56)].concat().as_bytes())
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut lengths = Vec::new();
    while let Some((head, body)) = support::read_response(&mut stream).await {
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        lengths.push(body.len());
    }
    assert!(
        lengths == [12, 34] || lengths == [12, 34, 56],
        "answered in order, all but perhaps the last: {lengths:?}"
    );
    assert_eq!(handoffs(&gw).await, 0, "the loop served them");
    gw.gateway.shutdown().await;
}

/// Requests the loop serves and requests it hands to hyper (a chunked body, HTTP/1.0), sent in
/// one write, are answered in order; once the connection has idled, the loop serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_served_and_handed_off_are_answered_in_order() {
    let sim = support::simulator("sim").await;
    let (gw, mut stream) = gateway_before(&sim.url()).await;
    let get = |n: usize| format!("GET /_sim/bytes?n={n} HTTP/1.1\r\nHost: mail\r\n\r\n");
    let pipelined = [
        get(11),
        "POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_owned(),
        get(33),
        "POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nContent-Length: 5\r\n\r\nabcde".to_owned(),
        get(55),
        "GET /_sim/bytes?n=66 HTTP/1.0\r\nHost: mail\r\nConnection: keep-alive\r\n\r\n".to_owned(),
        get(77),
    ]
    .concat();
    stream.write_all(pipelined.as_bytes()).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..7 {
        let (head, body) = support::read_response(&mut stream)
            .await
            .expect("an answer");
        assert!(head.contains(" 200 "), "{head}");
        answers.push(body);
    }
    let lengths: Vec<usize> = answers.iter().map(Vec::len).collect();
    assert_eq!([lengths[0], lengths[2], lengths[4]], [11, 33, 55]);
    assert_eq!([lengths[5], lengths[6]], [66, 77]);
    for (answer, bytes) in [(&answers[1], 3), (&answers[3], 5)] {
        let seen: serde_json::Value = serde_json::from_slice(answer).unwrap();
        assert_eq!(seen["bytes"], bytes, "{seen}");
    }
    assert_eq!(sim.stats().requests, 7);
    // The chunked body is hyper's: one hand-off, and hyper serves the rest of the write.
    assert_eq!(handoffs(&gw).await, 1);
    support::wait_for(
        Duration::from_secs(10),
        "the connection parked",
        async || (support::gauge(&gw, "trackgate_connections_parked").await == 1).then_some(()),
    )
    .await;
    stream.write_all(get(88).as_bytes()).await.unwrap();
    let (_, body) = support::read_response(&mut stream)
        .await
        .expect("an answer");
    assert_eq!(body.len(), 88);
    assert_eq!(handoffs(&gw).await, 1, "the loop's again");
    gw.gateway.shutdown().await;
}

/// A client that hangs up while its answer is on the way: the exchange is dropped, and the
/// upstream connection with it (the upstream sees its end), as hyper's server did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_cancels_its_exchange_upstream() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (head_in, head_seen) = tokio::sync::oneshot::channel();
    let (end_in, end_seen) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.ends_with(b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the head first");
            seen.extend_from_slice(&buf[..n]);
        }
        let _ = head_in.send(());
        // Never answers; reads until the gateway lets the connection go.
        let ended = matches!(conn.read(&mut buf).await, Ok(0) | Err(_));
        let _ = end_in.send(ended);
    });
    let (gw, mut stream) = gateway_before(&format!("http://{upstream}")).await;
    stream
        .write_all(b"GET /EWS/Exchange.asmx HTTP/1.1\r\nHost: mail\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), head_seen)
        .await
        .expect("the request upstream within 10 s")
        .unwrap();
    drop(stream);
    let ended = tokio::time::timeout(Duration::from_secs(10), end_seen)
        .await
        .expect("the upstream connection let go within 10 s, long before any timeout")
        .unwrap();
    assert!(ended);
    assert_eq!(handoffs(&gw).await, 0, "the loop served it");
    gw.gateway.shutdown().await;
}
