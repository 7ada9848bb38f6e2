//! The journal sink: the embedded default when no CRM is configured. Tracked emails land in a
//! local redb file (`<data_dir>/journal.redb`), one entry per CRM id, written once;
//! `trackgate journal list|show ID` reads it.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Outcome;
use super::mapping::TrackedEmail;

const JOURNAL: TableDefinition<u128, &[u8]> = TableDefinition::new("journal");

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {message}")]
    Store { path: String, message: String },
    #[error(
        "journal {path} is open in a running gateway; stop it first or use its admin endpoints"
    )]
    InUse { path: String },
    #[error("no journal entry {0}")]
    NotFound(Uuid),
}

/// One stored email and when it was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub written_ms: u64,
    pub email: TrackedEmail,
}

#[derive(Debug)]
pub struct Journal {
    db: Database,
    path: PathBuf,
}

impl Journal {
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let fail = |message: String| JournalError::Store {
            path: path.display().to_string(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => JournalError::InUse {
                path: path.display().to_string(),
            },
            other => fail(other.to_string()),
        })?;
        let txn = db.begin_write().map_err(|e| fail(e.to_string()))?;
        txn.open_table(JOURNAL).map_err(|e| fail(e.to_string()))?;
        txn.commit().map_err(|e| fail(e.to_string()))?;
        Ok(Journal {
            db,
            path: path.to_path_buf(),
        })
    }

    fn fail(&self, e: impl std::fmt::Display) -> JournalError {
        JournalError::Store {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// Writes what is not there yet (an update of the regarding record replaces it), in one
    /// commit for all.
    pub fn deliver(&self, emails: &[TrackedEmail]) -> Vec<Outcome> {
        match self.write(emails) {
            Ok(()) => vec![Outcome::Delivered; emails.len()],
            Err(e) => vec![
                Outcome::Unavailable {
                    error: e.to_string()
                };
                emails.len()
            ],
        }
    }

    fn write(&self, emails: &[TrackedEmail]) -> Result<(), JournalError> {
        let now = crate::common::time::now_ms();
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut table = txn.open_table(JOURNAL).map_err(|e| self.fail(e))?;
            for email in emails {
                let key = email.id.as_u128();
                let existing: Option<JournalEntry> = table
                    .get(key)
                    .map_err(|e| self.fail(e))?
                    .and_then(|v| serde_json::from_slice(v.value()).ok());
                let entry = match (existing, email.action) {
                    (None, _) => JournalEntry {
                        written_ms: now,
                        email: email.clone(),
                    },
                    (Some(mut old), super::mapping::Action::UpdateRegarding) => {
                        old.email.regarding = email.regarding.clone();
                        old
                    }
                    (Some(_), super::mapping::Action::Create) => continue,
                };
                let bytes = serde_json::to_vec(&entry).map_err(|e| self.fail(e))?;
                table
                    .insert(key, bytes.as_slice())
                    .map_err(|e| self.fail(e))?;
            }
        }
        txn.commit().map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Up to `limit` entries, in id order.
    pub fn list(&self, limit: usize) -> Result<Vec<JournalEntry>, JournalError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = txn.open_table(JOURNAL).map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.fail(e))?.take(limit) {
            let (_, v) = entry.map_err(|e| self.fail(e))?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| self.fail(e))?);
        }
        Ok(out)
    }

    pub fn show(&self, id: Uuid) -> Result<JournalEntry, JournalError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = txn.open_table(JOURNAL).map_err(|e| self.fail(e))?;
        let value = table
            .get(id.as_u128())
            .map_err(|e| self.fail(e))?
            .ok_or(JournalError::NotFound(id))?;
        serde_json::from_slice(value.value()).map_err(|e| self.fail(e))
    }
}
