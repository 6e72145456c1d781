//! The shard driven in memory with virtual time ([`MemoryDriver`]): the
//! protocol's state machine and its timers, checked in milliseconds of
//! virtual time, with no socket and no wall-clock wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::memory::MemoryDriver;
use super::{ShardCommand, ShardCtx};
use crate::auth::{AuthRequest, AuthResult, Authenticator, BoxFuture, Identity};
use crate::config::{Config, SlowClientPolicy};
use crate::delivery::{Delivery, Target, encode};
use crate::proto::frame::{Message, OpCode};

const AUTH: &str = r#"{"event":"authenticate","data":{"userId":"u1"}}"#;

fn config() -> Config {
    Config {
        room_allow: vec!["**".into()],
        auth_timeout: Duration::from_millis(5_000),
        heartbeat_interval: Duration::from_millis(30_000),
        heartbeat_timeout: Duration::from_millis(90_000),
        idle_timeout: None,
        close_timeout: Duration::from_millis(2_000),
        ..Config::default()
    }
}

fn driver(config: Config) -> MemoryDriver {
    MemoryDriver::insecure(config, 16, Instant::now())
}

fn frame(text: &str) -> bytes::BytesMut {
    super::memory::client_frame(OpCode::Text, text.as_bytes())
}

/// The close code of the close frame among `msgs`, if any.
fn close_code(msgs: &[Message]) -> Option<u16> {
    msgs.iter().find_map(|m| match m {
        Message::Close(cf) => Some(cf.as_ref().map_or(1005, |c| c.code)),
        _ => None,
    })
}

fn events(texts: &[String]) -> Vec<String> {
    texts
        .iter()
        .filter_map(|t| {
            serde_json::from_str::<serde_json::Value>(t)
                .ok()
                .and_then(|v| v["event"].as_str().map(str::to_owned))
        })
        .collect()
}

/// A seeded pseudo-random source for the churn tests: `rand(n)` is in
/// `0..n`, the same sequence every run.
fn lcg(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    }
}

/// A client that authenticated (its `connected` consumed).
fn authed(d: &mut MemoryDriver) -> u32 {
    let k = d.connect(&frame(AUTH));
    assert_eq!(events(&d.texts(k)), ["connected"]);
    k
}

#[test]
fn connected_carries_id_user_and_the_virtual_wall_clock() {
    let mut d = driver(config());
    let k = d.connect(&frame(AUTH));
    let texts = d.texts(k);
    let v: serde_json::Value = serde_json::from_str(&texts[0]).unwrap();
    assert_eq!(v["event"], "connected");
    assert_eq!(v["data"]["userId"], "u1");
    assert_eq!(v["data"]["time"], "2026-01-01T00:00:00.000Z");
    let id = d.shard.conn(k).unwrap().id().to_string();
    assert_eq!(v["data"]["id"], id.as_str());
}

#[test]
fn auth_timeout_closes_4001_at_the_deadline_not_before() {
    let mut d = driver(config());
    let k = d.connect(&[]);
    d.advance(Duration::from_millis(4_900));
    assert!(d.messages(k).is_empty(), "nothing before the auth timeout");
    d.advance(Duration::from_millis(400));
    assert_eq!(close_code(&d.messages(k)), Some(4001));
    // The client never answers the close: dropped after the close timeout
    // (checked at the sweep, at most close_timeout / 2 later).
    assert!(!d.is_closed(k));
    d.advance(Duration::from_millis(3_000));
    assert!(d.is_closed(k));
}

#[test]
fn an_authenticated_client_has_no_auth_timeout() {
    let mut d = driver(config());
    let k = authed(&mut d);
    d.advance(Duration::from_secs(10));
    assert!(d.messages(k).is_empty());
    assert!(!d.is_closed(k));
}

