//! The sink's circuit breaker: one outage is one backoff, however many workers meet it.
//!
//! Closed, calls go. A failure of the sink (unreachable, 502–504, a deadline passed) counts
//! once per *instant*: a call counts only when it started after the last counted failure, so
//! eight requests that fail together are one failure, not eight. `failures` such failures in a
//! row open the breaker; open, nothing goes until the probe is due; then one probe (a cheap
//! request of the sink's choosing) goes alone: its success closes the breaker, its failure
//! opens it again for longer, up to `probe_interval`. That cap is what makes recovery fast:
//! the sink is tried every few seconds however long the outage, so delivery resumes within
//! one probe interval of the CRM's return.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures (each counted once per instant) that open the breaker.
    pub failures: u32,
    /// The first wait before a probe; it doubles per failed probe up to `probe_interval`.
    pub first_wait: Duration,
    /// The longest wait between probes while the sink is down.
    pub probe_interval: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 3,
            first_wait: Duration::from_millis(500),
            probe_interval: Duration::from_secs(3),
        }
    }
}

/// What the breaker says of a call about to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go; report the result with the ticket.
    Go(Ticket),
    /// The sink is down and this caller is the probe: send the sink's probe, report with the
    /// ticket.
    Probe(Ticket),
    /// Wait (at most this long, or until the breaker changes) and ask again.
    Wait(Duration),
}

/// When a call was admitted, to count its failure once per instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
    probe: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Closed,
    Open { until: Instant },
    Probing,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Bumped by every counted failure and every state change: a call admitted before it
    /// failed in the same instant as the one counted.
    generation: u64,
    /// Counted failures in a row.
    failures: u32,
    /// Times opened in a row (the probe's wait doubles with each).
    opens: u32,
}

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: Mutex<State>,
    changed: Notify,
}

