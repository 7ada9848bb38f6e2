//! The few headers a capture keeps for inspection, copied out of the exchange: every value in
//! one buffer of the capture's own, each with its name (from the kept lists, so never a copy of
//! hyper's buffer either) and whether it was marked sensitive. A `HeaderMap` of copies cost the
//! proxy's worker two or three allocations per side, a validation of every value and a hash per
//! insert (bench/RESULTS.md, issue 16); inspection only ever asks for a value by name.

use http::{HeaderMap, HeaderName};
use smallvec::SmallVec;

/// One kept value: its name and where its bytes end in the buffer (each starts where the one
/// before it ended).
#[derive(Clone, Copy)]
struct Kept {
    name: &'static HeaderName,
    end: u32,
    sensitive: bool,
}

/// Header values kept from one side of an exchange; the values of one name in the order they
/// were sent.
#[derive(Clone, Default)]
pub struct KeptHeaders {
    text: Box<[u8]>,
    kept: SmallVec<[Kept; 3]>,
}

/// Values found, with their entries, before they are gathered into one buffer.
type Found<'v> = SmallVec<[(Kept, &'v [u8]); 3]>;

impl KeptHeaders {
    /// The values of `headers` named in `names`, copied. One pass over the headers, each name
    /// compared with the few wanted (no lookup by name, which would parse and hash each).
    pub fn pick(headers: &HeaderMap, names: &[&'static HeaderName]) -> KeptHeaders {
        let mut found = Found::new();
        for (name, value) in headers {
            if let Some(name) = names.iter().find(|wanted| **wanted == name) {
                let kept = Kept {
                    name,
                    end: 0,
                    sensitive: value.is_sensitive(),
                };
                found.push((kept, value.as_bytes()));
            }
        }
        KeptHeaders::gather(found)
    }

    /// Values given as text (recorded exchanges, tests), trimmed: a name not in `names`
    /// (matched without regard to case) is left out, as the proxy leaves it out, and so is a
    /// value no header could carry (control bytes); `Authorization` is sensitive.
    pub fn from_pairs<'p>(
        pairs: impl IntoIterator<Item = (&'p str, &'p str)>,
        names: &[&'static HeaderName],
    ) -> KeptHeaders {
        let mut found = Found::new();
        for (name, value) in pairs {
            let (name, value) = (name.trim(), value.trim());
            let wanted = names
                .iter()
                .find(|wanted| wanted.as_str().eq_ignore_ascii_case(name));
            if let Some(name) = wanted
                && http::HeaderValue::from_str(value).is_ok()
            {
                let kept = Kept {
                    name,
                    end: 0,
                    sensitive: **name == http::header::AUTHORIZATION,
                };
                found.push((kept, value.as_bytes()));
            }
        }
        KeptHeaders::gather(found)
    }

    /// Copies the values found into one buffer and notes where each ends. Values past 4 GiB in
    /// all are left out (heads are bounded far below that).
    fn gather(found: Found<'_>) -> KeptHeaders {
        let mut text = Vec::with_capacity(found.iter().map(|(_, v)| v.len()).sum());
        let mut kept = SmallVec::new();
        for (mut entry, value) in found {
            let Ok(end) = u32::try_from(text.len() + value.len()) else {
                break;
            };
            text.extend_from_slice(value);
            entry.end = end;
            kept.push(entry);
        }
        KeptHeaders {
            text: text.into_boxed_slice(),
            kept,
        }
    }

    /// Every kept value with its name and sensitivity, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &[u8], bool)> {
        let mut start = 0;
        self.kept.iter().map(move |k| {
            let end = k.end as usize;
            let value = &self.text[start..end];
            start = end;
            (k.name, value, k.sensitive)
        })
    }

