//! Each mailbox's most recent observations, bounded in count per mailbox and in mailboxes (when
//! full, one seen less recently gives way: quick_cache's eviction, close to LRU), kept in memory
//! for previews: what the options page replays through the rules with a user's proposed options.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::inspect::Observation;

type Recent = Arc<Mutex<VecDeque<Arc<Observation>>>>;

pub struct History {
    per_mailbox: usize,
    mailboxes: quick_cache::sync::Cache<Uuid, Recent>,
}

impl History {
    pub fn new(per_mailbox: usize, mailboxes: usize) -> Arc<History> {
        Arc::new(History {
            per_mailbox: per_mailbox.max(1),
            mailboxes: quick_cache::sync::Cache::new(mailboxes.max(1)),
        })
    }

    /// Whether a preview would replay this kind of observation (contacts, appointments and
    /// tasks decide nothing).
    pub fn keeps(observation: &Observation) -> bool {
        !matches!(
            observation,
            Observation::ContactSeen { .. }
                | Observation::AppointmentSeen { .. }
                | Observation::TaskSeen { .. }
        )
    }

    /// Keeps an observation of a mailbox, dropping its oldest when the mailbox is full.
    pub fn record(&self, mailbox: Uuid, observation: Arc<Observation>) {
        // One list per mailbox even when two threads see its first observation at once.
        let Ok(recent) = self.mailboxes.get_or_insert_with(&mailbox, || {
            Ok::<Recent, std::convert::Infallible>(Arc::default())
        });
        if let Ok(mut recent) = recent.lock() {
            if recent.len() == self.per_mailbox {
                recent.pop_front();
            }
            recent.push_back(observation);
        }
    }

    /// Every mailbox's kept observations, oldest first: what is saved at shutdown.
    pub fn snapshot(&self) -> Vec<(Uuid, Vec<Arc<Observation>>)> {
        self.mailboxes
            .iter()
            .filter_map(|(mailbox, recent)| {
                let recent = recent.lock().ok()?;
                Some((mailbox, recent.iter().cloned().collect()))
            })
            .collect()
    }

    /// Puts back what an earlier run kept, within this run's bounds.
    pub fn restore(&self, kept: Vec<(Uuid, Vec<Observation>)>) {
        for (mailbox, observations) in kept {
            for observation in observations {
                self.record(mailbox, Arc::new(observation));
            }
        }
    }

    /// A mailbox's kept observations, oldest first.
    pub fn recent(&self, mailbox: Uuid) -> Vec<Arc<Observation>> {
        self.mailboxes
            .get(&mailbox)
            .and_then(|r| r.lock().ok().map(|r| r.iter().cloned().collect()))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::{Origin, Source};

    fn folder(n: usize) -> Arc<Observation> {
        Arc::new(Observation::FolderSeen {
            origin: Origin {
                mailbox: None,
                source: Source::Ews,
                operation: "GetFolder".into(),
            },
            folder_id: format!("F{n}"),
            folder: None,
            parent_folder_id: None,
            display_name: None,
        })
    }

    #[test]
    fn each_mailbox_keeps_its_newest_and_the_mailboxes_kept_are_bounded() {
        let history = History::new(2, 2);
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        for n in 0..3 {
            history.record(a, folder(n));
        }
        let ids = |m| -> Vec<String> {
            history
                .recent(m)
                .iter()
                .filter_map(|o| match o.as_ref() {
                    Observation::FolderSeen { folder_id, .. } => Some(folder_id.clone()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(ids(a), vec!["F1", "F2"]);
        history.record(b, folder(9));
        history.record(c, folder(9));
        let kept = [a, b, c]
            .iter()
            .filter(|m| !history.recent(**m).is_empty())
            .count();
        assert!(kept <= 2, "at most two mailboxes are kept");
        assert_eq!(ids(c), vec!["F9"]);
    }
}
