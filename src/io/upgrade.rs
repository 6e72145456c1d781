//! The HTTP side of a connection before it is a shard connection: read
//! the request head (and a publish body), answer plain HTTP requests
//! (`/health`, `/metrics`, `POST /api/publish`, errors) and the WebSocket
//! upgrade, within `--handshake-timeout-ms`. The bytes come from a
//! `Source` (readiness + `recv`; a test can give another).

use std::io;

use compio::runtime::fd::PollFd;
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, Shutdown};
use socket2::Socket;

use super::accept::IpSlot;
use super::shard_io::ShardIo;
use crate::metrics::ShardMetrics;
use crate::proto::handshake::{self, Request};

/// An upgraded connection, to become a shard connection.
pub(super) struct Upgraded {
    /// The bytes that followed the request head.
    pub(super) rest: Vec<u8>,
    /// Its place under `--max-conns-per-ip`, if that is on.
    pub(super) ip_slot: Option<IpSlot>,
}

/// Upgrade a new connection: `Some` when upgraded, `None` when it was
/// answered (or failed, or timed out) and is done. Counted in
/// `handshaking` meanwhile.
pub(super) async fn upgrade(
    io: &ShardIo,
    pfd: &PollFd<Socket>,
    src: &mut impl Source,
    head: Vec<u8>,
) -> Option<Upgraded> {
    // Boxed: the upgrade's state lives only while it runs, not for the
    // whole life of an idle connection's task.
    let upgraded = Box::pin(compio::time::timeout(
        io.handshake_timeout,
        handshake_from(io, pfd, src, head),
    ))
    .await;
    match upgraded {
        Ok(Ok(rest)) => rest,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection failed during the upgrade");
            None
        }
        Err(_) => {
            ShardMetrics::add(&io.metrics().handshake_errors_total, 1);
            let _ = Box::pin(src.send(&handshake::http_response(
                408,
                "text/plain",
                b"Request Timeout\n",
                &[],
            )))
            .await;
            None
        }
    }
}

/// The byte stream of a connection before it is a shard connection: the
/// socket itself ([`Readiness`]) or TLS over it
/// ([`super::tls::TlsSource`]).
pub(super) trait Source {
    /// Append what arrived to `buf` (stopping past `limit`); false at EOF.
    async fn more(&mut self, io: &ShardIo, buf: &mut Vec<u8>, limit: usize) -> io::Result<bool>;
    /// Send all of `data`.
    async fn send(&mut self, data: &[u8]) -> io::Result<()>;
    /// Nothing more will be sent (after a plain HTTP answer).
    async fn finish(&mut self);
    /// `--proxy-protocol`: the client address a PROXY header already gave
    /// (read before TLS); `None`: not read yet (or not expected).
    fn proxied(&self) -> Option<Option<std::net::IpAddr>> {
        None
    }
}

/// Readiness + `recv` into the shard's scratch buffer.
pub(super) struct Readiness<'a>(pub(super) &'a PollFd<Socket>);

impl Source for Readiness<'_> {
    async fn more(&mut self, io: &ShardIo, buf: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
        read_more(io, self.0, buf, limit).await
    }
    async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        write_all(self.0, data).await
    }
    async fn finish(&mut self) {
        let _ = rustix::net::shutdown(pfd_fd(self.0), Shutdown::Write);
    }
}

