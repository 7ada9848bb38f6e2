//! The fleet outbox on real nats-server processes: the outbox contract (publish, claim, settle,
//! dead letters, retry, skip) on JetStream; gateways sharing one stream through a three-node
//! cluster while a gateway or a NATS node is killed; NATS unreachable at start; and the start-up
//! errors for wrong credentials, a missing stream and a consumer of another configuration.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use trackgate::fleet::{FleetMetrics, LeaseSettings, Leases, Ownership as _};
use trackgate::outbox::nats::{NatsAuth, NatsMetrics, NatsSettings, Role};
use trackgate::outbox::{NatsOutbox, Outbox, OutboxMetrics, Settlement};
use trackgate::rules::Decision;
use uuid::Uuid;

use crate::delivery::{burst_and_wait, dataverse, dataverse_config, written_emails};
use crate::support::nats::{self, NatsCluster};
use crate::support::{self, GatewayProcess};

fn decision(n: u128) -> Decision {
    serde_json::from_value(serde_json::json!({
        "verdict": "track", "reason": "filter_all", "observation": "message_seen",
        "operation": "GetItem", "direction": "incoming", "crm_id": Uuid::from_u128(n),
    }))
    .unwrap()
}

fn settings(servers: Vec<String>, dir: &std::path::Path) -> NatsSettings {
    let mut s = NatsSettings::local(&servers[0], dir.join("spool.redb"));
    s.servers = servers;
    s.ack_wait = Duration::from_secs(2);
    s
}

async fn open(settings: NatsSettings, role: Role) -> Result<NatsOutbox, String> {
    open_measured(settings, role)
        .await
        .map(|(outbox, _)| outbox)
}

/// The same, with the outbox's NATS metrics to read.
async fn open_measured(
    settings: NatsSettings,
    role: Role,
) -> Result<(NatsOutbox, NatsMetrics), String> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = NatsMetrics::register(&mut registry);
    let outbox_metrics = OutboxMetrics::register(&mut registry);
    NatsOutbox::open(settings, metrics.clone(), outbox_metrics, role)
        .await
        .map(|outbox| (outbox, metrics))
        .map_err(|e| e.to_string())
}

/// What `trackgate nats setup` creates (the streams, the lease bucket, the directory's
/// object store), retried until the cluster has elected its JetStream leader.
async fn set_up(settings: &NatsSettings) {
    set_up_with(settings, Duration::from_secs(15)).await;
}

/// The same with leases of `lease_ttl`; returns the JetStream context setup used.
async fn set_up_with(
    settings: &NatsSettings,
    lease_ttl: Duration,
) -> async_nats::jetstream::Context {
    support::wait_for(
        Duration::from_secs(30),
        "JetStream ready for setup",
        async || {
            let js = trackgate::outbox::nats::setup(settings).await.ok()?;
            let replicas = settings.replicas;
            trackgate::fleet::setup(&js, "trackgate_leases", lease_ttl, replicas)
                .await
                .ok()?;
            trackgate::fleet::directory::setup(&js, "trackgate_directory", replicas)
                .await
                .ok()?;
            Some(js)
        },
    )
    .await
}

async fn claim(outbox: &NatsOutbox, n: usize) -> Vec<trackgate::outbox::Record> {
    let mut claimed = Vec::new();
    support::wait_for(Duration::from_secs(20), "records to claim", async || {
        claimed.extend(outbox.claim_due(0, n - claimed.len()).unwrap());
        (claimed.len() == n).then_some(())
    })
    .await;
    claimed
}

