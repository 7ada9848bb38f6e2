use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use trackgate::inspect::{self, InspectLimits};
use trackgate::simulate::fixtures::Fixture;

use crate::support;

fn fixture_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/exchange");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("fixture.toml").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// Observations as JSON lines, then `{"failure": code}` lines — the format of expected.jsonl.
fn render(fixture: &Fixture) -> String {
    let found = inspect::inspect(&fixture.to_capture(&[]), InspectLimits::default())
        .unwrap_or_else(|e| panic!("{}: {e}", fixture.name));
    let mut out = String::new();
    for o in &found.observations {
        out.push_str(&serde_json::to_string(o).unwrap());
        out.push('\n');
    }
    for code in &found.failures {
        out.push_str(&serde_json::json!({ "failure": code }).to_string());
        out.push('\n');
    }
    out
}

#[test]
fn every_fixture_yields_its_expected_observations() {
    let dirs = fixture_dirs();
    assert!(dirs.len() >= 19, "fixtures went missing: {}", dirs.len());
    for dir in dirs {
        let fixture = Fixture::load(&dir).unwrap();
        let expected = std::fs::read_to_string(dir.join("expected.jsonl"))
            .unwrap_or_else(|_| panic!("{} has no expected.jsonl", fixture.name));
        assert_eq!(render(&fixture), expected, "fixture {}", fixture.name);
    }
}

#[test]
fn every_operation_kind_is_covered_by_a_fixture() {
    let mut all = String::new();
    for dir in fixture_dirs() {
        all.push_str(&std::fs::read_to_string(dir.join("expected.jsonl")).unwrap());
    }
    for needle in [
        r#""kind":"message_seen""#,
        r#""kind":"message_sent""#,
        r#""kind":"message_moved""#,
        r#""kind":"categories_changed""#,
        r#""kind":"folder_seen""#,
        r#""kind":"contact_seen""#,
        r#""kind":"appointment_seen""#,
        r#""kind":"task_seen""#,
        r#""operation":"GetEvents""#,
        r#""change":"updated""#,
        r#""internet_message_id":"mime.send.42@mail.contoso.example""#,
        r#""initial_sync":true"#,
        r#""routing_type":"EX""#,
        r#""source":"graph""#,
        r#""failure":"ErrorServerBusy""#,
        r#""failure":"ErrorItemNotFound""#,
    ] {
        assert!(all.contains(needle), "no fixture shows {needle}");
    }
}

/// An operation inspection reads nothing from costs only its request: its response is never
/// decompressed or parsed (here it is not even XML), while an operation it reads still has its
/// response checked. The operation is the request body's first element, in any prefix.
#[test]
fn responses_of_operations_nothing_is_read_from_are_not_parsed() {
    let request = |operation: &str| {
        format!(
            r#"<?xml version="1.0"?><S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/" xmlns:x="http://schemas.microsoft.com/exchange/services/2006/messages"><S:Body><x:{operation}><x:AttachmentIds/></x:{operation}></S:Body></S:Envelope>"#
        )
    };
    let exchange = |operation: &str, response: &'static [u8]| {
        let capture = inspect::capture_from_parts(
            "POST",
            "/EWS/Exchange.asmx",
            &[],
            bytes::Bytes::from(request(operation)),
            200,
            &[],
            bytes::Bytes::from_static(response),
        );
        inspect::inspect(&capture, InspectLimits::default())
    };
    let not_xml = b"\x00 a megabyte of base64 would be here, unparsed";
    for unread in [
        "GetAttachment",
        "ResolveNames",
        "GetUserAvailability",
        "GetUserPhoto",
    ] {
        let found = exchange(unread, not_xml).unwrap_or_else(|e| panic!("{unread}: {e}"));
        assert!(
            found.observations.is_empty() && found.failures.is_empty(),
            "{unread}"
        );
    }
    for read in ["GetItem", "FindItem", "CreateItem", "MoveItem", "GetFolder"] {
        assert!(
            exchange(read, not_xml).is_err(),
            "{read}'s response went unread"
        );
    }
}

/// Random damage to every fixture's bodies: inspection may fail, but never panics, and never
/// invents more observations than the body has elements.
fn mutated(input: &[u8], flips: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut out = input.to_vec();
    for (at, byte) in flips {
        if !out.is_empty() {
            let i = at % out.len();
            out[i] = *byte;
        }
    }
    out.truncate(cut.min(out.len()).max(out.len() / 2));
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
    #[test]
    fn damaged_fixtures_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
        which in any::<usize>(),
    ) {
        let dirs = fixture_dirs();
        let fixture = Fixture::load(&dirs[which % dirs.len()]).unwrap();
        let mut capture = fixture.to_capture(&[]);
        capture.response_body = mutated(&capture.response_body, &flips, cut).into();
        capture.request_body = mutated(&capture.request_body, &flips, cut).into();
        let elements = capture.response_body.iter().filter(|b| **b == b'<' || **b == b'{').count()
            + capture.request_body.iter().filter(|b| **b == b'<' || **b == b'{').count();
        if let Ok(found) = inspect::inspect(&capture, InspectLimits::default()) {
            prop_assert!(found.observations.len() <= elements.max(1));
        }
    }
}

