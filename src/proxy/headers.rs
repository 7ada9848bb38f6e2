//! Header rules between the two legs: hop-by-hop headers (and those named in `Connection`)
//! are removed, `X-Forwarded-*` is set with incoming values trusted only from configured peers,
//! framing that invites request smuggling is refused, and Windows auth is recognised. Affinity
//! headers and cookies (`X-AnchorMailbox`, `X-BackEndOverrideCookie`, …) are end-to-end and pass
//! untouched.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use super::respond::ProxyError;

/// Hop-by-hop headers of RFC 9110 §7.6.1, plus the legacy ones proxies must not forward, and
/// `Transfer-Encoding`: each leg frames its own body.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Exchange's routing hint: which mailbox a request is for (end-to-end; inspection reads it).
pub static X_ANCHOR_MAILBOX: HeaderName = HeaderName::from_static("x-anchormailbox");

/// Bit `i` of a hop-by-hop mask: `HOP_BY_HOP[i]` is there.
fn hop_by_hop_bit(name: &HeaderName) -> u16 {
    HOP_BY_HOP
        .iter()
        .position(|hop| hop == name)
        .map_or(0, |at| 1 << at)
}

fn connection_tokens(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split(',') {
            let token = token.trim();
            if token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || token.eq_ignore_ascii_case("keep-alive")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                names.push(name);
            }
        }
    }
    (!names.is_empty()).then_some(names)
}

/// What `Content-Length` declares over all its fields and list items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Length {
    #[default]
    Absent,
    /// Every value and list item is this number.
    Agreed(u64),
    /// Values that disagree, or one that is not a number.
    Invalid,
}

impl Length {
    /// This length with one more `Content-Length` value.
    pub fn and(self, value: &HeaderValue) -> Length {
        match (self, value_length(value.as_bytes())) {
            (Length::Invalid, _) | (_, None) => Length::Invalid,
            (Length::Absent, Some(n)) => Length::Agreed(n),
            (Length::Agreed(m), Some(n)) if m == n => Length::Agreed(m),
            (Length::Agreed(_), Some(_)) => Length::Invalid,
        }
    }

    pub fn agreed(self) -> Option<u64> {
        match self {
            Length::Agreed(n) => Some(n),
            _ => None,
        }
    }
}

/// A length written as decimal digits only (RFC 9110 §8.6: no sign, no spaces), if it fits.
pub(crate) fn decimal_length(item: &[u8]) -> Option<u64> {
    if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
        return None;
    }
    item.iter().try_fold(0u64, |n, &b| {
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// The one length a `Content-Length` value declares: digits, or a list of the same digits.
fn value_length(value: &[u8]) -> Option<u64> {
    let digits = decimal_length;
    if let Some(n) = digits(value) {
        return Some(n);
    }
    let mut found = None;
    for item in value.split(|&b| b == b',') {
        let n = digits(item.trim_ascii())?;
        match found {
            Some(seen) if seen != n => return None,
            _ => found = Some(n),
        }
    }
    found
}

/// What `Transfer-Encoding` lists over all its fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Codings {
    /// Codings listed (saturating).
    count: u8,
    /// A coding other than `chunked` (or an unreadable value) was listed.
    other: bool,
    /// The last coding listed is `chunked` (RFC 9112 §6.3: then the body is chunked).
    pub ends_chunked: bool,
}

impl Codings {
    /// These codings with one more `Transfer-Encoding` value.
    pub fn and(mut self, value: &HeaderValue) -> Codings {
        let Ok(text) = value.to_str() else {
            self.count = self.count.saturating_add(1);
            self.other = true;
            self.ends_chunked = false;
            return self;
        };
        for coding in text.split(',') {
            self.count = self.count.saturating_add(1);
            self.ends_chunked = coding.trim().eq_ignore_ascii_case("chunked");
            self.other |= !self.ends_chunked;
        }
        self
    }

    /// Whether the message has a `Transfer-Encoding`.
    pub fn present(self) -> bool {
        self.count > 0
    }
}

/// What `Connection` lists over all its fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
    /// It names a header besides `close` and `keep-alive`: that header goes too.
    names_headers: bool,
}

