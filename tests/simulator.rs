use std::time::{Duration, Instant};

use trackgate::simulate::{AuthMode, Faults, FixtureSet, SimulatorOptions};

use crate::support;

const GET_FOLDER: &str = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:GetFolder xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"/></s:Body></s:Envelope>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_ews_by_operation_and_graph_by_route() {
    let sim = support::simulator("sim").await;
    let client = support::plain_client();
    let r = client
        .post(format!("{}/ews/exchange.asmx", sim.url()))
        .body(GET_FOLDER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("GetFolderResponse"));
    let r = client
        .post(format!("{}/EWS/Exchange.asmx", sim.url()))
        .body(GET_FOLDER.replace("GetFolder", "NoSuchOperation"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert!(r.text().await.unwrap().contains("ErrorInvalidRequest"));
    let r = client
        .get(format!("{}/v1.0/users/someone/messages", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{}/nothing/here", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injects_throttling_server_busy_latency_and_resets() {
    let sim = support::simulator("sim").await;
    let client = support::plain_client();
    let url = format!("{}/v1.0/me/messages", sim.url());

    sim.set_faults(Faults {
        status: Some(429),
        retry_after: Some("2.5".into()),
        ..Faults::default()
    });
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2.5");
    sim.set_faults(Faults::default());

    let r = client
        .post(format!("{}/EWS/Exchange.asmx", sim.url()))
        .header("x-sim-fault", "server-busy")
        .body(GET_FOLDER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("ErrorServerBusy") && body.contains("BackOffMilliseconds"),
        "{body}"
    );

    let started = Instant::now();
    let r = client
        .get(&url)
        .header("x-sim-fault", "latency=300ms")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let r = client.get(&url).header("x-sim-fault", "reset").send().await;
    assert!(r.is_err(), "a reset must not produce a response");

    // Control over HTTP, as tools outside the process use it.
    let r = client
        .post(format!("{}/_sim/faults", sim.url()))
        .body(r#"{"status":503,"retry_after":"1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demands_basic_and_bearer_auth() {
    let mut options = SimulatorOptions::new("sim", FixtureSet::embedded().unwrap());
    options.auth = AuthMode::Bearer;
    let bearer = support::simulator_with(options.clone()).await;
    options.auth = AuthMode::Basic {
        user: "alex".into(),
        password: "pw".into(),
    };
    let basic = support::simulator_with(options).await;
    let client = support::plain_client();

    let r = client
        .get(format!("{}/v1.0/me/messages", bearer.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["www-authenticate"].to_str().unwrap()
        ),
        (401, "Bearer")
    );
    let r = client
        .get(format!("{}/v1.0/me/messages", bearer.url()))
        .bearer_auth("eyJ0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let r = client
        .get(format!("{}/v1.0/me/messages", basic.url()))
        .basic_auth("alex", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(format!("{}/v1.0/me/messages", basic.url()))
        .basic_auth("alex", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-sim-user"].to_str().unwrap()
        ),
        (200, "alex")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls_with_http2() {
    let dir = tempfile::tempdir().unwrap();
    trackgate::tls::install_crypto_provider();
    let certs = trackgate::tls::generate_dev_certs(dir.path()).unwrap();
    let mut options = SimulatorOptions::new("sim", FixtureSet::embedded().unwrap());
    options.tls = Some(
        trackgate::tls::server_config(
            &certs.cert,
            &certs.key,
            &[b"h2".to_vec(), b"http/1.1".to_vec()],
        )
        .unwrap(),
    );
    let sim = support::simulator_with(options).await;
    let client = support::client(&certs.ca, true);
    let url = format!(
        "{}/v1.0/me/messages",
        sim.url().replace("127.0.0.1", "localhost")
    );
    let r = client.get(url).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_2)
    );
}
