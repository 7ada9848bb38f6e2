//! The catch-up sweep behind the inline path: every mailbox the directory knows is read with
//! the Exchange service client — `SyncFolderItems` (or, with Graph only, `delta`) on the Inbox,
//! Sent Items and each tracked folder, from the sync state kept in `catchup.redb` — and each
//! new or changed message becomes
//! an observation (`source: catch_up`) that goes through the same rules. Deterministic CRM ids
//! and the rules' memory make inline and catch-up idempotent; a page's sync state is stored only
//! after its decisions are, so a crash repeats a page rather than losing one. The first sync of a
//! folder is an initial sync: the rules never track history before the mailbox's cut-off.

mod state;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

pub use state::{StateError, SyncStates};

use crate::directory::{Directory, DirectoryHandle};
use crate::exchange::{ExchangeClient, ExchangeError, SyncFolder};
use crate::fleet::Ownership;
use crate::inspect::{Observation, Origin, Source};

/// Changes read per `SyncFolderItems` page, and messages per `GetItem`.
const PAGE: u16 = 100;
const FETCH: usize = 50;
/// How often the scheduler looks for mailboxes that are due or marked.
const TICK: Duration = Duration::from_millis(250);
/// How often the mailboxes with tracked traffic are written down.
const WRITE_TRAFFIC: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct CatchupSettings {
    pub interval: Duration,
    pub concurrency: usize,
    pub state_file: PathBuf,
}

/// Mailboxes to sweep next, and why: written by whoever learns that inline missed something
/// (a decision that needed enrichment, an operator's request, Exchange asking to back off).
#[derive(Debug, Default)]
pub struct Marks {
    marked: Mutex<HashMap<String, &'static str>>,
    /// Mailboxes with tracked traffic not yet written down (the sweep writes them once a
    /// second).
    traffic: Mutex<BTreeSet<String>>,
}

/// Marks kept at most; beyond, new ones wait for the mailbox's regular sweep.
const MAX_MARKS: usize = 100_000;

impl Marks {
    pub fn mark(&self, mailbox: &str, cause: &'static str) {
        let mut marked = self.marked.lock().unwrap_or_else(|p| p.into_inner());
        if marked.len() < MAX_MARKS {
            marked.entry(mailbox.to_ascii_lowercase()).or_insert(cause);
        }
    }

    /// Notes tracked traffic of a mailbox, by its address or any principal the directory knows
    /// it by (a track decision handed to the outbox, or a copy dropped): if the process dies
    /// before the decision is committed, the next start sweeps this mailbox first. Cheap on
    /// the inspection thread: a set lookup, and one allocation per mailbox a second.
    pub fn saw(&self, mailbox: &str) {
        let mut traffic = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        if traffic.len() < MAX_MARKS && !traffic.contains(mailbox) {
            traffic.insert(mailbox.to_owned());
        }
    }

    fn take_traffic(&self) -> Vec<String> {
        let taken = std::mem::take(&mut *self.traffic.lock().unwrap_or_else(|p| p.into_inner()));
        taken.into_iter().collect()
    }

    fn take(&self) -> HashMap<String, &'static str> {
        std::mem::take(&mut *self.marked.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn contains(&self, mailbox: &str) -> bool {
        self.marked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(mailbox)
    }
}

/// Where the sweep's observations go: the rules and the outbox, wired by the composition root.
pub trait Observer: Send + Sync {
    /// Decides an observation; returns how many track decisions it made (what inline missed).
    fn observe(&self, observation: &Observation) -> usize;
    /// Waits until every decision observed so far is stored; `false` if it could not be.
    fn commit(&self) -> bool;
}

#[derive(Debug, thiserror::Error)]
pub enum CatchupError {
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the decisions of a page could not be stored; its sync state is kept back")]
    Commit,
    #[error("another gateway of the fleet took this mailbox's lease; this sweep stops")]
    Fenced,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Counters and the lag histogram (no mailbox labels: they would be unbounded and personal).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Debug, Clone)]
