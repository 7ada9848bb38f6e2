//! EWS SOAP exchanges into observations. The operation is the first element child of
//! `soap:Body`; per-item results count only with `ResponseClass="Success"`, matched to the
//! request by position; faults and per-item errors yield no observation and are reported by
//! response code.

use super::model::{
    Address, Appointment, CategoryMode, Change, Contact, Message, Observation, Origin, Source,
    Task, Transfer,
};
use super::xml::{Node, Ns, Tree};
use crate::common::text::normalize_message_id;
use crate::common::time::normalize_timestamp;

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

/// Inspects one exchange. `request` is needed for sends, moves, category changes and folder
/// names; `response` for everything Exchange confirmed.
///
/// Long on purpose for now: one match arm per EWS operation over the parsed tree, each a few
/// lines. The streaming extractor of issue 16 replaces this function whole, so it is not cut
/// into pieces that would be thrown away with it.
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
    let origin = Origin {
        mailbox,
        source: Source::Ews,
        operation: operation.clone(),
    };
    let req = req_op;
    match operation.as_str() {
        "GetItem" => {
            for r in successes(&results, &ok) {
                for item in all_items(r.child(Ns::Messages, "Items")) {
                    out.observations
                        .extend(any_item(&origin, item, None, false, Change::Seen));
                }
            }
        }
        "GetEvents" => {
            for r in successes(&results, &ok) {
                if let Some(notification) = r.child(Ns::Messages, "Notification") {
                    events(&origin, notification, &mut out.observations);
                }
            }
        }
        "FindItem" => {
            let folder = req.and_then(|r| first_folder(r.child(Ns::Messages, "ParentFolderIds")));
            for r in successes(&results, &ok) {
                for item in all_items(r.path(&["RootFolder", "Items"])) {
                    out.observations.extend(any_item(
                        &origin,
                        item,
                        folder.clone(),
                        false,
                        Change::Seen,
                    ));
                }
            }
        }
        "SyncFolderItems" => {
            let folder = req.and_then(|r| first_folder(r.child(Ns::Messages, "SyncFolderId")));
            let initial = req.is_some_and(|r| r.child_text("SyncState").is_none());
            for r in successes(&results, &ok) {
                for change in created_or_updated(r) {
                    for item in all_items(Some(change)) {
                        out.observations.extend(any_item(
                            &origin,
                            item,
                            folder.clone(),
                            initial,
                            Change::Seen,
                        ));
                    }
                }
            }
        }
        "CreateItem" => {
            let Some(r) = req else { return out };
            let requested: Vec<Node<'_>> = r
                .child(Ns::Messages, "Items")
                .map(|i| i.children().collect())
                .unwrap_or_default();
            let send = sends(r.attr("MessageDisposition"));
            let saved = saved_folder(r);
            for (i, item) in requested.iter().enumerate() {
                if !ok.get(i).copied().unwrap_or(false) {
                    continue;
                }
                match item.name() {
                    "Contact" | "CalendarItem" | "Task" => {
                        // The new id is only in the response.
                        let new_id = results[i]
                            .child(Ns::Messages, "Items")
                            .and_then(|items| items.children().next())
                            .and_then(|n| n.child(Ns::Types, "ItemId"))
                            .and_then(|n| n.attr("Id"));
                        out.observations.extend(
                            any_item(&origin, *item, None, false, Change::Created).map(|mut o| {
                                set_item_id(&mut o, new_id);
                                o
                            }),
                        );
                    }
                    name if send => {
                        let via = if name == "Message" {
                            "CreateItem"
                        } else {
                            name
                        };
                        let mut message = message_fields(*item);
                        // A MIME send carries its fields in the MIME headers.
                        if let Some(mime) = item
                            .child(Ns::Types, "MimeContent")
                            .and_then(|m| super::mime::message_from_base64(&m.text()))
                        {
                            merge(&mut message, mime);
                        }
                        out.observations.push(Observation::MessageSent {
                            origin: origin.clone(),
                            via: via.to_owned(),
                            message,
                            draft_item_ids: Vec::new(),
                            reference_item_id: item
                                .child(Ns::Types, "ReferenceItemId")
                                .and_then(|n| n.attr("Id"))
                                .map(str::to_owned),
                            saved_to_folder: saved.clone(),
                        });
                    }
                    _ => {}
                }
            }
        }
        "SendItem" => {
            if let Some(r) = req {
                let saved = if r.attr("SaveItemToFolder") == Some("false") {
                    None
                } else {
                    saved_folder(r).or_else(|| Some("sentitems".to_owned()))
                };
                for (i, id) in item_ids(r.child(Ns::Messages, "ItemIds"))
                    .into_iter()
                    .enumerate()
                {
                    if ok.get(i).copied().unwrap_or(false) {
                        out.observations.push(Observation::MessageSent {
                            origin: origin.clone(),
                            via: "SendItem".into(),
                            message: Message::default(),
                            draft_item_ids: vec![id],
                            reference_item_id: None,
                            saved_to_folder: saved.clone(),
                        });
                    }
                }
            }
        }
        "UpdateItem" => {
            if let Some(r) = req {
                let changes: Vec<Node<'_>> = r
                    .child(Ns::Messages, "ItemChanges")
                    .map(|c| c.all("ItemChange").collect())
                    .unwrap_or_default();
                let send = sends(r.attr("MessageDisposition"));
                for (i, change) in changes.iter().enumerate() {
                    if !ok.get(i).copied().unwrap_or(false) {
                        continue;
                    }
                    let Some(id) = change.child(Ns::Types, "ItemId").and_then(|n| n.attr("Id"))
                    else {
                        continue;
                    };
                    // Each SetItemField carries one field inside an item element of its kind;
                    // together they describe one update.
                    let pieces: Vec<Node<'_>> = change
                        .child(Ns::Types, "Updates")
                        .into_iter()
                        .flat_map(|u| u.children())
                        .flat_map(|u| u.children())
                        .filter(|n| matches!(n.name(), "Contact" | "CalendarItem" | "Task"))
                        .collect();
                    if let Some(mut updated) = pieces.first().and_then(|first| {
                        let same_kind: Vec<Node<'_>> = pieces
                            .iter()
                            .copied()
                            .filter(|p| p.name() == first.name())
                            .collect();
                        item_of_kind(&origin, first.name(), &same_kind, Change::Updated)
                    }) {
                        set_item_id(&mut updated, Some(id));
                        out.observations.push(updated);
                    }
                    if let Some((mode, categories)) = category_update(*change) {
                        out.observations.push(Observation::CategoriesChanged {
                            origin: origin.clone(),
                            item_ids: vec![id.to_owned()],
                            mode,
                            categories,
                        });
                    }
                    if send {
                        out.observations.push(Observation::MessageSent {
                            origin: origin.clone(),
                            via: "UpdateItem".into(),
                            message: Message::default(),
                            draft_item_ids: vec![id.to_owned()],
                            reference_item_id: None,
                            saved_to_folder: saved_folder(r),
                        });
                    }
                }
            }
        }
        "MoveItem" | "CopyItem" => {
            if let Some(r) = req {
                let (destination_folder_id, destination_folder) =
                    folder_ref(r.child(Ns::Messages, "ToFolderId"));
                let mut transfer = Transfer {
                    destination_folder_id,
                    destination_folder,
                    ..Transfer::default()
                };
                for (i, id) in item_ids(r.child(Ns::Messages, "ItemIds"))
                    .into_iter()
                    .enumerate()
                {
                    if !ok.get(i).copied().unwrap_or(false) {
                        continue;
                    }
                    let new_id = results[i]
                        .child(Ns::Messages, "Items")
                        .and_then(|items| items.children().next())
                        .and_then(|item| item.child(Ns::Types, "ItemId"))
                        .and_then(|n| n.attr("Id"))
                        .map(str::to_owned);
                    transfer.item_ids.push(id);
                    transfer.new_item_ids.push(new_id);
                }
                if !transfer.item_ids.is_empty() {
                    out.observations.push(Observation::transfer(
                        origin.clone(),
                        operation == "MoveItem",
                        transfer,
                    ));
                }
            }
        }
        "DeleteItem" => {
            if let Some(r) = req.filter(|r| r.attr("DeleteType") == Some("MoveToDeletedItems")) {
                let mut transfer = Transfer {
                    destination_folder: Some("deleteditems".into()),
                    ..Transfer::default()
                };
                for (i, id) in item_ids(r.child(Ns::Messages, "ItemIds"))
                    .into_iter()
                    .enumerate()
                {
                    if ok.get(i).copied().unwrap_or(false) {
                        transfer.item_ids.push(id);
                        transfer.new_item_ids.push(None);
                    }
                }
                if !transfer.item_ids.is_empty() {
                    out.observations.push(Observation::MessageMoved {
                        origin: origin.clone(),
                        transfer,
                    });
                }
            }
        }
        "GetFolder" => {
            let asked: Vec<(Option<String>, Option<String>)> = req
                .and_then(|r| r.child(Ns::Messages, "FolderIds"))
                .map(|ids| ids.children().map(|n| folder_ref(Some(n))).collect())
                .unwrap_or_default();
            for (i, r) in results.iter().enumerate() {
                if !ok[i] {
                    continue;
                }
                let name = asked.get(i).and_then(|(_, name)| name.clone());
                for folder in r
                    .child(Ns::Messages, "Folders")
                    .into_iter()
                    .flat_map(|f| f.children())
                {
                    if let Some(o) = folder_seen(&origin, folder, name.clone()) {
                        out.observations.push(o);
                    }
                }
            }
        }
        "FindFolder" => {
            for r in successes(&results, &ok) {
                for folder in r
                    .path(&["RootFolder", "Folders"])
                    .into_iter()
                    .flat_map(|f| f.children())
                {
                    if let Some(o) = folder_seen(&origin, folder, None) {
                        out.observations.push(o);
                    }
                }
            }
        }
        "SyncFolderHierarchy" => {
            for r in successes(&results, &ok) {
                for change in created_or_updated(r) {
                    for folder in change.children() {
                        if let Some(o) = folder_seen(&origin, folder, None) {
                            out.observations.push(o);
                        }
                    }
                }
            }
        }
        _ => {}
    }
    out
}

