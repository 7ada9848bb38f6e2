//! The Dataverse simulator: the subset of the Dataverse Web API that trackgate uses, over real
//! HTTP on loopback, for the embedded default's tests, the demo and the benches.
//!
//! - `POST …/token`: OAuth2 client credentials (checked when configured), bearer tokens.
//! - `PATCH /api/data/v9.2/<set>(<id>)`: upsert; `If-None-Match: *` → 412 when it exists,
//!   `If-Match: *` → 404 when it does not; `@odata.bind` values must name existing rows
//!   (else 400, as Dataverse answers); deep insert of `email_activity_parties`.
//! - `POST /<set>`, `GET /<set>(<id>)` with `$select`, `GET /<set>` with `$filter` equality
//!   (`and`-joined), `$top`, `$select`, paging by `Prefer: odata.maxpagesize`, `DELETE`.
//! - Change tracking: `Prefer: odata.track-changes` adds an `@odata.deltaLink`; a
//!   `$deltatoken` query returns the rows changed since (current state) and `$deletedEntity`
//!   entries for deleted ones.
//! - `POST /$batch`: multipart with change sets (atomic) and `Content-ID` references,
//!   `Prefer: odata.continue-on-error`.
//! - `GET /WhoAmI`: the application user.
//! - Control (no auth, loopback only): `POST /_sim/faults` (see [`faults`]: throttle with
//!   `Retry-After`, a storm on one kind of request, fail with a status, stall, go down, black
//!   hole), `GET /_sim/records[?set=]`, `POST /_sim/records` (seed),
//!   `GET /_sim/stats`, `GET /_sim/requests`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

mod entra;
mod faults;
mod metadata;
mod strict;

pub use faults::{DataverseFaults, Fail, RequestKind, Throttle, ThrottleEvery};
pub use strict::Leniency;

use crate::crm::multipart::{self, BatchItem, HttpPart};
use crate::directory::model::DirectoryDocument;
use crate::directory::odata::Filter;

/// Largest request body accepted (a full `$batch`).
const MAX_BODY: usize = 64 << 20;
/// Requests remembered for `/_sim/requests`.
const MAX_LOG: usize = 100_000;

/// One API request as the simulator answered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// When the request arrived.
    pub at_ms: u64,
    /// When its answer was ready (after any stall).
    pub done_ms: u64,
    pub method: String,
    pub path: String,
    /// The query string as sent (undecoded).
    pub query: String,
    /// The `Prefer` header, if any.
    pub prefer: Option<String>,
    /// What the request does (a create-only upsert, an update, a read...).
    pub kind: RequestKind,
    pub status: u16,
}

/// Counters for tests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataverseStats {
    pub requests: u64,
    pub throttled: u64,
    pub failed: u64,
    /// API requests taken into the black hole (never answered while it lasted).
    pub black_holed: u64,
    /// Rows created, per entity set.
    pub created: BTreeMap<String, u64>,
    /// Creates of an id that had been created before (after a delete): must stay 0.
    pub recreated: u64,
    /// Create-only writes (`If-None-Match: *`, `POST`) refused with 412 because the row was
    /// already there, per entity set: a second delivery of the same record.
    pub already_there: BTreeMap<String, u64>,
    pub batches: u64,
    /// Requests (and `$batch` parts) refused as invalid: 400, 403 or 405. A client that writes
    /// only what Dataverse accepts keeps this at 0.
    pub refused: u64,
    /// The last refusals' messages (at most [`MAX_REFUSALS`]), to say what was refused.
    pub refusals: Vec<String>,
}

/// Refusal messages kept in the stats.
const MAX_REFUSALS: usize = 20;

