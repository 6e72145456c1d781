//! The floor: a do-nothing server that does the least any server must do
//! in the exchanges `ignis-ws bench` drives, so a real server's figures can
//! be read against what the kernel alone costs on the same machine
//! (PERFORMANCE.md, "Against the floor").
//!
//! One thread, one epoll set, level-triggered.
//!
//! - **Connect + authenticate:** per connection exactly the system calls
//!   the exchange needs: `accept4`, `epoll_ctl`, a `recv` of the upgrade
//!   request and a `send` of the 101 answer, a `recv` of the
//!   `authenticate` frame and a `send` of a pre-encoded `connected` frame,
//!   then `recv`s of whatever comes next (the `join`, heartbeats), which it
//!   ignores.
//! - **Fan-out:** it subscribes to Redis as an Ignis server does
//!   (`ws:broadcast`, `ws:room:*`) over one raw connection. Each message's
//!   envelope becomes one client frame, built once; every connected client
//!   gets every frame (the bench joins them all to one room), everything
//!   queued for a client in one `sendmsg` per batch of Redis messages, the
//!   rest when the socket is writable again.
//!
//! No authentication, rooms, JSON beyond the envelope's `event` and `data`,
//! frame parsing, timers, limits or metrics: it is a measuring stick, not a
//! server, and it answers anything that sends a request head and then any
//! bytes.
//!
//! ```text
//! cargo build --release --example floor
//! taskset -c 0 target/release/examples/floor 127.0.0.1:9000 redis://127.0.0.1:6379 &
//! taskset -c 1 target/release/ignis-ws bench --url ws://127.0.0.1:9000/ws \
//!     --redis redis://127.0.0.1:6379 -c 10000 --rate 10 --server-pid $!
//! ```
//!
//! A self-check: `cargo test --example floor`.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use rustix::event::epoll;
use rustix::net::{RecvFlags, SendAncillaryBuffer, SendFlags, SocketFlags};

/// `connected` as ignis-ws sends it (same length: a UUID and a time).
const CONNECTED: &[u8] =
    br#"{"event":"connected","data":{"id":"00000000-0000-4000-8000-000000000000","time":1764147600000}}"#;
const LISTENER: u64 = u64::MAX;
const REDIS: u64 = u64::MAX - 1;
/// Largest upgrade request accepted (ignis-ws's limit is 8 KiB too).
const MAX_HEAD: usize = 8192;
/// iovecs per `sendmsg`: 1024, as ignis-ws (`shard::MAX_IOV`), so under a
/// burst both write the same batches; `FLOOR_MAX_IOV` (1..=1024) changes
/// it (the floor used 64 before issue 16, which costs it 5 writes per
/// client where ignis-ws makes one: docs/design/issue16-research.md).
fn max_iov() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("FLOOR_MAX_IOV")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| (1..=1024).contains(n))
            .unwrap_or(1024)
    })
}

enum Stage {
    /// Reading the upgrade request (bytes so far).
    Upgrade(Vec<u8>),
    /// 101 sent; the next bytes are the `authenticate` frame.
    Auth,
    /// `connected` sent: receives every frame; what it sends is ignored.
    Open,
}

struct Conn {
    fd: OwnedFd,
    stage: Stage,
    /// Frames not yet written, and how much of the first is.
    queue: VecDeque<Rc<[u8]>>,
    sent: usize,
    /// Write interest registered.
    want_out: bool,
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:9000".into())
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("address: {e}")))?;
    let redis = args.next().map(|u| redis_connect(&u)).transpose()?;
    let listener = listen(addr)?;
    eprintln!(
        "floor listening on {}{}",
        listener.local_addr()?,
        if redis.is_some() {
            ", subscribed to Redis"
        } else {
            ""
        }
    );
    serve(listener, redis, None)
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
    // As ignis-ws's `--defer-accept` (on by default): a connection is
    // handed over once its request arrived. `FLOOR_DEFER_ACCEPT=0` turns
    // it off (ignis-ws: `--defer-accept false`).
    let defer = std::env::var("FLOOR_DEFER_ACCEPT")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(5);
    if defer > 0 {
        set_defer_accept(&s, defer)?;
    }
    s.bind(&addr.into())?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// TCP_DEFER_ACCEPT for `secs` seconds.
