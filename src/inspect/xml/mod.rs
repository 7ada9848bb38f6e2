//! A bounded, namespace-aware view of one SOAP envelope, built in one pass over its bytes.
//! The lexer finds the markup with memchr and resolves each element's namespace from a small
//! stack of the declarations in scope; the tree records only offsets (about 40 bytes per
//! element, in one vector), and text is decoded when it is read, so the large text nobody
//! reads (bodies, MIME content) costs a memchr over it and nothing else. Limits on depth,
//! element count and size; any DOCTYPE refused; only the five predefined entities and
//! character references. Names are matched by namespace URI and local name, never by prefix.
//!
//! `reference` keeps the quick-xml element tree this replaced; the differential tests prove
//! the two agree on every element, attribute and text the inspection can read.

mod lexer;
#[cfg(any(test, feature = "reference"))]
pub mod reference;
mod text;

use std::borrow::Cow;

use crate::common::bytes::same;
use crate::common::text::{trim, utf8};

use lexer::{Lexer, Markup, RawAttr, Strictness};

pub const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const SOAP12: &str = "http://www.w3.org/2003/05/soap-envelope";
pub const MESSAGES: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
pub const TYPES: &str = "http://schemas.microsoft.com/exchange/services/2006/types";

/// The namespaces the tree distinguishes; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    Soap,
    Messages,
    Types,
    Other,
    None,
}

impl Ns {
    pub(super) fn of(uri: &str) -> Ns {
        match uri {
            SOAP11 | SOAP12 => Ns::Soap,
            MESSAGES => Ns::Messages,
            TYPES => Ns::Types,
            _ => Ns::Other,
        }
    }

    /// Messages or types: EWS content, where the two are often mixed up by hand-written clients.
    pub fn is_ews(self) -> bool {
        matches!(self, Ns::Messages | Ns::Types)
    }
}

/// Limits on one document.
#[derive(Debug, Clone, Copy)]
pub struct XmlLimits {
    pub max_depth: usize,
    pub max_elements: usize,
}

impl Default for XmlLimits {
    fn default() -> Self {
        XmlLimits {
            max_depth: 64,
            max_elements: 250_000,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    #[error("not well-formed XML: {0}")]
    Malformed(String),
    #[error("DOCTYPE is not allowed in SOAP")]
    Doctype,
    #[error("nesting deeper than {0}")]
    TooDeep(usize),
    #[error("more than {0} elements")]
    TooManyElements(usize),
    #[error("unknown entity reference &{0};")]
    Entity(String),
    #[error("not a SOAP envelope")]
    NotSoap,
}

const NONE: u32 = u32::MAX;

/// One element, as offsets into the input.
#[derive(Debug, Clone, Copy)]
struct Element {
    ns: Ns,
    /// The local name.
    name: (u32, u32),
    /// This element's range in `Tree::attrs`.
    attrs: (u32, u32),
    /// Offset of `<`, and just after the end tag's `>`.
    outer: (u32, u32),
    /// Between the start tag's `>` and the end tag's `<` (empty for `<x/>`).
    content: (u32, u32),
    first_child: u32,
    next_sibling: u32,
}

/// An attribute's value: as it stands in the input, or normalized (references, line ends).
#[derive(Debug, Clone, Copy)]
enum Value {
    Input(u32, u32),
    Decoded(u32),
}

#[derive(Debug, Clone, Copy)]
struct Attr {
    /// The local name.
    key: (u32, u32),
    value: Value,
}

/// The parsed document: an arena of elements, root first, in document order.
#[derive(Debug, Clone)]
pub struct Tree<'a> {
    input: &'a str,
    elements: Vec<Element>,
    attrs: Vec<Attr>,
    /// Attribute values that needed normalizing (rare: references or line breaks).
    decoded: Vec<String>,
}

/// A borrowed view of one element.
#[derive(Debug, Clone, Copy)]
pub struct Node<'t> {
    tree: &'t Tree<'t>,
    index: u32,
}

fn span(range: (u32, u32)) -> std::ops::Range<usize> {
    range.0 as usize..range.1 as usize
}

