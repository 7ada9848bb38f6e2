//! Saving one user's options where the directory comes from, then putting the change in the
//! snapshot the rules read without a restart: Dataverse (the `usersettings` columns and
//! `mailboxtrackingfolders` rows it has; the gateway's own columns in the options store), the
//! directory file (everything, in place), or, for the embedded example, the options store.

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::form::UserOptions;
use super::store::{AuditEntry, Held, OptionsStore};
use crate::directory::dataverse::{DataverseSource, NewTrackingFolder, OptionsWrite, refresh_now};
use crate::directory::model::UserSettings;
use crate::directory::snapshot::normalize_exchange_id;
use crate::directory::{DirectoryHandle, DirectoryMetrics, FileSource, UserOptionsEdit};

/// `usersettings` columns Dataverse has, as the page edits them.
const DATAVERSE_COLUMNS: [&str; 4] = [
    "incomingemailfilteringmethod",
    "autocreatecontactonpromote",
    "synccontactcompany",
    "outlooksyncinterval",
];

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("Dataverse did not take the change: {0}")]
    Dataverse(#[from] crate::directory::dataverse::SourceError),
    /// A write Dataverse refused after others it took: what it holds now is shown.
    #[error("Dataverse refused part of the change ({0}); what it holds now is shown")]
    Partial(crate::directory::dataverse::SourceError),
    #[error("the directory file did not take the change: {0}")]
    File(#[from] crate::directory::DirectoryError),
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
    #[error("the change would not load: {0}")]
    Invalid(#[from] crate::directory::InvalidDirectory),
}

/// Where the directory comes from, as saving sees it.
pub enum Target {
    Dataverse(Arc<DataverseSource>),
    /// The configured file (the same source a reload swaps).
    File(Arc<Mutex<FileSource>>),
}

pub struct Saver {
    /// One save at a time: each reads what it changes, then writes it.
    pub one_at_a_time: tokio::sync::Mutex<()>,
    pub target: Target,
    pub store: Arc<OptionsStore>,
    pub directory: DirectoryHandle,
    pub metrics: Arc<DirectoryMetrics>,
}

/// Every column the page edits, as JSON.
fn columns(options: &UserOptions, base: &UserSettings) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert(
        "syncfilters".into(),
        serde_json::to_value(options.settings(base).syncfilters).unwrap_or(Value::Null),
    );
    map.insert(
        "incomingemailfilteringmethod".into(),
        options.incoming.into(),
    );
    map.insert(
        "autocreatecontactonpromote".into(),
        options.autocreate.into(),
    );
    map.insert(
        "synccontactcompany".into(),
        options.synccontactcompany.into(),
    );
    map.insert(
        "outlooksyncinterval".into(),
        options.outlooksyncinterval.map_or(Value::Null, Value::from),
    );
    map.insert("allowcrmsendemail".into(), options.allowcrmsendemail.into());
    map.insert("trackingexclusions".into(), json!(options.exclusions));
    map
}

impl Saver {
    /// Saves `after` for a user (whose options were `before`), records the save, and waits
    /// until the rules read it.
    pub async fn save(
        &self,
        base: &UserSettings,
        mailbox: Uuid,
        before: &UserOptions,
        after: &UserOptions,
        entry: &AuditEntry,
    ) -> Result<(), SaveError> {
        let _turn = self.one_at_a_time.lock().await;
        let user = base.systemuserid;
        let all = columns(after, base);
        match &self.target {
            Target::Dataverse(source) => {
                self.save_to_dataverse(source, base, mailbox, before, after, &all, entry)
                    .await
            }
            Target::File(file) => {
                let source = file.lock().map(|s| s.clone()).map_err(|_| {
                    crate::directory::DirectoryError::Parse {
                        origin: "directory".into(),
                        message: "the file source is unavailable".into(),
                    }
                })?;
                if source.path.is_none() {
                    return self.save_held(&source, user, mailbox, after, all, entry);
                }
                let edit = UserOptionsEdit {
                    user,
                    mailbox,
                    columns: all,
                    folders: after.folder_rows(mailbox),
                };
                let snapshot = tokio::task::spawn_blocking(move || {
                    source.write_user_options(&edit)?;
                    source.load()
                })
                .await
                .map_err(|_| crate::directory::DirectoryError::Parse {
                    origin: "directory".into(),
                    message: "the save stopped".into(),
                })??;
                self.store.record(entry)?;
                self.directory.apply(Ok(snapshot), &self.metrics)?;
                Ok(())
            }
        }
    }

    /// The embedded example has no file: everything the page edits is held by the gateway.
    fn save_held(
        &self,
        source: &FileSource,
        user: Uuid,
        mailbox: Uuid,
        after: &UserOptions,
        columns: Map<String, Value>,
        entry: &AuditEntry,
    ) -> Result<(), SaveError> {
        let held = Held {
            columns,
            folders: Some((mailbox, after.folder_rows(mailbox))),
        };
        // Never hold what would not load: build with it first.
        let mut doc = source.read_document()?;
        let mut settings = source.settings.clone();
        settings.overlay = crate::directory::Overlay::default();
        self.store.apply_with(&mut doc, Some((user, &held)));
        crate::directory::Directory::build_with(doc, &settings)?;
        self.store.save(user, held, entry)?;
        let snapshot = source.load()?;
        self.directory.apply(Ok(snapshot), &self.metrics)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn save_to_dataverse(
        &self,
        source: &Arc<DataverseSource>,
        base: &UserSettings,
        mailbox: Uuid,
        before: &UserOptions,
        after: &UserOptions,
        all: &Map<String, Value>,
        entry: &AuditEntry,
    ) -> Result<(), SaveError> {
        let user = base.systemuserid;
        let was = columns(before, base);
        let usersettings: Map<String, Value> = DATAVERSE_COLUMNS
            .iter()
            .filter(|c| was.get(**c) != all.get(**c))
            .filter_map(|c| Some((c.to_string(), all.get(*c)?.clone())))
            .collect();
        let mut write = OptionsWrite {
            usersettings,
            ..OptionsWrite::default()
        };
        if before.rules != after.rules {
            // The rows' ids are in the replicated document, not the snapshot. A row whose
            // rule stays as it was is kept; the others go, and the new rules are added.
            let doc = source.document().await;
            let rows: Vec<_> = doc
                .mailboxtrackingfolders
                .into_iter()
                .filter(|f| f.mailboxid == mailbox)
                .collect();
            let same = |row: &crate::directory::model::MailboxTrackingFolder,
                        rule: &super::form::RuleChoice| {
                normalize_exchange_id(&row.exchangefolderid)
                    == normalize_exchange_id(&rule.folder_id)
                    && row.regardingobjectid == rule.regarding
            };
            write.remove_folders = rows
                .iter()
                .filter(|row| !after.rules.iter().any(|rule| same(row, rule)))
                .filter_map(|row| row.mailboxtrackingfolderid)
                .collect();
            write.add_folders = after
                .rules
                .iter()
                .filter(|rule| !rows.iter().any(|row| same(row, rule)))
                .map(|r| NewTrackingFolder {
                    folder_id: r.folder_id.clone(),
                    folder_name: r.folder_name.clone(),
                    regarding: r.regarding.clone(),
                })
                .collect();
        }
        // Sync filters are saved views: each one switched is activated or deactivated.
        write.filter_states = base
            .syncfilters
            .iter()
            .zip(before.filters.iter().zip(&after.filters))
            .filter(|(_, (was, is))| was != is)
            .filter_map(|(f, (_, is))| Some((f.userqueryid?, *is)))
            .collect();
        if let Err(error) = source.write_user_options(user, mailbox, &write).await {
            // Dataverse may have taken the first writes: read back what it holds now.
            if refresh_now(source, &self.directory, &self.metrics)
                .await
                .is_ok()
                && let Ok(snapshot) = source.rebuild().await
            {
                self.directory.swap(snapshot);
            }
            return Err(SaveError::Partial(error));
        }
        // The gateway's own columns, which Dataverse has no place for.
        let gateway: Map<String, Value> = all
            .iter()
            .filter(|(k, _)| !DATAVERSE_COLUMNS.contains(&k.as_str()) && *k != "syncfilters")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.store.save(
            user,
            Held {
                columns: gateway,
                folders: None,
            },
            entry,
        )?;
        refresh_now(source, &self.directory, &self.metrics).await?;
        // The held columns may be all that changed: build again with them.
        let snapshot = source.rebuild().await?;
        self.metrics.loaded(&snapshot);
        self.directory.swap(snapshot);
        Ok(())
    }
}
