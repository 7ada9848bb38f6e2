//! A bounded, namespace-aware element tree for one SOAP envelope. Built with quick-xml's pull
//! parser under depth, element-count and size limits; any DOCTYPE is refused, and entity
//! references other than the five predefined ones and character references are errors. Names
//! are matched by namespace URI and local name, never by prefix.

use std::borrow::Cow;

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

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
    fn of(uri: &str) -> Ns {
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

/// One element. Names, attribute values and text borrow from the input wherever no unescaping
/// was needed, so a parse allocates little beyond the arena itself.
#[derive(Debug, Clone)]
pub struct Element<'a> {
    pub ns: Ns,
    pub name: &'a str,
    attrs: (u32, u32),
    pub text: Cow<'a, str>,
    first_child: u32,
    last_child: u32,
    next_sibling: u32,
}

/// The parsed document: an arena of elements, root first.
#[derive(Debug, Clone, Default)]
pub struct Tree<'a> {
    elements: Vec<Element<'a>>,
    attrs: Vec<(&'a str, Cow<'a, str>)>,
}

/// A borrowed view of one element.
#[derive(Debug, Clone, Copy)]
pub struct Node<'t> {
    tree: &'t Tree<'t>,
    index: u32,
}

/// `part` re-borrowed from `input` when it points into it (quick-xml hands out names and
/// attribute values tied to the event, though they are slices of the input).
fn reborrow<'a>(input: &'a str, part: &str) -> Option<&'a str> {
    let start = (part.as_ptr() as usize).wrapping_sub(input.as_ptr() as usize);
    let end = start.checked_add(part.len())?;
    input
        .get(start..end)
        .filter(|s| s.as_ptr() == part.as_ptr())
}

