//! Inspection: the pure, synchronous step from a captured exchange to observations
//! (`Capture → Vec<Observation>`). EWS SOAP, Graph JSON; Autodiscover is recognised but yields
//! no observations. Hostile input costs an error and a counter, never a panic, and never touches
//! the traffic, which was forwarded before any of this ran. No I/O, no async.

pub mod decode;
pub mod ews;
#[doc(hidden)]
pub mod fuzzing;
pub mod graph;
pub mod identity;
pub mod json;
pub mod mime;
pub mod model;
pub mod ntlm;
mod pack;
pub mod worker;
pub mod xml;

use bytes::Bytes;
use http::header;

use crate::proxy::RouteClass;
use crate::proxy::capture::{Capture, KeptHeaders, REQUEST_HEADERS, RESPONSE_HEADERS};

pub use model::{Address, CategoryMode, Message, Observation, Origin, Source, Transfer};

/// Bounds on inspecting one exchange.
#[derive(Debug, Clone, Copy, Default)]
pub struct InspectLimits {
    pub xml: xml::XmlLimits,
    pub decode: decode::DecodeLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("body copy was truncated at the capture limit")]
    Truncated,
    #[error(transparent)]
    Decode(#[from] decode::DecodeError),
    #[error(transparent)]
    Xml(#[from] xml::XmlError),
    #[error(transparent)]
    Graph(#[from] graph::GraphError),
}

impl InspectError {
    /// A bounded metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            InspectError::Truncated => "truncated",
            InspectError::Decode(decode::DecodeError::Unsupported(_)) => "decode_unsupported",
            InspectError::Decode(decode::DecodeError::Corrupt) => "decode_corrupt",
            InspectError::Decode(
                decode::DecodeError::TooLarge(_) | decode::DecodeError::Ratio(_),
            ) => "decode_bomb",
            InspectError::Xml(xml::XmlError::Doctype) => "xml_doctype",
            InspectError::Xml(xml::XmlError::Entity(_)) => "xml_entity",
            InspectError::Xml(xml::XmlError::TooDeep(_) | xml::XmlError::TooManyElements(_)) => {
                "xml_limits"
            }
            InspectError::Xml(xml::XmlError::NotSoap) => "not_soap",
            InspectError::Xml(xml::XmlError::Malformed(_)) => "xml_malformed",
            InspectError::Graph(_) => "json_malformed",
        }
    }
}

/// What one exchange yielded.
#[derive(Debug, Default)]
pub struct Inspected {
    pub observations: Vec<Observation>,
    /// EWS response codes of faults and failed items (no observations for them).
    pub failures: Vec<String>,
}

/// Inspects one captured exchange.
pub fn inspect(capture: &Capture, limits: InspectLimits) -> Result<Inspected, InspectError> {
    let path = capture.path_and_query.split('?').next().unwrap_or("");
    let connection_auth = capture
        .connection_auth
        .as_ref()
        .and_then(|v| v.to_str().ok());
    match capture.route {
        RouteClass::Ews => {
            if !(capture.status == 200 || capture.status == 500) {
                return Ok(Inspected::default());
            }
            let request = body(capture, true, limits)?;
            // A request we cannot read still leaves a response worth reading (and vice versa).
            let request_tree = request
                .as_ref()
                .and_then(|b| xml::Tree::parse(b, limits.xml).ok());
            // An operation inspection reads nothing from (an attachment, a photo, free/busy,
            // name resolution): its response, often the largest body of a session, is neither
            // decompressed nor parsed, and so nothing of it is counted as a failure either.
            let asked = request_tree.as_ref().and_then(|t| t.body_child().ok());
            if asked.is_some_and(|operation| !ews::reads(operation.name())) {
                return Ok(Inspected::default());
            }
            let response = body(capture, false, limits)?;
            let response_tree = match &response {
                Some(b) => Some(xml::Tree::parse(b, limits.xml)?),
                None => None,
            };
            if let Some(t) = &response_tree {
                t.body_child()?;
            }
            let mailbox = request_tree
                .as_ref()
                .and_then(ews::request_mailbox)
                .or_else(|| {
                    identity::http_mailbox(&capture.request_headers, path, connection_auth)
                });
            let outcome = ews::inspect(request_tree.as_ref(), response_tree.as_ref(), mailbox);
            Ok(Inspected {
                observations: outcome.observations,
                failures: outcome.failures,
            })
        }
        RouteClass::Graph => {
            let request = body(capture, true, limits)?.unwrap_or_default();
            let response = body(capture, false, limits)?.unwrap_or_default();
            let mailbox = identity::http_mailbox(&capture.request_headers, path, connection_auth);
            // The path and query after the version segment (the query tells a delta round's
            // first request from the later ones).
            let after_version = capture
                .path_and_query
                .trim_start_matches('/')
                .split_once('/')
                .map(|(_, rest)| rest)
                .unwrap_or("");
            let observations = graph::inspect(
                graph::GraphExchange {
                    method: capture.method.as_str(),
                    path: after_version,
                    status: capture.status,
                    request: &request,
                    response: &response,
                },
                mailbox,
                0,
            )?;
            Ok(Inspected {
                observations,
                failures: Vec::new(),
            })
        }
        RouteClass::Autodiscover | RouteClass::Other => Ok(Inspected::default()),
    }
}

/// The decoded request or response body; `None` when empty. A truncated copy is an error for
/// the response (whose end we need) and unusable for the request.
fn body(
    capture: &Capture,
    request: bool,
    limits: InspectLimits,
) -> Result<Option<Bytes>, InspectError> {
    let (raw, truncated, headers) = if request {
        (
            &capture.request_body,
            capture.request_truncated,
            &capture.request_headers,
        )
    } else {
        (
            &capture.response_body,
            capture.response_truncated,
            &capture.response_headers,
        )
    };
    if raw.is_empty() {
        return Ok(None);
    }
    if truncated {
        return if request {
            Ok(None)
        } else {
            Err(InspectError::Truncated)
        };
    }
    let encoding = headers.get_str(&header::CONTENT_ENCODING);
    Ok(Some(decode::decode(
        raw,
        encoding,
        limits.decode,
        truncated,
    )?))
}

/// Builds a capture from recorded parts (the `inspect` command, tests, benches): the same
/// shape the proxy hands over, with untruncated bodies.
pub fn capture_from_parts(
    method: &str,
    path_and_query: &str,
    request_headers: &[(String, String)],
    request_body: Bytes,
    status: u16,
    response_headers: &[(String, String)],
    response_body: Bytes,
) -> Capture {
    fn pairs(pairs: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
        pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
    let request_headers = KeptHeaders::from_pairs(pairs(request_headers), &REQUEST_HEADERS);
    // Windows auth is the connection's: the proxy hands on the request's `Authorization`
    // beside its headers when any of its values is NTLM or Negotiate.
    let authorization = &header::AUTHORIZATION;
    let connection_auth = request_headers
        .get(authorization)
        .filter(|_| crate::proxy::headers::is_windows_auth(request_headers.get_all(authorization)))
        .and_then(|value| http::HeaderValue::from_bytes(value).ok());
    Capture {
        connection: 0,
        method: http::Method::from_bytes(method.as_bytes()).unwrap_or(http::Method::POST),
        path_and_query: path_and_query.to_owned(),
        route: RouteClass::of_path(path_and_query.split('?').next().unwrap_or("")),
        request_headers,
        connection_auth,
        status,
        response_headers: KeptHeaders::from_pairs(pairs(response_headers), &RESPONSE_HEADERS),
        request_body,
        request_truncated: false,
        response_body,
        response_truncated: false,
    }
}
