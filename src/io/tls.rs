//! TLS in the driver (`--tls-cert`): the handshake of a new connection,
//! the `Source` its HTTP upgrade reads through, and, once it is a shard
//! connection, the record layer between the shard's queue and the socket
//! (`flush`: the shared frames are sealed at flush, many per record, into
//! the shard's one output buffer; `open`: bytes read are opened into the
//! shard's one plaintext buffer). The record layer itself is
//! sans-io, in [`crate::tls`].

use std::io;

use compio::runtime::fd::PollFd;
use rustix::io::Errno;
use rustix::net::{SendFlags, Shutdown};
use socket2::Socket;

use super::shard_io::ShardIo;
use super::upgrade::{Source, pfd_fd, read_more, write_all};
use crate::metrics::ShardMetrics;
use crate::shard::{ConnKey, IoVec};
use crate::tls::handshake::{MAX_HANDSHAKE_INPUT, Step};
use crate::tls::{Handshake, Session, TlsError};

/// Plaintext sealed per connection per write: the rest stays in the
/// shard's queue, where the slow-client policy sees it.
const SEAL_BUDGET: usize = 64 * 1024;

/// One TLS handshake in progress on this shard (given back on drop).
struct HandshakeSlot<'a>(&'a ShardIo);

impl<'a> HandshakeSlot<'a> {
    /// A slot under `--tls-max-handshakes`, if one is free.
    fn take(io: &'a ShardIo) -> Option<HandshakeSlot<'a>> {
        if io.tls_handshaking.get() >= io.tls_max_handshakes {
            return None;
        }
        io.tls_handshaking.set(io.tls_handshaking.get() + 1);
        io.metrics()
            .tls_handshaking
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(HandshakeSlot(io))
    }
}

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        let n = &self.0.tls_handshaking;
        n.set(n.get().saturating_sub(1));
        self.0
            .metrics()
            .tls_handshaking
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why a handshake did not complete.
enum Failed {
    /// `--tls-max-handshakes` were under way.
    Refused,
    Io(io::Error),
}

impl From<io::Error> for Failed {
    fn from(e: io::Error) -> Failed {
        Failed::Io(e)
    }
}

/// The TLS handshake of a new connection (with the PROXY header before
/// it under `--proxy-protocol`), within `--handshake-timeout-ms`. `None`:
/// refused, failed or timed out (counted), and the connection is done.
pub(super) async fn accept<'a>(
    io: &ShardIo,
    pfd: &'a PollFd<Socket>,
    tls: &crate::tls::Tls,
) -> Option<TlsSource<'a>> {
    let m = io.metrics();
    let r = Box::pin(compio::time::timeout(
        io.handshake_timeout,
        handshake(io, pfd, tls.server_config()),
    ))
    .await;
    match r {
        Ok(Ok(src)) => {
            ShardMetrics::add(&m.tls_handshakes, 1);
            Some(src)
        }
        Ok(Err(Failed::Refused)) => {
            ShardMetrics::add(&m.tls_handshakes_refused, 1);
            None
        }
        Ok(Err(Failed::Io(e))) => {
            ShardMetrics::add(&m.tls_handshake_errors, 1);
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            ShardMetrics::add(&m.tls_handshake_errors, 1);
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// The handshake. Its slot under `--tls-max-handshakes` is taken when the
/// ClientHello begins to arrive (the work starts then): a connection that
/// sends nothing holds no slot, only its place under `--max-connections`
/// until `--handshake-timeout-ms`.
async fn handshake<'a>(
    io: &ShardIo,
    pfd: &'a PollFd<Socket>,
    config: std::sync::Arc<rustls::ServerConfig>,
) -> Result<TlsSource<'a>, Failed> {
    let mut raw = Vec::new();
    let mut proxied = None;
    if io.admission.proxy_protocol {
        loop {
            read_or_eof(io, pfd, &mut raw, io.limits.max_head_bytes).await?;
            match crate::proto::handshake::parse_proxy_v2(&raw) {
                Ok(None) => continue,
                Ok(Some((len, source))) => {
                    raw.drain(..len);
                    proxied = Some(source);
                    break;
                }
                Err(e) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()).into());
                }
            }
        }
    }
    if raw.is_empty() {
        read_or_eof(io, pfd, &mut raw, MAX_HANDSHAKE_INPUT).await?;
    }
    let _slot = HandshakeSlot::take(io).ok_or(Failed::Refused)?;
    let mut hs = Handshake::new(config).map_err(tls_err)?;
    let mut out = Vec::new();
    loop {
        if !raw.is_empty() {
            hs.feed(&raw).map_err(tls_err)?;
            raw.clear();
        }
        let step = hs.step(&mut out).map_err(tls_err)?;
        if !out.is_empty() {
            write_all(pfd, &out).await?;
            out.clear();
        }
        if step == Step::Done {
            break;
        }
        read_or_eof(io, pfd, &mut raw, MAX_HANDSHAKE_INPUT).await?;
    }
    let (session, plain) = hs.finish().map_err(tls_err)?;
    Ok(TlsSource {
        pfd,
        session: Box::new(session),
        plain,
        proxied,
    })
}

