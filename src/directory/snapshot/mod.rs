//! The immutable, indexed directory the rules read: built once from a [`DirectoryDocument`],
//! validated (every problem names the row and column and says how to fix it), then swapped in
//! whole. Lookups take lower-cased addresses and never allocate.
//!
//! This module owns the types and the lookups the rules call; `index` holds the indexes and
//! hashing helpers, `builder` the validation and indexing of a document.

mod builder;
mod index;

use uuid::Uuid;

use crate::directory::model::{
    ContactMatching, DirectoryDocument, Lookup, OrgDbOrgSettings, OtherMatching, UserSettings,
};
use crate::directory::settings::DirectorySettings;

pub use self::index::{
    Key, KeyMap, Keyer, Map, PassThrough, TrackedIndex, TrackedRow, address_hashes,
    conversation_key, lower, normalize_exchange_id, subject_hashes, token_prefixes, tracking_token,
};

/// A lookup stored compactly: the table as an index into the directory's table names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactLookup {
    entity: u16,
    id: Uuid,
}

/// A directory problem, phrased for the administrator who has to fix the file.
#[derive(Debug, thiserror::Error)]
#[error("directory `{at}`: {problem}\nfix: {fix}")]
pub struct InvalidDirectory {
    pub at: String,
    pub problem: String,
    pub fix: String,
}

/// Tables that hold e-mail addresses, in sender-resolution precedence (docs/domain.md §4.1).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    Systemuser,
    Contact,
    Account,
    Lead,
    Equipment,
    Team,
    Businessunit,
    /// Queues and custom e-mail-enabled tables share the last rank.
    Queue,
    Other,
}

impl EntityKind {
    fn rank(self) -> u8 {
        match self {
            EntityKind::Queue | EntityKind::Other => 7,
            k => k as u8,
        }
    }

    fn from_logical(name: &str) -> EntityKind {
        match name {
            "systemuser" => EntityKind::Systemuser,
            "contact" => EntityKind::Contact,
            "account" => EntityKind::Account,
            "lead" => EntityKind::Lead,
            "equipment" => EntityKind::Equipment,
            "team" => EntityKind::Team,
            "businessunit" => EntityKind::Businessunit,
            "queue" => EntityKind::Queue,
            _ => EntityKind::Other,
        }
    }

    /// Contacts, accounts and leads: what filtering method 2 asks for.
    pub fn is_customer(self) -> bool {
        matches!(
            self,
            EntityKind::Contact | EntityKind::Account | EntityKind::Lead
        )
    }

    /// Users and queues: the parties whose own filters count and whose mail is "internal".
    pub fn is_internal(self) -> bool {
        matches!(self, EntityKind::Systemuser | EntityKind::Queue)
    }
}

/// A row that has an e-mail address (kept small: a million of them is the normal case).
#[derive(Debug, Clone)]
pub struct Record {
    pub kind: EntityKind,
    pub active: bool,
    /// Index into the directory's table names (the table's logical name).
    entity_name: u16,
    /// Index of the user or queue in their tables, for users and queues (`u32::MAX`: none).
    internal: u32,
    pub id: Uuid,
    /// The nil id when the row has no owner.
    owner: Uuid,
    parent: Option<CompactLookup>,
}

impl Record {
    pub fn owner(&self) -> Option<Uuid> {
        (!self.owner.is_nil()).then_some(self.owner)
    }

    /// Index of the user or queue, for users and queues.
    pub fn internal(&self) -> Option<u32> {
        (self.internal != u32::MAX).then_some(self.internal)
    }
}

/// A user with the options the rules read.
#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    /// Entra ID object id: what delivery sends as `CallerObjectId` to act as this user.
    pub aad_object_id: Option<Uuid>,
    pub active: bool,
    pub settings: UserSettings,
}

/// A queue with its filter.
#[derive(Debug, Clone)]
pub struct Queue {
    pub id: Uuid,
    pub filter: u8,
    pub active: bool,
    pub owner: Option<Uuid>,
}

/// Who owns a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    User(u32),
    Queue(u32),
}

/// A folder tracking rule, stored compactly (2.5 M of them for 100 k users).
#[derive(Debug, Clone)]
struct StoredRule {
    folder: Key,
    /// Offset and length of the folder's name in the directory's name arena.
    name: (u32, u16),
    /// The folder's Exchange id, in the same arena (the catch-up sweep syncs the folder).
    folder_id: (u32, u16),
    regarding: Option<CompactLookup>,
}

/// A folder tracking rule as the rules see it.
#[derive(Debug, Clone)]
pub struct FolderRule<'a> {
    name: RuleName<'a>,
    pub regarding: Option<Lookup>,
}

