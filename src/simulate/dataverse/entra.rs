//! The simulated tenant's interactive sign-in: an OpenID Connect provider shaped like Entra ID
//! v2 beside the token endpoint — discovery, the signing keys (a fresh RSA key per simulator),
//! `authorize` (a page to pick one of the tenant's users; no password), and the authorization
//! code grant with PKCE (S256) returning an RS256 ID token with `oid`, `preferred_username`,
//! `nonce` and `groups`. Codes are single-use and short-lived.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value, json};

use crate::common::text::xml_escape as esc;

const TENANT: &str = "/simulated-tenant";
const KID: &str = "simulated-signing-key";
const CODE_LIFETIME: Duration = Duration::from_secs(300);

/// What `authorize` granted, until the code is redeemed.
struct Grant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    user: Map<String, Value>,
    issued: Instant,
}

pub struct Entra {
    key: KeyPair,
    codes: Mutex<HashMap<String, Grant>>,
    /// Group object ids by the user's sign-in name, for `groups` claims.
    pub groups: Mutex<HashMap<String, Vec<String>>>,
}

/// An answer: status, headers, body.
pub type Answer = (u16, Vec<(String, String)>, String);

fn json_answer(status: u16, value: &Value) -> Answer {
    (
        status,
        vec![("Content-Type".into(), "application/json".into())],
        value.to_string(),
    )
}

