//! Every setting of the server: [`Config`] (what the library takes), its
//! defaults and where they come from, and the command-line / environment /
//! TOML front end ([`ServeArgs`]) that builds one.
//!
//! Precedence: command-line flag > `IGNIS_WS_*` environment variable >
//! `--config FILE.toml` > built-in default. A bad value is a [`ConfigError`]
//! that names the key; the binary prints it and exits with status 2.

mod debug;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// Which I/O back end the shards use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// io_uring where the kernel allows it, epoll otherwise (one log line
    /// says why).
    Auto,
    /// io_uring or fail to start.
    Uring,
    /// epoll (compio's polling driver).
    Epoll,
}

/// How an io_uring shard receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UringRecv {
    /// Multishot accept and multishot recv into a provided-buffer ring.
    Multishot,
    /// Upgraded connections parked in the shard's epoll (no task each),
    /// read into the shard's scratch buffer when ready.
    Readiness,
}

/// What to do with a client whose outbound queue passes the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowClientPolicy {
    /// Close it with 1008 `Backpressure limit exceeded` (frees its queue).
    Close,
    /// Drop the messages that do not fit; keep the connection.
    Drop,
}

/// Per-client encryption (PROTOCOL.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionMode {
    /// No handshake; `publicKey` in `authenticate` is ignored.
    Off,
    /// Clients whose `authenticate` carries `publicKey` get the handshake
    /// (a bad key: error `Encryption handshake failed`, close 4004); the
    /// others stay plain.
    Optional,
    /// Every client must send a valid `publicKey`; otherwise error
    /// `Encryption handshake failed` and close 4004 `Encryption required`
    /// (the reference's `requireEncryption`).
    Required,
}

/// How clients authenticate. `Debug` (in [`crate::secrets`]) redacts the
/// secret and URL credentials.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// `data.token` is a JWT checked with a secret or public key.
    Jwt {
        /// HS256 secret.
        secret: Option<String>,
        /// PEM file with an RSA (RS256) or P-256 (ES256) public key.
        public_key_file: Option<PathBuf>,
        /// Clock skew allowed on `exp`/`nbf` (and `iat` with `max_age_s`),
        /// seconds.
        leeway_s: u64,
        /// Accepted `aud` values; empty: tokens carrying `aud` are refused.
        audience: Vec<String>,
        /// Accepted `iss` values; empty: `iss` is not checked.
        issuer: Vec<String>,
        /// Refuse tokens without `exp`.
        require_exp: bool,
        /// Refuse tokens without `iat` or issued longer ago than this, s.
        max_age_s: Option<u64>,
    },
    /// `data` is POSTed to a URL that decides.
    Webhook {
        /// Where to POST.
        url: String,
        /// How long to wait for its answer.
        timeout: Duration,
        /// Calls in flight at once; more wait (within `timeout`).
        concurrency: usize,
    },
    /// Everyone is accepted (development and benchmarks only).
    Insecure,
    /// The library user passes an [`crate::auth::Authenticator`] to the
    /// [`crate::ServerBuilder`].
    Custom,
}

impl AuthMode {
    /// `--auth jwt --jwt-secret SECRET` with every other JWT setting at its
    /// default (no leeway, `exp` required, no audience or issuer, no max age).
    pub fn jwt_secret(secret: impl Into<String>) -> Self {
        Self::Jwt {
            secret: Some(secret.into()),
            public_key_file: None,
            leeway_s: 0,
            audience: Vec::new(),
            issuer: Vec::new(),
            require_exp: true,
            max_age_s: None,
        }
    }

    /// `--auth jwt --jwt-public-key FILE` with every other JWT setting at its
    /// default.
    pub fn jwt_public_key(file: impl Into<PathBuf>) -> Self {
        Self::Jwt {
            secret: None,
            public_key_file: Some(file.into()),
            leeway_s: 0,
            audience: Vec::new(),
            issuer: Vec::new(),
            require_exp: true,
            max_age_s: None,
        }
    }
}

