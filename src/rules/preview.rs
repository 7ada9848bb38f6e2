//! Previews: the same decisions with one user's options as they would be after a change, which
//! the options page shows side by side before anyone saves; and the exclusions those options
//! carry (senders or domains a user never wants tracked), parsed and matched here.

use std::sync::Arc;

use uuid::Uuid;

use super::Engine;
use super::decision::Decision;
use super::engine::{Mode, Run};
use super::memory::{Memory, MemoryLimits};
use crate::directory::model::{Lookup, UserSettings};
use crate::directory::snapshot::{FolderRule, normalize_exchange_id};
use crate::inspect::Observation;

/// Most exclusions one user keeps, and the longest one (an address's longest legal form).
pub const MAX_EXCLUSIONS: usize = 200;
const MAX_EXCLUSION_LEN: usize = 254;

/// One user's options as a change would make them.
#[derive(Debug, Clone)]
pub struct Proposed {
    pub user: Uuid,
    /// The user's mailbox, whose folder rules `folder_rules` replaces.
    pub mailbox: Option<Uuid>,
    pub settings: UserSettings,
    pub folder_rules: Vec<ProposedRule>,
}

/// A folder tracking rule as a change would make it.
#[derive(Debug, Clone)]
pub struct ProposedRule {
    pub folder_id: String,
    pub name: Option<String>,
    pub regarding: Option<Lookup>,
}

impl Proposed {
    /// The proposed rule of a folder (`folder_id` normalised as the rules normalise it).
    pub(super) fn rule(&self, folder_id: &str) -> Option<FolderRule<'_>> {
        self.folder_rules
            .iter()
            .find(|r| normalize_exchange_id(&r.folder_id) == folder_id)
            .map(|r| FolderRule::new(r.name.as_deref(), r.regarding.clone()))
    }
}

impl Engine {
    /// Decides a sequence of observations in order over a memory of its own (so the live
    /// memory learns nothing), with `proposed` read in place of one user's options, or the
    /// directory's options when `None`. Every decision carries its reasoning; one list per
    /// observation, in order.
    pub fn preview(
        &self,
        observations: &[Arc<Observation>],
        proposed: Option<&Proposed>,
    ) -> Vec<Vec<Decision>> {
        let dir = self.directory.guard();
        let memory = Memory::new(MemoryLimits::default());
        let run = Run::new(&dir, &memory, Mode::REPLAY, self.limits, proposed);
        observations
            .iter()
            .map(|o| run.observation(o).into_vec())
            .collect()
    }
}

/// An exclusion that cannot be one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidExclusion {
    #[error("{0:?} is neither an e-mail address nor a domain")]
    NotAnAddress(String),
    #[error("an exclusion is at most {MAX_EXCLUSION_LEN} characters")]
    TooLong,
    #[error("at most {MAX_EXCLUSIONS} exclusions")]
    TooMany,
}

/// Senders or domains a user never wants tracked: `someone@example.com` (that address) or
/// `example.com` / `@example.com` (that domain and its subdomains), case-insensitive.
pub struct Exclusions;

impl Exclusions {
    /// Parses a list separated by new lines, commas or semicolons into its normal form
    /// (lower-case; domains without `@`), without duplicates.
    pub fn parse(text: &str) -> Result<Vec<String>, InvalidExclusion> {
        let mut list: Vec<String> = Vec::new();
        for entry in text.split(['\n', '\r', ',', ';']) {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let normal = Exclusions::normalize(entry)?;
            if !list.contains(&normal) {
                list.push(normal);
            }
            if list.len() > MAX_EXCLUSIONS {
                return Err(InvalidExclusion::TooMany);
            }
        }
        Ok(list)
    }

    fn normalize(entry: &str) -> Result<String, InvalidExclusion> {
        if entry.len() > MAX_EXCLUSION_LEN {
            return Err(InvalidExclusion::TooLong);
        }
        let lower = entry.trim_start_matches('@').to_lowercase();
        let (local, domain) = match lower.rsplit_once('@') {
            Some((local, domain)) => (Some(local), domain),
            None => (None, lower.as_str()),
        };
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '.');
        let local_ok = local.is_none_or(|l| {
            !l.is_empty() && !l.contains(char::is_whitespace) && !l.contains(['<', '>', '"'])
        });
        if domain_ok && local_ok {
            Ok(lower)
        } else {
            Err(InvalidExclusion::NotAnAddress(entry.to_owned()))
        }
    }

    /// The first exclusion that covers `address`, if any.
    pub fn first_match<'e>(exclusions: &'e [String], address: &str) -> Option<&'e str> {
        // Exclusions are kept lower-case (`parse`); the address is made so once.
        let address = address.trim().to_lowercase();
        let domain = address.rsplit_once('@')?.1;
        exclusions
            .iter()
            .find(|e| {
                if e.contains('@') {
                    **e == address
                } else {
                    domain == e.as_str()
                        || domain
                            .strip_suffix(e.as_str())
                            .is_some_and(|rest| rest.ends_with('.'))
                }
            })
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_parse_to_one_normal_form_and_refuse_what_is_not_an_address() {
        let list = Exclusions::parse("Doctor@Clinic.example\n@family.example, family.example; ")
            .unwrap_or_default();
        assert_eq!(list, vec!["doctor@clinic.example", "family.example"]);
        for bad in [
            "not an address",
            "nodot",
            "a@",
            "@",
            "x@y..",
            "<a@b.example>",
        ] {
            assert!(
                matches!(
                    Exclusions::parse(bad),
                    Err(InvalidExclusion::NotAnAddress(_))
                ),
                "{bad} was accepted"
            );
        }
        let many: String = (0..=MAX_EXCLUSIONS)
            .map(|i| format!("d{i}.example\n"))
            .collect();
        assert_eq!(Exclusions::parse(&many), Err(InvalidExclusion::TooMany));
        let long = format!("{}.example", "a".repeat(MAX_EXCLUSION_LEN));
        assert_eq!(Exclusions::parse(&long), Err(InvalidExclusion::TooLong));
    }

    #[test]
    fn an_exclusion_covers_its_address_or_its_domain_and_subdomains_only() {
        let list = Exclusions::parse("doctor@clinic.example\nfamily.example").unwrap_or_default();
        let hit = |a: &str| Exclusions::first_match(&list, a);
        assert_eq!(hit("DOCTOR@clinic.example"), Some("doctor@clinic.example"));
        assert_eq!(hit("nurse@clinic.example"), None);
        assert_eq!(hit("mum@family.example"), Some("family.example"));
        assert_eq!(hit("dad@home.family.example"), Some("family.example"));
        assert_eq!(hit("x@notfamily.example"), None);
        assert_eq!(hit("no-at-sign"), None);
    }
}
