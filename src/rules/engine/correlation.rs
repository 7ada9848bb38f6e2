//! Correlation (docs/domain.md §3.1): finding the tracked email a message answers — by In-Reply-To,
//! tracking token, conversation index or id, or smart matching — first in what the gateway
//! tracked moments ago, then in the CRM; and the keys a tracked message leaves in the memory so
//! that replies and duplicates find it.

use std::sync::Arc;

use uuid::Uuid;

use super::super::decision::{
    Correlation, CorrelationMethod, Decision, Direction, RegardingSource,
};
use super::super::memory::{Summary, TrackedRef};
use super::{Run, View};
use crate::directory::model::Lookup;
use crate::directory::snapshot::{
    MailboxEntry, TrackedRow, address_hashes, conversation_key, normalize_exchange_id,
    subject_hashes, tracking_token,
};
use crate::inspect::Message;

/// A correlated email and the record it is regarding, if any.
pub(super) type Correlated = (Correlation, Option<Lookup>);

/// Correlation for one message, looked up at most once and only when a step needs it: each
/// lookup refreshes the memory's recency, so when it happens is part of the behaviour.
pub(super) struct Correlating<'m> {
    message: &'m Message,
    found: Option<Option<Correlated>>,
}

impl<'m> Correlating<'m> {
    pub(super) fn new(message: &'m Message) -> Self {
        Correlating {
            message,
            found: None,
        }
    }

    pub(super) fn get(&mut self, run: &Run<'_>) -> Option<&Correlated> {
        let message = self.message;
        self.found
            .get_or_insert_with(|| run.correlate(message))
            .as_ref()
    }
}

impl<'a> Run<'a> {
    pub(super) fn apply_correlation(
        &self,
        d: &mut Decision,
        c: Correlation,
        regarding: Option<Lookup>,
    ) {
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

    /// Correlation with an email already tracked (docs/domain.md §3.1), first hit wins.
    pub(super) fn correlate(&self, m: &Message) -> Option<Correlated> {
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
        self.smart_match(m)
    }

    /// Smart matching: a tracked email with a similar subject among the same addresses.
    fn smart_match(&self, m: &Message) -> Option<Correlated> {
        let org = self.dir.org();
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
            if let Some(row) = self.dir.tracked().smart_match(org, &subject, &addresses) {
                return Some((
                    Correlation {
                        method: CorrelationMethod::SmartMatching,
                        activityid: Some(row.activityid),
                    },
                    row.regarding.clone(),
                ));
            }
        }
        None
    }

    /// Records a track decision so later sightings are `already_tracked` and replies correlate,
    /// with its CRM id (derived here when nothing named one: what is remembered must carry it).
    pub(super) fn remember_tracked(
        &self,
        mailbox: &MailboxEntry,
        summary: &View<'_>,
        d: &mut Decision,
    ) {
        if !self.mode.remember {
            return;
        }
        let m = summary.message;
        self.derive_crm_id(d, m);
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
            self.remember_item(&mailbox.address, &normalize_exchange_id(item), s);
        }
    }

    /// Records the correlation and duplicate keys of a tracked message.
    pub(super) fn remember_keys(
        &self,
        m: &Message,
        direction: Direction,
        tracked: &Arc<TrackedRef>,
    ) {
        if !self.mode.remember {
            return;
        }
        let org = self.dir.org();
        if let Some(id) = &m.internet_message_id {
            let duplicate = if direction.is_outgoing() {
                "d:out:"
            } else {
                "d:in:"
            };
            self.memory.remember_tracked(duplicate, id, tracked.clone());
            self.memory.remember_tracked("m:", id, tracked.clone());
        }
        if let Some(token) = m
            .subject
            .as_deref()
            .and_then(|s| tracking_token(&org.token_prefixes, s))
        {
            self.memory.remember_tracked("t:", &token, tracked.clone());
        }
        if let Some(index) = &m.conversation_index {
            self.memory
                .remember_tracked("c:", &hex(&conversation_key(index)), tracked.clone());
        }
        if let Some(id) = &m.conversation_id {
            self.memory
                .remember_tracked("i:", &normalize_exchange_id(id), tracked.clone());
        }
    }
}

/// Subjects starting like a forward ("FW:", "Fwd:", and the German and French forms).
fn is_forward(subject: &str) -> bool {
    let s = subject.trim_start();
    ["fw:", "fwd:", "wg:", "tr:"]
        .iter()
        .any(|p| s.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_are_told_by_their_prefix_in_any_case() {
        for subject in ["FW: x", "fwd:x", "  Fwd: x", "WG: x", "TR: x"] {
            assert!(is_forward(subject), "{subject}");
        }
        for subject in ["RE: x", "Forward planning", "fw", "", "é: x"] {
            assert!(!is_forward(subject), "{subject}");
        }
    }

    #[test]
    fn thread_keys_are_lower_case_hex() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
    }
}
