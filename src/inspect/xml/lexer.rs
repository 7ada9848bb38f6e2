//! One forward pass over a document's bytes: markup found with memchr, start tags split into a
//! name and attributes, end tags matched to their start, references in text checked, and the
//! namespace of each element resolved from a small stack of the bindings in scope. Text is
//! never copied here; the tree decodes it when someone reads it.
//!
//! What is accepted and refused follows the quick-xml reader the tree was built on before, so
//! that the differential tests can demand identical trees: a quoted `>` ends neither a start nor an end tag, a
//! comment ends at the first `-->`, any `<!D…` is a DOCTYPE, references must close before the
//! next `&` or `<`, attribute values must be quoted, and a name is whatever runs up to the
//! first XML white space.

use std::collections::HashSet;

use memchr::{memchr, memchr2, memchr3};

use super::{Ns, XmlError};
use crate::common::bytes::{below, find_near, same, word};

/// The namespaces XML itself reserves.
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";
/// Up to this many attributes a repeated key is found by comparing with each earlier one (a
/// SOAP envelope often declares a dozen namespaces; hashing those costs more than comparing).
const FEW_ATTRIBUTES: usize = 32;
/// quick-xml's bound on the bindings in scope at once; beyond it a document is refused.
const MAX_BINDINGS: usize = 128;

/// How strictly a pass reads what it does not need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Strictness {
    /// Building a tree: every attribute and every reference is checked.
    Full,
    /// Finding the operation: only what a streaming reader would trip over is an error.
    Lenient,
}

/// One attribute of a start tag, as offsets into the input.
#[derive(Debug, Clone, Copy)]
pub(super) struct RawAttr {
    pub key: (u32, u32),
    pub value: (u32, u32),
}

impl RawAttr {
    pub fn key<'a>(&self, input: &'a str) -> &'a str {
        &input[self.key.0 as usize..self.key.1 as usize]
    }

    pub fn value<'a>(&self, input: &'a str) -> &'a str {
        &input[self.value.0 as usize..self.value.1 as usize]
    }
}

/// A start tag (or an empty element).
#[derive(Debug, Clone, Copy)]
pub(super) struct StartTag {
    /// Offset of `<`.
    pub start: usize,
    /// The qualified name.
    pub name: (usize, usize),
    /// Offset of the local name within the input.
    pub local_start: usize,
    pub ns: Ns,
    /// Offset just after `>`.
    pub end: usize,
    pub empty: bool,
}

/// What the next step of the pass found.
#[derive(Debug, Clone, Copy)]
pub(super) enum Markup {
    Start(StartTag),
    /// An end tag: offset of `<` and just after `>`.
    End {
        start: usize,
        end: usize,
    },
    Eof,
}

#[derive(Debug, Clone, Copy)]
struct OpenName {
    start: usize,
    end: usize,
    /// Quotes count in end tags (where a tag ends), so such a name takes the general path.
    quoted: bool,
}

#[derive(Debug, Clone, Copy)]
struct Binding<'a> {
    /// `None` for the default namespace.
    prefix: Option<&'a str>,
    ns: Ns,
    /// Depth of the element that declared it.
    depth: usize,
}

pub(super) struct Lexer<'a> {
    input: &'a str,
    pos: usize,
    strictness: Strictness,
    /// Names of the open elements, outermost first, and whether a name holds a quote.
    open: Vec<OpenName>,
    bindings: Vec<Binding<'a>>,
}

fn malformed(what: &str, at: usize) -> XmlError {
    XmlError::Malformed(format!("{what} at byte {at}"))
}

pub(super) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\r' | b'\n' | b'\t')
}

