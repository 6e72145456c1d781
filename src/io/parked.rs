//! The driver (on both back ends): after the
//! upgrade a connection is *parked* — its socket registered in a
//! shard-owned epoll instance, its task ended. The poller waits for that
//! epoll fd through compio (a POLL_ADD on io_uring, the driver's poller on
//! epoll), then `recv`s every ready connection into the shard's scratch
//! buffer and feeds the shard. An idle connection holds no task, no
//! future, no pending operation and no read buffer.

use std::rc::Rc;
use std::time::{Duration, Instant};

use compio::runtime::fd::PollFd;
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::RecvFlags;
use socket2::Socket;

use super::shard_io::{ConnSock, ShardIo};
use super::upgrade::{Readiness, upgrade};
use crate::metrics::ShardMetrics;
use crate::shard::ConnKey;

/// Bytes read from one connection before other connections get a turn.
const READ_BUDGET: usize = 256 * 1024;

/// What a parked connection's epoll entry carries: slab key and generation.
fn ep_data(key: ConnKey, generation: u32) -> epoll::EventData {
    epoll::EventData::new_u64((u64::from(generation) << 32) | u64::from(key))
}

const EP_READ: epoll::EventFlags = epoll::EventFlags::IN.union(epoll::EventFlags::RDHUP);

/// Interest of a parked connection: reads (none once the peer sent FIN:
/// its end of stream would be reported forever, level-triggered), and
/// writability while a write is blocked.
fn interest(peer_eof: bool, write_blocked: bool) -> epoll::EventFlags {
    let mut f = if peer_eof {
        epoll::EventFlags::empty()
    } else {
        EP_READ
    };
    if write_blocked {
        f |= epoll::EventFlags::OUT;
    }
    f
}

/// Set a parked connection's epoll interest from its state. A finished
/// one is left as it is: its socket is about to be dropped (a client's FIN
/// usually finishes it, and the change would be a system call per
/// disconnect for nothing).
pub(super) fn update_interest(io: &ShardIo, key: ConnKey) {
    let sh = io.shard.borrow();
    if let Some(conn) = sh.conn(key).filter(|c| !c.is_dead()) {
        let flags = interest(conn.peer_eof(), conn.sock().write_blocked);
        let _ = epoll::modify(&io.ep, conn.sock(), ep_data(key, conn.generation()), flags);
    }
}

/// One connection from its first byte: the upgrade, then parked.
pub(super) async fn conn_task(io: Rc<ShardIo>, sock: Socket, head: Vec<u8>) {
    let upgrading = super::upgrade::Upgrading(&io);
    let pfd = match PollFd::new(sock) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot register socket");
            return;
        }
    };
    let (upgraded, tls) = match io.admission.tls.clone() {
        None => (upgrade(&io, &pfd, &mut Readiness(&pfd), head).await, None),
        Some(tls) => match super::tls::accept(&io, &pfd, &tls).await {
            None => (None, None),
            Some(mut src) => {
                let u = upgrade(&io, &pfd, &mut src, head).await;
                (u, Some(src.session))
            }
        },
    };
    drop(upgrading);
    let Some(super::upgrade::Upgraded { rest, ip_slot }) = upgraded else {
        return;
    };
    let shared = compio::buf::IntoInner::into_inner(pfd);
    // Nothing is pending on the socket now: the record can own it.
    let sock = match shared.try_unwrap() {
        Ok(sock) => sock,
        Err(_) => {
            tracing::warn!("socket still shared after the upgrade; dropping the connection");
            return;
        }
    };
    become_conn(&io, sock, ip_slot, tls, &rest);
}

/// An upgraded connection becomes the shard's, with what followed its
/// request head, and is parked.
pub(super) fn become_conn(
    io: &ShardIo,
    sock: Socket,
    ip_slot: Option<super::accept::IpSlot>,
    tls: Option<Box<crate::tls::Session>>,
    rest: &[u8],
) {
    let sock = ConnSock::new(sock, ip_slot, tls);
    let (key, _) = io.with(|sh| sh.handle_upgraded(sock, rest, Instant::now()));
    park(io, key);
}

/// Register an upgraded connection in the shard's epoll. One the epoll
/// does not take is dropped.
fn park(io: &ShardIo, key: ConnKey) {
    let added = {
        let sh = io.shard.borrow();
        let Some(conn) = sh.conn(key) else {
            return;
        };
        let flags = interest(conn.peer_eof(), false);
        let r = epoll::add(&io.ep, conn.sock(), ep_data(key, conn.generation()), flags);
        if r.is_ok() {
            ShardMetrics::add(&sh.ctx.metrics.parked_total, 1);
        }
        r
    };
    if let Err(e) = added {
        tracing::warn!(error = %e, "the shard's epoll refused a connection; dropping it");
        io.with(|sh| sh.handle_io_error(key));
    }
}

