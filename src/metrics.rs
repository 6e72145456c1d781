//! Counters and gauges. Each shard owns one [`ShardMetrics`] and is its
//! only writer (relaxed atomics, no contention); `/metrics` and `/health`
//! read and sum them from any thread.

use std::fmt::{Display, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use crate::proto::close::{METRIC_CODES, metric_slot};

/// One shard's numbers.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// Connections by state (gauges).
    pub conns_unauthorized: AtomicI64,
    pub conns_authenticating: AtomicI64,
    pub conns_authenticated: AtomicI64,
    /// Connections accepted (TCP) since start.
    pub accepted_total: AtomicU64,
    /// Times the accept loop waited for an upgrade to end
    /// (`--max-upgrades-in-flight`).
    pub accept_pauses_total: AtomicU64,
    /// Upgrades completed since start.
    pub upgrades_total: AtomicU64,
    /// Of those, upgraded in the accept loop, from the request that came
    /// with the connection (no task of their own).
    pub upgrades_immediate_total: AtomicU64,
    /// Connections refused because `max_connections` was reached.
    pub refused_total: AtomicU64,
    /// WebSocket upgrades refused: `Origin` not allowed (403), the
    /// client address at `--max-conns-per-ip` (503), over
    /// `--connect-rate-limit` (503).
    pub upgrades_refused_origin: AtomicU64,
    pub upgrades_refused_per_ip: AtomicU64,
    pub upgrades_refused_rate: AtomicU64,
    /// TLS handshakes completed, failed (bad ClientHello, no common
    /// version or suite, timeout, peer gone) and refused at
    /// `--tls-max-handshakes`.
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_errors: AtomicU64,
    pub tls_handshakes_refused: AtomicU64,
    /// TLS handshakes under way (gauge).
    pub tls_handshaking: AtomicI64,
    /// TLS connections that ended on a record-layer error (bad record,
    /// failed decryption, fatal alert).
    pub tls_record_errors: AtomicU64,
    /// HTTP requests answered (health, metrics, errors).
    pub http_requests_total: AtomicU64,
    /// Handshakes that failed (bad request, timeout, too large).
    pub handshake_errors_total: AtomicU64,
    /// `accept` calls that failed (EMFILE, ENFILE, ENOBUFS, …).
    pub accept_errors: AtomicU64,
    /// `POST /api/publish` refused with 503 because
    /// `--api-max-pending-bodies` bodies were being read.
    pub publish_bodies_refused: AtomicU64,
    /// Authentication results.
    pub auth_accepted: AtomicU64,
    pub auth_refused: AtomicU64,
    pub auth_errors: AtomicU64,
    pub auth_timeouts: AtomicU64,
    /// Data messages received from clients, and their bytes.
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Frames queued to clients, and their bytes.
    pub messages_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Bytes actually written to sockets, and the write syscalls used.
    pub bytes_written: AtomicU64,
    pub write_calls: AtomicU64,
    /// Frames dropped by `--slow-client drop` or for a closing client.
    pub frames_dropped: AtomicU64,
    /// Bytes of deliveries waiting in this shard's channel (gauge; at most
    /// `--shard-queue-limit`).
    pub queued_bytes: AtomicI64,
    /// Deliveries refused because this shard's channel held
    /// `--shard-queue-limit` bytes.
    pub deliveries_dropped_queue_full: AtomicU64,
    /// Clients closed by `--slow-client close`.
    pub slow_clients_closed: AtomicU64,
    /// Upgraded connections parked in the shard's epoll (the readiness
    /// receive path) since start.
    pub parked_total: AtomicU64,
    /// Close frames sent, by code (see [`METRIC_CODES`]; last = other).
    pub closes_by_code: [AtomicU64; METRIC_CODES.len() + 1],
    /// Join requests and rooms joined/refused by the validator.
    pub rooms_joined: AtomicU64,
    pub rooms_refused: AtomicU64,
    pub rooms_over_limit: AtomicU64,
    /// Joins of a room named by another client's id (any UUID form),
    /// always refused.
    pub rooms_client_id_refused: AtomicU64,
    /// Sessions refused by `--max-sessions-per-user`.
    pub sessions_refused: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Current rooms and users on this shard (gauges).
    pub rooms: AtomicI64,
    pub users: AtomicI64,
    /// Accepted connections still in their HTTP upgrade.
    pub handshaking: AtomicI64,
    /// `POST /api/publish` bodies being read now.
    pub publish_bodies: AtomicI64,
    /// Clients that completed the encryption handshake and are connected
    /// (gauge).
    pub encrypted_clients: AtomicI64,
    /// Handshakes refused (missing or bad `publicKey`): closed with 4004.
    pub encryption_handshakes_failed: AtomicU64,
    /// Messages encrypted for encrypted clients (each one its own
    /// AES-GCM operation, off the shared-frame path).
    pub messages_encrypted: AtomicU64,
    /// Inbound `encrypted` messages that failed to decrypt (bad tag, bad
    /// base64, wrong shape): answered with an error and dropped.
    pub decrypt_failures: AtomicU64,
}