/// Posts the recorded GetItem request as Alex: the fixture, and the body answered (200).
async fn post_recorded_get_item(
    client: &reqwest::Client,
    gw: &support::TestGateway,
) -> (Fixture, bytes::Bytes) {
    let fixture = Fixture::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/exchange/ews-getitem-message"),
    )
    .unwrap();
    let request = fixture.request.clone().unwrap();
    let r = support::post_ews_as_alex(client, gw, request.body.clone()).await;
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    (fixture, body)
}

const RESOLVE_NAMES: &str = r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><soap:Header><t:RequestServerVersion Version="Exchange2016"/></soap:Header><soap:Body><ResolveNames xmlns="http://schemas.microsoft.com/exchange/services/2006/messages" ReturnFullContactData="true"><UnresolvedEntry>pat</UnresolvedEntry></ResolveNames></soap:Body></soap:Envelope>"#;

/// Through a live gateway: the response of an operation inspection reads nothing from is not
/// copied (counted as skipped, never handed off or dropped), and passes through whole, while
/// an operation it reads is still copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_does_not_copy_responses_nothing_is_read_from() {
    let sim = support::store_simulator().await;
    let gw = support::gateway(&sim.url(), "").await;
    let client = support::client(&gw.ca(), true);
    let r = support::post_ews_as_alex(&client, &gw, RESOLVE_NAMES).await;
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ResolveNamesResponse"), "{body}");
    let captures = gw.gateway.proxy().metrics.captures.clone();
    assert_eq!(captures.skipped_unread.get(), 1);
    assert_eq!(captures.handed_off.get(), 0);
    assert_eq!(captures.dropped.get(), 0);

    post_recorded_get_item(&client, &gw).await;
    support::wait_for(
        Duration::from_secs(10),
        "the GetItem copy handed off",
        async || (captures.handed_off.get() == 1).then_some(()),
    )
    .await;
    assert_eq!(captures.skipped_unread.get(), 1);
    let metrics = support::get_text(&gw.admin("/metrics")).await;
    assert!(
        metrics.contains("trackgate_captures_skipped_unread_total 1"),
        "{metrics}"
    );
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_through_the_gateway_becomes_observations() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "").await;
    let client = support::client(&gw.ca(), true);
    let (fixture, body) = post_recorded_get_item(&client, &gw).await;
    assert_eq!(body, fixture.body, "the response passed through unchanged");
    assert_eq!(support::list_alex_inbox_over_graph(&client, &gw).await, 200);
    let seen = support::wait_for(Duration::from_secs(10), "two observations", async || {
        let recent = gw.gateway.recent_observations();
        (recent.len() >= 2).then_some(recent)
    })
    .await;
    let json: Vec<serde_json::Value> = seen
        .iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect();
    let ews = json
        .iter()
        .find(|o| o["source"] == "ews")
        .expect("an EWS observation");
    assert_eq!(ews["kind"], "message_seen");
    assert_eq!(ews["mailbox"], "alex.seller@contoso.example");
    assert_eq!(
        ews["internet_message_id"],
        "CAF1234.5678@mail.fabrikam.example"
    );
    let graph = json
        .iter()
        .find(|o| o["source"] == "graph")
        .expect("a Graph observation");
    assert_eq!(graph["folder"], "inbox");
    assert_eq!(gw.gateway.inspect_metrics().observations("message_seen"), 2);
    let metrics = support::get_text(&gw.admin("/metrics")).await;
    assert!(
        metrics.contains(r#"trackgate_observations_total{kind="message_seen"} 2"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains("alex.seller"),
        "a mailbox leaked into metrics"
    );
    gw.gateway.shutdown().await;
}

