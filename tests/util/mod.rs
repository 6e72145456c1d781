//! Shared helpers for the integration tests: start a real server on a free
//! loopback port (in-process, through the library), connect real WebSocket
//! clients (tokio-tungstenite) and raw TCP sockets.
#![allow(dead_code)] // reason: each test file uses a different subset
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

pub mod binary;
pub mod pki;
pub mod raw;
pub mod tls;

#[allow(unused_imports)] // reason: each test file uses a different subset
pub use raw::*;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ignis_ws::config::{AuthMode, Config, IoMode};
use ignis_ws::{Server, ServerBuilder};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected event may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Generate one test per I/O back end from `async fn name(io: IoMode)`.
#[macro_export]
macro_rules! io_tests {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(ignis_ws::config::IoMode::Uring).await
                }
            )*
        }
        mod epoll {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(ignis_ws::config::IoMode::Epoll).await
                }
            )*
        }
    };
}

/// A test configuration: free port, 2 shards, no pinning, insecure auth,
/// every room allowed.
pub fn config(io: IoMode) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        pin_cores: false,
        io,
        auth: AuthMode::Insecure,
        room_allow: vec!["**".into()],
        ..Config::default()
    }
}

/// A running server and its URL.
pub struct TestServer {
    pub server: Option<Server>,
    pub addr: SocketAddr,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
    pub fn handle(&self) -> ignis_ws::Handle {
        self.server.as_ref().unwrap().handle()
    }
    /// Shut down (close 1001 to everyone) off the async runtime.
    pub async fn shutdown(mut self) {
        let s = self.server.take().unwrap();
        tokio::task::spawn_blocking(move || s.shutdown())
            .await
            .unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            // Shutdown joins threads; do it off the test's runtime thread.
            std::thread::spawn(move || s.shutdown());
        }
    }
}

pub fn start(cfg: Config) -> TestServer {
    start_with(ServerBuilder::new(cfg))
}