impl Store {
    /// Counts an answer that refuses the request as invalid.
    fn note(&mut self, status: u16, body: &str) {
        if [400, 403, 405].contains(&status) {
            self.stats.refused += 1;
            if self.stats.refusals.len() < MAX_REFUSALS {
                self.stats.refusals.push(body.to_owned());
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct DataverseOptions {
    pub api_path: String,
    /// `(client_id, client_secret)` the token endpoint accepts; `None` accepts any and the API
    /// then needs no token.
    pub credentials: Option<(String, String)>,
    /// Rows to start with (users, queues, contacts, accounts, leads, emails).
    pub seed: Option<DirectoryDocument>,
    /// How long an issued token is accepted (Entra's are about an hour).
    pub token_lifetime: Duration,
    /// Strict unless switched here.
    pub leniency: Leniency,
    /// Privileges the application user's role lacks (`RetrieveUserPrivileges` leaves them out).
    pub withheld_privileges: Vec<String>,
}

impl Default for DataverseOptions {
    fn default() -> Self {
        DataverseOptions {
            api_path: "/api/data/v9.2".into(),
            credentials: None,
            seed: None,
            token_lifetime: Duration::from_secs(3599),
            leniency: Leniency::default(),
            withheld_privileges: Vec::new(),
        }
    }
}

#[derive(Default)]
struct Store {
    withheld_privileges: Vec<String>,
    tables: HashMap<String, BTreeMap<Uuid, Map<String, Value>>>,
    /// Every id ever created, per set.
    ever: HashSet<(String, Uuid)>,
    stats: DataverseStats,
    log: Vec<LoggedRequest>,
    /// Creation order, across sets.
    sequence: u64,
    /// Change tracking: every write and delete, in order, for `$deltatoken` queries.
    changes: Vec<ChangeEntry>,
    version: u64,
    /// The oldest version `changes` still answers for (older delta tokens have expired).
    changes_from: u64,
    leniency: Leniency,
}

impl strict::Rows for Store {
    fn find(&self, set: &str, column: &str, value: &str) -> Option<&Map<String, Value>> {
        self.tables.get(set)?.values().find(|row| {
            row.get(column)
                .and_then(Value::as_str)
                .is_some_and(|v| v.eq_ignore_ascii_case(value))
        })
    }
}

/// Most changes kept for delta queries; beyond, the older half is dropped and its tokens expire.
const MAX_CHANGES: usize = 1_000_000;

struct ChangeEntry {
    version: u64,
    set: String,
    id: Uuid,
    deleted: bool,
}

/// Records a change of a row for change tracking.
fn changed(store: &mut Store, set: &str, id: Uuid, deleted: bool) {
    store.version += 1;
    store.changes.push(ChangeEntry {
        version: store.version,
        set: set.to_owned(),
        id,
        deleted,
    });
    if store.changes.len() > MAX_CHANGES {
        let dropped = store.changes.len() / 2;
        store.changes.drain(..dropped);
        store.changes_from = store.changes.first().map(|c| c.version - 1).unwrap_or(0);
    }
}

/// An undo entry for change sets: the row before the write, and whether the write created it.
struct Undo {
    set: String,
    id: Uuid,
    before: Option<Map<String, Value>>,
    created: bool,
}

struct Shared {
    options: DataverseOptions,
    store: Mutex<Store>,
    faults: Mutex<DataverseFaults>,
    /// Issued tokens and when each expires.
    tokens: Mutex<HashMap<String, std::time::Instant>>,
    down: watch::Sender<bool>,
    black_hole: watch::Sender<bool>,
    issued: AtomicU64,
    /// The tenant's interactive sign-in (OpenID Connect).
    entra: entra::Entra,
}

pub struct DataverseSimulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for DataverseSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataverseSimulator")
            .field("addr", &self.addr)
            .finish()
    }
}

/// The primary key of a set: declared, or by Dataverse's naming rule for a table the metadata
/// does not know.
fn pk(set: &str) -> String {
    match metadata::by_set(set) {
        Some(table) => table.key.into(),
        None => {
            let singular = if let Some(stem) = set.strip_suffix("ies") {
                format!("{stem}y")
            } else if let Some(stem) = set.strip_suffix("sses") {
                format!("{stem}ss")
            } else {
                set.strip_suffix('s').unwrap_or(set).to_owned()
            };
            format!("{singular}id")
        }
    }
}

fn now_ms() -> u64 {
    crate::common::time::now_ms()
}

fn error(status: u16, code: &str, message: &str) -> (u16, Vec<(String, String)>, String) {
    (
        status,
        vec![("Content-Type".into(), "application/json".into())],
        json!({"error": {"code": code, "message": message}}).to_string(),
    )
}

impl DataverseSimulator {
    pub async fn start(
        listen: SocketAddr,
        options: DataverseOptions,
    ) -> std::io::Result<DataverseSimulator> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let mut store = Store {
            leniency: options.leniency,
            withheld_privileges: options.withheld_privileges.clone(),
            ..Store::default()
        };
        if let Some(doc) = &options.seed {
            seed(&mut store, doc);
        }
        let shared = Arc::new(Shared {
            options,
            store: Mutex::new(store),
            faults: Mutex::new(DataverseFaults::default()),
            tokens: Mutex::new(HashMap::new()),
            down: watch::channel(false).0,
            black_hole: watch::channel(false).0,
            issued: AtomicU64::new(0),
            entra: entra::Entra::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stopped));
        Ok(DataverseSimulator {
            addr,
            shared,
            stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The tenant's OpenID Connect issuer (discovery under `/.well-known/openid-configuration`).
    pub fn issuer(&self) -> String {
        format!("{}/simulated-tenant/v2.0", self.url())
    }

    /// Makes a user (by sign-in name) a member of groups, named in their ID tokens.
    pub fn set_groups(&self, user: &str, groups: &[&str]) {
        if let Ok(mut all) = self.shared.entra.groups.lock() {
            all.insert(
                user.to_lowercase(),
                groups.iter().map(|g| (*g).to_owned()).collect(),
            );
        }
    }

    /// The token endpoint, shaped like Entra ID's.
    pub fn token_url(&self) -> String {
        format!("{}/simulated-tenant/oauth2/v2.0/token", self.url())
    }

    pub fn set_faults(&self, faults: DataverseFaults) {
        self.shared.set_faults(faults);
    }

    pub fn records(&self, set: &str) -> Vec<Map<String, Value>> {
        self.shared
            .store()
            .tables
            .get(set)
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn seed_record(&self, set: &str, id: Uuid, fields: Map<String, Value>) {
        insert_seed(&mut self.shared.store(), set, id, fields);
    }

    pub fn remove_record(&self, set: &str, id: Uuid) -> bool {
        let mut store = self.shared.store();
        let removed = store
            .tables
            .get_mut(set)
            .and_then(|t| t.remove(&id))
            .is_some();
        if removed {
            changed(&mut store, set, id, true);
        }
        removed
    }

    pub fn stats(&self) -> DataverseStats {
        self.shared.store().stats.clone()
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.store().log.clone()
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.issued.load(Ordering::Relaxed)
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn insert_seed(store: &mut Store, set: &str, id: Uuid, mut fields: Map<String, Value>) {
    fields.insert(pk(set), Value::String(id.to_string()));
    let now = iso_now();
    for column in ["createdon", "modifiedon"] {
        if !fields.get(column).is_some_and(Value::is_string) {
            fields.insert(column.into(), now.clone().into());
        }
    }
    store.sequence += 1;
    fields.insert("versionnumber".into(), store.sequence.into());
    store
        .tables
        .entry(set.to_owned())
        .or_default()
        .insert(id, fields);
    changed(store, set, id, false);
}

/// Now, as Dataverse writes `createdon` and `modifiedon`.
fn iso_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Seeds the rows of a directory document in the shape the Web API shows them (lookups as
/// `_<column>_value`, OrgDbOrgSettings as XML), so the Dataverse directory source reads what
/// it would read from a real organization.
fn seed(store: &mut Store, doc: &DirectoryDocument) {
    use crate::directory::tables as t;
    fn rows<T: Serialize>(store: &mut Store, spec: &t::TableSpec, rows: &[T]) {
        for row in rows {
            if let Ok(Value::Object(model)) = serde_json::to_value(row) {
                let mut fields = spec.from_model(&model);
                if spec.set == "emails"
                    && let Some(Value::Array(addresses)) = model.get("addresses")
                {
                    let parties: Vec<Value> = addresses
                        .iter()
                        .map(|a| json!({"addressused": a, "participationtypemask": 2}))
                        .collect();
                    fields.insert("email_activity_parties".into(), Value::Array(parties));
                }
                // A row without its key (a folder rule written by hand) gets one, as Dataverse
                // would give it.
                let id = spec.id(&fields).unwrap_or_else(|| {
                    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
                });
                insert_seed(store, spec.set, id, fields);
            }
        }
    }
    rows(
        store,
        &t::ORGANIZATIONS,
        std::slice::from_ref(&doc.organization),
    );
    rows(store, &t::SYSTEMUSERS, &doc.systemusers);
    rows(store, &t::USERSETTINGS, &doc.usersettingscollection);
    // Each user's sync filters are their Outlook filters: saved views they own.
    let queries: Vec<crate::directory::model::UserQuery> = doc
        .usersettingscollection
        .iter()
        .flat_map(|s| {
            s.syncfilters
                .iter()
                .map(|f| crate::directory::model::UserQuery {
                    userqueryid: f.userqueryid.unwrap_or_else(|| {
                        uuid::Builder::from_random_bytes(rand::random()).into_uuid()
                    }),
                    name: f.name.clone(),
                    returnedtypecode: Some(f.entity.clone()),
                    fetchxml: f.filter.clone(),
                    querytype: 256,
                    statecode: u8::from(!f.enabled),
                    ownerid: Some(s.systemuserid),
                })
        })
        .collect();
    rows(store, &t::USERQUERIES, &queries);
    // The organization's default Outlook filter templates: system views.
    let templates: Vec<crate::directory::model::SavedQuery> = doc
        .organization
        .outlookfiltertemplates
        .iter()
        .map(|f| crate::directory::model::SavedQuery {
            savedqueryid: uuid::Builder::from_random_bytes(rand::random()).into_uuid(),
            name: f.name.clone(),
            returnedtypecode: Some(f.entity.clone()),
            fetchxml: f.filter.clone(),
            querytype: 131_072,
            isdefault: true,
            statecode: u8::from(!f.enabled),
        })
        .collect();
    rows(store, &t::SAVEDQUERIES, &templates);
    rows(store, &t::QUEUES, &doc.queues);
    rows(store, &t::MAILBOXES, &doc.mailboxes);
    rows(store, &t::FOLDERS, &doc.mailboxtrackingfolders);
    rows(store, &t::CONTACTS, &doc.contacts);
    rows(store, &t::ACCOUNTS, &doc.accounts);
    rows(store, &t::LEADS, &doc.leads);
    for spec in &t::SYNC_ACTIVITIES {
        rows(store, spec, doc.activities(spec.set));
    }
    rows(store, &t::EMAILS, &doc.emails);
    // What the seeded rows point at (opportunities, …) exists too, so their binds resolve.
    let targets: Vec<crate::directory::model::Lookup> = doc
        .emails
        .iter()
        .filter_map(|e| e.regardingobjectid.clone())
        .chain(
            doc.mailboxtrackingfolders
                .iter()
                .filter_map(|f| f.regardingobjectid.clone()),
        )
        .collect();
    for target in targets {
        let set = crate::crm::mapping::entity_set(&target.entity);
        let exists = store
            .tables
            .get(&set)
            .is_some_and(|t| t.contains_key(&target.id));
        if !exists {
            insert_seed(store, &set, target.id, Map::new());
        }
    }
}

/// The lookup column a stored navigation value belongs to: `regardingobjectid_account_email`
/// → `regardingobjectid`, `parentcustomerid_account` → `parentcustomerid`, `ownerid` →
/// `ownerid`.
fn lookup_column(nav: &str) -> &str {
    match nav.split_once('_') {
        Some((first, _)) if first.ends_with("id") => first,
        _ => nav,
    }
}

/// The table a set holds (`contacts` → `contact`).
fn entity_of(set: &str) -> String {
    match metadata::by_set(set) {
        Some(table) => table.entity.into(),
        None => pk(set).trim_end_matches("id").to_owned(),
    }
}

/// A stored row as the Web API shows it: lookups as `_<column>_value` (the id) with the
/// `lookuplogicalname` annotation; activity parties only when expanded; simulator bookkeeping
/// left out.
fn wire_row(row: &Map<String, Value>, query: &HashMap<String, String>) -> Map<String, Value> {
    selected(unselected_wire_row(row, query), query)
}

/// Whether the query expands this collection of activity parties
/// (`$expand=appointment_activity_parties($select=…)`).
fn expands_parties(query: &HashMap<String, String>, nav: &str) -> bool {
    query.get("$expand").is_some_and(|e| {
        e.split(',')
            .any(|part| part.trim().split('(').next() == Some(nav))
    })
}

/// An activity party as the Web API shows it: its mask, the address used, and its party as
/// `_partyid_value` with the table annotated.
fn wire_party(party: &Value) -> Value {
    let mut out = Map::new();
    for column in ["participationtypemask", "addressused"] {
        out.insert(
            column.into(),
            party.get(column).cloned().unwrap_or(Value::Null),
        );
    }
    let bound = party.as_object().and_then(|p| {
        p.iter()
            .find(|(k, _)| k.starts_with("_partyid_"))
            .and_then(|(_, v)| Some((v.get("set")?.as_str()?, v.get("id")?.clone())))
    });
    if let Some((set, id)) = bound {
        out.insert(
            format!(
                "_partyid_value{}",
                crate::directory::tables::LOOKUP_ANNOTATION
            ),
            entity_of(set).into(),
        );
        out.insert("_partyid_value".into(), id);
    }
    Value::Object(out)
}

fn unselected_wire_row(
    row: &Map<String, Value>,
    query: &HashMap<String, String>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in row {
        if key.starts_with("_sim_") {
            continue;
        }
        if key.ends_with("_activity_parties") {
            if expands_parties(query, key)
                && let Value::Array(parties) = value
            {
                out.insert(key.clone(), parties.iter().map(wire_party).collect());
            }
            continue;
        }
        let lookup = key
            .strip_prefix('_')
            .and_then(|k| k.strip_suffix("_value"))
            .zip(value.as_object())
            .and_then(|(nav, v)| Some((nav, v.get("set")?.as_str()?, v.get("id")?.clone())));
        match lookup {
            Some((nav, set, id)) => {
                let column = format!("_{}_value", lookup_column(nav));
                out.insert(
                    format!("{column}{}", crate::directory::tables::LOOKUP_ANNOTATION),
                    entity_of(set).into(),
                );
                out.insert(column, id);
            }
            None => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    out
}

/// The `$select`ed columns of a wire row (annotations go with their column).
fn selected(out: Map<String, Value>, query: &HashMap<String, String>) -> Map<String, Value> {
    match query.get("$select") {
        Some(columns) => {
            let wanted: HashSet<&str> = columns.split(',').map(str::trim).collect();
            out.into_iter()
                .filter(|(k, _)| {
                    let base = k.split('@').next().unwrap_or(k);
                    wanted.contains(base) || k.ends_with("_activity_parties")
                })
                .collect()
        }
        None => out,
    }
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn faults(&self) -> MutexGuard<'_, DataverseFaults> {
        self.faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_faults(&self, faults: DataverseFaults) {
        let (down, black_hole) = (faults.down, faults.black_hole);
        *self.faults() = faults;
        self.down.send_replace(down);
        self.black_hole.send_replace(black_hole);
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        if *shared.down.borrow() {
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let mut stopped = stopped.clone();
        let mut down = shared.down.subscribe();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&shared, req).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new());
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                _ = conn => {}
                _ = stopped.changed() => {}
                _ = down.wait_for(|d| *d) => {}
            }
        });
    }
}

fn respond(status: u16, headers: Vec<(String, String)>, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            r.headers_mut().append(n, v);
        }
    }
    r
}

fn json_response(status: u16, value: &impl Serialize) -> Response<Full<Bytes>> {
    respond(
        status,
        vec![("Content-Type".into(), "application/json".into())],
        serde_json::to_string(value).unwrap_or_default(),
    )
}

/// One HTTP request: the token endpoint, fault controls under `/_sim/`, `$batch`, and the API,
/// in a flat routing table.
async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let arrived_ms = now_ms();
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let (s, h, b) = error(413, "0x8004431a", "request body too large");
            return respond(s, h, b);
        }
    };
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if path.starts_with("/simulated-tenant/") {
        let base = format!("http://{}", header("host").unwrap_or_default());
        let users: Vec<Map<String, Value>> = if path.ends_with("/authorize") {
            shared
                .store()
                .tables
                .get("systemusers")
                .map(|t| t.values().cloned().collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let answer = shared
            .entra
            .handle(&base, &parts.method, &path, &query, &body, &users);
        if let Some((status, headers, text)) = answer {
            return respond(status, headers, text);
        }
    }
    if path.ends_with("/oauth2/v2.0/token") && parts.method == Method::POST {
        return token(shared, &body);
    }
    if let Some(control) = path.strip_prefix("/_sim/") {
        return control_endpoint(shared, &parts.method, control, &query, &body);
    }
    let api = shared.options.api_path.clone();
    let Some(relative) = path.strip_prefix(api.as_str()) else {
        let (s, h, b) = error(404, "0x80060888", "Resource not found for the segment.");
        return respond(s, h, b);
    };
    if shared.options.credentials.is_some() {
        let token =
            header("authorization").and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned));
        let now = std::time::Instant::now();
        let valid = token.is_some_and(|t| {
            shared
                .tokens
                .lock()
                .map(|tokens| tokens.get(&t).is_some_and(|expires| *expires > now))
                .unwrap_or(false)
        });
        if !valid {
            let (s, mut h, b) = error(401, "0x80072560", "The user is not authenticated.");
            h.push((
                "WWW-Authenticate".into(),
                "Bearer error=\"invalid_token\", error_description=\"The token is missing, unknown or expired\"".into(),
            ));
            return respond(s, h, b);
        }
    }
    let mut hole = shared.black_hole.subscribe();
    if *hole.borrow_and_update() {
        shared.store().stats.black_holed += 1;
        let _ = hole.wait_for(|open| !*open).await;
        let (s, h, b) = error(503, "0x80040216", "The service is unavailable.");
        return respond(s, h, b);
    }
    let kind = RequestKind::of(&parts.method, relative, header("if-none-match").is_some());
    let (stall, fault) = shared.faults().take(kind);
    if !stall.is_zero() {
        tokio::time::sleep(stall).await;
    }
    let (status, headers, text) = match fault {
        Some(f) => {
            let mut store = shared.store();
            if f.0 == 429 {
                store.stats.throttled += 1;
            } else {
                store.stats.failed += 1;
            }
            f
        }
        None => {
            let text = String::from_utf8_lossy(&body).into_owned();
            let mut store = shared.store();
            if relative == "/$batch" && parts.method == Method::POST {
                store.stats.batches += 1;
                batch(
                    &mut store,
                    &api,
                    header("content-type").as_deref().unwrap_or(""),
                    header("prefer").as_deref().unwrap_or(""),
                    &text,
                )
            } else {
                let mut undo = Vec::new();
                execute(
                    &mut store,
                    &api,
                    &parts.method,
                    relative,
                    &query,
                    &|n| header(n),
                    &text,
                    &HashMap::new(),
                    &mut undo,
                )
                .1
            }
        }
    };
    let mut store = shared.store();
    store.stats.requests += 1;
    if !relative.starts_with("/$batch") {
        store.note(status, &text);
    }
    if store.log.len() < MAX_LOG {
        store.log.push(LoggedRequest {
            at_ms: arrived_ms,
            done_ms: now_ms(),
            method: parts.method.to_string(),
            path: relative.to_owned(),
            query: query.clone(),
            prefer: header("prefer"),
            kind,
            status,
        });
    }
    drop(store);
    respond(status, headers, text)
}

fn token(shared: &Shared, body: &[u8]) -> Response<Full<Bytes>> {
    let form: HashMap<String, String> = String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((decode_form(k), decode_form(v)))
        })
        .collect();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return json_response(400, &json!({"error": "unsupported_grant_type"}));
    }
    if let Some((id, secret)) = &shared.options.credentials
        && (form.get("client_id") != Some(id) || form.get("client_secret") != Some(secret))
    {
        return json_response(401, &json!({"error": "invalid_client"}));
    }
    let n = shared.issued.fetch_add(1, Ordering::Relaxed) + 1;
    let token = format!("simulated-token-{n}-{:016x}", rand::random::<u64>());
    let lifetime = shared.options.token_lifetime;
    if let Ok(mut tokens) = shared.tokens.lock() {
        let now = std::time::Instant::now();
        tokens.retain(|_, expires| *expires > now);
        tokens.insert(token.clone(), now + lifetime);
    }
    json_response(
        200,
        &json!({"token_type": "Bearer", "expires_in": lifetime.as_secs(), "access_token": token}),
    )
}