/// [`read_more`], with the peer's end of stream as an error: a handshake
/// cannot end there.
async fn read_or_eof(
    io: &ShardIo,
    pfd: &PollFd<Socket>,
    raw: &mut Vec<u8>,
    limit: usize,
) -> io::Result<()> {
    if read_more(io, pfd, raw, limit).await? {
        Ok(())
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}

fn tls_err(e: TlsError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// TLS over the socket, for the HTTP upgrade.
pub(super) struct TlsSource<'a> {
    pfd: &'a PollFd<Socket>,
    pub(super) session: Box<Session>,
    /// Decrypted during the handshake, not yet given out.
    plain: Vec<u8>,
    proxied: Option<Option<std::net::IpAddr>>,
}

impl Source for TlsSource<'_> {
    async fn more(&mut self, io: &ShardIo, buf: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
        if !self.plain.is_empty() {
            buf.append(&mut self.plain);
            self.plain = Vec::new();
            return Ok(true);
        }
        loop {
            let mut raw = Vec::new();
            if !read_more(io, self.pfd, &mut raw, limit).await? {
                return Ok(false);
            }
            let before = buf.len();
            let opened = self.session.open(&raw, buf).map_err(tls_err)?;
            if buf.len() > before {
                return Ok(true);
            }
            if opened.peer_closed {
                return Ok(false);
            }
        }
    }

    async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let mut out = Vec::new();
        self.session.seal_all(data, &mut out).map_err(tls_err)?;
        write_all(self.pfd, &out).await
    }

    async fn finish(&mut self) {
        let mut out = Vec::new();
        if self.session.seal_close_notify(&mut out).is_ok() {
            let _ = write_all(self.pfd, &out).await;
        }
        let _ = rustix::net::shutdown(pfd_fd(self.pfd), Shutdown::Write);
    }

    fn proxied(&self) -> Option<Option<std::net::IpAddr>> {
        self.proxied
    }
}

/// What [`open`] found.
pub(super) enum Read {
    /// Plaintext (maybe none) is in `io.tls_plain`.
    Data { peer_closed: bool },
    /// The connection cannot go on (counted).
    Failed,
}

/// Open `bytes` read from a TLS connection into `io.tls_plain`.
pub(super) fn open(io: &ShardIo, session: &mut Session, bytes: &[u8], plain: &mut Vec<u8>) -> Read {
    plain.clear();
    match session.open(bytes, plain) {
        Ok(o) => Read::Data {
            peer_closed: o.peer_closed,
        },
        Err(e) => {
            ShardMetrics::add(&io.metrics().tls_record_errors, 1);
            tracing::debug!(error = %e, "TLS connection failed");
            Read::Failed
        }
    }
}

/// How a TLS flush ended.
pub(super) enum Flushed {
    /// Everything queued went out.
    All,
    /// The socket took part of it: wait for writability.
    Blocked,
    /// The connection failed (the shard was told).
    Failed,
}

/// Write a TLS connection's queue: what was sealed before first, then the
/// queue sealed [`SEAL_BUDGET`] at a time into the shard's output buffer,
/// one `send` each. What the socket does not take is kept in the session
/// (at most one budget's worth); the rest stays in the shard's queue.
pub(super) fn flush(
    io: &ShardIo,
    sh: &mut crate::shard::Shard<super::shard_io::ConnSock>,
    key: ConnKey,
    session: &mut Session,
) -> Flushed {
    let mut out = io.tls_out.borrow_mut();
    loop {
        if !session.pending.is_empty() {
            let Some(conn) = sh.conn(key) else {
                return Flushed::Failed;
            };
            match send_some(conn.sock(), &session.pending) {
                Ok(n) if n == session.pending.len() => session.pending = Vec::new(),
                Ok(n) => {
                    session.pending.drain(..n);
                    return Flushed::Blocked;
                }
                Err(Errno::AGAIN) => return Flushed::Blocked,
                Err(_) => {
                    sh.handle_io_error(key);
                    return Flushed::Failed;
                }
            }
        }
        out.clear();
        let took = {
            let mut iov = IoVec::new();
            if sh.transmit(key, &mut iov) == 0 {
                return Flushed::All;
            }
            session.seal(&iov, SEAL_BUDGET, &mut out)
        };
        let took = match took {
            Ok(n) => n,
            Err(e) => {
                ShardMetrics::add(&io.metrics().tls_record_errors, 1);
                tracing::debug!(error = %e, "TLS connection failed");
                sh.handle_io_error(key);
                return Flushed::Failed;
            }
        };
        sh.handle_written(key, took);
        let Some(conn) = sh.conn(key) else {
            return Flushed::Failed;
        };
        match send_some(conn.sock(), &out) {
            Ok(n) if n == out.len() => {}
            Ok(n) => {
                session.pending.extend_from_slice(&out[n..]);
                return Flushed::Blocked;
            }
            Err(Errno::AGAIN) => {
                session.pending.extend_from_slice(&out);
                return Flushed::Blocked;
            }
            Err(_) => {
                sh.handle_io_error(key);
                return Flushed::Failed;
            }
        }
    }
}

/// close_notify, best effort (the socket's write side shuts next).
pub(super) fn close_notify(io: &ShardIo, fd: impl std::os::fd::AsFd, session: &mut Session) {
    let mut out = io.tls_out.borrow_mut();
    out.clear();
    if session.seal_close_notify(&mut out).is_ok() {
        let _ = send_some(fd, &out);
    }
}

/// `send` until done, the socket is full (returns what it took) or an
/// error.
fn send_some(fd: impl std::os::fd::AsFd, data: &[u8]) -> Result<usize, Errno> {
    let mut off = 0;
    while off < data.len() {
        match rustix::net::send(&fd, &data[off..], SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
            Ok(n) => off += n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) if off > 0 => return Ok(off),
            Err(e) => return Err(e),
        }
    }
    Ok(off)
}

/// Drop the expanded keys and buffers of TLS connections idle since the
/// last sweep; whether any were.
pub(super) fn release_idle(io: &ShardIo) -> bool {
    let mut freed = false;
    io.shard.borrow_mut().for_each_sock(|s| {
        if let Some(t) = s.tls_mut() {
            freed |= t.release_idle();
        }
    });
    freed
}
