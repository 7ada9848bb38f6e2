//! The fleet's section: `[nats]`, read when `outbox.backend = "nats"`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{at_least, positive, readable_file};
use crate::common::Secret;
use crate::config::ConfigError;
use crate::config::raw::{OutboxBackend, RawNats};

/// How the gateway signs in to NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsCredentials {
    None,
    UserPassword { user: String, password: Secret },
    Token(Secret),
    Nkey(Secret),
    CredsFile(PathBuf),
}

/// The validated `[nats]` section.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub servers: Vec<String>,
    pub credentials: NatsCredentials,
    pub tls_required: bool,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_client: Option<(PathBuf, PathBuf)>,
    pub instance: Option<String>,
    pub stream: String,
    pub subject: String,
    pub consumer: String,
    pub dead_stream: String,
    pub dead_subject: String,
    pub replicas: usize,
    pub duplicate_window: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub publish_in_flight: usize,
    pub prefetch: Option<usize>,
    pub ack_wait: Duration,
    pub spool_file: PathBuf,
    pub lease_bucket: String,
    pub lease_ttl: Duration,
    pub directory_bucket: String,
}

/// `[nats]`, checked only when the outbox lives there.
pub(super) fn nats(
    backend: OutboxBackend,
    nats: &RawNats,
    data_dir: &Path,
    anchor: &dyn Fn(&Path) -> PathBuf,
) -> Result<Option<NatsConfig>, ConfigError> {
    if backend != OutboxBackend::Nats {
        return Ok(None);
    }
    let servers = servers(&nats.servers)?;
    let credentials = credentials(nats, anchor)?;
    let tls_ca_file = nats.tls_ca_file.as_deref().map(anchor);
    if let Some(ca) = &tls_ca_file {
        readable_file("nats.tls_ca_file", ca, "a PEM file of CA certificates")?;
    }
    let tls_client = match (&nats.tls_cert_file, &nats.tls_key_file) {
        (Some(cert), Some(key)) => {
            let (cert, key) = (anchor(cert), anchor(key));
            readable_file("nats.tls_cert_file", &cert, "a PEM certificate chain")?;
            readable_file("nats.tls_key_file", &key, "a PEM private key")?;
            Some((cert, key))
        }
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "nats.tls_cert_file",
                "is set without nats.tls_key_file, or the other way round",
                "set both (a client certificate and its key) or neither",
            ));
        }
    };
    for (key, name) in [
        ("nats.stream", &nats.stream),
        ("nats.consumer", &nats.consumer),
        ("nats.dead_stream", &nats.dead_stream),
        ("nats.lease_bucket", &nats.lease_bucket),
        ("nats.directory_bucket", &nats.directory_bucket),
    ] {
        name_of_one_token(key, name)?;
    }
    for (key, subject) in [
        ("nats.subject", &nats.subject),
        ("nats.dead_subject", &nats.dead_subject),
    ] {
        plain_subject(key, subject)?;
    }
    if nats.subject == nats.dead_subject {
        return Err(ConfigError::invalid(
            "nats.dead_subject",
            "is the same as nats.subject",
            "give dead letters a subject of their own, such as \"trackgate.dead\"",
        ));
    }
    if !(1..=5).contains(&nats.replicas) {
        return Err(ConfigError::invalid(
            "nats.replicas",
            format!("{} is outside 1..=5", nats.replicas),
            "use 3 in production (a 3-node cluster), 1 for a single server",
        ));
    }
    positive("nats.duplicate_window", nats.duplicate_window)?;
    positive("nats.connect_timeout", nats.connect_timeout)?;
    positive("nats.request_timeout", nats.request_timeout)?;
    at_least("nats.publish_in_flight", nats.publish_in_flight as u64, 1)?;
    if let Some(prefetch) = nats.prefetch {
        at_least("nats.prefetch", prefetch as u64, 1)?;
    }
    if nats.lease_ttl < Duration::from_secs(2) {
        return Err(ConfigError::invalid(
            "nats.lease_ttl",
            format!("{:?} is under two seconds", nats.lease_ttl),
            "give it several seconds (15s by default): a gateway renews three times per TTL",
        ));
    }
    if nats.ack_wait < Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            "nats.ack_wait",
            format!("{:?} is under a second", nats.ack_wait),
            "give it longer than a CRM call takes, such as \"60s\"",
        ));
    }
    Ok(Some(NatsConfig {
        servers,
        credentials,
        tls_required: nats.tls_required,
        tls_ca_file,
        tls_client,
        instance: nats.instance.clone(),
        stream: nats.stream.clone(),
        subject: nats.subject.clone(),
        consumer: nats.consumer.clone(),
        dead_stream: nats.dead_stream.clone(),
        dead_subject: nats.dead_subject.clone(),
        replicas: nats.replicas,
        duplicate_window: nats.duplicate_window,
        connect_timeout: nats.connect_timeout,
        request_timeout: nats.request_timeout,
        publish_in_flight: nats.publish_in_flight,
        prefetch: nats.prefetch,
        ack_wait: nats.ack_wait,
        spool_file: nats
            .spool_file
            .as_deref()
            .map(anchor)
            .unwrap_or_else(|| data_dir.join("nats-spool.redb")),
        lease_bucket: nats.lease_bucket.clone(),
        lease_ttl: nats.lease_ttl,
        directory_bucket: nats.directory_bucket.clone(),
    }))
}

