//! Hostile clients (issue 6), at a scale the per-feature tests do not
//! reach: slowloris against the upgrade, a thousand clients that never
//! authenticate (and the memory they leave behind in the real binary), ten
//! thousand rooms, invalid UTF-8 and lone surrogates in room names, stalled
//! readers among many live ones, mask keys and payload lengths at every
//! boundary, and the 128 KiB message limit to the byte.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use ignis_ws::ServerBuilder;
use ignis_ws::config::{IoMode, SlowClientPolicy};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use util::binary::{Binary, rss_kib, rss_settle};
use util::*;

const M: Option<[u8; 4]> = Some([0xa1, 0xb2, 0xc3, 0xd4]);

// ---------------------------------------------------------------- helpers

/// The `authenticate` message for `user`, serialized by serde_json.
fn auth_json(user: &str) -> String {
    json!({"event":"authenticate","data":{"userId":user}}).to_string()
}

/// The next server frame must be a close with `code`, then the end of the
/// stream.
async fn expect_close_first(r: &mut Raw, code: u16, what: &str) {
    match r.read_frame().await {
        Some((_, 8, p)) => {
            assert!(p.len() >= 2, "{what}: close without a code");
            assert_eq!(u16::from_be_bytes([p[0], p[1]]), code, "{what}");
        }
        other => panic!(
            "{what}: expected close {code}, got {:?}",
            other.map(|(f, op, p)| (f, op, String::from_utf8_lossy(&p).to_string()))
        ),
    }
    let rest = r.read_to_end().await;
    assert!(rest.is_empty(), "{what}: nothing after the close frame");
}

/// The alphabet of [`pattern_of`] here: printable ASCII without a short
/// period, so a byte taken from the wrong offset shows.
const PATTERN: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_";

/// The back end a test variant runs on, for its printed figures.
fn backend(io: IoMode) -> &'static str {
    match io {
        IoMode::Epoll => "epoll",
        _ => "io_uring",
    }
}

// ---------------------------------------------------------------- 1. slowloris

const SLOWLORIS: usize = 200;

/// One slowloris connection: an upgrade request trickled one byte every
/// 100 ms, never finished. Returns how long the server kept it and what
/// it answered.
async fn trickle(
    addr: SocketAddr,
    ready: tokio::sync::mpsc::Sender<()>,
    cut_off: Arc<AtomicUsize>,
) -> (Duration, Vec<u8>) {
    let s = TcpStream::connect(addr).await.expect("tcp connect");
    s.set_nodelay(true).unwrap();
    let t0 = Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let head = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Slow: ";
    let writer = async move {
        wr.write_all(&head[..1]).await.unwrap();
        ready.send(()).await.unwrap();
        for b in head[1..].iter().chain(std::iter::repeat(&b'z')) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await
    };
    let reader = async move {
        let mut v = Vec::new();
        // A reset after the answer is a close too.
        let _ = rd.read_to_end(&mut v).await;
        cut_off.fetch_add(1, SeqCst);
        v
    };
    tokio::select! {
        v = tokio::time::timeout(WAIT, reader) => (t0.elapsed(), v.expect("cut off in time")),
        _ = writer => unreachable!(),
    }
}

