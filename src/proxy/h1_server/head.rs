//! A request head read once: found in the buffer, parsed with `httparse` on the stack, judged
//! (is it this loop's to serve?) and turned into the request the request path takes, its
//! target and header values sharing the head's bytes.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};

use http_body_util::Full;

use crate::proxy::body::ClientBody;
use crate::proxy::framing::{STACK_HEADERS, blank_line, head_end};
use crate::proxy::headers::decimal_length;

/// What the buffer holds.
pub(super) enum Parsed {
    /// A whole head this loop serves, and how long its body is.
    Complete(Head),
    /// Not a whole head yet.
    Partial,
    /// A head for hyper (or for the framing guard to refuse).
    HandOff,
}

/// What the loop needs of a head it serves, and where its parts lie for building the request.
#[derive(Debug, Clone)]
pub(super) struct Head {
    /// The head's length in the buffer.
    pub(super) len: usize,
    /// Its body's (`Content-Length`, or 0).
    pub(super) body_len: usize,
    /// The client asked to close after this request.
    pub(super) close: bool,
    method: Method,
    target: (u32, u32),
}

impl Head {
    /// A `HEAD` request: its answer has no body.
    pub(super) fn head_request(&self) -> bool {
        self.method == Method::HEAD
    }
}

/// Empty lines before a request are allowed (RFC 9112 §2.2) and passed over (a lone `\r` is
/// not a line end: httparse refuses it, and so does hyper). Returns whether any were.
pub(super) fn skip_blank_lines(buf: &mut BytesMut) -> bool {
    let mut blank = 0;
    while let Some(line) = blank_line(&buf[blank..]) {
        blank += line;
    }
    buf.advance(blank);
    blank > 0
}

/// Where one header lies in the head: kept by the serving stretch and reused, so a request is
/// parsed once and its map built after the head's bytes are frozen.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Spot {
    name: (u32, u32),
    value: (u32, u32),
}

/// Finds, parses and judges the head at the start of `buf` without taking it, noting in
/// `spots` where its headers lie.
pub(super) fn parse(
    buf: &[u8],
    max_head: usize,
    max_headers: usize,
    spots: &mut Vec<Spot>,
) -> Parsed {
    let Some(len) = head_end(buf, 0) else {
        return if buf.len() >= max_head {
            Parsed::HandOff
        } else {
            Parsed::Partial
        };
    };
    if len >= max_head || u32::try_from(len).is_err() {
        return Parsed::HandOff;
    }
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; STACK_HEADERS];
    let slots = &mut slots[..max_headers.clamp(1, STACK_HEADERS)];
    let mut parsed = httparse::Request::new(&mut []);
    match parsed.parse_with_uninit_headers(&buf[..len], slots) {
        Ok(httparse::Status::Complete(n)) if n == len => {}
        _ => return Parsed::HandOff,
    }
    let (Some(method), Some(target), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return Parsed::HandOff;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::HandOff;
    };
    if method == Method::CONNECT {
        return Parsed::HandOff;
    }
    let at = |part: &[u8]| {
        let start = (part.as_ptr() as usize - buf.as_ptr() as usize) as u32;
        (start, start + part.len() as u32)
    };
    let mut head = Head {
        len,
        body_len: 0,
        close: false,
        method,
        target: at(target.as_bytes()),
    };
    let mut length: Option<u64> = None;
    spots.clear();
    for header in parsed.headers.iter() {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match decimal_length(header.value.trim_ascii()) {
                // The same length again is merged (RFC 9110 §8.6), as hyper does: one line
                // goes upstream.
                Some(n) if length == Some(n) => continue,
                Some(n) if length.is_none() => length = Some(n),
                _ => return Parsed::HandOff,
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in header.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    head.close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::HandOff;
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            // Chunked bodies, `100-continue` and protocol switches stream through hyper.
            return Parsed::HandOff;
        }
        spots.push(Spot {
            name: at(name),
            value: at(header.value),
        });
    }
    let Some(body_len) = length.map_or(Some(0), |l| usize::try_from(l).ok()) else {
        return Parsed::HandOff;
    };
    head.body_len = body_len;
    Parsed::Complete(head)
}

