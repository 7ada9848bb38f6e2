//! Per-mailbox memory: what earlier exchanges showed, so a later move, category change or send
//! of a draft can be decided without refetching — item id → message summary (and whether it
//! was tracked), folder id ↔ distinguished name and parent, and the emails tracked through the
//! gateway since the directory was loaded (for correlation and `already_tracked`). Bounded by
//! weight (moka); it lives on the rules worker, never on the proxy's request path. Losing an
//! entry costs an enrichment or a correlation, never a duplicate: CRM ids are deterministic.

use std::sync::Arc;

use moka::sync::Cache;
use uuid::Uuid;

use crate::directory::model::Lookup;
use crate::inspect::Message;

/// A message as far as the gateway has seen it, and its tracking state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub message: Message,
    pub tracked: Option<TrackedRef>,
    /// Evaluated for automatic tracking and not tracked, on a complete sighting: server-side
    /// sync evaluates a message once, so later sightings do not reconsider it.
    pub settled: bool,
}

/// A message the gateway decided to track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedRef {
    pub crm_id: Option<Uuid>,
    pub regarding: Option<Lookup>,
}

/// What is known about a folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FolderInfo {
    /// Distinguished name (`inbox`, `sentitems`, …) when the folder is one.
    pub distinguished: Option<String>,
    pub parent_id: Option<String>,
}

/// The average entry the tracked-email budget is sized for (`max_tracked` entries of this).
const TRACKED_ENTRY_BYTES: u64 = 160;

/// Longest key value remembered (a Message-ID or thread key longer than this is not kept).
pub const MAX_KEY_VALUE: usize = 512;

/// Bounds of the memory.
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimits {
    /// Approximate bytes of summaries and folder entries kept.
    pub max_bytes: u64,
    /// Entries of the tracked-email overlay.
    pub max_tracked: u64,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            max_bytes: 128 << 20,
            max_tracked: 1_000_000,
        }
    }
}

#[derive(Clone)]
pub struct Memory {
    items: Cache<String, Arc<Summary>>,
    folders: Cache<String, Arc<FolderInfo>>,
    tracked: Cache<String, Arc<TrackedRef>>,
    /// Contacts and leads created for unresolved senders, by lower-cased address, until the
    /// directory (reloaded from the CRM) has them.
    created: Cache<String, Lookup>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("items", &self.items.entry_count())
            .field("folders", &self.folders.entry_count())
            .field("tracked", &self.tracked.entry_count())
            .finish()
    }
}

fn opt_len(s: &Option<String>) -> usize {
    s.as_ref().map_or(0, String::len)
}

fn weigh_message(m: &Message) -> u32 {
    let addresses: usize =
        m.to.iter()
            .chain(&m.cc)
            .chain(&m.bcc)
            .chain(m.from.iter())
            .chain(m.sender.iter())
            .map(|a| opt_len(&a.address) + opt_len(&a.name) + 64)
            .sum();
    let text = opt_len(&m.item_id)
        + opt_len(&m.folder_id)
        + opt_len(&m.internet_message_id)
        + opt_len(&m.conversation_id)
        + opt_len(&m.conversation_index)
        + opt_len(&m.in_reply_to)
        + opt_len(&m.references)
        + opt_len(&m.subject)
        + m.categories.iter().map(String::len).sum::<usize>();
    u32::try_from(400 + addresses + text).unwrap_or(u32::MAX)
}

/// Key of a mailbox's entry: mailbox and id, separated by a byte neither contains.
pub fn key(mailbox: &str, id: &str) -> String {
    let mut k = String::with_capacity(mailbox.len() + id.len() + 1);
    k.push_str(mailbox);
    k.push('\u{1}');
    k.push_str(id);
    k
}

