//! Item operations: FindItem (paging, restrictions, sort orders), GetItem, CreateItem (the three
//! dispositions, response objects, MIME), SendItem, UpdateItem, MoveItem, CopyItem, DeleteItem.

use std::cmp::Ordering;
use std::fmt::Write as _;

use super::folders::{paging, target_folder};
use super::parse;
use super::render::{self, Context, Shape};
use super::{Ctx, close, error, open, store_error, success};
use crate::common::time::timestamp_seconds;
use crate::inspect::xml::{Node, Ns};
use crate::simulate::mailbox::{Addr, Item, Kind, NewItem, PropKey, StoreError};

const MAX_IDS: usize = 1000;

pub fn find_item(ctx: &mut Ctx<'_>, op: Node<'_>, out: &mut String) {
    let shape = parse::shape(op.child(Ns::Messages, "ItemShape"));
    let view = op.child(Ns::Messages, "IndexedPageItemView");
    let (offset, max) = paging(view);
    let from_end = view.and_then(|v| v.attr("BasePoint")) == Some("End");
    let restriction = op
        .child(Ns::Messages, "Restriction")
        .and_then(|r| r.children().next());
    let sort = op.child(Ns::Messages, "SortOrder");
    open(out, "FindItem");
    for folder in parse::folder_refs(op.child(Ns::Messages, "ParentFolderIds")) {
        let (m, key) = match ctx.folder(&folder) {
            Ok(found) => found,
            Err(e) => {
                store_error(out, "FindItem", &e, "");
                continue;
            }
        };
        let mailbox = ctx.store.mailbox(m);
        let mut rows: Vec<&Item> = mailbox
            .items_in(key)
            .into_iter()
            .filter(|i| restriction.is_none_or(|r| matches(i, r)))
            .collect();
        if let Some(sort) = sort {
            sort_rows(&mut rows, sort);
        }
        let total = rows.len();
        let start = if from_end {
            total.saturating_sub(offset.saturating_add(max.min(total)))
        } else {
            offset.min(total)
        };
        let page: Vec<&Item> = rows.iter().skip(start).take(max).copied().collect();
        let last = start + page.len() >= total;
        let mut payload = format!(
            r#"<m:RootFolder IndexedPagingOffset="{}" TotalItemsInView="{total}" IncludesLastItemInRange="{last}"><t:Items>"#,
            start + page.len()
        );
        for item in page {
            render::item(&mut payload, mailbox, item, &shape, Context::FindItem);
        }
        payload.push_str("</t:Items></m:RootFolder>");
        success(out, "FindItem", &payload);
    }
    close(out, "FindItem");
}

/// The value of a field for restrictions and sorting, as text.
fn field_value(item: &Item, uri: &str) -> Option<String> {
    let time = |t: Option<i64>| t.map(crate::common::time::format_seconds);
    Some(match uri {
        "item:Subject" | "contacts:DisplayName" => item.subject.clone(),
        "item:ItemClass" => item.item_class.clone(),
        "item:DateTimeReceived" => time(Some(item.received))?,
        "item:DateTimeSent" => time(item.sent)?,
        "item:DateTimeCreated" => time(Some(item.created))?,
        "item:LastModifiedTime" => time(Some(item.modified))?,
        "item:Categories" => item.categories.join("\n"),
        "item:Importance" => item.importance.clone().unwrap_or_else(|| "Normal".into()),
        "item:IsDraft" => item.is_draft.to_string(),
        "item:HasAttachments" => "false".into(),
        "item:Body" => item.body.clone(),
        "message:IsRead" => item.is_read.to_string(),
        "message:InternetMessageId" => item.message_id.clone()?,
        "message:From" | "message:Sender" => item.from.as_ref()?.address.clone(),
        "message:ConversationTopic" => item.conversation_topic().to_owned(),
        "item:ConversationId" => item.conversation_id(),
        "calendar:Start" => time(item.start)?,
        "calendar:End" => time(item.end)?,
        "task:DueDate" => time(item.due)?,
        "task:Status" => item.status.clone()?,
        "contacts:GivenName" => item.given_name.clone()?,
        "contacts:Surname" => item.surname.clone()?,
        "contacts:CompanyName" => item.company.clone()?,
        "contacts:EmailAddresses" | "contacts:EmailAddress" => item.emails.join("\n"),
        ext if ext.starts_with("ext:") => item
            .extended
            .iter()
            .find(|p| extended_field(&p.key) == ext)?
            .value
            .clone(),
        other => item
            .extra
            .get(other.rsplit(':').next().unwrap_or(other))?
            .clone(),
    })
}

