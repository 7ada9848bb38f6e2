//! Real client libraries through the gateway against the stateful Exchange simulator: each
//! scenario must succeed in the client, receive the simulator's bytes unchanged, and leave the
//! decisions a user expects in the gateway with nothing dead-lettered. `scripts/test.sh`
//! installs the pinned clients into `target/test-tools`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use trackgate::rules::Reason;
use trackgate::simulate::mailbox::Store;
use trackgate::simulate::{AuthMode, ExchangeSimulator, FixtureSet, SimulatorOptions};

use crate::support::{self, TestGateway};

/// Where `scripts/test.sh` installs the client libraries.
fn tools() -> PathBuf {
    std::env::var_os("TRACKGATE_TEST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-tools"))
}

fn python() -> PathBuf {
    let python = tools().join("py/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh, which installs the pinned client libraries",
        python.display()
    );
    python
}

/// Node.js with ews-javascript-api installed: (program, NODE_PATH).
fn node() -> (PathBuf, PathBuf) {
    let modules = tools().join("node/node_modules");
    assert!(
        modules.join("ews-javascript-api").exists(),
        "{} is missing ews-javascript-api: run scripts/test.sh, which installs the pinned clients",
        modules.display()
    );
    (PathBuf::from("node"), modules)
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// The simulator on its embedded store, and a gateway in front whose enrichment client is the
/// store's service account.
async fn start(auth: AuthMode) -> (ExchangeSimulator, TestGateway, Arc<Store>) {
    let store = Arc::new(Store::embedded().unwrap());
    let mut options =
        SimulatorOptions::new("sim", FixtureSet::embedded().unwrap()).with_store(store.clone());
    options.auth = auth;
    let sim = support::simulator_with(options).await;
    let extra = format!(
        "[listener]\nplaintext = true\n[exchange]\news_url = \"{url}/EWS/Exchange.asmx\"\ngraph_url = \"{url}\"\nauth = \"basic\"\nusername = 'CONTOSO\\svc-trackgate'\npassword = \"Example-Pa55-svc\"\n",
        url = sim.url()
    );
    let gw = support::gateway(&sim.url(), &extra).await;
    (sim, gw, store)
}

/// Runs a client script to completion and returns what it printed.
async fn run(program: PathBuf, args: Vec<String>) -> String {
    run_with(program, args, Vec::new()).await
}

async fn run_with(
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(&'static str, PathBuf)>,
) -> String {
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&program)
            .args(&args)
            .envs(env)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Waits until the outbox has settled everything and returns the item ids delivered.
async fn drained(gw: &TestGateway) -> Vec<Option<String>> {
    let outbox = gw.gateway.outbox().clone();
    support::wait_for(
        Duration::from_secs(20),
        "the outbox to settle",
        async || {
            let stats = outbox.stats().ok()?;
            (stats.pending == 0 && stats.in_flight == 0).then_some(())
        },
    )
    .await;
    gw.gateway
        .recent_deliveries()
        .into_iter()
        .map(|d| d.item_id.map(|id| id.to_string()))
        .collect()
}

/// Nothing was dead-lettered.
fn nothing_dead(gw: &TestGateway) {
    let dead = gw.gateway.outbox().dead_letters(100).unwrap();
    assert!(dead.is_empty(), "dead letters: {dead:#?}");
}

/// The id of the copy a send saved in Alex's Sent Items.
fn sent_copy(store: &Store, subject: &str) -> String {
    let inner = store.lock();
    let alex = inner.mailbox(inner.mailbox_index("alex.seller@contoso.example").unwrap());
    let sent = alex.distinguished("sentitems").unwrap().key;
    alex.items_in(sent)
        .into_iter()
        .find(|i| i.subject == subject)
        .unwrap_or_else(|| panic!("no saved copy of {subject:?}"))
        .id
        .clone()
}

/// Every step of a scenario printed its `ok` line.
fn assert_steps(out: &str, steps: &[&str]) {
    for step in steps {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("ok {step}"))),
            "step {step} missing:\n{out}"
        );
    }
}

/// Waits until the outbox has settled everything, then checks that every sent message was
/// delivered (its saved copy's id: Exchange returns none for a message sent with CreateItem,
/// and a draft sent with SendItem gets a new one in Sent Items) and nothing was dead-lettered.
async fn settled(gw: &TestGateway, store: &Store, sends: [&str; 2]) {
    let delivered = drained(gw).await;
    for subject in sends {
        let copy = sent_copy(store, subject);
        assert!(
            delivered.contains(&Some(copy)),
            "the saved copy of {subject:?} was not delivered: {delivered:?}"
        );
    }
    nothing_dead(gw);
}

