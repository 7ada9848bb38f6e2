//! Microsoft Graph mail exchanges into observations, through typed structs that borrow from
//! the body, match property names in any case (Graph does, and the SDKs send PascalCase action
//! parameters: see `json`) and ignore unknown properties. Covers message list, get and delta
//! (`delta` or the SDKs' `delta()`); sendMail, send, reply, replyAll, forward; move and copy;
//! category PATCH; mail folders; and `$batch`, whose sub-requests and sub-responses are matched
//! by `id` in any order, with `dependsOn` (or the Python SDK's `depends_on`) honoured. Ids in
//! URL paths are percent-decoded, so an SDK's `AAMk…%3D` and a hand-written `AAMk…=` are one
//! item.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine as _;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::json::{Keys, LenientBool, Text, from_body, from_body_seed, json_object};
use super::model::{CategoryMode, Message, Observation, Origin, Source, Transfer};
use super::pack::{self, MessagePacker, PageFolder, Role};
use crate::common::text::percent_decode;

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

/// How deep a `dependsOn` chain is followed. Graph allows 20 requests per batch, so a longer
/// chain is not Graph's; the bound keeps hostile input from exhausting the stack.
const MAX_DEPENDENCY_CHAIN: usize = 64;

/// Base64 as the SDKs write non-JSON batch bodies: standard alphabet, padding optional.
const BATCH_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
}

json_object! {
    #[derive(Default)]
    struct EmailAddress<'a> {
        name: Option<Text<'a>> = "name",
        address: Option<Text<'a>> = "address",
    }
}

json_object! {
    #[derive(Default)]
    struct Recipient<'a> {
        email_address: EmailAddress<'a> = "emailAddress",
    }
}

json_object! {
    struct Header<'a> {
        name: Text<'a> = "name" (required),
        value: Text<'a> = "value" (required),
    }
}

json_object! {
    #[derive(Default)]
    struct GraphMessage<'a> {
        id: Option<Text<'a>> = "id",
        parent_folder_id: Option<Text<'a>> = "parentFolderId",
        internet_message_id: Option<Text<'a>> = "internetMessageId",
        conversation_id: Option<Text<'a>> = "conversationId",
        conversation_index: Option<Text<'a>> = "conversationIndex",
        subject: Option<Text<'a>> = "subject",
        from: Option<Recipient<'a>> = "from",
        sender: Option<Recipient<'a>> = "sender",
        to_recipients: Vec<Recipient<'a>> = "toRecipients",
        cc_recipients: Vec<Recipient<'a>> = "ccRecipients",
        bcc_recipients: Vec<Recipient<'a>> = "bccRecipients",
        received_date_time: Option<Text<'a>> = "receivedDateTime",
        sent_date_time: Option<Text<'a>> = "sentDateTime",
        categories: Option<Vec<Text<'a>>> = "categories",
        is_draft: LenientBool = "isDraft",
        internet_message_headers: Vec<Header<'a>> = "internetMessageHeaders",
        removed: Option<IgnoredAny> = "@removed",
    }
}

json_object! {
    struct SendMail<'a> {
        message: GraphMessage<'a> = "message",
        save_to_sent_items: LenientBool = "saveToSentItems",
    }
}

json_object! {
    struct ReplyBody<'a> {
        message: Option<GraphMessage<'a>> = "message",
    }
}

json_object! {
    struct Destination<'a> {
        destination_id: Text<'a> = "destinationId" (required),
    }
}

json_object! {
    struct GraphFolder<'a> {
        id: Text<'a> = "id" (required),
        display_name: Option<Text<'a>> = "displayName",
        parent_folder_id: Option<Text<'a>> = "parentFolderId",
    }
}

json_object! {
    struct FolderList<'a> {
        value: Vec<GraphFolder<'a>> = "value",
    }
}

json_object! {
    struct Batch<'a> {
        requests: Vec<BatchRequest<'a>> = "requests",
        responses: Vec<BatchResponse<'a>> = "responses",
    }
}

json_object! {
    struct BatchRequest<'a> {
        id: Text<'a> = "id" (required),
        method: Text<'a> = "method" (required),
        url: Text<'a> = "url" (required),
        body: Option<&'a RawValue> = "body",
        depends_on: Vec<Text<'a>> = "dependsOn",
        // msgraph-sdk-python writes the list as `depends_on` (its `BatchRequestItem`); whether
        // Graph itself honours that spelling is unconfirmed, but the client means it, so it
        // counts as `dependsOn` does (both, when a request has both).
        depends_on_snake: Vec<Text<'a>> = "depends_on",
    }
}

json_object! {
    struct BatchResponse<'a> {
        id: Text<'a> = "id" (required),
        status: u16 = "status" (required),
        body: Option<&'a RawValue> = "body",
    }
}

/// One Graph exchange as the inspector sees it.
#[derive(Debug, Clone, Copy)]
pub struct GraphExchange<'a> {
    pub method: &'a str,
    /// Path and query after the version segment, e.g. `me/mailFolders/inbox/messages?$top=10`
    /// (a leading `/` is optional), as sent: segments are percent-decoded here.
    pub path: &'a str,
    pub status: u16,
    pub request: &'a [u8],
    pub response: &'a [u8],
}

/// One path segment, percent-decoded: Kiota-generated SDKs expand ids through URI templates,
/// which encode `=`, `+`, `/` and `@`, so `AAMk…%3D` must be the same item as `AAMk…=`.
/// Borrowed when there is nothing to decode (the common case).
fn decode_segment(segment: &str) -> Cow<'_, str> {
    if segment.contains('%') {
        Cow::Owned(percent_decode(segment))
    } else {
        Cow::Borrowed(segment)
    }
}

