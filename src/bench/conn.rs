//! Owns the setup of one benchmark connection: bind to a source address,
//! TCP connect, TLS handshake (wss://), HTTP upgrade, `authenticate` → `connected`, `join`. This is
//! the cold path (once per connection), so it favours clear errors over
//! speed: JSON replies are parsed with serde_json here and nowhere else.
//!
//! Frames are written and read with ignis-ws's own codec in the client role
//! (`encode_frame` with a mask key, `decode_frame` refusing masked frames).

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::proto::frame::{FrameError, OpCode, Role, decode_frame, encode_frame, parse_close};

use super::tls::{Stream, TlsClient};

/// RFC 6455 §1.3's sample key; every connection may use the same one (the
/// key only proves the server speaks WebSocket) and its accept value is
/// then a constant.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// Largest upgrade response head accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest server frame during setup (the `connected` reply is ~100 bytes).
const MAX_SETUP_FRAME: usize = 1024 * 1024;

/// Why one connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bind {0}: {1}")]
    Bind(IpAddr, #[source] std::io::Error),
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    #[error("i/o during handshake: {0}")]
    Io(#[source] std::io::Error),
    #[error("connection closed during the upgrade")]
    ClosedDuringUpgrade,
    #[error("upgrade refused: HTTP {0}")]
    UpgradeStatus(u16),
    #[error("upgrade response is not valid HTTP")]
    BadResponse,
    #[error("upgrade response has a wrong Sec-WebSocket-Accept")]
    BadAccept,
    #[error("connection closed before `connected`")]
    ClosedBeforeConnected,
    #[error("authentication refused: {0}")]
    AuthRefused(String),
    #[error("server closed during authentication with {0}")]
    ClosedDuringAuth(String),
    #[error("protocol error from the server: {0}")]
    Protocol(#[from] FrameError),
    #[error("cannot sign the JWT: {0}")]
    Jwt(String),
    #[error("timed out")]
    Timeout,
}

impl ConnectError {
    /// A short class name for counting failures by kind. I/O errors keep
    /// their OS message (e.g. "Cannot assign requested address"), which is
    /// what tells a port shortage from a refused connection.
    pub fn class(&self) -> String {
        match self {
            Self::AuthRefused(_) => "authentication refused".into(),
            Self::ClosedDuringAuth(_) => "closed during authentication".into(),
            Self::UpgradeStatus(s) => format!("upgrade refused: HTTP {s}"),
            Self::Bind(_, e) => format!("bind: {e}"),
            other => other.to_string(),
        }
    }
}

/// How a connection authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    /// `token` = the user id.
    Insecure,
    /// `token` = HS256 JWT, `sub` = the user id.
    Jwt { secret: Vec<u8> },
}

/// What every connection of a worker shares.
#[derive(Debug, Clone)]
pub struct Setup {
    pub server: SocketAddr,
    pub host: String,
    pub path: String,
    pub auth: Auth,
    pub room: String,
    /// wss://: the TLS client (None: plain ws://).
    pub tls: Option<TlsClient>,
}

/// A masked client frame (cheap xorshift mask: masking exists against cache
/// poisoning by browsers, not for secrecy).
pub fn client_frame(dst: &mut BytesMut, opcode: OpCode, payload: &[u8], rng: &mut u64) {
    encode_frame(dst, true, opcode, payload, Some(next_mask(rng)));
}

/// xorshift64 step; `state` must be non-zero.
pub fn next_mask(state: &mut u64) -> [u8; 4] {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    (x as u32).to_le_bytes()
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
}

/// The `authenticate` message for `user`.
pub fn authenticate_message(auth: &Auth, user: &str) -> Result<Vec<u8>, ConnectError> {
    let token = match auth {
        Auth::Insecure => user.to_owned(),
        Auth::Jwt { secret } => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let claims = Claims {
                sub: user,
                iat: now,
                // A day: longer than any run, short enough to be harmless.
                exp: now + 86_400,
            };
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret),
            )
            .map_err(|e| ConnectError::Jwt(e.to_string()))?
        }
    };
    // Written by hand to keep the protocol's key order (event, then data).
    let token = Value::String(token).to_string();
    Ok(
        format!(r#"{{"event":"authenticate","data":{{"type":"Bearer","token":{token}}}}}"#)
            .into_bytes(),
    )
}

