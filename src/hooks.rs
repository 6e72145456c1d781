//! Lifecycle hooks for library users: the reference's `clientConnectedFn`,
//! `clientDisconnectedFn` and `messageHandler`.
//!
//! A hook runs on the shard that owns the client. It may do its work inline
//! and return `None`, or return a future: one that completes on its first
//! poll stays on the shard; one that has to wait is moved to the control
//! thread (a tokio runtime), so it may use tokio I/O. Either way a hook
//! never blocks delivery to other clients — keep inline work short.

use crate::auth::BoxFuture;

/// A connection that completed the WebSocket upgrade (not yet
/// authenticated).
#[derive(Debug, Clone)]
pub struct Opened {
    pub client_id: String,
}

/// A client that finished authentication.
#[derive(Debug, Clone)]
pub struct Connected {
    pub client_id: String,
    pub user_id: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

/// A client that went away (any state).
#[derive(Debug, Clone)]
pub struct Disconnected {
    pub client_id: String,
    pub user_id: Option<String>,
}

/// A custom event from an authenticated client (any event other than the
/// system events of PROTOCOL.md §3).
#[derive(Debug, Clone)]
pub struct Message {
    pub client_id: String,
    pub user_id: Option<String>,
    pub event: String,
    pub data: Option<serde_json::Value>,
    pub id: Option<String>,
}

/// Lifecycle hooks. Every method has a no-op default.
pub trait Hooks: Send + Sync + 'static {
    /// After the upgrade, before any message (the reference's `open`).
    fn on_open(&self, _o: Opened) -> Option<BoxFuture<()>> {
        None
    }
    /// After `connected` was queued to the client.
    fn on_connect(&self, _c: Connected) -> Option<BoxFuture<()>> {
        None
    }
    /// After the client left every index.
    fn on_disconnect(&self, _d: Disconnected) -> Option<BoxFuture<()>> {
        None
    }
    /// A custom event. Without a hook such events are dropped at debug
    /// level, as in the reference without `messageHandler`.
    fn on_message(&self, _m: Message) -> Option<BoxFuture<()>> {
        None
    }
    /// Whether [`Hooks::on_message`] does anything; when false the shard
    /// skips building the [`Message`].
    fn wants_messages(&self) -> bool {
        true
    }
}

/// The hooks used when none are given.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn wants_messages(&self) -> bool {
        false
    }
}
