//! What the rules decide about one message: track or ignore, the reason code, and everything
//! delivery needs to write the CRM email (direction, parties, regarding, correlation,
//! auto-create, the deterministic CRM id). Serialised as one JSON object per decision — the
//! contract of `trackgate replay` and `POST /explain`.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use uuid::Uuid;

use crate::common::shared::SharedStr;
use crate::directory::model::Lookup;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Track,
    Ignore,
}

/// Why: a bounded set of codes, used as metric labels (README lists them with their meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    // Track.
    FolderRule,
    Category,
    ReplyInReplyTo,
    ReplyTrackingToken,
    ReplyConversation,
    ReplySmartMatch,
    FilterAll,
    SenderContact,
    SenderAccount,
    SenderLead,
    SenderEmailEnabled,
    RecipientContact,
    RecipientAccount,
    RecipientLead,
    RecipientEmailEnabled,
    /// The traffic did not show enough to apply the filter (a draft or reply sent by id):
    /// delivery fetches the message and decides again with its full content.
    NeedsEnrichment,
    // Ignore.
    UnknownMailbox,
    AlreadyTracked,
    AlreadyDecided,
    NotSavedToSentItems,
    FilterNone,
    NotAReply,
    SenderUnresolved,
    SenderNotShown,
    SenderNotInFilter,
    RecipientsNotInFilter,
    NotInInbox,
    FolderUnknown,
    InitialSyncHistory,
    ReceivedBeforeCutoff,
    DeliveryDisabled,
    OwnerDisabled,
    SentNotAutoTracked,
    InternalEmail,
    Draft,
    NotAnEmail,
    CategoryRemoved,
    NoTrackingCategory,
    CategoryTrackingOff,
    NotTrackedFolder,
    MovedIntoInbox,
    FolderOutsideInbox,
    /// A party matches one of the mailbox owner's exclusions (senders or domains never
    /// tracked).
    ExcludedByUser,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FolderRule => "folder_rule",
            Reason::Category => "category",
            Reason::ReplyInReplyTo => "reply_in_reply_to",
            Reason::ReplyTrackingToken => "reply_tracking_token",
            Reason::ReplyConversation => "reply_conversation",
            Reason::ReplySmartMatch => "reply_smart_match",
            Reason::FilterAll => "filter_all",
            Reason::SenderContact => "sender_contact",
            Reason::SenderAccount => "sender_account",
            Reason::SenderLead => "sender_lead",
            Reason::SenderEmailEnabled => "sender_email_enabled",
            Reason::RecipientContact => "recipient_contact",
            Reason::RecipientAccount => "recipient_account",
            Reason::RecipientLead => "recipient_lead",
            Reason::RecipientEmailEnabled => "recipient_email_enabled",
            Reason::NeedsEnrichment => "needs_enrichment",
            Reason::UnknownMailbox => "unknown_mailbox",
            Reason::AlreadyTracked => "already_tracked",
            Reason::AlreadyDecided => "already_decided",
            Reason::NotSavedToSentItems => "not_saved_to_sent_items",
            Reason::FilterNone => "filter_none",
            Reason::NotAReply => "not_a_reply",
            Reason::SenderUnresolved => "sender_unresolved",
            Reason::SenderNotShown => "sender_not_shown",
            Reason::SenderNotInFilter => "sender_not_in_filter",
            Reason::RecipientsNotInFilter => "recipients_not_in_filter",
            Reason::NotInInbox => "not_in_inbox",
            Reason::FolderUnknown => "folder_unknown",
            Reason::InitialSyncHistory => "initial_sync_history",
            Reason::ReceivedBeforeCutoff => "received_before_cutoff",
            Reason::DeliveryDisabled => "delivery_disabled",
            Reason::OwnerDisabled => "owner_disabled",
            Reason::SentNotAutoTracked => "sent_not_auto_tracked",
            Reason::InternalEmail => "internal_email",
            Reason::Draft => "draft",
            Reason::NotAnEmail => "not_an_email",
            Reason::CategoryRemoved => "category_removed",
            Reason::NoTrackingCategory => "no_tracking_category",
            Reason::CategoryTrackingOff => "category_tracking_off",
            Reason::NotTrackedFolder => "not_tracked_folder",
            Reason::MovedIntoInbox => "moved_into_inbox",
            Reason::FolderOutsideInbox => "folder_outside_inbox",
            Reason::ExcludedByUser => "excluded_by_user",
        }
    }

    pub fn verdict(self) -> Verdict {
        if self <= Reason::NeedsEnrichment {
            Verdict::Track
        } else {
            Verdict::Ignore
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Incoming,
    Outgoing,
}

impl Direction {
    pub fn is_outgoing(self) -> bool {
        self == Direction::Outgoing
    }
}

/// How a message correlated with an email already in the CRM (`email.correlationmethod`:
/// in_reply_to 3, tracking_token 4, conversation_index/conversation_id 5, smart_matching 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrelationMethod {
    InReplyTo,
    TrackingToken,
    ConversationIndex,
    ConversationId,
    SmartMatching,
}

