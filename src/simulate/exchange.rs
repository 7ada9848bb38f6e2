//! The Exchange simulator: a real HTTP server (HTTP/1.1 and HTTP/2, plain or TLS) that answers
//! EWS by operation and Graph or Autodiscover by route from recorded fixtures, demands Basic,
//! bearer or a connection-bound NTLM handshake, and injects latency, throttling, server-busy
//! faults, resets and endless streaming responses on command. Used by `serve`'s embedded
//! default, the tests and the benchmarks; it stands in for the Exchange we cannot run here.
//!
//! Control: `POST /_sim/faults` (JSON [`Faults`]) or a per-request `x-sim-fault` header such as
//! `latency=200ms; status=503; retry-after=2.5; server-busy; reset`.

use std::collections::BTreeMap;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::auth::{NtlmState, Verifier};
use super::ews::Caller;
use super::fixtures::FixtureSet;
use super::mailbox::Store;
use super::soap;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type SimBody = UnsyncBoxBody<Bytes, BoxError>;

/// Largest SOAP request the simulator reads.
const MAX_SOAP_REQUEST: usize = 8 << 20;

/// Authentication the simulator demands.
#[derive(Debug, Clone, Default)]
pub enum AuthMode {
    #[default]
    None,
    Basic {
        user: String,
        password: String,
    },
    /// Any non-empty bearer token; a JWT's `upn`, `preferred_username` or `unique_name` claim
    /// names the caller (claims are read, the signature is not checked).
    Bearer,
    /// A three-leg NTLMv2 handshake, verified against the store's accounts and
    /// [`SimulatorOptions::passwords`], that only succeeds when all legs use one connection;
    /// afterwards the connection is authenticated.
    Ntlm,
}

/// Faults to inject. Set for all requests with [`ExchangeSimulator::set_faults`] or
/// `POST /_sim/faults`, or per request with the `x-sim-fault` header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Delay before answering.
    pub latency_ms: u64,
    /// Answer with this status (429 or 503 for throttling) instead of the fixture.
    pub status: Option<u16>,
    /// `Retry-After` value sent with `status` (may be fractional, as Graph sends it); with
    /// `server_busy`, the seconds of `BackOffMilliseconds`.
    pub retry_after: Option<String>,
    /// Answer EWS with an `ErrorServerBusy` SOAP fault.
    pub server_busy: bool,
    /// Drop the connection without answering.
    pub reset: bool,
}

impl Faults {
    /// Parses the `x-sim-fault` header.
    pub fn parse_header(text: &str) -> Faults {
        let mut f = Faults::default();
        for part in text.split(';') {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => (part.trim(), ""),
            };
            match key {
                "latency" => {
                    f.latency_ms = humantime::parse_duration(value)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0)
                }
                "status" => f.status = value.parse().ok(),
                "retry-after" => f.retry_after = Some(value.to_owned()),
                "server-busy" => f.server_busy = true,
                "reset" => f.reset = true,
                _ => {}
            }
        }
        f
    }

    fn merged(&self, other: &Faults) -> Faults {
        Faults {
            latency_ms: self.latency_ms.max(other.latency_ms),
            status: other.status.or(self.status),
            retry_after: other.retry_after.clone().or(self.retry_after.clone()),
            server_busy: self.server_busy || other.server_busy,
            reset: self.reset || other.reset,
        }
    }
}

/// Settings for one simulator instance.
#[derive(Clone)]
pub struct SimulatorOptions {
    /// Sent back as `x-sim-id`, so tests can tell simulators apart.
    pub name: String,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub auth: AuthMode,
    pub fixtures: FixtureSet,
    pub faults: Faults,
    /// Interval between notifications of a streaming (`GetStreamingEvents`) response.
    pub stream_interval: Duration,
    /// The mailbox store: with one, EWS and Graph are served from it by meaning; without,
    /// every answer is the recorded fixture for the operation or route.
    pub store: Option<Arc<Store>>,
    /// Extra NTLM and Basic logons (`DOMAIN\user` or a UPN, password) beyond the store's.
    pub passwords: Vec<(String, String)>,
}

