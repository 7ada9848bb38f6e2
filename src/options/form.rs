//! One user's editable options as the page shows and posts them: read from the directory
//! snapshot, parsed and checked from a submitted form (every value bounded, every mistake named
//! in the person's words), turned into the rules' [`Proposed`] for a preview, and compared for
//! the audit trail.

use uuid::Uuid;

use crate::directory::model::{Lookup, MailboxTrackingFolder, SyncFilter, UserSettings};
use crate::directory::snapshot::{Directory, MailboxEntry, Org, normalize_exchange_id};
use crate::rules::{Exclusions, Proposed, ProposedRule};

/// Largest form body accepted, and the most fields in it.
pub const MAX_FORM_BYTES: usize = 64 << 10;
const MAX_FIELDS: usize = 600;
/// Longest folder id the directory takes (an EWS id is well under it), and the longest name
/// Dataverse stores (`mailboxtrackingfolder`).
const MAX_FOLDER_ID: usize = 120;
const MAX_FOLDER_NAME: usize = 1000;
/// Longest interval accepted, in minutes (a day).
const MAX_INTERVAL: u32 = 1440;

/// The wording of "Select the email messages to track", by value.
pub const INCOMING_CHOICES: [(u8, &str); 5] = [
    (0, "All email messages"),
    (1, "Email messages in response to Dynamics 365 email"),
    (
        2,
        "Email messages from Dynamics 365 Leads, Contacts and Accounts",
    ),
    (
        3,
        "Email messages from Dynamics 365 records that are email enabled",
    ),
    (4, "No email messages"),
];

/// "Automatically create records in Dynamics 365", by value.
pub const CREATE_CHOICES: [(u8, &str); 3] = [(0, "No"), (1, "Contacts"), (2, "Leads")];

/// What a submitted form is read against: the directory, the names of the mailbox's folders,
/// the records a rule may link (those the page offered) and the user's sync filters.
#[derive(Clone, Copy)]
pub struct FormContext<'a> {
    pub dir: &'a Directory,
    pub known_folder: &'a (dyn Fn(&str) -> Option<String> + Sync),
    pub offered: &'a (dyn Fn(&Lookup) -> bool + Sync),
    pub filters: &'a [SyncFilter],
}

/// A folder tracking rule as the page edits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleChoice {
    pub folder_id: String,
    pub folder_name: Option<String>,
    pub regarding: Option<Lookup>,
}

/// Everything the page edits for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserOptions {
    pub incoming: u8,
    pub autocreate: u8,
    pub synccontactcompany: bool,
    /// Minutes; `None`: the default.
    pub outlooksyncinterval: Option<u32>,
    pub allowcrmsendemail: bool,
    pub exclusions: Vec<String>,
    pub rules: Vec<RuleChoice>,
    /// Whether each of the user's sync filters is on, in their order.
    pub filters: Vec<bool>,
}

/// A form the page cannot take, said to the person who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("the form is larger than the page ever sends")]
    TooLarge,
    #[error("{field}: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
}

fn field(field: &'static str, problem: impl Into<String>) -> FormError {
    FormError::Field {
        field,
        problem: problem.into(),
    }
}

impl UserOptions {
    /// A user's options as the directory has them now.
    pub fn current(dir: &Directory, mailbox: &MailboxEntry, settings: &UserSettings) -> Self {
        let rules = dir
            .tracked_folder_ids(mailbox)
            .map(|id| {
                let rule = dir.rule(mailbox, &normalize_exchange_id(id));
                RuleChoice {
                    folder_id: id.to_owned(),
                    folder_name: rule.as_ref().and_then(|r| r.name().map(str::to_owned)),
                    regarding: rule.and_then(|r| r.regarding),
                }
            })
            .collect();
        UserOptions {
            incoming: settings.incomingemailfilteringmethod,
            autocreate: settings.autocreatecontactonpromote,
            synccontactcompany: settings.synccontactcompany,
            outlooksyncinterval: settings.outlooksyncinterval,
            allowcrmsendemail: settings.allowcrmsendemail,
            exclusions: settings.trackingexclusions.clone(),
            rules,
            filters: settings.syncfilters.iter().map(|f| f.enabled).collect(),
        }
    }

