//! Which CRM rows a user's Outlook (sync) filters select, per table: the union of the user's
//! enabled filters for that table (filters are OR-ed: adding one never narrows), nothing of a
//! table with no enabled filter, the organization's default templates for a user with no
//! filters of their own, and a filter trackgate cannot evaluate named in the error, not guessed
//! at (docs/domain.md §5.3). Evaluated over the directory document's rows: contacts,
//! accounts, leads, appointments, tasks, phone calls, faxes and letters.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};
use uuid::Uuid;

use super::fetchxml::{Context, FetchError, FetchFilter};
use super::model::{DirectoryDocument, UserSettings};

/// A filter that cannot be used, with the user's name for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sync filter {name:?}: {error}")]
pub struct FilterRefused {
    pub name: String,
    /// The table it filters (as the user's filter row names it).
    pub entity: String,
    pub error: FetchError,
}

/// The rows selected, by table (logical name), and the filters that could not be used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub rows: BTreeMap<String, BTreeSet<Uuid>>,
    pub refused: Vec<FilterRefused>,
}

/// The rows of one table as the Web API would show them, with their ids.
fn rows_of(doc: &DirectoryDocument, entity: &str) -> Vec<(Uuid, Map<String, Value>)> {
    fn each<T: serde::Serialize>(
        rows: &[T],
        id: impl Fn(&T) -> Uuid,
    ) -> Vec<(Uuid, Map<String, Value>)> {
        rows.iter()
            .filter_map(|r| match serde_json::to_value(r) {
                Ok(Value::Object(map)) => Some((id(r), map)),
                _ => None,
            })
            .collect()
    }
    match entity {
        "contact" => each(&doc.contacts, |c| c.contactid),
        "account" => each(&doc.accounts, |a| a.accountid),
        "lead" => each(&doc.leads, |l| l.leadid),
        "appointment" | "task" | "phonecall" | "fax" | "letter" => {
            each(doc.activities(&super::tables::entity_set(entity)), |a| {
                a.activityid
            })
        }
        _ => Vec::new(),
    }
}

/// One table's rows as the Web API shows them, and which of them each owner owns.
struct Table {
    rows: Vec<(Uuid, Map<String, Value>)>,
    by_owner: std::collections::HashMap<Uuid, Vec<usize>>,
}

type Rows = std::sync::Arc<Table>;

/// The rows filters are evaluated over, each table converted once for every user of a round.
pub struct Prepared<'a> {
    doc: &'a DirectoryDocument,
    tables: std::sync::Mutex<BTreeMap<String, Rows>>,
}

