//! The tasks of one shard: accept loop, per-connection task (HTTP upgrade,
//! then read → codec → session), the flusher (queued frames → one
//! `sendmsg` per connection), the ticker and the command loop.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use std::os::fd::OwnedFd;

use compio::driver::{SharedFd, ToSharedFd};
use compio::runtime::fd::PollFd;
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendAncillaryBuffer, SendFlags, Shutdown};
use socket2::Socket;

use crate::metrics::{Registry, ShardMetrics};
use crate::proto::handshake::{self, HandshakeLimits, Request};
use crate::shard::{ConnKey, Shard, ShardCommand};

/// The shard as the I/O layer sees it.
pub type IoShard = Shard<ConnSock>;

/// A connection's socket as its shard record holds it.
#[derive(Debug)]
pub enum ConnSock {
    /// A parked connection's socket, owned by the record alone: no shared
    /// handle is allocated for an idle connection.
    Owned(Socket),
    /// Shared with the connection's own task (multishot receive, or no
    /// shard epoll).
    Shared(SharedFd<Socket>),
}

impl std::os::fd::AsFd for ConnSock {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            ConnSock::Owned(s) => s.as_fd(),
            ConnSock::Shared(s) => s.as_fd(),
        }
    }
}

/// Bytes read from one connection before other tasks get a turn.
const READ_BUDGET: usize = 256 * 1024;
/// Most iovecs in one `sendmsg` (Linux `UIO_MAXIOV`).
const MAX_IOV: usize = 1024;
/// Size of the shard-wide read buffer.
const SCRATCH: usize = 64 * 1024;

/// Everything a shard's tasks share.
pub struct ShardIo {
    pub shard: RefCell<IoShard>,
    /// For `POST /api/publish`.
    handle: crate::handle::Handle,
    api_key: Option<String>,
    max_body: usize,
    /// `POST /api/publish` bodies being read now, and how many may be
    /// (this shard's share of `--api-max-pending-bodies`).
    bodies: Cell<usize>,
    max_bodies: usize,
    /// `/metrics` is served on this port (not moved by `--metrics-listen`).
    metrics_public: bool,
    scratch: RefCell<Vec<u8>>,
    /// Connections accepted but not yet upgraded (they count against
    /// `max_connections` too).
    handshaking: Cell<usize>,
    registry: Arc<Registry>,
    limits: HandshakeLimits,
    path: String,
    handshake_timeout: Duration,
    /// The shard's own epoll instance for upgraded connections on the
    /// readiness path: an idle connection is an entry in it and a record
    /// in the slab, with no task, future or pending operation of its own.
    /// The poller task waits for this fd through compio (a POLL_ADD on
    /// io_uring, the driver's poller on epoll). `None` if it could not be
    /// created: connections then keep a task each.
    ep: Option<PollFd<OwnedFd>>,
}

/// What a parked connection's epoll entry carries: slab key and generation.
fn ep_data(key: ConnKey, generation: u32) -> epoll::EventData {
    epoll::EventData::new_u64((u64::from(generation) << 32) | u64::from(key))
}

const EP_READ: epoll::EventFlags = epoll::EventFlags::IN.union(epoll::EventFlags::RDHUP);
const EP_READ_WRITE: epoll::EventFlags = EP_READ.union(epoll::EventFlags::OUT);

/// Interest of a parked connection that is not write-blocked: reads, or
/// nothing once the peer sent FIN (its end of stream would be reported
/// forever, level-triggered).
fn read_flags(peer_eof: bool) -> epoll::EventFlags {
    if peer_eof {
        epoll::EventFlags::empty()
    } else {
        EP_READ
    }
}

/// Interest of a parked, write-blocked connection.
fn write_flags(peer_eof: bool) -> epoll::EventFlags {
    if peer_eof {
        epoll::EventFlags::OUT
    } else {
        EP_READ_WRITE
    }
}