pub fn start_with(b: ServerBuilder) -> TestServer {
    let server = b.start().expect("server starts");
    let addr = server.local_addr();
    TestServer {
        server: Some(server),
        addr,
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking the Ignis protocol.
pub struct Client {
    pub ws: Ws,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Client { ws }
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s)).await.expect("send");
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    /// The next frame of any kind (pings are answered by tungstenite).
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
            {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return Some(m),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next text message, parsed as JSON.
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Some(Message::Text(t)) => serde_json::from_str(&t).expect("JSON from the server"),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// The next text message, as the exact text sent.
    pub async fn recv_text(&mut self) -> String {
        match self.next().await {
            Some(Message::Text(t)) => t.to_string(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Authenticate as `user` (insecure auth: userId = data.userId) and
    /// return the `connected` data.
    pub async fn auth(&mut self, user: &str) -> Value {
        self.send(json!({"event":"authenticate","data":{"userId":user}}))
            .await;
        let m = self.recv().await;
        assert_eq!(m["event"], "connected", "{m}");
        m["data"].clone()
    }

    pub async fn join(&mut self, rooms: &[&str]) {
        self.send(json!({"event":"join","data":{"rooms":rooms}}))
            .await;
    }

    /// Wait until the server has handled everything this client sent: a
    /// ping's pong comes back after it (frames are read in order). Any
    /// message arriving meanwhile fails the test.
    pub async fn sync(&mut self) {
        let tag: &[u8] = b"sync";
        self.ws
            .send(Message::Ping(tag.to_vec().into()))
            .await
            .expect("send ping");
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("the pong in time")
            {
                Some(Ok(Message::Pong(p))) if &p[..] == tag => return,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected the pong, got {other:?}"),
            }
        }
    }

    /// Wait for the server's close frame; returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next().await {
                Some(Message::Close(Some(CloseFrame { code, reason }))) => {
                    return (u16::from(code), reason.to_string());
                }
                Some(Message::Close(None)) => return (1005, String::new()),
                Some(Message::Text(t)) => {
                    // Messages queued before the close still arrive first.
                    let _ = t;
                    continue;
                }
                Some(other) => panic!("expected close, got {other:?}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// The next frame, which must be a close with a code: its code and
    /// reason.
    pub async fn first_close(&mut self) -> (u16, String) {
        match self.next().await {
            Some(Message::Close(Some(CloseFrame { code, reason }))) => {
                (u16::from(code), reason.to_string())
            }
            other => panic!("expected a close as the first frame, got {other:?}"),
        }
    }

    /// Close from the client side and wait for the server's reply.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }
}

/// The client id in a `connected` message's data.
pub fn id_of(d: &Value) -> String {
    d["id"].as_str().unwrap().to_string()
}

/// Authenticated client connected to `url` as `user`: (client, connected data).
pub async fn authed(url: &str, user: &str) -> (Client, Value) {
    let mut c = Client::connect(url).await;
    let d = c.auth(user).await;
    (c, d)
}

/// [`authed`], then joined to `rooms` (handled: nothing was answered
/// before the probe of [`Client::expect_silence`]).
pub async fn authed_in(url: &str, user: &str, rooms: &[&str]) -> (Client, Value) {
    let (mut c, d) = authed(url, user).await;
    c.join(rooms).await;
    c.expect_silence().await;
    (c, d)
}

/// The request of a WebSocket upgrade on `/ws` with `Host: {host}` (the
/// key of RFC 6455's example).
pub fn upgrade_request(host: impl std::fmt::Display) -> String {
    upgrade_request_with(host, "")
}

/// [`upgrade_request`] with `extra` header lines (each ending in CRLF).
pub fn upgrade_request_with(host: impl std::fmt::Display, extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A raw TCP connection for malformed frames and HTTP.
pub struct Raw {
    pub s: TcpStream,
    pub buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).await.expect("tcp connect");
        s.set_nodelay(true).unwrap();
        Raw { s, buf: Vec::new() }
    }

    /// Connect and send an upgrade with `extra` header lines: the
    /// connection and the response head, whatever it is.
    pub async fn try_upgrade(addr: SocketAddr, extra: &str) -> (Raw, String) {
        let mut r = Raw::connect(addr).await;
        r.write(upgrade_request_with(addr, extra).as_bytes()).await;
        let head = r.read_http_head().await;
        (r, head)
    }

    /// Connect and complete the upgrade on `/ws`.
    pub async fn upgraded(addr: SocketAddr) -> Raw {
        Raw::connect(addr).await.upgrade(addr).await
    }

    /// Complete the upgrade on `/ws` over this connection.
    pub async fn upgrade(mut self, addr: SocketAddr) -> Raw {
        let r = &mut self;
        r.write(upgrade_request(addr).as_bytes()).await;
        let head = r.read_http_head().await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        self
    }

    pub async fn write(&mut self, b: &[u8]) {
        self.s.write_all(b).await.expect("write");
    }

    async fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 4096];
        match tokio::time::timeout(WAIT, self.s.read(&mut tmp))
            .await
            .expect("data in time")
        {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    /// Read an HTTP response head (and drop it from the buffer).
    pub async fn read_http_head(&mut self) -> String {
        loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..p + 4]).to_string();
                self.buf.drain(..p + 4);
                return head;
            }
            assert!(
                self.fill().await,
                "connection closed before the response head"
            );
        }
    }

    /// Read everything until the server closes the connection.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// Read one unmasked server frame: (fin, opcode, payload). None at EOF.
    pub async fn read_frame(&mut self) -> Option<(bool, u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let b0 = self.buf[0];
                let b1 = self.buf[1];
                assert_eq!(b1 & 0x80, 0, "server frames are unmasked");
                let (len, hl) = match b1 & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    n @ 0..=125 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= hl + len {
                    let payload = self.buf[hl..hl + len].to_vec();
                    self.buf.drain(..hl + len);
                    return Some((b0 & 0x80 != 0, b0 & 0x0f, payload));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Read frames until a close frame; returns its code (1005 if empty).
    pub async fn read_close(&mut self) -> u16 {
        loop {
            match self.read_frame().await {
                Some((_, 8, p)) if p.len() >= 2 => return u16::from_be_bytes([p[0], p[1]]),
                Some((_, 8, _)) => return 1005,
                Some(_) => continue,
                None => panic!("connection ended without a close frame"),
            }
        }
    }
}

/// A masked client frame built by hand (independent of our codec).
pub fn client_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | (rsv << 4) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => f.push(m | n as u8),
        n @ 126..=65535 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// The mask key of [`text`].
pub const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// A masked text frame with a fixed mask ([`MASK`]).
pub fn text(payload: &str) -> Vec<u8> {
    client_frame(true, 0, 1, payload.as_bytes(), Some(MASK))
}

/// Plain HTTP GET, returns (status line + headers, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut r = Raw::connect(addr).await;
    r.write(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    let all = r.read_to_end().await;
    let text = String::from_utf8_lossy(&all).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_string(), body.to_string())
}

