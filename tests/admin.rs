use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_without_personal_data() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "").await;
    let client = support::client(&gw.ca(), false);
    let admin = support::plain_client();
    assert_eq!(
        admin
            .get(gw.admin("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        admin
            .get(gw.admin("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        admin
            .post(gw.admin("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    assert_eq!(
        admin.get(gw.admin("/nope")).send().await.unwrap().status(),
        404
    );

    let r = client
        .post(gw.localhost_url("/EWS/Exchange.asmx"))
        .header("x-anchormailbox", "alex.seller@contoso.example")
        .header("authorization", "Basic YWxleDpzZWNyZXQ=")
        .body(r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><GetFolder xmlns="http://schemas.microsoft.com/exchange/services/2006/messages"/></s:Body></s:Envelope>"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let text = admin
        .get(gw.admin("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        r#"trackgate_requests_total{route="ews",status_class="2xx"} 1"#,
        "trackgate_request_duration_seconds_bucket",
        "trackgate_connections_active",
        "trackgate_upstream_connects_total",
        "trackgate_upstream_connection_reuse_ratio",
        "trackgate_pinned_connections_active",
        r#"trackgate_bytes_total{direction="upstream_to_client"}"#,
        "trackgate_build_info",
    ] {
        assert!(text.contains(expected), "missing {expected}:\n{text}");
    }
    for private in ["alex.seller", "contoso", "YWxleDpzZWNyZXQ"] {
        assert!(!text.contains(private), "{private} leaked into metrics");
    }
    let proxy = gw.gateway.proxy().clone();
    gw.gateway.shutdown().await;
    assert!(!proxy.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_endpoint_answers_in_structured_json() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "").await;
    let body = support::get_text(&gw.admin("/directory")).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["source"], "file", "{body}");
    // Counts are numbers a script can read, not a debug string.
    assert_eq!(json["counts"]["users"], 4, "{body}");
    assert_eq!(json["counts"]["mailboxes"], 4, "{body}");
    assert!(
        json["counts"]["records"].as_u64().is_some_and(|n| n > 0),
        "{body}"
    );
    gw.gateway.shutdown().await;
}
