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

io_tests!(shutdown_flushes_then_closes_1001);
