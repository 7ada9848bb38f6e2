//! The rules in the running gateway: traffic becomes decisions, `POST /explain` and
//! `GET /decisions` on the admin listener, the directory file reloading on change and on
//! reload, and `trackgate replay` over the recorded fixtures.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use trackgate::rules::{Reason, Verdict};

use crate::support;

const EXAMPLE: &str = trackgate::directory::file::EMBEDDED_EXAMPLE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_through_the_gateway_becomes_one_decision_per_message() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "").await;
    let client = support::client(&gw.ca(), true);
    // Clients look up their folders first; that is how the gateway learns the Inbox's id.
    let r = support::post_ews_as_alex(
        &client,
        &gw,
        support::fixture("ews-getfolder-inbox")
            .request
            .unwrap()
            .body,
    )
    .await;
    r.bytes().await.unwrap();
    support::wait_for(
        Duration::from_secs(10),
        "the folder observation",
        async || (!gw.gateway.recent_observations().is_empty()).then_some(()),
    )
    .await;
    let request = support::fixture("ews-getitem-message").request.unwrap();
    let r = support::post_ews_as_alex(&client, &gw, request.body.clone()).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // The same message again through Graph: already tracked.
    assert_eq!(support::list_alex_inbox_over_graph(&client, &gw).await, 200);
    let decisions = support::wait_for(Duration::from_secs(10), "two decisions", async || {
        let d = gw.gateway.recent_decisions();
        (d.len() >= 2).then_some(d)
    })
    .await;
    assert_eq!(decisions[0].verdict, Verdict::Track);
    assert_eq!(decisions[0].reason, Reason::SenderContact);
    assert_eq!(decisions[1].reason, Reason::AlreadyTracked);
    assert_eq!(decisions[0].crm_id, decisions[1].crm_id);
    assert!(decisions[0].crm_id.is_some());
    assert!(
        decisions[0].explanation.is_empty(),
        "the live path writes no prose"
    );
    let metrics = support::get_text(&gw.admin("/metrics")).await;
    for line in [
        r#"trackgate_decisions_total{verdict="track",reason="sender_contact"} 1"#,
        r#"trackgate_decisions_total{verdict="ignore",reason="already_tracked"} 1"#,
        r#"trackgate_directory_rows{table="mailboxes"} 4"#,
        r#"trackgate_directory_loads_total{result="ok"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing in\n{metrics}");
    }
    assert!(
        !metrics.contains("fabrikam"),
        "an address leaked into metrics"
    );
    gw.gateway.shutdown().await;
}

