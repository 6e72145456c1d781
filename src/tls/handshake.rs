//! A TLS handshake, sans-io: bytes from the peer in ([`Handshake::feed`]),
//! bytes to send out ([`Handshake::step`]), then [`Handshake::finish`]
//! gives the [`Session`] that carries the connection from there.

use std::cell::RefCell;
use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError};

use super::record::{Secret, Session, TlsError, Traffic};

thread_local! {
    /// The traffic secrets of the handshake being stepped on this thread
    /// (see [`CaptureTrafficSecrets`]).
    static CAPTURE: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// TLS 1.3 application traffic secrets, client's and server's.
#[derive(Default)]
struct Captured {
    client: Option<Secret<48>>,
    server: Option<Secret<48>>,
}

/// rustls's `KeyLog` hook, used only to hand a TLS 1.3 connection's
/// application traffic secrets to its own record layer, which derives the
/// keys of a key update from them (rustls's kTLS interface gives the keys
/// but not these). rustls calls it inside `process_tls_records`, on the
/// thread that steps the handshake, which sets [`CAPTURE`] around the
/// call; nothing is written anywhere.
#[derive(Debug)]
pub(super) struct CaptureTrafficSecrets;

impl rustls::KeyLog for CaptureTrafficSecrets {
    fn will_log(&self, label: &str) -> bool {
        matches!(label, "CLIENT_TRAFFIC_SECRET_0" | "SERVER_TRAFFIC_SECRET_0")
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        CAPTURE.with(|c| {
            if let Some(c) = c.borrow_mut().as_mut() {
                let s = Secret::new(secret).ok();
                match label {
                    "CLIENT_TRAFFIC_SECRET_0" => c.client = s,
                    "SERVER_TRAFFIC_SECRET_0" => c.server = s,
                    _ => {}
                }
            }
        });
    }
}

/// Most handshake bytes buffered from the peer: a ClientHello is at most a
/// few KB (post-quantum key shares included); a peer sending more without
/// the handshake moving on is refused.
pub const MAX_HANDSHAKE_INPUT: usize = 64 * 1024;

/// One TLS handshake in progress.
pub struct Handshake {
    conn: UnbufferedServerConnection,
    incoming: Vec<u8>,
    /// Application data that arrived with the client's last flight.
    plain: Vec<u8>,
    captured: Captured,
}

/// What the handshake needs next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send what [`Handshake::step`] appended, then feed more input.
    NeedInput,
    /// Send what was appended; the handshake is complete: [`Handshake::finish`].
    Done,
}

/// What `process_tls_records` asked for, with the borrow released.
enum Action {
    Continue,
    NeedInput,
    Traffic,
}

impl Handshake {
    pub fn new(config: Arc<rustls::ServerConfig>) -> Result<Handshake, TlsError> {
        Ok(Handshake {
            conn: UnbufferedServerConnection::new(config).map_err(TlsError::Handshake)?,
            incoming: Vec::new(),
            plain: Vec::new(),
            captured: Captured::default(),
        })
    }

    /// Bytes from the peer.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), TlsError> {
        if self.incoming.len() + data.len() > MAX_HANDSHAKE_INPUT {
            return Err(TlsError::TooLarge);
        }
        self.incoming.extend_from_slice(data);
        Ok(())
    }

    /// Run the handshake on what was fed; what to send is appended to
    /// `out`.
    pub fn step(&mut self, out: &mut Vec<u8>) -> Result<Step, TlsError> {
        CAPTURE.with(|c| *c.borrow_mut() = Some(std::mem::take(&mut self.captured)));
        let r = self.step_inner(out);
        if let Some(got) = CAPTURE.with(|c| c.borrow_mut().take()) {
            self.captured = got;
        }
        r
    }

    fn step_inner(&mut self, out: &mut Vec<u8>) -> Result<Step, TlsError> {
        loop {
            let status = self.conn.process_tls_records(&mut self.incoming);
            let mut discard = status.discard;
            let action = match status.state.map_err(TlsError::Handshake)? {
                ConnectionState::EncodeTlsData(mut s) => {
                    let at = out.len();
                    out.resize(at + 4096, 0);
                    let n = match s.encode(&mut out[at..]) {
                        Ok(n) => n,
                        Err(EncodeError::InsufficientSize(e)) => {
                            out.resize(at + e.required_size, 0);
                            s.encode(&mut out[at..])
                                .map_err(|e| TlsError::Internal(e.to_string()))?
                        }
                        Err(e) => return Err(TlsError::Internal(e.to_string())),
                    };
                    out.truncate(at + n);
                    Action::Continue
                }
                // Sent by the caller, in order, with the rest of `out`.
                ConnectionState::TransmitTlsData(s) => {
                    s.done();
                    Action::Continue
                }
                ConnectionState::BlockedHandshake => Action::NeedInput,
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        let rec = rec.map_err(TlsError::Handshake)?;
                        discard += rec.discard;
                        self.plain.extend_from_slice(rec.payload);
                    }
                    Action::Continue
                }
                ConnectionState::WriteTraffic(_) => Action::Traffic,
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    return Err(TlsError::Closed);
                }
                _ => return Err(TlsError::Unexpected("early data")),
            };
            self.incoming.drain(..discard.min(self.incoming.len()));
            match action {
                Action::Continue => {}
                Action::NeedInput => return Ok(Step::NeedInput),
                // The server may send before the client's Finished arrived
                // (TLS 1.3); done only once that is in.
                Action::Traffic if self.conn.is_handshaking() => return Ok(Step::NeedInput),
                Action::Traffic => return Ok(Step::Done),
            }
        }
    }

    /// The established connection, and the application data that came
    /// with the handshake (already decrypted).
    pub fn finish(self) -> Result<(Session, Vec<u8>), TlsError> {
        let version = self
            .conn
            .protocol_version()
            .ok_or(TlsError::Unexpected("no protocol version"))?;
        let suite = self
            .conn
            .negotiated_cipher_suite()
            .ok_or(TlsError::Unexpected("no cipher suite"))?;
        let traffic = match (suite.tls13(), self.captured.client, self.captured.server) {
            (Some(s13), Some(client), Some(server)) => {
                let hash = match s13.common.hash_provider.algorithm() {
                    rustls::crypto::hash::HashAlgorithm::SHA384 => aws_lc_rs::hkdf::HKDF_SHA384,
                    _ => aws_lc_rs::hkdf::HKDF_SHA256,
                };
                Some((
                    Traffic {
                        secret: client,
                        hash,
                    },
                    Traffic {
                        secret: server,
                        hash,
                    },
                ))
            }
            _ => None,
        };
        // Only the secrets are kept: no rustls state stays with the
        // connection.
        let (secrets, _) = self
            .conn
            .dangerous_into_kernel_connection()
            .map_err(TlsError::Handshake)?;
        let mut session = Session::new(secrets, version, suite.suite(), traffic)?;
        let mut plain = self.plain;
        if !self.incoming.is_empty() {
            let opened = session.open(&self.incoming, &mut plain)?;
            if opened.peer_closed {
                return Err(TlsError::Closed);
            }
        }
        Ok((session, plain))
    }
}
