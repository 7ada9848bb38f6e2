//! GetStreamingEvents from the store: one hanging response that streams a complete SOAP envelope
//! per notification — the subscribed folders' events as they happen (new mail, created, moved…),
//! a keep-alive status between them — and a last `Closed` envelope when the connection timeout
//! (minutes, at most 30) or the requested number of chunks is reached.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use tokio::sync::{broadcast, mpsc};

use super::sync::Subscription;
use super::{MESSAGES_NS, TYPES_NS, xml_escape};
use crate::common::time::format_seconds;
use crate::inspect::xml::{Ns, Tree, XmlLimits};
use crate::simulate::exchange::{BoxError, SimBody, StreamSpec};
use crate::simulate::mailbox::{EventKind, Store, StoreEvent};

const MAX_MINUTES: u64 = 30;

/// Answers a GetStreamingEvents request with a streaming body.
pub fn respond(store: &Store, body: &[u8], spec: Option<StreamSpec>) -> http::Response<SimBody> {
    let (subscriptions, minutes) = read_request(body);
    let spec = spec.unwrap_or(StreamSpec {
        chunks: None,
        interval: Duration::from_secs(10),
    });
    let deadline = Duration::from_secs(60 * minutes.clamp(1, MAX_MINUTES));
    let (tx, rx) = mpsc::channel(64);
    let events = store.subscribe();
    tokio::spawn(pump(subscriptions, events, tx, spec, deadline));
    let mut r = http::Response::new(Channel(rx).boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    r
}

fn read_request(body: &[u8]) -> (Vec<(String, Subscription)>, u64) {
    let Ok(tree) = Tree::parse(body, XmlLimits::default()) else {
        return (Vec::new(), 1);
    };
    let Ok(op) = tree.body_child() else {
        return (Vec::new(), 1);
    };
    let subscriptions = op
        .child(Ns::Messages, "SubscriptionIds")
        .into_iter()
        .flat_map(|ids| ids.children())
        .filter_map(|id| {
            let text = id.text().into_owned();
            Subscription::parse(&text).map(|s| (text, s))
        })
        .collect();
    let minutes = op
        .child(Ns::Messages, "ConnectionTimeout")
        .and_then(|t| t.text().trim().parse().ok())
        .unwrap_or(1);
    (subscriptions, minutes)
}

async fn pump(
    subscriptions: Vec<(String, Subscription)>,
    mut events: broadcast::Receiver<StoreEvent>,
    tx: mpsc::Sender<Bytes>,
    spec: StreamSpec,
    deadline: Duration,
) {
    let end = tokio::time::Instant::now() + deadline;
    let mut sent = 0u64;
    let mut chunk = status("OK");
    loop {
        if tx.send(chunk).await.is_err() {
            return;
        }
        sent += 1;
        if spec.chunks.is_some_and(|n| sent >= n) {
            return;
        }
        let keep_alive = tokio::time::Instant::now() + spec.interval;
        chunk = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(end) => {
                    let _ = tx.send(status("Closed")).await;
                    return;
                }
                _ = tokio::time::sleep_until(keep_alive) => break status("OK"),
                event = events.recv() => match event {
                    Ok(event) => {
                        if let Some(xml) = notification(&subscriptions, &event) {
                            break xml;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        };
    }
}

fn event_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::NewMail => "NewMailEvent",
        EventKind::Created => "CreatedEvent",
        EventKind::Modified => "ModifiedEvent",
        EventKind::Deleted => "DeletedEvent",
        EventKind::Moved => "MovedEvent",
        EventKind::Copied => "CopiedEvent",
    }
}

fn wrap(inner: &str) -> Bytes {
    Bytes::from(format!(
        concat!(
            r#"<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body>"#,
            r#"<m:GetStreamingEventsResponse xmlns:m="{}" xmlns:t="{}"><m:ResponseMessages>"#,
            r#"<m:GetStreamingEventsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>{}"#,
            r#"</m:GetStreamingEventsResponseMessage></m:ResponseMessages></m:GetStreamingEventsResponse></Body></Envelope>"#
        ),
        MESSAGES_NS, TYPES_NS, inner
    ))
}

fn status(status: &str) -> Bytes {
    wrap(&format!(
        "<m:ConnectionStatus>{status}</m:ConnectionStatus>"
    ))
}

/// The notification for `event` on the first subscription that watches it.
fn notification(subscriptions: &[(String, Subscription)], event: &StoreEvent) -> Option<Bytes> {
    let name = event_name(event.kind);
    let (id, _) = subscriptions.iter().find(|(_, s)| {
        s.mailbox == event.mailbox
            && (s.events.is_empty() || s.events.iter().any(|e| e == name))
            && (s.folders.is_empty()
                || crate::simulate::mailbox::decode_id(&event.folder_id)
                    .is_some_and(|(_, _, key)| s.folders.contains(&key)))
    })?;
    let now = format_seconds((crate::common::time::now_ms() / 1000) as i64);
    let old = match (&event.old_item_id, &event.old_folder_id) {
        (Some(item), Some(folder)) => format!(
            r#"<t:OldItemId Id="{}"/><t:OldParentFolderId Id="{}"/>"#,
            xml_escape(item),
            xml_escape(folder)
        ),
        _ => String::new(),
    };
    Some(wrap(&format!(
        r#"<m:Notifications><m:Notification><t:SubscriptionId>{}</t:SubscriptionId><t:{name}><t:TimeStamp>{now}</t:TimeStamp><t:ItemId Id="{}"/><t:ParentFolderId Id="{}"/>{old}</t:{name}></m:Notification></m:Notifications>"#,
        xml_escape(id),
        xml_escape(&event.item_id),
        xml_escape(&event.folder_id),
    )))
}

/// A body fed by a channel: each message is one chunk; the body ends when the sender does.
struct Channel(mpsc::Receiver<Bytes>);

impl Body for Channel {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}
