//! Pacing a CRM's service protection, request by request. A 429 pauses every request of the
//! sink until its `Retry-After`, not only the worker that met it: the next step of a delivery
//! already under way waits too. The requests in flight adapt (AIMD): halved on a 429 — once
//! per instant, however many requests of that instant were throttled — and one more after a
//! limit's worth of answers, within the cap Dataverse documents (52 concurrent requests per
//! user).

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Dataverse's service protection limit on concurrent requests per user.
pub const MAX_CONCURRENT_REQUESTS: usize = 52;

#[derive(Debug)]
struct State {
    /// Requests allowed in flight (fractional: additive increase is 1/limit per answer).
    limit: f64,
    in_flight: usize,
    paused_until: Option<Instant>,
    /// Bumped by each decrease: a 429 to a request sent before it is of the same instant.
    generation: u64,
}

#[derive(Debug)]
pub struct Pace {
    max: usize,
    state: Mutex<State>,
    changed: Notify,
}

/// One request's place in flight; given back when dropped.
#[derive(Debug)]
pub struct Slot<'a> {
    pace: &'a Pace,
    generation: u64,
}

impl Pace {
    /// Starts at `max` requests in flight (capped at [`MAX_CONCURRENT_REQUESTS`]).
    pub fn new(max: usize) -> Pace {
        let max = max.clamp(1, MAX_CONCURRENT_REQUESTS);
        Pace {
            max,
            state: Mutex::new(State {
                limit: max as f64,
                in_flight: 0,
                paused_until: None,
                generation: 0,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        (self.state().limit as usize).max(1)
    }

    /// How long the sink is still paused by a 429.
    pub fn paused_for(&self) -> Option<Duration> {
        let until = self.state().paused_until?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// Waits until no 429 pause holds the sink and a request may go within the limit.
    pub async fn slot(&self) -> Slot<'_> {
        loop {
            // Registered before the state is read, so a slot freed in between still wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let mut s = self.state();
                let now = Instant::now();
                match s.paused_until {
                    Some(until) if until > now => Some(until - now),
                    _ => {
                        s.paused_until = None;
                        if s.in_flight < (s.limit as usize).max(1) {
                            s.in_flight += 1;
                            return Slot {
                                pace: self,
                                generation: s.generation,
                            };
                        }
                        None
                    }
                }
            };
            match wait {
                Some(pause) => tokio::time::sleep(pause).await,
                None => changed.await,
            }
        }
    }

    /// A 429 outside a slot (a `$batch` part): pauses the sink without a decrease.
    pub fn pause(&self, retry_after: Duration) {
        let mut s = self.state();
        let until = Instant::now() + retry_after;
        if s.paused_until.is_none_or(|u| u < until) {
            s.paused_until = Some(until);
        }
    }
}

impl Slot<'_> {
    /// The request was throttled: pause the sink and halve the limit (once per instant).
    pub fn throttled(self, retry_after: Duration) {
        self.pace.pause(retry_after);
        let mut s = self.pace.state();
        if s.generation == self.generation {
            s.generation += 1;
            s.limit = (s.limit / 2.0).max(1.0);
        }
    }

    /// The request was answered (not throttled): one more in flight per limit's worth.
    pub fn answered(self) {
        let mut s = self.pace.state();
        s.limit = (s.limit + 1.0 / s.limit).min(self.pace.max as f64);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.pace.state().in_flight -= 1;
        self.pace.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn throttles_of_one_instant_halve_the_limit_once() {
        let pace = Pace::new(8);
        let slots: Vec<Slot> = futures_slots(&pace, 8).await;
        assert_eq!(pace.state().in_flight, 8);
        for slot in slots {
            slot.throttled(Duration::from_millis(1));
        }
        assert_eq!(
            pace.limit(),
            4,
            "eight 429s of one instant are one decrease"
        );
        assert_eq!(pace.state().in_flight, 0);
    }

    #[tokio::test]
    async fn answers_grow_the_limit_back_up_to_the_cap() {
        let pace = Pace::new(4);
        pace.slot().await.throttled(Duration::ZERO);
        assert_eq!(pace.limit(), 2);
        for _ in 0..20 {
            pace.slot().await.answered();
        }
        assert_eq!(pace.limit(), 4, "additive increase, capped at the start");
        assert_eq!(Pace::new(500).limit(), MAX_CONCURRENT_REQUESTS);
    }

    #[tokio::test]
    async fn a_429_holds_every_next_request_until_retry_after() {
        let pace = Pace::new(4);
        let started = Instant::now();
        pace.slot().await.throttled(Duration::from_millis(150));
        assert!(pace.paused_for().is_some());
        let _next = pace.slot().await;
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "the next request waited out Retry-After"
        );
        assert_eq!(pace.paused_for(), None);
    }

    #[tokio::test]
    async fn a_full_limit_waits_for_a_slot_to_be_given_back() {
        let pace = std::sync::Arc::new(Pace::new(1));
        let first = pace.slot().await;
        let waiter = {
            let pace = pace.clone();
            tokio::spawn(async move {
                let _slot = pace.slot().await;
            })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !waiter.is_finished(),
            "no second slot while the first is out"
        );
        assert_eq!(pace.state().in_flight, 1);
        drop(first);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the freed slot wakes the waiter")
            .unwrap();
    }

    async fn futures_slots(pace: &Pace, n: usize) -> Vec<Slot<'_>> {
        let mut slots = Vec::new();
        for _ in 0..n {
            slots.push(pace.slot().await);
        }
        slots
    }
}
