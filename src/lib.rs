//! # ignis-ws
//!
//! A thread-per-core WebSocket fan-out server that speaks the wire protocol of
//! the WebSocket component of the TypeScript framework Ignis
//! (`WebSocketServerHelper` / `WebSocketEmitter`), so Ignis clients, Ignis
//! servers on Bun and Ignis emitters work with it unchanged.
//!
//! ## Glossary
//!
//! One word per concept.
//!
//! * **client id** ([`ClientId`]) — the UUID a connection is known by on the
//!   wire (`connected.data.id`); its last byte names the owning shard.
//! * **connection key** ([`shard::ConnKey`]) — a shard-local slot index for
//!   a connection, reused after it leaves (a *generation* tells the
//!   occupants apart); never leaves the shard. Not to be confused with the
//!   client's *public key* ([`shard::PublicKey`], the encryption
//!   handshake's `publicKey`).
//! * **upgrade** — the HTTP/1.1 request and `101` answer that turn a TCP
//!   connection into a WebSocket (`proto::handshake`, `io::upgrade`).
//!   **Authentication** — the `authenticate` event and the authenticator's
//!   verdict. **Encryption handshake** — the ECDH key exchange inside
//!   authentication. **Closing handshake** — the RFC 6455 close frames.
//!   "Handshake" alone means the upgrade. *Accept* is only the TCP
//!   `accept` (`io::accept`).
//! * **Ending a connection**: *close* starts the closing handshake (close
//!   frame queued, deadline armed); *abort* ends it at once, nothing more
//!   read or written ([`shard::Event::Closed`]); the driver then drops the
//!   socket and *removes* the record from every index
//!   ([`shard::Shard::remove`]).
//! * **driver** — what feeds a sans-io [`shard::Shard`] its inputs and
//!   carries out its outputs: [`io::parked`] over sockets (with
//!   [`io::shard_io::ShardIo`]), or
//!   [`shard::memory::MemoryDriver`] in memory with virtual time.
//! * **parked** — an upgraded connection with no task of its own, read by
//!   the shard's poller when its socket is ready (the default driver).
//! * **delivery** ([`delivery::Delivery`]) — one encoded frame plus its
//!   target (client, user, room, broadcast) on its way to the shards; the
//!   frame is shared by every recipient.
//! * **envelope** — the JSON the Ignis cluster publishes on Redis
//!   (`bridge::envelope`); **event** — a client message's `event` name, or
//!   an output of the shard for its driver ([`shard::Event`]).
//! * **shard** — one core's thread, runtime, listener, clients and indexes
//!   ([`shard::Shard`] is its state machine).
//! * **publisher** — `bridge::Publisher`, the Redis outbox every node
//!   publishes through; the HTTP `POST /api/publish` endpoint is the
//!   *publish API*.
//! * **control thread** — the process's one tokio thread for everything
//!   that waits (webhooks, user futures, Redis) ([`control`]).

//! ## The architecture in one screen
//!
//! Data flows one way: bytes from a socket → frames → client messages →
//! shard actions → encoded frames → sockets.
//!
//! ```text
//!            ┌──────────── control thread (tokio) ─────────────┐
//!            │ authenticators/validators/hooks that await,      │
//!            │ the Redis bridge (one per process)               │
//!            └──────▲──────────────────────────────┬───────────┘
//!                   │ boxed futures                │ ShardCommand (flume)
//!   shard thread 0 ─┴──────────────────────────────▼──────────────────
//!   compio runtime (io_uring or epoll), pinned to core 0, own
//!   SO_REUSEPORT listener.  io (driver)  ──handle_*(…, now)──▶  Shard
//!   accept · upgrade · parked (epoll)     ◀──poll_event/poll_dirty──
//!   flusher: transmit() → one sendmsg per client per turn
//!   Handle::to_room(..) encodes the frame ONCE into a `Bytes` and sends
//!   the same buffer to every shard; each shard pushes a refcount of it
//!   onto each recipient's queue and writes every queue with one writev.
//! ```
//!
//! * [`proto`] — sans-io: the RFC 6455 codec, the HTTP upgrade, the Ignis
//!   message envelope and the per-client state machine. No sockets, no clock.
//! * [`shard`] — one core's world as a sans-io state machine: sessions,
//!   the room and user indexes, fan-out, timers; inputs `handle_*` with
//!   the time passed in, outputs `poll_*`. No syscalls, no wakers, no
//!   clock, no user code; [`shard::memory`] drives it in memory.
//! * [`io`] — the socket side of a shard, on compio: accept, upgrade, one
//!   the parked driver (both back ends), the shared tasks.
//! * [`delivery`] — what travels to the shards: [`ClientId`], the target,
//!   the shared frame, [`delivery::SendError`]; below the shard, the bridge
//!   and the handle.
//! * [`handle`] — the delivery API ([`Handle`]), cheap to clone, usable from
//!   any thread.
//! * [`runtime`] — start-up: shards, pinning, channels, the control thread.
//! * [`bridge`] — the Redis bridge (subscriber, outbox publisher), the
//!   envelope codec and the [`bridge::emitter::Emitter`].
//! * [`auth`] — [`auth::Authenticator`] and [`auth::RoomValidator`] traits;
//!   JWT, webhook and insecure authenticators; glob room validator.
//! * [`config`] — every setting, its default and where the default comes from.
//! * [`http`] — `/health` and `/metrics`.
//! * [`secrets`] — redacting URLs with credentials for logs and errors.
//! * [`throttle`] — logging a recurring failure at most once per period.
//!
//! Layers, each importing only those below it (no import circle between
//! top-level modules; `../shared/tools/modcycles.py src` checks):
//! `proto`, `secrets`, `throttle` → `auth` → `control` → `metrics`, `config`, `error`,
//! `delivery` → `bridge` (Redis; reaches the shards through the
//! [`bridge::LocalDelivery`] trait) → `hooks` → `shard` → `handle` → `http`
//! → `io` → `runtime`; `bench` and `fuzzing` on top.
//! * `bench` — the load generator (feature `bench`, on by default; with
//!   `default-features = false` none of it, nor its dependencies, is built).

pub mod auth;
#[cfg(feature = "bench")]
pub mod bench;
pub mod bridge;
pub mod config;
pub mod control;
pub mod delivery;
pub mod error;
pub mod handle;
pub mod hooks;
pub mod http;
pub mod io;
pub mod mem;
pub mod metrics;
pub mod proto;
pub mod runtime;
pub mod secrets;
pub mod shard;
pub mod throttle;
pub mod tls;
pub mod user_id;

pub use config::Config;
pub use error::Error;
pub use handle::{ClientId, Handle};
pub use hooks::Hooks;
pub use runtime::{Server, ServerBuilder};

/// The fuzz targets' checks, reachable by `fuzz/` and `tests/` (feature
/// `fuzzing`). Not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

/// The README, whose Rust examples (the library and the emitter) compile as
/// doctests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
