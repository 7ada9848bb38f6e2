//! The simulated Exchange's mailbox store: per mailbox a folder tree (distinguished folders and
//! user folders), items (messages, calendar items, contacts, tasks) with ids and change keys, and
//! a change log per folder that sync states point into. Mail flow lives here too: a message sent
//! to a mailbox of the store lands in its Inbox. EWS and Graph both serve from it, so what one
//! protocol writes the other reads.
//!
//! Everything sits behind one mutex: the simulator serves tests and demos, not production load,
//! and one lock keeps every operation atomic the way a real mailbox store is.

pub mod ids;
mod seed;
mod sync;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::broadcast;

pub use ids::{IdKind, decode_id, entry_id_hex, from_entry_id_hex};
pub use ids::{ews_id, rest_id};
pub use seed::{Account, SeedError};
pub use sync::{FolderChange, ItemChange, SyncPage};

/// Distinguished folders every mailbox has: (EWS name, display name, folder class, Graph
/// well-known name). The root's children are the top of the information store.
pub const DISTINGUISHED: &[(&str, &str, &str)] = &[
    ("inbox", "Inbox", "IPF.Note"),
    ("sentitems", "Sent Items", "IPF.Note"),
    ("drafts", "Drafts", "IPF.Note"),
    ("deleteditems", "Deleted Items", "IPF.Note"),
    ("outbox", "Outbox", "IPF.Note"),
    ("junkemail", "Junk Email", "IPF.Note"),
    ("archive", "Archive", "IPF.Note"),
    ("calendar", "Calendar", "IPF.Appointment"),
    ("contacts", "Contacts", "IPF.Contact"),
    ("tasks", "Tasks", "IPF.Task"),
];

/// Bounds on what the store keeps.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    pub items_per_mailbox: usize,
    /// Largest body (text or MIME) of one item.
    pub body_bytes: usize,
    pub folders_per_mailbox: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            items_per_mailbox: 20_000,
            body_bytes: 4 << 20,
            folders_per_mailbox: 500,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("the mailbox {0} does not exist in this store")]
    NoMailbox(String),
    #[error("the specified object was not found in the store")]
    ItemNotFound,
    #[error("the specified folder could not be found in the store")]
    FolderNotFound,
    #[error("the id is malformed")]
    IdMalformed,
    #[error("the mailbox holds its limit of {0} items")]
    MailboxFull(usize),
    #[error("the item's body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("the mailbox holds its limit of {0} folders")]
    TooManyFolders(usize),
    #[error("a folder with this name already exists")]
    FolderExists,
    #[error("access is denied: the item is in another mailbox")]
    AccessDenied,
}

impl StoreError {
    /// The EWS response code for this error.
    pub fn ews_code(&self) -> &'static str {
        match self {
            StoreError::NoMailbox(_) => "ErrorNonExistentMailbox",
            StoreError::ItemNotFound => "ErrorItemNotFound",
            StoreError::FolderNotFound => "ErrorFolderNotFound",
            StoreError::IdMalformed => "ErrorInvalidIdMalformed",
            StoreError::MailboxFull(_) => "ErrorQuotaExceeded",
            StoreError::BodyTooLarge(_) => "ErrorMessageSizeExceeded",
            StoreError::TooManyFolders(_) => "ErrorQuotaExceeded",
            StoreError::FolderExists => "ErrorFolderExists",
            StoreError::AccessDenied => "ErrorAccessDenied",
        }
    }
}

/// An email address with an optional display name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Addr {
    pub name: Option<String>,
    pub address: String,
}

impl Addr {
    /// Reads `Name <address>` or a bare address.
    pub fn parse(text: &str) -> Addr {
        let text = text.trim();
        match (text.rfind('<'), text.ends_with('>')) {
            (Some(open), true) => {
                let name = text[..open].trim().trim_matches('"').trim();
                Addr {
                    name: (!name.is_empty()).then(|| name.to_owned()),
                    address: text[open + 1..text.len() - 1].trim().to_owned(),
                }
            }
            _ => Addr {
                name: None,
                address: text.to_owned(),
            },
        }
    }

    pub fn display(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.address)
    }
}

/// What kind of item: decides the EWS element and the Graph resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message,
    CalendarItem,
    Contact,
    Task,
}

