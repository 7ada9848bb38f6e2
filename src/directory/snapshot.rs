//! The immutable, indexed directory the rules read: built once from a [`DirectoryDocument`],
//! validated (every problem names the row and column and says how to fix it), then swapped in
//! whole. Lookups take lower-cased addresses and never allocate.

use std::collections::HashMap;

use uuid::Uuid;

use super::model::{
    ContactMatching, DirectoryDocument, Lookup, OrgDbOrgSettings, OtherMatching, UserSettings,
};
use crate::common::text::normalize_message_id;
use crate::common::time::timestamp_seconds;

pub type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A 128-bit keyed hash of a string (XXH3 with a per-process random seed). Indexes keep these
/// instead of the strings: 16 bytes per key, and a lookup never compares strings. With 128 bits
/// an accidental collision among millions of keys has a probability around 10⁻²⁶, and the
/// random seed keeps anyone from aiming for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key([u8; 16]);

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(low));
    }
}

/// The key is already a uniform hash: the map uses 64 bits of it as they are.
#[derive(Default)]
pub struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

pub type KeyMap<V> = HashMap<Key, V, std::hash::BuildHasherDefault<PassThrough>>;

/// Makes keys; one seed per directory build.
#[derive(Debug, Clone, Copy)]
pub struct Keyer(u64);

impl Keyer {
    fn random() -> Keyer {
        Keyer(rand::random())
    }

    pub fn key(&self, s: &str) -> Key {
        Key(xxhash_rust::xxh3::xxh3_128_with_seed(s.as_bytes(), self.0).to_le_bytes())
    }
}

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

