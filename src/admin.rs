//! The admin listener: `/healthz` (the process is alive), `/readyz` (it accepts traffic and is
//! not draining), `/metrics` (Prometheus text), `POST /explain` (an observation in, the
//! decisions and their reasoning out, as a dry run) and `GET /decisions` (the most recent
//! decisions), the outbox (`GET /outbox/stats|pending|dead`, `POST /outbox/retry/<id>`,
//! `POST /outbox/skip/<id>`) and the journal (`GET /journal`, `GET /journal/<id>`).
//! `/options/…` is the Personal Options page ([`crate::options`]), with its own sign-in.
//! Loopback by default. Endpoints that show CRM data need the admin token when one is
//! configured; the two outbox mutations are POST-only and refused unless a token is configured.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::common::Secret;
use crate::crm::Journal;
use crate::directory::DirectoryMetrics;
use crate::directory::dataverse::DataverseSource;
use crate::inspect::Observation;
use crate::outbox::{Outbox, OutboxError};
use crate::proxy::Proxy;
use crate::rules::{Engine, Mode, RecentDecisions};

/// Largest `POST /explain` body, and the most observations in one.
const MAX_EXPLAIN_BODY: usize = 1 << 20;
const MAX_EXPLAIN_OBSERVATIONS: usize = 1000;

/// What the admin endpoints read.
pub struct AdminState {
    pub proxy: Arc<Proxy>,
    pub registry: Arc<Registry>,
    pub engine: Arc<Engine>,
    pub decisions: Arc<RecentDecisions>,
    /// Bearer token for the endpoints that show CRM data.
    pub token: Option<Secret>,
    pub outbox: Arc<dyn Outbox>,
    /// The journal, when it is the sink.
    pub journal: Option<Arc<Journal>>,
    /// The Dataverse directory source, when the directory comes from Dataverse.
    pub directory_source: Option<Arc<DataverseSource>>,
    pub directory_metrics: Arc<DirectoryMetrics>,
    /// The catch-up sweep, when it runs.
    pub catchup: Option<Arc<crate::catchup::Sweeper>>,
    /// Synchronisation, when it runs.
    pub sync: Option<Arc<crate::sync::Syncer>>,
    /// What stops delivery until an operator acts, when delivery runs.
    pub delivery: Option<Arc<crate::delivery::DeliveryHealth>>,
    /// The Personal Options page, when it is served.
    pub options: Option<Arc<crate::options::OptionsPage>>,
}

/// Most entries one listing returns.
const MAX_LISTING: usize = 10_000;

