//! The Rust `Emitter`: publishes to Redis exactly what the reference's
//! `WebSocketEmitter` publishes (same channels, same envelope bytes,
//! `serverId: "emitter"`), so any Ignis or ignis-ws server delivers it.
//!
//! It owns one multiplexed Redis connection and nothing else: no outbox,
//! no reconnection. A publish either reaches Redis or returns an error;
//! callers that outlive a Redis restart connect again.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use serde::Serialize;
use serde_json::value::RawValue;

use super::conn;
use super::envelope::{self, EMITTER_SERVER_ID, Kind};

/// Longest wait for one reply; the library default (500 ms) fails healthy
/// but busy servers.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a message could not be emitted.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// The URL is shown redacted ([`crate::secrets::redact_url`]).
    #[error("cannot connect to Redis at {0}: {1}")]
    Connect(String, #[source] redis::RedisError),
    #[error("cannot encode data as JSON: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("publish failed: {0}")]
    Publish(#[source] redis::RedisError),
    /// The URL is shown redacted ([`crate::secrets::redact_url`]).
    #[error("invalid Redis URL {0}: {1}")]
    Url(String, #[source] redis::RedisError),
    /// A client, user or room message was given no target; every server
    /// would drop it.
    #[error("a {0} message needs a target")]
    MissingTarget(Kind),
}

/// Publishes envelopes with `serverId: "emitter"`. Cheap to share: every
/// call clones the multiplexed connection, so calls may run concurrently.
#[derive(Debug, Clone)]
pub struct Emitter {
    conn: MultiplexedConnection,
    /// [`Emitter::connect_sharded`]: rooms, users and clients by SPUBLISH.
    router: Option<std::sync::Arc<tokio::sync::Mutex<super::cluster::Router>>>,
}

impl Emitter {
    /// Connect to `redis://` or `rediss://` (TLS) at `redis_url`;
    /// `user:password@` authenticates (ACL user, or `:password@` for the
    /// default user). Fails within a bounded time when Redis is unreachable.
    /// Must run inside a tokio runtime (the connection's driver is spawned
    /// on it).
    pub async fn connect(redis_url: &str) -> Result<Emitter, EmitError> {
        let shown = || crate::secrets::redact_url(redis_url);
        let client = conn::client(redis_url, None).map_err(|e| EmitError::Url(shown(), e))?;
        let conn = conn::multiplexed(&client, RESPONSE_TIMEOUT)
            .await
            .map_err(|e| EmitError::Connect(shown(), e))?;
        Ok(Emitter { conn, router: None })
    }

    /// Connect to a Redis Cluster (any of `nodes`) for sharded pub/sub, as
    /// ignis-ws `--redis-sharded` nodes listen: room, user and client
    /// messages go by SPUBLISH to the master owning the channel's slot,
    /// broadcasts by classic PUBLISH. Ignis on Bun does not hear SPUBLISH.
    pub async fn connect_sharded(nodes: &[&str]) -> Result<Emitter, EmitError> {
        let mut last = None;
        for url in nodes {
            match Self::connect(url).await {
                Ok(mut e) => {
                    let seeds = nodes.iter().map(|n| n.to_string()).collect();
                    e.router = Some(std::sync::Arc::new(tokio::sync::Mutex::new(
                        super::cluster::Router::new(seeds, None),
                    )));
                    return Ok(e);
                }
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| {
            EmitError::Url(
                String::new(),
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "no cluster node given",
                )),
            )
        }))
    }

    /// The `serverId` every envelope carries: `"emitter"`, as the
    /// reference's, so servers never mistake it for one of their own.
    pub fn server_id(&self) -> &str {
        EMITTER_SERVER_ID
    }

    /// `toClient({clientId, event, data})`.
    pub async fn to_client<D: Serialize + ?Sized>(
        &self,
        client_id: &str,
        event: &str,
        data: &D,
    ) -> Result<(), EmitError> {
        let data = to_json(data)?;
        self.publish(Kind::Client, Some(client_id), event, Some(&data), None)
            .await
    }

    /// `toUser({userId, event, data})`.
    pub async fn to_user<D: Serialize + ?Sized>(
        &self,
        user_id: &str,
        event: &str,
        data: &D,
    ) -> Result<(), EmitError> {
        let data = to_json(data)?;
        self.publish(Kind::User, Some(user_id), event, Some(&data), None)
            .await
    }

    /// `toRoom({room, event, data, exclude})`; `exclude: None` leaves the
    /// key out, `Some(&[])` sends `"exclude":[]`, as `JSON.stringify` would.
    pub async fn to_room<D: Serialize + ?Sized>(
        &self,
        room: &str,
        event: &str,
        data: &D,
        exclude: Option<&[&str]>,
    ) -> Result<(), EmitError> {
        let data = to_json(data)?;
        self.publish(Kind::Room, Some(room), event, Some(&data), exclude)
            .await
    }

    /// `broadcast({event, data})`.
    pub async fn broadcast<D: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &D,
    ) -> Result<(), EmitError> {
        let data = to_json(data)?;
        self.publish(Kind::Broadcast, None, event, Some(&data), None)
            .await
    }

    /// Publish pre-serialized JSON data (used by the CLI with `--data`);
    /// `data_json` must be valid JSON and is sent without the whitespace
    /// around it. `None` leaves the `data` key out, as the reference does
    /// for `data: undefined` (clients then get `{"event":E}`). The envelope
    /// has the shape the typed method of `kind` gives: a broadcast drops
    /// `target`, client and user drop `exclude`.
    pub async fn publish_raw(
        &self,
        kind: Kind,
        target: Option<&str>,
        event: &str,
        data_json: Option<&[u8]>,
        exclude: Option<&[&str]>,
    ) -> Result<(), EmitError> {
        let data = data_json
            .map(serde_json::from_slice::<&RawValue>)
            .transpose()
            .map_err(EmitError::Encode)?;
        let target = target.filter(|_| kind.needs_target());
        let exclude = exclude.filter(|_| kind.honours_exclude());
        let data = data.map(|raw| raw.get().as_bytes());
        self.publish(kind, target, event, data, exclude).await
    }

    async fn publish(
        &self,
        kind: Kind,
        target: Option<&str>,
        event: &str,
        data_json: Option<&[u8]>,
        exclude: Option<&[&str]>,
    ) -> Result<(), EmitError> {
        if kind.needs_target() && target.is_none() {
            return Err(EmitError::MissingTarget(kind));
        }
        let channel = envelope::channel(kind, target);
        let payload = envelope::encode(EMITTER_SERVER_ID, kind, target, event, data_json, exclude);
        let receivers: i64 = match &self.router {
            Some(r) if kind != Kind::Broadcast => r
                .lock()
                .await
                .spublish(&channel, &payload)
                .await
                .map_err(EmitError::Publish)?,
            _ => {
                let mut conn = self.conn.clone();
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&payload)
                    .query_async(&mut conn)
                    .await
                    .map_err(EmitError::Publish)?
            }
        };
        tracing::debug!(%channel, receivers, "emitted");
        Ok(())
    }
}

