//! The upstream side: a keep-alive pool per proxy thread and upstream endpoint for ordinary
//! traffic, and dedicated connections pinned to one client connection for Windows auth, over
//! TCP (TCP_NODELAY, keep-alive probes) and TLS (system roots plus the configured CA). Bytes
//! pass through unchanged.
//!
//! The pool is this module's own rather than hyper-util's client: a request takes the most
//! recently used idle connection from its thread's pool (a lock no other thread takes), and the
//! response body puts it back when its last byte has been read. hyper-util's client spent a
//! spawned task, a boxed future, a keyed lookup and a rebuilt URI on every request for the same
//! job (bench/RESULTS.md, issue 21). Pooled exchanges speak HTTP/1.1 through [`super::h1`], in
//! the request's own task; pinned connections keep hyper's connection-level client, whose
//! driver notices at once when the upstream ends one.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;

use super::body::{BoxError, ProxyBody};
use super::h1::{self, Answer, Connection, ContinueSignal, ExchangeError, Failure, Io};
use super::headers::HopByHop;
use super::route::{RouteClass, Routes, UpstreamBase};

/// How long an upstream connection may be silent before the kernel probes it, so a peer that
/// vanished (a rebooted server, a dropped NAT entry) is noticed on idle pooled connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Settings shared by pooled and pinned upstream connections.
#[derive(Clone)]
pub struct UpstreamSettings {
    pub tls: Arc<ClientConfig>,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
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

/// Why a pooled exchange got no response head.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be opened: the upstream is unreachable.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection failed once the request was on its way.
    #[error(transparent)]
    Broken(ExchangeError),
    /// The request went out and no answer head came within the header timeout.
    #[error("no answer head within {0:?}")]
    HeadTimeout(Duration),
}

type Sender = SendRequest<ProxyBody>;

/// Opens a connection to `base`: TCP, and TLS over it for an `https` upstream.
async fn connect(
    base: &UpstreamBase,
    settings: &UpstreamSettings,
    connects: &Counter,
) -> Result<Io, ConnectError> {
    let (host, port) = base.socket_target();
    let tcp = connect_tcp(host, port, settings.connect_timeout).await?;
    tcp.set_nodelay(true)?;
    socket2::SockRef::from(&tcp)
        .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE))?;
    connects.inc();
    if !base.is_https() {
        return Ok(Io::Plain(tcp));
    }
    let name = ServerName::try_from(host.to_owned()).map_err(|_| ConnectError::ServerName)?;
    let tls = tokio::time::timeout(
        settings.connect_timeout,
        TlsConnector::from(settings.tls.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| ConnectError::Timeout)??;
    Ok(Io::Tls(Box::new(tls)))
}

/// Connects to the first address of `host` that answers. The timeout covers the name lookup
/// and is shared evenly by the addresses, so one dead address (a broken IPv6 route, a retired
/// server still in DNS) costs its share and the next is tried, as hyper-util's connector did.
async fn connect_tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let started = Instant::now();
    let addresses: Vec<std::net::SocketAddr> =
        tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| ConnectError::Timeout)??
            .collect();
    let share = timeout.saturating_sub(started.elapsed()) / addresses.len().max(1) as u32;
    connect_first(addresses, share).await
}

/// Connects to the first of `addresses` that answers within `share` each.
async fn connect_first(
    addresses: Vec<std::net::SocketAddr>,
    share: Duration,
) -> Result<TcpStream, ConnectError> {
    let mut last = ConnectError::Io(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "the upstream host has no address",
    ));
    for address in addresses {
        match tokio::time::timeout(share, TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(error)) => last = ConnectError::Io(error),
            Err(_) => last = ConnectError::Timeout,
        }
    }
    Err(last)
}

/// Starts hyper's HTTP/1.1 client on `io` and spawns its driver; `on_end` runs when the
/// connection has ended, whichever side ended it.
async fn handshake(io: Io, on_end: impl FnOnce() + Send + 'static) -> Result<Sender, ConnectError> {
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, ProxyBody>(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream connection ended with an error");
        }
        on_end();
    });
    Ok(sender)
}

/// The pools of one proxy thread: one per distinct upstream endpoint, shared by the route
/// classes that go there.
pub struct ThreadPools {
    /// In [`Routes::bases`] order.
    pools: [Arc<Pool>; 3],
}