/// Serves admin requests until `stop` turns true.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// The admin endpoints: one match arm per method and path, each calling its handler. Long only
/// because the routing table is flat; a table read in one place is the point.
async fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path == "/options" || path.starts_with("/options/") {
        return match &state.options {
            Some(page) => page.handle(req).await,
            None => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "the options page is off (README, Options page)\n".into(),
            ),
        };
    }
    if path == "/explain" {
        if let Some(refused) = post_only(state, &req, "use POST with a JSON observation\n") {
            return refused;
        }
        return explain(state, req).await;
    }
    if path == "/directory/refresh" {
        if let Some(refused) = post_only(state, &req, "use POST\n") {
            return refused;
        }
        return refresh_directory(state).await;
    }
    if let Some(mailbox) = path.strip_prefix("/catchup/run/") {
        if let Some(refused) = post_only(state, &req, "use POST\n") {
            return refused;
        }
        return catchup_run(state, &crate::common::text::percent_decode(mailbox));
    }
    if let Some(mailbox) = path.strip_prefix("/sync/run/") {
        if let Some(refused) = post_only(state, &req, "use POST\n") {
            return refused;
        }
        return sync_run(state, &crate::common::text::percent_decode(mailbox)).await;
    }
    if let Some(action) = path.strip_prefix("/outbox/")
        && (action.starts_with("retry/") || action.starts_with("skip/"))
    {
        return outbox_mutation(state, &req, action).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        );
    }
    match path.as_str() {
        "/decisions" => {
            if let Some(denied) = authorize(state, &req) {
                return denied;
            }
            match serde_json::to_string_pretty(&state.decisions.snapshot()) {
                Ok(json) => reply(StatusCode::OK, "application/json", json + "\n"),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "cannot encode\n".into(),
                ),
            }
        }
        "/outbox/stats" => {
            let outbox = state.outbox.clone();
            json_reply(off_the_runtime(move || outbox.stats()).await)
        }
        "/catchup" => {
            if let Some(denied) = authorize(state, &req) {
                return denied;
            }
            match &state.catchup {
                Some(sweeper) => json_reply::<_, std::convert::Infallible>(Ok(sweeper.status())),
                None => catchup_off(),
            }
        }
        "/sync" => {
            if let Some(denied) = authorize(state, &req) {
                return denied;
            }
            match &state.sync {
                Some(syncer) => {
                    json_reply::<_, std::convert::Infallible>(Ok(syncer.status().await))
                }
                None => sync_off(),
            }
        }
        "/directory" => json_reply::<_, std::convert::Infallible>(Ok(directory_status(state))),
        "/outbox/pending" | "/outbox/dead" | "/journal" => {
            if let Some(denied) = authorize(state, &req) {
                return denied;
            }
            let limit = limit(req.uri().query());
            let outbox = state.outbox.clone();
            match path.as_str() {
                "/outbox/pending" => {
                    json_reply(off_the_runtime(move || outbox.pending(limit)).await)
                }
                "/outbox/dead" => {
                    json_reply(off_the_runtime(move || outbox.dead_letters(limit)).await)
                }
                _ => match &state.journal {
                    Some(j) => json_reply(j.list(limit)),
                    None => no_journal(),
                },
            }
        }
        p if p.starts_with("/journal/") => {
            if let Some(denied) = authorize(state, &req) {
                return denied;
            }
            let Some(id) = p
                .strip_prefix("/journal/")
                .and_then(|i| uuid::Uuid::parse_str(i).ok())
            else {
                return reply(StatusCode::BAD_REQUEST, "text/plain", "not an id\n".into());
            };
            match &state.journal {
                Some(j) => match j.show(id) {
                    Err(crate::crm::journal::JournalError::NotFound(_)) => reply(
                        StatusCode::NOT_FOUND,
                        "text/plain",
                        "no such entry\n".into(),
                    ),
                    other => json_reply(other),
                },
                None => no_journal(),
            }
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let refused = state.delivery.as_ref().and_then(|d| d.problem());
            if let Some(error) = refused.filter(|_| state.proxy.is_ready()) {
                // Traffic still flows; what the CRM should get waits in the outbox. Not ready
                // so that a deployment with wrong credentials fails its checks at once.
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!(
                        "not ready: the CRM refused trackgate's credentials ({error}); fix \
                         [crm.dataverse] client_id / client_secret / token_url and restart; \
                         decisions wait in the outbox\n"
                    ),
                )
            } else if state.proxy.is_ready() {
                // Staleness is a detail, never a reason to stop proxying.
                let detail = readiness_detail(state);
                reply(StatusCode::OK, "text/plain", format!("ready\n{detail}"))
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: starting or draining\n".into(),
                )
            }
        }
        "/metrics" => {
            state.proxy.metrics.refresh_reuse_ratio();
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::telemetry::render(&state.registry),
            )
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Refuses what is not an authorized POST.
fn post_only(
    state: &AdminState,
    req: &Request<Incoming>,
    hint: &str,
) -> Option<Response<Full<Bytes>>> {
    if req.method() != Method::POST {
        return Some(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            hint.to_owned(),
        ));
    }
    authorize(state, req)
}

fn catchup_off() -> Response<Full<Bytes>> {
    reply(
        StatusCode::NOT_FOUND,
        "text/plain",
        "the catch-up sweep is off: it needs [exchange] ews_url (or the built-in simulator), and [catchup] enabled not false\n".into(),
    )
}

/// `POST /catchup/run/{mailbox}`: sweep a mailbox next.
fn catchup_run(state: &AdminState, mailbox: &str) -> Response<Full<Bytes>> {
    let Some(sweeper) = &state.catchup else {
        return catchup_off();
    };
    if !sweeper
        .status()
        .iter()
        .any(|s| s.mailbox.eq_ignore_ascii_case(mailbox))
    {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "the directory has no such mailbox\n".into(),
        );
    }
    sweeper.mark(mailbox);
    reply(
        StatusCode::ACCEPTED,
        "text/plain",
        "marked: swept next\n".into(),
    )
}

fn sync_off() -> Response<Full<Bytes>> {
    reply(
        StatusCode::NOT_FOUND,
        "text/plain",
        "synchronisation is off: it needs the directory from Dataverse, [exchange] ews_url (or the built-in simulator), and [sync] enabled not false\n".into(),
    )
}

/// `POST /sync/run/{mailbox}`: run a mailbox at the next tick, its dead letters tried again.
async fn sync_run(state: &AdminState, mailbox: &str) -> Response<Full<Bytes>> {
    let Some(syncer) = &state.sync else {
        return sync_off();
    };
    let known = syncer
        .status()
        .await
        .iter()
        .any(|s| s.mailbox.eq_ignore_ascii_case(mailbox));
    if !known {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "no mailbox of that address synchronises (a user's mailbox on server-side sync for appointments, contacts and tasks)\n".into(),
        );
    }
    match syncer.request(mailbox) {
        Ok(retried) => reply(
            StatusCode::ACCEPTED,
            "text/plain",
            format!(
                "requested: runs at the next tick, every linked row compared again, {retried} dead letters retried\n"
            ),
        ),
        Err(error) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{error}\n"),
        ),
    }
}