fn decode_form(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn control_endpoint(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
) -> Response<Full<Bytes>> {
    match (method, path) {
        (&Method::POST, "faults") => match serde_json::from_slice::<DataverseFaults>(body) {
            Ok(f) => {
                shared.set_faults(f.clone());
                json_response(200, &f)
            }
            Err(e) => json_response(400, &json!({"error": e.to_string()})),
        },
        (&Method::GET, "faults") => json_response(200, &*shared.faults()),
        (&Method::GET, "records") => {
            let store = shared.store();
            let wanted = query
                .split('&')
                .find_map(|p| p.strip_prefix("set="))
                .map(decode_form);
            let mut out = Map::new();
            for (set, rows) in &store.tables {
                if wanted.as_ref().is_none_or(|w| w == set) {
                    out.insert(
                        set.clone(),
                        Value::Array(rows.values().cloned().map(Value::Object).collect()),
                    );
                }
            }
            json_response(200, &out)
        }
        (&Method::POST, "records") => {
            #[derive(Deserialize)]
            struct Seed {
                set: String,
                id: Uuid,
                #[serde(default)]
                fields: Map<String, Value>,
            }
            match serde_json::from_slice::<Seed>(body) {
                Ok(s) => {
                    insert_seed(&mut shared.store(), &s.set, s.id, s.fields);
                    json_response(201, &json!({"seeded": s.id}))
                }
                Err(e) => json_response(400, &json!({"error": e.to_string()})),
            }
        }
        (&Method::GET, "stats") => json_response(200, &shared.store().stats),
        (&Method::GET, "requests") => json_response(200, &shared.store().log),
        _ => json_response(404, &json!({"error": "unknown control endpoint"})),
    }
}

/// `/emails(<id>)` → ("emails", Some(id)); `/emails` → ("emails", None).
fn parse_target(relative: &str) -> Option<(String, Option<Uuid>)> {
    let path = relative.strip_prefix('/')?;
    match path.split_once('(') {
        Some((set, rest)) => {
            let key = rest.strip_suffix(')')?;
            let id = Uuid::parse_str(key.trim_matches('\'')).ok()?;
            valid_set(set).then(|| (set.to_owned(), Some(id)))
        }
        None => valid_set(path).then(|| (path.to_owned(), None)),
    }
}

fn valid_set(set: &str) -> bool {
    !set.is_empty()
        && set.len() <= 64
        && set
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Resolves an `@odata.bind` value (`/contacts(<id>)`, a full URL ending so, or `$n`).
fn resolve_bind(
    store: &Store,
    value: &Value,
    references: &HashMap<String, String>,
) -> Result<(String, Uuid), String> {
    let text = value.as_str().ok_or("a bind value must be a string")?;
    let text = references.get(text).map(String::as_str).unwrap_or(text);
    let tail = match text.rfind('/') {
        Some(i) => &text[i..],
        None => return Err(format!("cannot resolve the bind {text:?}")),
    };
    let (set, id) = parse_target(tail)
        .and_then(|(s, id)| Some((s, id?)))
        .ok_or_else(|| format!("cannot resolve the bind {text:?}"))?;
    if store.tables.get(&set).is_some_and(|t| t.contains_key(&id)) {
        Ok((set, id))
    } else {
        Err(format!(
            "A record with the specified key values does not exist in {} entity",
            entity_of(&set)
        ))
    }
}

/// The lookup column of a stored `_<navigation>_value` key.
fn stored_lookup_column(key: &str) -> Option<&str> {
    key.strip_prefix('_')
        .and_then(|k| k.strip_suffix("_value"))
        .map(lookup_column)
}

/// The application user the simulator's clients sign in as (`WhoAmI` answers it).
pub const APPLICATION_USER: Uuid = Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0001);

/// `WhoAmI`: the signed-in user, its business unit and the organization.
fn who_am_i(api: &str) -> Answer {
    (
        200,
        vec![("Content-Type".into(), "application/json".into())],
        json!({
            "@odata.context": format!("{api}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse"),
            "BusinessUnitId": Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0002),
            "UserId": APPLICATION_USER,
            "OrganizationId": Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0003),
        })
        .to_string(),
    )
}

