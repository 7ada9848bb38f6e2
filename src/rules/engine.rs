//! The decision procedure: one observation, the directory snapshot and the per-mailbox memory
//! in; decisions out. The order of the checks follows domain.md: who owns the mailbox, whether
//! the message is already tracked, folder rules, the tracking category, then automatic
//! tracking (Inbox: every resolved recipient's filter; Sent Items: the org switch, then the
//! sender's filter), with correlation run after filtering.

use std::borrow::Cow;
use std::sync::Arc;

use uuid::Uuid;

use super::decision::{
    AutoCreate, Correlation, CorrelationMethod, Decision, Direction, Party, Reason,
    RegardingSource, Verdict, auto_created_id, email_id, names_for,
};
use super::memory::{FolderInfo, Memory, Summary, TrackedRef};
use crate::common::time::timestamp_seconds;
use crate::directory::model::Lookup;
use crate::directory::snapshot::{
    Directory, EntityKind, MailboxEntry, Owner, TrackedRow, address_hashes, conversation_key,
    lower, normalize_exchange_id, recipient_may_match, subject_hashes, tracking_token,
};
use crate::inspect::{Address, CategoryMode, Message, Observation, Origin, Transfer};

/// More matches than this leave an address unresolved (domain.md §4.1).
const MAX_MATCHES: usize = 100;
/// Folder levels walked to check that a tracked folder lies under the Inbox.
const MAX_FOLDER_DEPTH: usize = 16;

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

/// What set the message in motion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Seen { initial_sync: bool },
    Sent,
    Moved,
    Categorized,
}

/// Where the message is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Inbox,
    SentItems,
    /// Another distinguished folder (junk, deleted items, drafts, …).
    Distinguished(String),
    /// A folder known only by id (normalised), and whether the gateway has seen it.
    Folder(String, bool),
    Unknown,
}

/// A message and its tracking state, borrowed for one decision.
#[derive(Clone, Copy)]
struct View<'m> {
    message: &'m Message,
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

/// A party resolved against the directory.
struct Resolved<'m, 'd> {
    address: Option<Cow<'m, str>>,
    name: Option<&'m str>,
    rows: Rows<'d>,
    /// A contact or lead the gateway created for this sender (not yet in the directory).
    created: Option<Lookup>,
}

impl Resolved<'_, '_> {
    /// The table of what the party resolved to, when it resolved.
    fn kind(&self, dir: &Directory) -> Option<EntityKind> {
        match (self.rows.first(), &self.created) {
            (Some(&r), _) => Some(dir.record(r).kind),
            (None, Some(c)) if c.entity == "lead" => Some(EntityKind::Lead),
            (None, Some(_)) => Some(EntityKind::Contact),
            (None, None) => None,
        }
    }
}

/// The rows a party resolved to, borrowed from the directory when nothing was filtered out.
enum Rows<'a> {
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

pub(super) struct Run<'a> {
    pub dir: &'a Directory,
    pub memory: &'a Memory,
    pub mode: Mode,
    pub limits: RulesLimits,
}

/// Adds a line of reasoning when explaining (the format arguments are not evaluated otherwise).
macro_rules! why {
    ($d:expr, $self:expr, $($arg:tt)*) => {
        if $self.mode.explain {
            $d.explanation.push(format!($($arg)*));
        }
    };
}

fn lookup(entity: &str, id: Uuid) -> Lookup {
    Lookup::new(entity, id)
}

fn merge_message(old: &Message, new: &Message) -> Message {
    fn pick<T: Clone>(new: &Option<T>, old: &Option<T>) -> Option<T> {
        new.clone().or_else(|| old.clone())
    }
    fn pick_vec<T: Clone>(new: &[T], old: &[T]) -> Vec<T> {
        if new.is_empty() {
            old.to_vec()
        } else {
            new.to_vec()
        }
    }
    Message {
        item_id: pick(&new.item_id, &old.item_id),
        // Where the message is comes from one sighting, never half from each.
        folder_id: if new.folder_id.is_some() || new.folder.is_some() {
            new.folder_id.clone()
        } else {
            old.folder_id.clone()
        },
        folder: if new.folder_id.is_some() || new.folder.is_some() {
            new.folder.clone()
        } else {
            old.folder.clone()
        },
        internet_message_id: pick(&new.internet_message_id, &old.internet_message_id),
        conversation_id: pick(&new.conversation_id, &old.conversation_id),
        conversation_index: pick(&new.conversation_index, &old.conversation_index),
        in_reply_to: pick(&new.in_reply_to, &old.in_reply_to),
        references: pick(&new.references, &old.references),
        subject: pick(&new.subject, &old.subject),
        from: pick(&new.from, &old.from),
        sender: pick(&new.sender, &old.sender),
        to: pick_vec(&new.to, &old.to),
        cc: pick_vec(&new.cc, &old.cc),
        bcc: pick_vec(&new.bcc, &old.bcc),
        received_at: pick(&new.received_at, &old.received_at),
        sent_at: pick(&new.sent_at, &old.sent_at),
        categories: pick_vec(&new.categories, &old.categories),
        item_class: pick(&new.item_class, &old.item_class),
        is_draft: pick(&new.is_draft, &old.is_draft),
    }
}

fn is_forward(subject: &str) -> bool {
    let s = subject.trim_start();
    ["fw:", "fwd:", "wg:", "tr:"]
        .iter()
        .any(|p| s.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p)))
}

