//! Timers, driven by [`Shard::handle_timeout`] with the time passed in:
//! the authentication timeout (4001), the heartbeat (4002), the idle
//! ping and close, and the close-handshake deadline.

use std::time::{Duration, Instant};

use super::{ConnKey, Shard};
use crate::proto::close::CloseReason;
use crate::proto::stamp::Stamp;

impl<S> Shard<S> {
    /// How often [`Shard::handle_timeout`] should run: fine enough for the
    /// shortest timer.
    pub fn tick_interval(&self) -> Duration {
        let c = &self.ctx.config;
        let mut t = c
            .auth_timeout
            .min(c.heartbeat_interval)
            .min(c.close_timeout);
        if let Some(i) = c.idle_timeout {
            t = t.min(i);
        }
        if !c.drain_spread.is_zero() {
            // A drain closes its clients in steps of at most 1% of it.
            t = t.min(c.drain_spread / 25);
        }
        (t / 4).clamp(Duration::from_millis(5), Duration::from_millis(250))
    }

    /// Run every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.drain_step(now);
        let stamp = Stamp::at(now);
        for q in 0..2 {
            loop {
                let queue = if q == 0 {
                    &mut self.connect_deadlines
                } else {
                    &mut self.auth_deadlines
                };
                match queue.front() {
                    Some((d, _, _)) if stamp.reached(*d) => {}
                    _ => break,
                }
                let Some((_, key, generation)) = queue.pop_front() else {
                    break;
                };
                let Some(conn) = self.live(key, generation) else {
                    continue;
                };
                if conn.is_closing() {
                    continue;
                }
                if let Some(reason) = conn.session.poll_timeout(now) {
                    tracing::debug!(client = %conn.id, "authentication timeout");
                    self.close(key, reason, now);
                }
            }
        }
        let heartbeat_due = now >= self.next_heartbeat;
        if heartbeat_due {
            self.next_heartbeat = now + self.ctx.config.heartbeat_interval;
        }
        if !(heartbeat_due || now >= self.next_sweep) {
            return;
        }
        let c = &self.ctx.config;
        let sweep_every = c
            .idle_timeout
            .map(|i| i / 4)
            .unwrap_or(Duration::from_secs(1))
            .min(c.close_timeout / 2)
            .clamp(Duration::from_millis(5), Duration::from_secs(1));
        self.next_sweep = now + sweep_every;
        let idle = c.idle_timeout;
        let mut to_close: Vec<(ConnKey, CloseReason)> = Vec::new();
        let mut to_abort: Vec<ConnKey> = Vec::new();
        let mut to_ping: Vec<ConnKey> = Vec::new();
        for (k, conn) in self.conns.iter_mut() {
            let k = k as ConnKey;
            if conn.dead {
                continue;
            }
            if let Some(cl) = conn.closing() {
                if stamp.reached(cl.deadline) {
                    to_abort.push(k);
                }
                continue;
            }
            if heartbeat_due && conn.session.heartbeat_expired(now, &self.timeouts) {
                to_close.push((k, CloseReason::HeartbeatTimeout));
                continue;
            }
            if !conn.dirty {
                // An idle connection keeps no queue allocation.
                conn.out.release_if_empty(usize::MAX);
            }
            if let Some(idle) = idle {
                let quiet = stamp.since(conn.last_rx);
                if quiet >= idle {
                    to_close.push((k, CloseReason::IdleTimeout));
                } else if quiet >= idle / 2 && !conn.ping_sent {
                    conn.ping_sent = true;
                    to_ping.push(k);
                }
            }
        }
        for k in to_abort {
            self.abort(k);
        }
        for (k, r) in to_close {
            self.close(k, r, now);
        }
        let ping = self.ping_frame.clone();
        for k in to_ping {
            self.send_own(k, ping.clone(), now);
        }
    }
}
