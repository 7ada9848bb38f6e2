//! The three-way merge of one linked row and item, field by field: each side's value is
//! compared with the one both last agreed on. A field changed on one side goes to the other if
//! its direction allows; changed on both, the direction decides, then the later modification
//! (docs/domain.md §5.1–5.2). Pure: the caller reads both sides and applies the result.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::fields::{SyncField, Values, from_crm, from_exchange, to_crm};
use crate::crm::mapping::SyncDirection;

/// One side's current state for a merge: `None` when the side did not change since the base
/// (its values are the base's).
pub struct Sides<'a> {
    pub crm: Option<&'a Map<String, Value>>,
    pub exchange: Option<&'a BTreeMap<String, String>>,
    /// The row as it stands (for conversions that depend on its state).
    pub current: &'a Map<String, Value>,
    /// Whether the CRM row was modified after the Exchange item (for two-way conflicts).
    pub crm_is_newer: bool,
}

/// What to write on each side, and the new agreed values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    /// Exchange field → new value (`None` deletes it).
    pub to_exchange: BTreeMap<String, Option<String>>,
    /// Dataverse columns to update.
    pub to_crm: Map<String, Value>,
    pub base: BTreeMap<String, Values>,
    /// Fields changed on both sides to different values.
    pub conflicts: u32,
    /// Labels written to Exchange (for the invitation rule: anything attendees see).
    pub exchange_labels: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Winner {
    Crm,
    Exchange,
    Neither,
}

fn winner(
    direction: SyncDirection,
    crm_changed: bool,
    ex_changed: bool,
    crm_newer: bool,
) -> Winner {
    match direction {
        SyncDirection::None => Winner::Neither,
        SyncDirection::ToOutlook if crm_changed => Winner::Crm,
        SyncDirection::ToCrm if ex_changed => Winner::Exchange,
        SyncDirection::ToOutlook | SyncDirection::ToCrm => Winner::Neither,
        SyncDirection::TwoWay => match (crm_changed, ex_changed) {
            (true, false) => Winner::Crm,
            (false, true) => Winner::Exchange,
            _ if crm_newer => Winner::Crm,
            _ => Winner::Exchange,
        },
    }
}

