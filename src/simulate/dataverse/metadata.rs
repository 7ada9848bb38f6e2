//! The table metadata the strict simulator checks every request against: per table its entity
//! set, key, columns (type, length, whether create or update may set them), the navigation
//! properties of each lookup and the tables they may point at, the state/status pairs, and for
//! activities the activity-party rules.
//!
//! Taken from `shared/reference/domain.md` §7 and the public Dataverse entity reference, for
//! the tables trackgate reads and writes and the ones they point at. What is not declared here
//! does not exist for the simulator, as an undeclared property does not for Dataverse.

/// A column's type, as far as the simulator checks values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string of at most this many characters.
    Text(usize),
    Bool,
    /// Whole number or choice (picklist) value.
    Int,
    /// ISO 8601 date and time.
    DateTime,
    Guid,
    /// A lookup: the tables it may point at and how its navigation properties are named.
    Lookup(&'static [&'static str], Nav),
}

/// How a lookup's single-valued navigation properties are named (what `@odata.bind` uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// One navigation property named like the column (`parentaccountid`, `ownerid`).
    Column,
    /// One per target: `<column>_<target>` (`parentcustomerid_account`, `partyid_contact`).
    PerTarget,
    /// One per target on an activity: `<column>_<target>_<activity>`
    /// (`regardingobjectid_account_email`).
    PerTargetOfActivity,
}

/// When a request may set a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    /// `IsValidForUpdate = false`: the key, `overriddencreatedon`.
    CreateOnly,
    /// `IsValidForCreate = false`: `statecode` (records are created active or open).
    UpdateOnly,
    /// Set by the platform only (`senton`, `conversationindex`, `createdon`, …).
    ReadOnly,
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub access: Access,
}

const fn rw(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        access: Access::ReadWrite,
    }
}

const fn ro(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        access: Access::ReadOnly,
    }
}

const fn key(name: &'static str) -> Column {
    Column {
        name,
        kind: Kind::Guid,
        access: Access::CreateOnly,
    }
}

const fn state() -> Column {
    Column {
        name: "statecode",
        kind: Kind::Int,
        access: Access::UpdateOnly,
    }
}

const fn status() -> Column {
    rw("statuscode", Kind::Int)
}

/// The activity-party rules of an activity table.
#[derive(Debug, Clone, Copy)]
pub struct Parties {
    /// The collection-valued navigation property (`email_activity_parties`).
    pub nav: &'static str,
    /// `participationtypemask` values a client may write on this table.
    pub masks: &'static [u64],
    /// Masks that may appear at most once (the sender of an email, an organizer).
    pub single: &'static [u64],
}