impl ShardIo {
    /// Wrap a shard.
    pub fn new(
        shard: IoShard,
        registry: Arc<Registry>,
        handle: crate::handle::Handle,
    ) -> Rc<ShardIo> {
        let c = shard.ctx.config.clone();
        Rc::new(ShardIo {
            handle,
            api_key: c.api_key.clone(),
            max_body: c.redis_max_message,
            bodies: Cell::new(0),
            max_bodies: c.api_max_pending_bodies.div_ceil(c.shards.max(1)).max(1),
            metrics_public: c.metrics_listen.is_none(),
            limits: HandshakeLimits {
                max_head_bytes: c.max_handshake_bytes,
                max_headers: 64,
            },
            path: c.path.clone(),
            handshake_timeout: c.handshake_timeout,
            shard: RefCell::new(shard),
            scratch: RefCell::new(vec![0; SCRATCH]),
            handshaking: Cell::new(0),
            registry,
            ep: if c.io_task_per_connection {
                None
            } else {
                epoll::create(epoll::CreateFlags::CLOEXEC)
                    .map_err(io::Error::from)
                    .and_then(PollFd::new)
                    .map_err(
                        |e| tracing::warn!(error = %e, "no shard epoll: one task per connection"),
                    )
                    .ok()
            },
        })
    }

    fn metrics(&self) -> Arc<ShardMetrics> {
        self.shard.borrow().ctx.metrics.clone()
    }
}

fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Retry pause after a failed accept (the cause, e.g. no free fd, rarely
/// clears faster).
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// Accept failures (EMFILE, ENFILE, ENOBUFS, …) recur on every retry
/// while their cause lasts: each is counted, and logged at most once per
/// second per shard with how many failed since the last line.
struct AcceptErrors(crate::throttle::Throttle);

impl Default for AcceptErrors {
    fn default() -> Self {
        AcceptErrors(crate::throttle::Throttle::new(Duration::from_secs(1)))
    }
}

impl AcceptErrors {
    fn failed(&mut self, e: &io::Error, m: &ShardMetrics, now: Instant) {
        ShardMetrics::add(&m.accept_errors, 1);
        if let Some(failures) = self.0.hit(now) {
            tracing::warn!(
                error = %e,
                failures,
                "accept failed; retrying (logged at most once per second)"
            );
        }
    }
}

/// Accept connections until the task is cancelled.
pub async fn accept_loop(io: Rc<ShardIo>, listener: PollFd<Socket>) {
    let m = io.metrics();
    let mut errors = AcceptErrors::default();
    loop {
        if let Err(e) = listener.accept_ready().await {
            errors.failed(&e, &m, Instant::now());
            compio::time::sleep(ACCEPT_RETRY).await;
            continue;
        }
        loop {
            // Non-blocking from the start (no fcntl); TCP_NODELAY comes
            // from the listener (Linux copies it to accepted sockets).
            let accepted = rustix::net::accept_with(
                listener.as_fd_ref(),
                rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC,
            )
            .map(Socket::from)
            .map_err(io::Error::from);
            match accepted {
                Ok(s) => {
                    ShardMetrics::add(&m.accepted_total, 1);
                    if !io
                        .shard
                        .borrow()
                        .has_room_for_connection(io.handshaking.get())
                    {
                        ShardMetrics::add(&m.refused_total, 1);
                        let _ = s.send_with_flags(
                            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                            libc::MSG_NOSIGNAL,
                        );
                        continue;
                    }
                    compio::runtime::spawn(conn_task(io.clone(), s)).detach();
                }
                Err(e) if is_would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: back off instead of spinning.
                    errors.failed(&e, &m, Instant::now());
                    compio::time::sleep(ACCEPT_RETRY).await;
                    break;
                }
            }
        }
    }
}

