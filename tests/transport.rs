//! PROTOCOL.md §1 on the wire: the HTTP upgrade and what is not one
//! (/health, /metrics, 404, 426, 400), slow and oversized request heads,
//! no extension negotiated, binary frames.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::time::{Duration, Instant};

use ignis_ws::config::IoMode;
use serde_json::Value;
use util::*;

fn upgrade_req(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

async fn raw_response(s: &TestServer, req: &str) -> String {
    let mut r = Raw::connect(s.addr).await;
    r.write(req.as_bytes()).await;
    String::from_utf8_lossy(&r.read_to_end().await).to_string()
}

async fn upgrade_only_on_the_path(io: IoMode) {
    let mut cfg = config(io);
    cfg.path = "/custom-ws".into();
    let s = start(cfg);
    let ok = format!("ws://{}/custom-ws", s.addr);
    let mut c = Client::connect(&ok).await;
    c.auth("u").await;
    // Query strings are allowed on the path.
    let mut c = Client::connect(&format!("{ok}?token=abc")).await;
    c.auth("u").await;
    let resp = raw_response(&s, &upgrade_req("/ws", "Sec-WebSocket-Version: 13\r\n")).await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
}

async fn bad_upgrades_get_http_errors(io: IoMode) {
    let s = start(config(io));
    // Version 8 (the reference accepts it): 426 naming version 13.
    let resp = raw_response(&s, &upgrade_req("/ws", "Sec-WebSocket-Version: 8\r\n")).await;
    assert!(resp.starts_with("HTTP/1.1 426"), "{resp}");
    assert!(resp.contains("Sec-WebSocket-Version: 13"), "{resp}");
    // No key (the reference answers 500): 400.
    let resp = raw_response(
        &s,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    // Not an upgrade on the WebSocket path: 426.
    let (head, _) = http_get(s.addr, "/ws").await;
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    // Anything else: 404.
    let (head, _) = http_get(s.addr, "/nope").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // Garbage: 400.
    let resp = raw_response(&s, "HELLO\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}

async fn no_extensions_are_negotiated(io: IoMode) {
    let s = start(config(io));
    let resp = {
        let mut r = Raw::connect(s.addr).await;
        r.write(
            upgrade_req(
                "/ws",
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
            )
            .as_bytes(),
        )
        .await;
        r.read_http_head().await
    };
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    assert!(!resp.to_ascii_lowercase().contains("extensions"), "{resp}");
}

async fn health_and_metrics(io: IoMode) {
    let s = start(config(io));
    let (_c, _) = authed(&s.url(), "u").await;
    let _anon = Client::connect(&s.url()).await;
    s.handle().settle().await;
    let (head, body) = http_get(s.addr, "/health").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["connections"], 2);
    assert_eq!(v["shards"], 2);
    let want_io = if io == IoMode::Epoll {
        "epoll"
    } else {
        "io_uring"
    };
    assert_eq!(
        v["io"], want_io,
        "the back end asked for is the one running"
    );
    let (head, body) = http_get(s.addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let total =
        |state: &str| metric_where(&body, "ignis_ws_connections", &format!("state=\"{state}\""));
    assert_eq!(total("authenticated"), 1, "{body}");
    assert_eq!(total("unauthorized"), 1, "{body}");
    assert_lines(
        &body,
        &[
            "ignis_ws_auth_total{result=\"accepted\"} 1",
            "# TYPE ignis_ws_closes_total counter",
        ],
    );
}

async fn metrics_count_protocol_errors_by_code(io: IoMode) {
    let s = start(config(io));
    let mut r = Raw::upgraded(s.addr).await;
    r.write(&client_frame(true, 0, 1, b"{}", None)).await;
    assert_eq!(r.read_close().await, 1002);
    let mut r = Raw::upgraded(s.addr).await;
    r.write(&client_frame(true, 0, 1, b"\xff", Some([1, 2, 3, 4])))
        .await;
    assert_eq!(r.read_close().await, 1007);
    let (_, body) = http_get(s.addr, "/metrics").await;
    assert_lines(
        &body,
        &[
            "ignis_ws_closes_total{code=\"1002\"} 1",
            "ignis_ws_closes_total{code=\"1007\"} 1",
        ],
    );
}

async fn slow_request_head_is_cut_off(io: IoMode) {
    let mut cfg = config(io);
    cfg.handshake_timeout = Duration::from_millis(300);
    let s = start(cfg);
    let t0 = Instant::now();
    let mut r = Raw::connect(s.addr).await;
    r.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await; // never finished
    let resp = String::from_utf8_lossy(&r.read_to_end().await).to_string();
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    // Cut off by the timeout, not at once (timer granularity aside).
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    // A well-behaved client is unaffected meanwhile.
    let (_c, _) = authed(&s.url(), "ok").await;
}

async fn oversized_request_head_is_refused(io: IoMode) {
    let s = start(config(io));
    let big = format!("X-Pad: {}\r\n", "a".repeat(9000));
    let resp = raw_response(
        &s,
        &upgrade_req("/ws", &format!("Sec-WebSocket-Version: 13\r\n{big}")),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
}

async fn upgrade_and_first_frame_in_one_packet(io: IoMode) {
    let s = start(config(io));
    let mut r = Raw::connect(s.addr).await;
    let mut b = upgrade_req("/ws", "Sec-WebSocket-Version: 13\r\n").into_bytes();
    b.extend(text(
        r#"{"event":"authenticate","data":{"userId":"eager"}}"#,
    ));
    r.write(&b).await;
    let head = r.read_http_head().await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, op, p) = r.read_frame().await.unwrap();
    assert_eq!(op, 1);
    assert!(String::from_utf8_lossy(&p).contains("\"eager\""));
}

async fn max_connections_refuses_with_503(io: IoMode) {
    let mut cfg = config(io);
    cfg.shards = 1;
    cfg.max_connections = 2;
    let s = start(cfg);
    let (_a, _) = authed(&s.url(), "a").await;
    let (_b, _) = authed(&s.url(), "b").await;
    let resp = raw_response(&s, &upgrade_req("/ws", "Sec-WebSocket-Version: 13\r\n")).await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    let (_, body) = http_get(s.addr, "/metrics").await;
    // The /metrics request itself is refused too while full.
    let _ = body;
    let refused = counter(&s.handle(), |m| &m.refused_total);
    assert!(refused >= 1);
}

io_tests!(
    max_connections_refuses_with_503,
    upgrade_only_on_the_path,
    bad_upgrades_get_http_errors,
    no_extensions_are_negotiated,
    health_and_metrics,
    metrics_count_protocol_errors_by_code,
    slow_request_head_is_cut_off,
    oversized_request_head_is_refused,
    upgrade_and_first_frame_in_one_packet,
);
