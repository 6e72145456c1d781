//! PROTOCOL.md §5 on the wire: join (filter, then validator), leave, the
//! own-id room, default rooms, room patterns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::time::Duration;

use ignis_ws::ServerBuilder;
use ignis_ws::auth::{JoinRequest, room_validator_fn};
use ignis_ws::config::IoMode;
use serde_json::json;
use util::*;

/// A room message reaches `c` (and it is the next frame).
async fn gets(h: &ignis_ws::Handle, c: &mut Client, room: &str) {
    h.to_room(room, "E", &json!(room), &[]).unwrap();
    assert_eq!(
        c.recv().await,
        json!({"event":"E","data":room}),
        "room {room}"
    );
}

/// A room message does not reach `c`.
async fn misses(h: &ignis_ws::Handle, c: &mut Client, id: &str, room: &str) {
    h.to_room(room, "E", &json!(room), &[]).unwrap();
    expect_nothing_before_marker(h, c, id).await;
}

/// `user` connected to `s`: (server, handle, client, client id).
async fn one_client(s: TestServer, user: &str) -> (TestServer, ignis_ws::Handle, Client, String) {
    let h = s.handle();
    let (c, d) = authed(&s.url(), user).await;
    (s, h, c, id_of(&d))
}

async fn join_then_receive_leave_then_not(io: IoMode) {
    let (_s, h, mut c, id) = one_client(start(config(io)), "user-1").await;
    c.join(&["room-x", "room-y"]).await;
    c.expect_silence().await; // no reply to join
    gets(&h, &mut c, "room-x").await;
    gets(&h, &mut c, "room-y").await;
    c.send(json!({"event":"leave","data":{"rooms":["room-x","never-joined"]}}))
        .await;
    c.expect_silence().await; // no reply to leave
    misses(&h, &mut c, &id, "room-x").await;
    gets(&h, &mut c, "room-y").await;
}

async fn default_and_own_rooms(io: IoMode) {
    let (_s, h, mut c, id) = one_client(start(config(io)), "user-1").await;
    gets(&h, &mut c, "ws-default").await;
    gets(&h, &mut c, "ws-notification").await;
    gets(&h, &mut c, &id).await;
    // Leaving the default room and the own-id room works...
    c.send(json!({"event":"leave","data":{"rooms":["ws-default", id]}}))
        .await;
    c.expect_silence().await;
    misses(&h, &mut c, &id, "ws-default").await;
    misses(&h, &mut c, &id, &id).await;
    // ...but a client-targeted message still arrives.
    h.to_client(&id, "direct", &json!(1)).unwrap();
    assert_eq!(c.recv().await, json!({"event":"direct","data":1}));
    gets(&h, &mut c, "ws-notification").await;
}

async fn custom_default_rooms(io: IoMode) {
    let mut cfg = config(io);
    cfg.default_rooms = vec!["room-a".into(), "room-b".into()];
    let (_s, h, mut c, id) = one_client(start(cfg), "u").await;
    gets(&h, &mut c, "room-a").await;
    gets(&h, &mut c, "room-b").await;
    misses(&h, &mut c, &id, "ws-default").await;
}

async fn unauthenticated_client_gets_no_broadcast_or_default_rooms(io: IoMode) {
    let s = start(config(io));
    let h = s.handle();
    let mut c = Client::connect(&s.url()).await;
    h.broadcast("b", &json!(1), &[]).unwrap();
    h.to_room("ws-default", "d", &json!(1), &[]).unwrap();
    h.to_room("ws-notification", "n", &json!(1), &[]).unwrap();
    // Every shard has handled the three deliveries before the probe.
    h.settle().await;
    c.expect_silence().await;
}