/// `name` and `key` of an OData key segment, `mailFolders('AQMk…')`: Graph writes its
/// `@odata.deltaLink` (and `nextLink`) that way, and the SDKs replay those links as they are.
/// `delta()` has no key and is left alone.
fn key_parts(segment: &str) -> Option<(&str, &str)> {
    let (name, key) = segment.strip_suffix(')')?.split_once('(')?;
    let key = key
        .strip_prefix('\'')
        .and_then(|k| k.strip_suffix('\''))
        .unwrap_or(key);
    (!name.is_empty() && !key.is_empty()).then_some((name, key))
}

/// Path segments, percent-decoded, with key segments split into resource and key.
fn segments(path: &str) -> Vec<Cow<'_, str>> {
    let mut out = Vec::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        match decode_segment(segment) {
            Cow::Borrowed(s) => match key_parts(s) {
                Some((name, key)) => out.extend([Cow::Borrowed(name), Cow::Borrowed(key)]),
                None => out.push(Cow::Borrowed(s)),
            },
            Cow::Owned(s) => match key_parts(&s) {
                Some((name, key)) => {
                    out.extend([Cow::Owned(name.to_owned()), Cow::Owned(key.to_owned())])
                }
                None => out.push(Cow::Owned(s)),
            },
        }
    }
    out
}

/// The lower-cased name of an action or function segment as Graph resolves it: `delta()` (the
/// SDKs' function-call form) is `delta`, and a namespace-qualified
/// `microsoft.graph.sendMail` is `sendmail`. Ids never have either form, so applying this to
/// every segment only ever changes names.
fn route_name(segment: &str) -> String {
    let mut name = segment.to_ascii_lowercase();
    if name.ends_with("()") {
        name.truncate(name.len() - 2);
    }
    match name.strip_prefix("microsoft.graph.") {
        Some(rest) => rest.to_owned(),
        None => name,
    }
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
    let (path, query) = x.path.split_once('?').unwrap_or((x.path, ""));
    let segments = segments(path);
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
    let rest: &[Cow<'_, str>] = match segments.as_slice() {
        [me, rest @ ..] if me.eq_ignore_ascii_case("me") => rest,
        [users, _, rest @ ..] if users.eq_ignore_ascii_case("users") => rest,
        _ => return Ok(out),
    };
    let lower: Vec<String> = rest.iter().map(|s| route_name(s)).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    let mailbox: Option<std::sync::Arc<str>> = mailbox.map(Into::into);
    let origin = |operation: &str| Origin {
        mailbox: mailbox.clone(),
        source: Source::Graph,
        operation: operation.into(),
    };
    let method = x.method.to_ascii_uppercase();
    match (method.as_str(), lower.as_slice()) {
        // Lists and deltas, in a folder or across the mailbox.
        ("GET", ["messages"]) => list(x.response, None, origin("list_messages"), false, &mut out)?,
        ("GET", ["messages", "delta"]) => list(
            x.response,
            None,
            origin("delta_messages"),
            is_initial_delta(query),
            &mut out,
        )?,
        ("GET", ["mailfolders", _, "messages"] | ["mailfolders", _, "messages", "delta"]) => {
            let operation = if lower.last() == Some(&"delta") {
                "delta_messages"
            } else {
                "list_messages"
            };
            let initial = operation == "delta_messages" && is_initial_delta(query);
            list(
                x.response,
                Some(&rest[1]),
                origin(operation),
                initial,
                &mut out,
            )?
        }
        ("GET", ["messages", _] | ["mailfolders", _, "messages", _]) => {
            let m: GraphMessage<'_> = from_body(x.response)?;
            let folder = (lower.len() == 4).then(|| &*rest[1]);
            out.push(seen(m, folder, origin("get_message")));
        }
        ("POST", ["sendmail"]) => {
            let send: SendMail<'_> = from_body(x.request)?;
            out.push(Observation::MessageSent {
                origin: origin("sendMail"),
                via: "sendMail".into(),
                message: fields(&send.message, None),
                draft_item_ids: Vec::new(),
                reference_item_id: None,
                saved_to_folder: (send.save_to_sent_items.0 != Some(false))
                    .then(|| "sentitems".into()),
            });
        }
        ("POST", ["messages", _, "send"]) => out.push(Observation::MessageSent {
            origin: origin("send"),
            via: "send".into(),
            message: Message::default().into(),
            draft_item_ids: vec![rest[1].to_string()],
            reference_item_id: None,
            saved_to_folder: Some("sentitems".into()),
        }),
        ("POST", ["messages", _, action @ ("reply" | "replyall" | "forward")]) => {
            let body: Option<ReplyBody<'_>> = if x.request.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                Some(from_body(x.request)?)
            };
            let via = match *action {
                "replyall" => "replyAll",
                other => other,
            };
            out.push(Observation::MessageSent {
                origin: origin(via),
                via: via.into(),
                message: body
                    .and_then(|b| b.message)
                    .map_or_else(Arc::default, |m| fields(&m, None)),
                draft_item_ids: Vec::new(),
                reference_item_id: Some(rest[1].to_string()),
                saved_to_folder: Some("sentitems".into()),
            });
        }
        ("POST", ["messages", _, action @ ("move" | "copy")]) => {
            let destination: Destination<'_> = from_body(x.request)?;
            let moved: GraphMessage<'_> = from_body(x.response)?;
            let destination = folder_name(&destination.destination_id);
            let transfer = Transfer {
                item_ids: vec![rest[1].to_string()],
                new_item_ids: vec![moved.id.map(Text::into_owned)],
                destination_folder_id: destination.id.map(String::from),
                destination_folder: destination.name.map(String::from),
            };
            out.push(Observation::transfer(
                origin(action),
                *action == "move",
                transfer,
            ));
        }
        ("PATCH", ["messages", _] | ["mailfolders", _, "messages", _]) => {
            let patch: GraphMessage<'_> = from_body(x.request)?;
            if let Some(categories) = patch.categories {
                // PATCH replaces the whole list.
                out.push(Observation::CategoriesChanged {
                    origin: origin("update_message"),
                    item_ids: vec![rest[rest.len() - 1].to_string()],
                    mode: CategoryMode::Set,
                    categories: categories.into_iter().map(Text::into_owned).collect(),
                });
            }
        }
        ("GET", ["mailfolders"] | ["mailfolders", _, "childfolders"]) => {
            let list: FolderList<'_> = from_body(x.response)?;
            let origin = origin("list_folders");
            for f in list.value {
                out.push(folder(f, None, origin.clone()));
            }
        }
        ("GET", ["mailfolders", name]) => {
            let f: GraphFolder<'_> = from_body(x.response)?;
            let well_known = WELL_KNOWN.contains(name).then(|| (*name).to_owned());
            out.push(folder(f, well_known, origin("get_folder")));
        }
        _ => {}
    }
    Ok(out)
}