impl Kind {
    pub fn default_class(self) -> &'static str {
        match self {
            Kind::Message => "IPM.Note",
            Kind::CalendarItem => "IPM.Appointment",
            Kind::Contact => "IPM.Contact",
            Kind::Task => "IPM.Task",
        }
    }
}

/// An extended MAPI property as EWS addresses it: a tag, or a property set with a name or id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PropKey {
    /// Lower-case GUID of `PropertySetId`, or the `DistinguishedPropertySetId` name.
    pub set: Option<String>,
    /// `PropertyTag`, normalised to lower-case hex with `0x`.
    pub tag: Option<String>,
    pub name: Option<String>,
    pub id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendedProperty {
    pub key: PropKey,
    pub property_type: String,
    pub value: String,
}

/// One item in a folder. Fields a kind does not use stay empty.
#[derive(Debug, Clone, Default)]
pub struct Item {
    pub key: u64,
    pub id: String,
    pub version: u32,
    pub folder: u64,
    pub kind: Option<Kind>,
    pub item_class: String,
    pub subject: String,
    pub body: String,
    pub body_html: bool,
    pub from: Option<Addr>,
    pub to: Vec<Addr>,
    pub cc: Vec<Addr>,
    pub bcc: Vec<Addr>,
    pub message_id: Option<String>,
    pub in_reply_to: Option<String>,
    pub references: Option<String>,
    pub categories: Vec<String>,
    pub extended: Vec<ExtendedProperty>,
    pub headers: Vec<(String, String)>,
    pub is_read: bool,
    pub is_draft: bool,
    pub importance: Option<String>,
    /// Seconds since the epoch.
    pub received: i64,
    pub sent: Option<i64>,
    pub created: i64,
    pub modified: i64,
    /// Calendar items.
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub location: Option<String>,
    /// Contacts.
    pub given_name: Option<String>,
    pub surname: Option<String>,
    pub company: Option<String>,
    pub emails: Vec<String>,
    /// Tasks.
    pub due: Option<i64>,
    pub status: Option<String>,
    /// Fields the store keeps as written (contacts' phones, addresses and job titles, tasks'
    /// start and completion, …): `Element` for a simple one, `Element/Key` for an indexed
    /// entry, `Element/Key/Part` for a part of a physical address.
    pub extra: BTreeMap<String, String>,
    /// The RFC 822 message as created, when it came as MIME.
    pub mime: Option<Vec<u8>>,
    /// Store sequence number when the item entered its folder (for sync states); the store
    /// sets it on insert.
    pub entered: u64,
}

impl Item {
    pub fn kind(&self) -> Kind {
        self.kind.unwrap_or(Kind::Message)
    }

    pub fn change_key(&self) -> String {
        ids::change_key(self.version)
    }

    /// The conversation this message belongs to: its topic, as Exchange groups threads.
    pub fn conversation_topic(&self) -> &str {
        let mut s = self.subject.trim();
        loop {
            let lower = s.get(..4).map(str::to_ascii_lowercase);
            match lower.as_deref() {
                Some("re: " | "fw: ") => s = s[4..].trim_start(),
                _ => match s.get(..5).map(str::to_ascii_lowercase).as_deref() {
                    Some("fwd: ") => s = s[5..].trim_start(),
                    _ => return s,
                },
            }
        }
    }

    /// The message's Internet headers as a client sees them: the ones it came with, then those
    /// the store's fields stand for.
    pub fn internet_headers(&self) -> Vec<(String, String)> {
        let mut list = self.headers.clone();
        let fields = [
            ("From", self.from.as_ref().map(|a| a.address.clone())),
            ("Subject", Some(self.subject.clone())),
            ("Message-ID", self.message_id.clone()),
            ("In-Reply-To", self.in_reply_to.clone()),
            ("References", self.references.clone()),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                list.push((name.to_owned(), value));
            }
        }
        list
    }

    pub fn conversation_id(&self) -> String {
        ids::conversation_id(self.conversation_topic())
    }

    fn size(&self) -> usize {
        self.body.len() + self.mime.as_ref().map_or(0, Vec::len)
    }
}

#[derive(Debug, Clone)]
pub struct Folder {
    pub key: u64,
    pub id: String,
    pub version: u32,
    pub parent: Option<u64>,
    pub name: String,
    pub distinguished: Option<&'static str>,
    pub class: String,
    /// Store sequence number at creation (for hierarchy sync states).
    created: u64,
}

