//! The most recent items of a kind, bounded: observations, decisions and delivery outcomes kept
//! for the admin endpoints, tests and the demo. Oldest first; the oldest goes when it is full.

use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct Recent<T> {
    items: Mutex<Ring<T>>,
    capacity: usize,
}

/// The kept items in one vector: once it is full, the newest overwrites the oldest where it
/// lies, at `oldest`. A queue's pop-then-push read the whole evicted item out of its cold slot
/// (a decision is ~600 bytes) only to drop it; overwriting drops it in place.
#[derive(Debug)]
struct Ring<T> {
    slots: Vec<T>,
    oldest: usize,
}

impl<T: Clone> Recent<T> {
    pub fn new(capacity: usize) -> Arc<Recent<T>> {
        Arc::new(Recent {
            items: Mutex::new(Ring {
                slots: Vec::with_capacity(capacity),
                oldest: 0,
            }),
            capacity,
        })
    }

    pub fn push(&self, item: T) {
        if self.capacity == 0 {
            return;
        }
        if let Ok(mut ring) = self.items.lock() {
            if ring.slots.len() < self.capacity {
                ring.slots.push(item);
            } else {
                let oldest = ring.oldest;
                ring.slots[oldest] = item;
                ring.oldest = (oldest + 1) % self.capacity;
            }
        }
    }

    /// Everything kept, oldest first.
    pub fn snapshot(&self) -> Vec<T> {
        self.items
            .lock()
            .map(|ring| {
                let (newer, older) = ring.slots.split_at(ring.oldest);
                older.iter().chain(newer).cloned().collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_goes_when_it_is_full() {
        let recent = Recent::new(2);
        for n in 1..=3 {
            recent.push(n);
        }
        assert_eq!(recent.snapshot(), vec![2, 3]);
    }

    #[test]
    fn a_full_ring_keeps_the_newest_in_order_however_often_it_wraps() {
        let recent = Recent::new(3);
        assert!(recent.snapshot().is_empty());
        for n in 1..=10u32 {
            recent.push(n);
            let first = n.saturating_sub(2).max(1);
            assert_eq!(
                recent.snapshot(),
                (first..=n).collect::<Vec<_>>(),
                "after {n}"
            );
        }
        let none = Recent::new(0);
        none.push(1);
        assert!(
            none.snapshot().is_empty(),
            "a ring of no room keeps nothing"
        );
    }

    #[test]
    fn an_overwritten_item_is_dropped_at_once() {
        let item = Arc::new(());
        let recent = Recent::new(2);
        recent.push(item.clone());
        recent.push(Arc::new(()));
        assert_eq!(Arc::strong_count(&item), 2);
        recent.push(Arc::new(()));
        assert_eq!(
            Arc::strong_count(&item),
            1,
            "the oldest went when the ring was full"
        );
    }
}
