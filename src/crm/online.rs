//! The online check of a Dataverse sink (`trackgate check --online`, and the same at start-up):
//! what would make every delivery fail, found before traffic. It obtains a token, asks
//! `WhoAmI`, reads the application user's privileges for what trackgate writes, and looks up
//! every directory user and mailbox in the environment. Each finding names the configuration
//! key and the fix. Ids and names only: no address, token or secret is ever printed.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use crate::common::ClientCredentials;
use crate::oauth::{TokenError, TokenSource};

/// Where the environment is and how to sign in.
#[derive(Debug, Clone)]
pub struct OnlineTarget {
    pub url: String,
    pub api_path: String,
    pub credentials: Option<ClientCredentials>,
    /// Emails are created as their mailbox owner: impersonation needs its privilege.
    pub act_as_owner: bool,
    /// Senders may be auto-created as contacts or leads.
    pub auto_create: bool,
    pub timeout: Duration,
}

/// What the gateway's directory says must exist in the environment.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// Users that own mailboxes: id and a name to show.
    pub users: Vec<(Uuid, String)>,
    pub mailboxes: Vec<Uuid>,
}

/// One thing checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub ok: bool,
    pub what: String,
    /// The configuration key to look at, for a problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Finding {
        Finding {
            ok: true,
            what: what.into(),
            key: None,
            fix: None,
        }
    }

    fn problem(what: impl Into<String>, key: &'static str, fix: impl Into<String>) -> Finding {
        Finding {
            ok: false,
            what: what.into(),
            key: Some(key),
            fix: Some(fix.into()),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ok {
            return write!(f, "ok: {}", self.what);
        }
        write!(f, "problem: {}", self.what)?;
        if let Some(key) = self.key {
            write!(f, "\n  key: {key}")?;
        }
        if let Some(fix) = &self.fix {
            write!(f, "\n  fix: {fix}")?;
        }
        Ok(())
    }
}

/// The privileges trackgate's writes need (emails are activities: their privileges are the
/// activity ones). From the Dataverse security reference; the exact set a role must hold for
/// a deep insert of activity parties is unconfirmed, so only the table-level ones are asked.
fn required_privileges(target: &OnlineTarget) -> Vec<&'static str> {
    let mut needed = vec![
        "prvCreateActivity",
        "prvWriteActivity",
        "prvReadActivity",
        "prvAppendActivity",
        "prvReadContact",
        "prvReadAccount",
        "prvReadLead",
        "prvAppendToContact",
        "prvAppendToAccount",
        "prvReadUser",
    ];
    if target.auto_create {
        needed.extend(["prvCreateContact", "prvCreateLead"]);
    }
    if target.act_as_owner {
        needed.push("prvActOnBehalfOfAnotherUser");
    }
    needed
}

struct Api<'a> {
    http: &'a reqwest::Client,
    target: &'a OnlineTarget,
    token: Option<String>,
}

impl Api<'_> {
    async fn get(&self, path: &str) -> Result<(u16, serde_json::Value), String> {
        let url = format!("{}{}{path}", self.target.url, self.target.api_path);
        let mut request = self
            .http
            .get(url)
            .timeout(self.target.timeout)
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0")
            .header("Accept", "application/json")
            .header("Prefer", "odata.maxpagesize=5000");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                "timed out".to_owned()
            } else {
                "cannot connect".to_owned()
            }
        })?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or_default();
        Ok((status, body))
    }

    /// Every row of a set's `column` (following `@odata.nextLink`), as ids.
    async fn ids(&self, set: &str, column: &str) -> Result<HashSet<(Uuid, bool)>, String> {
        let mut found = HashSet::new();
        let mut path = format!("/{set}?$select={column}{}", disabled_column(set));
        for _ in 0..1000 {
            let (status, body) = self.get(&path).await?;
            if status != 200 {
                return Err(format!("HTTP {status}"));
            }
            for row in body["value"].as_array().into_iter().flatten() {
                if let Some(id) = row[column].as_str().and_then(|t| Uuid::parse_str(t).ok()) {
                    found.insert((id, row["isdisabled"].as_bool().unwrap_or(false)));
                }
            }
            let Some(next) = body["@odata.nextLink"].as_str() else {
                return Ok(found);
            };
            let prefix = format!("{}{}", self.target.url, self.target.api_path);
            path = next.strip_prefix(&prefix).unwrap_or(next).to_owned();
        }
        Err("too many pages".into())
    }
}

fn disabled_column(set: &str) -> &'static str {
    if set == "systemusers" {
        ",isdisabled"
    } else {
        ""
    }
}

/// Runs the check; the findings in order, problems and passes alike.
pub async fn run(
    http: &reqwest::Client,
    target: &OnlineTarget,
    expected: &Expected,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let token = match &target.credentials {
        None => None,
        Some(credentials) => match TokenSource::new(http.clone(), credentials.clone())
            .token()
            .await
        {
            Ok(token) => {
                findings.push(Finding::ok("the token endpoint issued a token"));
                Some(token)
            }
            Err(error) => {
                findings.push(token_problem(&error));
                return findings;
            }
        },
    };
    let api = Api {
        http,
        target,
        token,
    };
    let Some(user) = who_am_i(&api, &mut findings).await else {
        return findings;
    };
    privileges(&api, user, &mut findings).await;
    directory(&api, expected, &mut findings).await;
    findings
}