impl Folder {
    pub fn change_key(&self) -> String {
        ids::change_key(self.version)
    }
}

/// A change in a folder, kept so that sync states can say what happened since.
#[derive(Debug, Clone)]
struct LogEntry {
    seq: u64,
    folder: u64,
    item: u64,
    item_id: String,
    /// `Some(entered)` when the item left the folder: the sequence at which it had entered.
    left: Option<u64>,
}

/// A mailbox: its owner, folders, items and change log.
#[derive(Debug, Clone)]
pub struct Mailbox {
    pub index: u16,
    pub address: String,
    pub name: String,
    pub folders: BTreeMap<u64, Folder>,
    pub items: BTreeMap<u64, Item>,
    log: Vec<LogEntry>,
    root: u64,
}

impl Mailbox {
    /// The owner as an address.
    pub fn identity(&self) -> Addr {
        Addr {
            name: Some(self.name.clone()),
            address: self.address.clone(),
        }
    }

    /// The Top of Information Store, where the mail folders hang.
    pub fn top(&self) -> u64 {
        self.distinguished("msgfolderroot")
            .map_or(self.root, |f| f.key)
    }

    pub fn distinguished(&self, name: &str) -> Option<&Folder> {
        let name = name.to_ascii_lowercase();
        let name = match name.as_str() {
            // Graph's well-known names and EWS's differ for a few folders.
            "sentitems" | "sent items" => "sentitems",
            "deleteditems" | "deleted items" => "deleteditems",
            "junkemail" => "junkemail",
            other => other,
        };
        self.folders
            .values()
            .find(|f| f.distinguished == Some(name))
    }

    pub fn folder_by_id(&self, id: &str) -> Option<&Folder> {
        self.folders.values().find(|f| f.id == id)
    }

    /// Items in a folder, and how many of them are unread.
    pub fn counts(&self, folder: u64) -> (usize, usize) {
        self.items
            .values()
            .filter(|i| i.folder == folder)
            .fold((0, 0), |(total, unread), i| {
                (total + 1, unread + usize::from(!i.is_read))
            })
    }

    /// Items of a folder, newest received first (the order Outlook and Graph list them).
    pub fn items_in(&self, folder: u64) -> Vec<&Item> {
        let mut items: Vec<&Item> = self.items.values().filter(|i| i.folder == folder).collect();
        items.sort_by(|a, b| b.received.cmp(&a.received).then(b.key.cmp(&a.key)));
        items
    }

    pub fn children(&self, folder: u64) -> impl Iterator<Item = &Folder> {
        self.folders
            .values()
            .filter(move |f| f.parent == Some(folder))
    }

    /// Every folder below `folder`, depth first.
    pub fn descendants(&self, folder: u64) -> Vec<&Folder> {
        let mut out = Vec::new();
        for child in self.children(folder) {
            out.push(child);
            out.extend(self.descendants(child.key));
        }
        out
    }

    pub fn folder_path(&self, folder: u64) -> String {
        let mut names = Vec::new();
        let mut at = self.folders.get(&folder);
        let top = self.top();
        while let Some(f) = at {
            if f.key == top || f.key == self.root {
                break;
            }
            names.push(f.name.as_str());
            at = f.parent.and_then(|p| self.folders.get(&p));
        }
        names.reverse();
        names.join("/")
    }
}

/// An event a subscription can see.
#[derive(Debug, Clone)]
pub struct StoreEvent {
    pub mailbox: u16,
    pub kind: EventKind,
    pub item_id: String,
    pub folder_id: String,
    pub old_item_id: Option<String>,
    pub old_folder_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    NewMail,
    Created,
    Modified,
    Deleted,
    Moved,
    Copied,
}

/// The store's state, reached through [`Store::lock`].
pub struct Inner {
    mailboxes: Vec<Mailbox>,
    /// Lower-cased address → mailbox: every request names its mailbox.
    by_address: HashMap<String, u16>,
    accounts: Vec<Account>,
    seq: u64,
    next_key: u64,
    limits: StoreLimits,
    events: broadcast::Sender<StoreEvent>,
    /// Seconds since the epoch the store counts as now (tests may fix it).
    pub clock: Option<i64>,
}

/// The mailbox store.
pub struct Store {
    inner: Mutex<Inner>,
}

