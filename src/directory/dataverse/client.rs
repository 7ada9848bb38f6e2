//! Requests to the Dataverse Web API: one page (with the token, the `Prefer` options and
//! throttling waited out), following a table's pages and delta links, and pulling each table
//! (and the recent emails) into what a refresh applies.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::delta::{Pending, State, before, encode, parse_time};
use super::{DataverseSource, SourceError};
use crate::directory::model::{EmailEnabledRecord, Organization, TrackedEmail};
use crate::directory::tables::{self, OtherTable, TableSpec};

/// Largest response page read (a 5000-row page of the widest table is a few MB).
const MAX_PAGE_BYTES: usize = 64 << 20;
/// Pages followed for one table in one refresh, at most.
const MAX_PAGES: usize = 100_000;
/// Emails changed just before the previous refresh began are asked for again.
const EMAIL_OVERLAP: Duration = Duration::from_secs(300);

impl DataverseSource {
    pub(super) fn api(&self, path: &str) -> String {
        format!("{}{}{}", self.settings.url, self.settings.api_path, path)
    }

    /// One page, waiting out throttling: a 429 or 503 with `Retry-After` (up to a minute) is
    /// tried again, at most three times, so one busy moment does not fail a whole refresh.
    pub(super) async fn get(
        &self,
        set: &str,
        url: &str,
        track: bool,
    ) -> Result<Map<String, Value>, SourceError> {
        // The token goes only to the environment, never to a host a link names.
        if !url.starts_with(&format!("{}/", self.settings.url)) {
            return Err(SourceError::Malformed {
                set: set.to_owned(),
                message: "a link points outside the Dataverse environment".into(),
            });
        }
        let mut attempt = 0;
        loop {
            match self.get_once(set, url, track).await {
                Err(SourceError::Throttled { wait, .. }) if attempt < 3 => {
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
                Err(SourceError::Throttled { set, status, .. }) => {
                    return Err(SourceError::Unreachable(format!("HTTP {status} for {set}")));
                }
                other => return other,
            }
        }
    }

    /// One request for one page, answered as it came; [`get`](Self::get) waits out throttling.
    async fn get_once(
        &self,
        set: &str,
        url: &str,
        track: bool,
    ) -> Result<Map<String, Value>, SourceError> {
        let mut prefer = format!(
            "odata.maxpagesize={}, odata.include-annotations=\"{}\"",
            self.settings.page_size,
            tables::LOOKUP_ANNOTATION.trim_start_matches('@')
        );
        if track {
            prefer.push_str(", odata.track-changes");
        }
        let request = self
            .http
            .get(url)
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0")
            .header("Accept", "application/json")
            .header("Prefer", prefer)
            .timeout(self.settings.request_timeout);
        let mut response = self.send_authorized(request).await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 60.0);
        if let (429 | 503, Some(seconds)) = (status, retry_after) {
            return Err(SourceError::Throttled {
                set: set.to_owned(),
                status,
                wait: Duration::from_secs_f64(seconds),
            });
        }
        let body = read_body(set, &mut response).await?;
        if status == 410 {
            return Err(SourceError::Expired(set.to_owned()));
        }
        self.refused_token(status).await;
        if !(200..300).contains(&status) {
            return Err(refused(set, status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| SourceError::Malformed {
            set: set.to_owned(),
            message: e.to_string(),
        })
    }

    /// Sends a request with the token (when there are credentials).
    pub(super) async fn send_authorized(
        &self,
        mut request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SourceError> {
        if let Some(tokens) = &self.tokens {
            let token = tokens
                .token()
                .await
                .map_err(|e| SourceError::Unreachable(e.to_string()))?;
            request = request.bearer_auth(token);
        }
        request
            .send()
            .await
            .map_err(|e| SourceError::Unreachable(describe(&e)))
    }

    /// Forgets the token after a 401, so the next request asks for a new one.
    pub(super) async fn refused_token(&self, status: u16) {
        if status == 401
            && let Some(tokens) = &self.tokens
        {
            tokens.invalidate().await;
        }
    }

    /// Follows the pages from `url`, handing each page's rows to `rows`; returns the deleted
    /// ids and the delta link.
    async fn pages(
        &self,
        set: &str,
        mut url: String,
        track: bool,
        mut rows: impl FnMut(&Map<String, Value>) -> Result<(), SourceError>,
    ) -> Result<(Vec<Uuid>, Option<String>), SourceError> {
        let mut deleted = Vec::new();
        let mut count = 0usize;
        for _ in 0..MAX_PAGES {
            let page = self.get(set, &url, track).await?;
            if let Some(Value::Array(values)) = page.get("value") {
                for value in values {
                    let Some(row) = value.as_object() else {
                        continue;
                    };
                    let removed = row
                        .get("@odata.context")
                        .and_then(Value::as_str)
                        .is_some_and(|c| c.ends_with("$deletedEntity"));
                    if removed {
                        if let Some(id) = row
                            .get("id")
                            .and_then(Value::as_str)
                            .and_then(|t| Uuid::parse_str(t).ok())
                        {
                            deleted.push(id);
                        }
                        continue;
                    }
                    count += 1;
                    if count > self.settings.max_rows {
                        return Err(SourceError::Malformed {
                            set: set.to_owned(),
                            message: format!(
                                "more than {} rows (directory.dataverse.max_rows)",
                                self.settings.max_rows
                            ),
                        });
                    }
                    rows(row)?;
                }
            }
            let link = |name: &str| {
                page.get(name)
                    .and_then(Value::as_str)
                    .map(|l| self.absolute(l))
            };
            if let Some(next) = link("@odata.nextLink") {
                url = next;
                continue;
            }
            return Ok((deleted, link("@odata.deltaLink")));
        }
        Err(SourceError::Malformed {
            set: set.to_owned(),
            message: format!("more than {MAX_PAGES} pages"),
        })
    }

    /// Dataverse answers with absolute links; a path is taken relative to the environment.
    fn absolute(&self, link: &str) -> String {
        if link.starts_with("http://") || link.starts_with("https://") {
            link.to_owned()
        } else {
            format!("{}{}", self.settings.url, link)
        }
    }

    pub(super) async fn fetch_organization(&self) -> Result<Organization, SourceError> {
        let spec = tables::ORGANIZATIONS;
        let url = self.api(&format!("/organizations?$select={}", spec.select()));
        let mut found = None;
        self.pages(spec.set, url, false, |row| {
            if found.is_none() {
                found = Some(spec.parse::<Organization>(row).map_err(|message| {
                    // serde's text can quote column values: only at debug.
                    tracing::debug!(%message, "organization row not read");
                    SourceError::Malformed {
                        set: spec.set.into(),
                        message: "the organization row has a column of an unexpected type".into(),
                    }
                })?);
            }
            Ok(())
        })
        .await?;
        found.ok_or_else(|| SourceError::Malformed {
            set: spec.set.into(),
            message: "no organization row".into(),
        })
    }

    /// One table: by its delta link when there is one (falling back to a full load when it
    /// has expired), else whole with change tracking asked for.
    pub(super) async fn pull<T: DeserializeOwned + Serialize>(
        &self,
        spec: &TableSpec,
        delta: Option<String>,
        users: &HashSet<Uuid>,
    ) -> Result<Pending<T>, SourceError> {
        let convert = |row: &Map<String, Value>| -> Option<(Uuid, T)> {
            let id = spec.id(row)?;
            match spec.parse::<T>(row) {
                Ok(t) => Some((id, t)),
                Err(message) => {
                    tracing::debug!(set = spec.set, %id, %message, "row left out");
                    None
                }
            }
        };
        self.pull_with(spec.set, &spec.select(), delta, users, convert)
            .await
    }

    pub(super) async fn pull_other(
        &self,
        table: &OtherTable,
        delta: Option<String>,
        users: &HashSet<Uuid>,
    ) -> Result<Pending<EmailEnabledRecord>, SourceError> {
        self.pull_with(&table.set, &table.select().join(","), delta, users, |row| {
            table.record(row).map(|r| (r.id, r))
        })
        .await
    }

    async fn pull_with<T: Serialize>(
        &self,
        set: &str,
        select: &str,
        delta: Option<String>,
        users: &HashSet<Uuid>,
        convert: impl Fn(&Map<String, Value>) -> Option<(Uuid, T)>,
    ) -> Result<Pending<T>, SourceError> {
        let filter = self.filter(set);
        let track = tables::tracks_changes(set);
        if let Some(link) = delta.filter(|_| track) {
            let mut rows = Vec::new();
            match self
                .pages(set, link, track, |row| {
                    if let Some((id, bytes)) =
                        convert(row).and_then(|(id, t)| Some((id, encode(&t)?)))
                    {
                        rows.push((id, bytes, filter.keeps(row, users)));
                    }
                    Ok(())
                })
                .await
            {
                Ok((deleted, delta)) => {
                    return Ok(Pending {
                        set: set.to_owned(),
                        full: false,
                        rows,
                        deleted,
                        delta,
                        row: std::marker::PhantomData,
                    });
                }
                Err(SourceError::Expired(_)) => {
                    tracing::info!(set, "delta link expired; loading the table again");
                }
                // Dataverse may refuse an old or foreign delta token with another 4xx: one
                // whole load settles it (a failing whole load then fails the refresh).
                Err(SourceError::Status { status, .. })
                    if (400..500).contains(&status) && status != 401 && status != 429 =>
                {
                    tracing::info!(set, status, "delta link refused; loading the table again");
                }
                Err(e) => return Err(e),
            }
        }
        let mut rows = Vec::new();
        let url = self.api(&format!("/{set}?$select={select}"));
        let (_, delta) = self
            .pages(set, url, track, |row| {
                if let Some((id, bytes)) = convert(row).and_then(|(id, t)| Some((id, encode(&t)?)))
                {
                    rows.push((id, bytes, filter.keeps(row, users)));
                }
                Ok(())
            })
            .await?;
        Ok(Pending {
            set: set.to_owned(),
            full: true,
            rows,
            deleted: Vec::new(),
            delta,
            row: std::marker::PhantomData,
        })
    }

    /// Recently tracked emails: created within the window on a full load, then those modified
    /// since the previous refresh (change tracking is not asked for: the set is large and only
    /// its recent part matters).
    pub(super) async fn pull_emails(
        &self,
        state: &State,
        users: &HashSet<Uuid>,
        started: SystemTime,
    ) -> Result<Pending<TrackedEmail>, SourceError> {
        let spec = tables::EMAILS;
        let filter = self.filter(spec.set);
        let (full, condition) = match &state.emails_since {
            Some(since) => {
                let since = parse_time(since)
                    .map(|t| before(t, EMAIL_OVERLAP))
                    .unwrap_or_else(|| before(started, self.settings.emails_window));
                (
                    false,
                    format!("modifiedon ge {}", humantime::format_rfc3339_seconds(since)),
                )
            }
            None => {
                let from = before(started, self.settings.emails_window);
                (
                    true,
                    format!("createdon ge {}", humantime::format_rfc3339_seconds(from)),
                )
            }
        };
        let url = self.api(&format!(
            "/emails?$select={}&$filter={}&$expand=email_activity_parties($select=addressused)",
            spec.select(),
            condition.replace(' ', "%20")
        ));
        let mut rows = Vec::new();
        self.pages(spec.set, url, false, |row| {
            let Some(id) = spec.id(row) else {
                return Ok(());
            };
            let Ok(mut email) = spec.parse::<TrackedEmail>(row) else {
                return Ok(());
            };
            if let Some(Value::Array(parties)) = row.get("email_activity_parties") {
                email.addresses = parties
                    .iter()
                    .filter_map(|p| p.get("addressused").and_then(Value::as_str))
                    .filter(|a| !a.is_empty())
                    .map(str::to_lowercase)
                    .collect();
                email.addresses.dedup();
            }
            if let Some(bytes) = encode(&email) {
                rows.push((id, bytes, filter.keeps(row, users)));
            }
            Ok(())
        })
        .await?;
        Ok(Pending {
            set: spec.set.into(),
            full,
            rows,
            deleted: Vec::new(),
            delta: None,
            row: std::marker::PhantomData,
        })
    }
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        "cannot connect".into()
    } else {
        "the connection failed".into()
    }
}

/// A response's body, up to [`MAX_PAGE_BYTES`] (a larger page fails the table).
pub(super) async fn read_body(
    set: &str,
    response: &mut reqwest::Response,
) -> Result<Vec<u8>, SourceError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_PAGE_BYTES {
                    return Err(SourceError::Malformed {
                        set: set.to_owned(),
                        message: format!("a page is larger than {MAX_PAGE_BYTES} bytes"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(SourceError::Unreachable(describe(&e))),
        }
    }
}

/// The error of an answer outside 2xx: overload is "unreachable" (the refresh is tried again
/// later), anything else names the status.
pub(super) fn refused(set: &str, status: u16, body: &[u8]) -> SourceError {
    // Only Dataverse's error code: its message may quote the request's values.
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/code")?.as_str().map(str::to_owned))
        .map(|code| format!("error code {code}"))
        .unwrap_or_else(|| "no readable error".into());
    if matches!(status, 429 | 502..=504) {
        SourceError::Unreachable(format!("HTTP {status} for {set}"))
    } else {
        SourceError::Status {
            set: set.to_owned(),
            status,
            message,
        }
    }
}