/// The path and query of a batch sub-request's `url`, after the version segment. The SDKs and
/// the documentation write it relative to the version root (`me/…` or `/me/…`), with the
/// version (`/v1.0/me/…`, `beta/me/…`), or absolute (`https://graph.microsoft.com/v1.0/me/…`).
fn batch_path(url: &str) -> &str {
    let url = url.trim();
    let scheme = ["https://", "http://"].iter().find(|p| {
        url.get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p))
    });
    let url = match scheme {
        // Drop the authority; what follows its first `/` is the path.
        Some(p) => url[p.len()..].find('/').map_or("", |i| &url[p.len() + i..]),
        None => url,
    };
    let url = url.trim_start_matches('/');
    match url.split_once('/') {
        Some((version, rest))
            if version.eq_ignore_ascii_case("v1.0") || version.eq_ignore_ascii_case("beta") =>
        {
            rest
        }
        _ => url,
    }
}

/// A batch body as bytes to inspect: a JSON value is itself (the SDKs send JSON bodies as
/// objects), a string is base64 (what they send for a body that is not a JSON object). Only
/// JSON is read from a decoded body: a MIME sendMail inside a batch yields nothing yet.
/// `null`, absent, and strings that are not base64 are empty.
fn batch_body(raw: Option<&RawValue>) -> Cow<'_, [u8]> {
    let Some(raw) = raw else {
        return Cow::Borrowed(b"");
    };
    let text = raw.get();
    if text.starts_with('"') {
        serde_json::from_str::<Text<'_>>(text)
            .ok()
            .and_then(|t| BATCH_BASE64.decode(t.trim()).ok())
            .map_or(Cow::Borrowed(b""), Cow::Owned)
    } else if text == "null" {
        Cow::Borrowed(b"")
    } else {
        Cow::Borrowed(text.as_bytes())
    }
}

/// Orders `$batch` request ids as Graph matches them: not case-sensitive (JSON batching:
/// "id … Not case-sensitive"), so a `dependsOn` of `"A"` names request `"a"`.
fn cmp_batch_ids(a: &str, b: &str) -> std::cmp::Ordering {
    a.bytes()
        .map(|c| c.to_ascii_lowercase())
        .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Pending,
    /// On the current `dependsOn` path: meeting it again is a cycle.
    Visiting,
    /// Whether it succeeded (2xx, and everything it depends on did).
    Done(bool),
}

/// One `$batch`: requests and responses read, matched by `id`.
struct BatchRun<'b, 'a> {
    requests: &'b [BatchRequest<'a>],
    responses: &'b [BatchResponse<'a>],
    /// Request indexes sorted by id: lookups stay O(log n) whatever the body holds.
    by_id: Vec<usize>,
    /// The response of each request, by request index (the first one given).
    answer: Vec<Option<usize>>,
    settled: Vec<Settled>,
    mailbox: Option<String>,
}

impl BatchRun<'_, '_> {
    fn request_index(&self, id: &str) -> Option<usize> {
        self.by_id
            .binary_search_by(|&i| cmp_batch_ids(&self.requests[i].id, id))
            .ok()
            .map(|k| self.by_id[k])
    }

