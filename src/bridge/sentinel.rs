//! Redis Sentinel (`--redis-sentinel ADDR,… --redis-sentinel-master
//! NAME`): find the master the Sentinels name and follow its failovers.
//!
//! One task ([`watch()`]) keeps the master's URL in a `watch` channel: it
//! asks the Sentinels (`SENTINEL GET-MASTER-ADDR-BY-NAME`) and checks the
//! answer with `ROLE` on the node itself, then listens for
//! `+switch-master` on one Sentinel and asks again on every event and at
//! least every [`POLL`] (an event can be missed while that connection is
//! down). The subscriber and the publisher connect to the URL the channel
//! holds and reconnect as soon as it changes: after a failover the old
//! master may keep its clients connected for seconds (until Sentinel
//! reconfigures it as a replica) while the new one already takes
//! PUBLISHes, so waiting for the old connection to drop would lose what
//! is published meanwhile.
//!
//! The master connection uses the scheme (`rediss://` for TLS), the
//! credentials and the database of the Sentinel address that answered.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use super::conn::{CONNECT_TIMEOUT, PUBLISH_TIMEOUT, client, multiplexed, redact};

/// How often the master is asked for even without `+switch-master`.
pub const POLL: Duration = Duration::from_secs(2);

/// Settings of [`watch()`]. `Debug` redacts the addresses' credentials.
#[derive(Clone)]
pub struct SentinelConfig {
    /// Sentinel URLs ([`sentinel_url`] of each `--redis-sentinel` entry).
    pub sentinels: Vec<String>,
    /// `--redis-sentinel-master`.
    pub master: String,
}

impl std::fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s: Vec<String> = self.sentinels.iter().map(|u| redact(u)).collect();
        f.debug_struct("SentinelConfig")
            .field("sentinels", &s)
            .field("master", &self.master)
            .finish()
    }
}

pub use crate::config::sentinel_url;

/// `url` with its host and port replaced; scheme, credentials and
/// database kept. An IPv6 host gets its brackets.
pub fn with_host(url: &str, host: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let userinfo = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!("{scheme}://{userinfo}{host}:{port}{path}")
}

/// What one Sentinel says the master's address is.
async fn ask(sentinel: &str, ca: Option<&[u8]>, name: &str) -> Result<(String, u16), String> {
    let c = client(sentinel, ca).map_err(|e| e.to_string())?;
    let mut conn = multiplexed(&c, PUBLISH_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let addr: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(name)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let (host, port) = addr.ok_or_else(|| format!("no master named {name:?}"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("bad port {port:?} for {name:?}"))?;
    Ok((host, port))
}

/// Whether the node at `url` says it is a master (`ROLE`).
async fn is_master(url: &str, ca: Option<&[u8]>) -> Result<bool, String> {
    let c = client(url, ca).map_err(|e| e.to_string())?;
    let mut conn = multiplexed(&c, PUBLISH_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let role: redis::Value = redis::cmd("ROLE")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(match role {
        redis::Value::Array(v) => matches!(
            v.first(),
            Some(redis::Value::BulkString(b)) if b == b"master"
        ),
        _ => false,
    })
}

/// The master's URL: the first Sentinel (in order) whose answer is a node
/// that confirms it is a master.
pub async fn resolve(cfg: &SentinelConfig, ca: Option<&[u8]>) -> Result<String, String> {
    let mut errors = Vec::new();
    for s in &cfg.sentinels {
        let found = async {
            let (host, port) = ask(s, ca, &cfg.master).await?;
            let url = with_host(s, &host, port);
            if is_master(&url, ca).await? {
                Ok(url)
            } else {
                Err(format!("{host}:{port} is not a master (yet)"))
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, found).await {
            Ok(Ok(url)) => return Ok(url),
            Ok(Err(e)) => errors.push(format!("{}: {}", redact(s), crate::secrets::scrub(&e, s))),
            Err(_) => errors.push(format!("{}: timed out", redact(s))),
        }
    }
    Err(errors.join("; "))
}

/// Keep `tx` on the current master's URL, forever.
pub async fn watch(cfg: SentinelConfig, ca: Option<Vec<u8>>, tx: watch::Sender<Option<String>>) {
    let ca = ca.as_deref();
    let mut node = 0usize;
    loop {
        // The events of one Sentinel, while its connection lasts.
        let s = &cfg.sentinels[node % cfg.sentinels.len()];
        let events = async {
            let c = client(s, ca)?;
            let mut ps = c.get_async_pubsub().await?;
            ps.subscribe("+switch-master").await?;
            redis::RedisResult::Ok(ps.into_on_message())
        };
        let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, events).await {
            Ok(Ok(st)) => Some(st),
            _ => {
                node += 1;
                None
            }
        };
        loop {
            update(&cfg, ca, &tx).await;
            let Some(st) = stream.as_mut() else {
                tokio::time::sleep(POLL).await;
                break;
            };
            tokio::select! {
                m = st.next() => match m {
                    Some(m) => {
                        let text: String = m.get_payload().unwrap_or_default();
                        tracing::info!(event = %text, "redis sentinel: +switch-master");
                    }
                    None => {
                        node += 1;
                        break;
                    }
                },
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

async fn update(cfg: &SentinelConfig, ca: Option<&[u8]>, tx: &watch::Sender<Option<String>>) {
    match resolve(cfg, ca).await {
        Ok(url) => {
            tx.send_if_modified(|cur| {
                if cur.as_deref() == Some(url.as_str()) {
                    return false;
                }
                tracing::info!(master = %redact(&url), name = %cfg.master, "redis sentinel: master found");
                *cur = Some(url);
                true
            });
        }
        // The last known master stays in use.
        Err(e) => tracing::warn!(name = %cfg.master, error = %e, "redis sentinel: no master"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(sentinel_url("10.0.0.1:26379"), "redis://10.0.0.1:26379");
        assert_eq!(sentinel_url("rediss://s:1"), "rediss://s:1");
        assert_eq!(
            with_host("redis://u:p@s:26379/2", "10.0.0.9", 6380),
            "redis://u:p@10.0.0.9:6380/2"
        );
        assert_eq!(
            with_host("rediss://:p@s:26379", "::1", 6379),
            "rediss://:p@[::1]:6379"
        );
        assert_eq!(with_host("redis://s", "h", 1), "redis://h:1");
    }
}