impl ThreadPools {
    pub fn new(routes: &Routes, settings: &UpstreamSettings, connects: &Counter) -> ThreadPools {
        let mut made: Vec<Arc<Pool>> = Vec::with_capacity(3);
        let pools = routes.bases().map(|base| {
            let same = made.iter().find(|pool| {
                pool.base.scheme == base.scheme && pool.base.authority == base.authority
            });
            let pool = same
                .cloned()
                .unwrap_or_else(|| Arc::new(Pool::new(base, settings, connects.clone())));
            made.push(pool.clone());
            pool
        });
        ThreadPools { pools }
    }

    pub fn for_class(&self, class: RouteClass) -> &Arc<Pool> {
        &self.pools[Routes::slot(class)]
    }
}

/// Idle keep-alive connections to one upstream endpoint, most recently used last.
pub struct Pool {
    base: UpstreamBase,
    settings: UpstreamSettings,
    connects: Counter,
    idle: Mutex<Idle>,
    /// How long a connection must have been parked before a request it loses is sent again.
    replay_after_parked: Duration,
}

/// Parked at least this long, a connection may have been closed by the upstream's keep-alive
/// timer (IIS's is 120 s, nginx's 75 s, Apache's 5 s) just as a request was written to it.
const REPLAY_AFTER_PARKED: Duration = Duration::from_secs(1);

/// A copy of a request that can be sent again as it is: a safe method (RFC 9110 §9.2.1) and no
/// body. `None` for anything else.
fn replayable_copy(request: &Request<ProxyBody>) -> Option<Request<ProxyBody>> {
    use http_body::Body as _;
    if !request.method().is_safe() || !request.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(super::body::empty());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}

#[derive(Default)]
struct Idle {
    connections: VecDeque<(Connection, Instant)>,
    /// A task closes connections idle past the timeout while any are parked.
    reaper_running: bool,
}

impl Idle {
    /// Drops connections idle for `timeout` or longer at `now` (the oldest are at the front)
    /// and those the upstream has closed.
    fn prune(&mut self, now: Instant, timeout: Duration) {
        while let Some((connection, since)) = self.connections.front_mut()
            && (now.duration_since(*since) >= timeout || !connection.is_reusable())
        {
            self.connections.pop_front();
        }
    }
}

impl Pool {
    fn new(base: &UpstreamBase, settings: &UpstreamSettings, connects: Counter) -> Pool {
        Pool {
            base: base.clone(),
            settings: settings.clone(),
            connects,
            idle: Mutex::new(Idle::default()),
            replay_after_parked: REPLAY_AFTER_PARKED,
        }
    }

    /// Sends a request over an idle connection, or a new one when none is idle, and waits for
    /// the response head.
    ///
    /// A connection the upstream closes while it is parked can still look usable when it is
    /// taken (the close is in flight). A request none of which could be written is sent again
    /// on the next one. A request it took and lost is sent again only when that is safe — a
    /// method without side effects and no body — and only after the connection had been parked
    /// long enough for an upstream's keep-alive timer to have fired: copying the head for every
    /// request would cost what this pool saves. Anything else gets the error: repeating an EWS
    /// POST could send a mail twice.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<ProxyBody>,
        head_timeout: Duration,
    ) -> Result<Response<Answer>, PoolError> {
        let mut replayed = false;
        loop {
            let (connection, parked_for) = match self.take_idle() {
                Some((connection, parked_for)) => (connection, Some(parked_for)),
                // Boxed: connecting is a large state machine that a pooled request rarely
                // needs, and this future is built and moved with every request.
                None => (Connection::new(Box::pin(self.connect()).await?), None),
            };
            let replay = (!replayed
                && parked_for.is_some_and(|parked| parked >= self.replay_after_parked))
            .then(|| replayable_copy(&request))
            .flatten();
            match (
                h1::exchange(connection, request, self.clone(), head_timeout).await,
                replay,
            ) {
                (Ok(response), _) => return Ok(response),
                (Err(Failure::Unsent(unsent, _)), _) if parked_for.is_some() => request = *unsent,
                (Err(Failure::Sent(ExchangeError::ClosedBeforeAnswer)), Some(copy)) => {
                    replayed = true;
                    request = copy;
                }
                (Err(Failure::Sent(ExchangeError::HeadTimeout(waited))), _) => {
                    return Err(PoolError::HeadTimeout(waited));
                }
                (Err(failure), _) => return Err(PoolError::Broken(failure.into_error())),
            }
        }
    }

    /// The most recently parked connection that can take a request now, and how long it had
    /// been parked; the others that can no longer are dropped on the way.
    fn take_idle(&self) -> Option<(Connection, Duration)> {
        let now = Instant::now();
        let mut idle = self.idle.lock().ok()?;
        while let Some((mut connection, since)) = idle.connections.pop_back() {
            let parked_for = now.duration_since(since);
            if parked_for < self.settings.pool_idle_timeout && connection.is_reusable() {
                return Some((connection, parked_for));
            }
        }
        None
    }

    async fn connect(&self) -> Result<Io, ConnectError> {
        connect(&self.base, &self.settings, &self.connects).await
    }
}

