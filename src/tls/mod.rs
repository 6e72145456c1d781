//! TLS termination (`--tls-cert` / `--tls-key`).
//!
//! rustls does the handshake ([`handshake`], with rustls's unbuffered
//! API); once it is done the traffic secrets are taken out (rustls's kTLS
//! interface) and rustls's state is dropped: the record layer is ours
//! ([`record`], TLS 1.3 key updates included), so that:
//! - a frame shared by every recipient is encrypted once per connection at
//!   flush, straight from the shared buffers into one output buffer, many
//!   frames per record;
//! - an idle connection holds no buffer and no expanded AEAD key (they are
//!   rebuilt from the raw key on its next record), only the secrets and
//!   sequence numbers.
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