impl<'a> Run<'a> {
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
        let mut d = self.new_decision(&provisional.observation, &origin, Some(fetched));
        let Some(mailbox) = self.mailbox(&origin) else {
            self.unknown_mailbox(&mut d);
            return d;
        };
        let trigger = match provisional.observation.as_str() {
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

    pub fn observation(&self, observation: &Observation) -> Vec<Decision> {
        match observation {
            Observation::MessageSeen {
                origin,
                message,
                initial_sync,
            } => vec![self.message_seen(origin, message, *initial_sync)],
            Observation::MessageSent {
                origin,
                via,
                message,
                draft_item_ids,
                reference_item_id,
                saved_to_folder,
            } => vec![self.message_sent(
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
                Vec::new()
            }
            // Contacts, appointments and tasks feed the synchronized-field mapping, not email
            // tracking; see README "Known gaps".
            Observation::ContactSeen { .. }
            | Observation::AppointmentSeen { .. }
            | Observation::TaskSeen { .. } => Vec::new(),
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

    fn new_decision(&self, kind: &str, origin: &Origin, message: Option<&Message>) -> Decision {
        Decision {
            verdict: Verdict::Ignore,
            reason: Reason::UnknownMailbox,
            observation: kind.to_owned(),
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

    fn message_seen(&self, origin: &Origin, message: &Message, initial_sync: bool) -> Decision {
        let mut d = self.new_decision("message_seen", origin, Some(message));
        let Some(mailbox) = self.mailbox(origin) else {
            self.unknown_mailbox(&mut d);
            return d;
        };
        let merged = self.remember_seen(mailbox, message);
        let view = match &merged {
            Some(s) => s.view(),
            None => View {
                message,
                tracked: None,
                settled: false,
            },
        };
        self.fill_from_summary(&mut d, &view);
        self.evaluate(&mut d, mailbox, &view, Trigger::Seen { initial_sync });
        d
    }

    /// Merges a sighting into the memory; returns the merged summary when the memory knew
    /// more than this sighting shows.
    fn remember_seen(&self, mailbox: &MailboxEntry, message: &Message) -> Option<Summary> {
        let item_id = message.item_id.as_deref().map(normalize_exchange_id);
        let old = item_id
            .as_deref()
            .and_then(|id| self.memory.item(&mailbox.address, id));
        let merged = old.as_ref().map(|o| Summary {
            message: merge_message(&o.message, message),
            tracked: o.tracked.clone(),
            settled: o.settled,
        });
        if self.mode.remember {
            if let (Some(id), Some(name)) = (&message.folder_id, &message.folder) {
                self.memory.remember_folder(
                    &mailbox.address,
                    &normalize_exchange_id(id),
                    FolderInfo {
                        distinguished: Some(name.clone()),
                        parent_id: None,
                    },
                );
            }
            if let Some(id) = &item_id {
                match (&merged, &old) {
                    (Some(m), Some(o)) if **o == *m => {}
                    (Some(m), _) => self.memory.remember_item(&mailbox.address, id, m.clone()),
                    (None, _) => self.memory.remember_item(
                        &mailbox.address,
                        id,
                        Summary {
                            message: message.clone(),
                            tracked: None,
                            settled: false,
                        },
                    ),
                }
            }
        }
        merged
    }

    fn fill_from_summary(&self, d: &mut Decision, summary: &View<'_>) {
        let m = &summary.message;
        if d.internet_message_id.is_none() {
            d.internet_message_id = m.internet_message_id.clone();
        }
        if d.subject.is_none() {
            d.subject = m.subject.clone();
        }
    }

    fn message_sent(
        &self,
        origin: &Origin,
        via: &str,
        message: &Message,
        drafts: &[String],
        reference: Option<&str>,
        saved_to: Option<&str>,
    ) -> Decision {
        let mut d = self.new_decision("message_sent", origin, Some(message));
        let Some(mailbox) = self.mailbox(origin) else {
            self.unknown_mailbox(&mut d);
            return d;
        };
        why!(d, self, "sent with {via}");
        // A draft sent by id: its content is what earlier exchanges showed.
        let Some(saved_to) = saved_to else {
            d.user = Some(self.owner_lookup(mailbox));
            d.reason = Reason::NotSavedToSentItems;
            why!(
                d,
                self,
                "no copy is saved to Sent Items, which is where server-side sync finds sent mail"
            );
            return d;
        };
        let mut summary = Summary {
            message: message.clone(),
            tracked: None,
            settled: false,
        };
        let mut draft_known = drafts.is_empty();
        for draft in drafts {
            if let Some(known) = self
                .memory
                .item(&mailbox.address, &normalize_exchange_id(draft))
            {
                summary.message = merge_message(&known.message, &summary.message);
                summary.tracked = summary.tracked.or_else(|| known.tracked.clone());
                draft_known = true;
            }
        }
        if !draft_known {
            why!(
                d,
                self,
                "the draft was never seen through the gateway: delivery fetches it"
            );
        }
        if summary.message.item_id.is_none() {
            summary.message.item_id = drafts.first().cloned();
        }
        d.item_id = summary.message.item_id.clone();
        summary.message.is_draft = Some(false);
        // A reply or forward of an item: correlate with it.
        if let Some(reference) = reference
            && let Some(original) = self
                .memory
                .item(&mailbox.address, &normalize_exchange_id(reference))
        {
            if summary.message.in_reply_to.is_none() {
                summary.message.in_reply_to = original.message.internet_message_id.clone();
            }
            if summary.message.conversation_id.is_none() {
                summary.message.conversation_id = original.message.conversation_id.clone();
            }
        }
        self.fill_from_summary(&mut d, &summary.view());
        // Saved somewhere other than Sent Items: decided as mail in that folder.
        let trigger = if saved_to.eq_ignore_ascii_case("sentitems") {
            Trigger::Sent
        } else {
            summary.message.folder = None;
            summary.message.folder_id = Some(saved_to.to_owned());
            Trigger::Seen {
                initial_sync: false,
            }
        };
        self.evaluate(&mut d, mailbox, &summary.view(), trigger);
        if !draft_known && d.is_track() {
            d.needs_enrichment = true;
        }
        // A provisional track waits for delivery's second look: not remembered as tracked.
        if d.is_track() && d.reason != Reason::NeedsEnrichment && self.mode.remember {
            for draft in drafts {
                let mut s = summary.clone();
                s.tracked = Some(TrackedRef {
                    crm_id: d.crm_id,
                    regarding: d.regarding.clone(),
                });
                self.memory
                    .remember_item(&mailbox.address, &normalize_exchange_id(draft), s);
            }
        }
        d
    }

    fn transfer(&self, origin: &Origin, transfer: &Transfer, moved: bool) -> Vec<Decision> {
        let kind = if moved {
            "message_moved"
        } else {
            "message_copied"
        };
        let Some(mailbox) = self.mailbox(origin) else {
            return transfer
                .item_ids
                .iter()
                .map(|id| {
                    let mut d = self.new_decision(kind, origin, None);
                    d.item_id = Some(id.clone());
                    self.unknown_mailbox(&mut d);
                    d
                })
                .collect();
        };
        let destination_id = transfer
            .destination_folder_id
            .as_deref()
            .map(|id| normalize_exchange_id(id).into_owned())
            .or_else(|| {
                transfer
                    .destination_folder
                    .as_deref()
                    .and_then(|name| self.memory.folder_id_of(&mailbox.address, name))
            });
        let mut out = Vec::with_capacity(transfer.item_ids.len());
        for (i, old_id) in transfer.item_ids.iter().enumerate() {
            let mut d = self.new_decision(kind, origin, None);
            let old_key = normalize_exchange_id(old_id);
            let known = self.memory.item(&mailbox.address, &old_key);
            let new_id = transfer.new_item_ids.get(i).cloned().flatten();
            let mut summary = known.as_deref().cloned().unwrap_or_default();
            // A copy without a new id must not overwrite what is known of the original.
            summary.message.item_id = match &new_id {
                Some(id) => Some(id.clone()),
                None if moved => Some(old_id.clone()),
                None => None,
            };
            summary.message.folder_id = destination_id.clone();
            summary.message.folder = transfer.destination_folder.clone();
            d.item_id = Some(new_id.clone().unwrap_or_else(|| old_id.clone()));
            self.fill_from_summary(&mut d, &summary.view());
            if known.is_none() {
                why!(d, self, "the item was never seen through the gateway");
            }
            self.evaluate(&mut d, mailbox, &summary.view(), Trigger::Moved);
            if known.is_none() && d.is_track() {
                d.needs_enrichment = true;
            }
            if self.mode.remember {
                if d.is_track() {
                    summary.tracked = Some(TrackedRef {
                        crm_id: d.crm_id,
                        regarding: d.regarding.clone(),
                    });
                }
                // Moved back into the Inbox and not processed: it stays unprocessed.
                summary.settled |= d.reason == Reason::MovedIntoInbox;
                if moved {
                    self.memory.forget_item(&mailbox.address, &old_key);
                }
                if moved || new_id.is_some() {
                    let key = new_id.as_deref().unwrap_or(old_id);
                    self.memory.remember_item(
                        &mailbox.address,
                        &normalize_exchange_id(key),
                        summary,
                    );
                }
            }
            out.push(d);
        }
        out
    }

    fn categories(
        &self,
        origin: &Origin,
        item_ids: &[String],
        mode: CategoryMode,
        categories: &[String],
    ) -> Vec<Decision> {
        let org = self.dir.org();
        let mut out = Vec::with_capacity(item_ids.len());
        let mailbox = self.mailbox(origin);
        for id in item_ids {
            let mut d = self.new_decision("categories_changed", origin, None);
            d.item_id = Some(id.clone());
            let Some(mailbox) = mailbox else {
                self.unknown_mailbox(&mut d);
                out.push(d);
                continue;
            };
            let key = normalize_exchange_id(id);
            let known = self.memory.item(&mailbox.address, &key);
            let mut summary = known.as_deref().cloned().unwrap_or_default();
            summary.message.item_id = Some(id.clone());
            let before = summary.message.categories.clone();
            let after: Vec<String> = match mode {
                CategoryMode::Set => categories.to_vec(),
                CategoryMode::Append => {
                    let mut all = before.clone();
                    for c in categories {
                        if !all.iter().any(|b| b.eq_ignore_ascii_case(c)) {
                            all.push(c.clone());
                        }
                    }
                    all
                }
                CategoryMode::Delete => before
                    .iter()
                    .filter(|b| !categories.iter().any(|c| c.eq_ignore_ascii_case(b)))
                    .cloned()
                    .collect(),
            };
            let had = before.iter().any(|c| org.is_tracking_category(c));
            let removed = mode == CategoryMode::Delete
                && categories.iter().any(|c| org.is_tracking_category(c));
            let has = after.iter().any(|c| org.is_tracking_category(c));
            summary.message.categories = after;
            self.fill_from_summary(&mut d, &summary.view());
            if has {
                self.evaluate(&mut d, mailbox, &summary.view(), Trigger::Categorized);
                if known.is_none() && d.is_track() {
                    d.needs_enrichment = true;
                    why!(
                        d,
                        self,
                        "the item was never seen through the gateway: delivery fetches it"
                    );
                }
            } else if had || removed {
                d.reason = Reason::CategoryRemoved;
                d.user = Some(self.owner_lookup(mailbox));
                why!(
                    d,
                    self,
                    "the tracking category was removed: untracking leaves the CRM email as it is"
                );
            } else {
                d.reason = Reason::NoTrackingCategory;
                d.user = Some(self.owner_lookup(mailbox));
                why!(
                    d,
                    self,
                    "the categories do not include the tracking category"
                );
            }
            if self.mode.remember {
                if d.is_track() {
                    summary.tracked = Some(TrackedRef {
                        crm_id: d.crm_id,
                        regarding: d.regarding.clone(),
                    });
                }
                self.memory.remember_item(&mailbox.address, &key, summary);
            }
            out.push(d);
        }
        out
    }

    fn place(&self, mailbox: &MailboxEntry, message: &Message) -> Place {
        let distinguished = |name: &str| match name.to_ascii_lowercase().as_str() {
            "inbox" => Place::Inbox,
            "sentitems" => Place::SentItems,
            other => Place::Distinguished(other.to_owned()),
        };
        if let Some(name) = &message.folder {
            return distinguished(name);
        }
        let Some(id) = &message.folder_id else {
            return Place::Unknown;
        };
        let id = normalize_exchange_id(id);
        if self.dir.rule(mailbox, &id).is_some() {
            return Place::Folder(id.into_owned(), true);
        }
        match self.memory.folder(&mailbox.address, &id) {
            Some(f) => match &f.distinguished {
                Some(name) => distinguished(name),
                None => Place::Folder(id.into_owned(), true),
            },
            None => Place::Folder(id.into_owned(), false),
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

    /// The core: decides one message in one mailbox.
    fn evaluate(
        &self,
        d: &mut Decision,
        mailbox: &MailboxEntry,
        summary: &View<'_>,
        trigger: Trigger,
    ) {
        let org = self.dir.org();
        let m = &summary.message;
        d.user = Some(self.owner_lookup(mailbox));
        if let Owner::User(u) = mailbox.owner
            && !self.dir.user(u).active
        {
            d.reason = Reason::OwnerDisabled;
            why!(d, self, "the mailbox owner is a disabled user");
            return;
        }
        if trigger != Trigger::Sent && mailbox.delivery_method == 0 {
            d.reason = Reason::DeliveryDisabled;
            why!(
                d,
                self,
                "the mailbox's incoming email delivery method is None: nothing in it is processed"
            );
            return;
        }
        if trigger != Trigger::Sent && m.is_draft == Some(true) {
            d.reason = Reason::Draft;
            why!(d, self, "the message is a draft");
            return;
        }
        if let Some(class) = &m.item_class
            && !class
                .get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case("IPM.Note"))
        {
            d.reason = Reason::NotAnEmail;
            why!(d, self, "item class {class} is not an email");
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
        let outgoing = match place {
            Place::SentItems => true,
            Place::Inbox => false,
            // Elsewhere, mail the owner sent: by the mailbox address or any row of the owner's
            // with that address (not only the row the sender resolved to).
            _ => from.address.as_deref().is_some_and(|a| {
                *a == *mailbox.address
                    || self
                        .dir
                        .rows_with_address(a)
                        .iter()
                        .any(|&r| self.dir.record(r).id == owner_id)
            }),
        };
        let direction = if outgoing {
            Direction::Outgoing
        } else {
            Direction::Incoming
        };
        d.direction = Some(direction);
        let message_id = m.internet_message_id.as_deref();
        d.crm_id = message_id.map(|id| email_id(org.id, id, direction));
        d.needs_enrichment = message_id.is_none();

        // Already tracked: by this item, by Message-ID through the gateway, or in the CRM.
        if let Some(t) = summary.tracked {
            // Tracked before its Message-ID was seen: now other sightings can know it too.
            if message_id.is_some() {
                self.remember_keys(m, direction, &Arc::new(t.clone()));
            }
            d.crm_id = t.crm_id.or(d.crm_id);
            return self.already_tracked(
                d,
                mailbox,
                &place,
                t.regarding.as_ref(),
                true,
                "this item was tracked earlier",
            );
        }
        if let Some(id) = message_id {
            let prefix = if outgoing { "d:out:" } else { "d:in:" };
            if let Some(t) = self.memory.tracked_by(prefix, id) {
                d.crm_id = t.crm_id.or(d.crm_id);
                return self.already_tracked(
                    d,
                    mailbox,
                    &place,
                    t.regarding.as_ref(),
                    false,
                    "this Message-ID was tracked through the gateway",
                );
            }
            if let Some(row) = self.dir.tracked().by_message_id(id, Some(outgoing)) {
                d.crm_id = Some(row.activityid);
                return self.already_tracked(
                    d,
                    mailbox,
                    &place,
                    row.regarding.as_ref(),
                    false,
                    "an email with this Message-ID and direction is already in the CRM",
                );
            }
        }

        // Folder tracking rules: regardless of the filter.
        if let Place::Folder(folder_id, _) = &place
            && let Some(rule) = self.dir.rule(mailbox, folder_id)
        {
            if !org.folder_tracking {
                why!(
                    d,
                    self,
                    "the folder has a tracking rule but folder-level tracking is off for the organisation"
                );
            } else if self.under_inbox(mailbox, folder_id) == Some(false) {
                d.reason = Reason::FolderOutsideInbox;
                why!(
                    d,
                    self,
                    "the tracked folder was moved outside the Inbox, which disables its rule"
                );
                return;
            } else {
                d.reason = Reason::FolderRule;
                d.verdict = Verdict::Track;
                why!(
                    d,
                    self,
                    "the message is in tracked folder {} (rule by folder id)",
                    rule.name.unwrap_or(folder_id)
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
                return self.finish_track(d, mailbox, summary, &from, owner_id);
            }
        }

        // The tracking category: regardless of the filter.
        if m.categories.iter().any(|c| org.is_tracking_category(c)) {
            if org.settings.track_categorized_items {
                d.reason = Reason::Category;
                d.verdict = Verdict::Track;
                why!(d, self, "the message carries the tracking category");
                return self.finish_track(d, mailbox, summary, &from, owner_id);
            }
            why!(
                d,
                self,
                "the message carries the tracking category but TrackCategorizedItems is off"
            );
            if trigger == Trigger::Categorized {
                d.reason = Reason::CategoryTrackingOff;
                return;
            }
        }

        match (&place, trigger) {
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
            (Place::Inbox | Place::SentItems, Trigger::Seen { .. }) if summary.settled => {
                d.reason = Reason::AlreadyDecided;
                why!(
                    d,
                    self,
                    "this message was evaluated before and not tracked; server-side sync evaluates each message once"
                );
            }
            (Place::Inbox, Trigger::Seen { initial_sync }) => {
                self.automatic_incoming(d, mailbox, summary, &from, owner_id, initial_sync);
                self.settle(d, mailbox, summary);
            }
            (Place::SentItems, Trigger::Seen { initial_sync }) => {
                self.automatic_sent(d, mailbox, summary, &from, owner_id, initial_sync);
                self.settle(d, mailbox, summary);
            }
            (_, Trigger::Sent) => {
                self.automatic_sent(d, mailbox, summary, &from, owner_id, false);
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

    /// `own_item`: this mailbox's own item was tracked. Only then may a folder rule re-link
    /// it; when two users file the same mail under different records, the first wins.
    fn already_tracked(
        &self,
        d: &mut Decision,
        mailbox: &MailboxEntry,
        place: &Place,
        regarding: Option<&Lookup>,
        own_item: bool,
        because: &str,
    ) {
        // A move into a folder whose rule links another record re-links it (domain.md §2.3).
        if own_item
            && let Place::Folder(folder_id, _) = place
            && let Some(rule) = self.dir.rule(mailbox, folder_id)
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

    /// Automatic tracking of mail directly in the Inbox.
    fn automatic_incoming(
        &self,
        d: &mut Decision,
        mailbox: &MailboxEntry,
        summary: &View<'_>,
        from: &Resolved<'_, '_>,
        owner_id: Uuid,
        initial_sync: bool,
    ) {
        let org = self.dir.org();
        let m = &summary.message;
        let received = m.received_at.as_deref().or(m.sent_at.as_deref());
        if self.is_history(d, mailbox, received, initial_sync) {
            return;
        }
        let parties = self.resolve_recipients(d, mailbox, owner_id, m);
        let sender_row = from.rows.first().map(|&r| self.dir.record(r));
        let sender_kind = from.kind(self.dir);
        let mut correlation: Option<Option<(Correlation, Option<Lookup>)>> = None;
        let mut correlate =
            |run: &Self| correlation.get_or_insert_with(|| run.correlate(m)).clone();

        // Mail between users and queues, when the org does not track it as two activities.
        if org.ignore_internal_email
            && let Some(sender) = sender_row
            && (sender.kind == EntityKind::Systemuser
                || (sender.kind == EntityKind::Queue
                    && org.settings.ignore_internal_email_from_queues))
            && !(matches!(mailbox.owner, Owner::Queue(_))
                && org.settings.do_not_ignore_internal_email_to_queues)
            && correlate(self).is_none()
        {
            d.reason = Reason::InternalEmail;
            why!(
                d,
                self,
                "internal mail (the sender is a user) and the organisation does not track mail between users"
            );
            self.set_parties(d, from, &parties);
            return;
        }

        // Every resolved recipient user or queue's filter counts, the mailbox owner's first.
        let mut evaluators: Vec<(Lookup, u8, bool)> = Vec::new();
        let own_filter = self.filter_of(mailbox.owner);
        evaluators.push((self.owner_lookup(mailbox), own_filter, true));
        for p in parties.iter().flat_map(|(_, list)| list.iter()) {
            for &row in p.rows.iter() {
                let r = self.dir.record(row);
                let (entity, filter) = match (r.kind, r.internal()) {
                    (EntityKind::Systemuser, Some(u)) if self.dir.user(u).active => (
                        "systemuser",
                        self.dir.user(u).settings.incomingemailfilteringmethod,
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
        let mut owner_reason = Reason::FilterNone;
        for (who, filter, is_owner) in &evaluators {
            if !is_owner
                && *filter == 1
                && org
                    .settings
                    .use_filtering_method_of_syncing_mailbox_only_for_correlation
            {
                continue;
            }
            let outcome = match filter {
                0 => Ok(Reason::FilterAll),
                1 => match correlate(self) {
                    Some((c, _)) => Ok(c.method.reason()),
                    None => Err(Reason::NotAReply),
                },
                2 => match sender_kind {
                    Some(EntityKind::Contact) => Ok(Reason::SenderContact),
                    Some(EntityKind::Account) => Ok(Reason::SenderAccount),
                    Some(EntityKind::Lead) => Ok(Reason::SenderLead),
                    Some(_) => Err(Reason::SenderNotInFilter),
                    None if from.address.is_none() => Err(Reason::SenderNotShown),
                    None => Err(Reason::SenderUnresolved),
                },
                3 => match sender_kind {
                    Some(_) => Ok(Reason::SenderEmailEnabled),
                    None if from.address.is_none() => Err(Reason::SenderNotShown),
                    None => Err(Reason::SenderUnresolved),
                },
                _ => Err(Reason::FilterNone),
            };
            let (Ok(reason) | Err(reason)) = outcome;
            why!(
                d,
                self,
                "{} {} {} filters \"{}\": {}",
                if *is_owner {
                    "the mailbox owner"
                } else {
                    "recipient"
                },
                who.entity,
                who.id,
                filter_label(*filter),
                reason.as_str()
            );
            if outcome.is_ok() {
                d.verdict = Verdict::Track;
                d.reason = reason;
                d.accepted_by = Some(who.clone());
                break;
            }
            if *is_owner {
                owner_reason = reason;
            }
        }
        self.set_parties(d, from, &parties);
        if d.verdict == Verdict::Track {
            if let Some((c, regarding)) = correlate(self) {
                self.apply_correlation(d, c, regarding);
            }
            self.auto_create(d, mailbox, from);
            self.remember_tracked(mailbox, summary, d);
        } else {
            d.reason = owner_reason;
        }
    }

    /// Automatic tracking of sent mail (Sent Items, or a send seen in the traffic).
    fn automatic_sent(
        &self,
        d: &mut Decision,
        mailbox: &MailboxEntry,
        summary: &View<'_>,
        from: &Resolved<'_, '_>,
        owner_id: Uuid,
        initial_sync: bool,
    ) {
        let org = self.dir.org();
        let m = &summary.message;
        if !org.settings.auto_track_sent_folder_items {
            d.reason = Reason::SentNotAutoTracked;
            why!(
                d,
                self,
                "sent mail is tracked automatically only when AutoTrackSentFolderItems is on"
            );
            return;
        }
        let sent = m.sent_at.as_deref().or(m.received_at.as_deref());
        if self.is_history(d, mailbox, sent, initial_sync) {
            return;
        }
        let parties = self.resolve_recipients(d, mailbox, owner_id, m);
        let filter = self.filter_of(mailbox.owner);
        let label = filter_label(filter);
        let recipient_kinds = || {
            parties
                .iter()
                .flat_map(|(_, list)| list.iter())
                .flat_map(|p| p.rows.iter())
                .map(|&r| self.dir.record(r).kind)
        };
        let correlation = if filter <= 3 { self.correlate(m) } else { None };
        let outcome = match filter {
            0 => Ok(Reason::FilterAll),
            1 => correlation
                .as_ref()
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
        let outcome = match outcome {
            Err(reason) if content_unknown && reason != Reason::FilterNone => {
                why!(
                    d,
                    self,
                    "the exchange did not show the recipients, so the filter cannot be applied yet"
                );
                Ok(Reason::NeedsEnrichment)
            }
            other => other,
        };
        // The verdict first: parties are spelled out only for what is tracked (or explained).
        d.verdict = if outcome.is_ok() {
            Verdict::Track
        } else {
            Verdict::Ignore
        };
        self.set_parties(d, from, &parties);
        match outcome {
            Ok(Reason::NeedsEnrichment) => {
                d.verdict = Verdict::Track;
                d.reason = Reason::NeedsEnrichment;
                d.needs_enrichment = true;
                why!(
                    d,
                    self,
                    "delivery fetches the sent message and decides again with its content"
                );
            }
            Ok(reason) => {
                d.verdict = Verdict::Track;
                d.reason = reason;
                d.accepted_by = d.user.clone();
                why!(
                    d,
                    self,
                    "sent mail is auto-tracked; the sender filters \"{label}\": {}",
                    reason.as_str()
                );
                if let Some((c, regarding)) = correlation {
                    self.apply_correlation(d, c, regarding);
                }
                self.remember_tracked(mailbox, summary, d);
            }
            Err(reason) => {
                d.reason = reason;
                why!(
                    d,
                    self,
                    "sent mail is auto-tracked, but the sender filters \"{label}\": {}",
                    reason.as_str()
                );
            }
        }
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
        match (mailbox.cutoff, at.and_then(timestamp_seconds)) {
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

    /// Remembers that a complete sighting was evaluated for automatic tracking and not tracked.
    fn settle(&self, d: &Decision, mailbox: &MailboxEntry, summary: &View<'_>) {
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
            self.memory.remember_item(
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
            Owner::User(u) => self.dir.user(u).settings.incomingemailfilteringmethod,
            Owner::Queue(q) => self.dir.queue(q).filter,
        }
    }

    /// A track by folder rule or category: parties, correlation (for regarding), auto-create.
    fn finish_track(
        &self,
        d: &mut Decision,
        mailbox: &MailboxEntry,
        summary: &View<'_>,
        from: &Resolved<'_, '_>,
        owner_id: Uuid,
    ) {
        let parties = self.resolve_recipients(d, mailbox, owner_id, summary.message);
        self.set_parties(d, from, &parties);
        if let Some((c, regarding)) = self.correlate(summary.message) {
            self.apply_correlation(d, c, regarding);
        }
        if d.direction == Some(Direction::Incoming) {
            self.auto_create(d, mailbox, from);
        }
        self.remember_tracked(mailbox, summary, d);
    }

    fn apply_correlation(&self, d: &mut Decision, c: Correlation, regarding: Option<Lookup>) {
        why!(d, self, "correlates with a tracked email by {:?}", c.method);
        if d.regarding.is_none()
            && let Some(r) = regarding
        {
            why!(
                d,
                self,
                "inherits regarding {} {} from the correlated email",
                r.entity,
                r.id
            );
            d.regarding = Some(r);
            d.regarding_source = Some(RegardingSource::Correlation);
        }
        d.correlation = Some(c);
    }

    /// Correlation with an email already tracked (domain.md §3.1), first hit wins.
    fn correlate(&self, m: &Message) -> Option<(Correlation, Option<Lookup>)> {
        let org = self.dir.org();
        let tracked = self.dir.tracked();
        let forward_blocked = org.settings.do_not_correlate_forwarded_emails_as_replies
            && m.subject.as_deref().is_some_and(is_forward);
        let headers = org.correlation
            && !org
                .settings
                .ignore_conversation_index_and_in_reply_to_for_correlation
            && !forward_blocked;
        let hit = |method, activityid: Option<Uuid>, regarding: Option<&Lookup>| {
            Some((Correlation { method, activityid }, regarding.cloned()))
        };
        // Each method looks first at what the gateway tracked moments ago, then at the CRM.
        let either = |method,
                      remembered: Option<Arc<TrackedRef>>,
                      in_crm: &dyn Fn() -> Option<&'a TrackedRow>| {
            match remembered {
                Some(t) => hit(method, t.crm_id, t.regarding.as_ref()),
                None => in_crm()
                    .and_then(|row| hit(method, Some(row.activityid), row.regarding.as_ref())),
            }
        };
        if headers
            && let Some(id) = m.in_reply_to.as_deref()
            && let Some(found) = either(
                CorrelationMethod::InReplyTo,
                self.memory.tracked_by("m:", id),
                &|| tracked.by_message_id(id, None),
            )
        {
            return Some(found);
        }
        if org.tracking_tokens
            && let Some(token) = m
                .subject
                .as_deref()
                .and_then(|s| tracking_token(&org.token_prefixes, s))
            && let Some(found) = either(
                CorrelationMethod::TrackingToken,
                self.memory.tracked_by("t:", &token),
                &|| tracked.by_token(&token),
            )
        {
            return Some(found);
        }
        if headers
            && let Some(index) = m.conversation_index.as_deref()
            && let key = conversation_key(index)
            && let Some(found) = either(
                CorrelationMethod::ConversationIndex,
                self.memory.tracked_by("c:", &hex(&key)),
                &|| tracked.by_conversation_index(&key),
            )
        {
            return Some(found);
        }
        if headers
            && let Some(id) = m.conversation_id.as_deref()
            && let id = normalize_exchange_id(id)
            && let Some(found) = either(
                CorrelationMethod::ConversationId,
                self.memory.tracked_by("i:", &id),
                &|| tracked.by_conversation_id(&id),
            )
        {
            return Some(found);
        }
        if org.smart_matching
            && let Some(subject) = m.subject.as_deref()
        {
            let subject = subject_hashes(org, subject);
            let addresses = address_hashes(
                org,
                m.from
                    .iter()
                    .chain(&m.to)
                    .chain(&m.cc)
                    .chain(&m.bcc)
                    .filter_map(|a| a.address.as_deref()),
            );
            if let Some(row) = tracked.smart_match(org, &subject, &addresses) {
                return hit(
                    CorrelationMethod::SmartMatching,
                    Some(row.activityid),
                    row.regarding.as_ref(),
                );
            }
        }
        None
    }

    /// The address to resolve: X.500 addresses map through the directory.
    fn smtp<'m>(&self, a: &'m Address) -> Option<Cow<'m, str>> {
        let raw = a.address.as_deref()?.trim();
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

    /// Sender resolution (domain.md §4.1): active rows, user → contact → account → lead →
    /// others, a row the mailbox owner owns first, earliest created among equals.
    fn resolve_sender<'m>(
        &self,
        _mailbox: &MailboxEntry,
        owner_id: Uuid,
        a: Option<&'m Address>,
    ) -> Resolved<'m, 'a> {
        let Some(a) = a else {
            return Resolved {
                address: None,
                name: None,
                rows: Rows::Slice(&[]),
                created: None,
            };
        };
        let address = self
            .smtp(a)
            .or_else(|| a.address.as_deref().map(Cow::Borrowed));
        let name = a.name.as_deref();
        let rows = address
            .as_deref()
            .map(|addr| self.dir.rows_with_address(addr))
            .unwrap_or(&[]);
        let org = self.dir.org();
        let chosen = if rows.len() > MAX_MATCHES {
            None
        } else {
            let eligible = |r: &u32| {
                let rec = self.dir.record(*r);
                rec.active
                    || (rec.kind != EntityKind::Systemuser
                        && org.settings.resolve_for_inactive_entities)
            };
            let mut candidates = rows.iter().copied().filter(|r| eligible(r));
            let first = candidates.next();
            let several = candidates.next().is_some();
            let mut candidates = rows.iter().copied().filter(|r| eligible(r));
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
        };
        // Not in the CRM yet, but created for an earlier mail: the same record.
        let created = match (chosen, rows.is_empty(), address.as_deref()) {
            (None, true, Some(a)) => self.memory.created(a),
            _ => None,
        };
        Resolved {
            address,
            name,
            rows: match chosen {
                Some(r) => Rows::One([r]),
                None => Rows::Slice(&[]),
            },
            created,
        }
    }

    /// Recipient resolution (domain.md §4.2), narrowed by the owner's address-book options.
    fn resolve_recipients<'m>(
        &self,
        d: &mut Decision,
        mailbox: &MailboxEntry,
        owner_id: Uuid,
        m: &'m Message,
    ) -> [(u8, Vec<Resolved<'m, 'a>>); 3] {
        let org = self.dir.org();
        let matching = self.dir.matching(mailbox.owner);
        let mut budget = self.limits.max_parties;
        let mut resolve = |list: &'m [Address]| -> Vec<Resolved<'m, 'a>> {
            let take = list.len().min(budget);
            budget -= take;
            list[..take]
                .iter()
                .map(|a| {
                    let address = self
                        .smtp(a)
                        .or_else(|| a.address.as_deref().map(Cow::Borrowed));
                    let rows = address
                        .as_deref()
                        .map(|addr| self.dir.rows_with_address(addr))
                        .unwrap_or(&[]);
                    let keep = |r: &u32| {
                        let rec = self.dir.record(*r);
                        (rec.active
                            || (rec.kind != EntityKind::Systemuser
                                && org.settings.resolve_for_inactive_entities))
                            && recipient_may_match(rec, Some(owner_id), matching)
                    };
                    let mut chosen = if rows.len() > MAX_MATCHES {
                        Rows::Slice(&[])
                    } else if rows.iter().all(keep) {
                        Rows::Slice(rows)
                    } else {
                        Rows::Owned(rows.iter().copied().filter(keep).collect())
                    };
                    if chosen.len() > 1 && org.unresolve_recipients_on_multiple_match {
                        chosen = Rows::Slice(&[]);
                    }
                    Resolved {
                        address,
                        name: a.name.as_deref(),
                        rows: chosen,
                        created: None,
                    }
                })
                .collect()
        };
        let to = resolve(&m.to);
        let cc = resolve(&m.cc);
        let bcc = resolve(&m.bcc);
        if budget == 0 {
            why!(
                d,
                self,
                "more than {} recipients: the rest were not considered",
                self.limits.max_parties
            );
        }
        [(2, to), (3, cc), (4, bcc)]
    }

    fn party(&self, r: &Resolved<'_, '_>) -> Party {
        Party {
            address: r.address.as_deref().map(str::to_owned),
            name: r.name.map(str::to_owned),
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

    fn set_parties(
        &self,
        d: &mut Decision,
        from: &Resolved<'_, '_>,
        parties: &[(u8, Vec<Resolved<'_, '_>>); 3],
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
        d.to = parties[0].1.iter().map(|r| self.party(r)).collect();
        d.cc = parties[1].1.iter().map(|r| self.party(r)).collect();
        d.bcc = parties[2].1.iter().map(|r| self.party(r)).collect();
    }

    /// An unresolved sender of a tracked incoming email becomes a contact or lead, when both the
    /// organisation and the mailbox owner allow it.
    fn auto_create(&self, d: &mut Decision, mailbox: &MailboxEntry, from: &Resolved<'_, '_>) {
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
            let (firstname, lastname) = names_for(from.name, address);
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
        if !self.dir.rows_with_address(address).is_empty() {
            why!(
                d,
                self,
                "the sender's address belongs to CRM rows that do not resolve (inactive, disabled or several): no record is created"
            );
            return;
        }
        let choice = self.dir.user(u).settings.autocreatecontactonpromote;
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
        let (firstname, lastname) = names_for(from.name, address);
        let id = auto_created_id(org.id, entity, address);
        why!(d, self, "the unresolved sender becomes a new {entity} {id}");
        if let Some(p) = d.from.as_mut() {
            p.records = vec![lookup(entity, id)];
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

    /// Records a track decision so later sightings are `already_tracked` and replies correlate.
    fn remember_tracked(&self, mailbox: &MailboxEntry, summary: &View<'_>, d: &Decision) {
        if !self.mode.remember {
            return;
        }
        let m = summary.message;
        let tracked = Arc::new(TrackedRef {
            crm_id: d.crm_id,
            regarding: d.regarding.clone(),
        });
        self.remember_keys(m, d.direction.unwrap_or(Direction::Incoming), &tracked);
        if let Some(item) = &m.item_id {
            let s = Summary {
                message: m.clone(),
                tracked: Some((*tracked).clone()),
                settled: false,
            };
            self.memory
                .remember_item(&mailbox.address, &normalize_exchange_id(item), s);
        }
    }

    /// Records the correlation and duplicate keys of a tracked message.
    fn remember_keys(&self, m: &Message, direction: Direction, tracked: &Arc<TrackedRef>) {
        if !self.mode.remember {
            return;
        }
        let org = self.dir.org();
        if let Some(id) = &m.internet_message_id {
            let dir = if direction.is_outgoing() { "out" } else { "in" };
            self.memory
                .remember_tracked(format!("d:{dir}:{id}"), tracked.clone());
            self.memory
                .remember_tracked(format!("m:{id}"), tracked.clone());
        }
        if let Some(token) = m
            .subject
            .as_deref()
            .and_then(|s| tracking_token(&org.token_prefixes, s))
        {
            self.memory
                .remember_tracked(format!("t:{token}"), tracked.clone());
        }
        if let Some(index) = &m.conversation_index {
            self.memory.remember_tracked(
                format!("c:{}", hex(&conversation_key(index))),
                tracked.clone(),
            );
        }
        if let Some(id) = &m.conversation_id {
            self.memory
                .remember_tracked(format!("i:{}", normalize_exchange_id(id)), tracked.clone());
        }
    }
}

fn filter_label(filter: u8) -> &'static str {
    match filter {
        0 => "all email messages",
        1 => "email messages in response to Dynamics 365 email",
        2 => "email messages from leads, contacts and accounts",
        3 => "email messages from records that are email enabled",
        _ => "no email messages",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
