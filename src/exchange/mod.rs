//! The service-side Exchange client delivery uses for enrichment: it fetches a message the
//! traffic did not show in full (a move, category change or send of an item never seen) and
//! its body — EWS `GetItem` with `ExchangeImpersonation` (Basic or OAuth client credentials),
//! or Graph `GET /users/{mailbox}/messages/{id}` app-only — and reads folders' changes for the
//! catch-up sweep (EWS `SyncFolderItems`, or Graph `delta`). Answers are read by the same
//! parsers that inspect the traffic, so fields are normalised the same way.

mod delta;
mod folders;
pub mod items;
mod sent_copy;
mod sync;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::common::ClientCredentials;
use crate::common::Secret;
use crate::common::read::read_capped;
use crate::common::text::{percent_encode, xml_escape};
pub use delta::DeltaPage;
pub use folders::InboxFolder;
pub use items::{Invitations, ItemKind, Outgoing, SyncItem};
pub use sent_copy::SentCopyQuery;
pub use sync::{SyncFolder, SyncPage};

use crate::inspect::xml::{Tree, XmlLimits};
use crate::inspect::{self, InspectLimits, Message, Observation};
use crate::oauth::TokenSource;

/// Largest answer read.
const MAX_ANSWER: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("Exchange unreachable: {0}")]
    Unreachable(String),
    #[error("Exchange answered HTTP {0}")]
    Status(u16),
    #[error("Exchange did not return the item (response code {0})")]
    NotFound(String),
    #[error("cannot read Exchange's answer: {0}")]
    Unreadable(String),
    #[error("Exchange no longer knows the sync state (ErrorInvalidSyncStateData)")]
    InvalidSyncState,
    #[error("Exchange is busy; back off {0} ms")]
    Busy(u64),
    #[error("{0} messages in Sent Items could be the saved copy of this send")]
    Ambiguous(usize),
    #[error("no Exchange service endpoint configured for {0}")]
    NotConfigured(&'static str),
    #[error("cannot get a token for Exchange: {0}")]
    Token(String),
}

impl ExchangeError {
    /// Whether trying again later may help (the item may also never come back: 404s count).
    pub fn is_transient(&self) -> bool {
        match self {
            // Another send seen at the same time may claim its copy by the next attempt.
            ExchangeError::Unreachable(_)
            | ExchangeError::Token(_)
            | ExchangeError::Ambiguous(_) => true,
            ExchangeError::Status(s) => *s == 429 || *s >= 500 || *s == 401,
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub enum ExchangeAuth {
    Basic { username: String, password: Secret },
    OAuth(ClientCredentials),
}

#[derive(Debug, Clone)]
pub struct ExchangeSettings {
    /// `https://mail.example.com/EWS/Exchange.asmx`.
    pub ews_url: Option<String>,
    /// `https://graph.microsoft.com` (no version).
    pub graph_url: Option<String>,
    pub auth: ExchangeAuth,
    pub timeout: Duration,
    /// Requests in flight at most (the service account's budget, shared by every caller).
    pub concurrency: usize,
}

/// A message body fetched from Exchange.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Body {
    /// `html` or `text`.
    pub content_type: String,
    pub content: String,
}

/// What a fetch returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub message: Message,
    pub body: Option<Body>,
}

#[derive(Debug)]
pub struct ExchangeClient {
    http: reqwest::Client,
    settings: ExchangeSettings,
    tokens: Option<TokenSource>,
    /// One permit per request in flight: the sweep and enrichment share the account's budget.
    slots: tokio::sync::Semaphore,
}

/// An EWS request acting as `mailbox` (impersonation) around one operation element.
fn impersonated(mailbox: &str, operation: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="utf-8"?>"#,
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">"#,
            r#"<soap:Header><t:RequestServerVersion Version="Exchange2013_SP1"/>"#,
            r#"<t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>{mailbox}</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></soap:Header>"#,
            r#"<soap:Body>{operation}</soap:Body></soap:Envelope>"#
        ),
        mailbox = xml_escape(mailbox),
        operation = operation,
    )
}

