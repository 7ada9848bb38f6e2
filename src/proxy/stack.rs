//! The request path, assembled in one function. Read it top to bottom: each layer says why it
//! sits where it does. A new cross-cutting concern is one new layer here.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, header};
use hyper::body::Incoming;
use tower::layer::layer_fn;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer,
};

use super::body::ProxyBody;
use super::forward::forward;
use super::headers::check_framing;
use super::metrics::ProxyMetrics;
use super::respond::ProxyError;
use super::route::RouteClass;
use super::{ConnContext, Proxy};

/// The service for one client connection.
pub fn connection_service(
    proxy: Arc<Proxy>,
    conn: Arc<ConnContext>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let metrics = proxy.metrics.clone();
    let forward = service_fn(move |request: Request<Incoming>| {
        let (proxy, conn) = (proxy.clone(), conn.clone());
        // Boxed: every layer above keeps its inner future inline and moves it when it starts
        // it, and forwarding's state machine is a few KiB — copied at each layer unboxed.
        Box::pin(async move { forward(&proxy, &conn, request).await })
    });
    ServiceBuilder::new()
        // First, mark credentials sensitive, so nothing below (logs, Debug output) can print
        // them — Windows auth blobs, bearer tokens, cookies with session state.
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::PROXY_AUTHORIZATION,
            header::COOKIE,
        ]))
        .layer(SetSensitiveResponseHeadersLayer::new([
            header::SET_COOKIE,
            header::WWW_AUTHENTICATE,
        ]))
        // Then measure, outside the rescue, so the gateway's own error answers are counted with
        // the status the client really got.
        .layer(layer_fn({
            let metrics = metrics.clone();
            move |inner| observe(inner, metrics.clone())
        }))
        // Turn every failure below into the one client response for it (502, 504, 413, 400…).
        .layer(layer_fn(move |inner| rescue(inner, metrics.clone())))
        // Refuse smuggling-prone framing before the body is touched or anything goes upstream.
        .layer(layer_fn(framing_guard))
        .service(forward)
}

fn observe<S>(
    inner: S,
    metrics: Arc<ProxyMetrics>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    service_fn(move |request: Request<Incoming>| {
        let inner = inner.clone();
        let metrics = metrics.clone();
        async move {
            let started = Instant::now();
            let route = RouteClass::of_path(request.uri().path());
            let method = request.method().clone();
            let response = inner.oneshot(request).await?;
            let elapsed = started.elapsed();
            metrics.record_response(route, response.status().as_u16(), elapsed.as_secs_f64());
            // Route class, not path: paths can carry mailbox addresses (/users/{upn}/…).
            tracing::debug!(
                target: "trackgate::access",
                %method,
                route = route.as_str(),
                status = response.status().as_u16(),
                micros = elapsed.as_micros() as u64,
                "request"
            );
            Ok(response)
        }
    })
}

fn rescue<S>(
    inner: S,
    metrics: Arc<ProxyMetrics>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    service_fn(move |request: Request<Incoming>| {
        let inner = inner.clone();
        let metrics = metrics.clone();
        async move {
            Ok(match inner.oneshot(request).await {
                Ok(response) => response,
                Err(error) => {
                    metrics.record_error(error.kind());
                    tracing::debug!(error = %error, kind = error.kind(), fault = ?error.fault(), "answered by the gateway");
                    error.into_response()
                }
            })
        }
    })
}

fn framing_guard<S>(
    inner: S,
) -> impl Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = ProxyError,
    Future = impl Send,
> + Clone
+ Send
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    service_fn(move |request: Request<Incoming>| {
        let inner = inner.clone();
        async move {
            check_framing(request.headers())?;
            inner.oneshot(request).await
        }
    })
}
