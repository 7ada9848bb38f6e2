//! Graph routes over the store: who `/me` is, then messages, folders, delta, events, contacts
//! and To Do tasks.

use http::Method;
use serde_json::{Map, Value, json};

use super::json as resource;
use super::{GraphRequest, Reply};
use crate::common::time::timestamp_seconds;
use crate::simulate::mailbox::{
    Addr, Inner, Item, ItemChange, Kind, NewItem, Store, StoreError, ids,
};

const DEFAULT_PAGE: usize = 10;

fn store_error(e: &StoreError) -> Reply {
    let status = match e {
        StoreError::IdMalformed => 400,
        StoreError::ItemNotFound | StoreError::FolderNotFound | StoreError::NoMailbox(_) => 404,
        StoreError::FolderExists => 409,
        StoreError::AccessDenied => 403,
        _ => 507,
    };
    Reply::error(status, e.ews_code(), &e.to_string())
}

fn is(segment: Option<&String>, word: &str) -> bool {
    segment.is_some_and(|s| s.eq_ignore_ascii_case(word))
}

pub fn route(store: &Store, req: &GraphRequest<'_>) -> Reply {
    let mut inner = store.lock();
    let segs = &req.segments;
    let (mailbox, rest) = if is(segs.first(), "me") {
        (me(&inner, req), &segs[1.min(segs.len())..])
    } else if is(segs.first(), "users") && segs.len() >= 2 {
        (user(&inner, &segs[1]), &segs[2..])
    } else {
        return Reply::error(
            400,
            "BadRequest",
            "Resource not found for the segment; the simulator serves /me and /users/{id}.",
        );
    };
    let mailbox = match mailbox {
        Ok(m) => m,
        Err(e) => return store_error(&e),
    };
    let result = user_route(&mut inner, req, mailbox, rest);
    result.unwrap_or_else(|e| store_error(&e))
}

fn me(store: &Inner, req: &GraphRequest<'_>) -> Result<u16, StoreError> {
    for who in [&req.caller.logon, &req.caller.anchor]
        .into_iter()
        .flatten()
    {
        if let Ok(m) = user(store, who) {
            return Ok(m);
        }
    }
    if store.mailboxes().is_empty() {
        return Err(StoreError::NoMailbox("(none)".into()));
    }
    Ok(0)
}

/// A user by UPN, mailbox address or the id `/users` lists (the mailbox index as a GUID).
fn user(store: &Inner, id: &str) -> Result<u16, StoreError> {
    let id = id.trim_start_matches("UPN:");
    if let Ok(m) = store.mailbox_index(id) {
        return Ok(m);
    }
    if let Some(account) = store
        .accounts()
        .iter()
        .find(|a| a.logon.eq_ignore_ascii_case(id))
    {
        return store.mailbox_index(&account.mailbox);
    }
    store
        .mailboxes()
        .iter()
        .find(|m| user_id(m.index).eq_ignore_ascii_case(id))
        .map(|m| m.index)
        .ok_or_else(|| StoreError::NoMailbox(id.to_owned()))
}

fn user_id(index: u16) -> String {
    format!("00000000-0000-4000-8000-{index:012x}")
}

type Routed = Result<Reply, StoreError>;

fn user_route(store: &mut Inner, req: &GraphRequest<'_>, m: u16, rest: &[String]) -> Routed {
    let first = rest.first();
    if rest.is_empty() {
        let mb = store.mailbox(m);
        return Ok(Reply::ok(json!({
            "id": user_id(m),
            "displayName": mb.name,
            "mail": mb.address,
            "userPrincipalName": mb.address,
        })));
    }
    if is(first, "sendMail") && req.method == Method::POST {
        return send_mail(store, req, m);
    }
    if is(first, "messages") {
        return messages(store, req, m, None, &rest[1..]);
    }
    if is(first, "mailFolders") {
        return mail_folders(store, req, m, &rest[1..]);
    }
    if is(first, "events") || (is(first, "calendar") && is(rest.get(1), "events")) {
        let skip = if is(first, "calendar") { 2 } else { 1 };
        let folder = folder_key(store, m, "calendar")?;
        return collection(store, req, m, folder, Kind::CalendarItem, &rest[skip..]);
    }
    if is(first, "contacts") {
        let folder = folder_key(store, m, "contacts")?;
        return collection(store, req, m, folder, Kind::Contact, &rest[1..]);
    }
    if is(first, "todo") && is(rest.get(1), "lists") {
        return todo(store, req, m, &rest[2..]);
    }
    Ok(Reply::error(
        400,
        "BadRequest",
        &format!("The simulator does not serve /{}.", rest.join("/")),
    ))
}

