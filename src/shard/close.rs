//! Ending connections. The words: *close* starts the closing handshake
//! (our close frame after what is queued, then the client's reply or the
//! close deadline); *abort* ends a connection at once, with nothing more
//! written ([`super::Event::Closed`]); the driver then drops the socket
//! and *removes* the record ([`Shard::remove`]). Shutdown closes everyone
//! with 1001.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::BytesMut;

use super::conn::Closing;
use super::{ConnKey, Event, Shard};
use crate::metrics::ShardMetrics;
use crate::proto::close::CloseReason;
use crate::proto::frame;
use crate::proto::stamp::Stamp;

impl<S> Shard<S> {
    /// Start the closing handshake with `reason`: queue the close frame
    /// after what is already queued (for a slow client: instead of it), stop
    /// queuing anything else, abort the connection after `close_timeout`.
    pub fn close(&mut self, key: ConnKey, reason: CloseReason, now: Instant) {
        let _span = self.conn_span(key).entered();
        let deadline = Stamp::at(now).after(self.ctx.config.close_timeout);
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.is_closing() || conn.dead {
            return;
        }
        if !matches!(reason, CloseReason::SlowClient) {
            self.encrypt_pending_of(key);
        }
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let (code, text) = reason.wire();
        if matches!(reason, CloseReason::SlowClient) {
            // Keep only a partly written front frame: the stream must stay
            // well-framed for the close frame to be readable.
            conn.out.keep_partial_front();
        }
        if matches!(reason, CloseReason::AuthTimeout) {
            ShardMetrics::add(&self.ctx.metrics.auth_timeouts, 1);
        }
        tracing::debug!(client = %conn.id, code, reason = text, "closing");
        self.ctx.metrics.close_sent(code);
        conn.set_closing(Closing {
            deadline,
            received: false,
            discard_input: false,
        });
        let mut buf = BytesMut::with_capacity(4 + text.len());
        frame::encode_close(&mut buf, code, text, None);
        let f = buf.freeze();
        self.enqueue(key, f);
    }

    /// End the connection now: nothing more is written or read; the driver
    /// is told to drop it ([`Event::Closed`]).
    pub(super) fn abort(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(key as usize)
            && !conn.dead
        {
            conn.dead = true;
            conn.out.clear();
            self.events.push_back(Event::Closed(key));
        }
    }

    /// The socket failed (reset, or any error but "try again"): the
    /// connection is aborted.
    pub fn handle_io_error(&mut self, key: ConnKey) {
        self.abort(key);
    }

    /// Close every client with 1001 after what is queued for it: all at
    /// once, or spread evenly over `--drain-spread-ms` (continued by
    /// [`Shard::handle_timeout`]).
    pub(super) fn begin_shutdown(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        let keys: VecDeque<(ConnKey, u32)> = self
            .conns
            .iter()
            .map(|(k, c)| (k as ConnKey, c.generation))
            .collect();
        let total = keys.len();
        self.drain = Some(Drain {
            start: now,
            spread: self.ctx.config.drain_spread,
            keys,
            total,
        });
        self.drain_step(now);
    }

    /// Close the clients whose turn in the drain has come.
    pub(super) fn drain_step(&mut self, now: Instant) {
        let Some(d) = &mut self.drain else {
            return;
        };
        let elapsed = now.saturating_duration_since(d.start);
        let due = if elapsed >= d.spread {
            d.total
        } else {
            // The first client goes at once, the last at the end.
            (d.total as u128 * elapsed.as_nanos() / d.spread.as_nanos()) as usize + 1
        };
        let mut closed = d.total - d.keys.len();
        let mut batch = Vec::new();
        while closed < due {
            let Some(k) = d.keys.pop_front() else { break };
            batch.push(k);
            closed += 1;
        }
        if d.keys.is_empty() {
            self.drain = None;
        }
        for (k, generation) in batch {
            if self.live(k, generation).is_some() {
                self.close(k, CloseReason::Shutdown, now);
            }
        }
    }
}

/// A drain in progress: the clients still to close, in order.
pub(super) struct Drain {
    start: Instant,
    spread: std::time::Duration,
    keys: VecDeque<(ConnKey, u32)>,
    total: usize,
}
