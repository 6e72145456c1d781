//! The server's certificate and key: loaded from PEM files at start,
//! swapped on [`Tls::reload`] without touching established connections.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key could not be used. Names the file and the
/// setting; never contains key material.
#[derive(Debug, thiserror::Error)]
#[error("{key} {message}")]
pub struct CertError {
    /// The setting at fault: `--tls-cert` or `--tls-key`.
    pub key: &'static str,
    pub message: String,
}

impl CertError {
    fn cert(path: &Path, message: impl std::fmt::Display) -> CertError {
        CertError {
            key: "--tls-cert",
            message: format!("{}: {message}", path.display()),
        }
    }
    fn key(path: &Path, message: impl std::fmt::Display) -> CertError {
        CertError {
            key: "--tls-key",
            message: format!("{}: {message}", path.display()),
        }
    }
}

/// TLS for a server: its rustls configuration (TLS 1.2 and 1.3, ALPN
/// `http/1.1`) and the current certificate.
pub struct Tls {
    config: Arc<ServerConfig>,
    current: Arc<Current>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// The certificate handed to every new handshake.
struct Current(RwLock<Arc<CertifiedKey>>);

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Current(..)")
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .map(|k| k.clone())
                .unwrap_or_else(|p| p.into_inner().clone()),
        )
    }
}

impl Tls {
    /// Load `cert` (PEM, the full chain, leaf first) and `key` (PEM,
    /// PKCS#8, PKCS#1 or SEC1), and check that they belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, CertError> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let certified = load_pair(cert, key, &provider)?;
        Tls::with(certified, provider, cert, key)
    }

    /// From PEM in memory (what [`Tls::reload`] reads then are the empty
    /// paths: it fails). For the fuzz target and tests.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Tls, CertError> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let here = Path::new("");
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertError::cert(here, pem_message(&e)))?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| CertError::key(here, pem_message(&e)))?;
        let certified =
            CertifiedKey::from_der(chain, key, &provider).map_err(|e| CertError::key(here, e))?;
        Tls::with(certified, provider, here, here)
    }

    fn with(
        certified: CertifiedKey,
        provider: rustls::crypto::CryptoProvider,
        cert: &Path,
        key: &Path,
    ) -> Result<Tls, CertError> {
        let current = Arc::new(Current(RwLock::new(Arc::new(certified))));
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| CertError::cert(cert, e))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Our record layer takes over after the handshake (kTLS-style).
        config.enable_secret_extraction = true;
        // TLS 1.3 traffic secrets, for key updates in our record layer
        // (kept in memory with the connection, never written).
        config.key_log = Arc::new(super::handshake::CaptureTrafficSecrets);
        // No session tickets: a ticket is a secret the server must rotate
        // and share between nodes to be of use; a full handshake is what
        // every reconnect after a drain costs anyway (measured in
        // PERFORMANCE.md).
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(Tls {
            config: Arc::new(config),
            current,
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
        })
    }

    /// Read the certificate and key files again; new handshakes use them,
    /// established connections are untouched. On error the old pair stays.
    pub fn reload(&self) -> Result<(), CertError> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let certified = load_pair(&self.cert_path, &self.key_path, &provider)?;
        match self.current.0.write() {
            Ok(mut k) => *k = Arc::new(certified),
            Err(p) => *p.into_inner() = Arc::new(certified),
        }
        Ok(())
    }

    /// The rustls configuration new handshakes start from.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The end-entity certificate new handshakes present (DER).
    pub fn current_cert(&self) -> Vec<u8> {
        let k = self
            .current
            .0
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        k.cert.first().map(|c| c.to_vec()).unwrap_or_default()
    }
}

fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, CertError> {
    let cert_err = |message: String| CertError::cert(cert, message);
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(pem_message(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(pem_message(&e)))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block in the file".into()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| CertError::key(key, pem_message(&e)))?;
    CertifiedKey::from_der(chain, key_der, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertError::key(
            key,
            format!("does not belong to the certificate in {}", cert.display()),
        ),
        e => CertError::key(key, format!("unusable key: {e}")),
    })
}

/// A PEM error without any of the file's bytes.
fn pem_message(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::Io(e) => e.to_string(),
        E::NoItemsFound => "no PEM block of the expected kind in the file".into(),
        E::MissingSectionEnd { .. } | E::IllegalSectionStart { .. } => {
            "malformed PEM (a section is not closed)".into()
        }
        E::Base64Decode(_) => "malformed PEM (bad base64)".into(),
        _ => "malformed PEM".into(),
    }
}
