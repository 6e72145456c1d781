//! Every setting of the server: [`Config`] (what the library takes), its
//! defaults and where they come from, and the command-line / environment /
//! TOML front end ([`ServeArgs`]) that builds one.
//!
//! Precedence: command-line flag > `IGNIS_WS_*` environment variable >
//! `--config FILE.toml` > built-in default. A bad value is a [`ConfigError`]
//! that names the key; the binary prints it and exits with status 2.
//!
//! Every setting is declared once, in the table in `settings.rs` (flag,
//! environment variable, TOML key, `Config` field, default, doc and the
//! checks on its own value); `table.rs` holds the macro that expands it,
//! `args.rs` the hand-written part of turning [`ServeArgs`] into a
//! [`Config`], `debug.rs` the `Debug` impls that redact secrets.

#[macro_use]
mod table;
mod args;
mod debug;
mod settings;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use settings::is_http_url;
pub use settings::{Config, LogFormat, ServeArgs};
use table::DAY;

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

/// What to do with a client whose outbound queue passes the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowClientPolicy {
    /// Close it with 1008 `Backpressure limit exceeded` (frees its queue).
    Close,
    /// Drop the messages that do not fit; keep the connection.
    Drop,
}

/// A `--redis-sentinel` entry as a URL: `host:port` means
/// `redis://host:port`.
pub fn sentinel_url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("redis://{addr}")
    }
}

