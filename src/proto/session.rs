//! One client's protocol state machine (PROTOCOL.md §3–§4, §8, §10), sans-io.
//!
//! Call order: [`Session::new`] at upgrade; then for every data message
//! [`Session::handle_message`] and act on the returned [`Action`]; when an
//! authenticator finishes, [`Session::handle_auth_result`]; periodically
//! [`Session::poll_timeout`] with the current time. The session never touches
//! a socket or a clock: the shard passes `now` in and carries actions out.

use std::time::{Duration, Instant};

use super::close::CloseReason;
use super::message::{self, ClientMessage, error_text};
use super::stamp::Stamp;
use simd_json::borrowed::Value;

/// Where a client is in its life (the reference's `WebSocketClientStates`,
/// minus `disconnected`, which is simply the session being dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Upgraded, no `authenticate` yet. Receives nothing but direct messages.
    Unauthorized,
    /// `authenticate` received, authenticator running.
    Authenticating,
    /// Authenticated: in the user index, its own room and default rooms.
    Authenticated,
}

impl State {
    /// The reference's name for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unauthorized => "unauthorized",
            State::Authenticating => "authenticating",
            State::Authenticated => "authenticated",
        }
    }
}

/// The timers the session enforces.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Time from upgrade to `authenticate` (Ignis: `AUTH_TIMEOUT`, 5 s).
    /// The authenticator itself gets three times this.
    pub auth: Duration,
    /// Longest silence of an authenticated client (Ignis: `HEARTBEAT_TIMEOUT`, 90 s).
    pub heartbeat: Duration,
}

/// What the shard must do after a client message.
#[derive(Debug)]
pub enum Action<'a> {
    /// Nothing (heartbeat, silently dropped message).
    None,
    /// Send `{"event":"error","data":{"message":…}}`.
    Error(&'static str),
    /// Run the authenticator on this `data`; the session is now
    /// `Authenticating`.
    Authenticate(Value<'a>),
    /// Ask the room validator about these (already filtered) rooms.
    Join(Vec<String>),
    /// Leave these rooms (the shard keeps only rooms the client is in).
    Leave(Vec<String>),
    /// A custom event from an authenticated client, for the message hook.
    Custom {
        event: std::borrow::Cow<'a, str>,
        data: Option<Value<'a>>,
        id: Option<std::borrow::Cow<'a, str>>,
    },
}

/// What the shard must do with an authenticator's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStep {
    /// Index the client, join its rooms, send `connected`.
    Accept,
    /// Send this error, then close with 4003.
    Reject(&'static str),
    /// The session is no longer waiting for this result (it timed out or
    /// already finished): drop it.
    Stale,
}

/// The authenticator's verdict as the session sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Credentials accepted.
    Accepted,
    /// Credentials refused (`null`/`false` in the reference).
    Refused,
    /// The authenticator failed (threw in the reference).
    Failed,
}

/// One client's protocol state.
#[derive(Debug, Clone)]
pub struct Session {
    state: State,
    /// Last data frame of any kind (even invalid JSON); WebSocket pings and
    /// pongs do not count (PROTOCOL.md §10). The clock starts at connect.
    last_activity: Stamp,
    /// Auth deadline while `Unauthorized`/`Authenticating`.
    deadline: Option<Stamp>,
}

