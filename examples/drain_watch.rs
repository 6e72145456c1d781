//! Watches a drain from the clients' side: opens `N` authenticated
//! WebSocket connections to `URL`, says `ready` on stdout, then waits for
//! the server to close them (SIGTERM it meanwhile) and prints, as one JSON
//! line, when each close arrived: milliseconds after the first one, per
//! 250 ms bucket, with the close codes seen.
//!
//!     cargo run --release --example drain_watch -- ws://127.0.0.1:9000/ws 10000
//!
//! `scripts/drain-demo.sh` runs two servers and two watchers (20,000
//! clients; a process may hold at most 20,000 file descriptors here).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:9000/ws".to_owned());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, u16)>();
    let mut ready = Vec::with_capacity(n);
    for i in 0..n {
        let ws = loop {
            match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok((ws, _)) => break ws,
                Err(e) => {
                    eprintln!("connect {i}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let (mut sink, mut stream) = ws.split();
        let auth = format!(r#"{{"event":"authenticate","data":{{"userId":"w{i}"}}}}"#);
        if sink.send(Message::text(auth)).await.is_err() {
            continue;
        }
        let tx = tx.clone();
        let (up_tx, up_rx) = tokio::sync::oneshot::channel::<()>();
        ready.push(up_rx);
        tokio::spawn(async move {
            let mut up = Some(up_tx);
            while let Some(m) = stream.next().await {
                match m {
                    Ok(Message::Text(_)) => {
                        if let Some(u) = up.take() {
                            let _ = u.send(());
                        }
                    }
                    Ok(Message::Close(f)) => {
                        let code = f.map_or(1005, |f| u16::from(f.code));
                        let _ = tx.send((Instant::now(), code));
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let _ = tx.send((Instant::now(), 1006));
                        break;
                    }
                }
            }
            drop(sink);
        });
    }
    drop(tx);
    for r in ready {
        let _ = r.await;
    }
    println!("ready");
    let mut closes = Vec::with_capacity(n);
    while let Some(c) = rx.recv().await {
        closes.push(c);
    }
    closes.sort();
    let Some(&(first, _)) = closes.first() else {
        println!("{{\"closes\":0}}");
        return;
    };
    let mut buckets: BTreeMap<u128, usize> = BTreeMap::new();
    let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
    for (t, code) in &closes {
        *buckets
            .entry(t.duration_since(first).as_millis() / 250 * 250)
            .or_default() += 1;
        *codes.entry(*code).or_default() += 1;
    }
    let last = closes
        .last()
        .map_or(0, |(t, _)| t.duration_since(first).as_millis());
    let buckets: Vec<String> = buckets
        .iter()
        .map(|(ms, c)| format!("\"{ms}\":{c}"))
        .collect();
    let codes: Vec<String> = codes.iter().map(|(k, c)| format!("\"{k}\":{c}")).collect();
    println!(
        "{{\"closes\":{},\"last_ms\":{last},\"codes\":{{{}}},\"per_250ms\":{{{}}}}}",
        closes.len(),
        codes.join(","),
        buckets.join(",")
    );
}