/// Read and write readiness of every parked connection of the shard, from
/// the shard's epoll: level-triggered, so what one turn leaves unread (the
/// read budget) is reported again on the next.
pub async fn poller(io: Rc<ShardIo>) {
    // On the epoll back end compio takes a file out of its own epoll once
    // no wait on it is pending, and adds it back for the next wait. Adding
    // an epoll file (this shard's) into another epoll makes the kernel walk
    // every file the added one watches (its loop check): every parked
    // connection, once per wake, which made a connect storm quadratic
    // (`epoll_ctl` was 733 of the shard's 1,583 samples while 10,000
    // clients connected: `scripts/connect-profile.sh epoll`). A wait for writability, which an epoll file never
    // reports, keeps it registered: each read wait then only modifies the
    // entry. On io_uring the wait is one idle poll request.
    // (Cancelled when this future is dropped with the shard.)
    let _keep_registered = {
        let io = io.clone();
        compio::runtime::spawn(async move {
            if let Err(e) = io.ep.write_ready().await {
                tracing::debug!(error = %e, "shard epoll: the registration wait ended");
            }
        })
    };
    poll_parked(io).await
}

async fn poll_parked(io: Rc<ShardIo>) -> ! {
    let mut events: Vec<epoll::Event> = Vec::with_capacity(1024);
    loop {
        if let Err(e) = io.ep.read_ready().await {
            tracing::warn!(error = %e, "shard epoll readiness failed");
            compio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        loop {
            events.clear();
            match epoll::wait(
                &io.ep,
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
                on_ready(&io, data as u32, (data >> 32) as u32, flags);
            }
            io.after();
            if events.len() < events.capacity() {
                break;
            }
            // A full batch: let the other tasks run before the next one.
            super::tasks::yield_now().await;
        }
    }
}

/// One readiness event of a parked connection.
fn on_ready(io: &ShardIo, key: ConnKey, generation: u32, flags: epoll::EventFlags) {
    let (write_blocked, peer_eof) = {
        let sh = io.shard.borrow();
        let Some(conn) = sh.conn(key) else {
            return;
        };
        if conn.generation() != generation || conn.is_dead() {
            return;
        }
        (conn.sock().write_blocked, conn.peer_eof())
    };
    if write_blocked && flags.contains(epoll::EventFlags::OUT) {
        if let Some(c) = io.shard.borrow_mut().conn_mut(key) {
            c.sock_mut().write_blocked = false;
        }
        super::tasks::flush_one(io, key);
        update_interest(io, key);
    }
    if !peer_eof
        && flags.intersects(
            epoll::EventFlags::IN
                | epoll::EventFlags::RDHUP
                | epoll::EventFlags::HUP
                | epoll::EventFlags::ERR,
        )
    {
        read_some(io, key);
    }
}

/// Read what the socket has (up to the budget) and feed it to the shard.
fn read_some(io: &ShardIo, key: ConnKey) {
    let mut scratch = io.scratch.borrow_mut();
    let mut sh = io.shard.borrow_mut();
    let now = Instant::now();
    let mut total = 0;
    loop {
        let Some(conn) = sh.conn(key) else {
            return;
        };
        if conn.is_dead() || conn.peer_eof() {
            return;
        }
        let r = rustix::net::recv(conn.sock(), &mut scratch[..], RecvFlags::DONTWAIT);
        match r {
            Ok((0, _)) => {
                sh.handle_eof(key, now);
                drop(sh);
                // Still owed output: stop watching for reads.
                update_interest(io, key);
                return;
            }
            Ok((n, _)) => {
                if let Some(mut session) = sh.conn_mut(key).and_then(|c| c.sock_mut().take_tls()) {
                    let mut plain = io.tls_plain.borrow_mut();
                    let read = super::tls::open(io, &mut session, &scratch[..n], &mut plain);
                    if let Some(c) = sh.conn_mut(key) {
                        c.sock_mut().put_tls(session);
                    }
                    match read {
                        super::tls::Read::Failed => {
                            sh.handle_io_error(key);
                            return;
                        }
                        super::tls::Read::Data { peer_closed } => {
                            if !plain.is_empty() {
                                sh.handle_bytes(key, &plain, now);
                            }
                            if peer_closed {
                                sh.handle_eof(key, now);
                                drop((sh, plain));
                                update_interest(io, key);
                                return;
                            }
                        }
                    }
                } else {
                    sh.handle_bytes(key, &scratch[..n], now);
                }
                total += n;
                if n < scratch.len() || total >= READ_BUDGET {
                    return;
                }
                // Answer what this read asked for before the next one.
                drop(sh);
                io.after();
                sh = io.shard.borrow_mut();
            }
            Err(Errno::AGAIN) => return,
            Err(Errno::INTR) => {}
            Err(_) => {
                sh.handle_io_error(key);
                return;
            }
        }
    }
}
