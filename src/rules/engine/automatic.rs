//! Automatic tracking of mail directly in the Inbox or in Sent Items, one path for both
//! directions: history is never tracked; incoming mail between users may be ignored; then the
//! filters decide — incoming, every resolved recipient user's or queue's filter on the sender,
//! the owner's first; outgoing, after the org switch, the sender's filter on the recipients.
//! Also what a complete sighting that was not tracked leaves in the memory (settling).

use smallvec::SmallVec;

use super::super::decision::{Decision, Direction, Reason, Verdict};
use super::super::memory::Summary;
use super::correlation::Correlating;
use super::evaluate::Case;
use super::parties::Recipients;
use super::{Run, View, lookup};
use crate::common::time::timestamp_seconds;
use crate::directory::model::Lookup;
use crate::directory::snapshot::{EntityKind, MailboxEntry, Owner, normalize_exchange_id};

/// How the filters judged a message.
enum Filtered {
    /// Tracked, for this reason, on this user's or queue's filter.
    Accepted { reason: Reason, by: Option<Lookup> },
    /// Not tracked, for this reason.
    Refused(Reason),
    /// Sent mail whose recipients the exchange did not show: tracked provisionally, and decided
    /// again once delivery has fetched it.
    Unseen,
}

impl Run<'_> {
    /// Automatic tracking of mail directly in the Inbox (incoming) or in Sent Items or seen
    /// being sent (outgoing).
    pub(super) fn automatic(
        &self,
        d: &mut Decision,
        case: &Case<'_>,
        direction: Direction,
        initial_sync: bool,
    ) {
        let m = case.summary.message;
        if direction.is_outgoing() && !self.dir.org().settings.auto_track_sent_folder_items {
            d.reason = Reason::SentNotAutoTracked;
            why!(
                d,
                self,
                "sent mail is tracked automatically only when AutoTrackSentFolderItems is on"
            );
            return;
        }
        // Each direction dates the message by its own side of the exchange first.
        let at = match direction {
            Direction::Incoming => m.received_at.as_deref().or(m.sent_at.as_deref()),
            Direction::Outgoing => m.sent_at.as_deref().or(m.received_at.as_deref()),
        };
        if self.is_history(d, case.mailbox, at, initial_sync) {
            return;
        }
        let parties = self.resolve_recipients(d, case.mailbox, case.owner_id, m);
        let mut correlation = Correlating::new(m);
        let filtered = match direction {
            Direction::Incoming => {
                if self.internal_email(d, case, &mut correlation) {
                    self.set_parties(d, case.from, &parties);
                    return;
                }
                self.recipients_filters(d, case, &parties, &mut correlation)
            }
            Direction::Outgoing => self.sender_filter(d, case, &parties, &mut correlation),
        };
        // The verdict first: parties are spelled out only for what is tracked (or explained).
        d.verdict = match filtered {
            Filtered::Refused(_) => Verdict::Ignore,
            Filtered::Accepted { .. } | Filtered::Unseen => Verdict::Track,
        };
        self.set_parties(d, case.from, &parties);
        self.conclude(d, case, direction, filtered, &mut correlation);
    }

    /// Mail from before the mailbox's "process email received after" time, or shown by an
    /// initial sync when no such time says what is new, is history: never tracked automatically.
    fn is_history(
        &self,
        d: &mut Decision,
        mailbox: &MailboxEntry,
        at: Option<&str>,
        initial_sync: bool,
    ) -> bool {
        // Parsed only when there is a cutoff to compare with.
        let at = mailbox.cutoff.and(at).and_then(timestamp_seconds);
        match (mailbox.cutoff, at) {
            (Some(cutoff), Some(at)) if at < cutoff => {
                d.reason = Reason::ReceivedBeforeCutoff;
                why!(
                    d,
                    self,
                    "from before the mailbox's \"process email received after\" time"
                );
                true
            }
            (None, _) | (_, None) if initial_sync => {
                d.reason = Reason::InitialSyncHistory;
                why!(
                    d,
                    self,
                    "an initial sync shows the mailbox's history, and no \"process email received after\" time says which of it is new"
                );
                true
            }
            _ => false,
        }
    }

    /// Mail between users and queues, when the org does not track it as two activities: ignored
    /// unless it continues a tracked thread.
    fn internal_email(
        &self,
        d: &mut Decision,
        case: &Case<'_>,
        correlation: &mut Correlating<'_>,
    ) -> bool {
        let org = self.dir.org();
        let sender_row = case.from.rows.first().map(|&r| self.dir.record(r));
        if org.ignore_internal_email
            && let Some(sender) = sender_row
            && (sender.kind == EntityKind::Systemuser
                || (sender.kind == EntityKind::Queue
                    && org.settings.ignore_internal_email_from_queues))
            && !(matches!(case.mailbox.owner, Owner::Queue(_))
                && org.settings.do_not_ignore_internal_email_to_queues)
            && correlation.get(self).is_none()
        {
            d.reason = Reason::InternalEmail;
            why!(
                d,
                self,
                "internal mail (the sender is a user) and the organisation does not track mail between users"
            );
            return true;
        }
        false
    }

    /// Incoming mail: every resolved recipient user's or queue's filter counts, the mailbox
    /// owner's first; the first that accepts tracks it, else the owner's reason stands.
    fn recipients_filters(
        &self,
        d: &mut Decision,
        case: &Case<'_>,
        parties: &Recipients<'_, '_>,
        correlation: &mut Correlating<'_>,
    ) -> Filtered {
        let org = self.dir.org();
        let sender_kind = case.from.kind(self.dir);
        let sender_shown = case.from.address.is_some();
        let mut owner_reason = Reason::FilterNone;
        for (who, filter, is_owner) in self.evaluators(case.mailbox, parties) {
            if !is_owner
                && filter == 1
                && org
                    .settings
                    .use_filtering_method_of_syncing_mailbox_only_for_correlation
            {
                continue;
            }
            let outcome = match filter {
                0 => Ok(Reason::FilterAll),
                1 => match correlation.get(self) {
                    Some((c, _)) => Ok(c.method.reason()),
                    None => Err(Reason::NotAReply),
                },
                2 => match sender_kind {
                    Some(EntityKind::Contact) => Ok(Reason::SenderContact),
                    Some(EntityKind::Account) => Ok(Reason::SenderAccount),
                    Some(EntityKind::Lead) => Ok(Reason::SenderLead),
                    Some(_) => Err(Reason::SenderNotInFilter),
                    None if !sender_shown => Err(Reason::SenderNotShown),
                    None => Err(Reason::SenderUnresolved),
                },
                3 => match sender_kind {
                    Some(_) => Ok(Reason::SenderEmailEnabled),
                    None if !sender_shown => Err(Reason::SenderNotShown),
                    None => Err(Reason::SenderUnresolved),
                },
                _ => Err(Reason::FilterNone),
            };
            let (Ok(reason) | Err(reason)) = outcome;
            why!(
                d,
                self,
                "{} {} {} filters \"{}\": {}",
                if is_owner {
                    "the mailbox owner"
                } else {
                    "recipient"
                },
                who.entity,
                who.id,
                filter_label(filter),
                reason.as_str()
            );
            if outcome.is_ok() {
                return Filtered::Accepted {
                    reason,
                    by: Some(who),
                };
            }
            if is_owner {
                owner_reason = reason;
            }
        }
        Filtered::Refused(owner_reason)
    }

    /// Whose filters judge incoming mail: the owner, then each active user or queue a
    /// recipient resolved to, once each.
    fn evaluators(
        &self,
        mailbox: &MailboxEntry,
        parties: &Recipients<'_, '_>,
    ) -> SmallVec<[(Lookup, u8, bool); 4]> {
        let mut evaluators: SmallVec<[(Lookup, u8, bool); 4]> = SmallVec::new();
        let own_filter = self.filter_of(mailbox.owner);
        evaluators.push((self.owner_lookup(mailbox), own_filter, true));
        for p in parties.all() {
            for &row in p.rows.iter() {
                let r = self.dir.record(row);
                let (entity, filter) = match (r.kind, r.internal()) {
                    (EntityKind::Systemuser, Some(u)) if self.dir.user(u).active => (
                        "systemuser",
                        self.user_settings(u).incomingemailfilteringmethod,
                    ),
                    (EntityKind::Queue, Some(q)) if self.dir.queue(q).active => {
                        ("queue", self.dir.queue(q).filter)
                    }
                    _ => continue,
                };
                if !evaluators.iter().any(|(l, _, _)| l.id == r.id) {
                    evaluators.push((lookup(entity, r.id), filter, false));
                }
            }
        }
        evaluators
    }

    /// Outgoing mail: the sender's (the owner's) filter on what the recipients resolved to.
    fn sender_filter(
        &self,
        d: &mut Decision,
        case: &Case<'_>,
        parties: &Recipients<'_, '_>,
        correlation: &mut Correlating<'_>,
    ) -> Filtered {
        let m = case.summary.message;
        let filter = self.filter_of(case.mailbox.owner);
        // Looked up for every filter that can track, whether or not it asks about replies.
        if filter <= 3 {
            correlation.get(self);
        }
        let recipient_kinds = || {
            parties
                .all()
                .flat_map(|p| p.rows.iter())
                .map(|&r| self.dir.record(r).kind)
        };
        let outcome = match filter {
            0 => Ok(Reason::FilterAll),
            1 => correlation
                .get(self)
                .map(|(c, _)| c.method.reason())
                .ok_or(Reason::NotAReply),
            2 => recipient_kinds()
                .find(|k| k.is_customer())
                .map(|k| match k {
                    EntityKind::Contact => Reason::RecipientContact,
                    EntityKind::Account => Reason::RecipientAccount,
                    _ => Reason::RecipientLead,
                })
                .ok_or(Reason::RecipientsNotInFilter),
            3 => recipient_kinds()
                .next()
                .map(|_| Reason::RecipientEmailEnabled)
                .ok_or(Reason::RecipientsNotInFilter),
            _ => Err(Reason::FilterNone),
        };
        let content_unknown = m.to.is_empty() && m.cc.is_empty() && m.bcc.is_empty();
        match outcome {
            Ok(reason) => Filtered::Accepted {
                reason,
                by: d.user.clone(),
            },
            Err(reason) if content_unknown && reason != Reason::FilterNone => {
                why!(
                    d,
                    self,
                    "the exchange did not show the recipients, so the filter cannot be applied yet"
                );
                Filtered::Unseen
            }
            Err(reason) => Filtered::Refused(reason),
        }
    }

    /// Applies the filters' judgement once the parties are spelled out: a track correlates,
    /// auto-creates an incoming sender and is remembered; sent mail says which filter decided.
    fn conclude(
        &self,
        d: &mut Decision,
        case: &Case<'_>,
        direction: Direction,
        filtered: Filtered,
        correlation: &mut Correlating<'_>,
    ) {
        let label = || filter_label(self.filter_of(case.mailbox.owner));
        match filtered {
            Filtered::Unseen => {
                d.verdict = Verdict::Track;
                d.reason = Reason::NeedsEnrichment;
                d.needs_enrichment = true;
                why!(
                    d,
                    self,
                    "delivery fetches the sent message and decides again with its content"
                );
            }
            Filtered::Accepted { reason, by } => {
                d.verdict = Verdict::Track;
                d.reason = reason;
                d.accepted_by = by;
                if direction.is_outgoing() {
                    why!(
                        d,
                        self,
                        "sent mail is auto-tracked; the sender filters \"{}\": {}",
                        label(),
                        reason.as_str()
                    );
                }
                if let Some((c, regarding)) = correlation.get(self).cloned() {
                    self.apply_correlation(d, c, regarding);
                }
                if direction == Direction::Incoming {
                    self.auto_create(d, case.mailbox, case.from);
                }
                self.remember_tracked(case.mailbox, &case.summary, d);
            }
            Filtered::Refused(reason) => {
                d.reason = reason;
                if direction.is_outgoing() {
                    why!(
                        d,
                        self,
                        "sent mail is auto-tracked, but the sender filters \"{}\": {}",
                        label(),
                        reason.as_str()
                    );
                }
            }
        }
    }

    /// Remembers that a complete sighting was evaluated for automatic tracking and not tracked.
    pub(super) fn settle(&self, d: &Decision, mailbox: &MailboxEntry, summary: &View<'_>) {
        let m = summary.message;
        let complete = m.internet_message_id.is_some() && m.from.is_some();
        let final_reason = matches!(
            d.reason,
            Reason::FilterNone
                | Reason::NotAReply
                | Reason::SenderUnresolved
                | Reason::SenderNotInFilter
                | Reason::RecipientsNotInFilter
                | Reason::InternalEmail
                | Reason::ReceivedBeforeCutoff
                | Reason::InitialSyncHistory
                | Reason::SentNotAutoTracked
        );
        if !self.mode.remember || !complete || !final_reason || summary.settled {
            return;
        }
        if let Some(item) = &m.item_id {
            self.remember_item(
                &mailbox.address,
                &normalize_exchange_id(item),
                Summary {
                    message: m.clone(),
                    tracked: None,
                    settled: true,
                },
            );
        }
    }

    fn filter_of(&self, owner: Owner) -> u8 {
        match owner {
            Owner::User(u) => self.user_settings(u).incomingemailfilteringmethod,
            Owner::Queue(q) => self.dir.queue(q).filter,
        }
    }
}

/// The filter's name as the personal options show it.
fn filter_label(filter: u8) -> &'static str {
    match filter {
        0 => "all email messages",
        1 => "email messages in response to Dynamics 365 email",
        2 => "email messages from leads, contacts and accounts",
        3 => "email messages from records that are email enabled",
        _ => "no email messages",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_has_its_personal_options_label() {
        assert_eq!(filter_label(0), "all email messages");
        assert_eq!(
            filter_label(1),
            "email messages in response to Dynamics 365 email"
        );
        assert_eq!(
            filter_label(2),
            "email messages from leads, contacts and accounts"
        );
        assert_eq!(
            filter_label(3),
            "email messages from records that are email enabled"
        );
        // Anything past the known methods tracks nothing, as "no email messages" does.
        assert_eq!(filter_label(4), "no email messages");
        assert_eq!(filter_label(u8::MAX), "no email messages");
    }
}