/// Where a rule's folder name is: read only to explain a decision, so a lookup does not
/// fetch the name arena's cache line for every message in a tracked folder.
#[derive(Debug, Clone)]
enum RuleName<'a> {
    Arena { names: &'a str, at: u32, len: u16 },
    Given(Option<&'a str>),
}

impl<'a> FolderRule<'a> {
    /// A rule not (yet) in the directory, such as one an options page proposes.
    pub fn new(name: Option<&'a str>, regarding: Option<Lookup>) -> FolderRule<'a> {
        FolderRule {
            name: RuleName::Given(name),
            regarding,
        }
    }

    /// The folder's name as the rule recorded it, if it did.
    pub fn name(&self) -> Option<&'a str> {
        match self.name {
            RuleName::Arena { names, at, len } => {
                let (at, len) = (at as usize, len as usize);
                names.get(at..at + len).filter(|n| !n.is_empty())
            }
            RuleName::Given(name) => name,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MailboxEntry {
    pub id: Uuid,
    pub address: Box<str>,
    pub owner: Owner,
    /// Seconds since the epoch; mail received earlier is history.
    pub cutoff: Option<i64>,
    pub delivery_method: u8,
    /// Appointments, contacts and tasks are synchronised by server-side sync (a user's
    /// mailbox with `actdeliverymethod` 1; never a queue's).
    pub syncs_items: bool,
    /// Sorted by folder key.
    rules: Vec<StoredRule>,
    /// The first eight bytes of each rule's folder key, in the same order: a lookup scans
    /// these (at most 25, four cache lines fetched together) instead of a binary search
    /// whose every step waits on another rule's line.
    rule_keys: Box<[u64]>,
}

impl MailboxEntry {
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The rule of a folder key: prefixes compared first, the whole key where one matches.
    fn find_rule(&self, key: Key) -> Option<&StoredRule> {
        let prefix = key.prefix();
        self.rule_keys
            .iter()
            .zip(&self.rules)
            .find(|(p, r)| **p == prefix && r.folder == key)
            .map(|(_, r)| r)
    }
}

/// Organisation settings, validated and compiled.
#[derive(Debug, Clone)]
pub struct Org {
    pub id: Uuid,
    /// Upper-cased.
    pub token_prefixes: Vec<String>,
    pub correlation: bool,
    pub tracking_tokens: bool,
    pub smart_matching: bool,
    pub hash_filter: regex::Regex,
    pub hash_max_count: usize,
    pub hash_delta_subject_count: usize,
    pub hash_min_address_count: usize,
    pub folder_tracking: bool,
    pub max_folder_rules: u32,
    pub unresolve_recipients_on_multiple_match: bool,
    pub ignore_internal_email: bool,
    /// Lower-cased.
    pub tracking_categories: Vec<String>,
    /// The same as the organization writes them, for people to read.
    pub tracking_category_names: Vec<String>,
    pub cutoff: Option<i64>,
    /// The organization's floor under any scheduled synchronization of a mailbox.
    pub min_sync_interval: std::time::Duration,
    pub settings: OrgDbOrgSettings,
}

impl Org {
    pub fn is_tracking_category(&self, name: &str) -> bool {
        let name = name.trim();
        if name.is_ascii() {
            return self
                .tracking_categories
                .iter()
                .any(|c| c.eq_ignore_ascii_case(name));
        }
        let lowered = name.to_lowercase();
        self.tracking_categories.contains(&lowered)
    }
}

/// High bit set: an index into `Directory::shared_addresses`; else the one record.
const MANY: u32 = 1 << 31;

/// The whole directory, immutable; swapped as one.
pub struct Directory {
    org: Org,
    users: Vec<User>,
    queues: Vec<Queue>,
    mailboxes: Vec<MailboxEntry>,
    records: Vec<Record>,
    entity_names: Vec<Box<str>>,
    keyer: Keyer,
    by_address: KeyMap<u32>,
    shared_addresses: Vec<Box<[u32]>>,
    principals: KeyMap<u32>,
    names: String,
    x500: Map<Box<str>, Box<str>>,
    tracked: TrackedIndex,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("users", &self.users.len())
            .field("queues", &self.queues.len())
            .field("mailboxes", &self.mailboxes.len())
            .field("records", &self.records.len())
            .field("tracked_emails", &self.tracked.len())
            .finish()
    }
}

/// Counts, for metrics and logs.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct DirectoryCounts {
    pub users: usize,
    pub queues: usize,
    pub mailboxes: usize,
    pub folder_rules: usize,
    pub records: usize,
    pub tracked_emails: usize,
}

impl std::fmt::Display for DirectoryCounts {
    /// `4 users, 1 queue, 4 mailboxes, 1 folder rule, 33 records, 2 tracked emails`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [
            (self.users, "user", "users"),
            (self.queues, "queue", "queues"),
            (self.mailboxes, "mailbox", "mailboxes"),
            (self.folder_rules, "folder rule", "folder rules"),
            (self.records, "record", "records"),
            (self.tracked_emails, "tracked email", "tracked emails"),
        ];
        for (i, (n, one, many)) in parts.into_iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{n} {}", if n == 1 { one } else { many })?;
        }
        Ok(())
    }
}

