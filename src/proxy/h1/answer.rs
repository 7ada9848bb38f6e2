//! The answer side of an exchange: its head read and parsed, and its body framed and read.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use http_body::{Body, Frame, SizeHint};

use super::request::Sender;
use super::{Connection, ExchangeError, MAX_CHUNK_LINE, MAX_HEAD, MAX_HEADERS, Park};
use crate::proxy::framing::{blank_line, head_end};
use crate::proxy::headers::{HeadFacts, HopByHop, Length};

/// A parsed answer head.
pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    /// What framing and keep-alive read of the headers, noted as the map was built.
    pub(super) facts: HeadFacts,
    /// The reason phrase when it is not the status code's own (OWA's `440 Login Timeout`):
    /// hyper's server writes it back out as sent.
    pub(super) reason: Option<hyper::ext::ReasonPhrase>,
}

/// Reads until a whole head is buffered, then parses it (its header values share its bytes).
pub(super) fn poll_head(
    connection: &mut Connection,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, ExchangeError>> {
    loop {
        // Blank lines before a status line are passed over, as httparse does.
        while let Some(blank) = blank_line(&connection.read) {
            connection.read.advance(blank);
        }
        // Searched again from just before where the last search stopped (a line end and
        // blank line take three bytes at most): a head trickled in costs one pass.
        let from = connection.scanned.saturating_sub(3);
        if let Some(end) = head_end(&connection.read, from) {
            connection.scanned = 0;
            let head = connection.read.split_to(end).freeze();
            return Poll::Ready(parse_head(&head));
        }
        connection.scanned = connection.read.len();
        if connection.read.len() > MAX_HEAD {
            return Poll::Ready(Err(ExchangeError::HeadTooLarge));
        }
        let had = connection.read.len();
        match ready!(connection.poll_fill(cx)) {
            Ok(0) if had == 0 => return Poll::Ready(Err(ExchangeError::ClosedBeforeAnswer)),
            Ok(0) => return Poll::Ready(Err(ExchangeError::Incomplete)),
            Ok(_) => {}
            Err(error)
                if had == 0
                    && matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                    ) =>
            {
                return Poll::Ready(Err(ExchangeError::ClosedBeforeAnswer));
            }
            Err(error) => return Poll::Ready(Err(error.into())),
        }
    }
}