async fn join_filter(io: IoMode) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<String>>();
    let b = ServerBuilder::new(config(io)).room_validator(room_validator_fn(
        move |req: JoinRequest| {
            let _ = tx.send(req.rooms.clone());
            async move { req.rooms }
        },
    ));
    let (_s, h, mut c, id) = one_client(start_with(b), "u").await;
    let long = "a".repeat(257);
    let max = "b".repeat(256);
    c.send(json!({"event":"join","data":{"rooms":["r1", "ws:x", "", 7, null, long, max, "r1"]}}))
        .await;
    let seen = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, vec!["r1".to_string(), max.clone()]);
    c.expect_silence().await;
    gets(&h, &mut c, "r1").await;
    gets(&h, &mut c, &max).await;
    misses(&h, &mut c, &id, "ws:x").await;
    misses(&h, &mut c, &id, &long).await;
    // Nothing left after filtering: the validator is not called.
    c.send(json!({"event":"join","data":{"rooms":["ws:only", ""]}}))
        .await;
    c.send(json!({"event":"join","data":{"rooms":[]}})).await;
    c.send(json!({"event":"join","data":{"rooms":"abc"}})).await;
    c.send(json!({"event":"join","data":"abc"})).await;
    c.send(json!({"event":"join"})).await;
    c.send(json!({"event":"leave","data":{"rooms":"abc"}}))
        .await;
    c.send(json!({"event":"leave","data":{"rooms":[]}})).await;
    c.expect_silence().await;
    c.send(json!({"event":"join","data":{"rooms":["probe"]}}))
        .await;
    assert_eq!(
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap(),
        vec!["probe".to_string()]
    );
}

async fn validator_decides_and_cannot_add_rooms(io: IoMode) {
    let b = ServerBuilder::new(config(io)).room_validator(room_validator_fn(
        |req: JoinRequest| async move {
            // Allow only "ok-*", and try to sneak in rooms never asked for.
            let mut v: Vec<String> = req
                .rooms
                .into_iter()
                .filter(|r| r.starts_with("ok-"))
                .collect();
            v.push("ws:evil".into());
            v.push("extra".into());
            v
        },
    ));
    let (_s, h, mut c, id) = one_client(start_with(b), "u").await;
    c.join(&["ok-1", "no-1"]).await;
    c.expect_silence().await;
    gets(&h, &mut c, "ok-1").await;
    misses(&h, &mut c, &id, "no-1").await;
    misses(&h, &mut c, &id, "ws:evil").await;
    misses(&h, &mut c, &id, "extra").await;
}

async fn slow_validator_is_offloaded(io: IoMode) {
    let b = ServerBuilder::new(config(io)).room_validator(room_validator_fn(
        |req: JoinRequest| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            req.rooms
        },
    ));
    let (_s, h, mut c, id) = one_client(start_with(b), "u").await;
    c.join(&["later"]).await;
    // Wait for the join to land: poll with messages until one arrives.
    loop {
        h.to_room("later", "E", &json!(1), &[]).unwrap();
        h.to_client(&id, "tick", &json!(1)).unwrap();
        let m = c.recv().await;
        if m["event"] == "E" {
            break;
        }
        assert_eq!(m["event"], "tick");
    }
}

async fn no_validator_refuses_joins(io: IoMode) {
    let mut cfg = config(io);
    cfg.room_allow.clear();
    let (_s, h, mut c, id) = one_client(start(cfg), "u").await;
    c.join(&["room-x"]).await;
    c.expect_silence().await;
    misses(&h, &mut c, &id, "room-x").await;
}

async fn room_allow_patterns_with_user_id(io: IoMode) {
    let mut cfg = config(io);
    cfg.room_allow = vec!["public:*".into(), "user:{userId}:*".into()];
    let (_s, h, mut c, id) = one_client(start(cfg), "alice").await;
    c.join(&[
        "public:news",
        "user:alice:inbox",
        "user:bob:inbox",
        "private",
    ])
    .await;
    c.expect_silence().await;
    gets(&h, &mut c, "public:news").await;
    gets(&h, &mut c, "user:alice:inbox").await;
    misses(&h, &mut c, &id, "user:bob:inbox").await;
    misses(&h, &mut c, &id, "private").await;
}

