//! The decision procedure: one observation, the directory snapshot and the per-mailbox memory
//! in; decisions out. The order of the checks follows docs/domain.md: who owns the mailbox, whether
//! the message is already tracked, folder rules, the tracking category, then automatic
//! tracking (Inbox: every resolved recipient's filter; Sent Items: the org switch, then the
//! sender's filter), with correlation run after filtering.
//!
//! This module owns one decision's run (`Run`, its `Mode` and `RulesLimits`), the entry points
//! (`observation`, `enriched`) and what every step shares: the mailbox's owner and a fresh
//! decision. The steps live beside it: `triggers` (what in an observation sets a message in
//! motion), `evaluate` (the checks in order), `automatic` (the filters of Inbox and sent mail),
//! `parties` (resolving addresses), `correlation` (threads and the keys that find them) and
//! `autocreate` (the contact or lead for an unresolved sender).

use std::borrow::Cow;
use std::sync::Arc;

use uuid::Uuid;

use super::decision::{Decision, Decisions, Reason, Verdict};
use super::memory::{FolderInfo, Memory, Summary, TrackedRef};
use super::preview::Proposed;
use crate::directory::model::Lookup;
use crate::directory::model::UserSettings;
use crate::directory::snapshot::FolderRule;
use crate::directory::snapshot::{Directory, MailboxEntry, Owner, normalize_exchange_id};
use crate::inspect::{Message, Observation, Origin};

/// Adds a line of reasoning when explaining (the format arguments are not evaluated otherwise).
/// Defined before the step modules so that each of them can use it.
macro_rules! why {
    ($d:expr, $self:expr, $($arg:tt)*) => {
        if $self.mode.explain {
            $d.explanation.push(format!($($arg)*));
        }
    };
}

mod autocreate;
mod automatic;
mod correlation;
mod evaluate;
mod parties;
mod triggers;

use triggers::Trigger;

/// Whether a decision is remembered and explained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// Update the per-mailbox memory (off for a dry-run explain).
    pub remember: bool,
    /// Write the reasoning into the decision.
    pub explain: bool,
}

impl Mode {
    /// The live pipeline: remember, no prose.
    pub const APPLY: Mode = Mode {
        remember: true,
        explain: false,
    };
    /// `POST /explain`: reasoning, nothing remembered.
    pub const EXPLAIN: Mode = Mode {
        remember: false,
        explain: true,
    };
    /// `trackgate replay`: remember (a sequence of exchanges builds on itself) and explain.
    pub const REPLAY: Mode = Mode {
        remember: true,
        explain: true,
    };
}

/// Bounds on one decision's work.
#[derive(Debug, Clone, Copy)]
pub struct RulesLimits {
    /// Recipients considered per message; the rest stay unresolved and unevaluated.
    pub max_parties: usize,
}

impl Default for RulesLimits {
    fn default() -> Self {
        RulesLimits { max_parties: 500 }
    }
}

/// A message and its tracking state, borrowed for one decision.
#[derive(Clone, Copy)]
struct View<'m> {
    message: &'m Arc<Message>,
    tracked: Option<&'m TrackedRef>,
    settled: bool,
}

impl Summary {
    fn view(&self) -> View<'_> {
        View {
            message: &self.message,
            tracked: self.tracked.as_ref(),
            settled: self.settled,
        }
    }
}

pub(super) struct Run<'a> {
    pub dir: &'a Directory,
    pub memory: &'a Memory,
    pub mode: Mode,
    pub limits: RulesLimits,
    /// One user's options as a preview proposes them, read in place of the directory's.
    pub proposed: Option<&'a Proposed>,
    /// Whether this decision has stored its item's summary: a sighting stores what it saw
    /// only when no later step (a track, a settled ignore) stored a fuller one, so a new
    /// message costs the memory one insert, not two.
    pub item_remembered: std::cell::Cell<bool>,
}

