//! The directory document: the CRM state the rules read, named after the Dataverse tables and
//! columns (`systemusers`, `usersettingscollection`, `mailboxes`, `mailboxtrackingfolders`, …) so
//! the Dataverse source maps one to one. Columns that Dataverse does not have, or whose storage is
//! not documented, are marked "gateway" or "unconfirmed" below and in README.md.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One whole directory, as a file holds it (TOML or JSON).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryDocument {
    pub organization: Organization,
    #[serde(default)]
    pub systemusers: Vec<SystemUser>,
    #[serde(default)]
    pub usersettingscollection: Vec<UserSettings>,
    #[serde(default)]
    pub queues: Vec<Queue>,
    #[serde(default)]
    pub mailboxes: Vec<Mailbox>,
    #[serde(default)]
    pub mailboxtrackingfolders: Vec<MailboxTrackingFolder>,
    #[serde(default)]
    pub contacts: Vec<Contact>,
    #[serde(default)]
    pub accounts: Vec<Account>,
    #[serde(default)]
    pub leads: Vec<Lead>,
    /// Other e-mail-enabled rows: equipment, teams, business units, custom tables.
    #[serde(default)]
    pub emailenabledrecords: Vec<EmailEnabledRecord>,
    /// Emails already in the CRM, for correlation and duplicate detection.
    #[serde(default)]
    pub emails: Vec<TrackedEmail>,
    /// Appointments the users' Outlook filters may select for synchronisation.
    #[serde(default)]
    pub appointments: Vec<SyncActivity>,
    /// Tasks the filters may select.
    #[serde(default)]
    pub tasks: Vec<SyncActivity>,
    /// Phone calls, faxes and letters: synchronised as Outlook tasks.
    #[serde(default)]
    pub phonecalls: Vec<SyncActivity>,
    #[serde(default)]
    pub faxes: Vec<SyncActivity>,
    #[serde(default)]
    pub letters: Vec<SyncActivity>,
}

impl DirectoryDocument {
    /// The rows of a synchronised activity table by its entity set.
    pub fn activities(&self, set: &str) -> &[SyncActivity] {
        match set {
            "appointments" => &self.appointments,
            "tasks" => &self.tasks,
            "phonecalls" => &self.phonecalls,
            "faxes" => &self.faxes,
            "letters" => &self.letters,
            _ => &[],
        }
    }

    pub fn activities_mut(&mut self, set: &str) -> Option<&mut Vec<SyncActivity>> {
        match set {
            "appointments" => Some(&mut self.appointments),
            "tasks" => Some(&mut self.tasks),
            "phonecalls" => Some(&mut self.phonecalls),
            "faxes" => Some(&mut self.faxes),
            "letters" => Some(&mut self.letters),
            _ => None,
        }
    }
}

/// A lookup value: the target table's logical name and the row id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Lookup {
    /// Borrowed for the tables the rules name themselves, so decisions do not allocate it.
    pub entity: std::borrow::Cow<'static, str>,
    pub id: Uuid,
}

impl Lookup {
    /// A lookup of a table the gateway knows by name (no allocation for the common ones).
    pub fn new(entity: &str, id: Uuid) -> Lookup {
        let entity = match entity {
            "systemuser" => std::borrow::Cow::Borrowed("systemuser"),
            "queue" => std::borrow::Cow::Borrowed("queue"),
            "contact" => std::borrow::Cow::Borrowed("contact"),
            "account" => std::borrow::Cow::Borrowed("account"),
            "lead" => std::borrow::Cow::Borrowed("lead"),
            other => std::borrow::Cow::Owned(other.to_owned()),
        };
        Lookup { entity, id }
    }
}

