//! Writing one user's options back to Dataverse, for the options page: the `usersettings`
//! row's columns (an update that never creates the row) and the mailbox's
//! `mailboxtrackingfolders` (rows removed, rows added). The next refresh reads them back.

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
            let url = self.api(&format!("/usersettingscollection({user})"));
            let body = Value::Object(write.usersettings.clone());
            self.send(
                reqwest::Method::PATCH,
                "usersettingscollection",
                &url,
                Some(body),
            )
            .await?;
        }
        for (id, on) in &write.filter_states {
            // Active (0, status 1) or Inactive (1, status 2).
            let url = self.api(&format!("/userqueries({id})"));
            let state = if *on {
                json!({"statecode": 0, "statuscode": 1})
            } else {
                json!({"statecode": 1, "statuscode": 2})
            };
            self.send(reqwest::Method::PATCH, "userqueries", &url, Some(state))
                .await?;
        }
        for id in &write.remove_folders {
            let url = self.api(&format!("/mailboxtrackingfolders({id})"));
            self.send(
                reqwest::Method::DELETE,
                "mailboxtrackingfolders",
                &url,
                None,
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
            )
            .await?;
        }
        Ok(())
    }

    async fn send(
        &self,
        method: reqwest::Method,
        set: &str,
        url: &str,
        body: Option<Value>,
    ) -> Result<(), SourceError> {
        let update = method == reqwest::Method::PATCH;
        let mut request = self
            .http
            .request(method, url)
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0")
            .header("Accept", "application/json")
            .timeout(self.settings.request_timeout);
        if update {
            // An update only: a PATCH without it would create a missing row.
            request = request.header("If-Match", "*");
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let mut response = self.send_authorized(request).await?;
        let status = response.status().as_u16();
        let body = read_body(set, &mut response).await?;
        self.refused_token(status).await;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(refused(set, status, &body))
        }
    }
}
