//! Writing one side from the other: a selected row created in Exchange, a linked row and item
//! merged field by field (then each side written where the merge says), an Outlook item the
//! user tracked created in the CRM. A write refused for good becomes a dead letter
//! ([`Syncer::settle`]); anything else ends the run.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::fields::{Values, from_crm, from_exchange, to_crm};
use super::mailbox::{is_open_activity, party_address, refused_for_good, set_of, task_like};
use super::merge::{Merged, Sides, merge};
use super::{Link, RunReport, SyncError, Syncer, SyncingMailbox, parse_record, record};
use crate::common::time::timestamp_seconds;
use crate::crm::mapping::SyncDirection;
use crate::directory::model::DirectoryDocument;
use crate::directory::tables::LOOKUP_ANNOTATION;
use crate::exchange::{Invitations, ItemKind, SyncItem};

/// A linked row with something to merge.
pub(super) struct Linked<'a> {
    pub kind: ItemKind,
    pub record: &'a str,
    pub link: Link,
    pub crm_dirty: bool,
    pub item: Option<SyncItem>,
    pub version: Option<u64>,
}

/// Whether the row changed after the item (a two-way conflict's tie-break): Dataverse's
/// `modifiedon` against Exchange's `LastModifiedTime`; an item not read did not change.
fn crm_is_newer(row: &Map<String, Value>, item: Option<&SyncItem>) -> bool {
    let crm = row
        .get("modifiedon")
        .and_then(Value::as_str)
        .and_then(timestamp_seconds);
    let exchange = item
        .and_then(|i| i.last_modified.as_deref())
        .and_then(timestamp_seconds);
    match (crm, exchange) {
        (Some(c), Some(e)) => c >= e,
        (_, None) => true,
        (None, Some(_)) => false,
    }
}

/// The contact's company (from its parent account, when the user asks for it) into the merge:
/// written to Exchange when it differs from the last agreed one; otherwise the agreed one kept.
fn with_company(merged: &mut Merged, base: &BTreeMap<String, Values>, company: Option<Values>) {
    match company {
        Some(company) => {
            if base.get("Company") != Some(&company) {
                merged
                    .to_exchange
                    .insert("CompanyName".into(), company.get("CompanyName").cloned());
            }
            merged.base.insert("Company".into(), company);
        }
        None => {
            if let Some(company) = base.get("Company") {
                merged.base.insert("Company".into(), company.clone());
            }
        }
    }
}

