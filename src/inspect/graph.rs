//! Microsoft Graph mail exchanges into observations, through typed serde structs that borrow
//! from the body and ignore unknown fields. Covers message list, get and delta; sendMail,
//! send, reply, replyAll, forward; move and copy; category PATCH; mail folders; and `$batch`,
//! whose sub-requests and sub-responses are matched by `id` in any order.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};

use super::model::{Address, CategoryMode, Message, Observation, Origin, Source, Transfer};
use crate::common::text::normalize_message_id;
use crate::common::time::normalize_timestamp;

/// Well-known folder names Graph accepts in place of ids.
const WELL_KNOWN: [&str; 12] = [
    "inbox",
    "sentitems",
    "drafts",
    "deleteditems",
    "junkemail",
    "archive",
    "outbox",
    "clutter",
    "conflicts",
    "msgfolderroot",
    "recoverableitemsdeletions",
    "scheduled",
];

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Deserialize, Default)]
struct EmailAddress<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    address: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Recipient<'a> {
    #[serde(borrow, default)]
    email_address: EmailAddress<'a>,
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    value: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GraphMessage<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    parent_folder_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    internet_message_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    conversation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    conversation_index: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    from: Option<Recipient<'a>>,
    #[serde(borrow, default)]
    sender: Option<Recipient<'a>>,
    #[serde(borrow, default)]
    to_recipients: Vec<Recipient<'a>>,
    #[serde(borrow, default)]
    cc_recipients: Vec<Recipient<'a>>,
    #[serde(borrow, default)]
    bcc_recipients: Vec<Recipient<'a>>,
    #[serde(borrow, default)]
    received_date_time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sent_date_time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    categories: Option<Vec<Cow<'a, str>>>,
    #[serde(default, deserialize_with = "lenient_bool")]
    is_draft: Option<bool>,
    #[serde(borrow, default)]
    internet_message_headers: Vec<Header<'a>>,
    #[serde(rename = "@removed", default)]
    removed: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct List<'a> {
    #[serde(borrow, default)]
    value: Vec<GraphMessage<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendMail<'a> {
    #[serde(borrow, default)]
    message: GraphMessage<'a>,
    #[serde(default, deserialize_with = "lenient_bool")]
    save_to_sent_items: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReplyBody<'a> {
    #[serde(borrow, default)]
    message: Option<GraphMessage<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Destination<'a> {
    #[serde(borrow)]
    destination_id: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphFolder<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    display_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    parent_folder_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct FolderList<'a> {
    #[serde(borrow, default)]
    value: Vec<GraphFolder<'a>>,
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow, default)]
    requests: Vec<BatchRequest<'a>>,
    #[serde(borrow, default)]
    responses: Vec<BatchResponse<'a>>,
}

#[derive(Deserialize)]
struct BatchRequest<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    url: Cow<'a, str>,
    #[serde(borrow, default)]
    body: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct BatchResponse<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    status: u16,
    #[serde(borrow, default)]
    body: Option<&'a serde_json::value::RawValue>,
}

/// `true`/`false` as booleans or strings (Graph's own samples send `"false"`).
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B<'a> {
        Bool(bool),
        #[serde(borrow)]
        Text(Cow<'a, str>),
    }
    Ok(match Option::<B>::deserialize(d)? {
        Some(B::Bool(b)) => Some(b),
        Some(B::Text(t)) => match t.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        None => None,
    })
}

/// One Graph exchange as the inspector sees it.
#[derive(Debug, Clone, Copy)]
pub struct GraphExchange<'a> {
    pub method: &'a str,
    /// Path after the version segment, e.g. `/me/mailFolders/inbox/messages`.
    pub path: &'a str,
    pub status: u16,
    pub request: &'a [u8],
    pub response: &'a [u8],
}

