//! The capture tee: a bounded copy of one request/response exchange, handed to inspection
//! without ever blocking forwarding. Body bytes are copied into a buffer of the body's own size
//! up to a per-body cap; beyond it the copy is marked truncated and the traffic flows on
//! untouched. They are copied, not shared: a frame shares hyper's whole read buffer, and a
//! capture holding it until inspection is done would make hyper allocate (and the kernel
//! fault in) a fresh buffer for every exchange. The few header values kept are copied for the
//! same reason, into one buffer per side. When
//! the queue or the global memory budget is full, the copy is dropped and counted. With several
//! inspection workers each has its own queue, and an exchange goes to the queue its affinity key
//! picks, so one mailbox's exchanges stay in order. Nothing here parses a body.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use super::route::RouteClass;

mod kept;
pub use kept::KeptHeaders;

/// Request headers inspection reads (who the mailbox is, how the body is coded); everything
/// else is left out of the copy. Widen it only with a reader for the new name.
pub static REQUEST_HEADERS: [&HeaderName; 3] = [
    &header::AUTHORIZATION,
    &super::headers::X_ANCHOR_MAILBOX,
    &header::CONTENT_ENCODING,
];

/// Response headers inspection reads.
pub static RESPONSE_HEADERS: [&HeaderName; 1] = [&header::CONTENT_ENCODING];

/// One exchange as inspection sees it. Credentials may be inside the headers, so `Debug` shows
/// only the shape.
pub struct Capture {
    /// Client connection this came from (stable for the connection's life).
    pub connection: u64,
    pub method: Method,
    pub path_and_query: String,
    pub route: RouteClass,
    pub request_headers: KeptHeaders,
    /// The last `Authorization: NTLM|Negotiate` value seen on this client connection: Windows
    /// auth identifies the connection, so later requests carry no header of their own.
    pub connection_auth: Option<HeaderValue>,
    pub status: u16,
    pub response_headers: KeptHeaders,
    pub request_body: Bytes,
    pub request_truncated: bool,
    pub response_body: Bytes,
    pub response_truncated: bool,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("connection", &self.connection)
            .field("method", &self.method)
            .field("route", &self.route)
            .field("status", &self.status)
            .field("request_bytes", &self.request_body.len())
            .field("request_truncated", &self.request_truncated)
            .field("response_bytes", &self.response_body.len())
            .field("response_truncated", &self.response_truncated)
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// Bytes this capture holds (counted against the budget).
    pub fn weight(&self) -> u64 {
        (self.request_body.len() + self.response_body.len()) as u64
    }
}

/// Counters for the capture path.
#[derive(Debug, Clone, Default)]
pub struct CaptureMetrics {
    pub handed_off: Counter,
    pub dropped: Counter,
    pub truncated: Counter,
    pub skipped_streams: Counter,
    pub skipped_unread: Counter,
}

/// What inspection would make of an exchange's response, told from the request body before the
/// response arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseUse {
    /// Copied and inspected.
    Inspect,
    /// An endless stream (EWS `GetStreamingEvents`): the copy is given up rather than held
    /// for the stream's life.
    EndlessStream,
    /// An operation inspection reads nothing from (EWS `GetAttachment`, `ResolveNames`, …):
    /// the copy is given up, so its response is not copied on the proxy's worker at all.
    NothingRead,
}

/// Judges a request body of a route. Supplied by the composition root, since recognising an
/// operation is inspection's knowledge, not the proxy's.
pub type RequestJudge = fn(RouteClass, &[u8]) -> ResponseUse;

/// Which inspection worker an exchange belongs to: the same key for every exchange that names
/// its mailbox the same way (an anchor mailbox or Graph `/users/` path, the same credentials, or
/// one connection), so those exchanges are inspected, and decided, in the order they ended. A
/// client that names one mailbox two ways (an anchor here, only Basic credentials there) may be
/// split over two workers.
/// Supplied by the composition root: who owns a mailbox is inspection's knowledge. Runs on the
/// proxy's worker for every copied exchange, so it reads headers and the path, never a body.
pub type Affinity = fn(&Capture) -> u64;

