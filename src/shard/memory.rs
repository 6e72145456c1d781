//! An in-memory driver: a shard, its clients' "sockets" as byte buffers,
//! and virtual time. It answers the shard's events with the real
//! authenticator, room validator and hooks (a future that does not
//! complete on its first poll is kept and polled again on every
//! [`MemoryDriver::run`], like the control thread would finish it), writes
//! what the shard hands out into each client's buffer, and moves time
//! only when told. Tests use it to check protocol and timer behaviour in
//! milliseconds of virtual time; the fan-out bench and the fuzzer drive a
//! shard through it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use std::task::Poll;

use super::{Answer, ConnKey, Event, HookCall, Shard, ShardCommand, ShardCtx, UserCode};
use crate::auth::{
    AuthRequest, AuthResult, Authenticator, BoxFuture, JoinRequest, RoomValidator, poll_now,
};
use crate::hooks::Hooks;
use crate::proto::frame::{self, Message, MessageDecoder, OpCode, Role};

/// A room validator call that had to wait: key, generation, the rooms
/// asked for, the call.
type PendingJoin = (ConnKey, u32, Vec<String>, BoxFuture<Vec<String>>);

/// A client's end of an in-memory connection.
#[derive(Debug, Default)]
pub struct MemSock {
    /// What the server wrote to it and the client did not take yet.
    pub received: BytesMut,
    /// Bytes the client still reads before it stops (a slow client);
    /// `None`: it reads everything.
    pub window: Option<usize>,
    /// The server shut its write side (FIN after its close frame).
    pub write_shut: bool,
    /// Keep what is written in `received` (a bench sets false).
    pub discard: bool,
}

/// The user code, and the calls of it that had to wait.
struct Calls {
    authenticator: Arc<dyn Authenticator>,
    room_validator: Option<Arc<dyn RoomValidator>>,
    hooks: Arc<dyn Hooks>,
    pending_auth: Vec<(ConnKey, u32, BoxFuture<AuthResult>)>,
    pending_join: Vec<PendingJoin>,
    pending_hooks: Vec<BoxFuture<()>>,
}

impl UserCode for Calls {
    fn authenticate(
        &mut self,
        key: ConnKey,
        generation: u32,
        request: AuthRequest,
    ) -> Answer<AuthResult> {
        let mut fut = self.authenticator.authenticate(request);
        match poll_now(&mut fut) {
            Poll::Ready(r) => Answer::Ready(r),
            Poll::Pending => {
                self.pending_auth.push((key, generation, fut));
                Answer::Pending
            }
        }
    }

    fn validate(
        &mut self,
        key: ConnKey,
        generation: u32,
        request: JoinRequest,
    ) -> Answer<Vec<String>> {
        let Some(v) = &self.room_validator else {
            return Answer::Ready(Vec::new());
        };
        let requested = request.rooms.clone();
        let mut fut = v.allowed_rooms(request);
        match poll_now(&mut fut) {
            Poll::Ready(r) => Answer::Ready(r),
            Poll::Pending => {
                self.pending_join.push((key, generation, requested, fut));
                Answer::Pending
            }
        }
    }

    fn hook(&mut self, call: HookCall) {
        let fut = match call {
            HookCall::Open(o) => self.hooks.on_open(o),
            HookCall::Connect(c) => self.hooks.on_connect(c),
            HookCall::Disconnect(d) => self.hooks.on_disconnect(d),
            HookCall::Message(m) => self.hooks.on_message(m),
        };
        if let Some(fut) = fut {
            self.pending_hooks.push(fut);
        }
    }
}

/// A shard driven in memory (see the module documentation).
pub struct MemoryDriver {
    pub shard: Shard<MemSock>,
    /// The virtual clock.
    pub now: Instant,
    user: Calls,
    /// Sockets of finished connections, with what they had received.
    pub closed: Vec<(ConnKey, MemSock)>,
    dirty: Vec<ConnKey>,
    /// Frames encrypted per [`MemoryDriver::run`] (the server's
    /// `--encrypted-batch-limit` per loop turn; all of them when `None`).
    pub encryption_batch: Option<usize>,
}

impl MemoryDriver {
    /// A driver around a new shard, at the virtual instant `now`.
    pub fn new(
        ctx: ShardCtx,
        authenticator: Arc<dyn Authenticator>,
        room_validator: Option<Arc<dyn RoomValidator>>,
        hooks: Arc<dyn Hooks>,
        now: Instant,
    ) -> Self {
        let mut shard = Shard::new(ctx, now);
        // A fixed wall clock: 2026-01-01T00:00:00Z.
        shard.set_wall_clock(now, 1_767_225_600_000);
        MemoryDriver {
            shard,
            now,
            user: Calls {
                authenticator,
                room_validator,
                hooks,
                pending_auth: Vec::new(),
                pending_join: Vec::new(),
                pending_hooks: Vec::new(),
            },
            closed: Vec::new(),
            dirty: Vec::new(),
            encryption_batch: None,
        }
    }

