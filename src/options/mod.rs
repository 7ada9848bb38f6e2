//! The Personal Options page on the admin listener: a person signs in, sees and edits the options
//! trackgate honours for their mailbox, previews what their recent mail would become under a
//! change before saving it, and reads what leaves their mailbox for the CRM. Admins (listed, or
//! members of a group) may open anyone's. Every form carries the session's CSRF token; every
//! answer carries a strict Content-Security-Policy; URLs name mailboxes by id, never address.
//!
//! Routes (all under `/options`): `GET /options` (your own page), `GET|POST /options/{mailbox}`
//! (the page; POST previews or saves), `GET /options/{mailbox}/privacy`, `GET|POST
//! /options/signin`, `GET /options/callback` (OpenID Connect), `POST /options/signout`, `GET
//! /options/audit` (admins), `GET /options/assets/…`.

mod explain;
mod form;
mod history;
pub mod oidc;
mod page;
mod save;
mod session;
mod signin;
mod store;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use uuid::Uuid;

pub use explain::{ExplainError, PreviewRequest, is_preview};
pub use history::History;
pub use page::PrivacyFacts;
pub use save::{Saver, Target};
pub use store::{OptionsStore, StoreError};

use crate::common::secret::same_secret;
use crate::config::{OptionsConfig, SignIn};
use crate::directory::Owner;
use crate::directory::model::UserSettings;
use crate::directory::snapshot::{Directory, MailboxEntry};
use crate::exchange::{ExchangeClient, InboxFolder};
use crate::rules::{Decision, Engine};
use form::{FormError, MAX_FORM_BYTES, UserOptions};
use page::{OrgFacts, PageView, PreviewRow};
use session::{Session, Sessions};

type Reply = Response<Full<Bytes>>;

/// Why a person cannot sign in: the status, a title and a sentence for them.
type Refusal = (StatusCode, &'static str, &'static str);

/// A record a folder rule can link: its label, `entity:id`, and its owner.
type Candidate = (String, String, Option<Uuid>);
/// The candidates built for one directory snapshot.
type CandidatesFor = (std::sync::Weak<Directory>, Arc<Vec<Candidate>>);

/// The policy every answer carries: nothing inline, nothing from elsewhere, never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// Messages a preview shows at most (the newest).
const PREVIEW_ROWS: usize = 200;
/// Mailboxes an admin's page lists, and regarding records offered, at most.
const LISTED: usize = 500;
/// How long the folder list may take before the page shows without it.
const FOLDER_WAIT: Duration = Duration::from_secs(5);

/// What the page needs from the rest of the gateway.
pub struct OptionsParts {
    pub engine: Arc<Engine>,
    pub history: Arc<History>,
    pub saver: Saver,
    pub exchange: Option<Arc<ExchangeClient>>,
    pub privacy: PrivacyFacts,
    /// The directory document, for the names of records a folder rule can link.
    pub document: DocumentReader,
}

/// Reads the directory document as its source has it.
pub type DocumentReader = Arc<
    dyn Fn()
            -> futures_util::future::BoxFuture<'static, Option<crate::directory::DirectoryDocument>>
        + Send
        + Sync,
>;

pub struct OptionsPage {
    config: OptionsConfig,
    parts: OptionsParts,
    sessions: Sessions,
    oidc: Option<oidc::Oidc>,
    /// Regarding records offered, built once per directory snapshot.
    regarding: Mutex<Option<CandidatesFor>>,
}

/// Adds the headers every answer of the page carries.
fn secured(mut response: Reply) -> Reply {
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        // Same-origin requests keep their Origin header (checked on every POST); other sites
        // learn nothing.
        ("referrer-policy", "same-origin"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
    ] {
        headers.insert(name, http::HeaderValue::from_static(value));
    }
    response
}

fn html(status: StatusCode, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secured(r)
}

fn redirect(to: &str, cookies: &[String]) -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(location) = http::HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, location);
    }
    for cookie in cookies {
        if let Ok(value) = http::HeaderValue::from_str(cookie) {
            r.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    secured(r)
}

fn refused(status: StatusCode, title: &str, text: &str) -> Reply {
    html(status, page::message(title, text))
}

fn asset(content_type: &'static str, body: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    secured(r)
}

/// A request's form body, bounded.
async fn form_body(req: Request<Incoming>) -> Result<(http::HeaderMap, Bytes), Reply> {
    let (parts, body) = req.into_parts();
    match Limited::new(body, MAX_FORM_BYTES).collect().await {
        Ok(collected) => Ok((parts.headers, collected.to_bytes())),
        Err(_) => Err(refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Too large",
            "The form is larger than this page ever sends.",
        )),
    }
}

