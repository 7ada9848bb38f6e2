//! Where each mailbox folder's sync state is kept: a redb file beside the outbox, one row per
//! (mailbox, folder), written only after the decisions of the page it ends are stored.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, TableDefinition};

const STATES: TableDefinition<&str, &str> = TableDefinition::new("sync_states");

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
}
