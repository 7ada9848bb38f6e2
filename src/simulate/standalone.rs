//! `trackgate simulate …`: a simulator on its own port until Ctrl-C, for load tests and for
//! trying real clients against it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use super::mailbox::{SeedError, Store, StoreLimits};
use super::{
    AuthMode, DataverseOptions, DataverseSimulator, ExchangeSimulator, FixtureSet, SimulatorOptions,
};
use crate::directory::FileSource;

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error(transparent)]
    Directory(#[from] crate::directory::DirectoryError),
    #[error("--auth: expected none, bearer, ntlm or basic:USER:PASSWORD")]
    Auth,
    #[error(transparent)]
    Fixtures(#[from] super::fixtures::FixtureError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Seed(#[from] SeedError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The Dataverse simulator's options: seeded from a directory file (TOML, or JSON by its
/// extension) or the embedded example, and requiring client credentials when given.
pub fn dataverse_options(
    directory: Option<&Path>,
    credentials: Option<(String, String)>,
) -> Result<DataverseOptions, StandaloneError> {
    let source = FileSource {
        path: directory.map(Path::to_path_buf),
        ..FileSource::embedded()
    };
    Ok(DataverseOptions {
        credentials,
        seed: Some(source.read_document()?),
        ..DataverseOptions::default()
    })
}

/// The Exchange simulator's options: its auth mode, fixtures and (optionally) TLS with
/// development certificates kept in `tls_dir`.
pub fn exchange_options(
    auth: &str,
    fixtures: Option<&Path>,
    tls_dir: Option<&Path>,
) -> Result<SimulatorOptions, StandaloneError> {
    let fixtures = match fixtures {
        Some(dir) => FixtureSet::from_dir(dir)?,
        None => FixtureSet::embedded()?,
    };
    let mut options = SimulatorOptions::new("standalone", fixtures);
    options.auth = parse_auth(auth)?;
    if let Some(dir) = tls_dir {
        crate::tls::install_crypto_provider();
        let certs = crate::tls::ensure_dev_certs(dir)?;
        options.tls = Some(crate::tls::server_config(
            &certs.cert,
            &certs.key,
            &[b"h2".to_vec(), b"http/1.1".to_vec()],
        )?);
    }
    Ok(options)
}

/// The mailbox store: seeded from a TOML file of one's own, or the embedded Contoso mailboxes.
pub fn mailbox_store(seed: Option<&Path>) -> Result<Arc<Store>, StandaloneError> {
    let store = match seed {
        Some(path) => {
            let text = std::fs::read_to_string(path)?;
            Store::from_seed(&text, StoreLimits::default())?
        }
        None => Store::embedded()?,
    };
    Ok(Arc::new(store))
}

/// `none`, `bearer`, `ntlm` or `basic:USER:PASSWORD`.
pub fn parse_auth(text: &str) -> Result<AuthMode, StandaloneError> {
    Ok(match text {
        "none" => AuthMode::None,
        "bearer" => AuthMode::Bearer,
        "ntlm" => AuthMode::Ntlm,
        other => match other.strip_prefix("basic:").and_then(|r| r.split_once(':')) {
            Some((user, password)) => AuthMode::Basic {
                user: user.into(),
                password: password.into(),
            },
            None => return Err(StandaloneError::Auth),
        },
    })
}

/// Runs the Dataverse simulator until Ctrl-C; its first line of output is stable for scripts.
pub async fn dataverse(
    listen: SocketAddr,
    options: DataverseOptions,
) -> Result<(), StandaloneError> {
    let sim = DataverseSimulator::start(listen, options).await?;
    println!(
        "dataverse simulator ready url={} token_url={}",
        sim.url(),
        sim.token_url()
    );
    tokio::signal::ctrl_c().await?;
    sim.stop().await;
    Ok(())
}

/// Runs the Exchange simulator until Ctrl-C; its first line of output is stable for scripts.
pub async fn exchange(
    listen: SocketAddr,
    options: SimulatorOptions,
) -> Result<(), StandaloneError> {
    let sim = ExchangeSimulator::start(listen, options).await?;
    println!("simulator ready url={}", sim.url());
    tokio::signal::ctrl_c().await?;
    sim.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_modes_parse_and_mistakes_are_named() {
        assert!(matches!(parse_auth("ntlm"), Ok(AuthMode::Ntlm)));
        assert!(matches!(
            parse_auth("basic:alex:pw"),
            Ok(AuthMode::Basic { user, password }) if user == "alex" && password == "pw"
        ));
        assert!(matches!(
            parse_auth("basic:alex"),
            Err(StandaloneError::Auth)
        ));
    }
}