fn form(text: &str) -> HashMap<String, String> {
    form_urlencoded::parse(text.as_bytes())
        .take(100)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The row's sign-in name: `domainname`, else the internal address.
fn sign_in_name(user: &Map<String, Value>) -> Option<String> {
    ["domainname", "internalemailaddress"]
        .iter()
        .find_map(|c| user.get(*c)?.as_str().filter(|s| s.contains('@')))
        .map(str::to_owned)
}

impl Entra {
    pub fn new() -> Entra {
        Entra {
            // A 2048-bit key is what Entra signs with; generating one cannot fail short of
            // the library being unusable, and then the simulator cannot start anyway.
            key: KeyPair::generate(KeySize::Rsa2048).unwrap_or_else(|e| panic!("RSA key: {e}")),
            codes: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
        }
    }

    /// Answers the sign-in paths under the tenant; `None` for any other path.
    pub fn handle(
        &self,
        base: &str,
        method: &http::Method,
        path: &str,
        query: &str,
        body: &[u8],
        users: &[Map<String, Value>],
    ) -> Option<Answer> {
        let rest = path.strip_prefix(TENANT)?;
        let issuer = format!("{base}{TENANT}/v2.0");
        Some(match (method.as_str(), rest) {
            ("GET", "/v2.0/.well-known/openid-configuration") => json_answer(
                200,
                &json!({
                    "issuer": issuer,
                    "authorization_endpoint": format!("{base}{TENANT}/oauth2/v2.0/authorize"),
                    "token_endpoint": format!("{base}{TENANT}/oauth2/v2.0/token"),
                    "jwks_uri": format!("{base}{TENANT}/discovery/v2.0/keys"),
                    "response_types_supported": ["code"],
                    "response_modes_supported": ["query"],
                    "scopes_supported": ["openid", "profile", "email"],
                    "subject_types_supported": ["pairwise"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "code_challenge_methods_supported": ["S256"],
                }),
            ),
            ("GET", "/discovery/v2.0/keys") => json_answer(200, &self.keys()),
            ("GET", "/oauth2/v2.0/authorize") => authorize_page(&form(query), users),
            ("POST", "/oauth2/v2.0/authorize") => {
                self.authorize(&form(&String::from_utf8_lossy(body)), users)
            }
            ("POST", "/oauth2/v2.0/token") => {
                let request = form(&String::from_utf8_lossy(body));
                if request.get("grant_type").map(String::as_str) != Some("authorization_code") {
                    return None;
                }
                self.redeem(&request, &issuer)
            }
            _ => return None,
        })
    }

    fn keys(&self) -> Value {
        use aws_lc_rs::signature::KeyPair as _;
        let public = self.key.public_key();
        json!({"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": KID,
            "n": B64.encode(public.modulus().big_endian_without_leading_zero()),
            "e": B64.encode(public.exponent().big_endian_without_leading_zero()),
        }]})
    }

    /// The user picked: a code for the client, back at its redirect URI.
    fn authorize(&self, request: &HashMap<String, String>, users: &[Map<String, Value>]) -> Answer {
        let get = |k: &str| request.get(k).cloned().unwrap_or_default();
        let login = get("login").to_lowercase();
        let Some(user) = users
            .iter()
            .find(|u| sign_in_name(u).is_some_and(|n| n.eq_ignore_ascii_case(&login)))
        else {
            return (
                400,
                Vec::new(),
                "AADSTS50034: the user account does not exist".into(),
            );
        };
        if get("code_challenge_method") != "S256" || get("code_challenge").is_empty() {
            return (
                400,
                Vec::new(),
                "AADSTS501491: PKCE with S256 is required".into(),
            );
        }
        let code = format!("{:032x}", rand::random::<u128>());
        if let Ok(mut codes) = self.codes.lock() {
            codes.retain(|_, g| g.issued.elapsed() < CODE_LIFETIME);
            codes.insert(
                code.clone(),
                Grant {
                    client_id: get("client_id"),
                    redirect_uri: get("redirect_uri"),
                    challenge: get("code_challenge"),
                    nonce: request.get("nonce").cloned(),
                    user: user.clone(),
                    issued: Instant::now(),
                },
            );
        }
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("code", &code)
            .append_pair("state", &get("state"))
            .finish();
        (
            302,
            vec![(
                "Location".into(),
                format!("{}?{query}", get("redirect_uri")),
            )],
            String::new(),
        )
    }

    /// The code for an ID token, once, for the client it was issued to, with its verifier.
    fn redeem(&self, request: &HashMap<String, String>, issuer: &str) -> Answer {
        let refused = |error: &str| json_answer(400, &json!({"error": error}));
        let code = request.get("code").cloned().unwrap_or_default();
        let Some(grant) = self.codes.lock().ok().and_then(|mut c| c.remove(&code)) else {
            return refused("invalid_grant");
        };
        let verifier = request.get("code_verifier").cloned().unwrap_or_default();
        let challenge = B64.encode(digest::digest(&digest::SHA256, verifier.as_bytes()));
        if grant.issued.elapsed() > CODE_LIFETIME
            || request.get("client_id") != Some(&grant.client_id)
            || request.get("redirect_uri") != Some(&grant.redirect_uri)
            || challenge != grant.challenge
        {
            return refused("invalid_grant");
        }
        let name = sign_in_name(&grant.user).unwrap_or_default();
        let groups = self
            .groups
            .lock()
            .ok()
            .and_then(|g| g.get(&name.to_lowercase()).cloned())
            .unwrap_or_default();
        let iat = now();
        let mut claims = json!({
            "iss": issuer, "aud": grant.client_id, "iat": iat, "nbf": iat, "exp": iat + 3600,
            "sub": format!("sub-{}", grant.user.get("systemuserid").and_then(Value::as_str).unwrap_or_default()),
            "oid": grant.user.get("azureactivedirectoryobjectid").cloned().unwrap_or(Value::Null),
            "preferred_username": name,
            "name": grant.user.get("fullname").cloned().unwrap_or(Value::Null),
            "tid": "simulated-tenant",
            "groups": groups,
        });
        if let Some(nonce) = grant.nonce {
            claims["nonce"] = json!(nonce);
        }
        match self.sign(&claims) {
            Some(id_token) => json_answer(
                200,
                &json!({"token_type": "Bearer", "expires_in": 3600, "id_token": id_token,
                        "access_token": format!("simulated-user-token-{:016x}", rand::random::<u64>())}),
            ),
            None => refused("server_error"),
        }
    }

    fn sign(&self, claims: &Value) -> Option<String> {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": KID});
        let signed = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signed.as_bytes(),
                &mut signature,
            )
            .ok()?;
        Some(format!("{signed}.{}", B64.encode(signature)))
    }
}

/// The sign-in page: the tenant's users to pick from, the request carried along.
fn authorize_page(request: &HashMap<String, String>, users: &[Map<String, Value>]) -> Answer {
    if request.get("response_type").map(String::as_str) != Some("code") {
        return (
            400,
            Vec::new(),
            "AADSTS900144: response_type=code is required".into(),
        );
    }
    let carried: String = [
        "client_id",
        "redirect_uri",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
    ]
    .iter()
    .map(|k| {
        format!(
            "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
            esc(request.get(*k).map(String::as_str).unwrap_or_default())
        )
    })
    .collect();
    let options: String = users
        .iter()
        .filter_map(sign_in_name)
        .map(|n| format!("<option value=\"{0}\">{0}</option>", esc(&n)))
        .collect();
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><title>Sign in · simulated tenant</title></head><body>\
         <h1>Sign in to the simulated tenant</h1><form method=\"post\">{carried}\
         <label for=\"login\">Account</label> <select id=\"login\" name=\"login\">{options}</select> \
         <button type=\"submit\" id=\"next\">Sign in</button></form></body></html>"
    );
    (
        200,
        vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
        page,
    )
}
