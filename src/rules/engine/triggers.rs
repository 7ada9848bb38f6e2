//! What in an observation sets a message in motion: a sighting, a send, a move or copy, a
//! change of categories. Each builds the message as far as the memory knows it, hands it to the
//! evaluation with its trigger, and remembers what the next sighting should know.

use std::borrow::Cow;
use std::sync::Arc;

use super::super::decision::{Decision, Decisions, Reason};
use super::super::memory::{FolderInfo, Summary, TrackedRef};
use super::{Run, View};
use crate::common::shared::SharedStr;
use crate::directory::snapshot::{MailboxEntry, normalize_exchange_id};
use crate::inspect::{CategoryMode, Message, Origin, Transfer};

/// Where a move or copy put its items.
struct Destination {
    /// The folder's id (normalised), shown or learned from its distinguished name.
    id: Option<SharedStr>,
    /// The distinguished folder, when the exchange named it (made once, shared by every item
    /// the transfer moves).
    folder: Option<SharedStr>,
    /// Moved (the original is gone) rather than copied.
    moved: bool,
}

/// What set the message in motion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trigger {
    Seen { initial_sync: bool },
    Sent,
    Moved,
    Categorized,
}

impl Run<'_> {
    pub(super) fn message_seen(
        &self,
        origin: &Origin,
        message: &Arc<Message>,
        initial_sync: bool,
    ) -> Decision {
        let mut d = self.new_decision("message_seen", origin, Some(message));
        let Some(mailbox) = self.mailbox(origin) else {
            self.unknown_mailbox(&mut d);
            return d;
        };
        self.item_remembered.set(false);
        let (merged, pending) = self.remember_seen(mailbox, message);
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
        // What the sighting showed, unless deciding stored a fuller summary (tracked or
        // settled) of the same item: nothing in between reads this item back.
        if let Some((id, summary)) = pending
            && !self.item_remembered.get()
        {
            self.memory.remember_item(&mailbox.address, &id, summary);
        }
        d
    }

    /// Merges a sighting into the memory's view of its item: returns the merged summary when
    /// the memory knew more than this sighting shows, and the summary to store (with its
    /// normalised item id) when the memory should learn something.
    fn remember_seen<'m>(
        &self,
        mailbox: &MailboxEntry,
        message: &'m Arc<Message>,
    ) -> (Option<Summary>, Option<(Cow<'m, str>, Summary)>) {
        let item_id = message.item_id.as_deref().map(normalize_exchange_id);
        let old = item_id
            .as_deref()
            .and_then(|id| self.memory.item(&mailbox.address, id));
        let merged = old.as_ref().map(|o| Summary {
            message: Arc::new(merge_message(&o.message, message)),
            tracked: o.tracked.clone(),
            settled: o.settled,
        });
        if !self.mode.remember {
            return (merged, None);
        }
        if let (Some(id), Some(name)) = (&message.folder_id, &message.folder) {
            self.memory.remember_folder(
                &mailbox.address,
                &normalize_exchange_id(id),
                FolderInfo {
                    distinguished: Some(name.to_string()),
                    parent_id: None,
                },
            );
        }
        let pending = item_id.and_then(|id| match (&merged, &old) {
            (Some(m), Some(o)) if **o == *m => None,
            (Some(m), _) => Some((id, m.clone())),
            (None, _) => Some((
                id,
                Summary {
                    message: Arc::clone(message),
                    tracked: None,
                    settled: false,
                },
            )),
        });
        (merged, pending)
    }

    pub(super) fn fill_from_summary(&self, d: &mut Decision, summary: &View<'_>) {
        let m = &summary.message;
        if d.internet_message_id.is_none() {
            d.internet_message_id = m.internet_message_id.clone();
        }
        if d.subject.is_none() {
            d.subject = m.subject.clone();
        }
    }

    pub(super) fn message_sent(
        &self,
        origin: &Origin,
        via: &str,
        message: &Arc<Message>,
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
        let (mut summary, draft_known) =
            self.sent_content(&mut d, mailbox, message, drafts, reference);
        self.fill_from_summary(&mut d, &summary.view());
        // Saved somewhere other than Sent Items: decided as mail in that folder.
        let trigger = if saved_to.eq_ignore_ascii_case("sentitems") {
            Trigger::Sent
        } else {
            let message = Arc::make_mut(&mut summary.message);
            message.folder = None;
            message.folder_id = Some(saved_to.into());
            Trigger::Seen {
                initial_sync: false,
            }
        };
        self.evaluate(&mut d, mailbox, &summary.view(), trigger);
        if !draft_known && d.is_track() {
            d.needs_enrichment = true;
        }
        // A track is remembered under the summary's item id, which is the draft's when the
        // send names one (every reader names at most one): its later sightings are known.
        d
    }

    /// The sent message as far as the memory knows it: merged with its drafts and linked to the
    /// item it replies to or forwards. The flag says whether a draft was known (or there was
    /// none); otherwise delivery fetches the content.
    fn sent_content(
        &self,
        d: &mut Decision,
        mailbox: &MailboxEntry,
        message: &Arc<Message>,
        drafts: &[String],
        reference: Option<&str>,
    ) -> (Summary, bool) {
        let mut summary = Summary {
            message: Arc::clone(message),
            tracked: None,
            settled: false,
        };
        let mut draft_known = drafts.is_empty();
        for draft in drafts {
            if let Some(known) = self
                .memory
                .item(&mailbox.address, &normalize_exchange_id(draft))
            {
                summary.message = Arc::new(merge_message(&known.message, &summary.message));
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
        let message = Arc::make_mut(&mut summary.message);
        if message.item_id.is_none() {
            message.item_id = drafts.first().map(|id| SharedStr::from(id.as_str()));
        }
        d.item_id = message.item_id.clone();
        message.is_draft = Some(false);
        // A reply or forward of an item: correlate with it.
        if let Some(reference) = reference
            && let Some(original) = self
                .memory
                .item(&mailbox.address, &normalize_exchange_id(reference))
        {
            if message.in_reply_to.is_none() {
                message.in_reply_to = original.message.internet_message_id.clone();
            }
            if message.conversation_id.is_none() {
                message.conversation_id = original.message.conversation_id.clone();
            }
        }
        (summary, draft_known)
    }

    pub(super) fn transfer(&self, origin: &Origin, transfer: &Transfer, moved: bool) -> Decisions {
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
                    d.item_id = Some(SharedStr::from(id.as_str()));
                    self.unknown_mailbox(&mut d);
                    d
                })
                .collect();
        };
        let destination = Destination {
            id: transfer
                .destination_folder_id
                .as_deref()
                .map(|id| SharedStr::from(normalize_exchange_id(id).as_ref()))
                .or_else(|| {
                    transfer
                        .destination_folder
                        .as_deref()
                        .and_then(|name| self.memory.folder_id_of(&mailbox.address, name))
                        .map(SharedStr::from)
                }),
            folder: transfer.destination_folder.as_deref().map(SharedStr::from),
            moved,
        };
        let mut out = Decisions::with_capacity(transfer.item_ids.len());
        for (i, old_id) in transfer.item_ids.iter().enumerate() {
            let mut d = self.new_decision(kind, origin, None);
            let new_id = transfer.new_item_ids.get(i).cloned().flatten();
            self.transferred_item(&mut d, mailbox, &destination, old_id, new_id);
            out.push(d);
        }
        out
    }

    /// One item of a move or copy: decided in its destination, remembered under its new id.
    fn transferred_item(
        &self,
        d: &mut Decision,
        mailbox: &MailboxEntry,
        destination: &Destination,
        old_id: &str,
        new_id: Option<String>,
    ) {
        let moved = destination.moved;
        let old_key = normalize_exchange_id(old_id);
        let known = self.memory.item(&mailbox.address, &old_key);
        let mut summary = known.as_deref().cloned().unwrap_or_default();
        // A copy without a new id must not overwrite what is known of the original.
        let message = Arc::make_mut(&mut summary.message);
        message.item_id = match &new_id {
            Some(id) => Some(SharedStr::from(id.as_str())),
            None if moved => Some(SharedStr::from(old_id)),
            None => None,
        };
        message.folder_id = destination.id.clone();
        message.folder.clone_from(&destination.folder);
        d.item_id = message
            .item_id
            .clone()
            .or_else(|| Some(SharedStr::from(old_id)));
        self.fill_from_summary(d, &summary.view());
        if known.is_none() {
            why!(d, self, "the item was never seen through the gateway");
        }
        self.evaluate(d, mailbox, &summary.view(), Trigger::Moved);
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
                self.remember_item(&mailbox.address, &normalize_exchange_id(key), summary);
            }
        }
    }

    pub(super) fn categories(
        &self,
        origin: &Origin,
        item_ids: &[String],
        mode: CategoryMode,
        categories: &[String],
    ) -> Decisions {
        let mailbox = self.mailbox(origin);
        let mut out = Decisions::with_capacity(item_ids.len());
        for id in item_ids {
            let mut d = self.new_decision("categories_changed", origin, None);
            d.item_id = Some(SharedStr::from(id.as_str()));
            match mailbox {
                Some(mailbox) => self.recategorize(&mut d, mailbox, id, mode, categories),
                None => self.unknown_mailbox(&mut d),
            }
            out.push(d);
        }
        out
    }

    /// One item's categories changed: tracked when the tracking category is on it now.
    fn recategorize(
        &self,
        d: &mut Decision,
        mailbox: &MailboxEntry,
        id: &str,
        mode: CategoryMode,
        categories: &[String],
    ) {
        let org = self.dir.org();
        let key = normalize_exchange_id(id);
        let known = self.memory.item(&mailbox.address, &key);
        let mut summary = known.as_deref().cloned().unwrap_or_default();
        let message = Arc::make_mut(&mut summary.message);
        // The decision already holds the id (shared, not copied again).
        message.item_id = d.item_id.clone();
        let before = std::mem::take(&mut message.categories);
        let after = categories_after(&before, mode, categories);
        let had = before.iter().any(|c| org.is_tracking_category(c));
        let removed =
            mode == CategoryMode::Delete && categories.iter().any(|c| org.is_tracking_category(c));
        let has = after.iter().any(|c| org.is_tracking_category(c));
        message.categories = after;
        self.fill_from_summary(d, &summary.view());
        if has {
            self.evaluate(d, mailbox, &summary.view(), Trigger::Categorized);
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
            self.remember_item(&mailbox.address, &key, summary);
        }
    }
}

