//! The Dataverse Web API sink. Every write is a conditional upsert on a deterministic id, so a
//! retry anywhere is harmless:
//! - an auto-created contact or lead: `PATCH /contacts(<id>)` with `If-None-Match: *`, before
//!   the email that binds it (412 = already there);
//! - the email: `PATCH /emails(<id>)` with `If-None-Match: *` (412 = already there), then
//!   `PATCH` with `If-Match: *` setting statecode/statuscode (activities are created open);
//! - a regarding update of an email trackgate closed: a completed activity is read-only, so
//!   it is reopen → re-link → close (`PATCH` with `If-Match: *` each), every step remembered
//!   so a retry resumes where it stopped. (The form lets a closed email's regarding change;
//!   whether the Web API does is unconfirmed, and this order works either way.) With the
//!   status column switched off trackgate never closed it: the re-link alone.
//!
//! With `batch_size` > 1, documents go in one `$batch` (`Prefer: odata.continue-on-error`):
//! record creates and status updates as independent parts, each email's create as a change set.

use std::time::Duration;

use uuid::Uuid;

use super::mapping::{self, Action, EmailColumns, TrackedEmail};
use super::multipart::{self, BatchItem, HttpPart};
use super::pace::Pace;
use super::{Outcome, failure, parse_retry_after, transport_error};
use crate::common::ClientCredentials;
use crate::oauth::TokenSource;

#[derive(Debug, Clone)]
pub struct DataverseSettings {
    /// The environment URL, e.g. `https://contoso.crm.dynamics.com` (no trailing slash).
    pub url: String,
    /// `/api/data/v9.2`.
    pub api_path: String,
    /// `None` only for a loopback URL (the simulator without auth).
    pub credentials: Option<ClientCredentials>,
    /// Send `CallerObjectId` of the mailbox owner so the email is created as that user.
    pub act_as_owner: bool,
    /// Documents per `$batch` request; 1 sends plain requests.
    pub batch_size: usize,
    /// Requests in flight at most; a 429 halves it for a while ([`Pace`]).
    pub concurrency: usize,
    pub timeout: Duration,
    /// Deadline of the `WhoAmI` probe sent while the sink is down: short, so a CRM that
    /// accepts connections and never answers is seen as fast as one that refuses them.
    pub probe_timeout: Duration,
    pub columns: EmailColumns,
    /// Requests sent in any 300 s window at most (Dataverse's service protection limit is
    /// 6000 per user per web server); `None` leaves it to the 429s.
    pub max_requests_per_window: Option<u32>,
}

/// Dataverse's service protection window.
const WINDOW: Duration = Duration::from_secs(300);

/// A sliding-window request budget: waits instead of earning a 429.
#[derive(Debug, Default)]
struct RequestBudget {
    sent: std::collections::VecDeque<std::time::Instant>,
}

impl RequestBudget {
    /// How long to wait before one more request may go (and counts it when it is zero).
    fn take(&mut self, limit: u32) -> Duration {
        let now = std::time::Instant::now();
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < limit as usize {
            self.sent.push_back(now);
            return Duration::ZERO;
        }
        self.sent
            .front()
            .map(|t| (*t + WINDOW).saturating_duration_since(now))
            .unwrap_or_default()
            .max(Duration::from_millis(1))
    }
}

/// A regarding update that found no email: its create is still queued behind it (or was
/// skipped), so it is tried again later rather than dead-lettered.
fn not_there_yet() -> Outcome {
    Outcome::Failed {
        status: Some(404),
        error: "the email is not in the CRM yet".into(),
    }
}

/// Emails being written: two records of one email (its create and a re-link) must not
/// interleave, or the re-link's reopen could land between the create and its close.
#[derive(Debug, Default)]
struct EmailsInFlight {
    busy: std::sync::Mutex<std::collections::HashSet<Uuid>>,
    freed: tokio::sync::Notify,
}

/// The emails one delivery holds; given back when dropped.
struct Held<'a> {
    emails: &'a EmailsInFlight,
    ids: Vec<Uuid>,
}

