use std::sync::Mutex;

use bytes::Bytes;
use http::Version;
use http::header::{self, HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::answer::{chunk_size, keeps_alive, parse_head};
use super::request::{encode_head, head_len};
use super::*;
use crate::proxy::body::{BoxError, empty, full};
use crate::proxy::headers::{HeadFacts, declared_length};

/// Where the tests' answers park their connections.
#[derive(Default)]
struct Parked(Mutex<Vec<Connection>>);

impl Park for Parked {
    fn park(self: Arc<Self>, connection: Connection) {
        self.0.lock().unwrap().push(connection);
    }
}

impl Parked {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A loopback upstream for one request: reads until what it received ends with `until`,
/// answers `answer` (a byte at a time when `trickle`), then closes when `close`, else waits
/// for the client to. Gives back what it received.
async fn upstream(
    until: &'static [u8],
    answer: &'static [u8],
    trickle: bool,
    close: bool,
) -> (Connection, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let served = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        while !received.ends_with(until) {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "request cut short: {:?}",
                String::from_utf8_lossy(&received)
            );
            received.extend_from_slice(&buf[..n]);
        }
        if trickle {
            for byte in answer {
                tcp.write_all(&[*byte]).await.unwrap();
                tcp.flush().await.unwrap();
            }
        } else {
            tcp.write_all(answer).await.unwrap();
        }
        if !close {
            let _ = tcp.read(&mut buf).await;
        }
        received
    });
    let tcp = TcpStream::connect(address).await.unwrap();
    (Connection::new(Io::Plain(tcp)), served)
}

fn request(method: Method, body: ProxyBody) -> Request<ProxyBody> {
    Request::builder()
        .method(method)
        .uri("/EWS/Exchange.asmx?x=1")
        .header(header::HOST, "upstream")
        .body(body)
        .unwrap()
}

/// How long the tests' exchanges wait for an answer head.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// An exchange, given a deadline: an end of head or body missed fails instead of hanging.
async fn send(
    connection: Connection,
    request: Request<ProxyBody>,
    parked: &Arc<Parked>,
) -> Result<Response<Answer>, ExchangeError> {
    send_within(connection, request, parked, HEAD_TIMEOUT).await
}

/// The same, the exchange waiting at most `head_timeout` for the answer's head.
async fn send_within(
    connection: Connection,
    request: Request<ProxyBody>,
    parked: &Arc<Parked>,
    head_timeout: std::time::Duration,
) -> Result<Response<Answer>, ExchangeError> {
    let exchange = exchange(connection, request, parked.clone(), head_timeout);
    tokio::time::timeout(HEAD_TIMEOUT * 2, exchange)
        .await
        .expect("the exchange neither answered nor timed out")
        .map_err(Failure::into_error)
}

