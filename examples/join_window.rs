//! How long after a client's `join` a message published elsewhere reaches
//! it (issue 15, the window of on-demand subscriptions).
//!
//! One authenticated client on `--node`; for each round it joins a new
//! room and, from the moment the join is sent, a Redis connection
//! publishes to that room every `--every-us` microseconds (emitter
//! envelopes carrying a sequence number and the send time). The window of
//! the round is the send time of the first message the client receives
//! minus the time the join was sent: messages published before it were
//! missed. With `--redis-subscribe pattern` the window is the join's own
//! trip through the server; with `interest` it adds the SUBSCRIBE round
//! trip. Prints p50/p90/p99/max of the window and of the messages missed.
//!
//! ```text
//! cargo run --release --example join_window -- --node ws://127.0.0.1:9001/ws \
//!     --redis redis://127.0.0.1:6393 --rounds 300
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: a measuring tool: a failure of its own ends the run loudly

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// WebSocket URL of the node (`--auth insecure --room-allow '**'`).
    #[arg(long, default_value = "ws://127.0.0.1:9001/ws")]
    node: String,
    /// Redis the node uses.
    #[arg(long, default_value = "redis://127.0.0.1:6393")]
    redis: String,
    #[arg(long, default_value_t = 300)]
    rounds: usize,
    /// Microseconds between two publishes to the room being joined; 0:
    /// back to back, one round trip apart (tokio's timer cannot wait less
    /// than a millisecond).
    #[arg(long, default_value_t = 0)]
    every_us: u64,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    // TCP_NODELAY: a join must not wait for the ACK of the last leave.
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&args.node, None, true)
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"event":"authenticate","data":{"type":"Bearer","token":"window"}}"#,
    ))
    .await
    .unwrap();
    loop {
        if let Some(Ok(Message::Text(t))) = ws.next().await
            && t.contains("\"connected\"")
        {
            break;
        }
    }
    let client = redis::Client::open(args.redis.as_str()).unwrap();
    let run = std::process::id();
    let mut windows_us = Vec::new();
    let mut missed = Vec::new();
    for i in 0..args.rounds {
        let room = format!("win-{run}-{i}");
        let stop = Arc::new(AtomicBool::new(false));
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let t0 = now_ns();
        ws.send(Message::text(format!(
            r#"{{"event":"join","data":{{"rooms":["{room}"]}}}}"#
        )))
        .await
        .unwrap();
        let publisher = {
            let stop = stop.clone();
            let room = room.clone();
            let every = Duration::from_micros(args.every_us);
            tokio::spawn(async move {
                let mut seq = 0u64;
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(5) {
                    let env = format!(
                        r#"{{"serverId":"emitter","type":"room","target":"{room}","event":"w","data":[{seq},{}]}}"#,
                        now_ns()
                    );
                    let _: i64 = redis::cmd("PUBLISH")
                        .arg(format!("ws:room:{room}"))
                        .arg(env)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    seq += 1;
                    if !every.is_zero() {
                        tokio::time::sleep(every).await;
                    }
                }
            })
        };
        // The first message of this room (older rooms' stragglers skipped).
        let (seq, sent) = loop {
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                panic!("connection lost");
            };
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["event"] == "w" {
                let d = &v["data"];
                let sent: u128 = d[1]
                    .as_u64()
                    .map(u128::from)
                    .unwrap_or_else(|| d[1].as_f64().unwrap() as u128);
                if sent >= t0 {
                    break (d[0].as_u64().unwrap(), sent);
                }
            }
        };
        stop.store(true, Ordering::Relaxed);
        let _ = publisher.await;
        ws.send(Message::text(format!(
            r#"{{"event":"leave","data":{{"rooms":["{room}"]}}}}"#
        )))
        .await
        .unwrap();
        windows_us.push((sent - t0) as f64 / 1000.0);
        missed.push(seq as f64);
    }
    println!(
        "rounds {}: window us p50 {:.0} p90 {:.0} p99 {:.0} max {:.0}; messages missed p50 {} p99 {} max {}",
        args.rounds,
        pct(&mut windows_us, 0.5),
        pct(&mut windows_us, 0.9),
        pct(&mut windows_us, 0.99),
        pct(&mut windows_us, 1.0),
        pct(&mut missed, 0.5),
        pct(&mut missed, 0.99),
        pct(&mut missed, 1.0),
    );
}