    /// Reads a submitted form (`application/x-www-form-urlencoded`), checking every value
    /// against the organization's limits. Folder names come from `known_folder`, never from
    /// the form.
    pub fn from_form(body: &[u8], context: &FormContext<'_>) -> Result<UserOptions, FormError> {
        let FormContext {
            dir,
            known_folder,
            offered,
            filters,
        } = *context;
        if body.len() > MAX_FORM_BYTES {
            return Err(FormError::TooLarge);
        }
        let pairs: Vec<(String, String)> = form_urlencoded::parse(body)
            .take(MAX_FIELDS + 1)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if pairs.len() > MAX_FIELDS {
            return Err(FormError::TooLarge);
        }
        let one = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim());
        let org = dir.org();
        let incoming = offered_incoming(number(one("incoming"), "incoming")?, org)
            .map_err(|problem| field("incoming", problem))?;
        let autocreate = offered_autocreate(number(one("autocreate"), "autocreate")?)
            .map_err(|problem| field("autocreate", problem))?;
        let floor = u32::try_from(org.min_sync_interval.as_secs() / 60).unwrap_or(u32::MAX);
        let outlooksyncinterval = match one("outlooksyncinterval").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => {
                let minutes: u32 = v.parse().map_err(|_| {
                    field("outlooksyncinterval", "is not a whole number of minutes")
                })?;
                if minutes < floor.max(1) || minutes > MAX_INTERVAL {
                    return Err(field(
                        "outlooksyncinterval",
                        format!(
                            "must be between {} and {MAX_INTERVAL} minutes (your organization's minimum is {})",
                            floor.max(1),
                            floor.max(1)
                        ),
                    ));
                }
                Some(minutes)
            }
        };
        let exclusions = Exclusions::parse(one("exclusions").unwrap_or_default())
            .map_err(|e| field("exclusions", e.to_string()))?;
        let rules = rules_from(&pairs, dir, known_folder, offered)?;
        // A filter the page showed is on when ticked; one it did not show (added since) stays
        // as it is. Filters are named by their saved view's id, so a reordering moves nothing.
        let has =
            |name: &str, value: &str| pairs.iter().any(|(k, v)| k == name && v.trim() == value);
        let filters = filters
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let key = filter_key(i, f);
                if has("syncfilter_shown", &key) {
                    has("syncfilter", &key)
                } else {
                    f.enabled
                }
            })
            .collect();
        Ok(UserOptions {
            filters,
            incoming,
            autocreate,
            synccontactcompany: one("synccontactcompany").is_some(),
            outlooksyncinterval,
            allowcrmsendemail: one("allowcrmsendemail").is_some(),
            exclusions,
            rules,
        })
    }

    /// The user's settings with these options in them.
    pub fn settings(&self, base: &UserSettings) -> UserSettings {
        UserSettings {
            incomingemailfilteringmethod: self.incoming,
            autocreatecontactonpromote: self.autocreate,
            synccontactcompany: self.synccontactcompany,
            outlooksyncinterval: self.outlooksyncinterval,
            allowcrmsendemail: self.allowcrmsendemail,
            trackingexclusions: self.exclusions.clone(),
            syncfilters: base
                .syncfilters
                .iter()
                .zip(self.filters.iter().chain(std::iter::repeat(&true)))
                .map(|(f, on)| SyncFilter {
                    enabled: *on,
                    ..f.clone()
                })
                .collect(),
            ..base.clone()
        }
    }

    /// What the rules read for a preview of these options.
    pub fn proposed(&self, mailbox: &MailboxEntry, base: &UserSettings) -> Proposed {
        Proposed {
            user: base.systemuserid,
            mailbox: Some(mailbox.id),
            settings: self.settings(base),
            folder_rules: self
                .rules
                .iter()
                .map(|r| ProposedRule {
                    folder_id: r.folder_id.clone(),
                    name: r.folder_name.clone(),
                    regarding: r.regarding.clone(),
                })
                .collect(),
        }
    }

    /// The mailbox's folder rule rows for these options.
    pub fn folder_rows(&self, mailbox: Uuid) -> Vec<MailboxTrackingFolder> {
        self.rules
            .iter()
            .map(|r| MailboxTrackingFolder {
                mailboxtrackingfolderid: None,
                mailboxid: mailbox,
                exchangefolderid: r.folder_id.clone(),
                exchangefoldername: r.folder_name.clone(),
                regardingobjectid: r.regarding.clone(),
            })
            .collect()
    }

    /// What changed, option by option, for the audit trail: values, never addresses or
    /// folder names (exclusions and rules are counted).
    pub fn changes(&self, after: &UserOptions) -> Vec<crate::options::store::Changed> {
        let mut out = Vec::new();
        let mut note = |option: &str, from: String, to: String| {
            if from != to {
                out.push(crate::options::store::Changed {
                    option: option.into(),
                    from,
                    to,
                });
            }
        };
        note(
            "incomingemailfilteringmethod",
            self.incoming.to_string(),
            after.incoming.to_string(),
        );
        note(
            "autocreatecontactonpromote",
            self.autocreate.to_string(),
            after.autocreate.to_string(),
        );
        note(
            "synccontactcompany",
            self.synccontactcompany.to_string(),
            after.synccontactcompany.to_string(),
        );
        let minutes = |m: Option<u32>| m.map_or("default".into(), |m| m.to_string());
        note(
            "outlooksyncinterval",
            minutes(self.outlooksyncinterval),
            minutes(after.outlooksyncinterval),
        );
        note(
            "allowcrmsendemail",
            self.allowcrmsendemail.to_string(),
            after.allowcrmsendemail.to_string(),
        );
        if self.exclusions != after.exclusions {
            out.push(crate::options::store::Changed {
                option: "trackingexclusions".into(),
                from: format!("{} entries", self.exclusions.len()),
                to: format!("{} entries", after.exclusions.len()),
            });
        }
        if self.filters != after.filters {
            let on = |f: &[bool]| format!("{} of {} on", f.iter().filter(|o| **o).count(), f.len());
            out.push(crate::options::store::Changed {
                option: "syncfilters".into(),
                from: on(&self.filters),
                to: on(&after.filters),
            });
        }
        if self.rules != after.rules {
            out.push(crate::options::store::Changed {
                option: "mailboxtrackingfolders".into(),
                from: format!("{} rules", self.rules.len()),
                to: format!("{} rules", after.rules.len()),
            });
        }
        out
    }
}

