//! One mailbox's run: what changed in Exchange (a probe and the folders' counts, then
//! `SyncFolderItems` only when something did), what the user's filters select now, and for
//! each row or item the one thing to do — create, merge, delete, unlink — on the side that
//! needs it. A write refused for good becomes a dead letter and the run goes on; Exchange's
//! back-off or an unreachable side ends the run, and the folder sync states are then not
//! saved, so the next run reads the same changes again (every action is idempotent).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::fields::{SyncField, Values, from_crm, from_exchange, to_crm};
use super::merge::{Sides, merge};
use super::{Link, RunReport, SyncError, Syncer, SyncingMailbox, parse_record, record};
use crate::common::time::timestamp_seconds;
use crate::crm::mapping::SyncDirection;
use crate::directory::dataverse::SourceError;
use crate::directory::model::DirectoryDocument;
use crate::directory::selection::{Prepared, select_prepared};
use crate::directory::tables::LOOKUP_ANNOTATION;
use crate::exchange::{ExchangeError, Invitations, ItemKind, SyncFolder, SyncItem};

/// What changed in a mailbox's synchronised folders since the last run.
#[derive(Debug, Default)]
struct ExchangeChanges {
    changed: BTreeMap<String, ItemKind>,
    /// The change key Exchange reported with each changed item.
    change_keys: HashMap<String, String>,
    deleted: BTreeSet<String>,
    /// Folder sync states to save once the run is through.
    states: Vec<(ItemKind, String)>,
    probe: Option<String>,
    /// Item counts per folder now, and the folders holding fewer than after the last run
    /// (a deletion; whether of an item synchronisation wrote after its sync state was taken
    /// is seen only by looking for the linked items).
    counts: Vec<u64>,
    fewer: Vec<ItemKind>,
}

/// The Outlook item a table's rows become: phone calls, faxes and letters are tasks there.
pub(super) fn kind_of(entity: &str) -> Option<ItemKind> {
    match entity {
        "appointment" => Some(ItemKind::Appointment),
        "contact" => Some(ItemKind::Contact),
        "task" | "phonecall" | "fax" | "letter" => Some(ItemKind::Task),
        _ => None,
    }
}

/// Whether a row is an activity Outlook shows as a task without being a task: no
/// `percentcomplete`, and states whose statuses are their own (the platform picks the default
/// status of a state it is given alone).
fn task_like(entity: &str) -> bool {
    matches!(entity, "phonecall" | "fax" | "letter")
}

fn set_of(entity: &str) -> String {
    crate::directory::tables::entity_set(entity)
}

/// Whether an error is the end of this write only (refused for good) rather than of the run.
fn refused_for_good(error: &SyncError) -> bool {
    match error {
        SyncError::Crm(SourceError::Status { status, .. }) => {
            (400..500).contains(status) && *status != 429 && *status != 401
        }
        SyncError::Exchange(ExchangeError::NotFound(_)) => true,
        SyncError::Exchange(ExchangeError::Status(s)) => (400..500).contains(s) && *s != 429,
        _ => false,
    }
}

/// The row versions the replica holds, by record (once per round, for every mailbox).
pub(super) fn versions(doc: &DirectoryDocument) -> HashMap<String, Option<u64>> {
    let mut out = HashMap::new();
    for c in &doc.contacts {
        out.insert(record("contact", c.contactid), c.versionnumber);
    }
    for a in &doc.appointments {
        out.insert(record("appointment", a.activityid), a.versionnumber);
    }
    for (entity, set) in [
        ("task", "tasks"),
        ("phonecall", "phonecalls"),
        ("fax", "faxes"),
        ("letter", "letters"),
    ] {
        for t in doc.activities(set) {
            out.insert(record(entity, t.activityid), t.versionnumber);
        }
    }
    out
}

