//! The connect floor: the least a server can do per WebSocket connection
//! in the exchange `ignis-ws bench` drives, so that the connect rate of a
//! real server can be read against what the kernel alone costs on the same
//! machine (PERFORMANCE.md, "Connect rate").
//!
//! One thread, one epoll set, level-triggered; per connection exactly the
//! system calls the exchange needs: `accept4`, `epoll_ctl`, a `recv` of the
//! upgrade request and a `send` of the 101 answer, a `recv` of the
//! `authenticate` frame and a `send` of a pre-encoded `connected` frame,
//! then `recv`s of whatever comes next (the `join`), which it ignores. No
//! authentication, no JSON, no frame parsing, no timers, no Redis: it is a
//! measuring stick, not a server, and it answers anything that sends a
//! request head and then any bytes.
//!
//! ```text
//! cargo build --release --example connect_floor
//! taskset -c 0 target/release/examples/connect_floor 127.0.0.1:9000 &
//! taskset -c 1 target/release/ignis-ws bench --url ws://127.0.0.1:9000/ws \
//!     --redis redis://127.0.0.1:6379 -c 10000 --connect-only --server-pid $!
//! ```
//!
//! A self-check: `cargo test --example connect_floor`.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};

use rustix::event::epoll;
use rustix::net::{RecvFlags, SendFlags, SocketFlags};

/// `connected` as ignis-ws sends it (same length: a UUID and a time).
const CONNECTED: &[u8] =
    br#"{"event":"connected","data":{"id":"00000000-0000-4000-8000-000000000000","time":1764147600000}}"#;
const LISTENER: u64 = u64::MAX;
/// Largest upgrade request accepted (ignis-ws's limit is 8 KiB too).
const MAX_HEAD: usize = 8192;

enum Stage {
    /// Reading the upgrade request (bytes so far).
    Upgrade(Vec<u8>),
    /// 101 sent; the next bytes are the `authenticate` frame.
    Auth,
    /// `connected` sent; everything after is ignored.
    Open,
}

struct Conn {
    fd: OwnedFd,
    stage: Stage,
}

fn main() -> io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into())
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("address: {e}")))?;
    let listener = listen(addr)?;
    eprintln!("connect_floor listening on {}", listener.local_addr()?);
    serve(listener, None)
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    // Accepted sockets inherit it, as ignis-ws's do.
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Serves until `limit` connections have come and gone (forever with None).
fn serve(listener: TcpListener, limit: Option<usize>) -> io::Result<()> {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(
        &ep,
        &listener,
        epoll::EventData::new_u64(LISTENER),
        epoll::EventFlags::IN,
    )?;
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut next = 0u64;
    let mut closed = 0usize;
    let mut events = Vec::with_capacity(1024);
    let mut buf = vec![0u8; 16 * 1024];
    let connected = frame(CONNECTED);
    loop {
        events.clear();
        epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None)?;
        for ev in &events {
            let key = ev.data.u64();
            if key == LISTENER {
                loop {
                    match rustix::net::accept_with(
                        &listener,
                        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                    ) {
                        Ok(fd) => {
                            epoll::add(
                                &ep,
                                &fd,
                                epoll::EventData::new_u64(next),
                                epoll::EventFlags::IN,
                            )?;
                            conns.insert(
                                next,
                                Conn {
                                    fd,
                                    stage: Stage::Upgrade(Vec::new()),
                                },
                            );
                            next += 1;
                        }
                        Err(rustix::io::Errno::AGAIN) => break,
                        // Out of descriptors or the like: try again later.
                        Err(e) => {
                            eprintln!("accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let Some(c) = conns.get_mut(&key) else {
                continue;
            };
            let n = match rustix::net::recv(&c.fd, &mut buf[..], RecvFlags::empty()) {
                Ok((n, _)) => n,
                Err(rustix::io::Errno::AGAIN) => continue,
                Err(_) => 0,
            };
            if n == 0 || !step(c, &buf[..n], &connected) {
                // Closing the descriptor removes it from the epoll set.
                conns.remove(&key);
                closed += 1;
                if limit.is_some_and(|l| closed >= l) {
                    return Ok(());
                }
            }
        }
    }
}

/// Advances one connection with the bytes just read; false closes it.
fn step(c: &mut Conn, input: &[u8], connected: &[u8]) -> bool {
    match &mut c.stage {
        Stage::Upgrade(head) => {
            head.extend_from_slice(input);
            if !head.windows(4).any(|w| w == b"\r\n\r\n") {
                return head.len() <= MAX_HEAD;
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            let Ok(httparse::Status::Complete(_)) = req.parse(head) else {
                return false;
            };
            let Some(key) = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
            else {
                return false;
            };
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                tungstenite::handshake::derive_accept_key(key.value)
            );
            c.stage = Stage::Auth;
            send_all(c.fd.as_fd(), answer.as_bytes())
        }
        Stage::Auth => {
            c.stage = Stage::Open;
            send_all(c.fd.as_fd(), connected)
        }
        Stage::Open => true,
    }
}

/// One `send`; a short write (never seen for a few hundred bytes on a
/// fresh socket) closes the connection rather than queueing.
fn send_all(fd: std::os::fd::BorrowedFd<'_>, bytes: &[u8]) -> bool {
    matches!(rustix::net::send(fd, bytes, SendFlags::NOSIGNAL), Ok(n) if n == bytes.len())
}

/// An unmasked text frame (payload under 126 bytes).
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81, payload.len() as u8];
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};

    /// A real WebSocket client gets the 101 and then `connected` for its
    /// first message, and the floor stops after the client leaves.
    #[tokio::test]
    async fn answers_upgrade_then_connected() {
        assert!(CONNECTED.len() < 126);
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let floor = std::thread::spawn(move || serve(listener, Some(1)));
        let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        ws.send(tungstenite::Message::text(
            r#"{"event":"authenticate","data":{"type":"insecure","userId":"u"}}"#,
        ))
        .await
        .unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply.into_data().as_ref(), CONNECTED);
        drop(ws);
        floor.join().unwrap().unwrap();
    }
}