/// The sending side, shared by all connections.
#[derive(Debug)]
pub struct CaptureSink {
    /// One bounded queue per inspection worker.
    queues: Vec<mpsc::Sender<Capture>>,
    limit: usize,
    budget: Arc<Budget>,
    metrics: CaptureMetrics,
    judge: Option<RequestJudge>,
    affinity: Affinity,
    /// Told of every dropped copy (the catch-up sweep reads that mailbox next).
    on_drop: Option<DropHook>,
}

/// Called with each copy inspection could not take.
#[derive(Clone)]
pub struct DropHook(pub Arc<dyn Fn(&Capture) + Send + Sync>);

impl std::fmt::Debug for DropHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DropHook")
    }
}

/// Bytes held by captures not yet inspected, across the process.
#[derive(Debug)]
pub struct Budget {
    held: AtomicU64,
    max: u64,
}

impl Budget {
    pub fn new(max: u64) -> Arc<Budget> {
        Arc::new(Budget {
            held: AtomicU64::new(0),
            max,
        })
    }

    fn try_take(&self, n: u64) -> bool {
        let mut current = self.held.load(Ordering::Relaxed);
        loop {
            if current + n > self.max {
                return false;
            }
            match self.held.compare_exchange_weak(
                current,
                current + n,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back what a processed capture held.
    pub fn release(&self, n: u64) {
        self.held
            .fetch_sub(n.min(self.held.load(Ordering::Relaxed)), Ordering::AcqRel);
    }

    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

impl CaptureSink {
    /// A sink over one queue per inspection worker (at least one); `affinity` picks the queue
    /// when there are several.
    pub fn new(
        queues: Vec<mpsc::Sender<Capture>>,
        limit: usize,
        budget: Arc<Budget>,
        metrics: CaptureMetrics,
        judge: Option<RequestJudge>,
        affinity: Affinity,
    ) -> CaptureSink {
        CaptureSink {
            queues,
            limit,
            budget,
            metrics,
            judge,
            affinity,
            on_drop: None,
        }
    }

    /// The queue of the worker `capture` belongs to; `None` when there is no queue at all.
    fn queue_for(&self, capture: &Capture) -> Option<&mpsc::Sender<Capture>> {
        match self.queues.len() {
            0 => None,
            1 => self.queues.first(),
            n => {
                let key = (self.affinity)(capture);
                // Both sides are below `n`, which fits in a usize.
                self.queues.get((key % n as u64) as usize)
            }
        }
    }

    /// Starts a capture for one exchange.
    pub fn begin(
        self: &Arc<Self>,
        connection: u64,
        method: &Method,
        path_and_query: &str,
        route: RouteClass,
        headers: &HeaderMap,
        connection_auth: Option<HeaderValue>,
    ) -> Arc<PendingCapture> {
        let request_headers = KeptHeaders::pick(headers, &REQUEST_HEADERS);
        Arc::new(PendingCapture {
            sink: self.clone(),
            state: Mutex::new(Some(Partial {
                connection,
                method: method.clone(),
                path_and_query: path_and_query.to_owned(),
                route,
                request_headers,
                connection_auth,
                status: 0,
                response_headers: KeptHeaders::default(),
                request: None,
                response: None,
            })),
        })
    }

    /// Tells `hook` of every copy dropped from now on.
    pub fn with_drop_hook(mut self, hook: Option<DropHook>) -> CaptureSink {
        self.on_drop = hook;
        self
    }

    fn dropped(&self, capture: &Capture) {
        self.metrics.dropped.inc();
        if let Some(hook) = &self.on_drop {
            (hook.0)(capture);
        }
    }

    fn hand_off(&self, capture: Capture) {
        if capture.request_truncated || capture.response_truncated {
            self.metrics.truncated.inc();
        }
        let weight = capture.weight();
        if !self.budget.try_take(weight) {
            self.dropped(&capture);
            return;
        }
        let refused = match self.queue_for(&capture) {
            Some(queue) => queue.try_send(capture).err().map(|e| e.into_inner()),
            None => Some(capture),
        };
        match refused {
            None => {
                self.metrics.handed_off.inc();
            }
            Some(capture) => {
                self.budget.release(weight);
                self.dropped(&capture);
            }
        }
    }
}

struct Partial {
    connection: u64,
    method: Method,
    path_and_query: String,
    route: RouteClass,
    request_headers: KeptHeaders,
    connection_auth: Option<HeaderValue>,
    status: u16,
    response_headers: KeptHeaders,
    request: Option<(Bytes, bool)>,
    /// The response copy, when the response ended before the request body did (an upstream
    /// may answer before reading the whole request); the request side then hands off.
    response: Option<(Bytes, bool)>,
}

/// An exchange being copied: the request tee files its copy here; the response tee completes it.
pub struct PendingCapture {
    sink: Arc<CaptureSink>,
    state: Mutex<Option<Partial>>,
}

impl PendingCapture {
    pub fn limit(&self) -> usize {
        self.sink.limit
    }

    /// Records that the request had no body.
    pub fn no_request_body(&self) {
        self.side_done(Side::Request, Bytes::new(), false);
    }

    /// Whether the response is not worth copying: an endless stream, or an operation inspection
    /// reads nothing from. The copy is then given up (and counted) instead of holding up to
    /// `capture_limit` and costing the copy on the proxy's worker. A request not yet complete
    /// is judged worth copying.
    pub fn skip_unneeded_response(&self) -> bool {
        let Some(judge) = self.sink.judge else {
            return false;
        };
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let verdict = match state.as_ref() {
            Some(Partial {
                route,
                request: Some((body, _)),
                ..
            }) => judge(*route, body),
            _ => ResponseUse::Inspect,
        };
        let skipped = match verdict {
            ResponseUse::Inspect => return false,
            ResponseUse::EndlessStream => &self.sink.metrics.skipped_streams,
            ResponseUse::NothingRead => &self.sink.metrics.skipped_unread,
        };
        state.take();
        skipped.inc();
        true
    }

    /// Records the response head.
    pub fn response_head(&self, status: u16, headers: &HeaderMap) {
        if let Ok(mut state) = self.state.lock()
            && let Some(partial) = state.as_mut()
        {
            partial.status = status;
            partial.response_headers = KeptHeaders::pick(headers, &RESPONSE_HEADERS);
        }
    }

    /// Files one side's body copy (once, when that body ends or is dropped); whichever side
    /// ends second hands the capture off. The response may end first: an upstream can answer
    /// before it has read the whole request.
    fn side_done(&self, side: Side, body: Bytes, truncated: bool) {
        let complete = {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            let Some(partial) = state.as_mut() else {
                return;
            };
            let (this, other) = match side {
                Side::Request => (&mut partial.request, &partial.response),
                Side::Response => (&mut partial.response, &partial.request),
            };
            *this = Some((body, truncated));
            if other.is_some() { state.take() } else { None }
        };
        if let Some(p) = complete {
            self.hand_off(p);
        }
    }

    fn hand_off(&self, p: Partial) {
        let (request_body, request_truncated) = p.request.unwrap_or((Bytes::new(), true));
        let (response_body, response_truncated) = p.response.unwrap_or((Bytes::new(), true));
        self.sink.hand_off(Capture {
            connection: p.connection,
            method: p.method,
            path_and_query: p.path_and_query,
            route: p.route,
            request_headers: p.request_headers,
            connection_auth: p.connection_auth,
            status: p.status,
            response_headers: p.response_headers,
            request_body,
            request_truncated,
            response_body,
            response_truncated,
        });
    }

    /// The exchange ended without a response body worth copying (e.g. the upstream failed).
    pub fn abandon(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.take();
        }
    }
}

/// Which side of the exchange a tee copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

pin_project_lite::pin_project! {
    /// Passes a body through while copying its first `limit` bytes.
    pub struct Tee<B> {
        #[pin]
        inner: B,
        side: Side,
        pending: Option<Arc<PendingCapture>>,
        copy: BytesMut,
        truncated: bool,
        // A body that was empty from the start may never be polled; its copy is still whole.
        empty: bool,
        // Bytes seen, and the length declared up front: an HTTP/2 client may send END_STREAM
        // in a later empty frame that a Content-Length upstream never polls for.
        seen: u64,
        declared: Option<u64>,
    }

    impl<B> PinnedDrop for Tee<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its end (client went away, upstream failed): what was copied is
            // incomplete.
            let this = this.project();
            if let Some(pending) = this.pending.take() {
                let truncated = *this.truncated || !*this.empty;
                finish(&pending, *this.side, std::mem::take(this.copy), truncated);
            }
        }
    }
}

impl<B: Body> Tee<B> {
    pub fn new(inner: B, side: Side, pending: Arc<PendingCapture>) -> Self {
        Tee {
            empty: inner.is_end_stream(),
            declared: inner.size_hint().exact(),
            seen: 0,
            inner,
            side,
            pending: Some(pending),
            copy: BytesMut::new(),
            truncated: false,
        }
    }
}

fn finish(pending: &PendingCapture, side: Side, copy: BytesMut, truncated: bool) {
    // The budget counts a copy by its length: one that holds much more room than that (a body
    // that ended before its declared length, or grew by doubling) is copied once more to size.
    let body = if copy.capacity() - copy.len() > 4096.max(copy.len() / 4) {
        Bytes::copy_from_slice(&copy)
    } else {
        copy.freeze()
    };
    pending.side_done(side, body, truncated);
}

impl<B> Body for Tee<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.seen += data.len() as u64;
                }
                if let (Some(data), Some(pending)) = (frame.data_ref(), this.pending.as_ref()) {
                    let limit = pending.limit();
                    if this.copy.capacity() == 0 {
                        // Sized once for the whole body when its length is declared.
                        let expected = this
                            .declared
                            .map_or(data.len(), |d| usize::try_from(d).unwrap_or(usize::MAX));
                        this.copy.reserve(expected.min(limit));
                    }
                    let room = limit.saturating_sub(this.copy.len());
                    this.copy.extend_from_slice(&data[..data.len().min(room)]);
                    if data.len() > room {
                        *this.truncated = true;
                    }
                }
                // hyper stops polling once a body says it has ended (HTTP/2, known lengths), so
                // the end is noticed here rather than waiting for a `None` that never comes.
                let complete = this.inner.as_ref().get_ref().is_end_stream()
                    || this.declared.is_some_and(|d| *this.seen >= d);
                if complete && let Some(pending) = this.pending.take() {
                    finish(
                        &pending,
                        *this.side,
                        std::mem::take(this.copy),
                        *this.truncated,
                    );
                }
            }
            Poll::Ready(None) => {
                if let Some(pending) = this.pending.take() {
                    finish(
                        &pending,
                        *this.side,
                        std::mem::take(this.copy),
                        *this.truncated,
                    );
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(pending) = this.pending.take() {
                    finish(&pending, *this.side, std::mem::take(this.copy), true);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    fn sink(limit: usize, budget: u64) -> (Arc<CaptureSink>, mpsc::Receiver<Capture>) {
        let (tx, rx) = mpsc::channel(4);
        let sink = CaptureSink::new(
            vec![tx],
            limit,
            Budget::new(budget),
            CaptureMetrics::default(),
            None,
            |_| 0,
        );
        (Arc::new(sink), rx)
    }

    fn begin(sink: &Arc<CaptureSink>) -> Arc<PendingCapture> {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Basic x"));
        headers.insert("cookie", HeaderValue::from_static("not copied"));
        sink.begin(
            7,
            &Method::POST,
            "/EWS/Exchange.asmx",
            RouteClass::Ews,
            &headers,
            None,
        )
    }

    #[tokio::test]
    async fn both_bodies_are_copied_and_handed_off_once_the_response_ends() {
        let (sink, mut rx) = sink(1024, 1 << 20);
        let pending = begin(&sink);
        let request = Tee::new(
            Full::new(Bytes::from_static(b"<req/>")),
            Side::Request,
            pending.clone(),
        );
        assert_eq!(request.collect().await.unwrap().to_bytes(), "<req/>");
        pending.response_head(200, &HeaderMap::new());
        let response = Tee::new(
            Full::new(Bytes::from_static(b"<resp/>")),
            Side::Response,
            pending,
        );
        assert_eq!(response.collect().await.unwrap().to_bytes(), "<resp/>");
        let c = rx.try_recv().expect("handed off");
        assert_eq!(
            (&c.request_body[..], &c.response_body[..]),
            (&b"<req/>"[..], &b"<resp/>"[..])
        );
        assert!(!c.request_truncated && !c.response_truncated);
        assert_eq!(c.status, 200);
        assert!(
            c.request_headers
                .get(&http::header::AUTHORIZATION)
                .is_some()
        );
        assert!(
            c.request_headers.get(&http::header::COOKIE).is_none(),
            "only selected headers are copied"
        );
    }

    #[tokio::test]
    async fn a_copy_keeps_none_of_the_read_buffer_it_came_from() {
        let (sink, mut rx) = sink(1024, 1 << 20);
        let pending = begin(&sink);
        pending.no_request_body();
        // A frame as hyper reads one: a slice of its read buffer, which it reuses once no
        // frame of it is left anywhere.
        let mut read_buffer = BytesMut::with_capacity(8192);
        read_buffer.extend_from_slice(&[b'x'; 8192]);
        let frame = read_buffer.split_to(150).freeze();
        let response = Tee::new(Full::new(frame), Side::Response, pending);
        assert_eq!(response.collect().await.unwrap().to_bytes().len(), 150);
        let c = rx.try_recv().expect("handed off");
        assert_eq!(&c.response_body[..], &[b'x'; 150][..]);
        read_buffer.clear();
        assert!(
            read_buffer.try_reclaim(8192),
            "the capture still holds the read buffer"
        );
    }

    /// A body that declares `declared` bytes and sends `sent` of them before it breaks off.
    struct BrokenOff {
        declared: u64,
        sent: Option<Bytes>,
    }

    impl Body for BrokenOff {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(Some(match self.sent.take() {
                Some(data) => Ok(Frame::data(data)),
                None => Err(std::io::Error::other("client went away")),
            }))
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.declared)
        }
    }

    #[tokio::test]
    async fn a_copy_cut_short_of_its_declared_length_keeps_only_what_came() {
        let (sink, mut rx) = sink(1 << 20, 4 << 20);
        let pending = begin(&sink);
        pending.no_request_body();
        let body = BrokenOff {
            declared: 1 << 20,
            sent: Some(Bytes::from_static(b"0123456789")),
        };
        assert!(
            Tee::new(body, Side::Response, pending)
                .collect()
                .await
                .is_err()
        );
        let c = rx.try_recv().expect("handed off");
        assert_eq!(&c.response_body[..], b"0123456789");
        assert!(c.response_truncated);
        let held = c.response_body.try_into_mut().expect("the copy is its own");
        assert!(
            held.capacity() < 4096,
            "{} bytes held for 10",
            held.capacity()
        );
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_truncated_but_pass_whole() {
        let (sink, mut rx) = sink(4, 1 << 20);
        let pending = begin(&sink);
        pending.no_request_body();
        let response = Tee::new(
            Full::new(Bytes::from_static(b"0123456789")),
            Side::Response,
            pending,
        );
        assert_eq!(response.collect().await.unwrap().to_bytes(), "0123456789");
        let c = rx.try_recv().unwrap();
        assert_eq!(&c.response_body[..], b"0123");
        assert!(c.response_truncated);
        assert_eq!(sink.metrics.truncated.get(), 1);
    }

    #[tokio::test]
    async fn over_budget_copies_are_dropped_and_counted() {
        let (sink, mut rx) = sink(1024, 8);
        exchange_answered(&sink, b"0123456789").await;
        assert!(rx.try_recv().is_err());
        assert_eq!(sink.metrics.dropped.get(), 1);
        assert_eq!(sink.budget.held(), 0);
    }

    /// Copies one small exchange through the sink.
    async fn exchange(sink: &Arc<CaptureSink>) {
        exchange_answered(sink, b"<resp/>").await;
    }

    /// Copies one exchange without a request body, answered with `answer`, through the sink.
    async fn exchange_answered(sink: &Arc<CaptureSink>, answer: &'static [u8]) {
        let pending = begin(sink);
        pending.no_request_body();
        let response = Tee::new(
            Full::new(Bytes::from_static(answer)),
            Side::Response,
            pending,
        );
        response.collect().await.unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_behind_a_blocked_worker_drops_copies_and_says_so() {
        // The queue holds 4; the worker takes nothing until told.
        let (sink, mut blocked_worker) = sink(1024, 1 << 20);
        let told = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let hook_told = told.clone();
        let sink = Arc::new(Arc::try_unwrap(sink).unwrap().with_drop_hook(Some(DropHook(
            Arc::new(move |_| {
                hook_told.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }),
        ))));
        for _ in 0..6 {
            exchange(&sink).await;
        }
        assert_eq!(sink.metrics.handed_off.get(), 4);
        assert_eq!(sink.metrics.dropped.get(), 2, "the queue was full twice");
        assert_eq!(
            told.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "catch-up told of each"
        );
        let one = blocked_worker.try_recv().unwrap();
        assert_eq!(
            sink.budget.held(),
            one.weight() * 4,
            "a dropped copy gives its memory back"
        );
        // The worker took one: the next copy has room again.
        exchange(&sink).await;
        assert_eq!(sink.metrics.handed_off.get(), 5);
        assert_eq!(sink.metrics.dropped.get(), 2);
    }

    /// The connection number stands in for a mailbox here: the real key comes from inspection.
    fn by_connection(capture: &Capture) -> u64 {
        capture.connection
    }

    #[tokio::test]
    async fn each_key_keeps_to_one_worker_queue_in_order() {
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = mpsc::channel(64);
            senders.push(tx);
            receivers.push(rx);
        }
        let sink = Arc::new(CaptureSink::new(
            senders,
            1024,
            Budget::new(1 << 20),
            CaptureMetrics::default(),
            None,
            by_connection,
        ));
        for round in 0..4u8 {
            for connection in 0..6u64 {
                let pending = sink.begin(
                    connection,
                    &Method::POST,
                    "/EWS/Exchange.asmx",
                    RouteClass::Ews,
                    &HeaderMap::new(),
                    None,
                );
                pending.side_done(Side::Request, Bytes::from(vec![round]), false);
                pending.side_done(Side::Response, Bytes::new(), false);
            }
        }
        assert_eq!(sink.metrics.handed_off.get(), 24);
        for (queue, rx) in receivers.iter_mut().enumerate() {
            let mut rounds: std::collections::HashMap<u64, Vec<u8>> = Default::default();
            while let Ok(capture) = rx.try_recv() {
                assert_eq!(capture.connection % 3, queue as u64, "a key changed queues");
                rounds
                    .entry(capture.connection)
                    .or_default()
                    .push(capture.request_body[0]);
            }
            assert_eq!(rounds.len(), 2, "queue {queue} holds two keys");
            assert!(rounds.values().all(|r| r == &[0, 1, 2, 3]), "{rounds:?}");
        }
    }
}
