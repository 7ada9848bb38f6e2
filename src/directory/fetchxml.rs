//! A FetchXML subset, evaluated over the replica's rows: what an Outlook (sync) filter
//! (`userquery` of `querytype` 256) selects for synchronisation (issue 23 applies it). One
//! `<entity>` with nested `<filter type="and|or">` groups of `<condition>`s: comparisons,
//! null checks, `in`, `like`, the current user and their teams (`eq-userid`,
//! `eq-useroruserteams`, …) and relative dates (`last-x-days`, `today`, …). Anything else —
//! `link-entity`, an operator not listed — is refused with an error naming it, never guessed.
//! Bounded: size, depth and conditions.

use quick_xml::events::{BytesStart, Event};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::common::time::timestamp_seconds;

const MAX_LEN: usize = 64 << 10;
const MAX_DEPTH: usize = 16;
const MAX_CONDITIONS: usize = 500;
const DAY: i64 = 86_400;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("the filter's FetchXML is not readable: {0}")]
    Malformed(String),
    #[error("the filter uses <{0}>, which trackgate does not evaluate yet")]
    UnsupportedElement(String),
    #[error("the filter uses the operator {0:?}, which trackgate does not evaluate yet")]
    UnsupportedOperator(String),
    #[error("the filter is larger than trackgate reads (size, depth or conditions)")]
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Eq,
    Ne,
    Null,
    NotNull,
    In,
    NotIn,
    Gt,
    Ge,
    Lt,
    Le,
    Like,
    NotLike,
    BeginsWith,
    EndsWith,
    EqUserId,
    NeUserId,
    EqUserOrUserTeams,
    EqUserTeams,
    LastXDays,
    NextXDays,
    LastXHours,
    OlderThanXDays,
    OnOrAfter,
    OnOrBefore,
    Today,
    Yesterday,
    Tomorrow,
}

