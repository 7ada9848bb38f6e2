//! Folder operations (GetFolder, FindFolder, CreateFolder) and the mailbox-wide lookups
//! ConvertId and ResolveNames.

use std::fmt::Write as _;

use super::parse::{self, FolderRef};
use super::render::{self, BaseShape};
use super::{Ctx, close, error, open, store_error, success, xml_escape};
use crate::inspect::xml::{Node, Ns};
use crate::simulate::mailbox::{self, Kind, StoreError};

fn folder_shape_full(op: Node<'_>) -> bool {
    let shape = parse::shape(op.child(Ns::Messages, "FolderShape"));
    shape.base != BaseShape::IdOnly || !shape.fields.is_empty()
}

pub fn get_folder(ctx: &mut Ctx<'_>, op: Node<'_>, out: &mut String) {
    let full = folder_shape_full(op);
    open(out, "GetFolder");
    for folder in parse::folder_refs(op.child(Ns::Messages, "FolderIds")) {
        match ctx.folder(&folder) {
            Ok((m, key)) => {
                let mailbox = ctx.store.mailbox(m);
                let mut payload = String::from("<m:Folders>");
                render::folder(&mut payload, mailbox, &mailbox.folders[&key], full);
                payload.push_str("</m:Folders>");
                success(out, "GetFolder", &payload);
            }
            Err(e) => store_error(out, "GetFolder", &e, "<m:Folders/>"),
        }
    }
    close(out, "GetFolder");
}

/// Offset and maximum of an indexed paging view.
pub fn paging(view: Option<Node<'_>>) -> (usize, usize) {
    let Some(view) = view else {
        return (0, usize::MAX);
    };
    let number = |name: &str, default: usize| {
        view.attr(name)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(default)
    };
    let max = number("MaxEntriesReturned", usize::MAX);
    let offset = number("Offset", 0);
    (offset, max)
}

pub fn find_folder(ctx: &mut Ctx<'_>, op: Node<'_>, out: &mut String) {
    let full = folder_shape_full(op);
    let deep = op.attr("Traversal") == Some("Deep");
    let (offset, max) = paging(op.child(Ns::Messages, "IndexedPageFolderView"));
    open(out, "FindFolder");
    for folder in parse::folder_refs(op.child(Ns::Messages, "ParentFolderIds")) {
        let (m, key) = match ctx.folder(&folder) {
            Ok(found) => found,
            Err(e) => {
                store_error(out, "FindFolder", &e, "");
                continue;
            }
        };
        let mailbox = ctx.store.mailbox(m);
        let all: Vec<_> = if deep {
            mailbox.descendants(key)
        } else {
            mailbox.children(key).collect()
        };
        let page: Vec<_> = all.iter().skip(offset).take(max).collect();
        let last = offset + page.len() >= all.len();
        let mut payload = format!(
            r#"<m:RootFolder IndexedPagingOffset="{}" TotalItemsInView="{}" IncludesLastItemInRange="{last}"><t:Folders>"#,
            offset + page.len(),
            all.len()
        );
        for f in page {
            render::folder(&mut payload, mailbox, f, full);
        }
        payload.push_str("</t:Folders></m:RootFolder>");
        success(out, "FindFolder", &payload);
    }
    close(out, "FindFolder");
}

pub fn create_folder(ctx: &mut Ctx<'_>, op: Node<'_>, out: &mut String) {
    open(out, "CreateFolder");
    let parent = op
        .child(Ns::Messages, "ParentFolderId")
        .and_then(|p| p.children().find_map(parse::folder_ref));
    let parent = match parent.map(|p| ctx.folder(&p)) {
        Some(Ok(found)) => Some(found),
        Some(Err(e)) => {
            store_error(out, "CreateFolder", &e, "<m:Folders/>");
            None
        }
        None => {
            super::error(
                out,
                "CreateFolder",
                "ErrorInvalidRequest",
                "CreateFolder needs a ParentFolderId.",
                "<m:Folders/>",
            );
            None
        }
    };
    if let (Some((m, parent)), Some(folders)) = (parent, op.child(Ns::Messages, "Folders")) {
        for f in folders.children() {
            let name = f.child_text("DisplayName").unwrap_or_default();
            let class = f.child_text("FolderClass").unwrap_or_else(|| {
                match f.name() {
                    "CalendarFolder" => "IPF.Appointment",
                    "ContactsFolder" => "IPF.Contact",
                    "TasksFolder" => "IPF.Task",
                    _ => "IPF.Note",
                }
                .to_owned()
            });
            match ctx.store.create_folder(m, parent, &name, &class, None) {
                Ok(key) => {
                    let mailbox = ctx.store.mailbox(m);
                    let mut payload = String::from("<m:Folders>");
                    render::folder(&mut payload, mailbox, &mailbox.folders[&key], false);
                    payload.push_str("</m:Folders>");
                    success(out, "CreateFolder", &payload);
                }
                Err(e) => store_error(out, "CreateFolder", &e, "<m:Folders/>"),
            }
        }
    }
    close(out, "CreateFolder");
}

