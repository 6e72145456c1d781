//! A cluster in which each node hears only what its clients need (issue
//! 15): interest-based Redis subscriptions against real `redis-server`
//! processes. The churn test drives joins, leaves, graceful and abrupt
//! disconnects (and a Redis restart) over two nodes of two shards each,
//! then compares what Redis says each node is subscribed to with what
//! the nodes' room, user and client indexes must hold.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;

use ignis_ws::config::{IoMode, RedisSubscribe};
use serde_json::json;
use util::redis_server::{RedisCluster, RedisSentinel, RedisServer};
use util::*;

/// One simulated client and what the server must know of it.
struct Sim {
    c: Client,
    id: String,
    user: String,
    rooms: BTreeSet<String>,
}

/// What each node's Redis subscriptions must be, from the clients alive on
/// it: `ws:broadcast` and the control channels (`ignis-ws:control`, its
/// own `ignis-ws:node:{serverId}`), each room with a member (the default rooms
/// `ws-default` and `ws-notification` are joined at authentication), each
/// user with a session, and (sharded only) each client's `ws:client:{id}`
/// and `ws:room:{id}`: on classic pub/sub a node hears its clients through
/// two patterns on its client-id tag instead.
fn expected(server_id: &str, clients: &[Sim], sharded: bool) -> BTreeSet<String> {
    let mut want = BTreeSet::from([
        "ws:broadcast".to_string(),
        "ignis-ws:control".into(),
        format!("ignis-ws:node:{server_id}"),
    ]);
    for s in clients {
        if sharded {
            want.insert(format!("ws:client:{}", s.id));
            want.insert(format!("ws:room:{}", s.id));
        }
        want.insert(format!("ws:user:{}", s.user));
        want.insert("ws:room:ws-default".into());
        want.insert("ws:room:ws-notification".into());
        for r in &s.rooms {
            want.insert(format!("ws:room:{r}"));
        }
    }
    want
}

/// Where the nodes' subscriptions live: one Redis, or a Redis Cluster in
/// sharded mode (fixed channels classic, the rest shard channels; each
/// cluster node lists only its own subscribers, so lists are merged and
/// counts summed over the nodes).
enum Backend<'a> {
    Single(&'a RedisServer),
    Sharded(&'a RedisCluster),
}

impl Backend<'_> {
    fn servers(&self) -> Vec<&RedisServer> {
        match self {
            Backend::Single(r) => vec![r],
            Backend::Sharded(c) => c.nodes.iter().collect(),
        }
    }

    /// (classic channels, shard channels) with a subscriber.
    async fn lists(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let (mut classic, mut shard) = (BTreeSet::new(), BTreeSet::new());
        for r in self.servers() {
            let mut c = r.client().await;
            let v: Vec<String> = redis::cmd("PUBSUB")
                .arg("CHANNELS")
                .query_async(&mut c)
                .await
                .unwrap();
            classic.extend(v);
            if matches!(self, Backend::Sharded(_)) {
                let v: Vec<String> = redis::cmd("PUBSUB")
                    .arg("SHARDCHANNELS")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                shard.extend(v);
            }
        }
        (classic, shard)
    }

    /// Subscribers of each channel, summed over the servers.
    async fn counts(&self, chans: &[&String]) -> std::collections::HashMap<String, usize> {
        let mut out = std::collections::HashMap::new();
        let subs: &[&str] = match self {
            Backend::Single(_) => &["NUMSUB"],
            Backend::Sharded(_) => &["NUMSUB", "SHARDNUMSUB"],
        };
        for r in self.servers() {
            let mut c = r.client().await;
            for sub in subs {
                for chunk in chans.chunks(200) {
                    let mut cmd = redis::cmd("PUBSUB");
                    cmd.arg(*sub);
                    for ch in chunk {
                        cmd.arg(ch.as_str());
                    }
                    let counts: Vec<(String, usize)> = cmd.query_async(&mut c).await.unwrap();
                    for (ch, n) in counts {
                        *out.entry(ch).or_insert(0) += n;
                    }
                }
            }
        }
        out
    }
}

