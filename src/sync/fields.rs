//! The synchronised fields of appointments, contacts and tasks: for each row of the
//! synchronized-fields table (`crm.fields`, defaults in docs/domain.md §5.2) the Dataverse
//! columns and the Exchange fields it stands for, and the conversions between them. Values are
//! compared in Exchange's form (text as EWS writes it, times in RFC 3339 UTC), so a field is
//! "changed" on a side when its value there differs from the one both sides last agreed on.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::common::time::{format_seconds, timestamp_seconds};
use crate::crm::mapping::{FieldMap, FieldTable, SyncDirection};
use crate::exchange::ItemKind;

/// How a field's value converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// Text both sides; one column ↔ one Exchange field.
    Text(&'static str, &'static str),
    /// A date-time column ↔ an Exchange date-time.
    Time(&'static str, &'static str),
    /// A Boolean column ↔ `true`/`false`.
    Flag(&'static str, &'static str),
    /// A whole-number column ↔ a number.
    Number(&'static str, &'static str),
    /// `prioritycode` (0 Low, 1 Normal, 2 High) ↔ `Importance`.
    Priority,
    /// An appointment's `statecode`/`statuscode` ↔ `LegacyFreeBusyStatus`.
    ShowTimeAs,
    /// A task's `statecode`/`statuscode` ↔ `Status`.
    TaskStatus,
    /// Activity parties of a participation mask ↔ attendees (addresses).
    Attendees(u8, &'static str),
}

/// One synchronised field: its label in the table, its direction, its conversions.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncField {
    pub label: String,
    pub direction: SyncDirection,
    pub conversions: Vec<Conversion>,
}

impl SyncField {
    /// The Dataverse columns it reads.
    pub fn columns(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for c in &self.conversions {
            match c {
                Conversion::Text(col, _)
                | Conversion::Time(col, _)
                | Conversion::Flag(col, _)
                | Conversion::Number(col, _) => out.push(*col),
                Conversion::Priority => out.push("prioritycode"),
                Conversion::ShowTimeAs | Conversion::TaskStatus => {
                    out.extend(["statecode", "statuscode"])
                }
                Conversion::Attendees(..) => {}
            }
        }
        out
    }

    /// Whether it reads activity parties.
    pub fn needs_parties(&self) -> bool {
        self.conversions
            .iter()
            .any(|c| matches!(c, Conversion::Attendees(..)))
    }
}

