//! Telemetry: the tracing subscriber (text or JSON to stderr) and the Prometheus registry that
//! each stage registers its own metrics into. No decision logic lives here.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

/// Prefix of every metric name.
pub const METRIC_PREFIX: &str = "trackgate";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber. `RUST_LOG` wins over `level` (a filter such as
/// `info` or `trackgate=debug,info`). Calling it twice is harmless (the second call is ignored),
/// which keeps tests simple.
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A new registry with the crate prefix and the build-info pseudo-metric.
pub fn new_registry() -> Registry {
    let mut registry = Registry::with_prefix(METRIC_PREFIX);
    registry.register(
        "build",
        "Build information",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry
}

/// Renders the registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(8 * 1024);
    if encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// A 0/1 gauge helper.
pub fn set_flag(gauge: &Gauge, on: bool) {
    gauge.set(i64::from(on));
}