/// One table.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub entity: &'static str,
    pub set: &'static str,
    pub key: &'static str,
    pub columns: &'static [Column],
    /// `(statecode, valid statuscodes)`; the first status is the default of its state.
    pub states: &'static [(u64, &'static [u64])],
    /// An activity: closed (statecode ≠ 0) it is read-only except state and status.
    pub activity: bool,
    /// Columns a closed activity still accepts besides state and status. Email keeps its
    /// regarding editable after it was sent or received (the model-driven form allows it for
    /// exactly this reason; <https://www.itaintboring.com/dynamics-crm/here-is-a-riddle-i-am-a-readonly-record-but-i-am-still-updatable-in-the-user-interface-what-am-i/>).
    pub editable_when_closed: &'static [&'static str],
    pub parties: Option<Parties>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&'static Column> {
        self.columns.iter().chain(AUDIT).find(|c| c.name == name)
    }

    /// The lookup column a single-valued navigation property belongs to, and the table it
    /// points at: `regardingobjectid_account_email` → (`regardingobjectid`, `account`).
    pub fn navigation(&self, nav: &str) -> Option<(&'static Column, &'static str)> {
        self.columns.iter().find_map(|c| {
            let Kind::Lookup(targets, style) = c.kind else {
                return None;
            };
            targets.iter().find_map(|target| {
                let named = match style {
                    Nav::Column => nav == c.name,
                    Nav::PerTarget => nav
                        .strip_prefix(c.name)
                        .and_then(|r| r.strip_prefix('_'))
                        .is_some_and(|r| r == *target),
                    Nav::PerTargetOfActivity => nav
                        .strip_prefix(c.name)
                        .and_then(|r| r.strip_prefix('_'))
                        .and_then(|r| r.strip_prefix(*target))
                        .and_then(|r| r.strip_prefix('_'))
                        .is_some_and(|r| r == self.entity),
                };
                named.then_some((c, *target))
            })
        })
    }

    /// Whether `name` may be `$select`ed or filtered on: a non-lookup column, or a lookup's
    /// `_<column>_value`.
    pub fn readable(&self, name: &str) -> bool {
        match name
            .strip_prefix('_')
            .and_then(|n| n.strip_suffix("_value"))
        {
            Some(lookup) => self
                .column(lookup)
                .is_some_and(|c| matches!(c.kind, Kind::Lookup(..))),
            None => self
                .column(name)
                .is_some_and(|c| !matches!(c.kind, Kind::Lookup(..))),
        }
    }

    /// The statuscodes valid for a statecode.
    pub fn statuses(&self, state: u64) -> Option<&'static [u64]> {
        self.states
            .iter()
            .find(|(s, _)| *s == state)
            .map(|(_, statuses)| *statuses)
    }
}

const MAX_MEMO: usize = 1_073_741_823;
const OWNER: Kind = Kind::Lookup(&["systemuser", "team"], Nav::Column);
/// What an email (and other activities) may be regarding in an organization with Sales and
/// Customer Service installed.
const REGARDING: &[&str] = &[
    "account",
    "contact",
    "lead",
    "opportunity",
    "incident",
    "quote",
    "salesorder",
    "invoice",
    "campaign",
    "contract",
    "knowledgearticle",
    "systemuser",
    "queue",
];
/// What an activity party may point at (Sales installed: leads, contacts, accounts are parties).
const PARTY_TARGETS: &[&str] = &[
    "account",
    "contact",
    "lead",
    "systemuser",
    "queue",
    "knowledgearticle",
    "equipment",
];

/// Columns every table has, set by the platform (`overriddencreatedon` on create, for
/// migrations).
const AUDIT: &[Column] = &[
    ro("createdon", Kind::DateTime),
    ro("modifiedon", Kind::DateTime),
    Column {
        name: "overriddencreatedon",
        kind: Kind::DateTime,
        access: Access::CreateOnly,
    },
    ro("versionnumber", Kind::Int),
];

/// What a table is unless it says otherwise: no states, not an activity, no parties.
const PLAIN: Table = Table {
    entity: "",
    set: "",
    key: "",
    columns: &[],
    states: &[],
    activity: false,
    editable_when_closed: &[],
    parties: None,
};