impl Operator {
    fn parse(name: &str) -> Result<Operator, FetchError> {
        use Operator::*;
        Ok(match name {
            "eq" => Eq,
            "ne" | "neq" => Ne,
            "null" => Null,
            "not-null" => NotNull,
            "in" => In,
            "not-in" => NotIn,
            "gt" => Gt,
            "ge" => Ge,
            "lt" => Lt,
            "le" => Le,
            "like" => Like,
            "not-like" => NotLike,
            "begins-with" => BeginsWith,
            "ends-with" => EndsWith,
            "eq-userid" => EqUserId,
            "ne-userid" => NeUserId,
            "eq-useroruserteams" => EqUserOrUserTeams,
            "eq-userteams" => EqUserTeams,
            "last-x-days" => LastXDays,
            "next-x-days" => NextXDays,
            "last-x-hours" => LastXHours,
            "olderthan-x-days" => OlderThanXDays,
            "on-or-after" => OnOrAfter,
            "on-or-before" => OnOrBefore,
            "today" => Today,
            "yesterday" => Yesterday,
            "tomorrow" => Tomorrow,
            other => return Err(FetchError::UnsupportedOperator(other.to_owned())),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    attribute: String,
    operator: Operator,
    values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Condition(Condition),
    Group(Group),
}

#[derive(Debug, Clone, PartialEq)]
struct Group {
    any: bool,
    nodes: Vec<Node>,
}

/// Who the filter is evaluated for, and when.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub user: Uuid,
    pub teams: &'a [Uuid],
    /// Seconds since the epoch, UTC.
    pub now: i64,
}

/// One parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchFilter {
    entity: String,
    filter: Group,
}

fn attr(e: &BytesStart<'_>, name: &str) -> Result<Option<String>, FetchError> {
    for a in e.attributes() {
        let a = a.map_err(|e| FetchError::Malformed(e.to_string()))?;
        if a.key.local_name().into_inner() == name {
            let value = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| FetchError::Malformed(e.to_string()))?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

impl FetchFilter {
    /// Reads a filter's FetchXML.
    pub fn parse(xml: &str) -> Result<FetchFilter, FetchError> {
        if xml.len() > MAX_LEN {
            return Err(FetchError::TooLarge);
        }
        let mut reader = quick_xml::Reader::from_str(xml);
        let mut entity = None;
        // The open groups, innermost last; the entity's own conditions go in an `and`.
        let mut groups: Vec<Group> = vec![Group {
            any: false,
            nodes: Vec::new(),
        }];
        let mut open_condition: Option<Condition> = None;
        let mut conditions = 0usize;
        loop {
            let event = reader
                .read_event()
                .map_err(|e| FetchError::Malformed(e.to_string()))?;
            let (start, empty) = match &event {
                Event::Start(e) => (Some(e.clone()), false),
                Event::Empty(e) => (Some(e.clone()), true),
                _ => (None, false),
            };
            if let Some(e) = start {
                let name = e.local_name().into_inner().to_owned();
                match name.as_str() {
                    "fetch" | "attribute" | "order" | "all-attributes" => {}
                    "entity" => entity = attr(&e, "name")?,
                    "filter" => {
                        if groups.len() > MAX_DEPTH {
                            return Err(FetchError::TooLarge);
                        }
                        let any = attr(&e, "type")?.is_some_and(|t| t == "or");
                        groups.push(Group {
                            any,
                            nodes: Vec::new(),
                        });
                        if empty {
                            close_group(&mut groups)?;
                        }
                    }
                    "condition" => {
                        conditions += 1;
                        if conditions > MAX_CONDITIONS {
                            return Err(FetchError::TooLarge);
                        }
                        let operator = Operator::parse(&attr(&e, "operator")?.unwrap_or_default())?;
                        let condition = Condition {
                            attribute: attr(&e, "attribute")?.ok_or_else(|| {
                                FetchError::Malformed("a condition without an attribute".into())
                            })?,
                            operator,
                            values: attr(&e, "value")?.into_iter().collect(),
                        };
                        if empty {
                            push(&mut groups, Node::Condition(condition))?;
                        } else {
                            open_condition = Some(condition);
                        }
                    }
                    "value" => {}
                    other => return Err(FetchError::UnsupportedElement(other.to_owned())),
                }
                continue;
            }
            match event {
                Event::Text(t) => {
                    if let Some(c) = &mut open_condition {
                        let text = t.xml10_content();
                        if !text.trim().is_empty() {
                            c.values.push(text.trim().to_owned());
                        }
                    }
                }
                Event::End(e) => match e.local_name().into_inner() {
                    "condition" => {
                        if let Some(c) = open_condition.take() {
                            push(&mut groups, Node::Condition(c))?;
                        }
                    }
                    "filter" => close_group(&mut groups)?,
                    _ => {}
                },
                Event::Eof => break,
                _ => {}
            }
        }
        let entity = entity.ok_or_else(|| FetchError::Malformed("no <entity name=…>".into()))?;
        let filter = groups
            .pop()
            .filter(|_| groups.is_empty())
            .ok_or_else(|| FetchError::Malformed("a <filter> is not closed".into()))?;
        Ok(FetchFilter { entity, filter })
    }

    /// The table the filter selects (logical name).
    pub fn entity(&self) -> &str {
        &self.entity
    }

    /// Whether only rows the user owns can match (an `ownerid` `eq-userid` condition every row
    /// must meet): then the rows can be looked up by owner instead of all being evaluated.
    pub fn only_the_users_own(&self) -> bool {
        fn required(g: &Group) -> bool {
            !g.any
                && g.nodes.iter().any(|n| match n {
                    Node::Condition(c) => {
                        c.attribute == "ownerid" && c.operator == Operator::EqUserId
                    }
                    Node::Group(inner) => required(inner),
                })
        }
        required(&self.filter)
    }

    /// Whether a row (as the Web API shows it: lookups as `_<name>_value`) is selected.
    pub fn matches(&self, row: &Map<String, Value>, cx: &Context<'_>) -> bool {
        self.filter.matches(row, cx)
    }
}

fn push(groups: &mut [Group], node: Node) -> Result<(), FetchError> {
    groups
        .last_mut()
        .map(|g| g.nodes.push(node))
        .ok_or_else(|| FetchError::Malformed("a condition outside a filter".into()))
}

fn close_group(groups: &mut Vec<Group>) -> Result<(), FetchError> {
    if groups.len() < 2 {
        return Err(FetchError::Malformed("a </filter> with none open".into()));
    }
    let group = groups.pop().ok_or(FetchError::TooLarge)?;
    push(groups, Node::Group(group))
}

impl Group {
    fn matches(&self, row: &Map<String, Value>, cx: &Context<'_>) -> bool {
        let each = |n: &Node| match n {
            Node::Condition(c) => c.matches(row, cx),
            Node::Group(g) => g.matches(row, cx),
        };
        if self.any {
            self.nodes.iter().any(each)
        } else {
            self.nodes.iter().all(each)
        }
    }
}

/// A row's value as text (strings, numbers, booleans as 0/1), looked up as the column or the
/// lookup's `_<name>_value`.
fn value_of(row: &Map<String, Value>, attribute: &str) -> Option<String> {
    let v = row
        .get(attribute)
        .or_else(|| row.get(&format!("_{attribute}_value")))?;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.into()),
        // A lookup the directory keeps with its table (`{entity, id}`): compared by its id.
        Value::Object(lookup) => lookup.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn same(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.eq_ignore_ascii_case(b),
    }
}

fn order(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y),
        _ => match (timestamp_seconds(a), timestamp_seconds(b)) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => Some(a.to_lowercase().cmp(&b.to_lowercase())),
        },
    }
}

