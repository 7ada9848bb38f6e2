//! Store items as Graph resources (message, event, contact, To Do task, mail folder) and back.

use serde_json::{Map, Value, json};

use crate::common::time::{format_seconds, timestamp_seconds};
use crate::simulate::mailbox::{Addr, Folder, Item, Kind, Mailbox, ids};

fn address(a: &Addr) -> Value {
    json!({"emailAddress": {"name": a.display(), "address": a.address}})
}

fn time(secs: Option<i64>) -> Value {
    secs.map_or(Value::Null, |s| Value::String(format_seconds(s)))
}

fn date_time_zone(secs: Option<i64>) -> Value {
    match secs {
        Some(s) => {
            let t = format_seconds(s);
            json!({"dateTime": t.trim_end_matches('Z'), "timeZone": "UTC"})
        }
        None => Value::Null,
    }
}

fn preview(body: &str) -> String {
    body.chars().take(255).collect()
}

/// The Graph resource for an item, all properties.
pub fn item(mailbox: &Mailbox, item: &Item) -> Value {
    let id = ids::rest_id(&item.id);
    let parent = mailbox
        .folders
        .get(&item.folder)
        .map(|f| ids::rest_id(&f.id));
    let body = json!({
        "contentType": if item.body_html { "html" } else { "text" },
        "content": item.body,
    });
    let mut v = json!({
        "@odata.etag": format!("W/\"{}\"", item.change_key()),
        "id": id,
        "createdDateTime": time(Some(item.created)),
        "lastModifiedDateTime": time(Some(item.modified)),
        "changeKey": item.change_key(),
        "categories": item.categories,
    });
    let fields = match item.kind() {
        Kind::Message => json!({
            "receivedDateTime": time(Some(item.received)),
            "sentDateTime": time(item.sent),
            "hasAttachments": false,
            "internetMessageId": item.message_id,
            "subject": item.subject,
            "bodyPreview": preview(&item.body),
            "importance": item.importance.as_deref().unwrap_or("normal").to_lowercase(),
            "parentFolderId": parent,
            "conversationId": item.conversation_id(),
            "isRead": item.is_read,
            "isDraft": item.is_draft,
            "body": body,
            "sender": item.from.as_ref().map(address),
            "from": item.from.as_ref().map(address),
            "toRecipients": item.to.iter().map(address).collect::<Vec<_>>(),
            "ccRecipients": item.cc.iter().map(address).collect::<Vec<_>>(),
            "bccRecipients": item.bcc.iter().map(address).collect::<Vec<_>>(),
        }),
        Kind::CalendarItem => json!({
            "subject": item.subject,
            "bodyPreview": preview(&item.body),
            "body": body,
            "start": date_time_zone(item.start),
            "end": date_time_zone(item.end),
            "location": {"displayName": item.location.clone().unwrap_or_default()},
            "organizer": item.from.as_ref().map(address),
            "attendees": item.to.iter().map(|a| {
                let mut v = address(a);
                v["type"] = json!("required");
                v
            }).collect::<Vec<_>>(),
            "iCalUId": item.id,
        }),
        Kind::Contact => json!({
            "displayName": item.subject,
            "givenName": item.given_name,
            "surname": item.surname,
            "companyName": item.company,
            "emailAddresses": item.emails.iter().map(|e| json!({"name": e, "address": e})).collect::<Vec<_>>(),
            "parentFolderId": parent,
        }),
        Kind::Task => json!({
            "title": item.subject,
            "status": graph_task_status(item.status.as_deref()),
            "body": {"contentType": "text", "content": item.body},
            "dueDateTime": date_time_zone(item.due),
        }),
    };
    if let (Value::Object(target), Value::Object(extra)) = (&mut v, fields) {
        target.extend(extra);
    }
    v
}

fn graph_task_status(status: Option<&str>) -> &'static str {
    match status {
        Some("Completed") => "completed",
        Some("InProgress") => "inProgress",
        Some("WaitingOnOthers") => "waitingOnOthers",
        Some("Deferred") => "deferred",
        _ => "notStarted",
    }
}

fn ews_task_status(status: &str) -> String {
    match status {
        "completed" => "Completed",
        "inProgress" => "InProgress",
        "waitingOnOthers" => "WaitingOnOthers",
        "deferred" => "Deferred",
        _ => "NotStarted",
    }
    .to_owned()
}