    /// A driver for `config` as the server would build it with
    /// `--auth insecure`: the insecure authenticator, the glob room
    /// validator of `config.room_allow` (none if empty), no hooks, one
    /// shard of `max_conns` connections.
    pub fn insecure(config: crate::config::Config, max_conns: usize, now: Instant) -> Self {
        let room_validator: Option<Arc<dyn RoomValidator>> =
            (!config.room_allow.is_empty()).then(|| {
                Arc::new(crate::auth::rooms::GlobRoomValidator::new(
                    config.room_allow.clone(),
                )) as Arc<dyn RoomValidator>
            });
        let sessions = (config.max_sessions_per_user > 0).then(|| {
            Arc::new(super::sessions::UserSessions::new(
                config.max_sessions_per_user,
            ))
        });
        let ctx = ShardCtx {
            index: 0,
            config: Arc::new(config),
            metrics: Arc::default(),
            max_conns,
            has_room_validator: room_validator.is_some(),
            wants_messages: false,
            wants_lifecycle: true,
            sessions,
            client_tag: None,
        };
        MemoryDriver::new(
            ctx,
            Arc::new(crate::auth::InsecureAuthenticator),
            room_validator,
            Arc::new(crate::hooks::NoHooks),
            now,
        )
    }

    /// A client connects (its upgrade done) and sends `first` with it.
    pub fn connect(&mut self, first: &[u8]) -> ConnKey {
        let (key, _) = self
            .shard
            .handle_upgraded(MemSock::default(), first, self.now);
        self.run();
        key
    }

    /// A client connects whose output is thrown away (benchmarks).
    pub fn connect_discarding(&mut self, first: &[u8]) -> ConnKey {
        let sock = MemSock {
            discard: true,
            ..MemSock::default()
        };
        let (key, _) = self.shard.handle_upgraded(sock, first, self.now);
        self.run();
        key
    }

    /// The client sends `bytes` (any part of its frames).
    pub fn send(&mut self, key: ConnKey, bytes: &[u8]) {
        self.shard.handle_bytes(key, bytes, self.now);
        self.run();
    }

    /// The client sends one masked text frame.
    pub fn send_text(&mut self, key: ConnKey, text: &str) {
        self.send(key, &client_frame(OpCode::Text, text.as_bytes()));
    }

    /// The client shuts its sending side (FIN).
    pub fn eof(&mut self, key: ConnKey) {
        self.shard.handle_eof(key, self.now);
        self.run();
    }

    /// A command on the shard's channel.
    pub fn command(&mut self, cmd: ShardCommand) {
        self.shard.handle_command(cmd, self.now);
        self.run();
    }

    /// Apply several commands in a row, then let the clients read (the
    /// server's command loop applies a batch before its flusher runs).
    pub fn commands(&mut self, cmds: impl IntoIterator<Item = ShardCommand>) {
        for c in cmds {
            self.shard.handle_command(c, self.now);
        }
        self.run();
    }

    /// Apply deliveries as the server's command loop applies a run of
    /// them to the same recipients ([`Shard::handle_deliveries`]).
    pub fn deliver_run(&mut self, mut run: Vec<crate::delivery::Delivery>) {
        self.shard.handle_deliveries(&mut run, self.now);
        self.run();
    }

