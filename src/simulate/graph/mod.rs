//! Microsoft Graph served from the mailbox store: `/me` and `/users/{id|upn}` with messages
//! (list, get, `$select`, `$top`, `$skip`, `$filter` basics, create, PATCH, DELETE, move, copy,
//! send, reply, replyAll, forward), `sendMail`, mail folders, folder message `delta` (and
//! `delta()`) with real skip and delta tokens, events, contacts and To Do tasks, and `$batch`
//! (relative and absolute URLs, `dependsOn` or `depends_on`). Ids are the store's, in URL-safe
//! form; path segments are percent-decoded, keywords matched in any case.

mod json;
mod routes;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};

use super::ews::Caller;
use super::exchange::SimBody;
use super::mailbox::Store;

/// Largest Graph request body read.
const MAX_BODY: usize = 4 << 20;
/// Graph's limit on requests in one `$batch`.
const MAX_BATCH: usize = 20;

/// One Graph answer before it becomes HTTP.
pub struct Reply {
    pub status: u16,
    pub body: Option<Value>,
}

impl Reply {
    pub fn ok(body: Value) -> Reply {
        Reply {
            status: 200,
            body: Some(body),
        }
    }

    pub fn status(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
        }
    }

    pub fn empty(status: u16) -> Reply {
        Reply { status, body: None }
    }

    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::status(status, json!({"error": {"code": code, "message": message}}))
    }
}

/// A request as routes see it.
pub struct GraphRequest<'a> {
    pub method: Method,
    /// Path after the version, percent-decoded segments.
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
    pub body: Option<Value>,
    /// `odata.maxpagesize` from `Prefer`.
    pub page_size: Option<usize>,
    /// `http://host/v1.0`: where next and delta links point (back through whoever proxied us).
    pub base: &'a str,
    pub caller: &'a Caller,
}

impl GraphRequest<'_> {
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// Graph reads property names in any case (the SDKs send action parameters as `Message`,
/// `SaveToSentItems`); routes read them in camelCase.
fn camel_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let mut chars = k.chars();
                    let key = match chars.next() {
                        Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
                        None => k,
                    };
                    (key, camel_keys(v))
                })
                .collect(),
        ),
        Value::Array(list) => Value::Array(list.into_iter().map(camel_keys).collect()),
        other => other,
    }
}

fn split_target(target: &str) -> (Vec<String>, Vec<(String, String)>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(crate::common::text::percent_decode)
        .collect();
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (
                crate::common::text::percent_decode(&k.replace('+', " ")),
                crate::common::text::percent_decode(&v.replace('+', " ")),
            )
        })
        .collect();
    (segments, query)
}

/// Serves one Graph request.
pub async fn serve(
    store: &Store,
    req: Request<hyper::body::Incoming>,
    caller: &Caller,
) -> Response<SimBody> {
    let method = req.method().clone();
    // Links point back the way the client came: through a proxy, its forwarded host and
    // scheme (real Graph names itself, and clients reach the gateway under that name).
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|h| h.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or(v).trim().to_owned())
    };
    let host = header("x-forwarded-host")
        .or_else(|| header("host"))
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".into());
    let scheme = header("x-forwarded-proto")
        .or_else(|| req.uri().scheme_str().map(str::to_owned))
        .unwrap_or_else(|| "http".into());
    let page_size = req
        .headers()
        .get("prefer")
        .and_then(|p| p.to_str().ok())
        .and_then(|p| {
            p.split(',')
                .find_map(|part| part.trim().strip_prefix("odata.maxpagesize="))
                .and_then(|n| n.trim().parse().ok())
        });
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let version = target.get(1..5).unwrap_or("v1.0").to_owned();
    let base = format!("{scheme}://{host}/{version}");
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return http(Reply::error(
                413,
                "RequestEntityTooLarge",
                "The request body is larger than the simulator accepts.",
            ));
        }
    };
    let body = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => Some(camel_keys(v)),
            Err(e) => {
                return http(Reply::error(
                    400,
                    "BadRequest",
                    &format!("Unable to read JSON request payload: {e}"),
                ));
            }
        }
    };
    let (segments, query) = split_target(target.get(version.len() + 1..).unwrap_or(""));
    let request = GraphRequest {
        method,
        segments,
        query,
        body,
        page_size,
        base: &base,
        caller,
    };
    if request
        .segments
        .first()
        .is_some_and(|s| s.eq_ignore_ascii_case("$batch"))
    {
        return http(batch(store, &request));
    }
    http(routes::route(store, &request))
}

