//! Entry points shared by the `cargo fuzz` targets in `fuzz/` and the corpus replay in the test
//! suite, so both exercise exactly the same code. Each must never panic on any input.

use bytes::Bytes;

use super::{InspectLimits, capture_from_parts, inspect, xml};

/// EWS: the bytes as a SOAP response to an arbitrary request, and as a request.
pub fn ews(data: &[u8]) {
    let _ = xml::operation(data);
    if let Ok(tree) = xml::Tree::parse(data, xml::XmlLimits::default()) {
        let _ = super::ews::request_mailbox(&tree);
        let _ = super::ews::inspect(Some(&tree), Some(&tree), None);
    }
    let capture = capture_from_parts(
        "POST",
        "/EWS/Exchange.asmx",
        &[],
        Bytes::copy_from_slice(data),
        200,
        &[],
        Bytes::copy_from_slice(data),
    );
    let _ = inspect(&capture, InspectLimits::default());
}

/// EWS, proven: the scanner and the reference tree it replaced must read the bytes the same
/// way (elements, attributes, texts, the operation), under default and tight limits.
#[cfg(feature = "reference")]
pub fn ews_differential(data: &[u8]) {
    for limits in [
        xml::XmlLimits::default(),
        xml::XmlLimits {
            max_depth: 6,
            max_elements: 40,
        },
    ] {
        if let Some(difference) = xml::reference::differences(data, limits) {
            panic!("the scanner and the reference disagree: {difference}");
        }
    }
}

/// Graph: the bytes as request and response bodies of every route shape inspection knows.
pub fn graph(data: &[u8]) {
    for (method, path) in [
        ("GET", "/v1.0/me/mailFolders/inbox/messages/delta"),
        (
            "GET",
            "/v1.0/users('a%40b')/mailFolders('X%3D')/messages/delta()?%24deltatoken=t",
        ),
        ("GET", "/v1.0/users/a%40b/messages/X"),
        ("POST", "/v1.0/me/sendMail"),
        ("POST", "/v1.0/me/messages/X%3D/move"),
        ("POST", "/v1.0/me/messages/X/replyAll"),
        ("PATCH", "/v1.0/me/messages/X"),
        ("GET", "/v1.0/me/mailFolders"),
        ("POST", "/v1.0/$batch"),
    ] {
        let body = Bytes::copy_from_slice(data);
        let capture = capture_from_parts(method, path, &[], body.clone(), 200, &[], body);
        let _ = inspect(&capture, InspectLimits::default());
    }
}

/// The Autodiscover rewrite on arbitrary bodies: output must stay within bounds.
pub fn autodiscover(data: &[u8]) {
    let hosts = ["mail.contoso.example".to_owned()];
    if let Some(out) = crate::proxy::autodiscover::rewrite(data, &hosts, "https://gw.example") {
        // Each rewrite replaces at least "http://" plus a one-letter host with 18 bytes.
        assert!(out.len() <= data.len() * 3 + 64);
    }
}

/// The capture path: the first byte picks a content coding, the rest is the compressed body.
pub fn capture(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let coding = ["gzip", "deflate", "br", "identity"][usize::from(selector) % 4];
    let headers = [("content-encoding".to_owned(), coding.to_owned())];
    for path in ["/EWS/Exchange.asmx", "/v1.0/me/messages"] {
        let capture = capture_from_parts(
            "GET",
            path,
            &headers,
            Bytes::copy_from_slice(rest),
            200,
            &headers,
            Bytes::copy_from_slice(rest),
        );
        let _ = inspect(&capture, InspectLimits::default());
    }
}