fn form_value(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .take(1000)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A POST from another site: refused whatever its token (the browser says where it comes from).
fn cross_site(headers: &http::HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("sec-fetch-site").is_some_and(|s| s == "cross-site") {
        return true;
    }
    match (header("origin"), header("host")) {
        // An opaque origin (a sandboxed frame, or a strict referrer policy): the token decides.
        (Some("null"), _) => false,
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
            !origin_host.eq_ignore_ascii_case(host)
        }
        _ => false,
    }
}

impl OptionsPage {
    pub fn new(config: OptionsConfig, parts: OptionsParts, http: reqwest::Client) -> OptionsPage {
        let oidc = match &config.sign_in {
            SignIn::Oidc(c) => Some(oidc::Oidc::new(c.clone(), http)),
            _ => None,
        };
        let secure = oidc.as_ref().is_some_and(oidc::Oidc::secure_cookies);
        OptionsPage {
            sessions: Sessions::new(config.session_ttl, secure),
            config,
            parts,
            oidc,
            regarding: Mutex::new(None),
        }
    }

    /// Answers one request under `/options`.
    pub async fn handle(&self, req: Request<Incoming>) -> Reply {
        if matches!(self.config.sign_in, SignIn::Off) || !self.config.enabled {
            return refused(
                StatusCode::NOT_FOUND,
                "Not available",
                "The options page is off: set [options] sign_in (README, Options page).",
            );
        }
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let rest = path.strip_prefix("/options").unwrap_or_default();
        let method = req.method().clone();
        match (&method, rest) {
            (&Method::GET, "/assets/page.css") => asset("text/css; charset=utf-8", page::CSS),
            (&Method::GET, "/assets/page.js") => asset("text/javascript; charset=utf-8", page::JS),
            (&Method::GET, "/signin") => match &self.oidc {
                Some(oidc) => Self::begin_oidc(oidc).await,
                None => self.signin_form(None),
            },
            (&Method::POST, "/signin") => self.signin(req).await,
            (&Method::GET, "/callback") => self.callback(&req).await,
            (&Method::POST, "/signout") => self.signout(req).await,
            _ => self.signed_in(req, &method, rest).await,
        }
    }

    /// The routes that need a session.
    async fn signed_in(&self, req: Request<Incoming>, method: &Method, rest: &str) -> Reply {
        let Some(session) = self.sessions.find(req.headers()) else {
            return match method {
                &Method::GET => redirect("/options/signin", &[]),
                _ => refused(
                    StatusCode::FORBIDDEN,
                    "Signed out",
                    "Sign in again, then repeat the change.",
                ),
            };
        };
        let mut segments = rest.trim_start_matches('/').splitn(2, '/');
        let first = segments.next().unwrap_or_default();
        let second = segments.next();
        if first.is_empty() && method == Method::GET {
            return redirect(&format!("/options/{}", session.mailbox), &[]);
        }
        if first == "audit" && method == Method::GET {
            return self.audit(&session);
        }
        let Ok(mailbox) = first.parse::<Uuid>() else {
            return refused(StatusCode::NOT_FOUND, "Not found", "There is no such page.");
        };
        if mailbox != session.mailbox && !session.admin {
            return refused(
                StatusCode::FORBIDDEN,
                "Not yours",
                "You can open only your own options.",
            );
        }
        match (method, second) {
            (&Method::GET, None) => {
                let saved = req
                    .uri()
                    .query()
                    .is_some_and(|q| q.split('&').any(|p| p == "saved"));
                let notice = saved.then(|| {
                    "Saved. The gateway decides with your new options from now on.".to_owned()
                });
                self.show(&session, mailbox, notice).await
            }
            (&Method::POST, None) => self.post(req, &session, mailbox).await,
            (&Method::GET, Some("privacy")) => self.privacy(mailbox),
            _ => refused(StatusCode::NOT_FOUND, "Not found", "There is no such page."),
        }
    }