/// The operations whose observations were tracked.
fn tracked_operations(gw: &TestGateway) -> Vec<String> {
    gw.gateway
        .recent_decisions()
        .iter()
        .filter(|d| d.is_track())
        .map(|d| d.operation.to_string())
        .collect()
}

/// An EWS client library: exchangelib (Python) or ews-javascript-api (Node.js).
#[derive(Clone, Copy)]
enum EwsClient {
    Exchangelib,
    EwsJavascriptApi,
}

impl EwsClient {
    async fn run(self, url: String, kind: &str, user: &str, password: &str) -> String {
        let args = |script_name: &str| {
            vec![
                script(script_name).display().to_string(),
                url.clone(),
                kind.into(),
                user.into(),
                password.into(),
                "alex.seller@contoso.example".into(),
            ]
        };
        match self {
            EwsClient::Exchangelib => run(python(), args("exchangelib_scenario.py")).await,
            EwsClient::EwsJavascriptApi => {
                let (node, modules) = node();
                run_with(
                    node,
                    args("ewsjs_scenario.js"),
                    vec![("NODE_PATH", modules)],
                )
                .await
            }
        }
    }

    /// What the scenario prints, step by step.
    fn steps(self) -> Vec<&'static str> {
        const COMMON: [&str; 8] = [
            "list",
            "read",
            "sync",
            "send",
            "draft-send",
            "move",
            "categorize",
            "copy-delete",
        ];
        match self {
            EwsClient::Exchangelib => {
                [&["version"][..], &COMMON, &["unknown-id", "bytes"]].concat()
            }
            EwsClient::EwsJavascriptApi => [&COMMON[..], &["bytes"]].concat(),
        }
    }

    /// Subjects of the two sends: one sent at once, one saved as a draft and sent later.
    fn sends(self) -> [&'static str; 2] {
        match self {
            EwsClient::Exchangelib => ["Proposal for Fabrikam", "Follow-up for Pat"],
            EwsClient::EwsJavascriptApi => ["Licences for Fabrikam", "Agenda for Pat"],
        }
    }
}

async fn ews_session(client: EwsClient, auth: AuthMode, kind: &str, user: &str, password: &str) {
    let (sim, gw, store) = start(auth).await;
    let out = client
        .run(gw.url("/EWS/Exchange.asmx"), kind, user, password)
        .await;
    assert_steps(&out, &client.steps());
    // Mail from a CRM contact seen in the Inbox (in a list or when read, as the client's shape
    // shows its sender), mail sent to one, the draft sent later and the move into the tracked
    // folder each leave a track decision; the tracking category lands on a message already
    // tracked, so it is decided and remembered, not tracked twice.
    let wanted = ["CreateItem", "SendItem", "MoveItem"];
    let tracked = support::wait_for(Duration::from_secs(10), "the track decisions", async || {
        let decisions = gw.gateway.recent_decisions();
        let incoming = decisions.iter().any(|d| {
            d.is_track()
                && d.reason == Reason::SenderContact
                && d.subject.as_deref() == Some("Quote for 40 seats")
        });
        let tracked = tracked_operations(&gw);
        (incoming && wanted.iter().all(|w| tracked.iter().any(|t| t == w))).then_some(tracked)
    })
    .await;
    assert!(tracked.len() >= wanted.len());
    let categorized = gw
        .gateway
        .recent_decisions()
        .into_iter()
        .find(|d| &*d.operation == "UpdateItem")
        .expect("the category change was decided");
    assert_eq!(
        categorized.reason,
        Reason::AlreadyTracked,
        "{categorized:?}"
    );
    settled(&gw, &store, client.sends()).await;
    gw.gateway.shutdown().await;
    sim.stop().await;
}

/// How Alex signs in: NTLMv2 with the Windows logon, or Basic with the address (the store's
/// account; the simulator's own Basic logon is unused).
enum Logon {
    Ntlm,
    Basic,
}