impl CorrelationMethod {
    pub fn code(self) -> u8 {
        match self {
            CorrelationMethod::InReplyTo => 3,
            CorrelationMethod::TrackingToken => 4,
            CorrelationMethod::ConversationIndex | CorrelationMethod::ConversationId => 5,
            CorrelationMethod::SmartMatching => 6,
        }
    }

    pub fn reason(self) -> Reason {
        match self {
            CorrelationMethod::InReplyTo => Reason::ReplyInReplyTo,
            CorrelationMethod::TrackingToken => Reason::ReplyTrackingToken,
            CorrelationMethod::ConversationIndex | CorrelationMethod::ConversationId => {
                Reason::ReplyConversation
            }
            CorrelationMethod::SmartMatching => Reason::ReplySmartMatch,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correlation {
    pub method: CorrelationMethod,
    /// The CRM email it correlated with, when known (a message tracked moments ago through the
    /// gateway has only its CRM id, which is the same thing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activityid: Option<Uuid>,
}

/// A sender or recipient: the address as used, and the CRM rows it resolved to (none when
/// unresolved).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    /// Shared with the message's address when it needed no normalising (as the name always is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<SharedStr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<SharedStr>,
    /// Held inline for the usual one record.
    #[serde(default, skip_serializing_if = "SmallVec::is_empty")]
    pub records: SmallVec<[Lookup; 1]>,
}

/// Which rule supplied the regarding record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegardingSource {
    FolderRule,
    Correlation,
}

/// A contact or lead to create for an unresolved sender before the email that binds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoCreate {
    /// `contact` or `lead`.
    pub entity: String,
    /// UUIDv5 of the organisation and the lower-cased address: every mailbox that tracks mail
    /// from this sender derives the same id, so the CRM gets one record.
    pub id: Uuid,
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firstname: Option<String>,
    pub lastname: String,
}

/// What one observation decided: one decision for most, one per item for moves, copies and
/// category changes, none for folders. Held inline for the common one, so an observation the
/// rules ignore costs no allocation for its answer.
pub type Decisions = SmallVec<[Decision; 1]>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    /// The observation kind and the operation it came from (shared with the observation's
    /// origin, as is the mailbox: a decision copies neither).
    pub observation: Cow<'static, str>,
    pub operation: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<Arc<str>>,
    /// The mailbox owner: `systemuser` or `queue`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Lookup>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_id: Option<SharedStr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internet_message_id: Option<SharedStr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<SharedStr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// The user or queue whose filter accepted the message (`email.acceptingentityid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_by: Option<Lookup>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Party>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Party>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<Party>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<Party>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regarding: Option<Lookup>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regarding_source: Option<RegardingSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation: Option<Correlation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_create: Option<AutoCreate>,
    /// The CRM email id: UUIDv5 of (organisation, Message-ID, direction), or the id the CRM or
    /// the memory already holds. `None` until the Message-ID is known (delivery then fetches
    /// the message and derives it the same way), and on ignores that are not explained:
    /// nothing is written for them, and the SHA-1 is most of a decision's cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crm_id: Option<Uuid>,
    /// The traffic did not show the message (a move, category change or send of an item never
    /// seen): delivery fetches it from Exchange before mapping.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_enrichment: bool,
    /// Already in the CRM, but the folder rule now links it to another record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub update_regarding: bool,
    /// The reasoning, step by step (only for explain and replay).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub explanation: Vec<String>,
}

impl Decision {
    pub fn is_track(&self) -> bool {
        self.verdict == Verdict::Track
    }
}

/// Namespace of every id trackgate derives (a random v4 fixed forever).
const NAMESPACE: Uuid = Uuid::from_u128(0x5b1f_0c3e_9a4d_4e27_b8f3_6d2a_1c9e_7f40);

/// The CRM id of a tracked email: one per (organisation, Message-ID, direction), whichever
/// mailbox or protocol it was seen through. Dataverse dedupes the same way (CheckPromoteEmail
/// keys on Message-ID and direction), so one customer mail to two users is one activity.
pub fn email_id(organization: Uuid, message_id: &str, direction: Direction) -> Uuid {
    let dir: &[u8] = if direction.is_outgoing() {
        b"out"
    } else {
        b"in"
    };
    v5(&[
        organization
            .hyphenated()
            .encode_lower(&mut [0u8; 36])
            .as_bytes(),
        b"|email|",
        dir,
        b"|",
        message_id.as_bytes(),
    ])
}

