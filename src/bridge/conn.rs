//! What the bridge's two connections, the [`super::emitter::Emitter`] and
//! the bench's Redis publisher share: the settings ([`BridgeConfig`]), the
//! Redis client ([`client`], [`multiplexed`]), reconnection backoff, and
//! [`redact`] for every URL that reaches a log line or an error.

use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

/// Time allowed to connect (and subscribe, and AUTH) before trying again
/// or failing.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one command (PUBLISH, PING) before the connection is
/// considered dead.
pub(super) const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Settings of the bridge (from [`crate::Config`]). `Debug` redacts the
/// URLs' credentials.
#[derive(Clone)]
pub struct BridgeConfig {
    /// One URL, or the nodes of a Redis Cluster (any reachable one serves:
    /// Redis Cluster propagates classic PUBLISH to every node).
    pub urls: Vec<String>,
    /// Outbox capacity (messages).
    pub outbox: usize,
    /// Largest envelope accepted.
    pub max_message: usize,
    /// PEM CA for `rediss://` with a private CA.
    pub tls_ca: Option<Vec<u8>>,
    /// Connect to the master Redis Sentinel names instead of `urls`.
    pub sentinel: Option<super::sentinel::SentinelConfig>,
    /// `urls` are Redis Cluster nodes and rooms, users and clients go
    /// through sharded pub/sub ([`super::cluster`]).
    pub sharded: bool,
    /// The tag of this process's client ids
    /// ([`crate::delivery::ClientId::new_tagged`]): the subscriber
    /// PSUBSCRIBEs `ws:client:{tag}-*` and `ws:room:{tag}-*` for them.
    pub client_tag: Option<u32>,
}

impl std::fmt::Debug for BridgeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact(u)).collect();
        f.debug_struct("BridgeConfig")
            .field("urls", &urls)
            .field("outbox", &self.outbox)
            .field("max_message", &self.max_message)
            .field("tls_ca", &self.tls_ca.as_ref().map(Vec::len))
            .field("sentinel", &self.sentinel)
            .field("sharded", &self.sharded)
            .field("client_tag", &self.client_tag)
            .finish()
    }
}

/// A Redis client for `url`, trusting `tls_ca` (PEM) when given.
pub fn client(url: &str, tls_ca: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    match tls_ca {
        Some(ca) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        ),
        None => redis::Client::open(url),
    }
}

/// A multiplexed connection of `client` that fails within
/// [`CONNECT_TIMEOUT`] when Redis is unreachable (TCP, TLS and AUTH
/// together) and gives each reply `response_timeout`.
pub async fn multiplexed(
    client: &redis::Client,
    response_timeout: Duration,
) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response_timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Where one of the bridge's connections goes next: the configured nodes
/// in turn (the next one after a failure), or the master Sentinel names
/// now ([`super::sentinel::watch`] keeps it).
pub(super) struct Endpoint {
    urls: Vec<String>,
    node: usize,
    master: Option<tokio::sync::watch::Receiver<Option<String>>>,
}

impl Endpoint {
    pub(super) fn new(
        cfg: &BridgeConfig,
        master: Option<tokio::sync::watch::Receiver<Option<String>>>,
    ) -> Endpoint {
        Endpoint {
            urls: cfg.urls.clone(),
            node: 0,
            master,
        }
    }

    /// The URL to connect to (with Sentinel: once a master is known).
    pub(super) async fn url(&mut self) -> String {
        match &mut self.master {
            Some(rx) => {
                let url = rx.wait_for(Option::is_some).await.map(|m| m.clone());
                match url {
                    Ok(Some(u)) => u,
                    // The watcher is gone: the process is stopping.
                    _ => std::future::pending().await,
                }
            }
            None => self.urls[self.node % self.urls.len().max(1)].clone(),
        }
    }

    /// Connecting to `url` failed: try the next node.
    pub(super) fn failed(&mut self) {
        self.node += 1;
    }

    /// Resolves when the master moved away from `url` (never without
    /// Sentinel).
    pub(super) async fn moved(&mut self, url: &str) {
        let Some(rx) = &mut self.master else {
            return std::future::pending().await;
        };
        loop {
            let same = rx.borrow_and_update().as_deref() == Some(url);
            if !same {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// A Redis URL without its password, for logs ([`crate::secrets::redact_url`]).
pub fn redact(url: &str) -> String {
    crate::secrets::redact_url(url)
}

/// Exponential backoff with full jitter between `BACKOFF_MIN` and the
/// current ceiling.
#[derive(Debug)]
pub(super) struct Backoff {
    ceiling: Duration,
    seed: u64,
}

impl Backoff {
    pub(super) fn new() -> Self {
        let seed = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
        Backoff {
            ceiling: BACKOFF_MIN,
            seed,
        }
    }

    pub(super) fn reset(&mut self) {
        self.ceiling = BACKOFF_MIN;
    }

    pub(super) fn next(&mut self) -> Duration {
        // xorshift64: cheap randomness so nodes that lost Redis together do
        // not reconnect in lockstep.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let span = self.ceiling.as_millis().max(1) as u64;
        let wait = Duration::from_millis(span / 2 + self.seed % (span / 2 + 1));
        self.ceiling = (self.ceiling * 2).min(BACKOFF_MAX);
        wait.max(BACKOFF_MIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(first >= BACKOFF_MIN && first <= BACKOFF_MIN * 2);
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            last = b.next();
            assert!(last <= BACKOFF_MAX);
        }
        assert!(last >= BACKOFF_MAX / 2, "{last:?}");
        b.reset();
        assert!(b.next() <= BACKOFF_MIN * 2);
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://user:pw@h:6379/0"),
            "redis://user:***@h:6379/0"
        );
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }
}
