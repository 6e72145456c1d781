//! The settings table: every setting of the server declared once.
//!
//! An entry is a [`ServeArgs`] field (its doc is the `--help` text; the
//! flag `--name-like-this`, the TOML key `name-like-this` and the
//! environment variable `IGNIS_WS_NAME_LIKE_THIS` all come from the field
//! name, the variable spelled out for clap and checked by a test), then,
//! for a table setting, the conversion to its [`Config`] field, that
//! field (doc, type, default) and the checks on its value alone, each with
//! the error message that names the flag:
//!
//! ```text
//! /// Time to send `authenticate` after the upgrade, ms [default: 5000].
//! #[arg(env = "IGNIS_WS_AUTH_TIMEOUT_MS", value_name = "MS")]
//! auth_timeout_ms: u64 => ms => {
//!     /// Ignis: `WebSocketDefaults.AUTH_TIMEOUT` (5 s).
//!     auth_timeout: Duration = Duration::from_millis(5_000),
//!     invalid if |v| v.is_zero() => "must be > 0",
//! };
//! ```
//!
//! Adding such a setting is one entry here and its line in each `Debug`
//! impl (`debug.rs`, which lists fields by hand so that no secret is printed
//! by accident; a test fails until it is there).
//!
//! Hand-written, because one flag does not make one field: the `--config`
//! path, `--log` and `--log-format` (no `Config` field: the binary's
//! logging); `--auth` with its JWT and webhook settings (one [`AuthMode`]
//! field); `--idle-timeout-s` (0 means off);
//! `--redis` / `--redis-cluster` (two flags, one list and a bool);
//! `--api-key` and `--jwt-secret` (secrets with a `*-file` variant). Their
//! flags are entries without a `=> ...` part (converted in
//! [`ServeArgs::into_config`]); their `Config` fields are declared at the
//! top of `Config` with their defaults; checks that involve several
//! settings are in [`Config::validate`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::rooms::MAX_PATTERN_LEN;

use super::table::{DAY, bytes, list, ms, same, us};
use super::{
    AuthKind, AuthMode, ByteSize, ConfigError, EncryptionMode, IoMode, RedisSubscribe,
    SlowClientPolicy, StringList, bad,
};

