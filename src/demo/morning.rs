//! The working morning the demo plays through the gateway against the simulated Exchange's
//! mailbox store: recorded client requests (Outlook's EWS, a phone's Graph) with the ids the
//! recordings name replaced by the store's ids for the same messages, mail that arrives while
//! no client is connected, and the phone's delta round that picks it up.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{DemoError, Report, Running, row, start_error};
use crate::app::Gateway;
use crate::rules::Decision;
use crate::simulate::fixtures::{Fixture, FixtureSet};
use crate::simulate::mailbox::{Delivery, Store, rest_id};

/// What one step of the morning does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A recorded client request (an embedded fixture), with recorded ids mapped to the store.
    Recorded(&'static str),
    /// Outlook sends a MIME message to a prospect no CRM record knows.
    NewProspect,
    /// Pat's reply to a CRM email arrives while no client is connected.
    PatReplies,
    /// The phone follows the delta link its first delta round was given.
    FollowDelta,
}

use Step::{FollowDelta, NewProspect, PatReplies, Recorded};

/// The working morning: what the user does, and what does it.
pub const MORNING: [(&str, Step); 16] = [
    (
        "Outlook starts and reads its folders",
        Recorded("ews-getfolder-inbox"),
    ),
    (
        "Outlook's first sync of the Inbox",
        Recorded("ews-syncfolderitems-initial"),
    ),
    ("Outlook lists the Inbox", Recorded("ews-finditem-inbox")),
    (
        "Alex reads Pat's quote request",
        Recorded("ews-getitem-message"),
    ),
    (
        "The phone lists the Inbox (Graph)",
        Recorded("graph-list-messages"),
    ),
    (
        "The phone's first sync (Graph delta)",
        Recorded("graph-delta-inbox"),
    ),
    (
        "Pat replies to a CRM email; no client is connected",
        PatReplies,
    ),
    ("The phone syncs: a reply to a CRM email", FollowDelta),
    (
        "Alex replies from Outlook",
        Recorded("ews-createitem-reply"),
    ),
    (
        "Alex files mail in the tracked folder",
        Recorded("graph-move-message"),
    ),
    (
        "Alex sets the tracking category",
        Recorded("ews-updateitem-categories"),
    ),
    (
        "Alex writes to Pat in German",
        Recorded("ews-createitem-mime-send"),
    ),
    ("Alex writes to a new prospect", NewProspect),
    (
        "The sales team's shared mailbox",
        Recorded("ews-finditem-delegate"),
    ),
    ("Alex sends from the phone", Recorded("graph-sendmail")),
    (
        "The phone's batch of changes",
        Recorded("graph-batch-mixed"),
    ),
];

/// Ids the recordings name, and the message of the store each stands for (mailbox, subject).
const RECORDED_IDS: [(&str, &str, &str); 2] = [
    (
        "AAMkADEzMessageOneAAA=",
        "alex.seller@contoso.example",
        "Quote for 40 seats",
    ),
    (
        "AAMkADEzKimOneAAA=",
        "kim.manager@contoso.example",
        "Shared inbox question",
    ),
];

/// The store's current id of a message (ids change when messages move), outside Sent Items.
fn current_id(store: &Store, mailbox: &str, subject: &str) -> Option<String> {
    let inner = store.lock();
    let m = inner.mailbox(inner.mailbox_index(mailbox).ok()?);
    let sent = m.distinguished("sentitems").map(|f| f.key);
    m.items
        .values()
        .filter(|i| i.subject == subject && Some(i.folder) != sent)
        .max_by_key(|i| i.key)
        .map(|i| i.id.clone())
}

/// Replaces recorded ids in a request with the store's; Graph takes them URL-safe.
fn with_store_ids(store: &Store, text: &str, graph: bool) -> String {
    let mut out = text.to_owned();
    for (recorded, mailbox, subject) in RECORDED_IDS {
        if out.contains(recorded)
            && let Some(id) = current_id(store, mailbox, subject)
        {
            let id = if graph { rest_id(&id) } else { id };
            out = out.replace(recorded, &id);
        }
    }
    out
}

/// Outlook sending a MIME message from Alex to a prospect the CRM does not know, with a copy in
/// Sent Items (as `SendAndSaveCopy` does).
fn new_prospect_request() -> (Vec<(String, String)>, String) {
    use base64::Engine as _;
    let mime = "From: Alex Seller <alex.seller@contoso.example>\r\nTo: Nia Prospect <nia@northwind-traders.example>\r\nSubject: Introduction: Contoso seats for Northwind\r\nMessage-ID: <demo.prospect.1@mail.contoso.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello Nia, as promised on the phone...\r\n";
    let body = format!(
        r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Body><m:CreateItem MessageDisposition="SendAndSaveCopy"><m:SavedItemFolderId><t:DistinguishedFolderId Id="sentitems"/></m:SavedItemFolderId><m:Items><t:Message><t:MimeContent CharacterSet="UTF-8">{}</t:MimeContent></t:Message></m:Items></m:CreateItem></s:Body></s:Envelope>"#,
        base64::engine::general_purpose::STANDARD.encode(mime)
    );
    let headers = vec![
        ("content-type".into(), "text/xml; charset=utf-8".into()),
        (
            "x-anchormailbox".into(),
            "alex.seller@contoso.example".into(),
        ),
        (
            "soapaction".into(),
            "\"http://schemas.microsoft.com/exchange/services/2006/messages/CreateItem\"".into(),
        ),
    ];
    (headers, body)
}