/// A name-based (version 5) UUID of the parts, in trackgate's namespace. The same as
/// `Uuid::new_v5(NAMESPACE, parts.concat())`, without building the name, and with the `sha1`
/// crate (which uses the CPU's SHA instructions where there are some): this runs per decision.
fn v5(parts: &[&[u8]]) -> Uuid {
    use sha1::Digest as _;
    let mut hasher = sha1::Sha1::new();
    hasher.update(NAMESPACE.as_bytes());
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// The id of an auto-created contact or lead: one per (organisation, table, lower-cased address).
pub fn auto_created_id(organization: Uuid, entity: &str, address: &str) -> Uuid {
    Uuid::new_v5(
        &NAMESPACE,
        format!("{organization}|{entity}|{}", address.trim().to_lowercase()).as_bytes(),
    )
}

/// Names for an auto-created record, by a documented rule (Dynamics' own parsing is not
/// documented): "Last, First" → first/last; "First Middle Last" → last word is the last name;
/// no usable display name → the address's local part split at `.`, `_` or `-`, capitalised.
pub fn names_for(display_name: Option<&str>, address: &str) -> (Option<String>, String) {
    let display = display_name
        .map(|d| d.trim().trim_matches(['"', '\'']).trim())
        .filter(|d| !d.is_empty() && !d.eq_ignore_ascii_case(address) && !d.contains('@'));
    if let Some(d) = display {
        if let Some((last, first)) = d.split_once(',') {
            let (first, last) = (first.trim(), last.trim());
            if !last.is_empty() {
                return (
                    (!first.is_empty()).then(|| first.to_owned()),
                    last.to_owned(),
                );
            }
        }
        let words: Vec<&str> = d.split_whitespace().collect();
        if let Some((last, rest)) = words.split_last() {
            let first = rest.join(" ");
            return ((!first.is_empty()).then_some(first), (*last).to_owned());
        }
    }
    let local = address.split('@').next().unwrap_or(address);
    let parts: Vec<String> = local
        .split(['.', '_', '-'])
        .filter(|p| !p.is_empty())
        .map(capitalise)
        .collect();
    match parts.split_last() {
        Some((last, rest)) => {
            let first = rest.join(" ");
            ((!first.is_empty()).then_some(first), last.clone())
        }
        None => (None, address.to_owned()),
    }
}

fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_auto_created_record_has_one_id_per_organisation_table_and_address() {
        let org = Uuid::from_u128(1);
        let id = auto_created_id(org, "contact", "Pat.Buyer@Fabrikam.example ");
        assert_eq!(
            id,
            auto_created_id(org, "contact", "pat.buyer@fabrikam.example")
        );
        assert_eq!(id.get_version_num(), 5);
        assert_ne!(
            id,
            auto_created_id(org, "lead", "pat.buyer@fabrikam.example")
        );
        assert_ne!(
            id,
            auto_created_id(Uuid::from_u128(2), "contact", "pat.buyer@fabrikam.example")
        );
        assert_ne!(id, auto_created_id(org, "contact", "kim@fabrikam.example"));
    }

    #[test]
    fn names_follow_the_documented_rule() {
        assert_eq!(
            names_for(Some("Buyer, Pat"), "x@y"),
            (Some("Pat".into()), "Buyer".into())
        );
        assert_eq!(
            names_for(Some("Pat Q. Buyer"), "x@y"),
            (Some("Pat Q.".into()), "Buyer".into())
        );
        assert_eq!(names_for(Some("Cher"), "x@y"), (None, "Cher".into()));
        assert_eq!(
            names_for(None, "lee.new-prospect@northwind.example"),
            (Some("Lee New".into()), "Prospect".into())
        );
        assert_eq!(names_for(Some("a@b.c"), "info@b.c"), (None, "Info".into()));
    }

    #[test]
    fn ids_are_standard_version_5_uuids() {
        let org = Uuid::from_u128(7);
        assert_eq!(
            email_id(org, "m@x", Direction::Incoming),
            Uuid::new_v5(&NAMESPACE, format!("{org}|email|in|m@x").as_bytes())
        );
    }

    #[test]
    fn ids_are_deterministic_and_distinct_by_direction() {
        let org = Uuid::from_u128(7);
        let a = email_id(org, "m@x", Direction::Incoming);
        assert_eq!(a, email_id(org, "m@x", Direction::Incoming));
        assert_ne!(a, email_id(org, "m@x", Direction::Outgoing));
        assert_ne!(a, email_id(Uuid::from_u128(8), "m@x", Direction::Incoming));
        assert_eq!(
            auto_created_id(org, "contact", "Lee@Northwind.example"),
            auto_created_id(org, "contact", "lee@northwind.example")
        );
    }

    #[test]
    fn correlation_methods_carry_dataverse_codes() {
        assert_eq!(CorrelationMethod::InReplyTo.code(), 3);
        assert_eq!(CorrelationMethod::TrackingToken.code(), 4);
        assert_eq!(CorrelationMethod::ConversationId.code(), 5);
        assert_eq!(CorrelationMethod::SmartMatching.code(), 6);
    }

    #[test]
    fn verdict_follows_reason() {
        assert_eq!(Reason::RecipientEmailEnabled.verdict(), Verdict::Track);
        assert_eq!(Reason::NeedsEnrichment.verdict(), Verdict::Track);
        assert_eq!(Reason::UnknownMailbox.verdict(), Verdict::Ignore);
        assert_eq!(Reason::FolderRule.as_str(), "folder_rule");
    }
}
