//! The bridge's receiving half: one connection on the control thread
//! SUBSCRIBEs `ws:broadcast` and either the channels this process's
//! clients need (`--redis-subscribe interest`, [`super::interest`]) or the
//! patterns `ws:room:*`, `ws:client:*`, `ws:user:*` (`pattern`); it pings
//! itself to notice a silent partition, and re-subscribes with backoff
//! whenever it is lost. The connection is our own RESP2 one ([`resp`]):
//! the wanted channels are held once, in [`Subscriptions`]. Each envelope is parsed
//! once, its client frame encoded once, and the same `Bytes` goes to every
//! shard that may hold recipients ([`LocalDelivery::deliver`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::admin::{self, AdminInput};
use super::cluster::{ShardedSubs, SlotMap};
use super::conn::{Backoff, BridgeConfig, CONNECT_TIMEOUT, Endpoint, PUBLISH_TIMEOUT, redact};
use super::envelope::{self, DropReason, Kind};
use super::interest::{BATCH, BridgeInput, Subscriptions};
use super::resp::{self, Reply};
use super::{Link, kind_index};
use crate::delivery::{ClientId, Delivery, SendError, Target};
use crate::metrics::BridgeMetrics;
use crate::proto::frame::{OpCode, server_frame_with};

/// How often the subscriber checks that its connection is alive.
const SUBSCRIBER_PING: Duration = Duration::from_secs(5);

/// How long after the last subscription change the control thread hands
/// the memory it freed back to the OS (see [`crate::mem`]): a storm of
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

/// Messages that may arrive between the fixed channels' SUBSCRIBE and
/// its last confirmation are kept (up to this many bytes) and delivered
/// once the connection counts as subscribed.
const MAX_EARLY_BYTES: usize = 16 << 20;