/// Pat's reply to the CRM email "Pricing", delivered straight into Alex's Inbox.
fn pat_replies(store: &Store) -> Result<(), String> {
    let reply = Delivery {
        from: "Pat Buyer <pat.buyer@fabrikam.example>".into(),
        to: vec!["Alex Seller <alex.seller@contoso.example>".into()],
        cc: Vec::new(),
        subject: "Contract signed".into(),
        body: "We signed; the countersigned copy follows.".into(),
        message_id: Some("<signed.1@mail.fabrikam.example>".into()),
        in_reply_to: Some("<orig.1@mail.contoso.example>".into()),
        folder: None,
    };
    store
        .lock()
        .deliver(&reply.into_item())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A client as Outlook or a phone is: TLS, trusting the development CA, keep-alive.
fn client(ca: &std::path::Path) -> Result<reqwest::Client, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())
}

/// One request as a client sends it: method, path (or absolute URL), headers, body.
struct Request<'a> {
    method: &'a str,
    target: String,
    headers: &'a [(String, String)],
    body: bytes::Bytes,
}

/// Sends one request as a client would and returns the answer's body.
async fn send(
    client: &reqwest::Client,
    base: &str,
    request: Request<'_>,
) -> Result<bytes::Bytes, String> {
    let method =
        reqwest::Method::from_bytes(request.method.as_bytes()).map_err(|e| e.to_string())?;
    let url = if request.target.starts_with("https://") {
        request.target
    } else {
        format!("{base}{}", request.target)
    };
    let mut builder = client.request(method, url);
    for (name, value) in request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let response = builder
        .body(request.body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    // The whole answer is read, as a client does (a cut exchange is not inspected).
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("HTTP {status}"))
    }
}

fn handed_off(gateway: &Gateway) -> u64 {
    gateway.proxy().metrics.captures.handed_off.get()
}

/// Waits until the step's exchange reached inspection (the copy is handed off when both its
/// sides have ended, which can be just after the client has read the answer) and inspection
/// has decided everything handed to it, so each decision is reported under its own step.
async fn settled(gateway: &Gateway, handed_before: u64, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        let handed = handed_off(gateway);
        let done = gateway.inspect_metrics().finished.load(Ordering::Acquire);
        if handed > handed_before && done >= handed {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// What the morning carries from one step to the next.
struct Morning<'r> {
    running: &'r Running,
    client: reqwest::Client,
    base: String,
    fixtures: FixtureSet,
    /// The delta link of the phone's last delta round.
    delta_link: Option<String>,
}

impl Morning<'_> {
    /// Plays one step through the gateway; `false` when it sent nothing the gateway sees.
    async fn play(&mut self, name: &str, step: Step) -> Result<bool, DemoError> {
        let failed = |message: String| DemoError::Step {
            fixture: name.into(),
            message,
        };
        let store = &self.running.store;
        match step {
            Step::PatReplies => {
                pat_replies(store).map_err(failed)?;
                return Ok(false);
            }
            Step::NewProspect => {
                let (headers, body) = new_prospect_request();
                let request = Request {
                    method: "POST",
                    target: "/EWS/Exchange.asmx".into(),
                    headers: &headers,
                    body: body.into(),
                };
                send(&self.client, &self.base, request)
                    .await
                    .map_err(failed)?;
            }
            Step::FollowDelta => {
                let link = self
                    .delta_link
                    .clone()
                    .ok_or_else(|| failed("no delta link from the first round".into()))?;
                let headers = self.recorded("graph-delta-inbox")?.headers.clone();
                let request = Request {
                    method: "GET",
                    target: link,
                    headers: &headers,
                    body: bytes::Bytes::new(),
                };
                send(&self.client, &self.base, request)
                    .await
                    .map_err(failed)?;
            }
            Step::Recorded(fixture) => {
                let recorded = self.recorded(fixture)?.clone();
                let graph = recorded.path.to_ascii_lowercase().starts_with("/v1.0");
                let body = with_store_ids(store, &String::from_utf8_lossy(&recorded.body), graph);
                let request = Request {
                    method: &recorded.method,
                    target: with_store_ids(store, &recorded.path, true),
                    headers: &recorded.headers,
                    body: body.into(),
                };
                let answer = send(&self.client, &self.base, request)
                    .await
                    .map_err(failed)?;
                if let Some(link) = serde_json::from_slice::<Value>(&answer)
                    .ok()
                    .and_then(|v| v.get("@odata.deltaLink")?.as_str().map(str::to_owned))
                {
                    self.delta_link = Some(link);
                }
            }
        }
        Ok(true)
    }

    fn recorded(
        &self,
        fixture: &str,
    ) -> Result<&crate::simulate::fixtures::RecordedRequest, DemoError> {
        self.fixtures
            .iter()
            .find(|f| f.name == fixture)
            .and_then(|f: &Fixture| f.request.as_ref())
            .ok_or_else(|| DemoError::Step {
                fixture: fixture.into(),
                message: "not among the embedded fixtures".into(),
            })
    }
}