pub(super) fn parse_head(head: &Bytes) -> Result<Head, ExchangeError> {
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        head,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(ExchangeError::Malformed("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => return Err(ExchangeError::HeadTooLarge),
        Err(_) => return Err(ExchangeError::Malformed("invalid head")),
    }
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(ExchangeError::Malformed("invalid status"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let reason = parsed
        .reason
        .filter(|reason| status.canonical_reason() != Some(*reason))
        .and_then(|reason| {
            hyper::ext::ReasonPhrase::try_from(head.slice_ref(reason.as_bytes())).ok()
        });
    let (headers, facts) = header_map(head, parsed.headers)?;
    Ok(Head {
        status,
        version,
        headers,
        facts,
        reason,
    })
}

/// The fields as a header map whose values are slices of `source`, and their facts.
pub(super) fn header_map(
    source: &Bytes,
    fields: &[httparse::Header<'_>],
) -> Result<(HeaderMap, HeadFacts), ExchangeError> {
    let mut map = HeaderMap::with_capacity(fields.len());
    let mut facts = HeadFacts::default();
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| ExchangeError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(source.slice_ref(field.value))
            .map_err(|_| ExchangeError::Malformed("invalid header value"))?;
        facts.note(&name, &value);
        map.append(name, value);
    }
    Ok((map, facts))
}

/// How the rest of an answer's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rest {
    /// Nothing more.
    Done,
    Length(u64),
    /// A chunked body, at this point of it.
    Chunk(ChunkAt),
    /// Everything until the upstream closes.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkAt {
    /// A chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// An answer's body, read from its connection; the connection is parked again at its end when
/// it can take another request, and closed when the body is dropped before.
pub struct Answer {
    connection: Option<Connection>,
    /// What is left of the request, sent as the answer is read.
    sender: Option<Sender>,
    rest: Rest,
    reusable: bool,
    home: Option<Arc<dyn Park>>,
    /// The head's hop-by-hop headers, for the proxy's rewrite of the head: read once, as the
    /// map was built.
    hops: Option<HopByHop>,
}

impl Answer {
    /// The hop-by-hop headers of the head this body belongs to (once).
    pub fn take_hop_by_hop(&mut self) -> Option<HopByHop> {
        self.hops.take()
    }

    /// Frames the body the head announces (RFC 9112 §6.3).
    pub(super) fn new(
        connection: Connection,
        head: &Head,
        head_request: bool,
        sender: Option<Sender>,
        abandoned: bool,
        home: Arc<dyn Park>,
    ) -> Result<Answer, ExchangeError> {
        let facts = &head.facts;
        let mut reusable = !abandoned && keeps_alive(head.version, facts);
        let rest = if head_request
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::NOT_MODIFIED
        {
            Rest::Done
        } else if facts.codings.present() {
            if head.version == Version::HTTP_10 {
                return Err(ExchangeError::Malformed(
                    "transfer coding in an HTTP/1.0 answer",
                ));
            }
            if facts.length != Length::Absent {
                reusable = false;
            }
            if facts.codings.ends_chunked {
                Rest::Chunk(ChunkAt::Size)
            } else {
                reusable = false;
                Rest::UntilClose
            }
        } else if facts.length != Length::Absent {
            match facts.length.agreed() {
                Some(0) => Rest::Done,
                Some(length) => Rest::Length(length),
                None => return Err(ExchangeError::Malformed("invalid content-length")),
            }
        } else {
            reusable = false;
            Rest::UntilClose
        };
        let mut answer = Answer {
            connection: Some(connection),
            sender,
            rest,
            reusable,
            home: Some(home),
            hops: Some(facts.hops),
        };
        if rest == Rest::Done {
            answer.finish();
        }
        Ok(answer)
    }

    /// The body has ended: park the connection when it can take another request (the whole
    /// request went out, the upstream keeps it open, and it sent nothing past the answer).
    fn finish(&mut self) {
        self.rest = Rest::Done;
        if self.sender.take().is_some() {
            // Part of the request never went out: the upstream may still read it as the start
            // of the next request. (Dropping the sender reads the client's rest.)
            self.reusable = false;
        }
        let connection = self.connection.take();
        let home = self.home.take();
        if let (Some(connection), Some(home), true) = (connection, home, self.reusable)
            && connection.read.is_empty()
        {
            home.park(connection);
        }
    }

    /// The next piece of data, up to `limit` bytes, from what is buffered or read now; `None`
    /// at the upstream's end.
    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
        limit: u64,
    ) -> Poll<Result<Option<Bytes>, ExchangeError>> {
        let Some(connection) = self.connection.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        if connection.read.is_empty() && ready!(connection.poll_fill(cx))? == 0 {
            return Poll::Ready(Ok(None));
        }
        let take = (connection.read.len() as u64).min(limit) as usize;
        Poll::Ready(Ok(Some(connection.read.split_to(take).freeze())))
    }

    /// Makes sure `want` bytes are buffered; false at the upstream's end before that.
    fn poll_buffered(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<Result<bool, ExchangeError>> {
        let Some(connection) = self.connection.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        while connection.read.len() < want {
            if ready!(connection.poll_fill(cx))? == 0 {
                return Poll::Ready(Ok(false));
            }
        }
        Poll::Ready(Ok(true))
    }

    /// A line (without its CRLF) of at most `max` bytes, taken from the buffer; a bare LF ends
    /// no chunk line (hyper refused those too).
    fn poll_line(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Bytes, ExchangeError>> {
        let Some(connection) = self.connection.as_mut() else {
            return Poll::Ready(Err(ExchangeError::Incomplete));
        };
        let mut searched = 0;
        loop {
            if let Some(at) = memchr::memchr(b'\n', &connection.read[searched..]) {
                let line = connection.read.split_to(searched + at + 1).freeze();
                if line.len() < 2 || line[line.len() - 2] != b'\r' {
                    return Poll::Ready(Err(ExchangeError::Malformed("chunk line without CRLF")));
                }
                return Poll::Ready(Ok(line.slice(..line.len() - 2)));
            }
            searched = connection.read.len();
            if searched > max {
                return Poll::Ready(Err(ExchangeError::Malformed("chunk line too long")));
            }
            if ready!(connection.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(ExchangeError::Incomplete));
            }
        }
    }

    /// One step of a chunked body: `Some(frame)` to return, `None` to go on.
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        at: ChunkAt,
    ) -> Poll<Result<Option<Frame<Bytes>>, ExchangeError>> {
        match at {
            ChunkAt::Size => {
                let line = ready!(self.poll_line(cx, MAX_CHUNK_LINE))?;
                let size = chunk_size(&line)?;
                self.rest = Rest::Chunk(if size == 0 {
                    ChunkAt::Trailers
                } else {
                    ChunkAt::Data(size)
                });
                Poll::Ready(Ok(None))
            }
            ChunkAt::Data(left) => {
                let Some(data) = ready!(self.poll_data(cx, left))? else {
                    return Poll::Ready(Err(ExchangeError::Incomplete));
                };
                let left = left - data.len() as u64;
                self.rest = Rest::Chunk(if left == 0 {
                    ChunkAt::DataEnd
                } else {
                    ChunkAt::Data(left)
                });
                Poll::Ready(Ok(Some(Frame::data(data))))
            }
            ChunkAt::DataEnd => {
                if !ready!(self.poll_buffered(cx, 2))? {
                    return Poll::Ready(Err(ExchangeError::Incomplete));
                }
                let Some(connection) = self.connection.as_mut() else {
                    return Poll::Ready(Err(ExchangeError::Incomplete));
                };
                if &connection.read[..2] != b"\r\n" {
                    return Poll::Ready(Err(ExchangeError::Malformed(
                        "chunk data not followed by CRLF",
                    )));
                }
                connection.read.advance(2);
                self.rest = Rest::Chunk(ChunkAt::Size);
                Poll::Ready(Ok(None))
            }
            ChunkAt::Trailers => self.poll_trailers(cx),
        }
    }

    /// The trailer section: nothing (a blank line) or fields; either ends the body.
    fn poll_trailers(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame<Bytes>>, ExchangeError>> {
        let Some(connection) = self.connection.as_mut() else {
            return Poll::Ready(Err(ExchangeError::Incomplete));
        };
        loop {
            let blank = blank_line(&connection.read);
            if let Some(end) = blank.or_else(|| head_end(&connection.read, 0)) {
                let section = connection.read.split_to(end).freeze();
                // Checked before the connection can go back: a bad section breaks the answer.
                let trailers = match blank {
                    Some(_) => None,
                    None => Some(parse_trailers(&section)?),
                };
                self.finish();
                return Poll::Ready(Ok(trailers.map(Frame::trailers)));
            }
            if connection.read.len() > MAX_HEAD {
                return Poll::Ready(Err(ExchangeError::HeadTooLarge));
            }
            if ready!(connection.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(ExchangeError::Incomplete));
            }
        }
    }
}

pub(super) fn parse_trailers(section: &Bytes) -> Result<HeaderMap, ExchangeError> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => Ok(header_map(section, fields)?.0),
        Ok(httparse::Status::Partial) => Err(ExchangeError::Malformed("incomplete trailers")),
        Err(httparse::Error::TooManyHeaders) => Err(ExchangeError::HeadTooLarge),
        Err(_) => Err(ExchangeError::Malformed("invalid trailers")),
    }
}

