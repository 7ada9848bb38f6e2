//! Delivery under the conditions a real CRM shows: outages of every kind (refused, 503, a
//! black hole) end within seconds of the CRM's return at any concurrency; a throttling storm
//! costs few extra requests; a crash between an email's create and its close resumes at the
//! close.

use std::time::{Duration, Instant};

use trackgate::simulate::dataverse::{DataverseFaults, Fail, RequestKind, ThrottleEvery};

use crate::delivery::{
    CLIENT_SECRET, Pipeline, assert_accepted, dataverse, dataverse_config, dataverse_section,
    metrics, outbox_stats, pipeline, pipeline_with, send, written_emails,
};
use crate::support;

/// How long each outage lasts.
const OUTAGE: Duration = Duration::from_secs(30);
/// Messages waiting when the CRM comes back.
const BACKLOG: usize = 16;

fn paused(metrics: &str) -> bool {
    metrics
        .lines()
        .any(|l| l.starts_with("trackgate_delivery_paused ") && l.ends_with(" 1"))
}

/// Runs one outage of `faults` against a gateway delivering at concurrency 8; returns how
/// long after the CRM's return the first email was written, and the probes seen meanwhile.
async fn outage_then_return(faults: DataverseFaults) -> (Duration, usize) {
    let Pipeline {
        sim: _sim,
        dv,
        gw,
        client,
    } = pipeline_with(|_, dv| {
        // The production backoff (up to 300 s): an outage must not be paced by it.
        dataverse_section(
            dv,
            "concurrency = 8\nrequest_timeout = \"2s\"\nprobe_timeout = \"1s\"",
        )
    })
    .await;
    dv.set_faults(faults);
    let started = Instant::now();
    for n in 0..BACKLOG {
        assert!(send(&client, &gw.localhost_url(""), n).await);
    }
    support::wait_for(
        OUTAGE * 2,
        "the outage lasted its time with deliveries held",
        async || {
            let held = paused(&metrics(&gw.admin("")).await);
            (held && started.elapsed() >= OUTAGE).then_some(())
        },
    )
    .await;
    assert!(written_emails(&dv).is_empty(), "nothing written while down");
    let probes = metrics(&gw.admin(""))
        .await
        .lines()
        .find(|l| l.starts_with(r#"trackgate_delivery_probes_total{result="down"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .unwrap_or(0);
    dv.set_faults(DataverseFaults::default());
    let returned_ms = trackgate::common::time::now_ms();
    support::wait_for(Duration::from_secs(30), "the backlog drained", async || {
        let stats = outbox_stats(&gw.admin("")).await;
        (written_emails(&dv).len() == BACKLOG && stats["pending"] == 0).then_some(())
    })
    .await;
    let first_write = dv
        .requests()
        .iter()
        .filter(|r| r.at_ms >= returned_ms && r.kind == RequestKind::Create && r.status < 300)
        .map(|r| r.at_ms)
        .min()
        .expect("a create after the return");
    assert_accepted(&dv, 0);
    assert_eq!(dv.stats().recreated, 0);
    assert_eq!(
        outbox_stats(&gw.admin("")).await["dead"],
        0,
        "no attempt counted"
    );
    (Duration::from_millis(first_write - returned_ms), probes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30s_outage_at_concurrency_8_ends_within_5s_of_the_crms_return_refused_503_or_black_hole()
{
    let refused = DataverseFaults {
        down: true,
        ..DataverseFaults::default()
    };
    let unavailable = DataverseFaults {
        fail: Some(Fail {
            count: u32::MAX,
            status: 503,
            only: None,
        }),
        ..DataverseFaults::default()
    };
    let black_hole = DataverseFaults {
        black_hole: true,
        ..DataverseFaults::default()
    };
    // Side by side: each outage is 30 s of waiting, not of work.
    let (refused, unavailable, black_hole) = tokio::join!(
        outage_then_return(refused),
        outage_then_return(unavailable),
        outage_then_return(black_hole),
    );
    for (kind, (recovery, probes)) in [
        ("refused", refused),
        ("503", unavailable),
        ("black hole", black_hole),
    ] {
        println!(
            "{kind}: first email written {recovery:?} after the CRM's return, {probes} probes during the outage"
        );
        assert!(
            recovery <= Duration::from_secs(5),
            "{kind}: delivery resumed {recovery:?} after the CRM's return"
        );
        // The breaker probes on a capped interval (≤ 3 s): a few probes, not a flood and
        // not a backoff that outgrew the outage.
        assert!(
            (5..=40).contains(&probes),
            "{kind}: {probes} probes in a 30 s outage"
        );
    }
}

/// Sends `n` messages through a pipeline whose CRM answers every `every`-th API request with
/// 429 (`None`: never); returns the API requests per email it took.
async fn requests_per_email(n: usize, every: Option<u32>) -> f64 {
    let Pipeline {
        sim: _sim,
        dv,
        gw,
        client,
    } = pipeline(|_| String::new(), "concurrency = 8").await;
    if let Some(every) = every {
        dv.set_faults(DataverseFaults {
            throttle_every: Some(ThrottleEvery {
                every,
                retry_after: 0.2,
                only: None,
                seen: 0,
            }),
            ..DataverseFaults::default()
        });
    }
    for m in 0..n {
        assert!(send(&client, &gw.localhost_url(""), m).await);
    }
    support::wait_for(
        Duration::from_secs(60),
        "everything delivered",
        async || {
            let stats = outbox_stats(&gw.admin("")).await;
            let closed = written_emails(&dv)
                .iter()
                .filter(|e| e["statecode"] == 1)
                .count();
            (closed == n && stats["pending"] == 0).then_some(())
        },
    )
    .await;
    let stats = dv.stats();
    assert_accepted(&dv, 0);
    assert_eq!(stats.recreated, 0);
    if every.is_some() {
        assert!(stats.throttled > 0, "the storm happened");
    }
    let resent: Vec<_> = dv
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::Create && r.status == 412)
        .collect();
    assert!(
        resent.is_empty(),
        "a retry resumes at the step that failed, never re-sends a create that succeeded: {resent:#?}"
    );
    // The start-up check's reads (WhoAmI, privileges, users, mailboxes) are a cost per start,
    // not per email.
    let checks = dv
        .requests()
        .iter()
        .filter(|r| {
            r.path == "/WhoAmI"
                || r.path.ends_with("RetrieveUserPrivileges()")
                || (r.kind == RequestKind::Read
                    && ["/systemusers", "/mailboxes"].contains(&r.path.as_str()))
        })
        .count() as u64;
    assert!(checks > 0, "the start-up check ran");
    (stats.requests - checks) as f64 / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_in_10_throttling_storm_costs_at_most_2_5_requests_per_email() {
    const EMAILS: usize = 60;
    let (calm, storm) = tokio::join!(
        requests_per_email(EMAILS, None),
        requests_per_email(EMAILS, Some(10)),
    );
    println!("API requests per email: {calm:.2} unthrottled, {storm:.2} with 1 in 10 throttled");
    assert!(calm <= 2.2, "{calm:.2} requests per email unthrottled");
    assert!(
        storm <= 2.5,
        "{storm:.2} requests per email under a 1-in-10 storm"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_an_emails_create_and_its_close_resumes_at_the_close() {
    let sim = support::simulator("sim").await;
    let dv = dataverse().await;
    // Every close fails (500, retried with backoff): each email stops after its create.
    dv.set_faults(DataverseFaults {
        fail: Some(Fail {
            count: u32::MAX,
            status: 500,
            only: Some(RequestKind::Update),
        }),
        ..DataverseFaults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(
        dir.path(),
        &format!(
            "plaintext = true\n[upstreams]\news = \"{}\"\n{}",
            sim.url(),
            dataverse_config(&dv, "concurrency = 4\nmax_attempts = 100")
        ),
    );
    const N: usize = 6;
    let mut gateway = support::GatewayProcess::start(&config);
    let client = support::plain_client();
    for n in 0..N {
        assert!(send(&client, &gateway.proxy, n).await);
    }
    // Killed once every email is created and the file says so.
    support::wait_for(
        Duration::from_secs(30),
        "every email created and its step kept",
        async || {
            let pending: serde_json::Value = client
                .get(format!("{}/outbox/pending", gateway.admin))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let kept = pending
                .as_array()?
                .iter()
                .filter(|r| r["progress"] == 2)
                .count();
            (kept == N && written_emails(&dv).len() == N).then_some(())
        },
    )
    .await;
    gateway.child.kill().unwrap();
    gateway.wait_exit(Duration::from_secs(10));
    let killed_ms = trackgate::common::time::now_ms();
    dv.set_faults(DataverseFaults::default());

    let restarted = support::GatewayProcess::start(&config);
    support::wait_for(Duration::from_secs(30), "every email closed", async || {
        let closed = written_emails(&dv)
            .iter()
            .filter(|e| e["statecode"] == 1 && e["statuscode"] == 3)
            .count();
        let stats = outbox_stats(&restarted.admin).await;
        (closed == N && stats["pending"] == 0).then_some(())
    })
    .await;
    let after: Vec<_> = dv
        .requests()
        .into_iter()
        .filter(|r| r.at_ms >= killed_ms && r.path.starts_with("/emails("))
        .collect();
    assert!(
        after.iter().all(|r| r.kind == RequestKind::Update),
        "no create sent again after the restart: {after:#?}"
    );
    assert_eq!(after.len(), N, "one close per email: {after:#?}");
    assert_eq!(dv.stats().created["emails"] as usize, N);
    assert_accepted(&dv, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_make_readyz_say_why_and_hold_every_record_uncounted() {
    let Pipeline {
        sim: _sim,
        dv,
        gw,
        client,
    } = pipeline_with(|_, dv| {
        dataverse_config(dv, "").replace(CLIENT_SECRET, "a-secret-that-expired")
    })
    .await;
    const N: usize = 3;
    for n in 0..N {
        assert!(send(&client, &gw.localhost_url(""), n).await);
    }
    let (_, readiness) = readyz_until(
        &gw,
        "readyz names the refused credentials",
        |status, text| status == 503 && text.contains("invalid_client"),
    )
    .await;
    assert!(
        readiness.contains("client_secret") && !readiness.contains("a-secret-that-expired"),
        "names the key to fix, never the secret: {readiness}"
    );
    // Held, every one of them: the sends' decisions reach the outbox and stay there.
    let stats = support::wait_for(Duration::from_secs(20), "every decision held", async || {
        let stats = outbox_stats(&gw.admin("")).await;
        (stats["pending"] == N as u64).then_some(stats)
    })
    .await;
    assert_eq!(stats["dead"], 0, "nothing dead-lettered: {stats}");
    assert!(written_emails(&dv).is_empty());
    let m = metrics(&gw.admin("")).await;
    assert!(
        m.contains(r#"trackgate_delivery_outcomes_total{sink="dataverse",outcome="unauthorized"}"#)
            || m.contains(r#"trackgate_delivery_probes_total{result="down"}"#),
        "{m}"
    );
    let pending: serde_json::Value = support::plain_client()
        .get(gw.admin("/outbox/pending"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        pending
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["attempts"] == 0),
        "a refused sign-in is not the records' fault: {pending}"
    );
}

/// `/readyz` once `wanted` (status, text) holds; its status and text.
async fn readyz_until(
    gw: &support::TestGateway,
    what: &str,
    wanted: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    support::wait_for(Duration::from_secs(20), what, async || {
        let r = support::plain_client()
            .get(gw.admin("/readyz"))
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        let text = r.text().await.ok()?;
        wanted(status, &text).then_some((status, text))
    })
    .await
}

/// `trackgate check --online` with the Dataverse sink at `dv` (its configuration edited by
/// `edit`); the exit code and what it printed on stderr.
async fn check_online(
    dv: &trackgate::simulate::DataverseSimulator,
    edit: impl FnOnce(String) -> String,
) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(dir.path(), &edit(dataverse_config(dv, "")));
    // The simulator answers on this runtime while the command runs on a blocking thread.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_trackgate"))
            .args(["check", "--online", "--config"])
            .arg(&config)
            .env_remove("TRACKGATE_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_passes_a_ready_environment_and_names_the_key_of_each_problem() {
    let dv = dataverse().await;
    let (code, said) = check_online(&dv, |c| c).await;
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("online: the environment is ready for delivery"),
        "{said}"
    );
    assert!(said.contains("ok: WhoAmI"), "{said}");

    let (code, said) = check_online(&dv, |c| c.replace(CLIENT_SECRET, "an-expired-secret")).await;
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("invalid_client"), "{said}");
    assert!(said.contains("key: crm.dataverse.client_secret"), "{said}");
    assert!(
        !said.contains("an-expired-secret"),
        "never the secret: {said}"
    );

    // Alex's user row is gone from the environment: every email of that mailbox would fail.
    let alex: uuid::Uuid = "00000000-0000-4000-8000-0000000000a1".parse().unwrap();
    assert!(dv.remove_record("systemusers", alex));
    let (code, said) = check_online(&dv, |c| c).await;
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains(&format!("({alex}) does not exist in the environment"))
            && said.contains("key: directory.file"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_names_a_missing_privilege_and_the_key_that_needs_it() {
    let dv = trackgate::simulate::DataverseSimulator::start(
        "127.0.0.1:0".parse().unwrap(),
        trackgate::simulate::DataverseOptions {
            credentials: Some((super::delivery::CLIENT_ID.into(), CLIENT_SECRET.into())),
            seed: Some(toml::from_str(trackgate::directory::file::EMBEDDED_EXAMPLE).unwrap()),
            withheld_privileges: vec!["prvActOnBehalfOfAnotherUser".into()],
            ..trackgate::simulate::DataverseOptions::default()
        },
    )
    .await
    .unwrap();
    let (code, said) = check_online(&dv, |c| c).await;
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("lacks prvActOnBehalfOfAnotherUser")
            && said.contains("key: crm.dataverse.act_as_owner"),
        "{said}"
    );
    let (code, said) = check_online(&dv, |c| {
        c.replace(
            "[crm.dataverse]\n",
            "[crm.dataverse]\nact_as_owner = false\n",
        )
    })
    .await;
    assert_eq!(
        code, 0,
        "without impersonation the privilege is not needed: {said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_check_reports_a_missing_directory_user_in_readyz_without_stopping_traffic() {
    let alex: uuid::Uuid = "00000000-0000-4000-8000-0000000000a1".parse().unwrap();
    let Pipeline {
        sim: _sim,
        dv: _dv,
        gw,
        client: _,
    } = pipeline_with(|_, dv| {
        assert!(dv.remove_record("systemusers", alex));
        dataverse_config(dv, "")
    })
    .await;
    let (status, text) = readyz_until(&gw, "readyz to carry the check's finding", |_, text| {
        text.contains("crm check: directory.file")
    })
    .await;
    let detail = (status, text);
    assert_eq!(
        detail.0, 200,
        "a finding is reported, not a reason to stop traffic: {}",
        detail.1
    );
    assert!(
        !detail.1.contains("Alex"),
        "names stay out of readyz: {}",
        detail.1
    );
}
