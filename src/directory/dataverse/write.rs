//! Writing one user's options back to Dataverse, for the options page: the `usersettings`
//! row's columns (an update that never creates the row) and the mailbox's
//! `mailboxtrackingfolders` (rows removed, rows added). The next refresh reads them back.
//! And the row-level calls synchronisation makes with the same credentials: read one row or a
//! query's rows, update a row (never creating it), create a row under a chosen id (`If-None-Match:
//! *`, so a retry finds it there).

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::client::{read_body, refused};
use super::{DataverseSource, SourceError};
use crate::directory::model::Lookup;
use crate::directory::tables::entity_set;

/// A folder tracking rule to create.
#[derive(Debug, Clone)]
pub struct NewTrackingFolder {
    pub folder_id: String,
    pub folder_name: Option<String>,
    pub regarding: Option<Lookup>,
}

/// What one save changes.
#[derive(Debug, Clone, Default)]
pub struct OptionsWrite {
    /// `usersettings` columns and their new values (only those that changed).
    pub usersettings: Map<String, Value>,
    /// `mailboxtrackingfolderid`s to delete.
    pub remove_folders: Vec<Uuid>,
    pub add_folders: Vec<NewTrackingFolder>,
    /// Sync filters (`userquery` ids) to switch on (`true`) or off.
    pub filter_states: Vec<(Uuid, bool)>,
}

/// What a write asks of the row: that it exists (an update never creates), that it does not
/// (a create under a chosen id: 412 means a retry found it there), or nothing (POST, DELETE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    Exists,
    Absent,
    None,
}

impl DataverseSource {
    /// Writes one user's options: the `usersettings` columns first, then the folder rules
    /// removed, then those added (so the organization's maximum is never exceeded on the way).
    pub async fn write_user_options(
        &self,
        user: Uuid,
        mailbox: Uuid,
        write: &OptionsWrite,
    ) -> Result<(), SourceError> {
        if !write.usersettings.is_empty() {
            self.update_row("usersettingscollection", user, write.usersettings.clone())
                .await?;
        }
        for (id, on) in &write.filter_states {
            // Active (0, status 1) or Inactive (1, status 2).
            let (state, status) = if *on { (0, 1) } else { (1, 2) };
            let columns = Map::from_iter([
                ("statecode".to_owned(), json!(state)),
                ("statuscode".to_owned(), json!(status)),
            ]);
            self.update_row("userqueries", *id, columns).await?;
        }
        for id in &write.remove_folders {
            let url = self.api(&format!("/mailboxtrackingfolders({id})"));
            self.send(
                reqwest::Method::DELETE,
                "mailboxtrackingfolders",
                &url,
                None,
                Condition::None,
            )
            .await?;
        }
        for folder in &write.add_folders {
            let mut row = json!({
                "mailboxid@odata.bind": format!("/mailboxes({mailbox})"),
                "exchangefolderid": folder.folder_id,
            });
            if let Some(name) = &folder.folder_name {
                row["exchangefoldername"] = json!(name);
            }
            if let Some(regarding) = &folder.regarding {
                row[format!("regardingobjectid_{}@odata.bind", regarding.entity)] = json!(format!(
                    "/{}({})",
                    entity_set(&regarding.entity),
                    regarding.id
                ));
            }
            let url = self.api("/mailboxtrackingfolders");
            self.send(
                reqwest::Method::POST,
                "mailboxtrackingfolders",
                &url,
                Some(row),
                Condition::None,
            )
            .await?;
        }
        Ok(())
    }

    /// One row with `query` (`$select=…&$expand=…`); `None` when Dataverse has no such row.
    pub async fn read_row(
        &self,
        set: &str,
        id: Uuid,
        query: &str,
    ) -> Result<Option<Map<String, Value>>, SourceError> {
        let url = self.api(&format!("/{set}({id})?{query}"));
        match self.get(set, &url, false).await {
            Ok(row) => Ok(Some(row)),
            Err(SourceError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The rows a query (`$filter=…&$select=…`) answers, every page.
    pub async fn read_rows(
        &self,
        set: &str,
        query: &str,
    ) -> Result<Vec<Map<String, Value>>, SourceError> {
        let mut url = self.api(&format!("/{set}?{query}"));
        let mut rows = Vec::new();
        for _ in 0..1000 {
            let mut page = self.get(set, &url, false).await?;
            if let Some(Value::Array(list)) = page.remove("value") {
                rows.extend(list.into_iter().filter_map(|v| match v {
                    Value::Object(row) => Some(row),
                    _ => None,
                }));
            }
            match page.get("@odata.nextLink").and_then(Value::as_str) {
                Some(next) => url = next.to_owned(),
                None => return Ok(rows),
            }
        }
        Err(SourceError::Malformed {
            set: set.to_owned(),
            message: "more than 1000 pages".into(),
        })
    }

    /// Updates columns of an existing row (`If-Match: *`: never creates it).
    pub async fn update_row(
        &self,
        set: &str,
        id: Uuid,
        columns: Map<String, Value>,
    ) -> Result<(), SourceError> {
        let url = self.api(&format!("/{set}({id})"));
        self.send(
            reqwest::Method::PATCH,
            set,
            &url,
            Some(Value::Object(columns)),
            Condition::Exists,
        )
        .await
    }

    /// Deletes a row; one already gone counts as deleted.
    pub async fn delete_row(&self, set: &str, id: Uuid) -> Result<(), SourceError> {
        let url = self.api(&format!("/{set}({id})"));
        match self
            .send(reqwest::Method::DELETE, set, &url, None, Condition::None)
            .await
        {
            Err(SourceError::Status { status: 404, .. }) => Ok(()),
            other => other,
        }
    }

    /// Creates a row under `id`; a row already there (412) counts as created.
    pub async fn create_row(
        &self,
        set: &str,
        id: Uuid,
        columns: Map<String, Value>,
    ) -> Result<(), SourceError> {
        let url = self.api(&format!("/{set}({id})"));
        let row = Some(Value::Object(columns));
        self.send(reqwest::Method::PATCH, set, &url, row, Condition::Absent)
            .await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        set: &str,
        url: &str,
        body: Option<Value>,
        condition: Condition,
    ) -> Result<(), SourceError> {
        let mut request = self
            .http
            .request(method, url)
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0")
            .header("Accept", "application/json")
            .timeout(self.settings.request_timeout);
        match condition {
            // An update only: a PATCH without it would create a missing row.
            Condition::Exists => request = request.header("If-Match", "*"),
            Condition::Absent => request = request.header("If-None-Match", "*"),
            Condition::None => {}
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let mut response = self.send_authorized(request).await?;
        let status = response.status().as_u16();
        let body = read_body(set, &mut response).await?;
        self.refused_token(status).await;
        match (status, condition) {
            (200..=299, _) => Ok(()),
            // Created already (a retry): what was asked for holds.
            (412, Condition::Absent) => Ok(()),
            _ => Err(refused(set, status, &body)),
        }
    }
}
