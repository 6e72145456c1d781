//! Accepting TCP connections on a shard's own `SO_REUSEPORT` listener:
//! readiness + `accept4`, a task per connection for its upgrade. Past the
//! shard's connection limit a new
//! connection gets `503` and is closed; accept errors back off and are
//! logged at most once per second.

use std::io;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use compio::runtime::fd::PollFd;
use rustix::net::SendFlags;
use socket2::Socket;

use super::shard_io::ShardIo;
use crate::metrics::ShardMetrics;

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
    async fn failed(&mut self, e: &io::Error, m: &ShardMetrics) {
        ShardMetrics::add(&m.accept_errors, 1);
        if let Some(failures) = self.0.hit(Instant::now()) {
            tracing::warn!(
                error = %e,
                failures,
                "accept failed; retrying (logged at most once per second)"
            );
        }
        // EMFILE/ENFILE/ENOBUFS: back off instead of spinning.
        compio::time::sleep(ACCEPT_RETRY).await;
    }
}

/// Count an accepted connection; false (and a `503` sent, the socket to be
/// dropped) when the shard is full or shutting down.
fn admit(io: &ShardIo, m: &ShardMetrics, fd: impl AsFd) -> bool {
    ShardMetrics::add(&m.accepted_total, 1);
    if io
        .shard
        .borrow()
        .has_room_for_connection(io.handshaking.get())
    {
        return true;
    }
    ShardMetrics::add(&m.refused_total, 1);
    let _ = rustix::net::send(
        fd,
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    );
    false
}

/// Accept connections until the task is cancelled; each gets a task for
/// its upgrade, then is parked.
pub async fn accept_loop(io: Rc<ShardIo>, listener: PollFd<Socket>) {
    let m = io.metrics();
    let mut errors = AcceptErrors::default();
    loop {
        if let Err(e) = listener.accept_ready().await {
            errors.failed(&e, &m).await;
            continue;
        }
        loop {
            // Non-blocking from the start (no fcntl); TCP_NODELAY comes
            // from the listener (Linux copies it to accepted sockets).
            let accepted = rustix::net::accept_with(
                listener.as_fd(),
                rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC,
            )
            .map(Socket::from)
            .map_err(io::Error::from);
            match accepted {
                Ok(s) => {
                    if admit(&io, &m, &s) {
                        compio::runtime::spawn(super::parked::conn_task(io.clone(), s)).detach();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    errors.failed(&e, &m).await;
                    break;
                }
            }
        }
    }
}
