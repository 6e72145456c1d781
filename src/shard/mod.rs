//! One core's world: the connections a shard owns (in a slab), their
//! protocol sessions, the room and user indexes, and fan-out. Still no
//! syscalls of its own: the I/O layer feeds bytes and commands in, and
//! writes out what the shard queued (each connection's `out` queue, listed
//! in `dirty`).
//!
//! Call order for the I/O layer: [`Shard::register`] after the upgrade;
//! [`Shard::on_bytes`] for what was read; [`Shard::handle_command`] for what
//! arrived on the shard's channel; [`Shard::on_tick`] periodically; then
//! write every connection in [`Shard::take_dirty`]; [`Shard::remove`] when a
//! connection's task ends (it ends when [`Conn::dead`] is set).

pub mod fanout;
pub mod index;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use slab::Slab;
use smallvec::SmallVec;

use crate::auth::{
    AuthError, AuthRequest, AuthResult, Authenticator, Identity, JoinRequest, RoomValidator,
};
use crate::config::{Config, EncryptionMode, SlowClientPolicy};
use crate::control::{ControlHandle, Inline};
use crate::delivery::{ClientId, Delivery};
use crate::hooks::{self, Hooks};
use crate::metrics::ShardMetrics;
use crate::proto::close::CloseReason;
use crate::proto::encryption::{self, Cipher};
use crate::proto::frame::{self, Message, MessageDecoder, OpCode, Role};
use crate::proto::message::{self, Buffers, Connected};
use crate::proto::session::{Action, AuthStep, Session, State, Timeouts, Verdict};
use crate::proto::stamp::Stamp;

pub use index::{ConnKey, RoomId};

/// What arrives on a shard's channel.
#[derive(Debug)]
pub enum ShardCommand {
    /// A message for local recipients.
    Deliver(Delivery),
    /// An authenticator that had to wait finished (on the control thread).
    AuthDone {
        key: ConnKey,
        generation: u32,
        result: AuthResult,
    },
    /// A room validator that had to wait finished.
    JoinDone {
        key: ConnKey,
        generation: u32,
        requested: Vec<String>,
        allowed: Vec<String>,
    },
    /// Close every client with 1001 after flushing, then stop.
    Shutdown,
    /// Answer once every earlier command has been handled.
    Barrier(flume::Sender<()>),
}

/// What a shard shares with the rest of the process (read-only).
pub struct ShardCtx {
    pub index: usize,
    pub config: Arc<Config>,
    pub authenticator: Arc<dyn Authenticator>,
    pub room_validator: Option<Arc<dyn RoomValidator>>,
    pub hooks: Arc<dyn Hooks>,
    pub control: ControlHandle,
    pub metrics: Arc<ShardMetrics>,
    /// This shard's own channel, for results coming back from the control
    /// thread.
    pub self_tx: flume::Sender<ShardCommand>,
    /// Connection limit of this shard.
    pub max_conns: usize,
}

/// What authentication left behind that is rarely needed: kept out of line
/// so an idle connection stays small.
#[derive(Debug, Default)]
pub struct ConnExtra {
    pub metadata: Option<serde_json::Value>,
    pub room_patterns: Option<Vec<String>>,
    /// `authenticate.data.publicKey`, kept until the authenticator answers.
    pub client_key: ClientKey,
    /// The client's AES-256-GCM key once the handshake succeeded (erased
    /// when the connection is dropped).
    pub cipher: Option<Cipher>,
    /// Bytes of frames waiting in the shard's encryption queue for this
    /// client (they count against its outbound budget).
    pub encrypt_pending: usize,
}

/// What `authenticate` said about encryption.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum ClientKey {
    /// No `publicKey` (or `null`).
    #[default]
    Absent,
    /// A `publicKey` string, not yet checked.
    Given(Box<str>),
    /// A `publicKey` that is not a string.
    Invalid,
}

/// Close progress of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Closing {
    /// After this the TCP connection is dropped regardless.
    pub deadline: Stamp,
    /// The client's close frame arrived.
    pub received: bool,
    /// Input after a protocol error is no longer parsed.
    pub discard_input: bool,
}

/// A connection's partial input (see [`Conn::read`]).
#[derive(Debug)]
pub struct ReadState {
    pub decoder: MessageDecoder,
    pub rbuf: BytesMut,
}

impl ReadState {
    fn new(max_message: usize) -> Self {
        ReadState {
            decoder: MessageDecoder::new(Role::Server, max_message),
            rbuf: BytesMut::new(),
        }
    }
}

/// The spare read buffer keeps at most this much capacity between uses.
const SPARE_READ_CAPACITY: usize = 64 * 1024;

