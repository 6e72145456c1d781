//! PROTOCOL.md §6 on the wire (one node): to a client, to a user (every
//! session, on every shard), to a room with `exclude`, broadcast to the
//! authenticated with `exclude`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use ignis_ws::config::IoMode;
use serde_json::json;
use util::*;

fn shard_of(id: &str) -> u8 {
    *uuid::Uuid::parse_str(id)
        .unwrap()
        .as_bytes()
        .last()
        .unwrap()
}

async fn to_client_reaches_only_that_client(io: IoMode) {
    let s = start(config(io));
    let h = s.handle();
    let (mut c1, d1) = authed(&s.url(), "user-1").await;
    let (mut c2, d2) = authed(&s.url(), "user-1").await;
    h.to_client(&id_of(&d1), "test-event", &json!({"key":"value"}))
        .unwrap();
    assert_eq!(
        c1.recv_text().await,
        r#"{"event":"test-event","data":{"key":"value"}}"#
    );
    expect_nothing_before_marker(&h, &mut c2, &id_of(&d2)).await;
    // Unknown and malformed ids: nothing happens.
    h.to_client("00000000-0000-4000-8000-000000000000", "x", &json!(1))
        .unwrap();
    h.to_client("ghost", "x", &json!(1)).unwrap();
    expect_nothing_before_marker(&h, &mut c1, &id_of(&d1)).await;
}

async fn unauthenticated_client_gets_direct_and_own_room_only(io: IoMode) {
    // Client-targeted delivery does not check the auth state (DL-15), and
    // the own-id room is there from the upgrade (DL-11), as in the
    // reference. The id is learned from the `on_open` hook.
    let (hooks, mut rx) = ChannelHooks::new();
    let s = start_with(ignis_ws::ServerBuilder::new(config(io)).hooks(hooks));
    let h = s.handle();
    let mut c = Client::connect(&s.url()).await;
    let HookEvent::Open { client_id: id } = next_hook_any(&mut rx).await else {
        panic!("expected the open hook")
    };
    h.broadcast("b", &json!(0), &[]).unwrap();
    h.to_room("ws-default", "d", &json!(0), &[]).unwrap();
    h.to_client(&id, "rc", &json!(4)).unwrap();
    assert_eq!(c.recv().await, json!({"event":"rc","data":4}));
    h.to_room(&id, "own", &json!(5), &[]).unwrap();
    assert_eq!(c.recv().await, json!({"event":"own","data":5}));
    // It is the same id `connected` reports later.
    c.send(json!({"event":"authenticate","data":{"userId":"late"}}))
        .await;
    let d = c.recv().await["data"].clone();
    assert_eq!(id_of(&d), id);
}

async fn to_user_reaches_every_session_on_every_shard(io: IoMode) {
    let s = start(config(io));
    let h = s.handle();
    // Open sessions until user-1 has sessions on both shards.
    let mut sessions = Vec::new();
    let mut shards = std::collections::HashSet::new();
    while shards.len() < 2 || sessions.len() < 3 {
        let (c, d) = authed(&s.url(), "user-1").await;
        shards.insert(shard_of(&id_of(&d)));
        sessions.push((c, d));
        assert!(
            sessions.len() < 64,
            "SO_REUSEPORT never used the second shard"
        );
    }
    let (mut other, od) = authed(&s.url(), "user-2").await;
    h.to_user("user-1", "user-event", &json!({"x":1})).unwrap();
    for (c, _) in sessions.iter_mut() {
        assert_eq!(
            c.recv_text().await,
            r#"{"event":"user-event","data":{"x":1}}"#
        );
    }
    expect_nothing_before_marker(&h, &mut other, &id_of(&od)).await;
    // A user nobody is: nothing, no error.
    h.to_user("ghost", "x", &json!(1)).unwrap();
    for (c, d) in sessions.iter_mut() {
        expect_nothing_before_marker(&h, c, &id_of(d)).await;
    }
    // One session leaves: the others still get user messages, once.
    let (first, _) = sessions.remove(0);
    first.close().await;
    h.settle().await;
    h.to_user("user-1", "again", &json!(2)).unwrap();
    for (c, d) in sessions.iter_mut() {
        assert_eq!(c.recv().await, json!({"event":"again","data":2}));
        expect_nothing_before_marker(&h, c, &id_of(d)).await;
    }
}

