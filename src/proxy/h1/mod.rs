//! HTTP/1.1 on a pooled upstream connection, run in the request's own task: the request head
//! written with the first piece of its body in one vectored write, the body framed (its length,
//! or chunked) and written while the answer is awaited, the answer's head parsed with httparse,
//! and its body framed (a length, chunks with trailers, or up to the close) and read by the
//! response body itself, which parks the connection again at its last byte.
//!
//! hyper's client did this in a task of its own per connection, handing each request, answer
//! and body frame between two tasks through channels; that machinery was the largest part of
//! what forwarding cost above nginx (bench/RESULTS.md, issue 21). Pinned connections (Windows
//! auth) still use hyper's client: they are few, and their end must be noticed while idle.

mod answer;
mod request;
#[cfg(test)]
mod tests;

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::body::{BoxError, ProxyBody};

pub use answer::Answer;
use answer::poll_head;
use request::{Outgoing, Sender, encode_head, frame_request};

/// Largest answer head (status line and headers) accepted: Exchange's are a few KB, but a
/// sign-in's cookies or a Negotiate challenge can be large, and hyper's client (used before)
/// took about this much (its default buffer limit, 400 KiB).
const MAX_HEAD: usize = 400 << 10;
/// Most headers an answer (or its trailers) may have.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 << 10;
/// Most informational (1xx) heads before the final one.
const MAX_INFORMATIONAL: usize = 16;
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 16 << 10;
/// Buffers written in one vectored write at most.
const WRITE_SLICES: usize = 16;

