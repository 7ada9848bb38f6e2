//! Configuration: the TOML file and `TRACKGATE_SECTION__KEY` environment schema, its validation,
//! and one validated section per part of the flow. A leaf: it knows no stage, and no stage
//! knows it. The composition root (`app::settings`) turns these sections into each stage's own
//! settings type; sockets and runtime state are not touched here.
//!
//! Loading is two steps: [`RawConfig`] mirrors the file (`raw`: unknown keys rejected, every
//! field has a default), then [`RawConfig::validate`] (`resolve`) turns it into [`Config`],
//! naming the key and the fix for every problem it finds.

mod raw;
mod resolve;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use raw::{
    DirectorySourceKind, EmailBody, ExchangeAuthKind, OutboxBackend, RawAdmin, RawAutodiscover,
    RawCatchup, RawConfig, RawCrm, RawDataverse, RawDataverseDirectory, RawDelivery, RawDirectory,
    RawExchange, RawIdentity, RawInspect, RawLimits, RawListener, RawLogging, RawNats, RawOptions,
    RawOtherTable, RawOutbox, RawRules, RawRuntime, RawShutdown, RawStorage, RawSync, RawUpstreams,
    RawWebhook, RuntimeModel, SinkKind,
};
pub use resolve::{
    AdminConfig, AutodiscoverConfig, CatchupConfig, CrmConfig, DataverseConnection,
    DataverseDirectoryConfig, DeliveryConfig, DirectoryConfig, EXCHANGE_CONCURRENCY,
    ExchangeAuthConfig, ExchangeConfig, IdentityConfig, InspectConfig, LimitsConfig,
    ListenerConfig, ListenerTls, LogFormat, LoggingConfig, NatsConfig, NatsCredentials, OidcConfig,
    OptionsConfig, OtherTableConfig, OutboxConfig, RulesConfig, SignIn, SinkConfig, SyncConfig,
    UpstreamTarget, UpstreamsConfig, logical_name,
};

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "TRACKGATE_";
/// Separator between section and key in an environment override (`TRACKGATE_LIMITS__MAX_CONNECTIONS`).
pub const ENV_SEPARATOR: &str = "__";

/// A configuration problem, phrased for the operator who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file (or an environment variable) does not parse: `origin` is where the text came
    /// from, `fix` what to change.
    #[error("{origin}: {message}\nfix: {fix}")]
    Parse {
        origin: String,
        message: String,
        fix: String,
    },
    #[error("config key `{key}`: {problem}\nfix: {fix}")]
    Invalid {
        key: String,
        problem: String,
        fix: String,
    },
}

