//! The proxy: the HTTP edge between mail clients and Exchange. It accepts client connections
//! (TLS, HTTP/1.1 and HTTP/2), forwards each request upstream with bodies streaming both ways,
//! and answers for its own failures. It never parses SOAP or JSON and never waits on any later
//! stage.

pub mod autodiscover;
pub mod body;
pub mod capture;
pub mod forward;
pub mod framing;
pub mod h1;
mod h1_server;
pub mod headers;
pub mod metrics;
pub mod respond;
pub mod route;
mod sending;
pub mod server;
pub mod settings;
pub mod stack;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{Mutex, Notify, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::tls::{self, TlsError};

pub use metrics::ProxyMetrics;
pub use route::{RouteClass, Routes, UpstreamBase};
pub use settings::{
    AutodiscoverSettings, BodyPace, Limits, ListenerSettings, ListenerTls, ProxySettings,
    UpstreamTimeouts,
};

#[derive(Debug, thiserror::Error)]
pub enum ProxyBuildError {
    #[error("listener TLS: {0}")]
    ListenerTls(#[source] TlsError),
    #[error("upstream TLS: {0}")]
    UpstreamTls(#[source] TlsError),
}

/// Everything a request needs that a reload may change. Swapped atomically on SIGHUP;
/// in-flight requests keep the snapshot they started with.
pub struct ProxyState {
    pub routes: Routes,
    /// The upstream keep-alive pools: one set, or one per proxy thread.
    pools: Vec<upstream::ThreadPools>,
    pub upstream: upstream::UpstreamSettings,
    pub tls_acceptor: Option<TlsAcceptor>,
    pub listener: ListenerSettings,
    pub limits: Limits,
    pub timeouts: UpstreamTimeouts,
    pub autodiscover: AutodiscoverSettings,
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
}

impl ProxyState {
    /// The upstream pool for a route class on the thread serving this request.
    pub fn pool(&self, class: RouteClass) -> &Arc<upstream::Pool> {
        self.pools[server::thread_index() % self.pools.len()].for_class(class)
    }

    pub fn build(
        settings: &ProxySettings,
        routes: Routes,
        metrics: &ProxyMetrics,
    ) -> Result<ProxyState, ProxyBuildError> {
        let tls_acceptor = match &settings.listener.tls {
            ListenerTls::Off => None,
            ListenerTls::Files { cert, key } => Some(
                tls::server_config(cert, key, &settings.listener.alpn)
                    .map_err(ProxyBuildError::ListenerTls)?,
            ),
            ListenerTls::Development { dir } => {
                let dev = tls::ensure_dev_certs(dir).map_err(ProxyBuildError::ListenerTls)?;
                Some(
                    tls::server_config(&dev.cert, &dev.key, &settings.listener.alpn)
                        .map_err(ProxyBuildError::ListenerTls)?,
                )
            }
        }
        .map(TlsAcceptor::from);
        let client_tls = tls::upstream_client_config(settings.upstreams.ca_bundle.as_deref())
            .map_err(ProxyBuildError::UpstreamTls)?;
        let upstream = upstream::UpstreamSettings {
            tls: Arc::new(client_tls),
            connect_timeout: settings.upstreams.connect_timeout,
            pool_idle_timeout: settings.upstreams.pool_idle_timeout,
            pool_max_idle_per_host: settings.upstreams.pool_max_idle_per_host,
        };
        // One pool per proxy thread: a request reuses connections its own thread drives.
        let pools = (0..settings.threads.unwrap_or(1).max(1))
            .map(|_| {
                upstream::ThreadPools::new(&routes, &upstream, &metrics.upstream_connects_pooled)
            })
            .collect();
        Ok(ProxyState {
            routes,
            pools,
            upstream,
            tls_acceptor,
            listener: settings.listener.clone(),
            limits: settings.limits.clone(),
            timeouts: settings.upstreams.clone(),
            autodiscover: settings.autodiscover.clone(),
            http1: http1_builder(&settings.limits),
            http2: http2_builder(&settings.limits),
        })
    }
}

/// The client-facing HTTP/1.1 settings. hyper's header read timeout is off, and no timer is
/// given for it: it made, registered and dropped a timer for every request. The server's
/// connection loop times slow heads instead, only when a head comes in pieces
/// (`server::serve_until_idle`, tests/timeouts.rs).
fn http1_builder(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .header_read_timeout(None::<std::time::Duration>)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_header_count)
        .keep_alive(true);
    builder
}

/// The client-facing HTTP/2 settings.
fn http2_builder(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    builder
}

/// The running proxy: current state, metrics, readiness and the connection budget.
pub struct Proxy {
    state: ArcSwap<ProxyState>,
    pub metrics: Arc<ProxyMetrics>,
    ready: AtomicBool,
    /// One permit per open client connection; draining waits until all are back.
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) max_connections: usize,
    /// Where copies of exchanges go for inspection; `None` when inspection is off.
    pub(crate) capture: Option<Arc<capture::CaptureSink>>,
}

impl Proxy {
    pub fn new(
        state: ProxyState,
        metrics: Arc<ProxyMetrics>,
        capture: Option<Arc<capture::CaptureSink>>,
    ) -> Proxy {
        let max = state.limits.max_connections;
        Proxy {
            state: ArcSwap::from_pointee(state),
            metrics,
            ready: AtomicBool::new(false),
            connections: Arc::new(Semaphore::new(max)),
            max_connections: max,
            capture,
        }
    }

    pub fn state(&self) -> Arc<ProxyState> {
        self.state.load_full()
    }

    /// Replaces the state for new requests and connections.
    pub fn swap(&self, state: ProxyState) {
        self.state.store(Arc::new(state));
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        crate::telemetry::set_flag(&self.metrics.ready, ready);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Per client connection: who it is and, once Windows auth appears, its pinned upstream
/// connections (one per upstream endpoint).
pub struct ConnContext {
    /// Unique per process, for grouping exchanges of one client connection.
    pub id: u64,
    pub peer: SocketAddr,
    pub(crate) peer_value: http::HeaderValue,
    pub tls: bool,
    pub(crate) pinned: Mutex<Vec<upstream::PinnedConnection>>,
    pub(crate) has_pinned: AtomicBool,
    /// Endpoints with a pinned connection, readable without waiting on `pinned`.
    pub(crate) pinned_endpoints: std::sync::Mutex<Vec<String>>,
    /// Notified when a pinned upstream connection ends; the client connection then closes.
    pub upstream_closed: Arc<Notify>,
    /// The last Windows-auth `Authorization` value seen here, for inspection's identity.
    pub(crate) windows_auth: std::sync::Mutex<Option<http::HeaderValue>>,
    /// Whether hyper is idle between requests, so the connection may park (see `server`).
    pub(crate) activity: server::Activity,
}

static CONNECTION_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl ConnContext {
    pub fn new(peer: SocketAddr, tls: bool) -> ConnContext {
        ConnContext {
            id: CONNECTION_IDS.fetch_add(1, Ordering::Relaxed),
            peer,
            peer_value: http::HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or_else(|_| http::HeaderValue::from_static("unknown")),
            tls,
            pinned: Mutex::new(Vec::new()),
            has_pinned: AtomicBool::new(false),
            pinned_endpoints: std::sync::Mutex::new(Vec::new()),
            upstream_closed: Arc::new(Notify::new()),
            windows_auth: std::sync::Mutex::new(None),
            activity: server::Activity::default(),
        }
    }
}