pub const EMAIL: Table = Table {
    entity: "email",
    set: "emails",
    key: "activityid",
    columns: &[
        key("activityid"),
        rw("subject", Kind::Text(800)),
        rw("description", Kind::Text(MAX_MEMO)),
        rw("directioncode", Kind::Bool),
        rw("messageid", Kind::Text(320)),
        rw("trackingtoken", Kind::Text(50)),
        rw("internetmessageheaders", Kind::Text(500)),
        rw("prioritycode", Kind::Int),
        rw("notifications", Kind::Int),
        rw("baseconversationindexhash", Kind::Int),
        rw("conversationtrackingid", Kind::Guid),
        rw("actualstart", Kind::DateTime),
        rw("actualend", Kind::DateTime),
        rw("scheduledstart", Kind::DateTime),
        rw("scheduledend", Kind::DateTime),
        rw("category", Kind::Text(250)),
        rw(
            "regardingobjectid",
            Kind::Lookup(REGARDING, Nav::PerTargetOfActivity),
        ),
        rw("ownerid", OWNER),
        rw(
            "acceptingentityid",
            Kind::Lookup(&["queue", "systemuser"], Nav::PerTargetOfActivity),
        ),
        rw(
            "receivingmailboxid",
            Kind::Lookup(&["mailbox"], Nav::Column),
        ),
        rw(
            "correlatedactivityid",
            Kind::Lookup(&["email"], Nav::Column),
        ),
        rw("parentactivityid", Kind::Lookup(&["email"], Nav::Column)),
        state(),
        status(),
        ro("conversationindex", Kind::Text(2048)),
        ro("inreplyto", Kind::Text(320)),
        ro("correlationmethod", Kind::Int),
        ro("senton", Kind::DateTime),
        ro("sender", Kind::Text(250)),
        ro("torecipients", Kind::Text(500)),
        ro("attachmentcount", Kind::Int),
        ro(
            "emailsender",
            Kind::Lookup(
                &["account", "contact", "lead", "systemuser", "queue"],
                Nav::PerTargetOfActivity,
            ),
        ),
    ],
    states: &[(0, &[1, 8]), (1, &[2, 3, 4, 6, 7]), (2, &[5])],
    activity: true,
    editable_when_closed: &["regardingobjectid"],
    parties: Some(Parties {
        nav: "email_activity_parties",
        masks: &[1, 2, 3, 4],
        single: &[1],
    }),
};

pub const APPOINTMENT: Table = Table {
    entity: "appointment",
    set: "appointments",
    key: "activityid",
    columns: &[
        key("activityid"),
        rw("subject", Kind::Text(200)),
        rw("description", Kind::Text(MAX_MEMO)),
        rw("location", Kind::Text(200)),
        rw("scheduledstart", Kind::DateTime),
        rw("scheduledend", Kind::DateTime),
        rw("scheduleddurationminutes", Kind::Int),
        rw("isalldayevent", Kind::Bool),
        rw("prioritycode", Kind::Int),
        rw("globalobjectid", Kind::Text(300)),
        rw("outlookownerapptid", Kind::Int),
        rw("category", Kind::Text(250)),
        rw(
            "regardingobjectid",
            Kind::Lookup(REGARDING, Nav::PerTargetOfActivity),
        ),
        rw("ownerid", OWNER),
        state(),
        status(),
        rw("actualstart", Kind::DateTime),
        rw("actualend", Kind::DateTime),
    ],
    states: &[(0, &[1, 2]), (1, &[3]), (2, &[4]), (3, &[5, 6])],
    activity: true,
    editable_when_closed: &[],
    parties: Some(Parties {
        nav: "appointment_activity_parties",
        // Required and optional attendees, the organizer.
        masks: &[5, 6, 7],
        single: &[7],
    }),
};

pub const TASK: Table = Table {
    entity: "task",
    set: "tasks",
    key: "activityid",
    columns: &[
        key("activityid"),
        rw("subject", Kind::Text(200)),
        rw("description", Kind::Text(MAX_MEMO)),
        rw("scheduledstart", Kind::DateTime),
        rw("scheduledend", Kind::DateTime),
        rw("actualend", Kind::DateTime),
        rw("percentcomplete", Kind::Int),
        rw("prioritycode", Kind::Int),
        rw("category", Kind::Text(250)),
        rw(
            "regardingobjectid",
            Kind::Lookup(REGARDING, Nav::PerTargetOfActivity),
        ),
        rw("ownerid", OWNER),
        state(),
        status(),
    ],
    states: &[(0, &[2, 3, 4, 7]), (1, &[5]), (2, &[6])],
    activity: true,
    ..PLAIN
};

/// The columns phone calls, faxes and letters share (Outlook keeps them as tasks).
const TASKLIKE_COLUMNS: &[Column] = &[
    key("activityid"),
    rw("subject", Kind::Text(200)),
    rw("description", Kind::Text(MAX_MEMO)),
    rw("scheduledstart", Kind::DateTime),
    rw("scheduledend", Kind::DateTime),
    rw("actualend", Kind::DateTime),
    rw("prioritycode", Kind::Int),
    rw("category", Kind::Text(250)),
    rw(
        "regardingobjectid",
        Kind::Lookup(REGARDING, Nav::PerTargetOfActivity),
    ),
    rw("ownerid", OWNER),
    state(),
    status(),
];

