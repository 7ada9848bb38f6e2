//! Building a snapshot: each table of the document validated in turn (every problem names the
//! row and column and says how to fix it) and indexed — users, their settings, queues,
//! mailboxes and the names that find them, folder rules, records by address, and the emails
//! already tracked.

use uuid::Uuid;

use super::index::{
    Key, KeyMap, Keyer, Map, SmartRow, TrackedIndex, TrackedRow, address_hashes, conversation_key,
    lower, normalize_exchange_id, subject_hashes, token_prefixes, tracking_token,
};
use super::{
    CompactLookup, Directory, EntityKind, InvalidDirectory, MANY, MailboxEntry, Org, Owner, Queue,
    Record, StoredRule, User,
};
use crate::common::text::normalize_message_id;
use crate::common::time::timestamp_seconds;
use crate::directory::model::{DirectoryDocument, Lookup, Mailbox, SystemUser, UserSettings};
use crate::directory::settings::DirectorySettings;

/// The users, by id, and the SMTP address behind each of their X.500 addresses.
struct Users {
    users: Vec<User>,
    by_id: Map<Uuid, u32>,
    x500: Map<Box<str>, Box<str>>,
}

/// The mailboxes, by id, and the names (lower-cased, keyed) that find each one.
struct Mailboxes {
    mailboxes: Vec<MailboxEntry>,
    by_id: Map<Uuid, u32>,
    principals: KeyMap<u32>,
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

pub(super) struct Builder {
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
    pub(super) fn new() -> Builder {
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

    /// Validates and indexes the document, table by table; rows are added in this order, which
    /// is the order of the records among themselves.
    pub(super) fn build(
        mut self,
        doc: DirectoryDocument,
        settings: &DirectorySettings,
    ) -> Result<Directory, InvalidDirectory> {
        let org = build_org(&doc)?;
        let Users {
            mut users,
            by_id: users_by_id,
            x500,
        } = self.users(&doc)?;
        user_settings(&doc, &mut users, &users_by_id)?;
        let (queues, queues_by_id) = self.queues(&doc)?;
        let Mailboxes {
            mut mailboxes,
            by_id: mailboxes_by_id,
            mut principals,
        } = self.mailboxes(&doc, &org, &users_by_id, &queues_by_id)?;
        let names = self.user_principals(&doc, &mailboxes, &mut principals);
        self.windows_aliases(&doc, settings, &names, &mut principals);
        self.folder_rules(&doc, &org, &mut mailboxes, &mailboxes_by_id)?;
        self.customers(&doc)?;
        self.other_records(&doc)?;

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

    /// Users, with default options until their settings row is read.
    fn users(&mut self, doc: &DirectoryDocument) -> Result<Users, InvalidDirectory> {
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
        Ok(Users {
            users,
            by_id: users_by_id,
            x500,
        })
    }

    fn queues(
        &mut self,
        doc: &DirectoryDocument,
    ) -> Result<(Vec<Queue>, Map<Uuid, u32>), InvalidDirectory> {
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
        Ok((queues, queues_by_id))
    }

    /// Mailboxes, each with its owner, cutoff and address (which finds it).
    fn mailboxes(
        &mut self,
        doc: &DirectoryDocument,
        org: &Org,
        users_by_id: &Map<Uuid, u32>,
        queues_by_id: &Map<Uuid, u32>,
    ) -> Result<Mailboxes, InvalidDirectory> {
        let mut mailboxes = Vec::with_capacity(doc.mailboxes.len());
        let mut mailboxes_by_id: Map<Uuid, u32> = Map::default();
        let mut principals: KeyMap<u32> = KeyMap::default();
        for (i, m) in doc.mailboxes.iter().enumerate() {
            let at = format!("mailboxes[{i}]");
            let index =
                u32::try_from(i).map_err(|_| invalid(&at, "too many mailboxes", "split"))?;
            let owner = mailbox_owner(&at, m, users_by_id, queues_by_id)?;
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
                syncs_items: m.actdeliverymethod == 1 && matches!(owner, Owner::User(_)),
                rules: Vec::new(),
                rule_keys: Box::default(),
            });
        }
        Ok(Mailboxes {
            mailboxes,
            by_id: mailboxes_by_id,
            principals,
        })
    }

