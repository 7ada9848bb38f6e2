//! Who is signed in to the options page: sessions in memory (a random id in an `HttpOnly`,
//! `SameSite=Strict` cookie; bounded in number and in time), each with its own CSRF token that
//! every form carries; and the sign-in form's own token (a second cookie the form must echo),
//! so no other site can sign a browser in or post a change.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::common::secret::same_secret;

/// Sessions kept at most; the one closest to expiry goes first.
const MAX_SESSIONS: usize = 10_000;
pub const SESSION_COOKIE: &str = "trackgate_options";
pub const SIGNIN_COOKIE: &str = "trackgate_signin";

/// A signed-in person.
#[derive(Debug, Clone)]
pub struct Session {
    /// Their `systemuserid` and mailbox.
    pub user: Uuid,
    pub mailbox: Uuid,
    pub admin: bool,
    /// Every form of this session carries it.
    pub csrf: String,
    expires: Instant,
}

pub struct Sessions {
    all: Mutex<HashMap<String, Session>>,
    ttl: Duration,
    /// `Secure` on the cookies (the page is reached over HTTPS).
    secure: bool,
}

/// A random token: 32 bytes from the thread's cryptographic generator, hex.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A cookie's value from a request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Sessions {
    pub fn new(ttl: Duration, secure: bool) -> Sessions {
        Sessions {
            all: Mutex::new(HashMap::new()),
            ttl,
            secure,
        }
    }

    /// Starts a session; returns the `Set-Cookie` value.
    pub fn start(&self, user: Uuid, mailbox: Uuid, admin: bool) -> String {
        let id = random_token();
        let now = Instant::now();
        let session = Session {
            user,
            mailbox,
            admin,
            csrf: random_token(),
            expires: now + self.ttl,
        };
        if let Ok(mut all) = self.all.lock() {
            all.retain(|_, s| s.expires > now);
            if all.len() >= MAX_SESSIONS
                && let Some(oldest) = all
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone())
            {
                all.remove(&oldest);
            }
            all.insert(id.clone(), session);
        }
        self.cookie(SESSION_COOKIE, &id, "/options", Some(self.ttl))
    }

    /// The session a request's cookie names, while it lasts.
    pub fn find(&self, headers: &http::HeaderMap) -> Option<Session> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let all = self.all.lock().ok()?;
        all.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    /// Ends the session a request's cookie names; returns the `Set-Cookie` that clears it.
    pub fn end(&self, headers: &http::HeaderMap) -> String {
        if let Some(id) = cookie(headers, SESSION_COOKIE)
            && let Ok(mut all) = self.all.lock()
        {
            all.remove(id);
        }
        self.cookie(SESSION_COOKIE, "", "/options", Some(Duration::ZERO))
    }

    /// The sign-in form's token and its `Set-Cookie`.
    pub fn signin_token(&self) -> (String, String) {
        let token = random_token();
        let set = self.cookie(
            SIGNIN_COOKIE,
            &token,
            "/options",
            Some(Duration::from_secs(600)),
        );
        (token, set)
    }

    /// Whether a posted sign-in form echoes its cookie's token.
    pub fn signin_matches(headers: &http::HeaderMap, posted: Option<&str>) -> bool {
        match (cookie(headers, SIGNIN_COOKIE), posted) {
            (Some(expected), Some(posted)) => {
                !expected.is_empty() && same_secret(expected.as_bytes(), posted.as_bytes())
            }
            _ => false,
        }
    }

    fn cookie(&self, name: &str, value: &str, path: &str, max_age: Option<Duration>) -> String {
        let mut cookie = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict");
        if let Some(age) = max_age {
            cookie.push_str(&format!("; Max-Age={}", age.as_secs()));
        }
        if self.secure {
            cookie.push_str("; Secure");
        }
        cookie
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(set_cookie: &str) -> http::HeaderMap {
        let pair = set_cookie.split(';').next().unwrap_or_default();
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            format!("other=1; {pair}")
                .parse()
                .unwrap_or_else(|_| panic!()),
        );
        headers
    }

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_ends() {
        let sessions = Sessions::new(Duration::from_secs(60), false);
        let set = sessions.start(Uuid::from_u128(1), Uuid::nil(), false);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        let headers = with_cookie(&set);
        let found = sessions.find(&headers);
        assert_eq!(found.as_ref().map(|s| s.user), Some(Uuid::from_u128(1)));
        assert_eq!(found.map(|s| s.csrf.len()), Some(64));
        sessions.end(&headers);
        assert!(sessions.find(&headers).is_none());
        assert!(
            sessions
                .find(&with_cookie("trackgate_options=forged"))
                .is_none()
        );
    }

    #[test]
    fn a_sign_in_form_must_echo_its_cookie() {
        let sessions = Sessions::new(Duration::from_secs(60), true);
        let (token, set) = sessions.signin_token();
        assert!(set.ends_with("; Secure"));
        let headers = with_cookie(&set);
        assert!(Sessions::signin_matches(&headers, Some(&token)));
        assert!(!Sessions::signin_matches(&headers, Some("forged")));
        assert!(!Sessions::signin_matches(&headers, None));
        assert!(!Sessions::signin_matches(
            &http::HeaderMap::new(),
            Some(&token)
        ));
    }
}
