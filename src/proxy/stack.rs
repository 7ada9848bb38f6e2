//! The request path, assembled in one function. Read it top to bottom: each step says why it
//! sits where it does. A new cross-cutting concern is one new step here.
//!
//! Plain functions rather than a tower stack: the stack's `Oneshot` states, the service clones
//! per layer and the futures moved into each were ~5 % of a pass-through request's CPU, for
//! four steps that never change at run time (bench/RESULTS.md, issue 21).

use std::time::Instant;

use http::header::{self, HeaderName};
use http::{HeaderMap, Request, Response};

use super::body::{ClientBody, ProxyBody};
use super::forward::forward;
use super::headers::HeadFacts;
use super::route::RouteClass;
use super::{ConnContext, Proxy};

/// Response headers that carry credentials or session state (a request's are marked as its
/// head is read: [`HeadFacts::of_request`]).
const SENSITIVE_RESPONSE: [HeaderName; 2] = [header::SET_COOKIE, header::WWW_AUTHENTICATE];

/// Answers one client request: forwarded, or answered by the gateway when forwarding fails.
pub async fn exchange(
    proxy: &Proxy,
    conn: &ConnContext,
    mut request: Request<ClientBody>,
) -> Response<ProxyBody> {
    // First, read the head once: what every later step asks of it, with credentials marked
    // sensitive on the way, so nothing below (logs, Debug output) can print them.
    let facts = HeadFacts::of_request(request.headers_mut());
    // Then start measuring, so the gateway's own error answers are counted with the status the
    // client really got. Route class, not path: paths can carry mailbox addresses.
    let started = Instant::now();
    let route = RouteClass::of_path(request.uri().path());
    let method = request.method().clone();
    // Refuse smuggling-prone framing before the body is touched or anything goes upstream;
    // turn every failure into the one client response for it (502, 504, 413, 400…).
    let forwarded = match facts.check_framing() {
        Ok(()) => forward(proxy, conn, request, facts).await,
        Err(refused) => Err(refused),
    };
    let mut response = forwarded.unwrap_or_else(|error| {
        proxy.metrics.record_error(error.kind());
        tracing::debug!(error = %error, kind = error.kind(), fault = ?error.fault(), "answered by the gateway");
        error.into_response()
    });
    mark_sensitive(response.headers_mut(), &SENSITIVE_RESPONSE);
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    proxy
        .metrics
        .record_response(route, status, elapsed.as_secs_f64());
    tracing::debug!(
        target: "trackgate::access",
        %method,
        route = route.as_str(),
        status,
        micros = elapsed.as_micros() as u64,
        "request"
    );
    response
}

/// Marks every value of the named headers sensitive (`Debug` then prints `Sensitive`). One
/// pass over the values: `HeaderMap::entry` would hash each name and may grow the map.
fn mark_sensitive(headers: &mut HeaderMap, names: &[HeaderName]) {
    for (name, value) in headers.iter_mut() {
        if names.contains(name) {
            value.set_sensitive(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn head(fields: &[(HeaderName, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn credentials_print_as_sensitive() {
        let mut headers = head(&[
            (header::AUTHORIZATION, "NTLM TlRMTVNTUAAB"),
            (header::PROXY_AUTHORIZATION, "Basic cHJveHk6c2VjcmV0"),
            (header::COOKIE, "a=1"),
            (header::COOKIE, "b=2"),
            (header::ACCEPT, "*/*"),
        ]);
        let facts = HeadFacts::of_request(&mut headers);
        assert!(facts.windows_auth);
        let printed = format!("{headers:?}");
        assert!(!printed.contains("TlRMTVNTUAAB") && !printed.contains("a=1"));
        assert!(!printed.contains("cHJveHk6c2VjcmV0"));
        assert!(!printed.contains("b=2"), "every value of a repeated header");
        assert!(printed.contains("*/*"));

        let mut answer = head(&[
            (header::SET_COOKIE, "session=s3cr3t"),
            (header::WWW_AUTHENTICATE, "NTLM TlRMTVNTUAAC"),
            (header::SERVER, "Microsoft-IIS/10.0"),
        ]);
        mark_sensitive(&mut answer, &SENSITIVE_RESPONSE);
        let printed = format!("{answer:?}");
        assert!(!printed.contains("s3cr3t") && !printed.contains("TlRMTVNTUAAC"));
        assert!(printed.contains("Microsoft-IIS"));
    }
}
