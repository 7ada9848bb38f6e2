//! The fields of each item kind, and the small readers the operations share: folder and
//! item ids, sends and saved copies, notifications, category updates, folders.

use std::sync::Arc;

use super::super::model::{
    Address, Appointment, CategoryMode, Change, Contact, Message, Observation, Origin, Task,
    Transfer, item_class,
};
use super::super::pack::{self, MessagePacker, PageFolder, Role};
use super::super::xml::{Node, Ns};
use super::MESSAGE_ITEMS;
use crate::common::shared::{Piece, SharedStr};
use crate::common::time::normalize_timestamp;

/// The `Create` and `Update` entries of a sync response's `Changes` (deletes and read-flag
/// changes carry nothing to observe).
pub(super) fn created_or_updated<'t>(result: Node<'t>) -> impl Iterator<Item = Node<'t>> {
    result
        .child(Ns::Messages, "Changes")
        .into_iter()
        .flat_map(|c| c.children())
        .filter(|c| c.name() == "Create" || c.name() == "Update")
}

/// Every item element of a container.
pub(super) fn all_items<'t>(container: Option<Node<'t>>) -> impl Iterator<Item = Node<'t>> {
    container.into_iter().flat_map(|c| c.children())
}

/// The observation for any item kind; `None` for kinds nothing tracks.
pub(super) fn any_item(
    origin: &Origin,
    item: Node<'_>,
    folder: Option<&PageFolder>,
    initial_sync: bool,
    change: Change,
) -> Option<Observation> {
    if MESSAGE_ITEMS.contains(&item.name()) {
        return Some(seen(origin, item, folder, initial_sync));
    }
    item_of_kind(origin, item.name(), &[item], change)
}