/// The `organization` row, including the OrgDbOrgSettings it carries as XML in Dataverse.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Organization {
    /// Namespaces the deterministic CRM ids, so two tenants never share one.
    pub organizationid: Uuid,
    /// Tracking-token prefixes, current first then older ones still recognised
    /// (`trackingprefix` holds this history in Dataverse; its list format is unconfirmed, so
    /// `;` and `,` both separate).
    pub trackingprefix: String,
    pub trackingtokenidbase: u32,
    pub trackingtokeniddigits: u8,
    pub maximumtrackingnumber: u32,
    /// "Use correlation" (In-Reply-To and conversation index).
    pub emailcorrelationenabled: bool,
    /// "Use tracking tokens" (column name unconfirmed).
    pub usetrackingtokens: bool,
    pub enablesmartmatching: bool,
    pub hashfilterkeywords: String,
    pub hashmaxcount: u32,
    pub hashdeltasubjectcount: u32,
    pub hashminaddresscount: u32,
    pub isfolderbasedtrackingenabled: bool,
    pub maxfolderbasedtrackingmappings: u32,
    pub unresolveemailaddressifmultiplematch: bool,
    /// When true, incoming mail from users and queues is not tracked ("Track emails sent between
    /// Dynamics 365 users as two activities" off). Mapping to this column is unconfirmed.
    pub ignoreinternalemail: bool,
    /// Gateway: the tracking category's current name and any earlier names. Exchange keeps the
    /// category by id, but the traffic carries names, so a renamed category is listed here.
    pub trackingcategorynames: Vec<String>,
    /// Gateway: the earliest receive time any mailbox processes (the email server profile's
    /// "process email from"); the effective cut-off is the later of this and the mailbox's.
    pub processemailreceivedafter: Option<String>,
    /// "Minimum time between background synchronizations of local data", in minutes: the
    /// Dataverse source never refreshes more often.
    pub minofflinesyncinterval: Option<u32>,
    /// "Minimum allowed time between scheduled Outlook synchronizations", in minutes: the
    /// catch-up sweep never reads a mailbox more often.
    pub minoutlooksyncinterval: Option<u32>,
    pub orgdborgsettings: OrgDbOrgSettings,
    /// The default Outlook filter templates (saved views of `querytype` 131072 marked
    /// default): what a user without filters of their own synchronises.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outlookfiltertemplates: Vec<SyncFilter>,
}

impl Default for Organization {
    fn default() -> Self {
        Organization {
            organizationid: Uuid::nil(),
            trackingprefix: "CRM".into(),
            trackingtokenidbase: 0,
            trackingtokeniddigits: 3,
            maximumtrackingnumber: 999,
            emailcorrelationenabled: true,
            usetrackingtokens: true,
            enablesmartmatching: false,
            hashfilterkeywords: r"^[\s]*([\w]+\s?:[\s]*)+".into(),
            hashmaxcount: 20,
            hashdeltasubjectcount: 0,
            hashminaddresscount: 2,
            isfolderbasedtrackingenabled: true,
            maxfolderbasedtrackingmappings: 25,
            unresolveemailaddressifmultiplematch: false,
            ignoreinternalemail: false,
            trackingcategorynames: vec!["Tracked to Dynamics 365".into()],
            processemailreceivedafter: None,
            minofflinesyncinterval: None,
            minoutlooksyncinterval: None,
            orgdborgsettings: OrgDbOrgSettings::default(),
            outlookfiltertemplates: Vec::new(),
        }
    }
}

/// The OrgDbOrgSettings that change tracking, with their documented defaults.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, rename_all = "PascalCase")]
pub struct OrgDbOrgSettings {
    pub auto_track_sent_folder_items: bool,
    pub track_categorized_items: bool,
    pub auto_create_contact_on_promote: bool,
    pub do_not_auto_track_email: bool,
    pub unresolve_sender_in_case_of_multiple_match: bool,
    pub resolve_for_inactive_entities: bool,
    pub ignore_conversation_index_and_in_reply_to_for_correlation: bool,
    pub do_not_correlate_forwarded_emails_as_replies: bool,
    pub use_filtering_method_of_syncing_mailbox_only_for_correlation: bool,
    pub do_not_ignore_internal_email_to_queues: bool,
    pub ignore_internal_email_from_queues: bool,
    /// A row that stops matching a user's filters (a "logical delete") only unlinks its
    /// Exchange item instead of deleting it.
    pub distinct_physical_and_logical_deletes_for_exchange_sync: bool,
    /// An appointment canceled in the CRM is canceled in Exchange too.
    #[serde(rename = "SSSPropagateAppointmentCancellationsToExchange")]
    pub sss_propagate_appointment_cancellations_to_exchange: bool,
}

impl Default for OrgDbOrgSettings {
    fn default() -> Self {
        OrgDbOrgSettings {
            auto_track_sent_folder_items: false,
            track_categorized_items: true,
            auto_create_contact_on_promote: true,
            do_not_auto_track_email: true,
            unresolve_sender_in_case_of_multiple_match: false,
            resolve_for_inactive_entities: false,
            ignore_conversation_index_and_in_reply_to_for_correlation: false,
            do_not_correlate_forwarded_emails_as_replies: false,
            use_filtering_method_of_syncing_mailbox_only_for_correlation: false,
            do_not_ignore_internal_email_to_queues: true,
            ignore_internal_email_from_queues: false,
            distinct_physical_and_logical_deletes_for_exchange_sync: false,
            sss_propagate_appointment_cancellations_to_exchange: false,
        }
    }
}