impl Directory {
    pub fn org(&self) -> &Org {
        &self.org
    }

    pub fn counts(&self) -> DirectoryCounts {
        DirectoryCounts {
            users: self.users.len(),
            queues: self.queues.len(),
            mailboxes: self.mailboxes.len(),
            folder_rules: self.mailboxes.iter().map(MailboxEntry::rule_count).sum(),
            records: self.records.len(),
            tracked_emails: self.tracked.len(),
        }
    }

    /// The mailbox an observation's owner names: its address, the owner's address, sign-in name
    /// or Entra object id, or a Windows alias of the sign-in name (lower-cased; see
    /// [`DirectorySettings`]).
    pub fn mailbox(&self, principal: &str) -> Option<&MailboxEntry> {
        let key = lower(principal);
        let key = key.strip_prefix("smtp:").unwrap_or(&key);
        self.principals
            .get(&self.keyer.key(key))
            .map(|&i| &self.mailboxes[i as usize])
    }

    /// The Entra object id of the user who owns a mailbox (queues have none).
    pub fn owner_object_id(&self, mailbox: &str) -> Option<Uuid> {
        match self.mailbox(mailbox)?.owner {
            Owner::User(u) => self.user(u).aad_object_id,
            Owner::Queue(_) => None,
        }
    }

    pub fn user(&self, index: u32) -> &User {
        &self.users[index as usize]
    }

    pub fn queue(&self, index: u32) -> &Queue {
        &self.queues[index as usize]
    }

    pub fn record(&self, index: u32) -> &Record {
        &self.records[index as usize]
    }

    /// The table's logical name of a record.
    pub fn entity_name(&self, record: &Record) -> &str {
        &self.entity_names[record.entity_name as usize]
    }

    /// Every row with this (lower-cased) address, in resolution precedence.
    pub fn rows_with_address(&self, address: &str) -> &[u32] {
        self.rows_with_key(self.address_key(address))
    }

    /// The key [`Directory::rows_with_address`] looks an address up by: for a caller that
    /// hashes all of a message's addresses first and then looks them up one after the other,
    /// so that their cache misses overlap.
    pub fn address_key(&self, address: &str) -> Key {
        self.keyer.key(address)
    }

    /// The records with an address, by its [`Directory::address_key`].
    pub fn rows_with_key(&self, key: Key) -> &[u32] {
        match self.by_address.get(&key) {
            Some(i) if i & MANY != 0 => &self.shared_addresses[(i & !MANY) as usize],
            Some(i) => std::slice::from_ref(i),
            None => &[],
        }
    }

    /// Every mailbox the directory knows.
    pub fn mailbox_entries(&self) -> &[MailboxEntry] {
        &self.mailboxes
    }

    /// The mailboxes' SMTP addresses, lower case (entries without one are left out): what
    /// the catch-up sweep reads and a fleet leases.
    pub fn mailbox_addresses(&self) -> impl Iterator<Item = String> + '_ {
        self.mailboxes
            .iter()
            .map(|m| m.address.to_ascii_lowercase())
            .filter(|a| a.contains('@'))
    }

    /// The Exchange ids of the folders a mailbox's tracking rules name.
    pub fn tracked_folder_ids<'d>(
        &'d self,
        mailbox: &'d MailboxEntry,
    ) -> impl Iterator<Item = &'d str> {
        mailbox.rules.iter().map(|r| {
            let (at, len) = (r.folder_id.0 as usize, r.folder_id.1 as usize);
            &self.names[at..at + len]
        })
    }

    /// The tracking rule of a folder in a mailbox (the id normalised with
    /// [`normalize_exchange_id`]).
    pub fn rule(&self, mailbox: &MailboxEntry, folder_id: &str) -> Option<FolderRule<'_>> {
        if mailbox.rules.is_empty() {
            return None;
        }
        let r = mailbox.find_rule(self.keyer.key(folder_id))?;
        Some(FolderRule {
            name: RuleName::Arena {
                names: &self.names,
                at: r.name.0,
                len: r.name.1,
            },
            regarding: r.regarding.map(|l| self.expand(l)),
        })
    }

    fn expand(&self, l: CompactLookup) -> Lookup {
        Lookup::new(&self.entity_names[l.entity as usize], l.id)
    }

    /// A record's parent (a contact's company, an account's or lead's parent account).
    pub fn parent(&self, record: &Record) -> Option<Lookup> {
        record.parent.map(|l| self.expand(l))
    }

    /// The SMTP address behind an X.500 address.
    pub fn smtp_for_x500(&self, x500: &str) -> Option<&str> {
        let key = lower(x500);
        let key = key.strip_prefix("x500:").unwrap_or(&key);
        self.x500.get(key).map(|s| &**s)
    }

    pub fn tracked(&self) -> &TrackedIndex {
        &self.tracked
    }

    /// The address-book matching options of a user; an option not set matches every record
    /// (as do queues, which have none). The options belong to the legacy Outlook client and
    /// have no confirmed Dataverse column, while server-side sync resolves recipients to every
    /// match (docs/domain.md §4.2): only a deployment that sets them on purpose narrows.
    pub fn matching(&self, owner: Owner) -> (ContactMatching, OtherMatching) {
        match owner {
            Owner::User(u) => {
                let s = &self.users[u as usize].settings;
                (
                    s.addressbookcontactmatching.unwrap_or(ContactMatching::All),
                    s.addressbookothermatching.unwrap_or(OtherMatching::All),
                )
            }
            Owner::Queue(_) => (ContactMatching::All, OtherMatching::All),
        }
    }

    /// Validates and indexes a document with the default settings (no configured NTLM
    /// domains): for tests, tools and the empty directory.
    pub fn build(doc: DirectoryDocument) -> Result<Directory, InvalidDirectory> {
        Directory::build_with(doc, &DirectorySettings::default())
    }

    /// Validates and indexes a document, with the names `settings` adds.
    pub fn build_with(
        mut doc: DirectoryDocument,
        settings: &DirectorySettings,
    ) -> Result<Directory, InvalidDirectory> {
        settings.overlay.apply(&mut doc);
        builder::Builder::new().build(doc, settings)
    }
}

