//! The client-facing server: the accept loop under a connection budget, TLS with its handshake
//! timeout, HTTP/1.1 or HTTP/2 by ALPN, and the per-connection shutdown that both draining and
//! a closed pinned upstream connection trigger. Body contents are not touched here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::body::{ClientBody, ProxyBody};
use super::framing::FramingGuard;
use super::h1_server::{self, Ended};
use super::sending::{CountedTcp, SendCall, SendProgress};
use super::{ConnContext, Proxy};

/// Binds the client listener with a deep accept backlog; `shared` lets the proxy's other
/// threads bind the same address (`SO_REUSEPORT`: the kernel spreads new connections). The
/// listener is not tied to a runtime yet: [`serve`] registers it with the one it runs on.
pub fn bind(addr: SocketAddr, shared: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if shared {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(4096)?.into_std()
}

std::thread_local! {
    /// Which proxy thread this is (0 on the shared runtime): picks the thread's upstream pool.
    static THREAD_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The proxy thread running the caller (0 outside the proxy's own threads).
pub fn thread_index() -> usize {
    THREAD_INDEX.with(std::cell::Cell::get)
}

/// The proxy's own threads (`runtime.model = "per_core"`), nginx's model: each runs a
/// single-threaded runtime with its own `SO_REUSEPORT` listener, so a connection, its requests
/// and its upstream connections stay on one thread with no work stealing or cross-thread
/// wake-ups. Dropping this lets the threads go: connections still open are closed.
pub struct ProxyThreads {
    release: watch::Sender<bool>,
}

impl Drop for ProxyThreads {
    fn drop(&mut self) {
        let _ = self.release.send(true);
    }
}

/// Starts `threads` proxy threads, the first on `first` (bound with `shared`), the others on
/// listeners of their own at its address. Returns them and a task that ends once every thread
/// has stopped accepting after `stop`; their connections go on until [`drain`] sees them close
/// or the [`ProxyThreads`] are dropped.
pub fn serve_on_threads(
    first: std::net::TcpListener,
    threads: usize,
    proxy: Arc<Proxy>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<(ProxyThreads, tokio::task::JoinHandle<()>)> {
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads.max(1) {
        listeners.push(bind(addr, true)?);
    }
    let (release, released) = watch::channel(false);
    let mut accepting = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let (stopped_accepting, accepting_done) = tokio::sync::oneshot::channel::<()>();
        accepting.push(accepting_done);
        let (proxy, stop, mut released) = (proxy.clone(), stop.clone(), released.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            // Within Linux's 15 characters, and telling gateways in one process apart.
            .name(format!("proxy:{}/{index}", addr.port()))
            .spawn(move || {
                THREAD_INDEX.with(|i| i.set(index));
                // Returning drops the runtime: what still runs on it (connections past the
                // grace period, the housekeeping) ends with it.
                runtime.block_on(async move {
                    // Each thread has its own allocator heap to give back.
                    tokio::spawn(crate::common::memory::give_back_freed_memory());
                    serve(listener, proxy, Budget::AfterAccept, stop).await;
                    drop(stopped_accepting);
                    // Its connections finish under the gateway's drain, until it lets go.
                    let _ = released.wait_for(|released| *released).await;
                });
            })?;
    }
    let all_stopped = tokio::spawn(async move {
        for done in accepting {
            let _ = done.await;
        }
    });
    Ok((ProxyThreads { release }, all_stopped))
}

/// When a listener takes budget (a slot under `limits.max_connections`) for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Before accepting: beyond the limit, clients queue in the backlog instead of being
    /// accepted and starved. Right for the one listener of the shared runtime.
    BeforeAccept,
    /// After accepting: with one listener per proxy thread, a listener waiting for budget
    /// before anyone connects would hold budget another thread's client needs. Beyond the
    /// limit, each thread holds at most one accepted connection until budget frees; the rest
    /// queue in the backlog.
    AfterAccept,
}

/// Accepts connections until `stop` turns true. Connections already open are told to finish
/// their in-flight requests and close; [`drain`] waits for them.
pub async fn serve(
    listener: std::net::TcpListener,
    proxy: Arc<Proxy>,
    budget: Budget,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "cannot serve on the client listener");
            return;
        }
    };
    loop {
        if *stop.borrow() {
            return;
        }
        let early = match budget {
            Budget::BeforeAccept => {
                let Some(permit) = take_budget(&proxy, &mut stop).await else {
                    return;
                };
                Some(permit)
            }
            Budget::AfterAccept => None,
        };
        let (tcp, peer) = tokio::select! {
            biased;
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match early {
            Some(permit) => Some(permit),
            None => take_budget(&proxy, &mut stop).await,
        };
        let Some(permit) = permit else {
            return;
        };
        proxy.metrics.connections_accepted.inc();
        tokio::spawn(serve_connection(
            proxy.clone(),
            tcp,
            peer,
            stop.clone(),
            permit,
        ));
    }
}

/// A slot under the connection limit, waiting for one to free; `None` once `stop` turns true.
async fn take_budget(
    proxy: &Proxy,
    stop: &mut watch::Receiver<bool>,
) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        biased;
        _ = stop.changed() => None,
        permit = proxy.connections.clone().acquire_owned() => permit.ok(),
    }
}

