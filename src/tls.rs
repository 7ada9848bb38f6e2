//! TLS material: the process-wide crypto provider, server configurations for the client-facing
//! listener (and the simulators), the upstream client configuration, and development
//! certificates (a CA plus a leaf it signs — rustls refuses a CA certificate as the leaf).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Where a listener's TLS material comes from; shared by the configuration and the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerTls {
    /// Plain HTTP.
    Off,
    /// Certificate and key files given by the operator.
    Files { cert: PathBuf, key: PathBuf },
    /// Development certificates in this folder, created on first start.
    Development { dir: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {source}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no {what}")]
    Empty { what: &'static str, path: PathBuf },
    #[error("certificate and key do not form a usable TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot create development certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Installs aws-lc-rs as the process's rustls provider. Idempotent; call before any TLS use.
/// Two providers compiled into one binary make rustls panic unless one is installed explicitly.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a PEM certificate chain.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem {
            what: "certificates",
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what: "certificate",
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        what: "a private key",
        path: path.to_path_buf(),
        source,
    })
}

/// A server configuration: TLS 1.3 and 1.2 only, the given ALPN list, no 0-RTT (replayable),
/// stateless session tickets for cheap resumption.
pub fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[Vec<u8>],
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(cert)?;
    let key = read_key(key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.to_vec();
    config.max_early_data_size = 0;
    if let Ok(ticketer) = rustls::crypto::aws_lc_rs::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Ok(Arc::new(config))
}

/// The client configuration for upstream TLS: system roots plus an optional extra CA bundle,
/// offering no ALPN, so the upstream speaks HTTP/1.1 (Windows auth does not work over HTTP/2
/// towards IIS), pooled and pinned connections alike.
pub fn upstream_client_config(ca_bundle: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    // A host without system roots still works with an explicit bundle.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(bundle) = ca_bundle {
        for cert in read_certs(bundle)? {
            roots.add(cert)?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Paths of a development certificate set.
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// The CA certificate clients should trust.
    pub ca: PathBuf,
    /// The leaf certificate chain (leaf, then CA).
    pub cert: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
}

impl DevCerts {
    pub fn in_dir(dir: &Path) -> DevCerts {
        DevCerts {
            ca: dir.join("dev-ca.pem"),
            cert: dir.join("dev-server.pem"),
            key: dir.join("dev-server.key"),
        }
    }

    fn exist(&self) -> bool {
        self.ca.is_file() && self.cert.is_file() && self.key.is_file()
    }
}

/// Returns the development certificates in `dir`, creating them on first use.
pub fn ensure_dev_certs(dir: &Path) -> Result<DevCerts, TlsError> {
    let paths = DevCerts::in_dir(dir);
    if paths.exist() {
        return Ok(paths);
    }
    generate_dev_certs(dir)
}

/// Writes a fresh development CA and a leaf for `localhost`, `127.0.0.1` and `::1` into `dir`.
/// ECDSA P-256, so benchmarks compare like with like.
pub fn generate_dev_certs(dir: &Path) -> Result<DevCerts, TlsError> {
    let paths = DevCerts::in_dir(dir);
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Write { path, source }
    };
    fs::create_dir_all(dir).map_err(write_err(dir))?;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "trackgate development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "trackgate development server");
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    let leaf = leaf_params.signed_by(&leaf_key, &ca)?;

    fs::write(&paths.ca, ca.pem()).map_err(write_err(&paths.ca))?;
    fs::write(&paths.cert, format!("{}{}", leaf.pem(), ca.pem()))
        .map_err(write_err(&paths.cert))?;
    write_private(&paths.key, &leaf_key.serialize_pem()).map_err(write_err(&paths.key))?;
    Ok(paths)
}

/// Writes a key file readable by its owner only.
fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certs_make_a_working_server_config_and_are_reused() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_dev_certs(dir.path()).unwrap();
        let before = fs::read(&first.cert).unwrap();
        let again = ensure_dev_certs(dir.path()).unwrap();
        assert_eq!(before, fs::read(&again.cert).unwrap());
        server_config(&first.cert, &first.key, &[b"h2".to_vec()]).unwrap();
        assert_eq!(read_certs(&first.cert).unwrap().len(), 2, "leaf plus CA");
        let mode = fs::metadata(&first.key).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn missing_key_file_is_a_clear_error() {
        let e = read_key(Path::new("/nonexistent/key.pem")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/key.pem"));
    }
}
