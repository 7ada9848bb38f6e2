//! Reading what an EWS request asks for: shapes, folder and item ids, new items (plain, MIME or
//! response objects) and the field updates of UpdateItem, found by namespace and local name
//! whatever the prefixes.

use base64::Engine as _;

use super::render::{BaseShape, Shape};
use crate::common::time::timestamp_seconds;
use crate::inspect::xml::{Node, Ns};
use crate::simulate::mailbox::{Addr, ExtendedProperty, Item, Kind, PropKey};

/// A folder reference as the request wrote it.
#[derive(Debug, Clone)]
pub enum FolderRef {
    Id(String),
    Distinguished {
        name: String,
        mailbox: Option<String>,
    },
}

pub fn folder_refs(parent: Option<Node<'_>>) -> Vec<FolderRef> {
    let Some(parent) = parent else {
        return Vec::new();
    };
    parent.children().filter_map(folder_ref).collect()
}

pub fn folder_ref(node: Node<'_>) -> Option<FolderRef> {
    if node.is(Ns::Types, "FolderId") {
        return node.attr("Id").map(|id| FolderRef::Id(id.to_owned()));
    }
    if node.is(Ns::Types, "DistinguishedFolderId") {
        let mailbox = node
            .path(&["Mailbox", "EmailAddress"])
            .map(|n| n.text().into_owned())
            .filter(|s| !s.is_empty());
        return node.attr("Id").map(|name| FolderRef::Distinguished {
            name: name.to_owned(),
            mailbox,
        });
    }
    None
}