/// Every client's frames handled, every abrupt drop noticed, every
/// change confirmed by Redis; then Redis's view must equal the model's.
async fn check(redis: &Backend<'_>, nodes: &[&TestServer], model: &mut [Vec<Sim>], when: &str) {
    for (n, sims) in nodes.iter().zip(model.iter_mut()) {
        for s in sims.iter_mut() {
            s.c.sync().await;
        }
        let alive = sims.len() as i64;
        until(&n.handle(), "dropped clients removed", |h| {
            h.connections() == alive
        })
        .await;
    }
    settle_subscriptions(nodes).await;
    let sharded = matches!(redis, Backend::Sharded(_));
    let per_node: Vec<BTreeSet<String>> = nodes
        .iter()
        .zip(model.iter())
        .map(|(n, m)| expected(n.handle().bridge().unwrap().server_id(), m, sharded))
        .collect();
    let union: BTreeSet<String> = per_node.iter().flatten().cloned().collect();
    let (classic, shard) = redis.lists().await;
    let fixed = |c: &String| c == "ws:broadcast" || c.starts_with("ignis-ws:");
    if matches!(redis, Backend::Sharded(_)) {
        // Only the fixed channels are classic; everything else sharded.
        let want_classic: BTreeSet<String> = union.iter().filter(|c| fixed(c)).cloned().collect();
        let want_shard: BTreeSet<String> = union.iter().filter(|c| !fixed(c)).cloned().collect();
        assert_eq!(classic, want_classic, "{when}: classic channels");
        let missing: Vec<_> = want_shard.difference(&shard).collect();
        let leaked: Vec<_> = shard.difference(&want_shard).collect();
        assert!(
            missing.is_empty() && leaked.is_empty(),
            "{when}: shard channels missing {missing:?}, leaked {leaked:?}"
        );
    } else {
        let missing: Vec<_> = union.difference(&classic).collect();
        let leaked: Vec<_> = classic.difference(&union).collect();
        assert!(
            missing.is_empty() && leaked.is_empty(),
            "{when}: missing {missing:?}, leaked {leaked:?}"
        );
    }
    // Per node: each channel has exactly as many subscribers as nodes
    // whose clients need it, and each node's gauge counts its own set.
    let chans: Vec<&String> = union.iter().collect();
    for (ch, n) in redis.counts(&chans).await {
        let want = per_node.iter().filter(|s| s.contains(&ch)).count();
        assert_eq!(n, want, "{when}: subscribers of {ch}");
    }
    // Classic: two patterns per node, on its tag (every client id of a
    // node starts with it; the nodes' tags differ).
    let patterns = if sharded { 0 } else { 2 };
    if let Backend::Single(r) = redis {
        let n: usize = redis::cmd("PUBSUB")
            .arg("NUMPAT")
            .query_async(&mut r.client().await)
            .await
            .unwrap();
        assert_eq!(n, patterns * nodes.len(), "{when}: patterns");
        let tags: Vec<BTreeSet<&str>> = model
            .iter()
            .map(|m| m.iter().map(|s| &s.id[..8]).collect())
            .collect();
        for t in &tags {
            assert!(t.len() <= 1, "{when}: one tag per node: {t:?}");
        }
        if tags.iter().all(|t| t.len() == 1) {
            assert_ne!(tags[0], tags[1], "{when}: the nodes' tags differ");
        }
    }
    for (n, want) in nodes.iter().zip(&per_node) {
        let m = n.handle().bridge().unwrap().metrics().clone();
        assert_eq!(
            m.channels.load(Relaxed),
            (want.len() + patterns) as i64,
            "{when}"
        );
        assert_eq!(m.subscription_backlog.load(Relaxed), 0, "{when}");
    }
}

/// A small xorshift: the storm is the same on every run.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

async fn churn_leaves_exactly_the_channels_the_indexes_need(io: IoMode) {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let a = start(redis_config(io, &redis.url()));
    let b = start(redis_config(io, &redis.url()));
    churn(&a, &b, Some(&mut redis), None).await;
}

/// The same storm in sharded mode on a 3-master Redis Cluster: the masters'
/// `PUBSUB SHARDCHANNELS` against the indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_churn_leaves_exactly_the_shard_channels_the_indexes_need() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    cluster.wait_ok().await;
    let mut cfg = config(IoMode::Auto);
    cfg.redis = cluster.nodes.iter().map(|n| n.url()).collect();
    cfg.redis_cluster = true;
    cfg.redis_sharded = true;
    let a = start(cfg.clone());
    cfg.redis.rotate_left(1);
    let b = start(cfg);
    churn(&a, &b, None, Some(&cluster)).await;
}

