//! The gateway's own HTTP/1.1 serving loop, for the requests nearly every client sends: a head
//! that parses cleanly, framed plainly (no body, or a `Content-Length` body that arrives with
//! it), with no `Expect` and no upgrade. Each head is parsed once (the framing guard's checks
//! are made on that parse), the request handed to the request path with no dispatcher between,
//! and the answer's head and first bytes written with one `writev`.
//!
//! Everything else — chunked or large bodies, `100-continue`, HTTP/1.0, upgrades, heads the
//! framing guard refuses or that are too large — is handed to hyper at that request's first
//! byte, with what was read of it replayed, so every rare path keeps hyper's behaviour and the
//! guard's answers (`server::serve_http1`). The loop is the client side's twin of `proxy::h1`.

mod answer;
mod head;

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::framing::head_end;
use super::server::{PARK_AFTER, Parkable, close_requested};
use super::{ConnContext, Proxy};
use answer::Answered;
use head::Parsed;

/// Room kept free for each read. Most requests (head and body) arrive in one read.
const READ_ROOM: usize = 16 * 1024;

/// The largest request this loop takes whole, head and body; a larger one is hyper's to stream.
const WHOLE_BODY_MAX: usize = 64 * 1024;

/// How a stretch of serving ended.
pub(super) enum Ended {
    /// Nothing more for this connection. `linger`: the answer went out with a close, so the
    /// caller reads and discards what the client still sends before closing.
    Closed { linger: bool },
    /// Idle for a while with nothing begun: the caller parks the connection.
    Idle,
    /// A request head begun and not finished within `header_read_timeout`: `408`, then close.
    SlowHead,
    /// A request this loop does not serve starts at the first of these bytes (everything read
    /// of it so far): hyper serves it.
    HandOff(BytesMut),
}

/// The limits a stretch serves under, read once from the state (a reload applies from the
/// next stretch, as it does to hyper's connection).
struct Limits {
    max_head: usize,
    max_headers: usize,
    head_timeout: Duration,
    send_timeout: Duration,
}

/// Serves requests on one connection until it ends, idles or meets a request for hyper.
/// `buf` holds bytes already read (a protocol sniff's).
pub(super) async fn serve<IO>(
    proxy: &Arc<Proxy>,
    io: &mut IO,
    ctx: &Arc<ConnContext>,
    stop: &watch::Receiver<bool>,
    mut buf: BytesMut,
) -> Ended
where
    IO: AsyncRead + AsyncWrite + Parkable + Unpin,
{
    let limits = {
        let state = proxy.state();
        Limits {
            max_head: state.limits.max_header_bytes,
            max_headers: state.limits.max_header_count,
            head_timeout: state.limits.header_read_timeout,
            send_timeout: state.limits.send_timeout,
        }
    };
    let close = close_requested(stop, ctx);
    tokio::pin!(close);
    let mut closing = *stop.borrow();
    // One timer for the stretch, pushed later when needed: the park's while idle, the head's
    // while one is unfinished. Made once; a busy connection resets it at most
    // once per `PARK_AFTER` (re-made per request, it was 4 % of a request's instructions).
    let timer = tokio::time::sleep(PARK_AFTER);
    tokio::pin!(timer);
    let mut served: u64 = 0;
    let mut park_armed: Option<u64> = None;
    let mut writer = answer::Writer::new(limits.send_timeout);
    let mut spots = Vec::new();
    // The timer runs for a head begun (its first piece, or blank lines before it): the
    // deadline holds from then until a whole head is in.
    let mut head_armed = false;
    let mut blank_lines = false;
    loop {
        blank_lines |= head::skip_blank_lines(&mut buf);
        if buf.is_empty() {
            if closing {
                return close_gracefully(io, &limits).await;
            }
            if blank_lines {
                // Blank lines alone are a head begun, as the framing guard counts them: a
                // client that sends only those is not idle, and gets 408 in time.
                arm_head(&mut head_armed, &mut park_armed, timer.as_mut(), &limits);
            } else if park_armed.is_none() {
                // Idle: park once a whole `PARK_AFTER` passed with no request served.
                park_armed = Some(served);
                timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + PARK_AFTER);
            }
            let drained = tokio::select! {
                biased;
                () = close.as_mut() => true,
                read = read_more(io, &mut buf) => match read {
                    Ok(0) | Err(_) => return Ended::Closed { linger: false },
                    Ok(_) => false,
                },
                () = timer.as_mut() => {
                    if blank_lines {
                        return Ended::SlowHead;
                    }
                    if park_armed.take() == Some(served) {
                        return Ended::Idle;
                    }
                    false
                }
            };
            if drained {
                return close_gracefully(io, &limits).await;
            }
            continue;
        }
        let head = match head::parse(&buf, limits.max_head, limits.max_headers, &mut spots) {
            Parsed::Complete(head) => head,
            Parsed::HandOff => return Ended::HandOff(buf),
            Parsed::Partial => {
                // A head that came in pieces: bounded by the head timeout.
                arm_head(&mut head_armed, &mut park_armed, timer.as_mut(), &limits);
                let finished = finish_head(io, &mut buf, &limits, timer.as_mut());
                match finished.await {
                    Some(ended) => return ended,
                    None => continue,
                }
            }
        };
        // The body nearly always comes with the head. One that has not all come yet is
        // hyper's to stream: a client may wait for an answer before sending it (an upstream
        // may answer early), so it is not waited for here.
        (head_armed, blank_lines) = (false, false);
        let Some(whole) = head.len.checked_add(head.body_len) else {
            return Ended::HandOff(buf);
        };
        if buf.len() < whole {
            if whole > WHOLE_BODY_MAX {
                return Ended::HandOff(buf);
            }
            match read_ready(io, &mut buf, whole).await {
                Ok(true) => {}
                Ok(false) => return Ended::HandOff(buf),
                Err(_) => return Ended::Closed { linger: false },
            }
        }
        let Some(request) = head::request(&mut buf, &head, &spots) else {
            return Ended::HandOff(buf);
        };
        served += 1;
        closing |= *stop.borrow();
        let keep_alive = !head.close && !closing;
        let exchange = std::pin::pin!(super::stack::exchange(proxy, ctx, request));
        let client = answer::Client {
            io: &mut *io,
            buf: &mut buf,
        };
        let answered = answer::answer(
            exchange,
            &mut writer,
            client,
            &head,
            keep_alive,
            close.as_mut(),
        )
        .await;
        match answered {
            Answered::KeepAlive => {}
            // The answer said so: the client reads it, then the end.
            Answered::Close => return close_gracefully(io, &limits).await,
            Answered::Broken => return Ended::Closed { linger: false },
            Answered::SendTimedOut => {
                proxy.metrics.record_error("client_send_timeout");
                tracing::debug!("a client did not read its answer within send_timeout; closing");
                return Ended::Closed { linger: false };
            }
        }
    }
}