/// A `systemusers` row.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SystemUser {
    pub systemuserid: Uuid,
    #[serde(default)]
    pub fullname: Option<String>,
    #[serde(default)]
    pub internalemailaddress: Option<String>,
    #[serde(default)]
    pub personalemailaddress: Option<String>,
    /// The sign-in name (UPN, or `DOMAIN\user` on premises).
    #[serde(default)]
    pub domainname: Option<String>,
    /// Entra ID object id (what a Graph token's `oid` and `/users/{id}` carry).
    #[serde(default)]
    pub azureactivedirectoryobjectid: Option<Uuid>,
    #[serde(default)]
    pub isdisabled: bool,
    /// Gateway: X.500 addresses (legacyExchangeDN and `x500:` proxies) that Exchange shows for
    /// this user on internal mail; sourced from Exchange, not Dataverse.
    #[serde(default)]
    pub x500addresses: Vec<String>,
    #[serde(default)]
    pub createdon: Option<String>,
}

/// How recipients are matched to contacts: the Address Book tab of the legacy Outlook client
/// (COM add-in), whose storage in Dataverse is unconfirmed (docs/domain.md §1.1). Server-side
/// sync resolves recipients to every matching row (docs/domain.md §4.2), so the gateway narrows
/// only when a directory document sets this explicitly; see
/// [`UserSettings::addressbookcontactmatching`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactMatching {
    /// "Match only against contacts synchronized to Dynamics 365" (the legacy client's
    /// default). The gateway reads "synchronized" as "owned by the user", the default "My
    /// Outlook Contacts" filter.
    Synchronized,
    All,
}

/// How recipients are matched to other record types (the legacy Outlook client's Address Book
/// tab; storage unconfirmed). Applied only when set explicitly, as [`ContactMatching`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OtherMatching {
    None,
    /// "Match only the items I own" (the legacy client's default).
    Mine,
    All,
}

fn enabled_default() -> bool {
    true
}

/// A saved view as the Dataverse source replicates it (`userquery`): the Outlook (sync)
/// filters, `querytype` 256, become each owner's `syncfilters`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct UserQuery {
    pub userqueryid: Uuid,
    #[serde(default)]
    pub name: Option<String>,
    /// The table it selects (logical name).
    #[serde(default)]
    pub returnedtypecode: Option<String>,
    #[serde(default)]
    pub fetchxml: Option<String>,
    pub querytype: i32,
    #[serde(default)]
    pub statecode: u8,
    #[serde(default)]
    pub ownerid: Option<Uuid>,
}

/// A system view as the Dataverse source replicates it (`savedquery`): the Outlook filter
/// templates, `querytype` 131072.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SavedQuery {
    pub savedqueryid: Uuid,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub returnedtypecode: Option<String>,
    #[serde(default)]
    pub fetchxml: Option<String>,
    pub querytype: i32,
    #[serde(default)]
    pub isdefault: bool,
    #[serde(default)]
    pub statecode: u8,
}

/// A sync or offline filter, stored for later use (the rules do not read them).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncFilter {
    /// The `userquery` row it is, when it came from Dataverse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userqueryid: Option<Uuid>,
    /// Whether it is on (`statecode` 0, Active, in Dataverse).
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    pub entity: String,
    #[serde(default)]
    pub name: Option<String>,
    /// An OData `$filter` expression or FetchXML.
    #[serde(default)]
    pub filter: Option<String>,
}