impl<'a> Lexer<'a> {
    pub fn new(input: &'a str, strictness: Strictness) -> Lexer<'a> {
        Lexer {
            input,
            pos: 0,
            strictness,
            open: Vec::with_capacity(16),
            bindings: Vec::new(),
        }
    }

    /// How many elements are open.
    pub fn depth(&self) -> usize {
        self.open.len()
    }

    /// Skips text, comments, CDATA and processing instructions up to the next start or end
    /// tag, checking references on the way. Attributes of a start tag are appended to
    /// `attrs`, namespace declarations among them (the tree leaves those out).
    pub fn next(&mut self, attrs: &mut Vec<RawAttr>) -> Result<Markup, XmlError> {
        let bytes = self.input.as_bytes();
        loop {
            let Some(at) = find_markup(bytes, self.pos) else {
                self.pos = bytes.len();
                return Ok(Markup::Eof);
            };
            if bytes[at] == b'&' {
                self.pos = self.reference(at)?;
                continue;
            }
            match bytes.get(at + 1) {
                Some(b'/') => return self.end_tag(at),
                Some(b'!' | b'?') => self.pos = self.aside(at)?,
                Some(_) => return self.start_tag(at, attrs).map(Markup::Start),
                None => return Err(malformed("unclosed tag", at)),
            }
        }
    }

    /// Leaves the element an empty start tag opened.
    pub fn close_empty(&mut self) {
        self.pop();
    }

    fn pop(&mut self) {
        let depth = self.open.len();
        self.open.pop();
        while self.bindings.last().is_some_and(|b| b.depth >= depth) {
            self.bindings.pop();
        }
    }

    /// A reference in text: `&name;` closed before the next `&` or `<`.
    fn reference(&self, at: usize) -> Result<usize, XmlError> {
        let bytes = self.input.as_bytes();
        let close = memchr3(b';', b'&', b'<', &bytes[at + 1..])
            .map(|i| at + 1 + i)
            .filter(|&i| bytes[i] == b';')
            .ok_or_else(|| malformed("unclosed reference", at))?;
        if self.strictness == Strictness::Full {
            super::text::check_reference(&self.input[at + 1..close])?;
        }
        Ok(close + 1)
    }

    fn end_tag(&mut self, at: usize) -> Result<Markup, XmlError> {
        let bytes = self.input.as_bytes();
        // Most end tags are exactly `</` and the open element's name and `>`: matched in
        // place. A name holding a quote takes the general path, where quotes count.
        if let Some(open) = self.open.last().filter(|o| !o.quoted) {
            let name = &bytes[open.start..open.end];
            let after = at + 2 + name.len();
            if bytes.get(after) == Some(&b'>') && same(name, &bytes[at + 2..after]) {
                self.pop();
                self.pos = after + 1;
                return Ok(Markup::End {
                    start: at,
                    end: after + 1,
                });
            }
        }
        // Quotes count in end tags too (quick-xml reads `</a x=">">` as one tag), and a name
        // may hold them, since a name is whatever runs up to white space.
        let close = self.tag_close(at, at + 1)?;
        // Trailing white space is dropped, unless there is nothing else (quick-xml keeps
        // `</ >` whole, so it matches no start tag).
        let content = &bytes[at + 2..close];
        let name = match content.iter().rposition(|&b| !is_space(b)) {
            Some(last) => &content[..=last],
            None => content,
        };
        match self.open.last() {
            Some(open) if same(&bytes[open.start..open.end], name) => {}
            Some(_) => return Err(malformed("end tag does not match its start", at)),
            None => return Err(malformed("end tag without a start", at)),
        }
        self.pop();
        self.pos = close + 1;
        Ok(Markup::End {
            start: at,
            end: close + 1,
        })
    }

    /// A comment, CDATA section or processing instruction (a DOCTYPE is refused); returns
    /// the offset after it.
    fn aside(&self, at: usize) -> Result<usize, XmlError> {
        super::text::aside(&self.input.as_bytes()[at..])
            .map(|(_, len)| at + len)
            .map_err(|what| match what {
                Some(what) => malformed(what, at),
                None => XmlError::Doctype,
            })
    }

    /// The end of the tag opened at `at`: the first `>` outside quotes, looked for from
    /// `from` (the caller knows there is neither before it).
    fn tag_close(&self, at: usize, from: usize) -> Result<usize, XmlError> {
        let bytes = self.input.as_bytes();
        let mut pos = from;
        loop {
            let found =
                find_tag_byte(bytes, pos).ok_or_else(|| malformed("unclosed start tag", at))?;
            match bytes[found] {
                b'>' => return Ok(found),
                quote => {
                    let close = memchr(quote, &bytes[found + 1..])
                        .ok_or_else(|| malformed("unclosed start tag", at))?;
                    pos = found + 1 + close + 1;
                }
            }
        }
    }

    fn start_tag(&mut self, at: usize, attrs: &mut Vec<RawAttr>) -> Result<StartTag, XmlError> {
        let bytes = self.input.as_bytes();
        let name_start = at + 1;
        // One scan finds where the name ends and its first `:`. When `>` or white space ends
        // it, that is the whole name: after `>` the tag is complete (no attributes), after
        // white space its end is looked for from there. A quote in the name (or no end at
        // all) takes the general path, where quotes count.
        let (stop, scanned_colon) = scan_name(bytes, name_start);
        let whole = stop.filter(|&i| bytes[i] == b'>' || is_space(bytes[i]));
        let close = match whole {
            Some(i) if bytes[i] == b'>' => i,
            Some(i) => self.tag_close(at, i)?,
            None => self.tag_close(at, name_start)?,
        };
        let empty = close > name_start && bytes[close - 1] == b'/';
        let content_end = if empty { close - 1 } else { close };
        let name_end = match whole {
            // `>` ends the name with the content (less an empty tag's `/`); white space ends
            // it before the attributes.
            Some(i) => i.min(content_end),
            None => bytes[name_start..content_end]
                .iter()
                .position(|&b| is_space(b))
                .map_or(content_end, |i| name_start + i),
        };
        let depth = self.open.len() + 1;
        if name_end < content_end {
            self.attributes(name_end, content_end, attrs, depth)?;
        }
        let name = &self.input[name_start..name_end];
        let colon = match whole {
            Some(_) => scanned_colon,
            None => name.bytes().position(|b| b == b':').map(|i| name_start + i),
        };
        let (prefix, local_start) = match colon {
            Some(c) => (Some(&name[..c - name_start]), c + 1),
            None => (None, name_start),
        };
        let ns = self.resolve(prefix);
        self.open.push(OpenName {
            start: name_start,
            end: name_end,
            // Only a name the scan did not take whole can hold one.
            quoted: whole.is_none()
                && bytes[name_start..name_end]
                    .iter()
                    .any(|&b| b == b'"' || b == b'\''),
        });
        self.pos = close + 1;
        Ok(StartTag {
            start: at,
            name: (name_start, name_end),
            local_start,
            ns,
            end: close + 1,
            empty,
        })
    }

    /// Reads the attributes in `bytes[from..to]`, declaring the namespaces among them. In
    /// full strictness a malformed or repeated attribute is an error; leniently the rest of
    /// the tag is skipped, as a namespace resolver reading without checks would.
    fn attributes(
        &mut self,
        from: usize,
        to: usize,
        attrs: &mut Vec<RawAttr>,
        depth: usize,
    ) -> Result<(), XmlError> {
        let first = attrs.len();
        let mut pos = from;
        // Keys seen, once a tag has more than a few: a tag of many thousand attributes must
        // not cost their square.
        let mut seen: Option<HashSet<&'a str>> = None;
        loop {
            let attr = match self.attribute(pos, to) {
                Ok(Some(attr)) => attr,
                Ok(None) => return Ok(()),
                Err(e) if self.strictness == Strictness::Full => return Err(e),
                Err(_) => return Ok(()),
            };
            pos = attr.value.1 as usize + 1;
            let key = attr.key(self.input);
            if self.strictness == Strictness::Full {
                let earlier = &attrs[first..];
                let repeated = if earlier.len() < FEW_ATTRIBUTES {
                    earlier.iter().any(|a| a.key(self.input) == key)
                } else {
                    let input = self.input;
                    let seen =
                        seen.get_or_insert_with(|| earlier.iter().map(|a| a.key(input)).collect());
                    !seen.insert(key)
                };
                if repeated {
                    return Err(malformed("repeated attribute", attr.key.0 as usize));
                }
            }
            if let Some(prefix) = namespace_declaration(key) {
                self.declare(prefix, attr.value(self.input), depth)?;
            }
            // A lenient pass reads attributes only for their declarations.
            if self.strictness == Strictness::Full {
                attrs.push(attr);
            }
        }
    }

    /// The next attribute at or after `pos`, `None` at the end of the tag.
    fn attribute(&self, pos: usize, to: usize) -> Result<Option<RawAttr>, XmlError> {
        let bytes = self.input.as_bytes();
        let skip_space = |mut p: usize| {
            while p < to && is_space(bytes[p]) {
                p += 1;
            }
            p
        };
        let key_start = skip_space(pos);
        if key_start >= to {
            return Ok(None);
        }
        // A key's first byte is taken whatever it is (even `=`), as quick-xml does.
        let key_end = bytes[key_start + 1..to]
            .iter()
            .position(|&b| b == b'=' || is_space(b))
            .map_or(to, |i| key_start + 1 + i);
        let eq = skip_space(key_end);
        if eq >= to || bytes[eq] != b'=' {
            return Err(malformed("attribute without a value", key_start));
        }
        let quote_at = skip_space(eq + 1);
        let quote = match bytes.get(quote_at) {
            Some(&q @ (b'"' | b'\'')) if quote_at < to => q,
            _ => return Err(malformed("attribute value not quoted", quote_at)),
        };
        let value_end = memchr(quote, &bytes[quote_at + 1..to])
            .map(|i| quote_at + 1 + i)
            .ok_or_else(|| malformed("attribute value not closed", quote_at))?;
        Ok(Some(RawAttr {
            key: (key_start as u32, key_end as u32),
            value: ((quote_at + 1) as u32, value_end as u32),
        }))
    }

    /// Declares a prefix (or the default namespace, `None`) for the element at `depth`.
    fn declare(
        &mut self,
        prefix: Option<&'a str>,
        value: &str,
        depth: usize,
    ) -> Result<(), XmlError> {
        match prefix {
            Some("xml") if value == XML_NS => return Ok(()),
            Some("xml") => return Err(malformed("the xml prefix rebound", 0)),
            Some("xmlns") => return Err(malformed("the xmlns prefix bound", 0)),
            Some(_) if value == XML_NS || value == XMLNS_NS => {
                return Err(malformed("a reserved namespace bound to a prefix", 0));
            }
            _ => {}
        }
        if self.bindings.len() >= MAX_BINDINGS {
            return Err(malformed("too many namespace declarations", 0));
        }
        // `xmlns:=".."` declares an empty prefix, which quick-xml stores as the default.
        let prefix = prefix.filter(|p| !p.is_empty());
        let ns = if value.is_empty() {
            Ns::None
        } else {
            Ns::of(value)
        };
        self.bindings.push(Binding { prefix, ns, depth });
        Ok(())
    }

    /// The namespace of an element name's prefix. An unknown or undeclared prefix, and no
    /// default namespace, resolve to `Ns::None`; `xml` and `xmlns` are always bound.
    fn resolve(&self, prefix: Option<&str>) -> Ns {
        match prefix {
            None => self
                .bindings
                .iter()
                .rev()
                .find(|b| b.prefix.is_none())
                .map_or(Ns::None, |b| b.ns),
            Some("xml" | "xmlns") => Ns::Other,
            Some(p) => self
                .bindings
                .iter()
                .rev()
                .find(|b| b.prefix.is_some_and(|q| same(q.as_bytes(), p.as_bytes())))
                .map_or(Ns::None, |b| b.ns),
        }
    }
}

/// How far a scan looks a word at a time before handing over to memchr: in SOAP most markup is
/// a few bytes from the last (`><`, short names, short text), where memchr's setup costs
/// more than the search.
const SHORT_SCAN: usize = 32;

/// The next `<` or `&` at or after `from`.
fn find_markup(bytes: &[u8], from: usize) -> Option<usize> {
    let rest = bytes.get(from..)?;
    find_near(rest, [b'<', b'&'], SHORT_SCAN, |far| {
        memchr2(b'<', b'&', far)
    })
    .map(|i| from + i)
}

/// The next `>` or quote at or after `from`.
fn find_tag_byte(bytes: &[u8], from: usize) -> Option<usize> {
    let rest = bytes.get(from..)?;
    find_near(rest, [b'>', b'"', b'\''], SHORT_SCAN, |far| {
        memchr3(b'>', b'"', b'\'', far)
    })
    .map(|i| from + i)
}

/// How a start tag's single scan reads a byte: part of the name, the end of it (XML white
/// space, `>`, a quote), or a colon.
const NAME: u8 = 0;
const STOP: u8 = 1;
const COLON: u8 = 2;
const NAME_BYTES: [u8; 256] = {
    let mut table = [NAME; 256];
    let mut i = 0;
    let stops = *b" \t\r\n>\"'";
    while i < stops.len() {
        table[stops[i] as usize] = STOP;
        i += 1;
    }
    table[b':' as usize] = COLON;
    table
};

/// From `from`, the offset of the first byte that ends a name (`None` at the end of the
/// input) and of the first `:` before it. Every byte that ends a name, and the colon, is
/// below `A`, as few name bytes are (digits, `-`, `.`): the scan looks a word at a time for
/// such bytes and classes only those, taken from the word already read (a prefixed name's
/// colon and the byte that ends it are often in one word).
fn scan_name(bytes: &[u8], from: usize) -> (Option<usize>, Option<usize>) {
    let mut colon = None;
    let mut at = from;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let w = word(chunk);
        // Every byte below `A` is flagged (bytes of 0x80 and up, parts of non-ASCII names,
        // never are); a byte above the lowest flagged may be flagged too, and classes as part
        // of the name.
        let mut low = below(w, b'A');
        while low != 0 {
            let i = low.trailing_zeros() / 8;
            // The flagged byte itself, from the word (little-endian: byte `i` is bits 8i..).
            let byte = (w >> (i * 8)) as u8;
            match NAME_BYTES[usize::from(byte)] {
                NAME => {}
                STOP => return (Some(at + i as usize), colon),
                _ => colon = colon.or(Some(at + i as usize)),
            }
            low &= low - 1;
        }
        at += 8;
    }
    // The last few bytes, one at a time.
    for (i, &byte) in bytes.iter().enumerate().skip(at) {
        match NAME_BYTES[usize::from(byte)] {
            NAME => {}
            STOP => return (Some(i), colon),
            _ => colon = colon.or(Some(i)),
        }
    }
    (None, colon)
}

