//! The bridge's publishing half: the outbox, a bounded channel any thread
//! fills without blocking ([`Publisher::publish`]), and the loop on the
//! control thread that drains it into Redis over one multiplexed
//! connection, pinging it while idle and reconnecting with backoff. While
//! Redis is down the outbox holds messages; when it is full new ones are
//! dropped and counted.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;

use super::conn::{
    Backoff, BridgeConfig, CONNECT_TIMEOUT, Endpoint, PUBLISH_TIMEOUT, client, redact,
};
use super::envelope::Kind;
use super::{Link, kind_index};
use crate::metrics::BridgeMetrics;

/// An idle publisher pings this often, so a lost connection is noticed
/// (and `/health` says so) before the next publish needs it.
const PUBLISHER_PING: Duration = Duration::from_secs(1);

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
    /// Control messages ([`super::admin`]): their own small queue, so they
    /// never take the outbox's room and the outbox holds only what users
    /// sent.
    control: flume::Sender<Outgoing>,
    pub(super) server_id: Arc<str>,
    pub(super) metrics: Arc<BridgeMetrics>,
    pub(super) link: Arc<tokio::sync::watch::Sender<Link>>,
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

    /// Queue a control message ([`super::admin`]) without waiting; false
    /// (and counted as dropped) when [`CONTROL_QUEUE`] are waiting.
    pub fn publish_control(&self, out: Outgoing) -> bool {
        let ok = self.control.try_send(out).is_ok();
        if !ok {
            self.metrics.control_dropped.fetch_add(1, Relaxed);
        }
        ok
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

/// Control messages waiting for Redis at most; past it they are dropped
/// (a count then times out, a disconnect reaches only this node).
pub const CONTROL_QUEUE: usize = 64;

/// The receiving ends of the outbox and of the control queue, handed to
/// [`super::start`].
#[derive(Debug)]
pub struct Outbox(
    pub(super) flume::Receiver<Outgoing>,
    pub(super) flume::Receiver<Outgoing>,
);

/// Create the outbox and its publisher (before the [`crate::Handle`] exists).
pub fn outbox(cfg: &BridgeConfig) -> (Publisher, Outbox) {
    let (tx, rx) = flume::bounded(cfg.outbox);
    let (control, control_rx) = flume::bounded(CONTROL_QUEUE);
    let publisher = Publisher {
        tx,
        control,
        server_id: uuid::Uuid::new_v4().to_string().into(),
        metrics: Arc::new(BridgeMetrics::default()),
        link: Arc::new(tokio::sync::watch::channel(Link::default()).0),
    };
    (publisher, Outbox(rx, control_rx))
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
pub(super) async fn run(
    cfg: BridgeConfig,
    rx: flume::Receiver<Outgoing>,
    control: flume::Receiver<Outgoing>,
    metrics: Arc<BridgeMetrics>,
    link: Arc<tokio::sync::watch::Sender<Link>>,
    master: Option<tokio::sync::watch::Receiver<Option<String>>>,
) {
    let down = |metrics: &BridgeMetrics| {
        metrics.publisher_up.store(false, Relaxed);
        link.send_modify(|l| l.publisher = false);
    };
    let mut backoff = Backoff::new();
    let mut target = Endpoint::new(&cfg, master);
    // --redis-sharded: rooms, users and clients by SPUBLISH to their
    // slot's master.
    let mut router = cfg
        .sharded
        .then(|| super::cluster::Router::new(cfg.urls.clone(), cfg.tls_ca.clone()));
    let mut pending: Option<Outgoing> = None;
    let mut first = true;
    loop {
        let url = target.url().await;
        let url = &url;
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
                target.failed();
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
            Err(_) => {
                down(&metrics);
                target.failed();
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
                        biased;
                        _ = target.moved(url) => None,
                        // A control message skips the outbox's queue; it
                        // is not counted in the outbox's depth.
                        Ok(c) = control.recv_async() => {
                            metrics.outbox_depth.fetch_add(1, Relaxed);
                            Some(Some(Ok(c)))
                        }
                        r = rx.recv_async() => Some(Some(r)),
                        _ = tokio::time::sleep(PUBLISHER_PING) => Some(None),
                    };
                    let Some(next) = next else {
                        // A failover: publish to the new master at once
                        // (the old one may still accept and lose them).
                        down(&metrics);
                        tracing::info!(node = %redact(url), "redis master moved; publishing to the new one");
                        break;
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
            let sharded = matches!(item.kind, Some(Kind::Room | Kind::User | Kind::Client));
            let sent = match &mut router {
                Some(r) if sharded => {
                    tokio::time::timeout(PUBLISH_TIMEOUT, r.spublish(&item.channel, &item.payload))
                        .await
                }
                _ => {
                    let cmd = redis::cmd("PUBLISH")
                        .arg(&item.channel)
                        .arg(&item.payload[..])
                        .to_owned();
                    tokio::time::timeout(PUBLISH_TIMEOUT, cmd.query_async::<i64>(&mut conn)).await
                }
            };
            match sent {
                Ok(Ok(_)) => match item.kind {
                    Some(k) => {
                        metrics.published[kind_index(k)].fetch_add(1, Relaxed);
                    }
                    None if item.channel.starts_with(super::admin::NODE_PREFIX)
                        || item.channel == super::admin::CONTROL =>
                    {
                        metrics.control_out.fetch_add(1, Relaxed);
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
