//! Per-mailbox memory: what earlier exchanges showed, so a later move, category change or send
//! of a draft can be decided without refetching — item id → message summary (and whether it
//! was tracked), folder id ↔ distinguished name and parent, and the emails tracked through the
//! gateway since the directory was loaded (for correlation and `already_tracked`). Bounded by
//! weight (quick_cache); it lives on the rules worker, never on the proxy's request path. Losing an
//! entry costs an enrichment or a correlation, never a duplicate: CRM ids are deterministic.
//!
//! Entries are keyed by a 128-bit hash of their key text under a seed drawn per memory (as the
//! directory keys its indexes): no key is copied or kept, and traffic cannot choose collisions.

use std::sync::Arc;

use quick_cache::Weighter;
use quick_cache::sync::Cache;
use smallvec::SmallVec;
use uuid::Uuid;

use crate::common::shared::SharedStr;
use crate::directory::model::Lookup;
use crate::inspect::{Address, Message};

/// A message as far as the gateway has seen it, and its tracking state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Shared with the observation that showed it, when the memory knew nothing more.
    pub message: Arc<Message>,
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

/// An entry's key: the seeded hash of its text.
type Key = u128;

/// What a key weighs in a cache.
const KEY_BYTES: u64 = std::mem::size_of::<Key>() as u64;

/// Shared through an `Arc` by the engine's clones.
pub struct Memory {
    seed: u64,
    /// Each summary with its weight, worked out once: the cache weighs an entry again each time
    /// it moves or evicts it, and reading a cold summary's every string for that cost more
    /// than the rest of remembering.
    items: Cache<Key, Weighed, SummaryWeight>,
    folders: Cache<Key, Arc<FolderInfo>, FolderWeight>,
    tracked: Cache<Key, Arc<TrackedRef>, KeyWeight>,
    /// Contacts and leads created for unresolved senders, by lower-cased address, until the
    /// directory (reloaded from the CRM) has them.
    created: Cache<String, Lookup>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("items", &self.items.len())
            .field("folders", &self.folders.len())
            .field("tracked", &self.tracked.len())
            .finish()
    }
}

fn opt_len(s: &Option<impl AsRef<str>>) -> usize {
    s.as_ref().map_or(0, |s| s.as_ref().len())
}

/// What a remembered message keeps alive: each text block its fields are pieces of, whole and
/// once (a packed message's fields share one block; a merged one holds pieces of the blocks
/// of every sighting it took a field from), its categories, and fixed overheads per address
/// and per message.
fn weigh_message(m: &Message) -> u32 {
    let fields = [
        &m.item_id,
        &m.folder_id,
        &m.folder,
        &m.internet_message_id,
        &m.conversation_id,
        &m.conversation_index,
        &m.in_reply_to,
        &m.references,
        &m.subject,
        &m.received_at,
        &m.sent_at,
    ];
    let addresses = m.to.iter().chain(&m.cc).chain(&m.bcc);
    let addresses: SmallVec<[&Address; 8]> = addresses
        .chain(m.from.iter())
        .chain(m.sender.iter())
        .collect();
    let texts = fields.into_iter().flatten().chain(
        addresses
            .iter()
            .flat_map(|a| a.address.iter().chain(a.name.iter())),
    );
    let mut blocks: SmallVec<[&SharedStr; 4]> = SmallVec::new();
    let mut held = 0;
    for text in texts {
        if !blocks.iter().any(|b| b.shares_block_with(text)) {
            held += text.block_len();
            blocks.push(text);
        }
    }
    let categories: usize = m.categories.iter().map(String::len).sum();
    u32::try_from(400 + 64 * addresses.len() + held + categories).unwrap_or(u32::MAX)
}

/// How many entries of about `each` bytes fit in `bytes` (the caches size their tables by it).
fn estimate(bytes: u64, each: u64) -> usize {
    usize::try_from(bytes / each.max(1))
        .unwrap_or(usize::MAX)
        .clamp(16, 1 << 24)
}

#[derive(Clone)]
struct SummaryWeight;

