//! Party resolution (docs/domain.md §4): the sender and recipients of a message resolved against
//! the directory — X.500 addresses mapped to SMTP, inactive and ambiguous matches weighed, the
//! owner's address-book options applied when set — and spelled out as the decision's parties.

use std::borrow::Cow;

use smallvec::SmallVec;
use uuid::Uuid;

use super::super::decision::{Decision, Party};
use super::{Run, lookup};
use crate::common::shared::SharedStr;
use crate::directory::model::{ContactMatching, Lookup, OtherMatching};
use crate::directory::snapshot::{Directory, EntityKind, MailboxEntry, lower, recipient_may_match};
use crate::inspect::{Address, Message};

/// More matches than this leave an address unresolved (docs/domain.md §4.1).
const MAX_MATCHES: usize = 100;

/// A party resolved against the directory.
pub(super) struct Resolved<'m, 'd> {
    pub address: Option<Cow<'m, str>>,
    /// The address as the message showed it (its name, and its text when that needed no
    /// normalising, are shared by the decision's party rather than copied).
    pub shown: Option<&'m Address>,
    pub rows: Rows<'d>,
    /// Every row with the address, before any was chosen or left out: later steps ask about
    /// the address without looking it up again.
    pub all_rows: &'d [u32],
    /// For a recipient, the `Party` role code: to (2), cc (3), bcc (4).
    pub role: u8,
    /// A contact or lead the gateway created for this sender (not yet in the directory).
    pub created: Option<Lookup>,
}

impl<'m> Resolved<'m, '_> {
    /// A party as the message names it, not looked up yet.
    fn unresolved(address: Option<Cow<'m, str>>, shown: Option<&'m Address>, role: u8) -> Self {
        Resolved {
            address,
            shown,
            rows: Rows::Slice(&[]),
            all_rows: &[],
            role,
            created: None,
        }
    }

    pub(super) fn name(&self) -> Option<&str> {
        self.shown.and_then(|s| s.name.as_deref())
    }

    /// The table of what the party resolved to, when it resolved.
    pub(super) fn kind(&self, dir: &Directory) -> Option<EntityKind> {
        match (self.rows.first(), &self.created) {
            (Some(&r), _) => Some(dir.record(r).kind),
            (None, Some(c)) if c.entity == "lead" => Some(EntityKind::Lead),
            (None, Some(_)) => Some(EntityKind::Contact),
            (None, None) => None,
        }
    }
}

/// The rows a party resolved to, borrowed from the directory when nothing was filtered out.
pub(super) enum Rows<'a> {
    Slice(&'a [u32]),
    One([u32; 1]),
    Owned(Vec<u32>),
}

impl std::ops::Deref for Rows<'_> {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        match self {
            Rows::Slice(s) => s,
            Rows::One(one) => one,
            Rows::Owned(v) => v,
        }
    }
}

/// The recipients resolved, in the message's order (to, cc, bcc), each with its role; inline
/// for the few most messages have.
pub(super) struct Recipients<'m, 'd>(SmallVec<[Resolved<'m, 'd>; 4]>);

impl<'m, 'd> Recipients<'m, 'd> {
    pub(super) fn all(&self) -> impl Iterator<Item = &Resolved<'m, 'd>> {
        self.0.iter()
    }

    fn in_role(&self, role: u8) -> impl Iterator<Item = &Resolved<'m, 'd>> {
        self.0.iter().filter(move |r| r.role == role)
    }
}