impl SimulatorOptions {
    pub fn new(name: impl Into<String>, fixtures: FixtureSet) -> SimulatorOptions {
        SimulatorOptions {
            name: name.into(),
            tls: None,
            auth: AuthMode::None,
            fixtures,
            faults: Faults::default(),
            stream_interval: Duration::from_secs(1),
            store: None,
            passwords: Vec::new(),
        }
    }

    /// Serves EWS and Graph from `store` instead of the fixtures.
    pub fn with_store(mut self, store: Arc<Store>) -> SimulatorOptions {
        self.store = Some(store);
        self
    }
}

/// Counters a test can read.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimStats {
    pub connections: u64,
    pub requests: u64,
    pub ntlm_authenticated: u64,
    /// Bytes of request bodies that arrived whole.
    pub body_bytes_received: u64,
    /// `/_sim/sink` bodies that broke off before their end, and the bytes they had brought.
    pub broken_bodies: u64,
    pub broken_body_bytes: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    ntlm_authenticated: AtomicU64,
    body_bytes_received: AtomicU64,
    broken_bodies: AtomicU64,
    broken_body_bytes: AtomicU64,
}

struct Shared {
    options: SimulatorOptions,
    faults: Mutex<Faults>,
    counters: Counters,
}

/// A running simulator.
pub struct ExchangeSimulator {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ExchangeSimulator {
    /// Binds `listen` (port 0 picks a free one) and starts serving.
    pub async fn start(
        listen: SocketAddr,
        options: SimulatorOptions,
    ) -> std::io::Result<ExchangeSimulator> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let tls = options.tls.is_some();
        let shared = Arc::new(Shared {
            faults: Mutex::new(options.faults.clone()),
            options,
            counters: Counters::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stopped));
        Ok(ExchangeSimulator {
            addr,
            tls,
            shared,
            stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn set_faults(&self, faults: Faults) {
        if let Ok(mut f) = self.shared.faults.lock() {
            *f = faults;
        }
    }

    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Stops accepting and closes open connections.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

impl Shared {
    fn stats(&self) -> SimStats {
        let c = &self.counters;
        SimStats {
            connections: c.connections.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            ntlm_authenticated: c.ntlm_authenticated.load(Ordering::Relaxed),
            body_bytes_received: c.body_bytes_received.load(Ordering::Relaxed),
            broken_bodies: c.broken_bodies.load(Ordering::Relaxed),
            broken_body_bytes: c.broken_body_bytes.load(Ordering::Relaxed),
        }
    }

    fn faults(&self) -> Faults {
        self.faults.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let acceptor = shared
        .options
        .tls
        .clone()
        .map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, _) = tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let _ = tcp.set_nodelay(true);
        let conn_id = shared.counters.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let state = Arc::new(ConnState {
                id: conn_id,
                ntlm: Mutex::new(NtlmState::None),
            });
            let service = hyper::service::service_fn(move |req| {
                let (shared, state) = (shared.clone(), state.clone());
                async move { handle(&shared, &state, req).await }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new());
            builder.http2().timer(TokioTimer::new());
            match acceptor {
                Some(acceptor) => {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let builder = if h2 {
                        builder.http2_only()
                    } else {
                        builder.http1_only()
                    };
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    tokio::select! { _ = conn => {}, _ = stopped.changed() => {} }
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    tokio::select! { _ = conn => {}, _ = stopped.changed() => {} }
                }
            }
        });
    }
}

struct ConnState {
    id: u64,
    ntlm: Mutex<NtlmState>,
}

#[derive(Debug, thiserror::Error)]
#[error("simulated connection reset")]
struct Reset;

async fn handle(
    shared: &Shared,
    conn: &ConnState,
    req: Request<Incoming>,
) -> Result<Response<SimBody>, Reset> {
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    // Like IIS: an HTTP/1.1 request without Host is refused.
    if req.version() == http::Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "Bad Request - Invalid Hostname\n",
        ));
    }
    let faults = match req
        .headers()
        .get("x-sim-fault")
        .and_then(|v| v.to_str().ok())
    {
        Some(text) => shared.faults().merged(&Faults::parse_header(text)),
        None => shared.faults(),
    };
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if faults.reset {
        return Err(Reset);
    }
    // The request target as received, so tests can check origin form.
    let target = HeaderValue::from_str(&req.uri().to_string()).ok();
    let mut response = respond(shared, conn, req, &faults).await;
    if let Some(target) = target {
        response.headers_mut().insert("x-sim-target", target);
    }
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&shared.options.name) {
        h.insert("x-sim-id", v);
    }
    h.insert("x-sim-conn", HeaderValue::from(conn.id));
    Ok(response)
}