fn limit(query: Option<&str>) -> usize {
    query
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("limit=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(100)
        .min(MAX_LISTING)
}

fn no_journal() -> Response<Full<Bytes>> {
    reply(
        StatusCode::NOT_FOUND,
        "text/plain",
        "the journal is not the configured sink (crm.sink)\n".into(),
    )
}

fn json_reply<T: serde::Serialize, E: std::fmt::Display>(
    result: Result<T, E>,
) -> Response<Full<Bytes>> {
    match result.map(|v| serde_json::to_string_pretty(&v)) {
        Ok(Ok(json)) => reply(StatusCode::OK, "application/json", json + "\n"),
        Ok(Err(e)) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("cannot encode: {e}\n"),
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e}\n"),
        ),
    }
}

/// `POST /outbox/retry/<id>` and `POST /outbox/skip/<id>`.
async fn outbox_mutation(
    state: &AdminState,
    req: &Request<Incoming>,
    action: &str,
) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use POST\n".into(),
        );
    }
    if state.token.is_none() {
        return reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            "outbox changes need admin.token to be configured\n".into(),
        );
    }
    if let Some(denied) = authorize(state, req) {
        return denied;
    }
    let (verb, id) = action.split_once('/').unwrap_or((action, ""));
    let Ok(id) = uuid::Uuid::parse_str(id) else {
        return reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "the path ends with the record id (a UUID, as `outbox dead` lists it)\n".into(),
        );
    };
    // The writer thread commits the change; wait for it off the admin task.
    let outbox = state.outbox.clone();
    let retry = verb == "retry";
    let result = off_the_runtime(move || {
        if retry {
            outbox.retry(id)
        } else {
            outbox.skip(id)
        }
    })
    .await;
    match result {
        Ok(()) => reply(StatusCode::OK, "text/plain", format!("{verb}: {id}\n")),
        Err(e @ OutboxError::NotFound { .. }) => {
            reply(StatusCode::NOT_FOUND, "text/plain", format!("{e}\n"))
        }
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e}\n"),
        ),
    }
}

/// `None` when allowed; otherwise the 401 to send.
fn authorize(state: &AdminState, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let token = state.token.as_ref()?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|g| {
        crate::common::secret::same_secret(g.as_bytes(), token.expose().as_bytes())
    }) {
        return None;
    }
    let mut r = reply(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        "this endpoint needs `Authorization: Bearer <admin.token>`\n".into(),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    Some(r)
}

/// How much of an over-long body is read and discarded before answering 413, so that a client
/// still sending gets the answer rather than a reset; beyond it the connection is closed.
const DRAIN_LIMIT: usize = 16 << 20;

/// Reads a bounded body within a deadline.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    use http_body_util::BodyExt;
    let mut body = req.into_body();
    let read = async {
        let mut kept = bytes::BytesMut::new();
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map(|f| f.into_data()) else {
                return Err(());
            };
            if let Ok(data) = data {
                seen += data.len();
                if seen <= MAX_EXPLAIN_BODY {
                    kept.extend_from_slice(&data);
                } else if seen > DRAIN_LIMIT {
                    break;
                }
            }
        }
        Ok((kept.freeze(), seen))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
        Ok(Ok((body, seen))) if seen <= MAX_EXPLAIN_BODY => Ok(body),
        Ok(Ok((_, seen))) => {
            let mut r = reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                format!("the body is over {MAX_EXPLAIN_BODY} bytes\n"),
            );
            if seen > DRAIN_LIMIT {
                r.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            Err(r)
        }
        Ok(Err(())) => Err(reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "cannot read the body\n".into(),
        )),
        Err(_) => Err(reply(
            StatusCode::REQUEST_TIMEOUT,
            "text/plain",
            "the body took too long\n".into(),
        )),
    }
}

