//! The rest of cross-instance delivery: the HTTP publish API, custom client
//! events forwarded to Redis and a webhook, Redis AUTH/ACL, TLS and
//! Cluster, the `ignis-ws emit` CLI and two `ignis-ws` processes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use ignis_ws::config::IoMode;
use serde_json::{Value, json};
use util::redis_server::{RedisCluster, RedisServer};
use util::*;

const KEY: &str = "test-api-key-0123456789";
const BIN: &str = env!("CARGO_BIN_EXE_ignis-ws");

/// `POST /api/publish` with bearer `key`: (status, body).
async fn post(addr: std::net::SocketAddr, key: Option<&str>, body: &str) -> (u16, String) {
    let mut r = post_publish(addr, key, body).await;
    let all = String::from_utf8_lossy(&r.read_to_end().await).to_string();
    let status: u16 = all[9..12].parse().unwrap();
    let body = all
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_api() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut cfg = redis_config(IoMode::Auto, &redis.url());
    cfg.api_key = Some(KEY.into());
    let a = start(cfg);
    let b = start(redis_config(IoMode::Auto, &redis.url()));
    wait_subscribed(&a.handle()).await;
    wait_subscribed(&b.handle()).await;
    let (mut ca, da) = authed_in(&a.url(), "alice", &["r"]).await;
    let (mut cb, _) = authed_in(&b.url(), "bob", &["r"]).await;
    settle_subscriptions(&[&a, &b]).await;
    // Auth.
    let ok_body = r#"{"type":"room","target":"r","event":"e","data":1}"#;
    assert_eq!(post(a.addr, None, ok_body).await.0, 401);
    assert_eq!(
        post(a.addr, Some("wrong-key-wrong-key-x"), ok_body).await.0,
        401
    );
    // Validation, each with its reason.
    for (body, why) in [
        ("not json", "invalid body"),
        (r#"{"type":"nope","event":"e"}"#, "type"),
        (r#"{"type":"room","event":"e"}"#, "target"),
        (r#"{"type":"room","target":"r"}"#, "event"),
        (r#"{"type":"room","target":"r","event":""}"#, "event"),
        (
            r#"{"type":"user","target":"u","event":"e","exclude":["x"]}"#,
            "exclude",
        ),
        (
            r#"{"type":"room","target":"r","event":"e","extra":1}"#,
            "extra",
        ),
        (
            r#"{"type":"room","target":"r","event":"e","exclude":"x"}"#,
            "invalid body",
        ),
    ] {
        let (status, text) = post(a.addr, Some(KEY), body).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(why), "{body}: {text}");
    }
    // Accepted: local first, then Redis to node B; exclude honoured.
    let body =
        json!({"type":"room","target":"r","event":"api","data":{"k":[1,2]},"exclude":[id_of(&da)]})
            .to_string();
    let (status, text) = post(a.addr, Some(KEY), &body).await;
    assert_eq!((status, text.as_str()), (202, r#"{"ok":true}"#));
    assert_eq!(
        cb.recv_text().await,
        r#"{"event":"api","data":{"k":[1,2]}}"#
    );
    let (status, _) = post(
        a.addr,
        Some(KEY),
        r#"{"type":"broadcast","event":"all","data":null}"#,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        ca.recv_text().await,
        r#"{"event":"all","data":null}"#,
        "excluded from the room message"
    );
    assert_eq!(cb.recv_text().await, r#"{"event":"all","data":null}"#);
    // Without a key the endpoint does not exist.
    let (status, _) = post(b.addr, Some(KEY), ok_body).await;
    assert_eq!(status, 404);
}

/// A local webhook that reports each JSON body it gets.
async fn webhook_sink() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Value>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let _ = tx.send(serde_json::from_slice::<Value>(&body).unwrap());
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b""),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_events_are_forwarded() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (hook_addr, mut hooked) = webhook_sink().await;
    let mut cfg = redis_config(IoMode::Auto, &redis.url());
    cfg.events_channel = Some("ws:events".into());
    cfg.events_webhook = Some(format!("http://{hook_addr}/events"));
    let s = start(cfg);
    wait_subscribed(&s.handle()).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut ps = client.get_async_pubsub().await.unwrap();
    ps.subscribe("ws:events").await.unwrap();
    let mut events = ps.into_on_message();
    let (mut c, d) = authed(&s.url(), "alice").await;
    c.send(json!({"event":"chat","data":{"text":"hi"},"id":"m1"}))
        .await;
    c.send(json!({"event":"heartbeat"})).await; // never forwarded
    c.send(json!({"event":"typing"})).await;
    let server_id = s.handle().bridge().unwrap().server_id().to_string();
    let first = json!({"serverId":server_id,"clientId":id_of(&d),"userId":"alice","event":"chat","data":{"text":"hi"},"id":"m1"});
    let second =
        json!({"serverId":server_id,"clientId":id_of(&d),"userId":"alice","event":"typing"});
    for want in [&first, &second] {
        let m = tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .unwrap();
        let text = std::str::from_utf8(m.get_payload_bytes()).unwrap();
        // Key order as JSON.stringify would write it.
        assert!(
            text.starts_with(r#"{"serverId":"#) && text.contains(r#","clientId":"#),
            "{text}"
        );
        let got: Value = serde_json::from_str(text).unwrap();
        assert_eq!(&got, want);
        let got = tokio::time::timeout(WAIT, hooked.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_auth_and_acl_users() {
    let Some(redis) = RedisServer::start_with(&[
        "--requirepass",
        "s3cret",
        "--user",
        "app",
        "on",
        ">apppw",
        "~*",
        "&*",
        "+@all",
    ]) else {
        return;
    };
    for (url, ok) in [
        (format!("redis://:s3cret@127.0.0.1:{}", redis.port), true),
        (format!("redis://app:apppw@127.0.0.1:{}", redis.port), true),
        (format!("redis://app:wrong@127.0.0.1:{}", redis.port), false),
    ] {
        let s = start(redis_config(IoMode::Auto, &url));
        if ok {
            wait_subscribed(&s.handle()).await;
            let (mut c, _) = authed(&s.url(), "u").await;
            let mut r = redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let acl = br#"{"serverId":"emitter","type":"broadcast","event":"acl","data":1}"#;
            redis_publish(&mut r, "ws:broadcast", acl).await;
            assert_eq!(c.recv().await, json!({"event":"acl","data":1}));
        } else {
            // Refused credentials: still serving, degraded.
            let (_, health) = http_get(s.addr, "/health").await;
            assert!(health.contains(r#""status":"degraded""#), "{health}");
            let (mut c, _) = authed(&s.url(), "u").await;
            c.expect_silence().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls() {
    let Some((redis, ca)) = RedisServer::start_tls() else {
        return;
    };
    let mut cfg = redis_config(IoMode::Auto, &redis.url());
    cfg.redis_tls_ca = Some(ca.clone());
    let s = start(cfg);
    wait_subscribed(&s.handle()).await;
    let (mut c, _) = authed(&s.url(), "u").await;
    // Publish from the server itself: it reaches Redis over TLS and comes
    // back to a second node over TLS.
    let mut cfg2 = redis_config(IoMode::Auto, &redis.url());
    cfg2.redis_tls_ca = Some(ca);
    let s2 = start(cfg2);
    wait_subscribed(&s2.handle()).await;
    let (mut c2, _) = authed(&s2.url(), "v").await;
    s.handle().send(None, "tls", &1).unwrap();
    assert_eq!(c.recv().await, json!({"event":"tls","data":1}));
    assert_eq!(c2.recv().await, json!({"event":"tls","data":1}));
}

/// `rediss://` checks the server's certificate: without the private CA the
/// subscriber's own connection is refused (the test CA is in no system
/// store), with it accepted; `#insecure` (no check) is refused with a
/// clear error (`serve` refuses it at start too: the config test
/// `bad_values_name_their_key`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_checks_the_certificate() {
    let Some((redis, ca)) = RedisServer::start_tls() else {
        return;
    };
    let url = redis.url();
    let refused = ignis_ws::bridge::resp::connect(&url, None, 1024).await;
    let err = refused
        .expect_err("an unknown CA must be refused")
        .to_string();
    assert!(err.contains("certificate"), "{err}");
    let pem = std::fs::read(&ca).unwrap();
    assert!(
        ignis_ws::bridge::resp::connect(&url, Some(&pem), 1024)
            .await
            .is_ok()
    );
    let insecure = format!("{}/#insecure", url.trim_end_matches('/'));
    let err = ignis_ws::bridge::resp::connect(&insecure, Some(&pem), 1024)
        .await
        .expect_err("#insecure is refused")
        .to_string();
    assert!(err.contains("--redis-tls-ca"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    cluster.wait_ok().await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    // Node A prefers the first cluster node, node B the second.
    let mut ca_cfg = config(IoMode::Auto);
    ca_cfg.redis = urls.clone();
    ca_cfg.redis_cluster = true;
    let mut cb_cfg = ca_cfg.clone();
    cb_cfg.redis = vec![urls[1].clone(), urls[2].clone(), urls[0].clone()];
    let a = start(ca_cfg);
    let b = start(cb_cfg);
    wait_subscribed(&a.handle()).await;
    wait_subscribed(&b.handle()).await;
    let (mut ca, _) = authed(&a.url(), "x").await;
    let (mut cb, _) = authed(&b.url(), "y").await;
    settle_subscriptions(&[&a, &b]).await;
    // Published on the third node: Redis Cluster propagates it.
    let mut r = cluster.nodes[2].client().await;
    let to_y = br#"{"serverId":"emitter","type":"user","target":"y","event":"c","data":1}"#;
    let to_all = br#"{"serverId":"emitter","type":"broadcast","event":"all","data":2}"#;
    redis_publish(&mut r, "ws:user:y", to_y).await;
    redis_publish(&mut r, "ws:broadcast", to_all).await;
    assert_eq!(cb.recv().await, json!({"event":"c","data":1}));
    assert_eq!(ca.recv().await, json!({"event":"all","data":2}));
    assert_eq!(cb.recv().await, json!({"event":"all","data":2}));
    // A's own publish reaches B through the cluster.
    a.handle().send(None, "from-a", &3).unwrap();
    assert_eq!(ca.recv().await, json!({"event":"from-a","data":3}));
    assert_eq!(cb.recv().await, json!({"event":"from-a","data":3}));
}

fn emit_cli(args: &[&str], stdin: Option<&str>) -> (i32, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("emit")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_cli_publishes_the_reference_envelope() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut ps = client.get_async_pubsub().await.unwrap();
    ps.psubscribe("ws:*").await.unwrap();
    let mut seen = ps.into_on_message();
    let cases: Vec<(Vec<&str>, Option<&str>, &str, &str)> = vec![
        (
            vec!["--client", "c1", "--event", "hello", "--data", r#"{"x":1}"#],
            None,
            "ws:client:c1",
            r#"{"serverId":"emitter","type":"client","target":"c1","event":"hello","data":{"x":1}}"#,
        ),
        (
            vec!["--user", "u1", "--event", "notify", "--data", "-"],
            Some(r#"{"msg":"hi"}"#),
            "ws:user:u1",
            r#"{"serverId":"emitter","type":"user","target":"u1","event":"notify","data":{"msg":"hi"}}"#,
        ),
        (
            vec![
                "--room",
                "lobby",
                "--exclude",
                "c1,c2",
                "--event",
                "update",
                "--data",
                "{}",
            ],
            None,
            "ws:room:lobby",
            r#"{"serverId":"emitter","type":"room","target":"lobby","event":"update","data":{},"exclude":["c1","c2"]}"#,
        ),
        (
            vec![
                "--broadcast",
                "--event",
                "global",
                "--data",
                r#"{"announcement":true}"#,
            ],
            None,
            "ws:broadcast",
            r#"{"serverId":"emitter","type":"broadcast","event":"global","data":{"announcement":true}}"#,
        ),
    ];
    for (args, stdin, channel, text) in cases {
        let mut full = vec!["--redis", url.as_str()];
        full.extend(args);
        let (code, out) = emit_cli(&full, stdin);
        assert_eq!(code, 0, "{out}");
        let m = tokio::time::timeout(WAIT, seen.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.get_channel_name(), channel);
        assert_eq!(
            std::str::from_utf8(m.get_payload_bytes()).unwrap(),
            text,
            "byte for byte as the reference"
        );
    }
    // Bad JSON: exit 2 naming --data; no target: exit 2; Redis down: exit 1.
    let (code, out) = emit_cli(
        &[
            "--redis",
            &url,
            "--broadcast",
            "--event",
            "e",
            "--data",
            "{nope",
        ],
        None,
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--data"), "{out}");
    let (code, out) = emit_cli(&["--redis", &url, "--event", "e"], None);
    assert_eq!(code, 2, "{out}");
    let dead = format!("redis://127.0.0.1:{}", util::redis_server::free_port());
    let (code, out) = emit_cli(&["--redis", &dead, "--broadcast", "--event", "e"], None);
    assert_eq!(code, 1, "{out}");
}

#[allow(clippy::zombie_processes)] // reason: the test kills and waits for every child
fn spawn_node(redis: &str) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "insecure",
            "--room-allow",
            "**",
            "--redis",
            redis,
        ])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = None;
    let mut subscribed = false;
    // The two lines come from different threads, in either order.
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("listening") {
            addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .map(|a| a.parse().unwrap());
        }
        if line.contains("redis bridge subscribed") {
            subscribed = true;
        }
        if subscribed && addr.is_some() {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (child, addr.expect("the node logged its address"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_and_the_emit_cli() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (mut pa, addr_a) = spawn_node(&redis.url());
    let (mut pb, addr_b) = spawn_node(&redis.url());
    let (mut ca, _) = authed_in(&format!("ws://{addr_a}/ws"), "u", &["lobby"]).await;
    let (mut cb, _) = authed_in(&format!("ws://{addr_b}/ws"), "u", &["lobby"]).await;
    // Both processes subscribed the room and the user (what a node hears
    // follows its clients).
    redis.wait_subscribers("ws:room:lobby", 2).await;
    redis.wait_subscribers("ws:user:u", 2).await;
    let (code, out) = emit_cli(
        &[
            "--redis",
            &redis.url(),
            "--room",
            "lobby",
            "--event",
            "news",
            "--data",
            "[1]",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = emit_cli(
        &[
            "--redis",
            &redis.url(),
            "--user",
            "u",
            "--event",
            "dm",
            "--data",
            "2",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}");
    for c in [&mut ca, &mut cb] {
        assert_eq!(c.recv().await, json!({"event":"news","data":[1]}));
        assert_eq!(c.recv().await, json!({"event":"dm","data":2}));
    }
    // Exactly once: the fence comes right after.
    let (code, _) = emit_cli(
        &["--redis", &redis.url(), "--broadcast", "--event", "fence"],
        None,
    );
    assert_eq!(code, 0);
    for c in [&mut ca, &mut cb] {
        assert_eq!(c.recv_text().await, r#"{"event":"fence"}"#);
    }
    for p in [&mut pa, &mut pb] {
        let _ = p.kill();
        let _ = p.wait();
    }
}
