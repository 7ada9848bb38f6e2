//! How the simulated Exchange decides who is calling: Basic against the configured logon or the
//! store's accounts, bearer tokens whose claims name the caller (signature not checked, as
//! documented), and connection-bound NTLMv2 verified against the accounts' passwords.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use http::Request;
use http::header::{self, HeaderValue};

use super::exchange::{AuthMode, SimBody};
use super::mailbox::Store;
use super::ntlm::{self, NtlmMessage};

/// NTLM progress on one connection.
#[derive(Clone)]
pub enum NtlmState {
    None,
    Challenged([u8; 8]),
    Authenticated(String),
}

/// What authentication needs to know about the server.
pub struct Verifier<'a> {
    pub mode: &'a AuthMode,
    pub store: Option<&'a Store>,
    pub passwords: &'a [(String, String)],
    pub ntlm_authenticated: &'a AtomicU64,
}

impl Verifier<'_> {
    /// The password of a logon: `DOMAIN\user`, or `user@domain`, or a mailbox address.
    fn password_of(&self, domain: &str, user: &str) -> Option<(String, String)> {
        let qualified = if domain.is_empty() {
            user.to_owned()
        } else {
            format!("{domain}\\{user}")
        };
        let same = |logon: &str| {
            logon.eq_ignore_ascii_case(&qualified)
                || (domain.is_empty() && logon.eq_ignore_ascii_case(user))
        };
        if let Some((logon, password)) = self.passwords.iter().find(|(l, _)| same(l)) {
            return Some((logon.clone(), password.clone()));
        }
        let store = self.store?.lock();
        store
            .accounts()
            .iter()
            .find(|a| same(&a.logon) || (domain.is_empty() && a.mailbox.eq_ignore_ascii_case(user)))
            .map(|a| (a.logon.clone(), a.password.clone()))
    }

    /// `Ok(caller)` when the request may proceed, `Err(401 response)` otherwise.
    pub fn check<B>(
        &self,
        ntlm_state: &Mutex<NtlmState>,
        req: &Request<B>,
    ) -> Result<Option<String>, Box<http::Response<SimBody>>> {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.mode {
            AuthMode::None => Ok(None),
            AuthMode::Basic { user, password } => self.basic(auth, Some((user, password))),
            // The store's accounts may always use Basic: the gateway's own service client
            // (enrichment) signs in that way whatever the users' clients use.
            AuthMode::Bearer | AuthMode::Ntlm if auth.is_some_and(|a| a.starts_with("Basic ")) => {
                self.basic(auth, None)
            }
            AuthMode::Bearer => match auth.and_then(|a| a.strip_prefix("Bearer ")) {
                Some(token) if !token.trim().is_empty() => Ok(bearer_caller(token.trim())),
                _ => Err(Box::new(challenge("Bearer"))),
            },
            AuthMode::Ntlm => self.ntlm(ntlm_state, auth),
        }
    }

    /// Basic against the configured logon (if any) or the accounts.
    fn basic(
        &self,
        auth: Option<&str>,
        configured: Option<(&String, &String)>,
    ) -> Result<Option<String>, Box<http::Response<SimBody>>> {
        let given = auth
            .and_then(|a| a.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok());
        let Some((given_user, given_password)) = given.as_deref().and_then(|g| g.split_once(':'))
        else {
            return Err(Box::new(challenge("Basic realm=\"simulated exchange\"")));
        };
        let matches_configured =
            configured.is_some_and(|(u, p)| given_user == u && given_password == p);
        let (domain, name) = given_user.split_once('\\').unwrap_or(("", given_user));
        let matches_account = self
            .password_of(domain, name)
            .is_some_and(|(_, p)| p == given_password);
        if matches_configured || matches_account {
            Ok(Some(given_user.to_owned()))
        } else {
            Err(Box::new(challenge("Basic realm=\"simulated exchange\"")))
        }
    }

    fn ntlm(
        &self,
        state: &Mutex<NtlmState>,
        auth: Option<&str>,
    ) -> Result<Option<String>, Box<http::Response<SimBody>>> {
        let Ok(mut state) = state.lock() else {
            return Err(Box::new(challenge("NTLM")));
        };
        match (auth.and_then(ntlm::parse_header), state.clone()) {
            (Some(NtlmMessage::Negotiate), _) => {
                let nonce: [u8; 8] = rand::random();
                *state = NtlmState::Challenged(nonce);
                Err(Box::new(challenge(&ntlm::challenge_header(nonce))))
            }
            (
                Some(NtlmMessage::Authenticate {
                    domain,
                    user,
                    nt_response,
                }),
                NtlmState::Challenged(nonce),
            ) => {
                let verified = self.password_of(&domain, &user).filter(|(_, password)| {
                    ntlm::verify_ntlmv2(nonce, &domain, &user, password, &nt_response)
                });
                match verified {
                    Some((logon, _)) => {
                        *state = NtlmState::Authenticated(logon.clone());
                        self.ntlm_authenticated.fetch_add(1, Ordering::Relaxed);
                        Ok(Some(logon))
                    }
                    None => {
                        *state = NtlmState::None;
                        Err(Box::new(challenge("NTLM")))
                    }
                }
            }
            (_, NtlmState::Authenticated(who)) => Ok(Some(who)),
            _ => {
                *state = NtlmState::None;
                Err(Box::new(challenge("NTLM")))
            }
        }
    }
}

/// The caller a bearer token names: a JWT's `upn`, `preferred_username` or `unique_name`. The
/// signature is not checked — the simulator trusts its callers, as documented.
fn bearer_caller(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    ["upn", "preferred_username", "unique_name", "email"]
        .iter()
        .find_map(|k| claims.get(k).and_then(|v| v.as_str()))
        .map(str::to_owned)
}

pub fn challenge(www_authenticate: &str) -> http::Response<SimBody> {
    use http_body_util::BodyExt as _;
    let mut r = http::Response::new(
        http_body_util::Empty::new()
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = http::StatusCode::UNAUTHORIZED;
    if let Ok(v) = HeaderValue::from_str(www_authenticate) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_tokens_claims_name_the_caller() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            br#"{"upn":"alex.seller@contoso.example","aud":"https://outlook.office365.com"}"#,
        );
        let token = format!("eyJhbGciOiJub25lIn0.{claims}.");
        assert_eq!(
            bearer_caller(&token).as_deref(),
            Some("alex.seller@contoso.example")
        );
        assert_eq!(bearer_caller("opaque-token"), None);
    }
}