pub(super) async fn morning(
    running: &Running,
    progress: &mut impl FnMut(&str),
) -> Result<Report, DemoError> {
    let gateway = &running.gateway;
    let emails_before = running.dataverse.records("emails").len();
    let mut morning = Morning {
        running,
        client: client(&running.data_dir.join("data/certs/dev-ca.pem"))
            .map_err(start_error("client"))?,
        base: gateway.proxy_url().replace("127.0.0.1", "localhost"),
        fixtures: FixtureSet::embedded()?,
        delta_link: None,
    };
    let mut made: Vec<(String, Decision)> = Vec::new();
    for (n, (step, what)) in MORNING.iter().enumerate() {
        progress(&format!("[{:>2}/{}] {step}", n + 1, MORNING.len()));
        let before = gateway.recent_decisions().len();
        let handed_before = handed_off(gateway);
        if !morning.play(step, *what).await? {
            continue;
        }
        if !settled(
            gateway,
            handed_before,
            Instant::now() + Duration::from_secs(10),
        )
        .await
        {
            return Err(DemoError::Step {
                fixture: (*step).into(),
                message: "the exchange was not inspected within 10 s".into(),
            });
        }
        let decisions = gateway.recent_decisions();
        for d in decisions.into_iter().skip(before) {
            made.push(((*step).into(), d));
        }
    }
    progress("waiting for the CRM to confirm what was tracked");
    wait_for_the_crm(gateway).await;
    let emails = running.dataverse.records("emails");
    let deliveries = gateway.recent_deliveries();
    let rows = made
        .into_iter()
        .map(|(step, d)| row(step, &d, &emails, &running.dataverse, &deliveries))
        .collect();
    progress("waiting for synchronisation to bring Alex's appointment into his calendar");
    let synchronised = synchronised(running, Instant::now() + Duration::from_secs(20)).await;
    let stats = running.dataverse.stats();
    Ok(Report {
        rows,
        new_crm_emails: emails.len().saturating_sub(emails_before),
        crm_refused: stats.refused,
        crm_refusals: stats.refusals,
        synchronised,
    })
}

/// The items synchronisation linked in Alex's calendar, contacts and tasks, once his
/// calendar holds one (or the deadline passes).
async fn synchronised(running: &Running, deadline: Instant) -> Vec<String> {
    const ALEX: &str = "alex.seller@contoso.example";
    let linked = |folder: &str| -> Vec<crate::simulate::mailbox::Item> {
        let inner = running.store.lock();
        let Ok(m) = inner.mailbox_index(ALEX) else {
            return Vec::new();
        };
        let mailbox = inner.mailbox(m);
        let Some(key) = mailbox.distinguished(folder).map(|f| f.key) else {
            return Vec::new();
        };
        mailbox
            .items_in(key)
            .into_iter()
            .filter(|i| {
                i.extended
                    .iter()
                    .any(|p| p.key.name.as_deref() == Some(crate::exchange::items::LINK_PROPERTY))
            })
            .cloned()
            .collect()
    };
    while linked("calendar").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let time = |t: Option<i64>| {
        t.map(crate::common::time::format_seconds)
            .unwrap_or_default()
    };
    let mut lines = Vec::new();
    for item in linked("calendar") {
        lines.push(format!(
            "calendar: {} — {} to {} (an appointment from the CRM)",
            item.subject,
            time(item.start),
            time(item.end)
        ));
    }
    for item in linked("contacts") {
        lines.push(format!(
            "contacts: {} — {}",
            item.subject,
            item.company.as_deref().unwrap_or("no company")
        ));
    }
    for item in linked("tasks") {
        lines.push(format!("tasks: {} — due {}", item.subject, time(item.due)));
    }
    lines
}

/// Decisions are queued for the outbox's writer; committed, they count as pending until the
/// CRM confirms them (or 30 s pass).
async fn wait_for_the_crm(gateway: &Gateway) {
    let outbox = gateway.outbox().clone();
    let _ = tokio::task::spawn_blocking(move || outbox.flush()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let done = gateway
            .outbox()
            .stats()
            .is_ok_and(|s| s.pending == 0 && s.in_flight == 0);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
