//! The one Redis bridge per process (PROTOCOL.md §6, cross-instance).
//!
//! Two connections, both on the control thread (tokio), never on a shard:
//! * the **subscriber** SUBSCRIBEs `ws:broadcast` and PSUBSCRIBEs
//!   `ws:room:*`, `ws:client:*`, `ws:user:*`; each envelope is parsed once,
//!   its client frame encoded once, and the same `Bytes` goes to every
//!   shard that may hold recipients ([`crate::Handle::deliver`]);
//! * the **publisher** drains the outbox, a bounded channel that any thread
//!   fills without blocking ([`Publisher::publish`]). While Redis is down
//!   the outbox holds messages; when it is full new ones are dropped and
//!   counted. Nothing here ever blocks a shard.
//!
//! Both reconnect forever with exponential backoff and jitter; the
//! subscriber re-subscribes. Local delivery never depends on Redis.

pub mod emitter;
pub mod envelope;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::control::ControlHandle;
use crate::delivery::{ClientId, Delivery, SendError, Target};
use crate::metrics::BridgeMetrics;
use crate::proto::frame::{OpCode, server_frame_with};
use envelope::{DropReason, Kind};

/// Time allowed to connect (and subscribe) before trying again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one PUBLISH before the connection is considered dead.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle publisher pings this often, so a lost connection is noticed
/// (and `/health` says so) before the next publish needs it.
const PUBLISHER_PING: Duration = Duration::from_secs(1);
/// How often the subscriber checks that its connection is alive.
const SUBSCRIBER_PING: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Settings of the bridge (from [`crate::Config`]). `Debug` redacts the
/// URLs' credentials.
#[derive(Clone)]
pub struct BridgeConfig {
    /// One URL, or the nodes of a Redis Cluster (any reachable one serves:
    /// Redis Cluster propagates classic PUBLISH to every node).
    pub urls: Vec<String>,
    /// Outbox capacity (messages).
    pub outbox: usize,
    /// Largest envelope accepted.
    pub max_message: usize,
    /// PEM CA for `rediss://` with a private CA.
    pub tls_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for BridgeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact(u)).collect();
        f.debug_struct("BridgeConfig")
            .field("urls", &urls)
            .field("outbox", &self.outbox)
            .field("max_message", &self.max_message)
            .field("tls_ca", &self.tls_ca.as_ref().map(Vec::len))
            .finish()
    }
}

/// A Redis client for `url`, trusting `tls_ca` (PEM) when given.
pub fn client(url: &str, tls_ca: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    match tls_ca {
        Some(ca) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        ),
        None => redis::Client::open(url),
    }
}

/// One message for Redis.
#[derive(Debug)]
pub struct Outgoing {
    pub channel: String,
    pub payload: Bytes,
    /// Index into [`BridgeMetrics::published`]; `None` for forwarded
    /// client events.
    pub kind: Option<Kind>,
}

/// Puts messages in the outbox; cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: flume::Sender<Outgoing>,
    server_id: Arc<str>,
    metrics: Arc<BridgeMetrics>,
    link: Arc<tokio::sync::watch::Sender<Link>>,
}

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

impl Publisher {
    /// This process's `serverId` (a random UUID).
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// The bridge's numbers.
    pub fn metrics(&self) -> &Arc<BridgeMetrics> {
        &self.metrics
    }

    /// Watch the state of the bridge's connections.
    pub fn link(&self) -> tokio::sync::watch::Receiver<Link> {
        self.link.subscribe()
    }

    /// Queue a message for Redis without ever waiting. Returns false (and
    /// counts it) when the outbox is full.
    pub fn publish(&self, out: Outgoing) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => {
                self.metrics.outbox_depth.fetch_add(1, Relaxed);
                true
            }
            Err(_) => {
                self.metrics.outbox_dropped.fetch_add(1, Relaxed);
                false
            }
        }
    }
}

/// The receiving end of the outbox, handed to [`start`].
#[derive(Debug)]
pub struct Outbox(flume::Receiver<Outgoing>);

/// Create the outbox and its publisher (before the [`crate::Handle`] exists).
pub fn outbox(cfg: &BridgeConfig) -> (Publisher, Outbox) {
    let (tx, rx) = flume::bounded(cfg.outbox);
    let publisher = Publisher {
        tx,
        server_id: uuid::Uuid::new_v4().to_string().into(),
        metrics: Arc::new(BridgeMetrics::default()),
        link: Arc::new(tokio::sync::watch::channel(Link::default()).0),
    };
    (publisher, Outbox(rx))
}

/// Where envelopes from Redis go: this process's shards. [`crate::Handle`]
/// implements it; a trait, so the bridge sits below the delivery API that
/// publishes through it.
pub trait LocalDelivery: Send + Sync + 'static {
    /// Number of shards (a client id naming a higher one is not ours).
    fn shards(&self) -> usize;
    /// Put a delivery on the shards' channels.
    fn deliver(&self, d: Delivery) -> Result<(), SendError>;
}