async fn respond(
    shared: &Shared,
    conn: &ConnState,
    req: Request<Incoming>,
    faults: &Faults,
) -> Response<SimBody> {
    if let Some(status) = faults.status {
        let mut r = text(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "throttled\n",
        );
        if let Some(v) = faults
            .retry_after
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let path = req.uri().path().to_owned();
    if let Some(control) = path.strip_prefix("/_sim/") {
        return control_route(shared, conn, control, req).await;
    }
    let verifier = Verifier {
        mode: &shared.options.auth,
        store: shared.options.store.as_deref(),
        passwords: &shared.options.passwords,
        ntlm_authenticated: &shared.counters.ntlm_authenticated,
    };
    let user = match verifier.check(&conn.ntlm, &req) {
        Ok(user) => user,
        Err(challenge) => {
            // Read a body the client already sent so the connection stays usable for the next
            // leg; with `Expect: 100-continue` nothing was sent, and reading would invite it.
            if !req.headers().contains_key(header::EXPECT) {
                let _ = Limited::new(req.into_body(), MAX_SOAP_REQUEST)
                    .collect()
                    .await;
            }
            return *challenge;
        }
    };
    let caller = Caller {
        logon: user.clone(),
        anchor: req
            .headers()
            .get("x-anchormailbox")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let is_ews = path.eq_ignore_ascii_case("/ews/exchange.asmx");
    let mut response = if is_ews && req.method() == Method::POST {
        ews(shared, req, faults, &caller).await
    } else if let Some(store) = shared.options.store.clone().filter(|_| is_graph(&path)) {
        super::graph::serve(&store, req, &caller).await
    } else {
        // Like Exchange, read the request before answering: an answer sent while the client is
        // still sending would cut its body short.
        let method = req.method().clone();
        if !req.headers().contains_key(header::EXPECT) {
            let _ = Limited::new(req.into_body(), MAX_SOAP_REQUEST)
                .collect()
                .await;
        }
        match shared.options.fixtures.for_route(method.as_str(), &path) {
            Some(f) => fixture_response(f.status, &f.content_type, &f.headers, f.body.clone()),
            None => {
                let mut r = full(
                    StatusCode::NOT_FOUND,
                    r#"{"error":{"code":"ResourceNotFound","message":"No fixture answers this route."}}"#,
                );
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
        }
    };
    if let Some(v) = user.and_then(|u| HeaderValue::from_str(&u).ok()) {
        response.headers_mut().insert("x-sim-user", v);
    }
    response
}

/// The SHA-256 of a body the store answered with, hex: clients behind a proxy compare it with
/// the bytes they received to prove nothing was changed on the way.
pub fn body_digest(body: &[u8]) -> HeaderValue {
    use sha2::Digest as _;
    let hex: String = sha2::Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    HeaderValue::from_str(&hex).unwrap_or(HeaderValue::from_static("-"))
}

/// Graph's versioned paths, which the store answers when there is one.
fn is_graph(path: &str) -> bool {
    let lower = path.get(..6).map(str::to_ascii_lowercase);
    matches!(lower.as_deref(), Some("/v1.0/" | "/beta/"))
}

async fn ews(
    shared: &Shared,
    req: Request<Incoming>,
    faults: &Faults,
    caller: &Caller,
) -> Response<SimBody> {
    let stream_spec = req
        .headers()
        .get("x-sim-stream")
        .and_then(|v| v.to_str().ok())
        .map(StreamSpec::parse);
    let body = match Limited::new(req.into_body(), MAX_SOAP_REQUEST)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "request too large\n"),
    };
    shared
        .counters
        .body_bytes_received
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    let Some(operation) = soap::operation(&body) else {
        return text(StatusCode::BAD_REQUEST, "not a SOAP envelope\n");
    };
    if faults.server_busy {
        // `retry_after` (seconds) sets the back-off asked for; Exchange's usual is tens of seconds.
        let back_off = faults
            .retry_after
            .as_deref()
            .and_then(|s| s.parse::<f64>().ok())
            .map_or(30_000, |secs| (secs * 1000.0) as u64);
        return soap_fault(
            "ErrorServerBusy",
            "The server cannot service this request right now. Try again later.",
            Some(back_off),
        );
    }
    if let Some(store) = &shared.options.store {
        if operation == "GetStreamingEvents" {
            return super::ews::stream::respond(store, &body, stream_spec);
        }
        let answer = super::ews::serve(store, &body, caller);
        let digest = body_digest(answer.body.as_bytes());
        let mut r = full(
            StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK),
            answer.body,
        );
        r.headers_mut().insert("x-sim-body-sha256", digest);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/xml; charset=utf-8"),
        );
        return r;
    }
    if operation == "GetStreamingEvents" {
        let spec = stream_spec.unwrap_or(StreamSpec {
            chunks: None,
            interval: shared.options.stream_interval,
        });
        let body = Notifications::new(spec);
        let mut r = Response::new(body.boxed_unsync());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/xml; charset=utf-8"),
        );
        return r;
    }
    match shared.options.fixtures.for_operation(&operation) {
        Some(f) => fixture_response(f.status, &f.content_type, &f.headers, f.body.clone()),
        None => soap_fault(
            "ErrorInvalidRequest",
            "The simulator has no fixture for this operation.",
            None,
        ),
    }
}

