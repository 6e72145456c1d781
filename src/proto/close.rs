//! Every reason ignis-ws closes a connection, mapped to its close code and
//! reason in one place (RFC 6455 §7.4 codes and the Ignis 4xxx codes).

use super::frame::FrameError;

/// Normal closure (RFC 6455).
pub const NORMAL: u16 = 1000;
/// Server going away: sent to every client on shutdown.
/// Ignis: `socket.close(1001, 'Server shutting down')`.
pub const GOING_AWAY: u16 = 1001;
/// Protocol error (RFC 6455).
pub const PROTOCOL_ERROR: u16 = 1002;
/// Invalid frame payload data, e.g. invalid UTF-8 in a text message.
pub const INVALID_PAYLOAD: u16 = 1007;
/// Policy violation: used when a client exceeds its outbound budget.
pub const POLICY_VIOLATION: u16 = 1008;
/// Message too big (over `--max-payload`).
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// Ignis: no `authenticate` in time (or the authenticator took too long).
pub const AUTH_TIMEOUT: u16 = 4001;
/// Ignis: authenticated client idle longer than the heartbeat timeout.
pub const HEARTBEAT_TIMEOUT: u16 = 4002;
/// Ignis: the authenticator refused or failed.
pub const AUTH_FAILED: u16 = 4003;
/// Ignis: encryption required but no (valid) handshake.
pub const ENCRYPTION_REQUIRED: u16 = 4004;

/// Whether an operator may disconnect a client with `code`: 1008 (policy
/// violation, the default) or an application code 4000–4999.
pub fn is_disconnect_code(code: u16) -> bool {
    code == POLICY_VIOLATION || (4000..=4999).contains(&code)
}

/// Why a connection is being closed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer broke RFC 6455.
    Frame(FrameError),
    /// `authenticate` did not arrive, or did not finish, in time.
    AuthTimeout,
    /// The authenticator refused the credentials or failed.
    AuthFailed,
    /// No data frame from an authenticated client for `heartbeat_timeout`.
    HeartbeatTimeout,
    /// The client's outbound queue passed `backpressure_limit`.
    SlowClient,
    /// No frame at all (not even a pong) for `idle_timeout`.
    IdleTimeout,
    /// The server is shutting down.
    Shutdown,
    /// The client sent more messages per second than allowed.
    RateLimited,
    /// Encryption is required (or was asked for) and the handshake failed.
    EncryptionRequired,
    /// The user already holds `--max-sessions-per-user` sessions.
    TooManySessions,
    /// An operator disconnected it (`Handle::disconnect`,
    /// `POST /api/disconnect`), with this code (1008 or 4000–4999).
    Disconnected(u16),
}

impl CloseReason {
    /// The close code and reason text sent in the close frame.
    pub fn wire(&self) -> (u16, &'static str) {
        match self {
            CloseReason::Frame(e) => frame_error_wire(e),
            CloseReason::AuthTimeout => (AUTH_TIMEOUT, "Authentication timeout"),
            CloseReason::AuthFailed => (AUTH_FAILED, "Authentication failed"),
            CloseReason::HeartbeatTimeout => (HEARTBEAT_TIMEOUT, "Heartbeat timeout"),
            CloseReason::SlowClient => (POLICY_VIOLATION, "Backpressure limit exceeded"),
            CloseReason::IdleTimeout => (NORMAL, "Idle timeout"),
            CloseReason::Shutdown => (GOING_AWAY, "Server shutting down"),
            CloseReason::RateLimited => (POLICY_VIOLATION, "Message rate limit exceeded"),
            CloseReason::EncryptionRequired => (ENCRYPTION_REQUIRED, "Encryption required"),
            CloseReason::TooManySessions => (POLICY_VIOLATION, "Too many sessions"),
            CloseReason::Disconnected(code) => (*code, "Disconnected by the server"),
        }
    }

    /// The close code alone.
    pub fn code(&self) -> u16 {
        self.wire().0
    }
}

/// RFC 6455 §7.4.1: protocol errors are 1002, bad UTF-8 is 1007, an
/// oversized message is 1009.
fn frame_error_wire(e: &FrameError) -> (u16, &'static str) {
    let code = e.close_code();
    let reason = match code {
        INVALID_PAYLOAD => "Invalid UTF-8",
        MESSAGE_TOO_BIG => "Message too big",
        _ => "Protocol error",
    };
    (code, reason)
}

/// Close codes that get their own series in `/metrics`.
pub const METRIC_CODES: [u16; 10] = [
    NORMAL,
    GOING_AWAY,
    PROTOCOL_ERROR,
    INVALID_PAYLOAD,
    POLICY_VIOLATION,
    MESSAGE_TOO_BIG,
    AUTH_TIMEOUT,
    HEARTBEAT_TIMEOUT,
    AUTH_FAILED,
    ENCRYPTION_REQUIRED,
];

/// Index of `code` in [`METRIC_CODES`], or the "other" slot.
pub fn metric_slot(code: u16) -> usize {
    METRIC_CODES
        .iter()
        .position(|c| *c == code)
        .unwrap_or(METRIC_CODES.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_errors_map_to_rfc_codes() {
        assert_eq!(CloseReason::Frame(FrameError::InvalidUtf8).code(), 1007);
        assert_eq!(
            CloseReason::Frame(FrameError::MessageTooBig { limit: 1 }).code(),
            1009
        );
        assert_eq!(
            CloseReason::Frame(FrameError::UnmaskedFrameFromClient).code(),
            1002
        );
        assert_eq!(CloseReason::Frame(FrameError::ReservedBitsSet).code(), 1002);
    }

    #[test]
    fn ignis_codes_and_reasons() {
        assert_eq!(
            CloseReason::AuthTimeout.wire(),
            (4001, "Authentication timeout")
        );
        assert_eq!(
            CloseReason::AuthFailed.wire(),
            (4003, "Authentication failed")
        );
        assert_eq!(
            CloseReason::HeartbeatTimeout.wire(),
            (4002, "Heartbeat timeout")
        );
        assert_eq!(CloseReason::Shutdown.wire(), (1001, "Server shutting down"));
    }

    #[test]
    fn metric_slots() {
        assert_eq!(metric_slot(1000), 0);
        assert_eq!(metric_slot(4004), 9);
        assert_eq!(metric_slot(3000), METRIC_CODES.len());
    }
}