/// Start the subscriber and the publisher on the control thread.
pub fn start(
    cfg: BridgeConfig,
    publisher: &Publisher,
    outbox: Outbox,
    handle: Arc<dyn LocalDelivery>,
    control: &ControlHandle,
) {
    let metrics = publisher.metrics.clone();
    let server_id = publisher.server_id.clone();
    control.spawn(Box::pin(subscriber(
        cfg.clone(),
        server_id,
        handle,
        metrics.clone(),
        publisher.link.clone(),
    )));
    control.spawn(Box::pin(publisher_loop(
        cfg,
        outbox.0,
        metrics,
        publisher.link.clone(),
    )));
}

/// Exponential backoff with full jitter between `BACKOFF_MIN` and the
/// current ceiling.
#[derive(Debug)]
struct Backoff {
    ceiling: Duration,
    seed: u64,
}

impl Backoff {
    fn new() -> Self {
        let seed = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
        Backoff {
            ceiling: BACKOFF_MIN,
            seed,
        }
    }

    fn reset(&mut self) {
        self.ceiling = BACKOFF_MIN;
    }

    fn next(&mut self) -> Duration {
        // xorshift64: cheap randomness so nodes that lost Redis together do
        // not reconnect in lockstep.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let span = self.ceiling.as_millis().max(1) as u64;
        let wait = Duration::from_millis(span / 2 + self.seed % (span / 2 + 1));
        self.ceiling = (self.ceiling * 2).min(BACKOFF_MAX);
        wait.max(BACKOFF_MIN)
    }
}

async fn connect_pubsub(url: &str, ca: Option<&[u8]>) -> redis::RedisResult<redis::aio::PubSub> {
    let client = client(url, ca)?;
    let mut ps = client.get_async_pubsub().await?;
    for c in envelope::SUBSCRIBE_CHANNELS {
        ps.subscribe(c).await?;
    }
    for p in envelope::SUBSCRIBE_PATTERNS {
        ps.psubscribe(p).await?;
    }
    Ok(ps)
}

