//! The most recent items of a kind, bounded: observations, decisions and delivery outcomes kept
//! for the admin endpoints, tests and the demo. Oldest first; the oldest goes when it is full.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct Recent<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
}

impl<T: Clone> Recent<T> {
    pub fn new(capacity: usize) -> Arc<Recent<T>> {
        Arc::new(Recent {
            items: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        })
    }

    pub fn push(&self, item: T) {
        if let Ok(mut items) = self.items.lock() {
            if items.len() == self.capacity {
                items.pop_front();
            }
            items.push_back(item);
        }
    }

    /// Everything kept, oldest first.
    pub fn snapshot(&self) -> Vec<T> {
        self.items
            .lock()
            .map(|i| i.iter().cloned().collect())
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
}