/// SQL `LIKE` with `%` (any run) and `_` (one character), case-insensitive.
fn like(text: &str, pattern: &str) -> bool {
    let text: Vec<char> = text.to_lowercase().chars().collect();
    let pattern: Vec<char> = pattern.to_lowercase().chars().collect();
    let (mut t, mut p, mut star, mut mark) = (0, 0, None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '_' || pattern[p] == text[t]) {
            t += 1;
            p += 1;
        } else if p < pattern.len() && pattern[p] == '%' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '%')
}

impl Condition {
    fn matches(&self, row: &Map<String, Value>, cx: &Context<'_>) -> bool {
        use Operator::*;
        let value = value_of(row, &self.attribute);
        let first = self.values.first().map(String::as_str).unwrap_or_default();
        let days = || first.trim().parse::<i64>().unwrap_or(0);
        let at = || value.as_deref().and_then(timestamp_seconds);
        let midnight = cx.now - cx.now.rem_euclid(DAY);
        let id = || value.as_deref().and_then(|v| v.parse::<Uuid>().ok());
        match self.operator {
            Null => value.is_none(),
            NotNull => value.is_some(),
            Eq => value.is_some_and(|v| same(&v, first)),
            // As in SQL, the negations do not select a row without a value.
            Ne => value.is_some_and(|v| !same(&v, first)),
            In => value.is_some_and(|v| self.values.iter().any(|x| same(&v, x))),
            NotIn => value.is_some_and(|v| !self.values.iter().any(|x| same(&v, x))),
            Gt => value.is_some_and(|v| order(&v, first) == Some(std::cmp::Ordering::Greater)),
            Ge => value.is_some_and(|v| order(&v, first) != Some(std::cmp::Ordering::Less)),
            Lt => value.is_some_and(|v| order(&v, first) == Some(std::cmp::Ordering::Less)),
            Le => value.is_some_and(|v| order(&v, first) != Some(std::cmp::Ordering::Greater)),
            Like => value.is_some_and(|v| like(&v, first)),
            NotLike => value.is_some_and(|v| !like(&v, first)),
            BeginsWith => value.is_some_and(|v| like(&v, &format!("{first}%"))),
            EndsWith => value.is_some_and(|v| like(&v, &format!("%{first}"))),
            EqUserId => id() == Some(cx.user),
            NeUserId => id().is_some_and(|i| i != cx.user),
            EqUserOrUserTeams => id().is_some_and(|i| i == cx.user || cx.teams.contains(&i)),
            EqUserTeams => id().is_some_and(|i| cx.teams.contains(&i)),
            LastXDays => at().is_some_and(|t| t >= midnight - days() * DAY && t <= cx.now),
            NextXDays => at().is_some_and(|t| t >= cx.now && t < midnight + (days() + 1) * DAY),
            LastXHours => at().is_some_and(|t| t >= cx.now - days() * 3600 && t <= cx.now),
            OlderThanXDays => at().is_some_and(|t| t < cx.now - days() * DAY),
            OnOrAfter => at().is_some_and(|t| timestamp_seconds(first).is_some_and(|d| t >= d)),
            OnOrBefore => {
                at().is_some_and(|t| timestamp_seconds(first).is_some_and(|d| t < d + DAY))
            }
            Today => at().is_some_and(|t| t >= midnight && t < midnight + DAY),
            Yesterday => at().is_some_and(|t| t >= midnight - DAY && t < midnight),
            Tomorrow => at().is_some_and(|t| t >= midnight + DAY && t < midnight + 2 * DAY),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ALEX: Uuid = Uuid::from_u128(0xa1);
    const TEAM: Uuid = Uuid::from_u128(0x7e);
    /// 2026-12-05T12:00:00Z.
    const NOW: i64 = 1_796_472_000;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn selects(xml: &str, r: Value) -> bool {
        let filter = FetchFilter::parse(xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
        let cx = Context {
            user: ALEX,
            teams: &[TEAM],
            now: NOW,
        };
        filter.matches(&row(r), &cx)
    }

    /// "My Outlook Contacts", the default template: owner is the current user, status active.
    const MY_CONTACTS: &str = r#"<fetch version="1.0" mapping="logical"><entity name="contact"><attribute name="fullname"/><filter type="and"><condition attribute="ownerid" operator="eq-userid"/><condition attribute="statecode" operator="eq" value="0"/></filter></entity></fetch>"#;

    #[test]
    fn the_default_template_selects_the_users_active_rows() {
        assert_eq!(
            FetchFilter::parse(MY_CONTACTS).map(|f| f.entity().to_owned()),
            Ok("contact".into())
        );
        let mine = json!({"_ownerid_value": ALEX.to_string(), "statecode": 0});
        assert!(selects(MY_CONTACTS, mine));
        assert!(!selects(
            MY_CONTACTS,
            json!({"_ownerid_value": TEAM.to_string(), "statecode": 0})
        ));
        assert!(!selects(
            MY_CONTACTS,
            json!({"_ownerid_value": ALEX.to_string(), "statecode": 1})
        ));
    }

    #[test]
    fn a_filter_knows_when_only_the_users_own_rows_can_match() {
        let only = |xml: &str| FetchFilter::parse(xml).unwrap().only_the_users_own();
        assert!(only(MY_CONTACTS));
        assert!(!only(
            r#"<fetch><entity name="contact"><filter type="or"><condition attribute="ownerid" operator="eq-userid"/><condition attribute="statecode" operator="eq" value="0"/></filter></entity></fetch>"#
        ));
        assert!(!only(
            r#"<fetch><entity name="contact"><filter><condition attribute="ownerid" operator="eq-useroruserteams"/></filter></entity></fetch>"#
        ));
    }

    #[test]
    fn a_lookup_kept_with_its_table_compares_by_its_id() {
        let xml = r#"<fetch><entity name="contact"><filter><condition attribute="parentcustomerid" operator="eq" value="00000000-0000-4000-8000-0000000000c2"/></filter></entity></fetch>"#;
        let parent = |id: &str| json!({"parentcustomerid": {"entity": "account", "id": id}});
        assert!(selects(xml, parent("00000000-0000-4000-8000-0000000000C2")));
        assert!(!selects(
            xml,
            parent("00000000-0000-4000-8000-0000000000c3")
        ));
    }

    #[test]
    fn groups_nest_and_or_and_teams_and_values_lists_work() {
        let xml = r#"<fetch><entity name="appointment"><filter type="or">
            <condition attribute="ownerid" operator="eq-useroruserteams"/>
            <filter type="and"><condition attribute="prioritycode" operator="in"><value>1</value><value>2</value></condition>
              <condition attribute="subject" operator="like" value="%deal%"/></filter>
          </filter></entity></fetch>"#;
        assert!(selects(xml, json!({"_ownerid_value": TEAM.to_string()})));
        assert!(selects(
            xml,
            json!({"prioritycode": 2, "subject": "Big DEAL today"})
        ));
        assert!(!selects(
            xml,
            json!({"prioritycode": 3, "subject": "Big deal"})
        ));
        assert!(!selects(
            xml,
            json!({"prioritycode": 1, "subject": "lunch"})
        ));
    }

    #[test]
    fn relative_dates_count_from_now_in_whole_days() {
        let xml = |op: &str| {
            format!(
                r#"<fetch><entity name="task"><filter><condition attribute="scheduledend" operator="{op}" value="7"/></filter></entity></fetch>"#
            )
        };
        let at = |t: &str| json!({ "scheduledend": t });
        assert!(selects(&xml("last-x-days"), at("2026-11-29T08:00:00Z")));
        assert!(!selects(&xml("last-x-days"), at("2026-11-27T08:00:00Z")));
        assert!(selects(&xml("next-x-days"), at("2026-12-12T23:00:00Z")));
        assert!(selects(&xml("today"), at("2026-12-05T01:00:00Z")));
        assert!(!selects(&xml("today"), at("2026-12-04T23:59:00Z")));
        assert!(selects(&xml("yesterday"), at("2026-12-04T23:59:00Z")));
        assert!(selects(
            &xml("olderthan-x-days"),
            at("2026-11-01T00:00:00Z")
        ));
        assert!(
            !selects(&xml("last-x-days"), json!({})),
            "no value, no match"
        );
    }

    #[test]
    fn what_is_not_evaluated_is_refused_by_name() {
        let op = r#"<fetch><entity name="contact"><filter><condition attribute="x" operator="under"/></filter></entity></fetch>"#;
        assert_eq!(
            FetchFilter::parse(op),
            Err(FetchError::UnsupportedOperator("under".into()))
        );
        let link = r#"<fetch><entity name="contact"><link-entity name="account" from="accountid" to="parentcustomerid"/></entity></fetch>"#;
        assert_eq!(
            FetchFilter::parse(link),
            Err(FetchError::UnsupportedElement("link-entity".into()))
        );
        assert!(matches!(
            FetchFilter::parse("<fetch><entity>"),
            Err(FetchError::Malformed(_))
        ));
        let deep = format!(
            "<fetch><entity name=\"x\">{}{}</entity></fetch>",
            "<filter>".repeat(40),
            "</filter>".repeat(40)
        );
        assert_eq!(FetchFilter::parse(&deep), Err(FetchError::TooLarge));
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_a_panic(
            text in "(<fetch>|<entity name=\"x\">|<filter type=\"or\">|</filter>|<condition attribute=\"a\" operator=\"eq\" value=\"1\"/>|<value>|</value>|</condition>|</entity>|[a-z<>/=\" ]){0,40}"
        ) {
            if let Ok(filter) = FetchFilter::parse(&text) {
                let cx = Context { user: ALEX, teams: &[], now: NOW };
                let _ = filter.matches(&row(json!({"a": 1})), &cx);
            }
        }
    }

    #[test]
    fn like_handles_runs_and_single_characters() {
        assert!(like("Contoso Ltd", "con%ltd"));
        assert!(like("abc", "a_c"));
        assert!(!like("abc", "a_d"));
        assert!(like("", "%"));
        assert!(!like("abc", "ab"));
    }
}
