//! Who owns the mailbox, from what the HTTP exchange shows (docs/architecture.md §2.3):
//! `X-AnchorMailbox`, a Graph `/users/{id}` path, then the authenticated principal — Basic user,
//! bearer token claims (read, never trusted for authorisation: Exchange already accepted the
//! request), or the NTLM AUTHENTICATE user and domain of the connection. EWS impersonation and
//! delegate mailboxes come first and are read from the SOAP request in `ews`. Results are
//! lower-cased.

use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;

use super::ntlm::{self, NtlmMessage};
use crate::common::text::{percent_decode, percent_decoded_bytes};
use crate::proxy::capture::{Capture, KeptHeaders};
use crate::proxy::headers::{X_ANCHOR_MAILBOX, is_windows_auth};

/// The inspection worker key of an exchange (see `proxy::capture::Affinity`): the anchor
/// mailbox, else the Graph `/users/{id}`, else the credentials as sent (Basic and bearer name
/// one principal for as long as they are used), else the client connection (NTLM and
/// Negotiate authenticate the connection itself). Cheap on purpose: it runs on the proxy's
/// worker for every copied exchange, so it reads borrowed slices, decodes no token and
/// allocates nothing; the mailbox is hashed in its normal form (see [`fold_hash`]), so the two
/// spellings of one mailbox are the same key.
pub fn affinity(capture: &Capture) -> u64 {
    let headers = &capture.request_headers;
    if let Some(anchor) = anchor_raw(headers) {
        return fold_hash(anchor);
    }
    if let Some(user) = graph_version_rest(&capture.path_and_query).and_then(users_segment) {
        return fold_hash(user);
    }
    let authorization = &http::header::AUTHORIZATION;
    match headers.get(authorization) {
        Some(auth) if !is_windows_auth(headers.get_all(authorization)) => {
            xxhash_rust::xxh3::xxh3_64(auth)
        }
        _ => capture.connection,
    }
}

/// Hashes a mailbox percent-decoded and ASCII-lower-cased — as [`http_mailbox`] spells it,
/// for the ASCII addresses mail uses — without building that string. Quotes are left out, so
/// the OData key form's quoting (`users('…')`) does not matter; two names differing only in
/// quotes share a worker, which costs nothing but balance.
fn fold_hash(text: &str) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let (mut buffer, mut held) = ([0u8; 64], 0);
    for byte in percent_decoded_bytes(text) {
        if byte == b'\'' || byte == b'"' {
            continue;
        }
        buffer[held] = byte.to_ascii_lowercase();
        held += 1;
        if held == buffer.len() {
            hasher.update(&buffer);
            held = 0;
        }
    }
    hasher.update(&buffer[..held]);
    hasher.digest()
}

/// The mailbox from HTTP-level hints, in precedence order.
pub fn http_mailbox(
    headers: &KeptHeaders,
    path: &str,
    connection_auth: Option<&str>,
) -> Option<String> {
    anchor_mailbox(headers)
        .or_else(|| graph_user(path))
        .or_else(|| principal(headers, connection_auth))
}

fn anchor_mailbox(headers: &KeptHeaders) -> Option<String> {
    anchor_raw(headers).map(str::to_lowercase)
}

/// `X-AnchorMailbox` as sent, without its `SMTP:`/`UPN:` prefix.
fn anchor_raw(headers: &KeptHeaders) -> Option<&str> {
    let value = headers.get_str(&X_ANCHOR_MAILBOX)?.trim();
    let value = ["smtp:", "upn:"]
        .iter()
        .find_map(|p| strip_prefix_ignore_case(value, p))
        .unwrap_or(value);
    (!value.is_empty()).then_some(value)
}

fn strip_prefix_ignore_case<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    text.get(..prefix.len())
        .filter(|head| head.eq_ignore_ascii_case(prefix))
        .map(|_| &text[prefix.len()..])
}

/// What follows `/v1.0/` (or `/beta/`) in a Graph path.
fn graph_version_rest(path: &str) -> Option<&str> {
    let (version, rest) = path.trim_start_matches('/').split_once('/')?;
    (version.eq_ignore_ascii_case("v1.0") || version.eq_ignore_ascii_case("beta")).then_some(rest)
}