pub struct CatchupMetrics {
    sweeps: Family<ResultLabels, Counter>,
    items: Counter,
    found: Family<CauseLabels, Counter>,
    lag: Histogram,
}

impl CatchupMetrics {
    pub fn register(registry: &mut Registry) -> CatchupMetrics {
        let m = CatchupMetrics {
            sweeps: Family::default(),
            items: Counter::default(),
            found: Family::default(),
            lag: Histogram::new([1.0, 10.0, 60.0, 300.0, 600.0, 1800.0, 3600.0]),
        };
        let r = registry.sub_registry_with_prefix("catchup");
        r.register(
            "sweeps",
            "Mailbox sweeps by result (ok, busy, failed)",
            m.sweeps.clone(),
        );
        r.register(
            "items",
            "Messages the sweep read and handed to the rules",
            m.items.clone(),
        );
        r.register(
            "found",
            "Messages the sweep tracked that inline had not, by why the mailbox was swept (crash, uninspected_client, dropped, enrichment, requested, busy)",
            m.found.clone(),
        );
        r.register(
            "lag_seconds",
            "Time between two sweeps of a mailbox",
            m.lag.clone(),
        );
        m
    }
}

/// What the sweep knows of one mailbox, for `GET /catchup`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MailboxStatus {
    pub mailbox: String,
    pub last_sweep_seconds_ago: Option<u64>,
    /// Why it was last swept: `crash`, `uninspected_client`, `dropped`, `enrichment`,
    /// `requested` or `busy`.
    pub last_cause: Option<&'static str>,
    pub marked: bool,
    /// Tracked traffic since its last sweep is written down (a crash now would bring it first).
    pub unswept_traffic: bool,
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Progress {
    last: HashMap<String, Instant>,
    causes: HashMap<String, &'static str>,
    errors: HashMap<String, String>,
    running: BTreeSet<String>,
    /// Per mailbox, the server time of the probe that started its last complete sweep.
    probed: HashMap<String, String>,
    /// Exchange asked to back off until then.
    paused_until: Option<Instant>,
}

/// The mailbox list and the directory snapshot it was read from.
type MailboxList = (Arc<Directory>, Arc<[String]>);

/// The sweep.
pub struct Sweeper {
    client: Arc<ExchangeClient>,
    directory: DirectoryHandle,
    observer: Arc<dyn Observer>,
    states: SyncStates,
    settings: CatchupSettings,
    metrics: CatchupMetrics,
    marks: Arc<Marks>,
    progress: Mutex<Progress>,
    mailbox_list: Mutex<Option<MailboxList>>,
    /// In a fleet, which mailboxes are this gateway's to sweep; alone, all of them.
    ownership: Option<Arc<dyn Ownership>>,
}

impl Sweeper {
    pub fn new(
        client: Arc<ExchangeClient>,
        directory: DirectoryHandle,
        observer: Arc<dyn Observer>,
        settings: CatchupSettings,
        metrics: CatchupMetrics,
        marks: Arc<Marks>,
        ownership: Option<Arc<dyn Ownership>>,
    ) -> Result<Arc<Sweeper>, StateError> {
        let states = SyncStates::open(&settings.state_file)?;
        // Traffic written down and never swept nor cleared by a clean shutdown: the last run
        // died with it, maybe before its decisions were committed.
        for mailbox in states.traffic()? {
            marks.mark(&mailbox, "crash");
        }
        Ok(Arc::new(Sweeper {
            marks,
            states,
            client,
            directory,
            observer,
            settings,
            metrics,
            progress: Mutex::new(Progress::default()),
            mailbox_list: Mutex::new(None),
            ownership,
        }))
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks for `mailbox` to be swept next.
    pub fn mark(&self, mailbox: &str) {
        self.marks.mark(mailbox, "requested");
    }

    /// Every mailbox of the directory with what the sweep knows of it.
    pub fn status(&self) -> Vec<MailboxStatus> {
        let written: BTreeSet<String> = match self.states.traffic() {
            Ok(rows) => rows.into_iter().collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot read the catch-up traffic rows");
                BTreeSet::new()
            }
        };
        let progress = self.progress();
        self.mailboxes()
            .iter()
            .cloned()
            .map(|mailbox| MailboxStatus {
                last_sweep_seconds_ago: progress.last.get(&mailbox).map(|t| t.elapsed().as_secs()),
                last_cause: progress.causes.get(&mailbox).copied(),
                unswept_traffic: written.contains(&mailbox),
                marked: self.marks.contains(&mailbox),
                last_error: progress.errors.get(&mailbox).cloned(),
                mailbox,
            })
            .collect()
    }

