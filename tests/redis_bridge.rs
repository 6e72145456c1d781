//! Cross-instance delivery (PROTOCOL.md §6) against real `redis-server`
//! processes on free ports: two ignis-ws nodes on one Redis, emitter
//! envelopes exactly as Ignis's `WebSocketEmitter` publishes them, send
//! routing and self-dedup, malformed envelopes, Redis outages, the outbox.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::sync::atomic::Ordering::Relaxed;

use ignis_ws::bridge::envelope::Kind;
use ignis_ws::config::IoMode;
use serde_json::json;
use util::redis_server::RedisServer;
use util::*;

/// Broadcast a fence through Redis and require it to be each client's next
/// frame: everything published before it has been handled by then.
async fn fence(redis: &RedisServer, clients: &mut [&mut Client]) {
    let mut r = redis.client().await;
    redis_publish(
        &mut r,
        "ws:broadcast",
        br#"{"serverId":"emitter","type":"broadcast","event":"fence"}"#,
    )
    .await;
    for c in clients.iter_mut() {
        assert_eq!(
            c.recv_text().await,
            r#"{"event":"fence"}"#,
            "nothing before the fence"
        );
    }
}

/// A Redis server (none where it cannot run) and two nodes on it, both
/// subscribed.
async fn two_nodes(io: IoMode) -> Option<(RedisServer, TestServer, TestServer)> {
    let redis = RedisServer::start()?;
    let a = start(redis_config(io, &redis.url()));
    let b = start(redis_config(io, &redis.url()));
    wait_subscribed(&a.handle()).await;
    wait_subscribed(&b.handle()).await;
    Some((redis, a, b))
}