impl Session {
    /// A freshly upgraded client: `Unauthorized`, auth timer running.
    pub fn new(now: Instant, t: &Timeouts) -> Self {
        let now = Stamp::at(now);
        Session {
            state: State::Unauthorized,
            last_activity: now,
            deadline: Some(now.after(t.auth)),
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When the current auth timer fires, if one runs.
    pub fn deadline(&self) -> Option<Stamp> {
        self.deadline
    }

    /// Last data message time.
    pub fn last_activity(&self) -> Stamp {
        self.last_activity
    }

    /// Rule 1 for a message the shard handles itself (an encrypted
    /// envelope): it is activity.
    pub fn touch(&mut self, now: Instant) {
        self.last_activity = Stamp::at(now);
    }

    /// Apply the rules of PROTOCOL.md §3 to one client message.
    pub fn handle_message<'a>(
        &mut self,
        msg: ClientMessage<'a>,
        now: Instant,
        t: &Timeouts,
    ) -> Action<'a> {
        // Rule 1: every message, even an invalid one, is activity.
        let now = Stamp::at(now);
        self.last_activity = now;
        match msg {
            ClientMessage::Invalid => Action::Error(error_text::INVALID_FORMAT),
            ClientMessage::NoEvent | ClientMessage::Heartbeat => Action::None,
            ClientMessage::Authenticate(data) => {
                if self.state != State::Unauthorized {
                    return Action::Error(error_text::ALREADY_AUTHENTICATED);
                }
                self.state = State::Authenticating;
                // The in-progress timer replaces the connect timer so a
                // hanging authenticator cannot hold the slot forever.
                self.deadline = Some(now.after(t.auth * 3));
                Action::Authenticate(data)
            }
            _ if self.state != State::Authenticated => Action::Error(error_text::NOT_AUTHENTICATED),
            ClientMessage::Join(data) => {
                let rooms = message::join_rooms(data.as_ref());
                if rooms.is_empty() {
                    Action::None
                } else {
                    Action::Join(rooms)
                }
            }
            ClientMessage::Leave(data) => {
                let rooms: Vec<String> = message::leave_rooms(data.as_ref())
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                if rooms.is_empty() {
                    Action::None
                } else {
                    Action::Leave(rooms)
                }
            }
            ClientMessage::Custom { event, data, id } => Action::Custom { event, data, id },
        }
    }

    /// Apply an authenticator's verdict.
    pub fn handle_auth_result(&mut self, verdict: Verdict) -> AuthStep {
        if self.state != State::Authenticating {
            return AuthStep::Stale;
        }
        match verdict {
            Verdict::Accepted => {
                self.state = State::Authenticated;
                self.deadline = None;
                AuthStep::Accept
            }
            Verdict::Refused => {
                self.deadline = None;
                AuthStep::Reject(error_text::AUTH_FAILED)
            }
            Verdict::Failed => {
                self.deadline = None;
                AuthStep::Reject(error_text::AUTH_ERROR)
            }
        }
    }

