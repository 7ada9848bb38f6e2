//! Forwarding one request, as a sequence of phases over one per-request [`RequestCtx`] (the
//! shape of pingora's `ProxyHttp`): filter the request, route it, start its inspection copy,
//! rewrite the head for the upstream, wrap the body in its guards, send through the pool or the
//! pinned connection (classifying any failure), filter the response head and body (Autodiscover
//! rewrite), and tee the response to inspection. The innermost service of the stack.
//!
//! Only [`send`] and [`response_body_filter`] await; every other phase is a plain function, so
//! the per-request future holds no more than the context, the signals and the message in flight.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::{self, HeaderValue};
use http::request::Parts as RequestParts;
use http::response::Parts as ResponseParts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::sync::Notify;

use super::autodiscover;
use super::body::{BodyFailure, BodyOutcome, ClientBody, Guarded, ProxyBody, empty, full};
use super::capture::{PendingCapture, Side, Tee};
use super::h1::{ContinueSignal, Http2Client};
use super::headers::{ClientFacts, HeadFacts, HopByHop};
use super::metrics::ProxyMetrics;
use super::respond::ProxyError;
use super::route::RouteClass;
use super::upstream::{PinnedConnection, PoolError, UpstreamBody};
use super::{ConnContext, Proxy, ProxyState};

/// Forwards one client request and returns the upstream's response, streaming.
pub async fn forward(
    proxy: &Proxy,
    conn: &ConnContext,
    request: Request<ClientBody>,
    mut facts: HeadFacts,
) -> Result<Response<ProxyBody>, ProxyError> {
    let state = proxy.state();
    request_filter(&state, &request, &facts)?;
    let (mut parts, body) = request.into_parts();
    let mut ctx = RequestCtx::route(&parts, &mut facts);
    ctx.capture = capture(proxy, conn, &ctx, &parts);
    upstream_request(&state, conn, &mut ctx, &mut parts, &mut facts)?;
    let signals = Signals::new(ctx.expect_continue);
    let body = request_body(&state, &proxy.metrics, &ctx, &signals, body);
    let request = client_signals(&ctx, &signals, Request::from_parts(parts, body));
    let (response, pinned) = send(proxy, &state, conn, &ctx, &signals, request).await?;
    let (mut parts, mut body) = response.into_parts();
    let hops = body
        .take_hop_by_hop()
        .unwrap_or_else(|| HeadFacts::of(&parts.headers).hops);
    response_filter(&state, conn, &ctx, &mut parts, hops, pinned);
    let body = response_body_filter(&state, &proxy.metrics, &ctx, &mut parts, body).await?;
    let body = tee(ctx.capture, &parts, body);
    Ok(Response::from_parts(parts, body))
}

/// What one request carries from phase to phase. Built once by [`RequestCtx::route`] and held
/// across the upstream await, so it keeps only what later phases read.
struct RequestCtx {
    class: RouteClass,
    /// A HEAD answer carries no body to rewrite.
    head_request: bool,
    /// The client speaks HTTP/2: a body it is still sending when the answer has ended resets
    /// its stream only, so it is not read to its end.
    http2: bool,
    /// NTLM/Negotiate credentials: the exchange goes over a connection pinned to this client.
    windows_auth: bool,
    /// The client waits for `100 Continue` before sending its body.
    expect_continue: bool,
    /// The Host the client used (its Host header, else the URI's authority): forwarded headers,
    /// a preserved Host and the external URL of Autodiscover rewrites come from it.
    client_host: Option<HeaderValue>,
    /// Where Autodiscover URLs in the answer point instead; `None` leaves the answer as sent.
    rewrite_to: Option<String>,
    /// The copy of this exchange for inspection, when it is copied.
    capture: Option<Arc<PendingCapture>>,
}

/// What the request body, the upstream send and hyper's informational callback tell each other.
struct Signals {
    /// Why the request body stopped early, if it did (a failed send is then the client's
    /// doing), and that it has been sent (the response header timeout starts then).
    outcome: Arc<BodyOutcome>,
    /// For a client that waits for `100 Continue`: the upstream sent one (or a final success),
    /// so the request body may flow. No allocation for the rest.
    continue_seen: Option<Arc<Notify>>,
}

