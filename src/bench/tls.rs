//! Owns `wss://` for the load generator: the rustls client configuration
//! (aws-lc-rs, the CA of `--ca-file` as the only trust anchor, optionally
//! TLS 1.2 only) and [`Stream`], a connection that is either plain TCP or
//! TLS over TCP.
//!
//! The handshake and the connection's setup run on tokio-rustls
//! ([`super::conn::open`]); then the TLS stream is taken apart into its
//! `TcpStream` and rustls `ClientConnection`, and the worker's hot path
//! drives rustls's sync API over the non-blocking socket itself: one `recv`
//! of up to 64 KiB into the worker's shared ciphertext buffer, fed to rustls
//! record by record, the plaintext appended to the worker's shared read
//! buffer. A `ws://` connection is `Stream::Plain` and pays one enum match
//! per read, nothing else.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// One `recv` of ciphertext takes at most this much.
const CIPHER_BUF: usize = 64 * 1024;

/// What the command line says about TLS (carried to worker processes as
/// flags; each process builds its own [`TlsClient`] from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file with the CA certificate(s) that signed the server's.
    pub ca_file: PathBuf,
    /// Name checked against the server certificate (DNS name or IP).
    pub server_name: String,
    /// Offer TLS 1.2 only (default: TLS 1.3 and 1.2).
    pub tls12_only: bool,
}

impl TlsOptions {
    /// The protocol versions offered, for the report.
    pub fn versions_label(&self) -> &'static str {
        if self.tls12_only {
            "TLS 1.2"
        } else {
            "TLS 1.3 or 1.2"
        }
    }
}

/// A ready client configuration.
#[derive(Debug, Clone)]
pub struct TlsClient {
    pub opts: TlsOptions,
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl TlsClient {
    /// Loads the CA file and builds the configuration; the error says which
    /// flag is wrong and why.
    pub fn new(opts: &TlsOptions) -> Result<TlsClient, String> {
        let roots = load_roots(&opts.ca_file)?;
        let name = ServerName::try_from(opts.server_name.clone()).map_err(|_| {
            format!(
                "--tls-server-name {:?} is neither a DNS name nor an IP address",
                opts.server_name
            )
        })?;
        let versions: &[&rustls::SupportedProtocolVersion] = if opts.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let config = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(TlsClient {
            opts: opts.clone(),
            config: Arc::new(config),
            name,
        })
    }
}

/// The trust anchors of a PEM file: every CERTIFICATE in it, at least one.
fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("--ca-file {shown}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0usize;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("--ca-file {shown}: bad PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("--ca-file {shown}: not a usable CA certificate: {e}"))?;
        found += 1;
    }
    if found == 0 {
        return Err(format!(
            "--ca-file {shown}: no CERTIFICATE in it (expected the PEM of the CA that signed the server's certificate)"
        ));
    }
    Ok(roots)
}

/// One benchmark connection's byte stream.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsConn>),
}

/// TLS over a non-blocking socket, driven with rustls's sync API. The
/// `RefCell` is borrowed only inside one synchronous call (single thread).
#[derive(Debug)]
pub struct TlsConn {
    tcp: TcpStream,
    tls: RefCell<rustls::ClientConnection>,
}

/// What one read brought.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes were appended to the read buffer.
    Data(usize),
    /// Nothing to read (a spurious wakeup, or only TLS records that carry
    /// no application data, or an incomplete record).
    Nothing,
    /// The peer closed the connection.
    Eof,
}

/// `io::Write` over `TcpStream::try_write` (WouldBlock when the socket
/// buffer is full).
struct TryWriter<'a>(&'a TcpStream);