impl h1::Park for Pool {
    /// Parks a connection that has finished its exchange, unless the pool is full.
    fn park(self: Arc<Self>, connection: Connection) {
        let now = Instant::now();
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        idle.prune(now, self.settings.pool_idle_timeout);
        if idle.connections.len() >= self.settings.pool_max_idle_per_host {
            return;
        }
        idle.connections.push_back((connection, now));
        if !idle.reaper_running {
            idle.reaper_running =
                spawn_reaper(Arc::downgrade(&self), self.settings.pool_idle_timeout);
        }
    }
}

/// Closes parked connections once idle past the timeout; ends when the pool is empty (the next
/// park starts another) or gone (a reload replaced it). Returns whether it was started (there
/// is no runtime to start it on outside one).
fn spawn_reaper(pool: Weak<Pool>, timeout: Duration) -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(timeout / 2).await;
            let Some(pool) = pool.upgrade() else { return };
            let Ok(mut idle) = pool.idle.lock() else {
                return;
            };
            idle.prune(Instant::now(), timeout);
            if idle.connections.is_empty() {
                idle.reaper_running = false;
                return;
            }
        }
    });
    true
}

/// A response body from upstream: a pooled exchange's (which parks its connection at its end)
/// or a pinned connection's.
pub enum UpstreamBody {
    Pooled(Answer),
    Pinned(Incoming),
}

