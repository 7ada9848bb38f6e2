//! The fields of each item kind, and the small readers the operations share: folder and
//! item ids, sends and saved copies, notifications, category updates, folders.

use std::sync::Arc;

use super::super::model::{
    Address, Appointment, CategoryMode, Change, Contact, Message, Observation, Origin, Task,
    Transfer, item_class,
};
use super::super::xml::{Node, Ns};
use super::MESSAGE_ITEMS;
use crate::common::text::normalize_message_id;
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
    folder: Option<(Option<String>, Option<String>)>,
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
                            folder_id: id(event, "ParentFolderId"),
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

pub(super) fn first_folder(
    container: Option<Node<'_>>,
) -> Option<(Option<String>, Option<String>)> {
    let r = folder_ref(container);
    (r.0.is_some() || r.1.is_some()).then_some(r)
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
    folder: Option<(Option<String>, Option<String>)>,
    initial_sync: bool,
) -> Observation {
    let mut message = message_fields(item);
    if let Some((id, name)) = folder {
        if message.folder_id.is_none() {
            message.folder_id = id;
        }
        message.folder = name;
    }
    Observation::MessageSeen {
        origin: origin.clone(),
        message: message.into(),
        initial_sync,
    }
}

/// One pass over the item's children (the item elements are flat, and a lookup per field
/// would scan them twenty times).
pub(super) fn message_fields(item: Node<'_>) -> Message {
    let mut m = Message::default();
    let text = owned_text;
    let id = |n: Node<'_>| n.attr("Id").map(str::to_owned);
    // Escaped text (a Message-ID's `&lt;…&gt;`, a subject's `&amp;`) is decoded here, then
    // copied once into what the message keeps.
    let mut scratch = String::new();
    let mailboxes = |n: Node<'_>| n.all("Mailbox").map(address).collect::<Vec<_>>();
    for child in item.children() {
        if !child.ns().is_ews() {
            continue;
        }
        match child.name() {
            "ItemId" => m.item_id = child.attr("Id").map(Arc::from),
            "ParentFolderId" => m.folder_id = id(child),
            "InternetMessageId" => {
                m.internet_message_id =
                    normalize_message_id(child.text_in(&mut scratch)).map(Arc::from)
            }
            "ConversationId" => m.conversation_id = id(child),
            "ConversationIndex" => m.conversation_index = text(child),
            "InReplyTo" => {
                m.in_reply_to = normalize_message_id(child.text_in(&mut scratch)).map(str::to_owned)
            }
            "References" => m.references = text(child),
            "Subject" => m.subject = shared_text(child.text_in(&mut scratch)),
            "From" => m.from = child.child(Ns::Types, "Mailbox").map(address),
            "Sender" => m.sender = child.child(Ns::Types, "Mailbox").map(address),
            "ToRecipients" => m.to = mailboxes(child),
            "CcRecipients" => m.cc = mailboxes(child),
            "BccRecipients" => m.bcc = mailboxes(child),
            "DateTimeReceived" => m.received_at = timestamp(child),
            "DateTimeSent" => m.sent_at = timestamp(child),
            "Categories" => {
                m.categories = child.all("String").map(|s| s.text().into_owned()).collect()
            }
            "ItemClass" => {
                let class = child.text();
                m.item_class = (!class.is_empty()).then(|| item_class(&class));
            }
            "IsDraft" => m.is_draft = Some(child.text().eq_ignore_ascii_case("true")),
            _ => {}
        }
    }
    m
}

/// An element's text, `None` when empty (checked before anything is copied).
fn owned_text(node: Node<'_>) -> Option<String> {
    let text = node.text();
    (!text.is_empty()).then(|| text.into_owned())
}

/// Text shared with what is decided from it, `None` when empty.
fn shared_text(text: &str) -> Option<Arc<str>> {
    (!text.is_empty()).then(|| Arc::from(text))
}

/// An element's text as a UTC timestamp, `None` when empty.
fn timestamp(node: Node<'_>) -> Option<String> {
    let text = node.text();
    (!text.is_empty()).then(|| normalize_timestamp(&text))
}

pub(super) fn address(mailbox: Node<'_>) -> Address {
    let mut a = Address::default();
    for c in mailbox.children() {
        match c.name() {
            "Name" => a.name = shared_text(&c.text()),
            "EmailAddress" => a.address = shared_text(&c.text()),
            "RoutingType" => {
                let text = c.text();
                a.routing_type = (!text.is_empty()).then(|| Address::routing_type(&text));
            }
            _ => {}
        }
    }
    a
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