/// The conversions a table row names, by its Outlook label (and its columns where the label
/// alone is not enough). `None`: a field trackgate does not synchronise (named in the README).
fn conversions(kind: ItemKind, map: &FieldMap) -> Option<Vec<Conversion>> {
    use Conversion::*;
    let label = map.outlook.as_str();
    Some(match (kind, label) {
        (_, "Subject") => vec![Text("subject", "Subject")],
        (ItemKind::Appointment | ItemKind::Task, "Body" | "Notes") => {
            vec![Text("description", "Body")]
        }
        (_, "Importance") => vec![Priority],
        (ItemKind::Appointment, "Appointment Time") => vec![
            Time("scheduledstart", "Start"),
            Time("scheduledend", "End"),
            Flag("isalldayevent", "IsAllDayEvent"),
        ],
        (ItemKind::Appointment, "Location") => vec![Text("location", "Location")],
        (ItemKind::Appointment, "Required Attendees") => vec![Attendees(5, "RequiredAttendees")],
        (ItemKind::Appointment, "Optional Attendees") => vec![Attendees(6, "OptionalAttendees")],
        (ItemKind::Appointment, "Show Time As") => vec![ShowTimeAs],
        (ItemKind::Contact, "Full Name") => vec![
            Text("firstname", "GivenName"),
            Text("middlename", "MiddleName"),
            Text("lastname", "Surname"),
        ],
        (ItemKind::Contact, "E-mail") => {
            vec![Text("emailaddress1", "EmailAddresses/EmailAddress1")]
        }
        (ItemKind::Contact, "E-mail 2") => {
            vec![Text("emailaddress2", "EmailAddresses/EmailAddress2")]
        }
        (ItemKind::Contact, "E-mail 3") => {
            vec![Text("emailaddress3", "EmailAddresses/EmailAddress3")]
        }
        (ItemKind::Contact, "Business Phone") => {
            vec![Text("telephone1", "PhoneNumbers/BusinessPhone")]
        }
        (ItemKind::Contact, "Business Phone 2") => {
            vec![Text("business2", "PhoneNumbers/BusinessPhone2")]
        }
        (ItemKind::Contact, "Home Phone") => vec![Text("telephone2", "PhoneNumbers/HomePhone")],
        (ItemKind::Contact, "Mobile") => vec![Text("mobilephone", "PhoneNumbers/MobilePhone")],
        (ItemKind::Contact, "Business Fax") => vec![Text("fax", "PhoneNumbers/BusinessFax")],
        (ItemKind::Contact, "Job Title") => vec![Text("jobtitle", "JobTitle")],
        (ItemKind::Contact, "Department") => vec![Text("department", "Department")],
        (ItemKind::Contact, "Web Page") => vec![Text("websiteurl", "BusinessHomePage")],
        (ItemKind::Contact, "Nickname") => vec![Text("nickname", "Nickname")],
        (ItemKind::Contact, "Assistant's Name") => vec![Text("assistantname", "AssistantName")],
        (ItemKind::Contact, "Spouse/Partner") => vec![Text("spousesname", "SpouseName")],
        (ItemKind::Contact, "Notes") => vec![Text("description", "Body")],
        // One mailing address by default (docs/domain.md §5.2): Address 1 ↔ the business
        // address.
        (ItemKind::Contact, "Mailing Address") => vec![
            Text("address1_line1", "PhysicalAddresses/Business/Street"),
            Text("address1_city", "PhysicalAddresses/Business/City"),
            Text(
                "address1_stateorprovince",
                "PhysicalAddresses/Business/State",
            ),
            Text(
                "address1_postalcode",
                "PhysicalAddresses/Business/PostalCode",
            ),
            Text(
                "address1_country",
                "PhysicalAddresses/Business/CountryOrRegion",
            ),
        ],
        (ItemKind::Task, "% Complete") => vec![Number("percentcomplete", "PercentComplete")],
        (ItemKind::Task, "Date Completed") => vec![Time("actualend", "CompleteDate")],
        (ItemKind::Task, "Due Date") => vec![Time("scheduledend", "DueDate")],
        (ItemKind::Task, "Start Date") => vec![Time("scheduledstart", "StartDate")],
        (ItemKind::Task, "Status") => vec![TaskStatus],
        _ => return None,
    })
}

/// The synchronised fields of each kind, from the fields table.
#[derive(Debug, Clone, Default)]
pub struct SyncFields {
    pub by_kind: BTreeMap<ItemKind, Vec<SyncField>>,
    /// Labels of the table trackgate does not synchronise (attachments, regarding, organizer,
    /// parent), for the README and the status.
    pub unsynchronised: Vec<(ItemKind, String)>,
}

impl SyncFields {
    pub fn from_table(table: &FieldTable) -> SyncFields {
        let mut out = SyncFields::default();
        for (kind, maps) in [
            (ItemKind::Appointment, &table.appointment),
            (ItemKind::Contact, &table.contact),
            (ItemKind::Task, &table.task),
        ] {
            let list = out.by_kind.entry(kind).or_default();
            for map in maps {
                match conversions(kind, map) {
                    Some(conversions) => list.push(SyncField {
                        label: map.outlook.clone(),
                        direction: map.direction,
                        conversions,
                    }),
                    None => out.unsynchronised.push((kind, map.outlook.clone())),
                }
            }
        }
        out
    }

    pub fn of(&self, kind: ItemKind) -> &[SyncField] {
        self.by_kind.get(&kind).map_or(&[], Vec::as_slice)
    }
}

/// A value of one field in Exchange's form: Exchange field → text. Absent fields are empty.
pub type Values = BTreeMap<String, String>;

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn time(raw: &str) -> Option<String> {
    timestamp_seconds(raw).map(format_seconds)
}

fn int(row: &Map<String, Value>, column: &str) -> Option<i64> {
    row.get(column).and_then(|v| match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    })
}