    /// The auth timers (4001). Call with the current time whenever a
    /// deadline may have passed; returns the close to perform.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<CloseReason> {
        match self.deadline {
            Some(d) if Stamp::at(now).reached(d) && self.state != State::Authenticated => {
                self.deadline = None;
                Some(CloseReason::AuthTimeout)
            }
            _ => None,
        }
    }

    /// The heartbeat sweep (4002): only authenticated clients; the auth
    /// timers cover the others.
    pub fn heartbeat_expired(&self, now: Instant, t: &Timeouts) -> bool {
        self.state == State::Authenticated && Stamp::at(now).since(self.last_activity) > t.heartbeat
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::message::{Buffers, parse};

    const T: Timeouts = Timeouts {
        auth: Duration::from_millis(100),
        heartbeat: Duration::from_millis(1000),
    };

    fn send(s: &mut Session, json: &str, now: Instant) -> String {
        let mut b = json.as_bytes().to_vec();
        let mut bufs = Buffers::default();
        let m = parse(&mut b, &mut bufs);
        format!("{:?}", s.handle_message(m, now, &T))
    }

    #[test]
    fn unauthenticated_rules() {
        let t0 = Instant::now();
        let mut s = Session::new(t0, &T);
        assert_eq!(
            send(&mut s, "nope", t0),
            r#"Error("Invalid message format")"#
        );
        assert_eq!(send(&mut s, r#"{"event":"heartbeat"}"#, t0), "None");
        assert_eq!(send(&mut s, r#"{"data":1}"#, t0), "None");
        assert_eq!(
            send(&mut s, r#"{"event":"join","data":{"rooms":["a"]}}"#, t0),
            r#"Error("Not authenticated")"#
        );
        assert_eq!(
            send(&mut s, r#"{"event":"chat"}"#, t0),
            r#"Error("Not authenticated")"#
        );
        assert_eq!(s.state(), State::Unauthorized);
    }

    #[test]
    fn auth_flow_and_already_authenticated() {
        let t0 = Instant::now();
        let mut s = Session::new(t0, &T);
        assert!(
            send(
                &mut s,
                r#"{"event":"authenticate","data":{"token":"x"}}"#,
                t0
            )
            .starts_with("Authenticate(")
        );
        assert_eq!(s.state(), State::Authenticating);
        assert_eq!(s.deadline(), Some(Stamp::at(t0 + T.auth * 3)));
        // A second authenticate while the first runs.
        assert_eq!(
            send(&mut s, r#"{"event":"authenticate"}"#, t0),
            r#"Error("Already authenticated")"#
        );
        assert_eq!(s.handle_auth_result(Verdict::Accepted), AuthStep::Accept);
        assert_eq!(s.state(), State::Authenticated);
        assert_eq!(s.handle_auth_result(Verdict::Accepted), AuthStep::Stale);
        assert_eq!(
            send(&mut s, r#"{"event":"authenticate"}"#, t0),
            r#"Error("Already authenticated")"#
        );
        assert_eq!(
            send(
                &mut s,
                r#"{"event":"join","data":{"rooms":["a","ws:x"]}}"#,
                t0
            ),
            r#"Join(["a"])"#
        );
        assert_eq!(
            send(&mut s, r#"{"event":"join","data":{"rooms":["ws:x"]}}"#, t0),
            "None"
        );
        assert_eq!(
            send(&mut s, r#"{"event":"leave","data":{"rooms":["a",3]}}"#, t0),
            r#"Leave(["a"])"#
        );
        assert!(send(&mut s, r#"{"event":"chat","data":1}"#, t0).starts_with("Custom"));
    }

    #[test]
    fn rejections() {
        let t0 = Instant::now();
        let mut s = Session::new(t0, &T);
        send(&mut s, r#"{"event":"authenticate"}"#, t0);
        assert_eq!(
            s.handle_auth_result(Verdict::Refused),
            AuthStep::Reject("Authentication failed")
        );
        let mut s = Session::new(t0, &T);
        send(&mut s, r#"{"event":"authenticate"}"#, t0);
        assert_eq!(
            s.handle_auth_result(Verdict::Failed),
            AuthStep::Reject("Authentication error")
        );
    }

    #[test]
    fn auth_timeouts() {
        let t0 = Instant::now();
        let mut s = Session::new(t0, &T);
        // A heartbeat does not extend the auth timer.
        send(&mut s, r#"{"event":"heartbeat"}"#, t0 + T.auth / 2);
        assert_eq!(s.poll_timeout(t0 + T.auth / 2), None);
        assert_eq!(s.poll_timeout(t0 + T.auth), Some(CloseReason::AuthTimeout));

        let mut s = Session::new(t0, &T);
        let t1 = t0 + T.auth / 2;
        send(&mut s, r#"{"event":"authenticate"}"#, t1);
        assert_eq!(s.poll_timeout(t0 + T.auth * 2), None);
        assert_eq!(
            s.poll_timeout(t1 + T.auth * 3),
            Some(CloseReason::AuthTimeout)
        );
        // A late verdict after the timeout is still applied by state only;
        // the shard has closed the connection by then.
    }

    #[test]
    fn heartbeat_only_for_authenticated() {
        let t0 = Instant::now();
        let mut s = Session::new(t0, &T);
        assert!(!s.heartbeat_expired(t0 + T.heartbeat * 2, &T));
        send(&mut s, r#"{"event":"authenticate"}"#, t0);
        s.handle_auth_result(Verdict::Accepted);
        assert!(!s.heartbeat_expired(t0 + T.heartbeat, &T));
        assert!(s.heartbeat_expired(t0 + T.heartbeat + Duration::from_millis(1), &T));
        // Invalid JSON still counts as activity.
        send(&mut s, "garbage", t0 + T.heartbeat);
        assert!(!s.heartbeat_expired(t0 + T.heartbeat * 2, &T));
    }
}
