//! How the directory's tables look on the Dataverse Web API: the entity sets, the columns read
//! (`$select`), and the conversion of a Web API row (lookups as `_<column>_value` with the
//! `Microsoft.Dynamics.CRM.lookuplogicalname` annotation, OrgDbOrgSettings as XML) into the
//! directory model, plus the reverse for the simulator that stands in for Dataverse.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::model::{EmailEnabledRecord, OrgDbOrgSettings};

/// The annotation that names a lookup's table (asked for with
/// `Prefer: odata.include-annotations="Microsoft.Dynamics.CRM.lookuplogicalname"`).
pub const LOOKUP_ANNOTATION: &str = "@Microsoft.Dynamics.CRM.lookuplogicalname";

/// A column of a table, as the directory model names it.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    /// Same name and value on the wire and in the model.
    Column(&'static str),
    /// A single-target lookup (`_<name>_value` on the wire) kept as the id alone; the target's
    /// entity set is given for the simulator.
    LookupId(&'static str, &'static str),
    /// A lookup kept with its table (`{entity, id}`), read from the annotation.
    Lookup(&'static str),
}

impl Field {
    pub fn name(&self) -> &'static str {
        match self {
            Field::Column(n) | Field::LookupId(n, _) | Field::Lookup(n) => n,
        }
    }

    /// The name on the wire (what `$select` and `$filter` use).
    pub fn wire(&self) -> String {
        match self {
            Field::Column(n) => (*n).to_owned(),
            Field::LookupId(n, _) | Field::Lookup(n) => format!("_{n}_value"),
        }
    }
}

/// One table the directory replicates.
#[derive(Debug, Clone, Copy)]
pub struct TableSpec {
    /// The entity set, also the directory document's table name.
    pub set: &'static str,
    pub key: &'static str,
    pub fields: &'static [Field],
}

use Field::{Column as C, Lookup as L, LookupId as Id};

const ADDRESSES: [Field; 3] = [C("emailaddress1"), C("emailaddress2"), C("emailaddress3")];

pub const SYSTEMUSERS: TableSpec = TableSpec {
    set: "systemusers",
    key: "systemuserid",
    fields: &[
        C("systemuserid"),
        C("fullname"),
        C("internalemailaddress"),
        C("personalemailaddress"),
        C("domainname"),
        C("azureactivedirectoryobjectid"),
        C("isdisabled"),
        C("createdon"),
    ],
};

/// The personal options. Columns the gateway keeps that have no documented storage
/// (address-book matching, "allow CRM to send email", sync and offline filters) are not read
/// and take their defaults (address-book matching unset: it never narrows).
pub const USERSETTINGS: TableSpec = TableSpec {
    set: "usersettingscollection",
    key: "systemuserid",
    fields: &[
        C("systemuserid"),
        C("incomingemailfilteringmethod"),
        C("autocreatecontactonpromote"),
        C("synccontactcompany"),
        C("outlooksyncinterval"),
        C("offlinesyncinterval"),
        C("addressbooksyncinterval"),
        C("isduplicatedetectionenabledwhengoingonline"),
        C("issendasallowed"),
        C("trackingtokenid"),
    ],
};

/// Saved views, for the Outlook (sync) filters (`querytype` 256) among them. The application
/// user needs Read on Saved View at Organization depth to see every user's (unconfirmed:
/// Dataverse's default roles may grant it at User depth only).
pub const USERQUERIES: TableSpec = TableSpec {
    set: "userqueries",
    key: "userqueryid",
    fields: &[
        C("userqueryid"),
        C("name"),
        C("returnedtypecode"),
        C("fetchxml"),
        C("querytype"),
        C("statecode"),
        Id("ownerid", "systemusers"),
    ],
};

/// System views, for the Outlook filter templates (`querytype` 131072) among them.
pub const SAVEDQUERIES: TableSpec = TableSpec {
    set: "savedqueries",
    key: "savedqueryid",
    fields: &[
        C("savedqueryid"),
        C("name"),
        C("returnedtypecode"),
        C("fetchxml"),
        C("querytype"),
        C("isdefault"),
        C("statecode"),
    ],
};

