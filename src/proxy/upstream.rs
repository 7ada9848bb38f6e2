//! The upstream side: a shared keep-alive pool for ordinary traffic, and dedicated connections
//! pinned to one client connection for Windows auth. Both speak HTTP/1.1 with TCP_NODELAY and
//! TLS (system roots plus the configured CA). Bytes pass through unchanged.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;

use super::body::{BoxError, ProxyBody};
use super::route::UpstreamBase;

/// Counts every new upstream TCP connection, so reuse can be reported.
#[derive(Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    connects: Counter,
}

impl tower::Service<Uri> for CountingConnector {
    type Response = <HttpConnector as tower::Service<Uri>>::Response;
    type Error = <HttpConnector as tower::Service<Uri>>::Error;
    type Future = <HttpConnector as tower::Service<Uri>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        self.connects.inc();
        self.inner.call(uri)
    }
}

pub type PooledClient = Client<HttpsConnector<CountingConnector>, ProxyBody>;

/// Settings shared by pooled and pinned upstream connections.
#[derive(Clone)]
pub struct UpstreamSettings {
    pub tls: Arc<ClientConfig>,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

pub fn pooled_client(settings: &UpstreamSettings, connects: Counter) -> PooledClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let counting = CountingConnector {
        inner: http,
        connects,
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*settings.tls).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(counting);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https)
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to upstream timed out")]
    Timeout,
    #[error("connect to upstream failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream host is not a valid TLS server name")]
    ServerName,
    #[error("upstream handshake failed: {0}")]
    Http(#[from] hyper::Error),
}

/// An HTTP/1.1 connection owned by one client connection (NTLM/Negotiate authenticate the
/// connection, so it must never be shared or pooled).
pub struct PinnedConnection {
    pub endpoint: String,
    sender: hyper::client::conn::http1::SendRequest<ProxyBody>,
}

impl PinnedConnection {
    /// Opens a dedicated connection. `closed` is notified when it ends, so the client connection
    /// can be closed too.
    pub async fn open(
        base: &UpstreamBase,
        settings: &UpstreamSettings,
        connects: &Counter,
        active: Gauge,
        closed: Arc<Notify>,
    ) -> Result<PinnedConnection, ConnectError> {
        let host = base
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = base
            .authority
            .port_u16()
            .unwrap_or(if base.is_https() { 443 } else { 80 });
        let tcp = tokio::time::timeout(settings.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| ConnectError::Timeout)??;
        tcp.set_nodelay(true)?;
        connects.inc();
        let sender = if base.is_https() {
            let name =
                ServerName::try_from(host.to_owned()).map_err(|_| ConnectError::ServerName)?;
            let tls = tokio::time::timeout(
                settings.connect_timeout,
                TlsConnector::from(settings.tls.clone()).connect(name, tcp),
            )
            .await
            .map_err(|_| ConnectError::Timeout)??;
            handshake(TokioIo::new(tls), active, closed).await?
        } else {
            handshake(TokioIo::new(tcp), active, closed).await?
        };
        Ok(PinnedConnection {
            endpoint: base.endpoint(),
            sender,
        })
    }

    pub fn is_usable(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Waits until the connection can take the next request, then starts sending it. The
    /// returned future resolves to the response head.
    pub async fn send(
        &mut self,
        request: Request<ProxyBody>,
    ) -> Result<impl Future<Output = Result<Response<Incoming>, hyper::Error>> + use<>, hyper::Error>
    {
        self.sender.ready().await?;
        Ok(self.sender.send_request(request))
    }
}

async fn handshake<I>(
    io: I,
    active: Gauge,
    closed: Arc<Notify>,
) -> Result<hyper::client::conn::http1::SendRequest<ProxyBody>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, ProxyBody>(io)
        .await?;
    active.inc();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "pinned upstream connection ended with an error");
        }
        active.dec();
        // Wake the client side, which closes its connection in turn.
        closed.notify_one();
    });
    Ok(sender)
}

/// Boxed future type used by the request path.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Turns any error into the boxed form bodies use.
pub fn boxed<E: Into<BoxError>>(e: E) -> BoxError {
    e.into()
}