impl<'a> Run<'a> {
    /// The address to resolve: X.500 addresses map through the directory.
    fn smtp<'m>(&self, a: &'m Address) -> Option<Cow<'m, str>> {
        let raw = crate::common::text::trim(a.address.as_deref()?);
        let is_x500 = a
            .routing_type
            .as_deref()
            .is_some_and(|r| r.eq_ignore_ascii_case("EX"))
            || raw.starts_with("/o=")
            || raw.starts_with("/O=");
        if is_x500 {
            return Some(Cow::Owned(self.dir.smtp_for_x500(raw)?.to_owned()));
        }
        Some(lower(raw))
    }

    /// The address a party is looked up by: its SMTP form, or the text as sent when it has
    /// none (an X.500 address the directory cannot map).
    fn address_of<'m>(&self, a: &'m Address) -> Option<Cow<'m, str>> {
        self.smtp(a)
            .or_else(|| a.address.as_deref().map(Cow::Borrowed))
    }

    /// Whether a row may stand for an address at all: active, or an inactive record that is
    /// not a user when the organisation resolves to those.
    fn eligible(&self, row: u32) -> bool {
        let rec = self.dir.record(row);
        rec.active
            || (rec.kind != EntityKind::Systemuser
                && self.dir.org().settings.resolve_for_inactive_entities)
    }

    /// Sender resolution (docs/domain.md §4.1): active rows, user → contact → account → lead →
    /// others, a row the mailbox owner owns first, earliest created among equals.
    pub(super) fn resolve_sender<'m>(
        &self,
        _mailbox: &MailboxEntry,
        owner_id: Uuid,
        a: Option<&'m Address>,
    ) -> Resolved<'m, 'a> {
        let Some(a) = a else {
            return Resolved::unresolved(None, None, 1);
        };
        let address = self.address_of(a);
        let rows = address
            .as_deref()
            .map(|addr| self.dir.rows_with_address(addr))
            .unwrap_or(&[]);
        let chosen = if rows.len() > MAX_MATCHES {
            None
        } else {
            self.choose_sender_row(rows, owner_id)
        };
        // Not in the CRM yet, but created for an earlier mail: the same record.
        let created = match (chosen, rows.is_empty(), address.as_deref()) {
            (None, true, Some(a)) => self.memory.created(a),
            _ => None,
        };
        Resolved {
            address,
            shown: Some(a),
            rows: match chosen {
                Some(r) => Rows::One([r]),
                None => Rows::Slice(&[]),
            },
            all_rows: rows,
            role: 1,
            created,
        }
    }

    /// Among the rows with the sender's address: the first eligible one, preferring a row the
    /// owner owns; several eligible rows may leave the sender unresolved by the org's option.
    fn choose_sender_row(&self, rows: &[u32], owner_id: Uuid) -> Option<u32> {
        let org = self.dir.org();
        let mut candidates = rows.iter().copied().filter(|&r| self.eligible(r));
        let first = candidates.next();
        let several = candidates.next().is_some();
        let mut candidates = rows.iter().copied().filter(|&r| self.eligible(r));
        if first.is_none() {
            // A single match resolves regardless of state — except to a disabled user.
            match rows {
                [only] if self.dir.record(*only).kind != EntityKind::Systemuser => Some(*only),
                _ => None,
            }
        } else if several && org.settings.unresolve_sender_in_case_of_multiple_match {
            None
        } else {
            candidates
                .find(|&r| self.dir.record(r).owner() == Some(owner_id))
                .or(first)
        }
    }

    /// Recipient resolution (docs/domain.md §4.2): every match, narrowed only by address-book
    /// options the owner's settings set explicitly. Every address is normalised and hashed
    /// first and then all are looked up, one after the other: independent lookups let the
    /// directory's cache misses overlap instead of waiting for each in turn.
    pub(super) fn resolve_recipients<'m>(
        &self,
        d: &mut Decision,
        mailbox: &MailboxEntry,
        owner_id: Uuid,
        m: &'m Message,
    ) -> Recipients<'m, 'a> {
        let max = self.limits.max_parties;
        let listed = [(2, &m.to), (3, &m.cc), (4, &m.bcc)]
            .into_iter()
            .flat_map(|(role, list)| list.iter().map(move |a| (role, a)));
        let mut list: SmallVec<[Resolved<'m, 'a>; 4]> = listed
            .take(max)
            .map(|(role, a)| Resolved::unresolved(self.address_of(a), Some(a), role))
            .collect();
        let keys: SmallVec<[_; 4]> = list
            .iter()
            .map(|r| r.address.as_deref().map(|a| self.dir.address_key(a)))
            .collect();
        for (r, key) in list.iter_mut().zip(keys) {
            r.all_rows = key.map_or(&[], |k| self.dir.rows_with_key(k));
        }
        let matching = self.dir.matching(mailbox.owner);
        for r in &mut list {
            r.rows = self.recipient_rows(r.all_rows, owner_id, matching);
        }
        if m.to.len() + m.cc.len() + m.bcc.len() > max {
            why!(
                d,
                self,
                "more than {} recipients: the rest were not considered",
                self.limits.max_parties
            );
        }
        Recipients(list)
    }

    /// The rows a recipient resolves to: the active ones (or inactive non-users, by the org's
    /// option) that the owner's address-book options let match; none when there are too many,
    /// or several and the org leaves such recipients unresolved.
    fn recipient_rows(
        &self,
        rows: &'a [u32],
        owner_id: Uuid,
        matching: (ContactMatching, OtherMatching),
    ) -> Rows<'a> {
        let org = self.dir.org();
        let keep = |&r: &u32| {
            self.eligible(r) && recipient_may_match(self.dir.record(r), Some(owner_id), matching)
        };
        let chosen = if rows.len() > MAX_MATCHES {
            Rows::Slice(&[])
        } else if rows.iter().all(keep) {
            Rows::Slice(rows)
        } else {
            Rows::Owned(rows.iter().copied().filter(keep).collect())
        };
        if chosen.len() > 1 && org.unresolve_recipients_on_multiple_match {
            return Rows::Slice(&[]);
        }
        chosen
    }

    fn party(&self, r: &Resolved<'_, '_>) -> Party {
        Party {
            address: r
                .address
                .as_deref()
                .map(|a| match r.shown.and_then(|s| s.address.as_ref()) {
                    Some(shown) if **shown == *a => shown.clone(),
                    _ => SharedStr::from(a),
                }),
            name: r.shown.and_then(|s| s.name.clone()),
            records: r
                .rows
                .iter()
                .map(|&row| {
                    let rec = self.dir.record(row);
                    lookup(self.dir.entity_name(rec), rec.id)
                })
                .chain(r.created.clone())
                .collect(),
        }
    }

    pub(super) fn set_parties(
        &self,
        d: &mut Decision,
        from: &Resolved<'_, '_>,
        parties: &Recipients<'_, '_>,
    ) {
        // Only what is delivered (or explained) needs its parties spelled out.
        if !d.is_track() && !self.mode.explain {
            return;
        }
        if from.address.is_some() {
            let p = self.party(from);
            match p.records.first() {
                Some(r) => why!(d, self, "the sender resolves to {} {}", r.entity, r.id),
                None => why!(d, self, "the sender is unresolved"),
            }
            d.from = Some(p);
        }
        d.to = parties.in_role(2).map(|r| self.party(r)).collect();
        d.cc = parties.in_role(3).map(|r| self.party(r)).collect();
        d.bcc = parties.in_role(4).map(|r| self.party(r)).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_the_same_however_they_are_held() {
        let borrowed = [3, 5];
        assert_eq!(&*Rows::Slice(&borrowed), &[3, 5]);
        assert_eq!(&*Rows::One([7]), &[7]);
        assert_eq!(&*Rows::Owned(vec![1, 2, 3]), &[1, 2, 3]);
        assert!(Rows::Slice(&[]).is_empty());
    }

    #[test]
    fn a_party_created_by_the_gateway_has_the_created_kind() {
        let mut doc = crate::directory::model::DirectoryDocument::default();
        doc.organization.organizationid = Uuid::from_u128(9);
        let dir = Directory::build(doc).expect("an empty directory with an org id is valid");
        let unresolved = Resolved::unresolved(Some(Cow::Borrowed("a@x.test")), None, 1);
        assert_eq!(unresolved.kind(&dir), None);
        let lead = Resolved {
            created: Some(lookup("lead", Uuid::from_u128(1))),
            ..unresolved
        };
        assert_eq!(lead.kind(&dir), Some(EntityKind::Lead));
        let contact = Resolved {
            created: Some(lookup("contact", Uuid::from_u128(2))),
            ..lead
        };
        assert_eq!(contact.kind(&dir), Some(EntityKind::Contact));
    }
}