impl Client {
    /// Prove that the server sent nothing since the last received frame:
    /// send invalid JSON and require the very next frame to be its error.
    pub async fn expect_silence(&mut self) {
        self.send_text("#probe#").await;
        let m = self.recv().await;
        assert_eq!(
            m,
            json!({"event":"error","data":{"message":"Invalid message format"}}),
            "an unexpected frame arrived before the probe's answer"
        );
    }
}

/// Send a marker to one client through the server and require it to be the
/// next frame that client sees: proves nothing else was delivered before.
pub async fn expect_nothing_before_marker(h: &ignis_ws::Handle, c: &mut Client, id: &str) {
    h.to_client(id, "marker", &json!(id)).unwrap();
    let m = c.recv().await;
    assert_eq!(
        m,
        json!({"event":"marker","data":id}),
        "a message arrived before the marker"
    );
}

/// Hooks that report every event on a channel.
#[derive(Clone)]
pub struct ChannelHooks {
    pub tx: tokio::sync::mpsc::UnboundedSender<HookEvent>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HookEvent {
    Open {
        client_id: String,
    },
    Connect {
        client_id: String,
        user_id: Option<String>,
        metadata: Option<Value>,
    },
    Disconnect {
        client_id: String,
        user_id: Option<String>,
    },
    Message {
        client_id: String,
        user_id: Option<String>,
        event: String,
        data: Option<Value>,
        id: Option<String>,
    },
}

impl ChannelHooks {
    pub fn new() -> (
        ChannelHooks,
        tokio::sync::mpsc::UnboundedReceiver<HookEvent>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (ChannelHooks { tx }, rx)
    }
}

impl ChannelHooks {
    /// Report `e` on the channel; no future to run.
    fn report(&self, e: HookEvent) -> Option<ignis_ws::auth::BoxFuture<()>> {
        let _ = self.tx.send(e);
        None
    }
}

impl ignis_ws::Hooks for ChannelHooks {
    fn on_open(&self, o: ignis_ws::hooks::Opened) -> Option<ignis_ws::auth::BoxFuture<()>> {
        let client_id = o.client_id;
        self.report(HookEvent::Open { client_id })
    }
    fn on_connect(&self, c: ignis_ws::hooks::Connected) -> Option<ignis_ws::auth::BoxFuture<()>> {
        let ignis_ws::hooks::Connected {
            client_id,
            user_id,
            metadata,
            ..
        } = c;
        self.report(HookEvent::Connect {
            client_id,
            user_id,
            metadata,
        })
    }
    fn on_disconnect(
        &self,
        d: ignis_ws::hooks::Disconnected,
    ) -> Option<ignis_ws::auth::BoxFuture<()>> {
        let ignis_ws::hooks::Disconnected {
            client_id, user_id, ..
        } = d;
        self.report(HookEvent::Disconnect { client_id, user_id })
    }
    fn on_message(&self, m: ignis_ws::hooks::Message) -> Option<ignis_ws::auth::BoxFuture<()>> {
        let ignis_ws::hooks::Message {
            client_id,
            user_id,
            event,
            data,
            id,
            ..
        } = m;
        self.report(HookEvent::Message {
            client_id,
            user_id,
            event,
            data,
            id,
        })
    }
}

/// Receive the next hook event in time, skipping `Open` events.
pub async fn next_hook(rx: &mut tokio::sync::mpsc::UnboundedReceiver<HookEvent>) -> HookEvent {
    loop {
        match next_hook_any(rx).await {
            HookEvent::Open { .. } => continue,
            e => return e,
        }
    }
}

/// Receive the next hook event in time, `Open` included.
pub async fn next_hook_any(rx: &mut tokio::sync::mpsc::UnboundedReceiver<HookEvent>) -> HookEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("hook event in time")
        .expect("hooks alive")
}