/// Runs a blocking outbox call off the test's runtime.
async fn blocking<T: Send + 'static>(
    outbox: &Arc<NatsOutbox>,
    call: impl FnOnce(&NatsOutbox) -> T + Send + 'static,
) -> T {
    let outbox = outbox.clone();
    tokio::task::spawn_blocking(move || call(&outbox))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_jetstream_a_decision_is_stored_once_delivered_once_and_a_dead_letter_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let server = nats::server(dir.path(), "");
    let settings = settings(vec![server.url()], dir.path());
    set_up(&settings).await;
    let outbox = Arc::new(
        open(settings.clone(), Role::Gateway { deliver: true })
            .await
            .unwrap(),
    );

    // The same decision twice is one record (Nats-Msg-Id); three distinct ones in all.
    for n in [1, 2, 2, 3] {
        assert!(outbox.submit(&decision(n)));
    }
    blocking(&outbox, |o| o.flush()).await.unwrap();
    let stats = blocking(&outbox, |o| o.stats()).await.unwrap();
    assert_eq!(stats.pending, 3, "{stats:?}");

    let claimed = claim(&outbox, 3).await;
    let keys: BTreeSet<Uuid> = claimed.iter().map(|r| r.key).collect();
    assert_eq!(keys.len(), 3);
    assert!(claimed.iter().all(|r| r.attempts == 0));
    let by_key = |n: u128| {
        claimed
            .iter()
            .find(|r| r.key == Uuid::from_u128(n))
            .unwrap()
    };
    outbox.settle(by_key(1), Settlement::Delivered);
    outbox.settle(
        by_key(2),
        Settlement::Retry {
            at_ms: 0,
            counted: true,
            error: "500".into(),
        },
    );
    outbox.settle(
        by_key(3),
        Settlement::Dead {
            status: Some(400),
            response: Some("{\"error\":{\"code\":\"0x80040203\"}}".into()),
            error: "rejected".into(),
        },
    );
    // The counted retry comes back with its attempt counted.
    let again = claim(&outbox, 1).await;
    assert_eq!(again[0].key, Uuid::from_u128(2));
    assert_eq!(again[0].attempts, 1);
    outbox.settle(&again[0], Settlement::Delivered);

    let dead = support::wait_for(Duration::from_secs(10), "the dead letter", async || {
        let dead = blocking(&outbox, |o| o.dead_letters(10)).await.unwrap();
        (dead.len() == 1).then_some(dead)
    })
    .await;
    assert_eq!(dead[0].record.key, Uuid::from_u128(3));
    assert_eq!(dead[0].status, Some(400));

    // An operator's view from elsewhere sees the same, and retries the dead letter.
    // (The gateway's outbox holds the spool file; the operator's works without it.)
    let operator = Arc::new(open(settings.clone(), Role::Operator).await.unwrap());
    blocking(&operator, |o| o.retry(Uuid::from_u128(3)))
        .await
        .unwrap();
    let retried = claim(&outbox, 1).await;
    assert_eq!(retried[0].key, Uuid::from_u128(3));
    assert_eq!(retried[0].attempts, 0, "a retried dead letter starts over");
    outbox.settle(&retried[0], Settlement::Delivered);
    support::wait_for(Duration::from_secs(10), "everything settled", async || {
        let s = blocking(&operator, |o| o.stats()).await.unwrap();
        (s.pending == 0 && s.dead == 0).then_some(())
    })
    .await;

    // Skip drops a pending record without delivering it.
    assert!(outbox.submit(&decision(4)));
    blocking(&outbox, |o| o.flush()).await.unwrap();
    let held = claim(&outbox, 1).await;
    blocking(&operator, |o| o.skip(Uuid::from_u128(4)))
        .await
        .unwrap();
    assert_eq!(blocking(&operator, |o| o.stats()).await.unwrap().pending, 0);
    drop(held);
    assert!(
        blocking(&operator, |o| o.skip(Uuid::from_u128(99)))
            .await
            .is_err(),
        "an unknown id is an error"
    );
}

/// A gateway process on the fleet's stream, delivering to the Dataverse simulator.
fn fleet_config(
    dir: &std::path::Path,
    sim: &str,
    dv: &trackgate::simulate::dataverse::DataverseSimulator,
    servers: &str,
) -> std::path::PathBuf {
    support::write_config(
        dir,
        &format!(
            "plaintext = true\n[upstreams]\news = \"{sim}\"\n[outbox]\nbackend = \"nats\"\n[nats]\nservers = {servers}\nreplicas = 3\nack_wait = \"2s\"\nconnect_timeout = \"2s\"\n{}",
            dataverse_config(dv, "concurrency = 8")
        ),
    )
}