/// The whole configuration of a server. `Debug` (in [`crate::secrets`])
/// redacts the API key, the JWT secret and URL credentials.
#[derive(Clone)]
pub struct Config {
    /// Address every shard listens on (SO_REUSEPORT).
    pub listen: SocketAddr,
    /// The WebSocket path. Ignis: `WebSocketDefaults.PATH` = `/ws`.
    pub path: String,
    /// Shard threads; 0 = one per available core.
    pub shards: usize,
    /// Pin shard `i` to core `i mod cores`. Off when shards share cores
    /// with other heavy processes.
    pub pin_cores: bool,
    /// I/O back end.
    pub io: IoMode,
    /// Authentication.
    pub auth: AuthMode,
    /// Room patterns any authenticated client may join: `*` (any run within
    /// one `:`-segment), `?` (one non-`:` character), `**` (any run, `:`
    /// included), `{userId}` (see [`crate::auth::rooms`]). Empty and no JWT
    /// `rooms` claim: joins are refused, as in Ignis without `validateRoomFn`.
    pub room_allow: Vec<String>,
    /// Rooms every client joins on authentication.
    /// Ignis: `WebSocketDefaults.ROOM`, `WebSocketDefaults.NOTIFICATION_ROOM`.
    pub default_rooms: Vec<String>,
    /// Ignis: `WebSocketDefaults.AUTH_TIMEOUT` (5 s). The authenticator gets
    /// three times this once `authenticate` arrived.
    pub auth_timeout: Duration,
    /// Ignis: `WebSocketDefaults.HEARTBEAT_INTERVAL` (30 s): how often idle
    /// authenticated clients are looked for.
    pub heartbeat_interval: Duration,
    /// Ignis: `WebSocketDefaults.HEARTBEAT_TIMEOUT` (90 s): silence after
    /// which an authenticated client is closed with 4002.
    pub heartbeat_timeout: Duration,
    /// Ignis/Bun: `idleTimeout` 60 s with `sendPings`: a ping goes out after
    /// half of it without any frame; the connection closes after all of it.
    /// `None` disables.
    pub idle_timeout: Option<Duration>,
    /// Largest client message. Ignis: `MAX_PAYLOAD_LENGTH` (128 KiB). Over it:
    /// close 1009.
    pub max_payload: usize,
    /// Outbound bytes queued per client before the slow-client policy acts.
    /// Ignis/Bun: `BACKPRESSURE_LIMIT` (1 MiB). Bounds memory per client.
    pub backpressure_limit: usize,
    /// Messages (data frames, pings and pongs) a client may send within one
    /// second of the clock; one more and it is closed with 1008. 0 = no
    /// limit. Not in the reference: a guard against message floods.
    pub client_max_msgs_per_sec: u32,
    /// Rooms one client may be in (default rooms count; they are always
    /// joined); joins past it are refused like rooms the validator refuses.
    /// 0 = no limit. Not in the reference: bounds a client's index entries.
    pub max_rooms_per_client: usize,
    /// What happens past the budget.
    pub slow_client: SlowClientPolicy,
    /// Connections per process; 0 = derived from the file-descriptor limit.
    pub max_connections: usize,
    /// Time allowed for the HTTP upgrade request head (slowloris guard).
    pub handshake_timeout: Duration,
    /// Largest HTTP request head accepted.
    pub max_handshake_bytes: usize,
    /// On SIGINT/SIGTERM: time to flush queues and exchange close frames
    /// before the remaining connections are dropped.
    pub shutdown_timeout: Duration,
    /// After the server sent a close frame: time to wait for the client's
    /// close frame before dropping the TCP connection.
    pub close_timeout: Duration,
    /// On io_uring: receive with multishot accept/recv into the
    /// provided-buffer ring, with a task per connection (true); or park
    /// upgraded connections in the shard's epoll and `recv` ready ones into
    /// the shard's scratch buffer, like the epoll back end (false: an idle
    /// connection then has no task either). Either way an idle connection
    /// holds no read buffer.
    pub io_uring_multishot: bool,
    /// Buffers (2 KiB each) in each shard's io_uring provided-buffer ring.
    /// More absorbs more simultaneous receives; when the ring runs dry a
    /// connection waits for readability and re-arms.
    pub io_ring_buffers: u16,
    /// Hold a shard's writes up to this long after the first frame is
    /// queued, so more messages share one syscall per client: less CPU per
    /// delivery for up to this much more latency. Zero: write every loop
    /// turn.
    pub write_coalesce: Duration,
    /// Redis for cross-instance delivery: one URL (`redis://`, `rediss://`
    /// for TLS, `user:password@` for AUTH/ACL), or the nodes of a Redis
    /// Cluster. Empty: single node, no Redis.
    pub redis: Vec<String>,
    /// Whether `redis` lists the nodes of a Redis Cluster.
    pub redis_cluster: bool,
    /// PEM file with the CA that signed the Redis server's certificate, for
    /// `rediss://` with a private CA (default: the system trust store).
    pub redis_tls_ca: Option<PathBuf>,
    /// Messages waiting for Redis while it is unreachable; past it new
    /// publishes are dropped and counted.
    pub redis_outbox: usize,
    /// Largest Redis envelope accepted; a bigger one is dropped and counted
    /// (a frame larger than `backpressure_limit` could never be queued).
    pub redis_max_message: usize,
    /// Bearer key for `POST /api/publish`; `None` disables the endpoint.
    pub api_key: Option<String>,
    /// `POST /api/publish` bodies read at the same time, per process (each
    /// at most `redis_max_message` bytes); one more gets 503 with
    /// `Retry-After`. Bounds the memory unfinished publishes can hold.
    pub api_max_pending_bodies: usize,
    /// A private address for `/metrics` and `/health` (e.g. a loopback or
    /// internal interface). When set, `/metrics` is no longer served on
    /// `listen`; `/health` stays on both for load balancers.
    pub metrics_listen: Option<SocketAddr>,
    /// Per-client encryption. Ignis: `requireEncryption` (false) plus a
    /// `handshakeFn`; here the handshake is built in.
    pub encryption: EncryptionMode,
    /// Messages a shard encrypts per loop turn before it lets its other
    /// work run. Ignis: `WebSocketDefaults.ENCRYPTED_BATCH_LIMIT` (10
    /// concurrent encryptions); here encryption is synchronous and cheap
    /// (~1 µs per message), so batches are bigger. Lower: fairer latency
    /// for plain clients; higher: less scheduling overhead.
    pub encrypted_batch_limit: usize,
    /// Redis channel that custom client events are forwarded to.
    pub events_channel: Option<String>,
    /// URL that custom client events are POSTed to.
    pub events_webhook: Option<String>,
    /// Events waiting for an events-webhook worker; past it new events are
    /// dropped and counted (`ignis_ws_events_dropped_total`).
    pub events_webhook_queue: usize,
    /// Events-webhook POSTs in flight at once (and so connections to the
    /// webhook's host).
    pub events_webhook_concurrency: usize,
    /// Time allowed for one events-webhook POST.
    pub events_webhook_timeout: Duration,
    /// Keep a task per upgraded connection instead of parking it in the
    /// shard's epoll: the readiness path's fallback when that epoll cannot
    /// be created. Not a flag; set by the tests that force the fallback.
    #[doc(hidden)]
    pub io_task_per_connection: bool,
    /// Bytes of deliveries waiting in one shard's channel; a delivery that
    /// does not fit is refused (`SendError::Overloaded`, 503 on
    /// `/api/publish`) and counted.
    pub shard_queue_limit: usize,
    /// Tasks (webhook auth calls, hooks, room validators that wait) the
    /// control thread runs at once; past it new ones are refused and
    /// counted.
    pub control_max_tasks: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            path: "/ws".into(),
            shards: 0,
            pin_cores: true,
            io: IoMode::Auto,
            auth: AuthMode::Custom,
            room_allow: Vec::new(),
            default_rooms: vec!["ws-default".into(), "ws-notification".into()],
            auth_timeout: Duration::from_millis(5_000),
            heartbeat_interval: Duration::from_millis(30_000),
            heartbeat_timeout: Duration::from_millis(90_000),
            idle_timeout: Some(Duration::from_secs(60)),
            max_payload: 128 * 1024,
            backpressure_limit: 1024 * 1024,
            client_max_msgs_per_sec: 1000,
            max_rooms_per_client: 100,
            slow_client: SlowClientPolicy::Close,
            max_connections: 0,
            handshake_timeout: Duration::from_millis(5_000),
            max_handshake_bytes: 8 * 1024,
            shutdown_timeout: Duration::from_millis(5_000),
            close_timeout: Duration::from_millis(2_000),
            write_coalesce: Duration::ZERO,
            io_ring_buffers: 512,
            // Measured (PERFORMANCE.md): the same CPU per delivery and
            // connect rate; an idle connection then has no task of its own
            // (1.1 KB against 2.1 KB per idle connection at 10k).
            io_uring_multishot: false,
            redis: Vec::new(),
            redis_cluster: false,
            redis_tls_ca: None,
            redis_outbox: 10_000,
            redis_max_message: 1024 * 1024,
            encryption: EncryptionMode::Off,
            encrypted_batch_limit: 256,
            api_key: None,
            api_max_pending_bodies: 16,
            metrics_listen: None,
            events_channel: None,
            events_webhook: None,
            events_webhook_queue: 1024,
            events_webhook_concurrency: 4,
            events_webhook_timeout: Duration::from_millis(5_000),
            shard_queue_limit: 64 << 20,
            control_max_tasks: 16_384,
            io_task_per_connection: false,
        }
    }
}

