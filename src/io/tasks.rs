//! The shard-wide tasks every driver shares: the flusher (each dirty
//! connection's whole queue in one `sendmsg` per loop turn), the
//! encryptor (per-client encryption in batches), the ticker (timers, wall
//! clock, returning freed memory) and the command loop (the shard's
//! channel).

use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::io::Errno;
use rustix::net::{SendAncillaryBuffer, SendFlags, Shutdown};

use super::shard_io::ShardIo;
use crate::shard::IoVec;
use crate::shard::fanout::groups_with;
use crate::shard::{ConnKey, ShardCommand};

/// Write one connection's queue: everything queued, one `sendmsg` (more
/// only past `MAX_IOV` frames). A socket that does not take everything
/// is marked write-blocked and adds write interest to its epoll entry.
/// Callers run [`ShardIo::after`] afterwards.
pub fn flush_one(io: &ShardIo, key: ConnKey) {
    let mut sh = io.shard.borrow_mut();
    let Some(conn) = sh.conn(key) else {
        return;
    };
    if conn.is_dead() || conn.sock().write_blocked {
        return;
    }
    if conn.sock().is_tls() {
        return flush_tls(io, sh, key);
    }
    let mut blocked = false;
    loop {
        let mut iov = IoVec::new();
        let want = sh.transmit(key, &mut iov);
        if want == 0 {
            break;
        }
        let Some(conn) = sh.conn(key) else {
            return;
        };
        let r = rustix::net::sendmsg(
            conn.sock(),
            &iov,
            &mut SendAncillaryBuffer::default(),
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        );
        drop(iov);
        match r {
            Ok(n) => {
                sh.handle_written(key, n);
                if n < want {
                    blocked = true;
                    break;
                }
            }
            Err(Errno::AGAIN) => {
                blocked = true;
                break;
            }
            Err(Errno::INTR) => {}
            Err(_) => {
                sh.handle_io_error(key);
                return;
            }
        }
    }
    if blocked {
        let Some(conn) = sh.conn_mut(key) else {
            return;
        };
        conn.sock_mut().write_blocked = true;
        drop(sh);
        // Ask the shard's epoll for writability too.
        super::parked::update_interest(io, key);
        return;
    }
    if sh.handle_flushed(key)
        && let Some(conn) = sh.conn(key)
    {
        // Our close frame is out: FIN tells the client nothing follows.
        let _ = rustix::net::shutdown(conn.sock(), Shutdown::Write);
    }
}

/// [`flush_one`] through the TLS record layer.
fn flush_tls(
    io: &ShardIo,
    mut sh: std::cell::RefMut<'_, crate::shard::Shard<super::shard_io::ConnSock>>,
    key: ConnKey,
) {
    let Some(mut session) = sh.conn_mut(key).and_then(|c| c.sock_mut().take_tls()) else {
        return;
    };
    let flushed = super::tls::flush(io, &mut sh, key, &mut session);
    let shut = matches!(flushed, super::tls::Flushed::All) && sh.handle_flushed(key);
    let Some(conn) = sh.conn_mut(key) else {
        return;
    };
    if shut {
        // Our close frame is out: close_notify, then FIN.
        super::tls::close_notify(io, &conn.sock().sock, &mut session);
        let _ = rustix::net::shutdown(&conn.sock().sock, Shutdown::Write);
    }
    conn.sock_mut().put_tls(session);
    if matches!(flushed, super::tls::Flushed::Blocked) {
        conn.sock_mut().write_blocked = true;
        drop(sh);
        super::parked::update_interest(io, key);
    }
}

/// Write every dirty connection, once per loop turn (or, with
/// `--write-coalesce-us`, once per coalescing window).
pub async fn flusher(io: Rc<ShardIo>) {
    let mut keys: Vec<ConnKey> = Vec::new();
    let coalesce = io.shard.borrow().ctx.config.write_coalesce;
    loop {
        io.dirty().await;
        if !coalesce.is_zero() && !io.shard.borrow().is_shutting_down() {
            compio::time::sleep(coalesce).await;
        }
        io.shard.borrow_mut().poll_dirty(&mut keys);
        for &k in &keys {
            flush_one(&io, k);
        }
        io.after();
    }
}