    /// Every value of `name`, in order.
    pub fn get_all<'s>(&'s self, name: &'s HeaderName) -> impl Iterator<Item = &'s [u8]> + 's {
        self.iter()
            .filter(move |(n, _, _)| *n == name)
            .map(|(_, value, _)| value)
    }

    /// The first value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, value, _)| value)
    }

    /// The first value of `name` as text, when it is visible ASCII (as `HeaderValue::to_str`
    /// reads one).
    pub fn get_str(&self, name: &HeaderName) -> Option<&str> {
        let value = self.get(name)?;
        let visible = value
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
        visible.then(|| std::str::from_utf8(value).ok()).flatten()
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

/// Names, and the length of each value not marked sensitive: never a value (a header may hold
/// credentials, and a credential's length says something about it too).
impl std::fmt::Debug for KeptHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.iter().map(|(name, value, sensitive)| {
            let length = if sensitive {
                "sensitive".to_owned()
            } else {
                format!("{} bytes", value.len())
            };
            (name.as_str(), length)
        });
        f.debug_list().entries(shown).finish()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::HeaderValue;
    use http::header::{AUTHORIZATION, CONTENT_ENCODING};

    use super::*;
    use crate::proxy::capture::{REQUEST_HEADERS, RESPONSE_HEADERS};
    use crate::proxy::headers::X_ANCHOR_MAILBOX;

    #[test]
    fn kept_values_are_copies_with_their_order_and_sensitivity() {
        // Values as hyper parses them: slices of the buffer it read the head into.
        let head = Bytes::from_static(b"Bearer tokengzipbrx-cookie");
        let slice = |from: usize, to: usize| HeaderValue::from_maybe_shared(head.slice(from..to));
        let mut headers = HeaderMap::new();
        let mut auth = slice(0, 12).unwrap();
        auth.set_sensitive(true);
        headers.insert("authorization", auth);
        headers.append("content-encoding", slice(12, 16).unwrap());
        headers.append("content-encoding", slice(16, 18).unwrap());
        headers.insert("cookie", slice(18, 26).unwrap());
        let before = head.as_ptr_range();
        let kept = KeptHeaders::pick(&headers, &REQUEST_HEADERS);
        drop(headers);
        assert_eq!(kept.len(), 3, "only the named headers");
        assert_eq!(kept.get(&AUTHORIZATION), Some(&b"Bearer token"[..]));
        let (_, _, sensitive) = kept.iter().next().unwrap();
        assert!(sensitive, "credentials stay marked sensitive");
        let codings: Vec<&[u8]> = kept.get_all(&CONTENT_ENCODING).collect();
        assert_eq!(codings, [&b"gzip"[..], b"br"], "in order");
        for (_, value, _) in kept.iter() {
            assert!(
                !before.contains(&value.as_ptr()),
                "a kept value still points into the parsed head"
            );
        }
        assert!(KeptHeaders::pick(&HeaderMap::new(), &REQUEST_HEADERS).is_empty());
        let printed = format!("{kept:?}");
        assert!(!printed.contains("token"), "{printed}");
        assert!(
            !printed.contains("12"),
            "not even a credential's length: {printed}"
        );
    }

    #[test]
    fn the_headers_inspection_reads_are_kept_and_the_others_left_out() {
        let mut request = HeaderMap::new();
        let anchor = HeaderName::from_bytes(b"X-AnchorMailbox").unwrap();
        request.insert(anchor, HeaderValue::from_static("user@contoso.example"));
        request.insert("SOAPAction", HeaderValue::from_static("\"GetItem\""));
        request.insert("Host", HeaderValue::from_static("mail.contoso.example"));
        let kept = KeptHeaders::pick(&request, &REQUEST_HEADERS);
        assert_eq!(kept.len(), 1);
        assert_eq!(
            kept.get_str(&X_ANCHOR_MAILBOX),
            Some("user@contoso.example")
        );
        let mut response = HeaderMap::new();
        response.insert("Content-Encoding", HeaderValue::from_static("gzip"));
        response.insert(
            "Location",
            HeaderValue::from_static("https://mail.example/"),
        );
        let kept = KeptHeaders::pick(&response, &RESPONSE_HEADERS);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept.get_str(&CONTENT_ENCODING), Some("gzip"));
    }

    #[test]
    fn text_reads_only_visible_ascii_as_header_values_do() {
        let mut headers = HeaderMap::new();
        let odd = HeaderValue::from_bytes(b"caf\xe9@contoso.example").unwrap();
        headers.insert(X_ANCHOR_MAILBOX.clone(), odd.clone());
        headers.insert("content-encoding", HeaderValue::from_static("a\tb"));
        let kept = KeptHeaders::pick(&headers, &REQUEST_HEADERS);
        assert_eq!(
            kept.get_str(&X_ANCHOR_MAILBOX).is_some(),
            odd.to_str().is_ok()
        );
        assert_eq!(kept.get(&X_ANCHOR_MAILBOX), Some(odd.as_bytes()));
        assert_eq!(kept.get_str(&CONTENT_ENCODING), Some("a\tb"));
    }

    #[test]
    fn recorded_pairs_keep_the_named_headers_whatever_their_case() {
        let kept = KeptHeaders::from_pairs(
            [
                ("X-AnchorMailbox", " pat@contoso.example "),
                ("Authorization", "Basic cGF0OnB3"),
                ("X-Other", "left out"),
                ("content-encoding", "gz\nip"),
                ("Content-Encoding", "gzip"),
            ],
            &REQUEST_HEADERS,
        );
        assert_eq!(kept.len(), 3);
        assert_eq!(kept.get_str(&X_ANCHOR_MAILBOX), Some("pat@contoso.example"));
        assert_eq!(
            kept.get_str(&CONTENT_ENCODING),
            Some("gzip"),
            "a value no header could carry is left out"
        );
        let sensitive: Vec<bool> = kept.iter().map(|(_, _, s)| s).collect();
        assert_eq!(sensitive, [false, true, false]);
    }
}
