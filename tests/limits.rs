//! Per-client limits against hostile clients: `--client-max-msgs-per-sec`
//! (a message flood is closed with 1008) and `--max-rooms-per-client` (a
//! join flood fills at most that many rooms).

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use ignis_ws::config::IoMode;
use serde_json::json;
use util::*;

fn limited(io: IoMode, msgs_per_sec: u32, rooms: usize) -> ignis_ws::Config {
    let mut c = config(io);
    c.client_max_msgs_per_sec = msgs_per_sec;
    c.max_rooms_per_client = rooms;
    c
}

/// Many small text frames in one write: `n` heartbeats.
fn heartbeats(n: usize) -> Vec<u8> {
    let one = client_frame(true, 0, 1, br#"{"event":"heartbeat"}"#, Some([9, 8, 7, 6]));
    one.repeat(n)
}

/// A server limited to `msgs_per_sec`; an authenticated raw client sends
/// `n` heartbeats and one invalid message in one write. The server, its
/// handle and the first frame answered (opcode, payload).
async fn burst_then_invalid(
    io: IoMode,
    msgs_per_sec: u32,
    n: usize,
) -> (TestServer, ignis_ws::Handle, u8, Vec<u8>) {
    let s = start(limited(io, msgs_per_sec, 100));
    let h = s.handle();
    let mut r = raw_authed(s.addr, &auth_text("u"), MASK).await;
    let mut burst = heartbeats(n);
    burst.extend(text("not json"));
    r.write(&burst).await;
    let (_, op, payload) = r.read_frame().await.expect("the error event");
    (s, h, op, payload)
}

async fn message_flood_is_closed_1008(io: IoMode) {
    let s = start(limited(io, 50, 100));
    let h = s.handle();
    let (mut other, _) = authed(&s.url(), "bystander").await;
    let mut flooder = raw_authed(s.addr, &auth_text("flooder"), MASK).await;
    // Four times the limit in one burst: even split over two clock seconds
    // one of them holds more than the limit.
    flooder.write(&heartbeats(200)).await;
    assert_eq!(flooder.read_close().await, 1008);
    assert_eq!(counter(&h, |m| &m.rate_limited), 1);
    // The bystander is untouched.
    h.broadcast("b", &json!(1), &[]).unwrap();
    assert_eq!(other.recv().await, json!({"event":"b","data":1}));
}

async fn close_reason_names_the_rate_limit(io: IoMode) {
    let s = start(limited(io, 20, 100));
    let (mut c, _) = authed(&s.url(), "u").await;
    for _ in 0..100 {
        c.send(json!({"event":"heartbeat"})).await;
    }
    let (code, reason) = c.expect_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (1008, "Message rate limit exceeded")
    );
}

async fn pings_count_against_the_rate(io: IoMode) {
    let s = start(limited(io, 50, 100));
    let h = s.handle();
    let mut r = raw_authed(s.addr, &auth_text("pinger"), MASK).await;
    let ping = client_frame(true, 0, 9, b"p", Some([1, 2, 3, 4]));
    let burst = ping.repeat(200);
    r.write(&burst).await;
    // Pongs first (as many as fit under the limit), then the close.
    loop {
        match r.read_frame().await {
            Some((_, 0xA, _)) => continue,
            Some((_, 0x8, payload)) => {
                assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1008);
                break;
            }
            other => panic!("expected pongs then a close, got {other:?}"),
        }
    }
    assert_eq!(counter(&h, |m| &m.rate_limited), 1);
}

async fn at_the_limit_is_fine(io: IoMode) {
    // The authenticate, 48 heartbeats and one invalid message: 50, the
    // limit, at most in one second (a new second only lowers the count).
    let (_s, h, op, payload) = burst_then_invalid(io, 50, 48).await;
    assert_eq!(op, 1);
    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["event"], "error", "{v}");
    assert_eq!(counter(&h, |m| &m.rate_limited), 0);
}

async fn zero_disables_the_rate_limit(io: IoMode) {
    let (_s, h, op, payload) = burst_then_invalid(io, 0, 5000).await;
    assert_eq!(op, 1, "{payload:?}");
    assert_eq!(counter(&h, |m| &m.rate_limited), 0);
}