impl Store {
    pub fn new(limits: StoreLimits) -> Store {
        let (events, _) = broadcast::channel(1024);
        Store {
            inner: Mutex::new(Inner {
                mailboxes: Vec::new(),
                by_address: HashMap::new(),
                accounts: Vec::new(),
                seq: 0,
                next_key: 1,
                limits,
                events,
                clock: None,
            }),
        }
    }

    /// A store seeded from the embedded example (the Contoso mailboxes).
    pub fn embedded() -> Result<Store, SeedError> {
        let store = Store::new(StoreLimits::default());
        seed::load(&mut store.lock(), seed::EMBEDDED)?;
        Ok(store)
    }

    /// A store seeded from a TOML file of one's own (same format as the embedded one).
    pub fn from_seed(text: &str, limits: StoreLimits) -> Result<Store, SeedError> {
        let store = Store::new(limits);
        seed::load(&mut store.lock(), text)?;
        Ok(store)
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent store: every operation validates
        // before it writes.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.lock().events.subscribe()
    }
}

/// Where a new item goes and what it is.
pub struct NewItem {
    pub item: Item,
    pub folder: u64,
}

impl Inner {
    pub fn now(&self) -> i64 {
        self.clock
            .unwrap_or_else(|| (crate::common::time::now_ms() / 1000) as i64)
    }

    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    pub fn mailboxes(&self) -> &[Mailbox] {
        &self.mailboxes
    }

    /// The mailbox with this SMTP address (any case).
    pub fn mailbox_index(&self, address: &str) -> Result<u16, StoreError> {
        let address = address.trim();
        self.by_address
            .get(&address.to_ascii_lowercase())
            .copied()
            .ok_or_else(|| StoreError::NoMailbox(address.to_owned()))
    }

    pub fn mailbox(&self, index: u16) -> &Mailbox {
        &self.mailboxes[index as usize]
    }

    fn mailbox_mut(&mut self, index: u16) -> &mut Mailbox {
        &mut self.mailboxes[index as usize]
    }

    /// Finds an item by id in any mailbox: ids carry their mailbox, as Exchange's do.
    pub fn find_item(&self, id: &str) -> Result<(u16, u64), StoreError> {
        match decode_id(id) {
            Some((IdKind::Item, mailbox, key)) => {
                let found = self
                    .mailboxes
                    .get(mailbox as usize)
                    .and_then(|m| m.items.get(&key))
                    .is_some();
                if found {
                    Ok((mailbox, key))
                } else {
                    Err(StoreError::ItemNotFound)
                }
            }
            Some(_) => Err(StoreError::ItemNotFound),
            None => Err(StoreError::IdMalformed),
        }
    }

    pub fn item(&self, mailbox: u16, key: u64) -> &Item {
        &self.mailbox(mailbox).items[&key]
    }

