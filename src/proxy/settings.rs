//! What the proxy needs to know, in its own types: the listener, the limits it enforces on
//! clients, the upstream timeouts and the Autodiscover rewrite. The composition root builds
//! these from the configuration; a reload builds new ones and swaps them in.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

/// Everything [`super::ProxyState::build`] reads.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub listener: ListenerSettings,
    /// The proxy's own threads, each with its own listener and upstream pool (`None`: one
    /// shared runtime, one pool).
    pub threads: Option<usize>,
    pub limits: Limits,
    pub upstreams: UpstreamTimeouts,
    pub autodiscover: AutodiscoverSettings,
}

#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub address: SocketAddr,
    pub tls: ListenerTls,
    /// ALPN protocol ids offered, in order of preference.
    pub alpn: Vec<Vec<u8>>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

pub use crate::tls::ListenerTls;

/// How fast a request body must arrive beyond never falling silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPace {
    /// Bytes per second on average, checked once `grace` has passed since the body started;
    /// 0: no minimum.
    pub min_rate: u64,
    pub grace: Duration,
    /// The whole body's deadline.
    pub total: Duration,
}

impl Default for BodyPace {
    fn default() -> Self {
        BodyPace {
            min_rate: 0,
            grace: Duration::from_secs(60),
            total: Duration::from_secs(30 * 60),
        }
    }
}

/// What one client may ask of the gateway.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_count: usize,
    pub max_header_bytes: usize,
    pub max_request_body: u64,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub body_pace: BodyPace,
    /// Longest a write may wait on a client that does not read its answer.
    pub send_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
}

/// How long the gateway waits on Exchange, and how it keeps connections to it.
#[derive(Debug, Clone)]
pub struct UpstreamTimeouts {
    /// Extra CA certificates to trust upstream, beside the system's.
    pub ca_bundle: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// The idle timeout of EWS streaming notifications (which are silent for minutes).
    pub streaming_idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub expect_continue_timeout: Duration,
    /// Send the client's `Host` upstream instead of the upstream's own.
    pub preserve_host: bool,
}

/// The rewrite of Exchange URLs in Autodiscover answers to the gateway's.
#[derive(Debug, Clone)]
pub struct AutodiscoverSettings {
    pub rewrite: bool,
    /// The URL clients use for the gateway; unset: the request's own scheme and host.
    pub external_url: Option<String>,
    /// Lower-case host names, without ports, whose URLs are rewritten.
    pub exchange_hosts: Vec<String>,
    pub max_body: usize,
}
