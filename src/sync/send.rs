//! CRM mail sent through the owner's mailbox: emails in status Pending Send whose owner's
//! mailbox sends by server-side sync (`outgoingemaildeliverymethod` 2) or who allowed it on the
//! options page ("Allow Dynamics 365 to send email using your mailbox") go out with EWS `CreateItem`
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

/// How long a sent email's saved copy is waited for before it is marked Sent without its
/// Message-ID (seconds).
const SAVED_COPY_WAIT: u64 = 600;

/// Response codes of a send that a later try may pass (throttling, a store or transport
/// moment); any other refuses the email for good.
fn transient(code: &str) -> bool {
    matches!(
        code,
        "ErrorServerBusy"
            | "ErrorInternalServerTransientError"
            | "ErrorTimeoutExpired"
            | "ErrorMailboxStoreUnavailable"
            | "ErrorMailboxMoveInProgress"
            | "ErrorConnectionFailed"
            | "ErrorSubmissionQuotaExceeded"
            | "ErrorQuotaExceeded"
            | "ErrorInternalServerError"
    )
}

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
    /// `doc`: the round's directory document, when it built one.
    pub(super) async fn send_pending(
        &self,
        doc: Option<DirectoryDocument>,
    ) -> Result<(), SyncError> {
        self.finish_sends().await;
        let rows = self.crm.read_rows("emails", QUERY).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let doc = match doc {
            Some(doc) => doc,
            None => self.crm.document().await,
        };
        let doc = &doc;
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
            if !mailbox.sends_mail
                || !self
                    .ownership
                    .as_ref()
                    .is_none_or(|o| o.owns(&mailbox.address))
            {
                continue;
            }
            // One email's trouble (its mailbox not reachable, Dataverse refusing it) is that
            // email's: the others still go.
            if let Err(error) = self.send_one(doc, mailbox, id, &row).await {
                self.metrics.failure(error.label());
                tracing::warn!(%error, "a CRM email could not be sent through its owner's mailbox; it is tried again next round");
            }
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
        let handed = self.store.send(&key)?.filter(|s| s.state == "sending");
        let message_id = match (already, handed) {
            (Some(message_id), _) => {
                self.sent("already_sent");
                message_id
            }
            // Handed to Exchange, its saved copy not (yet) found: Exchange saves it a moment
            // after the send, or a rule moved it. Never sent twice: after ten minutes it is
            // marked Sent without its Message-ID.
            (None, Some(handed)) if now.saturating_sub(handed.at) < SAVED_COPY_WAIT => {
                return Ok(());
            }
            (None, Some(_)) => String::new(),
            (None, None) => {
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
                    Err(ExchangeError::NotFound(code)) if !transient(&code) => {
                        // Refused for good (no recipients, a recipient Exchange rejects, …).
                        self.sent("failed");
                        self.crm.update_row("emails", id, state(0, 8)).await?;
                        self.dead_letter(&mailbox.address, &link, "exchange_send", code);
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
                self.sent("sent");
                match self
                    .exchange
                    .sent_with_link(&mailbox.address, &link)
                    .await?
                {
                    Some(message_id) => message_id,
                    // Marked Sent once its saved copy shows (a later round).
                    None => return Ok(()),
                }
            }
        };
        self.mark_sent(&mailbox.address, id, &message_id).await
    }

    /// Marks an email Sent, then writes its Message-ID. Pending Send is a closed state, and a
    /// closed email takes no other column: the Message-ID goes in by reopening it for a moment
    /// (Draft), writing it, and closing it as Sent. Each step is remembered in `sync.redb`, so
    /// a crash between them is finished by the next round ([`Syncer::finish_sends`]).
    async fn mark_sent(&self, mailbox: &str, id: Uuid, message_id: &str) -> Result<(), SyncError> {
        let key = id.to_string();
        let now = crate::common::time::now_ms() / 1000;
        let record = |state: &str| Send {
            mailbox: mailbox.to_owned(),
            state: state.into(),
            message_id: (!message_id.is_empty()).then(|| message_id.to_owned()),
            at: now,
        };
        self.crm.update_row("emails", id, state(1, 3)).await?;
        if message_id.is_empty() {
            self.store.put_send(&key, &record("done"))?;
            return Ok(());
        }
        self.store.put_send(&key, &record("marked"))?;
        self.write_message_id(id, message_id).await?;
        self.store.put_send(&key, &record("done"))?;
        Ok(())
    }

    async fn write_message_id(&self, id: Uuid, message_id: &str) -> Result<(), SyncError> {
        self.crm.update_row("emails", id, state(0, 1)).await?;
        let mut column = Map::new();
        column.insert("messageid".into(), json!(message_id));
        self.crm.update_row("emails", id, column).await?;
        self.crm.update_row("emails", id, state(1, 3)).await?;
        Ok(())
    }

    /// Finishes the sends a crash left marked Sent without their Message-ID. One that Dataverse
    /// refuses for good (the email deleted since) is given up with a dead letter; one that
    /// fails for now waits for the next round; neither holds up the others.
    pub(super) async fn finish_sends(&self) {
        let sends = match self.store.sends() {
            Ok(sends) => sends,
            Err(error) => {
                tracing::warn!(%error, "cannot read the sends in progress");
                return;
            }
        };
        for (key, send) in sends {
            if send.state != "marked" {
                continue;
            }
            let (Ok(id), Some(message_id)) = (Uuid::parse_str(&key), send.message_id.clone())
            else {
                continue;
            };
            let done = match self.write_message_id(id, &message_id).await {
                Ok(()) => true,
                Err(error) if super::mailbox::refused_for_good(&error) => {
                    self.dead_letter(
                        &send.mailbox,
                        &format!("email:{id}"),
                        "crm_message_id",
                        error.to_string(),
                    );
                    true
                }
                Err(error) => {
                    tracing::warn!(%error, "a sent email's Message-ID could not be written yet");
                    false
                }
            };
            let finished = Send {
                state: "done".into(),
                ..send
            };
            if done && let Err(error) = self.store.put_send(&key, &finished) {
                tracing::warn!(%error, "cannot record a finished send");
            }
        }
    }

    fn sent(&self, result: &'static str) {
        self.metrics
            .sent
            .get_or_create(&super::ResultLabels { result })
            .inc();
    }
}

/// A state change: Failed is (0, 8), Sent (1, 3), Draft (0, 1).
fn state(statecode: u8, statuscode: u8) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("statecode".into(), json!(statecode));
    m.insert("statuscode".into(), json!(statuscode));
    m
}