    /// A user's other names find their mailbox too (mailbox addresses win on a clash).
    /// Returns what the Windows aliases are judged against: every user's explicit names
    /// (mailbox or not) and each user's mailbox.
    fn user_principals(
        &self,
        doc: &DirectoryDocument,
        mailboxes: &[MailboxEntry],
        principals: &mut KeyMap<u32>,
    ) -> UserNames {
        let mut names = UserNames::default();
        for (m, mailbox) in mailboxes.iter().enumerate() {
            if let Owner::User(u) = mailbox.owner {
                names.mailbox_of_user.entry(u).or_insert(m as u32);
            }
        }
        for (i, u) in doc.systemusers.iter().enumerate() {
            let mailbox = names.mailbox_of_user.get(&(i as u32)).copied();
            for name in explicit_names(u).into_iter().flatten() {
                let key = self.keyer.key(&lower(&name));
                names.explicit.insert(key, ());
                if let Some(mailbox) = mailbox {
                    principals.entry(key).or_insert(mailbox);
                }
            }
        }
        names
    }

    /// The `DOMAIN\user` names Windows authentication gives, for users whose sign-in name or
    /// address is stored as `user@dns.domain` (see [`DirectorySettings`]). An alias is only a
    /// guess, so it never takes a name any user holds explicitly (address, sign-in name, object
    /// id, with or without a mailbox), and an alias two users would share finds neither: a
    /// mail attributed to the wrong mailbox is worse than one not attributed.
    fn windows_aliases(
        &self,
        doc: &DirectoryDocument,
        settings: &DirectorySettings,
        names: &UserNames,
        principals: &mut KeyMap<u32>,
    ) {
        if !settings.netbios_from_upn && settings.ntlm_domains.is_empty() {
            return;
        }
        // DNS domain → the NetBIOS names configured for it.
        let mut netbios_of: Map<String, Vec<String>> = Map::default();
        for (netbios, dns) in &settings.ntlm_domains {
            netbios_of
                .entry(lower(dns).into_owned())
                .or_default()
                .push(lower(netbios).into_owned());
        }
        // Each alias and the one user it names (`None` once a second user names it too).
        let mut aliases: KeyMap<Option<u32>> = KeyMap::default();
        for (i, u) in doc.systemusers.iter().enumerate() {
            for alias in windows_names(u, settings.netbios_from_upn, &netbios_of) {
                let key = self.keyer.key(&alias);
                if names.explicit.contains_key(&key) || principals.contains_key(&key) {
                    continue;
                }
                let user = i as u32;
                aliases
                    .entry(key)
                    .and_modify(|owner| {
                        if *owner != Some(user) {
                            *owner = None;
                        }
                    })
                    .or_insert(Some(user));
            }
        }
        for (key, user) in aliases {
            if let Some(&mailbox) = user.and_then(|u| names.mailbox_of_user.get(&u)) {
                principals.insert(key, mailbox);
            }
        }
    }

    /// Folder tracking rules, each in its user's mailbox, sorted there for lookups.
    fn folder_rules(
        &mut self,
        doc: &DirectoryDocument,
        org: &Org,
        mailboxes: &mut [MailboxEntry],
        mailboxes_by_id: &Map<Uuid, u32>,
    ) -> Result<(), InvalidDirectory> {
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
            let folder_id = self.name(Some(f.exchangefolderid.trim()));
            let regarding = f.regardingobjectid.as_ref().map(|l| self.compact(l));
            mailboxes[m as usize].rules.push(StoredRule {
                folder,
                name,
                folder_id,
                regarding,
            });
        }
        for m in mailboxes.iter_mut() {
            m.rules.sort_by_key(|r| r.folder.0);
            m.rules.shrink_to_fit();
            m.rule_keys = m.rules.iter().map(|r| r.folder.prefix()).collect();
        }
        self.names.shrink_to_fit();
        Ok(())
    }

    /// Contacts, accounts and leads.
    fn customers(&mut self, doc: &DirectoryDocument) -> Result<(), InvalidDirectory> {
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
        Ok(())
    }

    /// Rows of the other e-mail-enabled tables.
    fn other_records(&mut self, doc: &DirectoryDocument) -> Result<(), InvalidDirectory> {
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
        Ok(())
    }
}

/// The names a user row gives itself, each of which finds the user's mailbox.
fn explicit_names(u: &SystemUser) -> [Option<String>; 3] {
    [
        u.internalemailaddress.clone(),
        u.domainname.clone(),
        u.azureactivedirectoryobjectid.map(|o| o.to_string()),
    ]
}

/// Users' explicit names and mailboxes, gathered once for the principals and their aliases.
#[derive(Default)]
struct UserNames {
    explicit: KeyMap<()>,
    mailbox_of_user: Map<u32, u32>,
}