    fn csrf_ok(&self, session: &Session, headers: &http::HeaderMap, body: &[u8]) -> bool {
        !cross_site(headers)
            && form_value(body, "csrf")
                .is_some_and(|t| same_secret(t.as_bytes(), session.csrf.as_bytes()))
    }

    fn csrf_refused(&self) -> Reply {
        refused(
            StatusCode::FORBIDDEN,
            "Refused",
            "The form did not carry this page's security token: reload the page and try again.",
        )
    }

    fn audit(&self, session: &Session) -> Reply {
        if !session.admin {
            return refused(
                StatusCode::FORBIDDEN,
                "Admins only",
                "The audit trail is for admins.",
            );
        }
        let entries = self.parts.saver.store.audit(1000);
        let mut r = Response::new(Full::new(Bytes::from(
            serde_json::to_string_pretty(&entries).unwrap_or_default() + "\n",
        )));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        secured(r)
    }

    /// The mailbox and its owner's settings, when it is a user's.
    fn owner(dir: &Directory, mailbox: Uuid) -> Option<(&MailboxEntry, &UserSettings)> {
        let entry = dir.mailbox_entries().iter().find(|m| m.id == mailbox)?;
        match entry.owner {
            Owner::User(u) => Some((entry, &dir.user(u).settings)),
            Owner::Queue(_) => None,
        }
    }

    async fn post(&self, req: Request<Incoming>, session: &Session, mailbox: Uuid) -> Reply {
        let (headers, body) = match form_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        if !self.csrf_ok(session, &headers, &body) {
            return self.csrf_refused();
        }
        let dir = self.parts.engine.directory().load();
        let Some((entry, settings)) = Self::owner(&dir, mailbox) else {
            return no_mailbox();
        };
        let folders = self.folders(&entry.address).await;
        let current = UserOptions::current(&dir, entry, settings);
        let known = |id: &str| -> Option<String> {
            folders
                .as_ref()
                .ok()
                .and_then(|f| f.iter().find(|f| f.id == id).map(|f| f.name.clone()))
                .or_else(|| {
                    current
                        .rules
                        .iter()
                        .find(|r| r.folder_id == id)
                        .and_then(|r| r.folder_name.clone())
                })
        };
        let offered_records = self.regarding_for(&dir, Some(settings.systemuserid)).await;
        let offered = |record: &crate::directory::model::Lookup| {
            let value = format!("{}:{}", record.entity, record.id);
            offered_records.iter().any(|(_, v)| *v == value)
                || current
                    .rules
                    .iter()
                    .any(|r| r.regarding.as_ref() == Some(record))
        };
        let context = form::FormContext {
            dir: &dir,
            known_folder: &known,
            offered: &offered,
            filters: &settings.syncfilters,
        };
        let proposed = match UserOptions::from_form(&body, &context) {
            Ok(p) => p,
            Err(FormError::TooLarge) => {
                return refused(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Too large",
                    "The form is too large.",
                );
            }
            Err(error) => {
                let page = self
                    .render(
                        session,
                        &dir,
                        entry,
                        &current,
                        folders,
                        Some(error.to_string()),
                        None,
                        None,
                    )
                    .await;
                return with_status(page, StatusCode::BAD_REQUEST);
            }
        };
        if form_value(&body, "action").as_deref() == Some("save") {
            return self
                .save(session, entry.id, settings, &current, &proposed)
                .await;
        }
        let preview = self.preview(entry, settings, &proposed);
        self.render(
            session,
            &dir,
            entry,
            &proposed,
            folders,
            None,
            None,
            Some(preview),
        )
        .await
    }