/// Connect, authenticate, SUBSCRIBE the fixed channels and PSUBSCRIBE the
/// patterns, and wait until Redis confirmed each; messages heard meanwhile
/// come back with the connection.
async fn connect_subscribed(
    url: &str,
    ca: Option<&[u8]>,
    fixed: &[String],
    patterns: &[String],
    max_payload: usize,
) -> std::io::Result<(resp::Conn, Vec<Reply>)> {
    let mut conn = resp::connect(url, ca, max_payload).await?;
    let mut cmd = Vec::new();
    resp::command(&mut cmd, "SUBSCRIBE", fixed.iter().map(|c| c.as_bytes()));
    if !patterns.is_empty() {
        resp::command(
            &mut cmd,
            "PSUBSCRIBE",
            patterns.iter().map(|c| c.as_bytes()),
        );
    }
    conn.send(&cmd).await?;
    let mut left = fixed.len() + patterns.len();
    let mut early = Vec::new();
    let mut early_bytes = 0;
    while left > 0 {
        match conn.next().await? {
            Reply::Confirmed => left -= 1,
            Reply::Error(e) => {
                return Err(std::io::Error::other(format!(
                    "redis refused SUBSCRIBE: {e}"
                )));
            }
            r @ Reply::Message { .. } | r @ Reply::Oversized { .. } => {
                // What each kept reply holds: its channel, its payload (a
                // slice of the read buffer) and the entry itself.
                early_bytes += match &r {
                    Reply::Message { channel, payload } => channel.len() + payload.len(),
                    Reply::Oversized { channel, .. } => channel.len(),
                    _ => 0,
                } + 64;
                if early_bytes > MAX_EARLY_BYTES {
                    return Err(std::io::Error::other(
                        "too many messages before the subscription was confirmed",
                    ));
                }
                early.push(r);
            }
            Reply::Pong | Reply::Status(_) => {}
        }
    }
    Ok((conn, early))
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

/// The subscription batch being applied.
enum InFlight {
    /// SUBSCRIBE / UNSUBSCRIBE sent on the subscriber's connection:
    /// confirmations still to come, and when to give up on them.
    Local {
        left: usize,
        deadline: tokio::time::Instant,
    },
    /// Applied on the cluster's masters (sharded pub/sub).
    Sharded(std::pin::Pin<Box<dyn Future<Output = redis::RedisResult<()>> + Send>>),
}

/// The batch in flight ended: `Ok` when a sharded one finished, `Err`
/// when either kind failed or timed out. Pending while there is none (a
/// local batch ends with its last confirmation, in the reply branch).
async fn finish(f: &mut Option<InFlight>) -> Result<(), String> {
    let r = match f {
        Some(InFlight::Local { deadline, .. }) => {
            tokio::time::sleep_until(*deadline).await;
            Err("subscription command timed out".to_string())
        }
        Some(InFlight::Sharded(f)) => f.await.map_err(|e| e.to_string()),
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
            connect_subscribed(
                url,
                cfg.tls_ca.as_deref(),
                &fixed_channels,
                &fixed_patterns,
                cfg.max_message,
            ),
        );
        match st.during(connect).await {
            Ok(Ok((mut conn, early))) => {
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
                for r in early {
                    on_reply_message(r, &cfg, &server_id, &*handle, &metrics, &admin);
                }
                let mut in_flight: Option<InFlight> = None;
                // The settle marks of the batch in flight.
                let mut in_flight_marks: Vec<u64> = Vec::new();
                // A connection that dies without a FIN (a partition) never
                // ends the stream: ping it to find out.
                let mut ping = tokio::time::interval(SUBSCRIBER_PING);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ping.tick().await;
                // A PING went out and nothing at all has come back since
                // (its PONG queues behind the messages sent before it, so
                // any reply proves the connection alive).
                let mut ping_outstanding = false;
                // Set when a batch went out: the memory is released once
                // the changes stop.
                let mut release_at: Option<tokio::time::Instant> = None;
                loop {
                    let mut sent_failed = false;
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
                        match &sharded {
                            Some(sh) => {
                                let sh = sh.clone();
                                in_flight = Some(InFlight::Sharded(Box::pin(async move {
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
                                })));
                            }
                            None => {
                                let mut cmd = Vec::new();
                                if !b.subscribe.is_empty() {
                                    resp::command(
                                        &mut cmd,
                                        "SUBSCRIBE",
                                        b.subscribe.iter().map(|c| c.as_bytes()),
                                    );
                                }
                                if !b.unsubscribe.is_empty() {
                                    resp::command(
                                        &mut cmd,
                                        "UNSUBSCRIBE",
                                        b.unsubscribe.iter().map(|c| c.as_bytes()),
                                    );
                                }
                                in_flight = Some(InFlight::Local {
                                    left: b.len(),
                                    deadline: tokio::time::Instant::now() + PUBLISH_TIMEOUT,
                                });
                                if !matches!(
                                    tokio::time::timeout(PUBLISH_TIMEOUT, conn.send(&cmd)).await,
                                    Ok(Ok(()))
                                ) {
                                    sent_failed = true;
                                    break;
                                }
                            }
                        }
                    }
                    if sent_failed {
                        tracing::warn!(node = %redact(url), "redis subscription command could not be sent");
                        break;
                    }
                    st.publish_gauges(&metrics, fixed);
                    tokio::select! {
                        r = conn.next() => {
                            if r.is_ok() {
                                ping_outstanding = false;
                            }
                            match r {
                                Ok(Reply::Confirmed) => {
                                    if let Some(InFlight::Local { left, .. }) = &mut in_flight {
                                        *left = left.saturating_sub(1);
                                        if *left == 0 {
                                            in_flight = None;
                                            let marks = std::mem::take(&mut in_flight_marks);
                                            st.answer(&marks);
                                        }
                                    }
                                }
                                Ok(Reply::Pong) => {}
                                Ok(r @ (Reply::Message { .. } | Reply::Oversized { .. })) => {
                                    on_reply_message(r, &cfg, &server_id, &*handle, &metrics, &admin);
                                }
                                Ok(Reply::Error(e)) => {
                                    tracing::warn!(node = %redact(url), error = %e, "redis refused a subscription command");
                                    break;
                                }
                                Ok(Reply::Status(_)) => {}
                                Err(e) => {
                                    tracing::warn!(node = %redact(url), error = %e, "redis subscriber connection failed");
                                    break;
                                }
                            }
                        }
                        r = finish(&mut in_flight) => {
                            if let Err(e) = r {
                                tracing::warn!(node = %redact(url), error = %crate::secrets::scrub(&e, url), "redis subscription command failed");
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
                            st.subs.shrink();
                            crate::mem::release_free_memory();
                        }
                        _ = ping.tick() => {
                            // The last PING (a tick ago) was not answered,
                            // or this one cannot be sent: dead.
                            if ping_outstanding {
                                tracing::warn!(node = %redact(url), "redis subscriber connection does not answer PING");
                                break;
                            }
                            let sent = tokio::time::timeout(PUBLISH_TIMEOUT, conn.send(resp::PING)).await;
                            if !matches!(sent, Ok(Ok(()))) {
                                break;
                            }
                            ping_outstanding = true;
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

/// A message heard on the subscriber's connection: a control message to
/// the admin task (bounded, never queued without bound), anything else an
/// envelope for this process's clients. A payload past the limit was
/// skipped unread and is counted as the envelope limit counts it.
fn on_reply_message(
    r: Reply,
    cfg: &BridgeConfig,
    server_id: &str,
    handle: &dyn LocalDelivery,
    metrics: &BridgeMetrics,
    admin: &flume::Sender<AdminInput>,
) {
    let control = |channel: &[u8]| channel.starts_with(b"ignis-ws:");
    match r {
        Reply::Message { channel, payload } if control(&channel) => {
            to_admin(&payload, metrics, admin);
        }
        Reply::Message { payload, .. } => {
            on_envelope(&payload, cfg, server_id, handle, metrics);
        }
        Reply::Oversized { channel, .. } if control(&channel) => {
            metrics.control_dropped.fetch_add(1, Relaxed);
        }
        Reply::Oversized { .. } => count_dropped(metrics, DropReason::TooLarge),
        _ => {}
    }
}

/// A control message for the admin task: bounded before it is copied, and
/// never queued without bound.
fn to_admin(payload: &[u8], metrics: &BridgeMetrics, admin: &flume::Sender<AdminInput>) {
    if payload.len() > admin::MAX_CONTROL
        || admin
            .try_send(AdminInput::FromRedis(payload.to_vec()))
            .is_err()
    {
        metrics.control_dropped.fetch_add(1, Relaxed);
    }
}

/// One envelope dropped for `reason`.
fn count_dropped(metrics: &BridgeMetrics, reason: DropReason) {
    let i = DropReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(0);
    metrics.envelopes_dropped[i].fetch_add(1, Relaxed);
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
            count_dropped(metrics, reason);
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