pub const QUEUES: TableSpec = TableSpec {
    set: "queues",
    key: "queueid",
    fields: &[
        C("queueid"),
        C("name"),
        C("emailaddress"),
        C("incomingemailfilteringmethod"),
        Id("ownerid", "systemusers"),
        C("statecode"),
        C("createdon"),
    ],
};

pub const MAILBOXES: TableSpec = TableSpec {
    set: "mailboxes",
    key: "mailboxid",
    fields: &[
        C("mailboxid"),
        C("emailaddress"),
        L("regardingobjectid"),
        C("processemailreceivedafter"),
        C("incomingemaildeliverymethod"),
        C("actdeliverymethod"),
        C("outgoingemaildeliverymethod"),
    ],
};

pub const FOLDERS: TableSpec = TableSpec {
    set: "mailboxtrackingfolders",
    key: "mailboxtrackingfolderid",
    fields: &[
        C("mailboxtrackingfolderid"),
        Id("mailboxid", "mailboxes"),
        C("exchangefolderid"),
        C("exchangefoldername"),
        L("regardingobjectid"),
    ],
};

pub const CONTACTS: TableSpec = TableSpec {
    set: "contacts",
    key: "contactid",
    fields: &[
        C("contactid"),
        C("fullname"),
        ADDRESSES[0],
        ADDRESSES[1],
        ADDRESSES[2],
        Id("ownerid", "systemusers"),
        C("statecode"),
        C("createdon"),
        C("modifiedon"),
        C("versionnumber"),
        L("parentcustomerid"),
    ],
};

const ACTIVITY_FIELDS: &[Field] = &[
    C("activityid"),
    C("subject"),
    Id("ownerid", "systemusers"),
    C("statecode"),
    C("statuscode"),
    C("scheduledstart"),
    C("scheduledend"),
    C("createdon"),
    C("modifiedon"),
    C("versionnumber"),
    L("regardingobjectid"),
];

/// Appointments, for synchronisation to the users' calendars.
pub const APPOINTMENTS: TableSpec = TableSpec {
    set: "appointments",
    key: "activityid",
    fields: ACTIVITY_FIELDS,
};

/// Tasks, for synchronisation to the users' task lists.
pub const TASKS: TableSpec = TableSpec {
    set: "tasks",
    key: "activityid",
    fields: ACTIVITY_FIELDS,
};

/// Phone calls, faxes and letters: Outlook keeps them as tasks too (docs/domain.md §5.1).
pub const PHONECALLS: TableSpec = TableSpec {
    set: "phonecalls",
    key: "activityid",
    fields: ACTIVITY_FIELDS,
};

pub const FAXES: TableSpec = TableSpec {
    set: "faxes",
    key: "activityid",
    fields: ACTIVITY_FIELDS,
};

pub const LETTERS: TableSpec = TableSpec {
    set: "letters",
    key: "activityid",
    fields: ACTIVITY_FIELDS,
};

/// The activity tables synchronisation selects from, replicated alike.
pub const SYNC_ACTIVITIES: [TableSpec; 5] = [APPOINTMENTS, TASKS, PHONECALLS, FAXES, LETTERS];

pub const ACCOUNTS: TableSpec = TableSpec {
    set: "accounts",
    key: "accountid",
    fields: &[
        C("accountid"),
        C("name"),
        ADDRESSES[0],
        ADDRESSES[1],
        ADDRESSES[2],
        Id("ownerid", "systemusers"),
        C("statecode"),
        C("createdon"),
        Id("parentaccountid", "accounts"),
    ],
};

pub const LEADS: TableSpec = TableSpec {
    set: "leads",
    key: "leadid",
    fields: &[
        C("leadid"),
        C("fullname"),
        ADDRESSES[0],
        ADDRESSES[1],
        ADDRESSES[2],
        Id("ownerid", "systemusers"),
        C("statecode"),
        C("createdon"),
        Id("parentaccountid", "accounts"),
    ],
};