/// Inspects one Graph exchange (recursing once into `$batch`).
///
/// One match arm per Graph resource and action, each a few lines; issue 16 reworks Graph
/// inspection with the EWS extractor, so the arms are kept together until then.
pub fn inspect(
    x: GraphExchange<'_>,
    mailbox: Option<String>,
    depth: u8,
) -> Result<Vec<Observation>, GraphError> {
    let mut out = Vec::new();
    if !(200..300).contains(&x.status) {
        return Ok(out);
    }
    let path = x.path.split('?').next().unwrap_or("");
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if segments
        .first()
        .is_some_and(|s| s.eq_ignore_ascii_case("$batch"))
    {
        if depth == 0 && x.method.eq_ignore_ascii_case("POST") {
            batch(x, mailbox, &mut out)?;
        }
        return Ok(out);
    }
    // Drop the user prefix: `me` or `users/{id}`.
    let rest: &[&str] = match segments.as_slice() {
        [me, rest @ ..] if me.eq_ignore_ascii_case("me") => rest,
        [users, _, rest @ ..] if users.eq_ignore_ascii_case("users") => rest,
        _ => return Ok(out),
    };
    let lower: Vec<String> = rest.iter().map(|s| s.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    let origin = |operation: &str| Origin {
        mailbox: mailbox.clone(),
        source: Source::Graph,
        operation: operation.to_owned(),
    };
    let method = x.method.to_ascii_uppercase();
    match (method.as_str(), lower.as_slice()) {
        // Lists and deltas, in a folder or across the mailbox.
        ("GET", ["messages"]) => list(x.response, None, origin("list_messages"), false, &mut out)?,
        ("GET", ["messages", "delta"]) => list(
            x.response,
            None,
            origin("delta_messages"),
            is_initial_delta(x.path),
            &mut out,
        )?,
        ("GET", ["mailfolders", _, "messages"] | ["mailfolders", _, "messages", "delta"]) => {
            let operation = if lower.last() == Some(&"delta") {
                "delta_messages"
            } else {
                "list_messages"
            };
            let initial = operation == "delta_messages" && is_initial_delta(x.path);
            list(
                x.response,
                Some(rest[1]),
                origin(operation),
                initial,
                &mut out,
            )?
        }
        ("GET", ["messages", _] | ["mailfolders", _, "messages", _]) => {
            let m: GraphMessage<'_> = serde_json::from_slice(x.response)?;
            let folder = (lower.len() == 4).then(|| rest[1]);
            out.push(seen(m, folder, origin("get_message")));
        }
        ("POST", ["sendmail"]) => {
            let send: SendMail<'_> = serde_json::from_slice(x.request)?;
            out.push(Observation::MessageSent {
                origin: origin("sendMail"),
                via: "sendMail".into(),
                message: fields(send.message),
                draft_item_ids: Vec::new(),
                reference_item_id: None,
                saved_to_folder: (send.save_to_sent_items != Some(false))
                    .then(|| "sentitems".into()),
            });
        }
        ("POST", ["messages", _, "send"]) => out.push(Observation::MessageSent {
            origin: origin("send"),
            via: "send".into(),
            message: Message::default(),
            draft_item_ids: vec![rest[1].to_owned()],
            reference_item_id: None,
            saved_to_folder: Some("sentitems".into()),
        }),
        ("POST", ["messages", _, action @ ("reply" | "replyall" | "forward")]) => {
            let body: Option<ReplyBody<'_>> = if x.request.is_empty() {
                None
            } else {
                Some(serde_json::from_slice(x.request)?)
            };
            let via = match *action {
                "replyall" => "replyAll",
                other => other,
            };
            out.push(Observation::MessageSent {
                origin: origin(via),
                via: via.into(),
                message: body.and_then(|b| b.message).map(fields).unwrap_or_default(),
                draft_item_ids: Vec::new(),
                reference_item_id: Some(rest[1].to_owned()),
                saved_to_folder: Some("sentitems".into()),
            });
        }
        ("POST", ["messages", _, action @ ("move" | "copy")]) => {
            let destination: Destination<'_> = serde_json::from_slice(x.request)?;
            let moved: GraphMessage<'_> = serde_json::from_slice(x.response)?;
            let (destination_folder_id, destination_folder) =
                folder_name(&destination.destination_id);
            let transfer = Transfer {
                item_ids: vec![rest[1].to_owned()],
                new_item_ids: vec![moved.id.map(Cow::into_owned)],
                destination_folder_id,
                destination_folder,
            };
            out.push(Observation::transfer(
                origin(action),
                *action == "move",
                transfer,
            ));
        }
        ("PATCH", ["messages", _] | ["mailfolders", _, "messages", _]) => {
            let patch: GraphMessage<'_> = serde_json::from_slice(x.request)?;
            if let Some(categories) = patch.categories {
                // PATCH replaces the whole list.
                out.push(Observation::CategoriesChanged {
                    origin: origin("update_message"),
                    item_ids: vec![rest[rest.len() - 1].to_owned()],
                    mode: CategoryMode::Set,
                    categories: categories.into_iter().map(Cow::into_owned).collect(),
                });
            }
        }
        ("GET", ["mailfolders"] | ["mailfolders", _, "childfolders"]) => {
            let list: FolderList<'_> = serde_json::from_slice(x.response)?;
            for f in list.value {
                out.push(folder(f, None, origin("list_folders")));
            }
        }
        ("GET", ["mailfolders", name]) => {
            let f: GraphFolder<'_> = serde_json::from_slice(x.response)?;
            let well_known = WELL_KNOWN.contains(name).then(|| (*name).to_owned());
            out.push(folder(f, well_known, origin("get_folder")));
        }
        _ => {}
    }
    Ok(out)
}

fn batch(
    x: GraphExchange<'_>,
    mailbox: Option<String>,
    out: &mut Vec<Observation>,
) -> Result<(), GraphError> {
    let requests: Batch<'_> = serde_json::from_slice(x.request)?;
    let responses: Batch<'_> = serde_json::from_slice(x.response)?;
    for response in &responses.responses {
        let Some(request) = requests.requests.iter().find(|r| r.id == response.id) else {
            continue;
        };
        // Sub-request URLs are relative to the version root and may lack the leading slash.
        let url = request.url.trim_start_matches('/');
        let path = format!("/{url}");
        let sub_mailbox =
            super::identity::graph_user(&format!("/v1.0{path}")).or_else(|| mailbox.clone());
        let sub = GraphExchange {
            method: &request.method,
            path: &path,
            status: response.status,
            request: request.body.map(|b| b.get().as_bytes()).unwrap_or_default(),
            response: response
                .body
                .map(|b| b.get().as_bytes())
                .unwrap_or_default(),
        };
        // One broken sub-exchange must not hide the others.
        if let Ok(found) = inspect(sub, sub_mailbox, 1) {
            out.extend(found);
        }
    }
    Ok(())
}