fn invalid(
    at: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> InvalidDirectory {
    InvalidDirectory {
        at: at.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Tables that hold e-mail addresses, in sender-resolution precedence (domain.md §4.1).
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
    regarding: Option<CompactLookup>,
}

/// A folder tracking rule as the rules see it.
#[derive(Debug, Clone)]
pub struct FolderRule<'a> {
    pub name: Option<&'a str>,
    pub regarding: Option<Lookup>,
}

#[derive(Debug, Clone)]
pub struct MailboxEntry {
    pub id: Uuid,
    pub address: Box<str>,
    pub owner: Owner,
    /// Seconds since the epoch; mail received earlier is history.
    pub cutoff: Option<i64>,
    pub delivery_method: u8,
    /// Sorted by folder key.
    rules: Vec<StoredRule>,
}

impl MailboxEntry {
    pub fn rule_count(&self) -> usize {
        self.rules.len()
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
    pub cutoff: Option<i64>,
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

/// An email already in the CRM.
#[derive(Debug, Clone)]
pub struct TrackedRow {
    pub activityid: Uuid,
    pub outgoing: bool,
    pub regarding: Option<Lookup>,
    pub owner: Option<Uuid>,
}

#[derive(Debug, Clone)]
struct SmartRow {
    subject: Box<[u64]>,
    addresses: Box<[u64]>,
}

/// The index of emails already in the CRM, by every correlation key.
#[derive(Debug, Default)]
pub struct TrackedIndex {
    rows: Vec<TrackedRow>,
    /// [incoming, outgoing] row per Message-ID.
    by_message_id: Map<Box<str>, [Option<u32>; 2]>,
    by_token: Map<Box<str>, u32>,
    by_conversation_index: Map<Box<[u8]>, u32>,
    by_conversation_id: Map<Box<str>, u32>,
    smart: Vec<Option<SmartRow>>,
    smart_by_address: Map<u64, Vec<u32>>,
}

impl TrackedIndex {
    pub fn by_message_id(&self, message_id: &str, outgoing: Option<bool>) -> Option<&TrackedRow> {
        let both = self.by_message_id.get(message_id)?;
        let pick = match outgoing {
            Some(o) => both[usize::from(o)],
            None => both[0].or(both[1]),
        };
        pick.map(|i| &self.rows[i as usize])
    }

    pub fn by_token(&self, token: &str) -> Option<&TrackedRow> {
        self.by_token.get(token).map(|&i| &self.rows[i as usize])
    }

    pub fn by_conversation_index(&self, key: &[u8]) -> Option<&TrackedRow> {
        self.by_conversation_index
            .get(key)
            .map(|&i| &self.rows[i as usize])
    }

    pub fn by_conversation_id(&self, id: &str) -> Option<&TrackedRow> {
        self.by_conversation_id
            .get(id)
            .map(|&i| &self.rows[i as usize])
    }

    /// Smart matching (domain.md §3.3): same subject hashes (within the allowed delta) and at
    /// least the minimum count of common address hashes. Candidates come from shared addresses.
    pub fn smart_match(
        &self,
        org: &Org,
        subject: &[u64],
        addresses: &[u64],
    ) -> Option<&TrackedRow> {
        const MAX_CANDIDATES: usize = 4096;
        let mut seen = 0usize;
        let mut best: Option<u32> = None;
        for a in addresses {
            for &row in self
                .smart_by_address
                .get(a)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                seen += 1;
                if seen > MAX_CANDIDATES {
                    return best.map(|i| &self.rows[i as usize]);
                }
                let Some(Some(s)) = self.smart.get(row as usize) else {
                    continue;
                };
                if best.is_some_and(|b| b <= row) {
                    continue;
                }
                if sorted_difference(&s.subject, subject) <= org.hash_delta_subject_count
                    && s.subject.len().abs_diff(subject.len()) <= org.hash_delta_subject_count
                    && sorted_common(&s.addresses, addresses) >= org.hash_min_address_count
                {
                    best = Some(row);
                }
            }
        }
        best.map(|i| &self.rows[i as usize])
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

fn sorted_common(a: &[u64], b: &[u64]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

fn sorted_difference(a: &[u64], b: &[u64]) -> usize {
    a.len() + b.len() - 2 * sorted_common(a, b)
}

/// Subject word hashes for smart matching: leading noise (`RE:`, `FW: RE:` …) removed by the
/// org's regex, case-insensitive words, unique, sorted, at most `hash_max_count`.
pub fn subject_hashes(org: &Org, subject: &str) -> Vec<u64> {
    let stripped = match org.hash_filter.find(subject) {
        Some(m) if m.start() == 0 => &subject[m.end()..],
        _ => subject,
    };
    let mut out: Vec<u64> = stripped
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| fnv1a(w.to_lowercase().as_bytes()))
        .collect();
    out.sort_unstable();
    out.dedup();
    out.truncate(org.hash_max_count);
    out
}

/// Address hashes for smart matching: lower-cased, unique, sorted, at most `hash_max_count`.
pub fn address_hashes<'a>(org: &Org, addresses: impl Iterator<Item = &'a str>) -> Vec<u64> {
    let mut out: Vec<u64> = addresses
        .map(|a| fnv1a(a.trim().to_lowercase().as_bytes()))
        .collect();
    out.sort_unstable();
    out.dedup();
    out.truncate(org.hash_max_count);
    out
}

/// A stable hash (the same in every process), so decisions are deterministic.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The thread key of a conversation index: its first 22 bytes (header plus thread GUID).
pub fn conversation_key(index: &str) -> Vec<u8> {
    use base64::Engine as _;
    match base64::engine::general_purpose::STANDARD.decode(index.trim()) {
        Ok(mut bytes) if !bytes.is_empty() => {
            bytes.truncate(22);
            bytes
        }
        _ => {
            let raw = index.trim().as_bytes();
            raw[..raw.len().min(64)].to_vec()
        }
    }
}

/// Exchange ids in one spelling: Graph (REST) ids are the URL-safe base64 of the EWS id, so
/// `-`/`_` become `+`/`/`. (Unconfirmed for every id format; `translateExchangeIds` is the
/// authority.) Ids are otherwise case-sensitive and kept as they are.
pub fn normalize_exchange_id(id: &str) -> std::borrow::Cow<'_, str> {
    let id = id.trim();
    if id.bytes().any(|b| b == b'-' || b == b'_') {
        std::borrow::Cow::Owned(
            id.chars()
                .map(|c| match c {
                    '-' => '+',
                    '_' => '/',
                    c => c,
                })
                .collect(),
        )
    } else {
        std::borrow::Cow::Borrowed(id)
    }
}

/// Lower-cases an address for lookups (ASCII fast path).
pub fn lower(address: &str) -> std::borrow::Cow<'_, str> {
    let a = address.trim();
    if a.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii()) {
        std::borrow::Cow::Owned(a.to_lowercase())
    } else {
        std::borrow::Cow::Borrowed(a)
    }
}