/// `POST /explain`: one observation (a JSON object, as `trackgate inspect` prints it),
/// explained against what the gateway knows now, or an array of them, decided in order with a
/// memory of their own exactly as `trackgate replay` decides them. A dry run either way: the
/// live memory learns nothing and nothing is delivered.
async fn explain(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if crate::options::is_preview(&body) {
        return preview(state, &body);
    }
    let sequence = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let parsed: Result<Vec<Observation>, _> = if sequence {
        serde_json::from_slice(&body)
    } else {
        serde_json::from_slice::<Observation>(&body).map(|o| vec![o])
    };
    let observations = match parsed {
        Ok(o) if o.len() <= MAX_EXPLAIN_OBSERVATIONS => o,
        Ok(_) => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                format!("at most {MAX_EXPLAIN_OBSERVATIONS} observations per request\n"),
            );
        }
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!(
                    "not an observation: {e}\nsend one JSON observation (or an array) as `trackgate inspect` prints them\n"
                ),
            );
        }
    };
    let decisions: Vec<_> = if sequence {
        // A sequence builds on itself as `trackgate replay` does: the same engine path over a
        // memory of its own, so the live memory learns nothing from it.
        let scratch = state.engine.scratch();
        observations
            .iter()
            .flat_map(|o| scratch.decide(o, Mode::REPLAY))
            .collect()
    } else {
        // One observation is explained against what the running gateway knows now.
        observations
            .first()
            .map(|o| state.engine.decide(o, Mode::EXPLAIN))
            .map(|d| d.into_vec())
            .unwrap_or_default()
    };
    match serde_json::to_string_pretty(&serde_json::json!({ "decisions": decisions })) {
        Ok(json) => reply(StatusCode::OK, "application/json", json + "\n"),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "cannot encode\n".into(),
        ),
    }
}

/// `POST /explain` with `{"mailbox", "options", "observations"?}`: the decisions now and with
/// the options changed, side by side (the options page's preview).
fn preview(state: &AdminState, body: &[u8]) -> Response<Full<Bytes>> {
    let Some(page) = &state.options else {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "previews need the options page: set [options] sign_in (README, Options page)\n".into(),
        );
    };
    let request: crate::options::PreviewRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!(
                    "not a preview request: {e}\nsend {{\"mailbox\": …, \"options\": {{…}}, \"observations\": [optional]}}\n"
                ),
            );
        }
    };
    if request
        .observations
        .as_ref()
        .is_some_and(|o| o.len() > MAX_EXPLAIN_OBSERVATIONS)
    {
        return reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            "text/plain",
            format!("at most {MAX_EXPLAIN_OBSERVATIONS} observations per request\n"),
        );
    }
    match page.explain(request) {
        Ok(value) => json_reply::<_, std::convert::Infallible>(Ok(value)),
        Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// An outbox call that may wait on a store or a server, on a blocking thread.
async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, OutboxError> + Send + 'static,
) -> Result<T, OutboxError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or(Err(OutboxError::WriterGone))
}

/// What `/readyz` says about the outbox and the directory's freshness.
fn readiness_detail(state: &AdminState) -> String {
    let mut detail = String::new();
    if let Some(problem) = state.outbox.health() {
        // Mail keeps flowing and decisions keep being stored (spooled); a fleet whose NATS
        // is down must not be taken out of the load balancer all at once.
        detail.push_str(&format!("outbox degraded: {problem}\n"));
    }
    for problem in state
        .delivery
        .as_ref()
        .map(|d| d.check_problems())
        .unwrap_or_default()
    {
        detail.push_str(&format!(
            "crm check: {problem} (trackgate check --online)\n"
        ));
    }
    detail + &directory_detail(state)
}

fn directory_detail(state: &AdminState) -> String {
    let Some(source) = &state.directory_source else {
        return String::new();
    };
    let status = source.status();
    let seconds = status.staleness_seconds();
    let age = if status.ever_loaded() {
        format!("data {seconds}s old")
    } else {
        format!("never loaded ({seconds}s since the start)")
    };
    let origin = if status.from_replica {
        ", served from the persisted replica"
    } else {
        ""
    };
    match &status.last_error {
        Some(e) => {
            format!("directory: dataverse, stale ({age}{origin}); last refresh failed: {e}\n")
        }
        None if !status.ever_loaded() => format!("directory: dataverse, stale ({age})\n"),
        None => format!("directory: dataverse, {age}{origin}\n"),
    }
}

fn directory_status(state: &AdminState) -> serde_json::Value {
    let counts = state.engine.directory().load().counts();
    match &state.directory_source {
        Some(source) => {
            let status = source.status();
            serde_json::json!({
                "source": "dataverse",
                "counts": counts,
                "staleness_seconds": status.staleness_seconds(),
                "status": status,
                "replica": source.replica_path(),
            })
        }
        None => serde_json::json!({"source": "file", "counts": counts}),
    }
}

/// `POST /directory/refresh`: refreshes from Dataverse now and answers with the outcome.
async fn refresh_directory(state: &AdminState) -> Response<Full<Bytes>> {
    let Some(source) = &state.directory_source else {
        return reply(
            StatusCode::CONFLICT,
            "text/plain",
            "the directory comes from a file; SIGHUP reloads it\n".into(),
        );
    };
    let handle = state.engine.directory();
    match crate::directory::dataverse::refresh_now(source, handle, &state.directory_metrics).await {
        Ok(()) => json_reply::<_, std::convert::Infallible>(Ok(directory_status(state))),
        Err(e) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("refresh failed; the last snapshot stays: {e}\n"),
        ),
    }
}
