//! The bridge's receiving half: one connection on the control thread
//! SUBSCRIBEs `ws:broadcast` and either the channels this process's
//! clients need (`--redis-subscribe interest`, [`super::interest`]) or the
//! patterns `ws:room:*`, `ws:client:*`, `ws:user:*` (`pattern`); it pings
//! itself to notice a silent partition, and re-subscribes with backoff
//! whenever it is lost. Each envelope is parsed
//! once, its client frame encoded once, and the same `Bytes` goes to every
//! shard that may hold recipients ([`LocalDelivery::deliver`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::StreamExt;

use super::admin::{self, AdminInput};
use super::cluster::{ShardedSubs, SlotMap};
use super::conn::{
    Backoff, BridgeConfig, CONNECT_TIMEOUT, Endpoint, PUBLISH_TIMEOUT, client, redact,
};
use super::envelope::{self, DropReason, Kind};
use super::interest::{BATCH, Batch, BridgeInput, Subscriptions};
use super::{Link, kind_index};
use crate::delivery::{ClientId, Delivery, SendError, Target};
use crate::metrics::BridgeMetrics;
use crate::proto::frame::{OpCode, server_frame_with};

/// How often the subscriber checks that its connection is alive.
const SUBSCRIBER_PING: Duration = Duration::from_secs(5);

/// How long after the last subscription change the control thread hands
/// the memory it freed back to the OS (see [`crate::io::mem`]): a storm of
/// connections leaves it the storm's command and reply buffers.
const RELEASE_AFTER: Duration = Duration::from_secs(1);

/// Where envelopes from Redis go: this process's shards. [`crate::Handle`]
/// implements it; a trait, so the bridge sits below the delivery API that
/// publishes through it.
pub trait LocalDelivery: Send + Sync + 'static {
    /// Number of shards (a client id naming a higher one is not ours).
    fn shards(&self) -> usize;
    /// Put a delivery on the shards' channels.
    fn deliver(&self, d: Delivery) -> Result<(), SendError>;
}

async fn connect_pubsub(
    url: &str,
    ca: Option<&[u8]>,
    fixed: &[String],
    patterns: &[String],
) -> redis::RedisResult<redis::aio::PubSub> {
    let client = client(url, ca)?;
    let mut ps = client.get_async_pubsub().await?;
    ps.subscribe(fixed).await?;
    if !patterns.is_empty() {
        ps.psubscribe(patterns).await?;
    }
    Ok(ps)
}

/// The patterns that hear every client of the process whose ids carry
/// `tag`: `ws:client:{tag}-*` (emitters' `toClient`) and `ws:room:{tag}-*`
/// (Ignis's `send()` to a client of another node).
pub fn client_patterns(tag: u32) -> [String; 2] {
    [
        format!("{}{tag:08x}-*", envelope::CLIENT_PREFIX),
        format!("{}{tag:08x}-*", envelope::ROOM_PREFIX),
    ]
}

/// What the subscriber keeps across connections under
/// `--redis-subscribe interest`: the shards' reports come in on `input`,
/// the wanted set is `subs`, and `waiters` wait for it to be confirmed.
struct Interests {
    input: Option<flume::Receiver<BridgeInput>>,
    subs: Subscriptions,
    /// Settle requests by their mark in `subs`.
    waiters: HashMap<u64, flume::Sender<()>>,
    next_mark: u64,
}

impl Interests {
    fn take(&mut self, m: BridgeInput) {
        match m {
            BridgeInput::Interest { changes } => self.subs.apply(changes),
            BridgeInput::Settle(tx) => {
                self.next_mark += 1;
                self.waiters.insert(self.next_mark, tx);
                self.subs.mark(self.next_mark);
            }
        }
    }

    /// Everything before these marks is confirmed.
    fn answer(&mut self, marks: &[u64]) {
        for m in marks {
            if let Some(w) = self.waiters.remove(m) {
                let _ = w.send(());
            }
        }
    }

    /// The next report (after taking every one already waiting); pending
    /// forever without reports to wait for.
    async fn next(&mut self) {
        let m = match &self.input {
            Some(rx) => rx.recv_async().await,
            None => return std::future::pending().await,
        };
        match m {
            Ok(m) => {
                self.take(m);
                while let Some(m) = self.input.as_ref().and_then(|rx| rx.try_recv().ok()) {
                    self.take(m);
                }
            }
            // Every shard is gone (shutting down): nothing more to hear.
            Err(_) => self.input = None,
        }
    }