#[test]
fn heartbeat_timeout_closes_4002_and_a_heartbeat_keeps_the_client() {
    let mut d = driver(config());
    let quiet = authed(&mut d);
    let beating = authed(&mut d);
    for _ in 0..12 {
        d.advance(Duration::from_secs(10));
        d.send_text(beating, r#"{"event":"heartbeat"}"#);
    }
    assert_eq!(close_code(&d.messages(quiet)), Some(4002));
    assert_eq!(close_code(&d.messages(beating)), None);
}

/// An authenticated client under a 60 s idle timeout.
fn idle_client() -> (MemoryDriver, u32) {
    let mut d = driver(Config {
        idle_timeout: Some(Duration::from_secs(60)),
        ..config()
    });
    let k = authed(&mut d);
    (d, k)
}

#[test]
fn idle_client_is_pinged_at_half_the_idle_timeout_then_closed() {
    let (mut d, k) = idle_client();
    d.advance(Duration::from_secs(29));
    assert!(d.messages(k).is_empty());
    d.advance(Duration::from_secs(2));
    assert!(matches!(d.messages(k).as_slice(), [Message::Ping(_)]));
    d.advance(Duration::from_secs(30));
    assert_eq!(close_code(&d.messages(k)), Some(1000));
}

#[test]
fn a_pong_resets_the_idle_clock() {
    let (mut d, k) = idle_client();
    d.advance(Duration::from_secs(31));
    assert!(matches!(d.messages(k).as_slice(), [Message::Ping(_)]));
    d.send(k, &super::memory::client_frame(OpCode::Pong, b""));
    d.advance(Duration::from_secs(45));
    assert_eq!(close_code(&d.messages(k)), None);
}

#[test]
fn close_handshake_completes_on_the_clients_reply() {
    let mut d = driver(config());
    let k = authed(&mut d);
    d.command(ShardCommand::Shutdown);
    assert_eq!(close_code(&d.messages(k)), Some(1001));
    let sock_shut = d.shard.conn(k).map(|c| c.sock().write_shut);
    assert_eq!(sock_shut, Some(true), "FIN after our close frame");
    let mut reply = bytes::BytesMut::new();
    crate::proto::frame::encode_close(&mut reply, 1001, "", Some([1, 2, 3, 4]));
    d.send(k, &reply);
    assert!(d.is_closed(k), "dropped once the reply arrived");
}

#[test]
fn a_clients_close_is_echoed_and_the_connection_ends() {
    let mut d = driver(config());
    let k = authed(&mut d);
    let mut close = bytes::BytesMut::new();
    crate::proto::frame::encode_close(&mut close, 4321, "bye", Some([1, 2, 3, 4]));
    d.send(k, &close);
    assert_eq!(close_code(&d.messages(k)), Some(4321));
    assert!(d.is_closed(k));
}

#[test]
fn fin_with_nothing_owed_drops_at_once() {
    let mut d = driver(config());
    let k = authed(&mut d);
    d.eof(k);
    assert!(d.is_closed(k));
}

/// A 4 KiB budget, two clients in room `r`, the first not reading, and
/// ten 1 KB messages to the room.
/// A shard whose clients all join room `r` and may queue 4 KiB each.
fn small_budget_room(policy: SlowClientPolicy) -> MemoryDriver {
    driver(Config {
        backpressure_limit: 4096,
        slow_client: policy,
        default_rooms: vec!["r".into()],
        ..config()
    })
}

fn flood_a_stalled_client(policy: SlowClientPolicy) -> (MemoryDriver, u32, u32) {
    let mut d = small_budget_room(policy);
    let slow = authed(&mut d);
    let fast = authed(&mut d);
    d.set_window(slow, Some(0));
    let frame = encode("m", Some(&"x".repeat(1000))).unwrap();
    for _ in 0..10 {
        d.command(ShardCommand::Deliver(Delivery {
            target: Target::Room("r".into()),
            frame: frame.clone(),
            exclude: None,
        }));
    }
    assert_eq!(d.texts(fast).len(), 10);
    (d, slow, fast)
}

#[test]
fn a_slow_client_is_closed_1008_and_the_others_get_everything() {
    let (mut d, slow, fast) = flood_a_stalled_client(SlowClientPolicy::Close);
    // The slow client reads again: only the close is left for it.
    d.set_window(slow, None);
    assert_eq!(close_code(&d.messages(slow)), Some(1008));
    d.advance(Duration::from_millis(3_000));
    assert!(d.is_closed(slow));
    assert!(!d.is_closed(fast));
}

#[test]
fn drop_policy_keeps_the_slow_client_and_delivers_what_fit() {
    let (mut d, slow, _) = flood_a_stalled_client(SlowClientPolicy::Drop);
    d.set_window(slow, None);
    let got = d.texts(slow).len();
    assert!((1..10).contains(&got), "{got} delivered");
    assert!(!d.is_closed(slow));
}

/// Deliveries to the same recipients applied as one run (the command
/// loop's burst path) leave every client with exactly what applying the
/// same batch of commands one by one does: the same frames in the same
/// order, the same slow or over-budget client closed or trimmed, the same
/// counts.
#[test]
fn a_run_of_deliveries_equals_delivering_them_one_by_one() {
    for policy in [SlowClientPolicy::Close, SlowClientPolicy::Drop] {
        for target in [Target::Room("r".into()), Target::Broadcast] {
            let setup = || {
                let mut d = small_budget_room(policy);
                let slow = authed(&mut d);
                let fast = authed(&mut d);
                let outside = authed(&mut d);
                d.command(ShardCommand::Deliver(Delivery {
                    target: Target::Client(d.shard.conn(outside).unwrap().id()),
                    frame: encode("own", Some(&"o")).unwrap(),
                    exclude: None,
                }));
                // `outside` leaves the room: only the broadcast reaches it.
                d.send(
                    outside,
                    &frame(r#"{"event":"leave","data":{"rooms":["r"]}}"#),
                );
                d.set_window(slow, Some(0));
                (d, [slow, fast, outside])
            };
            let run: Vec<Delivery> = (0..10)
                .map(|i| Delivery {
                    target: target.clone(),
                    frame: encode("m", Some(&format!("{i}{}", "x".repeat(1000)))).unwrap(),
                    exclude: None,
                })
                .collect();
            assert!(run.iter().all(|d| super::fanout::groups_with(&run[0], d)));
            let (mut one, keys) = setup();
            one.commands(run.iter().cloned().map(ShardCommand::Deliver));
            let (mut all, keys2) = setup();
            all.deliver_run(run);
            assert_eq!(keys, keys2);
            for k in keys {
                one.set_window(k, None);
                all.set_window(k, None);
                assert_eq!(
                    one.messages(k),
                    all.messages(k),
                    "{policy:?} {target:?} client {k}"
                );
                assert_eq!(one.is_closed(k), all.is_closed(k));
            }
            let m = |d: &MemoryDriver| {
                let m = &d.shard.ctx.metrics;
                (
                    m.messages_out.load(std::sync::atomic::Ordering::Relaxed),
                    m.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
                    m.frames_dropped.load(std::sync::atomic::Ordering::Relaxed),
                )
            };
            assert_eq!(m(&one), m(&all), "{policy:?} {target:?}");
        }
    }
    // Runs are only formed of deliveries with the same recipients.
    let room = |r: &str| Delivery {
        target: Target::Room(r.into()),
        frame: bytes::Bytes::new(),
        exclude: None,
    };
    use super::fanout::groups_with;
    assert!(groups_with(&room("a"), &room("a")));
    assert!(!groups_with(&room("a"), &room("b")));
    let mut excluding = room("a");
    excluding.exclude = Some(Arc::from(Vec::new()));
    assert!(!groups_with(&room("a"), &excluding));
    let own = crate::delivery::ClientId::new(0).to_string();
    assert!(!groups_with(&room(&own), &room(&own)));
}

#[test]
fn a_join_pipelined_after_authenticate_sees_the_authentication() {
    let mut d = driver(config());
    let mut wire = frame(AUTH);
    wire.extend_from_slice(&frame(r#"{"event":"join","data":{"rooms":["a"]}}"#));
    let k = d.connect(&wire);
    assert_eq!(events(&d.texts(k)), ["connected"]);
    let a = d.shard.rooms.id("a").expect("room a exists");
    assert!(d.shard.conn(k).unwrap().rooms().any(|r| r == a));
}

/// An authenticator whose answer waits for the test.
struct Waiting(std::sync::Mutex<Vec<futures_channel_like::Sender>>);

mod futures_channel_like {
    //! A one-shot answer the test gives later (no runtime needed).
    use std::sync::{Arc, Mutex};

    use crate::auth::AuthResult;

    #[derive(Clone, Default)]
    pub struct Sender(pub Arc<Mutex<Option<AuthResult>>>);
}

impl Authenticator for Waiting {
    fn authenticate(&self, _req: AuthRequest) -> BoxFuture<AuthResult> {
        let slot = futures_channel_like::Sender::default();
        self.0.lock().unwrap().push(slot.clone());
        Box::pin(std::future::poll_fn(move |_| {
            match slot.0.lock().unwrap().take() {
                Some(r) => std::task::Poll::Ready(r),
                None => std::task::Poll::Pending,
            }
        }))
    }
}

/// A one-shard context for 4 connections of `config()`, without a room
/// validator or a message hook.
fn small_ctx(wants_lifecycle: bool) -> ShardCtx {
    ShardCtx {
        index: 0,
        config: Arc::new(config()),
        metrics: Arc::default(),
        max_conns: 4,
        has_room_validator: false,
        wants_messages: false,
        wants_lifecycle,
        sessions: None,
        client_tag: None,
    }
}

/// A driver whose authenticator waits for the test to answer.
fn waiting_driver() -> (MemoryDriver, Arc<Waiting>) {
    let waiting = Arc::new(Waiting(Default::default()));
    struct Shared(Arc<Waiting>);
    impl Authenticator for Shared {
        fn authenticate(&self, req: AuthRequest) -> BoxFuture<AuthResult> {
            self.0.authenticate(req)
        }
    }
    let d = MemoryDriver::new(
        small_ctx(true),
        Arc::new(Shared(waiting.clone())),
        None,
        Arc::new(crate::hooks::NoHooks),
        Instant::now(),
    );
    (d, waiting)
}

#[test]
fn an_authenticator_that_waits_answers_later_and_messages_in_between_are_refused() {
    let (mut d, waiting) = waiting_driver();
    let k = d.connect(&frame(AUTH));
    assert_eq!(d.pending_calls(), 1);
    // While authenticating, a second authenticate is an error.
    d.send_text(k, AUTH);
    assert_eq!(events(&d.texts(k)), ["error"]);
    let slot = waiting.0.lock().unwrap()[0].clone();
    *slot.0.lock().unwrap() = Some(Ok(Some(Identity {
        user_id: Some("late".into()),
        ..Identity::default()
    })));
    d.run();
    let texts = d.texts(k);
    assert_eq!(events(&texts), ["connected"]);
    assert!(texts[0].contains("late"));
    assert_eq!(d.pending_calls(), 0);
}

#[test]
fn an_answer_for_a_client_that_left_is_dropped() {
    let mut d = driver(config());
    let k = authed(&mut d);
    let generation = d.shard.conn(k).unwrap().generation();
    d.eof(k);
    assert!(d.is_closed(k));
    d.command(ShardCommand::AuthDone {
        key: k,
        generation,
        result: Ok(Some(Identity::default())),
    });
    assert!(d.shard.is_empty());
}

#[test]
fn a_protocol_error_closes_1002_and_later_input_is_ignored() {
    let mut d = driver(config());
    let k = authed(&mut d);
    // A server-style (unmasked) frame from a client.
    let mut bad = bytes::BytesMut::new();
    crate::proto::frame::encode_frame(&mut bad, true, OpCode::Text, b"{}", None);
    d.send(k, &bad);
    assert_eq!(close_code(&d.messages(k)), Some(1002));
    d.send_text(k, r#"{"event":"heartbeat"}"#);
    assert!(d.messages(k).is_empty());
}

#[test]
fn any_data_message_counts_as_heartbeat_activity_but_pings_do_not() {
    let mut d = driver(config());
    let data = authed(&mut d);
    let pinging = authed(&mut d);
    // Every 20 s for 2 minutes: heartbeat, invalid JSON, event-less JSON
    // from one client; WebSocket pings from the other.
    let frames = [r#"{"event":"heartbeat"}"#, "not json", r#"{"x":1}"#];
    for i in 0..6 {
        d.advance(Duration::from_secs(20));
        d.send_text(data, frames[i % 3]);
        d.send(pinging, &super::memory::client_frame(OpCode::Ping, b"p"));
    }
    assert_eq!(close_code(&d.messages(data)), None);
    assert_eq!(close_code(&d.messages(pinging)), Some(4002));
}

#[test]
fn unauthenticated_clients_get_4001_never_4002() {
    let mut d = driver(Config {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(400),
        auth_timeout: Duration::from_millis(1_000),
        ..config()
    });
    let k = d.connect(&[]);
    d.advance(Duration::from_millis(1_100));
    assert_eq!(close_code(&d.messages(k)), Some(4001));
}

#[test]
fn a_slow_authenticator_gets_three_times_the_auth_timeout() {
    // `authenticate` sent at once, its answer never comes: the client is
    // closed 4001 at 3 × auth timeout, not at 1 ×.
    let (mut d, _waiting) = waiting_driver();
    let k = d.connect(&frame(AUTH));
    d.advance(Duration::from_millis(14_000));
    assert!(d.messages(k).is_empty(), "still authenticating");
    d.advance(Duration::from_millis(1_300));
    assert_eq!(close_code(&d.messages(k)), Some(4001));
}

#[test]
fn a_drain_closes_clients_spread_over_its_window_and_newcomers_at_once() {
    let mut d = driver(Config {
        drain_spread: Duration::from_secs(10),
        ..config()
    });
    let keys: Vec<u32> = (0..100).map(|_| authed(&mut d)).collect();
    let closed = |d: &mut MemoryDriver, keys: &[u32]| {
        keys.iter()
            .filter(|&&k| close_code(&d.messages(k)) == Some(1001))
            .count()
    };
    d.command(ShardCommand::Shutdown);
    let mut seen = closed(&mut d, &keys);
    assert_eq!(seen, 1, "the first client goes at once");
    for second in 1..=10u32 {
        d.advance(Duration::from_secs(1));
        seen += closed(&mut d, &keys);
        let expected = (second * 10) as usize;
        assert!(
            seen.abs_diff(expected) <= 2,
            "{seen} closed after {second} s, about {expected} expected"
        );
    }
    assert_eq!(seen, 100);
    // Upgraded while draining (accepted just before): closed at once.
    let late = d.connect(&frame(AUTH));
    assert_eq!(close_code(&d.messages(late)), Some(1001));
}

#[test]
fn a_session_past_max_sessions_per_user_is_refused_1008_until_one_ends() {
    let mut d = driver(Config {
        max_sessions_per_user: 2,
        ..config()
    });
    let a = authed(&mut d);
    let _b = authed(&mut d);
    let c = d.connect(&frame(AUTH));
    let msgs = d.messages(c);
    let texts: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(events(&texts), ["error"]);
    assert!(texts[0].contains("Too many sessions"));
    assert_eq!(close_code(&msgs), Some(1008));
    // Another user is not limited; after one of u1's sessions ends, u1
    // gets in again.
    let other = d.connect(&frame(r#"{"event":"authenticate","data":{"userId":"u2"}}"#));
    assert_eq!(events(&d.texts(other)), ["connected"]);
    d.eof(a);
    let again = d.connect(&frame(AUTH));
    assert_eq!(events(&d.texts(again)), ["connected"]);
}

/// The interest stream as (topic, on), clients by id.
fn interest(d: &mut MemoryDriver) -> Vec<(String, bool)> {
    let mut v = Vec::new();
    d.shard.poll_interest(&mut v);
    v.into_iter()
        .map(|i| {
            let t = match i.topic {
                super::Topic::Room(r) => format!("room:{r}"),
                super::Topic::User(u) => format!("user:{u}"),
                super::Topic::Client(c) => format!("client:{c}"),
            };
            (t, i.on)
        })
        .collect()
}

#[test]
fn interest_is_off_unless_tracked() {
    let mut d = driver(config());
    let k = authed(&mut d);
    d.send_text(k, r#"{"event":"join","data":{"rooms":["r"]}}"#);
    assert!(interest(&mut d).is_empty());
}

#[test]
fn interest_follows_first_and_last_members() {
    let mut d = driver(config());
    d.shard.track_interest(true);
    let a = authed(&mut d);
    let a_id = format!("client:{}", d.shard.conn(a).unwrap().id());
    let on = |t: &str| (t.to_string(), true);
    let off = |t: &str| (t.to_string(), false);
    assert_eq!(
        interest(&mut d),
        [
            on(&a_id),
            on("user:u1"),
            on("room:ws-default"),
            on("room:ws-notification")
        ]
    );
    // A second session of the same user, the same default rooms: nothing.
    let b = authed(&mut d);
    let b_id = format!("client:{}", d.shard.conn(b).unwrap().id());
    assert_eq!(interest(&mut d), [on(&b_id)]);
    d.send_text(a, r#"{"event":"join","data":{"rooms":["r"]}}"#);
    d.send_text(b, r#"{"event":"join","data":{"rooms":["r"]}}"#);
    assert_eq!(interest(&mut d), [on("room:r")]);
    d.send_text(a, r#"{"event":"leave","data":{"rooms":["r"]}}"#);
    assert!(interest(&mut d).is_empty(), "b is still in r");
    // b leaves r and joins it again: off then on, in that order.
    d.send_text(b, r#"{"event":"leave","data":{"rooms":["r"]}}"#);
    d.send_text(b, r#"{"event":"join","data":{"rooms":["r"]}}"#);
    assert_eq!(interest(&mut d), [off("room:r"), on("room:r")]);
    d.eof(a);
    d.run();
    assert_eq!(interest(&mut d), [off(&a_id)]);
    d.eof(b);
    d.run();
    let mut last = interest(&mut d);
    last.sort();
    let mut want = vec![
        off(&b_id),
        off("user:u1"),
        off("room:ws-default"),
        off("room:ws-notification"),
        off("room:r"),
    ];
    want.sort();
    assert_eq!(last, want);
}

/// Join, leave, connect and disconnect storms: the channels the interest
/// stream leaves on are exactly the shard's rooms, users and clients, and
/// each topic's changes alternate on, off, on….
#[test]
fn interest_matches_the_indexes_after_churn() {
    let mut d = driver(config());
    d.shard.track_interest(true);
    let mut held: std::collections::HashMap<String, bool> = Default::default();
    let mut keys: Vec<u32> = Vec::new();
    let mut changes = 0;
    let mut rand = lcg(0x9e37_79b9_7f4a_7c15);
    for step in 0..3000 {
        match rand(5) {
            0 if keys.len() < 14 => {
                let user = format!("u{}", rand(4));
                let auth = format!(r#"{{"event":"authenticate","data":{{"userId":"{user}"}}}}"#);
                keys.push(d.connect(&frame(&auth)));
            }
            1 if !keys.is_empty() => {
                let k = keys.swap_remove(rand(keys.len() as u64) as usize);
                d.eof(k);
            }
            2 | 3 if !keys.is_empty() => {
                let k = keys[rand(keys.len() as u64) as usize];
                let verb = if rand(2) == 0 { "join" } else { "leave" };
                let room = format!("r{}", rand(5));
                d.send_text(
                    k,
                    &format!(r#"{{"event":"{verb}","data":{{"rooms":["{room}"]}}}}"#),
                );
            }
            _ => {}
        }
        d.run();
        for (topic, on) in interest(&mut d) {
            changes += 1;
            let was = held.insert(topic.clone(), on).unwrap_or(false);
            assert_ne!(was, on, "step {step}: {topic} turned {on} twice");
        }
    }
    let held: std::collections::BTreeSet<String> = held
        .into_iter()
        .filter_map(|(t, on)| on.then_some(t))
        .collect();
    let mut want = std::collections::BTreeSet::new();
    for (_, c) in d.shard.conns() {
        want.insert(format!("client:{}", c.id()));
    }
    for u in 0..4 {
        if d.shard
            .users
            .get(&d.shard.conns, &format!("u{u}"))
            .next()
            .is_some()
        {
            want.insert(format!("user:u{u}"));
        }
    }
    for r in [
        "r0",
        "r1",
        "r2",
        "r3",
        "r4",
        "ws-default",
        "ws-notification",
    ] {
        if d.shard.rooms.id(r).is_some() {
            want.insert(format!("room:{r}"));
        }
    }
    assert_eq!(held, want);
    assert!(changes > 500, "a storm, not a breeze: {changes} changes");
}

/// Rooms under churn (joins, leaves, disconnects in a random order, so
/// members keep moving inside the rooms' member lists): every record's
/// memberships point at itself, every room lists exactly the clients whose
/// records name it, and a message to a room reaches exactly its members,
/// once each.
#[test]
fn room_members_stay_exact_through_joins_leaves_and_disconnects() {
    let mut d = MemoryDriver::insecure(config(), 64, Instant::now());
    let mut keys: Vec<u32> = Vec::new();
    // What each client joined, as the test saw it.
    let mut joined: std::collections::HashMap<u32, std::collections::BTreeSet<String>> =
        Default::default();
    let mut rand = lcg(0x2545_f491_4f6c_dd1d);
    for step in 0..4000 {
        match rand(6) {
            0 if keys.len() < 60 => {
                let k = authed(&mut d);
                keys.push(k);
                joined.insert(k, Default::default());
            }
            1 if !keys.is_empty() => {
                let k = keys.swap_remove(rand(keys.len() as u64) as usize);
                joined.remove(&k);
                d.eof(k);
            }
            2..=4 if !keys.is_empty() => {
                let k = keys[rand(keys.len() as u64) as usize];
                let room = format!("r{}", rand(3));
                let verb = if rand(2) == 0 { "join" } else { "leave" };
                d.send_text(
                    k,
                    &format!(r#"{{"event":"{verb}","data":{{"rooms":["{room}"]}}}}"#),
                );
                let set = joined.entry(k).or_default();
                if verb == "join" {
                    set.insert(room);
                } else {
                    set.remove(&room);
                }
            }
            _ => {}
        }
        d.run();
        for (k, c) in d.shard.conns() {
            for m in c.memberships() {
                let room = d.shard.rooms.by_id(m.room).expect("a listed room exists");
                assert_eq!(
                    room.members().get(m.slot as usize),
                    Some(&k),
                    "step {step}: client {k}'s membership points elsewhere"
                );
            }
        }
        for r in 0..3 {
            let name = format!("r{r}");
            let mut got: Vec<u32> = d
                .shard
                .rooms
                .get(&name)
                .map(|room| room.members().to_vec())
                .unwrap_or_default();
            got.sort_unstable();
            let mut want: Vec<u32> = keys
                .iter()
                .copied()
                .filter(|k| joined[k].contains(&name))
                .collect();
            want.sort_unstable();
            assert_eq!(got, want, "step {step}: members of {name}");
        }
    }
    for k in &keys {
        d.texts(*k);
    }
    for r in 0..3 {
        let name = format!("r{r}");
        d.command(ShardCommand::Deliver(Delivery {
            target: Target::Room(name.as_str().into()),
            frame: encode("m", Some(&name)).unwrap(),
            exclude: None,
        }));
    }
    for k in &keys {
        let got: Vec<String> = d
            .texts(*k)
            .iter()
            .filter_map(|t| {
                let v: serde_json::Value = serde_json::from_str(t).ok()?;
                (v["event"] == "m").then(|| v["data"].as_str().unwrap_or("").to_owned())
            })
            .collect();
        let want: Vec<String> = joined[k].iter().cloned().collect();
        assert_eq!(got, want, "client {k}");
    }
}

/// The user and client-id indexes hold slab keys and read the ids from the
/// records (`shard::keyed`): through random connects (several sessions per
/// user), disconnects (first, middle and last sessions) and slot reuse,
/// each user's sessions are exactly its live connections in connect
/// order, every client id finds its connection and nothing else is
/// indexed, a second `add` changes nothing, and a message to a user
/// reaches exactly its sessions, once each.
#[test]
fn user_and_client_indexes_stay_exact_through_connects_and_disconnects() {
    let mut d = MemoryDriver::insecure(config(), 64, Instant::now());
    // Live connections, the user each authenticated as, and when.
    let mut live: Vec<(u32, String, usize)> = Vec::new();
    let mut rand = lcg(0x9e37_79b9_7f4a_7c15);
    for step in 0..3000 {
        if rand(2) == 0 && live.len() < 50 {
            let user = format!("user-{}", rand(6));
            let k = d.connect(&frame(&format!(
                r#"{{"event":"authenticate","data":{{"userId":"{user}"}}}}"#
            )));
            assert_eq!(events(&d.texts(k)), ["connected"]);
            live.push((k, user, step));
            // Indexing it again, under its user or another, changes nothing.
            assert!(!d.shard.users.add(&mut d.shard.conns, "user-0", k));
        } else if !live.is_empty() {
            let (k, _, _) = live.swap_remove(rand(live.len() as u64) as usize);
            d.eof(k);
        }
        d.run();
        let mut users: std::collections::BTreeMap<&str, Vec<(usize, u32)>> = Default::default();
        for (k, u, at) in &live {
            users.entry(u).or_default().push((*at, *k));
        }
        assert_eq!(
            d.shard.users.len(),
            users.len(),
            "step {step}: distinct users"
        );
        for (u, want) in &mut users {
            let got: Vec<u32> = d.shard.users.get(&d.shard.conns, u).collect();
            want.sort_unstable();
            let want: Vec<u32> = want.iter().map(|(_, k)| *k).collect();
            assert_eq!(got, want, "step {step}: sessions of {u}, in connect order");
        }
        assert_eq!(
            d.shard.by_id.len(),
            live.len(),
            "step {step}: clients indexed"
        );
        for (k, _, _) in &live {
            let id = d.shard.conns[*k as usize].id;
            assert_eq!(
                d.shard.key_of(&id),
                Some(*k),
                "step {step}: client {k}'s id"
            );
        }
    }
    for (k, _, _) in &live {
        d.texts(*k);
    }
    d.command(ShardCommand::Deliver(Delivery {
        target: Target::User("user-3".into()),
        frame: encode("to-user", Some(&"hi")).unwrap(),
        exclude: None,
    }));
    for (k, u, _) in &live {
        let got = events(&d.texts(*k));
        let want: &[&str] = if u == "user-3" { &["to-user"] } else { &[] };
        assert_eq!(got, want, "client {k} of {u}");
    }
}

/// A connect storm whose clients authenticate as they come keeps the
/// deadline queues at about the connections still authenticating (each
/// new deadline first drops the front ones of clients that authenticated):
/// their peak is memory the storm would leave resident. An immediate
/// authenticator's answer queues no auth deadline at all.
#[test]
fn a_storm_of_clients_that_authenticate_at_once_keeps_the_deadline_queues_short() {
    let mut d = MemoryDriver::insecure(config(), 2000, Instant::now());
    for _ in 0..1000 {
        d.connect_discarding(&frame(AUTH));
        d.run();
    }
    assert!(
        d.shard.deadline_queue_len() <= 1,
        "{} deadlines queued",
        d.shard.deadline_queue_len()
    );
}

/// Clients that connect and authenticate later grow the deadline queue by
/// an entry each; once they did, `shrink_buffers` gives that capacity back
/// while the clients stay connected, and a client that never
/// authenticates still times out.
#[test]
fn queues_grown_by_a_connect_storm_shrink_once_it_is_over() {
    let mut d = MemoryDriver::insecure(config(), 2000, Instant::now());
    let keys: Vec<u32> = (0..1000).map(|_| d.connect(&[])).collect();
    // One that never authenticates keeps its deadline through the shrink.
    let lazy = d.connect(&[]);
    d.run();
    assert_eq!(d.shard.deadline_queue_len(), 1001);
    for &k in &keys {
        d.send(k, &frame(AUTH));
    }
    d.run();
    let grown = d.shard.queue_capacity();
    assert!(
        grown >= 1000,
        "the storm grew the queues to {grown} entries"
    );
    // Their connect deadlines are not due yet: the clients authenticated,
    // so they go too.
    assert!(d.shard.shrink_buffers());
    let after = d.shard.queue_capacity();
    assert!(after <= 4 * 64, "{after} of {grown} entries kept");
    assert_eq!(d.shard.deadline_queue_len(), 1, "the lazy client's");
    assert_eq!(
        d.shard.len(),
        keys.len() + 1,
        "every client is still connected"
    );
    d.advance(Duration::from_millis(5_300));
    assert_eq!(close_code(&d.messages(lazy)), Some(4001));
}

/// Hooks that count their lifecycle calls.
#[derive(Default)]
struct CountingHooks {
    calls: std::sync::atomic::AtomicUsize,
    lifecycle: bool,
}

impl crate::hooks::Hooks for CountingHooks {
    fn on_open(&self, _o: crate::hooks::Opened) -> Option<BoxFuture<()>> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        None
    }
    fn on_connect(&self, _c: crate::hooks::Connected) -> Option<BoxFuture<()>> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        None
    }
    fn on_disconnect(&self, _d: crate::hooks::Disconnected) -> Option<BoxFuture<()>> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        None
    }
    fn wants_lifecycle(&self) -> bool {
        self.lifecycle
    }
}

/// Open, connect and disconnect hooks are called once each when the hooks
/// want them, and their arguments are not even built when they do not
/// (the server's default, no hooks: three strings per connection saved).
#[test]
fn lifecycle_hooks_are_built_only_when_wanted() {
    for lifecycle in [true, false] {
        let hooks = Arc::new(CountingHooks {
            lifecycle,
            ..Default::default()
        });
        let mut d = MemoryDriver::new(
            small_ctx(crate::hooks::Hooks::wants_lifecycle(&*hooks)),
            Arc::new(crate::auth::insecure::InsecureAuthenticator),
            None,
            hooks.clone(),
            Instant::now(),
        );
        let k = authed(&mut d);
        d.eof(k);
        d.run();
        assert!(d.is_closed(k));
        let calls = hooks.calls.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            calls,
            if lifecycle { 3 } else { 0 },
            "lifecycle hooks wanted: {lifecycle}"
        );
    }
}
