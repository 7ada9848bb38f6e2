//! The directory: the replica of CRM state that the rules read — users and their personal
//! options, queues, mailboxes and folder tracking rules, org settings, records by e-mail address
//! and the emails already tracked. Sourced from a file (TOML or JSON) or, with no file
//! configured, from the embedded example; reloaded on change or SIGHUP — or from Dataverse,
//! replicated, refreshed and persisted (`dataverse`, `replica`) — and swapped as one immutable
//! snapshot, so readers never lock.

pub mod dataverse;
mod edit;
pub mod fetchxml;
pub mod file;
pub mod model;
pub mod odata;
pub mod replica;
pub mod selection;
pub mod settings;
pub mod snapshot;
pub mod tables;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use edit::UserOptionsEdit;
pub use file::{DirectoryError, FileSource};
pub use model::DirectoryDocument;
pub use settings::{DirectorySettings, DocumentOverlay, Overlay};
pub use snapshot::{Directory, DirectoryCounts, EntityKind, InvalidDirectory, Owner};

/// The current snapshot, shared by every reader; a reload swaps it whole.
#[derive(Debug, Clone)]
pub struct DirectoryHandle {
    current: Arc<ArcSwap<Directory>>,
}

impl DirectoryHandle {
    pub fn new(directory: Directory) -> DirectoryHandle {
        DirectoryHandle {
            current: Arc::new(ArcSwap::from_pointee(directory)),
        }
    }

    /// The snapshot as of now; holding it never blocks a swap.
    pub fn load(&self) -> Arc<Directory> {
        self.current.load_full()
    }

    /// A cheap, short-lived view for one decision.
    pub fn guard(&self) -> arc_swap::Guard<Arc<Directory>> {
        self.current.load()
    }

    /// Swaps in a shared snapshot and returns the previous one (the caller decides where it is
    /// freed).
    pub fn swap_arc(&self, directory: Arc<Directory>) -> Arc<Directory> {
        self.current.swap(directory)
    }

    /// Swaps in a new snapshot. The old one is freed on a helper thread once the last reader
    /// lets go, so no reader ever pays for dropping a million records.
    pub fn swap(&self, directory: Directory) {
        let old = self.swap_arc(Arc::new(directory));
        let retire = move || {
            // `swap` has turned every reader's borrow into a counted reference, so the count
            // falls to one when the last reader is done (readers hold it for one decision).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            drop(old);
        };
        if std::thread::Builder::new()
            .name("trackgate-directory-retire".into())
            .spawn(retire)
            .is_err()
        {
            tracing::warn!("cannot start a thread to free the old directory; freeing it here");
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: &'static str,
}

/// Loads, sizes and age of the directory.
#[derive(Debug)]
pub struct DirectoryMetrics {
    loads: Family<ResultLabels, Counter>,
    rows: Family<TableLabels, Gauge>,
    loaded_at: Gauge<u64, AtomicU64>,
    staleness: Gauge,
    refresh_failing: Gauge,
}

impl DirectoryMetrics {
    pub fn register(registry: &mut Registry) -> DirectoryMetrics {
        let m = DirectoryMetrics {
            loads: Family::default(),
            rows: Family::default(),
            loaded_at: Gauge::default(),
            staleness: Gauge::default(),
            refresh_failing: Gauge::default(),
        };
        registry.register(
            "directory_loads",
            "Directory loads and reloads, by result (a failed reload keeps the last snapshot)",
            m.loads.clone(),
        );
        registry.register(
            "directory_rows",
            "Rows in the current directory snapshot, by table",
            m.rows.clone(),
        );
        registry.register(
            "directory_loaded_timestamp_seconds",
            "When the current directory snapshot was loaded (Unix time)",
            m.loaded_at.clone(),
        );
        registry.register(
            "directory_staleness_seconds",
            "Age of the directory data served, for a Dataverse source (0 for a file)",
            m.staleness.clone(),
        );
        registry.register(
            "directory_refresh_failing",
            "1 while the last Dataverse refresh failed (the last snapshot is served)",
            m.refresh_failing.clone(),
        );
        m
    }

    /// Records the Dataverse source's freshness.
    pub fn source_status(&self, status: &dataverse::SourceStatus) {
        let age = status.staleness_seconds();
        self.staleness.set(i64::try_from(age).unwrap_or(i64::MAX));
        self.refresh_failing
            .set(i64::from(status.last_error.is_some()));
    }

    /// Records a successful load of `directory`.
    pub fn loaded(&self, directory: &Directory) {
        let c = directory.counts();
        for (table, n) in [
            ("systemusers", c.users),
            ("queues", c.queues),
            ("mailboxes", c.mailboxes),
            ("mailboxtrackingfolders", c.folder_rules),
            ("records", c.records),
            ("emails", c.tracked_emails),
        ] {
            self.rows
                .get_or_create(&TableLabels { table })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.loads
            .get_or_create(&ResultLabels { result: "ok" })
            .inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.loaded_at.set(now);
    }

    /// A refresh that found nothing new (the snapshot stays).
    pub fn unchanged(&self) {
        self.loads
            .get_or_create(&ResultLabels { result: "ok" })
            .inc();
    }

    pub fn failed(&self) {
        self.loads
            .get_or_create(&ResultLabels { result: "failed" })
            .inc();
    }

    pub fn loads(&self, ok: bool) -> u64 {
        self.loads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "failed" },
            })
            .get()
    }
}

impl DirectoryHandle {
    /// Loads `source` and swaps the result in; on error the current snapshot stays.
    pub fn reload(
        &self,
        source: &FileSource,
        metrics: &DirectoryMetrics,
    ) -> Result<(), DirectoryError> {
        self.apply(source.load(), metrics)
    }

    /// Swaps in a loaded directory, or records the failure.
    pub fn apply(
        &self,
        loaded: Result<Directory, DirectoryError>,
        metrics: &DirectoryMetrics,
    ) -> Result<(), DirectoryError> {
        match loaded {
            Ok(directory) => {
                metrics.loaded(&directory);
                tracing::info!(counts = %directory.counts(), "directory loaded");
                self.swap(directory);
                Ok(())
            }
            Err(error) => {
                metrics.failed();
                Err(error)
            }
        }
    }
}