fn folder_key(store: &Inner, m: u16, id: &str) -> Result<u64, StoreError> {
    let mb = store.mailbox(m);
    if let Some(f) = mb.distinguished(id) {
        return Ok(f.key);
    }
    let ews = ids::ews_id(id).unwrap_or_else(|| id.to_owned());
    let (owner, key) = store.find_folder(&ews).or_else(|_| store.find_folder(id))?;
    if owner != m {
        return Err(StoreError::FolderNotFound);
    }
    Ok(key)
}

fn item_key(store: &Inner, m: u16, id: &str) -> Result<u64, StoreError> {
    let ews = ids::ews_id(id).ok_or(StoreError::IdMalformed)?;
    let (owner, key) = store.find_item(&ews)?;
    if owner != m {
        return Err(StoreError::ItemNotFound);
    }
    Ok(key)
}

fn body_map(req: &GraphRequest<'_>) -> Map<String, Value> {
    req.body
        .as_ref()
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn selected(req: &GraphRequest<'_>) -> Vec<String> {
    req.query("$select")
        .map(|s| s.split(',').map(|f| f.trim().to_owned()).collect())
        .unwrap_or_default()
}

fn render(store: &Inner, m: u16, key: u64, req: &GraphRequest<'_>) -> Value {
    let mb = store.mailbox(m);
    let item = &mb.items[&key];
    resource::select(resource::item(mb, item), item, &selected(req))
}

/// `/messages…` of the mailbox (`folder: None`) or of one folder.
fn messages(
    store: &mut Inner,
    req: &GraphRequest<'_>,
    m: u16,
    folder: Option<u64>,
    rest: &[String],
) -> Routed {
    match (rest.first(), &req.method) {
        (None, &Method::GET) => {
            let mb = store.mailbox(m);
            let keys: Vec<u64> = match folder {
                Some(f) => mb.items_in(f).iter().map(|i| i.key).collect(),
                None => {
                    let mut all: Vec<&Item> = mb
                        .items
                        .values()
                        .filter(|i| i.kind() == Kind::Message)
                        .collect();
                    all.sort_by_key(|i| std::cmp::Reverse(i.received));
                    all.iter().map(|i| i.key).collect()
                }
            };
            Ok(list(store, req, m, keys))
        }
        (None, &Method::POST) => {
            let folder = match folder {
                Some(f) => f,
                None => folder_key(store, m, "drafts")?,
            };
            let mut item = Item {
                kind: Some(Kind::Message),
                is_draft: true,
                is_read: true,
                ..Item::default()
            };
            resource::apply(&mut item, &body_map(req));
            let key = store.insert(m, NewItem { item, folder })?;
            Ok(Reply::status(201, render(store, m, key, req)))
        }
        (Some(s), &Method::GET) if is_delta(s) => match folder {
            Some(f) => delta(store, req, m, f),
            None => Ok(Reply::error(
                400,
                "ErrorInvalidRequest",
                "Change tracking is supported on a folder's messages: /mailFolders/{id}/messages/delta.",
            )),
        },
        (Some(id), _) => {
            let key = item_key(store, m, id)?;
            item_route(store, req, m, key, &rest[1..])
        }
        _ => Ok(method_not_allowed()),
    }
}

fn is_delta(segment: &str) -> bool {
    segment.eq_ignore_ascii_case("delta") || segment.eq_ignore_ascii_case("delta()")
}

fn method_not_allowed() -> Reply {
    Reply::error(
        405,
        "ErrorInvalidRequest",
        "The method is not allowed here.",
    )
}

/// GET or PATCH of one item, answered with the item; `None` for any other method.
fn get_or_patch(store: &mut Inner, req: &GraphRequest<'_>, m: u16, key: u64) -> Option<Routed> {
    match req.method {
        Method::GET => Some(Ok(Reply::ok(render(store, m, key, req)))),
        Method::PATCH => {
            let body = body_map(req);
            Some(
                store
                    .update(m, key, |item| resource::apply(item, &body))
                    .map(|()| Reply::ok(render(store, m, key, req))),
            )
        }
        _ => None,
    }
}

/// One item: GET, PATCH, DELETE, or an action.
fn item_route(
    store: &mut Inner,
    req: &GraphRequest<'_>,
    m: u16,
    key: u64,
    rest: &[String],
) -> Routed {
    let Some(action) = rest.first() else {
        if let Some(read_or_changed) = get_or_patch(store, req, m, key) {
            return read_or_changed;
        }
        return match req.method {
            Method::DELETE => {
                let deleted = folder_key(store, m, "deleteditems")?;
                if store.item(m, key).folder == deleted {
                    store.remove(m, key)?;
                } else {
                    store.move_item(m, key, deleted)?;
                }
                Ok(Reply::empty(204))
            }
            _ => Ok(method_not_allowed()),
        };
    };
    if req.method != Method::POST {
        return Ok(method_not_allowed());
    }
    let body = body_map(req);
    match action.to_ascii_lowercase().as_str() {
        "move" | "copy" => {
            let destination = body
                .get("destinationId")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let to = folder_key(store, m, destination)?;
            let new_key = if action.eq_ignore_ascii_case("move") {
                store.move_item(m, key, to)?
            } else {
                store.copy_item(m, key, to)?
            };
            Ok(Reply::status(201, render(store, m, new_key, req)))
        }
        "send" => {
            let sent = folder_key(store, m, "sentitems")?;
            let draft = store.remove(m, key)?;
            store.send(m, draft, Some(sent))?;
            Ok(Reply::empty(202))
        }
        "reply" | "replyall" | "forward" => {
            let reply = respond_to(store, m, key, &action.to_ascii_lowercase(), &body);
            let sent = folder_key(store, m, "sentitems")?;
            store.send(m, reply, Some(sent))?;
            Ok(Reply::empty(202))
        }
        _ => Ok(Reply::error(
            400,
            "BadRequest",
            &format!("The simulator does not serve the {action} action."),
        )),
    }
}

/// A reply, reply-all or forward of an item, as Graph builds it from a comment.
fn respond_to(store: &Inner, m: u16, key: u64, action: &str, body: &Map<String, Value>) -> Item {
    let original = store.item(m, key).clone();
    let me = store.mailbox(m).address.clone();
    let mut item = Item {
        kind: Some(Kind::Message),
        ..Item::default()
    };
    if let Some(message) = body.get("message").and_then(Value::as_object) {
        resource::apply(&mut item, message);
    }
    let to_addrs = |v: Option<&Value>| -> Vec<Addr> {
        let mut scratch = Item::default();
        if let Some(list) = v {
            resource::apply(
                &mut scratch,
                &Map::from_iter([("toRecipients".to_owned(), list.clone())]),
            );
        }
        scratch.to
    };
    let extra = to_addrs(body.get("toRecipients"));
    let prefix = if action == "forward" { "FW: " } else { "RE: " };
    item.subject = format!("{prefix}{}", original.subject);
    if item.to.is_empty() {
        item.to = match action {
            "forward" => extra,
            _ => {
                let mut to: Vec<Addr> = original.from.clone().into_iter().collect();
                if action == "replyall" {
                    to.extend(
                        original
                            .to
                            .iter()
                            .filter(|a| !a.address.eq_ignore_ascii_case(&me))
                            .cloned(),
                    );
                    item.cc = original.cc.clone();
                }
                to
            }
        };
    }
    let comment = body.get("comment").and_then(Value::as_str).unwrap_or("");
    item.body = format!("{comment}\r\n\r\n> {}", original.body.replace('\n', "\n> "));
    item.in_reply_to = original.message_id.clone();
    item.references = original.message_id.clone();
    item
}

fn send_mail(store: &mut Inner, req: &GraphRequest<'_>, m: u16) -> Routed {
    let body = body_map(req);
    let Some(message) = body.get("message").and_then(Value::as_object) else {
        return Ok(Reply::error(
            400,
            "ErrorInvalidRequest",
            "sendMail needs a message.",
        ));
    };
    let mut item = Item {
        kind: Some(Kind::Message),
        ..Item::default()
    };
    resource::apply(&mut item, message);
    if item.to.is_empty() && item.cc.is_empty() && item.bcc.is_empty() {
        return Ok(Reply::error(
            400,
            "ErrorInvalidRecipients",
            "At least one recipient is not valid.",
        ));
    }
    let save = body
        .get("saveToSentItems")
        .map(|v| v.as_bool().unwrap_or(v.as_str() != Some("false")))
        .unwrap_or(true);
    let sent = if save {
        Some(folder_key(store, m, "sentitems")?)
    } else {
        None
    };
    store.send(m, item, sent)?;
    Ok(Reply::empty(202))
}

fn mail_folders(store: &mut Inner, req: &GraphRequest<'_>, m: u16, rest: &[String]) -> Routed {
    let top = store.mailbox(m).top();
    let Some(id) = rest.first() else {
        return folder_children(store, req, m, top);
    };
    let folder = folder_key(store, m, id)?;
    match rest.get(1) {
        None => {
            let mb = store.mailbox(m);
            Ok(Reply::ok(resource::folder(mb, &mb.folders[&folder])))
        }
        Some(s) if s.eq_ignore_ascii_case("childFolders") => folder_children(store, req, m, folder),
        Some(s) if s.eq_ignore_ascii_case("messages") => {
            messages(store, req, m, Some(folder), &rest[2..])
        }
        Some(s) => Ok(Reply::error(
            400,
            "BadRequest",
            &format!("The simulator does not serve mailFolders/…/{s}."),
        )),
    }
}

fn folder_children(store: &mut Inner, req: &GraphRequest<'_>, m: u16, parent: u64) -> Routed {
    match req.method {
        Method::GET => {
            let mb = store.mailbox(m);
            let value: Vec<Value> = mb
                .children(parent)
                .map(|f| resource::folder(mb, f))
                .collect();
            Ok(Reply::ok(json!({"value": value})))
        }
        Method::POST => {
            let name = body_map(req)
                .get("displayName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let key = store.create_folder(m, parent, &name, "IPF.Note", None)?;
            let mb = store.mailbox(m);
            Ok(Reply::status(201, resource::folder(mb, &mb.folders[&key])))
        }
        _ => Ok(method_not_allowed()),
    }
}

/// Lists items with `$filter`, `$orderby` (received time only), `$top` and `$skip`, and a next
/// link while more remain.
fn list(store: &Inner, req: &GraphRequest<'_>, m: u16, keys: Vec<u64>) -> Reply {
    let mb = store.mailbox(m);
    let filter = req.query("$filter").map(Filter::parse);
    let mut rows: Vec<&Item> = keys
        .iter()
        .filter_map(|k| mb.items.get(k))
        .filter(|i| filter.as_ref().is_none_or(|f| f.matches(i)))
        .collect();
    if req
        .query("$orderby")
        .is_some_and(|o| o.to_ascii_lowercase().contains("asc"))
    {
        rows.reverse();
    }
    let top = req
        .query("$top")
        .and_then(|t| t.parse().ok())
        .or(req.page_size)
        .unwrap_or(DEFAULT_PAGE)
        .clamp(1, 1000);
    let skip: usize = req.query("$skip").and_then(|s| s.parse().ok()).unwrap_or(0);
    let fields = selected(req);
    let value: Vec<Value> = rows
        .iter()
        .skip(skip)
        .take(top)
        .map(|i| resource::select(resource::item(mb, i), i, &fields))
        .collect();
    let mut out = json!({"value": value});
    if skip + top < rows.len() {
        let mut query: Vec<String> = req
            .query
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("$skip"))
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        query.push(format!("$skip={}", skip + top));
        out["@odata.nextLink"] = json!(format!(
            "{}/{}?{}",
            req.base,
            req.segments
                .iter()
                .map(|s| encode(s))
                .collect::<Vec<_>>()
                .join("/"),
            query.join("&")
        ));
    }
    Reply::ok(out)
}

fn encode(text: &str) -> String {
    crate::common::text::percent_encode(text, b"-._~$(),:@'")
}

/// A folder's message delta: a page of changes since the token, then a next link (more to
/// come) or a delta link (caught up) carrying the store's sync state.
fn delta(store: &Inner, req: &GraphRequest<'_>, m: u16, folder: u64) -> Routed {
    let state = req.query("$skiptoken").or_else(|| req.query("$deltatoken"));
    let max = req
        .page_size
        .or_else(|| req.query("$top").and_then(|t| t.parse().ok()))
        .unwrap_or(DEFAULT_PAGE)
        .clamp(1, 1000);
    let page = store.sync_items(m, folder, state, max)?;
    let fields = selected(req);
    let mb = store.mailbox(m);
    let value: Vec<Value> = page
        .changes
        .iter()
        .map(|change| match change {
            ItemChange::Create(key) | ItemChange::Update(key) => {
                let item = &mb.items[key];
                resource::select(resource::item(mb, item), item, &fields)
            }
            ItemChange::Delete(id) => json!({
                "@odata.type": "#microsoft.graph.message",
                "id": ids::rest_id(id),
                "@removed": {"reason": "deleted"},
            }),
        })
        .collect();
    let path = req
        .segments
        .iter()
        .map(|s| encode(s))
        .collect::<Vec<_>>()
        .join("/");
    let (link, token) = if page.last_in_range {
        ("@odata.deltaLink", "$deltatoken")
    } else {
        ("@odata.nextLink", "$skiptoken")
    };
    let mut out = json!({"value": value});
    out[link] = json!(format!(
        "{}/{path}?{token}={}",
        req.base,
        encode(&page.state)
    ));
    Ok(Reply::ok(out))
}

/// Events and contacts: list, create, get, PATCH, DELETE in their default folder.
fn collection(
    store: &mut Inner,
    req: &GraphRequest<'_>,
    m: u16,
    folder: u64,
    kind: Kind,
    rest: &[String],
) -> Routed {
    match (rest.first(), &req.method) {
        (None, &Method::GET) => {
            let keys = store
                .mailbox(m)
                .items_in(folder)
                .iter()
                .filter(|i| i.kind() == kind)
                .map(|i| i.key)
                .collect();
            Ok(list(store, req, m, keys))
        }
        (None, &Method::POST) => {
            let mut item = Item {
                kind: Some(kind),
                ..Item::default()
            };
            resource::apply(&mut item, &body_map(req));
            if kind == Kind::CalendarItem && item.from.is_none() {
                let mb = store.mailbox(m);
                item.from = Some(Addr {
                    name: Some(mb.name.clone()),
                    address: mb.address.clone(),
                });
            }
            let key = store.insert(m, NewItem { item, folder })?;
            Ok(Reply::status(201, render(store, m, key, req)))
        }
        (Some(id), method) if rest.len() == 1 => {
            let key = item_key(store, m, id)?;
            if let Some(read_or_changed) = get_or_patch(store, req, m, key) {
                return read_or_changed;
            }
            match *method {
                Method::DELETE => {
                    store.remove(m, key)?;
                    Ok(Reply::empty(204))
                }
                _ => Ok(method_not_allowed()),
            }
        }
        _ => Ok(method_not_allowed()),
    }
}

/// To Do: one list, "Tasks", backed by the Tasks folder.
fn todo(store: &mut Inner, req: &GraphRequest<'_>, m: u16, rest: &[String]) -> Routed {
    let folder = folder_key(store, m, "tasks")?;
    let list_id = ids::rest_id(&store.mailbox(m).folders[&folder].id);
    match rest.first() {
        None => Ok(Reply::ok(json!({"value": [{
            "id": list_id,
            "displayName": "Tasks",
            "wellknownListName": "defaultList",
            "isOwner": true,
        }]}))),
        Some(id)
            if (id == &list_id || id.eq_ignore_ascii_case("tasks")) && is(rest.get(1), "tasks") =>
        {
            collection(store, req, m, folder, Kind::Task, &rest[2..])
        }
        Some(_) => Err(StoreError::FolderNotFound),
    }
}

/// The `$filter` expressions the simulator understands: comparisons joined by `and`.
struct Filter {
    terms: Vec<(String, String, String)>,
}

impl Filter {
    fn parse(text: &str) -> Filter {
        let terms = text
            .split(" and ")
            .filter_map(|term| {
                let mut parts = term.trim().splitn(3, ' ');
                let field = parts.next()?.to_owned();
                let op = parts.next()?.to_ascii_lowercase();
                let value = parts.next()?.trim().trim_matches('\'').to_owned();
                Some((field, op, value))
            })
            .collect();
        Filter { terms }
    }

    fn matches(&self, item: &Item) -> bool {
        self.terms.iter().all(|(field, op, wanted)| {
            let value = match field.to_ascii_lowercase().as_str() {
                "isread" => item.is_read.to_string(),
                "isdraft" => item.is_draft.to_string(),
                "subject" => item.subject.clone(),
                "internetmessageid" => item.message_id.clone().unwrap_or_default(),
                "from/emailaddress/address" | "sender/emailaddress/address" => item
                    .from
                    .as_ref()
                    .map(|a| a.address.clone())
                    .unwrap_or_default(),
                "receiveddatetime" => crate::common::time::format_seconds(item.received),
                "sentdatetime" => item
                    .sent
                    .map(crate::common::time::format_seconds)
                    .unwrap_or_default(),
                "lastmodifieddatetime" => crate::common::time::format_seconds(item.modified),
                _ => return true,
            };
            let order = match (timestamp_seconds(&value), timestamp_seconds(wanted)) {
                (Some(a), Some(b)) => a.cmp(&b),
                _ => value.to_lowercase().cmp(&wanted.to_lowercase()),
            };
            match op.as_str() {
                "eq" => order.is_eq(),
                "ne" => !order.is_eq(),
                "gt" => order.is_gt(),
                "ge" => order.is_ge(),
                "lt" => order.is_lt(),
                "le" => order.is_le(),
                _ => true,
            }
        })
    }
}