/// Write all of `data` to a socket that is not yet a shard connection.
pub(super) async fn write_all(pfd: &PollFd<Socket>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::net::send(pfd_fd(pfd), data, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
            Ok(n) => data = &data[n..],
            Err(Errno::AGAIN) => pfd.write_ready().await?,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Read what the socket has into `buf` (stopping past `limit` bytes).
/// Returns false at end of stream.
pub(super) async fn read_more(
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
            rustix::net::recv(pfd_fd(pfd), &mut scratch[..], RecvFlags::DONTWAIT).map(|(n, _)| {
                buf.extend_from_slice(&scratch[..n]);
                (n, n < scratch.len())
            })
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

/// Read the HTTP request head and answer it. `Some`: upgraded; `None`:
/// answered and done. `head`: what [`upgrade_now`] already read.
async fn handshake_from(
    io: &ShardIo,
    pfd: &PollFd<Socket>,
    src: &mut impl Source,
    head: Vec<u8>,
) -> io::Result<Option<Upgraded>> {
    // Bytes already read are parsed before waiting for more.
    let mut have = !head.is_empty();
    let mut buf: Vec<u8> = head;
    // `--proxy-protocol`: the header still to come, then the client's
    // address it gave (none: the TCP peer).
    let (mut proxy_pending, mut proxied) = match src.proxied() {
        Some(given) => (false, given),
        None => (io.admission.proxy_protocol, None),
    };
    loop {
        if std::mem::take(&mut have) {
            // Parse what came with the accept first.
        } else if !src.more(io, &mut buf, io.limits.max_head_bytes).await? {
            return Ok(None);
        }
        if proxy_pending {
            match handshake::parse_proxy_v2(&buf) {
                Ok(None) => continue,
                Ok(Some((len, source))) => {
                    buf.drain(..len);
                    (proxied, proxy_pending) = (source, false);
                    if buf.is_empty() {
                        continue;
                    }
                }
                Err(e) => {
                    ShardMetrics::add(&io.metrics().handshake_errors_total, 1);
                    tracing::debug!(error = %e, "bad PROXY protocol header");
                    src.send(&handshake::error_response(&e)).await?;
                    src.finish().await;
                    return Ok(None);
                }
            }
        }
        let reply: Vec<u8> = match handshake::parse_request(&buf, &io.limits) {
            Ok(None) => continue,
            Ok(Some(Request::Upgrade {
                path,
                key,
                head_len,
                origin,
                forwarded_for,
            })) => match answer_upgrade(io, pfd, proxied, path, key, origin, forwarded_for) {
                Err(refusal) => refusal,
                Ok((resp, ip_slot)) => {
                    let rest = buf[head_len..].to_vec();
                    src.send(&resp).await?;
                    return Ok(Some(Upgraded { rest, ip_slot }));
                }
            },
            Ok(Some(Request::Http {
                method,
                path,
                head_len,
                authorization,
                content_length,
            })) if method.eq_ignore_ascii_case("POST")
                && crate::http::is_api_path(path)
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
                        let path = path.to_owned();
                        let end = head_len + len;
                        let _slot = BodySlot::take(io);
                        while buf.len() < end {
                            if !src.more(io, &mut buf, end).await? {
                                return Ok(None);
                            }
                        }
                        let body = &buf[head_len..end];
                        let auth = authorization.as_deref();
                        match path.as_str() {
                            crate::http::DISCONNECT_PATH => {
                                crate::http::disconnect(&io.handle, api_key, auth, body).await
                            }
                            crate::http::COUNT_PATH => {
                                crate::http::count(&io.handle, api_key, auth, body).await
                            }
                            _ => crate::http::publish(&io.handle, api_key, auth, body),
                        }
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
        src.send(&reply).await?;
        src.finish().await;
        return Ok(None);
    }
}

/// What [`upgrade_now`] did with a new connection.
pub(super) enum Now {
    /// Upgraded and parked, or answered and closed: nothing left to do.
    Done,
    /// Not at once (nothing to read yet, a partial or plain HTTP request,
    /// a head as large as the scratch buffer): the connection's task goes
    /// on from what was read.
    Later(Socket, Vec<u8>),
}

/// The upgrade of a plain connection (no TLS, no PROXY header) done in
/// the accept loop when its request is already there, as it usually is
/// by the time a connection is accepted: one `recv` into the shard's
/// scratch buffer, the checks, the 101 sent, the connection parked. No
/// task, timer, readiness wait or request buffer. Everything else (and
/// a request not yet there) goes to the connection's task
/// ([`Now::Later`]), which answers exactly as it would have.
pub(super) fn upgrade_now(io: &ShardIo, sock: Socket) -> Now {
    use std::os::fd::AsFd;
    let fd = sock.as_fd();
    let read = {
        let mut scratch = io.scratch.borrow_mut();
        match rustix::net::recv(fd, &mut scratch[..], RecvFlags::DONTWAIT) {
            // A head as large as the scratch buffer is not an upgrade
            // that can be answered from it.
            Ok((n, _)) if n > 0 && n < scratch.len() => early_upgrade(io, &sock, &scratch[..n]),
            Ok((0, _)) => return finished(io),
            Ok(_) => Early::Later(scratch.to_vec()),
            Err(Errno::AGAIN) | Err(Errno::INTR) => Early::Later(Vec::new()),
            Err(e) => {
                tracing::debug!(error = %e, "connection failed before its request");
                return finished(io);
            }
        }
    };
    match read {
        Early::Later(head) => Now::Later(sock, head),
        Early::Refused(reply) => {
            // A refusal that does not go out whole (only an error can stop
            // ~150 bytes on a new socket) ends the connection all the same.
            let _ = send_whole(&sock, &reply);
            let _ = rustix::net::shutdown(&sock, Shutdown::Write);
            finished(io)
        }
        Early::Upgraded {
            reply,
            rest,
            ip_slot,
        } => match send_whole(&sock, &reply) {
            Ok(()) => {
                handshaking(io, -1);
                ShardMetrics::add(&io.metrics().upgrades_immediate_total, 1);
                super::parked::become_conn(io, sock, ip_slot, None, &rest);
                Now::Done
            }
            Err(e) => {
                // A new socket's send buffer (at least 4.5 KiB) takes the
                // ~130-byte 101 whole unless the peer is gone already.
                tracing::debug!(error = %e, "connection failed during the upgrade");
                finished(io)
            }
        },
    }
}

/// What the request read with the accept asks for.
enum Early {
    /// Upgrade it: the 101, what followed the head, the per-IP slot.
    Upgraded {
        reply: Vec<u8>,
        rest: Vec<u8>,
        ip_slot: Option<IpSlot>,
    },
    /// An upgrade refused by [`answer_upgrade`], with its answer.
    Refused(Vec<u8>),
    /// Anything else: the connection's task takes it from these bytes.
    Later(Vec<u8>),
}

fn early_upgrade(io: &ShardIo, sock: &Socket, buf: &[u8]) -> Early {
    match handshake::parse_request(buf, &io.limits) {
        Ok(Some(Request::Upgrade {
            path,
            key,
            head_len,
            origin,
            forwarded_for,
        })) => match answer_upgrade(io, sock, None, path, key, origin, forwarded_for) {
            Ok((reply, ip_slot)) => Early::Upgraded {
                reply,
                rest: buf[head_len..].to_vec(),
                ip_slot,
            },
            Err(refusal) => Early::Refused(refusal),
        },
        _ => Early::Later(buf.to_vec()),
    }
}

/// The answer to a WebSocket upgrade request (`path` without its query,
/// as parsed): `Ok` to upgrade, with the 101 to send and the connection's
/// `--max-conns-per-ip` place; `Err` the answer refusing it (404 off
/// `--path`, or [`admit_upgrade`]'s 403/503). The upgrade task and
/// [`upgrade_now`] both answer through it.
fn answer_upgrade(
    io: &ShardIo,
    fd: &impl std::os::fd::AsFd,
    proxied: Option<std::net::IpAddr>,
    path: &str,
    key: &str,
    origin: Option<&str>,
    forwarded_for: Option<&str>,
) -> Result<(Vec<u8>, Option<IpSlot>), Vec<u8>> {
    if path != io.path {
        ShardMetrics::add(&io.metrics().http_requests_total, 1);
        return Err(handshake::http_response(
            404,
            "text/plain",
            b"Not Found\n",
            &[],
        ));
    }
    let ip_slot = admit_upgrade(io, fd, proxied, origin, forwarded_for)?;
    Ok((handshake::accept_response(key), ip_slot))
}

/// Send all of `data` now (the socket is non-blocking): an error if it
/// does not take it whole.
fn send_whole(sock: &Socket, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::net::send(sock, data, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A connection [`upgrade_now`] is done with (its socket closes as it
/// is dropped): no longer upgrading.
fn finished(io: &ShardIo) -> Now {
    handshaking(io, -1);
    Now::Done
}

/// The checks of a WebSocket upgrade before its 101 (the peer is the
/// PROXY header's source, if one was given), in this order:
/// `Origin` (403), the client address's connections (`--max-conns-per-ip`,
/// 503) and the process's upgrade rate (`--connect-rate-limit`, 503; last,
/// so that refused upgrades take no token). `Err` is the answer.
///
/// 503 with `Retry-After: 1` for both limits, as for `--max-connections`:
/// the server is full for this client now, retrying later is right, and
/// clients, proxies and load balancers already treat 503 as retryable
/// (429 would say this one client sent too many requests, which is wrong
/// for the many clients behind one NAT address).
fn admit_upgrade(
    io: &ShardIo,
    pfd: &impl std::os::fd::AsFd,
    proxied: Option<std::net::IpAddr>,
    origin: Option<&str>,
    forwarded_for: Option<&str>,
) -> Result<Option<IpSlot>, Vec<u8>> {
    let a = &io.admission;
    let m = io.metrics();
    if !a.origins.allows(origin) {
        ShardMetrics::add(&m.upgrades_refused_origin, 1);
        tracing::debug!(
            origin = origin.map(|o| o.chars().take(256).collect::<String>()),
            "origin refused"
        );
        return Err(handshake::http_response(
            403,
            "text/plain",
            b"Origin not allowed\n",
            &[],
        ));
    }
    let busy = || {
        handshake::http_response(
            503,
            "text/plain",
            b"Too many connections, retry later\n",
            &[("Retry-After", "1")],
        )
    };
    let peer = || proxied.or_else(|| peer_ip(pfd));
    let slot = match a.per_ip.as_ref().and_then(|t| Some((t, peer()?))) {
        Some((table, peer)) => {
            let ip = handshake::client_ip(peer, forwarded_for, &a.trusted_proxies);
            match table.try_take(ip) {
                Some(slot) => Some(slot),
                None => {
                    ShardMetrics::add(&m.upgrades_refused_per_ip, 1);
                    return Err(busy());
                }
            }
        }
        None => None,
    };
    if let Some(rate) = &a.rate
        && !rate.try_take(std::time::Instant::now())
    {
        ShardMetrics::add(&m.upgrades_refused_rate, 1);
        return Err(busy());
    }
    Ok(slot)
}

/// The TCP peer's address (`None` if the socket cannot tell, e.g. a
/// peer already gone: then no per-address limit applies to it).
fn peer_ip(fd: &impl std::os::fd::AsFd) -> Option<std::net::IpAddr> {
    let addr = socket2::SockRef::from(fd).peer_addr().ok()?;
    Some(addr.as_socket()?.ip())
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

/// One more (`1`) or one fewer (`-1`) connection in its HTTP upgrade.
pub(super) fn handshaking(io: &ShardIo, delta: isize) {
    io.handshaking
        .set(io.handshaking.get().saturating_add_signed(delta));
    if delta < 0
        && let Some(w) = io.upgrade_ended.take()
    {
        w.wake();
    }
    io.metrics()
        .handshaking
        .fetch_add(delta as i64, std::sync::atomic::Ordering::Relaxed);
}

pub(super) fn pfd_fd(pfd: &PollFd<Socket>) -> std::os::fd::BorrowedFd<'_> {
    use std::os::fd::AsFd;
    pfd.as_fd()
}

/// A connection counted in `handshaking` from its accept (see
/// `accept::admit`, which counts it so that a burst of accepts in one turn
/// sees the connections before it) until its upgrade ended.
pub(super) struct Upgrading<'a>(pub(super) &'a ShardIo);

impl Drop for Upgrading<'_> {
    fn drop(&mut self) {
        handshaking(self.0, -1);
    }
}
