//! TLS termination (issue 14, item 1) with real TLS clients: rustls
//! (tokio-tungstenite and tokio-rustls, TLS 1.3 and 1.2) and Node's
//! WebSocket (OpenSSL) over wss://, trusting a CA the test made. The same
//! port serves wss:// and the HTTPS endpoints; a bad or silent client
//! costs others nothing; the handshake cap and timeout; a certificate
//! reload reaches new handshakes and leaves established ones alone; a
//! client that stops reading is handled by the slow-client policy as over
//! plain TCP.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::process::Stdio;
use std::time::Duration;

use futures_util::future::join_all;
use ignis_ws::config::{AuthMode, IoMode, SlowClientPolicy};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use util::tls::{Pki, Version, https, https_get, tls_connect, wss};
use util::*;

/// wss:// end to end over TLS 1.3 and 1.2: authenticate, join, a room
/// message, a 200 KB broadcast (many records), a message from the client,
/// then the drain's 1001 close.
async fn wss_carries_the_protocol(io: IoMode) {
    let pki = Pki::new();
    let s = start(pki.serve(config(io)));
    let h = s.handle();
    let mut clients = Vec::new();
    for (i, v) in [Version::V13, Version::V12].into_iter().enumerate() {
        let mut c = wss(s.addr, &pki.ca_der, v).await;
        let d = c.auth(&format!("tls-user-{i}")).await;
        c.join(&["news"]).await;
        c.expect_silence().await;
        clients.push((c, d["id"].as_str().unwrap().to_string()));
    }
    h.to_room("news", "headline", &json!({"n": 1}), &[])
        .unwrap();
    let big = "y".repeat(200_000);
    h.broadcast("big", &json!(big), &[]).unwrap();
    for (c, id) in &mut clients {
        assert_eq!(c.recv().await, json!({"event":"headline","data":{"n":1}}));
        let m = c.recv().await;
        assert_eq!(m["data"].as_str().map(str::len), Some(200_000));
        // From the client: an unknown event is answered with the
        // protocol's error, so the server read and decoded it.
        c.send(json!({"event":"nope","data":"z".repeat(40_000)}))
            .await;
        c.expect_silence().await;
        expect_nothing_before_marker(&h, c, id).await;
    }
    assert_eq!(counter(&h, |m| &m.tls_handshakes), 2);
    assert_eq!(counter(&h, |m| &m.tls_record_errors), 0);
    let stop = tokio::spawn(s.shutdown());
    for (c, _) in &mut clients {
        assert_eq!(
            c.expect_close().await,
            (1001, "Server shutting down".into())
        );
    }
    stop.await.unwrap();
}

