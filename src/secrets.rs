//! Owns how secrets stay out of logs, errors and `Debug` output (issue 12):
//! [`redact_url`] for URLs that may carry credentials (Redis, webhooks),
//! hand-written `Debug` for every configuration type that holds a secret
//! (the API key, the JWT secret, credentials in URLs), reading a secret from
//! a file (`--api-key-file`, `--jwt-secret-file`), and the start-up warning
//! for secrets given as command-line flags.
//!
//! The `Debug` impls list their fields by hand: a field added later is left
//! out until someone adds it here, so a new secret is never printed by
//! accident.

use std::fmt;
use std::path::Path;

use crate::config::{AuthMode, Config, ConfigError, ServeArgs};

/// What a secret prints as.
pub const REDACTED: &str = "<redacted>";

/// What a URL's credentials print as.
const REDACTED_CREDENTIALS: &str = "***";

/// `url` with its password (or its whole user info, when the URL does not
/// parse cleanly) replaced by `***`, for logs and errors.
///
/// * `redis://user:pass@host:6379/0` → `redis://user:***@host:6379/0`
/// * `rediss://:pass@host` → `rediss://:***@host`
/// * `redis://secret@host` (user info without a `:`) → `redis://***@host`
///   (some clients read a lone user info as the password)
/// * anything that does not parse as a URL, or whose user info is not
///   exactly `user:password` before the last `@`: everything between `://`
///   (or the start) and the last `@` → `***`
/// * no `@` at all: unchanged (there is nothing to hide).
pub fn redact_url(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    let start = match url.find("://") {
        Some(s) if s + 3 <= at => s + 3,
        _ => 0,
    };
    let userinfo = &url[start..at];
    // Keep the user name only when the URL parses and its user info is
    // plainly `user:password` ending at the last `@` (so nothing of the
    // password can hide in what is kept).
    if let Some((user, pass)) = userinfo.split_once(':')
        && let Ok(parsed) = reqwest::Url::parse(url)
        && parsed.username() == user
        && parsed.password().unwrap_or_default() == pass
        && !user.contains(['/', '?', '#', '@'])
    {
        return format!(
            "{}{user}:{REDACTED_CREDENTIALS}{}",
            &url[..start],
            &url[at..]
        );
    }
    format!("{}{REDACTED_CREDENTIALS}{}", &url[..start], &url[at..])
}

/// `text` (an error message about `url`) with `url` and its user info
/// replaced by their redacted forms, in case a library echoed them.
pub fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact_url(url));
    if let Some(at) = url.rfind('@') {
        let start = url.find("://").map_or(0, |s| s + 3).min(at);
        let userinfo = &url[start..at];
        if let Some((_, pass)) = userinfo.split_once(':') {
            if !pass.is_empty() {
                out = out.replace(pass, REDACTED_CREDENTIALS);
            }
        } else if !userinfo.is_empty() {
            out = out.replace(userinfo, REDACTED_CREDENTIALS);
        }
    }
    out
}

/// Prints as `<redacted>`.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// `None`, or `Some(<redacted>)`.
fn secret<T>(value: &Option<T>) -> Option<Redacted> {
    value.as_ref().map(|_| Redacted)
}

/// A URL whose credentials are redacted, printed like a string.
fn url(u: &str) -> String {
    redact_url(u)
}

fn urls(list: &[String]) -> Vec<String> {
    list.iter().map(|u| redact_url(u)).collect()
}