impl EmailsInFlight {
    fn busy(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Uuid>> {
        self.busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until none of `ids` is being written, then holds them all.
    async fn hold(&self, mut ids: Vec<Uuid>) -> Held<'_> {
        ids.sort_unstable();
        ids.dedup();
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut busy = self.busy();
                if ids.iter().all(|id| !busy.contains(id)) {
                    busy.extend(ids.iter().copied());
                    return Held { emails: self, ids };
                }
            }
            freed.await;
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut busy = self.emails.busy();
        for id in &self.ids {
            busy.remove(id);
        }
        drop(busy);
        self.emails.freed.notify_waiters();
    }
}

#[derive(Debug)]
pub struct DataverseSink {
    http: reqwest::Client,
    settings: DataverseSettings,
    tokens: Option<TokenSource>,
    budget: std::sync::Mutex<RequestBudget>,
    pace: Pace,
    in_flight: EmailsInFlight,
}

/// The steps of a document's delivery, as bits of [`TrackedEmail::steps_done`]: a retry
/// resumes at the first step not confirmed.
pub mod step {
    pub const AUTO_CREATE: u8 = 1;
    pub const CREATE: u8 = 2;
    pub const CLOSE: u8 = 4;
    pub const REGARDING: u8 = 8;
    /// A closed email reopened for its re-link (closed again by `CLOSE`).
    pub const REOPEN: u8 = 16;
}

/// One write of a document.
struct Write {
    step: u8,
    method: reqwest::Method,
    path: String,
    condition: Option<(&'static str, &'static str)>,
    body: serde_json::Value,
    /// 412 means the record is already there: success.
    create_only: bool,
}

impl DataverseSink {
    pub fn new(http: reqwest::Client, settings: DataverseSettings) -> DataverseSink {
        let tokens = settings
            .credentials
            .clone()
            .map(|c| TokenSource::new(http.clone(), c));
        DataverseSink {
            http,
            tokens,
            budget: std::sync::Mutex::new(RequestBudget::default()),
            pace: Pace::new(settings.concurrency),
            in_flight: EmailsInFlight::default(),
            settings,
        }
    }

