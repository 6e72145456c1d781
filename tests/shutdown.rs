//! Graceful shutdown (PROTOCOL.md §8): every client, authenticated or not,
//! first gets what was queued for it, then `close(1001, "Server shutting
//! down")`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use ignis_ws::config::IoMode;
use serde_json::json;
use util::*;

async fn shutdown_flushes_then_closes_1001(io: IoMode) {
    let s = start(config(io));
    let h = s.handle();
    let mut authed_clients = Vec::new();
    for i in 0..20 {
        let (c, _) = authed(&s.url(), &format!("u{i}")).await;
        authed_clients.push(c);
    }
    let mut anon = Client::connect(&s.url()).await;
    anon.expect_silence().await;
    for i in 0..50 {
        h.broadcast("queued", &json!(i), &[]).unwrap();
    }
    s.shutdown().await;
    for c in authed_clients.iter_mut() {
        for i in 0..50 {
            assert_eq!(c.recv().await, json!({"event":"queued","data":i}));
        }
        assert_eq!(
            c.expect_close().await,
            (1001, "Server shutting down".into())
        );
    }
    assert_eq!(
        anon.expect_close().await,
        (1001, "Server shutting down".into())
    );
}

/// The status line of `GET /ready`.
async fn ready(addr: std::net::SocketAddr) -> String {
    http_get(addr, "/ready").await.0
}

/// A drain (issue 14): `/ready` turns 503 at once, connections are still
/// taken during `--drain-delay-ms`, then the clients are closed with 1001
/// spread over `--drain-spread-ms`, not all at once.
async fn drain_turns_ready_503_then_spreads_the_closes(io: IoMode) {
    use std::time::{Duration, Instant};
    let mut cfg = config(io);
    cfg.drain_delay = Duration::from_millis(400);
    cfg.drain_spread = Duration::from_millis(1_200);
    let s = start(cfg);
    let addr = s.addr;
    assert!(ready(addr).await.contains("200"), "ready before the drain");
    let mut clients = Vec::new();
    for i in 0..100 {
        let (c, _) = authed(&s.url(), &format!("u{i}")).await;
        clients.push(c);
    }
    let t0 = Instant::now();
    let stop = tokio::spawn(s.shutdown());
    // /ready is polled: nothing else tells a load balancer either.
    while !ready(addr).await.contains("503") {
        assert!(t0.elapsed() < WAIT, "/ready never turned 503");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        t0.elapsed() < Duration::from_millis(400),
        "/ready turned 503 before the delay ended"
    );
    // During the delay a new client still gets in (and is closed with the
    // others).
    let (late, _) = authed(&format!("ws://{addr}/ws"), "late").await;
    clients.push(late);
    let closes = futures_util::future::join_all(clients.iter_mut().map(|c| async {
        let close = c.expect_close().await;
        (close, t0.elapsed())
    }))
    .await;
    stop.await.unwrap();
    let mut at: Vec<Duration> = closes
        .iter()
        .map(|((code, reason), t)| {
            assert_eq!((*code, reason.as_str()), (1001, "Server shutting down"));
            *t
        })
        .collect();
    at.sort();
    assert!(
        at[0] >= Duration::from_millis(380),
        "first close at {:?}, before the drain delay",
        at[0]
    );
    // Spread: the first and the last quarter of the clients are closed
    // at clearly different times (all at once would be within a few ms).
    let (q1, q3) = (at[at.len() / 4], at[at.len() * 3 / 4]);
    assert!(
        q3 - q1 >= Duration::from_millis(300),
        "closes not spread: quartiles at {q1:?} and {q3:?}"
    );
    assert!(
        *at.last().unwrap() < Duration::from_millis(400 + 1_200 + 1_000),
        "last close at {:?}",
        at.last().unwrap()
    );
}

io_tests!(
    shutdown_flushes_then_closes_1001,
    drain_turns_ready_503_then_spreads_the_closes,
);
