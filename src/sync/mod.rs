//! CRM ⇄ Exchange synchronisation of appointments, contacts and tasks, and CRM mail sent
//! through the mailbox (docs/domain.md §5, §6). The stage after delivery: it reads the
//! directory's replica (which rows each user's Outlook filters select, their row versions), the
//! user's mailbox over EWS, and writes both sides.
//!
//! Per mailbox and interval (the user's `outlooksyncinterval` in minutes, never below the org's
//! `minoutlooksyncinterval`, else `[sync] interval`): one probe asks Exchange whether the
//! calendar, contacts or tasks changed; only then are their changes read (`SyncFolderItems`).
//! The CRM side costs nothing per mailbox: the directory's refresh already brought every
//! row's version. Rows selected and not linked are created in Exchange; linked rows whose
//! version or item changed are merged field by field ([`merge`]); rows that left the selection
//! are deleted in Exchange (or unlinked); items deleted in Exchange follow the delete rules of
//! §5.1; new items given the tracking category are created in the CRM. Links live in
//! `sync.redb` and on each item (an extended property), so a restart or a lost link file
//! re-syncs without duplicating either side.

mod apply;
mod deletes;
pub mod fields;
mod links;
mod mailbox;
pub mod merge;
mod send;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::directory::dataverse::DataverseSource;
use crate::directory::model::{DirectoryDocument, UserSettings};
use crate::directory::{DirectoryHandle, DirectoryMetrics};
use crate::exchange::{ExchangeClient, ExchangeError};
use crate::fleet::Ownership;

pub use fields::SyncFields;
pub use links::{DeadLetter, Link, LinkError, LinkStore};