fn compare(a: &str, b: &str) -> Ordering {
    if let (Some(x), Some(y)) = (timestamp_seconds(a), timestamp_seconds(b)) {
        return x.cmp(&y);
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => a.to_lowercase().cmp(&b.to_lowercase()),
    }
}

/// The field a search expression names: a `FieldURI`, or an extended property as
/// `ext:<set>|<tag>|<name>|<id>`.
fn field_of(node: Node<'_>) -> Option<String> {
    if let Some(ext) = node.child(Ns::Types, "ExtendedFieldURI") {
        return Some(extended_field(&parse::prop_key(ext)));
    }
    node.children()
        .find(|c| c.is(Ns::Types, "FieldURI") || c.is(Ns::Types, "IndexedFieldURI"))
        .and_then(|c| c.attr("FieldURI").map(str::to_owned))
}

fn extended_field(key: &PropKey) -> String {
    let part = |p: &Option<String>| p.clone().unwrap_or_default();
    format!(
        "ext:{}|{}|{}|{}",
        part(&key.set),
        part(&key.tag),
        part(&key.name),
        part(&key.id)
    )
}

fn constant(node: Node<'_>) -> Option<String> {
    node.child(Ns::Types, "FieldURIOrConstant")
        .and_then(|c| c.child(Ns::Types, "Constant"))
        .or_else(|| node.child(Ns::Types, "Constant"))
        .and_then(|c| c.attr("Value").map(str::to_owned))
}

/// Evaluates a restriction (the common search expressions) against an item.
fn matches(item: &Item, expr: Node<'_>) -> bool {
    let name = expr.name();
    match name {
        "And" => expr.children().all(|c| matches(item, c)),
        "Or" => expr.children().any(|c| matches(item, c)),
        "Not" => !expr.children().next().is_some_and(|c| matches(item, c)),
        "Exists" => field_of(expr).is_some_and(|f| field_value(item, &f).is_some()),
        "Contains" => {
            let (Some(field), Some(wanted)) = (field_of(expr), constant(expr)) else {
                return false;
            };
            let Some(value) = field_value(item, &field) else {
                return false;
            };
            let ignore_case = expr
                .attr("ContainmentComparison")
                .is_some_and(|c| c.contains("IgnoreCase"));
            let (value, wanted) = if ignore_case {
                (value.to_lowercase(), wanted.to_lowercase())
            } else {
                (value, wanted)
            };
            match expr.attr("ContainmentMode") {
                Some("FullString") => value.split('\n').any(|v| v == wanted),
                Some("Prefixed") => value.split('\n').any(|v| v.starts_with(&wanted)),
                _ => value.contains(&wanted),
            }
        }
        "IsEqualTo"
        | "IsNotEqualTo"
        | "IsGreaterThan"
        | "IsGreaterThanOrEqualTo"
        | "IsLessThan"
        | "IsLessThanOrEqualTo" => {
            let (Some(field), Some(wanted)) = (field_of(expr), constant(expr)) else {
                return false;
            };
            let Some(value) = field_value(item, &field) else {
                return name == "IsNotEqualTo";
            };
            let order = if field == "item:Categories" {
                if value.split('\n').any(|v| v.eq_ignore_ascii_case(&wanted)) {
                    Ordering::Equal
                } else {
                    Ordering::Less
                }
            } else {
                compare(&value, &wanted)
            };
            match name {
                "IsEqualTo" => order == Ordering::Equal,
                "IsNotEqualTo" => order != Ordering::Equal,
                "IsGreaterThan" => order == Ordering::Greater,
                "IsGreaterThanOrEqualTo" => order != Ordering::Less,
                "IsLessThan" => order == Ordering::Less,
                _ => order != Ordering::Greater,
            }
        }
        _ => true,
    }
}

