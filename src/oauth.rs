//! OAuth 2.0 client credentials (Entra ID v2 token endpoint) for the service calls: one token
//! per scope, cached until shortly before it expires, shared by every request. Used by the
//! Exchange service client (enrichment) and the Dataverse sink. Secrets and tokens never reach a log.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use crate::common::ClientCredentials;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("token endpoint refused the client credentials (HTTP {status}: {error})")]
    Refused { status: u16, error: String },
    #[error("token endpoint answered without an access token")]
    Malformed,
}

#[derive(Debug)]
pub struct TokenSource {
    http: reqwest::Client,
    credentials: ClientCredentials,
    cached: Mutex<Option<(String, Instant)>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    error: Option<String>,
}

impl TokenSource {
    pub fn new(http: reqwest::Client, credentials: ClientCredentials) -> TokenSource {
        TokenSource {
            http,
            credentials,
            cached: Mutex::new(None),
        }
    }

    /// A valid access token: the cached one, or a new one.
    pub async fn token(&self) -> Result<String, TokenError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, renew_at)) = cached.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let c = &self.credentials;
        let response = self
            .http
            .post(&c.token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", c.client_id.as_str()),
                ("client_secret", c.client_secret.expose()),
                ("scope", c.scope.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                TokenError::Unreachable(if e.is_timeout() {
                    "timed out".into()
                } else {
                    "cannot connect".into()
                })
            })?;
        let status = response.status().as_u16();
        let answer: TokenAnswer = response.json().await.map_err(|_| TokenError::Malformed)?;
        if !(200..300).contains(&status) {
            return Err(TokenError::Refused {
                status,
                error: answer.error.unwrap_or_default(),
            });
        }
        let token = answer.access_token.ok_or(TokenError::Malformed)?;
        let lifetime = answer
            .expires_in
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .unwrap_or(3600);
        // Renew five minutes early (or halfway, for short-lived tokens).
        let margin = (lifetime / 2).min(300);
        let renew_at = Instant::now() + Duration::from_secs(lifetime.saturating_sub(margin));
        *cached = Some((token.clone(), renew_at));
        Ok(token)
    }

    /// Forgets the cached token (after a 401).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }
}
