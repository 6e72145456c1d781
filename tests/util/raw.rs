//! Raw-socket helpers shared by the tests that write frames and requests by
//! hand: authenticated and stalled raw clients, `authenticate` payloads of
//! an exact length, and `POST /api/publish` requests.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::net::TcpStream;

use super::{Raw, client_frame, text, upgrade_request};

/// The answer to a message that is not valid JSON.
pub const INVALID: &str = r#"{"event":"error","data":{"message":"Invalid message format"}}"#;

/// The `authenticate` message for `user` as written by hand (`event` first,
/// `user` not escaped).
pub fn auth_text(user: &str) -> String {
    format!(r#"{{"event":"authenticate","data":{{"userId":"{user}"}}}}"#)
}

/// An upgraded raw connection that sent `auth` (an `authenticate` message)
/// as one text frame masked with `mask`, and was answered `connected`.
pub async fn raw_authed(addr: SocketAddr, auth: &str, mask: [u8; 4]) -> Raw {
    let mut r = Raw::upgraded(addr).await;
    r.write(&client_frame(true, 0, 1, auth.as_bytes(), Some(mask)))
        .await;
    let (_, op, p) = r.read_frame().await.expect("connected");
    assert_eq!(op, 1);
    let v: Value = serde_json::from_slice(&p).unwrap();
    assert_eq!(v["event"], "connected", "{v}");
    r
}

/// `len` characters from `alphabet`, varying (so a misplaced or corrupted
/// byte shows).
pub fn pattern_of(alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|i| alphabet[(i * 7 + i / alphabet.len()) % alphabet.len()] as char)
        .collect()
}

/// An `authenticate` payload of exactly `len` bytes, written by `auth`,
/// whose user id (from `alphabet`, see [`pattern_of`]) fills it; and that
/// user id.
pub fn auth_of_len(len: usize, alphabet: &[u8], auth: fn(&str) -> String) -> (Vec<u8>, String) {
    let user = pattern_of(alphabet, len - auth("").len());
    let payload = auth(&user);
    assert_eq!(payload.len(), len);
    (payload.into_bytes(), user)
}

/// An upgraded raw client authenticated as `user` and joined to `room`,
/// with a tiny receive buffer (and TCP MSS `mss`, if given) so that it
/// stops reading without the kernel absorbing much: returns it and its id.
/// The join is sent, not awaited (see [`Raw::expect_probe_answer`]).
pub async fn stalled_client(
    addr: SocketAddr,
    user: &str,
    room: &str,
    mss: Option<u32>,
) -> (Raw, String) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    if let Some(mss) = mss {
        sock.set_tcp_mss(mss).unwrap();
    }
    sock.set_tcp_nodelay(true).unwrap();
    sock.set_nonblocking(true).unwrap();
    match sock.connect(&addr.into()) {
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        other => other.unwrap(),
    }
    let s = TcpStream::from_std(sock.into()).unwrap();
    s.writable().await.unwrap();
    if let Some(e) = s.take_error().unwrap() {
        panic!("connect: {e}");
    }
    let mut r = Raw { s, buf: Vec::new() };
    r.write(upgrade_request(addr).as_bytes()).await;
    assert!(r.read_http_head().await.starts_with("HTTP/1.1 101"));
    r.write(&text(&auth_text(user))).await;
    let (_, op, p) = r.read_frame().await.unwrap();
    assert_eq!(op, 1);
    let v: Value = serde_json::from_slice(&p).unwrap();
    let id = super::id_of(&v["data"]);
    r.write(&text(
        &serde_json::json!({"event":"join","data":{"rooms":[room]}}).to_string(),
    ))
    .await;
    (r, id)
}

impl Raw {
    /// Send invalid JSON and require the next frame to be its answer:
    /// everything sent before has been handled.
    pub async fn expect_probe_answer(&mut self) {
        self.write(&text("#probe#")).await;
        let (_, _, p) = self.read_frame().await.unwrap();
        assert_eq!(p, INVALID.as_bytes());
    }
}

/// The head of a `POST /api/publish` announcing `len` body bytes, with
/// `Authorization: Bearer KEY` if `key` is given.
pub fn publish_head(key: Option<&str>, len: usize) -> String {
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {len}\r\n\r\n"
    )
}

/// A raw connection that has sent `POST /api/publish` of `body` (see
/// [`publish_head`]); the answer is left to read.
pub async fn post_publish(addr: SocketAddr, key: Option<&str>, body: &str) -> Raw {
    let mut r = Raw::connect(addr).await;
    r.write(format!("{}{body}", publish_head(key, body.len())).as_bytes())
        .await;
    r
}

/// `POST {path}` of a JSON `body` with bearer `key`; the answer's status
/// and body.
pub async fn api_post(
    addr: SocketAddr,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, String) {
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let mut r = Raw::connect(addr).await;
    r.write(
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let all = String::from_utf8_lossy(&r.read_to_end().await).to_string();
    let status: u16 = all.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = all
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}
