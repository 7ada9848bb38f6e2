//! One mailbox's run: what changed in Exchange (a probe and the folders' counts, then
//! `SyncFolderItems` only when something did), what the user's filters select now, and for
//! each row or item the one thing to do — create, merge, delete, unlink — on the side that
//! needs it. A write refused for good becomes a dead letter and the run goes on; Exchange's
//! back-off or an unreachable side ends the run, and the folder sync states are then not
//! saved, so the next run reads the same changes again (every action is idempotent).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value};
use uuid::Uuid;

use super::apply::Linked;
use super::fields::SyncField;
use super::{Link, RunReport, SyncError, Syncer, SyncingMailbox, parse_record, record};
use crate::directory::dataverse::SourceError;
use crate::directory::model::DirectoryDocument;
use crate::directory::selection::{Prepared, select_prepared};
use crate::directory::tables::LOOKUP_ANNOTATION;
use crate::exchange::{ExchangeError, ItemKind, SyncFolder, SyncItem};

/// What changed in a mailbox's synchronised folders since the last run.
#[derive(Debug, Default)]
struct ExchangeChanges {
    /// Changed items: their kind and the change key Exchange reported.
    changed: BTreeMap<String, (ItemKind, String)>,
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
pub(super) fn task_like(entity: &str) -> bool {
    matches!(entity, "phonecall" | "fax" | "letter")
}

pub(super) fn set_of(entity: &str) -> String {
    crate::directory::tables::entity_set(entity)
}

/// Whether an error is the end of this write only (refused for good) rather than of the run.
pub(super) fn refused_for_good(error: &SyncError) -> bool {
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
pub(super) fn row_query(entity: &str, kind: ItemKind, fields: &[SyncField]) -> String {
    let mut columns: BTreeSet<&str> = [
        "modifiedon",
        "versionnumber",
        "statecode",
        "statuscode",
        "_ownerid_value",
    ]
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

pub(super) fn is_open_activity(row: &Map<String, Value>) -> bool {
    row.get("statecode")
        .and_then(Value::as_i64)
        .is_none_or(|s| s == 0 || s == 3)
}

/// The calendar, contacts and tasks folders, in [`ItemKind::ALL`] order.
fn sync_folders() -> [SyncFolder<'static>; 3] {
    ItemKind::ALL.map(|k| SyncFolder::Distinguished(k.folder()))
}

/// What a round prepares once for all its mailboxes.
#[derive(Clone, Copy)]
pub(super) struct Round<'a> {
    pub doc: &'a DirectoryDocument,
    pub prepared: &'a Prepared<'a>,
    pub versions: &'a HashMap<String, Option<u64>>,
}

/// The rows a mailbox's filters select, with their kind and version, by record.
type Selected = BTreeMap<String, (ItemKind, Option<u64>)>;

/// What a mailbox's filters select, and the tables a filter could not be evaluated for: their
/// rows are left as they are (a filter trackgate cannot read must not empty a calendar).
struct Selection {
    rows: Selected,
    frozen: BTreeSet<String>,
}

fn selected_rows(
    round: Round<'_>,
    mailbox: &SyncingMailbox,
    now: i64,
    report: &mut RunReport,
) -> Selection {
    let selection = select_prepared(round.prepared, &mailbox.settings, &[], now);
    report.refused_filters = selection.refused.iter().map(|r| r.to_string()).collect();
    let frozen = selection.refused.iter().map(|r| r.entity.clone()).collect();
    let mut selected = Selected::new();
    for (entity, ids) in &selection.rows {
        let Some(kind) = kind_of(entity) else {
            continue;
        };
        for id in ids {
            let r = record(entity, *id);
            let version = round.versions.get(&r).copied().flatten();
            selected.insert(r, (kind, version));
        }
    }
    Selection {
        rows: selected,
        frozen,
    }
}

impl Syncer {
    pub(super) async fn run_mailbox(
        &self,
        round: Round<'_>,
        mailbox: &SyncingMailbox,
        now: i64,
    ) -> Result<RunReport, SyncError> {
        let mut report = RunReport::default();
        let Selection {
            rows: selected,
            frozen,
        } = selected_rows(round, mailbox, now, &mut report);
        let mut links = self.store.links(&mailbox.address)?;
        self.adopt(&mailbox.address, &mut links).await?;
        let by_item: HashMap<String, String> = links
            .iter()
            .map(|(r, l)| (l.item_id.clone(), r.clone()))
            .collect();
        let changes = self
            .exchange_changes(&mailbox.address, &links, &by_item)
            .await?;
        for id in &changes.deleted {
            if let Some(r) = by_item.get(id)
                && let Some(link) = links.remove(r)
            {
                let still_selected = selected.contains_key(r);
                let kept = self
                    .deleted_in_exchange(
                        round.doc,
                        mailbox,
                        (r, &link),
                        still_selected,
                        now,
                        &mut report,
                    )
                    .await?;
                if let Some(tombstone) = kept {
                    links.insert(r.clone(), tombstone);
                }
            }
        }
        let (changed_items, new_items) = self
            .read_changed(round.doc, &mailbox.address, &changes, &by_item, &mut links)
            .await?;
        self.reconcile_links(
            round,
            mailbox,
            (&selected, &frozen, &links),
            changed_items,
            now,
            &mut report,
        )
        .await?;
        let mut creates = 0usize;
        for (r, (kind, version)) in selected.iter().filter(|(r, _)| !links.contains_key(*r)) {
            if creates >= self.settings.creates_per_run {
                report.deferred += 1;
                continue;
            }
            creates += 1;
            self.create_in_exchange(round.doc, mailbox, *kind, r, *version, now, &mut report)
                .await?;
        }
        for (kind, item) in new_items {
            self.create_in_crm(mailbox, kind, &item, now, &mut report)
                .await?;
        }
        self.save_marks(&mailbox.address, &changes, &report).await?;
        Ok(report)
    }

    /// Every linked row: left the selection (deleted or unlinked), or merged when the row's
    /// version or the item changed.
    async fn reconcile_links(
        &self,
        round: Round<'_>,
        mailbox: &SyncingMailbox,
        (selected, frozen, links): (&Selected, &BTreeSet<String>, &BTreeMap<String, Link>),
        mut changed_items: HashMap<String, SyncItem>,
        now: i64,
        report: &mut RunReport,
    ) -> Result<(), SyncError> {
        for (r, link) in links {
            let Some((entity, _)) = parse_record(r) else {
                continue;
            };
            let Some(kind) = kind_of(entity) else {
                continue;
            };
            if frozen.contains(entity) && !selected.contains_key(r) {
                continue;
            }
            let item = changed_items.remove(r);
            if link.item_id.is_empty() {
                // A tombstone (the user deleted the item): gone once the row leaves the
                // selection, nothing to do while it stays.
                if !selected.contains_key(r) {
                    self.store.put_link(&mailbox.address, r, None)?;
                }
                continue;
            }
            let Some((_, version)) = selected.get(r) else {
                let in_replica = round.versions.contains_key(r);
                self.left_selection(round.doc, mailbox, kind, r, link, in_replica, report)
                    .await?;
                continue;
            };
            let crm_dirty = link.crm_version.is_none() || link.crm_version != *version;
            if crm_dirty || item.is_some() {
                let work = Linked {
                    kind,
                    record: r,
                    link: link.clone(),
                    crm_dirty,
                    item,
                    version: *version,
                };
                self.merge_linked(round.doc, mailbox, work, now, report)
                    .await?;
            }
        }
        Ok(())
    }

    /// Reads the items Exchange says changed: those linked (by the link table or the link on
    /// the item, adopted then), and those given the tracking category, new to the CRM.
    async fn read_changed(
        &self,
        doc: &DirectoryDocument,
        mailbox: &str,
        changes: &ExchangeChanges,
        by_item: &HashMap<String, String>,
        links: &mut BTreeMap<String, Link>,
    ) -> Result<(HashMap<String, SyncItem>, Vec<(ItemKind, SyncItem)>), SyncError> {
        let ids: Vec<&str> = changes.changed.keys().map(String::as_str).collect();
        let items = if ids.is_empty() {
            Vec::new()
        } else {
            self.exchange.get_sync_items(mailbox, &ids).await?
        };
        let categories = self.categories(doc);
        let mut changed_items = HashMap::new();
        let mut new_items = Vec::new();
        for item in items {
            // Linked by the table, or by the link on the item — unless that row is linked to
            // another item: this one is a copy, and copies of linked items are ignored
            // (server-side sync's IgnoreCopiedItemsInSSSForMailbox, on by default).
            let linked = by_item.get(&item.id).cloned().or_else(|| {
                item.link.clone().filter(|l| {
                    parse_record(l).is_some_and(|(e, _)| kind_of(e).is_some())
                        && links.get(l).is_none_or(|other| other.item_id.is_empty())
                })
            });
            if linked.is_none() && item.link.is_some() {
                continue;
            }
            let tracked = item
                .categories
                .iter()
                .any(|c| categories.iter().any(|t| t.eq_ignore_ascii_case(c)));
            match (linked, changes.changed.get(&item.id).map(|(kind, _)| kind)) {
                (Some(r), _) => {
                    links.entry(r.clone()).or_insert_with(|| Link {
                        item_id: item.id.clone(),
                        ..Link::default()
                    });
                    changed_items.insert(r, item);
                }
                (None, Some(kind)) if tracked => new_items.push((*kind, item)),
                (None, _) => {}
            }
        }
        Ok((changed_items, new_items))
    }

    /// Where this run leaves Exchange: the folders' sync states, the probe's time, and the
    /// counts after the run's own writes (so the next run tells a user's deletion from them).
    async fn save_marks(
        &self,
        mailbox: &str,
        changes: &ExchangeChanges,
        report: &RunReport,
    ) -> Result<(), SyncError> {
        for (kind, state) in &changes.states {
            self.store
                .put_meta(mailbox, &format!("state/{}", kind.folder()), Some(state))?;
        }
        if let Some(probe) = &changes.probe {
            self.store.put_meta(mailbox, "probe", Some(probe))?;
        }
        let wrote = report.created_in_exchange + report.deleted_in_exchange + report.unlinked > 0;
        let counts = if wrote {
            self.exchange
                .folder_counts(mailbox, &sync_folders())
                .await?
        } else {
            changes.counts.clone()
        };
        let counts = counts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        self.store.put_meta(mailbox, "counts", Some(&counts))?;
        Ok(())
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
                .filter(|id| !id.is_empty())
                .filter(|id| !changes.changed.contains_key(*id) && !changes.deleted.contains(*id))
                .collect();
            if ids.is_empty() {
                continue;
            }
            // Gone only when Exchange says so of that item; a failure ends the run instead.
            let missing = self.exchange.missing_items(mailbox, &ids).await?;
            changes.deleted.extend(missing);
        }
        Ok(())
    }

    /// What changed in Exchange, without the run's own writes: nothing when the probe sees no modification and the folders
    /// hold as many items as last time (two requests); else each folder's changes.
    async fn exchange_changes(
        &self,
        mailbox: &str,
        links: &BTreeMap<String, Link>,
        by_item: &HashMap<String, String>,
    ) -> Result<ExchangeChanges, SyncError> {
        let mut changes = self.folder_changes(mailbox).await?;
        self.find_deleted(mailbox, links, &mut changes).await?;
        // An item deleted and then seen again (moved back) is a change, not a deletion.
        changes
            .deleted
            .retain(|id| !changes.changed.contains_key(id));
        // Changes that are synchronisation's own writes (the change key it left) need no read.
        changes.changed.retain(|id, (_, key)| {
            let own = by_item
                .get(id)
                .and_then(|r| links.get(r))
                .is_some_and(|l| !l.change_key.is_empty() && l.change_key == *key);
            !own
        });
        Ok(changes)
    }

    /// The folders' changes as Exchange reports them.
    async fn folder_changes(&self, mailbox: &str) -> Result<ExchangeChanges, SyncError> {
        let mut changes = ExchangeChanges::default();
        let folders = sync_folders();
        let since = self.store.meta(mailbox, "probe")?;
        let (modified, server_now) = self
            .exchange
            .changed_since(mailbox, &folders, since.as_deref())
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
                    changes.changed.insert(id, (kind, key));
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
    pub(super) async fn read_crm_row(
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
}
