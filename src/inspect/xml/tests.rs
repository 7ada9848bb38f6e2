//! The scanner's own cases, and the differential tests against the quick-xml reference tree:
//! every fixture, every fuzz corpus entry, generated envelopes in every dialect and mutations
//! of them must give the same elements, attributes, texts and operation from both.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::reference::differences;
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
    assert_eq!(operation(doc).as_deref(), Some("GetItem"));
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
    for bad in [
        &b"<a><b></a>"[..],
        b"",
        b"<a></a><b/>",
        b"<a x=1/>",
        b"<a x='1' x='2'/>",
        b"<a>&amp</a>",
        b"<a><!-- open</a>",
        b"<a b='>",
        b"\xff<a/>",
    ] {
        assert!(
            Tree::parse(bad, lim).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        Tree::parse(b"<a/>", lim).unwrap().body_child().unwrap_err(),
        XmlError::NotSoap
    );
}

#[test]
fn a_repeat_is_found_among_many_attributes() {
    let many: String = (0..50_000).map(|i| format!(" a{i}='v'")).collect();
    let doc = format!("<x{many}/>");
    let tree = Tree::parse(doc.as_bytes(), XmlLimits::default()).unwrap();
    assert_eq!(tree.root().attr("a49999"), Some("v"));
    let repeated = format!("<x{many} a7='w'/>");
    assert!(Tree::parse(repeated.as_bytes(), XmlLimits::default()).is_err());
    assert_agree(repeated.as_bytes(), "50 000 attributes and one repeated");
}

#[test]
fn plain_text_is_borrowed_and_the_rest_decoded_on_reading() {
    let doc = b"\xEF\xBB\xBF<r><p> plain </p><q>a\r\n<i/>b<!--c-->&amp;<![CDATA[<d>]]></q></r>";
    let tree = Tree::parse(doc, XmlLimits::default()).unwrap();
    let mut children = tree.root().children();
    let plain = children.next().unwrap().text();
    assert!(matches!(plain, Cow::Borrowed("plain")));
    assert_eq!(children.next().unwrap().text(), "a\nb&<d>");
}

#[test]
fn operation_is_found_without_reading_the_rest() {
    let doc = b"<?xml version='1.0'?><e:Envelope xmlns:e='http://www.w3.org/2003/05/soap-envelope'><e:Header><x:Op/></e:Header><e:Body><FindItem xmlns='urn:x' bad attr/>&undefined; <broken";
    assert_eq!(operation(doc).as_deref(), Some("FindItem"));
    assert_eq!(
        operation(b"<Envelope><Body><GetItem/></Body></Envelope>"),
        None
    );
    assert_eq!(operation(b"<!DOCTYPE x><x/>"), None);
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn assert_agree(data: &[u8], what: &str) {
    for limits in [
        XmlLimits::default(),
        XmlLimits {
            max_depth: 6,
            max_elements: 40,
        },
    ] {
        if let Some(difference) = differences(data, limits) {
            panic!("{difference}\n  in {what:?}");
        }
    }
}

#[test]
fn every_fixture_reads_the_same_as_the_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    files_under(&root.join("fixtures"), &mut files);
    let xml: Vec<_> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    assert!(xml.len() >= 30, "only {} XML fixtures", xml.len());
    for path in xml {
        let data = std::fs::read(path).unwrap();
        assert!(Tree::parse(&data, XmlLimits::default()).is_ok(), "{path:?}");
        assert_agree(&data, &path.display().to_string());
    }
}

#[test]
fn every_fuzz_corpus_entry_reads_the_same_as_the_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut files = Vec::new();
    for target in ["ews", "ews_differential", "autodiscover", "capture"] {
        let dir = root.join(target);
        if dir.is_dir() {
            files_under(&dir, &mut files);
        }
    }
    assert!(files.len() >= 300, "only {} corpus files", files.len());
    for path in &files {
        assert_agree(&std::fs::read(path).unwrap(), &path.display().to_string());
    }
}

