//! The bridge's receiving half: one connection on the control thread
//! SUBSCRIBEs `ws:broadcast` and PSUBSCRIBEs `ws:room:*`, `ws:client:*`,
//! `ws:user:*`, pings itself to notice a silent partition, and
//! re-subscribes with backoff whenever it is lost. Each envelope is parsed
//! once, its client frame encoded once, and the same `Bytes` goes to every
//! shard that may hold recipients ([`LocalDelivery::deliver`]).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::StreamExt;

use super::conn::{Backoff, BridgeConfig, CONNECT_TIMEOUT, PUBLISH_TIMEOUT, client, redact};
use super::envelope::{self, DropReason, Kind};
use super::{Link, kind_index};
use crate::delivery::{ClientId, Delivery, SendError, Target};
use crate::metrics::BridgeMetrics;
use crate::proto::frame::{OpCode, server_frame_with};

/// How often the subscriber checks that its connection is alive.
const SUBSCRIBER_PING: Duration = Duration::from_secs(5);

/// Where envelopes from Redis go: this process's shards. [`crate::Handle`]
/// implements it; a trait, so the bridge sits below the delivery API that
/// publishes through it.
pub trait LocalDelivery: Send + Sync + 'static {
    /// Number of shards (a client id naming a higher one is not ours).
    fn shards(&self) -> usize;
    /// Put a delivery on the shards' channels.
    fn deliver(&self, d: Delivery) -> Result<(), SendError>;
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
pub(super) async fn run(
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