/// The privileges of the application user's role: what an integration role holds, less what
/// the test withheld.
const APPLICATION_PRIVILEGES: &[&str] = &[
    "prvCreateActivity",
    "prvReadActivity",
    "prvWriteActivity",
    "prvAppendActivity",
    "prvAppendToActivity",
    "prvCreateContact",
    "prvReadContact",
    "prvWriteContact",
    "prvAppendToContact",
    "prvCreateLead",
    "prvReadLead",
    "prvAppendToLead",
    "prvReadAccount",
    "prvAppendToAccount",
    "prvReadOpportunity",
    "prvAppendToOpportunity",
    "prvReadIncident",
    "prvAppendToIncident",
    "prvReadUser",
    "prvReadMailbox",
    "prvReadQueue",
    "prvActOnBehalfOfAnotherUser",
];

/// `RetrieveUserPrivileges`: one entry per privilege, global depth.
fn user_privileges(withheld: &[String]) -> Answer {
    let privileges: Vec<Value> = APPLICATION_PRIVILEGES
        .iter()
        .filter(|p| !withheld.iter().any(|w| w == *p))
        .enumerate()
        .map(|(n, name)| {
            json!({
                "Depth": "Global",
                "PrivilegeId": Uuid::from_u128(0x9e1f_0000_0000_4000_8000_0000_0000_0000 + n as u128),
                "BusinessUnitId": Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0002),
                "PrivilegeName": name,
            })
        })
        .collect();
    (
        200,
        vec![("Content-Type".into(), "application/json".into())],
        json!({
            "@odata.context": "$metadata#Microsoft.Dynamics.CRM.RetrieveUserPrivilegesResponse",
            "RolePrivileges": privileges,
        })
        .to_string(),
    )
}