// Their states and statuses as in the Dataverse table reference (from memory, UNCONFIRMED:
// docs/domain.md lists only the task's and the appointment's).
pub const PHONECALL: Table = Table {
    entity: "phonecall",
    set: "phonecalls",
    key: "activityid",
    columns: TASKLIKE_COLUMNS,
    // Open; Made, Received; Canceled.
    states: &[(0, &[1]), (1, &[2, 4]), (2, &[3])],
    activity: true,
    ..PLAIN
};

pub const FAX: Table = Table {
    entity: "fax",
    set: "faxes",
    key: "activityid",
    columns: TASKLIKE_COLUMNS,
    // Open; Completed, Sent, Received; Canceled.
    states: &[(0, &[1]), (1, &[2, 3, 4]), (2, &[5])],
    activity: true,
    ..PLAIN
};

pub const LETTER: Table = Table {
    entity: "letter",
    set: "letters",
    key: "activityid",
    columns: TASKLIKE_COLUMNS,
    // Open, Draft; Received, Sent; Canceled.
    states: &[(0, &[1, 2]), (1, &[3, 4]), (2, &[5])],
    activity: true,
    ..PLAIN
};

/// The columns of `activityparty` a deep insert may carry.
pub const ACTIVITY_PARTY: Table = Table {
    entity: "activityparty",
    set: "activityparties",
    key: "activitypartyid",
    columns: &[
        key("activitypartyid"),
        rw("participationtypemask", Kind::Int),
        rw("addressused", Kind::Text(320)),
        rw("unresolvedpartyname", Kind::Text(400)),
        rw("exchangeentryid", Kind::Text(1024)),
        rw("effort", Kind::Int),
        rw("partyid", Kind::Lookup(PARTY_TARGETS, Nav::PerTarget)),
    ],
    ..PLAIN
};

const ADDRESSES: [Column; 3] = [
    rw("emailaddress1", Kind::Text(100)),
    rw("emailaddress2", Kind::Text(100)),
    rw("emailaddress3", Kind::Text(100)),
];

pub const CONTACT: Table = Table {
    entity: "contact",
    set: "contacts",
    key: "contactid",
    columns: &[
        key("contactid"),
        rw("firstname", Kind::Text(50)),
        rw("middlename", Kind::Text(50)),
        rw("lastname", Kind::Text(50)),
        ro("fullname", Kind::Text(160)),
        ADDRESSES[0],
        ADDRESSES[1],
        ADDRESSES[2],
        rw("telephone1", Kind::Text(50)),
        rw("telephone2", Kind::Text(50)),
        rw("business2", Kind::Text(50)),
        rw("mobilephone", Kind::Text(50)),
        rw("fax", Kind::Text(50)),
        rw("jobtitle", Kind::Text(100)),
        rw("department", Kind::Text(100)),
        rw("nickname", Kind::Text(100)),
        rw("assistantname", Kind::Text(100)),
        rw("spousesname", Kind::Text(100)),
        rw("address1_line1", Kind::Text(250)),
        rw("address1_city", Kind::Text(80)),
        rw("address1_stateorprovince", Kind::Text(50)),
        rw("address1_postalcode", Kind::Text(20)),
        rw("address1_country", Kind::Text(80)),
        rw("websiteurl", Kind::Text(200)),
        rw("description", Kind::Text(2000)),
        rw(
            "parentcustomerid",
            Kind::Lookup(&["account", "contact"], Nav::PerTarget),
        ),
        rw("ownerid", OWNER),
        state(),
        status(),
    ],
    states: &[(0, &[1]), (1, &[2])],
    ..PLAIN
};

