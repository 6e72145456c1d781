//! `Debug` for the configuration types that hold secrets: the API key and
//! the JWT secret print as `<redacted>`, URLs with their passwords redacted
//! ([`crate::secrets::redact_url`]). The fields are listed by hand: a field
//! added later is left out until someone adds it here (a test fails until
//! then), so a new secret is never printed by accident.

use std::fmt;

use super::{AuthMode, Config, ServeArgs};
use crate::secrets::{REDACTED, redact_url};

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
                public_key_files,
                jwks,
                leeway_s,
                audience,
                issuer,
                require_exp,
                max_age_s,
            } => f
                .debug_struct("Jwt")
                .field("secret", &secret(s))
                .field("public_key_files", public_key_files)
                .field("jwks", jwks)
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
            .field("max_sessions_per_user", &c.max_sessions_per_user)
            .field("slow_client", &c.slow_client)
            .field("max_connections", &c.max_connections)
            .field("handshake_timeout", &c.handshake_timeout)
            .field("allowed_origins", &c.allowed_origins)
            .field("require_origin", &c.require_origin)
            .field("max_conns_per_ip", &c.max_conns_per_ip)
            .field("trusted_proxies", &c.trusted_proxies)
            .field("proxy_protocol", &c.proxy_protocol)
            .field("connect_rate_limit", &c.connect_rate_limit)
            .field("max_handshake_bytes", &c.max_handshake_bytes)
            .field("shutdown_timeout", &c.shutdown_timeout)
            .field("drain_delay", &c.drain_delay)
            .field("drain_spread", &c.drain_spread)
            .field("close_timeout", &c.close_timeout)
            .field("write_coalesce", &c.write_coalesce)
            .field("redis", &urls(&c.redis))
            .field("redis_cluster", &c.redis_cluster)
            .field("redis_sentinel", &urls(&c.redis_sentinel))
            .field("redis_sentinel_master", &c.redis_sentinel_master)
            .field("redis_tls_ca", &c.redis_tls_ca)
            .field("tls_cert", &c.tls_cert)
            .field("tls_key", &c.tls_key)
            .field("tls_max_handshakes", &c.tls_max_handshakes)
            .field("max_upgrades_in_flight", &c.max_upgrades_in_flight)
            .field("defer_accept", &c.defer_accept)
            .field("redis_subscribe", &c.redis_subscribe)
            .field("redis_sharded", &c.redis_sharded)
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
            .field("jwt_jwks_url", &a.jwt_jwks_url.as_deref().map(url))
            .field("jwt_jwks_refresh_s", &a.jwt_jwks_refresh_s)
            .field("jwt_jwks_refresh_min_s", &a.jwt_jwks_refresh_min_s)
            .field("jwt_jwks_timeout_ms", &a.jwt_jwks_timeout_ms)
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
            .field("max_sessions_per_user", &a.max_sessions_per_user)
            .field("slow_client", &a.slow_client)
            .field("max_connections", &a.max_connections)
            .field("handshake_timeout_ms", &a.handshake_timeout_ms)
            .field("allowed_origins", &a.allowed_origins)
            .field("require_origin", &a.require_origin)
            .field("max_conns_per_ip", &a.max_conns_per_ip)
            .field("trusted_proxies", &a.trusted_proxies)
            .field("proxy_protocol", &a.proxy_protocol)
            .field("connect_rate_limit", &a.connect_rate_limit)
            .field("max_handshake_bytes", &a.max_handshake_bytes)
            .field("shutdown_timeout_ms", &a.shutdown_timeout_ms)
            .field("drain_delay_ms", &a.drain_delay_ms)
            .field("drain_spread_ms", &a.drain_spread_ms)
            .field("close_timeout_ms", &a.close_timeout_ms)
            .field("write_coalesce_us", &a.write_coalesce_us)
            .field("redis", &a.redis.as_deref().map(url))
            .field("redis_cluster", &a.redis_cluster.as_deref().map(url))
            .field("redis_sentinel", &a.redis_sentinel.as_deref().map(url))
            .field("redis_sentinel_master", &a.redis_sentinel_master)
            .field("redis_tls_ca", &a.redis_tls_ca)
            .field("tls_cert", &a.tls_cert)
            .field("tls_key", &a.tls_key)
            .field("tls_max_handshakes", &a.tls_max_handshakes)
            .field("max_upgrades_in_flight", &a.max_upgrades_in_flight)
            .field("defer_accept", &a.defer_accept)
            .field("redis_subscribe", &a.redis_subscribe)
            .field("redis_sharded", &a.redis_sharded)
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
            .field("log_format", &a.log_format)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthKind;

    /// A field added to the settings table fails here until it is listed
    /// above (with its secret redacted, if it holds one).
    #[test]
    fn debug_lists_every_field() {
        let shown = format!("{:?}", Config::default());
        for field in crate::config::settings::CONFIG_FIELDS {
            assert!(
                shown.contains(&format!(" {field}: ")),
                "Config's Debug leaves out {field}: {shown}"
            );
        }
        let shown = format!("{:?}", ServeArgs::default());
        for field in crate::config::settings::ARG_FIELDS {
            assert!(
                shown.contains(&format!(" {field}: ")),
                "ServeArgs's Debug leaves out {field}: {shown}"
            );
        }
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
}