fn token_problem(error: &TokenError) -> Finding {
    match error {
        TokenError::Refused { .. } => Finding::problem(
            format!("the token endpoint refused trackgate's credentials: {error}"),
            "crm.dataverse.client_secret",
            "check crm.dataverse.client_id and client_secret against the app registration (a secret expires); token_url must name its tenant",
        ),
        _ => Finding::problem(
            format!("cannot get a token: {error}"),
            "crm.dataverse.token_url",
            "use https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token, reachable from the gateway",
        ),
    }
}

async fn who_am_i(api: &Api<'_>, findings: &mut Vec<Finding>) -> Option<Uuid> {
    match api.get("/WhoAmI").await {
        Ok((200, body)) => {
            let user = body["UserId"]
                .as_str()
                .and_then(|t| Uuid::parse_str(t).ok());
            findings.push(Finding::ok(format!(
                "WhoAmI: signed in as the application user {}",
                user.map(|u| u.to_string()).unwrap_or_else(|| "?".into())
            )));
            user
        }
        Ok((status @ (401 | 403), _)) => {
            findings.push(Finding::problem(
                format!("the environment refused the application (HTTP {status} on WhoAmI)"),
                "crm.dataverse.client_id",
                "add the app registration as an application user of this environment (Power Platform admin center → Application users) with a security role",
            ));
            None
        }
        Ok((status, _)) => {
            findings.push(Finding::problem(
                format!("WhoAmI answered HTTP {status}"),
                "crm.dataverse.url",
                "use the environment URL (https://<org>.crm.dynamics.com) and api_path /api/data/v9.2",
            ));
            None
        }
        Err(error) => {
            findings.push(Finding::problem(
                format!("cannot reach the environment: {error}"),
                "crm.dataverse.url",
                "check the URL and that the gateway can reach it",
            ));
            None
        }
    }
}

async fn privileges(api: &Api<'_>, user: Uuid, findings: &mut Vec<Finding>) {
    let path = format!("/systemusers({user})/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()");
    let held: HashSet<String> = match api.get(&path).await {
        Ok((200, body)) => body["RolePrivileges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["PrivilegeName"].as_str().map(str::to_owned))
            .collect(),
        Ok((status, _)) => {
            findings.push(Finding::problem(
                format!("cannot read the application user's privileges (HTTP {status})"),
                "crm.dataverse.client_id",
                "give the application user a security role that can read its own privileges (prvReadUser)",
            ));
            return;
        }
        Err(error) => {
            findings.push(Finding::problem(
                format!("cannot read the application user's privileges: {error}"),
                "crm.dataverse.url",
                "check that the environment is reachable",
            ));
            return;
        }
    };
    let missing: Vec<&str> = required_privileges(api.target)
        .into_iter()
        .filter(|p| !held.contains(*p))
        .collect();
    if missing.is_empty() {
        findings.push(Finding::ok(
            "the application user holds every privilege trackgate's writes need",
        ));
    } else {
        let key = if missing.contains(&"prvActOnBehalfOfAnotherUser") {
            "crm.dataverse.act_as_owner"
        } else {
            "crm.dataverse.client_id"
        };
        findings.push(Finding::problem(
            format!("the application user lacks {}", missing.join(", ")),
            key,
            "add them to its security role (or set crm.dataverse.act_as_owner = false if impersonation is not wanted)",
        ));
    }
}

async fn directory(api: &Api<'_>, expected: &Expected, findings: &mut Vec<Finding>) {
    if expected.users.is_empty() && expected.mailboxes.is_empty() {
        return;
    }
    match api.ids("systemusers", "systemuserid").await {
        Ok(users) => {
            let enabled: HashSet<Uuid> = users
                .iter()
                .filter(|(_, d)| !d)
                .map(|(id, _)| *id)
                .collect();
            let known: HashSet<Uuid> = users.iter().map(|(id, _)| *id).collect();
            let mut bad = 0;
            for (id, name) in &expected.users {
                let what = if !known.contains(id) {
                    "does not exist"
                } else if !enabled.contains(id) {
                    "is disabled"
                } else {
                    continue;
                };
                bad += 1;
                findings.push(Finding::problem(
                    format!("directory user {name} ({id}) {what} in the environment: their mail would dead-letter"),
                    "directory.file",
                    "use the directory of this environment (or directory.dataverse), or enable the user",
                ));
            }
            if bad == 0 {
                findings.push(Finding::ok(format!(
                    "all {} directory users exist and are enabled",
                    expected.users.len()
                )));
            }
        }
        Err(error) => findings.push(Finding::problem(
            format!("cannot list the environment's users: {error}"),
            "crm.dataverse.client_id",
            "give the application user read access to users (prvReadUser)",
        )),
    }
    match api.ids("mailboxes", "mailboxid").await {
        Ok(mailboxes) => {
            let known: HashSet<Uuid> = mailboxes.iter().map(|(id, _)| *id).collect();
            let missing: Vec<String> = expected
                .mailboxes
                .iter()
                .filter(|id| !known.contains(id))
                .map(Uuid::to_string)
                .collect();
            if missing.is_empty() {
                findings.push(Finding::ok(format!(
                    "all {} directory mailboxes exist",
                    expected.mailboxes.len()
                )));
            } else {
                findings.push(Finding::problem(
                    format!(
                        "directory mailboxes not in the environment: {}",
                        missing.join(", ")
                    ),
                    "directory.file",
                    "use the directory of this environment (or directory.dataverse)",
                ));
            }
        }
        Err(error) => findings.push(Finding::problem(
            format!("cannot list the environment's mailboxes: {error}"),
            "crm.dataverse.client_id",
            "give the application user read access to mailboxes",
        )),
    }
}