    /// How often each mailbox is swept: `[catchup] interval`, never below the organization's
    /// minimum between scheduled synchronizations (`minoutlooksyncinterval`).
    fn interval(&self) -> Duration {
        let floor = self.directory.guard().org().min_sync_interval;
        self.settings.interval.max(floor)
    }

    /// The directory's mailbox addresses, lower-cased: listed once per directory snapshot,
    /// not on every tick of the scheduler.
    fn owns(&self, mailbox: &str) -> bool {
        self.ownership.as_ref().is_none_or(|o| o.owns(mailbox))
    }

    /// Every mailbox the directory knows (lower case), owned here or not.
    fn mailboxes(&self) -> Arc<[String]> {
        let dir = self.directory.guard();
        let mut cached = self
            .mailbox_list
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*cached {
            Some((of, list)) if Arc::ptr_eq(of, &dir) => list.clone(),
            _ => {
                let list: Arc<[String]> = dir.mailbox_addresses().collect();
                *cached = Some((Arc::clone(&dir), list.clone()));
                list
            }
        }
    }

    /// Mailboxes to sweep now, with why: marked ones first, then those never swept or due,
    /// oldest first.
    fn due(&self) -> Vec<(String, &'static str)> {
        let now = Instant::now();
        let progress = self.progress();
        if progress.paused_until.is_some_and(|until| until > now) {
            return Vec::new();
        }
        let mut due = Vec::new();
        for (mailbox, cause) in self.marks.take() {
            if !self.owns(&mailbox) {
                // Another gateway's: it sweeps the mailbox on its own schedule.
                continue;
            }
            if progress.running.contains(&mailbox) {
                // Marked while being swept: swept again afterwards.
                self.marks.mark(&mailbox, cause);
            } else {
                due.push((mailbox, cause));
            }
        }
        let mailboxes = self.mailboxes();
        let interval = self.interval();
        let mut waiting: Vec<(Option<Instant>, &String)> = mailboxes
            .iter()
            .filter(|m| !due.iter().any(|(d, _)| d == *m) && !progress.running.contains(*m))
            .filter(|m| self.owns(m))
            .map(|m| (progress.last.get(m).copied(), m))
            .filter(|(last, _)| last.is_none_or(|t| now.duration_since(t) >= interval))
            .collect();
        waiting.sort();
        // Due by the schedule: what it finds is mail no client fetched through the gateway.
        due.extend(
            waiting
                .into_iter()
                .map(|(_, m)| (m.clone(), "uninspected_client")),
        );
        due
    }