fn fixture_response(
    status: u16,
    content_type: &str,
    headers: &[(String, String)],
    body: Bytes,
) -> Response<SimBody> {
    let mut r = Response::new(Full::new(body).map_err(|n| match n {}).boxed_unsync());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.append(n, v);
        }
    }
    r
}

fn soap_fault(code: &str, message: &str, back_off_ms: Option<u64>) -> Response<SimBody> {
    let answer = super::ews::fault(code, message, back_off_ms);
    let mut r = full(StatusCode::INTERNAL_SERVER_ERROR, answer.body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    r
}

async fn control_route(
    shared: &Shared,
    conn: &ConnState,
    route: &str,
    req: Request<Incoming>,
) -> Response<SimBody> {
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let number = |key: &str| query.get(key).and_then(|v| v.parse::<u64>().ok());
    match (req.method().clone(), route) {
        (Method::GET, "bytes") => {
            let n = number("n").unwrap_or(0);
            let mut r = Response::new(PatternBody::new(n).boxed_unsync());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        (Method::POST, "sink") => {
            let mut body = req.into_body();
            let mut checker = PatternChecker::default();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            checker.feed(data);
                        }
                    }
                    Err(_) => {
                        shared
                            .counters
                            .broken_bodies
                            .fetch_add(1, Ordering::Relaxed);
                        shared
                            .counters
                            .broken_body_bytes
                            .fetch_add(checker.seen, Ordering::Relaxed);
                        return text(StatusCode::BAD_REQUEST, "body broke off\n");
                    }
                }
            }
            shared
                .counters
                .body_bytes_received
                .fetch_add(checker.seen, Ordering::Relaxed);
            json(&serde_json::json!({"bytes": checker.seen, "pattern_ok": checker.ok}))
        }
        (Method::POST, "echo") => {
            let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
            let mut r = Response::new(
                req.into_body()
                    .map_err(|e| Box::new(e) as BoxError)
                    .boxed_unsync(),
            );
            if let Some(ct) = content_type {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            r
        }
        (Method::GET, "headers") => {
            let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (name, value) in req.headers() {
                map.entry(name.as_str().to_owned())
                    .or_default()
                    .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
            }
            json(&map)
        }
        (Method::GET, "stream") => {
            let spec = StreamSpec {
                chunks: number("chunks"),
                interval: Duration::from_millis(number("interval_ms").unwrap_or(1000)),
            };
            Response::new(Notifications::new(spec).boxed_unsync())
        }
        (Method::GET, "whoami") => {
            let user = match conn.ntlm.lock().map(|s| s.clone()) {
                Ok(NtlmState::Authenticated(u)) => Some(u),
                _ => None,
            };
            json(&serde_json::json!({"conn": conn.id, "user": user}))
        }
        (Method::GET, "stats") => json(&shared.stats()),
        (Method::POST, "deliver") => match &shared.options.store {
            Some(store) => {
                let is_mime = req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|t| t.starts_with("message/rfc822"));
                match Limited::new(req.into_body(), MAX_SOAP_REQUEST)
                    .collect()
                    .await
                {
                    Ok(body) => deliver(store, &body.to_bytes(), is_mime),
                    Err(_) => text(StatusCode::PAYLOAD_TOO_LARGE, "message too large\n"),
                }
            }
            None => text(
                StatusCode::NOT_FOUND,
                "this simulator serves fixtures and has no mailbox store\n",
            ),
        },
        (Method::POST, "faults") => {
            let body = Limited::new(req.into_body(), 64 * 1024).collect().await;
            let parsed = body
                .ok()
                .and_then(|b| serde_json::from_slice::<Faults>(&b.to_bytes()).ok());
            match parsed {
                Some(f) => {
                    if let Ok(mut current) = shared.faults.lock() {
                        *current = f;
                    }
                    text(StatusCode::NO_CONTENT, "")
                }
                None => text(StatusCode::BAD_REQUEST, "expected a JSON Faults object\n"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "unknown simulator control route\n"),
    }
}