    async fn save(
        &self,
        session: &Session,
        mailbox: Uuid,
        base: &UserSettings,
        before: &UserOptions,
        after: &UserOptions,
    ) -> Reply {
        let user = base.systemuserid;
        let changes = before.changes(after);
        let entry = store::AuditEntry {
            at: crate::common::time::format_seconds((crate::common::time::now_ms() / 1000) as i64),
            by: session.user,
            as_admin: session.user != user,
            user,
            changes,
        };
        match self
            .parts
            .saver
            .save(base, mailbox, before, after, &entry)
            .await
        {
            Ok(()) => {
                tracing::info!(by = %session.user, user = %user, changes = entry.changes.len(), "personal options saved");
                redirect(&format!("/options/{mailbox}?saved"), &[])
            }
            Err(error) => {
                tracing::warn!(%error, user = %user, "personal options not saved");
                let dir = self.parts.engine.directory().load();
                let Some((entry, settings)) = Self::owner(&dir, mailbox) else {
                    return refused(StatusCode::BAD_GATEWAY, "Not saved", &error.to_string());
                };
                let folders = self.folders(&entry.address).await;
                // After a partial write the page shows what the source holds now; otherwise
                // what was asked for, to correct and try again.
                let (message, shown) = match &error {
                    save::SaveError::Partial(_) => (
                        format!("Not all saved: {error}."),
                        UserOptions::current(&dir, entry, settings),
                    ),
                    _ => (
                        format!("Not saved: {error}. Nothing changed; try again."),
                        after.clone(),
                    ),
                };
                let page = self
                    .render(
                        session,
                        &dir,
                        entry,
                        &shown,
                        folders,
                        Some(message),
                        None,
                        None,
                    )
                    .await;
                with_status(page, StatusCode::BAD_GATEWAY)
            }
        }
    }