/// A `usersettingscollection` row: every option of "Set Personal Options" that matters here.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserSettings {
    pub systemuserid: Uuid,
    /// 0 all, 1 responses to CRM email (default), 2 from leads/contacts/accounts,
    /// 3 from e-mail-enabled records, 4 none.
    pub incomingemailfilteringmethod: u8,
    /// 0 none, 1 contacts, 2 leads.
    pub autocreatecontactonpromote: u8,
    /// "Update the Company field with the parent account".
    pub synccontactcompany: bool,
    pub outlooksyncinterval: Option<u32>,
    pub offlinesyncinterval: Option<u32>,
    pub addressbooksyncinterval: Option<u32>,
    /// Unset (the default, and always so from the Dataverse source, which has no column to read
    /// it from): recipients resolve to every matching contact, as server-side sync does. Set it
    /// only to reproduce a legacy Outlook client's narrowing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addressbookcontactmatching: Option<ContactMatching>,
    /// Unset (the default, and always so from Dataverse): recipients resolve to every matching
    /// account, lead and other e-mail-enabled row. Set it only to narrow on purpose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addressbookothermatching: Option<OtherMatching>,
    pub isduplicatedetectionenabledwhengoingonline: bool,
    pub issendasallowed: bool,
    /// "Allow CRM to send email using your mailbox" (storage unconfirmed).
    pub allowcrmsendemail: bool,
    pub trackingtokenid: Option<u32>,
    pub syncfilters: Vec<SyncFilter>,
    pub offlinefilters: Vec<SyncFilter>,
    /// Gateway: senders or domains this user never wants tracked (`someone@example.com`, or
    /// `example.com` for a domain and its subdomains; lower-case), set on the options page.
    /// Dataverse has no column for it; the gateway keeps it (README "Options page").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trackingexclusions: Vec<String>,
}

impl Default for UserSettings {
    fn default() -> Self {
        UserSettings {
            systemuserid: Uuid::nil(),
            incomingemailfilteringmethod: 1,
            autocreatecontactonpromote: 0,
            synccontactcompany: false,
            outlooksyncinterval: None,
            offlinesyncinterval: None,
            addressbooksyncinterval: None,
            addressbookcontactmatching: None,
            addressbookothermatching: None,
            isduplicatedetectionenabledwhengoingonline: false,
            issendasallowed: false,
            allowcrmsendemail: false,
            trackingtokenid: None,
            syncfilters: Vec::new(),
            trackingexclusions: Vec::new(),
            offlinefilters: Vec::new(),
        }
    }
}

/// A `queues` row.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    pub queueid: Uuid,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub emailaddress: Option<String>,
    /// "Convert incoming email to activities"; same values as the user option.
    #[serde(default = "default_filter")]
    pub incomingemailfilteringmethod: u8,
    #[serde(default)]
    pub ownerid: Option<Uuid>,
    #[serde(default)]
    pub statecode: u8,
    #[serde(default)]
    pub createdon: Option<String>,
}

fn default_filter() -> u8 {
    1
}

fn default_delivery() -> u8 {
    2
}

fn default_act_delivery() -> u8 {
    1
}

/// A `mailboxes` row.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mailbox {
    pub mailboxid: Uuid,
    pub emailaddress: String,
    /// The owning user (`systemuser`) or queue (`queue`).
    pub regardingobjectid: Lookup,
    #[serde(default)]
    pub processemailreceivedafter: Option<String>,
    /// 0 none, 1 Outlook, 2 server-side synchronization (default), 3 forward mailbox.
    #[serde(default = "default_delivery")]
    pub incomingemaildeliverymethod: u8,
    /// Appointments, contacts and tasks: 0 Dynamics 365 for Outlook, 1 server-side
    /// synchronization (the default here), 2 none. Only server-side sync is synchronised by
    /// the gateway, and never for a queue's mailbox.
    #[serde(default = "default_act_delivery")]
    pub actdeliverymethod: u8,
    /// Outgoing email: 0 none, 1 Outlook, 2 server-side synchronization (the default): CRM
    /// mail in Pending Send goes out through this mailbox.
    #[serde(default = "default_delivery")]
    pub outgoingemaildeliverymethod: u8,
}

/// A `mailboxtrackingfolders` row: a folder tracking rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxTrackingFolder {
    #[serde(default)]
    pub mailboxtrackingfolderid: Option<Uuid>,
    pub mailboxid: Uuid,
    pub exchangefolderid: String,
    #[serde(default)]
    pub exchangefoldername: Option<String>,
    #[serde(default)]
    pub regardingobjectid: Option<Lookup>,
}

// Contacts, accounts and leads look alike but stay separate structs: their id columns differ,
// and serde cannot combine `deny_unknown_fields` (every unknown column is an error) with the
// `flatten` a shared part would need.