#[allow(unsafe_code)]
fn set_defer_accept(s: &socket2::Socket, secs: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `s` is open for the call and the value is a live `c_int` of
    // the length passed (every floor run sets it: `cargo test --example
    // floor` and each perf run).
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `redis://HOST:PORT` → a non-blocking connection subscribed to the
/// channels an Ignis server listens on.
fn redis_connect(url: &str) -> io::Result<TcpStream> {
    let hostport = url
        .strip_prefix("redis://")
        .map(|r| r.trim_end_matches('/'))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "redis://HOST:PORT"))?;
    let mut s = TcpStream::connect(hostport)?;
    s.set_nodelay(true)?;
    s.write_all(b"SUBSCRIBE ws:broadcast\r\nPSUBSCRIBE ws:room:*\r\n")?;
    // Wait for both confirmations so a publish right after start is seen.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while buf.windows(11).filter(|w| w == b"subscribe\r\n").count() < 2 {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "redis closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Serves until `limit` connections have come and gone (forever with None).
fn serve(listener: TcpListener, redis: Option<TcpStream>, limit: Option<usize>) -> io::Result<()> {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(
        &ep,
        &listener,
        epoll::EventData::new_u64(LISTENER),
        epoll::EventFlags::IN,
    )?;
    if let Some(r) = &redis {
        epoll::add(
            &ep,
            r,
            epoll::EventData::new_u64(REDIS),
            epoll::EventFlags::IN,
        )?;
    }
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut next = 0u64;
    let mut closed = 0usize;
    let mut events = Vec::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut pubsub = Vec::new();
    let connected = frame(CONNECTED);
    loop {
        events.clear();
        epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None)?;
        for ev in &events {
            let key = ev.data.u64();
            if key == LISTENER {
                accept_all(&ep, &listener, &mut conns, &mut next)?;
                continue;
            }
            if key == REDIS {
                let Some(r) = &redis else { continue };
                let frames = read_redis(r, &mut buf, &mut pubsub)?;
                if !frames.is_empty() {
                    for (k, c) in &mut conns {
                        if matches!(c.stage, Stage::Open) {
                            c.queue.extend(frames.iter().cloned());
                            // A client waiting for writability gets it all
                            // in one write when it is writable again.
                            if !c.want_out {
                                flush(&ep, *k, c)?;
                            }
                        }
                    }
                }
                continue;
            }
            let Some(c) = conns.get_mut(&key) else {
                continue;
            };
            let mut alive = true;
            let flags = ev.flags; // a copy: the event struct is packed
            if flags.contains(epoll::EventFlags::OUT) {
                alive = flush(&ep, key, c)?;
            }
            if alive && flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::HUP) {
                alive = match rustix::net::recv(&c.fd, &mut buf[..], RecvFlags::empty()) {
                    Ok((0, _)) => false,
                    Ok((n, _)) => step(c, &buf[..n], &connected),
                    Err(rustix::io::Errno::AGAIN) => true,
                    Err(_) => false,
                };
            }
            if !alive {
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

fn accept_all(
    ep: &OwnedFd,
    listener: &TcpListener,
    conns: &mut HashMap<u64, Conn>,
    next: &mut u64,
) -> io::Result<()> {
    loop {
        match rustix::net::accept_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
            Ok(fd) => {
                epoll::add(
                    ep,
                    &fd,
                    epoll::EventData::new_u64(*next),
                    epoll::EventFlags::IN,
                )?;
                conns.insert(
                    *next,
                    Conn {
                        fd,
                        stage: Stage::Upgrade(Vec::new()),
                        queue: VecDeque::new(),
                        sent: 0,
                        want_out: false,
                    },
                );
                *next += 1;
            }
            Err(rustix::io::Errno::AGAIN) => return Ok(()),
            // Out of descriptors or the like: try again on the next event.
            Err(e) => {
                eprintln!("accept: {e}");
                return Ok(());
            }
        }
    }
}

/// Reads what Redis sent; returns one client frame per complete message.
fn read_redis(r: &TcpStream, buf: &mut [u8], pending: &mut Vec<u8>) -> io::Result<Vec<Rc<[u8]>>> {
    loop {
        match rustix::net::recv(r, &mut buf[..], RecvFlags::empty()) {
            Ok((0, _)) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "redis closed")),
            Ok((n, _)) => pending.extend_from_slice(&buf[..n]),
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some((used, payload)) = resp_push(&pending[at..]) {
        if let Some(p) = payload.and_then(client_message) {
            frames.push(Rc::from(frame(&p)));
        }
        at += used;
    }
    pending.drain(..at);
    Ok(frames)
}

/// One RESP push (`*N` of bulk strings and integers) at the start of `b`:
/// its length and, for `message`/`pmessage`, the payload (its last element).
fn resp_push(b: &[u8]) -> Option<(usize, Option<&[u8]>)> {
    fn line(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = at + b.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((&b[at..end], end + 2))
    }
    fn num(s: &[u8]) -> Option<usize> {
        std::str::from_utf8(s).ok()?.parse().ok()
    }
    let (head, mut at) = line(b, 0)?;
    let n = num(head.strip_prefix(b"*")?)?;
    let mut first: &[u8] = b"";
    let mut last: &[u8] = b"";
    for i in 0..n {
        let (h, next) = line(b, at)?;
        at = next;
        match h.first()? {
            b'$' => {
                let len = num(&h[1..])?;
                let v = b.get(at..at + len)?;
                at += len + 2;
                if at > b.len() {
                    return None;
                }
                if i == 0 {
                    first = v;
                }
                last = v;
            }
            // Integers (subscription counts) and anything else on one line.
            _ => last = b"",
        }
    }
    let is_msg = first == b"message" || first == b"pmessage";
    Some((at, is_msg.then_some(last)))
}

/// An Ignis envelope → the client message `{"event":E,"data":D}`.
fn client_message(envelope: &[u8]) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct Env<'a> {
        #[serde(borrow)]
        event: &'a serde_json::value::RawValue,
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    let e: Env<'_> = serde_json::from_slice(envelope).ok()?;
    let mut m = Vec::with_capacity(envelope.len());
    m.extend_from_slice(br#"{"event":"#);
    m.extend_from_slice(e.event.get().as_bytes());
    if let Some(d) = e.data {
        m.extend_from_slice(br#","data":"#);
        m.extend_from_slice(d.get().as_bytes());
    }
    m.push(b'}');
    Some(m)
}

/// Writes everything queued for `c` in one `sendmsg`; arms or drops write
/// interest. False: the connection is dead.
fn flush(ep: &OwnedFd, key: u64, c: &mut Conn) -> io::Result<bool> {
    if !c.queue.is_empty() {
        let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(c.queue.len().min(max_iov()));
        for (i, f) in c.queue.iter().take(max_iov()).enumerate() {
            iov.push(IoSlice::new(if i == 0 { &f[c.sent..] } else { f }));
        }
        let res = rustix::net::sendmsg(
            &c.fd,
            &iov,
            &mut SendAncillaryBuffer::default(),
            SendFlags::NOSIGNAL,
        );
        drop(iov);
        match res {
            Ok(mut n) => {
                while let Some(f) = c.queue.front() {
                    let left = f.len() - c.sent;
                    if n < left {
                        c.sent += n;
                        break;
                    }
                    n -= left;
                    c.sent = 0;
                    c.queue.pop_front();
                }
            }
            Err(rustix::io::Errno::AGAIN) => {}
            Err(_) => return Ok(false),
        }
    }
    let want = !c.queue.is_empty();
    if want != c.want_out {
        let flags = if want {
            epoll::EventFlags::IN | epoll::EventFlags::OUT
        } else {
            epoll::EventFlags::IN
        };
        epoll::modify(ep, &c.fd, epoll::EventData::new_u64(key), flags)?;
        c.want_out = want;
    }
    Ok(true)
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
            send_once(c.fd.as_fd(), answer.as_bytes())
        }
        Stage::Auth => {
            c.stage = Stage::Open;
            send_once(c.fd.as_fd(), connected)
        }
        Stage::Open => true,
    }
}