/// Keeps only the `$select`ed properties (and what Graph always returns). Internet message
/// headers exist only when selected, as in Graph.
pub fn select(mut value: Value, item: &Item, fields: &[String]) -> Value {
    if fields
        .iter()
        .any(|f| f.eq_ignore_ascii_case("internetMessageHeaders"))
    {
        value["internetMessageHeaders"] = Value::Array(
            item.internet_headers()
                .into_iter()
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect(),
        );
    }
    if fields.is_empty() {
        return value;
    }
    if let Value::Object(map) = &mut value {
        map.retain(|k, _| {
            k == "id" || k == "@odata.etag" || fields.iter().any(|f| f.eq_ignore_ascii_case(k))
        });
    }
    value
}

pub fn folder(mailbox: &Mailbox, folder: &Folder) -> Value {
    let (total, unread) = mailbox.counts(folder.key);
    json!({
        "id": ids::rest_id(&folder.id),
        "displayName": folder.name,
        "parentFolderId": folder.parent.and_then(|p| mailbox.folders.get(&p)).map(|p| ids::rest_id(&p.id)),
        "childFolderCount": mailbox.children(folder.key).count(),
        "unreadItemCount": unread,
        "totalItemCount": total,
        "isHidden": false,
    })
}

fn addr_of(v: &Value) -> Option<Addr> {
    let e = v.get("emailAddress")?;
    Some(Addr {
        name: e.get("name").and_then(Value::as_str).map(str::to_owned),
        address: e.get("address").and_then(Value::as_str)?.to_owned(),
    })
}

fn addrs(v: Option<&Value>) -> Option<Vec<Addr>> {
    Some(v?.as_array()?.iter().filter_map(addr_of).collect())
}

fn graph_time(v: Option<&Value>) -> Option<i64> {
    let v = v?;
    let text = v
        .get("dateTime")
        .and_then(Value::as_str)
        .or_else(|| v.as_str())?;
    timestamp_seconds(text)
}

/// Applies a Graph resource body (create or PATCH) to an item.
pub fn apply(item: &mut Item, body: &Map<String, Value>) {
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    if let Some(s) = text("subject").or_else(|| text("title")) {
        item.subject = s;
    }
    if let Some(s) = text("displayName") {
        item.subject = s;
    }
    if let Some(b) = body.get("body") {
        item.body = b
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        item.body_html = b
            .get("contentType")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case("html"));
    }
    if let Some(list) = addrs(body.get("toRecipients")).or_else(|| addrs(body.get("attendees"))) {
        item.to = list;
    }
    if let Some(list) = addrs(body.get("ccRecipients")) {
        item.cc = list;
    }
    if let Some(list) = addrs(body.get("bccRecipients")) {
        item.bcc = list;
    }
    if let Some(from) = body.get("from").and_then(addr_of) {
        item.from = Some(from);
    }
    if let Some(read) = body.get("isRead").and_then(Value::as_bool) {
        item.is_read = read;
    }
    if let Some(list) = body.get("categories").and_then(Value::as_array) {
        item.categories = list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
    }
    if let Some(s) = text("importance") {
        item.importance = Some(s);
    }
    if let Some(s) = text("internetMessageId") {
        item.message_id = Some(s);
    }
    if let Some(t) = graph_time(body.get("start")) {
        item.start = Some(t);
    }
    if let Some(t) = graph_time(body.get("end")) {
        item.end = Some(t);
    }
    if let Some(l) = body.get("location").and_then(|l| l.get("displayName")) {
        item.location = l.as_str().map(str::to_owned);
    }
    if let Some(s) = text("givenName") {
        item.given_name = Some(s);
    }
    if let Some(s) = text("surname") {
        item.surname = Some(s);
    }
    if let Some(s) = text("companyName") {
        item.company = Some(s);
    }
    if let Some(list) = body.get("emailAddresses").and_then(Value::as_array) {
        item.emails = list
            .iter()
            .filter_map(|e| e.get("address").and_then(Value::as_str))
            .map(str::to_owned)
            .collect();
    }
    if let Some(t) = graph_time(body.get("dueDateTime")) {
        item.due = Some(t);
    }
    if let Some(s) = text("status") {
        item.status = Some(ews_task_status(&s));
    }
}