const SOAP: [&str; 2] = [SOAP11, SOAP12];
const PREFIXES: [&str; 5] = ["s", "soap", "env", "SOAP-ENV", ""];
const NAMES: [&str; 10] = [
    "Items",
    "Message",
    "ItemId",
    "Subject",
    "Body",
    "ResponseCode",
    "Mailbox",
    "EmailAddress",
    "t:Mailbox",
    "m:Items",
];
const ATTRS: [&str; 9] = [
    " Id=\"AAMk+/==\"",
    " ChangeKey='CQ&amp;A'",
    " ResponseClass=\"Success\"",
    " xmlns:t=\"http://schemas.microsoft.com/exchange/services/2006/types\"",
    " xmlns=\"http://schemas.microsoft.com/exchange/services/2006/messages\"",
    " xmlns=\"\"",
    " a:Key = \"Business\tPhone\r\n&#x41;\"",
    " xml:lang='en'",
    " Id='&lt;x&gt;'",
];
const TEXTS: [&str; 12] = [
    "hello",
    " ",
    "&amp;",
    "&lt;x@y&gt;",
    "&#65;&#x1F600;",
    "\r\n",
    "\r",
    "<![CDATA[a<b]]>",
    "<!-- c -->",
    "<?pi x?>",
    "é ü",
    "  trailing  ",
];

fn element() -> impl Strategy<Value = String> {
    let leaf = (
        prop::sample::select(&NAMES[..]),
        prop::collection::vec(prop::sample::select(&ATTRS[..]), 0..3),
        prop::collection::vec(prop::sample::select(&TEXTS[..]), 0..3),
        any::<bool>(),
    )
        .prop_map(|(name, attrs, texts, empty)| {
            let mut seen = Vec::new();
            let attrs: String = attrs
                .into_iter()
                .filter(|a| {
                    let key = a.split('=').next().unwrap_or("").trim().to_owned();
                    let fresh = !seen.contains(&key);
                    seen.push(key);
                    fresh
                })
                .collect();
            if empty && texts.is_empty() {
                format!("<{name}{attrs}/>")
            } else {
                format!("<{name}{attrs}>{}</{name}>", texts.concat())
            }
        });
    leaf.prop_recursive(4, 40, 5, |inner| {
        (
            prop::sample::select(&NAMES[..]),
            prop::collection::vec(inner, 1..5),
            prop::sample::select(&TEXTS[..]),
        )
            .prop_map(|(name, children, text)| {
                format!(
                    "<{name} xmlns:m=\"{MESSAGES}\">{text}{}</{name}>",
                    children.concat()
                )
            })
    })
}

fn envelope() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&SOAP[..]),
        prop::sample::select(&PREFIXES[..]),
        any::<(bool, bool, bool)>(),
        prop::collection::vec(element(), 1..4),
        prop::sample::select(&["GetItem", "FindItemResponse", "Fault", "m:SyncFolderItems"][..]),
    )
        .prop_map(|(soap, prefix, (bom, decl, header), body, op)| {
            let (p, declare) = if prefix.is_empty() {
                (String::new(), format!(" xmlns=\"{soap}\""))
            } else {
                (format!("{prefix}:"), format!(" xmlns:{prefix}=\"{soap}\""))
            };
            format!(
                "{}{}<{p}Envelope{declare}>{}<{p}Body><{op} xmlns:t=\"{TYPES}\" xmlns:m=\"{MESSAGES}\">{}</{op}></{p}Body></{p}Envelope>",
                if bom { "\u{FEFF}" } else { "" },
                if decl { "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n" } else { "" },
                if header { format!("<{p}Header><t:RequestServerVersion Version=\"Exchange2013\"/></{p}Header>") } else { String::new() },
                body.concat()
            )
        })
}

