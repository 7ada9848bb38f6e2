//! `trackgate demo`: the whole pipeline in one process. It starts the Exchange simulator, the
//! Dataverse simulator (seeded with the example directory: users with different personal
//! options, a folder rule, contacts, accounts, leads, tracked emails) and the gateway on TLS, on
//! free loopback ports; the gateway reads its directory from the Dataverse simulator and
//! delivers to it. Then it replays a recorded working morning through the gateway as Outlook
//! and a phone would (EWS and Graph), and reports each message's decision, its reason and the
//! CRM record that landed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::app::{self, Gateway};
use crate::config::RawConfig;
use crate::crm::mapping::Action;
use crate::delivery::{Delivered, DeliveryOutcome};
use crate::rules::Decision;
use crate::simulate::fixtures::FixtureSet;
use crate::simulate::mailbox::Store;
use crate::simulate::{DataverseOptions, DataverseSimulator, ExchangeSimulator, SimulatorOptions};

mod morning;

pub use morning::{MORNING, Step};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the {what}: {message}")]
    Start { what: &'static str, message: String },
    #[error("the recorded request {fixture} failed: {message}")]
    Step { fixture: String, message: String },
    #[error("{0}")]
    Fixtures(#[from] crate::simulate::fixtures::FixtureError),
}

/// One row of the report: a decision and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DemoRow {
    pub step: String,
    pub mailbox: String,
    pub message: String,
    pub verdict: String,
    pub reason: String,
    /// What became of it in the CRM (`email 1a2b3c4d, regarding account Fabrikam`), or why
    /// nothing did.
    pub crm: String,
    pub landed: Landed,
}

/// What a decision led to, as delivery reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Landed {
    /// Ignored: nothing was to happen.
    Nothing,
    /// A new email in the CRM (or one already there with the same id: exactly once).
    Email(uuid::Uuid),
    /// The regarding of an email already in the CRM was set.
    Regarding(uuid::Uuid),
    /// Exchange showed the message, and it was not tracked after all.
    NotTracked,
    /// Refused for good.
    Dead,
    /// Not settled when the report was made.
    Pending,
}

/// The morning's decisions and what the CRM holds afterwards.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub rows: Vec<DemoRow>,
    /// Emails the Dataverse simulator holds that it did not hold before the morning.
    pub new_crm_emails: usize,
    /// Writes the (strict) Dataverse simulator refused as invalid, and its last messages.
    pub crm_refusals: Vec<String>,
    pub crm_refused: u64,
    /// What synchronisation brought from the CRM into Alex's Outlook (calendar, contacts,
    /// tasks), one line each.
    pub synchronised: Vec<String>,
}