/// The request body of a fixture, by folder name.
fn fixture_request(name: &str) -> bytes::Bytes {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/exchange")
        .join(name);
    Fixture::load(&dir).unwrap().request.unwrap().body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_inspection_workers_keep_each_mailbox_in_order() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "[inspect]\nworkers = 3\n").await;
    let client = support::client(&gw.ca(), false);
    // Operations whose simulated answers do not depend on the item asked for, each with its
    // own kind of observation.
    let steps = [
        ("ews-getfolder-inbox", "folder_seen"),
        ("ews-moveitem-partial", "message_moved"),
        ("ews-updateitem-categories", "categories_changed"),
        ("ews-getitem-message", "message_seen"),
    ];
    let mailboxes: Vec<String> = (0..6).map(|n| format!("m{n}@contoso.example")).collect();
    // Each mailbox sends its steps twice, one after the other; the mailboxes run at once.
    let mut tasks = Vec::new();
    for mailbox in mailboxes.clone() {
        let (client, url) = (client.clone(), gw.localhost_url("/EWS/Exchange.asmx"));
        tasks.push(tokio::spawn(async move {
            for (fixture, _) in steps.iter().chain(steps.iter()) {
                let r = client
                    .post(url.clone())
                    .header("content-type", "text/xml; charset=utf-8")
                    .header("x-anchormailbox", mailbox.as_str())
                    .body(fixture_request(fixture))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let expected: Vec<&str> = steps.iter().chain(steps.iter()).map(|(_, k)| *k).collect();
    let seen = support::wait_for(Duration::from_secs(10), "48 observations", async || {
        let recent = gw.gateway.recent_observations();
        (recent.len() >= 48).then_some(recent)
    })
    .await;
    for mailbox in &mailboxes {
        let kinds: Vec<&str> = seen
            .iter()
            .filter(|o| o.origin().mailbox.as_deref() == Some(mailbox.as_str()))
            .map(|o| o.kind())
            .collect();
        assert_eq!(kinds, expected, "{mailbox}'s exchanges out of order");
    }
    let metrics = support::get_text(&gw.admin("/metrics")).await;
    assert!(metrics.contains("trackgate_inspect_workers 3"), "{metrics}");
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_and_budget_too_small_for_the_load_never_cost_traffic() {
    let sim = support::simulator("sim").await;
    // A queue of one and a budget of two 4 KiB copies under 64 concurrent exchanges: how many
    // copies inspection gets depends on how fast it runs here, so this asserts the traffic and
    // the accounting; that a full queue drops copies (and tells catch-up) is unit-tested with a
    // blocked worker beside the sink (`proxy::capture`).
    let gw = support::gateway(
        &sim.url(),
        "[inspect]\ncapture_limit = \"4KiB\"\nmemory_budget = \"8KiB\"\nqueue = 1\n",
    )
    .await;
    let client = support::client(&gw.ca(), false);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let client = client.clone();
        let url = gw.localhost_url("/v1.0/me/messages");
        tasks.push(tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap().len())
        }));
    }
    for t in tasks {
        let (status, len) = t.await.unwrap();
        assert_eq!(status, 200);
        assert!(len > 0);
    }
    let captures = &gw.gateway.proxy().metrics.captures;
    assert_eq!(
        captures.handed_off.get() + captures.dropped.get(),
        64,
        "every copy either inspected or counted as dropped"
    );
    gw.gateway.shutdown().await;
}

/// The niceness of each of the process's threads, by thread name (`/proc/<pid>/task/*/stat`).
fn thread_niceness(pid: u32) -> Vec<(String, i32)> {
    let mut threads = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the gateway is running");
    for task in tasks {
        let Ok(stat) = std::fs::read_to_string(task.expect("a task entry").path().join("stat"))
        else {
            continue; // a thread that just ended
        };
        let name = stat
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'));
        let name = name.expect("a thread name").0.to_owned();
        let nice = trackgate::common::threads::niceness_from_stat(&stat).expect("a niceness");
        threads.push((name, nice));
    }
    threads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_the_outbox_writer_and_the_catch_up_sweep_run_behind_the_proxy_workers() {
    let sim = support::simulator("sim").await;
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(
        dir.path(),
        &format!(
            "plaintext = true\n[upstreams]\news = \"{url}\"\n[exchange]\news_url = \"{url}/EWS/Exchange.asmx\"\nauth = \"basic\"\nusername = 'CONTOSO\\svc-trackgate'\npassword = \"Example-Pa55-svc\"\n",
            url = sim.url()
        ),
    );
    let gw = support::GatewayProcess::start(&config);
    let nice_of = |threads: &[(String, i32)], prefix: &str| -> Vec<i32> {
        threads
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, nice)| *nice)
            .collect()
    };
    // The gateway's threads start at this test's own niceness; those behind the traffic go
    // ten nicer than that (`nice cargo test` starts everything at 10: they go to 19).
    let own = std::fs::read_to_string("/proc/thread-self/stat").expect("own stat");
    let own = trackgate::common::threads::niceness_from_stat(&own).expect("own niceness");
    let behind = [trackgate::common::threads::behind_traffic(own)];
    assert!(
        behind[0] > own || own == 19,
        "at niceness {own} nothing can run behind the traffic"
    );
    // Each thread lowers itself as it starts, which may be just after the gateway says ready.
    // Thread names are cut to 15 bytes by the kernel.
    let threads = support::wait_for(
        Duration::from_secs(10),
        "inspection, the outbox writer and the sweep at a lower priority",
        async || {
            let threads = thread_niceness(gw.pid());
            // One inspection thread per worker (as many as the machine's cores allow).
            let inspection = nice_of(&threads, "trackgate-inspe");
            (!inspection.is_empty()
                && inspection.iter().all(|n| [*n] == behind)
                && nice_of(&threads, "trackgate-outbo") == behind
                && nice_of(&threads, "trackgate-catch") == behind)
                .then_some(threads)
        },
    )
    .await;
    let workers = nice_of(&threads, "tokio-rt-worker");
    assert!(
        !workers.is_empty() && workers.iter().all(|&n| n == own),
        "{threads:?}"
    );
}