/// A remembered summary and its weight in bytes.
#[derive(Clone)]
struct Weighed {
    weight: u32,
    summary: Arc<Summary>,
}

impl Weighed {
    fn new(summary: Summary) -> Weighed {
        Weighed {
            weight: weigh_message(&summary.message),
            summary: Arc::new(summary),
        }
    }
}

impl Weighter<Key, Weighed> for SummaryWeight {
    fn weight(&self, _key: &Key, value: &Weighed) -> u64 {
        u64::from(value.weight) + KEY_BYTES
    }
}

#[derive(Clone)]
struct FolderWeight;

impl Weighter<Key, Arc<FolderInfo>> for FolderWeight {
    fn weight(&self, _key: &Key, value: &Arc<FolderInfo>) -> u64 {
        KEY_BYTES + (opt_len(&value.distinguished) + opt_len(&value.parent_id) + 96) as u64
    }
}

#[derive(Clone)]
struct KeyWeight;

impl Weighter<Key, Arc<TrackedRef>> for KeyWeight {
    fn weight(&self, _key: &Key, _value: &Arc<TrackedRef>) -> u64 {
        KEY_BYTES + 96
    }
}

/// Key text up to this length is assembled on the stack to be hashed (a mailbox, a separator
/// and an item id fit); longer text is concatenated on the heap.
const KEY_ON_STACK: usize = 256;

/// The seeded hash of the parts written one after the other.
fn hash(seed: u64, parts: &[&str]) -> Key {
    let one_shot = |text: &[u8]| xxhash_rust::xxh3::xxh3_128_with_seed(text, seed);
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > KEY_ON_STACK {
        return one_shot(parts.concat().as_bytes());
    }
    let mut text = [0u8; KEY_ON_STACK];
    let mut at = 0;
    for part in parts {
        text[at..at + part.len()].copy_from_slice(part.as_bytes());
        at += part.len();
    }
    one_shot(&text[..at])
}

impl Memory {
    pub fn new(limits: MemoryLimits) -> Memory {
        // Summaries take most of the budget; folders are few per mailbox.
        let items = Cache::with_weighter(
            estimate(limits.max_bytes / 8 * 7, 600),
            limits.max_bytes / 8 * 7,
            SummaryWeight,
        );
        let folders = Cache::with_weighter(
            estimate(limits.max_bytes / 8, 160),
            limits.max_bytes / 8,
            FolderWeight,
        );
        // Weighed by key length: keys come from traffic (Message-IDs, tokens, thread indexes).
        let tracked_bytes = limits.max_tracked.saturating_mul(TRACKED_ENTRY_BYTES);
        let tracked = Cache::with_weighter(
            estimate(tracked_bytes, TRACKED_ENTRY_BYTES),
            tracked_bytes,
            KeyWeight,
        );
        let created = Cache::new(usize::try_from(limits.max_tracked / 4 + 1).unwrap_or(usize::MAX));
        Memory {
            seed: rand::random(),
            items,
            folders,
            tracked,
            created,
        }
    }

    /// Key of a mailbox's entry: mailbox and id, separated by a byte neither contains.
    fn key(&self, mailbox: &str, id: &str) -> Key {
        hash(self.seed, &[mailbox, "\u{1}", id])
    }

    /// Key of the reverse entry of a distinguished folder.
    fn distinguished_key(&self, mailbox: &str, distinguished: &str) -> Key {
        hash(self.seed, &[mailbox, "\u{1}@", distinguished])
    }

    pub fn item(&self, mailbox: &str, item_id: &str) -> Option<Arc<Summary>> {
        self.items
            .get(&self.key(mailbox, item_id))
            .map(|w| w.summary)
    }

    pub fn remember_item(&self, mailbox: &str, item_id: &str, summary: Summary) {
        self.items
            .insert(self.key(mailbox, item_id), Weighed::new(summary));
    }

    pub fn forget_item(&self, mailbox: &str, item_id: &str) {
        self.items.remove(&self.key(mailbox, item_id));
    }

    pub fn folder(&self, mailbox: &str, folder_id: &str) -> Option<Arc<FolderInfo>> {
        self.folders.get(&self.key(mailbox, folder_id))
    }