async fn emitter_envelopes_reach_both_nodes_once(io: IoMode) {
    let Some((redis, a, b)) = two_nodes(io).await else {
        return;
    };
    let (mut ca, da) = authed_in(&a.url(), "alice", &["lobby"]).await;
    let (mut cb, db) = authed_in(&b.url(), "bob", &["lobby"]).await;
    settle_subscriptions(&[&a, &b]).await;
    let mut r = redis.client().await;
    // The exact texts the reference WebSocketEmitter publishes.
    redis_publish(&mut r, "ws:room:lobby", br#"{"serverId":"emitter","type":"room","target":"lobby","event":"update","data":{"status":"active"}}"#).await;
    redis_publish(&mut r, "ws:broadcast", br#"{"serverId":"emitter","type":"broadcast","event":"global","data":{"announcement":true}}"#).await;
    for c in [&mut ca, &mut cb] {
        assert_eq!(
            c.recv_text().await,
            r#"{"event":"update","data":{"status":"active"}}"#
        );
        assert_eq!(
            c.recv_text().await,
            r#"{"event":"global","data":{"announcement":true}}"#
        );
    }
    expect_nothing_before_marker(&a.handle(), &mut ca, &id_of(&da)).await;
    expect_nothing_before_marker(&b.handle(), &mut cb, &id_of(&db)).await;
    // No `data` key in the envelope: no `data` key in the frame.
    redis_publish(
        &mut r,
        "ws:broadcast",
        br#"{"serverId":"emitter","type":"broadcast","event":"g"}"#,
    )
    .await;
    assert_eq!(ca.recv_text().await, r#"{"event":"g"}"#);
    assert_eq!(cb.recv_text().await, r#"{"event":"g"}"#);
}

async fn user_sessions_on_both_nodes(io: IoMode) {
    let Some((redis, a, b)) = two_nodes(io).await else {
        return;
    };
    let mut sessions = Vec::new();
    for s in [&a, &b, &a, &b] {
        let (c, d) = authed(&s.url(), "u1").await;
        sessions.push((c, d, s.handle()));
    }
    let (mut other, od) = authed(&b.url(), "u2").await;
    settle_subscriptions(&[&a, &b]).await;
    let emitter = redis.emitter().await;
    for i in 0..3 {
        emitter
            .to_user("u1", "notify", &json!({"n": i}))
            .await
            .unwrap();
    }
    for (c, d, h) in sessions.iter_mut() {
        for i in 0..3 {
            assert_eq!(c.recv().await, json!({"event":"notify","data":{"n":i}}));
        }
        expect_nothing_before_marker(h, c, &id_of(d)).await;
    }
    expect_nothing_before_marker(&b.handle(), &mut other, &id_of(&od)).await;
}

async fn room_exclude_across_nodes(io: IoMode) {
    let Some((redis, a, b)) = two_nodes(io).await else {
        return;
    };
    let (mut c1, _) = authed_in(&a.url(), "x", &["r"]).await;
    let (mut c2, d2) = authed_in(&b.url(), "y", &["r"]).await;
    let (mut c3, _) = authed_in(&b.url(), "z", &["r"]).await;
    settle_subscriptions(&[&a, &b]).await;
    let emitter = redis.emitter().await;
    let excluded = id_of(&d2);
    emitter
        .to_room("r", "e", &1, Some(&[excluded.as_str()]))
        .await
        .unwrap();
    assert_eq!(c1.recv().await, json!({"event":"e","data":1}));
    assert_eq!(c3.recv().await, json!({"event":"e","data":1}));
    expect_nothing_before_marker(&b.handle(), &mut c2, &excluded).await;
}

async fn client_message_finds_its_node(io: IoMode) {
    let Some((redis, a, b)) = two_nodes(io).await else {
        return;
    };
    let (mut ca, da) = authed(&a.url(), "x").await;
    let (mut cb, db) = authed(&b.url(), "y").await;
    settle_subscriptions(&[&a, &b]).await;
    let emitter = redis.emitter().await;
    emitter
        .to_client(&id_of(&db), "private", &json!({"secret":true}))
        .await
        .unwrap();
    assert_eq!(
        cb.recv().await,
        json!({"event":"private","data":{"secret":true}})
    );
    expect_nothing_before_marker(&a.handle(), &mut ca, &id_of(&da)).await;
    // A node-A send to a client on node B goes through Redis (a client id
    // of another node is a room to A, as in Ignis's send()).
    a.handle().send(Some(&id_of(&db)), "via-a", &2).unwrap();
    assert_eq!(cb.recv().await, json!({"event":"via-a","data":2}));
}

async fn send_on_a_reaches_b_and_a_once(io: IoMode) {
    let Some((redis, a, b)) = two_nodes(io).await else {
        return;
    };
    let (mut ca, da) = authed_in(&a.url(), "x", &["news"]).await;
    let (mut cb, db) = authed_in(&b.url(), "y", &["news"]).await;
    settle_subscriptions(&[&a, &b]).await;
    a.handle()
        .send(Some("news"), "headline", &json!("hi"))
        .unwrap();
    a.handle().send(None, "all", &json!(1)).unwrap();
    a.handle()
        .publish(Kind::User, Some("y"), "dm", &json!(3), &[])
        .unwrap();
    assert_eq!(ca.recv().await, json!({"event":"headline","data":"hi"}));
    assert_eq!(ca.recv().await, json!({"event":"all","data":1}));
    assert_eq!(cb.recv().await, json!({"event":"headline","data":"hi"}));
    assert_eq!(cb.recv().await, json!({"event":"all","data":1}));
    assert_eq!(cb.recv().await, json!({"event":"dm","data":3}));
    // A fence published after A's three messages reaches A's subscriber
    // after their echoes: had A delivered an echo, it would come first.
    fence(&redis, &mut [&mut ca, &mut cb]).await;
    let m = a.handle().bridge().unwrap().metrics().clone();
    // A hears only the channels its clients need: its echoes of the room
    // and the broadcast, not of user y's channel (no session of y on A).
    assert_eq!(
        m.own_skipped.load(Relaxed),
        2,
        "A ignored its own two echoes"
    );
    let published: u64 = m.published.iter().map(|c| c.load(Relaxed)).sum();
    assert_eq!(published, 3);
    let _ = (da, db);
}

async fn malformed_envelopes_are_dropped_and_counted(io: IoMode) {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let s = start(redis_config(io, &redis.url()));
    let h = s.handle();
    wait_subscribed(&h).await;
    let (mut c, d) = authed(&s.url(), "u").await;
    let mut r = redis.client().await;
    let big = format!(
        r#"{{"serverId":"o","type":"broadcast","event":"big","data":"{}"}}"#,
        "x".repeat(1 << 20)
    );
    let bad: Vec<&[u8]> = vec![
        b"not json",
        b"null",
        b"[1,2]",
        br#"{"type":"broadcast","event":"e","data":1}"#,
        br#"{"serverId":7,"type":"broadcast","event":"e"}"#,
        br#"{"serverId":"o","type":"CLIENT","target":"x","event":"e"}"#,
        br#"{"serverId":"o","type":"room","event":"e"}"#,
        br#"{"serverId":"o","type":"room","target":5,"event":"e"}"#,
        br#"{"serverId":"o","type":"broadcast","event":null}"#,
        br#"{"serverId":"o","type":"broadcast","event":"e","exclude":"abc"}"#,
        br#"{"serverId":"o","type":"broadcast","event":"e","exclude":{"length":1}}"#,
        big.as_bytes(),
    ];
    for p in &bad {
        redis_publish(&mut r, "ws:broadcast", p).await;
    }
    redis_publish(
        &mut r,
        "ws:broadcast",
        br#"{"serverId":"o","type":"broadcast","event":"valid","data":1}"#,
    )
    .await;
    assert_eq!(
        c.recv().await,
        json!({"event":"valid","data":1}),
        "the valid envelope after the bad ones"
    );
    expect_nothing_before_marker(&h, &mut c, &id_of(&d)).await;
    let m = h.bridge().unwrap().metrics();
    let dropped: u64 = m.envelopes_dropped.iter().map(|c| c.load(Relaxed)).sum();
    assert_eq!(dropped, bad.len() as u64);
    let (_, body) = http_get(s.addr, "/metrics").await;
    assert!(
        body.contains(r#"ignis_ws_redis_envelopes_dropped_total{reason="too_large"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(r#"ignis_ws_redis_envelopes_dropped_total{reason="bad_json"} 1"#),
        "{body}"
    );
}

/// A Redis that stops answering without closing anything (SIGSTOP: a
/// silent partition) is noticed by the subscriber's PING (within two 5 s
/// ping periods; the test allows 30 s), and once it answers again
/// everything is subscribed again and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_is_noticed_and_rejoined() {
    let io = IoMode::Auto;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let s = start(redis_config(io, &redis.url()));
    let h = s.handle();
    wait_subscribed(&h).await;
    let (mut c, _) = authed(&s.url(), "u").await;
    let mut link = h.bridge().unwrap().link();
    redis.freeze(true);
    let down = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        link.wait_for(|l| !l.subscribed),
    )
    .await
    // Not held: the watch's read guard would block the bridge's updates.
    .is_ok_and(|r| r.is_ok());
    redis.freeze(false);
    assert!(down, "the subscriber did not notice a silent Redis");
    wait_subscribed(&h).await;
    settle_subscriptions(&[&s]).await;
    let mut r = redis.client().await;
    redis_publish(
        &mut r,
        "ws:broadcast",
        br#"{"serverId":"o","type":"broadcast","event":"back","data":1}"#,
    )
    .await;
    assert_eq!(c.recv().await, json!({"event":"back","data":1}));
}

async fn redis_outage_and_recovery(io: IoMode) {
    let Some((mut redis, a, b)) = two_nodes(io).await else {
        return;
    };
    let (mut ca, _) = authed_in(&a.url(), "x", &["r"]).await;
    let (mut cb, _) = authed_in(&b.url(), "y", &["r"]).await;
    redis.kill();
    wait_unsubscribed(&a.handle()).await;
    wait_unsubscribed(&b.handle()).await;
    let (_, health) = http_get(a.addr, "/health").await;
    assert!(health.contains(r#""status":"degraded""#), "{health}");
    // Local delivery never stops.
    for i in 0..3 {
        a.handle().to_room("r", "local", &i, &[]).unwrap();
        assert_eq!(ca.recv().await, json!({"event":"local","data":i}));
    }
    // A send during the outage is delivered locally at once.
    a.handle()
        .publish(Kind::Room, Some("r"), "queued", &7, &[])
        .unwrap();
    assert_eq!(
        ca.recv().await,
        json!({"event":"queued","data":7}),
        "local part at once"
    );
    redis.restart();
    wait_subscribed(&a.handle()).await;
    wait_subscribed(&b.handle()).await;
    // The new connections subscribe the rooms again.
    settle_subscriptions(&[&a, &b]).await;
    // (Whether B also sees "queued" depends on which reconnects first, A's
    // publisher or B's subscriber: Redis pub/sub keeps nothing for absent
    // subscribers. `outbox_holds_publishes_until_redis_takes_them` checks
    // the outbox deterministically.) Delivery through Redis resumes:
    let emitter = redis.emitter().await;
    emitter.to_room("r", "after", &1, None).await.unwrap();
    assert_eq!(ca.recv().await, json!({"event":"after","data":1}));
    let m = cb.recv().await;
    let m = if m["event"] == "queued" {
        cb.recv().await
    } else {
        m
    };
    assert_eq!(m, json!({"event":"after","data":1}));
    let (_, health) = http_get(a.addr, "/health").await;
    assert!(health.contains(r#""status":"ok""#), "{health}");
    assert!(
        a.handle()
            .bridge()
            .unwrap()
            .metrics()
            .reconnects
            .load(Relaxed)
            >= 2
    );
}

/// `ACL SETUSER default {rule}`.
async fn acl_default_user(r: &mut redis::aio::MultiplexedConnection, rule: &str) {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg(rule)
        .query_async(r)
        .await
        .unwrap();
}

async fn outbox_holds_publishes_until_redis_takes_them(io: IoMode) {
    // Redis refuses PUBLISH (ACL) while both subscribers stay connected:
    // node A's publishes wait in its outbox and arrive, in order, once
    // Redis takes them again.
    let Some((redis, a, b)) = two_nodes(io).await else {
        return;
    };
    let (mut cb, _) = authed(&b.url(), "y").await;
    let mut r = redis.client().await;
    acl_default_user(&mut r, "-publish").await;
    for i in 0..5 {
        a.handle()
            .publish(Kind::Broadcast, None, "held", &i, &[])
            .unwrap();
    }
    acl_default_user(&mut r, "+publish").await;
    for i in 0..5 {
        assert_eq!(cb.recv().await, json!({"event":"held","data":i}));
    }
    let m = a.handle().bridge().unwrap().metrics().clone();
    assert_eq!(m.outbox_dropped.load(Relaxed), 0);
}

async fn outbox_is_bounded(io: IoMode) {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let mut cfg = redis_config(io, &redis.url());
    cfg.redis_outbox = 5;
    let s = start(cfg);
    let h = s.handle();
    wait_subscribed(&h).await;
    redis.kill();
    wait_unsubscribed(&h).await;
    for i in 0..20 {
        h.publish(Kind::Broadcast, None, "e", &i, &[]).unwrap();
    }
    let m = h.bridge().unwrap().metrics();
    // 5 in the outbox, at most one more in the publisher's hand.
    let dropped = m.outbox_dropped.load(Relaxed);
    assert!((14..=15).contains(&dropped), "dropped {dropped}");
    let (_, body) = http_get(s.addr, "/metrics").await;
    assert!(
        body.contains("ignis_ws_redis_outbox_dropped_total"),
        "{body}"
    );
}

async fn redis_down_at_start(io: IoMode) {
    if !util::redis_server::available() {
        return;
    }
    let port = util::redis_server::free_port();
    let s = start(redis_config(io, &format!("redis://127.0.0.1:{port}")));
    // Serves local traffic, reports degraded.
    let (mut c, _) = authed(&s.url(), "u").await;
    s.handle().broadcast("local", &1, &[]).unwrap();
    assert_eq!(c.recv().await, json!({"event":"local","data":1}));
    let (_, health) = http_get(s.addr, "/health").await;
    assert!(health.contains(r#""status":"degraded""#), "{health}");
    // Redis appears: the bridge connects by itself.
    let _redis = RedisServer::start_on(port).unwrap();
    wait_subscribed(&s.handle()).await;
}

/// A pipelined burst (the shard applies consecutive deliveries to one
/// room as a run): every client gets exactly its messages, whole and in
/// order, across room, other-room and broadcast blocks.
async fn a_pipelined_burst_arrives_whole_and_in_order(io: IoMode) {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let srv = start(redis_config(io, &redis.url()));
    wait_subscribed(&srv.handle()).await;
    let (mut a, _) = authed_in(&srv.url(), "a", &["r"]).await;
    let (mut b, _) = authed_in(&srv.url(), "b", &["r"]).await;
    let (mut c, _) = authed_in(&srv.url(), "c", &["s"]).await;
    settle_subscriptions(&[&srv]).await;
    let mut pipe = redis::pipe();
    let mut want_r = Vec::new();
    let mut want_s = Vec::new();
    for i in 0..700u32 {
        let (channel, env) = match i {
            200 => (
                "ws:room:s".to_owned(),
                json!({"serverId":"emitter","type":"room","target":"s","event":"e","data":i}),
            ),
            300..500 => (
                "ws:broadcast".to_owned(),
                json!({"serverId":"emitter","type":"broadcast","event":"e","data":i}),
            ),
            _ => (
                "ws:room:r".to_owned(),
                json!({"serverId":"emitter","type":"room","target":"r","event":"e","data":i}),
            ),
        };
        let text = format!(r#"{{"event":"e","data":{i}}}"#);
        if i == 200 || (300..500).contains(&i) {
            want_s.push(text.clone());
        }
        if i != 200 {
            want_r.push(text);
        }
        pipe.cmd("PUBLISH").arg(channel).arg(env.to_string());
    }
    let mut r = redis.client().await;
    let reached: Vec<u64> = pipe.query_async(&mut r).await.unwrap();
    assert!(reached.iter().all(|&n| n == 1), "{reached:?}");
    for (client, want) in [(&mut a, &want_r), (&mut b, &want_r), (&mut c, &want_s)] {
        for w in want.iter() {
            assert_eq!(&client.recv_text().await, w);
        }
    }
    fence(&redis, &mut [&mut a, &mut b, &mut c]).await;
}

io_tests!(
    a_pipelined_burst_arrives_whole_and_in_order,
    emitter_envelopes_reach_both_nodes_once,
    user_sessions_on_both_nodes,
    room_exclude_across_nodes,
    client_message_finds_its_node,
    send_on_a_reaches_b_and_a_once,
    malformed_envelopes_are_dropped_and_counted,
    redis_outage_and_recovery,
    outbox_holds_publishes_until_redis_takes_them,
    outbox_is_bounded,
    redis_down_at_start,
);
