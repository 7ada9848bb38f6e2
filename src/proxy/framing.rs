//! The HTTP/1.1 framing guard: watches the bytes a client sends, request by request, and stops
//! a request whose framing a front-end and a back-end could read differently before hyper sees
//! it: both `Content-Length` and `Transfer-Encoding` (hyper would repair it — drop the length,
//! close afterwards — where an edge proxy refuses it, as RFC 9112 §6.3 allows), a coding other
//! than a single `chunked`, lengths that disagree or are not numbers, and a head `httparse`
//! cannot read (whitespace before a colon, bad characters). The refusal is answered like every
//! response the gateway makes itself: `400` with a body, `x-trackgate-error: bad_request`,
//! `Connection: close`, counted in `proxy_errors_total`. Everything else passes through byte for
//! byte; a head too long or with too many headers is left to hyper (431).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What hyper is fed instead of a refused head's final line feed: whether the head so far ends
/// in `\n` or `\r\n\r`, a NUL there is a parse error hyper answers with 400 and a close.
const REFUSAL: &[u8] = b"\x00\r\n\r\n";

/// Header slots kept on the stack when a head is parsed: enough for any usual header limit (a
/// head with more goes to hyper in the server loop, whose limit may be larger).
pub(crate) const STACK_HEADERS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line; `digits` seen so far, `ext` once a `;` appeared.
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// Trailer section after the last chunk; `len` of the current line.
    Trailer {
        len: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Collecting a request head (held back until complete).
    Head,
    Fixed(u64),
    Chunked(Chunk),
    /// Framing we do not follow (HTTP/2 preface, oversized or unparsable head): hyper decides.
    Passthrough,
    /// A refused head: hyper gets [`REFUSAL`], then end of stream.
    Refused,
}

/// The sans-IO part: feed it client bytes, get back the bytes hyper may see.
#[derive(Debug)]
pub struct Tracker {
    state: State,
    head: Vec<u8>,
    // 32 bits each: every parked connection keeps a tracker, and these 8 bytes were what kept
    // its task a size class larger (bench/RESULTS.md). Larger limits are clamped.
    max_head: u32,
    max_headers: u32,
    at_start: bool,
    /// Empty lines passed since the last message ended: hyper holds them (as the start of an
    /// incomplete head) until the next request arrives, so that is no boundary.
    blank_lines: bool,
    /// The refusal is for size (too long a head, too many headers: 431), not framing (400).
    too_large: bool,
    /// Heads read whole so far.
    heads: u64,
}

impl Tracker {
    pub fn new(max_head: usize, max_headers: usize) -> Tracker {
        Tracker {
            state: State::Head,
            head: Vec::new(),
            max_head: u32::try_from(max_head).unwrap_or(u32::MAX),
            max_headers: u32::try_from(max_headers).unwrap_or(u32::MAX),
            at_start: true,
            blank_lines: false,
            too_large: false,
            heads: 0,
        }
    }