/// `$batch`: each request runs in order; one whose dependency failed answers 424.
fn batch(store: &Store, outer: &GraphRequest<'_>) -> Reply {
    let Some(requests) = outer
        .body
        .as_ref()
        .and_then(|b| b.get("requests"))
        .and_then(Value::as_array)
    else {
        return Reply::error(400, "BadRequest", "A $batch body needs a requests array.");
    };
    if requests.len() > MAX_BATCH {
        return Reply::error(
            400,
            "BadRequest",
            &format!("A $batch holds at most {MAX_BATCH} requests."),
        );
    }
    let mut responses: Vec<Value> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for r in requests {
        let id = r.get("id").map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        let id = id.unwrap_or_default();
        // `depends_on` is how msgraph-sdk-python spells it; that Graph honours it too is
        // unconfirmed, but a simulator that ignored it would hide a client's intent.
        let a_dependency_failed = ["dependsOn", "depends_on"]
            .into_iter()
            .filter_map(|key| r.get(key).and_then(Value::as_array))
            .flatten()
            .filter_map(Value::as_str)
            .any(|d| failed.iter().any(|f| f == d));
        let reply = if a_dependency_failed {
            Reply::error(
                424,
                "FailedDependency",
                "A request this one depends on failed.",
            )
        } else {
            batch_one(store, outer, r)
        };
        if reply.status >= 400 {
            failed.push(id.clone());
        }
        let mut entry = json!({"id": id, "status": reply.status});
        if let Some(body) = reply.body {
            entry["headers"] = json!({"Content-Type": "application/json"});
            entry["body"] = body;
        }
        responses.push(entry);
    }
    Reply::ok(json!({"responses": responses}))
}

fn batch_one(store: &Store, outer: &GraphRequest<'_>, r: &Value) -> Reply {
    let method = r
        .get("method")
        .and_then(Value::as_str)
        .and_then(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
        .unwrap_or(Method::GET);
    let url = r.get("url").and_then(Value::as_str).unwrap_or("");
    // Absolute URLs name the service and version; relative ones start at the version's root.
    let relative = match url.find("://") {
        Some(at) => {
            let rest = &url[at + 3..];
            let path = rest.find('/').map_or("", |p| &rest[p..]);
            let lower = path.to_ascii_lowercase();
            if lower.starts_with("/v1.0/") || lower.starts_with("/beta/") {
                path[5..].to_owned()
            } else {
                path.to_owned()
            }
        }
        None => url.to_owned(),
    };
    let (segments, query) = split_target(&relative);
    // A body that is not JSON travels base64-encoded in a string.
    let body = match r.get("body") {
        Some(Value::String(encoded)) => {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded)
                .ok()
                .and_then(|raw| serde_json::from_slice(&raw).ok())
        }
        other => other.cloned(),
    }
    .map(camel_keys);
    let request = GraphRequest {
        method,
        segments,
        query,
        body,
        page_size: None,
        base: outer.base,
        caller: outer.caller,
    };
    routes::route(store, &request)
}

fn http(reply: Reply) -> Response<SimBody> {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let bytes = reply
        .body
        .map(|b| Bytes::from(serde_json::to_vec(&b).unwrap_or_default()))
        .unwrap_or_default();
    let has_body = !bytes.is_empty();
    let digest = super::exchange::body_digest(&bytes);
    let mut r = Response::new(Full::new(bytes).map_err(|n| match n {}).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert("x-sim-body-sha256", digest);
    if has_body {
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8"),
        );
    }
    r
}
#[cfg(test)]
mod tests;
