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
    /// Whether [`Hooks::on_open`], [`Hooks::on_connect`] or
    /// [`Hooks::on_disconnect`] do anything; when false the shard skips
    /// building their arguments (three strings per connection).
    fn wants_lifecycle(&self) -> bool {
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
    fn wants_lifecycle(&self) -> bool {
        false
    }
}

/// Where and how custom client events are POSTed (`--events-webhook*`).
#[derive(Debug, Clone)]
pub struct EventsWebhook {
    /// The URL.
    pub url: String,
    /// Events waiting for a worker; past it new events are dropped and
    /// counted.
    pub queue: usize,
    /// POSTs in flight at once. Every POST goes to the one host of `url`,
    /// so this also caps the connections to it (idle ones are reused).
    pub concurrency: usize,
    /// Time allowed for one POST (connect, send, answer).
    pub timeout: std::time::Duration,
}

/// Forwards custom client events (the reference's `messageHandler`) as
/// JSON `{serverId, clientId, userId, event, data, id}` to a Redis channel
/// and/or a webhook, then calls the inner hooks. Forwarding never blocks
/// the shard and never holds more than it was given room for: the Redis
/// side goes through the bridge's bounded outbox; the webhook side through
/// a bounded queue that `concurrency` POSTs at a time drain on the control
/// thread. What does not fit is dropped and counted
/// (`ignis_ws_events_dropped_total{reason}`), so a webhook that hangs costs
/// at most `concurrency` sockets and `queue` events.
pub struct Forwarding {
    inner: std::sync::Arc<dyn Hooks>,
    channel: Option<String>,
    webhook: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    publisher: Option<crate::bridge::Publisher>,
    server_id: String,
    metrics: std::sync::Arc<crate::metrics::EventsMetrics>,
}

impl Forwarding {
    /// Wrap `inner`. `publisher` must be set when `channel` is. With a
    /// webhook, starts its dispatcher on the control thread.
    pub fn new(
        inner: std::sync::Arc<dyn Hooks>,
        channel: Option<String>,
        webhook: Option<EventsWebhook>,
        publisher: Option<crate::bridge::Publisher>,
        control: crate::control::ControlHandle,
        metrics: std::sync::Arc<crate::metrics::EventsMetrics>,
    ) -> Result<Forwarding, crate::config::ConfigError> {
        let webhook = match webhook {
            Some(w) => {
                let err = |key: &'static str, message: String| crate::config::ConfigError {
                    key,
                    message,
                };
                if w.queue == 0 {
                    return Err(err("--events-webhook-queue", "must be > 0".into()));
                }
                if w.concurrency == 0 {
                    return Err(err("--events-webhook-concurrency", "must be > 0".into()));
                }
                let url = reqwest::Url::parse(&w.url)
                    .map_err(|e| err("--events-webhook", format!("not a URL: {e}")))?;
                let client = reqwest::Client::builder()
                    .timeout(w.timeout)
                    .connect_timeout(w.timeout)
                    .pool_max_idle_per_host(w.concurrency)
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("ignis-ws/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| err("--events-webhook", e.to_string()))?;
                let (tx, rx) = tokio::sync::mpsc::channel(w.queue);
                control.spawn(Box::pin(dispatch(
                    rx,
                    client,
                    url,
                    w.concurrency,
                    metrics.clone(),
                )));
                Some(tx)
            }
            None => None,
        };
        let server_id = publisher
            .as_ref()
            .map(|p| p.server_id().to_string())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        Ok(Forwarding {
            inner,
            channel,
            webhook,
            publisher,
            server_id,
            metrics,
        })
    }
}