    /// Finds a folder by id in any mailbox; seeded folders may carry ids of their own.
    pub fn find_folder(&self, id: &str) -> Result<(u16, u64), StoreError> {
        if let Some((IdKind::Folder, mailbox, key)) = decode_id(id)
            && self
                .mailboxes
                .get(mailbox as usize)
                .is_some_and(|m| m.folders.contains_key(&key))
        {
            return Ok((mailbox, key));
        }
        self.mailboxes
            .iter()
            .find_map(|m| m.folder_by_id(id).map(|f| (m.index, f.key)))
            .ok_or(if ids::looks_like_id(id) {
                StoreError::FolderNotFound
            } else {
                StoreError::IdMalformed
            })
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn next_key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    fn add_distinguished(
        &mut self,
        mailbox: u16,
        parent: Option<u64>,
        (distinguished, display, class): (&'static str, &str, &str),
    ) -> u64 {
        let key = self.next_key();
        let created = self.next_seq();
        self.mailbox_mut(mailbox).folders.insert(
            key,
            Folder {
                key,
                id: ids::encode(IdKind::Folder, mailbox, key),
                version: 1,
                parent,
                name: display.into(),
                distinguished: Some(distinguished),
                class: class.into(),
                created,
            },
        );
        key
    }

    /// Adds a mailbox with Exchange's folder layout: the root, the Top of Information Store
    /// with the distinguished mail folders, and the recoverable-items folders soft deletes use.
    pub fn add_mailbox(&mut self, address: &str, name: &str) -> u16 {
        if let Ok(index) = self.mailbox_index(address) {
            return index;
        }
        let index = self.mailboxes.len() as u16;
        self.by_address.insert(address.to_ascii_lowercase(), index);
        self.mailboxes.push(Mailbox {
            index,
            address: address.to_owned(),
            name: name.to_owned(),
            folders: BTreeMap::new(),
            items: BTreeMap::new(),
            log: Vec::new(),
            root: 0,
        });
        let root = self.add_distinguished(index, None, ("root", "Root", ""));
        self.mailbox_mut(index).root = root;
        let top = self.add_distinguished(
            index,
            Some(root),
            ("msgfolderroot", "Top of Information Store", "IPF.Note"),
        );
        for folder in DISTINGUISHED {
            self.add_distinguished(index, Some(top), *folder);
        }
        let recoverable = self.add_distinguished(
            index,
            Some(root),
            ("recoverableitemsroot", "Recoverable Items", ""),
        );
        self.add_distinguished(
            index,
            Some(recoverable),
            ("recoverableitemsdeletions", "Deletions", ""),
        );
        index
    }

    /// Creates a folder under `parent`; `id` keeps a seeded folder's recorded id.
    pub fn create_folder(
        &mut self,
        mailbox: u16,
        parent: u64,
        name: &str,
        class: &str,
        id: Option<&str>,
    ) -> Result<u64, StoreError> {
        let limit = self.limits.folders_per_mailbox;
        let m = self.mailbox(mailbox);
        if !m.folders.contains_key(&parent) {
            return Err(StoreError::FolderNotFound);
        }
        if m.folders.len() >= limit {
            return Err(StoreError::TooManyFolders(limit));
        }
        if m.children(parent)
            .any(|f| f.name.eq_ignore_ascii_case(name))
        {
            return Err(StoreError::FolderExists);
        }
        let key = self.next_key();
        let created = self.next_seq();
        let id = id.map_or_else(|| ids::encode(IdKind::Folder, mailbox, key), str::to_owned);
        self.mailbox_mut(mailbox).folders.insert(
            key,
            Folder {
                key,
                id,
                version: 1,
                parent: Some(parent),
                name: name.to_owned(),
                distinguished: None,
                class: class.to_owned(),
                created,
            },
        );
        Ok(key)
    }

    /// Puts a new item into a folder and returns its key.
    pub fn insert(&mut self, mailbox: u16, new: NewItem) -> Result<u64, StoreError> {
        let limits = self.limits;
        let m = self.mailbox(mailbox);
        if !m.folders.contains_key(&new.folder) {
            return Err(StoreError::FolderNotFound);
        }
        if m.items.len() >= limits.items_per_mailbox {
            return Err(StoreError::MailboxFull(limits.items_per_mailbox));
        }
        if new.item.size() > limits.body_bytes {
            return Err(StoreError::BodyTooLarge(limits.body_bytes));
        }
        let folder_id = m.folders[&new.folder].id.clone();
        let key = self.next_key();
        let seq = self.next_seq();
        let now = self.now();
        let mut item = new.item;
        item.key = key;
        item.id = ids::encode(IdKind::Item, mailbox, key);
        item.version = 1;
        item.folder = new.folder;
        item.entered = seq;
        if item.item_class.is_empty() {
            item.item_class = item.kind().default_class().into();
        }
        if item.created == 0 {
            item.created = now;
        }
        if item.received == 0 {
            item.received = now;
        }
        item.modified = now;
        let entry = LogEntry {
            seq,
            folder: new.folder,
            item: key,
            item_id: item.id.clone(),
            left: None,
        };
        let event = StoreEvent {
            mailbox,
            kind: EventKind::Created,
            item_id: item.id.clone(),
            folder_id,
            old_item_id: None,
            old_folder_id: None,
        };
        let m = self.mailbox_mut(mailbox);
        m.items.insert(key, item);
        m.log.push(entry);
        let _ = self.events.send(event);
        Ok(key)
    }

    /// Changes an item in place through `change`, bumping its change key.
    pub fn update(
        &mut self,
        mailbox: u16,
        key: u64,
        change: impl FnOnce(&mut Item),
    ) -> Result<(), StoreError> {
        let body_limit = self.limits.body_bytes;
        let seq = self.next_seq();
        let now = self.now();
        let m = self.mailbox_mut(mailbox);
        let item = m.items.get_mut(&key).ok_or(StoreError::ItemNotFound)?;
        let mut changed = item.clone();
        change(&mut changed);
        if changed.size() > body_limit {
            return Err(StoreError::BodyTooLarge(body_limit));
        }
        changed.version += 1;
        changed.modified = now;
        *item = changed;
        let entry = LogEntry {
            seq,
            folder: item.folder,
            item: key,
            item_id: item.id.clone(),
            left: None,
        };
        let event = StoreEvent {
            mailbox,
            kind: EventKind::Modified,
            item_id: item.id.clone(),
            folder_id: m.folders[&item.folder].id.clone(),
            old_item_id: None,
            old_folder_id: None,
        };
        m.log.push(entry);
        let _ = self.events.send(event);
        Ok(())
    }

    /// Moves an item to another folder of its mailbox. Like Exchange, the item gets a new id.
    pub fn move_item(&mut self, mailbox: u16, key: u64, to: u64) -> Result<u64, StoreError> {
        let item = self
            .mailbox(mailbox)
            .items
            .get(&key)
            .cloned()
            .ok_or(StoreError::ItemNotFound)?;
        if !self.mailbox(mailbox).folders.contains_key(&to) {
            return Err(StoreError::FolderNotFound);
        }
        let old_folder_id = self.mailbox(mailbox).folders[&item.folder].id.clone();
        self.remove(mailbox, key)?;
        let created = item.created;
        let new_key = self.insert(
            mailbox,
            NewItem {
                item: Item {
                    created,
                    ..item.clone()
                },
                folder: to,
            },
        )?;
        let new_id = self.item(mailbox, new_key).id.clone();
        let _ = self.events.send(StoreEvent {
            mailbox,
            kind: EventKind::Moved,
            item_id: new_id,
            folder_id: self.mailbox(mailbox).folders[&to].id.clone(),
            old_item_id: Some(item.id),
            old_folder_id: Some(old_folder_id),
        });
        Ok(new_key)
    }

    /// Copies an item into a folder of the same mailbox.
    pub fn copy_item(&mut self, mailbox: u16, key: u64, to: u64) -> Result<u64, StoreError> {
        let item = self
            .mailbox(mailbox)
            .items
            .get(&key)
            .cloned()
            .ok_or(StoreError::ItemNotFound)?;
        self.insert(mailbox, NewItem { item, folder: to })
    }

    /// Removes an item for good.
    pub fn remove(&mut self, mailbox: u16, key: u64) -> Result<Item, StoreError> {
        let seq = self.next_seq();
        let m = self.mailbox_mut(mailbox);
        let item = m.items.remove(&key).ok_or(StoreError::ItemNotFound)?;
        m.log.push(LogEntry {
            seq,
            folder: item.folder,
            item: key,
            item_id: item.id.clone(),
            left: Some(item.entered),
        });
        let event = StoreEvent {
            mailbox,
            kind: EventKind::Deleted,
            item_id: item.id.clone(),
            folder_id: m.folders[&item.folder].id.clone(),
            old_item_id: None,
            old_folder_id: None,
        };
        let _ = self.events.send(event);
        Ok(item)
    }

    /// Delivers a message to every recipient that has a mailbox here: a copy lands in each
    /// Inbox, unread, received now. Returns the new items as (mailbox, key).
    pub fn deliver(&mut self, message: &Item) -> Result<Vec<(u16, u64)>, StoreError> {
        self.deliver_filed(message, None)
    }

    /// Delivers as [`Inner::deliver`], filing into `folder` (a name or id) where a recipient's
    /// mailbox has it, as a server-side Inbox rule would; elsewhere into the Inbox.
    pub fn deliver_filed(
        &mut self,
        message: &Item,
        folder: Option<&str>,
    ) -> Result<Vec<(u16, u64)>, StoreError> {
        let mut recipients: Vec<u16> = Vec::new();
        for addr in message.to.iter().chain(&message.cc).chain(&message.bcc) {
            if let Ok(index) = self.mailbox_index(&addr.address)
                && !recipients.contains(&index)
            {
                recipients.push(index);
            }
        }
        let now = self.now();
        let mut delivered = Vec::new();
        for index in recipients {
            let m = self.mailbox(index);
            let filed = folder.and_then(|f| {
                m.folders
                    .values()
                    .find(|x| x.id == f || x.name.eq_ignore_ascii_case(f))
                    .map(|x| x.key)
            });
            let inbox = filed
                .or_else(|| m.distinguished("inbox").map(|f| f.key))
                .ok_or(StoreError::FolderNotFound)?;
            let item = Item {
                is_read: false,
                is_draft: false,
                received: now,
                created: now,
                // Bcc is not visible to recipients.
                bcc: Vec::new(),
                extended: Vec::new(),
                categories: Vec::new(),
                ..message.clone()
            };
            let key = self.insert(
                index,
                NewItem {
                    item,
                    folder: inbox,
                },
            )?;
            let id = self.item(index, key).id.clone();
            let folder_id = self.mailbox(index).folders[&inbox].id.clone();
            let _ = self.events.send(StoreEvent {
                mailbox: index,
                kind: EventKind::NewMail,
                item_id: id,
                folder_id,
                old_item_id: None,
                old_folder_id: None,
            });
            delivered.push((index, key));
        }
        Ok(delivered)
    }

    /// Sends a message from `mailbox`: stamps it sent, gives it a Message-ID, delivers it, and
    /// keeps a copy in `save_to` when given. Returns the saved copy's key.
    pub fn send(
        &mut self,
        mailbox: u16,
        mut message: Item,
        save_to: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        let now = self.now();
        let owner = self.mailbox(mailbox).identity();
        if message.from.is_none() {
            message.from = Some(owner.clone());
        }
        if message.message_id.is_none() {
            // Deterministic for the same sequence of operations, so a replayed morning lands
            // the same CRM records; unique within the store.
            let domain = owner
                .address
                .rsplit('@')
                .next()
                .unwrap_or("simulated.example");
            let n = self.next_seq();
            message.message_id = Some(format!("<sim.{mailbox}.{n}@{domain}>"));
        }
        message.sent = Some(now);
        message.is_draft = false;
        message.is_read = true;
        message.received = now;
        self.deliver(&message)?;
        match save_to {
            Some(folder) => Ok(Some(self.insert(
                mailbox,
                NewItem {
                    item: message,
                    folder,
                },
            )?)),
            None => Ok(None),
        }
    }
}

/// A message delivered from outside through `POST /_sim/deliver`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    pub from: String,
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub body: String,
    pub message_id: Option<String>,
    pub in_reply_to: Option<String>,
    /// A folder (name or id) a server-side rule files the message into; unset: the Inbox.
    pub folder: Option<String>,
}

impl Delivery {
    pub fn into_item(self) -> Item {
        Item {
            kind: Some(Kind::Message),
            from: Some(Addr::parse(&self.from)),
            to: self.to.iter().map(|a| Addr::parse(a)).collect(),
            cc: self.cc.iter().map(|a| Addr::parse(a)).collect(),
            subject: self.subject,
            body: self.body,
            message_id: Some(
                self.message_id.unwrap_or_else(|| {
                    format!("<{:032x}@outside.example>", rand::random::<u128>())
                }),
            ),
            in_reply_to: self.in_reply_to,
            ..Item::default()
        }
    }
}

impl Item {
    /// A message from its RFC 822 form (headers read, body kept as text).
    pub fn from_mime(raw: &[u8]) -> Item {
        let parsed = crate::inspect::mime::message_from_mime(raw);
        let addr = |a: &crate::inspect::Address| {
            a.address.as_ref().map(|address| Addr {
                name: a.name.as_deref().map(str::to_owned),
                address: address.to_string(),
            })
        };
        let text = String::from_utf8_lossy(raw);
        let body = text
            .find("\r\n\r\n")
            .map(|i| i + 4)
            .or_else(|| text.find("\n\n").map(|i| i + 2))
            .map_or_else(String::new, |at| text[at..].trim_end().to_owned());
        Item {
            kind: Some(Kind::Message),
            subject: parsed.subject.as_deref().unwrap_or_default().to_owned(),
            from: parsed.from.as_ref().and_then(addr),
            to: parsed.to.iter().filter_map(addr).collect(),
            cc: parsed.cc.iter().filter_map(addr).collect(),
            bcc: parsed.bcc.iter().filter_map(addr).collect(),
            message_id: parsed.internet_message_id.map(|id| format!("<{id}>")),
            in_reply_to: parsed.in_reply_to.map(|id| format!("<{id}>")),
            references: parsed.references.as_ref().map(String::from),
            body,
            mime: Some(raw.to_vec()),
            ..Item::default()
        }
    }
}

#[cfg(test)]
mod tests;