    /// Waits until the service protection budget allows one more request.
    async fn within_limits(&self) {
        let Some(limit) = self.settings.max_requests_per_window else {
            return;
        };
        loop {
            let wait = self
                .budget
                .lock()
                .map(|mut b| b.take(limit))
                .unwrap_or_default();
            if wait.is_zero() {
                return;
            }
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "request budget spent; waiting"
            );
            tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
        }
    }

    fn api(&self, path: &str) -> String {
        format!("{}{}{}", self.settings.url, self.settings.api_path, path)
    }

    /// The writes of one document still to do, in order.
    fn writes(&self, email: &TrackedEmail) -> Vec<Write> {
        let mut writes = self.all_writes(email);
        writes.retain(|w| email.steps_done & w.step == 0);
        writes
    }

    /// Every write of one document, in order.
    fn all_writes(&self, email: &TrackedEmail) -> Vec<Write> {
        let mut writes = Vec::new();
        let patch = reqwest::Method::PATCH;
        if let Some(created) = &email.auto_create {
            writes.push(Write {
                step: step::AUTO_CREATE,
                method: patch.clone(),
                path: format!("/{}({})", mapping::entity_set(&created.entity), created.id),
                condition: Some(("If-None-Match", "*")),
                body: mapping::auto_create_body(created),
                create_only: true,
            });
        }
        match email.action {
            Action::Create => {
                writes.push(Write {
                    step: step::CREATE,
                    method: patch.clone(),
                    path: format!("/emails({})", email.id),
                    condition: Some(("If-None-Match", "*")),
                    body: mapping::dataverse_email(email, &self.settings.columns),
                    create_only: true,
                });
                if self.settings.columns.status {
                    writes.push(Write {
                        step: step::CLOSE,
                        method: patch,
                        path: format!("/emails({})", email.id),
                        condition: Some(("If-Match", "*")),
                        body: mapping::status_body(email),
                        create_only: false,
                    });
                }
            }
            Action::UpdateRegarding => {
                let closes = self.settings.columns.status;
                if closes {
                    writes.push(Self::state_write(
                        email,
                        step::REOPEN,
                        mapping::reopen_body(),
                    ));
                }
                writes.push(Self::state_write(
                    email,
                    step::REGARDING,
                    mapping::regarding_body(email),
                ));
                if closes {
                    writes.push(Self::state_write(
                        email,
                        step::CLOSE,
                        mapping::status_body(email),
                    ));
                }
            }
        }
        writes
    }

    async fn authorize(
        &self,
        request: reqwest::RequestBuilder,
        caller: Option<Uuid>,
    ) -> Result<reqwest::RequestBuilder, Outcome> {
        self.within_limits().await;
        let mut request = request
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0")
            .header("Accept", "application/json")
            .timeout(self.settings.timeout);
        if let Some(tokens) = &self.tokens {
            let token = tokens.token().await.map_err(|e| match e {
                crate::oauth::TokenError::Refused { .. } => Outcome::Unauthorized {
                    error: e.to_string(),
                },
                _ => Outcome::Unavailable {
                    error: e.to_string(),
                },
            })?;
            request = request.bearer_auth(token);
        }
        if self.settings.act_as_owner
            && let Some(caller) = caller
        {
            request = request.header("CallerObjectId", caller.to_string());
        }
        Ok(request)
    }

    async fn after_unauthorized(&self, status: u16) {
        if status == 401
            && let Some(t) = &self.tokens
        {
            t.invalidate().await;
        }
    }

    /// Sends one request within the pace: it waits out a 429 pause and for a place in
    /// flight, and the answer adjusts the pace. A failure status is the caller's to read.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        caller: Option<Uuid>,
    ) -> Result<reqwest::Response, Outcome> {
        let slot = self.pace.slot().await;
        let request = self.authorize(request, caller).await?;
        let response = request.send().await.map_err(|e| transport_error(&e))?;
        let status = response.status().as_u16();
        if status == 429 {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok());
            slot.throttled(parse_retry_after(retry_after).unwrap_or(Duration::from_secs(5)));
        } else {
            slot.answered();
        }
        self.after_unauthorized(status).await;
        Ok(response)
    }

    /// `GET WhoAmI`: the cheapest authenticated request there is.
    pub async fn probe(&self) -> Result<(), Outcome> {
        let request = self
            .authorize(self.http.get(self.api("/WhoAmI")), None)
            .await?
            .timeout(self.settings.probe_timeout);
        let response = request.send().await;
        if let Ok(r) = &response {
            self.after_unauthorized(r.status().as_u16()).await;
        }
        super::probe_result(response)
    }

    /// Delivers documents, each from its first step not yet confirmed; each step the CRM
    /// confirms is set in the document's `steps_done` and, while more remain, told to
    /// `progress` (document index, steps done) so a crash resumes after it.
    pub async fn deliver(
        &self,
        emails: &mut [TrackedEmail],
        progress: &super::Progress<'_>,
    ) -> Vec<Outcome> {
        let _held = self
            .in_flight
            .hold(emails.iter().map(|e| e.id).collect())
            .await;
        // A regarding update may need reopen → re-link → close, one step after the other:
        // a group holding one goes as plain requests.
        if self.settings.batch_size > 1
            && emails.len() > 1
            && emails.iter().all(|e| e.action == Action::Create)
        {
            return self.deliver_batch(emails).await;
        }
        let mut outcomes = Vec::with_capacity(emails.len());
        for (index, email) in emails.iter_mut().enumerate() {
            outcomes.push(self.deliver_one(email, &|done| progress(index, done)).await);
        }
        outcomes
    }

    /// Duplicate detection for an auto-create: a row with the sender's address may have been
    /// made in the CRM while the gateway's replica did not know it (an outage, a refresh not
    /// yet run). Then the email binds that row and nothing is created. `Ok(None)`: create as
    /// decided. A check the CRM refuses (no read privilege, say) does not hold delivery up.
    async fn existing_record(&self, email: &TrackedEmail) -> Result<Option<TrackedEmail>, Outcome> {
        let Some(created) = &email.auto_create else {
            return Ok(None);
        };
        let address = created.address.replace('\'', "''");
        let filter = format!(
            "(emailaddress1 eq '{address}' or emailaddress2 eq '{address}' or emailaddress3 eq '{address}') and statecode eq 0"
        );
        let key = format!("{}id", created.entity);
        let url = self.api(&format!(
            "/{}?$select={key}&$top=5&$filter={}",
            mapping::entity_set(&created.entity),
            crate::common::text::percent_encode(&filter, b"")
        ));
        let response = self.send(self.http.get(url), None).await?;
        let status = response.status().as_u16();
        if status == 429 || status >= 500 || status == 401 {
            return Err(failure(response).await);
        }
        if !(200..300).contains(&status) {
            tracing::debug!(status, "duplicate check refused; creating as decided");
            return Ok(None);
        }
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        let ids: Vec<Uuid> = answer
            .get("value")
            .and_then(|v| v.as_array())
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| r.get(&key)?.as_str().and_then(|t| Uuid::parse_str(t).ok()))
                    .collect()
            })
            .unwrap_or_default();
        // As the rules resolve senders: one active row is the sender; several leave the
        // sender unresolved (and nothing is created).
        match ids.as_slice() {
            [] => Ok(None),
            ids if ids.contains(&created.id) => Ok(None),
            [existing] => {
                tracing::info!(entity = %created.entity, "the sender already has a record; binding it instead of creating one");
                let mut bound = email.clone();
                bound.bind_existing(Some(*existing));
                Ok(Some(bound))
            }
            _ => {
                tracing::info!(entity = %created.entity, "the sender matches several records; leaving it unresolved");
                let mut unresolved = email.clone();
                unresolved.bind_existing(None);
                Ok(Some(unresolved))
            }
        }
    }

    /// Sends one write; `Err` carries the answer's status (if any) and its outcome.
    async fn write(
        &self,
        write: Write,
        caller: Option<Uuid>,
    ) -> Result<(), (Option<u16>, Outcome)> {
        let request = self
            .http
            .request(write.method, self.api(&write.path))
            .json(&write.body);
        let request = match write.condition {
            Some((name, value)) => request.header(name, value),
            None => request,
        };
        let response = self.send(request, caller).await.map_err(|o| (None, o))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) || (status == 412 && write.create_only) {
            return Ok(());
        }
        Err((Some(status), failure(response).await))
    }

    /// A state change of an existing email (`If-Match: *`).
    fn state_write(email: &TrackedEmail, step: u8, body: serde_json::Value) -> Write {
        Write {
            step,
            method: reqwest::Method::PATCH,
            path: format!("/emails({})", email.id),
            condition: Some(("If-Match", "*")),
            body,
            create_only: false,
        }
    }

    /// What a failed write means for a regarding update: the email not there yet (its create
    /// is still queued), or, refused for good after it was reopened, closed again before the
    /// record gives up. Any other failure is the write's own.
    async fn relink_failed(
        &self,
        email: &TrackedEmail,
        status: Option<u16>,
        outcome: Outcome,
    ) -> Outcome {
        if email.action != Action::UpdateRegarding {
            return outcome;
        }
        if status == Some(404) {
            return not_there_yet();
        }
        let reopened = email.steps_done & step::REOPEN != 0 && email.steps_done & step::CLOSE == 0;
        if reopened && matches!(outcome, Outcome::Rejected { .. }) {
            let close = Self::state_write(email, step::CLOSE, mapping::status_body(email));
            if let Err((_, error)) = self.write(close, email.caller).await {
                tracing::warn!(error = %error.text(), "a reopened email could not be closed again");
            }
        }
        outcome
    }

    async fn deliver_one(
        &self,
        email: &mut TrackedEmail,
        progress: &(dyn Fn(u8) + Sync),
    ) -> Outcome {
        // Once the record is created, the check that might have bound another is behind us.
        let checked = if email.steps_done & step::AUTO_CREATE == 0 {
            match self.existing_record(email).await {
                Ok(c) => c,
                Err(outcome) => return outcome,
            }
        } else {
            None
        };
        let writes = self.writes(checked.as_ref().unwrap_or(email));
        let last = writes.len();
        for (n, write) in writes.into_iter().enumerate() {
            let step = write.step;
            if let Err((status, outcome)) = self.write(write, email.caller).await {
                return self.relink_failed(email, status, outcome).await;
            }
            email.steps_done |= step;
            if n + 1 < last {
                progress(email.steps_done);
            }
        }
        Outcome::Delivered
    }

    /// One `$batch` for several documents, in order: the records an email binds, the email's
    /// create as a change set, its status; each document's outcome is its first failure.
    async fn deliver_batch(&self, originals: &mut [TrackedEmail]) -> Vec<Outcome> {
        // Only a batch with auto-creates not yet made is copied (to bind records the check
        // found).
        let mut checked = Vec::new();
        if originals
            .iter()
            .any(|e| e.auto_create.is_some() && e.steps_done & step::AUTO_CREATE == 0)
        {
            for email in originals.iter() {
                match self.existing_record(email).await {
                    Ok(c) => checked.push(c.unwrap_or_else(|| email.clone())),
                    Err(outcome) => return vec![outcome; originals.len()],
                }
            }
        }
        let (outcomes, steps) = if checked.is_empty() {
            self.send_batch(originals).await
        } else {
            self.send_batch(&checked).await
        };
        for (email, done) in originals.iter_mut().zip(steps) {
            email.steps_done |= done;
        }
        outcomes
    }

    /// The `$batch` request itself: each document's outcome, and the steps it confirmed.
    async fn send_batch(&self, emails: &[TrackedEmail]) -> (Vec<Outcome>, Vec<u8>) {
        let (items, owners) = self.batch_items(emails);
        let boundary = format!("batch_{:016x}", rand::random::<u64>());
        let body = multipart::write_batch(&boundary, &items);
        let all = |o: Outcome| (vec![o; emails.len()], vec![0; emails.len()]);
        let request = self
            .http
            .post(self.api("/$batch"))
            .header(
                "Content-Type",
                format!("multipart/mixed; boundary={boundary}"),
            )
            .header("Prefer", "odata.continue-on-error")
            .body(body);
        // CallerObjectId rides on each part; the batch itself runs as the application user.
        let response = match self.send(request, None).await {
            Ok(r) => r,
            Err(o) => return all(o),
        };
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if !(200..300).contains(&status) {
            return all(failure(response).await);
        }
        let text = response.text().await.unwrap_or_default();
        let Some(answers) =
            multipart::boundary(&content_type).and_then(|b| multipart::read_batch(b, &text).ok())
        else {
            return all(Outcome::Failed {
                status: Some(status),
                error: "unreadable $batch response".into(),
            });
        };
        let answered = batch_outcomes(&answers, owners, emails);
        if let Some(wait) = answered.0.iter().find_map(|o| match o {
            Outcome::Throttled { retry_after } => Some(*retry_after),
            _ => None,
        }) {
            self.pace.pause(wait);
        }
        answered
    }

    /// The `$batch` parts for `emails`, and which part answers for which email.
    fn batch_items(&self, emails: &[TrackedEmail]) -> (Vec<BatchItem>, Vec<PartOwner>) {
        let api = &self.settings.api_path;
        let mut items = Vec::new();
        let mut owners: Vec<PartOwner> = Vec::new();
        for (doc, email) in emails.iter().enumerate() {
            let writes = self.writes(email);
            for write in writes {
                let mut headers = vec![(
                    "Content-Type".to_owned(),
                    "application/json; type=entry".to_owned(),
                )];
                if let Some((name, value)) = write.condition {
                    headers.push((name.to_owned(), value.to_owned()));
                }
                if self.settings.act_as_owner
                    && let Some(caller) = email.caller
                {
                    headers.push(("CallerObjectId".into(), caller.to_string()));
                }
                let part = HttpPart {
                    start: format!("{} {api}{} HTTP/1.1", write.method, write.path),
                    headers,
                    body: write.body.to_string(),
                    content_id: None,
                };
                // The email's create-only upsert is a change set of its own; the records it
                // binds go before it and its status after it as independent parts, so a 412
                // (already there) neither rolls back nor skips them.
                owners.push(PartOwner {
                    doc,
                    index: items.len(),
                    create_only: write.create_only,
                    step: write.step,
                });
                if write.path.starts_with("/emails(") && write.create_only {
                    items.push(BatchItem::ChangeSet(vec![HttpPart {
                        content_id: Some("1".into()),
                        ..part
                    }]));
                } else {
                    items.push(BatchItem::Single(part));
                }
            }
        }
        (items, owners)
    }
}