/// Which Redis channels the bridge subscribes (`--redis-subscribe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisSubscribe {
    /// `ws:broadcast`, plus `ws:room:{room}` while a local client is in the
    /// room, `ws:user:{userId}` while a local session has the user id, and
    /// `ws:client:{id}` and `ws:room:{id}` while the client is connected:
    /// a node hears only what its own clients need.
    Interest,
    /// `ws:broadcast` and the patterns `ws:room:*`, `ws:client:*`,
    /// `ws:user:*`, as Ignis on Bun: every node hears every envelope of
    /// the cluster.
    Pattern,
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
    /// `data.token` is a JWT checked with a secret, public keys and/or a
    /// JWKS fetched from a URL.
    Jwt {
        /// HS256 secret.
        secret: Option<String>,
        /// PEM files, each with an RSA (RS256) or P-256 (ES256) public key;
        /// several for key rotation.
        public_key_files: Vec<PathBuf>,
        /// A JWKS URL and its refresh settings (`--jwt-jwks-*`).
        jwks: Option<crate::auth::JwksConfig>,
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
            public_key_files: Vec::new(),
            jwks: None,
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
            public_key_files: vec![file.into()],
            jwks: None,
            leeway_s: 0,
            audience: Vec::new(),
            issuer: Vec::new(),
            require_exp: true,
            max_age_s: None,
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

/// `rediss://…/#insecure`: TLS without a certificate check. Refused at
/// start (exit 2) and by the subscriber's own connection, as the
/// publisher's `redis` crate, built without its insecure feature, refuses
/// it too.
pub fn redis_tls_unchecked(addr: &redis::ConnectionAddr) -> bool {
    matches!(addr, redis::ConnectionAddr::TcpTls { insecure: true, .. })
}

impl Config {
    /// Check the settings against each other and the machine.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Each table setting on its own (`invalid if` in settings.rs).
        self.validate_table()?;
        // The hand-written settings, and the checks that involve several
        // settings or whose message carries more than a fixed text.
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(bad("--tls-key", "required with --tls-cert")),
            (None, Some(_)) => return Err(bad("--tls-cert", "required with --tls-key")),
            _ => {}
        }
        if self.idle_timeout.is_some_and(|d| d > DAY) {
            return Err(bad("--idle-timeout-s", "at most one day"));
        }
        if let Err(p) =
            crate::proto::handshake::OriginPolicy::new(&self.allowed_origins, self.require_origin)
        {
            return Err(bad(
                "--allowed-origins",
                format!("{p:?} is not scheme://host[:port] (a host may start with `*.`)"),
            ));
        }
        if let Some(c) = self
            .trusted_proxies
            .iter()
            .find(|c| crate::proto::handshake::Cidr::parse(c).is_none())
        {
            return Err(bad(
                "--trusted-proxies",
                format!("{c:?} is not an address or CIDR (e.g. 10.0.0.0/8)"),
            ));
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
                public_key_files,
                jwks,
                ..
            } => {
                if let Some(j) = jwks {
                    if !is_http_url(&j.url) {
                        return Err(bad("--jwt-jwks-url", "must be an http:// or https:// URL"));
                    }
                    if j.timeout.is_zero() {
                        return Err(bad("--jwt-jwks-timeout-ms", "must be > 0"));
                    }
                    if j.timeout > Duration::from_secs(60) {
                        return Err(bad("--jwt-jwks-timeout-ms", "at most 60000"));
                    }
                    if j.refresh_min.is_zero() {
                        return Err(bad("--jwt-jwks-refresh-min-s", "must be > 0"));
                    }
                    if j.refresh.is_some_and(|r| r.is_zero()) {
                        return Err(bad("--jwt-jwks-refresh-s", "must be > 0 (0 turns it off)"));
                    }
                }
                match (secret, public_key_files.is_empty() && jwks.is_none()) {
                    (None, true) => {
                        return Err(bad(
                            "--jwt-secret",
                            "--auth jwt needs --jwt-secret (HS256), --jwt-public-key FILE \
                             (RS256/ES256) or --jwt-jwks-url URL",
                        ));
                    }
                    (Some(_), false) => {
                        return Err(bad(
                            if public_key_files.is_empty() {
                                "--jwt-jwks-url"
                            } else {
                                "--jwt-public-key"
                            },
                            "give either --jwt-secret or --jwt-public-key / --jwt-jwks-url, \
                             not both",
                        ));
                    }
                    (Some(s), true) if s.is_empty() => {
                        return Err(bad("--jwt-secret", "must not be empty"));
                    }
                    (Some(s), true) if s.len() < crate::auth::jwt::MIN_HS256_SECRET_LEN => {
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
                }
            }
            AuthMode::Webhook { url, timeout, .. } => {
                if !is_http_url(url) {
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
            // Redacted: the URL may carry the Redis password.
            let shown = || crate::secrets::redact_url(url);
            match redis::Client::open(url.as_str()) {
                Err(e) => {
                    let e = crate::secrets::scrub(&e.to_string(), url);
                    return Err(bad(
                        redis_key,
                        format!("{:?} is not a Redis URL: {e}", shown()),
                    ));
                }
                Ok(c) if redis_tls_unchecked(c.get_connection_info().addr()) => {
                    return Err(bad(
                        redis_key,
                        format!(
                            "{:?}: `#insecure` (TLS without a certificate check) is not supported; give the server's CA with --redis-tls-ca",
                            shown()
                        ),
                    ));
                }
                Ok(_) => {}
            }
        }
        for addr in &self.redis_sentinel {
            let url = sentinel_url(addr);
            if let Err(e) = redis::Client::open(url.as_str()) {
                let shown = crate::secrets::redact_url(&url);
                let e = crate::secrets::scrub(&e.to_string(), &url);
                return Err(bad(
                    "--redis-sentinel",
                    format!("{shown:?} is not a Sentinel address: {e}"),
                ));
            }
        }
        if self.redis_sharded && !self.redis_cluster {
            return Err(bad(
                "--redis-sharded",
                "sharded pub/sub needs --redis-cluster (Redis Cluster 7 or newer)",
            ));
        }
        if self.redis_sharded && self.redis_subscribe == RedisSubscribe::Pattern {
            return Err(bad(
                "--redis-sharded",
                "sharded pub/sub has no patterns: use --redis-subscribe interest",
            ));
        }
        match (self.redis_sentinel.is_empty(), &self.redis_sentinel_master) {
            (false, None) => {
                return Err(bad(
                    "--redis-sentinel-master",
                    "--redis-sentinel needs the master's name",
                ));
            }
            (true, Some(_)) => {
                return Err(bad(
                    "--redis-sentinel",
                    "--redis-sentinel-master needs --redis-sentinel ADDR,ADDR…",
                ));
            }
            _ => {}
        }
        if self.redis_sentinel_master.as_deref() == Some("") {
            return Err(bad("--redis-sentinel-master", "must not be empty"));
        }
        if !self.redis_sentinel.is_empty() && !self.redis.is_empty() {
            return Err(bad(
                "--redis-sentinel",
                "give one of --redis, --redis-cluster, --redis-sentinel",
            ));
        }
        if let Some(ca) = &self.redis_tls_ca
            && let Err(e) = std::fs::metadata(ca)
        {
            return Err(bad(
                "--redis-tls-ca",
                format!("cannot read {}: {e}", ca.display()),
            ));
        }
        if self.shard_queue_limit < self.redis_max_message.max(self.max_payload) {
            return Err(bad(
                "--shard-queue-limit",
                "must hold at least one message (>= --redis-max-message and --max-payload)",
            ));
        }
        if let AuthMode::Webhook { concurrency: 0, .. } = self.auth {
            return Err(bad("--auth-webhook-concurrency", "must be > 0"));
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
        if self.events_channel.is_some() && self.redis.is_empty() {
            return Err(bad("--events-channel", "needs --redis or --redis-cluster"));
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
    /// JWT in `data.token` (HS256 secret, RS256/ES256 public keys, JWKS).
    Jwt,
    /// POST `data` to `--auth-url`.
    Webhook,
    /// Accept everyone (development and benchmarks only).
    Insecure,
}

/// A TOML path list: one string (comma separated, like the environment
/// variable) or an array of strings.
fn one_or_many_paths<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<PathBuf>>, D::Error> {
    let list = StringList::deserialize(d)?;
    Ok(Some(list.0.into_iter().map(PathBuf::from).collect()))
}

/// Split a comma list, trimming items and dropping empty ones.
pub fn comma_list(s: &str) -> Vec<String> {
    crate::auth::rooms::parse_patterns(s)
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

    /// Every flag is `--name` for the field `name`, reads `IGNIS_WS_NAME`
    /// and is the TOML key `name` (but `--config`, not read from the file
    /// it names), so no setting can forget one of them.
    #[test]
    fn every_flag_has_its_env_var_and_toml_key() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let cmd = Serve::command();
        let flags: Vec<_> = cmd
            .get_arguments()
            .filter(|a| a.get_id() != "help")
            .collect();
        let ids: Vec<&str> = flags.iter().map(|a| a.get_id().as_str()).collect();
        assert_eq!(ids, settings::ARG_FIELDS, "every ServeArgs field is a flag");
        for a in flags {
            let id = a.get_id().as_str();
            let key = id.replace('_', "-");
            assert_eq!(a.get_long(), Some(key.as_str()), "{id}");
            let env = format!("IGNIS_WS_{}", id.to_ascii_uppercase());
            assert_eq!(
                a.get_env().and_then(|e| e.to_str()),
                Some(env.as_str()),
                "{id}"
            );
            assert!(!a.is_hide_set(), "--{key} is left out of --help");
            assert!(a.get_help().is_some(), "--{key} has no help text");
            // A value of the wrong type: refused, but not as an unknown key.
            let err = match toml::from_str::<ServeArgs>(&format!("{key} = {{}}")) {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            };
            assert_eq!(
                err.contains("unknown field"),
                id == "config",
                "TOML key {key}: {err}"
            );
        }
    }

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
        let a = ServeArgs {
            auth: Some(AuthKind::Insecure),
            redis: Some("rediss://127.0.0.1:6380/#insecure".into()),
            ..Default::default()
        };
        let e = a.into_config().unwrap_err();
        assert_eq!(e.key, "--redis");
        assert!(e.message.contains("--redis-tls-ca"), "{}", e.message);
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

    /// The JWT claim settings `a` configures: (audience, issuer,
    /// require_exp, max_age_s).
    fn jwt_claims(a: ServeArgs) -> (Vec<String>, Vec<String>, bool, Option<u64>) {
        match a.into_config().unwrap().auth {
            AuthMode::Jwt {
                audience,
                issuer,
                require_exp,
                max_age_s,
                ..
            } => (audience, issuer, require_exp, max_age_s),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn jwt_claim_settings_from_flags_env_and_toml() {
        const SECRET: &str = "0123456789abcdef0123456789abcdef";
        let a = ServeArgs {
            auth: Some(AuthKind::Jwt),
            jwt_secret: Some(SECRET.into()),
            ..Default::default()
        };
        let (audience, issuer, require_exp, max_age_s) = jwt_claims(a);
        assert!(audience.is_empty() && issuer.is_empty());
        assert!(require_exp, "exp is required by default");
        assert_eq!(max_age_s, None);
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
        let (audience, issuer, require_exp, max_age_s) = jwt_claims(file);
        assert_eq!(audience, vec!["ignis", "ws"]);
        assert_eq!(issuer, vec!["https://a.example", "https://b.example"]);
        assert!(!require_exp);
        assert_eq!(max_age_s, Some(300));
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
            jwt_public_key: Some(vec!["/some.pem".into()]),
            ..Default::default()
        };
        assert!(a.into_config().is_ok());
    }

    /// `--jwt-public-key` repeats (flag), is a comma list (environment) or
    /// a string or array (TOML); the `--jwt-jwks-*` settings and their
    /// checks.
    #[test]
    fn jwt_key_lists_and_jwks_settings() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let keys = |a: ServeArgs| match a.into_config().unwrap().auth {
            AuthMode::Jwt {
                public_key_files,
                jwks,
                ..
            } => (public_key_files, jwks),
            other => panic!("{other:?}"),
        };
        let cli = Serve::try_parse_from([
            "serve",
            "--auth",
            "jwt",
            "--jwt-public-key",
            "/a.pem",
            "--jwt-public-key",
            "/b.pem,/c.pem",
        ])
        .unwrap();
        let (files, jwks) = keys(cli.args);
        assert_eq!(
            files,
            [
                Path::new("/a.pem"),
                Path::new("/b.pem"),
                Path::new("/c.pem")
            ]
        );
        assert_eq!(jwks, None);
        for toml_value in ["\"/a.pem, /b.pem\"", "[\"/a.pem\", \"/b.pem\"]"] {
            let file: ServeArgs =
                toml::from_str(&format!("auth = \"jwt\"\njwt-public-key = {toml_value}\n"))
                    .unwrap();
            assert_eq!(keys(file).0, [Path::new("/a.pem"), Path::new("/b.pem")]);
        }

        let jwks_args = |extra: &[&str]| {
            let mut argv = vec![
                "serve",
                "--auth",
                "jwt",
                "--jwt-jwks-url",
                "https://idp.example/jwks",
            ];
            argv.extend_from_slice(extra);
            Serve::try_parse_from(argv).unwrap().args
        };
        let (files, jwks) = keys(jwks_args(&[]));
        assert!(files.is_empty());
        assert_eq!(
            jwks,
            Some(crate::auth::JwksConfig::new("https://idp.example/jwks"))
        );
        let (_, jwks) = keys(jwks_args(&[
            "--jwt-jwks-refresh-s",
            "0",
            "--jwt-jwks-refresh-min-s",
            "5",
            "--jwt-jwks-timeout-ms",
            "250",
        ]));
        let jwks = jwks.unwrap();
        assert_eq!(jwks.refresh, None);
        assert_eq!(jwks.refresh_min, Duration::from_secs(5));
        assert_eq!(jwks.timeout, Duration::from_millis(250));
        // Static keys and a JWKS together are fine.
        assert!(
            jwks_args(&["--jwt-public-key", "/a.pem"])
                .into_config()
                .is_ok()
        );
        for (extra, key) in [
            (
                &["--jwt-jwks-refresh-min-s", "0"][..],
                "--jwt-jwks-refresh-min-s",
            ),
            (&["--jwt-jwks-timeout-ms", "0"][..], "--jwt-jwks-timeout-ms"),
            (
                &["--jwt-jwks-timeout-ms", "60001"][..],
                "--jwt-jwks-timeout-ms",
            ),
            (
                &["--jwt-secret", "0123456789abcdef0123456789abcdef"][..],
                "--jwt-jwks-url",
            ),
        ] {
            assert_eq!(
                jwks_args(extra).into_config().unwrap_err().key,
                key,
                "{extra:?}"
            );
        }
        let a = ServeArgs {
            auth: Some(AuthKind::Jwt),
            jwt_jwks_url: Some("ftp://idp.example/jwks".into()),
            ..Default::default()
        };
        assert_eq!(a.into_config().unwrap_err().key, "--jwt-jwks-url");
        let a = ServeArgs {
            auth: Some(AuthKind::Jwt),
            ..Default::default()
        };
        let e = a.into_config().unwrap_err();
        assert!(e.message.contains("--jwt-jwks-url"), "{e}");
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
