//! Issue 14, item 3: `--max-conns-per-ip` (with `--trusted-proxies` and
//! `X-Forwarded-For`, or `--proxy-protocol`) and `--connect-rate-limit`. Real upgrades over raw
//! sockets from 127.0.0.1: past the limit 503 with `Retry-After: 1`,
//! counted; a connection that ends gives its place back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use util::{Raw, WAIT, config, metric_where, metrics};

async fn upgraded(addr: SocketAddr, extra: &str) -> Raw {
    let (r, head) = Raw::try_upgrade(addr, extra).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    r
}

fn assert_busy(head: &str) {
    assert!(
        head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{head}"
    );
    assert!(head.contains("Retry-After: 1\r\n"), "{head}");
    assert!(head.contains("Connection: close\r\n"), "{head}");
}

fn refused(m: &str, reason: &str) -> i64 {
    metric_where(
        m,
        "ignis_ws_upgrades_refused_total",
        &format!("reason=\"{reason}\""),
    )
}

/// Retry an upgrade until it is accepted (a closed connection's place
/// comes back once its shard saw the close).
async fn upgraded_eventually(addr: SocketAddr, extra: &str) -> Raw {
    let deadline = Instant::now() + WAIT;
    loop {
        let (r, head) = Raw::try_upgrade(addr, extra).await;
        if head.starts_with("HTTP/1.1 101") {
            return r;
        }
        assert_busy(&head);
        assert!(Instant::now() < deadline, "the place never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_ip_limit_get_503_until_one_ends() {
    let mut c = config(ignis_ws::config::IoMode::Auto);
    c.max_conns_per_ip = 3;
    // The header is ignored from a peer that is not a trusted proxy.
    let srv = util::start(c);
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(upgraded(srv.addr, &format!("X-Forwarded-For: 10.0.0.{i}\r\n")).await);
    }
    for _ in 0..2 {
        let (mut r, head) = Raw::try_upgrade(srv.addr, "X-Forwarded-For: 10.9.9.9\r\n").await;
        assert_busy(&head);
        assert_eq!(
            r.read_to_end().await,
            b"Too many connections, retry later\n"
        );
    }
    // Plain HTTP is not counted nor limited.
    let (head, _) = util::http_get(srv.addr, "/health").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let m = metrics(srv.addr).await;
    assert_eq!(refused(&m, "conns_per_ip"), 2, "{m}");
    // One ends (the client goes away): its place comes back, once.
    drop(open.pop());
    open.push(upgraded_eventually(srv.addr, "").await);
    let (_, head) = Raw::try_upgrade(srv.addr, "").await;
    assert_busy(&head);
    // Requests answered without upgrading (a wrong path) and connections
    // refused by the limit take no place: all 3 come back.
    drop(open);
    for _ in 0..3 {
        let mut r = Raw::connect(srv.addr).await;
        r.write(
            util::upgrade_request_with(srv.addr, "")
                .replace("/ws", "/nope")
                .as_bytes(),
        )
        .await;
        assert!(r.read_http_head().await.starts_with("HTTP/1.1 404"));
    }
    let mut again = Vec::new();
    for _ in 0..3 {
        again.push(upgraded_eventually(srv.addr, "").await);
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_counted() {
    let mut c = config(ignis_ws::config::IoMode::Auto);
    c.max_conns_per_ip = 1;
    c.trusted_proxies = vec!["127.0.0.0/8".into()];
    let srv = util::start(c);
    let _a = upgraded(srv.addr, "X-Forwarded-For: 203.0.113.1\r\n").await;
    let _b = upgraded(srv.addr, "X-Forwarded-For: 203.0.113.2\r\n").await;
    // A spoofed left part does not make a new client: the proxy's hop is
    // the rightmost untrusted one.
    let (_, head) =
        Raw::try_upgrade(srv.addr, "X-Forwarded-For: 198.51.100.7, 203.0.113.1\r\n").await;
    assert_busy(&head);
    // Trusted hops are skipped from the right.
    let (_, head) = Raw::try_upgrade(srv.addr, "X-Forwarded-For: 203.0.113.2, 127.0.0.9\r\n").await;
    assert_busy(&head);
    // Without the header: the proxy itself is the client.
    let _c = upgraded(srv.addr, "").await;
    let (_, head) = Raw::try_upgrade(srv.addr, "").await;
    assert_busy(&head);
    let m = metrics(srv.addr).await;
    assert_eq!(refused(&m, "conns_per_ip"), 3, "{m}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_past_the_connect_rate_get_503() {
    let mut c = config(ignis_ws::config::IoMode::Auto);
    c.connect_rate_limit = 5;
    let srv = util::start(c);
    let started = Instant::now();
    let (mut ok, mut busy, mut keep) = (0, 0, Vec::new());
    for _ in 0..20 {
        let (r, head) = Raw::try_upgrade(srv.addr, "").await;
        if head.starts_with("HTTP/1.1 101") {
            ok += 1;
            keep.push(r);
        } else {
            assert_busy(&head);
            busy += 1;
        }
    }
    // A bucket of 5, refilled at 5 per second while the loop ran.
    let refill = (started.elapsed().as_secs_f64() * 5.0).ceil() as i64;
    assert!(
        ok >= 5 && ok <= 5 + refill,
        "{ok} upgraded, refill {refill}"
    );
    assert_eq!(ok + busy, 20);
    // Plain HTTP takes no token.
    let m = metrics(srv.addr).await;
    assert_eq!(refused(&m, "connect_rate"), busy, "{m}");
    // The bucket refills: an upgrade gets through again (503 until then).
    let _again = upgraded_eventually(srv.addr, "").await;
    srv.shutdown().await;
}

/// A PROXY protocol v2 header: PROXY from `src` (IPv4, TCP), or LOCAL.
fn proxy_v2(src: Option<[u8; 4]>) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match src {
        Some(ip) => {
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            h.extend_from_slice(&ip);
            h.extend_from_slice(&[127, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x90]);
        }
        None => h.extend_from_slice(&[0x20, 0x00, 0, 0]),
    }
    h
}

/// An upgrade after a PROXY v2 header (written apart when `split`).
async fn proxied_upgrade(addr: SocketAddr, src: Option<[u8; 4]>, split: bool) -> (Raw, String) {
    let mut r = Raw::connect(addr).await;
    let mut bytes = proxy_v2(src);
    if split {
        r.write(&bytes).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        bytes.clear();
    }
    bytes.extend_from_slice(util::upgrade_request_with(addr, "").as_bytes());
    r.write(&bytes).await;
    let head = r.read_http_head().await;
    (r, head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_proxy_protocol_the_header_names_the_client() {
    let mut c = config(ignis_ws::config::IoMode::Auto);
    c.max_conns_per_ip = 1;
    c.proxy_protocol = true;
    let srv = util::start(c);
    let (_a, head) = proxied_upgrade(srv.addr, Some([192, 0, 2, 1]), false).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_b, head) = proxied_upgrade(srv.addr, Some([192, 0, 2, 2]), true).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, head) = proxied_upgrade(srv.addr, Some([192, 0, 2, 1]), true).await;
    assert_busy(&head);
    // LOCAL (a balancer's own connection): the TCP peer is the client.
    let (_c, head) = proxied_upgrade(srv.addr, None, false).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, head) = proxied_upgrade(srv.addr, None, false).await;
    assert_busy(&head);
    // A health check behind LOCAL is answered.
    let mut r = Raw::connect(srv.addr).await;
    let mut req = proxy_v2(None);
    req.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    r.write(&req).await;
    assert!(r.read_http_head().await.starts_with("HTTP/1.1 200"));
    // Without the header: 400, nothing read as a request.
    let (_, head) = Raw::try_upgrade(srv.addr, "").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let m = metrics_proxied(srv.addr).await;
    assert_eq!(refused(&m, "conns_per_ip"), 2, "{m}");
    srv.shutdown().await;
}

/// `/metrics` through a LOCAL PROXY header.
async fn metrics_proxied(addr: SocketAddr) -> String {
    let mut r = Raw::connect(addr).await;
    let mut req = proxy_v2(None);
    req.extend_from_slice(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    r.write(&req).await;
    String::from_utf8_lossy(&r.read_to_end().await).into_owned()
}

/// A burst of connections that reach one shard in the same turn: each
/// accepted one counts against `--max-connections` at once, before its
/// upgrade task runs, so the burst cannot overshoot the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_burst_does_not_overshoot_max_connections() {
    let mut c = config(ignis_ws::config::IoMode::Auto);
    c.shards = 1;
    c.max_connections = 5;
    let srv = util::start(c);
    let addr = srv.addr;
    let heads = futures_util::future::join_all((0..40).map(|_| Raw::try_upgrade(addr, ""))).await;
    let upgraded = heads
        .iter()
        .filter(|(_, h)| h.starts_with("HTTP/1.1 101"))
        .count();
    assert!(
        upgraded <= 5,
        "{upgraded} upgraded past --max-connections 5"
    );
    assert!(upgraded >= 1);
    for (_, h) in &heads {
        assert!(
            h.starts_with("HTTP/1.1 101") || h.starts_with("HTTP/1.1 503"),
            "{h}"
        );
    }
}

/// `--max-upgrades-in-flight`: silent connections holding every upgrade
/// slot of the shard make the accept loop wait (counted), but only for
/// its short bound: a client behind them connects and authenticates while
/// they are all still holding their slots, long before their handshake
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_holding_every_upgrade_slot_do_not_stall_accepts() {
    let mut c = config(ignis_ws::config::IoMode::Auto);
    c.shards = 1;
    c.max_upgrades_in_flight = 2;
    c.handshake_timeout = Duration::from_secs(60);
    let srv = util::start(c);
    // Each sends a first byte of its request (with `--defer-accept` the
    // kernel hands over a connection once something arrived) and no more.
    let mut silent = Vec::new();
    for _ in 0..4 {
        let mut r = Raw::connect(srv.addr).await;
        r.write(b"G").await;
        silent.push(r);
    }
    // All four accepted and in their upgrade: two past the full slots.
    let h = srv.handle();
    let upgrading = |h: &ignis_ws::Handle| util::gauge(h, |m| &m.handshaking);
    util::until(&h, "four silent connections upgrading", |h| {
        upgrading(h) == 4
    })
    .await;
    let (mut alice, d) = util::authed(&srv.url(), "alice").await;
    assert_eq!(d["userId"], "alice");
    alice.expect_silence().await;
    assert_eq!(
        upgrading(&h),
        4,
        "the silent connections should still hold their slots"
    );
    assert!(util::counter(&h, |m| &m.accept_pauses_total) >= 1);
    drop(silent);
}

/// A storm of clients through a shard that upgrades two at a time: every
/// one connects and authenticates, the pause having been used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_through_two_upgrade_slots_gets_every_client_in() {
    let mut c = config(ignis_ws::config::IoMode::Auto);
    c.shards = 1;
    c.max_upgrades_in_flight = 2;
    // Accepted before their requests arrive, so that upgrades wait in
    // tasks (with `--defer-accept` each would be upgraded as accepted).
    c.defer_accept = false;
    let srv = util::start(c);
    let url = srv.url();
    let clients = futures_util::future::join_all((0..100).map(|i| {
        let url = url.clone();
        async move { util::authed(&url, &format!("u{i}")).await }
    }))
    .await;
    for (i, (_, d)) in clients.iter().enumerate() {
        assert_eq!(d["userId"], format!("u{i}"));
    }
    let m = metrics(srv.addr).await;
    assert_eq!(
        util::metric_where(&m, "ignis_ws_connections", "state=\"authenticated\""),
        100,
        "{m}"
    );
    assert!(util::metric(&m, "ignis_ws_accept_pauses_total") >= 1, "{m}");
}

/// `--defer-accept` (the default): a connection is accepted with its
/// request, and upgraded there and then. Clients see the same answers as
/// through the upgrade task: 101 and `connected`, and what the task gives
/// a request it cannot answer at once (a head in two parts, a plain HTTP
/// request, a refused origin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_come_with_the_connection_are_upgraded_as_it_is_accepted() {
    let mut c = config(ignis_ws::config::IoMode::Auto);
    c.shards = 1;
    c.allowed_origins = vec!["https://app.example.com".into()];
    let srv = util::start(c);
    let h = srv.handle();
    let immediate = |h: &ignis_ws::Handle| util::counter(h, |m| &m.upgrades_immediate_total);
    for i in 0..5 {
        let (_c, d) = util::authed(&srv.url(), &format!("u{i}")).await;
        assert_eq!(d["userId"], format!("u{i}"));
    }
    assert_eq!(immediate(&h), 5, "each upgraded as it was accepted");

    // The head in two parts: the task reads the rest.
    let req = util::upgrade_request(srv.addr);
    let mut r = Raw::connect(srv.addr).await;
    r.write(&req.as_bytes()[..10]).await;
    util::until(&h, "a split request upgrading", |h| {
        util::gauge(h, |m| &m.handshaking) == 1
    })
    .await;
    r.write(&req.as_bytes()[10..]).await;
    let head = r.read_http_head().await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(immediate(&h), 5, "the split request went through the task");

    // A plain request is answered by the task, from what was read.
    let mut r = Raw::connect(srv.addr).await;
    r.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let health = String::from_utf8_lossy(&r.read_to_end().await).into_owned();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    // A refused upgrade (refused in the accept loop or by the task: the
    // client sees the same) gets its 403, once, and holds nothing.
    let (mut r, head) = Raw::try_upgrade(srv.addr, "Origin: https://evil.example\r\n").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let body = String::from_utf8_lossy(&r.read_to_end().await).into_owned();
    assert_eq!(
        body, "Origin not allowed\n",
        "the answer's body, then the end"
    );
    let m = metrics(srv.addr).await;
    assert_eq!(refused(&m, "origin"), 1, "{m}");
    // The /metrics request gives its slot back once its answer is out.
    util::until(&h, "no upgrade left in flight", |h| {
        util::gauge(h, |m| &m.handshaking) == 0
    })
    .await;
    assert_eq!(immediate(&h), 5);
}

/// An upgrade followed at once by the client's first frame (sent before
/// the 101 arrived): the frame is not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_with_the_request_is_read_after_an_immediate_upgrade() {
    let mut c = config(ignis_ws::config::IoMode::Auto);
    c.shards = 1;
    let srv = util::start(c);
    let mut req = util::upgrade_request(srv.addr).into_bytes();
    req.extend_from_slice(&util::client_frame(
        true,
        0,
        1,
        br#"{"event":"authenticate","data":{"token":"t","userId":"early"}}"#,
        Some([1, 2, 3, 4]),
    ));
    let mut r = Raw::connect(srv.addr).await;
    r.write(&req).await;
    let head = r.read_http_head().await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, _, payload) = r.read_frame().await.expect("connected");
    let text = String::from_utf8_lossy(&payload).into_owned();
    assert!(
        text.contains("\"connected\"") && text.contains("early"),
        "{text}"
    );
    assert_eq!(
        util::counter(&srv.handle(), |m| &m.upgrades_immediate_total),
        1
    );
}
