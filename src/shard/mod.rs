//! One core's world as a sans-io state machine: the connections a shard
//! owns (in a slab), their protocol sessions, the room and user indexes,
//! and fan-out. It makes no syscalls, holds no waker or runtime handle,
//! calls no user code and reads no clock: a driver (one per I/O back end,
//! see [`crate::io`], or the in-memory [`memory::MemoryDriver`]) feeds it
//! inputs and carries out its outputs, in the style of quinn-proto's
//! `Connection`.
//!
//! Inputs (`now` is always passed in):
//! * [`Shard::handle_upgraded`] after the HTTP upgrade, with the bytes that
//!   followed the request head;
//! * [`Shard::handle_bytes`] for what was read, [`Shard::handle_eof`] for
//!   the client's FIN, [`Shard::handle_io_error`] when the socket failed;
//! * [`Shard::handle_command`] for what arrived on the shard's channel
//!   (deliveries, answers that came back from the control thread);
//! * the answer of user code to an [`Event::Authenticate`] /
//!   [`Event::Validate`], right after it: [`Shard::answer`] makes the call
//!   through the driver's [`UserCode`] and feeds the answer back;
//! * [`Shard::handle_timeout`] at least every [`Shard::tick_interval`];
//! * [`Shard::handle_written`] with what the socket took of
//!   [`Shard::transmit`], and [`Shard::handle_flushed`] once a queue is out.
//!
//! Outputs:
//! * [`Shard::poll_event`] after every input: connections that finished
//!   ([`Event::Closed`]: drop the socket, then [`Shard::remove`]), calls
//!   of user code to make (authenticator, room validator, hooks);
//! * [`Shard::poll_dirty`]: the connections with queued output; for each,
//!   [`Shard::transmit`] lends the queue as slices for one vectored write;
//! * [`Shard::run_encryption`] when [`Shard::has_encryption_work`]: the
//!   per-client encryption, in batches the driver schedules;
//! * [`Shard::poll_interest`], once [`Shard::track_interest`] was called:
//!   the rooms, users and clients this shard started or stopped needing to
//!   hear about from other nodes ([`Interest`]; for the Redis bridge's
//!   subscriptions of issue 15, not wired to it yet).
//!
//! The work is split by concern: [`conn`] (the record), `read` (decode,
//! dispatch), `auth` (authentication and the encryption handshake),
//! `rooms` (join, leave), `outbound` (queues, budget, encryption, writes),
//! `close` (closing handshake, shutdown), `timers`, [`fanout`], [`index`].

mod auth;
mod close;
pub mod conn;
pub mod fanout;
pub mod index;
pub mod keyed;
pub mod memory;
mod outbound;
mod read;
mod rooms;
pub mod sessions;
mod timers;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use slab::Slab;
use smallvec::SmallVec;

use crate::auth::{AuthRequest, AuthResult, JoinRequest};
use crate::config::Config;
use crate::delivery::{ClientId, Delivery};
use crate::hooks;
use crate::metrics::ShardMetrics;
use crate::proto::frame::{self, OpCode};
use crate::proto::message::Buffers;
use crate::proto::session::{Session, State, Timeouts};
use crate::proto::stamp::Stamp;

pub use crate::delivery::{Interest, Topic};
pub use conn::{Conn, ConnExtra, PublicKey};
pub use index::{ConnKey, RoomId};
pub use outbound::{IoVec, MAX_IOV};

use conn::ReadState;

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
    /// Close the sessions of a user or a client with this code; answer
    /// how many were closed.
    Disconnect {
        who: crate::delivery::Who,
        code: u16,
        reply: flume::Sender<usize>,
    },
    /// Answer how many of the sessions named are here.
    Count {
        who: crate::delivery::Who,
        reply: flume::Sender<usize>,
    },
}

