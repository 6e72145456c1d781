//! The outbound side: per-connection queues of shared frames under the
//! outbound budget (`--backpressure-limit`) and the slow-client policy, the
//! encryption queue of encrypted clients, and the write protocol a driver
//! follows: [`Shard::poll_dirty`], then per connection [`Shard::transmit`]
//! → one vectored write → [`Shard::handle_written`], and
//! [`Shard::handle_flushed`] once the socket took everything.

use std::io::IoSlice;
use std::time::Instant;

use bytes::Bytes;

use super::{ConnKey, Shard};
use crate::config::SlowClientPolicy;
use crate::metrics::ShardMetrics;
use crate::proto::frame::{self, OpCode};
use crate::proto::message;

/// Most slices [`Shard::transmit`] lends at once (Linux `UIO_MAXIOV`).
pub const MAX_IOV: usize = 1024;

/// The slices of one vectored write.
pub type IoVec<'a> = smallvec::SmallVec<[IoSlice<'a>; 64]>;

impl<S> Shard<S> {
    pub(super) fn send_error(&mut self, key: ConnKey, text: &str, now: Instant) {
        let f = frame::server_frame_with(OpCode::Text, |b| message::write_error(b, text));
        if self.conns[key as usize].encrypted {
            // A message like any other: encrypted, and in order with the
            // deliveries queued before it.
            if self.push_encrypted(key, &f, now) {
                ShardMetrics::add(&self.ctx.metrics.messages_out, 1);
            }
        } else {
            self.send_own(key, f, now);
        }
    }

    /// Queue a frame without budget checks (only the close frame, which is
    /// bounded: one per connection).
    pub(super) fn enqueue(&mut self, key: ConnKey, f: Bytes) {
        let conn = &mut self.conns[key as usize];
        if conn.dead {
            return;
        }
        let m = &self.ctx.metrics;
        ShardMetrics::add(&m.messages_out, 1);
        ShardMetrics::add(&m.bytes_out, f.len() as u64);
        conn.out.push(f);
        self.mark_dirty(key);
    }

