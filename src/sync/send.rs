//! CRM mail sent through the owner's mailbox: emails in status Pending Send whose owner allows
//! it ("Allow Dynamics 365 to send email using your mailbox") go out with EWS `CreateItem`
//! `SendAndSaveCopy`, the subject carrying the tracking token when the org uses them, then are
//! marked Sent with the Message-ID Exchange gave them. Exactly once, across a kill -9: every
//! send carries a link to the CRM email (an extended property on the saved copy), and before
//! any send the mailbox's Sent Items and Outbox are searched for it — a mail already sent is
//! only marked Sent. A send Exchange refuses for good marks the email Failed and leaves a dead
//! letter with the reason.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::links::Send;
use super::mailbox::party_address;
use super::{SyncError, Syncer, SyncingMailbox, syncing_mailboxes};
use crate::directory::model::DirectoryDocument;
use crate::exchange::{ExchangeError, Outgoing};

/// Pending Send (statecode 1, Completed).
const PENDING_SEND: i64 = 6;

const QUERY: &str = "$filter=statuscode eq 6 and directioncode eq true&$select=activityid,subject,description,trackingtoken,statuscode,_ownerid_value&$expand=email_activity_parties($select=participationtypemask,addressused,_partyid_value)";

fn parties(row: &Map<String, Value>, mask: i64, doc: &DirectoryDocument) -> Vec<String> {
    let list = row
        .get("email_activity_parties")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    list.iter()
        .filter_map(Value::as_object)
        .filter(|p| p.get("participationtypemask").and_then(Value::as_i64) == Some(mask))
        .filter_map(|p| {
            p.get("addressused")
                .and_then(Value::as_str)
                .filter(|a| a.contains('@'))
                .map(str::to_owned)
                .or_else(|| party_address(doc, p))
        })
        .collect()
}

/// The subject as sent: with the email's tracking token when the org uses them and the
/// subject does not carry it yet.
fn subject(row: &Map<String, Value>, doc: &DirectoryDocument) -> String {
    let subject = row
        .get("subject")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let token = row
        .get("trackingtoken")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty());
    match token {
        Some(token) if doc.organization.usetrackingtokens && !subject.contains(token) => {
            format!("{subject} {token}")
        }
        _ => subject,
    }
}

impl Syncer {
    /// Sends every Pending Send email whose owner allows sending through their mailbox.
    pub(super) async fn send_pending(&self, doc: &DirectoryDocument) -> Result<(), SyncError> {
        let rows = self.crm.read_rows("emails", QUERY).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let by_user: HashMap<Uuid, SyncingMailbox> =
            syncing_mailboxes(doc, self.settings.interval, false)
                .into_iter()
                .map(|m| (m.user, m))
                .collect();
        for row in rows {
            let id = row
                .get("activityid")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok());
            let owner = row
                .get("_ownerid_value")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok());
            let (Some(id), Some(owner)) = (id, owner) else {
                continue;
            };
            if row.get("statuscode").and_then(Value::as_i64) != Some(PENDING_SEND) {
                continue;
            }
            let Some(mailbox) = by_user.get(&owner) else {
                continue;
            };
            if !mailbox.settings.allowcrmsendemail
                || !self
                    .ownership
                    .as_ref()
                    .is_none_or(|o| o.owns(&mailbox.address))
            {
                continue;
            }
            self.send_one(doc, mailbox, id, &row).await?;
        }
        Ok(())
    }

    async fn send_one(
        &self,
        doc: &DirectoryDocument,
        mailbox: &SyncingMailbox,
        id: Uuid,
        row: &Map<String, Value>,
    ) -> Result<(), SyncError> {
        let link = format!("email:{id}");
        let key = id.to_string();
        let now = crate::common::time::now_ms() / 1000;
        let already = self
            .exchange
            .sent_with_link(&mailbox.address, &link)
            .await?;
        let message_id = match already {
            Some(message_id) => {
                self.sent("already_sent");
                message_id
            }
            None => {
                self.store.put_send(
                    &key,
                    &Send {
                        mailbox: mailbox.address.clone(),
                        state: "sending".into(),
                        message_id: None,
                        at: now,
                    },
                )?;
                let mail = Outgoing {
                    subject: subject(row, doc),
                    html_body: row
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    to: parties(row, 2, doc),
                    cc: parties(row, 3, doc),
                    bcc: parties(row, 4, doc),
                    link: link.clone(),
                };
                match self.exchange.send_through(&mailbox.address, &mail).await {
                    Ok(()) => {}
                    Err(ExchangeError::NotFound(code)) => {
                        // Refused for good (no recipients, a recipient Exchange rejects, …).
                        self.sent("failed");
                        self.crm.update_row("emails", id, failed()).await?;
                        self.dead_letter(&mailbox.address, &link, "exchange_send", code);
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
                self.sent("sent");
                self.exchange
                    .sent_with_link(&mailbox.address, &link)
                    .await?
                    .unwrap_or_default()
            }
        };
        let mut sent = Map::new();
        sent.insert("statecode".into(), json!(1));
        sent.insert("statuscode".into(), json!(3));
        if !message_id.is_empty() {
            sent.insert("messageid".into(), json!(message_id));
        }
        self.crm.update_row("emails", id, sent).await?;
        self.store.put_send(
            &key,
            &Send {
                mailbox: mailbox.address.clone(),
                state: "sent".into(),
                message_id: (!message_id.is_empty()).then_some(message_id),
                at: now,
            },
        )?;
        Ok(())
    }

    fn sent(&self, result: &'static str) {
        self.metrics
            .sent
            .get_or_create(&super::ResultLabels { result })
            .inc();
    }
}

/// Failed (statecode 0, statuscode 8).
fn failed() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("statecode".into(), json!(0));
    m.insert("statuscode".into(), json!(8));
    m
}
