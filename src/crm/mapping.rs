//! Mapping: a track decision (plus what enrichment fetched) becomes the sink-neutral
//! [`TrackedEmail`] document, and that becomes the Dataverse `email` body (columns, activity
//! parties, regarding bind, status). The synchronized-fields table is data
//! (`src/crm/fields.toml`, replaceable with `crm.fields`).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::directory::model::Lookup;
use crate::rules::decision::{AutoCreate, Decision, Direction, Party};

/// The embedded synchronized-fields table.
pub const DEFAULT_FIELDS: &str = include_str!("fields.toml");

/// Longest values Dataverse accepts (`email.subject`, `email.messageid`).
const MAX_SUBJECT: usize = 800;
const MAX_MESSAGE_ID: usize = 320;

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("fields table {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("fields table {origin}: {table}[{index}] ({outlook}): {problem}; {fix}")]
    Invalid {
        origin: String,
        table: &'static str,
        index: usize,
        outlook: String,
        problem: String,
        fix: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncDirection {
    TwoWay,
    ToCrm,
    ToOutlook,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Settable {
    Any,
    TwoWayOnly,
    Fixed,
}

/// One synchronized field: the Outlook field, the Dataverse column(s), the direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMap {
    pub outlook: String,
    pub crm: String,
    pub direction: SyncDirection,
    pub settable: Settable,
}

/// Which columns of a tracked email are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailColumns {
    pub subject: bool,
    pub description: bool,
    pub directioncode: bool,
    pub messageid: bool,
    pub parties: bool,
    pub regarding: bool,
    pub status: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldTable {
    pub email: EmailColumns,
    #[serde(default)]
    pub appointment: Vec<FieldMap>,
    #[serde(default)]
    pub contact: Vec<FieldMap>,
    #[serde(default)]
    pub task: Vec<FieldMap>,
}

impl FieldTable {
    pub fn embedded() -> FieldTable {
        // Checked by a unit test; a broken embedded table is a build defect.
        FieldTable::parse(DEFAULT_FIELDS, "embedded").unwrap_or_else(|_| FieldTable {
            email: EmailColumns {
                subject: true,
                description: true,
                directioncode: true,
                messageid: true,
                parties: true,
                regarding: true,
                status: true,
            },
            appointment: Vec::new(),
            contact: Vec::new(),
            task: Vec::new(),
        })
    }

    /// Parses and checks a fields table: known directions, settable rules kept, no field
    /// listed twice.
    pub fn parse(text: &str, origin: &str) -> Result<FieldTable, MappingError> {
        let table: FieldTable = toml::from_str(text).map_err(|e| MappingError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        for (name, maps) in [
            ("appointment", &table.appointment),
            ("contact", &table.contact),
            ("task", &table.task),
        ] {
            let mut seen = std::collections::HashSet::new();
            for (index, map) in maps.iter().enumerate() {
                let invalid = |problem: String, fix| MappingError::Invalid {
                    origin: origin.to_owned(),
                    table: name,
                    index,
                    outlook: map.outlook.clone(),
                    problem,
                    fix,
                };
                if map.outlook.trim().is_empty() || map.crm.trim().is_empty() {
                    return Err(invalid(
                        "outlook and crm must not be empty".into(),
                        "name the Outlook field and the Dataverse column",
                    ));
                }
                if !seen.insert(map.outlook.to_lowercase()) {
                    return Err(invalid(
                        "is listed twice".into(),
                        "keep one entry per Outlook field",
                    ));
                }
                let allowed = match map.settable {
                    Settable::Any => true,
                    Settable::TwoWayOnly => {
                        matches!(map.direction, SyncDirection::TwoWay | SyncDirection::None)
                    }
                    Settable::Fixed => map.direction == SyncDirection::TwoWay,
                };
                if !allowed {
                    return Err(invalid(
                        format!(
                            "direction {:?} is not allowed for a {:?} field",
                            map.direction, map.settable
                        ),
                        "two_way_only fields are two_way or none; fixed fields stay two_way",
                    ));
                }
            }
        }
        Ok(table)
    }
}

/// How much of the body reaches the CRM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyPolicy {
    /// The body as Exchange has it (HTML when it is HTML).
    #[default]
    Full,
    /// Plain text only.
    Text,
    /// No body at all.
    None,
}

pub use crate::exchange::Body;

/// One activity party of the written email.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityParty {
    /// 1 sender, 2 to, 3 cc, 4 bcc.
    pub participationtypemask: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<crate::common::shared::SharedStr>,
    /// The resolved record; `None` for an unresolved address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Lookup>,
}

/// What kind of write a document asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Create the email if it is not there yet (create-only upsert).
    Create,
    /// The email exists; link it to another regarding record.
    UpdateRegarding,
}