/// `Some(prefix)` for a namespace declaration: `xmlns` declares the default (`Some(None)`),
/// `xmlns:p` the prefix `p`; other names starting with `xmlns` declare nothing.
fn namespace_declaration(key: &str) -> Option<Option<&str>> {
    let rest = key.strip_prefix("xmlns")?;
    match rest.as_bytes().first() {
        None => Some(None),
        Some(b':') => Some(Some(&rest[1..])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `scan_name` answers, a byte at a time.
    fn scan_name_bytewise(bytes: &[u8], from: usize) -> (Option<usize>, Option<usize>) {
        let mut colon = None;
        for (i, &b) in bytes.iter().enumerate().skip(from) {
            match NAME_BYTES[usize::from(b)] {
                NAME => {}
                STOP => return (Some(i), colon),
                _ => colon = colon.or(Some(i)),
            }
        }
        (None, colon)
    }

    /// Names as they come (any prefix, digits, `A` right after a flagged byte, non-ASCII), then
    /// what ends them and more; or any bytes at all.
    fn name_then_more() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            (
                "[a-zA-Z0-9:._\\-éA@]{0,30}",
                "[> \t\r\n\"']",
                "[a-zA-Z0-9:>\"' ]{0,12}"
            )
                .prop_map(|(name, stop, rest)| format!("{name}{stop}{rest}").into_bytes()),
        ]
    }

    proptest::proptest! {
        #[test]
        fn a_name_is_scanned_word_by_word_as_byte_by_byte(
            bytes in name_then_more(),
            from in 0usize..72,
        ) {
            proptest::prop_assert_eq!(scan_name(&bytes, from), scan_name_bytewise(&bytes, from));
        }
    }
}
