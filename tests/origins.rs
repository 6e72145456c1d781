//! Issue 14, item 2: `--allowed-origins` and `--require-origin`. Real
//! upgrades (tokio-tungstenite with an `Origin` header, and raw requests)
//! against a server with an origin policy: 403 for an origin that is not
//! allowed, 101 for an allowed or absent one, 403 for an absent one with
//! `--require-origin`, and the counter.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use util::{Raw, WAIT, config, metric_where, metrics};

/// A tokio-tungstenite upgrade with `origin` (if any): the status code.
async fn ws_upgrade(url: &str, origin: Option<&str>) -> u16 {
    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    let r = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("answer in time");
    match r {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

fn origins_config(require: bool) -> ignis_ws::Config {
    let mut c = config(ignis_ws::config::IoMode::Auto);
    c.allowed_origins = vec![
        "https://app.example.com".into(),
        "https://*.example.org".into(),
        "http://localhost:3000".into(),
    ];
    c.require_origin = require;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_list_get_403_and_are_counted() {
    let srv = util::start(origins_config(false));
    let url = srv.url();
    for ok in [
        Some("https://app.example.com"),
        Some("HTTPS://App.Example.COM"),
        Some("https://a.b.example.org"),
        Some("http://localhost:3000"),
        None,
    ] {
        assert_eq!(ws_upgrade(&url, ok).await, 101, "{ok:?}");
    }
    let bad = [
        "https://evil.example.net",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://example.org",
        "https://app.example.com.evil.net",
        "http://localhost:3001",
        "null",
    ];
    for origin in bad {
        assert_eq!(ws_upgrade(&url, Some(origin)).await, 403, "{origin}");
    }
    // What the refused client sees: 403, a short text, the connection closed.
    let (mut r, head) = Raw::try_upgrade(srv.addr, "Origin: https://evil.example.net\r\n").await;
    assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
    assert!(head.contains("Connection: close\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/plain\r\n"), "{head}");
    assert_eq!(r.read_to_end().await, b"Origin not allowed\n");
    // Over 1 KiB: refused even when it would match.
    let long = format!("Origin: https://{}.example.org\r\n", "a".repeat(1100));
    let (_, head) = Raw::try_upgrade(srv.addr, &long).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    // Two Origin fields: a bad request.
    let two = "Origin: https://app.example.com\r\nOrigin: https://evil.example.net\r\n";
    let (_, head) = Raw::try_upgrade(srv.addr, two).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");

    let m = metrics(srv.addr).await;
    let refused = (bad.len() + 2) as i64;
    assert_eq!(
        metric_where(&m, "ignis_ws_upgrades_refused_total", "reason=\"origin\""),
        refused,
        "{m}"
    );
    assert_eq!(
        metric_where(
            &m,
            "ignis_ws_upgrades_refused_total",
            "reason=\"conns_per_ip\""
        ),
        0
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_origin_refuses_an_upgrade_without_one() {
    let srv = util::start(origins_config(true));
    let url = srv.url();
    assert_eq!(ws_upgrade(&url, None).await, 403);
    assert_eq!(ws_upgrade(&url, Some("https://app.example.com")).await, 101);
    assert_eq!(
        ws_upgrade(&url, Some("https://evil.example.net")).await,
        403
    );
    let (_, head) = Raw::try_upgrade(srv.addr, "").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let m = metrics(srv.addr).await;
    assert_eq!(
        metric_where(&m, "ignis_ws_upgrades_refused_total", "reason=\"origin\""),
        3
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_allowed_origins_every_origin_upgrades() {
    let srv = util::start(config(ignis_ws::config::IoMode::Auto));
    let url = srv.url();
    for o in [None, Some("https://anything.example"), Some("null")] {
        assert_eq!(ws_upgrade(&url, o).await, 101, "{o:?}");
    }
    srv.shutdown().await;
}

#[test]
fn a_malformed_pattern_is_a_config_error_naming_the_flag() {
    let mut c = config(ignis_ws::config::IoMode::Auto);
    c.allowed_origins = vec!["https://app.example.com/path".into()];
    let e = c.validate().unwrap_err();
    assert_eq!(e.key, "--allowed-origins");
    assert!(e.message.contains("app.example.com/path"), "{}", e.message);
    c.allowed_origins = vec!["https://*.example.com".into()];
    c.trusted_proxies = vec!["10.0.0.0/33".into()];
    assert_eq!(c.validate().unwrap_err().key, "--trusted-proxies");
}

/// The binary exits 2 naming the flag of a malformed entry.
#[test]
fn the_binary_exits_2_on_a_malformed_pattern_or_cidr() {
    for (flag, value) in [
        (
            "--allowed-origins",
            "https://ok.example.com,https://*bad.example.com",
        ),
        ("--trusted-proxies", "10.0.0.0/8,not-a-cidr"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ignis-ws"))
            .args([
                "serve",
                "--auth",
                "insecure",
                "--listen",
                "127.0.0.1:0",
                flag,
                value,
            ])
            .env_remove("IGNIS_WS_CONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(err.contains(flag), "{flag}: {err}");
    }
}