/// The `join` message for `room`.
pub fn join_message(room: &str) -> Vec<u8> {
    let room = Value::String(room.to_owned()).to_string();
    format!(r#"{{"event":"join","data":{{"rooms":[{room}]}}}}"#).into_bytes()
}

/// Opens one connection and brings it to "joined". Returns the stream and
/// any bytes read past the `connected` reply (normally none).
pub async fn open(
    setup: &Setup,
    source: Option<IpAddr>,
    user: &str,
    rng: &mut u64,
) -> Result<(Stream, BytesMut), ConnectError> {
    let socket = if setup.server.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(ConnectError::Connect)?;
    if let Some(ip) = source {
        // Binding first picks the source address; the port comes from that
        // address's own ephemeral range, so N can exceed one range.
        // IP_BIND_ADDRESS_NO_PORT defers the port choice to connect(), which
        // picks by the whole 4-tuple and may reuse TIME_WAIT ports (loopback
        // tcp_tw_reuse). Without it bind() reserves a port by scanning the
        // range for one no socket holds, TIME_WAIT included: right after a
        // previous 25k-connection run that took 50 s instead of 1.6 s.
        // Best effort: without the option it still works, only slower.
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        );
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| ConnectError::Bind(ip, e))?;
    }
    let stream = socket
        .connect(setup.server)
        .await
        .map_err(ConnectError::Connect)?;
    // Heartbeats and pongs are tiny; do not let Nagle hold them.
    stream.set_nodelay(true).map_err(ConnectError::Io)?;
    match &setup.tls {
        None => {
            let mut stream = stream;
            let buf = upgrade_and_join(&mut stream, setup, user, rng).await?;
            Ok((Stream::Plain(stream), buf))
        }
        Some(tls) => {
            let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(&tls.config));
            let mut stream = connector
                .connect(tls.name.clone(), stream)
                .await
                .map_err(ConnectError::Tls)?;
            let mut buf = upgrade_and_join(&mut stream, setup, user, rng).await?;
            let stream = Stream::from_tls(stream, &mut buf).map_err(ConnectError::Io)?;
            Ok((stream, buf))
        }
    }
}

/// Writes all of `bytes` and flushes (a TLS stream may hold them otherwise).
async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), ConnectError> {
    stream.write_all(bytes).await.map_err(ConnectError::Io)?;
    stream.flush().await.map_err(ConnectError::Io)
}

