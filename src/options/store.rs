//! The options page's own store (a redb file): the audit trail of saves (who changed which
//! option of whom, when; never mail content, addresses or folder names), and the options the
//! directory's source cannot hold, laid over every directory document as it is indexed
//! ([`DocumentOverlay`]): the gateway's own columns with Dataverse, everything with the
//! embedded example.

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::directory::DocumentOverlay;
use crate::directory::model::{DirectoryDocument, MailboxTrackingFolder, UserSettings};
use crate::inspect::Observation;

const OVERLAY: TableDefinition<&str, &[u8]> = TableDefinition::new("overlay");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Each mailbox's recent observations, saved at shutdown for the next run's previews.
const HISTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("history");

/// Audit entries kept; the oldest go first.
const MAX_AUDIT: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("options store {path}: {message}")]
    Open { path: String, message: String },
    #[error("options store: {0}")]
    Write(String),
}

fn write_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Write(e.to_string())
}

/// What the gateway holds of one user's options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// `usersettings` columns and values.
    pub columns: Map<String, Value>,
    /// The mailbox's folder rules, when the gateway holds them (the embedded example).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folders: Option<(Uuid, Vec<MailboxTrackingFolder>)>,
}

/// One change of one option in a save.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changed {
    pub option: String,
    pub from: String,
    pub to: String,
}

/// One save.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// RFC 3339, UTC.
    pub at: String,
    /// The `systemuserid` of who saved.
    pub by: Uuid,
    /// Whether they saved as an admin (for someone else).
    pub as_admin: bool,
    /// The `systemuserid` whose options changed.
    pub user: Uuid,
    pub changes: Vec<Changed>,
}

pub struct OptionsStore {
    db: redb::Database,
    held: RwLock<HashMap<Uuid, Held>>,
}

impl OptionsStore {
    pub fn open(path: &Path) -> Result<OptionsStore, StoreError> {
        let open_error = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| open_error(&e))?;
        }
        let db = redb::Database::create(path).map_err(|e| open_error(&e))?;
        let tx = db.begin_write().map_err(|e| open_error(&e))?;
        tx.open_table(OVERLAY).map_err(|e| open_error(&e))?;
        tx.open_table(AUDIT).map_err(|e| open_error(&e))?;
        tx.open_table(HISTORY).map_err(|e| open_error(&e))?;
        tx.commit().map_err(|e| open_error(&e))?;
        let mut held = HashMap::new();
        {
            let read = db.begin_read().map_err(|e| open_error(&e))?;
            let table = read.open_table(OVERLAY).map_err(|e| open_error(&e))?;
            for row in table.iter().map_err(|e| open_error(&e))? {
                let (user, value) = row.map_err(|e| open_error(&e))?;
                if let (Ok(user), Ok(options)) = (
                    user.value().parse::<Uuid>(),
                    serde_json::from_slice::<Held>(value.value()),
                ) {
                    held.insert(user, options);
                }
            }
        }
        Ok(OptionsStore {
            db,
            held: RwLock::new(held),
        })
    }

    /// Replaces what the gateway holds of a user's options and records the save, in one
    /// transaction.
    pub fn save(&self, user: Uuid, held: Held, entry: &AuditEntry) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(write_error)?;
        {
            let mut overlay = tx.open_table(OVERLAY).map_err(write_error)?;
            let key = user.to_string();
            if held == Held::default() {
                overlay.remove(key.as_str()).map_err(write_error)?;
            } else {
                let value = serde_json::to_vec(&held).map_err(write_error)?;
                overlay
                    .insert(key.as_str(), value.as_slice())
                    .map_err(write_error)?;
            }
            append_audit(&mut tx.open_table(AUDIT).map_err(write_error)?, entry)?;
        }
        tx.commit().map_err(write_error)?;
        if let Ok(mut all) = self.held.write() {
            all.insert(user, held);
        }
        Ok(())
    }

    /// Records a save whose options the source itself holds.
    pub fn record(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(write_error)?;
        append_audit(&mut tx.open_table(AUDIT).map_err(write_error)?, entry)?;
        tx.commit().map_err(write_error)
    }

    /// What the gateway holds of a user's options.
    pub fn held(&self, user: Uuid) -> Held {
        self.held
            .read()
            .ok()
            .and_then(|all| all.get(&user).cloned())
            .unwrap_or_default()
    }

    /// Replaces the saved history with `all` (each mailbox's observations, oldest first).
    pub fn save_history(
        &self,
        all: &[(Uuid, Vec<std::sync::Arc<Observation>>)],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(write_error)?;
        tx.delete_table(HISTORY).map_err(write_error)?;
        {
            let mut table = tx.open_table(HISTORY).map_err(write_error)?;
            for (mailbox, observations) in all {
                let list: Vec<&Observation> = observations.iter().map(AsRef::as_ref).collect();
                let value = serde_json::to_vec(&list).map_err(write_error)?;
                let key = mailbox.to_string();
                table
                    .insert(key.as_str(), value.as_slice())
                    .map_err(write_error)?;
            }
        }
        tx.commit().map_err(write_error)
    }

    /// The history an earlier run saved (what no longer reads is left out).
    pub fn load_history(&self) -> Vec<(Uuid, Vec<Observation>)> {
        let Ok(read) = self.db.begin_read() else {
            return Vec::new();
        };
        let Ok(table) = read.open_table(HISTORY) else {
            return Vec::new();
        };
        let Ok(rows) = table.iter() else {
            return Vec::new();
        };
        rows.filter_map(|row| {
            let (mailbox, value) = row.ok()?;
            Some((
                mailbox.value().parse().ok()?,
                serde_json::from_slice(value.value()).ok()?,
            ))
        })
        .collect()
    }

    /// The most recent saves, newest first.
    pub fn audit(&self, limit: usize) -> Vec<AuditEntry> {
        let Ok(read) = self.db.begin_read() else {
            return Vec::new();
        };
        let Ok(table) = read.open_table(AUDIT) else {
            return Vec::new();
        };
        let Ok(rows) = table.iter() else {
            return Vec::new();
        };
        rows.rev()
            .take(limit)
            .filter_map(|row| {
                let (_, value) = row.ok()?;
                serde_json::from_slice(value.value()).ok()
            })
            .collect()
    }
}