#[tokio::test]
async fn a_body_of_unknown_length_goes_chunked_and_its_trailers_stay_behind() {
    let (connection, served) = upstream(
        b"0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        false,
        false,
    )
    .await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", HeaderValue::from_static("10"));
    let frames = vec![
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"hello"))),
        Ok(Frame::data(Bytes::from_static(b"world"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let parked = Arc::new(Parked::default());
    let response = send(
        connection,
        request(Method::POST, body.boxed_unsync()),
        &parked,
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        parked.count(),
        1,
        "a finished exchange parks its connection"
    );
    drop(parked);
    let received = String::from_utf8(served.await.unwrap()).unwrap();
    assert_eq!(
        received,
        "POST /EWS/Exchange.asmx?x=1 HTTP/1.1\r\nhost: upstream\r\ntransfer-encoding: chunked\r\n\r\n\
         5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n",
        "the trailers end the body and are not sent on"
    );
}

/// What the upstream received for `request`, which it answers with an empty 200.
async fn received_for(until: &'static [u8], request: Request<ProxyBody>) -> String {
    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let (connection, served) = upstream(until, answer, false, false).await;
    let parked = Arc::new(Parked::default());
    send(connection, request, &parked).await.unwrap();
    drop(parked);
    String::from_utf8(served.await.unwrap()).unwrap()
}

#[tokio::test]
async fn a_known_length_is_declared_and_a_get_without_body_declares_none() {
    assert_eq!(
        received_for(b"abc", request(Method::PUT, full("abc"))).await,
        "PUT /EWS/Exchange.asmx?x=1 HTTP/1.1\r\nhost: upstream\r\ncontent-length: 3\r\n\r\nabc"
    );
    assert_eq!(
        received_for(b"\r\n\r\n", request(Method::GET, empty())).await,
        "GET /EWS/Exchange.asmx?x=1 HTTP/1.1\r\nhost: upstream\r\n\r\n"
    );
}

#[tokio::test]
async fn informational_answers_are_passed_over_and_continue_is_signalled() {
    let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
        HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (connection, _served) = upstream(b"\r\n\r\n", answer, true, false).await;
    let seen = Arc::new(Notify::new());
    let mut get = request(Method::GET, empty());
    get.extensions_mut().insert(ContinueSignal(seen.clone()));
    let parked = Arc::new(Parked::default());
    let response = send(connection, get, &parked).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The 100 left a permit: this resolves on its first poll.
    assert!(
        futures_util::FutureExt::now_or_never(seen.notified()).is_some(),
        "100 Continue was not signalled"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    assert_eq!(parked.count(), 1);
}

#[tokio::test]
async fn a_chunked_answer_is_read_across_any_split_with_its_trailers() {
    let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
        6;ext=1\r\nhello \r\n5\r\nworld\r\n0\r\nx-sum: 11\r\n\r\n";
    for trickle in [false, true] {
        let (connection, _served) = upstream(b"\r\n\r\n", answer, trickle, false).await;
        let parked = Arc::new(Parked::default());
        let response = send(connection, request(Method::GET, empty()), &parked)
            .await
            .unwrap();
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-sum"], "11");
        assert_eq!(&collected.to_bytes()[..], b"hello world");
        assert_eq!(parked.count(), 1, "trickled: {trickle}");
    }
}

/// The answer to a bodiless `method` request from an upstream that answers `answer`, and where
/// its connection parks.
async fn head_of(method: Method, answer: &'static [u8]) -> (Response<Answer>, Arc<Parked>) {
    let (connection, _served) = upstream(b"\r\n\r\n", answer, false, false).await;
    let parked = Arc::new(Parked::default());
    let response = send(connection, request(method, empty()), &parked)
        .await
        .unwrap();
    (response, parked)
}

#[tokio::test]
async fn an_answer_to_head_has_no_body_whatever_its_length_says() {
    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n";
    let (response, parked) = head_of(Method::HEAD, answer).await;
    assert!(response.body().is_end_stream());
    assert_eq!(response.headers()[header::CONTENT_LENGTH], "1000");
    assert_eq!(parked.count(), 1);
}

#[tokio::test]
async fn a_reason_phrase_of_its_own_is_kept_and_a_standard_one_is_not_repeated() {
    let answer = b"HTTP/1.1 440 Login Timeout\r\ncontent-length: 0\r\n\r\n";
    let (response, _) = head_of(Method::GET, answer).await;
    assert_eq!(response.status().as_u16(), 440);
    let reason = response.extensions().get::<hyper::ext::ReasonPhrase>();
    assert_eq!(reason.map(|r| r.as_bytes()), Some(&b"Login Timeout"[..]));
    let standard = parse_head(&Bytes::from_static(b"HTTP/1.1 404 Not Found\r\n\r\n")).unwrap();
    assert!(
        standard.reason.is_none(),
        "hyper writes the standard one itself"
    );
    let unusual = parse_head(&Bytes::from_static(b"HTTP/1.1 404 Nope\r\n\r\n")).unwrap();
    assert_eq!(
        unusual.reason.map(|r| r.as_bytes().to_vec()),
        Some(b"Nope".to_vec())
    );
}

/// A body whose frames come from `frames` and that says when it has been read to its end.
fn watched_body(frames: tokio::sync::mpsc::Receiver<Bytes>, ended: Arc<Notify>) -> ProxyBody {
    let stream = futures_util::stream::unfold((frames, ended), |(mut frames, ended)| async move {
        match frames.recv().await {
            Some(data) => Some((Ok::<_, BoxError>(Frame::data(data)), (frames, ended))),
            None => {
                ended.notify_one();
                None
            }
        }
    });
    http_body_util::StreamBody::new(stream).boxed_unsync()
}

#[tokio::test]
async fn the_rest_of_a_body_answered_early_is_read_to_its_end_and_its_gate_opened() {
    // The upstream answers on the head alone, as nginx's `return` or IIS's 401 does.
    let answer = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
    let (connection, _served) = upstream(b"\r\n\r\n", answer, false, false).await;
    let (more, frames) = tokio::sync::mpsc::channel(4);
    let ended = Arc::new(Notify::new());
    let gate = Arc::new(Notify::new());
    let mut post = request(Method::POST, watched_body(frames, ended.clone()));
    post.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
    post.extensions_mut().insert(ContinueSignal(gate.clone()));
    let parked = Arc::new(Parked::default());
    let response = send(connection, post, &parked).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.body().is_end_stream());
    drop(response);
    assert!(
        futures_util::FutureExt::now_or_never(gate.notified()).is_some(),
        "the gate stayed shut: the client's next request would wait out its timeout"
    );
    // The client's body comes after the answer; it is read (and dropped) to its end.
    more.send(Bytes::from_static(b"0123456789")).await.unwrap();
    drop(more);
    tokio::time::timeout(std::time::Duration::from_secs(30), ended.notified())
        .await
        .expect("the rest of the body was not read");
    assert_eq!(parked.count(), 0, "part of the request never went out");
}

#[tokio::test]
async fn an_http2_clients_body_answered_early_is_dropped_not_read() {
    let answer = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
    let (connection, _served) = upstream(b"\r\n\r\n", answer, false, false).await;
    let (more, frames) = tokio::sync::mpsc::channel(4);
    let mut post = request(Method::POST, watched_body(frames, Arc::new(Notify::new())));
    post.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
    post.extensions_mut().insert(Http2Client);
    let parked = Arc::new(Parked::default());
    let response = send(connection, post, &parked).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    drop(response);
    // hyper resets the stream once the body is dropped; nothing waits on the client.
    tokio::time::timeout(std::time::Duration::from_secs(30), more.closed())
        .await
        .expect("the body was kept to be read");
}

/// A GET through an upstream that answers `answer` (a byte at a time when `trickle`) and
/// closes when `close`: the body (or what failed) and how many connections were parked.
async fn get(
    answer: &'static [u8],
    trickle: bool,
    close: bool,
) -> (Result<Bytes, ExchangeError>, usize) {
    let (connection, _served) = upstream(b"\r\n\r\n", answer, trickle, close).await;
    let parked = Arc::new(Parked::default());
    let body = match send(connection, request(Method::GET, empty()), &parked).await {
        Ok(response) => response.into_body().collect().await.map(|c| c.to_bytes()),
        Err(error) => Err(error),
    };
    (body, parked.count())
}

#[tokio::test]
async fn blank_lines_before_the_status_line_are_passed_over() {
    let answer = b"\r\n\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (body, parked) = get(answer, true, false).await;
    assert_eq!(&body.unwrap()[..], b"ok");
    assert_eq!(parked, 1);
}

#[tokio::test]
async fn an_answer_without_length_runs_to_the_close_and_is_not_parked() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\n\r\nabc"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nabc",
        b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nabc",
    ] {
        let (body, parked) = get(answer, false, true).await;
        assert_eq!(&body.unwrap()[..], b"abc");
        assert_eq!(parked, 0, "{}", String::from_utf8_lossy(answer));
    }
}

