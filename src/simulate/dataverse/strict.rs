//! What makes the simulator as strict as Dataverse: every write body checked against the table
//! metadata (declared properties only, types and lengths, read-only and create- or update-only
//! columns, binds through the declared navigation property to a row of its target table,
//! activity-party rules, state/status pairs, closed activities read-only), `$select` and
//! `$filter` naming declared properties, and `CallerObjectId` naming an enabled user.
//!
//! Every leniency is a named switch in [`Leniency`], off by default.
//!
//! The error codes `0x8006088a`, `0x80048d19`, `0x0` (unknown `$select`) and `0x80044331`
//! (length) are the ones Dataverse documents or is widely reported to answer; the codes for a
//! closed activity, a read-only column, an invalid state/status pair and an unknown caller are
//! the simulator's choice (unconfirmed): clients should act on the HTTP status, as trackgate
//! does (400 and 403 are rejections that go to the dead-letter list).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::metadata::{self, Access, Kind, Table};

/// Leniencies, each off by default; `trackgate simulate dataverse --lenient` names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Leniency {
    /// Accept entity sets and properties the metadata does not declare (custom tables).
    pub undeclared: bool,
    /// Accept any change to a closed activity.
    pub closed_activities: bool,
    /// Accept any `CallerObjectId`, known user or not.
    pub any_caller: bool,
    /// Let a closed activity's regarding change (the form allows it; whether the Web API
    /// does is unconfirmed, so strict refuses it like any other column).
    pub closed_regarding: bool,
}

impl Leniency {
    /// Parses `undeclared,closed-activities,any-caller` (any subset, comma-separated).
    pub fn parse(text: &str) -> Result<Leniency, String> {
        let mut l = Leniency::default();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "undeclared" => l.undeclared = true,
                "closed-activities" => l.closed_activities = true,
                "any-caller" => l.any_caller = true,
                "closed-regarding" => l.closed_regarding = true,
                other => {
                    return Err(format!(
                        "unknown leniency {other:?}; expected undeclared, closed-activities, closed-regarding or any-caller"
                    ));
                }
            }
        }
        Ok(l)
    }
}

/// A refusal: status, Dataverse error code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn refuse(status: u16, code: &'static str, message: String) -> Refusal {
    Refusal {
        status,
        code,
        message,
    }
}

pub fn unknown_set(set: &str) -> Refusal {
    refuse(
        404,
        "0x8006088a",
        format!("Resource not found for the segment '{set}'."),
    )
}

fn undeclared(table: &Table, property: &str) -> Refusal {
    refuse(
        400,
        "0x80048d19",
        format!(
            "Error identified in Payload provided by the user for Entity :'{}'. The property '{property}' does not exist on type 'Microsoft.Dynamics.CRM.{}'. Make sure to only use property names that are defined by the type or mark the type as open type.",
            table.set, table.entity
        ),
    )
}

fn undeclared_navigation(nav: &str) -> Refusal {
    refuse(
        400,
        "0x80048d19",
        format!(
            "An undeclared property '{nav}' which only has property annotations in the payload but no property value was found in the payload. In OData, only declared navigation properties and declared named streams can be represented as properties without values."
        ),
    )
}

fn invalid(message: String) -> Refusal {
    refuse(400, "0x80048d19", message)
}

/// Finds the row a bind names.
pub trait Rows {
    /// The value of `column` of a row, if the row exists.
    fn find(&self, set: &str, column: &str, value: &str) -> Option<&Map<String, Value>>;
}

/// A write being checked.
pub struct Write<'a> {
    pub table: &'a Table,
    /// The row as it is now; `None` when the write creates it.
    pub existing: Option<&'a Map<String, Value>>,
    pub leniency: Leniency,
}

/// A bind resolved: `(set, id)`.
pub type Bound = (String, Uuid);