/// A contact, appointment or task observation from one or more elements of that kind (an
/// update spreads its fields over several).
pub(super) fn item_of_kind(
    origin: &Origin,
    kind: &str,
    parts: &[Node<'_>],
    change: Change,
) -> Option<Observation> {
    let origin = origin.clone();
    Some(match kind {
        "Contact" => Observation::ContactSeen {
            origin,
            change,
            contact: contact_fields(parts),
        },
        "CalendarItem" => Observation::AppointmentSeen {
            origin,
            change,
            appointment: appointment_fields(parts),
        },
        "Task" => Observation::TaskSeen {
            origin,
            change,
            task: task_fields(parts),
        },
        _ => return None,
    })
}

pub(super) fn set_item_id(o: &mut Observation, id: Option<&str>) {
    let Some(id) = id else { return };
    let slot = match o {
        Observation::ContactSeen { contact, .. } => &mut contact.item_id,
        Observation::AppointmentSeen { appointment, .. } => &mut appointment.item_id,
        Observation::TaskSeen { task, .. } => &mut task.item_id,
        _ => return,
    };
    *slot = Some(id.to_owned());
}

/// Fills what the XML left empty from the MIME headers.
pub(super) fn merge(m: &mut Message, mime: Message) {
    m.subject = m.subject.take().or(mime.subject);
    m.from = m.from.take().or(mime.from);
    m.sender = m.sender.take().or(mime.sender);
    m.internet_message_id = m.internet_message_id.take().or(mime.internet_message_id);
    m.in_reply_to = m.in_reply_to.take().or(mime.in_reply_to);
    m.references = m.references.take().or(mime.references);
    for (mine, theirs) in [
        (&mut m.to, mime.to),
        (&mut m.cc, mime.cc),
        (&mut m.bcc, mime.bcc),
    ] {
        if mine.is_empty() {
            *mine = theirs;
        }
    }
}

pub(super) fn contact_fields(parts: &[Node<'_>]) -> Contact {
    let mut c = Contact::default();
    let text = owned_text;
    for child in parts.iter().flat_map(|p| p.children()) {
        match child.name() {
            "ItemId" => c.item_id = child.attr("Id").map(str::to_owned),
            "DisplayName" => c.display_name = text(child),
            "GivenName" => c.given_name = text(child),
            "Surname" => c.surname = text(child),
            "CompanyName" => c.company_name = text(child),
            "JobTitle" => c.job_title = text(child),
            "EmailAddresses" => c.email_addresses = child.all("Entry").filter_map(text).collect(),
            "PhoneNumbers" => {
                for entry in child.all("Entry") {
                    match entry.attr("Key") {
                        Some("BusinessPhone") => c.business_phone = text(entry),
                        Some("MobilePhone") => c.mobile_phone = text(entry),
                        _ => {}
                    }
                }
            }
            "Categories" => c.categories = child.all("String").filter_map(text).collect(),
            _ => {}
        }
    }
    c
}

pub(super) fn appointment_fields(parts: &[Node<'_>]) -> Appointment {
    let mut a = Appointment::default();
    let text = owned_text;
    let attendees = |n: Node<'_>| {
        n.all("Attendee")
            .filter_map(|att| att.child(Ns::Types, "Mailbox"))
            .map(address)
            .collect::<Vec<_>>()
    };
    for child in parts.iter().flat_map(|p| p.children()) {
        match child.name() {
            "ItemId" => a.item_id = child.attr("Id").map(str::to_owned),
            "Subject" => a.subject = text(child),
            "Start" => a.start = text(child).map(|t| normalize_timestamp(&t)),
            "End" => a.end = text(child).map(|t| normalize_timestamp(&t)),
            "Location" => a.location = text(child),
            "Organizer" => a.organizer = child.child(Ns::Types, "Mailbox").map(address),
            "RequiredAttendees" => a.required_attendees = attendees(child),
            "OptionalAttendees" => a.optional_attendees = attendees(child),
            "Categories" => a.categories = child.all("String").filter_map(text).collect(),
            _ => {}
        }
    }
    a
}

pub(super) fn task_fields(parts: &[Node<'_>]) -> Task {
    let mut t = Task::default();
    let text = owned_text;
    for child in parts.iter().flat_map(|p| p.children()) {
        match child.name() {
            "ItemId" => t.item_id = child.attr("Id").map(str::to_owned),
            "Subject" => t.subject = text(child),
            "DueDate" => t.due_date = text(child).map(|v| normalize_timestamp(&v)),
            "Status" => t.status = text(child),
            "PercentComplete" => t.percent_complete = text(child),
            "Categories" => t.categories = child.all("String").filter_map(text).collect(),
            _ => {}
        }
    }
    t
}

/// Pull notifications: new mail carries the item and folder ids; moves and copies carry old
/// and new ids.
pub(super) fn events(origin: &Origin, notification: Node<'_>, out: &mut Vec<Observation>) {
    let id = |n: Node<'_>, name: &str| {
        n.child(Ns::Types, name)
            .and_then(|c| c.attr("Id"))
            .map(str::to_owned)
    };
    for event in notification.children() {
        match event.name() {
            "NewMailEvent" => {
                if let Some(item_id) = id(event, "ItemId") {
                    out.push(Observation::MessageSeen {
                        origin: origin.clone(),
                        message: Arc::new(Message {
                            item_id: Some(item_id.into()),
                            folder_id: id(event, "ParentFolderId").map(SharedStr::from),
                            ..Message::default()
                        }),
                        initial_sync: false,
                    });
                }
            }
            kind @ ("MovedEvent" | "CopiedEvent") => {
                let (Some(new), Some(old)) = (id(event, "ItemId"), id(event, "OldItemId")) else {
                    continue;
                };
                let transfer = Transfer {
                    item_ids: vec![old],
                    new_item_ids: vec![Some(new)],
                    destination_folder_id: id(event, "ParentFolderId"),
                    destination_folder: None,
                };
                out.push(Observation::transfer(
                    origin.clone(),
                    kind == "MovedEvent",
                    transfer,
                ));
            }
            _ => {}
        }
    }
}

pub(super) fn sends(disposition: Option<&str>) -> bool {
    matches!(disposition, Some("SendOnly" | "SendAndSaveCopy"))
}

pub(super) fn saved_folder(request: Node<'_>) -> Option<String> {
    let (id, name) = folder_ref(request.child(Ns::Messages, "SavedItemFolderId"));
    name.or(id)
}

/// (folder id, distinguished name) of a `FolderId` / `DistinguishedFolderId`, or of the first
/// one inside a container such as `ToFolderId`.
pub(super) fn folder_ref(node: Option<Node<'_>>) -> (Option<String>, Option<String>) {
    let Some(node) = node else {
        return (None, None);
    };
    let target = if node.name() == "FolderId" || node.name() == "DistinguishedFolderId" {
        node
    } else {
        match node.children().next() {
            Some(c) => c,
            None => return (None, None),
        }
    };
    let id = target.attr("Id").map(str::to_owned);
    match target.name() {
        "DistinguishedFolderId" => (None, id.map(|s| s.to_ascii_lowercase())),
        _ => (id, None),
    }
}

pub(super) fn first_folder(container: Option<Node<'_>>) -> Option<PageFolder> {
    let (id, name) = folder_ref(container);
    (id.is_some() || name.is_some()).then(|| PageFolder {
        id: id.map(SharedStr::from),
        name: name.map(SharedStr::from),
    })
}

pub(super) fn item_ids(container: Option<Node<'_>>) -> Vec<String> {
    container
        .into_iter()
        .flat_map(|c| c.children())
        .filter_map(|n| n.attr("Id").map(str::to_owned))
        .collect()
}

pub(super) fn seen(
    origin: &Origin,
    item: Node<'_>,
    folder: Option<&PageFolder>,
    initial_sync: bool,
) -> Observation {
    Observation::MessageSeen {
        origin: origin.clone(),
        message: message_fields(item, folder),
        initial_sync,
    }
}

/// One pass over the item's children (the item elements are flat, and a lookup per field
/// would scan them twenty times), each field's text packed with the others into one block.
pub(super) fn message_fields(item: Node<'_>, folder: Option<&PageFolder>) -> Arc<Message> {
    pack::message(folder, |p| {
        for child in item.children() {
            if child.ns().is_ews() {
                message_field(p, child);
            }
        }
    })
}

fn message_field(p: &mut MessagePacker, child: Node<'_>) {
    let text = |p: &mut MessagePacker| p.text_with(|out| child.push_text(out));
    let id = |p: &mut MessagePacker| p.maybe_text(child.attr("Id"));
    let message_id = |p: &mut MessagePacker| p.message_id_with(|out| child.push_text(out));
    let timestamp = |p: &mut MessagePacker| p.timestamp(&child.text());
    let mailboxes = |p: &mut MessagePacker, role: Role| {
        for mailbox in child.all("Mailbox") {
            packed_address(p, role, mailbox);
        }
    };
    let one_mailbox = |p: &mut MessagePacker, role: Role| {
        if let Some(mailbox) = child.child(Ns::Types, "Mailbox") {
            packed_address(p, role, mailbox);
        }
    };
    match child.name() {
        "ItemId" => p.fields.item_id = id(p),
        "ParentFolderId" => p.fields.folder_id = id(p),
        "InternetMessageId" => p.fields.internet_message_id = message_id(p),
        "ConversationId" => p.fields.conversation_id = id(p),
        "ConversationIndex" => p.fields.conversation_index = text(p),
        "InReplyTo" => p.fields.in_reply_to = message_id(p),
        "References" => p.fields.references = text(p),
        "Subject" => p.fields.subject = text(p),
        "From" => one_mailbox(p, Role::From),
        "Sender" => one_mailbox(p, Role::Sender),
        "ToRecipients" => mailboxes(p, Role::To),
        "CcRecipients" => mailboxes(p, Role::Cc),
        "BccRecipients" => mailboxes(p, Role::Bcc),
        "DateTimeReceived" => p.fields.received_at = timestamp(p),
        "DateTimeSent" => p.fields.sent_at = timestamp(p),
        "Categories" => {
            p.fields.categories = child.all("String").map(|s| s.text().into_owned()).collect()
        }
        "ItemClass" => {
            let class = child.text();
            p.fields.item_class = (!class.is_empty()).then(|| item_class(&class));
        }
        "IsDraft" => p.fields.is_draft = Some(child.text().eq_ignore_ascii_case("true")),
        _ => {}
    }
}

/// An element's text, `None` when empty (checked before anything is copied).
fn owned_text(node: Node<'_>) -> Option<String> {
    let text = node.text();
    (!text.is_empty()).then(|| text.into_owned())
}

/// The name, address and routing type elements of a `Mailbox`.
fn mailbox_parts<'t>(mailbox: Node<'t>) -> [Option<Node<'t>>; 3] {
    let mut parts = [None; 3];
    for c in mailbox.children() {
        let slot = match c.name() {
            "Name" => 0,
            "EmailAddress" => 1,
            "RoutingType" => 2,
            _ => continue,
        };
        parts[slot] = Some(c);
    }
    parts
}

fn routing_type(node: Option<Node<'_>>) -> Option<std::borrow::Cow<'static, str>> {
    let text = node?.text();
    (!text.is_empty()).then(|| Address::routing_type(&text))
}

/// A mailbox of a message, its text packed with the message's.
fn packed_address(p: &mut MessagePacker, role: Role, mailbox: Node<'_>) {
    let [name, address, routing] = mailbox_parts(mailbox);
    let mut text = |node: Option<Node<'_>>| match node {
        Some(node) => p.text_with(|out| node.push_text(out)),
        None => Piece::default(),
    };
    let (name, address) = (text(name), text(address));
    p.address(role, name, address, routing_type(routing));
}

/// A mailbox with text of its own (an appointment's organizer and attendees).
pub(super) fn address(mailbox: Node<'_>) -> Address {
    let [name, address, routing] = mailbox_parts(mailbox);
    let text = |node: Option<Node<'_>>| {
        let text = node?.text();
        (!text.is_empty()).then(|| SharedStr::from(&*text))
    };
    Address {
        name: text(name),
        address: text(address),
        routing_type: routing_type(routing),
    }
}

