//! Observations: what inspection saw in one exchange, free of protocol types, so later stages
//! never learn whether it came from SOAP or JSON. Serialised as JSON with snake_case fields and
//! a `kind` tag — the contract of `trackgate inspect`.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::common::shared::SharedStr;

/// Where an observation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Ews,
    Graph,
    /// The catch-up sweep's own reading of a mailbox, not client traffic.
    CatchUp,
}

/// A mailbox address as a message carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Address {
    /// Shared, not copied, by the decisions' parties.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<SharedStr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<SharedStr>,
    /// `SMTP`, or `EX` for an X.500 address that the directory must map (those two are not
    /// copied: every address of every message carries one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_type: Option<Cow<'static, str>>,
}

impl Address {
    /// A routing type as sent, the common ones without a copy.
    pub fn routing_type(value: &str) -> Cow<'static, str> {
        match value {
            "SMTP" => Cow::Borrowed("SMTP"),
            "EX" => Cow::Borrowed("EX"),
            other => Cow::Owned(other.to_owned()),
        }
    }
}

/// An item class as sent, the common ones without a copy.
pub fn item_class(value: &str) -> Cow<'static, str> {
    const COMMON: [&str; 6] = [
        "IPM.Note",
        "IPM.Note.SMIME",
        "IPM.Schedule.Meeting.Request",
        "IPM.Schedule.Meeting.Resp.Pos",
        "IPM.Schedule.Meeting.Canceled",
        "REPORT.IPM.Note.NDR",
    ];
    match COMMON.iter().find(|c| **c == value) {
        Some(common) => Cow::Borrowed(common),
        None => Cow::Owned(value.to_owned()),
    }
}

/// A message's fields, as far as the exchange showed them. An inspected message's text is one
/// shared block (`inspect::pack`) and each text field a range of it, so what a decision or the
/// memory keeps of a field shares the block rather than copying it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Message {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_id: Option<SharedStr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folder_id: Option<SharedStr>,
    /// Distinguished (well-known) folder name, when known: `inbox`, `sentitems`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folder: Option<SharedStr>,
    /// Normalised: unescaped, no angle brackets, trimmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internet_message_id: Option<SharedStr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<SharedStr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_index: Option<SharedStr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<SharedStr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub references: Option<SharedStr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<SharedStr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Address>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<Address>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Address>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<Address>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<Address>,
    /// RFC 3339, UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_at: Option<SharedStr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<SharedStr>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// `IPM.Note` and the other classes nearly every message carries are not copied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_class: Option<Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_draft: Option<bool>,
}

/// Fields every observation carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The mailbox owner (docs/architecture.md §2.3), lower-cased; `None` when the exchange did
    /// not show it. Shared: every observation of an exchange carries the same origin.
    pub mailbox: Option<Arc<str>>,
    pub source: Source,
    /// The EWS operation or Graph action, e.g. `GetItem`, `sendMail`, `list_messages`.
    pub operation: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Observation {
    MessageSeen {
        #[serde(flatten)]
        origin: Origin,
        /// Shared with the memory that keeps it and the history a preview replays.
        #[serde(flatten)]
        message: Arc<Message>,
        /// A SyncFolderItems call without a SyncState: the mailbox's history, not new mail.
        #[serde(default)]
        initial_sync: bool,
    },
    MessageSent {
        #[serde(flatten)]
        origin: Origin,
        /// How it was sent: `CreateItem`, `SendItem`, `UpdateItem`, `ReplyToItem`, `sendMail`, `reply`…
        via: String,
        #[serde(flatten)]
        message: Arc<Message>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        draft_item_ids: Vec<String>,
        /// For replies and forwards: the item answered.
        #[serde(skip_serializing_if = "Option::is_none")]
        reference_item_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        saved_to_folder: Option<String>,
    },
    MessageMoved {
        #[serde(flatten)]
        origin: Origin,
        #[serde(flatten)]
        transfer: Transfer,
    },
    MessageCopied {
        #[serde(flatten)]
        origin: Origin,
        #[serde(flatten)]
        transfer: Transfer,
    },
    CategoriesChanged {
        #[serde(flatten)]
        origin: Origin,
        item_ids: Vec<String>,
        mode: CategoryMode,
        categories: Vec<String>,
    },
    /// A contact read, created or updated (for the synchronized-field mapping).
    ContactSeen {
        #[serde(flatten)]
        origin: Origin,
        change: Change,
        #[serde(flatten)]
        contact: Contact,
    },
    /// An appointment read, created or updated.
    AppointmentSeen {
        #[serde(flatten)]
        origin: Origin,
        change: Change,
        #[serde(flatten)]
        appointment: Appointment,
    },
    /// A task read, created or updated.
    TaskSeen {
        #[serde(flatten)]
        origin: Origin,
        change: Change,
        #[serde(flatten)]
        task: Task,
    },
    FolderSeen {
        #[serde(flatten)]
        origin: Origin,
        folder_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        folder: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        display_name: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        parent_folder_id: Option<String>,
    },
}