impl Write for TryWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One `recv` into `buf` (cleared first, at most its spare capacity). A
/// short read means the socket is drained: the readiness is cleared at once
/// instead of by a second `recv` that only says EAGAIN.
fn recv_once(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<ReadOutcome> {
    let spare = buf.capacity() - buf.len();
    let mut got = 0usize;
    let read = tcp.try_io(Interest::READABLE, || {
        let n = tcp.try_read_buf(buf)?;
        got = n;
        if n > 0 && n < spare {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match read {
        Ok(0) => Ok(ReadOutcome::Eof),
        Ok(n) => Ok(ReadOutcome::Data(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(if got == 0 {
            ReadOutcome::Nothing
        } else {
            ReadOutcome::Data(got)
        }),
        Err(e) => Err(e),
    }
}

/// Moves every decrypted byte rustls holds to the end of `out`.
fn drain_plaintext(
    tls: &mut rustls::ClientConnection,
    st: &rustls::IoState,
    out: &mut BytesMut,
) -> io::Result<usize> {
    let n = st.plaintext_bytes_to_read();
    if n > 0 {
        let at = out.len();
        out.resize(at + n, 0);
        tls.reader().read_exact(&mut out[at..])?;
    }
    Ok(n)
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

impl Stream {
    /// A TLS stream after its handshake (and the WebSocket setup) on
    /// tokio-rustls; plaintext rustls already decrypted is appended to
    /// `leftover`.
    pub fn from_tls(
        s: tokio_rustls::client::TlsStream<TcpStream>,
        leftover: &mut BytesMut,
    ) -> io::Result<Stream> {
        let (tcp, mut tls) = s.into_inner();
        let st = tls.process_new_packets().map_err(tls_error)?;
        drain_plaintext(&mut tls, &st, leftover)?;
        Ok(Stream::Tls(Box::new(TlsConn {
            tcp,
            tls: RefCell::new(tls),
        })))
    }

    /// Whether this is a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(t) => t,
            Stream::Tls(t) => &t.tcp,
        }
    }

    /// Waits until the socket is readable.
    pub async fn readable(&self) -> io::Result<()> {
        self.tcp().readable().await
    }

    /// One `recv`; the application bytes it brought are appended to
    /// `rbuf`. `cbuf` is scratch space for ciphertext (TLS only), whose
    /// capacity bounds the `recv`.
    pub fn read_available(
        &self,
        rbuf: &mut BytesMut,
        cbuf: &mut BytesMut,
    ) -> io::Result<ReadOutcome> {
        match self {
            Stream::Plain(tcp) => recv_once(tcp, rbuf),
            Stream::Tls(t) => t.read_available(rbuf, cbuf),
        }
    }

    /// Writes `buf` without waiting. Plain: one `send` (may be short).
    /// TLS: encrypts all of it and sends what the socket takes; records the
    /// socket did not take stay queued in rustls and leave with the next
    /// write (client→server traffic is a few bytes a second).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.try_write(buf),
            Stream::Tls(t) => {
                let mut tls = t.tls.borrow_mut();
                tls.writer().write_all(buf)?;
                t.flush(&mut tls)?;
                Ok(buf.len())
            }
        }
    }
}

impl TlsConn {
    fn read_available(&self, rbuf: &mut BytesMut, cbuf: &mut BytesMut) -> io::Result<ReadOutcome> {
        cbuf.clear();
        // Allocated on the first TLS read, then reclaimed (never regrown).
        cbuf.reserve(CIPHER_BUF);
        let n = match recv_once(&self.tcp, cbuf)? {
            ReadOutcome::Data(n) => n,
            other => return Ok(other),
        };
        let mut tls = self.tls.borrow_mut();
        let mut input = &cbuf[..n];
        let mut got = 0usize;
        while !input.is_empty() {
            // Takes at most what fits rustls's buffers; loop for the rest.
            if tls.read_tls(&mut input)? == 0 {
                // Nothing taken (cannot happen with drained plaintext);
                // never spin on it.
                break;
            }
            let st = tls.process_new_packets().map_err(tls_error)?;
            got += drain_plaintext(&mut tls, &st, rbuf)?;
        }
        // Alerts or key-update answers, if any.
        if tls.wants_write() {
            self.flush(&mut tls)?;
        }
        Ok(if got > 0 {
            ReadOutcome::Data(got)
        } else {
            ReadOutcome::Nothing
        })
    }

    /// Sends queued TLS records until done or the socket is full.
    fn flush(&self, tls: &mut rustls::ClientConnection) -> io::Result<()> {
        while tls.wants_write() {
            match tls.write_tls(&mut TryWriter(&self.tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A self-signed CA certificate (its key was thrown away) for tests that
/// need a loadable `--ca-file`.
#[cfg(test)]
pub(crate) const TEST_CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----
MIIBojCCAUmgAwIBAgIUTRLrJA+kMsF33RqqDeJiMJj0zOAwCgYIKoZIzj0EAwIw
JjEkMCIGA1UEAwwbaWduaXMtd3MgYmVuY2ggdW5pdC10ZXN0IENBMCAXDTI2MTIw
NzAxMzQ1OVoYDzIxMjYxMTEzMDEzNDU5WjAmMSQwIgYDVQQDDBtpZ25pcy13cyBi
ZW5jaCB1bml0LXRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASBjKa1
HnPqzHFEVdAa5dO9IoZ2QI1cdqIOxsn8Bs8/TtfVZE6+5MbSk2s0TBAq3nfMxvMR
KLm4INs6Hc18c2nno1MwUTAdBgNVHQ4EFgQU5hlJti5b3m8BuAxLzjap4M/yyckw
HwYDVR0jBBgwFoAU5hlJti5b3m8BuAxLzjap4M/yyckwDwYDVR0TAQH/BAUwAwEB
/zAKBggqhkjOPQQDAgNHADBEAiBGpf1SIoLZPbjzZPv7S9afnT+8d94LR9oG3YIa
X2PnSQIgbQD76rCjkQE4+FX7l9hL7psWopHfgWs0YpB5H01Fdx0=
-----END CERTIFICATE-----
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_name_the_flag() {
        let dir = std::env::temp_dir().join(format!("ignis-bench-tls-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let opts = |f: &Path| TlsOptions {
            ca_file: f.to_owned(),
            server_name: "127.0.0.1".into(),
            tls12_only: false,
        };
        let e = TlsClient::new(&opts(&dir.join("missing.pem"))).unwrap_err();
        assert!(e.starts_with("--ca-file"), "{e}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a pem\n").unwrap();
        let e = TlsClient::new(&opts(&empty)).unwrap_err();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        let ok = dir.join("ca.pem");
        std::fs::write(&ok, TEST_CA_PEM).unwrap();
        let c = TlsClient::new(&opts(&ok)).unwrap();
        assert_eq!(c.name, ServerName::try_from("127.0.0.1").unwrap());
        let mut bad_name = opts(&ok);
        bad_name.server_name = "not a name!".into();
        assert!(
            TlsClient::new(&bad_name)
                .unwrap_err()
                .contains("--tls-server-name")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