/// `{id}` of `/v1.0/users/{id}/…` (or `/beta/…`), percent-decoded.
pub fn graph_user(path: &str) -> Option<String> {
    graph_user_after_version(graph_version_rest(path)?)
}

/// The `{id}` of `users/{id}` or `users('{id}')` (whose parentheses the SDKs may send as `%28`
/// and `%29`), as written: still percent-encoded and quoted.
fn users_segment(path: &str) -> Option<&str> {
    let mut segments = path.split('?').next()?.trim_start_matches('/').split('/');
    let first = segments.next()?;
    if first.eq_ignore_ascii_case("users") {
        return segments.next();
    }
    let key = strip_prefix_ignore_case(first, "users(")
        .or_else(|| strip_prefix_ignore_case(first, "users%28"))?;
    key.strip_suffix(')').or_else(|| {
        let cut = key.len().checked_sub(3)?;
        key.get(cut..)
            .filter(|tail| tail.eq_ignore_ascii_case("%29"))
            .map(|_| &key[..cut])
    })
}

/// `{id}` of `users/{id}/…` after the version segment (a `$batch` sub-request's URL),
/// percent-decoded: the SDKs expand it through a URI template, so `@` arrives as `%40`.
/// Also in OData key form, `users('{id}')`, as Graph writes its delta and next links.
pub fn graph_user_after_version(path: &str) -> Option<String> {
    let id = percent_decode(users_segment(path)?);
    // An OData string key doubles its quotes: users('o''brien@contoso.example').
    let id = id
        .trim_matches(|c| c == '\'' || c == '"')
        .replace("''", "'");
    (!id.is_empty()).then(|| id.to_lowercase())
}

/// Principals recently read from credentials, by a 128-bit hash of the `Authorization` value
/// and the connection's Windows auth: a client sends the same token, or the same NTLM
/// connection, for many requests, and decoding a token (base64, JSON) each time costs
/// inspection more than the rest of the identity. Kept in memory only, never logged.
struct Principals {
    /// The hash's secret, random per process, so that a credential cannot be made offline to
    /// share another's key (and be taken for that principal). xxh3 with a secret is not a MAC,
    /// but aiming at a key would need both the secret and the other credential.
    secret: [u8; 192],
    kept: quick_cache::sync::Cache<u128, Option<Arc<str>>>,
}

static PRINCIPALS: std::sync::OnceLock<Principals> = std::sync::OnceLock::new();

/// Distinct credentials remembered; beyond, the cache evicts some and they are read again.
const PRINCIPALS_KEPT: usize = 4096;

/// The authenticated principal: Basic user, bearer claims, or NTLM user (`domain\user`).
pub fn principal(headers: &KeptHeaders, connection_auth: Option<&str>) -> Option<String> {
    let auth = headers.get_str(&http::header::AUTHORIZATION);
    if auth.is_none() && connection_auth.is_none() {
        return None;
    }
    let memo = PRINCIPALS.get_or_init(|| {
        let mut secret = [0u8; 192];
        rand::fill(&mut secret[..]);
        Principals {
            secret,
            kept: quick_cache::sync::Cache::new(PRINCIPALS_KEPT),
        }
    });
    let key = credentials_key(&memo.secret, auth, connection_auth);
    if let Some(known) = memo.kept.get(&key) {
        return known.map(|p| p.to_string());
    }
    let read = read_principal(auth, connection_auth);
    memo.kept.insert(key, read.as_deref().map(Arc::from));
    read
}

/// A keyed 128-bit hash of both credentials, each with its presence and length, so that no
/// two different pairs feed the hash the same bytes.
fn credentials_key(secret: &[u8; 192], auth: Option<&str>, connection_auth: Option<&str>) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::with_secret(*secret);
    for part in [auth, connection_auth] {
        let bytes = part.map_or(&b""[..], str::as_bytes);
        hasher.update(&[u8::from(part.is_some())]);
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hasher.digest128()
}