impl ConfigError {
    /// A problem with one key: what is wrong and how to fix it.
    pub fn invalid(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// The configuration key at fault, when the problem is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// The validated configuration, one section per stage.
#[derive(Debug, Clone)]
pub struct Config {
    pub listener: ListenerConfig,
    pub upstreams: UpstreamsConfig,
    pub limits: LimitsConfig,
    pub admin: AdminConfig,
    pub logging: LoggingConfig,
    pub shutdown: ShutdownConfig,
    pub storage: StorageConfig,
    pub runtime: RuntimeConfig,
    pub inspect: InspectConfig,
    pub autodiscover: AutodiscoverConfig,
    pub directory: DirectoryConfig,
    pub identity: IdentityConfig,
    pub rules: RulesConfig,
    pub outbox: OutboxConfig,
    pub delivery: DeliveryConfig,
    pub crm: CrmConfig,
    /// The Exchange service client for enrichment; `None` when no URL is configured.
    pub exchange: Option<ExchangeConfig>,
    pub catchup: CatchupConfig,
    pub sync: SyncConfig,
    /// The fleet outbox's connection; `Some` exactly when `outbox.backend = "nats"`.
    pub nats: Option<NatsConfig>,
    /// The Personal Options page.
    pub options: OptionsConfig,
    /// The file this came from, for SIGHUP reloads; `None` on embedded defaults.
    pub source: Option<PathBuf>,
    /// Overrides from the command line, as `TRACKGATE_SECTION__KEY` pairs applied after the
    /// environment's; kept so that a reload applies them again.
    pub overrides: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    pub drain_delay: Duration,
    pub grace_period: Duration,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub model: RuntimeModel,
    pub worker_threads: Option<usize>,
}

impl Config {
    /// Loads and validates a configuration file, with environment overrides.
    pub fn load(path: &Path) -> Result<(RawConfig, Config), ConfigError> {
        Config::load_with(Some(path), &[])
    }

    /// The embedded defaults (plus environment overrides): the gateway in front of the built-in
    /// Exchange simulator, on TLS with development certificates.
    pub fn embedded() -> Result<(RawConfig, Config), ConfigError> {
        Config::load_with(None, &[])
    }

    /// The file (or, with no path, the embedded defaults), then the environment's overrides,
    /// then `overrides` (`TRACKGATE_SECTION__KEY` pairs from the command line, which win).
    pub fn load_with(
        path: Option<&Path>,
        overrides: &[(String, String)],
    ) -> Result<(RawConfig, Config), ConfigError> {
        let env = std::env::vars().chain(overrides.iter().cloned());
        let (raw, base) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let raw = RawConfig::from_toml(&text, &path.display().to_string(), env)?;
                let base = path.parent().filter(|p| !p.as_os_str().is_empty());
                (raw, base.unwrap_or(Path::new(".")))
            }
            None => (
                RawConfig::from_toml("", "embedded defaults", env)?,
                Path::new("."),
            ),
        };
        let mut config = raw.validate(base)?;
        config.source = path.map(Path::to_path_buf);
        config.overrides = overrides.to_vec();
        Ok((raw, config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(text: &str) -> Result<Config, ConfigError> {
        RawConfig::from_toml(text, "test", Vec::new())?.validate(Path::new("."))
    }

    #[test]
    fn empty_file_means_embedded_simulator_on_dev_tls() {
        let c = validate("").unwrap();
        assert_eq!(c.upstreams.target, UpstreamTarget::Simulator);
        assert!(matches!(c.listener.tls, ListenerTls::Development { .. }));
        assert_eq!(c.admin.address.ip().to_string(), "127.0.0.1");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = validate("[limits]\nmax_conections = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_conections"), "{e}");
    }

    #[test]
    fn bad_url_names_key_and_fix() {
        let e = validate("[upstreams]\news = \"exchange.example.com\"\n").unwrap_err();
        assert_eq!(e.key(), Some("upstreams.ews"));
        assert!(e.to_string().contains("fix:"));
    }

    #[test]
    fn env_overrides_are_typed_and_nested() {
        let raw = RawConfig::from_toml(
            "[limits]\nmax_connections = 5\n",
            "test",
            vec![
                ("TRACKGATE_LIMITS__MAX_CONNECTIONS".into(), "7".into()),
                (
                    "TRACKGATE_UPSTREAMS__EWS".into(),
                    "https://ex.example".into(),
                ),
                ("TRACKGATE_CONFIG".into(), "ignored.toml".into()),
                ("OTHER__THING".into(), "x".into()),
            ],
        )
        .unwrap();
        assert_eq!(raw.limits.max_connections, 7);
        assert_eq!(raw.upstreams.ews.as_deref(), Some("https://ex.example"));
    }

    #[test]
    fn a_bad_environment_value_is_blamed_on_its_variable_in_plain_words() {
        let e = RawConfig::from_toml(
            "[limits]\nmax_connections = 5\n",
            "t.toml",
            vec![("TRACKGATE_LIMITS__MAX_CONNECTIONS".into(), "abc".into())],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("environment variable TRACKGATE_LIMITS__MAX_CONNECTIONS: "),
            "{e}"
        );
        assert!(e.contains("`limits.max_connections`"), "{e}");
        assert!(e.contains("expected a whole number"), "{e}");
        assert!(e.contains("fix: write a whole number"), "{e}");
        assert!(!e.contains("usize"), "{e}");
        // The same mistake in the file is the file's.
        let e = RawConfig::from_toml("[limits]\nmax_connections = \"abc\"\n", "t.toml", vec![])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.toml:2: `limits.max_connections`"), "{e}");
    }

    #[test]
    fn each_kind_of_parse_error_has_its_own_fix() {
        let syntax = RawConfig::from_toml("[limits\n", "t.toml", vec![])
            .unwrap_err()
            .to_string();
        assert!(
            syntax.contains("fix: correct the TOML at the line"),
            "{syntax}"
        );
        let unknown = RawConfig::from_toml("[limits]\nmax_conections = 5\n", "t.toml", vec![])
            .unwrap_err()
            .to_string();
        assert!(
            unknown.contains("fix: remove or rename the key"),
            "{unknown}"
        );
        assert!(unknown.starts_with("t.toml:1: `limits`"), "{unknown}");
    }

    #[test]
    fn env_override_of_unknown_key_is_rejected() {
        let e = RawConfig::from_toml(
            "",
            "test",
            vec![("TRACKGATE_LIMITS__NOPE".into(), "1".into())],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let raw = RawConfig::from_toml(
            "[admin]\ntoken = \"0123456789abcdef-very-secret\"\n",
            "test",
            Vec::new(),
        )
        .unwrap();
        let printed = raw.to_redacted_toml();
        assert!(!printed.contains("very-secret"), "{printed}");
        assert!(printed.contains("<redacted>"));
        assert!(!format!("{raw:?}").contains("very-secret"));
    }

    #[test]
    fn half_configured_tls_is_rejected() {
        let e = validate("[listener]\ntls_cert = \"x.pem\"\n").unwrap_err();
        assert_eq!(e.key(), Some("listener.tls_key"));
    }

    #[test]
    fn identity_maps_netbios_domains_case_insensitively_and_names_a_bad_entry() {
        let c = validate("[identity]\nntlm_domains = { CONTOSO = \"Contoso.Example\" }\n").unwrap();
        assert!(c.identity.netbios_from_upn, "on by default");
        assert_eq!(
            c.identity.ntlm_domains.get("contoso").map(String::as_str),
            Some("contoso.example")
        );
        for (entry, key) in [
            (
                "\"CON\\\\TOSO\" = \"contoso.example\"",
                "identity.ntlm_domains.CON\\TOSO",
            ),
            ("\"\" = \"contoso.example\"", "identity.ntlm_domains."),
            (
                "WAYTOOLONGFORNETBIOS = \"contoso.example\"",
                "identity.ntlm_domains.WAYTOOLONGFORNETBIOS",
            ),
            (
                "CONTOSO = \"alex@contoso.example\"",
                "identity.ntlm_domains.CONTOSO",
            ),
            (
                "CONTOSO = \"contoso.example.\"",
                "identity.ntlm_domains.CONTOSO",
            ),
            (
                "CONTOSO = \"-contoso.example\"",
                "identity.ntlm_domains.CONTOSO",
            ),
            (
                "CONTOSO = \"a.example\", contoso = \"b.example\"",
                "identity.ntlm_domains.contoso",
            ),
        ] {
            let e = validate(&format!("[identity]\nntlm_domains = {{ {entry} }}\n")).unwrap_err();
            assert_eq!(e.key(), Some(key), "{e}");
            assert!(e.to_string().contains("fix:"), "{e}");
        }
    }

    #[test]
    fn the_exchange_accounts_concurrency_defaults_to_10_and_is_bounded() {
        let exchange = |extra: &str| {
            format!(
                "[exchange]\news_url = \"https://mail.example.com/EWS/Exchange.asmx\"\nusername = \"svc\"\npassword = \"pw\"\n{extra}"
            )
        };
        let config = validate(&exchange("")).unwrap();
        assert_eq!(config.exchange.unwrap().concurrency, 10);
        let config = validate(&exchange("concurrency = 27\n")).unwrap();
        assert_eq!(config.exchange.unwrap().concurrency, 27);
        for wrong in ["0", "101"] {
            let e = validate(&exchange(&format!("concurrency = {wrong}\n"))).unwrap_err();
            assert_eq!(e.key(), Some("exchange.concurrency"), "{e}");
            assert!(e.to_string().contains("fix:"), "{e}");
        }
    }

    #[test]
    fn command_line_overrides_win_and_are_kept_for_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "[listener]\naddress = \"127.0.0.1:7001\"\n").unwrap();
        let overrides = vec![(
            "TRACKGATE_LISTENER__ADDRESS".to_owned(),
            "127.0.0.1:7002".to_owned(),
        )];
        let (_, config) = Config::load_with(Some(&file), &overrides).unwrap();
        assert_eq!(config.listener.address.port(), 7002);
        assert_eq!(config.overrides, overrides);
        assert_eq!(config.source.as_deref(), Some(file.as_path()));
        let (_, plain) = Config::load(&file).unwrap();
        assert_eq!(plain.listener.address.port(), 7001);
    }
}