/// An address of each party of a row with this mask (`addressused`, else what the caller
/// resolves the party's record to).
pub fn party_addresses(
    row: &Map<String, Value>,
    mask: u8,
    resolve: &dyn Fn(&Map<String, Value>) -> Option<String>,
) -> Vec<String> {
    let parties = row
        .iter()
        .find(|(k, _)| k.ends_with("_activity_parties"))
        .and_then(|(_, v)| v.as_array());
    let mut out: Vec<String> = parties
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .filter(|p| int(p, "participationtypemask") == Some(i64::from(mask)))
        .filter_map(|p| {
            p.get("addressused")
                .and_then(Value::as_str)
                .filter(|a| a.contains('@'))
                .map(str::to_owned)
                .or_else(|| resolve(p))
        })
        .map(|a| a.to_ascii_lowercase())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The field's value as Exchange would hold it, from a Dataverse row.
pub fn from_crm(
    field: &SyncField,
    row: &Map<String, Value>,
    resolve: &dyn Fn(&Map<String, Value>) -> Option<String>,
) -> Values {
    let mut out = Values::new();
    let mut put = |key: &str, value: Option<String>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            out.insert(key.to_owned(), v);
        }
    };
    let named = ["firstname", "lastname"]
        .iter()
        .any(|c| row.get(*c).and_then(text).is_some());
    for c in &field.conversions {
        match *c {
            // A row with only a full name (imported, or a table without name parts): its last
            // word is the surname, the rest the given name.
            Conversion::Text("firstname", key) if !named => {
                put(key, split_name(row).map(|(given, _)| given))
            }
            Conversion::Text("lastname", key) if !named => {
                put(key, split_name(row).map(|(_, surname)| surname))
            }
            Conversion::Text(col, key) => put(key, row.get(col).and_then(text)),
            // No value is none done: what Exchange shows as 0.
            Conversion::Number(col, key) => put(key, Some(int(row, col).unwrap_or(0).to_string())),
            Conversion::Flag(col, key) => put(
                key,
                Some(
                    row.get(col)
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                        .to_string(),
                ),
            ),
            Conversion::Time(col, key) => {
                put(key, row.get(col).and_then(Value::as_str).and_then(time))
            }
            Conversion::Priority => put(
                "Importance",
                Some(
                    match int(row, "prioritycode") {
                        Some(0) => "Low",
                        Some(2) => "High",
                        _ => "Normal",
                    }
                    .to_owned(),
                ),
            ),
            Conversion::ShowTimeAs => put(
                "LegacyFreeBusyStatus",
                Some(show_time_as(int(row, "statecode"), int(row, "statuscode")).to_owned()),
            ),
            Conversion::TaskStatus => put(
                "Status",
                Some(task_status(int(row, "statecode"), int(row, "statuscode")).to_owned()),
            ),
            Conversion::Attendees(mask, key) => {
                let list = party_addresses(row, mask, resolve);
                put(key, Some(list.join(";")))
            }
        }
    }
    out
}

fn split_name(row: &Map<String, Value>) -> Option<(String, String)> {
    let full = row.get("fullname").and_then(Value::as_str)?.trim();
    match full.rsplit_once(' ') {
        Some((given, surname)) => Some((given.trim().to_owned(), surname.to_owned())),
        None => Some((String::new(), full.to_owned())),
    }
}

/// Completed, canceled and free appointments show as Free (docs/domain.md §5.1).
fn show_time_as(state: Option<i64>, status: Option<i64>) -> &'static str {
    match (state, status) {
        (Some(1 | 2), _) => "Free",
        (_, Some(2)) => "Tentative",
        (_, Some(6)) => "OOF",
        (_, Some(1)) => "Free",
        _ => "Busy",
    }
}

fn task_status(state: Option<i64>, status: Option<i64>) -> &'static str {
    match (state, status) {
        (Some(1 | 2), _) => "Completed",
        (_, Some(3)) => "InProgress",
        (_, Some(4)) => "WaitingOnOthers",
        (_, Some(7)) => "Deferred",
        _ => "NotStarted",
    }
}

