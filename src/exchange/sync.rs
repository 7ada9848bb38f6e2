//! Reading a mailbox folder's changes for the catch-up sweep: EWS `SyncFolderItems` (ids only,
//! a page at a time, with the sync state Exchange hands back) and `GetItem` of the changed items
//! with everything tracking reads, parsed by the same inspection code as the traffic.

use super::{
    ExchangeClient, ExchangeError, get_items_request, impersonated, inspect_ews, xml_escape,
};
use crate::inspect::xml::{Node, Ns, Tree, XmlLimits};
use crate::inspect::{Message, Observation};

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
    pub state: String,
    pub last: bool,
}

fn sync_request(mailbox: &str, folder: SyncFolder<'_>, state: Option<&str>, max: u16) -> String {
    let folder = match folder {
        SyncFolder::Distinguished(name) => {
            format!(r#"<t:DistinguishedFolderId Id="{}"/>"#, xml_escape(name))
        }
        SyncFolder::Id(id) => format!(r#"<t:FolderId Id="{}"/>"#, xml_escape(id)),
    };
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
fn by_local_name<'t>(node: Node<'t>, name: &str, out: &mut Vec<Node<'t>>) {
    for child in node.children() {
        if child.name() == name {
            out.push(child);
        }
        by_local_name(child, name, out);
    }
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
        "ErrorServerBusy" => {
            let mut values = Vec::new();
            by_local_name(tree.root(), "Value", &mut values);
            let back_off = values
                .iter()
                .find(|v| v.attr("Name") == Some("BackOffMilliseconds"))
                .and_then(|v| v.text().trim().parse().ok())
                .unwrap_or(30_000);
            return Err(ExchangeError::Busy(back_off));
        }
        "" if status != 200 => return Err(ExchangeError::Status(status)),
        other => return Err(ExchangeError::NotFound(other.to_owned())),
    }
    let message = tree
        .root()
        .path(&["Body"])
        .or_else(|| tree.body_child().ok())
        .ok_or_else(|| ExchangeError::Unreadable("no SOAP body".into()))?;
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
        if !(change.is(Ns::Types, "Create") || change.is(Ns::Types, "Update")) {
            continue;
        }
        let mut ids = Vec::new();
        change.descendants("ItemId", &mut ids);
        if let Some(id) = ids.first().and_then(|i| i.attr("Id")) {
            page.item_ids.push(id.to_owned());
        }
    }
    Ok(page)
}

impl ExchangeClient {
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
        Ok(inspected
            .observations
            .into_iter()
            .filter_map(|o| match o {
                Observation::MessageSeen { message, .. } => Some(message),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:SyncFolderItemsResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:SyncFolderItemsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:SyncState>H4sIAAA</m:SyncState><m:IncludesLastItemInRange>false</m:IncludesLastItemInRange><m:Changes><t:Create><t:Message><t:ItemId Id="A1"/></t:Message></t:Create><t:Delete><t:ItemId Id="D1"/></t:Delete><t:Update><t:Message><t:ItemId Id="U1"/></t:Message></t:Update></m:Changes></m:SyncFolderItemsResponseMessage></m:ResponseMessages></m:SyncFolderItemsResponse></s:Body></s:Envelope>"#;

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