/// `data` as JSON, as the reference's `JSON.stringify(data)`.
fn to_json<D: Serialize + ?Sized>(data: &D) -> Result<Vec<u8>, EmitError> {
    serde_json::to_vec(data).map_err(EmitError::Encode)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::Instant;

    use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
    use serde_json::json;
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    use super::*;
    use crate::bridge::conn::CONNECT_TIMEOUT;
    use crate::bridge::envelope::tests::{REF_BROADCAST, REF_CLIENT, REF_ROOM, REF_USER};
    use crate::bridge::test_redis::{Redis, free_port, redis_server_installed};

    /// A second connection that PSUBSCRIBEs `ws:*` and sees every message
    /// exactly as Redis delivers it.
    struct Subscriber {
        _conn: MultiplexedConnection,
        rx: UnboundedReceiver<PushInfo>,
    }

    impl Subscriber {
        async fn new(url: &str) -> Subscriber {
            let client = redis::Client::open(format!("{url}/?protocol=resp3")).unwrap();
            let (tx, rx) = unbounded_channel();
            let config = AsyncConnectionConfig::new().set_push_sender(tx);
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .unwrap();
            conn.psubscribe("ws:*").await.unwrap();
            Subscriber { _conn: conn, rx }
        }

        /// The next message's channel and payload.
        async fn next(&mut self) -> (String, String) {
            loop {
                let push = tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
                    .await
                    .expect("a message within 5 s")
                    .expect("subscriber open");
                if push.kind != PushKind::PMessage {
                    continue;
                }
                let text = |v: &Value| match v {
                    Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
                    other => panic!("not a bulk string: {other:?}"),
                };
                return (text(&push.data[1]), text(&push.data[2]));
            }
        }

        async fn expect(&mut self, channel: &str, payload: &str) {
            let (got_channel, got_payload) = self.next().await;
            assert_eq!(got_channel, channel);
            assert_eq!(got_payload, payload);
            let env = envelope::parse(got_payload.as_bytes(), usize::MAX).unwrap();
            assert_eq!(env.server_id, EMITTER_SERVER_ID);
        }
    }

    #[derive(Serialize)]
    struct Notice<'a> {
        msg: &'a str,
    }

    #[tokio::test]
    async fn publishes_exactly_what_the_reference_emitter_publishes() {
        let Some(redis) = Redis::start(&[]) else {
            return;
        };
        let mut sub = Subscriber::new(&redis.url()).await;
        let emitter = Emitter::connect(&redis.url()).await.unwrap();
        assert_eq!(emitter.server_id(), "emitter");

        emitter
            .to_client("c1", "hello", &json!({"x": 1}))
            .await
            .unwrap();
        sub.expect("ws:client:c1", REF_CLIENT).await;

        emitter
            .to_user("u1", "notify", &Notice { msg: "hi" })
            .await
            .unwrap();
        sub.expect("ws:user:u1", REF_USER).await;

        emitter
            .to_room("lobby", "update", &json!({}), Some(&["c1", "c2"]))
            .await
            .unwrap();
        sub.expect("ws:room:lobby", REF_ROOM).await;

        emitter
            .broadcast("global", &json!({"announcement": true}))
            .await
            .unwrap();
        sub.expect("ws:broadcast", REF_BROADCAST).await;

        emitter
            .to_room("lobby", "update", &json!({}), None)
            .await
            .unwrap();
        sub.expect(
            "ws:room:lobby",
            r#"{"serverId":"emitter","type":"room","target":"lobby","event":"update","data":{}}"#,
        )
        .await;

        emitter
            .to_room("lobby", "update", &(), Some(&[]))
            .await
            .unwrap();
        sub.expect(
            "ws:room:lobby",
            r#"{"serverId":"emitter","type":"room","target":"lobby","event":"update","data":null,"exclude":[]}"#,
        )
        .await;

        // Unsized data and ids that need escaping in JSON but not in the
        // channel name.
        emitter.to_client("a\"b c", "e", "text\n").await.unwrap();
        sub.expect(
            "ws:client:a\"b c",
            r#"{"serverId":"emitter","type":"client","target":"a\"b c","event":"e","data":"text\n"}"#,
        )
        .await;
    }

    #[tokio::test]
    async fn publish_raw_gives_the_reference_shapes() {
        let Some(redis) = Redis::start(&[]) else {
            return;
        };
        let mut sub = Subscriber::new(&redis.url()).await;
        let emitter = Emitter::connect(&redis.url()).await.unwrap();

        emitter
            .publish_raw(
                Kind::Client,
                Some("c1"),
                "hello",
                Some(br#"{"x":1}"#),
                Some(&["c9"]),
            )
            .await
            .unwrap();
        sub.expect("ws:client:c1", REF_CLIENT).await;
        emitter
            .publish_raw(
                Kind::User,
                Some("u1"),
                "notify",
                Some(b" {\"msg\":\"hi\"}\n"),
                None,
            )
            .await
            .unwrap();
        sub.expect("ws:user:u1", REF_USER).await;
        emitter
            .publish_raw(
                Kind::Room,
                Some("lobby"),
                "update",
                Some(b"{}"),
                Some(&["c1", "c2"]),
            )
            .await
            .unwrap();
        sub.expect("ws:room:lobby", REF_ROOM).await;
        emitter
            .publish_raw(
                Kind::Broadcast,
                Some("ignored"),
                "global",
                Some(br#"{"announcement":true}"#),
                None,
            )
            .await
            .unwrap();
        sub.expect("ws:broadcast", REF_BROADCAST).await;

        // Refused before anything reaches Redis.
        let err = emitter
            .publish_raw(Kind::Room, Some("r"), "e", Some(b"{nope"), None)
            .await
            .unwrap_err();
        assert!(matches!(err, EmitError::Encode(_)), "{err}");
        let err = emitter
            .publish_raw(Kind::Broadcast, None, "e", Some(b"1 2"), None)
            .await
            .unwrap_err();
        assert!(matches!(err, EmitError::Encode(_)), "{err}");
        for kind in [Kind::Client, Kind::User, Kind::Room] {
            let err = emitter
                .publish_raw(kind, None, "e", Some(b"1"), None)
                .await
                .unwrap_err();
            assert!(
                matches!(err, EmitError::MissingTarget(k) if k == kind),
                "{err}"
            );
        }
        emitter
            .publish_raw(Kind::Broadcast, None, "last", Some(b"1"), Some(&[]))
            .await
            .unwrap();
        sub.expect(
            "ws:broadcast",
            r#"{"serverId":"emitter","type":"broadcast","event":"last","data":1,"exclude":[]}"#,
        )
        .await;

        // No data: no `data` key, as the reference emitter with
        // `data: undefined`; the client frame is then `{"event":"g"}`.
        emitter
            .publish_raw(Kind::Client, Some("c1"), "g", None, None)
            .await
            .unwrap();
        sub.expect(
            "ws:client:c1",
            r#"{"serverId":"emitter","type":"client","target":"c1","event":"g"}"#,
        )
        .await;
        let (_, payload) = {
            emitter
                .publish_raw(Kind::Room, Some("r"), "g", None, None)
                .await
                .unwrap();
            sub.next().await
        };
        let env = envelope::parse(payload.as_bytes(), usize::MAX).unwrap();
        let mut frame = bytes::BytesMut::new();
        env.write_client_message(&mut frame);
        assert_eq!(&frame[..], br#"{"event":"g"}"#);
    }

    #[tokio::test]
    async fn data_that_cannot_be_json_is_an_encode_error() {
        let Some(redis) = Redis::start(&[]) else {
            return;
        };
        let emitter = Emitter::connect(&redis.url()).await.unwrap();
        let mut data = std::collections::HashMap::new();
        data.insert((1, 2), 3);
        let err = emitter.broadcast("e", &data).await.unwrap_err();
        assert!(matches!(err, EmitError::Encode(_)), "{err}");
        assert!(err.to_string().starts_with("cannot encode data as JSON: "));
    }

    #[tokio::test]
    async fn connect_to_a_closed_port_fails_fast() {
        let port = free_port();
        let started = Instant::now();
        let err = Emitter::connect(&format!("redis://127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(matches!(err, EmitError::Connect(..)), "{err}");
        assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(1));
    }

    #[tokio::test]
    async fn connect_to_a_silent_server_times_out() {
        // Accepts TCP (the kernel does, from the backlog) but never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let started = Instant::now();
        let err = Emitter::connect(&format!("redis://127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(matches!(err, EmitError::Connect(..)), "{err}");
        assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(1));
        drop(listener);
    }

    #[tokio::test]
    async fn errors_never_show_the_password() {
        let port = free_port();
        for url in [
            format!("redis://me:hunter2-pw@127.0.0.1:{port}"),
            "redis://me:hunter2-pw@127.0.0.1:notaport".to_owned(),
            "rediss://:hunter2-pw@[::1".to_owned(),
        ] {
            let err = Emitter::connect(&url).await.unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("hunter2"), "{url}: {shown}");
            assert!(err.to_string().contains("***@"), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn invalid_urls_are_url_errors() {
        for url in ["", "http://127.0.0.1:6379", "redis://[::1", "not a url"] {
            let err = Emitter::connect(url).await.unwrap_err();
            assert!(matches!(err, EmitError::Url(..)), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn authenticates_as_an_acl_user() {
        // Password "p@ss:w/rd", percent-encoded in the URL.
        let Some(redis) = Redis::start(&[
            "--user",
            "alice",
            "on",
            ">p@ss:w/rd",
            "~*",
            "&*",
            "+@all",
            "--user",
            "default",
            "off",
        ]) else {
            return;
        };
        let authed = format!("redis://alice:p%40ss%3Aw%2Frd@127.0.0.1:{}", redis.port);
        let mut sub = Subscriber::new(&authed).await;
        let emitter = Emitter::connect(&authed).await.unwrap();
        emitter
            .to_client("c1", "hello", &json!({"x": 1}))
            .await
            .unwrap();
        sub.expect("ws:client:c1", REF_CLIENT).await;

        let wrong = format!("redis://alice:nope@127.0.0.1:{}", redis.port);
        let err = Emitter::connect(&wrong).await.unwrap_err();
        assert!(matches!(err, EmitError::Connect(..)), "{err}");
        assert!(!err.to_string().contains("nope"), "{err}");

        // Without credentials the connection opens but may not publish.
        let anonymous = Emitter::connect(&redis.url()).await.unwrap();
        let err = anonymous.broadcast("e", &1).await.unwrap_err();
        assert!(matches!(err, EmitError::Publish(_)), "{err}");
    }

    /// Set in the child process of [`rediss_with_a_trusted_certificate`].
    const TLS_CHILD_ENV: &str = "BRIDGE_EMITTER_TLS_CHILD";
    const TLS_CHILD_DONE: &str = "TLS CHILD PASSED";

    fn openssl(dir: &Path, args: &[&str]) -> bool {
        Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A CA and a server certificate it signed for 127.0.0.1 (rustls
    /// rejects a self-signed CA certificate used as the server's own).
    fn make_certificates(dir: &Path) -> bool {
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-nodes",
                "-newkey",
                "rsa:2048",
                "-days",
                "1",
                "-subj",
                "/CN=bridge test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ) && openssl(
            dir,
            &[
                "req",
                "-new",
                "-nodes",
                "-newkey",
                "rsa:2048",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        ) && openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.pem",
            ],
        )
    }

    /// `rediss://` end to end. rustls trusts only the platform's roots, so
    /// the test CA is handed over through `SSL_CERT_FILE`, which must be set
    /// before the process reads it: the test re-runs itself as a child with
    /// that variable, rather than mutating its own environment.
    #[tokio::test]
    async fn rediss_with_a_trusted_certificate() {
        if let Ok(urls) = std::env::var(TLS_CHILD_ENV) {
            let (tls_url, plain_url) = urls.split_once(' ').unwrap();
            let mut sub = Subscriber::new(plain_url).await;
            let emitter = Emitter::connect(tls_url).await.unwrap();
            emitter
                .broadcast("global", &json!({"announcement": true}))
                .await
                .unwrap();
            sub.expect("ws:broadcast", REF_BROADCAST).await;
            println!("{TLS_CHILD_DONE}");
            return;
        }
        if !redis_server_installed() {
            return;
        }
        let dir = std::env::temp_dir().join(format!(
            "bridge-emitter-tls-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _cleanup = Cleanup(dir.clone());
        if !make_certificates(&dir) {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must run the TLS test: openssl is missing or failed"
            );
            println!("SKIPPED: openssl cannot make a test certificate");
            return;
        }
        let path = |name: &str| dir.join(name).display().to_string();
        let tls_port = free_port();
        let (cert, key, ca) = (path("server.pem"), path("server.key"), path("ca.pem"));
        let tls_args = [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ]
        .map(str::to_owned);
        let tls_args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
        let Some(redis) = Redis::start(&tls_args) else {
            return;
        };

        let module = module_path!();
        let test = format!(
            "{}::rediss_with_a_trusted_certificate",
            module.split_once("::").map_or(module, |(_, rest)| rest)
        );
        let out = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(
                TLS_CHILD_ENV,
                format!("rediss://127.0.0.1:{tls_port} {}", redis.url()),
            )
            .env("SSL_CERT_FILE", path("ca.pem"))
            .env_remove("SSL_CERT_DIR")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains(TLS_CHILD_DONE),
            "TLS child failed ({}):\n{stdout}\n{stderr}",
            out.status
        );

        // Without the CA the certificate is refused.
        let err = tokio::time::timeout(
            Duration::from_secs(10),
            Emitter::connect(&format!("rediss://127.0.0.1:{tls_port}")),
        )
        .await
        .unwrap()
        .unwrap_err();
        assert!(matches!(err, EmitError::Connect(..)), "{err}");
    }
}
