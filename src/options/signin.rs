//! Signing in to the options page: the development sign-in (pick a user; for the built-in
//! simulator) and OpenID Connect (the provider's page, then the callback), who is an admin,
//! and signing out. A session names the person's user and mailbox, never their address.

use http::{Request, StatusCode, header};
use hyper::body::Incoming;
use uuid::Uuid;

use super::session::Sessions;
use super::{
    LISTED, OptionsPage, Refusal, Reply, cross_site, form_body, form_value, html, oidc, page,
    redirect, refused,
};
use crate::directory::Owner;
use crate::directory::snapshot::{Directory, MailboxEntry};

impl OptionsPage {
    pub(super) fn is_admin(&self, principal: &str, groups: &[String]) -> bool {
        self.config.admins.iter().any(|a| a == principal)
            || self
                .config
                .admin_group
                .as_ref()
                .is_some_and(|g| groups.iter().any(|m| m.eq_ignore_ascii_case(g)))
    }

    /// The user-owned mailboxes, by address.
    pub(super) fn users(dir: &Directory) -> Vec<&MailboxEntry> {
        let mut users: Vec<&MailboxEntry> = dir
            .mailbox_entries()
            .iter()
            .filter(|m| matches!(m.owner, Owner::User(u) if dir.user(u).active))
            .collect();
        users.sort_by(|a, b| a.address.cmp(&b.address));
        users
    }

    pub(super) async fn begin_oidc(oidc: &oidc::Oidc) -> Reply {
        match oidc.begin().await {
            Ok((location, cookie)) => redirect(&location, &[cookie]),
            Err(error) => {
                tracing::warn!(%error, "options page sign-in cannot start");
                refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in unavailable",
                    &format!("{error}. Try again in a moment."),
                )
            }
        }
    }

    pub(super) fn signin_form(&self, error: Option<&str>) -> Reply {
        let dir = self.parts.engine.directory().load();
        let users: Vec<String> = Self::users(&dir)
            .iter()
            .take(LISTED)
            .map(|m| m.address.to_string())
            .collect();
        let (token, cookie) = self.sessions.signin_token();
        let mut reply = html(
            if error.is_some() {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::OK
            },
            page::signin(&users, &token, error),
        );
        if let Ok(value) = http::HeaderValue::from_str(&cookie) {
            reply.headers_mut().append(header::SET_COOKIE, value);
        }
        reply
    }

    /// The development sign-in's POST.
    pub(super) async fn signin(&self, req: Request<Incoming>) -> Reply {
        if self.oidc.is_some() {
            return refused(
                StatusCode::NOT_FOUND,
                "Not found",
                "Sign in with your organization.",
            );
        }
        let (headers, body) = match form_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        if cross_site(&headers)
            || !Sessions::signin_matches(&headers, form_value(&body, "csrf").as_deref())
        {
            return self.signin_form(Some("The sign-in form expired; try again."));
        }
        let principal = form_value(&body, "user").unwrap_or_default();
        let cookie = match self.start_session(&principal, None, &[]) {
            Ok(started) => started,
            Err((status, title, text)) => return refused(status, title, text),
        };
        redirect(&format!("/options/{}", cookie.0), &[cookie.1])
    }

    /// Starts a session for a person the gateway knows (by sign-in name, else Entra object
    /// id): their mailbox and the session's `Set-Cookie`; or the page that says why not.
    pub(super) fn start_session(
        &self,
        principal: &str,
        object_id: Option<&str>,
        groups: &[String],
    ) -> Result<(Uuid, String), Refusal> {
        let dir = self.parts.engine.directory().load();
        // By Entra object id first: a sign-in name can change hands.
        let Some(entry) = object_id.and_then(|id| dir.mailbox(id)).or_else(|| {
            (!principal.is_empty())
                .then(|| dir.mailbox(principal))
                .flatten()
        }) else {
            return Err((
                StatusCode::FORBIDDEN,
                "Unknown user",
                "Your sign-in name has no mailbox in the directory the gateway reads.",
            ));
        };
        let Owner::User(u) = entry.owner else {
            return Err((
                StatusCode::FORBIDDEN,
                "Not a user",
                "Queues have no personal options.",
            ));
        };
        let user = dir.user(u);
        if !user.active {
            return Err((
                StatusCode::FORBIDDEN,
                "Disabled",
                "Your user is disabled in the CRM.",
            ));
        }
        let admin = self.is_admin(&principal.trim().to_lowercase(), groups)
            || self.is_admin(&entry.address.to_lowercase(), groups);
        let cookie = self.sessions.start(user.id, entry.id, admin);
        tracing::info!(user = %user.id, admin, "signed in to the options page");
        Ok((entry.id, cookie))
    }

    pub(super) async fn callback(&self, req: &Request<Incoming>) -> Reply {
        let Some(oidc) = &self.oidc else {
            return refused(StatusCode::NOT_FOUND, "Not found", "There is no such page.");
        };
        let signed = match oidc
            .finish(req.headers(), req.uri().query().unwrap_or_default())
            .await
        {
            Ok(signed) => signed,
            Err(error) => {
                tracing::warn!(%error, "options page sign-in refused");
                return refused(StatusCode::FORBIDDEN, "Sign-in failed", &error.to_string());
            }
        };
        match self.start_session(
            &signed.principal,
            signed.object_id.as_deref(),
            &signed.groups,
        ) {
            // A page of ours moves on: the browser came from the provider's site, and a
            // redirect from there would not carry the new SameSite=Strict cookie.
            Ok((mailbox, cookie)) => {
                let mut page = html(
                    StatusCode::OK,
                    page::moving_on(&format!("/options/{mailbox}")),
                );
                if let Ok(value) = http::HeaderValue::from_str(&cookie) {
                    page.headers_mut().append(header::SET_COOKIE, value);
                }
                page
            }
            Err((status, title, text)) => refused(status, title, text),
        }
    }

    pub(super) async fn signout(&self, req: Request<Incoming>) -> Reply {
        let session = self.sessions.find(req.headers());
        let (headers, body) = match form_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        if let Some(session) = session
            && !self.csrf_ok(&session, &headers, &body)
        {
            return self.csrf_refused();
        }
        let cookie = self.sessions.end(&headers);
        // A page of ours, not the sign-in: with OpenID Connect that redirects to the provider,
        // which the page's `form-action 'self'` forbids a form's redirects to reach.
        let mut page = html(StatusCode::OK, page::signed_out());
        if let Ok(value) = http::HeaderValue::from_str(&cookie) {
            page.headers_mut().append(header::SET_COOKIE, value);
        }
        page
    }
}
