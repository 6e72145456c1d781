//! PROTOCOL.md §8 and §10 on the wire: the heartbeat sweep (4002), what
//! counts as activity, WebSocket pings and the idle timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::time::{Duration, Instant};

use ignis_ws::config::IoMode;
use tokio_tungstenite::tungstenite::Message;
use util::*;

fn fast_heartbeat(io: IoMode) -> ignis_ws::Config {
    let mut c = config(io);
    c.heartbeat_interval = Duration::from_millis(100);
    c.heartbeat_timeout = Duration::from_millis(400);
    c
}

async fn idle_authenticated_client_gets_4002(io: IoMode) {
    let s = start(fast_heartbeat(io));
    let (mut c, _) = authed(&s.url(), "u").await;
    let t0 = Instant::now();
    // Nothing at all before the close: no app-level heartbeat from the server.
    let (code, reason) = c.first_close().await;
    assert_eq!(code, 4002);
    assert_eq!(reason.as_str(), "Heartbeat timeout");
    // The idle clock started at the `authenticate` frame, just before t0.
    assert!(
        t0.elapsed() >= Duration::from_millis(350),
        "{:?}",
        t0.elapsed()
    );
}

async fn any_data_frame_keeps_a_client_alive(io: IoMode) {
    let s = start(fast_heartbeat(io));
    let (mut c, d) = authed(&s.url(), "u").await;
    let id = id_of(&d);
    let h = s.handle();
    // Send something every 100 ms for 1.2 s (three timeouts): heartbeat,
    // invalid JSON, event-less JSON all count.
    let frames = [r#"{"event":"heartbeat"}"#, "not json", r#"{"x":1}"#];
    let t0 = Instant::now();
    let mut i = 0;
    while t0.elapsed() < Duration::from_millis(1200) {
        c.send_text(frames[i % 3]).await;
        if frames[i % 3] == "not json" {
            assert_eq!(c.recv().await["data"]["message"], "Invalid message format");
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expect_nothing_before_marker(&h, &mut c, &id).await;
}

async fn pings_do_not_count_as_activity(io: IoMode) {
    use futures_util::{SinkExt, StreamExt};
    let s = start(fast_heartbeat(io));
    let (mut c, _) = authed(&s.url(), "u").await;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        tokio::select! {
            m = c.ws.next() => match m {
                Some(Ok(Message::Pong(_))) => continue,
                Some(Ok(Message::Close(Some(f)))) => {
                    assert_eq!(u16::from(f.code), 4002);
                    break;
                }
                other => panic!("expected 4002 while pinging, got {other:?}"),
            },
            _ = tick.tick() => {
                c.ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
            }
            _ = tokio::time::sleep_until(deadline) => panic!("a pinging but silent client must get 4002"),
        }
    }
}

async fn unauthenticated_clients_never_get_4002(io: IoMode) {
    let mut cfg = fast_heartbeat(io);
    cfg.auth_timeout = Duration::from_millis(1000);
    let s = start(cfg);
    let mut c = Client::connect(&s.url()).await;
    assert_eq!(
        c.expect_close().await,
        (4001, "Authentication timeout".into())
    );
}

async fn server_pings_and_idle_timeout(io: IoMode) {
    let mut cfg = config(io);
    cfg.idle_timeout = Some(Duration::from_secs(1));
    let s = start(cfg);
    let mut r = Raw::upgraded(s.addr).await;
    r.write(&text(r#"{"event":"authenticate","data":{"userId":"u"}}"#))
        .await;
    let (_, op, _) = r.read_frame().await.unwrap();
    assert_eq!(op, 1, "connected");
    // Silent client: a ping after half the idle timeout...
    let t0 = Instant::now();
    let (_, op, payload) = r.read_frame().await.unwrap();
    assert_eq!(op, 9, "ping");
    assert!(t0.elapsed() >= Duration::from_millis(400));
    // ...answered with a pong, the connection lives on: the next ping comes.
    r.write(&client_frame(true, 0, 10, &payload, Some([1, 2, 3, 4])))
        .await;
    let (_, op, payload) = r.read_frame().await.unwrap();
    assert_eq!(op, 9, "second ping after the pong reset the idle clock");
    let _ = payload;
    // Not answered: closed after the full idle timeout.
    assert_eq!(r.read_close().await, 1000);
}

io_tests!(
    idle_authenticated_client_gets_4002,
    any_data_frame_keeps_a_client_alive,
    pings_do_not_count_as_activity,
    unauthenticated_clients_never_get_4002,
    server_pings_and_idle_timeout,
);