impl ShardMetrics {
    /// Add `n` to a counter.
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Count a close frame sent with `code`.
    pub fn close_sent(&self, code: u16) {
        self.closes_by_code[metric_slot(code)].fetch_add(1, Relaxed);
    }

    /// Connections currently open on this shard.
    pub fn connections(&self) -> i64 {
        self.conns_unauthorized.load(Relaxed)
            + self.conns_authenticating.load(Relaxed)
            + self.conns_authenticated.load(Relaxed)
    }
}

/// Numbers of the Redis bridge (one per process).
#[derive(Debug, Default)]
pub struct BridgeMetrics {
    /// The subscriber connection is up and subscribed.
    pub subscribed: std::sync::atomic::AtomicBool,
    /// The publisher connection is up.
    pub publisher_up: std::sync::atomic::AtomicBool,
    /// Envelopes received and delivered locally, by type
    /// (client, user, room, broadcast).
    pub envelopes_in: [AtomicU64; 4],
    /// Envelopes dropped, by reason (see `bridge::envelope::DropReason`).
    pub envelopes_dropped: [AtomicU64; 8],
    /// Envelopes of our own `serverId`, skipped.
    pub own_skipped: AtomicU64,
    /// Messages published, by type.
    pub published: [AtomicU64; 4],
    /// Custom client events forwarded to the events channel.
    pub events_forwarded: AtomicU64,
    /// Publishes dropped because the outbox was full.
    pub outbox_dropped: AtomicU64,
    /// Messages waiting in the outbox now.
    pub outbox_depth: AtomicI64,
    /// Reconnections of either connection.
    pub reconnects: AtomicU64,
    /// Channels the subscriber connection is subscribed to (exact
    /// channels and patterns; `--redis-subscribe interest` changes it).
    pub channels: AtomicI64,
    /// Rooms, users and clients whose subscription change waits for a
    /// command (`--redis-subscribe interest`).
    pub subscription_backlog: AtomicI64,
    /// Channels in SUBSCRIBE (0) and UNSUBSCRIBE (1) commands sent.
    pub subscription_changes: [AtomicU64; 2],
    /// SUBSCRIBE (0) and UNSUBSCRIBE (1) commands sent.
    pub subscription_commands: [AtomicU64; 2],
    /// Time the last (re)subscription of every wanted channel took, ms.
    pub resubscribe_ms: AtomicI64,
    /// Control messages (`ignis-ws:control`, this node's channel) taken
    /// from other nodes.
    pub control_in: AtomicU64,
    /// Control messages dropped: malformed, over the bounds, unknown op.
    pub control_dropped: AtomicU64,
    /// Control messages published.
    pub control_out: AtomicU64,
    /// ignis-ws nodes known to be alive (by their hellos), this one
    /// included.
    pub cluster_nodes: AtomicI64,
}

/// Forwarding of custom client events (`--events-channel`,
/// `--events-webhook`).
#[derive(Debug, Default)]
pub struct EventsMetrics {
    /// Events queued for the Redis events channel.
    pub to_channel: AtomicU64,
    /// Events POSTed to the webhook with a 2xx answer.
    pub webhook_ok: AtomicU64,
    /// Webhook POSTs that failed (status, timeout, connection).
    pub webhook_failed: AtomicU64,
    /// Events dropped because `--events-webhook-queue` events were waiting.
    pub dropped_webhook_queue_full: AtomicU64,
    /// Events dropped because the Redis outbox was full.
    pub dropped_channel_outbox_full: AtomicU64,
    /// Events waiting for a webhook worker now (gauge).
    pub webhook_queued: AtomicI64,
}

