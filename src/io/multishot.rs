//! The io_uring multishot driver (`--io-uring-recv multishot`): each
//! connection keeps a task and a multishot receive into the shard's
//! provided-buffer ring (the kernel picks a buffer only when data
//! arrives); writes are the same coalesced `sendmsg` as the parked
//! driver's.

use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use compio::driver::ToSharedFd;
use compio::runtime::fd::PollFd;

use super::shard_io::{ConnSock, ShardIo};
use super::upgrade::{Multishot, is_no_buffers, upgrade};
use crate::metrics::ShardMetrics;

/// Bytes read per multishot completion at most (0: the ring's buffer
/// size).
const RECV_LEN: usize = 0;

/// One io_uring connection, from its first byte to its end.
pub(super) async fn conn_task(io: Rc<ShardIo>, mut stream: compio::net::TcpStream) {
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
    let rest = {
        let mut src = Multishot {
            rx: &mut rx,
            pfd: &pfd,
        };
        upgrade(&io, &pfd, &mut src).await
    };
    let Some(rest) = rest else {
        return;
    };
    let sock = ConnSock::Task {
        fd: shared,
        write_blocked: false,
        waker: None,
    };
    let (key, _) = io.with(|sh| sh.handle_upgraded(sock, &rest, Instant::now()));
    let generation = io.shard.borrow().conn(key).map(|c| c.generation());
    drop(rest);
    // Set while the ring was empty: wait for readability before re-arming.
    let mut starved = false;
    poll_fn(|cx| {
        loop {
            let (write_blocked, peer_eof) = {
                let mut sh = io.shard.borrow_mut();
                let Some(conn) = sh
                    .conn_mut(key)
                    .filter(|c| Some(c.generation()) == generation && !c.is_dead())
                else {
                    return Poll::Ready(());
                };
                let (write_blocked, peer_eof) = (conn.sock().write_blocked(), conn.peer_eof());
                if let ConnSock::Task { waker, .. } = conn.sock_mut()
                    && !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
                {
                    *waker = Some(Box::new(cx.waker().clone()));
                }
                (write_blocked, peer_eof)
            };
            if write_blocked {
                match pfd.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        if let Some(c) = io.shard.borrow_mut().conn_mut(key) {
                            c.sock_mut().set_write_blocked(false);
                        }
                        super::tasks::flush_one(&io, key);
                        io.after();
                        continue;
                    }
                    Poll::Ready(Err(_)) => {
                        io.with(|sh| sh.handle_io_error(key));
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
                    io.with(|sh| sh.handle_bytes(key, &b, Instant::now()));
                    continue;
                }
                Poll::Ready(Some(Err(e))) if is_no_buffers(&e) => {
                    ShardMetrics::add(&io.metrics().recv_ring_empty, 1);
                    starved = true;
                    continue;
                }
                Poll::Ready(Some(Err(_)) | None) => {
                    io.with(|sh| sh.handle_eof(key, Instant::now()));
                    continue;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    drop(pfd);
}