fn lookup(entity: &str, id: Uuid) -> Lookup {
    Lookup::new(entity, id)
}

impl<'a> Run<'a> {
    /// A run over a directory snapshot and a memory.
    pub fn new(
        dir: &'a Directory,
        memory: &'a Memory,
        mode: Mode,
        limits: RulesLimits,
        proposed: Option<&'a Proposed>,
    ) -> Run<'a> {
        Run {
            dir,
            memory,
            mode,
            limits,
            proposed,
            item_remembered: std::cell::Cell::new(false),
        }
    }

    /// Stores an item's summary in the memory, and notes that this decision did.
    fn remember_item(&self, mailbox: &str, item_id: &str, summary: Summary) {
        self.item_remembered.set(true);
        self.memory.remember_item(mailbox, item_id, summary);
    }

    /// Decides again with the message delivery fetched from Exchange, for a track that lacked
    /// the content to apply the filter or derive the CRM id: the same trigger and mailbox, the
    /// fetched fields (folder, categories, recipients, Message-ID).
    pub fn enriched(&self, provisional: &Decision, fetched: &Message) -> Decision {
        let origin = Origin {
            mailbox: provisional.mailbox.clone(),
            source: if provisional.operation.starts_with(char::is_lowercase) {
                crate::inspect::model::Source::Graph
            } else {
                crate::inspect::model::Source::Ews
            },
            operation: provisional.operation.clone(),
        };
        let mut d = self.new_decision(provisional.observation.clone(), &origin, Some(fetched));
        let Some(mailbox) = self.mailbox(&origin) else {
            self.unknown_mailbox(&mut d);
            return d;
        };
        let trigger = match provisional.observation.as_ref() {
            "message_sent" => Trigger::Sent,
            "message_moved" | "message_copied" => Trigger::Moved,
            "categories_changed" => Trigger::Categorized,
            _ => Trigger::Seen {
                initial_sync: false,
            },
        };
        // The traffic showed the tracking category being set; Exchange's copy may predate it.
        let mut message = fetched.clone();
        let org = self.dir.org();
        if trigger == Trigger::Categorized
            && provisional.reason == Reason::Category
            && !message
                .categories
                .iter()
                .any(|c| org.is_tracking_category(c))
            && let Some(name) = org.tracking_categories.first()
        {
            message.categories.push(name.clone());
        }
        let message = Arc::new(message);
        let view = View {
            message: &message,
            tracked: None,
            settled: false,
        };
        self.fill_from_summary(&mut d, &view);
        self.evaluate(&mut d, mailbox, &view, trigger);
        // What Exchange returned is complete: no second fetch.
        d.needs_enrichment = false;
        if d.reason == Reason::NeedsEnrichment {
            d.verdict = Verdict::Ignore;
            d.reason = Reason::RecipientsNotInFilter;
        }
        d
    }

    pub fn observation(&self, observation: &Observation) -> Decisions {
        match observation {
            Observation::MessageSeen {
                origin,
                message,
                initial_sync,
            } => smallvec::smallvec![self.message_seen(origin, message, *initial_sync)],
            Observation::MessageSent {
                origin,
                via,
                message,
                draft_item_ids,
                reference_item_id,
                saved_to_folder,
            } => smallvec::smallvec![self.message_sent(
                origin,
                via,
                message,
                draft_item_ids,
                reference_item_id.as_deref(),
                saved_to_folder.as_deref(),
            )],
            Observation::MessageMoved { origin, transfer } => self.transfer(origin, transfer, true),
            Observation::MessageCopied { origin, transfer } => {
                self.transfer(origin, transfer, false)
            }
            Observation::CategoriesChanged {
                origin,
                item_ids,
                mode,
                categories,
            } => self.categories(origin, item_ids, *mode, categories),
            Observation::FolderSeen {
                origin,
                folder_id,
                folder,
                parent_folder_id,
                ..
            } => {
                if let (true, Some(mailbox)) = (self.mode.remember, self.mailbox(origin)) {
                    self.memory.remember_folder(
                        &mailbox.address,
                        &normalize_exchange_id(folder_id),
                        FolderInfo {
                            distinguished: folder.clone(),
                            parent_id: parent_folder_id
                                .as_deref()
                                .map(|p| normalize_exchange_id(p).into_owned()),
                        },
                    );
                }
                Decisions::new()
            }
            // Contacts, appointments and tasks feed the synchronized-field mapping, not email
            // tracking; see README "Known gaps".
            Observation::ContactSeen { .. }
            | Observation::AppointmentSeen { .. }
            | Observation::TaskSeen { .. } => Decisions::new(),
        }
    }

    /// A user's options: the proposed ones for the user a preview is about, else the
    /// directory's.
    fn user_settings(&self, u: u32) -> &UserSettings {
        let user = self.dir.user(u);
        match self.proposed {
            Some(p) if p.user == user.id => &p.settings,
            _ => &user.settings,
        }
    }

    /// A folder's tracking rule (the id normalised): the proposed rules for the mailbox a
    /// preview is about, else the directory's.
    fn rule(&self, mailbox: &MailboxEntry, folder_id: &str) -> Option<FolderRule<'_>> {
        match self.proposed {
            Some(p) if p.mailbox == Some(mailbox.id) => p.rule(folder_id),
            _ => self.dir.rule(mailbox, folder_id),
        }
    }

    fn mailbox(&self, origin: &Origin) -> Option<&'a MailboxEntry> {
        origin.mailbox.as_deref().and_then(|m| self.dir.mailbox(m))
    }

    fn owner_lookup(&self, mailbox: &MailboxEntry) -> Lookup {
        match mailbox.owner {
            Owner::User(u) => lookup("systemuser", self.dir.user(u).id),
            Owner::Queue(q) => lookup("queue", self.dir.queue(q).id),
        }
    }

    /// Who owns records on the mailbox's behalf: the user, or the queue's owner.
    fn record_owner(&self, mailbox: &MailboxEntry) -> Uuid {
        match mailbox.owner {
            Owner::User(u) => self.dir.user(u).id,
            Owner::Queue(q) => {
                let queue = self.dir.queue(q);
                queue.owner.unwrap_or(queue.id)
            }
        }
    }

    fn owner_id(&self, mailbox: &MailboxEntry) -> Uuid {
        match mailbox.owner {
            Owner::User(u) => self.dir.user(u).id,
            Owner::Queue(q) => self.dir.queue(q).id,
        }
    }

    fn new_decision(
        &self,
        kind: impl Into<Cow<'static, str>>,
        origin: &Origin,
        message: Option<&Message>,
    ) -> Decision {
        Decision {
            verdict: Verdict::Ignore,
            reason: Reason::UnknownMailbox,
            observation: kind.into(),
            operation: origin.operation.clone(),
            mailbox: origin.mailbox.clone(),
            user: None,
            item_id: message.and_then(|m| m.item_id.clone()),
            internet_message_id: message.and_then(|m| m.internet_message_id.clone()),
            subject: message.and_then(|m| m.subject.clone()),
            direction: None,
            accepted_by: None,
            from: None,
            to: Vec::new(),
            cc: Vec::new(),
            bcc: Vec::new(),
            regarding: None,
            regarding_source: None,
            correlation: None,
            auto_create: None,
            crm_id: None,
            needs_enrichment: false,
            update_regarding: false,
            explanation: Vec::new(),
        }
    }

    fn unknown_mailbox(&self, d: &mut Decision) {
        d.reason = Reason::UnknownMailbox;
        why!(
            d,
            self,
            "the mailbox {} is not in the directory (no mailbox row, user address, sign-in name or object id matches)",
            d.mailbox
                .as_deref()
                .unwrap_or("(not shown by the exchange)")
        );
    }
}