/// All shards' metrics plus process facts.
#[derive(Debug)]
pub struct Registry {
    /// The Redis bridge, when Redis is configured.
    pub bridge: Option<Arc<BridgeMetrics>>,
    /// Custom-event forwarding, when configured.
    pub events: Option<Arc<EventsMetrics>>,
    pub shards: Vec<Arc<ShardMetrics>>,
    pub started: Instant,
    /// `io_uring` or `epoll`.
    pub io_backend: &'static str,
    pub max_connections: usize,
    /// The control thread's task counters.
    pub control: Arc<crate::control::ControlStats>,
    /// Shutting down: `/ready` answers 503.
    pub draining: std::sync::atomic::AtomicBool,
}

const KINDS: [&str; 4] = ["client", "user", "room", "broadcast"];
const DROP_REASONS: [&str; 8] = [
    "too_large",
    "bad_json",
    "not_an_object",
    "missing_server_id",
    "missing_event",
    "unknown_type",
    "missing_target",
    "bad_field_type",
];

/// One sample per type (client, user, room, broadcast).
fn by_kind(a: &[AtomicU64; 4]) -> impl Iterator<Item = (String, u64)> + '_ {
    KINDS
        .iter()
        .zip(a)
        .map(|(k, v)| (label("type", k), v.load(Relaxed)))
}

/// Samples of a `[subscribe, unsubscribe]` pair, labelled `op`.
fn by_op(a: &[AtomicU64; 2]) -> impl Iterator<Item = (String, u64)> + '_ {
    ["subscribe", "unsubscribe"]
        .iter()
        .zip(a)
        .map(|(op, v)| (label("op", op), v.load(Relaxed)))
}

impl Registry {
    fn write_bridge(&self, o: &mut String, b: &BridgeMetrics) -> std::fmt::Result {
        family(
            o,
            "redis_connected",
            "Redis connections up (1) or down (0).",
            "gauge",
            [
                ("subscriber", &b.subscribed),
                ("publisher", &b.publisher_up),
            ]
            .map(|(conn, up)| (label("conn", conn), u8::from(up.load(Relaxed)))),
        )?;
        family(
            o,
            "redis_envelopes_in_total",
            "Envelopes from Redis delivered locally, by type.",
            "counter",
            by_kind(&b.envelopes_in),
        )?;
        family(
            o,
            "redis_envelopes_dropped_total",
            "Envelopes from Redis dropped, by reason.",
            "counter",
            DROP_REASONS
                .iter()
                .zip(&b.envelopes_dropped)
                .chain([(&"own_server_id", &b.own_skipped)])
                .map(|(r, v)| (label("reason", r), v.load(Relaxed))),
        )?;
        family(
            o,
            "redis_published_total",
            "Messages published to Redis, by type.",
            "counter",
            by_kind(&b.published),
        )?;
        family(
            o,
            "redis_subscription_changes_total",
            "Channels subscribed and unsubscribed by the subscriber, by op.",
            "counter",
            by_op(&b.subscription_changes),
        )?;
        family(
            o,
            "redis_subscription_commands_total",
            "SUBSCRIBE and UNSUBSCRIBE commands sent, by op.",
            "counter",
            by_op(&b.subscription_commands),
        )?;
        for (name, help, kind, v) in [
            (
                "redis_subscribed_channels",
                "Channels and patterns the subscriber connection listens to.",
                "gauge",
                b.channels.load(Relaxed),
            ),
            (
                "redis_subscription_backlog",
                "Rooms, users and clients whose subscription change waits for Redis.",
                "gauge",
                b.subscription_backlog.load(Relaxed),
            ),
            (
                "redis_resubscribe_last_ms",
                "Time the last subscription of every wanted channel took after a (re)connect, ms.",
                "gauge",
                b.resubscribe_ms.load(Relaxed),
            ),
            (
                "cluster_nodes",
                "ignis-ws nodes on this Redis known to be alive, this one included.",
                "gauge",
                b.cluster_nodes.load(Relaxed),
            ),
            (
                "redis_control_in_total",
                "Control messages (cluster-wide admin actions) taken from other nodes.",
                "counter",
                b.control_in.load(Relaxed) as i64,
            ),
            (
                "redis_control_dropped_total",
                "Control messages dropped: malformed, over the bounds or unknown.",
                "counter",
                b.control_dropped.load(Relaxed) as i64,
            ),
            (
                "redis_control_out_total",
                "Control messages published.",
                "counter",
                b.control_out.load(Relaxed) as i64,
            ),
            (
                "redis_events_forwarded_total",
                "Custom client events forwarded to the events channel.",
                "counter",
                b.events_forwarded.load(Relaxed) as i64,
            ),
            (
                "redis_outbox_dropped_total",
                "Publishes dropped because the outbox was full.",
                "counter",
                b.outbox_dropped.load(Relaxed) as i64,
            ),
            (
                "redis_outbox_depth",
                "Messages waiting for Redis.",
                "gauge",
                b.outbox_depth.load(Relaxed),
            ),
            (
                "redis_reconnects_total",
                "Redis reconnections.",
                "counter",
                b.reconnects.load(Relaxed) as i64,
            ),
        ] {
            family(o, name, help, kind, [("", v)])?;
        }
        Ok(())
    }