/// [`principal`] without the memory.
fn read_principal(auth: Option<&str>, connection_auth: Option<&str>) -> Option<String> {
    if let Some(auth) = auth {
        let (scheme, rest) = auth.split_once(' ').unwrap_or((auth, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let user = text.split(':').next()?.trim();
            return (!user.is_empty()).then(|| user.to_lowercase());
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            return bearer_principal(rest.trim());
        }
    }
    // Windows auth: the AUTHENTICATE message of this request or, later on the connection,
    // the one that authenticated it.
    [auth, connection_auth]
        .into_iter()
        .flatten()
        .find_map(|value| match ntlm::parse_header(value)? {
            NtlmMessage::Authenticate { domain, user, .. } if !user.is_empty() => {
                Some(if domain.is_empty() {
                    user.to_lowercase()
                } else {
                    format!("{domain}\\{user}").to_lowercase()
                })
            }
            _ => None,
        })
}

#[derive(Deserialize)]
struct Claims {
    upn: Option<String>,
    preferred_username: Option<String>,
    unique_name: Option<String>,
    email: Option<String>,
    oid: Option<String>,
}

/// Reads the identifying claims of a JWT without verifying it.
fn bearer_principal(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    if payload.len() > 16 * 1024 {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Claims = serde_json::from_slice(&json).ok()?;
    [
        claims.upn,
        claims.preferred_username,
        claims.unique_name,
        claims.email,
        claims.oid,
    ]
    .into_iter()
    .flatten()
    .map(|v| v.trim().to_lowercase())
    .find(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> KeptHeaders {
        KeptHeaders::from_pairs(
            pairs.iter().copied(),
            &crate::proxy::capture::REQUEST_HEADERS,
        )
    }

    #[test]
    fn precedence_anchor_then_graph_user_then_principal() {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("Svc@Contoso.example:pw")
        );
        let h = headers(&[
            ("x-anchormailbox", "SMTP:Alex@Contoso.example"),
            ("authorization", &basic),
        ]);
        assert_eq!(
            http_mailbox(&h, "/EWS/Exchange.asmx", None).as_deref(),
            Some("alex@contoso.example")
        );
        let h = headers(&[("authorization", &basic)]);
        assert_eq!(
            http_mailbox(&h, "/v1.0/users/Pat%40contoso.example/messages", None).as_deref(),
            Some("pat@contoso.example")
        );
        assert_eq!(
            http_mailbox(&h, "/v1.0/me/messages", None).as_deref(),
            Some("svc@contoso.example")
        );
    }

    #[test]
    fn a_credential_seen_again_names_the_same_principal_and_the_two_sides_never_mix() {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("Memo.User@contoso.example:pw")
        );
        let h = headers(&[("authorization", &basic)]);
        for _ in 0..3 {
            assert_eq!(
                principal(&h, None).as_deref(),
                Some("memo.user@contoso.example")
            );
        }
        let key = |auth, connection| credentials_key(&[7; 192], auth, connection);
        assert_ne!(key(Some("ab"), None), key(None, Some("ab")));
        assert_ne!(key(Some("a"), Some("b")), key(Some("ab"), None));
        assert_ne!(key(Some(""), None), key(None, None));
        assert_ne!(
            credentials_key(&[8; 192], Some("ab"), None),
            key(Some("ab"), None),
            "another process's secret gives other keys"
        );
        // The same bytes on the connection's side are Windows auth, not Basic.
        assert_eq!(principal(&KeptHeaders::default(), Some(&basic)), None);
    }

    #[test]
    fn graph_users_segment_with_or_without_the_version() {
        assert_eq!(
            graph_user("/v1.0/Users/Pat%40Contoso.example/messages?$top=1").as_deref(),
            Some("pat@contoso.example")
        );
        assert_eq!(
            graph_user("/beta/users/'kim@contoso.example'").as_deref(),
            Some("kim@contoso.example")
        );
        assert_eq!(graph_user("/v2.0/users/x/messages"), None);
        assert_eq!(graph_user("/v1.0/me/messages"), None);
        assert_eq!(
            graph_user_after_version("users/Kim%40contoso.example/messages/A%3D/move").as_deref(),
            Some("kim@contoso.example")
        );
        assert_eq!(
            graph_user_after_version("/users/kim@contoso.example").as_deref(),
            Some("kim@contoso.example")
        );
        assert_eq!(
            graph_user_after_version("Users('Kim%40contoso.example')/messages").as_deref(),
            Some("kim@contoso.example")
        );
        assert_eq!(
            graph_user_after_version("users%28'o''brien%40contoso.example'%29/messages").as_deref(),
            Some("o'brien@contoso.example")
        );
        assert_eq!(graph_user_after_version("users()/messages"), None);
        assert_eq!(graph_user_after_version("me/messages"), None);
        assert_eq!(graph_user_after_version("users/"), None);
    }

    #[test]
    fn bearer_claims_are_read_not_trusted() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"none"}"#),
            b64(r#"{"oid":"1234","upn":"Alex@Contoso.example"}"#)
        );
        let h = headers(&[("authorization", &format!("Bearer {token}"))]);
        assert_eq!(principal(&h, None).as_deref(), Some("alex@contoso.example"));
        let h = headers(&[("authorization", "Bearer not-a-jwt")]);
        assert_eq!(principal(&h, None), None);
    }

    #[test]
    fn ntlm_user_comes_from_the_connection() {
        let auth = crate::simulate::ntlm::authenticate_header([0; 8], "CONTOSO", "Alex", "pw");
        assert_eq!(
            principal(&KeptHeaders::default(), Some(&auth)).as_deref(),
            Some("contoso\\alex")
        );
        let negotiate = crate::simulate::ntlm::negotiate_header();
        assert_eq!(principal(&KeptHeaders::default(), Some(&negotiate)), None);
    }

    fn capture(connection: u64, path: &str, pairs: &[(&'static str, &str)]) -> Capture {
        Capture {
            connection,
            method: http::Method::POST,
            path_and_query: path.into(),
            route: crate::proxy::RouteClass::Ews,
            request_headers: headers(pairs),
            connection_auth: None,
            status: 200,
            response_headers: KeptHeaders::default(),
            request_body: bytes::Bytes::new(),
            request_truncated: false,
            response_body: bytes::Bytes::new(),
            response_truncated: false,
        }
    }

    #[test]
    fn a_mailbox_named_the_same_way_is_one_worker_key_whatever_the_connection() {
        let ews = "/EWS/Exchange.asmx";
        let a = affinity(&capture(
            1,
            ews,
            &[("x-anchormailbox", "SMTP:Alex@Contoso.example")],
        ));
        let b = affinity(&capture(
            2,
            ews,
            &[("x-anchormailbox", "alex@contoso.example")],
        ));
        assert_eq!(a, b);
        let users = affinity(&capture(
            3,
            "/v1.0/users/Alex%40contoso.example/messages",
            &[],
        ));
        assert_eq!(a, users, "a Graph /users/ path names the same mailbox");
        let key_form = affinity(&capture(
            3,
            "/v1.0/users%28'Alex%40contoso.example'%29/messages",
            &[],
        ));
        assert_eq!(a, key_form, "and so does its OData key form");
        // Hashed in pieces as one: a long name gives the one-shot hash of its normal form.
        let long = format!("{}@Contoso.example", "A".repeat(150));
        assert_eq!(
            fold_hash(&long.replace('@', "%40")),
            xxhash_rust::xxh3::xxh3_64(long.to_lowercase().as_bytes())
        );
        let basic = [("authorization", "Basic YWxleDpwdw==")];
        assert_eq!(
            affinity(&capture(4, ews, &basic)),
            affinity(&capture(5, ews, &basic))
        );
        // Windows auth and no credentials at all: the connection is the key.
        let ntlm = [("authorization", "NTLM TlRMTVNTUAADAAAA")];
        assert_eq!(affinity(&capture(6, ews, &ntlm)), 6);
        assert_eq!(affinity(&capture(7, ews, &[])), 7);
    }
}
