//! Where each mailbox folder's sync state is kept: a redb file beside the outbox, one row per
//! (mailbox, folder), written only after the decisions of the page it ends are stored. Beside
//! them, the mailboxes with tracked traffic since their last complete sweep (written once a
//! second, cleared by a sweep and by a clean shutdown): what a start finds there had traffic
//! in the crash window, and is swept first.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const STATES: TableDefinition<&str, &str> = TableDefinition::new("sync_states");
/// Mailbox → when its traffic was last written down (milliseconds since the epoch).
const TRAFFIC: TableDefinition<&str, u64> = TableDefinition::new("traffic");

#[derive(Debug, thiserror::Error)]
#[error("catch-up state {path}: {message}")]
pub struct StateError {
    path: PathBuf,
    message: String,
}

/// The sync states.
pub struct SyncStates {
    db: Database,
    path: PathBuf,
}

fn key(mailbox: &str, folder: &str) -> String {
    format!("{}\n{folder}", mailbox.to_ascii_lowercase())
}

impl SyncStates {
    pub fn open(path: &Path) -> Result<SyncStates, StateError> {
        let fail = |e: &dyn std::fmt::Display| StateError {
            path: path.to_owned(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let db = Database::create(path).map_err(|e| fail(&e))?;
        let txn = db.begin_write().map_err(|e| fail(&e))?;
        txn.open_table(STATES).map_err(|e| fail(&e))?;
        txn.open_table(TRAFFIC).map_err(|e| fail(&e))?;
        txn.commit().map_err(|e| fail(&e))?;
        Ok(SyncStates {
            db,
            path: path.to_owned(),
        })
    }

    fn fail(&self, e: impl std::fmt::Display) -> StateError {
        StateError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    pub fn get(&self, mailbox: &str, folder: &str) -> Result<Option<String>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = txn.open_table(STATES).map_err(|e| self.fail(e))?;
        let value = table
            .get(key(mailbox, folder).as_str())
            .map_err(|e| self.fail(e))?;
        Ok(value.map(|v| v.value().to_owned()))
    }

    /// Stores a state; `None` forgets it (the next sync starts over).
    pub fn put(&self, mailbox: &str, folder: &str, state: Option<&str>) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut table = txn.open_table(STATES).map_err(|e| self.fail(e))?;
            let k = key(mailbox, folder);
            match state {
                Some(s) => {
                    table.insert(k.as_str(), s).map_err(|e| self.fail(e))?;
                }
                None => {
                    table.remove(k.as_str()).map_err(|e| self.fail(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.fail(e))
    }
}

impl SyncStates {
    /// Writes down that these mailboxes had tracked traffic (one commit for all).
    pub fn record_traffic(&self, mailboxes: &[String], at_ms: u64) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut table = txn.open_table(TRAFFIC).map_err(|e| self.fail(e))?;
            for mailbox in mailboxes {
                table
                    .insert(mailbox.to_ascii_lowercase().as_str(), at_ms)
                    .map_err(|e| self.fail(e))?;
            }
        }
        txn.commit().map_err(|e| self.fail(e))
    }

    /// The mailboxes with traffic written down and not swept since.
    pub fn traffic(&self) -> Result<Vec<String>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = txn.open_table(TRAFFIC).map_err(|e| self.fail(e))?;
        let rows = table.iter().map_err(|e| self.fail(e))?;
        rows.map(|row| {
            row.map(|(k, _)| k.value().to_owned())
                .map_err(|e| self.fail(e))
        })
        .collect()
    }

    /// A sweep that started at `swept_from_ms` read everything written down before it.
    /// `None`: forgets every mailbox's (a clean shutdown: every decision is committed).
    pub fn clear_traffic(
        &self,
        mailbox: Option<&str>,
        swept_from_ms: u64,
    ) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut table = txn.open_table(TRAFFIC).map_err(|e| self.fail(e))?;
            match mailbox {
                Some(mailbox) => {
                    let key = mailbox.to_ascii_lowercase();
                    let written = table
                        .get(key.as_str())
                        .map_err(|e| self.fail(e))?
                        .map(|v| v.value());
                    if written.is_some_and(|at| at <= swept_from_ms) {
                        table.remove(key.as_str()).map_err(|e| self.fail(e))?;
                    }
                }
                None => {
                    table.retain(|_, _| false).map_err(|e| self.fail(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_survive_a_reopen_and_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catchup.redb");
        {
            let states = SyncStates::open(&path).unwrap();
            states
                .put("Alex@contoso.example", "inbox", Some("S1"))
                .unwrap();
        }
        let states = SyncStates::open(&path).unwrap();
        assert_eq!(
            states
                .get("alex@contoso.example", "inbox")
                .unwrap()
                .as_deref(),
            Some("S1")
        );
        states.put("alex@contoso.example", "inbox", None).unwrap();
        assert_eq!(states.get("alex@contoso.example", "inbox").unwrap(), None);
    }

    #[test]
    fn traffic_survives_a_reopen_until_a_later_sweep_or_a_clean_shutdown_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catchup.redb");
        {
            let states = SyncStates::open(&path).unwrap();
            let written = [
                "Alex@contoso.example".to_owned(),
                "jo@contoso.example".to_owned(),
            ];
            states.record_traffic(&written, 2_000).unwrap();
        }
        let states = SyncStates::open(&path).unwrap();
        assert_eq!(
            states.traffic().unwrap(),
            ["alex@contoso.example", "jo@contoso.example"]
        );
        // A sweep that started before the traffic was written down does not cover it.
        states
            .clear_traffic(Some("alex@contoso.example"), 1_999)
            .unwrap();
        assert_eq!(states.traffic().unwrap().len(), 2);
        states
            .clear_traffic(Some("ALEX@contoso.example"), 2_000)
            .unwrap();
        assert_eq!(states.traffic().unwrap(), ["jo@contoso.example"]);
        states.clear_traffic(None, 0).unwrap();
        assert!(states.traffic().unwrap().is_empty());
    }
}
