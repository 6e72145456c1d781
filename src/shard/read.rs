//! The read path: bytes in, frames decoded, messages dispatched to the
//! session; the client's FIN; the rate limit; the client's close frame.

use std::time::Instant;

use bytes::BytesMut;

use super::conn::{Closing, ReadState};
use super::{ConnExtra, ConnKey, Event, HookCall, Shard};
use crate::hooks;
use crate::metrics::ShardMetrics;
use crate::proto::close::CloseReason;
use crate::proto::encryption;
use crate::proto::frame::{self, Message, OpCode};
use crate::proto::message;
use crate::proto::session::Action;
use crate::proto::stamp::Stamp;

/// The spare read buffer keeps at most this much capacity between uses.
const SPARE_READ_CAPACITY: usize = 64 * 1024;

impl<S> Shard<S> {
    /// Bytes read from a connection.
    pub fn handle_bytes(&mut self, key: ConnKey, data: &[u8], now: Instant) {
        let _span = self.conn_span(key).entered();
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.dead {
            return;
        }
        conn.last_rx = Stamp::at(now);
        conn.ping_sent = false;
        if conn.discards_input() {
            return;
        }
        self.decode(key, data, now);
    }

    /// Decode what is buffered for `key` plus `data`, dispatching each
    /// message, until the input runs out, the connection ends, or a call
    /// to user code is awaited (see [`super::Conn`]'s `awaiting`).
    pub(super) fn decode(&mut self, key: ConnKey, data: &[u8], now: Instant) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        // The connection's read state, or the shard's spare one: a
        // connection keeps its own only while a frame or fragmented message
        // is incomplete (or input waits for an answer).
        let max = self.ctx.config.max_payload;
        let mut st = conn
            .read
            .take()
            .or_else(|| self.spare_read.take())
            .unwrap_or_else(|| Box::new(ReadState::new(max)));
        st.rbuf.extend_from_slice(data);
        loop {
            match self.conns.get(key as usize) {
                Some(c) if !c.dead && !c.awaiting && !c.discards_input() => {}
                _ => {
                    // Nothing more is decoded; what stays buffered is
                    // dropped below unless an answer is awaited.
                    break;
                }
            }
            match st.decoder.decode(&mut st.rbuf) {
                Ok(Some(msg)) => self.on_message(key, msg, now),
                Ok(None) => break,
                Err(e) => {
                    st.rbuf.clear();
                    st.decoder.reset();
                    self.close(key, CloseReason::Frame(e), now);
                    self.discard_input(key);
                    break;
                }
            }
        }
        match self.conns.get_mut(key as usize) {
            Some(conn)
                if !conn.dead
                    && !conn.discards_input()
                    && (!st.rbuf.is_empty() || !st.decoder.is_idle()) =>
            {
                conn.read = Some(st);
            }
            _ => {
                st.rbuf.clear();
                st.decoder.reset();
                if st.rbuf.capacity() > SPARE_READ_CAPACITY {
                    st.rbuf = BytesMut::new();
                }
                self.spare_read = Some(st);
            }
        }
    }

    /// Nothing more the client sends is looked at (it is being closed).
    fn discard_input(&mut self, key: ConnKey) {
        if let Some(c) = self
            .conns
            .get_mut(key as usize)
            .and_then(|c| c.closing_mut())
        {
            c.discard_input = true;
        }
    }

    /// An answer to a call of user code arrived for a live connection:
    /// `finish` applies a ready result, then the input that waited for the
    /// answer is decoded.
    pub(super) fn answered<T>(
        &mut self,
        key: ConnKey,
        generation: u32,
        answer: super::Answer<T>,
        now: Instant,
        finish: impl FnOnce(&mut Self, T),
    ) {
        if self.live(key, generation).is_none() {
            return;
        }
        if let super::Answer::Ready(v) = answer {
            finish(self, v);
        }
        self.resume_input(key, now);
    }

    /// Decode the input that waited for an answer.
    fn resume_input(&mut self, key: ConnKey, now: Instant) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if !conn.awaiting {
            return;
        }
        conn.awaiting = false;
        if conn.dead || conn.read.is_none() || conn.discards_input() {
            return;
        }
        self.decode(key, &[], now);
    }

    /// End of input from the client (TCP FIN). It sends nothing more, but
    /// what is owed to it — the echo of its close frame, replies to what it
    /// sent just before, the close after a protocol error — is written
    /// first (RFC 6455 §5.5.1: a received close MUST be answered), within
    /// `close_timeout`; then the connection is dropped. Nothing new is
    /// queued for it.
    pub fn handle_eof(&mut self, key: ConnKey, now: Instant) {
        let _span = self.conn_span(key).entered();
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.dead || conn.peer_eof {
            return;
        }
        self.encrypt_pending_of(key);
        let deadline = Stamp::at(now).after(self.ctx.config.close_timeout);
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.out.is_empty() {
            self.abort(key);
            return;
        }
        conn.peer_eof = true;
        conn.read = None;
        match conn.closing_mut() {
            Some(c) => {
                c.received = true;
                c.discard_input = true;
            }
            None => {
                conn.set_closing(Closing {
                    deadline,
                    received: true,
                    discard_input: true,
                });
            }
        }
    }

    fn on_message(&mut self, key: ConnKey, msg: Message, now: Instant) {
        if !matches!(msg, Message::Close(_)) && self.over_rate(key, now) {
            return;
        }
        let m = &self.ctx.metrics;
        match msg {
            Message::Text(payload) | Message::Binary(payload) => {
                ShardMetrics::add(&m.messages_in, 1);
                ShardMetrics::add(&m.bytes_in, payload.len() as u64);
                if self.conns[key as usize].is_closing() {
                    return;
                }
                self.on_data(key, &payload, now, false);
            }
            Message::Ping(payload) => {
                let pong = frame::server_frame(OpCode::Pong, &payload);
                self.send_own(key, pong, now);
            }
            Message::Pong(_) => {}
            Message::Close(cf) => self.on_close_frame(key, cf, now),
        }
    }

    /// Count one message against `--client-max-msgs-per-sec`; true if it is
    /// over (the client is then being closed with 1008, or already was).
    fn over_rate(&mut self, key: ConnKey, now: Instant) -> bool {
        let limit = self.ctx.config.client_max_msgs_per_sec;
        let conn = &mut self.conns[key as usize];
        if limit == 0 {
            return false;
        }
        let second = Stamp::at(now).seconds();
        if conn.rate_window != second {
            conn.rate_window = second;
            conn.rate_count = 0;
        }
        conn.rate_count = conn.rate_count.saturating_add(1);
        if conn.rate_count <= limit {
            return false;
        }
        if conn.rate_count == limit + 1 && !conn.is_closing() {
            tracing::debug!(client = %conn.id, limit, "message rate limit exceeded");
            ShardMetrics::add(&self.ctx.metrics.rate_limited, 1);
            self.close(key, CloseReason::RateLimited, now);
            self.discard_input(key);
        }
        true
    }

    fn on_close_frame(&mut self, key: ConnKey, cf: Option<frame::CloseFrame>, now: Instant) {
        let conn = &mut self.conns[key as usize];
        match conn.closing_mut() {
            Some(c) => {
                // The reply to our close: the handshake is complete.
                c.received = true;
                if conn.write_shut {
                    self.abort(key);
                }
            }
            None => {
                // Echo the client's code (RFC 6455 §5.5.1).
                let mut buf = BytesMut::new();
                match &cf {
                    Some(cf) => {
                        frame::encode_close(&mut buf, cf.code, cf.reason_str(), None);
                    }
                    None => frame::encode_frame(&mut buf, true, OpCode::Close, &[], None),
                }
                conn.set_closing(Closing {
                    deadline: Stamp::at(now).after(self.ctx.config.close_timeout),
                    received: true,
                    discard_input: true,
                });
                conn.read = None;
                let f = buf.freeze();
                self.enqueue(key, f);
            }
        }
    }

    /// One data message (text, or binary treated as text like the
    /// reference's `message.toString()`). `decrypted`: `payload` came out
    /// of an `encrypted` message (which may not nest).
    fn on_data(&mut self, key: ConnKey, payload: &[u8], now: Instant, decrypted: bool) {
        let mut buf = std::mem::take(&mut self.json_buf);
        // Taken out while the message is handled (`take` of the field
        // itself would build new buffers, three allocations, per message).
        let mut buffers = self.json_buffers.take().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(payload);
        let mut inbound: Option<Result<Vec<u8>, encryption::EncryptionError>> = None;
        'msg: {
            let parsed = message::parse(&mut buf, &mut buffers);
            let conn = &mut self.conns[key as usize];
            if conn.encrypted
                && let message::ClientMessage::Custom { event, data, .. } = &parsed
                && event == message::ENCRYPTED_EVENT
            {
                conn.session.touch(now);
                inbound = Some(if decrypted {
                    Err(encryption::EncryptionError::Shape)
                } else {
                    open_inbound(conn.extra.as_deref(), data.as_ref())
                });
                break 'msg;
            }
            let was = conn.session.state();
            let action = conn.session.handle_message(parsed, now, &self.timeouts);
            match action {
                Action::None => {}
                Action::Error(text) => self.send_error(key, text, now),
                Action::Authenticate(data) => {
                    let data = message::to_json(&data);
                    self.start_auth(key, was, data);
                }
                Action::Join(rooms) => self.start_join(key, rooms),
                Action::Leave(rooms) => self.leave(key, &rooms),
                Action::Custom { event, data, id } => {
                    if self.ctx.wants_messages {
                        let conn = &self.conns[key as usize];
                        let msg = hooks::Message {
                            client_id: conn.id.to_string(),
                            user_id: conn.user.as_deref().map(str::to_owned),
                            event: event.into_owned(),
                            data: data.as_ref().map(message::to_json),
                            id: id.map(|s| s.into_owned()),
                        };
                        self.events.push_back(Event::Hook(HookCall::Message(msg)));
                    } else {
                        tracing::debug!(event = %event, "no message hook for custom event; dropped");
                    }
                }
            }
        }
        self.json_buf = buf;
        self.json_buffers = Some(buffers);
        match inbound {
            None => {}
            Some(Ok(plain)) => self.on_data(key, &plain, now, true),
            Some(Err(e)) => {
                ShardMetrics::add(&self.ctx.metrics.decrypt_failures, 1);
                tracing::debug!(client = %self.conns[key as usize].id, error = %e, "encrypted message dropped");
                self.send_error(key, message::error_text::DECRYPTION_FAILED, now);
            }
        }
    }
}

/// Decrypt an inbound `{"event":"encrypted","data":{"iv","ct"}}` of an
/// encrypted client into the inner message's bytes.
fn open_inbound(
    extra: Option<&ConnExtra>,
    data: Option<&simd_json::borrowed::Value<'_>>,
) -> Result<Vec<u8>, encryption::EncryptionError> {
    let cipher = extra
        .and_then(|e| e.cipher.as_ref())
        .ok_or(encryption::EncryptionError::Shape)?;
    let (iv, ct) = message::encrypted_parts(data).ok_or(encryption::EncryptionError::Shape)?;
    cipher.open(iv, ct)
}