impl Write<'_> {
    fn creating(&self) -> bool {
        self.existing.is_none()
    }

    /// Checks a plain column value for this write.
    pub fn column(&self, name: &str, value: &Value) -> Result<(), Refusal> {
        let Some(column) = self.table.column(name) else {
            return match self.leniency.undeclared {
                true => Ok(()),
                false => Err(undeclared(self.table, name)),
            };
        };
        if matches!(column.kind, Kind::Lookup(..)) {
            // A lookup is set through its navigation property, never by its column name.
            return Err(undeclared(self.table, name));
        }
        self.access(name, column.access)?;
        check_value(self.table, name, column.kind, value)
    }

    fn access(&self, name: &str, access: Access) -> Result<(), Refusal> {
        let refused = match access {
            Access::ReadWrite => None,
            Access::ReadOnly => Some("is read-only"),
            Access::CreateOnly if !self.creating() => Some("cannot be changed after create"),
            Access::UpdateOnly if self.creating() => {
                Some("cannot be set on create (records are created open or active)")
            }
            _ => None,
        };
        match refused {
            Some(why) => Err(refuse(
                400,
                "0x80040203",
                format!(
                    "The attribute '{name}' of entity '{}' {why}.",
                    self.table.entity
                ),
            )),
            None => Ok(()),
        }
    }

    /// Checks `nav@odata.bind` naming `(set, id)`: a declared navigation property of this
    /// table, pointing at a row of its target table.
    pub fn bind(&self, nav: &str, bound: &Bound) -> Result<(), Refusal> {
        let Some((column, target)) = self.table.navigation(nav) else {
            return match self.leniency.undeclared {
                true => Ok(()),
                false => Err(undeclared_navigation(nav)),
            };
        };
        self.access(column.name, column.access)?;
        let target_set = metadata::by_entity(target).map(|t| t.set);
        if target_set != Some(bound.0.as_str()) {
            return Err(invalid(format!(
                "The navigation property '{nav}' points at '{target}' records; the bind names /{}({}).",
                bound.0, bound.1
            )));
        }
        Ok(())
    }

    /// A closed activity takes only state, status and what the table keeps editable.
    pub fn closed(&self, property: &str) -> Result<(), Refusal> {
        let Some(existing) = self.existing else {
            return Ok(());
        };
        // Open (0) and, for appointments, Scheduled (3) are editable; Completed (1) and
        // Canceled (2) are closed.
        let closed = self.table.activity
            && existing
                .get("statecode")
                .and_then(Value::as_u64)
                .is_some_and(|s| s == 1 || s == 2);
        if !closed || self.leniency.closed_activities {
            return Ok(());
        }
        let column = property
            .strip_suffix("@odata.bind")
            .and_then(|nav| self.table.navigation(nav).map(|(c, _)| c.name))
            .unwrap_or(property);
        if ["statecode", "statuscode"].contains(&column)
            || (self.leniency.closed_regarding && self.table.editable_when_closed.contains(&column))
        {
            return Ok(());
        }
        Err(refuse(
            400,
            "0x80040265",
            format!(
                "The {} is closed: '{column}' cannot be changed (only its state and status{}).",
                self.table.entity,
                match self.table.editable_when_closed {
                    [] => String::new(),
                    cols => format!(", and {}", cols.join(", ")),
                }
            ),
        ))
    }

    /// The state and status after this write, checked as a pair: a statecode alone takes its
    /// state's default status; a statuscode alone must belong to the current state.
    pub fn state_and_status(&self, row: &mut Map<String, Value>) -> Result<(), Refusal> {
        if self.table.states.is_empty() {
            return Ok(());
        }
        let given_state = row.get("statecode").and_then(Value::as_u64);
        let given_status = row.get("statuscode").and_then(Value::as_u64);
        let current = self
            .existing
            .and_then(|e| e.get("statecode"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let state = given_state.unwrap_or(current);
        let Some(statuses) = self.table.statuses(state) else {
            return Err(state_error(self.table, state, given_status));
        };
        match given_status {
            Some(status) if !statuses.contains(&status) => {
                Err(state_error(self.table, state, Some(status)))
            }
            Some(_) => Ok(()),
            None if given_state.is_some() => {
                row.insert("statuscode".into(), statuses[0].into());
                Ok(())
            }
            None if self.creating() => {
                row.insert("statuscode".into(), statuses[0].into());
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The activity parties of a create (a deep insert): declared columns, a valid mask for
    /// this table, a party or an address each, single-valued masks at most once.
    pub fn parties(
        &self,
        nav: &str,
        parties: &[Value],
        mut resolve: impl FnMut(&Value) -> Result<Bound, Refusal>,
    ) -> Result<Vec<Value>, Refusal> {
        let Some(rules) = self.table.parties.filter(|p| p.nav == nav) else {
            return match self.leniency.undeclared {
                true => Ok(parties.to_vec()),
                false => Err(undeclared(self.table, nav)),
            };
        };
        if !self.creating() {
            return Err(invalid(format!(
                "Deep update of the collection-valued navigation property '{nav}' is not supported; write the parties when the {} is created.",
                self.table.entity
            )));
        }
        let party_write = Write {
            table: &metadata::ACTIVITY_PARTY,
            existing: None,
            leniency: self.leniency,
        };
        let mut stored = Vec::with_capacity(parties.len());
        let mut singles = Vec::new();
        for party in parties {
            let party = party
                .as_object()
                .ok_or_else(|| invalid("An activity party must be an object.".into()))?;
            let mask = party
                .get("participationtypemask")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    invalid("participationtypemask is required on an activity party.".into())
                })?;
            if !rules.masks.contains(&mask) {
                return Err(invalid(format!(
                    "participationtypemask {mask} is not valid for a party of an {}.",
                    self.table.entity
                )));
            }
            if rules.single.contains(&mask) {
                if singles.contains(&mask) {
                    return Err(invalid(format!(
                        "An {} has at most one party with participationtypemask {mask}.",
                        self.table.entity
                    )));
                }
                singles.push(mask);
            }
            let mut row = Map::new();
            for (key, value) in party {
                match key.strip_suffix("@odata.bind") {
                    Some(nav) => {
                        let bound = resolve(value)?;
                        party_write.bind(nav, &bound)?;
                        row.insert(
                            format!("_{nav}_value"),
                            json!({"set": bound.0, "id": bound.1.to_string()}),
                        );
                    }
                    None if key.starts_with('@') => {}
                    None => {
                        party_write.column(key, value)?;
                        row.insert(key.clone(), value.clone());
                    }
                }
            }
            if !row.keys().any(|k| k.starts_with("_partyid_")) && !row.contains_key("addressused") {
                return Err(invalid(
                    "An activity party needs a partyid bind or an addressused.".into(),
                ));
            }
            stored.push(Value::Object(row));
        }
        Ok(stored)
    }
}

fn state_error(table: &Table, state: u64, status: Option<u64>) -> Refusal {
    refuse(
        400,
        "0x80040278",
        match status {
            Some(status) => format!(
                "{} is not a valid status code for state code {}State.{state} on {}.",
                status, table.entity, table.entity
            ),
            None => format!("{state} is not a valid state code on {}.", table.entity),
        },
    )
}

fn check_value(table: &Table, name: &str, kind: Kind, value: &Value) -> Result<(), Refusal> {
    if value.is_null() {
        return Ok(());
    }
    let fits = match kind {
        Kind::Text(max) => match value.as_str() {
            Some(text) => {
                let length = text.chars().count();
                if length > max {
                    return Err(refuse(
                        400,
                        "0x80044331",
                        format!(
                            "A validation error occurred. The length of the '{name}' attribute of the '{}' entity exceeded the maximum allowed length of '{max}'.",
                            table.entity
                        ),
                    ));
                }
                true
            }
            None => false,
        },
        Kind::Bool => value.is_boolean(),
        Kind::Int => value.is_i64() || value.is_u64(),
        Kind::DateTime => value.as_str().is_some_and(is_date_time),
        Kind::Guid => value.as_str().is_some_and(|t| Uuid::parse_str(t).is_ok()),
        Kind::Lookup(..) => false,
    };
    match fits {
        true => Ok(()),
        false => Err(invalid(format!(
            "Cannot convert the literal '{value}' to the expected type of '{name}' ({kind:?}) on 'Microsoft.Dynamics.CRM.{}'.",
            table.entity
        ))),
    }
}

/// `2026-12-05`, `2026-12-05T10:00:00Z`, `2026-12-05T10:00:00.123+01:00`: a date, then
/// optionally `T` and a time (the offset is not checked further).
fn is_date_time(text: &str) -> bool {
    let b = text.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let date = digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10);
    date && match b.get(10) {
        None => true,
        Some(b'T') => digits(11..13) && b.get(13) == Some(&b':') && digits(14..16),
        Some(_) => false,
    }
}

/// Checks `$select` (and the columns a `$filter` names) against the table.
pub fn readable(table: &Table, names: &[&str], leniency: Leniency) -> Result<(), Refusal> {
    if leniency.undeclared {
        return Ok(());
    }
    match names.iter().find(|n| !table.readable(n)) {
        Some(name) => Err(refuse(
            400,
            "0x0",
            format!(
                "Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{}'.",
                table.entity
            ),
        )),
        None => Ok(()),
    }
}

/// `CallerObjectId` (an Entra object id) or `MSCRMCallerID` (a systemuserid) must name an
/// enabled user; the application user then acts as that user.
pub fn caller(
    rows: &dyn Rows,
    object_id: Option<&str>,
    systemuser_id: Option<&str>,
    leniency: Leniency,
) -> Result<(), Refusal> {
    if leniency.any_caller {
        return Ok(());
    }
    let (user, named) = match (object_id, systemuser_id) {
        (Some(oid), _) => (
            Uuid::parse_str(oid.trim()).ok().and_then(|oid| {
                rows.find(
                    "systemusers",
                    "azureactivedirectoryobjectid",
                    &oid.to_string(),
                )
            }),
            format!("CallerObjectId {oid}"),
        ),
        (None, Some(id)) => (
            rows.find(
                "systemusers",
                "systemuserid",
                &id.trim().to_ascii_lowercase(),
            ),
            format!("MSCRMCallerID {id}"),
        ),
        (None, None) => return Ok(()),
    };
    match user {
        None => Err(refuse(
            403,
            "0x80040220",
            format!("The {named} does not name a user of this organization."),
        )),
        Some(row) if row.get("isdisabled").and_then(Value::as_bool) == Some(true) => Err(refuse(
            403,
            "0x80040225",
            format!("The user named by {named} is disabled."),
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::dataverse::metadata::{APPOINTMENT, CONTACT, EMAIL};

    fn write<'a>(table: &'a Table, existing: Option<&'a Map<String, Value>>) -> Write<'a> {
        Write {
            table,
            existing,
            leniency: Leniency::default(),
        }
    }

    #[test]
    fn undeclared_read_only_and_create_only_columns_are_refused() {
        let w = write(&EMAIL, None);
        assert!(w.column("subject", &json!("Hi")).is_ok());
        assert_eq!(
            w.column("subjekt", &json!("Hi")).unwrap_err().code,
            "0x80048d19"
        );
        for read_only in [
            "conversationindex",
            "inreplyto",
            "senton",
            "correlationmethod",
        ] {
            let e = w.column(read_only, &json!("x")).unwrap_err();
            assert!(e.message.contains("read-only"), "{read_only}: {e:?}");
        }
        assert!(
            w.column("statecode", &json!(1)).is_err(),
            "statecode on create"
        );
        assert!(w.column("regardingobjectid", &json!("x")).is_err());
        let row = Map::new();
        let update = write(&EMAIL, Some(&row));
        assert!(update.column("statecode", &json!(1)).is_ok());
        assert!(
            update
                .column("activityid", &json!(Uuid::nil().to_string()))
                .is_err()
        );
        let lenient = Write {
            leniency: Leniency {
                undeclared: true,
                ..Leniency::default()
            },
            ..write(&EMAIL, None)
        };
        assert!(lenient.column("new_custom", &json!(1)).is_ok());
    }

    #[test]
    fn values_are_typed_and_bounded() {
        let w = write(&EMAIL, None);
        assert!(w.column("directioncode", &json!("true")).is_err());
        assert!(w.column("directioncode", &json!(false)).is_ok());
        let long = "x".repeat(801);
        assert_eq!(
            w.column("subject", &json!(long)).unwrap_err().code,
            "0x80044331"
        );
        assert!(w.column("subject", &json!("é".repeat(800))).is_ok());
        assert!(
            w.column("actualend", &json!("2026-12-05T10:00:00Z"))
                .is_ok()
        );
        assert!(w.column("actualend", &json!("yesterday")).is_err());
    }

    #[test]
    fn binds_go_through_the_declared_navigation_property_to_its_target() {
        let w = write(&EMAIL, None);
        let account = ("accounts".to_owned(), Uuid::nil());
        assert!(w.bind("regardingobjectid_account_email", &account).is_ok());
        assert!(w.bind("anything", &account).is_err());
        assert!(w.bind("regardingobjectid_contact_email", &account).is_err());
        assert!(w.bind("regardingobjectid_account_task", &account).is_err());
        assert!(
            write(&CONTACT, None)
                .bind("parentcustomerid_account", &account)
                .is_ok()
        );
    }

    #[test]
    fn a_closed_email_takes_only_state_and_status_unless_regarding_is_let_through() {
        let mut row = Map::new();
        row.insert("statecode".into(), 1.into());
        let w = write(&EMAIL, Some(&row));
        assert!(w.closed("subject").is_err());
        assert!(w.closed("statuscode").is_ok());
        let relink = "regardingobjectid_account_email@odata.bind";
        assert!(w.closed(relink).is_err(), "strict: read-only when closed");
        let lenient = Write {
            leniency: Leniency {
                closed_regarding: true,
                ..Leniency::default()
            },
            ..write(&EMAIL, Some(&row))
        };
        assert!(lenient.closed(relink).is_ok());
        assert!(lenient.closed("subject").is_err());
        row.insert("statecode".into(), 0.into());
        assert!(write(&EMAIL, Some(&row)).closed("subject").is_ok());
    }

    #[test]
    fn state_and_status_are_checked_as_a_pair() {
        let mut body = Map::new();
        body.insert("statuscode".into(), 4.into());
        assert!(
            write(&EMAIL, None).state_and_status(&mut body).is_err(),
            "received while open"
        );
        let open = Map::new();
        let mut body = Map::new();
        body.insert("statecode".into(), 1.into());
        body.insert("statuscode".into(), 4.into());
        assert!(
            write(&EMAIL, Some(&open))
                .state_and_status(&mut body)
                .is_ok()
        );
        let mut body = Map::new();
        body.insert("statecode".into(), 2.into());
        write(&EMAIL, Some(&open))
            .state_and_status(&mut body)
            .unwrap();
        assert_eq!(body["statuscode"], 5, "the state's default status");
        let mut body = Map::new();
        body.insert("statecode".into(), 1.into());
        body.insert("statuscode".into(), 5.into());
        assert!(
            write(&EMAIL, Some(&open))
                .state_and_status(&mut body)
                .is_err()
        );
    }

    #[test]
    fn parties_follow_the_activity_rules() {
        let w = write(&EMAIL, None);
        let contact = |_: &Value| Ok(("contacts".to_owned(), Uuid::nil()));
        let ok = [
            json!({"participationtypemask": 1, "partyid_contact@odata.bind": "/contacts(x)"}),
            json!({"participationtypemask": 2, "addressused": "a@b.example"}),
        ];
        assert_eq!(
            w.parties("email_activity_parties", &ok, contact)
                .unwrap()
                .len(),
            2
        );
        let two_senders = [
            json!({"participationtypemask": 1, "addressused": "a@b.example"}),
            json!({"participationtypemask": 1, "addressused": "c@b.example"}),
        ];
        assert!(
            w.parties("email_activity_parties", &two_senders, contact)
                .is_err()
        );
        let organizer = [json!({"participationtypemask": 7, "addressused": "a@b.example"})];
        assert!(
            w.parties("email_activity_parties", &organizer, contact)
                .is_err()
        );
        let meeting = write(&APPOINTMENT, None);
        let parties = |p: &[Value]| meeting.parties("appointment_activity_parties", p, contact);
        assert!(parties(&organizer).is_ok());
        assert!(
            parties(&[organizer[0].clone(), organizer[0].clone()]).is_err(),
            "one organizer"
        );
        assert!(
            meeting
                .parties("email_activity_parties", &organizer, contact)
                .is_err()
        );
        let nothing = [json!({"participationtypemask": 2})];
        assert!(
            w.parties("email_activity_parties", &nothing, contact)
                .is_err()
        );
        let wrong_nav =
            [json!({"participationtypemask": 2, "partyid_account@odata.bind": "/contacts(x)"})];
        assert!(
            w.parties("email_activity_parties", &wrong_nav, contact)
                .is_err()
        );
        assert!(w.parties("task_activity_parties", &ok, contact).is_err());
        let existing = Map::new();
        assert!(
            write(&EMAIL, Some(&existing))
                .parties("email_activity_parties", &ok, contact)
                .is_err(),
            "no deep update"
        );
    }

    #[test]
    fn leniencies_parse_by_name() {
        let l = Leniency::parse("undeclared, any-caller").unwrap();
        assert!(l.undeclared && l.any_caller && !l.closed_activities);
        assert!(Leniency::parse("everything").is_err());
        assert_eq!(Leniency::parse("").unwrap(), Leniency::default());
    }
}
