//! Delivery: the last stage. Claims due records from the outbox with bounded concurrency,
//! enriches what the traffic did not show (through `exchange`), maps each decision to a
//! document (`crm::mapping`), sends it to the sink and settles the record:
//! delivered → it leaves the outbox; 429 → the whole sink pauses until `Retry-After`;
//! unavailable (network, 502–504, 401, a deadline passed) → the sink's circuit breaker
//! ([`breaker`]) counts one outage however many workers met it, and once open lets one probe
//! through every few seconds, attempts not counted; a failure of the record (500, 408) →
//! exponential backoff with jitter, counted, dead letter after `max_attempts`; a permanent
//! 4xx → dead letter with the response kept.

pub mod breaker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::common::time::now_ms;
use crate::crm::mapping::{self, BodyPolicy, TrackedEmail};
use crate::crm::{Outcome, Sink};
use crate::exchange::{ExchangeClient, ExchangeError, Fetched, SentCopyQuery};
use crate::inspect::Message;
use crate::outbox::{Outbox, Record, Settlement};
use crate::rules::Decision;
use breaker::{Admission, Breaker, BreakerSettings, Ticket};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    /// Requests in flight to the sink at once (Dataverse allows 52 per application user).
    pub concurrency: usize,
    /// Records per sink call (`$batch` size for Dataverse; 1 = no batching).
    pub batch_size: usize,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub body: BodyPolicy,
    pub breaker: BreakerSettings,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            concurrency: 8,
            batch_size: 1,
            max_attempts: 10,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            body: BodyPolicy::Full,
            breaker: BreakerSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    sink: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone)]
pub struct DeliveryMetrics {
    outcomes: Family<OutcomeLabels, Counter>,
    enrichments: Family<ResultLabels, Counter>,
    probes: Family<ResultLabels, Counter>,
    pub paused: Gauge,
    pub latency: Histogram,
}