    /// The gateway's answer to the refused head.
    pub fn refusal_answer(&self) -> &'static [u8] {
        if self.too_large {
            super::respond::HEAD_TOO_LARGE_ANSWER
        } else {
            super::respond::REFUSAL_ANSWER
        }
    }

    /// At a request boundary with nothing held: where a keep-alive connection idles.
    pub fn between_requests(&self) -> bool {
        self.state == State::Head && self.head.is_empty() && !self.blank_lines
    }

    /// Whether a request head has begun and not ended: what the slow-head timeout watches. In
    /// framing hyper follows alone, any wait may be for a head, so it says yes.
    pub fn head_pending(&self) -> bool {
        match self.state {
            State::Head => !self.head.is_empty() || self.blank_lines,
            State::Passthrough => true,
            _ => false,
        }
    }

    pub fn refused(&self) -> bool {
        self.state == State::Refused
    }

    /// Consumes `input` and returns how much of it, from the start, may go on to hyper. All of
    /// it, unless this input completes a refused head: then the head's final line feed and
    /// everything after it are held back, and [`REFUSAL`] must follow the passed bytes (the
    /// tracker is then [`refused`](Self::refused) and takes nothing more). Passing a prefix in
    /// place lets the guard read straight into hyper's buffer, with no copy of its own.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let mut at = 0;
        while at < input.len() {
            let rest = &input[at..];
            match self.state {
                State::Passthrough => return input.len(),
                State::Refused => return at,
                State::Fixed(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(rest.len());
                    at += take;
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Fixed(left)
                    };
                }
                State::Chunked(chunk) => at += self.chunked(chunk, rest),
                State::Head => {
                    if self.at_start && rest.starts_with(b"PRI * HTTP/2.0") {
                        self.state = State::Passthrough;
                        continue;
                    }
                    self.at_start = false;
                    if self.head.is_empty() {
                        // Empty lines between requests are allowed (RFC 9112 §2.2).
                        let blank = rest
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        self.blank_lines |= blank > 0;
                        at += blank;
                        if at == input.len() {
                            return at;
                        }
                    }
                    let rest = &input[at..];
                    if self.head.is_empty()
                        && let Some(end) = head_end(rest, 0)
                    {
                        // Usually a whole head comes in one read: it is judged where it lies,
                        // with nothing copied (a head split over reads is gathered below).
                        self.blank_lines = false;
                        self.state = self.classify(&rest[..end]);
                        if self.state == State::Refused {
                            return at + end - 1;
                        }
                        at += end;
                        continue;
                    }
                    let before = self.head.len();
                    self.head.extend_from_slice(rest);
                    // A head's end may straddle the reads (`\r\n` + `\r\n`); the first piece
                    // of a head was searched whole just above.
                    let from = if before == 0 {
                        self.head.len()
                    } else {
                        before.saturating_sub(2)
                    };
                    match head_end(&self.head, from) {
                        Some(end) => {
                            // Everything but the head's final line feed is already with hyper
                            // (a slow head's 408 is sent when its buffer holds some); that last
                            // byte waits for the verdict.
                            let used = end - before;
                            self.head.truncate(end);
                            let head = std::mem::take(&mut self.head);
                            self.blank_lines = false;
                            self.state = self.classify(&head);
                            if self.state == State::Refused {
                                return at + used - 1;
                            }
                            at += used;
                        }
                        None => {
                            // hyper gives up at its buffer's size (`>=`), and reads no more.
                            if self.head.len() >= self.max_head as usize {
                                // Too long: refused (431) once hyper has what came so far.
                                self.head = Vec::new();
                                self.state = State::Refused;
                                self.too_large = true;
                            }
                            return input.len();
                        }
                    }
                }
            }
        }
        at
    }

    fn classify(&mut self, head: &[u8]) -> State {
        self.heads += 1;
        if head.len() > self.max_head as usize {
            // A whole head over the limit, read in one go (or replayed): hyper would refuse it
            // too (431), with a bare answer of its own.
            self.too_large = true;
            return State::Refused;
        }
        let limit = (self.max_headers as usize).max(16);
        // Room for the headers on the stack for any usual limit (hyper's default is 100): this
        // runs for every request head, and a heap vector of that many slots was an allocation
        // and a fill each time.
        let mut on_stack = [const { MaybeUninit::<httparse::Header>::uninit() }; STACK_HEADERS];
        let mut on_heap = Vec::new();
        let slots = if limit <= STACK_HEADERS {
            &mut on_stack[..limit]
        } else {
            on_heap.resize_with(limit, MaybeUninit::uninit);
            &mut on_heap[..]
        };
        let mut request = httparse::Request::new(&mut []);
        match request.parse_with_uninit_headers(head, slots) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return State::Passthrough,
            // What hyper could not parse either (whitespace before a colon, bad bytes), or more
            // headers than it takes (it answers that 431).
            Err(error) => {
                self.too_large = error == httparse::Error::TooManyHeaders;
                return State::Refused;
            }
        }
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut transfer_encoding = false;
        for h in request.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                if transfer_encoding {
                    return State::Refused;
                }
                match std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    // The same length twice may be merged (RFC 9110 §8.6); two lengths may not.
                    Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                    _ => return State::Refused,
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // One `chunked`, once: anything else (`gzip, chunked`, a second header) is a
                // coding a back-end may read otherwise.
                if length.is_some() || transfer_encoding {
                    return State::Refused;
                }
                transfer_encoding = true;
                chunked = std::str::from_utf8(h.value)
                    .map(|v| v.trim().eq_ignore_ascii_case("chunked"))
                    .unwrap_or(false);
            }
        }
        match (transfer_encoding, chunked, length) {
            (true, true, _) => State::Chunked(Chunk::Size {
                size: 0,
                digits: 0,
                ext: false,
            }),
            (true, false, _) => State::Refused,
            (false, _, Some(n)) if n > 0 => State::Fixed(n),
            _ => State::Head,
        }
    }

    /// Follows chunked framing; returns how many bytes of `input` it consumed.
    fn chunked(&mut self, mut chunk: Chunk, input: &[u8]) -> usize {
        let mut used = 0;
        while used < input.len() {
            let byte = input[used];
            chunk = match chunk {
                Chunk::Data(n) => {
                    let take = usize::try_from(n)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - used);
                    used += take;
                    let left = n - take as u64;
                    if left > 0 {
                        self.state = State::Chunked(Chunk::Data(left));
                        return used;
                    }
                    chunk = Chunk::DataCr;
                    self.state = State::Chunked(chunk);
                    continue;
                }
                Chunk::Size { size, digits, ext } => match byte {
                    b'\n' if digits > 0 => {
                        if size == 0 {
                            Chunk::Trailer { len: 0 }
                        } else {
                            Chunk::Data(size)
                        }
                    }
                    b'\r' => chunk,
                    _ if ext => chunk,
                    b';' => Chunk::Size {
                        size,
                        digits,
                        ext: true,
                    },
                    b' ' | b'\t' => chunk,
                    _ => match (byte as char).to_digit(16) {
                        Some(d) if digits < 16 => Chunk::Size {
                            size: size * 16 + u64::from(d),
                            digits: digits + 1,
                            ext,
                        },
                        _ => {
                            self.state = State::Passthrough;
                            return used;
                        }
                    },
                },
                Chunk::DataCr if byte == b'\r' => Chunk::DataLf,
                Chunk::DataLf if byte == b'\n' => Chunk::Size {
                    size: 0,
                    digits: 0,
                    ext: false,
                },
                Chunk::DataCr | Chunk::DataLf => {
                    self.state = State::Passthrough;
                    return used;
                }
                Chunk::Trailer { len } => match byte {
                    b'\n' if len == 0 => {
                        used += 1;
                        self.state = State::Head;
                        return used;
                    }
                    b'\n' => Chunk::Trailer { len: 0 },
                    b'\r' => chunk,
                    _ => Chunk::Trailer { len: len + 1 },
                },
            };
            used += 1;
            self.state = State::Chunked(chunk);
        }
        used
    }
}

