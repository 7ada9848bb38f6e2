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

/// Removes hop-by-hop headers, including every header the `Connection` header names.
///
/// One pass over the names first, noting which are there: most messages carry none of them or
/// only `Connection` (clients and servers alike send `Connection: keep-alive`), and a removal
/// by name costs a hash lookup each — nine per message and leg when every one was removed
/// whether there or not.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Bit `i` set: `HOP_BY_HOP[i]` is there.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(at) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << at;
        }
    }
    if present == 0 {
        return;
    }
    if let Some(named) = connection_tokens(headers) {
        for name in named {
            headers.remove(name);
        }
    }
    for (at, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << at) != 0 {
            headers.remove(name);
        }
    }
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

/// Whether the last transfer coding is `chunked` (RFC 9112 §6.3: then the body is chunked).
pub fn ends_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
}

/// Whether the message asks for its connection to close.
pub fn wants_close(headers: &HeaderMap) -> bool {
    connection_has(headers, "close")
}

/// Whether a `Connection` header lists `token` (in any case).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|text| {
            text.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// Refuses framing a front-end and a back-end could read differently. hyper already rejects
/// differing duplicate `Content-Length`s and a final coding other than chunked, and the
/// [`framing`](super::framing) guard refuses `Content-Length` with `Transfer-Encoding` on
/// HTTP/1.1 before hyper repairs it. Refused here: any coding besides a single `chunked`
/// (`gzip, chunked`, `chunked, chunked`), and both headers together (a second line of defence).
pub fn check_framing(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut codings = 0;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let text = value
            .to_str()
            .map_err(|_| ProxyError::BadRequest("unreadable transfer-encoding"))?;
        for coding in text.split(',') {
            codings += 1;
            if !coding.trim().eq_ignore_ascii_case("chunked") || codings > 1 {
                return Err(ProxyError::BadRequest(
                    "transfer-encoding other than a single chunked",
                ));
            }
        }
    }
    if codings > 0 && headers.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest(
            "both content-length and transfer-encoding",
        ));
    }
    Ok(())
}

/// Whether a request carries Windows (connection-oriented) authentication.
pub fn is_windows_auth(headers: &HeaderMap) -> bool {
    headers.get_all(header::AUTHORIZATION).iter().any(|v| {
        let b = v.as_bytes();
        starts_with_ignore_case(b, b"ntlm ")
            || starts_with_ignore_case(b, b"negotiate ")
            || b.eq_ignore_ascii_case(b"ntlm")
            || b.eq_ignore_ascii_case(b"negotiate")
    })
}

fn starts_with_ignore_case(haystack: &[u8], prefix: &[u8]) -> bool {
    haystack.len() >= prefix.len() && haystack[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// HTTP/2 lets a client split `Cookie` into several fields; an HTTP/1.1 upstream needs one
/// (RFC 9113 §8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
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

/// The client-facing facts the forwarded headers are built from.
#[derive(Debug, Clone, Copy)]
pub struct ClientFacts<'a> {
    pub peer: IpAddr,
    /// `peer` as a header value, rendered once per connection.
    pub peer_value: &'a HeaderValue,
    pub tls: bool,
    pub trusted: &'a [IpNet],
}

/// Sets `X-Forwarded-For/Proto/Host`. Incoming values are kept (and extended) only when the
/// peer is a trusted proxy; otherwise they are replaced, so a client cannot forge its origin.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    facts: ClientFacts<'_>,
    original_host: Option<HeaderValue>,
) {
    let trusted = facts.trusted.iter().any(|net| net.contains(&facts.peer));
    let prior = headers
        .get(&X_FORWARDED_FOR)
        .filter(|_| trusted)
        .and_then(|v| v.to_str().ok())
        .filter(|prior| !prior.trim().is_empty());
    // The peer alone (nearly every request) is the connection's rendered value, not a new one.
    let xff = match prior {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", facts.peer)).ok(),
        None => Some(facts.peer_value.clone()),
    };
    if let Some(v) = xff {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if facts.tls { "https" } else { "http" };
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match original_host {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_tokens_and_the_last_coding_are_read_in_any_case_and_list() {
        let h = map(&[("connection", "Upgrade, Keep-Alive"), ("connection", "x")]);
        assert!(connection_has(&h, "keep-alive"));
        assert!(!connection_has(&h, "close") && !wants_close(&h));
        assert!(wants_close(&map(&[("connection", "foo,CLOSE")])));
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

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
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

    #[test]
    fn windows_auth_is_recognised_in_any_case() {
        assert!(is_windows_auth(&map(&[(
            "authorization",
            "NTLM TlRMTVNTUAABAAAA"
        )])));
        assert!(is_windows_auth(&map(&[(
            "authorization",
            "negotiate YIIB"
        )])));
        assert!(!is_windows_auth(&map(&[("authorization", "Bearer eyJ0")])));
        assert!(!is_windows_auth(&map(&[("authorization", "NTLMish")])));
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
        set_forwarded(&mut h, untrusted, host.clone());
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
        set_forwarded(&mut h, proxy, host);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9, 10.1.2.3");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
    }

    #[test]
    fn split_cookies_are_joined() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2");
    }
}