/// An item's categories after a change: replaced, appended to (without case-insensitive
/// duplicates) or deleted from (case-insensitively).
fn categories_after(before: &[String], mode: CategoryMode, categories: &[String]) -> Vec<String> {
    match mode {
        CategoryMode::Set => categories.to_vec(),
        CategoryMode::Append => {
            let mut all = before.to_vec();
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
    }
}

/// A sighting over what the memory knew: each field from the newer sighting when it shows it.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn categories_are_set_appended_and_deleted_ignoring_case() {
        let before = names(&["Red", "Tracked to Dynamics 365"]);
        assert_eq!(
            categories_after(&before, CategoryMode::Set, &names(&["Blue"])),
            names(&["Blue"])
        );
        assert_eq!(
            categories_after(&before, CategoryMode::Append, &names(&["red", "Blue"])),
            names(&["Red", "Tracked to Dynamics 365", "Blue"])
        );
        assert_eq!(
            categories_after(
                &before,
                CategoryMode::Delete,
                &names(&["tracked to dynamics 365"])
            ),
            names(&["Red"])
        );
    }

    #[test]
    fn a_merge_prefers_the_newer_sighting_and_keeps_the_folder_whole() {
        let old = Message {
            subject: Some("old".into()),
            internet_message_id: Some("<m@x>".into()),
            folder_id: Some("F1".into()),
            folder: Some("inbox".into()),
            categories: names(&["Red"]),
            ..Message::default()
        };
        let new = Message {
            subject: Some("new".into()),
            folder_id: Some("F2".into()),
            ..Message::default()
        };
        let merged = merge_message(&old, &new);
        assert_eq!(merged.subject.as_deref(), Some("new"));
        assert_eq!(merged.internet_message_id.as_deref(), Some("<m@x>"));
        // The new sighting names the folder by id only: the old folder name must not stick.
        assert_eq!(merged.folder_id.as_deref(), Some("F2"));
        assert_eq!(merged.folder, None);
        assert_eq!(merged.categories, names(&["Red"]));

        let unplaced = Message::default();
        let merged = merge_message(&old, &unplaced);
        assert_eq!(merged.folder_id.as_deref(), Some("F1"));
        assert_eq!(merged.folder.as_deref(), Some("inbox"));
    }
}