impl fmt::Debug for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthMode::Jwt {
                secret: s,
                public_key_file,
                leeway_s,
                audience,
                issuer,
                require_exp,
                max_age_s,
            } => f
                .debug_struct("Jwt")
                .field("secret", &secret(s))
                .field("public_key_file", public_key_file)
                .field("leeway_s", leeway_s)
                .field("audience", audience)
                .field("issuer", issuer)
                .field("require_exp", require_exp)
                .field("max_age_s", max_age_s)
                .finish(),
            AuthMode::Webhook {
                url: u,
                timeout,
                concurrency,
            } => f
                .debug_struct("Webhook")
                .field("url", &url(u))
                .field("timeout", timeout)
                .field("concurrency", concurrency)
                .finish(),
            AuthMode::Insecure => f.write_str("Insecure"),
            AuthMode::Custom => f.write_str("Custom"),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self;
        f.debug_struct("Config")
            .field("listen", &c.listen)
            .field("path", &c.path)
            .field("shards", &c.shards)
            .field("pin_cores", &c.pin_cores)
            .field("io", &c.io)
            .field("auth", &c.auth)
            .field("room_allow", &c.room_allow)
            .field("default_rooms", &c.default_rooms)
            .field("auth_timeout", &c.auth_timeout)
            .field("heartbeat_interval", &c.heartbeat_interval)
            .field("heartbeat_timeout", &c.heartbeat_timeout)
            .field("idle_timeout", &c.idle_timeout)
            .field("max_payload", &c.max_payload)
            .field("backpressure_limit", &c.backpressure_limit)
            .field("client_max_msgs_per_sec", &c.client_max_msgs_per_sec)
            .field("max_rooms_per_client", &c.max_rooms_per_client)
            .field("slow_client", &c.slow_client)
            .field("max_connections", &c.max_connections)
            .field("handshake_timeout", &c.handshake_timeout)
            .field("max_handshake_bytes", &c.max_handshake_bytes)
            .field("shutdown_timeout", &c.shutdown_timeout)
            .field("close_timeout", &c.close_timeout)
            .field("io_uring_multishot", &c.io_uring_multishot)
            .field("io_ring_buffers", &c.io_ring_buffers)
            .field("write_coalesce", &c.write_coalesce)
            .field("redis", &urls(&c.redis))
            .field("redis_cluster", &c.redis_cluster)
            .field("redis_tls_ca", &c.redis_tls_ca)
            .field("redis_outbox", &c.redis_outbox)
            .field("redis_max_message", &c.redis_max_message)
            .field("api_key", &secret(&c.api_key))
            .field("api_max_pending_bodies", &c.api_max_pending_bodies)
            .field("metrics_listen", &c.metrics_listen)
            .field("encryption", &c.encryption)
            .field("encrypted_batch_limit", &c.encrypted_batch_limit)
            .field("events_channel", &c.events_channel)
            .field("events_webhook", &c.events_webhook.as_deref().map(url))
            .field("events_webhook_queue", &c.events_webhook_queue)
            .field("events_webhook_concurrency", &c.events_webhook_concurrency)
            .field("events_webhook_timeout", &c.events_webhook_timeout)
            .field("shard_queue_limit", &c.shard_queue_limit)
            .field("control_max_tasks", &c.control_max_tasks)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self;
        f.debug_struct("ServeArgs")
            .field("config", &a.config)
            .field("listen", &a.listen)
            .field("path", &a.path)
            .field("shards", &a.shards)
            .field("pin_cores", &a.pin_cores)
            .field("io", &a.io)
            .field("auth", &a.auth)
            .field("jwt_secret", &secret(&a.jwt_secret))
            .field("jwt_secret_file", &a.jwt_secret_file)
            .field("jwt_public_key", &a.jwt_public_key)
            .field("jwt_leeway_s", &a.jwt_leeway_s)
            .field("jwt_audience", &a.jwt_audience)
            .field("jwt_issuer", &a.jwt_issuer)
            .field("jwt_require_exp", &a.jwt_require_exp)
            .field("jwt_max_age_s", &a.jwt_max_age_s)
            .field("auth_url", &a.auth_url.as_deref().map(url))
            .field("auth_webhook_timeout_ms", &a.auth_webhook_timeout_ms)
            .field("auth_webhook_concurrency", &a.auth_webhook_concurrency)
            .field("room_allow", &a.room_allow)
            .field("default_rooms", &a.default_rooms)
            .field("auth_timeout_ms", &a.auth_timeout_ms)
            .field("heartbeat_interval_ms", &a.heartbeat_interval_ms)
            .field("heartbeat_timeout_ms", &a.heartbeat_timeout_ms)
            .field("idle_timeout_s", &a.idle_timeout_s)
            .field("max_payload", &a.max_payload)
            .field("backpressure_limit", &a.backpressure_limit)
            .field("client_max_msgs_per_sec", &a.client_max_msgs_per_sec)
            .field("max_rooms_per_client", &a.max_rooms_per_client)
            .field("slow_client", &a.slow_client)
            .field("max_connections", &a.max_connections)
            .field("handshake_timeout_ms", &a.handshake_timeout_ms)
            .field("max_handshake_bytes", &a.max_handshake_bytes)
            .field("shutdown_timeout_ms", &a.shutdown_timeout_ms)
            .field("close_timeout_ms", &a.close_timeout_ms)
            .field("io_uring_recv", &a.io_uring_recv)
            .field("io_ring_buffers", &a.io_ring_buffers)
            .field("write_coalesce_us", &a.write_coalesce_us)
            .field("redis", &a.redis.as_deref().map(url))
            .field("redis_cluster", &a.redis_cluster.as_deref().map(url))
            .field("redis_tls_ca", &a.redis_tls_ca)
            .field("redis_outbox", &a.redis_outbox)
            .field("redis_max_message", &a.redis_max_message)
            .field("encryption", &a.encryption)
            .field("encrypted_batch_limit", &a.encrypted_batch_limit)
            .field("api_key", &secret(&a.api_key))
            .field("api_key_file", &a.api_key_file)
            .field("api_max_pending_bodies", &a.api_max_pending_bodies)
            .field("metrics_listen", &a.metrics_listen)
            .field("events_channel", &a.events_channel)
            .field("events_webhook", &a.events_webhook.as_deref().map(url))
            .field("events_webhook_queue", &a.events_webhook_queue)
            .field("events_webhook_concurrency", &a.events_webhook_concurrency)
            .field("events_webhook_timeout_ms", &a.events_webhook_timeout_ms)
            .field("shard_queue_limit", &a.shard_queue_limit)
            .field("control_max_tasks", &a.control_max_tasks)
            .field("log", &a.log)
            .finish_non_exhaustive()
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