/// A NetBIOS domain name is at most 15 characters: Windows cuts a longer DNS label there, so
/// that is the name clients send (`contosocorporation.example` → `CONTOSOCORPORAT`).
fn netbios_name(label: &str) -> &str {
    let mut end = label.len().min(15);
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    &label[..end]
}

/// The `netbios\user` aliases (lower-cased) of a user: from a UPN-form `domainname` by its
/// first DNS label, and from the `domainname` or `internalemailaddress` in a configured DNS
/// domain by that domain's NetBIOS names.
fn windows_names(
    u: &SystemUser,
    netbios_from_upn: bool,
    netbios_of: &Map<String, Vec<String>>,
) -> Vec<String> {
    let split = |name: &Option<String>| {
        let name = lower(name.as_deref()?).into_owned();
        let (user, domain) = name.rsplit_once('@')?;
        // A `DOMAIN\user` name is its own Windows name already.
        let plain = !user.is_empty() && !domain.is_empty() && !user.contains('\\');
        plain.then(|| (user.to_owned(), domain.to_owned()))
    };
    let upn = split(&u.domainname);
    let mut names = Vec::new();
    if netbios_from_upn && let Some((user, domain)) = &upn {
        let first = domain.split('.').next().unwrap_or(domain);
        if !first.is_empty() {
            names.push(format!("{}\\{user}", netbios_name(first)));
        }
    }
    for (user, domain) in [upn, split(&u.internalemailaddress)].into_iter().flatten() {
        for netbios in netbios_of.get(&domain).into_iter().flatten() {
            let alias = format!("{netbios}\\{user}");
            if !names.contains(&alias) {
                names.push(alias);
            }
        }
    }
    names
}

/// The user or queue a mailbox belongs to.
fn mailbox_owner(
    at: &str,
    m: &Mailbox,
    users_by_id: &Map<Uuid, u32>,
    queues_by_id: &Map<Uuid, u32>,
) -> Result<Owner, InvalidDirectory> {
    match &*m.regardingobjectid.entity {
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
    })
}