/// `POST /_sim/deliver`: mail from outside lands in the recipients' Inboxes, with no client
/// connected. The body is an RFC 822 message (`Content-Type: message/rfc822`) or JSON
/// `{"from", "to": [], "cc": [], "subject", "body", "message_id", "in_reply_to", "folder"}`
/// (`folder`: filed there by a server-side rule).
fn deliver(store: &Store, body: &[u8], is_mime: bool) -> Response<SimBody> {
    let (item, folder) = if is_mime {
        (super::mailbox::Item::from_mime(body), None)
    } else {
        match serde_json::from_slice::<super::mailbox::Delivery>(body) {
            Ok(d) => {
                let folder = d.folder.clone();
                (d.into_item(), folder)
            }
            Err(e) => {
                let mut r = full(
                    StatusCode::BAD_REQUEST,
                    format!("expected a delivery: {e}\n"),
                );
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                return r;
            }
        }
    };
    let delivered = store.lock().deliver_filed(&item, folder.as_deref());
    match delivered {
        Ok(items) if !items.is_empty() => {
            let inner = store.lock();
            let ids: Vec<serde_json::Value> = items
                .iter()
                .map(|(m, key)| {
                    serde_json::json!({
                        "mailbox": inner.mailbox(*m).address,
                        "item_id": inner.item(*m, *key).id,
                    })
                })
                .collect();
            json(&serde_json::json!({ "delivered": ids }))
        }
        Ok(_) => text(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no recipient has a mailbox in this store\n",
        ),
        Err(e) => {
            let mut r = full(StatusCode::INSUFFICIENT_STORAGE, format!("{e}\n"));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        }
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<SimBody> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<SimBody> {
    if body.is_empty() {
        let mut r = Response::new(Empty::new().map_err(|n| match n {}).boxed_unsync());
        *r.status_mut() = status;
        return r;
    }
    let mut r = full(status, body);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn json(value: &impl Serialize) -> Response<SimBody> {
    let mut r = full(
        StatusCode::OK,
        serde_json::to_vec(value).unwrap_or_default(),
    );
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

// === test bodies ===

/// Period of the test byte pattern: byte `i` of a pattern body is `i % 251`.
const PERIOD: usize = 251;
const CHUNK: usize = PERIOD * 256;

fn pattern_block() -> Bytes {
    static BLOCK: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BLOCK
        .get_or_init(|| {
            Bytes::from(
                (0..CHUNK + PERIOD)
                    .map(|i| (i % PERIOD) as u8)
                    .collect::<Vec<_>>(),
            )
        })
        .clone()
}

/// A body of `len` pattern bytes, produced lazily in 64 KiB slices of one shared block.
#[derive(Debug)]
pub struct PatternBody {
    remaining: u64,
    offset: u64,
    block: Bytes,
}

impl PatternBody {
    pub fn new(len: u64) -> PatternBody {
        PatternBody {
            remaining: len,
            offset: 0,
            block: pattern_block(),
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let start = (self.offset % PERIOD as u64) as usize;
        let len = (CHUNK as u64).min(self.remaining) as usize;
        let chunk = self.block.slice(start..start + len);
        self.remaining -= len as u64;
        self.offset += len as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Checks that bytes follow the pattern of [`PatternBody`].
#[derive(Debug)]
pub struct PatternChecker {
    pub seen: u64,
    pub ok: bool,
}

impl Default for PatternChecker {
    fn default() -> Self {
        PatternChecker { seen: 0, ok: true }
    }
}

impl PatternChecker {
    pub fn feed(&mut self, data: &[u8]) {
        if self.ok {
            let start = (self.seen % PERIOD as u64) as usize;
            self.ok = data
                .iter()
                .enumerate()
                .all(|(i, &b)| b as usize == (start + i) % PERIOD);
        }
        self.seen += data.len() as u64;
    }
}

/// How a streaming response behaves: `x-sim-stream: chunks=4; interval=700ms`.
#[derive(Debug, Clone, Copy)]
pub struct StreamSpec {
    /// Notifications before the response ends; `None` streams until the client leaves.
    pub chunks: Option<u64>,
    pub interval: Duration,
}

impl StreamSpec {
    fn parse(text: &str) -> StreamSpec {
        let mut spec = StreamSpec {
            chunks: None,
            interval: Duration::from_secs(1),
        };
        for part in text.split(';') {
            match part.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("chunks", v)) => spec.chunks = v.parse().ok(),
                Some(("interval", v)) => {
                    if let Ok(d) = humantime::parse_duration(v) {
                        spec.interval = d;
                    }
                }
                _ => {}
            }
        }
        spec
    }
}

const NOTIFICATION: &str = concat!(
    r#"<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body>"#,
    r#"<m:GetStreamingEventsResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">"#,
    r#"<m:ResponseMessages><m:GetStreamingEventsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>"#,
    r#"<m:ConnectionStatus>OK</m:ConnectionStatus></m:GetStreamingEventsResponseMessage></m:ResponseMessages>"#,
    r#"</m:GetStreamingEventsResponse></Body></Envelope>"#
);

/// A `GetStreamingEvents`-style chunked body: one SOAP envelope per interval.
struct Notifications {
    spec: StreamSpec,
    sent: u64,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Notifications {
    fn new(spec: StreamSpec) -> Notifications {
        Notifications {
            spec,
            sent: 0,
            // The first notification goes out at once, as Exchange confirms the subscription.
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl Body for Notifications {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.spec.chunks.is_some_and(|n| self.sent >= n) {
            return Poll::Ready(None);
        }
        std::task::ready!(self.timer.as_mut().poll(cx));
        let next = tokio::time::Instant::now() + self.spec.interval;
        self.timer.as_mut().reset(next);
        self.sent += 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            NOTIFICATION.as_bytes(),
        )))))
    }
}