/// Markup characters, so that mutations break documents where parsers are most likely to
/// disagree.
const MUTATIONS: &[u8] = b"<>&;\"'/=: \r\n?!-[]#x";

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn generated_envelopes_read_the_same_as_the_reference(doc in envelope()) {
        prop_assert!(Tree::parse(doc.as_bytes(), XmlLimits::default()).is_ok(), "{doc}");
        assert_agree(doc.as_bytes(), &doc);
    }

    #[test]
    fn mutated_envelopes_read_the_same_as_the_reference(
        doc in envelope(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(MUTATIONS), 0..3u8), 1..4),
    ) {
        let mut bytes = doc.into_bytes();
        for (at, byte, kind) in edits {
            let i = at.index(bytes.len());
            match kind {
                0 => bytes.insert(i, byte),
                1 => { bytes.remove(i); }
                _ => bytes[i] = byte,
            }
        }
        assert_agree(&bytes, &String::from_utf8_lossy(&bytes));
    }
}

/// Corners where the old reader's behaviour was found by the differential tests; the scanner
/// keeps each of them so the two stay comparable.
#[test]
fn reader_corners_match_the_reference() {
    for doc in [
        "<a><?>x?></a>",
        "<?>x?><a/>",
        "<a><?x>?></a>",
        "<a><!-->x--></a>",
        "<a><!--->x--></a>",
        "<a><!---->x</a>",
        "<a><![CDATA[]]]></a>",
        "<a><![CDATA[\r\n]]>\r</a>",
        "<a =b='1'/>",
        "<a b='1'c=\"2\"/>",
        "<a xmlns:='urn:x'><b/></a>",
        "<p:a xmlns:p=''/>",
        "<a xmlnsx='1' xmlns:xml='http://www.w3.org/XML/1998/namespace'/>",
        "<a></a >",
        "<></ >",
        "<a\">\"></a\">\">",
        "<a\"b \"c=\"1\"></a\"b>",
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><h\"x y\"></h\"x><s:Body><m:GetItem/></s:Body></s:Envelope>",
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><h\">\"></h\">\"><s:Body><m:GetItem/></s:Body></s:Envelope>",
        "<></>",
        "<a/>text&amp;<!-- after -->",
    ] {
        assert_eq!(
            differences(doc.as_bytes(), XmlLimits::default()),
            None,
            "{doc:?}"
        );
    }
}

/// The scanner's fast paths (a start tag's name scanned once, an end tag matched in place)
/// against the general path's corners: empty and slashed names, colons anywhere, white space
/// of every kind before `/>`, quotes in names, near-miss end tags.
#[test]
fn fast_path_corners_match_the_reference() {
    for doc in [
        "<a/>",
        "<a />",
        "<a/ ></a/>",
        "<a//>",
        "<a:/>",
        "<:a/>",
        "<a:></a:>",
        "<a\r\n/>",
        "<a\tb='1'\n/>",
        "<a\r\n></a>",
        "<a b=':'/>",
        "<a :b='1'/>",
        "<a:b:c/>",
        "<é:ü/>",
        "<é></é >",
        "<a x=\">\"></a>",
        "<a'>'/>",
        "<a></a",
        "<a></b>",
        "<a></a/>",
        "<a></ab>",
        "<ab></a>",
        "<abcdefgh></abcdefgh>",
        "<abcdefghi></abcdefghX>",
        "<abcdefgh></abcdefgX>",
    ] {
        assert_eq!(
            differences(doc.as_bytes(), XmlLimits::default()),
            None,
            "{doc:?}"
        );
    }
}

/// Text is searched a word at a time for its first 32 bytes and by memchr after: markup and
/// references found on each side of every word and of the handover.
#[test]
fn markup_is_found_across_word_and_scan_boundaries() {
    for n in [0, 1, 6, 7, 8, 9, 15, 16, 23, 24, 30, 31, 32, 33, 40, 64, 65] {
        let pad = "x".repeat(n);
        for doc in [
            format!("<a>{pad}<b/>{pad}</a>"),
            format!("<a>{pad}&amp;{pad}<b/></a>"),
            format!("<a>é{pad}&lt;</a>"),
            format!("<a b=\"{pad}\" c='{pad}>'>{pad}</a>"),
        ] {
            assert_agree(doc.as_bytes(), &doc);
        }
    }
}