fn servers(servers: &[String]) -> Result<Vec<String>, ConfigError> {
    if servers.is_empty() {
        return Err(ConfigError::invalid(
            "nats.servers",
            "is empty while outbox.backend = \"nats\"",
            "list the NATS servers, such as [\"nats://nats-1:4222\", \"nats://nats-2:4222\"]",
        ));
    }
    for server in servers {
        let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
            .iter()
            .any(|s| server.starts_with(s));
        let rest = server.split_once("://").map(|(_, r)| r).unwrap_or(server);
        if !scheme_ok || rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(ConfigError::invalid(
                "nats.servers",
                format!("{server:?} is not a NATS server URL"),
                "write nats://host:4222 (tls:// for TLS); credentials go in nats.user / nats.token, not the URL",
            ));
        }
        if rest.contains('@') {
            return Err(ConfigError::invalid(
                "nats.servers",
                "a server URL carries credentials",
                "move them to nats.user and nats.password (or nats.token): URLs are logged",
            ));
        }
    }
    Ok(servers.to_vec())
}

fn credentials(
    nats: &RawNats,
    anchor: &dyn Fn(&Path) -> PathBuf,
) -> Result<NatsCredentials, ConfigError> {
    let kinds = [
        nats.user.is_some() || nats.password.is_some(),
        nats.token.is_some(),
        nats.nkey_seed.is_some(),
        nats.creds_file.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        return Err(ConfigError::invalid(
            "nats.user / nats.token / nats.nkey_seed / nats.creds_file",
            "more than one way to sign in is set",
            "keep exactly one: user and password, a token, an nkey seed, or a creds file",
        ));
    }
    Ok(match nats {
        RawNats {
            user: Some(user),
            password: Some(password),
            ..
        } => NatsCredentials::UserPassword {
            user: user.clone(),
            password: password.clone(),
        },
        RawNats { user: Some(_), .. }
        | RawNats {
            password: Some(_), ..
        } => {
            return Err(ConfigError::invalid(
                "nats.password",
                "nats.user and nats.password come together",
                "set both, or use nats.token / nats.creds_file instead",
            ));
        }
        RawNats {
            token: Some(token), ..
        } => NatsCredentials::Token(token.clone()),
        RawNats {
            nkey_seed: Some(seed),
            ..
        } => {
            if !seed.expose().starts_with("SU") {
                return Err(ConfigError::invalid(
                    "nats.nkey_seed",
                    "is not a user nkey seed",
                    "give the seed that starts with SU (from `nsc` or `nk -gen user`)",
                ));
            }
            NatsCredentials::Nkey(seed.clone())
        }
        RawNats {
            creds_file: Some(path),
            ..
        } => {
            let path = anchor(path);
            readable_file("nats.creds_file", &path, "a NATS .creds file")?;
            NatsCredentials::CredsFile(path)
        }
        _ => NatsCredentials::None,
    })
}

/// A stream or consumer name: one token, no wildcards, separators or spaces.
fn name_of_one_token(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace())
    {
        return Err(ConfigError::invalid(
            key,
            format!("{name:?} is not a JetStream name"),
            "use letters, digits, - and _ only, such as \"TRACKGATE_OUTBOX\"",
        ));
    }
    Ok(())
}