impl Signals {
    fn new(expect_continue: bool) -> Signals {
        Signals {
            outcome: Arc::new(BodyOutcome::default()),
            continue_seen: expect_continue.then(|| Arc::new(Notify::new())),
        }
    }

    fn body_sent(&self) -> &Notify {
        self.outcome.ended()
    }
}

/// Refuses what must not go upstream at all: CONNECT (this is a reverse proxy) and a body whose
/// declared length is over the limit, before anything is sent. Default: everything else passes.
fn request_filter(
    state: &ProxyState,
    request: &Request<ClientBody>,
    facts: &HeadFacts,
) -> Result<(), ProxyError> {
    if request.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest(
            "CONNECT is not supported by a reverse proxy",
        ));
    }
    if let Some(len) = facts.length.agreed()
        && len > state.limits.max_request_body
    {
        return Err(ProxyError::PayloadTooLarge);
    }
    Ok(())
}

impl RequestCtx {
    /// Routes the request (its class picks the upstream and the timeouts) and notes what later
    /// phases need from the client's head as sent. No copy, no rewrite yet.
    fn route(parts: &RequestParts, facts: &mut HeadFacts) -> RequestCtx {
        RequestCtx {
            class: RouteClass::of_path(parts.uri.path()),
            head_request: parts.method == Method::HEAD,
            http2: parts.version == http::Version::HTTP_2,
            windows_auth: facts.windows_auth,
            expect_continue: facts.expect_continue,
            client_host: facts.host.take().or_else(|| {
                parts
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            }),
            rewrite_to: None,
            capture: None,
        }
    }
}

/// Starts the inspection copy from the head as the client sent it, with the connection's last
/// Windows-auth credentials (remembered here when this request carries new ones). Default: no
/// copy when inspection is off or the route is not Exchange's.
fn capture(
    proxy: &Proxy,
    conn: &ConnContext,
    ctx: &RequestCtx,
    parts: &RequestParts,
) -> Option<Arc<PendingCapture>> {
    let sink = proxy.capture.as_ref()?;
    if ctx.class == RouteClass::Other {
        return None;
    }
    let connection_auth = conn.windows_auth.lock().ok().and_then(|mut last| {
        if ctx.windows_auth {
            *last = parts.headers.get(header::AUTHORIZATION).cloned();
        }
        last.clone()
    });
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    Some(sink.begin(
        conn.id,
        &parts.method,
        pq,
        ctx.class,
        &parts.headers,
        connection_auth,
    ))
}

/// Rewrites the head for the upstream: hop-by-hop headers out, forwarded headers in, the
/// target on the route's upstream, HTTP/1.1. Decides the Autodiscover rewrite, whose answer is
/// then asked for uncompressed. Default: the upstream's own authority as Host.
fn upstream_request(
    state: &ProxyState,
    conn: &ConnContext,
    ctx: &mut RequestCtx,
    parts: &mut RequestParts,
    facts: &mut HeadFacts,
) -> Result<(), ProxyError> {
    ctx.rewrite_to = (ctx.class == RouteClass::Autodiscover && state.autodiscover.rewrite)
        .then(|| external_url(state, conn.tls, ctx.client_host.as_ref()))
        .flatten();
    if ctx.rewrite_to.is_some() {
        // Identity-coded answers can be rewritten without decompressing.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    facts.strip_hop_by_hop(&mut parts.headers);
    facts.join_cookies(&mut parts.headers);
    facts.set_forwarded(
        &mut parts.headers,
        ClientFacts {
            peer: conn.peer.ip(),
            peer_value: &conn.peer_value,
            tls: conn.tls,
            trusted: &state.listener.trusted_proxies,
        },
        ctx.client_host.clone(),
    );
    // The upstream's own authority by default; some deployments want the name the client used.
    let base = state.routes.base(ctx.class);
    let host = match ctx.client_host.clone() {
        Some(host) if state.timeouts.preserve_host => host,
        _ => base.host_header.clone(),
    };
    parts.headers.insert(header::HOST, host);
    parts.uri = base
        .origin_form(&parts.uri)
        .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))?;
    parts.version = Version::HTTP_11;
    Ok(())
}