/// What a shard is told at birth (read-only).
#[derive(Debug, Clone)]
pub struct ShardCtx {
    pub index: usize,
    pub config: Arc<Config>,
    pub metrics: Arc<ShardMetrics>,
    /// Connection limit of this shard.
    pub max_conns: usize,
    /// A room validator is configured: without one every `join` is
    /// refused without an [`Event::Validate`].
    pub has_room_validator: bool,
    /// The message hook does something: without it custom events are
    /// dropped without an [`Event::Hook`].
    pub wants_messages: bool,
    /// The open, connect or disconnect hook does something: without one
    /// no [`Event::Hook`] is built for them.
    pub wants_lifecycle: bool,
    /// `--max-sessions-per-user`, shared by the shards of the process
    /// (`None`: no limit).
    pub sessions: Option<Arc<sessions::UserSessions>>,
    /// This process's client-id tag: the first 4 bytes of every client id
    /// it hands out ([`ClientId::new_tagged`]), so the Redis bridge hears
    /// all its clients through two patterns instead of two channels per
    /// client (`--redis-subscribe interest` on classic pub/sub).
    pub client_tag: Option<u32>,
}

/// An output of the shard for its driver (see [`Shard::poll_event`]).
#[derive(Debug)]
pub enum Event {
    /// The connection is finished: drop its socket, then call
    /// [`Shard::remove`].
    Closed(ConnKey),
    /// Call the authenticator and answer before the next input (see
    /// [`Shard::answer`]).
    Authenticate {
        key: ConnKey,
        generation: u32,
        request: AuthRequest,
    },
    /// Call the room validator on `request.rooms` and answer before the
    /// next input (see [`Shard::answer`]).
    Validate {
        key: ConnKey,
        generation: u32,
        request: JoinRequest,
    },
    /// Call a lifecycle hook (nothing comes back).
    Hook(HookCall),
}

/// A lifecycle hook to call (see [`crate::hooks::Hooks`]).
#[derive(Debug)]
pub enum HookCall {
    Open(hooks::Opened),
    Connect(hooks::Connected),
    Disconnect(hooks::Disconnected),
    Message(hooks::Message),
}

/// How the driver answered an [`Event::Authenticate`] or
/// [`Event::Validate`].
#[derive(Debug)]
pub enum Answer<T> {
    /// The call completed at once.
    Ready(T),
    /// It has to wait: the result comes later as a [`ShardCommand`]
    /// (`AuthDone`, `JoinDone`).
    Pending,
}

/// How a driver calls user code for the shard's events (see
/// [`Shard::answer`]): the authenticator, the room validator, the hooks.
pub trait UserCode {
    /// Call the authenticator; `Pending` if the result comes later as
    /// [`ShardCommand::AuthDone`].
    fn authenticate(
        &mut self,
        key: ConnKey,
        generation: u32,
        request: AuthRequest,
    ) -> Answer<AuthResult>;
    /// Call the room validator on `request.rooms`; `Pending` if the result
    /// comes later as [`ShardCommand::JoinDone`].
    fn validate(
        &mut self,
        key: ConnKey,
        generation: u32,
        request: JoinRequest,
    ) -> Answer<Vec<String>>;
    /// Call a hook.
    fn hook(&mut self, call: HookCall);
}

