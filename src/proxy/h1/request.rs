//! The request side of an exchange: its body's framing, its head on the wire, and the
//! writer that sends both.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::Method;
use http::header::{self, HeaderMap, HeaderValue};
use http_body::Body;
use tokio::io::AsyncWrite;

use super::{ContinueSignal, ExchangeError, Io, WRITE_SLICES};
use crate::proxy::body::ProxyBody;
use crate::proxy::headers::declared_length;

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outgoing {
    /// No body at all.
    Empty,
    Length(u64),
    Chunked,
}

/// Decides the request body's framing as hyper's client did, adjusting the headers: a
/// `Transfer-Encoding` (one is added for a body of unknown length) means chunked and drops any
/// `Content-Length`; else a valid `Content-Length`, else the body's known length is declared.
/// A GET, HEAD or CONNECT of unknown length is sent without a body.
pub(super) fn frame_request(
    method: &Method,
    headers: &mut HeaderMap,
    body: &ProxyBody,
) -> Outgoing {
    if body.is_end_stream() {
        headers.remove(header::TRANSFER_ENCODING);
        return Outgoing::Empty;
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
        if !crate::proxy::headers::ends_chunked(headers) {
            headers.append(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        return Outgoing::Chunked;
    }
    if let Some(length) = declared_length(headers) {
        return Outgoing::Length(length);
    }
    if let Some(length) = body.size_hint().exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        return Outgoing::Length(length);
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::CONNECT) {
        return Outgoing::Empty;
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    Outgoing::Chunked
}

/// The request line and headers, as they go on the wire (names in lower case, as hyper sent).
/// Sized exactly: a vector filled to its capacity becomes `Bytes` without another allocation.
pub(super) fn encode_head(method: &Method, target: &str, headers: &HeaderMap) -> Bytes {
    let mut head = Vec::with_capacity(head_len(method, target, headers));
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    push_fields(&mut head, headers);
    Bytes::from(head)
}

/// How long [`encode_head`] makes the head.
pub(super) fn head_len(method: &Method, target: &str, headers: &HeaderMap) -> usize {
    let fields = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + ": ".len() + value.len() + "\r\n".len())
        .sum::<usize>();
    let line = method.as_str().len() + " ".len() + target.len() + " HTTP/1.1\r\n".len();
    line + fields + "\r\n".len()
}

/// Appends `fields` as lines and the blank line that ends them.
fn push_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        super::push_field(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the request: the queued bytes, then the body's frames as they come, framed.
pub(super) struct Sender {
    pub(super) queue: VecDeque<Bytes>,
    pub(super) body: Option<ProxyBody>,
    pub(super) framing: Outgoing,
    /// What a declared length still allows.
    pub(super) remaining: u64,
    /// Whether any byte has gone out.
    pub(super) wrote: bool,
    /// Whether the first body frame has been looked for (to go out with the head).
    pub(super) primed: bool,
    /// Whether the transport took everything: TLS accepts a write before its records are on
    /// the socket, so a request is not sent until a flush has finished after its last byte.
    pub(super) flushed: bool,
    /// The request's `100 Continue` gate, opened when the rest is dropped (see the `Drop`
    /// impl): the upstream's final answer is on its way to the client by then, so hyper sends
    /// no `100 Continue`.
    gate: Option<ContinueSignal>,
    /// Whether the rest is read to its end when dropped (an HTTP/1.1 client's connection needs
    /// it; an HTTP/2 client's stream is reset instead).
    drain_rest: bool,
}

impl Sender {
    pub(super) fn new(
        head: Bytes,
        body: ProxyBody,
        framing: Outgoing,
        gate: Option<ContinueSignal>,
        drain_rest: bool,
    ) -> Sender {
        Sender {
            // The head, then room for a chunk's size, data and line end without growing.
            queue: {
                let mut queue = VecDeque::with_capacity(4);
                queue.push_back(head);
                queue
            },
            body: (framing != Outgoing::Empty).then_some(body),
            framing,
            remaining: match framing {
                Outgoing::Length(n) => n,
                _ => 0,
            },
            wrote: false,
            primed: false,
            flushed: false,
            gate,
            drain_rest,
        }
    }

    /// Whether the whole body has been taken from the client (it may still be on its way out).
    pub(super) fn body_taken(&self) -> bool {
        self.body.is_none()
    }

    pub(super) fn is_done(&self) -> bool {
        self.body.is_none() && self.queue.is_empty() && self.flushed
    }

    /// Writes until everything is written and the body has ended, or the body or the socket
    /// has to wait.
    pub(super) fn poll_send(
        &mut self,
        io: &mut Io,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ExchangeError>> {
        loop {
            if !self.primed {
                // The first frame usually arrived with the client's head: one write for both.
                self.primed = true;
                if let Poll::Ready(done) = self.poll_body(cx) {
                    done?;
                }
            }
            while !self.queue.is_empty() {
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
                let count = self.queue.len().min(WRITE_SLICES);
                for (slice, chunk) in slices.iter_mut().zip(self.queue.iter()) {
                    *slice = IoSlice::new(chunk);
                }
                let written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
                if written == 0 {
                    return Poll::Ready(Err(
                        std::io::Error::from(std::io::ErrorKind::WriteZero).into()
                    ));
                }
                self.wrote = true;
                self.advance(written);
            }
            if self.body.is_none() {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                self.flushed = true;
                return Poll::Ready(Ok(()));
            }
            match self.poll_body(cx) {
                Poll::Ready(done) => done?,
                Poll::Pending => {
                    ready!(Pin::new(&mut *io).poll_flush(cx))?;
                    return Poll::Pending;
                }
            }
        }
    }

    fn advance(&mut self, mut written: usize) {
        while written > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            if written >= front.len() {
                written -= front.len();
                self.queue.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }

    /// Takes the body's next frame into the queue, framed; the end of the body closes it.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match ready!(Pin::new(body).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => self.queue_data(data),
                Err(frame) => {
                    // Trailers end the body and are not sent on, as hyper's client did not send
                    // them (the `Trailer` header is hop-by-hop): a field a client put there
                    // (`Authorization`, `X-Forwarded-For`) would pass every check on the head.
                    if frame.is_trailers() && self.framing == Outgoing::Chunked {
                        self.queue.push_back(Bytes::from_static(b"0\r\n\r\n"));
                        self.body = None;
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Ok(()))
                }
            },
            Some(Err(error)) => Poll::Ready(Err(ExchangeError::RequestBody(error))),
            None => {
                self.body = None;
                match self.framing {
                    Outgoing::Chunked => self.queue.push_back(Bytes::from_static(b"0\r\n\r\n")),
                    Outgoing::Length(_) if self.remaining > 0 => {
                        return Poll::Ready(Err(ExchangeError::RequestLength));
                    }
                    _ => {}
                }
                Poll::Ready(Ok(()))
            }
        }
    }

    fn queue_data(&mut self, data: Bytes) -> Poll<Result<(), ExchangeError>> {
        if data.is_empty() {
            return Poll::Ready(Ok(()));
        }
        match self.framing {
            Outgoing::Chunked => {
                let mut room = [0u8; 18];
                let line = super::chunk_size_line(data.len(), &mut room);
                self.queue.push_back(Bytes::copy_from_slice(line));
                self.queue.push_back(data);
                self.queue.push_back(Bytes::from_static(b"\r\n"));
            }
            Outgoing::Length(_) => {
                let len = data.len() as u64;
                if len > self.remaining {
                    return Poll::Ready(Err(ExchangeError::RequestLength));
                }
                self.remaining -= len;
                self.queue.push_back(data);
            }
            // hyper sent no body here either (a GET of unknown length).
            Outgoing::Empty => {}
        }
        Poll::Ready(Ok(()))
    }
}

/// A sender dropped before its body ended (the answer ended first, or the upstream refused the
/// rest) still reads the client's body to its end, in a task of its own, and drops it. An
/// HTTP/1.1 server that answers before reading a request's whole body must read the rest or
/// close the connection, and hyper's server closes the client's when the body is dropped
/// unread: so without this every early answer (an upstream that answers once it has the head,
/// as nginx's `return` does, or IIS's 401 challenge) would cost the client its connection, and
/// a request it had already sent on it would be lost unanswered. The body's own limits bound
/// the read: its size limit, idle timeout and pace. A `100 Continue` gate is opened first, or
/// the client's next request would wait out its timeout. The client's copy for inspection ends
/// complete too. An HTTP/2 client's body is just dropped: hyper resets that stream alone.
impl Drop for Sender {
    fn drop(&mut self) {
        let Some(mut body) = self.body.take() else {
            return;
        };
        if body.is_end_stream() || !self.drain_rest {
            return;
        }
        if let Some(ContinueSignal(gate)) = &self.gate {
            gate.notify_one();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            use http_body_util::BodyExt as _;
            while let Some(Ok(_)) = body.frame().await {}
        });
    }
}