/// A setting with a bad value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration `{key}`: {message}")]
pub struct ConfigError {
    /// The flag name (`--auth-timeout-ms`); the same key in TOML and, upper
    /// cased with `IGNIS_WS_`, in the environment.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

fn bad(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        message: message.into(),
    }
}

impl Config {
    /// Check the settings against each other and the machine.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.path.starts_with('/') {
            return Err(bad("--path", "must start with '/'"));
        }
        if self.shards > 256 {
            return Err(bad("--shards", "at most 256"));
        }
        if self.auth_timeout.is_zero() {
            return Err(bad("--auth-timeout-ms", "must be > 0"));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(bad("--heartbeat-interval-ms", "must be > 0"));
        }
        if self.heartbeat_timeout.is_zero() {
            return Err(bad("--heartbeat-timeout-ms", "must be > 0"));
        }
        // Per-connection timers are kept in 32-bit millisecond stamps.
        let day = Duration::from_secs(86_400);
        for (key, d) in [
            ("--auth-timeout-ms", self.auth_timeout * 3),
            ("--heartbeat-interval-ms", self.heartbeat_interval),
            ("--heartbeat-timeout-ms", self.heartbeat_timeout),
            ("--idle-timeout-s", self.idle_timeout.unwrap_or_default()),
            ("--close-timeout-ms", self.close_timeout),
        ] {
            if d > day {
                return Err(bad(key, "at most one day"));
            }
        }
        if self.max_payload == 0 {
            return Err(bad("--max-payload", "must be > 0"));
        }
        if self.max_payload > 64 * 1024 * 1024 {
            return Err(bad("--max-payload", "at most 64 MiB"));
        }
        if self.backpressure_limit < 1024 {
            return Err(bad("--backpressure-limit", "at least 1 KiB"));
        }
        if self.handshake_timeout.is_zero() {
            return Err(bad("--handshake-timeout-ms", "must be > 0"));
        }
        if self.max_handshake_bytes < 256 {
            return Err(bad("--max-handshake-bytes", "at least 256"));
        }
        for r in &self.default_rooms {
            if r.is_empty() || r.starts_with("ws:") {
                return Err(bad(
                    "--default-rooms",
                    format!("room {r:?} is empty or starts with the reserved prefix `ws:`"),
                ));
            }
            if uuid::Uuid::try_parse(r).is_ok() {
                return Err(bad(
                    "--default-rooms",
                    format!(
                        "room {r:?} is a UUID: rooms named by a client id are that client's own"
                    ),
                ));
            }
        }
        for p in &self.room_allow {
            if p.chars().count() > crate::auth::rooms::MAX_PATTERN_LEN {
                return Err(bad(
                    "--room-allow",
                    format!(
                        "a pattern is longer than {} characters",
                        crate::auth::rooms::MAX_PATTERN_LEN
                    ),
                ));
            }
        }
        if let AuthMode::Jwt {
            leeway_s,
            max_age_s,
            ..
        } = &self.auth
        {
            if *leeway_s > crate::auth::jwt::MAX_LEEWAY_S {
                return Err(bad(
                    "--jwt-leeway-s",
                    format!("at most {} (one day)", crate::auth::jwt::MAX_LEEWAY_S),
                ));
            }
            if *max_age_s == Some(0) {
                return Err(bad("--jwt-max-age-s", "must be > 0"));
            }
        }
        match &self.auth {
            AuthMode::Jwt {
                secret,
                public_key_file,
                ..
            } => match (secret, public_key_file) {
                (None, None) => {
                    return Err(bad(
                        "--jwt-secret",
                        "--auth jwt needs --jwt-secret (HS256) or --jwt-public-key FILE (RS256/ES256)",
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(bad(
                        "--jwt-public-key",
                        "give either --jwt-secret or --jwt-public-key, not both",
                    ));
                }
                (Some(s), None) if s.is_empty() => {
                    return Err(bad("--jwt-secret", "must not be empty"));
                }
                (Some(s), None) if s.len() < crate::auth::jwt::MIN_HS256_SECRET_LEN => {
                    return Err(bad(
                        "--jwt-secret",
                        format!(
                            "is {} bytes; HS256 needs at least {} (RFC 7518 §3.2), e.g. \
                             `openssl rand -base64 48`",
                            s.len(),
                            crate::auth::jwt::MIN_HS256_SECRET_LEN
                        ),
                    ));
                }
                _ => {}
            },
            AuthMode::Webhook { url, timeout, .. } => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(bad("--auth-url", "must be an http:// or https:// URL"));
                }
                if timeout.is_zero() {
                    return Err(bad("--auth-webhook-timeout-ms", "must be > 0"));
                }
            }
            AuthMode::Insecure | AuthMode::Custom => {}
        }
        let redis_key = if self.redis_cluster {
            "--redis-cluster"
        } else {
            "--redis"
        };
        for url in &self.redis {
            if let Err(e) = redis::Client::open(url.as_str()) {
                // Redacted: the URL may carry the Redis password.
                let shown = crate::secrets::redact_url(url);
                let e = crate::secrets::scrub(&e.to_string(), url);
                return Err(bad(redis_key, format!("{shown:?} is not a Redis URL: {e}")));
            }
        }
        if let Some(ca) = &self.redis_tls_ca
            && let Err(e) = std::fs::metadata(ca)
        {
            return Err(bad(
                "--redis-tls-ca",
                format!("cannot read {}: {e}", ca.display()),
            ));
        }
        if self.io_ring_buffers == 0 {
            return Err(bad("--io-ring-buffers", "must be > 0"));
        }
        if self.write_coalesce > Duration::from_secs(1) {
            return Err(bad("--write-coalesce-us", "at most 1000000 (1 s)"));
        }
        if self.redis_outbox == 0 {
            return Err(bad("--redis-outbox", "must be > 0"));
        }
        if self.encrypted_batch_limit == 0 {
            return Err(bad("--encrypted-batch-limit", "must be > 0"));
        }
        if self.redis_max_message < 1024 {
            return Err(bad("--redis-max-message", "at least 1 KiB"));
        }
        if self.events_webhook_queue == 0 {
            return Err(bad("--events-webhook-queue", "must be > 0"));
        }
        if self.events_webhook_concurrency == 0 {
            return Err(bad("--events-webhook-concurrency", "must be > 0"));
        }
        if self.events_webhook_timeout.is_zero() {
            return Err(bad("--events-webhook-timeout-ms", "must be > 0"));
        }
        if self.shard_queue_limit < self.redis_max_message.max(self.max_payload) {
            return Err(bad(
                "--shard-queue-limit",
                "must hold at least one message (>= --redis-max-message and --max-payload)",
            ));
        }
        if self.control_max_tasks == 0 {
            return Err(bad("--control-max-tasks", "must be > 0"));
        }
        if let AuthMode::Webhook { concurrency: 0, .. } = self.auth {
            return Err(bad("--auth-webhook-concurrency", "must be > 0"));
        }
        if self.api_max_pending_bodies == 0 {
            return Err(bad("--api-max-pending-bodies", "must be > 0"));
        }
        if self
            .metrics_listen
            .is_some_and(|m| m == self.listen && m.port() != 0)
        {
            return Err(bad(
                "--metrics-listen",
                "must differ from --listen (it is the private address)",
            ));
        }
        if self.api_key.as_deref().is_some_and(|k| k.len() < 16) {
            return Err(bad("--api-key", "use at least 16 characters"));
        }
        if let Some(c) = &self.events_channel
            && c.is_empty()
        {
            return Err(bad("--events-channel", "must not be empty"));
        }
        if self.events_channel.is_some() && self.redis.is_empty() {
            return Err(bad("--events-channel", "needs --redis or --redis-cluster"));
        }
        if let Some(u) = &self.events_webhook
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(bad(
                "--events-webhook",
                "must be an http:// or https:// URL",
            ));
        }
        Ok(())
    }
}