/// One shard.
pub struct Shard<S> {
    pub ctx: ShardCtx,
    timeouts: Timeouts,
    conns: Slab<Conn<S>>,
    by_id: keyed::ById,
    pub rooms: index::Rooms,
    pub users: keyed::Users,
    /// Connections with something to write.
    dirty: Vec<ConnKey>,
    /// Outputs for the driver, in order.
    events: VecDeque<Event>,
    /// Auth deadlines in order: connect (auth timeout) and in-progress (×3).
    connect_deadlines: VecDeque<(Stamp, ConnKey, u32)>,
    auth_deadlines: VecDeque<(Stamp, ConnKey, u32)>,
    next_sweep: Instant,
    next_heartbeat: Instant,
    next_generation: u32,
    /// The wall clock as the driver last told it: the Unix time in
    /// milliseconds at an instant (for `connected.time`).
    wall: (Instant, u64),
    json_buf: Vec<u8>,
    json_buffers: Option<Buffers>,
    /// The read state lent to connections between messages.
    spare_read: Option<Box<ReadState>>,
    /// Frames waiting to be encrypted for encrypted clients, in order;
    /// the driver works them off in batches ([`Shard::run_encryption`]).
    encrypt_queue: VecDeque<(ConnKey, u32, Bytes)>,
    encrypt_scratch: Vec<u8>,
    ping_frame: Bytes,
    /// Set once `Shutdown` arrived.
    shutting_down: bool,
    /// What this shard needs to hear changed (see [`Interest`]); `None`:
    /// not tracked.
    interest: Option<Vec<Interest>>,
    /// Whether [`Topic::Client`] is reported.
    interest_clients: bool,
    /// The clients still to close in a spread-out drain.
    drain: Option<close::Drain>,
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
            // Grown as connections come (see `ById`).
            by_id: Default::default(),
            rooms: Default::default(),
            users: Default::default(),
            dirty: Vec::new(),
            events: VecDeque::new(),
            connect_deadlines: VecDeque::new(),
            auth_deadlines: VecDeque::new(),
            next_sweep: now,
            next_heartbeat,
            next_generation: 0,
            wall: (now, 0),
            json_buf: Vec::new(),
            json_buffers: Some(Buffers::default()),
            spare_read: None,
            encrypt_queue: VecDeque::new(),
            encrypt_scratch: Vec::new(),
            ping_frame: frame::server_frame(OpCode::Ping, b""),
            shutting_down: false,
            interest: None,
            interest_clients: false,
            drain: None,
            ctx,
        }
    }

    /// The wall clock: `unix_ms` milliseconds since the Unix epoch at
    /// `now`. Drivers tell it at start and on every tick.
    pub fn set_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.wall = (now, unix_ms);
    }

    /// The Unix time in milliseconds at `now`, from the last wall clock.
    fn unix_ms(&self, now: Instant) -> u64 {
        let (at, ms) = self.wall;
        ms + now.saturating_duration_since(at).as_millis() as u64
    }

    /// Whether another connection may be accepted, with `pending` more
    /// still in their HTTP upgrade.
    pub fn has_room_for_connection(&self, pending: usize) -> bool {
        !self.shutting_down && self.conns.len() + pending < self.ctx.max_conns
    }

    /// `Shutdown` arrived: the driver stops accepting and waits for the
    /// connections to finish.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The connection at `key` if it is still the one with `generation`.
    fn live(&mut self, key: ConnKey, generation: u32) -> Option<&mut Conn<S>> {
        self.conns
            .get_mut(key as usize)
            .filter(|c| c.generation == generation && !c.dead)
    }

    /// The connection at `key`.
    pub fn conn(&self, key: ConnKey) -> Option<&Conn<S>> {
        self.conns.get(key as usize)
    }

    /// The connection at `key`, for the driver's state in it.
    pub fn conn_mut(&mut self, key: ConnKey) -> Option<&mut Conn<S>> {
        self.conns.get_mut(key as usize)
    }

    /// Every connection, with its key.
    pub fn conns(&self) -> impl Iterator<Item = (ConnKey, &Conn<S>)> {
        self.conns.iter().map(|(k, c)| (k as ConnKey, c))
    }

    /// The log span of connection `key` (debug level, so free unless debug
    /// logs are on): the shard, its client id and, once authenticated, its
    /// user id. Entered where the shard handles one connection's input, so
    /// every line logged there names it.
    pub(crate) fn conn_span(&self, key: ConnKey) -> tracing::Span {
        match self.conns.get(key as usize) {
            Some(c) if tracing::enabled!(tracing::Level::DEBUG) => tracing::debug_span!(
                "conn",
                shard = self.ctx.index,
                client = %c.id,
                user = c.user.as_deref()
            ),
            _ => tracing::Span::none(),
        }
    }

    /// Record what this shard needs to hear from other nodes from now on
    /// ([`Shard::poll_interest`]); off by default. `clients`: report
    /// clients too (not needed when the bridge hears them by their tag).
    pub fn track_interest(&mut self, clients: bool) {
        self.interest.get_or_insert_with(Vec::new);
        self.interest_clients = clients;
    }

    /// The changes of what this shard needs to hear since the last call,
    /// in the order they happened, appended to `out`.
    pub fn poll_interest(&mut self, out: &mut Vec<Interest>) {
        if let Some(v) = &mut self.interest {
            out.append(v);
        }
    }

    /// Changes of interest wait for [`Shard::poll_interest`].
    pub fn has_interest(&self) -> bool {
        self.interest.as_ref().is_some_and(|v| !v.is_empty())
    }

    /// Record a change of interest; `topic` is built only when tracked
    /// (single nodes allocate nothing).
    pub(super) fn note_interest(&mut self, on: bool, topic: impl FnOnce() -> Topic) {
        let Some(v) = &mut self.interest else {
            return;
        };
        let topic = topic();
        if matches!(topic, Topic::Client(_)) && !self.interest_clients {
            return;
        }
        v.push(Interest { topic, on });
    }

    /// The driver's state of every connection.
    pub fn for_each_sock(&mut self, mut f: impl FnMut(&mut S)) {
        for (_, c) in self.conns.iter_mut() {
            f(c.sock_mut());
        }
    }

    /// Look up a local client by id.
    pub fn key_of(&self, id: &ClientId) -> Option<ConnKey> {
        self.by_id.get(&self.conns, id)
    }

    /// The next output for the driver, if any.
    #[inline]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The part of handling an event every driver shares: a call of user
    /// code goes to `user` and its answer comes straight back. Returns the
    /// key of a finished connection ([`Event::Closed`]): dropping its
    /// socket is the driver's own business.
    pub fn answer(&mut self, ev: Event, user: &mut impl UserCode, now: Instant) -> Option<ConnKey> {
        match ev {
            Event::Closed(key) => return Some(key),
            Event::Authenticate {
                key,
                generation,
                request,
            } => {
                let answer = user.authenticate(key, generation, request);
                // Only a call that has to wait needs its deadline queued:
                // an immediate answer leaves the connection authenticated
                // or closing before any timer could fire. (A driver must
                // hand every `Event::Authenticate` to this method: the
                // auth timeout of a waiting call is armed here.)
                if matches!(answer, Answer::Pending)
                    && let Some(d) = self
                        .live(key, generation)
                        .and_then(|c| c.session.deadline())
                {
                    push_deadline(&mut self.auth_deadlines, &self.conns, (d, key, generation));
                }
                self.answered(key, generation, answer, now, |sh, result| {
                    sh.finish_auth(key, generation, result, now)
                });
            }
            Event::Validate {
                key,
                generation,
                request,
            } => {
                let requested = request.rooms.clone();
                let answer = user.validate(key, generation, request);
                self.answered(key, generation, answer, now, |sh, allowed| {
                    sh.finish_join(key, generation, &requested, allowed)
                });
            }
            Event::Hook(call) => user.hook(call),
        }
        None
    }

    /// A freshly upgraded connection: `Unauthorized`, auth timer running.
    /// `rest` is whatever followed the HTTP request head.
    pub fn handle_upgraded(&mut self, sock: S, rest: &[u8], now: Instant) -> (ConnKey, ClientId) {
        let id = loop {
            let id = match self.ctx.client_tag {
                Some(tag) => ClientId::new_tagged(self.ctx.index, tag),
                None => ClientId::new(self.ctx.index),
            };
            if self.by_id.get(&self.conns, &id).is_none() {
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
            next_of_user: keyed::NO_SESSION,
            prev_of_user: keyed::NO_SESSION,
            extra: None,
            rooms: SmallVec::new(),
            // The reference subscribes a socket to its own id at connect, so
            // room messages to that id reach it even before authentication.
            in_own_room: true,
            encrypted: false,
            awaiting: false,
            out: Default::default(),
            dirty: false,
            write_shut: false,
            dead: false,
            peer_eof: false,
            last_rx: Stamp::at(now),
            rate_window: 0,
            rate_count: 0,
            ping_sent: false,
            read: None,
            sock,
        }) as ConnKey;
        self.by_id.insert(&self.conns, key);
        self.note_interest(true, || Topic::Client(id));
        if let Some(d) = self.conns[key as usize].session.deadline() {
            push_deadline(
                &mut self.connect_deadlines,
                &self.conns,
                (d, key, generation),
            );
        }
        let m = &self.ctx.metrics;
        m.conns_unauthorized
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ShardMetrics::add(&m.upgrades_total, 1);
        if self.ctx.wants_lifecycle {
            self.events
                .push_back(Event::Hook(HookCall::Open(hooks::Opened {
                    client_id: id.to_string(),
                })));
        }
        if self.shutting_down {
            // Upgraded while the shard drains (it was accepted before):
            // told to go elsewhere at once.
            self.close(key, crate::proto::close::CloseReason::Shutdown, now);
        } else if !rest.is_empty() {
            self.handle_bytes(key, rest, now);
        }
        (key, id)
    }

    /// The driver dropped the socket of a finished connection (or is about
    /// to): take it out of every index and hand back the driver's state.
    pub fn remove(&mut self, key: ConnKey) -> Option<S> {
        if !self.conns.contains(key as usize) {
            return None;
        }
        let last_of_user = self.users.remove(&mut self.conns, key);
        let conn = self.conns.remove(key as usize);
        self.by_id.remove(&conn.id, key);
        if conn.encrypted {
            self.ctx
                .metrics
                .encrypted_clients
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(u) = &conn.user {
            if last_of_user {
                self.note_interest(false, || Topic::User(u.clone()));
            }
            if let Some(s) = &self.ctx.sessions {
                s.remove(u);
            }
        }
        for m in &conn.rooms {
            self.leave_index(*m, key);
        }
        self.note_interest(false, || Topic::Client(conn.id));
        let st = conn.session.state();
        let m = &self.ctx.metrics;
        use std::sync::atomic::Ordering::Relaxed;
        match st {
            State::Unauthorized => m.conns_unauthorized.fetch_sub(1, Relaxed),
            State::Authenticating => m.conns_authenticating.fetch_sub(1, Relaxed),
            State::Authenticated => m.conns_authenticated.fetch_sub(1, Relaxed),
        };
        self.update_index_gauges();
        if self.ctx.wants_lifecycle {
            self.events
                .push_back(Event::Hook(HookCall::Disconnect(hooks::Disconnected {
                    client_id: conn.id.to_string(),
                    user_id: conn.user.as_deref().map(str::to_owned),
                })));
        }
        Some(conn.sock)
    }

    /// Apply a run of [`ShardCommand::Deliver`]s that reach the same
    /// recipients ([`fanout::groups_with`]) as one visit per recipient, and
    /// empty `run`.
    pub fn handle_deliveries(&mut self, run: &mut Vec<Delivery>, now: Instant) {
        if run.is_empty() {
            return;
        }
        self.release_queue_budget(run.iter().map(Delivery::queue_cost).sum());
        self.deliver_run(run, now);
        run.clear();
    }

    /// Gives back the shard-queue budget `Handle::deliver` took for
    /// deliveries that have now left the channel.
    fn release_queue_budget(&self, cost: usize) {
        self.ctx
            .metrics
            .queued_bytes
            .fetch_sub(cost as i64, std::sync::atomic::Ordering::Relaxed);
    }

    /// A command from the shard's channel.
    pub fn handle_command(&mut self, cmd: ShardCommand, now: Instant) {
        match cmd {
            ShardCommand::Deliver(d) => {
                self.release_queue_budget(d.queue_cost());
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
            ShardCommand::Disconnect { who, code, reply } => {
                let _ = reply.send(self.disconnect(&who, code, now));
            }
            ShardCommand::Count { who, reply } => {
                let _ = reply.send(self.count(&who));
            }
        }
    }

    /// How many of the sessions `who` names this shard holds (a room's
    /// members; a user's authenticated sessions; a client: 0 or 1).
    pub fn count(&self, who: &crate::delivery::Who) -> usize {
        use crate::delivery::Who;
        match who {
            Who::User(u) => self.users.get(&self.conns, u).count(),
            Who::Room(r) => self.rooms.get(r).map_or(0, |r| r.members().len()),
            Who::Client(id) => usize::from(self.key_of(id).is_some()),
        }
    }

    /// Close the sessions of a user, or one client, with `code`
    /// ([`crate::proto::close::CloseReason::Disconnected`]); how many were closed. A room is
    /// never closed as a whole.
    pub fn disconnect(&mut self, who: &crate::delivery::Who, code: u16, now: Instant) -> usize {
        use crate::delivery::Who;
        let keys: SmallVec<[ConnKey; 4]> = match who {
            Who::User(u) => self.users.get(&self.conns, u).collect(),
            Who::Client(id) => self.key_of(id).into_iter().collect(),
            Who::Room(_) => SmallVec::new(),
        };
        let mut n = 0;
        for key in keys {
            if self
                .conns
                .get(key as usize)
                .is_some_and(|c| !c.is_closing() && !c.dead)
            {
                self.close(
                    key,
                    crate::proto::close::CloseReason::Disconnected(code),
                    now,
                );
                n += 1;
            }
        }
        n
    }

    /// Give back the capacity a storm left in the shard's queues: a
    /// connect storm grows the driver's event queue by an entry per
    /// connection handled in one turn, and the deadline queues by one per
    /// connection still waiting for its authenticator (or not
    /// authenticating at all: each new deadline first drops the front ones
    /// of connections that authenticated), and a `VecDeque` keeps its
    /// capacity once emptied (up to 40 bytes per connection of the storm,
    /// held while they sit idle). Deadlines of connections that
    /// authenticated (or left) meanwhile are dropped first rather than
    /// when they come due. The driver calls this every second or so;
    /// returns whether memory was given back (then the driver hands it to
    /// the system: [`crate::mem::release_free_memory`]).
    pub fn shrink_buffers(&mut self) -> bool {
        use crate::mem::shrink_queue;
        let conns = &self.conns;
        for q in [&mut self.connect_deadlines, &mut self.auth_deadlines] {
            q.retain(|e| still_waiting(conns, e));
        }
        let mut shrunk = shrink_queue(&mut self.events);
        shrunk |= shrink_queue(&mut self.connect_deadlines);
        shrunk |= shrink_queue(&mut self.auth_deadlines);
        shrunk |= shrink_queue(&mut self.encrypt_queue);
        shrunk
    }

    /// Capacity held by the shard's queues, in entries (for tests).
    #[cfg(test)]
    pub(crate) fn queue_capacity(&self) -> usize {
        self.events.capacity()
            + self.connect_deadlines.capacity()
            + self.auth_deadlines.capacity()
            + self.encrypt_queue.capacity()
    }

    /// Deadlines queued (for tests).
    #[cfg(test)]
    pub(crate) fn deadline_queue_len(&self) -> usize {
        self.connect_deadlines.len() + self.auth_deadlines.len()
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

/// Whether a deadline entry still belongs to a connection waiting for it
/// (the same connection, its auth timer still running).
fn still_waiting<S>(conns: &Slab<Conn<S>>, &(_, key, generation): &(Stamp, ConnKey, u32)) -> bool {
    conns
        .get(key as usize)
        .is_some_and(|c| c.generation == generation && c.session.deadline().is_some())
}

/// Queue a deadline, first dropping the entries at the front whose
/// connections no longer wait (authenticated or gone). Connections of a
/// storm authenticate about in the order they came, so the queue holds
/// about the connections still authenticating rather than one entry per
/// connection of the storm: its peak, 12 bytes a connection, sets how much
/// memory the storm leaves resident.
fn push_deadline<S>(
    q: &mut VecDeque<(Stamp, ConnKey, u32)>,
    conns: &Slab<Conn<S>>,
    entry: (Stamp, ConnKey, u32),
) {
    while q.front().is_some_and(|e| !still_waiting(conns, e)) {
        q.pop_front();
    }
    q.push_back(entry);
}