async fn joins_stop_at_the_room_limit(io: IoMode) {
    // The test config's two default rooms count: 3 more fit under 5.
    let s = start(limited(io, 1000, 5));
    let h = s.handle();
    let (mut c, d) = authed(&s.url(), "u").await;
    let id = id_of(&d);
    c.join(&["a", "b", "c", "d", "e"]).await;
    c.expect_silence().await;
    for room in ["a", "b", "c"] {
        h.to_room(room, "E", &json!(room), &[]).unwrap();
        assert_eq!(c.recv().await, json!({"event":"E","data":room}));
    }
    for room in ["d", "e"] {
        h.to_room(room, "E", &json!(room), &[]).unwrap();
    }
    expect_nothing_before_marker(&h, &mut c, &id).await;
    assert_eq!(counter(&h, |m| &m.rooms_over_limit), 2);
    // Rejoining a room it is in, and its own id room, take no slot.
    c.join(&["a", &id]).await;
    c.expect_silence().await;
    assert_eq!(counter(&h, |m| &m.rooms_over_limit), 2);
    // Leaving one frees a slot.
    c.send(json!({"event":"leave","data":{"rooms":["a"]}}))
        .await;
    c.join(&["d"]).await;
    c.expect_silence().await;
    h.to_room("d", "E", &json!("d"), &[]).unwrap();
    assert_eq!(c.recv().await, json!({"event":"E","data":"d"}));
}

async fn join_flood_fills_at_most_the_limit(io: IoMode) {
    let s = start(limited(io, 0, 100));
    let h = s.handle();
    let (mut c, d) = authed(&s.url(), "u").await;
    let id = id_of(&d);
    // 2,000 join events of 5 new rooms each, and one with 5,000 rooms.
    for i in 0..2000 {
        let rooms: Vec<String> = (0..5).map(|k| format!("flood-{i}-{k}")).collect();
        c.send(json!({"event":"join","data":{"rooms":rooms}})).await;
    }
    let many: Vec<String> = (0..5000).map(|k| format!("big-{k}")).collect();
    c.send(json!({"event":"join","data":{"rooms":many}})).await;
    h.settle().await;
    // Wait for the last join to be handled: a reply to a later message.
    c.send_text("not json").await;
    assert_eq!(c.recv().await["event"], "error");
    h.settle().await;
    // 98 + the two default rooms.
    assert_eq!(gauge(&h, |m| &m.rooms), 100);
    assert_eq!(counter(&h, |m| &m.rooms_over_limit), 2000 * 5 + 5000 - 98);
    // It still receives in the rooms it got and in its own.
    h.to_room("flood-0-0", "E", &json!(1), &[]).unwrap();
    assert_eq!(c.recv().await, json!({"event":"E","data":1}));
    h.to_room("flood-19-2", "E", &json!(2), &[]).unwrap();
    assert_eq!(c.recv().await, json!({"event":"E","data":2}));
    h.to_room("flood-19-3", "E", &json!(3), &[]).unwrap();
    h.to_room("big-0", "E", &json!(4), &[]).unwrap();
    expect_nothing_before_marker(&h, &mut c, &id).await;
    // Gone with the client.
    c.close().await;
    until(&h, "the rooms leave the index with the client", |h| {
        gauge(h, |m| &m.rooms) == 0
    })
    .await;
}

/// `--max-sessions-per-user` across shards (the test server has two):
/// the third session of a user gets the error and 1008; when one of its
/// sessions ends, the user gets in again; other users are not affected.
async fn sessions_past_the_per_user_limit_are_refused(io: IoMode) {
    let mut cfg = config(io);
    cfg.max_sessions_per_user = 2;
    let s = start(cfg);
    let h = s.handle();
    let (first, _) = authed(&s.url(), "u").await;
    let (_second, _) = authed(&s.url(), "u").await;
    let mut third = Client::connect(&s.url()).await;
    third
        .send(json!({"event":"authenticate","data":{"userId":"u"}}))
        .await;
    assert_eq!(
        third.recv().await,
        json!({"event":"error","data":{"message":"Too many sessions"}})
    );
    assert_eq!(
        third.expect_close().await,
        (1008, "Too many sessions".into())
    );
    let (_other, _) = authed(&s.url(), "v").await;
    assert_eq!(counter(&h, |m| &m.sessions_refused), 1);
    first.close().await;
    // The slot comes back once the server removed the session.
    util::until(&h, "u's session removed", |h| {
        gauge(h, |m| &m.conns_authenticated) == 2
    })
    .await;
    let (_again, _) = authed(&s.url(), "u").await;
}

io_tests!(
    sessions_past_the_per_user_limit_are_refused,
    message_flood_is_closed_1008,
    close_reason_names_the_rate_limit,
    pings_count_against_the_rate,
    at_the_limit_is_fine,
    zero_disables_the_rate_limit,
    joins_stop_at_the_room_limit,
    join_flood_fills_at_most_the_limit,
);
