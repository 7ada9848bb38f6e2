//! Synchronisation and notifications: SyncFolderHierarchy, SyncFolderItems with real sync states
//! (`MaxChangesReturned`, `IncludesLastItemInRange`), and Subscribe/Unsubscribe whose
//! subscription ids name the folders a streaming connection watches.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::folders::target_folder;
use super::items::sync_row;
use super::parse;
use super::render::{self, BaseShape};
use super::{Ctx, close, error, open, store_error, success, xml_escape};
use crate::inspect::xml::{Node, Ns};
use crate::simulate::mailbox::{FolderChange, ItemChange, StoreError};

pub fn sync_folder_hierarchy(ctx: &mut Ctx<'_>, op: Node<'_>, out: &mut String) {
    let shape = parse::shape(op.child(Ns::Messages, "FolderShape"));
    let full = shape.base != BaseShape::IdOnly || !shape.fields.is_empty();
    let state = op
        .child(Ns::Messages, "SyncState")
        .map(|s| s.text().into_owned());
    open(out, "SyncFolderHierarchy");
    let result = target_folder(ctx, op.child(Ns::Messages, "SyncFolderId"), "msgfolderroot")
        .and_then(|(m, root)| Ok((m, ctx.store.sync_folders(m, root, state.as_deref())?)));
    match result {
        Ok((m, page)) => {
            let mailbox = ctx.store.mailbox(m);
            let mut payload = format!(
                "<m:SyncState>{}</m:SyncState><m:IncludesLastFolderInRange>true</m:IncludesLastFolderInRange><m:Changes>",
                page.state
            );
            for FolderChange::Create(key) in page.changes {
                payload.push_str("<t:Create>");
                render::folder(&mut payload, mailbox, &mailbox.folders[&key], full);
                payload.push_str("</t:Create>");
            }
            payload.push_str("</m:Changes>");
            success(out, "SyncFolderHierarchy", &payload);
        }
        Err(e) => sync_error(out, "SyncFolderHierarchy", &e),
    }
    close(out, "SyncFolderHierarchy");
}

fn sync_error(out: &mut String, op: &str, e: &StoreError) {
    if *e == StoreError::IdMalformed {
        error(
            out,
            op,
            "ErrorInvalidSyncStateData",
            "Synchronization state data is corrupt or otherwise invalid.",
            "",
        );
    } else {
        store_error(out, op, e, "");
    }
}

pub fn sync_folder_items(ctx: &mut Ctx<'_>, op: Node<'_>, out: &mut String) {
    let shape = parse::shape(op.child(Ns::Messages, "ItemShape"));
    let state = op
        .child(Ns::Messages, "SyncState")
        .map(|s| s.text().into_owned());
    let max = op
        .child(Ns::Messages, "MaxChangesReturned")
        .and_then(|m| m.text().trim().parse::<usize>().ok())
        .unwrap_or(512)
        .clamp(1, 512);
    open(out, "SyncFolderItems");
    let folder = op
        .child(Ns::Messages, "SyncFolderId")
        .and_then(|n| n.children().find_map(parse::folder_ref));
    let result = match folder {
        Some(folder) => ctx.folder(&folder).and_then(|(m, key)| {
            let page = ctx.store.sync_items(m, key, state.as_deref(), max)?;
            Ok((m, page))
        }),
        None => Err(StoreError::FolderNotFound),
    };
    match result {
        Ok((m, page)) => {
            let mut payload = format!(
                "<m:SyncState>{}</m:SyncState><m:IncludesLastItemInRange>{}</m:IncludesLastItemInRange><m:Changes>",
                page.state, page.last_in_range
            );
            for change in page.changes {
                match change {
                    ItemChange::Create(key) => {
                        sync_row(&mut payload, ctx, m, key, &shape, "Create")
                    }
                    ItemChange::Update(key) => {
                        sync_row(&mut payload, ctx, m, key, &shape, "Update")
                    }
                    ItemChange::Delete(id) => {
                        let _ = write!(
                            payload,
                            r#"<t:Delete><t:ItemId Id="{}"/></t:Delete>"#,
                            xml_escape(&id)
                        );
                    }
                }
            }
            payload.push_str("</m:Changes>");
            success(out, "SyncFolderItems", &payload);
        }
        Err(e) => sync_error(out, "SyncFolderItems", &e),
    }
    close(out, "SyncFolderItems");
}

/// What a subscription watches: its id names all of it, so no state is kept for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub mailbox: u16,
    pub folders: Vec<u64>,
    /// Event type names as requested (`NewMailEvent`…).
    pub events: Vec<String>,
}

impl Subscription {
    pub fn id(&self) -> String {
        let keys: Vec<String> = self.folders.iter().map(u64::to_string).collect();
        STANDARD.encode(format!(
            "TGSUB:{}:{}:{}",
            self.mailbox,
            keys.join(","),
            self.events.join(",")
        ))
    }

    pub fn parse(id: &str) -> Option<Subscription> {
        let text = String::from_utf8(STANDARD.decode(id.trim()).ok()?).ok()?;
        let mut parts = text.strip_prefix("TGSUB:")?.splitn(3, ':');
        let mailbox = parts.next()?.parse().ok()?;
        let folders = parts
            .next()?
            .split(',')
            .filter(|f| !f.is_empty())
            .map(|f| f.parse().ok())
            .collect::<Option<Vec<u64>>>()?;
        let events = parts
            .next()?
            .split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        Some(Subscription {
            mailbox,
            folders,
            events,
        })
    }
}

pub fn subscribe(ctx: &mut Ctx<'_>, op: Node<'_>, out: &mut String) {
    let request = op.children().next();
    let pull = request.is_some_and(|r| r.name() == "PullSubscriptionRequest");
    let folders = parse::folder_refs(request.and_then(|r| r.child(Ns::Types, "FolderIds")));
    open(out, "Subscribe");
    let resolved: Result<Vec<(u16, u64)>, StoreError> =
        folders.iter().map(|f| ctx.folder(f)).collect();
    match resolved {
        Ok(found) => {
            let events = request
                .and_then(|r| r.child(Ns::Types, "EventTypes"))
                .map(|types| types.children().map(|t| t.text().into_owned()).collect())
                .unwrap_or_default();
            let subscription = Subscription {
                mailbox: found.first().map_or(ctx.mailbox, |(m, _)| *m),
                folders: found.iter().map(|(_, k)| *k).collect(),
                events,
            };
            let mut payload = format!("<m:SubscriptionId>{}</m:SubscriptionId>", subscription.id());
            if pull {
                payload.push_str("<m:Watermark>AQAAAA==</m:Watermark>");
            }
            success(out, "Subscribe", &payload);
        }
        Err(e) => store_error(out, "Subscribe", &e, ""),
    }
    close(out, "Subscribe");
}

pub fn unsubscribe(op: Node<'_>, out: &mut String) {
    open(out, "Unsubscribe");
    let id = op
        .child(Ns::Messages, "SubscriptionId")
        .map(|s| s.text().into_owned())
        .unwrap_or_default();
    if Subscription::parse(&id).is_some() {
        success(out, "Unsubscribe", "");
    } else {
        error(
            out,
            "Unsubscribe",
            "ErrorSubscriptionNotFound",
            "The specified subscription was not found.",
            "",
        );
    }
    close(out, "Unsubscribe");
}