pub const LEAD: Table = Table {
    entity: "lead",
    set: "leads",
    key: "leadid",
    columns: &[
        key("leadid"),
        rw("subject", Kind::Text(300)),
        rw("firstname", Kind::Text(50)),
        rw("lastname", Kind::Text(50)),
        ro("fullname", Kind::Text(160)),
        rw("companyname", Kind::Text(100)),
        ADDRESSES[0],
        ADDRESSES[1],
        ADDRESSES[2],
        rw("telephone1", Kind::Text(50)),
        rw("mobilephone", Kind::Text(20)),
        rw("jobtitle", Kind::Text(100)),
        rw("description", Kind::Text(2000)),
        rw("parentaccountid", Kind::Lookup(&["account"], Nav::Column)),
        rw("parentcontactid", Kind::Lookup(&["contact"], Nav::Column)),
        rw("ownerid", OWNER),
        state(),
        status(),
    ],
    states: &[(0, &[1, 2]), (1, &[3]), (2, &[4, 5, 6, 7])],
    ..PLAIN
};

pub const ACCOUNT: Table = Table {
    entity: "account",
    set: "accounts",
    key: "accountid",
    columns: &[
        key("accountid"),
        rw("name", Kind::Text(160)),
        ADDRESSES[0],
        ADDRESSES[1],
        ADDRESSES[2],
        rw("telephone1", Kind::Text(50)),
        rw("websiteurl", Kind::Text(200)),
        rw("parentaccountid", Kind::Lookup(&["account"], Nav::Column)),
        rw("primarycontactid", Kind::Lookup(&["contact"], Nav::Column)),
        rw("ownerid", OWNER),
        state(),
        status(),
    ],
    states: &[(0, &[1]), (1, &[2])],
    ..PLAIN
};

pub const OPPORTUNITY: Table = Table {
    entity: "opportunity",
    set: "opportunities",
    key: "opportunityid",
    columns: &[
        key("opportunityid"),
        rw("name", Kind::Text(300)),
        rw(
            "customerid",
            Kind::Lookup(&["account", "contact"], Nav::PerTarget),
        ),
        rw("parentaccountid", Kind::Lookup(&["account"], Nav::Column)),
        rw("parentcontactid", Kind::Lookup(&["contact"], Nav::Column)),
        rw("ownerid", OWNER),
        state(),
        status(),
    ],
    states: &[(0, &[1, 2]), (1, &[3]), (2, &[4, 5])],
    ..PLAIN
};

pub const INCIDENT: Table = Table {
    entity: "incident",
    set: "incidents",
    key: "incidentid",
    columns: &[
        key("incidentid"),
        rw("title", Kind::Text(200)),
        rw("ticketnumber", Kind::Text(100)),
        rw(
            "customerid",
            Kind::Lookup(&["account", "contact"], Nav::PerTarget),
        ),
        rw("ownerid", OWNER),
        state(),
        status(),
    ],
    states: &[(0, &[1, 2, 3, 4]), (1, &[5, 1000]), (2, &[6, 2000])],
    ..PLAIN
};

pub const SYSTEMUSER: Table = Table {
    entity: "systemuser",
    set: "systemusers",
    key: "systemuserid",
    columns: &[
        key("systemuserid"),
        rw("firstname", Kind::Text(64)),
        rw("lastname", Kind::Text(64)),
        ro("fullname", Kind::Text(200)),
        rw("internalemailaddress", Kind::Text(100)),
        rw("personalemailaddress", Kind::Text(100)),
        rw("domainname", Kind::Text(1024)),
        rw("azureactivedirectoryobjectid", Kind::Guid),
        ro("isdisabled", Kind::Bool),
        rw(
            "businessunitid",
            Kind::Lookup(&["businessunit"], Nav::Column),
        ),
    ],
    ..PLAIN
};