/// A subject prefix: dot-separated tokens, no wildcards (the outbox appends `.<key>`).
fn plain_subject(key: &str, subject: &str) -> Result<(), ConfigError> {
    let bad = subject.is_empty()
        || subject
            .split('.')
            .any(|t| t.is_empty() || t.contains(['*', '>']) || t.contains(char::is_whitespace));
    if bad {
        return Err(ConfigError::invalid(
            key,
            format!("{subject:?} is not a plain subject"),
            "use dot-separated words without wildcards, such as \"trackgate.outbox\"",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: RawNats) -> Result<Option<NatsConfig>, ConfigError> {
        nats(OutboxBackend::Nats, &raw, Path::new("/data"), &|p| {
            p.to_path_buf()
        })
    }

    fn key_of(error: ConfigError) -> String {
        match error {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("not a key error: {other}"),
        }
    }

    fn with_server() -> RawNats {
        RawNats {
            servers: vec!["nats://127.0.0.1:4222".into()],
            ..RawNats::default()
        }
    }

    #[test]
    fn the_redb_backend_reads_no_nats_section() {
        let none = nats(
            OutboxBackend::Redb,
            &RawNats::default(),
            Path::new("/d"),
            &|p| p.to_path_buf(),
        );
        assert!(none.unwrap().is_none());
    }

    #[test]
    fn each_mistake_names_its_key() {
        assert_eq!(
            key_of(check(RawNats::default()).unwrap_err()),
            "nats.servers"
        );
        let mut raw = with_server();
        raw.servers = vec!["nats://u:p@host:4222".into()];
        assert_eq!(key_of(check(raw).unwrap_err()), "nats.servers");
        let mut raw = with_server();
        raw.servers = vec!["http://host:4222".into()];
        assert_eq!(key_of(check(raw).unwrap_err()), "nats.servers");
        let mut raw = with_server();
        raw.user = Some("trackgate".into());
        assert_eq!(key_of(check(raw).unwrap_err()), "nats.password");
        let mut raw = with_server();
        raw.token = Some(Secret::new("t"));
        raw.nkey_seed = Some(Secret::new("SUxyz"));
        assert!(key_of(check(raw).unwrap_err()).contains("nats.token"));
        let mut raw = with_server();
        raw.nkey_seed = Some(Secret::new("UAxyz"));
        assert_eq!(key_of(check(raw).unwrap_err()), "nats.nkey_seed");
        let mut raw = with_server();
        raw.stream = "trackgate.outbox".into();
        assert_eq!(key_of(check(raw).unwrap_err()), "nats.stream");
        let mut raw = with_server();
        raw.subject = "trackgate.>".into();
        assert_eq!(key_of(check(raw).unwrap_err()), "nats.subject");
        let mut raw = with_server();
        raw.dead_subject = raw.subject.clone();
        assert_eq!(key_of(check(raw).unwrap_err()), "nats.dead_subject");
        let mut raw = with_server();
        raw.replicas = 0;
        assert_eq!(key_of(check(raw).unwrap_err()), "nats.replicas");
        let mut raw = with_server();
        raw.ack_wait = Duration::from_millis(200);
        assert_eq!(key_of(check(raw).unwrap_err()), "nats.ack_wait");
        let mut raw = with_server();
        raw.tls_cert_file = Some("/etc/cert.pem".into());
        assert_eq!(key_of(check(raw).unwrap_err()), "nats.tls_cert_file");
        let mut raw = with_server();
        raw.creds_file = Some("/nonexistent/trackgate.creds".into());
        assert_eq!(key_of(check(raw).unwrap_err()), "nats.creds_file");
    }

    #[test]
    fn defaults_with_a_server_give_a_spool_in_the_data_directory() {
        let config = check(with_server()).unwrap().unwrap();
        assert_eq!(config.spool_file, Path::new("/data/nats-spool.redb"));
        assert_eq!(config.credentials, NatsCredentials::None);
        assert_eq!(config.replicas, 3);
        let mut raw = with_server();
        raw.user = Some("trackgate".into());
        raw.password = Some(Secret::new("pw"));
        let config = check(raw).unwrap().unwrap();
        assert!(matches!(
            config.credentials,
            NatsCredentials::UserPassword { .. }
        ));
    }
}