/// Takes the whole request (head and body) off the front of `buf`, as [`parse`] found it:
/// `None` if it cannot be built (hyper then judges it, and answers 400).
pub(super) fn request(
    buf: &mut BytesMut,
    head: &Head,
    spots: &[Spot],
) -> Option<Request<ClientBody>> {
    let bytes = buf.split_to(head.len).freeze();
    let body = (head.body_len > 0).then(|| buf.split_to(head.body_len).freeze());
    let uri = Uri::from_maybe_shared(slice(&bytes, head.target)).ok();
    let mut headers = HeaderMap::with_capacity(spots.len());
    let mut valid = uri.is_some();
    for spot in spots {
        let name = HeaderName::from_bytes(&bytes[range(spot.name)]);
        let value = HeaderValue::from_maybe_shared(slice(&bytes, spot.value));
        match (name, value) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => valid = false,
        }
    }
    if !valid {
        // Put back what was taken, for hyper to read.
        let mut whole = BytesMut::from(bytes.as_ref());
        if let Some(body) = &body {
            whole.extend_from_slice(body);
        }
        whole.extend_from_slice(buf);
        *buf = whole;
        return None;
    }
    let mut request = Request::new(ClientBody::Right(Full::new(body.unwrap_or_default())));
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = uri?;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(request)
}

fn range((start, end): (u32, u32)) -> std::ops::Range<usize> {
    start as usize..end as usize
}

fn slice(bytes: &Bytes, at: (u32, u32)) -> Bytes {
    bytes.slice(range(at))
}

#[cfg(test)]
mod tests {
    use http_body::Body as _;

    use super::*;

    fn judged(head: &[u8]) -> Parsed {
        parse(head, 8192, 100, &mut Vec::new())
    }

    #[test]
    fn a_plain_request_is_served_and_taken_whole() {
        let mut buf = BytesMut::from(
            &b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: mail\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhelloGET"[..],
        );
        let mut spots = Vec::new();
        let Parsed::Complete(head) = parse(&buf, 8192, 100, &mut spots) else {
            panic!("a plain request is served")
        };
        assert_eq!(head.body_len, 5);
        assert!(!head.close && !head.head_request());
        let request = request(&mut buf, &head, &spots).expect("built");
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri().path(), "/EWS/Exchange.asmx");
        assert_eq!(request.headers()["host"], "mail");
        assert_eq!(request.headers()["x-a"], "1");
        let mut body = request.into_body();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let std::task::Poll::Ready(Some(Ok(frame))) =
            std::pin::Pin::new(&mut body).poll_frame(&mut cx)
        else {
            panic!("the body is there at once")
        };
        assert_eq!(frame.into_data().unwrap(), "hello");
        assert!(body.is_end_stream());
        assert_eq!(&buf[..], b"GET", "the next request stays");
    }

    #[test]
    fn what_hyper_streams_or_the_guard_refuses_is_handed_off() {
        for head in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header : x\r\n\r\n",
            b"CONNECT mail:443 HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(judged(head), Parsed::HandOff),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn limits_hand_off_and_pieces_wait() {
        assert!(matches!(
            judged(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Parsed::Partial
        ));
        let long = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 9000]].concat();
        assert!(matches!(judged(&long), Parsed::HandOff));
        let many: Vec<u8> = (0..101)
            .flat_map(|i| format!("X-{i}: 1\r\n").into_bytes())
            .collect();
        let head = [b"GET / HTTP/1.1\r\n".as_slice(), &many, b"\r\n"].concat();
        assert!(matches!(judged(&head), Parsed::HandOff));
    }

    #[test]
    fn close_and_head_requests_are_noted() {
        let Parsed::Complete(head) =
            judged(b"HEAD / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n")
        else {
            panic!("served")
        };
        assert!(head.close && head.head_request() && head.body_len == 0);
    }

    #[test]
    fn blank_lines_before_a_request_are_passed_over() {
        let mut buf = BytesMut::from(&b"\r\n\nGET / HTTP/1.1\r\n\r\n"[..]);
        assert!(skip_blank_lines(&mut buf));
        assert!(buf.starts_with(b"GET "));
        assert!(matches!(judged(&buf), Parsed::Complete(_)));
        assert!(!skip_blank_lines(&mut buf), "nothing more to pass over");
        // A lone carriage return is not a line end: it stays for the parser to refuse.
        let mut buf = BytesMut::from(&b"\r\n\rX"[..]);
        assert!(skip_blank_lines(&mut buf));
        assert_eq!(&buf[..], b"\rX");
    }
}
