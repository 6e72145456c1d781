//! A plain WebSocket echo server (no Ignis protocol) on ignis-ws's own
//! transport: the compio runtime (io_uring, or epoll where io_uring is not
//! available), readiness plus `recv`/`send` as in `src/io/conn.rs`, the HTTP
//! upgrade of `ignis_ws::proto::handshake` and the RFC 6455 codec of
//! `ignis_ws::proto::frame`. It exists so that external conformance suites
//! can be pointed at that stack.
//!
//! Text and binary messages come back as one frame each, pings get pongs
//! with the same payload, a close frame is echoed (its code and reason), and
//! a protocol violation gets the close code the server would send
//! (1002, 1007 for invalid UTF-8, 1009 over the size limit). No extension is
//! negotiated, so Autobahn sections 12 and 13 (permessage-deflate) do not
//! apply.
//!
//! Usage:
//!
//! ```text
//! cargo run --release --example echo -- 127.0.0.1:9001
//! ```
//!
//! Autobahn|Testsuite, `fuzzingclient.json`:
//!
//! ```text
//! {
//!   "outdir": "./reports/servers",
//!   "servers": [{ "agent": "ignis-ws", "url": "ws://127.0.0.1:9001" }],
//!   "cases": ["*"],
//!   "exclude-cases": ["12.*", "13.*"],
//!   "exclude-agent-cases": {}
//! }
//! ```
//!
//! ```text
//! docker run -it --rm --net=host -v "$PWD:/config" -v "$PWD/reports:/reports" \
//!     crossbario/autobahn-testsuite \
//!     wstest -m fuzzingclient -s /config/fuzzingclient.json -o /reports
//! ```
//!
//! A self-check: `cargo test --example echo`.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use compio::runtime::fd::PollFd;
use ignis_ws::proto::close::CloseReason;
use ignis_ws::proto::frame::{Message, MessageDecoder, OpCode, Role, encode_close, encode_frame};
use ignis_ws::proto::handshake::{self, HandshakeLimits, Request};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, Shutdown};

/// Largest message accepted (Autobahn's biggest, in section 9, is 16 MiB).
const MAX_MESSAGE: usize = 64 << 20;
/// Time allowed for the HTTP upgrade request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After our close frame: how long to wait for the peer to end the stream.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read per `recv`.
const READ_CHUNK: usize = 64 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:9001")
        .parse()?;
    let listener = TcpListener::bind(addr)?;
    let rt = compio::runtime::Runtime::new()?;
    eprintln!(
        "echo: listening on ws://{} ({:?})",
        listener.local_addr()?,
        rt.driver_type()
    );
    rt.block_on(serve(listener))?;
    Ok(())
}

/// Accept connections forever, one task each.
async fn serve(listener: TcpListener) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = PollFd::new(listener)?;
    loop {
        listener.accept_ready().await?;
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    compio::runtime::spawn(async move {
                        if let Err(e) = connection(stream).await {
                            eprintln!("echo: {peer}: {e}");
                        }
                    })
                    .detach();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    eprintln!("echo: accept: {e}");
                    compio::time::sleep(Duration::from_millis(10)).await;
                    break;
                }
            }
        }
    }
}

/// One connection: the upgrade, then echo until a close or the end.
async fn connection(stream: TcpStream) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    let sock = PollFd::new(stream)?;
    let mut scratch = vec![0u8; READ_CHUNK];
    let rest = match compio::time::timeout(HANDSHAKE_TIMEOUT, upgrade(&sock, &mut scratch)).await {
        Ok(Ok(Some(rest))) => rest,
        Ok(Ok(None)) | Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
    };
    let mut input = BytesMut::from(&rest[..]);
    let mut decoder = MessageDecoder::new(Role::Server, MAX_MESSAGE);
    let mut out = BytesMut::new();
    loop {
        // Answer everything complete in the input, then write it all.
        let closing = loop {
            match decoder.decode(&mut input) {
                Ok(Some(Message::Text(p))) => encode_frame(&mut out, true, OpCode::Text, &p, None),
                Ok(Some(Message::Binary(p))) => {
                    encode_frame(&mut out, true, OpCode::Binary, &p, None);
                }
                Ok(Some(Message::Ping(p))) => encode_frame(&mut out, true, OpCode::Pong, &p, None),
                Ok(Some(Message::Pong(_))) => {}
                Ok(Some(Message::Close(Some(c)))) => {
                    // RFC 6455 §5.5.1: echo the code (and the reason).
                    encode_close(&mut out, c.code, c.reason_str(), None);
                    break true;
                }
                Ok(Some(Message::Close(None))) => {
                    encode_frame(&mut out, true, OpCode::Close, &[], None);
                    break true;
                }
                Ok(None) => break false,
                Err(e) => {
                    // Fail the connection with the server's code for it.
                    let (code, reason) = CloseReason::Frame(e).wire();
                    encode_close(&mut out, code, reason, None);
                    break true;
                }
            }
        };
        write_all(&sock, &out).await?;
        out.clear();
        if closing {
            // Nothing after a close frame is read (RFC 6455 §5.5.1, §7.1.7).
            linger(&sock, &mut scratch).await;
            return Ok(());
        }
        let n = recv(&sock, &mut scratch).await?;
        if n == 0 {
            // The stream ended without a close frame.
            return Ok(());
        }
        input.extend_from_slice(&scratch[..n]);
    }
}