/// Write all of `data` to a socket that is not yet a shard connection.
async fn write_all(pfd: &PollFd<Socket>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::net::send(
            pfd.as_fd_ref(),
            data,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        ) {
            Ok(n) => data = &data[n..],
            Err(Errno::AGAIN) => pfd.write_ready().await?,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

trait AsFdRef {
    fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_>;
}
impl AsFdRef for PollFd<Socket> {
    fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.as_fd()
    }
}

/// Read the HTTP request head and answer it. `Some(rest)`: upgraded, with
/// the bytes that followed the head; `None`: answered and done.
/// Read what the socket has into `buf` (stopping past `limit` bytes).
/// Returns false at end of stream.
async fn read_more(
    io: &ShardIo,
    pfd: &PollFd<Socket>,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<bool> {
    // The request is often there already: read first, wait only if not.
    let (mut waited, mut got) = (false, false);
    loop {
        let r = {
            let mut scratch = io.scratch.borrow_mut();
            rustix::net::recv(pfd.as_fd_ref(), &mut scratch[..], RecvFlags::DONTWAIT).map(
                |(n, _)| {
                    buf.extend_from_slice(&scratch[..n]);
                    (n, n < scratch.len())
                },
            )
        };
        match r {
            Ok((0, _)) => return Ok(false),
            Ok((_, drained)) => {
                got = true;
                if drained {
                    return Ok(true);
                }
            }
            Err(Errno::AGAIN) if waited || got => return Ok(true),
            Err(Errno::AGAIN) => {
                pfd.read_ready().await?;
                waited = true;
                continue;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        if buf.len() > limit {
            return Ok(true);
        }
    }
}

/// Where the bytes of a connection come from before it is a shard
/// connection: readiness + `recv` (epoll back end) or the multishot receive
/// stream (io_uring back end).
trait Source {
    /// Append what arrived to `buf` (stopping past `limit`); false at EOF.
    async fn more(&mut self, io: &ShardIo, buf: &mut Vec<u8>, limit: usize) -> io::Result<bool>;
}

struct Readiness<'a>(&'a PollFd<Socket>);

impl Source for Readiness<'_> {
    async fn more(&mut self, io: &ShardIo, buf: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
        read_more(io, self.0, buf, limit).await
    }
}

async fn handshake(io: &ShardIo, pfd: &PollFd<Socket>) -> io::Result<Option<Vec<u8>>> {
    handshake_from(io, pfd, &mut Readiness(pfd)).await
}

async fn handshake_from(
    io: &ShardIo,
    pfd: &PollFd<Socket>,
    src: &mut impl Source,
) -> io::Result<Option<Vec<u8>>> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if !src.more(io, &mut buf, io.limits.max_head_bytes).await? {
            return Ok(None);
        }
        let reply: Vec<u8> = match handshake::parse_request(&buf, &io.limits) {
            Ok(None) => continue,
            Ok(Some(Request::Upgrade {
                path,
                key,
                head_len,
            })) => {
                let path = path.split('?').next().unwrap_or(path);
                if path != io.path {
                    ShardMetrics::add(&io.metrics().http_requests_total, 1);
                    handshake::http_response(404, "text/plain", b"Not Found\n", &[])
                } else {
                    let resp = handshake::accept_response(key);
                    let rest = buf[head_len..].to_vec();
                    write_all(pfd, &resp).await?;
                    return Ok(Some(rest));
                }
            }
            Ok(Some(Request::Http {
                method,
                path,
                head_len,
                authorization,
                content_length,
            })) if method.eq_ignore_ascii_case("POST")
                && path == crate::http::PUBLISH_PATH
                && io.api_key.is_some() =>
            {
                ShardMetrics::add(&io.metrics().http_requests_total, 1);
                let api_key = io.api_key.as_deref().unwrap_or_default();
                let full = io.bodies.get() >= io.max_bodies;
                match crate::http::publish_head(
                    api_key,
                    authorization,
                    content_length,
                    io.max_body,
                    full,
                ) {
                    crate::http::PublishHead::Reply(r) => {
                        if full && r.starts_with(b"HTTP/1.1 503") {
                            ShardMetrics::add(&io.metrics().publish_bodies_refused, 1);
                        }
                        r
                    }
                    crate::http::PublishHead::ReadBody { len } => {
                        let authorization = authorization.map(str::to_owned);
                        let end = head_len + len;
                        let _slot = BodySlot::take(io);
                        while buf.len() < end {
                            if !src.more(io, &mut buf, end).await? {
                                return Ok(None);
                            }
                        }
                        crate::http::publish(
                            &io.handle,
                            api_key,
                            authorization.as_deref(),
                            &buf[head_len..end],
                        )
                    }
                }
            }
            Ok(Some(Request::Http { method, path, .. })) => {
                ShardMetrics::add(&io.metrics().http_requests_total, 1);
                crate::http::respond(
                    &io.registry,
                    method,
                    path,
                    crate::http::Endpoints {
                        ws_path: Some(&io.path),
                        api_enabled: io.api_key.is_some(),
                        metrics: io.metrics_public,
                    },
                )
            }
            Err(e) => {
                ShardMetrics::add(&io.metrics().handshake_errors_total, 1);
                tracing::debug!(error = %e, "bad upgrade request");
                handshake::error_response(&e)
            }
        };
        write_all(pfd, &reply).await?;
        let _ = rustix::net::shutdown(pfd.as_fd_ref(), Shutdown::Write);
        return Ok(None);
    }
}

/// One publish body being read: counted in [`ShardIo::bodies`] until
/// dropped (also when the read fails or times out).
struct BodySlot<'a>(&'a ShardIo);