/// One upgraded connection. `S` is the I/O layer's socket handle; the shard
/// only stores it.
#[derive(Debug)]
pub struct Conn<S> {
    pub id: ClientId,
    pub generation: u32,
    pub session: Session,
    /// Shared with the user index.
    pub user: Option<std::rc::Rc<str>>,
    pub extra: Option<Box<ConnExtra>>,
    /// Rooms joined (the own-id room is the flag below).
    pub rooms: SmallVec<[RoomId; 4]>,
    /// In the room named by its own id (from authentication until it
    /// leaves it).
    pub in_own_room: bool,
    /// Completed the encryption handshake: every message to it is
    /// encrypted for it alone (its cipher is in `extra`).
    pub encrypted: bool,
    /// Frames waiting to be written; the front one may be partly written.
    pub out: VecDeque<Bytes>,
    /// Bytes in `out`.
    pub out_bytes: usize,
    /// Bytes of the front frame already written.
    pub front_written: usize,
    /// In the shard's dirty list.
    pub dirty: bool,
    /// The socket did not take everything: wait for writability.
    pub write_blocked: bool,
    /// Our close frame has been queued.
    pub closing: Option<Closing>,
    /// Our close frame has been fully written and the write side shut.
    pub write_shut: bool,
    /// The connection is finished: its task must end and call `remove`.
    pub dead: bool,
    /// The client shut its sending side (FIN): no more reads; the queue is
    /// written out, then the connection is dropped.
    pub peer_eof: bool,
    /// Last frame of any kind (for the idle ping/close).
    pub last_rx: Stamp,
    /// `--client-max-msgs-per-sec`: the clock second being counted and the
    /// messages seen in it.
    pub rate_window: u32,
    pub rate_count: u32,
    pub ping_sent: bool,
    /// Bytes of an incomplete frame or message, and the decoder's state;
    /// `None` (no allocation) whenever the connection is between messages.
    pub read: Option<Box<ReadState>>,
    /// The connection task, woken when the shard kills the connection
    /// (connections with a task of their own; see `parked`).
    pub waker: Option<Box<Waker>>,
    /// Watched by the shard's poller instead of a task of its own (the I/O
    /// layer's choice): killing it queues it in `reap` for the I/O layer
    /// to deregister and `remove`.
    pub parked: bool,
    pub sock: S,
}

/// One shard.
pub struct Shard<S> {
    pub ctx: ShardCtx,
    pub timeouts: Timeouts,
    pub conns: Slab<Conn<S>>,
    by_id: HashMap<ClientId, ConnKey, index::BuildIdentity>,
    pub rooms: index::Rooms,
    pub users: index::Users,
    /// Connections with something to write.
    dirty: Vec<ConnKey>,
    /// The flusher task, woken when `dirty` becomes non-empty.
    pub flush_waker: Option<Waker>,
    /// Auth deadlines in order: connect (auth timeout) and in-progress (×3).
    connect_deadlines: VecDeque<(Stamp, ConnKey, u32)>,
    auth_deadlines: VecDeque<(Stamp, ConnKey, u32)>,
    next_sweep: Instant,
    next_heartbeat: Instant,
    next_generation: u32,
    json_buf: Vec<u8>,
    json_buffers: Buffers,
    /// The read state lent to connections between messages.
    spare_read: Option<Box<ReadState>>,
    /// Frames waiting to be encrypted for encrypted clients, in order;
    /// worked off at most `encrypted_batch_limit` per loop turn.
    encrypt_queue: VecDeque<(ConnKey, u32, Bytes)>,
    /// The encryption task, woken when `encrypt_queue` becomes non-empty.
    pub encrypt_waker: Option<Waker>,
    encrypt_scratch: Vec<u8>,
    ping_frame: Bytes,
    /// Parked connections that died: the I/O layer deregisters and
    /// removes them.
    pub reap: Vec<ConnKey>,
    /// The reaper task, woken when `reap` becomes non-empty.
    pub reap_waker: Option<Waker>,
    /// Set once `Shutdown` arrived.
    pub shutting_down: bool,
    /// The shard's main task, woken when `Shutdown` arrives.
    pub shutdown_waker: Option<Waker>,
}

impl<S> Shard<S> {
    /// A new, empty shard.
    pub fn new(ctx: ShardCtx, now: Instant) -> Self {
        let c = &ctx.config;
        let timeouts = Timeouts {
            auth: c.auth_timeout,
            heartbeat: c.heartbeat_timeout,
        };
        let next_heartbeat = now + c.heartbeat_interval;
        Shard {
            timeouts,
            // Reserved up front (virtual memory: pages count only once
            // used), so growing never doubles and copies the table.
            conns: Slab::with_capacity(ctx.max_conns.min(1 << 20)),
            by_id: HashMap::with_capacity_and_hasher(
                ctx.max_conns.min(1 << 20),
                Default::default(),
            ),
            rooms: Default::default(),
            users: Default::default(),
            dirty: Vec::new(),
            flush_waker: None,
            connect_deadlines: VecDeque::new(),
            auth_deadlines: VecDeque::new(),
            next_sweep: now,
            next_heartbeat,
            next_generation: 0,
            json_buf: Vec::new(),
            json_buffers: Buffers::default(),
            spare_read: None,
            encrypt_queue: VecDeque::new(),
            encrypt_waker: None,
            encrypt_scratch: Vec::new(),
            ping_frame: frame::server_frame(OpCode::Ping, b""),
            reap: Vec::new(),
            reap_waker: None,
            shutting_down: false,
            shutdown_waker: None,
            ctx,
        }
    }

