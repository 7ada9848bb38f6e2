//! What the benches share: the scale knob, waiting on a condition, percentiles, and delivery
//! to the Dataverse simulator with the embedded directory.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use trackgate::crm::{DataverseSettings, DataverseSink, FieldTable, Sink};
use trackgate::delivery::{Delivery, DeliveryMetrics, DeliverySettings};
use trackgate::directory::DirectoryHandle;
use trackgate::outbox::Outbox;
use trackgate::rules::{Decision, Engine, MemoryLimits, RulesLimits};
use trackgate::simulate::DataverseSimulator;

/// A realistic tracked incoming email: sender contact, two recipients, regarding account;
/// `name` makes its item id and Message-ID its own.
pub fn decision(name: &str, crm_id: uuid::Uuid) -> Decision {
    serde_json::from_value(serde_json::json!({
        "verdict": "track", "reason": "sender_contact", "observation": "message_seen",
        "operation": "GetItem", "mailbox": "alex.seller@contoso.example",
        "user": {"entity": "systemuser", "id": "00000000-0000-4000-8000-0000000000a1"},
        "item_id": format!("AAMkADEz{name}AAA="),
        "internet_message_id": format!("{name}@mail.fabrikam.example"),
        "subject": format!("Quote {name} for 40 seats"), "direction": "incoming",
        "from": {"address": "pat.buyer@fabrikam.example", "name": "Pat Buyer",
                 "records": [{"entity": "contact", "id": "00000000-0000-4000-8000-0000000000c1"}]},
        "to": [{"address": "alex.seller@contoso.example",
                "records": [{"entity": "systemuser", "id": "00000000-0000-4000-8000-0000000000a1"}]},
               {"address": "someone@else.example"}],
        "regarding": {"entity": "account", "id": "00000000-0000-4000-8000-0000000000c2"},
        "crm_id": crm_id,
    }))
    .expect("a valid decision")
}

/// `TRACKGATE_BENCH_SCALE` (default 1.0): CI runs the benches at 0.01.
pub fn scale() -> f64 {
    std::env::var("TRACKGATE_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

/// Waits (polling, with a deadline) until `done` holds. (A bench, not a test: it measures.)
pub async fn until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `p` quantile (0–1) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

pub fn count(base: f64) -> usize {
    ((base * scale()) as usize).max(20)
}

/// Delivery from `outbox` to the simulator, 8 workers, `batch_size` records per request.
pub fn delivery_to(
    outbox: Arc<dyn Outbox>,
    dv: &DataverseSimulator,
    batch_size: usize,
) -> Arc<Delivery> {
    let directory = trackgate::directory::file::parse_and_build(
        trackgate::directory::file::EMBEDDED_EXAMPLE,
        "bench",
        false,
    )
    .unwrap();
    let engine = Arc::new(Engine::new(
        DirectoryHandle::new(directory),
        MemoryLimits {
            max_bytes: 1 << 20,
            max_tracked: 1000,
        },
        RulesLimits::default(),
    ));
    let mut registry = prometheus_client::registry::Registry::default();
    let sink = Sink::Dataverse(Box::new(DataverseSink::new(
        reqwest::Client::new(),
        DataverseSettings {
            url: dv.url(),
            api_path: "/api/data/v9.2".into(),
            credentials: None,
            act_as_owner: false,
            batch_size,
            concurrency: 8,
            timeout: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(5),
            columns: FieldTable::embedded().email,
            max_requests_per_window: None,
        },
    )));
    Delivery::new(
        outbox,
        Arc::new(sink),
        None,
        engine,
        DeliverySettings {
            concurrency: 8,
            batch_size,
            ..DeliverySettings::default()
        },
        DeliveryMetrics::register(&mut registry),
    )
}