/// An offset into the input. `Tree::parse` refuses input of 4 GiB or more before anything
/// is read, so every offset fits and the cast cannot truncate (documents are capped far
/// below that before they get here anyway); it runs about ten times per element.
#[allow(clippy::cast_possible_truncation)]
fn offset(at: usize) -> u32 {
    at as u32
}

impl<'a> Tree<'a> {
    /// Parses `input` within `limits`, rejecting any DOCTYPE.
    pub fn parse(input: &'a [u8], limits: XmlLimits) -> Result<Tree<'a>, XmlError> {
        let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
        let text = utf8(input).map_err(|e| XmlError::Malformed(e.to_string()))?;
        if u32::try_from(text.len()).is_err() {
            return Err(XmlError::Malformed("document larger than 4 GiB".into()));
        }
        let mut builder = Builder {
            tree: Tree {
                input: text,
                // Sized for EWS, about one element per 36 bytes and one attribute per 200
                // (ids, change keys, response classes), so the arenas rarely grow while filling.
                elements: Vec::with_capacity((text.len() / 32).min(limits.max_elements)),
                attrs: Vec::with_capacity((text.len() / 128).min(limits.max_elements)),
                decoded: Vec::new(),
            },
            open: Vec::with_capacity(16),
            // An envelope's root declares a dozen namespaces.
            raw_attrs: Vec::with_capacity(16),
            limits,
        };
        let mut lexer = Lexer::new(text, Strictness::Full);
        loop {
            builder.raw_attrs.clear();
            match lexer.next(&mut builder.raw_attrs)? {
                Markup::Start(tag) => {
                    builder.start(&tag)?;
                    if tag.empty {
                        lexer.close_empty();
                        builder.end(tag.end, tag.end);
                    }
                }
                Markup::End { start, end } => builder.end(start, end),
                Markup::Eof => break,
            }
        }
        if builder.tree.elements.is_empty() || !builder.open.is_empty() {
            return Err(XmlError::Malformed("document ended early".into()));
        }
        Ok(builder.tree)
    }

    pub fn root(&self) -> Node<'_> {
        Node {
            tree: self,
            index: 0,
        }
    }

    /// The first element child of `soap:Body` (the operation or its response, or a fault).
    pub fn body_child(&self) -> Result<Node<'_>, XmlError> {
        let root = self.root();
        if !(root.ns() == Ns::Soap && root.name() == "Envelope") {
            return Err(XmlError::NotSoap);
        }
        root.child(Ns::Soap, "Body")
            .and_then(|b| b.children().next())
            .ok_or(XmlError::NotSoap)
    }

    /// The `soap:Header` element, if any.
    pub fn header(&self) -> Option<Node<'_>> {
        self.root().child(Ns::Soap, "Header")
    }
}

/// Links elements into the arena as the lexer reports them.
struct Builder<'a> {
    tree: Tree<'a>,
    /// Open elements: index, and the last child linked so far.
    open: Vec<(u32, u32)>,
    raw_attrs: Vec<RawAttr>,
    limits: XmlLimits,
}