pub mod redis_server;

/// A test configuration on Redis `url`.
pub fn redis_config(io: IoMode, url: &str) -> Config {
    let mut c = config(io);
    c.redis = vec![url.to_string()];
    c
}

/// Wait until both Redis connections of the server are up.
pub async fn wait_subscribed(h: &ignis_ws::Handle) {
    let mut rx = h.bridge().expect("redis configured").link();
    tokio::time::timeout(WAIT, rx.wait_for(|l| l.up()))
        .await
        .expect("redis up in time")
        .unwrap();
}

/// Wait until each server's Redis subscriptions cover what its clients
/// need now (`Handle::settle_subscriptions`): a message published to
/// their rooms, users or ids from anywhere then reaches them.
pub async fn settle_subscriptions(servers: &[&TestServer]) {
    for s in servers {
        tokio::time::timeout(WAIT, s.handle().settle_subscriptions())
            .await
            .expect("subscriptions confirmed by Redis in time");
    }
}

/// Wait until the server noticed that both Redis connections are lost.
pub async fn wait_unsubscribed(h: &ignis_ws::Handle) {
    let mut rx = h.bridge().expect("redis configured").link();
    tokio::time::timeout(WAIT, rx.wait_for(|l| !l.subscribed && !l.publisher))
        .await
        .expect("loss noticed in time")
        .unwrap();
}

/// PUBLISH raw bytes on `channel`.
pub async fn redis_publish(
    conn: &mut ::redis::aio::MultiplexedConnection,
    channel: &str,
    payload: &[u8],
) {
    let _: i64 = ::redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(conn)
        .await
        .unwrap();
}