/// Waits until every client connection has closed, or `grace` has passed. Returns whether all
/// closed in time.
pub async fn drain(proxy: &Proxy, grace: Duration) -> bool {
    let all = u32::try_from(proxy.max_connections).unwrap_or(u32::MAX);
    tokio::time::timeout(grace, proxy.connections.acquire_many(all))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Counts itself in a gauge while it lives.
struct GaugeGuard<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> GaugeGuard<'a> {
    fn enter(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One client connection's task. Its own state is kept small, because 10 000 idle keep-alive
/// clients each keep one: the TLS handshake, hyper's connection and HTTP/2 run in boxes that
/// are gone once done (or while parked), and the TLS session itself is boxed.
///
/// A block, not an `async fn`, as is `serve_http1`: an `async fn`'s state keeps room for its
/// arguments beside the locals they move into for the whole of its life, so every parked
/// connection carried its transport, peer and handles twice (`-Zprint-type-sizes`).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice in every parked connection"
)]
fn serve_connection(
    proxy: Arc<Proxy>,
    tcp: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        // The connection's slot under the limit, held for as long as it lives: naming it here
        // is what moves it into the task (nothing else in the block uses it).
        let _slot = &permit;
        let _active = GaugeGuard::enter(&proxy.metrics.connections_active);
        let _ = tcp.set_nodelay(true);
        if proxy.state().tls_acceptor.is_some() {
            let Some(tls) = Box::pin(accept_tls(&proxy, tcp)).await else {
                return;
            };
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                Box::pin(drive_http2(&proxy, tls, peer, true, stop)).await;
            } else {
                // `http/1.1` or no ALPN at all: HTTP/2 over TLS is only ever negotiated by ALPN
                // (RFC 9113 §3.2).
                let io = guard(tls, &proxy.state().limits, &proxy);
                serve_http1(&proxy, io, peer, true, stop, BytesMut::new()).await;
            }
            return;
        }
        // Plaintext: HTTP/1.1, or HTTP/2 with prior knowledge (its preface tells).
        let Some((mut io, sniffed)) = Box::pin(sniff_plaintext(&proxy, tcp, stop.clone())).await
        else {
            return;
        };
        if sniffed[..] == *H2_PREFACE {
            io.replay(&sniffed);
            Box::pin(drive_http2(&proxy, io, peer, false, stop)).await;
        } else {
            serve_http1(&proxy, io, peer, false, stop, sniffed).await;
        }
    }
}

