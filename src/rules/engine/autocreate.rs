//! Auto-create: an unresolved sender of a tracked incoming email becomes a contact or lead
//! (AutoCreateContactOnPromote and the owner's option), with an id derived from the address so
//! that every mail from that sender names the same record until the directory has it.

use super::super::decision::{AutoCreate, Decision, Direction, auto_created_id, names_for};
use super::parties::Resolved;
use super::{Run, lookup};
use crate::directory::snapshot::{MailboxEntry, Owner};

impl Run<'_> {
    /// An unresolved sender of a tracked incoming email becomes a contact or lead, when both the
    /// organisation and the mailbox owner allow it.
    pub(super) fn auto_create(
        &self,
        d: &mut Decision,
        mailbox: &MailboxEntry,
        from: &Resolved<'_, '_>,
    ) {
        let org = self.dir.org();
        let Owner::User(u) = mailbox.owner else {
            return;
        };
        if !from.rows.is_empty() || d.direction != Some(Direction::Incoming) {
            return;
        }
        // Created for an earlier mail and not in the directory yet: that create may still be
        // queued, so this email carries it too (the create-only upsert makes it one record).
        if let (Some(created), Some(address)) = (&from.created, from.address.as_deref()) {
            let (firstname, lastname) = names_for(from.name(), address);
            d.auto_create = Some(AutoCreate {
                entity: created.entity.to_string(),
                id: created.id,
                address: address.to_owned(),
                firstname,
                lastname,
            });
            return;
        }
        let Some(address) = from.address.as_deref().filter(|a| a.contains('@')) else {
            return;
        };
        if !from.all_rows.is_empty() {
            why!(
                d,
                self,
                "the sender's address belongs to CRM rows that do not resolve (inactive, disabled or several): no record is created"
            );
            return;
        }
        let choice = self.user_settings(u).autocreatecontactonpromote;
        if choice == 0 {
            why!(
                d,
                self,
                "the sender stays unresolved: the user's option creates no records"
            );
            return;
        }
        if !org.settings.auto_create_contact_on_promote {
            why!(
                d,
                self,
                "the sender stays unresolved: AutoCreateContactOnPromote is off for the organisation"
            );
            return;
        }
        let entity = if choice == 2 { "lead" } else { "contact" };
        let (firstname, lastname) = names_for(from.name(), address);
        let id = auto_created_id(org.id, entity, address);
        why!(d, self, "the unresolved sender becomes a new {entity} {id}");
        if let Some(p) = d.from.as_mut() {
            p.records = smallvec::smallvec![lookup(entity, id)];
        }
        if self.mode.remember {
            self.memory.remember_created(address, lookup(entity, id));
        }
        d.auto_create = Some(AutoCreate {
            entity: entity.to_owned(),
            id,
            address: address.to_owned(),
            firstname,
            lastname,
        });
    }
}