    /// Open connections in the process.
    pub fn connections(&self) -> i64 {
        self.shards.iter().map(|s| s.connections()).sum()
    }

    fn sum(&self, f: impl Fn(&ShardMetrics) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| f(s).load(Relaxed)).sum()
    }

    /// `ok`, or `degraded` when Redis is configured but not connected
    /// (local delivery goes on regardless).
    pub fn status(&self) -> &'static str {
        match &self.bridge {
            Some(b) if !(b.subscribed.load(Relaxed) && b.publisher_up.load(Relaxed)) => "degraded",
            _ => "ok",
        }
    }

    /// `/health` body.
    pub fn health_json(&self) -> String {
        let redis = self.bridge.as_ref().map(|b| {
            serde_json::json!({
                "subscribed": b.subscribed.load(Relaxed),
                "publisherUp": b.publisher_up.load(Relaxed),
                "outboxDepth": b.outbox_depth.load(Relaxed),
            })
        });
        serde_json::json!({
            "status": self.status(),
            "redis": redis,
            "connections": self.connections(),
            "shards": self.shards.len(),
            "io": self.io_backend,
            "maxConnections": self.max_connections,
            "uptimeSeconds": self.started.elapsed().as_secs(),
        })
        .to_string()
    }

    /// `/metrics` body, Prometheus text format 0.0.4.
    pub fn prometheus(&self) -> String {
        let mut o = String::with_capacity(4096);
        let _ = self.write_prometheus(&mut o);
        o
    }

    fn write_prometheus(&self, o: &mut String) -> std::fmt::Result {
        let shards = || self.shards.iter().enumerate();
        family(
            o,
            "connections",
            "Open WebSocket connections by state and shard.",
            "gauge",
            shards().flat_map(|(i, s)| {
                [
                    ("unauthorized", &s.conns_unauthorized),
                    ("authenticating", &s.conns_authenticating),
                    ("authenticated", &s.conns_authenticated),
                ]
                .map(|(state, v)| {
                    (
                        format!("{{shard=\"{i}\",state=\"{state}\"}}"),
                        v.load(Relaxed),
                    )
                })
            }),
        )?;
        for (name, help, f) in SHARD_GAUGES {
            let samples = shards().map(|(i, s)| (label("shard", i), f(s).load(Relaxed)));
            family(o, name, help, "gauge", samples)?;
        }
        for (name, help, f) in COUNTERS {
            family(o, name, help, "counter", [("", self.sum(f))])?;
        }
        family(
            o,
            "auth_total",
            "Authentication results.",
            "counter",
            [
                ("accepted", (|s| &s.auth_accepted) as Getter),
                ("refused", |s| &s.auth_refused),
                ("error", |s| &s.auth_errors),
                ("timeout", |s| &s.auth_timeouts),
            ]
            .map(|(result, f)| (label("result", result), self.sum(f))),
        )?;
        let codes = METRIC_CODES
            .iter()
            .map(|c| c.to_string())
            .chain(["other".to_string()]);
        family(
            o,
            "closes_total",
            "Close frames sent by the server, by close code.",
            "counter",
            codes.enumerate().map(|(slot, code)| {
                let v: u64 = self
                    .shards
                    .iter()
                    .map(|s| s.closes_by_code[slot].load(Relaxed))
                    .sum();
                (label("code", code), v)
            }),
        )?;
        family(
            o,
            "upgrades_refused_total",
            "WebSocket upgrades refused: Origin not allowed (403), --max-conns-per-ip or --connect-rate-limit (503).",
            "counter",
            [
                ("origin", (|s| &s.upgrades_refused_origin) as Getter),
                ("conns_per_ip", |s| &s.upgrades_refused_per_ip),
                ("connect_rate", |s| &s.upgrades_refused_rate),
            ]
            .map(|(reason, f)| (label("reason", reason), self.sum(f))),
        )?;
        family(
            o,
            "deliveries_dropped_total",
            "Deliveries refused before reaching a shard, by reason.",
            "counter",
            [(
                label("reason", "shard_queue_full"),
                self.sum(|s| &s.deliveries_dropped_queue_full),
            )],
        )?;
        family(
            o,
            "control_tasks",
            "Per-client tasks queued or running on the control thread (at most --control-max-tasks).",
            "gauge",
            [("", self.control.tasks.load(Relaxed))],
        )?;
        family(
            o,
            "control_tasks_refused_total",
            "Webhook auth calls, waiting hooks and room validators refused at --control-max-tasks.",
            "counter",
            [("", self.control.refused.load(Relaxed))],
        )?;
        if let Some(b) = &self.bridge {
            self.write_bridge(o, b)?;
        }
        if let Some(e) = &self.events {
            family(
                o,
                "events_forwarded_total",
                "Custom client events forwarded, by destination and result.",
                "counter",
                [
                    ("channel", "queued", &e.to_channel),
                    ("webhook", "ok", &e.webhook_ok),
                    ("webhook", "failed", &e.webhook_failed),
                ]
                .map(|(to, result, v)| {
                    (
                        format!("{{to=\"{to}\",result=\"{result}\"}}"),
                        v.load(Relaxed),
                    )
                }),
            )?;
            family(
                o,
                "events_dropped_total",
                "Custom client events not forwarded, by reason.",
                "counter",
                [
                    ("webhook_queue_full", &e.dropped_webhook_queue_full),
                    ("channel_outbox_full", &e.dropped_channel_outbox_full),
                ]
                .map(|(reason, v)| (label("reason", reason), v.load(Relaxed))),
            )?;
            family(
                o,
                "events_webhook_queued",
                "Custom client events waiting for an events-webhook worker.",
                "gauge",
                [("", e.webhook_queued.load(Relaxed))],
            )?;
        }
        family(
            o,
            "uptime_seconds",
            "Seconds since start.",
            "gauge",
            [("", self.started.elapsed().as_secs())],
        )
    }
}