impl ConnectionTokens {
    /// These tokens with one more `Connection` value.
    pub fn and(mut self, value: &HeaderValue) -> ConnectionTokens {
        let Ok(text) = value.to_str() else {
            return self;
        };
        for token in text.split(',') {
            let token = token.trim();
            if token.eq_ignore_ascii_case("close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case("keep-alive") {
                self.keep_alive = true;
            } else if !token.is_empty() {
                self.names_headers = true;
            }
        }
        self
    }
}

/// The one length all `Content-Length` values (and list items) agree on; `None` when there is
/// none or they disagree or one is not a number.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .fold(Length::Absent, Length::and)
        .agreed()
}

/// Which `X-Forwarded-*` and `Forwarded` headers a request came with (bits).
const XFF: u8 = 1;
const XFP: u8 = 2;
const XFH: u8 = 4;
const FORWARDED: u8 = 8;

fn forwarded_bit(name: &HeaderName) -> u8 {
    if *name == header::FORWARDED {
        FORWARDED
    } else if *name == X_FORWARDED_FOR {
        XFF
    } else if *name == X_FORWARDED_PROTO {
        XFP
    } else if *name == X_FORWARDED_HOST {
        XFH
    } else {
        0
    }
}

/// The hop-by-hop headers a head carries: which of [`HOP_BY_HOP`], and what `Connection` says.
/// Small and `Copy`: an upstream exchange hands it on with the answer's body.
#[derive(Debug, Clone, Copy, Default)]
pub struct HopByHop {
    /// Bit `i`: `HOP_BY_HOP[i]` is there.
    present: u16,
    pub connection: ConnectionTokens,
}

impl HopByHop {
    /// Removes these headers, and every header `Connection` names (each told to `removed`
    /// first). Most messages carry none of them or only `Connection: keep-alive`.
    pub fn strip(&self, headers: &mut HeaderMap, mut removed: impl FnMut(&HeaderName)) {
        if self.present == 0 {
            return;
        }
        if self.connection.names_headers
            && let Some(named) = connection_tokens(headers)
        {
            for name in named {
                removed(&name);
                headers.remove(name);
            }
        }
        for (at, name) in HOP_BY_HOP.iter().enumerate() {
            if self.present & (1 << at) != 0 {
                headers.remove(name);
            }
        }
    }
}

/// What the proxy asks of a message's head, noted in one pass over its fields instead of a
/// lookup by name for each question (about a dozen per request: framing, credentials, `Expect`,
/// `Host`, hop-by-hop headers, cookies, forwarded headers; and on the answer, keep-alive and
/// framing again). Each lookup hashed the name and walked the map; a pass compares each name
/// once against the few wanted.
#[derive(Debug, Clone, Default)]
pub struct HeadFacts {
    pub hops: HopByHop,
    pub length: Length,
    pub codings: Codings,
    /// NTLM/Negotiate credentials (connection-oriented Windows auth).
    pub windows_auth: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The first `Host` value.
    pub host: Option<HeaderValue>,
    cookies: u8,
    /// `XFF`, `XFP`, `XFH`, `FORWARDED`.
    forwarded: u8,
}

impl HeadFacts {
    /// The facts of a head.
    pub fn of(headers: &HeaderMap) -> HeadFacts {
        let mut facts = HeadFacts::default();
        for (name, value) in headers {
            facts.note(name, value);
        }
        facts
    }

    /// The facts of a client's request head, marking credentials sensitive on the way (so
    /// nothing later, logs or `Debug` output, can print them).
    pub fn of_request(headers: &mut HeaderMap) -> HeadFacts {
        let mut facts = HeadFacts::default();
        for (name, value) in headers.iter_mut() {
            if *name == header::AUTHORIZATION
                || *name == header::PROXY_AUTHORIZATION
                || *name == header::COOKIE
            {
                value.set_sensitive(true);
            }
            facts.note(name, value);
        }
        facts
    }

