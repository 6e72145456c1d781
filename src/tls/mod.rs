//! TLS termination (`--tls-cert` / `--tls-key`).
//!
//! rustls does the handshake and the key schedule ([`handshake`], with
//! rustls's unbuffered API); once the handshake is done the connection is
//! turned into a rustls *kernel connection* (the kTLS interface: secrets
//! out, rustls kept only for key updates) and the record layer is ours
//! ([`record`]), so that:
//! - a frame shared by every recipient is encrypted once per connection at
//!   flush, straight from the shared buffers into one output buffer, many
//!   frames per record;
//! - an idle connection holds no buffer and no expanded AEAD key (they are
//!   rebuilt from the raw traffic secret on its next record), only the
//!   secrets and sequence numbers.
//!
//! [`certs`] loads the certificate chain and key and swaps them on reload
//! (SIGHUP): new handshakes get the new certificate, established
//! connections keep theirs.

pub mod certs;
pub mod handshake;
pub mod record;

pub use certs::{CertError, Tls};
pub use handshake::Handshake;
pub use record::{Opened, Session, TlsError};

#[cfg(test)]
mod tests;