impl UpstreamBody {
    /// The answer head's hop-by-hop headers, when the exchange already read them (a pooled one
    /// did, as it parsed the head).
    pub fn take_hop_by_hop(&mut self) -> Option<HopByHop> {
        match self {
            UpstreamBody::Pooled(answer) => answer.take_hop_by_hop(),
            UpstreamBody::Pinned(_) => None,
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::Pooled(answer) => Pin::new(answer).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Pinned(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Pooled(answer) => answer.is_end_stream(),
            UpstreamBody::Pinned(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::Pooled(answer) => answer.size_hint(),
            UpstreamBody::Pinned(body) => body.size_hint(),
        }
    }
}

/// An HTTP/1.1 connection owned by one client connection (NTLM/Negotiate authenticate the
/// connection, so it must never be shared or pooled).
pub struct PinnedConnection {
    pub endpoint: String,
    sender: Sender,
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
        let ended = active.clone();
        let io = connect(base, settings, connects).await?;
        let sender = handshake(io, move || {
            ended.dec();
            // Wake the client side, which closes its connection in turn.
            closed.notify_one();
        })
        .await?;
        active.inc();
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
    /// A request's [`ContinueSignal`] is signalled through hyper's informational callback.
    pub async fn send(
        &mut self,
        mut request: Request<ProxyBody>,
    ) -> Result<impl Future<Output = Result<Response<Incoming>, hyper::Error>> + use<>, hyper::Error>
    {
        if let Some(ContinueSignal(seen)) = request.extensions().get::<ContinueSignal>().cloned() {
            hyper::ext::on_informational(&mut request, move |response| {
                if response.status() == http::StatusCode::CONTINUE {
                    seen.notify_one();
                }
            });
        }
        self.sender.ready().await?;
        Ok(self.sender.send_request(request))
    }
}

/// Boxed future type used by the request path.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Turns any error into the boxed form bodies use.
pub fn boxed<E: Into<BoxError>>(e: E) -> BoxError {
    e.into()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::body::empty;

    /// How long the tests' exchanges wait for an answer head.
    const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

    /// How the test upstream treats each connection after answering a request.
    #[derive(Clone, Copy)]
    enum After {
        KeepAlive,
        /// Closes without saying so, as a server whose keep-alive timeout fired does.
        Close,
    }

    /// A loopback HTTP/1.1 upstream answering every GET with `body`; it counts connections
    /// accepted and connections still open.
    struct Upstream {
        base: UpstreamBase,
        accepted: Arc<AtomicUsize>,
        open: Arc<AtomicUsize>,
    }

    async fn upstream(body: &'static [u8], after: After) -> Upstream {
        let mut answer =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        answer.extend_from_slice(body);
        upstream_answering(answer, after).await
    }

    /// A loopback upstream answering every request head with `answer` as given.
    async fn upstream_answering(answer: Vec<u8>, after: After) -> Upstream {
        let answer: &'static [u8] = answer.leak();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, o) = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = tcp.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            if tcp.write_all(answer).await.is_err() {
                                break;
                            }
                        }
                        if matches!(after, After::Close) {
                            break;
                        }
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            base: UpstreamBase::new(&url.parse().unwrap()).unwrap(),
            accepted,
            open,
        }
    }

    fn pool(upstream: &Upstream, idle_timeout: Duration, max_idle: usize) -> Arc<Pool> {
        let settings = UpstreamSettings {
            tls: Arc::new(crate::tls::upstream_client_config(None).unwrap()),
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: idle_timeout,
            pool_max_idle_per_host: max_idle,
        };
        Arc::new(Pool::new(&upstream.base, &settings, Counter::default()))
    }

    fn get() -> Request<ProxyBody> {
        Request::builder()
            .uri("/EWS/Exchange.asmx")
            .header(http::header::HOST, "upstream")
            .body(empty())
            .unwrap()
    }

    async fn exchange(pool: &Arc<Pool>) -> bytes::Bytes {
        let response = pool.send(get(), HEAD_TIMEOUT).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    }

    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn route_classes_going_to_one_endpoint_share_its_pool() {
        let base = |url: &str| UpstreamBase::new(&url.parse().unwrap()).unwrap();
        let routes = Routes {
            ews: base("https://mail.example/"),
            graph: base("https://graph.example/v1.0"),
            autodiscover: base("https://mail.example/autodiscover-root"),
        };
        let settings = UpstreamSettings {
            tls: Arc::new(crate::tls::upstream_client_config(None).unwrap()),
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 8,
        };
        let pools = ThreadPools::new(&routes, &settings, &Counter::default());
        let pool = |class| pools.for_class(class);
        assert!(Arc::ptr_eq(
            pool(RouteClass::Ews),
            pool(RouteClass::Autodiscover)
        ));
        assert!(Arc::ptr_eq(pool(RouteClass::Ews), pool(RouteClass::Other)));
        assert!(!Arc::ptr_eq(pool(RouteClass::Ews), pool(RouteClass::Graph)));
        assert_eq!(pool(RouteClass::Graph).base.authority, "graph.example");
    }

    #[tokio::test]
    async fn an_address_that_refuses_is_passed_over_for_the_next() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refusing = closed.local_addr().unwrap();
        drop(closed);
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addresses = vec![refusing, live.local_addr().unwrap()];
        let tcp = connect_first(addresses, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(tcp.peer_addr().unwrap(), live.local_addr().unwrap());
        let error = connect_first(vec![refusing], Duration::from_secs(5)).await;
        assert!(matches!(error, Err(ConnectError::Io(_))), "{error:?}");
    }

    #[tokio::test]
    async fn a_finished_exchange_parks_its_connection_for_the_next() {
        let up = upstream(b"hello", After::KeepAlive).await;
        let pool = pool(&up, Duration::from_secs(90), 8);
        for _ in 0..200 {
            assert_eq!(&exchange(&pool).await[..], b"hello");
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.connects.get(), 1);
    }

    #[tokio::test]
    async fn an_answer_without_a_body_gives_its_connection_back_at_once() {
        let up = upstream(b"", After::KeepAlive).await;
        let pool = pool(&up, Duration::from_secs(90), 8);
        for _ in 0..20 {
            let response = pool.send(get(), HEAD_TIMEOUT).await.unwrap();
            // Nobody polls an empty body; parking must not wait for that.
            let _body = response.into_body();
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_chunked_answer_with_trailers_parks_its_connection_at_the_trailers() {
        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
            5\r\nhello\r\n0\r\nx-sum: 5\r\n\r\n";
        let up = upstream_answering(answer.to_vec(), After::KeepAlive).await;
        let pool = pool(&up, Duration::from_secs(90), 8);
        for _ in 0..3 {
            let mut body = pool.send(get(), HEAD_TIMEOUT).await.unwrap().into_body();
            // As hyper's server does: no poll after the trailers.
            while !body.frame().await.unwrap().unwrap().is_trailers() {}
            drop(body);
            until("the connection is parked", || {
                pool.idle.lock().unwrap().connections.len() == 1
            })
            .await;
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_parked_is_not_used() {
        let up = upstream(b"hello", After::Close).await;
        let pool = pool(&up, Duration::from_secs(90), 8);
        for round in 1..=20 {
            assert_eq!(&exchange(&pool).await[..], b"hello", "round {round}");
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 20);
    }

    /// Reads one request head from a blocking socket.
    fn read_head(tcp: &mut std::net::TcpStream) {
        use std::io::Read;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(tcp.read(&mut byte).unwrap(), 1, "request head cut short");
            head.push(byte[0]);
        }
    }

    /// Sends `second` over a parked connection the upstream has just closed, before the pool has
    /// seen the close: the race an upstream's keep-alive timer causes. Returns what `second`
    /// got and how many connections the pool opened.
    fn race_a_closing_connection(
        second: Request<ProxyBody>,
        replay_after_parked: Duration,
    ) -> (Result<bytes::Bytes, String>, u64) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (close, closing) = std::sync::mpsc::channel::<()>();
        let (closed, was_closed) = std::sync::mpsc::channel::<()>();
        // A blocking upstream on a thread of its own: it closes the first connection while the
        // test's runtime is blocked, so the pool has not seen the close when the next request goes.
        std::thread::spawn(move || {
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
            let (mut first, _) = listener.accept().unwrap();
            read_head(&mut first);
            first.write_all(answer).unwrap();
            closing.recv().unwrap();
            drop(first);
            closed.send(()).unwrap();
            if let Ok((mut second, _)) = listener.accept() {
                read_head(&mut second);
                let _ = second.write_all(answer);
            }
        });
        let up = Upstream {
            base: UpstreamBase::new(&url.parse().unwrap()).unwrap(),
            accepted: Arc::default(),
            open: Arc::default(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut pool = pool(&up, Duration::from_secs(90), 8);
            Arc::get_mut(&mut pool).unwrap().replay_after_parked = replay_after_parked;
            exchange(&pool).await;
            until("the connection is parked", || {
                pool.idle.lock().unwrap().connections.len() == 1
            })
            .await;
            close.send(()).unwrap();
            was_closed.recv().unwrap();
            let answer = match pool.send(second, HEAD_TIMEOUT).await {
                Ok(response) => Ok(response.into_body().collect().await.unwrap().to_bytes()),
                Err(error) => Err(error.to_string()),
            };
            (answer, pool.connects.get())
        })
    }

    #[test]
    fn a_get_lost_by_a_connection_closed_while_parked_goes_over_a_new_one() {
        let (answer, connects) = race_a_closing_connection(get(), Duration::ZERO);
        assert_eq!(&answer.unwrap()[..], b"hello");
        assert_eq!(connects, 2);
    }

    #[test]
    fn a_lost_request_is_not_sent_again_when_that_could_repeat_it() {
        let post = || {
            Request::post("/EWS/Exchange.asmx")
                .header(http::header::HOST, "upstream")
                .body(crate::proxy::body::full("<SendItem/>"))
                .unwrap()
        };
        let (answer, connects) = race_a_closing_connection(post(), Duration::ZERO);
        assert!(
            answer
                .unwrap_err()
                .contains("closed the connection before answering")
        );
        assert_eq!(connects, 1, "a POST is never sent twice");
        // A GET on a connection parked for less than the threshold is not copied either.
        let (answer, connects) = race_a_closing_connection(get(), Duration::from_secs(3600));
        assert!(answer.is_err());
        assert_eq!(connects, 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_the_connection() {
        static LARGE: [u8; 4 << 20] = [b'x'; 4 << 20];
        let up = upstream(&LARGE, After::KeepAlive).await;
        let pool = pool(&up, Duration::from_secs(90), 8);
        let mut body = pool.send(get(), HEAD_TIMEOUT).await.unwrap().into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        until("the half-read connection is closed", || {
            up.open.load(Ordering::SeqCst) == 0
        })
        .await;
        assert_eq!(exchange(&pool).await.len(), LARGE.len());
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn parked_connections_close_after_the_idle_timeout() {
        let up = upstream(b"hello", After::KeepAlive).await;
        let pool = pool(&up, Duration::from_millis(200), 8);
        exchange(&pool).await;
        until("the idle connection is closed", || {
            up.open.load(Ordering::SeqCst) == 0
        })
        .await;
        let idle = pool.idle.lock().unwrap();
        assert!(idle.connections.is_empty());
        assert!(!idle.reaper_running, "the reaper stops with nothing parked");
    }

    #[tokio::test]
    async fn the_pool_parks_no_more_than_its_idle_limit() {
        let up = upstream(b"hello", After::KeepAlive).await;
        let pool = pool(&up, Duration::from_secs(90), 2);
        let mut bodies = Vec::new();
        for _ in 0..5 {
            bodies.push(pool.send(get(), HEAD_TIMEOUT).await.unwrap().into_body());
        }
        for body in bodies {
            body.collect().await.unwrap();
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 5);
        until("the connections over the limit are closed", || {
            up.open.load(Ordering::SeqCst) == 2
        })
        .await;
        exchange(&pool).await;
        assert_eq!(up.accepted.load(Ordering::SeqCst), 5);
    }
}
