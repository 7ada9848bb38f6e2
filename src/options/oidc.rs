//! Signing in with OpenID Connect (Entra ID in production): the authorization code flow with
//! PKCE (S256), its state bound to the browser by a cookie and remembered here with the nonce
//! and verifier; the ID token's RS256 signature checked against the issuer's published keys
//! (fetched again once when a key id is new: keys rotate), and its issuer, audience, lifetime
//! and nonce checked. Provider answers are bounded in size and time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::session::{cookie, random_token};
use crate::common::secret::same_secret;
use crate::config::OidcConfig;

/// The cookie that binds a sign-in in progress to its browser. `Lax`: the provider sends the
/// browser back with a top-level GET from another site, which a `Strict` cookie would miss.
pub const STATE_COOKIE: &str = "trackgate_oidc";
/// Sign-ins in progress at most, and how long one may take.
const MAX_PENDING: usize = 10_000;
const PENDING_LIFETIME: Duration = Duration::from_secs(600);
/// Largest provider answer read, and how long the provider may take.
const MAX_ANSWER: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);
/// Discovery and keys are fetched again after this long.
const PROVIDER_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider is unreachable: {0}")]
    Unreachable(String),
    #[error("the identity provider's answer is not readable: {0}")]
    Malformed(String),
    #[error("the identity provider refused: {0}")]
    Refused(String),
    #[error("this sign-in was not started here or has expired; start again")]
    UnknownState,
    #[error("the ID token is not valid: {0}")]
    InvalidToken(String),
}

/// Who the provider says signed in.
#[derive(Debug, Clone)]
pub struct Signed {
    /// `preferred_username` (or `upn`, or `email`), lower case.
    pub principal: String,
    /// The Entra object id (`oid`), another name the directory knows users by.
    pub object_id: Option<String>,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Jwk {
    #[serde(default)]
    kid: Option<String>,
    kty: String,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

struct Provider {
    metadata: Metadata,
    keys: Vec<Jwk>,
    fetched: Instant,
}

struct Pending {
    nonce: String,
    verifier: String,
    started: Instant,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    upn: Option<String>,
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

pub struct Oidc {
    config: OidcConfig,
    http: reqwest::Client,
    provider: tokio::sync::Mutex<Option<Provider>>,
    pending: Mutex<HashMap<String, Pending>>,
}

impl Oidc {
    pub fn new(config: OidcConfig, http: reqwest::Client) -> Oidc {
        Oidc {
            config,
            http,
            provider: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Cookies carry `Secure` when the page is reached over HTTPS.
    pub fn secure_cookies(&self) -> bool {
        self.config.redirect_uri.starts_with("https://")
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OidcError> {
        let response = self
            .http
            .get(url)
            .timeout(TIMEOUT)
            .send()
            .await
            .map_err(|e| OidcError::Unreachable(e.without_url().to_string()))?;
        read_json(response).await
    }

    /// Discovery and keys, fetched when missing, old, or (`fresh_keys`) when a key id is new.
    async fn provider(&self, fresh_keys: bool) -> Result<(Metadata, Vec<Jwk>), OidcError> {
        let mut provider = self.provider.lock().await;
        let stale = provider.as_ref().is_none_or(|p| {
            p.fetched.elapsed() > PROVIDER_LIFETIME
                || (fresh_keys && p.fetched.elapsed() > Duration::from_secs(10))
        });
        if stale {
            let issuer = self.config.issuer.to_string();
            let discovery = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            let metadata: Metadata = self.get_json(&discovery).await?;
            let keys: JwkSet = self.get_json(&metadata.jwks_uri).await?;
            *provider = Some(Provider {
                metadata,
                keys: keys.keys,
                fetched: Instant::now(),
            });
        }
        let p = provider.as_ref().ok_or(OidcError::UnknownState)?;
        Ok((p.metadata.clone(), p.keys.clone()))
    }

    /// Where to send the browser to sign in, and the cookie that binds the sign-in to it.
    pub async fn begin(&self) -> Result<(String, String), OidcError> {
        let (metadata, _) = self.provider(false).await?;
        let (state, nonce, verifier) = (random_token(), random_token(), random_token());
        let challenge = B64.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            verifier.as_bytes(),
        ));
        if let Ok(mut pending) = self.pending.lock() {
            pending.retain(|_, p| p.started.elapsed() < PENDING_LIFETIME);
            // Full (anyone may start sign-ins): the oldest unfinished one gives way.
            if pending.len() >= MAX_PENDING
                && let Some(oldest) = pending
                    .iter()
                    .min_by_key(|(_, p)| p.started)
                    .map(|(k, _)| k.clone())
            {
                pending.remove(&oldest);
            }
            pending.insert(
                state.clone(),
                Pending {
                    nonce: nonce.clone(),
                    verifier,
                    started: Instant::now(),
                },
            );
        }
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.config.client_id)
            .append_pair("response_type", "code")
            .append_pair("response_mode", "query")
            .append_pair("redirect_uri", &self.config.redirect_uri)
            .append_pair("scope", "openid profile email")
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let separator = if metadata.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let mut set = format!(
            "{STATE_COOKIE}={state}; Path=/options; HttpOnly; SameSite=Lax; Max-Age={}",
            PENDING_LIFETIME.as_secs()
        );
        if self.secure_cookies() {
            set.push_str("; Secure");
        }
        Ok((
            format!("{}{separator}{query}", metadata.authorization_endpoint),
            set,
        ))
    }

    /// The provider sent the browser back: redeems the code and checks the ID token.
    pub async fn finish(
        &self,
        headers: &http::HeaderMap,
        query: &str,
    ) -> Result<Signed, OidcError> {
        let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .take(50)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if let Some(error) = params.get("error") {
            // The code only: the description may quote what the person typed.
            return Err(OidcError::Refused(error.chars().take(100).collect()));
        }
        let state = params.get("state").ok_or(OidcError::UnknownState)?;
        let bound = cookie(headers, STATE_COOKIE)
            .is_some_and(|c| same_secret(c.as_bytes(), state.as_bytes()));
        let pending = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(state))
            .filter(|p| bound && p.started.elapsed() < PENDING_LIFETIME)
            .ok_or(OidcError::UnknownState)?;
        let code = params.get("code").ok_or(OidcError::UnknownState)?;
        let (metadata, _) = self.provider(false).await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", self.config.redirect_uri.as_str()),
            ("client_id", self.config.client_id.as_str()),
            ("code_verifier", pending.verifier.as_str()),
        ];
        let secret = self
            .config
            .client_secret
            .as_ref()
            .map(|s| s.expose().to_owned());
        if let Some(secret) = &secret {
            form.push(("client_secret", secret.as_str()));
        }
        let response = self
            .http
            .post(&metadata.token_endpoint)
            .form(&form)
            .timeout(TIMEOUT)
            .send()
            .await
            .map_err(|e| OidcError::Unreachable(e.without_url().to_string()))?;
        let answer: serde_json::Value = read_json(response).await?;
        let id_token = answer
            .get("id_token")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| OidcError::Malformed("no id_token in the token answer".into()))?;
        self.check(id_token, &pending.nonce).await
    }