fn append_audit(
    table: &mut redb::Table<'_, u64, &[u8]>,
    entry: &AuditEntry,
) -> Result<(), StoreError> {
    let next = table
        .last()
        .map_err(write_error)?
        .map_or(0, |(k, _)| k.value() + 1);
    let value = serde_json::to_vec(entry).map_err(write_error)?;
    table.insert(next, value.as_slice()).map_err(write_error)?;
    if next >= MAX_AUDIT {
        table.remove(next - MAX_AUDIT).map_err(write_error)?;
    }
    Ok(())
}

impl OptionsStore {
    /// Lays what is held over a document, with one user's held options replaced by
    /// `replacing` (to try a save before keeping it).
    pub fn apply_with(&self, doc: &mut DirectoryDocument, replacing: Option<(Uuid, &Held)>) {
        let Ok(all) = self.held.read() else {
            return;
        };
        let replaced = replacing.map(|(user, _)| user);
        let kept = all.iter().filter(|(user, _)| Some(**user) != replaced);
        for (user, held) in kept.map(|(u, h)| (*u, h)).chain(replacing) {
            // What was held for a user or mailbox the source no longer has is left aside:
            // settings of an unknown user would make the whole directory invalid.
            if !doc.systemusers.iter().any(|u| u.systemuserid == user) {
                continue;
            }
            if !held.columns.is_empty() {
                apply_columns(doc, user, &held.columns);
            }
            if let Some((mailbox, folders)) = &held.folders
                && doc.mailboxes.iter().any(|m| m.mailboxid == *mailbox)
            {
                doc.mailboxtrackingfolders
                    .retain(|f| f.mailboxid != *mailbox);
                doc.mailboxtrackingfolders.extend(folders.iter().cloned());
            }
        }
    }
}

impl DocumentOverlay for OptionsStore {
    fn apply(&self, doc: &mut DirectoryDocument) {
        self.apply_with(doc, None);
    }
}

/// Sets columns of a user's `usersettings` row (adding the row when it has none); a value
/// that does not fit the column is left out, so a bad held value never breaks a load.
fn apply_columns(doc: &mut DirectoryDocument, user: Uuid, columns: &Map<String, Value>) {
    let at = match doc
        .usersettingscollection
        .iter()
        .position(|s| s.systemuserid == user)
    {
        Some(at) => at,
        None => {
            doc.usersettingscollection.push(UserSettings {
                systemuserid: user,
                ..UserSettings::default()
            });
            doc.usersettingscollection.len() - 1
        }
    };
    let row = &mut doc.usersettingscollection[at];
    for (column, value) in columns {
        let Ok(Value::Object(mut current)) = serde_json::to_value(&*row) else {
            return;
        };
        current.insert(column.clone(), value.clone());
        if let Ok(changed) = serde_json::from_value::<UserSettings>(Value::Object(current)) {
            *row = changed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_options_survive_a_reopen_and_are_laid_over_every_document() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("options.redb");
        let user = Uuid::from_u128(7);
        let mut columns = Map::new();
        columns.insert(
            "trackingexclusions".into(),
            serde_json::json!(["x.example"]),
        );
        columns.insert("incomingemailfilteringmethod".into(), 0.into());
        columns.insert("autocreatecontactonpromote".into(), "not a number".into());
        let entry = AuditEntry {
            at: "2026-12-05T10:00:00Z".into(),
            by: user,
            as_admin: false,
            user,
            changes: vec![],
        };
        {
            let store = OptionsStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
            let held = Held {
                columns,
                folders: None,
            };
            store
                .save(user, held, &entry)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let store = OptionsStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut doc = DirectoryDocument::default();
        store.apply(&mut doc);
        assert!(
            doc.usersettingscollection.is_empty(),
            "a user the source no longer has is left aside"
        );
        doc.systemusers.push(crate::directory::model::SystemUser {
            systemuserid: user,
            ..Default::default()
        });
        store.apply(&mut doc);
        let row = &doc.usersettingscollection[0];
        assert_eq!(row.systemuserid, user);
        assert_eq!(row.trackingexclusions, vec!["x.example"]);
        assert_eq!(row.incomingemailfilteringmethod, 0);
        assert_eq!(
            row.autocreatecontactonpromote,
            UserSettings::default().autocreatecontactonpromote,
            "a value that does not fit is left out"
        );
        assert_eq!(store.audit(10), vec![entry]);
    }
}
