//! The top-level error: the only place I/O errors meet configuration and
//! protocol errors.

use std::net::SocketAddr;

use crate::config::ConfigError;

/// Why a server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid (exit status 2 in the binary).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listening socket could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The I/O back end could not be started.
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// Any other I/O failure at start-up.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