pub fn convert_id(ctx: &mut Ctx<'_>, op: Node<'_>, out: &mut String) {
    let destination = op.attr("DestinationFormat").unwrap_or("EwsId");
    open(out, "ConvertId");
    for source in op
        .child(Ns::Messages, "SourceIds")
        .into_iter()
        .flat_map(|s| s.children())
    {
        let id = source.attr("Id").unwrap_or("");
        let format = source.attr("Format").unwrap_or("EwsId");
        let mailbox = source.attr("Mailbox").unwrap_or("");
        let ews_id = match format {
            "HexEntryId" => mailbox::from_entry_id_hex(id),
            _ => mailbox::decode_id(id).map(|_| id.to_owned()),
        };
        let known = ews_id
            .as_deref()
            .is_some_and(|i| ctx.find_item(i).is_ok() || ctx.store.find_folder(i).is_ok());
        let converted = match (&ews_id, destination) {
            (Some(i), "HexEntryId") => mailbox::entry_id_hex(i),
            (Some(i), _) => Some(i.clone()),
            (None, _) => None,
        };
        match converted {
            Some(converted) if known => {
                let payload = format!(
                    r#"<m:AlternateId xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="t:AlternateIdType" Format="{}" Id="{}" Mailbox="{}"/>"#,
                    xml_escape(destination),
                    xml_escape(&converted),
                    xml_escape(mailbox)
                );
                success(out, "ConvertId", &payload);
            }
            Some(_) => store_error(out, "ConvertId", &StoreError::ItemNotFound, ""),
            None => store_error(out, "ConvertId", &StoreError::IdMalformed, ""),
        }
    }
    close(out, "ConvertId");
}

/// ResolveNames over the store's mailboxes and the caller's contacts.
pub fn resolve_names(ctx: &mut Ctx<'_>, op: Node<'_>, out: &mut String) {
    let wanted = op
        .child(Ns::Messages, "UnresolvedEntry")
        .map(|n| n.text().to_lowercase())
        .unwrap_or_default();
    let wanted = wanted.trim_start_matches("smtp:").to_owned();
    let matches = |name: &str, address: &str| {
        !wanted.is_empty()
            && (address.to_lowercase().starts_with(&wanted)
                || name
                    .to_lowercase()
                    .split_whitespace()
                    .any(|w| w.starts_with(&wanted))
                || name.to_lowercase().starts_with(&wanted))
    };
    let mut found: Vec<(String, String, &str)> = Vec::new();
    for m in ctx.store.mailboxes() {
        if matches(&m.name, &m.address) {
            found.push((m.name.clone(), m.address.clone(), "Mailbox"));
        }
    }
    let own = ctx.store.mailbox(ctx.mailbox);
    for item in own.items.values().filter(|i| i.kind() == Kind::Contact) {
        for email in &item.emails {
            if matches(&item.subject, email) && !found.iter().any(|f| f.1 == *email) {
                found.push((item.subject.clone(), email.clone(), "Contact"));
            }
        }
    }
    open(out, "ResolveNames");
    if found.is_empty() {
        error(
            out,
            "ResolveNames",
            "ErrorNameResolutionNoResults",
            "No results were found.",
            "",
        );
    } else {
        let mut payload = format!(
            r#"<m:ResolutionSet TotalItemsInView="{}" IncludesLastItemInRange="true">"#,
            found.len()
        );
        for (name, address, kind) in &found {
            let _ = write!(
                payload,
                "<t:Resolution><t:Mailbox><t:Name>{}</t:Name><t:EmailAddress>{}</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType><t:MailboxType>{kind}</t:MailboxType></t:Mailbox></t:Resolution>",
                xml_escape(name),
                xml_escape(address)
            );
        }
        payload.push_str("</m:ResolutionSet>");
        if found.len() == 1 {
            success(out, "ResolveNames", &payload);
        } else {
            let _ = write!(
                out,
                r#"<m:ResolveNamesResponseMessage ResponseClass="Warning"><m:MessageText>Multiple results were found.</m:MessageText><m:ResponseCode>ErrorNameResolutionMultipleResults</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{payload}</m:ResolveNamesResponseMessage>"#
            );
        }
    }
    close(out, "ResolveNames");
}

/// The folder a request names, defaulting to a distinguished one of the acting mailbox.
pub fn target_folder(
    ctx: &Ctx<'_>,
    node: Option<Node<'_>>,
    default: &str,
) -> Result<(u16, u64), StoreError> {
    match node.and_then(|n| n.children().find_map(parse::folder_ref)) {
        Some(folder) => ctx.folder(&folder),
        None => ctx.folder(&FolderRef::Distinguished {
            name: default.into(),
            mailbox: None,
        }),
    }
}