settings! {
    /// The whole configuration of a server. `Debug` (in [`crate::secrets`])
    /// redacts the API key, the JWT secret and URL credentials.
    #[derive(Clone)]
    pub struct Config {
        /// Authentication.
        pub auth: AuthMode = AuthMode::Custom,
        /// Ignis/Bun: `idleTimeout` 60 s with `sendPings`: a ping goes out
        /// after half of it without any frame; the connection closes after
        /// all of it. `None` disables.
        pub idle_timeout: Option<Duration> = Some(Duration::from_secs(60)),
        /// Redis for cross-instance delivery: one URL (`redis://`,
        /// `rediss://` for TLS, `user:password@` for AUTH/ACL), or the nodes
        /// of a Redis Cluster. Empty: single node, no Redis.
        pub redis: Vec<String> = Vec::new(),
        /// Whether `redis` lists the nodes of a Redis Cluster.
        pub redis_cluster: bool = false,
        /// Redis Sentinel addresses (`host:port` or `redis[s]://[user:password@]host:port`)
        /// instead of `redis`: the bridge connects to the master they name
        /// (`redis_sentinel_master`) and follows failovers.
        pub redis_sentinel: Vec<String> = Vec::new(),
        /// The master's name in Sentinel (`sentinel monitor NAME …`).
        pub redis_sentinel_master: Option<String> = None,
        /// Bearer key for `POST /api/publish`; `None` disables the endpoint.
        pub api_key: Option<String> = None,
    }

    /// `ignis-ws serve` flags. Every flag has an `IGNIS_WS_*` environment
    /// variable and the same key (kebab-case) in the `--config` TOML file.
    /// `Debug` (in [`crate::secrets`]) redacts secrets.
    #[derive(Clone, Default, clap::Args, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    pub struct ServeArgs {
        /// TOML file with any of these settings (keys as the flag names,
        /// e.g. `auth-timeout-ms = 5000`). Flags and environment win over it.
        #[arg(env = "IGNIS_WS_CONFIG", value_name = "FILE")]
        #[serde(skip)]
        config: PathBuf;

        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(env = "IGNIS_WS_LISTEN", value_name = "ADDR")]
        listen: SocketAddr => same => {
            /// Address every shard listens on (SO_REUSEPORT).
            listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        /// WebSocket path [default: /ws].
        #[arg(env = "IGNIS_WS_PATH")]
        path: String => same => {
            /// The WebSocket path. Ignis: `WebSocketDefaults.PATH` = `/ws`.
            path: String = "/ws".into(),
            invalid if |v| !v.starts_with('/') => "must start with '/'",
        };
        /// Shard threads [default: number of available cores].
        #[arg(env = "IGNIS_WS_SHARDS", value_name = "N")]
        shards: usize => same => {
            /// Shard threads; 0 = one per available core.
            shards: usize = 0,
            invalid if |v| *v > 256 => "at most 256",
        };
        /// Pin each shard thread to a core [default: true].
        #[arg(env = "IGNIS_WS_PIN_CORES", value_name = "BOOL")]
        pin_cores: bool => same => {
            /// Pin shard `i` to core `i mod cores`. Off when shards share
            /// cores with other heavy processes.
            pin_cores: bool = true,
        };
        /// I/O back end: io_uring where available, else epoll [default: auto].
        #[arg(env = "IGNIS_WS_IO", value_enum)]
        io: IoMode => same => {
            /// I/O back end.
            io: IoMode = IoMode::Auto,
        };

        /// How clients authenticate (required): jwt, webhook or insecure.
        #[arg(env = "IGNIS_WS_AUTH", value_enum)]
        auth: AuthKind;
        /// HS256 secret for --auth jwt.
        #[arg(env = "IGNIS_WS_JWT_SECRET", value_name = "SECRET", hide_env_values = true)]
        jwt_secret: String;
        /// File holding the HS256 secret (trailing whitespace trimmed);
        /// instead of --jwt-secret, out of the process list.
        #[arg(env = "IGNIS_WS_JWT_SECRET_FILE", value_name = "FILE")]
        jwt_secret_file: PathBuf;
        /// PEM public key (RSA for RS256, P-256 for ES256) for --auth jwt;
        /// repeat the flag (environment: comma separated; TOML: string or
        /// array) for several keys during a rotation: a token verifies if any
        /// key of its alg verifies it.
        #[arg(env = "IGNIS_WS_JWT_PUBLIC_KEY", value_name = "FILE", value_delimiter = ',')]
        #[serde(default, deserialize_with = "super::one_or_many_paths")]
        jwt_public_key: Vec<PathBuf>;
        /// JWKS URL (RFC 7517) for --auth jwt: fetched at start (a failure
        /// is logged; such tokens are refused until a fetch succeeds), keys
        /// picked by the token's kid; an unknown kid refreshes the set.
        #[arg(env = "IGNIS_WS_JWT_JWKS_URL", value_name = "URL")]
        jwt_jwks_url: String;
        /// Periodic JWKS refresh, seconds; 0 = only on unknown kids
        /// [default: 3600].
        #[arg(env = "IGNIS_WS_JWT_JWKS_REFRESH_S", value_name = "S")]
        jwt_jwks_refresh_s: u64;
        /// Shortest gap between JWKS fetches caused by unknown kids (and
        /// between retries after a failed fetch), seconds [default: 60].
        #[arg(env = "IGNIS_WS_JWT_JWKS_REFRESH_MIN_S", value_name = "S")]
        jwt_jwks_refresh_min_s: u64;
        /// Timeout of one JWKS fetch, ms [default: 5000].
        #[arg(env = "IGNIS_WS_JWT_JWKS_TIMEOUT_MS", value_name = "MS")]
        jwt_jwks_timeout_ms: u64;
        /// Clock skew allowed on exp/nbf (and iat with --jwt-max-age-s),
        /// seconds [default: 0].
        #[arg(env = "IGNIS_WS_JWT_LEEWAY_S", value_name = "S")]
        jwt_leeway_s: u64;
        /// Accepted JWT audiences, comma separated (TOML: string or array): a
        /// token's aud must name one; without any, tokens carrying aud are
        /// refused [default: none].
        #[arg(env = "IGNIS_WS_JWT_AUDIENCE", value_name = "AUD,AUD…")]
        jwt_audience: StringList;
        /// Accepted JWT issuers, comma separated (TOML: string or array): a
        /// token's iss must be one; without any, iss is not checked
        /// [default: none].
        #[arg(env = "IGNIS_WS_JWT_ISSUER", value_name = "ISS,ISS…")]
        jwt_issuer: StringList;
        /// Refuse JWTs without exp [default: true].
        #[arg(env = "IGNIS_WS_JWT_REQUIRE_EXP", value_name = "BOOL")]
        jwt_require_exp: bool;
        /// Refuse JWTs without iat or issued more than S seconds ago
        /// [default: no limit].
        #[arg(env = "IGNIS_WS_JWT_MAX_AGE_S", value_name = "S")]
        jwt_max_age_s: u64;
        /// URL that --auth webhook POSTs the authenticate data to.
        #[arg(env = "IGNIS_WS_AUTH_URL", value_name = "URL")]
        auth_url: String;
        /// Timeout of one webhook call, ms [default: 5000].
        #[arg(env = "IGNIS_WS_AUTH_WEBHOOK_TIMEOUT_MS", value_name = "MS")]
        auth_webhook_timeout_ms: u64;
        /// Webhook auth calls in flight at once; more wait within their
        /// timeout [default: 64].
        #[arg(env = "IGNIS_WS_AUTH_WEBHOOK_CONCURRENCY", value_name = "N")]
        auth_webhook_concurrency: usize;
        /// Room patterns clients may join, comma separated: `*` = any run
        /// within one `:`-separated segment, `?` = one non-`:` character,
        /// `**` = any run across segments, `{userId}` = the client's user id
        /// (a user id holding `:` matches no such pattern). E.g.
        /// 'public:*,user:{userId}:**'; '**' allows every room. Without any
        /// (and no JWT `rooms` claim) joins are refused.
        #[arg(env = "IGNIS_WS_ROOM_ALLOW", value_name = "PATTERNS")]
        room_allow: String => list => {
            /// Room patterns any authenticated client may join: `*` (any
            /// run within one `:`-segment), `?` (one non-`:` character),
            /// `**` (any run, `:` included), `{userId}` (see
            /// [`crate::auth::rooms`]). Empty and no JWT `rooms` claim:
            /// joins are refused, as in Ignis without `validateRoomFn`.
            room_allow: Vec<String> = Vec::new(),
            invalid if |v| v.iter().any(|p| p.chars().count() > MAX_PATTERN_LEN)
                => format!("a pattern is longer than {MAX_PATTERN_LEN} characters"),
        };
        /// Rooms joined on authentication, comma separated; '' for none
        /// [default: ws-default,ws-notification].
        #[arg(env = "IGNIS_WS_DEFAULT_ROOMS", value_name = "ROOMS")]
        default_rooms: String => list => {
            /// Rooms every client joins on authentication.
            /// Ignis: `WebSocketDefaults.ROOM`,
            /// `WebSocketDefaults.NOTIFICATION_ROOM`.
            // Checked in `Config::validate` (the message names the room).
            default_rooms: Vec<String> = vec!["ws-default".into(), "ws-notification".into()],
        };

        /// Time to send `authenticate` after the upgrade, ms (×3 for the
        /// authenticator to answer) [default: 5000].
        #[arg(env = "IGNIS_WS_AUTH_TIMEOUT_MS", value_name = "MS")]
        auth_timeout_ms: u64 => ms => {
            /// Ignis: `WebSocketDefaults.AUTH_TIMEOUT` (5 s). The
            /// authenticator gets three times this once `authenticate`
            /// arrived.
            auth_timeout: Duration = Duration::from_millis(5_000),
            invalid if |v| v.is_zero() => "must be > 0",
            invalid if |v| *v * 3 > DAY => "at most one day",
        };
        /// How often idle clients are looked for, ms [default: 30000].
        #[arg(env = "IGNIS_WS_HEARTBEAT_INTERVAL_MS", value_name = "MS")]
        heartbeat_interval_ms: u64 => ms => {
            /// Ignis: `WebSocketDefaults.HEARTBEAT_INTERVAL` (30 s): how
            /// often idle authenticated clients are looked for.
            heartbeat_interval: Duration = Duration::from_millis(30_000),
            invalid if |v| v.is_zero() => "must be > 0",
            invalid if |v| *v > DAY => "at most one day",
        };
        /// Silence after which an authenticated client is closed with 4002,
        /// ms [default: 90000].
        #[arg(env = "IGNIS_WS_HEARTBEAT_TIMEOUT_MS", value_name = "MS")]
        heartbeat_timeout_ms: u64 => ms => {
            /// Ignis: `WebSocketDefaults.HEARTBEAT_TIMEOUT` (90 s): silence
            /// after which an authenticated client is closed with 4002.
            heartbeat_timeout: Duration = Duration::from_millis(90_000),
            invalid if |v| v.is_zero() => "must be > 0",
            invalid if |v| *v > DAY => "at most one day",
        };
        /// WebSocket idle timeout, s: ping after half of it, close after all
        /// of it; 0 disables [default: 60].
        #[arg(env = "IGNIS_WS_IDLE_TIMEOUT_S", value_name = "S")]
        idle_timeout_s: u64;
        /// Largest client message (bytes, or 128KiB / 1MiB); over it: close
        /// 1009 [default: 128KiB].
        #[arg(env = "IGNIS_WS_MAX_PAYLOAD", value_name = "SIZE")]
        max_payload: ByteSize => bytes => {
            /// Largest client message. Ignis: `MAX_PAYLOAD_LENGTH` (128
            /// KiB). Over it: close 1009.
            max_payload: usize = 128 * 1024,
            invalid if |v| *v == 0 => "must be > 0",
            invalid if |v| *v > 64 * 1024 * 1024 => "at most 64 MiB",
        };
        /// Outbound bytes queued per client before --slow-client acts
        /// [default: 1MiB].
        #[arg(env = "IGNIS_WS_BACKPRESSURE_LIMIT", value_name = "SIZE")]
        backpressure_limit: ByteSize => bytes => {
            /// Outbound bytes queued per client before the slow-client
            /// policy acts. Ignis/Bun: `BACKPRESSURE_LIMIT` (1 MiB). Bounds
            /// memory per client.
            backpressure_limit: usize = 1024 * 1024,
            invalid if |v| *v < 1024 => "at least 1 KiB",
        };
        /// Messages (data, ping, pong) one client may send per second; one
        /// more closes it with 1008; 0 = no limit [default: 1000].
        #[arg(env = "IGNIS_WS_CLIENT_MAX_MSGS_PER_SEC", value_name = "N")]
        client_max_msgs_per_sec: u32 => same => {
            /// Messages (data frames, pings and pongs) a client may send
            /// within one second of the clock; one more and it is closed
            /// with 1008. 0 = no limit. Not in the reference: a guard
            /// against message floods.
            client_max_msgs_per_sec: u32 = 1000,
        };
        /// Rooms one client may be in; joins past it are refused; 0 = no
        /// limit [default: 100].
        #[arg(env = "IGNIS_WS_MAX_ROOMS_PER_CLIENT", value_name = "N")]
        max_rooms_per_client: usize => same => {
            /// Rooms one client may be in (default rooms count; they are
            /// always joined); joins past it are refused like rooms the
            /// validator refuses. 0 = no limit. Not in the reference:
            /// bounds a client's index entries.
            max_rooms_per_client: usize = 100,
        };
        /// Sessions one user may hold at once, across all shards; the next
        /// is refused (error, close 1008); 0 = no limit [default: 0].
        #[arg(env = "IGNIS_WS_MAX_SESSIONS_PER_USER", value_name = "N")]
        max_sessions_per_user: usize => same => {
            /// Authenticated sessions with the same non-empty `userId` at
            /// once, across the shards of this process. The next one gets
            /// the error event `Too many sessions` and close 1008 (policy
            /// violation: a client that reconnects at once gets the same
            /// answer until a session ends; 4003 would tell it its
            /// credentials are bad). 0 = no limit, as in the reference.
            max_sessions_per_user: usize = 0,
        };
        /// Past the budget: close (1008) or drop messages [default: close].
        #[arg(env = "IGNIS_WS_SLOW_CLIENT", value_enum)]
        slow_client: SlowClientPolicy => same => {
            /// What happens past the budget.
            slow_client: SlowClientPolicy = SlowClientPolicy::Close,
        };
        /// Connection limit; 0 = from the file-descriptor limit [default: 0].
        #[arg(env = "IGNIS_WS_MAX_CONNECTIONS", value_name = "N")]
        max_connections: usize => same => {
            /// Connections per process; 0 = derived from the
            /// file-descriptor limit.
            max_connections: usize = 0,
        };
        /// Time allowed for the HTTP upgrade request, ms [default: 5000].
        #[arg(env = "IGNIS_WS_HANDSHAKE_TIMEOUT_MS", value_name = "MS")]
        handshake_timeout_ms: u64 => ms => {
            /// Time allowed for the HTTP upgrade request head (slowloris
            /// guard).
            handshake_timeout: Duration = Duration::from_millis(5_000),
            invalid if |v| v.is_zero() => "must be > 0",
        };
        /// Origins that may open a WebSocket, comma separated:
        /// `scheme://host[:port]`, `*.` before a domain for one or more
        /// labels (e.g. `https://app.example.com,https://*.example.com`);
        /// another Origin gets 403 [default: any].
        #[arg(env = "IGNIS_WS_ALLOWED_ORIGINS", value_name = "ORIGINS")]
        allowed_origins: String => list => {
            /// Origins allowed to upgrade (see
            /// [`crate::proto::handshake::OriginPolicy`]); empty: any.
            // Each pattern is checked in `Config::validate` (the message
            // names it).
            allowed_origins: Vec<String> = Vec::new(),
        };
        /// Refuse (403) a WebSocket upgrade without an Origin header
        /// [default: false].
        #[arg(env = "IGNIS_WS_REQUIRE_ORIGIN", value_name = "BOOL")]
        require_origin: bool => same => {
            /// An upgrade without `Origin` gets 403 (non-browser clients
            /// send none).
            require_origin: bool = false,
        };
        /// WebSocket connections per client address (IPv6: its /64), per
        /// process; one more gets 503 with Retry-After; 0 = off [default: 0].
        #[arg(env = "IGNIS_WS_MAX_CONNS_PER_IP", value_name = "N")]
        max_conns_per_ip: u32 => same => {
            /// WebSocket connections per client IP (see `trusted_proxies`;
            /// an IPv6 address counts as its /64), per process, counted
            /// from the upgrade to the connection's end; 0 = no limit.
            max_conns_per_ip: u32 = 0,
        };
        /// Proxies (CIDRs, comma separated) whose X-Forwarded-For names the
        /// client for --max-conns-per-ip [default: none: the TCP peer].
        #[arg(env = "IGNIS_WS_TRUSTED_PROXIES", value_name = "CIDR,CIDR…")]
        trusted_proxies: String => list => {
            /// When the TCP peer is in one of these, the client is the
            /// rightmost untrusted `X-Forwarded-For` entry; otherwise the
            /// header is ignored.
            // Each CIDR is checked in `Config::validate`.
            trusted_proxies: Vec<String> = Vec::new(),
        };
        /// Every connection starts with a PROXY protocol v2 header (from a
        /// load balancer); its source address is the client's [default:
        /// false].
        #[arg(env = "IGNIS_WS_PROXY_PROTOCOL", value_name = "BOOL")]
        proxy_protocol: bool => same => {
            /// Expect a PROXY protocol v2 header before every request
            /// (`LOCAL` and address-less ones keep the TCP peer); a
            /// connection without one gets 400. Only behind a balancer that
            /// sends it: anyone reaching the port can claim any address.
            proxy_protocol: bool = false,
        };
        /// WebSocket upgrades per second per process (a token bucket of as
        /// many); one more gets 503 with Retry-After; 0 = off [default: 0].
        #[arg(env = "IGNIS_WS_CONNECT_RATE_LIMIT", value_name = "N")]
        connect_rate_limit: u32 => same => {
            /// Upgrades answered per second per process, in bursts of at
            /// most as many; 0 = no limit.
            connect_rate_limit: u32 = 0,
        };
        /// Serve wss:// and https:// with this certificate chain (PEM, leaf
        /// first); with --tls-key. Reloaded on SIGHUP [default: none: ws://].
        #[arg(env = "IGNIS_WS_TLS_CERT", value_name = "FILE")]
        tls_cert: PathBuf => Some => {
            /// TLS on the listening port (TLS 1.2 and 1.3, ALPN
            /// `http/1.1`): the certificate chain, PEM, leaf first. Read at
            /// start and on [`crate::Server::reload_tls`] (SIGHUP).
            // Loaded, and checked with `tls_key`, in `Config::validate`.
            tls_cert: Option<PathBuf> = None,
        };
        /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
        #[arg(env = "IGNIS_WS_TLS_KEY", value_name = "FILE")]
        tls_key: PathBuf => Some => {
            /// The private key of `tls_cert`, PEM.
            tls_key: Option<PathBuf> = None,
        };
        /// TLS handshakes under way at once per process (from the first
        /// ClientHello byte); one more is closed at once [default: 1024].
        #[arg(env = "IGNIS_WS_TLS_MAX_HANDSHAKES", value_name = "N")]
        tls_max_handshakes: u32 => same => {
            /// TLS handshakes under way at once, per process (each shard
            /// its share), counted from the first byte of the ClientHello: a
            /// connection past it is closed then, so a flood of handshakes
            /// cannot take every core from established clients.
            tls_max_handshakes: u32 = 1024,
            invalid if |v| *v == 0 => "must be > 0",
        };
        /// Upgrades in flight per shard before it pauses accepting (up to
        /// 1 ms) to let them finish; 0: no pause [default: 32].
        #[arg(env = "IGNIS_WS_MAX_UPGRADES_IN_FLIGHT", value_name = "N")]
        max_upgrades_in_flight: u32 => same => {
            /// Connections in their HTTP upgrade at once on one shard
            /// before its accept loop waits for one of them to finish, at
            /// most 1 ms, leaving the rest in the kernel's accept queue; 0
            /// turns the pause off. A connect storm then keeps few upgrades
            /// half-done, which costs less CPU per connection
            /// (PERFORMANCE.md); a wait that times out accepts as many
            /// again, so silent connections holding every slot delay
            /// accepts by at most 1 ms a round.
            max_upgrades_in_flight: u32 = 32,
        };
        /// Accept a connection only once its first bytes arrived
        /// (TCP_DEFER_ACCEPT, for about --handshake-timeout-ms) [default:
        /// true].
        #[arg(env = "IGNIS_WS_DEFER_ACCEPT", value_name = "BOOL")]
        defer_accept: bool => same => {
            /// Set TCP_DEFER_ACCEPT on the listeners: the kernel hands a
            /// connection over once its request (or TLS ClientHello, or
            /// PROXY header) arrived, so the shard upgrades it as it
            /// accepts it, without a task or a wait of its own
            /// (`ignis_ws_upgrades_immediate_total`). A silent connection
            /// waits in the listener's SYN queue instead of an upgrade
            /// slot, for the handshake timeout rounded up by the kernel to
            /// its SYN-ACK retransmissions (5 s holds it about 7 s), is
            /// accepted then, and gets its 408 after the handshake timeout.
            /// Clients always speak first here, so only a TCP-level probe
            /// sees a difference (its connect still succeeds).
            defer_accept: bool = true,
        };
        /// Largest HTTP request head, bytes [default: 8KiB].
        #[arg(env = "IGNIS_WS_MAX_HANDSHAKE_BYTES", value_name = "SIZE")]
        max_handshake_bytes: ByteSize => bytes => {
            /// Largest HTTP request head accepted.
            max_handshake_bytes: usize = 8 * 1024,
            invalid if |v| *v < 256 => "at least 256",
        };
        /// Grace period on SIGINT/SIGTERM to flush and close, ms
        /// [default: 5000].
        #[arg(env = "IGNIS_WS_SHUTDOWN_TIMEOUT_MS", value_name = "MS")]
        shutdown_timeout_ms: u64 => ms => {
            /// On SIGINT/SIGTERM: time to flush queues and exchange close
            /// frames before the remaining connections are dropped.
            shutdown_timeout: Duration = Duration::from_millis(5_000),
        };
        /// On SIGTERM: keep accepting this long after `/ready` turned 503,
        /// so the load balancer notices, ms [default: 0].
        #[arg(env = "IGNIS_WS_DRAIN_DELAY_MS", value_name = "MS")]
        drain_delay_ms: u64 => ms => {
            /// On SIGINT/SIGTERM (and [`crate::Server::shutdown`]): `/ready`
            /// answers 503 at once; new connections are still accepted for
            /// this long (a load balancer needs a few health checks to take
            /// the node out), then refused. 0: refused at once.
            drain_delay: Duration = Duration::ZERO,
            invalid if |v| *v > DAY => "at most one day",
        };
        /// Close clients spread evenly over this window after the drain
        /// delay, ms [default: 0].
        #[arg(env = "IGNIS_WS_DRAIN_SPREAD_MS", value_name = "MS")]
        drain_spread_ms: u64 => ms => {
            /// After the drain delay, clients are closed with 1001 spread
            /// evenly over this window (each after what was queued for it),
            /// so they reconnect to other nodes gradually, not all at once.
            /// 0: all at once.
            drain_spread: Duration = Duration::ZERO,
            invalid if |v| *v > DAY => "at most one day",
        };
        /// Wait for the client's close frame after ours, ms [default: 2000].
        #[arg(env = "IGNIS_WS_CLOSE_TIMEOUT_MS", value_name = "MS")]
        close_timeout_ms: u64 => ms => {
            /// After the server sent a close frame: time to wait for the
            /// client's close frame before dropping the TCP connection.
            close_timeout: Duration = Duration::from_millis(2_000),
            invalid if |v| *v > DAY => "at most one day",
        };

        /// Hold writes up to this many microseconds so more messages share
        /// one syscall (CPU for latency) [default: 0].
        #[arg(env = "IGNIS_WS_WRITE_COALESCE_US", value_name = "US")]
        write_coalesce_us: u64 => us => {
            /// Hold a shard's writes up to this long after the first frame
            /// is queued, so more messages share one syscall per client:
            /// less CPU per delivery for up to this much more latency.
            /// Zero: write every loop turn.
            write_coalesce: Duration = Duration::ZERO,
            invalid if |v| *v > Duration::from_secs(1) => "at most 1000000 (1 s)",
        };
        /// Redis URL for cross-instance delivery:
        /// `redis://[user:password@]host:port[/db]`, rediss:// for TLS.
        /// Absent: single node.
        #[arg(env = "IGNIS_WS_REDIS", value_name = "URL", conflicts_with = "redis_cluster")]
        redis: String;
        /// Redis Cluster nodes, comma separated (any reachable node is used;
        /// Redis propagates PUBLISH to every node).
        #[arg(env = "IGNIS_WS_REDIS_CLUSTER", value_name = "URL,URL…")]
        redis_cluster: String;
        /// Redis Sentinel addresses, comma separated (`host:port`, or
        /// `redis[s]://[user:password@]host:port`; the credentials and TLS
        /// apply to the master too): connect to the master they name
        /// (--redis-sentinel-master) and follow its failovers.
        #[arg(env = "IGNIS_WS_REDIS_SENTINEL", value_name = "ADDR,ADDR…", conflicts_with_all = ["redis", "redis_cluster"])]
        redis_sentinel: String;
        /// The master's name in Sentinel (with --redis-sentinel).
        #[arg(env = "IGNIS_WS_REDIS_SENTINEL_MASTER", value_name = "NAME")]
        redis_sentinel_master: String;
        /// PEM CA certificate for rediss:// with a private CA.
        #[arg(env = "IGNIS_WS_REDIS_TLS_CA", value_name = "FILE")]
        redis_tls_ca: PathBuf => Some => {
            /// PEM file with the CA that signed the Redis server's
            /// certificate, for `rediss://` with a private CA (default: the
            /// system trust store).
            // Checked in `Config::validate` (the message carries the I/O
            // error).
            redis_tls_ca: Option<PathBuf> = None,
        };
        /// Sharded pub/sub on Redis Cluster 7+ (with --redis-cluster): SPUBLISH
        /// and SSUBSCRIBE for rooms, users and clients. Ignis on Bun and
        /// its emitter PUBLISH, which never reaches sharded subscribers
        /// [default: false].
        #[arg(env = "IGNIS_WS_REDIS_SHARDED", value_name = "BOOL")]
        redis_sharded: bool => same => {
            /// Rooms, users and clients over SPUBLISH / SSUBSCRIBE on the
            /// master owning each channel's slot (`--redis-cluster` only).
            redis_sharded: bool = false,
        };
        /// What the Redis subscriber listens to: interest (only the
        /// channels of this node's rooms, users and clients) or pattern
        /// (everything, as Ignis on Bun) [default: interest].
        #[arg(env = "IGNIS_WS_REDIS_SUBSCRIBE", value_enum)]
        redis_subscribe: RedisSubscribe => same => {
            /// Which Redis channels the bridge subscribes.
            redis_subscribe: RedisSubscribe = RedisSubscribe::Interest,
        };
        /// Messages queued for Redis during an outage before new ones are
        /// dropped (and counted) [default: 10000].
        #[arg(env = "IGNIS_WS_REDIS_OUTBOX", value_name = "N")]
        redis_outbox: usize => same => {
            /// Messages waiting for Redis while it is unreachable; past it
            /// new publishes are dropped and counted.
            redis_outbox: usize = 10_000,
            invalid if |v| *v == 0 => "must be > 0",
        };
        /// Largest Redis envelope accepted [default: 1MiB].
        #[arg(env = "IGNIS_WS_REDIS_MAX_MESSAGE", value_name = "SIZE")]
        redis_max_message: ByteSize => bytes => {
            /// Largest Redis envelope accepted; a bigger one is dropped and
            /// counted (a frame larger than `backpressure_limit` could never
            /// be queued).
            redis_max_message: usize = 1024 * 1024,
            invalid if |v| *v < 1024 => "at least 1 KiB",
        };
        /// Per-client encryption (ECDH P-256 + AES-256-GCM): off, optional
        /// (for clients that send publicKey) or required [default: off].
        #[arg(env = "IGNIS_WS_ENCRYPTION", value_enum)]
        encryption: EncryptionMode => same => {
            /// Per-client encryption. Ignis: `requireEncryption` (false)
            /// plus a `handshakeFn`; here the handshake is built in.
            encryption: EncryptionMode = EncryptionMode::Off,
        };
        /// Messages a shard encrypts per loop turn before other work runs
        /// [default: 256].
        #[arg(env = "IGNIS_WS_ENCRYPTED_BATCH_LIMIT", value_name = "N")]
        encrypted_batch_limit: usize => same => {
            /// Messages a shard encrypts per loop turn before it lets its
            /// other work run. Ignis: `WebSocketDefaults.ENCRYPTED_BATCH_LIMIT`
            /// (10 concurrent encryptions); here encryption is synchronous
            /// and cheap (~1 µs per message), so batches are bigger. Lower:
            /// fairer latency for plain clients; higher: less scheduling
            /// overhead.
            encrypted_batch_limit: usize = 256,
            invalid if |v| *v == 0 => "must be > 0",
        };
        /// Bearer key that enables POST /api/publish.
        #[arg(env = "IGNIS_WS_API_KEY", value_name = "KEY", hide_env_values = true)]
        api_key: String;
        /// File holding the --api-key (trailing whitespace trimmed); instead
        /// of --api-key, out of the process list.
        #[arg(env = "IGNIS_WS_API_KEY_FILE", value_name = "FILE")]
        api_key_file: PathBuf;
        /// POST /api/publish bodies read at once, per process; one more gets
        /// 503 [default: 16].
        #[arg(env = "IGNIS_WS_API_MAX_PENDING_BODIES", value_name = "N")]
        api_max_pending_bodies: usize => same => {
            /// `POST /api/publish` bodies read at the same time, per process
            /// (each at most `redis_max_message` bytes); one more gets 503
            /// with `Retry-After`. Bounds the memory unfinished publishes
            /// can hold.
            api_max_pending_bodies: usize = 16,
            invalid if |v| *v == 0 => "must be > 0",
        };
        /// Private address for /metrics and /health; /metrics then leaves
        /// the public port [default: none].
        #[arg(env = "IGNIS_WS_METRICS_LISTEN", value_name = "ADDR")]
        metrics_listen: SocketAddr => Some => {
            /// A private address for `/metrics` and `/health` (e.g. a
            /// loopback or internal interface). When set, `/metrics` is no
            /// longer served on `listen`; `/health` stays on both for load
            /// balancers.
            metrics_listen: Option<SocketAddr> = None,
        };
        /// Redis channel custom client events are forwarded to (e.g.
        /// ws:events).
        #[arg(env = "IGNIS_WS_EVENTS_CHANNEL", value_name = "CHANNEL")]
        events_channel: String => Some => {
            /// Redis channel that custom client events are forwarded to.
            events_channel: Option<String> = None,
            invalid if |v| v.as_deref() == Some("") => "must not be empty",
        };
        /// URL custom client events are POSTed to.
        #[arg(env = "IGNIS_WS_EVENTS_WEBHOOK", value_name = "URL")]
        events_webhook: String => Some => {
            /// URL that custom client events are POSTed to.
            events_webhook: Option<String> = None,
            invalid if |v| v.as_deref().is_some_and(|u| !is_http_url(u))
                => "must be an http:// or https:// URL",
        };
        /// Events waiting for an events-webhook worker; more are dropped and
        /// counted [default: 1024].
        #[arg(env = "IGNIS_WS_EVENTS_WEBHOOK_QUEUE", value_name = "N")]
        events_webhook_queue: usize => same => {
            /// Events waiting for an events-webhook worker; past it new
            /// events are dropped and counted
            /// (`ignis_ws_events_dropped_total`).
            events_webhook_queue: usize = 1024,
            invalid if |v| *v == 0 => "must be > 0",
        };
        /// Events-webhook POSTs (and connections) in flight at once
        /// [default: 4].
        #[arg(env = "IGNIS_WS_EVENTS_WEBHOOK_CONCURRENCY", value_name = "N")]
        events_webhook_concurrency: usize => same => {
            /// Events-webhook POSTs in flight at once (and so connections
            /// to the webhook's host).
            events_webhook_concurrency: usize = 4,
            invalid if |v| *v == 0 => "must be > 0",
        };
        /// Timeout of one events-webhook POST, ms [default: 5000].
        #[arg(env = "IGNIS_WS_EVENTS_WEBHOOK_TIMEOUT_MS", value_name = "MS")]
        events_webhook_timeout_ms: u64 => ms => {
            /// Time allowed for one events-webhook POST.
            events_webhook_timeout: Duration = Duration::from_millis(5_000),
            invalid if |v| v.is_zero() => "must be > 0",
        };
        /// Bytes of deliveries waiting for one shard; one more is refused
        /// and counted (503 on /api/publish) [default: 64MiB].
        #[arg(env = "IGNIS_WS_SHARD_QUEUE_LIMIT", value_name = "BYTES")]
        shard_queue_limit: ByteSize => bytes => {
            /// Bytes of deliveries waiting in one shard's channel; a
            /// delivery that does not fit is refused
            /// (`SendError::Overloaded`, 503 on `/api/publish`) and counted.
            // At least one message: checked in `Config::validate`.
            shard_queue_limit: usize = 64 << 20,
        };
        /// Tasks the control thread runs at once (webhook auth, waiting
        /// hooks and room validators); more are refused and counted
        /// [default: 16384].
        #[arg(env = "IGNIS_WS_CONTROL_MAX_TASKS", value_name = "N")]
        control_max_tasks: usize => same => {
            /// Tasks (webhook auth calls, hooks, room validators that wait)
            /// the control thread runs at once; past it new ones are refused
            /// and counted.
            control_max_tasks: usize = 16_384,
            invalid if |v| *v == 0 => "must be > 0",
        };

        /// Log filter (tracing EnvFilter syntax, e.g. `info`,
        /// `ignis_ws=debug`); RUST_LOG is used when absent [default: info].
        #[arg(env = "IGNIS_WS_LOG", value_name = "FILTER")]
        log: String;
        /// Log line format: text (human-readable) or json (one object per
        /// line: timestamp, level, target, fields, spans) [default: text].
        #[arg(env = "IGNIS_WS_LOG_FORMAT", value_enum)]
        log_format: LogFormat;
    }
}

/// An `http://` or `https://` URL (the webhook settings).
pub(super) fn is_http_url(u: &str) -> bool {
    u.starts_with("http://") || u.starts_with("https://")
}

/// How the binary writes its log lines (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (`2026-01-01T00:00:00Z  INFO listening addr=…`).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`
    /// (`message` and the event's fields), `span` and `spans` (the fields
    /// of the spans the event is in).
    Json,
}
