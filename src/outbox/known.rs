//! Keys the embedded outbox is known to hold — pending, delivered within the window, or dead —
//! remembered in memory with the time until which each is sure to stay known. Most decisions
//! offered are for mail offered before (clients read the same messages again and again); this
//! answers them without a read transaction. A key is forgotten by the file only when the
//! delivered window prunes it, so an entry is trusted only until its window can have ended.
//! Nothing can be lost through it either way: every key it holds was stored by the outbox
//! (pending, delivered or dead), so the bound only keeps it from answering where the file
//! itself would already have forgotten.

use std::time::Duration;

/// Keys remembered at most; beyond, the least used are forgotten (and read again when offered).
const CAPACITY: usize = 65_536;

/// A key read as pending or dead becomes delivered, at the latest, with a commit whose
/// timestamp may be a little older than the read that saw it; its window is shortened by this
/// much so the memory never outlives the file's record.
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
}

impl KnownKeys {
    pub(super) fn new(window: Duration) -> KnownKeys {
        KnownKeys {
            until: quick_cache::sync::Cache::new(CAPACITY),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Whether `key` is surely known at `now_ms` without asking the file.
    pub(super) fn contains(&self, key: u128, now_ms: u64) -> bool {
        self.until.get(&key).is_some_and(|until| now_ms < until)
    }

    /// Remembers what a read begun at `read_ms` found, for as long as it surely holds.
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
        assert!(!KnownKeys::new(Duration::ZERO).contains(3, 10_000));
    }
}