/// The `GetItem` request for one item as the mailbox owner.
pub fn get_item_request(mailbox: &str, item_id: &str, html: bool) -> String {
    get_items_request(mailbox, &[item_id], html)
}

/// `<t:ItemId Id="…"/>` for each id, escaped.
fn item_ids_xml(item_ids: &[&str]) -> String {
    item_ids
        .iter()
        .map(|id| format!(r#"<t:ItemId Id="{}"/>"#, xml_escape(id)))
        .collect()
}

/// The `GetItem` request for several items as the mailbox owner, everything tracking reads.
pub fn get_items_request(mailbox: &str, item_ids: &[&str], html: bool) -> String {
    let ids = item_ids_xml(item_ids);
    let operation = format!(
        concat!(
            r#"<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape><t:BodyType>{body}</t:BodyType>"#,
            r#"<t:AdditionalProperties><t:FieldURI FieldURI="message:InternetMessageId"/><t:FieldURI FieldURI="item:ParentFolderId"/><t:FieldURI FieldURI="item:Categories"/><t:FieldURI FieldURI="message:ToRecipients"/><t:FieldURI FieldURI="message:CcRecipients"/><t:FieldURI FieldURI="message:From"/></t:AdditionalProperties>"#,
            r#"</m:ItemShape><m:ItemIds>{ids}</m:ItemIds></m:GetItem>"#
        ),
        ids = ids,
        body = if html { "HTML" } else { "Text" },
    );
    impersonated(mailbox, &operation)
}

impl ExchangeClient {
    pub fn new(http: reqwest::Client, settings: ExchangeSettings) -> ExchangeClient {
        let tokens = match &settings.auth {
            ExchangeAuth::OAuth(c) => Some(TokenSource::new(http.clone(), c.clone())),
            ExchangeAuth::Basic { .. } => None,
        };
        ExchangeClient {
            slots: tokio::sync::Semaphore::new(settings.concurrency.max(1)),
            http,
            settings,
            tokens,
        }
    }

    async fn authorize(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, ExchangeError> {
        Ok(match (&self.settings.auth, &self.tokens) {
            (ExchangeAuth::Basic { username, password }, _) => {
                request.basic_auth(username, Some(password.expose()))
            }
            (ExchangeAuth::OAuth(_), Some(tokens)) => request.bearer_auth(
                tokens
                    .token()
                    .await
                    .map_err(|e| ExchangeError::Token(e.to_string()))?,
            ),
            (ExchangeAuth::OAuth(_), None) => request,
        })
    }

    /// Whether an EWS endpoint is configured (the catch-up sweep then reads folders over EWS).
    pub fn ews_configured(&self) -> bool {
        self.settings.ews_url.is_some()
    }

    /// Whether the catch-up sweep can read folders: over EWS, or else Graph `delta`.
    pub fn can_sweep(&self) -> bool {
        self.settings.ews_url.is_some() || self.settings.graph_url.is_some()
    }

    /// Fetches one message of a mailbox. `graph_id` says the id came from Graph traffic (Graph
    /// and EWS spell ids differently).
    pub async fn fetch(
        &self,
        mailbox: &str,
        item_id: &str,
        graph_id: bool,
        html: bool,
    ) -> Result<Fetched, ExchangeError> {
        match (graph_id, &self.settings.graph_url, &self.settings.ews_url) {
            (true, Some(graph), _) => self.fetch_graph(graph, mailbox, item_id, html).await,
            (_, _, Some(ews)) => self.fetch_ews(ews, mailbox, item_id, html).await,
            (false, Some(graph), None) => self.fetch_graph(graph, mailbox, item_id, html).await,
            (true, None, None) | (false, None, None) => {
                Err(ExchangeError::NotConfigured("this item"))
            }
        }
    }

    async fn read(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<(String, String)>, Bytes), ExchangeError> {
        // Held until the answer is read: Exchange counts a request until it has answered.
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| ExchangeError::Unreachable("the client is closed".into()))?;
        let response = self
            .authorize(request.timeout(self.settings.timeout))
            .await?
            .send()
            .await
            .map_err(|e| {
                ExchangeError::Unreachable(if e.is_timeout() {
                    "timed out".into()
                } else {
                    "cannot connect".into()
                })
            })?;
        let status = response.status().as_u16();
        if status == 401
            && let Some(t) = &self.tokens
        {
            t.invalidate().await;
        }
        let headers = response
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        if response.content_length().unwrap_or(0) > MAX_ANSWER as u64 {
            return Err(ExchangeError::Unreadable("answer too large".into()));
        }
        let (body, more) = read_capped(response, MAX_ANSWER).await;
        if more {
            return Err(ExchangeError::Unreadable("answer too large".into()));
        }
        Ok((status, headers, Bytes::from(body)))
    }

    /// POSTs an EWS request acting as `mailbox`.
    async fn post_ews(
        &self,
        url: &str,
        mailbox: &str,
        request: String,
    ) -> Result<(u16, Vec<(String, String)>, Bytes), ExchangeError> {
        self.read(
            self.http
                .post(url)
                .header("Content-Type", "text/xml; charset=utf-8")
                .header("X-AnchorMailbox", mailbox)
                .body(request),
        )
        .await
    }

    async fn fetch_ews(
        &self,
        url: &str,
        mailbox: &str,
        item_id: &str,
        html: bool,
    ) -> Result<Fetched, ExchangeError> {
        let request = get_item_request(mailbox, item_id, html);
        let (status, headers, body) = self.post_ews(url, mailbox, request.clone()).await?;
        if status != 200 && status != 500 {
            return Err(ExchangeError::Status(status));
        }
        let inspected = inspect_ews(mailbox, request, status, &headers, body.clone())?;
        let message = first_message(inspected.observations).ok_or_else(|| {
            ExchangeError::NotFound(
                inspected
                    .failures
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "no message in the answer".into()),
            )
        })?;
        let body = Tree::parse(&body, XmlLimits::default())
            .ok()
            .and_then(|tree| {
                let mut found = Vec::new();
                tree.root().descendants("Body", &mut found);
                found.into_iter().next().map(|node| Body {
                    content_type: if node
                        .attr("BodyType")
                        .is_some_and(|t| t.eq_ignore_ascii_case("HTML"))
                    {
                        "html".into()
                    } else {
                        "text".into()
                    },
                    content: node.text().into_owned(),
                })
            });
        Ok(Fetched { message, body })
    }

    async fn fetch_graph(
        &self,
        base: &str,
        mailbox: &str,
        item_id: &str,
        html: bool,
    ) -> Result<Fetched, ExchangeError> {
        let path = format!(
            "/v1.0/users/{}/messages/{}",
            percent_encode(mailbox, b"="),
            percent_encode(item_id, b"=")
        );
        let prefer = if html {
            "outlook.body-content-type=\"html\""
        } else {
            "outlook.body-content-type=\"text\""
        };
        let (status, headers, body) = self
            .read(
                self.http
                    .get(format!("{base}{path}"))
                    .header("Prefer", prefer)
                    .header("Accept", "application/json"),
            )
            .await?;
        if status == 404 {
            return Err(ExchangeError::NotFound("ErrorItemNotFound".into()));
        }
        if status != 200 {
            return Err(ExchangeError::Status(status));
        }
        let capture = inspect::capture_from_parts(
            "GET",
            &path,
            &[],
            Bytes::new(),
            status,
            &headers,
            body.clone(),
        );
        let inspected = inspect::inspect(&capture, InspectLimits::default())
            .map_err(|e| ExchangeError::Unreadable(e.to_string()))?;
        let message = first_message(inspected.observations)
            .ok_or_else(|| ExchangeError::NotFound("no message in the answer".into()))?;
        #[derive(serde::Deserialize)]
        struct GraphBody {
            body: Option<GraphContent>,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct GraphContent {
            content_type: Option<String>,
            content: Option<String>,
        }
        let body = serde_json::from_slice::<GraphBody>(&body)
            .ok()
            .and_then(|b| b.body)
            .and_then(|c| {
                Some(Body {
                    content_type: c
                        .content_type
                        .unwrap_or_else(|| "text".into())
                        .to_ascii_lowercase(),
                    content: c.content?,
                })
            });
        Ok(Fetched { message, body })
    }
}

/// An EWS answer read by the parsers that inspect the traffic.
fn inspect_ews(
    mailbox: &str,
    request: String,
    status: u16,
    headers: &[(String, String)],
    body: Bytes,
) -> Result<inspect::Inspected, ExchangeError> {
    let capture = inspect::capture_from_parts(
        "POST",
        "/EWS/Exchange.asmx",
        &[("X-AnchorMailbox".into(), mailbox.into())],
        Bytes::from(request),
        status,
        headers,
        body,
    );
    inspect::inspect(&capture, InspectLimits::default())
        .map_err(|e| ExchangeError::Unreadable(e.to_string()))
}

/// Every message an answer showed, in order.
fn messages_of(observations: Vec<Observation>) -> Vec<Message> {
    observations
        .into_iter()
        .filter_map(|o| match o {
            Observation::MessageSeen { message, .. } => Some(Arc::unwrap_or_clone(message)),
            _ => None,
        })
        .collect()
}

fn first_message(observations: Vec<Observation>) -> Option<Message> {
    observations.into_iter().find_map(|o| match o {
        Observation::MessageSeen { message, .. } => Some(Arc::unwrap_or_clone(message)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn get_item_requests_escape_and_impersonate() {
        let r = get_item_request("a&b@x.example", "AAM<=", true);
        assert!(r.contains("<t:SmtpAddress>a&amp;b@x.example</t:SmtpAddress>"));
        assert!(r.contains(r#"<t:ItemId Id="AAM&lt;="/>"#));
        assert!(r.contains("<t:BodyType>HTML</t:BodyType>"));
        assert!(Tree::parse(r.as_bytes(), XmlLimits::default()).is_ok());
    }

    /// An HTTP server that holds every request until the test lets one go, counting how many
    /// it holds at once.
    struct Holding {
        url: String,
        held: Arc<std::sync::atomic::AtomicUsize>,
        most: Arc<std::sync::atomic::AtomicUsize>,
        release: Arc<tokio::sync::Semaphore>,
    }

    async fn holding_server() -> Holding {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/EWS/Exchange.asmx",
            listener.local_addr().unwrap()
        );
        let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (h, m, r) = (held.clone(), most.clone(), release.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (held, most, release) = (h.clone(), m.clone(), r.clone());
                tokio::spawn(async move {
                    // The request's head is enough: the answer closes the connection.
                    let mut buf = vec![0u8; 64 * 1024];
                    let _ = socket.read(&mut buf).await;
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    release.acquire().await.unwrap().forget();
                    held.fetch_sub(1, Ordering::SeqCst);
                    let _ = socket
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        Holding {
            url,
            held,
            most,
            release,
        }
    }

    #[tokio::test]
    async fn requests_beyond_the_accounts_concurrency_wait_for_a_slot() {
        use std::sync::atomic::Ordering;
        let server = holding_server().await;
        let client = Arc::new(ExchangeClient::new(
            reqwest::Client::new(),
            ExchangeSettings {
                ews_url: Some(server.url.clone()),
                graph_url: None,
                auth: ExchangeAuth::Basic {
                    username: "svc".into(),
                    password: crate::common::Secret::new("x"),
                },
                timeout: Duration::from_secs(30),
                concurrency: 2,
            },
        ));
        let fetches: Vec<_> = (0..6)
            .map(|n| {
                let client = client.clone();
                tokio::spawn(async move {
                    client
                        .fetch("alex@contoso.example", &format!("item-{n}"), false, false)
                        .await
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for answered in 0..6 {
            // Two held (fewer at the end), then one let go.
            let expected = 2.min(6 - answered);
            while server.held.load(Ordering::SeqCst) < expected {
                assert!(std::time::Instant::now() < deadline, "requests held");
                tokio::task::yield_now().await;
            }
            server.release.add_permits(1);
        }
        for f in fetches {
            assert!(matches!(f.await.unwrap(), Err(ExchangeError::Status(503))));
        }
        assert_eq!(
            server.most.load(Ordering::SeqCst),
            2,
            "never more than the cap at once"
        );
    }
}