    /// Let `d` of virtual time pass, running the shard's timers at its
    /// tick interval as the server does.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        let step = self.shard.tick_interval();
        while self.now < end {
            self.now = (self.now + step).min(end);
            self.shard.handle_timeout(self.now);
            self.run();
        }
    }

    /// The client reads `n` more bytes (a slow client catching up), or
    /// everything from now on (`None`).
    pub fn set_window(&mut self, key: ConnKey, window: Option<usize>) {
        if let Some(c) = self.shard.conn_mut(key) {
            c.sock_mut().window = window;
        }
        self.flush(key);
        self.run();
    }

    /// Answer every event, finish what completed, encrypt and write until
    /// nothing is left to do.
    pub fn run(&mut self) {
        loop {
            let mut progress = false;
            while let Some(ev) = self.shard.poll_event() {
                progress = true;
                self.on_event(ev);
            }
            progress |= self.poll_pending();
            if self.shard.has_encryption_work() {
                self.shard
                    .run_encryption(self.encryption_batch.unwrap_or(usize::MAX));
                progress = true;
            }
            if self.shard.has_dirty() {
                let mut keys = std::mem::take(&mut self.dirty);
                self.shard.poll_dirty(&mut keys);
                for &k in &keys {
                    self.flush(k);
                }
                self.dirty = keys;
                progress = true;
            }
            if !progress {
                break;
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        if let Some(key) = self.shard.answer(ev, &mut self.user, self.now)
            && self.shard.conn(key).is_some_and(|c| c.is_dead())
            && let Some(sock) = self.shard.remove(key)
        {
            self.closed.push((key, sock));
        }
    }

    /// Poll the calls that had to wait; feed back what completed, as the
    /// control thread does through the shard's channel.
    fn poll_pending(&mut self) -> bool {
        let mut progress = false;
        let mut i = 0;
        while i < self.user.pending_auth.len() {
            if let Poll::Ready(result) = poll_now(&mut self.user.pending_auth[i].2) {
                let (key, generation, _) = self.user.pending_auth.swap_remove(i);
                self.shard.handle_command(
                    ShardCommand::AuthDone {
                        key,
                        generation,
                        result,
                    },
                    self.now,
                );
                progress = true;
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.user.pending_join.len() {
            if let Poll::Ready(allowed) = poll_now(&mut self.user.pending_join[i].3) {
                let (key, generation, requested, _) = self.user.pending_join.swap_remove(i);
                self.shard.handle_command(
                    ShardCommand::JoinDone {
                        key,
                        generation,
                        requested,
                        allowed,
                    },
                    self.now,
                );
                progress = true;
            } else {
                i += 1;
            }
        }
        self.user
            .pending_hooks
            .retain_mut(|f| poll_now(f).is_pending());
        progress
    }

    /// Calls of user code still waiting.
    pub fn pending_calls(&self) -> usize {
        self.user.pending_auth.len() + self.user.pending_join.len() + self.user.pending_hooks.len()
    }

    /// Write what `key` has queued into its client's buffer, as far as the
    /// client's window allows.
    fn flush(&mut self, key: ConnKey) {
        let mut written = Vec::new();
        loop {
            let Some(c) = self.shard.conn(key) else {
                return;
            };
            let window = c.sock().window;
            let mut iov = super::IoVec::new();
            let want = self.shard.transmit(key, &mut iov);
            if want == 0 {
                break;
            }
            let n = window.map_or(want, |w| w.min(want));
            if n == 0 {
                return;
            }
            written.clear();
            let discard = c.sock().discard;
            let mut left = if discard { 0 } else { n };
            for s in &iov {
                if left == 0 {
                    break;
                }
                let take = left.min(s.len());
                written.extend_from_slice(&s[..take]);
                left -= take;
            }
            drop(iov);
            if let Some(c) = self.shard.conn_mut(key) {
                let sock = c.sock_mut();
                if let Some(w) = &mut sock.window {
                    *w -= n;
                }
                if !sock.discard {
                    sock.received.extend_from_slice(&written);
                }
            }
            self.shard.handle_written(key, n);
            if n < want {
                return;
            }
        }
        if self.shard.handle_flushed(key)
            && let Some(c) = self.shard.conn_mut(key)
        {
            c.sock_mut().write_shut = true;
        }
    }

    /// What the client received so far (or its socket received before the
    /// connection finished), decoded as server frames; consumed.
    pub fn messages(&mut self, key: ConnKey) -> Vec<Message> {
        let buf = match self.shard.conn_mut(key) {
            Some(c) => &mut c.sock_mut().received,
            None => match self.closed.iter_mut().rev().find(|(k, _)| *k == key) {
                Some((_, s)) => &mut s.received,
                None => return Vec::new(),
            },
        };
        let mut dec = MessageDecoder::new(Role::Client, usize::MAX);
        let mut out = Vec::new();
        while let Ok(Some(m)) = dec.decode(buf) {
            out.push(m);
        }
        out
    }

    /// The texts of what the client received (other frames skipped).
    pub fn texts(&mut self, key: ConnKey) -> Vec<String> {
        self.messages(key)
            .into_iter()
            .filter_map(|m| match m {
                Message::Text(t) => Some(String::from_utf8_lossy(&t).into_owned()),
                _ => None,
            })
            .collect()
    }

    /// Whether the connection at `key` finished (its socket was dropped).
    pub fn is_closed(&self, key: ConnKey) -> bool {
        self.shard.conn(key).is_none()
    }
}

/// One masked frame as a client sends it.
pub fn client_frame(op: OpCode, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    frame::encode_frame(&mut b, true, op, payload, Some([1, 2, 3, 4]));
    b
}
