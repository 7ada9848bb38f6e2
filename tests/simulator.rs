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

/// A simulator on the embedded mailbox store, with no authentication.
async fn store_simulator() -> trackgate::simulate::ExchangeSimulator {
    let store = std::sync::Arc::new(trackgate::simulate::mailbox::Store::embedded().unwrap());
    support::simulator_with(
        SimulatorOptions::new("store", FixtureSet::embedded().unwrap()).with_store(store),
    )
    .await
}

fn envelope(body: &str) -> String {
    format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Header><t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>jo.support@contoso.example</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></s:Header><s:Body>{body}</s:Body></s:Envelope>"#
    )
}

/// POSTs an EWS envelope and returns the answer's text.
async fn post_ews(client: &reqwest::Client, url: &str, body: String) -> String {
    let r = client.post(url).body(body).send().await.unwrap();
    r.text().await.unwrap()
}

/// Reads chunks of a streaming answer until one contains `needle`.
async fn chunk_with(response: &mut reqwest::Response, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no chunk with {needle}");
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("a chunk within 10 s")
            .unwrap()
            .expect("the stream is open");
        let text = String::from_utf8_lossy(&chunk).into_owned();
        if text.contains(needle) {
            return text;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_delivered_from_outside_streams_to_a_subscription_and_lands_in_the_inbox() {
    let sim = store_simulator().await;
    let client = support::plain_client();
    let ews = format!("{}/EWS/Exchange.asmx", sim.url());
    let subscribed = post_ews(&client, &ews, envelope(
        r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#,
    ))
    .await;
    let id = subscribed
        .split("<m:SubscriptionId>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .expect("a subscription id")
        .to_owned();
    let mut stream = client
        .post(&ews)
        .body(envelope(&format!(
            "<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{id}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>1</m:ConnectionTimeout></m:GetStreamingEvents>"
        )))
        .send()
        .await
        .unwrap();
    chunk_with(&mut stream, "<m:ConnectionStatus>OK</m:ConnectionStatus>").await;

    // Mail from outside, with no client connected to Jo's mailbox.
    let delivered = client
        .post(format!("{}/_sim/deliver", sim.url()))
        .json(&serde_json::json!({
            "from": "Pat Buyer <pat.buyer@fabrikam.example>",
            "to": ["jo.support@contoso.example"],
            "subject": "Printer on fire",
            "body": "Please help.",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(delivered.status(), 200);
    let delivered: serde_json::Value = delivered.json().await.unwrap();
    let item_id = delivered["delivered"][0]["item_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let event = chunk_with(&mut stream, "NewMailEvent").await;
    assert!(event.contains(&item_id), "{event}");

    // The message is in Jo's Inbox, unread, as GetItem shows it.
    let got = post_ews(&client, &ews, envelope(&format!(
        r#"<m:GetItem><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{item_id}"/></m:ItemIds></m:GetItem>"#
    )))
    .await;
    assert!(
        got.contains("<t:Subject>Printer on fire</t:Subject>"),
        "{got}"
    );
    assert!(got.contains("<t:IsRead>false</t:IsRead>"), "{got}");

    // Nobody to deliver to, or not a delivery at all: clear refusals.
    let nobody = client
        .post(format!("{}/_sim/deliver", sim.url()))
        .json(&serde_json::json!({"from": "a@b.example", "to": ["c@d.example"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(nobody.status(), 422);
    let garbage = client
        .post(format!("{}/_sim/deliver", sim.url()))
        .body("{\"to\": 3}")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_answers_server_busy_with_a_back_off_when_told() {
    let sim = store_simulator().await;
    let client = support::plain_client();
    let r = client
        .post(format!("{}/EWS/Exchange.asmx", sim.url()))
        .header("x-sim-fault", "server-busy")
        .body(envelope("<m:GetFolder/>"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("ErrorServerBusy") && text.contains("BackOffMilliseconds"),
        "{text}"
    );
    sim.stop().await;
}
