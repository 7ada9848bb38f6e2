//! What synchronisation remembers, in one redb file (`sync.redb` in the data directory): the
//! link of each CRM row to its Exchange item per mailbox, with the row version and the values
//! both sides last agreed on (what a three-way merge compares); each mailbox's folder sync
//! states; the CRM emails sent through a mailbox; and the dead letters of writes the CRM or
//! Exchange refused. Every change is one committed transaction, so a kill -9 loses nothing
//! already written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::fields::Values;

/// `mailbox \n entity:id` → [`Link`] (JSON).
const LINKS: TableDefinition<&str, &[u8]> = TableDefinition::new("links");
/// `mailbox \n name` → text (sync states, the last probe time).
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// email activity id → [`Send`] (JSON).
const SENDS: TableDefinition<&str, &[u8]> = TableDefinition::new("sends");
/// `mailbox \n record \n operation` → [`DeadLetter`] (JSON).
const DEAD: TableDefinition<&str, &[u8]> = TableDefinition::new("dead_letters");

#[derive(Debug, thiserror::Error)]
#[error("synchronisation state {path}: {message}")]
pub struct LinkError {
    path: PathBuf,
    message: String,
}

/// A CRM row linked to an Exchange item in one mailbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub item_id: String,
    /// The item's change key after synchronisation last wrote or read it: a change Exchange
    /// reports with this key is that write, not the user's.
    #[serde(default)]
    pub change_key: String,
    /// The row was created from an Outlook item given the tracking category: the user's filters
    /// did not bring it, so their not selecting it deletes nothing (only the row's deletion).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_outlook: bool,
    /// The row version last synchronised (`None`: never read, e.g. adopted from Exchange).
    pub crm_version: Option<u64>,
    /// The values both sides last agreed on, in Exchange's form, by field label. Empty for a
    /// link adopted from an item whose values were never compared.
    pub base: BTreeMap<String, Values>,
}

/// A CRM email sent through a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Send {
    pub mailbox: String,
    /// `sending` (handed to Exchange, CRM not yet told) or `sent` (CRM marked Sent).
    pub state: String,
    pub message_id: Option<String>,
    pub at: u64,
}

/// A write refused for good (a 4xx of Dataverse, an Exchange error that will not pass).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub mailbox: String,
    /// `entity:id`.
    pub record: String,
    pub operation: String,
    pub reason: String,
    pub at: u64,
}

pub struct LinkStore {
    db: Database,
    path: PathBuf,
}

fn key(mailbox: &str, rest: &str) -> String {
    format!("{}\n{rest}", mailbox.to_ascii_lowercase())
}

fn prefix(mailbox: &str) -> String {
    format!("{}\n", mailbox.to_ascii_lowercase())
}

impl LinkStore {
    pub fn open(path: &Path) -> Result<LinkStore, LinkError> {
        let fail = |e: &dyn std::fmt::Display| LinkError {
            path: path.to_owned(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let db = Database::create(path).map_err(|e| fail(&e))?;
        let txn = db.begin_write().map_err(|e| fail(&e))?;
        txn.open_table(LINKS).map_err(|e| fail(&e))?;
        txn.open_table(META).map_err(|e| fail(&e))?;
        txn.open_table(SENDS).map_err(|e| fail(&e))?;
        txn.open_table(DEAD).map_err(|e| fail(&e))?;
        txn.commit().map_err(|e| fail(&e))?;
        Ok(LinkStore {
            db,
            path: path.to_owned(),
        })
    }

    fn fail(&self, e: impl std::fmt::Display) -> LinkError {
        LinkError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn scan<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        from: &str,
    ) -> Result<Vec<(String, T)>, LinkError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = txn.open_table(table).map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        for row in table.range(from..).map_err(|e| self.fail(e))? {
            let (k, v) = row.map_err(|e| self.fail(e))?;
            if !k.value().starts_with(from) {
                break;
            }
            if let Ok(value) = serde_json::from_slice(v.value()) {
                out.push((k.value()[from.len()..].to_owned(), value));
            }
        }
        Ok(out)
    }

    fn put_json<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        k: &str,
        value: Option<&T>,
    ) -> Result<(), LinkError> {
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut t = txn.open_table(table).map_err(|e| self.fail(e))?;
            match value {
                Some(v) => {
                    let bytes = serde_json::to_vec(v).map_err(|e| self.fail(e))?;
                    t.insert(k, bytes.as_slice()).map_err(|e| self.fail(e))?;
                }
                None => {
                    t.remove(k).map_err(|e| self.fail(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.fail(e))
    }

    /// A mailbox's links by record (`entity:id`).
    pub fn links(&self, mailbox: &str) -> Result<BTreeMap<String, Link>, LinkError> {
        Ok(self.scan(LINKS, &prefix(mailbox))?.into_iter().collect())
    }

    /// Stores a link; `None` removes it.
    pub fn put_link(
        &self,
        mailbox: &str,
        record: &str,
        link: Option<&Link>,
    ) -> Result<(), LinkError> {
        self.put_json(LINKS, &key(mailbox, record), link)
    }

    /// Forgets the row version of every link of a mailbox (in one transaction): the next run
    /// compares every linked row again.
    pub fn forget_versions(&self, mailbox: &str) -> Result<(), LinkError> {
        let links = self.links(mailbox)?;
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut t = txn.open_table(LINKS).map_err(|e| self.fail(e))?;
            for (record, mut link) in links {
                link.crm_version = None;
                let bytes = serde_json::to_vec(&link).map_err(|e| self.fail(e))?;
                t.insert(key(mailbox, &record).as_str(), bytes.as_slice())
                    .map_err(|e| self.fail(e))?;
            }
        }
        txn.commit().map_err(|e| self.fail(e))
    }

    /// Every mailbox with links, with their count.
    pub fn counts(&self) -> Result<BTreeMap<String, usize>, LinkError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = txn.open_table(LINKS).map_err(|e| self.fail(e))?;
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(|e| self.fail(e))? {
            let (k, _) = row.map_err(|e| self.fail(e))?;
            if let Some((mailbox, _)) = k.value().split_once('\n') {
                *out.entry(mailbox.to_owned()).or_default() += 1;
            }
        }
        Ok(out)
    }

    pub fn meta(&self, mailbox: &str, name: &str) -> Result<Option<String>, LinkError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = txn.open_table(META).map_err(|e| self.fail(e))?;
        let value = table
            .get(key(mailbox, name).as_str())
            .map_err(|e| self.fail(e))?;
        Ok(value.map(|v| v.value().to_owned()))
    }

