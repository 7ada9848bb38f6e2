//! Rules: the pure step from an observation to decisions, over a directory snapshot and the
//! per-mailbox memory — the "Set Personal Options" behaviour of Dynamics 365 (filters, folder
//! rules, the tracking category, correlation, party resolution, auto-create), each decision
//! with a reason code and, on request, its reasoning. No I/O, no async.

pub mod decision;
mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod memory;
mod preview;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub use decision::{Decision, Decisions, Direction, Reason, Verdict};
pub use engine::{Mode, RulesLimits};
pub use memory::{Memory, MemoryLimits};
pub use preview::{Exclusions, InvalidExclusion, Proposed, ProposedRule};

use crate::directory::DirectoryHandle;
use crate::inspect::Observation;

/// The rules engine: shared by the pipeline, `POST /explain` and `replay`.
#[derive(Debug, Clone)]
pub struct Engine {
    directory: DirectoryHandle,
    memory: Arc<Memory>,
    limits: RulesLimits,
}

impl Engine {
    pub fn new(directory: DirectoryHandle, memory: MemoryLimits, limits: RulesLimits) -> Engine {
        Engine {
            directory,
            memory: Arc::new(Memory::new(memory)),
            limits,
        }
    }

    /// Decides a provisional track again with the message delivery fetched (see
    /// `needs_enrichment`). Nothing is remembered: a retry of the same record must decide the
    /// same way, not find its own earlier attempt `already_tracked`.
    pub fn enriched(&self, provisional: &Decision, fetched: &crate::inspect::Message) -> Decision {
        let dir = self.directory.guard();
        let mode = Mode {
            remember: false,
            explain: false,
        };
        engine::Run::new(&dir, &self.memory, mode, self.limits, None).enriched(provisional, fetched)
    }

    /// Decides one observation. Observations that only feed the memory (folders) or that the
    /// rules do not track (contacts, appointments, tasks) yield no decisions.
    pub fn decide(&self, observation: &Observation, mode: Mode) -> Decisions {
        let dir = self.directory.guard();
        let mut decisions =
            engine::Run::new(&dir, &self.memory, mode, self.limits, None).observation(observation);
        for d in &mut decisions {
            // Only what will be delivered needs fetching.
            d.needs_enrichment &= d.is_track();
        }
        decisions
    }

    /// An engine over the same directory with an empty memory of its own: a sequence of
    /// observations (`POST /explain` with an array, `trackgate replay`) builds on itself there
    /// without touching what the running gateway remembers.
    pub fn scratch(&self) -> Engine {
        Engine::new(self.directory.clone(), MemoryLimits::default(), self.limits)
    }

    pub fn directory(&self) -> &DirectoryHandle {
        &self.directory
    }

    pub fn memory(&self) -> &Memory {
        &self.memory
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    verdict: &'static str,
    reason: &'static str,
}

/// Decisions by verdict and reason (both bounded sets).
#[derive(Debug)]
pub struct RulesMetrics {
    decisions: Family<DecisionLabels, Counter>,
}

impl RulesMetrics {
    pub fn register(registry: &mut Registry) -> RulesMetrics {
        let m = RulesMetrics {
            decisions: Family::default(),
        };
        registry.register(
            "decisions",
            "Rules decisions, by verdict and reason code",
            m.decisions.clone(),
        );
        m
    }

    pub fn record(&self, d: &Decision) {
        self.decisions
            .get_or_create(&DecisionLabels {
                verdict: match d.verdict {
                    Verdict::Track => "track",
                    Verdict::Ignore => "ignore",
                },
                reason: d.reason.as_str(),
            })
            .inc();
    }

    pub fn count(&self, verdict: Verdict, reason: Reason) -> u64 {
        self.decisions
            .get_or_create(&DecisionLabels {
                verdict: match verdict {
                    Verdict::Track => "track",
                    Verdict::Ignore => "ignore",
                },
                reason: reason.as_str(),
            })
            .get()
    }
}

/// The most recent decisions of the live pipeline (`GET /decisions`).
pub type RecentDecisions = crate::common::recent::Recent<Decision>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_counted_by_verdict_and_reason() {
        let mut registry = Registry::default();
        let metrics = RulesMetrics::register(&mut registry);
        let decision = |verdict: &str| -> Decision {
            serde_json::from_value(serde_json::json!({
                "verdict": verdict, "reason": "filter_all", "observation": "message_seen",
                "operation": "GetItem",
            }))
            .unwrap()
        };
        metrics.record(&decision("track"));
        metrics.record(&decision("track"));
        metrics.record(&decision("ignore"));
        assert_eq!(metrics.count(Verdict::Track, Reason::FilterAll), 2);
        assert_eq!(metrics.count(Verdict::Ignore, Reason::FilterAll), 1);
        assert_eq!(metrics.count(Verdict::Track, Reason::Category), 0);
    }
}
