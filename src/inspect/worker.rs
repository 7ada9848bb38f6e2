//! The inspection worker: a plain thread (inspection is synchronous CPU work and must not sit on
//! the proxy's async workers) that takes captures off the queue, inspects them, records metrics,
//! gives the capture's bytes back to the memory budget and hands observations on.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use super::{InspectLimits, Observation, inspect};
use crate::proxy::capture::{Budget, Capture};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

/// Most distinct EWS response codes reported as labels; the rest count as `other`.
const MAX_CODES: usize = 64;

#[derive(Debug)]
pub struct InspectMetrics {
    observations: Family<KindLabels, Counter>,
    errors: Family<KindLabels, Counter>,
    ews_failures: Family<CodeLabels, Counter>,
    codes_seen: Mutex<HashSet<String>>,
    pub inspected: Counter,
    /// Inspection worker threads running.
    pub workers: Gauge,
    /// Captures fully handled, the next stage included (for draining at shutdown).
    pub finished: std::sync::atomic::AtomicU64,
}

impl InspectMetrics {
    pub fn register(registry: &mut Registry) -> InspectMetrics {
        let m = InspectMetrics {
            observations: Family::default(),
            errors: Family::default(),
            ews_failures: Family::default(),
            codes_seen: Mutex::new(HashSet::new()),
            inspected: Counter::default(),
            workers: Gauge::default(),
            finished: std::sync::atomic::AtomicU64::new(0),
        };
        registry.register(
            "observations",
            "Observations made, by kind",
            m.observations.clone(),
        );
        registry.register(
            "inspect_errors",
            "Exchanges that could not be inspected, by kind",
            m.errors.clone(),
        );
        registry.register(
            "ews_failures",
            "EWS faults and failed items (no observations), by response code",
            m.ews_failures.clone(),
        );
        registry.register(
            "inspected_exchanges",
            "Exchanges inspected",
            m.inspected.clone(),
        );
        registry.register(
            "inspect_workers",
            "Inspection worker threads, each with its own queue",
            m.workers.clone(),
        );
        m
    }

    pub fn observations(&self, kind: &'static str) -> u64 {
        self.observations.get_or_create(&KindLabels { kind }).get()
    }

    pub fn errors(&self, kind: &'static str) -> u64 {
        self.errors.get_or_create(&KindLabels { kind }).get()
    }

    fn failure(&self, code: &str) {
        // Codes come from the upstream's body: keep labels bounded and tame.
        let clean = code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric());
        let label = match self.codes_seen.lock() {
            Ok(mut seen) if clean && (seen.contains(code) || seen.len() < MAX_CODES) => {
                seen.insert(code.to_owned());
                code.to_owned()
            }
            _ => "other".to_owned(),
        };
        self.ews_failures
            .get_or_create(&CodeLabels { code: label })
            .inc();
    }
}

/// The most recent observations, for tests and code embedding the gateway.
pub type RecentObservations = crate::common::recent::Recent<Observation>;

/// How long the worker naps when the queue runs dry before it waits on it: decisions come at
/// most this much later, and a busy gateway's workers rarely have to wake this thread. Each
/// run of captures pays for coming back to cold caches on a core the proxy shares, so longer
/// runs cost less per capture: 2 ms against 500 µs took 16 % off inspecting and deciding per
/// request at a quarter of nginx's maximum rate, and nothing at half (`bench/RESULTS.md`).
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// Runs until the queue's senders are gone. Each observation is kept in `recent` and handed to
/// `next` (the composition root connects the rules there).
pub fn spawn(
    mut queue: mpsc::Receiver<Capture>,
    budget: Arc<Budget>,
    limits: InspectLimits,
    metrics: Arc<InspectMetrics>,
    recent: Arc<RecentObservations>,
    mut next: impl FnMut(&Observation) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("trackgate-inspect".into())
        .spawn(move || {
            crate::common::run_behind_traffic("trackgate-inspect");
            let mut napped = false;
            loop {
                let capture = match queue.try_recv() {
                    Ok(capture) => capture,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) if !napped => {
                        // Busy: nap instead of waiting on the queue, so the proxy's workers
                        // hand captures over without waking this thread for each (a wake-up
                        // costs them a system call and both a context switch); captures
                        // gather and are taken in a run. Only a nap that finds nothing leads
                        // to a real wait, so an idle gateway does not poll.
                        napped = true;
                        std::thread::sleep(LINGER);
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => match queue.blocking_recv() {
                        Some(capture) => capture,
                        None => break,
                    },
                };
                napped = false;
                let weight = capture.weight();
                // A parser bug must cost one exchange, not the worker.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inspect(&capture, limits)));
                budget.release(weight);
                metrics.inspected.inc();
                match result {
                    Ok(Ok(inspected)) => {
                        for code in &inspected.failures {
                            metrics.failure(code);
                        }
                        for o in inspected.observations {
                            metrics.observations.get_or_create(&KindLabels { kind: o.kind() }).inc();
                            tracing::debug!(kind = o.kind(), operation = %o.origin().operation, "observation");
                            // The next stage's bugs must not stop inspection either.
                            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| next(&o))).is_err() {
                                metrics.errors.get_or_create(&KindLabels { kind: "next_stage_panic" }).inc();
                                tracing::error!(kind = o.kind(), "the rules panicked on an observation; skipped");
                            }
                            recent.push(o);
                        }
                    }
                    Ok(Err(error)) => {
                        metrics.errors.get_or_create(&KindLabels { kind: error.kind() }).inc();
                        tracing::debug!(%error, route = capture.route.as_str(), "exchange not inspected");
                    }
                    Err(_) => {
                        metrics.errors.get_or_create(&KindLabels { kind: "panic" }).inc();
                        tracing::error!(route = capture.route.as_str(), "inspection panicked; exchange skipped");
                    }
                }
                metrics.finished.fetch_add(1, std::sync::atomic::Ordering::Release);
            }
        })
}
