//! EWS SOAP exchanges into observations. The operation is the first element child of
//! `soap:Body`; per-item results count only with `ResponseClass="Success"`, matched to the
//! request by position; faults and per-item errors yield no observation and are reported by
//! response code. `reads` handles what Exchange returns, `writes` what a client asked to change,
//! `items` the fields of each item kind.

mod items;
mod reads;
mod writes;

use std::sync::Arc;

use super::model::{Observation, Origin, Source};
use super::xml::{Node, Ns, Tree};

/// What one EWS exchange produced.
#[derive(Debug, Default)]
pub struct EwsOutcome {
    pub operation: Option<String>,
    pub observations: Vec<Observation>,
    /// Response codes of faults and failed items.
    pub failures: Vec<String>,
}

/// Item elements that are messages for tracking purposes.
const MESSAGE_ITEMS: [&str; 5] = [
    "Message",
    "MeetingRequest",
    "MeetingResponse",
    "MeetingCancellation",
    "PostItem",
];

/// The mailbox an EWS request acts on, when the request says so itself: impersonation first,
/// then a delegate `Mailbox` inside a distinguished folder id. Lower-cased.
pub fn request_mailbox(request: &Tree) -> Option<String> {
    if let Some(sid) = request
        .header()
        .and_then(|h| h.path(&["ExchangeImpersonation", "ConnectingSID"]))
    {
        for field in ["PrimarySmtpAddress", "SmtpAddress", "PrincipalName", "SID"] {
            if let Some(v) = sid.child_text(field) {
                return Some(v.to_lowercase());
            }
        }
    }
    let op = request.body_child().ok()?;
    let mut folders = Vec::new();
    op.descendants("DistinguishedFolderId", &mut folders);
    folders
        .iter()
        .find_map(|f| f.path(&["Mailbox", "EmailAddress"]))
        .map(|m| m.text().to_lowercase())
        .filter(|m| !m.is_empty())
}

/// One exchange as the operations read it: who acted, what was asked, and each per-item
/// result with whether it succeeded.
struct Exchange<'t> {
    origin: Origin,
    request: Option<Node<'t>>,
    results: Vec<Node<'t>>,
    ok: Vec<bool>,
}

impl<'t> Exchange<'t> {
    /// Whether the `i`th result (the `i`th item asked for) succeeded.
    fn succeeded(&self, i: usize) -> bool {
        self.ok.get(i).copied().unwrap_or(false)
    }

    /// The results that succeeded.
    fn successes(&self) -> impl Iterator<Item = Node<'t>> + '_ {
        self.results
            .iter()
            .zip(&self.ok)
            .filter(|(_, ok)| **ok)
            .map(|(r, _)| *r)
    }
}

/// Inspects one exchange. `request` is needed for sends, moves, category changes and folder
/// names; `response` for everything Exchange confirmed.
pub fn inspect(
    request: Option<&Tree>,
    response: Option<&Tree>,
    mailbox: Option<String>,
) -> EwsOutcome {
    let mut out = EwsOutcome::default();
    let req_op = request.and_then(|t| t.body_child().ok());
    let resp_op = response.and_then(|t| t.body_child().ok());
    let operation = match (req_op, resp_op) {
        (Some(r), _) => r.name().to_owned(),
        (None, Some(r)) => r.name().trim_end_matches("Response").to_owned(),
        _ => return out,
    };
    out.operation = Some(operation.clone());
    let Some(resp_op) = resp_op else {
        return out;
    };
    if resp_op.ns() == Ns::Soap && resp_op.name() == "Fault" {
        out.failures.push(fault_code(resp_op));
        return out;
    }
    let results: Vec<Node<'_>> = resp_op
        .child(Ns::Messages, "ResponseMessages")
        .map(|m| m.children().collect())
        .unwrap_or_default();
    let mut ok = Vec::with_capacity(results.len());
    for r in &results {
        let success = r.attr("ResponseClass") == Some("Success");
        if !success {
            out.failures.push(
                r.child_text("ResponseCode")
                    .unwrap_or_else(|| "ErrorUnknown".into()),
            );
        }
        ok.push(success);
    }
    let exchange = Exchange {
        origin: Origin {
            mailbox: mailbox.map(Arc::from),
            source: Source::Ews,
            operation: Arc::from(operation),
        },
        request: req_op,
        results,
        ok,
    };
    observe(&exchange, &mut out.observations);
    out
}

