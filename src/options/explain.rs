//! `POST /explain` with options overrides: the page's preview as an API. A mailbox, the options
//! to change (any of them; the rest stay as the directory has them) and, optionally, the
//! observations to replay (else the mailbox's recent ones); back come the decisions now and
//! with the change, side by side.

use serde::Deserialize;

use super::OptionsPage;
use super::form::{RuleChoice, UserOptions, offered_autocreate, offered_incoming};
use crate::directory::model::Lookup;
use crate::directory::snapshot::Org;
use crate::inspect::Observation;
use crate::rules::Exclusions;

/// What may be overridden; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    pub incomingemailfilteringmethod: Option<u8>,
    pub autocreatecontactonpromote: Option<u8>,
    pub trackingexclusions: Option<Vec<String>>,
    pub mailboxtrackingfolders: Option<Vec<FolderOverride>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderOverride {
    pub exchangefolderid: String,
    #[serde(default)]
    pub exchangefoldername: Option<String>,
    #[serde(default)]
    pub regardingobjectid: Option<Lookup>,
}

/// A `POST /explain` body that asks for a preview.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    /// The mailbox's address or sign-in name.
    pub mailbox: String,
    pub options: Overrides,
    #[serde(default)]
    pub observations: Option<Vec<Observation>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{0} is not a user's mailbox in the directory")]
    UnknownMailbox(String),
    #[error("options.{0}")]
    Invalid(String),
}

impl OptionsPage {
    /// The decisions for the observations now and with the overrides, as JSON.
    pub fn explain(&self, request: PreviewRequest) -> Result<serde_json::Value, ExplainError> {
        let dir = self.parts.engine.directory().load();
        let (entry, settings) = dir
            .mailbox(&request.mailbox)
            .map(|m| m.id)
            .and_then(|id| Self::owner(&dir, id))
            .ok_or_else(|| ExplainError::UnknownMailbox(request.mailbox.clone()))?;
        let mut options = UserOptions::current(&dir, entry, settings);
        apply(&mut options, request.options, dir.org())?;
        let observations: Vec<std::sync::Arc<Observation>> = match request.observations {
            Some(list) => list.into_iter().map(std::sync::Arc::new).collect(),
            None => self.parts.history.recent(entry.id),
        };
        let engine = &self.parts.engine;
        let now: Vec<_> = engine
            .preview(&observations, None)
            .into_iter()
            .flatten()
            .collect();
        let proposed = options.proposed(entry, settings);
        let then: Vec<_> = engine
            .preview(&observations, Some(&proposed))
            .into_iter()
            .flatten()
            .collect();
        Ok(serde_json::json!({ "now": now, "proposed": then }))
    }
}

fn apply(options: &mut UserOptions, overrides: Overrides, org: &Org) -> Result<(), ExplainError> {
    let invalid = |column: &'static str| {
        move |problem: String| ExplainError::Invalid(format!("{column}: {problem}"))
    };
    if let Some(v) = overrides.incomingemailfilteringmethod {
        options.incoming =
            offered_incoming(v, org).map_err(invalid("incomingemailfilteringmethod"))?;
    }
    if let Some(v) = overrides.autocreatecontactonpromote {
        options.autocreate =
            offered_autocreate(v).map_err(invalid("autocreatecontactonpromote"))?;
    }
    if let Some(list) = overrides.trackingexclusions {
        options.exclusions = Exclusions::parse(&list.join("\n"))
            .map_err(|e| ExplainError::Invalid(format!("trackingexclusions: {e}")))?;
    }
    if let Some(rules) = overrides.mailboxtrackingfolders {
        options.rules = rules
            .into_iter()
            .map(|r| RuleChoice {
                folder_id: r.exchangefolderid,
                folder_name: r.exchangefoldername,
                regarding: r.regardingobjectid,
            })
            .collect();
    }
    Ok(())
}

/// Whether a `POST /explain` body asks for a preview (an object with `options`).
pub fn is_preview(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
            .is_ok_and(|m| m.contains_key("options"))
}
