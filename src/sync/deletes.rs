//! Deletes, both ways (docs/domain.md §5.1): a linked row that left the user's selection is
//! deleted in Exchange (or only unlinked), a linked item deleted in Outlook deletes its row
//! where the rules allow it (or only unlinks).

use super::mailbox::{kind_of, set_of};
use super::{Link, RunReport, SyncError, Syncer, SyncingMailbox, parse_record};
use crate::common::time::timestamp_seconds;
use crate::directory::model::DirectoryDocument;
use crate::exchange::ItemKind;

impl Syncer {
    /// A linked row no longer selected: deleted in Exchange (or unlinked when the org keeps
    /// logical and physical deletes apart, or when a task is completed there).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn left_selection(
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
        self.settle(
            result.map_err(SyncError::from),
            (&mailbox.address, r, "exchange_delete"),
            report,
        )?;
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
    /// delete it from). Returns the tombstone kept in the link's place, if any.
    pub(super) async fn deleted_in_exchange(
        &self,
        doc: &DirectoryDocument,
        mailbox: &SyncingMailbox,
        (r, link): (&str, &Link),
        selected: bool,
        now: i64,
        report: &mut RunReport,
    ) -> Result<Option<Link>, SyncError> {
        let Some((entity, id)) = parse_record(r) else {
            return Ok(None);
        };
        let Some(kind) = kind_of(entity) else {
            return Ok(None);
        };
        // A row no longer selected: the deletion is synchronisation's own (a crash before its
        // link was dropped, or another gateway of a fleet): the row stays.
        let delete = selected
            && match kind {
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
        if !delete {
            // Kept as a tombstone while the row stays selected, so the item the user deleted
            // is not created again (nor its meeting's invitations sent again).
            let tombstone = Link {
                item_id: String::new(),
                change_key: String::new(),
                ..link.clone()
            };
            let keep = selected.then_some(tombstone);
            self.store.put_link(&mailbox.address, r, keep.as_ref())?;
            report.unlinked += 1;
            self.metrics.item(kind.name(), "to_crm", "unlink");
            return Ok(keep);
        }
        let deleted = self.crm.delete_row(&set_of(entity), id).await;
        let deleted = self.settle(
            deleted.map_err(SyncError::from),
            (&mailbox.address, r, "crm_delete"),
            report,
        )?;
        // The link goes only once the row is gone (or refused for good): a failure before keeps
        // it, so the next run deletes again rather than bringing the item back.
        self.store.put_link(&mailbox.address, r, None)?;
        if deleted.is_some() {
            report.deleted_in_crm += 1;
            self.metrics.item(kind.name(), "to_crm", "delete");
        }
        Ok(None)
    }
}