/// How the page names a sync filter: its saved view's id, or its place for one without.
pub fn filter_key(index: usize, filter: &SyncFilter) -> String {
    filter
        .userqueryid
        .map_or_else(|| format!("n{index}"), |id| id.to_string())
}

fn number(value: Option<&str>, name: &'static str) -> Result<u8, FormError> {
    let value = value.ok_or_else(|| field(name, "is missing"))?;
    value
        .parse::<u8>()
        .map_err(|_| field(name, format!("{value:?} is not one of the choices")))
}

/// An incoming filter value the organization offers (the form's and the API's check).
pub fn offered_incoming(value: u8, org: &Org) -> Result<u8, String> {
    if !INCOMING_CHOICES.iter().any(|(c, _)| *c == value) {
        return Err(format!("{value} is not one of the choices (0 to 4)"));
    }
    if value == 4 && !org.settings.do_not_auto_track_email {
        return Err(
            "\"No email messages\" is not offered by your organization (DoNotAutoTrackEmail is off)"
                .into(),
        );
    }
    Ok(value)
}

/// An automatic-creation value (the form's and the API's check).
pub fn offered_autocreate(value: u8) -> Result<u8, String> {
    CREATE_CHOICES
        .iter()
        .any(|(c, _)| *c == value)
        .then_some(value)
        .ok_or_else(|| format!("{value} is not one of the choices (0 to 2)"))
}

/// The folder rule rows: `rule_folder` and `rule_regarding` in pairs, in order; a row whose
/// folder is empty is removed.
fn rules_from(
    pairs: &[(String, String)],
    dir: &Directory,
    known_folder: &dyn Fn(&str) -> Option<String>,
    offered: &dyn Fn(&Lookup) -> bool,
) -> Result<Vec<RuleChoice>, FormError> {
    let folders = pairs
        .iter()
        .filter(|(k, _)| k == "rule_folder")
        .map(|(_, v)| v);
    let regardings = pairs
        .iter()
        .filter(|(k, _)| k == "rule_regarding")
        .map(|(_, v)| v);
    let mut rules: Vec<RuleChoice> = Vec::new();
    for (folder, regarding) in folders.zip(regardings) {
        let folder = folder.trim();
        if folder.is_empty() {
            continue;
        }
        if folder.len() > MAX_FOLDER_ID {
            return Err(field("rule_folder", "is not a folder id"));
        }
        let normal = normalize_exchange_id(folder);
        if rules
            .iter()
            .any(|r| normalize_exchange_id(&r.folder_id) == normal)
        {
            return Err(field("rule_folder", "a folder has one rule at most"));
        }
        let folder_name = known_folder(folder).map(|n| n.chars().take(MAX_FOLDER_NAME).collect());
        rules.push(RuleChoice {
            folder_id: folder.to_owned(),
            folder_name,
            regarding: match regarding_from(regarding)? {
                // Only a record the page offered: the service account writes the link.
                Some(record) if !offered(&record) => {
                    return Err(field("rule_regarding", "is not a record the page offered"));
                }
                other => other,
            },
        });
    }
    let org = dir.org();
    if !rules.is_empty() && !org.folder_tracking {
        return Err(field(
            "rule_folder",
            "folder-level tracking is turned off for your organization",
        ));
    }
    if rules.len() > org.max_folder_rules as usize {
        return Err(field(
            "rule_folder",
            format!(
                "your organization allows at most {} folder tracking rules per mailbox",
                org.max_folder_rules
            ),
        ));
    }
    Ok(rules)
}