/// The length of the blank line `buf` starts with (a bare LF counts, as httparse counts it; a
/// lone CR does not).
pub(crate) fn blank_line(buf: &[u8]) -> Option<usize> {
    match buf {
        [b'\n', ..] => Some(1),
        [b'\r', b'\n', ..] => Some(2),
        _ => None,
    }
}

/// The end of a head (just past the line feed of its empty line), searching from `from`.
/// Like hyper's parser, a bare `\n` ends a line too. Request heads here, answer heads and
/// trailer sections in `h1`.
pub(super) fn head_end(head: &[u8], from: usize) -> Option<usize> {
    let mut at = from.min(head.len());
    while let Some(found) = memchr::memchr(b'\n', &head[at..]) {
        let lf = at + found;
        match head.get(lf + 1) {
            Some(b'\n') => return Some(lf + 2),
            Some(b'\r') if head.get(lf + 2) == Some(&b'\n') => return Some(lf + 3),
            _ => at = lf + 1,
        }
    }
    None
}

pin_project_lite::pin_project! {
    /// An IO wrapper that runs a [`Tracker`] over what the client sends.
    pub struct FramingGuard<IO> {
        #[pin]
        io: IO,
        tracker: Tracker,
        // Bytes to serve before reading the transport again: replayed (a protocol sniff's), or
        // the part of a refusal that did not fit the reader's buffer. Usually empty.
        ready: Vec<u8>,
        ready_at: usize,
        // The gateway's own answer to a refused head, in place of hyper's bare 400, and how
        // much of it is written; `None` until hyper answers the refusal.
        answer: Option<(&'static [u8], usize)>,
        refusals: Option<Refusals>,
    }
}

/// The counters of refusals: `kind="bad_request"` and `kind="header_too_large"`.
#[derive(Debug, Clone)]
pub struct Refusals {
    pub framing: prometheus_client::metrics::counter::Counter,
    pub too_large: prometheus_client::metrics::counter::Counter,
}

/// hyper's answers to the parse error a refusal feeds it (or to a head too large) start so;
/// the guard writes its own instead. (Only what hyper writes after a refusal is looked at: the
/// end of earlier pipelined responses, then hyper's answer.)
const HYPER_REFUSALS: [&[u8]; 2] = [b"HTTP/1.1 400 Bad Request\r\n", b"HTTP/1.1 431 "];

impl<IO> FramingGuard<IO> {
    pub fn new(io: IO, max_head: usize, max_headers: usize) -> Self {
        FramingGuard {
            io,
            tracker: Tracker::new(max_head, max_headers),
            ready: Vec::new(),
            ready_at: 0,
            answer: None,
            refusals: None,
        }
    }

    /// Counts each refusal in `proxy_errors_total`.
    pub fn counting(mut self, refusals: Refusals) -> Self {
        self.refusals = Some(refusals);
        self
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The transport itself, for a server loop that parses what it reads on its own: bytes
    /// read this way pass the tracker by (it stays where it was, at a request boundary), and
    /// whatever is to pass it again is [`replay`](Self::replay)ed.
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Bytes already read off the transport by someone else (a protocol sniff): judged like any
    /// others, then served before the transport is read again.
    pub fn replay(&mut self, bytes: &[u8]) {
        let passed = self.tracker.feed(bytes);
        self.ready.extend_from_slice(&bytes[..passed]);
        if self.tracker.refused() {
            self.ready.extend_from_slice(REFUSAL);
        }
    }

    /// Whether bytes wait to be served before the transport is read.
    fn has_unread(&self) -> bool {
        self.ready_at < self.ready.len()
    }

    /// Whether everything the client sent so far ends exactly at a request boundary (with
    /// nothing waiting here to be served).
    pub fn at_request_boundary(&self) -> bool {
        self.tracker.between_requests() && !self.has_unread()
    }

    /// Whether the client has begun a request head and not finished it.
    pub fn head_pending(&self) -> bool {
        self.tracker.head_pending()
    }

    /// How many request heads have been read whole so far.
    pub fn heads_read(&self) -> u64 {
        self.tracker.heads
    }
}

impl<IO: AsyncRead> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if *this.ready_at < this.ready.len() {
            // Replayed bytes, or the tail of a refusal that did not fit.
            let pending = &this.ready[*this.ready_at..];
            let n = pending.len().min(buf.remaining());
            buf.put_slice(&pending[..n]);
            *this.ready_at += n;
            if *this.ready_at == this.ready.len() {
                *this.ready = Vec::new();
                *this.ready_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if this.tracker.refused() {
            return Poll::Ready(Ok(())); // end of stream after the refusal
        }
        // Read straight into hyper's buffer and judge the bytes where they landed: no buffer of
        // our own (an idle connection holds none) and no copy.
        let before = buf.filled().len();
        ready!(this.io.poll_read(cx, buf))?;
        let passed = this.tracker.feed(&buf.filled()[before..]);
        if this.tracker.refused() {
            buf.set_filled(before + passed);
            let fits = REFUSAL.len().min(buf.remaining());
            buf.put_slice(&REFUSAL[..fits]);
            this.ready.extend_from_slice(&REFUSAL[fits..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite> FramingGuard<IO> {
    /// Writes what is left of the gateway's answer to a refusal.
    fn poll_answer(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        while let Some((answer, written)) = this.answer.as_mut()
            && *written < answer.len()
        {
            let n = ready!(this.io.as_mut().poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.answer.is_some() {
            // The refusal is answered; hyper's own answer and anything after it go nowhere.
            ready!(self.as_mut().poll_answer(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        if !self.tracker.refused() {
            return self.project().io.poll_write(cx, buf);
        }
        // Refused: what hyper writes before its answer to the refusal ends earlier responses.
        let hyper_answer = HYPER_REFUSALS
            .iter()
            .filter_map(|prefix| memchr::memmem::find(buf, prefix))
            .min();
        match hyper_answer {
            Some(0) => {
                let this = self.as_mut().project();
                *this.answer = Some((this.tracker.refusal_answer(), 0));
                if let Some(refusals) = this.refusals {
                    if this.tracker.too_large {
                        refusals.too_large.inc();
                    } else {
                        refusals.framing.inc();
                    }
                }
                ready!(self.as_mut().poll_answer(cx))?;
                Poll::Ready(Ok(buf.len()))
            }
            Some(start) => self.project().io.poll_write(cx, &buf[..start]),
            None => self.project().io.poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.answer.is_some() || self.tracker.refused() {
            // Rare: one buffer at a time, through the refusal's path.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return self.poll_write(cx, first);
        }
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_answer(cx))?;
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_answer(cx))?;
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_its_blank_line_with_either_line_end_from_any_start_before_it() {
        let crlf = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nrest";
        for from in 0..=22 {
            assert_eq!(head_end(crlf, from), Some(25), "from {from}");
        }
        assert_eq!(
            head_end(crlf, 23),
            None,
            "past the blank line's first line feed"
        );
        assert_eq!(head_end(b"HTTP/1.1 200 OK\nA: b\n\nrest", 0), Some(22));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n", 0), None);
        assert_eq!(head_end(b"", 5), None);
    }

    fn run(input: &[u8], split: usize) -> (Vec<u8>, bool) {
        let mut t = Tracker::new(64 * 1024, 100);
        let mut out = Vec::new();
        for piece in input.chunks(split.max(1)) {
            let passed = t.feed(piece);
            out.extend_from_slice(&piece[..passed]);
            if t.refused() {
                out.extend_from_slice(REFUSAL);
                break;
            }
        }
        (out, t.refused())
    }

    #[test]
    fn well_framed_pipelines_pass_unchanged_however_they_are_split() {
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nwxyzGET /c HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in [1, 2, 3, 7, 64, 4096] {
            let (out, refused) = run(input, split);
            assert!(!refused, "split {split}");
            assert_eq!(out, input, "split {split}");
        }
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused_in_either_order() {
        for input in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                [..],
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
                [..],
        ] {
            let head_len = input.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            for split in [1, 5, 4096] {
                let (out, refused) = run(input, split);
                assert!(refused);
                assert_eq!(out, [&input[..head_len - 1], REFUSAL].concat());
            }
        }
    }

    #[test]
    fn a_refused_request_after_a_good_one_keeps_the_good_one() {
        let good = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n";
        let bad = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (out, refused) = run(&[&good[..], &bad[..]].concat(), 4096);
        assert!(refused);
        assert_eq!(out, [&good[..], &bad[..bad.len() - 1], REFUSAL].concat());
    }

    #[test]
    fn bare_line_feeds_do_not_hide_a_head() {
        let input = b"POST / HTTP/1.1\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\r\n\r\n";
        for split in [1, 3, 4096] {
            let (_, refused) = run(input, split);
            assert!(refused, "split {split}");
        }
        let fine = b"GET / HTTP/1.1\nHost: x\n\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(run(fine, 2), (fine.to_vec(), false));
    }

    #[test]
    fn blank_lines_after_a_request_are_no_boundary_until_the_next_head() {
        let mut t = Tracker::new(64 * 1024, 100);
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(t.feed(request), request.len());
        assert!(t.between_requests());
        assert_eq!(t.feed(b"\r\n"), 2);
        assert!(!t.between_requests(), "hyper holds the blank line");
        assert_eq!(t.feed(request), request.len());
        assert!(t.between_requests());
    }

    #[test]
    fn the_header_count_limit_holds_below_and_above_the_stack_room() {
        let head = |count: usize| {
            let mut head = b"GET / HTTP/1.1\r\n".to_vec();
            for i in 0..count {
                head.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            head
        };
        for limit in [100, STACK_HEADERS, STACK_HEADERS + 72] {
            // Whole (judged where it lies) and split in two reads (gathered first).
            for split in [None, Some(7)] {
                let feed = |tracker: &mut Tracker, head: &[u8]| match split {
                    None => tracker.feed(head),
                    Some(at) => tracker.feed(&head[..at]) + tracker.feed(&head[at..]),
                };
                let fits = head(limit);
                let mut tracker = Tracker::new(64 * 1024, limit);
                assert_eq!(feed(&mut tracker, &fits), fits.len(), "limit {limit}");
                assert!(tracker.between_requests(), "limit {limit}, split {split:?}");
                let over = head(limit + 1);
                let mut tracker = Tracker::new(64 * 1024, limit);
                let passed = feed(&mut tracker, &over);
                assert_eq!(passed, over.len() - 1, "all but the final line feed");
                assert!(tracker.refused(), "limit {limit}, split {split:?}");
                assert_eq!(
                    tracker.refusal_answer(),
                    crate::proxy::respond::HEAD_TOO_LARGE_ANSWER,
                    "limit {limit}, split {split:?}"
                );
            }
        }
    }

    #[test]
    fn partial_heads_reach_hyper_at_once_so_a_slow_head_can_be_answered() {
        let mut t = Tracker::new(64 * 1024, 100);
        let partial = b"GET / HTTP/1.1\r\nHost: x\r\n";
        assert_eq!(t.feed(partial), partial.len());
    }

    /// What the slow-head timeout watches: a head begun and not ended, whatever its pieces.
    #[test]
    fn a_head_is_pending_from_its_first_piece_to_its_end_and_not_in_a_body() {
        let mut t = Tracker::new(64 * 1024, 100);
        assert!(!t.head_pending(), "nothing sent yet");
        t.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(!t.head_pending(), "a whole head in one piece");
        t.feed(b"\r\n");
        assert!(t.head_pending(), "blank lines before a head");
        t.feed(b"POST / HTTP/1.1\r\nContent-Length: 4\r");
        assert!(t.head_pending(), "a head in pieces");
        t.feed(b"\n\r\nab");
        assert!(!t.head_pending(), "a body is not a head");
        t.feed(b"cdGET /");
        assert!(t.head_pending(), "the next head begun with the body's end");
        t.feed(b" HTTP/1.1\r\n\r\n");
        assert!(!t.head_pending() && t.between_requests());
    }

    #[test]
    fn the_http2_preface_is_left_to_hyper_and_garbage_refused() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00";
        assert_eq!(run(preface, 4096), (preface.to_vec(), false));
        let garbage = b"\x16\x03\x01 not http\r\n\r\nmore";
        let (out, refused) = run(garbage, 3);
        assert!(refused, "an unreadable head is answered like any refusal");
        assert!(out.ends_with(REFUSAL));
    }

    #[test]
    fn oversized_heads_reach_hyper_then_are_refused_as_too_large() {
        let mut t = Tracker::new(100, 100);
        let head = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 200]].concat();
        assert_eq!(t.feed(&head), head.len());
        assert!(t.refused());
        assert_eq!(
            t.refusal_answer(),
            crate::proxy::respond::HEAD_TOO_LARGE_ANSWER
        );
        let mut framing = Tracker::new(64 * 1024, 100);
        framing.feed(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(
            framing.refusal_answer(),
            crate::proxy::respond::REFUSAL_ANSWER
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_never_invents_bytes(input in proptest::collection::vec(proptest::num::u8::ANY, 0..2048), split in 1usize..64) {
            let (out, refused) = run(&input, split);
            if refused {
                proptest::prop_assert!(out.ends_with(REFUSAL));
                proptest::prop_assert!(input.starts_with(&out[..out.len() - REFUSAL.len()]));
            } else {
                proptest::prop_assert_eq!(out, input);
            }
        }

        #[test]
        fn well_framed_requests_pass_whatever_the_split(
            bodies in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 1..5),
            chunked in proptest::collection::vec(proptest::bool::ANY, 5),
            split in 1usize..97,
        ) {
            let mut input = Vec::new();
            for (i, body) in bodies.iter().enumerate() {
                if chunked[i] {
                    input.extend_from_slice(b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
                    for piece in body.chunks(7) {
                        input.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                        input.extend_from_slice(piece);
                        input.extend_from_slice(b"\r\n");
                    }
                    input.extend_from_slice(b"0\r\n\r\n");
                } else {
                    input.extend_from_slice(format!("POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
                    input.extend_from_slice(body);
                }
            }
            input.extend_from_slice(b"POST /smuggle HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
            let (out, refused) = run(&input, split);
            proptest::prop_assert!(refused, "the final smuggling head was not refused");
            proptest::prop_assert!(input.starts_with(&out[..out.len() - REFUSAL.len()]));
            proptest::prop_assert_eq!(out.len() - REFUSAL.len(), input.len() - 1);
        }
    }

    #[tokio::test]
    async fn a_refusal_reaches_a_reader_with_a_tiny_buffer_whole_and_then_the_stream_ends() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut guard = Box::pin(FramingGuard::new(server, 64 * 1024, 100));
        let good = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let bad = b"POST /b HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc";
        client
            .write_all(&[&good[..], &bad[..]].concat())
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut piece = [0u8; 3];
        loop {
            let n = guard.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&piece[..n]);
        }
        let head = bad.len() - 3;
        assert_eq!(seen, [&good[..], &bad[..head - 1], REFUSAL].concat());
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_read_buffer_of_ours() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut guard = Box::pin(FramingGuard::new(server, 64 * 1024, 100));
        let body = vec![b'x'; 10_000];
        let mut request = format!(
            "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        client.write_all(&request).await.unwrap();
        let mut seen = vec![0u8; request.len()];
        guard.read_exact(&mut seen).await.unwrap();
        assert_eq!(seen, request, "the bytes pass unchanged");
        assert!(guard.tracker.between_requests());
        assert_eq!(
            guard.ready.capacity(),
            0,
            "the guard holds no buffer of its own"
        );
    }
}