fn refused(r: strict::Refusal) -> Answer {
    error(r.status, r.code, &r.message)
}

/// `$select`, `$filter` and `$expand` name only what the table declares.
fn check_query(
    table: &metadata::Table,
    query: &str,
    leniency: Leniency,
) -> Result<(), strict::Refusal> {
    let params = query_params(query);
    let mut names: Vec<&str> = Vec::new();
    if let Some(select) = params.get("$select") {
        names.extend(select.split(',').map(str::trim).filter(|c| !c.is_empty()));
    }
    let filter = params.get("$filter").and_then(|f| Filter::parse(f).ok());
    if let Some(f) = &filter {
        names.extend(f.columns());
    }
    strict::readable(table, &names, leniency)?;
    match params.get("$expand") {
        Some(expand) if !leniency.undeclared => {
            let nav = expand.split('(').next().unwrap_or("").trim();
            match table.parties.filter(|p| p.nav == nav) {
                Some(_) => Ok(()),
                None => strict::readable(table, &[nav], leniency),
            }
        }
        _ => Ok(()),
    }
}

/// The body of a write checked against the table's metadata, with binds (also inside activity
/// parties) turned into stored lookups and state/status completed.
fn checked_row(
    store: &Store,
    set: &str,
    existing: Option<&Map<String, Value>>,
    body: &Map<String, Value>,
    references: &HashMap<String, String>,
) -> Result<Map<String, Value>, Answer> {
    let Some(table) = metadata::by_set(set) else {
        // Only reached with the `undeclared` leniency: stored as sent, binds resolved.
        return lenient_row(store, body, references);
    };
    let write = strict::Write {
        table,
        existing,
        leniency: store.leniency,
    };
    let resolve = |value: &Value| {
        resolve_bind(store, value, references).map_err(|m| strict::Refusal {
            status: 400,
            code: "0x80060891",
            message: m,
        })
    };
    let mut row = Map::new();
    for (key, value) in body {
        write.closed(key).map_err(refused)?;
        if let Some(nav) = key.strip_suffix("@odata.bind") {
            let bound = resolve(value).map_err(refused)?;
            write.bind(nav, &bound).map_err(refused)?;
            row.insert(
                format!("_{nav}_value"),
                json!({"set": bound.0, "id": bound.1.to_string()}),
            );
        } else if key.starts_with('@') {
            continue;
        } else if let Some(parties) = value
            .as_array()
            .filter(|_| key.ends_with("_activity_parties"))
        {
            let stored = write.parties(key, parties, resolve).map_err(refused)?;
            row.insert(key.clone(), Value::Array(stored));
        } else {
            write.column(key, value).map_err(refused)?;
            row.insert(key.clone(), value.clone());
        }
    }
    write.state_and_status(&mut row).map_err(refused)?;
    Ok(row)
}

