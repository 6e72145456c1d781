//! TLS for the integration tests: a test CA and a server certificate made
//! by the test (rcgen), and real rustls clients (wss:// through
//! tokio-tungstenite, raw HTTPS through tokio-rustls).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{Client, WAIT};

/// A test CA and a certificate for `localhost` and 127.0.0.1 signed by it,
/// as files: `ca.pem`, `cert.pem` (leaf then CA), `key.pem`.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_der = write_pki(dir.path());
        Pki { dir, ca_der }
    }
    /// A new CA and certificate written over the files.
    pub fn renew(&mut self) {
        self.ca_der = write_pki(self.dir.path());
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    /// `cfg` with TLS from these files.
    pub fn serve(&self, mut cfg: ignis_ws::Config) -> ignis_ws::Config {
        cfg.tls_cert = Some(self.cert());
        cfg.tls_key = Some(self.key());
        cfg
    }
}

fn write_pki(dir: &Path) -> Vec<u8> {
    super::pki::write_pki(dir, "localhost")
}

/// TLS 1.3 or 1.2 only.
#[derive(Clone, Copy, Debug)]
pub enum Version {
    V13,
    V12,
}

/// A rustls client trusting only `ca_der`, offering ALPN http/1.1.
pub fn client_config(ca_der: &[u8], v: Version) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der.to_vec().into()).unwrap();
    let version = match v {
        Version::V13 => &rustls::version::TLS13,
        Version::V12 => &rustls::version::TLS12,
    };
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// A TLS connection to `addr` as `localhost`; the handshake's error if it
/// fails.
pub async fn tls_connect(
    addr: SocketAddr,
    ca_der: &[u8],
    v: Version,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(client_config(ca_der, v));
    tokio::time::timeout(
        WAIT,
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("TLS handshake in time")
}

/// A wss:// client (tokio-tungstenite over rustls).
pub async fn wss(addr: SocketAddr, ca_der: &[u8], v: Version) -> Client {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async_tls_with_config(
            url,
            tcp,
            None,
            Some(tokio_tungstenite::Connector::Rustls(client_config(
                ca_der, v,
            ))),
        ),
    )
    .await
    .expect("wss connect in time")
    .expect("wss connect");
    Client { ws }
}

/// One HTTPS request (`GET path` or `raw` as given); the whole answer.
pub async fn https(addr: SocketAddr, ca_der: &[u8], request: &str) -> (String, String) {
    let mut s = tls_connect(addr, ca_der, Version::V13).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut all))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&all).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_string(), body.to_string())
}

/// `GET path` over HTTPS.
pub async fn https_get(addr: SocketAddr, ca_der: &[u8], path: &str) -> (String, String) {
    https(
        addr,
        ca_der,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    )
    .await
}
