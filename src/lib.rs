//! # ignis-ws
//!
//! A thread-per-core WebSocket fan-out server that speaks the wire protocol of
//! the WebSocket component of the TypeScript framework Ignis
//! (`WebSocketServerHelper` / `WebSocketEmitter`), so Ignis clients, Ignis
//! servers on Bun and Ignis emitters work with it unchanged.
//!
//! ## Glossary
//!
//! One word per concept; where today's code still uses two, both are named
//! (issue 13 renames them).
//!
//! * **client id** ([`ClientId`]) — the UUID a connection is known by on the
//!   wire (`connected.data.id`); its last byte names the owning shard.
//! * **connection key** ([`shard::ConnKey`]) — a shard-local slot index for
//!   a connection, reused after it leaves; never leaves the shard. Not to be
//!   confused with the client's *public key* (`shard::ClientKey`, the
//!   encryption handshake's `publicKey`).
//! * **upgrade** — the HTTP/1.1 request and `101` answer that turn a TCP
//!   connection into a WebSocket (`proto::handshake`). **Authentication** —
//!   the `authenticate` event and the authenticator's verdict
//!   (`Shard::accept` when it succeeds; unrelated to the TCP `accept_loop`).
//!   **Encryption handshake** — the ECDH key exchange inside
//!   authentication. **Closing handshake** — the RFC 6455 close frames.
//!   "Handshake" alone means the upgrade.
//! * **Ending a connection**: *close* starts the closing handshake (close
//!   frame queued, timer armed); *kill* marks it finished (nothing more is
//!   read or written, its task or the reaper will drop it); *reap*
//!   deregisters dead parked connections; *remove* takes a finished
//!   connection out of every index.
//! * **parked** — an upgraded connection with no task of its own, read by
//!   the shard's poller when its socket is ready (the default receive path).
//! * **delivery** ([`delivery::Delivery`]) — one encoded frame plus its
//!   target (client, user, room, broadcast) on its way to the shards; the
//!   frame is shared by every recipient.
//! * **envelope** — the JSON the Ignis cluster publishes on Redis
//!   (`bridge::envelope`); **event** — a client message's `event` name.
//! * **shard** — one core's thread, runtime, listener, clients and indexes
//!   ([`shard::Shard`]); `io::conn::ShardIo` is its socket side
//!   (`IoShard` is the shard type as the I/O layer instantiates it).
//! * **publisher** — two today: `bridge::Publisher` (the Redis outbox every
//!   node publishes through) and the HTTP `POST /api/publish` endpoint.
//! * **control thread** — the process's one tokio thread for everything
//!   that waits (webhooks, user futures, Redis) ([`control`]).
//!
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
//!   shard 0 ────────┴───┐   shard 1 ...            ▼
//!   compio runtime (io_uring or epoll), pinned to core 0,
//!   own SO_REUSEPORT listener, own clients / users / rooms.
//!   Handle::to_room(..) encodes the frame ONCE into a `Bytes` and sends
//!   the same buffer to every shard; each shard pushes a refcount of it
//!   onto each recipient's queue and writes every queue with one writev.
//! ```
//!
//! * [`proto`] — sans-io: the RFC 6455 codec, the HTTP upgrade, the Ignis
//!   message envelope and the per-client state machine. No sockets, no clock.
//! * [`shard`] — one core's world: sessions, the room and user indexes,
//!   fan-out. Still no syscalls of its own.
//! * [`io`] — the socket side of a shard, on compio.
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
pub mod metrics;
pub mod proto;
pub mod runtime;
pub mod secrets;
pub mod shard;
pub mod throttle;

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
