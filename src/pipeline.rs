//! The seams between the stages behind the traffic, each a named hand-off owned here rather than
//! a closure in the wiring: inspection's observations go through the rules, and every track
//! decision into the outbox ([`Pipeline`]); delivery's enrichment is answered by the rules
//! engine ([`Enrichment`] for [`Engine`]). The stages themselves stay unaware of each other.

use std::sync::Arc;

use uuid::Uuid;

use crate::catchup::{Marks, Observer};
use crate::delivery::Enrichment;
use crate::inspect::{Message, Observation};
use crate::options::History;
use crate::outbox::Outbox;
use crate::rules::{Decision, Engine, Mode, RecentDecisions, RulesMetrics};

/// inspect → rules → outbox: what happens to each observation.
pub struct Pipeline {
    engine: Arc<Engine>,
    metrics: Arc<RulesMetrics>,
    recent: Arc<RecentDecisions>,
    outbox: Arc<dyn Outbox>,
    marks: Option<Arc<Marks>>,
    /// Each mailbox's recent observations, for the options page's previews.
    history: Option<Arc<History>>,
}

impl Pipeline {
    pub fn new(
        engine: Arc<Engine>,
        metrics: Arc<RulesMetrics>,
        recent: Arc<RecentDecisions>,
        outbox: Arc<dyn Outbox>,
    ) -> Pipeline {
        Pipeline {
            engine,
            metrics,
            recent,
            outbox,
            marks: None,
            history: None,
        }
    }

    /// Marks a mailbox for the catch-up sweep when a decision could not be completed from the
    /// traffic (it needs enrichment): the sweep reads what the client saw of it.
    pub fn with_marks(mut self, marks: Option<Arc<Marks>>) -> Pipeline {
        self.marks = marks;
        self
    }

    /// Keeps each mailbox's recent observations for previews (the options page).
    pub fn with_history(mut self, history: Option<Arc<History>>) -> Pipeline {
        self.history = history;
        self
    }

    /// Decides one observation and hands every track decision to the outbox; returns how many
    /// there were. Runs on the inspection thread; the outbox's `submit` never waits for a
    /// commit, and what it refuses is counted there.
    pub fn observe(&self, observation: &Observation) -> usize {
        if let Some(history) = &self.history
            && History::keeps(observation)
            && let Some(principal) = observation.origin().mailbox.as_deref()
            && let Some(mailbox) = self
                .engine
                .directory()
                .guard()
                .mailbox(principal)
                .map(|m| m.id)
        {
            history.record(mailbox, Arc::new(observation.clone()));
        }
        let mut tracked = 0;
        for decision in self.engine.decide(observation, Mode::APPLY) {
            self.metrics.record(&decision);
            tracing::debug!(
                verdict = ?decision.verdict,
                reason = decision.reason.as_str(),
                "decision"
            );
            if decision.is_track() {
                self.outbox.submit(&decision);
                tracked += 1;
                if let (Some(marks), Some(mailbox)) = (&self.marks, decision.mailbox.as_deref()) {
                    // Not committed yet: a crash before the commit is covered by sweeping
                    // this mailbox first at the next start. (The sweep's own decisions are
                    // committed before it moves on.) Noted as the traffic named it; the sweep
                    // looks the mailbox up when it writes the notes down.
                    if observation.origin().source != crate::inspect::Source::CatchUp {
                        marks.saw(mailbox);
                    }
                    if decision.needs_enrichment
                        && let Some(address) = self.engine.mailbox_address(mailbox)
                    {
                        marks.mark(&address, "enrichment");
                    }
                }
            }
            self.recent.push(decision);
        }
        tracked
    }
}

/// catch-up → rules → outbox: the sweep's observations take the same way as the traffic's, and
/// a page's sync state moves on only once its decisions are committed.
impl Observer for Pipeline {
    fn observe(&self, observation: &Observation) -> usize {
        Pipeline::observe(self, observation)
    }

    fn commit(&self) -> bool {
        self.outbox.flush().is_ok()
    }
}

impl Enrichment for Engine {
    fn redecide(&self, provisional: &Decision, fetched: &Message) -> Decision {
        self.enriched(provisional, fetched)
    }

    fn owner(&self, mailbox: &str) -> Option<Uuid> {
        self.directory().guard().owner_object_id(mailbox)
    }

    fn mailbox_address(&self, principal: &str) -> Option<String> {
        self.directory()
            .guard()
            .mailbox(principal)
            .map(|m| m.address.to_string())
    }
}