/// The tracking-token prefixes of `organization.trackingprefix` (current and older ones,
/// separated by `;` or `,`), upper-cased.
pub fn token_prefixes(trackingprefix: &str) -> Vec<String> {
    trackingprefix
        .split([';', ','])
        .map(|p| p.trim().to_ascii_uppercase())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Finds a tracking token (`<prefix>:<digits>`) at the end of a subject, allowing the brackets
/// and spaces mail clients add. Returns it upper-cased.
pub fn tracking_token(prefixes: &[String], subject: &str) -> Option<String> {
    let s = subject
        .trim_end()
        .trim_end_matches([']', ')', '>'])
        .trim_end();
    let digits_start = s
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_digit())
        .last()
        .map(|(i, _)| i)?;
    // Base, user and counter digits together are at most 1 + 10 + 9 … 20 is generous.
    if s.len() - digits_start > 20 {
        return None;
    }
    let before = s[..digits_start].strip_suffix(':')?;
    prefixes.iter().find_map(|p| {
        let start = before.len().checked_sub(p.len())?;
        let candidate = before.get(start..)?;
        let boundary = before[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        (boundary && candidate.eq_ignore_ascii_case(p))
            .then(|| format!("{p}:{}", &s[digits_start..]))
    })
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
    /// or Entra object id (lower-cased).
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
        match self.by_address.get(&self.keyer.key(address)) {
            Some(i) if i & MANY != 0 => &self.shared_addresses[(i & !MANY) as usize],
            Some(i) => std::slice::from_ref(i),
            None => &[],
        }
    }

    /// The tracking rule of a folder in a mailbox (the id normalised with
    /// [`normalize_exchange_id`]).
    pub fn rule(&self, mailbox: &MailboxEntry, folder_id: &str) -> Option<FolderRule<'_>> {
        let key = self.keyer.key(folder_id);
        let r = mailbox
            .rules
            .binary_search_by(|r| r.folder.0.cmp(&key.0))
            .ok()
            .map(|i| &mailbox.rules[i])?;
        let (at, len) = (r.name.0 as usize, r.name.1 as usize);
        Some(FolderRule {
            name: (len > 0).then(|| &self.names[at..at + len]),
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

    /// The address-book matching options of a user (defaults for queues).
    pub fn matching(&self, owner: Owner) -> (ContactMatching, OtherMatching) {
        match owner {
            Owner::User(u) => {
                let s = &self.users[u as usize].settings;
                (s.addressbookcontactmatching, s.addressbookothermatching)
            }
            Owner::Queue(_) => (ContactMatching::All, OtherMatching::All),
        }
    }

    /// Validates and indexes a document.
    pub fn build(doc: DirectoryDocument) -> Result<Directory, InvalidDirectory> {
        Builder::new().build(doc)
    }
}

fn parse_time(at: &str, value: Option<&String>) -> Result<Option<i64>, InvalidDirectory> {
    match value {
        None => Ok(None),
        Some(v) => timestamp_seconds(v).map(Some).ok_or_else(|| {
            invalid(
                at,
                format!("`{v}` is not a timestamp"),
                "write an RFC 3339 time such as 2026-01-31T00:00:00Z",
            )
        }),
    }
}

struct Builder {
    keyer: Keyer,
    records: Vec<Record>,
    /// Parallel to `records`, for ordering rows that share an address; dropped after the build.
    created_on: Vec<i64>,
    entity_names: Vec<Box<str>>,
    entity_index: Map<Box<str>, u16>,
    /// (address key, record) pairs, grouped after sorting.
    addresses: Vec<(Key, u32)>,
    names: String,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            keyer: Keyer::random(),
            records: Vec::new(),
            created_on: Vec::new(),
            entity_names: Vec::new(),
            entity_index: Map::default(),
            addresses: Vec::new(),
            names: String::new(),
        }
    }

    fn entity_index(&mut self, name: &str) -> u16 {
        if let Some(&i) = self.entity_index.get(name) {
            return i;
        }
        let i = u16::try_from(self.entity_names.len()).unwrap_or(u16::MAX);
        self.entity_names.push(name.into());
        self.entity_index.insert(name.into(), i);
        i
    }

    fn compact(&mut self, l: &Lookup) -> CompactLookup {
        CompactLookup {
            entity: self.entity_index(&l.entity),
            id: l.id,
        }
    }

    /// Adds a name to the arena (cut at 255 bytes, on a character boundary).
    fn name(&mut self, name: Option<&str>) -> (u32, u16) {
        let Some(mut n) = name.map(str::trim).filter(|n| !n.is_empty()) else {
            return (0, 0);
        };
        if n.len() > 255 {
            let mut cut = 255;
            while !n.is_char_boundary(cut) {
                cut -= 1;
            }
            n = &n[..cut];
        }
        let at = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push_str(n);
        (at, n.len() as u16)
    }

    /// Adds a row with e-mail addresses. `at` names the row, for errors only.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        at: &dyn Fn() -> String,
        entity: &str,
        id: Uuid,
        owner: Option<Uuid>,
        active: bool,
        created_on: Option<&String>,
        parent: Option<Lookup>,
        internal: Option<u32>,
        addresses: &[Option<&String>],
    ) -> Result<(), InvalidDirectory> {
        let created_on = match created_on {
            None => i64::MAX,
            Some(_) => parse_time(&format!("{}.createdon", at()), created_on)?.unwrap_or(i64::MAX),
        };
        let index = u32::try_from(self.records.len())
            .ok()
            .filter(|i| i & MANY == 0)
            .ok_or_else(|| invalid(at(), "too many records (over 2^31)", "split the directory"))?;
        let entity_name = self.entity_index(entity);
        let parent = parent.map(|p| self.compact(&p));
        self.records.push(Record {
            kind: EntityKind::from_logical(entity),
            active,
            entity_name,
            internal: internal.unwrap_or(u32::MAX),
            id,
            owner: owner.unwrap_or(Uuid::nil()),
            parent,
        });
        self.created_on.push(created_on);
        let start = self.addresses.len();
        for a in addresses.iter().flatten() {
            let a = lower(a);
            if a.is_empty() {
                continue;
            }
            if !a.contains('@') {
                return Err(invalid(
                    at(),
                    "an e-mail address column holds a value without `@`",
                    "correct or remove the address",
                ));
            }
            let key = self.keyer.key(&a);
            // The same address in two columns of one row counts once.
            if !self.addresses[start..].iter().any(|(k, _)| *k == key) {
                self.addresses.push((key, index));
            }
        }
        Ok(())
    }

    /// Groups the (address, record) pairs into the index, each group in resolution precedence.
    fn address_index(&mut self) -> (KeyMap<u32>, Vec<Box<[u32]>>) {
        let records = &self.records;
        let created = &self.created_on;
        let mut pairs = std::mem::take(&mut self.addresses);
        pairs.sort_unstable_by_key(|&(k, r)| {
            let rec = &records[r as usize];
            (k.0, rec.kind.rank(), created[r as usize], rec.id)
        });
        let mut map = KeyMap::with_capacity_and_hasher(pairs.len(), Default::default());
        let mut shared = Vec::new();
        let mut i = 0;
        while i < pairs.len() {
            let key = pairs[i].0;
            let mut j = i + 1;
            while j < pairs.len() && pairs[j].0 == key {
                j += 1;
            }
            let value = if j - i == 1 {
                pairs[i].1
            } else {
                shared.push(pairs[i..j].iter().map(|&(_, r)| r).collect::<Box<[u32]>>());
                (shared.len() as u32 - 1) | MANY
            };
            map.insert(key, value);
            i = j;
        }
        map.shrink_to_fit();
        (map, shared)
    }

    fn build(mut self, doc: DirectoryDocument) -> Result<Directory, InvalidDirectory> {
        let org = build_org(&doc)?;

        // Users and their options.
        let mut users = Vec::with_capacity(doc.systemusers.len());
        let mut users_by_id: Map<Uuid, u32> = Map::default();
        let mut x500: Map<Box<str>, Box<str>> = Map::default();
        for (i, u) in doc.systemusers.iter().enumerate() {
            let at = format!("systemusers[{i}]");
            let index = u32::try_from(i).map_err(|_| invalid(&at, "too many users", "split"))?;
            if users_by_id.insert(u.systemuserid, index).is_some() {
                return Err(invalid(
                    format!("{at}.systemuserid"),
                    "the same user id appears twice",
                    "keep one row per user",
                ));
            }
            users.push(User {
                id: u.systemuserid,
                aad_object_id: u.azureactivedirectoryobjectid,
                active: !u.isdisabled,
                settings: UserSettings {
                    systemuserid: u.systemuserid,
                    ..UserSettings::default()
                },
            });
            self.add(
                &|| format!("systemusers[{i}]"),
                "systemuser",
                u.systemuserid,
                None,
                !u.isdisabled,
                u.createdon.as_ref(),
                None,
                Some(index),
                &[
                    u.internalemailaddress.as_ref(),
                    u.personalemailaddress.as_ref(),
                ],
            )?;
            if let Some(smtp) = &u.internalemailaddress {
                for x in &u.x500addresses {
                    let key = lower(x);
                    let key = key.strip_prefix("x500:").unwrap_or(&key);
                    x500.insert(key.into(), lower(smtp).into());
                }
            }
        }
        for (i, s) in doc.usersettingscollection.iter().enumerate() {
            let at = format!("usersettingscollection[{i}]");
            let Some(&u) = users_by_id.get(&s.systemuserid) else {
                return Err(invalid(
                    format!("{at}.systemuserid"),
                    "names no user in `systemusers`",
                    "add the user or remove the settings row",
                ));
            };
            if s.incomingemailfilteringmethod > 4 {
                return Err(invalid(
                    format!("{at}.incomingemailfilteringmethod"),
                    format!(
                        "{} is not a filtering method",
                        s.incomingemailfilteringmethod
                    ),
                    "use 0 (all), 1 (responses to CRM email), 2 (leads, contacts, accounts), 3 (e-mail-enabled records) or 4 (none)",
                ));
            }
            if s.autocreatecontactonpromote > 2 {
                return Err(invalid(
                    format!("{at}.autocreatecontactonpromote"),
                    format!(
                        "{} is not an auto-create choice",
                        s.autocreatecontactonpromote
                    ),
                    "use 0 (none), 1 (contacts) or 2 (leads)",
                ));
            }
            users[u as usize].settings = s.clone();
        }

        let mut queues = Vec::with_capacity(doc.queues.len());
        let mut queues_by_id: Map<Uuid, u32> = Map::default();
        for (i, q) in doc.queues.iter().enumerate() {
            let at = format!("queues[{i}]");
            if q.incomingemailfilteringmethod > 4 {
                return Err(invalid(
                    format!("{at}.incomingemailfilteringmethod"),
                    format!(
                        "{} is not a filtering method",
                        q.incomingemailfilteringmethod
                    ),
                    "use 0, 1, 2, 3 or 4 (see README: directory)",
                ));
            }
            let index = u32::try_from(i).map_err(|_| invalid(&at, "too many queues", "split"))?;
            queues_by_id.insert(q.queueid, index);
            queues.push(Queue {
                id: q.queueid,
                filter: q.incomingemailfilteringmethod,
                active: q.statecode == 0,
                owner: q.ownerid,
            });
            self.add(
                &|| format!("queues[{i}]"),
                "queue",
                q.queueid,
                q.ownerid,
                q.statecode == 0,
                q.createdon.as_ref(),
                None,
                Some(index),
                &[q.emailaddress.as_ref()],
            )?;
        }

        // Mailboxes and their folder rules.
        let mut mailboxes = Vec::with_capacity(doc.mailboxes.len());
        let mut mailboxes_by_id: Map<Uuid, u32> = Map::default();
        let mut principals: KeyMap<u32> = KeyMap::default();
        for (i, m) in doc.mailboxes.iter().enumerate() {
            let at = format!("mailboxes[{i}]");
            let index =
                u32::try_from(i).map_err(|_| invalid(&at, "too many mailboxes", "split"))?;
            let owner = match &*m.regardingobjectid.entity {
                "systemuser" => users_by_id
                    .get(&m.regardingobjectid.id)
                    .map(|&u| Owner::User(u)),
                "queue" => queues_by_id
                    .get(&m.regardingobjectid.id)
                    .map(|&q| Owner::Queue(q)),
                other => {
                    return Err(invalid(
                        format!("{at}.regardingobjectid.entity"),
                        format!("a mailbox belongs to a systemuser or a queue, not `{other}`"),
                        "use entity = \"systemuser\" or \"queue\"",
                    ));
                }
            }
            .ok_or_else(|| {
                invalid(
                    format!("{at}.regardingobjectid.id"),
                    "names no row in systemusers or queues",
                    "add the owner or correct the id",
                )
            })?;
            if m.incomingemaildeliverymethod > 3 {
                return Err(invalid(
                    format!("{at}.incomingemaildeliverymethod"),
                    format!("{} is not a delivery method", m.incomingemaildeliverymethod),
                    "use 0 (none), 1 (Outlook), 2 (server-side synchronization) or 3 (forward mailbox)",
                ));
            }
            let address = lower(&m.emailaddress).into_owned();
            if !address.contains('@') {
                return Err(invalid(
                    format!("{at}.emailaddress"),
                    "is not an e-mail address",
                    "write the mailbox's primary SMTP address",
                ));
            }
            let cutoff = parse_time(
                &format!("{at}.processemailreceivedafter"),
                m.processemailreceivedafter.as_ref(),
            )?;
            let cutoff = match (cutoff, org.cutoff) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            mailboxes_by_id.insert(m.mailboxid, index);
            if principals.insert(self.keyer.key(&address), index).is_some() {
                return Err(invalid(
                    format!("{at}.emailaddress"),
                    "two mailboxes have the same address",
                    "keep one mailbox row per address",
                ));
            }
            mailboxes.push(MailboxEntry {
                id: m.mailboxid,
                address: address.into(),
                owner,
                cutoff,
                delivery_method: m.incomingemaildeliverymethod,
                rules: Vec::new(),
            });
        }
        // A user's other names find their mailbox too (mailbox addresses win on a clash).
        let mut mailbox_of_user: Map<u32, usize> = Map::default();
        for (m, mailbox) in mailboxes.iter().enumerate() {
            if let Owner::User(u) = mailbox.owner {
                mailbox_of_user.entry(u).or_insert(m);
            }
        }
        for (i, u) in doc.systemusers.iter().enumerate() {
            let Some(&mailbox) = mailbox_of_user.get(&(i as u32)) else {
                continue;
            };
            let names = [
                u.internalemailaddress.clone(),
                u.domainname.clone(),
                u.azureactivedirectoryobjectid.map(|o| o.to_string()),
            ];
            for name in names.into_iter().flatten() {
                principals
                    .entry(self.keyer.key(&lower(&name)))
                    .or_insert(mailbox as u32);
            }
        }
        for (i, f) in doc.mailboxtrackingfolders.iter().enumerate() {
            let at = format!("mailboxtrackingfolders[{i}]");
            let Some(&m) = mailboxes_by_id.get(&f.mailboxid) else {
                return Err(invalid(
                    format!("{at}.mailboxid"),
                    "names no row in `mailboxes`",
                    "add the mailbox or correct the id",
                ));
            };
            let mailbox = &mailboxes[m as usize];
            if matches!(mailbox.owner, Owner::Queue(_)) {
                return Err(invalid(
                    format!("{at}.mailboxid"),
                    "folder-level tracking is not supported for queue mailboxes",
                    "remove the rule, or move it to a user's mailbox",
                ));
            }
            if f.exchangefolderid.trim().is_empty() || f.exchangefolderid.len() > 120 {
                return Err(invalid(
                    format!("{at}.exchangefolderid"),
                    "must be an Exchange folder id of 1 to 120 characters",
                    "copy the folder's EWS id",
                ));
            }
            if mailbox.rules.len() as u32 >= org.max_folder_rules {
                return Err(invalid(
                    format!("{at}.mailboxid"),
                    format!(
                        "this mailbox has more folder tracking rules than the organisation allows ({})",
                        org.max_folder_rules
                    ),
                    "remove rules or raise organization.maxfolderbasedtrackingmappings (at most 25)",
                ));
            }
            let folder = self.keyer.key(&normalize_exchange_id(&f.exchangefolderid));
            if mailbox.rules.iter().any(|r| r.folder == folder) {
                return Err(invalid(
                    format!("{at}.exchangefolderid"),
                    "this folder already has a tracking rule in this mailbox",
                    "keep one rule per folder",
                ));
            }
            let name = self.name(f.exchangefoldername.as_deref());
            let regarding = f.regardingobjectid.as_ref().map(|l| self.compact(l));
            mailboxes[m as usize].rules.push(StoredRule {
                folder,
                name,
                regarding,
            });
        }
        for m in &mut mailboxes {
            m.rules.sort_by_key(|r| r.folder.0);
            m.rules.shrink_to_fit();
        }
        self.names.shrink_to_fit();

        // Records.
        for (i, c) in doc.contacts.iter().enumerate() {
            self.add(
                &|| format!("contacts[{i}]"),
                "contact",
                c.contactid,
                c.ownerid,
                c.statecode == 0,
                c.createdon.as_ref(),
                c.parentcustomerid.clone(),
                None,
                &[
                    c.emailaddress1.as_ref(),
                    c.emailaddress2.as_ref(),
                    c.emailaddress3.as_ref(),
                ],
            )?;
        }
        for (i, a) in doc.accounts.iter().enumerate() {
            self.add(
                &|| format!("accounts[{i}]"),
                "account",
                a.accountid,
                a.ownerid,
                a.statecode == 0,
                a.createdon.as_ref(),
                a.parentaccountid.map(|id| Lookup {
                    entity: "account".into(),
                    id,
                }),
                None,
                &[
                    a.emailaddress1.as_ref(),
                    a.emailaddress2.as_ref(),
                    a.emailaddress3.as_ref(),
                ],
            )?;
        }
        for (i, l) in doc.leads.iter().enumerate() {
            self.add(
                &|| format!("leads[{i}]"),
                "lead",
                l.leadid,
                l.ownerid,
                l.statecode == 0,
                l.createdon.as_ref(),
                l.parentaccountid.map(|id| Lookup {
                    entity: "account".into(),
                    id,
                }),
                None,
                &[
                    l.emailaddress1.as_ref(),
                    l.emailaddress2.as_ref(),
                    l.emailaddress3.as_ref(),
                ],
            )?;
        }
        for (i, r) in doc.emailenabledrecords.iter().enumerate() {
            let at = format!("emailenabledrecords[{i}]");
            if r.entity.is_empty()
                || !r
                    .entity
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(invalid(
                    format!("{at}.entity"),
                    "must be a table's logical name",
                    "use the lower-case logical name, e.g. equipment or new_vendor",
                ));
            }
            let addresses: Vec<Option<&String>> = r.emailaddresses.iter().map(Some).collect();
            self.add(
                &|| format!("emailenabledrecords[{i}]"),
                &r.entity,
                r.id,
                r.ownerid,
                r.statecode == 0,
                r.createdon.as_ref(),
                None,
                None,
                &addresses,
            )?;
        }

        let tracked = build_tracked(&org, &doc)?;

        let (by_address, shared_addresses) = self.address_index();
        let mut records = self.records;
        records.shrink_to_fit();
        Ok(Directory {
            org,
            users,
            queues,
            mailboxes,
            records,
            entity_names: self.entity_names,
            keyer: self.keyer,
            by_address,
            shared_addresses,
            principals,
            names: self.names,
            x500,
            tracked,
        })
    }
}