/// The field's value as Exchange holds it, from an item's fields (normalised like
/// [`from_crm`]).
pub fn from_exchange(field: &SyncField, item: &BTreeMap<String, String>) -> Values {
    let mut out = Values::new();
    let keys: Vec<&str> = field
        .conversions
        .iter()
        .map(|c| match *c {
            Conversion::Text(_, k)
            | Conversion::Time(_, k)
            | Conversion::Flag(_, k)
            | Conversion::Number(_, k)
            | Conversion::Attendees(_, k) => k,
            Conversion::Priority => "Importance",
            Conversion::ShowTimeAs => "LegacyFreeBusyStatus",
            Conversion::TaskStatus => "Status",
        })
        .collect();
    for (c, key) in field.conversions.iter().zip(keys) {
        let Some(raw) = item.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) else {
            // What Exchange means by a field it does not show.
            let default = match c {
                Conversion::Flag(..) => Some("false"),
                Conversion::Number(..) => Some("0"),
                Conversion::Priority => Some("Normal"),
                Conversion::ShowTimeAs => Some("Busy"),
                Conversion::TaskStatus => Some("NotStarted"),
                _ => None,
            };
            if let Some(default) = default {
                out.insert(key.to_owned(), default.into());
            }
            continue;
        };
        let value = match c {
            Conversion::Time(..) => time(raw),
            Conversion::Flag(..) => Some((raw == "true").to_string()),
            Conversion::Attendees(..) => {
                let mut list: Vec<String> = raw
                    .split(';')
                    .map(|a| a.trim().to_ascii_lowercase())
                    .filter(|a| !a.is_empty())
                    .collect();
                list.sort();
                list.dedup();
                Some(list.join(";"))
            }
            Conversion::Number(..) => raw
                .parse::<f64>()
                .ok()
                .map(|n| (n.round() as i64).to_string()),
            _ => Some(raw.to_owned()),
        };
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            out.insert(key.to_owned(), v);
        }
    }
    out
}