/// Join/leave/connect/close/drop storm over nodes `a` and `b`, checked
/// three times; with `single`, Redis is also killed and restarted midway.
async fn churn(
    a: &TestServer,
    b: &TestServer,
    mut single: Option<&mut RedisServer>,
    cluster: Option<&RedisCluster>,
) {
    wait_subscribed(&a.handle()).await;
    wait_subscribed(&b.handle()).await;
    let nodes = [a, b];
    let mut model: Vec<Vec<Sim>> = vec![Vec::new(), Vec::new()];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let steps = 600;
    for step in 0..steps {
        let n = rng.below(2);
        let op = rng.below(10);
        match op {
            // Connect (and authenticate) a new client.
            0..=2 if model[n].len() < 24 => {
                let user = format!("u{}", rng.below(6));
                let (c, d) = authed(&nodes[n].url(), &user).await;
                model[n].push(Sim {
                    c,
                    id: id_of(&d),
                    user,
                    rooms: BTreeSet::new(),
                });
            }
            // Join rooms: shared names, and now and then another client's
            // id (refused: never joinable) or the client's own id (a flag,
            // no room). Neither adds a channel.
            3..=5 if !model[n].is_empty() => {
                let i = rng.below(model[n].len());
                let mut names = vec![format!("r{}", rng.below(8))];
                if rng.below(4) == 0 {
                    let m = rng.below(2);
                    if !model[m].is_empty() {
                        let j = rng.below(model[m].len());
                        names.push(model[m][j].id.clone());
                    }
                }
                let s = &mut model[n][i];
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                s.c.join(&refs).await;
                s.rooms.extend(names.into_iter().filter(|r| r.len() != 36));
            }
            // Leave one of its rooms.
            6..=7 if !model[n].is_empty() => {
                let i = rng.below(model[n].len());
                let s = &mut model[n][i];
                if let Some(r) = s.rooms.iter().nth(rng.below(s.rooms.len().max(1))).cloned() {
                    s.c.send(json!({"event":"leave","data":{"rooms":[r]}}))
                        .await;
                    s.rooms.remove(&r);
                }
            }
            // Close politely, or drop the TCP connection.
            8 if !model[n].is_empty() => {
                let i = rng.below(model[n].len());
                let s = model[n].swap_remove(i);
                s.c.close().await;
            }
            9 if !model[n].is_empty() => {
                let i = rng.below(model[n].len());
                drop(model[n].swap_remove(i));
            }
            _ => {}
        }
        if step == steps / 3 {
            let backend = match (&single, cluster) {
                (Some(r), _) => Backend::Single(r),
                (None, Some(c)) => Backend::Sharded(c),
                _ => unreachable!(),
            };
            check(&backend, &nodes, &mut model, "a third in").await;
        }
        if let Some(redis) = single.as_deref_mut() {
            if step == steps / 2 {
                // Redis goes away mid-storm; the churn goes on, and the new
                // connections subscribe the set as it is by then.
                redis.kill();
                wait_unsubscribed(&a.handle()).await;
            }
            if step == steps / 2 + 40 {
                redis.restart();
            }
        }
    }
    wait_subscribed(&a.handle()).await;
    wait_subscribed(&b.handle()).await;
    let backend = match (&single, cluster) {
        (Some(r), _) => Backend::Single(r),
        (None, Some(c)) => Backend::Sharded(c),
        _ => unreachable!(),
    };
    check(&backend, &nodes, &mut model, "after the storm").await;
    // Everyone leaves: only the fixed channels stay.
    for sims in &mut model {
        for s in sims.drain(..) {
            s.c.close().await;
        }
    }
    check(&backend, &nodes, &mut model, "all gone").await;
    let (classic, shard) = backend.lists().await;
    assert_eq!(classic.len(), 4, "{classic:?}");
    assert!(
        classic
            .iter()
            .all(|c| c == "ws:broadcast" || c.starts_with("ignis-ws:"))
    );
    assert!(shard.is_empty(), "{shard:?}");
    let m = a.handle().bridge().unwrap().metrics().clone();
    assert!(m.subscription_commands[0].load(Relaxed) > 0);
    assert!(m.subscription_commands[1].load(Relaxed) > 0);
    if single.is_some() {
        assert!(m.reconnects.load(Relaxed) >= 1);
    }
}

