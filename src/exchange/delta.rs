//! Reading a mailbox folder's changes over Microsoft Graph for the catch-up sweep, where EWS is
//! not offered (Exchange Online, app-only with `Mail.Read`): `GET
//! /users/{mailbox}/mailFolders/{folder}/messages/delta`, a page at a time, the
//! `@odata.nextLink` or `@odata.deltaLink` kept as the folder's state. The messages come in the
//! page itself and are read by the inspection code that reads the same pages in the traffic.
//! The probe that makes a quiet mailbox cost one request: `GET /users/{mailbox}/messages` with
//! `$filter=lastModifiedDateTime ge …` and `$top=1`, across every folder.

use base64::Engine as _;
use bytes::Bytes;

use super::{ExchangeClient, ExchangeError, messages_of};
use crate::common::text::percent_encode;
use crate::inspect::{self, InspectLimits, Message};

use super::sync::{SyncFolder, http_date_to_rfc3339};

/// One page of a folder's changes over Graph.
#[derive(Debug, Clone, Default)]
pub struct DeltaPage {
    /// Messages created or changed (removals are left out: nothing to track).
    pub messages: Vec<Message>,
    /// The link to continue from: the next page, or the next round's delta.
    pub state: String,
    pub last: bool,
}

/// The Graph path segment of a folder: a well-known name as it is, an EWS id in Graph's
/// URL-safe spelling (the directory's folder rules hold EWS ids).
fn folder_segment(folder: SyncFolder<'_>) -> String {
    let id = match folder {
        SyncFolder::Distinguished(name) => return name.to_owned(),
        SyncFolder::Id(id) => id,
    };
    let rest = match base64::engine::general_purpose::STANDARD.decode(id) {
        Ok(raw) => base64::engine::general_purpose::URL_SAFE.encode(raw),
        Err(_) => id.to_owned(),
    };
    percent_encode(&rest, b"=")
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A Graph error answer as the sweep needs it: a throttle with its back-off, a delta state
/// Exchange no longer knows (410), or the status.
fn graph_error(status: u16, headers: &[(String, String)]) -> ExchangeError {
    match status {
        429 | 503 => {
            let seconds = header(headers, "retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(5);
            ExchangeError::Busy(seconds.saturating_mul(1000))
        }
        410 => ExchangeError::InvalidSyncState,
        _ => ExchangeError::Status(status),
    }
}

#[derive(serde::Deserialize)]
struct Links {
    #[serde(rename = "@odata.nextLink")]
    next: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta: Option<String>,
    #[serde(default)]
    value: Vec<serde::de::IgnoredAny>,
}

impl ExchangeClient {
    fn graph_base(&self) -> Result<&str, ExchangeError> {
        self.settings
            .graph_url
            .as_deref()
            .ok_or(ExchangeError::NotConfigured("the catch-up sweep (Graph)"))
    }

    /// Whether any message of the mailbox changed since `since` (server time, RFC 3339;
    /// `None`: no earlier probe, so yes), and the server's time of this answer.
    pub async fn graph_changed_since(
        &self,
        mailbox: &str,
        since: Option<&str>,
    ) -> Result<(bool, Option<String>), ExchangeError> {
        let base = self.graph_base()?;
        let filter = since
            .map(|s| {
                format!(
                    "&$filter=lastModifiedDateTime%20ge%20{}",
                    percent_encode(s, b":")
                )
            })
            .unwrap_or_default();
        let url = format!(
            "{base}/v1.0/users/{}/messages?$top=1&$select=id{filter}",
            percent_encode(mailbox, b"@")
        );
        let (status, headers, body) = self
            .read(self.http.get(url).header("Accept", "application/json"))
            .await?;
        if status != 200 {
            return Err(graph_error(status, &headers));
        }
        let now = header(&headers, "date").and_then(http_date_to_rfc3339);
        let listed: Links =
            serde_json::from_slice(&body).map_err(|e| ExchangeError::Unreadable(e.to_string()))?;
        Ok((since.is_none() || !listed.value.is_empty(), now))
    }

    /// One page of a folder's message changes since `state` (a link an earlier page gave;
    /// `None`: from the beginning). A stored link that does not point at the configured Graph
    /// is not followed (it would carry the token elsewhere): the folder starts over.
    pub async fn messages_delta(
        &self,
        mailbox: &str,
        folder: SyncFolder<'_>,
        state: Option<&str>,
        max: u16,
    ) -> Result<DeltaPage, ExchangeError> {
        let base = self.graph_base()?;
        let url = match state {
            Some(link) if link.starts_with(&format!("{base}/")) => link.to_owned(),
            Some(_) => return Err(ExchangeError::InvalidSyncState),
            None => format!(
                "{base}/v1.0/users/{}/mailFolders/{}/messages/delta",
                percent_encode(mailbox, b"@"),
                folder_segment(folder)
            ),
        };
        let (status, headers, body) = self
            .read(
                self.http
                    .get(&url)
                    .header("Accept", "application/json")
                    .header(
                        "Prefer",
                        format!("odata.maxpagesize={max}, outlook.body-content-type=\"text\""),
                    ),
            )
            .await?;
        if status != 200 {
            return Err(graph_error(status, &headers));
        }
        let links: Links =
            serde_json::from_slice(&body).map_err(|e| ExchangeError::Unreadable(e.to_string()))?;
        let (state, last) = match (links.next, links.delta) {
            (Some(next), _) => (next, false),
            (None, Some(delta)) => (delta, true),
            (None, None) => {
                return Err(ExchangeError::Unreadable(
                    "a delta page without a next or delta link".into(),
                ));
            }
        };
        Ok(DeltaPage {
            messages: read_page(&url, base, &headers, body)?,
            state,
            last,
        })
    }
}

/// The messages of a delta page, read by the Graph inspection code as if the traffic had
/// carried the page.
fn read_page(
    url: &str,
    base: &str,
    headers: &[(String, String)],
    body: Bytes,
) -> Result<Vec<Message>, ExchangeError> {
    let path = url.strip_prefix(base).unwrap_or(url);
    let capture = inspect::capture_from_parts("GET", path, &[], Bytes::new(), 200, headers, body);
    let inspected = inspect::inspect(&capture, InspectLimits::default())
        .map_err(|e| ExchangeError::Unreadable(e.to_string()))?;
    Ok(messages_of(inspected.observations))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_named_as_graph_spells_them() {
        assert_eq!(folder_segment(SyncFolder::Distinguished("inbox")), "inbox");
        // An EWS id (standard base64) becomes the URL-safe spelling Graph uses.
        assert_eq!(folder_segment(SyncFolder::Id("AA/+Bw==")), "AA_-Bw==");
        assert_eq!(
            folder_segment(SyncFolder::Id("not base64!")),
            "not%20base64%21"
        );
    }

    #[test]
    fn throttling_and_a_forgotten_state_are_told_apart() {
        let retry = vec![("Retry-After".to_owned(), "7".to_owned())];
        assert!(matches!(
            graph_error(429, &retry),
            ExchangeError::Busy(7000)
        ));
        assert!(matches!(graph_error(503, &[]), ExchangeError::Busy(5000)));
        assert!(matches!(
            graph_error(410, &[]),
            ExchangeError::InvalidSyncState
        ));
        assert!(matches!(graph_error(403, &[]), ExchangeError::Status(403)));
    }
}