#[tokio::test]
async fn bytes_past_the_answer_keep_its_connection_out_of_the_pool() {
    let (body, parked) = get(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
        false,
        true,
    )
    .await;
    assert_eq!(&body.unwrap()[..], b"ok");
    assert_eq!(parked, 0);
}

#[tokio::test]
async fn malformed_answers_are_errors_not_guesses() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"[..],
        b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nbad field\r\n\r\n",
    ] {
        let (body, parked) = get(answer, false, true).await;
        assert!(body.is_err(), "{}", String::from_utf8_lossy(answer));
        assert_eq!(parked, 0);
    }
}

#[tokio::test]
async fn an_upstream_that_closes_without_a_word_is_told_apart() {
    let (connection, _served) = upstream(b"\r\n\r\n", b"", false, true).await;
    let parked = Arc::new(Parked::default());
    let error = send(connection, request(Method::GET, empty()), &parked)
        .await
        .err();
    assert!(
        matches!(error, Some(ExchangeError::ClosedBeforeAnswer)),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_upstream_silent_past_the_head_timeout_fails_the_exchange() {
    let (connection, _served) = upstream(b"\r\n\r\n", b"", false, false).await;
    let timeout = std::time::Duration::from_millis(200);
    let started = std::time::Instant::now();
    let parked = Arc::new(Parked::default());
    let failed = send_within(connection, request(Method::GET, empty()), &parked, timeout)
        .await
        .map(|_| ());
    assert!(
        matches!(failed, Err(ExchangeError::HeadTimeout(waited)) if waited == timeout),
        "{failed:?}"
    );
    assert!(
        started.elapsed() >= timeout,
        "fired early: {:?}",
        started.elapsed()
    );
}

/// The head timer is kept from one exchange to the next on a connection: the second exchange
/// gets its whole timeout, counted from its own request, not what was left of the first's.
#[tokio::test]
async fn a_connections_next_exchange_gets_the_whole_head_timeout() {
    let timeout = std::time::Duration::from_millis(600);
    let answer_late_by = std::time::Duration::from_millis(400);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let _served = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        for late in [false, true] {
            let mut received = Vec::new();
            while !received.ends_with(b"\r\n\r\n") {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "request cut short");
                received.extend_from_slice(&buf[..n]);
            }
            if late {
                // What is tested: an upstream slow to answer, within the timeout.
                tokio::time::sleep(answer_late_by).await;
            }
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
        }
        let _ = tcp.read(&mut buf).await;
    });
    let connection = Connection::new(Io::Plain(TcpStream::connect(address).await.unwrap()));
    let parked = Arc::new(Parked::default());
    let first = send_within(connection, request(Method::GET, empty()), &parked, timeout)
        .await
        .unwrap();
    first.into_body().collect().await.unwrap();
    let connection = parked
        .0
        .lock()
        .unwrap()
        .pop()
        .expect("the first answer parked it");
    // Parked for most of the first exchange's timeout: its deadline would now come during
    // the second exchange's wait.
    tokio::time::sleep(answer_late_by).await;
    let second = send_within(connection, request(Method::GET, empty()), &parked, timeout).await;
    let body = second
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"ok");
}

