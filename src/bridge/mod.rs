//! The one Redis bridge per process (PROTOCOL.md §6, cross-instance).
//!
//! Two connections, both on the control thread (tokio), never on a shard:
//! * the **subscriber** ([`subscriber`]) SUBSCRIBEs `ws:broadcast` and the
//!   channels of this process's rooms, users and clients as the shards
//!   report them ([`interest`]; or, with `--redis-subscribe pattern`,
//!   PSUBSCRIBEs `ws:room:*`, `ws:client:*`, `ws:user:*`); each envelope is
//!   parsed once, its client frame encoded once, and the same `Bytes` goes
//!   to every shard that may hold recipients ([`crate::Handle::deliver`]);
//! * the **publisher** ([`publisher`]) drains the outbox, a bounded channel
//!   that any thread fills without blocking ([`Publisher::publish`]). While
//!   Redis is down the outbox holds messages; when it is full new ones are
//!   dropped and counted. Nothing here ever blocks a shard.
//!
//! Both reconnect forever with exponential backoff and jitter ([`conn`]);
//! the subscriber re-subscribes. Local delivery never depends on Redis.
//! [`envelope`] is the wire format both speak, [`emitter`] a standalone
//! publisher for other programs.

pub mod admin;
pub mod cluster;
pub mod conn;
pub mod emitter;
pub mod envelope;
pub mod interest;
pub mod publisher;
pub mod resp;
pub mod sentinel;
pub mod subscriber;
#[cfg(test)]
pub(crate) mod test_redis;

use std::sync::Arc;

use crate::control::ControlHandle;
use envelope::Kind;

pub use conn::{BridgeConfig, client, redact};
pub use publisher::{Outbox, Outgoing, Publisher, outbox};
pub use subscriber::{LocalDelivery, on_envelope};

/// Whether the bridge's two connections are up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Link {
    /// The subscriber is connected and subscribed.
    pub subscribed: bool,
    /// The publisher is connected.
    pub publisher: bool,
}

impl Link {
    /// Both connections up.
    pub fn up(&self) -> bool {
        self.subscribed && self.publisher
    }
}

/// Start the subscriber and the publisher on the control thread.
/// `interest`: the shards' reports of what they need
/// (`--redis-subscribe interest`); `None` subscribes the patterns.
#[allow(clippy::too_many_arguments)] // reason: the bridge's wiring, each piece made by the runtime
pub fn start(
    cfg: BridgeConfig,
    publisher: &Publisher,
    outbox: Outbox,
    handle: Arc<dyn LocalDelivery>,
    control: &ControlHandle,
    interest: Option<flume::Receiver<interest::BridgeInput>>,
    admin: (
        flume::Sender<admin::AdminInput>,
        flume::Receiver<admin::AdminInput>,
    ),
    local: Arc<dyn admin::LocalAdmin>,
) {
    let metrics = publisher.metrics.clone();
    let server_id = publisher.server_id.clone();
    let server_id_for_admin = server_id.clone();
    let master = cfg.sentinel.clone().map(|s| {
        let (tx, rx) = tokio::sync::watch::channel(None);
        control.spawn(Box::pin(sentinel::watch(s, cfg.tls_ca.clone(), tx)));
        rx
    });
    control.spawn(Box::pin(subscriber::run(
        cfg.clone(),
        server_id,
        handle,
        metrics.clone(),
        publisher.link.clone(),
        interest,
        master.clone(),
        admin.0,
    )));
    control.spawn(Box::pin(admin::run(
        server_id_for_admin,
        publisher.clone(),
        local,
        admin.1,
    )));
    control.spawn(Box::pin(publisher::run(
        cfg,
        outbox.0,
        outbox.1,
        metrics,
        publisher.link.clone(),
        master,
    )));
}

/// Index of a kind in the per-type metric arrays.
pub fn kind_index(k: Kind) -> usize {
    match k {
        Kind::Client => 0,
        Kind::User => 1,
        Kind::Room => 2,
        Kind::Broadcast => 3,
    }
}