/// Read the HTTP request head and answer it. `Some(rest)`: upgraded, with
/// the bytes that followed the head; `None`: answered with an error.
async fn upgrade(sock: &PollFd<TcpStream>, scratch: &mut [u8]) -> io::Result<Option<Vec<u8>>> {
    let limits = HandshakeLimits::default();
    let mut head = Vec::new();
    loop {
        let n = recv(sock, scratch).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&scratch[..n]);
        let reply = match handshake::parse_request(&head, &limits) {
            Ok(None) => continue,
            Ok(Some(Request::Upgrade { key, head_len, .. })) => {
                write_all(sock, &handshake::accept_response(key)).await?;
                return Ok(Some(head[head_len..].to_vec()));
            }
            Ok(Some(Request::Http { .. })) => handshake::http_response(
                426,
                "text/plain",
                b"WebSocket echo server\n",
                &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
            ),
            Err(e) => handshake::error_response(&e),
        };
        write_all(sock, &reply).await?;
        let _ = rustix::net::shutdown(sock, Shutdown::Write);
        return Ok(None);
    }
}

/// After our close frame: send FIN, then discard input until the peer ends
/// the stream (or the timeout), so that unread input never turns our close
/// into a reset.
async fn linger(sock: &PollFd<TcpStream>, scratch: &mut [u8]) {
    let _ = rustix::net::shutdown(sock, Shutdown::Write);
    let drain = async {
        while let Ok(n) = recv(sock, scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = compio::time::timeout(CLOSE_TIMEOUT, drain).await;
}

/// One `recv` once the socket is readable; 0 at the end of the stream.
async fn recv(sock: &PollFd<TcpStream>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::net::recv(sock, &mut *buf, RecvFlags::DONTWAIT) {
            Ok((n, _)) => return Ok(n),
            Err(Errno::AGAIN) => sock.read_ready().await?,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Write all of `data`, waiting for writability when the socket is full.
async fn write_all(sock: &PollFd<TcpStream>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::net::send(sock, data, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
            Ok(n) => data = &data[n..],
            Err(Errno::AGAIN) => sock.write_ready().await?,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tungstenite::Message as Ws;
    use tungstenite::protocol::CloseFrame;
    use tungstenite::protocol::frame::coding::CloseCode;

    /// The echo server on a free port, on its own thread.
    fn start() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = compio::runtime::Runtime::new().unwrap();
            let _ = rt.block_on(serve(listener));
        });
        addr
    }

    #[test]
    fn echoes_messages_pings_and_close_codes() {
        let addr = start();
        let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/")).unwrap();
        ws.send(Ws::text("héllo ✓")).unwrap();
        assert_eq!(ws.read().unwrap(), Ws::text("héllo ✓"));
        let big: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
        ws.send(Ws::binary(big.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Ws::binary(big));
        ws.send(Ws::Ping(b"p".to_vec().into())).unwrap();
        assert_eq!(ws.read().unwrap(), Ws::Pong(b"p".to_vec().into()));
        ws.close(Some(CloseFrame {
            code: CloseCode::from(4000),
            reason: "bye".into(),
        }))
        .unwrap();
        match ws.read().unwrap() {
            Ws::Close(Some(c)) => {
                assert_eq!(u16::from(c.code), 4000);
                assert_eq!(c.reason.as_str(), "bye");
            }
            other => panic!("expected the close echo, got {other:?}"),
        }
    }

    /// Upgrade by hand, send `frame`, return everything until the end.
    fn raw_exchange(addr: SocketAddr, frame: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        s.write_all(frame).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let head_end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(all.starts_with(b"HTTP/1.1 101"));
        all.split_off(head_end)
    }

    #[test]
    fn protocol_errors_close_with_the_rfc_code() {
        let addr = start();
        // Unmasked client frame: 1002.
        let got = raw_exchange(addr, &[0x81, 0x02, b'h', b'i']);
        assert_eq!(&got[..4], &[0x88, got[1], 0x03, 0xea], "{got:02x?}");
        // Invalid UTF-8 (masked with a zero key): 1007.
        let got = raw_exchange(addr, &[0x81, 0x81, 0, 0, 0, 0, 0xff]);
        assert_eq!(&got[..4], &[0x88, got[1], 0x03, 0xef], "{got:02x?}");
        // Empty close: empty close back.
        let got = raw_exchange(addr, &[0x88, 0x80, 1, 2, 3, 4]);
        assert_eq!(got, [0x88, 0x00]);
    }
}
