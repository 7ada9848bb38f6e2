//! The directory: the replica of CRM state that the rules read — users and their personal
//! options, queues, mailboxes and folder tracking rules, org settings, records by e-mail address
//! and the emails already tracked. Sourced from a file (TOML or JSON) or, with no file
//! configured, from the embedded example; reloaded on change or SIGHUP and swapped as one
//! immutable snapshot, so readers never lock.

pub mod file;
pub mod model;
pub mod snapshot;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use file::{DirectoryError, FileSource};
pub use model::DirectoryDocument;
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

    pub fn swap(&self, directory: Directory) {
        self.current.store(Arc::new(directory));
    }
}