/// Whether this mailbox's user organizes the appointment: its organizer party (mask 7) is the
/// user or the mailbox's address, or, with no organizer party, the user owns it.
fn organizes(row: &Map<String, Value>, mailbox: &SyncingMailbox) -> bool {
    let user = mailbox.user.to_string();
    let organizer = row
        .iter()
        .find(|(k, _)| k.ends_with("_activity_parties"))
        .and_then(|(_, v)| v.as_array())
        .into_iter()
        .flatten()
        .find(|p| p.get("participationtypemask").and_then(Value::as_i64) == Some(7));
    match organizer {
        Some(party) => {
            party.get("_partyid_value").and_then(Value::as_str) == Some(user.as_str())
                || party
                    .get("addressused")
                    .and_then(Value::as_str)
                    .is_some_and(|a| a.eq_ignore_ascii_case(&mailbox.address))
        }
        None => row.get("_ownerid_value").and_then(Value::as_str) == Some(user.as_str()),
    }
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
    /// What became of a write: `Some` when it went through, `None` when it was refused for
    /// good (counted, and a dead letter kept), an error when the run must end.
    pub(super) fn settle<T>(
        &self,
        result: Result<T, SyncError>,
        (mailbox, record, operation): (&str, &str, &str),
        report: &mut RunReport,
    ) -> Result<Option<T>, SyncError> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(e) if refused_for_good(&e) => {
                report.failed += 1;
                self.dead_letter(mailbox, record, operation, e.to_string());
                Ok(None)
            }
            Err(e) => Err(e),
        }
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
    pub(super) async fn create_in_exchange(
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
        // Meeting requests go out only from the organizer's mailbox.
        let invitations = if organizes(&row, mailbox) {
            invitations_for(kind, &values, now, true)
        } else {
            Invitations::None
        };
        let created = self
            .exchange
            .create_sync_item(&mailbox.address, kind, &values, r, invitations)
            .await
            .map_err(SyncError::from);
        let Some((item_id, change_key)) =
            self.settle(created, (&mailbox.address, r, "exchange_create"), report)?
        else {
            return Ok(());
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

    pub(super) async fn merge_linked(
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
        let canceled = kind == ItemKind::Appointment
            && row.get("statecode").and_then(Value::as_i64) == Some(2);
        let propagate = doc
            .organization
            .orgdborgsettings
            .sss_propagate_appointment_cancellations_to_exchange;
        if canceled && crm_dirty && propagate {
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
            crm_is_newer: crm_is_newer(&row, item.as_ref()),
        };
        let resolve = |p: &Map<String, Value>| party_address(doc, p);
        let mut merged = merge(self.fields.of(kind), &link.base, &sides, &resolve);
        let company = (kind == ItemKind::Contact && crm_dirty)
            .then(|| self.company(doc, mailbox, &row))
            .flatten();
        with_company(&mut merged, &link.base, company);
        report.conflicts += merged.conflicts;
        self.metrics.conflicts.inc_by(u64::from(merged.conflicts));
        if !merged.to_exchange.is_empty() {
            let organizer_here = match item.as_ref().and_then(|i| i.organizer.as_deref()) {
                Some(organizer) => organizer.eq_ignore_ascii_case(&mailbox.address),
                None => organizes(&row, mailbox),
            };
            let updated = self
                .push_to_exchange(mailbox, kind, &link.item_id, &merged, organizer_here, now)
                .await;
            let Some(change_key) =
                self.settle(updated, (&mailbox.address, r, "exchange_update"), report)?
            else {
                return Ok(());
            };
            link.change_key = change_key;
            report.updated_in_exchange += 1;
            self.metrics.item(kind.name(), "to_exchange", "update");
        }
        if !merged.to_crm.is_empty() {
            let written = self
                .write_crm(entity, id, &row, merged.to_crm.clone())
                .await;
            if self
                .settle(written, (&mailbox.address, r, "crm_update"), report)?
                .is_none()
            {
                return Ok(());
            }
            report.updated_in_crm += 1;
            self.metrics.item(kind.name(), "to_crm", "update");
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

    /// The columns of a row created from an Outlook item (its state apart: rows are created
    /// open), and the values both sides then agree on.
    fn new_row(
        &self,
        mailbox: &SyncingMailbox,
        kind: ItemKind,
        item: &SyncItem,
        now: i64,
    ) -> (
        Map<String, Value>,
        Map<String, Value>,
        BTreeMap<String, Values>,
    ) {
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
        (columns, state, base)
    }

    /// Writes the merge's Exchange side; meeting updates go to attendees only when this
    /// mailbox organizes the meeting (docs/domain.md §5.1). The new change key.
    async fn push_to_exchange(
        &self,
        mailbox: &SyncingMailbox,
        kind: ItemKind,
        item_id: &str,
        merged: &Merged,
        organizer_here: bool,
        now: i64,
    ) -> Result<String, SyncError> {
        let mut after: BTreeMap<String, String> =
            merged.base.values().flat_map(|v| v.clone()).collect();
        after.extend(
            merged
                .to_exchange
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.clone()?))),
        );
        let invitations = if organizer_here {
            invitations_for(kind, &after, now, false)
        } else {
            Invitations::None
        };
        Ok(self
            .exchange
            .update_sync_item(
                &mailbox.address,
                kind,
                item_id,
                &merged.to_exchange,
                None,
                invitations,
            )
            .await?)
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

    /// An item given the tracking category in Exchange: a new row owned by the user, under an
    /// id derived from the item (a retry finds it), then the link written on the item.
    pub(super) async fn create_in_crm(
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
        let (columns, state, base) = self.new_row(mailbox, kind, item, now);
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
        if self
            .settle(written, (&mailbox.address, &r, "crm_create"), report)?
            .is_none()
        {
            return Ok(());
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
