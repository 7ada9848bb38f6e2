//! Forwarding one request: pick the upstream, rewrite the head (hop-by-hop, forwarded headers,
//! host), wrap both bodies in their guards, send through the pool or the pinned connection,
//! and classify any failure. The innermost service of the stack.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Notify;

use super::autodiscover;
use super::body::{BodyFailure, BodyOutcome, Guarded, ProxyBody, empty};
use super::capture::{Side, Tee};
use super::headers::{self, ClientFacts};
use super::respond::ProxyError;
use super::route::RouteClass;
use super::upstream::PinnedConnection;
use super::{ConnContext, Proxy, ProxyState};

/// Forwards one client request and returns the upstream's response, streaming.
pub async fn forward(
    proxy: &Proxy,
    conn: &ConnContext,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let state = proxy.state();
    let metrics = &proxy.metrics;
    if request.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest(
            "CONNECT is not supported by a reverse proxy",
        ));
    }
    let class = RouteClass::of_path(request.uri().path());
    let base = state.routes.base(class);
    let head_request = request.method() == Method::HEAD;
    let (mut parts, body) = request.into_parts();

    // Refuse an oversized body before anything is sent upstream.
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > state.limits.max_request_body
    {
        return Err(ProxyError::PayloadTooLarge);
    }

    let windows_auth = headers::is_windows_auth(&parts.headers);
    let expect_continue = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });

    // The copy for inspection starts from the head as the client sent it.
    let capture = match &proxy.capture {
        Some(sink) if class != RouteClass::Other => {
            let connection_auth = conn.windows_auth.lock().ok().and_then(|mut last| {
                if windows_auth {
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
                class,
                &parts.headers,
                connection_auth,
            ))
        }
        _ => None,
    };

    // Kept (a cheap clone) for working out the external URL, which only Autodiscover answers
    // and redirects need.
    let client_host = original_host.clone();
    let rewrite_to = (class == RouteClass::Autodiscover && state.autodiscover.rewrite)
        .then(|| external_url(&state, conn.tls, client_host.as_ref()))
        .flatten();
    if rewrite_to.is_some() {
        // Identity-coded answers can be rewritten without decompressing.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }

    headers::strip_hop_by_hop(&mut parts.headers);
    headers::join_cookies(&mut parts.headers);
    headers::set_forwarded(
        &mut parts.headers,
        ClientFacts {
            peer: conn.peer.ip(),
            peer_value: &conn.peer_value,
            tls: conn.tls,
            trusted: &state.listener.trusted_proxies,
        },
        original_host.clone(),
    );
    // The upstream's own authority by default (the client sets the URI's authority as Host);
    // some deployments want the name the client used.
    parts.headers.remove(header::HOST);
    if state.timeouts.preserve_host
        && let Some(host) = original_host
    {
        parts.headers.insert(header::HOST, host);
    }
    parts.uri = base
        .join(parts.uri.path_and_query())
        .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))?;
    parts.version = Version::HTTP_11;

    let outcome = Arc::new(BodyOutcome::default());
    let continue_seen = Arc::new(Notify::new());
    let body_sent = Arc::new(Notify::new());
    let body = if body.is_end_stream() {
        if let Some(c) = &capture {
            c.no_request_body();
        }
        body_sent.notify_one();
        empty()
    } else {
        let mut guarded = Guarded::new(
            body,
            state.limits.body_read_timeout,
            metrics.bytes_from_client.clone(),
        )
        .with_limit(state.limits.max_request_body)
        .with_outcome(outcome.clone())
        .with_end_signal(body_sent.clone());
        if expect_continue {
            // The client gets `100 Continue` only when the upstream sends one (or stays silent
            // past the timeout, as RFC 9110 lets clients assume): a 401 challenge then arrives
            // before any body is sent.
            let seen = continue_seen.clone();
            let wait = state.timeouts.expect_continue_timeout;
            guarded = guarded.with_gate(async move {
                let _ = tokio::time::timeout(wait, seen.notified()).await;
            });
        }
        match &capture {
            Some(c) => Tee::new(guarded, Side::Request, c.clone()).boxed_unsync(),
            None => guarded.boxed_unsync(),
        }
    };
    let mut upstream_request = Request::from_parts(parts, body);
    if expect_continue {
        let seen = continue_seen.clone();
        hyper::ext::on_informational(&mut upstream_request, move |response| {
            if response.status() == StatusCode::CONTINUE {
                seen.notify_one();
            }
        });
    }

    metrics.upstream_requests.inc();
    let pinned = windows_auth || conn.has_pinned.load(Ordering::Acquire);
    let result = if pinned {
        // Boxed: opening a pinned connection is a large state machine, and hyper copies this
        // future on every request; the pooled path, nearly every request, stays small.
        Box::pin(send_pinned(
            proxy,
            &state,
            conn,
            class,
            windows_auth,
            &body_sent,
            upstream_request,
        ))
        .await
    } else {
        send_pooled(&state, &body_sent, upstream_request).await
    };
    let (response, pinned) = match result {
        Ok(r) => r,
        Err(error) => {
            return Err(match outcome.get() {
                Some(BodyFailure::TooLarge) => ProxyError::PayloadTooLarge,
                Some(BodyFailure::IdleTimeout) => ProxyError::ClientTimeout,
                _ => error,
            });
        }
    };

    if expect_continue && response.status().is_success() {
        // A final success without `100 Continue` means the upstream wants the body now.
        continue_seen.notify_one();
    }
    let (mut parts, body) = response.into_parts();
    let upstream_closes = headers::wants_close(&parts.headers);
    headers::strip_hop_by_hop(&mut parts.headers);
    if state.autodiscover.rewrite
        && parts.status.is_redirection()
        && let Some(location) = parts.headers.get(header::LOCATION)
        && let Some(to) = external_url(&state, conn.tls, client_host.as_ref())
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
    let idle = if class == RouteClass::Ews {
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
    let has_body = !(head_request || parts.status == StatusCode::NO_CONTENT);
    let body = match rewrite_to.as_deref() {
        Some(to) if parts.status.is_success() && identity && has_body => {
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
            http_body_util::Full::new(rewritten)
                .map_err(|never| match never {})
                .boxed_unsync()
        }
        _ => body.boxed_unsync(),
    };
    let body = match capture {
        Some(c) if !c.skip_if_streaming() => {
            c.response_head(parts.status.as_u16(), &parts.headers);
            Tee::new(body, Side::Response, c).boxed_unsync()
        }
        _ => body,
    };
    Ok(Response::from_parts(parts, body))
}