    /// Notes one field.
    pub fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.hops.present |= hop_by_hop_bit(name);
        if *name == header::CONTENT_LENGTH {
            self.length = self.length.and(value);
        } else if *name == header::TRANSFER_ENCODING {
            self.codings = self.codings.and(value);
        } else if *name == header::CONNECTION {
            self.hops.connection = self.hops.connection.and(value);
        } else if *name == header::HOST {
            self.host.get_or_insert_with(|| value.clone());
        } else if *name == header::AUTHORIZATION {
            self.windows_auth |= is_windows_auth_value(value.as_bytes());
        } else if *name == header::EXPECT {
            self.expect_continue |= value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if *name == header::COOKIE {
            self.cookies = self.cookies.saturating_add(1);
        } else {
            self.forwarded |= forwarded_bit(name);
        }
    }

    /// Refuses framing a front-end and a back-end could read differently. hyper already
    /// rejects differing duplicate `Content-Length`s and a final coding other than chunked,
    /// and the [`framing`](super::framing) guard refuses `Content-Length` with
    /// `Transfer-Encoding` on HTTP/1.1 before hyper repairs it. Refused here: any coding
    /// besides a single `chunked` (`gzip, chunked`, `chunked, chunked`), and both headers
    /// together (a second line of defence).
    pub fn check_framing(&self) -> Result<(), ProxyError> {
        if !self.codings.present() {
            return Ok(());
        }
        if self.codings.count > 1 || self.codings.other {
            return Err(ProxyError::BadRequest(
                "transfer-encoding other than a single chunked",
            ));
        }
        if self.length != Length::Absent {
            return Err(ProxyError::BadRequest(
                "both content-length and transfer-encoding",
            ));
        }
        Ok(())
    }

    /// Removes the hop-by-hop headers these facts found, and every header `Connection` names
    /// (forgetting those).
    pub fn strip_hop_by_hop(&mut self, headers: &mut HeaderMap) {
        let hops = self.hops;
        hops.strip(headers, |name| {
            self.forwarded &= !forwarded_bit(name);
            if name == header::COOKIE {
                self.cookies = 0;
            }
        });
    }

    /// HTTP/2 lets a client split `Cookie` into several fields; an HTTP/1.1 upstream needs one
    /// (RFC 9113 §8.2.3). The pass counted them, so a head with one or none is not read again.
    pub fn join_cookies(&self, headers: &mut HeaderMap) {
        if self.cookies < 2 {
            return;
        }
        let joined: Vec<u8> = headers
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect::<Vec<_>>()
            .join(&b"; "[..]);
        if let Ok(mut value) = HeaderValue::from_bytes(&joined) {
            value.set_sensitive(true);
            headers.insert(header::COOKIE, value);
        }
    }
}

/// Whether the last transfer coding is `chunked` (RFC 9112 §6.3: then the body is chunked).
pub fn ends_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .fold(Codings::default(), Codings::and)
        .ends_chunked
}

/// Whether a request's `Authorization` values (any of them) carry Windows
/// (connection-oriented) authentication.
pub fn is_windows_auth<'v>(authorization: impl IntoIterator<Item = &'v [u8]>) -> bool {
    authorization.into_iter().any(is_windows_auth_value)
}

/// Whether one `Authorization` value is NTLM or Negotiate.
fn is_windows_auth_value(b: &[u8]) -> bool {
    starts_with_ignore_case(b, b"ntlm ")
        || starts_with_ignore_case(b, b"negotiate ")
        || b.eq_ignore_ascii_case(b"ntlm")
        || b.eq_ignore_ascii_case(b"negotiate")
}

