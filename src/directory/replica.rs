//! The persisted replica of the Dataverse directory: one redb file holding the rows the
//! offline filters keep (as directory-model JSON, keyed by entity set and id) and a little
//! metadata (delta links, when it was last refreshed). A restart while Dataverse is unreachable
//! serves from it. Changes land in one transaction per refresh, so the file always holds one
//! whole refresh.

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use uuid::Uuid;

const ROWS: TableDefinition<(&str, u128), &[u8]> = TableDefinition::new("rows");
const REPLICA_CACHE: usize = 32 << 20;
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(
        "cannot open the directory replica {path}: {message}\nfix: check the path and permissions, and that no other trackgate uses it"
    )]
    Open { path: PathBuf, message: String },
    #[error("directory replica {path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// What one refresh changes in the file.
#[derive(Debug, Default)]
pub struct ReplicaChanges {
    /// Sets loaded whole: their old rows go first.
    pub replaced: Vec<String>,
    pub upserts: Vec<(String, Uuid, Vec<u8>)>,
    pub deletes: Vec<(String, Uuid)>,
    /// Metadata to set (`Some`) or remove (`None`).
    pub meta: Vec<(String, Option<Vec<u8>>)>,
}

#[derive(Debug)]
pub struct Replica {
    db: redb::Database,
    path: PathBuf,
}

impl Replica {
    pub fn open(path: &Path) -> Result<Replica, ReplicaError> {
        let fail = |message: String| ReplicaError::Open {
            path: path.to_owned(),
            message,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
        }
        // A small cache: the replica is written once per refresh and read only at start, so
        // redb's default (a large share of memory) would only hold pages nobody reads.
        let db = redb::Builder::new()
            .set_cache_size(REPLICA_CACHE)
            .create(path)
            .map_err(|e| fail(e.to_string()))?;
        let replica = Replica {
            db,
            path: path.to_owned(),
        };
        // Both tables exist from the start, so reads never meet a missing table.
        replica.commit(ReplicaChanges::default())?;
        Ok(replica)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, e: impl std::fmt::Display) -> ReplicaError {
        ReplicaError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Applies one refresh's changes atomically.
    pub fn commit(&self, mut changes: ReplicaChanges) -> Result<(), ReplicaError> {
        // In key order: a B-tree filled in order splits less and ends up denser.
        changes
            .upserts
            .sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let tx = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut rows = tx.open_table(ROWS).map_err(|e| self.io(e))?;
            for set in &changes.replaced {
                rows.retain_in((set.as_str(), 0)..=(set.as_str(), u128::MAX), |_, _| false)
                    .map_err(|e| self.io(e))?;
            }
            for (set, id) in &changes.deletes {
                rows.remove((set.as_str(), id.as_u128()))
                    .map_err(|e| self.io(e))?;
            }
            for (set, id, bytes) in &changes.upserts {
                rows.insert((set.as_str(), id.as_u128()), bytes.as_slice())
                    .map_err(|e| self.io(e))?;
            }
            let mut meta = tx.open_table(META).map_err(|e| self.io(e))?;
            for (key, value) in &changes.meta {
                match value {
                    Some(v) => meta.insert(key.as_str(), v.as_slice()),
                    None => meta.remove(key.as_str()),
                }
                .map_err(|e| self.io(e))?;
            }
        }
        tx.commit().map_err(|e| self.io(e))
    }

    /// Calls `row` for every stored row of every set.
    pub fn for_each_row(&self, mut row: impl FnMut(&str, Uuid, &[u8])) -> Result<(), ReplicaError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = tx.open_table(ROWS).map_err(|e| self.io(e))?;
        for entry in table.iter().map_err(|e| self.io(e))? {
            let (key, value) = entry.map_err(|e| self.io(e))?;
            let (set, id) = key.value();
            row(set, Uuid::from_u128(id), value.value());
        }
        Ok(())
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, ReplicaError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = tx.open_table(META).map_err(|e| self.io(e))?;
        Ok(table
            .get(key)
            .map_err(|e| self.io(e))?
            .map(|v| v.value().to_vec()))
    }

    /// Rows stored per set.
    pub fn count(&self, set: &str) -> Result<u64, ReplicaError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = tx.open_table(ROWS).map_err(|e| self.io(e))?;
        let mut n = 0;
        for entry in table
            .range((set, 0)..=(set, u128::MAX))
            .map_err(|e| self.io(e))?
        {
            entry.map_err(|e| self.io(e))?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaced_sets_lose_old_rows_and_everything_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica.redb");
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        {
            let replica = Replica::open(&path).unwrap();
            replica
                .commit(ReplicaChanges {
                    upserts: vec![
                        ("contacts".into(), a, b"{}".to_vec()),
                        ("contacts".into(), b, b"{}".to_vec()),
                        ("leads".into(), a, b"{}".to_vec()),
                    ],
                    meta: vec![("delta/contacts".into(), Some(b"link".to_vec()))],
                    ..Default::default()
                })
                .unwrap();
            replica
                .commit(ReplicaChanges {
                    replaced: vec!["contacts".into()],
                    upserts: vec![("contacts".into(), b, b"{\"x\":1}".to_vec())],
                    deletes: vec![("leads".into(), a)],
                    meta: vec![("delta/contacts".into(), None)],
                })
                .unwrap();
            assert!(Replica::open(&path).is_err(), "one owner per file");
        }
        let replica = Replica::open(&path).unwrap();
        let mut rows = Vec::new();
        replica
            .for_each_row(|set, id, bytes| rows.push((set.to_owned(), id, bytes.to_vec())))
            .unwrap();
        assert_eq!(
            rows,
            vec![("contacts".to_owned(), b, b"{\"x\":1}".to_vec())]
        );
        assert_eq!(replica.meta("delta/contacts").unwrap(), None);
        assert_eq!(replica.count("contacts").unwrap(), 1);
    }
}