    /// Run `f` while taking reports, so that they never pile up while
    /// Redis is away.
    async fn during<F: Future>(&mut self, f: F) -> F::Output {
        tokio::pin!(f);
        loop {
            tokio::select! {
                out = &mut f => return out,
                _ = self.next() => {}
            }
        }
    }

    fn publish_gauges(&self, metrics: &BridgeMetrics, fixed: usize) {
        metrics
            .channels
            .store((fixed + self.subs.channels()) as i64, Relaxed);
        metrics
            .subscription_backlog
            .store(self.subs.backlog() as i64, Relaxed);
    }
}

/// Send one batch: SUBSCRIBE, then UNSUBSCRIBE, each awaited (Redis
/// confirms every channel), on the connection of `sink`.
async fn send_batch(mut sink: redis::aio::PubSubSink, b: Batch) -> redis::RedisResult<()> {
    let run = async {
        if !b.subscribe.is_empty() {
            sink.subscribe(&b.subscribe).await?;
        }
        if !b.unsubscribe.is_empty() {
            sink.unsubscribe(&b.unsubscribe).await?;
        }
        Ok(())
    };
    match tokio::time::timeout(PUBLISH_TIMEOUT, run).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "subscription command timed out",
        ))),
    }
}

type InFlight = std::pin::Pin<Box<dyn Future<Output = redis::RedisResult<()>> + Send>>;

/// Wait for the command in flight, if any (pending otherwise).
async fn finish(f: &mut Option<InFlight>) -> redis::RedisResult<()> {
    let r = match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    };
    *f = None;
    r
}