/// Wraps the client's body for the upstream: size limit, idle timeout, byte count, the signal
/// that it has been sent, the `100 Continue` gate and the inspection tee. Default: an empty
/// body, already "sent", when the client sent none.
fn request_body(
    state: &ProxyState,
    metrics: &ProxyMetrics,
    ctx: &RequestCtx,
    signals: &Signals,
    body: ClientBody,
) -> ProxyBody {
    if body.is_end_stream() {
        if let Some(c) = &ctx.capture {
            c.no_request_body();
        }
        signals.body_sent().notify_one();
        return empty();
    }
    let mut guarded = Guarded::new(
        body,
        state.limits.body_read_timeout,
        metrics.bytes_from_client.clone(),
    )
    .with_limit(state.limits.max_request_body)
    .with_pace(state.limits.body_pace)
    .with_outcome(signals.outcome.clone());
    if let Some(seen) = &signals.continue_seen {
        // The client gets `100 Continue` only when the upstream sends one (or stays silent
        // past the timeout, as RFC 9110 lets clients assume): a 401 challenge then arrives
        // before any body is sent.
        let seen = seen.clone();
        let wait = state.timeouts.expect_continue_timeout;
        guarded = guarded.with_gate(async move {
            let _ = tokio::time::timeout(wait, seen.notified()).await;
        });
    }
    match &ctx.capture {
        Some(c) => Tee::new(guarded, Side::Request, c.clone()).boxed_unsync(),
        None => guarded.boxed_unsync(),
    }
}

/// Tells the upstream exchange about the client's side: the upstream's `100 Continue` opens
/// the request body's gate, and an HTTP/2 client's body left unsent by an early answer is not
/// read to its end. Default: nothing to say for an HTTP/1.1 client that does not wait.
fn client_signals(
    ctx: &RequestCtx,
    signals: &Signals,
    mut request: Request<ProxyBody>,
) -> Request<ProxyBody> {
    if let Some(seen) = &signals.continue_seen {
        request
            .extensions_mut()
            .insert(ContinueSignal(seen.clone()));
    }
    if ctx.http2 {
        request.extensions_mut().insert(Http2Client);
    }
    request
}

/// Sends the request and waits for the response head: over this client connection's pinned
/// upstream connection once Windows auth is in play, else (the default) through the pool. A
/// failure the client's body caused is reported as the client's (413, 408), not the upstream's.
/// Returns whether the response came over a pinned connection.
async fn send(
    proxy: &Proxy,
    state: &ProxyState,
    conn: &ConnContext,
    ctx: &RequestCtx,
    signals: &Signals,
    request: Request<ProxyBody>,
) -> Result<(Response<UpstreamBody>, bool), ProxyError> {
    proxy.metrics.upstream_requests.inc();
    let result = if ctx.windows_auth || conn.has_pinned.load(Ordering::Acquire) {
        // Boxed: opening a pinned connection is a large state machine, and hyper copies this
        // future on every request; the pooled path, nearly every request, stays small.
        Box::pin(send_pinned(
            proxy,
            state,
            conn,
            ctx.class,
            ctx.windows_auth,
            signals.body_sent(),
            request,
        ))
        .await
    } else {
        send_pooled(state, ctx.class, request).await
    };
    let (response, pinned) = result.map_err(|error| match signals.outcome.get() {
        Some(BodyFailure::TooLarge) => ProxyError::PayloadTooLarge,
        Some(BodyFailure::IdleTimeout) => ProxyError::ClientTimeout,
        _ => error,
    })?;
    if let Some(seen) = &signals.continue_seen
        && response.status().is_success()
    {
        // A final success without `100 Continue` means the upstream wants the body now.
        seen.notify_one();
    }
    Ok((response, pinned))
}

