//! Reading a mailbox folder's changes for the catch-up sweep: EWS `SyncFolderItems` (ids only,
//! a page at a time, with the sync state Exchange hands back) and `GetItem` of the changed items
//! with everything tracking reads, parsed by the same inspection code as the traffic.

use super::{
    ExchangeClient, ExchangeError, get_items_request, impersonated, inspect_ews, messages_of,
    xml_escape,
};
use crate::inspect::Message;
use crate::inspect::xml::{Node, Ns, Tree, XmlLimits};

/// The folder to sync: a distinguished name (`inbox`) or an id.
#[derive(Debug, Clone, Copy)]
pub enum SyncFolder<'a> {
    Distinguished(&'a str),
    Id(&'a str),
}

/// One page of a folder's changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncPage {
    /// Items created or changed, in Exchange's order.
    pub item_ids: Vec<String>,
    /// The change key of each of `item_ids` (empty when Exchange gave none).
    pub change_keys: Vec<String>,
    /// Items deleted (or moved out of the folder).
    pub deleted: Vec<String>,
    pub state: String,
    pub last: bool,
}

impl SyncFolder<'_> {
    /// The folder as EWS names it in a request.
    pub(super) fn xml(&self) -> String {
        match self {
            SyncFolder::Distinguished(name) => {
                format!(r#"<t:DistinguishedFolderId Id="{}"/>"#, xml_escape(name))
            }
            SyncFolder::Id(id) => format!(r#"<t:FolderId Id="{}"/>"#, xml_escape(id)),
        }
    }
}

fn sync_request(mailbox: &str, folder: SyncFolder<'_>, state: Option<&str>, max: u16) -> String {
    let folder = folder.xml();
    let state = state
        .map(|s| format!("<m:SyncState>{}</m:SyncState>", xml_escape(s)))
        .unwrap_or_default();
    impersonated(
        mailbox,
        &format!(
            r#"<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:SyncFolderId>{folder}</m:SyncFolderId>{state}<m:MaxChangesReturned>{max}</m:MaxChangesReturned></m:SyncFolderItems>"#
        ),
    )
}

/// Every descendant with this local name, whatever its namespace (fault details use the errors
/// namespace).
pub(super) fn by_local_name<'t>(node: Node<'t>, name: &str, out: &mut Vec<Node<'t>>) {
    for child in node.children() {
        if child.name() == name {
            out.push(child);
        }
        by_local_name(child, name, out);
    }
}

/// How long an `ErrorServerBusy` answer asks to wait (`BackOffMilliseconds`, else 30 s).
pub(super) fn back_off(root: Node<'_>) -> u64 {
    let mut values = Vec::new();
    by_local_name(root, "Value", &mut values);
    values
        .iter()
        .find(|v| v.attr("Name") == Some("BackOffMilliseconds"))
        .and_then(|v| v.text().trim().parse().ok())
        .unwrap_or(30_000)
}

/// Reads a SyncFolderItems answer: its page, or the error Exchange gave.
fn read_sync(status: u16, body: &[u8]) -> Result<SyncPage, ExchangeError> {
    let tree = Tree::parse(body, XmlLimits::default())
        .map_err(|e| ExchangeError::Unreadable(e.to_string()))?;
    let mut codes = Vec::new();
    by_local_name(tree.root(), "ResponseCode", &mut codes);
    let code = codes
        .first()
        .map(|c| c.text().into_owned())
        .unwrap_or_default();
    match code.as_str() {
        "NoError" => {}
        "ErrorInvalidSyncStateData" => return Err(ExchangeError::InvalidSyncState),
        "ErrorServerBusy" => return Err(ExchangeError::Busy(back_off(tree.root()))),
        "" if status != 200 => return Err(ExchangeError::Status(status)),
        other => return Err(ExchangeError::NotFound(other.to_owned())),
    }
    let message = tree
        .body_child()
        .map_err(|_| ExchangeError::Unreadable("no SOAP body".into()))?;
    let mut page = SyncPage::default();
    let mut states = Vec::new();
    message.descendants("SyncState", &mut states);
    page.state = states
        .first()
        .map(|s| s.text().into_owned())
        .unwrap_or_default();
    let mut last = Vec::new();
    message.descendants("IncludesLastItemInRange", &mut last);
    page.last = last.first().is_none_or(|l| l.text() != "false");
    let mut changes = Vec::new();
    message.descendants("Changes", &mut changes);
    for change in changes.iter().flat_map(|c| c.children()) {
        let mut ids = Vec::new();
        change.descendants("ItemId", &mut ids);
        let Some(id) = ids.first().and_then(|i| i.attr("Id")) else {
            continue;
        };
        if change.is(Ns::Types, "Create") || change.is(Ns::Types, "Update") {
            page.item_ids.push(id.to_owned());
            let key = ids.first().and_then(|i| i.attr("ChangeKey")).unwrap_or("");
            page.change_keys.push(key.to_owned());
        } else if change.is(Ns::Types, "Delete") {
            page.deleted.push(id.to_owned());
        }
    }
    Ok(page)
}