pub(super) fn category_update(change: Node<'_>) -> Option<(CategoryMode, Vec<String>)> {
    let updates = change.child(Ns::Types, "Updates")?;
    for update in updates.children() {
        let mode = match update.name() {
            "SetItemField" => CategoryMode::Set,
            "AppendToItemField" => CategoryMode::Append,
            "DeleteItemField" => CategoryMode::Delete,
            _ => continue,
        };
        let is_categories = update
            .child(Ns::Types, "FieldURI")
            .and_then(|f| f.attr("FieldURI"))
            .is_some_and(|f| f.eq_ignore_ascii_case("item:Categories"));
        if !is_categories {
            continue;
        }
        let categories = update
            .children()
            .find(|c| c.name() != "FieldURI")
            .and_then(|item| item.child(Ns::Types, "Categories"))
            .map(|c| c.all("String").map(|s| s.text().into_owned()).collect())
            .unwrap_or_default();
        return Some((mode, categories));
    }
    None
}

pub(super) fn folder_seen(
    origin: &Origin,
    folder: Node<'_>,
    name: Option<String>,
) -> Option<Observation> {
    let folder_id = folder.child(Ns::Types, "FolderId")?.attr("Id")?.to_owned();
    Some(Observation::FolderSeen {
        origin: origin.clone(),
        folder_id,
        folder: name,
        display_name: folder.child_text("DisplayName"),
        parent_folder_id: folder
            .child(Ns::Types, "ParentFolderId")
            .and_then(|p| p.attr("Id"))
            .map(str::to_owned),
    })
}