/// Ends the connection as hyper's graceful shutdown did: the sending side shut (TLS:
/// `close_notify`, then a half-close), bounded by `send_timeout`, then the caller lingers so
/// that bytes still on their way in do not turn into a reset the client may see first.
async fn close_gracefully<IO>(io: &mut IO, limits: &Limits) -> Ended
where
    IO: AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(limits.send_timeout, io.shutdown()).await;
    Ended::Closed { linger: true }
}

/// Arms the stretch's timer for a head begun, once per head: from the first sign of it, not
/// from each piece (the timer is the head's now; idle again, the park arms it afresh).
fn arm_head(
    head_armed: &mut bool,
    park_armed: &mut Option<u64>,
    timer: Pin<&mut tokio::time::Sleep>,
    limits: &Limits,
) {
    if !*head_armed {
        *head_armed = true;
        *park_armed = None;
        timer.reset(tokio::time::Instant::now() + limits.head_timeout);
    }
}

/// Reads until `buf` holds a whole head (or enough to hand off) before `timer` fires. `None`: it
/// does, for the loop to judge.
async fn finish_head<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    limits: &Limits,
    mut timer: Pin<&mut tokio::time::Sleep>,
) -> Option<Ended>
where
    IO: AsyncRead + Unpin,
{
    // Searched again only from just before where the last search stopped (a line end and the
    // blank line take three bytes at most): a head trickled in byte by byte costs one pass.
    let mut scanned = buf.len();
    loop {
        tokio::select! {
            biased;
            read = read_more(io, buf) => match read {
                Ok(0) | Err(_) => return Some(Ended::Closed { linger: false }),
                Ok(_) => {}
            },
            () = timer.as_mut() => return Some(Ended::SlowHead),
        }
        if buf.len() >= limits.max_head || head_end(buf, scanned.saturating_sub(3)).is_some() {
            return None;
        }
        scanned = buf.len();
    }
}

/// Reads what has already arrived, without waiting, until `buf` holds `len` bytes: whether it
/// does. An error: the client has gone.
async fn read_ready<IO>(io: &mut IO, buf: &mut BytesMut, len: usize) -> std::io::Result<bool>
where
    IO: AsyncRead + Unpin,
{
    while buf.len() < len {
        buf.reserve(len - buf.len());
        let read = std::future::poll_fn(|cx| {
            Poll::Ready(tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf))
        });
        match read.await {
            Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(error)) => return Err(error),
            Poll::Pending => return Ok(false),
        }
    }
    Ok(true)
}

/// Reads what the client sent into `buf`, keeping [`READ_ROOM`] free for it.
async fn read_more<IO>(io: &mut IO, buf: &mut BytesMut) -> std::io::Result<usize>
where
    IO: AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt as _;
    buf.reserve(READ_ROOM);
    io.read_buf(buf).await
}
