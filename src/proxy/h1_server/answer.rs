//! One request's answer: waited for while the client is watched (its end of stream means it
//! has gone, and the exchange is dropped, upstream included), its head encoded as hyper's
//! server encodes it, its body framed (by length or in chunks) and written with `writev`, each
//! wait for room bounded by `send_timeout`.

use std::future::Future;
use std::io::{IoSlice, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::response::Parts;
use http::{HeaderMap, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite};

use super::head::Head;
use super::read_more;
use crate::proxy::body::ProxyBody;
use crate::proxy::h1::{chunk_size_line, push_field};
use crate::proxy::headers::{ConnectionTokens, decimal_length};
use crate::proxy::sending::{SendCall, SendProgress};
use crate::proxy::server::Parkable;

/// How an answer went, and what the connection does next.
pub(super) enum Answered {
    KeepAlive,
    /// Written whole, and the connection closes after it (as its head said).
    Close,
    /// The client went, the answer could not be finished, or writing failed: close now.
    Broken,
    /// A write waited longer than `send_timeout` for the client to read.
    SendTimedOut,
}

/// How the answer's body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body: a HEAD answer, 204, 304, or a length of 0.
    Empty,
    Length(u64),
    Chunked,
}

enum Failed {
    Broken,
    TimedOut,
}

/// The client side of one exchange: the connection and the bytes read ahead of the next
/// request (pipelined ones).
pub(super) struct Client<'a, IO> {
    pub(super) io: &'a mut IO,
    pub(super) buf: &'a mut BytesMut,
}

impl<IO: AsyncRead + Unpin> Client<'_, IO> {
    /// Reads what the client sends while its answer is on the way; `true` once it has gone
    /// (hyper's server does the same: a client that hangs up cancels its exchange). Bytes it
    /// sends are the next requests'. Only while none are buffered, as hyper: a client that
    /// pipelines requests and then closes its sending side still gets every answer.
    async fn gone(&mut self) -> bool {
        if !self.buf.is_empty() {
            return std::future::pending().await;
        }
        matches!(read_more(self.io, self.buf).await, Ok(0) | Err(_))
    }
}

/// What the answer writer keeps for a stretch of serving: its staging buffers and the send
/// timeout's state.
pub(super) struct Writer {
    /// Bytes before the staged data: the head, a chunk's size line.
    before: Vec<u8>,
    data: Bytes,
    /// Bytes after it: a chunk's line end, the last chunk, trailers.
    after: Vec<u8>,
    /// Trailer fields the head declared (only those are sent, as hyper does).
    trailers: Option<Vec<HeaderName>>,
    wait: SendWait,
}

impl Writer {
    pub(super) fn new(send_timeout: Duration) -> Writer {
        Writer {
            before: Vec::new(),
            data: Bytes::new(),
            after: Vec::new(),
            trailers: None,
            wait: SendWait {
                progress: SendProgress::default(),
                limit: send_timeout,
                timer: None,
                armed: false,
            },
        }
    }
}

/// Waits for the exchange's answer and writes it. The exchange is pinned by the caller: taken
/// by value, this state machine would hold it beside the pinned copy, and each request would
/// move its few KiB twice (a `memcpy` seen in the profile). `keep_alive`: the client and the gateway
/// both mean to go on after it; `close` resolves when the gateway drains (or a pinned upstream
/// connection closed) — the answer then says `connection: close`, if its head is not out yet.
pub(super) async fn answer<IO>(
    mut exchange: Pin<&mut impl Future<Output = Response<ProxyBody>>>,
    writer: &mut Writer,
    mut client: Client<'_, IO>,
    head: &Head,
    mut keep_alive: bool,
    mut close: Pin<&mut impl Future<Output = ()>>,
) -> Answered
where
    IO: AsyncRead + AsyncWrite + Parkable + Unpin,
{
    let response = loop {
        tokio::select! {
            biased;
            response = exchange.as_mut() => break response,
            () = close.as_mut(), if keep_alive => keep_alive = false,
            gone = client.gone() => if gone {
                return Answered::Broken;
            },
        }
    };
    let (parts, mut body) = response.into_parts();
    let framing = writer.head(&parts, head.head_request(), &body, &mut keep_alive);
    drop(parts);
    let written = write_body(writer, &mut client, &mut body, framing).await;
    match written {
        Ok(()) if keep_alive => Answered::KeepAlive,
        Ok(()) => Answered::Close,
        Err(Failed::Broken) => Answered::Broken,
        Err(Failed::TimedOut) => Answered::SendTimedOut,
    }
}