/// The Dataverse columns for a field's Exchange value. `current` is the row as it is (a
/// completed or canceled appointment shown Free stays as it is).
pub fn to_crm(
    field: &SyncField,
    values: &Values,
    current: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = Map::new();
    let get = |k: &str| values.get(k).cloned();
    for c in &field.conversions {
        match *c {
            Conversion::Text(col, key) => {
                out.insert(col.into(), get(key).map_or(Value::Null, Value::String));
            }
            Conversion::Time(col, key) => {
                out.insert(col.into(), get(key).map_or(Value::Null, Value::String));
            }
            Conversion::Flag(col, key) => {
                out.insert(col.into(), json!(get(key).as_deref() == Some("true")));
            }
            Conversion::Number(col, key) => {
                let n = get(key).and_then(|v| v.parse::<i64>().ok());
                out.insert(col.into(), n.map_or(Value::Null, |n| json!(n)));
            }
            Conversion::Priority => {
                let code = match get("Importance").as_deref() {
                    Some("Low") => 0,
                    Some("High") => 2,
                    _ => 1,
                };
                out.insert("prioritycode".into(), json!(code));
            }
            Conversion::ShowTimeAs => {
                let closed = matches!(int(current, "statecode"), Some(1 | 2));
                let (state, status) = match get("LegacyFreeBusyStatus").as_deref() {
                    Some("Free") if closed => continue,
                    Some("Tentative") => (0, 2),
                    Some("Busy") => (3, 5),
                    Some("OOF") => (3, 6),
                    // Free and Working elsewhere: Open, Free.
                    _ => (0, 1),
                };
                out.insert("statecode".into(), json!(state));
                out.insert("statuscode".into(), json!(status));
            }
            Conversion::TaskStatus => {
                let (state, status) = match get("Status").as_deref() {
                    Some("Completed") if int(current, "statecode") == Some(2) => continue,
                    Some("Completed") => (1, 5),
                    Some("InProgress") => (0, 3),
                    Some("WaitingOnOthers") => (0, 4),
                    Some("Deferred") => (0, 7),
                    _ => (0, 2),
                };
                out.insert("statecode".into(), json!(state));
                out.insert("statuscode".into(), json!(status));
            }
            // Attendees go to Dataverse only on a create (as activity parties); an update
            // leaves them (README "Synchronisation", limits).
            Conversion::Attendees(..) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> SyncFields {
        SyncFields::from_table(&FieldTable::embedded())
    }

    fn field(kind: ItemKind, label: &str) -> SyncField {
        fields()
            .of(kind)
            .iter()
            .find(|f| f.label == label)
            .cloned()
            .unwrap()
    }

    #[test]
    fn every_default_field_of_the_table_is_synchronised_or_named() {
        let f = fields();
        assert!(f.of(ItemKind::Appointment).len() >= 8);
        assert!(f.of(ItemKind::Contact).len() >= 11);
        assert_eq!(f.of(ItemKind::Task).len(), 8);
        let skipped: Vec<&str> = f.unsynchronised.iter().map(|(_, l)| l.as_str()).collect();
        assert!(
            skipped
                .iter()
                .all(|l| ["Regarding", "Organizer", "Parent (Regarding)"].contains(l)),
            "{skipped:?}"
        );
    }

    #[test]
    fn values_round_trip_between_a_row_and_an_item() {
        let none = |_: &Map<String, Value>| None;
        let row: Map<String, Value> = serde_json::from_value(json!({
            "scheduledstart": "2026-12-07T10:00:00Z", "scheduledend": "2026-12-07T11:00:00+00:00",
            "isalldayevent": false, "prioritycode": 2, "statecode": 3, "statuscode": 6,
            "appointment_activity_parties": [
                {"participationtypemask": 5, "addressused": "B@x.example"},
                {"participationtypemask": 5, "addressused": "a@x.example"},
                {"participationtypemask": 6, "addressused": "c@x.example"}
            ]
        }))
        .unwrap();
        let time = field(ItemKind::Appointment, "Appointment Time");
        let v = from_crm(&time, &row, &none);
        assert_eq!(v["Start"], "2026-12-07T10:00:00Z");
        assert_eq!(v["End"], "2026-12-07T11:00:00Z");
        assert_eq!(from_exchange(&time, &v), v);
        let back = to_crm(&time, &v, &row);
        assert_eq!(back["scheduledstart"], "2026-12-07T10:00:00Z");
        let show = field(ItemKind::Appointment, "Show Time As");
        assert_eq!(from_crm(&show, &row, &none)["LegacyFreeBusyStatus"], "OOF");
        let required = field(ItemKind::Appointment, "Required Attendees");
        assert_eq!(
            from_crm(&required, &row, &none)["RequiredAttendees"],
            "a@x.example;b@x.example"
        );
        let importance = field(ItemKind::Appointment, "Importance");
        assert_eq!(from_crm(&importance, &row, &none)["Importance"], "High");
        assert_eq!(
            to_crm(
                &importance,
                &[("Importance".to_owned(), "Low".to_owned())].into(),
                &row
            )["prioritycode"],
            0
        );
    }

    #[test]
    fn a_completed_appointment_shown_free_stays_completed_and_task_states_map() {
        let show = field(ItemKind::Appointment, "Show Time As");
        let completed: Map<String, Value> =
            serde_json::from_value(json!({"statecode": 1, "statuscode": 3})).unwrap();
        let free: Values = [("LegacyFreeBusyStatus".to_owned(), "Free".to_owned())].into();
        assert!(to_crm(&show, &free, &completed).is_empty());
        let open = Map::new();
        assert_eq!(to_crm(&show, &free, &open)["statuscode"], 1);
        let status = field(ItemKind::Task, "Status");
        let done: Values = [("Status".to_owned(), "Completed".to_owned())].into();
        let cols = to_crm(&status, &done, &open);
        assert_eq!(
            (cols["statecode"].clone(), cols["statuscode"].clone()),
            (json!(1), json!(5))
        );
        let canceled: Map<String, Value> =
            serde_json::from_value(json!({"statecode": 2, "statuscode": 6})).unwrap();
        assert_eq!(
            from_crm(&status, &canceled, &|_| None)["Status"],
            "Completed"
        );
    }
}