/// Waits for the response head. The header timeout starts once the request body has been sent:
/// a long upload is not the upstream being slow (its stalls are the body idle timeout's job).
async fn response_head<F, T>(
    state: &ProxyState,
    sent: &Notify,
    response: F,
) -> Result<T, tokio::time::error::Elapsed>
where
    F: std::future::Future<Output = T>,
{
    tokio::pin!(response);
    tokio::select! {
        biased;
        done = &mut response => return Ok(done),
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

async fn send_pooled(
    state: &ProxyState,
    sent: &Notify,
    request: Request<ProxyBody>,
) -> Result<(Response<Incoming>, bool), ProxyError> {
    match response_head(state, sent, state.pool.request(request)).await {
        Err(_) => Err(ProxyError::UpstreamTimeout),
        Ok(Err(error)) if error.is_connect() => {
            Err(ProxyError::UpstreamUnreachable(Box::new(error)))
        }
        Ok(Err(error)) => Err(ProxyError::UpstreamBroken(Box::new(error))),
        Ok(Ok(response)) => Ok((response, false)),
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
) -> Result<(Response<Incoming>, bool), ProxyError> {
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
        return send_pooled(state, sent, request).await;
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
            return send_pooled(state, sent, request).await;
        }
    };
    // hyper's connection-level client, unlike the pooled one, writes the URI as given and adds
    // no Host: send origin form (`/path?query`) and the Host HTTP/1.1 needs.
    let mut request = request;
    let origin_form = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    if let Ok(uri) = origin_form.parse() {
        *request.uri_mut() = uri;
    }
    if !request.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(base.authority.as_str())
    {
        request.headers_mut().insert(header::HOST, host);
    }
    // The connection takes the next request once the previous exchange is done; do not wait
    // for that forever.
    let response = tokio::time::timeout(state.timeouts.header_timeout, pinned[index].send(request))
        .await
        .map_err(|_| ProxyError::UpstreamTimeout)?
        .map_err(|e| ProxyError::UpstreamBroken(Box::new(e)))?;
    // Release the lock while waiting: the connection is busy with this request anyway.
    drop(pinned);
    match response_head(state, sent, response).await {
        Err(_) => Err(ProxyError::UpstreamTimeout),
        Ok(Err(error)) => Err(ProxyError::UpstreamBroken(Box::new(error))),
        Ok(Ok(response)) => Ok((response, true)),
    }
}
