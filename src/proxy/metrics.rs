//! The proxy's metrics. Labels are bounded: route class, status class, direction, error kind —
//! never a mailbox, address, path or host.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::route::RouteClass;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Counters resolved once at start, so recording on the request path is a few atomic adds.
#[derive(Debug)]
pub struct ProxyMetrics {
    requests: Vec<Counter>,
    durations: Vec<Histogram>,
    pub connections_accepted: Counter,
    pub connections_active: Gauge,
    pub connections_parked: Gauge,
    /// Hand-offs from the gateway's own HTTP/1.1 loop to hyper (`h1_server`).
    pub http1_handoffs: Counter,
    pub tls_handshake_failures: Counter,
    pub upstream_requests: Counter,
    pub upstream_connects_pooled: Counter,
    pub upstream_connects_pinned: Counter,
    pub pinned_active: Gauge,
    pub bytes_from_client: Counter,
    pub bytes_from_upstream: Counter,
    errors: Family<KindLabels, Counter>,
    /// The framing guard's counters (of `errors`), looked up once: every connection takes them.
    pub refusals: super::framing::Refusals,
    reuse_ratio: Gauge<f64, AtomicU64>,
    pub captures: super::capture::CaptureMetrics,
    pub config_reloads_ok: Counter,
    pub config_reloads_failed: Counter,
    pub ready: Gauge,
}

impl ProxyMetrics {
    /// Registers every proxy metric, per concern: answered requests, labelled traffic
    /// counters, then the plain counters and gauges. The registration order is the order of
    /// the exposition, kept as it was.
    pub fn register(registry: &mut Registry) -> ProxyMetrics {
        let (requests, durations) = register_requests(registry);
        let [bytes_from_client, bytes_from_upstream] = counter_family(
            registry,
            "bytes",
            "Body bytes forwarded, by direction",
            ["client_to_upstream", "upstream_to_client"]
                .map(|direction| DirectionLabels { direction }),
        );
        let [upstream_connects_pooled, upstream_connects_pinned] = counter_family(
            registry,
            "upstream_connects",
            "New upstream connections opened: pooled, or pinned to one client connection for Windows auth",
            ["pooled", "pinned"].map(|kind| KindLabels { kind }),
        );
        let [config_reloads_ok, config_reloads_failed] = counter_family(
            registry,
            "config_reloads",
            "SIGHUP reloads by outcome",
            ["ok", "failed"].map(|kind| KindLabels { kind }),
        );
        let errors: Family<KindLabels, Counter> = Family::default();
        // One lookup per statement: the guard `get_or_create` returns holds the family's lock.
        let framing = errors
            .get_or_create(&KindLabels {
                kind: "bad_request",
            })
            .clone();
        let too_large = errors
            .get_or_create(&KindLabels {
                kind: "header_too_large",
            })
            .clone();
        let refusals = super::framing::Refusals { framing, too_large };
        let m = ProxyMetrics {
            requests,
            durations,
            connections_accepted: Counter::default(),
            connections_active: Gauge::default(),
            connections_parked: Gauge::default(),
            http1_handoffs: Counter::default(),
            tls_handshake_failures: Counter::default(),
            upstream_requests: Counter::default(),
            upstream_connects_pooled,
            upstream_connects_pinned,
            pinned_active: Gauge::default(),
            bytes_from_client,
            bytes_from_upstream,
            errors,
            refusals,
            reuse_ratio: Gauge::default(),
            captures: super::capture::CaptureMetrics::default(),
            config_reloads_ok,
            config_reloads_failed,
            ready: Gauge::default(),
        };
        m.register_captures(registry);
        m.register_plain(registry);
        m
    }

    /// The inspection copies: handed off, dropped, given up on streams, truncated.
    fn register_captures(&self, registry: &mut Registry) {
        registry.register(
            "captures_handed_off",
            "Exchange copies handed to inspection",
            self.captures.handed_off.clone(),
        );
        registry.register(
            "captures_dropped",
            "Exchange copies dropped because the inspection queue or memory budget was full",
            self.captures.dropped.clone(),
        );
        registry.register(
            "captures_skipped_streams",
            "Exchange copies given up because the response is an endless stream (GetStreamingEvents)",
            self.captures.skipped_streams.clone(),
        );
        registry.register(
            "captures_skipped_unread",
            "Exchange copies given up because inspection reads nothing from the operation (EWS GetAttachment, ResolveNames, free/busy, …)",
            self.captures.skipped_unread.clone(),
        );
        registry.register(
            "captures_truncated",
            "Exchange copies cut at the capture limit",
            self.captures.truncated.clone(),
        );
    }

