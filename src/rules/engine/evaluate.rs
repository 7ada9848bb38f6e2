//! The evaluation of one message in one mailbox, as steps in docs/domain.md's order: screening
//! (owner, delivery, draft, item class), where the message is and which way it went, whether it
//! is already tracked, folder rules, the tracking category, then what its place and trigger
//! leave (automatic tracking or a reason not to track). Each step either decides or hands on.

use std::borrow::Cow;
use std::ops::ControlFlow;
use std::sync::Arc;

use uuid::Uuid;

use super::super::decision::{Decision, Direction, Reason, RegardingSource, Verdict, email_id};
use super::parties::Resolved;
use super::triggers::Trigger;
use super::{Run, View};
use crate::directory::model::Lookup;
use crate::directory::snapshot::{MailboxEntry, Owner, normalize_exchange_id};
use crate::inspect::Message;

/// Folder levels walked to check that a tracked folder lies under the Inbox.
const MAX_FOLDER_DEPTH: usize = 16;

/// `Break`: the step decided; `Continue`: the next step looks.
type Step = ControlFlow<()>;

/// Where the message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Place<'m> {
    Inbox,
    SentItems,
    /// Another distinguished folder (junk, deleted items, drafts, …).
    Distinguished(String),
    /// A folder known only by id (normalised, borrowed from the message when it needed no
    /// change), and whether the gateway has seen it.
    Folder(Cow<'m, str>, bool),
    Unknown,
}

/// One message in one mailbox with its sender resolved: what the steps after screening share.
pub(super) struct Case<'c> {
    pub mailbox: &'c MailboxEntry,
    pub summary: View<'c>,
    pub from: &'c Resolved<'c, 'c>,
    /// The mailbox owner's id (the user or the queue).
    pub owner_id: Uuid,
}