/// How synchronisation runs.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// `sync.redb`.
    pub store: PathBuf,
    /// Between two runs of a mailbox when the user sets no interval.
    pub interval: Duration,
    /// How often the scheduler looks for mailboxes that are due.
    pub tick: Duration,
    /// Exchange items created per mailbox per run at most (a first sync of a large selection
    /// spreads over runs).
    pub creates_per_run: usize,
    /// Send CRM mail in status Pending Send through the owners' mailboxes.
    pub send_mail: bool,
    /// The category that makes an Exchange item tracked (the org's first name, else
    /// "Tracked to Dynamics 365").
    pub default_category: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("Exchange is busy; back off {0} ms")]
    Busy(u64),
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("Dataverse: {0}")]
    Crm(#[from] crate::directory::dataverse::SourceError),
    #[error(transparent)]
    Store(#[from] LinkError),
}

impl SyncError {
    fn label(&self) -> &'static str {
        match self {
            SyncError::Busy(_) | SyncError::Exchange(ExchangeError::Busy(_)) => "exchange_busy",
            SyncError::Exchange(_) => "exchange",
            SyncError::Crm(crate::directory::dataverse::SourceError::Throttled { .. }) => {
                "crm_busy"
            }
            SyncError::Crm(_) => "crm",
            SyncError::Store(_) => "store",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ItemLabels {
    kind: &'static str,
    /// `to_exchange` or `to_crm`.
    direction: &'static str,
    /// `create`, `update`, `delete`, `unlink`.
    action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Counters of synchronisation (kinds, directions and reasons as labels; never mailboxes).
#[derive(Clone, Default)]
pub struct SyncMetrics {
    items: Family<ItemLabels, Counter>,
    conflicts: Counter,
    failures: Family<ReasonLabels, Counter>,
    runs: Family<ResultLabels, Counter>,
    sent: Family<ResultLabels, Counter>,
}

impl SyncMetrics {
    pub fn register(registry: &mut Registry) -> SyncMetrics {
        let m = SyncMetrics::default();
        let r = registry.sub_registry_with_prefix("sync");
        r.register(
            "items",
            "Items synchronised by kind (appointment, contact, task), direction (to_exchange, to_crm) and action (create, update, delete, unlink)",
            m.items.clone(),
        );
        r.register(
            "conflicts",
            "Fields changed on both sides since the last sync, resolved by direction then by the later change",
            m.conflicts.clone(),
        );
        r.register(
            "failures",
            "Writes that failed, by reason (crm_rejected, exchange_rejected, exchange_busy, crm_busy, unreachable)",
            m.failures.clone(),
        );
        r.register(
            "runs",
            "Mailbox runs by result (ok, busy, failed)",
            m.runs.clone(),
        );
        r.register(
            "emails_sent",
            "CRM emails sent through a mailbox by result (sent, already_sent, failed)",
            m.sent.clone(),
        );
        m
    }

    fn item(&self, kind: &'static str, direction: &'static str, action: &'static str) {
        self.items
            .get_or_create(&ItemLabels {
                kind,
                direction,
                action,
            })
            .inc();
    }

    fn failure(&self, reason: &'static str) {
        self.failures.get_or_create(&ReasonLabels { reason }).inc();
    }
}

/// What one run of a mailbox did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunReport {
    pub created_in_exchange: u32,
    pub updated_in_exchange: u32,
    pub deleted_in_exchange: u32,
    pub unlinked: u32,
    pub created_in_crm: u32,
    pub updated_in_crm: u32,
    pub deleted_in_crm: u32,
    pub conflicts: u32,
    pub failed: u32,
    /// Rows selected but left for the next run (`creates_per_run`).
    pub deferred: u32,
    pub refused_filters: Vec<String>,
}

/// What synchronisation knows of one mailbox, for `GET /sync` and `trackgate sync status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MailboxStatus {
    pub mailbox: String,
    pub interval_minutes: u64,
    pub last_run_seconds_ago: Option<u64>,
    pub next_run_in_seconds: Option<u64>,
    pub linked: usize,
    pub last_result: Option<String>,
    pub last_report: Option<RunReport>,
    pub dead_letters: Vec<DeadLetter>,
}

#[derive(Default)]
struct Progress {
    last: HashMap<String, (Instant, String, Option<RunReport>)>,
    next: HashMap<String, Instant>,
}

/// A mailbox that synchronises, with its user.
#[derive(Debug, Clone)]
pub(crate) struct SyncingMailbox {
    pub address: String,
    pub user: Uuid,
    pub settings: UserSettings,
    pub interval: Duration,
    /// CRM mail goes out through it: its outgoing method is server-side sync, or the user
    /// allowed it on the options page.
    pub sends_mail: bool,
}

/// The mailboxes that synchronise: users' mailboxes on server-side sync for appointments,
/// contacts and tasks (never a queue's), each with its interval. With `items_only` false, every
/// user's mailbox (CRM mail goes out through a user's mailbox whatever that setting).
pub(crate) fn syncing_mailboxes(
    doc: &DirectoryDocument,
    default: Duration,
    items_only: bool,
) -> Vec<SyncingMailbox> {
    let settings: HashMap<Uuid, &UserSettings> = doc
        .usersettingscollection
        .iter()
        .map(|s| (s.systemuserid, s))
        .collect();
    let floor =
        Duration::from_secs(u64::from(doc.organization.minoutlooksyncinterval.unwrap_or(0)) * 60);
    doc.mailboxes
        .iter()
        .filter(|m| m.regardingobjectid.entity == "systemuser")
        .filter(|m| !items_only || m.actdeliverymethod == 1)
        .filter_map(|m| {
            let user = m.regardingobjectid.id;
            let settings = settings.get(&user).map(|s| (*s).clone())?;
            let interval = settings
                .outlooksyncinterval
                .filter(|m| *m > 0)
                .map_or(default, |m| Duration::from_secs(u64::from(m) * 60))
                .max(floor);
            Some(SyncingMailbox {
                sends_mail: m.outgoingemaildeliverymethod == 2 || settings.allowcrmsendemail,
                address: m.emailaddress.to_ascii_lowercase(),
                user,
                settings,
                interval,
            })
        })
        .collect()
}

/// Synchronisation.
pub struct Syncer {
    crm: Arc<DataverseSource>,
    exchange: Arc<ExchangeClient>,
    fields: SyncFields,
    store: LinkStore,
    settings: SyncSettings,
    metrics: SyncMetrics,
    progress: Mutex<Progress>,
    wake: Notify,
    ownership: Option<Arc<dyn Ownership>>,
    /// One round at a time (the scheduler and `sync run` share it).
    round: tokio::sync::Mutex<()>,
    /// Refreshes the directory before a round when it is older than [`FRESH`], so a CRM
    /// change reaches Exchange within one interval (plus that).
    refresher: Option<(DirectoryHandle, Arc<DirectoryMetrics>)>,
}

/// How old the directory may be when a round runs a mailbox.
const FRESH: Duration = Duration::from_secs(30);

impl Syncer {
    pub fn new(
        crm: Arc<DataverseSource>,
        exchange: Arc<ExchangeClient>,
        fields: SyncFields,
        settings: SyncSettings,
        metrics: SyncMetrics,
        ownership: Option<Arc<dyn Ownership>>,
        refresher: Option<(DirectoryHandle, Arc<DirectoryMetrics>)>,
    ) -> Result<Arc<Syncer>, LinkError> {
        let store = LinkStore::open(&settings.store)?;
        Ok(Arc::new(Syncer {
            crm,
            exchange,
            fields,
            store,
            settings,
            metrics,
            progress: Mutex::new(Progress::default()),
            wake: Notify::new(),
            ownership,
            round: tokio::sync::Mutex::new(()),
            refresher,
        }))
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn store(&self) -> &LinkStore {
        &self.store
    }

    /// Runs `mailbox` at the next tick, and retries its dead letters.
    pub fn request(&self, mailbox: &str) -> Result<usize, LinkError> {
        let mailbox = mailbox.to_ascii_lowercase();
        let cleared = self.store.clear_dead_letters(&mailbox)?;
        // A retry compares every linked row again.
        self.store.forget_versions(&mailbox)?;
        self.progress().next.insert(mailbox, Instant::now());
        self.wake.notify_one();
        Ok(cleared)
    }

    /// Makes every mailbox due at the next tick, as its interval would (nothing is compared
    /// again that has not changed): for benches and tests that cannot wait an interval.
    pub fn all_due_now(&self) {
        let now = Instant::now();
        for next in self.progress().next.values_mut() {
            *next = now;
        }
        self.wake.notify_one();
    }

    /// Every synchronising mailbox with what is known of it.
    pub async fn status(&self) -> Vec<MailboxStatus> {
        let doc = self.crm.document().await;
        let mailboxes = syncing_mailboxes(&doc, self.settings.interval, true);
        let counts = self.store.counts().unwrap_or_default();
        let dead = self.store.dead_letters(None).unwrap_or_default();
        let progress = self.progress();
        let now = Instant::now();
        mailboxes
            .into_iter()
            .map(|m| {
                let last = progress.last.get(&m.address);
                MailboxStatus {
                    interval_minutes: m.interval.as_secs() / 60,
                    last_run_seconds_ago: last.map(|(t, _, _)| t.elapsed().as_secs()),
                    next_run_in_seconds: progress
                        .next
                        .get(&m.address)
                        .map(|t| t.saturating_duration_since(now).as_secs()),
                    linked: counts.get(&m.address).copied().unwrap_or(0),
                    last_result: last.map(|(_, r, _)| r.clone()),
                    last_report: last.and_then(|(_, _, r)| r.clone()),
                    dead_letters: dead
                        .iter()
                        .filter(|d| d.mailbox == m.address)
                        .cloned()
                        .collect(),
                    mailbox: m.address,
                }
            })
            .collect()
    }

    /// The scheduler: a round every tick (or when asked), until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.round().await;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.tick) => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// Runs every due mailbox once, then sends pending CRM mail. The directory document is
    /// built only when there is something to do with it.
    pub async fn round(&self) {
        let _one = self.round.lock().await;
        let doc = if self.anything_due() {
            self.refresh_if_stale().await;
            let doc = self.crm.document().await;
            self.run_due(&doc).await;
            Some(doc)
        } else {
            None
        };
        if !self.settings.send_mail {
            return;
        }
        if let Err(error) = self.send_pending(doc).await {
            self.metrics.failure(error.label());
            tracing::warn!(error = %error, "sending CRM mail through mailboxes failed; it is tried again next round");
        }
    }

    /// Whether some mailbox is due (or none has run yet: the list is not known).
    fn anything_due(&self) -> bool {
        let progress = self.progress();
        let now = Instant::now();
        progress.next.is_empty() || progress.next.values().any(|t| *t <= now)
    }

    async fn refresh_if_stale(&self) {
        let Some((handle, metrics)) = &self.refresher else {
            return;
        };
        let now = crate::common::time::now_ms() / 1000;
        let fresh = self
            .crm
            .status()
            .refreshed_at
            .is_some_and(|at| now.saturating_sub(at) < FRESH.as_secs());
        if fresh {
            return;
        }
        if let Err(error) =
            crate::directory::dataverse::refresh_now(&self.crm, handle, metrics).await
        {
            tracing::warn!(%error, "the directory could not be refreshed before synchronising; the last one is used");
        }
    }

    async fn run_due(&self, doc: &DirectoryDocument) {
        let now = crate::common::time::now_ms() as i64 / 1000;
        let prepared = crate::directory::selection::Prepared::new(doc);
        let versions = mailbox::versions(doc);
        for mailbox in syncing_mailboxes(doc, self.settings.interval, true) {
            if !self
                .ownership
                .as_ref()
                .is_none_or(|o| o.owns(&mailbox.address))
            {
                continue;
            }
            let due = self
                .progress()
                .next
                .get(&mailbox.address)
                .is_none_or(|t| *t <= Instant::now());
            if !due {
                continue;
            }
            let started = Instant::now();
            let round = mailbox::Round {
                doc,
                prepared: &prepared,
                versions: &versions,
            };
            let result = self.run_mailbox(round, &mailbox, now).await;
            let (next, text, report) = match result {
                Ok(report) => {
                    self.runs("ok");
                    (mailbox.interval, "ok".to_owned(), Some(report))
                }
                Err(SyncError::Busy(ms) | SyncError::Exchange(ExchangeError::Busy(ms))) => {
                    self.runs("busy");
                    self.metrics.failure("exchange_busy");
                    // Exchange's back-off, honoured: nothing is asked of this mailbox before.
                    let wait = Duration::from_millis(ms).max(self.settings.tick);
                    (wait, format!("exchange busy: back off {ms} ms"), None)
                }
                Err(error) => {
                    self.runs("failed");
                    self.metrics.failure(error.label());
                    tracing::warn!(error = %error, "a mailbox's synchronisation failed; it runs again at its next interval");
                    (mailbox.interval, format!("failed: {error}"), None)
                }
            };
            let mut progress = self.progress();
            progress
                .next
                .insert(mailbox.address.clone(), started + next);
            progress
                .last
                .insert(mailbox.address.clone(), (Instant::now(), text, report));
        }
    }

    fn runs(&self, result: &'static str) {
        self.metrics
            .runs
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Records a write refused for good.
    fn dead_letter(&self, mailbox: &str, record: &str, operation: &str, reason: String) {
        self.metrics.failure(if operation.starts_with("exchange") {
            "exchange_rejected"
        } else {
            "crm_rejected"
        });
        let letter = DeadLetter {
            mailbox: mailbox.to_owned(),
            record: record.to_owned(),
            operation: operation.to_owned(),
            reason,
            at: crate::common::time::now_ms() / 1000,
        };
        if let Err(error) = self.store.put_dead_letter(&letter) {
            tracing::error!(%error, "cannot record a synchronisation dead letter");
        }
    }

    /// The category names that make an item tracked.
    fn categories(&self, doc: &DirectoryDocument) -> Vec<String> {
        let mut names = doc.organization.trackingcategorynames.clone();
        if names.is_empty() {
            names.push(self.settings.default_category.clone());
        }
        names
    }
}

/// The record key of a row: `<entity>:<id>`.
pub(crate) fn record(entity: &str, id: Uuid) -> String {
    format!("{entity}:{id}")
}

/// A record key's parts.
pub(crate) fn parse_record(record: &str) -> Option<(&str, Uuid)> {
    let (entity, id) = record.split_once(':')?;
    Some((entity, Uuid::parse_str(id).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::model::{Lookup, Mailbox};

    #[test]
    fn only_users_mailboxes_on_server_side_sync_synchronise_at_their_interval() {
        let user = Uuid::from_u128(1);
        let queue = Uuid::from_u128(2);
        let mailbox = |n: u128, owner: Lookup, act: u8| Mailbox {
            mailboxid: Uuid::from_u128(n),
            emailaddress: format!("M{n}@x.example"),
            regardingobjectid: owner,
            processemailreceivedafter: None,
            incomingemaildeliverymethod: 2,
            actdeliverymethod: act,
            outgoingemaildeliverymethod: 2,
        };
        let mut doc = DirectoryDocument::default();
        doc.organization.minoutlooksyncinterval = Some(10);
        doc.usersettingscollection.push(UserSettings {
            systemuserid: user,
            outlooksyncinterval: Some(5),
            ..UserSettings::default()
        });
        doc.mailboxes = vec![
            mailbox(10, Lookup::new("systemuser", user), 1),
            mailbox(11, Lookup::new("systemuser", user), 2),
            mailbox(12, Lookup::new("queue", queue), 1),
        ];
        let list = syncing_mailboxes(&doc, Duration::from_secs(300), true);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].address, "m10@x.example");
        // The user's 5 minutes, raised to the org's minimum of 10.
        assert_eq!(list[0].interval, Duration::from_secs(600));
    }
}