async fn slowloris(io: IoMode) {
    let timeout = Duration::from_millis(2000);
    let mut cfg = config(io);
    // One shard, room for exactly the attackers and one more: a handshake
    // slot that is not given back would show as a refused connection.
    cfg.shards = 1;
    cfg.max_connections = SLOWLORIS + 1;
    cfg.handshake_timeout = timeout;
    let s = start(cfg);
    let h = s.handle();
    let cut_off = Arc::new(AtomicUsize::new(0));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(SLOWLORIS);
    let attackers: Vec<_> = (0..SLOWLORIS)
        .map(|_| tokio::spawn(trickle(s.addr, ready_tx.clone(), cut_off.clone())))
        .collect();
    drop(ready_tx);
    for _ in 0..SLOWLORIS {
        ready_rx.recv().await.expect("every attacker connected");
    }
    // A normal client is served while every attacker holds a handshake.
    let (mut c, _) = authed(&s.url(), "normal").await;
    h.broadcast("news", &"during the attack", &[]).unwrap();
    assert_eq!(
        c.recv().await,
        json!({"event":"news","data":"during the attack"})
    );
    assert_eq!(
        cut_off.load(SeqCst),
        0,
        "the normal client was served while the attack was still on"
    );
    // The attackers were accepted before the normal client (one listen
    // queue, served in order): all of them are in their upgrade now (the
    // handle's view of the /metrics gauge: no HTTP slot is left for it).
    let in_upgrade = |h: &ignis_ws::Handle| gauge(h, |m| &m.handshaking);
    assert_eq!(in_upgrade(&h), SLOWLORIS as i64);
    let (mut got_408, mut closed) = (0, 0);
    for a in attackers {
        let (held, resp) = a.await.unwrap();
        assert!(
            held >= timeout - Duration::from_millis(100),
            "cut off by the handshake timeout, not before: {held:?}"
        );
        if resp.is_empty() {
            closed += 1;
        } else {
            let resp = String::from_utf8_lossy(&resp);
            assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
            got_408 += 1;
        }
    }
    eprintln!(
        "slowloris {}: {got_408} answered 408, {closed} closed without an answer",
        backend(io)
    );
    let body = metrics(s.addr).await;
    // Only the normal client is open; the /metrics request counted itself
    // in progress while it was served.
    assert_metrics(
        &body,
        &[
            ("ignis_ws_handshake_errors_total", SLOWLORIS as i64),
            ("ignis_ws_connections", 1),
            ("ignis_ws_handshakes_in_progress", 1),
        ],
    );
    // The /metrics connection leaves its slot just after the client saw
    // the server's FIN: a gauge has no event to await.
    until(
        &h,
        "the /metrics connection's handshake slot is back",
        |h| in_upgrade(h) == 0,
    )
    .await;
    // Every handshake slot was given back: exactly SLOWLORIS more clients
    // fit beside the normal one, and the next is refused.
    let more = join_all((0..SLOWLORIS).map(|i| {
        let url = s.url();
        async move { authed(&url, &format!("after-{i}")).await.0 }
    }))
    .await;
    let mut r = Raw::connect(s.addr).await;
    r.write(upgrade_request("x").as_bytes()).await;
    let resp = String::from_utf8_lossy(&r.read_to_end().await).to_string();
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    join_all(more.into_iter().map(Client::close)).await;
    c.close().await;
    until(&h, "every connection closed", |h| h.connections() == 0).await;
    let body = wait_metric(s.addr, "ignis_ws_connections", 0).await;
    assert_eq!(metric(&body, "ignis_ws_users"), 0, "{body}");
}

// ------------------------------------------- 2. never-authenticating clients