fn sort_rows(rows: &mut [&Item], sort: Node<'_>) {
    let orders: Vec<(String, bool)> = sort
        .children()
        .filter_map(|o| Some((field_of(o)?, o.attr("Order") == Some("Descending"))))
        .collect();
    rows.sort_by(|a, b| {
        for (field, descending) in &orders {
            let order = match (field_value(a, field), field_value(b, field)) {
                (Some(x), Some(y)) => compare(&x, &y),
                (None, Some(_)) => Ordering::Less,
                (Some(_), None) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            let order = if *descending { order.reverse() } else { order };
            if order != Ordering::Equal {
                return order;
            }
        }
        Ordering::Equal
    });
}

fn too_many_ids(out: &mut String, op: &str, n: usize) -> bool {
    if n > MAX_IDS {
        error(
            out,
            op,
            "ErrorExceededFindCountLimit",
            &format!("At most {MAX_IDS} ids are served in one request."),
            "",
        );
        return true;
    }
    false
}

pub fn get_item(ctx: &mut Ctx<'_>, op: Node<'_>, out: &mut String) {
    let shape = parse::shape(op.child(Ns::Messages, "ItemShape"));
    let ids = parse::item_ids(op.child(Ns::Messages, "ItemIds"));
    open(out, "GetItem");
    if !too_many_ids(out, "GetItem", ids.len()) {
        for id in ids {
            match ctx.find_item(&id) {
                Ok((m, key)) => {
                    let mailbox = ctx.store.mailbox(m);
                    let mut payload = String::from("<m:Items>");
                    render::item(
                        &mut payload,
                        mailbox,
                        &mailbox.items[&key],
                        &shape,
                        Context::GetItem,
                    );
                    payload.push_str("</m:Items>");
                    success(out, "GetItem", &payload);
                }
                Err(e) => store_error(out, "GetItem", &e, "<m:Items/>"),
            }
        }
    }
    close(out, "GetItem");
}

fn id_only(mailbox_items: &Item) -> String {
    let el = render::element(mailbox_items.kind());
    format!(
        r#"<m:Items><t:{el}><t:ItemId Id="{}" ChangeKey="{}"/></t:{el}></m:Items>"#,
        super::xml_escape(&mailbox_items.id),
        mailbox_items.change_key()
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Disposition {
    SaveOnly,
    SendOnly,
    SendAndSaveCopy,
}

fn disposition(op: Node<'_>) -> Option<Disposition> {
    match op.attr("MessageDisposition") {
        Some("SendOnly") => Some(Disposition::SendOnly),
        Some("SendAndSaveCopy") => Some(Disposition::SendAndSaveCopy),
        Some("SaveOnly") => Some(Disposition::SaveOnly),
        _ => None,
    }
}

fn default_folder(kind: Kind) -> &'static str {
    match kind {
        Kind::Message => "drafts",
        Kind::CalendarItem => "calendar",
        Kind::Contact => "contacts",
        Kind::Task => "tasks",
    }
}

pub fn create_item(ctx: &mut Ctx<'_>, op: Node<'_>, out: &mut String) {
    let disposition = disposition(op);
    let saved_to = op.child(Ns::Messages, "SavedItemFolderId");
    open(out, "CreateItem");
    for node in op
        .child(Ns::Messages, "Items")
        .into_iter()
        .flat_map(|i| i.children())
    {
        match create_one(ctx, node, disposition, saved_to) {
            Ok(payload) => success(out, "CreateItem", &payload),
            Err(CreateError::Store(e)) => store_error(out, "CreateItem", &e, "<m:Items/>"),
            Err(CreateError::Request(code, text)) => {
                error(out, "CreateItem", code, &text, "<m:Items/>")
            }
        }
    }
    close(out, "CreateItem");
}

enum CreateError {
    Store(StoreError),
    Request(&'static str, String),
}

impl From<StoreError> for CreateError {
    fn from(e: StoreError) -> Self {
        CreateError::Store(e)
    }
}

fn create_one(
    ctx: &mut Ctx<'_>,
    node: Node<'_>,
    disposition: Option<Disposition>,
    saved_to: Option<Node<'_>>,
) -> Result<String, CreateError> {
    let item = match node.name() {
        "ReplyToItem" | "ReplyAllToItem" | "ForwardItem" => response_object(ctx, node)?,
        _ => parse::new_item(node).ok_or_else(|| {
            CreateError::Request(
                "ErrorInvalidRequest",
                format!(
                    "{} items are not served by the simulated Exchange.",
                    node.name()
                ),
            )
        })?,
    };
    let kind = item.kind();
    let disposition = match (kind, disposition) {
        (Kind::Message, None) => {
            return Err(CreateError::Request(
                "ErrorMessageDispositionRequired",
                "MessageDisposition is required for messages.".into(),
            ));
        }
        (Kind::Message, Some(d)) => d,
        _ => Disposition::SaveOnly,
    };
    match disposition {
        Disposition::SaveOnly => {
            let (m, folder) = target_folder(ctx, saved_to, default_folder(kind))?;
            let item = Item {
                is_draft: kind == Kind::Message,
                is_read: true,
                ..item
            };
            let key = ctx.store.insert(m, NewItem { item, folder })?;
            Ok(id_only(ctx.store.item(m, key)))
        }
        Disposition::SendOnly => {
            ctx.store.send(ctx.mailbox, item, None)?;
            Ok("<m:Items/>".into())
        }
        Disposition::SendAndSaveCopy => {
            let (m, folder) = target_folder(ctx, saved_to, "sentitems")?;
            ctx.store.send(m, item, Some(folder))?;
            Ok("<m:Items/>".into())
        }
    }
}

/// A reply or forward built from the item it refers to, as Exchange fills it in.
fn response_object(ctx: &Ctx<'_>, node: Node<'_>) -> Result<Item, CreateError> {
    let reference = node
        .child(Ns::Types, "ReferenceItemId")
        .and_then(|r| r.attr("Id"))
        .ok_or_else(|| {
            CreateError::Request(
                "ErrorInvalidRequest",
                "A response object needs a ReferenceItemId.".into(),
            )
        })?;
    let (m, key) = ctx.find_item(reference)?;
    let original = ctx.store.item(m, key).clone();
    let me = ctx.store.mailbox(m).address.clone();
    let mut item = parse::new_item_fields(node);
    let prefix = if node.name() == "ForwardItem" {
        "FW: "
    } else {
        "RE: "
    };
    if item.subject.is_empty() {
        item.subject = format!("{prefix}{}", original.subject);
    }
    let not_me = |a: &Addr| !a.address.eq_ignore_ascii_case(&me);
    match node.name() {
        "ReplyToItem" if item.to.is_empty() => {
            item.to = original.from.clone().into_iter().collect();
        }
        "ReplyAllToItem" if item.to.is_empty() => {
            item.to = original.from.clone().into_iter().collect();
            item.to
                .extend(original.to.iter().filter(|a| not_me(a)).cloned());
            item.cc = original.cc.iter().filter(|a| not_me(a)).cloned().collect();
        }
        _ => {}
    }
    let new_body = node
        .child(Ns::Types, "NewBodyContent")
        .map(|b| b.text().into_owned())
        .unwrap_or_default();
    item.body = format!(
        "{new_body}\r\n\r\n> {}",
        original.body.replace('\n', "\n> ")
    );
    item.in_reply_to = original.message_id.clone();
    item.references = match (&original.references, &original.message_id) {
        (Some(r), Some(id)) => Some(format!("{r} {id}")),
        (None, Some(id)) => Some(id.clone()),
        (r, None) => r.clone(),
    };
    Ok(item)
}

pub fn send_item(ctx: &mut Ctx<'_>, op: Node<'_>, out: &mut String) {
    let save = op.attr("SaveItemToFolder") != Some("false");
    let saved_to = op.child(Ns::Messages, "SavedItemFolderId");
    let ids = parse::item_ids(op.child(Ns::Messages, "ItemIds"));
    open(out, "SendItem");
    for id in ids {
        match send_existing(ctx, &id, save, saved_to) {
            Ok(()) => success(out, "SendItem", ""),
            Err(e) => store_error(out, "SendItem", &e, ""),
        }
    }
    close(out, "SendItem");
}

/// Sends a saved item (a draft): it leaves its folder and, when asked, a copy is kept.
fn send_existing(
    ctx: &mut Ctx<'_>,
    id: &str,
    save: bool,
    saved_to: Option<Node<'_>>,
) -> Result<(), StoreError> {
    let (m, key) = ctx.find_item(id)?;
    let save_to = if save {
        Some(target_folder(ctx, saved_to, "sentitems")?.1)
    } else {
        None
    };
    let draft = ctx.store.remove(m, key)?;
    ctx.store.send(m, draft, save_to)?;
    Ok(())
}

pub fn update_item(ctx: &mut Ctx<'_>, op: Node<'_>, out: &mut String) {
    let disposition = disposition(op);
    let saved_to = op.child(Ns::Messages, "SavedItemFolderId");
    open(out, "UpdateItem");
    for change in op
        .child(Ns::Messages, "ItemChanges")
        .into_iter()
        .flat_map(|c| c.children())
    {
        let id = parse::item_ids(Some(change))
            .into_iter()
            .next()
            .unwrap_or_default();
        match update_one(ctx, &id, change, disposition, saved_to) {
            Ok(payload) => success(
                out,
                "UpdateItem",
                &format!("{payload}<m:ConflictResults><t:Count>0</t:Count></m:ConflictResults>"),
            ),
            Err(e) => store_error(out, "UpdateItem", &e, "<m:Items/>"),
        }
    }
    close(out, "UpdateItem");
}

fn update_one(
    ctx: &mut Ctx<'_>,
    id: &str,
    change: Node<'_>,
    disposition: Option<Disposition>,
    saved_to: Option<Node<'_>>,
) -> Result<String, StoreError> {
    let (m, key) = ctx.find_item(id)?;
    let updates = change.child(Ns::Types, "Updates");
    ctx.store.update(m, key, |item| {
        for update in updates.into_iter().flat_map(|u| u.children()) {
            let values = update.children().find(|c| parse::new_item(*c).is_some());
            match update.name() {
                "SetItemField" | "AppendToItemField" => {
                    if let Some(values) = values {
                        parse::apply_fields(item, values, update.name() == "AppendToItemField");
                    }
                }
                "DeleteItemField" => {
                    let uri = update
                        .children()
                        .find_map(|c| c.attr("FieldURI"))
                        .unwrap_or_default();
                    let index = update.children().find_map(|c| c.attr("FieldIndex"));
                    let extended = update
                        .child(Ns::Types, "ExtendedFieldURI")
                        .map(parse::prop_key);
                    parse::delete_field(item, uri, index, extended);
                }
                _ => {}
            }
        }
    })?;
    match disposition {
        Some(Disposition::SendOnly) => {
            let draft = ctx.store.remove(m, key)?;
            ctx.store.send(m, draft, None)?;
            Ok("<m:Items/>".into())
        }
        Some(Disposition::SendAndSaveCopy) => {
            let (_, folder) = target_folder(ctx, saved_to, "sentitems")?;
            let draft = ctx.store.remove(m, key)?;
            ctx.store.send(m, draft, Some(folder))?;
            Ok("<m:Items/>".into())
        }
        _ => Ok(id_only(ctx.store.item(m, key))),
    }
}

pub fn move_or_copy(ctx: &mut Ctx<'_>, op: Node<'_>, out: &mut String, copy: bool) {
    let name = if copy { "CopyItem" } else { "MoveItem" };
    let return_ids = op
        .child(Ns::Messages, "ReturnNewItemIds")
        .is_none_or(|n| n.text() != "false");
    let destination = target_folder(ctx, op.child(Ns::Messages, "ToFolderId"), "inbox");
    let ids = parse::item_ids(op.child(Ns::Messages, "ItemIds"));
    open(out, name);
    for id in ids {
        let result = destination.clone().and_then(|(to_mailbox, to)| {
            let (m, key) = ctx.find_item(&id)?;
            if m != to_mailbox {
                // Across mailboxes Exchange copies and returns no id.
                let item = ctx.store.item(m, key).clone();
                ctx.store.insert(to_mailbox, NewItem { item, folder: to })?;
                if !copy {
                    ctx.store.remove(m, key)?;
                }
                return Ok(None);
            }
            let new_key = if copy {
                ctx.store.copy_item(m, key, to)?
            } else {
                ctx.store.move_item(m, key, to)?
            };
            Ok(Some((m, new_key)))
        });
        match result {
            Ok(Some((m, key))) if return_ids => {
                success(out, name, &id_only(ctx.store.item(m, key)))
            }
            Ok(_) => success(out, name, "<m:Items/>"),
            Err(e) => store_error(out, name, &e, "<m:Items/>"),
        }
    }
    close(out, name);
}

/// Hard deletes remove the item; soft deletes move it to Recoverable Items; MoveToDeletedItems
/// to Deleted Items (from there, a soft delete).
pub fn delete_item(ctx: &mut Ctx<'_>, op: Node<'_>, out: &mut String) {
    let delete_type = op.attr("DeleteType").unwrap_or("HardDelete");
    let ids = parse::item_ids(op.child(Ns::Messages, "ItemIds"));
    open(out, "DeleteItem");
    for id in ids {
        let result = ctx.find_item(&id).and_then(|(m, key)| {
            let deleted = ctx.distinguished(m, "deleteditems")?;
            let recoverable = ctx.distinguished(m, "recoverableitemsdeletions")?;
            let folder = ctx.store.item(m, key).folder;
            let to = match delete_type {
                "MoveToDeletedItems" if folder != deleted => Some(deleted),
                "SoftDelete" | "MoveToDeletedItems" if folder != recoverable => Some(recoverable),
                _ => None,
            };
            match to {
                Some(to) => ctx.store.move_item(m, key, to).map(|_| ()),
                None => ctx.store.remove(m, key).map(|_| ()),
            }
        });
        match result {
            Ok(()) => success(out, "DeleteItem", ""),
            Err(e) => store_error(out, "DeleteItem", &e, ""),
        }
    }
    close(out, "DeleteItem");
}

/// Rows for a shape outside FindItem (sync changes), kept here beside the row writer.
pub fn sync_row(out: &mut String, ctx: &Ctx<'_>, m: u16, key: u64, shape: &Shape, tag: &str) {
    let mailbox = ctx.store.mailbox(m);
    let _ = write!(out, "<t:{tag}>");
    render::item(out, mailbox, &mailbox.items[&key], shape, Context::FindItem);
    let _ = write!(out, "</t:{tag}>");
}
