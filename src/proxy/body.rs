//! Body plumbing: the one body type the proxy returns, and the guard that wraps every forwarded
//! body — idle timeout, size limit, byte counting and the `100 Continue` gate — while frames
//! stream through untouched. Nothing here buffers a body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the proxy sends.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A client's request body as the server hands it to the request path: streaming from hyper's
/// connection (`Left`), or read whole by the gateway's own HTTP/1.1 loop (`Right`; it serves
/// only requests whose body came with the head: `h1_server`).
pub type ClientBody = http_body_util::Either<hyper::body::Incoming, Full<Bytes>>;

/// How a guarded body went, shared with the request path: why it stopped early, so a failed
/// upstream call can be blamed on the right party (413 and 408 are the client's doing, not the
/// upstream's), and a signal once it has ended, however it ended. One allocation per request
/// for both.
#[derive(Debug, Default)]
pub struct BodyOutcome {
    failure: AtomicU8,
    ended: tokio::sync::Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    TooLarge = 1,
    IdleTimeout = 2,
    Inner = 3,
}

impl BodyOutcome {
    fn set(&self, failure: BodyFailure) {
        let _ =
            self.failure
                .compare_exchange(0, failure as u8, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Notified once when the body ends (a body known to be empty is never guarded: whoever
    /// skips the guard notifies this itself).
    pub fn ended(&self) -> &tokio::sync::Notify {
        &self.ended
    }

    pub fn get(&self) -> Option<BodyFailure> {
        match self.failure.load(Ordering::Relaxed) {
            1 => Some(BodyFailure::TooLarge),
            2 => Some(BodyFailure::IdleTimeout),
            3 => Some(BodyFailure::Inner),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("no body data for {0:?}")]
    IdleTimeout(Duration),
    #[error("body arriving slower than the minimum rate or past its deadline")]
    TooSlow,
}

type Gate = Pin<Box<dyn Future<Output = ()> + Send>>;

pin_project_lite::pin_project! {
    /// Wraps a body: counts bytes, enforces a size limit and an idle timeout, and (for
    /// `Expect: 100-continue` requests) does not poll the inner body until the gate opens —
    /// polling it is what makes hyper send `100 Continue` to the client.
    pub struct Guarded<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: Sleep,
        idle: Duration,
        last_activity: Instant,
        pace: super::BodyPace,
        // When the body was first wanted: where the rate and the total deadline count from.
        started: Instant,
        limit: u64,
        seen: u64,
        counter: Counter,
        outcome: Option<Arc<BodyOutcome>>,
        gate: Option<Gate>,
        // The outcome's end signal is still to be sent.
        end_unsignalled: bool,
        done: bool,
    }
}

impl<B> Guarded<B> {
    pub fn new(inner: B, idle: Duration, counter: Counter) -> Self {
        let now = Instant::now();
        Guarded {
            inner,
            timer: tokio::time::sleep_until(now + idle),
            idle,
            last_activity: now,
            pace: super::BodyPace {
                min_rate: 0,
                grace: idle,
                total: Duration::MAX,
            },
            started: now,
            limit: u64::MAX,
            seen: 0,
            counter,
            outcome: None,
            gate: None,
            end_unsignalled: false,
            done: false,
        }
    }

    /// A minimum average rate after a grace period, and a deadline for the whole body.
    pub fn with_pace(mut self, pace: super::BodyPace) -> Self {
        self.pace = pace;
        self
    }

    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    /// Where the body says why it failed, and that it ended.
    pub fn with_outcome(mut self, outcome: Arc<BodyOutcome>) -> Self {
        self.outcome = Some(outcome);
        self.end_unsignalled = true;
        self
    }

    /// Holds the body back until `gate` completes.
    pub fn with_gate(mut self, gate: impl Future<Output = ()> + Send + 'static) -> Self {
        self.gate = Some(Box::pin(gate));
        self
    }
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = self.as_mut().poll_inner(cx);
        let this = self.project();
        let ended = *this.done || (polled.is_ready() && this.inner.is_end_stream());
        if ended
            && *this.end_unsignalled
            && let Some(outcome) = this.outcome.as_ref()
        {
            *this.end_unsignalled = false;
            outcome.ended.notify_one();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.gate.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Guarded<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    fn poll_inner(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if let Some(gate) = this.gate.as_mut() {
            ready!(gate.as_mut().poll(cx));
            *this.gate = None;
            // The idle clock starts once the body is actually wanted.
            *this.last_activity = Instant::now();
            *this.started = *this.last_activity;
        }
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.last_activity = Instant::now();
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    *this.seen += len;
                    if *this.seen > *this.limit {
                        *this.done = true;
                        if let Some(o) = this.outcome.as_ref() {
                            o.set(BodyFailure::TooLarge);
                        }
                        return Poll::Ready(Some(Err(BodyError::TooLarge(*this.limit).into())));
                    }
                    this.counter.inc_by(len);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                *this.done = true;
                if let Some(o) = this.outcome.as_ref() {
                    o.set(BodyFailure::Inner);
                }
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                *this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                // The timer is only re-armed when it fires, so a busy body costs no timer churn.
                loop {
                    let idle_end = *this.last_activity + *this.idle;
                    let paced_end = pace_deadline(this.pace, *this.started, *this.seen);
                    let deadline = idle_end.min(paced_end);
                    if this.timer.deadline() != deadline {
                        this.timer.as_mut().reset(deadline);
                    }
                    ready!(this.timer.as_mut().poll(cx));
                    let now = Instant::now();
                    let failure = if now >= idle_end {
                        BodyError::IdleTimeout(*this.idle)
                    } else if now >= pace_deadline(this.pace, *this.started, *this.seen) {
                        BodyError::TooSlow
                    } else {
                        continue;
                    };
                    *this.done = true;
                    if let Some(o) = this.outcome.as_ref() {
                        o.set(BodyFailure::IdleTimeout);
                    }
                    return Poll::Ready(Some(Err(failure.into())));
                }
            }
        }
    }
}

/// When a body that started at `started` and has brought `seen` bytes is too slow: past its
/// total deadline, or behind the minimum rate once the grace period is over (each byte buys
/// `1 / min_rate` seconds more).
fn pace_deadline(pace: &super::BodyPace, started: Instant, seen: u64) -> Instant {
    let far = started + Duration::from_secs(100 * 365 * 24 * 3600);
    let total = started.checked_add(pace.total).unwrap_or(far);
    if pace.min_rate == 0 {
        return total;
    }
    let earned = Duration::from_secs_f64(seen as f64 / pace.min_rate as f64);
    let rate = started
        .checked_add(pace.grace.saturating_add(earned))
        .unwrap_or(far);
    rate.min(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A body of fixed chunks.
    struct Chunks(VecDeque<Bytes>);
    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunks(n: usize, size: usize) -> Chunks {
        Chunks((0..n).map(|_| Bytes::from(vec![7u8; size])).collect())
    }

    /// A body that never produces anything.
    struct Silent;
    impl Body for Silent {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn counts_and_limits() {
        let counter = Counter::default();
        let outcome = Arc::new(BodyOutcome::default());
        let body = Guarded::new(chunks(4, 100), Duration::from_secs(5), counter.clone())
            .with_limit(250)
            .with_outcome(outcome.clone());
        let err = body.collect().await.unwrap_err();
        assert!(err.to_string().contains("250"));
        assert_eq!(outcome.get(), Some(BodyFailure::TooLarge));
        assert_eq!(counter.get(), 200);
    }

    #[tokio::test]
    async fn passes_everything_under_the_limit() {
        let counter = Counter::default();
        let body =
            Guarded::new(chunks(3, 100), Duration::from_secs(5), counter.clone()).with_limit(300);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 300);
        assert_eq!(counter.get(), 300);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fires_on_a_silent_body() {
        let outcome = Arc::new(BodyOutcome::default());
        let body = Guarded::new(Silent, Duration::from_secs(3), Counter::default())
            .with_outcome(outcome.clone());
        let err = body.collect().await.unwrap_err();
        assert!(err.to_string().contains("no body data"));
        assert_eq!(outcome.get(), Some(BodyFailure::IdleTimeout));
    }

    /// A body that brings one byte every `every`, `n` times.
    struct Trickle {
        every: Duration,
        left: usize,
        next: Pin<Box<Sleep>>,
    }
    impl Body for Trickle {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            ready!(self.next.as_mut().poll(cx));
            let at = Instant::now() + self.every;
            self.next.as_mut().reset(at);
            self.left -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }

    fn trickle(every: Duration, n: usize) -> Trickle {
        Trickle {
            every,
            left: n,
            next: Box::pin(tokio::time::sleep(every)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_trickled_below_the_minimum_rate_fails_after_the_grace_period() {
        let outcome = Arc::new(BodyOutcome::default());
        let pace = crate::proxy::BodyPace {
            min_rate: 1,
            grace: Duration::from_secs(10),
            total: Duration::from_secs(3600),
        };
        // A byte every 2 s never falls silent for the 5 s idle timeout, but averages 0.5 B/s.
        let started = Instant::now();
        let body = Guarded::new(
            trickle(Duration::from_secs(2), 1000),
            Duration::from_secs(5),
            Counter::default(),
        )
        .with_pace(pace)
        .with_outcome(outcome.clone());
        let err = body.collect().await.unwrap_err();
        assert!(
            err.to_string().contains("slower than the minimum rate"),
            "{err}"
        );
        assert_eq!(
            outcome.get(),
            Some(BodyFailure::IdleTimeout),
            "answered 408"
        );
        let took = started.elapsed();
        // 10 s of grace, then a byte buys a second: about 20 s at 0.5 B/s.
        assert!(
            took >= Duration::from_secs(18) && took <= Duration::from_secs(24),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_minimum_rate_passes_until_its_total_deadline() {
        let pace = crate::proxy::BodyPace {
            min_rate: 1,
            grace: Duration::from_secs(10),
            total: Duration::from_secs(60),
        };
        let fast_enough = Guarded::new(
            trickle(Duration::from_millis(500), 20),
            Duration::from_secs(5),
            Counter::default(),
        )
        .with_pace(pace);
        assert_eq!(fast_enough.collect().await.unwrap().to_bytes().len(), 20);
        let started = Instant::now();
        let endless = Guarded::new(
            trickle(Duration::from_millis(500), 1_000_000),
            Duration::from_secs(5),
            Counter::default(),
        )
        .with_pace(pace);
        let err = endless.collect().await.unwrap_err();
        assert!(err.to_string().contains("deadline"), "{err}");
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(60),
            "the total deadline"
        );
    }

    #[tokio::test]
    async fn gate_holds_the_body_until_opened() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let n = notify.clone();
        let mut body = std::pin::pin!(
            Guarded::new(chunks(1, 10), Duration::from_secs(5), Counter::default())
                .with_gate(async move { n.notified().await })
        );
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(body.as_mut().poll_frame(&mut cx).is_pending());
        notify.notify_one();
        let frame = body.as_mut().frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap().len(), 10);
    }
}