/// `n` clients that upgrade and never send `authenticate`: each must get
/// nothing but close 4001.
async fn never_auth_round(url: &str, n: usize) {
    let closes = join_all((0..n).map(|_| {
        let url = url.to_string();
        tokio::spawn(async move { Client::connect(&url).await.first_close().await })
    }))
    .await;
    for c in closes {
        assert_eq!(c.unwrap(), (4001, "Authentication timeout".to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_authenticating_clients() {
    const N: usize = 1000;
    let srv = Binary::spawn(&[
        "--auth",
        "insecure",
        "--auth-timeout-ms",
        "1000",
        "--shards",
        "2",
        "--pin-cores",
        "false",
    ]);
    let start_rss = srv.rss_kib();
    // Warm-up round: the allocator and the shards' tables reach their
    // working size.
    never_auth_round(&srv.url(), N).await;
    let body = wait_metric(srv.addr, "ignis_ws_connections", 0).await;
    assert_eq!(
        metric_where(&body, "ignis_ws_auth_total", "timeout"),
        N as i64
    );
    let baseline = rss_settle(srv.pid, Duration::from_secs(2), None).await;
    // Second round, with the peak sampled meanwhile.
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), srv.pid);
        tokio::spawn(async move {
            while !done.load(SeqCst) {
                peak.fetch_max(rss_kib(pid), SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    never_auth_round(&srv.url(), N).await;
    let body = wait_metric(srv.addr, "ignis_ws_connections", 0).await;
    done.store(true, SeqCst);
    sampler.await.unwrap();
    assert_eq!(
        metric_where(&body, "ignis_ws_auth_total", "timeout"),
        2 * N as i64,
        "{body}"
    );
    assert_eq!(
        metric_where(&body, "ignis_ws_closes_total", "\"4001\""),
        2 * N as i64,
        "{body}"
    );
    assert_eq!(metric(&body, "ignis_ws_users"), 0, "{body}");
    let tolerance = 2048;
    let end = rss_settle(srv.pid, Duration::from_secs(5), Some(baseline + tolerance)).await;
    let peak = peak.load(SeqCst);
    eprintln!(
        "never_authenticating_clients: RSS at start {start_rss} KiB, baseline after {N} {baseline} KiB, \
         peak during {N} more {peak} KiB, after they left {end} KiB ({:+} KiB)",
        end as i64 - baseline as i64
    );
    assert!(
        end <= baseline + tolerance,
        "RSS back near the baseline: {end} KiB > {baseline} + {tolerance} KiB"
    );
    srv.stop().await;
}

// ---------------------------------------------------------- 3. many rooms

/// A server with no default rooms and room for `max_rooms_per_client`.
fn start_without_default_rooms(max_rooms_per_client: usize) -> (TestServer, ignis_ws::Handle) {
    let mut cfg = config(IoMode::Auto);
    cfg.default_rooms = vec![];
    cfg.max_rooms_per_client = max_rooms_per_client;
    let s = start(cfg);
    let h = s.handle();
    (s, h)
}

/// One client joins 10,000 rooms in batches, hears the first and the last,
/// leaves them all: the room index is empty again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rooms() {
    const ROOMS: usize = 10_000;
    let (s, h) = start_without_default_rooms(2 * ROOMS);
    let (mut c, d) = authed(&s.url(), "many").await;
    let id = id_of(&d);
    let names: Vec<String> = (0..ROOMS).map(|i| format!("room-{i:05}")).collect();
    for batch in names.chunks(1000) {
        c.send(json!({"event":"join","data":{"rooms":batch}})).await;
    }
    c.expect_silence().await;
    until(&h, "10,000 rooms in the index", |h| {
        gauge(h, |m| &m.rooms) == ROOMS as i64
    })
    .await;
    for room in [&names[ROOMS - 1], &names[0], &names[ROOMS / 2]] {
        h.to_room(room, "E", &json!(room), &[]).unwrap();
        assert_eq!(c.recv().await, json!({"event":"E","data":room}));
    }
    for batch in names.chunks(1000) {
        c.send(json!({"event":"leave","data":{"rooms":batch}}))
            .await;
    }
    c.expect_silence().await;
    until(&h, "room index empty", |h| gauge(h, |m| &m.rooms) == 0).await;
    h.to_room(&names[0], "E", &"left", &[]).unwrap();
    expect_nothing_before_marker(&h, &mut c, &id).await;
    let body = metrics(s.addr).await;
    assert_eq!(
        metric(&body, "ignis_ws_rooms_joined_total"),
        ROOMS as i64,
        "{body}"
    );
    c.close().await;
    until(&h, "client gone", |h| {
        h.connections() == 0 && gauge(h, |m| &m.users) == 0
    })
    .await;
}

/// 100 clients × 100 overlapping rooms: each hears exactly its rooms'
/// messages, in order; after leaving and closing, nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_hundred_rooms() {
    const CLIENTS: usize = 100;
    const PER: usize = 100;
    const SPACE: usize = 1000;
    let (s, h) = start_without_default_rooms(2 * PER);
    // Client i: rooms (37 i + 7 k) mod 1000 for k < 100, distinct.
    let rooms_of = |i: usize| -> Vec<usize> {
        let mut v: Vec<usize> = (0..PER).map(|k| (37 * i + 7 * k) % SPACE).collect();
        v.sort_unstable();
        v
    };
    let joined = join_all((0..CLIENTS).map(|i| {
        let url = s.url();
        let names: Vec<String> = rooms_of(i).iter().map(|r| format!("g{r}")).collect();
        async move {
            let (mut c, d) = authed(&url, &format!("u{i}")).await;
            c.send(json!({"event":"join","data":{"rooms":names}})).await;
            c.expect_silence().await;
            let shard = ignis_ws::ClientId::parse(d["id"].as_str().unwrap())
                .unwrap()
                .shard();
            (c, shard)
        }
    }))
    .await;
    // Each shard indexes the rooms of its own clients.
    let mut per_shard = vec![std::collections::BTreeSet::new(); h.shards()];
    for (i, (_, shard)) in joined.iter().enumerate() {
        per_shard[*shard].extend(rooms_of(i));
    }
    let want: usize = per_shard.iter().map(|s| s.len()).sum();
    let mut clients: Vec<Client> = joined.into_iter().map(|(c, _)| c).collect();
    until(&h, "every room indexed on its shards", |h| {
        gauge(h, |m| &m.rooms) == want as i64
    })
    .await;
    for r in 0..SPACE {
        h.to_room(&format!("g{r}"), "m", &r, &[]).unwrap();
    }
    h.broadcast("end", &0, &[]).unwrap();
    join_all(clients.iter_mut().enumerate().map(|(i, c)| async move {
        for r in rooms_of(i) {
            assert_eq!(c.recv().await, json!({"event":"m","data":r}), "client {i}");
        }
        assert_eq!(
            c.recv().await,
            json!({"event":"end","data":0}),
            "client {i}"
        );
    }))
    .await;
    join_all(clients.iter_mut().enumerate().map(|(i, c)| async move {
        let names: Vec<String> = rooms_of(i).iter().map(|r| format!("g{r}")).collect();
        c.send(json!({"event":"leave","data":{"rooms":names}}))
            .await;
        c.expect_silence().await;
    }))
    .await;
    until(&h, "room index empty", |h| gauge(h, |m| &m.rooms) == 0).await;
    assert_eq!(gauge(&h, |m| &m.users), CLIENTS as i64);
    join_all(clients.into_iter().map(Client::close)).await;
    until(&h, "everyone gone", |h| {
        h.connections() == 0 && gauge(h, |m| &m.users) == 0 && gauge(h, |m| &m.rooms) == 0
    })
    .await;
}

/// The largest join under 128 KiB: 21,835 distinct 3-character names. Its
/// names are deduplicated before `--max-rooms-per-client` cuts them (a
/// pairwise scan once held the shard for ~0.7 s on this; the cost is in
/// `benches/parse.rs`, `join_rooms`): the client ends up in exactly the
/// cap's worth of rooms, the first ones it named, and keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_join_fills_only_the_cap() {
    let mut cfg = config(IoMode::Auto);
    cfg.shards = 1;
    let s = start(cfg);
    let h = s.handle();
    let (mut c, d) = authed(&s.url(), "hostile").await;
    let id = id_of(&d);
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let names: Vec<String> = A
        .iter()
        .flat_map(|a| {
            A.iter()
                .flat_map(move |b| A.iter().map(move |d| [*a, *b, *d]))
        })
        .map(|n| String::from_utf8(n.to_vec()).unwrap())
        .take(21_835) // `"abc",` each: the largest join under 128 KiB
        .collect();
    let msg = json!({"event":"join","data":{"rooms":names}}).to_string();
    assert!(msg.len() <= 128 * 1024, "{}", msg.len());
    c.send_text(&msg).await;
    c.expect_silence().await;
    // Default rooms (2) + 98 of the named ones.
    until(&h, "the join is applied", |h| gauge(h, |m| &m.rooms) == 100).await;
    h.to_room(&names[97], "E", &json!(97), &[]).unwrap();
    assert_eq!(c.recv().await, json!({"event":"E","data":97}));
    h.to_room(&names[98], "E", &json!(98), &[]).unwrap();
    h.to_room(&names[21_834], "E", &json!(0), &[]).unwrap();
    expect_nothing_before_marker(&h, &mut c, &id).await;
}

// --------------------------------------- 4. invalid UTF-8 in room names

async fn invalid_utf8_room_names(io: IoMode) {
    let s = start(config(io));
    let h = s.handle();
    let (mut watcher, _) = authed_in(&s.url(), "watcher", &["watch"]).await;
    let join_with = |bad: &[u8]| {
        let mut p = br#"{"event":"join","data":{"rooms":["fine","room-"#.to_vec();
        p.extend_from_slice(bad);
        p.extend_from_slice(br#"-x"]}}"#);
        p
    };
    let cases: [(&str, &[u8]); 7] = [
        ("lone continuation byte", b"\x80"),
        ("overlong /", b"\xc0\xaf"),
        ("surrogate encoded in UTF-8", b"\xed\xa0\x80"),
        ("above U+10FFFF", b"\xf4\x90\x80\x80"),
        ("0xFF", b"\xff"),
        ("truncated 3-byte sequence", b"\xe2\x82"),
        ("truncated 4-byte sequence", b"\xf0\x9f\x98"),
    ];
    for (what, bad) in cases {
        let p = join_with(bad);
        // In one frame.
        let mut r = raw_authed(s.addr, &auth_json("hostile"), [1, 2, 3, 4]).await;
        r.write(&client_frame(true, 0, 1, &p, M)).await;
        expect_close_first(&mut r, 1007, what).await;
        // Split in two fragments inside the bad sequence.
        let cut = p.iter().position(|b| *b >= 0x80).unwrap() + 1;
        let mut r = raw_authed(s.addr, &auth_json("hostile"), [1, 2, 3, 4]).await;
        let mut b = client_frame(false, 0, 1, &p[..cut], M);
        b.extend(client_frame(true, 0, 0, &p[cut..], M));
        r.write(&b).await;
        expect_close_first(&mut r, 1007, what).await;
        // The others never notice.
        h.to_room("watch", "still", &what, &[]).unwrap();
        assert_eq!(watcher.recv().await, json!({"event":"still","data":what}));
    }
    // The same bytes in a binary frame: no UTF-8 check at the WebSocket
    // level; the JSON parser refuses them and the connection lives on.
    let mut r = raw_authed(s.addr, &auth_json("binary"), [1, 2, 3, 4]).await;
    r.write(&client_frame(true, 0, 2, &join_with(b"\xff"), M))
        .await;
    let (_, op, p) = r.read_frame().await.unwrap();
    assert_eq!((op, p.as_slice()), (1, INVALID.as_bytes()));
    h.to_room("room-\u{fffd}-x", "E", &1, &[]).unwrap();
    h.to_room("fine", "E", &"not joined", &[]).unwrap();
    h.broadcast("after-binary", &1, &[]).unwrap();
    let (_, op, p) = r.read_frame().await.unwrap();
    assert_eq!(
        (op, String::from_utf8_lossy(&p).as_ref()),
        (1, r#"{"event":"after-binary","data":1}"#),
        "nothing of the refused join was joined"
    );
    assert_eq!(
        watcher.recv().await,
        json!({"event":"after-binary","data":1})
    );

    // JSON-escaped lone surrogates: valid UTF-8 on the wire, but no Rust
    // string can hold them.
    let (mut c, d) = authed(&s.url(), "surrogates").await;
    let id = id_of(&d);
    for rooms in [
        r#"["\ud800"]"#,
        r#"["lo\udc00ne"]"#,
        r#"["\ud800\u0041"]"#,
        r#"["\udbff\udbff"]"#,
        r#"["fine","\ud800"]"#,
    ] {
        c.send_text(&format!(r#"{{"event":"join","data":{{"rooms":{rooms}}}}}"#))
            .await;
        assert_eq!(
            c.recv_text().await,
            INVALID,
            "{rooms}: the whole message is refused as invalid JSON"
        );
    }
    // Nothing was joined: not even the valid room beside the bad one.
    h.to_room("fine", "E", &"not joined", &[]).unwrap();
    expect_nothing_before_marker(&h, &mut c, &id).await;
    // A proper surrogate pair is a real character and joins.
    c.send_text(r#"{"event":"join","data":{"rooms":["pair-\ud83d\ude00"]}}"#)
        .await;
    c.expect_silence().await;
    h.to_room("pair-\u{1f600}", "E", &"pair", &[]).unwrap();
    assert_eq!(c.recv().await, json!({"event":"E","data":"pair"}));
    // Everyone still works.
    h.broadcast("end", &2, &[]).unwrap();
    assert_eq!(c.recv().await, json!({"event":"end","data":2}));
    assert_eq!(watcher.recv().await, json!({"event":"end","data":2}));
}

// ------------------------------------ 5. stalled readers among live ones

async fn stalled_reader_among_many(io: IoMode) {
    const STALLED: usize = 50;
    const LIVE: usize = 200;
    const PER_ROUND: usize = 16;
    const MIN_ROUNDS: usize = 8; // 512 KiB to every client at least
    const MAX_ROUNDS: usize = 256; // 16 MiB per stalled reader at most
    let mut cfg = config(io);
    cfg.backpressure_limit = 64 * 1024;
    cfg.slow_client = SlowClientPolicy::Close;
    // The stalled readers are read only at the end: the server must still
    // be waiting for their close reply then.
    cfg.close_timeout = 6 * WAIT;
    let s = start(cfg);
    let h = s.handle();
    // A tiny receive buffer and a small MSS, so the server's kernel send
    // buffer (which grows with the MSS: megabytes on loopback) stays small
    // and the server's own queue fills first.
    let mut stalled = join_all((0..STALLED).map(|_| async {
        let (mut r, _) = stalled_client(s.addr, "stalled", "r", Some(1000)).await;
        r.expect_probe_answer().await;
        r
    }))
    .await;
    let mut live = join_all((0..LIVE).map(|i| {
        let url = s.url();
        async move { authed_in(&url, &format!("live-{i}"), &["r"]).await.0 }
    }))
    .await;
    let closed = || counter(&h, |m| &m.slow_clients_closed);
    // Rounds of 4 KiB room messages, at least MIN_ROUNDS and until the
    // server has closed every stalled reader (kernel buffers absorb some
    // first); the live clients read each round in full before the next.
    let pad = "s".repeat(4000);
    let mut seq = 0u64;
    let mut rounds = 0;
    while rounds < MIN_ROUNDS || closed() < (STALLED as u64) {
        assert!(
            rounds < MAX_ROUNDS,
            "stalled readers not all closed: {}",
            closed()
        );
        let first = seq;
        for _ in 0..PER_ROUND {
            h.to_room("r", "m", &json!([seq, pad]), &[]).unwrap();
            seq += 1;
        }
        join_all(live.iter_mut().map(|c| async move {
            for want in first..first + PER_ROUND as u64 {
                let m = c.recv().await;
                assert_eq!(
                    (m["event"].as_str(), m["data"][0].as_u64()),
                    (Some("m"), Some(want))
                );
            }
        }))
        .await;
        h.settle().await;
        rounds += 1;
    }
    eprintln!(
        "stalled_reader_among_many {}: {STALLED} stalled readers closed after {rounds} rounds \
         ({} KiB each); {LIVE} live clients got all {seq} messages in order",
        backend(io),
        rounds * PER_ROUND * 4
    );
    assert_eq!(closed(), STALLED as u64, "only the stalled readers");
    // Each stalled reader, reading at last, finds whole messages in order
    // and then 1008.
    join_all(stalled.iter_mut().map(|r| async move {
        let mut next = 0;
        loop {
            match r.read_frame().await {
                Some((true, 1, p)) => {
                    let v: Value = serde_json::from_slice(&p).unwrap();
                    assert_eq!(v["data"][0], next);
                    next += 1;
                }
                Some((_, 8, p)) => {
                    assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1008);
                    assert_eq!(&p[2..], b"Backpressure limit exceeded");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        r.write(&client_frame(true, 0, 8, &1008u16.to_be_bytes(), M))
            .await;
        assert!(r.read_to_end().await.is_empty());
    }))
    .await;
    until(&h, "only the live clients remain", |h| {
        h.connections() == LIVE as i64
    })
    .await;
    h.to_room("r", "end", &seq, &[]).unwrap();
    join_all(live.iter_mut().map(|c| async move {
        assert_eq!(c.recv().await, json!({"event":"end","data":seq}));
    }))
    .await;
}

// ------------------------------------------------ 6. mask keys × lengths

const LENGTHS: [usize; 20] = [
    0, 1, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 125, 126, 127, 65535, 65536,
];

/// What the server makes of a payload.
#[derive(Debug)]
enum Seen {
    /// `Invalid message format` to the client.
    Invalid,
    /// Nothing (an object without `event`).
    Silent,
    /// The message hook gets this custom event with this data.
    Hook(String, Option<Value>),
}

/// A text payload of exactly `len` bytes whose unmasking is checked byte
/// for byte: a custom event named after its length whose data fills it,
/// or for the shortest lengths an object without `event` (dropped
/// silently: any unmasking error would make it invalid JSON).
fn payload(len: usize) -> (Vec<u8>, Seen) {
    let short: Option<(&[u8], Seen)> = match len {
        0 => Some((b"", Seen::Invalid)),
        1 => Some((b"7", Seen::Invalid)),
        3 => Some((b"{ }", Seen::Silent)),
        4 => Some((b"{  }", Seen::Silent)),
        7 => Some((br#"{"a":1}"#, Seen::Silent)),
        8 => Some((br#"{"a":12}"#, Seen::Silent)),
        _ => None,
    };
    if let Some((p, seen)) = short {
        return (p.to_vec(), seen);
    }
    let name = format!("L{len}");
    let bare = format!(r#"{{"event":"{name}"}}"#).len();
    let with_data = bare + r#","data":"""#.len();
    assert!(len >= bare, "no payload shape for {len}");
    let (p, data) = if len >= with_data {
        let data = pattern_of(PATTERN, len - with_data);
        (
            format!(r#"{{"event":"{name}","data":"{data}"}}"#),
            Some(json!(data)),
        )
    } else {
        (
            format!(r#"{{"event":"{name}"{}}}"#, " ".repeat(len - bare)),
            None,
        )
    };
    assert_eq!(p.len(), len);
    (p.into_bytes(), Seen::Hook(name, data))
}

/// The next hook event that is not the open or close of a connection
/// (the previous mask's connection closes meanwhile).
async fn next_message(rx: &mut tokio::sync::mpsc::UnboundedReceiver<HookEvent>) -> HookEvent {
    loop {
        match next_hook(rx).await {
            HookEvent::Disconnect { .. } => continue,
            e => return e,
        }
    }
}

async fn mask_key_edge_cases(io: IoMode) {
    let (hooks, mut rx) = ChannelHooks::new();
    let s = start_with(ServerBuilder::new(config(io)).hooks(hooks));
    let masks: [[u8; 4]; 4] = [
        [0, 0, 0, 0],
        [0xff, 0xff, 0xff, 0xff],
        // Sign bits and carries differ per byte: a mask applied at the
        // wrong phase, or widened to a word the wrong way, shows.
        [0x80, 0x01, 0xfe, 0x7f],
        [0xa5, 0x5a, 0x3c, 0xc3],
    ];
    for mask in masks {
        let mut r = raw_authed(s.addr, &auth_json("masks"), mask).await;
        assert!(matches!(
            next_message(&mut rx).await,
            HookEvent::Connect { .. }
        ));
        // Every length back to back in one stream, so payloads start at
        // many offsets modulo 4, 8, 16 and 32 in the server's buffers ...
        let mut stream = Vec::new();
        let mut seen = Vec::new();
        for len in LENGTHS {
            let (p, s) = payload(len);
            stream.extend(client_frame(true, 0, 1, &p, Some(mask)));
            seen.push((len, s));
        }
        // ... ended by a message with an answer of its own.
        stream.extend(client_frame(
            true,
            0,
            1,
            br#"{"event":"authenticate","data":{"userId":"again"}}"#,
            Some(mask),
        ));
        // ... and written in pieces of odd sizes, so headers, mask keys and
        // payloads are cut at arbitrary points between reads.
        let mut rest = &stream[..];
        for size in [1usize, 3, 7, 2, 13, 4093, 5, 65537].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = (*size).min(rest.len());
            r.s.write_all(&rest[..n]).await.unwrap();
            rest = &rest[n..];
        }
        let mut replies = Vec::new();
        loop {
            let (_, op, p) = r.read_frame().await.expect("replies");
            assert_eq!(op, 1);
            let t = String::from_utf8(p).unwrap();
            let last = t.contains("Already authenticated");
            replies.push(t);
            if last {
                break;
            }
        }
        let invalid = seen
            .iter()
            .filter(|(_, s)| matches!(s, Seen::Invalid))
            .count();
        assert_eq!(
            replies.len(),
            invalid + 1,
            "mask {mask:02x?}: one error per invalid payload, none for the others: {replies:?}"
        );
        assert!(
            replies[..invalid].iter().all(|t| t == INVALID),
            "{replies:?}"
        );
        for (len, s) in &seen {
            if let Seen::Hook(event, data) = s {
                match next_message(&mut rx).await {
                    HookEvent::Message {
                        event: e, data: d, ..
                    } => {
                        assert_eq!((&e, &d), (event, data), "mask {mask:02x?}, length {len}");
                    }
                    other => panic!("mask {mask:02x?}, length {len}: {other:?}"),
                }
            }
        }
    }
    // Unmasked client frames, whatever their length encoding: 1002.
    for len in [0usize, 17, 125, 126, 65535, 65536] {
        let mut r = raw_authed(s.addr, &auth_json("unmasked"), [9, 9, 9, 9]).await;
        let (p, _) = payload(len);
        // The server may stop reading at the header.
        let _ = r.s.write_all(&client_frame(true, 0, 1, &p, None)).await;
        expect_close_first(&mut r, 1002, &format!("unmasked, length {len}")).await;
    }
}

// ------------------------------------------------- 7. 128 KiB to the byte

const MAX: usize = 128 * 1024;

/// `p` as a text (or binary) message in fragments of the given sizes (the
/// last takes the rest).
fn fragments(opcode: u8, p: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    for (i, n) in sizes.iter().enumerate() {
        let op = if i == 0 { opcode } else { 0 };
        out.extend(client_frame(false, 0, op, &p[at..at + n], M));
        at += n;
    }
    let op = if sizes.is_empty() { opcode } else { 0 };
    out.extend(client_frame(true, 0, op, &p[at..], M));
    out
}

async fn max_payload_boundary(io: IoMode) {
    let s = start(config(io));
    let (at_max, user) = auth_of_len(MAX, PATTERN, auth_json);
    let accepted: [(&str, Vec<u8>); 4] = [
        ("one text frame", fragments(1, &at_max, &[])),
        ("one binary frame", fragments(2, &at_max, &[])),
        (
            "text fragments",
            fragments(1, &at_max, &[1, 4093, 65536, 7]),
        ),
        // The first fragment alone is the whole budget but one byte.
        ("binary fragments", fragments(2, &at_max, &[MAX - 1])),
    ];
    for (what, bytes) in accepted {
        let mut r = Raw::upgraded(s.addr).await;
        r.write(&bytes).await;
        let (_, op, p) = r.read_frame().await.expect(what);
        assert_eq!(op, 1, "{what}");
        let v: Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["event"], "connected", "{what}");
        assert!(
            v["data"]["userId"] == user.as_str(),
            "{what}: userId echoed"
        );
    }
    let (over, _) = auth_of_len(MAX + 1, PATTERN, auth_json);
    let refused: [(&str, Vec<u8>); 5] = [
        ("one text frame", fragments(1, &over, &[])),
        ("one binary frame", fragments(2, &over, &[])),
        // The first fragment is exactly the limit; the last byte is over.
        (
            "text fragments, last byte over",
            fragments(1, &over, &[MAX]),
        ),
        (
            "text fragments, over in the middle",
            fragments(1, &over, &[65536, 65537]),
        ),
        (
            "binary fragments, last byte over",
            fragments(2, &over, &[3, MAX - 3]),
        ),
    ];
    let n_refused = refused.len() as i64;
    for (what, bytes) in refused {
        let mut r = Raw::upgraded(s.addr).await;
        // The server may stop reading once it has seen enough.
        let _ = r.s.write_all(&bytes).await;
        expect_close_first(&mut r, 1009, what).await;
    }
    let body = metrics(s.addr).await;
    assert_eq!(
        metric_where(&body, "ignis_ws_closes_total", "\"1009\""),
        n_refused,
        "{body}"
    );
    assert_eq!(metric_where(&body, "ignis_ws_auth_total", "accepted"), 4);
}

io_tests!(
    slowloris,
    invalid_utf8_room_names,
    stalled_reader_among_many,
    mask_key_edge_cases,
    max_payload_boundary,
);