/// The FindItem that asks whether anything in these folders changed since `since` (one row is
/// enough to know).
fn probe_request(mailbox: &str, folders: &[SyncFolder<'_>], since: Option<&str>) -> String {
    let ids: String = folders.iter().map(SyncFolder::xml).collect();
    let restriction = since
        .map(|t| {
            format!(
                r#"<m:Restriction><t:IsGreaterThanOrEqualTo><t:FieldURI FieldURI="item:LastModifiedTime"/><t:FieldURIOrConstant><t:Constant Value="{}"/></t:FieldURIOrConstant></t:IsGreaterThanOrEqualTo></m:Restriction>"#,
                xml_escape(t)
            )
        })
        .unwrap_or_default();
    impersonated(
        mailbox,
        &format!(
            r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:IndexedPageItemView MaxEntriesReturned="1" Offset="0" BasePoint="Beginning"/>{restriction}<m:ParentFolderIds>{ids}</m:ParentFolderIds></m:FindItem>"#
        ),
    )
}

/// Whether a probe's answer shows a change: any row, or anything that is not a clean answer
/// (then the sweep reads the folders to be sure).
fn probe_changed(body: &[u8]) -> bool {
    let Ok(tree) = Tree::parse(body, XmlLimits::default()) else {
        return true;
    };
    let mut codes = Vec::new();
    by_local_name(tree.root(), "ResponseCode", &mut codes);
    let mut roots = Vec::new();
    by_local_name(tree.root(), "RootFolder", &mut roots);
    codes.is_empty()
        || codes.iter().any(|c| c.text() != "NoError")
        || roots.len() != codes.len()
        || roots
            .iter()
            .any(|r| r.attr("TotalItemsInView").is_none_or(|n| n.trim() != "0"))
}

/// An HTTP date (`Sat, 05 Dec 2026 01:02:15 GMT`) as RFC 3339: the server's clock, so that the
/// next probe asks from a time Exchange agrees on.
pub(super) fn http_date_to_rfc3339(date: &str) -> Option<String> {
    let parts: Vec<&str> = date.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? + 1;
    let day: u32 = day.parse().ok()?;
    let year: u32 = year.parse().ok()?;
    (time.len() == 8).then_some(())?;
    Some(format!("{year:04}-{month:02}-{day:02}T{time}Z"))
}

impl ExchangeClient {
    /// Whether anything in `folders` changed since `since` (server time, RFC 3339; `None`: no
    /// earlier probe, so yes), and the server's time of this answer. One request per mailbox
    /// whatever the number of folders: the whole cost of a sweep that finds nothing new.
    pub async fn changed_since(
        &self,
        mailbox: &str,
        folders: &[SyncFolder<'_>],
        since: Option<&str>,
    ) -> Result<(bool, Option<String>), ExchangeError> {
        let url = self.ews_url()?;
        let (status, headers, body) = self
            .post_ews(url, mailbox, probe_request(mailbox, folders, since))
            .await?;
        if status != 200 {
            // A busy server says so in a fault; anything else is read as a change.
            read_sync(status, &body)?;
            return Ok((true, None));
        }
        let now = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("date"))
            .and_then(|(_, value)| http_date_to_rfc3339(value));
        Ok((since.is_none() || probe_changed(&body), now))
    }

    fn ews_url(&self) -> Result<&str, ExchangeError> {
        self.settings
            .ews_url
            .as_deref()
            .ok_or(ExchangeError::NotConfigured("the catch-up sweep (EWS)"))
    }

    /// One page of a folder's changes since `state` (`None`: from the beginning).
    pub async fn sync_folder_items(
        &self,
        mailbox: &str,
        folder: SyncFolder<'_>,
        state: Option<&str>,
        max: u16,
    ) -> Result<SyncPage, ExchangeError> {
        let url = self.ews_url()?;
        let request = sync_request(mailbox, folder, state, max);
        let (status, _, body) = self.post_ews(url, mailbox, request).await?;
        if status != 200 && status != 500 {
            return Err(ExchangeError::Status(status));
        }
        read_sync(status, &body)
    }

    /// The messages with these ids (items that are not messages, or are gone, are left out).
    pub async fn get_messages(
        &self,
        mailbox: &str,
        ids: &[&str],
    ) -> Result<Vec<Message>, ExchangeError> {
        let url = self.ews_url()?;
        let request = get_items_request(mailbox, ids, false);
        let (status, headers, body) = self.post_ews(url, mailbox, request.clone()).await?;
        if status != 200 {
            return Err(ExchangeError::Status(status));
        }
        let inspected = inspect_ews(mailbox, request, status, &headers, body)?;
        Ok(messages_of(inspected.observations))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:SyncFolderItemsResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:SyncFolderItemsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:SyncState>H4sIAAA</m:SyncState><m:IncludesLastItemInRange>false</m:IncludesLastItemInRange><m:Changes><t:Create><t:Message><t:ItemId Id="A1"/></t:Message></t:Create><t:Delete><t:ItemId Id="D1"/></t:Delete><t:Update><t:Message><t:ItemId Id="U1"/></t:Message></t:Update></m:Changes></m:SyncFolderItemsResponseMessage></m:ResponseMessages></m:SyncFolderItemsResponse></s:Body></s:Envelope>"#;

    #[test]
    fn a_probe_sees_a_change_in_any_folder_and_reads_the_server_clock() {
        let answer = |counts: &[u32]| {
            let roots: String = counts
                .iter()
                .map(|n| format!(r#"<m:FindItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:RootFolder TotalItemsInView="{n}" IncludesLastItemInRange="true"><t:Items/></m:RootFolder></m:FindItemResponseMessage>"#))
                .collect();
            format!(
                r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:FindItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages>{roots}</m:ResponseMessages></m:FindItemResponse></s:Body></s:Envelope>"#
            )
        };
        assert!(!probe_changed(answer(&[0, 0, 0]).as_bytes()));
        assert!(probe_changed(answer(&[0, 1, 0]).as_bytes()));
        assert!(probe_changed(b"not xml"));
        assert!(probe_changed(
            answer(&[0])
                .replace("NoError", "ErrorFolderNotFound")
                .as_bytes()
        ));
        assert_eq!(
            http_date_to_rfc3339("Sat, 05 Dec 2026 01:02:15 GMT").as_deref(),
            Some("2026-12-05T01:02:15Z")
        );
        assert_eq!(http_date_to_rfc3339("yesterday"), None);
        let request = probe_request(
            "a@b.example",
            &[SyncFolder::Distinguished("inbox"), SyncFolder::Id("F1")],
            Some("2026-12-05T01:02:15Z"),
        );
        assert!(
            request.contains(r#"<t:FolderId Id="F1"/>"#)
                && request.contains("item:LastModifiedTime")
        );
    }

    #[test]
    fn a_page_lists_creates_and_updates_with_its_state() {
        let page = read_sync(200, PAGE.as_bytes()).unwrap();
        assert_eq!(page.item_ids, ["A1", "U1"]);
        assert_eq!(page.state, "H4sIAAA");
        assert!(!page.last);
    }

    #[test]
    fn an_expired_state_and_a_busy_server_are_told_apart() {
        let expired = PAGE.replace("NoError", "ErrorInvalidSyncStateData");
        assert!(matches!(
            read_sync(200, expired.as_bytes()),
            Err(ExchangeError::InvalidSyncState)
        ));
        let busy = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>a:ErrorServerBusy</faultcode><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorServerBusy</e:ResponseCode><t:MessageXml xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><t:Value Name="BackOffMilliseconds">1500</t:Value></t:MessageXml></detail></s:Fault></s:Body></s:Envelope>"#;
        assert!(matches!(
            read_sync(500, busy.as_bytes()),
            Err(ExchangeError::Busy(1500))
        ));
        let request = sync_request("a@b.example", SyncFolder::Id("F&1"), Some("S<"), 100);
        assert!(request.contains(r#"<t:FolderId Id="F&amp;1"/>"#) && request.contains("S&lt;"));
    }
}
