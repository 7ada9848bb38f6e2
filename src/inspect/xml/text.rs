//! Decoding what the lexer left raw: references (`&amp;`, `&#x41;`), CDATA, comments and
//! line ends in element text, and the XML 1.0 attribute-value normalization. Only the five
//! predefined entities exist here; anything else is refused when the document is parsed, so
//! decoding a parsed document cannot fail.

use std::borrow::Cow;

use memchr::{memchr, memchr3, memmem};

use super::XmlError;
use crate::common::bytes::{find_any, find_near};

/// A predefined entity's character.
fn predefined(name: &str) -> Option<char> {
    Some(match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "quot" => '"',
        "apos" => '\'',
        _ => return None,
    })
}

/// The character of `#65` or `#x41`: no sign, no zero, a Unicode scalar value.
fn char_ref(number: &str) -> Result<char, XmlError> {
    let bad = || XmlError::Malformed(format!("bad character reference &#{number};"));
    let (digits, radix) = match number.strip_prefix('x') {
        Some(hex) => (hex, 16),
        None => (number, 10),
    };
    if digits.starts_with(['+', '-']) {
        return Err(bad());
    }
    let code = u32::from_str_radix(digits, radix).map_err(|_| bad())?;
    char::from_u32(code).filter(|_| code != 0).ok_or_else(bad)
}

/// What a reference's name (between `&` and `;`) stands for.
fn resolve(name: &str) -> Result<char, XmlError> {
    match name.strip_prefix('#') {
        Some(number) => char_ref(number),
        None => predefined(name).ok_or_else(|| XmlError::Entity(name.chars().take(32).collect())),
    }
}

/// Checks a reference found in text.
pub(super) fn check_reference(name: &str) -> Result<(), XmlError> {
    resolve(name).map(|_| ())
}

/// Appends text with XML 1.0 line ends (`\r\n` and `\r` become `\n`).
fn push_lines(out: &mut String, mut raw: &str) {
    while let Some(i) = memchr(b'\r', raw.as_bytes()) {
        out.push_str(&raw[..i]);
        out.push('\n');
        raw = &raw[i + 1..];
        if raw.starts_with('\n') {
            raw = &raw[1..];
        }
    }
    out.push_str(raw);
}

/// Markup in element content that is not an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Aside {
    Comment,
    Cdata,
    Instruction,
}

/// What `<!…` or `<?…` at the start of `rest` is, and its length through its close, as the
/// lexer accepts it (and the text decoder then skips it): a comment ends at the first `-->`
/// after `<!--`, CDATA at the first `]]>`, an instruction at the first `?>` after `<?`. `Err`
/// says what is wrong; `Err(None)` is a DOCTYPE, refused on its own.
pub(super) fn aside(rest: &[u8]) -> Result<(Aside, usize), Option<&'static str>> {
    let (kind, open, close): (_, usize, &[u8]) = match (rest.get(1), rest.get(2)) {
        (Some(b'!'), Some(b'-')) if rest.starts_with(b"<!--") => (Aside::Comment, 4, b"-->"),
        (Some(b'!'), Some(b'-')) => return Err(Some("bad comment")),
        (Some(b'!'), Some(b'[')) if rest.starts_with(b"<![CDATA[") => (Aside::Cdata, 9, b"]]>"),
        (Some(b'!'), Some(b'[')) => return Err(Some("bad CDATA section")),
        (Some(b'!'), Some(b'D' | b'd')) => return Err(None),
        // quick-xml reads `<?>` as a `?>` that closes before it opened, and refuses it.
        (Some(b'?'), Some(b'>')) => return Err(Some("unclosed processing instruction")),
        (Some(b'?'), _) => (Aside::Instruction, 2, b"?>"),
        _ => return Err(Some("unknown markup after <!")),
    };
    memmem::find(&rest[open..], close)
        .map(|i| (kind, open + i + close.len()))
        .ok_or(Some(match kind {
            Aside::Comment => "unclosed comment",
            Aside::Cdata => "unclosed CDATA section",
            Aside::Instruction => "unclosed processing instruction",
        }))
}