/// Waits for a plaintext connection's first bytes, which tell HTTP/2 with prior knowledge from
/// HTTP/1.1 (its preface); they go to whichever serves it. A connection that has sent nothing
/// yet closes as soon as draining starts (clients open spare ones).
async fn sniff_plaintext(
    proxy: &Proxy,
    tcp: TcpStream,
    mut stop: watch::Receiver<bool>,
) -> Option<(FramingGuard<TcpStream>, BytesMut)> {
    let header_read_timeout = proxy.state().limits.header_read_timeout;
    if *stop.borrow_and_update() {
        return None;
    }
    let sniffed = tokio::select! {
        biased;
        _ = stop.changed() => return None,
        sniffed = tokio::time::timeout(header_read_timeout, sniff(&tcp)) => sniffed,
    };
    // `None` when closed, failed or silent before sending anything.
    let Ok(Ok(Some((prefix, len)))) = sniffed else {
        return None;
    };
    let io = guard(tcp, &proxy.state().limits, proxy);
    Some((io, BytesMut::from(&prefix[..len])))
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the first bytes of a plaintext connection: the whole HTTP/2 preface, or as soon as
/// they differ from it. `None` when the client closes first.
async fn sniff(tcp: &TcpStream) -> std::io::Result<Option<([u8; 24], usize)>> {
    let mut prefix = [0u8; 24];
    let mut len = 0;
    loop {
        tcp.readable().await?;
        match tcp.try_read(&mut prefix[len..]) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                len += n;
                if len == prefix.len() || !H2_PREFACE.starts_with(&prefix[..len]) {
                    return Ok(Some((prefix, len)));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// The client's TLS handshake under its timeout; the session comes back boxed, so a connection
/// keeps a pointer to it rather than room for it.
async fn accept_tls(proxy: &Proxy, tcp: TcpStream) -> Option<Box<TlsStream>> {
    let metrics = &proxy.metrics;
    // A reload while this connection lives must not keep the old state alive: the acceptor
    // is taken from the state only for the handshake.
    let (acceptor, timeout) = {
        let state = proxy.state();
        (
            state.tls_acceptor.clone()?,
            state.limits.tls_handshake_timeout,
        )
    };
    match tokio::time::timeout(timeout, acceptor.accept(CountedTcp::new(tcp))).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(error)) => {
            metrics.tls_handshake_failures.inc();
            tracing::debug!(%error, "client TLS handshake failed");
            None
        }
        Err(_) => {
            metrics.tls_handshake_failures.inc();
            tracing::debug!("client TLS handshake timed out");
            None
        }
    }
}

type TlsStream = tokio_rustls::server::TlsStream<CountedTcp>;

fn guard<IO>(io: IO, limits: &super::Limits, proxy: &Proxy) -> FramingGuard<IO> {
    FramingGuard::new(io, limits.max_header_bytes, limits.max_header_count)
        .counting(proxy.metrics.refusals.clone())
}

/// Whether hyper is idle between two requests on an HTTP/1.1 connection: no exchange in flight,
/// the client's bytes so far ending exactly at a request boundary, hyper asking the socket for
/// more (so nothing it read is left to decode: a request body an early answer left unread is
/// still decoded — drained — from hyper's buffer before it asks), and every response byte
/// written and flushed (hyper flushes after each write pass; `pipeline_flush` stays off). Only
/// then may the connection drop hyper's state without losing anything. Written by the
/// connection's IO wrapper and its service, read by its own task (atomics only because the
/// types must be `Send`).
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// The client's bytes so far end exactly at a request boundary.
    at_boundary: AtomicBool,
    /// hyper's last read found the socket empty.
    waiting_for_input: AtomicBool,
    /// Reads that brought bytes: tells a connection idle all along from one that was busy
    /// in between.
    reads: AtomicU64,
    /// Bytes were written since the last completed flush.
    unflushed: AtomicBool,
    /// The client's bytes so far end inside a request head: which one (one more than the
    /// heads read whole before it, so each pending head is told apart), or 0 for none.
    pending_head: AtomicU64,
    /// A write to the client is waiting for room (the client is not reading): which wait of
    /// the serving stretch (`sending::SendProgress`, each told from the one before), or 0.
    send_stalled: AtomicU64,
}

impl Activity {
    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self.at_boundary.load(Ordering::Relaxed)
            && self.waiting_for_input.load(Ordering::Relaxed)
            && !self.unflushed.load(Ordering::Relaxed)
    }

    /// The request head that has begun and is not finished while nothing else is going on:
    /// the wait the slow-head timeout bounds (see `pending_head`).
    fn head_waiting(&self) -> Option<u64> {
        let head = self.pending_head.load(Ordering::Relaxed);
        (head != 0 && self.in_flight.load(Ordering::Relaxed) == 0).then_some(head)
    }

    /// The write to the client that is waiting for room, if one is: the wait `send_timeout`
    /// bounds (see `send_stalled`).
    fn send_waiting(&self) -> Option<u64> {
        let stall = self.send_stalled.load(Ordering::Relaxed);
        (stall != 0).then_some(stall)
    }
}