    /// How often [`Shard::on_tick`] should run: fine enough for the
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
        (t / 4).clamp(Duration::from_millis(5), Duration::from_millis(250))
    }

    /// Whether another connection may be accepted, with `pending` more
    /// still in their HTTP upgrade.
    pub fn has_room_for_connection(&self, pending: usize) -> bool {
        !self.shutting_down && self.conns.len() + pending < self.ctx.max_conns
    }

    /// The connection at `key` if it is still the one with `generation`.
    fn live(&mut self, key: ConnKey, generation: u32) -> Option<&mut Conn<S>> {
        self.conns
            .get_mut(key as usize)
            .filter(|c| c.generation == generation && !c.dead)
    }

    /// Look up a local client by id.
    pub fn key_of(&self, id: &ClientId) -> Option<ConnKey> {
        self.by_id.get(id).copied()
    }

    /// A freshly upgraded connection: `Unauthorized`, auth timer running.
    /// `rest` is whatever followed the HTTP request head.
    pub fn register(&mut self, sock: S, rest: &[u8], now: Instant) -> (ConnKey, ClientId) {
        let id = loop {
            let id = ClientId::new(self.ctx.index);
            if !self.by_id.contains_key(&id) {
                break id;
            }
        };
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let key = self.conns.insert(Conn {
            id,
            generation,
            session: Session::new(now, &self.timeouts),
            user: None,
            extra: None,
            rooms: SmallVec::new(),
            // The reference subscribes a socket to its own id at connect, so
            // room messages to that id reach it even before authentication.
            in_own_room: true,
            encrypted: false,
            out: VecDeque::new(),
            out_bytes: 0,
            front_written: 0,
            dirty: false,
            write_blocked: false,
            closing: None,
            write_shut: false,
            dead: false,
            peer_eof: false,
            last_rx: Stamp::at(now),
            rate_window: 0,
            rate_count: 0,
            ping_sent: false,
            read: None,
            waker: None,
            parked: false,
            sock,
        }) as ConnKey;
        self.by_id.insert(id, key);
        if let Some(d) = self.conns[key as usize].session.deadline() {
            self.connect_deadlines.push_back((d, key, generation));
        }
        let m = &self.ctx.metrics;
        m.conns_unauthorized
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ShardMetrics::add(&m.upgrades_total, 1);
        if let Some(fut) = guarded(|| {
            self.ctx.hooks.on_open(hooks::Opened {
                client_id: id.to_string(),
            })
        }) {
            self.ctx.control.run_or_offload(fut, |()| {});
        }
        if !rest.is_empty() {
            self.on_bytes(key, rest, now);
        }
        (key, id)
    }

    /// Bytes read from a connection.
    pub fn on_bytes(&mut self, key: ConnKey, data: &[u8], now: Instant) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.dead {
            return;
        }
        conn.last_rx = Stamp::at(now);
        conn.ping_sent = false;
        if conn.closing.is_some_and(|c| c.discard_input) {
            return;
        }
        // The connection's read state, or the shard's spare one: a
        // connection keeps its own only while a frame or fragmented message
        // is incomplete.
        let max = self.ctx.config.max_payload;
        let mut st = conn
            .read
            .take()
            .or_else(|| self.spare_read.take())
            .unwrap_or_else(|| Box::new(ReadState::new(max)));
        st.rbuf.extend_from_slice(data);
        loop {
            if self.conns.get(key as usize).is_none_or(|c| c.dead) {
                break;
            }
            match st.decoder.decode(&mut st.rbuf) {
                Ok(Some(msg)) => self.on_message(key, msg, now),
                Ok(None) => break,
                Err(e) => {
                    st.rbuf.clear();
                    st.decoder.reset();
                    self.close(key, CloseReason::Frame(e), now);
                    if let Some(c) = self
                        .conns
                        .get_mut(key as usize)
                        .and_then(|c| c.closing.as_mut())
                    {
                        c.discard_input = true;
                    }
                    break;
                }
            }
        }
        match self.conns.get_mut(key as usize) {
            Some(conn) if !conn.dead && (!st.rbuf.is_empty() || !st.decoder.is_idle()) => {
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

    /// End of input from the client (TCP FIN). It sends nothing more, but
    /// what is owed to it — the echo of its close frame, replies to what it
    /// sent just before, the close after a protocol error — is written
    /// first (RFC 6455 §5.5.1: a received close MUST be answered), within
    /// `close_timeout`; then the connection is dropped. Nothing new is
    /// queued for it.
    pub fn on_eof(&mut self, key: ConnKey, now: Instant) {
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
            self.kill(key);
            return;
        }
        conn.peer_eof = true;
        conn.read = None;
        match &mut conn.closing {
            Some(c) => {
                c.received = true;
                c.discard_input = true;
            }
            None => {
                conn.closing = Some(Closing {
                    deadline,
                    received: true,
                    discard_input: true,
                });
            }
        }
    }

    /// The connection is finished: wake its task so it ends.
    pub fn kill(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(key as usize)
            && !conn.dead
        {
            conn.dead = true;
            conn.out.clear();
            conn.out_bytes = 0;
            if conn.parked {
                self.reap.push(key);
                if let Some(w) = &self.reap_waker {
                    w.wake_by_ref();
                }
            } else if let Some(w) = conn.waker.take() {
                (*w).wake();
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
                if self.conns[key as usize].closing.is_some() {
                    return;
                }
                self.on_data(key, &payload, now);
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
        if conn.rate_count == limit + 1 && conn.closing.is_none() {
            tracing::debug!(client = %conn.id, limit, "message rate limit exceeded");
            ShardMetrics::add(&self.ctx.metrics.rate_limited, 1);
            self.close(key, CloseReason::RateLimited, now);
            if let Some(c) = self.conns.get_mut(key as usize)
                && let Some(cl) = &mut c.closing
            {
                // Nothing more it sends is looked at.
                cl.discard_input = true;
            }
        }
        true
    }

    fn on_close_frame(&mut self, key: ConnKey, cf: Option<frame::CloseFrame>, now: Instant) {
        let conn = &mut self.conns[key as usize];
        match &mut conn.closing {
            Some(c) => {
                // The reply to our close: the handshake is complete.
                c.received = true;
                if conn.write_shut {
                    self.kill(key);
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
                conn.closing = Some(Closing {
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
    /// reference's `message.toString()`).
    fn on_data(&mut self, key: ConnKey, payload: &[u8], now: Instant) {
        self.on_data_inner(key, payload, now, false);
    }

    /// `decrypted`: `payload` came out of an `encrypted` message (which
    /// may not nest).
    fn on_data_inner(&mut self, key: ConnKey, payload: &[u8], now: Instant, decrypted: bool) {
        let mut buf = std::mem::take(&mut self.json_buf);
        let mut buffers = std::mem::take(&mut self.json_buffers);
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
                    self.start_auth(key, was, data, now);
                }
                Action::Join(rooms) => self.start_join(key, rooms),
                Action::Leave(rooms) => self.leave(key, &rooms),
                Action::Custom { event, data, id } => {
                    if self.ctx.hooks.wants_messages() {
                        let conn = &self.conns[key as usize];
                        let msg = hooks::Message {
                            client_id: conn.id.to_string(),
                            user_id: conn.user.as_deref().map(str::to_owned),
                            event: event.into_owned(),
                            data: data.as_ref().map(message::to_json),
                            id: id.map(|s| s.into_owned()),
                        };
                        if let Some(fut) = guarded(|| self.ctx.hooks.on_message(msg)) {
                            self.ctx.control.run_or_offload(fut, |()| {});
                        }
                    } else {
                        tracing::debug!(event = %event, "no message hook for custom event; dropped");
                    }
                }
            }
        }
        self.json_buf = buf;
        self.json_buffers = buffers;
        match inbound {
            None => {}
            Some(Ok(plain)) => self.on_data_inner(key, &plain, now, true),
            Some(Err(e)) => {
                ShardMetrics::add(&self.ctx.metrics.decrypt_failures, 1);
                tracing::debug!(client = %self.conns[key as usize].id, error = %e, "encrypted message dropped");
                self.send_error(key, message::error_text::DECRYPTION_FAILED, now);
            }
        }
    }

    fn set_state_gauge(&self, from: State, to: State) {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.ctx.metrics;
        let g = |s: State| match s {
            State::Unauthorized => &m.conns_unauthorized,
            State::Authenticating => &m.conns_authenticating,
            State::Authenticated => &m.conns_authenticated,
        };
        if from != to {
            g(from).fetch_sub(1, Relaxed);
            g(to).fetch_add(1, Relaxed);
        }
    }

    fn start_auth(&mut self, key: ConnKey, was: State, data: serde_json::Value, now: Instant) {
        let conn = &self.conns[key as usize];
        let generation = conn.generation;
        self.set_state_gauge(was, State::Authenticating);
        if let Some(d) = conn.session.deadline() {
            self.auth_deadlines.push_back((d, key, generation));
        }
        let client_key = match message::public_key(&data) {
            _ if self.ctx.config.encryption == EncryptionMode::Off => ClientKey::Absent,
            None => ClientKey::Absent,
            Some(Some(k)) => ClientKey::Given(k.into()),
            Some(None) => ClientKey::Invalid,
        };
        let req = AuthRequest {
            client_id: conn.id.to_string(),
            data,
        };
        if client_key != ClientKey::Absent {
            let conn = &mut self.conns[key as usize];
            conn.extra.get_or_insert_with(Default::default).client_key = client_key;
        }
        let Some(fut) = guarded(|| Some(self.ctx.authenticator.authenticate(req))) else {
            let e = Err(AuthError::Internal("authenticator panicked".into()));
            self.finish_auth(key, generation, e, now);
            return;
        };
        let tx = self.ctx.self_tx.clone();
        let ready = self.ctx.control.run_or_offload(fut, move |result| {
            let _ = tx.send(ShardCommand::AuthDone {
                key,
                generation,
                result,
            });
        });
        match ready {
            Inline::Ready(result) => self.finish_auth(key, generation, result, now),
            Inline::Panicked => self.finish_auth(
                key,
                generation,
                Err(AuthError::Internal("authenticator panicked".into())),
                now,
            ),
            Inline::Refused => self.finish_auth(key, generation, Err(AuthError::Overloaded), now),
            Inline::Offloaded => {}
        }
    }

    fn finish_auth(&mut self, key: ConnKey, generation: u32, result: AuthResult, now: Instant) {
        let m = self.ctx.metrics.clone();
        let Some(conn) = self.live(key, generation) else {
            tracing::debug!("client disconnected during authentication; result dropped");
            return;
        };
        if conn.closing.is_some() {
            return;
        }
        let (verdict, identity) = match result {
            Ok(Some(identity)) => (Verdict::Accepted, Some(identity)),
            Ok(None) => (Verdict::Refused, None),
            Err(e) => {
                log_auth_error(&conn.id, &e);
                (Verdict::Failed, None)
            }
        };
        match conn.session.handle_auth_result(verdict) {
            AuthStep::Stale => {}
            AuthStep::Reject(text) => {
                match verdict {
                    Verdict::Failed => ShardMetrics::add(&m.auth_errors, 1),
                    _ => ShardMetrics::add(&m.auth_refused, 1),
                }
                self.send_error(key, text, now);
                self.close(key, CloseReason::AuthFailed, now);
            }
            AuthStep::Accept => {
                ShardMetrics::add(&m.auth_accepted, 1);
                let identity = identity.unwrap_or_default();
                self.accept(key, identity, now);
            }
        }
    }

    /// Index the client, join its own and default rooms, send `connected`.
    fn accept(&mut self, key: ConnKey, identity: Identity, now: Instant) {
        self.set_state_gauge(State::Authenticating, State::Authenticated);
        // The handshake comes before the client is indexed: a client that
        // fails it never receives anything but the error and the close.
        let handshake = match self.encryption_handshake(key) {
            Ok(h) => h,
            Err(()) => {
                ShardMetrics::add(&self.ctx.metrics.encryption_handshakes_failed, 1);
                self.send_error(key, message::error_text::ENCRYPTION_HANDSHAKE_FAILED, now);
                self.close(key, CloseReason::EncryptionRequired, now);
                return;
            }
        };
        let Identity {
            user_id,
            metadata,
            room_patterns,
        } = identity;
        let conn = &mut self.conns[key as usize];
        if metadata.is_some() || room_patterns.is_some() {
            let extra = conn.extra.get_or_insert_with(Default::default);
            extra.metadata = metadata.clone();
            extra.room_patterns = room_patterns;
        }
        conn.in_own_room = true;
        let id = conn.id;
        // An empty userId is falsy in the reference: not indexed.
        if let Some(u) = user_id.as_deref().filter(|u| !u.is_empty()) {
            let name = self.users.add(u, key);
            self.conns[key as usize].user = Some(name);
        }
        let defaults = self.ctx.config.default_rooms.clone();
        for r in &defaults {
            self.join_room(key, r);
        }
        self.update_index_gauges();
        let id_s = id.to_string();
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let time = message::iso8601_millis(unix_ms);
        let payload = Connected {
            id: &id_s,
            user_id: user_id.as_deref(),
            time: &time,
            server_public_key: handshake.as_ref().map(|h| h.server_public_key.as_str()),
            salt: handshake.as_ref().map(|h| h.salt.as_str()),
        };
        if let Ok(f) = crate::delivery::encode(message::event::CONNECTED, Some(&payload)) {
            self.send_own(key, f, now);
        }
        // `connected` went out in clear (it carries the key material);
        // everything after it is encrypted.
        if let Some(h) = handshake {
            let conn = &mut self.conns[key as usize];
            conn.encrypted = true;
            conn.extra.get_or_insert_with(Default::default).cipher = Some(h.cipher);
            self.ctx
                .metrics
                .encrypted_clients
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::debug!(client = %id_s, user = ?user_id, "authenticated");
        if let Some(fut) = guarded(|| {
            self.ctx.hooks.on_connect(hooks::Connected {
                client_id: id_s,
                user_id,
                metadata,
            })
        }) {
            self.ctx.control.run_or_offload(fut, |()| {});
        }
    }

    /// PROTOCOL.md §7 for an accepted client: `Ok(None)` for a plain
    /// client, `Ok(Some)` for a completed handshake, `Err` when encryption
    /// is required and missing, or was asked for with a bad key.
    fn encryption_handshake(&mut self, key: ConnKey) -> Result<Option<encryption::Handshake>, ()> {
        let mode = self.ctx.config.encryption;
        let conn = &mut self.conns[key as usize];
        let given = conn
            .extra
            .as_mut()
            .map(|e| std::mem::take(&mut e.client_key))
            .unwrap_or_default();
        match (mode, given) {
            (EncryptionMode::Off, _) | (EncryptionMode::Optional, ClientKey::Absent) => Ok(None),
            (_, ClientKey::Given(k)) => match encryption::handshake(&k) {
                Ok(h) => Ok(Some(h)),
                Err(e) => {
                    tracing::debug!(client = %conn.id, error = %e, "encryption handshake refused");
                    Err(())
                }
            },
            (_, ClientKey::Invalid) | (EncryptionMode::Required, ClientKey::Absent) => {
                tracing::debug!(client = %conn.id, "encryption required: no valid publicKey");
                Err(())
            }
        }
    }

    fn update_index_gauges(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.ctx.metrics;
        m.rooms.store(self.rooms.len() as i64, Relaxed);
        m.users.store(self.users.len() as i64, Relaxed);
    }

    /// Join one room (the own-id room is a flag, not an index entry).
    fn join_room(&mut self, key: ConnKey, name: &str) {
        let conn = &mut self.conns[key as usize];
        if ClientId::parse(name) == Some(conn.id) {
            conn.in_own_room = true;
            return;
        }
        let (rid, new) = self.rooms.join(name, key);
        if new {
            self.conns[key as usize].rooms.push(rid);
        }
    }

    /// Joining `name` would not take one of the client's room slots: it is
    /// in it already, or it is the room named by its own id (a flag, not
    /// an index entry).
    fn takes_no_slot(&self, key: ConnKey, name: &str) -> bool {
        let conn = &self.conns[key as usize];
        if ClientId::parse(name) == Some(conn.id) {
            return true;
        }
        self.rooms
            .id(name)
            .is_some_and(|rid| conn.rooms.contains(&rid))
    }

    fn start_join(&mut self, key: ConnKey, mut rooms: Vec<String>) {
        // A room named by a client id (any UUID form) other than the
        // client's own is never joinable, whatever the validator says: a
        // room message to a client id (cross-node `send`) must reach that
        // client only.
        let own = self.conns[key as usize].id;
        let before = rooms.len();
        rooms.retain(|r| ClientId::parse(r).is_none_or(|id| id == own));
        let foreign = (before - rooms.len()) as u64;
        if foreign > 0 {
            tracing::debug!(client = %own, foreign, "joins of other clients' id rooms refused");
            let m = &self.ctx.metrics;
            ShardMetrics::add(&m.rooms_refused, foreign);
            ShardMetrics::add(&m.rooms_client_id_refused, foreign);
        }
        let cap = self.ctx.config.max_rooms_per_client;
        if cap > 0 && rooms.len() > cap {
            // More than could ever be joined: the rest is refused unseen.
            let over = (rooms.len() - cap) as u64;
            rooms.truncate(cap);
            let m = &self.ctx.metrics;
            ShardMetrics::add(&m.rooms_refused, over);
            ShardMetrics::add(&m.rooms_over_limit, over);
        }
        let Some(validator) = self.ctx.room_validator.clone() else {
            tracing::debug!("join refused: no room validator configured");
            ShardMetrics::add(&self.ctx.metrics.rooms_refused, rooms.len() as u64);
            return;
        };
        let conn = &self.conns[key as usize];
        let generation = conn.generation;
        let req = JoinRequest {
            client_id: conn.id.to_string(),
            user_id: conn.user.as_deref().map(str::to_owned),
            rooms: rooms.clone(),
            room_patterns: conn.extra.as_ref().and_then(|e| e.room_patterns.clone()),
        };
        let Some(fut) = guarded(|| Some(validator.allowed_rooms(req))) else {
            self.finish_join(key, generation, &rooms, Vec::new());
            return;
        };
        let tx = self.ctx.self_tx.clone();
        let requested = rooms.clone();
        let ready = self.ctx.control.run_or_offload(fut, move |allowed| {
            let _ = tx.send(ShardCommand::JoinDone {
                key,
                generation,
                requested,
                allowed,
            });
        });
        match ready {
            Inline::Ready(allowed) => self.finish_join(key, generation, &rooms, allowed),
            Inline::Panicked | Inline::Refused => {
                self.finish_join(key, generation, &rooms, Vec::new())
            }
            Inline::Offloaded => {}
        }
    }

    fn finish_join(
        &mut self,
        key: ConnKey,
        generation: u32,
        requested: &[String],
        allowed: Vec<String>,
    ) {
        if self.live(key, generation).is_none() {
            return;
        }
        // Only rooms that were asked for and passed the filter: a validator
        // cannot put a client into `ws:` rooms.
        let asked: std::collections::HashSet<&str> = requested.iter().map(String::as_str).collect();
        let cap = self.ctx.config.max_rooms_per_client;
        let mut joined = 0u64;
        let mut over = 0u64;
        for r in allowed.iter().filter(|r| asked.contains(r.as_str())) {
            if cap > 0 && self.conns[key as usize].rooms.len() >= cap && !self.takes_no_slot(key, r)
            {
                over += 1;
                continue;
            }
            self.join_room(key, r);
            joined += 1;
        }
        if over > 0 {
            tracing::debug!(client = %self.conns[key as usize].id, over, cap, "joins past --max-rooms-per-client refused");
        }
        let m = &self.ctx.metrics;
        ShardMetrics::add(&m.rooms_joined, joined);
        ShardMetrics::add(&m.rooms_over_limit, over);
        ShardMetrics::add(
            &m.rooms_refused,
            requested.len() as u64 - joined.min(requested.len() as u64),
        );
        self.update_index_gauges();
    }

    /// `leave`: only rooms the client is in.
    fn leave(&mut self, key: ConnKey, names: &[String]) {
        for name in names {
            let conn = &mut self.conns[key as usize];
            if ClientId::parse(name) == Some(conn.id) {
                conn.in_own_room = false;
                continue;
            }
            let Some(rid) = self.rooms.id(name) else {
                continue;
            };
            let conn = &mut self.conns[key as usize];
            if let Some(pos) = conn.rooms.iter().position(|r| *r == rid) {
                conn.rooms.swap_remove(pos);
                self.rooms.leave(rid, key);
            }
        }
        self.update_index_gauges();
    }

    fn send_error(&mut self, key: ConnKey, text: &str, now: Instant) {
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
    fn enqueue(&mut self, key: ConnKey, f: Bytes) {
        let conn = &mut self.conns[key as usize];
        if conn.dead {
            return;
        }
        let m = &self.ctx.metrics;
        ShardMetrics::add(&m.messages_out, 1);
        ShardMetrics::add(&m.bytes_out, f.len() as u64);
        conn.out_bytes += f.len();
        push_frame(&mut conn.out, f);
        self.mark_dirty(key);
    }

    fn mark_dirty(&mut self, key: ConnKey) {
        let conn = &mut self.conns[key as usize];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
            if self.dirty.len() == 1
                && let Some(w) = &self.flush_waker
            {
                w.wake_by_ref();
            }
        }
    }

    /// Queue a frame the server itself sends (error, `connected`, ping,
    /// pong) under the same budget as deliveries: a client that floods
    /// pings or bad JSON without reading cannot grow its queue either.
    fn send_own(&mut self, key: ConnKey, f: Bytes, now: Instant) {
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
        if conn.closing.is_some() || conn.dead {
            ShardMetrics::add(&self.ctx.metrics.frames_dropped, 1);
            return false;
        }
        if conn.encrypted {
            return self.push_encrypted(key, f, now);
        }
        if conn.out_bytes + f.len() > limit {
            self.over_budget(key, now);
            return false;
        }
        conn.out_bytes += f.len();
        push_frame(&mut conn.out, f.clone());
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
                self.close(key, CloseReason::SlowClient, now);
            }
        }
    }

    /// An encrypted client's message leaves the shared-frame path: it is
    /// queued (as the shared frame, a refcount) for the shard's encryption
    /// task, which encrypts it for this client alone. The budget counts it
    /// from now.
    #[inline(never)]
    fn push_encrypted(&mut self, key: ConnKey, f: &Bytes, now: Instant) -> bool {
        let limit = self.ctx.config.backpressure_limit;
        let conn = &mut self.conns[key as usize];
        if conn.closing.is_some() || conn.dead {
            ShardMetrics::add(&self.ctx.metrics.frames_dropped, 1);
            return false;
        }
        let generation = conn.generation;
        let out_bytes = conn.out_bytes;
        let Some(extra) = conn.extra.as_deref_mut() else {
            return false;
        };
        if out_bytes + extra.encrypt_pending + f.len() > limit {
            self.over_budget(key, now);
            return false;
        }
        extra.encrypt_pending += f.len();
        self.encrypt_queue.push_back((key, generation, f.clone()));
        if self.encrypt_queue.len() == 1
            && let Some(w) = &self.encrypt_waker
        {
            w.wake_by_ref();
        }
        true
    }

    /// Before a connection stops taking output (close, end of input):
    /// encrypt what was accepted for it, so it goes out like a plain
    /// client's queue. The whole queue is worked off, keeping every
    /// client's order; closes are rare and queues short.
    fn encrypt_pending_of(&mut self, key: ConnKey) {
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
            if conn.dead || conn.closing.is_some() {
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
                    conn.out_bytes += enc.len();
                    push_frame(&mut conn.out, enc);
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

    /// Start the closing handshake with `reason`: queue the close frame
    /// after what is already queued (for a slow client: instead of it), stop
    /// queuing anything else, drop the connection after `close_timeout`.
    pub fn close(&mut self, key: ConnKey, reason: CloseReason, now: Instant) {
        let deadline = Stamp::at(now).after(self.ctx.config.close_timeout);
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.closing.is_some() || conn.dead {
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
            let keep = if conn.front_written > 0 { 1 } else { 0 };
            conn.out.truncate(keep);
            conn.out_bytes = conn
                .out
                .front()
                .map(|f| f.len() - conn.front_written)
                .unwrap_or(0);
        }
        if matches!(reason, CloseReason::AuthTimeout) {
            ShardMetrics::add(&self.ctx.metrics.auth_timeouts, 1);
        }
        tracing::debug!(client = %conn.id, code, reason = text, "closing");
        self.ctx.metrics.close_sent(code);
        conn.closing = Some(Closing {
            deadline,
            received: false,
            discard_input: false,
        });
        let mut buf = BytesMut::with_capacity(4 + text.len());
        frame::encode_close(&mut buf, code, text, None);
        let f = buf.freeze();
        self.enqueue(key, f);
    }

    /// Whether some connection has queued output.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Take the list of connections with queued output.
    pub fn take_dirty(&mut self, into: &mut Vec<ConnKey>) {
        std::mem::swap(&mut self.dirty, into);
        self.dirty.clear();
    }

    /// A command from the shard's channel.
    pub fn handle_command(&mut self, cmd: ShardCommand, now: Instant) {
        match cmd {
            ShardCommand::Deliver(d) => {
                // The budget `Handle::deliver` took for it.
                self.ctx
                    .metrics
                    .queued_bytes
                    .fetch_sub(d.queue_cost() as i64, std::sync::atomic::Ordering::Relaxed);
                self.deliver(&d, now)
            }
            ShardCommand::AuthDone {
                key,
                generation,
                result,
            } => self.finish_auth(key, generation, result, now),
            ShardCommand::JoinDone {
                key,
                generation,
                requested,
                allowed,
            } => self.finish_join(key, generation, &requested, allowed),
            ShardCommand::Shutdown => self.begin_shutdown(now),
            ShardCommand::Barrier(tx) => {
                let _ = tx.send(());
            }
        }
    }

    /// Close every client with 1001 after what is queued for it.
    pub fn begin_shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        if let Some(w) = self.shutdown_waker.take() {
            w.wake();
        }
        let keys: Vec<ConnKey> = self.conns.iter().map(|(k, _)| k as ConnKey).collect();
        for k in keys {
            self.close(k, CloseReason::Shutdown, now);
        }
    }

    /// Timers: auth timeouts (4001), heartbeat (4002), idle ping/close, and
    /// the close-handshake deadline.
    pub fn on_tick(&mut self, now: Instant) {
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
                if conn.closing.is_some() {
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
        let mut to_kill: Vec<ConnKey> = Vec::new();
        let mut to_ping: Vec<ConnKey> = Vec::new();
        for (k, conn) in self.conns.iter_mut() {
            let k = k as ConnKey;
            if conn.dead {
                continue;
            }
            if let Some(cl) = &conn.closing {
                if stamp.reached(cl.deadline) {
                    to_kill.push(k);
                }
                continue;
            }
            if heartbeat_due && conn.session.heartbeat_expired(now, &self.timeouts) {
                to_close.push((k, CloseReason::HeartbeatTimeout));
                continue;
            }
            if conn.out.is_empty() && conn.out.capacity() > 0 && !conn.dirty {
                // An idle connection keeps no queue allocation.
                conn.out = VecDeque::new();
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
        for k in to_kill {
            self.kill(k);
        }
        for (k, r) in to_close {
            self.close(k, r, now);
        }
        let ping = self.ping_frame.clone();
        for k in to_ping {
            self.send_own(k, ping.clone(), now);
        }
    }

    /// The connection's task ended: take it out of every index.
    pub fn remove(&mut self, key: ConnKey) -> Option<S> {
        if !self.conns.contains(key as usize) {
            return None;
        }
        let conn = self.conns.remove(key as usize);
        self.by_id.remove(&conn.id);
        if conn.encrypted {
            self.ctx
                .metrics
                .encrypted_clients
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(u) = &conn.user {
            self.users.remove(u, key);
        }
        for rid in &conn.rooms {
            self.rooms.leave(*rid, key);
        }
        let st = conn.session.state();
        let m = &self.ctx.metrics;
        use std::sync::atomic::Ordering::Relaxed;
        match st {
            State::Unauthorized => m.conns_unauthorized.fetch_sub(1, Relaxed),
            State::Authenticating => m.conns_authenticating.fetch_sub(1, Relaxed),
            State::Authenticated => m.conns_authenticated.fetch_sub(1, Relaxed),
        };
        self.update_index_gauges();
        if let Some(fut) = guarded(|| {
            self.ctx.hooks.on_disconnect(hooks::Disconnected {
                client_id: conn.id.to_string(),
                user_id: conn.user.as_deref().map(str::to_owned),
            })
        }) {
            self.ctx.control.run_or_offload(fut, |()| {});
        }
        Some(conn.sock)
    }

    /// Number of connections (any state).
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether the shard holds no connection.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

/// Call user code (authenticators, validators, hooks) so that a panic in it
/// is logged and treated as "nothing", never unwinding through the shard.
fn guarded<T>(f: impl FnOnce() -> Option<T>) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            tracing::error!("an authenticator, room validator or hook panicked");
            None
        }
    }
}

fn log_auth_error(id: &ClientId, e: &AuthError) {
    match e {
        // Counted (`ignis_ws_control_tasks_refused_total`); a WARN per client
        // would flood the log exactly when the server is overloaded.
        AuthError::Overloaded => tracing::debug!(client = %id, error = %e, "authenticator error"),
        _ => tracing::warn!(client = %id, error = %e, "authenticator error"),
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

/// Queue a frame. A connection whose queue was released (idle) gets room
/// for exactly one frame first: most idle clients receive one message at a
/// time, and the default first allocation would be four slots.
#[inline]
fn push_frame(out: &mut VecDeque<Bytes>, f: Bytes) {
    if out.capacity() == 0 {
        out.reserve_exact(1);
    }
    out.push_back(f);
}