/// A `contacts` row.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    pub contactid: Uuid,
    #[serde(default)]
    pub fullname: Option<String>,
    #[serde(default)]
    pub emailaddress1: Option<String>,
    #[serde(default)]
    pub emailaddress2: Option<String>,
    #[serde(default)]
    pub emailaddress3: Option<String>,
    #[serde(default)]
    pub ownerid: Option<Uuid>,
    #[serde(default)]
    pub statecode: u8,
    #[serde(default)]
    pub createdon: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modifiedon: Option<String>,
    /// The row version, raised on every change: how synchronisation knows a linked row needs
    /// writing again (`modifiedon` has only seconds).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "row_version"
    )]
    pub versionnumber: Option<u64>,
    #[serde(default)]
    pub parentcustomerid: Option<Lookup>,
}

/// A row version as the Web API writes it: a number, or (for BigInt columns, in some
/// serialisations) a string of digits.
fn row_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Version {
        Number(u64),
        Text(String),
    }
    match Option::<Version>::deserialize(d)? {
        None => Ok(None),
        Some(Version::Number(n)) => Ok(Some(n)),
        Some(Version::Text(t)) => t.trim().parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// An appointment or task row, with the columns sync filters read and the change mark
/// synchronisation compares; the synchronised fields themselves are read when a row is written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncActivity {
    pub activityid: Uuid,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub ownerid: Option<Uuid>,
    #[serde(default)]
    pub statecode: u8,
    #[serde(default)]
    pub statuscode: Option<u32>,
    #[serde(default)]
    pub scheduledstart: Option<String>,
    #[serde(default)]
    pub scheduledend: Option<String>,
    #[serde(default)]
    pub createdon: Option<String>,
    #[serde(default)]
    pub modifiedon: Option<String>,
    #[serde(default, deserialize_with = "row_version")]
    pub versionnumber: Option<u64>,
    #[serde(default)]
    pub regardingobjectid: Option<Lookup>,
}

/// An `accounts` row.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub accountid: Uuid,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub emailaddress1: Option<String>,
    #[serde(default)]
    pub emailaddress2: Option<String>,
    #[serde(default)]
    pub emailaddress3: Option<String>,
    #[serde(default)]
    pub ownerid: Option<Uuid>,
    #[serde(default)]
    pub statecode: u8,
    #[serde(default)]
    pub createdon: Option<String>,
    #[serde(default)]
    pub parentaccountid: Option<Uuid>,
}

/// A `leads` row.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Lead {
    pub leadid: Uuid,
    #[serde(default)]
    pub fullname: Option<String>,
    #[serde(default)]
    pub emailaddress1: Option<String>,
    #[serde(default)]
    pub emailaddress2: Option<String>,
    #[serde(default)]
    pub emailaddress3: Option<String>,
    #[serde(default)]
    pub ownerid: Option<Uuid>,
    #[serde(default)]
    pub statecode: u8,
    #[serde(default)]
    pub createdon: Option<String>,
    #[serde(default)]
    pub parentaccountid: Option<Uuid>,
}

/// Any other e-mail-enabled row (equipment, team, business unit, custom table).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailEnabledRecord {
    /// Logical name of the table, e.g. `equipment`, `team`, `businessunit`, `new_vendor`.
    pub entity: String,
    pub id: Uuid,
    #[serde(default)]
    pub name: Option<String>,
    pub emailaddresses: Vec<String>,
    #[serde(default)]
    pub ownerid: Option<Uuid>,
    #[serde(default)]
    pub statecode: u8,
    #[serde(default)]
    pub createdon: Option<String>,
}

/// An `emails` row already in the CRM (only the columns correlation needs).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrackedEmail {
    pub activityid: Uuid,
    #[serde(default)]
    pub messageid: Option<String>,
    #[serde(default)]
    pub trackingtoken: Option<String>,
    /// Base64, as Exchange shows it; the first 22 bytes identify the thread.
    #[serde(default)]
    pub conversationindex: Option<String>,
    /// Gateway: Exchange's ConversationId (Graph `conversationId`).
    #[serde(default)]
    pub conversationid: Option<String>,
    /// true = outgoing (the Dataverse default).
    #[serde(default = "default_true")]
    pub directioncode: bool,
    #[serde(default)]
    pub regardingobjectid: Option<Lookup>,
    #[serde(default)]
    pub ownerid: Option<Uuid>,
    /// For smart matching.
    #[serde(default)]
    pub subject: Option<String>,
    /// Gateway: the sender and recipient addresses, for smart matching.
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub createdon: Option<String>,
}

fn default_true() -> bool {
    true
}