    /// Checks an ID token's signature and claims.
    async fn check(&self, id_token: &str, nonce: &str) -> Result<Signed, OidcError> {
        let invalid = |e: &dyn std::fmt::Display| OidcError::InvalidToken(e.to_string());
        let header = jsonwebtoken::decode_header(id_token).map_err(|e| invalid(&e))?;
        if header.alg != Algorithm::RS256 {
            return Err(OidcError::InvalidToken(format!(
                "{:?} is not RS256",
                header.alg
            )));
        }
        let kid = header.kid.unwrap_or_default();
        let (mut metadata, mut keys) = self.provider(false).await?;
        if !keys.iter().any(|k| k.kid.as_deref() == Some(kid.as_str())) {
            (metadata, keys) = self.provider(true).await?;
        }
        let key = keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid.as_str()) && k.kty == "RSA")
            .ok_or_else(|| {
                OidcError::InvalidToken("signed with a key the issuer does not publish".into())
            })?;
        let (Some(n), Some(e)) = (&key.n, &key.e) else {
            return Err(OidcError::InvalidToken(
                "the issuer's key has no modulus".into(),
            ));
        };
        let decoding = DecodingKey::from_rsa_components(n, e).map_err(|e| invalid(&e))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[metadata.issuer.as_str()]);
        validation.set_audience(&[self.config.client_id.as_str()]);
        validation.validate_nbf = true;
        // Present, not only right when present.
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = 60;
        let claims = jsonwebtoken::decode::<Claims>(id_token, &decoding, &validation)
            .map_err(|e| invalid(&e))?
            .claims;
        if !claims
            .nonce
            .as_deref()
            .is_some_and(|n| same_secret(n.as_bytes(), nonce.as_bytes()))
        {
            return Err(OidcError::InvalidToken(
                "the nonce does not match this sign-in".into(),
            ));
        }
        // The object id is what identifies the person; the names are a fallback for a directory
        // without object ids (they can change, so they come second). `email` is never used.
        let principal = claims.preferred_username.or(claims.upn).unwrap_or_default();
        if principal.is_empty() && claims.oid.is_none() {
            return Err(OidcError::InvalidToken(
                "neither oid nor preferred_username".into(),
            ));
        }
        Ok(Signed {
            principal: principal.trim().to_lowercase(),
            object_id: claims.oid,
            groups: claims.groups,
        })
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, OidcError> {
    let status = response.status();
    let (body, more) = crate::common::read::read_capped(response, MAX_ANSWER).await;
    if more {
        return Err(OidcError::Malformed("answer too large".into()));
    }
    if !status.is_success() {
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        return Err(OidcError::Refused(code));
    }
    serde_json::from_slice(&body).map_err(|e| OidcError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
    use serde_json::json;

    use super::*;

    const ISSUER: &str = "https://login.example/tenant/v2.0";

    fn sign(key: &KeyPair, kid: &str, claims: &serde_json::Value) -> String {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
        let signed = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let mut signature = vec![0; key.public_modulus_len()];
        key.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            signed.as_bytes(),
            &mut signature,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        format!("{signed}.{}", B64.encode(signature))
    }

    fn oidc_trusting(key: &KeyPair) -> Oidc {
        let config = OidcConfig {
            issuer: ISSUER.parse().unwrap_or_else(|e| panic!("{e}")),
            client_id: "app".into(),
            client_secret: None,
            redirect_uri: "https://gw.example/options/callback".into(),
        };
        let oidc = Oidc::new(config, reqwest::Client::new());
        let public = key.public_key();
        let jwk = Jwk {
            kid: Some("k1".into()),
            kty: "RSA".into(),
            n: Some(B64.encode(public.modulus().big_endian_without_leading_zero())),
            e: Some(B64.encode(public.exponent().big_endian_without_leading_zero())),
        };
        oidc.provider
            .try_lock()
            .map(|mut p| {
                *p = Some(Provider {
                    metadata: Metadata {
                        issuer: ISSUER.into(),
                        authorization_endpoint: "https://login.example/authorize".into(),
                        token_endpoint: "https://login.example/token".into(),
                        jwks_uri: "https://login.example/keys".into(),
                    },
                    keys: vec![jwk],
                    fetched: Instant::now(),
                })
            })
            .unwrap_or_else(|_| panic!("fresh lock"));
        oidc
    }

    fn claims(change: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut c = json!({
            "iss": ISSUER, "aud": "app", "iat": now, "nbf": now, "exp": now + 600,
            "nonce": "n0", "preferred_username": "Alex@Contoso.example", "oid": "o1",
            "groups": ["g1"],
        });
        change(&mut c);
        c
    }

    #[tokio::test]
    async fn an_id_token_is_taken_only_when_signed_by_the_issuer_for_this_client_and_sign_in() {
        let key = KeyPair::generate(KeySize::Rsa2048).unwrap_or_else(|e| panic!("{e}"));
        let oidc = oidc_trusting(&key);
        let signed = oidc.check(&sign(&key, "k1", &claims(|_| {})), "n0").await;
        let signed = signed.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(signed.principal, "alex@contoso.example");
        assert_eq!(signed.object_id.as_deref(), Some("o1"));
        assert_eq!(signed.groups, vec!["g1"]);

        let refused = |token: String, nonce: &'static str| {
            let oidc = &oidc;
            async move { oidc.check(&token, nonce).await.is_err() }
        };
        assert!(refused(sign(&key, "k1", &claims(|_| {})), "another sign-in").await);
        assert!(
            refused(
                sign(&key, "k1", &claims(|c| c["aud"] = json!("other-app"))),
                "n0"
            )
            .await
        );
        assert!(
            refused(
                sign(
                    &key,
                    "k1",
                    &claims(|c| c["iss"] = json!("https://evil.example"))
                ),
                "n0"
            )
            .await
        );
        assert!(refused(sign(&key, "k1", &claims(|c| c["exp"] = json!(1000))), "n0").await);
        assert!(
            refused(sign(&key, "k9", &claims(|_| {})), "n0").await,
            "a key not published"
        );
        let other = KeyPair::generate(KeySize::Rsa2048).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            refused(sign(&other, "k1", &claims(|_| {})), "n0").await,
            "another key"
        );
        let unsigned = format!(
            "{}.{}.",
            B64.encode(json!({"alg": "none", "kid": "k1"}).to_string()),
            B64.encode(claims(|_| {}).to_string())
        );
        assert!(refused(unsigned, "n0").await);
    }
}