impl DeliveryMetrics {
    pub fn register(registry: &mut Registry) -> DeliveryMetrics {
        let m = DeliveryMetrics {
            outcomes: Family::default(),
            enrichments: Family::default(),
            probes: Family::default(),
            paused: Gauge::default(),
            latency: Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0]),
        };
        let r = registry.sub_registry_with_prefix("delivery");
        r.register(
            "outcomes",
            "Sink answers per record, by sink and outcome (delivered, throttled, unavailable, failed, rejected)",
            m.outcomes.clone(),
        );
        r.register(
            "enrichments",
            "Messages fetched from Exchange before mapping, by result",
            m.enrichments.clone(),
        );
        r.register(
            "probes",
            "Probes sent while the sink was down, by result (back, down)",
            m.probes.clone(),
        );
        r.register(
            "paused",
            "1 while the sink is paused (throttled or unavailable)",
            m.paused.clone(),
        );
        r.register(
            "latency_seconds",
            "From the decision's commit to the sink's confirmation",
            m.latency.clone(),
        );
        m
    }

    fn outcome(&self, sink: &'static str, outcome: &'static str) {
        self.outcomes
            .get_or_create(&OutcomeLabels { sink, outcome })
            .inc();
    }

    fn enrichment(&self, result: &'static str) {
        self.enrichments
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

/// What delivery tells readiness: why nothing can be delivered until an operator acts (the
/// CRM refused trackgate's credentials). An outage is not such a reason: it passes.
#[derive(Debug, Default)]
pub struct DeliveryHealth {
    refused: Mutex<Option<String>>,
    /// The start-up online check's problems, as `key: fix` (names and ids stay out).
    checked: Mutex<Vec<String>>,
}

impl DeliveryHealth {
    /// Keeps the start-up online check's problems for `/readyz` and logs each once. Refused
    /// credentials also make delivery not ready, as when a delivery meets them.
    pub fn checked(&self, findings: &[crate::crm::online::Finding]) {
        let problems: Vec<String> = findings
            .iter()
            .filter(|f| !f.ok)
            .map(|f| {
                let key = f.key.unwrap_or("-");
                tracing::warn!(
                    key,
                    fix = f.fix.as_deref().unwrap_or(""),
                    "online check of the CRM: a problem (details: trackgate check --online)"
                );
                format!("{key}: {}", f.fix.as_deref().unwrap_or(""))
            })
            .collect();
        if problems.is_empty() {
            tracing::info!("online check of the CRM: ready for delivery");
        }
        if let Some(refused) = findings
            .iter()
            .find(|f| !f.ok && f.key == Some("crm.dataverse.client_secret"))
        {
            self.set(Some(&refused.what));
        }
        if let Ok(mut checked) = self.checked.lock() {
            *checked = problems;
        }
    }

    /// The start-up online check's problems (`key: fix`).
    pub fn check_problems(&self) -> Vec<String> {
        self.checked.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Why delivery is stuck on configuration, if it is.
    pub fn problem(&self) -> Option<String> {
        self.refused.lock().ok()?.clone()
    }

    /// Sets or clears the problem; whether that changed anything.
    fn set(&self, problem: Option<&str>) -> bool {
        let Ok(mut refused) = self.refused.lock() else {
            return false;
        };
        if refused.as_deref() == problem {
            return false;
        }
        *refused = problem.map(str::to_owned);
        true
    }
}

/// What delivery asks of the rules once Exchange has shown a message the traffic did not: the
/// seam between the two (the pipeline implements it with the rules engine), so delivery never
/// reaches into the rules or the directory.
pub trait Enrichment: Send + Sync {
    /// The decision made again from the message as Exchange has it.
    fn redecide(&self, provisional: &Decision, fetched: &Message) -> Decision;
    /// The CRM user who owns `mailbox`: the CRM writes act as them when so configured.
    fn owner(&self, mailbox: &str) -> Option<uuid::Uuid>;
    /// The SMTP address of the mailbox a principal names (`CONTOSO\alex` signs in to
    /// `alex@contoso.com`): impersonation needs an address, not a logon.
    fn mailbox_address(&self, principal: &str) -> Option<String>;
}

/// What became of one record: what the demo and tests read to report outcomes, not intentions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Delivered {
    /// The outbox key.
    pub key: uuid::Uuid,
    pub mailbox: Option<String>,
    pub item_id: Option<crate::common::shared::SharedStr>,
    #[serde(flatten)]
    pub outcome: DeliveryOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// The CRM confirmed the write: a new email, or the regarding of one already there.
    Written {
        email_id: uuid::Uuid,
        action: crate::crm::mapping::Action,
    },
    /// Exchange showed the message, and the rules then did not track it.
    NotTracked { reason: String },
    /// Refused for good (a dead letter).
    Dead { error: String },
}

/// The most recent outcomes (a bounded ring).
pub type RecentDeliveries = crate::common::recent::Recent<Delivered>;

/// How many outcomes are kept.
const RECENT_DELIVERIES: usize = 1024;

/// The error code of a Dataverse (OData) error answer: `{"error": {"code": "0x80040217"}}`.
fn crm_error_code(response: Option<&str>) -> Option<String> {
    let answer: serde_json::Value = serde_json::from_str(response?).ok()?;
    let code = answer.get("error")?.get("code")?.as_str()?;
    // A code is short and plain; anything else is not one.
    (code.len() <= 32 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| code.to_owned())
}

/// A record ready for the sink, or found not to be tracked once its message was fetched.
enum Prepared {
    // Boxed: the document is large and a record is prepared once, off the traffic's path.
    Ready(Box<TrackedEmail>),
    NotTracked(&'static str),
}

pub struct Delivery {
    outbox: Arc<dyn Outbox>,
    sink: Arc<Sink>,
    exchange: Option<Arc<ExchangeClient>>,
    enrichment: Arc<dyn Enrichment>,
    settings: DeliverySettings,
    metrics: DeliveryMetrics,
    /// Until when a 429 paused the whole sink.
    paused_until: Mutex<Option<Instant>>,
    breaker: Breaker,
    health: Arc<DeliveryHealth>,
    recent: Arc<RecentDeliveries>,
    /// Saved copies in Sent Items already taken by a send (Message-ID → record key).
    sent_copies: Mutex<HashMap<String, uuid::Uuid>>,
}

/// Claims remembered before the map starts over (a claim only matters for seconds).
const MAX_CLAIMED_COPIES: usize = 10_000;

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("sink", &self.sink.name())
            .field("settings", &self.settings)
            .finish()
    }
}

impl Delivery {
    pub fn new(
        outbox: Arc<dyn Outbox>,
        sink: Arc<Sink>,
        exchange: Option<Arc<ExchangeClient>>,
        enrichment: Arc<dyn Enrichment>,
        settings: DeliverySettings,
        metrics: DeliveryMetrics,
    ) -> Arc<Delivery> {
        Arc::new(Delivery {
            outbox,
            sink,
            exchange,
            enrichment,
            metrics,
            paused_until: Mutex::new(None),
            breaker: Breaker::new(settings.breaker),
            health: Arc::default(),
            recent: RecentDeliveries::new(RECENT_DELIVERIES),
            sent_copies: Mutex::new(HashMap::new()),
            settings,
        })
    }