/// The sink-neutral document of one tracked email: what the webhook posts and the journal
/// stores (README documents it), and what the Dataverse body is made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackedEmail {
    /// The CRM email id (`activityid`).
    pub id: Uuid,
    /// The outbox dedup key (the webhook's idempotency key).
    pub key: Uuid,
    pub action: Action,
    /// The rule that tracked it.
    pub reason: String,
    pub direction: Direction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Body>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parties: Vec<ActivityParty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regarding: Option<Lookup>,
    /// The mailbox owner (`systemuser` or `queue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Lookup>,
    /// A contact or lead to create first, for an unresolved sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_create: Option<AutoCreate>,
    /// `email.correlationmethod` when it correlated with a CRM email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_method: Option<u8>,
    /// 3 Sent (outgoing) or 4 Received (incoming), with statecode 1 Completed.
    pub statuscode: u8,
    /// The mailbox owner's Entra object id, for `CallerObjectId` (not part of the document).
    #[serde(skip)]
    pub caller: Option<Uuid>,
    /// The steps of its delivery the CRM already confirmed (bits of
    /// `crm::dataverse::step`), so a retry resumes at the one that failed (not part of the
    /// document).
    #[serde(skip)]
    pub steps_done: u8,
}

impl TrackedEmail {
    /// Binds an existing CRM record in place of the one this document would auto-create (the
    /// duplicate check found one row with the sender's address), or, with `None` (it found
    /// several), leaves the sender unresolved; either way the create is dropped.
    pub fn bind_existing(&mut self, existing: Option<Uuid>) {
        let Some(created) = self.auto_create.take() else {
            return;
        };
        for party in &mut self.parties {
            let is_created = party
                .record
                .as_ref()
                .is_some_and(|r| r.id == created.id && r.entity == created.entity);
            if is_created {
                match existing {
                    Some(id) => {
                        if let Some(record) = &mut party.record {
                            record.id = id;
                        }
                    }
                    None => party.record = None,
                }
            }
        }
    }
}

/// Why a decision cannot be mapped (it then goes to dead letter).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnmappableError {
    #[error("the decision has no CRM id (the Message-ID was never seen or fetched)")]
    NoCrmId,
    #[error("the decision has no direction")]
    NoDirection,
}

/// Builds the document from a decision and the fetched body.
pub fn tracked_email(
    decision: &Decision,
    key: Uuid,
    body: Option<Body>,
    policy: BodyPolicy,
) -> Result<TrackedEmail, UnmappableError> {
    let id = decision.crm_id.ok_or(UnmappableError::NoCrmId)?;
    let direction = decision.direction.ok_or(UnmappableError::NoDirection)?;
    let mut parties = Vec::new();
    if let Some(from) = &decision.from {
        let mut sender = party_rows(1, from);
        // The auto-created record stands in for the unresolved sender.
        if let Some(created) = &decision.auto_create
            && from.records.is_empty()
        {
            sender = vec![ActivityParty {
                participationtypemask: 1,
                address: from.address.clone(),
                record: Some(Lookup::new(&created.entity, created.id)),
            }];
        }
        parties.extend(sender);
    }
    for (mask, list) in [(2, &decision.to), (3, &decision.cc), (4, &decision.bcc)] {
        for p in list {
            parties.extend(party_rows(mask, p));
        }
    }
    let body = match policy {
        BodyPolicy::None => None,
        BodyPolicy::Full => body,
        BodyPolicy::Text => body.map(|b| Body {
            content: if b.content_type == "html" {
                html_to_text(&b.content)
            } else {
                b.content
            },
            content_type: "text".into(),
        }),
    };
    Ok(TrackedEmail {
        id,
        key,
        action: if decision.update_regarding {
            Action::UpdateRegarding
        } else {
            Action::Create
        },
        reason: decision.reason.as_str().to_owned(),
        direction,
        subject: decision
            .subject
            .as_deref()
            .map(|s| cut_chars(s, MAX_SUBJECT)),
        message_id: decision
            .internet_message_id
            .as_deref()
            .map(|m| cut_chars(&format!("<{m}>"), MAX_MESSAGE_ID)),
        body,
        parties,
        regarding: decision.regarding.clone(),
        owner: decision.user.clone(),
        auto_create: decision.auto_create.clone(),
        correlation_method: decision.correlation.as_ref().map(|c| c.method.code()),
        statuscode: if direction.is_outgoing() { 3 } else { 4 },
        caller: None,
        steps_done: 0,
    })
}