/// How long the shard gathers changes of interest before it sends them
/// to the Redis subscriber: a connect storm then costs the control thread
/// one wake-up per millisecond and shard, not one per connection (each a
/// cross-thread wake, about 5 µs of CPU per connection in issue 16's
/// profile). A subscription takes a Redis round trip anyway.
pub const INTEREST_COALESCE: Duration = Duration::from_millis(1);

/// Report the shard's changes of interest to the Redis subscriber, at
/// most once per [`INTEREST_COALESCE`]. A barrier
/// (`Handle::settle_subscriptions`) reports what is pending at once.
pub async fn reporter(io: Rc<ShardIo>) {
    loop {
        io.interest_changed().await;
        compio::time::sleep(INTEREST_COALESCE).await;
        io.report_interest(&mut io.shard.borrow_mut());
    }
}

/// Encrypt frames for encrypted clients, at most `encrypted_batch_limit`
/// per loop turn: between batches the task yields, so a room full of
/// encrypted clients cannot starve reads, accepts and plain deliveries.
pub async fn encryptor(io: Rc<ShardIo>) {
    let limit = io.shard.borrow().ctx.config.encrypted_batch_limit;
    loop {
        io.encryption_work().await;
        let more = io.with(|sh| sh.run_encryption(limit));
        if more {
            yield_now().await;
        }
    }
}

/// Let every other ready task of the shard run once.
pub async fn yield_now() {
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

/// The wall clock in milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Run the shard's timers and keep its wall clock.
pub async fn ticker(io: Rc<ShardIo>) {
    let period = io.shard.borrow().tick_interval();
    let mut next_release = Instant::now() + RELEASE_EVERY;
    let mut churn_seen = churn(&io);
    // Queue capacity was given back and not yet handed to the system.
    let mut shrunk = false;
    loop {
        let now = Instant::now();
        io.shard.borrow_mut().set_wall_clock(now, unix_ms());
        compio::time::sleep(period).await;
        let now = Instant::now();
        io.with(|sh| sh.handle_timeout(now));
        if now >= next_release {
            next_release = now + RELEASE_EVERY;
            // TLS connections idle for a whole period drop their keys.
            let keys_freed = io.admission.tls.is_some() && super::tls::release_idle(&io);
            // After connections came or went (or idle keys were dropped),
            // once no upgrade is running.
            shrunk |= io.shard.borrow_mut().shrink_buffers();
            let c = churn(&io);
            if (c != churn_seen || keys_freed || shrunk) && io.handshaking.get() == 0 {
                churn_seen = c;
                shrunk = false;
                crate::mem::release_free_memory();
            }
        }
    }
}

/// How often a shard may hand freed memory back (see
/// [`crate::mem::release_free_memory`]).
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
    // Consecutive deliveries to the same recipients (a burst to a room)
    // are applied as one run: one visit per recipient.
    let mut run: Vec<crate::delivery::Delivery> = Vec::new();
    while let Ok(cmd) = rx.recv_async().await {
        let now = Instant::now();
        io.with(|sh| {
            let mut cmd = Some(cmd);
            for _ in 0..256 {
                let Some(c) = cmd.take().or_else(|| rx.try_recv().ok()) else {
                    break;
                };
                let c = match c {
                    ShardCommand::Deliver(d) if groups_with(&d, &d) => {
                        if run.first().is_some_and(|r| !groups_with(r, &d)) {
                            sh.handle_deliveries(&mut run, now);
                        }
                        run.push(d);
                        continue;
                    }
                    c => c,
                };
                sh.handle_deliveries(&mut run, now);
                // What came before a barrier is reported before it is
                // answered (`Handle::settle_subscriptions`).
                if matches!(c, ShardCommand::Barrier(_)) {
                    io.report_interest(sh);
                }
                sh.handle_command(c, now);
            }
            sh.handle_deliveries(&mut run, now);
        });
    }
}