impl<'a> Tree<'a> {
    /// Parses `input` into a tree within `limits`, rejecting any DOCTYPE. One pull-parser loop
    /// with one arm per event kind: the limits are checked where each event is seen, which a
    /// split would scatter. Issue 16 replaces the tree on the request path.
    pub fn parse(input: &'a [u8], limits: XmlLimits) -> Result<Tree<'a>, XmlError> {
        let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
        let text = std::str::from_utf8(input).map_err(|e| XmlError::Malformed(e.to_string()))?;
        let mut reader = NsReader::from_str(text);
        let mut tree = Tree {
            elements: Vec::with_capacity((input.len() / 48).min(limits.max_elements)),
            attrs: Vec::new(),
        };
        let mut stack: Vec<u32> = Vec::new();
        loop {
            let (ns, event) = reader
                .read_resolved_event()
                .map_err(|e| XmlError::Malformed(e.to_string()))?;
            let ns = match ns {
                ResolveResult::Bound(n) => Ns::of(n.into_inner()),
                _ => Ns::None,
            };
            match event {
                Event::DocType(_) => return Err(XmlError::Doctype),
                Event::Start(ref e) | Event::Empty(ref e) => {
                    if tree.elements.len() >= limits.max_elements {
                        return Err(XmlError::TooManyElements(limits.max_elements));
                    }
                    if stack.len() >= limits.max_depth {
                        return Err(XmlError::TooDeep(limits.max_depth));
                    }
                    let attrs_start = tree.attrs.len() as u32;
                    for attr in e.attributes() {
                        let attr = attr.map_err(|e| XmlError::Malformed(e.to_string()))?;
                        let raw_key = attr.key.as_ref();
                        if raw_key.starts_with("xmlns") {
                            continue;
                        }
                        let key = attr.key.local_name().into_inner();
                        let Some(key) = reborrow(text, key) else {
                            continue;
                        };
                        let value = attr
                            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map_err(|e| XmlError::Malformed(e.to_string()))?;
                        let value = match value {
                            Cow::Borrowed(v) => reborrow(text, v)
                                .map(Cow::Borrowed)
                                .unwrap_or_else(|| Cow::Owned(v.to_owned())),
                            Cow::Owned(v) => Cow::Owned(v),
                        };
                        tree.attrs.push((key, value));
                    }
                    let name = e.local_name().into_inner();
                    let name = reborrow(text, name).unwrap_or("");
                    let index = tree.elements.len() as u32;
                    tree.elements.push(Element {
                        ns,
                        name,
                        attrs: (attrs_start, tree.attrs.len() as u32),
                        text: Cow::Borrowed(""),
                        first_child: NONE,
                        last_child: NONE,
                        next_sibling: NONE,
                    });
                    if let Some(&parent) = stack.last() {
                        let last = tree.elements[parent as usize].last_child;
                        if last == NONE {
                            tree.elements[parent as usize].first_child = index;
                        } else {
                            tree.elements[last as usize].next_sibling = index;
                        }
                        tree.elements[parent as usize].last_child = index;
                    } else if index != 0 {
                        return Err(XmlError::Malformed("more than one root element".into()));
                    }
                    if matches!(event, Event::Start(_)) {
                        stack.push(index);
                    }
                }
                Event::End(_) => {
                    stack.pop();
                }
                Event::Text(t) => {
                    if let Some(&top) = stack.last() {
                        append(&mut tree.elements[top as usize].text, t.xml10_content());
                    }
                }
                Event::CData(c) => {
                    if let Some(&top) = stack.last() {
                        append(&mut tree.elements[top as usize].text, c.into_inner());
                    }
                }
                Event::GeneralRef(r) => {
                    let resolved = if r.is_char_ref() {
                        r.resolve_char_ref()
                            .map_err(|e| XmlError::Malformed(e.to_string()))?
                    } else {
                        match &*r.into_inner() {
                            "lt" => Some('<'),
                            "gt" => Some('>'),
                            "amp" => Some('&'),
                            "quot" => Some('"'),
                            "apos" => Some('\''),
                            other => {
                                return Err(XmlError::Entity(other.chars().take(32).collect()));
                            }
                        }
                    };
                    if let (Some(c), Some(&top)) = (resolved, stack.last()) {
                        tree.elements[top as usize].text.to_mut().push(c);
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        if tree.elements.is_empty() || !stack.is_empty() {
            return Err(XmlError::Malformed("document ended early".into()));
        }
        Ok(tree)
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

/// Appends text, staying borrowed while there is only one piece.
fn append<'a>(text: &mut Cow<'a, str>, more: Cow<'a, str>) {
    if text.is_empty() {
        *text = more;
    } else {
        text.to_mut().push_str(&more);
    }
}

impl<'t> Node<'t> {
    fn el(&self) -> &'t Element<'t> {
        &self.tree.elements[self.index as usize]
    }

    pub fn ns(&self) -> Ns {
        self.el().ns
    }

    pub fn name(&self) -> &'t str {
        self.el().name
    }

    pub fn text(&self) -> &'t str {
        self.el().text.trim()
    }

    pub fn attr(&self, name: &str) -> Option<&'t str> {
        let (start, end) = self.el().attrs;
        self.tree.attrs[start as usize..end as usize]
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_ref())
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
            .map(|c| c.text().to_owned())
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
/// — found without building a tree, stopping as soon as it is known. `None` for anything that
/// is not a SOAP envelope (or has a DOCTYPE).
pub fn operation(body: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut reader = NsReader::from_reader(body);
    let mut depth = 0usize;
    let mut in_body = false;
    loop {
        let (ns, event) = reader.read_resolved_event().ok()?;
        let is_soap =
            matches!(ns, ResolveResult::Bound(n) if matches!(n.into_inner(), SOAP11 | SOAP12));
        match event {
            Event::DocType(_) => return None,
            Event::Start(e) | Event::Empty(e) if in_body && depth == 2 => {
                let name = e.local_name().into_inner();
                // Names are borrowed from the input; hand that borrow out instead of copying.
                let start = (name.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
                let borrowed = start
                    .checked_add(name.len())
                    .and_then(|end| body.get(start..end))
                    .filter(|slice| *slice == name.as_bytes())
                    .and_then(|slice| std::str::from_utf8(slice).ok());
                return Some(match borrowed {
                    Some(s) => std::borrow::Cow::Borrowed(s),
                    None => std::borrow::Cow::Owned(name.to_owned()),
                });
            }
            Event::Start(e) => {
                let local = e.local_name();
                match depth {
                    0 if !(is_soap && local.into_inner() == "Envelope") => return None,
                    1 if is_soap && local.into_inner() == "Body" => in_body = true,
                    _ => {}
                }
                depth += 1;
                if depth > 64 {
                    return None;
                }
            }
            Event::End(_) => {
                depth = depth.checked_sub(1)?;
                if depth == 1 {
                    in_body = false;
                }
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_not_prefixes() {
        let doc = br#"<a:Envelope xmlns:a="http://schemas.xmlsoap.org/soap/envelope/"><a:Body><x:GetItem xmlns:x="http://schemas.microsoft.com/exchange/services/2006/messages"><Id xmlns="http://schemas.microsoft.com/exchange/services/2006/types" V="&lt;1&gt;">a&amp;b&#x41;</Id></x:GetItem></a:Body></a:Envelope>"#;
        let tree = Tree::parse(doc, XmlLimits::default()).unwrap();
        let op = tree.body_child().unwrap();
        assert!(op.is(Ns::Messages, "GetItem"));
        let id = op.child(Ns::Types, "Id").unwrap();
        assert_eq!(id.text(), "a&bA");
        assert_eq!(id.attr("V"), Some("<1>"));
    }

    #[test]
    fn hostile_input_is_refused() {
        let lim = XmlLimits {
            max_depth: 8,
            max_elements: 50,
        };
        assert_eq!(
            Tree::parse(b"<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>", lim).unwrap_err(),
            XmlError::Doctype
        );
        assert!(matches!(
            Tree::parse(b"<x>&custom;</x>", lim),
            Err(XmlError::Entity(_))
        ));
        let deep = "<a>".repeat(20) + &"</a>".repeat(20);
        assert_eq!(
            Tree::parse(deep.as_bytes(), lim).unwrap_err(),
            XmlError::TooDeep(8)
        );
        let wide = format!("<a>{}</a>", "<b/>".repeat(100));
        assert_eq!(
            Tree::parse(wide.as_bytes(), lim).unwrap_err(),
            XmlError::TooManyElements(50)
        );
        assert!(Tree::parse(b"<a><b></a>", lim).is_err());
        assert!(Tree::parse(b"", lim).is_err());
        assert_eq!(
            Tree::parse(b"<a/>", lim).unwrap().body_child().unwrap_err(),
            XmlError::NotSoap
        );
    }
}