/// Merges every field.
pub fn merge(
    fields: &[SyncField],
    base: &BTreeMap<String, Values>,
    sides: &Sides<'_>,
    resolve: &dyn Fn(&Map<String, Value>) -> Option<String>,
) -> Merged {
    let mut out = Merged::default();
    for field in fields {
        let known = base.get(&field.label);
        let crm = sides
            .crm
            .map(|row| from_crm(field, row, resolve))
            .or_else(|| known.cloned())
            .unwrap_or_default();
        let exchange = sides
            .exchange
            .map(|item| from_exchange(field, item))
            .or_else(|| known.cloned())
            .unwrap_or_default();
        if crm == exchange {
            out.base.insert(field.label.clone(), crm);
            continue;
        }
        let crm_changed = known != Some(&crm);
        let ex_changed = known != Some(&exchange);
        if crm_changed && ex_changed && field.direction == SyncDirection::TwoWay {
            out.conflicts += 1;
        }
        match winner(field.direction, crm_changed, ex_changed, sides.crm_is_newer) {
            Winner::Crm => {
                let keys: BTreeSet<&String> = crm.keys().chain(exchange.keys()).collect();
                for key in keys {
                    if crm.get(key) != exchange.get(key) {
                        out.to_exchange.insert(key.clone(), crm.get(key).cloned());
                    }
                }
                out.exchange_labels.insert(field.label.clone());
                out.base.insert(field.label.clone(), crm);
            }
            Winner::Exchange => {
                out.to_crm.extend(to_crm(field, &exchange, sides.current));
                out.base.insert(field.label.clone(), exchange);
            }
            Winner::Neither => {
                if let Some(known) = known {
                    out.base.insert(field.label.clone(), known.clone());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crm::mapping::FieldTable;
    use crate::exchange::ItemKind;
    use crate::sync::fields::{Conversion, SyncFields};
    use SyncDirection::{
        None as NoneD, ToCrm as ToCrmD, ToOutlook as ToOutlookD, TwoWay as TwoWayD,
    };
    use serde_json::json;

    fn subject_field(direction: SyncDirection) -> Vec<SyncField> {
        let mut f: Vec<SyncField> = SyncFields::from_table(&FieldTable::embedded())
            .of(ItemKind::Appointment)
            .iter()
            .filter(|f| f.label == "Subject")
            .cloned()
            .collect();
        f[0].direction = direction;
        f
    }

    fn row(subject: &str) -> Map<String, Value> {
        serde_json::from_value(json!({ "subject": subject })).unwrap()
    }

    fn item(subject: &str) -> BTreeMap<String, String> {
        [("Subject".to_owned(), subject.to_owned())].into()
    }

    fn base(subject: &str) -> BTreeMap<String, Values> {
        [("Subject".to_owned(), item(subject))].into()
    }

    fn run(
        direction: SyncDirection,
        crm: Option<&str>,
        ex: Option<&str>,
        crm_newer: bool,
    ) -> Merged {
        let crm_row = crm.map(row);
        let ex_item = ex.map(item);
        let current = Map::new();
        merge(
            &subject_field(direction),
            &base("Old"),
            &Sides {
                crm: crm_row.as_ref(),
                exchange: ex_item.as_ref(),
                current: &current,
                crm_is_newer: crm_newer,
            },
            &|_| None,
        )
    }

    #[test]
    fn each_direction_moves_a_change_only_the_way_it_allows() {
        use SyncDirection::{ToCrm, ToOutlook, TwoWay};
        // Changed in the CRM.
        let m = run(TwoWay, Some("New"), None, false);
        assert_eq!(m.to_exchange["Subject"].as_deref(), Some("New"));
        assert!(m.to_crm.is_empty());
        assert!(
            run(ToOutlook, Some("New"), None, false)
                .to_exchange
                .contains_key("Subject")
        );
        let m = run(ToCrm, Some("New"), None, false);
        assert!(m.to_exchange.is_empty() && m.to_crm.is_empty());
        assert_eq!(m.base["Subject"]["Subject"], "Old");
        assert!(
            run(SyncDirection::None, Some("New"), None, false)
                .to_exchange
                .is_empty()
        );
        // Changed in Exchange.
        let m = run(TwoWay, None, Some("Mine"), false);
        assert_eq!(m.to_crm["subject"], "Mine");
        assert!(m.to_exchange.is_empty());
        assert_eq!(
            run(ToCrm, None, Some("Mine"), false).to_crm["subject"],
            "Mine"
        );
        assert!(run(ToOutlook, None, Some("Mine"), false).to_crm.is_empty());
        assert!(
            run(SyncDirection::None, None, Some("Mine"), false)
                .to_crm
                .is_empty()
        );
    }

    #[test]
    fn a_conflict_goes_by_direction_then_by_the_later_change() {
        use SyncDirection::{ToCrm, ToOutlook, TwoWay};
        let m = run(TwoWay, Some("C"), Some("E"), true);
        assert_eq!(
            (m.conflicts, m.to_exchange["Subject"].as_deref()),
            (1, Some("C"))
        );
        let m = run(TwoWay, Some("C"), Some("E"), false);
        assert_eq!(m.to_crm["subject"], "E");
        assert_eq!(
            run(ToOutlook, Some("C"), Some("E"), false).to_exchange["Subject"].as_deref(),
            Some("C")
        );
        assert_eq!(
            run(ToCrm, Some("C"), Some("E"), true).to_crm["subject"],
            "E"
        );
        // The same change on both sides is no conflict and writes nothing.
        let m = run(TwoWay, Some("Same"), Some("Same"), true);
        assert_eq!(
            (m.conflicts, m.to_exchange.len(), m.to_crm.len()),
            (0, 0, 0)
        );
        assert_eq!(m.base["Subject"]["Subject"], "Same");
    }

    /// One side's columns and fields for a conversion, in a first (`false`) or second state.
    fn sample(c: &Conversion, second: bool) -> (Map<String, Value>, BTreeMap<String, String>) {
        let mut row = Map::new();
        let mut item = BTreeMap::new();
        let pick = |a: &str, b: &str| if second { b.to_owned() } else { a.to_owned() };
        match *c {
            Conversion::Text(col, key) => {
                row.insert(col.into(), json!(pick("one", "two")));
                item.insert(key.into(), pick("one", "two"));
            }
            Conversion::Time(col, key) => {
                let t = pick("2026-12-07T10:00:00Z", "2026-12-08T11:30:00Z");
                row.insert(col.into(), json!(t));
                item.insert(key.into(), t);
            }
            Conversion::Flag(col, key) => {
                row.insert(col.into(), json!(second));
                item.insert(key.into(), second.to_string());
            }
            Conversion::Number(col, key) => {
                row.insert(col.into(), json!(if second { 50 } else { 10 }));
                item.insert(key.into(), pick("10", "50"));
            }
            Conversion::Priority => {
                row.insert("prioritycode".into(), json!(if second { 2 } else { 0 }));
                item.insert("Importance".into(), pick("Low", "High"));
            }
            Conversion::ShowTimeAs => {
                row.insert("statecode".into(), json!(3));
                row.insert("statuscode".into(), json!(if second { 6 } else { 5 }));
                item.insert("LegacyFreeBusyStatus".into(), pick("Busy", "OOF"));
            }
            Conversion::TaskStatus => {
                row.insert("statecode".into(), json!(0));
                row.insert("statuscode".into(), json!(if second { 3 } else { 2 }));
                item.insert("Status".into(), pick("NotStarted", "InProgress"));
            }
            Conversion::Attendees(mask, key) => {
                let address = pick("a@x.example", "b@x.example");
                row.insert(
                    "x_activity_parties".to_owned(),
                    json!([{"participationtypemask": mask, "addressused": address}]),
                );
                item.insert(key.into(), address);
            }
        }
        (row, item)
    }

    fn state(field: &SyncField, second: bool) -> (Map<String, Value>, BTreeMap<String, String>) {
        let mut row = Map::new();
        let mut item = BTreeMap::new();
        for c in &field.conversions {
            let (r, i) = sample(c, second);
            row.extend(r);
            item.extend(i);
        }
        (row, item)
    }

    /// Every field of the embedded table, in every direction: a change on one side reaches
    /// the other exactly when the direction allows, converted so that reading it back gives
    /// the same value.
    #[test]
    fn every_default_field_moves_each_way_its_direction_allows() {
        let table = SyncFields::from_table(&FieldTable::embedded());
        let mut checked = 0;
        for kind in ItemKind::ALL {
            for field in table.of(kind) {
                for direction in [TwoWayD, ToCrmD, ToOutlookD, NoneD] {
                    let field = SyncField {
                        direction,
                        ..field.clone()
                    };
                    let (old_row, old_item) = state(&field, false);
                    let (new_row, new_item) = state(&field, true);
                    let base: BTreeMap<String, Values> = [(
                        field.label.clone(),
                        crate::sync::fields::from_crm(&field, &old_row, &|_| None),
                    )]
                    .into();
                    assert_eq!(
                        base[&field.label],
                        crate::sync::fields::from_exchange(&field, &old_item),
                        "{kind:?} {}: both sides read the same value",
                        field.label
                    );
                    let fields = std::slice::from_ref(&field);
                    // Changed in the CRM.
                    let m = merge(
                        fields,
                        &base,
                        &Sides {
                            crm: Some(&new_row),
                            exchange: None,
                            current: &old_row,
                            crm_is_newer: true,
                        },
                        &|_| None,
                    );
                    let to_outlook = matches!(direction, TwoWayD | ToOutlookD);
                    assert_eq!(
                        !m.to_exchange.is_empty(),
                        to_outlook,
                        "{kind:?} {} {direction:?} CRM change",
                        field.label
                    );
                    if to_outlook {
                        for (key, value) in &m.to_exchange {
                            assert_eq!(
                                value.as_ref(),
                                new_item.get(key),
                                "{kind:?} {} {key}",
                                field.label
                            );
                        }
                    }
                    assert!(m.to_crm.is_empty());
                    // Changed in Exchange.
                    let m = merge(
                        fields,
                        &base,
                        &Sides {
                            crm: None,
                            exchange: Some(&new_item),
                            current: &old_row,
                            crm_is_newer: false,
                        },
                        &|_| None,
                    );
                    let to_crm = matches!(direction, TwoWayD | ToCrmD);
                    let parties = field.needs_parties();
                    assert_eq!(
                        !m.to_crm.is_empty(),
                        to_crm && !parties,
                        "{kind:?} {} {direction:?} Exchange change",
                        field.label
                    );
                    if to_crm && !parties {
                        let mut written = old_row.clone();
                        written.extend(m.to_crm.clone());
                        assert_eq!(
                            crate::sync::fields::from_crm(&field, &written, &|_| None),
                            crate::sync::fields::from_exchange(&field, &new_item),
                            "{kind:?} {}: what is written reads back as the Exchange value",
                            field.label
                        );
                    }
                    assert!(m.to_exchange.is_empty());
                    checked += 1;
                }
            }
        }
        assert!(checked >= 4 * 30, "{checked}");
    }
}