    /// Settles request `i`, its dependencies first, and inspects it when it and all of them
    /// succeeded: a sub-request whose dependency failed yields nothing, whatever its own status
    /// says (Graph answers 424 for it). Answers whether it succeeded.
    fn settle(&mut self, i: usize, chain: usize, out: &mut Vec<Observation>) -> bool {
        match self.settled[i] {
            Settled::Done(ok) => return ok,
            // A cycle (Graph refuses those) or a chain no batch of Graph's has.
            Settled::Visiting => return false,
            Settled::Pending if chain > MAX_DEPENDENCY_CHAIN => {
                // Settled for good, so what depends on it fails the same way whichever
                // response comes first.
                self.settled[i] = Settled::Done(false);
                return false;
            }
            Settled::Pending => {}
        }
        self.settled[i] = Settled::Visiting;
        let requests = self.requests;
        let request = &requests[i];
        let mut ok = true;
        for dependency in request.depends_on.iter().chain(&request.depends_on_snake) {
            // Every dependency is settled, not just up to the first failure, so each one's
            // observations come before those of what depends on it.
            let settled = match self.request_index(dependency) {
                Some(j) => self.settle(j, chain + 1, out),
                None => false,
            };
            ok &= settled;
        }
        let responses = self.responses;
        let response = self.answer[i].map(|r| &responses[r]);
        let ok = ok && response.is_some_and(|r| (200..300).contains(&r.status));
        if let (true, Some(response)) = (ok, response) {
            let path = batch_path(&request.url);
            let mailbox =
                super::identity::graph_user_after_version(path).or_else(|| self.mailbox.clone());
            let request_body = batch_body(request.body);
            let response_body = batch_body(response.body);
            let sub = GraphExchange {
                method: &request.method,
                path,
                status: response.status,
                request: &request_body,
                response: &response_body,
            };
            // One broken sub-exchange must not hide the others.
            if let Ok(found) = inspect(sub, mailbox, 1) {
                out.extend(found);
            }
        }
        self.settled[i] = Settled::Done(ok);
        ok
    }
}

/// A `$batch`: each sub-request with its sub-response (matched by `id`, responses in any
/// order), inspected as if sent alone, in the order Graph listed the responses except that
/// what a request `dependsOn` comes before it.
fn batch(
    x: GraphExchange<'_>,
    mailbox: Option<String>,
    out: &mut Vec<Observation>,
) -> Result<(), GraphError> {
    let requests: Batch<'_> = from_body(x.request)?;
    let responses: Batch<'_> = from_body(x.response)?;
    let (requests, responses) = (requests.requests, responses.responses);
    let mut by_id: Vec<usize> = (0..requests.len()).collect();
    by_id.sort_by(|&a, &b| cmp_batch_ids(&requests[a].id, &requests[b].id));
    let mut run = BatchRun {
        requests: &requests,
        responses: &responses,
        by_id,
        answer: vec![None; requests.len()],
        settled: vec![Settled::Pending; requests.len()],
        mailbox,
    };
    // Each response's request, found once.
    let answered: Vec<usize> = responses
        .iter()
        .enumerate()
        .filter_map(|(r, response)| {
            let i = run.request_index(&response.id)?;
            run.answer[i].get_or_insert(r);
            Some(i)
        })
        .collect();
    for i in answered {
        run.settle(i, 0, out);
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
    let page = Page {
        folder: folder.map(folder_name),
        origin,
        initial_sync,
        out,
    };
    Ok(from_body_seed(body, page)?)
}

/// A message list or delta page, read in one pass: each message of `value` becomes its
/// observation as soon as it is read, with no vector of parsed messages in between (growing
/// one moved every message's fields again). `value` absent is an empty page; given twice, an
/// error, as for any property.
struct Page<'o> {
    /// The folder of the request's path, as `folder_name` splits it, once per page.
    folder: Option<PageFolder>,
    origin: Origin,
    initial_sync: bool,
    out: &'o mut Vec<Observation>,
}

impl<'de> DeserializeSeed<'de> for Page<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Page<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object (a message list)")
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        static VALUE: Keys = Keys::new(&["value"]);
        let mut read_value = false;
        while let Some(index) = map.next_key_seed(&VALUE)? {
            if index.is_none() {
                map.next_value::<IgnoredAny>()?;
            } else if std::mem::replace(&mut read_value, true) {
                return Err(de::Error::duplicate_field("value"));
            } else {
                map.next_value_seed(Messages(&mut self))?;
            }
        }
        Ok(())
    }
}

/// The `value` array of a [`Page`].
struct Messages<'p, 'o>(&'p mut Page<'o>);

impl<'de> DeserializeSeed<'de> for Messages<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Messages<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of messages")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let page = self.0;
        while let Some(m) = seq.next_element::<GraphMessage<'de>>()? {
            if m.removed.is_none() {
                page.out.push(Observation::MessageSeen {
                    origin: page.origin.clone(),
                    message: fields(&m, page.folder.as_ref()),
                    initial_sync: page.initial_sync,
                });
            }
        }
        Ok(())
    }
}

/// A delta request without a delta or skip token starts a round from nothing: what it returns
/// is the folder's history, like an EWS SyncFolderItems without a SyncState. (Later pages of
/// that first round carry a skip token and cannot be told from an incremental round's pages
/// without per-client state; the mailbox's "process email received after" time covers them.)
/// `query` is the query string as sent: the `$` may be written `%24` (Kiota's URI templates
/// encode it) and the name may be in any case.
fn is_initial_delta(query: &str) -> bool {
    !query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or("");
        let name = name
            .strip_prefix('$')
            .or_else(|| name.strip_prefix("%24"))
            .unwrap_or(name);
        name.eq_ignore_ascii_case("deltatoken") || name.eq_ignore_ascii_case("skiptoken")
    })
}

/// The folder of a request's path: its id, or its well-known name. Shared by every message
/// of a page.
fn folder_name(segment: &str) -> PageFolder {
    let lower = segment.to_ascii_lowercase();
    if WELL_KNOWN.contains(&lower.as_str()) {
        PageFolder {
            id: None,
            name: Some(lower.into()),
        }
    } else {
        PageFolder {
            id: Some(segment.into()),
            name: None,
        }
    }
}

fn seen(m: GraphMessage<'_>, folder: Option<&str>, origin: Origin) -> Observation {
    Observation::MessageSeen {
        origin,
        message: fields(&m, folder.map(folder_name).as_ref()),
        initial_sync: false,
    }
}