/// Writes the staged head and the body after it: each frame as it comes, the head with the
/// first (and the end, when known) in one `writev`.
async fn write_body<IO>(
    writer: &mut Writer,
    client: &mut Client<'_, IO>,
    body: &mut ProxyBody,
    framing: Framing,
) -> Result<(), Failed>
where
    IO: AsyncRead + AsyncWrite + Parkable + Unpin,
{
    let mut remaining = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut ended = framing == Framing::Empty || body.is_end_stream();
    if ended {
        writer.end(framing, remaining)?;
    }
    loop {
        if !ended {
            let frame = if writer.staged() {
                // Joins what is staged only if it is ready now.
                match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx)))
                    .await
                {
                    Poll::Ready(frame) => Some(frame),
                    Poll::Pending => None,
                }
            } else {
                tokio::select! {
                    biased;
                    frame = body.frame() => Some(frame),
                    gone = client.gone() => {
                        if gone {
                            return Err(Failed::Broken);
                        }
                        None
                    }
                }
            };
            if let Some(frame) = frame {
                ended = writer.frame(framing, &mut remaining, frame)?;
                if !ended && body.is_end_stream() {
                    writer.end(framing, remaining)?;
                    ended = true;
                }
            }
        }
        if writer.staged() {
            writer.write_staged(client.io).await?;
            // Under TLS the session may hold what was written; the client gets it now.
            writer
                .wait
                .call(client.io, SendCall::Flush, |io, cx| io.poll_flush(cx))
                .await?;
        }
        if ended {
            return Ok(());
        }
    }
}