fn build_org(doc: &DirectoryDocument) -> Result<Org, InvalidDirectory> {
    let o = &doc.organization;
    if o.organizationid.is_nil() {
        return Err(invalid(
            "organization.organizationid",
            "is missing or the nil id",
            "set it to the Dataverse organization id (it namespaces every CRM id trackgate derives)",
        ));
    }
    if !(1..=10).contains(&o.trackingtokeniddigits) {
        return Err(invalid(
            "organization.trackingtokeniddigits",
            "must be between 1 and 10",
            "use the value from the organization row (default 3)",
        ));
    }
    if !(1..=25).contains(&o.maxfolderbasedtrackingmappings) {
        return Err(invalid(
            "organization.maxfolderbasedtrackingmappings",
            "must be between 1 and 25",
            "use 25, the Dynamics 365 maximum",
        ));
    }
    let token_prefixes = token_prefixes(&o.trackingprefix);
    if token_prefixes.iter().any(|p| p.len() > 20) {
        return Err(invalid(
            "organization.trackingprefix",
            "a prefix is longer than 20 characters",
            "prefixes are 1 to 20 characters, separated by `;`",
        ));
    }
    let hash_filter = regex::RegexBuilder::new(&o.hashfilterkeywords)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            invalid(
                "organization.hashfilterkeywords",
                format!("is not a valid regular expression: {e}"),
                r"use the default ^[\s]*([\w]+\s?:[\s]*)+ or fix the expression",
            )
        })?;
    let cutoff = parse_time(
        "organization.processemailreceivedafter",
        o.processemailreceivedafter.as_ref(),
    )?;
    Ok(Org {
        id: o.organizationid,
        token_prefixes,
        correlation: o.emailcorrelationenabled,
        tracking_tokens: o.usetrackingtokens,
        smart_matching: o.enablesmartmatching,
        hash_filter,
        hash_max_count: o.hashmaxcount.clamp(1, 1000) as usize,
        hash_delta_subject_count: o.hashdeltasubjectcount as usize,
        hash_min_address_count: o.hashminaddresscount.max(1) as usize,
        folder_tracking: o.isfolderbasedtrackingenabled,
        max_folder_rules: o.maxfolderbasedtrackingmappings,
        unresolve_recipients_on_multiple_match: o.unresolveemailaddressifmultiplematch,
        ignore_internal_email: o.ignoreinternalemail,
        tracking_categories: o
            .trackingcategorynames
            .iter()
            .map(|c| c.trim().to_lowercase())
            .filter(|c| !c.is_empty())
            .collect(),
        cutoff,
        settings: o.orgdborgsettings.clone(),
    })
}