/// Emails already tracked, for correlation. Their addresses come from the expanded activity
/// parties (`$expand=email_activity_parties($select=addressused)`).
pub const EMAILS: TableSpec = TableSpec {
    set: "emails",
    key: "activityid",
    fields: &[
        C("activityid"),
        C("messageid"),
        C("trackingtoken"),
        C("conversationindex"),
        C("directioncode"),
        L("regardingobjectid"),
        Id("ownerid", "systemusers"),
        C("subject"),
        C("createdon"),
    ],
};

/// The organization row; `orgdborgsettings` is XML on the wire.
pub const ORGANIZATIONS: TableSpec = TableSpec {
    set: "organizations",
    key: "organizationid",
    fields: &[
        C("organizationid"),
        C("trackingprefix"),
        C("trackingtokenidbase"),
        C("trackingtokeniddigits"),
        C("maximumtrackingnumber"),
        C("emailcorrelationenabled"),
        C("enablesmartmatching"),
        C("hashfilterkeywords"),
        C("hashmaxcount"),
        C("hashdeltasubjectcount"),
        C("hashminaddresscount"),
        C("isfolderbasedtrackingenabled"),
        C("maxfolderbasedtrackingmappings"),
        C("unresolveemailaddressifmultiplematch"),
        C("minofflinesyncinterval"),
        C("minoutlooksyncinterval"),
        C("orgdborgsettings"),
    ],
};

/// Whether the source asks Dataverse to track a table's changes. Saved and system views are read whole
/// each refresh: whether `userquery` has change tracking on is not documented, and asking for
/// it where it is off could fail the whole refresh.
pub fn tracks_changes(set: &str) -> bool {
    set != USERQUERIES.set && set != SAVEDQUERIES.set
}

/// Every fixed table, in load order.
pub const TABLES: [TableSpec; 17] = [
    ORGANIZATIONS,
    SYSTEMUSERS,
    USERSETTINGS,
    USERQUERIES,
    SAVEDQUERIES,
    QUEUES,
    MAILBOXES,
    FOLDERS,
    CONTACTS,
    ACCOUNTS,
    LEADS,
    EMAILS,
    APPOINTMENTS,
    TASKS,
    PHONECALLS,
    FAXES,
    LETTERS,
];

/// Another e-mail-enabled table to replicate (a custom table, equipment, …), from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherTable {
    /// Logical name, e.g. `new_vendor`.
    pub entity: String,
    /// Entity set, e.g. `new_vendors`.
    pub set: String,
    /// Primary key column, e.g. `new_vendorid`.
    pub key: String,
    /// Primary name column, if any.
    pub name: Option<String>,
    /// The columns of format Email.
    pub addresses: Vec<String>,
    /// Whether the table has `ownerid` (user- or team-owned) and `statecode`.
    pub owned: bool,
}

impl OtherTable {
    pub fn select(&self) -> Vec<String> {
        let mut columns = vec![self.key.clone()];
        columns.extend(self.name.clone());
        columns.extend(self.addresses.iter().cloned());
        columns.push("createdon".into());
        if self.owned {
            columns.push("_ownerid_value".into());
            columns.push("statecode".into());
        }
        columns
    }

    /// A Web API row as a directory record.
    pub fn record(&self, row: &Map<String, Value>) -> Option<EmailEnabledRecord> {
        let text = |c: &str| row.get(c).and_then(Value::as_str).map(str::to_owned);
        Some(EmailEnabledRecord {
            entity: self.entity.clone(),
            id: text(&self.key).and_then(|t| Uuid::parse_str(&t).ok())?,
            name: self.name.as_deref().and_then(text),
            emailaddresses: self.addresses.iter().filter_map(|c| text(c)).collect(),
            ownerid: text("_ownerid_value").and_then(|t| Uuid::parse_str(&t).ok()),
            statecode: row
                .get("statecode")
                .and_then(Value::as_u64)
                .and_then(|s| u8::try_from(s).ok())
                .unwrap_or(0),
            createdon: text("createdon"),
        })
    }
}