/// Upgrade, `authenticate` → `connected`, `join` on an open stream.
/// Returns any bytes read past the `connected` reply.
async fn upgrade_and_join<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    setup: &Setup,
    user: &str,
    rng: &mut u64,
) -> Result<BytesMut, ConnectError> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        setup.path, setup.host
    );
    send(stream, request.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(1024);
    let head_len = loop {
        if stream.read_buf(&mut buf).await.map_err(ConnectError::Io)? == 0 {
            return Err(ConnectError::ClosedDuringUpgrade);
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let code = resp.code.unwrap_or(0);
                if code != 101 {
                    return Err(ConnectError::UpgradeStatus(code));
                }
                let accept = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                    .map(|h| h.value);
                if accept != Some(WS_ACCEPT.as_bytes()) {
                    return Err(ConnectError::BadAccept);
                }
                break n;
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => {}
            _ => return Err(ConnectError::BadResponse),
        }
    };
    let _ = buf.split_to(head_len);

    let mut out = BytesMut::with_capacity(256);
    let auth = authenticate_message(&setup.auth, user)?;
    client_frame(&mut out, OpCode::Text, &auth, rng);
    send(stream, &out).await?;
    out.clear();

    // Wait for `connected`; answer pings meanwhile.
    loop {
        while let Some(frame) = decode_frame(&mut buf, Role::Client, MAX_SETUP_FRAME)? {
            match frame.opcode {
                OpCode::Text | OpCode::Binary => match auth_reply(&frame.payload) {
                    AuthReply::Connected => {
                        client_frame(&mut out, OpCode::Text, &join_message(&setup.room), rng);
                        send(stream, &out).await?;
                        return Ok(buf);
                    }
                    AuthReply::Refused(why) => return Err(ConnectError::AuthRefused(why)),
                    AuthReply::Other => {}
                },
                OpCode::Ping => {
                    client_frame(&mut out, OpCode::Pong, &frame.payload, rng);
                    send(stream, &out).await?;
                    out.clear();
                }
                OpCode::Close => {
                    let why = match parse_close(frame.payload) {
                        Ok(Some(c)) => format!("{} {}", c.code, c.reason_str()),
                        Ok(None) => "no status".into(),
                        Err(e) => e.to_string(),
                    };
                    return Err(ConnectError::ClosedDuringAuth(why));
                }
                OpCode::Pong | OpCode::Continuation => {}
            }
        }
        if stream.read_buf(&mut buf).await.map_err(ConnectError::Io)? == 0 {
            return Err(ConnectError::ClosedBeforeConnected);
        }
    }
}

enum AuthReply {
    Connected,
    Refused(String),
    Other,
}

fn auth_reply(payload: &[u8]) -> AuthReply {
    let Ok(v) = serde_json::from_slice::<Value>(payload) else {
        return AuthReply::Other;
    };
    match v.get("event").and_then(Value::as_str) {
        Some("connected") => AuthReply::Connected,
        Some("error") => AuthReply::Refused(
            v.get("data")
                .and_then(|d| d.get("message").or(Some(d)))
                .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned))
                .unwrap_or_else(|| "error".into()),
        ),
        _ => AuthReply::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_constant_matches_the_codec() {
        // The server computes the accept value with ignis-ws's handshake code.
        let resp = crate::proto::handshake::accept_response(WS_KEY);
        let text = String::from_utf8(resp).unwrap();
        assert!(text.contains(WS_ACCEPT), "{text}");
    }

    #[test]
    fn jwt_token_carries_the_user() {
        let msg = authenticate_message(
            &Auth::Jwt {
                secret: b"secret".to_vec(),
            },
            "bench-7",
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&msg).unwrap();
        let token = v["data"]["token"].as_str().unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_exp = true;
        let data = jsonwebtoken::decode::<Value>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(b"secret"),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "bench-7");
        let msg = authenticate_message(&Auth::Insecure, "bench-1").unwrap();
        assert_eq!(
            String::from_utf8(msg).unwrap(),
            r#"{"event":"authenticate","data":{"type":"Bearer","token":"bench-1"}}"#
        );
    }

    #[test]
    fn join_is_json() {
        let v: Value = serde_json::from_slice(&join_message("a\"b")).unwrap();
        assert_eq!(v["data"]["rooms"][0], "a\"b");
        assert_eq!(v["event"], "join");
    }

    #[test]
    fn auth_replies() {
        assert!(matches!(
            auth_reply(br#"{"event":"connected","data":{"id":"x","time":1}}"#),
            AuthReply::Connected
        ));
        match auth_reply(br#"{"event":"error","data":{"message":"Authentication failed"}}"#) {
            AuthReply::Refused(m) => assert_eq!(m, "Authentication failed"),
            _ => panic!("refused"),
        }
        assert!(matches!(auth_reply(b"{}"), AuthReply::Other));
        assert!(matches!(auth_reply(b"not json"), AuthReply::Other));
    }

    #[test]
    fn masks_vary() {
        let mut s = 0x9E37_79B9_7F4A_7C15;
        let a = next_mask(&mut s);
        let b = next_mask(&mut s);
        assert_ne!(a, b);
        assert_ne!(s, 0);
    }
}