async fn room_with_exclude(io: IoMode) {
    let s = start(config(io));
    let h = s.handle();
    let mut cs = Vec::new();
    for u in ["user-1", "user-1", "user-2"] {
        let (c, d) = authed_in(&s.url(), u, &["my-room"]).await;
        cs.push((c, id_of(&d)));
    }
    let (mut outsider, od) = authed(&s.url(), "user-3").await;
    let ex = cs[1].1.clone();
    h.to_room("my-room", "room-event", &json!({"y":2}), &[ex.as_str()])
        .unwrap();
    for (i, (c, id)) in cs.iter_mut().enumerate() {
        if i == 1 {
            expect_nothing_before_marker(&h, c, id).await;
        } else {
            assert_eq!(
                c.recv_text().await,
                r#"{"event":"room-event","data":{"y":2}}"#
            );
        }
    }
    expect_nothing_before_marker(&h, &mut outsider, &id_of(&od)).await;
    // Empty exclude = no exclusion; unknown room: nothing.
    h.to_room("my-room", "all", &json!(null), &[]).unwrap();
    for (c, _) in cs.iter_mut() {
        assert_eq!(c.recv_text().await, r#"{"event":"all","data":null}"#);
    }
    h.to_room("empty-room", "x", &json!(1), &["ghost"]).unwrap();
    for (c, id) in cs.iter_mut() {
        expect_nothing_before_marker(&h, c, id).await;
    }
}

async fn broadcast_reaches_authenticated_only_with_exclude(io: IoMode) {
    let s = start(config(io));
    let h = s.handle();
    let mut cs = Vec::new();
    for u in ["user-1", "user-1", "user-2"] {
        let (c, d) = authed(&s.url(), u).await;
        cs.push((c, id_of(&d)));
    }
    let mut anon = Client::connect(&s.url()).await;
    h.broadcast("broadcast-event", &json!({"msg":"hello all"}), &[])
        .unwrap();
    for (c, _) in cs.iter_mut() {
        assert_eq!(
            c.recv_text().await,
            r#"{"event":"broadcast-event","data":{"msg":"hello all"}}"#
        );
    }
    let ex1 = cs[0].1.clone();
    let ex3 = cs[2].1.clone();
    h.broadcast("b2", &json!(2), &[&ex1, &ex3]).unwrap();
    assert_eq!(cs[1].0.recv().await, json!({"event":"b2","data":2}));
    for i in [0, 2] {
        let (c, id) = &mut cs[i];
        expect_nothing_before_marker(&h, c, id).await;
    }
    h.settle().await;
    anon.expect_silence().await;
}

async fn many_clients_per_user(io: IoMode) {
    let s = start(config(io));
    let h = s.handle();
    let mut cs = Vec::new();
    for i in 0..100 {
        let (c, d) = authed(&s.url(), &format!("user-{}", i % 10)).await;
        cs.push((c, id_of(&d)));
    }
    for k in 0..10 {
        h.to_user(&format!("user-{k}"), "u", &json!(k)).unwrap();
    }
    for (i, (c, id)) in cs.iter_mut().enumerate() {
        assert_eq!(c.recv().await, json!({"event":"u","data":i % 10}));
        expect_nothing_before_marker(&h, c, id).await;
    }
}

async fn closed_client_is_gone_from_every_index(io: IoMode) {
    let s = start(config(io));
    let h = s.handle();
    let (c, d) = authed(&s.url(), "solo").await;
    let (mut other, od) = authed(&s.url(), "other").await;
    c.close().await;
    // The close handshake is over for the client; the server drops the
    // connection on its next turn (a task's, or the reaper's).
    until(&h, "the closed client is removed", |h| h.connections() == 1).await;
    h.to_user("solo", "x", &json!(1)).unwrap();
    h.to_client(&id_of(&d), "x", &json!(1)).unwrap();
    h.to_room(&id_of(&d), "x", &json!(1), &[]).unwrap();
    h.broadcast("b", &json!(1), &[]).unwrap();
    assert_eq!(other.recv().await, json!({"event":"b","data":1}));
    expect_nothing_before_marker(&h, &mut other, &id_of(&od)).await;
    let users = gauge(&h, |m| &m.users);
    assert_eq!(users, 1);
}

async fn write_coalescing_shares_syscalls(io: IoMode) {
    let mut cfg = config(io);
    cfg.shards = 1;
    cfg.write_coalesce = std::time::Duration::from_millis(100);
    let s = start(cfg);
    let h = s.handle();
    let (mut c, d) = authed(&s.url(), "u").await;
    let id = id_of(&d);
    let calls = || counter(&h, |m| &m.write_calls);
    let before = calls();
    // Ten messages spread over ~20 ms (pacing, not synchronisation): all
    // inside one 100 ms window.
    for i in 0..10 {
        h.to_client(&id, "m", &i).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    for i in 0..10 {
        assert_eq!(c.recv().await, json!({"event":"m","data":i}));
    }
    let used = calls() - before;
    assert!(used <= 3, "10 messages took {used} write calls");
}

/// Upgraded connections are parked in the shard's epoll (no task each),
/// on io_uring and on epoll.
async fn connections_are_parked(io: IoMode) {
    let s = start(config(io));
    let h = s.handle();
    let (mut c, _) = authed(&s.url(), "u").await;
    h.broadcast("b", &1, &[]).unwrap();
    assert_eq!(c.recv().await, json!({"event":"b","data":1}));
    assert_eq!(counter(&h, |m| &m.parked_total), 1, "parked connections");
}

io_tests!(
    connections_are_parked,
    write_coalescing_shares_syscalls,
    to_client_reaches_only_that_client,
    unauthenticated_client_gets_direct_and_own_room_only,
    to_user_reaches_every_session_on_every_shard,
    room_with_exclude,
    broadcast_reaches_authenticated_only_with_exclude,
    many_clients_per_user,
    closed_client_is_gone_from_every_index,
);
