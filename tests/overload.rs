//! Item 7 of the security review (issue 12): a publish flood against a
//! stalled shard stays within `--shard-queue-limit`. Alone in its own test
//! binary because it reads the process's RSS, which tests running beside it
//! would disturb.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::time::Duration;

use serde_json::json;
use util::{WAIT, authed, config, metrics};

const KEY: &str = "0123456789abcdef-overload";

/// A hook that blocks its shard on the event `stall` until released: a
/// shard that stopped draining its channel.
struct Stall {
    entered: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl ignis_ws::hooks::Hooks for Stall {
    fn on_message(&self, m: ignis_ws::hooks::Message) -> Option<ignis_ws::auth::BoxFuture<()>> {
        if m.event == "stall" {
            let _ = self.entered.lock().unwrap().send(());
            let _ = self
                .release
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(30));
        }
        None
    }
}

/// Item 7: a publish flood against a stalled shard. Today's main queued
/// every delivery in the shard's unbounded channel (memory grew by what was
/// sent). Now the channel holds at most `--shard-queue-limit` bytes; more
/// is refused (`SendError::Overloaded`, 503 + `Retry-After` on
/// `/api/publish`) and counted, memory stays flat, and every delivery that
/// was accepted reaches the client once the shard runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_against_a_stalled_shard_is_bounded() {
    const LIMIT: usize = 1 << 20;
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let mut c = config(ignis_ws::config::IoMode::Auto);
    c.api_key = Some(KEY.into());
    c.shards = 1;
    c.shard_queue_limit = LIMIT;
    c.backpressure_limit = 8 << 20;
    let srv = util::start_with(ignis_ws::ServerBuilder::new(c).hooks(Stall {
        entered: std::sync::Mutex::new(entered_tx),
        release: std::sync::Mutex::new(release_rx),
    }));
    let h = srv.handle();
    let (mut client, _) = authed(&srv.url(), "u").await;
    client.send(json!({"event": "stall"})).await;
    tokio::task::spawn_blocking(move || entered_rx.recv_timeout(WAIT).unwrap())
        .await
        .unwrap();
    let rss_before = util::binary::rss_kib(std::process::id());
    // 1,500 broadcasts of 32 KiB: 48 MiB offered to a shard that reads
    // nothing.
    let data = "x".repeat(32 * 1024);
    let (mut ok, mut refused) = (0u64, 0u64);
    for i in 0..1500 {
        match h.broadcast("flood", &json!({"i": i, "pad": data}), &[]) {
            Ok(()) => ok += 1,
            Err(ignis_ws::handle::SendError::Overloaded) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    let grew_mib = util::binary::rss_kib(std::process::id()).saturating_sub(rss_before) / 1024;
    assert!(
        ok >= 1 && ok <= (LIMIT / (32 * 1024)) as u64,
        "{ok} accepted"
    );
    assert_eq!(ok + refused, 1500);
    assert!(grew_mib < 16, "RSS grew {grew_mib} MiB under the flood");
    let queued = util::gauge(&h, |m| &m.queued_bytes);
    assert!(
        queued > 0 && queued <= LIMIT as i64,
        "{queued} bytes queued"
    );
    // The HTTP API answers 503 with a hint when to come back (called
    // directly: the only shard, which would read the request, is stalled).
    let body = json!({"type":"broadcast","event":"flood","data":{"pad": data}}).to_string();
    let auth = format!("Bearer {KEY}");
    let answer = ignis_ws::http::publish(&h, KEY, Some(&auth), body.as_bytes());
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("Retry-After: 1\r\n"), "{answer}");
    // The shard runs again: every accepted broadcast arrives, in order.
    release_tx.send(()).unwrap();
    for i in 0..ok {
        let v = client.recv().await;
        assert_eq!(v["event"], "flood");
        assert_eq!(v["data"]["i"], i, "accepted broadcast {i} lost");
    }
    h.settle().await;
    assert_eq!(util::gauge(&h, |m| &m.queued_bytes), 0);
    let body = metrics(srv.addr).await;
    assert_eq!(
        util::metric_where(
            &body,
            "ignis_ws_deliveries_dropped_total",
            "shard_queue_full"
        ),
        refused as i64 + 1,
        "{body}"
    );
    // Accepted again once drained.
    h.broadcast("after", &1, &[]).unwrap();
    assert_eq!(client.recv().await, json!({"event": "after", "data": 1}));
}