/// Items moved or copied: old ids, new ids (matched by position), destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Transfer {
    pub item_ids: Vec<String>,
    pub new_item_ids: Vec<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_folder_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_folder: Option<String>,
}

/// Whether an item was read, or created or updated through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Seen,
    Created,
    Updated,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Contact {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub surname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_title: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub email_addresses: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub business_phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mobile_phone: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Appointment {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// RFC 3339, UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organizer: Option<Address>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub required_attendees: Vec<Address>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub optional_attendees: Vec<Address>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Task {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent_complete: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CategoryMode {
    Set,
    Append,
    Delete,
}

impl Observation {
    /// `message_moved` or `message_copied`.
    pub fn transfer(origin: Origin, moved: bool, transfer: Transfer) -> Observation {
        if moved {
            Observation::MessageMoved { origin, transfer }
        } else {
            Observation::MessageCopied { origin, transfer }
        }
    }

    /// The metric label of this observation.
    pub fn kind(&self) -> &'static str {
        match self {
            Observation::MessageSeen { .. } => "message_seen",
            Observation::MessageSent { .. } => "message_sent",
            Observation::MessageMoved { .. } => "message_moved",
            Observation::MessageCopied { .. } => "message_copied",
            Observation::CategoriesChanged { .. } => "categories_changed",
            Observation::FolderSeen { .. } => "folder_seen",
            Observation::ContactSeen { .. } => "contact_seen",
            Observation::AppointmentSeen { .. } => "appointment_seen",
            Observation::TaskSeen { .. } => "task_seen",
        }
    }

    pub fn origin(&self) -> &Origin {
        match self {
            Observation::MessageSeen { origin, .. }
            | Observation::MessageSent { origin, .. }
            | Observation::MessageMoved { origin, .. }
            | Observation::MessageCopied { origin, .. }
            | Observation::CategoriesChanged { origin, .. }
            | Observation::FolderSeen { origin, .. }
            | Observation::ContactSeen { origin, .. }
            | Observation::AppointmentSeen { origin, .. }
            | Observation::TaskSeen { origin, .. } => origin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_contract_is_snake_case_with_kind() {
        let o = Observation::FolderSeen {
            origin: Origin {
                mailbox: Some("a@b".into()),
                source: Source::Ews,
                operation: "GetFolder".into(),
            },
            folder_id: "F1".into(),
            folder: Some("inbox".into()),
            display_name: Some("Inbox".into()),
            parent_folder_id: None,
        };
        let json = serde_json::to_value(&o).unwrap();
        assert_eq!(json["kind"], "folder_seen");
        assert_eq!(json["folder_id"], "F1");
        assert_eq!(json["source"], "ews");
        assert!(json.get("parent_folder_id").is_none());
    }
}