/// A row of a table the metadata does not declare (the `undeclared` leniency).
fn lenient_row(
    store: &Store,
    body: &Map<String, Value>,
    references: &HashMap<String, String>,
) -> Result<Map<String, Value>, Answer> {
    let mut row = Map::new();
    for (key, value) in body {
        match key.strip_suffix("@odata.bind") {
            Some(nav) => {
                let (set, id) = resolve_bind(store, value, references)
                    .map_err(|m| error(400, "0x80060891", &m))?;
                row.insert(
                    format!("_{nav}_value"),
                    json!({"set": set, "id": id.to_string()}),
                );
            }
            None => {
                row.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(row)
}

type Answer = (u16, Vec<(String, String)>, String);

/// Runs one API request against the store; returns the entity path it touched (for Content-ID
/// references) and the answer. One arm per Web API verb and path shape, as a flat table.
#[allow(clippy::too_many_arguments)]
fn execute(
    store: &mut Store,
    api: &str,
    method: &Method,
    relative: &str,
    query: &str,
    header: &dyn Fn(&str) -> Option<String>,
    body: &str,
    references: &HashMap<String, String>,
    undo: &mut Vec<Undo>,
) -> (Option<String>, Answer) {
    let relative = references
        .iter()
        .find_map(|(r, target)| {
            relative
                .strip_prefix(r.as_str())
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))
                .map(|rest| format!("{target}{rest}"))
        })
        .unwrap_or_else(|| relative.to_owned());
    if *method == Method::GET && matches!(relative.as_str(), "/WhoAmI" | "/WhoAmI()") {
        return (None, who_am_i(api));
    }
    if *method == Method::GET
        && relative.ends_with("/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()")
    {
        return (None, user_privileges(&store.withheld_privileges));
    }
    let Some((set, id)) = parse_target(&relative) else {
        let segment = relative.trim_start_matches('/');
        return (None, refused(strict::unknown_set(segment)));
    };
    let table = metadata::by_set(&set);
    if table.is_none() && !store.leniency.undeclared {
        return (None, refused(strict::unknown_set(&set)));
    }
    if let Err(r) = strict::caller(
        store,
        header("callerobjectid").as_deref(),
        header("mscrmcallerid").as_deref(),
        store.leniency,
    ) {
        return (None, refused(r));
    }
    if method == Method::GET
        && let Some(table) = table
        && let Err(r) = check_query(table, query, store.leniency)
    {
        return (None, refused(r));
    }
    let entity_path = |id: Uuid| format!("/{set}({id})");
    let created_headers =
        |id: Uuid| vec![("OData-EntityId".to_owned(), format!("{api}/{set}({id})"))];
    match (method.clone(), id) {
        (Method::GET, Some(id)) => match store.tables.get(&set).and_then(|t| t.get(&id)) {
            Some(row) => (
                Some(entity_path(id)),
                (
                    200,
                    vec![("Content-Type".into(), "application/json".into())],
                    Value::Object(wire_row(row, &query_params(query))).to_string(),
                ),
            ),
            None => (
                None,
                error(
                    404,
                    "0x80040217",
                    &format!("{set} With Id = {id} Does Not Exist"),
                ),
            ),
        },
        (Method::GET, None) => (None, query_set(store, api, &set, query, header)),
        (Method::DELETE, Some(id)) => {
            match store.tables.get_mut(&set).and_then(|t| t.remove(&id)) {
                Some(before) => {
                    changed(store, &set, id, true);
                    undo.push(Undo {
                        set: set.clone(),
                        id,
                        before: Some(before),
                        created: false,
                    });
                    (None, (204, Vec::new(), String::new()))
                }
                None => (None, error(404, "0x80040217", "Does Not Exist")),
            }
        }
        (Method::POST, Some(_)) => (
            None,
            error(
                405,
                "0x80060888",
                "POST creates in an entity set; to create or update a row with a known key use PATCH (upsert).",
            ),
        ),
        (Method::PATCH, Some(id)) => write(store, &set, id, header, body, references, undo, false)
            .map(|(id, a)| {
                (
                    Some(entity_path(id)),
                    (a.0, [a.1, created_headers(id)].concat(), a.2),
                )
            })
            .unwrap_or_else(|a| (None, a)),
        (Method::POST, None) => {
            let id = serde_json::from_str::<Map<String, Value>>(body)
                .ok()
                .and_then(|b| {
                    b.get(&pk(&set))
                        .and_then(Value::as_str)
                        .and_then(|s| Uuid::parse_str(s).ok())
                })
                .unwrap_or_else(|| uuid::Builder::from_random_bytes(rand::random()).into_uuid());
            write(store, &set, id, header, body, references, undo, true)
                .map(|(id, a)| {
                    (
                        Some(entity_path(id)),
                        (a.0, [a.1, created_headers(id)].concat(), a.2),
                    )
                })
                .unwrap_or_else(|a| (None, a))
        }
        _ => (
            None,
            error(405, "0x80060888", "Method not allowed for this resource."),
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn write(
    store: &mut Store,
    set: &str,
    id: Uuid,
    header: &dyn Fn(&str) -> Option<String>,
    body: &str,
    references: &HashMap<String, String>,
    undo: &mut Vec<Undo>,
    create_only: bool,
) -> Result<(Uuid, Answer), Answer> {
    let exists = store.tables.get(set).is_some_and(|t| t.contains_key(&id));
    if (create_only || header("if-none-match").as_deref() == Some("*")) && exists {
        *store.stats.already_there.entry(set.to_owned()).or_default() += 1;
        return Err(error(
            412,
            "0x80040237",
            "A record with matching key values already exists.",
        ));
    }
    if header("if-match").as_deref() == Some("*") && !exists {
        return Err(error(
            404,
            "0x80040217",
            &format!("{set} With Id = {id} Does Not Exist"),
        ));
    }
    let body: Map<String, Value> = serde_json::from_str(body).map_err(|_| {
        error(
            400,
            "0x80048d19",
            "Error identified in Payload provided by the user.",
        )
    })?;
    let before = store.tables.get(set).and_then(|t| t.get(&id)).cloned();
    let created = before.is_none();
    let row = checked_row(store, set, before.as_ref(), &body, references)?;
    let mut merged = before.clone().unwrap_or_default();
    for key in row.keys() {
        // A lookup holds one value: binding it again through another target's navigation
        // property replaces the earlier one.
        if let Some(column) = stored_lookup_column(key) {
            merged.retain(|k, _| k == key || stored_lookup_column(k) != Some(column));
        }
    }
    merged.extend(row);
    merged.insert(pk(set), Value::String(id.to_string()));
    merged.insert("modifiedon".into(), iso_now().into());
    // The row version Dataverse raises on every change (finer than `modifiedon`'s seconds).
    store.sequence += 1;
    merged.insert("versionnumber".into(), store.sequence.into());
    if created {
        if !merged.contains_key("createdon") {
            merged.insert("createdon".into(), iso_now().into());
        }
        // Rows are created active, as in Dataverse.
        if !merged.contains_key("statecode") {
            merged.insert("statecode".into(), 0.into());
        }
        store.sequence += 1;
        merged.insert("_sim_created_ms".into(), now_ms().into());
        merged.insert("_sim_created_seq".into(), store.sequence.into());
        // Who it was created for (`createdonbehalfby` in Dataverse).
        if let Some(caller) = header("callerobjectid") {
            merged.insert("_sim_callerobjectid".into(), caller.into());
        }
    }
    store
        .tables
        .entry(set.to_owned())
        .or_default()
        .insert(id, merged);
    changed(store, set, id, false);
    undo.push(Undo {
        set: set.to_owned(),
        id,
        before,
        created,
    });
    if created {
        if !store.ever.insert((set.to_owned(), id)) {
            store.stats.recreated += 1;
        }
        *store.stats.created.entry(set.to_owned()).or_default() += 1;
    }
    Ok((id, (204, Vec::new(), String::new())))
}

fn rollback(store: &mut Store, undo: Vec<Undo>) {
    for u in undo.into_iter().rev() {
        let table = store.tables.entry(u.set.clone()).or_default();
        match u.before {
            Some(row) => {
                table.insert(u.id, row);
            }
            None => {
                table.remove(&u.id);
            }
        }
        if u.created {
            store.ever.remove(&(u.set.clone(), u.id));
            if let Some(n) = store.stats.created.get_mut(&u.set) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// Re-encodes a decoded query value for a link (`%`, `&`, `#`, `+` and spaces).
fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '%' => out.push_str("%25"),
            '&' => out.push_str("%26"),
            '#' => out.push_str("%23"),
            '+' => out.push_str("%2B"),
            ' ' => out.push_str("%20"),
            c => out.push(c),
        }
    }
    out
}

fn query_params(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((decode_form(k), decode_form(v)))
        })
        .collect()
}

fn query_set(
    store: &Store,
    api: &str,
    set: &str,
    query: &str,
    header: &dyn Fn(&str) -> Option<String>,
) -> Answer {
    let params = query_params(query);
    if let Some(token) = params.get("$deltatoken") {
        return delta(store, api, set, token, &params);
    }
    let track = header("prefer").is_some_and(|p| p.contains("odata.track-changes"));
    let rows: Vec<&Map<String, Value>> = match store.tables.get(set) {
        Some(t) => t.values().collect(),
        None => Vec::new(),
    };
    let filter = match params.get("$filter").map(|f| Filter::parse(f)) {
        Some(Err(e)) => return error(400, "0x80060888", &e.to_string()),
        Some(Ok(f)) => Some(f),
        None => None,
    };
    let selected: Vec<&Map<String, Value>> = match &filter {
        Some(f) => rows
            .into_iter()
            .filter(|row| f.matches(&unselected_wire_row(row, &params)))
            .collect(),
        None => rows,
    };
    let mut selected = selected;
    if let Some(top) = params.get("$top").and_then(|t| t.parse::<usize>().ok()) {
        selected.truncate(top);
    }
    let page = header("prefer")
        .and_then(|p| {
            p.split(',').find_map(|x| {
                x.trim()
                    .strip_prefix("odata.maxpagesize=")
                    .map(str::to_owned)
            })
        })
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(5000)
        .clamp(1, 5000);
    let skip = params
        .get("$skiptoken")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    let value: Vec<Value> = selected
        .iter()
        .skip(skip)
        .take(page)
        .map(|r| Value::Object(wire_row(r, &params)))
        .collect();
    let mut answer = Map::new();
    answer.insert("value".into(), Value::Array(value));
    if skip.saturating_add(page) < selected.len() {
        let mut next: Vec<String> = params
            .iter()
            .filter(|(k, _)| k.as_str() != "$skiptoken")
            .map(|(k, v)| format!("{k}={}", encode_query_value(v)))
            .collect();
        next.sort();
        next.push(format!("$skiptoken={}", skip.saturating_add(page)));
        answer.insert(
            "@odata.nextLink".into(),
            format!("{api}/{set}?{}", next.join("&")).into(),
        );
    } else if track {
        answer.insert(
            "@odata.deltaLink".into(),
            delta_link(api, set, store.version, &params).into(),
        );
    }
    let mut headers = vec![("Content-Type".into(), "application/json".into())];
    if track {
        headers.push(("Preference-Applied".into(), "odata.track-changes".into()));
    }
    (200, headers, Value::Object(answer).to_string())
}

fn delta_link(api: &str, set: &str, version: u64, params: &HashMap<String, String>) -> String {
    match params.get("$select") {
        Some(select) => format!("{api}/{set}?$select={select}&$deltatoken={version}"),
        None => format!("{api}/{set}?$deltatoken={version}"),
    }
}

/// A change-tracking query: the rows of `set` changed since the token (their current state) and
/// the deleted ones as `$deletedEntity` entries, then a new delta link.
fn delta(
    store: &Store,
    api: &str,
    set: &str,
    token: &str,
    params: &HashMap<String, String>,
) -> Answer {
    let Ok(since) = token.parse::<u64>() else {
        return error(400, "0x80044352", "The delta token is not valid.");
    };
    if since < store.changes_from || since > store.version {
        return error(
            410,
            "0x80044352",
            "The delta token has expired; load the set again.",
        );
    }
    // The last change of each row since the token decides what it looks like now.
    let mut latest: Vec<(Uuid, bool)> = Vec::new();
    let mut seen = HashSet::new();
    for change in store.changes.iter().rev() {
        if change.version <= since {
            break;
        }
        if change.set == set && seen.insert(change.id) {
            latest.push((change.id, change.deleted));
        }
    }
    latest.reverse();
    let value: Vec<Value> = latest
        .into_iter()
        .map(|(id, deleted)| {
            match store
                .tables
                .get(set)
                .and_then(|t| t.get(&id))
                .filter(|_| !deleted)
            {
                Some(row) => Value::Object(wire_row(row, params)),
                None => json!({
                    "@odata.context": format!("{api}/$metadata#{set}/$deletedEntity"),
                    "id": id.to_string(),
                    "reason": "deleted",
                }),
            }
        })
        .collect();
    let answer = json!({
        "value": value,
        "@odata.deltaLink": delta_link(api, set, store.version, params),
    });
    (
        200,
        vec![
            ("Content-Type".into(), "application/json".into()),
            ("Preference-Applied".into(), "odata.track-changes".into()),
        ],
        answer.to_string(),
    )
}

fn reason(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

fn response_part(answer: &Answer, content_id: Option<String>) -> HttpPart {
    HttpPart {
        start: format!("HTTP/1.1 {} {}", answer.0, reason(answer.0)),
        headers: answer.1.clone(),
        body: answer.2.clone(),
        content_id,
    }
}

fn run_part(
    store: &mut Store,
    api: &str,
    part: &HttpPart,
    references: &HashMap<String, String>,
    undo: &mut Vec<Undo>,
) -> (Option<String>, Answer) {
    let mut words = part.start.split_whitespace();
    let method = words
        .next()
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(Method::GET);
    let target = words.next().unwrap_or("");
    let target = target
        .find(api)
        .map(|i| &target[i + api.len()..])
        .unwrap_or(target);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let header = |name: &str| part.header(name).map(str::to_owned);
    execute(
        store, api, &method, path, query, &header, &part.body, references, undo,
    )
}

fn batch(store: &mut Store, api: &str, content_type: &str, prefer: &str, body: &str) -> Answer {
    let Some(boundary) = multipart::boundary(content_type) else {
        return error(
            400,
            "0x80048d19",
            "The batch request needs a multipart/mixed boundary.",
        );
    };
    let items = match multipart::read_batch(boundary, body) {
        Ok(items) => items,
        Err(e) => return error(400, "0x80048d19", &e.to_string()),
    };
    if items.len() > multipart::MAX_PARTS {
        return error(400, "0x80048d19", "A batch holds at most 1000 requests.");
    }
    let continue_on_error = prefer.contains("odata.continue-on-error");
    let mut answers = Vec::new();
    for item in &items {
        let failed = match item {
            BatchItem::Single(part) => {
                let (_, answer) = run_part(store, api, part, &HashMap::new(), &mut Vec::new());
                store.note(answer.0, &answer.2);
                let failed = answer.0 >= 400;
                answers.push(BatchItem::Single(response_part(&answer, None)));
                failed
            }
            BatchItem::ChangeSet(parts) => {
                let mut undo = Vec::new();
                let changes_mark = store.changes.len();
                let mut references = HashMap::new();
                let mut responses = Vec::new();
                let mut failure = None;
                for part in parts {
                    if part.start.starts_with("GET ") {
                        failure = Some(error(400, "0x80048d19", "A change set cannot hold a GET."));
                        break;
                    }
                    let (entity, answer) = run_part(store, api, part, &references, &mut undo);
                    store.note(answer.0, &answer.2);
                    if answer.0 >= 400 {
                        failure = Some(answer);
                        break;
                    }
                    if let (Some(id), Some(entity)) = (&part.content_id, entity) {
                        references.insert(format!("${id}"), entity);
                    }
                    responses.push(response_part(&answer, part.content_id.clone()));
                }
                match failure {
                    Some(answer) => {
                        rollback(store, undo);
                        store.changes.truncate(changes_mark);
                        answers.push(BatchItem::Single(response_part(&answer, None)));
                        true
                    }
                    None => {
                        answers.push(BatchItem::ChangeSet(responses));
                        false
                    }
                }
            }
        };
        if failed && !continue_on_error {
            break;
        }
    }
    let boundary = format!("batchresponse_{:016x}", rand::random::<u64>());
    (
        200,
        vec![(
            "Content-Type".into(),
            format!("multipart/mixed; boundary={boundary}"),
        )],
        multipart::write_batch(&boundary, &answers),
    )
}

#[cfg(test)]
mod tests;