async fn ews_session_with(client: EwsClient, logon: Logon) {
    let (auth, kind, user) = match logon {
        Logon::Ntlm => (AuthMode::Ntlm, "ntlm", "CONTOSO\\alex.seller"),
        Logon::Basic => (
            AuthMode::Basic {
                user: "unused".into(),
                password: "unused".into(),
            },
            "basic",
            "alex.seller@contoso.example",
        ),
    };
    ews_session(client, auth, kind, user, "Example-Pa55-alex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchangelib_works_through_the_gateway_with_ntlmv2() {
    ews_session_with(EwsClient::Exchangelib, Logon::Ntlm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchangelib_works_through_the_gateway_with_basic() {
    ews_session_with(EwsClient::Exchangelib, Logon::Basic).await;
}

/// An unsigned JWT naming Alex, as the simulator reads bearer tokens (claims, no signature).
fn alex_token() -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(r#"{"upn":"alex.seller@contoso.example","aud":"https://graph.microsoft.com"}"#)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_sdk_works_through_the_gateway_with_a_bearer_token() {
    let (sim, gw, store) = start(AuthMode::Bearer).await;
    let out = run(
        python(),
        vec![
            script("msgraph_scenario.py").display().to_string(),
            gw.url(""),
            sim.url(),
            alex_token(),
        ],
    )
    .await;
    assert_steps(
        &out,
        &[
            "me",
            "list",
            "delta",
            "delta-new",
            "send-mail",
            "move",
            "batch",
            "batch-failed-dependency",
            "bytes",
        ],
    );
    // The delivered order (from a CRM contact) is tracked when delta reports it, and again by
    // its move into the tracked folder; mail sent with sendMail is tracked from Sent Items.
    let tracked = support::wait_for(
        Duration::from_secs(10),
        "the Graph track decisions",
        async || {
            let decisions = gw.gateway.recent_decisions();
            let order = decisions.iter().any(|d| {
                d.is_track()
                    && d.internet_message_id.as_deref() == Some("order.7@mail.fabrikam.example")
            });
            let sent = decisions
                .iter()
                .any(|d| d.is_track() && d.subject.as_deref() == Some("Order confirmed"));
            (order && sent).then_some(decisions.len())
        },
    )
    .await;
    assert!(tracked > 0);
    let delivered = drained(&gw).await;
    let order = {
        let inner = store.lock();
        let alex = inner.mailbox(inner.mailbox_index("alex.seller@contoso.example").unwrap());
        let tracked_folder = alex.folder_by_id("AAMkADEzTrackedFolderAAA=").unwrap().key;
        alex.items_in(tracked_folder)[0].id.clone()
    };
    let order_rest = trackgate::simulate::mailbox::rest_id(&order);
    assert!(
        delivered.contains(&Some(order_rest)) || delivered.contains(&Some(order)),
        "the moved order was not delivered: {delivered:?}"
    );
    nothing_dead(&gw);
    gw.gateway.shutdown().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ews_javascript_api_works_through_the_gateway_with_ntlmv2() {
    ews_session_with(EwsClient::EwsJavascriptApi, Logon::Ntlm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ews_javascript_api_works_through_the_gateway_with_basic() {
    ews_session_with(EwsClient::EwsJavascriptApi, Logon::Basic).await;
}

/// `serve` with no upstream and no `[exchange]`: the built-in simulator is both the upstream
/// and the enrichment client, so what needs fetching is fetched, not dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_enriches_from_its_own_simulator() {
    trackgate::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\nplaintext = true\n[admin]\naddress = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"{}\"\n",
        dir.path().join("data").display()
    );
    let config = trackgate::config::RawConfig::from_toml(&text, "test", Vec::new())
        .and_then(|raw| raw.validate(dir.path()))
        .unwrap();
    let gateway = trackgate::app::start(config).await.unwrap();
    assert!(
        gateway.simulator_url().is_some(),
        "the embedded simulator runs"
    );
    let gw = TestGateway { gateway, dir };
    let out = EwsClient::EwsJavascriptApi
        .run(
            gw.url("/EWS/Exchange.asmx"),
            "basic",
            "alex.seller@contoso.example",
            "Example-Pa55-alex",
        )
        .await;
    assert_steps(&out, &EwsClient::EwsJavascriptApi.steps());
    // The sent copies were seen without Message-IDs in Sent Items listings and fetched from the
    // embedded simulator before delivery.
    let delivered = drained(&gw).await;
    let fetched: Vec<Option<String>> = gw
        .gateway
        .recent_decisions()
        .into_iter()
        .filter(|d| d.is_track() && d.needs_enrichment && &*d.operation == "FindItem")
        .map(|d| d.item_id.map(|id| id.to_string()))
        .collect();
    assert!(
        !fetched.is_empty(),
        "no decision needed the simulator's help"
    );
    for item in &fetched {
        assert!(
            delivered.contains(item),
            "{item:?} was not delivered: {delivered:?}"
        );
    }
    nothing_dead(&gw);
    gw.gateway.shutdown().await;
}