impl Run<'_> {
    /// The core: decides one message in one mailbox.
    pub(super) fn evaluate(
        &self,
        d: &mut Decision,
        mailbox: &MailboxEntry,
        summary: &View<'_>,
        trigger: Trigger,
    ) {
        let m = summary.message;
        d.user = Some(self.owner_lookup(mailbox));
        if self.screen(d, mailbox, m, trigger).is_break() {
            return;
        }
        let place = if trigger == Trigger::Sent {
            Place::SentItems
        } else {
            self.place(mailbox, m)
        };
        let owner_id = self.owner_id(mailbox);
        let from = self.resolve_sender(
            mailbox,
            self.record_owner(mailbox),
            m.from.as_ref().or(m.sender.as_ref()),
        );
        let case = Case {
            mailbox,
            summary: *summary,
            from: &from,
            owner_id,
        };
        let direction = self.direction(&case, &place);
        d.direction = Some(direction);
        d.needs_enrichment = m.internet_message_id.is_none();
        self.steps(d, &case, &place, direction, trigger);
        if d.is_track() || self.mode.explain {
            self.derive_crm_id(d, m);
        }
    }

    /// The steps after screening, in order, until one decides.
    fn steps(
        &self,
        d: &mut Decision,
        case: &Case<'_>,
        place: &Place<'_>,
        direction: Direction,
        trigger: Trigger,
    ) {
        if self.known_tracked(d, case, place, direction).is_break()
            || self.excluded(d, case).is_break()
            || self.folder_rule(d, case, place).is_break()
            || self.tracking_category(d, case, trigger).is_break()
        {
            return;
        }
        self.by_place(d, case, place, trigger);
    }

    /// The CRM id of a message once it is tracked (or explained), unless the CRM or the memory
    /// already named one. Derived no earlier: it is a SHA-1, and most sightings are ignored.
    pub(super) fn derive_crm_id(&self, d: &mut Decision, m: &Message) {
        if d.crm_id.is_none()
            && let (Some(id), Some(direction)) = (m.internet_message_id.as_deref(), d.direction)
        {
            d.crm_id = Some(email_id(self.dir.org().id, id, direction));
        }
    }

    /// What is never looked at further: mail of a disabled owner or of a mailbox without
    /// delivery, drafts, and items that are not emails.
    fn screen(
        &self,
        d: &mut Decision,
        mailbox: &MailboxEntry,
        m: &Message,
        trigger: Trigger,
    ) -> Step {
        if let Owner::User(u) = mailbox.owner
            && !self.dir.user(u).active
        {
            d.reason = Reason::OwnerDisabled;
            why!(d, self, "the mailbox owner is a disabled user");
            return ControlFlow::Break(());
        }
        if trigger != Trigger::Sent && mailbox.delivery_method == 0 {
            d.reason = Reason::DeliveryDisabled;
            why!(
                d,
                self,
                "the mailbox's incoming email delivery method is None: nothing in it is processed"
            );
            return ControlFlow::Break(());
        }
        if trigger != Trigger::Sent && m.is_draft == Some(true) {
            d.reason = Reason::Draft;
            why!(d, self, "the message is a draft");
            return ControlFlow::Break(());
        }
        if let Some(class) = &m.item_class
            && !class
                .get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case("IPM.Note"))
        {
            d.reason = Reason::NotAnEmail;
            why!(d, self, "item class {class} is not an email");
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// Sent Items holds outgoing mail, the Inbox incoming; elsewhere, mail the owner sent: by
    /// the mailbox address or any row of the owner's with that address (not only the row the
    /// sender resolved to).
    fn direction(&self, case: &Case<'_>, place: &Place<'_>) -> Direction {
        let outgoing = match place {
            Place::SentItems => true,
            Place::Inbox => false,
            _ => case.from.address.as_deref().is_some_and(|a| {
                *a == *case.mailbox.address
                    || case
                        .from
                        .all_rows
                        .iter()
                        .any(|&r| self.dir.record(r).id == case.owner_id)
            }),
        };
        if outgoing {
            Direction::Outgoing
        } else {
            Direction::Incoming
        }
    }

    /// Already tracked: by this item, by Message-ID through the gateway, or in the CRM.
    fn known_tracked(
        &self,
        d: &mut Decision,
        case: &Case<'_>,
        place: &Place<'_>,
        direction: Direction,
    ) -> Step {
        let m = case.summary.message;
        let message_id = m.internet_message_id.as_deref();
        if let Some(t) = case.summary.tracked {
            d.crm_id = t.crm_id;
            self.already_tracked(
                d,
                case.mailbox,
                place,
                t.regarding.as_ref(),
                true,
                "this item was tracked earlier",
            );
            // Tracked before its Message-ID was seen: now other sightings can know it too; and
            // a re-link by a folder rule is what replies to it inherit from now on.
            if message_id.is_some() {
                let mut t = t.clone();
                if d.update_regarding {
                    t.regarding = d.regarding.clone();
                }
                self.remember_keys(m, direction, &Arc::new(t));
            }
            return ControlFlow::Break(());
        }
        if let Some(id) = message_id {
            let outgoing = direction.is_outgoing();
            let prefix = if outgoing { "d:out:" } else { "d:in:" };
            if let Some(t) = self.memory.tracked_by(prefix, id) {
                d.crm_id = t.crm_id;
                self.already_tracked(
                    d,
                    case.mailbox,
                    place,
                    t.regarding.as_ref(),
                    false,
                    "this Message-ID was tracked through the gateway",
                );
                return ControlFlow::Break(());
            }
            if let Some(row) = self.dir.tracked().by_message_id(id, Some(outgoing)) {
                d.crm_id = Some(row.activityid);
                self.already_tracked(
                    d,
                    case.mailbox,
                    place,
                    row.regarding.as_ref(),
                    false,
                    "an email with this Message-ID and direction is already in the CRM",
                );
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    /// `own_item`: this mailbox's own item was tracked. Only then may a folder rule re-link
    /// it; when two users file the same mail under different records, the first wins.
    fn already_tracked(
        &self,
        d: &mut Decision,
        mailbox: &MailboxEntry,
        place: &Place<'_>,
        regarding: Option<&Lookup>,
        own_item: bool,
        because: &str,
    ) {
        // A move into a folder whose rule links another record re-links it (docs/domain.md §2.3).
        if own_item
            && let Place::Folder(folder_id, _) = place
            && let Some(rule) = self.rule(mailbox, folder_id)
            && let Some(target) = &rule.regarding
            && self.dir.org().folder_tracking
            && self.under_inbox(mailbox, folder_id) != Some(false)
            && regarding != Some(target)
        {
            d.verdict = Verdict::Track;
            d.reason = Reason::FolderRule;
            d.update_regarding = true;
            d.regarding = Some(target.clone());
            d.regarding_source = Some(RegardingSource::FolderRule);
            why!(
                d,
                self,
                "{because}; the folder rule links it to {} {}: regarding is updated",
                target.entity,
                target.id
            );
            return;
        }
        d.reason = Reason::AlreadyTracked;
        d.regarding = regarding.cloned();
        why!(d, self, "{because}");
    }

    /// The owner's exclusions: a message with any party the owner never wants tracked is not
    /// tracked by a folder rule or automatically. The tracking category still tracks it: the
    /// owner set it on that message by hand.
    fn excluded(&self, d: &mut Decision, case: &Case<'_>) -> Step {
        let Owner::User(u) = case.mailbox.owner else {
            return ControlFlow::Continue(());
        };
        let exclusions = &self.user_settings(u).trackingexclusions;
        if exclusions.is_empty() {
            return ControlFlow::Continue(());
        }
        let m = case.summary.message;
        let org = self.dir.org();
        if m.categories.iter().any(|c| org.is_tracking_category(c)) {
            return ControlFlow::Continue(());
        }
        let own = &*case.mailbox.address;
        let hit = [&m.from, &m.sender]
            .into_iter()
            .flatten()
            .chain(m.to.iter().chain(&m.cc).chain(&m.bcc))
            .filter_map(|a| a.address.as_deref())
            .map(|a| self.dir.smtp_for_x500(a).unwrap_or(a))
            .filter(|a| !a.eq_ignore_ascii_case(own))
            .find_map(|a| crate::rules::Exclusions::first_match(exclusions, a));
        let Some(entry) = hit else {
            return ControlFlow::Continue(());
        };
        d.reason = Reason::ExcludedByUser;
        why!(
            d,
            self,
            "a party matches the mailbox owner's exclusion {entry}: never tracked automatically or by folder"
        );
        ControlFlow::Break(())
    }

    /// Folder tracking rules: regardless of the filter.
    fn folder_rule(&self, d: &mut Decision, case: &Case<'_>, place: &Place<'_>) -> Step {
        let org = self.dir.org();
        let Place::Folder(folder_id, _) = place else {
            return ControlFlow::Continue(());
        };
        let Some(rule) = self.rule(case.mailbox, folder_id) else {
            return ControlFlow::Continue(());
        };
        if !org.folder_tracking {
            why!(
                d,
                self,
                "the folder has a tracking rule but folder-level tracking is off for the organisation"
            );
            return ControlFlow::Continue(());
        }
        if self.under_inbox(case.mailbox, folder_id) == Some(false) {
            d.reason = Reason::FolderOutsideInbox;
            why!(
                d,
                self,
                "the tracked folder was moved outside the Inbox, which disables its rule"
            );
            return ControlFlow::Break(());
        }
        d.reason = Reason::FolderRule;
        d.verdict = Verdict::Track;
        why!(
            d,
            self,
            "the message is in tracked folder {} (rule by folder id)",
            rule.name().unwrap_or(folder_id)
        );
        if let Some(r) = &rule.regarding {
            d.regarding = Some(r.clone());
            d.regarding_source = Some(RegardingSource::FolderRule);
            why!(
                d,
                self,
                "set regarding {} {} from the folder rule",
                r.entity,
                r.id
            );
        }
        self.finish_track(d, case);
        ControlFlow::Break(())
    }

    /// The tracking category: regardless of the filter.
    fn tracking_category(&self, d: &mut Decision, case: &Case<'_>, trigger: Trigger) -> Step {
        let org = self.dir.org();
        let m = case.summary.message;
        if !m.categories.iter().any(|c| org.is_tracking_category(c)) {
            return ControlFlow::Continue(());
        }
        if org.settings.track_categorized_items {
            d.reason = Reason::Category;
            d.verdict = Verdict::Track;
            why!(d, self, "the message carries the tracking category");
            self.finish_track(d, case);
            return ControlFlow::Break(());
        }
        why!(
            d,
            self,
            "the message carries the tracking category but TrackCategorizedItems is off"
        );
        if trigger == Trigger::Categorized {
            d.reason = Reason::CategoryTrackingOff;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// A track by folder rule or category: parties, correlation (for regarding), auto-create.
    fn finish_track(&self, d: &mut Decision, case: &Case<'_>) {
        let m = case.summary.message;
        let parties = self.resolve_recipients(d, case.mailbox, case.owner_id, m);
        self.set_parties(d, case.from, &parties);
        if let Some((c, regarding)) = self.correlate(m) {
            self.apply_correlation(d, c, regarding);
        }
        if d.direction == Some(Direction::Incoming) {
            self.auto_create(d, case.mailbox, case.from);
        }
        self.remember_tracked(case.mailbox, &case.summary, d);
    }

    /// What the place and the trigger leave: automatic tracking in the Inbox and Sent Items,
    /// otherwise the reason nothing tracks it.
    fn by_place(&self, d: &mut Decision, case: &Case<'_>, place: &Place<'_>, trigger: Trigger) {
        match (place, trigger) {
            (_, Trigger::Categorized) => {
                d.reason = Reason::CategoryTrackingOff;
            }
            (Place::Inbox, Trigger::Moved) => {
                d.reason = Reason::MovedIntoInbox;
                why!(
                    d,
                    self,
                    "moving mail back into the Inbox does not get it processed (server-side sync keeps a high-water mark)"
                );
            }
            (Place::Inbox | Place::SentItems, Trigger::Seen { .. }) if case.summary.settled => {
                d.reason = Reason::AlreadyDecided;
                why!(
                    d,
                    self,
                    "this message was evaluated before and not tracked; server-side sync evaluates each message once"
                );
            }
            (Place::Inbox, Trigger::Seen { initial_sync }) => {
                self.automatic(d, case, Direction::Incoming, initial_sync);
                self.settle(d, case.mailbox, &case.summary);
            }
            (Place::SentItems, Trigger::Seen { initial_sync }) => {
                self.automatic(d, case, Direction::Outgoing, initial_sync);
                self.settle(d, case.mailbox, &case.summary);
            }
            (_, Trigger::Sent) => {
                self.automatic(d, case, Direction::Outgoing, false);
            }
            (Place::Unknown | Place::Folder(_, false), _) if trigger != Trigger::Moved => {
                d.reason = Reason::FolderUnknown;
                why!(
                    d,
                    self,
                    "the exchange did not show the folder and the gateway has not learned it yet"
                );
            }
            (_, Trigger::Moved) => {
                d.reason = Reason::NotTrackedFolder;
                why!(d, self, "the destination folder has no tracking rule");
            }
            (Place::Folder(..) | Place::Unknown, _) => {
                d.reason = Reason::NotInInbox;
                why!(
                    d,
                    self,
                    "only mail directly in the Inbox is tracked automatically; this folder has no tracking rule"
                );
            }
            (Place::Distinguished(name), _) => {
                d.reason = Reason::NotInInbox;
                why!(
                    d,
                    self,
                    "the message is in {name}, not directly in the Inbox"
                );
            }
        }
    }

    fn place<'m>(&self, mailbox: &MailboxEntry, message: &'m Message) -> Place<'m> {
        // Compared in place: the common names must not cost a lower-cased copy each time.
        let distinguished = |name: &str| {
            if name.eq_ignore_ascii_case("inbox") {
                Place::Inbox
            } else if name.eq_ignore_ascii_case("sentitems") {
                Place::SentItems
            } else {
                Place::Distinguished(name.to_ascii_lowercase())
            }
        };
        if let Some(name) = &message.folder {
            return distinguished(name);
        }
        let Some(id) = &message.folder_id else {
            return Place::Unknown;
        };
        let id = normalize_exchange_id(id);
        if self.rule(mailbox, &id).is_some() {
            return Place::Folder(id, true);
        }
        match self.memory.folder(&mailbox.address, &id) {
            Some(f) => match &f.distinguished {
                Some(name) => distinguished(name),
                None => Place::Folder(id, true),
            },
            None => Place::Folder(id, false),
        }
    }

    /// Whether a folder lies under the Inbox: `Some(false)` only when the memory knows its
    /// ancestry reaches another root; unknown ancestry is taken as under the Inbox (Dynamics
    /// checks that when the rule is created).
    fn under_inbox(&self, mailbox: &MailboxEntry, folder_id: &str) -> Option<bool> {
        let mut current = folder_id.to_owned();
        for _ in 0..MAX_FOLDER_DEPTH {
            let info = self.memory.folder(&mailbox.address, &current)?;
            let parent = info.parent_id.clone()?;
            if let Some(p) = self.memory.folder(&mailbox.address, &parent)
                && let Some(name) = &p.distinguished
            {
                return Some(name.eq_ignore_ascii_case("inbox"));
            }
            current = parent;
        }
        None
    }
}