/// A byte size: a plain number of bytes or a number with a `KiB`, `MiB`,
/// `GiB` (or `K`/`M`/`G`, also 1024-based) suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: usize = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (e.g. 131072, 128KiB, 1MiB)"))?;
        let mult = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1024,
            "m" | "mb" | "mib" => 1024 * 1024,
            "g" | "gb" | "gib" => 1024 * 1024 * 1024,
            other => return Err(format!("unknown size unit {other:?} (use KiB, MiB, GiB)")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => usize::try_from(n)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A list setting: comma separated on the command line and in the
/// environment; a string (comma separated) or an array of strings in TOML.
/// Items are trimmed and empty ones dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringList(pub Vec<String>);

impl FromStr for StringList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(StringList(comma_list(s)))
    }
}

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(StringList(match Raw::deserialize(d)? {
            Raw::One(s) => comma_list(&s),
            Raw::Many(v) => v
                .iter()
                .map(|x| x.trim())
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect(),
        }))
    }
}

/// Authentication mode as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    /// JWT in `data.token` (HS256 / RS256 / ES256).
    Jwt,
    /// POST `data` to `--auth-url`.
    Webhook,
    /// Accept everyone (development and benchmarks only).
    Insecure,
}

/// `ignis-ws serve` flags. Every flag has an `IGNIS_WS_*` environment
/// variable and the same key (kebab-case) in the `--config` TOML file.
/// `Debug` (in [`crate::secrets`]) redacts secrets.
#[derive(Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// TOML file with any of these settings (keys as the flag names,
    /// e.g. `auth-timeout-ms = 5000`). Flags and environment win over it.
    #[arg(long, env = "IGNIS_WS_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "IGNIS_WS_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// WebSocket path [default: /ws].
    #[arg(long, env = "IGNIS_WS_PATH")]
    pub path: Option<String>,
    /// Shard threads [default: number of available cores].
    #[arg(long, env = "IGNIS_WS_SHARDS", value_name = "N")]
    pub shards: Option<usize>,
    /// Pin each shard thread to a core [default: true].
    #[arg(long, env = "IGNIS_WS_PIN_CORES", value_name = "BOOL")]
    pub pin_cores: Option<bool>,
    /// I/O back end: io_uring where available, else epoll [default: auto].
    #[arg(long, env = "IGNIS_WS_IO", value_enum)]
    pub io: Option<IoMode>,

    /// How clients authenticate (required): jwt, webhook or insecure.
    #[arg(long, env = "IGNIS_WS_AUTH", value_enum)]
    pub auth: Option<AuthKind>,
    /// HS256 secret for --auth jwt.
    #[arg(
        long,
        env = "IGNIS_WS_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// File holding the HS256 secret (trailing whitespace trimmed); instead
    /// of --jwt-secret, out of the process list.
    #[arg(long, env = "IGNIS_WS_JWT_SECRET_FILE", value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key (RSA for RS256, P-256 for ES256) for --auth jwt.
    #[arg(long, env = "IGNIS_WS_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// Clock skew allowed on exp/nbf (and iat with --jwt-max-age-s),
    /// seconds [default: 0].
    #[arg(long, env = "IGNIS_WS_JWT_LEEWAY_S", value_name = "S")]
    pub jwt_leeway_s: Option<u64>,
    /// Accepted JWT audiences, comma separated (TOML: string or array): a
    /// token's aud must name one; without any, tokens carrying aud are
    /// refused [default: none].
    #[arg(long, env = "IGNIS_WS_JWT_AUDIENCE", value_name = "AUD,AUD…")]
    pub jwt_audience: Option<StringList>,
    /// Accepted JWT issuers, comma separated (TOML: string or array): a
    /// token's iss must be one; without any, iss is not checked
    /// [default: none].
    #[arg(long, env = "IGNIS_WS_JWT_ISSUER", value_name = "ISS,ISS…")]
    pub jwt_issuer: Option<StringList>,
    /// Refuse JWTs without exp [default: true].
    #[arg(long, env = "IGNIS_WS_JWT_REQUIRE_EXP", value_name = "BOOL")]
    pub jwt_require_exp: Option<bool>,
    /// Refuse JWTs without iat or issued more than S seconds ago
    /// [default: no limit].
    #[arg(long, env = "IGNIS_WS_JWT_MAX_AGE_S", value_name = "S")]
    pub jwt_max_age_s: Option<u64>,
    /// URL that --auth webhook POSTs the authenticate data to.
    #[arg(long, env = "IGNIS_WS_AUTH_URL", value_name = "URL")]
    pub auth_url: Option<String>,
    /// Timeout of one webhook call, ms [default: 5000].
    #[arg(long, env = "IGNIS_WS_AUTH_WEBHOOK_TIMEOUT_MS", value_name = "MS")]
    pub auth_webhook_timeout_ms: Option<u64>,
    /// Webhook auth calls in flight at once; more wait within their timeout
    /// [default: 64].
    #[arg(long, env = "IGNIS_WS_AUTH_WEBHOOK_CONCURRENCY", value_name = "N")]
    pub auth_webhook_concurrency: Option<usize>,
    /// Room patterns clients may join, comma separated: `*` = any run within
    /// one `:`-separated segment, `?` = one non-`:` character, `**` = any run
    /// across segments, `{userId}` = the client's user id (a user id holding
    /// `:` matches no such pattern). E.g. 'public:*,user:{userId}:**'; '**'
    /// allows every room. Without any (and no JWT `rooms` claim) joins are
    /// refused.
    #[arg(long, env = "IGNIS_WS_ROOM_ALLOW", value_name = "PATTERNS")]
    pub room_allow: Option<String>,
    /// Rooms joined on authentication, comma separated; '' for none
    /// [default: ws-default,ws-notification].
    #[arg(long, env = "IGNIS_WS_DEFAULT_ROOMS", value_name = "ROOMS")]
    pub default_rooms: Option<String>,

    /// Time to send `authenticate` after the upgrade, ms (×3 for the
    /// authenticator to answer) [default: 5000].
    #[arg(long, env = "IGNIS_WS_AUTH_TIMEOUT_MS", value_name = "MS")]
    pub auth_timeout_ms: Option<u64>,
    /// How often idle clients are looked for, ms [default: 30000].
    #[arg(long, env = "IGNIS_WS_HEARTBEAT_INTERVAL_MS", value_name = "MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Silence after which an authenticated client is closed with 4002, ms
    /// [default: 90000].
    #[arg(long, env = "IGNIS_WS_HEARTBEAT_TIMEOUT_MS", value_name = "MS")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// WebSocket idle timeout, s: ping after half of it, close after all of
    /// it; 0 disables [default: 60].
    #[arg(long, env = "IGNIS_WS_IDLE_TIMEOUT_S", value_name = "S")]
    pub idle_timeout_s: Option<u64>,
    /// Largest client message (bytes, or 128KiB / 1MiB); over it: close
    /// 1009 [default: 128KiB].
    #[arg(long, env = "IGNIS_WS_MAX_PAYLOAD", value_name = "SIZE")]
    pub max_payload: Option<ByteSize>,
    /// Outbound bytes queued per client before --slow-client acts
    /// [default: 1MiB].
    #[arg(long, env = "IGNIS_WS_BACKPRESSURE_LIMIT", value_name = "SIZE")]
    pub backpressure_limit: Option<ByteSize>,
    /// Messages (data, ping, pong) one client may send per second; one more
    /// closes it with 1008; 0 = no limit [default: 1000].
    #[arg(long, env = "IGNIS_WS_CLIENT_MAX_MSGS_PER_SEC", value_name = "N")]
    pub client_max_msgs_per_sec: Option<u32>,
    /// Rooms one client may be in; joins past it are refused; 0 = no limit
    /// [default: 100].
    #[arg(long, env = "IGNIS_WS_MAX_ROOMS_PER_CLIENT", value_name = "N")]
    pub max_rooms_per_client: Option<usize>,
    /// Past the budget: close (1008) or drop messages [default: close].
    #[arg(long, env = "IGNIS_WS_SLOW_CLIENT", value_enum)]
    pub slow_client: Option<SlowClientPolicy>,
    /// Connection limit; 0 = from the file-descriptor limit [default: 0].
    #[arg(long, env = "IGNIS_WS_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Time allowed for the HTTP upgrade request, ms [default: 5000].
    #[arg(long, env = "IGNIS_WS_HANDSHAKE_TIMEOUT_MS", value_name = "MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Largest HTTP request head, bytes [default: 8KiB].
    #[arg(long, env = "IGNIS_WS_MAX_HANDSHAKE_BYTES", value_name = "SIZE")]
    pub max_handshake_bytes: Option<ByteSize>,
    /// Grace period on SIGINT/SIGTERM to flush and close, ms [default: 5000].
    #[arg(long, env = "IGNIS_WS_SHUTDOWN_TIMEOUT_MS", value_name = "MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// Wait for the client's close frame after ours, ms [default: 2000].
    #[arg(long, env = "IGNIS_WS_CLOSE_TIMEOUT_MS", value_name = "MS")]
    pub close_timeout_ms: Option<u64>,

    /// io_uring receive path: multishot (accept/recv into the buffer ring) or
    /// readiness (connections parked in the shard's epoll) [default: readiness].
    #[arg(long, env = "IGNIS_WS_IO_URING_RECV", value_enum)]
    pub io_uring_recv: Option<UringRecv>,
    /// Buffers (2 KiB) in each shard's io_uring receive ring [default: 512].
    #[arg(long, env = "IGNIS_WS_IO_RING_BUFFERS", value_name = "N")]
    pub io_ring_buffers: Option<u16>,
    /// Hold writes up to this many microseconds so more messages share one
    /// syscall (CPU for latency) [default: 0].
    #[arg(long, env = "IGNIS_WS_WRITE_COALESCE_US", value_name = "US")]
    pub write_coalesce_us: Option<u64>,
    /// Redis URL for cross-instance delivery: `redis://[user:password@]host:port[/db]`,
    /// rediss:// for TLS. Absent: single node.
    #[arg(
        long,
        env = "IGNIS_WS_REDIS",
        value_name = "URL",
        conflicts_with = "redis_cluster"
    )]
    pub redis: Option<String>,
    /// Redis Cluster nodes, comma separated (any reachable node is used;
    /// Redis propagates PUBLISH to every node).
    #[arg(long, env = "IGNIS_WS_REDIS_CLUSTER", value_name = "URL,URL…")]
    pub redis_cluster: Option<String>,
    /// PEM CA certificate for rediss:// with a private CA.
    #[arg(long, env = "IGNIS_WS_REDIS_TLS_CA", value_name = "FILE")]
    pub redis_tls_ca: Option<PathBuf>,
    /// Messages queued for Redis during an outage before new ones are
    /// dropped (and counted) [default: 10000].
    #[arg(long, env = "IGNIS_WS_REDIS_OUTBOX", value_name = "N")]
    pub redis_outbox: Option<usize>,
    /// Largest Redis envelope accepted [default: 1MiB].
    #[arg(long, env = "IGNIS_WS_REDIS_MAX_MESSAGE", value_name = "SIZE")]
    pub redis_max_message: Option<ByteSize>,
    /// Per-client encryption (ECDH P-256 + AES-256-GCM): off, optional (for
    /// clients that send publicKey) or required [default: off].
    #[arg(long, env = "IGNIS_WS_ENCRYPTION", value_enum)]
    pub encryption: Option<EncryptionMode>,
    /// Messages a shard encrypts per loop turn before other work runs
    /// [default: 256].
    #[arg(long, env = "IGNIS_WS_ENCRYPTED_BATCH_LIMIT", value_name = "N")]
    pub encrypted_batch_limit: Option<usize>,
    /// Bearer key that enables POST /api/publish.
    #[arg(
        long,
        env = "IGNIS_WS_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// File holding the --api-key (trailing whitespace trimmed); instead of
    /// --api-key, out of the process list.
    #[arg(long, env = "IGNIS_WS_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// POST /api/publish bodies read at once, per process; one more gets
    /// 503 [default: 16].
    #[arg(long, env = "IGNIS_WS_API_MAX_PENDING_BODIES", value_name = "N")]
    pub api_max_pending_bodies: Option<usize>,
    /// Private address for /metrics and /health; /metrics then leaves the
    /// public port [default: none].
    #[arg(long, env = "IGNIS_WS_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Redis channel custom client events are forwarded to (e.g. ws:events).
    #[arg(long, env = "IGNIS_WS_EVENTS_CHANNEL", value_name = "CHANNEL")]
    pub events_channel: Option<String>,
    /// URL custom client events are POSTed to.
    #[arg(long, env = "IGNIS_WS_EVENTS_WEBHOOK", value_name = "URL")]
    pub events_webhook: Option<String>,
    /// Events waiting for an events-webhook worker; more are dropped and
    /// counted [default: 1024].
    #[arg(long, env = "IGNIS_WS_EVENTS_WEBHOOK_QUEUE", value_name = "N")]
    pub events_webhook_queue: Option<usize>,
    /// Events-webhook POSTs (and connections) in flight at once
    /// [default: 4].
    #[arg(long, env = "IGNIS_WS_EVENTS_WEBHOOK_CONCURRENCY", value_name = "N")]
    pub events_webhook_concurrency: Option<usize>,
    /// Timeout of one events-webhook POST, ms [default: 5000].
    #[arg(long, env = "IGNIS_WS_EVENTS_WEBHOOK_TIMEOUT_MS", value_name = "MS")]
    pub events_webhook_timeout_ms: Option<u64>,
    /// Bytes of deliveries waiting for one shard; one more is refused and
    /// counted (503 on /api/publish) [default: 64MiB].
    #[arg(long, env = "IGNIS_WS_SHARD_QUEUE_LIMIT", value_name = "BYTES")]
    pub shard_queue_limit: Option<ByteSize>,
    /// Tasks the control thread runs at once (webhook auth, waiting hooks
    /// and room validators); more are refused and counted [default: 16384].
    #[arg(long, env = "IGNIS_WS_CONTROL_MAX_TASKS", value_name = "N")]
    pub control_max_tasks: Option<usize>,

    /// Log filter (tracing EnvFilter syntax, e.g. `info`,
    /// `ignis_ws=debug`); RUST_LOG is used when absent [default: info].
    #[arg(long, env = "IGNIS_WS_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