impl TableSpec {
    /// The `$select` list.
    pub fn select(&self) -> String {
        self.fields
            .iter()
            .map(Field::wire)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The row's primary key.
    pub fn id(&self, row: &Map<String, Value>) -> Option<Uuid> {
        row.get(self.key)
            .and_then(Value::as_str)
            .and_then(|t| Uuid::parse_str(t).ok())
    }

    /// A Web API row in the directory model's shape (nulls left out so defaults apply).
    pub fn to_model(&self, row: &Map<String, Value>) -> Map<String, Value> {
        let mut out = Map::new();
        for field in self.fields {
            let wire = field.wire();
            let Some(value) = row.get(&wire).filter(|v| !v.is_null()) else {
                continue;
            };
            let value = match field {
                Field::Column("orgdborgsettings") => match value.as_str() {
                    Some(xml) => match serde_json::to_value(parse_orgdborgsettings(xml)) {
                        Ok(v) => v,
                        Err(_) => continue,
                    },
                    None => continue,
                },
                Field::Column(_) | Field::LookupId(..) => value.clone(),
                Field::Lookup(_) => {
                    let Some(entity) = row
                        .get(&format!("{wire}{LOOKUP_ANNOTATION}"))
                        .and_then(Value::as_str)
                    else {
                        continue;
                    };
                    serde_json::json!({"entity": entity, "id": value})
                }
            };
            out.insert(field.name().to_owned(), value);
        }
        out
    }

    /// A Web API row as a model row of type `T`.
    pub fn parse<T: DeserializeOwned>(&self, row: &Map<String, Value>) -> Result<T, String> {
        serde_json::from_value(Value::Object(self.to_model(row))).map_err(|e| e.to_string())
    }

    /// A model row as the simulator stores it: lookups as `_<column>_value` objects
    /// `{set, id}` (the simulator shows them as Dataverse does), OrgDbOrgSettings as XML.
    pub fn from_model(&self, model: &Map<String, Value>) -> Map<String, Value> {
        let mut out = Map::new();
        for field in self.fields {
            let Some(value) = model.get(field.name()).filter(|v| !v.is_null()) else {
                continue;
            };
            match field {
                Field::Column("orgdborgsettings") => {
                    let settings: OrgDbOrgSettings =
                        serde_json::from_value(value.clone()).unwrap_or_default();
                    out.insert(
                        field.name().into(),
                        write_orgdborgsettings(&settings).into(),
                    );
                }
                Field::Column(n) => {
                    out.insert((*n).into(), value.clone());
                }
                Field::LookupId(_, set) => {
                    out.insert(field.wire(), serde_json::json!({"set": set, "id": value}));
                }
                Field::Lookup(_) => {
                    let entity = value.get("entity").and_then(Value::as_str).unwrap_or("");
                    out.insert(
                        field.wire(),
                        serde_json::json!({"set": entity_set(entity), "id": value.get("id")}),
                    );
                }
            }
        }
        out
    }
}

/// The entity set of a table's logical name (`contact` → `contacts`, `opportunity` →
/// `opportunities`). Custom tables may set another name in Dataverse; this is the default rule.
pub fn entity_set(entity: &str) -> String {
    if entity == "usersettings" {
        return "usersettingscollection".into();
    }
    if let Some(stem) = entity.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'o', 'u'])
    {
        return format!("{stem}ies");
    }
    if entity.ends_with('s') || entity.ends_with("ch") || entity.ends_with('x') {
        return format!("{entity}es");
    }
    format!("{entity}s")
}