/// `entity:id`, or empty for none.
fn regarding_from(value: &str) -> Result<Option<Lookup>, FormError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let bad = || field("rule_regarding", "is not a record the page offered");
    let (entity, id) = value.split_once(':').ok_or_else(bad)?;
    let valid_entity = !entity.is_empty()
        && entity.len() <= 64
        && entity
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    let id: Uuid = id.parse().map_err(|_| bad())?;
    if !valid_entity {
        return Err(bad());
    }
    Ok(Some(Lookup::new(entity, id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::file::FileSource;

    fn dir() -> Directory {
        FileSource::embedded()
            .load()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn form(text: &str) -> Result<UserOptions, FormError> {
        let filters = [
            SyncFilter {
                entity: "contact".into(),
                ..SyncFilter::default()
            },
            SyncFilter {
                userqueryid: Some(Uuid::from_u128(9)),
                entity: "account".into(),
                ..SyncFilter::default()
            },
            SyncFilter {
                entity: "task".into(),
                enabled: true,
                ..SyncFilter::default()
            },
        ];
        let known = |id: &str| (id == "AAMkDeals=").then(|| "Deals".to_owned());
        let offered = |l: &Lookup| l.entity == "account";
        UserOptions::from_form(
            text.as_bytes(),
            &FormContext {
                dir: &dir(),
                known_folder: &known,
                offered: &offered,
                filters: &filters,
            },
        )
    }

    #[test]
    fn a_form_reads_every_option_and_names_the_folder_from_the_mailbox_not_the_form() {
        let options = form(concat!(
            "incoming=0&autocreate=2&synccontactcompany=on&outlooksyncinterval=30",
            "&allowcrmsendemail=on&exclusions=family.example%0D%0Adoc%40clinic.example",
            "&rule_folder=AAMkDeals%3D&rule_regarding=account%3A00000000-0000-4000-8000-0000000000c2",
            "&rule_folder=&rule_regarding=&syncfilter_shown=n0",
            "&syncfilter_shown=00000000-0000-0000-0000-000000000009",
            "&syncfilter=00000000-0000-0000-0000-000000000009"
        ));
        let options = options.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(options.incoming, 0);
        assert_eq!(options.autocreate, 2);
        assert!(options.synccontactcompany && options.allowcrmsendemail);
        assert_eq!(options.outlooksyncinterval, Some(30));
        assert_eq!(
            options.exclusions,
            vec!["family.example", "doc@clinic.example"]
        );
        // Shown and unticked: off; shown and ticked: on; not shown: as it was.
        assert_eq!(options.filters, vec![false, true, true]);
        assert_eq!(options.rules.len(), 1);
        assert_eq!(options.rules[0].folder_name.as_deref(), Some("Deals"));
        assert_eq!(
            options.rules[0]
                .regarding
                .as_ref()
                .map(|l| l.entity.as_ref()),
            Some("account")
        );
    }

    #[test]
    fn each_bad_value_is_refused_naming_its_field() {
        let refused = |text: &str| match form(text) {
            Err(FormError::Field { field, .. }) => field,
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(refused("incoming=7&autocreate=0"), "incoming");
        assert_eq!(refused("autocreate=0"), "incoming");
        assert_eq!(refused("incoming=1&autocreate=5"), "autocreate");
        assert_eq!(
            refused("incoming=1&autocreate=0&outlooksyncinterval=soon"),
            "outlooksyncinterval"
        );
        assert_eq!(
            refused("incoming=1&autocreate=0&outlooksyncinterval=99999"),
            "outlooksyncinterval"
        );
        assert_eq!(
            refused("incoming=1&autocreate=0&exclusions=nope"),
            "exclusions"
        );
        assert_eq!(
            refused(
                "incoming=1&autocreate=0&rule_folder=A&rule_regarding=x&rule_folder=A&rule_regarding="
            ),
            "rule_regarding"
        );
        assert_eq!(
            refused(
                "incoming=1&autocreate=0&rule_folder=A&rule_regarding=&rule_folder=A&rule_regarding="
            ),
            "rule_folder"
        );
        let too_many: String = (0..30)
            .map(|i| format!("&rule_folder=F{i}&rule_regarding="))
            .collect();
        assert_eq!(
            refused(&format!("incoming=1&autocreate=0{too_many}")),
            "rule_folder"
        );
        let huge = "x".repeat(MAX_FORM_BYTES + 1);
        assert_eq!(form(&huge), Err(FormError::TooLarge));
    }
}