macro_rules! merge_fields {
    ($hi:ident, $lo:ident, $($f:ident),* $(,)?) => {
        $( if $hi.$f.is_none() { $hi.$f = $lo.$f; } )*
    };
}

fn ms(v: Option<u64>, default: Duration) -> Duration {
    v.map(Duration::from_millis).unwrap_or(default)
}

/// Split a comma list, trimming items and dropping empty ones.
pub fn comma_list(s: &str) -> Vec<String> {
    crate::auth::rooms::parse_patterns(s)
}

impl ServeArgs {
    /// Fill every unset field from `lower` (the TOML file).
    pub fn merge(mut self, lower: ServeArgs) -> ServeArgs {
        let hi = &mut self;
        merge_fields!(
            hi,
            lower,
            listen,
            path,
            shards,
            pin_cores,
            io,
            auth,
            jwt_secret,
            jwt_secret_file,
            jwt_public_key,
            jwt_leeway_s,
            jwt_audience,
            jwt_issuer,
            jwt_require_exp,
            jwt_max_age_s,
            auth_url,
            auth_webhook_timeout_ms,
            auth_webhook_concurrency,
            room_allow,
            default_rooms,
            auth_timeout_ms,
            heartbeat_interval_ms,
            heartbeat_timeout_ms,
            idle_timeout_s,
            max_payload,
            backpressure_limit,
            client_max_msgs_per_sec,
            max_rooms_per_client,
            slow_client,
            max_connections,
            handshake_timeout_ms,
            max_handshake_bytes,
            shutdown_timeout_ms,
            close_timeout_ms,
            write_coalesce_us,
            io_ring_buffers,
            io_uring_recv,
            redis,
            redis_cluster,
            redis_tls_ca,
            redis_outbox,
            redis_max_message,
            api_key,
            api_key_file,
            api_max_pending_bodies,
            metrics_listen,
            encryption,
            encrypted_batch_limit,
            events_channel,
            events_webhook,
            events_webhook_queue,
            events_webhook_concurrency,
            events_webhook_timeout_ms,
            shard_queue_limit,
            control_max_tasks,
            log,
        );
        self
    }