/// An upstream transport: plain TCP or TLS over it.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("upstream connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The upstream closed (or reset) the connection before a byte of an answer.
    #[error("upstream closed the connection before answering")]
    ClosedBeforeAnswer,
    #[error("upstream closed the connection in the middle of its answer")]
    Incomplete,
    #[error("upstream answer is malformed: {0}")]
    Malformed(&'static str),
    #[error("upstream answer head is over {MAX_HEAD} bytes or {MAX_HEADERS} headers")]
    HeadTooLarge,
    #[error("request body failed: {0}")]
    RequestBody(#[source] BoxError),
    #[error("request body does not match its declared length")]
    RequestLength,
    /// No answer head within the header timeout of the request's last byte.
    #[error("upstream sent no answer within {0:?} of the request")]
    HeadTimeout(std::time::Duration),
}

/// An exchange that did not get an answer, and whether the request can be sent again as it was.
pub enum Failure {
    /// Nothing of the request was written: here it is, whole.
    Unsent(Box<Request<ProxyBody>>, ExchangeError),
    /// The request was (or may have been) written; the error says what happened.
    Sent(ExchangeError),
}

impl Failure {
    pub fn into_error(self) -> ExchangeError {
        match self {
            Failure::Unsent(_, error) | Failure::Sent(error) => error,
        }
    }
}

/// Where a connection goes when its answer has been read to the end.
pub trait Park: Send + Sync {
    fn park(self: Arc<Self>, connection: Connection);
}

/// The request carries this when the client waits for `100 Continue`: the upstream's is
/// signalled here.
#[derive(Clone)]
pub struct ContinueSignal(pub Arc<Notify>);

/// The request carries this when its client speaks HTTP/2: a body the upstream answered before
/// it had all of it is then dropped (hyper resets that stream alone) rather than read to its
/// end, which only an HTTP/1.1 connection needs to serve on.
#[derive(Clone, Copy)]
pub struct Http2Client;

/// An upstream connection between exchanges: the transport, what was read but not yet used,
/// and the timer its exchanges wait for an answer head under.
pub struct Connection {
    io: Io,
    read: BytesMut,
    /// How much of `read` a search for the end of a head has been through.
    scanned: usize,
    /// Kept from one exchange to the next: pushing a registered timer's deadline later is an
    /// atomic update (tokio re-files it only when the old deadline comes), where a timer per
    /// exchange was registered with the runtime's timer wheel and taken out again, a lock each,
    /// on every request (bench/RESULTS.md, issue 21). Made at the first exchange.
    head_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Connection {
    pub fn new(io: Io) -> Connection {
        Connection {
            io,
            read: BytesMut::new(),
            scanned: 0,
            head_timer: None,
        }
    }

    /// Starts the wait for an answer head: it may last `timeout` from now.
    fn arm_head_timer(&mut self, timeout: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        match &mut self.head_timer {
            Some(timer) => timer.as_mut().reset(deadline),
            None => self.head_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Whether the wait started by [`Self::arm_head_timer`] is over (waking the task when it
    /// will be, if not).
    fn head_timer_elapsed(&mut self, cx: &mut Context<'_>) -> bool {
        self.head_timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready())
    }

    /// Whether a parked connection can take a request: the upstream has neither closed it nor
    /// sent anything unasked. A read that would block says so, and it costs no system call
    /// unless the socket became readable since its last read (tokio remembers it drained it).
    /// (Its buffer is empty: only a connection with nothing left unread is parked.)
    pub fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    /// Reads more into the buffer: the bytes read, 0 at the upstream's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_SIZE / 4 {
            self.read.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }
}

/// Sends `request` over `connection` and waits for the final answer's head, for at most
/// `head_timeout` once the request's body has all been taken (a long upload is not the upstream being
/// slow; its stalls are the body's own timeouts' job). The answer's body reads the rest and
/// parks the connection with `home` when it can take another request.
pub async fn exchange(
    mut connection: Connection,
    request: Request<ProxyBody>,
    home: Arc<dyn Park>,
    head_timeout: std::time::Duration,
) -> Result<Response<Answer>, Failure> {
    let (mut parts, body) = request.into_parts();
    let framing = frame_request(&parts.method, &mut parts.headers, &body);
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let head = encode_head(&parts.method, target, &parts.headers);
    let signal = parts.extensions.get::<ContinueSignal>().cloned();
    let head_request = parts.method == Method::HEAD;
    let drain_rest = parts.extensions.get::<Http2Client>().is_none();
    let mut sender = Sender::new(head, body, framing, signal.clone(), drain_rest);
    // The upstream refused more of the request (it may have answered and closed): its answer
    // is still read, and the connection is not used again.
    let mut abandoned = false;
    let mut waiting_for_head = false;
    let mut informational = 0;
    let answer = std::future::poll_fn(|cx| {
        loop {
            if !abandoned && !sender.is_done() {
                match sender.poll_send(&mut connection.io, cx) {
                    Poll::Ready(Err(ExchangeError::Io(_))) if sender.wrote => abandoned = true,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    _ => {}
                }
            }
            // From the moment the request's last byte was taken, as the client's side sees
            // it: an upstream that stops reading the rest is as slow as one that does not answer.
            if !waiting_for_head && (abandoned || sender.body_taken()) {
                waiting_for_head = true;
                connection.arm_head_timer(head_timeout);
            }
            let polled = poll_head(&mut connection, cx);
            if polled.is_pending() && waiting_for_head && connection.head_timer_elapsed(cx) {
                return Poll::Ready(Err(ExchangeError::HeadTimeout(head_timeout)));
            }
            let head = match ready!(polled) {
                Ok(head) => head,
                // After a 1xx the upstream has answered: closing now is not a lost request.
                Err(ExchangeError::ClosedBeforeAnswer) if informational > 0 => {
                    return Poll::Ready(Err(ExchangeError::Incomplete));
                }
                Err(error) => return Poll::Ready(Err(error)),
            };
            if head.status.is_informational() {
                informational += 1;
                if head.status == StatusCode::SWITCHING_PROTOCOLS
                    || informational > MAX_INFORMATIONAL
                {
                    return Poll::Ready(Err(ExchangeError::Malformed(
                        "unexpected informational answer",
                    )));
                }
                if head.status == StatusCode::CONTINUE
                    && let Some(ContinueSignal(seen)) = &signal
                {
                    seen.notify_one();
                }
                continue;
            }
            return Poll::Ready(Ok(head));
        }
    })
    .await;
    let head = match answer {
        Ok(head) => head,
        // Nothing written and no body taken: the request can go over another connection.
        Err(error @ ExchangeError::Io(_)) if !sender.wrote && framing == Outgoing::Empty => {
            let request = Request::from_parts(parts, super::body::empty());
            return Err(Failure::Unsent(Box::new(request), error));
        }
        Err(error) => return Err(Failure::Sent(error)),
    };
    // An answer can come before the whole request went out (an echo streams it back, a refusal
    // does not wait for it): the answer's body sends the rest as it is read. When the upstream
    // refused the rest, dropping the sender reads the client's and drops it.
    let sender = (!abandoned && !sender.is_done()).then_some(sender);
    let answer = Answer::new(connection, &head, head_request, sender, abandoned, home)
        .map_err(Failure::Sent)?;
    let mut response = Response::new(answer);
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    if let Some(reason) = head.reason {
        response.extensions_mut().insert(reason);
    }
    Ok(response)
}

/// Appends one header line, `name: value` and its line end.
pub(crate) fn push_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A chunk's size line: hexadecimal digits and a line end, written into `room` (no formatting
/// machinery, no allocation). Both chunked writers use it: request bodies upstream, answers to
/// clients (`h1_server`).
pub(crate) fn chunk_size_line(len: usize, room: &mut [u8; 18]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut at = 16;
    let mut n = len;
    loop {
        at -= 1;
        room[at] = DIGITS[n & 0xF];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    room[16] = b'\r';
    room[17] = b'\n';
    &room[at..]
}
