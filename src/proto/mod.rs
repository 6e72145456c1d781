//! Sans-io protocol code: no sockets, no clock, no threads.
//!
//! Time is passed in (`now: Instant`) and output goes into caller-owned
//! buffers, so everything here is testable in memory and fuzzable in one line.

pub mod close;
pub mod encryption;
pub mod frame;
pub mod handshake;
pub mod message;
pub mod session;
pub mod stamp;