/// Rewrites the response head for the client: hop-by-hop headers out, Autodiscover redirects
/// pointed at the gateway, and `Connection: close` when a pinned upstream connection closes
/// after this response. Default: the upstream's head minus hop-by-hop headers.
fn response_filter(
    state: &ProxyState,
    conn: &ConnContext,
    ctx: &RequestCtx,
    parts: &mut ResponseParts,
    hops: HopByHop,
    pinned: bool,
) {
    let upstream_closes = hops.connection.close;
    hops.strip(&mut parts.headers, |_| {});
    if state.autodiscover.rewrite
        && parts.status.is_redirection()
        && let Some(location) = parts.headers.get(header::LOCATION)
        && let Some(to) = external_url(state, conn.tls, ctx.client_host.as_ref())
        && let Some(new) =
            autodiscover::rewrite(location.as_bytes(), &state.autodiscover.exchange_hosts, &to)
        && let Ok(value) = HeaderValue::from_bytes(&new)
    {
        parts.headers.insert(header::LOCATION, value);
    }
    if pinned && upstream_closes {
        // The pinned upstream connection ends after this response; so does the client's.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// Guards the response body (idle timeout, long for EWS streaming; byte count) and, for an
/// identity-coded successful Autodiscover answer, rewrites the Exchange URLs in it, buffered up
/// to `autodiscover.max_body`. Default: the body streams through unchanged.
async fn response_body_filter(
    state: &ProxyState,
    metrics: &ProxyMetrics,
    ctx: &RequestCtx,
    parts: &mut ResponseParts,
    body: UpstreamBody,
) -> Result<ProxyBody, ProxyError> {
    let idle = if ctx.class == RouteClass::Ews {
        state.timeouts.streaming_idle_timeout
    } else {
        state.timeouts.idle_timeout
    };
    let body = Guarded::new(body, idle, metrics.bytes_from_upstream.clone());
    let identity = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_none_or(|e| e.as_bytes().eq_ignore_ascii_case(b"identity"));
    // HEAD answers and 204s carry no body to rewrite (and must keep their headers as sent).
    let has_body = !(ctx.head_request || parts.status == StatusCode::NO_CONTENT);
    let to = match ctx.rewrite_to.as_deref() {
        Some(to) if parts.status.is_success() && identity && has_body => to,
        _ => return Ok(body.boxed_unsync()),
    };
    let whole = http_body_util::Limited::new(body, state.autodiscover.max_body)
        .collect()
        .await
        .map_err(|_| ProxyError::AutodiscoverTooLarge)?
        .to_bytes();
    let rewritten = autodiscover::rewrite(&whole, &state.autodiscover.exchange_hosts, to)
        .map(bytes::Bytes::from)
        .unwrap_or(whole);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
    Ok(full(rewritten))
}

/// Tees the response to inspection and records its head there, unless the exchange is not
/// copied or its response is not worth copying (an endless stream, an operation inspection
/// reads nothing from: the copy is then given up). Default: no tee.
fn tee(capture: Option<Arc<PendingCapture>>, parts: &ResponseParts, body: ProxyBody) -> ProxyBody {
    match capture {
        Some(c) if !c.skip_unneeded_response() => {
            c.response_head(parts.status.as_u16(), &parts.headers);
            Tee::new(body, Side::Response, c).boxed_unsync()
        }
        _ => body,
    }
}

/// Waits for the response head. The header timeout starts once the request body has been sent:
/// a long upload is not the upstream being slow (its stalls are the body idle timeout's job).
/// The exchange is pinned by the caller: taken by value, it would be held twice in this state
/// machine (as the argument and as the pinned local), and every future around it, up to the
/// one hyper boxes per request, would be that much larger to build and to move.
async fn response_head<F, T>(
    state: &ProxyState,
    sent: &Notify,
    mut response: std::pin::Pin<&mut F>,
) -> Result<T, tokio::time::error::Elapsed>
where
    F: std::future::Future<Output = T>,
{
    tokio::select! {
        biased;
        done = response.as_mut() => return Ok(done),
        () = sent.notified() => {}
    }
    tokio::time::timeout(state.timeouts.header_timeout, response).await
}

/// Where rewritten Autodiscover URLs and redirects point: the configured external URL, or the
/// scheme and host this client used.
fn external_url(state: &ProxyState, tls: bool, host: Option<&HeaderValue>) -> Option<String> {
    if let Some(url) = &state.autodiscover.external_url {
        return Some(url.clone());
    }
    let host = host?.to_str().ok()?;
    let url = format!("{}://{host}", if tls { "https" } else { "http" });
    crate::common::url::valid_external_url(&url).then_some(url)
}

/// Sends through the shared pool of upstream connections: the default for every request without
/// Windows auth. The header timeout is the exchange's own: it starts once the request is sent.
async fn send_pooled(
    state: &ProxyState,
    class: RouteClass,
    request: Request<ProxyBody>,
) -> Result<(Response<UpstreamBody>, bool), ProxyError> {
    let sent = state
        .pool(class)
        .send(request, state.timeouts.header_timeout)
        .await;
    match sent {
        Err(PoolError::HeadTimeout(_)) => Err(ProxyError::UpstreamTimeout),
        Err(PoolError::Connect(error)) => Err(ProxyError::UpstreamUnreachable(Box::new(error))),
        Err(PoolError::Broken(error)) => Err(ProxyError::UpstreamBroken(Box::new(error))),
        Ok(response) => Ok((response.map(UpstreamBody::Pooled), false)),
    }
}

/// Sends over this client connection's own upstream connection, opening it on first Windows
/// auth. Requests to an endpoint with no pinned connection and no Windows auth use the pool.
async fn send_pinned(
    proxy: &Proxy,
    state: &ProxyState,
    conn: &ConnContext,
    class: RouteClass,
    windows_auth: bool,
    sent: &Notify,
    request: Request<ProxyBody>,
) -> Result<(Response<UpstreamBody>, bool), ProxyError> {
    let base = state.routes.base(class);
    let endpoint = base.endpoint();
    // Requests for endpoints this connection never authenticated to must not queue behind a
    // pinned exchange (an HTTP/2 client may hold a long stream on it).
    let known = conn
        .pinned_endpoints
        .lock()
        .map(|e| e.contains(&endpoint))
        .unwrap_or(false);
    if !windows_auth && !known {
        return send_pooled(state, class, request).await;
    }
    let mut pinned = conn.pinned.lock().await;
    pinned.retain(PinnedConnection::is_usable);
    let index = match pinned.iter().position(|p| p.endpoint == endpoint) {
        Some(i) => i,
        None if windows_auth => {
            let opened = PinnedConnection::open(
                base,
                &state.upstream,
                &proxy.metrics.upstream_connects_pinned,
                proxy.metrics.pinned_active.clone(),
                conn.upstream_closed.clone(),
            )
            .await
            .map_err(|e| ProxyError::UpstreamUnreachable(Box::new(e)))?;
            pinned.push(opened);
            conn.has_pinned.store(true, Ordering::Release);
            if let Ok(mut endpoints) = conn.pinned_endpoints.lock() {
                endpoints.push(endpoint.clone());
            }
            pinned.len() - 1
        }
        None => {
            drop(pinned);
            return send_pooled(state, class, request).await;
        }
    };
    // The connection takes the next request once the previous exchange is done; do not wait
    // for that forever.
    let response = tokio::time::timeout(state.timeouts.header_timeout, pinned[index].send(request))
        .await
        .map_err(|_| ProxyError::UpstreamTimeout)?
        .map_err(|e| ProxyError::UpstreamBroken(Box::new(e)))?;
    // Release the lock while waiting: the connection is busy with this request anyway.
    drop(pinned);
    match response_head(state, sent, std::pin::pin!(response)).await {
        Err(_) => Err(ProxyError::UpstreamTimeout),
        Ok(Err(error)) => Err(ProxyError::UpstreamBroken(Box::new(error))),
        Ok(Ok(response)) => Ok((response.map(UpstreamBody::Pinned), true)),
    }
}