pub const USERSETTINGS: Table = Table {
    entity: "usersettings",
    set: "usersettingscollection",
    key: "systemuserid",
    columns: &[
        key("systemuserid"),
        rw("incomingemailfilteringmethod", Kind::Int),
        rw("autocreatecontactonpromote", Kind::Int),
        rw("synccontactcompany", Kind::Bool),
        rw("outlooksyncinterval", Kind::Int),
        rw("offlinesyncinterval", Kind::Int),
        rw("addressbooksyncinterval", Kind::Int),
        rw("isduplicatedetectionenabledwhengoingonline", Kind::Bool),
        rw("issendasallowed", Kind::Bool),
        rw("trackingtokenid", Kind::Int),
        rw("timezonecode", Kind::Int),
        rw("uilanguageid", Kind::Int),
    ],
    ..PLAIN
};

/// Saved views; `querytype` 256 are the Outlook (sync) filters. Active (0) or inactive (1).
pub const USERQUERY: Table = Table {
    entity: "userquery",
    set: "userqueries",
    key: "userqueryid",
    columns: &[
        key("userqueryid"),
        rw("name", Kind::Text(200)),
        rw("returnedtypecode", Kind::Text(64)),
        rw("fetchxml", Kind::Text(1_073_741_823)),
        rw("querytype", Kind::Int),
        rw("ownerid", OWNER),
        state(),
        status(),
    ],
    states: &[(0, &[1]), (1, &[2])],
    ..PLAIN
};

/// System views; `querytype` 131072 are the Outlook filter templates.
pub const SAVEDQUERY: Table = Table {
    entity: "savedquery",
    set: "savedqueries",
    key: "savedqueryid",
    columns: &[
        key("savedqueryid"),
        rw("name", Kind::Text(200)),
        rw("returnedtypecode", Kind::Text(64)),
        rw("fetchxml", Kind::Text(1_073_741_823)),
        rw("querytype", Kind::Int),
        rw("isdefault", Kind::Bool),
        state(),
        status(),
    ],
    states: &[(0, &[1]), (1, &[2])],
    ..PLAIN
};

pub const QUEUE: Table = Table {
    entity: "queue",
    set: "queues",
    key: "queueid",
    columns: &[
        key("queueid"),
        rw("name", Kind::Text(200)),
        rw("emailaddress", Kind::Text(100)),
        rw("incomingemailfilteringmethod", Kind::Int),
        rw("ownerid", OWNER),
        state(),
        status(),
    ],
    states: &[(0, &[1]), (1, &[2])],
    ..PLAIN
};

pub const MAILBOX: Table = Table {
    entity: "mailbox",
    set: "mailboxes",
    key: "mailboxid",
    columns: &[
        key("mailboxid"),
        rw("name", Kind::Text(200)),
        rw("emailaddress", Kind::Text(100)),
        rw(
            "regardingobjectid",
            Kind::Lookup(&["systemuser", "queue"], Nav::PerTarget),
        ),
        rw("processemailreceivedafter", Kind::DateTime),
        rw("incomingemaildeliverymethod", Kind::Int),
        rw("outgoingemaildeliverymethod", Kind::Int),
        rw("actdeliverymethod", Kind::Int),
        rw("ownerid", OWNER),
        state(),
        status(),
    ],
    states: &[(0, &[1]), (1, &[2])],
    ..PLAIN
};

pub const MAILBOX_TRACKING_FOLDER: Table = Table {
    entity: "mailboxtrackingfolder",
    set: "mailboxtrackingfolders",
    key: "mailboxtrackingfolderid",
    columns: &[
        key("mailboxtrackingfolderid"),
        rw("mailboxid", Kind::Lookup(&["mailbox"], Nav::Column)),
        rw("exchangefolderid", Kind::Text(160)),
        rw("exchangefoldername", Kind::Text(1000)),
        rw("regardingobjectid", Kind::Lookup(REGARDING, Nav::PerTarget)),
        rw("ownerid", OWNER),
    ],
    ..PLAIN
};

