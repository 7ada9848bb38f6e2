use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autodiscover_answers_point_clients_at_the_gateway() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(
        &sim.url(),
        "[autodiscover]\nexchange_hosts = [\"mail.contoso.example\", \"exch01.corp.contoso.example\"]\n",
    )
    .await;
    let client = support::client(&gw.ca(), false);
    let me = gw.localhost_url("");

    // POX
    let r = client
        .post(gw.localhost_url("/autodiscover/autodiscover.xml"))
        .header("accept-encoding", "gzip")
        .body("<Autodiscover/>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let declared: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = r.text().await.unwrap();
    assert_eq!(declared, body.len(), "Content-Length fixed after rewriting");
    assert!(
        body.contains(&format!("<EwsUrl>{me}/EWS/Exchange.asmx</EwsUrl>")),
        "{body}"
    );
    assert!(body.contains(&format!("{me}/owa/")), "{body}");
    assert!(!body.contains("mail.contoso.example/"), "{body}");

    // SOAP, with an internal name too
    let r = client
        .post(gw.localhost_url("/autodiscover/autodiscover.svc"))
        .body("<s:Envelope/>")
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert_eq!(
        body.matches(&format!("{me}/EWS/Exchange.asmx")).count(),
        2,
        "{body}"
    );

    // JSON v2 with escaped slashes stays valid JSON
    let r = client
        .get(gw.localhost_url("/autodiscover/autodiscover.json?Email=a%40b&Protocol=EWS"))
        .send()
        .await
        .unwrap();
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["Url"], format!("{me}/EWS/Exchange.asmx"));

    // A redirect's Location
    let no_redirects = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(gw.ca()).unwrap()).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .get(gw.localhost_url("/autodiscover/autodiscover.xml"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"],
        format!("{me}/autodiscover/autodiscover.xml").as_str()
    );

    // EWS bodies are never rewritten.
    let r = client
        .post(gw.localhost_url("/EWS/Exchange.asmx"))
        .body(
            std::fs::read(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("fixtures/exchange/ews-getitem-message/request.xml"),
            )
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("alex.seller@contoso.example")
    );
    gw.gateway.shutdown().await;
}

/// The POX answer's EwsUrl through a gateway with this `[autodiscover]` section.
async fn ews_url_with(section: &str) -> String {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), &format!("[autodiscover]\n{section}")).await;
    let client = support::client(&gw.ca(), false);
    let r = client
        .post(gw.localhost_url("/autodiscover/autodiscover.xml"))
        .body("<A/>")
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    gw.gateway.shutdown().await;
    let start = body.find("<EwsUrl>").expect("an EwsUrl") + "<EwsUrl>".len();
    body[start..start + body[start..].find('<').unwrap()].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_external_url_wins_and_rewriting_can_be_off() {
    let hosts = "exchange_hosts = [\"mail.contoso.example\"]\n";
    assert_eq!(
        ews_url_with(&format!(
            "external_url = \"https://mail.example.com\"\n{hosts}"
        ))
        .await,
        "https://mail.example.com/EWS/Exchange.asmx"
    );
    assert_eq!(
        ews_url_with(&format!("rewrite = false\n{hosts}")).await,
        "https://mail.contoso.example/EWS/Exchange.asmx"
    );
}
