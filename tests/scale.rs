//! 8,000 concurrent WebSocket clients across shards: a broadcast reaches
//! each exactly once. Both back ends run one after the other in one test:
//! server and clients share this process, so 8,000 clients are 16,000 file
//! descriptors of the 20,000 a process may hold here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use futures_util::future::join_all;
use ignis_ws::config::IoMode;
use serde_json::json;
use util::*;

const N: usize = 8_000;

async fn run(io: IoMode) {
    let s = start(config(io));
    let h = s.handle();
    let mut clients: Vec<Client> = Vec::with_capacity(N);
    let mut shards = [0usize; 2];
    while clients.len() < N {
        let batch = join_all((0..250).map(|i| {
            let url = s.url();
            async move { authed(&url, &format!("user-{i}")).await }
        }))
        .await;
        for (c, d) in batch {
            let id = uuid::Uuid::parse_str(d["id"].as_str().unwrap()).unwrap();
            shards[id.as_bytes()[15] as usize] += 1;
            clients.push(c);
        }
    }
    assert!(
        shards[0] > N / 4 && shards[1] > N / 4,
        "both shards hold clients: {shards:?}"
    );
    assert_eq!(h.connections(), N as i64);
    h.broadcast("once", &json!("hello"), &[]).unwrap();
    h.broadcast("end", &json!(null), &[]).unwrap();
    // Each client: the broadcast exactly once, then the end marker.
    join_all(clients.iter_mut().map(|c| async move {
        assert_eq!(c.recv().await, json!({"event":"once","data":"hello"}));
        assert_eq!(c.recv().await, json!({"event":"end","data":null}));
    }))
    .await;
    let sent = counter(&h, |m| &m.messages_out);
    // `connected` + two broadcasts per client.
    assert_eq!(sent, 3 * N as u64);
    drop(clients);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_thousand_clients_one_broadcast_each() {
    run(IoMode::Uring).await;
    run(IoMode::Epoll).await;
}
