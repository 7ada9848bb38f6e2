//! `[options]`: the Personal Options page — who signs in how, who is an admin, how much history
//! previews replay, and where the page keeps what it owns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;

use super::{at_least, parse_base_url};
use crate::common::Secret;
use crate::config::ConfigError;
use crate::config::raw::RawOptions;

#[derive(Debug, Clone)]
pub struct OptionsConfig {
    pub enabled: bool,
    pub sign_in: SignIn,
    /// Lower-cased sign-in names.
    pub admins: Vec<String>,
    pub admin_group: Option<String>,
    pub session_ttl: Duration,
    pub history_per_mailbox: usize,
    pub history_mailboxes: usize,
    pub store: PathBuf,
}

/// How a person proves who they are to the page.
#[derive(Debug, Clone)]
pub enum SignIn {
    /// Nobody signs in; the page is not served.
    Off,
    /// Pick a user from the directory, no password: for the built-in simulator only.
    Development,
    Oidc(OidcConfig),
}

#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: Uri,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    /// `<public_url>/options/callback`.
    pub redirect_uri: String,
}

pub(super) fn options(
    raw: &RawOptions,
    simulator_upstream: bool,
    admin: std::net::SocketAddr,
    data_dir: &Path,
    anchor: &dyn Fn(&Path) -> PathBuf,
) -> Result<OptionsConfig, ConfigError> {
    let sign_in = match raw.sign_in.as_deref() {
        Some("off") => SignIn::Off,
        Some("development") => SignIn::Development,
        Some("oidc") => SignIn::Oidc(oidc(raw)?),
        None if raw.oidc_issuer.is_some() => SignIn::Oidc(oidc(raw)?),
        None if simulator_upstream => SignIn::Development,
        None => SignIn::Off,
        Some(other) => {
            return Err(ConfigError::invalid(
                "options.sign_in",
                format!("{other:?} is not a sign-in method"),
                "use \"oidc\" (Entra ID), \"development\" (the simulator's login) or \"off\"",
            ));
        }
    };
    if matches!(sign_in, SignIn::Development) && !admin.ip().is_loopback() {
        return Err(ConfigError::invalid(
            "options.sign_in",
            "\"development\" lets anyone sign in as any user without a password, and admin.address is not on loopback",
            "use \"oidc\" (Entra ID), or keep admin.address on 127.0.0.1",
        ));
    }
    at_least("options.history_mailboxes", raw.history_mailboxes as u64, 1)?;
    if raw.history_per_mailbox > 10_000 {
        return Err(ConfigError::invalid(
            "options.history_per_mailbox",
            "is over 10000",
            "keep it at a few hundred: each preview replays all of them",
        ));
    }
    if raw.session_ttl < Duration::from_secs(60) {
        return Err(ConfigError::invalid(
            "options.session_ttl",
            "is under a minute",
            "use something like \"8h\"",
        ));
    }
    Ok(OptionsConfig {
        enabled: raw.enabled,
        sign_in,
        admins: raw.admins.iter().map(|a| a.trim().to_lowercase()).collect(),
        admin_group: raw.admin_group.clone().filter(|g| !g.trim().is_empty()),
        session_ttl: raw.session_ttl,
        history_per_mailbox: raw.history_per_mailbox,
        history_mailboxes: raw.history_mailboxes,
        store: raw
            .store
            .as_deref()
            .map_or_else(|| data_dir.join("options.redb"), anchor),
    })
}

fn oidc(raw: &RawOptions) -> Result<OidcConfig, ConfigError> {
    let required = |key: &str, value: &Option<String>| -> Result<String, ConfigError> {
        value
            .clone()
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| {
                ConfigError::invalid(
                    key,
                    "is required for sign_in = \"oidc\"",
                    "set it from the app registration (Entra ID: Overview → Application (client) ID, and the tenant's v2.0 issuer)",
                )
            })
    };
    let issuer = parse_base_url(
        "options.oidc_issuer",
        &required("options.oidc_issuer", &raw.oidc_issuer)?,
    )?;
    let client_id = required("options.oidc_client_id", &raw.oidc_client_id)?;
    let public_url = parse_base_url(
        "options.public_url",
        &required("options.public_url", &raw.public_url)?,
    )?;
    Ok(OidcConfig {
        issuer,
        client_id,
        client_secret: raw.oidc_client_secret.clone(),
        redirect_uri: format!(
            "{}/options/callback",
            public_url.to_string().trim_end_matches('/')
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(raw: &RawOptions, simulator: bool) -> Result<OptionsConfig, ConfigError> {
        options(
            raw,
            simulator,
            "127.0.0.1:9901".parse().unwrap_or_else(|_| panic!()),
            Path::new("/data"),
            &|p: &Path| Path::new("/etc").join(p),
        )
    }

    #[test]
    fn sign_in_defaults_to_development_only_with_the_simulator() {
        let raw = RawOptions::default();
        assert!(matches!(
            resolve(&raw, true).map(|c| c.sign_in),
            Ok(SignIn::Development)
        ));
        assert!(matches!(
            resolve(&raw, false).map(|c| c.sign_in),
            Ok(SignIn::Off)
        ));
        assert_eq!(
            resolve(&raw, false).map(|c| c.store).ok(),
            Some(PathBuf::from("/data/options.redb"))
        );
    }

    #[test]
    fn oidc_names_each_missing_key_and_a_wrong_method_is_refused() {
        let raw = RawOptions {
            sign_in: Some("oidc".into()),
            ..RawOptions::default()
        };
        let key = |r: &RawOptions| {
            resolve(r, false)
                .err()
                .and_then(|e| e.key().map(str::to_owned))
        };
        assert_eq!(key(&raw).as_deref(), Some("options.oidc_issuer"));
        let raw = RawOptions {
            oidc_issuer: Some("https://login.example/tenant/v2.0".into()),
            ..raw
        };
        assert_eq!(key(&raw).as_deref(), Some("options.oidc_client_id"));
        let raw = RawOptions {
            oidc_client_id: Some("app".into()),
            ..raw
        };
        assert_eq!(key(&raw).as_deref(), Some("options.public_url"));
        let raw = RawOptions {
            public_url: Some("https://gw.example:9090/".into()),
            ..raw
        };
        match resolve(&raw, false).map(|c| c.sign_in) {
            Ok(SignIn::Oidc(o)) => {
                assert_eq!(o.redirect_uri, "https://gw.example:9090/options/callback")
            }
            other => panic!("{other:?}"),
        }
        let wrong = RawOptions {
            sign_in: Some("password".into()),
            ..RawOptions::default()
        };
        assert_eq!(key(&wrong).as_deref(), Some("options.sign_in"));
        let exposed = options(
            &RawOptions {
                sign_in: Some("development".into()),
                ..RawOptions::default()
            },
            false,
            "0.0.0.0:9901".parse().unwrap_or_else(|_| panic!()),
            Path::new("/data"),
            &|p: &Path| p.to_path_buf(),
        );
        assert_eq!(
            exposed
                .err()
                .and_then(|e| e.key().map(str::to_owned))
                .as_deref(),
            Some("options.sign_in"),
            "no password-less sign-in off loopback"
        );
    }
}