impl<'a> BodySlot<'a> {
    fn take(io: &'a ShardIo) -> BodySlot<'a> {
        io.bodies.set(io.bodies.get() + 1);
        io.metrics()
            .publish_bodies
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        BodySlot(io)
    }
}

impl Drop for BodySlot<'_> {
    fn drop(&mut self) {
        self.0.bodies.set(self.0.bodies.get().saturating_sub(1));
        self.0
            .metrics()
            .publish_bodies
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One connection, from the first byte of its HTTP request to its close.
async fn conn_task(io: Rc<ShardIo>, sock: Socket) {
    let pfd = match PollFd::new(sock) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot register socket");
            return;
        }
    };
    handshaking(&io, 1);
    // Boxed: the handshake's state lives only while it runs, not for the
    // whole life of an idle connection's task.
    let upgraded = Box::pin(compio::time::timeout(
        io.handshake_timeout,
        handshake(&io, &pfd),
    ))
    .await;
    handshaking(&io, -1);
    let rest = match upgraded {
        Ok(Ok(Some(rest))) => rest,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection failed during the upgrade");
            return;
        }
        Err(_) => {
            ShardMetrics::add(&io.metrics().handshake_errors_total, 1);
            let _ = Box::pin(write_all(
                &pfd,
                &handshake::http_response(408, "text/plain", b"Request Timeout\n", &[]),
            ))
            .await;
            return;
        }
    };
    let mut shared = compio::buf::IntoInner::into_inner(pfd);
    if io.ep.is_some() {
        // Nothing is pending on the socket now: the record can own it.
        match shared.try_unwrap() {
            Ok(sock) => {
                let key = io
                    .shard
                    .borrow_mut()
                    .register(ConnSock::Owned(sock), &rest, Instant::now())
                    .0;
                drop(rest);
                // The poller watches it from now on; this task and its
                // future end.
                park(&io, key);
                return;
            }
            Err(s) => shared = s,
        }
    }
    let pfd = match PollFd::from_shared_fd(shared.clone()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot register socket");
            return;
        }
    };
    let key = {
        let mut sh = io.shard.borrow_mut();
        let key = sh
            .register(ConnSock::Shared(shared), &rest, Instant::now())
            .0;
        drop(rest);
        key
    };
    poll_fn(|cx| {
        loop {
            let (write_blocked, peer_eof) = {
                let mut sh = io.shard.borrow_mut();
                let Some(conn) = sh.conns.get_mut(key as usize) else {
                    return Poll::Ready(());
                };
                if conn.dead {
                    return Poll::Ready(());
                }
                if !conn.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    conn.waker = Some(Box::new(cx.waker().clone()));
                }
                (conn.write_blocked, conn.peer_eof)
            };
            if write_blocked {
                match pfd.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        if let Some(c) = io.shard.borrow_mut().conns.get_mut(key as usize) {
                            c.write_blocked = false;
                        }
                        flush_one(&io, key);
                        continue;
                    }
                    Poll::Ready(Err(_)) => {
                        io.shard.borrow_mut().kill(key);
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            if peer_eof {
                // Only the queued output is left to write (see `on_eof`).
                return Poll::Pending;
            }
            match pfd.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {
                    read_some(&io, key);
                    continue;
                }
                Poll::Ready(Err(_)) => {
                    io.shard.borrow_mut().kill(key);
                    continue;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    let sock = io.shard.borrow_mut().remove(key);
    drop(sock);
    drop(pfd);
}

/// One more (`1`) or one fewer (`-1`) connection in its HTTP upgrade.
fn handshaking(io: &ShardIo, delta: isize) {
    io.handshaking
        .set(io.handshaking.get().saturating_add_signed(delta));
    io.metrics()
        .handshaking
        .fetch_add(delta as i64, std::sync::atomic::Ordering::Relaxed);
}

/// Hand an upgraded connection to the shard's poller: register it in the
/// shard's epoll and mark it parked. A connection that already died, or
/// that the shard's epoll does not take, is removed.
fn park(io: &ShardIo, key: ConnKey) {
    let mut sh = io.shard.borrow_mut();
    let Some(conn) = sh.conns.get_mut(key as usize) else {
        return;
    };
    let Some(ep) = io.ep.as_ref().filter(|_| !conn.dead) else {
        drop(sh.remove(key));
        return;
    };
    // Output queued during the upgrade (a `connected` for an
    // `authenticate` that came with the request) may already be blocked.
    let flags = if conn.write_blocked {
        EP_READ_WRITE
    } else {
        EP_READ
    };
    match epoll::add(ep, &conn.sock, ep_data(key, conn.generation), flags) {
        Ok(()) => {
            conn.parked = true;
            ShardMetrics::add(&sh.ctx.metrics.parked_total, 1);
        }
        Err(e) => {
            tracing::warn!(error = %e, "the shard's epoll refused a connection; dropping it");
            drop(sh.remove(key));
        }
    }
}

/// Read and write readiness of every parked connection of the shard, from
/// the shard's epoll: level-triggered, so what one turn leaves unread (the
/// read budget) is reported again on the next.
pub async fn poller(io: Rc<ShardIo>) {
    let Some(ep) = &io.ep else { return };
    let mut events: Vec<epoll::Event> = Vec::with_capacity(1024);
    loop {
        if let Err(e) = ep.read_ready().await {
            tracing::warn!(error = %e, "shard epoll readiness failed");
            compio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        loop {
            events.clear();
            match epoll::wait(
                ep,
                rustix::buffer::spare_capacity(&mut events),
                Some(&rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                }),
            ) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "epoll_wait failed");
                    break;
                }
            }
            for ev in &events {
                let (flags, data) = (ev.flags, ev.data.u64());
                on_ready(&io, ep, data as u32, (data >> 32) as u32, flags);
            }
            if events.len() < events.capacity() {
                break;
            }
            // A full batch: let the other tasks run before the next one.
            yield_now().await;
        }
    }
}