async fn stats_of(admin: &str) -> Option<Value> {
    let r = support::plain_client()
        .get(format!("{admin}/outbox/stats"))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// After a round: every record the stream stored reached Dataverse, and every email exists
/// once. Returns the emails landed so far.
///
/// The stream itself may hold a record twice. A publish retried across a stream-leader change
/// can be stored again: a new leader clears the duplicate ids of publishes still in flight
/// (nats-server #6486), so the stream's duplicate window cannot catch that retry. Delivery then
/// finds the email already there (a 412 on its create-only write) and writes nothing twice.
/// That is the design's second half of exactly once, and the simulator counts it.
async fn assert_exactly_once(
    nats_url: &str,
    dv: &trackgate::simulate::dataverse::DataverseSimulator,
    admins: &[String],
    landed_before: usize,
    acknowledged: usize,
    expected: Option<usize>,
) -> usize {
    let found_again = || dv.stats().already_there.get("emails").copied().unwrap_or(0) as usize;
    // Every stored record reached Dataverse (created, or found already there), and nothing
    // landed that the stream does not hold.
    let settled =
        |landed: usize, again: usize, stored: usize| landed <= stored && landed + again >= stored;
    let admin = &admins[0];
    let mut last = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let stats = loop {
        // A stats call during a NATS election may fail; asked again.
        // Every gateway's spool empty, the stream empty, and every stored record delivered.
        let mut all = Vec::new();
        for admin in admins {
            all.extend(stats_of(admin).await);
        }
        if all.len() == admins.len() {
            let s = all.swap_remove(0);
            let landed = written_emails(dv).len();
            let again = found_again();
            let stored = s["next_seq"].as_u64().unwrap_or(1) as usize - 1;
            let idle = s["pending"] == 0 && all.iter().all(|o| o["pending"] == 0);
            // Read at one moment: a record can land (from a gateway's spool) before the stream
            // holds it, so a reading with more emails than records is not yet settled.
            if idle && settled(landed, again, stored) && expected.is_none_or(|e| landed >= e) {
                break s;
            }
            last = Some((s, landed, again));
        }
        if std::time::Instant::now() >= deadline {
            // What the server says, beside the gateways' view, for whoever reads the failure.
            let client = async_nats::connect(nats_url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let mut stream = js.get_stream("TRACKGATE_OUTBOX").await.unwrap();
            let state = stream.info().await.unwrap().state.clone();
            let consumer = stream.consumer_info("trackgate-delivery").await.unwrap();
            eprintln!(
                "stream {state:?}\nconsumer: delivered {:?}, ack floor {:?}, ack pending {}, pending {}, redelivered {}",
                consumer.delivered,
                consumer.ack_floor,
                consumer.num_ack_pending,
                consumer.num_pending,
                consumer.num_redelivered
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fleet did not drain: last stats, emails landed and found again {last:?}; metrics:\n{}",
            crate::delivery::metrics(admin)
                .await
                .lines()
                .filter(|l| !l.starts_with('#')
                    && !l.contains("_bucket")
                    && (l.starts_with("trackgate_nats")
                        || l.starts_with("trackgate_delivery_outcomes")
                        || l.starts_with("trackgate_rules")
                        || l.starts_with("trackgate_decisions")
                        || l.starts_with("trackgate_inspect_dropped")
                        || l.starts_with("trackgate_inspect")
                        || l.starts_with("trackgate_outbox")))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stored = stats["next_seq"].as_u64().unwrap() as usize - 1;
    let emails = written_emails(dv);
    let ids: BTreeSet<&str> = emails
        .iter()
        .map(|e| e["activityid"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), emails.len(), "no email written twice");
    let again = found_again();
    assert!(
        settled(emails.len(), again, stored),
        "every stored record reached Dataverse, nothing else: {} emails landed and {again} \
         found already there for {stored} records stored",
        emails.len()
    );
    assert_eq!(dv.stats().recreated, 0);
    assert_eq!(stats["dead"], 0);
    let this_round = emails.len() - landed_before;
    // A killed gateway loses what it acknowledged and had not published yet (its inspection
    // queue and publishes in flight): the catch-up sweep finds those messages again. What
    // reached the stream is never lost.
    assert!(
        this_round <= acknowledged + 16,
        "landed {this_round} for {acknowledged} acknowledged sends"
    );
    emails.len()
}

/// Sends a round through all gateways, killing `victim` (SIGKILL) half-way; returns the sends
/// the gateways answered.
async fn round_with_a_kill(
    gateways: &mut [Option<GatewayProcess>],
    configs: &[std::path::PathBuf],
    victim: usize,
    offset: usize,
    per_gateway: usize,
) -> usize {
    let mut sends = Vec::new();
    for (i, gw) in gateways.iter().enumerate() {
        let start = offset + i * per_gateway;
        if i == victim {
            continue;
        }
        let proxy = gw.as_ref().unwrap().proxy.clone();
        sends.push(tokio::spawn(async move {
            burst_and_wait(&proxy, start..start + per_gateway, 8).await
        }));
    }
    let start = offset + victim * per_gateway;
    let killed = gateways[victim].take().unwrap();
    let answered_by_victim = crate::delivery::kill_mid_burst(
        killed,
        start..start + per_gateway,
        8,
        crate::delivery::KillWhen::HalfAnswered,
    )
    .await;
    // Back on the same data directory: whatever it spooled is published now.
    gateways[victim] = Some(GatewayProcess::start(&configs[victim]));
    let mut answered = answered_by_victim;
    for s in sends {
        answered += s.await.unwrap();
    }
    answered
}

/// A three-node cluster with the streams set up, both simulators, and three gateways'
/// configurations (not started).
struct Fleet {
    dir: tempfile::TempDir,
    cluster: NatsCluster,
    sim: trackgate::simulate::ExchangeSimulator,
    dv: trackgate::simulate::dataverse::DataverseSimulator,
    configs: Vec<std::path::PathBuf>,
}

impl Fleet {
    async fn start() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let cluster = NatsCluster::start(dir.path());
        let servers: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
        let mut s = settings(servers, dir.path());
        s.replicas = 3;
        set_up(&s).await;
        let sim = support::simulator("sim").await;
        let dv = dataverse().await;
        let configs = (0..3)
            .map(|i| {
                let d = dir.path().join(format!("gw-{i}"));
                std::fs::create_dir_all(&d).unwrap();
                fleet_config(&d, &sim.url(), &dv, &cluster.servers_toml())
            })
            .collect();
        Fleet {
            dir,
            cluster,
            sim,
            dv,
            configs,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_on_a_three_node_cluster_lose_and_duplicate_nothing_when_one_is_killed() {
    let Fleet {
        dir: _dir,
        cluster,
        sim: _sim,
        dv,
        configs,
    } = Fleet::start().await;
    let mut gateways: Vec<Option<GatewayProcess>> = configs
        .iter()
        .map(|c| Some(GatewayProcess::start(c)))
        .collect();
    let mut landed = 0;
    const PER_GATEWAY: usize = 60;
    for round in 0..5 {
        let offset = round * 3 * PER_GATEWAY;
        let victim = round % 3;
        let acknowledged =
            round_with_a_kill(&mut gateways, &configs, victim, offset, PER_GATEWAY).await;
        let admins: Vec<String> = gateways
            .iter()
            .map(|g| g.as_ref().unwrap().admin.clone())
            .collect();
        landed = assert_exactly_once(
            &cluster.nodes[0].url(),
            &dv,
            &admins,
            landed,
            acknowledged,
            None,
        )
        .await;
        println!(
            "round {round}: gateway {victim} killed; {acknowledged} sends answered, {landed} landed once in all (lost before publishing: {})",
            (offset + 3 * PER_GATEWAY).saturating_sub(landed)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_nats_node_mid_traffic_loses_and_duplicates_nothing() {
    let Fleet {
        dir: _dir,
        mut cluster,
        sim: _sim,
        dv,
        configs,
    } = Fleet::start().await;
    let gateways: Vec<GatewayProcess> = configs.iter().map(|c| GatewayProcess::start(c)).collect();
    let mut landed = 0;
    const PER_GATEWAY: usize = 60;
    for round in 0..5 {
        let offset = round * 3 * PER_GATEWAY;
        let sends: Vec<_> = gateways
            .iter()
            .enumerate()
            .map(|(i, gw)| {
                let proxy = gw.proxy.clone();
                let start = offset + i * PER_GATEWAY;
                tokio::spawn(
                    async move { burst_and_wait(&proxy, start..start + PER_GATEWAY, 8).await },
                )
            })
            .collect();
        // Mid-traffic: the first Dataverse write of this round has landed.
        let before = written_emails(&dv).len();
        support::wait_for(Duration::from_secs(60), "traffic under way", async || {
            (written_emails(&dv).len() > before).then_some(())
        })
        .await;
        let node = round % 3;
        cluster.nodes[node].kill();
        let mut acknowledged = 0;
        for s in sends {
            acknowledged += s.await.unwrap();
        }
        cluster.nodes[node].start();
        let admins: Vec<String> = gateways.iter().map(|g| g.admin.clone()).collect();
        let expected = offset + 3 * PER_GATEWAY;
        landed = assert_exactly_once(
            &cluster.nodes[0].url(),
            &dv,
            &admins,
            landed,
            acknowledged,
            Some(expected),
        )
        .await;
        assert_eq!(
            landed,
            offset + 3 * PER_GATEWAY,
            "no send lost while a node was down"
        );
        println!("round {round}: NATS node {node} killed; {landed} landed once in all");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_unreachable_mail_flows_readiness_says_why_and_the_spool_is_published_later() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::closed_port();
    let sim = support::simulator("sim").await;
    let dv = dataverse().await;
    let config = fleet_config(
        dir.path(),
        &sim.url(),
        &dv,
        &format!("[\"nats://127.0.0.1:{port}\"]"),
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("replicas = 3", "replicas = 1");
    std::fs::write(&config, text).unwrap();
    let gateway = GatewayProcess::start(&config);
    const SENDS: usize = 40;
    let answered = burst_and_wait(&gateway.proxy, 0..SENDS, 8).await;
    assert_eq!(answered, SENDS, "mail flows without NATS");
    let ready = support::get_text(&format!("{}/readyz", gateway.admin)).await;
    assert!(ready.contains("NATS unreachable"), "{ready}");
    let spooled = support::wait_for(Duration::from_secs(20), "the sends spooled", async || {
        let m = crate::delivery::metrics(&gateway.admin).await;
        m.lines()
            .find(|l| l.starts_with("trackgate_nats_spool_depth "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .filter(|d| *d == SENDS as u64)
    })
    .await;
    assert_eq!(spooled, SENDS as u64);
    assert!(written_emails(&dv).is_empty());

    // NATS comes back where the gateway expects it; the operator sets the streams up.
    let _server = nats::server_on(dir.path(), port, "");
    let (out, err) = support::run_trackgate([
        std::ffi::OsStr::new("nats"),
        "setup".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(
        String::from_utf8_lossy(&out).starts_with("ready: stream TRACKGATE_OUTBOX"),
        "{err}"
    );
    assert_exactly_once(
        &format!("nats://127.0.0.1:{port}"),
        &dv,
        std::slice::from_ref(&gateway.admin),
        0,
        SENDS,
        Some(SENDS),
    )
    .await;
    support::wait_for(Duration::from_secs(20), "readiness clear", async || {
        let ready = support::get_text(&format!("{}/readyz", gateway.admin)).await;
        (!ready.contains("degraded")).then_some(())
    })
    .await;
    // The command line reads the fleet's stream directly.
    let (stdout, _) = support::run_trackgate([
        std::ffi::OsStr::new("outbox"),
        "stats".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    let stats: Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(stats["pending"], 0);
    assert_eq!(stats["next_seq"], SENDS as u64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_a_missing_stream_or_a_foreign_consumer_stop_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let secured = nats::server(
        dir.path(),
        "authorization { user: trackgate, password: right-password }",
    );
    let mut wrong = settings(vec![secured.url()], dir.path());
    wrong.auth = NatsAuth::UserPassword {
        user: "trackgate".into(),
        password: trackgate::common::Secret::new("wrong-password"),
    };
    let error = open(wrong, Role::Gateway { deliver: false })
        .await
        .unwrap_err();
    assert!(error.contains("nats.user and nats.password"), "{error}");
    assert!(!error.contains("wrong-password"), "no secret in the error");

    // Each attempt has a spool of its own: a refused start lets go of its spool file from the
    // outbox's writer thread, a moment after the error.
    let open_server = nats::server(dir.path(), "");
    let mut plain = settings(vec![open_server.url()], dir.path());
    plain.spool = dir.path().join("spool-missing-stream.redb");
    let error = open(plain.clone(), Role::Gateway { deliver: false })
        .await
        .unwrap_err();
    assert!(error.contains("(nats.stream) does not exist"), "{error}");
    assert!(error.contains("trackgate nats setup"), "{error}");

    // A consumer of the same name that reads another subject.
    set_up(&plain).await;
    let client = async_nats::connect(open_server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(&plain.stream).await.unwrap();
    stream.delete_consumer(&plain.consumer).await.unwrap();
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(plain.consumer.clone()),
            filter_subject: format!("{}.other", plain.subject),
            ..Default::default()
        })
        .await
        .unwrap();
    plain.spool = dir.path().join("spool-foreign-consumer.redb");
    let error = open(plain, Role::Gateway { deliver: false })
        .await
        .unwrap_err();
    assert!(
        error.contains("(nats.consumer) has another configuration"),
        "{error}"
    );
}

const MAILBOXES: [&str; 4] = [
    "alex.seller@contoso.example",
    "jo.support@contoso.example",
    "kim.manager@contoso.example",
    "team.sales@contoso.example",
];

fn mailboxes() -> Vec<String> {
    MAILBOXES.iter().map(|m| (*m).to_owned()).collect()
}

async fn leases(jetstream: &async_nats::jetstream::Context, name: &str) -> Arc<Leases> {
    let mut registry = prometheus_client::registry::Registry::default();
    Leases::open(
        jetstream,
        LeaseSettings {
            bucket: "trackgate_leases".into(),
            ttl: LEASE_TTL,
            instance: name.into(),
        },
        FleetMetrics::register(&mut registry),
    )
    .await
    .unwrap()
}

const LEASE_TTL: Duration = Duration::from_secs(2);

/// Who holds each mailbox's lease in the bucket (the instance part of the value).
async fn holders(kv: &async_nats::jetstream::kv::Store) -> Vec<Option<String>> {
    let mut holders = Vec::new();
    for m in MAILBOXES {
        let value = kv.get(trackgate::fleet::lease_key(m)).await.unwrap();
        holders.push(value.map(|v| {
            let v = String::from_utf8_lossy(&v).into_owned();
            v.split('/').next().unwrap().to_owned()
        }));
    }
    holders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_spread_by_rendezvous_move_after_a_freeze_and_fence_the_frozen_holder() {
    let dir = tempfile::tempdir().unwrap();
    let server = nats::server(dir.path(), "");
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    trackgate::fleet::setup(&js, "trackgate_leases", LEASE_TTL, 1)
        .await
        .unwrap();
    let kv = js.get_key_value("trackgate_leases").await.unwrap();
    let (a, b) = (leases(&js, "a").await, leases(&js, "b").await);
    let all = mailboxes();

    // Alone, a takes every mailbox.
    a.round(&all).await.unwrap();
    assert_eq!(a.held_count(), 4);
    assert!(all.iter().all(|m| a.owns(m)));
    // b joins: a lets go of what rendezvous gives b, b takes it; every mailbox held once.
    support::wait_for(
        Duration::from_secs(10),
        "the mailboxes spread",
        async || {
            b.round(&all).await.unwrap();
            a.round(&all).await.unwrap();
            let owners: Vec<bool> = all.iter().map(|m| a.owns(m) != b.owns(m)).collect();
            (owners.iter().all(|o| *o) && a.held_count() + b.held_count() == 4).then_some(())
        },
    )
    .await;
    let a_mailboxes: Vec<&String> = all.iter().filter(|m| a.owns(m)).collect();

    // a freezes (its rounds stop). Within the TTL its leases and membership lapse, and b,
    // still renewing, takes everything.
    let frozen = std::time::Instant::now();
    support::wait_for(
        Duration::from_secs(10),
        "b holds every mailbox",
        async || {
            b.round(&all).await.unwrap();
            (b.held_count() == 4).then_some(())
        },
    )
    .await;
    let moved = frozen.elapsed();
    assert!(moved <= LEASE_TTL + Duration::from_secs(2), "{moved:?}");
    assert!(
        holders(&kv).await.iter().all(|h| h.as_deref() == Some("b")),
        "every lease is b's in the bucket"
    );
    // Resumed, a no longer owns on its own clock, and its write with the old revision is
    // refused by the fence.
    for m in &a_mailboxes {
        assert!(!a.owns(m), "a stops on its own clock");
        assert!(!a.confirm(m).await, "the stale revision is refused");
    }
    for m in &all {
        assert!(b.confirm(m).await, "the holder's own write goes through");
    }
    println!(
        "{} of 4 mailboxes moved {:.1}s after the freeze (TTL {}s)",
        a_mailboxes.len(),
        moved.as_secs_f64(),
        LEASE_TTL.as_secs()
    );
}

/// A gateway of the fleet with the catch-up sweep on, named `instance`.
fn sweeping_config(
    dir: &std::path::Path,
    sim: &trackgate::simulate::ExchangeSimulator,
    dv: &trackgate::simulate::dataverse::DataverseSimulator,
    server: &str,
    instance: &str,
) -> std::path::PathBuf {
    let config = fleet_config(dir, &sim.url(), dv, &format!("[\"{server}\"]"));
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "replicas = 3",
        &format!("replicas = 1\ninstance = \"{instance}\"\nlease_ttl = \"3s\""),
    );
    let text = format!(
        "{text}\n[exchange]\news_url = \"{}/EWS/Exchange.asmx\"\nauth = \"basic\"\nusername = 'CONTOSO\\svc-trackgate'\npassword = \"Example-Pa55-svc\"\n[catchup]\ninterval = \"1s\"\n",
        sim.url()
    );
    std::fs::write(&config, text).unwrap();
    config
}

async fn deliver_to_alex(sim: &trackgate::simulate::ExchangeSimulator, n: u32) {
    let r = support::plain_client()
        .post(format!("{}/_sim/deliver", sim.url()))
        .json(&serde_json::json!({
            "from": "Pat Buyer <pat.buyer@fabrikam.example>",
            "to": ["alex.seller@contoso.example"],
            "subject": format!("Fleet order {n}"),
            "message_id": format!("<fleet.order.{n}@mail.fabrikam.example>"),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn emails_with_subject(
    dv: &trackgate::simulate::dataverse::DataverseSimulator,
    subject: &str,
) -> usize {
    written_emails(dv)
        .iter()
        .filter(|e| e["subject"] == subject)
        .count()
}

async fn sweeps(admin: &str) -> u64 {
    crate::delivery::metrics(admin)
        .await
        .lines()
        .filter(|l| l.starts_with("trackgate_catchup_sweeps_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_frozen_past_its_lease_hands_its_mailboxes_over_and_mail_is_tracked_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = nats::server(dir.path(), "");
    let sim = support::store_simulator().await;
    let dv = dataverse().await;
    let configs: Vec<_> = ["gw-a", "gw-b"]
        .iter()
        .map(|name| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            sweeping_config(&d, &sim, &dv, &server.url(), name)
        })
        .collect();
    let (out, err) = support::run_trackgate([
        std::ffi::OsStr::new("nats"),
        "setup".as_ref(),
        "--config".as_ref(),
        configs[0].as_os_str(),
    ]);
    assert!(
        String::from_utf8_lossy(&out).contains("leases trackgate_leases"),
        "{err}"
    );
    let gateways: Vec<GatewayProcess> = configs.iter().map(|c| GatewayProcess::start(c)).collect();
    let client = async_nats::connect(server.url()).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value("trackgate_leases")
        .await
        .unwrap();
    let spread = support::wait_for(
        Duration::from_secs(20),
        "every mailbox leased",
        async || {
            let h = holders(&kv).await;
            h.iter().all(Option::is_some).then_some(h)
        },
    )
    .await;
    // The gateway that holds Alex's mailbox freezes past its lease.
    let victim = usize::from(spread[0].as_deref() == Some("gw-b"));
    let other = 1 - victim;
    let other_name = ["gw-a", "gw-b"][other];
    gateways[victim].signal("STOP");
    let frozen = std::time::Instant::now();
    // Every mailbox it held, Alex's among them, passes to the other gateway.
    support::wait_for(Duration::from_secs(20), "its leases moved", async || {
        let holders = holders(&kv).await;
        holders
            .iter()
            .all(|h| h.as_deref() == Some(other_name))
            .then_some(())
    })
    .await;
    let moved = frozen.elapsed();
    deliver_to_alex(&sim, 1).await;
    support::wait_for(Duration::from_secs(30), "mail 1 tracked", async || {
        (emails_with_subject(&dv, "Fleet order 1") == 1).then_some(())
    })
    .await;

    // Resumed: it finds its leases gone, the fleet rebalances, and nothing is tracked twice.
    gateways[victim].signal("CONT");
    deliver_to_alex(&sim, 2).await;
    support::wait_for(Duration::from_secs(30), "mail 2 tracked", async || {
        (emails_with_subject(&dv, "Fleet order 2") == 1).then_some(())
    })
    .await;
    // Two more sweeps of every mailbox after the resume, by whichever gateway owns each (the
    // resumed one may own none: rendezvous can give every mailbox to the other), so that a
    // second tracking of either mail would have happened by now.
    let swept_by_both = async || {
        let mut total = 0;
        for g in &gateways {
            total += sweeps(&g.admin).await;
        }
        total
    };
    let before = swept_by_both().await;
    support::wait_for(
        Duration::from_secs(30),
        "two more rounds of sweeps",
        async || (swept_by_both().await >= before + 2 * MAILBOXES.len() as u64).then_some(()),
    )
    .await;
    assert_eq!(emails_with_subject(&dv, "Fleet order 1"), 1);
    assert_eq!(emails_with_subject(&dv, "Fleet order 2"), 1);
    assert_eq!(dv.stats().recreated, 0);
    let held: Vec<Option<String>> = holders(&kv).await;
    assert!(held.iter().all(Option::is_some), "{held:?}");
    println!(
        "every lease of the frozen gateway moved {:.1}s after the freeze (TTL 3s); after the resume: {held:?}",
        moved.as_secs_f64()
    );
}

/// A gateway of the fleet whose directory is the Dataverse simulator, refreshed every second
/// by whoever holds the directory lease.
async fn directory_gateway(
    dir: &std::path::Path,
    server: &str,
    dv: &trackgate::simulate::DataverseSimulator,
    instance: &str,
) -> trackgate::app::Gateway {
    use crate::directory_source::config_text;
    let extra = format!(
        "refresh_interval_placeholder = 0\n[outbox]\nbackend = \"nats\"\n[nats]\nservers = [\"{server}\"]\nreplicas = 1\ninstance = \"{instance}\"\nlease_ttl = \"3s\"\n"
    );
    let text = config_text(&dv.url(), &dv.token_url(), &extra)
        .replace("refresh_interval = \"1h\"", "refresh_interval = \"1s\"")
        .replace("refresh_interval_placeholder = 0\n", "");
    let config = support::config(dir, "http://127.0.0.1:9", &text);
    trackgate::app::start(config).await.expect("gateway starts")
}

async fn refreshes(gw: &trackgate::app::Gateway) -> u64 {
    let status: Value =
        serde_json::from_str(&support::get_text(&format!("{}/directory", gw.admin_url())).await)
            .unwrap();
    status["status"]["refreshes_ok"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateway_refreshes_the_directory_and_the_others_take_it_from_nats() {
    use crate::directory_source::{ALEX, contoso, dataverse, decide, expect, seen, stored};
    use trackgate::directory::model::Contact;
    let dir = tempfile::tempdir().unwrap();
    let server = nats::server(dir.path(), "");
    let s = settings(vec![server.url()], dir.path());
    let js = set_up_with(&s, Duration::from_secs(3)).await;
    let kv = js.get_key_value("trackgate_leases").await.unwrap();
    let dv = dataverse(contoso()).await;
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let a = directory_gateway(&dir_a, &server.url(), &dv, "gw-a").await;
    let b = directory_gateway(&dir_b, &server.url(), &dv, "gw-b").await;
    // Both gateways see each other, and the directory lease has settled where rendezvous puts
    // it (a gateway alone at first takes every lease, then hands some over).
    support::wait_for(Duration::from_secs(20), "two members", async || {
        let members = |gw: &trackgate::app::Gateway| {
            let url = format!("{}/metrics", gw.admin_url());
            async move {
                support::get_text(&url)
                    .await
                    .lines()
                    .any(|l| l == "trackgate_fleet_members 2")
            }
        };
        (members(&a).await && members(&b).await).then_some(())
    })
    .await;
    let lease = trackgate::fleet::lease_key(trackgate::fleet::directory::DIRECTORY_LEASE);
    let holder_of = async || -> Option<String> {
        let value = kv.get(&lease).await.unwrap()?;
        Some(
            String::from_utf8_lossy(&value)
                .split('/')
                .next()?
                .to_owned(),
        )
    };
    // Settled: the same holder over a whole lease round (a third of the TTL).
    let mut observed: Option<(String, std::time::Instant)> = None;
    let holder = support::wait_for(
        Duration::from_secs(20),
        "the directory lease settled",
        async || {
            let now = holder_of().await?;
            match &observed {
                Some((h, since)) if *h == now => {
                    (since.elapsed() >= Duration::from_millis(1100)).then_some(now)
                }
                _ => {
                    observed = Some((now, std::time::Instant::now()));
                    None
                }
            }
        },
    )
    .await;
    let (holder, follower) = if holder == "gw-a" { (&a, &b) } else { (&b, &a) };

    // Only the holder asks Dataverse: over three of its refreshes, the follower makes none.
    let (h0, f0) = (refreshes(holder).await, refreshes(follower).await);
    support::wait_for(Duration::from_secs(20), "three refreshes", async || {
        (refreshes(holder).await >= h0 + 3).then_some(())
    })
    .await;
    assert_eq!(
        refreshes(follower).await,
        f0,
        "the follower spent no Dataverse requests"
    );

    // A contact created in Dataverse reaches the follower's decisions through NATS.
    let nia = Uuid::from_u128(0x41a);
    dv.seed_record(
        "contacts",
        nia,
        stored(
            &trackgate::directory::tables::CONTACTS,
            &Contact {
                contactid: nia,
                fullname: Some("Nia Newco".into()),
                emailaddress1: Some("nia@newco.example".into()),
                ownerid: Some(Uuid::parse_str(ALEX).unwrap()),
                ..Contact::default()
            },
        ),
    );
    let mail = seen(
        "alex.seller@contoso.example",
        "nia@newco.example",
        "<nia@x>",
        None,
    );
    support::wait_for(
        Duration::from_secs(20),
        "the follower knows Nia",
        async || (decide(follower, &mail)["verdict"] == "track").then_some(()),
    )
    .await;
    expect(&decide(follower, &mail), "track", "sender_contact");
    assert_eq!(refreshes(follower).await, f0);

    // The holder goes; the follower takes the lease and refreshes itself.
    let follower_refreshes = refreshes(follower).await;
    let (holder, follower) = if std::ptr::eq(holder, &a) {
        (a, b)
    } else {
        (b, a)
    };
    holder.shutdown().await;
    support::wait_for(
        Duration::from_secs(20),
        "the follower refreshing",
        async || (refreshes(&follower).await > follower_refreshes).then_some(()),
    )
    .await;
    follower.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_lag_counts_the_records_no_gateway_has_taken_even_with_delivery_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = nats::server(dir.path(), "");
    let settings = settings(vec![server.url()], dir.path());
    set_up(&settings).await;
    let (outbox, metrics) = open_measured(settings, Role::Gateway { deliver: false })
        .await
        .unwrap();
    let (outbox, lag) = (Arc::new(outbox), metrics.consumer_lag);
    for n in 1..=3 {
        assert!(outbox.submit(&decision(n)));
    }
    blocking(&outbox, |o| o.flush()).await.unwrap();
    // Nothing pulls here: the lag comes from the consumer's own count, read every few seconds.
    support::wait_for(Duration::from_secs(15), "a lag of three", async || {
        (lag.get() == 3).then_some(())
    })
    .await;
}