/// Whether `url` carries credentials (a user info part).
pub fn has_credentials(url: &str) -> bool {
    redact_url(url) != url
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthKind, ServeArgs};

    #[test]
    fn redact_url_cases() {
        for (given, want) in [
            (
                "redis://user:pass@host:6379/0",
                "redis://user:***@host:6379/0",
            ),
            ("rediss://:pass@host", "rediss://:***@host"),
            ("rediss://:p%40ss@host:6380", "rediss://:***@host:6380"),
            ("redis://secret@host", "redis://***@host"),
            ("redis://host:6379", "redis://host:6379"),
            ("redis://h", "redis://h"),
            ("", ""),
            // Unparsable: everything between :// and the last @.
            (
                "redis://user:hunter2@host:notaport",
                "redis://***@host:notaport",
            ),
            ("redis://u:pa@ss@host", "redis://***@host"),
            ("redis://u:pa/ss@host", "redis://***@host"),
            ("redis://:pa ss@host", "redis://***@host"),
            ("user:pass@host", "***@host"),
            ("not a url at all", "not a url at all"),
            (
                "https://u:p@auth.example.com/x?y=1",
                "https://u:***@auth.example.com/x?y=1",
            ),
        ] {
            assert_eq!(redact_url(given), want, "{given}");
        }
        assert!(has_credentials("redis://:x@h"));
        assert!(!has_credentials("redis://h:1"));
    }

    #[test]
    fn scrub_removes_url_and_password() {
        let u = "redis://me:hunter2@host:bad";
        let text = format!("{u:?} is wrong; password hunter2 rejected");
        let s = scrub(&text, u);
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("host:bad"), "{s}");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let cfg = Config {
            auth: AuthMode::jwt_secret("jwt-secret-0123456789-abcdefghijkl"),
            api_key: Some("api-key-0123456789abcdef".into()),
            redis: vec!["redis://user:redis-pass-xyz@h:6379".into()],
            events_webhook: Some("https://hook:hook-pass-xyz@e.example/x".into()),
            ..Config::default()
        };
        let mut shown = vec![format!("{cfg:?}"), format!("{cfg:#?}")];
        shown.push(format!("{:?}", crate::ServerBuilder::new(cfg.clone())));
        let webhook = AuthMode::Webhook {
            url: "https://u:auth-pass-xyz@a.example/".into(),
            timeout: std::time::Duration::from_secs(1),
            concurrency: 4,
        };
        shown.push(format!("{webhook:?}"));
        let args = ServeArgs {
            auth: Some(AuthKind::Jwt),
            jwt_secret: Some("jwt-secret-0123456789-abcdefghijkl".into()),
            api_key: Some("api-key-0123456789abcdef".into()),
            redis: Some("redis://user:redis-pass-xyz@h:6379".into()),
            auth_url: Some("https://u:auth-pass-xyz@a.example/".into()),
            ..ServeArgs::default()
        };
        shown.push(format!("{args:?}"));
        for s in &shown {
            for secret in [
                "jwt-secret-0123456789",
                "api-key-0123456789",
                "redis-pass-xyz",
                "hook-pass-xyz",
                "auth-pass-xyz",
            ] {
                assert!(!s.contains(secret), "{secret} shown in {s}");
            }
        }
        assert!(
            shown[0].contains("api_key: Some(<redacted>)"),
            "{}",
            shown[0]
        );
        assert!(
            shown[0].contains("secret: Some(<redacted>)"),
            "{}",
            shown[0]
        );
        assert!(shown[0].contains("redis://user:***@h:6379"), "{}", shown[0]);
    }

    #[test]
    fn secret_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, "s3cret-value-from-a-file\n").unwrap();
        assert_eq!(
            from_value_or_file("--api-key", None, "--api-key-file", Some(&p)),
            Ok(Some("s3cret-value-from-a-file".into()))
        );
        assert_eq!(
            from_value_or_file("--api-key", Some("x".into()), "--api-key-file", None),
            Ok(Some("x".into()))
        );
        let both = from_value_or_file("--api-key", Some("x".into()), "--api-key-file", Some(&p))
            .unwrap_err();
        assert_eq!(both.key, "--api-key-file");
        let missing = dir.path().join("absent");
        let e =
            from_value_or_file("--api-key", None, "--api-key-file", Some(&missing)).unwrap_err();
        assert_eq!(e.key, "--api-key-file");
        std::fs::write(&p, " \n").unwrap();
        let e =
            from_value_or_file("--jwt-secret", None, "--jwt-secret-file", Some(&p)).unwrap_err();
        assert_eq!(e.key, "--jwt-secret-file");
        assert!(e.message.contains("empty"), "{}", e.message);
    }
}