const OBSERVATION: &str = r#"{"kind":"message_seen","mailbox":"alex.seller@contoso.example","source":"ews","operation":"GetItem","item_id":"X1","folder":"inbox","internet_message_id":"explain.1@fabrikam.example","subject":"Hi","from":{"address":"pat.buyer@fabrikam.example"},"to":[{"address":"alex.seller@contoso.example"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_answers_with_the_reasoning_and_remembers_nothing() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "").await;
    let admin = support::plain_client();
    for _ in 0..2 {
        let r = admin
            .post(gw.admin("/explain"))
            .body(OBSERVATION)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        let d = &body["decisions"][0];
        assert_eq!(d["verdict"], "track", "{body:#}");
        assert_eq!(d["reason"], "sender_contact");
        assert_eq!(d["from"]["records"][0]["entity"], "contact");
        assert!(d["explanation"].as_array().unwrap().len() >= 2, "{body:#}");
    }
    // An array of observations, decided in order (a move after a sighting).
    let both = format!(
        r#"[{OBSERVATION}, {{"kind":"message_moved","mailbox":"alex.seller@contoso.example","source":"ews","operation":"MoveItem","item_ids":["X1"],"new_item_ids":["X2"],"destination_folder_id":"AAMkADEzTrackedFolderAAA="}}]"#
    );
    let r = admin
        .post(gw.admin("/explain"))
        .body(both)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["decisions"][1]["reason"], "folder_rule", "{body:#}");
    // Bad input gets a clear error.
    let r = admin
        .post(gw.admin("/explain"))
        .body("{\"kind\":\"nope\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not an observation"));
    let r = admin.get(gw.admin("/explain")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = admin
        .post(gw.admin("/explain"))
        .body(vec![b' '; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Nothing was remembered or counted.
    assert!(gw.gateway.recent_decisions().is_empty());
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_decisions_need_the_admin_token_when_one_is_set() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "[admin]\ntoken = \"s3cret-admin-token-0123\"\n").await;
    let admin = support::plain_client();
    for (path, post) in [("/explain", true), ("/decisions", false)] {
        let request = |token: Option<&str>| {
            let r = if post {
                admin.post(gw.admin(path)).body(OBSERVATION)
            } else {
                admin.get(gw.admin(path))
            };
            match token {
                Some(t) => r.bearer_auth(t),
                None => r,
            }
        };
        assert_eq!(request(None).send().await.unwrap().status(), 401, "{path}");
        assert_eq!(
            request(Some("wrong")).send().await.unwrap().status(),
            401,
            "{path}"
        );
        assert_eq!(
            request(Some("s3cret-admin-token-0123"))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{path}"
        );
    }
    // Health and metrics stay open.
    assert_eq!(
        admin
            .get(gw.admin("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    gw.gateway.shutdown().await;
}

async fn explain_reason(gw: &support::TestGateway) -> String {
    let r = support::plain_client()
        .post(gw.admin("/explain"))
        .body(OBSERVATION)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    body["decisions"][0]["reason"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_file_reloads_on_change_and_keeps_the_last_good_one() {
    let sim = support::simulator("sim").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("directory.toml");
    std::fs::write(&file, EXAMPLE).unwrap();
    let extra = format!(
        "[directory]\nfile = \"{}\"\npoll_interval = \"100ms\"\n",
        file.display()
    );
    let gw = support::gateway(&sim.url(), &extra).await;
    assert_eq!(explain_reason(&gw).await, "sender_contact");
    // Alex now tracks nothing: the next decision changes without a restart.
    let none = EXAMPLE.replace(
        "incomingemailfilteringmethod = 2   # from leads, contacts and accounts",
        "incomingemailfilteringmethod = 4",
    );
    assert_ne!(none, EXAMPLE);
    std::fs::write(&file, &none).unwrap();
    support::wait_for(Duration::from_secs(10), "the new options", async || {
        (explain_reason(&gw).await == "filter_none").then_some(())
    })
    .await;
    // A broken file is refused and counted; the last good snapshot stays.
    std::fs::write(&file, format!("{none}\n[[nonsense]]\n")).unwrap();
    support::wait_for(Duration::from_secs(10), "a failed reload", async || {
        (gw.gateway.directory_metrics().loads(false) >= 1).then_some(())
    })
    .await;
    assert_eq!(explain_reason(&gw).await, "filter_none");
    // A configuration reload (what SIGHUP does) reads the file at once.
    std::fs::write(&file, EXAMPLE).unwrap();
    gw.gateway
        .reload(support::config(gw.dir.path(), &sim.url(), &extra))
        .unwrap();
    assert_eq!(explain_reason(&gw).await, "sender_contact");
    gw.gateway.shutdown().await;
}

#[test]
fn replay_explains_every_decision_over_the_fixtures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (stdout, stderr) = support::run_trackgate([
        std::ffi::OsStr::new("replay"),
        root.join("fixtures/exchange").as_os_str(),
    ]);
    let lines: Vec<serde_json::Value> = String::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 20, "{lines:#?}");
    for d in &lines {
        assert!(d["reason"].is_string());
        assert!(d["exchange"].is_string());
        assert!(
            !d["explanation"].as_array().unwrap().is_empty(),
            "unexplained: {d:#}"
        );
    }
    let reasons: Vec<&str> = lines
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    for expected in [
        "folder_rule",
        "category",
        "sender_contact",
        "already_tracked",
        "recipient_contact",
    ] {
        assert!(
            reasons.contains(&expected),
            "{expected} missing from {reasons:?}"
        );
    }
    assert!(stderr.contains("tracked"), "{stderr}");

    // The directory option, and a clear error for a bad one.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        EXAMPLE.replace(
            "incomingemailfilteringmethod = 0",
            "incomingemailfilteringmethod = 7",
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trackgate"))
        .args(["replay", "--directory"])
        .arg(&bad)
        .arg(root.join("fixtures/exchange/ews-getitem-message"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("usersettingscollection[1].incomingemailfilteringmethod"),
        "{stderr}"
    );
    assert!(stderr.contains("fix:"), "{stderr}");

    // Observation files (as `trackgate inspect` prints them) replay too.
    let jsonl = dir.path().join("morning.jsonl");
    std::fs::write(&jsonl, format!("{OBSERVATION}\n{OBSERVATION}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trackgate"))
        .arg("replay")
        .arg(&jsonl)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let reasons: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(reasons, ["sender_contact", "already_tracked"]);
}

/// A folder learned first, then a message known only by that folder's id.
const INBOX_BY_ID: [&str; 2] = [
    r#"{"kind":"folder_seen","mailbox":"alex.seller@contoso.example","source":"ews","operation":"GetFolder","folder_id":"F-INBOX-SEQ","folder":"inbox","display_name":"Inbox"}"#,
    r#"{"kind":"message_seen","mailbox":"alex.seller@contoso.example","source":"ews","operation":"GetItem","item_id":"S1","folder_id":"F-INBOX-SEQ","internet_message_id":"sequence.1@fabrikam.example","subject":"Hi","from":{"address":"pat.buyer@fabrikam.example"},"to":[{"address":"alex.seller@contoso.example"}]}"#,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_of_a_sequence_decides_as_replay_does() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "").await;
    let admin = support::plain_client();
    let explain = async |body: String| -> serde_json::Value {
        let r = admin
            .post(gw.admin("/explain"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    };
    // Alone, the message's folder is unknown to the gateway.
    let alone = explain(INBOX_BY_ID[1].to_owned()).await;
    assert_eq!(
        alone["decisions"][0]["reason"], "folder_unknown",
        "{alone:#}"
    );
    // In a sequence, the folder seen first makes it the Inbox.
    let sequence = explain(format!("[{}]", INBOX_BY_ID.join(","))).await;
    let explained: Vec<(String, String)> = sequence["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["verdict"].to_string(), d["reason"].to_string()))
        .collect();
    // replay over the same observations, as a .jsonl file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sequence.jsonl");
    std::fs::write(&file, INBOX_BY_ID.join("\n")).unwrap();
    let (stdout, _) = support::run_trackgate([std::ffi::OsStr::new("replay"), file.as_os_str()]);
    let replayed: Vec<(String, String)> = String::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|d| (d["verdict"].to_string(), d["reason"].to_string()))
        .collect();
    assert_eq!(explained, replayed);
    assert_eq!(
        explained.last().map(|(_, r)| r.as_str()),
        Some("\"sender_contact\""),
        "{sequence:#}"
    );
    // The sequence taught the live gateway nothing.
    let again = explain(INBOX_BY_ID[1].to_owned()).await;
    assert_eq!(
        again["decisions"][0]["reason"], "folder_unknown",
        "{again:#}"
    );
    gw.gateway.shutdown().await;
}