/// Which records a user's address-book options let a recipient match.
pub fn recipient_may_match(
    record: &Record,
    owner_id: Option<Uuid>,
    matching: (ContactMatching, OtherMatching),
) -> bool {
    let owned = owner_id.is_some() && record.owner() == owner_id;
    match record.kind {
        EntityKind::Systemuser | EntityKind::Queue => true,
        EntityKind::Contact => matching.0 == ContactMatching::All || owned,
        _ => match matching.1 {
            OtherMatching::None => false,
            OtherMatching::Mine => owned,
            OtherMatching::All => true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Directory {
        super::super::file::parse_and_build(super::super::file::EMBEDDED_EXAMPLE, "example", false)
            .unwrap()
    }

    #[test]
    fn records_keep_their_parent_for_delivery() {
        let dir = example();
        let pat = dir.rows_with_address("pat.buyer@fabrikam.example");
        assert_eq!(pat.len(), 1);
        let parent = dir.parent(dir.record(pat[0])).unwrap();
        assert_eq!(parent.entity, "account");
        assert_eq!(
            parent.id,
            Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_00c2)
        );
    }

    #[test]
    fn a_folder_rule_is_found_by_its_whole_key_when_prefixes_collide() {
        let rule = |first: u8, last: u8, name: u32| StoredRule {
            folder: Key({
                let mut k = [first; 16];
                k[15] = last;
                k
            }),
            name: (name, 0),
            folder_id: (0, 0),
            regarding: None,
        };
        // Two rules share their first eight bytes; the lookup must tell them apart.
        let rules = vec![rule(1, 1, 10), rule(1, 2, 20), rule(3, 3, 30)];
        let mailbox = MailboxEntry {
            id: Uuid::nil(),
            address: "m@example.com".into(),
            owner: Owner::User(0),
            cutoff: None,
            delivery_method: 2,
            syncs_items: false,
            rule_keys: rules.iter().map(|r| r.folder.prefix()).collect(),
            rules,
        };
        let found = |r: &StoredRule| mailbox.find_rule(r.folder).map(|f| f.name.0);
        assert_eq!(found(&rule(1, 2, 0)), Some(20));
        assert_eq!(found(&rule(1, 1, 0)), Some(10));
        assert_eq!(found(&rule(3, 3, 0)), Some(30));
        assert_eq!(found(&rule(1, 3, 0)), None, "same prefix, another key");
        assert_eq!(found(&rule(2, 2, 0)), None);
    }

    #[test]
    fn a_folder_rule_reads_its_name_and_regarding_from_the_directory() {
        let dir = example();
        let (mailbox, rule) = dir
            .mailboxes
            .iter()
            .find_map(|m| Some((m, dir.rule(m, "AAMkADEzTrackedFolderAAA=")?)))
            .unwrap();
        assert_eq!(rule.name(), Some("Fabrikam deal"));
        let regarding = rule.regarding.unwrap();
        assert_eq!(regarding.entity, "account");
        assert_eq!(
            regarding.id,
            Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_00c2)
        );
        assert!(dir.rule(mailbox, "AAMkADEzSomeOtherFolder=").is_none());
    }
}