impl<'a> Prepared<'a> {
    pub fn new(doc: &'a DirectoryDocument) -> Prepared<'a> {
        Prepared {
            doc,
            tables: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    fn rows(&self, entity: &str) -> Rows {
        let mut tables = self
            .tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tables
            .entry(entity.to_owned())
            .or_insert_with(|| {
                let rows = rows_of(self.doc, entity);
                let mut by_owner: std::collections::HashMap<Uuid, Vec<usize>> =
                    std::collections::HashMap::new();
                for (i, (_, row)) in rows.iter().enumerate() {
                    let owner = row
                        .get("ownerid")
                        .and_then(Value::as_str)
                        .and_then(|s| Uuid::parse_str(s).ok());
                    if let Some(owner) = owner {
                        by_owner.entry(owner).or_default().push(i);
                    }
                }
                std::sync::Arc::new(Table { rows, by_owner })
            })
            .clone()
    }

    pub fn document(&self) -> &DirectoryDocument {
        self.doc
    }
}

/// What a user's enabled sync filters select, `now` in seconds since the epoch.
pub fn select(
    doc: &DirectoryDocument,
    settings: &UserSettings,
    teams: &[Uuid],
    now: i64,
) -> Selection {
    select_prepared(&Prepared::new(doc), settings, teams, now)
}

/// [`select`] over rows prepared once for many users.
pub fn select_prepared(
    prepared: &Prepared<'_>,
    settings: &UserSettings,
    teams: &[Uuid],
    now: i64,
) -> Selection {
    let doc = prepared.doc;
    let mut selection = Selection::default();
    let cx = Context {
        user: settings.systemuserid,
        teams,
        now,
    };
    // A user who has no filters of their own (never set up) gets the organization's default
    // templates.
    let filters = if settings.syncfilters.is_empty() {
        &doc.organization.outlookfiltertemplates
    } else {
        &settings.syncfilters
    };
    for filter in filters.iter().filter(|f| f.enabled) {
        let name = filter.name.clone().unwrap_or_else(|| filter.entity.clone());
        let parsed = match filter.filter.as_deref().map(FetchFilter::parse) {
            Some(Ok(parsed)) => parsed,
            Some(Err(error)) => {
                selection.refused.push(FilterRefused {
                    name,
                    entity: filter.entity.clone(),
                    error,
                });
                continue;
            }
            None => {
                let error = FetchError::Malformed("the filter has no FetchXML".into());
                selection.refused.push(FilterRefused {
                    name,
                    entity: filter.entity.clone(),
                    error,
                });
                continue;
            }
        };
        let table = selection
            .rows
            .entry(parsed.entity().to_owned())
            .or_default();
        let rows = prepared.rows(parsed.entity());
        // A filter only the user's own rows can meet looks at those alone.
        let candidates: Box<dyn Iterator<Item = &(Uuid, Map<String, Value>)>> =
            if parsed.only_the_users_own() {
                Box::new(
                    rows.by_owner
                        .get(&settings.systemuserid)
                        .into_iter()
                        .flatten()
                        .filter_map(|i| rows.rows.get(*i)),
                )
            } else {
                Box::new(rows.rows.iter())
            };
        for (id, row) in candidates {
            if parsed.matches(row, &cx) {
                table.insert(*id);
            }
        }
    }
    selection
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::model::{Contact, SyncFilter};

    const ALEX: Uuid = Uuid::from_u128(0xa1);
    const NOW: i64 = 1_796_472_000;

    fn contact(n: u128, owner: Uuid, state: u8, created: &str) -> Contact {
        Contact {
            contactid: Uuid::from_u128(n),
            ownerid: Some(owner),
            statecode: state,
            createdon: Some(created.into()),
            ..Contact::default()
        }
    }

    fn filter(name: &str, xml: &str, enabled: bool) -> SyncFilter {
        SyncFilter {
            name: Some(name.into()),
            entity: "contact".into(),
            filter: Some(xml.into()),
            enabled,
            ..SyncFilter::default()
        }
    }

    const MINE: &str = r#"<fetch><entity name="contact"><filter><condition attribute="ownerid" operator="eq-userid"/><condition attribute="statecode" operator="eq" value="0"/></filter></entity></fetch>"#;
    const RECENT: &str = r#"<fetch><entity name="contact"><filter><condition attribute="createdon" operator="last-x-days" value="30"/></filter></entity></fetch>"#;

    fn doc() -> DirectoryDocument {
        let other = Uuid::from_u128(0xa2);
        DirectoryDocument {
            contacts: vec![
                contact(1, ALEX, 0, "2020-01-01T00:00:00Z"),
                contact(2, ALEX, 1, "2020-01-01T00:00:00Z"),
                contact(3, other, 0, "2026-12-01T00:00:00Z"),
                contact(4, other, 0, "2020-01-01T00:00:00Z"),
            ],
            ..DirectoryDocument::default()
        }
    }

    fn chosen(filters: Vec<SyncFilter>) -> Selection {
        let settings = UserSettings {
            systemuserid: ALEX,
            syncfilters: filters,
            ..UserSettings::default()
        };
        select(&doc(), &settings, &[], NOW)
    }

    fn ids(selection: &Selection) -> Vec<u128> {
        selection
            .rows
            .get("contact")
            .map(|s| s.iter().map(|u| u.as_u128()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_row_is_in_while_it_matches_and_two_filters_are_or_ed() {
        assert_eq!(ids(&chosen(vec![filter("mine", MINE, true)])), vec![1]);
        assert_eq!(
            ids(&chosen(vec![
                filter("mine", MINE, true),
                filter("recent", RECENT, true)
            ])),
            vec![1, 3],
            "a second filter adds, never narrows"
        );
    }

    #[test]
    fn with_no_enabled_filter_nothing_of_the_table_is_selected() {
        assert!(ids(&chosen(vec![filter("mine", MINE, false)])).is_empty());
        assert!(ids(&chosen(Vec::new())).is_empty());
    }

    #[test]
    fn a_user_without_filters_of_their_own_gets_the_default_templates() {
        let mut doc = doc();
        doc.organization.outlookfiltertemplates = vec![filter("My Outlook Contacts", MINE, true)];
        let settings = UserSettings {
            systemuserid: ALEX,
            ..UserSettings::default()
        };
        assert_eq!(ids(&select(&doc, &settings, &[], NOW)), vec![1]);
        // Filters of their own replace the templates, even all switched off.
        let own = UserSettings {
            syncfilters: vec![filter("recent", RECENT, false)],
            ..settings
        };
        assert!(ids(&select(&doc, &own, &[], NOW)).is_empty());
    }

    #[test]
    fn a_filter_that_cannot_be_evaluated_is_named_and_the_others_still_select() {
        let odd = r#"<fetch><entity name="contact"><filter><condition attribute="ownerid" operator="under"/></filter></entity></fetch>"#;
        let selection = chosen(vec![filter("odd", odd, true), filter("mine", MINE, true)]);
        assert_eq!(ids(&selection), vec![1]);
        assert_eq!(selection.refused.len(), 1);
        assert_eq!(selection.refused[0].name, "odd");
        assert!(selection.refused[0].to_string().contains("\"under\""));
    }
}