impl<'a> Builder<'a> {
    fn start(&mut self, tag: &lexer::StartTag) -> Result<(), XmlError> {
        let tree = &mut self.tree;
        if tree.elements.len() >= self.limits.max_elements {
            return Err(XmlError::TooManyElements(self.limits.max_elements));
        }
        if self.open.len() >= self.limits.max_depth {
            return Err(XmlError::TooDeep(self.limits.max_depth));
        }
        let attrs_start = offset(tree.attrs.len());
        for raw in &self.raw_attrs {
            let key = raw.key(tree.input);
            // Declarations are not attributes (nor, as before, any name starting `xmlns`).
            if key.starts_with("xmlns") {
                continue;
            }
            let local = key
                .bytes()
                .position(|b| b == b':')
                .map_or(raw.key.0, |i| raw.key.0 + offset(i) + 1);
            let value = match text::attribute_value(raw.value(tree.input))? {
                Cow::Borrowed(_) => Value::Input(raw.value.0, raw.value.1),
                Cow::Owned(v) => {
                    tree.decoded.push(v);
                    Value::Decoded(offset(tree.decoded.len() - 1))
                }
            };
            tree.attrs.push(Attr {
                key: (local, raw.key.1),
                value,
            });
        }
        let index = offset(tree.elements.len());
        match self.open.last_mut() {
            Some((parent, last)) => {
                if *last == NONE {
                    tree.elements[*parent as usize].first_child = index;
                } else {
                    tree.elements[*last as usize].next_sibling = index;
                }
                *last = index;
            }
            None if index != 0 => {
                return Err(XmlError::Malformed("more than one root element".into()));
            }
            None => {}
        }
        tree.elements.push(Element {
            ns: tag.ns,
            name: (offset(tag.local_start), offset(tag.name.1)),
            attrs: (attrs_start, offset(tree.attrs.len())),
            outer: (offset(tag.start), offset(tag.end)),
            content: (offset(tag.end), offset(tag.end)),
            first_child: NONE,
            next_sibling: NONE,
        });
        self.open.push((index, NONE));
        Ok(())
    }

    /// Closes the innermost open element; its end tag spans `start..end`.
    fn end(&mut self, start: usize, end: usize) {
        if let Some((index, _)) = self.open.pop() {
            let element = &mut self.tree.elements[index as usize];
            element.content.1 = offset(start).max(element.content.0);
            element.outer.1 = offset(end);
        }
    }
}

impl<'t> Node<'t> {
    fn el(&self) -> &'t Element {
        &self.tree.elements[self.index as usize]
    }

    pub fn ns(&self) -> Ns {
        self.el().ns
    }

    pub fn name(&self) -> &'t str {
        &self.tree.input[span(self.el().name)]
    }

    /// The element's own text (not its children's), decoded and trimmed. Borrowed from the
    /// input unless it holds references, CDATA, comments, carriage returns or child elements.
    pub fn text(&self) -> Cow<'t, str> {
        if let Some(text) = self.plain_text() {
            return Cow::Borrowed(text);
        }
        // Decoding never lengthens text, so its content's length is enough for the common case
        // (references or line ends, no children) to be written without growing. Content with
        // children may be mostly the children: left to grow as it needs.
        let el = self.el();
        let mut out = if el.first_child == NONE {
            String::with_capacity(el.content.1.saturating_sub(el.content.0) as usize)
        } else {
            String::new()
        };
        self.decode_into(&mut out);
        let trimmed = trim(&out);
        if trimmed.len() == out.len() {
            Cow::Owned(out)
        } else {
            Cow::Owned(trimmed.to_owned())
        }
    }

    /// Appends the element's own text, decoded: what [`Node::text`] answers, though not
    /// trimmed when it had to be decoded. A message packs its fields' text this way.
    pub fn push_text(&self, out: &mut String) {
        match self.plain_text() {
            Some(text) => out.push_str(text),
            None => self.decode_into(out),
        }
    }

    /// The text as it stands in the input, trimmed, when nothing in it needs decoding.
    fn plain_text(&self) -> Option<&'t str> {
        let el = self.el();
        let content = &self.tree.input[span(el.content)];
        (el.first_child == NONE && !text::needs_decoding(content)).then(|| trim(content))
    }

    /// Appends the element's own text, decoded, leaving its children out.
    fn decode_into(&self, out: &mut String) {
        let el = self.el();
        let input = self.tree.input;
        let mut from = el.content.0;
        for child in self.children() {
            let outer = child.el().outer;
            text::push_content(out, &input[span((from, outer.0))]);
            from = outer.1;
        }
        text::push_content(out, &input[span((from, el.content.1))]);
    }

    pub fn attr(&self, name: &str) -> Option<&'t str> {
        self.attrs()
            .find(|(key, _)| same(key.as_bytes(), name.as_bytes()))
            .map(|(_, value)| value)
    }

    /// Every attribute as (local name, value), in document order.
    pub fn attrs(self) -> impl Iterator<Item = (&'t str, &'t str)> + 't {
        let tree = self.tree;
        tree.attrs[span(self.el().attrs)].iter().map(move |a| {
            let value = match a.value {
                Value::Input(s, e) => &tree.input[span((s, e))],
                Value::Decoded(i) => tree.decoded[i as usize].as_str(),
            };
            (&tree.input[span(a.key)], value)
        })
    }

    pub fn children(self) -> impl Iterator<Item = Node<'t>> + 't {
        let tree = self.tree;
        let mut next = self.el().first_child;
        std::iter::from_fn(move || {
            if next == NONE {
                return None;
            }
            let node = Node { tree, index: next };
            next = tree.elements[next as usize].next_sibling;
            Some(node)
        })
    }

    /// The first child with this local name in an EWS namespace (messages or types: clients
    /// and servers are not consistent about which) — or in `ns` when it is not EWS.
    pub fn child(&self, ns: Ns, name: &str) -> Option<Node<'t>> {
        self.children().find(|c| c.is(ns, name))
    }

    pub fn is(&self, ns: Ns, name: &str) -> bool {
        self.name() == name && (self.ns() == ns || (ns.is_ews() && self.ns().is_ews()))
    }

    /// Follows a path of EWS local names.
    pub fn path(&self, names: &[&str]) -> Option<Node<'t>> {
        let mut node = *self;
        for name in names {
            node = node.child(Ns::Types, name)?;
        }
        Some(node)
    }

    /// Text of an EWS child, if present and not empty.
    pub fn child_text(&self, name: &str) -> Option<String> {
        self.child(Ns::Types, name)
            .map(|c| c.text().into_owned())
            .filter(|t| !t.is_empty())
    }

    /// EWS children with this local name.
    pub fn all(self, name: &'t str) -> impl Iterator<Item = Node<'t>> + 't {
        self.children().filter(move |c| c.is(Ns::Types, name))
    }

    /// Every descendant (depth first) with this EWS local name.
    pub fn descendants(&self, name: &'t str, out: &mut Vec<Node<'t>>) {
        for c in self.children() {
            if c.is(Ns::Types, name) {
                out.push(c);
            }
            c.descendants(name, out);
        }
    }
}

