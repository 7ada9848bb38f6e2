//! The edge's sections: `[listener]`, `[upstreams]`, `[limits]`, `[autodiscover]`, `[admin]` and
//! `[logging]`, each checked and turned into its validated form.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use ipnet::IpNet;

use super::{at_least, parse_addr, parse_base_url, positive, readable_file};
use crate::common::Secret;
use crate::common::url::valid_external_url;
use crate::config::ConfigError;
use crate::config::raw::{
    RawAdmin, RawAutodiscover, RawLimits, RawListener, RawLogging, RawUpstreams,
};
pub use crate::telemetry::LogFormat;
pub use crate::tls::ListenerTls;

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub tls: ListenerTls,
    pub alpn: Vec<Vec<u8>>,
    pub trusted_proxies: Vec<IpNet>,
}

/// Where proxied traffic goes.
// Built once per (re)load, never on the request path: size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// The built-in Exchange simulator, started in-process on a loopback port.
    Simulator,
    Remote {
        ews: Uri,
        graph: Uri,
        autodiscover: Uri,
    },
}

#[derive(Debug, Clone)]
pub struct UpstreamsConfig {
    pub target: UpstreamTarget,
    pub ca_bundle: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub streaming_idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub expect_continue_timeout: Duration,
    pub preserve_host: bool,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub max_header_count: usize,
    pub max_header_bytes: usize,
    pub max_request_body: u64,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub body_min_rate: u64,
    pub body_total_timeout: Duration,
    pub send_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: SocketAddr,
    pub token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct LoggingConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct AutodiscoverConfig {
    pub rewrite: bool,
    pub external_url: Option<String>,
    /// Lower-case host names, without ports.
    pub exchange_hosts: Vec<String>,
    pub max_body: usize,
}

pub(super) fn listener(
    l: &RawListener,
    data_dir: &Path,
    anchor: &dyn Fn(&Path) -> PathBuf,
) -> Result<ListenerConfig, ConfigError> {
    let address = parse_addr("listener.address", &l.address)?;
    let tls = match (&l.tls_cert, &l.tls_key, l.plaintext) {
        (_, _, true) => ListenerTls::Off,
        (Some(cert), Some(key), false) => {
            let (cert, key) = (anchor(cert), anchor(key));
            readable_file("listener.tls_cert", &cert, "a PEM certificate chain")?;
            readable_file("listener.tls_key", &key, "a PEM private key")?;
            ListenerTls::Files { cert, key }
        }
        (Some(_), None, false) => {
            return Err(ConfigError::invalid(
                "listener.tls_key",
                "missing while listener.tls_cert is set",
                "set tls_key to the certificate's PEM private key, or remove tls_cert to use development certificates",
            ));
        }
        (None, Some(_), false) => {
            return Err(ConfigError::invalid(
                "listener.tls_cert",
                "missing while listener.tls_key is set",
                "set tls_cert to the PEM certificate chain, or remove tls_key to use development certificates",
            ));
        }
        (None, None, false) => ListenerTls::Development {
            dir: data_dir.join("certs"),
        },
    };
    if l.alpn.is_empty() {
        return Err(ConfigError::invalid(
            "listener.alpn",
            "is empty",
            r#"offer at least one protocol: alpn = ["h2", "http/1.1"]"#,
        ));
    }
    for proto in &l.alpn {
        if proto != "h2" && proto != "http/1.1" {
            return Err(ConfigError::invalid(
                "listener.alpn",
                format!("unsupported protocol {proto:?}"),
                r#"use "h2" and/or "http/1.1""#,
            ));
        }
    }
    let mut trusted_proxies = Vec::new();
    for cidr in &l.trusted_proxies {
        let net = cidr
            .parse::<IpNet>()
            .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| {
                ConfigError::invalid(
                    "listener.trusted_proxies",
                    format!("{cidr:?} is not an IP address or CIDR"),
                    "write entries such as \"10.0.0.0/8\" or \"192.0.2.7\"",
                )
            })?;
        trusted_proxies.push(net);
    }
    Ok(ListenerConfig {
        address,
        tls,
        alpn: l.alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
        trusted_proxies,
    })
}

pub(super) fn upstreams(
    u: &RawUpstreams,
    anchor: &dyn Fn(&Path) -> PathBuf,
) -> Result<UpstreamsConfig, ConfigError> {
    let target = match &u.ews {
        None => {
            if u.graph.is_some() || u.autodiscover.is_some() {
                return Err(ConfigError::invalid(
                    "upstreams.ews",
                    "missing while upstreams.graph or upstreams.autodiscover is set",
                    "set ews to the Exchange base URL, e.g. \"https://exchange.example.com\"",
                ));
            }
            UpstreamTarget::Simulator
        }
        Some(ews) => {
            let ews = parse_base_url("upstreams.ews", ews)?;
            let graph = match &u.graph {
                Some(g) => parse_base_url("upstreams.graph", g)?,
                None => ews.clone(),
            };
            let autodiscover = match &u.autodiscover {
                Some(a) => parse_base_url("upstreams.autodiscover", a)?,
                None => ews.clone(),
            };
            UpstreamTarget::Remote {
                ews,
                graph,
                autodiscover,
            }
        }
    };
    let ca_bundle = match &u.ca_bundle {
        Some(p) => {
            let p = anchor(p);
            readable_file("upstreams.ca_bundle", &p, "a PEM file of CA certificates")?;
            Some(p)
        }
        None => None,
    };
    for (key, d) in [
        ("upstreams.connect_timeout", u.connect_timeout),
        ("upstreams.header_timeout", u.header_timeout),
        ("upstreams.idle_timeout", u.idle_timeout),
        ("upstreams.streaming_idle_timeout", u.streaming_idle_timeout),
    ] {
        positive(key, d)?;
    }
    if u.streaming_idle_timeout < u.idle_timeout {
        return Err(ConfigError::invalid(
            "upstreams.streaming_idle_timeout",
            "is shorter than upstreams.idle_timeout",
            "set it to at least idle_timeout; EWS streaming notifications need up to 30 minutes (default 35m)",
        ));
    }
    Ok(UpstreamsConfig {
        target,
        ca_bundle,
        connect_timeout: u.connect_timeout,
        header_timeout: u.header_timeout,
        idle_timeout: u.idle_timeout,
        streaming_idle_timeout: u.streaming_idle_timeout,
        pool_idle_timeout: u.pool_idle_timeout,
        pool_max_idle_per_host: u.pool_max_idle_per_host,
        expect_continue_timeout: u.expect_continue_timeout,
        preserve_host: u.preserve_host,
    })
}

