//! The hand-written part of [`ServeArgs`]: reading the `--config` file, and
//! turning the flags that are not one table setting each (`--auth` and its
//! JWT (keys, JWKS) / webhook settings, `--idle-timeout-s`, `--redis`/`--redis-cluster`,
//! the secrets with a `*-file` variant) into a [`Config`].

use std::time::Duration;

use super::table::ms;
use super::{
    AuthKind, AuthMode, Config, ConfigError, ServeArgs, bad, comma_list, from_value_or_file,
};
use crate::auth::JwksConfig;

impl ServeArgs {
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
        let mut cfg = Config::default();
        self.apply_table(&mut cfg);
        cfg.auth = match self.auth {
            None => {
                return Err(bad(
                    "--auth",
                    "no authentication mode given: use --auth jwt|webhook|insecure (IGNIS_WS_AUTH)",
                ));
            }
            Some(AuthKind::Jwt) => AuthMode::Jwt {
                secret: self.jwt_secret,
                public_key_files: self.jwt_public_key.unwrap_or_default(),
                jwks: self.jwt_jwks_url.map(|url| JwksConfig {
                    url,
                    refresh: match self.jwt_jwks_refresh_s.unwrap_or(3_600) {
                        0 => None,
                        s => Some(Duration::from_secs(s)),
                    },
                    refresh_min: Duration::from_secs(self.jwt_jwks_refresh_min_s.unwrap_or(60)),
                    timeout: ms(self.jwt_jwks_timeout_ms.unwrap_or(5_000)),
                }),
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
                timeout: ms(self.auth_webhook_timeout_ms.unwrap_or(5_000)),
                concurrency: self.auth_webhook_concurrency.unwrap_or(64),
            },
            Some(AuthKind::Insecure) => AuthMode::Insecure,
        };
        cfg.idle_timeout = match self.idle_timeout_s {
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
            None => cfg.idle_timeout,
        };
        cfg.redis_cluster = self.redis_cluster.is_some();
        cfg.redis = match (self.redis, self.redis_cluster) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "--redis-cluster",
                    "give either --redis or --redis-cluster",
                ));
            }
            (Some(u), None) => vec![u],
            (None, Some(list)) => {
                let v = comma_list(&list);
                if v.is_empty() {
                    return Err(bad("--redis-cluster", "list at least one node URL"));
                }
                v
            }
            (None, None) => Vec::new(),
        };
        // Paired with --redis-sentinel-master, and apart from --redis, in
        // `Config::validate`.
        if let Some(list) = self.redis_sentinel {
            cfg.redis_sentinel = comma_list(&list);
            if cfg.redis_sentinel.is_empty() {
                return Err(bad(
                    "--redis-sentinel",
                    "list at least one Sentinel address",
                ));
            }
        }
        cfg.redis_sentinel_master = self.redis_sentinel_master;
        cfg.api_key = self.api_key.filter(|k| !k.is_empty());
        cfg.validate()?;
        Ok(cfg)
    }
}
