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

/// Forwards custom client events (the reference's `messageHandler`) as
/// JSON `{serverId, clientId, userId, event, data, id}` to a Redis channel
/// and/or a webhook, then calls the inner hooks. Forwarding never blocks
/// the shard: the Redis side goes through the bridge's outbox, the webhook
/// call runs on the control thread.
pub struct Forwarding {
    inner: std::sync::Arc<dyn Hooks>,
    channel: Option<String>,
    webhook: Option<(reqwest::Client, String)>,
    publisher: Option<crate::bridge::Publisher>,
    control: crate::control::ControlHandle,
    server_id: String,
    metrics: std::sync::Arc<crate::metrics::EventsMetrics>,
}

/// Time allowed for one events-webhook POST.
const EVENTS_WEBHOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Forwarding {
    /// Wrap `inner`. `publisher` must be set when `channel` is.
    pub fn new(
        inner: std::sync::Arc<dyn Hooks>,
        channel: Option<String>,
        webhook: Option<String>,
        publisher: Option<crate::bridge::Publisher>,
        control: crate::control::ControlHandle,
        metrics: std::sync::Arc<crate::metrics::EventsMetrics>,
    ) -> Result<Forwarding, crate::config::ConfigError> {
        let webhook = match webhook {
            Some(url) => {
                let client = reqwest::Client::builder()
                    .timeout(EVENTS_WEBHOOK_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| crate::config::ConfigError {
                        key: "--events-webhook",
                        message: e.to_string(),
                    })?;
                Some((client, url))
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
            control,
            server_id,
            metrics,
        })
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
        if let (Some(channel), Some(p)) = (&self.channel, &self.publisher)
            && p.publish(crate::bridge::Outgoing {
                channel: channel.clone(),
                payload: json.clone(),
                kind: None,
            })
        {
            self.metrics.to_channel.fetch_add(1, Relaxed);
        }
        if let Some((client, url)) = &self.webhook {
            let req = client
                .post(url)
                .header("content-type", "application/json")
                .body(json);
            let metrics = self.metrics.clone();
            self.control.spawn(Box::pin(async move {
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        metrics.webhook_ok.fetch_add(1, Relaxed);
                    }
                    Ok(r) => {
                        metrics.webhook_failed.fetch_add(1, Relaxed);
                        tracing::debug!(status = %r.status(), "events webhook refused an event");
                    }
                    Err(e) => {
                        metrics.webhook_failed.fetch_add(1, Relaxed);
                        // Without the URL: it may carry credentials.
                        tracing::debug!(error = %e.without_url(), "events webhook call failed");
                    }
                }
            }));
        }
        if self.inner.wants_messages() {
            self.inner.on_message(m)
        } else {
            None
        }
    }
}