/// The settings rows, each on its user; a row of an unknown user is an error.
fn user_settings(
    doc: &DirectoryDocument,
    users: &mut [User],
    users_by_id: &Map<Uuid, u32>,
) -> Result<(), InvalidDirectory> {
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
    Ok(())
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
        tracking_category_names: o
            .trackingcategorynames
            .iter()
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect(),
        cutoff,
        min_sync_interval: std::time::Duration::from_secs(
            60 * u64::from(o.minoutlooksyncinterval.unwrap_or(0)),
        ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_hashes_ignore_reply_prefixes_and_case() {
        let doc = DirectoryDocument {
            organization: crate::directory::model::Organization {
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

    fn user(n: u128, domainname: Option<&str>, internal: Option<&str>) -> SystemUser {
        SystemUser {
            systemuserid: Uuid::from_u128(n),
            domainname: domainname.map(str::to_owned),
            internalemailaddress: internal.map(str::to_owned),
            ..SystemUser::default()
        }
    }

    /// A directory of these users, each with a mailbox `mailbox<n>@mail.example` (users with
    /// an odd id have none).
    fn directory(users: Vec<SystemUser>, settings: &DirectorySettings) -> Directory {
        let mailboxes = users
            .iter()
            .filter(|u| u.systemuserid.as_u128() % 2 == 0)
            .map(|u| Mailbox {
                mailboxid: u.systemuserid,
                emailaddress: format!("mailbox{}@mail.example", u.systemuserid.as_u128()),
                regardingobjectid: Lookup::new("systemuser", u.systemuserid),
                processemailreceivedafter: None,
                incomingemaildeliverymethod: 2,
                actdeliverymethod: 1,
                outgoingemaildeliverymethod: 2,
            })
            .collect();
        let doc = DirectoryDocument {
            organization: crate::directory::model::Organization {
                organizationid: Uuid::from_u128(1),
                ..Default::default()
            },
            systemusers: users,
            mailboxes,
            ..Default::default()
        };
        Directory::build_with(doc, settings).unwrap()
    }

    /// Whose mailbox a principal finds, by the owner's id.
    fn owner(dir: &Directory, principal: &str) -> Option<u128> {
        let mailbox = dir.mailbox(principal)?;
        Some(mailbox.id.as_u128())
    }

    fn domains(pairs: &[(&str, &str)]) -> DirectorySettings {
        DirectorySettings {
            ntlm_domains: pairs
                .iter()
                .map(|(n, d)| ((*n).to_owned(), (*d).to_owned()))
                .collect(),
            ..DirectorySettings::default()
        }
    }

    #[test]
    fn a_upn_sign_in_name_answers_to_its_first_label_as_netbios_domain() {
        let users = vec![
            user(2, Some("Alex@Contoso.Example"), None),
            user(4, Some("CORP\\kim"), Some("kim@contoso.example")),
        ];
        let dir = directory(users.clone(), &DirectorySettings::default());
        assert_eq!(owner(&dir, "contoso\\alex"), Some(2));
        assert_eq!(owner(&dir, "CONTOSO\\Alex"), Some(2));
        assert_eq!(
            owner(&dir, "alex@contoso.example"),
            Some(2),
            "the UPN itself"
        );
        // Only a UPN-form sign-in name gives the alias; an address alone does not.
        assert_eq!(owner(&dir, "corp\\kim"), Some(4));
        assert_eq!(owner(&dir, "contoso\\kim"), None);
        let off = DirectorySettings {
            netbios_from_upn: false,
            ..DirectorySettings::default()
        };
        assert_eq!(owner(&directory(users, &off), "contoso\\alex"), None);
    }

    #[test]
    fn a_configured_netbios_domain_finds_the_sign_in_name_or_address_in_its_dns_domain() {
        let users = vec![
            user(2, Some("alex@contoso.example"), None),
            // No sign-in name, or an on-premises one in another form: the address counts.
            user(4, None, Some("Kim@Contoso.Example")),
            user(6, Some("jo@fabrikam.example"), Some("jo@fabrikam.example")),
        ];
        let dir = directory(users, &domains(&[("CORP", "Contoso.Example")]));
        assert_eq!(owner(&dir, "corp\\alex"), Some(2));
        assert_eq!(owner(&dir, "CORP\\Kim"), Some(4));
        assert_eq!(owner(&dir, "corp\\jo"), None, "another DNS domain");
        // The first-label alias stays alongside.
        assert_eq!(owner(&dir, "contoso\\alex"), Some(2));
        assert_eq!(owner(&dir, "fabrikam\\jo"), Some(6));
    }

    #[test]
    fn an_alias_two_users_share_finds_neither_and_explicit_names_win() {
        let users = vec![
            user(2, Some("alex@contoso.example"), None),
            user(4, Some("alex@contoso.other"), None),
            user(6, Some("kim@contoso.example"), None),
            // Explicitly `contoso\kim`, though without a mailbox: the alias is not Kim's.
            user(7, Some("CONTOSO\\kim"), None),
            user(8, Some("sam@corp.example"), None),
            user(10, Some("CORP\\sam"), None),
            // One user reaching the same alias twice is no clash.
            user(12, Some("jo@contoso.example"), Some("jo@contoso.example")),
        ];
        let dir = directory(users, &domains(&[("contoso", "contoso.example")]));
        assert_eq!(owner(&dir, "contoso\\alex"), None, "two users' alias");
        assert_eq!(owner(&dir, "alex@contoso.example"), Some(2));
        assert_eq!(owner(&dir, "alex@contoso.other"), Some(4));
        assert_eq!(owner(&dir, "contoso\\kim"), None);
        assert_eq!(owner(&dir, "corp\\sam"), Some(10), "the explicit name wins");
        assert_eq!(owner(&dir, "contoso\\jo"), Some(12));
    }

    #[test]
    fn a_netbios_name_is_the_first_fifteen_characters_of_the_label() {
        assert_eq!(netbios_name("contosocorporation"), "contosocorporat");
        assert_eq!(netbios_name("contoso"), "contoso");
        // Never cut inside a character.
        assert_eq!(netbios_name("aaaaaaaaaaaaaaé"), "aaaaaaaaaaaaaa");
    }

    #[test]
    fn items_sync_for_users_mailboxes_on_server_side_sync_never_for_a_queue() {
        let mut doc: crate::directory::model::DirectoryDocument =
            toml::from_str(crate::directory::file::EMBEDDED_EXAMPLE).unwrap_or_default();
        if let Some(jo) = doc
            .mailboxes
            .iter_mut()
            .find(|m| m.emailaddress.starts_with("jo."))
        {
            jo.actdeliverymethod = 0;
        }
        let dir = Directory::build(doc).unwrap_or_else(|e| panic!("{e}"));
        let syncs = |a: &str| dir.mailbox(a).map(|m| m.syncs_items);
        assert_eq!(syncs("alex.seller@contoso.example"), Some(true));
        assert_eq!(
            syncs("jo.support@contoso.example"),
            Some(false),
            "Outlook syncs hers"
        );
        assert_eq!(
            syncs("team.sales@contoso.example"),
            Some(false),
            "a queue never"
        );
    }
}