/// A message's fields, all of its text packed into one block. Read in place: the parsed
/// message is large, and moving it costs more than reading it.
fn fields(m: &GraphMessage<'_>, folder: Option<&PageFolder>) -> Arc<Message> {
    pack::message(folder, |p| {
        let header = |name: &str| {
            m.internet_message_headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| &*h.value)
        };
        if let Some(value) = header("In-Reply-To") {
            p.fields.in_reply_to = p.message_id(value);
        }
        if let Some(value) = header("References") {
            p.fields.references = p.text(value);
        }
        p.fields.item_id = p.maybe_text(m.id.as_deref());
        p.fields.folder_id = p.maybe_text(m.parent_folder_id.as_deref());
        if let Some(id) = &m.internet_message_id {
            p.fields.internet_message_id = p.message_id(id);
        }
        p.fields.conversation_id = p.maybe_text(m.conversation_id.as_deref());
        p.fields.conversation_index = p.maybe_text(m.conversation_index.as_deref());
        p.fields.subject = p.maybe_text(m.subject.as_deref());
        for (role, r) in [(Role::From, &m.from), (Role::Sender, &m.sender)] {
            if let Some(r) = r {
                packed_address(p, role, r);
            }
        }
        let recipients = [
            (Role::To, &m.to_recipients),
            (Role::Cc, &m.cc_recipients),
            (Role::Bcc, &m.bcc_recipients),
        ];
        for (role, list) in recipients {
            for r in list {
                packed_address(p, role, r);
            }
        }
        if let Some(t) = &m.received_date_time {
            p.fields.received_at = p.timestamp(t);
        }
        if let Some(t) = &m.sent_date_time {
            p.fields.sent_at = p.timestamp(t);
        }
        p.fields.categories = m
            .categories
            .iter()
            .flatten()
            .map(|c| c.to_string())
            .collect();
        p.fields.is_draft = m.is_draft.0;
    })
}

/// A recipient (Graph's addresses are always SMTP), its text packed with its message's.
fn packed_address(p: &mut MessagePacker, role: Role, r: &Recipient<'_>) {
    let name = p.maybe_text(r.email_address.name.as_deref());
    let address = p.maybe_text(r.email_address.address.as_deref());
    p.address(role, name, address, Some("SMTP".into()));
}