fn successes<'t, 'a>(
    results: &'a [Node<'t>],
    ok: &'a [bool],
) -> impl Iterator<Item = Node<'t>> + 'a {
    results
        .iter()
        .zip(ok)
        .filter(|(_, ok)| **ok)
        .map(|(r, _)| *r)
}

/// The `Create` and `Update` entries of a sync response's `Changes` (deletes and read-flag
/// changes carry nothing to observe).
fn created_or_updated<'t>(result: Node<'t>) -> impl Iterator<Item = Node<'t>> {
    result
        .child(Ns::Messages, "Changes")
        .into_iter()
        .flat_map(|c| c.children())
        .filter(|c| c.name() == "Create" || c.name() == "Update")
}

/// Every item element of a container.
fn all_items<'t>(container: Option<Node<'t>>) -> impl Iterator<Item = Node<'t>> {
    container.into_iter().flat_map(|c| c.children())
}

/// The observation for any item kind; `None` for kinds nothing tracks.
fn any_item(
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
fn item_of_kind(
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

fn set_item_id(o: &mut Observation, id: Option<&str>) {
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
fn merge(m: &mut Message, mime: Message) {
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

fn contact_fields(parts: &[Node<'_>]) -> Contact {
    let mut c = Contact::default();
    let text = |n: Node<'_>| Some(n.text().into_owned()).filter(|t| !t.is_empty());
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

fn appointment_fields(parts: &[Node<'_>]) -> Appointment {
    let mut a = Appointment::default();
    let text = |n: Node<'_>| Some(n.text().into_owned()).filter(|t| !t.is_empty());
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

fn task_fields(parts: &[Node<'_>]) -> Task {
    let mut t = Task::default();
    let text = |n: Node<'_>| Some(n.text().into_owned()).filter(|t| !t.is_empty());
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
fn events(origin: &Origin, notification: Node<'_>, out: &mut Vec<Observation>) {
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
                        message: Message {
                            item_id: Some(item_id),
                            folder_id: id(event, "ParentFolderId"),
                            ..Message::default()
                        },
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

fn sends(disposition: Option<&str>) -> bool {
    matches!(disposition, Some("SendOnly" | "SendAndSaveCopy"))
}

fn saved_folder(request: Node<'_>) -> Option<String> {
    let (id, name) = folder_ref(request.child(Ns::Messages, "SavedItemFolderId"));
    name.or(id)
}

/// (folder id, distinguished name) of a `FolderId` / `DistinguishedFolderId`, or of the first
/// one inside a container such as `ToFolderId`.
fn folder_ref(node: Option<Node<'_>>) -> (Option<String>, Option<String>) {
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

fn first_folder(container: Option<Node<'_>>) -> Option<(Option<String>, Option<String>)> {
    let r = folder_ref(container);
    (r.0.is_some() || r.1.is_some()).then_some(r)
}

fn item_ids(container: Option<Node<'_>>) -> Vec<String> {
    container
        .into_iter()
        .flat_map(|c| c.children())
        .filter_map(|n| n.attr("Id").map(str::to_owned))
        .collect()
}

fn seen(
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
        message,
        initial_sync,
    }
}

/// One pass over the item's children (the item elements are flat, and a lookup per field
/// would scan them twenty times).
fn message_fields(item: Node<'_>) -> Message {
    let mut m = Message::default();
    let text = |n: Node<'_>| Some(n.text().into_owned()).filter(|t| !t.is_empty());
    let id = |n: Node<'_>| n.attr("Id").map(str::to_owned);
    let mailboxes = |n: Node<'_>| n.all("Mailbox").map(address).collect::<Vec<_>>();
    for child in item.children() {
        if !child.ns().is_ews() {
            continue;
        }
        match child.name() {
            "ItemId" => m.item_id = id(child),
            "ParentFolderId" => m.folder_id = id(child),
            "InternetMessageId" => m.internet_message_id = normalize_message_id(&child.text()),
            "ConversationId" => m.conversation_id = id(child),
            "ConversationIndex" => m.conversation_index = text(child),
            "InReplyTo" => m.in_reply_to = normalize_message_id(&child.text()),
            "References" => m.references = text(child),
            "Subject" => m.subject = text(child),
            "From" => m.from = child.child(Ns::Types, "Mailbox").map(address),
            "Sender" => m.sender = child.child(Ns::Types, "Mailbox").map(address),
            "ToRecipients" => m.to = mailboxes(child),
            "CcRecipients" => m.cc = mailboxes(child),
            "BccRecipients" => m.bcc = mailboxes(child),
            "DateTimeReceived" => m.received_at = text(child).map(|t| normalize_timestamp(&t)),
            "DateTimeSent" => m.sent_at = text(child).map(|t| normalize_timestamp(&t)),
            "Categories" => {
                m.categories = child.all("String").map(|s| s.text().into_owned()).collect()
            }
            "ItemClass" => m.item_class = text(child),
            "IsDraft" => m.is_draft = Some(child.text().eq_ignore_ascii_case("true")),
            _ => {}
        }
    }
    m
}

fn address(mailbox: Node<'_>) -> Address {
    let mut a = Address::default();
    for c in mailbox.children() {
        let value = Some(c.text().into_owned()).filter(|t| !t.is_empty());
        match c.name() {
            "Name" => a.name = value,
            "EmailAddress" => a.address = value,
            "RoutingType" => a.routing_type = value,
            _ => {}
        }
    }
    a
}

fn category_update(change: Node<'_>) -> Option<(CategoryMode, Vec<String>)> {
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

fn folder_seen(origin: &Origin, folder: Node<'_>, name: Option<String>) -> Option<Observation> {
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