/// Reads `<OrgSettings><Name>value</Name>…</OrgSettings>`: the settings the rules use, with the
/// documented defaults for those not present. Unknown settings and unreadable values are
/// ignored (the XML holds hundreds of settings that do not concern tracking).
pub fn parse_orgdborgsettings(xml: &str) -> OrgDbOrgSettings {
    let mut values = Map::new();
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut current: Option<String> = None;
    let mut depth = 0usize;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(e)) => {
                depth += 1;
                if depth > 8 {
                    break;
                }
                current = Some(e.local_name().into_inner().to_owned());
            }
            Ok(quick_xml::events::Event::Text(t)) => {
                if let Some(name) = &current {
                    let text = t.xml10_content();
                    match text.trim().to_ascii_lowercase().as_str() {
                        "true" | "1" => values.insert(name.clone(), Value::Bool(true)),
                        "false" | "0" => values.insert(name.clone(), Value::Bool(false)),
                        _ => None,
                    };
                }
            }
            Ok(quick_xml::events::Event::End(_)) => {
                depth = depth.saturating_sub(1);
                current = None;
            }
            Ok(quick_xml::events::Event::Eof) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // Keep only the names the model knows, so one unexpected setting cannot fail the rest.
    let known = match serde_json::to_value(OrgDbOrgSettings::default()) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let mut merged = known.clone();
    for (name, value) in values {
        if let Some(slot) = merged.get_mut(&name) {
            *slot = value;
        }
    }
    serde_json::from_value(Value::Object(merged)).unwrap_or_default()
}

/// The XML Dataverse keeps OrgDbOrgSettings in.
pub fn write_orgdborgsettings(settings: &OrgDbOrgSettings) -> String {
    let mut xml = String::from("<OrgSettings>");
    if let Ok(Value::Object(m)) = serde_json::to_value(settings) {
        for (name, value) in m {
            xml.push_str(&format!("<{name}>{value}</{name}>"));
        }
    }
    xml.push_str("</OrgSettings>");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::model::{Contact, Lookup, MailboxTrackingFolder};
    use serde_json::json;

    #[test]
    fn web_api_rows_become_model_rows_with_lookups_resolved() {
        let id = Uuid::from_u128(7);
        let row = json!({
            "contactid": id.to_string(),
            "fullname": "Pat Doe",
            "emailaddress1": "pat@fabrikam.com",
            "emailaddress2": null,
            "_ownerid_value": Uuid::from_u128(1).to_string(),
            "_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname": "systemuser",
            "statecode": 0,
            "_parentcustomerid_value": Uuid::from_u128(9).to_string(),
            "_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname": "account",
        });
        let contact: Contact = CONTACTS.parse(row.as_object().unwrap()).unwrap();
        assert_eq!(contact.contactid, id);
        assert_eq!(contact.ownerid, Some(Uuid::from_u128(1)));
        assert_eq!(contact.emailaddress2, None);
        assert_eq!(
            contact.parentcustomerid,
            Some(Lookup::new("account", Uuid::from_u128(9)))
        );
        assert!(CONTACTS.select().contains("_parentcustomerid_value"));
        let folder = json!({"mailboxtrackingfolderid": id.to_string(),
            "_mailboxid_value": Uuid::from_u128(3).to_string(), "exchangefolderid": "AAMk="});
        let folder: MailboxTrackingFolder = FOLDERS.parse(folder.as_object().unwrap()).unwrap();
        assert_eq!(folder.mailboxid, Uuid::from_u128(3));
        assert!(folder.regardingobjectid.is_none());
    }

    #[test]
    fn orgdborgsettings_xml_round_trips_and_unknown_settings_are_ignored() {
        let settings = OrgDbOrgSettings {
            auto_track_sent_folder_items: true,
            auto_create_contact_on_promote: false,
            ..OrgDbOrgSettings::default()
        };
        let xml = write_orgdborgsettings(&settings);
        let back = parse_orgdborgsettings(&xml);
        assert!(back.auto_track_sent_folder_items);
        assert!(!back.auto_create_contact_on_promote);
        let real = "<OrgSettings><IsRequiredStringValidationEnabled>true</IsRequiredStringValidationEnabled>\
            <DoNotAutoTrackEmail>false</DoNotAutoTrackEmail><TrackCategorizedItems>nonsense</TrackCategorizedItems></OrgSettings>";
        let parsed = parse_orgdborgsettings(real);
        assert!(!parsed.do_not_auto_track_email);
        assert!(
            parsed.track_categorized_items,
            "an unreadable value keeps the default"
        );
        assert!(parsed.auto_create_contact_on_promote);
    }
}