/// The size on a chunk-size line: hex digits (leading zeros aside, at most 16), then nothing
/// or optional white space and `;` extensions.
pub(super) fn chunk_size(line: &[u8]) -> Result<u64, ExchangeError> {
    let invalid = ExchangeError::Malformed("invalid chunk size");
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let after = line[digits..]
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .map(|i| line[digits + i]);
    if digits == 0 || !matches!(after, None | Some(b';')) {
        return Err(invalid);
    }
    let significant = &line[line[..digits]
        .iter()
        .position(|&b| b != b'0')
        .unwrap_or(digits)..digits];
    if significant.len() > 16 {
        return Err(invalid);
    }
    Ok(significant.iter().fold(0u64, |size, &b| {
        let digit = (b as char).to_digit(16).unwrap_or(0);
        (size << 4) | u64::from(digit)
    }))
}

/// Whether the upstream keeps the connection open after this answer.
pub(super) fn keeps_alive(version: Version, facts: &HeadFacts) -> bool {
    if version == Version::HTTP_10 {
        facts.hops.connection.keep_alive
    } else {
        !facts.hops.connection.close
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = &mut *self;
        if let (Some(sender), Some(connection)) = (this.sender.as_mut(), this.connection.as_mut()) {
            match sender.poll_send(&mut connection.io, cx) {
                Poll::Ready(Ok(())) => this.sender = None,
                // The upstream refused the rest of the request: its answer is still read, and
                // the connection is not used again.
                Poll::Ready(Err(ExchangeError::Io(_))) => {
                    this.sender = None;
                    this.reusable = false;
                }
                Poll::Ready(Err(error)) => {
                    this.connection = None;
                    this.rest = Rest::Done;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Pending => {}
            }
        }
        let polled = loop {
            match this.rest {
                Rest::Done => return Poll::Ready(None),
                Rest::Length(left) => {
                    break match ready!(this.poll_data(cx, left)) {
                        Ok(Some(data)) => {
                            let left = left - data.len() as u64;
                            this.rest = Rest::Length(left);
                            if left == 0 {
                                this.finish();
                            }
                            Ok(Frame::data(data))
                        }
                        Ok(None) => Err(ExchangeError::Incomplete),
                        Err(error) => Err(error),
                    };
                }
                Rest::UntilClose => match ready!(this.poll_data(cx, u64::MAX)) {
                    Ok(Some(data)) => break Ok(Frame::data(data)),
                    Ok(None) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Err(error) => break Err(error),
                },
                Rest::Chunk(at) => match ready!(this.poll_chunk(cx, at)) {
                    Ok(Some(frame)) => break Ok(frame),
                    Ok(None) => continue,
                    Err(error) => break Err(error),
                },
            }
        };
        if polled.is_err() {
            // A broken answer: the connection is not used again.
            this.connection = None;
            this.rest = Rest::Done;
        }
        Poll::Ready(Some(polled))
    }

    fn is_end_stream(&self) -> bool {
        self.rest == Rest::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.rest {
            Rest::Done => SizeHint::with_exact(0),
            Rest::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}