/// A failure that opened the breaker: how many times in a row, and the wait before the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub opens: u32,
    pub wait: Duration,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings: BreakerSettings {
                failures: settings.failures.max(1),
                ..settings
            },
            state: Mutex::new(State {
                phase: Phase::Closed,
                generation: 0,
                failures: 0,
                opens: 0,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn admit(&self, now: Instant) -> Admission {
        let mut s = self.state();
        match s.phase {
            Phase::Closed => Admission::Go(Ticket {
                generation: s.generation,
                probe: false,
            }),
            Phase::Open { until } if now < until => Admission::Wait(until - now),
            Phase::Open { .. } => {
                s.phase = Phase::Probing;
                s.generation += 1;
                Admission::Probe(Ticket {
                    generation: s.generation,
                    probe: true,
                })
            }
            // The probe's answer wakes the waiters; the wait is a guard, not a schedule.
            Phase::Probing => Admission::Wait(self.settings.probe_interval),
        }
    }

    /// Resolves when the breaker changes (a probe answered, a failure counted).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Whether calls go now (closed).
    pub fn is_closed(&self) -> bool {
        self.state().phase == Phase::Closed
    }

    /// The sink answered (any answer that is not an outage: a 4xx is the record's problem).
    pub fn succeeded(&self, ticket: Ticket) {
        let mut s = self.state();
        match s.phase {
            Phase::Closed => s.failures = 0,
            // Only the probe closes an open breaker: a call admitted before the outage that
            // answers late says nothing of the sink now.
            Phase::Probing if ticket.probe && ticket.generation == s.generation => {
                s.phase = Phase::Closed;
                s.failures = 0;
                s.opens = 0;
                s.generation += 1;
                drop(s);
                self.changed.notify_waiters();
            }
            _ => {}
        }
    }

    /// The sink failed this call. `Some` when the failure opened the breaker.
    pub fn failed(&self, ticket: Ticket, now: Instant) -> Option<Opened> {
        let mut s = self.state();
        if ticket.generation != s.generation {
            // Admitted before a failure already counted: the same outage, the same instant.
            return None;
        }
        s.generation += 1;
        s.failures += 1;
        if !ticket.probe && s.failures < self.settings.failures {
            return None;
        }
        s.opens += 1;
        let wait = self.wait(s.opens);
        s.phase = Phase::Open { until: now + wait };
        let opened = Opened {
            opens: s.opens,
            wait,
        };
        drop(s);
        self.changed.notify_waiters();
        Some(opened)
    }

    /// The wait before the probe after `opens` openings in a row: doubling from `first_wait`,
    /// capped at `probe_interval`, with ±20 % jitter so a fleet's probes spread out.
    fn wait(&self, opens: u32) -> Duration {
        jittered_backoff(
            self.settings.first_wait,
            self.settings.probe_interval,
            opens,
        )
    }
}

/// `first` doubled for each `attempt` after the first, capped at `max`, with ±20 % jitter so
/// the retries of a burst (or a fleet's probes) spread out.
pub fn jittered_backoff(first: Duration, max: Duration, attempt: u32) -> Duration {
    let raw = first.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
    let capped = raw.min(max.as_secs_f64());
    let jitter = 0.8 + 0.4 * rand::random::<f64>();
    Duration::from_secs_f64(capped * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32) -> Breaker {
        Breaker::new(BreakerSettings {
            failures,
            first_wait: Duration::from_millis(100),
            probe_interval: Duration::from_secs(1),
        })
    }

    fn ticket(admission: Admission) -> Ticket {
        match admission {
            Admission::Go(t) | Admission::Probe(t) => t,
            Admission::Wait(w) => panic!("told to wait {w:?}"),
        }
    }

    #[test]
    fn failures_of_calls_admitted_together_count_once() {
        let b = breaker(2);
        let now = Instant::now();
        let tickets: Vec<Ticket> = (0..8).map(|_| ticket(b.admit(now))).collect();
        for t in &tickets {
            assert_eq!(b.failed(*t, now), None, "eight at once are one failure");
        }
        assert!(b.is_closed(), "one failure of two needed");
        let next = ticket(b.admit(now));
        let opened = b.failed(next, now).expect("the second instant opens it");
        assert_eq!(opened.opens, 1);
        assert!(matches!(b.admit(now), Admission::Wait(_)));
    }

    #[test]
    fn a_success_between_failures_starts_the_count_again() {
        let b = breaker(2);
        let now = Instant::now();
        let first = ticket(b.admit(now));
        assert_eq!(b.failed(first, now), None);
        let fine = ticket(b.admit(now));
        b.succeeded(fine);
        let again = ticket(b.admit(now));
        assert_eq!(b.failed(again, now), None, "not two in a row");
        assert!(b.is_closed());
    }

    #[test]
    fn open_lets_one_probe_go_after_the_wait_and_its_success_closes() {
        let b = breaker(1);
        let now = Instant::now();
        let opened = b.failed(ticket(b.admit(now)), now).unwrap();
        assert!(
            opened.wait >= Duration::from_millis(80) && opened.wait <= Duration::from_millis(120)
        );
        assert!(matches!(b.admit(now), Admission::Wait(w) if w == opened.wait));
        let later = now + opened.wait;
        let probe = match b.admit(later) {
            Admission::Probe(t) => t,
            other => panic!("expected the probe, got {other:?}"),
        };
        assert!(
            matches!(b.admit(later), Admission::Wait(_)),
            "one probe at a time"
        );
        b.succeeded(probe);
        assert!(b.is_closed());
        assert!(matches!(b.admit(later), Admission::Go(_)));
    }

    #[test]
    fn failed_probes_wait_longer_up_to_the_probe_interval() {
        let b = breaker(1);
        let mut now = Instant::now();
        let mut waits = Vec::new();
        let mut t = ticket(b.admit(now));
        for _ in 0..8 {
            let opened = b.failed(t, now).expect("a failed probe opens again");
            waits.push(opened.wait);
            now += opened.wait;
            t = match b.admit(now) {
                Admission::Probe(t) => t,
                other => panic!("expected a probe, got {other:?}"),
            };
        }
        assert!(waits[1] > waits[0] && waits[2] > waits[1], "{waits:?}");
        assert!(
            waits.iter().all(|w| *w <= Duration::from_millis(1200)),
            "capped at the probe interval (+20 % jitter): {waits:?}"
        );
        assert!(waits[7] >= Duration::from_millis(800), "{waits:?}");
    }

    #[test]
    fn a_late_failure_from_before_the_probe_does_not_reopen() {
        let b = breaker(1);
        let now = Instant::now();
        let stale = ticket(b.admit(now));
        let opened = b.failed(ticket(b.admit(now)), now).unwrap();
        let probe = ticket(b.admit(now + opened.wait));
        b.succeeded(probe);
        assert_eq!(b.failed(stale, now + opened.wait), None);
        assert!(
            b.is_closed(),
            "a call sent before the outage does not reopen it"
        );
    }
}