    pub fn put_meta(
        &self,
        mailbox: &str,
        name: &str,
        value: Option<&str>,
    ) -> Result<(), LinkError> {
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut t = txn.open_table(META).map_err(|e| self.fail(e))?;
            let k = key(mailbox, name);
            match value {
                Some(v) => {
                    t.insert(k.as_str(), v).map_err(|e| self.fail(e))?;
                }
                None => {
                    t.remove(k.as_str()).map_err(|e| self.fail(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.fail(e))
    }

    pub fn send(&self, activity: &str) -> Result<Option<Send>, LinkError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = txn.open_table(SENDS).map_err(|e| self.fail(e))?;
        let value = table.get(activity).map_err(|e| self.fail(e))?;
        Ok(value.and_then(|v| serde_json::from_slice(v.value()).ok()))
    }

    pub fn put_send(&self, activity: &str, send: &Send) -> Result<(), LinkError> {
        self.put_json(SENDS, activity, Some(send))
    }

    pub fn sends(&self) -> Result<Vec<(String, Send)>, LinkError> {
        self.scan(SENDS, "")
    }

    pub fn dead_letters(&self, mailbox: Option<&str>) -> Result<Vec<DeadLetter>, LinkError> {
        let from = mailbox.map(prefix).unwrap_or_default();
        Ok(self
            .scan(DEAD, &from)?
            .into_iter()
            .map(|(_, d)| d)
            .collect())
    }

    pub fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), LinkError> {
        let k = key(
            &letter.mailbox,
            &format!("{}\n{}", letter.record, letter.operation),
        );
        self.put_json(DEAD, &k, Some(letter))
    }

    /// Forgets a mailbox's dead letters (a retry tries their writes again); how many there were.
    pub fn clear_dead_letters(&self, mailbox: &str) -> Result<usize, LinkError> {
        let letters = self.scan::<DeadLetter>(DEAD, &prefix(mailbox))?;
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut t = txn.open_table(DEAD).map_err(|e| self.fail(e))?;
            for (rest, _) in &letters {
                t.remove(key(mailbox, rest).as_str())
                    .map_err(|e| self.fail(e))?;
            }
        }
        txn.commit().map_err(|e| self.fail(e))?;
        Ok(letters.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_sends_and_dead_letters_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.redb");
        {
            let store = LinkStore::open(&path).unwrap();
            let link = Link {
                item_id: "AAMk1".into(),
                change_key: "CK1".into(),
                from_outlook: false,
                crm_version: Some(7),
                base: [(
                    "Subject".to_owned(),
                    [("Subject".to_owned(), "Hi".to_owned())].into(),
                )]
                .into(),
            };
            store
                .put_link("Alex@x.example", "appointment:1", Some(&link))
                .unwrap();
            store
                .put_link("bo@x.example", "contact:2", Some(&link))
                .unwrap();
            store
                .put_meta("alex@x.example", "state/calendar", Some("S1"))
                .unwrap();
            store
                .put_send(
                    "e1",
                    &Send {
                        mailbox: "alex@x.example".into(),
                        state: "sending".into(),
                        message_id: None,
                        at: 1,
                    },
                )
                .unwrap();
            store
                .put_dead_letter(&DeadLetter {
                    mailbox: "alex@x.example".into(),
                    record: "task:3".into(),
                    operation: "update".into(),
                    reason: "400".into(),
                    at: 2,
                })
                .unwrap();
        }
        let store = LinkStore::open(&path).unwrap();
        let links = store.links("alex@x.example").unwrap();
        assert_eq!(links.len(), 1);
        assert_eq!(links["appointment:1"].crm_version, Some(7));
        store.forget_versions("alex@x.example").unwrap();
        let links = store.links("alex@x.example").unwrap();
        assert_eq!(links["appointment:1"].crm_version, None);
        assert_eq!(
            links["appointment:1"].change_key, "CK1",
            "only the version is forgotten"
        );
        assert_eq!(store.counts().unwrap().len(), 2);
        assert_eq!(
            store
                .meta("ALEX@x.example", "state/calendar")
                .unwrap()
                .as_deref(),
            Some("S1")
        );
        assert_eq!(store.send("e1").unwrap().unwrap().state, "sending");
        assert_eq!(store.dead_letters(Some("alex@x.example")).unwrap().len(), 1);
        assert_eq!(store.clear_dead_letters("alex@x.example").unwrap(), 1);
        assert!(store.dead_letters(None).unwrap().is_empty());
        store
            .put_link("alex@x.example", "appointment:1", None)
            .unwrap();
        assert!(store.links("alex@x.example").unwrap().is_empty());
    }
}