    /// The unlabelled counters and gauges (connections, upstream, errors, readiness): a flat
    /// list of registrations; splitting it would only scatter the metric names.
    fn register_plain(&self, registry: &mut Registry) {
        registry.register(
            "connections_accepted",
            "Client connections accepted and taken into service (under the connection limit)",
            self.connections_accepted.clone(),
        );
        registry.register(
            "connections_active",
            "Client connections open now",
            self.connections_active.clone(),
        );
        registry.register(
            "connections_parked",
            "Idle keep-alive client connections holding only their socket (no HTTP state or buffers)",
            self.connections_parked.clone(),
        );
        registry.register(
            "http1_handoffs",
            "Hand-offs from the gateway's own HTTP/1.1 server loop to hyper's, each at a request the loop does not serve (chunked or unfinished bodies, 100-continue, HTTP/1.0, upgrades, refused or oversized heads); hyper then serves that connection's requests until it is idle",
            self.http1_handoffs.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Client TLS handshakes that failed or timed out",
            self.tls_handshake_failures.clone(),
        );
        registry.register(
            "upstream_requests",
            "Requests sent upstream (pooled and pinned)",
            self.upstream_requests.clone(),
        );
        registry.register(
            "pinned_connections_active",
            "Upstream connections pinned to a client connection for NTLM/Negotiate, open now",
            self.pinned_active.clone(),
        );
        registry.register(
            "proxy_errors",
            "Requests the gateway answered itself because forwarding failed, by kind",
            self.errors.clone(),
        );
        registry.register(
            "upstream_connection_reuse_ratio",
            "Share of upstream requests that reused a connection (1 - connects / requests), updated at scrape",
            self.reuse_ratio.clone(),
        );
        registry.register(
            "ready",
            "1 while the gateway accepts traffic, 0 while starting or draining",
            self.ready.clone(),
        );
    }

    pub fn record_response(&self, route: RouteClass, status: u16, seconds: f64) {
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        let r = route as usize;
        self.requests[r * STATUS_CLASSES.len() + class].inc();
        self.durations[r].observe(seconds);
    }

    pub fn record_error(&self, kind: &'static str) {
        self.errors.get_or_create(&KindLabels { kind }).inc();
    }

    /// Recomputes the reuse gauge; called before each scrape.
    pub fn refresh_reuse_ratio(&self) {
        let requests = self.upstream_requests.get() as f64;
        let connects =
            (self.upstream_connects_pooled.get() + self.upstream_connects_pinned.get()) as f64;
        let ratio = if requests > 0.0 {
            (1.0 - connects / requests).max(0.0)
        } else {
            1.0
        };
        self.reuse_ratio.set(ratio);
    }

    /// Reuse ratio as last computed (for tests and the bench).
    pub fn reuse_ratio(&self) -> f64 {
        self.reuse_ratio.get()
    }
}

/// Answered requests by route and status class, and their durations by route, resolved for
/// every combination up front so recording needs no label lookup.
fn register_requests(registry: &mut Registry) -> (Vec<Counter>, Vec<Histogram>) {
    let requests_family = Family::<RequestLabels, Counter>::default();
    let durations_family = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
        Histogram::new(exponential_buckets(0.0005, 2.0, 16))
    });
    let mut requests = Vec::new();
    let mut durations = Vec::new();
    for route in RouteClass::ALL {
        for status_class in STATUS_CLASSES {
            requests.push(
                requests_family
                    .get_or_create(&RequestLabels {
                        route: route.as_str(),
                        status_class,
                    })
                    .clone(),
            );
        }
        durations.push(
            durations_family
                .get_or_create(&RouteLabels {
                    route: route.as_str(),
                })
                .clone(),
        );
    }
    registry.register(
        "requests",
        "Client requests answered, by route class and status class",
        requests_family,
    );
    registry.register(
        "request_duration_seconds",
        "Time from request received to response headers sent, by route class",
        durations_family,
    );
    (requests, durations)
}

/// A counter family with a fixed set of labels, registered, and its counters resolved in the
/// order of `labels`.
fn counter_family<L, const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    labels: [L; N],
) -> [Counter; N]
where
    L: EncodeLabelSet + Clone + std::fmt::Debug + std::hash::Hash + Eq + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    let counters = labels.map(|l| family.get_or_create(&l).clone());
    registry.register(name, help, family);
    counters
}