fn folder(f: GraphFolder<'_>, well_known: Option<String>, origin: Origin) -> Observation {
    Observation::FolderSeen {
        origin,
        folder_id: f.id.into_owned(),
        folder: well_known,
        display_name: f.display_name.map(Text::into_owned),
        parent_folder_id: f.parent_folder_id.map(Text::into_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::{InspectLimits, capture_from_parts};
    use base64::engine::general_purpose::STANDARD;
    use serde_json::{Value, json};

    /// Inspects one exchange the way the proxy hands it over; observations as JSON.
    fn run(method: &str, path: &str, request: &str, status: u16, response: &str) -> Vec<Value> {
        let capture = capture_from_parts(
            method,
            path,
            &[],
            bytes::Bytes::copy_from_slice(request.as_bytes()),
            status,
            &[],
            bytes::Bytes::copy_from_slice(response.as_bytes()),
        );
        crate::inspect::inspect(&capture, InspectLimits::default())
            .unwrap()
            .observations
            .iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect()
    }

    #[test]
    fn only_a_delta_without_tokens_starts_from_nothing() {
        assert!(is_initial_delta(""));
        assert!(is_initial_delta("$select=subject"));
        assert!(is_initial_delta("%24select=subject&%24top=10"));
        assert!(!is_initial_delta("$deltatoken=abc"));
        assert!(!is_initial_delta("$top=10&$skiptoken=x"));
        assert!(!is_initial_delta("deltaToken=abc"));
        assert!(!is_initial_delta("%24deltatoken=abc"));
        assert!(!is_initial_delta("%24top=5&%24SkipToken=abc"));
    }

    #[test]
    fn pascal_case_send_mail_as_msgraph_sdk_python_writes_it() {
        let body = r#"{"Message": {"Subject": "Lunch?", "InternetMessageHeaders": [{"Name": "In-Reply-To", "Value": "<a.1@x.example>"}],
            "ToRecipients": [{"EmailAddress": {"Name": "Pat", "Address": "pat@fabrikam.example"}}],
            "CcRecipients": [{"emailAddress": {"address": "kim@contoso.example"}}]}, "SaveToSentItems": false}"#;
        let found = run("POST", "/v1.0/me/sendMail", body, 202, "");
        assert_eq!(found.len(), 1);
        let sent = &found[0];
        assert_eq!(sent["kind"], "message_sent");
        assert_eq!(sent["subject"], "Lunch?");
        assert_eq!(sent["in_reply_to"], "a.1@x.example");
        assert_eq!(sent["to"][0]["address"], "pat@fabrikam.example");
        assert_eq!(sent["to"][0]["name"], "Pat");
        assert_eq!(sent["cc"][0]["address"], "kim@contoso.example");
        assert!(sent.get("saved_to_folder").is_none(), "{sent}");
        // The namespace-qualified action name is the same action.
        let qualified = run("POST", "/v1.0/me/microsoft.graph.sendMail", body, 202, "");
        assert_eq!(qualified, found);
    }

    #[test]
    fn pascal_case_move_and_category_patch() {
        let moved = run(
            "POST",
            "/v1.0/me/messages/AAMkOne=/move",
            r#"{"DestinationId": "DeletedItems"}"#,
            201,
            r#"{"Id": "AAMkMoved=", "ParentFolderId": "AAMkDeleted="}"#,
        );
        assert_eq!(moved[0]["kind"], "message_moved");
        assert_eq!(moved[0]["new_item_ids"], json!(["AAMkMoved="]));
        assert_eq!(moved[0]["destination_folder"], "deleteditems");
        let patched = run(
            "PATCH",
            "/v1.0/me/messages/AAMkOne=",
            r#"{"Categories": ["Tracked to Dynamics 365", "Red category"], "IsRead": true}"#,
            200,
            "{}",
        );
        assert_eq!(patched[0]["kind"], "categories_changed");
        assert_eq!(
            patched[0]["categories"],
            json!(["Tracked to Dynamics 365", "Red category"])
        );
        // The same property twice in two spellings is no request Graph accepts.
        let twice = capture_from_parts(
            "PATCH",
            "/v1.0/me/messages/AAMkOne=",
            &[],
            bytes::Bytes::from_static(br#"{"categories": ["a"], "Categories": ["b"]}"#),
            200,
            &[],
            bytes::Bytes::from_static(b"{}"),
        );
        assert!(crate::inspect::inspect(&twice, InspectLimits::default()).is_err());
    }

    #[test]
    fn percent_encoded_ids_are_the_plain_ids() {
        let plain = "AAMkAD+b_c=";
        let encoded = "AAMkAD%2Bb_c%3D";
        let message = r#"{"id": "AAMkAD+b_c=", "subject": "s"}"#;
        let move_body = r#"{"destinationId": "inbox"}"#;
        let cases: [(&str, &str, &str, u16, &str); 8] = [
            ("GET", "/v1.0/me/messages/{id}", "", 200, message),
            (
                "GET",
                "/v1.0/me/mailFolders/{id}/messages/{id}",
                "",
                200,
                message,
            ),
            (
                "GET",
                "/v1.0/me/mailFolders/{id}/messages",
                "",
                200,
                r#"{"value": [{"id": "x"}]}"#,
            ),
            (
                "POST",
                "/v1.0/me/messages/{id}/move",
                move_body,
                201,
                message,
            ),
            (
                "POST",
                "/v1.0/me/messages/{id}/copy",
                move_body,
                201,
                message,
            ),
            (
                "PATCH",
                "/v1.0/me/messages/{id}",
                r#"{"categories": []}"#,
                200,
                message,
            ),
            ("POST", "/v1.0/me/messages/{id}/send", "", 202, ""),
            (
                "POST",
                "/v1.0/me/messages/{id}/replyAll",
                r#"{"Comment": "ok"}"#,
                202,
                "",
            ),
        ];
        for (method, path, request, status, response) in cases {
            let a = run(
                method,
                &path.replace("{id}", plain),
                request,
                status,
                response,
            );
            let b = run(
                method,
                &path.replace("{id}", encoded),
                request,
                status,
                response,
            );
            assert_eq!(a.len(), 1, "{method} {path}");
            assert_eq!(a, b, "{method} {path}");
            assert!(a[0].to_string().contains(r#""AAMkAD+b_c=""#), "{}", a[0]);
        }
        let folder = run(
            "GET",
            "/v1.0/me/mailFolders/AAMkFolder%3D",
            "",
            200,
            r#"{"id": "AAMkFolder=", "displayName": "Tracked"}"#,
        );
        assert_eq!(folder[0]["folder_id"], "AAMkFolder=");
        let user = run(
            "GET",
            "/v1.0/users/Kim%40contoso.example/messages/A%3D",
            "",
            200,
            "{}",
        );
        assert_eq!(user[0]["mailbox"], "kim@contoso.example");
    }

    #[test]
    fn a_page_reads_value_in_any_case_once() {
        let path = "/v1.0/me/mailFolders/inbox/messages";
        let page = r#"{"@odata.context": "x", "Value": [{"id": "AAMk1="}, {"ID": "AAMk2="}], "@odata.nextLink": "y"}"#;
        let seen = run("GET", path, "", 200, page);
        let ids: Vec<_> = seen.iter().map(|o| o["item_id"].clone()).collect();
        assert_eq!(ids, [json!("AAMk1="), json!("AAMk2=")]);
        assert!(seen.iter().all(|o| o["folder"] == "inbox"));
        assert!(run("GET", path, "", 200, r#"{"@odata.context": "x"}"#).is_empty());
        let twice = r#"{"value": [{"id": "AAMk1="}], "value": [{"id": "AAMk2="}]}"#;
        let capture = capture_from_parts(
            "GET",
            path,
            &[],
            bytes::Bytes::new(),
            200,
            &[],
            bytes::Bytes::from_static(twice.as_bytes()),
        );
        assert!(crate::inspect::inspect(&capture, InspectLimits::default()).is_err());
    }

    #[test]
    fn delta_as_a_function_call() {
        let page = r#"{"value": [{"id": "AAMkNew="}, {"id": "AAMkGone=", "@removed": {"reason": "deleted"}}],
            "@odata.deltaLink": "https://graph.microsoft.com/v1.0/me/mailFolders('inbox')/messages/delta()?$deltatoken=t"}"#;
        for path in [
            "/v1.0/me/mailFolders/inbox/messages/delta()",
            "/v1.0/me/mailFolders/Inbox/messages/delta",
            "/v1.0/users/alex%40contoso.example/mailFolders/inbox/messages/microsoft.graph.delta()?%24select=subject",
            "/v1.0/me/mailFolders/inbox/messages/delta%28%29",
        ] {
            let found = run("GET", path, "", 200, page);
            assert_eq!(found.len(), 1, "{path}");
            assert_eq!(found[0]["operation"], "delta_messages", "{path}");
            assert_eq!(found[0]["folder"], "inbox", "{path}");
            assert_eq!(found[0]["initial_sync"], true, "{path}");
        }
        for path in [
            "/v1.0/me/mailFolders/inbox/messages/delta()?%24deltatoken=abc",
            "/v1.0/me/mailFolders/inbox/messages/delta()?$skiptoken=abc",
            "/v1.0/me/messages/delta()?$deltaToken=abc",
        ] {
            let found = run("GET", path, "", 200, page);
            assert_eq!(found[0]["initial_sync"], false, "{path}");
        }
        let across = run("GET", "/v1.0/me/messages/delta()", "", 200, page);
        assert_eq!(across[0]["operation"], "delta_messages");
        // The deltaLink as Graph writes it and the SDKs replay it, with OData key segments.
        let replayed = run(
            "GET",
            "/v1.0/users('alex%40contoso.example')/mailFolders('AQMkInbox%3D')/messages/delta?$deltatoken=t",
            "",
            200,
            page,
        );
        assert_eq!(replayed[0]["operation"], "delta_messages");
        assert_eq!(replayed[0]["folder_id"], "AQMkInbox=");
        assert_eq!(replayed[0]["mailbox"], "alex@contoso.example");
        assert_eq!(replayed[0]["initial_sync"], false);
        assert_eq!(key_parts("delta()"), None);
        assert_eq!(key_parts("messages('A')"), Some(("messages", "A")));
        assert_eq!(key_parts("messages(A)"), Some(("messages", "A")));
    }

    fn batch_of(requests: Value, responses: Value) -> Vec<Value> {
        run(
            "POST",
            "/v1.0/$batch",
            &json!({ "requests": requests }).to_string(),
            200,
            &json!({ "responses": responses }).to_string(),
        )
    }

    #[test]
    fn batch_urls_in_every_form_are_the_same_request() {
        let expected = batch_of(
            json!([{"id": "1", "method": "POST", "url": "/me/messages/AAMkOne=/move",
                "body": {"destinationId": "inbox"}, "headers": {"Content-Type": "application/json"}}]),
            json!([{"id": "1", "status": 201, "body": {"id": "AAMkMoved="}}]),
        );
        assert_eq!(expected.len(), 1);
        assert_eq!(expected[0]["item_ids"], json!(["AAMkOne="]));
        for url in [
            "me/messages/AAMkOne=/move",
            "/me/messages/AAMkOne%3D/move",
            "/v1.0/me/messages/AAMkOne=/move",
            "v1.0/me/messages/AAMkOne=/move",
            "/beta/me/messages/AAMkOne=/move",
            "https://graph.microsoft.com/v1.0/me/messages/AAMkOne=/move",
            "HTTPS://graph.microsoft.com/beta/me/messages/AAMkOne%3D/move",
        ] {
            let found = batch_of(
                json!([{"id": "1", "method": "POST", "url": url, "body": {"DestinationId": "inbox"}}]),
                json!([{"id": "1", "status": 201, "body": {"id": "AAMkMoved="}}]),
            );
            assert_eq!(found, expected, "{url}");
        }
        let other_user = batch_of(
            json!([{"id": "1", "method": "GET",
                "url": "https://graph.microsoft.com/v1.0/users/kim%40contoso.example/messages/A"}]),
            json!([{"id": "1", "status": 200, "body": {"id": "A"}}]),
        );
        assert_eq!(other_user[0]["mailbox"], "kim@contoso.example");
        assert_eq!(batch_path("https://graph.microsoft.com"), "");
        assert_eq!(
            batch_path("me/messages?$filter=x eq 'http://a/b'"),
            "me/messages?$filter=x eq 'http://a/b'"
        );
    }

    #[test]
    fn batch_bodies_as_base64() {
        let request = STANDARD
            .encode(br#"{"Message": {"Subject": "From a batch"}, "SaveToSentItems": true}"#);
        let response = STANDARD.encode(br#"{"id": "AAMkMoved="}"#);
        let found = batch_of(
            json!([
                {"id": "1", "method": "POST", "url": "/me/sendMail", "body": request,
                    "headers": {"Content-Type": "application/octet-stream"}},
                {"id": "2", "method": "POST", "url": "/me/messages/A/move",
                    "body": STANDARD.encode(br#"{"destinationId": "inbox"}"#).trim_end_matches('=')},
            ]),
            json!([
                {"id": "1", "status": 202},
                {"id": "2", "status": 201, "body": response},
            ]),
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0]["subject"], "From a batch");
        assert_eq!(found[0]["saved_to_folder"], "sentitems");
        assert_eq!(found[1]["new_item_ids"], json!(["AAMkMoved="]));
        // Not base64: that sub-exchange yields nothing, the others still do.
        let found = batch_of(
            json!([
                {"id": "1", "method": "POST", "url": "/me/sendMail", "body": "not base64!"},
                {"id": "2", "method": "GET", "url": "/me/messages/A"},
            ]),
            json!([{"id": "1", "status": 202}, {"id": "2", "status": 200, "body": {"id": "A"}}]),
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0]["item_id"], "A");
    }

    #[test]
    fn batch_responses_out_of_order_match_by_id() {
        let requests = json!([
            {"id": "a", "method": "GET", "url": "me/messages/One"},
            {"id": "b", "method": "GET", "url": "me/messages/Two"},
            {"id": "c", "method": "GET", "url": "me/messages/Three"},
        ]);
        let found = batch_of(
            requests,
            json!([
                {"ID": "c", "Status": 200, "Body": {"id": "Three", "subject": "third"}},
                {"id": "a", "status": 200, "body": {"id": "One", "subject": "first"}},
                {"id": "b", "status": 404, "body": {"error": {"code": "ErrorItemNotFound"}}},
            ]),
        );
        let pairs: Vec<(&str, &str)> = found
            .iter()
            .map(|o| {
                (
                    o["item_id"].as_str().unwrap(),
                    o["subject"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(pairs, [("Three", "third"), ("One", "first")]);
    }

    #[test]
    fn a_failed_dependency_yields_nothing() {
        let requests = json!([
            {"id": "1", "method": "GET", "url": "me/messages/Gone"},
            {"id": "2", "method": "POST", "url": "me/messages/A/move", "dependsOn": ["1"],
                "body": {"destinationId": "inbox"}},
            {"id": "3", "method": "PATCH", "url": "me/messages/B", "DependsOn": ["2"],
                "body": {"categories": ["x"]}},
            {"id": "4", "method": "PATCH", "url": "me/messages/C", "dependsOn": ["missing"],
                "body": {"categories": ["x"]}},
            {"id": "5", "method": "PATCH", "url": "me/messages/D", "dependsOn": ["6"],
                "body": {"categories": ["x"]}},
            {"id": "6", "method": "PATCH", "url": "me/messages/E", "dependsOn": ["5"],
                "body": {"categories": ["x"]}},
        ]);
        // Statuses as data: even a 2xx after a failed dependency is not trusted.
        let found = batch_of(
            requests,
            json!([
                {"id": "3", "status": 200, "body": {}},
                {"id": "2", "status": 201, "body": {"id": "A2"}},
                {"id": "1", "status": 404, "body": {}},
                {"id": "4", "status": 200, "body": {}},
                {"id": "5", "status": 200, "body": {}},
                {"id": "6", "status": 200, "body": {}},
            ]),
        );
        assert!(found.is_empty(), "{found:?}");
        a_dependency_that_succeeded_comes_first("dependsOn");
    }

    /// When the dependency (listed under `key`) succeeded, it comes first whatever the
    /// response order.
    fn a_dependency_that_succeeded_comes_first(key: &str) {
        let found = batch_of(
            json!([
                {"id": "1", "method": "POST", "url": "me/messages/A/move", "body": {"destinationId": "inbox"}},
                {"id": "2", "method": "PATCH", "url": "me/messages/A2", key: ["1"],
                    "body": {"categories": ["Tracked"]}},
            ]),
            json!([
                {"id": "2", "status": 200, "body": {}},
                {"id": "1", "status": 201, "body": {"id": "A2"}},
            ]),
        );
        let kinds: Vec<&str> = found.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["message_moved", "categories_changed"]);
    }

    #[test]
    fn the_python_sdks_depends_on_spelling_is_a_dependency_too() {
        // msgraph-sdk-python serialises `BatchRequestItem.depends_on` under that name.
        let requests = json!([
            {"id": "1", "method": "GET", "url": "me/messages/Gone"},
            {"id": "2", "method": "PATCH", "url": "me/messages/B", "depends_on": ["1"],
                "body": {"categories": ["x"]}},
        ]);
        let responses = json!([
            {"id": "2", "status": 200, "body": {}},
            {"id": "1", "status": 404, "body": {}},
        ]);
        assert!(batch_of(requests, responses).is_empty());
        a_dependency_that_succeeded_comes_first("depends_on");
    }

    #[test]
    fn a_dependency_chain_longer_than_any_batch_ends() {
        let n = MAX_DEPENDENCY_CHAIN * 4;
        let requests: Vec<Value> = (0..n)
            .map(|i| {
                json!({"id": i.to_string(), "method": "GET", "url": format!("me/messages/M{i}"),
                "dependsOn": if i == 0 { json!([]) } else { json!([(i - 1).to_string()]) }})
            })
            .collect();
        let responses: Vec<Value> = (0..n)
            .rev()
            .map(|i| json!({"id": i.to_string(), "status": 200, "body": {"id": format!("M{i}")}}))
            .collect();
        // Responses listed from the end of the chain: settling the first one would go n deep;
        // the bound cuts it, and what hangs on a cut request yields nothing.
        let reversed = batch_of(json!(requests.clone()), json!(responses.clone()));
        // Each cut drops the MAX + 1 requests above it and settles the one it cut failed.
        let cuts = 3;
        assert_eq!(
            reversed.len(),
            n - cuts * (MAX_DEPENDENCY_CHAIN + 2),
            "{} of {n} inspected",
            reversed.len()
        );
        // Listed from the start, each dependency is already settled: nothing is cut.
        let forward: Vec<Value> = responses.into_iter().rev().collect();
        assert_eq!(batch_of(json!(requests), json!(forward)).len(), n);
    }

    #[test]
    fn batch_ids_match_whatever_their_case() {
        let found = batch_of(
            json!([
                {"id": "a", "method": "POST", "url": "/me/messages/A1/move",
                    "body": {"destinationId": "archive"}},
                {"id": "B", "method": "PATCH", "url": "me/messages/A2", "dependsOn": ["A"],
                    "body": {"categories": ["Tracked"]}},
            ]),
            json!([
                {"id": "b", "status": 200, "body": {}},
                {"id": "A", "status": 201, "body": {"id": "A2"}},
            ]),
        );
        let kinds: Vec<&str> = found.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["message_moved", "categories_changed"]);
    }
}