fn build_tracked(org: &Org, doc: &DirectoryDocument) -> Result<TrackedIndex, InvalidDirectory> {
    let mut t = TrackedIndex::default();
    for (i, e) in doc.emails.iter().enumerate() {
        let row = u32::try_from(i)
            .map_err(|_| invalid(format!("emails[{i}]"), "too many emails", "split"))?;
        t.rows.push(TrackedRow {
            activityid: e.activityid,
            outgoing: e.directioncode,
            regarding: e.regardingobjectid.clone(),
            owner: e.ownerid,
        });
        if let Some(id) = e.messageid.as_deref().and_then(normalize_message_id) {
            let slot = &mut t.by_message_id.entry(id.into()).or_insert([None, None])
                [usize::from(e.directioncode)];
            slot.get_or_insert(row);
        }
        if let Some(token) = &e.trackingtoken {
            let token = tracking_token(&org.token_prefixes, token).ok_or_else(|| {
                invalid(
                    format!("emails[{i}].trackingtoken"),
                    "is not a tracking token with a known prefix",
                    "write it as <prefix>:<digits>, e.g. CRM:0001001, with a prefix from organization.trackingprefix",
                )
            })?;
            t.by_token.entry(token.into()).or_insert(row);
        }
        if let Some(index) = &e.conversationindex {
            t.by_conversation_index
                .entry(conversation_key(index).into())
                .or_insert(row);
        }
        if let Some(id) = &e.conversationid {
            t.by_conversation_id
                .entry(normalize_exchange_id(id).into())
                .or_insert(row);
        }
        let smart = match (&e.subject, e.addresses.is_empty()) {
            (Some(subject), false) if org.smart_matching => Some(SmartRow {
                subject: subject_hashes(org, subject).into(),
                addresses: address_hashes(org, e.addresses.iter().map(String::as_str)).into(),
            }),
            _ => None,
        };
        if let Some(s) = &smart {
            for a in s.addresses.iter() {
                t.smart_by_address.entry(*a).or_default().push(row);
            }
        }
        t.smart.push(smart);
    }
    Ok(t)
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

    fn prefixes() -> Vec<String> {
        vec!["CRM".into(), "TKT".into()]
    }

    #[test]
    fn tracking_tokens_are_found_at_the_end_of_subjects() {
        let p = prefixes();
        assert_eq!(
            tracking_token(&p, "test 3 today CRM:0001011").as_deref(),
            Some("CRM:0001011")
        );
        assert_eq!(
            tracking_token(&p, "RE: Renewal [crm:0271001]").as_deref(),
            Some("CRM:0271001")
        );
        assert_eq!(tracking_token(&p, "old TKT:12 ").as_deref(), Some("TKT:12"));
        assert_eq!(tracking_token(&p, "CRM:0001 in the middle"), None);
        assert_eq!(tracking_token(&p, "XCRM:0001"), None);
        assert_eq!(tracking_token(&p, "no token 123"), None);
        assert_eq!(tracking_token(&p, ""), None);
    }

    #[test]
    fn graph_ids_normalise_to_ews_ids() {
        assert_eq!(normalize_exchange_id("AAMk-AD_z=="), "AAMk+AD/z==");
        assert_eq!(normalize_exchange_id("AAMk+AD/z=="), "AAMk+AD/z==");
    }

    #[test]
    fn conversation_keys_use_the_thread_header() {
        use base64::Engine as _;
        let mut bytes = vec![1u8; 22];
        let thread = base64::engine::general_purpose::STANDARD.encode(&bytes);
        bytes.extend_from_slice(&[9, 9, 9, 9, 9]);
        let reply = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(conversation_key(&thread), conversation_key(&reply));
    }

    #[test]
    fn records_keep_their_parent_for_delivery() {
        let dir = super::super::file::parse_and_build(
            super::super::file::EMBEDDED_EXAMPLE,
            "example",
            false,
        )
        .unwrap();
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
    fn subject_hashes_ignore_reply_prefixes_and_case() {
        let doc = DirectoryDocument {
            organization: super::super::model::Organization {
                organizationid: Uuid::from_u128(1),
                ..Default::default()
            },
            ..Default::default()
        };
        let org = build_org(&doc).unwrap();
        assert_eq!(
            subject_hashes(&org, "RE: FW: Quote for 40 seats"),
            subject_hashes(&org, "quote FOR 40 seats")
        );
        assert_ne!(
            subject_hashes(&org, "Out of office: quote"),
            subject_hashes(&org, "quote")
        );
    }
}