/// Every `ItemId` (and the ids of occurrences and masters) under `parent`, in order.
pub fn item_ids(parent: Option<Node<'_>>) -> Vec<String> {
    let Some(parent) = parent else {
        return Vec::new();
    };
    parent
        .children()
        .filter(|c| {
            c.is(Ns::Types, "ItemId")
                || c.is(Ns::Types, "RecurringMasterItemId")
                || c.is(Ns::Types, "OccurrenceItemId")
        })
        .map(|c| {
            c.attr("Id")
                .or_else(|| c.attr("OccurrenceId"))
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

pub fn shape(node: Option<Node<'_>>) -> Shape {
    let mut shape = Shape::default();
    let Some(node) = node else {
        return shape;
    };
    shape.base = match node.child_text("BaseShape").as_deref() {
        Some("Default") => BaseShape::Default,
        Some("AllProperties") => BaseShape::AllProperties,
        _ => BaseShape::IdOnly,
    };
    shape.html = match node.child_text("BodyType").as_deref() {
        Some("HTML") => Some(true),
        Some("Text") => Some(false),
        _ => None,
    };
    shape.mime = node.child_text("IncludeMimeContent").as_deref() == Some("true");
    if let Some(props) = node.child(Ns::Types, "AdditionalProperties") {
        for p in props.children() {
            if p.is(Ns::Types, "FieldURI") || p.is(Ns::Types, "IndexedFieldURI") {
                if let Some(uri) = p.attr("FieldURI") {
                    shape.fields.push(uri.to_owned());
                }
            } else if p.is(Ns::Types, "ExtendedFieldURI") {
                shape.extended.push(prop_key(p));
            }
        }
    }
    shape
}

/// The key of an `ExtendedFieldURI`; tags are compared as numbers, sets as lower-case GUIDs.
pub fn prop_key(node: Node<'_>) -> PropKey {
    let tag = node.attr("PropertyTag").map(|t| {
        let t = t.trim();
        let value = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => t.parse::<u32>().ok(),
        };
        value.map_or_else(|| t.to_owned(), |v| format!("0x{v:x}"))
    });
    PropKey {
        set: node
            .attr("PropertySetId")
            .map(str::to_ascii_lowercase)
            .or_else(|| node.attr("DistinguishedPropertySetId").map(str::to_owned)),
        tag,
        name: node.attr("PropertyName").map(str::to_owned),
        id: node.attr("PropertyId").map(str::to_owned),
    }
}

fn addresses(node: Option<Node<'_>>) -> Vec<Addr> {
    let Some(node) = node else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in node.children() {
        let mailbox = if m.is(Ns::Types, "Attendee") {
            m.child(Ns::Types, "Mailbox")
        } else {
            Some(m)
        };
        if let Some(a) = mailbox.and_then(address) {
            out.push(a);
        }
    }
    out
}

fn address(mailbox: Node<'_>) -> Option<Addr> {
    let address = mailbox.child_text("EmailAddress")?;
    Some(Addr {
        name: mailbox.child_text("Name"),
        address,
    })
}

fn single_address(node: Option<Node<'_>>) -> Option<Addr> {
    node.and_then(|n| n.child(Ns::Types, "Mailbox"))
        .and_then(address)
}

fn time(node: &Node<'_>, name: &str) -> Option<i64> {
    node.child_text(name).and_then(|t| timestamp_seconds(&t))
}

/// A new item from a `t:Message`, `t:CalendarItem`, `t:Contact` or `t:Task` element (or any
/// item element, kept as a message); `None` for elements that are not items.
pub fn new_item(node: Node<'_>) -> Option<Item> {
    let kind = match node.name() {
        "Message" | "Item" | "MeetingRequest" | "MeetingResponse" => Kind::Message,
        "CalendarItem" => Kind::CalendarItem,
        "Contact" => Kind::Contact,
        "Task" => Kind::Task,
        _ => return None,
    };
    let mut item = Item {
        kind: Some(kind),
        ..Item::default()
    };
    if let Some(mime) = node.child_text("MimeContent") {
        apply_mime(&mut item, &mime);
    }
    apply_fields(&mut item, node, false);
    Some(item)
}

/// Reads an RFC 822 message given as base64 `MimeContent`.
fn apply_mime(item: &mut Item, base64_text: &str) {
    let cleaned: String = base64_text.split_whitespace().collect();
    if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(cleaned) {
        *item = Item {
            kind: item.kind,
            ..Item::from_mime(&raw)
        };
    }
}

/// Writes the fields present under `node` into `item`. With `append`, lists grow instead of
/// being replaced (UpdateItem's AppendToItemField).
pub fn apply_fields(item: &mut Item, node: Node<'_>, append: bool) {
    for child in node.children() {
        let name = child.name();
        let text = || child.text().into_owned();
        let extend = |list: &mut Vec<Addr>, new: Vec<Addr>| {
            if append {
                list.extend(new)
            } else {
                *list = new
            }
        };
        match name {
            "ItemClass" => item.item_class = text(),
            "Subject" => item.subject = text(),
            "Body" => {
                item.body_html = child.attr("BodyType") == Some("HTML");
                if append {
                    item.body.push_str(&text());
                } else {
                    item.body = text();
                }
            }
            "Categories" => {
                let list: Vec<String> = child
                    .children()
                    .map(|s| s.text().into_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
                if append {
                    for c in list {
                        if !item.categories.contains(&c) {
                            item.categories.push(c);
                        }
                    }
                } else {
                    item.categories = list;
                }
            }
            "Importance" => item.importance = Some(text()),
            "InReplyTo" => item.in_reply_to = Some(text()),
            "References" => item.references = Some(text()),
            "InternetMessageId" => item.message_id = Some(text()),
            "IsRead" => item.is_read = text() == "true",
            "ToRecipients" | "RequiredAttendees" => extend(&mut item.to, addresses(Some(child))),
            "CcRecipients" | "OptionalAttendees" => extend(&mut item.cc, addresses(Some(child))),
            "BccRecipients" => extend(&mut item.bcc, addresses(Some(child))),
            "From" | "Sender" | "Organizer" => item.from = single_address(Some(child)),
            "ExtendedProperty" => set_extended(item, child),
            "Start" => item.start = time(&node, "Start"),
            "End" => item.end = time(&node, "End"),
            "Location" => item.location = Some(text()),
            "GivenName" => item.given_name = Some(text()),
            "Surname" => item.surname = Some(text()),
            "CompanyName" => item.company = Some(text()),
            "DisplayName" | "FileAs" if item.kind() == Kind::Contact => item.subject = text(),
            "EmailAddresses" => {
                item.emails = child
                    .children()
                    .map(|e| e.text().into_owned())
                    .filter(|e| !e.is_empty())
                    .collect()
            }
            "DueDate" => item.due = time(&node, "DueDate"),
            "Status" => item.status = Some(text()),
            "PhoneNumbers" | "PhysicalAddresses" => set_entries(item, child),
            other if KEPT_AS_WRITTEN.contains(&other) => {
                item.extra.insert(other.to_owned(), text());
            }
            _ => {}
        }
    }
    if item.kind() == Kind::Contact && item.subject.is_empty() {
        item.subject = [item.given_name.as_deref(), item.surname.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
    }
}

/// Simple fields the store keeps as written, by element name.
pub const KEPT_AS_WRITTEN: &[&str] = &[
    "IsAllDayEvent",
    "LegacyFreeBusyStatus",
    "MiddleName",
    "Nickname",
    "AssistantName",
    "BusinessHomePage",
    "Department",
    "JobTitle",
    "SpouseName",
    "CompleteDate",
    "PercentComplete",
    "StartDate",
];

/// Indexed entries (`<t:Entry Key="BusinessPhone">…`), merged: an update names the entries it
/// sets, the others stay.
fn set_entries(item: &mut Item, node: Node<'_>) {
    let list = node.name();
    for entry in node.children() {
        let Some(key) = entry.attr("Key") else {
            continue;
        };
        let parts: Vec<Node<'_>> = entry.children().collect();
        if parts.is_empty() {
            item.extra
                .insert(format!("{list}/{key}"), entry.text().into_owned());
        }
        for part in parts {
            item.extra.insert(
                format!("{list}/{key}/{}", part.name()),
                part.text().into_owned(),
            );
        }
    }
}

fn set_extended(item: &mut Item, node: Node<'_>) {
    let Some(uri) = node.child(Ns::Types, "ExtendedFieldURI") else {
        return;
    };
    let key = prop_key(uri);
    let value = match node.child(Ns::Types, "Values") {
        Some(values) => values
            .children()
            .map(|v| v.text().into_owned())
            .collect::<Vec<_>>()
            .join("\n"),
        None => node.child_text("Value").unwrap_or_default(),
    };
    let property_type = uri.attr("PropertyType").unwrap_or("String").to_owned();
    item.extended.retain(|p| p.key != key);
    item.extended.push(ExtendedProperty {
        key,
        property_type,
        value,
    });
}

/// Removes the field a `DeleteItemField` names (`index`: an `IndexedFieldURI`'s `FieldIndex`).
pub fn delete_field(item: &mut Item, uri: &str, index: Option<&str>, extended: Option<PropKey>) {
    if let Some(key) = extended {
        item.extended.retain(|p| p.key != key);
        return;
    }
    let name = uri.rsplit(':').next().unwrap_or(uri);
    let indexed = match (uri, index) {
        ("contacts:PhoneNumber", Some(key)) => Some(format!("PhoneNumbers/{key}")),
        (u, Some(key)) if u.starts_with("contacts:PhysicalAddress:") => {
            Some(format!("PhysicalAddresses/{key}/{name}"))
        }
        _ => None,
    };
    if let Some(key) = indexed {
        item.extra.remove(&key);
        return;
    }
    if KEPT_AS_WRITTEN.contains(&name) {
        item.extra.remove(name);
        return;
    }
    match uri {
        "item:Categories" => item.categories.clear(),
        "item:Body" => item.body.clear(),
        "item:Importance" => item.importance = None,
        "message:ToRecipients" => item.to.clear(),
        "message:CcRecipients" => item.cc.clear(),
        "message:BccRecipients" => item.bcc.clear(),
        "calendar:Location" => item.location = None,
        "calendar:OptionalAttendees" => item.cc.clear(),
        "calendar:RequiredAttendees" => item.to.clear(),
        "contacts:GivenName" => item.given_name = None,
        "contacts:Surname" => item.surname = None,
        "contacts:CompanyName" => item.company = None,
        "task:DueDate" => item.due = None,
        _ => {}
    }
}

/// A message with the fields a response object (reply, forward) sets itself.
pub fn new_item_fields(node: Node<'_>) -> Item {
    let mut item = Item {
        kind: Some(Kind::Message),
        ..Item::default()
    };
    apply_fields(&mut item, node, false);
    item
}