    #[inline]
    fn mark_dirty(&mut self, key: ConnKey) {
        let conn = &mut self.conns[key as usize];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Queue a frame the server itself sends (error, `connected`, ping,
    /// pong) under the same budget as deliveries: a client that floods
    /// pings or bad JSON without reading cannot grow its queue either.
    pub(super) fn send_own(&mut self, key: ConnKey, f: Bytes, now: Instant) {
        if self.push(key, &f, now) {
            let m = &self.ctx.metrics;
            ShardMetrics::add(&m.messages_out, 1);
            ShardMetrics::add(&m.bytes_out, f.len() as u64);
        }
    }

    /// Queue a delivery frame for a client, applying the outbound budget.
    /// Returns whether it was queued.
    #[inline]
    pub fn push(&mut self, key: ConnKey, f: &Bytes, now: Instant) -> bool {
        let limit = self.ctx.config.backpressure_limit;
        let conn = &mut self.conns[key as usize];
        if conn.is_closing() || conn.dead {
            ShardMetrics::add(&self.ctx.metrics.frames_dropped, 1);
            return false;
        }
        if conn.encrypted {
            return self.push_encrypted(key, f, now);
        }
        if conn.out.bytes() + f.len() > limit {
            self.over_budget(key, now);
            return false;
        }
        conn.out.push(f.clone());
        self.mark_dirty(key);
        true
    }

    /// The slow-client policy for a frame that does not fit.
    fn over_budget(&mut self, key: ConnKey, now: Instant) {
        match self.ctx.config.slow_client {
            SlowClientPolicy::Drop => {
                ShardMetrics::add(&self.ctx.metrics.frames_dropped, 1);
            }
            SlowClientPolicy::Close => {
                ShardMetrics::add(&self.ctx.metrics.slow_clients_closed, 1);
                ShardMetrics::add(&self.ctx.metrics.frames_dropped, 1);
                self.close(key, crate::proto::close::CloseReason::SlowClient, now);
            }
        }
    }

    /// An encrypted client's message leaves the shared-frame path: it is
    /// queued (as the shared frame, a refcount) for the shard's encryption
    /// queue, which encrypts it for this client alone. The budget counts
    /// it from now.
    #[inline(never)]
    fn push_encrypted(&mut self, key: ConnKey, f: &Bytes, now: Instant) -> bool {
        let limit = self.ctx.config.backpressure_limit;
        let conn = &mut self.conns[key as usize];
        if conn.is_closing() || conn.dead {
            ShardMetrics::add(&self.ctx.metrics.frames_dropped, 1);
            return false;
        }
        let generation = conn.generation;
        let out_bytes = conn.out.bytes();
        let Some(extra) = conn.extra.as_deref_mut() else {
            return false;
        };
        if out_bytes + extra.encrypt_pending + f.len() > limit {
            self.over_budget(key, now);
            return false;
        }
        extra.encrypt_pending += f.len();
        self.encrypt_queue.push_back((key, generation, f.clone()));
        true
    }

    /// Before a connection stops taking output (close, end of input):
    /// encrypt what was accepted for it, so it goes out like a plain
    /// client's queue. The whole queue is worked off, keeping every
    /// client's order; closes are rare and queues short.
    pub(super) fn encrypt_pending_of(&mut self, key: ConnKey) {
        if self
            .conns
            .get(key as usize)
            .and_then(|c| c.extra.as_ref())
            .is_some_and(|e| e.encrypt_pending > 0)
        {
            self.run_encryption(usize::MAX);
        }
    }

    /// Whether frames wait to be encrypted.
    #[inline]
    pub fn has_encryption_work(&self) -> bool {
        !self.encrypt_queue.is_empty()
    }

    /// Encrypt up to `limit` queued frames for their clients (in queue
    /// order, so each client's messages keep their order). Returns whether
    /// more are waiting.
    pub fn run_encryption(&mut self, limit: usize) -> bool {
        let m = self.ctx.metrics.clone();
        let mut scratch = std::mem::take(&mut self.encrypt_scratch);
        for _ in 0..limit {
            let Some((key, generation, f)) = self.encrypt_queue.pop_front() else {
                break;
            };
            let Some(conn) = self
                .conns
                .get_mut(key as usize)
                .filter(|c| c.generation == generation)
            else {
                continue;
            };
            let Some(extra) = conn.extra.as_deref_mut() else {
                continue;
            };
            extra.encrypt_pending = extra.encrypt_pending.saturating_sub(f.len());
            if conn.dead || extra.closing.is_some() {
                ShardMetrics::add(&m.frames_dropped, 1);
                continue;
            }
            let (Some(cipher), Some(plain)) =
                (extra.cipher.as_ref(), frame::server_frame_payload(&f))
            else {
                continue;
            };
            match cipher.encrypt_frame(plain, &mut scratch) {
                Ok(enc) => {
                    ShardMetrics::add(&m.messages_encrypted, 1);
                    ShardMetrics::add(&m.bytes_out, enc.len().saturating_sub(f.len()) as u64);
                    conn.out.push(enc);
                    self.mark_dirty(key);
                }
                Err(e) => {
                    tracing::error!(client = %conn.id, error = %e, "encryption failed; message dropped");
                    ShardMetrics::add(&m.frames_dropped, 1);
                }
            }
        }
        self.encrypt_scratch = scratch;
        !self.encrypt_queue.is_empty()
    }

    /// Whether some connection has queued output.
    #[inline]
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The connections with queued output since the last call (swapped
    /// into `into`, whose capacity is kept for the next turn).
    pub fn poll_dirty(&mut self, into: &mut Vec<ConnKey>) {
        into.clear();
        std::mem::swap(&mut self.dirty, into);
        for &k in into.iter() {
            if let Some(c) = self.conns.get_mut(k as usize) {
                c.dirty = false;
            }
        }
    }

    /// What to write to `key` now: its queue as at most [`MAX_IOV`]
    /// slices of the shared frames (the front one from where the last
    /// write stopped), filled into `iov`. Returns their total length (0:
    /// nothing to write, or the connection is finished).
    pub fn transmit<'a>(&'a self, key: ConnKey, iov: &mut IoVec<'a>) -> usize {
        iov.clear();
        let Some(conn) = self.conns.get(key as usize).filter(|c| !c.dead) else {
            return 0;
        };
        conn.out.lend(iov, MAX_IOV)
    }

    /// The socket took `n` bytes of what [`Shard::transmit`] lent.
    pub fn handle_written(&mut self, key: ConnKey, n: usize) {
        let m = &self.ctx.metrics;
        ShardMetrics::add(&m.write_calls, 1);
        ShardMetrics::add(&m.bytes_written, n as u64);
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        conn.out.written(n);
    }

    /// The socket took everything queued for `key` (call once the queue is
    /// empty, not while a write is blocked). Returns true when the driver
    /// must now shut the socket's write side: our close frame is out, so
    /// FIN tells the client nothing follows.
    pub fn handle_flushed(&mut self, key: ConnKey) -> bool {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return false;
        };
        if conn.dead || !conn.out.is_empty() {
            return false;
        }
        // The usual one-frame queue of a quiet connection: an idle
        // connection keeps no queue allocation (larger ones, of busy
        // connections, are kept until the sweep).
        conn.out.release_if_empty(0);
        let Some(&closing) = conn.closing() else {
            return false;
        };
        if conn.write_shut {
            return false;
        }
        conn.write_shut = true;
        if closing.received {
            self.abort(key);
        }
        true
    }
}