/// A room's messages reach a node only while one of its clients is in
/// it: with `pattern` every node hears every envelope, with `interest`
/// only the one whose client needs it.
async fn a_node_hears_only_what_its_clients_need(io: IoMode) {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = start(redis_config(io, &redis.url()));
    let mut pat = redis_config(io, &redis.url());
    pat.redis_subscribe = RedisSubscribe::Pattern;
    let p = start(pat);
    let b = start(redis_config(io, &redis.url()));
    for s in [&a, &p, &b] {
        wait_subscribed(&s.handle()).await;
    }
    let (mut ca, da) = authed_in(&a.url(), "x", &["only-a"]).await;
    let (mut cb, db) = authed(&b.url(), "y").await;
    settle_subscriptions(&[&a, &b]).await;
    let emitter = redis.emitter().await;
    for i in 0..5 {
        emitter.to_room("only-a", "e", &i, None).await.unwrap();
    }
    for i in 0..5 {
        assert_eq!(ca.recv().await, json!({"event":"e","data":i}));
    }
    emitter.broadcast("fence", &0).await.unwrap();
    assert_eq!(ca.recv().await["event"], "fence");
    assert_eq!(cb.recv().await["event"], "fence");
    let received = |s: &TestServer| -> u64 {
        let m = s.handle().bridge().unwrap().metrics().clone();
        m.envelopes_in.iter().map(|c| c.load(Relaxed)).sum()
    };
    // The fence arrives after the room's envelopes on every connection.
    until(&p.handle(), "pattern node got all six", |_| {
        received(&p) == 6
    })
    .await;
    assert_eq!(received(&a), 6, "a: its room and the broadcast");
    assert_eq!(received(&b), 1, "b: only the broadcast");
    // Redis lists exactly what the clients need (the pattern node adds
    // only ws:broadcast and its patterns).
    let mut want = vec![
        "ws:broadcast".to_string(),
        "ignis-ws:control".into(),
        "ws:room:only-a".into(),
        "ws:room:ws-default".into(),
        "ws:room:ws-notification".into(),
    ];
    for s in [&a, &p, &b] {
        want.push(format!(
            "ignis-ws:node:{}",
            s.handle().bridge().unwrap().server_id()
        ));
    }
    for user in ["x", "y"] {
        want.push(format!("ws:user:{user}"));
    }
    want.sort();
    assert_eq!(redis.channels().await, want);
    // Clients are heard through two patterns per interest node, on the
    // tag their ids start with (the pattern node has its three).
    let numpat: usize = redis::cmd("PUBSUB")
        .arg("NUMPAT")
        .query_async(&mut redis.client().await)
        .await
        .unwrap();
    assert_eq!(numpat, 2 + 2 + 3);
    // A message to a client's id finds it through its node's pattern.
    for d in [&da, &db] {
        emitter.to_client(&id_of(d), "to-id", &1).await.unwrap();
    }
    assert_eq!(ca.recv().await["event"], "to-id");
    assert_eq!(cb.recv().await["event"], "to-id");
    // A room whose name starts with the node's tag is heard through the
    // tag pattern: not subscribed a second time, delivered once.
    let tagged_room = format!("{}-chat", &id_of(&da)[..8]);
    ca.join(&[tagged_room.as_str()]).await;
    ca.sync().await;
    settle_subscriptions(&[&a]).await;
    emitter
        .to_room(&tagged_room, "once", &1, None)
        .await
        .unwrap();
    assert_eq!(ca.recv().await, json!({"event":"once","data":1}));
    expect_nothing_before_marker(&a.handle(), &mut ca, &id_of(&da)).await;
    let (_, body) = http_get(a.addr, "/metrics").await;
    assert!(
        body.contains("ignis_ws_redis_subscribed_channels 9"),
        "{body}"
    );
    assert!(
        body.contains("ignis_ws_redis_subscription_backlog 0"),
        "{body}"
    );
    assert!(
        body.contains(r#"ignis_ws_redis_subscription_changes_total{op="subscribe"} 4"#),
        "{body}"
    );
}

const KEY: &str = "cluster-api-key-0123456789";

/// Cluster-wide admin actions through `POST /api/count` and
/// `POST /api/disconnect` on one node, and through `Handle` on the other:
/// each node answers for its own share over the control channel.
async fn admin_actions_reach_every_node(io: IoMode) {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut cfg = redis_config(io, &redis.url());
    cfg.api_key = Some(KEY.into());
    let a = start(cfg);
    let b = start(redis_config(io, &redis.url()));
    for s in [&a, &b] {
        wait_subscribed(&s.handle()).await;
    }
    // The nodes know each other (their hellos).
    for s in [&a, &b] {
        let m = s.handle().bridge().unwrap().metrics().clone();
        until(&s.handle(), "two nodes known", |_| {
            m.cluster_nodes.load(Relaxed) == 2
        })
        .await;
    }
    let (mut a1, _) = authed_in(&a.url(), "alice", &["lobby"]).await;
    let (mut a2, _) = authed(&a.url(), "alice").await;
    let (mut b1, _) = authed_in(&b.url(), "alice", &["lobby"]).await;
    let (mut bob, dbob) = authed_in(&b.url(), "bob", &["lobby"]).await;
    let count = async |body: &str| {
        let (status, text) = api_post(a.addr, "/api/count", Some(KEY), body).await;
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    assert_eq!(
        count(r#"{"userId":"alice"}"#).await,
        json!({"count":3,"local":2,"nodes":2,"expectedNodes":2,"complete":true})
    );
    assert_eq!(count(r#"{"room":"lobby"}"#).await["count"], 3);
    assert_eq!(count(r#"{"room":"nowhere"}"#).await["count"], 0);
    let bob_id = id_of(&dbob);
    assert_eq!(
        count(&format!(r#"{{"clientId":"{bob_id}"}}"#)).await["count"],
        1
    );
    // Every session of alice, on both nodes, with the code asked for.
    let (status, text) = api_post(
        a.addr,
        "/api/disconnect",
        Some(KEY),
        r#"{"userId":"alice","code":4010}"#,
    )
    .await;
    assert_eq!((status, text.as_str()), (202, r#"{"ok":true,"local":2}"#));
    for c in [&mut a1, &mut a2, &mut b1] {
        assert_eq!(
            c.expect_close().await,
            (4010, "Disconnected by the server".to_string())
        );
    }
    expect_nothing_before_marker(&b.handle(), &mut bob, &bob_id).await;
    until(&b.handle(), "alice gone from b", |h| h.connections() == 1).await;
    assert_eq!(count(r#"{"userId":"alice"}"#).await["count"], 0);
    // From the library on the node without the client: 1008 by default.
    let n = a
        .handle()
        .disconnect(
            ignis_ws::handle::Who::Client(ignis_ws::ClientId::parse(&bob_id).unwrap()),
            1008,
        )
        .await
        .unwrap();
    assert_eq!(n, 0, "bob is not on a");
    assert_eq!(bob.expect_close().await.0, 1008);
    // Refused requests, each with its reason.
    let long_room = format!(r#"{{"room":"{}"}}"#, "r".repeat(513));
    for (path, key, body, want) in [
        (
            "/api/count",
            Some("wrong-key-wrong-key-wrong"),
            r#"{"room":"r"}"#,
            401,
        ),
        ("/api/count", Some(KEY), r#"{"room":"r","userId":"u"}"#, 400),
        ("/api/count", Some(KEY), r#"{"clientId":"not-an-id"}"#, 400),
        ("/api/count", Some(KEY), r#"{"room":"r","extra":1}"#, 400),
        ("/api/disconnect", Some(KEY), r#"{"room":"r"}"#, 400),
        (
            "/api/disconnect",
            Some(KEY),
            r#"{"userId":"u","code":1000}"#,
            400,
        ),
        ("/api/disconnect", Some(KEY), "not json", 400),
        ("/api/disconnect", None, r#"{"userId":"u"}"#, 401),
        ("/api/count", Some(KEY), &long_room, 400),
    ] {
        let (status, text) = api_post(a.addr, path, key, body).await;
        assert_eq!(status, want, "{path} {body}: {text}");
    }
    // B has no --api-key: no API there.
    let (status, _) = api_post(b.addr, "/api/count", Some(KEY), r#"{"room":"r"}"#).await;
    assert_eq!(status, 404);
    // Hostile control messages are dropped and counted; nothing happens.
    let (mut c, _) = authed(&b.url(), "carol").await;
    let mut r = redis.client().await;
    let before = b
        .handle()
        .bridge()
        .unwrap()
        .metrics()
        .control_dropped
        .load(Relaxed);
    let huge = format!(r#"{{"v":1,"op":"hello","from":"{}"}}"#, "x".repeat(10_000));
    for p in [
        "garbage",
        r#"{"v":1,"op":"disconnect","from":"evil","userId":"carol","code":4000}"#,
        r#"{"v":1,"op":"disconnect","from":"evil","user":"carol","code":1000}"#,
        r#"{"v":1,"op":"disconnect","from":"evil","room":"lobby","code":4000}"#,
        r#"{"v":1,"op":"explode","from":"evil"}"#,
        huge.as_str(),
    ] {
        redis_publish(&mut r, "ignis-ws:control", p.as_bytes()).await;
    }
    // A reply to a count nobody asked for is ignored.
    let node_b = format!("ignis-ws:node:{}", b.handle().bridge().unwrap().server_id());
    redis_publish(
        &mut r,
        &node_b,
        br#"{"v":1,"op":"count-reply","from":"evil","id":1,"count":99999999999}"#,
    )
    .await;
    let m = b.handle().bridge().unwrap().metrics().clone();
    until(&b.handle(), "hostile control messages dropped", |_| {
        m.control_dropped.load(Relaxed) >= before + 5
    })
    .await;
    c.sync().await;
    assert_eq!(
        b.handle()
            .count_local(ignis_ws::handle::Who::User("carol".into()))
            .await,
        1,
        "carol still connected"
    );
}

/// `PUBSUB {sub}` on every node of the cluster (each lists only its own
/// subscribers), merged.
async fn cluster_list(cluster: &RedisCluster, sub: &str) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for n in &cluster.nodes {
        let v: Vec<String> = redis::cmd("PUBSUB")
            .arg(sub)
            .query_async(&mut n.client().await)
            .await
            .unwrap();
        all.extend(v);
    }
    all
}

/// The node whose `CLUSTER MYID` serves `slot` now, and its id.
async fn slot_owner(cluster: &RedisCluster, slot: u16) -> (usize, String) {
    let mut c = cluster.nodes[0].client().await;
    let v: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut c)
        .await
        .unwrap();
    let redis::Value::Array(ranges) = v else {
        panic!("{v:?}")
    };
    for r in ranges {
        let redis::Value::Array(r) = r else { continue };
        let (redis::Value::Int(a), redis::Value::Int(b), redis::Value::Array(m)) =
            (&r[0], &r[1], &r[2])
        else {
            continue;
        };
        if (*a..=*b).contains(&i64::from(slot)) {
            let redis::Value::Int(port) = m[1] else {
                panic!()
            };
            let i = cluster
                .nodes
                .iter()
                .position(|n| i64::from(n.port) == port)
                .unwrap();
            let id: String = redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async(&mut cluster.nodes[i].client().await)
                .await
                .unwrap();
            return (i, id);
        }
    }
    panic!("slot {slot} unserved")
}

/// Sharded pub/sub on a 3-master Redis Cluster: rooms, users and clients
/// over SSUBSCRIBE on their slot's master, broadcasts classic; the exact
/// shard channels listed by the masters; a slot moved to another master
/// while subscribed (Redis unsubscribes the channel; the nodes subscribe
/// it again on the new owner, and their publishers follow MOVED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_follows_a_slot_move() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    cluster.wait_ok().await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let mut cfg = config(IoMode::Auto);
    cfg.redis = urls.clone();
    cfg.redis_cluster = true;
    cfg.redis_sharded = true;
    let a = start(cfg.clone());
    cfg.redis = vec![urls[2].clone(), urls[0].clone(), urls[1].clone()];
    let b = start(cfg);
    wait_subscribed(&a.handle()).await;
    wait_subscribed(&b.handle()).await;
    let (mut ca, da) = authed_in(&a.url(), "x", &["lobby"]).await;
    let (mut cb, db) = authed_in(&b.url(), "y", &["lobby"]).await;
    settle_subscriptions(&[&a, &b]).await;
    let mut want: BTreeSet<String> = [
        "ws:room:lobby",
        "ws:room:ws-default",
        "ws:room:ws-notification",
        "ws:user:x",
        "ws:user:y",
    ]
    .map(String::from)
    .into();
    for d in [&da, &db] {
        want.insert(format!("ws:client:{}", id_of(d)));
        want.insert(format!("ws:room:{}", id_of(d)));
    }
    assert_eq!(cluster_list(&cluster, "SHARDCHANNELS").await, want);
    let classic = cluster_list(&cluster, "CHANNELS").await;
    assert!(
        classic
            .iter()
            .all(|c| c == "ws:broadcast" || c.starts_with("ignis-ws:")),
        "{classic:?}"
    );
    // Through the cluster: a node's send, the sharded emitter.
    a.handle().send(Some("lobby"), "one", &1).unwrap();
    assert_eq!(ca.recv().await, json!({"event":"one","data":1}));
    assert_eq!(cb.recv().await, json!({"event":"one","data":1}));
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let emitter = ignis_ws::bridge::emitter::Emitter::connect_sharded(&refs)
        .await
        .unwrap();
    emitter.to_user("y", "dm", &2).await.unwrap();
    emitter.to_client(&id_of(&da), "direct", &3).await.unwrap();
    emitter.broadcast("all", &4).await.unwrap();
    assert_eq!(cb.recv().await, json!({"event":"dm","data":2}));
    assert_eq!(ca.recv().await, json!({"event":"direct","data":3}));
    assert_eq!(ca.recv().await, json!({"event":"all","data":4}));
    assert_eq!(cb.recv().await, json!({"event":"all","data":4}));
    // The emit CLI, sharded.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ignis-ws"))
        .args([
            "emit",
            "--sharded",
            "--redis",
            &urls.join(","),
            "--room",
            "lobby",
            "--event",
            "cli",
            "--data",
            "7",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ca.recv().await, json!({"event":"cli","data":7}));
    assert_eq!(cb.recv().await, json!({"event":"cli","data":7}));
    // A classic PUBLISH (Ignis on Bun, its emitter) does not reach
    // sharded subscribers: the broadcast after it comes first.
    let mut r = cluster.nodes[0].client().await;
    redis_publish(
        &mut r,
        "ws:room:lobby",
        br#"{"serverId":"emitter","type":"room","target":"lobby","event":"classic"}"#,
    )
    .await;
    emitter.broadcast("fence", &5).await.unwrap();
    assert_eq!(cb.recv().await["event"], "fence");
    assert_eq!(ca.recv().await["event"], "fence");

    // Leaving and joining again at once: our own SUNSUBSCRIBE's
    // confirmation may arrive after the re-join; it must not read as
    // Redis dropping the channel (which makes the node start over).
    let before = a
        .handle()
        .bridge()
        .unwrap()
        .metrics()
        .reconnects
        .load(Relaxed);
    for _ in 0..30 {
        ca.send(json!({"event":"leave","data":{"rooms":["lobby"]}}))
            .await;
        ca.join(&["lobby"]).await;
    }
    ca.sync().await;
    settle_subscriptions(&[&a, &b]).await;
    assert_eq!(cluster_list(&cluster, "SHARDCHANNELS").await, want);
    assert_eq!(
        a.handle()
            .bridge()
            .unwrap()
            .metrics()
            .reconnects
            .load(Relaxed),
        before,
        "no restart for our own unsubscribes"
    );
    a.handle().send(Some("lobby"), "rejoined", &0).unwrap();
    assert_eq!(ca.recv().await, json!({"event":"rejoined","data":0}));
    assert_eq!(cb.recv().await, json!({"event":"rejoined","data":0}));

    // Move the room's slot to another master.
    let slot = ignis_ws::bridge::cluster::slot(b"ws:room:lobby");
    let (from, from_id) = slot_owner(&cluster, slot).await;
    let to = (from + 1) % 3;
    let to_id: String = redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut cluster.nodes[to].client().await)
        .await
        .unwrap();
    let setslot = async |node: usize, args: &[&str]| {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(args)
            .query_async(&mut cluster.nodes[node].client().await)
            .await
            .unwrap();
    };
    setslot(to, &["IMPORTING", &from_id]).await;
    setslot(from, &["MIGRATING", &to_id]).await;
    for n in [to, from, 3 - to - from] {
        setslot(n, &["NODE", &to_id]).await;
    }
    // Both nodes subscribed the room again, on its new master.
    let new_owner = &cluster.nodes[to];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v: Vec<redis::Value> = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg("ws:room:lobby")
            .query_async(&mut new_owner.client().await)
            .await
            .unwrap();
        if v.get(1) == Some(&redis::Value::Int(2)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not resubscribed on the new owner: {v:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    settle_subscriptions(&[&a, &b]).await;
    assert_eq!(cluster_list(&cluster, "SHARDCHANNELS").await, want);
    // The publisher follows MOVED.
    a.handle().send(Some("lobby"), "moved", &6).unwrap();
    assert_eq!(ca.recv().await, json!({"event":"moved","data":6}));
    assert_eq!(cb.recv().await, json!({"event":"moved","data":6}));
    // Everyone leaves: no shard channel stays behind.
    ca.close().await;
    cb.close().await;
    until(&a.handle(), "closed", |h| h.connections() == 0).await;
    until(&b.handle(), "closed", |h| h.connections() == 0).await;
    settle_subscriptions(&[&a, &b]).await;
    assert_eq!(
        cluster_list(&cluster, "SHARDCHANNELS").await,
        BTreeSet::new()
    );
}

/// A Redis Cluster failover in sharded mode: the room's master is
/// demoted (`CLUSTER FAILOVER` on its replica); Redis unsubscribes the
/// node's shard channels there, and the node subscribes them again on the
/// new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_follows_a_cluster_failover() {
    let Some(cluster) = RedisCluster::start_with_replicas(1) else {
        return;
    };
    cluster.wait_ok().await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let mut cfg = config(IoMode::Auto);
    cfg.redis = urls.clone();
    cfg.redis_cluster = true;
    cfg.redis_sharded = true;
    let a = start(cfg);
    wait_subscribed(&a.handle()).await;
    let (mut ca, _) = authed_in(&a.url(), "x", &["lobby"]).await;
    settle_subscriptions(&[&a]).await;
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let emitter = ignis_ws::bridge::emitter::Emitter::connect_sharded(&refs)
        .await
        .unwrap();
    emitter.to_room("lobby", "before", &1, None).await.unwrap();
    assert_eq!(ca.recv().await, json!({"event":"before","data":1}));
    // The room's master and its replica.
    let slot = ignis_ws::bridge::cluster::slot(b"ws:room:lobby");
    let (master, master_id) = slot_owner(&cluster, slot).await;
    // Cluster gossip attaches the replica and its sync completes a little
    // after `cluster create` (there is no event to wait for).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let port: u16 = loop {
        let replicas: Vec<String> = redis::cmd("CLUSTER")
            .arg("REPLICAS")
            .arg(&master_id)
            .query_async(&mut cluster.nodes[master].client().await)
            .await
            .unwrap();
        let port = replicas.first().and_then(|r| {
            r.split_whitespace()
                .nth(1)
                .and_then(|a| a.split(['@', ':']).nth(1))
                .and_then(|p| p.parse::<u16>().ok())
        });
        if let Some(port) = port
            && let Some(n) = cluster.nodes.iter().find(|n| n.port == port)
        {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut n.client().await)
                .await
                .unwrap();
            if info.contains("master_link_status:up") {
                break port;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no replica in sync");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let replica = cluster.nodes.iter().position(|n| n.port == port).unwrap();
    let _: () = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query_async(&mut cluster.nodes[replica].client().await)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let v: Vec<redis::Value> = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg("ws:room:lobby")
            .query_async(&mut cluster.nodes[replica].client().await)
            .await
            .unwrap();
        if slot_owner(&cluster, slot).await.0 == replica && v.get(1) == Some(&redis::Value::Int(1))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not resubscribed on the promoted replica: {v:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    settle_subscriptions(&[&a]).await;
    emitter.to_room("lobby", "after", &2, None).await.unwrap();
    assert_eq!(ca.recv().await, json!({"event":"after","data":2}));
}

/// Two nodes on the master a Sentinel names, both in room `lobby`.
async fn sentinel_nodes(s: &RedisSentinel) -> (TestServer, TestServer, Client, Client) {
    s.wait_replica_known().await;
    let mut cfg = config(IoMode::Auto);
    cfg.redis_sentinel = vec![s.addr()];
    cfg.redis_sentinel_master = Some("mymaster".into());
    let a = start(cfg.clone());
    let b = start(cfg);
    wait_subscribed(&a.handle()).await;
    wait_subscribed(&b.handle()).await;
    let (ca, _) = authed_in(&a.url(), "x", &["lobby"]).await;
    let (cb, _) = authed_in(&b.url(), "y", &["lobby"]).await;
    settle_subscriptions(&[&a, &b]).await;
    s.master.wait_subscribers("ws:room:lobby", 2).await;
    (a, b, ca, cb)
}

/// Until both of a node's Redis connections reconnected `n` times in all
/// (a failover moves the subscriber and the publisher).
async fn reconnected(s: &TestServer, n: u64) {
    let m = s.handle().bridge().unwrap().metrics().clone();
    until(&s.handle(), "reconnected to the new master", |_| {
        m.reconnects.load(Relaxed) >= n
            && m.subscribed.load(Relaxed)
            && m.publisher_up.load(Relaxed)
    })
    .await;
}

/// A failover that leaves the old master running (`SENTINEL FAILOVER`):
/// it keeps its clients connected until Sentinel reconfigures it, so the
/// nodes must move on Sentinel's word, not on a lost connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed() {
    let Some(s) = RedisSentinel::start() else {
        return;
    };
    let (a, b, mut ca, mut cb) = sentinel_nodes(&s).await;
    a.handle().send(Some("lobby"), "before", &1).unwrap();
    assert_eq!(ca.recv().await, json!({"event":"before","data":1}));
    assert_eq!(cb.recv().await, json!({"event":"before","data":1}));
    s.failover_to(s.replica.port).await;
    // Both nodes subscribed the room again on the new master, and their
    // publishers reconnected to it.
    s.replica.wait_subscribers("ws:room:lobby", 2).await;
    reconnected(&a, 2).await;
    reconnected(&b, 2).await;
    a.handle().send(Some("lobby"), "after", &2).unwrap();
    assert_eq!(ca.recv().await, json!({"event":"after","data":2}));
    assert_eq!(cb.recv().await, json!({"event":"after","data":2}));
    // An emitter on the new master reaches both.
    let mut r = s.replica.client().await;
    redis_publish(
        &mut r,
        "ws:room:lobby",
        br#"{"serverId":"emitter","type":"room","target":"lobby","event":"e"}"#,
    )
    .await;
    assert_eq!(ca.recv_text().await, r#"{"event":"e"}"#);
    assert_eq!(cb.recv_text().await, r#"{"event":"e"}"#);
}

/// The master dies: local delivery goes on and `/health` says degraded;
/// Sentinel promotes the replica and the nodes follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_crash_is_followed() {
    let Some(mut s) = RedisSentinel::start() else {
        return;
    };
    let (a, b, mut ca, mut cb) = sentinel_nodes(&s).await;
    s.master.kill();
    wait_unsubscribed(&a.handle()).await;
    a.handle().to_room("lobby", "local", &1, &[]).unwrap();
    assert_eq!(ca.recv().await, json!({"event":"local","data":1}));
    let (_, health) = http_get(a.addr, "/health").await;
    assert!(health.contains(r#""status":"degraded""#), "{health}");
    s.wait_master(s.replica.port).await;
    s.replica.wait_subscribers("ws:room:lobby", 2).await;
    reconnected(&a, 2).await;
    reconnected(&b, 2).await;
    a.handle().send(Some("lobby"), "after", &2).unwrap();
    assert_eq!(ca.recv().await, json!({"event":"after","data":2}));
    assert_eq!(cb.recv().await, json!({"event":"after","data":2}));
    let (_, health) = http_get(a.addr, "/health").await;
    assert!(health.contains(r#""status":"ok""#), "{health}");
}

io_tests!(
    admin_actions_reach_every_node,
    churn_leaves_exactly_the_channels_the_indexes_need,
    a_node_hears_only_what_its_clients_need,
);