/// A party becomes one row per resolved record (recipients resolve to all matches), or one
/// unresolved row with only the address.
fn party_rows(mask: u8, party: &Party) -> Vec<ActivityParty> {
    if party.records.is_empty() {
        return match &party.address {
            Some(a) => vec![ActivityParty {
                participationtypemask: mask,
                address: Some(a.clone()),
                record: None,
            }],
            None => Vec::new(),
        };
    }
    party
        .records
        .iter()
        .map(|r| ActivityParty {
            participationtypemask: mask,
            address: party.address.clone(),
            record: Some(r.clone()),
        })
        .collect()
}

fn cut_chars(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Text of an HTML body: tags dropped, block ends as line breaks, common entities decoded.
/// Good enough for a CRM description; not a renderer.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    let mut skipping: Option<&str> = None;
    while let Some(open) = rest.find('<') {
        if skipping.is_none() {
            out.push_str(&rest[..open]);
        }
        let Some(close) = rest[open..].find('>') else {
            rest = "";
            break;
        };
        let tag = rest[open + 1..open + close].trim().to_ascii_lowercase();
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        match (skipping, tag.starts_with('/')) {
            (Some(s), true) if s == name => skipping = None,
            (None, false) if name == "style" || name == "script" || name == "head" => {
                skipping = Some(match name.as_str() {
                    "style" => "style",
                    "script" => "script",
                    _ => "head",
                })
            }
            (None, _)
                if matches!(
                    name.as_str(),
                    "br" | "p" | "div" | "li" | "tr" | "h1" | "h2" | "h3"
                ) && !out.ends_with('\n')
                    && !out.is_empty() =>
            {
                out.push('\n');
            }
            _ => {}
        }
        rest = &rest[open + close + 1..];
    }
    if skipping.is_none() {
        out.push_str(rest);
    }
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    decoded.trim().to_owned()
}

/// The Dataverse entity set of a table (`contact` → `contacts`, `opportunity` →
/// `opportunities`). The standard tables follow this; custom tables with another set name
/// need it configured (a known gap).
pub use crate::directory::tables::entity_set;

/// The body of `PATCH /emails(<id>)` for a create: the columns switched on in the fields
/// table, the parties as a deep insert, the regarding bind. Status is a second write
/// ([`status_body`]): Dataverse creates activities open.
pub fn dataverse_email(email: &TrackedEmail, columns: &EmailColumns) -> serde_json::Value {
    let mut body = serde_json::Map::new();
    if columns.subject
        && let Some(s) = &email.subject
    {
        body.insert("subject".into(), s.clone().into());
    }
    if columns.description
        && let Some(b) = &email.body
    {
        body.insert("description".into(), b.content.clone().into());
    }
    if columns.directioncode {
        body.insert("directioncode".into(), email.direction.is_outgoing().into());
    }
    if columns.messageid
        && let Some(m) = &email.message_id
    {
        body.insert("messageid".into(), m.clone().into());
    }
    if columns.regarding
        && let Some(r) = &email.regarding
    {
        body.insert(
            format!("regardingobjectid_{}_email@odata.bind", r.entity),
            format!("/{}({})", entity_set(&r.entity), r.id).into(),
        );
    }
    if columns.parties && !email.parties.is_empty() {
        let parties: Vec<serde_json::Value> = email
            .parties
            .iter()
            .map(|p| {
                let mut row = serde_json::Map::new();
                row.insert(
                    "participationtypemask".into(),
                    p.participationtypemask.into(),
                );
                if let Some(a) = &p.address {
                    row.insert("addressused".into(), (&**a).into());
                }
                if let Some(r) = &p.record {
                    row.insert(
                        format!("partyid_{}@odata.bind", r.entity),
                        format!("/{}({})", entity_set(&r.entity), r.id).into(),
                    );
                }
                serde_json::Value::Object(row)
            })
            .collect();
        body.insert("email_activity_parties".into(), parties.into());
    }
    serde_json::Value::Object(body)
}