/// Subscribe, deliver, and come back whenever the connection is lost.
/// `input`: the shards' interest reports (`--redis-subscribe interest`);
/// `None` subscribes the patterns instead.
#[allow(clippy::too_many_arguments)] // reason: a task entry point taking what it owns
pub(super) async fn run(
    cfg: BridgeConfig,
    server_id: Arc<str>,
    handle: Arc<dyn LocalDelivery>,
    metrics: Arc<BridgeMetrics>,
    link: Arc<tokio::sync::watch::Sender<Link>>,
    input: Option<flume::Receiver<BridgeInput>>,
    master: Option<tokio::sync::watch::Receiver<Option<String>>>,
    admin: flume::Sender<AdminInput>,
) {
    let patterns = input.is_none();
    // ws:broadcast, and the control channels only ignis-ws nodes use.
    let fixed_channels: Vec<String> = envelope::SUBSCRIBE_CHANNELS
        .iter()
        .map(|c| c.to_string())
        .chain([admin::CONTROL.to_string(), admin::node_channel(&server_id)])
        .collect();
    let fixed_patterns: Vec<String> = if patterns {
        envelope::SUBSCRIBE_PATTERNS
            .iter()
            .map(|p| p.to_string())
            .collect()
    } else {
        cfg.client_tag
            .map(client_patterns)
            .into_iter()
            .flatten()
            .collect()
    };
    let fixed = fixed_channels.len() + fixed_patterns.len();
    let mut st = Interests {
        input,
        subs: Subscriptions::new(cfg.client_tag),
        waiters: HashMap::new(),
        next_mark: 0,
    };
    let mut backoff = Backoff::new();
    let mut target = Endpoint::new(&cfg, master);
    let mut first = true;
    loop {
        let url = st.during(target.url()).await;
        let url = &url;
        let connect = tokio::time::timeout(
            CONNECT_TIMEOUT,
            connect_pubsub(url, cfg.tls_ca.as_deref(), &fixed_channels, &fixed_patterns),
        );
        match st.during(connect).await {
            Ok(Ok(ps)) => {
                // Sharded pub/sub: the slot map of now, connections to
                // the masters made as channels need them. Without a map
                // this connection is of no use: try again after a backoff.
                let (push_tx, push_rx) = tokio::sync::mpsc::unbounded_channel();
                let mut push_rx = Some(push_rx);
                let mut sharded = None;
                if cfg.sharded {
                    match st
                        .during(SlotMap::fetch(&cfg.urls, cfg.tls_ca.as_deref()))
                        .await
                    {
                        Ok(map) => {
                            sharded = Some(Arc::new(tokio::sync::Mutex::new(ShardedSubs::new(
                                map,
                                cfg.tls_ca.clone(),
                                push_tx,
                            ))));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "redis cluster: no slot map");
                            target.failed();
                            st.during(tokio::time::sleep(backoff.next())).await;
                            continue;
                        }
                    }
                } else {
                    drop(push_tx);
                    push_rx = None;
                }
                let own_unsubscribes = sharded
                    .as_ref()
                    .map(|_| Arc::new(std::sync::Mutex::new(HashMap::<String, u32>::new())));
                if let (Some(sh), Some(own)) = (&sharded, &own_unsubscribes) {
                    sh.lock().await.track_unsubscribes(own.clone());
                }
                if !first {
                    metrics.reconnects.fetch_add(1, Relaxed);
                }
                first = false;
                metrics.subscribed.store(true, Relaxed);
                link.send_modify(|l| l.subscribed = true);
                tracing::info!(node = %redact(url), "redis bridge subscribed");
                let _ = admin.try_send(AdminInput::Subscribed);
                backoff.reset();
                // Nothing is subscribed on a new connection but the fixed
                // channels: every wanted one again.
                st.subs.reset();
                let started = tokio::time::Instant::now();
                let mut resubscribing = true;
                let (sink, mut stream) = ps.split();
                let mut in_flight: Option<InFlight> = None;
                // The settle marks of the batch in flight.
                let mut in_flight_marks: Vec<u64> = Vec::new();
                // A connection that dies without a FIN (a partition) never
                // ends the stream: ping it to find out.
                let mut ping = tokio::time::interval(SUBSCRIBER_PING);
                ping.tick().await;
                // Set when a batch went out: the memory is released once
                // the changes stop.
                let mut release_at: Option<tokio::time::Instant> = None;
                loop {
                    while in_flight.is_none() {
                        let Some(mut b) = st.subs.next_batch(BATCH) else {
                            if resubscribing {
                                resubscribing = false;
                                let ms = started.elapsed().as_millis() as i64;
                                metrics.resubscribe_ms.store(ms, Relaxed);
                                if st.subs.channels() > 0 {
                                    tracing::info!(
                                        channels = st.subs.channels(),
                                        ms,
                                        "redis bridge subscribed every wanted channel"
                                    );
                                }
                            }
                            break;
                        };
                        let marks = std::mem::take(&mut b.marks);
                        if b.is_empty() {
                            // Nothing to send: what came before is
                            // confirmed already.
                            st.answer(&marks);
                            continue;
                        }
                        in_flight_marks = marks;
                        release_at = Some(tokio::time::Instant::now() + RELEASE_AFTER);
                        for (i, n) in [b.subscribe.len(), b.unsubscribe.len()]
                            .into_iter()
                            .enumerate()
                        {
                            if n > 0 {
                                metrics.subscription_commands[i].fetch_add(1, Relaxed);
                                metrics.subscription_changes[i].fetch_add(n as u64, Relaxed);
                            }
                        }
                        in_flight = Some(match &sharded {
                            Some(sh) => {
                                let sh = sh.clone();
                                Box::pin(async move {
                                    let run = async {
                                        sh.lock().await.apply(&b.subscribe, &b.unsubscribe).await
                                    };
                                    match tokio::time::timeout(PUBLISH_TIMEOUT, run).await {
                                        Ok(r) => r,
                                        Err(_) => Err(redis::RedisError::from((
                                            redis::ErrorKind::Io,
                                            "sharded subscription timed out",
                                        ))),
                                    }
                                })
                            }
                            None => Box::pin(send_batch(sink.clone(), b)),
                        });
                    }
                    st.publish_gauges(&metrics, fixed);
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) if msg.get_channel_name().starts_with("ignis-ws:") => {
                                let p = msg.get_payload_bytes();
                                // Bounded before it is copied, and never
                                // queued without bound.
                                if p.len() > admin::MAX_CONTROL
                                    || admin.try_send(AdminInput::FromRedis(p.to_vec())).is_err()
                                {
                                    metrics.control_dropped.fetch_add(1, Relaxed);
                                }
                            }
                            Some(msg) => on_envelope(msg.get_payload_bytes(), &cfg, &server_id, &*handle, &metrics),
                            None => break,
                        },
                        r = finish(&mut in_flight) => {
                            if let Err(e) = r {
                                tracing::warn!(node = %redact(url), error = %crate::secrets::scrub(&e.to_string(), url), "redis subscription command failed");
                                break;
                            }
                            let marks = std::mem::take(&mut in_flight_marks);
                            st.answer(&marks);
                        }
                        _ = st.next() => {}
                        p = next_push(&mut push_rx) => {
                            if !on_push(p, own_unsubscribes.as_deref(), &cfg, &server_id, &*handle, &metrics) {
                                break;
                            }
                        }
                        _ = target.moved(url) => {
                            tracing::info!(node = %redact(url), "redis master moved; resubscribing on the new one");
                            break;
                        }
                        _ = release_due(release_at) => {
                            release_at = None;
                            crate::io::mem::release_free_memory();
                        }
                        _ = ping.tick() => {
                            let mut sink = sink.clone();
                            let alive = tokio::time::timeout(PUBLISH_TIMEOUT, sink.ping::<redis::Value>()).await;
                            if !matches!(alive, Ok(Ok(_))) {
                                break;
                            }
                            // The masters' connections too (a command in
                            // flight has its own timeout).
                            if let Some(sh) = &sharded
                                && let Ok(mut sh) = sh.try_lock()
                                && tokio::time::timeout(PUBLISH_TIMEOUT, sh.ping()).await.map_or(true, |r| r.is_err())
                            {
                                tracing::warn!("redis cluster: a master's connection does not answer; resubscribing everything");
                                break;
                            }
                        }
                    }
                }
                metrics.subscribed.store(false, Relaxed);
                link.send_modify(|l| l.subscribed = false);
                // Settle requests of the lost batch wait for the next
                // connection's whole set.
                for m in in_flight_marks.drain(..) {
                    st.subs.mark(m);
                }
                st.subs.reset();
                st.publish_gauges(&metrics, 0);
                tracing::warn!(node = %redact(url), "redis subscriber connection lost; reconnecting");
            }
            Ok(Err(e)) => {
                metrics.subscribed.store(false, Relaxed);
                tracing::warn!(node = %redact(url), error = %crate::secrets::scrub(&e.to_string(), url), "redis subscriber cannot connect");
                target.failed();
            }
            Err(_) => {
                metrics.subscribed.store(false, Relaxed);
                tracing::warn!(node = %redact(url), "redis subscriber connect timed out");
                target.failed();
            }
        }
        st.during(tokio::time::sleep(backoff.next())).await;
    }
}