/// Issue 12: `*` stays within one `:`-segment, so `user:{userId}:*` does not
/// give alice the rooms of user `alice:x`; `**` is the explicit multi-segment
/// wildcard; a user id holding `:` matches no `{userId}` pattern.
async fn star_stays_within_one_segment(io: IoMode) {
    let mut cfg = config(io);
    cfg.room_allow = vec!["user:{userId}:*".into()];
    let (_s, h, mut alice, id) = one_client(start(cfg), "alice").await;
    alice
        .join(&["user:alice:x:inbox", "user:alice:inbox"])
        .await;
    alice.expect_silence().await;
    gets(&h, &mut alice, "user:alice:inbox").await;
    misses(&h, &mut alice, &id, "user:alice:x:inbox").await;

    // `**`: alice's rooms at any depth, and still nobody else's.
    let mut cfg = config(io);
    cfg.room_allow = vec!["user:{userId}:**".into()];
    let (s, h, mut alice, alice_id) = one_client(start(cfg), "alice").await;
    alice
        .join(&["user:alice:a:b", "user:alice:inbox", "user:alicex:inbox"])
        .await;
    alice.expect_silence().await;
    gets(&h, &mut alice, "user:alice:a:b").await;
    gets(&h, &mut alice, "user:alice:inbox").await;
    misses(&h, &mut alice, &alice_id, "user:alicex:inbox").await;
    // A user id with `:` would otherwise own a subtree of alice's rooms.
    let rooms = ["user:alice:x:inbox", "user:alice:x", "user:alice:a:b"];
    let (mut other, d) = authed_in(&s.url(), "alice:x", &rooms).await;
    let other_id = id_of(&d);
    for r in rooms {
        misses(&h, &mut other, &other_id, r).await;
    }
}

async fn many_rooms_join_and_leave(io: IoMode) {
    let (_s, h, mut c, id) = one_client(start(config(io)), "u").await;
    let rooms: Vec<String> = (0..50).map(|i| format!("room-{i}")).collect();
    c.send(json!({"event":"join","data":{"rooms":rooms}})).await;
    c.expect_silence().await;
    gets(&h, &mut c, "room-49").await;
    c.send(json!({"event":"leave","data":{"rooms":rooms}}))
        .await;
    c.expect_silence().await;
    for r in ["room-0", "room-25", "room-49"] {
        misses(&h, &mut c, &id, r).await;
    }
    gets(&h, &mut c, &id).await;
    gets(&h, &mut c, "ws-default").await;
    gets(&h, &mut c, "ws-notification").await;
    // The rooms are gone from the index.
    let rooms_now = gauge(&h, |m| &m.rooms);
    assert_eq!(rooms_now, 2, "only the default rooms remain");
}

async fn failing_validator_joins_nothing(io: IoMode) {
    let b = ServerBuilder::new(config(io)).room_validator(room_validator_fn(
        |req: JoinRequest| async move {
            if req.rooms.iter().any(|r| r == "boom") {
                panic!("a buggy validator");
            }
            req.rooms
        },
    ));
    let (_s, h, mut c, id) = one_client(start_with(b), "u").await;
    c.join(&["boom", "room-x"]).await;
    c.expect_silence().await;
    misses(&h, &mut c, &id, "room-x").await;
    // The shard is fine: later joins work.
    c.join(&["room-y"]).await;
    c.expect_silence().await;
    gets(&h, &mut c, "room-y").await;
}

io_tests!(
    failing_validator_joins_nothing,
    join_then_receive_leave_then_not,
    default_and_own_rooms,
    custom_default_rooms,
    unauthenticated_client_gets_no_broadcast_or_default_rooms,
    join_filter,
    validator_decides_and_cannot_add_rooms,
    slow_validator_is_offloaded,
    no_validator_refuses_joins,
    room_allow_patterns_with_user_id,
    star_stays_within_one_segment,
    many_rooms_join_and_leave,
);