/// Appends the text of `raw`, a stretch of element content without child elements:
/// references resolved, CDATA kept, comments and processing instructions dropped, line ends
/// normalized. A parsed document's references and markup are closed and known; anything else
/// is kept as written.
pub(super) fn push_content(out: &mut String, mut raw: &str) {
    while let Some(i) = find_special(raw.as_bytes()) {
        out.push_str(&raw[..i]);
        raw = &raw[i..];
        let skip = match raw.as_bytes()[0] {
            b'\r' => {
                out.push('\n');
                if raw.as_bytes().get(1) == Some(&b'\n') {
                    2
                } else {
                    1
                }
            }
            b'&' => {
                let Some(end) = reference_end(raw.as_bytes()) else {
                    out.push_str(raw);
                    return;
                };
                if let Ok(c) = resolve(&raw[1..end]) {
                    out.push(c);
                }
                end + 1
            }
            _ => match aside(raw.as_bytes()) {
                Ok((Aside::Cdata, len)) => {
                    push_lines(out, &raw[9..len - 3]);
                    len
                }
                Ok((_, len)) => len,
                Err(_) => {
                    out.push_str(raw);
                    return;
                }
            },
        };
        raw = &raw[skip..];
    }
    out.push_str(raw);
}

/// The `;` that closes the reference at the start of `raw`. References are a few bytes long
/// (`&#x10FFFF;` is the longest without leading zeros), so the first words are searched
/// before memchr is asked.
fn reference_end(raw: &[u8]) -> Option<usize> {
    find_near(raw, [b';'], 16, |far| memchr(b';', far))
}

/// The first byte of element text that decoding changes: `<` (CDATA, a comment, an
/// instruction), `&` or a carriage return. Element text is mostly a few dozen bytes; a long
/// body is left to memchr after its first 64.
#[inline]
fn find_special(raw: &[u8]) -> Option<usize> {
    find_near(raw, [b'<', b'&', b'\r'], 64, |far| {
        memchr3(b'<', b'&', b'\r', far)
    })
}

/// Whether `raw` text needs [`push_content`] rather than being used as it is.
pub(super) fn needs_decoding(raw: &str) -> bool {
    find_special(raw.as_bytes()).is_some()
}

/// An attribute value normalized as XML 1.0 says: references resolved, and each tab, line
/// feed, carriage return or CR LF pair becomes one space.
pub(super) fn attribute_value(raw: &str) -> Result<Cow<'_, str>, XmlError> {
    let bytes = raw.as_bytes();
    // Values are short (ids, change keys, namespaces): searched a word at a time throughout.
    // In line at both uses: an attribute-by-attribute call cost more than the search.
    #[inline(always)]
    fn special_from(bytes: &[u8], from: usize) -> Option<usize> {
        find_any(&bytes[from..], [b'&', b'\t', b'\r', b'\n']).map(|i| from + i)
    }
    let Some(first) = special_from(bytes, 0) else {
        return Ok(Cow::Borrowed(raw));
    };
    let mut out = String::with_capacity(raw.len());
    out.push_str(&raw[..first]);
    let mut pos = first;
    while pos < bytes.len() {
        match bytes[pos] {
            b'&' => {
                let end = memchr(b';', &bytes[pos..])
                    .map(|i| pos + i)
                    .ok_or_else(|| {
                        XmlError::Malformed("unclosed reference in an attribute value".into())
                    })?;
                // quick-xml called an unknown entity in an attribute malformed, not an entity.
                out.push(resolve(&raw[pos + 1..end]).map_err(|e| match e {
                    XmlError::Entity(name) => {
                        XmlError::Malformed(format!("unknown entity &{name}; in an attribute"))
                    }
                    other => other,
                })?);
                pos = end + 1;
            }
            b'\r' => {
                out.push(' ');
                pos += if bytes.get(pos + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
            }
            b'\t' | b'\n' => {
                out.push(' ');
                pos += 1;
            }
            _ => {
                let next = special_from(bytes, pos).unwrap_or(bytes.len());
                out.push_str(&raw[pos..next]);
                pos = next;
            }
        }
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_and_others_are_refused() {
        assert_eq!(resolve("amp").unwrap(), '&');
        assert_eq!(resolve("#x41").unwrap(), 'A');
        assert_eq!(resolve("#65").unwrap(), 'A');
        assert!(matches!(resolve("nbsp"), Err(XmlError::Entity(_))));
        for bad in ["#0", "#X41", "#+65", "#xD800", "#", "#x"] {
            assert!(matches!(resolve(bad), Err(XmlError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn content_keeps_cdata_and_drops_comments() {
        let mut out = String::new();
        push_content(
            &mut out,
            "a\r\nb<!-- x -->c<![CDATA[<d>\r]]>&lt;<?pi x?>e\r",
        );
        assert_eq!(out, "a\nbc<d>\n<e\n");
    }

    #[test]
    fn attribute_values_are_normalized() {
        assert_eq!(attribute_value("plain").unwrap(), "plain");
        assert_eq!(
            attribute_value("a\r\nb\tc\nd&#xA;&amp;").unwrap(),
            "a b c d\n&"
        );
        assert!(attribute_value("a&b").is_err());
        assert!(matches!(
            attribute_value("&x;"),
            Err(XmlError::Malformed(_))
        ));
    }
}
