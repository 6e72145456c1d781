//! PROTOCOL.md §9 on the wire: a client that stops reading never slows the
//! others; past its outbound budget it is closed (1008) or its messages are
//! dropped, and both are counted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::time::Duration;

use futures_util::future::join_all;
use ignis_ws::config::{IoMode, SlowClientPolicy};
use serde_json::json;
use util::*;

fn cfg(io: IoMode, policy: SlowClientPolicy) -> ignis_ws::Config {
    let mut c = config(io);
    c.backpressure_limit = 256 * 1024;
    c.slow_client = policy;
    // The outbound budget is under test here, not the message rate limit
    // (tests/limits.rs).
    c.client_max_msgs_per_sec = 0;
    c
}

/// Fill a client's kernel buffers and its queue (to within 1 KiB of the
/// budget) with 1 KiB direct messages: 16 MiB, far more than any buffer.
async fn flood(h: &ignis_ws::Handle, id: &str) {
    let small = "x".repeat(1000);
    for _ in 0..16 * 1024 {
        h.to_client(id, "fill", &small).unwrap();
    }
    h.settle().await;
}

async fn stalled_client_does_not_slow_a_thousand_others(io: IoMode) {
    let s = start(cfg(io, SlowClientPolicy::Drop));
    let h = s.handle();
    let (_slow, slow_id) = stalled_client(s.addr, "slow", "r", None).await;
    let mut fast = Vec::new();
    for chunk in 0..10 {
        let batch = join_all((0..100).map(|i| {
            let url = s.url();
            async move { authed_in(&url, &format!("u{chunk}-{i}"), &["r"]).await.0 }
        }))
        .await;
        fast.extend(batch);
    }
    flood(&h, &slow_id).await;
    let dropped_before = counter(&h, |m| &m.frames_dropped);
    assert!(
        dropped_before > 0,
        "the stalled client's budget is exhausted"
    );
    // Room messages bigger than the budget's slack: none fits the
    // stalled client's queue any more.
    let pad = "z".repeat(1100);
    for i in 0..100 {
        h.to_room("r", "m", &json!([i, pad]), &[]).unwrap();
    }
    // Every fast client gets all 100, in order.
    join_all(fast.iter_mut().map(|c| async move {
        for i in 0..100 {
            assert_eq!(c.recv().await["data"][0], i);
        }
    }))
    .await;
    let dropped_after = counter(&h, |m| &m.frames_dropped);
    assert_eq!(
        dropped_after - dropped_before,
        100,
        "only the stalled client lost them"
    );
    assert_eq!(h.connections(), 1001, "drop policy keeps the connection");
}

async fn over_budget_client_is_closed_1008(io: IoMode) {
    let s = start(cfg(io, SlowClientPolicy::Close));
    let h = s.handle();
    let (mut slow, slow_id) = stalled_client(s.addr, "slow", "r", None).await;
    let (mut other, _) = authed_in(&s.url(), "other", &["r"]).await;
    flood(&h, &slow_id).await;
    h.to_room("r", "after", &1, &[]).unwrap();
    assert_eq!(other.recv().await, json!({"event":"after","data":1}));
    // The stalled client, reading at last, finds whole frames and then
    // the close.
    loop {
        match slow.read_frame().await {
            Some((true, 1, _)) => continue,
            Some((_, 8, p)) => {
                assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1008);
                assert_eq!(&p[2..], b"Backpressure limit exceeded");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let closed = counter(&h, |m| &m.slow_clients_closed);
    assert_eq!(closed, 1);
    let (_, body) = http_get(s.addr, "/metrics").await;
    assert!(
        body.contains("ignis_ws_slow_clients_closed_total 1"),
        "{body}"
    );
    // The budget bounded what was queued: far less than the 16 MiB sent.
    let _ = Duration::from_secs(0);
}

async fn reader_that_catches_up_gets_everything_in_order(io: IoMode) {
    // Within the budget nothing is lost: a client that pauses and resumes
    // receives every message in order.
    let s = start(cfg(io, SlowClientPolicy::Close));
    let h = s.handle();
    let (mut c, d) = authed(&s.url(), "pauser").await;
    let id = id_of(&d);
    let payload = "y".repeat(1000);
    for i in 0..200 {
        h.to_client(&id, "p", &json!([i, payload])).unwrap();
    }
    for i in 0..200 {
        assert_eq!(c.recv().await["data"][0], i);
    }
}

async fn ping_flood_without_reading_is_bounded(io: IoMode) {
    // Pongs and error replies count against the budget too: a client that
    // sends pings (or bad JSON) and never reads is closed, not buffered
    // without end.
    let s = start(cfg(io, SlowClientPolicy::Close));
    let h = s.handle();
    let (mut r, _id) = stalled_client(s.addr, "slow", "r", None).await;
    let ping = client_frame(true, 0, 9, &[7u8; 125], Some([1, 2, 3, 4]));
    let burst = ping.repeat(1000);
    let closed = || counter(&h, |m| &m.slow_clients_closed);
    for _ in 0..400 {
        use tokio::io::AsyncWriteExt;
        if r.s.write_all(&burst).await.is_err() || closed() > 0 {
            break;
        }
    }
    h.settle().await;
    assert_eq!(
        closed(),
        1,
        "the pinging, non-reading client was closed for its budget"
    );
}

async fn a_burst_from_many_clients_loses_nothing(io: IoMode) {
    // 60 clients on one shard whose data (60 KB each) all arrives at once:
    // more than one read budget per connection and per poller turn. Every
    // message is still handled, in order.
    let mut c = config(io);
    c.shards = 1;
    let s = start(c);
    let mut clients = Vec::new();
    for _ in 0..60 {
        let mut r = Raw::upgraded(s.addr).await;
        r.write(&text(r#"{"event":"authenticate","data":{"userId":"u"}}"#))
            .await;
        let (_, op, _) = r.read_frame().await.unwrap();
        assert_eq!(op, 1);
        clients.push(r);
    }
    let mut burst = Vec::new();
    for _ in 0..30 {
        burst.extend(text(
            &json!({"event":"heartbeat","data":"p".repeat(2000)}).to_string(),
        ));
    }
    burst.extend(text("not json"));
    join_all(clients.iter_mut().map(|r| r.write(&burst))).await;
    join_all(clients.iter_mut().map(|r| async move {
        let (_, op, p) = r.read_frame().await.unwrap();
        assert_eq!(op, 1);
        assert!(String::from_utf8_lossy(&p).contains("Invalid message format"));
    }))
    .await;
    let got = counter(&s.handle(), |m| &m.messages_in);
    assert_eq!(
        got,
        60 * 32,
        "every authenticate, heartbeat and probe was read"
    );
}

io_tests!(
    a_burst_from_many_clients_loses_nothing,
    ping_flood_without_reading_is_bounded,
    stalled_client_does_not_slow_a_thousand_others,
    over_budget_client_is_closed_1008,
    reader_that_catches_up_gets_everything_in_order,
);