    /// Runs on `runtime` (the composition root gives it one behind the traffic) until `stop`
    /// turns true.
    pub fn spawn(
        self: Arc<Self>,
        runtime: &tokio::runtime::Handle,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        runtime.spawn(async move {
            let permits = Arc::new(Semaphore::new(self.settings.concurrency));
            let mut written = Instant::now();
            while !*stop.borrow() {
                if written.elapsed() >= WRITE_TRAFFIC {
                    written = Instant::now();
                    self.write_traffic();
                }
                for (mailbox, cause) in self.due() {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    self.progress().running.insert(mailbox.clone());
                    let sweeper = self.clone();
                    tokio::spawn(async move {
                        sweeper.sweep_and_record(&mailbox, cause).await;
                        drop(permit);
                    });
                }
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
            // Sweeps under way finish (their pages' states are stored only after their
            // decisions), so that nothing holds the outbox once this returns.
            let all = u32::try_from(self.settings.concurrency).unwrap_or(u32::MAX);
            let _ = permits.acquire_many(all).await;
        })
    }

    /// Writes down the mailboxes that had tracked traffic since the last time (one commit).
    fn write_traffic(&self) {
        let noted = self.marks.take_traffic();
        let seen: Vec<String> = {
            let dir = self.directory.guard();
            let addresses: BTreeSet<String> = noted
                .iter()
                .filter_map(|principal| dir.mailbox(principal))
                .map(|m| m.address.to_ascii_lowercase())
                .collect();
            addresses.into_iter().collect()
        };
        if seen.is_empty() {
            return;
        }
        let write = || {
            self.states
                .record_traffic(&seen, crate::common::time::now_ms())
        };
        if let Err(error) = crate::common::off_the_workers(write) {
            tracing::warn!(%error, "cannot write down which mailboxes had traffic");
        }
    }

    /// After a clean shutdown every decision is committed: nothing is at risk, and the next
    /// start need not bring any mailbox forward.
    pub fn forget_traffic(&self) {
        self.marks.take_traffic();
        if let Err(error) = self.states.clear_traffic(None, 0) {
            tracing::warn!(%error, "cannot clear the catch-up traffic rows");
        }
    }

    async fn sweep_and_record(&self, mailbox: &str, cause: &'static str) {
        let started = Instant::now();
        let started_ms = crate::common::time::now_ms();
        let result = self.sweep(mailbox).await;
        if result.is_ok()
            && let Err(error) = self.states.clear_traffic(Some(mailbox), started_ms)
        {
            tracing::warn!(%error, "cannot clear a swept mailbox's traffic row");
        }
        if let Ok(found) = result.as_ref()
            && *found > 0
        {
            self.metrics
                .found
                .get_or_create(&CauseLabels { cause })
                .inc_by(*found as u64);
        }
        let mut progress = self.progress();
        progress.running.remove(mailbox);
        progress.causes.insert(mailbox.to_owned(), cause);
        if let Some(previous) = progress.last.insert(mailbox.to_owned(), started) {
            self.metrics
                .lag
                .observe(started.duration_since(previous).as_secs_f64());
        }
        let outcome = match result {
            Ok(_) => {
                progress.errors.remove(mailbox);
                "ok"
            }
            Err(CatchupError::Exchange(ExchangeError::Busy(ms))) => {
                progress.paused_until = Some(Instant::now() + Duration::from_millis(ms));
                progress
                    .errors
                    .insert(mailbox.to_owned(), format!("busy: back off {ms} ms"));
                self.marks.mark(mailbox, "busy");
                "busy"
            }
            Err(e) => {
                tracing::warn!(error = %e, "catch-up sweep of a mailbox failed");
                progress.errors.insert(mailbox.to_owned(), e.to_string());
                "failed"
            }
        };
        self.metrics
            .sweeps
            .get_or_create(&ResultLabels { result: outcome })
            .inc();
    }

    /// Sweeps one mailbox now: the Inbox, Sent Items and every tracked folder. Returns the number
    /// of track decisions made (messages inline had not tracked).
    pub async fn sweep(&self, mailbox: &str) -> Result<usize, CatchupError> {
        let tracked: Vec<String> = {
            let dir = self.directory.guard();
            match dir.mailbox(mailbox) {
                Some(entry) => dir.tracked_folder_ids(entry).map(str::to_owned).collect(),
                None => Vec::new(),
            }
        };
        let mut folders = vec![
            (SyncFolder::Distinguished("inbox"), "inbox"),
            (SyncFolder::Distinguished("sentitems"), "sentitems"),
        ];
        folders.extend(tracked.iter().map(|id| (SyncFolder::Id(id), id.as_str())));
        // One request when nothing changed: a probe over every folder since the last complete
        // sweep (server time). A folder never synced makes the sweep read everything.
        let since = self.progress().probed.get(mailbox).cloned();
        let states = folders
            .iter()
            .map(|(_, key)| self.states.get(mailbox, key))
            .collect::<Result<Vec<_>, _>>()?;
        let all_synced = states.iter().all(Option::is_some);
        let ids: Vec<SyncFolder<'_>> = folders.iter().map(|(f, _)| *f).collect();
        let since = since.as_deref().filter(|_| all_synced);
        let (changed, now) = if self.client.ews_configured() {
            self.client.changed_since(mailbox, &ids, since).await?
        } else {
            self.client.graph_changed_since(mailbox, since).await?
        };
        let mut found = 0;
        if changed {
            for ((folder, key), state) in folders.iter().zip(states) {
                found += self.sweep_folder(mailbox, *folder, key, state).await?;
            }
        }
        if let Some(now) = now {
            self.progress().probed.insert(mailbox.to_owned(), now);
        }
        Ok(found)
    }

    async fn sweep_folder(
        &self,
        mailbox: &str,
        folder: SyncFolder<'_>,
        key: &str,
        stored: Option<String>,
    ) -> Result<usize, CatchupError> {
        // A folder's first sync is an initial sync until its last page, across sweeps and
        // restarts: the stored state says so while it is under way.
        let (mut state, mut initial) = match stored {
            Some(s) => match s.strip_prefix(INITIAL) {
                Some(rest) => (Some(rest.to_owned()), true),
                None => (Some(s), false),
            },
            None => (None, true),
        };
        let mut found = 0;
        let mut restarted = false;
        loop {
            let page = match self.page(mailbox, folder, state.as_deref()).await {
                // An expired state: start over; the cut-off keeps history out.
                Err(ExchangeError::InvalidSyncState) if !restarted => {
                    restarted = true;
                    self.states.put(mailbox, key, None)?;
                    (state, initial) = (None, true);
                    continue;
                }
                other => other?,
            };
            let read = page.messages.len();
            // The fence: the page's decisions go out only while the lease is still this
            // gateway's (a gateway resumed after a freeze finds it taken and stops here).
            if read > 0
                && let Some(ownership) = &self.ownership
                && !ownership.confirm(mailbox).await
            {
                return Err(CatchupError::Fenced);
            }
            for mut message in page.messages {
                // The rules know a distinguished folder by its name, not its id.
                if let SyncFolder::Distinguished(name) = folder {
                    message.folder = Some(name.into());
                }
                found += self.observer.observe(&Observation::MessageSeen {
                    origin: Origin {
                        mailbox: Some(mailbox.into()),
                        source: Source::CatchUp,
                        operation: "CatchUp".into(),
                    },
                    message: message.into(),
                    initial_sync: initial,
                });
                self.metrics.items.inc();
            }
            // A page that read nothing has nothing to commit: no outbox flush (an fsync).
            if read > 0 && !self.observer.commit() {
                return Err(CatchupError::Commit);
            }
            let kept = if initial && !page.last {
                format!("{INITIAL}{}", page.state)
            } else {
                page.state.clone()
            };
            self.states.put(mailbox, key, Some(&kept))?;
            if page.last {
                return Ok(found);
            }
            state = Some(page.state);
        }
    }

    /// One page of a folder's changed messages: EWS `SyncFolderItems` and `GetItem` of what it
    /// lists, or one Graph `delta` page (the messages in it) where only Graph is configured.
    async fn page(
        &self,
        mailbox: &str,
        folder: SyncFolder<'_>,
        state: Option<&str>,
    ) -> Result<Changes, ExchangeError> {
        if !self.client.ews_configured() {
            let page = self
                .client
                .messages_delta(mailbox, folder, state, PAGE)
                .await?;
            return Ok(Changes {
                messages: page.messages,
                state: page.state,
                last: page.last,
            });
        }
        let page = self
            .client
            .sync_folder_items(mailbox, folder, state, PAGE)
            .await?;
        let mut messages = Vec::with_capacity(page.item_ids.len());
        for chunk in page.item_ids.chunks(FETCH) {
            let ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
            messages.extend(self.client.get_messages(mailbox, &ids).await?);
        }
        Ok(Changes {
            messages,
            state: page.state,
            last: page.last,
        })
    }
}

/// A page of a folder's changes, whichever way it was read.
struct Changes {
    messages: Vec<crate::inspect::Message>,
    state: String,
    last: bool,
}

/// Marks a stored sync state taken in the middle of a folder's initial sync.
const INITIAL: &str = "initial:";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::model::DirectoryDocument;

