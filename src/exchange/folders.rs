//! The folders under a mailbox's Inbox (EWS `FindFolder`, deep traversal, paged), for the
//! options page's folder tracking rules: a rule only works on a folder under the Inbox.

use super::{ExchangeClient, ExchangeError, impersonated};
use crate::inspect::xml::{Node, Tree, XmlLimits};

/// Folders listed at most, and per page.
const MAX_FOLDERS: usize = 2000;
const PAGE: usize = 500;

/// One mail folder under the Inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxFolder {
    pub id: String,
    pub name: String,
    /// 1 for the Inbox's children, 2 for theirs, …
    pub depth: usize,
}

fn find_folder_request(mailbox: &str, offset: usize) -> String {
    impersonated(
        mailbox,
        &format!(
            concat!(
                r#"<m:FindFolder Traversal="Deep"><m:FolderShape><t:BaseShape>Default</t:BaseShape>"#,
                r#"<t:AdditionalProperties><t:FieldURI FieldURI="folder:ParentFolderId"/><t:FieldURI FieldURI="folder:FolderClass"/></t:AdditionalProperties>"#,
                r#"</m:FolderShape><m:IndexedPageFolderView MaxEntriesReturned="{page}" Offset="{offset}" BasePoint="Beginning"/>"#,
                r#"<m:ParentFolderIds><t:DistinguishedFolderId Id="inbox"/></m:ParentFolderIds></m:FindFolder>"#
            ),
            page = PAGE,
            offset = offset,
        ),
    )
}

/// A folder as FindFolder lists it: id, parent id, class and name.
struct Listed {
    id: String,
    parent: Option<String>,
    name: String,
    mail: bool,
}

fn listed(folder: Node<'_>) -> Option<Listed> {
    let attr_of = |name: &str| {
        folder
            .children()
            .find(|c| c.name() == name)
            .and_then(|c| c.attr("Id").map(str::to_owned))
    };
    let class = folder.child_text("FolderClass");
    Some(Listed {
        id: attr_of("FolderId")?,
        parent: attr_of("ParentFolderId"),
        name: folder.child_text("DisplayName").unwrap_or_default(),
        // Mail folders: `IPF.Note` and its kinds, or no class at all.
        mail: folder.name() == "Folder"
            && class.is_none_or(|c| c.is_empty() || c.starts_with("IPF.Note")),
    })
}

/// One page: its folders and whether it was the last.
fn read_page(body: &[u8]) -> Result<(Vec<Listed>, bool), ExchangeError> {
    let tree = Tree::parse(body, XmlLimits::default())
        .map_err(|e| ExchangeError::Unreadable(e.to_string()))?;
    let root = tree.root();
    let mut messages = Vec::new();
    root.descendants("FindFolderResponseMessage", &mut messages);
    let message = messages
        .first()
        .ok_or_else(|| ExchangeError::Unreadable("no FindFolder response".into()))?;
    if message.attr("ResponseClass") != Some("Success") {
        let code = message.child_text("ResponseCode").unwrap_or_default();
        return Err(ExchangeError::Unreadable(format!("FindFolder: {code}")));
    }
    let mut roots = Vec::new();
    message.descendants("RootFolder", &mut roots);
    let last = roots
        .first()
        .and_then(|r| r.attr("IncludesLastItemInRange"))
        .is_none_or(|v| v.trim() == "true");
    let mut folders = Vec::new();
    for kind in [
        "Folder",
        "CalendarFolder",
        "ContactsFolder",
        "TasksFolder",
        "SearchFolder",
    ] {
        let mut found = Vec::new();
        message.descendants(kind, &mut found);
        folders.extend(found.into_iter().filter_map(listed));
    }
    Ok((folders, last))
}

/// Orders folders as a tree (each after its parent, children by name) with their depth; a
/// folder whose parent is not listed is a child of the Inbox.
fn as_tree(listed: Vec<Listed>) -> Vec<InboxFolder> {
    let ids: std::collections::HashSet<&str> = listed.iter().map(|f| f.id.as_str()).collect();
    let is_top = |f: &Listed| f.parent.as_deref().is_none_or(|p| !ids.contains(p));
    let mut out = Vec::new();
    let mut stack: Vec<(&Listed, usize)> = listed
        .iter()
        .filter(|f| is_top(f))
        .map(|f| (f, 1))
        .collect();
    stack.sort_by(|a, b| b.0.name.cmp(&a.0.name));
    while let Some((folder, depth)) = stack.pop() {
        if out.len() >= MAX_FOLDERS || depth > 32 {
            break;
        }
        if folder.mail {
            out.push(InboxFolder {
                id: folder.id.clone(),
                name: folder.name.clone(),
                depth,
            });
        }
        let mut children: Vec<&Listed> = listed
            .iter()
            .filter(|c| c.parent.as_deref() == Some(folder.id.as_str()))
            .collect();
        children.sort_by(|a, b| b.name.cmp(&a.name));
        stack.extend(children.into_iter().map(|c| (c, depth + 1)));
    }
    out
}

impl ExchangeClient {
    /// The mail folders under a mailbox's Inbox, as a tree in reading order.
    pub async fn inbox_folders(&self, mailbox: &str) -> Result<Vec<InboxFolder>, ExchangeError> {
        let url = self
            .settings
            .ews_url
            .as_deref()
            .ok_or(ExchangeError::NotConfigured("the folder list (EWS)"))?;
        let mut all = Vec::new();
        loop {
            let request = find_folder_request(mailbox, all.len());
            let (status, _, body) = self.post_ews(url, mailbox, request).await?;
            if status != 200 {
                return Err(ExchangeError::Status(status));
            }
            let (page, last) = read_page(&body)?;
            let got = page.len();
            all.extend(page);
            if last || got == 0 || all.len() >= MAX_FOLDERS {
                break;
            }
        }
        Ok(as_tree(all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_read_as_a_tree_in_name_order_without_calendars() {
        let page = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:FindFolderResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:FindFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:RootFolder TotalItemsInView="4" IncludesLastItemInRange="true"><t:Folders>
<t:Folder><t:FolderId Id="C"/><t:ParentFolderId Id="B"/><t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>Q4</t:DisplayName></t:Folder>
<t:Folder><t:FolderId Id="B"/><t:ParentFolderId Id="INBOX"/><t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>Deals</t:DisplayName></t:Folder>
<t:Folder><t:FolderId Id="A"/><t:ParentFolderId Id="INBOX"/><t:DisplayName>Customers</t:DisplayName></t:Folder>
<t:CalendarFolder><t:FolderId Id="K"/><t:ParentFolderId Id="INBOX"/><t:FolderClass>IPF.Appointment</t:FolderClass><t:DisplayName>Odd calendar</t:DisplayName></t:CalendarFolder>
</t:Folders></m:RootFolder></m:FindFolderResponseMessage></m:ResponseMessages></m:FindFolderResponse></s:Body></s:Envelope>"#;
        let (listed, last) = read_page(page.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert!(last);
        let tree: Vec<(String, usize)> = as_tree(listed)
            .into_iter()
            .map(|f| (f.name, f.depth))
            .collect();
        assert_eq!(
            tree,
            vec![
                ("Customers".to_owned(), 1),
                ("Deals".to_owned(), 1),
                ("Q4".to_owned(), 2)
            ]
        );
    }
}