/// How one operation's exchanges become observations.
type Reader = fn(&Exchange<'_>, &mut Vec<Observation>);

/// Every operation inspection reads, with its reader; any other yields nothing.
const READERS: [(&str, Reader); 13] = [
    ("GetItem", reads::get_item),
    ("GetEvents", reads::get_events),
    ("FindItem", reads::find_item),
    ("SyncFolderItems", reads::sync_folder_items),
    ("GetFolder", reads::get_folder),
    ("FindFolder", reads::find_folder),
    ("SyncFolderHierarchy", reads::sync_folder_hierarchy),
    ("CreateItem", writes::create_item),
    ("SendItem", writes::send_item),
    ("UpdateItem", writes::update_item),
    ("MoveItem", writes::move_or_copy),
    ("CopyItem", writes::move_or_copy),
    ("DeleteItem", writes::delete_item),
];

/// Whether inspection reads anything from an operation's exchanges (its local name, as the
/// request's body names it). The response of any other — an attachment, a photo, free/busy,
/// name resolution — need not be decompressed or parsed at all.
pub fn reads(operation: &str) -> bool {
    reader(operation).is_some()
}

fn reader(operation: &str) -> Option<Reader> {
    READERS
        .iter()
        .find(|(name, _)| *name == operation)
        .map(|(_, read)| *read)
}

/// The observations of one operation.
fn observe(x: &Exchange<'_>, out: &mut Vec<Observation>) {
    if let Some(read) = reader(&x.origin.operation) {
        read(x, out);
    }
}

/// The EWS response code of a SOAP fault (`detail/ResponseCode`), else the fault code's local part.
fn fault_code(fault: Node<'_>) -> String {
    let detail_code = fault
        .children()
        .find(|c| c.name() == "detail")
        .and_then(|d| d.children().find(|c| c.name() == "ResponseCode"))
        .map(|c| c.text().into_owned());
    detail_code
        .or_else(|| {
            fault
                .children()
                .find(|c| c.name() == "faultcode")
                .map(|c| c.text().rsplit(':').next().unwrap_or("").to_owned())
        })
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "SoapFault".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::xml::{Tree, XmlLimits};

    const ITEM: &str = r#"<t:Message><t:ItemId Id="ID1"/><t:Subject>Hi &amp; bye</t:Subject><t:From><t:Mailbox><t:EmailAddress>pat@fabrikam.example</t:EmailAddress></t:Mailbox></t:From><t:InternetMessageId>&lt;a@b&gt;</t:InternetMessageId></t:Message>"#;

    fn inspect_pair(request: &str, response: &str) -> Vec<Observation> {
        let req = Tree::parse(request.as_bytes(), XmlLimits::default()).unwrap();
        let resp = Tree::parse(response.as_bytes(), XmlLimits::default()).unwrap();
        inspect(Some(&req), Some(&resp), Some("a@b".into())).observations
    }

    /// The same FindItem exchange in three dialects gives the same observations.
    #[test]
    fn dialects_agree() {
        let m = "http://schemas.microsoft.com/exchange/services/2006/messages";
        let t = "http://schemas.microsoft.com/exchange/services/2006/types";
        let s = "http://schemas.xmlsoap.org/soap/envelope/";
        let results = format!(
            r#"<m:ResponseMessages><m:FindItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:RootFolder><t:Items>{ITEM}</t:Items></m:RootFolder></m:FindItemResponseMessage></m:ResponseMessages>"#
        );
        // EWS Managed API: m:/t: prefixes; Exchange Online: s:, no declaration.
        let a = inspect_pair(
            &format!(
                r#"<soap:Envelope xmlns:soap="{s}" xmlns:m="{m}" xmlns:t="{t}"><soap:Body><m:FindItem><m:ParentFolderIds><t:DistinguishedFolderId Id="inbox"/></m:ParentFolderIds></m:FindItem></soap:Body></soap:Envelope>"#
            ),
            &format!(
                r#"<s:Envelope xmlns:s="{s}"><s:Body><m:FindItemResponse xmlns:m="{m}" xmlns:t="{t}">{results}</m:FindItemResponse></s:Body></s:Envelope>"#
            ),
        );
        // exchangelib: default namespaces; Exchange 2010: declaration, soap:, default messages ns.
        let b = inspect_pair(
            &format!(
                r#"<s:Envelope xmlns:s="{s}"><s:Body><FindItem xmlns="{m}"><ParentFolderIds><DistinguishedFolderId xmlns="{t}" Id="inbox"/></ParentFolderIds></FindItem></s:Body></s:Envelope>"#
            ),
            &format!(
                r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{s}"><soap:Body><FindItemResponse xmlns:m="{m}" xmlns:t="{t}" xmlns="{m}">{results}</FindItemResponse></soap:Body></soap:Envelope>"#
            ),
        );
        // Prefix-less throughout, unusual prefixes, and a byte-order mark.
        let c = inspect_pair(
            &format!(
                "\u{feff}<Envelope xmlns=\"{s}\"><Body><FindItem xmlns=\"{m}\"><ParentFolderIds><DistinguishedFolderId xmlns=\"{t}\" Id=\"inbox\"/></ParentFolderIds></FindItem></Body></Envelope>"
            ),
            &format!(
                r#"<e:Envelope xmlns:e="{s}"><e:Body><x:FindItemResponse xmlns:x="{m}" xmlns:t="{t}">{}</x:FindItemResponse></e:Body></e:Envelope>"#,
                results.replace("m:", "x:")
            ),
        );
        assert_eq!(a.len(), 1);
        assert_eq!(a, b);
        assert_eq!(a, c);
        match &a[0] {
            Observation::MessageSeen { message, .. } => {
                assert_eq!(message.subject.as_deref(), Some("Hi & bye"));
                assert_eq!(message.internet_message_id.as_deref(), Some("a@b"));
                assert_eq!(message.folder.as_deref(), Some("inbox"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn empty_results_and_errors_yield_nothing() {
        let s = "http://schemas.xmlsoap.org/soap/envelope/";
        let m = "http://schemas.microsoft.com/exchange/services/2006/messages";
        let req = format!(
            r#"<s:Envelope xmlns:s="{s}"><s:Body><GetItem xmlns="{m}"/></s:Body></s:Envelope>"#
        );
        let empty = format!(
            r#"<s:Envelope xmlns:s="{s}"><s:Body><GetItemResponse xmlns="{m}"><ResponseMessages><GetItemResponseMessage ResponseClass="Success"><ResponseCode>NoError</ResponseCode><Items/></GetItemResponseMessage></ResponseMessages></GetItemResponse></s:Body></s:Envelope>"#
        );
        assert!(inspect_pair(&req, &empty).is_empty());
        let warning = empty.replace(r#"ResponseClass="Success""#, r#"ResponseClass="Warning""#);
        let req_tree = Tree::parse(req.as_bytes(), XmlLimits::default()).unwrap();
        let resp_tree = Tree::parse(warning.as_bytes(), XmlLimits::default()).unwrap();
        let out = inspect(Some(&req_tree), Some(&resp_tree), None);
        assert!(out.observations.is_empty());
        assert_eq!(out.failures, ["NoError"]);
    }
}