thread_local! {
    /// Lookups build their key here instead of allocating one each time.
    static LOOKUP_KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Runs `f` with the key of (mailbox, id) without allocating.
fn with_key<T>(mailbox: &str, id: &str, f: impl FnOnce(&str) -> T) -> T {
    LOOKUP_KEY.with(|k| match k.try_borrow_mut() {
        Ok(mut k) => {
            k.clear();
            k.push_str(mailbox);
            k.push('\u{1}');
            k.push_str(id);
            f(&k)
        }
        Err(_) => f(&key(mailbox, id)),
    })
}

impl Memory {
    pub fn new(limits: MemoryLimits) -> Memory {
        // Summaries take most of the budget; folders are few per mailbox.
        let items = Cache::builder()
            .max_capacity(limits.max_bytes / 8 * 7)
            .weigher(|k: &String, v: &Arc<Summary>| {
                weigh_message(&v.message).saturating_add(k.len() as u32)
            })
            .build();
        let folders = Cache::builder()
            .max_capacity(limits.max_bytes / 8)
            .weigher(|k: &String, v: &Arc<FolderInfo>| {
                (k.len() + opt_len(&v.distinguished) + opt_len(&v.parent_id) + 96) as u32
            })
            .build();
        // Weighed by key length: keys come from traffic (Message-IDs, tokens, thread indexes).
        let tracked = Cache::builder()
            .max_capacity(limits.max_tracked.saturating_mul(TRACKED_ENTRY_BYTES))
            .weigher(|k: &String, _v: &Arc<TrackedRef>| {
                u32::try_from(k.len() + 96).unwrap_or(u32::MAX)
            })
            .build();
        let created = Cache::builder()
            .max_capacity(limits.max_tracked / 4 + 1)
            .build();
        Memory {
            items,
            folders,
            tracked,
            created,
        }
    }

    pub fn item(&self, mailbox: &str, item_id: &str) -> Option<Arc<Summary>> {
        with_key(mailbox, item_id, |k| self.items.get(k))
    }

    pub fn remember_item(&self, mailbox: &str, item_id: &str, summary: Summary) {
        self.items.insert(key(mailbox, item_id), Arc::new(summary));
    }

    pub fn forget_item(&self, mailbox: &str, item_id: &str) {
        self.items.invalidate(&key(mailbox, item_id));
    }

    pub fn folder(&self, mailbox: &str, folder_id: &str) -> Option<Arc<FolderInfo>> {
        with_key(mailbox, folder_id, |k| self.folders.get(k))
    }

    /// The id of a distinguished folder, once seen.
    pub fn folder_id_of(&self, mailbox: &str, distinguished: &str) -> Option<String> {
        self.folders
            .get(&key(mailbox, &format!("@{distinguished}")))
            .and_then(|f| f.parent_id.clone())
    }

    pub fn remember_folder(&self, mailbox: &str, folder_id: &str, info: FolderInfo) {
        let old = self.folder(mailbox, folder_id);
        let merged = FolderInfo {
            distinguished: info
                .distinguished
                .or_else(|| old.as_ref().and_then(|o| o.distinguished.clone())),
            parent_id: info
                .parent_id
                .or_else(|| old.as_ref().and_then(|o| o.parent_id.clone())),
        };
        if let Some(d) = &merged.distinguished {
            // The reverse entry keeps the id in `parent_id`.
            self.folders.insert(
                key(mailbox, &format!("@{d}")),
                Arc::new(FolderInfo {
                    distinguished: None,
                    parent_id: Some(folder_id.to_owned()),
                }),
            );
        }
        if old.as_deref() != Some(&merged) {
            self.folders
                .insert(key(mailbox, folder_id), Arc::new(merged));
        }
    }

    /// A tracked email by a correlation key (`m:<message-id>`, `t:<token>`, `c:<index>`,
    /// `i:<conversation id>`, or `d:<direction>:<message-id>` for duplicates).
    pub fn tracked(&self, key: &str) -> Option<Arc<TrackedRef>> {
        self.tracked.get(key)
    }

    /// A tracked email by a key built of a prefix and a value, without allocating.
    pub fn tracked_by(&self, prefix: &str, value: &str) -> Option<Arc<TrackedRef>> {
        LOOKUP_KEY.with(|k| match k.try_borrow_mut() {
            Ok(mut k) => {
                k.clear();
                k.push_str(prefix);
                k.push_str(value);
                self.tracked.get(k.as_str())
            }
            Err(_) => self.tracked.get(&format!("{prefix}{value}")),
        })
    }

    pub fn remember_tracked(&self, key: String, tracked: Arc<TrackedRef>) {
        if key.len() <= MAX_KEY_VALUE + 8 {
            self.tracked.insert(key, tracked);
        }
    }

    /// The record auto-created for an address, if the gateway created one.
    pub fn created(&self, address: &str) -> Option<Lookup> {
        self.created.get(address)
    }

    pub fn remember_created(&self, address: &str, record: Lookup) {
        if address.len() <= MAX_KEY_VALUE {
            self.created.insert(address.to_owned(), record);
        }
    }

    /// Entries held (for metrics and tests; moka counts lazily).
    pub fn entry_counts(&self) -> (u64, u64, u64) {
        self.items.run_pending_tasks();
        self.folders.run_pending_tasks();
        self.tracked.run_pending_tasks();
        (
            self.items.entry_count(),
            self.folders.entry_count(),
            self.tracked.entry_count(),
        )
    }

    /// Forgets everything (tests and `replay` between independent runs).
    pub fn clear(&self) {
        self.items.invalidate_all();
        self.folders.invalidate_all();
        self.tracked.invalidate_all();
        self.created.invalidate_all();
    }
}