/// The operation of a SOAP envelope — the local name of the first element child of `soap:Body`
/// — found without building a tree or reading past it, and without checking what it does not
/// read. `None` for anything that is not a SOAP envelope (or has a DOCTYPE).
pub fn operation(body: &[u8]) -> Option<Cow<'_, str>> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    // A streaming reader decodes each piece as it reads it, so bytes that are not UTF-8
    // after the operation do not hide it: read up to the first of them.
    // SIMD, with where the valid part ends when there is more (a check of the whole body runs
    // on the proxy's worker for every EWS request).
    let text = match simdutf8::compat::from_utf8(body) {
        Ok(text) => text,
        Err(e) => crate::common::text::utf8(&body[..e.valid_up_to()]).ok()?,
    };
    // The lexer keeps offsets in 32 bits; bodies are capped far below this before they get here.
    u32::try_from(text.len()).ok()?;
    let mut lexer = Lexer::new(text, Strictness::Lenient);
    let mut attrs = Vec::new();
    let mut in_body = false;
    loop {
        let depth = lexer.depth();
        match lexer.next(&mut attrs).ok()? {
            Markup::Start(tag) if in_body && depth == 2 => {
                return Some(Cow::Borrowed(&text[tag.local_start..tag.name.1]));
            }
            Markup::Start(tag) if tag.empty => lexer.close_empty(),
            Markup::Start(tag) => {
                let local = &text[tag.local_start..tag.name.1];
                match depth {
                    0 if !(tag.ns == Ns::Soap && local == "Envelope") => return None,
                    1 if tag.ns == Ns::Soap && local == "Body" => in_body = true,
                    _ => {}
                }
                if depth >= 64 {
                    return None;
                }
            }
            Markup::End { .. } => {
                if lexer.depth() == 1 {
                    in_body = false;
                }
            }
            Markup::Eof => return None,
        }
    }
}

#[cfg(test)]
mod tests;