    /// What readiness reads: whether delivery is stuck on configuration.
    pub fn health(&self) -> Arc<DeliveryHealth> {
        self.health.clone()
    }

    /// What became of the latest records, oldest first.
    pub fn recent(&self) -> Arc<RecentDeliveries> {
        self.recent.clone()
    }

    /// Settles a record and keeps its outcome when it is final.
    fn settle(&self, record: &Record, settlement: Settlement, written: Option<&TrackedEmail>) {
        let outcome = match (&settlement, written) {
            (Settlement::Delivered, Some(doc)) => Some(DeliveryOutcome::Written {
                email_id: doc.id,
                action: doc.action,
            }),
            (Settlement::Dead { error, .. }, _) => Some(DeliveryOutcome::Dead {
                error: error.clone(),
            }),
            _ => None,
        };
        if let Some(outcome) = outcome {
            self.keep(record, outcome);
        }
        if let Settlement::Dead {
            status, response, ..
        } = &settlement
        {
            // Once per record (a dead letter is final until an operator retries it); the
            // record id and the CRM's code say where to look, never an address or a body. A
            // dead letter without an HTTP status never reached the CRM (no Exchange client to
            // fetch the message, enrichment that gave up, a record that cannot be mapped).
            match status {
                Some(status) => tracing::warn!(
                    record = %record.key,
                    status = u32::from(*status),
                    code = crm_error_code(response.as_deref()).as_deref().unwrap_or("-"),
                    attempts = record.attempts,
                    "dead letter: the CRM refused this record for good (trackgate outbox dead)"
                ),
                None => tracing::warn!(
                    record = %record.key,
                    attempts = record.attempts,
                    "dead letter: this record cannot be delivered; the reason is in trackgate outbox dead"
                ),
            }
        }
        self.outbox.settle(record, settlement);
    }

    fn keep(&self, record: &Record, outcome: DeliveryOutcome) {
        self.recent.push(Delivered {
            key: record.key,
            mailbox: record.decision.mailbox.as_deref().map(str::to_owned),
            item_id: record.decision.item_id.clone(),
            outcome,
        });
    }