/// One `send`; a short write (never seen for a few hundred bytes on a
/// fresh socket) closes the connection rather than queueing.
fn send_once(fd: std::os::fd::BorrowedFd<'_>, bytes: &[u8]) -> bool {
    matches!(rustix::net::send(fd, bytes, SendFlags::NOSIGNAL), Ok(n) if n == bytes.len())
}

/// An unmasked text frame.
fn frame(payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = Vec::with_capacity(len + 10);
    f.push(0x81);
    if len < 126 {
        f.push(len as u8);
    } else if len <= 0xFFFF {
        f.push(126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

/// The tests' own redis-server helper (a free port, skipped with a printed
/// reason where redis-server is missing, required in CI).
#[cfg(test)]
#[allow(dead_code)]
#[path = "../tests/util/redis_server.rs"]
mod redis_server;

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};

    /// A real WebSocket client gets the 101, then `connected` for its first
    /// message, then what was published to Redis as the client message an
    /// Ignis server would send; the floor stops after the client leaves.
    /// Without redis-server only the connect part runs (in CI it must be
    /// there).
    #[tokio::test]
    async fn connects_and_fans_out_redis_messages() {
        let redis = redis_server::RedisServer::start();
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let sub = redis
            .as_ref()
            .map(|r| redis_connect(&format!("redis://127.0.0.1:{}", r.port)).unwrap());
        let floor = std::thread::spawn(move || serve(listener, sub, Some(1)));
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
        if let Some(port) = redis.as_ref().map(|r| r.port) {
            // Big enough for a 16-bit length; published after `connected`,
            // so the client is open.
            let big = "x".repeat(70_000);
            for (channel, env, want) in [
                (
                    "ws:room:bench",
                    r#"{"serverId":"emitter","type":"room","target":"bench","event":"b","data":{"n":1}}"#.to_owned(),
                    r#"{"event":"b","data":{"n":1}}"#.to_owned(),
                ),
                (
                    "ws:broadcast",
                    format!(r#"{{"serverId":"emitter","type":"broadcast","event":"big","data":"{big}"}}"#),
                    format!(r#"{{"event":"big","data":"{big}"}}"#),
                ),
            ] {
                let out = std::process::Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "PUBLISH", channel, &env])
                    .output()
                    .unwrap();
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
                let got = ws.next().await.unwrap().unwrap();
                assert_eq!(got.into_text().unwrap().as_str(), want);
            }
        } else {
            eprintln!("redis-server not found: the fan-out part is skipped");
        }
        drop(ws);
        floor.join().unwrap().unwrap();
    }

    #[test]
    fn resp_pushes() {
        let m = b"*3\r\n$7\r\nmessage\r\n$12\r\nws:broadcast\r\n$2\r\n{}\r\n";
        assert_eq!(resp_push(m), Some((m.len(), Some(&b"{}"[..]))));
        let p = b"*4\r\n$8\r\npmessage\r\n$9\r\nws:room:*\r\n$13\r\nws:room:bench\r\n$3\r\nabc\r\n";
        assert_eq!(resp_push(p), Some((p.len(), Some(&b"abc"[..]))));
        let s = b"*3\r\n$10\r\npsubscribe\r\n$9\r\nws:room:*\r\n:2\r\n";
        assert_eq!(resp_push(s), Some((s.len(), None)));
        for cut in 0..m.len() {
            assert_eq!(resp_push(&m[..cut]), None, "cut at {cut}");
        }
    }
}