impl Writer {
    /// Encodes the answer's head as hyper's server does: status line (a reason phrase the
    /// upstream gave is kept), headers in order with lower-case names, framing from the
    /// headers or else the body's length (`transfer-encoding: chunked` when unknown),
    /// `connection: close` when the connection ends after it, and `date` when missing.
    fn head(
        &mut self,
        parts: &Parts,
        head_request: bool,
        body: &ProxyBody,
        keep_alive: &mut bool,
    ) -> Framing {
        let out = &mut self.before;
        out.clear();
        self.after.clear();
        status_line(out, parts);
        let status = parts.status;
        // hyper's rules (`Server::can_chunked`, `can_have_content_length`): no length on 1xx,
        // 204 and 304, and no body on those nor on a HEAD answer.
        let can_have_length = !(status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED);
        let can_have_body = can_have_length && !head_request;
        // An answer whose body has ended drops the length its headers claim, but for HEAD.
        let ended = body.is_end_stream();
        let listed = list_headers(out, &parts.headers, can_have_body, ended && !head_request);
        if listed.says_close {
            *keep_alive = false;
        }
        self.trailers = listed.trailers;
        let exact = body.size_hint().exact();
        let framing = match (listed.framing, exact) {
            (Some(framing), _) if can_have_body => framing,
            (Some(_), _) => Framing::Empty,
            (None, _) if ended || exact == Some(0) => {
                if can_have_length && !head_request {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Empty
            }
            (None, Some(n)) => {
                if can_have_length {
                    let _ = write!(out, "content-length: {n}\r\n");
                }
                if can_have_body {
                    Framing::Length(n)
                } else {
                    Framing::Empty
                }
            }
            (None, None) if can_have_body => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            (None, None) => Framing::Empty,
        };
        if !*keep_alive && !listed.says_close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        if !listed.dated {
            out.extend_from_slice(b"date: ");
            extend_date(out);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        framing
    }

    /// Stages one body frame; returns whether it ended the body (trailers do).
    fn frame(
        &mut self,
        framing: Framing,
        remaining: &mut u64,
        frame: Option<Result<http_body::Frame<Bytes>, crate::proxy::body::BoxError>>,
    ) -> Result<bool, Failed> {
        let frame = match frame {
            None => {
                self.end(framing, *remaining)?;
                return Ok(true);
            }
            // The answer cannot be finished: the client must see it cut short.
            Some(Err(_)) => return Err(Failed::Broken),
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) if data.is_empty() => return Ok(false),
            Ok(data) => {
                self.data_frame(framing, remaining, data)?;
                return Ok(false);
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            self.end_with_trailers(framing, *remaining, &trailers)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn data_frame(
        &mut self,
        framing: Framing,
        remaining: &mut u64,
        data: Bytes,
    ) -> Result<(), Failed> {
        match framing {
            Framing::Empty => {}
            Framing::Length(_) => {
                // More than the head announced would be read as the next answer.
                *remaining = remaining
                    .checked_sub(data.len() as u64)
                    .ok_or(Failed::Broken)?;
                self.data = data;
            }
            Framing::Chunked => {
                let mut size = [0u8; 18];
                self.before
                    .extend_from_slice(chunk_size_line(data.len(), &mut size));
                self.data = data;
                self.after.extend_from_slice(b"\r\n");
            }
        }
        Ok(())
    }

    /// Stages the body's end: the last chunk, or nothing (a body shorter than its length
    /// cannot end well).
    fn end(&mut self, framing: Framing, remaining: u64) -> Result<(), Failed> {
        match framing {
            Framing::Chunked => self.after.extend_from_slice(b"0\r\n\r\n"),
            Framing::Length(_) if remaining > 0 => return Err(Failed::Broken),
            _ => {}
        }
        Ok(())
    }

    fn end_with_trailers(
        &mut self,
        framing: Framing,
        remaining: u64,
        trailers: &HeaderMap,
    ) -> Result<(), Failed> {
        if framing != Framing::Chunked {
            return self.end(framing, remaining);
        }
        self.after.extend_from_slice(b"0\r\n");
        let declared = self.trailers.as_deref().unwrap_or_default();
        for (name, value) in trailers {
            if declared.contains(name) {
                push_field(&mut self.after, name, value);
            }
        }
        self.after.extend_from_slice(b"\r\n");
        Ok(())
    }

    fn staged(&self) -> bool {
        !(self.before.is_empty() && self.data.is_empty() && self.after.is_empty())
    }

    /// Writes everything staged, in as few `writev` calls as the socket allows.
    async fn write_staged<IO>(&mut self, io: &mut IO) -> Result<(), Failed>
    where
        IO: AsyncWrite + Parkable + Unpin,
    {
        let (mut before, mut data, mut after) = (0, 0, 0);
        while before < self.before.len() || data < self.data.len() || after < self.after.len() {
            let slices = [
                IoSlice::new(&self.before[before..]),
                IoSlice::new(&self.data[data..]),
                IoSlice::new(&self.after[after..]),
            ];
            let mut n = self
                .wait
                .call(io, SendCall::Write, |io, cx| {
                    io.poll_write_vectored(cx, &slices)
                })
                .await?;
            if n == 0 {
                return Err(Failed::Broken);
            }
            for (at, len) in [
                (&mut before, self.before.len()),
                (&mut data, self.data.len()),
                (&mut after, self.after.len()),
            ] {
                let took = n.min(len - *at);
                *at += took;
                n -= took;
            }
        }
        self.before.clear();
        self.data = Bytes::new();
        self.after.clear();
        Ok(())
    }
}

/// What the answer's headers said, noted as they were written.
struct Listed {
    framing: Option<Framing>,
    says_close: bool,
    dated: bool,
    trailers: Option<Vec<HeaderName>>,
}

/// Writes the headers (lower-case names, in order), noting framing, close and date as hyper
/// does: a length after a coding (or a second length) is dropped, a coding where the answer
/// has no body, and the length when `drop_length` (a body already ended, not for HEAD).
fn list_headers(
    out: &mut Vec<u8>,
    headers: &HeaderMap,
    can_have_body: bool,
    drop_length: bool,
) -> Listed {
    let mut listed = Listed {
        framing: None,
        says_close: false,
        dated: false,
        trailers: None,
    };
    for (name, value) in headers {
        match *name {
            header::CONTENT_LENGTH => {
                if listed.framing.is_some() || drop_length {
                    continue;
                }
                match decimal_length(value.as_bytes().trim_ascii()) {
                    Some(0) => listed.framing = Some(Framing::Empty),
                    Some(n) => listed.framing = Some(Framing::Length(n)),
                    // Not a length: the body's own decides.
                    None => continue,
                }
            }
            header::TRANSFER_ENCODING => {
                if !can_have_body || listed.framing.is_some() {
                    continue;
                }
                listed.framing = Some(Framing::Chunked);
                out.extend_from_slice(b"transfer-encoding: ");
                out.extend_from_slice(value.as_bytes());
                let chunked_last = value
                    .as_bytes()
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                if !chunked_last {
                    out.extend_from_slice(b", chunked");
                }
                out.extend_from_slice(b"\r\n");
                continue;
            }
            header::CONNECTION => {
                listed.says_close |= ConnectionTokens::default().and(value).close;
            }
            header::DATE => listed.dated = true,
            header::TRAILER => {
                if !can_have_body {
                    continue;
                }
                let names = value
                    .to_str()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok());
                listed.trailers.get_or_insert_with(Vec::new).extend(names);
            }
            _ => {}
        }
        push_field(out, name, value);
    }
    listed
}

/// The status line; a reason phrase the upstream gave (OWA's `440 Login Timeout`) as sent.
fn status_line(out: &mut Vec<u8>, parts: &Parts) {
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if parts.status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    match reason {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(
            parts
                .status
                .canonical_reason()
                .unwrap_or("<none>")
                .as_bytes(),
        ),
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the current time as an HTTP date, formatted once per second per thread (hyper
/// caches it likewise).
fn extend_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    std::thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// The state of `send_timeout` over a stretch's writes: a wait for room begins when a write
/// (or flush) cannot go on and ends when bytes reach the socket; only a wait arms the timer,
/// made on the first and pushed later after.
struct SendWait {
    progress: SendProgress,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl SendWait {
    async fn call<IO, T>(
        &mut self,
        io: &mut IO,
        kind: SendCall,
        mut op: impl FnMut(Pin<&mut IO>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Result<T, Failed>
    where
        IO: Parkable + Unpin,
    {
        std::future::poll_fn(|cx| {
            let result = op(Pin::new(&mut *io), cx);
            if let Some(change) = self
                .progress
                .note(kind, result.is_pending(), io.socket_sent())
            {
                self.armed = change.is_some();
                if self.armed {
                    let deadline = tokio::time::Instant::now() + self.limit;
                    match &mut self.timer {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
            }
            match result {
                Poll::Ready(Ok(done)) => Poll::Ready(Ok(done)),
                Poll::Ready(Err(_)) => Poll::Ready(Err(Failed::Broken)),
                Poll::Pending => {
                    if self.armed
                        && let Some(timer) = &mut self.timer
                        && timer.as_mut().poll(cx).is_ready()
                    {
                        return Poll::Ready(Err(Failed::TimedOut));
                    }
                    Poll::Pending
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::body::{empty, full};

    fn encoded(
        response: Response<ProxyBody>,
        head_request: bool,
        keep_alive: bool,
    ) -> (String, Framing, bool) {
        let mut writer = Writer::new(Duration::from_secs(1));
        let mut keep = keep_alive;
        let (parts, body) = response.into_parts();
        let framing = writer.head(&parts, head_request, &body, &mut keep);
        (String::from_utf8(writer.before).unwrap(), framing, keep)
    }

    #[test]
    fn a_known_length_is_written_and_a_date_added() {
        let (head, framing, keep) = encoded(Response::new(full("hello")), false, true);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: "));
        assert!(head.ends_with(" GMT\r\n\r\n"));
        assert_eq!(framing, Framing::Length(5));
        assert!(keep);
    }

    #[test]
    fn an_unknown_length_is_chunked_and_a_close_is_said() {
        let body = http_body_util::StreamBody::new(futures_util::stream::empty::<
            Result<http_body::Frame<Bytes>, crate::proxy::body::BoxError>,
        >())
        .boxed_unsync();
        let mut response = Response::new(body);
        response
            .headers_mut()
            .insert(header::DATE, http::HeaderValue::from_static("x"));
        let (head, framing, keep) = encoded(response, false, false);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ndate: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        assert_eq!(framing, Framing::Chunked);
        assert!(!keep);
    }

    #[test]
    fn head_answers_keep_their_length_and_send_no_body() {
        let mut response = Response::new(empty());
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, http::HeaderValue::from_static("42"));
        response
            .headers_mut()
            .insert(header::DATE, http::HeaderValue::from_static("x"));
        let (head, framing, _) = encoded(response, true, true);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ncontent-length: 42\r\ndate: x\r\n\r\n"
        );
        assert_eq!(framing, Framing::Empty);
    }

    #[test]
    fn reasons_are_kept_and_a_closing_upstream_ends_keep_alive() {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::from_u16(440).unwrap();
        response
            .extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(b"Login Timeout"));
        response
            .headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        let (head, _, keep) = encoded(response, false, true);
        assert!(head.starts_with("HTTP/1.1 440 Login Timeout\r\nconnection: close\r\n"));
        assert!(!keep);
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let (head, framing, _) = encoded(response, false, true);
        assert!(
            head.starts_with("HTTP/1.1 204 No Content\r\ndate: "),
            "{head}"
        );
        assert_eq!(framing, Framing::Empty);
    }

    #[test]
    fn chunk_size_lines_are_hexadecimal() {
        let mut room = [0u8; 18];
        assert_eq!(chunk_size_line(0x1A2F, &mut room), b"1A2F\r\n");
        assert_eq!(chunk_size_line(1, &mut room), b"1\r\n");
    }
}
