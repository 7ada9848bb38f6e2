//! The header section of an RFC 5322 message, as EWS `MimeContent` carries it (base64) when a
//! client sends MIME: enough to fill a sent message's fields — subject, addresses, Message-ID,
//! In-Reply-To, References, date. Folded lines are unfolded; RFC 2047 encoded words (B and Q,
//! UTF-8 or Latin-1) are decoded; the body is never read.

use base64::Engine as _;

use super::model::{Address, Message};
use crate::common::shared::SharedStr;
use crate::common::text::normalize_message_id;

/// Largest header section read.
const MAX_HEADER: usize = 256 * 1024;

/// Fields of a base64 `MimeContent`, or `None` when it does not decode.
pub fn message_from_base64(content: &str) -> Option<Message> {
    let cleaned: String = content
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    // Only the header section is needed: decode a prefix (a multiple of 4 characters).
    let prefix = &cleaned[..cleaned.len().min(MAX_HEADER * 4 / 3) / 4 * 4];
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(prefix)
        .ok()?;
    (!bytes.is_empty()).then(|| message_from_mime(&bytes))
}

/// Fields of a raw MIME message.
pub fn message_from_mime(raw: &[u8]) -> Message {
    let end = find_header_end(raw).unwrap_or(raw.len()).min(MAX_HEADER);
    let text = String::from_utf8_lossy(&raw[..end]);
    let mut m = Message::default();
    let mut current: Option<(String, String)> = None;
    let apply = |name: &str, value: &str, m: &mut Message| {
        let value = decode_words(value.trim());
        match name.to_ascii_lowercase().as_str() {
            "subject" => m.subject = Some(value.into()),
            "from" => m.from = addresses(&value).into_iter().next(),
            "sender" => m.sender = addresses(&value).into_iter().next(),
            "to" => m.to = addresses(&value),
            "cc" => m.cc = addresses(&value),
            "bcc" => m.bcc = addresses(&value),
            "message-id" => {
                m.internet_message_id = normalize_message_id(&value).map(SharedStr::from)
            }
            "in-reply-to" => m.in_reply_to = normalize_message_id(&value).map(SharedStr::from),
            "references" => m.references = Some(value.into()),
            _ => {}
        }
    };
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.as_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = current.take() {
            apply(&name, &value, &mut m);
        }
        if let Some((name, value)) = line.split_once(':') {
            current = Some((name.trim().to_owned(), value.to_owned()));
        }
    }
    if let Some((name, value)) = current {
        apply(&name, &value, &mut m);
    }
    m
}

fn find_header_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n"))
}

/// Splits an address list on commas outside quotes and angle brackets.
fn addresses(value: &str) -> Vec<Address> {
    let mut out = Vec::new();
    let (mut quoted, mut angled, mut start) = (false, false, 0);
    let bytes = value.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'<' if !quoted => angled = true,
            b'>' if !quoted => angled = false,
            b',' if !quoted && !angled => {
                out.extend(address(&value[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.extend(address(&value[start..]));
    out
}

fn address(part: &str) -> Option<Address> {
    let part = part.trim();
    if part.is_empty() {
        return None;
    }
    let (name, addr) = match (part.rfind('<'), part.rfind('>')) {
        (Some(open), Some(close)) if open < close => {
            let name = part[..open].trim().trim_matches('"').trim();
            (
                Some(name).filter(|n| !n.is_empty()),
                part[open + 1..close].trim(),
            )
        }
        _ => (None, part),
    };
    Some(Address {
        name: name.map(Into::into),
        address: (!addr.is_empty()).then(|| addr.into()),
        routing_type: Some("SMTP".into()),
    })
}

/// Decodes RFC 2047 encoded words; anything it cannot decode stays as written.
fn decode_words(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let before = &rest[..start];
        let tail = &rest[start + 2..];
        let parsed = (|| {
            let (charset, tail) = tail.split_once('?')?;
            let (encoding, tail) = tail.split_once('?')?;
            let (text, tail) = tail.split_once("?=")?;
            let bytes = match encoding {
                "B" | "b" => base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .ok()?,
                "Q" | "q" => q_decode(text),
                _ => return None,
            };
            let decoded = if charset.eq_ignore_ascii_case("utf-8")
                || charset.eq_ignore_ascii_case("us-ascii")
            {
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                bytes.iter().map(|&b| char::from(b)).collect() // Latin-1 and friends, roughly
            };
            Some((decoded, tail))
        })();
        match parsed {
            Some((decoded, tail)) => {
                // Whitespace between adjacent encoded words is not part of the text.
                if !(last_was_word && before.trim().is_empty()) {
                    out.push_str(before);
                }
                out.push_str(&decoded);
                rest = tail;
                last_was_word = true;
            }
            None => {
                out.push_str(&rest[..start + 2]);
                rest = &rest[start + 2..];
                last_was_word = false;
            }
        }
    }
    out.push_str(rest);
    out
}

fn q_decode(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'_' => out.push(b' '),
            b'=' => match b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'='),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIME: &str = "From: \"Buyer, Pat\" <pat.buyer@fabrikam.example>\r\nTo: alex.seller@contoso.example,\r\n Kim Manager <kim.manager@contoso.example>\r\nSubject: =?UTF-8?B?UHLDpHNlbnRhdGlvbg==?= =?UTF-8?Q?_f=C3=BCr_Q4?=\r\nMessage-ID: <mime.1@mail.fabrikam.example>\r\nIn-Reply-To: <orig.1@mail.contoso.example>\r\nMIME-Version: 1.0\r\n\r\nBody text, never read.\r\nSubject: not a header\r\n";

    #[test]
    fn headers_unfold_and_decode() {
        let m = message_from_mime(MIME.as_bytes());
        assert_eq!(m.subject.as_deref(), Some("Präsentation für Q4"));
        assert_eq!(
            m.from.as_ref().and_then(|a| a.name.as_deref()),
            Some("Buyer, Pat")
        );
        assert_eq!(m.to.len(), 2);
        assert_eq!(
            m.to[1].address.as_deref(),
            Some("kim.manager@contoso.example")
        );
        assert_eq!(
            m.internet_message_id.as_deref(),
            Some("mime.1@mail.fabrikam.example")
        );
        assert_eq!(
            m.in_reply_to.as_deref(),
            Some("orig.1@mail.contoso.example")
        );
    }

    #[test]
    fn base64_content_and_garbage() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(MIME);
        let m = message_from_base64(&b64).unwrap();
        assert_eq!(
            m.internet_message_id.as_deref(),
            Some("mime.1@mail.fabrikam.example")
        );
        assert!(message_from_base64("!!!").is_none());
        let _ = message_from_mime(b"\xff\xfe=?x?Q?=zz?= : \n\tfold");
        assert_eq!(decode_words("=?utf-8?Q?a=?="), "a=");
    }
}