/// `/health`, `/ready`, `/metrics`, `POST /api/publish` and errors over
/// HTTPS on the WebSocket port; plain HTTP to it gets nothing and is
/// counted, and harms no one.
async fn https_endpoints_share_the_port(io: IoMode) {
    let pki = Pki::new();
    let mut cfg = pki.serve(config(io));
    cfg.api_key = Some("tls-api-key-0123456789".into());
    let s = start(cfg);
    let h = s.handle();
    let (mut c, _) = {
        let mut c = wss(s.addr, &pki.ca_der, Version::V13).await;
        c.auth("watcher").await;
        c.join(&["r"]).await;
        c.expect_silence().await;
        (c, ())
    };
    // ALPN: the server picks http/1.1 (what browsers offer for wss://).
    let probe = tls_connect(s.addr, &pki.ca_der, Version::V13)
        .await
        .unwrap();
    assert_eq!(probe.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(probe);
    for path in ["/health", "/ready", "/metrics"] {
        let (head, _) = https_get(s.addr, &pki.ca_der, path).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    }
    let (head, _) = https_get(s.addr, &pki.ca_der, "/nope").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let body = r#"{"type":"room","target":"r","event":"e","data":7}"#;
    let (head, _) = https(
        s.addr,
        &pki.ca_der,
        &format!(
            "{}{body}",
            publish_head(Some("tls-api-key-0123456789"), body.len())
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 202"), "{head}");
    assert_eq!(c.recv().await, json!({"event":"e","data":7}));
    // Plain HTTP to the TLS port: no answer (it is not a ClientHello),
    // the connection is closed and counted.
    let before = counter(&h, |m| &m.tls_handshake_errors);
    let mut r = Raw::connect(s.addr).await;
    r.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let got = r.read_to_end().await;
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "plain HTTP must not be served on the TLS port"
    );
    until(&h, "the plain request counted", |h| {
        counter(h, |m| &m.tls_handshake_errors) == before + 1
    })
    .await;
    // The TLS client saw nothing of it.
    h.to_room("r", "still", &json!(true), &[]).unwrap();
    assert_eq!(c.recv().await, json!({"event":"still","data":true}));
}

/// `--tls-max-handshakes`: a handshake holds a slot from its first byte;
/// past the cap a connection is closed once its ClientHello begins; a
/// stalled handshake frees its slot at `--handshake-timeout-ms`; a client
/// that does not trust the certificate fails alone.
async fn handshake_cap_and_timeout(io: IoMode) {
    let pki = Pki::new();
    let mut cfg = pki.serve(config(io));
    cfg.shards = 1;
    cfg.tls_max_handshakes = 1;
    cfg.handshake_timeout = Duration::from_millis(500);
    // Silent connections are accepted (with `--defer-accept` the kernel
    // would keep this one), so that holding no slot is what is tested.
    cfg.defer_accept = false;
    let s = start(cfg);
    let h = s.handle();
    // A connection that sends nothing holds no slot.
    let _silent = Raw::connect(s.addr).await;
    // Holds the one slot: a record header promising a ClientHello that
    // never comes.
    let mut stalled = Raw::connect(s.addr).await;
    stalled.write(&[22, 3, 1, 0, 200]).await;
    until(&h, "the stalled handshake holds the slot", |h| {
        gauge(h, |m| &m.tls_handshaking) == 1
    })
    .await;
    let mut refused = Raw::connect(s.addr).await;
    refused.write(&[22, 3, 1, 0, 200]).await;
    assert!(refused.read_to_end().await.is_empty(), "closed at once");
    assert_eq!(counter(&h, |m| &m.tls_handshakes_refused), 1);
    assert_eq!(
        counter(&h, |m| &m.tls_handshake_errors),
        0,
        "the stalled one is still waiting"
    );
    // The timeout ends the stalled one and frees the slot.
    assert!(stalled.read_to_end().await.is_empty());
    until(&h, "the slot is free", |h| {
        gauge(h, |m| &m.tls_handshaking) == 0
    })
    .await;
    // A client trusting another CA fails its handshake; the next one works.
    let other = Pki::new();
    let before = counter(&h, |m| &m.tls_handshake_errors);
    assert!(
        tls_connect(s.addr, &other.ca_der, Version::V13)
            .await
            .is_err()
    );
    until(&h, "the untrusting client counted", |h| {
        counter(h, |m| &m.tls_handshake_errors) == before + 1
    })
    .await;
    let mut c = wss(s.addr, &pki.ca_der, Version::V12).await;
    c.auth("after").await;
}

/// A reload: new handshakes get the new certificate, an established
/// connection keeps going; a broken file keeps the current pair.
async fn reload_reaches_new_handshakes_only(io: IoMode) {
    let mut pki = Pki::new();
    let s = start(pki.serve(config(io)));
    let h = s.handle();
    let old_ca = pki.ca_der.clone();
    let mut c = wss(s.addr, &old_ca, Version::V13).await;
    let id = c.auth("kept").await["id"].as_str().unwrap().to_string();
    pki.renew();
    assert!(s.server.as_ref().unwrap().reload_tls().unwrap());
    assert!(
        tls_connect(s.addr, &old_ca, Version::V13).await.is_err(),
        "new handshakes present the new certificate"
    );
    let mut n = wss(s.addr, &pki.ca_der, Version::V13).await;
    n.auth("new").await;
    h.to_client(&id, "still", &json!(1)).unwrap();
    assert_eq!(c.recv().await, json!({"event":"still","data":1}));
    std::fs::write(pki.cert(), "not a certificate").unwrap();
    let e = s.server.as_ref().unwrap().reload_tls().unwrap_err();
    assert_eq!(e.key, "--tls-cert", "{e}");
    let mut n2 = wss(s.addr, &pki.ca_der, Version::V12).await;
    n2.auth("still-served").await;
}

/// A TLS client that stops reading is closed by `--slow-client close`
/// like a plain one, while a hundred others get every message.
async fn a_stalled_tls_client_slows_no_one(io: IoMode) {
    let pki = Pki::new();
    let mut cfg = pki.serve(config(io));
    cfg.backpressure_limit = 256 * 1024;
    cfg.slow_client = SlowClientPolicy::Close;
    cfg.client_max_msgs_per_sec = 0;
    let s = start(cfg);
    let h = s.handle();
    // Never read again after its join.
    let mut stalled = tls_connect(s.addr, &pki.ca_der, Version::V13)
        .await
        .unwrap();
    stalled
        .write_all(upgrade_request_with("localhost", "").as_bytes())
        .await
        .unwrap();
    stalled
        .write_all(&text(
            r#"{"event":"authenticate","data":{"userId":"stalled"}}"#,
        ))
        .await
        .unwrap();
    stalled
        .write_all(&text(r#"{"event":"join","data":{"rooms":["s"]}}"#))
        .await
        .unwrap();
    let mut head = [0u8; 1];
    stalled.read_exact(&mut head).await.unwrap();
    let mut fast = join_all((0..100).map(|i| {
        let ca = pki.ca_der.clone();
        let addr = s.addr;
        async move {
            let mut c = wss(addr, &ca, Version::V13).await;
            c.auth(&format!("fast-{i}")).await;
            c.join(&["r"]).await;
            c.expect_silence().await;
            c
        }
    }))
    .await;
    until(&h, "all 101 authenticated", |h| {
        gauge(h, |m| &m.conns_authenticated) == 101
    })
    .await;
    // 16 MiB to the stalled client: far more than its budget and its
    // kernel buffers.
    until(&h, "the stalled client joined", |h| {
        counter(h, |m| &m.rooms_joined) >= 101
    })
    .await;
    let pad = "z".repeat(1000);
    for i in 0..16 * 1024 {
        h.to_room("s", "fill", &json!([i, pad]), &[]).unwrap();
    }
    h.settle().await;
    // Meanwhile everyone else gets every message.
    for i in 0..100 {
        h.to_room("r", "m", &json!([i, pad]), &[]).unwrap();
    }
    join_all(fast.iter_mut().map(|c| async move {
        for i in 0..100 {
            assert_eq!(c.recv().await["data"][0], i);
        }
    }))
    .await;
    until(&h, "the stalled client closed", |h| h.connections() == 100).await;
}

/// Node's WebSocket (OpenSSL underneath) over wss://, trusting the test
/// CA through NODE_EXTRA_CA_CERTS: the browser-style client of
/// tests/browser_client.rs, unchanged.
async fn node_websocket_over_wss(io: IoMode) {
    let Some(flags) = node_or_skip("node_websocket_over_wss", "true") else {
        return;
    };
    let pki = Pki::new();
    let secret = "tls-browser-secret-0123456789abcdef";
    let mut cfg = pki.serve(config(io));
    cfg.auth = AuthMode::jwt_secret(secret);
    cfg.room_allow = vec!["public:*".into()];
    let (hooks, mut hook_rx) = ChannelHooks::new();
    let s = start_with(ignis_ws::ServerBuilder::new(cfg).hooks(hooks));
    let h = s.handle();
    let token = hs256_token(secret, "node-user");
    // 127.0.0.1 (an IP SAN of the test certificate): Node resolves
    // `localhost` to ::1 first.
    let url = format!("wss://127.0.0.1:{}/ws", s.addr.port());
    let mut client = NodeClient::spawn_env(
        &flags,
        "browser_client.mjs",
        &[&url, &token],
        &[("NODE_EXTRA_CA_CERTS", pki.ca().to_str().unwrap())],
        Stdio::inherit(),
    );
    let connected = client.next().await;
    assert_eq!(connected["event"], "connected", "{connected}");
    assert_eq!(connected["data"]["userId"], "node-user");
    // `ready` comes after the join on the same connection.
    loop {
        if let HookEvent::Message { event, .. } = next_hook(&mut hook_rx).await
            && event == "ready"
        {
            break;
        }
    }
    h.to_room("public:news", "news", &json!({"title":"over tls"}), &[])
        .unwrap();
    h.broadcast("bye", &json!(null), &[]).unwrap();
    assert_eq!(
        client.next().await,
        json!({"event":"news","data":{"title":"over tls"}})
    );
    assert_eq!(client.next().await, json!({"event":"bye","data":null}));
    assert_eq!(
        client.next().await,
        json!({"closed":1000,"reason":"done","wasClean":true})
    );
    client.wait().await;
}

io_tests!(
    wss_carries_the_protocol,
    https_endpoints_share_the_port,
    handshake_cap_and_timeout,
    reload_reaches_new_handshakes_only,
    a_stalled_tls_client_slows_no_one,
    node_websocket_over_wss,
);