/// The flags that give `node` a global `WebSocket` (none on Node 22+,
/// `--experimental-websocket` on Node 20), where `also` (a JavaScript
/// boolean expression) holds too. Without such a node: prints why `test`
/// is skipped and returns `None` — except in CI (`CI=true`), which must
/// run it.
pub fn node_or_skip(test: &str, also: &str) -> Option<Vec<String>> {
    let check = format!("process.exit(typeof WebSocket === 'function' && ({also}) ? 0 : 3)");
    let mut why = "this node has no WebSocket API (needs Node 20.10+)".to_string();
    for flags in [vec![], vec!["--experimental-websocket".to_string()]] {
        match std::process::Command::new("node")
            .args(&flags)
            .args(["-e", &check])
            .output()
        {
            Err(e) => {
                why = format!("node not runnable: {e}");
                break;
            }
            Ok(o) if o.status.success() => return Some(flags),
            Ok(_) => continue,
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI must run {test}: {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
    None
}

/// A client script of `tests/clients/` run by `node`, printing one JSON
/// value a line.
pub struct NodeClient {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl NodeClient {
    /// Run `tests/clients/{script}` with `flags` (from [`node_or_skip`])
    /// and `args`; its stderr goes to `stderr`.
    pub fn spawn(
        flags: &[String],
        script: &str,
        args: &[&str],
        stderr: std::process::Stdio,
    ) -> NodeClient {
        Self::spawn_env(flags, script, args, &[], stderr)
    }

    /// [`NodeClient::spawn`] with environment variables.
    pub fn spawn_env(
        flags: &[String],
        script: &str,
        args: &[&str],
        env: &[(&str, &str)],
        stderr: std::process::Stdio,
    ) -> NodeClient {
        let script = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = tokio::process::Command::new("node")
            .args(flags)
            .arg(&script)
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        NodeClient { child, lines }
    }

    /// The next line the script prints, parsed as JSON.
    pub async fn next(&mut self) -> Value {
        let l = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("a line from the client");
        serde_json::from_str(&l).unwrap()
    }

    /// Wait for the script to exit.
    pub async fn wait(mut self) {
        let _ = self.child.wait().await;
    }
}

// ------------------------------------------------ /metrics and gauges

/// Sum of every sample of metric `name` (all label sets) in a Prometheus
/// text body.
pub fn metric(body: &str, name: &str) -> i64 {
    metric_where(body, name, "")
}

/// Sum of the samples of `name` whose labels contain `label`.
pub fn metric_where(body: &str, name: &str, label: &str) -> i64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
                && l.contains(label)
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
        .sum()
}

/// Assert that each metric of `want` sums to its value in `body`.
pub fn assert_metrics(body: &str, want: &[(&str, i64)]) {
    for &(name, value) in want {
        assert_eq!(metric(body, name), value, "{name}: {body}");
    }
}

/// Assert that `body` holds each of `lines`.
pub fn assert_lines(body: &str, lines: &[&str]) {
    for line in lines {
        assert!(body.contains(line), "{line}: {body}");
    }
}

/// `GET /metrics`; must answer 200.
pub async fn metrics(addr: SocketAddr) -> String {
    let (head, body) = http_get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body
}

/// Poll `/metrics` until every one of `names` sums to `want` (a gauge has
/// no event to await; the poll is bounded by WAIT).
pub async fn wait_metrics(addr: SocketAddr, names: &[&str], want: i64) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let body = metrics(addr).await;
        if names.iter().all(|n| metric(&body, n) == want) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{names:?} did not reach {want}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll `/metrics` until `name` sums to `want` (see [`wait_metrics`]).
pub async fn wait_metric(addr: SocketAddr, name: &str, want: i64) -> String {
    wait_metrics(addr, &[name], want).await
}

/// A gauge of the in-process server, summed over its shards.
pub fn gauge(
    h: &ignis_ws::Handle,
    f: fn(&ignis_ws::metrics::ShardMetrics) -> &std::sync::atomic::AtomicI64,
) -> i64 {
    sum_shards(h, f, std::sync::atomic::AtomicI64::load)
}

/// A counter of the in-process server, summed over its shards.
pub fn counter(
    h: &ignis_ws::Handle,
    f: fn(&ignis_ws::metrics::ShardMetrics) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    sum_shards(h, f, std::sync::atomic::AtomicU64::load)
}

/// `load` (relaxed) of the atomic `f` picks, summed over the shards.
fn sum_shards<A, T: std::iter::Sum>(
    h: &ignis_ws::Handle,
    f: fn(&ignis_ws::metrics::ShardMetrics) -> &A,
    load: fn(&A, std::sync::atomic::Ordering) -> T,
) -> T {
    h.metrics()
        .shards
        .iter()
        .map(|m| load(f(m), std::sync::atomic::Ordering::Relaxed))
        .sum()
}

/// Wait until `f` holds after the shards have handled everything sent so
/// far (closed connections are removed on the shard's next turn; bounded
/// by WAIT).
pub async fn until(h: &ignis_ws::Handle, what: &str, f: impl Fn(&ignis_ws::Handle) -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        h.settle().await;
        if f(h) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not reached in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An HS256 token for `sub`, signed with `secret`, valid for ten minutes.
pub fn hs256_token(secret: &str, sub: &str) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    encode(
        &Header::default(),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}