/// The second write of a create: completed, sent or received.
pub fn status_body(email: &TrackedEmail) -> serde_json::Value {
    serde_json::json!({ "statecode": 1, "statuscode": email.statuscode })
}

/// The body that reopens a closed email (open, draft) so its regarding can change.
pub fn reopen_body() -> serde_json::Value {
    serde_json::json!({ "statecode": 0, "statuscode": 1 })
}

/// The body of a regarding update.
pub fn regarding_body(email: &TrackedEmail) -> serde_json::Value {
    let mut body = serde_json::Map::new();
    if let Some(r) = &email.regarding {
        body.insert(
            format!("regardingobjectid_{}_email@odata.bind", r.entity),
            format!("/{}({})", entity_set(&r.entity), r.id).into(),
        );
    }
    serde_json::Value::Object(body)
}

/// The body that creates an auto-created contact or lead.
pub fn auto_create_body(created: &AutoCreate) -> serde_json::Value {
    let mut body = serde_json::Map::new();
    if let Some(first) = &created.firstname {
        body.insert("firstname".into(), first.clone().into());
    }
    body.insert("lastname".into(), created.lastname.clone().into());
    body.insert("emailaddress1".into(), created.address.clone().into());
    serde_json::Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::decision::{Reason, Verdict};

    fn decision() -> Decision {
        serde_json::from_value(serde_json::json!({
            "verdict": "track", "reason": "sender_contact", "observation": "message_seen",
            "operation": "GetItem", "mailbox": "alex@contoso.example",
            "user": {"entity": "systemuser", "id": "00000000-0000-0000-0000-000000000001"},
            "internet_message_id": "a@b", "subject": "Hi", "direction": "incoming",
            "from": {"address": "pat@f.example", "records": [{"entity": "contact", "id": "00000000-0000-0000-0000-000000000002"}]},
            "to": [{"address": "alex@contoso.example", "records": [{"entity": "systemuser", "id": "00000000-0000-0000-0000-000000000001"}]},
                   {"address": "nobody@x.example"}],
            "regarding": {"entity": "account", "id": "00000000-0000-0000-0000-000000000003"},
            "crm_id": "00000000-0000-0000-0000-00000000000a"
        }))
        .unwrap()
    }

    #[test]
    fn the_embedded_fields_table_is_valid() {
        let t = FieldTable::parse(DEFAULT_FIELDS, "embedded").unwrap();
        assert!(t.email.subject && t.email.parties);
        assert!(t.contact.iter().any(|f| f.crm == "emailaddress1"));
        assert_eq!(t.task.len(), 9);
    }

    #[test]
    fn fields_tables_that_break_the_settable_rule_are_refused() {
        let bad = DEFAULT_FIELDS.replacen(
            "crm = \"fullname\"\ndirection = \"two_way\"",
            "crm = \"fullname\"\ndirection = \"to_crm\"",
            1,
        );
        let e = FieldTable::parse(&bad, "f.toml").unwrap_err().to_string();
        assert!(e.contains("contact[0] (Full Name)"), "{e}");
        assert!(FieldTable::parse("[email]\nsubject = 1", "x").is_err());
    }

    #[test]
    fn an_incoming_email_maps_to_parties_regarding_and_status() {
        let d = decision();
        assert_eq!(d.verdict, Verdict::Track);
        assert_eq!(d.reason, Reason::SenderContact);
        let e = tracked_email(&d, Uuid::nil(), None, BodyPolicy::Full).unwrap();
        assert_eq!(e.statuscode, 4);
        assert_eq!(e.message_id.as_deref(), Some("<a@b>"));
        let body = dataverse_email(&e, &FieldTable::embedded().email);
        assert_eq!(body["directioncode"], false);
        assert_eq!(
            body["regardingobjectid_account_email@odata.bind"],
            "/accounts(00000000-0000-0000-0000-000000000003)"
        );
        let parties = body["email_activity_parties"].as_array().unwrap();
        assert_eq!(parties.len(), 3);
        assert_eq!(parties[0]["participationtypemask"], 1);
        assert_eq!(
            parties[0]["partyid_contact@odata.bind"],
            "/contacts(00000000-0000-0000-0000-000000000002)"
        );
        assert_eq!(parties[2]["addressused"], "nobody@x.example");
        assert!(parties[2].get("partyid_contact@odata.bind").is_none());
        assert_eq!(status_body(&e)["statuscode"], 4);
    }

    #[test]
    fn body_policy_decides_what_is_sent() {
        let d = decision();
        let html = Body {
            content_type: "html".into(),
            content: "<html><head><style>p{}</style></head><body><p>Hello&nbsp;Pat</p><p>Bye &amp; thanks</p></body></html>".into(),
        };
        let full = tracked_email(&d, Uuid::nil(), Some(html.clone()), BodyPolicy::Full).unwrap();
        assert_eq!(full.body.as_ref().unwrap().content, html.content);
        let text = tracked_email(&d, Uuid::nil(), Some(html.clone()), BodyPolicy::Text).unwrap();
        assert_eq!(text.body.unwrap().content, "Hello Pat\nBye & thanks");
        // Only the element's own end tag ends a skipped head, style or script.
        assert_eq!(
            html_to_text("<head><title>T</title>not shown</head><p>Hi</p>"),
            "Hi"
        );
        let none = tracked_email(&d, Uuid::nil(), Some(html), BodyPolicy::None).unwrap();
        assert!(none.body.is_none());
        let columns = EmailColumns {
            description: false,
            ..FieldTable::embedded().email
        };
        assert!(
            dataverse_email(&full, &columns)
                .get("description")
                .is_none()
        );
    }

    #[test]
    fn columns_switched_off_in_the_fields_table_are_not_written() {
        let e = tracked_email(&decision(), Uuid::nil(), None, BodyPolicy::Full).unwrap();
        let all = FieldTable::embedded().email;
        let written = dataverse_email(&e, &all);
        for column in [
            "subject",
            "directioncode",
            "messageid",
            "email_activity_parties",
        ] {
            assert!(written.get(column).is_some(), "{column} written");
        }
        let none = EmailColumns {
            subject: false,
            description: false,
            directioncode: false,
            messageid: false,
            parties: false,
            regarding: false,
            status: false,
        };
        assert_eq!(dataverse_email(&e, &none), serde_json::json!({}));
        // An email without parties writes no empty collection.
        let mut no_parties = e.clone();
        no_parties.parties.clear();
        assert!(
            dataverse_email(&no_parties, &all)
                .get("email_activity_parties")
                .is_none()
        );
    }

    #[test]
    fn html_to_text_drops_head_style_and_script_and_breaks_blocks() {
        for (html, text) in [
            ("<script>alert(1)</script><p>A</p>", "A"),
            ("<STYLE type=\"text/css\">p{}</STYLE>B", "B"),
            ("<head><title>T</title></head>C", "C"),
            ("<script>x</script><style>y</style>D", "D"),
            (
                "<p>one</p><p>two</p><div>three<br>four</div>",
                "one\ntwo\nthree\nfour",
            ),
            ("<ul><li>a</li><li>b</li></ul>", "a\nb"),
            (
                "<b>bold</b> &lt;tag&gt; &quot;q&quot; &#39;s&#39; &amp;amp;",
                "bold <tag> \"q\" 's' &amp;",
            ),
            ("no tags at all", "no tags at all"),
            ("cut <b", "cut"),
        ] {
            assert_eq!(html_to_text(html), text, "{html}");
        }
    }

    #[test]
    fn entity_sets_follow_dataverse_plurals() {
        assert_eq!(entity_set("contact"), "contacts");
        assert_eq!(entity_set("opportunity"), "opportunities");
        assert_eq!(entity_set("systemuser"), "systemusers");
        assert_eq!(entity_set("address"), "addresses");
    }

    #[test]
    fn an_unresolved_sender_binds_the_auto_created_record() {
        let mut d = decision();
        d.from = Some(Party {
            address: Some("lee@n.example".into()),
            name: None,
            records: Default::default(),
        });
        d.auto_create = Some(AutoCreate {
            entity: "lead".into(),
            id: Uuid::from_u128(9),
            address: "lee@n.example".into(),
            firstname: Some("Lee".into()),
            lastname: "N".into(),
        });
        let e = tracked_email(&d, Uuid::nil(), None, BodyPolicy::Full).unwrap();
        assert_eq!(
            e.parties[0].record,
            Some(Lookup::new("lead", Uuid::from_u128(9)))
        );
        assert_eq!(
            auto_create_body(e.auto_create.as_ref().unwrap())["lastname"],
            "N"
        );
        d.crm_id = None;
        assert_eq!(
            tracked_email(&d, Uuid::nil(), None, BodyPolicy::Full).unwrap_err(),
            UnmappableError::NoCrmId
        );
    }

    /// A document whose sender is an auto-created lead (id 9), with a To party that is a
    /// contact of the same id and another that is a lead of another id: neither is the created
    /// record.
    fn auto_created_sender() -> TrackedEmail {
        let mut d = decision();
        d.from = Some(Party {
            address: Some("lee@n.example".into()),
            name: None,
            records: Default::default(),
        });
        d.to = vec![
            Party {
                address: Some("same-id@x.example".into()),
                name: None,
                records: smallvec::smallvec![Lookup::new("contact", Uuid::from_u128(9))],
            },
            Party {
                address: Some("other-lead@x.example".into()),
                name: None,
                records: smallvec::smallvec![Lookup::new("lead", Uuid::from_u128(10))],
            },
        ];
        d.auto_create = Some(AutoCreate {
            entity: "lead".into(),
            id: Uuid::from_u128(9),
            address: "lee@n.example".into(),
            firstname: None,
            lastname: "N".into(),
        });
        tracked_email(&d, Uuid::nil(), None, BodyPolicy::Full).unwrap()
    }

    #[test]
    fn binding_an_existing_record_replaces_only_the_created_one_and_drops_the_create() {
        let untouched = |e: &TrackedEmail| {
            assert_eq!(
                e.parties[1].record,
                Some(Lookup::new("contact", Uuid::from_u128(9)))
            );
            assert_eq!(
                e.parties[2].record,
                Some(Lookup::new("lead", Uuid::from_u128(10)))
            );
        };
        let mut one = auto_created_sender();
        one.bind_existing(Some(Uuid::from_u128(77)));
        assert!(one.auto_create.is_none(), "nothing is created");
        assert_eq!(
            one.parties[0].record,
            Some(Lookup::new("lead", Uuid::from_u128(77)))
        );
        assert_eq!(one.parties[0].address.as_deref(), Some("lee@n.example"));
        untouched(&one);

        let mut several = auto_created_sender();
        several.bind_existing(None);
        assert!(several.auto_create.is_none());
        assert_eq!(several.parties[0].record, None, "left unresolved");
        assert_eq!(several.parties[0].address.as_deref(), Some("lee@n.example"));
        untouched(&several);

        // Without an auto-create there is nothing to bind.
        let mut plain = tracked_email(&decision(), Uuid::nil(), None, BodyPolicy::Full).unwrap();
        let before = plain.clone();
        plain.bind_existing(Some(Uuid::from_u128(77)));
        assert_eq!(plain, before);
    }

    #[test]
    fn a_fields_entry_needs_both_its_outlook_field_and_its_column() {
        for (outlook, crm) in [("", "fullname"), ("Full Name", " "), ("", "")] {
            let table = format!(
                "[email]\nsubject = true\ndescription = true\ndirectioncode = true\nmessageid = true\nparties = true\nregarding = true\nstatus = true\n[[contact]]\noutlook = \"{outlook}\"\ncrm = \"{crm}\"\ndirection = \"two_way\"\nsettable = \"any\"\n"
            );
            let e = FieldTable::parse(&table, "f.toml").unwrap_err().to_string();
            assert!(e.contains("must not be empty"), "{outlook:?}/{crm:?}: {e}");
        }
    }
}