    async fn show(&self, session: &Session, mailbox: Uuid, notice: Option<String>) -> Reply {
        let dir = self.parts.engine.directory().load();
        let Some((entry, settings)) = Self::owner(&dir, mailbox) else {
            return no_mailbox();
        };
        let folders = self.folders(&entry.address).await;
        let current = UserOptions::current(&dir, entry, settings);
        self.render(session, &dir, entry, &current, folders, None, notice, None)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn render(
        &self,
        session: &Session,
        dir: &Arc<Directory>,
        entry: &MailboxEntry,
        options: &UserOptions,
        folders: Result<Vec<InboxFolder>, String>,
        error: Option<String>,
        notice: Option<String>,
        preview: Option<Vec<PreviewRow>>,
    ) -> Reply {
        let org = org_facts(dir);
        let settings = Self::owner(dir, entry.id).map(|(_, s)| s);
        let others = if session.admin {
            Self::users(dir)
                .into_iter()
                .filter(|m| m.id != entry.id)
                .take(LISTED)
                .map(|m| (m.id, m.address.to_string()))
                .collect()
        } else {
            Vec::new()
        };
        let view = PageView {
            address: &entry.address,
            mailbox: entry.id,
            csrf: &session.csrf,
            others,
            options,
            org: &org,
            sync_filters: settings
                .map(|s| {
                    s.syncfilters
                        .iter()
                        .enumerate()
                        .map(|(i, f)| {
                            let name = f.name.as_deref().unwrap_or("(unnamed)");
                            (form::filter_key(i, f), format!("{}: {name}", f.entity))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            folders,
            regarding: self
                .regarding_for(dir, settings.map(|s| s.systemuserid))
                .await,
            error,
            notice,
            preview,
            history_off: self.config.history_per_mailbox == 0,
        };
        html(StatusCode::OK, page::options(&view))
    }

    fn privacy(&self, mailbox: Uuid) -> Reply {
        let dir = self.parts.engine.directory().load();
        let Some((entry, settings)) = Self::owner(&dir, mailbox) else {
            return no_mailbox();
        };
        let current = UserOptions::current(&dir, entry, settings);
        html(
            StatusCode::OK,
            page::privacy(&entry.address, mailbox, &self.parts.privacy, &current),
        )
    }

    /// The folders under the mailbox's Inbox, or why they cannot be listed.
    async fn folders(&self, address: &str) -> Result<Vec<InboxFolder>, String> {
        let Some(exchange) = &self.parts.exchange else {
            return Err("no Exchange service account is configured".into());
        };
        match tokio::time::timeout(FOLDER_WAIT, exchange.inbox_folders(address)).await {
            Ok(Ok(folders)) => Ok(folders),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("Exchange did not answer in time".into()),
        }
    }

    /// Replays the mailbox's recent observations with its options now and with `proposed`.
    fn preview(
        &self,
        entry: &MailboxEntry,
        settings: &UserSettings,
        proposed: &UserOptions,
    ) -> Vec<PreviewRow> {
        let history = self.parts.history.recent(entry.id);
        let engine = &self.parts.engine;
        let now = engine.preview(&history, None);
        let then = engine.preview(&history, Some(&proposed.proposed(entry, settings)));
        let mut rows: Vec<PreviewRow> = now
            .iter()
            .zip(&then)
            .flat_map(|(now, then)| now.iter().zip(then))
            .filter(|(d, _)| d.subject.is_some() || d.internet_message_id.is_some())
            .map(|(now, then)| PreviewRow {
                subject: now.subject.as_deref().unwrap_or("(no subject)").to_owned(),
                counterpart: counterpart(now),
                now: (now.is_track(), now.reason.as_str()),
                then: (then.is_track(), then.reason.as_str()),
            })
            .collect();
        rows.reverse();
        rows.truncate(PREVIEW_ROWS);
        rows
    }

    /// Records a folder rule can link: active accounts and contacts, the user's own first.
    async fn regarding_for(
        &self,
        dir: &Arc<Directory>,
        user: Option<Uuid>,
    ) -> Vec<(String, String)> {
        // Built for this very snapshot (still alive, so its address is not reused).
        let cached = self.regarding.lock().ok().and_then(|c| {
            c.as_ref()
                .filter(|(built_for, _)| {
                    built_for.strong_count() > 0
                        && std::ptr::eq(built_for.as_ptr(), Arc::as_ptr(dir))
                })
                .map(|(_, all)| all.clone())
        });
        let all = match cached {
            Some(all) => all,
            None => {
                let all = Arc::new(candidates((self.parts.document)().await));
                if let Ok(mut cache) = self.regarding.lock() {
                    *cache = Some((Arc::downgrade(dir), all.clone()));
                }
                all
            }
        };
        let mut mine: Vec<(String, String)> = Vec::new();
        let mut rest: Vec<(String, String)> = Vec::new();
        for (label, value, owner) in all.iter() {
            let list = if owner.is_some() && *owner == user {
                &mut mine
            } else {
                &mut rest
            };
            list.push((label.clone(), value.clone()));
        }
        mine.extend(rest);
        mine.truncate(LISTED);
        mine
    }
}

fn no_mailbox() -> Reply {
    refused(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such mailbox.",
    )
}

fn with_status(mut reply: Reply, status: StatusCode) -> Reply {
    *reply.status_mut() = status;
    reply
}

/// Who a message was with: the sender of incoming mail, the first recipient of sent mail.
fn counterpart(d: &Decision) -> String {
    let party = match d.direction {
        Some(crate::rules::Direction::Outgoing) => d.to.first(),
        _ => d.from.as_ref(),
    };
    party
        .and_then(|p| p.address.as_deref().or(p.name.as_deref()))
        .map(str::to_owned)
        .unwrap_or_default()
}

fn org_facts(dir: &Directory) -> OrgFacts {
    let org = dir.org();
    OrgFacts {
        no_email_offered: org.settings.do_not_auto_track_email,
        sent_items_tracked: org.settings.auto_track_sent_folder_items,
        category_tracking: org.settings.track_categorized_items,
        categories: org.tracking_category_names.clone(),
        folder_tracking: org.folder_tracking,
        max_rules: org.max_folder_rules as usize,
        min_interval_minutes: u32::try_from(org.min_sync_interval.as_secs() / 60)
            .unwrap_or(u32::MAX),
        auto_create_allowed: org.settings.auto_create_contact_on_promote,
    }
}

/// Active accounts and contacts by name, as `(label, "entity:id", owner)`.
fn candidates(
    doc: Option<crate::directory::DirectoryDocument>,
) -> Vec<(String, String, Option<Uuid>)> {
    let Some(doc) = doc else {
        return Vec::new();
    };
    let accounts = doc.accounts.iter().filter(|a| a.statecode == 0).map(|a| {
        (
            format!("Account: {}", a.name.as_deref().unwrap_or("(unnamed)")),
            format!("account:{}", a.accountid),
            a.ownerid,
        )
    });
    let contacts = doc.contacts.iter().filter(|c| c.statecode == 0).map(|c| {
        (
            format!("Contact: {}", c.fullname.as_deref().unwrap_or("(unnamed)")),
            format!("contact:{}", c.contactid),
            c.ownerid,
        )
    });
    let mut all: Vec<_> = accounts.chain(contacts).collect();
    all.sort();
    all.truncate(LISTED * 20);
    all
}