    /// Runs until `stop` turns true, then waits up to `grace` for requests in flight.
    pub fn spawn(self: &Arc<Self>, stop: watch::Receiver<bool>, grace: Duration) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.run(stop, grace).await })
    }

    fn paused_for(&self) -> Option<Duration> {
        let until = (*self.paused_until.lock().ok()?)?;
        let left = until.checked_duration_since(Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    fn pause_until(&self, until: Instant) {
        if let Ok(mut paused) = self.paused_until.lock()
            && paused.is_none_or(|u| u < until)
        {
            *paused = Some(until);
        }
    }

    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>, grace: Duration) {
        let concurrency = self.settings.concurrency.max(1);
        let permits = Arc::new(Semaphore::new(concurrency));
        let wake = self.outbox.wakeup();
        loop {
            if *stop.borrow() {
                break;
            }
            if let Some(left) = self.paused_for() {
                self.metrics.paused.set(1);
                tokio::select! {
                    _ = tokio::time::sleep(left) => {}
                    changed = stop.changed() => if changed.is_err() { break },
                }
                continue;
            }
            let ticket = match self.breaker.admit(Instant::now()) {
                Admission::Go(ticket) => ticket,
                Admission::Probe(ticket) => {
                    self.probe(ticket).await;
                    continue;
                }
                Admission::Wait(left) => {
                    self.metrics.paused.set(1);
                    tokio::select! {
                        _ = tokio::time::sleep(left) => {}
                        _ = self.breaker.changed() => {}
                        changed = stop.changed() => if changed.is_err() { break },
                    }
                    continue;
                }
            };
            self.metrics.paused.set(0);
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                changed = stop.changed() => if changed.is_err() { break } else { continue },
            };
            let records = match self
                .outbox
                .claim_due(now_ms(), self.settings.batch_size.max(1))
            {
                Ok(r) => r,
                Err(error) => {
                    tracing::error!(%error, "cannot read the outbox");
                    Vec::new()
                }
            };
            if records.is_empty() {
                drop(permit);
                let wait = self
                    .outbox
                    .next_due_ms()
                    .map(|at| at.saturating_sub(now_ms()))
                    .unwrap_or(1000)
                    .clamp(1, 1000);
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    changed = stop.changed() => if changed.is_err() { break },
                }
                continue;
            }
            // A panic in mapping, enrichment or a sink must not leave records claimed until the
            // next start: they go back in line, counted, and the worker slot is freed.
            let me = self.clone();
            let claimed = records.clone();
            let task = tokio::spawn({
                let me = me.clone();
                async move { me.deliver(records, ticket).await }
            });
            tokio::spawn(async move {
                if task.await.is_err() {
                    tracing::error!(
                        records = claimed.len(),
                        "delivery panicked; records go back in line"
                    );
                    for record in &claimed {
                        let attempts = record.attempts + 1;
                        me.outbox.settle(
                            record,
                            Settlement::Retry {
                                at_ms: now_ms() + me.backoff(attempts).as_millis() as u64,
                                counted: true,
                                error: "delivery panicked".into(),
                            },
                        );
                    }
                }
                drop(permit);
            });
        }
        // Let requests in flight finish; what does not is offered again at the next start.
        let _ = tokio::time::timeout(grace, permits.acquire_many(concurrency as u32)).await;
    }

    /// While the breaker is open: one cheap request to see whether the sink is back.
    async fn probe(&self, ticket: Ticket) {
        let answer = self.sink.probe().await;
        self.metrics
            .probes
            .get_or_create(&ResultLabels {
                result: if answer.is_ok() { "back" } else { "down" },
            })
            .inc();
        match answer {
            Ok(()) => {
                self.answered(ticket);
                tracing::info!(sink = self.sink.name(), "CRM reachable again: delivering");
            }
            Err(outcome) => self.outage(ticket, &outcome),
        }
    }

    /// The sink answered: the breaker closes, and credentials it refused work again.
    fn answered(&self, ticket: Ticket) {
        self.breaker.succeeded(ticket);
        if self.health.set(None) {
            tracing::info!(
                sink = self.sink.name(),
                "the CRM accepts trackgate's credentials again"
            );
        }
    }

    /// Enriches, maps and sends claimed records, then settles each.
    async fn deliver(&self, records: Vec<Record>, ticket: Ticket) {
        let mut ready: Vec<(Record, TrackedEmail)> = Vec::with_capacity(records.len());
        for record in records {
            match self.prepare(&record).await {
                Ok(Prepared::Ready(doc)) => ready.push((record, *doc)),
                Ok(Prepared::NotTracked(reason)) => {
                    self.keep(
                        &record,
                        DeliveryOutcome::NotTracked {
                            reason: reason.to_owned(),
                        },
                    );
                    self.outbox.settle(&record, Settlement::Delivered);
                }
                Err(settlement) => self.settle(&record, settlement, None),
            }
        }
        if ready.is_empty() {
            return;
        }
        if let Some(left) = self.paused_for() {
            // Another worker met a 429 or an outage while these were being prepared.
            tracing::debug!(
                paused_ms = left.as_millis() as u64,
                "sink paused; records keep their place"
            );
            for (record, _) in &ready {
                self.outbox.settle(
                    record,
                    Settlement::Retry {
                        at_ms: record.next_attempt_ms,
                        counted: false,
                        error: "sink paused".into(),
                    },
                );
            }
            return;
        }
        let mut docs: Vec<TrackedEmail> = ready.iter().map(|(_, d)| d.clone()).collect();
        let progress = |index: usize, done: u8| {
            if let Some((record, _)) = ready.get(index) {
                self.outbox.progress(record, done);
            }
        };
        let outcomes = self.sink.deliver(&mut docs, &progress).await;
        for ((record, _), doc) in ready.iter_mut().zip(&docs) {
            record.progress = doc.steps_done;
        }
        let sink = self.sink.name();
        // One sink call is one outage, however many records it carried.
        let outage = outcomes.iter().find(|o| {
            matches!(
                o,
                Outcome::Unavailable { .. } | Outcome::Unauthorized { .. }
            )
        });
        match outage {
            Some(outcome) => self.outage(ticket, outcome),
            None => self.answered(ticket),
        }
        for ((record, doc), outcome) in ready.iter().zip(outcomes) {
            self.metrics.outcome(sink, outcome.label());
            let settlement = self.settlement(record, outcome);
            if settlement == Settlement::Delivered {
                self.metrics
                    .latency
                    .observe(now_ms().saturating_sub(record.enqueued_ms) as f64 / 1000.0);
            }
            self.settle(record, settlement, Some(doc));
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        breaker::jittered_backoff(
            self.settings.backoff_base,
            self.settings.backoff_max,
            attempt,
        )
    }

    /// Counts an outage with the breaker (once for all the calls of its instant); refused
    /// credentials are also reported, once, as what stops delivery.
    fn outage(&self, ticket: Ticket, outcome: &Outcome) {
        let error = outcome.text();
        if let Outcome::Unauthorized { error } = outcome
            && self.health.set(Some(error))
        {
            tracing::error!(
                sink = self.sink.name(),
                %error,
                "the CRM refused trackgate's credentials: nothing is delivered until they are \
                 fixed ([crm.dataverse] client_id, client_secret, token_url, then restart); /readyz says not ready"
            );
        }
        match self.breaker.failed(ticket, Instant::now()) {
            Some(opened) => tracing::warn!(
                %error,
                opens = opened.opens,
                probe_in_ms = opened.wait.as_millis() as u64,
                "CRM unavailable: deliveries held, probing"
            ),
            None => tracing::debug!(%error, "CRM call failed"),
        }
    }

    fn settlement(&self, record: &Record, outcome: Outcome) -> Settlement {
        let now = now_ms();
        match outcome {
            Outcome::Delivered => Settlement::Delivered,
            Outcome::Throttled { retry_after } => {
                self.pause_until(Instant::now() + retry_after);
                tracing::warn!(
                    retry_after_ms = retry_after.as_millis() as u64,
                    "CRM throttled (429): pausing the sink"
                );
                // The record keeps its place in line: the sink-wide pause holds everything.
                Settlement::Retry {
                    at_ms: record.next_attempt_ms,
                    counted: false,
                    error: "throttled (429)".into(),
                }
            }
            // The breaker counted the call once (`outage`).
            Outcome::Unavailable { error } | Outcome::Unauthorized { error } => Settlement::Retry {
                at_ms: record.next_attempt_ms,
                counted: false,
                error,
            },
            Outcome::Failed { status, error } => {
                let attempts = record.attempts + 1;
                if attempts >= self.settings.max_attempts {
                    Settlement::Dead {
                        status,
                        response: None,
                        error: format!("gave up after {attempts} attempts: {error}"),
                    }
                } else {
                    Settlement::Retry {
                        at_ms: now + self.backoff(attempts).as_millis() as u64,
                        counted: true,
                        error,
                    }
                }
            }
            Outcome::Rejected {
                status,
                response,
                error,
            } => Settlement::Dead {
                status: Some(status),
                response: Some(response),
                error,
            },
        }
    }

    /// Fetches the message a decision is about: by its id, or, for a send, its saved copy in
    /// Sent Items when the send has no id or its id is gone (a sent draft moves).
    async fn fetch_message(
        &self,
        client: &ExchangeClient,
        decision: &Decision,
        record: &Record,
    ) -> Result<Fetched, ExchangeError> {
        let principal = decision.mailbox.as_deref().unwrap_or_default();
        let mailbox = self
            .enrichment
            .mailbox_address(principal)
            .unwrap_or_else(|| principal.to_owned());
        let html = self.settings.body == BodyPolicy::Full;
        let is_send = decision.observation == "message_sent";
        if let Some(item_id) = &decision.item_id {
            let graph = decision.operation.starts_with(char::is_lowercase);
            match client.fetch(&mailbox, item_id, graph, html).await {
                Err(ExchangeError::NotFound(_)) if is_send => {}
                fetched => return fetched,
            }
        }
        self.metrics.enrichment("sent_copy");
        let candidates = client
            .sent_copies(&SentCopyQuery {
                mailbox: &mailbox,
                subject: decision.subject.as_deref(),
                seen_ms: record.enqueued_ms,
                html,
            })
            .await?;
        self.claim_sent_copy(record.key, candidates)
    }

    /// The one candidate no other send has claimed, claimed for `key`. Two sends seen at once
    /// without subjects may each see both copies; the first to claim one leaves the other
    /// unambiguous on its next attempt.
    fn claim_sent_copy(
        &self,
        key: uuid::Uuid,
        candidates: Vec<Fetched>,
    ) -> Result<Fetched, ExchangeError> {
        let mut claimed = self
            .sent_copies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut free: Vec<Fetched> = candidates
            .into_iter()
            .filter(|c| {
                let id = c.message.internet_message_id.as_deref().unwrap_or_default();
                claimed.get(id).is_none_or(|owner| *owner == key)
            })
            .collect();
        match free.len() {
            0 => Err(ExchangeError::NotFound(
                "no saved copy in Sent Items around the send".into(),
            )),
            1 => {
                let copy = free.remove(0);
                if claimed.len() >= MAX_CLAIMED_COPIES {
                    claimed.clear();
                }
                if let Some(id) = &copy.message.internet_message_id {
                    claimed.insert(id.to_string(), key);
                }
                Ok(copy)
            }
            n => Err(ExchangeError::Ambiguous(n)),
        }
    }

    /// The document for a record, or the reason enrichment showed it is not tracked after all.
    async fn prepare(&self, record: &Record) -> Result<Prepared, Settlement> {
        let mut decision = record.decision.clone();
        let mut body = None;
        let wants_body = self.settings.body != BodyPolicy::None && !decision.update_regarding;
        // A send's own id is never given (CreateItem) or changes (SendItem): its saved copy
        // stands in for it.
        let is_send = decision.observation == "message_sent";
        let fetchable = decision.mailbox.is_some() && (decision.item_id.is_some() || is_send);
        match &self.exchange {
            Some(client) if fetchable && (decision.needs_enrichment || wants_body) => {
                match self.fetch_message(client, &decision, record).await {
                    Ok(fetched) => {
                        self.metrics.enrichment("fetched");
                        if decision.needs_enrichment {
                            let decided = self.enrichment.redecide(&decision, &fetched.message);
                            if !decided.is_track() {
                                self.metrics.enrichment("not_tracked");
                                tracing::debug!(
                                    reason = decided.reason.as_str(),
                                    "not tracked after enrichment"
                                );
                                return Ok(Prepared::NotTracked(decided.reason.as_str()));
                            }
                            decision = decided;
                        }
                        body = fetched.body;
                    }
                    Err(error) if error.is_transient() => {
                        self.metrics.enrichment("retry");
                        let attempts = record.attempts + 1;
                        return Err(if attempts >= self.settings.max_attempts {
                            Settlement::Dead {
                                status: None,
                                response: None,
                                error: format!("enrichment gave up: {error}"),
                            }
                        } else {
                            Settlement::Retry {
                                at_ms: now_ms() + self.backoff(attempts).as_millis() as u64,
                                counted: true,
                                error: format!("enrichment: {error}"),
                            }
                        });
                    }
                    Err(error) if decision.needs_enrichment => {
                        self.metrics.enrichment("failed");
                        return Err(Settlement::Dead {
                            status: None,
                            response: None,
                            error: format!("enrichment: {error}"),
                        });
                    }
                    Err(error) => {
                        // The body is a nicety; the email still goes.
                        self.metrics.enrichment("failed");
                        tracing::debug!(%error, "body not fetched");
                    }
                }
            }
            None if decision.needs_enrichment && decision.crm_id.is_none() => {
                return Err(Settlement::Dead {
                    status: None,
                    response: None,
                    error: "the traffic did not show this message's content and no Exchange service client ([exchange]) is configured to fetch it".into(),
                });
            }
            _ => {}
        }
        let mut doc = mapping::tracked_email(&decision, record.key, body, self.settings.body)
            .map_err(|e| Settlement::Dead {
                status: None,
                response: None,
                error: e.to_string(),
            })?;
        doc.steps_done = record.progress;
        doc.caller = decision
            .mailbox
            .as_deref()
            .and_then(|m| self.enrichment.owner(m));
        Ok(Prepared::Ready(Box::new(doc)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_names_the_crms_error_code_and_nothing_else() {
        let body =
            r#"{"error":{"code":"0x80040217","message":"contact With Id = 1 Does Not Exist"}}"#;
        assert_eq!(crm_error_code(Some(body)).as_deref(), Some("0x80040217"));
        assert_eq!(crm_error_code(Some("<html>bad gateway</html>")), None);
        assert_eq!(crm_error_code(None), None);
        let prose = r#"{"error":{"code":"pat.buyer@fabrikam.example is unknown"}}"#;
        assert_eq!(
            crm_error_code(Some(prose)),
            None,
            "only a code-shaped code is logged"
        );
    }

    #[test]
    fn health_reports_a_credentials_problem_until_it_is_cleared() {
        let health = DeliveryHealth::default();
        assert_eq!(health.problem(), None);
        assert!(health.set(Some("invalid_client")));
        assert!(!health.set(Some("invalid_client")), "said once");
        assert_eq!(health.problem().as_deref(), Some("invalid_client"));
        assert!(health.set(None));
        assert_eq!(health.problem(), None);
    }
}