    /// The id of a distinguished folder, once seen.
    pub fn folder_id_of(&self, mailbox: &str, distinguished: &str) -> Option<String> {
        self.folders
            .get(&self.distinguished_key(mailbox, distinguished))
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
                self.distinguished_key(mailbox, d),
                Arc::new(FolderInfo {
                    distinguished: None,
                    parent_id: Some(folder_id.to_owned()),
                }),
            );
        }
        if old.as_deref() != Some(&merged) {
            self.folders
                .insert(self.key(mailbox, folder_id), Arc::new(merged));
        }
    }

    /// A tracked email by a correlation key, a prefix and a value: `m:<message-id>`,
    /// `t:<token>`, `c:<thread key>`, `i:<conversation id>`, or `d:<direction>:<message-id>`
    /// for duplicates.
    pub fn tracked_by(&self, prefix: &str, value: &str) -> Option<Arc<TrackedRef>> {
        self.tracked.get(&hash(self.seed, &[prefix, value]))
    }

    /// Remembers a tracked email under a correlation key (see [`Memory::tracked_by`]); a value
    /// longer than [`MAX_KEY_VALUE`] is not kept.
    pub fn remember_tracked(&self, prefix: &str, value: &str, tracked: Arc<TrackedRef>) {
        if prefix.len() + value.len() <= MAX_KEY_VALUE + 8 {
            self.tracked
                .insert(hash(self.seed, &[prefix, value]), tracked);
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

    /// Entries held (for metrics and tests).
    pub fn entry_counts(&self) -> (u64, u64, u64) {
        (
            self.items.len() as u64,
            self.folders.len() as u64,
            self.tracked.len() as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::model::Address;

    fn address(name: &str, address: &str) -> Address {
        Address {
            name: Some(name.into()),
            address: Some(address.into()),
            ..Address::default()
        }
    }

    /// A message whose every weighed field has a length of its own, so each one is seen.
    fn message() -> Message {
        Message {
            item_id: Some("i".into()),
            folder_id: Some("f".repeat(2).into()),
            internet_message_id: Some("m".repeat(4).into()),
            conversation_id: Some("c".repeat(8).into()),
            conversation_index: Some("x".repeat(16).into()),
            in_reply_to: Some("r".repeat(32).into()),
            references: Some("s".repeat(64).into()),
            subject: Some("t".repeat(128).into()),
            categories: vec!["a".repeat(256), "b".repeat(512)],
            to: vec![address("To", "to@x")],
            cc: vec![address("Cc1", "cc1@xx")],
            bcc: vec![address("B", "b@x.yz")],
            from: Some(address("From", "from@xy")),
            sender: Some(address("Sender", "sender@x")),
            ..Message::default()
        }
    }

    #[test]
    fn a_key_hashes_as_its_whole_text_on_the_stack_or_the_heap() {
        for len in [
            0,
            1,
            100,
            KEY_ON_STACK - 3,
            KEY_ON_STACK - 2,
            KEY_ON_STACK,
            2000,
        ] {
            let value = "v".repeat(len);
            let whole = format!("d:in:{value}");
            assert_eq!(
                hash(7, &["d:in:", &value]),
                xxhash_rust::xxh3::xxh3_128_with_seed(whole.as_bytes(), 7),
                "{len}"
            );
        }
    }

    #[test]
    fn a_message_weighs_its_text_its_addresses_and_fixed_overheads() {
        let text = 1 + 2 + 4 + 8 + 16 + 32 + 64 + 128 + 256 + 512;
        // Each address: its name, its address and 64 bytes of its own.
        let addresses = (2 + 4 + 64) + (3 + 6 + 64) + (1 + 6 + 64) + (4 + 7 + 64) + (6 + 8 + 64);
        assert_eq!(weigh_message(&message()), 400 + addresses + text);
        assert_eq!(weigh_message(&Message::default()), 400);
        assert_eq!(opt_len(&Some("abc")), 3);
        assert_eq!(opt_len(&None::<String>), 0);
    }

    #[test]
    fn a_message_weighs_each_block_its_fields_keep_alive_once() {
        let block: Arc<str> = Arc::from(format!("{}{}", "s".repeat(1000), "id"));
        let piece = |range| SharedStr::slice(&block, range).unwrap();
        // Two fields of one block (as inspection packs them): the block counts once, whole.
        let packed = Message {
            subject: Some(piece(0..1000)),
            item_id: Some(piece(1000..1002)),
            ..Message::default()
        };
        assert_eq!(weigh_message(&packed), 400 + 1002);
        // A merge that took a two-byte id from that block keeps all of it alive.
        let merged = Message {
            item_id: Some(piece(1000..1002)),
            subject: Some("new".into()),
            ..Message::default()
        };
        assert_eq!(weigh_message(&merged), 400 + 1002 + 3);
    }

    #[test]
    fn each_cache_weighs_its_key_and_value() {
        let summary = Weighed::new(Summary {
            message: message().into(),
            ..Summary::default()
        });
        let key: Key = 7;
        assert_eq!(
            SummaryWeight.weight(&key, &summary),
            u64::from(weigh_message(&summary.summary.message)) + 16
        );
        let folder = Arc::new(FolderInfo {
            distinguished: Some("inbox".into()),
            parent_id: Some("p".repeat(7)),
        });
        assert_eq!(FolderWeight.weight(&key, &folder), 16 + 5 + 7 + 96);
        let tracked = Arc::new(TrackedRef {
            crm_id: None,
            regarding: None,
        });
        assert_eq!(KeyWeight.weight(&key, &tracked), 16 + 96);
    }

    #[test]
    fn cache_sizes_are_estimated_from_the_budget_within_bounds() {
        assert_eq!(estimate(1_000_000, 1000), 1000);
        assert_eq!(
            estimate(1_000_000, 0),
            1_000_000,
            "an entry weighs at least a byte"
        );
        assert_eq!(estimate(100, 1000), 16, "never fewer than 16");
        assert_eq!(estimate(u64::MAX, 1), 1 << 24, "never more than 2^24");
        assert_eq!(estimate(10_000, 3), 3333);
    }

    #[test]
    fn items_are_forgotten_and_distinguished_folders_found_by_name() {
        let memory = Memory::new(MemoryLimits::default());
        memory.remember_item("alex", "item-1", Summary::default());
        memory.remember_item("alex", "item-2", Summary::default());
        memory.forget_item("alex", "item-1");
        assert!(memory.item("alex", "item-1").is_none());
        assert!(memory.item("alex", "item-2").is_some(), "only that one");
        assert_eq!(memory.folder_id_of("alex", "inbox"), None);
        memory.remember_folder(
            "alex",
            "AQMk-inbox",
            FolderInfo {
                distinguished: Some("inbox".into()),
                parent_id: None,
            },
        );
        assert_eq!(
            memory.folder_id_of("alex", "inbox").as_deref(),
            Some("AQMk-inbox")
        );
        assert_eq!(memory.folder_id_of("kim", "inbox"), None, "per mailbox");
        assert_eq!(
            memory.entry_counts(),
            (1, 2, 0),
            "an item, a folder and its reverse entry"
        );
        let debug = format!("{memory:?}");
        assert!(
            debug.contains("items: 1") && debug.contains("folders: 2"),
            "{debug}"
        );
    }

    #[test]
    fn tracked_keys_longer_than_the_limit_are_not_kept() {
        let memory = Memory::new(MemoryLimits::default());
        let tracked = Arc::new(TrackedRef {
            crm_id: None,
            regarding: None,
        });
        let longest = "x".repeat(MAX_KEY_VALUE + 6);
        memory.remember_tracked("m:", &longest, tracked.clone());
        assert!(memory.tracked_by("m:", &longest).is_some(), "at the limit");
        assert!(
            memory.tracked_by("t:", &longest).is_none(),
            "by its prefix too"
        );
        let over = "x".repeat(MAX_KEY_VALUE + 7);
        memory.remember_tracked("m:", &over, tracked);
        assert!(memory.tracked_by("m:", &over).is_none(), "over it");
        assert_eq!(memory.entry_counts(), (0, 0, 1));
    }
}