    /// Read the `--config` file, if any, and merge it under these values.
    pub fn with_file(self) -> Result<ServeArgs, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| bad("--config", format!("cannot read {}: {e}", path.display())))?;
        let file: ServeArgs = toml::from_str(&text).map_err(|e| {
            bad(
                "--config",
                format!("{}: {}", path.display(), e.to_string().trim_end()),
            )
        })?;
        Ok(self.merge(file))
    }

    /// Apply defaults and validate.
    pub fn into_config(mut self) -> Result<Config, ConfigError> {
        let d = Config::default();
        self.jwt_secret = from_value_or_file(
            "--jwt-secret",
            self.jwt_secret.take(),
            "--jwt-secret-file",
            self.jwt_secret_file.as_deref(),
        )?;
        self.api_key = from_value_or_file(
            "--api-key",
            self.api_key.take(),
            "--api-key-file",
            self.api_key_file.as_deref(),
        )?;
        let auth = match self.auth {
            None => {
                return Err(bad(
                    "--auth",
                    "no authentication mode given: use --auth jwt|webhook|insecure (IGNIS_WS_AUTH)",
                ));
            }
            Some(AuthKind::Jwt) => AuthMode::Jwt {
                secret: self.jwt_secret,
                public_key_file: self.jwt_public_key,
                leeway_s: self.jwt_leeway_s.unwrap_or(0),
                audience: self.jwt_audience.map(|l| l.0).unwrap_or_default(),
                issuer: self.jwt_issuer.map(|l| l.0).unwrap_or_default(),
                require_exp: self.jwt_require_exp.unwrap_or(true),
                max_age_s: self.jwt_max_age_s,
            },
            Some(AuthKind::Webhook) => AuthMode::Webhook {
                url: self
                    .auth_url
                    .ok_or_else(|| bad("--auth-url", "--auth webhook needs --auth-url URL"))?,
                timeout: ms(self.auth_webhook_timeout_ms, Duration::from_millis(5_000)),
                concurrency: self.auth_webhook_concurrency.unwrap_or(64),
            },
            Some(AuthKind::Insecure) => AuthMode::Insecure,
        };
        let cfg = Config {
            listen: self.listen.unwrap_or(d.listen),
            path: self.path.unwrap_or(d.path),
            shards: self.shards.unwrap_or(d.shards),
            pin_cores: self.pin_cores.unwrap_or(d.pin_cores),
            io: self.io.unwrap_or(d.io),
            auth,
            room_allow: self
                .room_allow
                .as_deref()
                .map(comma_list)
                .unwrap_or(d.room_allow),
            default_rooms: self
                .default_rooms
                .as_deref()
                .map(comma_list)
                .unwrap_or(d.default_rooms),
            auth_timeout: ms(self.auth_timeout_ms, d.auth_timeout),
            heartbeat_interval: ms(self.heartbeat_interval_ms, d.heartbeat_interval),
            heartbeat_timeout: ms(self.heartbeat_timeout_ms, d.heartbeat_timeout),
            idle_timeout: match self.idle_timeout_s {
                Some(0) => None,
                Some(s) => Some(Duration::from_secs(s)),
                None => d.idle_timeout,
            },
            max_payload: self.max_payload.map(|b| b.0).unwrap_or(d.max_payload),
            backpressure_limit: self
                .backpressure_limit
                .map(|b| b.0)
                .unwrap_or(d.backpressure_limit),
            client_max_msgs_per_sec: self
                .client_max_msgs_per_sec
                .unwrap_or(d.client_max_msgs_per_sec),
            max_rooms_per_client: self.max_rooms_per_client.unwrap_or(d.max_rooms_per_client),
            slow_client: self.slow_client.unwrap_or(d.slow_client),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            handshake_timeout: ms(self.handshake_timeout_ms, d.handshake_timeout),
            max_handshake_bytes: self
                .max_handshake_bytes
                .map(|b| b.0)
                .unwrap_or(d.max_handshake_bytes),
            shutdown_timeout: ms(self.shutdown_timeout_ms, d.shutdown_timeout),
            close_timeout: ms(self.close_timeout_ms, d.close_timeout),
            write_coalesce: self
                .write_coalesce_us
                .map(Duration::from_micros)
                .unwrap_or(d.write_coalesce),
            io_ring_buffers: self.io_ring_buffers.unwrap_or(d.io_ring_buffers),
            io_uring_multishot: self
                .io_uring_recv
                .map(|r| r == UringRecv::Multishot)
                .unwrap_or(d.io_uring_multishot),
            redis_cluster: self.redis_cluster.is_some(),
            redis_tls_ca: self.redis_tls_ca,
            redis: match (&self.redis, &self.redis_cluster) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        "--redis-cluster",
                        "give either --redis or --redis-cluster",
                    ));
                }
                (Some(u), None) => vec![u.clone()],
                (None, Some(list)) => {
                    let v = comma_list(list);
                    if v.is_empty() {
                        return Err(bad("--redis-cluster", "list at least one node URL"));
                    }
                    v
                }
                (None, None) => Vec::new(),
            },
            redis_outbox: self.redis_outbox.unwrap_or(d.redis_outbox),
            redis_max_message: self
                .redis_max_message
                .map(|b| b.0)
                .unwrap_or(d.redis_max_message),
            api_key: self.api_key.filter(|k| !k.is_empty()),
            api_max_pending_bodies: self
                .api_max_pending_bodies
                .unwrap_or(d.api_max_pending_bodies),
            metrics_listen: self.metrics_listen,
            encryption: self.encryption.unwrap_or(d.encryption),
            encrypted_batch_limit: self
                .encrypted_batch_limit
                .unwrap_or(d.encrypted_batch_limit),
            events_channel: self.events_channel,
            events_webhook: self.events_webhook,
            events_webhook_queue: self.events_webhook_queue.unwrap_or(d.events_webhook_queue),
            events_webhook_concurrency: self
                .events_webhook_concurrency
                .unwrap_or(d.events_webhook_concurrency),
            events_webhook_timeout: ms(self.events_webhook_timeout_ms, d.events_webhook_timeout),
            shard_queue_limit: self
                .shard_queue_limit
                .map(|b| b.0)
                .unwrap_or(d.shard_queue_limit),
            control_max_tasks: self.control_max_tasks.unwrap_or(d.control_max_tasks),
            io_task_per_connection: false,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Resolves a secret given either inline (`key`) or as a file (`file_key`):