fn list(
    body: &[u8],
    folder: Option<&str>,
    origin: Origin,
    initial_sync: bool,
    out: &mut Vec<Observation>,
) -> Result<(), GraphError> {
    let list: List<'_> = serde_json::from_slice(body)?;
    for m in list.value {
        if m.removed.is_none() {
            out.push(seen_in_sync(m, folder, origin.clone(), initial_sync));
        }
    }
    Ok(())
}

/// A delta request without a delta or skip token starts a round from nothing: what it returns
/// is the folder's history, like an EWS SyncFolderItems without a SyncState. (Later pages of
/// that first round carry a skip token and cannot be told from an incremental round's pages
/// without per-client state; the mailbox's "process email received after" time covers them.)
fn is_initial_delta(path_and_query: &str) -> bool {
    let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
    !query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or("").trim_start_matches('$');
        name.eq_ignore_ascii_case("deltatoken") || name.eq_ignore_ascii_case("skiptoken")
    })
}

fn folder_name(segment: &str) -> (Option<String>, Option<String>) {
    let lower = segment.to_ascii_lowercase();
    if WELL_KNOWN.contains(&lower.as_str()) {
        (None, Some(lower))
    } else {
        (Some(segment.to_owned()), None)
    }
}

fn seen(m: GraphMessage<'_>, folder: Option<&str>, origin: Origin) -> Observation {
    seen_in_sync(m, folder, origin, false)
}

fn seen_in_sync(
    m: GraphMessage<'_>,
    folder: Option<&str>,
    origin: Origin,
    initial_sync: bool,
) -> Observation {
    let mut message = fields(m);
    if let Some(segment) = folder {
        let (id, name) = folder_name(segment);
        if message.folder_id.is_none() {
            message.folder_id = id;
        }
        message.folder = name;
    }
    Observation::MessageSeen {
        origin,
        message,
        initial_sync,
    }
}

fn address(r: Recipient<'_>) -> Address {
    Address {
        name: r.email_address.name.map(Cow::into_owned),
        address: r.email_address.address.map(Cow::into_owned),
        routing_type: Some("SMTP".into()),
    }
}

fn fields(m: GraphMessage<'_>) -> Message {
    let header = |name: &str| {
        m.internet_message_headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.to_string())
    };
    let in_reply_to = header("In-Reply-To").and_then(|v| normalize_message_id(&v));
    let references = header("References");
    Message {
        item_id: m.id.map(Cow::into_owned),
        folder_id: m.parent_folder_id.map(Cow::into_owned),
        folder: None,
        internet_message_id: m.internet_message_id.and_then(|v| normalize_message_id(&v)),
        conversation_id: m.conversation_id.map(Cow::into_owned),
        conversation_index: m.conversation_index.map(Cow::into_owned),
        in_reply_to,
        references,
        subject: m.subject.map(Cow::into_owned),
        from: m.from.map(address),
        sender: m.sender.map(address),
        to: m.to_recipients.into_iter().map(address).collect(),
        cc: m.cc_recipients.into_iter().map(address).collect(),
        bcc: m.bcc_recipients.into_iter().map(address).collect(),
        received_at: m.received_date_time.map(|t| normalize_timestamp(&t)),
        sent_at: m.sent_date_time.map(|t| normalize_timestamp(&t)),
        categories: m
            .categories
            .unwrap_or_default()
            .into_iter()
            .map(Cow::into_owned)
            .collect(),
        item_class: None,
        is_draft: m.is_draft,
    }
}

fn folder(f: GraphFolder<'_>, well_known: Option<String>, origin: Origin) -> Observation {
    Observation::FolderSeen {
        origin,
        folder_id: f.id.into_owned(),
        folder: well_known,
        display_name: f.display_name.map(Cow::into_owned),
        parent_folder_id: f.parent_folder_id.map(Cow::into_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::is_initial_delta;

    #[test]
    fn only_a_delta_without_tokens_starts_from_nothing() {
        assert!(is_initial_delta(
            "/v1.0/me/mailFolders/inbox/messages/delta"
        ));
        assert!(is_initial_delta("/v1.0/me/messages/delta?$select=subject"));
        assert!(!is_initial_delta(
            "/v1.0/me/mailFolders/inbox/messages/delta?$deltatoken=abc"
        ));
        assert!(!is_initial_delta(
            "/v1.0/me/messages/delta?$top=10&$skiptoken=x"
        ));
        assert!(!is_initial_delta("/v1.0/me/messages/delta?deltaToken=abc"));
    }
}