/// Subscribe, deliver, and come back whenever the connection is lost.
async fn subscriber(
    cfg: BridgeConfig,
    server_id: Arc<str>,
    handle: Arc<dyn LocalDelivery>,
    metrics: Arc<BridgeMetrics>,
    link: Arc<tokio::sync::watch::Sender<Link>>,
) {
    let mut backoff = Backoff::new();
    let mut node = 0usize;
    let mut first = true;
    loop {
        let url = &cfg.urls[node % cfg.urls.len()];
        match tokio::time::timeout(CONNECT_TIMEOUT, connect_pubsub(url, cfg.tls_ca.as_deref()))
            .await
        {
            Ok(Ok(ps)) => {
                if !first {
                    metrics.reconnects.fetch_add(1, Relaxed);
                }
                first = false;
                metrics.subscribed.store(true, Relaxed);
                link.send_modify(|l| l.subscribed = true);
                tracing::info!(node = %redact(url), "redis bridge subscribed");
                backoff.reset();
                let (mut sink, mut stream) = ps.split();
                // A connection that dies without a FIN (a partition) never
                // ends the stream: ping it to find out.
                let mut ping = tokio::time::interval(SUBSCRIBER_PING);
                ping.tick().await;
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => on_envelope(msg.get_payload_bytes(), &cfg, &server_id, &*handle, &metrics),
                            None => break,
                        },
                        _ = ping.tick() => {
                            let alive = tokio::time::timeout(PUBLISH_TIMEOUT, sink.ping::<redis::Value>()).await;
                            if !matches!(alive, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                metrics.subscribed.store(false, Relaxed);
                link.send_modify(|l| l.subscribed = false);
                tracing::warn!(node = %redact(url), "redis subscriber connection lost; reconnecting");
            }
            Ok(Err(e)) => {
                metrics.subscribed.store(false, Relaxed);
                tracing::warn!(node = %redact(url), error = %crate::secrets::scrub(&e.to_string(), url), "redis subscriber cannot connect");
                node += 1;
            }
            Err(_) => {
                metrics.subscribed.store(false, Relaxed);
                tracing::warn!(node = %redact(url), "redis subscriber connect timed out");
                node += 1;
            }
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// One envelope from Redis: parse once, encode the client frame once,
/// deliver locally. Never fails, never panics: a bad envelope is counted
/// and dropped and cannot touch the next one.
pub fn on_envelope(
    payload: &[u8],
    cfg: &BridgeConfig,
    server_id: &str,
    handle: &dyn LocalDelivery,
    metrics: &BridgeMetrics,
) {
    let env = match envelope::parse(payload, cfg.max_message) {
        Ok(env) => env,
        Err(reason) => {
            let i = DropReason::ALL
                .iter()
                .position(|r| *r == reason)
                .unwrap_or(0);
            metrics.envelopes_dropped[i].fetch_add(1, Relaxed);
            tracing::debug!(reason = reason.as_str(), "redis envelope dropped");
            return;
        }
    };
    if env.server_id == server_id {
        metrics.own_skipped.fetch_add(1, Relaxed);
        return;
    }
    let target = match (env.kind, env.target.as_deref()) {
        (Kind::Broadcast, _) => Target::Broadcast,
        (Kind::Room, Some(t)) => Target::Room(t.into()),
        (Kind::User, Some(t)) => Target::User(t.into()),
        (Kind::Client, Some(t)) => match ClientId::parse(t) {
            Some(id) if id.shard() < handle.shards() => Target::Client(id),
            // Not an id of this process: the client lives elsewhere.
            _ => {
                metrics.envelopes_in[kind_index(env.kind)].fetch_add(1, Relaxed);
                return;
            }
        },
        // `parse` guarantees a target for these kinds.
        (_, None) => return,
    };
    let exclude: Vec<ClientId> = env
        .exclude
        .iter()
        .filter_map(|s| ClientId::parse(s))
        .collect();
    let frame = server_frame_with(OpCode::Text, |buf| env.write_client_message(buf));
    metrics.envelopes_in[kind_index(env.kind)].fetch_add(1, Relaxed);
    let _ = handle.deliver(Delivery {
        target,
        frame,
        exclude: if exclude.is_empty() {
            None
        } else {
            Some(exclude.into())
        },
    });
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

async fn connect_publisher(
    url: &str,
    ca: Option<&[u8]>,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = client(url, ca)?;
    client.get_multiplexed_async_connection().await
}

/// Drain the outbox into Redis; keep the message in hand across
/// reconnections so nothing accepted is lost while the outbox has room.
async fn publisher_loop(
    cfg: BridgeConfig,
    rx: flume::Receiver<Outgoing>,
    metrics: Arc<BridgeMetrics>,
    link: Arc<tokio::sync::watch::Sender<Link>>,
) {
    let down = |metrics: &BridgeMetrics| {
        metrics.publisher_up.store(false, Relaxed);
        link.send_modify(|l| l.publisher = false);
    };
    let mut backoff = Backoff::new();
    let mut node = 0usize;
    let mut pending: Option<Outgoing> = None;
    let mut first = true;
    loop {
        let url = &cfg.urls[node % cfg.urls.len()];
        let mut conn = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            connect_publisher(url, cfg.tls_ca.as_deref()),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                down(&metrics);
                tracing::warn!(node = %redact(url), error = %crate::secrets::scrub(&e.to_string(), url), "redis publisher cannot connect");
                node += 1;
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
            Err(_) => {
                down(&metrics);
                node += 1;
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        if !first {
            metrics.reconnects.fetch_add(1, Relaxed);
        }
        first = false;
        metrics.publisher_up.store(true, Relaxed);
        link.send_modify(|l| l.publisher = true);
        backoff.reset();
        loop {
            let item = match pending.take() {
                Some(i) => i,
                None => {
                    let next = tokio::select! {
                        r = rx.recv_async() => Some(r),
                        _ = tokio::time::sleep(PUBLISHER_PING) => None,
                    };
                    match next {
                        Some(Ok(i)) => {
                            metrics.outbox_depth.fetch_sub(1, Relaxed);
                            i
                        }
                        // Every publisher is gone: the server is shutting down.
                        Some(Err(_)) => return,
                        None => {
                            let ping = redis::cmd("PING").to_owned();
                            match tokio::time::timeout(
                                PUBLISH_TIMEOUT,
                                ping.query_async::<String>(&mut conn),
                            )
                            .await
                            {
                                Ok(Ok(_)) => continue,
                                _ => {
                                    down(&metrics);
                                    tracing::warn!(node = %redact(url), "redis publisher connection lost; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                }
            };
            let cmd = redis::cmd("PUBLISH")
                .arg(&item.channel)
                .arg(&item.payload[..])
                .to_owned();
            match tokio::time::timeout(PUBLISH_TIMEOUT, cmd.query_async::<i64>(&mut conn)).await {
                Ok(Ok(_)) => match item.kind {
                    Some(k) => {
                        metrics.published[kind_index(k)].fetch_add(1, Relaxed);
                    }
                    None => {
                        metrics.events_forwarded.fetch_add(1, Relaxed);
                    }
                },
                _ => {
                    pending = Some(item);
                    down(&metrics);
                    tracing::warn!(node = %redact(url), "redis publish failed; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// A Redis URL without its password, for logs ([`crate::secrets::redact_url`]).
pub fn redact(url: &str) -> String {
    crate::secrets::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(first >= BACKOFF_MIN && first <= BACKOFF_MIN * 2);
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            last = b.next();
            assert!(last <= BACKOFF_MAX);
        }
        assert!(last >= BACKOFF_MAX / 2, "{last:?}");
        b.reset();
        assert!(b.next() <= BACKOFF_MIN * 2);
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://user:pw@h:6379/0"),
            "redis://user:***@h:6379/0"
        );
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }
}
