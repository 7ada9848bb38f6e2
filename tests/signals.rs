use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support::{self, GatewayProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_switches_upstream_without_a_failed_request() {
    let a = support::simulator("a").await;
    let b = support::simulator("b").await;
    let dir = tempfile::tempdir().unwrap();
    let config =
        support::write_config(dir.path(), &format!("[upstreams]\news = \"{}\"\n", a.url()));
    let gw = GatewayProcess::start(&config);
    let client = support::client(&dir.path().join("data/certs/dev-ca.pem"), false);
    let url = format!(
        "{}/v1.0/me/messages",
        gw.proxy.replace("127.0.0.1", "localhost")
    );

    // Steady load through the reload.
    let stop = Arc::new(AtomicBool::new(false));
    let (failures, from_a, from_b) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        let (failures, from_a, from_b) = (failures.clone(), from_a.clone(), from_b.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let who = r.headers()["x-sim-id"].to_str().unwrap().to_owned();
                        if r.bytes().await.is_err() {
                            failures.fetch_add(1, Ordering::Relaxed);
                        } else if who == "a" {
                            from_a.fetch_add(1, Ordering::Relaxed);
                        } else {
                            from_b.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    support::wait_for(Duration::from_secs(30), "traffic to a", async || {
        (from_a.load(Ordering::Relaxed) > 50).then_some(())
    })
    .await;
    support::write_config(dir.path(), &format!("[upstreams]\news = \"{}\"\n", b.url()));
    gw.signal("HUP");
    support::wait_for(Duration::from_secs(30), "traffic to b", async || {
        (from_b.load(Ordering::Relaxed) > 50).then_some(())
    })
    .await;

    // A broken file on the next SIGHUP keeps the running configuration.
    std::fs::write(&config, "[upstreams]\news = \"not a url\"\n").unwrap();
    gw.signal("HUP");
    let admin = support::plain_client();
    support::wait_for(
        Duration::from_secs(30),
        "the failed reload to be counted",
        async || {
            let text = admin
                .get(format!("{}/metrics", gw.admin))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains(r#"trackgate_config_reloads_total{kind="failed"} 1"#)
                .then_some(())
        },
    )
    .await;
    let before = from_b.load(Ordering::Relaxed);
    support::wait_for(Duration::from_secs(30), "traffic to continue", async || {
        (from_b.load(Ordering::Relaxed) > before + 50).then_some(())
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let sim = support::simulator("sim").await;
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(
        dir.path(),
        &format!(
            "[upstreams]\news = \"{}\"\n[shutdown]\ndrain_delay = \"500ms\"\ngrace_period = \"20s\"\n",
            sim.url()
        ),
    );
    let mut gw = GatewayProcess::start(&config);
    let client = support::client(&dir.path().join("data/certs/dev-ca.pem"), false);
    let url = format!(
        "{}/v1.0/me/messages",
        gw.proxy.replace("127.0.0.1", "localhost")
    );
    let admin = support::plain_client();
    let ready = admin
        .get(format!("{}/readyz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    let in_flight = tokio::spawn({
        let client = client.clone();
        async move {
            let r = client
                .get(url)
                .header("x-sim-fault", "latency=2s")
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap().len())
        }
    });
    support::wait_for(
        Duration::from_secs(10),
        "the request to reach the upstream",
        async || (sim.stats().requests >= 1).then_some(()),
    )
    .await;
    gw.signal("TERM");
    support::wait_for(
        Duration::from_secs(10),
        "readiness to turn false",
        async || {
            let r = admin
                .get(format!("{}/readyz", gw.admin))
                .send()
                .await
                .ok()?;
            (r.status() == 503).then_some(())
        },
    )
    .await;
    let (status, len) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert!(len > 0);
    let exit = gw.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "exit status {exit:?}");
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(support::addr_of(&gw.proxy)).is_err());
}