/// One readiness event of a parked connection.
fn on_ready(
    io: &ShardIo,
    ep: &PollFd<OwnedFd>,
    key: ConnKey,
    generation: u32,
    flags: epoll::EventFlags,
) {
    {
        let mut sh = io.shard.borrow_mut();
        let Some(conn) = sh.conns.get_mut(key as usize) else {
            return;
        };
        if conn.generation != generation || conn.dead || !conn.parked {
            return;
        }
        let eof = conn.peer_eof;
        if !flags.contains(epoll::EventFlags::OUT) || !conn.write_blocked {
            drop(sh);
        } else {
            conn.write_blocked = false;
            drop(sh);
            flush_one(io, key);
            let sh = io.shard.borrow();
            if let Some(conn) = sh.conns.get(key as usize)
                && !conn.dead
                && !conn.write_blocked
            {
                let _ = epoll::modify(ep, &conn.sock, ep_data(key, generation), read_flags(eof));
            }
        }
        if eof {
            return;
        }
    }
    if flags.intersects(
        epoll::EventFlags::IN
            | epoll::EventFlags::RDHUP
            | epoll::EventFlags::HUP
            | epoll::EventFlags::ERR,
    ) {
        read_some(io, key);
    }
}

/// Deregister and remove parked connections that died.
pub async fn reaper(io: Rc<ShardIo>) {
    loop {
        poll_fn(|cx| {
            let mut sh = io.shard.borrow_mut();
            if sh.reap.is_empty() {
                sh.reap_waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        reap(&io);
    }
}

/// Deregister and remove the parked connections that died so far.
fn reap(io: &ShardIo) {
    let keys = std::mem::take(&mut io.shard.borrow_mut().reap);
    for key in keys {
        let mut sh = io.shard.borrow_mut();
        let Some(conn) = sh.conns.get(key as usize) else {
            continue;
        };
        if !(conn.dead && conn.parked) {
            continue;
        }
        if let Some(ep) = &io.ep {
            let _ = epoll::delete(ep, &conn.sock);
        }
        let sock = sh.remove(key);
        drop(sh);
        drop(sock);
    }
}

/// The multishot receive stream of an io_uring connection: the kernel
/// picks a buffer from the shard's provided-buffer ring only when data
/// arrives, so an idle connection holds none.
struct Multishot<'a, R: futures_util::Stream<Item = io::Result<compio::driver::BufferRef>> + Unpin>
{
    rx: &'a mut R,
    pfd: &'a PollFd<Socket>,
}

impl<R: futures_util::Stream<Item = io::Result<compio::driver::BufferRef>> + Unpin> Source
    for Multishot<'_, R>
{
    async fn more(&mut self, io: &ShardIo, buf: &mut Vec<u8>, _limit: usize) -> io::Result<bool> {
        use futures_util::StreamExt;
        loop {
            match self.rx.next().await {
                Some(Ok(b)) => {
                    buf.extend_from_slice(&b);
                    return Ok(true);
                }
                Some(Err(e)) if is_no_buffers(&e) => {
                    ShardMetrics::add(&io.metrics().recv_ring_empty, 1);
                    self.pfd.read_ready().await?
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(false),
            }
        }
    }
}

/// The provided-buffer ring is empty (every buffer is out): wait for
/// readability, then re-arm the multishot receive.
fn is_no_buffers(e: &io::Error) -> bool {
    // compio reports the kernel's ENOBUFS as `ResourceBusy`.
    e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == io::ErrorKind::ResourceBusy
}

/// io_uring: multishot accept on the shard's listener.
pub async fn accept_loop_uring(io: Rc<ShardIo>, listener: compio::net::TcpListener) {
    use futures_util::StreamExt;
    let m = io.metrics();
    let mut errors = AcceptErrors::default();
    let mut incoming = listener.incoming();
    while let Some(r) = incoming.next().await {
        match r {
            Ok(stream) => {
                ShardMetrics::add(&m.accepted_total, 1);
                if !io
                    .shard
                    .borrow()
                    .has_room_for_connection(io.handshaking.get())
                {
                    ShardMetrics::add(&m.refused_total, 1);
                    let fd = stream.to_shared_fd();
                    let _ = rustix::net::send(
                        &*fd,
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
                    );
                    continue;
                }
                let _ = stream.set_nodelay(true);
                compio::runtime::spawn(conn_task_uring(io.clone(), stream)).detach();
            }
            Err(e) => {
                errors.failed(&e, &m, Instant::now());
                compio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// Bytes read per multishot completion at most (the ring's buffer size).
const RECV_LEN: usize = 0;

/// One io_uring connection: multishot receive into the provided-buffer
/// ring; writes are the same coalesced `sendmsg` as on epoll.
async fn conn_task_uring(io: Rc<ShardIo>, mut stream: compio::net::TcpStream) {
    use compio::io::AsyncReadMulti;
    use futures_util::Stream;
    let shared = stream.to_shared_fd();
    let pfd = match PollFd::from_shared_fd(shared.clone()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot register socket");
            return;
        }
    };
    let rx = stream.read_multi(RECV_LEN);
    let mut rx = std::pin::pin!(rx);
    handshaking(&io, 1);
    let upgraded = {
        let mut src = Multishot {
            rx: &mut rx,
            pfd: &pfd,
        };
        // Boxed: see `conn_task`.
        Box::pin(compio::time::timeout(
            io.handshake_timeout,
            handshake_from(&io, &pfd, &mut src),
        ))
        .await
    };
    handshaking(&io, -1);
    let rest = match upgraded {
        Ok(Ok(Some(rest))) => rest,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection failed during the upgrade");
            return;
        }
        Err(_) => {
            ShardMetrics::add(&io.metrics().handshake_errors_total, 1);
            let _ = Box::pin(write_all(
                &pfd,
                &handshake::http_response(408, "text/plain", b"Request Timeout\n", &[]),
            ))
            .await;
            return;
        }
    };
    let key = {
        let mut sh = io.shard.borrow_mut();
        let key = sh
            .register(ConnSock::Shared(shared), &rest, Instant::now())
            .0;
        drop(rest);
        key
    };
    // Set while the ring was empty: wait for readability before re-arming.
    let mut starved = false;
    poll_fn(|cx| {
        loop {
            let (write_blocked, peer_eof) = {
                let mut sh = io.shard.borrow_mut();
                let Some(conn) = sh.conns.get_mut(key as usize) else {
                    return Poll::Ready(());
                };
                if conn.dead {
                    return Poll::Ready(());
                }
                if !conn.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    conn.waker = Some(Box::new(cx.waker().clone()));
                }
                (conn.write_blocked, conn.peer_eof)
            };
            if write_blocked {
                match pfd.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        if let Some(c) = io.shard.borrow_mut().conns.get_mut(key as usize) {
                            c.write_blocked = false;
                        }
                        flush_one(&io, key);
                        continue;
                    }
                    Poll::Ready(Err(_)) => {
                        io.shard.borrow_mut().kill(key);
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            if peer_eof {
                // The receive stream ended; only the queued output is left.
                return Poll::Pending;
            }
            if starved {
                match pfd.poll_read_ready(cx) {
                    Poll::Ready(_) => starved = false,
                    Poll::Pending => return Poll::Pending,
                }
            }
            match rx.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(b))) => {
                    io.shard.borrow_mut().on_bytes(key, &b, Instant::now());
                    continue;
                }
                Poll::Ready(Some(Err(e))) if is_no_buffers(&e) => {
                    ShardMetrics::add(&io.metrics().recv_ring_empty, 1);
                    starved = true;
                    continue;
                }
                Poll::Ready(Some(Err(_)) | None) => {
                    io.shard.borrow_mut().on_eof(key, Instant::now());
                    continue;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    let sock = io.shard.borrow_mut().remove(key);
    drop(sock);
    drop(pfd);
}

/// Read what the socket has (up to the budget) and feed it to the shard.
fn read_some(io: &ShardIo, key: ConnKey) {
    let mut scratch = io.scratch.borrow_mut();
    let mut sh = io.shard.borrow_mut();
    let now = Instant::now();
    let mut total = 0;
    loop {
        let Some(conn) = sh.conns.get(key as usize) else {
            return;
        };
        if conn.dead {
            return;
        }
        if conn.peer_eof {
            return;
        }
        let r = rustix::net::recv(&conn.sock, &mut scratch[..], RecvFlags::DONTWAIT);
        match r {
            Ok((0, _)) => {
                sh.on_eof(key, now);
                // Still owed output: stop watching for reads (see `read_flags`).
                if let Some(conn) = sh.conns.get(key as usize)
                    && conn.parked
                    && conn.peer_eof
                    && let Some(ep) = &io.ep
                {
                    let flags = if conn.write_blocked {
                        write_flags(true)
                    } else {
                        read_flags(true)
                    };
                    let _ = epoll::modify(ep, &conn.sock, ep_data(key, conn.generation), flags);
                }
                return;
            }
            Ok((n, _)) => {
                sh.on_bytes(key, &scratch[..n], now);
                total += n;
                if n < scratch.len() || total >= READ_BUDGET {
                    return;
                }
            }
            Err(Errno::AGAIN) => return,
            Err(Errno::INTR) => {}
            Err(_) => {
                sh.kill(key);
                return;
            }
        }
    }
}

/// Write one connection's queue: everything queued, one `sendmsg`.
pub fn flush_one(io: &ShardIo, key: ConnKey) {
    let mut sh = io.shard.borrow_mut();
    let metrics = sh.ctx.metrics.clone();
    let Some(conn) = sh.conns.get_mut(key as usize) else {
        return;
    };
    conn.dirty = false;
    if conn.dead || conn.write_blocked {
        return;
    }
    let mut fatal = false;
    while !conn.out.is_empty() {
        let mut iov: smallvec::SmallVec<[IoSlice<'_>; 64]> = smallvec::SmallVec::new();
        let mut want = 0usize;
        for (i, f) in conn.out.iter().take(MAX_IOV).enumerate() {
            let s = if i == 0 {
                &f[conn.front_written..]
            } else {
                &f[..]
            };
            want += s.len();
            iov.push(IoSlice::new(s));
        }
        let r = rustix::net::sendmsg(
            &conn.sock,
            &iov,
            &mut SendAncillaryBuffer::default(),
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        );
        drop(iov);
        match r {
            Ok(n) => {
                ShardMetrics::add(&metrics.write_calls, 1);
                ShardMetrics::add(&metrics.bytes_written, n as u64);
                advance(conn, n);
                if n < want {
                    conn.write_blocked = true;
                    break;
                }
            }
            Err(Errno::AGAIN) => {
                conn.write_blocked = true;
                break;
            }
            Err(Errno::INTR) => {}
            Err(_) => {
                fatal = true;
                break;
            }
        }
    }
    if fatal {
        sh.kill(key);
        return;
    }
    if conn.out.is_empty() && conn.out.capacity() == 1 {
        // The usual one-frame queue of a quiet connection: an idle
        // connection keeps no queue allocation (larger ones, of busy
        // connections, are kept until the sweep).
        conn.out = VecDeque::new();
    }
    let Some(conn) = sh.conns.get_mut(key as usize) else {
        return;
    };
    if conn.write_blocked {
        if conn.parked {
            // Ask the shard's epoll for writability too.
            if let Some(ep) = &io.ep {
                let flags = write_flags(conn.peer_eof);
                let _ = epoll::modify(ep, &conn.sock, ep_data(key, conn.generation), flags);
            }
        } else if let Some(w) = &conn.waker {
            w.wake_by_ref();
        }
        return;
    }
    if let Some(closing) = conn.closing
        && conn.out.is_empty()
        && !conn.write_shut
    {
        // Our close frame is out: FIN tells the client nothing follows.
        conn.write_shut = true;
        let _ = rustix::net::shutdown(&conn.sock, Shutdown::Write);
        if closing.received {
            sh.kill(key);
        }
    }
}

/// Drop `n` written bytes from the front of the queue.
fn advance(conn: &mut crate::shard::Conn<ConnSock>, mut n: usize) {
    conn.out_bytes -= n.min(conn.out_bytes);
    while n > 0 {
        let Some(front) = conn.out.front() else { break };
        let left = front.len() - conn.front_written;
        if n >= left {
            n -= left;
            conn.out.pop_front();
            conn.front_written = 0;
        } else {
            conn.front_written += n;
            n = 0;
        }
    }
}

/// Write every dirty connection, once per loop turn (or, with
/// `--write-coalesce-us`, once per coalescing window).
pub async fn flusher(io: Rc<ShardIo>) {
    let mut keys: Vec<ConnKey> = Vec::new();
    let coalesce = io.shard.borrow().ctx.config.write_coalesce;
    loop {
        poll_fn(|cx| {
            let mut sh = io.shard.borrow_mut();
            if sh.has_dirty() {
                Poll::Ready(())
            } else {
                sh.flush_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if !coalesce.is_zero() && !io.shard.borrow().shutting_down {
            compio::time::sleep(coalesce).await;
        }
        io.shard.borrow_mut().take_dirty(&mut keys);
        for k in keys.drain(..) {
            flush_one(&io, k);
        }
    }
}

/// Encrypt frames for encrypted clients, at most `encrypted_batch_limit`
/// per loop turn: between batches the task yields, so a room full of
/// encrypted clients cannot starve reads, accepts and plain deliveries.
pub async fn encryptor(io: Rc<ShardIo>) {
    let limit = io.shard.borrow().ctx.config.encrypted_batch_limit;
    loop {
        poll_fn(|cx| {
            let mut sh = io.shard.borrow_mut();
            if sh.has_encryption_work() {
                Poll::Ready(())
            } else {
                sh.encrypt_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        let more = io.shard.borrow_mut().run_encryption(limit);
        if more {
            yield_now().await;
        }
    }
}

/// Let every other ready task of the shard run once.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Run the shard's timers.
pub async fn ticker(io: Rc<ShardIo>) {
    let period = io.shard.borrow().tick_interval();
    let mut next_release = Instant::now() + RELEASE_EVERY;
    let mut churn_seen = churn(&io);
    loop {
        compio::time::sleep(period).await;
        let now = Instant::now();
        io.shard.borrow_mut().on_tick(now);
        if now >= next_release {
            next_release = now + RELEASE_EVERY;
            // After connections came or went, once no upgrade is running.
            let c = churn(&io);
            if c != churn_seen && io.handshaking.get() == 0 {
                churn_seen = c;
                crate::io::mem::release_free_memory();
            }
        }
    }
}

/// How often a shard may hand freed memory back (see
/// [`crate::io::mem::release_free_memory`]).
const RELEASE_EVERY: Duration = Duration::from_secs(1);

/// Changes whenever a connection was upgraded or removed, or a plain HTTP
/// request (a publish body, a refused upgrade) was answered: after
/// HTTP-only traffic too, the memory it used goes back.
fn churn(io: &ShardIo) -> (u64, u64, u64, usize) {
    use std::sync::atomic::Ordering::Relaxed;
    let sh = io.shard.borrow();
    let m = &sh.ctx.metrics;
    (
        m.upgrades_total.load(Relaxed),
        m.http_requests_total.load(Relaxed),
        m.handshake_errors_total.load(Relaxed),
        sh.len(),
    )
}

/// Apply commands from the shard's channel, in batches.
pub async fn commands(io: Rc<ShardIo>, rx: flume::Receiver<ShardCommand>) {
    while let Ok(cmd) = rx.recv_async().await {
        // Connections that died before these commands are gone for them
        // (a `Barrier` then sees the indexes without them).
        reap(&io);
        let now = Instant::now();
        let mut sh = io.shard.borrow_mut();
        sh.handle_command(cmd, now);
        for _ in 0..256 {
            match rx.try_recv() {
                Ok(cmd) => sh.handle_command(cmd, now),
                Err(_) => break,
            }
        }
    }
}