pub(super) fn limits(l: &RawLimits) -> Result<LimitsConfig, ConfigError> {
    at_least("limits.max_connections", l.max_connections as u64, 1)?;
    at_least("limits.max_header_count", l.max_header_count as u64, 16)?;
    at_least("limits.max_header_bytes", l.max_header_bytes.0, 8192)?;
    at_least(
        "limits.h2_max_concurrent_streams",
        l.h2_max_concurrent_streams.into(),
        1,
    )?;
    for (key, d) in [
        ("limits.header_read_timeout", l.header_read_timeout),
        ("limits.body_read_timeout", l.body_read_timeout),
        ("limits.body_total_timeout", l.body_total_timeout),
        ("limits.send_timeout", l.send_timeout),
        ("limits.tls_handshake_timeout", l.tls_handshake_timeout),
    ] {
        positive(key, d)?;
    }
    Ok(LimitsConfig {
        max_connections: l.max_connections,
        max_header_count: l.max_header_count,
        max_header_bytes: usize::try_from(l.max_header_bytes.0).unwrap_or(usize::MAX),
        max_request_body: l.max_request_body.0,
        header_read_timeout: l.header_read_timeout,
        body_read_timeout: l.body_read_timeout,
        body_min_rate: l.body_min_rate.0,
        body_total_timeout: l.body_total_timeout,
        send_timeout: l.send_timeout,
        tls_handshake_timeout: l.tls_handshake_timeout,
        h2_max_concurrent_streams: l.h2_max_concurrent_streams,
    })
}

/// The Exchange hosts whose URLs Autodiscover answers are rewritten to the gateway's: the ones
/// listed plus the upstreams' own.
pub(super) fn autodiscover(
    a: &RawAutodiscover,
    upstreams: &RawUpstreams,
) -> Result<AutodiscoverConfig, ConfigError> {
    if let Some(url) = &a.external_url
        && !valid_external_url(url)
    {
        return Err(ConfigError::invalid(
            "autodiscover.external_url",
            format!("{url:?} is not a plain scheme://host[:port]"),
            "write the URL clients use for the gateway, e.g. \"https://mail.example.com\", with no path",
        ));
    }
    let mut hosts = Vec::new();
    for host in &a.exchange_hosts {
        let h = host.trim().to_ascii_lowercase();
        if h.is_empty()
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(ConfigError::invalid(
                "autodiscover.exchange_hosts",
                format!("{host:?} is not a host name"),
                "list bare host names such as \"mail.contoso.com\" (no scheme or port)",
            ));
        }
        hosts.push(h);
    }
    for (_, uri) in [
        ("ews", &upstreams.ews),
        ("graph", &upstreams.graph),
        ("autodiscover", &upstreams.autodiscover),
    ] {
        if let Some(host) = uri
            .as_deref()
            .and_then(|u| u.parse::<Uri>().ok())
            .and_then(|u| u.host().map(str::to_ascii_lowercase))
            && !hosts.contains(&host)
        {
            hosts.push(host);
        }
    }
    at_least("autodiscover.max_body", a.max_body.0, 4096)?;
    Ok(AutodiscoverConfig {
        rewrite: a.rewrite,
        external_url: a.external_url.clone(),
        exchange_hosts: hosts,
        max_body: usize::try_from(a.max_body.0).unwrap_or(usize::MAX),
    })
}

pub(super) fn admin(a: &RawAdmin) -> Result<AdminConfig, ConfigError> {
    let admin = AdminConfig {
        address: parse_addr("admin.address", &a.address)?,
        token: a.token.clone(),
    };
    if let Some(token) = &admin.token
        && token.expose().len() < 16
    {
        return Err(ConfigError::invalid(
            "admin.token",
            "is shorter than 16 characters",
            "use a long random value, e.g. the output of `openssl rand -hex 32`",
        ));
    }
    Ok(admin)
}

pub(super) fn logging(l: &RawLogging) -> Result<LoggingConfig, ConfigError> {
    let format = match l.format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(ConfigError::invalid(
                "logging.format",
                format!("unknown format {other:?}"),
                "use \"text\" or \"json\"",
            ));
        }
    };
    if tracing_subscriber::EnvFilter::try_new(&l.level).is_err() {
        return Err(ConfigError::invalid(
            "logging.level",
            format!("{:?} is not a valid filter", l.level),
            "use a level such as \"info\" or a filter such as \"trackgate=debug,info\"",
        ));
    }
    Ok(LoggingConfig {
        format,
        level: l.level.clone(),
    })
}