/// both is an error; the file is read whole and its trailing whitespace
/// (the newline editors and `echo` add) trimmed; unreadable or empty is an
/// error naming `file_key`. The error never contains the secret.
pub fn from_value_or_file(
    key: &'static str,
    value: Option<String>,
    file_key: &'static str,
    file: Option<&Path>,
) -> Result<Option<String>, ConfigError> {
    let bad = |key: &'static str, message: String| ConfigError { key, message };
    match (value, file) {
        (Some(_), Some(_)) => Err(bad(
            file_key,
            format!("give either {key} or {file_key}, not both"),
        )),
        (value, None) => Ok(value),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad(file_key, format!("cannot read {}: {e}", path.display())))?;
            let secret = text.trim_end();
            if secret.is_empty() {
                return Err(bad(file_key, format!("{} is empty", path.display())));
            }
            Ok(Some(secret.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("131072".parse::<ByteSize>(), Ok(ByteSize(131072)));
        assert_eq!("128KiB".parse::<ByteSize>(), Ok(ByteSize(131072)));
        assert_eq!("1 MiB".parse::<ByteSize>(), Ok(ByteSize(1 << 20)));
        assert!("12XB".parse::<ByteSize>().is_err());
        assert!("abc".parse::<ByteSize>().is_err());
    }

    #[test]
    fn auth_is_required() {
        let e = ServeArgs::default().into_config().unwrap_err();
        assert_eq!(e.key, "--auth");
    }

    #[test]
    fn defaults_match_ignis() {
        let a = ServeArgs {
            auth: Some(AuthKind::Insecure),
            ..Default::default()
        };
        let c = a.into_config().unwrap();
        assert_eq!(c.path, "/ws");
        assert_eq!(c.auth_timeout, Duration::from_secs(5));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(90));
        assert_eq!(c.max_payload, 128 * 1024);
        assert_eq!(c.backpressure_limit, 1024 * 1024);
        assert_eq!(c.default_rooms, ["ws-default", "ws-notification"]);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(60)));
    }

    #[test]
    fn bad_values_name_their_key() {
        let a = ServeArgs {
            auth: Some(AuthKind::Jwt),
            ..Default::default()
        };
        assert_eq!(a.into_config().unwrap_err().key, "--jwt-secret");
        let a = ServeArgs {
            auth: Some(AuthKind::Webhook),
            ..Default::default()
        };
        assert_eq!(a.into_config().unwrap_err().key, "--auth-url");
        let a = ServeArgs {
            auth: Some(AuthKind::Insecure),
            auth_timeout_ms: Some(0),
            ..Default::default()
        };
        assert_eq!(a.into_config().unwrap_err().key, "--auth-timeout-ms");
        let a = ServeArgs {
            auth: Some(AuthKind::Insecure),
            default_rooms: Some("ok,ws:bad".into()),
            ..Default::default()
        };
        assert_eq!(a.into_config().unwrap_err().key, "--default-rooms");
    }

    #[test]
    fn overload_bounds_name_their_key() {
        let ins = || ServeArgs {
            auth: Some(AuthKind::Insecure),
            ..Default::default()
        };
        let cases: [(ServeArgs, &str); 6] = [
            (
                ServeArgs {
                    events_webhook_queue: Some(0),
                    ..ins()
                },
                "--events-webhook-queue",
            ),
            (
                ServeArgs {
                    events_webhook_concurrency: Some(0),
                    ..ins()
                },
                "--events-webhook-concurrency",
            ),
            (
                ServeArgs {
                    events_webhook_timeout_ms: Some(0),
                    ..ins()
                },
                "--events-webhook-timeout-ms",
            ),
            (
                ServeArgs {
                    shard_queue_limit: Some(ByteSize(1000)),
                    ..ins()
                },
                "--shard-queue-limit",
            ),
            (
                ServeArgs {
                    control_max_tasks: Some(0),
                    ..ins()
                },
                "--control-max-tasks",
            ),
            (
                ServeArgs {
                    auth: Some(AuthKind::Webhook),
                    auth_url: Some("http://127.0.0.1:1/".into()),
                    auth_webhook_concurrency: Some(0),
                    ..Default::default()
                },
                "--auth-webhook-concurrency",
            ),
        ];
        for (a, key) in cases {
            assert_eq!(a.into_config().unwrap_err().key, key);
        }
        let c = ins().into_config().unwrap();
        assert_eq!(c.shard_queue_limit, 64 << 20);
        assert_eq!(c.events_webhook_concurrency, 4);
        assert_eq!(c.events_webhook_queue, 1024);
        assert_eq!(c.control_max_tasks, 16_384);
    }

    #[test]
    fn toml_is_lower_priority_and_strict() {
        let file: ServeArgs = toml::from_str(
            "auth = \"insecure\"\nauth-timeout-ms = 100\nmax-payload = \"1KiB\"\npath = \"/file\"",
        )
        .unwrap();
        let cli = ServeArgs {
            path: Some("/cli".into()),
            ..Default::default()
        };
        let c = cli.merge(file).into_config().unwrap();
        assert_eq!(c.path, "/cli");
        assert_eq!(c.auth_timeout, Duration::from_millis(100));
        assert_eq!(c.max_payload, 1024);
        let err = toml::from_str::<ServeArgs>("no-such-key = 1").unwrap_err();
        assert!(err.to_string().contains("no-such-key"), "{err}");
    }

    #[test]
    fn empty_default_rooms() {
        let a = ServeArgs {
            auth: Some(AuthKind::Insecure),
            default_rooms: Some(String::new()),
            ..Default::default()
        };
        assert!(a.into_config().unwrap().default_rooms.is_empty());
    }

    #[test]
    fn jwt_claim_settings_from_flags_env_and_toml() {
        const SECRET: &str = "0123456789abcdef0123456789abcdef";
        let a = ServeArgs {
            auth: Some(AuthKind::Jwt),
            jwt_secret: Some(SECRET.into()),
            ..Default::default()
        };
        match a.into_config().unwrap().auth {
            AuthMode::Jwt {
                audience,
                issuer,
                require_exp,
                max_age_s,
                ..
            } => {
                assert!(audience.is_empty() && issuer.is_empty());
                assert!(require_exp, "exp is required by default");
                assert_eq!(max_age_s, None);
            }
            other => panic!("{other:?}"),
        }
        // Flag / env form: comma separated.
        assert_eq!(
            " a, b ,,c".parse::<StringList>().unwrap(),
            StringList(vec!["a".into(), "b".into(), "c".into()])
        );
        // TOML: an array or a comma-separated string.
        let file: ServeArgs = toml::from_str(&format!(
            "auth = \"jwt\"\njwt-secret = \"{SECRET}\"\n\
             jwt-audience = [\"ignis\", \" ws \", \"\"]\n\
             jwt-issuer = \"https://a.example, https://b.example\"\n\
             jwt-require-exp = false\njwt-max-age-s = 300\n"
        ))
        .unwrap();
        match file.into_config().unwrap().auth {
            AuthMode::Jwt {
                audience,
                issuer,
                require_exp,
                max_age_s,
                ..
            } => {
                assert_eq!(audience, vec!["ignis", "ws"]);
                assert_eq!(issuer, vec!["https://a.example", "https://b.example"]);
                assert!(!require_exp);
                assert_eq!(max_age_s, Some(300));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn jwt_settings_are_validated() {
        let jwt = |secret: &str| ServeArgs {
            auth: Some(AuthKind::Jwt),
            jwt_secret: Some(secret.into()),
            ..Default::default()
        };
        let e = jwt("short").into_config().unwrap_err();
        assert_eq!(e.key, "--jwt-secret");
        assert!(e.message.contains("32"), "{e}");
        assert!(
            !e.to_string().contains("short"),
            "the secret is echoed: {e}"
        );
        assert_eq!(
            jwt(&"x".repeat(31)).into_config().unwrap_err().key,
            "--jwt-secret"
        );
        assert!(jwt(&"x".repeat(32)).into_config().is_ok());
        let a = ServeArgs {
            jwt_max_age_s: Some(0),
            ..jwt(&"x".repeat(32))
        };
        assert_eq!(a.into_config().unwrap_err().key, "--jwt-max-age-s");
        let a = ServeArgs {
            jwt_leeway_s: Some(86_401),
            ..jwt(&"x".repeat(32))
        };
        assert_eq!(a.into_config().unwrap_err().key, "--jwt-leeway-s");
        // Public keys have no length rule here.
        let a = ServeArgs {
            auth: Some(AuthKind::Jwt),
            jwt_public_key: Some("/some.pem".into()),
            ..Default::default()
        };
        assert!(a.into_config().is_ok());
    }

    #[test]
    fn overlong_room_patterns_are_refused() {
        let a = ServeArgs {
            auth: Some(AuthKind::Insecure),
            room_allow: Some(format!("public:*,{}", "a".repeat(2000))),
            ..Default::default()
        };
        assert_eq!(a.into_config().unwrap_err().key, "--room-allow");
    }

    #[test]
    fn secret_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, "s3cret-value-from-a-file\n").unwrap();
        assert_eq!(
            super::from_value_or_file("--api-key", None, "--api-key-file", Some(&p)),
            Ok(Some("s3cret-value-from-a-file".into()))
        );
        assert_eq!(
            super::from_value_or_file("--api-key", Some("x".into()), "--api-key-file", None),
            Ok(Some("x".into()))
        );
        let both =
            super::from_value_or_file("--api-key", Some("x".into()), "--api-key-file", Some(&p))
                .unwrap_err();
        assert_eq!(both.key, "--api-key-file");
        let missing = dir.path().join("absent");
        let e = super::from_value_or_file("--api-key", None, "--api-key-file", Some(&missing))
            .unwrap_err();
        assert_eq!(e.key, "--api-key-file");
        std::fs::write(&p, " \n").unwrap();
        let e = super::from_value_or_file("--jwt-secret", None, "--jwt-secret-file", Some(&p))
            .unwrap_err();
        assert_eq!(e.key, "--jwt-secret-file");
        assert!(e.message.contains("empty"), "{}", e.message);
    }
}