/// What stays up with `--keep-running`.
pub struct Running {
    pub gateway: Gateway,
    pub exchange: ExchangeSimulator,
    /// The simulated Exchange's mailboxes.
    pub store: Arc<Store>,
    pub dataverse: DataverseSimulator,
    pub data_dir: PathBuf,
    _cleanup: DataDir,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

/// Removes the demo's data when dropped, whichever way the demo ends (an error, a signal).
struct DataDir(PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Running {
    /// Stops the gateway (drained) and both simulators, and removes the demo's data.
    pub async fn stop(self) {
        self.gateway.shutdown().await;
        self.exchange.stop().await;
        self.dataverse.stop().await;
        drop(self._cleanup);
    }

    /// URLs and `curl` lines to poke the running demo.
    pub fn instructions(&self) -> String {
        let proxy = self.gateway.proxy_url().replace("127.0.0.1", "localhost");
        let admin = self.gateway.admin_url();
        let ca = self.data_dir.join("data/certs/dev-ca.pem");
        let dv = self.dataverse.url();
        format!(
            "Everything is still running (Ctrl-C stops it):
  gateway (TLS):        {proxy}   EWS {proxy}/EWS/Exchange.asmx, Graph {proxy}/v1.0
  admin:                {admin}
  options page:         {admin}/options   (development sign-in: pick a user, no password —
                        alex.seller@contoso.example; kim.manager@contoso.example is an admin)
  Exchange simulator:   {exchange}
  Dataverse simulator:  {dv}/api/data/v9.2
  development CA:       {ca}

Try:
  curl --cacert {ca} -H 'X-AnchorMailbox: alex.seller@contoso.example' {proxy}/v1.0/me/mailFolders/inbox/messages
  curl {admin}/decisions
  curl {admin}/outbox/stats
  curl {admin}/directory
  curl '{dv}/api/data/v9.2/emails?$select=subject,directioncode'
  curl '{dv}/api/data/v9.2/contacts?$select=fullname,emailaddress1'
",
            exchange = self.exchange.url(),
            ca = ca.display(),
        )
    }
}

fn start_error(what: &'static str) -> impl Fn(String) -> DemoError {
    move |message| DemoError::Start { what, message }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Runs the demo; `progress` hears each step as it happens. Returns the report and, with
/// `keep_running`, everything still running.
pub async fn run(
    keep_running: bool,
    mut progress: impl FnMut(&str),
) -> Result<(Report, Option<Running>), DemoError> {
    crate::tls::install_crypto_provider();
    let data_dir = std::env::temp_dir().join(format!(
        "trackgate-demo-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let cleanup = DataDir(data_dir.clone());
    progress("starting the Exchange simulator, the Dataverse simulator and the gateway");
    let store =
        Arc::new(Store::embedded().map_err(|e| start_error("Exchange simulator")(e.to_string()))?);
    let exchange = ExchangeSimulator::start(
        loopback(),
        SimulatorOptions::new("demo", FixtureSet::embedded()?).with_store(store.clone()),
    )
    .await
    .map_err(|e| start_error("Exchange simulator")(e.to_string()))?;
    let directory: crate::directory::DirectoryDocument =
        toml::from_str(crate::directory::file::EMBEDDED_EXAMPLE)
            .map_err(|e| start_error("Dataverse simulator")(e.to_string()))?;
    let dataverse = DataverseSimulator::start(
        loopback(),
        DataverseOptions {
            seed: Some(directory),
            ..DataverseOptions::default()
        },
    )
    .await
    .map_err(|e| start_error("Dataverse simulator")(e.to_string()))?;
    let text = format!(
        r#"
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[upstreams]
ews = "{exchange}"
[storage]
data_dir = "{data}"
[directory]
source = "dataverse"
[directory.dataverse]
startup_wait = "20s"
[crm]
sink = "dataverse"
[crm.dataverse]
url = "{dataverse}"
[delivery]
backoff_base = "200ms"
backoff_max = "2s"
# The morning shows the inline path step by step; a sweep in the background would add rows
# at moments of its own.
[catchup]
enabled = false
[exchange]
ews_url = "{exchange}/EWS/Exchange.asmx"
graph_url = "{exchange}/v1.0"
auth = "basic"
username = 'CONTOSO\svc-trackgate'
password = "Example-Pa55-svc"
# The Personal Options page, with the simulator's sign-in (no password); Kim is an admin.
[options]
sign_in = "development"
admins = ["kim.manager@contoso.example"]
"#,
        exchange = exchange.url(),
        dataverse = dataverse.url(),
        data = data_dir.join("data").display(),
    );
    let config = RawConfig::from_toml(&text, "demo", Vec::new())
        .and_then(|raw| raw.validate(&data_dir))
        .map_err(|e| start_error("gateway")(e.to_string()))?;
    let gateway = app::start(config)
        .await
        .map_err(|e| start_error("gateway")(e.to_string()))?;
    let running = Running {
        gateway,
        exchange,
        store,
        dataverse,
        data_dir,
        _cleanup: cleanup,
    };
    // The directory must have come from the Dataverse simulator, or every decision is wrong.
    if !running
        .gateway
        .dataverse_source()
        .is_some_and(|s| s.status().ever_loaded())
    {
        running.stop().await;
        return Err(start_error("gateway")(
            "the directory was not loaded from the Dataverse simulator".into(),
        ));
    }
    let report = match morning::morning(&running, &mut progress).await {
        Ok(report) => report,
        Err(e) => {
            running.stop().await;
            return Err(e);
        }
    };
    if keep_running {
        Ok((report, Some(running)))
    } else {
        running.stop().await;
        Ok((report, None))
    }
}

fn text(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str)
}

/// The name of a CRM row (`fullname` or `name`).
fn name_of(dv: &DataverseSimulator, set: &str, id: &str) -> Option<String> {
    dv.records(set)
        .into_iter()
        .find(|r| r.values().any(|v| v.as_str() == Some(id)))
        .and_then(|r| {
            text(r.get("fullname"))
                .or(text(r.get("name")))
                .map(str::to_owned)
        })
}

fn row(
    step: String,
    d: &Decision,
    emails: &[Map<String, Value>],
    dv: &DataverseSimulator,
    deliveries: &[Delivered],
) -> DemoRow {
    let message = d
        .subject
        .as_deref()
        .filter(|s| !s.is_empty())
        .or(d.internet_message_id.as_deref())
        .map(str::to_owned)
        .or_else(|| d.item_id.as_ref().map(|i| format!("item {}", short(i))))
        .unwrap_or_else(|| "(no subject)".into());
    let (landed, crm) = if d.is_track() {
        outcome(d, emails, dv, deliveries)
    } else {
        (Landed::Nothing, "—".to_owned())
    };
    DemoRow {
        step,
        mailbox: d.mailbox.as_deref().unwrap_or_default().to_owned(),
        message,
        verdict: format!("{:?}", d.verdict).to_lowercase(),
        reason: d.reason.as_str().to_owned(),
        crm,
        landed,
    }
}

/// What delivery did with a track decision: found by its CRM id and kind of write when the
/// traffic showed enough to know them, else by the mailbox and item delivery fetched.
fn outcome(
    d: &Decision,
    emails: &[Map<String, Value>],
    dv: &DataverseSimulator,
    deliveries: &[Delivered],
) -> (Landed, String) {
    let action = if d.update_regarding {
        Action::UpdateRegarding
    } else {
        Action::Create
    };
    let mine = |x: &&Delivered| match (d.crm_id, &x.outcome) {
        (
            Some(id),
            DeliveryOutcome::Written {
                email_id,
                action: a,
            },
        ) => *email_id == id && *a == action,
        (Some(_), _) => false,
        (None, _) => x.mailbox.as_deref() == d.mailbox.as_deref() && x.item_id == d.item_id,
    };
    let fetched = if d.crm_id.is_none() {
        "fetched from Exchange: "
    } else {
        ""
    };
    match deliveries.iter().rev().find(mine).map(|x| &x.outcome) {
        Some(DeliveryOutcome::Written { email_id, action }) => {
            let id = email_id.to_string();
            let regarding = regarding_of(emails, dv, &id);
            match (action, regarding) {
                (Action::Create, Some(r)) => (
                    Landed::Email(*email_id),
                    format!("{fetched}email {}, regarding {r}", &id[..8]),
                ),
                (Action::Create, None) => (
                    Landed::Email(*email_id),
                    format!("{fetched}email {}", &id[..8]),
                ),
                (Action::UpdateRegarding, r) => (
                    Landed::Regarding(*email_id),
                    format!(
                        "{fetched}email {}: regarding set to {}",
                        &id[..8],
                        r.as_deref().unwrap_or("its record")
                    ),
                ),
            }
        }
        Some(DeliveryOutcome::NotTracked { reason }) => (
            Landed::NotTracked,
            format!("{fetched}not tracked ({reason})"),
        ),
        Some(DeliveryOutcome::Dead { error }) => {
            (Landed::Dead, format!("dead letter: {}", clip(error, 60)))
        }
        None => (
            Landed::Pending,
            "not yet (see trackgate outbox list / dead)".into(),
        ),
    }
}

/// `account Fabrikam`: what the CRM email with this id is regarding, as the simulator holds it.
fn regarding_of(
    emails: &[Map<String, Value>],
    dv: &DataverseSimulator,
    id: &str,
) -> Option<String> {
    let email = emails
        .iter()
        .find(|e| text(e.get("activityid")) == Some(id))?;
    email.iter().find_map(|(k, v)| {
        let nav = k
            .strip_prefix("_regardingobjectid_")?
            .strip_suffix("_value")?;
        let set = v.get("set")?.as_str()?;
        let rid = v.get("id")?.as_str()?;
        let entity = nav.split('_').next().unwrap_or(nav).to_owned();
        Some(match name_of(dv, set, rid) {
            Some(name) => format!("{entity} {name}"),
            None => entity,
        })
    })
}

fn short(text: &str) -> String {
    let cut: String = text.chars().take(12).collect();
    if cut.len() < text.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// The report as a readable table, and what the CRM holds afterwards.
pub fn table(report: &Report) -> String {
    let rows = &report.rows;
    let headers = ["step", "mailbox", "message", "decision", "CRM record"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.step.clone(),
                r.mailbox.split('@').next().unwrap_or("").to_owned(),
                clip(&r.message, 34),
                format!("{} ({})", r.verdict, r.reason),
                r.crm.clone(),
            ]
        })
        .collect();
    let mut widths = headers.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: [&str; 5]| {
        let mut out = String::new();
        for (i, c) in cols.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            out.push_str(c);
            if i + 1 < cols.len() {
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers);
    out.push_str(&line(
        widths.map(|w| "─".repeat(w)).each_ref().map(String::as_str),
    ));
    for row in &cells {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out.push_str(&summary(report));
    out
}

/// The closing lines: decisions, then outcomes as delivery reported them, cross-checked against
/// the rows the Dataverse simulator holds.
fn summary(report: &Report) -> String {
    let rows = &report.rows;
    let count = |wanted: fn(&Landed) -> bool| rows.iter().filter(|r| wanted(&r.landed)).count();
    let tracked = rows.iter().filter(|r| r.verdict == "track").count();
    // Two decisions may write the same email (exactly once at the CRM): count emails, not rows.
    let created: std::collections::BTreeSet<uuid::Uuid> = rows
        .iter()
        .filter_map(|r| match r.landed {
            Landed::Email(id) => Some(id),
            _ => None,
        })
        .collect();
    let mut out = format!(
        "\n{} decisions: {tracked} tracked, {} ignored.\n",
        rows.len(),
        rows.len() - tracked
    );
    out.push_str(&format!(
        "In the CRM: {} new emails, {} regarding set on an email already there; {} not tracked once fetched from Exchange, {} dead letters, {} not settled.\n",
        created.len(),
        count(|l| matches!(l, Landed::Regarding(_))),
        count(|l| *l == Landed::NotTracked),
        count(|l| *l == Landed::Dead),
        count(|l| *l == Landed::Pending),
    ));
    if created.len() != report.new_crm_emails {
        out.push_str(&format!(
            "The Dataverse simulator holds {} new emails, not {}: see trackgate outbox dead.\n",
            report.new_crm_emails,
            created.len()
        ));
    }
    if report.synchronised.is_empty() {
        out.push_str(
            "Nothing was synchronised from the CRM into Outlook: see trackgate sync status.\n",
        );
    } else {
        out.push_str("Synchronised from the CRM into Alex's Outlook (his Outlook filters):\n");
        for line in &report.synchronised {
            out.push_str(&format!("  {line}\n"));
        }
    }
    if report.crm_refused > 0 {
        out.push_str(&format!(
            "The Dataverse simulator refused {} writes as Dataverse would: {}\n",
            report.crm_refused,
            report.crm_refusals.join("; ")
        ));
    }
    out
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}