/// One metric family `ignis_ws_NAME`: its `# HELP` and `# TYPE` lines,
/// then a line per sample, `ignis_ws_NAME{LABELS} VALUE` (`LABELS` is
/// either empty or written by [`label`], braces included).
fn family<L: Display, V: Display>(
    o: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> std::fmt::Result {
    writeln!(o, "# HELP ignis_ws_{name} {help}")?;
    writeln!(o, "# TYPE ignis_ws_{name} {kind}")?;
    for (labels, v) in samples {
        writeln!(o, "ignis_ws_{name}{labels} {v}")?;
    }
    Ok(())
}

/// `{key="value"}`: the labels of a sample with one label.
fn label(key: &str, value: impl Display) -> String {
    format!("{{{key}=\"{value}\"}}")
}

/// Reads one of a shard's counters.
type Getter = fn(&ShardMetrics) -> &AtomicU64;

/// Reads one of a shard's gauges.
type GaugeGetter = fn(&ShardMetrics) -> &AtomicI64;

/// Per-shard gauges, each a family with a sample per shard.
const SHARD_GAUGES: [(&str, &str, GaugeGetter); 7] = [
    ("rooms", "Rooms with at least one member, by shard.", |s| {
        &s.rooms
    }),
    ("users", "Distinct authenticated user ids, by shard.", |s| {
        &s.users
    }),
    (
        "encrypted_clients",
        "Connected clients with an encryption session, by shard.",
        |s| &s.encrypted_clients,
    ),
    (
        "handshakes_in_progress",
        "Accepted connections still in their HTTP upgrade (they count against --max-connections), by shard.",
        |s| &s.handshaking,
    ),
    (
        "tls_handshakes_in_progress",
        "TLS handshakes under way (their ClientHello began to arrive; at most --tls-max-handshakes per process), by shard.",
        |s| &s.tls_handshaking,
    ),
    (
        "publish_bodies_pending",
        "POST /api/publish bodies being read now (at most --api-max-pending-bodies), by shard.",
        |s| &s.publish_bodies,
    ),
    (
        "shard_queue_bytes",
        "Bytes of deliveries waiting in the shard's channel (at most --shard-queue-limit), by shard.",
        |s| &s.queued_bytes,
    ),
];

/// Counters summed over the shards, each a family with one sample.
const COUNTERS: [(&str, &str, Getter); 33] = [
    (
        "rooms_client_id_refused_total",
        "Joins refused because the room is named by another client's id (any UUID form).",
        |s| &s.rooms_client_id_refused,
    ),
    (
        "accept_errors_total",
        "accept() calls that failed (EMFILE, ENFILE, ENOBUFS, ...); logged at most once per second per shard.",
        |s| &s.accept_errors,
    ),
    (
        "publish_bodies_refused_total",
        "POST /api/publish answered 503 because --api-max-pending-bodies bodies were being read.",
        |s| &s.publish_bodies_refused,
    ),
    ("accepted_total", "TCP connections accepted.", |s| {
        &s.accepted_total
    }),
    (
        "accept_pauses_total",
        "Times the accept loop waited (at most 1 ms) for one of --max-upgrades-in-flight upgrades to end.",
        |s| &s.accept_pauses_total,
    ),
    ("upgrades_total", "WebSocket upgrades completed.", |s| {
        &s.upgrades_total
    }),
    (
        "upgrades_immediate_total",
        "WebSocket upgrades done as the connection was accepted (its request already there).",
        |s| &s.upgrades_immediate_total,
    ),
    (
        "connections_refused_total",
        "Connections refused at --max-connections.",
        |s| &s.refused_total,
    ),
    (
        "http_requests_total",
        "Plain HTTP requests answered.",
        |s| &s.http_requests_total,
    ),
    (
        "handshake_errors_total",
        "Failed or timed-out upgrade requests.",
        |s| &s.handshake_errors_total,
    ),
    ("tls_handshakes_total", "TLS handshakes completed.", |s| {
        &s.tls_handshakes
    }),
    (
        "tls_handshake_errors_total",
        "TLS handshakes that failed or timed out.",
        |s| &s.tls_handshake_errors,
    ),
    (
        "tls_handshakes_refused_total",
        "Connections closed at once because --tls-max-handshakes handshakes were in progress.",
        |s| &s.tls_handshakes_refused,
    ),
    (
        "tls_record_errors_total",
        "TLS connections ended by a bad record, a failed decryption or a fatal alert.",
        |s| &s.tls_record_errors,
    ),
    (
        "messages_in_total",
        "Data messages received from clients.",
        |s| &s.messages_in,
    ),
    (
        "bytes_in_total",
        "Payload bytes of data messages received.",
        |s| &s.bytes_in,
    ),
    ("messages_out_total", "Frames queued to clients.", |s| {
        &s.messages_out
    }),
    (
        "bytes_out_total",
        "Bytes of frames queued to clients.",
        |s| &s.bytes_out,
    ),
    (
        "bytes_written_total",
        "Bytes written to client sockets.",
        |s| &s.bytes_written,
    ),
    (
        "write_calls_total",
        "Write system calls to client sockets.",
        |s| &s.write_calls,
    ),
    (
        "frames_dropped_total",
        "Frames dropped for slow or closing clients.",
        |s| &s.frames_dropped,
    ),
    (
        "connections_parked_total",
        "Upgraded connections parked in the shard's epoll (readiness receive) since start.",
        |s| &s.parked_total,
    ),
    (
        "slow_clients_closed_total",
        "Clients closed for exceeding the backpressure limit.",
        |s| &s.slow_clients_closed,
    ),
    (
        "rooms_joined_total",
        "Rooms joined through join requests.",
        |s| &s.rooms_joined,
    ),
    (
        "rooms_refused_total",
        "Rooms refused by filter or validator, or past --max-rooms-per-client.",
        |s| &s.rooms_refused,
    ),
    (
        "sessions_refused_total",
        "Sessions refused because the user held --max-sessions-per-user.",
        |s| &s.sessions_refused,
    ),
    (
        "rooms_over_limit_total",
        "Rooms refused because the client was in --max-rooms-per-client rooms.",
        |s| &s.rooms_over_limit,
    ),
    (
        "rate_limited_total",
        "Clients closed with 1008 for sending more than --client-max-msgs-per-sec.",
        |s| &s.rate_limited,
    ),
    ("auth_timeouts_total", "Clients closed with 4001.", |s| {
        &s.auth_timeouts
    }),
    ("auth_errors_total", "Authenticator errors.", |s| {
        &s.auth_errors
    }),
    (
        "encryption_handshakes_failed_total",
        "Encryption handshakes refused (closed with 4004).",
        |s| &s.encryption_handshakes_failed,
    ),
    (
        "messages_encrypted_total",
        "Messages encrypted per client (off the shared-frame path).",
        |s| &s.messages_encrypted,
    ),
    (
        "decrypt_failures_total",
        "Inbound encrypted messages that failed to decrypt (dropped).",
        |s| &s.decrypt_failures,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(bridge: bool) -> Registry {
        let shards: Vec<Arc<ShardMetrics>> =
            (0..2).map(|_| Arc::new(ShardMetrics::default())).collect();
        shards[1].conns_authenticated.store(3, Relaxed);
        shards[0].auth_refused.store(4, Relaxed);
        shards[1].auth_refused.store(5, Relaxed);
        shards[1].rooms.store(6, Relaxed);
        shards[0].upgrades_refused_per_ip.store(13, Relaxed);
        shards[0].closes_by_code[METRIC_CODES.len()].store(7, Relaxed);
        let b = BridgeMetrics::default();
        b.publisher_up.store(true, Relaxed);
        b.envelopes_dropped[1].store(8, Relaxed);
        b.own_skipped.store(9, Relaxed);
        b.published[2].store(10, Relaxed);
        b.outbox_depth.store(11, Relaxed);
        let e = EventsMetrics::default();
        e.webhook_failed.store(12, Relaxed);
        Registry {
            bridge: bridge.then(|| Arc::new(b)),
            events: bridge.then(|| Arc::new(e)),
            shards,
            started: Instant::now(),
            io_backend: "epoll",
            max_connections: 1,
            control: Arc::new(crate::control::ControlStats::default()),
            draining: Default::default(),
        }
    }

    #[test]
    fn every_family_has_help_and_type_then_its_samples() {
        let text = registry(true).prometheus();
        for family in [
            "connections",
            "rooms",
            "auth_total",
            "closes_total",
            "redis_envelopes_dropped_total",
            "redis_outbox_depth",
            "events_forwarded_total",
            "uptime_seconds",
        ] {
            let help = format!("# HELP ignis_ws_{family} ");
            let kind = format!("\n# TYPE ignis_ws_{family} ");
            let at = text.find(&help).expect(&help);
            assert!(text[at..].contains(&kind), "{family}");
        }
        for line in [
            "ignis_ws_connections{shard=\"1\",state=\"authenticated\"} 3",
            "ignis_ws_rooms{shard=\"1\"} 6",
            "ignis_ws_auth_total{result=\"refused\"} 9",
            "ignis_ws_closes_total{code=\"other\"} 7",
            "ignis_ws_redis_connected{conn=\"subscriber\"} 0",
            "ignis_ws_redis_connected{conn=\"publisher\"} 1",
            "ignis_ws_redis_envelopes_dropped_total{reason=\"bad_json\"} 8",
            "ignis_ws_redis_envelopes_dropped_total{reason=\"own_server_id\"} 9",
            "ignis_ws_redis_published_total{type=\"room\"} 10",
            "ignis_ws_redis_outbox_depth 11",
            "ignis_ws_events_forwarded_total{to=\"webhook\",result=\"failed\"} 12",
            "ignis_ws_control_tasks 0",
            "ignis_ws_upgrades_refused_total{reason=\"origin\"} 0",
            "ignis_ws_upgrades_refused_total{reason=\"conns_per_ip\"} 13",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        let local = registry(false).prometheus();
        assert!(!local.contains("redis") && !local.contains("events_"));
    }
}
