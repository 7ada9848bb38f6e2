//! Text helpers every stage shares: percent-encoding for URL parts, XML escaping for the EWS
//! requests and answers written by hand, and the normal form of an Internet Message-ID (the key
//! a tracked email is found and deduplicated by).

/// Bytes as text when they are UTF-8, checked with SIMD (every inspected body is checked whole,
/// and the standard library's check was 2 % of parsing an EWS response); the error, rare, comes
/// from the standard library's check, which says where.
pub fn utf8(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    match simdutf8::basic::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(_) => std::str::from_utf8(bytes),
    }
}

/// `str::trim`, with a fast answer for the common case: text whose first and last bytes are
/// ASCII and not whitespace needs no trimming. (`str::trim` decodes a character at each end
/// and asks Unicode's tables; every element text inspection reads passes through here.)
#[inline]
pub fn trim(text: &str) -> &str {
    match text.as_bytes() {
        [first, .., last] if kept(*first) && kept(*last) => text,
        [only] if kept(*only) => text,
        _ => text.trim(),
    }
}

/// An ASCII byte that is not whitespace (nor a control: those `trim` keeps too, but they are
/// left to it).
fn kept(byte: u8) -> bool {
    byte.is_ascii_graphic()
}

/// Normalises an Internet Message-ID: trimmed, angle brackets removed. (XML and JSON escapes are
/// already undone by the parsers.)
pub fn normalize_message_id(raw: &str) -> Option<&str> {
    let trimmed = trim(raw);
    let inner = trim(
        trimmed
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(trimmed),
    );
    (!inner.is_empty()).then_some(inner)
}

/// Escapes text for an XML element or a double-quoted attribute. A carriage return is written
/// as `&#xD;` (XML would otherwise read it as a line feed) and other control characters XML 1.0
/// cannot carry are left out.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\r' => out.push_str("&#xD;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// Percent-decodes `%XX` sequences (anything else, including a malformed escape, is kept as
/// written); invalid UTF-8 becomes U+FFFD.
pub fn percent_decode(s: &str) -> String {
    let out: Vec<u8> = percent_decoded_bytes(s).collect();
    String::from_utf8_lossy(&out).into_owned()
}

/// The bytes `s` stands for once its `%XX` escapes are decoded, one at a time: for a reader
/// that needs no string of them (a hash, a comparison).
pub fn percent_decoded_bytes(s: &str) -> impl Iterator<Item = u8> + '_ {
    let bytes = s.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        let byte = *bytes.get(i)?;
        let escaped = (byte == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(v) => {
                i += 3;
                Some(v)
            }
            None => {
                i += 1;
                Some(byte)
            }
        }
    })
}

/// Percent-encodes everything but the unreserved characters and those in `keep` (for a URL
/// path segment or a query value).
pub fn percent_encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || keep.contains(&b)
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_agrees_with_the_standard_library() {
        for bytes in [
            &b""[..],
            b"plain",
            "caf\u{e9}".as_bytes(),
            b"\xff",
            b"ok\xe2\x82",
            b"a\xc0\x80",
        ] {
            assert_eq!(utf8(bytes), std::str::from_utf8(bytes), "{bytes:?}");
        }
    }

    #[test]
    fn trim_answers_as_str_trim_does() {
        for text in [
            "", " ", "a", " a", "a ", "\u{a0}a", "a\u{a0}", "\u{2003}", "é", "\tab\r\n", "a b",
            "\u{7f}a", "a\u{0}",
        ] {
            assert_eq!(trim(text), text.trim(), "{text:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn trim_agrees_with_str_trim_on_any_text(text in "\\PC{0,6}|[ \\t\\u{a0}\\u{2003}a-z]{0,6}") {
            proptest::prop_assert_eq!(trim(&text), text.trim());
        }
    }

    #[test]
    fn xml_escape_keeps_carriage_returns_and_drops_what_xml_cannot_carry() {
        assert_eq!(
            xml_escape("a<b & \"c\">\r\n\t\u{1}"),
            "a&lt;b &amp; &quot;c&quot;&gt;&#xD;\n\t"
        );
    }

    #[test]
    fn message_ids_lose_brackets_and_space() {
        assert_eq!(normalize_message_id(" <a.b@c> "), Some("a.b@c"));
        assert_eq!(normalize_message_id("a.b@c"), Some("a.b@c"));
        assert_eq!(normalize_message_id("<>"), None);
    }

    #[test]
    fn graph_paths_are_percent_encoded() {
        assert_eq!(percent_encode("a@b.c", b"="), "a%40b.c");
        assert_eq!(percent_encode("AA/B+C=", b"="), "AA%2FB%2BC=");
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes() {
        assert_eq!(percent_decode("a%40b%2Fc"), "a@b/c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        // from_str_radix alone would take a sign.
        assert_eq!(percent_decode("%+a"), "%+a");
    }
}
