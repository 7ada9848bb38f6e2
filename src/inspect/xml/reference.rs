//! The element tree the inspection used before the scanner: quick-xml's namespace-resolving
//! pull parser into an arena of elements. Kept only as the reference the scanner is proven
//! against (the differential tests and the `reference` fuzz targets); nothing on the request
//! path uses it.

use std::borrow::Cow;

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

use super::{Ns, SOAP11, SOAP12, XmlError, XmlLimits};

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
    /// split would scatter.
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
                        // XML 1.0 normalizes line ends in CDATA too (§2.11); the tree on
                        // the request path used to keep CDATA raw, a bug the scanner fixed.
                        append(&mut tree.elements[top as usize].text, c.xml10_content());
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
}

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

    /// Every attribute as (local name, value), in document order.
    pub fn attrs(self) -> impl Iterator<Item = (&'t str, &'t str)> + 't {
        let (start, end) = self.el().attrs;
        self.tree.attrs[start as usize..end as usize]
            .iter()
            .map(|(k, v)| (*k, v.as_ref()))
    }

    pub fn children(self) -> Vec<Node<'t>> {
        let mut children = Vec::new();
        let mut index = self.el().first_child;
        while index != NONE {
            children.push(Node {
                tree: self.tree,
                index,
            });
            index = self.tree.elements[index as usize].next_sibling;
        }
        children
    }
}

/// The operation of a SOAP envelope — the local name of the first element child of `soap:Body`
/// — found without building a tree, stopping as soon as it is known. `None` for anything that
/// is not a SOAP envelope (or has a DOCTYPE).
pub fn reference_operation(body: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
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

/// One element as everything the inspection can read of it sees it: depth, namespace, local
/// name, attributes and text.
type Outline = Vec<(usize, Ns, String, Vec<(String, String)>, String)>;

/// What the outline needs of either tree's nodes.
trait Outlined: Copy {
    fn parts(self) -> (Ns, String, Vec<(String, String)>, String);
    fn kids(self) -> Vec<Self>;
}

impl Outlined for Node<'_> {
    fn parts(self) -> (Ns, String, Vec<(String, String)>, String) {
        let attrs = self.attrs().map(|(k, v)| (k.into(), v.into())).collect();
        (self.ns(), self.name().into(), attrs, self.text().into())
    }

    fn kids(self) -> Vec<Self> {
        self.children()
    }
}

impl Outlined for super::Node<'_> {
    fn parts(self) -> (Ns, String, Vec<(String, String)>, String) {
        let attrs = self.attrs().map(|(k, v)| (k.into(), v.into())).collect();
        (
            self.ns(),
            self.name().into(),
            attrs,
            self.text().into_owned(),
        )
    }

    fn kids(self) -> Vec<Self> {
        self.children().collect()
    }
}

fn outline<N: Outlined>(node: N, depth: usize, out: &mut Outline) {
    let (ns, name, attrs, text) = node.parts();
    out.push((depth, ns, name, attrs, text));
    for child in node.kids() {
        outline(child, depth + 1, out);
    }
}

/// Where the scanner and this reference disagree on `data`, if they do: on success or
/// failure, on any element, attribute or text, or on the operation. Errors count as the same
/// when both refuse the document (their messages differ).
pub fn differences(data: &[u8], limits: XmlLimits) -> Option<String> {
    let before = reference_operation(data);
    let after = super::operation(data);
    if before != after {
        return Some(format!(
            "operation: reference {before:?}, scanner {after:?}"
        ));
    }
    match (Tree::parse(data, limits), super::Tree::parse(data, limits)) {
        (Ok(reference), Ok(scanned)) => {
            let (mut expected, mut found) = (Vec::new(), Vec::new());
            outline(reference.root(), 0, &mut expected);
            outline(scanned.root(), 0, &mut found);
            let first = expected.iter().zip(&found).position(|(a, b)| a != b);
            match first {
                Some(i) => Some(format!(
                    "element {i}: reference {:?}, scanner {:?}",
                    expected[i], found[i]
                )),
                None if expected.len() != found.len() => Some(format!(
                    "{} elements in the reference, {} from the scanner",
                    expected.len(),
                    found.len()
                )),
                None => None,
            }
        }
        (Err(_), Err(_)) => None,
        (Ok(_), Err(e)) => Some(format!("the scanner refused what the reference took: {e}")),
        (Err(e), Ok(_)) => Some(format!("the scanner took what the reference refused: {e}")),
    }
}