/// Which document a `$batch` part writes for, and which step it is.
struct PartOwner {
    doc: usize,
    index: usize,
    create_only: bool,
    step: u8,
}

/// Each email's outcome from the `$batch` answer — delivered unless one of its parts failed
/// (a create-only upsert's 412 means it is already there, which counts as delivered) — and
/// the steps its parts confirmed.
fn batch_outcomes(
    answers: &[BatchItem],
    owners: Vec<PartOwner>,
    emails: &[TrackedEmail],
) -> (Vec<Outcome>, Vec<u8>) {
    let mut outcomes = vec![Outcome::Delivered; emails.len()];
    let mut steps = vec![0u8; emails.len()];
    for PartOwner {
        doc,
        index,
        create_only,
        step,
    } in owners
    {
        let parts: Vec<&HttpPart> = match answers.get(index) {
            Some(BatchItem::Single(p)) => vec![p],
            Some(BatchItem::ChangeSet(ps)) => ps.iter().collect(),
            None => {
                outcomes[doc] = Outcome::Failed {
                    status: None,
                    error: "the $batch response has fewer parts than the request".into(),
                };
                continue;
            }
        };
        let mut confirmed = true;
        for part in parts {
            let s = part.status().unwrap_or(500);
            let fine = (200..300).contains(&s) || (s == 412 && create_only);
            confirmed &= fine;
            if fine || outcomes[doc] != Outcome::Delivered {
                continue;
            }
            outcomes[doc] = if s == 404 && emails[doc].action == Action::UpdateRegarding {
                not_there_yet()
            } else {
                Outcome::from_status(
                    s,
                    part.header("retry-after"),
                    part.body.chars().take(super::MAX_KEPT_RESPONSE).collect(),
                )
            };
        }
        if confirmed {
            steps[doc] |= step;
        }
    }
    (outcomes, steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_records_of_one_email_are_written_one_after_the_other() {
        let emails = std::sync::Arc::new(EmailsInFlight::default());
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let first = emails.hold(vec![a, b]).await;
        let other = emails.hold(vec![Uuid::from_u128(3)]).await;
        let waiting = tokio::spawn({
            let emails = emails.clone();
            async move {
                let _held = emails.hold(vec![b]).await;
            }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "b is being written");
        drop(other);
        drop(first);
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("released when the first is done")
            .unwrap();
        assert!(emails.busy().is_empty());
    }

    #[test]
    fn the_request_budget_holds_requests_beyond_the_window_limit() {
        let mut budget = RequestBudget::default();
        assert!(budget.take(2).is_zero());
        assert!(budget.take(2).is_zero());
        let wait = budget.take(2);
        assert!(
            wait > Duration::from_secs(299) && wait <= WINDOW,
            "{wait:?}"
        );
        assert_eq!(budget.sent.len(), 2, "a refused request is not counted");
    }
}
