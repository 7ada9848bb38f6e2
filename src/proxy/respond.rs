//! The one place where a forwarding failure becomes a client response. Each error knows who is
//! at fault and whether a retry could help; the client gets a status and a short generic text,
//! never internal detail.

use http::{HeaderValue, Response, StatusCode, header};

use super::body::{ProxyBody, full};

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something we refuse.
    Downstream,
    /// Exchange (or the path to it) failed.
    Upstream,
    /// The gateway itself.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("upstream unreachable")]
    UpstreamUnreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error("upstream connection failed mid-request")]
    UpstreamBroken(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("request body larger than the limit")]
    PayloadTooLarge,
    #[error("client sent no body data in time")]
    ClientTimeout,
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("autodiscover response too large to rewrite")]
    AutodiscoverTooLarge,
    #[error("gateway is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// What a client gets for a request head the framing guard refused, written by the guard
/// itself (hyper never sees that request): the same as [`ProxyError::BadRequest`]'s response.
pub const REFUSAL_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\nx-trackgate-error: bad_request\r\nconnection: close\r\ncontent-length: 12\r\n\r\nBad Request\n";

/// What a client gets for a request head over `max_header_bytes` or `max_header_count`.
pub const HEAD_TOO_LARGE_ANSWER: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\nx-trackgate-error: header_too_large\r\nconnection: close\r\ncontent-length: 32\r\n\r\nRequest Header Fields Too Large\n";

/// What a client gets whose request head did not arrive within `header_read_timeout`: the same
/// as [`ProxyError::ClientTimeout`]'s response.
pub const SLOW_HEAD_ANSWER: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nx-trackgate-error: client_timeout\r\nconnection: close\r\ncontent-length: 16\r\n\r\nRequest Timeout\n";

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UpstreamUnreachable(_)
            | ProxyError::UpstreamBroken(_)
            | ProxyError::AutodiscoverTooLarge => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::UpstreamUnreachable(_)
            | ProxyError::UpstreamTimeout
            | ProxyError::UpstreamBroken(_)
            | ProxyError::AutodiscoverTooLarge => Fault::Upstream,
            ProxyError::PayloadTooLarge | ProxyError::ClientTimeout | ProxyError::BadRequest(_) => {
                Fault::Downstream
            }
            ProxyError::ShuttingDown | ProxyError::Internal(_) => Fault::Internal,
        }
    }

    /// Whether the client may retry the same request and expect a different outcome.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamUnreachable(_)
                | ProxyError::UpstreamTimeout
                | ProxyError::ShuttingDown
        )
    }

    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::UpstreamUnreachable(_) => "upstream_unreachable",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamBroken(_) => "upstream_broken",
            ProxyError::AutodiscoverTooLarge => "autodiscover_too_large",
            ProxyError::PayloadTooLarge => "payload_too_large",
            ProxyError::ClientTimeout => "client_timeout",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::ShuttingDown => "shutting_down",
            ProxyError::Internal(_) => "internal",
        }
    }

    /// Whether the client connection must close after this response: after a framing error
    /// the rest of the stream cannot be trusted, and after a body failure it is unread.
    fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_) | ProxyError::PayloadTooLarge | ProxyError::ClientTimeout
        )
    }

    /// The response the client gets.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let text = status.canonical_reason().unwrap_or("error");
        let mut response = Response::new(full(format!("{text}\n")));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert("x-trackgate-error", HeaderValue::from_static(self.kind()));
        if self.retryable() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_faults() {
        let e = ProxyError::UpstreamTimeout;
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.fault(), Fault::Upstream);
        assert!(e.retryable());
        let r = ProxyError::BadRequest("conflicting framing").into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()["connection"], "close");
    }

    #[test]
    fn bodies_carry_no_internal_detail() {
        let inner = std::io::Error::other("connect to 10.1.2.3:443 refused");
        let r = ProxyError::UpstreamUnreachable(Box::new(inner)).into_response();
        let debug = format!("{:?}", r.headers());
        assert!(!debug.contains("10.1.2.3"));
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    }
}