    struct Nothing;

    impl Observer for Nothing {
        fn observe(&self, _: &Observation) -> usize {
            0
        }
        fn commit(&self) -> bool {
            true
        }
    }

    /// A sweeper over the embedded example with `[catchup] interval` and the organization's
    /// `minoutlooksyncinterval`, every mailbox swept `ago` before now.
    fn swept(
        dir: &std::path::Path,
        interval: Duration,
        floor_minutes: Option<u32>,
        ago: Duration,
    ) -> Arc<Sweeper> {
        let mut doc: DirectoryDocument =
            toml::from_str(crate::directory::file::EMBEDDED_EXAMPLE).unwrap();
        doc.organization.minoutlooksyncinterval = floor_minutes;
        let directory = DirectoryHandle::new(Directory::build(doc).unwrap());
        let client = ExchangeClient::new(
            reqwest::Client::new(),
            crate::exchange::ExchangeSettings {
                ews_url: Some("http://127.0.0.1:9/EWS/Exchange.asmx".into()),
                graph_url: None,
                auth: crate::exchange::ExchangeAuth::Basic {
                    username: "svc".into(),
                    password: crate::common::Secret::new("x"),
                },
                timeout: Duration::from_secs(1),
                concurrency: 1,
            },
        );
        let sweeper = Sweeper::new(
            Arc::new(client),
            directory,
            Arc::new(Nothing),
            CatchupSettings {
                interval,
                concurrency: 1,
                state_file: dir.join("catchup.redb"),
            },
            CatchupMetrics::register(&mut Registry::default()),
            Arc::new(Marks::default()),
            None,
        )
        .unwrap();
        let then = Instant::now() - ago;
        let mailboxes = sweeper.mailboxes();
        sweeper
            .progress()
            .last
            .extend(mailboxes.iter().map(|m| (m.clone(), then)));
        sweeper
    }

    #[test]
    fn no_mailbox_is_swept_more_often_than_the_organizations_minimum_allows() {
        let dir = tempfile::tempdir().unwrap();
        let due = |floor, ago| {
            swept(dir.path(), Duration::from_secs(60), floor, ago)
                .due()
                .len()
        };
        let mailboxes = swept(dir.path(), Duration::from_secs(60), None, Duration::ZERO)
            .mailboxes()
            .len();
        assert!(mailboxes > 0);
        assert_eq!(
            due(None, Duration::from_secs(61)),
            mailboxes,
            "the interval has passed"
        );
        assert_eq!(
            due(Some(0), Duration::from_secs(61)),
            mailboxes,
            "0: no minimum"
        );
        assert_eq!(
            due(Some(5), Duration::from_secs(61)),
            0,
            "the organization asks for 5 minutes"
        );
        assert_eq!(due(Some(5), Duration::from_secs(301)), mailboxes);
        assert_eq!(due(None, Duration::from_secs(59)), 0);
    }
}