#[tokio::test]
async fn a_parked_connection_the_upstream_closed_is_not_reusable() {
    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let (connection, served) = upstream(b"\r\n\r\n", answer, false, true).await;
    let parked = Arc::new(Parked::default());
    send(connection, request(Method::GET, empty()), &parked)
        .await
        .unwrap();
    let mut connection = parked.0.lock().unwrap().pop().unwrap();
    served.await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while connection.is_reusable() {
        assert!(
            std::time::Instant::now() < deadline,
            "the close was never noticed"
        );
        tokio::task::yield_now().await;
    }
}

#[test]
fn a_head_is_encoded_into_exactly_the_room_it_was_given() {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::HOST,
        HeaderValue::from_static("mail.contoso.example"),
    );
    headers.append("x-a", HeaderValue::from_static("1"));
    headers.append("x-a", HeaderValue::from_static(""));
    for (method, target) in [
        (Method::GET, "/"),
        (Method::POST, "/EWS/Exchange.asmx?x=%3D"),
    ] {
        let head = encode_head(&method, target, &headers);
        assert_eq!(head.len(), head_len(&method, target, &headers));
        assert!(head.ends_with(b"x-a: \r\n\r\n"));
    }
}

#[test]
fn chunk_sizes_are_hex_with_optional_extensions() {
    assert_eq!(chunk_size(b"1A").unwrap(), 26);
    assert_eq!(chunk_size(b"0").unwrap(), 0);
    assert_eq!(chunk_size(b"10;name=value").unwrap(), 16);
    assert_eq!(chunk_size(b"ff \t;x").unwrap(), 255);
    assert_eq!(chunk_size(b"000000000000000000001f").unwrap(), 31);
    assert_eq!(chunk_size(b"ffffffffffffffff").unwrap(), u64::MAX);
    for bad in [
        &b""[..],
        b"x1",
        b"+1",
        b"1x",
        b"5 junk",
        b"11111111111111111",
    ] {
        assert!(chunk_size(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn declared_lengths_must_agree() {
    let mut headers = HeaderMap::new();
    headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
    assert_eq!(declared_length(&headers), Some(5));
    headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("5, 5"));
    assert_eq!(declared_length(&headers), Some(5));
    headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
    assert_eq!(declared_length(&headers), None);
    let mut signed = HeaderMap::new();
    signed.append(header::CONTENT_LENGTH, HeaderValue::from_static("+5"));
    assert_eq!(declared_length(&signed), None);
    for (value, length) in [
        ("0", Some(0)),
        (" 7 ,7", Some(7)),
        ("7,8", None),
        ("7,", None),
        ("", None),
        ("18446744073709551615", Some(u64::MAX)),
        ("18446744073709551616", None),
    ] {
        let mut one = HeaderMap::new();
        one.append(header::CONTENT_LENGTH, HeaderValue::from_static(value));
        assert_eq!(declared_length(&one), length, "{value:?}");
    }
}

#[test]
fn an_http_10_answer_keeps_alive_only_when_it_says_so() {
    let mut headers = HeaderMap::new();
    let facts = |headers: &HeaderMap| HeadFacts::of(headers);
    assert!(keeps_alive(Version::HTTP_11, &facts(&headers)));
    assert!(!keeps_alive(Version::HTTP_10, &facts(&headers)));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
    assert!(keeps_alive(Version::HTTP_10, &facts(&headers)));
    headers.insert(header::CONNECTION, HeaderValue::from_static("foo, Close"));
    assert!(!keeps_alive(Version::HTTP_11, &facts(&headers)));
}

#[test]
fn answer_header_values_share_the_head() {
    let head = Bytes::from_static(b"HTTP/1.1 201 Created\r\nX-A: one\r\nx-a: two\r\n\r\n");
    let parsed = parse_head(&head).unwrap();
    assert_eq!(parsed.status, StatusCode::CREATED);
    let values: Vec<_> = parsed.headers.get_all("x-a").iter().collect();
    assert_eq!(values, ["one", "two"]);
    let within = head.as_ptr_range();
    for value in values {
        assert!(
            within.contains(&value.as_bytes().as_ptr()),
            "{value:?} is a copy, not a slice of the head"
        );
    }
    assert!(parse_head(&Bytes::from_static(b"HTTP/1.1 2000 Odd\r\n\r\n")).is_err());
    assert!(
        parse_head(&Bytes::from_static(
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n"
        ))
        .is_err()
    );
}

/// The TLS transport end to end: an upload read in small pieces arrives whole, its answer
/// follows, and the connection is parked. (It does not make the last flush wait: on loopback
/// the socket takes the records as fast as they come, so the bug that flush mends could not be
/// shown here without timing.)
#[tokio::test]
async fn an_upload_over_tls_arrives_whole_and_its_connection_is_parked() {
    const SIZE: usize = 8 << 20;
    crate::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = crate::tls::generate_dev_certs(dir.path()).unwrap();
    let server = crate::tls::server_config(&certs.cert, &certs.key, &[]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 1024];
        let head_end = loop {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "request head cut short");
            received.extend_from_slice(&buf[..n]);
            if let Some(end) = crate::proxy::framing::head_end(&received, 0) {
                break end;
            }
        };
        let head = String::from_utf8(received[..head_end].to_vec()).unwrap();
        assert!(
            head.contains(&format!("content-length: {SIZE}\r\n")),
            "{head}"
        );
        let mut body = received.len() - head_end;
        let mut all_sent = received[head_end..].iter().all(|&b| b == b'x');
        while body < SIZE {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "upload cut short at {body} bytes");
            all_sent &= buf[..n].iter().all(|&b| b == b'x');
            body += n;
            tokio::task::yield_now().await;
        }
        assert!(all_sent, "the upload arrived changed");
        tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        let _ = tls.read(&mut buf).await;
        body
    });
    let client = crate::tls::upstream_client_config(Some(&certs.ca)).unwrap();
    let tcp = TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .unwrap();
    let parked = Arc::new(Parked::default());
    let upload = full(Bytes::from(vec![b'x'; SIZE]));
    let exchange = send(
        Connection::new(Io::Tls(Box::new(tls))),
        request(Method::PUT, upload),
        &parked,
    );
    let response = tokio::time::timeout(std::time::Duration::from_secs(60), exchange)
        .await
        .expect("the upload never got its answer")
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    assert_eq!(parked.count(), 1);
    drop(parked);
    assert_eq!(served.await.unwrap(), SIZE);
}