/// The events-webhook dispatcher: takes an event only when one of the
/// `concurrency` POST slots is free, so events wait in the bounded queue,
/// not in tasks or sockets.
async fn dispatch(
    mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    client: reqwest::Client,
    url: reqwest::Url,
    concurrency: usize,
    metrics: std::sync::Arc<crate::metrics::EventsMetrics>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    // One WARN per 10 s at most: a dead webhook must not flood the log.
    let warnings = std::sync::Arc::new(std::sync::Mutex::new(crate::throttle::Throttle::new(
        std::time::Duration::from_secs(10),
    )));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(body) = rx.recv().await else {
            return;
        };
        metrics.webhook_queued.fetch_sub(1, Relaxed);
        let req = client
            .post(url.clone())
            .header("content-type", "application/json")
            .body(body);
        let metrics = metrics.clone();
        let warnings = warnings.clone();
        tokio::spawn(async move {
            let failure = match req.send().await {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("status {}", r.status())),
                // Without the URL: it may carry credentials.
                Err(e) => Some(if e.is_timeout() {
                    "timed out".to_owned()
                } else {
                    e.without_url().to_string()
                }),
            };
            drop(slot);
            match failure {
                None => {
                    metrics.webhook_ok.fetch_add(1, Relaxed);
                }
                Some(why) => {
                    metrics.webhook_failed.fetch_add(1, Relaxed);
                    tracing::debug!(error = %why, "events webhook call failed");
                    let warn = warnings
                        .lock()
                        .ok()
                        .and_then(|mut t| t.hit(std::time::Instant::now()));
                    if let Some(failures) = warn {
                        tracing::warn!(
                            error = %why,
                            failures,
                            failed_total = metrics.webhook_failed.load(Relaxed),
                            "events webhook calls are failing (see ignis_ws_events_forwarded_total)"
                        );
                    }
                }
            }
        });
    }
}

/// The forwarded event, keys in this order; absent values are omitted
/// like `undefined` in `JSON.stringify`.
#[derive(serde::Serialize)]
struct ForwardedEvent<'a> {
    #[serde(rename = "serverId")]
    server_id: &'a str,
    #[serde(rename = "clientId")]
    client_id: &'a str,
    #[serde(rename = "userId", skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

impl Hooks for Forwarding {
    fn on_open(&self, o: Opened) -> Option<BoxFuture<()>> {
        self.inner.on_open(o)
    }
    fn on_connect(&self, c: Connected) -> Option<BoxFuture<()>> {
        self.inner.on_connect(c)
    }
    fn on_disconnect(&self, d: Disconnected) -> Option<BoxFuture<()>> {
        self.inner.on_disconnect(d)
    }
    fn wants_messages(&self) -> bool {
        true
    }
    fn wants_lifecycle(&self) -> bool {
        self.inner.wants_lifecycle()
    }
    fn on_message(&self, m: Message) -> Option<BoxFuture<()>> {
        use std::sync::atomic::Ordering::Relaxed;
        let body = ForwardedEvent {
            server_id: &self.server_id,
            client_id: &m.client_id,
            user_id: m.user_id.as_deref(),
            event: &m.event,
            data: m.data.as_ref(),
            id: m.id.as_deref(),
        };
        let Ok(json) = serde_json::to_vec(&body) else {
            return self.inner.on_message(m);
        };
        let json = bytes::Bytes::from(json);
        if let (Some(channel), Some(p)) = (&self.channel, &self.publisher) {
            if p.publish(crate::bridge::Outgoing {
                channel: channel.clone(),
                payload: json.clone(),
                kind: None,
            }) {
                self.metrics.to_channel.fetch_add(1, Relaxed);
            } else {
                self.metrics
                    .dropped_channel_outbox_full
                    .fetch_add(1, Relaxed);
            }
        }
        if let Some(tx) = &self.webhook {
            match tx.try_send(json) {
                Ok(()) => {
                    self.metrics.webhook_queued.fetch_add(1, Relaxed);
                }
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    self.metrics
                        .dropped_webhook_queue_full
                        .fetch_add(1, Relaxed);
                }
                // The control thread has stopped: shutting down.
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        if self.inner.wants_messages() {
            self.inner.on_message(m)
        } else {
            None
        }
    }
}