fn starts_with_ignore_case(haystack: &[u8], prefix: &[u8]) -> bool {
    haystack.len() >= prefix.len() && haystack[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The client-facing facts the forwarded headers are built from.
#[derive(Debug, Clone, Copy)]
pub struct ClientFacts<'a> {
    pub peer: IpAddr,
    /// `peer` as a header value, rendered once per connection.
    pub peer_value: &'a HeaderValue,
    pub tls: bool,
    pub trusted: &'a [IpNet],
}

impl HeadFacts {
    /// Sets `X-Forwarded-For/Proto/Host` on the head these facts were taken from. Incoming
    /// values are kept (and extended) only when the peer is a trusted proxy; otherwise they
    /// are replaced, so a client cannot forge its origin.
    pub fn set_forwarded(
        &self,
        headers: &mut HeaderMap,
        client: ClientFacts<'_>,
        original_host: Option<HeaderValue>,
    ) {
        let trusted = client.trusted.iter().any(|net| net.contains(&client.peer));
        let has = |bit: u8| self.forwarded & bit != 0;
        let prior = if trusted && has(XFF) {
            headers
                .get(&X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok())
                .filter(|prior| !prior.trim().is_empty())
        } else {
            None
        };
        // The peer alone (nearly every request) is the connection's rendered value, not a new
        // one.
        let xff = match prior {
            Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", client.peer)).ok(),
            None => Some(client.peer_value.clone()),
        };
        if let Some(v) = xff {
            headers.insert(&X_FORWARDED_FOR, v);
        }
        if !(trusted && has(XFP)) {
            let proto = if client.tls { "https" } else { "http" };
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !(trusted && has(XFH)) {
            match original_host {
                Some(host) => {
                    headers.insert(&X_FORWARDED_HOST, host);
                }
                None if has(XFH) => {
                    headers.remove(&X_FORWARDED_HOST);
                }
                None => {}
            }
        }
        if !trusted && has(FORWARDED) {
            headers.remove(header::FORWARDED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_tokens_and_the_last_coding_are_read_in_any_case_and_list() {
        let says = |h: &HeaderMap| HeadFacts::of(h).hops.connection;
        let h = map(&[("connection", "Upgrade, Keep-Alive"), ("connection", "x")]);
        assert!(says(&h).keep_alive);
        assert!(!says(&h).close);
        assert!(says(&map(&[("connection", "foo,CLOSE")])).close);
        assert!(ends_chunked(&map(&[(
            "transfer-encoding",
            "gzip, Chunked"
        )])));
        assert!(ends_chunked(&map(&[
            ("transfer-encoding", "gzip"),
            ("transfer-encoding", "chunked")
        ])));
        assert!(!ends_chunked(&map(&[(
            "transfer-encoding",
            "chunked, gzip"
        )])));
        assert!(!ends_chunked(&map(&[])));
    }

    /// The request path's removal of hop-by-hop headers.
    fn strip_hop_by_hop(headers: &mut HeaderMap) {
        HeadFacts::of(headers).strip_hop_by_hop(headers);
    }

    fn check_framing(headers: &HeaderMap) -> Result<(), ProxyError> {
        HeadFacts::of(headers).check_framing()
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let bytes: Vec<(&str, &[u8])> = pairs.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        map_bytes(&bytes)
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-anchormailbox", "someone@example.com"),
            ("x-preferserveraffinity", "true"),
            ("cookie", "X-BackEndOverrideCookie=abc"),
        ]);
        strip_hop_by_hop(&mut h);
        for gone in ["connection", "x-secret-hop", "keep-alive", "te", "upgrade"] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
        for kept in ["x-anchormailbox", "x-preferserveraffinity", "cookie"] {
            assert!(h.contains_key(kept), "{kept} dropped");
        }
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_stripped_and_others_are_kept() {
        let end_to_end = [
            ("x-anchormailbox", "a@example.com"),
            ("content-length", "5"),
        ];
        let mut h = map(&end_to_end);
        strip_hop_by_hop(&mut h);
        assert_eq!(h, map(&end_to_end));
        for hop in &HOP_BY_HOP {
            let mut h = map(&end_to_end);
            h.insert(hop.clone(), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h, map(&end_to_end), "{hop} kept");
        }
    }

    #[test]
    fn framing_rules() {
        assert!(check_framing(&map(&[("transfer-encoding", "chunked")])).is_ok());
        assert!(check_framing(&map(&[("content-length", "5")])).is_ok());
        assert!(check_framing(&map(&[("transfer-encoding", "gzip, chunked")])).is_err());
        assert!(check_framing(&map(&[("transfer-encoding", "chunked, chunked")])).is_err());
        assert!(
            check_framing(&map(&[
                ("transfer-encoding", "chunked"),
                ("content-length", "3")
            ]))
            .is_err()
        );
    }

    /// Whether a head's `Authorization` values carry Windows authentication.
    fn windows_auth_in(headers: &HeaderMap) -> bool {
        is_windows_auth(
            headers
                .get_all(header::AUTHORIZATION)
                .iter()
                .map(HeaderValue::as_bytes),
        )
    }

    #[test]
    fn windows_auth_is_recognised_in_any_case() {
        let auth = |value: &str| windows_auth_in(&map(&[("authorization", value)]));
        assert!(auth("NTLM TlRMTVNTUAABAAAA"));
        assert!(auth("negotiate YIIB"));
        assert!(auth("NTLM"));
        assert!(!auth("Bearer eyJ0"));
        assert!(!auth("NTLMish"));
        let both = map(&[
            ("authorization", "Basic eDp5"),
            ("authorization", "NTLM TlRM"),
        ]);
        assert!(windows_auth_in(&both), "any of several values");
    }

    #[test]
    fn forwarded_headers_trust_only_configured_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let host = Some(HeaderValue::from_static("mail.example.com"));
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "http"),
        ]);
        let untrusted = ClientFacts {
            peer: "192.0.2.1".parse().unwrap(),
            peer_value: &HeaderValue::from_static("192.0.2.1"),
            tls: true,
            trusted: &trusted,
        };
        HeadFacts::of(&h).set_forwarded(&mut h, untrusted, host.clone());
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "mail.example.com");

        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "http"),
        ]);
        let proxy = ClientFacts {
            peer: "10.1.2.3".parse().unwrap(),
            peer_value: &HeaderValue::from_static("10.1.2.3"),
            tls: true,
            trusted: &trusted,
        };
        HeadFacts::of(&h).set_forwarded(&mut h, proxy, host);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9, 10.1.2.3");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
    }

    #[test]
    fn forwarded_headers_a_connection_header_removed_are_set_again() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = map(&[
            ("connection", "x-forwarded-proto, forwarded"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "inner.example"),
            ("forwarded", "for=203.0.113.9"),
        ]);
        let mut facts = HeadFacts::of(&h);
        facts.strip_hop_by_hop(&mut h);
        let proxy = ClientFacts {
            peer: "10.1.2.3".parse().unwrap(),
            peer_value: &HeaderValue::from_static("10.1.2.3"),
            tls: true,
            trusted: &trusted,
        };
        facts.set_forwarded(&mut h, proxy, None);
        assert_eq!(
            h[&X_FORWARDED_PROTO], "https",
            "the client's was a hop-by-hop header"
        );
        assert_eq!(
            h[&X_FORWARDED_HOST], "inner.example",
            "a trusted proxy's is kept"
        );
        assert!(!h.contains_key(header::FORWARDED));
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3");
    }

    /// The by-name answers of the code this pass replaced, kept to check it against.
    mod by_name {
        use super::*;

        pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
            headers.get_all(header::CONNECTION).iter().any(|v| {
                v.to_str().is_ok_and(|text| {
                    text.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case(token))
                })
            })
        }

        pub fn ends_chunked(headers: &HeaderMap) -> bool {
            headers
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
        }

        pub fn check_framing(headers: &HeaderMap) -> bool {
            let mut codings = 0;
            for value in headers.get_all(header::TRANSFER_ENCODING) {
                let Ok(text) = value.to_str() else {
                    return false;
                };
                for coding in text.split(',') {
                    codings += 1;
                    if !coding.trim().eq_ignore_ascii_case("chunked") || codings > 1 {
                        return false;
                    }
                }
            }
            !(codings > 0 && headers.contains_key(header::CONTENT_LENGTH))
        }

        pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
            let mut found = None;
            for value in headers.get_all(header::CONTENT_LENGTH) {
                for item in value.to_str().ok()?.split(',') {
                    let item = item.trim();
                    if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    let length = item.parse::<u64>().ok()?;
                    match found {
                        Some(seen) if seen != length => return None,
                        _ => found = Some(length),
                    }
                }
            }
            found
        }

        /// Marking credentials, then the rewrites for the upstream, as the request path did.
        pub fn upstream_head(headers: &mut HeaderMap, client: ClientFacts<'_>) {
            for (name, value) in headers.iter_mut() {
                if [
                    header::AUTHORIZATION,
                    header::PROXY_AUTHORIZATION,
                    header::COOKIE,
                ]
                .contains(name)
                {
                    value.set_sensitive(true);
                }
            }
            let host = headers.get(header::HOST).cloned();
            let mut named = Vec::new();
            for value in headers.get_all(header::CONNECTION) {
                let Ok(text) = value.to_str() else { continue };
                for token in text.split(',').map(str::trim) {
                    let keep = token.is_empty()
                        || token.eq_ignore_ascii_case("close")
                        || token.eq_ignore_ascii_case("keep-alive");
                    if let (false, Ok(name)) = (keep, HeaderName::from_bytes(token.as_bytes())) {
                        named.push(name);
                    }
                }
            }
            for name in named {
                headers.remove(name);
            }
            for name in &HOP_BY_HOP {
                headers.remove(name);
            }
            // Written apart from the pass's own join, so that the comparison can fail.
            let mut joined = Vec::new();
            for (i, cookie) in headers.get_all(header::COOKIE).iter().enumerate() {
                if i > 0 {
                    joined.extend_from_slice(b"; ");
                }
                joined.extend_from_slice(cookie.as_bytes());
            }
            if headers.get_all(header::COOKIE).iter().nth(1).is_some()
                && let Ok(mut value) = HeaderValue::from_bytes(&joined)
            {
                value.set_sensitive(true);
                headers.insert(header::COOKIE, value);
            }
            let trusted = client.trusted.iter().any(|net| net.contains(&client.peer));
            let prior = headers
                .get(&X_FORWARDED_FOR)
                .filter(|_| trusted)
                .and_then(|v| v.to_str().ok())
                .filter(|prior| !prior.trim().is_empty());
            let xff = match prior {
                Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", client.peer)).ok(),
                None => Some(client.peer_value.clone()),
            };
            if let Some(v) = xff {
                headers.insert(&X_FORWARDED_FOR, v);
            }
            if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
                let proto = if client.tls { "https" } else { "http" };
                headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
            }
            if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
                match host {
                    Some(host) => {
                        headers.insert(&X_FORWARDED_HOST, host);
                    }
                    None => {
                        headers.remove(&X_FORWARDED_HOST);
                    }
                }
            }
            if !trusted {
                headers.remove(header::FORWARDED);
            }
        }
    }

    fn field() -> impl proptest::strategy::Strategy<Value = (&'static str, &'static [u8])> {
        use proptest::prelude::*;
        let names = prop::sample::select(vec![
            "connection",
            "keep-alive",
            "transfer-encoding",
            "content-length",
            "authorization",
            "proxy-authorization",
            "expect",
            "host",
            "cookie",
            "te",
            "upgrade",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
            "x-custom",
            "content-type",
        ]);
        let values: Vec<&'static [u8]> = vec![
            b"close",
            b"Keep-Alive",
            b"x-custom, close",
            b"cookie, x-forwarded-for",
            b"X-Forwarded-Proto,x-forwarded-host, forwarded",
            b"chunked",
            b"gzip, Chunked",
            b"chunked, gzip",
            b"chunked,",
            b"\tchunked ",
            b"12",
            b"12, 12",
            b"12, 13",
            b" 12\t",
            b"+1",
            b"18446744073709551615",
            b"18446744073709551616",
            b"",
            b"NTLM TlRMTVNT",
            b"Negotiate",
            b"Bearer x",
            b"100-Continue",
            b"a=1",
            b"mail.example",
            b"10.9.8.7",
            b"caf\xc3\xa9",
            b"\xff chunked",
        ];
        (names, prop::sample::select(values))
    }

    fn map_bytes(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    fn sensitivity(h: &HeaderMap) -> Vec<(String, bool)> {
        h.iter()
            .map(|(name, value)| (name.to_string(), value.is_sensitive()))
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn one_pass_answers_as_the_lookups_by_name_did(
            fields in proptest::collection::vec(field(), 0..8),
            trusted_peer in proptest::bool::ANY,
        ) {
            let h = map_bytes(&fields);
            let facts = HeadFacts::of(&h);
            proptest::prop_assert_eq!(facts.hops.connection.close, by_name::connection_has(&h, "close"));
            proptest::prop_assert_eq!(
                facts.hops.connection.keep_alive,
                by_name::connection_has(&h, "keep-alive")
            );
            proptest::prop_assert_eq!(facts.length.agreed(), by_name::declared_length(&h));
            proptest::prop_assert_eq!(declared_length(&h), by_name::declared_length(&h));
            proptest::prop_assert_eq!(
                facts.length != Length::Absent,
                h.contains_key(header::CONTENT_LENGTH)
            );
            proptest::prop_assert_eq!(
                facts.codings.present(),
                h.contains_key(header::TRANSFER_ENCODING)
            );
            proptest::prop_assert_eq!(facts.codings.ends_chunked, by_name::ends_chunked(&h));
            proptest::prop_assert_eq!(ends_chunked(&h), by_name::ends_chunked(&h));
            proptest::prop_assert_eq!(facts.windows_auth, windows_auth_in(&h));
            proptest::prop_assert_eq!(facts.host.as_ref(), h.get(header::HOST));
            // Any `Expect` field asking for it counts (hyper's server, which sends the
            // `100 Continue`, reads the last one; the by-name lookup read only the first).
            proptest::prop_assert_eq!(
                facts.expect_continue,
                h.get_all(header::EXPECT)
                    .iter()
                    .any(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
            );
            proptest::prop_assert_eq!(facts.check_framing().is_ok(), by_name::check_framing(&h));

            // The whole rewrite for the upstream, against the by-name steps it replaced.
            let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
            let peer = if trusted_peer { "10.1.2.3" } else { "192.0.2.1" };
            let peer_value = HeaderValue::from_static(peer);
            let client = ClientFacts {
                peer: peer.parse().unwrap(),
                peer_value: &peer_value,
                tls: true,
                trusted: &trusted,
            };
            let (mut once, mut by_name) = (h.clone(), h.clone());
            let mut facts = HeadFacts::of_request(&mut once);
            let host = facts.host.take();
            facts.strip_hop_by_hop(&mut once);
            facts.join_cookies(&mut once);
            facts.set_forwarded(&mut once, client, host);
            by_name::upstream_head(&mut by_name, client);
            proptest::prop_assert_eq!(sensitivity(&once), sensitivity(&by_name));
            proptest::prop_assert_eq!(once, by_name);
        }
    }

    #[test]
    fn split_cookies_are_joined() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        HeadFacts::of(&h).join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2");
        assert!(h["cookie"].is_sensitive());
    }
}