/// When `at` is, or never.
async fn release_due(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next push of the sharded connections (pending without them).
async fn next_push(
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>>,
) -> redis::PushInfo {
    match rx {
        Some(r) => match r.recv().await {
            Some(p) => p,
            None => redis::PushInfo {
                kind: redis::PushKind::Disconnection,
                data: Vec::new(),
            },
        },
        None => std::future::pending().await,
    }
}

/// A push from a sharded connection: deliver an `smessage`; false (start
/// over) when a connection was lost or Redis unsubscribed a channel on its
/// own (its slot moved, or its master was demoted). The confirmations of
/// our own SUNSUBSCRIBEs (`own`, counted per channel when sent) are not
/// news. Starting over also drops the connections, so an unsolicited
/// `sunsubscribe` that the client library took as the reply of a pending
/// command cannot skew later replies.
fn on_push(
    p: redis::PushInfo,
    own: Option<&std::sync::Mutex<HashMap<String, u32>>>,
    cfg: &BridgeConfig,
    server_id: &str,
    handle: &dyn LocalDelivery,
    metrics: &BridgeMetrics,
) -> bool {
    use redis::{PushKind, Value};
    match p.kind {
        PushKind::SMessage => {
            if let Some(Value::BulkString(payload)) = p.data.get(1) {
                on_envelope(payload, cfg, server_id, handle, metrics);
            }
            true
        }
        PushKind::SUnsubscribe => {
            let channel = match p.data.first() {
                Some(Value::BulkString(c)) => String::from_utf8_lossy(c).into_owned(),
                _ => String::new(),
            };
            let ours = own.is_some_and(|own| {
                let Ok(mut own) = own.lock() else {
                    return false;
                };
                match own.get_mut(&channel) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        true
                    }
                    Some(_) => {
                        own.remove(&channel);
                        true
                    }
                    None => false,
                }
            });
            if !ours {
                tracing::warn!(channel = ?channel, "redis cluster unsubscribed a channel on its own (slot moved?); resubscribing everything");
            }
            ours
        }
        PushKind::Disconnection => {
            tracing::warn!(
                "redis cluster: a sharded connection was lost; resubscribing everything"
            );
            false
        }
        _ => true,
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