/// The address of a party's record, from the replica.
pub(super) fn party_address(doc: &DirectoryDocument, party: &Map<String, Value>) -> Option<String> {
    let id = party
        .get("_partyid_value")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())?;
    let entity = party
        .get(&format!("_partyid_value{LOOKUP_ANNOTATION}"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    match entity {
        "systemuser" => doc
            .systemusers
            .iter()
            .find(|u| u.systemuserid == id)
            .and_then(|u| u.internalemailaddress.clone()),
        "contact" => doc
            .contacts
            .iter()
            .find(|c| c.contactid == id)
            .and_then(|c| c.emailaddress1.clone()),
        "account" => doc
            .accounts
            .iter()
            .find(|a| a.accountid == id)
            .and_then(|a| a.emailaddress1.clone()),
        "lead" => doc
            .leads
            .iter()
            .find(|l| l.leadid == id)
            .and_then(|l| l.emailaddress1.clone()),
        _ => None,
    }
}

/// The `$select` (and for appointments the parties' `$expand`) that reads what the fields need.
fn row_query(entity: &str, kind: ItemKind, fields: &[SyncField]) -> String {
    let mut columns: BTreeSet<&str> = ["modifiedon", "versionnumber", "statecode", "statuscode"]
        .into_iter()
        .collect();
    columns.extend(fields.iter().flat_map(SyncField::columns));
    if task_like(entity) {
        columns.remove("percentcomplete");
    }
    if kind == ItemKind::Contact {
        columns.extend(["_parentcustomerid_value", "fullname"]);
    }
    let mut query = format!(
        "$select={}",
        columns.into_iter().collect::<Vec<_>>().join(",")
    );
    if fields.iter().any(SyncField::needs_parties) {
        query.push_str(&format!(
            "&$expand={entity}_activity_parties($select=participationtypemask,addressused,_partyid_value)"
        ));
    }
    query
}

fn is_open_activity(row: &Map<String, Value>) -> bool {
    row.get("statecode")
        .and_then(Value::as_i64)
        .is_none_or(|s| s == 0 || s == 3)
}

impl Syncer {
    pub(super) async fn run_mailbox(
        &self,
        (doc, prepared, versions): (
            &DirectoryDocument,
            &Prepared<'_>,
            &HashMap<String, Option<u64>>,
        ),
        mailbox: &SyncingMailbox,
        now: i64,
    ) -> Result<RunReport, SyncError> {
        let mut report = RunReport::default();
        let selection = select_prepared(prepared, &mailbox.settings, &[], now);
        report.refused_filters = selection.refused.iter().map(|r| r.to_string()).collect();
        let mut selected: BTreeMap<String, (ItemKind, Option<u64>)> = BTreeMap::new();
        for (entity, ids) in &selection.rows {
            let Some(kind) = kind_of(entity) else {
                continue;
            };
            for id in ids {
                let r = record(entity, *id);
                let version = versions.get(&r).copied().flatten();
                selected.insert(r, (kind, version));
            }
        }
        let mut links = self.store.links(&mailbox.address)?;
        self.adopt(&mailbox.address, &mut links).await?;
        let mut changes = self.exchange_changes(&mailbox.address).await?;
        let by_item: HashMap<String, String> = links
            .iter()
            .map(|(r, l)| (l.item_id.clone(), r.clone()))
            .collect();
        self.find_deleted(&mailbox.address, &links, &mut changes)
            .await?;
        // Changes that are synchronisation's own writes (the change key it left) need no read.
        changes.changed.retain(|id, _| {
            let own = by_item.get(id).and_then(|r| links.get(r)).is_some_and(|l| {
                !l.change_key.is_empty() && changes.change_keys.get(id) == Some(&l.change_key)
            });
            !own
        });

        for id in &changes.deleted {
            if changes.changed.contains_key(id) {
                continue;
            }
            if let Some(r) = by_item.get(id)
                && let Some(link) = links.remove(r)
            {
                self.deleted_in_exchange(doc, mailbox, r, &link, now, &mut report)
                    .await?;
            }
        }

        let ids: Vec<&str> = changes.changed.keys().map(String::as_str).collect();
        let items = if ids.is_empty() {
            Vec::new()
        } else {
            self.exchange.get_sync_items(&mailbox.address, &ids).await?
        };
        let categories = self.categories(doc);
        let mut changed_items: HashMap<String, SyncItem> = HashMap::new();
        let mut new_items: Vec<(ItemKind, SyncItem)> = Vec::new();
        for item in items {
            let linked = by_item.get(&item.id).cloned().or_else(|| {
                item.link
                    .clone()
                    .filter(|l| parse_record(l).is_some_and(|(e, _)| kind_of(e).is_some()))
            });
            match linked {
                Some(r) => {
                    links.entry(r.clone()).or_insert_with(|| Link {
                        item_id: item.id.clone(),
                        ..Link::default()
                    });
                    changed_items.insert(r, item);
                }
                None if item
                    .categories
                    .iter()
                    .any(|c| categories.iter().any(|t| t.eq_ignore_ascii_case(c))) =>
                {
                    if let Some(kind) = changes.changed.get(&item.id) {
                        new_items.push((*kind, item));
                    }
                }
                None => {}
            }
        }

        for (r, link) in links.clone() {
            let Some((entity, _)) = parse_record(&r) else {
                continue;
            };
            let Some(kind) = kind_of(entity) else {
                continue;
            };
            let item = changed_items.remove(&r);
            match selected.get(&r) {
                None => {
                    let in_replica = versions.contains_key(&r);
                    self.left_selection(doc, mailbox, kind, &r, &link, in_replica, &mut report)
                        .await?;
                }
                Some((_, version)) => {
                    let crm_dirty = link.crm_version.is_none() || link.crm_version != *version;
                    if crm_dirty || item.is_some() {
                        let work = Linked {
                            kind,
                            record: &r,
                            link,
                            crm_dirty,
                            item,
                            version: *version,
                        };
                        self.merge_linked(doc, mailbox, work, now, &mut report)
                            .await?;
                    }
                }
            }
        }

        let mut creates = 0usize;
        for (r, (kind, version)) in &selected {
            if links.contains_key(r) {
                continue;
            }
            if creates >= self.settings.creates_per_run {
                report.deferred += 1;
                continue;
            }
            creates += 1;
            self.create_in_exchange(doc, mailbox, *kind, r, *version, now, &mut report)
                .await?;
        }
        for (kind, item) in new_items {
            self.create_in_crm(mailbox, kind, &item, now, &mut report)
                .await?;
        }

        for (kind, state) in &changes.states {
            self.store.put_meta(
                &mailbox.address,
                &format!("state/{}", kind.folder()),
                Some(state),
            )?;
        }
        if let Some(probe) = &changes.probe {
            self.store
                .put_meta(&mailbox.address, "probe", Some(probe))?;
        }
        // The counts after this run's own writes, so that the next run tells a user's deletion
        // from them.
        let wrote = report.created_in_exchange + report.deleted_in_exchange + report.unlinked > 0;
        let counts = if wrote {
            let folders: Vec<&str> = ItemKind::ALL.iter().map(|k| k.folder()).collect();
            self.exchange
                .folder_counts(&mailbox.address, &folders)
                .await?
        } else {
            changes.counts.clone()
        };
        let counts = counts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        self.store
            .put_meta(&mailbox.address, "counts", Some(&counts))?;
        Ok(report)
    }

    /// On a mailbox's first run, the items already carrying a link are linked again (a lost
    /// or new link file must not duplicate them).
    async fn adopt(
        &self,
        mailbox: &str,
        links: &mut BTreeMap<String, Link>,
    ) -> Result<(), SyncError> {
        if self.store.meta(mailbox, "adopted")?.is_some() {
            return Ok(());
        }
        for kind in ItemKind::ALL {
            for (item_id, link, _) in self
                .exchange
                .linked_items(mailbox, kind.folder(), None)
                .await?
            {
                if links.contains_key(&link) || parse_record(&link).is_none() {
                    continue;
                }
                let adopted = Link {
                    item_id,
                    ..Link::default()
                };
                self.store.put_link(mailbox, &link, Some(&adopted))?;
                links.insert(link, adopted);
            }
        }
        self.store.put_meta(mailbox, "adopted", Some("1"))?;
        Ok(())
    }

    /// In a folder holding fewer items than after the last run, the linked items no longer
    /// there are deleted.
    async fn find_deleted(
        &self,
        mailbox: &str,
        links: &BTreeMap<String, Link>,
        changes: &mut ExchangeChanges,
    ) -> Result<(), SyncError> {
        for kind in changes.fewer.clone() {
            let ids: Vec<&str> = links
                .iter()
                .filter(|(r, _)| parse_record(r).and_then(|(e, _)| kind_of(e)) == Some(kind))
                .map(|(_, l)| l.item_id.as_str())
                .filter(|id| !changes.changed.contains_key(*id) && !changes.deleted.contains(*id))
                .collect();
            if ids.is_empty() {
                continue;
            }
            let present: BTreeSet<String> = self
                .exchange
                .get_sync_items(mailbox, &ids)
                .await?
                .into_iter()
                .map(|i| i.id)
                .collect();
            changes.deleted.extend(
                ids.into_iter()
                    .filter(|id| !present.contains(*id))
                    .map(str::to_owned),
            );
        }
        Ok(())
    }

    /// What changed in Exchange: nothing when the probe sees no modification and the folders
    /// hold as many items as last time (two requests); else each folder's changes.
    async fn exchange_changes(&self, mailbox: &str) -> Result<ExchangeChanges, SyncError> {
        let mut changes = ExchangeChanges::default();
        let folders: Vec<&str> = ItemKind::ALL.iter().map(|k| k.folder()).collect();
        let probe_folders: Vec<SyncFolder<'_>> = folders
            .iter()
            .map(|f| SyncFolder::Distinguished(f))
            .collect();
        let since = self.store.meta(mailbox, "probe")?;
        let (modified, server_now) = self
            .exchange
            .changed_since(mailbox, &probe_folders, since.as_deref())
            .await?;
        let counts = self.exchange.folder_counts(mailbox, &folders).await?;
        let before: Vec<u64> = self
            .store
            .meta(mailbox, "counts")?
            .map(|t| t.split(',').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default();
        changes.fewer = ItemKind::ALL
            .iter()
            .zip(&counts)
            .enumerate()
            .filter(|(i, (_, now))| before.get(*i).is_some_and(|b| b > now))
            .map(|(_, (kind, _))| *kind)
            .collect();
        let same_counts = before == counts;
        changes.probe = server_now;
        changes.counts = counts;
        if !modified && same_counts {
            return Ok(changes);
        }
        for kind in ItemKind::ALL {
            let mut state = self
                .store
                .meta(mailbox, &format!("state/{}", kind.folder()))?;
            let mut restarted = false;
            for _ in 0..200 {
                let page = match self
                    .exchange
                    .sync_folder_items(
                        mailbox,
                        SyncFolder::Distinguished(kind.folder()),
                        state.as_deref(),
                        512,
                    )
                    .await
                {
                    Err(ExchangeError::InvalidSyncState) if !restarted => {
                        restarted = true;
                        state = None;
                        continue;
                    }
                    other => other?,
                };
                for (id, key) in page.item_ids.into_iter().zip(page.change_keys) {
                    changes.change_keys.insert(id.clone(), key);
                    changes.changed.insert(id, kind);
                }
                changes.deleted.extend(page.deleted);
                state = Some(page.state);
                if page.last {
                    break;
                }
            }
            if let Some(state) = state {
                changes.states.push((kind, state));
            }
        }
        Ok(changes)
    }

    /// Reads a row for synchronisation.
    async fn read_crm_row(
        &self,
        entity: &str,
        id: Uuid,
    ) -> Result<Option<Map<String, Value>>, SyncError> {
        let Some(kind) = kind_of(entity) else {
            return Ok(None);
        };
        let query = row_query(entity, kind, self.fields.of(kind));
        Ok(self.crm.read_row(&set_of(entity), id, &query).await?)
    }

    /// The company an Exchange contact shows, when the user asks for it: the parent account's
    /// name.
    fn company(
        &self,
        doc: &DirectoryDocument,
        mailbox: &SyncingMailbox,
        row: &Map<String, Value>,
    ) -> Option<Values> {
        if !mailbox.settings.synccontactcompany {
            return None;
        }
        let is_account = row
            .get(&format!("_parentcustomerid_value{LOOKUP_ANNOTATION}"))
            .and_then(Value::as_str)
            .is_none_or(|e| e == "account");
        let parent = row
            .get("_parentcustomerid_value")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .filter(|_| is_account);
        let name = parent.and_then(|id| {
            doc.accounts
                .iter()
                .find(|a| a.accountid == id)
                .and_then(|a| a.name.clone())
        });
        Some(
            name.map(|n| [("CompanyName".to_owned(), n)].into())
                .unwrap_or_default(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_in_exchange(
        &self,
        doc: &DirectoryDocument,
        mailbox: &SyncingMailbox,
        kind: ItemKind,
        r: &str,
        version: Option<u64>,
        now: i64,
        report: &mut RunReport,
    ) -> Result<(), SyncError> {
        let Some((entity, id)) = parse_record(r) else {
            return Ok(());
        };
        let Some(row) = self.read_crm_row(entity, id).await? else {
            return Ok(());
        };
        let resolve = |p: &Map<String, Value>| party_address(doc, p);
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        let mut base: BTreeMap<String, Values> = BTreeMap::new();
        for field in self.fields.of(kind) {
            if matches!(field.direction, SyncDirection::None | SyncDirection::ToCrm) {
                continue;
            }
            let v = from_crm(field, &row, &resolve);
            values.extend(v.clone());
            base.insert(field.label.clone(), v);
        }
        if kind == ItemKind::Contact
            && let Some(company) = self.company(doc, mailbox, &row)
        {
            values.extend(company.clone());
            base.insert("Company".into(), company);
        }
        let invitations = invitations_for(kind, &values, now, true);
        let created = self
            .exchange
            .create_sync_item(&mailbox.address, kind, &values, r, invitations)
            .await
            .map_err(SyncError::from);
        let (item_id, change_key) = match created {
            Ok(ids) => ids,
            Err(e) if refused_for_good(&e) => {
                report.failed += 1;
                self.dead_letter(&mailbox.address, r, "exchange_create", e.to_string());
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let version = row.get("versionnumber").and_then(Value::as_u64).or(version);
        let link = Link {
            item_id,
            change_key,
            from_outlook: false,
            crm_version: version,
            base,
        };
        self.store.put_link(&mailbox.address, r, Some(&link))?;
        report.created_in_exchange += 1;
        self.metrics.item(kind.name(), "to_exchange", "create");
        Ok(())
    }
}

/// A linked row with something to merge.
struct Linked<'a> {
    kind: ItemKind,
    record: &'a str,
    link: Link,
    crm_dirty: bool,
    item: Option<SyncItem>,
    version: Option<u64>,
}

/// Whether a change sends meeting requests (docs/domain.md §5.1): an appointment with
/// attendees, starting in the future.
fn invitations_for(
    kind: ItemKind,
    values: &BTreeMap<String, String>,
    now: i64,
    new: bool,
) -> Invitations {
    let attendees = ["RequiredAttendees", "OptionalAttendees"]
        .iter()
        .any(|k| values.get(*k).is_some_and(|v| !v.trim().is_empty()));
    let future = values
        .get("Start")
        .and_then(|s| timestamp_seconds(s))
        .is_some_and(|s| s > now);
    match (kind, attendees && future, new) {
        (ItemKind::Appointment, true, true) => Invitations::ToAll,
        (ItemKind::Appointment, true, false) => Invitations::ToChanged,
        _ => Invitations::None,
    }
}

impl Syncer {
    async fn merge_linked(
        &self,
        doc: &DirectoryDocument,
        mailbox: &SyncingMailbox,
        work: Linked<'_>,
        now: i64,
        report: &mut RunReport,
    ) -> Result<(), SyncError> {
        let Linked {
            kind,
            record: r,
            mut link,
            crm_dirty,
            item,
            version,
        } = work;
        let Some((entity, id)) = parse_record(r) else {
            return Ok(());
        };
        let row = match self.read_crm_row(entity, id).await? {
            Some(row) => row,
            // Gone since the last refresh: the next run sees it leave the selection.
            None => return Ok(()),
        };
        let crm_modified = row
            .get("modifiedon")
            .and_then(Value::as_str)
            .and_then(timestamp_seconds);
        let ex_modified = item
            .as_ref()
            .and_then(|i| i.last_modified.as_deref())
            .and_then(timestamp_seconds);
        let resolve = |p: &Map<String, Value>| party_address(doc, p);
        let canceled = kind == ItemKind::Appointment
            && row.get("statecode").and_then(Value::as_i64) == Some(2);
        if canceled
            && crm_dirty
            && doc
                .organization
                .orgdborgsettings
                .sss_propagate_appointment_cancellations_to_exchange
        {
            self.exchange
                .delete_sync_item(&mailbox.address, &link.item_id)
                .await?;
            self.store.put_link(&mailbox.address, r, None)?;
            report.deleted_in_exchange += 1;
            self.metrics.item(kind.name(), "to_exchange", "delete");
            return Ok(());
        }
        let sides = Sides {
            crm: crm_dirty.then_some(&row),
            exchange: item.as_ref().map(|i| &i.fields),
            current: &row,
            crm_is_newer: match (crm_modified, ex_modified) {
                (Some(c), Some(e)) => c >= e,
                (_, None) => true,
                (None, Some(_)) => false,
            },
        };
        let mut merged = merge(self.fields.of(kind), &link.base, &sides, &resolve);
        if kind == ItemKind::Contact
            && crm_dirty
            && let Some(company) = self.company(doc, mailbox, &row)
        {
            if link.base.get("Company") != Some(&company) {
                merged
                    .to_exchange
                    .insert("CompanyName".into(), company.get("CompanyName").cloned());
            }
            merged.base.insert("Company".into(), company);
        } else if let Some(company) = link.base.get("Company") {
            merged.base.insert("Company".into(), company.clone());
        }
        report.conflicts += merged.conflicts;
        self.metrics.conflicts.inc_by(u64::from(merged.conflicts));
        if !merged.to_exchange.is_empty() {
            let mut after: BTreeMap<String, String> =
                merged.base.values().flat_map(|v| v.clone()).collect();
            after.extend(
                merged
                    .to_exchange
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.clone()?))),
            );
            let organizer_here = item
                .as_ref()
                .and_then(|i| i.organizer.as_deref())
                .is_none_or(|o| o.eq_ignore_ascii_case(&mailbox.address));
            let invitations = if organizer_here {
                invitations_for(kind, &after, now, false)
            } else {
                Invitations::None
            };
            let updated = self
                .exchange
                .update_sync_item(
                    &mailbox.address,
                    kind,
                    &link.item_id,
                    &merged.to_exchange,
                    None,
                    invitations,
                )
                .await
                .map_err(SyncError::from);
            match updated {
                Ok(change_key) => {
                    link.change_key = change_key;
                    report.updated_in_exchange += 1;
                    self.metrics.item(kind.name(), "to_exchange", "update");
                }
                Err(e) if refused_for_good(&e) => {
                    report.failed += 1;
                    self.dead_letter(&mailbox.address, r, "exchange_update", e.to_string());
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        if !merged.to_crm.is_empty() {
            match self
                .write_crm(entity, id, &row, merged.to_crm.clone())
                .await
            {
                Ok(()) => {
                    report.updated_in_crm += 1;
                    self.metrics.item(kind.name(), "to_crm", "update");
                }
                Err(e) if refused_for_good(&e) => {
                    report.failed += 1;
                    self.dead_letter(&mailbox.address, r, "crm_update", e.to_string());
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        if merged.to_exchange.is_empty()
            && let Some(item) = &item
        {
            link.change_key = item.change_key.clone();
        }
        link.base = merged.base;
        link.crm_version = row.get("versionnumber").and_then(Value::as_u64).or(version);
        if !merged.to_crm.is_empty() {
            // Our own write raised the version: compare again next run (nothing will differ).
            link.crm_version = None;
        }
        self.store.put_link(&mailbox.address, r, Some(&link))?;
        Ok(())
    }

    /// Updates a row; a closed activity is reopened first when its fields change (a completed
    /// activity is read-only), and a change of state goes last.
    async fn write_crm(
        &self,
        entity: &str,
        id: Uuid,
        row: &Map<String, Value>,
        mut columns: Map<String, Value>,
    ) -> Result<(), SyncError> {
        let set = set_of(entity);
        let set = set.as_str();
        let mut state: Map<String, Value> = ["statecode", "statuscode"]
            .iter()
            .filter_map(|k| Some(((*k).to_owned(), columns.remove(*k)?)))
            .collect();
        if task_like(entity) {
            columns.remove("percentcomplete");
            state.remove("statuscode");
        }
        let activity = entity != "contact";
        if !columns.is_empty() {
            if activity && !is_open_activity(row) {
                let reopen = match entity {
                    "task" => json!({"statecode": 0, "statuscode": 2}),
                    "appointment" => json!({"statecode": 0, "statuscode": 1}),
                    _ => json!({"statecode": 0}),
                };
                if let Value::Object(reopen) = reopen {
                    self.crm.update_row(set, id, reopen).await?;
                }
                if state.is_empty() {
                    // Close it again as it was.
                    let mut again = Map::new();
                    for k in ["statecode", "statuscode"] {
                        if let Some(v) = row.get(k) {
                            again.insert(k.into(), v.clone());
                        }
                    }
                    self.crm.update_row(set, id, columns).await?;
                    self.crm.update_row(set, id, again).await?;
                    return Ok(());
                }
            }
            self.crm.update_row(set, id, columns).await?;
        }
        if !state.is_empty() {
            self.crm.update_row(set, id, state).await?;
        }
        Ok(())
    }

    /// A linked row no longer selected: deleted in Exchange (or unlinked when the org keeps
    /// logical and physical deletes apart, or when a task is completed there).
    #[allow(clippy::too_many_arguments)]
    async fn left_selection(
        &self,
        doc: &DirectoryDocument,
        mailbox: &SyncingMailbox,
        kind: ItemKind,
        r: &str,
        link: &Link,
        in_replica: bool,
        report: &mut RunReport,
    ) -> Result<(), SyncError> {
        let Some((entity, id)) = parse_record(r) else {
            return Ok(());
        };
        if !in_replica {
            // Absent from the replica: deleted, or created and not yet replicated.
            if self
                .crm
                .read_row(&set_of(entity), id, "$select=versionnumber")
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
        let logical = in_replica;
        if logical && link.from_outlook {
            // Tracked from Outlook, never brought by a filter: it stays linked.
            return Ok(());
        }
        let completed_task = kind == ItemKind::Task
            && link
                .base
                .get("Status")
                .and_then(|v| v.get("Status"))
                .is_some_and(|s| s == "Completed");
        let unlink_only = completed_task
            || (logical
                && doc
                    .organization
                    .orgdborgsettings
                    .distinct_physical_and_logical_deletes_for_exchange_sync);
        let result = if unlink_only {
            self.exchange
                .unlink_sync_item(&mailbox.address, &link.item_id)
                .await
        } else {
            self.exchange
                .delete_sync_item(&mailbox.address, &link.item_id)
                .await
        };
        match result.map_err(SyncError::from) {
            Ok(()) => {}
            Err(e) if refused_for_good(&e) => {
                report.failed += 1;
                self.dead_letter(&mailbox.address, r, "exchange_delete", e.to_string());
            }
            Err(e) => return Err(e),
        }
        self.store.put_link(&mailbox.address, r, None)?;
        if unlink_only {
            report.unlinked += 1;
            self.metrics.item(kind.name(), "to_exchange", "unlink");
        } else {
            report.deleted_in_exchange += 1;
            self.metrics.item(kind.name(), "to_exchange", "delete");
        }
        Ok(())
    }

    /// A linked item deleted in Exchange (docs/domain.md §5.1): a task's row is deleted; an
    /// appointment's only when it is open, not over and the user organizes it; a contact is
    /// only unlinked (a CRM contact is shared, and one user's address book is not the place to
    /// delete it from).
    async fn deleted_in_exchange(
        &self,
        doc: &DirectoryDocument,
        mailbox: &SyncingMailbox,
        r: &str,
        _link: &Link,
        now: i64,
        report: &mut RunReport,
    ) -> Result<(), SyncError> {
        let Some((entity, id)) = parse_record(r) else {
            return Ok(());
        };
        let Some(kind) = kind_of(entity) else {
            return Ok(());
        };
        let delete = match kind {
            ItemKind::Task => true,
            ItemKind::Contact => false,
            ItemKind::Appointment => doc
                .appointments
                .iter()
                .find(|a| a.activityid == id)
                .is_some_and(|a| {
                    let open = a.statecode == 0 || a.statecode == 3;
                    let ahead = a
                        .scheduledend
                        .as_deref()
                        .and_then(timestamp_seconds)
                        .is_none_or(|end| end >= now);
                    open && ahead && a.ownerid == Some(mailbox.user)
                }),
        };
        self.store.put_link(&mailbox.address, r, None)?;
        if !delete {
            report.unlinked += 1;
            self.metrics.item(kind.name(), "to_crm", "unlink");
            return Ok(());
        }
        match self
            .crm
            .delete_row(&set_of(entity), id)
            .await
            .map_err(SyncError::from)
        {
            Ok(()) => {
                report.deleted_in_crm += 1;
                self.metrics.item(kind.name(), "to_crm", "delete");
            }
            Err(e) if refused_for_good(&e) => {
                report.failed += 1;
                self.dead_letter(&mailbox.address, r, "crm_delete", e.to_string());
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// An item given the tracking category in Exchange: a new row owned by the user, under an
    /// id derived from the item (a retry finds it), then the link written on the item.
    async fn create_in_crm(
        &self,
        mailbox: &SyncingMailbox,
        kind: ItemKind,
        item: &SyncItem,
        now: i64,
        report: &mut RunReport,
    ) -> Result<(), SyncError> {
        let id = Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("trackgate/sync/{}/{}", mailbox.address, item.id).as_bytes(),
        );
        let r = record(kind.name(), id);
        let empty = Map::new();
        let mut columns = Map::new();
        let mut base = BTreeMap::new();
        let mut parties = Vec::new();
        for field in self.fields.of(kind) {
            if matches!(
                field.direction,
                SyncDirection::None | SyncDirection::ToOutlook
            ) {
                continue;
            }
            let values = from_exchange(field, &item.fields);
            columns.extend(to_crm(field, &values, &empty));
            for c in &field.conversions {
                if let super::fields::Conversion::Attendees(mask, key) = c {
                    for address in values.get(*key).into_iter().flat_map(|v| v.split(';')) {
                        parties
                            .push(json!({"participationtypemask": mask, "addressused": address}));
                    }
                }
            }
            base.insert(field.label.clone(), values);
        }
        let state: Map<String, Value> = ["statecode", "statuscode"]
            .iter()
            .filter_map(|k| Some(((*k).to_owned(), columns.remove(*k)?)))
            .collect();
        columns.insert(
            "ownerid@odata.bind".into(),
            json!(format!("/systemusers({})", mailbox.user)),
        );
        match kind {
            ItemKind::Appointment => {
                parties.push(json!({
                    "participationtypemask": 7,
                    "partyid_systemuser@odata.bind": format!("/systemusers({})", mailbox.user),
                }));
                columns.insert("appointment_activity_parties".into(), Value::Array(parties));
            }
            ItemKind::Task => {
                columns.insert(
                    "actualstart".into(),
                    json!(crate::common::time::format_seconds(now)),
                );
            }
            ItemKind::Contact => {}
        }
        let set = set_of(kind.name());
        let set = set.as_str();
        let written = async {
            self.crm.create_row(set, id, columns).await?;
            // Rows are created open with their table's first status; any other goes after.
            let first_status = if kind == ItemKind::Task { 2 } else { 1 };
            let as_created = state.get("statecode").and_then(Value::as_i64) == Some(0)
                && state.get("statuscode").and_then(Value::as_i64) == Some(first_status);
            if !state.is_empty() && !as_created {
                self.crm.update_row(set, id, state).await?;
            }
            Ok::<(), SyncError>(())
        }
        .await;
        match written {
            Ok(()) => {}
            Err(e) if refused_for_good(&e) => {
                report.failed += 1;
                self.dead_letter(&mailbox.address, &r, "crm_create", e.to_string());
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let change_key = self
            .exchange
            .update_sync_item(
                &mailbox.address,
                kind,
                &item.id,
                &BTreeMap::new(),
                Some(&r),
                Invitations::None,
            )
            .await?;
        let link = Link {
            item_id: item.id.clone(),
            change_key,
            from_outlook: true,
            crm_version: None,
            base,
        };
        self.store.put_link(&mailbox.address, &r, Some(&link))?;
        report.created_in_crm += 1;
        self.metrics.item(kind.name(), "to_crm", "create");
        Ok(())
    }
}