/// One exchange in flight, from the service call until its response body is done with (sent
/// or dropped).
struct InFlight(Arc<ConnContext>);

impl InFlight {
    fn begin(ctx: &Arc<ConnContext>) -> InFlight {
        ctx.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(ctx.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its exchange when hyper is done with it.
    pub struct Finishing {
        #[pin]
        body: ProxyBody,
        _exchange: InFlight,
    }
}

impl http_body::Body for Finishing {
    type Data = bytes::Bytes;
    type Error = super::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The request path for one client connection, counting exchanges in flight.
fn exchange_service(
    proxy: &Arc<Proxy>,
    ctx: &Arc<ConnContext>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Finishing>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<http::Response<Finishing>, Infallible>>
             + Send
             + 'static,
> + Send
+ Unpin
+ 'static {
    let (proxy, ctx) = (proxy.clone(), ctx.clone());
    hyper::service::service_fn(move |request| {
        let exchange = InFlight::begin(&ctx);
        let proxy = proxy.clone();
        // Boxed: hyper moves the exchange's future into its dispatcher; this way it moves a
        // pointer, not forwarding's state machine (a few KiB). The exchange's own handle on the
        // connection serves as the request path's.
        Box::pin(async move {
            let request = request.map(ClientBody::Left);
            let response = super::stack::exchange(&proxy, &exchange.0, request).await;
            Ok(response.map(|body| Finishing {
                body,
                _exchange: exchange,
            }))
        })
    })
}

pin_project_lite::pin_project! {
    /// Reports to [`Activity`] what the connection's bytes say about hyper's state.
    struct Watched<IO> {
        #[pin]
        io: FramingGuard<IO>,
        ctx: Arc<ConnContext>,
        sending: SendProgress,
    }
}

impl<IO> Watched<IO> {
    fn new(io: FramingGuard<IO>, ctx: Arc<ConnContext>) -> Self {
        // A wait left from an earlier stretch is not this one's (its writes start afresh).
        ctx.activity.send_stalled.store(0, Ordering::Relaxed);
        Watched {
            io,
            ctx,
            sending: SendProgress::default(),
        }
    }
}

impl<IO: Parkable> Watched<IO> {
    /// Notes a write's (or flush's) outcome for `send_timeout`: [`Activity`] learns when a
    /// wait for room begins and ends, its atomic written only then.
    fn note_send<T>(
        self: Pin<&mut Self>,
        call: SendCall,
        result: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        let this = self.project();
        let socket_sent = this.io.as_ref().get_ref().get_ref().socket_sent();
        if let Some(waiting) = this.sending.note(call, result.is_pending(), socket_sent) {
            this.ctx
                .activity
                .send_stalled
                .store(waiting.unwrap_or(0), Ordering::Relaxed);
        }
        result
    }
}

impl<IO: AsyncRead> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut this = self.project();
        let result = this.io.as_mut().poll_read(cx, buf);
        let activity = &this.ctx.activity;
        activity
            .waiting_for_input
            .store(result.is_pending(), Ordering::Relaxed);
        if result.is_ready() {
            let boundary = this.io.at_request_boundary();
            activity.at_boundary.store(boundary, Ordering::Relaxed);
            let pending_head = if this.io.head_pending() {
                this.io.heads_read() + 1
            } else {
                0
            };
            activity.pending_head.store(pending_head, Ordering::Relaxed);
            activity.reads.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl<IO: AsyncWrite + Parkable> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.as_mut().project();
        this.ctx.activity.unflushed.store(true, Ordering::Relaxed);
        let result = this.io.poll_write(cx, buf);
        self.note_send(SendCall::Write, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.as_mut().project();
        this.ctx.activity.unflushed.store(true, Ordering::Relaxed);
        let result = this.io.poll_write_vectored(cx, bufs);
        self.note_send(SendCall::Write, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.as_mut().project();
        let result = this.io.poll_flush(cx);
        if let Poll::Ready(Ok(())) = result {
            this.ctx.activity.unflushed.store(false, Ordering::Relaxed);
        }
        self.note_send(SendCall::Flush, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = self.as_mut().project().io.poll_shutdown(cx);
        self.note_send(SendCall::Flush, result)
    }
}

/// A transport an idle connection can wait on without any buffer: its socket's readiness.
pub trait Parkable {
    /// Whether nothing is buffered inside the transport itself, so the socket's readiness is
    /// the whole truth: a TLS session may hold decrypted bytes, or records to send.
    fn settled(&self) -> bool;
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;
    /// Bytes the socket has taken, where the transport buffers writes of its own (TLS): one it
    /// accepted has not necessarily gone. `None`: a write that returns has gone.
    fn socket_sent(&self) -> Option<u64> {
        None
    }
}

impl Parkable for TcpStream {
    fn settled(&self) -> bool {
        true
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl<T: Parkable> Parkable for Box<T> {
    fn settled(&self) -> bool {
        (**self).settled()
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        (**self).poll_read_ready(cx)
    }

    fn socket_sent(&self) -> Option<u64> {
        (**self).socket_sent()
    }
}

impl Parkable for TlsStream {
    fn settled(&self) -> bool {
        let (_, session) = self.get_ref();
        // `wants_read` is false while decrypted bytes wait to be read.
        session.wants_read() && !session.wants_write()
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_ref().0.tcp().poll_read_ready(cx)
    }

    fn socket_sent(&self) -> Option<u64> {
        Some(self.get_ref().0.sent())
    }
}

/// How long a connection must stay idle before it parks: parking and waking cost a few
/// microseconds, which a busy connection (its next request within milliseconds) should not pay
/// on every request.
pub(super) const PARK_AFTER: Duration = Duration::from_millis(50);

/// The slow-head timeout (see `serve_until_idle`) ends hyper's connection without a word from
/// hyper; a client that had started a request (its head's first bytes are in hyper's buffer)
/// gets `408` first, as every response the gateway makes itself: body, `x-trackgate-error`,
/// counted. An idle keep-alive connection (nothing started) just closes, as RFC 9112 §9.6 lets
/// a server do. The write is bounded: a client that does not read does not hold the task.
async fn answer_slow_head<IO>(proxy: &Proxy, mut io: FramingGuard<IO>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt as _;
    proxy.metrics.record_error("client_timeout");
    let answer = async {
        io.write_all(super::respond::SLOW_HEAD_ANSWER).await?;
        io.shutdown().await
    };
    if tokio::time::timeout(std::time::Duration::from_secs(1), answer)
        .await
        .is_err()
    {
        tracing::debug!("a slow client did not take its 408");
    }
}

/// Serves HTTP/1.1 on one client connection: the gateway's own loop (`h1_server`) serves
/// what nearly every client sends, and hands hyper the rest, request by request, with what it
/// read of it replayed. Between requests, once idle for [`PARK_AFTER`], the connection parks:
/// the serving state (read buffer; for hyper its connection, 8 KiB read and write buffers,
/// parser and dispatcher state, timers) is dropped and only the transport is kept until the
/// client sends again, or stays silent for `header_read_timeout` and is closed. 10 000 idle
/// keep-alive clients then cost sockets, not buffers. `read`: bytes already read (a sniff's).
fn serve_http1<IO>(
    proxy: &Arc<Proxy>,
    mut io: FramingGuard<IO>,
    peer: SocketAddr,
    tls: bool,
    mut stop: watch::Receiver<bool>,
    mut read: BytesMut,
) -> impl std::future::Future<Output = ()> + '_
where
    IO: AsyncRead + AsyncWrite + Parkable + Unpin + Send + 'static,
{
    let ctx = Arc::new(ConnContext::new(peer, tls));
    // A block, not an `async fn` (see `serve_connection`): the transport is kept once.
    async move {
        loop {
            // Boxed, so a parked connection's task does not keep room for the serving state,
            // the timers and the slow-client answer: only the transport and a few words remain.
            let taken = std::mem::take(&mut read);
            let ended = Box::pin(h1_server::serve(proxy, io.get_mut(), &ctx, &stop, taken));
            let idle_limit = match ended.await {
                Ended::Closed { linger } => {
                    if linger {
                        // Nothing more goes upstream for this client: its pinned connections
                        // go now, not after the linger.
                        ctx.pinned.lock().await.clear();
                        // The transport itself: the loop's bytes never passed the guard, whose
                        // tracker would judge what follows them out of step.
                        discard_until_closed(io.get_mut()).await;
                    }
                    return;
                }
                Ended::SlowHead => {
                    answer_slow_head(proxy, io).await;
                    return;
                }
                Ended::Idle => proxy.state().limits.header_read_timeout,
                Ended::HandOff(pending) => {
                    proxy.metrics.http1_handoffs.inc();
                    io.replay(&pending);
                    ctx.activity
                        .at_boundary
                        .store(io.at_request_boundary(), Ordering::Relaxed);
                    let serving = Box::pin(serve_until_idle(proxy, io, &ctx, &stop));
                    let Some((idle, idle_limit)) = serving.await else {
                        return;
                    };
                    io = idle;
                    idle_limit
                }
            };
            if !io.get_ref().settled() {
                // The transport holds bytes of its own (TLS): records to send — an alert the
                // session queued, say for a renegotiation it refused — go out first (else the
                // connection would never settle, park or time out); decrypted bytes are served
                // without waiting.
                let flushed = tokio::time::timeout(
                    proxy.state().limits.send_timeout,
                    tokio::io::AsyncWriteExt::flush(&mut io),
                );
                if !matches!(flushed.await, Ok(Ok(()))) {
                    return;
                }
                tokio::task::consume_budget().await;
                continue;
            }
            let parked = GaugeGuard::enter(&proxy.metrics.connections_parked);
            let woke = tokio::select! {
                biased;
                _ = stop.changed() => false, // draining: an idle connection just closes
                _ = ctx.upstream_closed.notified() => false,
                ready = tokio::time::timeout(
                    idle_limit,
                    std::future::poll_fn(|cx| io.get_ref().poll_read_ready(cx)),
                ) => matches!(ready, Ok(Ok(()))),
            };
            drop(parked);
            if !woke {
                return;
            }
        }
    }
}

/// Serves requests until the connection ends (`None`) or has been idle for [`PARK_AFTER`]:
/// then hyper's state is dropped and the transport handed back with the idle limit to park
/// under.
async fn serve_until_idle<IO>(
    proxy: &Arc<Proxy>,
    io: FramingGuard<IO>,
    ctx: &Arc<ConnContext>,
    stop: &watch::Receiver<bool>,
) -> Option<(FramingGuard<IO>, Duration)>
where
    IO: AsyncRead + AsyncWrite + Parkable + Unpin + Send + 'static,
{
    let state = proxy.state();
    let watched = Watched::new(io, ctx.clone());
    let mut conn = state
        .http1
        .serve_connection(TokioIo::new(watched), exchange_service(proxy, ctx));
    let idle_limit = state.limits.header_read_timeout;
    let send_limit = state.limits.send_timeout;
    // A reload while this connection lives must not keep the old state alive.
    drop(state);
    let mut closing = *stop.borrow();
    if closing {
        Pin::new(&mut conn).graceful_shutdown();
    }
    // One clock read for the three timers below, each pushed later when armed.
    let started = tokio::time::Instant::now();
    // Armed when hyper turns idle; parks if it stayed idle, with no read in between, until
    // it fires. A busy connection re-arms it at most once per `PARK_AFTER`, not per request.
    let park_timer = tokio::time::sleep_until(started + PARK_AFTER);
    tokio::pin!(park_timer);
    let close = close_requested(stop, ctx);
    tokio::pin!(close);
    // The slow-head timeout, in place of hyper's, which made, registered and dropped a timer
    // for every request (4 % of a forwarded request's instructions, bench/RESULTS.md). Armed
    // only when a read leaves a request head unfinished with nothing else going on, which a
    // head that arrives whole in one read (nearly every head) never does; a connection with
    // nothing begun is the park's to close (`idle_limit`).
    let head_timer = tokio::time::sleep_until(started + idle_limit);
    tokio::pin!(head_timer);
    // Armed for this pending head (`Activity::pending_head`; `None`: disarmed).
    let mut head_armed: Option<u64> = None;
    // A client that does not read its answer: armed, the same way, when a write has to wait
    // for room, which a client that reads never makes it do for long.
    let send_timer = tokio::time::sleep_until(started + send_limit);
    tokio::pin!(send_timer);
    let mut send_armed: Option<u64> = None;
    let mut armed_at: Option<u64> = None;
    let mut slow_head = false;
    let mut finished = false;
    loop {
        tokio::select! {
            biased;
            // hyper flushes the answer and shuts the transport's sending side (TLS:
            // close_notify, then a half-close); the socket itself stays open for
            // `discard_until_closed`.
            result = &mut conn => {
                match result {
                    Ok(()) => {
                        finished = true;
                        break;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "client connection ended with an error");
                        return None;
                    }
                }
            }
            () = close.as_mut(), if !closing => {
                closing = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            // A head begun and left unfinished arms the timer, its end (or an exchange
            // starting) disarms it, and a later head found unfinished in the same pass gets a
            // deadline of its own.
            waiting = wait_changed(head_armed, || ctx.activity.head_waiting()) => {
                rearm(head_timer.as_mut(), &mut head_armed, waiting, idle_limit);
            }
            () = &mut head_timer, if head_armed.is_some() => {
                slow_head = true;
                break;
            }
            // Likewise each write that has to wait for room; one that goes disarms it.
            waiting = wait_changed(send_armed, || ctx.activity.send_waiting()) => {
                rearm(send_timer.as_mut(), &mut send_armed, waiting, send_limit);
            }
            () = &mut send_timer, if send_armed.is_some() => {
                // Nothing more can reach this client; what it was sent is dropped with the
                // connection, and an upstream answer half read is not pooled again.
                proxy.metrics.record_error("client_send_timeout");
                tracing::debug!("a client did not read its answer within send_timeout; closing");
                return None;
            }
            // Not a waker-driven future: the state only changes while hyper runs, which is
            // this task, and every wake polls this branch again after the connection.
            () = std::future::poll_fn(|_| {
                if ctx.activity.idle() { Poll::Ready(()) } else { Poll::Pending }
            }), if !closing && armed_at.is_none() => {
                armed_at = Some(ctx.activity.reads.load(Ordering::Relaxed));
                park_timer.as_mut().reset(tokio::time::Instant::now() + PARK_AFTER);
            }
            () = &mut park_timer, if armed_at.is_some() && !closing => {
                let quiet = armed_at.take() == Some(ctx.activity.reads.load(Ordering::Relaxed));
                if quiet && ctx.activity.idle() {
                    break;
                }
            }
        }
    }
    let hyper::server::conn::http1::Parts {
        io: watched,
        read_buf,
        service,
        ..
    } = conn.into_parts();
    let io = watched.into_inner().io;
    if finished {
        drop((read_buf, service));
        // Nothing more goes upstream for this client: its pinned connections go now, not
        // after the linger.
        ctx.pinned.lock().await.clear();
        discard_until_closed(io).await;
        return None;
    }
    if slow_head {
        // A head started and not finished in time; nothing started is an idle close.
        if !read_buf.is_empty() {
            answer_slow_head(proxy, io).await;
        }
        return None;
    }
    if !read_buf.is_empty() {
        // Cannot happen when `Activity` is right; if it ever does, hyper's reading state is
        // gone and these bytes cannot be judged again, so the connection ends here.
        tracing::debug!(
            bytes = read_buf.len(),
            "bytes left in hyper's buffer at an idle boundary; closing"
        );
        return None;
    }
    // Dropped before parking: even empty, this `Bytes` keeps hyper's whole read buffer.
    drop((read_buf, service));
    Some((io, idle_limit))
}

/// Resolves with `waiting()` once it differs from `armed`: a wait the connection bounds began,
/// ended, or another took its place. Not waker-driven: what it reads changes only while hyper
/// runs, which is the connection's own task, and every wake polls it again after hyper.
fn wait_changed(
    armed: Option<u64>,
    waiting: impl Fn() -> Option<u64>,
) -> impl std::future::Future<Output = Option<u64>> {
    std::future::poll_fn(move |_| {
        let now = waiting();
        if now == armed {
            Poll::Pending
        } else {
            Poll::Ready(now)
        }
    })
}

/// Arms `timer` for a new wait, `limit` from now (the timer is pushed later, not made anew);
/// `None` leaves it disarmed.
fn rearm(
    timer: Pin<&mut tokio::time::Sleep>,
    armed: &mut Option<u64>,
    waiting: Option<u64>,
    limit: Duration,
) {
    *armed = waiting;
    if waiting.is_some() {
        timer.reset(tokio::time::Instant::now() + limit);
    }
}

/// Resolves once a serving connection should finish its in-flight requests and close: the
/// gateway is draining (`stop`), or a pinned upstream connection has closed and taken its
/// authentication with it.
///
/// Both are waited on by futures made once and polled again only when they may have fired.
/// Made afresh in the connection's `select!`, each registered with (and then left) its
/// notifier's waiter list on every wake of the connection, three per forwarded request, and
/// polling one already registered still takes its notifier's lock: 3 % of a forwarded
/// request's instructions together (bench/RESULTS.md). Draining waits on a copy of `stop`, so
/// `stop` itself says cheaply whether it changed; only a connection that has a pinned
/// upstream connection (`has_pinned`, never unset) can be told one closed.
pub(super) async fn close_requested(stop: &watch::Receiver<bool>, ctx: &ConnContext) {
    let mut copy = stop.clone();
    // Out of tokio's task budget: a first poll refused for budget would leave it unregistered,
    // and it is polled again only once `stop` says it changed, which nothing would then wake.
    let draining = tokio::task::unconstrained(copy.changed());
    tokio::pin!(draining);
    let upstream_closed = ctx.upstream_closed.notified();
    tokio::pin!(upstream_closed);
    let mut registered = false;
    std::future::poll_fn(|cx| {
        if (!registered || stop.has_changed().unwrap_or(true))
            && draining.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(());
        }
        registered = true;
        if ctx.has_pinned.load(Ordering::Acquire) && upstream_closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
}

/// How long a closing connection waits for the client's next bytes before closing anyway.
const LINGER_QUIET: Duration = Duration::from_secs(1);
/// How long a closing connection reads and discards at most.
const LINGER_LIMIT: Duration = Duration::from_secs(5);

/// Closes a connection hyper has finished with the way nginx's `lingering_close` does. hyper
/// has written the answer and shut the sending side, so the client reads the answer and then
/// the end; whatever the client still sends — the rest of a body refused with 413, or one the
/// upstream answered early — is read and discarded until the client closes too, falls quiet
/// for [`LINGER_QUIET`] or [`LINGER_LIMIT`] passes (a drain's grace is longer). Closing with
/// those bytes unread would make the kernel answer them with a reset, and a reset can reach
/// the client before it has read the answer.
async fn discard_until_closed<IO>(mut io: IO)
where
    IO: AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + LINGER_LIMIT;
    let mut discard = vec![0u8; 8192];
    loop {
        let quiet = (tokio::time::Instant::now() + LINGER_QUIET).min(deadline);
        match tokio::time::timeout_at(quiet, io.read(&mut discard)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// Serves HTTP/2 on one client connection until it ends, shutting it down gracefully on drain
/// or when a pinned upstream connection closes.
async fn drive_http2<IO>(
    proxy: &Arc<Proxy>,
    io: IO,
    peer: SocketAddr,
    tls: bool,
    stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(ConnContext::new(peer, tls));
    let conn = proxy
        .state()
        .http2
        .serve_connection(TokioIo::new(io), exchange_service(proxy, &ctx));
    tokio::pin!(conn);
    let mut closing = *stop.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    let close = close_requested(&stop, &ctx);
    tokio::pin!(close);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "client connection ended with an error");
                }
                return;
            }
            () = close.as_mut(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
