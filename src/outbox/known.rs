//! Keys the embedded outbox is known to hold — pending, delivered within the window, or dead —
//! remembered in memory with the time until which each is sure to stay known. Most decisions
//! offered are for mail offered before (clients read the same messages again and again); this
//! answers them without a read transaction.
//!
//! The file forgets a key only when the delivered window prunes it, so an entry is trusted only
//! until its window can have ended, and never past the latest time the writer pruned at
//! (whatever the clock did since). A key read as pending or dead is delivered, at the latest,
//! by a group the writer had already begun when the read was made; its time counts from that
//! group's start. The memory only ever says "known": a key it does not hold is read from the
//! file, and the writer checks again before storing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Keys remembered at most; beyond, the cache evicts some (quick_cache's CLOCK-Pro) and they
/// are read again when offered.
const CAPACITY: usize = 65_536;

/// A further margin for a key read as pending or dead, for the moment between the writer taking
/// its group's time and publishing it.
const SETTLE_MARGIN_MS: u64 = 60_000;

/// Where a read found a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    Pending,
    /// Delivered (or skipped) at this time: forgotten once the window has passed it.
    Delivered {
        at_ms: u64,
    },
    Dead,
}

pub(super) struct KnownKeys {
    /// Key → the time (ms since the epoch) before which it is surely still known.
    until: quick_cache::sync::Cache<u128, u64>,
    window_ms: u64,
    /// The latest time the writer pruned the window at: an entry ending no later than this may
    /// be gone from the file.
    pruned_at: AtomicU64,
    /// The time the writer's group in progress began at (0: none). A settlement in it is
    /// stamped with this time, which may be earlier than a read that still sees the record
    /// pending.
    group_started: AtomicU64,
}

/// The writer's group in progress, published for as long as it is applied.
pub(super) struct Group<'a>(&'a AtomicU64);

impl Drop for Group<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

impl KnownKeys {
    pub(super) fn new(window: Duration) -> KnownKeys {
        KnownKeys {
            until: quick_cache::sync::Cache::new(CAPACITY),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            pruned_at: AtomicU64::new(0),
            group_started: AtomicU64::new(0),
        }
    }

    /// The writer begins a group stamped `at_ms`; it ends when the returned guard drops.
    pub(super) fn group(&self, at_ms: u64) -> Group<'_> {
        self.group_started.store(at_ms.max(1), Ordering::Release);
        Group(&self.group_started)
    }

    /// When a read made at `now_ms` counts from: then, or the start of a group the writer is
    /// applying (which may settle what the read sees), whichever is earlier. Taken before the
    /// read begins.
    pub(super) fn read_time(&self, now_ms: u64) -> u64 {
        match self.group_started.load(Ordering::Acquire) {
            0 => now_ms,
            started => started.min(now_ms),
        }
    }

    /// Whether `key` is surely known at `now_ms` without asking the file.
    pub(super) fn contains(&self, key: u128, now_ms: u64) -> bool {
        let pruned_at = self.pruned_at.load(Ordering::Acquire);
        self.until
            .get(&key)
            .is_some_and(|until| now_ms < until && pruned_at < until)
    }

    /// Remembers what a read found; `read_ms` comes from [`KnownKeys::read_time`].
    pub(super) fn remember(&self, key: u128, found: Found, read_ms: u64) {
        let until = match found {
            Found::Delivered { at_ms } => at_ms.saturating_add(self.window_ms),
            Found::Pending | Found::Dead => read_ms
                .saturating_add(self.window_ms)
                .saturating_sub(SETTLE_MARGIN_MS),
        };
        if read_ms < until {
            self.until.insert(key, until);
        }
    }

    /// Drops what the file does not hold (an entry past its time, read again and not found).
    pub(super) fn forget(&self, key: u128) {
        self.until.remove(&key);
    }

    /// The writer is about to prune the window at `at_ms`: entries ending by then are no longer
    /// trusted, even if the clock later reads earlier.
    pub(super) fn pruning(&self, at_ms: u64) {
        self.pruned_at.fetch_max(at_ms, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    #[test]
    fn a_delivered_key_is_known_until_its_window_ends() {
        let known = KnownKeys::new(Duration::from_millis(HOUR));
        known.remember(1, Found::Delivered { at_ms: 1_000 }, 5_000);
        assert!(known.contains(1, 5_000));
        assert!(known.contains(1, 1_000 + HOUR - 1));
        assert!(!known.contains(1, 1_000 + HOUR), "pruned from here on");
        assert!(!known.contains(2, 5_000), "never read");
        known.forget(1);
        assert!(!known.contains(1, 5_000), "forgotten");
    }

    #[test]
    fn a_pending_or_dead_key_is_known_for_the_window_less_the_margin() {
        let known = KnownKeys::new(Duration::from_millis(HOUR));
        known.remember(1, Found::Pending, 10_000);
        known.remember(2, Found::Dead, 10_000);
        for key in [1, 2] {
            assert!(known.contains(key, 10_000 + HOUR - SETTLE_MARGIN_MS - 1));
            assert!(!known.contains(key, 10_000 + HOUR - SETTLE_MARGIN_MS));
        }
    }

    #[test]
    fn a_window_shorter_than_the_margin_remembers_nothing_but_delivered_keys_still_young() {
        let known = KnownKeys::new(Duration::from_millis(30_000));
        known.remember(1, Found::Pending, 10_000);
        known.remember(2, Found::Delivered { at_ms: 1_000 }, 40_000);
        known.remember(3, Found::Delivered { at_ms: 1_000 }, 10_000);
        assert!(!known.contains(1, 10_000));
        assert!(!known.contains(2, 40_000), "already past its window");
        assert!(known.contains(3, 10_000));
        let none = KnownKeys::new(Duration::ZERO);
        none.remember(3, Found::Delivered { at_ms: 1_000 }, 1_000);
        none.remember(4, Found::Pending, 1_000);
        assert!(!none.contains(3, 1_000) && !none.contains(4, 1_000));
    }

    #[test]
    fn a_read_during_a_group_counts_from_the_group_start() {
        let known = KnownKeys::new(Duration::from_millis(HOUR));
        assert_eq!(known.read_time(9_000), 9_000);
        let group = known.group(7_000);
        assert_eq!(known.read_time(9_000), 7_000);
        drop(group);
        assert_eq!(known.read_time(9_000), 9_000, "the group ended");
    }

    #[test]
    fn a_prune_at_a_later_time_ends_what_it_may_have_pruned_whatever_the_clock_says() {
        let known = KnownKeys::new(Duration::from_millis(HOUR));
        known.remember(1, Found::Delivered { at_ms: 1_000 }, 5_000);
        known.remember(2, Found::Delivered { at_ms: 9_000 }, 9_000);
        // The writer's clock ran ahead and pruned at 1_000 + HOUR + 1; the reader's clock is
        // back at 6_000.
        known.pruning(1_000 + HOUR + 1);
        assert!(!known.contains(1, 6_000), "its window ended at the prune");
        assert!(
            known.contains(2, 6_000),
            "delivered later: still in the file"
        );
        known.pruning(5_000);
        assert!(known.contains(2, 6_000), "the latest prune counts");
    }
}