pub const ORGANIZATION: Table = Table {
    entity: "organization",
    set: "organizations",
    key: "organizationid",
    columns: &[
        key("organizationid"),
        rw("name", Kind::Text(160)),
        rw("trackingprefix", Kind::Text(256)),
        rw("trackingtokenidbase", Kind::Int),
        rw("trackingtokeniddigits", Kind::Int),
        rw("maximumtrackingnumber", Kind::Int),
        rw("emailcorrelationenabled", Kind::Bool),
        rw("enablesmartmatching", Kind::Bool),
        rw("hashfilterkeywords", Kind::Text(1000)),
        rw("hashmaxcount", Kind::Int),
        rw("hashdeltasubjectcount", Kind::Int),
        rw("hashminaddresscount", Kind::Int),
        rw("isfolderbasedtrackingenabled", Kind::Bool),
        rw("maxfolderbasedtrackingmappings", Kind::Int),
        rw("unresolveemailaddressifmultiplematch", Kind::Bool),
        rw("minofflinesyncinterval", Kind::Int),
        rw("minoutlooksyncinterval", Kind::Int),
        rw("orgdborgsettings", Kind::Text(MAX_MEMO)),
    ],
    ..PLAIN
};

/// Every table the simulator knows, looked up by entity set.
pub const TABLES: &[Table] = &[
    EMAIL,
    APPOINTMENT,
    TASK,
    PHONECALL,
    FAX,
    LETTER,
    CONTACT,
    LEAD,
    ACCOUNT,
    OPPORTUNITY,
    INCIDENT,
    SYSTEMUSER,
    USERSETTINGS,
    USERQUERY,
    SAVEDQUERY,
    QUEUE,
    MAILBOX,
    MAILBOX_TRACKING_FOLDER,
    ORGANIZATION,
];

pub fn by_set(set: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.set == set)
}

pub fn by_entity(entity: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.entity == entity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn navigation_properties_name_their_column_and_target() {
        assert_eq!(
            EMAIL
                .navigation("regardingobjectid_account_email")
                .map(|(c, t)| (c.name, t)),
            Some(("regardingobjectid", "account"))
        );
        assert!(EMAIL.navigation("regardingobjectid_account_task").is_none());
        assert!(
            TASK.navigation("regardingobjectid_account_task").is_some(),
            "each activity names its own"
        );
        assert!(
            TASK.navigation("regardingobjectid_account_task").is_some(),
            "each activity names its own"
        );
        assert!(EMAIL.navigation("regardingobjectid_account").is_none());
        assert!(EMAIL.navigation("anything").is_none());
        assert_eq!(
            CONTACT
                .navigation("parentcustomerid_account")
                .map(|(c, t)| (c.name, t)),
            Some(("parentcustomerid", "account"))
        );
        assert!(CONTACT.navigation("parentcustomerid_lead").is_none());
        assert_eq!(
            ACTIVITY_PARTY.navigation("partyid_lead").map(|(_, t)| t),
            Some("lead")
        );
        assert_eq!(
            LEAD.navigation("ownerid").map(|(c, t)| (c.name, t)),
            Some(("ownerid", "systemuser"))
        );
    }

    #[test]
    fn lookups_read_as_their_value_property_only() {
        assert!(CONTACT.readable("_parentcustomerid_value"));
        assert!(!CONTACT.readable("parentcustomerid"));
        assert!(CONTACT.readable("emailaddress1"));
        assert!(!CONTACT.readable("Name"));
        assert!(!CONTACT.readable("_emailaddress1_value"));
    }

    #[test]
    fn every_table_is_found_by_set_and_entity_and_states_are_consistent() {
        for t in TABLES {
            assert_eq!(by_set(t.set).map(|x| x.entity), Some(t.entity));
            assert_eq!(by_entity(t.entity).map(|x| x.set), Some(t.set));
            assert!(t.column(t.key).is_some(), "{} has its key", t.entity);
            for (state, statuses) in t.states {
                assert_eq!(t.statuses(*state), Some(*statuses));
                assert!(!statuses.is_empty(), "{} state {state}", t.entity);
            }
        }
        assert_eq!(EMAIL.statuses(2), Some(&[5][..]));
    }
}
